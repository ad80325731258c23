//! How the guest reaches the host: a virtio-serial port (QEMU), vsock (Firecracker)
//! or its own stdin/stdout (the sandbox, where the host holds the pipes).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::GuestError;
use crate::protocol::{VIRTIO_PORT_NAME, VSOCK_PORT};

/// The host's vsock CID, as seen from a guest.
const HOST_CID: u32 = 2;

/// How `nimbus-guest` reaches the host, as `nimbus.transport=` on the kernel command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportKind {
    /// The process's stdin and stdout (the sandbox: the host holds the pipes).
    Stdio,
    /// A virtio-serial port (QEMU), found by its name.
    VirtioSerial {
        /// The port's name; default [`VIRTIO_PORT_NAME`].
        name: String,
    },
    /// A vsock connection to the host (Firecracker).
    Vsock {
        /// The host's port; default [`VSOCK_PORT`].
        port: u32,
    },
    /// The serial console, shared with the kernel's messages: the last resort when
    /// there is neither virtio-serial nor vsock.
    Serial {
        /// The tty device; default `/dev/ttyS0`.
        device: String,
    },
}

impl TransportKind {
    /// `stdio`, `virtio-serial[:NAME]` or `vsock[:PORT]`.
    pub fn parse(text: &str) -> Result<Self, GuestError> {
        let (kind, arg) = match text.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (text, None),
        };
        match kind {
            "stdio" => Ok(TransportKind::Stdio),
            "virtio-serial" => Ok(TransportKind::VirtioSerial {
                name: arg.unwrap_or(VIRTIO_PORT_NAME).to_string(),
            }),
            "vsock" => Ok(TransportKind::Vsock {
                port: match arg {
                    Some(port) => port
                        .parse()
                        .map_err(|_| GuestError::Transport(format!("bad vsock port {port:?}")))?,
                    None => VSOCK_PORT,
                },
            }),
            "serial" => Ok(TransportKind::Serial {
                device: arg.unwrap_or("/dev/ttyS0").to_string(),
            }),
            other => Err(GuestError::Transport(format!(
                "unknown transport {other:?} (stdio, virtio-serial[:NAME], vsock[:PORT], serial[:DEVICE])"
            ))),
        }
    }

    /// The `nimbus.transport=` argument of a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Option<Result<Self, GuestError>> {
        cmdline
            .split_whitespace()
            .find_map(|word| word.strip_prefix("nimbus.transport="))
            .map(Self::parse)
    }
}

/// Opens the channel anew after the guest closed it (see [`Transport::reconnect`]).
pub type Reconnect = Box<dyn FnMut() -> Result<Transport, GuestError> + Send>;

/// How long a guest that closed its vsock channel for a snapshot keeps trying to
/// reach the host again: the template VM is paused within seconds, and a VM
/// restored from it connects at once, so this bounds only a host that went away.
const RECONNECT_WAIT: Duration = Duration::from_secs(600);

/// An open channel to the host.
pub struct Transport {
    /// Bytes from the host.
    pub reader: Box<dyn Read + Send>,
    /// Bytes to the host.
    pub writer: Box<dyn Write + Send>,
    /// On a serial console the guest speaks first, once its line is in raw mode:
    /// anything the host sent earlier would have been echoed back by the tty.
    pub guest_first: bool,
    /// Connects again, for transports that can (vsock): a Firecracker snapshot
    /// drops the guest's connections, so a primed guest closes its own and keeps
    /// connecting until the VM restored from the snapshot reaches its new host.
    pub reconnect: Option<Reconnect>,
}

impl Transport {
    /// Opens the channel, waiting up to 10 s for a virtio-serial port to appear.
    pub fn open(kind: &TransportKind) -> Result<Self, GuestError> {
        match kind {
            TransportKind::Stdio => Ok(Transport {
                reader: Box::new(std::io::stdin()),
                writer: Box::new(std::io::stdout()),
                guest_first: false,
                reconnect: None,
            }),
            TransportKind::VirtioSerial { name } => {
                let device = find_virtio_port(name, Duration::from_secs(10))?;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&device)
                    .map_err(GuestError::io(format!("opening {}", device.display())))?;
                let reader = file
                    .try_clone()
                    .map_err(GuestError::io("duplicating the port handle"))?;
                Ok(Transport {
                    reader: Box::new(reader),
                    writer: Box::new(file),
                    guest_first: false,
                    reconnect: None,
                })
            }
            TransportKind::Serial { device } => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(device)
                    .map_err(GuestError::io(format!("opening {device}")))?;
                raw_mode(&file, device)?;
                let reader = file
                    .try_clone()
                    .map_err(GuestError::io("duplicating the serial handle"))?;
                Ok(Transport {
                    reader: Box::new(reader),
                    writer: Box::new(file),
                    guest_first: true,
                    reconnect: None,
                })
            }
            TransportKind::Vsock { port } => {
                #[cfg(target_os = "linux")]
                {
                    vsock_transport(*port)
                }
                #[cfg(not(target_os = "linux"))]
                {
                    let _ = port;
                    Err(GuestError::Transport("vsock needs Linux".into()))
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn vsock_transport(port: u32) -> Result<Transport, GuestError> {
    let stream = vsock::VsockStream::connect_with_cid_port(HOST_CID, port).map_err(
        GuestError::io(format!("vsock connect to {HOST_CID}:{port}")),
    )?;
    let reader = stream
        .try_clone()
        .map_err(GuestError::io("duplicating the vsock stream"))?;
    Ok(Transport {
        reader: Box::new(reader),
        writer: Box::new(stream),
        guest_first: false,
        reconnect: Some(Box::new(move || {
            retry_until(RECONNECT_WAIT, || vsock_transport(port))
        })),
    })
}

/// Calls `connect` every few milliseconds until it succeeds or `wait` has passed.
pub(crate) fn retry_until(
    wait: Duration,
    mut connect: impl FnMut() -> Result<Transport, GuestError>,
) -> Result<Transport, GuestError> {
    let started = Instant::now();
    loop {
        match connect() {
            Ok(transport) => return Ok(transport),
            Err(error) if started.elapsed() >= wait => return Err(error),
            // The host is not listening yet (the snapshot is still being taken,
            // or the restored VM's host binds in a moment).
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// No echo, no line discipline, no CR/LF translation: frames are binary.
fn raw_mode(file: &std::fs::File, device: &str) -> Result<(), GuestError> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let mut termios =
        tcgetattr(file).map_err(|e| GuestError::Transport(format!("{device}: tcgetattr: {e}")))?;
    cfmakeraw(&mut termios);
    tcsetattr(file, SetArg::TCSANOW, &termios)
        .map_err(|e| GuestError::Transport(format!("{device}: tcsetattr: {e}")))
}

/// `/dev/vportNpM` whose `/sys/class/virtio-ports/*/name` is `name`; waits for the
/// driver to probe the device.
fn find_virtio_port(name: &str, wait: Duration) -> Result<PathBuf, GuestError> {
    let class = Path::new("/sys/class/virtio-ports");
    let started = Instant::now();
    loop {
        if let Ok(entries) = std::fs::read_dir(class) {
            for entry in entries.flatten() {
                let port_name =
                    std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    let device = Path::new("/dev").join(entry.file_name());
                    if device.exists() {
                        return Ok(device);
                    }
                }
            }
        }
        if started.elapsed() > wait {
            return Err(GuestError::Transport(format!(
                "no virtio-serial port named {name} under {}",
                class.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_from_the_kernel_command_line() {
        let cmdline = "console=ttyS0 quiet nimbus.transport=virtio-serial:org.nimbus.0 panic=-1";
        assert_eq!(
            TransportKind::from_cmdline(cmdline).and_then(Result::ok),
            Some(TransportKind::VirtioSerial {
                name: "org.nimbus.0".into()
            })
        );
        assert_eq!(
            TransportKind::parse("vsock").ok(),
            Some(TransportKind::Vsock { port: VSOCK_PORT })
        );
        assert!(TransportKind::parse("vsock:x").is_err());
        assert!(TransportKind::parse("carrier-pigeon").is_err());
        assert!(TransportKind::from_cmdline("quiet").is_none());
    }
}
