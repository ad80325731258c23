"""Shared fixtures: an embedded control plane per test that needs one."""

import pytest

import nimbus


@pytest.fixture
def control_plane():
    """A control plane in this process: in-memory SQLite, a free port."""
    with nimbus.ControlPlane({"NIMBUS_JWT_SECRET": "python-tests-secret-0123456789"}).start() as running:
        running.client().upsert_org(1, "acme")
        running.client().upsert_org(2, "globex")
        yield running
