//! Runs in every proxy container and ends as the delegate container of the same name ended.
//!
//! Not implemented yet: see issue #4. The binary refuses to run rather than pretend.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "proxy-waiter {}: not implemented yet (issue #4); it would act on pods annotated {}",
        env!("CARGO_PKG_VERSION"),
        contract::ELECT
    );
    ExitCode::from(2)
}
