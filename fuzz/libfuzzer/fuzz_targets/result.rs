//! libFuzzer target: the properties of `fuzz::Target::Result` (see `fuzz::targets`), with the
//! structure-aware mutator alongside libFuzzer's own.
#![no_main]

use fuzz::Target;
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

fuzz_target!(|data: &[u8]| {
    Target::Result.check(data);
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    fuzz::libfuzzer_mutate(Target::Result, data, size, max_size, seed, fuzzer_mutate)
});
