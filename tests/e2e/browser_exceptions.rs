//! The day's exceptions handled in a real browser: the dispatcher sends a
//! delivery out again after a failed attempt, cancels one, and reverses a
//! hand-over confirmed by mistake, all from the dashboard; a customer calls off
//! an order of its own from its receipt page. The handhelds' reports come in
//! through the sync API, as they would from the road; what the pages did is then
//! checked against what the API says the server stored.
//!
//! Like `browser.rs`, whose [`Browser`] these tests drive, they pass with a
//! notice where Chromium is not installed, and fail in CI.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    browser::Browser,
    helpers::{Sandbox, TestServer, DEMO_PASSWORD},
};

/// Opens `page` as a stranger, logs in as `username` on the login form it is
/// sent to, and checks that the login leads back to `page`.
pub(crate) async fn log_in_at(browser: &Browser, server: &TestServer, page: &str, username: &str) {
    browser.goto(&format!("{}{page}", server.url)).await;
    browser.find("form#login-form").await;
    browser.fill("input#username", username).await;
    browser.fill("input#password", DEMO_PASSWORD).await;
    browser.click_and_load("button#login-submit").await;
    assert_eq!(browser.path().await, page, "after the login {username} is back on the page it asked for");
}

/// Scrolls the page, and any table scrolling sideways around it, until the
/// element matching `css` is in the middle of the screen, so that a screenshot
/// shows it on a phone narrower than the table.
async fn bring_into_view(browser: &Browser, css: &str) {
    browser.find(css).await;
    browser
        .client
        .execute(
            "document.querySelector(arguments[0]).scrollIntoView({block: 'center', inline: 'center'})",
            vec![json!(css)],
        )
        .await
        .unwrap_or_else(|e| panic!("scrolling `{css}` into view: {e}"));
}

/// Insists that the page is no wider than the phone's screen. Tables may
/// scroll sideways inside their `.scroll` box; the page itself must not, or a
/// person pans into blank space and taps miss: with the dashboard wider than
/// the screen, chromedriver's taps landed some 40 px below the button aimed at.
/// The failure names what sticks out.
async fn assert_fits_the_screen(browser: &Browser, page: &str) {
    let measured = browser
        .client
        .execute(
            "const page = document.scrollingElement;
             const sticking_out = [...document.body.querySelectorAll('*')]
               .filter(e => e.getBoundingClientRect().right > page.clientWidth + 1)
               .filter(e => !e.closest('.scroll') || getComputedStyle(e).position === 'absolute')
               .map(e => `${e.tagName.toLowerCase()}.${e.className} ${e.id || e.htmlFor || ''} \
                          (right edge at ${Math.round(e.getBoundingClientRect().right)} px)`);
             return [page.scrollWidth, page.clientWidth, sticking_out];",
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("measuring {page}: {e}"));
    let (wide, screen) = (measured[0].as_u64().unwrap_or_default(), measured[1].as_u64().unwrap_or_default());
    assert!(wide <= screen, "{page} is {wide} px wide on a {screen} px screen; sticking out: {}", measured[2]);
}

/// A handheld's report that nobody could take the goods.
fn failed_attempt(confirmation_id: &str, reason: &str, note: &str) -> Value {
    json!({
        "confirmation_id": confirmation_id, "outcome": "failed", "reason": reason, "note": note,
        "quantity": 0, "captured_at": "2031-01-01T09:00:00Z"
    })
}

/// A handheld's report that the goods were handed over.
fn hand_over(confirmation_id: &str, quantity: u32) -> Value {
    json!({
        "confirmation_id": confirmation_id, "outcome": "delivered", "quantity": quantity,
        "recipient": "Ms Reception", "empties_collected": 0, "captured_at": "2031-01-01T09:00:00Z"
    })
}

/// Sends `report` about `delivery_id` from the handheld of the courier who holds
/// it, under the version that courier holds, and insists that it is accepted.
/// Planning picks the courier (the one with the fewest open deliveries); the
/// test asks rather than guesses. Returns who reported.
async fn report_from_its_courier(
    server: &TestServer,
    dispatcher: &str,
    delivery_id: &str,
    mut report: Value,
) -> String {
    let held = server.delivery(dispatcher, delivery_id).await;
    let courier = held["assignee"].as_str().unwrap_or_else(|| panic!("{delivery_id} has a courier: {held}")).to_owned();
    report["delivery_id"] = json!(delivery_id);
    report["version"] = held["version"].clone();
    let device = format!("hh-{courier}");
    let token = server.login(&courier, DEMO_PASSWORD, Some(&device)).await.access_token;
    let body = json!({"device_id": device, "confirmations": [report], "queued": 0});
    let (status, answer) = server.post("/api/v1/sync/confirmations", &body, Some(&token)).await;
    assert_eq!((status, &answer["results"][0]["status"]), (StatusCode::OK, &json!("accepted")), "{answer}");
    courier
}

#[tokio::test]
async fn a_dispatcher_sends_again_cancels_and_reverses_from_the_dashboard() {
    let Some(browser) = Browser::start().await else { return };
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    // Three orders for Office A, all served from the North branch (B1), whose
    // expediters are exp1 and exp2: R-000001 goes with D-000001, and so on.
    for quantity in [1, 1, 2] {
        server.confirm_order(&dispatcher, "C1", "TC-100", quantity).await;
    }
    server.plan(&dispatcher).await;
    let absent_note = "Reception closed at noon; the neighbour would not sign";
    let absent_courier = report_from_its_courier(
        &server,
        &dispatcher,
        "D-000001",
        failed_attempt("0192f1a2-0000-7000-8000-00000000e001", "customer_absent", absent_note),
    )
    .await;
    let moved_note = "Office A has moved out of this building";
    report_from_its_courier(
        &server,
        &dispatcher,
        "D-000002",
        failed_attempt("0192f1a2-0000-7000-8000-00000000e002", "wrong_address", moved_note),
    )
    .await;
    report_from_its_courier(&server, &dispatcher, "D-000003", hand_over("0192f1a2-0000-7000-8000-00000000e003", 2))
        .await;

    // The two failed attempts wait for the dispatcher, each with why and who.
    log_in_at(&browser, &server, "/dashboard", "disp").await;
    let heading = browser.text("section#failed-attempts h2").await;
    assert_eq!(heading, "Failed attempts (2)");
    let absent = browser.text("tr#failed-D-000001").await;
    for expected in ["R-000001", "C1", "TC-100", "customer_absent", absent_note, absent_courier.as_str()] {
        assert!(absent.contains(expected), "{expected:?} missing from the row: {absent:?}");
    }
    let moved = browser.text("tr#failed-D-000002").await;
    assert!(moved.contains("wrong_address") && moved.contains(moved_note), "the row: {moved:?}");
    assert!(!browser.has("tr#failed-D-000003").await, "a delivered delivery is no failed attempt");
    bring_into_view(&browser, "section#failed-attempts").await;
    browser.screenshot("dashboard-failed-attempts").await;
    bring_into_view(&browser, "tr#failed-D-000001 td:nth-child(6)").await;
    browser.screenshot("dashboard-failed-attempts-reasons").await;
    bring_into_view(&browser, "select#reattempt-D-000001").await;
    browser.screenshot("dashboard-failed-attempts-forms").await;
    assert_fits_the_screen(&browser, "the dashboard").await;

    // Sent again with the other expediter of the branch.
    let other_courier = if absent_courier == "exp1" { "exp2" } else { "exp1" };
    browser.choose("select#reattempt-D-000001", other_courier).await;
    browser.click_and_load("tr#failed-D-000001 form[action$='/assign'] button").await;
    assert_eq!(browser.text("p#notice").await, "The delivery was assigned.");
    assert!(!browser.has("tr#failed-D-000001").await, "a delivery with a courier waits no more");
    assert!(browser.has("tr#failed-D-000002").await, "the other failed attempt still waits");
    let sent_again = server.delivery(&dispatcher, "D-000001").await;
    assert_eq!(
        (&sent_again["assignee"], &sent_again["cancelled"]),
        (&json!(other_courier), &json!(false)),
        "{sent_again}"
    );

    // A blank reason gets past the browser's `required` but not the server.
    browser.fill("input#cancel-reason-D-000002", "   ").await;
    browser.click_and_load("tr#failed-D-000002 form[action$='/cancel'] button").await;
    let alert = browser.text("p#alert").await;
    assert!(alert.contains("say why (reason)"), "the alert: {alert:?}");
    assert!(browser.has("tr#failed-D-000002").await, "a refused cancellation leaves the delivery waiting");
    assert_eq!(server.delivery(&dispatcher, "D-000002").await["cancelled"], false);

    // Cancelled with a reason: the delivery and its receipt are closed.
    let cancel_reason = "Office A moved away; they will order again";
    browser.fill("input#cancel-reason-D-000002", cancel_reason).await;
    browser.click_and_load("tr#failed-D-000002 form[action$='/cancel'] button").await;
    assert_eq!(browser.text("p#notice").await, "The delivery was cancelled.");
    assert!(!browser.has("tr#failed-D-000002").await, "a cancelled delivery waits no more");
    let hint = browser.text("section#failed-attempts p.hint").await;
    assert_eq!(hint, "No delivery is waiting after a failed attempt.");
    let cancelled_row = browser.text("tr#receipt-R-000002").await;
    assert!(cancelled_row.contains("cancelled"), "the receipt's row: {cancelled_row:?}");
    assert!(!browser.has("input#cancel-receipt-reason-R-000002").await, "a cancelled receipt offers no Cancel");
    let cancelled = server.delivery(&dispatcher, "D-000002").await;
    assert_eq!(
        (&cancelled["cancelled"], &cancelled["cancellation"]["by"], &cancelled["cancellation"]["reason"]),
        (&json!(true), &json!("disp"), &json!(cancel_reason)),
        "{cancelled}"
    );
    assert_eq!(server.receipt(&dispatcher, "R-000002").await["cancelled"], true);

    // The hand-over confirmed by mistake is reversed from the receipts table.
    let reverse_reason = "Handed to the wrong office; goods taken back";
    browser.fill("input#reverse-reason-R-000003", reverse_reason).await;
    bring_into_view(&browser, "input#reverse-reason-R-000003").await;
    browser.screenshot("dashboard-receipts-reverse").await;
    browser.click_and_load("tr#receipt-R-000003 form[action$='/reverse'] button").await;
    assert_eq!(browser.text("p#notice").await, "The confirmation was reversed; the delivery is open again.");
    assert!(!browser.has("input#reverse-reason-R-000003").await, "nothing delivered is left to reverse");
    assert!(browser.has("input#cancel-receipt-reason-R-000003").await, "an open receipt may be cancelled");
    let reversed = server.receipt(&dispatcher, "R-000003").await;
    assert_eq!(
        (&reversed["delivered"], &reversed["delivered_quantity"], &reversed["reversals"].as_array().map(Vec::len)),
        (&json!(false), &json!(0), &Some(1)),
        "{reversed}"
    );
    let reversal = &reversed["reversals"][0];
    assert_eq!(
        (&reversal["delivery_id"], &reversal["quantity"], &reversal["by"], &reversal["reason"]),
        (&json!("D-000003"), &json!(2), &json!("disp"), &json!(reverse_reason)),
        "{reversed}"
    );
    assert_eq!(server.delivery(&dispatcher, "D-000003").await["status"], "ready", "open again for its courier");
}

#[tokio::test]
async fn a_customer_cancels_its_fresh_order_on_its_receipt_page_but_not_one_already_attempted() {
    let Some(browser) = Browser::start().await else { return };
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    let customer = server.token("cust1").await;
    // R-000001 was planned and its courier found nobody in; R-000002 is fresh.
    server.confirm_order(&customer, "C1", "TC-100", 1).await;
    server.plan(&dispatcher).await;
    let note = "Nobody at the door";
    report_from_its_courier(
        &server,
        &dispatcher,
        "D-000001",
        failed_attempt("0192f1a2-0000-7000-8000-00000000c001", "customer_absent", note),
    )
    .await;
    let fresh = server.confirm_order(&customer, "C1", "TC-100", 2).await;
    assert_eq!(fresh, "R-000002");

    log_in_at(&browser, &server, "/receipts/R-000002", "cust1").await;
    browser.find("form#cancel-receipt").await;
    assert_fits_the_screen(&browser, "the receipt page").await;
    assert!(!browser.has("dd#cancelled").await, "nothing is cancelled yet");
    let why = "Ordered twice by mistake";
    browser.fill("input#cancel-reason", why).await;
    browser.click_and_load("button#cancel-order").await;
    assert_eq!(browser.path().await, "/receipts/R-000002");
    assert_eq!(browser.text("p#notice").await, "Your order was cancelled.");
    let cancelled = browser.text("dd#cancelled").await;
    assert!(cancelled.contains("cust1") && cancelled.contains(why), "the cancellation: {cancelled:?}");
    assert!(!browser.has("form#cancel-receipt").await, "a cancelled order cannot be cancelled again");
    browser.screenshot("receipt-cancelled-by-customer").await;
    let stored = server.receipt(&customer, "R-000002").await;
    assert_eq!(
        (&stored["cancelled"], &stored["cancellation"]["by"], &stored["cancellation"]["reason"]),
        (&json!(true), &json!("cust1"), &json!(why)),
        "{stored}"
    );

    // Once a courier has been to the door, only the dispatcher may call it off.
    browser.goto(&format!("{}/receipts/R-000001", server.url)).await;
    assert_eq!(browser.text("span#receipt-id").await, "R-000001");
    assert_eq!(browser.text("dd#delivered").await, "not yet");
    assert!(!browser.has("form#cancel-receipt").await, "an attempted order offers no Cancel");
    assert_eq!(server.receipt(&customer, "R-000001").await["cancelled"], false);
}
