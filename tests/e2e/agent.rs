//! The real handheld agent against the real server: a day offline.

use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{base_network, Sandbox, TestServer, DEMO_PASSWORD};

fn text(output: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Runs exp1's agent and insists that it succeeds; returns its standard output.
fn ok(sandbox: &Sandbox, args: &[&str]) -> String {
    sandbox.agent_ok("exp1", args)
}

/// `handover-agent login` as the demo's exp1.
fn log_in(sandbox: &Sandbox, server_url: &str, device: Option<&str>) -> std::process::Output {
    sandbox.agent_login("exp1", server_url, "exp1", DEMO_PASSWORD, device)
}

#[tokio::test]
async fn a_day_offline_loses_nothing_and_syncs_when_the_server_is_back() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 2).await; // D-000001: exp1
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await; // D-000002: exp2
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await; // D-000003: exp1
    server.plan(&dispatcher).await;

    let login = log_in(&sandbox, &server.url, Some("hh-exp1"));
    assert!(login.status.success(), "{:?}", text(&login));
    assert_eq!(text(&login).0, "logged in as exp1 (expediter) on device hh-exp1\n");
    assert_eq!(ok(&sandbox, &["pull"]), "2 assignment(s) changed\n");
    let listed: Value = serde_json::from_str(&ok(&sandbox, &["list", "--json"])).expect("json");
    let ids: Vec<&str> =
        listed.as_array().expect("list").iter().map(|a| a["delivery_id"].as_str().unwrap_or("")).collect();
    assert_eq!(ids, vec!["D-000001", "D-000003"]);

    // The server goes away for the day.
    let url = server.url.clone();
    assert!(server.stop().success());
    let too_many = sandbox.agent("exp1", &["confirm", "D-000001", "--recipient", "X", "--quantity", "5"], None);
    assert!(text(&too_many).1.contains("the quantity must be from 1 to 2 for D-000001"), "{:?}", text(&too_many));
    let delivered = ok(&sandbox, &["confirm", "D-000001", "--recipient", "Ms Reception", "--empties", "2"]);
    assert_eq!(delivered.trim().len(), 36, "prints the confirmation id: {delivered}");
    ok(&sandbox, &["fail", "D-000003", "--reason", "customer_absent"]);
    let again = sandbox.agent("exp1", &["confirm", "D-000001", "--recipient", "Someone"], None);
    assert!(!again.status.success());
    assert!(text(&again).1.contains("D-000001 was already confirmed on this handheld"), "{:?}", text(&again));
    let unknown = sandbox.agent("exp1", &["confirm", "D-000002", "--recipient", "X"], None);
    assert!(text(&unknown).1.contains("D-000002 is not among this handheld's assignments"));

    let offline = sandbox.agent("exp1", &["sync"], None);
    assert!(!offline.status.success(), "sync fails while the server is away");
    let (_, stderr) = text(&offline);
    assert!(stderr.contains("cannot reach the server") && stderr.contains("2 confirmation(s) stay queued"), "{stderr}");
    let status: Value = serde_json::from_str(&ok(&sandbox, &["status", "--json"])).expect("json");
    assert_eq!((&status["queued"], &status["rejected"]), (&json!(2), &json!(0)));

    // Back (same data, same address is not needed: the agent keeps the URL it logged in with).
    let port = url.rsplit(':').next().expect("a port");
    let server = sandbox.start(&["--listen", &format!("127.0.0.1:{port}")]);
    let report: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!(
        (&report["accepted"], &report["duplicate"], &report["rejected"], &report["queued"]),
        (&json!(2), &json!(0), &json!(0), &json!(0))
    );

    let dispatcher = server.token("disp").await;
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!((&receipt["delivered"], &receipt["proof"]["device_id"]), (&json!(true), &json!("hh-exp1")));
    let (_, failed) = server.get("/api/v1/deliveries/D-000003", Some(&dispatcher)).await;
    assert_eq!((&failed["assignee"], &failed["status"]), (&Value::Null, &json!("ready")));
    let (_, receipt) = server.get("/api/v1/receipts/R-000003", Some(&dispatcher)).await;
    assert_eq!(receipt["delivered"], false);
    let (_, customer) = server.get("/api/v1/customers/C1", Some(&dispatcher)).await;
    assert_eq!(customer["empties_expected"], 2, "4 expected, 2 collected");

    // A second sync has nothing to push: nothing is applied twice.
    let report: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(0), &json!(0)));
}

#[tokio::test]
async fn a_revoked_handheld_is_told_to_log_in_again_and_keeps_its_outbox() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    server.plan(&dispatcher).await;
    let login = log_in(&sandbox, &server.url, Some("lost-1"));
    assert!(login.status.success(), "{:?}", text(&login));
    ok(&sandbox, &["pull"]);
    ok(&sandbox, &["confirm", "D-000001", "--recipient", "Front desk"]);

    let admin = server.token("admin").await;
    assert_eq!(server.post("/api/v1/admin/devices/lost-1/revoke", &json!({}), Some(&admin)).await.0, StatusCode::OK);
    let refused = sandbox.agent("exp1", &["sync"], None);
    assert!(!refused.status.success());
    let (_, stderr) = text(&refused);
    assert!(stderr.contains("log in again") && stderr.contains("nothing queued is lost"), "{stderr}");
    let status: Value = serde_json::from_str(&ok(&sandbox, &["status", "--json"])).expect("json");
    assert_eq!(status["queued"], 1, "the outbox is kept");

    // Logged in again on the same handheld, the confirmation goes through.
    let again = log_in(&sandbox, &server.url, None);
    assert!(again.status.success(), "{:?}", text(&again));
    let report: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(1), &json!(0)));
}

/// A server on a network whose only expediter, exp1, holds `deliveries`
/// deliveries of 2 units each for C1 (stock plenty), and exp1's agent logged
/// in and pulled. Returns the server and the delivery ids.
pub async fn busy_courier(sandbox: &Sandbox, deliveries: usize, env: &[(&str, &str)]) -> (TestServer, Vec<String>) {
    let mut network = base_network();
    network["stock"][0]["quantity"] = json!(STOCK);
    let file = sandbox.write_network("busy.json", &network);
    let imported = sandbox.server_command(&["import", file.to_str().expect("path")]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let server = sandbox.start_with_env(&[], env);
    let dispatcher = server.login("disp", "disp-password", None).await.access_token;
    for _ in 0..deliveries {
        server.confirm_order(&dispatcher, "C1", "TC-100", 2).await;
    }
    server.plan(&dispatcher).await;
    let login = sandbox.agent_login("exp1", &server.url, "exp1", "exp1-password", Some("hh-busy"));
    assert!(login.status.success(), "{:?}", text(&login));
    assert_eq!(ok(sandbox, &["pull"]), format!("{deliveries} assignment(s) changed\n"));
    let ids = (1..=deliveries).map(|n| format!("D-{n:06}")).collect();
    (server, ids)
}

pub const STOCK: u64 = 10_000;

/// What the server shows of `deliveries` deliveries of 2 units each (each
/// confirmed with 1 empty collected), read as the dispatcher.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    /// Receipts with the Delivered flag on.
    pub delivered: usize,
    /// Confirmations the agent reported saved that are no receipt's proof.
    pub missing_proofs: usize,
    /// Deliveries' worth of stock gone from B1 (2 units each): more than
    /// `delivered` means a confirmation moved stock twice.
    pub stock_moves: u64,
    /// Empties counted against C1: more than `delivered` means twice.
    pub empties_counted: u64,
    /// The stock ledger replays to the balances, never negative.
    pub ledger_balanced: bool,
}

pub async fn count_applied(server: &TestServer, deliveries: usize, confirmation_ids: &[String]) -> Applied {
    let dispatcher = server.login("disp", "disp-password", None).await.access_token;
    let mut proofs = std::collections::HashSet::new();
    let mut delivered = 0;
    for n in 1..=deliveries {
        let (_, receipt) = server.get(&format!("/api/v1/receipts/R-{n:06}"), Some(&dispatcher)).await;
        if receipt["delivered"] == true {
            delivered += 1;
        }
        proofs.insert(receipt["proof"]["confirmation_id"].as_str().unwrap_or_default().to_owned());
    }
    let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
    let on_hand = stock["items"][0]["on_hand"].as_u64().expect("on hand");
    let (_, customer) = server.get("/api/v1/customers/C1", Some(&dispatcher)).await;
    let expected = customer["empties_expected"].as_u64().expect("empties expected");
    let (_, audit) = server.get("/api/v1/stock/audit", Some(&dispatcher)).await;
    Applied {
        delivered,
        missing_proofs: confirmation_ids.iter().filter(|id| !proofs.contains(*id)).count(),
        stock_moves: (STOCK - on_hand) / 2,
        empties_counted: 2 * deliveries as u64 - expected,
        ledger_balanced: audit["balanced"] == true,
    }
}

/// Every delivery applied exactly once, with the proofs of `confirmation_ids`.
pub async fn assert_applied_once(server: &TestServer, deliveries: usize, confirmation_ids: &[String]) {
    let n = deliveries as u64;
    assert_eq!(
        count_applied(server, deliveries, confirmation_ids).await,
        Applied { delivered: deliveries, missing_proofs: 0, stock_moves: n, empties_counted: n, ledger_balanced: true }
    );
}

#[tokio::test]
async fn an_access_token_that_expires_mid_day_is_refreshed_by_the_agent() {
    let sandbox = Sandbox::new();
    // One second, plus the server's five seconds of leeway.
    let (server, _) = busy_courier(&sandbox, 2, &[("HANDOVER__AUTH__ACCESS_TTL_SECS", "1")]).await;
    ok(&sandbox, &["confirm", "D-000001", "--recipient", "Front desk", "--empties", "1"]);
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;

    let report: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(1), &json!(0)));
    let log = server.log();
    assert!(
        log.contains("the access token has expired") && log.contains("/api/v1/auth/refresh"),
        "refreshed once expired:\n{log}"
    );

    // The refreshed pair was kept: the next sync needs no login either.
    ok(&sandbox, &["confirm", "D-000002", "--recipient", "Front desk", "--empties", "1"]);
    let report: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(1), &json!(0)));
    assert_applied_once(&server, 2, &[]).await;
}

#[tokio::test]
async fn an_agent_killed_in_the_middle_of_confirm_saves_it_whole_or_not_at_all() {
    let sandbox = Sandbox::new();
    const DELIVERIES: usize = 16;
    let (server, deliveries) = busy_courier(&sandbox, DELIVERIES, &[]).await;
    let confirm = |id: &str| ["confirm", id, "--recipient", "Front desk", "--empties", "1"].map(str::to_owned);
    let mut reported_saved = Vec::new();
    let (mut killed_before_saving, mut killed_after_saving) = (0, 0);
    for (n, delivery) in deliveries.iter().enumerate() {
        // Spread the kills over the command's life: start-up, opening the
        // store, the write, the flush, the answer.
        let delay = std::time::Duration::from_micros((n as u64 * 2_371) % 25_000);
        let args = confirm(delivery);
        let mut child = sandbox
            .agent_command("exp1", &args.each_ref().map(String::as_str))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the agent starts");
        std::thread::sleep(delay);
        let _ = child.kill();
        let output = child.wait_with_output().expect("the killed agent is reaped");
        let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();

        // Run again to the end: it saves it now, or finds it saved already.
        let again = sandbox.agent("exp1", &args.each_ref().map(String::as_str), None);
        let (stdout, stderr) = text(&again);
        if again.status.success() {
            assert!(said.is_empty(), "{delivery}: said saved ({said}) but was not");
            killed_before_saving += 1;
            reported_saved.push(stdout.trim().to_owned());
        } else {
            assert!(stderr.contains("was already confirmed on this handheld"), "{delivery}: {stderr}");
            if !said.is_empty() {
                assert!(stderr.contains(&said), "{delivery}: saved as {said}, found {stderr}");
                reported_saved.push(said);
            }
            killed_after_saving += 1;
        }
    }
    eprintln!("kill -9 during confirm: {killed_before_saving} before the save, {killed_after_saving} after it");
    let status: Value = serde_json::from_str(&ok(&sandbox, &["status", "--json"])).expect("json");
    assert_eq!(status["queued"], json!(DELIVERIES), "one queued confirmation per delivery");

    let report: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!(
        (&report["accepted"], &report["rejected"], &report["queued"]),
        (&json!(DELIVERIES), &json!(0), &json!(0))
    );
    assert_applied_once(&server, DELIVERIES, &reported_saved).await;
}

#[tokio::test]
async fn an_agent_killed_in_the_middle_of_sync_loses_nothing_and_applies_nothing_twice() {
    let sandbox = Sandbox::new();
    const DELIVERIES: usize = 60;
    let (server, deliveries) = busy_courier(&sandbox, DELIVERIES, &[]).await;
    let mut saved = Vec::new();
    for delivery in &deliveries {
        saved.push(
            ok(&sandbox, &["confirm", delivery, "--recipient", "Front desk", "--empties", "1"]).trim().to_owned(),
        );
    }

    // One confirmation per request; each round is killed a few answered
    // requests in (plus a little), wherever the machine's speed puts that:
    // between requests, in one, or between an answer and the outbox update.
    let mut interrupted_midway = 0;
    for round in 0..8u64 {
        let mut child = sandbox
            .agent_command("exp1", &["sync", "--batch-size", "1", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the agent starts");
        let answered = server.answered_batches();
        server.wait_for_batches(answered + 3 + round % 4, &mut child, round * 3 % 7);
        let _ = child.kill();
        let _ = child.wait();
        let status: Value = serde_json::from_str(&ok(&sandbox, &["status", "--json"])).expect("json");
        let queued = status["queued"].as_u64().expect("a count");
        if queued > 0 && queued < DELIVERIES as u64 {
            interrupted_midway += 1;
        }
    }
    assert!(interrupted_midway > 0, "no kill landed in the middle of a sync: the test proved nothing");
    eprintln!("kill -9 during sync: {interrupted_midway} kill(s) with the outbox part-drained");

    // Left alone, the next sync drains what is left.
    let report: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!((&report["rejected"], &report["queued"]), (&json!(0), &json!(0)));
    let status: Value = serde_json::from_str(&ok(&sandbox, &["status", "--json"])).expect("json");
    assert_eq!(status["rejected"], json!(0), "nothing was refused: retries came back `duplicate`");
    assert_applied_once(&server, DELIVERIES, &saved).await;
}

#[tokio::test]
async fn a_delivery_reassigned_after_capture_is_honoured_and_the_later_capture_is_listed_as_rejected() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await; // D-000001: exp1
    server.plan(&dispatcher).await;
    assert!(log_in(&sandbox, &server.url, Some("hh-exp1")).status.success());
    ok(&sandbox, &["pull"]);
    // exp1 hands it over with no network, then the dispatcher, not knowing,
    // gives the delivery to exp2, who pulls it and confirms it as well.
    ok(&sandbox, &["confirm", "D-000001", "--recipient", "Front desk"]);
    let (status, _) =
        server.post("/api/v1/deliveries/D-000001/assign", &json!({"assignee": "exp2"}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(sandbox.agent_login("exp2", &server.url, "exp2", DEMO_PASSWORD, Some("hh-exp2")).status.success());
    sandbox.agent_ok("exp2", &["pull"]);
    sandbox.agent_ok("exp2", &["confirm", "D-000001", "--recipient", "Back door"]);

    // exp1 held the version it quotes: honoured. exp2 comes second.
    let first: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!((&first["accepted"], &first["rejected"]), (&json!(1), &json!(0)));
    let second: Value = serde_json::from_str(&sandbox.agent_ok("exp2", &["sync", "--json"])).expect("json");
    assert_eq!((&second["accepted"], &second["rejected"], &second["queued"]), (&json!(0), &json!(1), &json!(0)));
    let rejected: Value = serde_json::from_str(&sandbox.agent_ok("exp2", &["rejected", "--json"])).expect("json");
    assert_eq!((&rejected[0]["delivery_id"], &rejected[0]["code"]), (&json!("D-000001"), &json!("already_delivered")));
    let listed = sandbox.agent_ok("exp2", &["rejected"]);
    assert!(listed.contains("D-000001  already_delivered: "), "{listed}");

    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!(
        (&receipt["proof"]["recipient"], &receipt["proof"]["device_id"]),
        (&json!("Front desk"), &json!("hh-exp1"))
    );
}

#[tokio::test]
async fn an_agent_that_knows_two_addresses_syncs_with_the_one_that_answers() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 2).await; // D-000001: exp1
    server.plan(&dispatcher).await;
    // An address where nothing listens any more: an instance that went down.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        format!("https://127.0.0.1:{}", listener.local_addr().expect("an address").port())
    };
    let ca = sandbox.certs_dir().join("ca.pem");
    let ca = ca.to_str().expect("a UTF-8 path");
    let login = sandbox.agent(
        "exp1",
        &["login", "--server", &down, "--server", &server.url, "--ca", ca, "--username", "exp1", "--password-stdin"],
        Some(&format!("{DEMO_PASSWORD}\n")),
    );
    assert!(login.status.success(), "the second address answers the login: {:?}", text(&login));

    assert_eq!(ok(&sandbox, &["pull"]), "1 assignment(s) changed\n");
    let status: Value = serde_json::from_str(&ok(&sandbox, &["status", "--json"])).expect("json");
    assert_eq!(status["servers"], json!([server.url, down]), "the address that answered is tried first from now on");
    ok(&sandbox, &["confirm", "D-000001", "--recipient", "Front desk"]);
    let report: Value = serde_json::from_str(&ok(&sandbox, &["sync", "--json"])).expect("json");
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(1), &json!(0)));
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!(receipt["delivered"], true);

    // Both down: the sync fails, naming every address it tried.
    let url = server.url.clone();
    assert!(server.stop().success());
    let offline = sandbox.agent("exp1", &["sync"], None);
    let (_, stderr) = text(&offline);
    assert!(!offline.status.success());
    assert!(stderr.contains(&url) && stderr.contains(&down), "{stderr}");
}
