//! The waiting process: one thread, one `poll` over the signals, the rendezvous socket and an
//! inotify watch on the annotations projection.

use alloc::{format, string::String, vec::Vec};
use core::time::Duration;

use crate::{
    config::WaitConfig,
    decide::{Decision, Event, decide},
    finish::finish,
    relay::{Inbound, Relay},
    sys::{self, Fd},
};

/// Largest result accepted (a termination message is at most 4 KiB per container; pods have
/// a handful of containers).
pub const MAX_RESULT_BYTES: usize = 256 * 1024;
/// How often the projection is re-read even without an inotify event (or without inotify).
const RESCAN: Duration = Duration::from_secs(2);
/// The reply to deliverers that come after a result was accepted (`kill` recognises it).
pub const ALREADY_FINISHED: &str = "refused: another result was accepted first";
/// How long one deliverer may take to send its result: the waiter serves one at a time.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits for this container's result; returns the exit code.
pub fn run(config: &WaitConfig) -> i32 {
    match Waiter::new(config) {
        Ok(mut waiter) => i32::from(waiter.run()),
        Err(e) => {
            sys::err(&format!("proxy-waiter: cannot watch for signals: {e}"));
            1
        }
    }
}

struct Waiter<'a> {
    config: &'a WaitConfig,
    signals: Fd,
    listener: Option<Fd>,
    inotify: Option<Fd>,
    watching: bool,
    last_annotations: Option<String>,
    last_problem: Option<String>,
    /// The connection relaying the delegate container's log, if one is open.
    relay: Option<Relay>,
    /// Where the relayed log stands (see `contract::relay`).
    position: Option<String>,
    /// Once a relay came, the container's log is the delegate's (even if it is empty): the
    /// waiter's own summary stays out of it.
    relayed: bool,
}

impl<'a> Waiter<'a> {
    fn new(config: &'a WaitConfig) -> sys::Result<Self> {
        // Blocked signals are only seen through the signalfd: as PID 1 there are no default
        // actions to fall back on anyway.
        let signals = sys::signal_fd(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD])?;
        let listener = match sys::listen(&config.socket) {
            Ok(listener) => Some(listener),
            Err(e) => {
                sys::err(&format!(
                    "proxy-waiter: no fast path (cannot listen on @{}: {e}); waiting for {} in {}",
                    config.socket,
                    contract::RESULT,
                    config.annotations
                ));
                None
            }
        };
        let mut waiter = Self {
            config,
            signals,
            listener,
            inotify: sys::inotify().ok(),
            watching: false,
            last_annotations: None,
            last_problem: None,
            relay: None,
            position: None,
            relayed: false,
        };
        waiter.watch_annotations();
        Ok(waiter)
    }

    fn run(&mut self) -> u8 {
        // The projection is read when inotify says it may have changed, or every RESCAN:
        // not on every wake-up, which a relay's traffic makes frequent.
        let mut next_scan = Duration::ZERO;
        loop {
            let now = sys::monotonic();
            if now >= next_scan {
                if let Some(code) = self.rescan_annotations() {
                    return code;
                }
                next_scan = now + RESCAN;
            }
            // Fixed slots: signals, listener, relay (-1 when absent: poll skips it), inotify.
            let fds = [
                self.signals.raw(),
                self.listener.as_ref().map_or(-1, Fd::raw),
                self.relay.as_ref().map_or(-1, Relay::raw),
                self.inotify.as_ref().map_or(-1, Fd::raw),
            ];
            let ready = sys::poll_readable(&fds, next_scan.saturating_sub(now));
            if ready[0]
                && let Some(code) = self.on_signals()
            {
                return code;
            }
            if ready[2] {
                self.on_relay();
            }
            if ready[1]
                && let Some(code) = self.on_connections()
            {
                return code;
            }
            if ready[3]
                && let Some(inotify) = &self.inotify
            {
                // What matters is only that the projection may have changed: re-read it.
                sys::drain(inotify);
                next_scan = Duration::ZERO;
            }
        }
    }

    /// Writes what complete frames the relay sent; closes it when it ends or misbehaves.
    fn on_relay(&mut self) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        match relay.receive(&mut self.position) {
            Inbound::Open => {}
            Inbound::Ended => self.relay = None,
            Inbound::Broken(why) => {
                sys::err(&format!("proxy-waiter: log relay closed: {why}"));
                self.relay = None;
            }
        }
    }

    fn finish(&self, outcome: &contract::result::Outcome) -> u8 {
        finish(outcome, &self.config.termination_log, !self.relayed)
    }

    fn on_signals(&mut self) -> Option<u8> {
        while let Some(signal) = sys::read_signal(&self.signals) {
            let event = match signal {
                libc::SIGTERM => Event::Terminate,
                libc::SIGINT => Event::Interrupt,
                _ => {
                    sys::reap_children();
                    continue;
                }
            };
            if let Decision::Stop { exit_code, signal } = decide(&self.config.container, &event) {
                sys::out(&format!(
                    "proxy-waiter: {signal} received before any result; exiting {exit_code}"
                ));
                return Some(exit_code);
            }
        }
        None
    }

    fn on_connections(&mut self) -> Option<u8> {
        while let Some(stream) = self.listener.as_ref().and_then(sys::accept) {
            sys::set_timeouts(&stream, CLIENT_TIMEOUT);
            let trusted =
                sys::peer_uid(&stream).is_some_and(|uid| uid == 0 || uid == sys::own_uid());
            if !trusted {
                let _ = sys::write_all(
                    stream.raw(),
                    b"refused: the deliverer runs as another user\n",
                );
                continue;
            }
            let prefix = match sys::read_prefix(stream.raw(), contract::relay::HELLO.len()) {
                Ok(prefix) => prefix,
                Err(_) => continue,
            };
            if prefix == contract::relay::HELLO {
                // A newer relay supersedes the older one, which is closed first: they never
                // interleave, and the newer one resumes from the position it is told.
                self.relay = None;
                self.relay = Relay::open(stream, self.position.as_deref());
                self.relayed = true;
                continue;
            }
            if let Some(code) = self.on_delivery(&stream, prefix) {
                drop(stream);
                self.refuse_pending();
                return Some(code);
            }
        }
        None
    }

    /// A result handed over by `deliver` or `kill`, whose first bytes are `prefix`.
    fn on_delivery(&self, stream: &Fd, mut prefix: Vec<u8>) -> Option<u8> {
        let reply = |text: &str| {
            let _ = sys::write_all(stream.raw(), text.as_bytes());
        };
        let rest = sys::read_to_end(stream.raw(), MAX_RESULT_BYTES.saturating_sub(prefix.len()));
        let decision = match rest {
            Err(e) => Decision::Refuse(format!("cannot read the result: {e}")),
            Ok(rest) => match String::from_utf8({
                prefix.extend_from_slice(&rest);
                prefix
            }) {
                Ok(text) => decide(&self.config.container, &Event::Delivered(text)),
                Err(_) => Decision::Refuse("the result is not UTF-8".into()),
            },
        };
        match decision {
            Decision::Finish(outcome) => {
                let code = self.finish(&outcome);
                reply("accepted\n");
                Some(code)
            }
            Decision::Refuse(why) => {
                sys::err(&format!("proxy-waiter: refused a delivered result: {why}"));
                reply(&format!("refused: {why}\n"));
                None
            }
            _ => None,
        }
    }

    /// Deliverers already queued when a result was accepted learn that they lost.
    fn refuse_pending(&mut self) {
        if let Some(listener) = self.listener.take() {
            while let Some(stream) = sys::accept(&listener) {
                let _ = sys::write_all(stream.raw(), format!("{ALREADY_FINISHED}\n").as_bytes());
            }
        }
    }

    fn watch_annotations(&mut self) {
        if self.watching {
            return;
        }
        let dir = match self.config.annotations.rsplit_once('/') {
            Some(("", _)) => "/",
            Some((dir, _)) => dir,
            None => ".",
        };
        // The kubelet swaps a `..data` symlink in this directory: watch it, not the file.
        if let Some(inotify) = &self.inotify {
            self.watching = sys::watch_dir(inotify, dir);
        }
    }

    fn rescan_annotations(&mut self) -> Option<u8> {
        self.watch_annotations();
        let text = sys::read_file(&self.config.annotations)?;
        if self.last_annotations.as_ref() == Some(&text) {
            return None;
        }
        let decision = decide(&self.config.container, &Event::Annotations(text.clone()));
        self.last_annotations = Some(text);
        match decision {
            Decision::Finish(outcome) => Some(self.finish(&outcome)),
            Decision::Unusable(problem) => {
                if self.last_problem.as_ref() != Some(&problem) {
                    sys::err(&format!(
                        "proxy-waiter: ignoring an unusable result: {problem}"
                    ));
                    self.last_problem = Some(problem);
                }
                None
            }
            _ => None,
        }
    }
}
