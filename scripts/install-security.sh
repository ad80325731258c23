#!/usr/bin/env bash
# Prepares a host to run Nimbus VMs with least privilege (docs/FIRECRACKER_SECURITY.md):
#
# - a `nimbus` system user for the host agent and a `nimbus-vm` user/group that
#   every jailed Firecracker drops to;
# - /dev/kvm usable by the kvm group (the agent's user joins it);
# - the jailer chroot base (/srv/jailer) and the agent's data directory;
# - /usr/local/libexec/nimbus/jailer-wrapper (scripts/nimbus-jailer-wrapper) with
#   /etc/nimbus/jailer.env, and a sudoers rule allowing the agent to run only it;
# - /usr/local/bin/nimbus-privileged-setup.sh (scripts/nimbus-privileged-setup.sh): the
#   host's root steps before each agent start (modules, /dev/kvm, forwarding, cgroup
#   controllers), run by the unit's `ExecStartPre=+`, so the agent itself runs as
#   `nimbus` with CAP_NET_ADMIN only (capabilities dropped by the unit);
# - with --release: firecracker and jailer from your Firecracker release (the
#   firecracker-vX.Y.Z-ARCH.tgz from its GitHub releases, or the directory it unpacks
#   to) into /usr/local/bin;
# - with --seccomp-filter: the filter Firecracker loads, in /etc/nimbus. A compiled
#   BPF file is installed as it is; the JSON form (Firecracker's
#   resources/seccomp/ARCH-unknown-linux-musl.json, or a `seccomp-$(uname -m).json` of
#   your own) is compiled with the release's own seccompiler-bin: the BPF file
#   Firecracker reads is its own serialisation, which only the compiler of the same
#   release is sure to produce (docs/FIRECRACKER_SECURITY.md);
# - the host agent's systemd unit (deploy/systemd) when systemd is here;
# - /etc/nimbus/host-agent.env with the NIMBUS_JAILER_* variables that point at it.
#
#   sudo scripts/install-security.sh [--release TGZ|DIR] [--firecracker PATH] [--jailer PATH]
#                                    [--seccomp-filter FILE.json|FILE.bpf] [--chroot-base DIR]
#
# Idempotent: re-running updates the files and leaves users and groups alone.
set -euo pipefail
cd "$(dirname "$0")/.."

firecracker=$(command -v firecracker || echo /usr/local/bin/firecracker)
jailer=$(command -v jailer || echo /usr/local/bin/jailer)
seccomp=
release=
chroot_base=/srv/jailer
usage="usage: $0 [--release TGZ|DIR] [--firecracker PATH] [--jailer PATH] [--seccomp-filter FILE.json|FILE.bpf] [--chroot-base DIR]"
while (($#)); do
  case "$1" in
    --release) release=$2; shift 2 ;;
    --firecracker) firecracker=$2; shift 2 ;;
    --jailer) jailer=$2; shift 2 ;;
    --seccomp-filter) seccomp=$2; shift 2 ;;
    --chroot-base) chroot_base=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "install-security: run as root" >&2; exit 1; }
log() { echo "install-security: $*" >&2; }
die() { echo "install-security: $*" >&2; exit 1; }
arch=$(uname -m)

# Firecracker's release: firecracker-vX.Y.Z-ARCH, jailer-vX.Y.Z-ARCH and
# seccompiler-bin-vX.Y.Z-ARCH in release-vX.Y.Z-ARCH/.
seccompiler=
if [[ -n "$release" ]]; then
  unpacked=$release
  if [[ -f "$release" ]]; then
    unpacked=$(mktemp -d)
    trap 'rm -rf "$unpacked"' EXIT
    tar -xzf "$release" -C "$unpacked"
  fi
  [[ -d "$unpacked" ]] || die "--release $release is neither a .tgz nor a directory"
  pick() { find "$unpacked" -type f -name "$1-v*-$arch" ! -name '*.debug' | sort | tail -1; }
  release_firecracker=$(pick firecracker)
  release_jailer=$(pick jailer)
  seccompiler=$(pick seccompiler-bin)
  [[ -n "$release_firecracker" && -n "$release_jailer" ]] ||
    die "--release $release has no firecracker-v*-$arch and jailer-v*-$arch"
  install -d -m 0755 /usr/local/bin
  install -m 0755 -o root -g root "$release_firecracker" /usr/local/bin/firecracker
  install -m 0755 -o root -g root "$release_jailer" /usr/local/bin/jailer
  firecracker=/usr/local/bin/firecracker
  jailer=/usr/local/bin/jailer
  log "installed $(/usr/local/bin/firecracker --version 2>/dev/null | head -1 || basename "$release_firecracker") and its jailer into /usr/local/bin"
fi

# The seccomp filter: BPF as it is, JSON compiled by the release's seccompiler-bin.
installed_filter=
if [[ -n "$seccomp" ]]; then
  [[ -f "$seccomp" ]] || die "--seccomp-filter $seccomp does not exist"
  install -d -m 0755 /etc/nimbus
  installed_filter=/etc/nimbus/seccomp-$arch.bpf
  if [[ "$seccomp" == *.json ]]; then
    [[ -n "$seccompiler" ]] || seccompiler=$(command -v seccompiler-bin || true)
    [[ -n "$seccompiler" ]] || die "$seccomp is JSON: compiling it needs seccompiler-bin from the same Firecracker release (--release), or pass the compiled .bpf"
    "$seccompiler" --input-file "$seccomp" --target-arch "$arch" --output-file "$installed_filter.new"
    mv "$installed_filter.new" "$installed_filter"
    log "compiled $seccomp into $installed_filter"
  else
    install -m 0644 -o root -g root "$seccomp" "$installed_filter"
    log "installed the BPF filter $seccomp as $installed_filter"
  fi
  chmod 0644 "$installed_filter"
fi

getent group kvm >/dev/null || groupadd --system kvm
getent passwd nimbus >/dev/null || useradd --system --home-dir /var/lib/nimbus --create-home --shell /usr/sbin/nologin nimbus
getent passwd nimbus-vm >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin nimbus-vm
usermod -a -G kvm nimbus
if [[ -e /dev/kvm ]]; then
  chgrp kvm /dev/kvm && chmod 660 /dev/kvm
  log "/dev/kvm: group kvm, mode 660"
else
  log "no /dev/kvm here: Firecracker cannot run on this host (nimbus doctor explains)"
fi

install -d -m 0755 "$chroot_base" /etc/nimbus /usr/local/bin /usr/local/libexec/nimbus
install -d -o nimbus -g nimbus -m 0750 /var/lib/nimbus
install -m 0755 -o root -g root scripts/nimbus-jailer-wrapper /usr/local/libexec/nimbus/jailer-wrapper
install -m 0755 -o root -g root scripts/nimbus-privileged-setup.sh /usr/local/bin/nimbus-privileged-setup.sh

vm_uid=$(id -u nimbus-vm); vm_gid=$(id -g nimbus-vm)
cat >/etc/nimbus/jailer.env <<ENV
JAILER=$jailer
FIRECRACKER=$firecracker
JAIL_UID=$vm_uid
JAIL_GID=$vm_gid
CHROOT_BASE=$chroot_base
ENV
[[ -n "$installed_filter" ]] && echo "SECCOMP_FILTER=$installed_filter" >>/etc/nimbus/jailer.env
chmod 0644 /etc/nimbus/jailer.env

install -d -m 0750 /etc/sudoers.d
command -v sudo >/dev/null || log "sudo is not installed: the agent starts the jailer through it (apt install sudo)"
cat >/etc/sudoers.d/nimbus-jailer <<SUDO
# The Nimbus host agent may start jailed Firecracker VMs through the wrapper, nothing else.
nimbus ALL=(root) NOPASSWD: /usr/local/libexec/nimbus/jailer-wrapper
SUDO
chmod 0440 /etc/sudoers.d/nimbus-jailer
if command -v visudo >/dev/null; then visudo -cf /etc/sudoers.d/nimbus-jailer >/dev/null; fi

{
  echo "NIMBUS_VMM=firecracker"
  echo "NIMBUS_FIRECRACKER_BIN=$firecracker"
  echo "NIMBUS_JAILER_BIN=/usr/local/libexec/nimbus/jailer-wrapper"
  echo "NIMBUS_JAILER_UID=$vm_uid"
  echo "NIMBUS_JAILER_GID=$vm_gid"
  echo "NIMBUS_JAILER_CHROOT_BASE=$chroot_base"
  [[ -n "$installed_filter" ]] && echo "NIMBUS_SECCOMP_FILTER=$installed_filter"
  echo "NIMBUS_DATA_DIR=/var/lib/nimbus"
} >/etc/nimbus/host-agent.env
chmod 0640 /etc/nimbus/host-agent.env; chgrp nimbus /etc/nimbus/host-agent.env

# The unit: the agent as `nimbus` with CAP_NET_ADMIN only, its root steps in
# nimbus-privileged-setup.sh (ExecStartPre=+).
if [[ -d /etc/systemd/system ]]; then
  install -m 0644 -o root -g root deploy/systemd/nimbus-host-agent.service /etc/systemd/system/nimbus-host-agent.service
  if [[ -d /run/systemd/system ]]; then systemctl daemon-reload || true; fi
  log "installed /etc/systemd/system/nimbus-host-agent.service (systemctl enable --now nimbus-host-agent)"
fi
/usr/local/bin/nimbus-privileged-setup.sh
log "wrote /etc/nimbus/host-agent.env; check the host with: sudo -u nimbus env \$(cat /etc/nimbus/host-agent.env) nimbus doctor"
