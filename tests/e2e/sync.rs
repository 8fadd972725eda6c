//! The sync endpoints the handheld agent calls, over real HTTP and TLS.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error, Sandbox, TestServer};

async fn confirmed(server: &TestServer, dispatcher: &str, customer: &str, item: &str, quantity: u32) {
    let body = json!({"customer_id": customer, "item_id": item, "quantity": quantity});
    let (status, draft) = server.post("/api/v1/orders", &body, Some(dispatcher)).await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");
    let path = format!("/api/v1/orders/{}/confirm", draft["order_id"].as_str().expect("id"));
    assert_eq!(server.post(&path, &json!({}), Some(dispatcher)).await.0, StatusCode::CREATED);
}

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
    confirmed(&server, &dispatcher, "C1", "TC-100", 3).await; // B1: exp1
    confirmed(&server, &dispatcher, "C1", "TC-100", 2).await; // B1: exp2
    confirmed(&server, &dispatcher, "C1", "DR-300", 1).await; // MFR -> MW -> B1: exp1 (fewest open)
    assert_eq!(server.post("/api/v1/shipments/run", &json!({}), Some(&dispatcher)).await.0, StatusCode::OK);
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
    assert_eq!(pull(&server, &svc1, None).await, json!({"cursor": "0", "assignments": []}));
}

#[tokio::test]
async fn a_serviceman_pulls_an_entrusted_delivery_once_its_seller_assigns_it() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    confirmed(&server, &dispatcher, "C1", "TC-200", 2).await; // entrusted to S1
    assert_eq!(server.post("/api/v1/shipments/run", &json!({}), Some(&dispatcher)).await.0, StatusCode::OK);
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
