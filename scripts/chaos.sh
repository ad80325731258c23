#!/usr/bin/env bash
# The chaos suite (tests/chaos; docs/reliability.md says what it injects and checks):
# the real services on PostgreSQL, ClickHouse and S3, jobs running through them
# while a replica and agents are killed and the databases restarted or stopped.
#
#   scripts/chaos.sh           # the short form CI runs: 600 jobs, 10 s outages
#   scripts/chaos.sh --long    # 10,000 jobs, 8 agents, 30 s outages; writes the
#                              # figures into docs/reliability.md
#
# Further arguments go to nimbus-chaos (`--help` lists them). It restarts the
# machine's PostgreSQL and stops the ClickHouse and S3 server of
# scripts/services.sh for a while: run it where nothing else needs them.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/nimbus-target}
export NIMBUS_TEST_DATABASE_URL=${NIMBUS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export NIMBUS_TEST_CLICKHOUSE_URL=${NIMBUS_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}
export NIMBUS_TEST_S3_ENDPOINT=${NIMBUS_TEST_S3_ENDPOINT:-http://127.0.0.1:8333}

scripts/services.sh start postgres clickhouse s3
# The same build as scripts/test.sh: after it, nothing to do.
cargo build --workspace --exclude nimbus-python --bins --locked --quiet
NIMBUS_TEST_ASSETS=$(scripts/guest-assets.sh)
export NIMBUS_TEST_ASSETS

if [[ "${1:-}" == --long ]]; then
  shift
  set -- --name long --jobs 10000 --agents 8 --slots 4 --outage-seconds 30 \
    --drain-bound-seconds 900 --markdown docs/reliability.md \
    --report "$CARGO_TARGET_DIR/chaos-long.json" "$@"
else
  set -- --name short --report "$CARGO_TARGET_DIR/chaos-short.json" "$@"
fi
exec "$CARGO_TARGET_DIR/debug/nimbus-chaos" "$@"
