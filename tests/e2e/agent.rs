//! The real handheld agent against the real server: a day offline.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{Sandbox, DEMO_PASSWORD};

fn text(output: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Runs the agent and insists that it succeeds; returns its standard output.
fn ok(sandbox: &Sandbox, args: &[&str]) -> String {
    let output = sandbox.agent("exp1", args, None);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "handover-agent {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// `handover-agent login` as exp1 against `server`, trusting the sandbox's CA.
fn log_in(sandbox: &Sandbox, server_url: &str, device: Option<&str>) -> std::process::Output {
    let ca = sandbox.certs_dir().join("ca.pem");
    let mut args = vec![
        "login",
        "--server",
        server_url,
        "--ca",
        ca.to_str().expect("path"),
        "--username",
        "exp1",
        "--password-stdin",
    ];
    if let Some(device) = device {
        args.extend(["--device-id", device]);
    }
    // With the newline `echo` or a person would add: the agent trims it.
    sandbox.agent("exp1", &args, Some(&format!("{DEMO_PASSWORD}\n")))
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
