"""What the ``python -m nimbus.<service>`` entry points share."""

import sys

from nimbus import _native


def run(service: str) -> None:
    """Runs ``service`` with this process's arguments until SIGTERM or Ctrl-C, then
    exits with its status (0 clean stop, 1 failure, 2 bad usage). Configuration
    comes from NIMBUS_* environment variables (docs/configuration.md)."""
    sys.exit(_native.serve(service, sys.argv[1:]))
