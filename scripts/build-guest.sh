#!/usr/bin/env bash
# Builds the static nimbus-guest binary that goes into the guest rootfs and prints
# its path. Static (glibc, crt-static) so it runs on any rootfs and in the sandbox;
# built for an explicit --target so the static flag does not touch host builds.
#
#   scripts/build-guest.sh            # -> $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/nimbus-guest
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=/var/tmp/nimbus-target}"
export CARGO_TARGET_DIR
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build -q --locked --release -p nimbus-guest --target "$target" >&2
echo "$CARGO_TARGET_DIR/$target/release/nimbus-guest"
