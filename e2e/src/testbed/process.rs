//! The test bed's processes: started detached (own process group, logs in a file) so that they
//! outlive `testbed up`, and stopped by the pids recorded in the state file.

use std::{
    fs::{self, File},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// A process the test bed started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: i32,
    pub log: PathBuf,
    /// Its start time in clock ticks since boot, which tells a recorded pid that is still ours
    /// from a reused one.
    pub start_ticks: u64,
}

/// Starts `program` detached from our process group, stdout and stderr to `log`.
pub fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<ProcessRecord> {
    spawn_with_env(name, program, args, &[], log)
}

/// Like [`spawn`], with environment variables `env` set on top of ours.
pub fn spawn_with_env(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> anyhow::Result<ProcessRecord> {
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    spawn_to(name, program, args, env, log, out)
}

/// Like [`spawn`], appending to `log` (a restarted process keeps its earlier lines).
pub fn spawn_appending(
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<ProcessRecord> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    spawn_to(name, program, args, &[], log, out)
}

fn spawn_to(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
    out: File,
) -> anyhow::Result<ProcessRecord> {
    let err = out.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {name} ({})", program.display()))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let start_ticks = start_ticks(pid).with_context(|| format!("{name} vanished as it started"))?;
    Ok(ProcessRecord {
        name: name.to_string(),
        pid,
        log: log.to_path_buf(),
        start_ticks,
    })
}

impl ProcessRecord {
    /// The program and arguments it was started with (from `/proc/<pid>/cmdline`), while it
    /// runs.
    pub fn command_line(&self) -> Option<(PathBuf, Vec<String>)> {
        if !self.is_running() {
            return None;
        }
        let raw = fs::read(format!("/proc/{}/cmdline", self.pid)).ok()?;
        let mut parts = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned());
        let program = PathBuf::from(parts.next()?);
        let mut args: Vec<String> = parts.collect();
        // The command line ends with a NUL: the last split is empty.
        if args.last().is_some_and(String::is_empty) {
            args.pop();
        }
        Some((program, args))
    }

    /// True while the process runs and is the one we started. A child of ours that has
    /// ended is reaped here, after it is seen ended: reaping first and looking second leaves
    /// a zombie behind whenever the process ends in between.
    pub fn is_running(&self) -> bool {
        match stat(self.pid) {
            Some((_, start)) if start != self.start_ticks => false,
            Some(('Z', _)) => {
                reap(self.pid);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The last `lines` lines of its log, to explain a failure.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Sends SIGTERM to every running process, waits up to `grace`, then SIGKILLs what is left.
pub fn stop_all(processes: &[ProcessRecord], grace: Duration) {
    let running: Vec<&ProcessRecord> = processes.iter().filter(|p| p.is_running()).collect();
    for p in &running {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && running.iter().any(|p| p.is_running()) {
        thread::sleep(Duration::from_millis(100));
    }
    let killed: Vec<&&ProcessRecord> = running.iter().filter(|p| p.is_running()).collect();
    for p in &killed {
        tracing::warn!(name = %p.name, pid = p.pid, "did not stop on SIGTERM; killing");
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    // A killed child stays a zombie until reaped, and a loaded machine takes a while to kill
    // it: wait (is_running reaps) rather than reap once and leave a zombie behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && killed.iter().any(|p| p.is_running()) {
        thread::sleep(Duration::from_millis(20));
    }
}

/// The programs a test bed runs.
const OUR_PROGRAMS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "workflow-controller",
    "workflow-controller4",
    "kubelet",
    "artifact-store",
    "containerd",
    "containerd-shim-runc-v2",
    "testbed-gateway",
];

/// Every running test bed program whose arguments name a path inside `dir` (the test bed's
/// state directory, which may be gone already). Other processes that mention the directory
/// (shells, make) are never ours.
pub fn started_in(dir: &Path) -> Vec<ProcessRecord> {
    let Ok(dir) = dir.canonicalize().or_else(|_| std::path::absolute(dir)) else {
        return Vec::new();
    };
    let needle = dir.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let mut args = cmdline.split(' ');
            let program = Path::new(args.next()?).file_name()?.to_str()?.to_string();
            let ours = OUR_PROGRAMS.contains(&program.as_str())
                && args.any(|arg| arg.contains(&format!("{needle}/")));
            let (_, start_ticks) = stat(pid)?;
            ours.then(|| ProcessRecord {
                name: program,
                pid,
                log: PathBuf::new(),
                start_ticks,
            })
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie (a zombie holds nothing but its pid, and only its
/// parent can reap it).
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Start time of a process in clock ticks since boot, which tells a recorded pid from a
/// reused one.
pub fn start_ticks(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// State letter and start time (clock ticks since boot) of a process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces: fields are counted after it.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 of stat is starttime; `rest` starts at field 3.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

/// Collects the exit status of a child of ours so it does not linger as a zombie; a no-op for
/// processes that are not our children.
fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test's processes and log, stopped and removed even when an assertion fails.
    struct Started {
        log: PathBuf,
        processes: Vec<ProcessRecord>,
    }

    impl Started {
        fn new(test: &str) -> Self {
            let log = std::env::temp_dir()
                .join(format!("testbed-process-{test}-{}.log", std::process::id()));
            Self {
                log,
                processes: Vec::new(),
            }
        }

        fn spawn(&mut self, program: &str, args: &[&str]) -> anyhow::Result<ProcessRecord> {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let record = spawn(program, Path::new(program), &args, &self.log)?;
            self.processes.push(record.clone());
            Ok(record)
        }
    }

    impl Drop for Started {
        fn drop(&mut self) {
            stop_all(&self.processes, Duration::ZERO);
            let _ = fs::remove_file(&self.log);
        }
    }

    fn gone(pid: i32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Waits up to 10 s for `done`; panics saying what never happened.
    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_child_seen_ended_is_reaped_not_left_a_zombie() -> anyhow::Result<()> {
        let mut started = Started::new("ended");
        let child = started.spawn("/bin/sh", &["-c", "exit 3"])?;
        until("`sh -c 'exit 3'` never ended", || !child.is_running());
        assert!(gone(child.pid), "pid {} left behind as a zombie", child.pid);
        Ok(())
    }

    #[test]
    fn stop_all_leaves_no_process_and_no_zombie() -> anyhow::Result<()> {
        let mut started = Started::new("stop-all");
        // One that ends on SIGTERM and one that only SIGKILL ends (an ignored signal stays
        // ignored across exec).
        let polite = started.spawn("/bin/sleep", &["60"])?;
        let stubborn = started.spawn("/bin/sh", &["-c", "trap '' TERM; exec sleep 60"])?;
        until("the stubborn shell never ran sleep", || {
            stubborn
                .command_line()
                .is_some_and(|(program, _)| program.ends_with("sleep"))
        });
        let stopping = Instant::now();
        stop_all(
            &[polite.clone(), stubborn.clone()],
            Duration::from_millis(300),
        );
        assert!(
            stopping.elapsed() >= Duration::from_millis(300),
            "the stubborn one ignores SIGTERM: stop_all waited out its grace"
        );
        for p in [&polite, &stubborn] {
            assert!(!p.is_running(), "{} (pid {}) still runs", p.name, p.pid);
            assert!(gone(p.pid), "{} (pid {}) left as a zombie", p.name, p.pid);
        }
        Ok(())
    }
}
