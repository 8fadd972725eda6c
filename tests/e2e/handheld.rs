//! The handheld page that `handover-agent daemon` serves: over plain HTTP from
//! a client, for its guards, and in a real phone-sized browser, for a day's
//! confirmation with a drawn signature while the server is away.

use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource as _, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use reqwest::{redirect::Policy, StatusCode};
use serde_json::{json, Value};

use crate::{
    agent::{assert_applied_once, busy_courier},
    browser::Browser,
    helpers::{field_value, AgentDaemon, Sandbox},
};

/// How long the daemon may take to notice the server went or came back.
const LINK_WAIT: Duration = Duration::from_secs(20);

fn page_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().expect("a client")
}

async fn page(client: &reqwest::Client, daemon: &AgentDaemon, path: &str) -> (StatusCode, String) {
    let response = client.get(format!("{}{path}", daemon.url)).send().await.expect("the page answers");
    (response.status(), response.text().await.expect("a body"))
}

async fn status(client: &reqwest::Client, daemon: &AgentDaemon) -> Value {
    let (_, body) = page(client, daemon, "/status").await;
    serde_json::from_str(&body).expect("JSON status")
}

/// Polls the daemon's status until `done` holds, or fails after [`LINK_WAIT`].
async fn wait_for_status(client: &reqwest::Client, daemon: &AgentDaemon, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + LINK_WAIT;
    loop {
        let status = status(client, daemon).await;
        if done(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "waited {LINK_WAIT:?} for {what}; status: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_handheld_page_saves_through_the_agents_rules_once_and_refuses_other_sites() {
    let sandbox = Sandbox::new();
    let (server, _) = busy_courier(&sandbox, 2, &[]).await;
    let daemon = sandbox.agent_daemon("exp1", &["--interval", "1", "--max-backoff", "1"]);
    let client = page_client();

    // Another site's page, or a DNS name rebound to 127.0.0.1, is not served.
    let rebound = client.get(&daemon.url).header("Host", "evil.example:80").send().await.expect("an answer");
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);

    let (status_code, list) = page(&client, &daemon, "/").await;
    assert_eq!(status_code, StatusCode::OK);
    assert!(list.contains("D-000001") && list.contains("D-000002"), "{list}");
    let (_, form) = page(&client, &daemon, "/deliveries/D-000001").await;
    let (token, confirmation_id) = (field_value(&form, "token"), field_value(&form, "confirmation_id"));
    let confirm_url = format!("{}/deliveries/D-000001/confirm", daemon.url);
    let post = |fields: Vec<(&'static str, String)>| client.post(&confirm_url).form(&fields).send();

    // A post without the page's token (a cross-site form) saves nothing.
    let forged =
        post(vec![("recipient", "X".into()), ("quantity", "2".into()), ("confirmation_id", confirmation_id.clone())]);
    assert_eq!(forged.await.expect("an answer").status(), StatusCode::FORBIDDEN);

    // The agent's own rules, with what was typed kept.
    let fields = |quantity: &str, recipient: &str| {
        vec![
            ("token", token.clone()),
            ("confirmation_id", confirmation_id.clone()),
            ("recipient", recipient.to_owned()),
            ("quantity", quantity.to_owned()),
            ("empties", "1".to_owned()),
            ("note", String::new()),
        ]
    };
    let too_many = post(fields("9", "Ms Front")).await.expect("an answer");
    assert_eq!(too_many.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let shown = too_many.text().await.expect("a body");
    assert!(shown.contains("the quantity must be from 1 to 2 for D-000001") && shown.contains("Ms Front"), "{shown}");
    let nameless = post(fields("2", "  ")).await.expect("an answer");
    assert_eq!(nameless.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(status(&client, &daemon).await["queued"], 0, "nothing saved from refused forms");

    // A double tap sends the same form twice: saved once.
    let (first, second) = tokio::join!(post(fields("2", "Ms Front")), post(fields("2", "Ms Front")));
    for answer in [first, second] {
        let answer = answer.expect("an answer");
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(answer.headers()["location"], "/?saved=D-000001");
    }
    // Another form for the same delivery is refused: it was confirmed here (and,
    // if the daemon was quick, the server already says delivered).
    let (_, form_again) = page(&client, &daemon, "/deliveries/D-000001").await;
    assert!(!form_again.contains("confirm-form"), "no second confirm form: {form_again}");
    let mut other = fields("2", "Someone else");
    other[1].1 = uuid_v7_like();
    let refused = post(other).await.expect("an answer");
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let shown = refused.text().await.expect("a body");
    assert!(
        shown.contains("was already confirmed on this handheld") || shown.contains("D-000001 is delivered"),
        "{shown}"
    );

    // The daemon syncs it at once; the command line waits its turn meanwhile.
    wait_for_status(&client, &daemon, "the confirmation to be sent", |s| s["queued"] == 0 && s["online"] == true).await;
    let busy = sandbox.agent("exp1", &["status"], None);
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use by another handover-agent"));
    let dispatcher = server.login("disp", "disp-password", None).await.access_token;
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!((&receipt["delivered"], &receipt["proof"]["recipient"]), (&json!(true), &json!("Ms Front")));
    let (_, receipt) = server.get("/api/v1/receipts/R-000002", Some(&dispatcher)).await;
    assert_eq!(receipt["delivered"], false);
}

/// A fresh UUIDv7-shaped id, as the page would put in a new form.
#[tokio::test]
async fn confirm_and_fail_from_the_command_line_go_through_a_running_daemon() {
    let sandbox = Sandbox::new();
    let (server, _) = busy_courier(&sandbox, 2, &[]).await;
    let daemon = sandbox.agent_daemon("exp1", &["--interval", "1", "--max-backoff", "1"]);
    let client = page_client();

    // A capture without the secret the daemon published is refused, and saves nothing.
    let capture = json!({"outcome": "delivered", "delivery_id": "D-000001", "recipient": "Mallory",
        "quantity": null, "empties": 0, "note": null});
    let forged = client
        .post(format!("{}/capture", daemon.url))
        .header("x-handover-token", "a-guess")
        .json(&capture)
        .send()
        .await
        .expect("an answer");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    // With the published secret, a malformed capture and one the confirmation
    // rules refuse (no recipient) are answered as such, and save nothing.
    let door: Value = serde_json::from_slice(
        &std::fs::read(sandbox.path("agent-exp1").join("daemon.json")).expect("the daemon published its door"),
    )
    .expect("JSON");
    let token = door["token"].as_str().expect("a token");
    let capture_url = format!("{}/capture", daemon.url);
    let malformed = client.post(&capture_url).header("x-handover-token", token).body("{\"outcome\":").send().await;
    assert_eq!(malformed.expect("an answer").status(), StatusCode::BAD_REQUEST);
    let mut nameless = capture.clone();
    nameless["recipient"] = json!("  ");
    let refused = client.post(&capture_url).header("x-handover-token", token).json(&nameless).send().await;
    let refused = refused.expect("an answer");
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let answer: Value = refused.json().await.expect("a JSON answer");
    assert!(answer["refused"].as_str().is_some_and(|m| m.contains("names its recipient")), "{answer}");
    assert_eq!(status(&client, &daemon).await["queued"], 0);

    // The store is the daemon's: `confirm` and `fail` hand their captures to it,
    // under the same rules as the page's forms.
    let saved = sandbox.agent_ok("exp1", &["confirm", "D-000001", "--recipient", "Mr Door"]);
    let id = saved.trim();
    assert!(id.len() == 36 && id.matches('-').count() == 4, "prints the confirmation id: {saved}");
    let again = sandbox.agent("exp1", &["confirm", "D-000001", "--recipient", "Someone else"], None);
    assert!(!again.status.success());
    // Refused for its capture here, or, if the daemon was quick to sync and
    // pull, because the delivery is now delivered.
    let again = String::from_utf8_lossy(&again.stderr);
    assert!(
        again.contains("was already confirmed on this handheld") || again.contains("D-000001 is delivered"),
        "{again}"
    );
    sandbox.agent_ok("exp1", &["fail", "D-000002", "--reason", "customer_absent"]);
    let busy = sandbox.agent("exp1", &["list"], None);
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use by another handover-agent"));

    // The daemon syncs both at once.
    wait_for_status(&client, &daemon, "both captures to be sent", |s| s["queued"] == 0 && s["online"] == true).await;
    let dispatcher = server.login("disp", "disp-password", None).await.access_token;
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!((&receipt["delivered"], &receipt["proof"]["recipient"]), (&json!(true), &json!("Mr Door")));
    let (_, failed) = server.get("/api/v1/deliveries/D-000002", Some(&dispatcher)).await;
    assert_eq!(failed["assignee"], Value::Null, "a failed delivery goes back to the dispatcher: {failed}");

    // A killed daemon leaves its door file behind; nobody answers there, so the
    // next command opens the store itself.
    drop(daemon);
    let local = sandbox.agent("exp1", &["confirm", "D-000001", "--recipient", "Mr Door"], None);
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(stderr.contains("D-000001 is delivered") || stderr.contains("already confirmed"), "{stderr}");
}

fn uuid_v7_like() -> String {
    "01890a5d-ac96-774b-bcce-b302099a8057".to_owned()
}

/// Draws a signature on the delivery form's pad with a finger's strokes.
async fn draw_signature(browser: &Browser) {
    let canvas = browser.find("canvas#signature-pad").await;
    let stroke = MouseActions::new("finger".into())
        .then(PointerAction::MoveToElement { element: canvas.clone(), duration: None, x: -120.0, y: 10.0 })
        .then(PointerAction::Down { button: MOUSE_BUTTON_LEFT })
        .then(PointerAction::MoveToElement {
            element: canvas.clone(),
            duration: Some(Duration::from_millis(80)),
            x: -40.0,
            y: -25.0,
        })
        .then(PointerAction::MoveToElement {
            element: canvas.clone(),
            duration: Some(Duration::from_millis(80)),
            x: 30.0,
            y: 20.0,
        })
        .then(PointerAction::MoveToElement {
            element: canvas,
            duration: Some(Duration::from_millis(80)),
            x: 110.0,
            y: -15.0,
        })
        .then(PointerAction::Up { button: MOUSE_BUTTON_LEFT });
    browser.client.perform_actions(stroke).await.expect("the signature is drawn");
}

#[tokio::test]
async fn a_courier_confirms_with_a_drawn_signature_while_the_server_is_down_and_it_syncs_later() {
    let Some(browser) = Browser::start().await else { return };
    let sandbox = Sandbox::new();
    let (server, _) = busy_courier(&sandbox, 1, &[]).await;
    let daemon = sandbox.agent_daemon("exp1", &["--interval", "2", "--max-backoff", "2"]);
    let client = page_client();
    wait_for_status(&client, &daemon, "a first sync", |s| s["online"] == true).await;

    // The server goes away (the van is in a tunnel).
    let port = server.url.rsplit(':').next().expect("a port").to_owned();
    assert!(server.stop().success());

    browser.goto(&daemon.url).await;
    browser.click_and_load("a#open-D-000001").await;
    browser.fill("input#recipient", "Ms Reception").await;
    browser.fill("input#empties", "1").await;
    draw_signature(&browser).await;
    let signature = browser.value("input#signature").await;
    assert!(signature.starts_with("data:image/png;base64,") && signature.len() > 200, "{signature:.60}");
    browser.screenshot("handheld-signed").await;
    browser.click_and_load("button#confirm").await;

    // Saved on the handheld, shown as waiting while the server is away.
    assert!(browser.text("p#notice").await.contains("D-000001 saved on this handheld"));
    assert!(browser.text("#done-D-000001").await.contains("waiting to be sent"));
    let deadline = Instant::now() + LINK_WAIT;
    while browser.text("p#link").await != "offline, 1 waiting" {
        assert!(Instant::now() < deadline, "the banner says {:?}", browser.text("p#link").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.screenshot("handheld-offline").await;

    // The server is back: the daemon sends it on its own, the banner follows.
    let server = sandbox.start(&["--listen", &format!("127.0.0.1:{port}")]);
    let deadline = Instant::now() + LINK_WAIT;
    while browser.text("p#link").await != "online, all sent" {
        assert!(Instant::now() < deadline, "the banner says {:?}", browser.text("p#link").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.goto(&daemon.url).await;
    assert!(browser.text("#done-D-000001").await.contains("sent"));
    browser.screenshot("handheld-synced").await;

    let dispatcher = server.login("disp", "disp-password", None).await.access_token;
    let (_, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!(
        (&receipt["delivered"], &receipt["proof"]["recipient"], &receipt["proof"]["signed"]),
        (&json!(true), &json!("Ms Reception"), &json!(true)),
        "{receipt}"
    );
    assert_applied_once(&server, 1, &[]).await;
}

#[tokio::test]
async fn a_delivery_on_its_way_shows_where_it_is_headed_and_no_forms_until_its_goods_arrive() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 12).await; // from the master warehouse, through B1
    server.plan(&dispatcher).await;
    let login = sandbox.agent_login("exp1", &server.url, "exp1", crate::helpers::DEMO_PASSWORD, Some("hh-on-its-way"));
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    let daemon = sandbox.agent_daemon("exp1", &["--interval", "1", "--max-backoff", "1"]);
    let client = page_client();
    wait_for_status(&client, &daemon, "the first sync", |status| !status["last_sync_at"].is_null()).await;

    let (_, list) = page(&client, &daemon, "/").await;
    assert!(list.contains("on its way to B1"), "{list}");
    let (status_code, delivery) = page(&client, &daemon, "/deliveries/D-000001").await;
    assert_eq!(status_code, StatusCode::OK);
    assert!(delivery.contains("On its way to B1") && !delivery.contains("<form"), "{delivery}");

    // The goods reach B1: the next pull brings it ready, with its forms.
    let (status_code, _) = server.post("/api/v1/legs/D-000001-L1/issue", &json!({}), Some(&dispatcher)).await;
    assert_eq!(status_code, StatusCode::OK);
    let deadline = Instant::now() + LINK_WAIT;
    loop {
        let (_, delivery) = page(&client, &daemon, "/deliveries/D-000001").await;
        if delivery.contains("<form") {
            assert!(!delivery.contains("On its way"), "{delivery}");
            break;
        }
        assert!(Instant::now() < deadline, "still on its way after {LINK_WAIT:?}: {delivery}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A 1x1 PNG, as a camera roll would hand the page a file.
const TINY_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[tokio::test]
async fn a_photo_taken_through_the_page_and_a_drawn_signature_show_on_the_customers_receipt_page() {
    use base64::Engine as _;
    let Some(browser) = Browser::start().await else { return };
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let customer = server.token("cust1").await;
    let dispatcher = server.token("disp").await;
    server.confirm_order(&customer, "C1", "TC-100", 1).await;
    server.plan(&dispatcher).await;
    let code = server.receipt(&customer, "R-000001").await["handover_code"].as_str().expect("a code").to_owned();
    let courier = server.delivery(&dispatcher, "D-000001").await["assignee"].as_str().expect("a courier").to_owned();
    let login = sandbox.agent_login(&courier, &server.url, &courier, crate::helpers::DEMO_PASSWORD, Some("hh-photo"));
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    let daemon = sandbox.agent_daemon(&courier, &["--interval", "1", "--max-backoff", "1"]);
    let client = page_client();
    wait_for_status(&client, &daemon, "the first sync", |status| !status["last_sync_at"].is_null()).await;

    let picture = sandbox.path("door.png");
    std::fs::write(&picture, base64::engine::general_purpose::STANDARD.decode(TINY_PNG).expect("a PNG"))
        .expect("written");
    browser.goto(&daemon.url).await;
    browser.click_and_load("a#open-D-000001").await;
    browser.fill("input#recipient", "Ms Reception").await;
    browser.fill("input#code", &code).await;
    browser.find("input#photo-pick").await.send_keys(picture.to_str().expect("a path")).await.expect("a file chosen");
    let deadline = Instant::now() + LINK_WAIT;
    while !browser.value("input.photo").await.starts_with("data:image/jpeg;base64,") {
        assert!(Instant::now() < deadline, "the page did not prepare the photo");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    draw_signature(&browser).await;
    browser.screenshot("handheld-photo").await;
    browser.click_and_load("button#confirm").await;
    assert!(browser.text("p#notice").await.contains("D-000001 saved on this handheld"));
    wait_for_status(&client, &daemon, "the photo sent", |status| {
        status["photos_waiting"] == 0 && status["queued"] == 0
    })
    .await;

    crate::browser_exceptions::log_in_at(&browser, &server, "/receipts/R-000001", "cust1").await;
    assert_eq!(browser.text("dd#proof-recipient").await, "Ms Reception");
    assert_eq!(browser.text("dd#proof-code").await, "matched");
    assert!(browser.text("dd#proof-origin").await.contains("verified"), "{}", browser.text("dd#proof-origin").await);
    for image in ["img#proof-photo", "img#proof-signature"] {
        let loaded = browser
            .client
            .execute(
                &format!("const i = document.querySelector('{image}'); return i.complete && i.naturalWidth > 0;"),
                vec![],
            )
            .await
            .expect("a script runs");
        assert_eq!(loaded, json!(true), "{image} shows");
    }
    browser.screenshot("receipt-proof").await;
}
