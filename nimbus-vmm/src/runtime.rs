//! A VM's runtime directory and process: everything a VM owns on the host lives in
//! `RUNTIME_DIR/<vm id>/` (overlay, scratch disk, sockets, console log, pid file), so
//! destroying a VM is "kill the recorded process, remove the directory", and a host
//! agent that crashed can clean up after itself with [`reap_orphans`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{Error, Result};

/// File in the VM directory holding the VM process's pid.
const PID_FILE: &str = "vm.pid";

/// One VM's private directory, `RUNTIME_DIR/<vm id>/`.
#[derive(Debug)]
pub struct VmDir {
    path: PathBuf,
}

impl VmDir {
    /// Creates `root/id`; refuses ids that are not plain names and ids in use.
    pub fn create(root: &Path, id: &str) -> Result<Self> {
        validate_id(id)?;
        std::fs::create_dir_all(root).map_err(Error::io(format!(
            "creating the VM runtime directory {}",
            root.display()
        )))?;
        let path = root.join(id);
        std::fs::create_dir(&path).map_err(Error::io(format!(
            "creating {} (is a VM of that id running?)",
            path.display()
        )))?;
        Ok(VmDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `pid` to the pid file, for [`reap_orphans`].
    pub fn record_pid(&self, pid: u32) -> Result<()> {
        std::fs::write(self.join(PID_FILE), pid.to_string())
            .map_err(Error::io("writing the VM's pid file"))
    }

    /// Removes the directory; a missing one is fine (destroy is idempotent).
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", self.path.display()))(e)),
        }
    }

    /// The last `n` lines of a log file in the directory (console, stderr).
    pub fn tail(&self, name: &str, n: usize) -> Vec<String> {
        let text = std::fs::read(self.join(name)).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}

fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "VM id {id:?} must be 1-64 characters of [A-Za-z0-9_-]"
        )))
    }
}

/// Spawns `command` killed on drop, recording its pid in `dir`.
pub fn spawn(mut command: Command, dir: &VmDir, what: &str) -> Result<Child> {
    command.kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(Error::io(format!("starting {what}")))?;
    if let Some(pid) = child.id() {
        dir.record_pid(pid)?;
    }
    Ok(child)
}

/// Kills the child (if still running) and reaps it.
pub async fn kill(child: &mut Option<Child>) {
    if let Some(mut process) = child.take() {
        let _ = process.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), process.wait()).await;
    }
}

/// Kills VM processes left behind by an earlier agent (their directory still has a
/// pid file whose process runs with the directory on its command line) and removes
/// every VM directory under `root`. Returns the ids cleaned up.
pub fn reap_orphans(root: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", root.display()))(e)),
    };
    let mut reaped = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        // Dot-directories hold shared files (disk templates), not VMs.
        if !dir.is_dir() || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if let Some(pid) = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let needle = dir.display().to_string();
            // Only a process that names this VM's directory is ours: pids get reused.
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::fs::remove_dir_all(&dir).map_err(Error::io(format!("removing {}", dir.display())))?;
        reaped.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(reaped)
}

/// Runs a helper command to completion, failing with its stderr.
pub async fn run_tool(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::Command {
            command: format!("{program} {}", args.join(" ")),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                format!("{program} is not installed")
            } else {
                e.to_string()
            },
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A formatted, empty ext4 image labelled `nimbus-scratch` of `size_mib`, made once
/// per size under `root/.templates/` and shared read-only: each VM gets a
/// copy-on-write overlay or a sparse copy of it instead of formatting a disk per job.
pub async fn scratch_template(root: &Path, size_mib: u32) -> Result<PathBuf> {
    let dir = root.join(".templates");
    let path = dir.join(format!("scratch-{size_mib}m.ext4"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    // Unique per call: VMs of one agent start concurrently, and two mkfs runs on one
    // file corrupt it. The loser of the final rename just replaces an equal file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let temp = dir.join(format!(
        ".scratch-{size_mib}m-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&temp).map_err(Error::io("creating a scratch template"))?;
    file.set_len(u64::from(size_mib) << 20)
        .map_err(Error::io("sizing a scratch template"))?;
    drop(file);
    let temp_str = temp.to_string_lossy().into_owned();
    run_tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "nimbus-scratch",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            &temp_str,
        ],
    )
    .await?;
    std::fs::rename(&temp, &path).map_err(Error::io("installing a scratch template"))?;
    Ok(path)
}

/// What every driver's VM owns on the host: its directory, its process and the
/// channel to its guest, with the lifecycle steps all drivers share. Dropping a
/// machine that was not destroyed kills the process and removes the directory.
pub struct Machine {
    /// The VM's private directory.
    pub dir: VmDir,
    /// The VM process (QEMU, Firecracker or the sandbox's `unshare`), once started.
    pub child: Option<Child>,
    /// The channel to `nimbus-guest`, once it said hello.
    pub channel: Option<crate::session::GuestChannel>,
    destroyed: bool,
    /// The log file in `dir` quoted when the guest crashes (console, stderr).
    log: &'static str,
    /// The optional protocol features the guest's hello listed.
    features: Vec<String>,
}

impl Machine {
    /// A machine owning `dir`, not started; `log` names the file quoted when the guest crashes.
    pub fn new(dir: VmDir, log: &'static str) -> Self {
        Machine {
            dir,
            child: None,
            channel: None,
            destroyed: false,
            log,
            features: Vec::new(),
        }
    }

    /// Refuses a second boot, or a boot after destroy.
    pub fn check_bootable(&self) -> Result<()> {
        if self.destroyed || self.child.is_some() {
            Err(Error::State("boot after boot or destroy"))
        } else {
            Ok(())
        }
    }

    /// Records a finished handshake and says what the guest reported.
    pub fn booted(
        &mut self,
        channel: crate::session::GuestChannel,
        hello: crate::session::Hello,
        started: std::time::Instant,
    ) -> crate::GuestInfo {
        self.channel = Some(channel);
        self.features = hello.features;
        crate::GuestInfo {
            agent: hello.agent,
            kernel: hello.kernel,
            boot_millis: started.elapsed().as_millis() as u64,
        }
    }

    /// The optional protocol features the guest's hello listed.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Has a guest that can (it speaks `Prime`) load what jobs start with.
    pub async fn prime(&mut self) -> Result<()> {
        if !self
            .features
            .iter()
            .any(|f| f == crate::protocol::FEATURE_SNAPSHOT)
        {
            return Ok(());
        }
        self.channel
            .as_mut()
            .ok_or(Error::State("prime before boot"))?
            .prime(crate::session::PrimeFor::WarmPool)
            .await
    }

    /// Runs a job over the channel; a crash reason gets the log's last lines.
    /// The caller destroys the VM when the outcome is not an exit.
    pub async fn run(
        &mut self,
        job: &crate::protocol::GuestJob,
        timeout: Duration,
        on_event: &mut (dyn FnMut(crate::JobEvent) + Send),
    ) -> Result<crate::JobReport> {
        let channel = self
            .channel
            .as_mut()
            .ok_or(Error::State("run before boot"))?;
        let mut report = channel.run(job, timeout, on_event).await?;
        if let crate::Outcome::Crashed { reason } = &mut report.outcome {
            let tail = self.dir.tail(self.log, 10);
            if !tail.is_empty() {
                reason.push_str(&format!("; {}: {}", self.log, tail.join(" | ")));
            }
        }
        Ok(report)
    }

    /// Connects to `socket` once the VM process (`program`) has opened it, polling
    /// every `every`. The error says why not (the process exited first, or
    /// `deadline` passed), for the driver's boot error.
    pub async fn connect_when_open(
        &mut self,
        socket: &std::path::Path,
        program: &str,
        every: std::time::Duration,
        deadline: std::time::Instant,
    ) -> std::result::Result<tokio::net::UnixStream, String> {
        loop {
            if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
                return Ok(stream);
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "{program} exited with {status} before {} opened",
                        socket.display()
                    ));
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("{} did not open in time", socket.display()));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Kills the process and removes the directory; idempotent.
    pub async fn destroy(&mut self) -> Result<()> {
        self.channel = None;
        kill(&mut self.child).await;
        self.destroyed = true;
        self.dir.remove()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.destroyed {
            if let Some(child) = self.child.as_mut() {
                let _ = child.start_kill();
            }
            let _ = self.dir.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VMs of one agent start at the same time: their scratch templates must not
    /// share a temporary file (two mkfs runs on one file corrupt it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scratch_templates_are_all_valid() {
        if crate::host::find_binary("mkfs.ext4", Some(Path::new("/sbin/mkfs.ext4"))).is_err() {
            eprintln!("skipping: no mkfs.ext4");
            return;
        }
        let root = std::env::temp_dir().join(format!("nimbus-scratch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let root = root.clone();
                tokio::spawn(async move { scratch_template(&root, 8).await })
            })
            .collect();
        for call in calls {
            let path = call.await.expect("task").expect("template");
            assert!(path.is_file());
        }
        let template = root.join(".templates/scratch-8m.ext4");
        let check = std::process::Command::new("e2fsck")
            .args(["-n", "-f"])
            .arg(&template)
            .output();
        if let Ok(check) = check {
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stdout)
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(root.join(".templates"))
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn ids_are_plain_names() {
        let root = std::env::temp_dir().join(format!("nimbus-vmdir-{}", std::process::id()));
        assert!(VmDir::create(&root, "../escape").is_err());
        assert!(VmDir::create(&root, "").is_err());
        let dir = VmDir::create(&root, "job-1_a").expect("created");
        assert!(VmDir::create(&root, "job-1_a").is_err(), "ids are unique");
        dir.remove().expect("removed");
        dir.remove().expect("removing twice is fine");
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn orphans_are_killed_and_removed() {
        let root = std::env::temp_dir().join(format!("nimbus-reap-{}", std::process::id()));
        let dir = VmDir::create(&root, "orphan").expect("created");
        // A process that names the VM directory on its command line, like a VM's.
        let mut command = Command::new("sh");
        // (`; exit` keeps the shell from exec'ing sleep and losing the argument.)
        command.args(["-c", "sleep 60; exit 0", dir.path().to_str().unwrap_or("")]);
        let mut child = spawn(command, &dir, "a fake VM").expect("spawned");
        let pid = child.id().expect("pid");
        // Wait for the exec: before it, the child's command line is the test's.
        let needle = dir.path().display().to_string();
        for _ in 0..500 {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::mem::forget(dir);
        let reaped = reap_orphans(&root).expect("reaped");
        assert_eq!(reaped, vec!["orphan".to_string()]);
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .expect("killed in time")
            .expect("status");
        assert!(!status.success());
        assert!(!root.join("orphan").exists());
        let _ = std::fs::remove_dir_all(root);
    }
}
