//! End-to-end tests of the security hardening: what a stranger, a curious
//! customer, a malicious courier or another local user could do before, and
//! can no longer.

use reqwest::{header, StatusCode};
use serde_json::json;

use crate::helpers::{Sandbox, TestServer, DEMO_PASSWORD};

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
    let login = sandbox.agent_login("exp1", &server.url, "exp1", DEMO_PASSWORD, Some("hh-private"));
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    let mut loose = if crate::helpers::on_postgres() { Vec::new() } else { open_to_others(&sandbox.data_dir()) };
    loose.extend(open_to_others(&sandbox.path("agent-exp1")));
    assert!(loose.is_empty(), "readable by other local users: {loose:?}");
}

/// A login as `username` through `client`: the status, and how long it took.
async fn api_login(server: &TestServer, client: &reqwest::Client, username: &str, password: &str) -> StatusCode {
    let body = json!({"username": username, "password": password});
    client.post(format!("{}/api/v1/auth/login", server.url)).json(&body).send().await.expect("an answer").status()
}

/// A login through the page, as a browser would: where it is sent after.
async fn page_login(server: &TestServer, client: &reqwest::Client, username: &str, password: &str) -> StatusCode {
    let form = client.get(format!("{}/login", server.url)).send().await.expect("the form").text().await.expect("html");
    let csrf = crate::helpers::field_value(&form, "csrf");
    let fields = [("csrf", csrf.as_str()), ("username", username), ("password", password)];
    client.post(format!("{}/login", server.url)).form(&fields).send().await.expect("an answer").status()
}

#[tokio::test]
async fn a_stranger_guessing_a_password_cannot_lock_its_owner_out() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let (from_guesser, from_owner) = ("127.0.0.2".parse().ok(), "127.0.0.3".parse().ok());
    let guesser = server.client_from(&sandbox, from_guesser, false);
    for attempt in 1..=10 {
        assert_eq!(api_login(&server, &guesser, "cust3", "guess-guess").await, StatusCode::UNAUTHORIZED, "{attempt}");
    }
    assert_eq!(api_login(&server, &guesser, "cust3", "guess-again").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        api_login(&server, &guesser, "cust3", DEMO_PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the guesser's address is refused even with the right password"
    );

    // The owner, from elsewhere, gets in at once, through the API and the page.
    let owner = server.client_from(&sandbox, from_owner, false);
    assert_eq!(api_login(&server, &owner, "cust3", DEMO_PASSWORD).await, StatusCode::OK);
    let owner_pages = server.client_from(&sandbox, from_owner, true);
    assert_eq!(page_login(&server, &owner_pages, "cust3", DEMO_PASSWORD).await, StatusCode::SEE_OTHER);
    // A wrong password from there is still only wrong (answered slowly while
    // the account is guessed at), never a lockout.
    assert_eq!(api_login(&server, &owner, "cust3", "a typo").await, StatusCode::UNAUTHORIZED);
    assert_eq!(api_login(&server, &owner, "cust3", DEMO_PASSWORD).await, StatusCode::OK);
}
