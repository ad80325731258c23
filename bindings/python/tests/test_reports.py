"""Fleet analytics from Python: ``ControlPlaneClient.observability`` and the
operations guide's command lines ``python -m nimbus.cli.report …`` and
``python -m nimbus.cli.jobs --with-metadata`` against a running control plane."""

import json
import subprocess
import sys

import pytest

import nimbus

SECRET = "python-reports-secret-0123456789"


@pytest.fixture
def fleet():
    """A control plane on a free port with two orgs' jobs, one of them finished."""
    with nimbus.ControlPlane({"NIMBUS_JWT_SECRET": SECRET}).start() as running:
        admin = running.client()
        admin.upsert_org(1, "acme")
        admin.upsert_org(2, "globex")
        acme, globex = running.client(org_id=1), running.client(org_id=2)
        for lr in ("0.1", "0.1", "0.01"):
            acme.submit({"repo": "acme/app", "labels": [f"param:lr={lr}"], "steps": [{"run": "true"}]})
        agent = running.agent("py-agent")
        lease = agent.lease()  # acme's oldest job: the only org with work yet
        agent.complete(lease["job"]["id"], lease["fencing_token"], "succeeded", exit_code=0)
        globex.submit({"repo": "globex/app", "labels": ["param:lr=0.5"], "steps": [{"run": "true"}]})
        yield running


def cli(module, *args):
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60
    )


def test_observability_reports_each_org(fleet):
    report = fleet.client().observability(metadata_key="lr")
    by_org = {org["org_id"]: org for org in report["orgs"]}
    assert by_org[1]["total"] == 3 and by_org[2]["total"] == 1
    assert by_org[1]["jobs"]["succeeded"] == 1 and by_org[1]["jobs"]["queued"] == 2
    assert by_org[1]["success_rate"] == 1.0
    assert by_org[1]["queue_wait_ms"]["jobs"] == 1
    assert [(b["value"], b["total"]) for b in by_org[1]["metadata"]] == [("0.01", 1), ("0.1", 2)]
    own = fleet.client(org_id=2).observability()
    assert [org["org_id"] for org in own["orgs"]] == [2]
    with pytest.raises(nimbus.NotFound):
        fleet.client(org_id=2).observability(org_id=1)
    with pytest.raises(nimbus.InvalidInput, match="since must be"):
        fleet.client().observability(since="last tuesday")
    summary = fleet.client().job_summary(metadata_key="lr", metadata_value="0.1")
    assert summary["total"] == 2


def test_async_observability(fleet):
    import asyncio

    async def main():
        return await fleet.async_client(org_id=1).observability(since="7d")

    report = asyncio.run(main())
    assert [org["total"] for org in report["orgs"]] == [3]


def test_the_guides_report_command_line(fleet):
    done = cli("nimbus.cli.report", "orgs", "--base-url", fleet.base_url, "--token", fleet.token())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["ORG", "NAME", "JOBS", "QUEUED"]
    assert lines[1].split()[:4] == ["1", "acme", "3", "2"]
    assert lines[2].split()[:4] == ["2", "globex", "1", "1"]

    done = cli("nimbus.cli.report", "orgs", "--json", "--metadata-key", "lr",
               "--base-url", fleet.base_url, "--token", fleet.token())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == fleet.client().observability(metadata_key="lr")

    # The guide passes $NIMBUS_JWT_SECRET as --token: accepted, with a warning.
    done = cli("nimbus.cli.report", "orgs", "--base-url", fleet.base_url, "--token", SECRET)
    assert done.returncode == 0, done.stderr
    assert "taking it for NIMBUS_JWT_SECRET" in done.stderr


def test_jobs_with_metadata(fleet):
    done = cli("nimbus.cli.jobs", "--with-metadata", "--base-url", fleet.base_url,
               "--token", fleet.token("org", org_id=1))
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[1:]
    assert len(rows) == 3
    assert all(row.split()[1] == "1" for row in rows), rows
    assert sorted(row.split()[-1] for row in rows) == ["lr=0.01", "lr=0.1", "lr=0.1"]


def test_a_down_or_refusing_server_is_one_line_and_exit_1(fleet):
    done = cli("nimbus.cli.report", "orgs", "--base-url", "http://127.0.0.1:9", "--token", fleet.token())
    assert done.returncode == 1
    assert done.stderr.strip().startswith("nimbus: cannot reach the control plane at http://127.0.0.1:9")
    assert len(done.stderr.strip().splitlines()) == 1
    wrong = nimbus.mint_token("another-secret-0123456789abcdef", "admin")
    done = cli("nimbus.cli.report", "orgs", "--base-url", fleet.base_url, "--token", wrong)
    assert done.returncode == 1
    assert "refused the token (401)" in done.stderr
    done = cli("nimbus.cli.report", "orgs", "--no-such-flag")
    assert done.returncode == 2
