"""``python -m nimbus.cli.jobs --with-metadata``: ``nimbus jobs list``.

The ``list`` subcommand may be left out, as the operations guide does."""

import sys

from nimbus.cli import run

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "list":
        args = ["list"] + args
    run(["jobs"], args)
