//! The command line's own errors. (Being an integration test of this package,
//! it also makes `cargo test --workspace` build the binary that the end-to-end
//! tests in `tests/` run.)

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_handover-server"))
}

#[test]
fn import_of_a_missing_file_says_which_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output =
        server().args(["import", "no-such-network.json", "--data-dir"]).arg(dir.path()).output().expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read no-such-network.json"), "{stderr}");
}

#[test]
fn import_of_a_file_that_is_not_json_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("network.json");
    std::fs::write(&file, "nodes: [").expect("write");
    let data = dir.path().join("data");
    let output = server().arg("import").arg(&file).arg("--data-dir").arg(&data).output().expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a network file"));
    assert!(!data.exists(), "no store is made for a file that cannot be read");
}

#[test]
fn a_bad_listen_address_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output =
        server().args(["serve", "--listen", "not-an-address", "--data-dir"]).arg(dir.path()).output().expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid configuration"));
}

#[test]
fn an_unknown_environment_setting_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = server()
        .args(["serve", "--http", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("HANDOVER__AUTH__JWT_SECRETS", "typo")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("jwt_secrets"));
}
