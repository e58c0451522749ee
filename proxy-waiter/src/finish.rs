//! Ending the container like the delegate container ended.

use alloc::format;

use contract::result::{Outcome, truncate_termination_message};

use crate::sys;

/// Leaves the termination message, prints the summary (unless the container's log is the
/// delegate's, relayed: nothing may be added to it), and returns the exit code.
pub fn finish(outcome: &Outcome, termination_log: &str, summarise: bool) -> u8 {
    let message = truncate_termination_message(&outcome.message);
    if !message.is_empty()
        && let Err(e) = sys::write_file(termination_log, message.as_bytes())
    {
        sys::err(&format!(
            "proxy-waiter: cannot write the termination message to {termination_log}: {e}"
        ));
    }
    if summarise {
        sys::out(&format!("proxy-waiter: {}", outcome.summary));
    }
    outcome.exit_code
}
