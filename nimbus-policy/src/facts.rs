//! What a policy sees of a job.

use serde::{Deserialize, Serialize};

/// The facts of a job that rules judge. Resource requests come from labels:
/// `vcpus:N` (also `cpu:N`), `memory:N` in MiB (or with a `g`/`gb`/`gib`/`m`/`mb`/`mib`
/// suffix), and `timeout:MINUTES` (when larger than `timeout_minutes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFacts {
    /// The org the job belongs to; selects the `orgs.N` rules. 0 (the default) matches no org.
    #[serde(default)]
    pub org_id: i64,
    /// `owner/name`.
    #[serde(alias = "repo")]
    pub repository: String,
    /// The GitHub Actions workflow name, matched by `blocked_workflow_titles` and
    /// `require_safety_review` workflow globs. `None` for jobs not from a workflow.
    #[serde(default)]
    pub workflow_name: Option<String>,
    /// The job's name, matched by `blocked_workflow_titles`.
    #[serde(default)]
    pub job_name: Option<String>,
    /// The job's runner labels, including resource requests such as `vcpus:4`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The timeout from the job's spec, in minutes; a `timeout:` label may ask for more.
    #[serde(default)]
    pub timeout_minutes: u32,
}

impl JobFacts {
    /// The largest `prefix:N` value among the labels, for any of the prefixes.
    fn label_number(&self, prefixes: &[&str], parse: fn(&str) -> Option<u64>) -> Option<u64> {
        self.labels
            .iter()
            .filter_map(|label| {
                let (key, value) = label.split_once(':')?;
                prefixes
                    .iter()
                    .any(|p| key.eq_ignore_ascii_case(p))
                    .then(|| parse(value.trim()))
                    .flatten()
            })
            .max()
    }

    /// The largest vCPU count asked for by a `vcpus:N`, `vcpu:N`, `cpu:N` or `cpus:N`
    /// label; `None` when no label asks or none parses.
    pub fn requested_vcpus(&self) -> Option<u64> {
        self.label_number(&["vcpus", "vcpu", "cpu", "cpus"], |v| v.parse().ok())
    }

    /// The largest memory asked for by a `memory:`/`mem:` label, in MiB (`8g` counts as
    /// 8192); `None` when no label asks or none parses.
    pub fn requested_memory_mib(&self) -> Option<u64> {
        self.label_number(&["memory", "mem"], parse_mib)
    }

    /// The longest timeout the job asks for, from its spec or a `timeout:` label.
    pub fn requested_timeout_minutes(&self) -> u64 {
        let label = self
            .label_number(&["timeout"], |v| v.parse().ok())
            .unwrap_or(0);
        label.max(u64::from(self.timeout_minutes))
    }
}

fn parse_mib(value: &str) -> Option<u64> {
    let lower = value.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "" | "m" | "mb" | "mib" => Some(number),
        "g" | "gb" | "gib" => number.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(labels: &[&str]) -> JobFacts {
        JobFacts {
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..JobFacts::default()
        }
    }

    #[test]
    fn resource_requests_come_from_labels() {
        let job = facts(&["nimbus", "vcpus:4", "cpu:2", "memory:8g", "timeout:90"]);
        assert_eq!(job.requested_vcpus(), Some(4));
        assert_eq!(job.requested_memory_mib(), Some(8192));
        assert_eq!(job.requested_timeout_minutes(), 90);
        assert_eq!(facts(&["memory:512"]).requested_memory_mib(), Some(512));
        assert_eq!(facts(&["memory:lots"]).requested_memory_mib(), None);
        assert_eq!(facts(&["nimbus"]).requested_vcpus(), None);
    }
}
