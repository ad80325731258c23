//! `nimbus-guest`: the agent inside every Nimbus VM (and sandbox).
//!
//! Started by the guest's init (the rootfs's `/sbin/nimbus-init`), it reaches the
//! host over the transport named by `--transport` or the kernel command line's
//! `nimbus.transport=`, receives one job, runs it and exits with its code; the init
//! then powers the machine off. See nimbus_vmm::protocol for the wire format.
//!
//!     nimbus-guest [--transport stdio|virtio-serial[:NAME]|vsock[:PORT]]
//!                  [--vm | --sandbox-root DIR --scratch DIR]
//!
//! `--vm`: mount /proc, /sys, /tmp, /run, /dev/pts, /dev/shm, set the hostname and
//! the network from `nimbus.net=` first (what an init system would do).

use std::path::PathBuf;
use std::process::ExitCode;

use nimbus_vmm::guest::{serve, GuestError, Transport, TransportKind};

struct Args {
    transport: Option<String>,
    sandbox_root: Option<PathBuf>,
    scratch: Option<PathBuf>,
    vm: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        transport: None,
        sandbox_root: None,
        scratch: None,
        vm: false,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = |name: &str| words.next().ok_or(format!("{name} needs a value"));
        match word.as_str() {
            "--transport" => args.transport = Some(value("--transport")?),
            "--sandbox-root" => args.sandbox_root = Some(value("--sandbox-root")?.into()),
            "--scratch" => args.scratch = Some(value("--scratch")?.into()),
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
        let scratch = args
            .scratch
            .ok_or_else(|| GuestError::Sandbox("--sandbox-root needs --scratch".into()))?;
        nimbus_vmm::guest::enter_sandbox(&nimbus_vmm::guest::SandboxMounts { root, scratch })?;
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
