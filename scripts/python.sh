#!/usr/bin/env bash
# Builds the Python wheel (bindings/python, maturin), checks that it installs into a
# clean virtualenv and imports, then runs the pytest suite against the installed
# wheel. The build virtualenv lives outside the clone and is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/nimbus-target}
venv=${NIMBUS_PYTHON_VENV:-/var/tmp/nimbus-python-venv}
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; assert sys.version_info >= (3, 9)' 2>/dev/null; then
  echo "python: $python is missing or older than 3.9" >&2
  exit 1
fi
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.7,<2" "pytest>=7"

dist=$(mktemp -d)
clean=$(mktemp -d)
trap 'rm -rf "$dist" "$clean"' EXIT
"$venv/bin/maturin" build --quiet --locked -m bindings/python/Cargo.toml --out "$dist" \
  --interpreter "$venv/bin/python"
wheel=$(ls "$dist"/nimbus-*.whl)
echo "python: built $(basename "$wheel")"

# A newcomer's install: a fresh virtualenv, pip install of the file, import.
"$python" -m venv "$clean/venv"
"$clean/venv/bin/pip" install -q --disable-pip-version-check "$wheel"
"$clean/venv/bin/python" -c 'import nimbus; print("python: import nimbus", nimbus.__version__)'

"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
# From outside the source tree, so `import nimbus` is the installed wheel.
cd bindings/python/tests
"$venv/bin/python" -m pytest -q -p no:cacheprovider .
