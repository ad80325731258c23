"""Log sinks written in Python, for the Rust logging pipeline (docs/python.md)."""

from typing import Any, Dict, List, Optional


class LogSink:
    """Where the logging pipeline stores job log lines and metadata.

    Subclass it and implement ``write``; hand an instance to
    ``nimbus.LoggingPipeline(config, sink=...)``. The pipeline calls the methods from
    its own threads, one call at a time per batch, and acknowledges a batch to its
    sender only once ``write`` returned: store durably before returning. An
    exception fails the batch (the sender retries it) with the exception's message.

    The pipeline never hands ``write`` a line whose ``(job_id, seq)`` is in
    ``stored_seqs(job_id)`` (a sender's retry) or twice in one batch, so a sink that
    implements ``stored_seqs`` stores each line once.

    A record is a dict: ``job_id``, ``seq`` (the line's position in its job, from 1;
    ``(job_id, seq)`` is unique), ``agent_id``, ``org_id``, ``repo_id``, ``level``,
    ``message``, ``ts`` (RFC 3339 text).
    """

    def write(self, records: List[Dict[str, Any]]) -> int:
        """Stores a batch durably; returns how many records were stored."""
        raise NotImplementedError("a LogSink implements write(records)")

    def stored_seqs(self, job_id: int) -> List[int]:
        """The seqs stored for a job: lines with these are not written again.
        The default (none) lets a retried batch be written twice."""
        return []

    def query(self, query: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Lines matching ``query`` (``job_id``, ``org_id``, ``level``, ``since``,
        ``after_seq``, ``limit``, ``order``), oldest first."""
        return []

    def prune(self, older_than: int) -> int:
        """Deletes lines older than ``older_than`` (epoch ms); returns how many."""
        return 0

    def write_metadata(self, rows: List[Dict[str, Any]]) -> int:
        """Stores job metadata rows (``job_id``, ``key``, ``value``, ...)."""
        raise NotImplementedError("this LogSink does not store metadata")

    def query_metadata(self, job_id: int, org_id: Optional[int]) -> List[Dict[str, Any]]:
        return []

    def prune_metadata(self, older_than: int) -> int:
        return 0

    def stats(self, org_id: Optional[int]) -> Dict[str, Any]:
        """``lines``, ``bytes``, ``per_level``, ``per_org``, ``last_ingest``."""
        return {}
