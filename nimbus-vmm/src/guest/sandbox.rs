//! Turning fresh namespaces into a throwaway machine (the sandbox driver), in two
//! stages of `nimbus-guest`.
//!
//! Stage one runs as real root, pid 1 of a pid namespace `unshare(1)` made with
//! new mount, uts and ipc namespaces: it joins the VM's network namespace, mounts
//! the job's root — an overlay of the attested tree (read-only, beneath) and the
//! VM directory's `upper/` — with `/scratch`, private `/tmp` and `/run`, `/proc` of
//! the new pid namespace and a minimal `/dev`, pivots into it and starts stage two.
//! Then it only reaps processes (it is their init) until stage two exits.
//!
//! Stage two moves into a user namespace of its own, which stage one (still root
//! outside it) maps to the unprivileged host ids `id_base..id_base+65536`, becomes
//! uid 0 there, cuts its capabilities to [`KEPT_CAPABILITIES`], sets
//! `no_new_privs`, installs the seccomp filter and serves the job. Every mount the
//! job sees was made in a mount namespace it holds no capability in, so it can
//! neither remount `/` nor uncover what lies beneath; the overlay's lower tree is
//! never writable through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root, sethostname, Gid, Pid, Uid};

use super::GuestError;

/// What stage one mounts where.
#[derive(Debug, Clone)]
pub struct SandboxMounts {
    /// The attested tree (the overlay's read-only lower layer).
    pub root: PathBuf,
    /// The VM directory: `upper/`, `work/` (the overlay's), `root/` (where the
    /// overlay is mounted) and `scratch/`.
    pub dir: PathBuf,
    /// The VM's network namespace (`/run/netns/…`), joined first; `None` keeps the
    /// (empty) one `unshare --net` made.
    pub netns: Option<PathBuf>,
    /// Host uid and gid the job's root maps to.
    pub id_base: u32,
}

/// Ids a sandbox maps (0..65536: what a Debian system uses).
pub const ID_COUNT: u32 = 65_536;

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn sys(context: &str) -> impl FnOnce(nix::Error) -> GuestError + '_ {
    move |errno| GuestError::Sandbox(format!("{context}: {errno}"))
}

/// Stage one's mounts: afterwards `/` is the job's overlay root.
pub fn enter_sandbox(mounts: &SandboxMounts) -> Result<(), GuestError> {
    if let Some(netns) = &mounts.netns {
        let file = std::fs::File::open(netns)
            .map_err(GuestError::io(format!("opening {}", netns.display())))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(sys("joining the VM's network namespace"))?;
    }
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys("making / private"))?;

    let root = mounts.dir.join("root");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        mounts.root.display(),
        mounts.dir.join("upper").display(),
        mounts.dir.join("work").display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(sys("mounting the job's overlay root"))?;

    let inside = |path: &str| -> PathBuf { root.join(path.trim_start_matches('/')) };
    for dir in ["/scratch", "/tmp", "/run", "/proc", "/dev", "/mnt"] {
        require_dir(&inside(dir))?;
    }
    mount(
        Some(mounts.dir.join("scratch").as_path()),
        &inside("/scratch"),
        none,
        MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
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

    // A fresh /dev with only the harmless host devices bound in.
    let dev = inside("/dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
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
    let shm = dev.join("shm");
    std::fs::create_dir_all(&shm).map_err(GuestError::io("creating /dev/shm"))?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(sys("mounting /dev/shm"))?;

    pivot_root(root.as_path(), &inside("/mnt")).map_err(sys("pivot_root"))?;
    chdir("/").map_err(sys("chdir /"))?;
    umount2("/mnt", MntFlags::MNT_DETACH).map_err(sys("detaching the host's root"))?;
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

/// Stage one, after [`enter_sandbox`]: starts stage two (this same binary, with
/// `stage_two_args`), maps its user namespace to `id_base..`, and reaps every
/// process of the pid namespace until stage two exits. Returns its exit code.
pub fn run_stage_two(id_base: u32, stage_two_args: &[String]) -> Result<i32, GuestError> {
    let child = std::process::Command::new("/proc/self/exe")
        .args(stage_two_args)
        .spawn()
        .map_err(GuestError::io("starting the sandbox's second stage"))?;
    let pid = child.id();
    let mapped = wait_for_user_namespace(pid).and_then(|()| {
        let map = format!("0 {id_base} {ID_COUNT}\n");
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{file}"), &map)
                .map_err(GuestError::io(format!("writing the sandbox's {file}")))?;
        }
        Ok(())
    });
    if let Err(error) = mapped {
        let _ =
            nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        return Err(error);
    }
    // pid 1 of the namespace: every orphan comes here to be reaped.
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(exited, code)) if exited.as_raw() as u32 == pid => {
                return Ok(code)
            }
            Ok(WaitStatus::Signaled(exited, signal, _)) if exited.as_raw() as u32 == pid => {
                return Ok(128 + signal as i32)
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => {
                return Err(GuestError::Sandbox(format!(
                    "waiting for the job's processes: {errno}"
                )))
            }
        }
    }
}

/// Waits until process `pid` is in another user namespace than this one.
fn wait_for_user_namespace(pid: u32) -> Result<(), GuestError> {
    let own = std::fs::read_link("/proc/self/ns/user")
        .map_err(GuestError::io("reading this process's user namespace"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_link(format!("/proc/{pid}/ns/user")) {
            Ok(theirs) if theirs != own => return Ok(()),
            Ok(_) => {}
            Err(error) => {
                return Err(GuestError::Sandbox(format!(
                    "the sandbox's second stage went away: {error}"
                )))
            }
        }
        if Instant::now() > deadline {
            return Err(GuestError::Sandbox(
                "the sandbox's second stage did not enter its user namespace".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stage two: a user namespace of its own, uid and gid 0 in it once stage one has
/// written the maps, then [`confine`]. Must run before any thread is started
/// (`unshare(CLONE_NEWUSER)` refuses threaded processes).
pub fn become_job_root() -> Result<(), GuestError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(sys("entering the job's user namespace"))?;
    // Stage one writes uid_map, then gid_map: wait for both, since setgroups and
    // setresgid fail with EPERM until the gid map exists.
    let unmapped = |file: &str| {
        std::fs::read_to_string(file)
            .map(|map| map.trim().is_empty())
            .unwrap_or(true)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while unmapped("/proc/self/uid_map") || unmapped("/proc/self/gid_map") {
        if Instant::now() > deadline {
            return Err(GuestError::Sandbox(
                "the sandbox's ids were never mapped".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    nix::unistd::setgroups(&[]).map_err(sys("dropping supplementary groups"))?;
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(sys("setresgid 0"))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid).map_err(sys("setresuid 0"))?;
    chdir("/").map_err(sys("chdir /"))?;
    // A job starts as on a fresh machine (the host agent's own umask is 077).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    confine()
}

/// What the job's root keeps: what installing packages and running services needs
/// (Docker's default set, without raw sockets and device nodes). Everything else —
/// mounting, namespaces' administration, raw network access, tracing other users'
/// processes, loading modules — is gone from the bounding set, for good.
pub const KEPT_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// Cuts the capabilities, sets `no_new_privs` and installs the seccomp filter,
/// for this process and all it starts.
pub fn confine() -> Result<(), GuestError> {
    use caps::{CapSet, Capability, CapsHashSet};
    let kept: CapsHashSet = KEPT_CAPABILITIES.iter().copied().collect();
    let failed = |what: &str| {
        let what = what.to_string();
        move |error: caps::errors::CapsError| GuestError::Sandbox(format!("{what}: {error}"))
    };
    for capability in caps::all() {
        if !kept.contains(&capability) {
            caps::drop(None, CapSet::Bounding, capability)
                .map_err(failed("dropping from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(failed("clearing ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(failed("clearing inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(failed("setting effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(failed("setting permitted capabilities"))?;
    debug_assert!(!kept.contains(&Capability::CAP_SYS_ADMIN));
    nix::sys::prctl::set_no_new_privs().map_err(sys("setting no_new_privs"))?;
    for filter in seccomp_filters()? {
        seccompiler::apply_filter(&filter)
            .map_err(|e| GuestError::Sandbox(format!("installing the seccomp filter: {e}")))?;
    }
    Ok(())
}

/// System calls a sandboxed job never needs and that widen the host kernel's
/// attack surface or its reach: mounts and namespaces (it must not build itself a
/// mount it could change), kernel modules and kexec, keyrings, BPF, perf,
/// userfaultfd and io_uring, handles that bypass paths, swap, clocks, reboot.
const DENIED_SYSCALLS: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
];

/// `clone` flags that make namespaces: refused like `unshare`.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The filters, as BPF: the denied calls fail with EPERM, `clone` with a namespace
/// flag too; `clone3`, whose flags live in memory a filter cannot read, fails with
/// ENOSYS, which makes the C library fall back to `clone`.
pub fn seccomp_filters() -> Result<Vec<seccompiler::BpfProgram>, GuestError> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let error = |e: seccompiler::BackendError| {
        GuestError::Sandbox(format!("building the seccomp filter: {e}"))
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| GuestError::Sandbox(format!("seccomp on {}: {e}", std::env::consts::ARCH)))?;
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .map(|call| (*call, Vec::new()))
        .collect();
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let condition = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(*flag),
            *flag,
        )
        .map_err(error)?;
        clone_rules.push(SeccompRule::new(vec![condition]).map_err(error)?);
    }
    denied.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(error)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(error)?;
    let compile = |filter: SeccompFilter| -> Result<seccompiler::BpfProgram, GuestError> {
        filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| error(e))
    };
    Ok(vec![compile(deny)?, compile(clone3)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_filters_compile() {
        let filters = seccomp_filters().expect("filters");
        assert_eq!(filters.len(), 2);
        assert!(filters.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn the_kept_capabilities_grant_no_administration() {
        for dangerous in [
            caps::Capability::CAP_SYS_ADMIN,
            caps::Capability::CAP_NET_ADMIN,
            caps::Capability::CAP_NET_RAW,
            caps::Capability::CAP_SYS_PTRACE,
            caps::Capability::CAP_SYS_MODULE,
            caps::Capability::CAP_MKNOD,
            caps::Capability::CAP_BPF,
        ] {
            assert!(!KEPT_CAPABILITIES.contains(&dangerous), "{dangerous}");
        }
    }
}
