//! The waiting process: one thread, one `poll` over the signals, the rendezvous socket and an
//! inotify watch on the annotations projection.

use alloc::{format, string::String, vec::Vec};
use core::time::Duration;

use crate::{
    config::WaitConfig,
    decide::{Decision, Event, decide},
    finish::finish,
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
        };
        waiter.watch_annotations();
        Ok(waiter)
    }

    fn run(&mut self) -> u8 {
        sys::err(&format!(
            "proxy-waiter: waiting for the result of container {}",
            self.config.container
        ));
        loop {
            if let Some(code) = self.rescan_annotations() {
                return code;
            }
            let mut fds = Vec::from([self.signals.raw()]);
            fds.extend(self.listener.as_ref().map(Fd::raw));
            fds.extend(self.inotify.as_ref().map(Fd::raw));
            let ready = sys::poll_readable(&fds, RESCAN);
            if ready[0]
                && let Some(code) = self.on_signals()
            {
                return code;
            }
            if self.listener.is_some()
                && ready[1]
                && let Some(code) = self.on_connections()
            {
                return code;
            }
            if let Some(inotify) = &self.inotify {
                // What matters is only that the projection may have changed: re-read it.
                sys::drain(inotify);
            }
        }
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
            if let Some(code) = self.on_delivery(&stream) {
                drop(stream);
                self.refuse_pending();
                return Some(code);
            }
        }
        None
    }

    fn on_delivery(&self, stream: &Fd) -> Option<u8> {
        sys::set_timeouts(stream, CLIENT_TIMEOUT);
        let reply = |text: &str| {
            let _ = sys::write_all(stream.raw(), text.as_bytes());
        };
        let trusted = sys::peer_uid(stream).is_some_and(|uid| uid == 0 || uid == sys::own_uid());
        if !trusted {
            reply("refused: the deliverer runs as another user\n");
            return None;
        }
        let decision = match sys::read_to_end(stream.raw(), MAX_RESULT_BYTES) {
            Err(e) => Decision::Refuse(format!("cannot read the result: {e}")),
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => decide(&self.config.container, &Event::Delivered(text)),
                Err(_) => Decision::Refuse("the result is not UTF-8".into()),
            },
        };
        match decision {
            Decision::Finish(outcome) => {
                let code = finish(&outcome, &self.config.termination_log);
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
            Decision::Finish(outcome) => Some(finish(&outcome, &self.config.termination_log)),
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
