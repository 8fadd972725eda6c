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
