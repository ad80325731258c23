import pytest

import nimbus

POLICY = """
version: 1
forbidden_labels: ["privileged", "gpu-*"]
allowed_repositories: ["acme/*"]
limits:
  max_vcpus: 8
"""


def test_an_allowed_job_has_no_reasons():
    decision = nimbus.Policy.from_yaml(POLICY).evaluate(
        {"repository": "acme/app", "labels": ["nimbus", "vcpus:4"]}
    )
    assert decision.allowed
    assert bool(decision)
    assert decision.reasons == []


def test_a_denied_job_names_every_rule_it_broke():
    decision = nimbus.Policy.from_yaml(POLICY).evaluate(
        {"repo": "evil/app", "labels": ["gpu-a100", "vcpus:16"]}
    )
    assert not decision.allowed
    rules = [reason.rule for reason in decision.reasons]
    assert rules == ["forbidden_labels[1]", "allowed_repositories", "limits.max_vcpus"]
    assert "gpu-a100" in decision.reasons[0].message


def test_dry_run_reports_but_allows():
    policy = nimbus.Policy.from_yaml(POLICY + "dry_run: true\n")
    assert policy.dry_run
    decision = policy.evaluate({"repository": "evil/app"})
    assert decision.allowed and decision.dry_run
    assert [r.rule for r in decision.reasons] == ["allowed_repositories"]


def test_a_policy_file_loads(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert nimbus.Policy.from_path(path).rule_count == nimbus.Policy.from_yaml(POLICY).rule_count


def test_bad_policies_raise_policy_error_with_the_reason():
    with pytest.raises(nimbus.PolicyError, match="version"):
        nimbus.Policy.from_yaml("forbidden_labels: [x]\n")
    with pytest.raises(nimbus.PolicyError):
        nimbus.Policy.from_yaml("version: 1\nblocked_workflow_titles: [{pattern: '('}]\n")
    with pytest.raises(nimbus.PolicyError):
        nimbus.Policy.from_path("/nonexistent/policy.yaml")
    # Every Nimbus exception is a NimbusError.
    assert issubclass(nimbus.PolicyError, nimbus.NimbusError)


def test_a_job_that_is_not_a_mapping_is_invalid_input():
    with pytest.raises(nimbus.InvalidInput):
        nimbus.Policy.allow_all().evaluate({"repository": "acme/app", "labels": "not-a-list"})
