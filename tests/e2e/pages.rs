//! The ordering screen over plain HTTP requests: login, sessions, CSRF,
//! escaping, and who may see which page. (The real-browser walk-through is in
//! `browser.rs`.)

use reqwest::{Client, StatusCode};
use serde_json::json;

use crate::helpers::{field_value, Sandbox, TestServer, DEMO_PASSWORD};

async fn get(client: &Client, server: &TestServer, path: &str) -> (StatusCode, String, Option<String>) {
    let response = client.get(format!("{}{path}", server.url)).send().await.expect("an answer");
    let status = response.status();
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, response.text().await.expect("a body"), location)
}

async fn post(
    client: &Client,
    server: &TestServer,
    path: &str,
    form: &[(&str, &str)],
) -> (StatusCode, String, Option<String>) {
    let response = client.post(format!("{}{path}", server.url)).form(form).send().await.expect("an answer");
    let status = response.status();
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, response.text().await.expect("a body"), location)
}

/// Logs a page client in and returns the ordering form's CSRF token.
async fn log_in(client: &Client, server: &TestServer, username: &str) -> String {
    let (_, login, _) = get(client, server, "/login?next=/order").await;
    let csrf = field_value(&login, "csrf");
    let (status, _, location) = post(
        client,
        server,
        "/login",
        &[("csrf", &csrf), ("username", username), ("password", DEMO_PASSWORD), ("next", "/order")],
    )
    .await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/order")));
    let (status, page, _) = get(client, server, "/order").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    field_value(&page, "csrf")
}

#[tokio::test]
async fn the_ordering_screen_needs_a_login_and_the_cookie_is_locked_down() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let client = server.page_client(&sandbox);

    let (status, _, location) = get(&client, &server, "/order").await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/login?next=%2Forder")));

    let (_, login, _) = get(&client, &server, "/login").await;
    let csrf = field_value(&login, "csrf");
    let (status, page, _) =
        post(&client, &server, "/login", &[("csrf", &csrf), ("username", "cust1"), ("password", "wrong-password")])
            .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("wrong username or password"), "{page}");
    assert!(page.contains("value=\"cust1\""), "the username is kept");

    let response = client
        .post(format!("{}/login", server.url))
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", "cust1"),
            ("password", DEMO_PASSWORD),
            ("next", "https://evil.example/"),
        ])
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.headers().get("location").and_then(|v| v.to_str().ok()), Some("/order"), "no open redirect");
    let cookie =
        response.headers().get("set-cookie").and_then(|v| v.to_str().ok()).expect("a session cookie").to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} missing in {cookie}");
    }
    assert!(!cookie.contains("cust1") && !cookie.contains(DEMO_PASSWORD), "the cookie is encrypted: {cookie}");

    let (status, page, _) = get(&client, &server, "/order").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Order for Office A"));
    assert!(!page.contains("TC-050"), "discontinued items are not offered");

    // Logging out ends the session on the server too.
    let (status, _, location) = post(&client, &server, "/logout", &[("csrf", &field_value(&page, "csrf"))]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/login")));
    let (status, _, _) = get(&client, &server, "/order").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_are_refused_and_change_nothing() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let client = server.page_client(&sandbox);
    let csrf = log_in(&client, &server, "cust1").await;

    for form in [
        vec![("item_id", "TC-100"), ("quantity", "1")],
        vec![("csrf", "forged"), ("item_id", "TC-100"), ("quantity", "1")],
    ] {
        let (status, page, _) = post(&client, &server, "/order", &form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("did not come from this site"), "{page}");
    }
    let (status, _, location) =
        post(&client, &server, "/order", &[("csrf", &csrf), ("item_id", "TC-100"), ("quantity", "1")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let order_path = location.expect("the confirmation screen");
    let (status, _, _) = post(&client, &server, &format!("{order_path}/confirm"), &[("csrf", "forged")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let dispatcher = server.token("disp").await;
    let (_, receipts) = server.get("/api/v1/receipts", Some(&dispatcher)).await;
    assert_eq!(receipts, json!({"receipts": []}), "no forged form confirmed anything");
}

#[tokio::test]
async fn abnormal_form_data_is_shown_next_to_its_field_and_nothing_is_stored() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let client = server.page_client(&sandbox);
    let csrf = log_in(&client, &server, "cust1").await;

    let cases = [
        ("TC-100", "abc", "quantity-error", "&#34;abc&#34; is not a whole number"),
        ("TC-100", "", "quantity-error", "enter a quantity"),
        ("TC-100", "21", "quantity-error", "at most 20 of TC-100 per order"),
        ("TC-050", "1", "item_id-error", "is discontinued and can no longer be ordered"),
        ("NOPE", "1", "item_id-error", "there is no item &#34;NOPE&#34;"),
    ];
    for (item, quantity, field, message) in cases {
        let (status, page, _) =
            post(&client, &server, "/order", &[("csrf", &csrf), ("item_id", item), ("quantity", quantity)]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{item} {quantity}");
        assert!(page.contains(&format!("id=\"{field}\"")), "{field} shown for {item} {quantity}");
        assert!(page.contains(message), "{message:?} missing:\n{page}");
        assert!(page.contains(&format!("value=\"{quantity}\"")), "the entered quantity is kept");
    }
    let dispatcher = server.token("disp").await;
    let (_, drafts) = server.get("/api/v1/orders", Some(&dispatcher)).await;
    assert_eq!(drafts, json!({"orders": []}));
}

#[tokio::test]
async fn pages_escape_what_they_print() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let admin = server.token("admin").await;
    let hostile = json!({"items": [{"id": "EV-1", "name": "<script>alert('x')</script> & co", "collectable": false, "max_per_order": 3}]});
    let (status, _) = server.post("/api/v1/admin/network", &hostile, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);

    let client = server.page_client(&sandbox);
    log_in(&client, &server, "cust1").await;
    let (_, page, _) = get(&client, &server, "/order").await;
    assert!(!page.contains("<script>"), "raw markup on the page");
    assert!(page.contains("&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62; &#38; co (EV-1)"), "{page}");
}

#[tokio::test]
async fn customers_see_only_their_own_pages_and_other_roles_are_turned_away() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let owner = server.page_client(&sandbox);
    let csrf = log_in(&owner, &server, "cust1").await;
    let (_, _, location) =
        post(&owner, &server, "/order", &[("csrf", &csrf), ("item_id", "TC-100"), ("quantity", "2")]).await;
    let order_path = location.expect("the confirmation screen");
    let (status, summary, _) = get(&owner, &server, &order_path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(summary.contains("id=\"summary\"") && summary.contains("Toner cartridge black 100"));
    let (status, _, location) = post(&owner, &server, &format!("{order_path}/confirm"), &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/receipts/R-000001")));
    let (_, receipt, _) = get(&owner, &server, "/receipts/R-000001").await;
    assert!(receipt.contains("<span id=\"receipt-id\">R-000001</span>"));
    // Confirming again from the same screen (a double click) lands on the same receipt.
    let (_, _, again) = post(&owner, &server, &format!("{order_path}/confirm"), &[("csrf", &csrf)]).await;
    assert_eq!(again.as_deref(), Some("/receipts/R-000001"));

    let other = server.page_client(&sandbox);
    log_in(&other, &server, "cust2").await;
    // Another customer's receipt and order are not there, as far as it can tell.
    let (status, page, _) = get(&other, &server, "/receipts/R-000001").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("no receipt R-000001"), "{page}");
    let (status, _, _) = get(&other, &server, &order_path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let courier = server.page_client(&sandbox);
    let (_, login, _) = get(&courier, &server, "/login").await;
    let csrf = field_value(&login, "csrf");
    post(&courier, &server, "/login", &[("csrf", &csrf), ("username", "exp1"), ("password", DEMO_PASSWORD)]).await;
    let (status, page, _) = get(&courier, &server, "/order").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("The ordering screen is for customer accounts; exp1 is an expediter."), "{page}");
}

#[tokio::test]
async fn a_session_cookie_replayed_after_logout_is_refused() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let client = server.page_client(&sandbox);
    let (_, login, _) = get(&client, &server, "/login").await;
    let csrf = field_value(&login, "csrf");
    let response = client
        .post(format!("{}/login", server.url))
        .form(&[("csrf", csrf.as_str()), ("username", "cust1"), ("password", DEMO_PASSWORD)])
        .send()
        .await
        .expect("an answer");
    let cookie = response.headers().get("set-cookie").and_then(|v| v.to_str().ok()).expect("a cookie").to_owned();
    let stolen = cookie.split(';').next().expect("name=value").to_owned();
    let (_, page, _) = get(&client, &server, "/order").await;
    post(&client, &server, "/logout", &[("csrf", &field_value(&page, "csrf"))]).await;

    // Someone kept a copy of the cookie: the server-side session is over, so it opens nothing.
    let replay = server.page_client(&sandbox);
    let response =
        replay.get(format!("{}/order", server.url)).header("cookie", stolen).send().await.expect("an answer");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers().get("location").and_then(|v| v.to_str().ok()), Some("/login?next=%2Forder"));
}

#[tokio::test]
async fn the_dispatcher_dashboard_shows_backorders_deliveries_receipts_and_stock() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 3).await;
    server.confirm_order(&dispatcher, "C1", "TC-200", 2).await;
    server.confirm_order(&dispatcher, "C1", "DR-300", 1).await;
    let admin = server.token("admin").await;
    let new_item = json!({"items": [{"id": "NEW-1", "name": "New", "collectable": false, "max_per_order": 5}]});
    assert_eq!(server.post("/api/v1/admin/network", &new_item, Some(&admin)).await.0, StatusCode::OK);
    server.confirm_order(&dispatcher, "C1", "NEW-1", 1).await;

    let client = server.page_client(&sandbox);
    let (_, login, _) = get(&client, &server, "/login").await;
    let (status, _, location) = post(
        &client,
        &server,
        "/login",
        &[("csrf", &field_value(&login, "csrf")), ("username", "disp"), ("password", DEMO_PASSWORD)],
    )
    .await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard")), "dispatchers land on it");
    let (status, page, _) = get(&client, &server, "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = field_value(&page, "csrf");
    let (status, _, location) = post(&client, &server, "/dashboard/run", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard?notice=planned")));
    let (_, page, _) = get(&client, &server, "/dashboard?notice=planned").await;

    let section = |id: &str| -> String {
        let start = page.find(&format!("<section class=\"card\" id=\"{id}\">")).expect("the section");
        page[start..].split("</section>").next().expect("its end").to_owned()
    };
    assert!(page.contains("Planning ran."));
    assert!(section("backorders").contains("R-000004"), "the new item has no stock anywhere");
    assert!(section("waiting-for-seller").contains("D-000002"), "TC-200 x2 is entrusted to S1");
    let deliveries = section("deliveries");
    for expected in ["D-000001", "D-000003", "MFR → MW", "MW → B1", "B1 → customer:C1", "Issue D-000003-L1", "upcoming"]
    {
        assert!(deliveries.contains(expected), "{expected} missing in the deliveries");
    }
    assert!(section("receipts").contains("R-000004"));
    assert!(
        section("stock").contains("<td>MFR</td><td>DR-300</td><td>200</td><td>1</td><td>199</td>"),
        "{}",
        section("stock")
    );

    // Issuing the next leg from the dashboard moves the goods.
    let (status, _, location) = post(&client, &server, "/dashboard/legs/D-000003-L1/issue", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard?notice=issued")));
    let (_, delivery) = server.get("/api/v1/deliveries/D-000003", Some(&dispatcher)).await;
    assert_eq!(delivery["legs"][0]["status"], "issued");
    let (status, page, _) = post(&client, &server, "/dashboard/legs/D-000003-L3/issue", &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(page.contains("is the last leg: it completes when the delivery is confirmed"), "{page}");
    let (status, _, _) = post(&client, &server, "/dashboard/legs/D-000003-L2/issue", &[("csrf", "forged")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the dashboard's forms carry the CSRF token too");
}

#[tokio::test]
async fn a_seller_assigns_its_entrusted_deliveries_to_its_servicemen_on_its_page() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-200", 2).await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    server.plan(&dispatcher).await;

    let seller = server.page_client(&sandbox);
    let (_, login, _) = get(&seller, &server, "/login").await;
    post(
        &seller,
        &server,
        "/login",
        &[("csrf", &field_value(&login, "csrf")), ("username", "rep1"), ("password", DEMO_PASSWORD)],
    )
    .await;
    let (status, page, _) = get(&seller, &server, "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Deliveries entrusted to S1") && page.contains("D-000001"), "{page}");
    assert!(!page.contains("D-000002"), "a distributor delivery is not the seller's");
    assert!(page.contains("<option value=\"svc1\">") && page.contains("<option value=\"svc2\">"));
    assert!(!page.contains("svc3"), "only its own servicemen are offered");
    let csrf = field_value(&page, "csrf");

    let (status, _, location) =
        post(&seller, &server, "/dashboard/deliveries/D-000001/assign", &[("csrf", &csrf), ("assignee", "svc2")]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard?notice=assigned")));
    let (_, delivery) = server.get("/api/v1/deliveries/D-000001", Some(&dispatcher)).await;
    assert_eq!((&delivery["assignee"], &delivery["version"]), (&json!("svc2"), &json!(2)));

    // Another seller's serviceman, tampered into the form, is refused on the page.
    let (status, page, _) =
        post(&seller, &server, "/dashboard/deliveries/D-000001/assign", &[("csrf", &csrf), ("assignee", "svc3")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("svc3 cannot carry this delivery"), "{page}");
    let (status, _, _) =
        post(&seller, &server, "/dashboard/deliveries/D-000002/assign", &[("csrf", &csrf), ("assignee", "svc1")]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not the seller's delivery: not there, as far as it can tell");

    let customer = server.page_client(&sandbox);
    log_in(&customer, &server, "cust1").await;
    let (status, page, _) = get(&customer, &server, "/dashboard").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("The dashboard is for dispatchers and sellers; cust1 is a customer."));
}

#[tokio::test]
async fn login_follows_only_local_pages_whatever_is_hidden_in_next() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let client = server.page_client(&sandbox);
    log_in(&client, &server, "cust1").await;
    // Already logged in, /login sends the user on at once: to a safe place only.
    for hostile in ["/%09/evil.example/x", "/order%0d%0aX:%20y", "//evil.example", "/%5Cevil.example", "/elsewhere"] {
        let (status, _, location) = get(&client, &server, &format!("/login?next={hostile}")).await;
        assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/order")), "{hostile}");
    }
    let (_, _, location) = get(&client, &server, "/login?next=/receipts/R-000001").await;
    assert_eq!(location.as_deref(), Some("/receipts/R-000001"));
}

#[tokio::test]
async fn a_re_import_changes_what_a_logged_in_page_user_may_do_at_once() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let client = server.page_client(&sandbox);
    log_in(&client, &server, "cust1").await;
    let (_, page, _) = get(&client, &server, "/order").await;
    assert!(page.contains("Order for Office A"));

    let admin = server.token("admin").await;
    let moved = json!({"accounts": [{"username": "cust1", "password": "handover-demo", "role": "customer", "customer_id": "C2"}]});
    assert_eq!(server.post("/api/v1/admin/network", &moved, Some(&admin)).await.0, StatusCode::OK);
    let (_, page, _) = get(&client, &server, "/order").await;
    assert!(page.contains("Order for Office B"), "the page session follows the account: {page}");
}
