"""``python -m nimbus.cli.report orgs --base-url … --token …``: ``nimbus report``."""

from nimbus.cli import run

if __name__ == "__main__":
    run(["report"])
