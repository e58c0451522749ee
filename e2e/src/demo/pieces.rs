//! The product's pieces as real processes: the work directory (CA, serving certificate,
//! manifest key), the webhook and delegate-sync binaries started with their logs in files,
//! their readiness, the webhook's registration, and the stopping of leftovers.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Read as _,
    net::{SocketAddr, TcpListener},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{DEMO_LABEL, DEMO_LABEL_VALUE};

/// Name of the demo's MutatingWebhookConfiguration in the source cluster.
pub const WEBHOOK_CONFIGURATION: &str = "delegate-pods-demo";
/// The programs the demo starts (leftovers of an earlier run are found by these names).
const PROGRAMS: &[&str] = &["webhook", "delegate-sync"];
const CERT_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

/// Files of the work directory.
pub struct WorkDir {
    pub dir: PathBuf,
    pub ca_pem: String,
}

impl WorkDir {
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    pub fn tls_key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
    pub fn manifest_key(&self) -> PathBuf {
        self.dir.join("manifest.key")
    }
    pub fn log(&self, program: &str) -> PathBuf {
        self.dir.join(format!("{program}.log"))
    }
}

/// Creates `dir` afresh: a CA (`ca.crt`), a serving certificate for 127.0.0.1 signed by it
/// (`tls.crt`, `tls.key`) and a random manifest key (`manifest.key`, 32 bytes).
pub fn prepare_work_dir(dir: &Path) -> anyhow::Result<WorkDir> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    for stale in ["tls.crt", "tls.key", "ca.crt", "manifest.key"] {
        let path = dir.join(stale);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let ca = certs::Authority::generate("delegate-pods-demo-ca", CERT_VALIDITY)
        .context("cannot create the demo CA")?;
    ca.issue_serving("delegate-pods-demo-webhook", &["127.0.0.1"], CERT_VALIDITY)
        .context("cannot issue the webhook's serving certificate")?
        .write(&dir, "tls")
        .context("cannot write the webhook's serving certificate")?;
    let ca_pem = ca.pem().cert;
    certs::write_atomically(&dir.join("ca.crt"), ca_pem.as_bytes())
        .context("cannot write ca.crt")?;

    let mut key = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read 32 random bytes from /dev/urandom")?;
    let key_path = dir.join("manifest.key");
    certs::write_atomically(&key_path, &key).context("cannot write manifest.key")?;
    for secret in [key_path, dir.join("tls.key")] {
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", secret.display()))?;
    }
    Ok(WorkDir { dir, ca_pem })
}

/// `n` distinct free ports on 127.0.0.1 (held together while picked, so they differ).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find a free port on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A process the demo started: in a process group of its own (a Ctrl-C in the terminal
/// reaches only the demo, which stops it in order), output to a log file. Stopped when
/// dropped (SIGINT, then SIGKILL after a grace period), unless detached.
pub struct Piece {
    pub name: &'static str,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Piece {
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        if !program.is_file() {
            bail!(
                "{} not found (build it: cargo build -p {name} --bins)",
                program.display()
            );
        }
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            // Plain text in the log files.
            .env("NO_COLOR", "1")
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        Ok(Self {
            name,
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, once the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `lines` lines of its log, to explain a failure.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Leaves the process running after the demo exits (`--keep`).
    pub fn detach(mut self) {
        self.child = None;
    }

    /// Asks the process to stop (SIGINT: both pieces shut down cleanly on it), waits up to
    /// `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {grace:?}: killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Answers `GET <path>` on a plain-HTTP admin port with its status code.
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .context("no answer within 2 s")??;
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", head.lines().next()))
}

/// Waits until the piece answers 200 on `/readyz` of `admin`; fails at once if it exits.
pub async fn wait_ready(
    piece: &mut Piece,
    admin: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = piece.exited() {
            bail!(
                "{} exited ({status}) before it was ready; last lines of {}:\n{}",
                piece.name,
                piece.log.display(),
                piece.log_tail(15)
            );
        }
        let last = match http_status(admin, "/readyz").await {
            Ok(200) => return Ok(()),
            Ok(code) => format!("/readyz answered {code}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "{} not ready within {timeout:?} ({last}); last lines of {}:\n{}",
                piece.name,
                piece.log.display(),
                piece.log_tail(15)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Registers the webhook at `https://127.0.0.1:<port>/mutate` (trusting `ca_pem`) for pod
/// creations in namespaces labelled `multicluster-scheduler=enabled`. Server-side apply: a
/// rerun replaces the registration of an earlier run.
pub async fn register_webhook(client: &Client, port: u16, ca_pem: &str) -> anyhow::Result<()> {
    let opt_in = BTreeMap::from([(
        contract::NAMESPACE_OPT_IN_LABEL.to_string(),
        contract::NAMESPACE_OPT_IN_VALUE.to_string(),
    )]);
    let mut config = e2e::webhook_registration::configuration(
        WEBHOOK_CONFIGURATION,
        e2e::webhook_registration::WEBHOOK_NAME,
        port,
        ca_pem,
        &opt_in,
    )?;
    config.metadata.labels = Some(BTreeMap::from([(
        DEMO_LABEL.to_string(),
        DEMO_LABEL_VALUE.to_string(),
    )]));
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            WEBHOOK_CONFIGURATION,
            &PatchParams::apply("delegate-pods-demo").force(),
            &Patch::Apply(&config),
        )
        .await
        .with_context(|| {
            format!("cannot register MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}")
        })?;
    Ok(())
}

/// Deletes the demo's webhook registration; absent is fine.
pub async fn unregister_webhook(client: &Client) -> anyhow::Result<()> {
    match Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(WEBHOOK_CONFIGURATION, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!("cannot delete MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}")
        }),
    }
}

/// Stops webhook and delegate-sync processes that an earlier run left (`--keep`, or a demo
/// that was killed): those whose arguments name a file of the work directory. Returns
/// their pids.
pub fn stop_leftover_processes(work_dir: &Path) -> Vec<i32> {
    let Ok(dir) = work_dir.canonicalize() else {
        return Vec::new();
    };
    let needle = format!("{}/", dir.display());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let ours = |pid: i32| -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let mut args = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned());
        let program = args.next().unwrap_or_default();
        let name = Path::new(&program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        PROGRAMS.contains(&name.as_str()) && args.any(|a| a.contains(&needle))
    };
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && ours(*pid))
        .collect();
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|pid| ours(*pid)) {
        thread::sleep(Duration::from_millis(100));
    }
    for pid in pids.iter().filter(|pid| ours(**pid)) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    pids
}
