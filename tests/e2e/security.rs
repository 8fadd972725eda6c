//! End-to-end tests of the security hardening: what a stranger, a curious
//! customer, a malicious courier or another local user could do before, and
//! can no longer.

use reqwest::{header, StatusCode};
use serde_json::json;

use crate::helpers::Sandbox;

#[tokio::test]
async fn browsers_are_told_to_come_back_over_tls_only_when_tls_is_on() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    for path in ["/healthz", "/login", "/api/v1/nowhere"] {
        let answer = server.client.get(format!("{}{path}", server.url)).send().await.expect("an answer");
        let hsts = answer.headers().get(header::STRICT_TRANSPORT_SECURITY).map(|v| v.to_str().unwrap_or_default());
        assert_eq!(hsts, Some("max-age=31536000"), "{path}");
    }
    drop(server);
    let plain = sandbox.start(&["--demo", "--http"]);
    let answer = plain.client.get(format!("{}/healthz", plain.url)).send().await.expect("an answer");
    assert_eq!(answer.headers().get(header::STRICT_TRANSPORT_SECURITY), None, "not over plain HTTP");
}

#[tokio::test]
async fn nothing_a_client_sends_can_start_a_log_line_of_its_own() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let forged = "nobody\n2031-01-01T00:00:00.000000Z  INFO FORGED login as admin\r\u{1b}[2J";
    let (status, _) = server.post("/api/v1/auth/login", &json!({"username": forged, "password": "wrong"}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .post("/api/v1/auth/login", &json!({"username": "disp", "password": "wrong", "device_id": "dev\u{1b}x"}), None)
        .await;
    assert!(status.is_client_error());
    let log = server.log();
    assert!(log.contains("FORGED"), "the attempt is logged, escaped: {log}");
    for line in log.lines() {
        assert!(!line.contains("FORGED") || line.contains("nobody\\n2031"), "a forged line: {line:?}");
        assert!(!line.chars().any(char::is_control), "a control character in {line:?}");
    }
}

/// Every entry under `dir` that group or others may read, write or enter.
#[cfg(unix)]
fn open_to_others(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut loose = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).expect("readable metadata");
        if metadata.permissions().mode() & 0o077 != 0 {
            loose.push(format!("{} {:o}", path.display(), metadata.permissions().mode() & 0o777));
        }
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).expect("a listing").map(|entry| entry.expect("an entry").path()));
        }
    }
    loose
}

#[cfg(unix)]
#[tokio::test]
async fn the_server_store_and_the_handheld_store_are_their_owners_only() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let login = sandbox.agent_login("exp1", &server.url, "exp1", crate::helpers::DEMO_PASSWORD, Some("hh-private"));
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    let mut loose = if crate::helpers::on_postgres() { Vec::new() } else { open_to_others(&sandbox.data_dir()) };
    loose.extend(open_to_others(&sandbox.path("agent-exp1")));
    assert!(loose.is_empty(), "readable by other local users: {loose:?}");
}
