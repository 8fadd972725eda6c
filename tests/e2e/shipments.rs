//! Shipment processing over the API: the stock cascade from each node of the
//! demo network, the choice of courier, backorders and goods receipts, transfer
//! legs and the stock ledger, (re)assignment and who may see what, and planning
//! under concurrent runs and goods receipts.
//!
//! Planning also runs in the background after each confirmed order, so these
//! tests never rely on what one particular `POST /api/v1/shipments/run` answers
//! unless nothing else can have planned; they use the run as a barrier (it takes
//! the planning lock) and assert the resulting receipts, deliveries and stock.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error, Sandbox, TestServer};

/// Every node of the demo network.
const NODES: [&str; 7] = ["MFR", "MW", "B1", "B2", "B3", "S1", "S2"];

/// One planning run; when it returns, every receipt confirmed before it was
/// planned or backordered.
async fn run(server: &TestServer, dispatcher: &str) -> Value {
    server.plan(dispatcher).await
}

async fn assign(server: &TestServer, token: &str, id: &str, assignee: &str) -> (StatusCode, Value) {
    server.post(&format!("/api/v1/deliveries/{id}/assign"), &json!({"assignee": assignee}), Some(token)).await
}

async fn issue(server: &TestServer, dispatcher: &str, leg: &str) -> (StatusCode, Value) {
    server.post(&format!("/api/v1/legs/{leg}/issue"), &json!({}), Some(dispatcher)).await
}

/// `(on_hand, reserved)` of an item at a node; `(0, 0)` when the node never held it.
async fn stock(server: &TestServer, dispatcher: &str, node: &str, item: &str) -> (u64, u64) {
    let (status, body) = server.get(&format!("/api/v1/nodes/{node}/stock"), Some(dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "stock of {node}: {body}");
    let lines = body["items"].as_array().expect("a stock list");
    let Some(line) = lines.iter().find(|line| line["item_id"] == item) else {
        return (0, 0);
    };
    let on_hand = line["on_hand"].as_u64().expect("on hand");
    let reserved = line["reserved"].as_u64().expect("reserved");
    assert_eq!(line["available"].as_u64(), Some(on_hand - reserved), "available at {node}: {line}");
    (on_hand, reserved)
}

/// The stock ledger replays to the stored balances and never went negative.
async fn assert_audit_clean(server: &TestServer, dispatcher: &str, when: &str) {
    let (status, audit) = server.get("/api/v1/stock/audit", Some(dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert_eq!(
        (&audit["balanced"], &audit["went_negative"], &audit["mismatches"]),
        (&json!(true), &json!(false), &json!([])),
        "stock audit {when}: {audit}"
    );
}

/// Imports an item that no node holds, as the admin.
async fn import_item(server: &TestServer, item: &str) {
    let admin = server.token("admin").await;
    let file = json!({"items": [{"id": item, "name": "New cartridge", "collectable": false, "max_per_order": 10}]});
    let (status, body) = server.post("/api/v1/admin/network", &file, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "import of {item}: {body}");
}

/// Runs planning as a barrier and checks that the receipt waits as a backorder.
async fn wait_until_backordered(server: &TestServer, dispatcher: &str, id: &str) {
    // A run waits for any background run to finish, then plans what is left.
    run(server, dispatcher).await;
    assert_eq!(server.receipt(dispatcher, id).await["backordered"], true, "receipt {id} is backordered");
}

/// Legs not issued yet, from `(from, to)` hops.
fn planned_legs(delivery: &str, hops: &[(&str, &str)]) -> Value {
    hops.iter()
        .enumerate()
        .map(|(index, (from, to))| {
            json!({"leg_id": format!("{delivery}-L{}", index + 1), "from": from, "to": to, "status": "planned"})
        })
        .collect()
}

/// What planning decided for a delivery, without who carries it.
fn route(delivery: &Value) -> Value {
    json!({
        "delivery_id": delivery["delivery_id"],
        "receipt_id": delivery["receipt_id"],
        "customer_id": delivery["customer_id"],
        "item_id": delivery["item_id"],
        "quantity": delivery["quantity"],
        "source": delivery["source"],
        "source_node": delivery["source_node"],
        "delivering_node": delivery["delivering_node"],
        "legs": delivery["legs"],
        "entrusted_to": delivery.get("entrusted_to"),
        "status": delivery["status"],
    })
}

/// The route of delivery `number` for C1; it starts where the first hop does.
fn expected_route(
    number: u32,
    item: &str,
    quantity: u32,
    source: &str,
    hops: &[(&str, &str)],
    entrusted_to: Option<&str>,
    status: &str,
) -> Value {
    let delivery_id = format!("D-{number:06}");
    json!({
        "delivery_id": delivery_id,
        "receipt_id": format!("R-{number:06}"),
        "customer_id": "C1",
        "item_id": item,
        "quantity": quantity,
        "source": source,
        "source_node": hops.first().map(|(from, _)| *from),
        "delivering_node": hops.last().map(|(from, _)| *from),
        "legs": planned_legs(&delivery_id, hops),
        "entrusted_to": entrusted_to,
        "status": status,
    })
}

/// The expediter of B1 who is not `one`.
fn other_b1_expediter(one: &Value) -> &'static str {
    match one.as_str() {
        Some("exp1") => "exp2",
        Some("exp2") => "exp1",
        other => panic!("{other:?} is not an expediter of B1"),
    }
}

#[tokio::test]
async fn each_node_of_the_cascade_ships_the_orders_it_can_cover_for_customer_c1() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;

    // B1 holds 5 TC-100, B2 10, MW 40; S1 holds 6 TC-200; only MFR holds DR-300.
    let orders = [("TC-100", 3), ("TC-100", 7), ("TC-100", 15), ("TC-200", 2), ("DR-300", 1)];
    for (item, quantity) in orders {
        server.confirm_order(&dispatcher, "C1", item, quantity).await;
    }
    run(&server, &dispatcher).await;

    for number in 1..=5 {
        let body = server.receipt(&dispatcher, &format!("R-{number:06}")).await;
        assert_eq!(
            (&body["planned"], &body["backordered"], &body["delivery_id"]),
            (&json!(true), &json!(false), &json!(format!("D-{number:06}"))),
            "{body}"
        );
    }

    let from_b1 = server.delivery(&dispatcher, "D-000001").await;
    assert_eq!(route(&from_b1), expected_route(1, "TC-100", 3, "branch_1", &[("B1", "customer:C1")], None, "ready"));
    let second_b1_courier = other_b1_expediter(&from_b1["assignee"]);
    assert_eq!((&from_b1["version"], &from_b1["assignments"][0]["by"]), (&json!(1), &json!("planner")));

    let from_b2 = server.delivery(&dispatcher, "D-000002").await;
    assert_eq!(route(&from_b2), expected_route(2, "TC-100", 7, "branch_2", &[("B2", "customer:C1")], None, "ready"));
    assert_eq!(from_b2["assignee"], "exp3", "B2's only expediter");

    let from_master = server.delivery(&dispatcher, "D-000003").await;
    assert_eq!(
        route(&from_master),
        expected_route(3, "TC-100", 15, "master_warehouse", &[("MW", "B1"), ("B1", "customer:C1")], None, "upcoming")
    );
    assert_eq!(from_master["assignee"], second_b1_courier, "the B1 expediter with fewer open deliveries");

    let from_seller = server.delivery(&dispatcher, "D-000004").await;
    assert_eq!(
        route(&from_seller),
        expected_route(4, "TC-200", 2, "seller", &[("S1", "customer:C1")], Some("S1"), "ready")
    );
    assert_eq!(from_seller["assignee"], Value::Null, "the seller picks the serviceman");
    assert_eq!(from_seller["assignments"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        (&from_seller["assignments"][0]["assignee"], &from_seller["assignments"][0]["by"]),
        (&Value::Null, &json!("planner"))
    );

    let from_manufacturer = server.delivery(&dispatcher, "D-000005").await;
    assert_eq!(
        route(&from_manufacturer),
        expected_route(
            5,
            "DR-300",
            1,
            "manufacturer",
            &[("MFR", "MW"), ("MW", "B1"), ("B1", "customer:C1")],
            None,
            "upcoming"
        )
    );
    let last_courier = from_manufacturer["assignee"].as_str().expect("an expediter");
    assert!(["exp1", "exp2"].contains(&last_courier), "an expediter of B1, not {last_courier}");

    // Each source reserved the whole quantity; nothing moved yet.
    assert_eq!(stock(&server, &dispatcher, "B1", "TC-100").await, (5, 3));
    assert_eq!(stock(&server, &dispatcher, "B2", "TC-100").await, (10, 7));
    assert_eq!(stock(&server, &dispatcher, "MW", "TC-100").await, (40, 15));
    assert_eq!(stock(&server, &dispatcher, "S1", "TC-200").await, (6, 2));
    assert_eq!(stock(&server, &dispatcher, "S1", "TC-100").await, (3, 0));
    assert_eq!(stock(&server, &dispatcher, "MFR", "DR-300").await, (200, 1));
    assert_eq!(stock(&server, &dispatcher, "MFR", "TC-100").await, (1000, 0));
    assert_eq!(stock(&server, &dispatcher, "MW", "DR-300").await, (0, 0));
    assert_audit_clean(&server, &dispatcher, "after planning").await;

    // The open deliveries, in delivery order.
    let (status, page) = server.get("/api/v1/deliveries?open=true", Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<&Value> =
        page["deliveries"].as_array().expect("a list").iter().map(|d| &d["delivery_id"]).collect();
    assert_eq!(listed, ["D-000001", "D-000002", "D-000003", "D-000004", "D-000005"]);
    assert_eq!(page["next_after"], Value::Null);
    assert_eq!(page["deliveries"][3], from_seller, "the list shows each delivery as GET does");

    // Another run finds nothing new to plan and changes nothing.
    let again = run(&server, &dispatcher).await;
    assert_eq!(again, json!({"planned": [], "backordered": []}));
    assert_eq!(stock(&server, &dispatcher, "B1", "TC-100").await, (5, 3));
}

#[tokio::test]
async fn expediters_of_the_delivering_branch_with_the_fewest_open_deliveries_are_chosen() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;

    // Two deliveries from B1: one to each of its expediters.
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    run(&server, &dispatcher).await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    run(&server, &dispatcher).await;
    let first = server.delivery(&dispatcher, "D-000001").await["assignee"].clone();
    let second = server.delivery(&dispatcher, "D-000002").await["assignee"].clone();
    assert_eq!(second, other_b1_expediter(&first), "one to each expediter of B1");

    // C2's branch #1 is B2: three deliveries all go to exp3, though the B1
    // expediters have fewer open deliveries; C3's branch #1 is B3, served by exp4.
    for _ in 0..3 {
        server.confirm_order(&dispatcher, "C2", "TC-100", 1).await;
    }
    server.confirm_order(&dispatcher, "C3", "TC-100", 1).await;
    run(&server, &dispatcher).await;
    for (id, courier, branch) in
        [("D-000003", "exp3", "B2"), ("D-000004", "exp3", "B2"), ("D-000005", "exp3", "B2"), ("D-000006", "exp4", "B3")]
    {
        let body = server.delivery(&dispatcher, id).await;
        assert_eq!((&body["assignee"], &body["delivering_node"]), (&json!(courier), &json!(branch)), "{body}");
    }

    // Load follows reassignment: once `first` carries both B1 deliveries, the next
    // one for B1 (from the master warehouse, delivered by B1) goes to `second`.
    let first_name = first.as_str().expect("a username");
    let (status, body) = assign(&server, &dispatcher, "D-000002", first_name).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.confirm_order(&dispatcher, "C1", "TC-100", 15).await;
    run(&server, &dispatcher).await;
    let from_master = server.delivery(&dispatcher, "D-000007").await;
    assert_eq!(
        (&from_master["source_node"], &from_master["delivering_node"], &from_master["assignee"]),
        (&json!("MW"), &json!("B1"), &second)
    );
}

#[tokio::test]
async fn an_order_no_node_can_cover_waits_as_a_backorder_until_goods_arrive() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    import_item(&server, "NEW-1").await;

    let id = server.confirm_order(&dispatcher, "C1", "NEW-1", 4).await;
    wait_until_backordered(&server, &dispatcher, &id).await;
    run(&server, &dispatcher).await;
    let waiting = server.receipt(&dispatcher, &id).await;
    assert_eq!(
        (&waiting["planned"], &waiting["backordered"], &waiting["delivery_id"]),
        (&json!(false), &json!(true), &Value::Null)
    );
    let (status, body) = server.get("/api/v1/deliveries/D-000001", Some(&dispatcher)).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no delivery D-000001")));

    // Not enough arrives: the receipt keeps waiting.
    let (status, answer) =
        server.post("/api/v1/nodes/B2/stock", &json!({"item_id": "NEW-1", "quantity": 3}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!({"node_id": "B2", "stock": {"item_id": "NEW-1", "on_hand": 3, "reserved": 0, "available": 3},
            "run": {"planned": [], "backordered": [id]}})
    );
    assert_eq!(server.receipt(&dispatcher, &id).await["backordered"], true);

    // Enough: planned at once, in the goods receipt's own answer, from C1's branch #2.
    let (status, answer) =
        server.post("/api/v1/nodes/B2/stock", &json!({"item_id": "NEW-1", "quantity": 2}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (&answer["node_id"], &answer["stock"]),
        (&json!("B2"), &json!({"item_id": "NEW-1", "on_hand": 5, "reserved": 4, "available": 1})),
        "the stock after the run that reserved it"
    );
    assert_eq!(
        answer["run"],
        json!({"planned": [{"receipt_id": id, "delivery_id": "D-000001", "source": "branch_2", "source_node": "B2",
            "assignee": "exp3"}], "backordered": []})
    );
    let planned = server.receipt(&dispatcher, &id).await;
    assert_eq!(
        (&planned["planned"], &planned["backordered"], &planned["delivery_id"]),
        (&json!(true), &json!(false), &json!("D-000001"))
    );
    let shipped = server.delivery(&dispatcher, "D-000001").await;
    assert_eq!(
        (&shipped["source"], &shipped["legs"], &shipped["status"]),
        (&json!("branch_2"), &planned_legs("D-000001", &[("B2", "customer:C1")]), &json!("ready"))
    );
    assert_eq!(stock(&server, &dispatcher, "B2", "NEW-1").await, (5, 4));
    assert_audit_clean(&server, &dispatcher, "after the goods receipts").await;
}

#[tokio::test]
async fn a_goods_receipt_is_refused_for_an_unknown_node_or_item_a_zero_quantity_or_a_non_dispatcher() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    let seller = server.token("rep1").await;
    let receive = |node: &str, item: &str, quantity: Value| {
        (format!("/api/v1/nodes/{node}/stock"), json!({"item_id": item, "quantity": quantity}))
    };

    let (path, body) = receive("B9", "TC-100", json!(1));
    let (status, answer) = server.post(&path, &body, Some(&dispatcher)).await;
    assert_eq!((status, answer), (StatusCode::NOT_FOUND, error("not_found", "no node B9")));
    let (path, body) = receive("B1", "NOPE", json!(1));
    let (status, answer) = server.post(&path, &body, Some(&dispatcher)).await;
    assert_eq!((status, answer), (StatusCode::UNPROCESSABLE_ENTITY, error("unknown_item", "there is no item NOPE")));
    let (path, body) = receive("B1", "TC-100", json!(0));
    let (status, answer) = server.post(&path, &body, Some(&dispatcher)).await;
    assert_eq!(
        (status, answer),
        (StatusCode::UNPROCESSABLE_ENTITY, error("invalid_quantity", "a goods receipt brings at least 1 unit"))
    );
    let (path, body) = receive("B1", "TC-100", json!(-3));
    let (status, answer) = server.post(&path, &body, Some(&dispatcher)).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
    let (path, body) = receive("B1", "TC-100", json!(1));
    let (status, answer) = server.post(&path, &body, Some(&seller)).await;
    assert_eq!(
        (status, answer),
        (StatusCode::FORBIDDEN, error("forbidden", "this endpoint is for dispatcher; rep1 is a seller"))
    );

    assert_eq!(stock(&server, &dispatcher, "B1", "TC-100").await, (5, 0), "nothing arrived");
    assert_audit_clean(&server, &dispatcher, "after refused goods receipts").await;
}

#[tokio::test]
async fn a_stock_count_from_a_network_import_plans_the_waiting_backorders() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    import_item(&server, "NEW-1").await;
    let id = server.confirm_order(&dispatcher, "C1", "NEW-1", 2).await;
    wait_until_backordered(&server, &dispatcher, &id).await;
    run(&server, &dispatcher).await;

    let admin = server.token("admin").await;
    let count = json!({"stock": [{"node_id": "B1", "item_id": "NEW-1", "quantity": 10}]});
    let (status, body) = server.post("/api/v1/admin/network", &count, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stock(&server, &dispatcher, "B1", "NEW-1").await.0, 10);

    // The import plans the backorders before it answers.
    let after = server.receipt(&dispatcher, &id).await;
    assert_eq!(
        (&after["planned"], &after["backordered"], &after["delivery_id"]),
        (&json!(true), &json!(false), &json!("D-000001")),
        "the stock is there, yet the receipt still waits: {after}"
    );
}

#[tokio::test]
async fn transfer_legs_are_issued_in_the_flow_of_the_goods_and_move_stock_through_the_ledger() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "DR-300", 2).await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    run(&server, &dispatcher).await;
    let planned = server.delivery(&dispatcher, "D-000001").await;
    assert_eq!(planned["source_node"], "MFR", "{planned}");
    assert_eq!(stock(&server, &dispatcher, "MFR", "DR-300").await, (200, 2));

    let (status, body) = issue(&server, &dispatcher, "D-000001-L2").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::CONFLICT,
            error(
                "previous_leg_not_issued",
                "D-000001-L1 must be issued first: legs are issued in the flow of the goods"
            )
        )
    );
    assert_eq!(stock(&server, &dispatcher, "MW", "DR-300").await, (0, 0), "nothing moved");

    // MFR → MW: the goods leave the plant and arrive at the master, still reserved.
    let (status, after_first) = issue(&server, &dispatcher, "D-000001-L1").await;
    assert_eq!(status, StatusCode::OK, "{after_first}");
    let statuses = |d: &Value| -> Vec<Value> {
        d["legs"].as_array().expect("legs").iter().map(|leg| leg["status"].clone()).collect()
    };
    assert_eq!(statuses(&after_first), [json!("issued"), json!("planned"), json!("planned")]);
    assert_eq!(after_first["status"], "upcoming", "the goods are not at B1 yet");
    assert_eq!(stock(&server, &dispatcher, "MFR", "DR-300").await, (198, 0));
    assert_eq!(stock(&server, &dispatcher, "MW", "DR-300").await, (2, 2));
    assert_audit_clean(&server, &dispatcher, "after L1").await;

    // Issuing it again is harmless.
    let (status, again) = issue(&server, &dispatcher, "D-000001-L1").await;
    assert_eq!((status, &again), (StatusCode::OK, &after_first));
    assert_eq!(stock(&server, &dispatcher, "MFR", "DR-300").await, (198, 0));
    assert_eq!(stock(&server, &dispatcher, "MW", "DR-300").await, (2, 2));

    // MW → B1, issued ten times at once: the goods move once, and wait at the
    // delivering branch, where the courier sees them ready.
    let attempts = (0..10).map(|_| issue(&server, &dispatcher, "D-000001-L2"));
    let answers = futures::future::join_all(attempts).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK), "{answers:?}");
    let after_second = answers[0].1.clone();
    assert!(answers.iter().all(|(_, body)| *body == after_second), "every issue answers the same delivery");
    assert_eq!(statuses(&after_second), [json!("issued"), json!("issued"), json!("planned")]);
    assert_eq!(after_second["status"], "ready");
    assert_eq!(server.delivery(&dispatcher, "D-000001").await, after_second);
    assert_eq!(stock(&server, &dispatcher, "MW", "DR-300").await, (0, 0));
    assert_eq!(stock(&server, &dispatcher, "B1", "DR-300").await, (2, 2));
    assert_eq!(stock(&server, &dispatcher, "B1", "TC-100").await, (5, 1), "other items untouched");
    assert_audit_clean(&server, &dispatcher, "after L2").await;

    // The last leg completes on delivery confirmation, never by an issue.
    for (leg, delivery_id) in [("D-000001-L3", "D-000001"), ("D-000002-L1", "D-000002")] {
        let (status, body) = issue(&server, &dispatcher, leg).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::CONFLICT,
                error("last_leg", &format!("{leg} is the last leg: it completes when the delivery is confirmed"))
            ),
            "{delivery_id}"
        );
    }
    assert_eq!(stock(&server, &dispatcher, "B1", "DR-300").await, (2, 2));

    for unknown in ["D-000001-L4", "D-000009-L1", "D-1-L1", "D-000001-L0"] {
        let (status, body) = issue(&server, &dispatcher, unknown).await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", &format!("no leg {unknown}"))));
    }
    let courier = server.token("exp1").await;
    let (status, body) = issue(&server, &courier, "D-000001-L1").await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, error("forbidden", "this endpoint is for dispatcher; exp1 is an expediter"))
    );
    assert_audit_clean(&server, &dispatcher, "at the end").await;
}

#[tokio::test]
async fn dispatchers_reassign_any_delivery_and_sellers_only_their_entrusted_ones_to_their_servicemen() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    server.confirm_order(&dispatcher, "C1", "TC-200", 1).await;
    run(&server, &dispatcher).await;
    let (from_branch, entrusted) = ("D-000001", "D-000002");
    let planned = server.delivery(&dispatcher, from_branch).await;
    let first = planned["assignee"].as_str().expect("an expediter").to_owned();
    let second = other_b1_expediter(&planned["assignee"]);
    let first_token = server.token(&first).await;
    let second_token = server.token(second).await;

    // Only the assigned courier sees it.
    server.delivery(&first_token, from_branch).await;
    let (status, body) = server.get(&format!("/api/v1/deliveries/{from_branch}"), Some(&second_token)).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no delivery D-000001")));

    // The dispatcher reassigns it within B1: a new version, and the history keeps both.
    let (status, reassigned) = assign(&server, &dispatcher, from_branch, second).await;
    assert_eq!(status, StatusCode::OK, "{reassigned}");
    assert_eq!((&reassigned["assignee"], &reassigned["version"]), (&json!(second), &json!(2)));
    let history: Vec<Value> = reassigned["assignments"]
        .as_array()
        .expect("assignments")
        .iter()
        .map(|a| json!([a["version"], a["assignee"], a["by"], a["at"].is_string()]))
        .collect();
    assert_eq!(history, [json!([1, first, "planner", true]), json!([2, second, "disp", true])]);
    assert_eq!(server.delivery(&dispatcher, from_branch).await, reassigned);
    server.delivery(&second_token, from_branch).await;
    let (status, _) = server.get(&format!("/api/v1/deliveries/{from_branch}"), Some(&first_token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the previous courier no longer sees it");

    // Assigning the same courier again changes nothing.
    let (status, same) = assign(&server, &dispatcher, from_branch, second).await;
    assert_eq!((status, &same), (StatusCode::OK, &reassigned));

    // The courier must serve the delivering branch.
    let (status, body) = assign(&server, &dispatcher, from_branch, "exp3").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            error(
                "wrong_courier",
                "exp3 cannot carry this delivery: it needs an expediter of B1, and exp3 is an expediter of B2"
            )
        )
    );
    let (status, body) = assign(&server, &dispatcher, from_branch, "svc1").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            error(
                "wrong_courier",
                "svc1 cannot carry this delivery: it needs an expediter of B1, and svc1 is a serviceman of S1"
            )
        )
    );
    let (status, body) = assign(&server, &dispatcher, from_branch, "cust1").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("wrong_courier")));
    let (status, body) = assign(&server, &dispatcher, from_branch, "nobody").await;
    assert_eq!(
        (status, body),
        (StatusCode::UNPROCESSABLE_ENTITY, error("unknown_assignee", "there is no account nobody"))
    );
    let (status, body) = assign(&server, &dispatcher, "D-000099", second).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no delivery D-000099")));
    let (status, body) = server
        .post(&format!("/api/v1/deliveries/{from_branch}/assign"), &json!({"courier": second}), Some(&dispatcher))
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
    assert_eq!(server.delivery(&dispatcher, from_branch).await, reassigned, "refusals change nothing");

    // The seller assigns its entrusted delivery to its servicemen, one after the other.
    let seller = server.token("rep1").await;
    let waiting = server.delivery(&seller, entrusted).await;
    assert_eq!((&waiting["entrusted_to"], &waiting["assignee"]), (&json!("S1"), &Value::Null));
    let (status, to_svc1) = assign(&server, &seller, entrusted, "svc1").await;
    assert_eq!(status, StatusCode::OK, "{to_svc1}");
    assert_eq!((&to_svc1["assignee"], &to_svc1["version"]), (&json!("svc1"), &json!(2)));
    assert_eq!(
        (&to_svc1["assignments"][1]["by"], &to_svc1["assignments"][1]["assignee"]),
        (&json!("rep1"), &json!("svc1"))
    );
    let svc1 = server.token("svc1").await;
    server.delivery(&svc1, entrusted).await;
    let (status, to_svc2) = assign(&server, &seller, entrusted, "svc2").await;
    assert_eq!((status, &to_svc2["assignee"], &to_svc2["version"]), (StatusCode::OK, &json!("svc2"), &json!(3)));
    let (status, body) = server.get(&format!("/api/v1/deliveries/{entrusted}"), Some(&svc1)).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no delivery D-000002")));

    // ...but not to another seller's serviceman, nor to an expediter.
    let (status, body) = assign(&server, &seller, entrusted, "svc3").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            error(
                "wrong_courier",
                "svc3 cannot carry this delivery: it needs a serviceman of S1, and svc3 is a serviceman of S2"
            )
        )
    );
    let (status, body) = assign(&server, &dispatcher, entrusted, "exp1").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            error(
                "wrong_courier",
                "exp1 cannot carry this delivery: it needs a serviceman of S1, and exp1 is an expediter of B1"
            )
        )
    );

    // Another seller cannot touch it; a seller cannot touch the distributor's deliveries.
    let other_seller = server.token("rep2").await;
    let (status, body) = assign(&server, &other_seller, entrusted, "svc3").await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no delivery D-000002")));
    let (status, body) = server.get(&format!("/api/v1/deliveries/{entrusted}"), Some(&other_seller)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = assign(&server, &seller, from_branch, "svc1").await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no delivery D-000001")));

    // Couriers and customers have no say.
    let (status, body) = assign(&server, &second_token, from_branch, &first).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            error("forbidden", &format!("this endpoint is for dispatcher or seller; {second} is an expediter"))
        )
    );
    let customer = server.token("cust1").await;
    let (status, body) = server.get(&format!("/api/v1/deliveries/{from_branch}"), Some(&customer)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            error(
                "forbidden",
                "this endpoint is for dispatcher or seller or expediter or serviceman; cust1 is a customer"
            )
        )
    );

    // Reassignments racing each other: every one gets its own version, none is lost.
    let racing = (0..10).map(|i| {
        let (token, courier) = if i % 2 == 0 { (&dispatcher, "svc1") } else { (&seller, "svc2") };
        assign(&server, token, entrusted, courier)
    });
    let answers = futures::future::join_all(racing).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK), "{answers:?}");
    let raced = server.delivery(&dispatcher, entrusted).await;
    let history = raced["assignments"].as_array().expect("assignments");
    let versions: Vec<u64> = history.iter().map(|a| a["version"].as_u64().expect("version")).collect();
    let expected_versions: Vec<u64> = (1..=versions.len() as u64).collect();
    assert_eq!(versions, expected_versions, "{raced}");
    assert_eq!(raced["version"], json!(versions.len()), "{raced}");
    assert_eq!(&raced["assignee"], &history[history.len() - 1]["assignee"], "{raced}");
    let svc2 = server.token("svc2").await;
    let (status, body) = assign(&server, &dispatcher, entrusted, "svc2").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // What each one lists.
    let listed = |page: &Value| -> Vec<String> {
        page["deliveries"]
            .as_array()
            .map(|list| list.iter().filter_map(|d| d["delivery_id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    for (token, expected) in [
        (&dispatcher, vec!["D-000001", "D-000002"]),
        (&seller, vec!["D-000002"]),
        (&other_seller, vec![]),
        (&second_token, vec!["D-000001"]),
        (&first_token, vec![]),
        (&svc1, vec![]),
    ] {
        let (status, page) = server.get("/api/v1/deliveries?open=true", Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(listed(&page), expected, "{page}");
    }
    let (_, page) = server.get("/api/v1/deliveries", Some(&svc2)).await;
    assert_eq!(listed(&page), ["D-000002"]);
    let (status, _) = server.get("/api/v1/deliveries", Some(&customer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (query, message) in [
        ("limit=0", "limit must be from 1 to 500"),
        ("limit=501", "limit must be from 1 to 500"),
        ("after=R-000001", "after must be a delivery id like D-000123, not R-000001"),
    ] {
        let (status, body) = server.get(&format!("/api/v1/deliveries?{query}"), Some(&dispatcher)).await;
        assert_eq!((status, body), (StatusCode::BAD_REQUEST, error("invalid_query", message)), "{query}");
    }
}

/// A small deterministic generator, so that a failing seed can be replayed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[tokio::test]
async fn concurrent_planning_runs_and_goods_receipts_keep_stock_and_deliveries_consistent() {
    let seed = std::env::var("SHIPMENTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("concurrency seed: SHIPMENTS_SEED={seed}");
    let mut random = XorShift(seed);
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    import_item(&server, "NEW-1").await;

    // Thirty receipts that nothing can cover yet.
    let customers = ["C1", "C2", "C3"];
    let mut ordered = BTreeMap::new();
    for _ in 0..30 {
        let customer = customers[random.below(3) as usize];
        let quantity = 1 + random.below(5) as u32;
        let id = server.confirm_order(&dispatcher, customer, "NEW-1", quantity).await;
        ordered.insert(id, (customer, quantity));
    }
    run(&server, &dispatcher).await;
    for id in ordered.keys() {
        assert_eq!(server.receipt(&dispatcher, id).await["backordered"], true, "{id}");
    }

    // Twenty runs and twenty goods receipts, all at once.
    let empty = json!({});
    let runs = (0..20).map(|_| server.post("/api/v1/shipments/run", &empty, Some(&dispatcher)));
    let arrivals: Vec<(String, u64, Value)> = (0..20)
        .map(|_| {
            let node = NODES[random.below(NODES.len() as u64) as usize];
            let quantity = 1 + random.below(6);
            (format!("/api/v1/nodes/{node}/stock"), quantity, json!({"item_id": "NEW-1", "quantity": quantity}))
        })
        .collect();
    let receipts = arrivals.iter().map(|(path, _, body)| server.post(path, body, Some(&dispatcher)));
    let started = std::time::Instant::now();
    let (run_answers, arrival_answers) =
        futures::future::join(futures::future::join_all(runs), futures::future::join_all(receipts)).await;
    eprintln!("40 concurrent requests took {:?}", started.elapsed());
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    for ((path, quantity, _), (status, body)) in arrivals.iter().zip(&arrival_answers) {
        assert_eq!(status, &StatusCode::OK, "{path}: {body}");
        *received.entry(body["node_id"].as_str().expect("node").to_owned()).or_default() += quantity;
    }
    for (status, body) in &run_answers {
        assert_eq!(status, &StatusCode::OK, "{body}");
    }

    // Every goods receipt planned what it made possible before answering, so the
    // barrier run after them all finds nothing more to plan.
    let last = run(&server, &dispatcher).await;
    assert_eq!(last["planned"], json!([]), "seed {seed}: stock arrived but a backorder was not planned: {last}");
    assert_audit_clean(&server, &dispatcher, &format!("after the storm (seed {seed})")).await;

    // No receipt was planned twice by the concurrent runs.
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    for answer in run_answers.iter().map(|(_, body)| body).chain(arrival_answers.iter().map(|(_, body)| &body["run"])) {
        for planned in answer["planned"].as_array().expect("planned") {
            let receipt_id = planned["receipt_id"].as_str().expect("receipt").to_owned();
            let delivery_id = planned["delivery_id"].as_str().expect("delivery").to_owned();
            assert!(
                reported.insert(receipt_id.clone(), delivery_id).is_none(),
                "seed {seed}: {receipt_id} planned twice"
            );
        }
    }

    // Every open delivery, page by page.
    let mut deliveries: Vec<Value> = Vec::new();
    let mut path = "/api/v1/deliveries?open=true&limit=4".to_owned();
    loop {
        let (status, page) = server.get(&path, Some(&dispatcher)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        deliveries.extend(page["deliveries"].as_array().expect("deliveries").iter().cloned());
        match page["next_after"].as_str() {
            Some(after) => path = format!("/api/v1/deliveries?open=true&limit=4&after={after}"),
            None => break,
        }
    }
    let mut by_receipt: BTreeMap<String, &Value> = BTreeMap::new();
    let mut reserved: BTreeMap<String, u64> = BTreeMap::new();
    for d in &deliveries {
        let receipt_id = d["receipt_id"].as_str().expect("receipt").to_owned();
        assert!(by_receipt.insert(receipt_id.clone(), d).is_none(), "seed {seed}: two deliveries for {receipt_id}");
        *reserved.entry(d["source_node"].as_str().expect("node").to_owned()).or_default() +=
            d["quantity"].as_u64().expect("quantity");
    }

    // The stock at each node: what arrived there, less nothing (no leg issued);
    // reserved is exactly what the open deliveries from there promised.
    for node in NODES {
        let expected = (received.get(node).copied().unwrap_or(0), reserved.get(node).copied().unwrap_or(0));
        assert_eq!(stock(&server, &dispatcher, node, "NEW-1").await, expected, "seed {seed}: NEW-1 at {node}");
    }

    // Each receipt is planned with its own delivery, or still waits; a waiting
    // one could not be covered by any node of its cascade now.
    let (_, list) = server.get("/api/v1/receipts?limit=500", Some(&dispatcher)).await;
    let receipts = list["receipts"].as_array().expect("receipts");
    assert_eq!(receipts.len(), ordered.len());
    let cascade = |customer: &str| match customer {
        "C1" => ["B1", "B2", "MW", "S1", "MFR"],
        "C2" => ["B2", "B1", "MW", "S1", "MFR"],
        _ => ["B3", "B2", "MW", "S2", "MFR"],
    };
    let mut available = BTreeMap::new();
    for node in NODES {
        let (on_hand, held) = stock(&server, &dispatcher, node, "NEW-1").await;
        available.insert(node, on_hand - held);
    }
    let mut planned_count = 0;
    for r in receipts {
        let id = r["receipt_id"].as_str().expect("id");
        let (customer, quantity) = ordered[id];
        let delivery_id = id.replacen("R-", "D-", 1);
        match (&r["planned"], &r["backordered"]) {
            (Value::Bool(true), Value::Bool(false)) => {
                planned_count += 1;
                assert_eq!(r["delivery_id"], delivery_id.as_str(), "seed {seed}: {r}");
                let d = by_receipt.get(id).unwrap_or_else(|| panic!("seed {seed}: no open delivery for {id}"));
                assert_eq!(
                    (&d["delivery_id"], &d["customer_id"], &d["quantity"]),
                    (&json!(delivery_id), &json!(customer), &json!(quantity)),
                    "seed {seed}"
                );
                assert!(cascade(customer).contains(&d["source_node"].as_str().expect("node")), "seed {seed}: {d}");
                if let Some(reported_delivery) = reported.get(id) {
                    assert_eq!(reported_delivery, &delivery_id, "seed {seed}");
                }
            }
            (Value::Bool(false), Value::Bool(true)) => {
                assert_eq!(r["delivery_id"], Value::Null, "seed {seed}: {r}");
                for node in cascade(customer) {
                    assert!(
                        available[node] < u64::from(quantity),
                        "seed {seed}: {id} ({quantity} for {customer}) waits though {node} has {} available",
                        available[node]
                    );
                }
            }
            other => panic!("seed {seed}: {id} is neither planned nor backordered: {other:?} in {r}"),
        }
    }
    assert_eq!(planned_count, deliveries.len(), "seed {seed}: a delivery without a planned receipt");
    eprintln!("{planned_count} of {} receipts planned; received {received:?}", receipts.len());
}
