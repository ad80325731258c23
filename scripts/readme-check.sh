#!/usr/bin/env bash
# Checks the README's first command the way a newcomer meets it: in a fresh clone,
# the command as written (`cargo run -p nimbus -- dev up`) brings everything up,
# builds the guest assets on first use, and a job submitted with the generated
# admin token finishes `succeeded` with its output in the logs; Ctrl-C stops it.
# (The README's second command, scripts/test.sh, is what .ci/run runs.)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/nimbus-target}

clone=$(mktemp -d /tmp/nimbus-readme-XXXXXX)
pgid=""
cleanup() {
  if [[ -n "$pgid" ]]; then kill -INT -- "-$pgid" 2>/dev/null || true; sleep 2; kill -KILL -- "-$pgid" 2>/dev/null || true; fi
  rm -rf "$clone"
}
trap cleanup EXIT
log() { echo "readme-check: $*" >&2; }

git clone -q . "$clone"
cd "$clone"
first=$(grep -m1 '^cargo run' README.md | sed 's/ *#.*$//')
[[ "$first" == *"dev up"* ]] || { log "the README's first command is not dev up: $first"; exit 1; }
log "running the README's first command in a fresh clone: $first"
setsid bash -c "$first" >dev-up.log 2>&1 &
pgid=$!

for _ in $(seq 1 900); do
  if [[ -f .nimbus/dev.env ]] && curl -sf http://127.0.0.1:8000/readyz >/dev/null 2>&1 &&
     grep -q "Nimbus is up" dev-up.log; then break; fi
  if ! kill -0 "$pgid" 2>/dev/null; then log "dev up exited:"; tail -30 dev-up.log >&2; exit 1; fi
  sleep 1
done
grep -q "host agent         running" dev-up.log || { log "no host agent:"; tail -30 dev-up.log >&2; exit 1; }
set -a; . .nimbus/dev.env; set +a
curl -sf -X POST "$NIMBUS_CONTROL_PLANE_URL/api/orgs" -H "authorization: Bearer $NIMBUS_TOKEN" \
  -H 'content-type: application/json' -d '{"id": 1, "name": "acme"}' >/dev/null
job=$(curl -sf -X POST "$NIMBUS_CONTROL_PLANE_URL/api/jobs" -H "authorization: Bearer $NIMBUS_TOKEN" \
  -H 'content-type: application/json' \
  -d '{"org_id": 1, "repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": "echo hello from the readme check"}]}')
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$job")
status=""
for _ in $(seq 1 240); do
  status=$(curl -sf "$NIMBUS_CONTROL_PLANE_URL/api/jobs/$id" -H "authorization: Bearer $NIMBUS_TOKEN" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  case "$status" in succeeded|failed|timed_out|cancelled) break ;; esac
  sleep 0.5
done
[[ "$status" == succeeded ]] || { log "job $id ended $status"; tail -30 dev-up.log >&2; exit 1; }
curl -sf "$NIMBUS_LOGS_URL/api/logs?job_id=$id" -H "authorization: Bearer $NIMBUS_TOKEN" |
  grep -q "hello from the readme check" || { log "the job's line is not in the logs"; exit 1; }
kill -INT -- "-$pgid"
for _ in $(seq 1 60); do kill -0 "$pgid" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$pgid" 2>/dev/null; then log "dev up did not stop on Ctrl-C"; exit 1; fi
pgid=""
log "ok: a fresh clone reached a finished job with the README's first command"
