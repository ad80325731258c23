//! The host ⇄ guest protocol spoken between a driver and `nimbus-guest`.
//!
//! Every message is one frame: a 4-byte magic, a big-endian `u32` length and that
//! many bytes of JSON. Output lines of the job travel *inside* frames, so nothing a
//! job prints can ever be mistaken for a control message, and a torn or foreign
//! byte stream is detected at the first bad magic instead of being parsed.
//!
//! The conversation: the host sends [`HostMessage::Hello`]; the guest answers with
//! [`GuestMessage::Hello`] (both carry [`PROTOCOL_VERSION`]; a mismatch ends the
//! session with an error); the host sends one [`HostMessage::Run`]; the guest streams
//! step and output messages and ends with [`GuestMessage::Finished`].
//!
//! Snapshots: before a VM is snapshotted the host sends [`HostMessage::Prime`]
//! (the guest loads what jobs start with, answers [`GuestMessage::Primed`]; asked
//! to, it then reconnects: Firecracker's vsock loses its connections across a
//! snapshot); every VM restored from the snapshot is first sent
//! [`HostMessage::Refresh`] with an [`Identity`] of its own and answers with a new
//! [`GuestMessage::Hello`], before its `Run`. Only guests whose hello lists
//! [`FEATURE_SNAPSHOT`] are snapshotted. A VM waiting in a warm pool is primed
//! too, with `standby`: its guest also starts the first step's shell ahead.
//!
//! The decoder is sans-IO ([`FrameDecoder`]) so the synchronous guest and the async
//! host share it.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bumped on any incompatible change of the messages below.
pub const PROTOCOL_VERSION: u32 = 1;
/// Marks the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"NMB\x01";
/// Bytes of tar stream per [`HostMessage::WorkspaceChunk`] (base64 keeps the frame under
/// [`MAX_FRAME_BYTES`]).
pub const WORKSPACE_CHUNK_BYTES: usize = 512 * 1024;
/// Upper bound of one frame's payload; an output line longer than this is split
/// by the guest before framing.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Longest output line the guest sends in one message.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// In [`GuestMessage::Hello`]'s `features`: the guest understands `Prime` and `Refresh`.
pub const FEATURE_SNAPSHOT: &str = "snapshot";
/// In [`GuestMessage::Hello`]'s `features`: after `Prime { reconnect: true }` the
/// guest closes its channel and connects again (vsock transports).
pub const FEATURE_RECONNECT: &str = "reconnect";
/// In [`GuestMessage::Hello`]'s `features`: after `Prime { standby: true }` the
/// guest starts the first step's shell ahead of the job.
pub const FEATURE_STANDBY: &str = "standby";
/// Name of the virtio-serial port QEMU exposes to the guest.
pub const VIRTIO_PORT_NAME: &str = "org.nimbus.0";
/// vsock port the guest connects to on the host (CID 2) under Firecracker.
pub const VSOCK_PORT: u32 = 1024;

/// Why a byte stream could not be decoded, or the peers cannot talk.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The frame did not start with [`FRAME_MAGIC`]; carries the four bytes found instead.
    #[error("bad frame magic {0:02x?}: the stream is not a nimbus-guest channel or lost sync")]
    BadMagic([u8; 4]),
    /// A frame announced a payload of more than [`MAX_FRAME_BYTES`] (the announced size).
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// The payload was not JSON of the expected message type.
    #[error("undecodable message: {0}")]
    Json(String),
    /// The two sides speak different [`PROTOCOL_VERSION`]s.
    #[error("protocol version mismatch: host speaks {host}, guest speaks {guest}")]
    Version {
        /// The host's version.
        host: u32,
        /// The guest's version.
        guest: u32,
    },
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// The host's opening message.
    Hello {
        /// The host's [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// Run this job; sent once per session, after the hellos.
    Run {
        /// The job to run.
        job: GuestJob,
    },
    /// Stop the running job (its processes are killed) and finish.
    Cancel,
    /// Part of the working tree `nimbus run` copies into the job's workspace: a
    /// tar stream, base64, sent in order before `Run`.
    WorkspaceChunk {
        /// Base64 of the next bytes of the tar stream.
        data: String,
    },
    /// A snapshot of this VM, or a job much later (a warm pool), may follow: load
    /// what jobs start with (the shells, their libraries), flush the disks, answer
    /// [`GuestMessage::Primed`] and wait.
    Prime {
        /// Then close the channel and connect again, retrying until the host
        /// answers: a Firecracker snapshot drops every vsock connection, so the VMs
        /// restored from it reach their new host this way (guests listing
        /// [`FEATURE_RECONNECT`]; others ignore it).
        #[serde(default)]
        reconnect: bool,
        /// No snapshot follows: start the first step's shell now, so the job's
        /// first line comes sooner (guests listing [`FEATURE_STANDBY`]; others
        /// ignore it). Never with a snapshot, whose restored VMs would share it.
        #[serde(default)]
        standby: bool,
    },
    /// This VM was restored from a snapshot: take this identity (RNG entropy,
    /// machine-id, hostname, MAC, clock), answer with a new hello and wait for `Run`.
    Refresh {
        /// What makes this VM unlike every other restored from the same snapshot.
        identity: Identity,
    },
}

/// What a VM restored from a snapshot must not share with its siblings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Random bytes from the host, hex, mixed into the guest kernel's RNG (credited)
    /// before it is reseeded: siblings would otherwise draw the same numbers.
    pub entropy: String,
    /// `/etc/machine-id`: 32 lower-case hex digits.
    pub machine_id: String,
    /// The hostname.
    pub hostname: String,
    /// eth0's MAC address, when the VM has a network.
    #[serde(default)]
    pub mac: Option<String>,
    /// The host's clock (Unix epoch milliseconds): the snapshot's is stale.
    pub unix_millis: i64,
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// The guest's answer to the host's hello.
    Hello {
        /// The guest's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// nimbus-guest's version.
        agent: String,
        /// `uname -r` of the guest kernel (the host's for the sandbox).
        kernel: String,
        /// Optional parts of the protocol the guest speaks (e.g. [`FEATURE_SNAPSHOT`]).
        #[serde(default)]
        features: Vec<String>,
    },
    /// The guest is ready to be snapshotted (the answer to [`HostMessage::Prime`]).
    Primed,
    /// A step is about to run (or be skipped).
    StepStarted {
        /// Position of the step in the job, from 0.
        index: usize,
        /// The step's display name.
        name: String,
    },
    /// A line the job printed.
    Output(OutputLine),
    /// A step ended.
    StepFinished {
        /// Position of the step in the job, from 0.
        index: usize,
        /// How it ended.
        outcome: StepOutcome,
        /// How long the step took, in milliseconds.
        duration_millis: u64,
    },
    /// A workflow job's outputs, step summary and annotations (workflow jobs only,
    /// just before [`GuestMessage::Finished`]).
    WorkflowResult(crate::workflow::WorkflowResult),
    /// The job ended; always the last message.
    Finished {
        /// The job's exit code: its first failed step's (124 for a step timeout), 130 if
        /// cancelled, 1 if it could not run at all (after [`GuestMessage::Failed`]), else 0.
        exit_code: i32,
    },
    /// The guest could not run the job at all (bad spec, missing shell, …).
    Failed {
        /// Why, for the job's log.
        message: String,
    },
}

/// One line a step printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    /// Strictly increasing per job, starting at 1.
    pub seq: u64,
    /// Index of the step that printed the line, from 0.
    pub step: usize,
    /// Whether the line went to stdout or stderr.
    pub stream: Stream,
    /// Unix epoch milliseconds, guest clock.
    pub ts_millis: i64,
    /// The line, without its newline; at most [`MAX_LINE_BYTES`] bytes.
    pub line: String,
}

/// Which of a step's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// The step's standard output.
    Stdout,
    /// The step's standard error.
    Stderr,
}

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "code", rename_all = "snake_case")]
pub enum StepOutcome {
    /// The step's process exited with this code (128 + signal if killed by one).
    Exited(i32),
    /// Its `if:` condition was false (e.g. an earlier step failed).
    Skipped,
    /// Killed after its own `timeout_seconds`.
    TimedOut,
}

impl StepOutcome {
    /// How `nimbus run` shows it: `✓`, `✗ exit 2`, `✗ timed out`, `– skipped`.
    pub fn mark(&self) -> String {
        match self {
            StepOutcome::Exited(0) => "✓".into(),
            StepOutcome::Exited(code) => format!("✗ exit {code}"),
            StepOutcome::TimedOut => "✗ timed out".into(),
            StepOutcome::Skipped => "– skipped".into(),
        }
    }
}

/// A job as the guest runs it: direct `run:` steps, or a GitHub Actions runner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestJob {
    /// The steps, run in order; ignored when `runner` is set.
    #[serde(default)]
    pub steps: Vec<GuestStep>,
    /// Environment of every step (a step's own env wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of steps without their own (default: the scratch workspace).
    #[serde(default)]
    pub working_directory: Option<String>,
    /// Present for jobs that came from GitHub: the guest starts the Actions runner
    /// with this just-in-time config instead of running `steps`.
    #[serde(default)]
    pub runner: Option<RunnerJob>,
    /// Present for `nimbus run`: a GitHub workflow job whose steps the guest runs
    /// with GitHub's semantics (expressions, environment files, workflow commands)
    /// instead of `steps`; the guest reports [`GuestMessage::WorkflowResult`] before
    /// it finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Box<crate::workflow::WorkflowJob>>,
}

impl GuestJob {
    /// A job of one shell step per command (what `nimbus vm run` sends).
    pub fn from_commands<S: AsRef<str>>(commands: &[S]) -> Self {
        GuestJob {
            steps: commands
                .iter()
                .map(|command| GuestStep::shell(command.as_ref()))
                .collect(),
            ..GuestJob::default()
        }
    }
}

/// One step of a [`GuestJob`], like a GitHub Actions `run:` step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestStep {
    /// Display name, for logs and reports.
    pub name: String,
    /// The script, run as a file by `shell`.
    pub run: String,
    /// GitHub's shell keywords (`bash`, `sh`, `python`) or a template with `{0}`
    /// for the script path. Default: `bash` when the guest has it, else `sh`.
    #[serde(default)]
    pub shell: Option<String>,
    /// Environment of this step, on top of the job's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the job's (an absolute path replaces it).
    #[serde(default)]
    pub working_directory: Option<String>,
    /// When the step runs, given how the earlier steps went.
    #[serde(default)]
    pub condition: StepCondition,
    /// A failure of this step does not fail the job (later steps still see it as success).
    #[serde(default)]
    pub continue_on_error: bool,
    /// Kills the step after this many seconds ([`StepOutcome::TimedOut`]); `None`: no limit.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

impl GuestStep {
    /// A step that runs `command` with the default shell, named after the command.
    pub fn shell(command: &str) -> Self {
        GuestStep {
            name: command.to_string(),
            run: command.to_string(),
            ..GuestStep::default()
        }
    }
}

/// When a step runs, as GitHub's `if: success()` (default), `failure()`, `always()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepCondition {
    /// Only if no earlier step failed (`success()`); the default.
    #[default]
    Success,
    /// Only if an earlier step failed (`failure()`).
    Failure,
    /// Whatever happened before (`always()`).
    Always,
}

/// A GitHub Actions job, run by the Actions runner in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerJob {
    /// The encoded JIT config from `generate-jitconfig`.
    pub jit_config: String,
    /// Where the Actions runner is installed in the rootfs.
    #[serde(default = "default_runner_dir")]
    pub runner_dir: String,
}

fn default_runner_dir() -> String {
    "/opt/actions-runner".to_string()
}

/// Encodes one message as a frame.
pub fn encode<M: Serialize>(message: &M) -> Vec<u8> {
    // Serializing these plain types cannot fail (no maps with non-string keys).
    let payload = serde_json::to_vec(message).unwrap_or_else(|e| {
        format!("{{\"type\":\"failed\",\"message\":\"encode: {e}\"}}").into_bytes()
    });
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Accumulates bytes from any transport and yields whole messages.
///
/// A resynchronising decoder (for a serial console shared with the kernel's
/// messages) skips bytes until the next frame magic and drops frames that do not
/// decode, instead of failing; what it skipped is kept as console noise.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    resync: bool,
    noise: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder for a clean byte stream: the first bad frame is an error.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder for a stream shared with other text (a serial console): see the type's docs.
    pub fn resynchronising() -> Self {
        FrameDecoder {
            resync: true,
            ..Self::default()
        }
    }

    /// Bytes a resynchronising decoder skipped since the last call.
    pub fn take_noise(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.noise)
    }

    /// Moves bytes before the next possible frame start to the noise.
    fn skip_to_magic(&mut self, from: usize) {
        let start = (from..self.buffer.len())
            .find(|&i| {
                let rest = &self.buffer[i..];
                let n = rest.len().min(FRAME_MAGIC.len());
                rest[..n] == FRAME_MAGIC[..n]
            })
            .unwrap_or(self.buffer.len());
        self.noise.extend(self.buffer.drain(..start));
        // Bound the noise kept for diagnostics.
        if self.noise.len() > 64 * 1024 {
            let excess = self.noise.len() - 64 * 1024;
            self.noise.drain(..excess);
        }
    }

    /// Appends bytes as they arrive from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, ProtocolError> {
        if !self.resync {
            return self.decode_one();
        }
        loop {
            self.skip_to_magic(0);
            match self.decode_one() {
                Ok(message) => return Ok(message),
                // Not a frame after all (console text that looked like one, or a
                // frame torn by kernel output): skip a byte and look again.
                Err(_) => self.skip_to_magic(1),
            }
        }
    }

    fn decode_one<M: DeserializeOwned>(&mut self) -> Result<Option<M>, ProtocolError> {
        if self.buffer.len() < 8 {
            return Ok(None);
        }
        let magic = [
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ];
        if magic != FRAME_MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let len = u32::from_be_bytes([
            self.buffer[4],
            self.buffer[5],
            self.buffer[6],
            self.buffer[7],
        ]) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(ProtocolError::TooLarge(len));
        }
        if self.buffer.len() < 8 + len {
            return Ok(None);
        }
        let message = serde_json::from_slice(&self.buffer[8..8 + len])
            .map_err(|e| ProtocolError::Json(e.to_string()));
        self.buffer.drain(..8 + len);
        message.map(Some)
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// Checks the peer's version against ours.
pub fn check_version(host: u32, guest: u32) -> Result<(), ProtocolError> {
    if host == guest {
        Ok(())
    } else {
        Err(ProtocolError::Version { host, guest })
    }
}

/// Splits text into lines no longer than [`MAX_LINE_BYTES`], on char boundaries.
pub fn split_long_line(line: &str) -> Vec<&str> {
    if line.len() <= MAX_LINE_BYTES {
        return vec![line];
    }
    let mut parts = Vec::new();
    let mut rest = line;
    while rest.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_arbitrary_chunking() {
        let messages = vec![
            GuestMessage::Hello {
                protocol: PROTOCOL_VERSION,
                agent: "0.1.0".into(),
                kernel: "6.1.0".into(),
                features: vec![FEATURE_SNAPSHOT.into()],
            },
            GuestMessage::Primed,
            GuestMessage::Output(OutputLine {
                seq: 1,
                step: 0,
                stream: Stream::Stdout,
                ts_millis: 1,
                // A job printing something that looks like a frame is still just text.
                line: "NMB\u{1}\0\0\0\u{5}{\"type\":\"finished\",\"exit_code\":0}".into(),
            }),
            GuestMessage::Finished { exit_code: 3 },
        ];
        let bytes: Vec<u8> = messages.iter().flat_map(encode).collect();
        for chunk in [1, 3, 7, 64, bytes.len()] {
            let mut decoder = FrameDecoder::new();
            let mut decoded = Vec::new();
            for piece in bytes.chunks(chunk) {
                decoder.push(piece);
                while let Some(message) = decoder.next_message::<GuestMessage>().expect("decodes") {
                    decoded.push(message);
                }
            }
            assert_eq!(decoded, messages, "chunk size {chunk}");
            assert_eq!(decoder.pending(), 0);
        }
    }

    #[test]
    fn foreign_bytes_and_oversized_frames_are_errors_not_panics() {
        let mut decoder = FrameDecoder::new();
        decoder.push(b"[    0.000000] Linux version 6.1");
        assert!(matches!(
            decoder.next_message::<GuestMessage>(),
            Err(ProtocolError::BadMagic(_))
        ));

        let mut decoder = FrameDecoder::new();
        decoder.push(&FRAME_MAGIC);
        decoder.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decoder.next_message::<GuestMessage>(),
            Err(ProtocolError::TooLarge(_))
        ));

        let mut decoder = FrameDecoder::new();
        decoder.push(&encode(&serde_json::json!({"type": "nonsense"})));
        assert!(matches!(
            decoder.next_message::<GuestMessage>(),
            Err(ProtocolError::Json(_))
        ));
    }

    #[test]
    fn a_resynchronising_decoder_skips_console_noise_and_torn_frames() {
        let good = encode(&GuestMessage::Finished { exit_code: 4 });
        let mut torn = encode(&GuestMessage::Finished { exit_code: 9 });
        torn[10] = b'#';
        let mut bytes = b"[    1.2] random: crng init done\r\nNMB".to_vec();
        bytes.extend_from_slice(&torn);
        bytes.extend_from_slice(b"nimbus-init: hello\n");
        bytes.extend_from_slice(&good);
        for chunk in [1, 5, bytes.len()] {
            let mut decoder = FrameDecoder::resynchronising();
            let mut decoded = Vec::new();
            for piece in bytes.chunks(chunk) {
                decoder.push(piece);
                while let Some(message) =
                    decoder.next_message::<GuestMessage>().expect("never fails")
                {
                    decoded.push(message);
                }
            }
            assert_eq!(
                decoded,
                vec![GuestMessage::Finished { exit_code: 4 }],
                "chunk {chunk}"
            );
            assert!(String::from_utf8_lossy(&decoder.take_noise()).contains("crng init done"));
        }
    }

    #[test]
    fn job_specs_refuse_unknown_fields() {
        let error = serde_json::from_str::<GuestJob>(r#"{"stepz": []}"#).expect_err("refused");
        assert!(error.to_string().contains("stepz"));
    }

    #[test]
    fn long_lines_split_on_char_boundaries() {
        let line = "é".repeat(MAX_LINE_BYTES);
        let parts = split_long_line(&line);
        assert!(parts.iter().all(|p| p.len() <= MAX_LINE_BYTES));
        assert_eq!(parts.concat(), line);
    }
}
