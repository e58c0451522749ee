//! The log relay (wire format in `contract::relay`).
//!
//! - [`Relay`]: the waiter's end. Frames go to the waiter's standard output, which the
//!   container runtime stores as this container's log; one frame is held at a time, so memory
//!   stays bounded whatever the log's volume.
//! - [`run`]: `proxy-waiter relay`, what delegate-sync execs into the proxy container: a pipe
//!   between its stdin/stdout (the exec's streams) and the waiter's socket.

use alloc::{format, string::String, vec::Vec};
use core::time::Duration;

use contract::relay::{HELLO, Header, MAX_FRAME, MAX_HEADER, NO_POSITION, parse_header};

use crate::{
    config::RelayConfig,
    deliver::connect_with_retry,
    sys::{self, Fd},
};

/// What a read from the relay connection left.
pub enum Inbound {
    Open,
    Ended,
    Broken(String),
}

pub struct Relay {
    stream: Fd,
    /// Bytes received and not yet written: at most one header and one frame.
    pending: Vec<u8>,
}

impl Relay {
    /// Takes over an accepted connection that said hello; answers where the log stands.
    pub fn open(stream: Fd, position: Option<&str>) -> Option<Self> {
        let answer = format!("AT {}\n", position.unwrap_or(NO_POSITION));
        sys::write_all(stream.raw(), answer.as_bytes()).ok()?;
        sys::set_nonblocking(&stream).ok()?;
        Some(Self {
            stream,
            pending: Vec::new(),
        })
    }

    pub fn raw(&self) -> i32 {
        self.stream.raw()
    }

    /// Reads what is there and writes every complete frame, recording its position.
    pub fn receive(&mut self, position: &mut Option<String>) -> Inbound {
        let mut buf = [0u8; 4096];
        loop {
            match sys::read_some(self.stream.raw(), &mut buf) {
                Ok(0) => return Inbound::Ended,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(sys::Errno(libc::EAGAIN)) => return Inbound::Open,
                Err(e) => return Inbound::Broken(format!("cannot read: {e}")),
            }
            match self.write_frames(position) {
                Ok(true) => {}
                Ok(false) => return Inbound::Ended,
                Err(why) => return Inbound::Broken(why),
            }
        }
    }

    /// Writes the complete frames in `pending`; false once the relay asked to end.
    fn write_frames(&mut self, position: &mut Option<String>) -> Result<bool, String> {
        loop {
            let Some(newline) = self.pending.iter().position(|&b| b == b'\n') else {
                if self.pending.len() > MAX_HEADER {
                    return Err("header too long".into());
                }
                return Ok(true);
            };
            let header = parse_header(&self.pending[..newline]).map_err(String::from)?;
            let (length, after) = match header {
                Header::End => {
                    let answer = format!("AT {}\n", position.as_deref().unwrap_or(NO_POSITION));
                    sys::set_blocking(&self.stream);
                    sys::set_timeouts(&self.stream, Duration::from_secs(1));
                    let _ = sys::write_all(self.stream.raw(), answer.as_bytes());
                    return Ok(false);
                }
                Header::Frame { length, position } => (length, String::from(position)),
            };
            let start = newline + 1;
            if self.pending.len() < start + length {
                return Ok(true);
            }
            sys::write_all(1, &self.pending[start..start + length])
                .map_err(|e| format!("cannot write the log: {e}"))?;
            *position = Some(after);
            self.pending.drain(..start + length);
        }
    }
}

/// `proxy-waiter relay`: connects to the waiter and passes bytes both ways until the waiter
/// closes; exit 0 then, 3 if no waiter answered.
pub fn run(config: &RelayConfig) -> i32 {
    let stream = match connect_with_retry(&config.socket, config.timeout) {
        Ok(stream) => stream,
        Err(e) => {
            sys::err(&format!(
                "proxy-waiter relay: no waiter for {} answered within {:?}: {e}",
                config.container, config.timeout
            ));
            return 3;
        }
    };
    if let Err(e) = sys::write_all(stream.raw(), HELLO) {
        sys::err(&format!("proxy-waiter relay: cannot reach the waiter: {e}"));
        return 3;
    }
    match pump(&stream) {
        Ok(()) => 0,
        Err(e) => {
            sys::err(&format!("proxy-waiter relay: {e}"));
            1
        }
    }
}

/// stdin to the waiter, the waiter to stdout, until the waiter closes.
fn pump(stream: &Fd) -> sys::Result<()> {
    let mut buf = [0u8; MAX_FRAME / 8];
    let mut stdin_open = true;
    loop {
        let fds = [if stdin_open { 0 } else { -1 }, stream.raw()];
        let ready = sys::poll_readable(&fds, Duration::from_secs(60));
        if ready[1] {
            match sys::read_some(stream.raw(), &mut buf)? {
                0 => return Ok(()),
                n => sys::write_all(1, &buf[..n])?,
            }
        }
        if ready[0] {
            match sys::read_some(0, &mut buf)? {
                0 => {
                    stdin_open = false;
                    sys::shutdown_write(stream)?;
                }
                n => sys::write_all(stream.raw(), &buf[..n])?,
            }
        }
    }
}
