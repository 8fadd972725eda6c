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
async fn pages_carry_their_content_security_policy_and_no_sniffing() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let client = server.page_client(&sandbox);
    let answer = client.get(format!("{}/login", server.url)).send().await.expect("the login page");
    let header =
        |name: header::HeaderName| answer.headers().get(name).map(|v| v.to_str().unwrap_or_default().to_owned());
    let csp = header(header::CONTENT_SECURITY_POLICY).unwrap_or_default();
    for directive in ["default-src 'none'", "form-action 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{directive} in {csp:?}");
    }
    assert_eq!(header(header::X_CONTENT_TYPE_OPTIONS).as_deref(), Some("nosniff"));
    assert_eq!(header(header::CACHE_CONTROL).as_deref(), Some("no-store"));
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
    // A typo from there is only wrong, and the account, now past its budget of
    // failures, is paced for strangers but not for an address it logged in from.
    assert_eq!(api_login(&server, &owner, "cust3", "a typo").await, StatusCode::UNAUTHORIZED);
    assert_eq!(api_login(&server, &owner, "cust3", DEMO_PASSWORD).await, StatusCode::OK);
}

#[tokio::test]
async fn a_courier_cannot_log_in_under_a_colleagues_handheld_until_an_admin_releases_it() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    // Someone else naming the handheld first claims nothing: only a courier's login binds it.
    server.login("cust1", DEMO_PASSWORD, Some("hh-exp1")).await;
    let first = server.login("exp1", DEMO_PASSWORD, Some("hh-exp1")).await;
    let again = server.login("exp1", DEMO_PASSWORD, Some("hh-exp1")).await;
    assert_eq!(again.device_id.as_str(), "hh-exp1", "its own account may log in on it again");

    let body = json!({"username": "exp2", "password": DEMO_PASSWORD, "device_id": "hh-exp1"});
    let (status, refused) = server.post("/api/v1/auth/login", &body, None).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::CONFLICT, &json!("device_in_use")), "{refused}");
    assert!(!refused.to_string().contains("exp1\""), "whose it is stays unsaid: {refused}");
    let (status, _) = server.get("/api/v1/auth/me", Some(&first.access_token)).await;
    assert_eq!(status, StatusCode::OK, "the owner's session is untouched");

    // The dashboard says whose it is.
    let dispatcher = server.page_client(&sandbox);
    assert_eq!(page_login(&server, &dispatcher, "disp", DEMO_PASSWORD).await, StatusCode::SEE_OTHER);
    // A pull records the handheld's sync, which gives it a row.
    let _ = server.get("/api/v1/sync/assignments", Some(&first.access_token)).await;
    let page = dispatcher.get(format!("{}/dashboard", server.url)).send().await.expect("the dashboard");
    let page = page.text().await.expect("html");
    let row = page.split("<tr id=\"device-hh-exp1\">").nth(1).expect("the handheld's row").split("</tr>").next();
    assert!(row.is_some_and(|row| row.contains("<td>exp1</td><td>unsigned</td>")), "registered to exp1: {row:?}");

    // Handed over to exp2: an admin releases it, exp1's sessions on it end.
    let admin = server.token("admin").await;
    let (status, released) = server.post("/api/v1/admin/devices/hh-exp1/release", &json!({}), Some(&admin)).await;
    assert_eq!((status, &released["sessions_revoked"]), (StatusCode::OK, &json!(3)), "{released}");
    let (status, _) = server.get("/api/v1/auth/me", Some(&first.access_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.post("/api/v1/auth/login", &body, None).await;
    assert_eq!(status, StatusCode::OK, "now exp2's");
}

#[tokio::test]
async fn a_handheld_pushing_refusals_by_the_hundred_is_held_to_a_pace_and_a_bounded_list() {
    let sandbox = Sandbox::new();
    let env = [("HANDOVER__LIMITS__PUSHES_PER_MINUTE_PER_DEVICE", "4")];
    let server = sandbox.start_with_env(&["--demo"], &env);
    let exp1 = server.login("exp1", DEMO_PASSWORD, Some("hh-noisy")).await.access_token;
    // Confirmations of deliveries that do not exist: each refused, each remembered.
    let refused = |batch: usize| {
        let confirmations: Vec<_> = (0..150)
            .map(|n| {
                json!({
                    "confirmation_id": format!("0192f1a2-0000-7000-8000-{batch:04}{n:08}"),
                    "delivery_id": format!("D-{:06}", 900_000 + n), "version": 1, "outcome": "delivered",
                    "quantity": 1, "recipient": "Desk", "captured_at": "2031-01-01T09:00:00Z"
                })
            })
            .collect();
        json!({"device_id": "hh-noisy", "confirmations": confirmations})
    };
    for batch in 0..2 {
        let (status, answer) = server.post("/api/v1/sync/confirmations", &refused(batch), Some(&exp1)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            answer["results"].as_array().is_some_and(|r| r.iter().all(|r| r["code"] == "not_assignee")),
            "{answer}"
        );
    }
    for _ in 0..2 {
        let empty = json!({"device_id": "hh-noisy", "confirmations": []});
        assert_eq!(server.post("/api/v1/sync/confirmations", &empty, Some(&exp1)).await.0, StatusCode::OK);
    }
    let body = json!({"device_id": "hh-noisy", "confirmations": []});
    let answer = server
        .client
        .post(format!("{}/api/v1/sync/confirmations", server.url))
        .bearer_auth(&exp1)
        .json(&body)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS, "the fifth push in a minute");
    assert!(answer.headers().get(header::RETRY_AFTER).is_some());
    let exp2 = server.login("exp2", DEMO_PASSWORD, Some("hh-quiet")).await.access_token;
    let quiet = json!({"device_id": "hh-quiet", "confirmations": []});
    assert_eq!(
        server.post("/api/v1/sync/confirmations", &quiet, Some(&exp2)).await.0,
        StatusCode::OK,
        "another device"
    );

    // The dashboard lists the latest 200, a page at a time, and counts the rest.
    let dispatcher = server.page_client(&sandbox);
    assert_eq!(page_login(&server, &dispatcher, "disp", DEMO_PASSWORD).await, StatusCode::SEE_OTHER);
    let page = |query: &'static str| {
        let dispatcher = dispatcher.clone();
        let url = format!("{}/dashboard{query}", server.url);
        async move { dispatcher.get(url).send().await.expect("the dashboard").text().await.expect("html") }
    };
    let first = page("").await;
    assert!(first.contains("Rejected confirmations (200)"), "{first}");
    assert!(first.contains("hh-noisy: 100 older rejection(s) no longer listed"), "{first}");
    assert!(first.contains("<td>D-900149</td>") && !first.contains("<td>D-900100</td>"), "the newest first: {first}");
    assert!(first.contains("id=\"rejected-next\" href=\"/dashboard?rejected_page=1\""), "{first}");
    let last = page("?rejected_page=7").await;
    assert!(last.contains("id=\"rejected-previous\"") && !last.contains("id=\"rejected-next\""), "{last}");
}
