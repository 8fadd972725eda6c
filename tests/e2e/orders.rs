//! Order processing over the API: abnormal data, drafts, confirm and cancel,
//! receipts and customer information, and who may see what.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error, Sandbox, TestServer};

/// What a refusal must leave unchanged: no draft, no receipt, no customer change.
async fn assert_nothing_stored(server: &TestServer, dispatcher: &str) {
    let (_, drafts) = server.get("/api/v1/orders", Some(dispatcher)).await;
    assert_eq!(drafts, json!({"orders": []}));
    let (_, receipts) = server.get("/api/v1/receipts", Some(dispatcher)).await;
    assert_eq!(receipts, json!({"receipts": []}));
    let (_, customer) = server.get("/api/v1/customers/C1", Some(dispatcher)).await;
    assert_eq!(
        (&customer["order_count"], &customer["collection_flag"], &customer["empties_expected"]),
        (&json!(0), &json!(false), &json!(0))
    );
}

async fn place_draft(server: &TestServer, token: &str, item: &str, quantity: u32) -> String {
    let (status, body) = server
        .post("/api/v1/orders", &json!({"customer_id": "C1", "item_id": item, "quantity": quantity}), Some(token))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["order_id"].as_str().expect("order id").to_owned()
}

#[tokio::test]
async fn each_abnormal_order_is_refused_with_its_code_and_stores_nothing() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let customer = server.token("cust1").await;
    let dispatcher = server.token("disp").await;

    let order = |customer: Value, item: Value, quantity: Value| json!({"customer_id": customer, "item_id": item, "quantity": quantity});
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "unknown customer",
            order(json!("C9"), json!("TC-100"), json!(1)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_customer",
        ),
        ("unknown item", order(json!("C1"), json!("XX-1"), json!(1)), StatusCode::UNPROCESSABLE_ENTITY, "unknown_item"),
        (
            "discontinued item",
            order(json!("C1"), json!("TC-050"), json!(1)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "discontinued_item",
        ),
        ("zero", order(json!("C1"), json!("TC-100"), json!(0)), StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity"),
        (
            "negative",
            order(json!("C1"), json!("TC-100"), json!(-2)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            "fraction",
            order(json!("C1"), json!("TC-100"), json!(2.5)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            "huge",
            order(json!("C1"), json!("TC-100"), json!(1e300)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            "text quantity",
            order(json!("C1"), json!("TC-100"), json!("3")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            "above the limit",
            order(json!("C1"), json!("TC-100"), json!(21)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity_above_limit",
        ),
        (
            "beyond u64",
            order(json!("C1"), json!("TC-100"), json!(u64::MAX)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity_above_limit",
        ),
        (
            "missing quantity",
            json!({"customer_id": "C1", "item_id": "TC-100"}),
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
        ("missing item", json!({"customer_id": "C1", "quantity": 1}), StatusCode::BAD_REQUEST, "missing_field"),
        (
            "unknown field",
            json!({"customer_id": "C1", "item_id": "TC-100", "quantity": 1, "price": 0}),
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
        ("id of the wrong type", order(json!(1), json!("TC-100"), json!(1)), StatusCode::BAD_REQUEST, "invalid_field"),
        ("not an object", json!([1, 2, 3]), StatusCode::BAD_REQUEST, "invalid_field"),
        (
            "for another customer",
            order(json!("C2"), json!("TC-100"), json!(1)),
            StatusCode::FORBIDDEN,
            "not_your_customer",
        ),
    ];
    for (name, body, status, code) in cases {
        let (got_status, got) = server.post("/api/v1/orders", &body, Some(&customer)).await;
        assert_eq!((got_status, got["error"]["code"].as_str()), (status, Some(code)), "{name}: {got}");
        assert!(got["error"]["problems"].as_array().is_some_and(|p| !p.is_empty()), "{name}: {got}");
    }

    // Error bodies in full, for one case of each kind.
    let (_, body) =
        server.post("/api/v1/orders", &order(json!("C1"), json!("TC-100"), json!(21)), Some(&customer)).await;
    assert_eq!(
        body,
        json!({"error": {"code": "quantity_above_limit", "message": "at most 20 of TC-100 per order; nothing was stored",
            "problems": [{"path": "quantity", "code": "quantity_above_limit", "message": "at most 20 of TC-100 per order"}]}})
    );
    let (_, body) =
        server.post("/api/v1/orders", &order(json!("C2"), json!("TC-050"), json!(0)), Some(&customer)).await;
    assert_eq!(
        body,
        json!({"error": {"code": "not_your_customer", "message": "the order has 3 problems; nothing was stored", "problems": [
            {"path": "customer_id", "code": "not_your_customer", "message": "cust1 may only order for its own customer, not for C2"},
            {"path": "item_id", "code": "discontinued_item", "message": "Toner cartridge legacy 50 (TC-050) is discontinued and can no longer be ordered"},
            {"path": "quantity", "code": "invalid_quantity", "message": "0 is too small; enter the quantity as a whole number of at least 1"}
        ]}})
    );

    // The body-level refusals of the framework keep the SPEC's error shape.
    let (status, body) =
        server.post_raw("/api/v1/orders", "application/json", b"{\"customer_id\":".to_vec(), Some(&customer)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
    let (status, body) =
        server.post_raw("/api/v1/orders", "application/json", vec![b' '; 100 * 1024], Some(&customer)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));

    assert_nothing_stored(&server, &dispatcher).await;
}

#[tokio::test]
async fn a_confirmed_order_generates_a_receipt_and_updates_the_customer_information() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let customer = server.token("cust1").await;

    let (status, draft) = server
        .post("/api/v1/orders", &json!({"customer_id": "C1", "item_id": "TC-100", "quantity": 3}), Some(&customer))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (&draft["status"], &draft["item_name"], &draft["quantity"], &draft["customer_id"]),
        (&json!("draft"), &json!("Toner cartridge black 100"), &json!(3), &json!("C1"))
    );
    let order_id = draft["order_id"].as_str().expect("id");
    let (_, before) = server.get("/api/v1/customers/C1", Some(&customer)).await;
    assert_eq!(before["order_count"], 0, "a draft changes no customer information");

    let (status, receipt) =
        server.post(&format!("/api/v1/orders/{order_id}/confirm"), &json!({}), Some(&customer)).await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    assert_eq!(receipt["receipt_id"], "R-000001");
    assert_eq!(
        (&receipt["customer_id"], &receipt["item_id"], &receipt["quantity"], &receipt["empties_expected"]),
        (&json!("C1"), &json!("TC-100"), &json!(3), &json!(3))
    );
    assert_eq!(
        (&receipt["delivered"], &receipt["planned"], &receipt["delivered_at"]),
        (&json!(false), &json!(false), &Value::Null)
    );

    // Planning runs in the background after the confirm and may set the receipt's
    // planned flag meanwhile; what the order made stays as it was.
    let order_part = |receipt: &Value| {
        json!([
            receipt["receipt_id"],
            receipt["order_id"],
            receipt["customer_id"],
            receipt["item_id"],
            receipt["quantity"],
            receipt["empties_expected"],
            receipt["created_at"],
            receipt["delivered"]
        ])
    };
    let (status, read) = server.get("/api/v1/receipts/R-000001", Some(&customer)).await;
    assert_eq!((status, order_part(&read)), (StatusCode::OK, order_part(&receipt)));
    let (_, info) = server.get("/api/v1/customers/C1", Some(&customer)).await;
    assert_eq!(
        (&info["order_count"], &info["collection_flag"], &info["empties_expected"]),
        (&json!(1), &json!(true), &json!(3))
    );
    let history: Vec<Value> = info["order_history"].as_array().expect("a list").iter().map(order_part).collect();
    assert_eq!(history, vec![order_part(&receipt)]);
    let (_, order) = server.get(&format!("/api/v1/orders/{order_id}"), Some(&customer)).await;
    assert_eq!((&order["status"], &order["receipt_id"]), (&json!("confirmed"), &json!("R-000001")));

    // A drum is not collected: the flag does not move.
    let drum = place_draft(&server, &customer, "DR-300", 2).await;
    let (status, second) = server.post(&format!("/api/v1/orders/{drum}/confirm"), &json!({}), Some(&customer)).await;
    assert_eq!(
        (status, &second["receipt_id"], &second["empties_expected"]),
        (StatusCode::CREATED, &json!("R-000002"), &json!(0))
    );
    let (_, info) = server.get("/api/v1/customers/C1", Some(&customer)).await;
    assert_eq!((&info["order_count"], &info["empties_expected"]), (&json!(2), &json!(3)));
    assert_eq!(info["order_history"][0]["receipt_id"], "R-000002", "newest first");
}

#[tokio::test]
async fn confirming_twice_or_concurrently_yields_one_receipt() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let customer = server.token("cust1").await;
    let dispatcher = server.token("disp").await;

    let order_id = place_draft(&server, &customer, "TC-100", 2).await;
    let path = format!("/api/v1/orders/{order_id}/confirm");
    let (first_status, first) = server.post(&path, &json!({}), Some(&customer)).await;
    let (second_status, second) = server.post(&path, &json!({}), Some(&dispatcher)).await;
    assert_eq!((first_status, second_status), (StatusCode::CREATED, StatusCode::OK));
    for field in ["receipt_id", "order_id", "quantity", "created_at", "empties_expected"] {
        assert_eq!(first[field], second[field], "the same receipt: {field}");
    }

    // Twenty confirms racing on a fresh draft.
    let racing = place_draft(&server, &customer, "TC-100", 4).await;
    let path = format!("/api/v1/orders/{racing}/confirm");
    let empty = json!({});
    let attempts = (0..20).map(|_| server.post(&path, &empty, Some(&customer)));
    let answers = futures::future::join_all(attempts).await;
    let created = answers.iter().filter(|(status, _)| *status == StatusCode::CREATED).count();
    assert_eq!(created, 1, "exactly one confirm creates the receipt");
    assert!(
        answers.iter().all(|(status, body)| status.is_success() && body["receipt_id"] == "R-000002"),
        "{answers:?}"
    );

    let (_, page) = server.get("/api/v1/receipts", Some(&dispatcher)).await;
    assert_eq!(page["receipts"].as_array().map(Vec::len), Some(2));
    let (_, info) = server.get("/api/v1/customers/C1", Some(&dispatcher)).await;
    assert_eq!((&info["order_count"], &info["empties_expected"]), (&json!(2), &json!(6)));
}

#[tokio::test]
async fn a_cancelled_draft_cannot_be_confirmed_and_a_confirmed_one_cannot_be_cancelled() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let customer = server.token("cust1").await;
    let dispatcher = server.token("disp").await;

    let order_id = place_draft(&server, &customer, "TC-100", 1).await;
    let (status, cancelled) =
        server.post(&format!("/api/v1/orders/{order_id}/cancel"), &json!({}), Some(&customer)).await;
    assert_eq!((status, &cancelled["status"]), (StatusCode::OK, &json!("cancelled")));
    let (status, again) = server.post(&format!("/api/v1/orders/{order_id}/cancel"), &json!({}), Some(&customer)).await;
    assert_eq!((status, &again["status"]), (StatusCode::OK, &json!("cancelled")), "cancelling twice is harmless");
    let (status, body) = server.post(&format!("/api/v1/orders/{order_id}/confirm"), &json!({}), Some(&customer)).await;
    assert_eq!(
        (status, body),
        (StatusCode::CONFLICT, error("order_cancelled", "this order was cancelled; place a new one"))
    );
    assert_nothing_stored(&server, &dispatcher).await;

    let confirmed = place_draft(&server, &customer, "TC-100", 1).await;
    let (status, _) = server.post(&format!("/api/v1/orders/{confirmed}/confirm"), &json!({}), Some(&customer)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server.post(&format!("/api/v1/orders/{confirmed}/cancel"), &json!({}), Some(&customer)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::CONFLICT,
            error("order_confirmed", "this order is already confirmed and can no longer be cancelled")
        )
    );

    let (status, body) = server.post("/api/v1/orders/no-such-order/confirm", &json!({}), Some(&customer)).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no order no-such-order")));
}

#[tokio::test]
async fn an_expired_draft_cannot_be_confirmed() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_with_env(&["--demo"], &[("HANDOVER__ORDERS__DRAFT_TTL_SECS", "0")]);
    let customer = server.token("cust1").await;
    let dispatcher = server.token("disp").await;
    let order_id = place_draft(&server, &customer, "TC-100", 1).await;
    let (status, body) = server.post(&format!("/api/v1/orders/{order_id}/confirm"), &json!({}), Some(&customer)).await;
    assert_eq!(
        (status, body),
        (StatusCode::CONFLICT, error("draft_expired", "this draft has expired; place the order again"))
    );
    let (_, receipts) = server.get("/api/v1/receipts", Some(&dispatcher)).await;
    assert_eq!(receipts, json!({"receipts": []}));
}

#[tokio::test]
async fn customers_see_only_their_own_orders_receipts_and_information() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let owner = server.token("cust1").await;
    let other = server.token("cust2").await;

    let order_id = place_draft(&server, &owner, "TC-100", 1).await;
    for (path, is_post) in [
        (format!("/api/v1/orders/{order_id}"), false),
        (format!("/api/v1/orders/{order_id}/confirm"), true),
        (format!("/api/v1/orders/{order_id}/cancel"), true),
    ] {
        let (status, body) = if is_post {
            server.post(&path, &json!({}), Some(&other)).await
        } else {
            server.get(&path, Some(&other)).await
        };
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, error("not_found", &format!("no order {order_id}"))),
            "{path}"
        );
    }
    let (status, _) = server.post(&format!("/api/v1/orders/{order_id}/confirm"), &json!({}), Some(&owner)).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = server.get("/api/v1/receipts/R-000001", Some(&other)).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no receipt R-000001")));
    let (status, body) = server.get("/api/v1/customers/C1", Some(&other)).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no customer C1")));
    let (status, body) = server.get("/api/v1/receipts?customer_id=C1", Some(&other)).await;
    assert_eq!((status, body), (StatusCode::FORBIDDEN, error("forbidden", "cust2 may only list its own receipts")));
    let (_, own) = server.get("/api/v1/receipts", Some(&other)).await;
    assert_eq!(own, json!({"receipts": []}), "a customer's list holds only its own receipts");
    let (_, drafts) = server.get("/api/v1/orders", Some(&other)).await;
    assert_eq!(drafts, json!({"orders": []}));

    let courier = server.token("exp1").await;
    let (status, body) = server.get("/api/v1/receipts/R-000001", Some(&courier)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            error("forbidden", "this endpoint is for customer or dispatcher; exp1 is an expediter")
        )
    );
    let (status, body) = server.get("/api/v1/receipts/R-9", Some(&owner)).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, error("not_found", "no receipt R-9")));
}

#[tokio::test]
async fn receipts_are_listed_in_receipt_order_with_filters_and_pages() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    let started = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    for (customer, item) in [("C1", "TC-100"), ("C2", "TC-100"), ("C1", "DR-300")] {
        let (status, body) = server
            .post(
                "/api/v1/orders",
                &json!({"customer_id": customer, "item_id": item, "quantity": 1}),
                Some(&dispatcher),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let path = format!("/api/v1/orders/{}/confirm", body["order_id"].as_str().expect("id"));
        let (status, _) = server.post(&path, &json!({}), Some(&dispatcher)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let ids = |page: &Value| -> Vec<String> {
        page["receipts"]
            .as_array()
            .map(|r| r.iter().map(|x| x["receipt_id"].as_str().unwrap_or("").to_owned()).collect())
            .unwrap_or_default()
    };
    let (_, first) = server.get("/api/v1/receipts?limit=2", Some(&dispatcher)).await;
    assert_eq!(
        (ids(&first), &first["next_after"]),
        (vec!["R-000001".to_owned(), "R-000002".to_owned()], &json!("R-000002"))
    );
    let (_, second) = server.get("/api/v1/receipts?limit=2&after=R-000002", Some(&dispatcher)).await;
    assert_eq!((ids(&second), &second["next_after"]), (vec!["R-000003".to_owned()], &Value::Null));
    let (_, of_c1) = server.get("/api/v1/receipts?customer_id=C1", Some(&dispatcher)).await;
    assert_eq!(ids(&of_c1), vec!["R-000001".to_owned(), "R-000003".to_owned()]);
    let (_, undelivered) = server.get("/api/v1/receipts?delivered=false&limit=5", Some(&dispatcher)).await;
    assert_eq!(ids(&undelivered).len(), 3);
    let (_, delivered) = server.get("/api/v1/receipts?delivered=true", Some(&dispatcher)).await;
    assert_eq!(ids(&delivered), Vec::<String>::new());
    let since = started.format(&time::format_description::well_known::Rfc3339).expect("format");
    let (_, recent) =
        server.get(&format!("/api/v1/receipts?since={}", since.replace('+', "%2B")), Some(&dispatcher)).await;
    assert_eq!(ids(&recent).len(), 3, "{recent}");
    let (_, future) = server.get("/api/v1/receipts?since=2999-01-01T00:00:00Z", Some(&dispatcher)).await;
    assert_eq!(ids(&future), Vec::<String>::new());

    for bad in ["limit=0", "limit=100000", "after=R-1", "since=yesterday", "colour=red"] {
        let (status, body) = server.get(&format!("/api/v1/receipts?{bad}"), Some(&dispatcher)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_query")),
            "{bad}: {body}"
        );
    }
}
