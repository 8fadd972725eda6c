//! Several server instances on one PostgreSQL database, with real faults:
//! an instance killed in the middle of the couriers' syncs, then the database
//! cut off and brought back. Runs when `HANDOVER_TEST_POSTGRES` names a
//! PostgreSQL server (CI's does), whatever backend the rest of the run is on.

use std::{collections::HashSet, process::Stdio, time::Duration};

use handover_server::store::postgres::ScratchDatabase;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{base_network, Sandbox, TestServer};

const COURIERS: usize = 4;
const PER_COURIER: usize = 25;
const STOCK: u64 = 1_000;

/// A network of `COURIERS` expediters at branch B1, with plenty of stock.
fn network() -> Value {
    let mut network = base_network();
    network["stock"][0]["quantity"] = json!(STOCK);
    let accounts = network["accounts"].as_array_mut().expect("accounts");
    for k in 2..=COURIERS {
        accounts.push(json!({"username": format!("exp{k}"), "password": format!("exp{k}-password"), "role": "expediter", "node_id": "B1"}));
    }
    network
}

/// Two `serve` processes on a scratch database holding the network; `None`
/// without a PostgreSQL server to make it on.
fn two_instances() -> Option<(Sandbox, TestServer, TestServer)> {
    let sandbox = Sandbox::on_database(ScratchDatabase::from_env()?);
    let file = sandbox.write_network("instances.json", &network());
    assert!(sandbox.server_command(&["import", file.to_str().expect("path")]).status.success());
    let (first, second) = (sandbox.start(&[]), sandbox.start(&[]));
    Some((sandbox, first, second))
}

/// A courier's agent, logged in with both instances' addresses (in the
/// order given); returns the ids of what it captured, one per delivery it holds.
fn courier_captures(sandbox: &Sandbox, k: usize, servers: [&str; 2]) -> Vec<String> {
    let (name, ca) = (format!("exp{k}"), sandbox.certs_dir().join("ca.pem"));
    let ca = ca.to_str().expect("a UTF-8 path");
    let args =
        ["login", "--server", servers[0], "--server", servers[1], "--ca", ca, "--username", &name, "--password-stdin"];
    let login = sandbox.agent(&name, &args, Some(&format!("{name}-password\n")));
    assert!(login.status.success(), "login of {name}: {}", String::from_utf8_lossy(&login.stderr));
    sandbox.agent_ok(&name, &["pull"]);
    let held: Vec<Value> = serde_json::from_str(&sandbox.agent_ok(&name, &["list", "--json"])).expect("json");
    held.iter()
        .map(|assignment| {
            let id = assignment["delivery_id"].as_str().expect("a delivery id");
            let out = sandbox.agent_ok(&name, &["confirm", id, "--recipient", "Desk", "--empties", "1"]);
            out.trim().to_owned()
        })
        .collect()
}

/// Syncs every courier at once, each `sync` process to its end; the exit
/// statuses, in courier order.
fn sync_all(sandbox: &Sandbox, during: impl FnOnce()) -> Vec<bool> {
    let children: Vec<_> = (1..=COURIERS)
        .map(|k| {
            sandbox
                .agent_command(&format!("exp{k}"), &["sync", "--batch-size", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the agent starts")
        })
        .collect();
    during();
    children.into_iter().map(|mut child| child.wait().expect("the agent ends").success()).collect()
}

fn queued(sandbox: &Sandbox, k: usize) -> u64 {
    let status: Value =
        serde_json::from_str(&sandbox.agent_ok(&format!("exp{k}"), &["status", "--json"])).expect("json");
    status["queued"].as_u64().expect("a count")
}

/// What the database holds of the confirmations sent.
struct Tally {
    delivered: usize,
    with_their_proof: usize,
    units_handed_over: u64,
    balanced: bool,
}

async fn tally(server: &TestServer, receipts: usize, sent: &HashSet<String>) -> Tally {
    let dispatcher = server.login("disp", "disp-password", None).await.access_token;
    let (mut delivered, mut with_their_proof) = (0, 0);
    for n in 1..=receipts {
        let (_, receipt) = server.get(&format!("/api/v1/receipts/R-{n:06}"), Some(&dispatcher)).await;
        delivered += usize::from(receipt["delivered"] == true);
        with_their_proof +=
            usize::from(receipt["proof"]["confirmation_id"].as_str().is_some_and(|id| sent.contains(id)));
    }
    let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
    let on_hand = stock["items"][0]["on_hand"].as_u64().expect("on hand");
    let (_, audit) = server.get("/api/v1/stock/audit", Some(&dispatcher)).await;
    Tally { delivered, with_their_proof, units_handed_over: STOCK - on_hand, balanced: audit["balanced"] == true }
}

#[tokio::test]
async fn two_instances_on_one_database_lose_nothing_when_one_is_killed_and_the_database_goes_away() {
    let Some((sandbox, first, second)) = two_instances() else {
        eprintln!("skipped: HANDOVER_TEST_POSTGRES is not set");
        return;
    };

    // Orders confirmed through both instances at once: one numbering.
    let receipts = COURIERS * PER_COURIER;
    let tokens = [
        first.login("disp", "disp-password", None).await.access_token,
        second.login("disp", "disp-password", None).await.access_token,
    ];
    let placed = futures::future::join_all((0..receipts).map(|i| {
        let (server, token) = if i % 2 == 0 { (&first, &tokens[0]) } else { (&second, &tokens[1]) };
        server.confirm_order(token, "C1", "TC-100", 1)
    }))
    .await;
    let expected: HashSet<String> = (1..=receipts).map(|n| format!("R-{n:06}")).collect();
    assert_eq!(placed.into_iter().collect::<HashSet<_>>(), expected, "receipt numbers: unique and contiguous");
    // Both instances plan at once (beside the planners that confirms wake):
    // the couriers below hold each delivery once between them.
    tokio::join!(first.plan(&tokens[0]), second.plan(&tokens[1]));

    // Half the couriers try the first instance first, half the second.
    let (first_url, second_url) = (first.url.clone(), second.url.clone());
    let mut sent = HashSet::new();
    for k in 1..=COURIERS {
        let servers = if k % 2 == 1 {
            [first_url.as_str(), second_url.as_str()]
        } else {
            [second_url.as_str(), first_url.as_str()]
        };
        sent.extend(courier_captures(&sandbox, k, servers));
    }
    assert_eq!(sent.len(), receipts, "every receipt planned once, its delivery held by one courier");

    // 1. The first instance is killed (SIGKILL) while the couriers sync.
    let answered_before_the_kill = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let synced = {
        let answered = std::sync::Arc::clone(&answered_before_the_kill);
        sync_all(&sandbox, move || {
            let mut watcher = std::process::Command::new("sleep").arg("60").spawn().expect("a process to wait beside");
            first.wait_for_batches(3, &mut watcher, 20);
            let _ = watcher.kill();
            let _ = watcher.wait();
            answered.store(first.answered_batches(), std::sync::atomic::Ordering::SeqCst);
            first.kill();
        })
    };
    // Its couriers send their 50 captures in batches of 2: it died with most unsent.
    let answered = answered_before_the_kill.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("the first instance answered {answered} batch(es) before it was killed");
    assert!((1..COURIERS / 2 * PER_COURIER / 2).contains(&(answered as usize)), "killed mid-sync: {answered} batches");
    let mut lost_in_kill = Vec::new();
    for (k, ok) in synced.iter().enumerate() {
        if !ok || queued(&sandbox, k + 1) > 0 {
            lost_in_kill.push(k + 1);
        }
    }
    assert!(lost_in_kill.is_empty(), "couriers {lost_in_kill:?} did not fail over and finish");

    // 2. The database goes away: the survivor says 503, and recovers alone.
    let database = sandbox.database().expect("the sandbox's database");
    database.cut_off().expect("the database cut off");
    let (status, body) = second.get("/api/v1/receipts?limit=1", Some(&tokens[1])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    let during_outage = sandbox.agent("exp1", &["sync"], None);
    assert!(!during_outage.status.success(), "a sync cannot succeed without the database");
    tokio::time::sleep(Duration::from_secs(3)).await;
    database.bring_back().expect("the database back");
    let mut recovered = false;
    for _ in 0..100 {
        if second.get("/api/v1/receipts?limit=1", Some(&tokens[1])).await.0 == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the instance answers again once the database is back, without a restart");
    for k in 1..=COURIERS {
        sandbox.agent_ok(&format!("exp{k}"), &["sync"]);
        assert_eq!(queued(&sandbox, k), 0, "exp{k}'s outbox is empty");
    }

    let tally = tally(&second, receipts, &sent).await;
    let lost = receipts - tally.with_their_proof;
    let applied_twice = tally.units_handed_over.saturating_sub(receipts as u64);
    eprintln!(
        "two instances, one killed mid-sync, then the database cut off for 3 s: confirmations sent {}, accepted {}, lost {lost}, applied twice {applied_twice}",
        sent.len(),
        tally.delivered
    );
    assert_eq!((tally.delivered, lost, applied_twice), (receipts, 0, 0));
    assert!(tally.balanced, "the stock ledger replays to the balances");
}

#[tokio::test]
async fn a_device_revoked_through_one_instance_is_refused_by_the_other_within_a_second() {
    // The sandbox holds the database: kept to the end.
    let Some((_sandbox, first, second)) = two_instances() else {
        eprintln!("skipped: HANDOVER_TEST_POSTGRES is not set");
        return;
    };
    let courier = second.login("exp1", "exp1-password", Some("hh-lost")).await.access_token;
    // The second instance has just checked the session: it is cached as live.
    assert_eq!(second.get("/api/v1/sync/assignments", Some(&courier)).await.0, StatusCode::OK);

    let admin = first.login("admin", "admin-password", None).await.access_token;
    let (status, body) = first.post("/api/v1/admin/devices/hh-lost/revoke", &json!({}), Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = first.get("/api/v1/sync/assignments", Some(&courier)).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::UNAUTHORIZED, &json!("session_revoked")), "at once here");

    // The other instance trusts what it read for at most REVOCATION_STALENESS
    // (one second); past that it asks the database again.
    tokio::time::sleep(handover_server::auth::REVOCATION_STALENESS + Duration::from_millis(200)).await;
    let (status, body) = second.get("/api/v1/sync/assignments", Some(&courier)).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::UNAUTHORIZED, &json!("session_revoked")), "{body}");
}
