//! The first step's shell, started while the VM waits in a warm pool.
//!
//! Under TCG most of a warm VM's time to its job's first line is bash starting:
//! the exec, the dynamic loader's page faults and relocations, bash's own start-up
//! (tens of milliseconds, where the rest of the path takes a few). So a VM primed
//! for a warm pool starts `bash --noprofile --norc -eo pipefail SCRIPT` ahead, with
//! `BASH_ENV` naming a FIFO: bash blocks opening it once the costly part is done.
//! When the job comes, the guest writes the step's script, then the step's working
//! directory and environment into the FIFO; bash reads `BASH_ENV` before it opens its
//! script, so the script then runs as in a shell started for it, line numbers,
//! `$0`, `$PWD`, `$OLDPWD`, `$SECONDS` and the exported environment included
//! (the unit tests compare the two).
//!
//! Only a step that a fresh bash would run the same way is handed over: the default
//! (or `bash`) shell, an absolute working directory that exists, and environment
//! names that bash does not read at start-up or treat specially. Any other step,
//! and any job that is not plain steps, gets a freshly started process; the
//! shell started ahead is killed. Never started before a snapshot: every VM
//! restored from it would share the one shell's `$RANDOM` seed and `$HOSTNAME`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::run::{
    default_env, kill_group, script_dir, shell_command, step_command, step_script, StartedStep,
};
use super::GuestError;

/// The FIFO bash reads as `BASH_ENV`, in the job's script directory.
const ENV_FIFO: &str = "standby-env";
/// How long priming waits for bash to reach the FIFO (tens of ms under TCG).
const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// A bash started ahead for the job's first step, blocked until [`StandbyShell::take`].
pub struct StandbyShell {
    /// With its output's readers started too (thread starts cost under TCG).
    shell: Option<StartedStep>,
    /// The job's script directory; the shell runs `step_script(scripts, 0)`.
    scripts: PathBuf,
    /// Until the job takes the directory over ([`StandbyShell::share_scripts`]).
    owns_scripts: bool,
    argv: Vec<String>,
}

impl StandbyShell {
    /// Starts the shell; an error when the guest has no bash (jobs then start as usual).
    pub fn start() -> Result<StandbyShell, GuestError> {
        let scripts = script_dir()?;
        let argv = shell_command(None, &step_script(&scripts, 0));
        let child = spawn_waiting(&argv, &scripts.join(ENV_FIFO));
        let child = child.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&scripts);
        })?;
        // The VM is ready only once bash is: a job handed over sooner waits for it.
        wait_until_blocked_opening(child.id(), STARTUP_WAIT);
        Ok(StandbyShell {
            shell: Some(StartedStep::new(child)),
            scripts,
            owns_scripts: true,
            argv,
        })
    }

    /// The directory the job's step scripts go to (the shell's script is in it);
    /// the job removes it when done.
    pub(crate) fn share_scripts(&mut self) -> PathBuf {
        self.owns_scripts = false;
        self.scripts.clone()
    }

    /// Hands the first step to the shell: `argv` (the step's shell command), its
    /// working directory and its environment beyond [`default_env`], the script
    /// already written. `None` (the shell killed) when a fresh process must run it.
    pub(crate) fn take(
        mut self,
        argv: &[String],
        working_directory: &Path,
        env: &BTreeMap<String, String>,
    ) -> Option<StartedStep> {
        let runs_alike = argv == self.argv
            && working_directory.is_absolute()
            && working_directory.is_dir()
            && env.iter().all(|(name, value)| exportable(name, value));
        if !runs_alike {
            return None;
        }
        let mut shell = self.shell.take()?;
        let alive = matches!(shell.child().try_wait(), Ok(None));
        let handed = alive
            && prelude(working_directory, env)
                .is_some_and(|prelude| write_fifo(&self.scripts.join(ENV_FIFO), &prelude));
        if handed {
            Some(shell)
        } else {
            self.shell = Some(shell);
            None
        }
    }
}

impl Drop for StandbyShell {
    fn drop(&mut self) {
        if let Some(mut shell) = self.shell.take() {
            let child = shell.child();
            // Not once reaped: its pid, the group's id, may belong to another by now.
            if matches!(child.try_wait(), Ok(None)) {
                kill_group(child.id());
                let _ = child.wait();
            }
        }
        if self.owns_scripts {
            let _ = std::fs::remove_dir_all(&self.scripts);
        } else {
            let _ = std::fs::remove_file(self.scripts.join(ENV_FIFO));
        }
    }
}

/// Starts `argv` (bash) with a new FIFO at `fifo` as its `BASH_ENV`.
fn spawn_waiting(argv: &[String], fifo: &Path) -> Result<Child, GuestError> {
    let Some(("bash", args)) = argv.split_first().map(|(p, a)| (p.as_str(), a)) else {
        return Err(GuestError::Sandbox("no bash to start ahead".into()));
    };
    nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::S_IRWXU)
        .map_err(|e| GuestError::Sandbox(format!("creating {}: {e}", fifo.display())))?;
    step_command("bash", args, Path::new("/"), default_env())
        .env("BASH_ENV", fifo)
        .spawn()
        .map_err(GuestError::io("starting bash ahead"))
}

/// Waits until process `pid` sleeps in `openat` (bash opening the FIFO, which
/// blocks until the job's step writes it), at most `limit`; at once where
/// `/proc/PID/syscall` cannot be read.
fn wait_until_blocked_opening(pid: u32, limit: Duration) {
    let path = format!("/proc/{pid}/syscall");
    let openat = libc::SYS_openat.to_string();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        if text.split_whitespace().next() == Some(openat.as_str()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What bash sources before the script: the working directory, then the step's
/// environment, as a fresh `bash` started there with it would have them.
fn prelude(working_directory: &Path, env: &BTreeMap<String, String>) -> Option<String> {
    let mut prelude = String::from("unset BASH_ENV\n");
    let directory = working_directory.to_str()?;
    // -P: $PWD as a fresh bash computes it (the physical path); OLDPWD back to the
    // exported-but-unset variable bash starts with.
    prelude.push_str(&format!(
        "cd -P -- {} || exit 127\nunset OLDPWD; declare -x OLDPWD\n",
        single_quoted(directory)
    ));
    for (name, value) in env {
        prelude.push_str(&format!("export {name}={}\n", single_quoted(value)));
    }
    // $SECONDS counts from the step's start, not from the shell's.
    prelude.push_str("SECONDS=0\n");
    Some(prelude)
}

fn single_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Whether `export NAME=VALUE` after start-up equals NAME=VALUE in bash's initial
/// environment: a plain identifier bash neither reads at start-up (its options, its
/// start-up file) nor sets itself at start-up.
fn exportable(name: &str, value: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "_",
        "DIRSTACK",
        "ENV",
        "EPOCHREALTIME",
        "EPOCHSECONDS",
        "EUID",
        "FUNCNAME",
        "GROUPS",
        "HISTCMD",
        "IFS",
        "LINENO",
        "OLDPWD",
        "OPTERR",
        "OPTIND",
        "PIPESTATUS",
        "POSIXLY_CORRECT",
        "PPID",
        "PS4",
        "PWD",
        "RANDOM",
        "SECONDS",
        "SHELLOPTS",
        "SHLVL",
        "SRANDOM",
        "UID",
    ];
    let mut chars = name.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
    identifier && !name.starts_with("BASH") && !SPECIAL.contains(&name) && !value.contains('\0')
}

/// Writes `text` to the FIFO bash is blocked opening; false when no one reads it
/// (the shell is gone), rather than blocking.
fn write_fifo(fifo: &Path, text: &str) -> bool {
    let Ok(mut file) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
    else {
        return false;
    };
    // Blocking again: an environment larger than the pipe waits for bash to read.
    let blocking = nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    );
    blocking.is_ok() && file.write_all(text.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::guest::{run_job, JobSink};
    use crate::protocol::{GuestJob, GuestMessage};

    /// What a step can see of how its shell started.
    const INTROSPECT: &str = r#"echo "pid $$"
echo "line $LINENO of $(basename "$0") in $PWD after $SECONDS s; options $-; level $SHLVL"
declare -p OLDPWD
env | sort
shopt -po errexit pipefail
"#;

    fn job(workspace: &Path) -> GuestJob {
        let mut job = GuestJob::from_commands(&[INTROSPECT, "echo second step"]);
        job.working_directory = Some(workspace.display().to_string());
        job.env
            .insert("GREETING".into(), "it's a\nmulti-line 'value'\n".into());
        job.steps[0].env.insert("STEP_ONLY".into(), "step".into());
        job.steps[0].working_directory = Some("sub".into());
        job
    }

    /// The job's output lines, and its exit code.
    fn run(job: &GuestJob, standby: Option<StandbyShell>) -> (i32, Vec<String>) {
        let (sender, receiver) = mpsc::channel();
        let sink = JobSink::new(sender);
        let code = run_job(job, &sink, standby).expect("runs");
        drop(sink);
        let lines = receiver
            .iter()
            .filter_map(|message| match message {
                GuestMessage::Output(line) => Some(line.line),
                _ => None,
            })
            .collect();
        (code, lines)
    }

    fn workspace(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nimbus-standby-{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("workspace");
        dir
    }

    fn gone(pid: u32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_shell_started_ahead_runs_the_first_step_as_a_fresh_one_would() {
        let dir = workspace("alike");
        let job = job(&dir);
        let (fresh_code, mut fresh) = run(&job, None);

        let mut standby = StandbyShell::start().expect("bash starts");
        let pid = standby.shell.as_mut().expect("running").child().id();
        // Long enough for $SECONDS to count, had it not been reset.
        std::thread::sleep(Duration::from_millis(1100));
        let (code, mut ahead) = run(&job, Some(standby));

        assert_eq!(
            ahead[0],
            format!("pid {pid}"),
            "the shell started ahead ran it"
        );
        assert_ne!(fresh[0], ahead[0]);
        fresh.remove(0);
        ahead.remove(0);
        assert_eq!((code, &ahead), (fresh_code, &fresh));
        assert!(
            fresh[0].starts_with(&format!(
                "line 2 of step-0.sh in {}/sub after 0 s",
                dir.display()
            )),
            "{fresh:?}"
        );
        assert!(fresh.contains(&"STEP_ONLY=step".to_string()), "{fresh:?}");
        assert_eq!(fresh.last().map(String::as_str), Some("second step"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_step_it_cannot_run_alike_gets_a_fresh_shell_and_the_one_ahead_is_killed() {
        let dir = workspace("unlike");
        type Change = fn(&mut GuestJob);
        let cases: [(&str, Change); 3] = [
            ("sh", |job| job.steps[0].shell = Some("sh".into())),
            ("bash's own variable", |job| {
                job.steps[0].env.insert("SHELLOPTS".into(), "xtrace".into());
            }),
            ("a missing directory", |job| {
                job.steps[0].working_directory = Some("missing".into())
            }),
        ];
        for (case, change) in cases {
            let mut job = GuestJob::from_commands(&["echo \"pid $$\""]);
            job.working_directory = Some(dir.display().to_string());
            change(&mut job);
            let mut standby = StandbyShell::start().expect("bash starts");
            let pid = standby.shell.as_mut().expect("running").child().id();
            let fifo = standby.scripts.join(ENV_FIFO);
            let (_, lines) = run(&job, Some(standby));
            assert_ne!(
                lines.first(),
                Some(&format!("pid {pid}")),
                "{case}: {lines:?}"
            );
            assert!(gone(pid), "{case}: the shell started ahead is gone");
            assert!(!fifo.exists(), "{case}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_started_shell_waits_on_the_fifo_and_unused_is_killed_with_it() {
        let mut standby = StandbyShell::start().expect("bash starts");
        let pid = standby.shell.as_mut().expect("running").child().id();
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).expect("readable");
        assert_eq!(
            syscall.split_whitespace().next(),
            Some(libc::SYS_openat.to_string().as_str()),
            "started means waiting on the FIFO: {syscall}"
        );
        let scripts = standby.scripts.clone();
        drop(standby);
        assert!(gone(pid));
        assert!(!scripts.exists());
    }

    #[test]
    fn only_names_bash_takes_from_its_environment_alone_are_exported() {
        assert!(exportable("GREETING", "hello 'world'\nline two"));
        assert!(exportable("_private1", ""));
        for name in [
            "BASH_ENV",
            "BASHOPTS",
            "SHELLOPTS",
            "IFS",
            "SHLVL",
            "1ABC",
            "A-B",
            "",
            "_",
        ] {
            assert!(!exportable(name, "x"), "{name}");
        }
        assert!(!exportable("NUL", "a\0b"));
    }

    #[test]
    fn quoting_survives_quotes_and_newlines() {
        assert_eq!(single_quoted("it's"), r"'it'\''s'");
    }
}
