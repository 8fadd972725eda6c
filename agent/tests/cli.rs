//! The agent binary builds and answers; its commands come with the sync issue.
//! (This integration test also makes `cargo test --workspace` build the binary.)

#[test]
fn the_agent_reports_its_version() {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_handover-agent")).arg("--version").output().expect("runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("handover-agent 0.1.0"));
}
