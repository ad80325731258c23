"""Nimbus: CI jobs in microVMs on your own machines — the Rust SDK from Python.

Everything here is the Rust code the services run (``nimbus._native``, built with
maturin): the admission policy, webhook signatures, tokens, the control plane's API
over HTTP or embedded in this process, the logging pipeline and the cache proxy.
docs/python.md is the guide.
"""

from nimbus._native import (
    AsyncCacheClient,
    AsyncControlPlaneClient,
    AsyncLogsClient,
    AuthError,
    CacheClient,
    CacheProxy,
    Conflict,
    ControlPlane,
    ControlPlaneClient,
    Decision,
    EmbeddedCacheProxy,
    EmbeddedControlPlane,
    EmbeddedLoggingPipeline,
    InvalidInput,
    LoggingPipeline,
    LogsClient,
    NimbusError,
    NotFound,
    Policy,
    PolicyError,
    RateLimited,
    Reason,
    Unavailable,
    __version__,
    mint_cache_token,
    mint_token,
    parse_metadata_labels,
    verify_github_signature,
)
from nimbus.cache import CacheBackend, MemoryCacheBackend
from nimbus.logs import LogSink

__all__ = [
    "AsyncCacheClient",
    "AsyncControlPlaneClient",
    "AsyncLogsClient",
    "AuthError",
    "CacheBackend",
    "CacheClient",
    "CacheProxy",
    "Conflict",
    "ControlPlane",
    "ControlPlaneClient",
    "Decision",
    "EmbeddedCacheProxy",
    "EmbeddedControlPlane",
    "EmbeddedLoggingPipeline",
    "InvalidInput",
    "LogSink",
    "LoggingPipeline",
    "LogsClient",
    "MemoryCacheBackend",
    "NimbusError",
    "NotFound",
    "Policy",
    "PolicyError",
    "RateLimited",
    "Reason",
    "Unavailable",
    "__version__",
    "mint_cache_token",
    "mint_token",
    "parse_metadata_labels",
    "verify_github_signature",
]
