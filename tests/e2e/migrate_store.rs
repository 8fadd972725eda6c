//! `handover-server migrate-store` between real servers: a sled server with a
//! history made over HTTP and by a real agent is stopped, its store moved into
//! a PostgreSQL database by the command, and a server started on that
//! database; the agent logged in before the move goes on syncing.
//!
//! The servers here are started without `HANDOVER__AUTH__JWT_SECRET` (the
//! helpers' servers all sign with the fixed test key): the sled server signs
//! with its data dir's `jwt-secret`, the PostgreSQL one with the key the move
//! stored in the database, so that a token that checks on both proves the key
//! was carried over.
//!
//! Runs when `HANDOVER_TEST_POSTGRES` names a server; skipped otherwise.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use handover_server::store::postgres::{PgOptions, PgStore, ScratchDatabase, JWT_SECRET_NAME};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{base_network, binary, tls_client, Sandbox};

/// A `handover-server serve` signing with the key of its store (see the module's docs).
struct KeyedServer {
    child: Child,
    url: String,
    client: reqwest::Client,
}

impl KeyedServer {
    /// Starts a server on `listen` with `store_env` naming its store, and
    /// waits for its `listening on` line.
    fn start(sandbox: &Sandbox, data_dir: &Path, listen: &str, store_env: &[(&str, &str)]) -> KeyedServer {
        let log = std::fs::File::create(data_dir.with_extension("log")).expect("a log file");
        let mut child = Command::new(binary("handover-server"))
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .arg("--certs-dir")
            .arg(sandbox.certs_dir())
            .env_remove("HANDOVER__AUTH__JWT_SECRET")
            .env("HANDOVER__STORE__BACKEND", "sled")
            .envs(store_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("handover-server starts");
        let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
        let url =
            lines.by_ref().map_while(Result::ok).find_map(|line| line.strip_prefix("listening on ").map(str::to_owned));
        let Some(url) = url else {
            let _ = child.wait();
            panic!(
                "the server ended before listening:\n{}",
                std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
            );
        };
        // Drained, so that the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let client = tls_client(&sandbox.certs_dir().join("ca.pem")).expect("a client trusting the dev CA");
        KeyedServer { child, url, client }
    }

    /// `127.0.0.1:PORT`, to start the next server where the agent looks.
    fn address(&self) -> String {
        self.url.trim_start_matches("https://").to_owned()
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<&Value>, token: Option<&str>) -> Value {
        let (status, answer) = self.call(method, path, body, token).await;
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    /// Logs in; returns the access and the refresh token.
    async fn login(&self, username: &str, device: &str) -> (String, String) {
        let body = json!({"username": username, "password": format!("{username}-password"), "device_id": device});
        let answer = self.ok(Method::POST, "/api/v1/auth/login", Some(&body), None).await;
        let token = |field: &str| answer[field].as_str().expect("a token").to_owned();
        (token("access_token"), token("refresh_token"))
    }

    async fn order(&self, dispatcher: &str) -> String {
        let body = json!({"customer_id": "C1", "item_id": "TC-100", "quantity": 1});
        let draft = self.ok(Method::POST, "/api/v1/orders", Some(&body), Some(dispatcher)).await;
        let confirm = format!("/api/v1/orders/{}/confirm", draft["order_id"].as_str().expect("an order id"));
        let receipt = self.ok(Method::POST, &confirm, Some(&json!({})), Some(dispatcher)).await;
        receipt["receipt_id"].as_str().expect("a receipt id").to_owned()
    }

    /// SIGTERM, then waits: the graceful shutdown, which flushes the store.
    fn stop(mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|status| status.success()), "the server is signalled");
        assert!(self.child.wait().expect("the server exits").success());
    }
}

impl Drop for KeyedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn migrate_store(data_dir: &Path, target: &ScratchDatabase) -> Output {
    Command::new(binary("handover-server"))
        .args(["migrate-store", "--data-dir"])
        .arg(data_dir)
        // The URL through the variable: no password on the command line.
        .env("HANDOVER_MIGRATE_TO", target.url())
        .output()
        .expect("handover-server runs")
}

fn text(output: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// What a handheld sends for a delivered assignment.
fn delivered(delivery: &Value) -> Value {
    json!({
        "confirmation_id": "0192f1a2-0000-7000-8000-00000000d004",
        "delivery_id": delivery["delivery_id"], "version": delivery["version"], "outcome": "delivered",
        "quantity": delivery["quantity"], "recipient": "Ms Reception", "captured_at": "2031-01-01T09:00:00Z"
    })
}

/// The moved history, the agent syncing across the move, and what the copy
/// shows. `key_file`: the `jwt-secret` the sled server is given, or `None`
/// for one it makes.
async fn an_agent_keeps_syncing_across_the_move(key_file: Option<&str>) {
    let Some(target) = ScratchDatabase::from_env() else {
        eprintln!("skipped: HANDOVER_TEST_POSTGRES is unset");
        return;
    };
    let sandbox = Sandbox::new();
    let sled_dir = sandbox.path("data-sled");
    std::fs::create_dir_all(&sled_dir).expect("a data dir");
    if let Some(key) = key_file {
        std::fs::write(sled_dir.join("jwt-secret"), key).expect("a key file");
    }
    let mut network = base_network();
    network["stock"][0]["quantity"] = json!(10);
    let file = sandbox.write_network("network.json", &network);
    let imported = Command::new(binary("handover-server"))
        .args(["import", file.to_str().expect("a UTF-8 path"), "--data-dir"])
        .arg(&sled_dir)
        .env("HANDOVER__STORE__BACKEND", "sled")
        .output()
        .expect("handover-server runs");
    assert!(imported.status.success(), "{}", text(&imported));

    // History on sled: four deliveries for exp1, one confirmed by its agent,
    // one captured and queued, one confirmed over HTTP by another handheld.
    let server = KeyedServer::start(&sandbox, &sled_dir, "127.0.0.1:0", &[]);
    let key = URL_SAFE_NO_PAD
        .decode(std::fs::read_to_string(sled_dir.join("jwt-secret")).expect("the server's key file").trim())
        .expect("base64url");
    let (dispatcher, _) = server.login("disp", "desk").await;
    for _ in 0..4 {
        server.order(&dispatcher).await;
    }
    server.ok(Method::POST, "/api/v1/shipments/run", Some(&json!({})), Some(&dispatcher)).await;
    let (exp1, exp1_refresh) = server.login("exp1", "hh-http").await;
    let login = sandbox.agent_login("exp1", &server.url, "exp1", "exp1-password", Some("hh-move"));
    assert!(login.status.success(), "{}", text(&login));
    assert_eq!(sandbox.agent_ok("exp1", &["pull"]), "4 assignment(s) changed\n");
    sandbox.agent_ok("exp1", &["confirm", "D-000001", "--recipient", "Front desk"]);
    let report: Value = serde_json::from_str(&sandbox.agent_ok("exp1", &["sync", "--json"])).expect("json");
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(1), &json!(0)));
    sandbox.agent_ok("exp1", &["confirm", "D-000002", "--recipient", "Back office"]);
    let fourth = server.ok(Method::GET, "/api/v1/deliveries/D-000004", None, Some(&dispatcher)).await;
    let batch = json!({"device_id": "hh-http", "confirmations": [delivered(&fourth)]});
    let first = server.ok(Method::POST, "/api/v1/sync/confirmations", Some(&batch), Some(&exp1)).await;
    assert_eq!(first["results"][0]["status"], "accepted", "{first}");

    let in_use = migrate_store(&sled_dir, &target);
    assert!(!in_use.status.success() && text(&in_use).contains("in use by another process"), "{}", text(&in_use));
    let address = server.address();
    server.stop();

    let moved = migrate_store(&sled_dir, &target);
    assert!(moved.status.success(), "{}", text(&moved));
    let report = String::from_utf8_lossy(&moved.stdout).into_owned();
    let receipts = format!("{:<20} {:>10} {:>10}", "receipts", 4, 4);
    for line in [receipts.as_str(), "courier_feed", "JWT signing key: copied from"] {
        assert!(report.contains(line), "the report shows {line:?}:\n{report}");
    }
    let copy = PgStore::connect(&PgOptions::new(target.url())).expect("a pool");
    assert_eq!(copy.secret(JWT_SECRET_NAME).await.expect("reads"), Some(key), "the key stored is the file's");

    // On PostgreSQL, in a data dir of its own: its key can only come from the database.
    let postgres_dir = sandbox.path("data-postgres");
    let store_env = [("HANDOVER__STORE__BACKEND", "postgres"), ("HANDOVER__STORE__POSTGRES_URL", target.url())];
    let server = KeyedServer::start(&sandbox, &postgres_dir, &address, &store_env);
    assert!(!postgres_dir.join("jwt-secret").exists());
    let me = server.ok(Method::GET, "/api/v1/auth/me", None, Some(&exp1)).await;
    assert_eq!(me["username"], "exp1", "an access token signed on sled checks: {me}");
    let body = json!({"refresh_token": exp1_refresh});
    server.ok(Method::POST, "/api/v1/auth/refresh", Some(&body), None).await;

    sandbox.agent_ok("exp1", &["confirm", "D-000003", "--recipient", "Lobby"]);
    let report: Value = serde_json::from_str(&sandbox.agent_ok("exp1", &["sync", "--json"])).expect("json");
    assert_eq!(
        (&report["accepted"], &report["duplicate"], &report["rejected"], &report["queued"]),
        (&json!(2), &json!(0), &json!(0), &json!(0)),
        "the queued confirmation and the new one: {report}"
    );
    sandbox.agent_ok("exp1", &["pull"]);
    let again = server.ok(Method::POST, "/api/v1/sync/confirmations", Some(&batch), Some(&exp1)).await;
    assert_eq!(again["results"][0]["status"], "duplicate", "a confirmation made before the move: {again}");

    for receipt in ["R-000001", "R-000002", "R-000003", "R-000004"] {
        let shown = server.ok(Method::GET, &format!("/api/v1/receipts/{receipt}"), None, Some(&dispatcher)).await;
        assert_eq!(shown["delivered"], true, "{receipt}");
    }
    let stock = server.ok(Method::GET, "/api/v1/nodes/B1/stock", None, Some(&dispatcher)).await;
    let toner = &stock["items"][0];
    assert_eq!((&toner["on_hand"], &toner["reserved"]), (&json!(6), &json!(0)), "four units left B1, each once");
    let audit = server.ok(Method::GET, "/api/v1/stock/audit", None, Some(&dispatcher)).await;
    assert_eq!(audit["balanced"], true, "{audit}");
    assert_eq!(server.order(&dispatcher).await, "R-000005", "receipt numbers go on");

    server.stop();
    let twice = migrate_store(&sled_dir, &target);
    assert!(!twice.status.success() && text(&twice).contains("not empty"), "{}", text(&twice));
}

#[tokio::test]
async fn an_agent_logged_in_on_sled_keeps_syncing_on_postgres_with_the_moved_key() {
    // A key whose bytes are text: `open_store` takes it as it is (see the next test).
    let key = URL_SAFE_NO_PAD.encode("a signing key of 32 bytes or more, as text");
    an_agent_keeps_syncing_across_the_move(Some(&key)).await;
}

#[tokio::test]
async fn an_agent_keeps_syncing_when_the_sled_server_made_its_own_key() {
    an_agent_keeps_syncing_across_the_move(None).await;
}
