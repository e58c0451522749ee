//! Controller that places delegates in target clusters and mirrors them back onto proxies.
//!
//! Not implemented yet: see issue #5. The binary refuses to run rather than pretend.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "delegate-sync {}: not implemented yet (issue #5); it would act on pods annotated {}",
        env!("CARGO_PKG_VERSION"),
        contract::ELECT
    );
    ExitCode::from(2)
}
