//! `nimbus.Policy`: the admission policy the control plane applies, loaded and
//! evaluated in Python (for policy tests and dry runs in CI of the policy repo).

use std::path::PathBuf;

use nimbus_policy::JobFacts;
use pyo3::prelude::*;

use crate::convert::from_python;
use crate::errors::policy_error;

/// A loaded, compiled admission policy.
#[pyclass(module = "nimbus._native", frozen)]
pub struct Policy {
    inner: nimbus_policy::Policy,
}

#[pymethods]
impl Policy {
    /// Parses and compiles a policy from YAML text (raises `PolicyError`).
    #[staticmethod]
    fn from_yaml(text: &str) -> PyResult<Policy> {
        nimbus_policy::Policy::from_yaml(text)
            .map(|inner| Policy { inner })
            .map_err(policy_error)
    }

    /// Reads, parses and compiles a policy file (raises `PolicyError`).
    #[staticmethod]
    fn from_path(path: PathBuf) -> PyResult<Policy> {
        nimbus_policy::Policy::from_path(&path)
            .map(|inner| Policy { inner })
            .map_err(policy_error)
    }

    /// The policy that allows every job.
    #[staticmethod]
    fn allow_all() -> Policy {
        Policy {
            inner: nimbus_policy::Policy::allow_all(),
        }
    }

    /// In dry-run mode a policy reports what it would deny but denies nothing.
    #[getter]
    fn dry_run(&self) -> bool {
        self.inner.dry_run()
    }

    /// How many rules the policy has.
    #[getter]
    fn rule_count(&self) -> usize {
        self.inner.rule_count()
    }

    /// Judges a job given as a dict: `repository` (or `repo`), `org_id`, `labels`,
    /// `workflow_name`, `job_name`, `timeout_minutes`.
    fn evaluate(&self, job: &Bound<'_, PyAny>) -> PyResult<Decision> {
        let facts: JobFacts = from_python(job)?;
        Ok(Decision {
            inner: self.inner.evaluate(&facts),
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Policy(rule_count={}, dry_run={})",
            self.inner.rule_count(),
            if self.inner.dry_run() {
                "True"
            } else {
                "False"
            }
        )
    }
}

/// The outcome of evaluating a job: `allowed`, and the `reasons` (rules that
/// matched) whether or not they denied it.
#[pyclass(module = "nimbus._native", frozen)]
pub struct Decision {
    inner: nimbus_policy::Decision,
}

#[pymethods]
impl Decision {
    /// False when the job must be rejected (never in dry-run mode).
    #[getter]
    fn allowed(&self) -> bool {
        self.inner.allowed
    }

    /// The policy was in dry-run mode: `reasons` say what it would have denied.
    #[getter]
    fn dry_run(&self) -> bool {
        self.inner.dry_run
    }

    /// Every rule that matched, in the policy's order.
    #[getter]
    fn reasons(&self) -> Vec<Reason> {
        self.inner
            .reasons
            .iter()
            .map(|reason| Reason {
                rule: reason.rule.clone(),
                message: reason.message.clone(),
            })
            .collect()
    }

    fn __bool__(&self) -> bool {
        self.inner.allowed
    }

    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, reasons={:?})",
            if self.inner.allowed { "True" } else { "False" },
            self.inner
                .reasons
                .iter()
                .map(|r| r.rule.as_str())
                .collect::<Vec<_>>()
        )
    }
}

/// A rule that matched, and why, in words.
#[pyclass(module = "nimbus._native", frozen, get_all)]
pub struct Reason {
    /// Stable id: `forbidden_labels[0]`, `orgs.42.limits.max_vcpus`, or the rule's own `id`.
    rule: String,
    message: String,
}

#[pymethods]
impl Reason {
    fn __repr__(&self) -> String {
        format!("Reason(rule={:?}, message={:?})", self.rule, self.message)
    }
}
