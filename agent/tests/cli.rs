//! The agent binary answers on its own. (This integration test also makes
//! `cargo test --workspace` build the binary that the end-to-end tests run.)

#[test]
fn the_agent_reports_its_version() {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_handover-agent")).arg("--version").output().expect("runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("handover-agent 0.1.0"));
}
