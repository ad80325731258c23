//! Running a job's steps inside the guest, with GitHub Actions' step semantics:
//! a failed step skips the following `success()` steps, `failure()` steps run only
//! after a failure, `always()` steps always; `continue_on_error` keeps a failure
//! from failing the job; each step's script runs as a file through its shell.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::standby::StandbyShell;
use super::GuestError;
use crate::protocol::{
    split_long_line, GuestJob, GuestMessage, GuestStep, OutputLine, StepCondition, StepOutcome,
    Stream,
};

/// Exit code the job reports when a step timed out (as coreutils `timeout`).
pub(crate) const TIMED_OUT_EXIT_CODE: i32 = 124;
/// Exit code of a job stopped by the host (as a shell interrupted by SIGINT).
pub(crate) const CANCELLED_EXIT_CODE: i32 = 130;
/// How long output of a step's leftover background processes is awaited after the
/// step's shell exited, before moving on (their later lines are still forwarded).
const PIPE_DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Where a running job's messages go; shared by the threads reading its pipes.
#[derive(Clone)]
pub struct JobSink {
    sender: mpsc::Sender<GuestMessage>,
    seq: Arc<AtomicU64>,
    running: Arc<Mutex<Option<u32>>>,
    cancelled: Arc<AtomicBool>,
    /// For workflow jobs: reads workflow commands off the output and masks secrets.
    filter: Option<Arc<Mutex<dyn LineFilter>>>,
}

/// Rewrites a step's output lines before they leave the guest.
pub(crate) trait LineFilter: Send {
    /// The lines to send for one line the step printed (none to drop it).
    fn filter(&mut self, step: usize, line: &str) -> Vec<String>;
}

/// Stops the job from another thread.
#[derive(Clone)]
pub struct Canceller {
    running: Arc<Mutex<Option<u32>>>,
    cancelled: Arc<AtomicBool>,
}

impl Canceller {
    /// Kills the running step's process group and keeps the remaining steps from running.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Ok(running) = self.running.lock() {
            if let Some(pgid) = *running {
                kill_group(pgid);
            }
        }
    }
}

impl JobSink {
    /// A sink whose messages go to `sender` (the guest's writer thread).
    pub fn new(sender: mpsc::Sender<GuestMessage>) -> Self {
        JobSink {
            sender,
            seq: Arc::new(AtomicU64::new(0)),
            running: Arc::new(Mutex::new(None)),
            cancelled: Arc::new(AtomicBool::new(false)),
            filter: None,
        }
    }

    /// The same sink, its output passed through `filter`.
    pub(crate) fn filtered(&self, filter: Arc<Mutex<dyn LineFilter>>) -> Self {
        JobSink {
            filter: Some(filter),
            ..self.clone()
        }
    }

    /// A handle that cancels this job from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            running: self.running.clone(),
            cancelled: self.cancelled.clone(),
        }
    }

    pub(crate) fn send(&self, message: GuestMessage) {
        // The host going away is noticed by the reader thread, which cancels the job.
        let _ = self.sender.send(message);
    }

    pub(crate) fn line(&self, step: usize, stream: Stream, text: &str) {
        if let Some(filter) = &self.filter {
            let lines = match filter.lock() {
                Ok(mut filter) => filter.filter(step, text),
                Err(_) => Vec::new(),
            };
            for line in lines {
                self.raw_line(step, stream, &line);
            }
            return;
        }
        self.raw_line(step, stream, text);
    }

    /// A line that bypasses the filter (the runner's own notes).
    pub(crate) fn send_line_unfiltered(&self, step: usize, stream: Stream, text: &str) {
        self.raw_line(step, stream, text);
    }

    fn raw_line(&self, step: usize, stream: Stream, text: &str) {
        for part in split_long_line(text) {
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            self.send(GuestMessage::Output(OutputLine {
                seq,
                step,
                stream,
                ts_millis: now_millis(),
                line: part.to_string(),
            }));
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// Runs every step of `job` and returns the job's exit code. `standby`, a shell
/// started ahead, runs the first step if it can run it as a fresh one would.
pub fn run_job(
    job: &GuestJob,
    sink: &JobSink,
    standby: Option<StandbyShell>,
) -> Result<i32, GuestError> {
    if let Some(workflow) = &job.workflow {
        return super::workflow::run_workflow_job(job, workflow, sink);
    }
    let (steps, mut standby) = match &job.runner {
        Some(runner) => (
            vec![runner_step(&runner.jit_config, &runner.runner_dir)],
            None,
        ),
        None => (job.steps.clone(), standby),
    };
    let workspace = default_workspace(job);
    std::fs::create_dir_all(&workspace)
        .map_err(GuestError::io(format!("creating {}", workspace.display())))?;

    let scripts = match standby.as_mut() {
        Some(shell) => shell.share_scripts(),
        None => script_dir()?,
    };
    let mut job_exit = 0;
    for (index, step) in steps.iter().enumerate() {
        let failed = job_exit != 0;
        let runs = !sink.is_cancelled()
            && match step.condition {
                StepCondition::Success => !failed,
                StepCondition::Failure => failed,
                StepCondition::Always => true,
            };
        sink.send(GuestMessage::StepStarted {
            index,
            name: step.name.clone(),
        });
        let started = Instant::now();
        let outcome = if runs {
            run_step(index, step, job, &workspace, &scripts, standby.take(), sink)
        } else {
            StepOutcome::Skipped
        };
        sink.send(GuestMessage::StepFinished {
            index,
            outcome,
            duration_millis: started.elapsed().as_millis() as u64,
        });
        let step_exit = match outcome {
            StepOutcome::Exited(code) => code,
            StepOutcome::TimedOut => TIMED_OUT_EXIT_CODE,
            StepOutcome::Skipped => 0,
        };
        if step_exit != 0 && !step.continue_on_error && job_exit == 0 {
            job_exit = step_exit;
        }
        // Only the first step's shell was started ahead.
        drop(standby.take());
    }
    drop(standby);
    let _ = std::fs::remove_dir_all(&scripts);
    if sink.is_cancelled() && job_exit == 0 {
        job_exit = CANCELLED_EXIT_CODE;
    }
    Ok(job_exit)
}

/// A private directory for the job's step scripts.
pub(crate) fn script_dir() -> Result<PathBuf, GuestError> {
    static JOBS: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nimbus-steps-{}-{}",
        std::process::id(),
        JOBS.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).map_err(GuestError::io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

pub(crate) fn default_workspace(job: &GuestJob) -> PathBuf {
    if let Some(dir) = &job.working_directory {
        return PathBuf::from(dir);
    }
    // The per-job scratch disk when the VM has one, else a temporary directory.
    let scratch = Path::new("/scratch");
    if scratch.is_dir() {
        scratch.join("workspace")
    } else {
        std::env::temp_dir().join("nimbus-workspace")
    }
}

fn runner_step(jit_config: &str, runner_dir: &str) -> GuestStep {
    let mut env = BTreeMap::new();
    env.insert("NIMBUS_JIT_CONFIG".to_string(), jit_config.to_string());
    // The guest runs jobs as root inside a throwaway VM.
    env.insert("RUNNER_ALLOW_RUNASROOT".to_string(), "1".to_string());
    GuestStep {
        name: "GitHub Actions runner".to_string(),
        run: format!("exec {runner_dir}/run.sh --jitconfig \"$NIMBUS_JIT_CONFIG\""),
        shell: Some("sh".to_string()),
        env,
        working_directory: Some(runner_dir.to_string()),
        ..GuestStep::default()
    }
}

/// Where step `index`'s script is written.
pub(crate) fn step_script(scripts: &Path, index: usize) -> PathBuf {
    scripts.join(format!("step-{index}.sh"))
}

fn run_step(
    index: usize,
    step: &GuestStep,
    job: &GuestJob,
    workspace: &Path,
    scripts: &Path,
    standby: Option<StandbyShell>,
    sink: &JobSink,
) -> StepOutcome {
    let script = step_script(scripts, index);
    if let Err(e) = std::fs::write(&script, &step.run) {
        sink.line(
            index,
            Stream::Stderr,
            &format!("nimbus-guest: writing the step script: {e}"),
        );
        return StepOutcome::Exited(127);
    }
    let argv = shell_command(step.shell.as_deref(), &script);
    let working_directory = step
        .working_directory
        .as_ref()
        .map(|dir| workspace.join(dir))
        .unwrap_or_else(|| workspace.to_path_buf());
    let mut env = job.env.clone();
    env.extend(step.env.clone());
    let timeout = step.timeout_seconds.map(Duration::from_secs);
    let outcome = match standby.and_then(|shell| shell.take(&argv, &working_directory, &env)) {
        Some(child) => supervise(index, child, timeout, sink),
        None => {
            let env = default_env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain(env);
            spawn_step(index, &argv, &working_directory, env, timeout, sink)
        }
    };
    let _ = std::fs::remove_file(&script);
    outcome
}

/// Runs one step's process (`argv` in `working_directory`, with exactly `env`),
/// forwarding its output, until it exits or `timeout` passes.
pub(crate) fn spawn_step(
    index: usize,
    argv: &[String],
    working_directory: &Path,
    env: impl IntoIterator<Item = (String, String)>,
    timeout: Option<Duration>,
    sink: &JobSink,
) -> StepOutcome {
    let Some(program) = argv.first() else {
        sink.line(
            index,
            Stream::Stderr,
            "nimbus-guest: the step has no command",
        );
        return StepOutcome::Exited(127);
    };
    let child = match step_command(program, &argv[1..], working_directory, env).spawn() {
        Ok(child) => child,
        Err(e) => {
            sink.line(
                index,
                Stream::Stderr,
                &format!(
                    "nimbus-guest: cannot start `{}` in {}: {e}",
                    argv.join(" "),
                    working_directory.display()
                ),
            );
            return StepOutcome::Exited(127);
        }
    };
    supervise(index, StartedStep::new(child), timeout, sink)
}

/// A step's process: `program` with `args` in `working_directory` and exactly
/// `env`, no stdin, its output piped.
pub(crate) fn step_command<K, V>(
    program: &str,
    args: &[String],
    working_directory: &Path,
    env: impl IntoIterator<Item = (K, V)>,
) -> Command
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(working_directory)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so a timeout or cancel kills the whole step.
        command.process_group(0);
    }
    command
}

/// A step's process with the threads that will forward its output.
pub(crate) struct StartedStep {
    child: Child,
    output: [Option<Forwarder>; 2],
    /// For a shell started ahead: the gate it waits at, opened by [`supervise`].
    gate: Option<PathBuf>,
}

impl StartedStep {
    /// Takes `child`'s stdout and stderr pipes and starts their readers, which
    /// wait for [`supervise`] to name the step.
    pub(crate) fn new(mut child: Child) -> Self {
        let output = [
            child
                .stdout
                .take()
                .map(|out| Forwarder::spawn(out, Stream::Stdout)),
            child
                .stderr
                .take()
                .map(|err| Forwarder::spawn(err, Stream::Stderr)),
        ];
        StartedStep {
            child,
            output,
            gate: None,
        }
    }

    /// The same step, its process waiting at `gate` until [`supervise`] opens it.
    pub(crate) fn waiting_at(self, gate: PathBuf) -> Self {
        StartedStep {
            gate: Some(gate),
            ..self
        }
    }

    pub(crate) fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// Forwards a started step's output and waits for it to exit or time out.
pub(crate) fn supervise(
    index: usize,
    step: StartedStep,
    timeout: Option<Duration>,
    sink: &JobSink,
) -> StepOutcome {
    let StartedStep {
        mut child,
        output,
        gate,
    } = step;
    if let Ok(mut running) = sink.running.lock() {
        *running = Some(child.id());
    }
    if sink.is_cancelled() {
        kill_group(child.id());
    }
    let readers = output.map(|forwarder| forwarder.map(|f| f.start(index, sink)));
    // Last: from here the step's shell runs alone (under TCG every switch between
    // processes costs).
    if let Some(gate) = gate {
        if !super::standby::open_gate(&gate, &mut child) && !sink.is_cancelled() {
            sink.line(
                index,
                Stream::Stderr,
                "nimbus-guest: the shell started ahead for this step was gone",
            );
        }
    }
    let outcome = wait_with_timeout(&mut child, timeout);
    if let Ok(mut running) = sink.running.lock() {
        *running = None;
    }
    let deadline = Instant::now() + PIPE_DRAIN_GRACE;
    for done in readers.into_iter().flatten() {
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
    outcome
}

/// GitHub's shell keywords, or a custom template with `{0}` for the script.
pub(crate) fn shell_command(shell: Option<&str>, script: &Path) -> Vec<String> {
    let script = script.display().to_string();
    // Quotes group words as in a shell (`bash -c "… {0} …"`); unbalanced quotes
    // fall back to plain whitespace splitting.
    let words = |template: &str| -> Vec<String> {
        shlex::split(template)
            .unwrap_or_else(|| template.split_whitespace().map(str::to_string).collect())
            .into_iter()
            .map(|word| word.replace("{0}", &script))
            .collect()
    };
    match shell.map(str::trim) {
        None | Some("") => {
            if Path::new("/bin/bash").exists() || Path::new("/usr/bin/bash").exists() {
                words("bash --noprofile --norc -eo pipefail {0}")
            } else {
                words("sh -e {0}")
            }
        }
        Some("bash") => words("bash --noprofile --norc -eo pipefail {0}"),
        Some("sh") => words("sh -e {0}"),
        Some("python") => words("python3 {0}"),
        Some(custom) if custom.contains("{0}") => words(custom),
        Some(custom) => {
            let mut argv = words(custom);
            argv.push(script);
            argv
        }
    }
}

pub(crate) fn default_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CI", "true"),
        ("NIMBUS", "true"),
        ("HOME", "/root"),
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("LANG", "C.UTF-8"),
    ]
}

/// Reads lines off one of a step's pipes, in a thread started before it is known
/// which step and job the lines belong to (a shell started ahead has its pipes early).
struct Forwarder {
    start: mpsc::Sender<(usize, JobSink)>,
    done: mpsc::Receiver<()>,
}

impl Forwarder {
    /// Starts the thread reading `pipe`. It reads at once and learns its step
    /// (from [`Forwarder::start`]) only when the first line is in: telling it
    /// then costs no wake-up, which under TCG is time off the first line.
    fn spawn(pipe: impl Read + Send + 'static, stream: Stream) -> Self {
        let (start, started) = mpsc::channel::<(usize, JobSink)>();
        let (done, finished) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buffer = Vec::new();
            let mut step: Option<(usize, JobSink)> = None;
            loop {
                buffer.clear();
                match reader.read_until(b'\n', &mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let (index, sink) = match &step {
                            Some(told) => told,
                            None => match started.recv() {
                                Ok(told) => step.insert(told),
                                // Never started: its process was killed unused.
                                Err(_) => return,
                            },
                        };
                        let text = String::from_utf8_lossy(&buffer);
                        sink.line(*index, stream, text.trim_end_matches(['\n', '\r']));
                    }
                }
            }
            let _ = done.send(());
        });
        Forwarder {
            start,
            done: finished,
        }
    }

    /// Lines go to `sink` as step `step`'s; the receiver fires when the pipe closes.
    fn start(self, step: usize, sink: &JobSink) -> mpsc::Receiver<()> {
        let _ = self.start.send((step, sink.clone()));
        self.done
    }
}

/// Waits for `child` to exit; once `timeout` passed, kills its process group.
fn wait_with_timeout(child: &mut Child, timeout: Option<Duration>) -> StepOutcome {
    let started = Instant::now();
    #[cfg(target_os = "linux")]
    if let Some(outcome) = wait_on_pidfd(child, started, timeout) {
        return outcome;
    }
    poll_until_exit(child, started, timeout)
}

/// Sleeps in poll(2) on the child's pidfd until it exits or the timeout passes:
/// no wake-ups while the step runs, where asking every millisecond would take
/// the guest's only vCPU from the step's first line (and under TCG every switch
/// between processes costs). `None` where the kernel has no pidfds (before 5.3).
#[cfg(target_os = "linux")]
fn wait_on_pidfd(
    child: &mut Child,
    started: Instant,
    timeout: Option<Duration>,
) -> Option<StepOutcome> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};

    // The child is not reaped yet, so its pid is still its own.
    let pidfd = pidfd_open(Pid::from_child(child), PidfdFlags::empty()).ok()?;
    loop {
        let left = timeout.map(|limit| limit.saturating_sub(started.elapsed()));
        let wait = left.map(|left| {
            Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match poll(&mut fds, wait.as_ref()) {
            Ok(0) if timeout.is_some_and(|limit| started.elapsed() >= limit) => {
                return Some(time_out(child))
            }
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {
                return Some(match child.wait() {
                    Ok(status) => StepOutcome::Exited(exit_code(status)),
                    Err(_) => StepOutcome::Exited(127),
                })
            }
            Err(_) => return None,
        }
    }
}

/// [`wait_with_timeout`] where there are no pidfds: asks every millisecond, then
/// (after 50 ms) every 20.
fn poll_until_exit(child: &mut Child, started: Instant, timeout: Option<Duration>) -> StepOutcome {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return StepOutcome::Exited(exit_code(status)),
            Ok(None) => {}
            Err(_) => return StepOutcome::Exited(127),
        }
        if timeout.is_some_and(|limit| started.elapsed() >= limit) {
            return time_out(child);
        }
        let elapsed = started.elapsed();
        thread::sleep(if elapsed < Duration::from_millis(50) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(20)
        });
    }
}

fn time_out(child: &mut Child) -> StepOutcome {
    kill_group(child.id());
    let _ = child.wait();
    StepOutcome::TimedOut
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    status.code().unwrap_or(1)
}

pub(crate) fn kill_group(pgid: u32) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job: GuestJob) -> (i32, Vec<GuestMessage>) {
        let (sender, receiver) = mpsc::channel();
        let sink = JobSink::new(sender);
        let code = run_job(&job, &sink, None).expect("runs");
        drop(sink);
        (code, receiver.iter().collect())
    }

    fn temp_workspace(job: &mut GuestJob) {
        let dir = std::env::temp_dir().join(format!("nimbus-guest-test-{}", uuid_like()));
        job.working_directory = Some(dir.display().to_string());
    }

    fn uuid_like() -> String {
        format!(
            "{}-{:?}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        )
    }

    fn outcomes(messages: &[GuestMessage]) -> Vec<StepOutcome> {
        messages
            .iter()
            .filter_map(|m| match m {
                GuestMessage::StepFinished { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect()
    }

    fn lines(messages: &[GuestMessage]) -> Vec<(u64, String)> {
        messages
            .iter()
            .filter_map(|m| match m {
                GuestMessage::Output(line) => Some((line.seq, line.line.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn steps_follow_github_conditions() {
        let mut job = GuestJob::from_commands(&["echo one", "exit 3", "echo skipped"]);
        job.steps.push(GuestStep {
            condition: StepCondition::Failure,
            ..GuestStep::shell("echo on-failure")
        });
        job.steps.push(GuestStep {
            condition: StepCondition::Always,
            ..GuestStep::shell("echo always >&2")
        });
        temp_workspace(&mut job);
        let (code, messages) = run(job);
        assert_eq!(code, 3);
        assert_eq!(
            outcomes(&messages),
            vec![
                StepOutcome::Exited(0),
                StepOutcome::Exited(3),
                StepOutcome::Skipped,
                StepOutcome::Exited(0),
                StepOutcome::Exited(0)
            ]
        );
        let lines = lines(&messages);
        let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(texts, vec!["one", "on-failure", "always"]);
        let seqs: Vec<u64> = lines.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[test]
    fn env_working_directory_and_continue_on_error() {
        let mut job = GuestJob::from_commands(&["false"]);
        job.steps[0].continue_on_error = true;
        job.env.insert("GREETING".into(), "job".into());
        let mut step = GuestStep::shell(
            "mkdir -p sub && cd sub && echo \"$GREETING $STEP_ONLY $(basename $PWD)\"",
        );
        step.env.insert("STEP_ONLY".into(), "step".into());
        job.steps.push(step);
        temp_workspace(&mut job);
        let (code, messages) = run(job);
        assert_eq!(code, 0);
        let texts: Vec<String> = lines(&messages).into_iter().map(|(_, l)| l).collect();
        assert_eq!(texts, vec!["job step sub".to_string()]);
    }

    #[test]
    fn a_step_timeout_kills_the_whole_process_group() {
        let mut job = GuestJob::from_commands(&["sleep 30 & sleep 30; echo never"]);
        job.steps[0].timeout_seconds = Some(1);
        temp_workspace(&mut job);
        let started = Instant::now();
        let (code, messages) = run(job);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(code, TIMED_OUT_EXIT_CODE);
        assert_eq!(outcomes(&messages), vec![StepOutcome::TimedOut]);
    }

    #[test]
    fn a_missing_shell_is_a_failed_step_with_a_message() {
        let mut job = GuestJob::from_commands(&["true"]);
        job.steps[0].shell = Some("/nonexistent/shell {0}".into());
        temp_workspace(&mut job);
        let (code, messages) = run(job);
        assert_eq!(code, 127);
        assert!(lines(&messages)[0].1.contains("cannot start"));
    }

    #[test]
    fn shells_map_like_github() {
        let script = Path::new("/tmp/s.sh");
        assert_eq!(shell_command(Some("sh"), script), ["sh", "-e", "/tmp/s.sh"]);
        assert_eq!(
            shell_command(Some("python"), script),
            ["python3", "/tmp/s.sh"]
        );
        assert_eq!(
            shell_command(Some("perl {0} --x"), script),
            ["perl", "/tmp/s.sh", "--x"]
        );
        assert_eq!(shell_command(Some("zsh"), script), ["zsh", "/tmp/s.sh"]);
    }
}
