//! `nimbus-policy`: policy-as-code admission for jobs.
//!
//! The facts a policy judges and the decision it returns. The YAML language and its
//! evaluator land with their issue.

use serde::{Deserialize, Serialize};

/// What a policy sees of a job: no dependency on the rest of Nimbus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFacts {
    pub org_id: i64,
    pub repository: String,
    pub workflow_name: Option<String>,
    pub job_name: Option<String>,
    pub labels: Vec<String>,
    pub timeout_minutes: u32,
}

/// A rule that matched, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub rule: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny { reasons: Vec<Reason> },
}
