import hashlib
import hmac

import pytest

import nimbus


def github_signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_github_signatures_verify():
    body = b'{"action": "queued"}'
    header = github_signature(b"webhook-secret", body)
    assert nimbus.verify_github_signature("webhook-secret", body, header)
    assert nimbus.verify_github_signature(b"webhook-secret", body.decode(), header)


def test_wrong_missing_and_malformed_signatures_do_not_verify():
    body = b'{"action": "queued"}'
    assert not nimbus.verify_github_signature("other-secret", body, github_signature(b"webhook-secret", body))
    assert not nimbus.verify_github_signature("webhook-secret", body + b" ", github_signature(b"webhook-secret", body))
    assert not nimbus.verify_github_signature("webhook-secret", body, None)
    assert not nimbus.verify_github_signature("webhook-secret", body, "sha1=abc")
    assert not nimbus.verify_github_signature("webhook-secret", body, "sha256=not-hex")


def test_metadata_comes_from_param_and_meta_labels():
    labels = ["nimbus", "param:lr=0.01", "meta:team=ml", "param:lr=0.02", "param:=x", "meta:novalue"]
    assert nimbus.parse_metadata_labels(labels) == {"lr": "0.02", "team": "ml"}


def test_minted_tokens_are_accepted_by_the_control_plane(control_plane):
    secret = "python-tests-secret-0123456789"
    org_token = nimbus.mint_token(secret, "org", org_id=1)
    client = nimbus.ControlPlaneClient(control_plane.base_url, org_token)
    assert [org["id"] for org in client.orgs()] == [1]
    forged = nimbus.mint_token("another-secret-0123456789", "admin")
    with pytest.raises(nimbus.AuthError):
        nimbus.ControlPlaneClient(control_plane.base_url, forged).orgs()


def test_mint_token_refuses_what_would_be_a_wrong_token():
    with pytest.raises(nimbus.InvalidInput, match="org id"):
        nimbus.mint_token("secret-0123456789", "org")
    with pytest.raises(nimbus.InvalidInput, match="org_id"):
        nimbus.mint_token("secret-0123456789", "admin", org_id=3)
    with pytest.raises(nimbus.InvalidInput, match="role"):
        nimbus.mint_token("secret-0123456789", "root")
    with pytest.raises(nimbus.InvalidInput):
        nimbus.mint_token("", "admin")
