//! Table-driven tests of every rule kind, layering, dry-run and every error path.

use nimbus_policy::{describe_error, Error, JobFacts, Policy};

fn job(repo: &str, labels: &[&str]) -> JobFacts {
    JobFacts {
        org_id: 1,
        repository: repo.to_string(),
        workflow_name: Some("CI".into()),
        job_name: Some("build".into()),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        timeout_minutes: 30,
    }
}

fn policy(yaml: &str) -> Policy {
    match Policy::from_yaml(yaml) {
        Ok(policy) => policy,
        Err(e) => panic!("policy should load: {e}\n{yaml}"),
    }
}

fn rules_of(policy: &Policy, job: &JobFacts) -> Vec<String> {
    policy
        .evaluate(job)
        .reasons
        .into_iter()
        .map(|r| r.rule)
        .collect()
}

const FULL: &str = r#"
version: 1
forbidden_labels: ["privileged", "gpu-*"]
allowed_repositories: ["acme/*", "tools/lint"]
blocked_workflow_titles:
  - pattern: "deploy.*prod"
    case_insensitive: true
  - id: no-nightly
    pattern: "^nightly"
require_safety_review:
  - id: ml-review
    labels: ["ml-*"]
    reviewed_repositories: ["acme/ml-core"]
limits:
  max_timeout_minutes: 120
  max_vcpus: 8
  max_memory_mib: 16384
orgs:
  2:
    forbidden_labels: ["arm64"]
    allowed_repositories: ["beta/*"]
    limits:
      max_vcpus: 32
  "3":
    blocked_workflow_titles:
      - pattern: "experiment"
"#;

#[test]
fn each_rule_kind_allows_and_denies() {
    let p = policy(FULL);
    let with_workflow = |name: &str| JobFacts {
        workflow_name: Some(name.into()),
        ..job("acme/app", &["nimbus"])
    };
    let cases: Vec<(&str, JobFacts, Vec<&str>)> = vec![
        (
            "plain job",
            job("acme/app", &["self-hosted", "nimbus"]),
            vec![],
        ),
        (
            "forbidden label",
            job("acme/app", &["nimbus", "privileged"]),
            vec!["forbidden_labels[0]"],
        ),
        (
            "forbidden glob",
            job("acme/app", &["gpu-a100"]),
            vec!["forbidden_labels[1]"],
        ),
        (
            "two forbidden labels",
            job("acme/app", &["gpu-x", "privileged"]),
            vec!["forbidden_labels[1]", "forbidden_labels[0]"],
        ),
        (
            "repo not allowed",
            job("evil/app", &["nimbus"]),
            vec!["allowed_repositories"],
        ),
        ("exact allowed repo", job("tools/lint", &[]), vec![]),
        (
            "blocked title, any case",
            with_workflow("Deploy to PROD"),
            vec!["blocked_workflow_titles[0]"],
        ),
        (
            "title rule with id",
            with_workflow("nightly build"),
            vec!["no-nightly"],
        ),
        (
            "case-sensitive title",
            with_workflow("Nightly build"),
            vec![],
        ),
        (
            "job name blocked too",
            JobFacts {
                job_name: Some("deploy-prod".into()),
                ..job("acme/app", &[])
            },
            vec!["blocked_workflow_titles[0]"],
        ),
        (
            "safety review missing",
            job("acme/ml-train", &["ml-gpu"]),
            vec!["ml-review"],
        ),
        (
            "safety review marker",
            job("acme/ml-train", &["ml-gpu", "safety-reviewed"]),
            vec![],
        ),
        (
            "reviewed repository",
            job("acme/ml-core", &["ml-gpu"]),
            vec![],
        ),
        (
            "timeout over the limit",
            JobFacts {
                timeout_minutes: 240,
                ..job("acme/app", &[])
            },
            vec!["limits.max_timeout_minutes"],
        ),
        (
            "timeout label over the limit",
            job("acme/app", &["timeout:500"]),
            vec!["limits.max_timeout_minutes"],
        ),
        (
            "too many vCPUs",
            job("acme/app", &["vcpus:16"]),
            vec!["limits.max_vcpus"],
        ),
        (
            "too much memory",
            job("acme/app", &["memory:32g"]),
            vec!["limits.max_memory_mib"],
        ),
        (
            "within limits",
            job("acme/app", &["vcpus:8", "memory:16g", "timeout:120"]),
            vec![],
        ),
    ];
    for (name, facts, expected) in cases {
        let decision = p.evaluate(&facts);
        let rules: Vec<String> = decision.reasons.iter().map(|r| r.rule.clone()).collect();
        assert_eq!(rules, expected, "{name}");
        assert_eq!(decision.allowed, expected.is_empty(), "{name}");
        assert!(
            decision.reasons.iter().all(|r| !r.message.is_empty()),
            "{name}: reasons explain"
        );
    }
}

#[test]
fn org_rules_layer_over_global_ones() {
    let p = policy(FULL);
    let org2 = |repo: &str, labels: &[&str]| JobFacts {
        org_id: 2,
        ..job(repo, labels)
    };
    // Org 2's allowed list replaces the global one…
    assert_eq!(rules_of(&p, &org2("beta/app", &[])), Vec::<String>::new());
    assert_eq!(
        rules_of(&p, &org2("acme/app", &[])),
        vec!["orgs.2.allowed_repositories"]
    );
    // …its forbidden labels add to the global ones…
    assert_eq!(
        rules_of(&p, &org2("beta/app", &["arm64", "privileged"])),
        vec!["forbidden_labels[0]", "orgs.2.forbidden_labels[0]"]
    );
    // …and its vCPU limit replaces the global one, while the global memory limit stays.
    assert_eq!(
        rules_of(&p, &org2("beta/app", &["vcpus:16"])),
        Vec::<String>::new()
    );
    assert_eq!(
        rules_of(&p, &org2("beta/app", &["vcpus:64", "memory:20g"])),
        vec!["orgs.2.limits.max_vcpus", "limits.max_memory_mib"]
    );
    // Org 3 (a string key) adds a title rule; other orgs do not see it.
    let experiment = |org_id| JobFacts {
        org_id,
        workflow_name: Some("experiment 4".into()),
        ..job("acme/app", &[])
    };
    assert_eq!(
        rules_of(&p, &experiment(3)),
        vec!["orgs.3.blocked_workflow_titles[0]"]
    );
    assert!(rules_of(&p, &experiment(1)).is_empty());
}

#[test]
fn dry_run_records_but_allows() {
    let p = policy("version: 1\ndry_run: true\nforbidden_labels: [privileged]\n");
    assert!(p.dry_run());
    let decision = p.evaluate(&job("acme/app", &["privileged"]));
    assert!(decision.allowed);
    assert!(decision.would_deny());
    assert_eq!(decision.reasons[0].rule, "forbidden_labels[0]");
    let json = serde_json::to_value(&decision).expect("json");
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["dry_run"], true);
}

#[test]
fn an_empty_policy_allows_everything() {
    let p = policy("version: 1\n");
    assert_eq!(p.rule_count(), 0);
    assert!(p.evaluate(&job("anyone/anything", &["privileged"])).allowed);
    assert!(Policy::allow_all().evaluate(&job("x/y", &[])).allowed);
}

#[test]
fn every_error_names_its_position() {
    let cases: Vec<(&str, &str, (usize, usize), &str)> = vec![
        (
            "bad YAML",
            "version: 1\nforbidden_labels: [a, b\n",
            (3, 1),
            "did not find expected",
        ),
        (
            "unknown field",
            "version: 1\nforbiden_labels: [a]\n",
            (2, 1),
            "unknown field `forbiden_labels`",
        ),
        (
            "unknown nested field",
            "version: 1\nlimits:\n  max_cpus: 4\n",
            (3, 3),
            "unknown field `max_cpus`",
        ),
        (
            "wrong type",
            "version: 1\nlimits:\n  max_vcpus: many\n",
            (3, 14),
            "invalid type",
        ),
        (
            "wrong type for a list",
            "version: 1\nforbidden_labels: privileged\n",
            (2, 19),
            "invalid type",
        ),
        (
            "bad regex",
            "version: 1\nblocked_workflow_titles:\n  - pattern: \"deploy(\"\n",
            (3, 5),
            "invalid regular expression",
        ),
        (
            "bad glob",
            "version: 1\nallowed_repositories: [\"acme/[abc\"]\n",
            (2, 23),
            "invalid glob",
        ),
        (
            "bad version",
            "version: 2\n",
            (1, 1),
            "unsupported policy version 2",
        ),
        (
            "missing version",
            "dry_run: true\n",
            (1, 1),
            "missing field `version`",
        ),
        (
            "bad org key",
            "version: 1\norgs:\n  acme:\n    forbidden_labels: [x]\n",
            (3, 3),
            "not an org id",
        ),
        (
            "unknown org field",
            "version: 1\norgs:\n  4:\n    dry_run: true\n",
            (4, 5),
            "unknown field `dry_run`",
        ),
    ];
    for (name, yaml, (line, column), needle) in cases {
        let err = Policy::from_yaml(yaml).expect_err(name);
        let position = err
            .position()
            .unwrap_or_else(|| panic!("{name}: no position in {err}"));
        assert_eq!(
            (position.line, position.column),
            (line, column),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains(needle),
            "{name}: {err:?} should mention {needle:?}"
        );
        let described = describe_error("policy.yaml", &err);
        assert!(
            described.starts_with(&format!("policy.yaml:{line}:{column}: ")),
            "{name}: {described}"
        );
    }
}

#[test]
fn safety_review_rules_must_say_what_they_cover() {
    let err = Policy::from_yaml("version: 1\nrequire_safety_review:\n  - markers: [ok]\n")
        .expect_err("empty selector");
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(
        err.to_string().contains("require_safety_review[0]"),
        "{err}"
    );
}

#[test]
fn missing_files_are_io_errors() {
    let err =
        Policy::from_path(std::path::Path::new("/nonexistent/policy.yaml")).expect_err("missing");
    assert!(matches!(err, Error::Io { .. }));
}

proptest::proptest! {
    #[test]
    fn any_text_parses_or_fails_cleanly(text in "\\PC{0,300}") {
        let _ = Policy::from_yaml(&text);
    }

    #[test]
    fn yaml_like_text_parses_or_fails_cleanly(
        keys in proptest::collection::vec("(version|dry_run|forbidden_labels|allowed_repositories|limits|orgs|max_vcpus|pattern|[a-z]{1,6})", 0..6),
        values in proptest::collection::vec("(1|2|true|\\[a, b\\]|\\{\\}|\"[*?\\[\\]()a-z]{0,6}\"|-1|x)", 0..6),
    ) {
        let mut text = String::new();
        for (i, key) in keys.iter().enumerate() {
            let indent = if i % 3 == 2 { "  " } else { "" };
            let value = values.get(i).map(String::as_str).unwrap_or("");
            text.push_str(&format!("{indent}{key}: {value}\n"));
        }
        let _ = Policy::from_yaml(&text);
    }
}
