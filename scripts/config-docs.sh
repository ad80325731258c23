#!/usr/bin/env bash
# Regenerates the variables table of docs/configuration.md from the code
# (`nimbus config docs`); nimbus-core's docs_configuration_table_matches_the_code
# test fails until this has been run after a variable changed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/nimbus-target}
table=$(cargo run -q --locked -p nimbus -- config docs)
TABLE="$table" python3 - <<'PY'
import os
path = "docs/configuration.md"
doc = open(path).read()
start = doc.index("| Variable | Default | Meaning |")
end = doc.find("\n\n", start)
end = len(doc) if end == -1 else end
open(path, "w").write(doc[:start] + os.environ["TABLE"].rstrip("\n") + doc[end:])
PY
echo "docs/configuration.md: table regenerated" >&2
