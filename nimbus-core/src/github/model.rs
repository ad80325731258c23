//! Typed views of GitHub's REST answers: only the fields Nimbus reads (serde
//! ignores the rest), so a field GitHub adds never breaks a call and a field it
//! drops shows up as a clear deserialisation error instead of a silent `null`.
//! A workflow job has the same shape in the REST API as in the `workflow_job`
//! webhook, so both use [`WorkflowJob`].

use serde::Deserialize;

pub use crate::webhook::WorkflowJob;

/// A user or an organization (`owner` of a repository, `account` of an installation).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Owner {
    /// GitHub's numeric id of the account.
    pub id: i64,
    /// The account's login name.
    pub login: String,
    /// `Organization` or `User`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

impl Owner {
    /// Whether the account is an organization rather than a user.
    pub fn is_organization(&self) -> bool {
        self.kind.as_deref() == Some("Organization")
    }
}

/// One installation of the GitHub App (`GET /app/installations`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppInstallation {
    /// The installation's id, for installation tokens.
    pub id: i64,
    /// The account the App is installed on.
    #[serde(default)]
    pub account: Option<Owner>,
}

/// A repository (`GET /installation/repositories`, `GET /user/repos`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Repository {
    /// GitHub's numeric repository id.
    pub id: i64,
    /// `owner/name`.
    pub full_name: String,
    /// The account that owns the repository.
    pub owner: Owner,
    /// The repository's default branch, e.g. `main`.
    #[serde(default)]
    pub default_branch: Option<String>,
}

/// A repository Nimbus can reach, with the App installation that reaches it
/// (`None` with a personal token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachableRepository {
    /// The repository.
    pub repository: Repository,
    /// The installation that reaches it.
    pub installation_id: Option<i64>,
}

/// `login` of a head repository's owner.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Login {
    /// The account's login name.
    pub login: String,
}

/// The repositories a workflow run names (`repository`, `head_repository`); a
/// fork that was deleted leaves `head_repository` null.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunRepository {
    /// `owner/name`.
    #[serde(default)]
    pub full_name: Option<String>,
    /// The repository's owner.
    #[serde(default)]
    pub owner: Option<Login>,
    /// The repository's default branch.
    #[serde(default)]
    pub default_branch: Option<String>,
}

/// The base of a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullBase {
    /// The branch the pull request merges into, e.g. `main`.
    #[serde(rename = "ref")]
    pub git_ref: String,
}

/// A pull request, as a run's `pull_requests` or `GET /repos/{o}/{r}/pulls` list it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    /// The pull request's number within its repository.
    pub number: i64,
    /// Where the pull request merges into.
    pub base: PullBase,
}

/// A workflow run (`GET /repos/{o}/{r}/actions/runs[/{id}]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkflowRun {
    /// GitHub's id of the run.
    pub id: i64,
    /// The event that started the run (`push`, `pull_request`, …).
    #[serde(default)]
    pub event: Option<String>,
    /// GitHub's status of the run (`queued`, `in_progress`, `completed`, …).
    #[serde(default)]
    pub status: Option<String>,
    /// The branch the run is for.
    #[serde(default)]
    pub head_branch: Option<String>,
    /// The repository the run belongs to.
    #[serde(default)]
    pub repository: Option<RunRepository>,
    /// The repository the run's commit comes from (a fork's for a fork's pull request).
    #[serde(default)]
    pub head_repository: Option<RunRepository>,
    /// Only pull requests of the repository itself: GitHub leaves a fork's out.
    #[serde(default)]
    pub pull_requests: Vec<PullRequest>,
}

/// A self-hosted runner (`GET …/actions/runners`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Runner {
    /// GitHub's id of the runner.
    pub id: i64,
    /// The runner's name.
    pub name: String,
}

/// The runner of a `generate-jitconfig` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct JitRunner {
    pub id: i64,
}

/// `POST …/actions/runners/generate-jitconfig`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct JitConfigAnswer {
    pub runner: JitRunner,
    pub encoded_jit_config: String,
}

/// Which member of a list answer holds its items: most of GitHub's lists are
/// objects (`{"total_count": …, "workflow_runs": […]}`), a few bare arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Items {
    Bare,
    Field(&'static str),
}
