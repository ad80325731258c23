#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets: one per parser that takes
# outside input) for a fixed number of inputs each, starting from the corpus in
# fuzz/corpus/TARGET (kept out of git) and the seeds in fuzz/seeds/TARGET.
# A crash fails the run and leaves its input under fuzz/artifacts/TARGET: turn it
# into a regression test beside the parser, then fix the parser.
#
#   scripts/fuzz.sh             # the smoke run CI does (20,000 inputs a target)
#   scripts/fuzz.sh --runs N    # more
#   scripts/fuzz.sh --long      # 10 minutes a target
#
# Needs the nightly toolchain (sanitizers) and cargo-fuzz; installs cargo-fuzz
# from crates.io if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=20000
max_time=0
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --long) runs=0; max_time=600; shift ;;
    *) echo "usage: scripts/fuzz.sh [--runs N | --long]" >&2; exit 2 ;;
  esac
done

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >&2
fi
# Built once, outside the clone, like the workspace.
export CARGO_TARGET_DIR=${NIMBUS_FUZZ_TARGET_DIR:-/var/tmp/nimbus-fuzz-target}

targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^nimbus-fuzz$')
for target in $targets; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  seeds=()
  [[ -d fuzz/seeds/$target ]] && seeds=(fuzz/seeds/$target)
  started=$SECONDS
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$corpus" "${seeds[@]}" -- \
    -runs="$runs" -max_total_time="$max_time" -max_len=65536 -print_final_stats=0 \
    >"/tmp/nimbus-fuzz-$target.log" 2>&1 || {
      tail -40 "/tmp/nimbus-fuzz-$target.log" >&2
      echo "fuzz: $target FAILED (input under fuzz/artifacts/$target)" >&2
      exit 1
    }
  echo "fuzz: $target ok ($((SECONDS - started)) s)"
done
