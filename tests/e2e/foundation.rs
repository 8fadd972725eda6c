//! The foundation: network import, login over TLS, token checks, revocation,
//! roles, restarts, and JSON errors for bad input.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    assert_network_shape, base_network, error, tls_client, Sandbox, AUDIENCE, DEMO_PASSWORD, ISSUER, JWT_SECRET,
};

/// A network file with one problem of each kind, on top of the base network.
fn broken_update() -> Value {
    json!({
        "nodes": [
            {"id": "B9", "kind": "branch_warehouse", "name": "New branch"},
            {"id": "X1", "kind": "factory", "name": "Unknown kind"}
        ],
        "stock": [
            {"node_id": "B1", "item_id": "TC-100", "quantity": 50},
            {"node_id": "B1", "item_id": "NOPE", "quantity": 1}
        ],
        "customers": [{"id": "C2", "name": "Office B", "branch_1": "B1", "branch_2": "B1", "seller_id": "S1"}],
        "accounts": [{"username": "exp9", "password": "exp9-password", "role": "expediter", "node_id": "S1"}]
    })
}

fn stock_of(body: &Value, item: &str) -> Option<u64> {
    body["items"].as_array()?.iter().find(|line| line["item_id"] == item)?["on_hand"].as_u64()
}

#[tokio::test]
async fn the_import_command_refuses_a_broken_file_whole_and_stores_nothing() {
    let sandbox = Sandbox::new();
    assert_network_shape(&base_network());
    let base = sandbox.write_network("base.json", &base_network());
    let ok = sandbox.server_command(&["import", base.to_str().expect("path")]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "imported 5 node(s), 1 item(s), 1 stock line(s), 1 customer(s), 6 account(s)\n"
    );

    let broken = sandbox.write_network("broken.json", &broken_update());
    let refused = sandbox.server_command(&["import", broken.to_str().expect("path")]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for expected in [
        "nodes[1].kind: unknown node kind \"factory\"",
        "stock[1].item_id: unknown item NOPE",
        "customers[0].branch_2: branch #2 must differ from branch #1",
        "accounts[0].node_id: node S1 is a seller, not a branch_warehouse",
        "4 problem(s) in",
        "nothing was imported",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }

    // Nothing of the broken file landed: not the valid node, not the valid stock line.
    let server = sandbox.start(&[]);
    let dispatcher = server.login("disp", "disp-password", None).await.access_token;
    let (status, body) = server.get("/api/v1/nodes/B9/stock", Some(&dispatcher)).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no node B9")));
    let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
    assert_eq!(stock_of(&stock, "TC-100"), Some(5));
    let (status, _) =
        server.post("/api/v1/auth/login", &json!({"username": "exp9", "password": "exp9-password"}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_import_command_says_clearly_when_the_server_holds_the_store() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let file = sandbox.write_network("base.json", &base_network());
    let refused = sandbox.server_command(&["import", file.to_str().expect("path")]);
    if crate::helpers::on_postgres() {
        // Several processes share a database: the import runs beside the
        // server, judged against the stored network under the planning lock.
        assert!(refused.status.success(), "{}", String::from_utf8_lossy(&refused.stderr));
        // The import set the accounts' passwords to the file's.
        let dispatcher = server.login("disp", "disp-password", None).await.access_token;
        let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
        assert_eq!(stock_of(&stock, "TC-100"), Some(5), "the running server sees the import: {stock}");
        return;
    }
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is in use by another process (is the server running?)"), "{stderr}");
}

#[tokio::test]
async fn the_admin_endpoint_lists_every_problem_and_applies_a_valid_update() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let admin = server.token("admin").await;

    let (status, body) = server.post("/api/v1/admin/network", &broken_update(), Some(&admin)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"error": {
            "code": "invalid_network",
            "message": "the network file has 4 problem(s); nothing was imported",
            "problems": [
                {"path": "nodes[1].kind", "message": "unknown node kind \"factory\"; expected one of: manufacturer, master_warehouse, branch_warehouse, seller"},
                {"path": "stock[1].item_id", "message": "unknown item NOPE"},
                {"path": "customers[0].branch_2", "message": "branch #2 must differ from branch #1"},
                {"path": "accounts[0].node_id", "message": "node S1 is a seller, not a branch_warehouse"}
            ]
        }})
    );
    let dispatcher = server.token("disp").await;
    let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
    assert_eq!(stock_of(&stock, "TC-100"), Some(5), "the valid stock line of a refused file is not applied");

    // A partial file that refers to stored records updates what it names.
    let update = json!({
        "stock": [{"node_id": "B1", "item_id": "TC-100", "quantity": 12}],
        "accounts": [{"username": "exp9", "password": "exp9-password", "role": "expediter", "node_id": "B2"}]
    });
    let (status, body) = server.post("/api/v1/admin/network", &update, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"nodes": 0, "items": 0, "stock": 1, "customers": 0, "accounts": 1}));
    let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
    assert_eq!(stock_of(&stock, "TC-100"), Some(12));
    server.login("exp9", "exp9-password", None).await;

    // Only an admin may import.
    let (status, body) = server.post("/api/v1/admin/network", &update, Some(&dispatcher)).await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, error("forbidden", "this endpoint is for admin; disp is a dispatcher"))
    );
}

#[tokio::test]
async fn login_works_over_tls_with_the_generated_ca_and_only_with_it() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    assert!(server.url.starts_with("https://127.0.0.1:"));
    let (status, body) = server.get("/healthz", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));

    let pair = server.login("exp1", DEMO_PASSWORD, Some("handheld-7")).await;
    assert_eq!(pair.expires_in, 900);
    assert_eq!(pair.device_id.as_str(), "handheld-7");
    let (status, me) = server.get("/api/v1/auth/me", Some(&pair.access_token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"username": "exp1", "role": "expediter", "device_id": "handheld-7", "node_id": "B1"}));

    // A client that trusts another CA cannot talk to the server.
    let stranger = Sandbox::new();
    let _other = stranger.start(&[]);
    let untrusting = tls_client(&stranger.certs_dir().join("ca.pem")).expect("client");
    assert!(untrusting.get(format!("{}/healthz", server.url)).send().await.is_err());
    // Nor does plain HTTP reach a TLS port.
    let plain = server.url.replace("https://", "http://");
    let answer = reqwest::get(format!("{plain}/healthz")).await;
    assert!(answer.map(|r| r.status() != StatusCode::OK).unwrap_or(true));
}

#[tokio::test]
async fn plain_http_is_served_only_when_asked_for() {
    let sandbox = Sandbox::new();
    let server = sandbox.start(&["--http", "--demo"]);
    assert!(server.url.starts_with("http://127.0.0.1:"));
    let (status, _) = server.get("/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!sandbox.certs_dir().join("ca.pem").exists(), "no TLS material is made for --http");
}

/// Signs claims with the test servers' key (or another one).
fn forge(claims: &Value, key: &str, algorithm: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, &EncodingKey::from_secret(key.as_bytes())).expect("sign")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims like the server's own for the demo dispatcher, with one session.
fn claims(sid: &str, overrides: Value) -> Value {
    let mut claims = json!({
        "sub": "disp", "role": "dispatcher", "sid": sid, "dev": "dev-x",
        "iat": now(), "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE
    });
    if let (Some(target), Some(extra)) = (claims.as_object_mut(), overrides.as_object()) {
        for (key, value) in extra {
            target.insert(key.clone(), value.clone());
        }
    }
    claims
}

#[tokio::test]
async fn bad_credentials_and_bad_tokens_are_refused_with_401() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();

    let (status, body) =
        server.post("/api/v1/auth/login", &json!({"username": "disp", "password": "wrong-password"}), None).await;
    assert_eq!((status, body), (StatusCode::UNAUTHORIZED, error("invalid_credentials", "wrong username or password")));
    let (status, body) =
        server.post("/api/v1/auth/login", &json!({"username": "nobody", "password": DEMO_PASSWORD}), None).await;
    assert_eq!((status, body), (StatusCode::UNAUTHORIZED, error("invalid_credentials", "wrong username or password")));

    let good = server.token("disp").await;
    let sid = uuid_of(&good);
    let (status, _) = server
        .get("/api/v1/nodes/B1/stock", Some(&forge(&claims(&sid, json!({})), JWT_SECRET, Algorithm::HS256)))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a token made like the server's own is accepted (the test's forgeries are meaningful)"
    );

    let (header, rest) = good.split_once('.').expect("a JWT");
    let (payload, signature) = rest.split_once('.').expect("a JWT");
    let mut tampered_claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    tampered_claims["role"] = json!("admin");
    let tampered = format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(tampered_claims.to_string()));
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(&sid, json!({})).to_string())
    );
    let invalid = error("invalid_token", "the access token is invalid");
    let cases: Vec<(&str, String, Value)> = vec![
        ("tampered payload", tampered, invalid.clone()),
        (
            "signed with another key",
            forge(&claims(&sid, json!({})), "another-key-another-key-another-key!", Algorithm::HS256),
            invalid.clone(),
        ),
        ("alg none", alg_none, invalid.clone()),
        ("another algorithm", forge(&claims(&sid, json!({})), JWT_SECRET, Algorithm::HS512), invalid.clone()),
        (
            "expired",
            forge(&claims(&sid, json!({"iat": now() - 3600, "exp": now() - 1800})), JWT_SECRET, Algorithm::HS256),
            error("token_expired", "the access token has expired"),
        ),
        (
            "exp as a string",
            forge(&claims(&sid, json!({"exp": (now() + 600).to_string()})), JWT_SECRET, Algorithm::HS256),
            invalid.clone(),
        ),
        ("no exp", forge(&claims(&sid, json!({"exp": null})), JWT_SECRET, Algorithm::HS256), invalid.clone()),
        (
            "another audience",
            forge(&claims(&sid, json!({"aud": "elsewhere"})), JWT_SECRET, Algorithm::HS256),
            invalid.clone(),
        ),
        (
            "another issuer",
            forge(&claims(&sid, json!({"iss": "someone-else"})), JWT_SECRET, Algorithm::HS256),
            invalid.clone(),
        ),
        ("garbage", "not-a-jwt".to_owned(), invalid.clone()),
    ];
    for (name, token, expected) in cases {
        let (status, body) = server.get("/api/v1/nodes/B1/stock", Some(&token)).await;
        assert_eq!((status, body), (StatusCode::UNAUTHORIZED, expected), "{name}");
    }
    let (status, body) = server.get("/api/v1/nodes/B1/stock", None).await;
    assert_eq!((status, body), (StatusCode::UNAUTHORIZED, error("missing_token", "no bearer token; log in first")));
}

/// The session id inside a token the server issued.
fn uuid_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    claims["sid"].as_str().expect("sid").to_owned()
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_session() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let first = server.login("svc1", DEMO_PASSWORD, Some("hh-svc1")).await;

    let (status, second) =
        server.post("/api/v1/auth/refresh", &json!({"refresh_token": first.refresh_token}), None).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["device_id"], "hh-svc1");
    assert_ne!(second["refresh_token"], json!(first.refresh_token));
    let second_access = second["access_token"].as_str().expect("token").to_owned();
    let (status, _) = server.get("/api/v1/auth/me", Some(&second_access)).await;
    assert_eq!(status, StatusCode::OK);

    // The retired token comes back: someone else holds the session's tokens.
    let (status, body) =
        server.post("/api/v1/auth/refresh", &json!({"refresh_token": first.refresh_token}), None).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            error("refresh_token_reused", "this refresh token was already used; the session is revoked, log in again")
        )
    );
    let (status, body) =
        server.post("/api/v1/auth/refresh", &json!({"refresh_token": second["refresh_token"]}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the successor dies with the session: {body}");
    let (status, body) = server.get("/api/v1/auth/me", Some(&second_access)).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, error("session_revoked", "this session has been revoked; log in again"))
    );
}

#[tokio::test]
async fn a_revoked_device_is_cut_off_and_its_refresh_token_refused() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let lost = server.login("exp1", DEMO_PASSWORD, Some("lost-handheld")).await;
    let kept = server.login("exp2", DEMO_PASSWORD, Some("kept-handheld")).await;
    let admin = server.token("admin").await;

    let (status, body) = server.post("/api/v1/admin/devices/lost-handheld/revoke", &json!({}), Some(&admin)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"device_id": "lost-handheld", "sessions_revoked": 1})));

    let (status, body) = server.post("/api/v1/auth/refresh", &json!({"refresh_token": lost.refresh_token}), None).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            error("invalid_refresh_token", "the refresh token is unknown, expired or revoked; log in again")
        )
    );
    let (status, _) = server.get("/api/v1/auth/me", Some(&lost.access_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.post("/api/v1/auth/refresh", &json!({"refresh_token": kept.refresh_token}), None).await;
    assert_eq!(status, StatusCode::OK, "other devices keep working");

    // Revocation survives a restart, and the command line can revoke too.
    let other = server.login("exp3", DEMO_PASSWORD, Some("second-lost")).await;
    assert!(server.stop().success());
    let cli = sandbox.server_command(&["revoke-device", "second-lost"]);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert_eq!(String::from_utf8_lossy(&cli.stdout), "revoked 1 session(s) of device second-lost\n");
    let server = sandbox.start(&[]);
    let (status, _) = server.get("/api/v1/auth/me", Some(&lost.access_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.post("/api/v1/auth/refresh", &json!({"refresh_token": other.refresh_token}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.get("/api/v1/auth/me", Some(&other.access_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let pair = server.login("cust1", DEMO_PASSWORD, None).await;
    assert!(pair.device_id.as_str().starts_with("dev-"), "the server names a device when the client gives none");
    let (status, body) = server.post("/api/v1/auth/logout", &json!({"refresh_token": pair.refresh_token}), None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, _) = server.get("/api/v1/auth/me", Some(&pair.access_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.post("/api/v1/auth/refresh", &json!({"refresh_token": pair.refresh_token}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_courier_calling_a_dispatcher_endpoint_gets_403() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    for (username, role) in
        [("exp1", "an expediter"), ("svc1", "a serviceman"), ("rep1", "a seller"), ("cust1", "a customer")]
    {
        let token = server.token(username).await;
        let (status, body) = server.get("/api/v1/nodes/B1/stock", Some(&token)).await;
        let message = format!("this endpoint is for dispatcher; {username} is {role}");
        assert_eq!((status, body), (StatusCode::FORBIDDEN, error("forbidden", &message)));
        let (status, _) = server.post("/api/v1/admin/devices/x/revoke", &json!({}), Some(&token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn restart_keeps_every_record_after_a_clean_stop_and_after_a_crash() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let admin = server.token("admin").await;
    let update = json!({
        "nodes": [{"id": "B7", "kind": "branch_warehouse", "name": "West"}],
        "stock": [{"node_id": "B7", "item_id": "TC-100", "quantity": 7}],
        "accounts": [{"username": "exp7", "password": "exp7-password", "role": "expediter", "node_id": "B7"}]
    });
    let (status, _) = server.post("/api/v1/admin/network", &update, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    let session = server.login("exp7", "exp7-password", Some("hh-7")).await;
    let status = server.stop();
    assert!(status.success(), "a clean stop exits 0: {status:?}");

    let server = sandbox.start(&["--demo"]);
    let dispatcher = server.token("disp").await;
    let (_, stock) = server.get("/api/v1/nodes/B7/stock", Some(&dispatcher)).await;
    assert_eq!(stock_of(&stock, "TC-100"), Some(7), "the import survived");
    let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
    assert_eq!(stock_of(&stock, "TC-100"), Some(5), "--demo does not load over an existing store");
    let (status, refreshed) =
        server.post("/api/v1/auth/refresh", &json!({"refresh_token": session.refresh_token}), None).await;
    assert_eq!(status, StatusCode::OK, "the session survived: {refreshed}");

    // Every answered write is durable: a kill -9 right after loses none of them.
    let (status, _) = server
        .post(
            "/api/v1/admin/network",
            &json!({"stock": [{"node_id": "B7", "item_id": "TC-100", "quantity": 9}]}),
            Some(&server.token("admin").await),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let crashed_session = server.login("exp7", "exp7-password", Some("hh-7b")).await;
    server.kill();
    let server = sandbox.start(&[]);
    let dispatcher = server.token("disp").await;
    let (_, stock) = server.get("/api/v1/nodes/B7/stock", Some(&dispatcher)).await;
    assert_eq!(stock_of(&stock, "TC-100"), Some(9));
    let (status, _) =
        server.post("/api/v1/auth/refresh", &json!({"refresh_token": crashed_session.refresh_token}), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        server.post("/api/v1/auth/refresh", &json!({"refresh_token": refreshed["refresh_token"]}), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_changes_nothing() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let admin = server.token("admin").await;

    let (status, body) =
        server.post_raw("/api/v1/auth/login", "application/json", b"{\"username\": ".to_vec(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_json");

    let (status, body) = server
        .post("/api/v1/auth/login", &json!({"username": "disp", "password": DEMO_PASSWORD, "remember": true}), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_json");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("unknown field `remember`")), "{body}");

    let (status, body) = server.post_raw("/api/v1/auth/login", "text/plain", b"hello".to_vec(), None).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error("unsupported_media_type", "send the body as JSON with Content-Type: application/json")
        )
    );

    let huge = vec![b' '; 70 * 1024];
    let (status, body) = server.post_raw("/api/v1/auth/login", "application/json", huge, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) =
        server.post_raw("/api/v1/admin/network", "application/json", vec![0xff, 0xfe, b'{'], Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_json");

    let (status, body) = server.post("/api/v1/admin/network", &json!({"nodes": [], "extra": 1}), Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = server.post("/api/v1/admin/devices/bad%20id/revoke", &json!({}), Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_path");

    let (status, body) = server.get("/api/v1/no/such/thing", None).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no such endpoint")));
    let (status, body) = server.get("/api/v1/auth/login", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::METHOD_NOT_ALLOWED, error("method_not_allowed", "this endpoint does not take that method"))
    );

    // None of it changed the store.
    let dispatcher = server.token("disp").await;
    let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
    assert_eq!(stock_of(&stock, "TC-100"), Some(5));
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_account_from_one_address() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let wrong = json!({"username": "rep2", "password": "guess-guess"});
    for _ in 0..10 {
        let (status, _) = server.post("/api/v1/auth/login", &wrong, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response =
        server.client.post(format!("{}/api/v1/auth/login", server.url)).json(&wrong).send().await.expect("answer");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    // From this address even the right password waits now; other accounts do
    // not (from elsewhere, the owner does not either: tests/e2e/security.rs).
    let (status, _) =
        server.post("/api/v1/auth/login", &json!({"username": "rep2", "password": DEMO_PASSWORD}), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    server.login("rep1", DEMO_PASSWORD, None).await;
}

#[tokio::test]
async fn passwords_and_tokens_stay_out_of_the_log() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let admin = server.token("admin").await;
    let account = json!({"accounts": [{"username": "exp8", "password": "imported-secret-pass", "role": "expediter", "node_id": "B1"}]});
    let (status, _) = server.post("/api/v1/admin/network", &account, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        server.post("/api/v1/auth/login", &json!({"username": "exp8", "password": "wrong-secret-guess"}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let pair = server.login("exp8", "imported-secret-pass", None).await;
    let (status, _) = server.post("/api/v1/auth/refresh", &json!({"refresh_token": pair.refresh_token}), None).await;
    assert_eq!(status, StatusCode::OK);
    let log = server.log();
    assert!(log.contains("login"), "the log is captured: {log}");
    for secret in ["imported-secret-pass", "wrong-secret-guess", &pair.access_token, &pair.refresh_token, JWT_SECRET] {
        assert!(!log.contains(secret), "secret {secret:?} in the log");
    }
}
