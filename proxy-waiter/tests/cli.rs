use std::process::Command;

#[test]
fn unimplemented_binary_refuses_to_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-waiter"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not implemented yet"), "{stderr}");
}
