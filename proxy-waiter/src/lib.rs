//! The tiny binary that replaces every container of a proxy pod.
//!
//! - `wait` (default): runs as the container's PID 1 until a result for its container arrives,
//!   then leaves the delegate container's termination message and exits with its exit code.
//!   A result arrives by `deliver` (fast path) or in the downward-API projection of the pod's
//!   annotations (slow path, no exec needed). SIGTERM/SIGINT end it with 143/130.
//! - `init`: what a proxy init container runs; exits 0 at once.
//! - `deliver`: run inside the container (`kubectl exec`) to hand a result to the waiting
//!   process; succeeds only once the waiter has accepted it.
//! - `relay`: what delegate-sync execs into the container to relay the delegate container's
//!   log, which the waiter writes to its own standard output (see `relay`).
//! - `kill SIGNAL`: what Argo Workflows runs to stop the container; hands the waiter a result
//!   that ends it as SIGNAL would have (exit code 128+N). No process is signalled.
//!
//! The library has no std (only `core` and `alloc`, system calls through libc) so that the
//! shipped static binary stays under 1 MiB: std alone costs more than that once linked
//! statically with glibc.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod config;
pub mod decide;
pub mod deliver;
mod finish;
pub mod kill;
pub mod relay;
pub mod sys;
pub mod wait;

use alloc::{format, string::String, vec::Vec};

use config::{Mode, USAGE};

/// Runs the mode `args` (without the program name) names; returns the process exit code.
pub fn run(args: Vec<String>) -> i32 {
    sys::ignore_sigpipe();
    match config::parse(&args, sys::env) {
        Ok(Mode::Help) => {
            sys::out(USAGE);
            0
        }
        Ok(Mode::Version) => {
            sys::out(&format!("proxy-waiter {}", env!("CARGO_PKG_VERSION")));
            0
        }
        Ok(Mode::Init) => 0,
        Ok(Mode::Wait(config)) => wait::run(&config),
        Ok(Mode::Deliver(config)) => deliver::run(&config),
        Ok(Mode::Kill(config)) => kill::run(&config),
        Ok(Mode::Relay(config)) => relay::run(&config),
        Err(e) => {
            sys::err(&format!("proxy-waiter: {e}\n\n{USAGE}"));
            2
        }
    }
}
