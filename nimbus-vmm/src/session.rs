//! The host half of the guest protocol: handshake, send the job, collect events,
//! enforce the deadline. Every driver ends up with a byte stream to `nimbus-guest`
//! (virtio-serial socket, vsock, or the sandbox's pipes) and hands it to
//! [`GuestChannel`].

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{
    check_version, encode, FrameDecoder, GuestJob, GuestMessage, HostMessage, PROTOCOL_VERSION,
};
use crate::{Error, JobEvent, JobReport, Outcome, Result, StepReport};

/// The host's end of one guest's channel: framing, handshake and job run.
pub struct GuestChannel {
    reader: Box<dyn AsyncRead + Unpin + Send>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    decoder: FrameDecoder,
    guest_first: bool,
}

/// What a primed VM waits for ([`GuestChannel::prime`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimeFor {
    /// Its job, in a warm pool: the guest also starts the first step's shell ahead.
    WarmPool,
    /// A snapshot; with `reconnect` the guest then closes this channel and connects
    /// again (vsock loses its connections across a Firecracker snapshot).
    Snapshot {
        /// Connect again after answering.
        reconnect: bool,
    },
}

/// Who the guest said it is.
#[derive(Debug, Clone)]
pub struct Hello {
    /// `nimbus-guest`'s version.
    pub agent: String,
    /// `uname -r` of the guest kernel (the host's under the sandbox driver).
    pub kernel: String,
    /// Optional protocol features the guest speaks ([`crate::protocol::FEATURE_SNAPSHOT`]).
    pub features: Vec<String>,
}

impl GuestChannel {
    /// A channel over a clean byte stream (virtio-serial, vsock, pipes); the host speaks first.
    pub fn new(
        reader: impl AsyncRead + Unpin + Send + 'static,
        writer: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Self {
        GuestChannel {
            reader: Box::new(reader),
            writer: Box::new(writer),
            decoder: FrameDecoder::new(),
            guest_first: false,
        }
    }

    /// A channel over a serial console shared with the guest kernel's messages:
    /// the decoder skips console text between frames, and the guest speaks first
    /// (its tty echoes whatever arrives before it switched the line to raw mode).
    pub fn over_serial_console(
        reader: impl AsyncRead + Unpin + Send + 'static,
        writer: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Self {
        GuestChannel {
            decoder: FrameDecoder::resynchronising(),
            guest_first: true,
            ..GuestChannel::new(reader, writer)
        }
    }

    /// Console text a serial channel skipped (for boot diagnostics).
    pub fn take_console_noise(&mut self) -> String {
        String::from_utf8_lossy(&self.decoder.take_noise()).into_owned()
    }

    /// Sends one message as a frame and flushes it.
    pub async fn send(&mut self, message: &HostMessage) -> Result<()> {
        self.writer
            .write_all(&encode(message))
            .await
            .map_err(Error::io("writing to the guest"))?;
        self.writer
            .flush()
            .await
            .map_err(Error::io("writing to the guest"))
    }

    /// The next message; `None` once the guest closed the channel.
    pub async fn recv(&mut self) -> Result<Option<GuestMessage>> {
        let mut buffer = [0u8; 32 * 1024];
        loop {
            if let Some(message) = self.decoder.next_message::<GuestMessage>()? {
                return Ok(Some(message));
            }
            let n = self
                .reader
                .read(&mut buffer)
                .await
                .map_err(Error::io("reading from the guest"))?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&buffer[..n]);
        }
    }

    /// Sends our hello and waits for the guest's.
    pub async fn handshake(&mut self) -> Result<Hello> {
        let ours = HostMessage::Hello {
            protocol: PROTOCOL_VERSION,
        };
        if !self.guest_first {
            self.send(&ours).await?;
        }
        let hello = self.recv().await?;
        if self.guest_first {
            self.send(&ours).await?;
        }
        match hello {
            Some(GuestMessage::Hello {
                protocol,
                agent,
                kernel,
                features,
            }) => {
                check_version(PROTOCOL_VERSION, protocol)?;
                Ok(Hello {
                    agent,
                    kernel,
                    features,
                })
            }
            Some(other) => Err(Error::Protocol(format!(
                "expected the guest's hello, got {other:?}"
            ))),
            None => Err(Error::Protocol(
                "the guest closed the channel before its hello".into(),
            )),
        }
    }

    /// Asks the guest to get ready for what `waits_for` and waits until it is.
    pub async fn prime(&mut self, waits_for: PrimeFor) -> Result<()> {
        let (reconnect, standby) = match waits_for {
            PrimeFor::WarmPool => (false, true),
            PrimeFor::Snapshot { reconnect } => (reconnect, false),
        };
        self.send(&HostMessage::Prime { reconnect, standby })
            .await?;
        match self.recv().await? {
            Some(GuestMessage::Primed) => Ok(()),
            Some(other) => Err(Error::Protocol(format!(
                "expected the guest to be primed, got {other:?}"
            ))),
            None => Err(Error::Protocol(
                "the guest closed the channel while priming".into(),
            )),
        }
    }

    /// Gives a VM restored from a snapshot its own identity; returns its new hello.
    pub async fn refresh(&mut self, identity: crate::protocol::Identity) -> Result<Hello> {
        self.send(&HostMessage::Refresh { identity }).await?;
        match self.recv().await? {
            Some(GuestMessage::Hello {
                agent,
                kernel,
                features,
                ..
            }) => Ok(Hello {
                agent,
                kernel,
                features,
            }),
            Some(GuestMessage::Failed { message }) => Err(Error::Protocol(format!(
                "the restored guest could not take its identity: {message}"
            ))),
            Some(other) => Err(Error::Protocol(format!(
                "expected the restored guest's hello, got {other:?}"
            ))),
            None => Err(Error::Protocol(
                "the restored guest closed the channel".into(),
            )),
        }
    }

    /// Runs `job` and returns how it ended; `timeout` bounds the whole run.
    /// On [`Outcome::TimedOut`] the caller must destroy the VM.
    pub async fn run(
        &mut self,
        job: &GuestJob,
        timeout: Duration,
        on_event: &mut (dyn FnMut(JobEvent) + Send),
    ) -> Result<JobReport> {
        let started = Instant::now();
        let mut progress = Progress::default();
        let ended = tokio::time::timeout(timeout, self.collect(job, &mut progress, on_event)).await;
        let outcome = match ended {
            Ok(outcome) => outcome?,
            Err(_elapsed) => {
                // Best effort: the guest stops the job; the VM is destroyed anyway.
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    self.send(&HostMessage::Cancel),
                )
                .await;
                Outcome::TimedOut
            }
        };
        Ok(JobReport {
            outcome,
            steps: progress.steps,
            output_lines: progress.lines,
            duration_millis: started.elapsed().as_millis() as u64,
        })
    }

    /// Streams the tar of a working tree to the guest, chunk by chunk.
    async fn send_workspace(&mut self, archive: &std::path::Path) -> Result<()> {
        use base64::Engine as _;
        use tokio::io::AsyncReadExt as _;
        let mut file = tokio::fs::File::open(archive)
            .await
            .map_err(|source| Error::Io {
                context: format!("opening the workspace archive {}", archive.display()),
                source,
            })?;
        let mut buffer = vec![0u8; crate::protocol::WORKSPACE_CHUNK_BYTES];
        loop {
            let mut filled = 0;
            while filled < buffer.len() {
                let n = file
                    .read(&mut buffer[filled..])
                    .await
                    .map_err(|source| Error::Io {
                        context: "reading the workspace archive".into(),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(());
            }
            let data = base64::engine::general_purpose::STANDARD.encode(&buffer[..filled]);
            self.send(&HostMessage::WorkspaceChunk { data }).await?;
        }
    }

    async fn collect(
        &mut self,
        job: &GuestJob,
        progress: &mut Progress,
        on_event: &mut (dyn FnMut(JobEvent) + Send),
    ) -> Result<Outcome> {
        if let Some(archive) = job.workflow.as_ref().and_then(|w| w.archive.as_ref()) {
            self.send_workspace(archive).await?;
        }
        self.send(&HostMessage::Run { job: job.clone() }).await?;
        let mut failure = None;
        loop {
            let message = match self.recv().await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return Ok(Outcome::Crashed {
                        reason: failure.unwrap_or_else(|| {
                            "the guest went away before the job finished".to_string()
                        }),
                    })
                }
                // A transport error mid-job is the VM dying under us.
                Err(Error::Io { source, .. }) => {
                    return Ok(Outcome::Crashed {
                        reason: format!("lost the guest: {source}"),
                    })
                }
                Err(other) => return Err(other),
            };
            match message {
                GuestMessage::StepStarted { index, name } => {
                    progress.steps.push(StepReport {
                        name: name.clone(),
                        outcome: crate::protocol::StepOutcome::Skipped,
                        duration_millis: 0,
                    });
                    on_event(JobEvent::StepStarted { index, name });
                }
                GuestMessage::Output(line) => {
                    progress.lines += 1;
                    on_event(JobEvent::Output(line));
                }
                GuestMessage::StepFinished {
                    index,
                    outcome,
                    duration_millis,
                } => {
                    if let Some(step) = progress.steps.get_mut(index) {
                        step.outcome = outcome;
                        step.duration_millis = duration_millis;
                    }
                    on_event(JobEvent::StepFinished {
                        index,
                        outcome,
                        duration_millis,
                    });
                }
                GuestMessage::WorkflowResult(result) => on_event(JobEvent::WorkflowResult(result)),
                GuestMessage::Failed { message } => failure = Some(message),
                GuestMessage::Finished { exit_code } => {
                    if let Some(message) = failure {
                        on_event(JobEvent::Output(crate::protocol::OutputLine {
                            seq: progress.lines + 1,
                            step: 0,
                            stream: crate::protocol::Stream::Stderr,
                            ts_millis: 0,
                            line: format!("nimbus-guest: {message}"),
                        }));
                    }
                    return Ok(Outcome::Exited { code: exit_code });
                }
                GuestMessage::Hello { .. } | GuestMessage::Primed => {
                    return Err(Error::Protocol(format!(
                        "unexpected {message:?} from the guest during a job"
                    )))
                }
            }
        }
    }
}

#[derive(Default)]
struct Progress {
    steps: Vec<StepReport>,
    lines: u64,
}
