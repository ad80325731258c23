//! Workspace archives: the working tree a `nimbus run` job starts from. The
//! submitter uploads a tar once per run (named by its sha256, so an unchanged tree
//! is not stored twice); each job names it; the agent holding a job's lease
//! fetches it and unpacks it into the VM. Kept in the database (every replica
//! serves them), bounded in size per archive and per org, forgotten after a day.

use std::time::Duration;

use super::ControlPlane;
use crate::auth::Principal;
use crate::domain::{validate_workspace_digest, workspace_digest, JobId, OrgId};
use crate::error::{Error, Result};

/// Largest archive accepted (the request body limit of its route).
pub const MAX_WORKSPACE_BYTES: usize = 128 * 1024 * 1024;
/// Archives received at once (each is held in memory whole); more answer 503.
pub const MAX_WORKSPACE_UPLOADS: usize = 4;
/// What one org's archives may take together; the oldest others go first.
pub const WORKSPACE_ORG_QUOTA_BYTES: u64 = 1024 * 1024 * 1024;
/// How long an archive is kept after its last upload.
pub const WORKSPACE_TTL: Duration = Duration::from_secs(24 * 3600);

/// What `PUT /api/workspaces/{sha256}` answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkspaceReceipt {
    /// The org that owns the archive.
    pub org_id: OrgId,
    /// The archive's sha256, what jobs name in `workspace`.
    pub workspace: String,
    /// Its size.
    pub bytes: u64,
}

impl ControlPlane {
    /// A place among the [`MAX_WORKSPACE_UPLOADS`] archives received at once,
    /// taken before the body is read.
    pub(super) fn workspace_upload_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.workspace_uploads.try_acquire().map_err(|_| {
            Error::Unavailable(format!(
                "{MAX_WORKSPACE_UPLOADS} workspace archives are being received; try again shortly"
            ))
        })
    }

    /// The org a submission acts for: an org token's own (asking for another is
    /// "not found"), the one an admin names (which must exist); agents submit nothing.
    pub(super) async fn submitting_org(
        &self,
        who: &Principal,
        asked: Option<OrgId>,
    ) -> Result<OrgId> {
        match (who, asked) {
            (Principal::Org { org_id, .. }, None) => Ok(*org_id),
            (Principal::Org { org_id, .. }, Some(asked)) if asked == *org_id => Ok(asked),
            (Principal::Org { .. }, Some(asked)) => Err(Error::not_found(format!("org {asked}"))),
            (Principal::Admin { .. }, Some(asked)) => {
                if self.org_exists(asked).await? {
                    Ok(asked)
                } else {
                    Err(Error::not_found(format!("org {asked}")))
                }
            }
            (Principal::Admin { .. }, None) => {
                Err(Error::invalid("org_id is required with an admin token"))
            }
            (Principal::Agent { .. }, _) => {
                Err(Error::Forbidden("agent tokens cannot submit jobs".into()))
            }
        }
    }

    /// Keeps a workspace archive for the caller's org (an admin names it). The
    /// bytes must hash to `digest`; putting the same archive again refreshes it.
    pub async fn put_workspace(
        &self,
        who: &Principal,
        org_id: Option<OrgId>,
        digest: &str,
        archive: &[u8],
    ) -> Result<WorkspaceReceipt> {
        let org_id = self.submitting_org(who, org_id).await?;
        validate_workspace_digest(digest)?;
        if archive.len() > MAX_WORKSPACE_BYTES {
            return Err(Error::invalid(format!(
                "the workspace archive has {} bytes; at most {MAX_WORKSPACE_BYTES} are allowed",
                archive.len()
            )));
        }
        let actual = workspace_digest(archive);
        if actual != digest {
            return Err(Error::invalid(format!(
                "the archive's sha256 is {actual}, not {digest}: it was cut short or changed on the way"
            )));
        }
        let evicted = self
            .store
            .put_workspace(
                org_id,
                digest,
                archive,
                self.now(),
                WORKSPACE_ORG_QUOTA_BYTES,
            )
            .await?;
        tracing::info!(
            org_id,
            workspace = digest,
            bytes = archive.len(),
            evicted,
            "workspace archive kept"
        );
        Ok(WorkspaceReceipt {
            org_id,
            workspace: digest.to_string(),
            bytes: archive.len() as u64,
        })
    }

    /// The workspace archive of a job, for the agent holding its lease with
    /// `fencing_token` (nobody else learns anything about it).
    pub async fn job_workspace(
        &self,
        who: &Principal,
        id: JobId,
        fencing_token: i64,
    ) -> Result<Vec<u8>> {
        let job = self.held_job(who, id, fencing_token).await?;
        let Some(digest) = job.spec.workspace.as_deref() else {
            return Err(Error::not_found(format!("job {id} names no workspace")));
        };
        self.store
            .get_workspace(job.org_id, digest)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "workspace {digest} of job {id}: no longer kept (archives go a day after \
                     their upload, or sooner when the org's {} GiB are full); run again",
                    WORKSPACE_ORG_QUOTA_BYTES >> 30
                ))
            })
    }

    /// Forgets archives uploaded more than [`WORKSPACE_TTL`] ago.
    pub(super) async fn prune_workspaces(&self) -> Result<u64> {
        let before = self.now() - WORKSPACE_TTL;
        self.store.prune_workspaces(before).await
    }
}
