#!/usr/bin/env bash
# Builds (or refreshes) the guest assets the VM tests boot: installs the Debian
# packages the build needs, builds the static nimbus-guest, then runs
# `nimbus assets build` into $NIMBUS_TEST_ASSETS (default /var/tmp/nimbus-assets).
# The first run takes about a minute (kernel download, debootstrap); later runs
# reuse the cached kernel and Debian base and take seconds.
#
#   scripts/guest-assets.sh            # prints the asset directory
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=/var/tmp/nimbus-target}"
export CARGO_TARGET_DIR
assets=${NIMBUS_TEST_ASSETS:-/var/tmp/nimbus-assets}

log() { echo "guest-assets: $*" >&2; }

# Tools of the asset build (kmod, busybox-static, debootstrap, e2fsprogs, xz), of
# the QEMU driver (qemu-system-x86, qemu-utils) and of VM networking.
need=()
# Debian's qemu-system-x86 conflicts with a newer backported qemu-utils (seen on
# fresh machines): install the two at the same version, downgrading qemu-utils.
qemu_pinned=0
if ! command -v qemu-system-x86_64 >/dev/null; then
  apt-get update -qq >&2
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  need+=(qemu-system-x86 "qemu-utils=$qemu_version")
  qemu_pinned=1
fi
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v depmod >/dev/null || [[ -x /sbin/depmod ]] || need+=(kmod)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || [[ -x /sbin/mkfs.ext4 ]] || need+=(e2fsprogs)
command -v xz >/dev/null || need+=(xz-utils)
command -v unshare >/dev/null || need+=(util-linux)
# Per-VM network namespaces, taps and NAT (the network tests).
command -v ip >/dev/null || [[ -x /usr/sbin/ip ]] || need+=(iproute2)
command -v iptables >/dev/null || [[ -x /usr/sbin/iptables ]] || need+=(iptables)
# busybox-static, not the dynamic busybox: the initramfs has no libc.
if ! [[ -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then need+=(busybox-static); fi
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq >&2
  extra=()
  ((qemu_pinned)) && extra+=(--allow-downgrades)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${extra[@]}" "${need[@]}" >&2
fi

guest=$(scripts/build-guest.sh)
cargo build -q --locked -p nimbus >&2
# The test assets carry a STAND-IN for the GitHub Actions runner (the real one
# cannot be downloaded here): tests/fixtures/actions-runner-standin/run.sh checks its
# JIT config and prints what a runner prints. Operators pass the real release.
runner_tarball=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$runner_tarball"' EXIT
tar -czf "$runner_tarball" -C tests/fixtures/actions-runner-standin .
# --with-node: the workflow suite runs a local JavaScript action (tests/workflows).
"$CARGO_TARGET_DIR/debug/nimbus" assets build "$assets" --guest "$guest" --actions-runner "$runner_tarball" --with-node >&2
echo "$assets"
