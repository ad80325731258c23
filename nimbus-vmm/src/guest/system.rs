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

/// Loads what jobs start with into the page cache (the default shells and their
/// libraries), makes the default workspace (the scratch disk's first allocation
/// reads its block bitmaps: tens of milliseconds under TCG) and flushes the disks,
/// so a warm VM, or every VM restored from the snapshot that follows, finds them
/// ready instead of reading them when its job comes.
pub fn prime_for_snapshot() {
    let _ = std::fs::create_dir_all(super::run::default_workspace(
        &crate::protocol::GuestJob::default(),
    ));
    for shell in ["bash", "sh"] {
        let _ = std::process::Command::new(shell)
            .args(["-c", ":"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    nix::unistd::sync();
}

/// Takes the identity of a VM restored from a snapshot: without it, every VM
/// restored from one snapshot would share RNG state, machine-id, hostname and MAC.
pub fn apply_identity(identity: &crate::protocol::Identity) -> Result<(), GuestError> {
    reseed_random(&identity.entropy)?;
    if identity.machine_id.len() != 32
        || !identity.machine_id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(GuestError::Sandbox(format!(
            "machine-id {:?} is not 32 hex digits",
            identity.machine_id
        )));
    }
    std::fs::write("/etc/machine-id", format!("{}\n", identity.machine_id))
        .map_err(GuestError::io("writing /etc/machine-id"))?;
    nix::unistd::sethostname(&identity.hostname)
        .map_err(|e| GuestError::Sandbox(format!("setting the hostname: {e}")))?;
    let now = nix::sys::time::TimeSpec::new(
        identity.unix_millis.div_euclid(1000),
        identity.unix_millis.rem_euclid(1000) * 1_000_000,
    );
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now)
        .map_err(|e| GuestError::Sandbox(format!("setting the clock: {e}")))?;
    if let Some(mac) = &identity.mac {
        set_mac(mac)?;
    }
    Ok(())
}

/// Credits the host's bytes to the kernel's entropy pool and reseeds its RNG now.
fn reseed_random(entropy_hex: &str) -> Result<(), GuestError> {
    let bytes = decode_hex(entropy_hex)
        .filter(|bytes| !bytes.is_empty() && bytes.len() <= 512)
        .ok_or_else(|| GuestError::Sandbox("the entropy is not 1-512 hex bytes".into()))?;
    linux_crng_ioctl::ioctl::add_randomness_to_kernel(&bytes, (bytes.len() * 8) as u32)
        .map_err(|e| GuestError::Sandbox(format!("adding entropy (RNDADDENTROPY): {e}")))?;
    linux_crng_ioctl::ioctl::force_kernel_crng_reseed()
        .map_err(|e| GuestError::Sandbox(format!("reseeding the RNG (RNDRESEEDCRNG): {e}")))?;
    Ok(())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Gives eth0 a new MAC; the neighbours the snapshot knew (its gateway's MAC) are
/// forgotten, and the default route comes back if the link had to go down.
fn set_mac(mac: &str) -> Result<(), GuestError> {
    let valid = mac.len() == 17
        && mac
            .split(':')
            .all(|part| part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(GuestError::Sandbox(format!("bad MAC address {mac:?}")));
    }
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !ip(&["link", "set", "dev", "eth0", "address", mac]) {
        // Without VIRTIO_NET_F_CTRL_MAC_ADDR the link must be down to change it.
        let gateway = std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_default()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("nimbus.net="))
            .and_then(|net| net.split_once(',').map(|(_, gateway)| gateway.to_string()));
        let changed = ip(&["link", "set", "dev", "eth0", "down"])
            && ip(&["link", "set", "dev", "eth0", "address", mac])
            && ip(&["link", "set", "dev", "eth0", "up"]);
        if !changed {
            return Err(GuestError::Transport(format!(
                "could not set eth0's MAC to {mac}"
            )));
        }
        if let Some(gateway) = gateway {
            let _ = ip(&["route", "replace", "default", "via", &gateway]);
        }
    }
    let _ = ip(&["neigh", "flush", "all"]);
    Ok(())
}
