import asyncio
import threading
import time

import pytest

import nimbus

JOB = {"repo": "acme/app", "labels": ["nimbus", "param:lr=0.01"], "steps": [{"run": "echo hi"}]}


def test_a_job_submitted_in_process_is_read_over_http(control_plane):
    job = control_plane.client(org_id=1).submit(JOB)
    assert job["status"] == "queued" and job["org_id"] == 1
    http = nimbus.ControlPlaneClient(control_plane.base_url, control_plane.token("org", org_id=1))
    assert http.get(job["id"])["repo"] == "acme/app"
    page = http.list(status="queued")
    assert [j["id"] for j in page["jobs"]] == [job["id"]]
    assert http.metadata_values("lr") == [{"value": "0.01", "jobs": 1}]


def test_an_agent_leases_heartbeats_and_completes_in_process(control_plane):
    job = control_plane.client(org_id=1).submit(JOB)
    agent = control_plane.agent("agent-1")
    lease = agent.lease(wait=1.0, labels=["nimbus"])
    assert lease["job"]["id"] == job["id"]
    token = lease["fencing_token"]
    assert agent.heartbeat(job["id"], token)["fencing_token"] == token
    done = agent.complete(job["id"], token, "succeeded", exit_code=0)
    assert done["status"] == "succeeded"
    assert agent.lease(wait=0.0) is None
    with pytest.raises(nimbus.Conflict):
        agent.complete(job["id"], token + 1, "failed")


def test_orgs_see_only_their_own_jobs(control_plane):
    job = control_plane.client(org_id=1).submit(JOB)
    other = control_plane.client(org_id=2)
    with pytest.raises(nimbus.NotFound):
        other.get(job["id"])
    assert other.list()["jobs"] == []
    with pytest.raises(nimbus.AuthError):
        other.upsert_org(3, "initech")
    with pytest.raises(nimbus.AuthError):
        # An org's session may not lease: that is an agent's.
        other.lease()


def test_bad_requests_raise_invalid_input_with_the_reason(control_plane):
    client = control_plane.client(org_id=1)
    with pytest.raises(nimbus.InvalidInput, match="steps"):
        client.submit({"repo": "acme/app"})
    with pytest.raises(nimbus.InvalidInput, match="unknown field"):
        client.submit({**JOB, "colour": "blue"})
    # A string where a list belongs is refused, not read as a list of characters.
    with pytest.raises(nimbus.InvalidInput, match="sequence"):
        client.submit({**JOB, "labels": "nimbus"})
    with pytest.raises(nimbus.InvalidInput, match="JSON"):
        client.submit({**JOB, "env": {"A": object()}})
    assert client.list()["jobs"] == []
    with pytest.raises(nimbus.InvalidInput):
        client.list(status="sleeping")
    with pytest.raises(nimbus.InvalidInput):
        control_plane.agent().complete(1, 1, "exploded")


def test_the_rate_limit_raises_rate_limited_with_retry_after():
    config = {"NIMBUS_JWT_SECRET": "python-tests-secret-0123456789", "NIMBUS_ORG_JOB_RATE_LIMIT": "2"}
    with nimbus.ControlPlane(config).start() as running:
        running.client().upsert_org(1, "acme")
        client = running.client(org_id=1)
        client.submit(JOB)
        client.submit(JOB)
        with pytest.raises(nimbus.RateLimited) as raised:
            client.submit(JOB)
        assert raised.value.retry_after > 0
        assert isinstance(raised.value, nimbus.NimbusError)


def test_unreachable_control_planes_are_unavailable():
    client = nimbus.ControlPlaneClient("http://127.0.0.1:9", "token")
    with pytest.raises(nimbus.Unavailable):
        client.orgs()


def test_a_blocking_call_releases_the_gil(control_plane):
    """An agent waits for a job in one thread while another submits it: with the
    GIL held during the wait, the submit could not run and the lease would time out."""
    agent = control_plane.agent("waiting-agent")
    leased = []
    waiter = threading.Thread(target=lambda: leased.append(agent.lease(wait=10.0)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.2)
    job = control_plane.client(org_id=1).submit(JOB)
    waiter.join()
    assert leased[0]["job"]["id"] == job["id"]
    assert time.monotonic() - started < 5


def test_async_clients_work_under_asyncio(control_plane):
    async def scenario():
        client = control_plane.async_client(org_id=1)
        http = nimbus.AsyncControlPlaneClient(control_plane.base_url, control_plane.token("org", org_id=1))
        jobs = await asyncio.gather(*(client.submit(JOB) for _ in range(5)))
        listed = await http.list(limit=10)
        assert sorted(j["id"] for j in listed["jobs"]) == sorted(j["id"] for j in jobs)
        with pytest.raises(nimbus.NotFound):
            await http.get(10_000)
        return len(jobs)

    assert asyncio.run(scenario()) == 5


def test_stopping_is_idempotent_and_the_port_closes():
    running = nimbus.ControlPlane().start()
    client = nimbus.ControlPlaneClient(running.base_url, running.token())
    assert client.orgs() == []
    running.stop()
    running.stop()
    assert not running.running
    with pytest.raises(nimbus.Unavailable):
        client.orgs()


def test_settings_must_be_nimbus_variables():
    with pytest.raises(nimbus.InvalidInput, match="DATABASE_URL"):
        nimbus.ControlPlane({"DATABASE_URL": "sqlite::memory:"})
    with pytest.raises(nimbus.NimbusError, match="NIMBUS_DATABASE_URL"):
        nimbus.ControlPlane({"NIMBUS_DATABASE_URL": "mysql://x"}).start()
