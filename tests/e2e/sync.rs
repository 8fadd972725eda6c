//! The sync endpoints the handheld agent calls, over real HTTP and TLS.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error, Sandbox, TestServer};

async fn pull(server: &TestServer, courier: &str, since: Option<&str>) -> Value {
    let path = match since {
        Some(cursor) => format!("/api/v1/sync/assignments?since={cursor}"),
        None => "/api/v1/sync/assignments".to_owned(),
    };
    let (status, body) = server.get(&path, Some(courier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn summary(changes: &Value) -> Vec<(String, String, u64)> {
    changes["assignments"]
        .as_array()
        .expect("assignments")
        .iter()
        .map(|a| {
            (
                a["delivery_id"].as_str().unwrap_or("").to_owned(),
                a["status"].as_str().unwrap_or("").to_owned(),
                a["version"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_courier_pulls_its_assignments_then_only_what_changed_since_its_cursor() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 3).await; // B1: exp1
    server.confirm_order(&dispatcher, "C1", "TC-100", 2).await; // B1: exp2
    server.confirm_order(&dispatcher, "C1", "DR-300", 1).await; // MFR -> MW -> B1: exp1 (fewest open)
    server.plan(&dispatcher).await;
    let exp1 = server.token("exp1").await;
    let exp2 = server.token("exp2").await;

    let first = pull(&server, &exp1, None).await;
    assert_eq!(
        summary(&first),
        vec![("D-000001".into(), "ready".into(), 1), ("D-000003".into(), "upcoming".into(), 1)]
    );
    let one = &first["assignments"][0];
    assert_eq!(
        (
            &one["receipt_id"],
            &one["customer_name"],
            &one["item_name"],
            &one["quantity"],
            &one["empties_expected"],
            &one["pickup_node"]
        ),
        (
            &json!("R-000001"),
            &json!("Office A"),
            &json!("Toner cartridge black 100"),
            &json!(3),
            &json!(3),
            &json!("B1")
        )
    );
    let cursor = first["cursor"].as_str().expect("a cursor").to_owned();
    assert_eq!(summary(&pull(&server, &exp1, Some(&cursor)).await), vec![], "nothing changed since");

    // The goods of D-000003 move; D-000001 goes to exp2.
    for leg in ["D-000003-L1", "D-000003-L2"] {
        assert_eq!(
            server.post(&format!("/api/v1/legs/{leg}/issue"), &json!({}), Some(&dispatcher)).await.0,
            StatusCode::OK
        );
    }
    let (status, _) =
        server.post("/api/v1/deliveries/D-000001/assign", &json!({"assignee": "exp2"}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK);

    let changes = pull(&server, &exp1, Some(&cursor)).await;
    assert_eq!(
        summary(&changes),
        vec![("D-000003".into(), "ready".into(), 1), ("D-000001".into(), "reassigned_away".into(), 2)]
    );
    let later = changes["cursor"].as_str().expect("a cursor").to_owned();
    assert_ne!(later, cursor);
    assert_eq!(summary(&pull(&server, &exp1, Some(&later)).await), vec![]);

    let theirs = pull(&server, &exp2, None).await;
    assert_eq!(
        summary(&theirs),
        vec![("D-000002".into(), "ready".into(), 1), ("D-000001".into(), "ready".into(), 2)],
        "the new courier holds it at version 2"
    );
}

#[tokio::test]
async fn only_couriers_pull_and_a_bad_cursor_is_refused() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    let (status, body) = server.get("/api/v1/sync/assignments", Some(&dispatcher)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            error("forbidden", "this endpoint is for expediter or serviceman; disp is a dispatcher")
        )
    );
    let svc1 = server.token("svc1").await;
    let (status, body) = server.get("/api/v1/sync/assignments?since=yesterday", Some(&svc1)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            error("invalid_query", "since must be the cursor of a previous pull, not \"yesterday\"")
        )
    );
    assert_eq!(pull(&server, &svc1, None).await, json!({"cursor": "0", "assignments": [], "more": false}));
}

#[tokio::test]
async fn a_serviceman_pulls_an_entrusted_delivery_once_its_seller_assigns_it() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-200", 2).await; // entrusted to S1
    server.plan(&dispatcher).await;
    let svc1 = server.token("svc1").await;
    let before = pull(&server, &svc1, None).await;
    assert_eq!(summary(&before), vec![]);

    let seller = server.token("rep1").await;
    let (status, _) =
        server.post("/api/v1/deliveries/D-000001/assign", &json!({"assignee": "svc1"}), Some(&seller)).await;
    assert_eq!(status, StatusCode::OK);
    let after = pull(&server, &svc1, before["cursor"].as_str()).await;
    assert_eq!(summary(&after), vec![("D-000001".into(), "ready".into(), 2)]);
    assert_eq!(after["assignments"][0]["pickup_node"], "S1");
}

/// A delivered confirmation as a handheld would send it.
fn delivered(id: &str, delivery: &str, version: u64, quantity: u32, empties: u32) -> Value {
    json!({
        "confirmation_id": id, "delivery_id": delivery, "version": version, "outcome": "delivered",
        "quantity": quantity, "recipient": "Ms Reception", "empties_collected": empties,
        // Days ahead: device clocks are recorded, never trusted.
        "captured_at": "2031-01-01T09:00:00Z",
        "position": {"lat": 48.85, "lon": 2.35},
        "signature": "data:image/png;base64,iVBORw0KGgo="
    })
}

/// Pushes a batch as `token`'s courier from `device`; `(status, code)` of each result.
pub(crate) async fn push(
    server: &TestServer,
    token: &str,
    device: &str,
    confirmations: Vec<Value>,
) -> Vec<(String, Option<String>)> {
    let body = json!({"device_id": device, "confirmations": confirmations});
    let (status, answer) = server.post("/api/v1/sync/confirmations", &body, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| (r["status"].as_str().unwrap_or("").to_owned(), r["code"].as_str().map(str::to_owned)))
        .collect()
}

const C1: &str = "0192f1a2-0000-7000-8000-000000000001";
const C2: &str = "0192f1a2-0000-7000-8000-000000000002";

#[tokio::test]
async fn an_accepted_confirmation_flips_the_delivered_flag_once_and_a_retry_is_a_duplicate() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 3).await;
    server.plan(&dispatcher).await;
    let exp1 = server.login("exp1", "handover-demo", Some("hh-1")).await.access_token;

    let first = push(&server, &exp1, "hh-1", vec![delivered(C1, "D-000001", 1, 3, 2)]).await;
    assert_eq!(first, vec![("accepted".to_owned(), None)]);
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!(receipt["delivered"], true);
    assert_eq!(
        (
            &receipt["proof"]["delivered_by"],
            &receipt["proof"]["device_id"],
            &receipt["proof"]["recipient"],
            &receipt["proof"]["captured_at"],
            &receipt["proof"]["signed"]
        ),
        (&json!("exp1"), &json!("hh-1"), &json!("Ms Reception"), &json!("2031-01-01T09:00:00Z"), &json!(true))
    );
    let delivered_at = receipt["delivered_at"].clone();
    let (_, customer) = server.get("/api/v1/customers/C1", Some(&dispatcher)).await;
    assert_eq!((&customer["empties_expected"], &customer["collection_flag"]), (&json!(1), &json!(true)));
    let (_, stock) = server.get("/api/v1/nodes/B1/stock", Some(&dispatcher)).await;
    assert_eq!(stock["items"][0], json!({"item_id": "TC-100", "on_hand": 2, "reserved": 0, "available": 2}));

    // The lost response: the same batch again changes nothing.
    let again = push(&server, &exp1, "hh-1", vec![delivered(C1, "D-000001", 1, 3, 2)]).await;
    assert_eq!(again, vec![("duplicate".to_owned(), None)]);
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!(receipt["delivered_at"], delivered_at);
    let (_, customer) = server.get("/api/v1/customers/C1", Some(&dispatcher)).await;
    assert_eq!(customer["empties_expected"], 1, "the empties are not counted twice");
    let other_content = push(&server, &exp1, "hh-1", vec![delivered(C1, "D-000001", 1, 2, 2)]).await;
    assert_eq!(other_content, vec![("rejected".to_owned(), Some("conflicting_duplicate".to_owned()))]);
    let (_, audit) = server.get("/api/v1/stock/audit", Some(&dispatcher)).await;
    assert_eq!(audit["balanced"], true, "{audit}");
}

#[tokio::test]
async fn the_version_held_at_capture_decides_and_the_later_confirmation_is_already_delivered() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 2).await;
    server.plan(&dispatcher).await;
    let exp1 = server.login("exp1", "handover-demo", Some("hh-1")).await.access_token;
    let exp2 = server.login("exp2", "handover-demo", Some("hh-2")).await.access_token;
    let exp3 = server.login("exp3", "handover-demo", Some("hh-3")).await.access_token;

    // Someone else's delivery.
    let stranger = push(&server, &exp3, "hh-3", vec![delivered(C2, "D-000001", 1, 2, 0)]).await;
    assert_eq!(stranger, vec![("rejected".to_owned(), Some("not_assignee".to_owned()))]);

    // exp1 captured it at version 1, offline; meanwhile it went to exp2 (version 2).
    let (status, _) =
        server.post("/api/v1/deliveries/D-000001/assign", &json!({"assignee": "exp2"}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK);
    let captured = push(&server, &exp1, "hh-1", vec![delivered(C1, "D-000001", 1, 2, 0)]).await;
    assert_eq!(captured, vec![("accepted".to_owned(), None)], "honoured: exp1 held version 1");
    // exp2's handheld clock is years behind, so by device time it came first:
    // arrival at the server decides, never a device's clock.
    let mut earlier_by_its_clock = delivered("0192f1a2-0000-7000-8000-000000000003", "D-000001", 2, 2, 0);
    earlier_by_its_clock["captured_at"] = json!("2020-01-01T09:00:00Z");
    let later = push(&server, &exp2, "hh-2", vec![earlier_by_its_clock]).await;
    assert_eq!(later, vec![("rejected".to_owned(), Some("already_delivered".to_owned()))]);
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!(
        (&receipt["proof"]["device_id"], &receipt["proof"]["captured_at"]),
        (&json!("hh-1"), &json!("2031-01-01T09:00:00Z"))
    );

    let (status, body) = server
        .post("/api/v1/sync/confirmations", &json!({"device_id": "hh-9", "confirmations": []}), Some(&exp1))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::BAD_REQUEST, error("device_mismatch", "this session belongs to device hh-1, not hh-9"))
    );
}

#[tokio::test]
async fn a_failed_delivery_goes_back_to_the_dispatcher_and_can_be_delivered_later() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "DR-300", 1).await; // MFR -> MW -> B1
    server.plan(&dispatcher).await;
    let exp1 = server.login("exp1", "handover-demo", Some("hh-1")).await.access_token;
    // The goods reach B1 first: an attempt is only made once they are there.
    for leg in ["D-000001-L1", "D-000001-L2"] {
        let (status, _) = server.post(&format!("/api/v1/legs/{leg}/issue"), &json!({}), Some(&dispatcher)).await;
        assert_eq!(status, StatusCode::OK, "{leg} issued");
    }
    let failed = json!({
        "confirmation_id": C1, "delivery_id": "D-000001", "version": 1, "outcome": "failed",
        "reason": "customer_absent", "quantity": 0, "captured_at": "2020-01-01T00:00:00Z"
    });
    assert_eq!(push(&server, &exp1, "hh-1", vec![failed]).await, vec![("accepted".to_owned(), None)]);
    let (_, delivery) = server.get("/api/v1/deliveries/D-000001", Some(&dispatcher)).await;
    assert_eq!(
        (&delivery["assignee"], &delivery["version"], &delivery["status"]),
        (&Value::Null, &json!(2), &json!("ready"))
    );
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!(receipt["delivered"], false);

    // Reassigned, and delivered.
    let (status, _) =
        server.post("/api/v1/deliveries/D-000001/assign", &json!({"assignee": "exp2"}), Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK);
    let exp2 = server.login("exp2", "handover-demo", Some("hh-2")).await.access_token;
    assert_eq!(
        push(&server, &exp2, "hh-2", vec![delivered(C2, "D-000001", 3, 1, 0)]).await,
        vec![("accepted".to_owned(), None)]
    );
    let (_, delivery) = server.get("/api/v1/deliveries/D-000001", Some(&dispatcher)).await;
    let legs: Vec<&str> =
        delivery["legs"].as_array().expect("legs").iter().map(|l| l["status"].as_str().unwrap_or("")).collect();
    assert_eq!((delivery["status"].as_str(), legs), (Some("delivered"), vec!["issued", "issued", "completed"]));
    let (_, audit) = server.get("/api/v1/stock/audit", Some(&dispatcher)).await;
    assert_eq!(audit["balanced"], true, "{audit}");
    let (_, mfr) = server.get("/api/v1/nodes/MFR/stock", Some(&dispatcher)).await;
    assert_eq!(mfr["items"][0]["on_hand"], 199);
}

#[tokio::test]
async fn two_uploads_of_the_same_batch_racing_apply_it_once() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 3).await;
    server.plan(&dispatcher).await;
    let exp1 = server.login("exp1", "handover-demo", Some("hh-1")).await.access_token;
    let uploads = (0..8).map(|_| push(&server, &exp1, "hh-1", vec![delivered(C1, "D-000001", 1, 3, 3)]));
    let answers = futures::future::join_all(uploads).await;
    let accepted = answers.iter().filter(|a| a[0].0 == "accepted").count();
    let duplicates = answers.iter().filter(|a| a[0].0 == "duplicate").count();
    assert_eq!((accepted, duplicates), (1, 7), "{answers:?}");
    let (_, customer) = server.get("/api/v1/customers/C1", Some(&dispatcher)).await;
    assert_eq!(customer["empties_expected"], 0);
    let (_, audit) = server.get("/api/v1/stock/audit", Some(&dispatcher)).await;
    assert_eq!(audit["balanced"], true, "{audit}");
}

#[tokio::test]
async fn the_dashboard_lists_rejected_confirmations_and_each_handhelds_last_sync() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    server.plan(&dispatcher).await;
    let exp3 = server.login("exp3", "handover-demo", Some("hh-3")).await.access_token;
    let body = json!({"device_id": "hh-3", "queued": 4, "confirmations": [delivered(C1, "D-000001", 1, 1, 0)]});
    let (status, answer) = server.post("/api/v1/sync/confirmations", &body, Some(&exp3)).await;
    assert_eq!((status, &answer["results"][0]["code"]), (StatusCode::OK, &json!("not_assignee")));
    pull(&server, &exp3, None).await;

    let client = server.page_client(&sandbox);
    let login = client.get(format!("{}/login", server.url)).send().await.expect("answer").text().await.expect("page");
    let marker = "name=\"csrf\" value=\"";
    let start = login.find(marker).expect("csrf") + marker.len();
    let csrf = login[start..].split('"').next().expect("token").to_owned();
    let form = [("csrf", csrf.as_str()), ("username", "disp"), ("password", "handover-demo")];
    client.post(format!("{}/login", server.url)).form(&form).send().await.expect("login");
    let page =
        client.get(format!("{}/dashboard", server.url)).send().await.expect("answer").text().await.expect("page");
    let section = |id: &str| -> String {
        let start = page.find(&format!("<section class=\"card\" id=\"{id}\">")).expect("the section");
        page[start..].split("</section>").next().expect("its end").to_owned()
    };
    let rejected = section("rejected");
    for expected in ["exp3", "hh-3", "D-000001", "not_assignee", "exp3 did not hold delivery D-000001 at version 1"] {
        assert!(rejected.contains(expected), "{expected} missing: {rejected}");
    }
    let devices = section("devices");
    // It reported 4 queued with a batch of 1, which got its answer: 3 are left.
    assert!(devices.contains("<td>hh-3</td><td>exp3</td>") && devices.contains("<td>3</td>"), "{devices}");
}

#[tokio::test]
async fn a_long_feed_comes_in_pages_and_a_first_pull_stays_a_first_pull_across_them() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_with_env(&["--demo"], &[("HANDOVER__LIMITS__PULL_PAGE_CHANGES", "2")]);
    let dispatcher = server.token("disp").await;
    for _ in 0..6 {
        server.confirm_order(&dispatcher, "C1", "TC-100", 1).await; // D-000001, 3 and 5 go to exp1
    }
    server.plan(&dispatcher).await;
    let exp1 = server.login("exp1", "handover-demo", Some("hh-1")).await.access_token;
    let done = push(&server, &exp1, "hh-1", vec![delivered(C1, "D-000001", 1, 1, 0)]).await;
    assert_eq!(done, vec![("accepted".to_owned(), None)]);

    // A new handheld pulls page after page; what was delivered never shows.
    let (mut since, mut pages, mut open) = (None::<String>, 0, Vec::new());
    loop {
        let page = pull(&server, &exp1, since.as_deref()).await;
        pages += 1;
        open.extend(summary(&page).into_iter().map(|(id, status, _)| (id, status)));
        let cursor = page["cursor"].as_str().expect("a cursor").to_owned();
        if page["more"] != true {
            assert!(cursor.parse::<u64>().is_ok(), "the last page's cursor is a plain one: {cursor}");
            break;
        }
        assert!(cursor.starts_with("first:"), "a first pull goes on as one: {cursor}");
        since = Some(cursor);
    }
    assert!(pages >= 2, "a page holds 2 changes here");
    open.sort();
    assert_eq!(open, vec![("D-000003".into(), "ready".into()), ("D-000005".into(), "ready".into())]);

    // The agent follows the pages on its own.
    let login = sandbox.agent_login("exp1", &server.url, "exp1", "handover-demo", Some("hh-1b"));
    assert!(login.status.success());
    assert_eq!(sandbox.agent_ok("exp1", &["pull"]), "2 assignment(s) changed\n");
}
