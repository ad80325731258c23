import json
import threading
import time
import urllib.error
import urllib.request

import pytest

import nimbus

SECRET = "python-logs-secret-0123456789"


class ListSink(nimbus.LogSink):
    """Keeps lines in a list; fails the first `failures` writes."""

    def __init__(self, failures=0):
        self.records = []
        self.failures = failures
        self.threads = set()

    def write(self, records):
        self.threads.add(threading.get_ident())
        if self.failures:
            self.failures -= 1
            raise RuntimeError("disk full")
        self.records.extend(records)
        return len(records)

    def stored_seqs(self, job_id):
        return [r["seq"] for r in self.records if r["job_id"] == job_id]


def post_lines(base_url, lines, token):
    body = "\n".join(json.dumps(line) for line in lines).encode()
    request = urllib.request.Request(
        base_url + "/api/logs",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def lines(job_id, seqs):
    # Timestamps of now: the pipeline's retention deletes lines older than its
    # NIMBUS_LOG_RETENTION_DAYS, and may run at any moment.
    now_ms = int(time.time() * 1000)
    return [
        {"job_id": job_id, "seq": seq, "agent_id": "agent-1", "org_id": 1, "level": "info",
         "message": f"line {seq}", "ts": now_ms + seq}
        for seq in seqs
    ]


def test_a_python_sink_receives_the_lines_the_pipeline_acknowledges():
    sink = ListSink()
    token = nimbus.mint_token(SECRET, "admin")
    with nimbus.LoggingPipeline({"NIMBUS_JWT_SECRET": SECRET}, sink=sink).start() as pipeline:
        assert post_lines(pipeline.base_url, lines(7, [1, 2, 3]), token) == {"accepted": 3}
        # Acknowledged means written: the sink has them now.
        assert [(r["job_id"], r["seq"], r["message"]) for r in sink.records] == [
            (7, 1, "line 1"), (7, 2, "line 2"), (7, 3, "line 3"),
        ]
        assert sink.records[0]["org_id"] == 1 and sink.records[0]["level"] == "info"
        # A line sent again is not stored twice.
        post_lines(pipeline.base_url, lines(7, [3, 4]), token)
        assert [r["seq"] for r in sink.records] == [1, 2, 3, 4]
    # The GIL was taken on the pipeline's blocking threads, not the caller's.
    assert threading.get_ident() not in sink.threads


def test_a_failing_python_sink_fails_the_batch_and_loses_nothing():
    sink = ListSink(failures=1)
    token = nimbus.mint_token(SECRET, "admin")
    with nimbus.LoggingPipeline({"NIMBUS_JWT_SECRET": SECRET}, sink=sink).start() as pipeline:
        deadline = time.monotonic() + 20
        while True:
            try:
                post_lines(pipeline.base_url, lines(8, [1, 2]), token)
                break
            except urllib.error.HTTPError as error:
                # Refused while the sink fails (503 with Retry-After): send it again.
                assert error.code == 503, error.read()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert [r["seq"] for r in sink.records] == [1, 2]


def test_a_sink_must_have_a_write_method():
    with pytest.raises(nimbus.InvalidInput, match="write"):
        nimbus.LoggingPipeline({"NIMBUS_JWT_SECRET": SECRET}, sink=object())


def test_logs_clients_write_and_read_through_the_pipeline(tmp_path):
    token = nimbus.mint_token(SECRET, "admin")
    config = {"NIMBUS_JWT_SECRET": SECRET, "NIMBUS_DATA_DIR": str(tmp_path)}
    with nimbus.LoggingPipeline(config).start() as pipeline:
        client = nimbus.LogsClient(pipeline.base_url, token)
        assert client.write(lines(9, [1, 2, 3])) == 3
        # A line sent again is accepted (the sender may stop retrying) and stored once.
        assert client.write(lines(9, [3])) == 1
        got = client.query(job_id=9, order="oldest")
        assert [(line["seq"], line["message"]) for line in got] == [(1, "line 1"), (2, "line 2"), (3, "line 3")]
        assert [line["seq"] for line in client.query(job_id=9, limit=1)] == [3]
        assert client.stats()["lines"] == 3

        async def read_async():
            reader = nimbus.AsyncLogsClient(pipeline.base_url, token)
            return await reader.query(job_id=9, after_seq=2)

        import asyncio

        assert [line["seq"] for line in asyncio.run(read_async())] == [3]

        with pytest.raises(nimbus.InvalidInput, match="order"):
            client.query(order="sideways")
        with pytest.raises(nimbus.InvalidInput):
            client.write([{"job_id": 9, "message": "no seq"}])
        with pytest.raises(nimbus.AuthError):
            nimbus.LogsClient(pipeline.base_url, nimbus.mint_token("wrong-secret-0123456789", "admin")).stats()
    with pytest.raises(nimbus.Unavailable):
        nimbus.LogsClient(pipeline.base_url, token).stats()
