#!/usr/bin/env bash
# Prepares a host to run Nimbus VMs with least privilege (docs/FIRECRACKER_SECURITY.md):
#
# - a `nimbus` system user for the host agent and a `nimbus-vm` user/group that
#   every jailed Firecracker drops to;
# - /dev/kvm usable by the kvm group (the agent's user joins it);
# - the jailer chroot base (/srv/jailer) and the agent's data directory;
# - /usr/local/libexec/nimbus/jailer-wrapper (scripts/nimbus-jailer-wrapper) with
#   /etc/nimbus/jailer.env, and a sudoers rule allowing the agent to run only it;
# - /etc/nimbus/host-agent.env with the NIMBUS_JAILER_* variables that point at it.
#
#   sudo scripts/install-security.sh [--firecracker PATH] [--jailer PATH] [--seccomp-filter FILE]
#
# Idempotent: re-running updates the files and leaves users and groups alone.
set -euo pipefail
cd "$(dirname "$0")/.."

firecracker=$(command -v firecracker || echo /usr/local/bin/firecracker)
jailer=$(command -v jailer || echo /usr/local/bin/jailer)
seccomp=
chroot_base=/srv/jailer
while (($#)); do
  case "$1" in
    --firecracker) firecracker=$2; shift 2 ;;
    --jailer) jailer=$2; shift 2 ;;
    --seccomp-filter) seccomp=$2; shift 2 ;;
    --chroot-base) chroot_base=$2; shift 2 ;;
    *) echo "usage: $0 [--firecracker PATH] [--jailer PATH] [--seccomp-filter FILE] [--chroot-base DIR]" >&2; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "install-security: run as root" >&2; exit 1; }
log() { echo "install-security: $*" >&2; }

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

install -d -m 0755 "$chroot_base" /etc/nimbus /usr/local/libexec/nimbus
install -d -o nimbus -g nimbus -m 0750 /var/lib/nimbus
install -m 0755 -o root -g root scripts/nimbus-jailer-wrapper /usr/local/libexec/nimbus/jailer-wrapper

vm_uid=$(id -u nimbus-vm); vm_gid=$(id -g nimbus-vm)
cat >/etc/nimbus/jailer.env <<ENV
JAILER=$jailer
FIRECRACKER=$firecracker
JAIL_UID=$vm_uid
JAIL_GID=$vm_gid
CHROOT_BASE=$chroot_base
ENV
chmod 0644 /etc/nimbus/jailer.env

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
  [[ -n "$seccomp" ]] && echo "NIMBUS_SECCOMP_FILTER=$seccomp"
  echo "NIMBUS_DATA_DIR=/var/lib/nimbus"
} >/etc/nimbus/host-agent.env
chmod 0640 /etc/nimbus/host-agent.env; chgrp nimbus /etc/nimbus/host-agent.env
log "wrote /etc/nimbus/host-agent.env; check the host with: sudo -u nimbus env \$(cat /etc/nimbus/host-agent.env) nimbus doctor"
