//! The in-guest agent (`bins/nimbus-guest`): receives a job over the protocol,
//! runs it, streams its output and reports how each step ended.
//!
//! Synchronous on purpose: the guest binary is static, tiny and starts in a few
//! milliseconds; threads are plenty for one job's pipes.

mod run;
#[cfg(target_os = "linux")]
mod sandbox;
mod system;
mod transport;
mod workflow;

pub use run::{run_job, JobSink};
#[cfg(target_os = "linux")]
pub use sandbox::{become_job_root, enter_sandbox, run_stage_two, SandboxMounts};
pub use system::{apply_identity, prepare_vm, prime_for_snapshot};
pub use transport::{Transport, TransportKind};

use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;

use crate::protocol::{
    check_version, encode, FrameDecoder, GuestMessage, HostMessage, PROTOCOL_VERSION,
};

/// Everything that can stop the guest agent from serving a job.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The channel to the host, or the guest's network, could not be set up.
    #[error("transport: {0}")]
    Transport(String),
    /// The host's bytes were not valid protocol frames, or its version differs.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
    /// The host went away before the named step of the conversation.
    #[error("the host closed the channel before {0}")]
    Closed(&'static str),
    /// The host sent a message out of order; carries it, debug-formatted.
    #[error("unexpected message from the host: {0}")]
    Unexpected(String),
    /// Setting up the guest or confining the job (mounts, namespaces, ids, seccomp) failed.
    #[error("sandbox setup: {0}")]
    Sandbox(String),
    /// An I/O error, with what was being done when it happened.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `"reading from the host"`.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl GuestError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
        let context = context.into();
        move |source| GuestError::Io { context, source }
    }
}

/// Serves one job over `transport`: handshake, run, report. Returns the job's exit code.
pub fn serve(transport: Transport) -> Result<i32, GuestError> {
    let Transport {
        mut reader,
        writer,
        guest_first,
    } = transport;
    let mut decoder = FrameDecoder::new();
    let hello = GuestMessage::Hello {
        protocol: PROTOCOL_VERSION,
        agent: env!("CARGO_PKG_VERSION").to_string(),
        kernel: kernel_release(),
        features: vec![crate::protocol::FEATURE_SNAPSHOT.to_string()],
    };
    // One writer thread owns the channel so messages are never interleaved.
    let (sender, receiver) = mpsc::channel::<GuestMessage>();
    let writer_thread = thread::spawn(move || write_loop(writer, receiver));
    let send = |message: GuestMessage| sender.send(message).is_ok();
    if guest_first {
        send(hello.clone());
    }
    match read_message(&mut reader, &mut decoder)? {
        Some(HostMessage::Hello { protocol }) => check_version(protocol, PROTOCOL_VERSION)?,
        Some(other) => return Err(GuestError::Unexpected(format!("{other:?}"))),
        None => return Err(GuestError::Closed("hello")),
    }
    if !guest_first {
        send(hello.clone());
    }

    // Before its job, a VM may be primed for a snapshot, or (restored from one)
    // be given an identity of its own.
    let mut archive: Option<workflow::Archive> = None;
    let mut job = loop {
        match read_message(&mut reader, &mut decoder)? {
            Some(HostMessage::Run { job }) => break job,
            Some(HostMessage::WorkspaceChunk { data }) => {
                let into = match archive.as_mut() {
                    Some(into) => into,
                    None => archive.insert(workflow::Archive::create()?),
                };
                into.append(&data)?;
            }
            Some(HostMessage::Prime) => {
                prime_for_snapshot();
                send(GuestMessage::Primed);
            }
            Some(HostMessage::Refresh { identity }) => match apply_identity(&identity) {
                Ok(()) => {
                    send(hello.clone());
                }
                Err(error) => {
                    send(GuestMessage::Failed {
                        message: error.to_string(),
                    });
                }
            },
            Some(HostMessage::Cancel) | None => {
                drop(sender);
                let _ = writer_thread.join();
                return Ok(130);
            }
            Some(other) => return Err(GuestError::Unexpected(format!("{other:?}"))),
        }
    };

    if let (Some(workflow), Some(archive)) = (job.workflow.as_mut(), archive) {
        workflow.archive = Some(archive.finish()?);
    }
    let sink = JobSink::new(sender.clone());
    // A Cancel (or the host going away) while the job runs stops it.
    let canceller = sink.canceller();
    thread::spawn(move || {
        let mut decoder = decoder;
        loop {
            match read_message(&mut reader, &mut decoder) {
                Ok(Some(HostMessage::Cancel)) | Ok(None) | Err(_) => {
                    canceller.cancel();
                    return;
                }
                Ok(Some(_)) => continue,
            }
        }
    });

    let exit_code = match run_job(&job, &sink) {
        Ok(code) => code,
        Err(error) => {
            send(GuestMessage::Failed {
                message: error.to_string(),
            });
            1
        }
    };
    send(GuestMessage::Finished { exit_code });
    drop(sink);
    drop(sender);
    let _ = writer_thread.join();
    Ok(exit_code)
}

fn read_message(
    reader: &mut Box<dyn Read + Send>,
    decoder: &mut FrameDecoder,
) -> Result<Option<HostMessage>, GuestError> {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if let Some(message) = decoder.next_message::<HostMessage>()? {
            return Ok(Some(message));
        }
        let n = match reader.read(&mut buffer) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(GuestError::io("reading from the host")(e)),
        };
        if n == 0 {
            return Ok(None);
        }
        decoder.push(&buffer[..n]);
    }
}

fn write_loop(mut writer: Box<dyn Write + Send>, receiver: mpsc::Receiver<GuestMessage>) {
    while let Ok(message) = receiver.recv() {
        let mut frame = encode(&message);
        // Coalesce whatever else is already waiting into one write.
        while let Ok(next) = receiver.try_recv() {
            frame.extend_from_slice(&encode(&next));
            if frame.len() > 256 * 1024 {
                break;
            }
        }
        if writer
            .write_all(&frame)
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
