//! The day's exceptions (SPEC, "The day's exceptions") end to end: a delivery
//! whose goods are still on their way, a short hand-over and its follow-up, a
//! failed attempt sent again, cancellations by a dispatcher and by a customer,
//! a reversed confirmation, a batch with one malformed element, and what the
//! dashboard says a handheld still holds. The real server and agent binaries,
//! over real TLS, on whichever store the run is on. Where a refusal is said to
//! change nothing, the stock (and, where it matters, the ledger's entry count)
//! is read before and after: "nothing changes" is a claim about the ledger.

use std::process::Output;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    authz::page_session,
    helpers::{base_network, error, Sandbox, TestServer, DEMO_PASSWORD},
};

/// A confirmation id as the agent makes them (a UUID), numbered for reading.
fn confirmation_id(n: u32) -> String {
    format!("01936a00-0000-7000-8000-{n:012}")
}

/// A `delivered` confirmation of `quantity` units captured under `version`.
fn handed_over(id: &str, delivery: &str, version: u64, quantity: u32) -> Value {
    json!({
        "confirmation_id": id, "delivery_id": delivery, "version": version, "outcome": "delivered",
        "quantity": quantity, "recipient": "Front desk", "captured_at": "2030-05-06T10:00:00Z"
    })
}

/// A `failed` confirmation: nobody at the door.
fn nobody_in(id: &str, delivery: &str, version: u64) -> Value {
    json!({
        "confirmation_id": id, "delivery_id": delivery, "version": version, "outcome": "failed",
        "reason": "customer_absent", "quantity": 0, "captured_at": "2030-05-06T10:05:00Z"
    })
}

/// Pushes `confirmations` as the courier of `token` from `device`; returns
/// the per-item results whole, messages included.
async fn push_results(server: &TestServer, token: &str, device: &str, confirmations: Vec<Value>) -> Vec<Value> {
    let body = json!({"device_id": device, "confirmations": confirmations});
    let (status, answer) = server.post("/api/v1/sync/confirmations", &body, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["results"].as_array().expect("one result per confirmation").clone()
}

/// `(status, code)` of each result, for comparing a batch's answer at a glance.
fn verdicts(results: &[Value]) -> Vec<(&str, Option<&str>)> {
    results.iter().map(|r| (r["status"].as_str().unwrap_or_default(), r["code"].as_str())).collect()
}

/// `(on hand, reserved)` of `item` at `node`, as the dispatcher reads it.
async fn stock_at(server: &TestServer, dispatcher: &str, node: &str, item: &str) -> (u64, u64) {
    let (status, stock) = server.get(&format!("/api/v1/nodes/{node}/stock"), Some(dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{stock}");
    let level = stock["items"].as_array().expect("items").iter().find(|level| level["item_id"] == item);
    level.map_or((0, 0), |level| {
        (level["on_hand"].as_u64().expect("on hand"), level["reserved"].as_u64().expect("reserved"))
    })
}

/// The stock audit: whether the ledger replays to the balances, and how many
/// entries it has (a change that "changes nothing" adds none).
async fn ledger(server: &TestServer, dispatcher: &str) -> (bool, u64) {
    let (status, audit) = server.get("/api/v1/stock/audit", Some(dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    (audit["balanced"] == true, audit["ledger_entries"].as_u64().expect("an entry count"))
}

/// Who holds `id` now, as the dispatcher sees it.
async fn assignee_of(server: &TestServer, dispatcher: &str, id: &str) -> String {
    let delivery = server.delivery(dispatcher, id).await;
    delivery["assignee"].as_str().unwrap_or_else(|| panic!("{id} has no courier: {delivery}")).to_owned()
}

/// A demo server on which the dispatcher ordered and planned one delivery,
/// D-000001 of `quantity` TC-100 for `customer`. Returns the server, the
/// dispatcher's token and the courier who holds the delivery.
async fn one_delivery(sandbox: &Sandbox, customer: &str, quantity: u32) -> (TestServer, String, String) {
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, customer, "TC-100", quantity).await;
    server.plan(&dispatcher).await;
    let courier = assignee_of(&server, &dispatcher, "D-000001").await;
    (server, dispatcher, courier)
}

/// Logs `courier`'s handheld (its data dir named after the courier) in as
/// `device`, and pulls its assignments.
fn handheld(sandbox: &Sandbox, server: &TestServer, courier: &str, device: &str) {
    let login = sandbox.agent_login(courier, &server.url, courier, DEMO_PASSWORD, Some(device));
    assert!(login.status.success(), "login of {courier}: {}", String::from_utf8_lossy(&login.stderr));
    sandbox.agent_ok(courier, &["pull"]);
}

/// What `courier`'s handheld lists, from its local copy.
fn listed(sandbox: &Sandbox, courier: &str) -> Vec<Value> {
    serde_json::from_str(&sandbox.agent_ok(courier, &["list", "--json"])).expect("a JSON list")
}

/// `handover-agent sync --json`: the report of the push and the pull.
fn synced(sandbox: &Sandbox, courier: &str) -> Value {
    serde_json::from_str(&sandbox.agent_ok(courier, &["sync", "--json"])).expect("a JSON report")
}

/// The error an agent command that must be refused prints.
fn refusal(output: &Output) -> String {
    assert!(!output.status.success(), "refused, yet: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_delivery_whose_goods_are_on_their_way_cannot_be_confirmed_until_its_legs_are_issued() {
    let sandbox = Sandbox::new();
    // 12 units: more than B1 (5) or B2 (10) hold, so the master warehouse ships via B1.
    let (server, dispatcher, courier) = one_delivery(&sandbox, "C1", 12).await;
    assert_eq!(server.delivery(&dispatcher, "D-000001").await["source_node"], "MW");
    handheld(&sandbox, &server, &courier, "hh-way");
    let pulled = listed(&sandbox, &courier);
    assert_eq!((&pulled[0]["status"], &pulled[0]["pickup_node"]), (&json!("upcoming"), &json!("B1")), "{pulled:?}");

    // The handheld offers no capture for it.
    for args in [
        &["confirm", "D-000001", "--recipient", "Front desk"][..],
        &["fail", "D-000001", "--reason", "customer_absent"][..],
    ] {
        let said = refusal(&sandbox.agent(&courier, args, None));
        assert!(said.contains("D-000001 is on its way to B1"), "{args:?}: {said}");
    }
    let status: Value = serde_json::from_str(&sandbox.agent_ok(&courier, &["status", "--json"])).expect("json");
    assert_eq!(status["queued"], 0, "nothing was saved");

    // The server refuses one pushed all the same, and nothing moves.
    let stock_before =
        (stock_at(&server, &dispatcher, "MW", "TC-100").await, stock_at(&server, &dispatcher, "B1", "TC-100").await);
    let ledger_before = ledger(&server, &dispatcher).await;
    let token = server.login(&courier, DEMO_PASSWORD, Some("hh-api")).await.access_token;
    let early =
        vec![handed_over(&confirmation_id(1), "D-000001", 1, 12), nobody_in(&confirmation_id(2), "D-000001", 1)];
    let results = push_results(&server, &token, "hh-api", early.clone()).await;
    assert_eq!(verdicts(&results), vec![("rejected", Some("not_ready")), ("rejected", Some("not_ready"))]);
    for result in &results {
        let message = result["message"].as_str().unwrap_or_default();
        assert!(message.contains("D-000001 is still on its way to B1"), "{message}");
    }
    let stock_after =
        (stock_at(&server, &dispatcher, "MW", "TC-100").await, stock_at(&server, &dispatcher, "B1", "TC-100").await);
    assert_eq!(stock_after, stock_before);
    assert_eq!(stock_after, ((40, 12), (5, 0)), "reserved at the master warehouse, nothing at B1 yet");
    assert_eq!(ledger(&server, &dispatcher).await, ledger_before, "not one ledger entry");
    let untouched = server.delivery(&dispatcher, "D-000001").await;
    assert_eq!(
        (&untouched["status"], &untouched["version"], &untouched["assignee"], &untouched["attempts"]),
        (&json!("upcoming"), &json!(1), &json!(courier), &json!([]))
    );
    let legs: Vec<&Value> = untouched["legs"].as_array().expect("legs").iter().map(|leg| &leg["status"]).collect();
    assert_eq!(legs, [&json!("planned"), &json!("planned")]);
    assert_eq!(server.receipt(&dispatcher, "R-000001").await["delivered"], false);

    // The goods move to B1: now it is ready, and the courier delivers it.
    let (status, issued) = server.post("/api/v1/legs/D-000001-L1/issue", &json!({}), Some(&dispatcher)).await;
    assert_eq!((status, &issued["status"]), (StatusCode::OK, &json!("ready")), "{issued}");
    sandbox.agent_ok(&courier, &["pull"]);
    sandbox.agent_ok(&courier, &["confirm", "D-000001", "--recipient", "Front desk"]);
    let report = synced(&sandbox, &courier);
    assert_eq!((&report["accepted"], &report["rejected"]), (&json!(1), &json!(0)), "{report}");
    let done = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!((&done["delivered"], &done["delivered_quantity"]), (&json!(true), &json!(12)));
    assert_eq!(stock_at(&server, &dispatcher, "MW", "TC-100").await, (28, 0));
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (5, 0), "12 in through B1, 12 out to C1");
    assert!(ledger(&server, &dispatcher).await.0, "the ledger stays balanced");

    // An id once answered keeps its first outcome, even now that the goods are there.
    let again = push_results(&server, &token, "hh-api", early).await;
    assert_eq!(verdicts(&again), vec![("rejected", Some("not_ready")), ("rejected", Some("not_ready"))]);
}

#[tokio::test]
async fn a_short_delivery_counts_its_units_and_a_follow_up_of_the_same_courier_carries_the_rest() {
    let sandbox = Sandbox::new();
    let (server, dispatcher, courier) = one_delivery(&sandbox, "C2", 4).await; // B2, which holds 10
    handheld(&sandbox, &server, &courier, "hh-short");

    sandbox.agent_ok(&courier, &["confirm", "D-000001", "--recipient", "Front desk", "--quantity", "1"]);
    let report = synced(&sandbox, &courier);
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(1), &json!(0)), "{report}");

    let short = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!(
        (&short["delivered"], &short["delivered_quantity"], &short["delivery_id"], &short["deliveries"]),
        (&json!(false), &json!(1), &json!("D-000001-2"), &json!(["D-000001", "D-000001-2"]))
    );
    assert_eq!(stock_at(&server, &dispatcher, "B2", "TC-100").await, (9, 3), "the rest is reserved again at once");
    let rest = server.delivery(&dispatcher, "D-000001-2").await;
    assert_eq!(
        (&rest["quantity"], &rest["assignee"], &rest["status"], &rest["follow_up_of"], &rest["source_node"]),
        (&json!(3), &json!(courier), &json!("ready"), &json!("D-000001"), &json!("B2"))
    );

    // The sync's pull brought the follow-up to the handheld.
    let follow_up = listed(&sandbox, &courier).into_iter().find(|a| a["delivery_id"] == "D-000001-2");
    let follow_up = follow_up.expect("the follow-up is on the handheld");
    assert_eq!((&follow_up["quantity"], &follow_up["status"]), (&json!(3), &json!("ready")));
    sandbox.agent_ok(&courier, &["confirm", "D-000001-2", "--recipient", "Front desk"]);
    let report = synced(&sandbox, &courier);
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(1), &json!(0)), "{report}");

    let whole = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!((&whole["delivered"], &whole["delivered_quantity"]), (&json!(true), &json!(4)));
    assert_eq!(stock_at(&server, &dispatcher, "B2", "TC-100").await, (6, 0));
    assert!(ledger(&server, &dispatcher).await.0, "the ledger stays balanced");
}

#[tokio::test]
async fn a_failed_attempt_reaches_the_dispatcher_with_its_reason_and_note_and_a_new_attempt_delivers() {
    let sandbox = Sandbox::new();
    let (server, dispatcher, courier) = one_delivery(&sandbox, "C1", 2).await;
    handheld(&sandbox, &server, &courier, "hh-door");
    let note = "Closed for lunch, card left in the letterbox";
    sandbox.agent_ok(&courier, &["fail", "D-000001", "--reason", "customer_absent", "--note", note]);
    let report = synced(&sandbox, &courier);
    assert_eq!(report["accepted"], 1, "{report}");

    let back = server.delivery(&dispatcher, "D-000001").await;
    assert_eq!((&back["assignee"], &back["status"], &back["version"]), (&Value::Null, &json!("ready"), &json!(2)));
    let attempts = back["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{back}");
    let attempt = &attempts[0];
    assert_eq!(
        (&attempt["outcome"], &attempt["reason"], &attempt["note"], &attempt["by"], &attempt["device_id"]),
        (&json!("failed"), &json!("customer_absent"), &json!(note), &json!(courier), &json!("hh-door"))
    );
    assert_eq!(
        (&attempt["version"], &attempt["quantity"], &attempt["reversed"]),
        (&json!(1), &json!(0), &json!(false))
    );
    for clock in ["captured_at", "received_at"] {
        let at = attempt[clock].as_str().unwrap_or_default();
        assert!(
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
            "{clock}: {at}"
        );
    }
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (5, 2), "still reserved for another attempt");
    assert_eq!(server.receipt(&dispatcher, "R-000001").await["delivered"], false);

    // Sent again to the same courier, who delivers it under the new version.
    let (status, again) =
        server.post("/api/v1/deliveries/D-000001/assign", &json!({"assignee": courier}), Some(&dispatcher)).await;
    assert_eq!((status, &again["version"]), (StatusCode::OK, &json!(3)), "{again}");
    sandbox.agent_ok(&courier, &["pull"]);
    sandbox.agent_ok(&courier, &["confirm", "D-000001", "--recipient", "Ms Reception"]);
    let report = synced(&sandbox, &courier);
    assert_eq!((&report["accepted"], &report["rejected"]), (&json!(1), &json!(0)), "{report}");
    assert_eq!(server.receipt(&dispatcher, "R-000001").await["delivered"], true);
    assert_eq!(server.delivery(&dispatcher, "D-000001").await["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (3, 0));
}

#[tokio::test]
async fn a_dispatcher_cancels_an_open_delivery_with_a_reason_and_its_courier_can_no_longer_confirm_it() {
    let sandbox = Sandbox::new();
    let (server, dispatcher, courier) = one_delivery(&sandbox, "C1", 3).await;
    handheld(&sandbox, &server, &courier, "hh-cancel");
    // Captured offline before the cancellation, pushed after it.
    sandbox.agent_ok(&courier, &["confirm", "D-000001", "--recipient", "Front desk"]);
    let courier_token = server.login(&courier, DEMO_PASSWORD, Some("hh-pull")).await.access_token;
    let (_, first_pull) = server.get("/api/v1/sync/assignments", Some(&courier_token)).await;
    let cursor = first_pull["cursor"].as_str().expect("a cursor").to_owned();

    // Refused, and nothing changes: no reason, a blank one, the wrong roles.
    let path = "/api/v1/deliveries/D-000001/cancel";
    let cust1 = server.token("cust1").await;
    let refusals = [
        (json!({}), &dispatcher, StatusCode::UNPROCESSABLE_ENTITY, error("invalid_reason", "say why (reason)")),
        (
            json!({"reason": "  "}),
            &dispatcher,
            StatusCode::UNPROCESSABLE_ENTITY,
            error("invalid_reason", "say why (reason)"),
        ),
        (
            json!({"reason": "not mine to cancel"}),
            &courier_token,
            StatusCode::FORBIDDEN,
            error("forbidden", &format!("this endpoint is for dispatcher or seller; {courier} is an expediter")),
        ),
        (
            json!({"reason": "changed my mind"}),
            &cust1,
            StatusCode::FORBIDDEN,
            error("forbidden", "this endpoint is for dispatcher or seller; cust1 is a customer"),
        ),
    ];
    for (body, token, status, refused) in refusals {
        assert_eq!(server.post(path, &body, Some(token.as_str())).await, (status, refused), "{body}");
    }
    let still = server.delivery(&dispatcher, "D-000001").await;
    assert_eq!((&still["status"], &still["cancelled"]), (&json!("ready"), &json!(false)));
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (5, 3));

    let reason = "the customer moved out last week";
    let (status, cancelled) = server.post(path, &json!({"reason": reason}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(
        (
            &cancelled["status"],
            &cancelled["cancelled"],
            &cancelled["cancellation"]["by"],
            &cancelled["cancellation"]["reason"]
        ),
        (&json!("cancelled"), &json!(true), &json!("disp"), &json!(reason))
    );
    let cancelled_at = cancelled["cancellation"]["at"].clone();
    assert!(cancelled_at.is_string(), "{cancelled}");
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (5, 0), "the reservation is released");
    let called_off = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!(
        (&called_off["cancelled"], &called_off["cancellation"], &called_off["delivered"]),
        (&json!(true), &json!({"by": "disp", "at": cancelled_at, "reason": reason}), &json!(false))
    );
    // Cancelling again answers as the first time.
    let (status, twice) = server.post(path, &json!({"reason": "again"}), Some(&dispatcher)).await;
    assert_eq!((status, &twice["cancellation"]), (StatusCode::OK, &cancelled["cancellation"]));

    // The courier's pull says so; the handheld's queued capture is rejected and the delivery leaves its list.
    let (_, changes) = server.get(&format!("/api/v1/sync/assignments?since={cursor}"), Some(&courier_token)).await;
    assert_eq!(changes["assignments"][0]["delivery_id"], "D-000001", "{changes}");
    assert_eq!(changes["assignments"][0]["status"], "cancelled", "{changes}");
    let report = synced(&sandbox, &courier);
    assert_eq!((&report["accepted"], &report["rejected"], &report["queued"]), (&json!(0), &json!(1), &json!(0)));
    let rejected: Value = serde_json::from_str(&sandbox.agent_ok(&courier, &["rejected", "--json"])).expect("json");
    assert_eq!((&rejected[0]["delivery_id"], &rejected[0]["code"]), (&json!("D-000001"), &json!("delivery_cancelled")));
    assert!(listed(&sandbox, &courier).iter().all(|a| a["delivery_id"] != "D-000001"), "dropped from the handheld");
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (5, 0), "nothing handed over");
    assert_eq!(server.receipt(&dispatcher, "R-000001").await["delivered"], false);
    assert!(ledger(&server, &dispatcher).await.0, "the ledger stays balanced");
}

#[tokio::test]
async fn a_customer_calls_off_its_own_receipt_only_while_nothing_moved_for_it() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    let (cust1, cust2) = (server.token("cust1").await, server.token("cust2").await);
    server.confirm_order(&cust1, "C1", "TC-100", 2).await; // R-000001: from B1
    server.confirm_order(&cust1, "C1", "TC-100", 12).await; // R-000002: from MW, through B1
    server.confirm_order(&cust2, "C2", "TC-100", 1).await; // R-000003: from B2
    server.plan(&dispatcher).await;

    // Not someone else's receipt.
    let not_hers = server.post("/api/v1/receipts/R-000003/cancel", &json!({}), Some(&cust1)).await;
    assert_eq!(not_hers, (StatusCode::NOT_FOUND, error("not_found", "no receipt R-000003")));
    assert_eq!(server.receipt(&dispatcher, "R-000003").await["cancelled"], false);

    // Nothing moved for R-000001: called off, without a body even.
    let (status, called_off) =
        server.post_raw("/api/v1/receipts/R-000001/cancel", "application/json", Vec::new(), Some(&cust1)).await;
    assert_eq!(status, StatusCode::OK, "{called_off}");
    assert_eq!(
        (&called_off["cancelled"], &called_off["cancellation"]["by"], &called_off["cancellation"]["reason"]),
        (&json!(true), &json!("cust1"), &json!("called off by the customer"))
    );
    assert_eq!(server.delivery(&dispatcher, "D-000001").await["status"], "cancelled");
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (5, 0), "its reservation is released");

    // Goods issued for R-000002: too late for the customer, not for the dispatcher.
    let (status, _) = server.post("/api/v1/legs/D-000002-L1/issue", &json!({}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK);
    let too_late_for = |id: &str| {
        let message =
            format!("receipt {id} is on its way (goods issued or delivery attempted); ask the dispatcher to cancel it");
        (StatusCode::CONFLICT, error("cancel_too_late", &message))
    };
    let too_late = server.post("/api/v1/receipts/R-000002/cancel", &json!({}), Some(&cust1)).await;
    assert_eq!(too_late, too_late_for("R-000002"));
    assert_eq!(server.receipt(&dispatcher, "R-000002").await["cancelled"], false);
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (17, 12), "the issued goods wait at B1");
    let (status, by_dispatcher) = server
        .post("/api/v1/receipts/R-000002/cancel", &json!({"reason": "order placed twice"}), Some(&dispatcher))
        .await;
    assert_eq!((status, &by_dispatcher["cancelled"]), (StatusCode::OK, &json!(true)), "{by_dispatcher}");
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (17, 0), "released where the goods are");

    // An attempt at the door for R-000003: too late as well.
    let exp3 = server
        .login(&assignee_of(&server, &dispatcher, "D-000003").await, DEMO_PASSWORD, Some("hh-b2"))
        .await
        .access_token;
    let results = push_results(&server, &exp3, "hh-b2", vec![nobody_in(&confirmation_id(1), "D-000003", 1)]).await;
    assert_eq!(verdicts(&results), vec![("accepted", None)]);
    let attempted = server.post("/api/v1/receipts/R-000003/cancel", &json!({}), Some(&cust2)).await;
    assert_eq!(attempted, too_late_for("R-000003"));
    assert_eq!(server.receipt(&dispatcher, "R-000003").await["cancelled"], false);
    assert!(ledger(&server, &dispatcher).await.0, "the ledger stays balanced");
}

#[tokio::test]
async fn a_backorder_its_customer_cancelled_is_never_planned_when_stock_arrives() {
    let sandbox = Sandbox::new();
    let file = sandbox.write_network("short-of-stock.json", &base_network()); // 5 units, at B1 only
    let imported = sandbox.server_command(&["import", file.to_str().expect("a UTF-8 path")]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let server = sandbox.start(&[]);
    let dispatcher = server.login("disp", "disp-password", None).await.access_token;
    let customer = server.login("cust1", "cust1-password", None).await.access_token;
    server.confirm_order(&customer, "C1", "TC-100", 6).await;
    server.confirm_order(&customer, "C1", "TC-100", 6).await;
    server.plan(&dispatcher).await;
    for id in ["R-000001", "R-000002"] {
        let waiting = server.receipt(&dispatcher, id).await;
        assert_eq!((&waiting["planned"], &waiting["backordered"]), (&json!(false), &json!(true)), "{waiting}");
    }

    let (status, called_off) =
        server.post("/api/v1/receipts/R-000001/cancel", &json!({"reason": "bought elsewhere"}), Some(&customer)).await;
    assert_eq!(status, StatusCode::OK, "{called_off}");
    assert_eq!(
        (&called_off["cancelled"], &called_off["cancellation"]["reason"]),
        (&json!(true), &json!("bought elsewhere"))
    );

    // The goods receipt plans the backorder still wanted, and only that one.
    let (status, arrived) =
        server.post("/api/v1/nodes/B1/stock", &json!({"item_id": "TC-100", "quantity": 10}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{arrived}");
    let again = server.plan(&dispatcher).await;
    assert_eq!((&again["planned"], &again["backordered"]), (&json!([]), &json!([])), "{again}");
    let wanted = server.receipt(&dispatcher, "R-000002").await;
    assert_eq!((&wanted["planned"], &wanted["delivery_id"]), (&json!(true), &json!("D-000002")), "{wanted}");
    let cancelled = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!(
        (&cancelled["planned"], &cancelled["delivery_id"], &cancelled["cancelled"]),
        (&json!(false), &Value::Null, &json!(true))
    );
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (15, 6), "reserved for R-000002 alone");
}

#[tokio::test]
async fn a_reversed_delivery_is_open_again_and_the_reversed_confirmation_stays_a_duplicate() {
    let sandbox = Sandbox::new();
    let (server, dispatcher, courier) = one_delivery(&sandbox, "C1", 3).await;
    let token = server.login(&courier, DEMO_PASSWORD, Some("hh-rev")).await.access_token;
    let path = "/api/v1/deliveries/D-000001/reverse";

    let not_yet = server.post(path, &json!({"reason": "typo"}), Some(&dispatcher)).await;
    let message = "delivery D-000001 is ready; only a delivered one can be reversed";
    assert_eq!(not_yet, (StatusCode::CONFLICT, error("not_delivered", message)));

    let mut mistaken = handed_over(&confirmation_id(1), "D-000001", 1, 3);
    mistaken["empties_collected"] = json!(2);
    assert_eq!(
        verdicts(&push_results(&server, &token, "hh-rev", vec![mistaken.clone()]).await),
        vec![("accepted", None)]
    );
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (2, 0));
    let (_, customer) = server.get("/api/v1/customers/C1", Some(&dispatcher)).await;
    assert_eq!(customer["empties_expected"], 1, "3 expected, 2 collected");
    let (_, entries_delivered) = ledger(&server, &dispatcher).await;

    let no_reason = server.post(path, &json!({}), Some(&dispatcher)).await;
    assert_eq!(no_reason, (StatusCode::UNPROCESSABLE_ENTITY, error("invalid_reason", "say why (reason)")));
    assert_eq!(server.receipt(&dispatcher, "R-000001").await["delivered"], true, "nothing reversed yet");

    let reason = "confirmed at the wrong address";
    let (status, reopened) = server.post(path, &json!({"reason": reason}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{reopened}");
    assert_eq!(
        (&reopened["status"], &reopened["version"], &reopened["assignee"], &reopened["attempts"][0]["reversed"]),
        (&json!("ready"), &json!(2), &json!(courier), &json!(true))
    );
    let reversal = &reopened["reversals"][0];
    assert_eq!(
        (
            &reversal["confirmation_id"],
            &reversal["quantity"],
            &reversal["empties_collected"],
            &reversal["by"],
            &reversal["reason"]
        ),
        (&json!(confirmation_id(1)), &json!(3), &json!(2), &json!("disp"), &json!(reason))
    );
    let undone = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!(
        (&undone["delivered"], &undone["delivered_quantity"], &undone["delivered_at"], &undone["proof"]),
        (&json!(false), &json!(0), &Value::Null, &Value::Null)
    );
    assert_eq!(undone["reversals"].as_array().map(Vec::len), Some(1), "{undone}");
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (5, 3), "back on hand, reserved again");
    let (_, customer) = server.get("/api/v1/customers/C1", Some(&dispatcher)).await;
    assert_eq!(customer["empties_expected"], 3, "the empties are owed again");
    let (balanced, entries_reversed) = ledger(&server, &dispatcher).await;
    assert!(balanced && entries_reversed > entries_delivered, "compensating entries, balanced");

    // The very same confirmation again is the duplicate it was, and changes nothing.
    assert_eq!(verdicts(&push_results(&server, &token, "hh-rev", vec![mistaken]).await), vec![("duplicate", None)]);
    assert_eq!(server.receipt(&dispatcher, "R-000001").await["delivered"], false);
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (5, 3));
    assert_eq!(ledger(&server, &dispatcher).await, (true, entries_reversed));

    // The courier pulls it open under the new version and delivers it again.
    let (_, pulled) = server.get("/api/v1/sync/assignments", Some(&token)).await;
    assert_eq!(
        (&pulled["assignments"][0]["status"], &pulled["assignments"][0]["version"]),
        (&json!("ready"), &json!(2))
    );
    let right = handed_over(&confirmation_id(2), "D-000001", 2, 3);
    assert_eq!(verdicts(&push_results(&server, &token, "hh-rev", vec![right]).await), vec![("accepted", None)]);
    let redone = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!((&redone["delivered"], &redone["delivered_quantity"]), (&json!(true), &json!(3)));
    assert_eq!(redone["proof"]["confirmation_id"], json!(confirmation_id(2)));
    assert_eq!(stock_at(&server, &dispatcher, "B1", "TC-100").await, (2, 0));
    assert!(ledger(&server, &dispatcher).await.0, "the ledger stays balanced");
}

#[tokio::test]
async fn a_malformed_confirmation_is_rejected_on_its_own_and_the_rest_of_its_batch_applies() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    for _ in 0..9 {
        server.confirm_order(&dispatcher, "C2", "TC-100", 1).await; // B2, whose only expediter is exp3
    }
    server.plan(&dispatcher).await;
    let exp3 = server.login("exp3", DEMO_PASSWORD, Some("hh-b2")).await.access_token;
    type Malform = fn(&mut Value);
    let cases: [(&str, Malform); 3] = [
        ("captured_at", |c| c["captured_at"] = json!("yesterday around nine")),
        ("colour", |c| c["colour"] = json!("blue")),
        ("quantity", |c| c["quantity"] = json!("one")),
    ];
    for (round, (field, malform)) in (0u32..).zip(cases) {
        let [first, middle, last] = [1, 2, 3].map(|n| format!("D-{:06}", 3 * round + n));
        let mut bad = handed_over(&confirmation_id(3 * round + 2), &middle, 1, 1);
        malform(&mut bad);
        let batch = vec![
            handed_over(&confirmation_id(3 * round + 1), &first, 1, 1),
            bad,
            handed_over(&confirmation_id(3 * round + 3), &last, 1, 1),
        ];
        let results = push_results(&server, &exp3, "hh-b2", batch).await;
        assert_eq!(
            verdicts(&results),
            vec![("accepted", None), ("rejected", Some("invalid")), ("accepted", None)],
            "{field}"
        );
        assert_eq!(results[1]["confirmation_id"], json!(confirmation_id(3 * round + 2)));
        let message = results[1]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field}: {message}");
        for (delivery_id, delivered) in [(&first, true), (&middle, false), (&last, true)] {
            let receipt_id = delivery_id.replacen('D', "R", 1);
            assert_eq!(
                server.receipt(&dispatcher, &receipt_id).await["delivered"],
                delivered,
                "{field}: {delivery_id}"
            );
        }
    }
    assert_eq!(stock_at(&server, &dispatcher, "B2", "TC-100").await, (4, 3), "six handed over, three still reserved");

    // A body that is not a batch at all is refused whole.
    for body in [json!([]), json!({"device_id": "hh-b2"}), json!({"device_id": "hh-b2", "confirmations": {"first": 1}})]
    {
        let (status, refused) = server.post("/api/v1/sync/confirmations", &body, Some(&exp3)).await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_json")),
            "{body}: {refused}"
        );
        let message = refused["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("the body is not valid for this endpoint: "), "{message}");
    }
    assert_eq!(stock_at(&server, &dispatcher, "B2", "TC-100").await, (4, 3));
}

#[tokio::test]
async fn the_dashboard_shows_nothing_queued_for_a_handheld_whose_push_emptied_its_outbox() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    for _ in 0..3 {
        server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    }
    server.plan(&dispatcher).await;
    let (one, two, three) = (
        assignee_of(&server, &dispatcher, "D-000001").await,
        assignee_of(&server, &dispatcher, "D-000002").await,
        assignee_of(&server, &dispatcher, "D-000003").await,
    );
    assert_eq!(one, three, "fewest open first");

    // One handheld pushes its whole outbox in one batch (`queued` 2, two confirmations)...
    handheld(&sandbox, &server, &one, "hh-emptied");
    for id in ["D-000001", "D-000003"] {
        sandbox.agent_ok(&one, &["confirm", id, "--recipient", "Front desk"]);
    }
    let report = synced(&sandbox, &one);
    assert_eq!((&report["accepted"], &report["queued"]), (&json!(2), &json!(0)), "{report}");
    // ...another says its outbox held three, of which it sends one.
    let token = server.login(&two, DEMO_PASSWORD, Some("hh-behind")).await.access_token;
    let one_of_three = vec![handed_over(&confirmation_id(1), "D-000002", 1, 1)];
    let body = json!({"device_id": "hh-behind", "queued": 3, "confirmations": one_of_three});
    let (status, answer) = server.post("/api/v1/sync/confirmations", &body, Some(&token)).await;
    assert_eq!((status, &answer["results"][0]["status"]), (StatusCode::OK, &json!("accepted")), "{answer}");

    let session = page_session(&server, &sandbox, Some("disp")).await;
    let page = session.get(format!("{}/dashboard", server.url)).send().await.expect("an answer");
    let page = page.text().await.expect("the dashboard");
    let cells = |device: &str| -> Vec<String> {
        let start = page.find(&format!("<tr id=\"device-{device}\">")).unwrap_or_else(|| panic!("no row for {device}"));
        let row = page[start..].split("</tr>").next().unwrap_or_default();
        row.split("<td>").skip(1).map(|cell| cell.split("</td>").next().unwrap_or_default().to_owned()).collect()
    };
    let emptied = cells("hh-emptied");
    assert_eq!((emptied[1].as_str(), emptied[3].as_str(), emptied[4].as_str()), (one.as_str(), "0", ""), "{emptied:?}");
    let behind = cells("hh-behind");
    assert_eq!((behind[1].as_str(), behind[3].as_str()), (two.as_str(), "2"), "{behind:?}");
    assert!(!behind[4].is_empty(), "queued since its push: {behind:?}");
}

/// serde's derived reader would also take a struct from a JSON array, by
/// position: such a body is refused whole, as not a batch.
#[tokio::test]
async fn a_batch_sent_as_an_array_is_refused_whole() {
    let sandbox = Sandbox::new();
    let (server, dispatcher, courier) = one_delivery(&sandbox, "C1", 1).await;
    let token = server.login(&courier, DEMO_PASSWORD, Some("hh-array")).await.access_token;
    let body = json!(["hh-array", [handed_over(&confirmation_id(1), "D-000001", 1, 1)]]);
    let (status, refused) = server.post("/api/v1/sync/confirmations", &body, Some(&token)).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("invalid_json")), "{refused}");
    assert_eq!(server.receipt(&dispatcher, "R-000001").await["delivered"], false);
}

/// An element that does not read is answered `invalid`, and its id keeps that
/// first outcome: the same id later, with other content, is refused as a
/// conflicting duplicate, never applied.
#[tokio::test]
async fn an_id_first_answered_invalid_is_never_accepted_later() {
    let sandbox = Sandbox::new();
    let (server, dispatcher, courier) = one_delivery(&sandbox, "C1", 1).await;
    let token = server.login(&courier, DEMO_PASSWORD, Some("hh-later")).await.access_token;
    let mut unreadable = handed_over(&confirmation_id(1), "D-000001", 1, 1);
    unreadable["captured_at"] = json!("soon");
    let first = push_results(&server, &token, "hh-later", vec![unreadable]).await;
    assert_eq!(verdicts(&first), vec![("rejected", Some("invalid"))]);
    let later =
        push_results(&server, &token, "hh-later", vec![handed_over(&confirmation_id(1), "D-000001", 1, 1)]).await;
    assert_eq!(verdicts(&later), vec![("rejected", Some("conflicting_duplicate"))], "{later:?}");
    assert_eq!(server.receipt(&dispatcher, "R-000001").await["delivered"], false);
}
