//! `proxy-waiter deliver`: validate a result and hand it to the waiting process.

use alloc::{format, string::String};
use core::time::Duration;

use crate::{
    config::DeliverConfig,
    decide::outcome,
    sys::{self, Fd},
    wait::MAX_RESULT_BYTES,
};

/// Exit codes of `deliver`.
pub const ACCEPTED: i32 = 0;
pub const REFUSED: i32 = 1;
pub const UNREACHABLE: i32 = 3;

pub fn run(config: &DeliverConfig) -> i32 {
    let text = match &config.result {
        Some(text) => text.clone(),
        None => match sys::read_to_end(0, MAX_RESULT_BYTES).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => return refuse("the result on stdin is not UTF-8"),
            Err(e) => return refuse(&format!("cannot read the result from stdin: {e}")),
        },
    };
    if let Err(why) = outcome(&config.container, &text) {
        return refuse(&format!("invalid result for {}: {why}", config.container));
    }
    match hand_over(&config.socket, config.timeout, &text) {
        Ok(reply) if reply.trim_end() == "accepted" => {
            sys::out(&format!(
                "proxy-waiter deliver: result accepted by the waiter of {}",
                config.container
            ));
            ACCEPTED
        }
        Ok(reply) => refuse(reply.trim_end()),
        Err(e) => {
            sys::err(&format!(
                "proxy-waiter deliver: no waiter for {} answered within {:?}: {e}",
                config.container, config.timeout
            ));
            UNREACHABLE
        }
    }
}

fn refuse(why: &str) -> i32 {
    sys::err(&format!("proxy-waiter deliver: {why}"));
    REFUSED
}

/// Sends `text` to the waiter listening on `socket`; returns its reply.
pub(crate) fn hand_over(socket: &str, timeout: Duration, text: &str) -> sys::Result<String> {
    let stream = connect_with_retry(socket, timeout)?;
    sys::set_timeouts(&stream, timeout.max(Duration::from_secs(1)));
    sys::write_all(stream.raw(), text.as_bytes())?;
    sys::shutdown_write(&stream)?;
    let reply = sys::read_reply(stream.raw(), 4096)?;
    if reply.is_empty() {
        return Err(sys::Errno(libc::ECONNRESET));
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// The waiter may not be listening yet (its container just started): retry until `timeout`.
pub(crate) fn connect_with_retry(name: &str, timeout: Duration) -> sys::Result<Fd> {
    let deadline = sys::monotonic() + timeout;
    loop {
        match sys::connect(name) {
            Ok(stream) => return Ok(stream),
            Err(e) if sys::monotonic() >= deadline => return Err(e),
            Err(_) => sys::sleep(Duration::from_millis(10)),
        }
    }
}
