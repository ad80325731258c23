//! `nimbus vm …`, `nimbus assets …` and `nimbus doctor`: the operator's view of the
//! VM layer (nimbus-vmm). Thin: parsing, printing and exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use nimbus_core::Env;
use nimbus_vmm::assets::{AssetBuilder, AssetSet, BuildOptions};
use nimbus_vmm::launch;
use nimbus_vmm::protocol::{GuestJob, GuestStep, StepOutcome, Stream};
use nimbus_vmm::select::{self, VmmChoice, VmmConfig};
use nimbus_vmm::{DriverKind, JobEvent, Outcome};

#[derive(Subcommand)]
pub enum VmCommand {
    /// Boots one VM, runs a command in it, streams its output and exits with its
    /// exit code (124 on timeout). What an operator uses to check a host.
    Run {
        /// firecracker, qemu or sandbox (default: NIMBUS_VMM, else the best available).
        #[arg(long, value_enum)]
        driver: Option<DriverArg>,
        /// Asset directory (default: NIMBUS_ASSETS_DIR).
        #[arg(long)]
        assets: Option<PathBuf>,
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory: Option<u32>,
        /// none, isolated or egress (default: NIMBUS_VM_NETWORK, else egress).
        #[arg(long)]
        network: Option<String>,
        /// Seconds the command may run.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Further steps, run after COMMAND (repeatable).
        #[arg(long = "step")]
        steps: Vec<String>,
        /// The command, run in the guest's workspace: its words as given (`-- sh -c
        /// 'echo a; exit 3'` runs sh with those two arguments), or one word as a
        /// bash script (`-- 'make && make test'`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Lists the drivers, whether each is available here and why not.
    Drivers,
}

#[derive(Subcommand)]
pub enum AssetsCommand {
    /// Builds the kernel, initramfs and rootfs from Debian packages and writes
    /// manifest.json with their sha256 (needs root, apt, debootstrap).
    Build {
        /// Output directory (default: NIMBUS_ASSETS_DIR).
        dir: Option<PathBuf>,
        /// The static nimbus-guest to install (default: next to this binary, or
        /// what scripts/build-guest.sh built).
        #[arg(long)]
        guest: Option<PathBuf>,
        /// Debian suite of the rootfs (default: the host's).
        #[arg(long)]
        suite: Option<String>,
        /// Debian mirror for debootstrap (default: the host's apt source).
        #[arg(long)]
        mirror: Option<String>,
        /// Redo the Debian base instead of reusing it.
        #[arg(long)]
        rebuild_rootfs: bool,
        /// Skip extracting the ELF vmlinux (only Firecracker needs it).
        #[arg(long)]
        no_vmlinux: bool,
        /// A GitHub Actions runner release (actions-runner-linux-x64-VERSION.tar.gz
        /// from github.com/actions/runner/releases) to put at /opt/actions-runner.
        #[arg(long, value_name = "TARBALL")]
        actions_runner: Option<PathBuf>,
        /// Adds Debian's Node.js to the rootfs: `nimbus run` runs local JavaScript
        /// actions with it.
        #[arg(long)]
        with_node: bool,
    },
    /// Checks every file of an asset directory against its manifest.
    Verify { dir: Option<PathBuf> },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DriverArg {
    Firecracker,
    Qemu,
    Sandbox,
}

impl From<DriverArg> for DriverKind {
    fn from(arg: DriverArg) -> Self {
        match arg {
            DriverArg::Firecracker => DriverKind::Firecracker,
            DriverArg::Qemu => DriverKind::Qemu,
            DriverArg::Sandbox => DriverKind::Sandbox,
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn vmm_config() -> Result<VmmConfig, String> {
    let env = Env::from_process().map_err(|e| e.to_string())?;
    VmmConfig::from_env(&env).map_err(|e| e.to_string())
}

/// The shell command line of `vm run`'s COMMAND: one word is a script; several
/// are an argv, quoted so the shell hands each word over unchanged.
fn command_line(words: &[String]) -> Result<Option<String>, String> {
    match words {
        [] => Ok(None),
        [script] => Ok(Some(script.clone())),
        words => shlex::try_join(words.iter().map(String::as_str))
            .map(Some)
            .map_err(|e| format!("the command cannot be passed to the guest's shell: {e}")),
    }
}

pub fn vm(command: VmCommand) -> ExitCode {
    let result = match command {
        VmCommand::Drivers => drivers().map(|()| 0),
        VmCommand::Run {
            driver,
            assets,
            cpus,
            memory,
            network,
            timeout,
            steps,
            command,
        } => vm_run(
            driver, assets, cpus, memory, network, timeout, steps, command,
        ),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(message) => {
            eprintln!("nimbus: {message}");
            ExitCode::from(125)
        }
    }
}

fn drivers() -> Result<(), String> {
    let config = vmm_config()?;
    runtime()?.block_on(async {
        for probe in config.probe_all().await {
            println!(
                "{:<12} {:<13} {}",
                probe.driver,
                if probe.available {
                    "available"
                } else {
                    "unavailable"
                },
                probe.reason
            );
        }
        match select::select(&config).await {
            Ok(selection) => println!(
                "\nNIMBUS_VMM picks {}: {}",
                selection.driver.kind(),
                selection.reason
            ),
            Err(error) => println!("\nNIMBUS_VMM picks nothing: {error}"),
        }
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn vm_run(
    driver: Option<DriverArg>,
    assets: Option<PathBuf>,
    cpus: Option<u32>,
    memory: Option<u32>,
    network: Option<String>,
    timeout: u64,
    steps: Vec<String>,
    command: Vec<String>,
) -> Result<i32, String> {
    let mut config = vmm_config()?;
    if let Some(network) = network {
        config.network = nimbus_vmm::spec::NetworkSpec::parse(&network)
            .ok_or_else(|| format!("--network {network:?}: expected none, isolated or egress"))?;
    }
    if let Some(driver) = driver {
        config.choice = VmmChoice::Fixed(driver.into());
    }
    if let Some(dir) = assets {
        config.assets_dir = dir;
    }
    config.vcpus = cpus.unwrap_or(config.vcpus);
    config.memory_mib = memory.unwrap_or(config.memory_mib);
    let mut commands = Vec::new();
    commands.extend(command_line(&command)?);
    commands.extend(steps);
    if commands.is_empty() {
        return Err("nothing to run: nimbus vm run [OPTIONS] -- COMMAND…".into());
    }
    let job = GuestJob {
        steps: commands.iter().map(|c| GuestStep::shell(c)).collect(),
        ..GuestJob::default()
    };
    let multi_step = job.steps.len() > 1;

    runtime()?.block_on(async move {
        let selection = select::select(&config).await.map_err(|e| e.to_string())?;
        let kind = selection.driver.kind();
        eprintln!("nimbus: {}", selection.reason);
        if kind == DriverKind::Sandbox {
            eprintln!("nimbus: the sandbox shares the host kernel: weaker isolation than a VM");
        }
        let assets = launch::verified_assets(&config, kind)
            .await
            .map_err(|e| e.to_string())?;
        let spec = launch::spec(
            &config,
            &assets,
            launch::unique_id("vm-run"),
            Duration::from_secs(timeout.max(1)),
        );
        let mut on_boot = |info: &nimbus_vmm::GuestInfo| {
            eprintln!(
                "nimbus: {kind} guest up in {} ms (kernel {}, nimbus-guest {})",
                info.boot_millis, info.kernel, info.agent
            );
        };
        let mut on_event = |event: JobEvent| match event {
            JobEvent::StepStarted { name, .. } if multi_step => eprintln!("▶ {name}"),
            JobEvent::Output(line) => {
                let text = format!("{}\n", line.line);
                let _ = match line.stream {
                    Stream::Stdout => std::io::stdout().write_all(text.as_bytes()),
                    Stream::Stderr => std::io::stderr().write_all(text.as_bytes()),
                };
            }
            JobEvent::StepFinished {
                outcome,
                duration_millis,
                ..
            } if multi_step => {
                eprintln!("  {}", describe(outcome, duration_millis))
            }
            _ => {}
        };
        let (_, report) =
            launch::run_once(&selection.driver, &spec, &job, &mut on_boot, &mut on_event)
                .await
                .map_err(|e| e.to_string())?;
        match &report.outcome {
            Outcome::Exited { .. } => {}
            Outcome::TimedOut => {
                eprintln!("nimbus: timed out after {timeout} s; the VM was destroyed")
            }
            Outcome::Crashed { reason } => eprintln!("nimbus: the guest crashed: {reason}"),
        }
        Ok(report.outcome.exit_code())
    })
}

fn describe(outcome: StepOutcome, millis: u64) -> String {
    match outcome {
        StepOutcome::Exited(0) => format!("✓ done in {millis} ms"),
        StepOutcome::Exited(code) => format!("✗ exit {code} after {millis} ms"),
        StepOutcome::TimedOut => format!("✗ timed out after {millis} ms"),
        StepOutcome::Skipped => "– skipped".to_string(),
    }
}

pub fn assets(command: AssetsCommand) -> Result<(), String> {
    let config = vmm_config()?;
    match command {
        AssetsCommand::Build {
            dir,
            guest,
            suite,
            mirror,
            rebuild_rootfs,
            no_vmlinux,
            actions_runner,
            with_node,
        } => {
            let dir = dir.unwrap_or(config.assets_dir);
            let guest = match guest {
                Some(path) => path,
                None => default_guest()?,
            };
            let mut options = BuildOptions::new(&dir, guest);
            if let Some(suite) = suite {
                options.suite = suite;
            }
            if let Some(mirror) = mirror {
                options.mirror = mirror;
            }
            options.rebuild_rootfs = rebuild_rootfs;
            options.vmlinux = !no_vmlinux;
            options.actions_runner = actions_runner;
            if with_node {
                options.packages.push("nodejs".into());
            }
            let started = std::time::Instant::now();
            let builder = AssetBuilder::new(options, |message| eprintln!("assets: {message}"));
            let manifest = builder.build().map_err(|e| e.to_string())?;
            println!(
                "{}: kernel {}, {} files attested in manifest.json ({:.1} s)",
                dir.display(),
                manifest.kernel_release,
                manifest.files.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        AssetsCommand::Verify { dir } => {
            let dir = dir.unwrap_or(config.assets_dir);
            let set = AssetSet::open(&dir).map_err(|e| e.to_string())?;
            for kind in [
                DriverKind::Qemu,
                DriverKind::Firecracker,
                DriverKind::Sandbox,
            ] {
                match set.verify(kind, config.rootfs_sha256.as_deref()) {
                    Ok(_) => println!("{kind:<12} ok"),
                    Err(error) => return Err(format!("{kind}: {error}")),
                }
            }
            Ok(())
        }
    }
}

/// `nimbus-guest` next to this binary (cargo puts both in one directory), or the
/// static build of scripts/build-guest.sh.
pub(crate) fn default_guest() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("nimbus-guest"));
            if let Some(target) = dir.parent() {
                candidates.push(target.join("x86_64-unknown-linux-gnu/release/nimbus-guest"));
            }
        }
    }
    candidates
        .into_iter()
        .find(|path| nimbus_vmm::assets::is_static_elf(path).unwrap_or(false))
        .ok_or_else(|| "no static nimbus-guest found: build one with scripts/build-guest.sh and pass --guest PATH".into())
}

pub fn doctor(json: bool) -> ExitCode {
    let inputs =
        match Env::from_process().and_then(|env| nimbus_vmm::doctor::Inputs::from_env(&env)) {
            Ok(inputs) => inputs,
            Err(error) => {
                eprintln!("nimbus: {error}");
                return ExitCode::FAILURE;
            }
        };
    let Ok(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let host = nimbus_vmm::doctor::Host::current();
    let report = runtime.block_on(nimbus_vmm::doctor::examine(&host, &inputs));
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("nimbus: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render());
    }
    if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::command_line;

    fn words(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn commands_keep_their_words() {
        assert_eq!(command_line(&[]), Ok(None));
        assert_eq!(
            command_line(&words(&["sh", "-c", "echo a; exit 3"])),
            Ok(Some("sh -c 'echo a; exit 3'".into()))
        );
        assert_eq!(
            command_line(&words(&["echo", "hello", "from", "the", "guest"])),
            Ok(Some("echo hello from the guest".into()))
        );
        assert_eq!(
            command_line(&words(&["make && make test"])),
            Ok(Some("make && make test".into()))
        );
        // No shell word holds a NUL byte.
        assert!(command_line(&words(&["printf", "a\0b"])).is_err());
    }
}
