"""The ``nimbus`` command line's reports as Python entry points.

``python -m nimbus.cli.report …`` is ``nimbus report …`` and ``python -m
nimbus.cli.jobs …`` is ``nimbus jobs list …``: the same Rust code, the same flags
(docs/reporting.md), the same output and exit codes.
"""

import sys
from typing import List, Optional

from nimbus import _native


def main(args: List[str]) -> int:
    """Runs ``nimbus ARGS`` (``["report", "orgs", ...]`` or ``["jobs", "list", ...]``);
    returns the exit code: 0, 1 (one line on standard error), 2 (bad command line)."""
    return _native.cli(list(args))


def run(prefix: List[str], argv: Optional[List[str]] = None) -> None:
    """Exits with ``main(prefix + argv)`` (``argv`` defaults to this process's arguments)."""
    sys.exit(main(prefix + list(sys.argv[1:] if argv is None else argv)))
