//! Every input that once broke a property, replayed through its fuzz target on each
//! `cargo test`: a crash found by `make fuzz` (saved under `target/fuzz/artifacts/<target>/`)
//! is fixed, then copied to `fuzz/regressions/<target>/` with a name that says what it was.

use std::path::Path;

use fuzz::Target;

#[test]
fn inputs_that_once_broke_a_property_hold_them_all_now() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut replayed = 0;
    for target in Target::ALL {
        let Ok(entries) = std::fs::read_dir(root.join(target.name())) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let checked = std::panic::catch_unwind(|| target.check(&input));
            assert!(
                checked.is_ok(),
                "{} breaks a property again",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed >= 4, "regression inputs missing: {replayed}");
}
