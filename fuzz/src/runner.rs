//! The deterministic runner: N inputs per target from a seed, each input checked with every
//! property; panics are caught and reported with the input, so one run finds them all.
//!
//! Inputs start from the target's seeds; each next input is a mutation of a seed or of an
//! earlier input that reached an outcome class not seen before (a coarse stand-in for the
//! coverage feedback that libFuzzer gives in `make fuzz`).

use std::{
    collections::BTreeMap,
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use crate::{
    Target,
    rng::{Rng, fnv},
};

/// An input that broke a property (or panicked).
#[derive(Debug)]
pub struct Failure {
    pub index: u64,
    pub input: Vec<u8>,
    pub message: String,
}

/// What one run did.
#[derive(Debug)]
pub struct Report {
    pub target: Target,
    pub inputs: u64,
    pub failures: u64,
    pub elapsed: Duration,
    pub slowest: Duration,
    /// How many inputs ended in each outcome class.
    pub classes: BTreeMap<String, u64>,
}

impl Report {
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "{}: {} inputs in {:.1} s ({:.0}/s), slowest input {:.1} ms, {} outcome classes, {} failures",
            self.target.name(),
            self.inputs,
            secs,
            self.inputs as f64 / secs.max(1e-9),
            self.slowest.as_secs_f64() * 1e3,
            self.classes.len(),
            self.failures
        )
    }
}

/// Bounds the pool of inputs mutations start from.
const POOL_LIMIT: usize = 4096;

/// Runs `inputs` inputs on `target` from `seed`; `on_failure` sees each failing input.
pub fn run(target: Target, inputs: u64, seed: u64, mut on_failure: impl FnMut(&Failure)) -> Report {
    let mut rng = Rng::new(seed ^ fnv(target.name().as_bytes()));
    let seeds = target.seeds();
    let mut pool: Vec<Vec<u8>> = seeds.to_vec();
    let mut report = Report {
        target,
        inputs,
        failures: 0,
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
        classes: BTreeMap::new(),
    };
    let started = Instant::now();
    for index in 0..inputs {
        let input = match seeds.get(index as usize) {
            Some(seed) => seed.clone(),
            None => {
                let base = rng.pick(&pool).clone();
                target.mutate(&base, &mut rng, target.max_len())
            }
        };
        let one = Instant::now();
        let checked = catch_unwind(AssertUnwindSafe(|| target.check(&input)));
        report.slowest = report.slowest.max(one.elapsed());
        match checked {
            Ok(class) => {
                let count = report.classes.entry(class).or_insert(0);
                if *count == 0 && pool.len() < POOL_LIMIT {
                    pool.push(input);
                }
                *count += 1;
            }
            Err(payload) => {
                report.failures += 1;
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into());
                on_failure(&Failure {
                    index,
                    input,
                    message,
                });
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}
