//! The way into a proxy container's log: `proxy-waiter relay`, exec'd through the source
//! apiserver and the proxy's kubelet (pods/exec), speaking `contract::relay`.

use std::time::Duration;

use contract::relay::{END, frame_header, parse_at};

use super::position::Position;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{AttachParams, AttachedProcess},
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

/// What the waiter's path is in every proxy container (the webhook puts it there).
const WAITER: &str = "/proxy-waiter";
/// How long the waiter may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Room for one frame in flight to the apiserver.
const STDIN_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Worth trying again (an apiserver or kubelet that did not answer, a connection cut).
    #[error("{0}")]
    Transient(String),
    /// The apiserver answered the exec with an error (a container not running, a node it
    /// cannot reach, forbidden): may pass later, but not for long.
    #[error("{0}")]
    Status(String),
    /// The container cannot take a relay (its waiter ended, or is too old to relay).
    #[error("{0}")]
    Refused(String),
}

pub struct Channel {
    process: AttachedProcess,
    stdin: tokio::io::WriteHalf<tokio::io::SimplexStream>,
    stdout: BufReader<tokio::io::ReadHalf<tokio::io::SimplexStream>>,
    /// The waiter's position, as last answered or sent (None: nothing relayed yet, or a
    /// position this version does not read).
    pub position: Option<Position>,
}

impl Channel {
    /// Starts a relay into `container` of the proxy `pod`; the waiter answers where its log
    /// stands.
    pub async fn open(proxies: &Api<Pod>, pod: &str, container: &str) -> Result<Self, Error> {
        let params = AttachParams::default()
            .container(container)
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .max_stdin_buf_size(STDIN_BUFFER);
        let command = [WAITER, "relay", "--container", container];
        let mut process = proxies
            .exec(pod, command, &params)
            .await
            .map_err(exec_error)?;
        let (Some(stdin), Some(stdout)) = (process.stdin(), process.stdout()) else {
            return Err(Error::Transient("exec without streams".into()));
        };
        let mut channel = Self {
            process,
            stdin,
            stdout: BufReader::new(stdout),
            position: None,
        };
        channel.position = Position::parse(&channel.answer().await?);
        Ok(channel)
    }

    /// Sends one frame: `body` leaves the log at `position`.
    pub async fn send(&mut self, body: &[u8], position: Position) -> Result<(), Error> {
        let header = frame_header(body.len(), &position.to_string());
        self.write(header.as_bytes()).await?;
        self.write(body).await?;
        self.position = Some(position);
        Ok(())
    }

    /// Ends the relay once the waiter wrote everything sent, which its answer, the last
    /// position sent, confirms.
    pub async fn end(mut self) -> Result<(), Error> {
        self.write(END).await?;
        let at = self.answer().await?;
        if Position::parse(&at) != self.position {
            return Err(Error::Transient(format!(
                "the waiter stands at {at}, not at {:?} (another relay took over?)",
                self.position.map(|p| p.to_string())
            )));
        }
        // Everything is written: the relay process exits on its own once the waiter closed
        // the connection; its exit status adds nothing.
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stdin
            .write_all(bytes)
            .await
            .map_err(|e| Error::Transient(format!("relay to the proxy container cut: {e}")))
    }

    /// The waiter's `AT <position>` line; its refusal or the exec's error otherwise.
    async fn answer(&mut self) -> Result<String, Error> {
        let mut line = String::new();
        let read = tokio::time::timeout(ANSWER_TIMEOUT, self.stdout.read_line(&mut line)).await;
        match read {
            Err(_) => Err(Error::Transient("the waiter did not answer".into())),
            Ok(Err(e)) => Err(Error::Transient(format!("relay cut: {e}"))),
            Ok(Ok(_)) => match parse_at(line.trim_end()) {
                Some(at) => Ok(at.to_string()),
                None => Err(self.failure(&line).await),
            },
        }
    }

    /// Why the relay process ended without answering.
    async fn failure(&mut self, line: &str) -> Error {
        let mut stderr = String::new();
        if let Some(mut err) = self.process.stderr() {
            let mut bytes = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                (&mut err).take(4096).read_to_end(&mut bytes),
            )
            .await;
            stderr = String::from_utf8_lossy(&bytes).trim().to_string();
        }
        let status = match self.process.take_status() {
            Some(status) => tokio::time::timeout(Duration::from_secs(2), status)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let said = [line.trim(), stderr.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        match status {
            // The relay process ran and failed (no waiter any more, an old waiter without
            // `relay`): this container will not take one.
            Some(status) if status.status.as_deref() == Some("Failure") => Error::Refused(format!(
                "proxy-waiter relay failed: {}{}",
                status.message.unwrap_or_default(),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(" ({said})")
                }
            )),
            _ => Error::Transient(format!("relay ended without an answer: {said}")),
        }
    }
}

/// An exec the apiserver answered with an error status, or one that never reached it.
fn exec_error(error: kube::Error) -> Error {
    match &error {
        kube::Error::Api(status) if status.code != 429 => {
            Error::Status(format!("exec refused: {error}"))
        }
        kube::Error::UpgradeConnection(kube::client::UpgradeConnectionError::ProtocolSwitch(
            code,
        )) if code.as_u16() != 429 => Error::Status(format!("exec refused: {error}")),
        _ => Error::Transient(format!("exec failed: {error}")),
    }
}
