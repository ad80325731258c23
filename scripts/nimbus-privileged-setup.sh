#!/bin/sh
# nimbus-privileged-setup.sh: the host's root steps before the Nimbus host agent
# starts, so the agent itself runs unprivileged (the `nimbus` user, CAP_NET_ADMIN
# only). scripts/install-security.sh installs it as
# /usr/local/bin/nimbus-privileged-setup.sh; the unit runs it as root with
# `ExecStartPre=+` before every start (deploy/systemd/nimbus-host-agent.service).
#
# Idempotent; each step says what it did. It reads /etc/nimbus/host-agent.env
# (NIMBUS_VM_NETWORK, NIMBUS_JAILER_CHROOT_BASE, NIMBUS_VM_RUNTIME_DIR) and:
# - loads the kernel modules VMs need: kvm_intel or kvm_amd (by the CPU's flags), tun,
#   vhost_vsock (QEMU's vsock transport); a missing module is reported, not fatal:
#   `nimbus doctor` says what then does not work;
# - gives /dev/kvm to the kvm group (mode 660);
# - turns on IPv4 forwarding when NIMBUS_VM_NETWORK=egress (the VMs' NAT);
# - enables the cpu, memory and pids cgroup v2 controllers for child groups (the
#   jailer puts each Firecracker in a cgroup of its own);
# - creates the jailer's chroot base (root's) and the VM runtime directory (nimbus's).
set -eu

conf=${NIMBUS_PRIVILEGED_SETUP_CONF:-/etc/nimbus/host-agent.env}
log() { echo "nimbus-privileged-setup: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }

setting() { # NAME DEFAULT: the value in $conf, else DEFAULT
  value=
  if [ -r "$conf" ]; then
    value=$(sed -n "s/^$1=//p" "$conf" | tail -1)
  fi
  echo "${value:-$2}"
}

modprobe_quiet() {
  if command -v modprobe >/dev/null 2>&1 && modprobe "$1" 2>/dev/null; then
    log "module $1 loaded"
  elif [ -d "/sys/module/$1" ]; then
    log "module $1 already present"
  else
    log "module $1 could not be loaded (nimbus doctor explains what this affects)"
  fi
}

if grep -qw vmx /proc/cpuinfo 2>/dev/null; then
  modprobe_quiet kvm_intel
elif grep -qw svm /proc/cpuinfo 2>/dev/null; then
  modprobe_quiet kvm_amd
else
  log "the CPU shows no vmx/svm flag: no hardware virtualisation here"
fi
modprobe_quiet tun
modprobe_quiet vhost_vsock

if [ -e /dev/kvm ]; then
  getent group kvm >/dev/null && chgrp kvm /dev/kvm
  chmod 660 /dev/kvm
  log "/dev/kvm: group kvm, mode 660"
fi

if [ "$(setting NIMBUS_VM_NETWORK none)" = egress ]; then
  if [ "$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo 0)" != 1 ]; then
    echo 1 >/proc/sys/net/ipv4/ip_forward
    log "IPv4 forwarding on (NIMBUS_VM_NETWORK=egress)"
  fi
fi

controllers=/sys/fs/cgroup/cgroup.subtree_control
if [ -w "$controllers" ]; then
  for controller in cpu memory pids; do
    if grep -qw "$controller" /sys/fs/cgroup/cgroup.controllers 2>/dev/null &&
       ! grep -qw "$controller" "$controllers"; then
      echo "+$controller" >"$controllers" 2>/dev/null && log "cgroup controller $controller enabled for child groups" ||
        log "cgroup controller $controller could not be enabled here"
    fi
  done
fi

chroot_base=$(setting NIMBUS_JAILER_CHROOT_BASE /srv/jailer)
install -d -m 0755 -o root -g root "$chroot_base"
runtime_dir=$(setting NIMBUS_VM_RUNTIME_DIR /var/lib/nimbus/host-agent/vms)
if getent passwd nimbus >/dev/null; then
  install -d -m 0700 -o nimbus -g nimbus "$runtime_dir"
fi
log "ready: jailer chroot base $chroot_base, VM runtime directory $runtime_dir"
