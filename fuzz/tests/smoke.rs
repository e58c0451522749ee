//! The fuzz smoke run that `cargo test` (and so `make test`) includes: 10,000 deterministic
//! inputs per target (`FUZZ_SMOKE_INPUTS` to change), every property checked on each. The
//! full runs are `make fuzz`. A failure prints the input and saves it under
//! `target/fuzz/smoke-crashes/` for `fuzz replay`.

use fuzz::{Target, runner};

fn smoke(target: Target) {
    let inputs = std::env::var("FUZZ_SMOKE_INPUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz/smoke-crashes");
    let mut first = None;
    let report = runner::run(target, inputs, 1, |failure| {
        let path = dir.join(format!("{}-{}", target.name(), failure.index));
        let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &failure.input));
        first.get_or_insert_with(|| {
            format!(
                "input {} ({}): {}\n{}",
                failure.index,
                path.display(),
                &failure.message[..failure.message.len().min(3000)],
                String::from_utf8_lossy(&failure.input[..failure.input.len().min(2000)])
            )
        });
    });
    println!("{}", report.summary());
    assert_eq!(
        report.failures,
        0,
        "first failure: {}",
        first.unwrap_or_default()
    );
    assert_eq!(report.inputs, inputs);
    // The run reached more than the seeds' outcomes (the mutator is not stuck).
    assert!(report.classes.len() >= 4, "{:?}", report.classes);
}

#[test]
fn webhook_answers_hold_their_properties() {
    smoke(Target::Webhook);
}

#[test]
fn saved_manifests_hold_their_properties() {
    smoke(Target::Manifest);
}

#[test]
fn results_hold_their_properties() {
    smoke(Target::Result);
}

#[test]
fn downward_projections_hold_their_properties() {
    smoke(Target::Downward);
}
