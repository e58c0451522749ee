//! Process-level tests: the real binary, real signals, real sockets, real files. Set
//! `PROXY_WAITER_BIN` to test another build of it (`make test` runs them against the shipped
//! static binary too).

use std::{
    fs,
    io::{Read, Write},
    os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

fn binary() -> PathBuf {
    std::env::var_os("PROXY_WAITER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_proxy-waiter")))
}

const RESULT_KEY: &str = "multicluster.admiralty.io/result";

fn result(containers: &[(&str, i32, &str)]) -> String {
    let phase = if containers.iter().all(|c| c.1 == 0) {
        "Succeeded"
    } else {
        "Failed"
    };
    let entries: Vec<String> = containers
        .iter()
        .map(|(name, code, message)| {
            format!(r#""{name}":{{"exitCode":{code},"message":{message:?}}}"#)
        })
        .collect();
    format!(
        r#"{{"v":1,"phase":"{phase}","containers":{{{}}}}}"#,
        entries.join(",")
    )
}

/// A scratch directory and socket name unique to one test.
struct Scene {
    dir: PathBuf,
    socket: String,
}

impl Scene {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("proxy-waiter-test-{id}"));
        fs::create_dir_all(dir.join("podinfo")).unwrap();
        Self {
            dir,
            socket: format!("proxy-waiter-test/{id}"),
        }
    }

    fn command(&self, container: &str) -> Command {
        let mut command = Command::new(binary());
        command
            .env("PROXY_WAITER_CONTAINER", container)
            .env(
                "PROXY_WAITER_SOCKET",
                format!("{}/{container}", self.socket),
            )
            .env(
                "PROXY_WAITER_ANNOTATIONS",
                self.dir.join("podinfo/annotations"),
            )
            .env(
                "PROXY_WAITER_TERMINATION_LOG",
                self.termination_log(container),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn termination_log(&self, container: &str) -> PathBuf {
        self.dir.join(format!("termination-log-{container}"))
    }

    fn wait(&self, container: &str) -> Waiter {
        let child = self.command(container).spawn().unwrap();
        Waiter { child: Some(child) }
    }

    /// Waits until the waiter of `container` listens (so tests do not race its start-up).
    fn wait_ready(&self, container: &str) -> Waiter {
        let waiter = self.wait(container);
        let name = format!("{}/{container}", self.socket);
        let deadline = Instant::now() + Duration::from_secs(5);
        while connect(&name).is_err() {
            assert!(Instant::now() < deadline, "waiter never listened");
            thread::sleep(Duration::from_millis(5));
        }
        waiter
    }

    fn deliver(&self, container: &str, result: &str, extra: &[&str]) -> Output {
        self.command(container)
            .arg("deliver")
            .args(extra)
            .arg(result)
            .output()
            .unwrap()
    }

    /// `proxy-waiter kill SIGNAL`, as Argo's controller runs it in the container.
    fn kill(&self, container: &str, signal: &str, extra: &[&str]) -> Output {
        self.command(container)
            .arg("kill")
            .args(extra)
            .arg(signal)
            .output()
            .unwrap()
    }

    fn spawn_deliver(&self, container: &str, result: &str, extra: &[&str]) -> Child {
        self.command(container)
            .arg("deliver")
            .args(extra)
            .arg(result)
            .spawn()
            .unwrap()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running waiter, killed if the test ends first.
struct Waiter {
    child: Option<Child>,
}

impl Waiter {
    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap()
    }

    fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    fn finish(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("waiter did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        let mut err = String::new();
        // A test that drains stdout itself has taken it.
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, out, err)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn connect(name: &str) -> std::io::Result<UnixStream> {
    UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)
}

const EXIT: Duration = Duration::from_secs(5);

#[test]
fn deliver_success_ends_the_waiter_with_0() {
    let scene = Scene::new();
    let waiter = scene.wait_ready("main");
    let deliver = scene.deliver("main", &result(&[("main", 0, "")]), &[]);
    assert!(deliver.status.success(), "{deliver:?}");
    let (status, out, _) = waiter.finish(EXIT);
    assert_eq!(status.code(), Some(0));
    assert!(
        out.contains("delegate container main exited 0 (Completed)"),
        "{out}"
    );
    assert!(
        !scene.termination_log("main").exists(),
        "no message, no termination log"
    );
}

#[test]
fn delegate_failure_exit_3_and_its_message_reach_the_proxy_container() {
    let scene = Scene::new();
    let waiter = scene.wait_ready("main");
    let deliver = scene.deliver("main", &result(&[("main", 3, "disk full")]), &[]);
    assert!(deliver.status.success(), "{deliver:?}");
    let (status, out, _) = waiter.finish(EXIT);
    assert_eq!(status.code(), Some(3));
    assert!(out.contains("exited 3 (Error): disk full"), "{out}");
    assert_eq!(
        fs::read_to_string(scene.termination_log("main")).unwrap(),
        "disk full"
    );
}

#[test]
fn each_container_ends_with_its_own_delegate_container_result() {
    let scene = Scene::new();
    let main = scene.wait_ready("main");
    let wait = scene.wait_ready("wait");
    let both = result(&[("main", 3, "main failed"), ("wait", 0, "")]);
    assert!(scene.deliver("main", &both, &[]).status.success());
    assert!(scene.deliver("wait", &both, &[]).status.success());
    assert_eq!(main.finish(EXIT).0.code(), Some(3));
    assert_eq!(wait.finish(EXIT).0.code(), Some(0));
}

#[test]
fn slow_path_follows_the_kubelets_atomic_symlink_swap() {
    let scene = Scene::new();
    let podinfo = scene.dir.join("podinfo");
    let project = |version: &str, content: &str| {
        let data = podinfo.join(format!("..{version}"));
        fs::create_dir(&data).unwrap();
        fs::write(data.join("annotations"), content).unwrap();
        std::os::unix::fs::symlink(format!("..{version}"), podinfo.join("..data_tmp")).unwrap();
        fs::rename(podinfo.join("..data_tmp"), podinfo.join("..data")).unwrap();
    };
    project(
        "2026_11_25_01",
        "workflows.argoproj.io/node-name=\"step\"\n",
    );
    std::os::unix::fs::symlink("..data/annotations", podinfo.join("annotations")).unwrap();
    let mut waiter = scene.wait("main");
    thread::sleep(Duration::from_millis(200));
    assert!(waiter.is_running(), "no result yet");

    let value = result(&[("main", 4, "from the\nannotation")]);
    project(
        "2026_11_25_02",
        &format!("a=\"b\"\n{RESULT_KEY}={value:?}\n"),
    );
    let (status, out, _) = waiter.finish(EXIT);
    assert_eq!(status.code(), Some(4));
    assert!(out.contains("exited 4 (Error): from the"), "{out}");
    assert_eq!(
        fs::read_to_string(scene.termination_log("main")).unwrap(),
        "from the\nannotation"
    );
}

#[test]
fn a_result_already_in_the_annotations_ends_a_restarted_waiter_at_once() {
    let scene = Scene::new();
    let value = result(&[("main", 0, "")]);
    fs::write(
        scene.dir.join("podinfo/annotations"),
        format!("{RESULT_KEY}={value:?}\n"),
    )
    .unwrap();
    assert_eq!(scene.wait("main").finish(EXIT).0.code(), Some(0));
}

#[test]
fn sigterm_and_sigint_end_with_143_and_130() {
    let scene = Scene::new();
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let waiter = scene.wait_ready("main");
        waiter.signal(signal);
        let (status, out, _) = waiter.finish(EXIT);
        assert_eq!(status.code(), Some(code), "{out}");
    }
}

#[test]
fn corrupt_results_are_refused_and_the_waiter_keeps_waiting() {
    let scene = Scene::new();
    let mut waiter = scene.wait_ready("main");

    let invalid = scene.deliver("main", "{not json", &[]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("invalid result"));

    // Bypass deliver's own validation: the waiter must refuse on its own.
    for bad in [
        "{not json",
        r#"{"v":2,"phase":"Succeeded"}"#,
        &result(&[("other", 0, "")]),
    ] {
        let mut stream = connect(&format!("{}/main", scene.socket)).unwrap();
        stream.write_all(bad.as_bytes()).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("refused:"), "{bad}: {reply}");
    }
    let unknown_version = format!("{RESULT_KEY}={:?}\n", r#"{"v":2,"phase":"Succeeded"}"#);
    fs::write(scene.dir.join("podinfo/annotations"), unknown_version).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(waiter.is_running(), "nothing unusable ends the waiter");

    assert!(
        scene
            .deliver("main", &result(&[("main", 5, "")]), &[])
            .status
            .success()
    );
    let (status, _, err) = waiter.finish(EXIT);
    assert_eq!(status.code(), Some(5));
    assert!(err.contains("format version 2"), "{err}");
    assert!(err.contains("no entry for container \"main\""), "{err}");
}

#[test]
fn clients_that_hang_up_do_not_hurt_the_waiter() {
    let scene = Scene::new();
    let mut waiter = scene.wait_ready("main");
    for _ in 0..3 {
        drop(connect(&format!("{}/main", scene.socket)).unwrap());
    }
    thread::sleep(Duration::from_millis(100));
    assert!(waiter.is_running());
    assert!(
        scene
            .deliver("main", &result(&[("main", 0, "")]), &[])
            .status
            .success()
    );
    assert_eq!(waiter.finish(EXIT).0.code(), Some(0));
}

#[test]
fn concurrent_deliveries_first_valid_wins_later_ones_are_refused() {
    let scene = Scene::new();
    let waiter = scene.wait_ready("main");
    let deliverers: Vec<(i32, Child)> = (10..16)
        .map(|code| {
            (
                code,
                scene.spawn_deliver("main", &result(&[("main", code, "")]), &["--timeout", "1"]),
            )
        })
        .collect();
    let outcomes: Vec<(i32, Option<i32>)> = deliverers
        .into_iter()
        .map(|(code, child)| (code, child.wait_with_output().unwrap().status.code()))
        .collect();
    let accepted: Vec<i32> = outcomes
        .iter()
        .filter(|(_, s)| *s == Some(0))
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(accepted.len(), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|(_, s)| matches!(s, Some(0 | 1 | 3))),
        "{outcomes:?}"
    );
    assert_eq!(waiter.finish(EXIT).0.code(), Some(accepted[0]));
}

#[test]
fn deliver_before_the_waiter_is_ready_waits_for_it() {
    let scene = Scene::new();
    let deliver = scene.spawn_deliver("main", &result(&[("main", 6, "")]), &["--timeout", "5"]);
    thread::sleep(Duration::from_millis(300));
    let waiter = scene.wait("main");
    assert!(deliver.wait_with_output().unwrap().status.success());
    assert_eq!(waiter.finish(EXIT).0.code(), Some(6));
}

#[test]
fn long_termination_messages_are_truncated_visibly() {
    let scene = Scene::new();
    let waiter = scene.wait_ready("main");
    let long = "x".repeat(10_000);
    assert!(
        scene
            .deliver("main", &result(&[("main", 1, &long)]), &[])
            .status
            .success()
    );
    assert_eq!(waiter.finish(EXIT).0.code(), Some(1));
    let log = fs::read_to_string(scene.termination_log("main")).unwrap();
    assert!(log.len() <= 4096, "{}", log.len());
    assert!(log.ends_with("[truncated by proxy-waiter]"));
}

#[test]
fn init_exits_0_and_mistakes_exit_2_with_usage() {
    let scene = Scene::new();
    assert_eq!(
        scene
            .command("init")
            .arg("init")
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    let wrong = Command::new(binary())
        .arg("wait")
        .env_remove("PROXY_WAITER_CONTAINER")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("PROXY_WAITER_CONTAINER is not set"));
    let help = Command::new(binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("proxy-waiter deliver") && help.contains("proxy-waiter kill"));
}

#[test]
fn stdin_delivery_works() {
    let scene = Scene::new();
    let waiter = scene.wait_ready("main");
    let mut deliver = scene
        .command("main")
        .args(["deliver", "-"])
        .spawn()
        .unwrap();
    deliver
        .stdin
        .take()
        .unwrap()
        .write_all(result(&[("main", 9, "")]).as_bytes())
        .unwrap();
    assert!(deliver.wait().unwrap().success());
    assert_eq!(waiter.finish(EXIT).0.code(), Some(9));
}

#[test]
fn kill_ends_the_waiter_as_the_signal_would_with_its_message() {
    let scene = Scene::new();
    for (signal, code, message) in [
        ("15", 143, "stopped by SIGTERM (kill command)"),
        ("9", 137, "stopped by SIGKILL (kill command)"),
        ("SIGINT", 130, "stopped by SIGINT (kill command)"),
    ] {
        let waiter = scene.wait_ready("main");
        let kill = scene.kill("main", signal, &[]);
        assert_eq!(kill.status.code(), Some(0), "{kill:?}");
        assert!(
            String::from_utf8_lossy(&kill.stdout).contains(&format!("(exit code {code})")),
            "{kill:?}"
        );
        let (status, out, _) = waiter.finish(EXIT);
        assert_eq!(status.code(), Some(code), "{signal}: {out}");
        assert!(out.contains(message), "{out}");
        assert_eq!(
            fs::read_to_string(scene.termination_log("main")).unwrap(),
            message
        );
    }
}

#[test]
fn kill_without_a_waiter_fails_and_says_why() {
    let scene = Scene::new();
    let started = Instant::now();
    let kill = scene.kill("main", "15", &["--timeout", "0.3"]);
    assert_eq!(kill.status.code(), Some(3), "{kill:?}");
    let err = String::from_utf8_lossy(&kill.stderr);
    assert!(
        err.contains("cannot stop container main: no waiter answered"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let wrong = scene.kill("main", "STOP", &[]);
    assert_eq!(wrong.status.code(), Some(2), "{wrong:?}");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("SIGSTOP does not end a process"));
}

#[test]
fn kill_after_a_result_was_accepted_has_nothing_to_stop() {
    let scene = Scene::new();
    let waiter = scene.wait_ready("main");
    // A deliverer that has sent its result but not finished: the waiter serves it first.
    let mut first = connect(&format!("{}/main", scene.socket)).unwrap();
    first
        .write_all(result(&[("main", 7, "done")]).as_bytes())
        .unwrap();
    let kill = scene
        .command("main")
        .args(["kill", "--timeout", "2", "TERM"])
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(400));
    first.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    first.read_to_string(&mut reply).unwrap();
    assert_eq!(reply.trim_end(), "accepted");
    let kill = kill.wait_with_output().unwrap();
    assert_eq!(kill.status.code(), Some(0), "{kill:?}");
    assert!(
        String::from_utf8_lossy(&kill.stdout).contains("nothing to stop"),
        "{kill:?}"
    );
    assert_eq!(waiter.finish(EXIT).0.code(), Some(7));
    assert_eq!(
        fs::read_to_string(scene.termination_log("main")).unwrap(),
        "done"
    );
}

/// The waiter's end of a relay, spoken as delegate-sync does through `proxy-waiter relay`.
struct RelaySession {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl RelaySession {
    fn open(scene: &Scene, container: &str) -> (Self, String) {
        // `proxy-waiter relay` says hello itself; the waiter answers where the log stands.
        let mut child = scene.command(container).arg("relay").spawn().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut session = Self { child, stdout };
        let at = session.answer();
        (session, at)
    }

    fn answer(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.strip_prefix("AT ")
            .unwrap_or_else(|| panic!("not an answer: {line:?}"))
            .trim_end()
            .to_string()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.child.stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }

    fn frame(&mut self, body: &[u8], position: &str) {
        self.send(format!("F {} {position}\n", body.len()).as_bytes());
        self.send(body);
    }

    /// Ends the relay: the answer says where the log stands once everything sent is in it.
    fn end(mut self) -> String {
        self.send(b"END\n");
        let at = self.answer();
        assert!(self.child.wait().unwrap().success());
        at
    }
}

impl Drop for RelaySession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A waiter's stdout, collected as bytes while it runs (a relay may fill a pipe).
struct Collected(
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread::JoinHandle<()>,
);

impl Collected {
    fn wait_for(&self, bytes: &[u8]) {
        let deadline = Instant::now() + EXIT;
        while !self.0.lock().unwrap().ends_with(bytes) {
            assert!(Instant::now() < deadline, "{bytes:?} never written");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn join(self) -> Vec<u8> {
        self.1.join().unwrap();
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn drain_stdout(waiter: &mut Waiter) -> Collected {
    let mut stdout = waiter.child.as_mut().unwrap().stdout.take().unwrap();
    let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bytes.clone();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Collected(bytes, reader)
}

#[test]
fn a_relayed_log_is_written_as_sent_and_nothing_is_added_to_it() {
    let scene = Scene::new();
    let mut waiter = scene.wait_ready("main");
    let out = drain_stdout(&mut waiter);
    let (mut relay, at) = RelaySession::open(&scene, "main");
    assert_eq!(at, "-");
    let long = vec![b'x'; 20_000];
    relay.frame(b"first line\n", "p1");
    relay.frame(&long, "p2");
    relay.frame(b"\n\xff\xfe not UTF-8\npartial", "p3");
    assert_eq!(relay.end(), "p3");
    let deliver = scene.deliver("main", &result(&[("main", 0, "")]), &[]);
    assert!(deliver.status.success(), "{deliver:?}");
    let (status, _, _) = waiter.finish(EXIT);
    assert_eq!(status.code(), Some(0));
    let mut expected = b"first line\n".to_vec();
    expected.extend_from_slice(&long);
    expected.extend_from_slice(b"\n\xff\xfe not UTF-8\npartial");
    assert_eq!(out.join(), expected, "the log is the relayed bytes only");
}

#[test]
fn a_frame_is_written_whole_or_not_at_all_and_the_next_relay_resumes_after_it() {
    let scene = Scene::new();
    let mut waiter = scene.wait_ready("main");
    let out = drain_stdout(&mut waiter);
    let (mut first, _) = RelaySession::open(&scene, "main");
    first.frame(b"one\n", "after-one");
    out.wait_for(b"one\n");
    // Cut mid-frame, as a delegate-sync killed with SIGKILL would leave it.
    first.send(b"F 10 after-two\ntwo");
    drop(first);
    let (mut second, at) = RelaySession::open(&scene, "main");
    assert_eq!(at, "after-one");
    second.frame(b"two\n", "after-two");
    out.wait_for(b"two\n");
    // A newer relay supersedes this one: the older is closed before the newer is answered.
    let (third, at) = RelaySession::open(&scene, "main");
    assert_eq!(at, "after-two");
    assert_eq!(third.end(), "after-two");
    drop(second);
    waiter.signal(libc::SIGTERM);
    let (status, _, _) = waiter.finish(EXIT);
    assert_eq!(status.code(), Some(143));
    assert_eq!(
        out.join(),
        b"one\ntwo\nproxy-waiter: SIGTERM received before any result; exiting 143\n"
    );
}

#[test]
fn bad_frames_close_the_relay_and_the_waiter_keeps_waiting() {
    let scene = Scene::new();
    let mut waiter = scene.wait_ready("main");
    let (mut relay, _) = RelaySession::open(&scene, "main");
    relay.send(b"F 99999999 p\n");
    assert!(
        relay.child.wait().unwrap().success(),
        "closed by the waiter"
    );
    let (mut relay, _) = RelaySession::open(&scene, "main");
    relay.send(&[b'y'; 1000]);
    assert!(
        relay.child.wait().unwrap().success(),
        "a header too long closes it"
    );
    assert!(waiter.is_running());
    let deliver = scene.deliver("main", &result(&[("main", 0, "")]), &[]);
    assert!(deliver.status.success(), "{deliver:?}");
    let (status, _, err) = waiter.finish(EXIT);
    assert_eq!(status.code(), Some(0));
    assert!(err.contains("log relay closed: frame too long"), "{err}");
}

#[test]
fn an_empty_relayed_log_stays_empty() {
    let scene = Scene::new();
    let mut waiter = scene.wait_ready("main");
    let out = drain_stdout(&mut waiter);
    let (relay, at) = RelaySession::open(&scene, "main");
    assert_eq!((relay.end(), at.as_str()), ("-".to_string(), "-"));
    let deliver = scene.deliver("main", &result(&[("main", 0, "")]), &[]);
    assert!(deliver.status.success(), "{deliver:?}");
    let _ = waiter.finish(EXIT);
    assert_eq!(
        out.join(),
        b"",
        "the delegate wrote nothing, nor does the waiter"
    );
}

#[test]
fn relay_without_a_waiter_fails_and_says_why() {
    let scene = Scene::new();
    let out = scene
        .command("main")
        .args(["relay", "--timeout", "0.2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no waiter for main"));
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn relaying_100_mib_does_not_grow_the_waiter() {
    let scene = Scene::new();
    let mut waiter = scene.wait_ready("main");
    let out = waiter.child.as_mut().unwrap().stdout.take().unwrap();
    let counted = thread::spawn(move || std::io::copy(&mut { out }, &mut std::io::sink()).unwrap());
    let (mut relay, _) = RelaySession::open(&scene, "main");
    let before = peak_rss_kib(waiter.pid());
    let chunk = vec![b'z'; 32 * 1024];
    let frames = 100 * 32;
    let started = Instant::now();
    for i in 0..frames {
        relay.frame(&chunk, &format!("p{i}"));
    }
    assert_eq!(relay.end(), format!("p{}", frames - 1));
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(waiter.pid());
    waiter.signal(libc::SIGTERM);
    let _ = waiter.finish(EXIT);
    let written = counted.join().unwrap();
    assert!(written >= 100 << 20, "{written} bytes");
    eprintln!(
        "relayed 100 MiB in {elapsed:?}; waiter peak RSS {before} KiB before, {peak} KiB after"
    );
    assert!(peak - before <= 256, "grew from {before} to {peak} KiB");
    if std::env::var_os("PROXY_WAITER_BIN").is_some() {
        assert!(peak <= 1024, "the shipped waiter peaked at {peak} KiB");
    }
}
