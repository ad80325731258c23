//! The policy document as written: strict serde types. Patterns are checked while
//! deserializing, so a bad glob or regular expression is reported at its own line
//! and column.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The top of a policy file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The language version; must be 1.
    pub version: Version,
    /// Record what would be denied, deny nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Labels that get a job denied: exact names or globs.
    #[serde(default)]
    pub forbidden_labels: Vec<Glob>,
    /// Globs over `owner/name`; when given, only matching repositories may run jobs.
    /// `None` allows any repository.
    #[serde(default)]
    pub allowed_repositories: Option<Vec<Glob>>,
    /// Regular expressions that deny a job by its workflow or job name.
    #[serde(default)]
    pub blocked_workflow_titles: Vec<TitleRule>,
    /// Jobs that need a safety review before they may run.
    #[serde(default)]
    pub require_safety_review: Vec<SafetyReview>,
    /// Upper bounds on the timeout, vCPUs and memory a job may ask for.
    #[serde(default)]
    pub limits: Limits,
    /// Per-org rules, layered over the global ones.
    #[serde(default)]
    pub orgs: BTreeMap<OrgKey, RuleSet>,
}

/// The rules an org may add or override. The same fields stand in [`PolicySpec`]
/// rather than being flattened into it, because serde cannot combine `flatten`
/// with `deny_unknown_fields`, and unknown fields must be errors.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Added to the global forbidden labels.
    #[serde(default)]
    pub forbidden_labels: Vec<Glob>,
    /// Replaces the global allowed repositories when given.
    #[serde(default)]
    pub allowed_repositories: Option<Vec<Glob>>,
    /// Added to the global title rules.
    #[serde(default)]
    pub blocked_workflow_titles: Vec<TitleRule>,
    /// Added to the global safety-review rules.
    #[serde(default)]
    pub require_safety_review: Vec<SafetyReview>,
    /// Each limit given replaces the global one; the others stay.
    #[serde(default)]
    pub limits: Limits,
}

impl PolicySpec {
    /// The global rules, as a rule set.
    pub fn global_rules(&self) -> RuleSet {
        RuleSet {
            forbidden_labels: self.forbidden_labels.clone(),
            allowed_repositories: self.allowed_repositories.clone(),
            blocked_workflow_titles: self.blocked_workflow_titles.clone(),
            require_safety_review: self.require_safety_review.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// A regular expression on the workflow name and the job name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TitleRule {
    /// Names the rule in reasons and metrics; defaults to its place, such as
    /// `blocked_workflow_titles[0]`.
    #[serde(default)]
    pub id: Option<String>,
    /// The regular expression; it matches anywhere in the name unless anchored.
    pub pattern: Pattern,
    /// Match regardless of case.
    #[serde(default)]
    pub case_insensitive: bool,
}

/// Jobs that match must carry a review marker, or come from a reviewed repository.
/// A job matches when it matches every selector given (labels, repositories,
/// workflows); each selector matches when any of its globs does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyReview {
    /// Names the rule in reasons and metrics; defaults to its place, such as
    /// `require_safety_review[0]`.
    #[serde(default)]
    pub id: Option<String>,
    /// Label globs: the rule covers jobs with any matching label.
    #[serde(default)]
    pub labels: Vec<Glob>,
    /// Repository globs (`owner/name`): the rule covers jobs from any matching repository.
    #[serde(default)]
    pub repositories: Vec<Glob>,
    /// Workflow name globs: the rule covers jobs from any matching workflow.
    #[serde(default)]
    pub workflows: Vec<Glob>,
    /// Labels that mark a job as reviewed (default: `safety-reviewed`).
    #[serde(default = "default_markers")]
    pub markers: Vec<Glob>,
    /// Repositories whose jobs count as reviewed without a marker label.
    #[serde(default)]
    pub reviewed_repositories: Vec<Glob>,
}

fn default_markers() -> Vec<Glob> {
    vec![Glob("safety-reviewed".to_string())]
}

/// Upper bounds on what a job may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest timeout a job may ask for, in minutes.
    #[serde(default)]
    pub max_timeout_minutes: Option<u64>,
    /// Most vCPUs a job may ask for.
    #[serde(default)]
    pub max_vcpus: Option<u64>,
    /// Most memory a job may ask for, in MiB.
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
}

/// The policy language version; only 1 exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub u32);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let version = u32::deserialize(deserializer)?;
        if version != 1 {
            return Err(de::Error::custom(format!(
                "version: unsupported policy version {version}; this Nimbus understands version 1"
            )));
        }
        Ok(Version(version))
    }
}

/// A glob (`*`, `?`, `[abc]`, `{a,b}`), checked when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(pub String);

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Err(de::Error::custom("empty glob"));
        }
        globset::Glob::new(&text)
            .map_err(|e| de::Error::custom(format!("invalid glob {text:?}: {}", e.kind())))?;
        Ok(Glob(text))
    }
}

/// A regular expression (Rust `regex` syntax), checked when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(pub String);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        regex::Regex::new(&text).map_err(|e| {
            let detail = e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            de::Error::custom(format!("invalid regular expression {text:?}: {detail}"))
        })?;
        Ok(Pattern(text))
    }
}

/// An org id as a map key: `42:` or `"42":`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrgKey(pub i64);

impl<'de> Deserialize<'de> for OrgKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = OrgKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an org id (a positive integer)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OrgKey, E> {
                if v > 0 {
                    Ok(OrgKey(v))
                } else {
                    Err(E::custom(format!("org id {v} must be positive")))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OrgKey, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom(format!("org id {v} is too large")))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OrgKey, E> {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| E::custom(format!("org key {v:?} is not an org id")))
                    .and_then(|v| self.visit_i64(v))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}
