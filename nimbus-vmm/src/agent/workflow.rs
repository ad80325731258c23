//! Workflow jobs (`nimbus run` against a control plane): the job's spec carries a
//! GitHub Actions workflow job, which the guest runs instead of `run:` steps, and
//! names the working tree it starts from. The agent reads the one, fetches the
//! other (the lease holder alone may), and hands the guest's result (outputs,
//! step summary, annotations) back with the completion, where dependent jobs read
//! `needs.<job>.outputs`.

use std::path::PathBuf;

use nimbus_core::domain::{workspace_digest, Lease, MAX_WORKFLOW_RESULT_BYTES};
use serde_json::Value;

use super::Agent;
use crate::workflow::{WorkflowJob, WorkflowResult};

/// A workspace archive on the host for the length of one job; removed on drop.
pub(super) struct WorkspaceFile(PathBuf);

impl Drop for WorkspaceFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The workflow job of `lease`, its workspace fetched into a file the session
/// streams to the guest. `Ok(None)`: not a workflow job. `Err`: why the job
/// cannot run (it fails with that reason, no VM spent on it).
pub(super) async fn prepare(
    agent: &Agent,
    lease: &Lease,
) -> Result<Option<(Box<WorkflowJob>, Option<WorkspaceFile>)>, String> {
    let job = &lease.job;
    let Some(workflow) = &job.spec.workflow else {
        return Ok(None);
    };
    let mut workflow: Box<WorkflowJob> = serde_json::from_value(workflow.clone())
        .map_err(|e| format!("the job's workflow is not one this agent can run: {e}"))?;
    // The guest's own workspace: a submitter does not choose where in the guest
    // the tree is unpacked.
    workflow.workspace = None;
    let Some(digest) = job.spec.workspace.as_deref() else {
        return Ok(Some((workflow, None)));
    };
    let archive = agent
        .jobs
        .workspace(job.id, lease.fencing_token)
        .await
        .map_err(|e| format!("fetching the job's workspace: {e}"))?;
    // The control plane checked the upload; this checks what reached us.
    let actual = workspace_digest(&archive);
    if actual != digest {
        return Err(format!(
            "the workspace fetched for the job has sha256 {actual}, not {digest}"
        ));
    }
    let dir = &agent.config.vmm.runtime_dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!(
        "job-{}-{}-workspace.tar",
        job.id, lease.fencing_token
    ));
    let file = WorkspaceFile(path.clone());
    tokio::fs::write(&path, &archive)
        .await
        .map_err(|e| format!("writing the job's workspace to {}: {e}", path.display()))?;
    workflow.archive = Some(path);
    Ok(Some((workflow, Some(file))))
}

/// The result as the completion carries it, within the control plane's bound: a
/// result too large loses its step summary first, then its annotations, then
/// its outputs, each replaced by a note of what was dropped.
pub fn completion_result(result: WorkflowResult) -> Option<Value> {
    let fits = |result: &WorkflowResult| {
        serde_json::to_vec(result).is_ok_and(|json| json.len() <= MAX_WORKFLOW_RESULT_BYTES)
    };
    let mut result = result;
    if !fits(&result) {
        result.summary =
            "(the step summaries were dropped: the result was too large to keep)\n".into();
    }
    if !fits(&result) {
        result.annotations.clear();
    }
    if !fits(&result) {
        result.outputs.clear();
    }
    serde_json::to_value(result).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Annotation;

    #[test]
    fn a_result_that_fits_is_kept_whole() {
        let mut result = WorkflowResult::default();
        result.outputs.insert("version".into(), "1.2.3".into());
        result.summary = "# Build\n".into();
        let value = completion_result(result.clone()).expect("a value");
        let back: WorkflowResult = serde_json::from_value(value).expect("decodes");
        assert_eq!(back, result);
    }

    #[test]
    fn a_result_too_large_drops_the_summary_then_the_annotations() {
        let mut result = WorkflowResult::default();
        result.outputs.insert("version".into(), "1.2.3".into());
        // Control characters are escaped six-fold in JSON.
        result.summary = "\u{1}".repeat(200 * 1024);
        let value = completion_result(result.clone()).expect("a value");
        let back: WorkflowResult = serde_json::from_value(value).expect("decodes");
        assert!(back.summary.contains("dropped"), "{}", back.summary);
        assert_eq!(back.outputs, result.outputs);

        let annotation = Annotation {
            level: "error".into(),
            message: "\u{1}".repeat(4096),
            file: None,
            line: None,
            column: None,
            title: None,
        };
        result.summary.clear();
        result.annotations = vec![annotation; 50];
        let value = completion_result(result.clone()).expect("a value");
        let back: WorkflowResult = serde_json::from_value(value).expect("decodes");
        assert!(back.annotations.is_empty());
        assert_eq!(back.outputs, result.outputs);
        assert!(serde_json::to_vec(&back).expect("json").len() <= MAX_WORKFLOW_RESULT_BYTES);
    }
}
