"""Nimbus: CI jobs in microVMs on your own machines — the Rust SDK from Python.

Everything here is the Rust code the services run (``nimbus._native``, built with
maturin): the admission policy, webhook signatures, tokens, the control plane's API
over HTTP or embedded in this process. docs/python.md is the guide.
"""

from nimbus._native import (
    AsyncControlPlaneClient,
    AsyncLogsClient,
    AuthError,
    Conflict,
    ControlPlane,
    ControlPlaneClient,
    Decision,
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
    mint_token,
    parse_metadata_labels,
    verify_github_signature,
)
from nimbus.logs import LogSink

__all__ = [
    "AsyncControlPlaneClient",
    "AsyncLogsClient",
    "AuthError",
    "Conflict",
    "ControlPlane",
    "ControlPlaneClient",
    "Decision",
    "EmbeddedControlPlane",
    "EmbeddedLoggingPipeline",
    "InvalidInput",
    "LogSink",
    "LoggingPipeline",
    "LogsClient",
    "NimbusError",
    "NotFound",
    "Policy",
    "PolicyError",
    "RateLimited",
    "Reason",
    "Unavailable",
    "__version__",
    "mint_token",
    "parse_metadata_labels",
    "verify_github_signature",
]
