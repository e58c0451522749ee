//! One proxy container's relay: the delegate container's log, instance after instance, into
//! the proxy container through [`Channel`], resuming where the waiter says its log stands.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{Api, api::LogParams};

use super::{
    channel::{self, Channel},
    lines::{self, Lines},
    position::{Position, Resume},
};
use crate::{outcome, targets::Target};

/// Largest frame sent: pieces that are there without waiting are sent together.
const FRAME: usize = contract::relay::MAX_FRAME;
/// How long a frame waits for more of the log before it is sent: a burst goes in few frames,
/// a line alone waits no longer than this.
const GATHER: Duration = Duration::from_millis(2);
/// Waits between attempts after a transient failure, growing to the last.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];
/// A log or exec the apiserver keeps answering with an error (a node it cannot reach, a
/// container it does not know, forbidden) is given up after this many answers in a row; an
/// apiserver that does not answer at all is waited for.
const REFUSALS: usize = 3;

/// How a relay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The whole log is in the proxy container's.
    Complete,
    /// The per-pod limit was reached; the rest stays in the target.
    LimitReached(u64),
    /// This container's log cannot be relayed (why).
    Unavailable(String),
}

/// Everything a relay needs.
pub struct Job {
    pub proxies: Api<Pod>,
    pub proxy: String,
    pub target: Target,
    pub namespace: String,
    pub delegate: String,
    pub delegate_uid: String,
    /// What positions call the delegate (its uid's first 8 characters): a replacement's log
    /// starts from its beginning.
    pub uid8: String,
    pub container: String,
    pub limit: Option<u64>,
    /// Counts bytes relayed.
    pub relayed: prometheus_client::metrics::counter::Counter,
    /// Where the relay is, for the controller.
    pub state: std::sync::Arc<std::sync::Mutex<super::State>>,
    /// Wakes the proxy when the relay stops holding its result.
    pub wake: super::Wake,
}

/// How one pass ended.
enum Pass {
    Done(Outcome),
    Again(String),
}

impl Job {
    fn set_state(&self, state: super::State) {
        if let Ok(mut current) = self.state.lock() {
            *current = state;
        }
    }

    fn logs(&self) -> Api<Pod> {
        Api::namespaced(self.target.client.clone(), &self.namespace)
    }

    /// The delegate as the target's cache has it now; None once it is gone.
    fn delegate_now(&self) -> Option<std::sync::Arc<Pod>> {
        self.target
            .delegate(&self.namespace, &self.delegate)
            .filter(|d| d.metadata.uid.as_deref() == Some(&self.delegate_uid))
    }

    /// Whether the delegate will not run again (or is gone), from the cache.
    fn delegate_ended(&self) -> bool {
        self.delegate_now()
            .is_none_or(|d| outcome::result_of(&d).is_some())
    }

    /// Polls the target's cache until the delegate will not run again (or is gone).
    pub async fn until_pod_ended(&self) {
        while !self.delegate_ended() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Whether `instance` of the container is over: ended, restarted since, or its delegate
    /// gone (read from the cache without copying the status).
    fn instance_over(&self, instance: i32) -> bool {
        let Some(delegate) = self.delegate_now() else {
            return true;
        };
        outcome::statuses(&delegate)
            .find(|s| s.name == self.container)
            .is_none_or(|s| {
                s.restart_count > instance
                    || s.state.as_ref().is_some_and(|st| st.terminated.is_some())
            })
    }

    /// The waiter's position if it is in `instance` of this delegate's container.
    fn in_instance<'a>(
        &self,
        position: Option<&'a Position>,
        instance: i32,
    ) -> Option<&'a Position> {
        position.filter(|p| p.delegate == self.uid8 && p.instance == instance)
    }

    fn status_now(&self) -> Option<ContainerStatus> {
        let delegate = self.delegate_now()?;
        outcome::statuses(&delegate)
            .find(|s| s.name == self.container)
            .cloned()
    }
}

/// Relays until the delegate container's log is complete in the proxy container (or cannot
/// be); transient failures are retried with a growing delay.
pub async fn run(job: &Job) -> Outcome {
    let mut failures = 0;
    let mut refusals = 0;
    loop {
        let refused_before = refusals;
        match pass(job, &mut refusals).await {
            Pass::Done(outcome) => return outcome,
            Pass::Again(why) if refusals >= REFUSALS => {
                return Outcome::Unavailable(format!(
                    "refused {REFUSALS} times in a row, last: {why}"
                ));
            }
            Pass::Again(why) => {
                if job.state.lock().is_ok_and(|s| *s == super::State::Trying) {
                    job.set_state(super::State::Retrying);
                    // Refused (a node that cannot exec, say): a proxy whose delegate ended
                    // waits for this relay no more. A passing failure (a 429, a cut stream)
                    // wakes nobody: the retry may connect and hold the result again.
                    if refusals > refused_before && job.delegate_ended() {
                        job.wake.send();
                    }
                }
                let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
                tracing::debug!(proxy = %job.proxy, container = %job.container, "log relay: {why}; again in {wait:?}");
                failures += 1;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One connection to the waiter: from its position to the end of the log, or a failure.
async fn pass(job: &Job, refusals: &mut usize) -> Pass {
    let Some(status) = job.status_now() else {
        return Pass::Done(Outcome::Complete); // The delegate is gone, and its log with it.
    };
    let mut channel = match Channel::open(&job.proxies, &job.proxy, &job.container).await {
        Ok(channel) => channel,
        Err(channel::Error::Refused(why)) => return Pass::Done(Outcome::Unavailable(why)),
        Err(channel::Error::Status(why)) => {
            *refusals += 1;
            return Pass::Again(why);
        }
        Err(channel::Error::Transient(why)) => return Pass::Again(why),
    };
    tracing::debug!(proxy = %job.proxy, container = %job.container, at = ?channel.position, "log relay connected to the proxy container");
    let instance = status.restart_count;
    let mut total = channel.position.as_ref().map_or(0, |p| p.total);
    match copy_instance(job, &mut channel, instance, &mut total, refusals).await {
        Ok(Some(done)) => return finish(channel, done).await,
        Ok(None) => {}
        Err(why) => return Pass::Again(why),
    }
    // The instance's log ended: is that the end of the container?
    match job.status_now() {
        None => finish(channel, Outcome::Complete).await,
        Some(now) if now.restart_count > instance => Pass::Again("the container restarted".into()),
        Some(now) if ended_for_good(job, &now) => finish(channel, Outcome::Complete).await,
        Some(_) => {
            // Ended and about to restart, or the stream was cut: close cleanly, look again.
            let _ = channel.end().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Pass::Again("the log stream ended while the container may run again".into())
        }
    }
}

/// Copies `instance` to the end of what is written: first what is left of the previous
/// instance if the waiter stopped in it, then this one, followed, and once it ended, the
/// rest at once (the kubelet ends a follow only at its next check of the container, every
/// 5 s, and the result waits for the relay). Some(outcome) when the relay ends here.
async fn copy_instance(
    job: &Job,
    channel: &mut Channel,
    instance: i32,
    total: &mut u64,
    refusals: &mut usize,
) -> Result<Option<Outcome>, String> {
    let resume_in = |channel: &Channel, instance| {
        job.in_instance(channel.position.as_ref(), instance)
            .map_or_else(Resume::from_start, Resume::after)
    };
    if instance > 0
        && job
            .in_instance(channel.position.as_ref(), instance - 1)
            .is_some()
    {
        let resume = resume_in(channel, instance - 1);
        if let Copied::Done(done) = copy(
            job,
            channel,
            instance - 1,
            Read::Previous,
            resume,
            total,
            refusals,
        )
        .await?
        {
            return Ok(Some(done));
        }
    }
    let resume = resume_in(channel, instance);
    match copy(
        job,
        channel,
        instance,
        Read::Follow,
        resume,
        total,
        refusals,
    )
    .await?
    {
        Copied::Done(done) => return Ok(Some(done)),
        Copied::ToTheEnd => {}
        Copied::InstanceEnded => {
            tracing::debug!(proxy = %job.proxy, container = %job.container, "log relay: the container ended; reading the rest");
            let resume = resume_in(channel, instance);
            if let Copied::Done(done) =
                copy(job, channel, instance, Read::Rest, resume, total, refusals).await?
            {
                return Ok(Some(done));
            }
        }
    }
    Ok(None)
}

async fn finish(channel: Channel, outcome: Outcome) -> Pass {
    match channel.end().await {
        Ok(_) => Pass::Done(outcome),
        Err(e) => Pass::Again(e.to_string()),
    }
}

/// True once the container ended and its pod will not run it again.
fn ended_for_good(job: &Job, status: &ContainerStatus) -> bool {
    let Some(delegate) = job.delegate_now() else {
        return true;
    };
    if outcome::result_of(&delegate).is_some() {
        return true;
    }
    let Some(ended) = status.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
        return false;
    };
    match delegate
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
    {
        Some("Never") => true,
        Some("OnFailure") => ended.exit_code == 0,
        _ => false,
    }
}

/// How an instance's log is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The current instance, following it as it is written.
    Follow,
    /// The current instance, what is written so far (it ended).
    Rest,
    /// The previous instance (the container restarted since).
    Previous,
}

/// Where a copy stopped.
enum Copied {
    /// At the end of what the kubelet served.
    ToTheEnd,
    /// Following, the instance was seen ended: the rest is read without following.
    InstanceEnded,
    /// The relay ends here (the limit).
    Done(Outcome),
}

/// How often a follow looks whether its instance ended, while no line comes.
const ENDED_CHECK: Duration = Duration::from_millis(50);

/// Returns once the target's cache shows `instance` of the container over, looking only
/// while no line comes (a busy log is not a finished one).
async fn instance_ended(job: &Job, instance: i32) {
    loop {
        tokio::time::sleep(ENDED_CHECK).await;
        if job.instance_over(instance) {
            return;
        }
    }
}

/// Copies one instance's log from `resume`, as `read` says.
async fn copy(
    job: &Job,
    channel: &mut Channel,
    instance: i32,
    read: Read,
    mut resume: Resume,
    total: &mut u64,
    refusals: &mut usize,
) -> Result<Copied, String> {
    let since = job
        .in_instance(channel.position.as_ref(), instance)
        .and_then(|p| p.stamp.second());
    let params = LogParams {
        container: Some(job.container.clone()),
        follow: read == Read::Follow,
        previous: read == Read::Previous,
        timestamps: true,
        since_time: since,
        ..LogParams::default()
    };
    let reader = match job.logs().log_stream(&job.delegate, &params).await {
        Ok(reader) => reader,
        Err(kube::Error::Api(status)) if status.code != 429 => {
            *refusals += 1;
            return Err(format!("log refused: {}", status.message));
        }
        Err(e) => return Err(format!("cannot read the log: {e}")),
    };
    *refusals = 0;
    job.set_state(super::State::Connected);
    let mut lines = Lines::new(reader);
    let mut frame = Vec::with_capacity(FRAME);
    let mut last = None;
    loop {
        let next = if read == Read::Follow && frame.is_empty() {
            tokio::select! {
                next = lines.next() => next,
                () = instance_ended(job, instance) => return Ok(Copied::InstanceEnded),
            }
        } else {
            lines.next().await
        };
        let piece = match next {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(lines::Error::NoStamp(line)) => {
                return Err(format!("unexpected log line {line:?}"));
            }
            Err(e) => {
                flush(job, channel, instance, *total, &mut frame, &mut last).await?;
                return Err(e.to_string());
            }
        };
        let (new, gap) = resume.keep(&piece);
        if gap {
            tracing::warn!(proxy = %job.proxy, container = %job.container, "log relay: the position was not found again (a rotated log?); resuming after it");
        }
        let mut new = new;
        if let Some(limit) = job.limit {
            let room = usize::try_from(limit.saturating_sub(*total)).unwrap_or(usize::MAX);
            new = &new[..new.len().min(room)];
        }
        if !new.is_empty() {
            *total += new.len() as u64;
            frame.extend_from_slice(new);
            last = Some(Ending {
                stamp: piece.stamp,
                line: piece.line,
                offset: piece.offset + (piece.bytes.len() as u64),
            });
        }
        if job.limit.is_some_and(|limit| *total >= limit) {
            flush(job, channel, instance, *total, &mut frame, &mut last).await?;
            return Ok(Copied::Done(Outcome::LimitReached(*total)));
        }
        if frame.len() + lines::MAX_PIECE > FRAME || !lines.more_within(GATHER).await {
            flush(job, channel, instance, *total, &mut frame, &mut last).await?;
        }
    }
    flush(job, channel, instance, *total, &mut frame, &mut last).await?;
    Ok(Copied::ToTheEnd)
}

/// Where the frame being gathered leaves the log (its position is made only when sent).
struct Ending {
    stamp: super::position::Stamp,
    line: u32,
    offset: u64,
}

async fn flush(
    job: &Job,
    channel: &mut Channel,
    instance: i32,
    total: u64,
    frame: &mut Vec<u8>,
    last: &mut Option<Ending>,
) -> Result<(), String> {
    let Some(ending) = last.take() else {
        return Ok(());
    };
    let position = Position {
        delegate: job.uid8.clone(),
        instance,
        stamp: ending.stamp,
        line: ending.line,
        offset: ending.offset,
        total,
    };
    channel
        .send(frame, position)
        .await
        .map_err(|e| e.to_string())?;
    job.relayed.inc_by(frame.len() as u64);
    frame.clear();
    Ok(())
}
