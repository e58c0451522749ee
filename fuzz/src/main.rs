//! `fuzz`: the deterministic fuzz runner, the seed corpus writer, and crash replay.
//!
//! ```text
//! fuzz run [TARGET...] [--inputs N] [--seed S] [--crash-dir DIR] [--classes]
//! fuzz seeds DIR                 # DIR/<target>/seed-<n>: the corpus libFuzzer starts from
//! fuzz replay TARGET FILE...     # check saved inputs (crashes, regressions)
//! ```
//!
//! TARGET is one of webhook, manifest, result, downward (all when none is given).

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use fuzz::{Target, runner};

fn usage() -> ExitCode {
    eprintln!(
        "usage: fuzz run [TARGET...] [--inputs N] [--seed S] [--crash-dir DIR] [--classes]\n       \
         fuzz seeds DIR\n       fuzz replay TARGET FILE...\n\
         targets: webhook, manifest, result, downward"
    );
    ExitCode::from(2)
}

/// The last panic's message and location, captured instead of printed.
fn capture_panics() -> Arc<Mutex<Option<String>>> {
    let last = Arc::new(Mutex::new(None));
    let slot = last.clone();
    std::panic::set_hook(Box::new(move |info| {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
    }));
    last
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("seeds") if args.len() == 2 => seeds(&PathBuf::from(&args[1])),
        Some("replay") if args.len() >= 3 => match Target::from_name(&args[1]) {
            Some(target) => replay(target, &args[2..]),
            None => usage(),
        },
        _ => usage(),
    }
}

fn run(args: &[String]) -> ExitCode {
    let (mut targets, mut inputs, mut seed, mut crash_dir, mut classes) = (
        Vec::new(),
        1_000_000u64,
        1u64,
        PathBuf::from("target/fuzz/crashes"),
        false,
    );
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().cloned().unwrap_or_default();
        match arg.as_str() {
            "--inputs" => match value().replace('_', "").parse() {
                Ok(n) => inputs = n,
                Err(_) => return usage(),
            },
            "--seed" => match value().parse() {
                Ok(n) => seed = n,
                Err(_) => return usage(),
            },
            "--crash-dir" => crash_dir = PathBuf::from(value()),
            "--classes" => classes = true,
            name => match Target::from_name(name) {
                Some(target) => targets.push(target),
                None => return usage(),
            },
        }
    }
    if targets.is_empty() {
        targets = Target::ALL.to_vec();
    }
    let last_panic = capture_panics();
    let mut failed = false;
    for target in targets {
        let report = runner::run(target, inputs, seed, |failure| {
            let path = crash_dir.join(format!("{}-{}-{}", target.name(), seed, failure.index));
            let saved = std::fs::create_dir_all(&crash_dir)
                .and_then(|()| std::fs::write(&path, &failure.input));
            let panic = last_panic.lock().unwrap_or_else(|e| e.into_inner()).take();
            eprintln!(
                "{} input {}: {}\n  saved: {}",
                target.name(),
                failure.index,
                panic.unwrap_or_else(|| failure.message.clone()),
                match saved {
                    Ok(()) => path.display().to_string(),
                    Err(e) => format!("not saved ({e})"),
                }
            );
        });
        println!("{}", report.summary());
        if classes {
            for (class, count) in &report.classes {
                println!("  {count:>9}  {class}");
            }
        }
        failed |= report.failures > 0;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn seeds(dir: &std::path::Path) -> ExitCode {
    for target in Target::ALL {
        let dir = dir.join(target.name());
        for (i, seed) in target.seeds().iter().enumerate() {
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join(format!("seed-{i}")), seed));
            if let Err(e) = written {
                eprintln!("cannot write the seeds in {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn replay(target: Target, files: &[String]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let input = match std::fs::read(file) {
            Ok(input) => input,
            Err(e) => {
                eprintln!("{file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match std::panic::catch_unwind(|| target.check(&input)) {
            Ok(class) => println!("{file}: ok ({class})"),
            Err(_) => {
                println!("{file}: FAILED (see the panic above)");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
