//! The compiled policy and its evaluation. Globs and regular expressions are
//! compiled once, at load; evaluation allocates only for the reasons it returns.

use std::collections::HashMap;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::{Regex, RegexBuilder, RegexSet};
use serde::{Serialize, Serializer};

use crate::error::{Error, Position, Result};
use crate::facts::JobFacts;
use crate::spec::{Glob, Limits, PolicySpec, RuleSet};

/// A rule that matched, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Reason {
    /// Stable id: `forbidden_labels[0]`, `orgs.42.limits.max_vcpus`, or the rule's own `id`.
    pub rule: String,
    /// Why it matched, as a sentence for people (job pages, CLI output).
    pub message: String,
}

/// The outcome of evaluating a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// False when the job must be rejected (never in dry-run mode).
    pub allowed: bool,
    /// The policy is in dry-run mode: `reasons` say what would have been denied.
    pub dry_run: bool,
    /// Every rule that matched (empty when nothing did).
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// True when some rule matched, whether or not the job is denied for it.
    pub fn would_deny(&self) -> bool {
        !self.reasons.is_empty()
    }
}

impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut state = serializer.serialize_struct("Decision", 3)?;
        state.serialize_field("decision", if self.allowed { "allow" } else { "deny" })?;
        state.serialize_field("dry_run", &self.dry_run)?;
        state.serialize_field("reasons", &self.reasons)?;
        state.end()
    }
}

/// A loaded, compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    dry_run: bool,
    global: Rules,
    orgs: HashMap<i64, Rules>,
    rule_count: usize,
}

/// A glob list compiled into one set, keeping the texts for messages.
#[derive(Debug, Clone)]
struct Globs {
    set: GlobSet,
    texts: Vec<String>,
}

impl Globs {
    fn new(globs: &[Glob], field: &str) -> Result<Self> {
        let mut builder = GlobSetBuilder::new();
        for glob in globs {
            // `/` is an ordinary character here (owner/repo), so `*` spans it only if
            // asked: `acme/*` matches `acme/app`.
            let compiled = GlobBuilder::new(&glob.0)
                .literal_separator(false)
                .build()
                .map_err(|e| Error::Invalid {
                    field: field.to_string(),
                    message: format!("invalid glob {:?}: {}", glob.0, e.kind()),
                    position: None,
                })?;
            builder.add(compiled);
        }
        let set = builder.build().map_err(|e| Error::Invalid {
            field: field.to_string(),
            message: e.to_string(),
            position: None,
        })?;
        Ok(Globs {
            set,
            texts: globs.iter().map(|g| g.0.clone()).collect(),
        })
    }

    fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    fn any(&self, text: &str) -> bool {
        self.set.is_match(text)
    }
}

#[derive(Debug, Clone)]
struct TitleRule {
    id: String,
    regex: Regex,
}

#[derive(Debug, Clone)]
struct SafetyRule {
    id: String,
    labels: Globs,
    repositories: Globs,
    workflows: Globs,
    markers: Globs,
    reviewed_repositories: Globs,
}

#[derive(Debug, Clone)]
struct Rules {
    scope: String,
    forbidden_labels: Globs,
    allowed_repositories: Option<Globs>,
    titles: Vec<TitleRule>,
    /// All title patterns in one automaton: the common no-match case is one pass.
    title_set: RegexSet,
    safety: Vec<SafetyRule>,
    /// Every safety rule's label globs in one set; `safety_label_owner[i]` is the
    /// rule of glob `i`. One pass per label finds the rules whose labels match.
    safety_labels: GlobSet,
    safety_label_owner: Vec<usize>,
    limits: Limits,
}

impl Rules {
    fn compile(rules: &RuleSet, scope: &str) -> Result<Self> {
        let field = |name: &str| format!("{scope}{name}");
        let mut titles = Vec::new();
        for (index, rule) in rules.blocked_workflow_titles.iter().enumerate() {
            let regex = RegexBuilder::new(&rule.pattern.0)
                .case_insensitive(rule.case_insensitive)
                .build()
                .map_err(|e| Error::Invalid {
                    field: field(&format!("blocked_workflow_titles[{index}].pattern")),
                    message: e.to_string(),
                    position: None,
                })?;
            let id = rule
                .id
                .clone()
                .unwrap_or_else(|| field(&format!("blocked_workflow_titles[{index}]")));
            titles.push(TitleRule { id, regex });
        }
        let title_set = RegexSet::new(rules.blocked_workflow_titles.iter().map(|rule| {
            if rule.case_insensitive {
                format!("(?i:{})", rule.pattern.0)
            } else {
                rule.pattern.0.clone()
            }
        }))
        .map_err(|e| Error::Invalid {
            field: field("blocked_workflow_titles"),
            message: e.to_string(),
            position: None,
        })?;
        let mut safety_label_builder = GlobSetBuilder::new();
        let mut safety_label_owner = Vec::new();
        for (index, rule) in rules.require_safety_review.iter().enumerate() {
            for glob in &rule.labels {
                let compiled = GlobBuilder::new(&glob.0)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| Error::Invalid {
                        field: field(&format!("require_safety_review[{index}].labels")),
                        message: format!("invalid glob {:?}: {}", glob.0, e.kind()),
                        position: None,
                    })?;
                safety_label_builder.add(compiled);
                safety_label_owner.push(index);
            }
        }
        let safety_labels = safety_label_builder.build().map_err(|e| Error::Invalid {
            field: field("require_safety_review"),
            message: e.to_string(),
            position: None,
        })?;
        let mut safety = Vec::new();
        for (index, rule) in rules.require_safety_review.iter().enumerate() {
            let name = field(&format!("require_safety_review[{index}]"));
            if rule.labels.is_empty() && rule.repositories.is_empty() && rule.workflows.is_empty() {
                return Err(Error::Invalid {
                    field: name,
                    message: "needs at least one of labels, repositories, workflows to say which jobs it covers".into(),
                    position: None,
                });
            }
            safety.push(SafetyRule {
                id: rule.id.clone().unwrap_or(name.clone()),
                labels: Globs::new(&rule.labels, &name)?,
                repositories: Globs::new(&rule.repositories, &name)?,
                workflows: Globs::new(&rule.workflows, &name)?,
                markers: Globs::new(&rule.markers, &name)?,
                reviewed_repositories: Globs::new(&rule.reviewed_repositories, &name)?,
            });
        }
        Ok(Rules {
            scope: scope.to_string(),
            forbidden_labels: Globs::new(&rules.forbidden_labels, &field("forbidden_labels"))?,
            allowed_repositories: rules
                .allowed_repositories
                .as_ref()
                .map(|globs| Globs::new(globs, &field("allowed_repositories")))
                .transpose()?,
            titles,
            title_set,
            safety,
            safety_labels,
            safety_label_owner,
            limits: rules.limits.clone(),
        })
    }

    fn count(&self) -> usize {
        self.forbidden_labels.texts.len()
            + self
                .allowed_repositories
                .as_ref()
                .map_or(0, |g| g.texts.len())
            + self.titles.len()
            + self.safety.len()
            + [
                self.limits.max_timeout_minutes,
                self.limits.max_vcpus,
                self.limits.max_memory_mib,
            ]
            .iter()
            .flatten()
            .count()
    }

    /// Deny rules (labels, titles, safety review) of this scope.
    fn check_denials(&self, job: &JobFacts, reasons: &mut Vec<Reason>) {
        if !self.forbidden_labels.is_empty() {
            for label in job.labels.iter().filter(|l| self.forbidden_labels.any(l)) {
                let matches = self.forbidden_labels.set.matches(label);
                if let Some(&glob) = matches.first() {
                    reasons.push(Reason {
                        rule: format!("{}forbidden_labels[{glob}]", self.scope),
                        message: format!(
                            "label {label:?} is forbidden (matches {:?})",
                            self.forbidden_labels.texts[glob]
                        ),
                    });
                }
            }
        }
        let title_hit =
            |name: &Option<String>| name.as_deref().is_some_and(|n| self.title_set.is_match(n));
        let titles = if title_hit(&job.workflow_name) || title_hit(&job.job_name) {
            self.titles.as_slice()
        } else {
            &[]
        };
        for rule in titles {
            for (what, name) in [("workflow", &job.workflow_name), ("job", &job.job_name)] {
                if let Some(name) = name {
                    if rule.regex.is_match(name) {
                        reasons.push(Reason {
                            rule: rule.id.clone(),
                            message: format!(
                                "{what} name {name:?} matches the blocked pattern {:?}",
                                rule.regex.as_str()
                            ),
                        });
                        break;
                    }
                }
            }
        }
        if self.safety.is_empty() {
            return;
        }
        let mut labels_hit = vec![false; self.safety.len()];
        for label in job.labels.iter().filter(|l| self.safety_labels.is_match(l)) {
            for glob in self.safety_labels.matches(label) {
                labels_hit[self.safety_label_owner[glob]] = true;
            }
        }
        for (index, rule) in self.safety.iter().enumerate() {
            let labels_match = rule.labels.is_empty() || labels_hit[index];
            let repo_match = rule.repositories.is_empty() || rule.repositories.any(&job.repository);
            let workflow_match = rule.workflows.is_empty()
                || job
                    .workflow_name
                    .as_deref()
                    .is_some_and(|w| rule.workflows.any(w));
            if !(labels_match && repo_match && workflow_match) {
                continue;
            }
            let reviewed = job.labels.iter().any(|l| rule.markers.any(l))
                || rule.reviewed_repositories.any(&job.repository);
            if !reviewed {
                reasons.push(Reason {
                    rule: rule.id.clone(),
                    message: format!(
                        "this job needs a safety review: add a review label ({}) or review repository {:?}",
                        rule.markers.texts.join(", "),
                        job.repository
                    ),
                });
            }
        }
    }
}

impl Policy {
    /// Parses and compiles a policy. Errors carry line:column where known.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let spec: PolicySpec = serde_yaml_ng::from_str(text).map_err(|e| {
            let position = e.location().map(|l| Position {
                line: l.line(),
                column: l.column(),
            });
            // The library appends " at line L column C"; the position is reported apart.
            let message = strip_location(&e.to_string());
            Error::Syntax { message, position }
        })?;
        Self::compile(&spec)
    }

    /// Reads and compiles the policy file at `path`. An unreadable file is [`Error::Io`].
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_yaml(&text)
    }

    /// Compiles an already-parsed policy: builds the glob sets and regular expressions
    /// and checks what serde cannot (a safety-review rule must select something).
    /// Errors here are [`Error::Invalid`], without a position.
    pub fn compile(spec: &PolicySpec) -> Result<Self> {
        let global = Rules::compile(&spec.global_rules(), "")?;
        let mut orgs = HashMap::new();
        let mut rule_count = global.count();
        for (org, rules) in &spec.orgs {
            let compiled = Rules::compile(rules, &format!("orgs.{}.", org.0))?;
            rule_count += compiled.count();
            orgs.insert(org.0, compiled);
        }
        Ok(Policy {
            dry_run: spec.dry_run,
            global,
            orgs,
            rule_count,
        })
    }

    /// A policy that allows everything (no file configured).
    pub fn allow_all() -> Self {
        Policy {
            dry_run: false,
            global: Rules {
                scope: String::new(),
                forbidden_labels: Globs {
                    set: GlobSet::empty(),
                    texts: Vec::new(),
                },
                allowed_repositories: None,
                titles: Vec::new(),
                title_set: RegexSet::empty(),
                safety: Vec::new(),
                safety_labels: GlobSet::empty(),
                safety_label_owner: Vec::new(),
                limits: Limits::default(),
            },
            orgs: HashMap::new(),
            rule_count: 0,
        }
    }

    /// True when the policy only records what it would deny: every decision allows.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Number of rules (patterns and limits) in the policy.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// Judges a job: global rules and its org's rules both apply; for the allowed
    /// repositories and each limit, the org's setting replaces the global one.
    pub fn evaluate(&self, job: &JobFacts) -> Decision {
        let mut reasons = Vec::new();
        let org = self.orgs.get(&job.org_id);
        self.global.check_denials(job, &mut reasons);
        if let Some(org) = org {
            org.check_denials(job, &mut reasons);
        }

        let allowed_repositories = org
            .and_then(|o| o.allowed_repositories.as_ref().map(|g| (g, &o.scope)))
            .or_else(|| {
                self.global
                    .allowed_repositories
                    .as_ref()
                    .map(|g| (g, &self.global.scope))
            });
        if let Some((globs, scope)) = allowed_repositories {
            if !globs.any(&job.repository) {
                reasons.push(Reason {
                    rule: format!("{scope}allowed_repositories"),
                    message: format!("repository {:?} is not on the allowed list", job.repository),
                });
            }
        }

        let limit = |pick: fn(&Limits) -> Option<u64>| -> Option<(u64, &str)> {
            org.and_then(|o| pick(&o.limits).map(|v| (v, o.scope.as_str())))
                .or_else(|| pick(&self.global.limits).map(|v| (v, self.global.scope.as_str())))
        };
        if let Some((max, scope)) = limit(|l| l.max_timeout_minutes) {
            let asked = job.requested_timeout_minutes();
            if asked > max {
                reasons.push(Reason {
                    rule: format!("{scope}limits.max_timeout_minutes"),
                    message: format!("timeout of {asked} minutes exceeds the limit of {max}"),
                });
            }
        }
        if let Some((max, scope)) = limit(|l| l.max_vcpus) {
            if let Some(asked) = job.requested_vcpus().filter(|asked| *asked > max) {
                reasons.push(Reason {
                    rule: format!("{scope}limits.max_vcpus"),
                    message: format!("{asked} vCPUs requested; the limit is {max}"),
                });
            }
        }
        if let Some((max, scope)) = limit(|l| l.max_memory_mib) {
            if let Some(asked) = job.requested_memory_mib().filter(|asked| *asked > max) {
                reasons.push(Reason {
                    rule: format!("{scope}limits.max_memory_mib"),
                    message: format!("{asked} MiB of memory requested; the limit is {max} MiB"),
                });
            }
        }

        Decision {
            allowed: reasons.is_empty() || self.dry_run,
            dry_run: self.dry_run,
            reasons,
        }
    }
}

/// Convenience for callers that hold a path: the position of an error as
/// `path:line:column: message`.
pub fn describe_error(path: &str, error: &Error) -> String {
    match error.position() {
        Some(position) => {
            let text = error.to_string();
            let prefix = format!("{position}: ");
            format!(
                "{path}:{position}: {}",
                text.strip_prefix(&prefix).unwrap_or(&text)
            )
        }
        None => format!("{path}: {error}"),
    }
}

/// Removes the " at line L column C" that the YAML library puts inside its messages
/// (the position is reported apart, in front).
fn strip_location(message: &str) -> String {
    let Some(at) = message.find(" at line ") else {
        return message.to_string();
    };
    let rest = &message[at + " at line ".len()..];
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let after_line = &rest[digits(rest)..];
    match after_line.strip_prefix(" column ") {
        Some(column) => format!("{}{}", &message[..at], &column[digits(column)..]),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::strip_location;

    #[test]
    fn locations_are_stripped_from_messages() {
        assert_eq!(
            strip_location("did not find expected ',' at line 3 column 1, while parsing"),
            "did not find expected ',', while parsing"
        );
        assert_eq!(
            strip_location("unknown field `x` at line 2 column 1"),
            "unknown field `x`"
        );
        assert_eq!(strip_location("plain"), "plain");
    }
}
