//! The in-guest agent (`bins/nimbus-guest`): receives a job over the protocol,
//! runs it, streams its output and reports how each step ended.
//!
//! Synchronous on purpose: the guest binary is static, tiny and starts in a few
//! milliseconds; threads are plenty for one job's pipes.

mod run;
#[cfg(target_os = "linux")]
mod sandbox;
mod standby;
mod system;
mod transport;
mod workflow;

pub use run::{run_job, Canceller, JobSink};
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
        mut reconnect,
    } = transport;
    let mut decoder = FrameDecoder::new();
    let hello = GuestMessage::Hello {
        protocol: PROTOCOL_VERSION,
        agent: env!("CARGO_PKG_VERSION").to_string(),
        kernel: kernel_release(),
        features: vec![
            crate::protocol::FEATURE_SNAPSHOT.to_string(),
            crate::protocol::FEATURE_RECONNECT.to_string(),
            crate::protocol::FEATURE_STANDBY.to_string(),
        ],
    };
    let mut outbox = Outbox::start(writer);
    if guest_first {
        outbox.send(hello.clone());
    }
    match read_message(&mut reader, &mut decoder)? {
        Some(HostMessage::Hello { protocol }) => check_version(protocol, PROTOCOL_VERSION)?,
        Some(other) => return Err(GuestError::Unexpected(format!("{other:?}"))),
        None => return Err(GuestError::Closed("hello")),
    }
    if !guest_first {
        outbox.send(hello.clone());
    }

    // Started now, not when the job comes: under TCG a thread's spawn costs
    // milliseconds on the way to the job's first line.
    let host_watch = HostWatch::start();

    // Before its job, a VM may be primed for a snapshot, or (restored from one)
    // be given an identity of its own.
    let mut archive: Option<workflow::Archive> = None;
    let mut standby: Option<standby::StandbyShell> = None;
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
            Some(HostMessage::Prime {
                reconnect: again,
                standby: ahead,
            }) => {
                prime_for_snapshot();
                if ahead {
                    standby::rehearse();
                    // Without bash, or with its files refused, jobs start as usual.
                    standby = standby::StandbyShell::start().ok();
                }
                outbox.send(GuestMessage::Primed);
                if let (true, Some(connect)) = (again, reconnect.as_mut()) {
                    // Primed is written before the channel closes; the VM
                    // restored from the snapshot goes on from the connect loop.
                    outbox.close();
                    drop(std::mem::replace(&mut reader, Box::new(std::io::empty())));
                    let fresh = connect()?;
                    reader = fresh.reader;
                    outbox = Outbox::start(fresh.writer);
                    decoder = FrameDecoder::new();
                }
            }
            Some(HostMessage::Refresh { identity }) => match apply_identity(&identity) {
                Ok(()) => {
                    // A shell started before would keep the old identity.
                    standby = None;
                    outbox.send(hello.clone());
                }
                Err(error) => {
                    outbox.send(GuestMessage::Failed {
                        message: error.to_string(),
                    });
                }
            },
            Some(HostMessage::Cancel) | None => {
                outbox.close();
                return Ok(130);
            }
            Some(other) => return Err(GuestError::Unexpected(format!("{other:?}"))),
        }
    };

    if let (Some(workflow), Some(archive)) = (job.workflow.as_mut(), archive) {
        workflow.archive = Some(archive.finish()?);
    }
    let sink = JobSink::new(outbox.sender());
    host_watch.watch(reader, decoder, sink.canceller());

    let exit_code = match run_job(&job, &sink, standby) {
        Ok(code) => code,
        Err(error) => {
            outbox.send(GuestMessage::Failed {
                message: error.to_string(),
            });
            1
        }
    };
    outbox.send(GuestMessage::Finished { exit_code });
    drop(sink);
    outbox.close();
    Ok(exit_code)
}

/// What the host sends while the job runs: a Cancel, or the host going away,
/// stops the job. Its thread waits to be handed the channel's reading side.
struct HostWatch {
    handoff: mpsc::Sender<Watched>,
}

/// The channel's reading side (with the bytes already read) and the job to stop.
type Watched = (Box<dyn Read + Send>, FrameDecoder, Canceller);

impl HostWatch {
    fn start() -> Self {
        let (handoff, watched) = mpsc::channel::<Watched>();
        // No job (the host went away first): the sender is dropped and the thread ends.
        thread::spawn(move || {
            if let Ok(watched) = watched.recv() {
                watch_until_cancelled(watched);
            }
        });
        HostWatch { handoff }
    }

    /// Watches `reader` for the rest of the job.
    fn watch(self, reader: Box<dyn Read + Send>, decoder: FrameDecoder, canceller: Canceller) {
        if let Err(mpsc::SendError(watched)) = self.handoff.send((reader, decoder, canceller)) {
            // The thread is gone (it cannot end before its handoff, but the job
            // must not go unwatched if it did).
            thread::spawn(move || watch_until_cancelled(watched));
        }
    }
}

fn watch_until_cancelled((mut reader, mut decoder, canceller): Watched) {
    loop {
        match read_message(&mut reader, &mut decoder) {
            Ok(Some(HostMessage::Cancel)) | Ok(None) | Err(_) => {
                canceller.cancel();
                return;
            }
            Ok(Some(_)) => continue,
        }
    }
}

/// The guest's half of the channel's writing side: one thread owns the writer so
/// messages are never interleaved.
struct Outbox {
    sender: Option<mpsc::Sender<GuestMessage>>,
    writer: Option<thread::JoinHandle<()>>,
}

impl Outbox {
    fn start(writer: Box<dyn Write + Send>) -> Self {
        let (sender, receiver) = mpsc::channel::<GuestMessage>();
        Outbox {
            sender: Some(sender),
            writer: Some(thread::spawn(move || write_loop(writer, receiver))),
        }
    }

    fn send(&self, message: GuestMessage) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|sender| sender.send(message).is_ok())
    }

    fn sender(&self) -> mpsc::Sender<GuestMessage> {
        match &self.sender {
            Some(sender) => sender.clone(),
            // Closed: a sender whose messages go nowhere.
            None => mpsc::channel().0,
        }
    }

    /// Writes out what was sent (once every other sender is gone) and closes the writer.
    fn close(&mut self) {
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::protocol::{FrameDecoder, Identity};

    /// A writer whose bytes the test reads afterwards.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<u8>>>);

    impl Write for Recorded {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorded {
        fn messages(&self) -> Vec<GuestMessage> {
            let mut decoder = FrameDecoder::new();
            decoder.push(&self.0.lock().expect("recorded bytes"));
            std::iter::from_fn(|| decoder.next_message::<GuestMessage>().expect("a frame"))
                .collect()
        }
    }

    fn frames(messages: &[HostMessage]) -> Box<dyn Read + Send> {
        Box::new(Cursor::new(
            messages.iter().flat_map(encode).collect::<Vec<u8>>(),
        ))
    }

    #[test]
    fn a_guest_primed_to_reconnect_answers_its_restorer_on_a_new_channel() {
        let first = Recorded::default();
        let second = Recorded::default();
        let connects = Arc::new(Mutex::new(0));
        let (restored_writer, counter) = (second.clone(), connects.clone());
        let mut attempt = move || -> Result<Transport, GuestError> {
            let mut tries = counter.lock().expect("counter");
            *tries += 1;
            if *tries < 3 {
                // The host is not listening yet.
                return Err(GuestError::Transport("refused".into()));
            }
            Ok(Transport {
                // An identity the guest refuses before touching anything (the
                // entropy is not hex), so the test host is left alone.
                reader: frames(&[
                    HostMessage::Refresh {
                        identity: Identity {
                            entropy: "not hex".into(),
                            machine_id: "0".repeat(32),
                            hostname: "nimbus-test".into(),
                            mac: None,
                            unix_millis: 0,
                        },
                    },
                    HostMessage::Cancel,
                ]),
                writer: Box::new(restored_writer.clone()),
                guest_first: false,
                reconnect: None,
            })
        };
        let transport = Transport {
            reader: frames(&[
                HostMessage::Hello {
                    protocol: PROTOCOL_VERSION,
                },
                HostMessage::Prime {
                    reconnect: true,
                    standby: false,
                },
                // Never read: the guest closed this channel after Primed.
                HostMessage::Cancel,
            ]),
            writer: Box::new(first.clone()),
            guest_first: false,
            reconnect: Some(Box::new(move || {
                transport::retry_until(std::time::Duration::from_secs(5), &mut attempt)
            })),
        };
        assert_eq!(serve(transport).expect("served"), 130);
        let before = first.messages();
        assert!(
            matches!(before.as_slice(), [GuestMessage::Hello { features, .. }, GuestMessage::Primed]
            if features.iter().any(|f| f == crate::protocol::FEATURE_RECONNECT))
        );
        assert_eq!(
            *connects.lock().expect("counter"),
            3,
            "retried until the host listened"
        );
        let after = second.messages();
        assert!(
            matches!(after.as_slice(), [GuestMessage::Failed { message }] if message.contains("entropy")),
            "the refresh was answered on the new channel: {after:?}"
        );
    }

    #[test]
    fn a_guest_primed_for_the_warm_pool_keeps_its_channel() {
        let out = Recorded::default();
        let transport = Transport {
            reader: frames(&[
                HostMessage::Hello {
                    protocol: PROTOCOL_VERSION,
                },
                HostMessage::Prime {
                    reconnect: false,
                    standby: true,
                },
                HostMessage::Cancel,
            ]),
            writer: Box::new(out.clone()),
            guest_first: false,
            reconnect: Some(Box::new(|| panic!("no reconnect without reconnect: true"))),
        };
        assert_eq!(serve(transport).expect("served"), 130);
        assert!(matches!(
            out.messages().as_slice(),
            [GuestMessage::Hello { .. }, GuestMessage::Primed]
        ));
    }

    /// Serves a job that prints a line and then sleeps; once the line is out, `stop`
    /// is done to the host's end of the channel. Returns the job's exit code.
    fn stopped_while_running(stop: impl FnOnce(std::os::unix::net::UnixStream)) -> i32 {
        let (guest_end, mut host_end) = std::os::unix::net::UnixStream::pair().expect("a pair");
        let out = Recorded::default();
        let transport = Transport {
            reader: Box::new(guest_end),
            writer: Box::new(out.clone()),
            guest_first: false,
            reconnect: None,
        };
        let serving = thread::spawn(move || serve(transport));
        let job = crate::protocol::GuestJob::from_commands(&["echo started; sleep 30"]);
        for message in [
            HostMessage::Hello {
                protocol: PROTOCOL_VERSION,
            },
            HostMessage::Run { job },
        ] {
            host_end.write_all(&encode(&message)).expect("sent");
        }
        let started = std::time::Instant::now();
        let printed = |messages: &[GuestMessage]| {
            messages
                .iter()
                .any(|m| matches!(m, GuestMessage::Output(line) if line.line == "started"))
        };
        while !printed(&out.messages()) {
            assert!(started.elapsed().as_secs() < 10, "the step never printed");
            thread::sleep(std::time::Duration::from_millis(5));
        }
        stop(host_end);
        let code = serving.join().expect("joined").expect("served");
        assert!(
            started.elapsed().as_secs() < 10,
            "the step was stopped, not waited for"
        );
        assert!(matches!(
            out.messages().last(),
            Some(GuestMessage::Finished { exit_code }) if *exit_code == code
        ));
        code
    }

    #[test]
    fn a_cancel_from_the_host_stops_the_running_job() {
        let code = stopped_while_running(|mut host| {
            host.write_all(&encode(&HostMessage::Cancel)).expect("sent");
            // Kept open: the Cancel alone stops the job.
            thread::spawn(move || {
                thread::sleep(std::time::Duration::from_secs(20));
                drop(host);
            });
        });
        assert_ne!(code, 0);
    }

    #[test]
    fn the_host_going_away_stops_the_running_job() {
        assert_ne!(stopped_while_running(drop), 0);
    }
}
