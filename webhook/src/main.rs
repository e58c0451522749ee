//! Mutating admission webhook that turns elected pods into proxy pods.
//!
//! Not implemented yet: see issue #3. The binary refuses to run rather than pretend.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "webhook {}: not implemented yet (issue #3); it would act on pods annotated {}",
        env!("CARGO_PKG_VERSION"),
        contract::ELECT
    );
    ExitCode::from(2)
}
