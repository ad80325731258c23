//! `nimbus doctor`: whether this machine can run Nimbus jobs, one check per row,
//! each failure with the command or setting that fixes it (docs/vm.md, "Checking a
//! host").
//!
//! The checks read the machine through [`Host`] — a root directory, a `PATH`, and
//! whether the process is root — so tests point them at a fake root with fake
//! binaries and see every failure without breaking a real machine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::assets::AssetSet;
use crate::qemu::Accel;
use crate::select::{VmmChoice, VmmConfig};
use crate::spec::{DriverKind, NetworkSpec};

/// One row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works as it should.
    Pass,
    /// Works, but not as well as it could (jobs still run).
    Warn,
    /// Jobs will not run (or not safely) until it is fixed.
    Fail,
    /// Not applicable to this configuration.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked (`kvm`, `qemu`, `cgroup v2`, …).
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Every check's outcome, in order.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// One per check, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// No check failed.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|check| check.status != Status::Fail)
    }

    /// The check named `name`.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }

    /// The table `nimbus doctor` prints: one row per check, the fix under it.
    pub fn render(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|check| check.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("{:<width$}  {:<7}DETAIL\n", "CHECK", "RESULT");
        for check in &self.checks {
            out.push_str(&format!(
                "{:<width$}  {:<7}{}\n",
                check.name,
                check.status.label(),
                check.detail
            ));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("{:<width$}  {:<7}fix: {fix}\n", "", ""));
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|check| check.status == Status::Fail)
            .count();
        out.push_str(&if failed == 0 {
            "\nready to run jobs\n".to_string()
        } else {
            format!("\n{failed} check(s) failed\n")
        });
        out
    }
}

/// The machine as the checks see it.
#[derive(Debug, Clone)]
pub struct Host {
    /// Where `/dev`, `/sys` and `/proc` are found (`/` on a real machine).
    pub root: PathBuf,
    /// Where binaries are looked up (the process's `PATH`).
    pub path: OsString,
    /// Whether the process is root (network namespaces and taps need it).
    pub is_root: bool,
}

impl Host {
    /// This machine, as this process sees it.
    pub fn current() -> Self {
        Self {
            root: PathBuf::from("/"),
            path: std::env::var_os("PATH").unwrap_or_default(),
            is_root: nix::unistd::geteuid().is_root(),
        }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn find(&self, name: &str, explicit: Option<&Path>) -> Option<PathBuf> {
        crate::host::find_binary_on(name, explicit, &self.path).ok()
    }
}

/// What the checks are about: this host's VM settings and the services it talks to.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// This host's VM settings (driver choice, assets, runtime directory, network).
    pub vmm: VmmConfig,
    /// VMs run at once (`NIMBUS_AGENT_MAX_VMS`): the disk must hold that many
    /// scratch disks.
    pub max_vms: u32,
    /// `NIMBUS_CONTROL_PLANE_URL`, for the clock comparison.
    pub control_plane_url: Option<String>,
    /// Databases to reach: (variable, URL or path).
    pub databases: Vec<(String, String)>,
    /// `NIMBUS_CLICKHOUSE_URL`, when the pipeline writes to ClickHouse.
    pub clickhouse_url: Option<String>,
}

/// The databases a machine may be configured with; each set one is reached.
const DATABASE_VARIABLES: &[&str] = &[
    "NIMBUS_DATABASE_URL",
    "NIMBUS_CACHE_METRICS_DB",
    "NIMBUS_DOCKER_CACHE_DB_PATH",
];

impl Inputs {
    /// From the process's `NIMBUS_*` variables: this host's VM settings, and every
    /// service address and database that is set (on an agent-only host, usually
    /// just the control plane; on a services host, the databases).
    pub fn from_env(env: &nimbus_core::config::Env) -> nimbus_core::Result<Self> {
        let max_vms = env.parse_or("NIMBUS_AGENT_MAX_VMS", crate::agent::default_max_vms())?;
        let set = |name: &str| {
            env.get(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        Ok(Self {
            vmm: VmmConfig::from_env(env)?,
            max_vms: u32::try_from(max_vms).unwrap_or(u32::MAX),
            control_plane_url: set("NIMBUS_CONTROL_PLANE_URL"),
            databases: DATABASE_VARIABLES
                .iter()
                .filter_map(|name| Some((name.to_string(), set(name)?)))
                .collect(),
            clickhouse_url: set("NIMBUS_CLICKHOUSE_URL"),
        })
    }
}

/// Clock skew that is still fine, and the most before leases and tokens go wrong
/// (lease expiry and token `exp`/`nbf` are compared across machines).
const SKEW_WARN: Duration = Duration::from_secs(2);
const SKEW_FAIL: Duration = Duration::from_secs(30);
/// Room kept free beside the scratch disks (logs, overlays, the registry of runs).
const DISK_HEADROOM: u64 = 1 << 30;

/// Runs every check.
pub async fn examine(host: &Host, inputs: &Inputs) -> Report {
    let vmm = &inputs.vmm;
    let wants = |kind: DriverKind| vmm.choice == VmmChoice::Fixed(kind);
    let mut checks = vec![kvm(host, vmm)];
    checks.push(
        binary_check(
            host,
            "qemu",
            "qemu-system-x86_64",
            vmm.qemu_binary.as_deref(),
            wants(DriverKind::Qemu),
            "apt install qemu-system-x86 (or set NIMBUS_QEMU_BIN)",
        )
        .await,
    );
    checks.push(
        binary_check(
            host,
            "firecracker",
            "firecracker",
            vmm.firecracker_binary.as_deref(),
            wants(DriverKind::Firecracker),
            "install firecracker from its release tarball into /usr/local/bin (or set NIMBUS_FIRECRACKER_BIN)",
        )
        .await,
    );
    checks.push(jailer(host, vmm).await);
    checks.push(cgroup_v2(host));
    checks.push(network(host, vmm));
    checks.extend(assets(vmm));
    checks.push(disk_space(inputs));
    checks.push(clock(inputs.control_plane_url.as_deref()).await);
    for (variable, url) in &inputs.databases {
        checks.push(database(variable, url).await);
    }
    if let Some(url) = &inputs.clickhouse_url {
        checks.push(clickhouse(url).await);
    }
    Report { checks }
}

fn kvm(host: &Host, vmm: &VmmConfig) -> Check {
    let needs_kvm = vmm.choice == VmmChoice::Fixed(DriverKind::Firecracker)
        || (vmm.choice == VmmChoice::Fixed(DriverKind::Qemu) && vmm.qemu_accel == Some(Accel::Kvm));
    let missing = if needs_kvm {
        Status::Fail
    } else {
        Status::Warn
    };
    let device = host.at("/dev/kvm");
    if !device.exists() {
        return Check::new("kvm", missing, "/dev/kvm does not exist: no hardware virtualisation")
            .fix("enable VT-x/AMD-V in the firmware and load kvm_intel or kvm_amd (modprobe kvm_intel); in a cloud VM use an instance type with nested virtualisation or bare metal. Without it only QEMU/TCG (slow) and the sandbox run");
    }
    let module = |name: &str| host.at("/sys/module").join(name).exists();
    if module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd") {
        return Check::new(
            "kvm",
            missing,
            "/dev/kvm is PVM (kvm_pvm), not hardware KVM: Firecracker and QEMU/KVM guests crash under it",
        )
        .fix("run on bare metal or a VM with nested virtualisation; here use NIMBUS_VMM=qemu with NIMBUS_QEMU_ACCEL=tcg, or the sandbox");
    }
    if host.root == Path::new("/") {
        if let Err(error) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device)
        {
            return Check::new(
                "kvm",
                missing,
                format!("/dev/kvm cannot be opened read-write: {error}"),
            )
            .fix("add the agent's user to the kvm group (usermod -aG kvm USER) or run it as root");
        }
    }
    let vendor = if module("kvm_intel") {
        "kvm_intel"
    } else if module("kvm_amd") {
        "kvm_amd"
    } else {
        "kvm"
    };
    Check::new(
        "kvm",
        Status::Pass,
        format!("/dev/kvm is hardware KVM ({vendor})"),
    )
}

/// `name` found and answering `--version`; missing fails only when it is required.
async fn binary_check(
    host: &Host,
    check: &str,
    name: &str,
    explicit: Option<&Path>,
    required: bool,
    fix: &str,
) -> Check {
    let Some(path) = host.find(name, explicit) else {
        let where_ = explicit.map_or_else(
            || format!("{name} is not on PATH"),
            |p| format!("{} is not an executable file", p.display()),
        );
        return if required {
            Check::new(
                check,
                Status::Fail,
                format!("{where_} (NIMBUS_VMM={check} needs it)"),
            )
            .fix(fix)
        } else {
            Check::new(
                check,
                Status::Skip,
                format!("{where_}; not needed by this configuration"),
            )
        };
    };
    match version(&path).await {
        Ok(version) => Check::new(
            check,
            Status::Pass,
            format!("{} ({version})", path.display()),
        ),
        Err(error) => Check::new(
            check,
            if required { Status::Fail } else { Status::Warn },
            format!("{} does not run: {error}", path.display()),
        )
        .fix(fix),
    }
}

/// The first line `binary --version` prints.
async fn version(binary: &Path) -> Result<String, String> {
    let run = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "--version did not answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("--version exited with {}", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .trim();
    Ok(if line.is_empty() {
        "no version printed".into()
    } else {
        line.to_string()
    })
}

async fn jailer(host: &Host, vmm: &VmmConfig) -> Check {
    let firecracker = vmm.choice == VmmChoice::Fixed(DriverKind::Firecracker);
    let fix = "run scripts/install-security.sh (installs the jailer from your Firecracker release and the seccomp filter), then set NIMBUS_JAILER_BIN";
    let Some(jailer) = &vmm.jailer else {
        return if firecracker {
            Check::new("jailer", Status::Fail, "Firecracker runs without the jailer (NIMBUS_JAILER_BIN unset): no chroot, no privilege drop")
                .fix(fix)
        } else {
            Check::new(
                "jailer",
                Status::Skip,
                "not used (only Firecracker runs under the jailer)",
            )
        };
    };
    let Some(path) = host.find("jailer", Some(&jailer.binary)) else {
        return Check::new(
            "jailer",
            Status::Fail,
            format!("{} is not an executable file", jailer.binary.display()),
        )
        .fix(fix);
    };
    let filter = match &jailer.seccomp_filter {
        Some(filter) if !filter.is_file() => {
            return Check::new(
                "jailer",
                Status::Fail,
                format!("the seccomp filter {} does not exist", filter.display()),
            )
            .fix(fix)
        }
        Some(filter) => format!("seccomp filter {}", filter.display()),
        None => "Firecracker's built-in seccomp filter".into(),
    };
    match version(&path).await {
        Ok(version) => Check::new(
            "jailer",
            Status::Pass,
            format!(
                "{} ({version}); uid {} gid {}; {filter}",
                path.display(),
                jailer.uid,
                jailer.gid
            ),
        ),
        Err(error) => Check::new(
            "jailer",
            Status::Fail,
            format!("{} does not run: {error}", path.display()),
        )
        .fix(fix),
    }
}

fn cgroup_v2(host: &Host) -> Check {
    let controllers = host.at("/sys/fs/cgroup/cgroup.controllers");
    let Ok(text) = std::fs::read_to_string(&controllers) else {
        return Check::new("cgroup v2", Status::Fail, "/sys/fs/cgroup is not the unified (v2) hierarchy")
            .fix("boot with systemd.unified_cgroup_hierarchy=1 (the default on Debian 11+, Ubuntu 21.10+, RHEL 9)");
    };
    let have: Vec<&str> = text.split_whitespace().collect();
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|wanted| !have.contains(wanted))
        .collect();
    if missing.is_empty() {
        Check::new(
            "cgroup v2",
            Status::Pass,
            format!("unified hierarchy; controllers: {}", have.join(" ")),
        )
    } else {
        Check::new(
            "cgroup v2",
            Status::Warn,
            format!("controllers {} are not available: VMs' CPU, memory or process counts are not limited by cgroups", missing.join(", ")),
        )
        .fix("enable them in the parent cgroup (echo +cpu +memory +pids > /sys/fs/cgroup/cgroup.subtree_control) or run the agent as a systemd service (deploy/systemd)")
    }
}

fn network(host: &Host, vmm: &VmmConfig) -> Check {
    let wanted = vmm.network != NetworkSpec::None;
    let fail = if wanted { Status::Fail } else { Status::Warn };
    let note = if wanted {
        format!("NIMBUS_VM_NETWORK={} needs it", vmm.network.name())
    } else {
        "only needed for NIMBUS_VM_NETWORK=isolated or egress".to_string()
    };
    if !host.at("/dev/net/tun").exists() {
        return Check::new(
            "netns/tap",
            fail,
            format!("/dev/net/tun does not exist; {note}"),
        )
        .fix("modprobe tun");
    }
    if host.find("ip", None).is_none() {
        return Check::new("netns/tap", fail, format!("ip(8) is not on PATH; {note}"))
            .fix("apt install iproute2");
    }
    if !host.is_root {
        return Check::new(
            "netns/tap",
            fail,
            format!("not root: network namespaces and taps cannot be made; {note}"),
        )
        .fix("run the host agent as root (deploy/systemd/nimbus-host-agent.service)");
    }
    Check::new(
        "netns/tap",
        Status::Pass,
        "/dev/net/tun and ip(8) present, running as root",
    )
}

fn assets(vmm: &VmmConfig) -> Vec<Check> {
    let fix = "nimbus assets build (or copy a built set into NIMBUS_ASSETS_DIR)";
    let set = match AssetSet::open(&vmm.assets_dir) {
        Ok(set) => set,
        Err(error) => return vec![Check::new("assets", Status::Fail, error.to_string()).fix(fix)],
    };
    let kinds: Vec<DriverKind> = match vmm.choice {
        VmmChoice::Fixed(kind) => vec![kind],
        VmmChoice::Auto => DriverKind::ALL.to_vec(),
    };
    let mut checks = Vec::new();
    let mut verified = Vec::new();
    for kind in kinds {
        match set.verify(kind, vmm.rootfs_sha256.as_deref()) {
            Ok(_) => verified.push(kind.to_string()),
            Err(error) => {
                // Under auto, a set without one driver's kernel only narrows the choice.
                let status = if vmm.choice == VmmChoice::Auto {
                    Status::Warn
                } else {
                    Status::Fail
                };
                checks.push(
                    Check::new(&format!("assets ({kind})"), status, error.to_string()).fix(fix),
                );
            }
        }
    }
    if !verified.is_empty() {
        let pin = if vmm.rootfs_sha256.is_some() {
            ", rootfs matches NIMBUS_ROOTFS_SHA256"
        } else {
            ""
        };
        checks.insert(
            0,
            Check::new(
                "assets",
                Status::Pass,
                format!(
                    "{} attested (sha256 of every file) for {}{pin}",
                    vmm.assets_dir.display(),
                    verified.join(", ")
                ),
            ),
        );
    } else if vmm.choice == VmmChoice::Auto {
        checks.insert(
            0,
            Check::new("assets", Status::Fail, "no driver's assets verify").fix(fix),
        );
    }
    checks
}

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|dir| dir.is_dir())
}

fn disk_space(inputs: &Inputs) -> Check {
    let dir = &inputs.vmm.runtime_dir;
    let Some(existing) = existing_ancestor(dir) else {
        return Check::new(
            "disk space",
            Status::Fail,
            format!("{} has no existing parent", dir.display()),
        );
    };
    let free = match nix::sys::statvfs::statvfs(existing) {
        Ok(stat) => stat.blocks_available().saturating_mul(stat.fragment_size()),
        Err(error) => {
            return Check::new(
                "disk space",
                Status::Fail,
                format!("statvfs {}: {error}", existing.display()),
            )
        }
    };
    let needed =
        u64::from(inputs.vmm.scratch_disk_mib) * (1 << 20) * u64::from(inputs.max_vms.max(1))
            + DISK_HEADROOM;
    disk_verdict(dir, free, needed)
}

/// The disk verdict for `free` bytes where `needed` are wanted.
pub fn disk_verdict(dir: &Path, free: u64, needed: u64) -> Check {
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    let detail = format!(
        "{:.1} GiB free under {}; {:.1} GiB needed (a scratch disk per VM slot + 1 GiB)",
        gib(free),
        dir.display(),
        gib(needed)
    );
    if free >= needed {
        Check::new("disk space", Status::Pass, detail)
    } else {
        Check::new("disk space", Status::Fail, detail).fix(
            "free space there, move NIMBUS_VM_RUNTIME_DIR to a larger disk, or lower NIMBUS_VM_SCRATCH_MIB / NIMBUS_AGENT_MAX_VMS",
        )
    }
}

async fn clock(control_plane: Option<&str>) -> Check {
    let Some(url) = control_plane else {
        return Check::new(
            "clock",
            Status::Skip,
            "NIMBUS_CONTROL_PLANE_URL unset: nothing to compare against",
        );
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(error) => return Check::new("clock", Status::Fail, error.to_string()),
    };
    let sent = std::time::SystemTime::now();
    let response = match client
        .get(format!("{}/healthz", url.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(response) => response,
        Err(error) => {
            return Check::new(
                "clock",
                Status::Fail,
                format!("the control plane at {url} did not answer: {error}"),
            )
            .fix("check NIMBUS_CONTROL_PLANE_URL, the network, and that nimbus-control-plane runs")
        }
    };
    let received = std::time::SystemTime::now();
    let Some(date) = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok())
    else {
        return Check::new(
            "clock",
            Status::Warn,
            format!("{url} sent no readable Date header"),
        );
    };
    // The server's clock was read between `sent` and `received`; its header has
    // one-second resolution.
    let midpoint = sent + received.duration_since(sent).unwrap_or_default() / 2;
    skew_verdict(url, midpoint, date)
}

/// The clock verdict for a local time against the control plane's.
pub fn skew_verdict(
    url: &str,
    local: std::time::SystemTime,
    remote: std::time::SystemTime,
) -> Check {
    let (skew, direction) = match local.duration_since(remote) {
        Ok(ahead) => (ahead, "ahead of"),
        Err(behind) => (behind.duration(), "behind"),
    };
    let detail = format!(
        "{:.1} s {direction} the control plane at {url}",
        skew.as_secs_f64()
    );
    // The Date header is whole seconds: up to a second is no skew at all.
    let skew = skew.saturating_sub(Duration::from_secs(1));
    let fix = "synchronise the clock (timedatectl set-ntp true, or chrony/ntpd): lease expiry and token lifetimes are compared across machines";
    if skew <= SKEW_WARN {
        Check::new("clock", Status::Pass, detail)
    } else if skew <= SKEW_FAIL {
        Check::new("clock", Status::Warn, detail).fix(fix)
    } else {
        Check::new("clock", Status::Fail, detail).fix(fix)
    }
}

async fn database(variable: &str, url: &str) -> Check {
    let name = format!("database {variable}");
    match nimbus_core::db::reachable(url, variable).await {
        Ok(detail) => Check::new(&name, Status::Pass, detail),
        Err(error) => Check::new(&name, Status::Fail, error.to_string())
            .fix(format!("check {variable}: the server must run and accept this host (pg_hba.conf, firewall), the credentials must be right, a SQLite path's directory must exist and be writable")),
    }
}

async fn clickhouse(url: &str) -> Check {
    let redacted = nimbus_core::db::redact_url(url);
    let result = async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .get(format!("{}/ping", url.trim_end_matches('/')))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() && body.trim() == "Ok." {
            Ok(())
        } else {
            Err(format!("/ping answered {status}: {}", body.trim()))
        }
    }
    .await;
    match result {
        Ok(()) => Check::new(
            "database NIMBUS_CLICKHOUSE_URL",
            Status::Pass,
            format!("ClickHouse at {redacted} answers /ping"),
        ),
        Err(error) => Check::new(
            "database NIMBUS_CLICKHOUSE_URL",
            Status::Fail,
            format!("ClickHouse at {redacted}: {error}"),
        )
        .fix("check NIMBUS_CLICKHOUSE_URL and that ClickHouse listens on its HTTP port (8123)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn skew_is_judged_in_whole_seconds() {
        let now = SystemTime::now();
        let url = "http://cp";
        assert_eq!(skew_verdict(url, now, now).status, Status::Pass);
        assert_eq!(
            skew_verdict(url, now, now - Duration::from_millis(2900)).status,
            Status::Pass
        );
        let warn = skew_verdict(url, now, now + Duration::from_secs(10));
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.detail.contains("behind"), "{}", warn.detail);
        let fail = skew_verdict(url, now, now - Duration::from_secs(120));
        assert_eq!(fail.status, Status::Fail);
        assert!(fail.detail.contains("120.0 s ahead"), "{}", fail.detail);
        assert!(fail.fix.is_some());
    }

    #[test]
    fn disk_needs_a_scratch_disk_per_slot() {
        let dir = Path::new("/var/lib/nimbus/vms");
        assert_eq!(disk_verdict(dir, 10 << 30, 5 << 30).status, Status::Pass);
        let short = disk_verdict(dir, 1 << 30, 5 << 30);
        assert_eq!(short.status, Status::Fail);
        assert!(short.detail.contains("1.0 GiB free"), "{}", short.detail);
        assert!(short
            .fix
            .as_deref()
            .is_some_and(|fix| fix.contains("NIMBUS_VM_SCRATCH_MIB")));
    }

    #[test]
    fn the_table_puts_each_fix_under_its_row() {
        let report = Report {
            checks: vec![
                Check::new("kvm", Status::Pass, "hardware"),
                Check::new("cgroup v2", Status::Fail, "v1").fix("boot with v2"),
            ],
        };
        assert!(!report.healthy());
        let table = report.render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "CHECK      RESULT DETAIL");
        assert_eq!(lines[1], "kvm        pass   hardware");
        assert_eq!(lines[2], "cgroup v2  FAIL   v1");
        assert!(lines[3].ends_with("fix: boot with v2"), "{table}");
        assert!(table.ends_with("1 check(s) failed\n"), "{table}");
    }
}
