//! The first step's shell, started while the VM waits in a warm pool.
//!
//! Under TCG most of a warm VM's time to its job's first line is bash starting:
//! the exec, the dynamic loader's page faults and relocations, bash's own start-up
//! (tens of milliseconds, where the rest of the path takes a few). So a VM primed
//! for a warm pool starts `bash --noprofile --norc -eo pipefail SCRIPT` ahead. Its
//! `BASH_ENV` ([`WARM_UP`]) runs the code paths steps use once (under TCG first runs
//! pay for translating the code), then waits at a gate, a FIFO that opening blocks
//! on. When the job comes, the guest writes the step's script and a file with the
//! step's working directory and environment, then opens the gate; bash sources the
//! file and, as `BASH_ENV` comes before the script, runs the script as a shell
//! started for it would: line numbers, `$0`, `$_`, `$PWD`, `$OLDPWD`, `$SECONDS`,
//! variables, functions and the exported environment alike (the unit tests compare
//! the two).
//!
//! Only a step that a fresh bash would run the same way is handed over: the default
//! (or `bash`) shell, an absolute working directory that exists, and environment
//! names that bash does not read at start-up or treat specially. Any other step,
//! and any job that is not plain steps, gets a freshly started process; the
//! shell started ahead is killed. Never started before a snapshot: every VM
//! restored from it would share the one shell's `$RANDOM` seed and `$HOSTNAME`.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::run::{
    default_env, kill_group, script_dir, shell_command, step_command, step_script, StartedStep,
};
use super::GuestError;

/// The FIFO the shell waits on (opening it blocks until the job's step opens it
/// for writing), in the job's script directory.
const GATE_FIFO: &str = "standby-gate";
/// The step's directory and environment, written before the gate opens.
const ENV_FILE: &str = "standby-env.sh";
/// The shell's `BASH_ENV`, beside the gate: [`WARM_UP`] with the paths filled in.
const WARM_UP_FILE: &str = "standby-warm-up.sh";
/// A prelude like the step's, which the warm-up sources.
const SAMPLE_ENV_FILE: &str = "standby-warm-up-env.sh";
/// What the shell runs before it waits at the gate (`{gate}`, quoted), then
/// sources the step's environment (`{env}`). Under TCG the first run of any code
/// pays for its translation, and bash's code is mapped at an address of its own in
/// every process, so only this process's own run helps: exercising the common
/// paths here (builtins, expansions, a function, a pipeline of external commands,
/// a prelude like the step's, `{sample}`) brought a warm QEMU VM's first line from
/// ~50 to ~25 ms here. Its output is discarded and it cannot stop the shell
/// (`|| :` under `-e`); it leaves nothing a script can see: no variable, function,
/// hashed command or directory change, and `$_` as bash set it at start-up.
const WARM_UP: &str = r#"__nimbus_underscore=$_
__nimbus_warm_up() {
  local count=0 text="warm up" word
  for word in $text; do count=$((count + 1)); done
  if [ -n "$text" ] && [[ $count -eq 2 ]]; then echo "$text ${#text} $count"; fi
  printf '%s\n' "$text" "$(echo substituted)"
  case $text in warm*) : ;; esac
  /bin/true | /bin/cat
}
{ __nimbus_warm_up; . {sample}; unset __NIMBUS_WARM_UP; } >/dev/null 2>&1 || :
unset -f __nimbus_warm_up
: <{gate}
. {env}
__nimbus_restore() { unset -v __nimbus_underscore; unset -f __nimbus_restore; }
__nimbus_restore "$__nimbus_underscore"
"#;
/// How long priming waits for bash to reach the gate (a second under TCG), and
/// the step for a shell not there yet.
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
        let child = spawn_waiting(&argv, &scripts.join(GATE_FIFO));
        let child = child.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&scripts);
        })?;
        // The VM is ready only once bash is: a job handed over sooner waits for it.
        wait_until_at_gate(child.id(), STARTUP_WAIT);
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
        // The environment first; supervise() opens the gate once it is ready.
        let handed = alive
            && prelude(working_directory, env).is_some_and(|prelude| {
                std::fs::write(self.scripts.join(ENV_FILE), prelude).is_ok()
            });
        if handed {
            Some(shell.waiting_at(self.scripts.join(GATE_FIFO)))
        } else {
            self.shell = Some(shell);
            None
        }
    }
}

impl Drop for StandbyShell {
    fn drop(&mut self) {
        let unused = self.shell.take().map(|mut shell| {
            let child = shell.child();
            // Not once reaped: its pid, the group's id, may belong to another by now.
            if matches!(child.try_wait(), Ok(None)) {
                kill_group(child.id());
                let _ = child.wait();
            }
        });
        if self.owns_scripts {
            let _ = std::fs::remove_dir_all(&self.scripts);
        } else if unused.is_some() {
            for name in [GATE_FIFO, ENV_FILE, WARM_UP_FILE, SAMPLE_ENV_FILE] {
                let _ = std::fs::remove_file(self.scripts.join(name));
            }
        }
        // Handed over, the shell has yet to open the gate and read its files: they
        // go with the job's script directory.
    }
}

/// Runs a throwaway one-step job through a shell started ahead, its messages
/// encoded and dropped: the agent's and the kernel's side of a job's start (the
/// kernel's code, and this process's, keep their addresses) is then translated
/// before the real job comes. Leaves nothing: its shell exits, its scripts go.
pub fn rehearse() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let sink = super::JobSink::new(sender);
    let job = crate::protocol::GuestJob::from_commands(&["echo rehearsal"]);
    let _ = super::run_job(&job, &sink, StandbyShell::start().ok());
    drop(sink);
    for message in receiver.try_iter() {
        let _ = crate::protocol::encode(&message);
    }
}

/// Starts `argv` (bash) with [`WARM_UP`] as its `BASH_ENV`, waiting at a new FIFO
/// at `gate`.
fn spawn_waiting(argv: &[String], gate: &Path) -> Result<Child, GuestError> {
    let Some(("bash", args)) = argv.split_first().map(|(p, a)| (p.as_str(), a)) else {
        return Err(GuestError::Sandbox("no bash to start ahead".into()));
    };
    nix::unistd::mkfifo(gate, nix::sys::stat::Mode::S_IRWXU)
        .map_err(|e| GuestError::Sandbox(format!("creating {}: {e}", gate.display())))?;
    let quoted = |name: &str| single_quoted(&gate.with_file_name(name).to_string_lossy());
    let sample = prelude(
        Path::new("/"),
        &BTreeMap::from([("__NIMBUS_WARM_UP".to_string(), "1".to_string())]),
    )
    .unwrap_or_default();
    let script = WARM_UP
        .replace("{sample}", &quoted(SAMPLE_ENV_FILE))
        .replace("{gate}", &quoted(GATE_FIFO))
        .replace("{env}", &quoted(ENV_FILE));
    for (name, text) in [(SAMPLE_ENV_FILE, sample), (WARM_UP_FILE, script)] {
        let path = gate.with_file_name(name);
        std::fs::write(&path, text)
            .map_err(GuestError::io(format!("writing {}", path.display())))?;
    }
    let warm_up = gate.with_file_name(WARM_UP_FILE);
    step_command("bash", args, Path::new("/"), default_env())
        .env("BASH_ENV", &warm_up)
        .spawn()
        .map_err(GuestError::io("starting bash ahead"))
}

/// Waits until process `pid` waits at the gate, at most `limit`: asleep in a FIFO's
/// open (`wait_for_partner`, where `/proc/PID/wchan` names it), else inside
/// `openat`. At once where neither can be read. Only a matter of time: a job
/// that comes sooner waits for the shell at the gate ([`open_gate`]).
fn wait_until_at_gate(pid: u32, limit: Duration) {
    let openat = libc::SYS_openat.to_string();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok();
        if wchan.as_deref() == Some("wait_for_partner") {
            return;
        }
        // "0": no symbol for where it sleeps, or not asleep.
        if wchan.is_none() || wchan.as_deref() == Some("0") {
            let Ok(syscall) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else {
                return;
            };
            if syscall.split_whitespace().next() == Some(openat.as_str()) {
                return;
            }
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

/// Opens the gate `shell` waits at: opening a FIFO for writing without blocking
/// lets its reader's open return, and fails while there is no reader. A shell
/// still on its way (its readiness is only sampled) is waited for, one that
/// exited is not.
pub(crate) fn open_gate(gate: &Path, shell: &mut Child) -> bool {
    let deadline = Instant::now() + STARTUP_WAIT;
    loop {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(gate);
        match opened {
            Ok(_) => return true,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if !matches!(shell.try_wait(), Ok(None)) || Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::guest::{run_job, JobSink};
    use crate::protocol::{GuestJob, GuestMessage};

    /// What a step can see of how its shell started.
    const INTROSPECT: &str = r#"last_argument=$_ status=$?
echo "pid $$"
echo "line $LINENO of $(basename "$0") in $PWD after $SECONDS s; options $-; level $SHLVL"
echo "\$_ $last_argument, \$? $status"
declare -p OLDPWD
echo "variables: $(compgen -v | tr '\n' ' ')"
echo "functions: $(compgen -A function | tr '\n' ' ')"
hash 2>&1
dirs
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
                "line 3 of step-0.sh in {}/sub after 0 s",
                dir.display()
            )),
            "{fresh:?}"
        );
        assert!(fresh.contains(&"STEP_ONLY=step".to_string()), "{fresh:?}");
        assert!(fresh.contains(&"$_ bash, $? 0".to_string()), "{fresh:?}");
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
            let fifo = standby.scripts.join(GATE_FIFO);
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
    fn the_gate_waits_for_a_shell_on_its_way_but_not_for_one_that_exited() {
        let dir = workspace("gate");
        let gate = dir.join(GATE_FIFO);
        nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let late = format!("sleep 0.3; exec 3<'{}'", gate.display());
        let mut shell = std::process::Command::new("sh")
            .args(["-c", &late])
            .spawn()
            .expect("sh");
        assert!(open_gate(&gate, &mut shell), "waited for the late reader");
        let _ = shell.wait();
        let mut gone = std::process::Command::new("true").spawn().expect("true");
        let _ = gone.wait();
        let started = Instant::now();
        assert!(!open_gate(&gate, &mut gone));
        assert!(started.elapsed() < Duration::from_secs(1));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn quoting_survives_quotes_and_newlines() {
        assert_eq!(single_quoted("it's"), r"'it'\''s'");
    }
}
