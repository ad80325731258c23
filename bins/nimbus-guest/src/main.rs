//! `nimbus-guest`: the agent inside every Nimbus VM (and sandbox).
//!
//! Started by the guest's init (the rootfs's `/sbin/nimbus-init`), it reaches the
//! host over the transport named by `--transport` or the kernel command line's
//! `nimbus.transport=`, receives one job, runs it and exits with its code; the init
//! then powers the machine off. See nimbus_vmm::protocol for the wire format.
//!
//!     nimbus-guest [--transport stdio|virtio-serial[:NAME]|vsock[:PORT]]
//!                  [--vm | --sandbox-root TREE --sandbox-dir DIR --id-base N [--netns PATH]]
//!
//! `--vm`: mount /proc, /sys, /tmp, /run, /dev/pts, /dev/shm, set the hostname and
//! the network from `nimbus.net=` first (what an init system would do).
//!
//! `--sandbox-root`: the sandbox's first stage (real root, pid 1 of a fresh pid
//! namespace): builds the job's mounts, then runs this binary again as the second
//! stage (`--sandbox-job`), which becomes root of its own user namespace, confines
//! itself and serves the job (nimbus_vmm::guest::sandbox).

use std::path::PathBuf;
use std::process::ExitCode;

use nimbus_vmm::guest::{serve, GuestError, Transport, TransportKind};

struct Args {
    transport: Option<String>,
    sandbox_root: Option<PathBuf>,
    sandbox_dir: Option<PathBuf>,
    netns: Option<PathBuf>,
    id_base: Option<u32>,
    sandbox_job: bool,
    vm: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        transport: None,
        sandbox_root: None,
        sandbox_dir: None,
        netns: None,
        id_base: None,
        sandbox_job: false,
        vm: false,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = |name: &str| words.next().ok_or(format!("{name} needs a value"));
        match word.as_str() {
            "--transport" => args.transport = Some(value("--transport")?),
            "--sandbox-root" => args.sandbox_root = Some(value("--sandbox-root")?.into()),
            "--sandbox-dir" => args.sandbox_dir = Some(value("--sandbox-dir")?.into()),
            "--netns" => args.netns = Some(value("--netns")?.into()),
            "--id-base" => {
                let text = value("--id-base")?;
                args.id_base = Some(
                    text.parse()
                        .map_err(|_| format!("--id-base {text:?} is not a number"))?,
                )
            }
            "--sandbox-job" => args.sandbox_job = true,
            "--vm" => args.vm = true,
            "--version" => {
                println!("nimbus-guest {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn run(args: Args) -> Result<i32, GuestError> {
    if args.vm {
        nimbus_vmm::guest::prepare_vm()?;
    }
    if let Some(root) = args.sandbox_root {
        let (Some(dir), Some(id_base)) = (args.sandbox_dir, args.id_base) else {
            return Err(GuestError::Sandbox(
                "--sandbox-root needs --sandbox-dir and --id-base".into(),
            ));
        };
        nimbus_vmm::guest::enter_sandbox(&nimbus_vmm::guest::SandboxMounts {
            root,
            dir,
            netns: args.netns,
            id_base,
        })?;
        let mut stage_two = vec!["--sandbox-job".to_string()];
        if let Some(transport) = args.transport {
            stage_two.extend(["--transport".to_string(), transport]);
        }
        return nimbus_vmm::guest::run_stage_two(id_base, &stage_two);
    }
    if args.sandbox_job {
        nimbus_vmm::guest::become_job_root()?;
    }
    let kind = match args.transport {
        Some(text) => TransportKind::parse(&text)?,
        None => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            TransportKind::from_cmdline(&cmdline).unwrap_or_else(|| {
                Err(GuestError::Transport(
                    "no --transport and no nimbus.transport= on the kernel command line".into(),
                ))
            })?
        }
    };
    serve(Transport::open(&kind)?)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("nimbus-guest: {message}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(error) => {
            // stderr is the VM's console (or the sandbox's log): the host shows it.
            eprintln!("nimbus-guest: {error}");
            ExitCode::from(1)
        }
    }
}
