"""Type stubs of the Rust extension module (bindings/python/src)."""

import os
from typing import Any, Awaitable, Dict, List, Literal, Mapping, Optional, Sequence, Type, Union

from types import TracebackType

__version__: str

Job = Dict[str, Any]
"""A job as the HTTP API returns it (docs/api.md): id, org_id, repo, status, labels, ..."""

class NimbusError(Exception):
    """Base class of every error Nimbus raises."""

class PolicyError(NimbusError):
    """A policy that does not load (YAML, schema, a bad glob or pattern)."""

class InvalidInput(NimbusError):
    """A request or argument Nimbus refuses as malformed or out of range."""

class AuthError(NimbusError):
    """Missing or wrong credentials, or credentials that may not do this."""

class NotFound(NimbusError):
    """The thing does not exist, or the caller may not know it exists."""

class Conflict(NimbusError):
    """A state conflict: a stale fencing token, a replayed delivery, a finished job."""

class RateLimited(NimbusError):
    """The org is over its job rate limit."""

    retry_after: float

class Unavailable(NimbusError):
    """A dependency (database, control plane) is not reachable or not configured."""

class Reason:
    """A policy rule that matched, and why."""

    @property
    def rule(self) -> str: ...
    @property
    def message(self) -> str: ...

class Decision:
    """The outcome of evaluating a job against a policy."""

    @property
    def allowed(self) -> bool: ...
    @property
    def dry_run(self) -> bool: ...
    @property
    def reasons(self) -> List[Reason]: ...
    def __bool__(self) -> bool: ...

class Policy:
    """A loaded, compiled admission policy (docs/policy.md)."""

    @staticmethod
    def from_yaml(text: str) -> "Policy": ...
    @staticmethod
    def from_path(path: Union[str, "os.PathLike[str]"]) -> "Policy": ...
    @staticmethod
    def allow_all() -> "Policy": ...
    @property
    def dry_run(self) -> bool: ...
    @property
    def rule_count(self) -> int: ...
    def evaluate(self, job: Mapping[str, Any]) -> Decision:
        """Judges a job: ``repository`` (or ``repo``), ``org_id``, ``labels``,
        ``workflow_name``, ``job_name``, ``timeout_minutes``."""

JobStatusName = Literal["rejected", "queued", "leased", "succeeded", "failed", "timed_out", "cancelled"]
CompletionStatus = Literal["succeeded", "failed", "timed_out", "cancelled"]

class ControlPlaneClient:
    """The control plane for one caller; each call blocks (without the GIL)."""

    def __init__(self, base_url: str, token: Optional[str] = None) -> None: ...
    def submit(self, job: Mapping[str, Any]) -> Job: ...
    def list(
        self,
        *,
        status: Optional[JobStatusName] = None,
        repo: Optional[str] = None,
        label: Optional[str] = None,
        metadata_key: Optional[str] = None,
        metadata_value: Optional[str] = None,
        org_id: Optional[int] = None,
        limit: int = 50,
        cursor: Optional[int] = None,
    ) -> Dict[str, Any]: ...
    def get(self, job_id: int) -> Job: ...
    def cancel(self, job_id: int) -> Job: ...
    def orgs(self) -> List[Dict[str, Any]]: ...
    def upsert_org(self, org_id: int, name: str) -> Dict[str, Any]: ...
    def metadata_values(self, key: str, *, org_id: Optional[int] = None, limit: int = 100) -> List[Dict[str, Any]]: ...
    def observability(
        self,
        *,
        metadata_key: Optional[str] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        org_id: Optional[int] = None,
    ) -> Dict[str, Any]: ...
    def job_summary(
        self,
        *,
        metadata_key: Optional[str] = None,
        metadata_value: Optional[str] = None,
        org_id: Optional[int] = None,
    ) -> Dict[str, Any]: ...
    def lease(self, *, wait: float = 0.0, labels: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]: ...
    def heartbeat(self, job_id: int, fencing_token: int) -> Dict[str, Any]: ...
    def complete(
        self,
        job_id: int,
        fencing_token: int,
        status: CompletionStatus,
        *,
        exit_code: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> Job: ...

class AsyncControlPlaneClient:
    """ControlPlaneClient for asyncio: every call returns an awaitable."""

    def __init__(self, base_url: str, token: Optional[str] = None) -> None: ...
    def submit(self, job: Mapping[str, Any]) -> Awaitable[Job]: ...
    def list(
        self,
        *,
        status: Optional[JobStatusName] = None,
        repo: Optional[str] = None,
        label: Optional[str] = None,
        metadata_key: Optional[str] = None,
        metadata_value: Optional[str] = None,
        org_id: Optional[int] = None,
        limit: int = 50,
        cursor: Optional[int] = None,
    ) -> Awaitable[Dict[str, Any]]: ...
    def get(self, job_id: int) -> Awaitable[Job]: ...
    def cancel(self, job_id: int) -> Awaitable[Job]: ...
    def orgs(self) -> Awaitable[List[Dict[str, Any]]]: ...
    def upsert_org(self, org_id: int, name: str) -> Awaitable[Dict[str, Any]]: ...
    def metadata_values(self, key: str, *, org_id: Optional[int] = None, limit: int = 100) -> Awaitable[List[Dict[str, Any]]]: ...
    def observability(
        self,
        *,
        metadata_key: Optional[str] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        org_id: Optional[int] = None,
    ) -> Awaitable[Dict[str, Any]]: ...
    def job_summary(
        self,
        *,
        metadata_key: Optional[str] = None,
        metadata_value: Optional[str] = None,
        org_id: Optional[int] = None,
    ) -> Awaitable[Dict[str, Any]]: ...
    def lease(self, *, wait: float = 0.0, labels: Optional[Sequence[str]] = None) -> Awaitable[Optional[Dict[str, Any]]]: ...
    def heartbeat(self, job_id: int, fencing_token: int) -> Awaitable[Dict[str, Any]]: ...
    def complete(
        self,
        job_id: int,
        fencing_token: int,
        status: CompletionStatus,
        *,
        exit_code: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> Awaitable[Job]: ...

class EmbeddedControlPlane:
    """A control plane running in this process (from ControlPlane.start())."""

    @property
    def base_url(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def client(self, org_id: Optional[int] = None) -> ControlPlaneClient: ...
    def async_client(self, org_id: Optional[int] = None) -> AsyncControlPlaneClient: ...
    def agent(self, agent_id: str = "python-agent") -> ControlPlaneClient: ...
    def token(self, role: Literal["admin", "agent", "org"] = "admin", org_id: Optional[int] = None, ttl: int = 3600) -> str: ...
    def stop(self) -> None: ...
    def __enter__(self) -> "EmbeddedControlPlane": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

class ControlPlane:
    """A control plane to run in this process, configured by NIMBUS_* settings."""

    def __init__(self, config: Optional[Mapping[str, str]] = None) -> None: ...
    def start(self) -> EmbeddedControlPlane: ...

class EmbeddedLoggingPipeline:
    """A logging pipeline running in this process (from LoggingPipeline.start())."""

    @property
    def base_url(self) -> str: ...
    def stop(self) -> None: ...
    def __enter__(self) -> "EmbeddedLoggingPipeline": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

LogOrder = Literal["newest", "oldest"]

class LogsClient:
    """The logging pipeline's API (docs/logging.md); each call blocks without the GIL."""

    def __init__(self, base_url: str, token: Optional[str] = None) -> None: ...
    def write(self, records: Sequence[Mapping[str, Any]]) -> int: ...
    def query(
        self,
        *,
        job_id: Optional[int] = None,
        level: Optional[str] = None,
        since: Optional[int] = None,
        after_seq: Optional[int] = None,
        limit: int = 100,
        order: LogOrder = "newest",
    ) -> List[Dict[str, Any]]: ...
    def write_metadata(self, rows: Sequence[Mapping[str, Any]]) -> int: ...
    def metadata(self, job_id: int) -> List[Dict[str, Any]]: ...
    def stats(self) -> Dict[str, Any]: ...

class AsyncLogsClient:
    """LogsClient for asyncio: every call returns an awaitable."""

    def __init__(self, base_url: str, token: Optional[str] = None) -> None: ...
    def write(self, records: Sequence[Mapping[str, Any]]) -> Awaitable[int]: ...
    def query(
        self,
        *,
        job_id: Optional[int] = None,
        level: Optional[str] = None,
        since: Optional[int] = None,
        after_seq: Optional[int] = None,
        limit: int = 100,
        order: LogOrder = "newest",
    ) -> Awaitable[List[Dict[str, Any]]]: ...
    def write_metadata(self, rows: Sequence[Mapping[str, Any]]) -> Awaitable[int]: ...
    def metadata(self, job_id: int) -> Awaitable[List[Dict[str, Any]]]: ...
    def stats(self) -> Awaitable[Dict[str, Any]]: ...

class LoggingPipeline:
    """The logging pipeline to run in this process, storing into a Python LogSink
    (or the configured backend)."""

    def __init__(self, config: Optional[Mapping[str, str]] = None, *, sink: Optional[Any] = None) -> None: ...
    def start(self) -> EmbeddedLoggingPipeline: ...

def verify_github_signature(secret: Union[str, bytes], body: Union[str, bytes], header: Optional[str]) -> bool: ...
def parse_metadata_labels(labels: Sequence[str]) -> Dict[str, str]: ...
def mint_token(
    secret: str,
    role: Literal["admin", "agent", "org"],
    org_id: Optional[int] = None,
    ttl: int = 3600,
    subject: Optional[str] = None,
) -> str: ...
def serve(name: Literal["control-plane", "cache-proxy", "logging-pipeline", "host-agent"], args: Sequence[str]) -> int:
    """Runs a service in this process until SIGTERM or Ctrl-C; its exit status."""

def mint_cache_token(
    secret: str,
    org_id: int,
    repo: str,
    *,
    ref: str = "refs/heads/main",
    default_ref: str = "refs/heads/main",
    read_only: bool = False,
    ttl: int = 21600,
) -> str:
    """A cache token (``ACTIONS_RUNTIME_TOKEN``) signed with NIMBUS_CACHE_SHARED_SECRET."""

class CacheClient:
    """The cache proxy's artifact API over HTTP (blocking; the GIL is released)."""

    def __init__(self, base_url: str, token: str) -> None: ...
    def put(self, key: str, data: bytes) -> Dict[str, Any]: ...
    def get(self, key: str) -> Optional[bytes]: ...
    def delete(self, key: str) -> None: ...
    def usage(self) -> Dict[str, Any]: ...

class AsyncCacheClient:
    """``CacheClient`` for asyncio."""

    def __init__(self, base_url: str, token: str) -> None: ...
    def put(self, key: str, data: bytes) -> Awaitable[Dict[str, Any]]: ...
    def get(self, key: str) -> Awaitable[Optional[bytes]]: ...
    def delete(self, key: str) -> Awaitable[None]: ...
    def usage(self) -> Awaitable[Dict[str, Any]]: ...

class EmbeddedCacheProxy:
    """A cache proxy running in this process (``CacheProxy.start()``)."""

    @property
    def base_url(self) -> str: ...
    def stop(self) -> None: ...
    def __enter__(self) -> "EmbeddedCacheProxy": ...
    def __exit__(self, *exc: Any) -> bool: ...

class CacheProxy:
    """The cache proxy to run in this process, on NIMBUS_* settings and a backend."""

    def __init__(self, config: Optional[Mapping[str, str]] = None, *, backend: Optional[Any] = None) -> None: ...
    def start(self) -> EmbeddedCacheProxy: ...

def cli(args: Sequence[str]) -> int:
    """Runs ``nimbus report …`` or ``nimbus jobs …`` (``args`` without the program
    name); its exit code."""
