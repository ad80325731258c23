//! Turning a fresh set of namespaces into a throwaway machine: the sandbox driver
//! starts `nimbus-guest` under `unshare --user --map-root-user --pid --mount --net
//! --uts --ipc --fork`, and the guest itself pivots into the read-only rootfs tree
//! with a writable per-job scratch, private `/tmp`, `/proc` of its own pid namespace
//! and a minimal `/dev`. Weaker than a VM: the kernel is the host's.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root, sethostname};

use super::GuestError;

/// What the sandbox mounts where.
#[derive(Debug, Clone)]
pub struct SandboxMounts {
    /// The unpacked rootfs tree (mounted read-only).
    pub root: PathBuf,
    /// Host directory mounted read-write at `/scratch`.
    pub scratch: PathBuf,
}

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn sys(context: &str) -> impl FnOnce(nix::Error) -> GuestError + '_ {
    move |errno| GuestError::Sandbox(format!("{context}: {errno}"))
}

/// Sets up the mount namespace and enters it; afterwards `/` is the rootfs.
pub fn enter_sandbox(mounts: &SandboxMounts) -> Result<(), GuestError> {
    let root = &mounts.root;
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys("making / private"))?;
    mount(
        Some(root.as_path()),
        root.as_path(),
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(sys("binding the rootfs"))?;

    let inside = |path: &str| -> PathBuf { root.join(path.trim_start_matches('/')) };
    require_dir(&inside("/scratch"))?;
    mount(
        Some(mounts.scratch.as_path()),
        &inside("/scratch"),
        none,
        MsFlags::MS_BIND,
        none,
    )
    .map_err(sys("binding the scratch directory"))?;
    for dir in ["/tmp", "/run"] {
        mount(
            Some("tmpfs"),
            &inside(dir),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        )
        .map_err(sys("mounting a tmpfs"))?;
    }
    mount(
        Some("proc"),
        &inside("/proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(sys("mounting /proc"))?;

    // A user namespace may not create device nodes: bind the harmless host ones.
    let dev = inside("/dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755"),
    )
    .map_err(sys("mounting /dev"))?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        std::fs::write(&target, b"")
            .map_err(GuestError::io(format!("creating {}", target.display())))?;
        mount(Some(host.as_path()), &target, none, MsFlags::MS_BIND, none)
            .map_err(sys("binding a device"))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
    std::fs::create_dir_all(dev.join("shm")).map_err(GuestError::io("creating /dev/shm"))?;

    let old_root = inside("/mnt");
    require_dir(&old_root)?;
    pivot_root(root.as_path(), &old_root).map_err(sys("pivot_root"))?;
    chdir("/").map_err(sys("chdir /"))?;
    umount2("/mnt", MntFlags::MNT_DETACH).map_err(sys("detaching the host's root"))?;
    // Read-only last: the mounts above needed their mount points writable... they
    // are directories of the tree, which stays read-only for the job from here on.
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        none,
    )
    .map_err(sys("remounting the rootfs read-only"))?;
    let _ = sethostname("nimbus-sandbox");
    Ok(())
}

fn require_dir(path: &Path) -> Result<(), GuestError> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(GuestError::Sandbox(format!(
            "{} is missing from the rootfs (rebuild it with `nimbus assets build`)",
            path.display()
        )))
    }
}
