//! What the guest sets up for itself when it runs as the agent of a VM (`--vm`):
//! the pseudo filesystems, hostname and, when the host gave it a network, its
//! address. Done here rather than in the init script because every exec of a
//! dynamically linked tool costs tens of milliseconds under TCG, and boot time is
//! what users wait for.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::GuestError;

const HOSTNAME: &str = "nimbus-vm";

/// Mounts `/proc`, `/sys`, `/tmp`, `/run`, `/dev/pts` and `/dev/shm` (unless already
/// mounted), sets the hostname and configures eth0 from `nimbus.net=`, if present.
pub fn prepare_vm() -> Result<(), GuestError> {
    let none: Option<&str> = None;
    let mounts: &[(&str, &str, &str, MsFlags, Option<&str>)] = &[
        (
            "proc",
            "/proc",
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        if is_mounted(target) {
            continue;
        }
        std::fs::create_dir_all(target).map_err(GuestError::io(format!("creating {target}")))?;
        mount(Some(*source), *target, Some(*fstype), *flags, *data)
            .map_err(|e| GuestError::Sandbox(format!("mounting {target}: {e}")))?;
    }
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    let _ = nix::unistd::sethostname(HOSTNAME);
    let _ = none;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(net) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nimbus.net="))
    {
        configure_network(net)?;
    }
    Ok(())
}

fn is_mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|mounts| {
            mounts
                .lines()
                .any(|line| line.split_whitespace().nth(1) == Some(target))
        })
        .unwrap_or(false)
}

/// `ADDRESS/PREFIX,GATEWAY` from `nimbus.net=`: configure eth0 with iproute2.
fn configure_network(spec: &str) -> Result<(), GuestError> {
    let (address, gateway) = spec.split_once(',').ok_or_else(|| {
        GuestError::Transport(format!(
            "bad nimbus.net={spec}: expected ADDRESS/PREFIX,GATEWAY"
        ))
    })?;
    let ip = |args: &[&str]| -> Result<(), GuestError> {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .map_err(GuestError::io("running ip"))?;
        if status.success() {
            Ok(())
        } else {
            Err(GuestError::Transport(format!(
                "`ip {}` failed",
                args.join(" ")
            )))
        }
    };
    ip(&["link", "set", "lo", "up"])?;
    ip(&["addr", "add", address, "dev", "eth0"])?;
    ip(&["link", "set", "eth0", "up"])?;
    ip(&["route", "add", "default", "via", gateway])?;
    if Path::new("/etc/resolv.conf").exists() {
        // DNS goes through the gateway's NAT to the host's resolver is not
        // guaranteed; leave the rootfs's resolv.conf as built.
    }
    Ok(())
}
