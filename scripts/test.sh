#!/usr/bin/env bash
# The test command: starts the services the tests need, builds once, runs every
# test. Under CI=true a missing service fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/nimbus-target}
export NIMBUS_TEST_DATABASE_URL=${NIMBUS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

scripts/services.sh start postgres clickhouse s3 chromium registry
export NIMBUS_TEST_CLICKHOUSE_URL=${NIMBUS_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}
export NIMBUS_TEST_S3_ENDPOINT=${NIMBUS_TEST_S3_ENDPOINT:-http://127.0.0.1:8333}

# Test schemas (nimbus_t_*) are per test; drop those earlier runs left behind.
if command -v psql >/dev/null; then
  psql "$NIMBUS_TEST_DATABASE_URL" -qAt -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || echo "test: could not drop old test schemas (continuing)" >&2
DO $$
DECLARE s text;
BEGIN
  FOR s IN SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'nimbus\_t\_%' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
END $$;
SQL
fi

# Per-test ClickHouse databases of earlier runs (nimbus_test, nimbus_pipeline_*, nimbus_e2e_*).
for db in $(curl -sf "$NIMBUS_TEST_CLICKHOUSE_URL/?query=SELECT+name+FROM+system.databases+WHERE+name+LIKE+'nimbus%25'" || true); do
  curl -sf "$NIMBUS_TEST_CLICKHOUSE_URL/" --data-binary "DROP DATABASE IF EXISTS $db" >/dev/null ||
    echo "test: could not drop ClickHouse database $db (continuing)" >&2
done

# The official @actions/cache client the cache tests drive and puppeteer-core, which
# drives Chromium in the dashboard test (tests/clients, pinned by its lock file).
# Without Node.js those tests skip, or fail under CI=true.
if command -v npm >/dev/null; then
  (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The end-to-end suite runs the real binaries: build them with the tests, once.
# The Python bindings are built by maturin (scripts/python.sh, below), not here.
cargo build --workspace --exclude nimbus-python --bins --tests --locked

# Guest assets (kernel, initramfs, rootfs with the static nimbus-guest) that the VM
# tests boot for real under QEMU; cached, so only the first run is slow.
NIMBUS_TEST_ASSETS=$(scripts/guest-assets.sh)
export NIMBUS_TEST_ASSETS
cargo test --workspace --exclude nimbus-python --locked

# Examples for embedders: compiled by the line above; run the quick ones.
cargo run -q --locked -p nimbus-examples --example embedded_control_plane
cargo run -q --locked -p nimbus-examples --example memory_cache_backend
cargo run -q --locked -p nimbus-examples --example tee_log_sink
NIMBUS_ASSETS_DIR=$NIMBUS_TEST_ASSETS NIMBUS_VMM=sandbox NIMBUS_VM_NETWORK=none \
  NIMBUS_VM_RUNTIME_DIR=$(mktemp -d) cargo run -q --locked -p nimbus-examples --example resource_capped_driver

# The shipped monitoring: the alerting rules' syntax and unit tests, the scrape
# config's syntax (promtool, from Debian's prometheus package).
if command -v promtool >/dev/null; then
  promtool check rules deploy/prometheus/alerts.yml
  (cd deploy/prometheus && promtool test rules alerts_test.yml)
  promtool check config --syntax-only deploy/prometheus/prometheus.yml
elif [[ "${CI:-}" == true ]]; then
  echo "test: promtool is missing (apt-get install prometheus)" >&2
  exit 1
else
  echo "test: promtool is missing; the alerting rules are not checked" >&2
fi

# The systemd units (deploy/systemd): every directive known and the binaries they
# start there (their ExecStart pointed at the ones just built, the privileged
# set-up at scripts/). systemd-analyze
# only warns about unknown directives, so any output fails the check.
if command -v systemd-analyze >/dev/null; then
  units=$(mktemp -d)
  for unit in deploy/systemd/*.service; do
    sed -e "s|/usr/local/bin/nimbus-privileged-setup.sh|$PWD/scripts/nimbus-privileged-setup.sh|" \
        -e "s|/usr/local/bin/|$CARGO_TARGET_DIR/debug/|" "$unit" >"$units/$(basename "$unit")"
  done
  verdict=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "$units"/*.service 2>&1) || true
  rm -rf "$units"
  if [[ -n "$verdict" ]]; then
    echo "test: systemd-analyze verify deploy/systemd:" >&2
    echo "$verdict" >&2
    exit 1
  fi
elif [[ "${CI:-}" == true ]]; then
  echo "test: systemd-analyze is missing (apt-get install systemd)" >&2
  exit 1
fi

# The Python package: a wheel built by maturin, installed and tested with pytest.
scripts/python.sh
