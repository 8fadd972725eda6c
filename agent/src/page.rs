//! The handheld page that `handover-agent daemon` serves on 127.0.0.1: the
//! courier's deliveries, a delivery's details, the confirm and fail forms, and
//! the state of the link. It captures through [`crate::capture`], exactly as the
//! command line does.
//!
//! It listens on loopback only, and still defends itself against the other
//! pages the phone's browser may open: the `Host` header must name this page
//! (no DNS rebinding), every form carries a token made at start-up (no
//! cross-site posts), and the content security policy allows only this page's
//! own script.

use std::{io::Read as _, sync::Arc};

use askama::Template;
use handover_shared::{
    sync::{Assignment, AssignmentStatus, FailureReason, Outcome},
    DeliveryId, NodeId,
};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::{
    capture::{self, CaptureError, Delivered, Failed},
    daemon::{LinkState, Syncer},
    handoff,
    store::LocalStore,
};

/// Forms are small; a drawn signature is the biggest part (its data URL is
/// escaped once more in the form body).
const MAX_FORM_BYTES: usize = 1024 * 1024;

const SCRIPT: &str = include_str!("../templates/handheld.js");

const SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; \
                               connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub struct Page {
    store: LocalStore,
    syncer: Arc<Syncer>,
    /// `127.0.0.1:PORT` and `localhost:PORT`: the only `Host` headers served.
    hosts: [String; 2],
    form_token: String,
    /// What `confirm` and `fail` show to hand a capture over (see `handoff`).
    handoff_token: String,
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    location: Option<String>,
}

impl Reply {
    fn html(status: u16, template: &impl Template) -> Self {
        match template.render() {
            Ok(body) => Self { status, content_type: "text/html; charset=utf-8", body, location: None },
            Err(err) => Self::text(500, &format!("the page could not be drawn: {err}")),
        }
    }

    fn text(status: u16, message: &str) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: message.to_owned(), location: None }
    }

    fn json(value: &serde_json::Value) -> Self {
        Self { status: 200, content_type: "application/json", body: value.to_string(), location: None }
    }

    fn see_other(location: String) -> Self {
        Self { status: 303, content_type: "text/plain; charset=utf-8", body: String::new(), location: Some(location) }
    }
}

/// The words and colour of the link banner, the same in the page and in `/status`.
pub fn banner(link: &LinkState, queued: usize) -> (&'static str, String) {
    match (link.online, queued) {
        (Some(false), 0) => ("offline", "offline, nothing waiting".to_owned()),
        (Some(false), n) => ("offline", format!("offline, {n} waiting")),
        (_, _) if link.problem.is_some() => ("problem", link.problem.clone().unwrap_or_default()),
        (None, 0) => ("pending", "not synced yet".to_owned()),
        (_, 0) => ("online", "online, all sent".to_owned()),
        (_, n) => ("pending", format!("sending, {n} waiting")),
    }
}

struct Banner {
    class: &'static str,
    text: String,
}

struct Row {
    delivery_id: String,
    customer: String,
    item: String,
    quantity: u32,
    status: String,
    capture: Option<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    banner: Banner,
    who: String,
    notice: Option<String>,
    open: Vec<Row>,
    done: Vec<Row>,
    queued: usize,
    rejected: Vec<crate::store::Rejected>,
    form_token: String,
}

#[derive(Template)]
#[template(path = "delivery.html")]
struct DeliveryPage {
    banner: Banner,
    assignment: Assignment,
    status: String,
    /// Upcoming: where its goods are headed. The page says so instead of
    /// offering forms that capture would refuse.
    on_its_way_to: Option<NodeId>,
    /// Ready and nothing captured under this version: the forms are shown.
    capturable: bool,
    capture: Option<(&'static str, String)>,
    error: Option<String>,
    form: ConfirmForm,
    fail_form: FailForm,
    reasons: [(&'static str, &'static str); 5],
    form_token: String,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    banner: Banner,
    title: String,
    message: String,
}

/// The confirm form as sent; everything a string so that a wrong value comes
/// back to the courier with the rest of what was typed.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConfirmForm {
    token: String,
    confirmation_id: String,
    recipient: String,
    quantity: String,
    empties: String,
    note: String,
    signature: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SyncForm {
    token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FailForm {
    token: String,
    confirmation_id: String,
    reason: String,
    note: String,
}

const REASONS: [(&str, &str); 5] = [
    ("customer_absent", "Customer absent"),
    ("refused", "Refused"),
    ("damaged", "Damaged"),
    ("wrong_address", "Wrong address"),
    ("other", "Other (say what in the note)"),
];

/// The status in the courier's words: an upcoming delivery says where its
/// goods are headed, which is what the courier waits for.
fn status_text(assignment: &Assignment) -> String {
    match assignment.status {
        AssignmentStatus::Upcoming => format!("on its way to {}", assignment.pickup_node),
        AssignmentStatus::Ready => "ready".into(),
        AssignmentStatus::Delivered => "delivered".into(),
        AssignmentStatus::Cancelled => "cancelled".into(),
        AssignmentStatus::ReassignedAway => "reassigned".into(),
    }
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Failed => "failed",
    }
}

fn new_confirmation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Page {
    pub fn new(store: LocalStore, syncer: Arc<Syncer>, port: u16) -> Self {
        let form_token = uuid::Uuid::new_v4().simple().to_string();
        let handoff_token = uuid::Uuid::new_v4().simple().to_string();
        let hosts = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        Self { store, syncer, hosts, form_token, handoff_token }
    }

    /// The secret that commands run beside this daemon present with a capture.
    pub fn secret(&self) -> String {
        self.handoff_token.clone()
    }

    /// Answers requests until the process ends; one at a time is plenty for
    /// one courier's browser.
    pub fn serve(&self, server: &Server) {
        for mut request in server.incoming_requests() {
            let reply = self.handle(&mut request);
            let mut response = Response::from_string(reply.body).with_status_code(reply.status);
            let mut headers = vec![
                ("Content-Type", reply.content_type),
                ("Cache-Control", "no-store"),
                ("Content-Security-Policy", SECURITY_POLICY),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
            ];
            if let Some(location) = &reply.location {
                headers.push(("Location", location));
            }
            for (name, value) in headers {
                if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                    response.add_header(header);
                }
            }
            // The browser went away: nothing to do about it.
            let _ = request.respond(response);
        }
    }

    fn handle(&self, request: &mut Request) -> Reply {
        let host = request.headers().iter().find(|h| h.field.equiv("Host")).map(|h| h.value.as_str().to_owned());
        if !host.is_some_and(|host| self.hosts.contains(&host)) {
            return Reply::text(421, "this page answers only at 127.0.0.1 or localhost on its own port");
        }
        let url = request.url().to_owned();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let method = request.method().clone();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (Method::Get, [""]) => self.index(query),
            (Method::Get, ["status"]) => self.status(),
            (Method::Get, ["handheld.js"]) => Reply {
                status: 200,
                content_type: "text/javascript; charset=utf-8",
                body: SCRIPT.into(),
                location: None,
            },
            (Method::Get, ["deliveries", id]) => self.delivery(id, None, None, None),
            (Method::Post, ["sync"]) => match self.read_form::<SyncForm>(request) {
                Ok(_) => {
                    self.syncer.nudge();
                    Reply::see_other("/".into())
                }
                Err(reply) => reply,
            },
            (Method::Post, ["deliveries", id, "confirm"]) => match self.read_form(request) {
                Ok(form) => self.confirm(id, form),
                Err(reply) => reply,
            },
            (Method::Post, ["deliveries", id, "fail"]) => match self.read_form(request) {
                Ok(form) => self.fail(id, form),
                Err(reply) => reply,
            },
            (Method::Post, ["capture"]) => self.handed_capture(request),
            (Method::Get | Method::Post, _) => self.message(404, "Not here", "There is no such page on this handheld."),
            _ => Reply::text(405, "only GET and POST are served here"),
        }
    }

    /// Reads a form body, refusing oversized ones and those without this
    /// page's token.
    fn read_form<F: for<'de> Deserialize<'de> + HasToken>(&self, request: &mut Request) -> Result<F, Reply> {
        let body = read_body(request).map_err(|(status, message)| Reply::text(status, message))?;
        let form: F = serde_urlencoded::from_bytes(&body).map_err(|_| Reply::text(400, "the form is malformed"))?;
        if !same_secret(form.token(), &self.form_token) {
            return Err(self.message(
                403,
                "Form expired",
                "This form came from an older page (or another site). Go back, reload, and send it again.",
            ));
        }
        Ok(form)
    }

    /// A capture that `confirm` or `fail` hands over while this daemon holds
    /// the store: saved exactly as the page's own forms are.
    fn handed_capture(&self, request: &mut Request) -> Reply {
        let answer = |status: u16, answer: handoff::Answer| Reply {
            status,
            content_type: "application/json",
            body: serde_json::to_string(&answer).unwrap_or_default(),
            location: None,
        };
        let token = request.headers().iter().find(|h| h.field.equiv(handoff::TOKEN_HEADER)).map(|h| h.value.as_str());
        if !token.is_some_and(|token| same_secret(token, &self.handoff_token)) {
            return answer(403, handoff::Answer::Refused("this daemon did not publish that token".into()));
        }
        let body = match read_body(request) {
            Ok(body) => body,
            Err((status, message)) => return answer(status, handoff::Answer::Refused(message.into())),
        };
        let Ok(capture) = serde_json::from_slice::<handoff::Capture>(&body) else {
            return answer(400, handoff::Answer::Refused("the capture is malformed".into()));
        };
        // The capture path applies the confirmation rules (a recipient, a note
        // for `other`): nothing to check twice here.
        let saved = match capture {
            handoff::Capture::Delivered { delivery_id, recipient, quantity, empties, note } => {
                DeliveryId::parse(delivery_id).map_err(|err| format!("invalid delivery id: {err}")).and_then(|id| {
                    let report = Delivered { recipient, quantity, empties, note, signature: None };
                    capture::deliver(&self.store, &id, report, None).map_err(|err| describe(&err))
                })
            }
            handoff::Capture::Failed { delivery_id, reason, note } => {
                DeliveryId::parse(delivery_id).map_err(|err| format!("invalid delivery id: {err}")).and_then(|id| {
                    capture::fail(&self.store, &id, Failed { reason, note }, None).map_err(|err| describe(&err))
                })
            }
        };
        match saved {
            Ok(id) => {
                self.syncer.nudge();
                answer(200, handoff::Answer::Saved(id))
            }
            Err(message) => answer(422, handoff::Answer::Refused(message)),
        }
    }

    fn banner(&self) -> Banner {
        let (class, text) = banner(&self.syncer.link(), self.store.queued());
        Banner { class, text }
    }

    fn message(&self, status: u16, title: &str, message: &str) -> Reply {
        Reply::html(status, &MessagePage { banner: self.banner(), title: title.into(), message: message.into() })
    }

    fn status(&self) -> Reply {
        let link = self.syncer.link();
        let queued = self.store.queued();
        let (class, text) = banner(&link, queued);
        let rejected = self.store.rejected().map(|r| r.len()).unwrap_or_default();
        Reply::json(&json!({
            "queued": queued,
            "rejected": rejected,
            "online": link.online,
            "problem": link.problem,
            "last_sync_at": link.last_sync_at,
            "banner": {"class": class, "text": text},
        }))
    }

    /// How the capture under the assignment's current version stands, if any.
    fn capture_state(&self, assignment: &Assignment) -> anyhow::Result<Option<(&'static str, String)>> {
        let Some(id) = self.store.captured_for(&assignment.delivery_id, assignment.version)? else {
            return Ok(None);
        };
        if let Some(queued) = self.store.queued_confirmation(&id)? {
            return Ok(Some(("pending", format!("{} — waiting to be sent", outcome_word(queued.outcome)))));
        }
        if let Some(rejected) = self.store.rejection(&id)? {
            return Ok(Some(("problem", format!("refused by the server ({}): {}", rejected.code, rejected.message))));
        }
        Ok(Some(("online", "sent".to_owned())))
    }

    fn row(&self, assignment: &Assignment) -> anyhow::Result<Row> {
        Ok(Row {
            delivery_id: assignment.delivery_id.to_string(),
            customer: assignment.customer_name.clone(),
            item: assignment.item_name.clone(),
            quantity: assignment.quantity,
            status: status_text(assignment),
            capture: self.capture_state(assignment)?,
        })
    }

    fn index(&self, query: &str) -> Reply {
        let page = || -> anyhow::Result<IndexPage> {
            let (mut open, mut done) = (Vec::new(), Vec::new());
            for assignment in self.store.assignments()? {
                let row = self.row(&assignment)?;
                let is_open = matches!(assignment.status, AssignmentStatus::Upcoming | AssignmentStatus::Ready)
                    && row.capture.is_none();
                if is_open { &mut open } else { &mut done }.push(row);
            }
            let saved = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
                .unwrap_or_default()
                .into_iter()
                .find(|(key, _)| key == "saved")
                .and_then(|(_, id)| DeliveryId::parse(id).ok());
            Ok(IndexPage {
                banner: self.banner(),
                who: self.store.session().map(|s| s.username.to_string()).unwrap_or_else(|_| "not logged in".into()),
                notice: saved
                    .map(|id| format!("{id} saved on this handheld. It goes to the server as soon as it can.")),
                open,
                done,
                queued: self.store.queued(),
                rejected: self.store.rejected()?,
                form_token: self.form_token.clone(),
            })
        };
        match page() {
            Ok(page) => Reply::html(200, &page),
            Err(err) => self.message(500, "Local store error", &format!("{err:#}")),
        }
    }

    fn delivery(
        &self,
        raw_id: &str,
        error: Option<String>,
        form: Option<ConfirmForm>,
        fail_form: Option<FailForm>,
    ) -> Reply {
        let status = if error.is_some() { 422 } else { 200 };
        let assignment = match DeliveryId::parse(raw_id).ok().map(|id| self.store.assignment(&id)) {
            Some(Ok(Some(assignment))) => assignment,
            Some(Err(err)) => return self.message(500, "Local store error", &format!("{err:#}")),
            _ => {
                return self.message(
                    404,
                    "Unknown delivery",
                    "This delivery is not on this handheld: it may have gone to another courier.",
                )
            }
        };
        let capture = match self.capture_state(&assignment) {
            Ok(capture) => capture,
            Err(err) => return self.message(500, "Local store error", &format!("{err:#}")),
        };
        let form = form.unwrap_or_else(|| ConfirmForm {
            confirmation_id: new_confirmation_id(),
            quantity: assignment.quantity.to_string(),
            empties: "0".into(),
            ..ConfirmForm::default()
        });
        let fail_form = fail_form.unwrap_or_else(|| FailForm {
            confirmation_id: new_confirmation_id(),
            reason: "customer_absent".into(),
            ..FailForm::default()
        });
        let on_its_way_to = (assignment.status == AssignmentStatus::Upcoming).then(|| assignment.pickup_node.clone());
        let capturable = assignment.status == AssignmentStatus::Ready && capture.is_none();
        Reply::html(
            status,
            &DeliveryPage {
                banner: self.banner(),
                status: status_text(&assignment),
                on_its_way_to,
                capturable,
                assignment,
                capture,
                error,
                form,
                fail_form,
                reasons: REASONS,
                form_token: self.form_token.clone(),
            },
        )
    }

    fn confirm(&self, raw_id: &str, form: ConfirmForm) -> Reply {
        let Ok(id) = DeliveryId::parse(raw_id) else {
            return self.delivery(raw_id, None, None, None);
        };
        let report = (|| {
            Ok::<_, String>(Delivered {
                recipient: form.recipient.clone(),
                quantity: Some(
                    form.quantity.trim().parse().map_err(|_| "the quantity must be a whole number".to_owned())?,
                ),
                empties: if form.empties.trim().is_empty() {
                    0
                } else {
                    form.empties.trim().parse().map_err(|_| "empties must be a whole number".to_owned())?
                },
                note: Some(form.note.clone()),
                signature: Some(form.signature.clone()),
            })
        })();
        let saved = match report {
            Ok(report) if report.recipient.trim().is_empty() => Err("name the person who took the goods".to_owned()),
            Ok(report) => capture::deliver(&self.store, &id, report, Some(form.confirmation_id.clone()))
                .map_err(|err| describe(&err)),
            Err(message) => Err(message),
        };
        self.after_capture(raw_id, saved, Some(form), None)
    }

    fn fail(&self, raw_id: &str, form: FailForm) -> Reply {
        let Ok(id) = DeliveryId::parse(raw_id) else {
            return self.delivery(raw_id, None, None, None);
        };
        let saved = match serde_json::from_value::<FailureReason>(json!(form.reason)) {
            Err(_) => Err("choose why the delivery failed".to_owned()),
            Ok(FailureReason::Other) if form.note.trim().is_empty() => {
                Err("say in the note what happened (reason: other)".to_owned())
            }
            Ok(reason) => capture::fail(
                &self.store,
                &id,
                Failed { reason, note: Some(form.note.clone()) },
                Some(form.confirmation_id.clone()),
            )
            .map_err(|err| describe(&err)),
        };
        self.after_capture(raw_id, saved, None, Some(form))
    }

    fn after_capture(
        &self,
        raw_id: &str,
        saved: Result<String, String>,
        form: Option<ConfirmForm>,
        fail_form: Option<FailForm>,
    ) -> Reply {
        match saved {
            Ok(_) => {
                self.syncer.nudge();
                Reply::see_other(format!("/?saved={raw_id}"))
            }
            Err(message) => self.delivery(raw_id, Some(message), form, fail_form),
        }
    }
}

/// Compares a presented token with ours in time that does not depend on
/// where they differ, so that timing tells nothing of the secret.
fn same_secret(presented: &str, ours: &str) -> bool {
    presented.as_bytes().ct_eq(ours.as_bytes()).into()
}

/// A request body of at most [`MAX_FORM_BYTES`], or the status and reason to refuse it with.
fn read_body(request: &mut Request) -> Result<Vec<u8>, (u16, &'static str)> {
    let mut body = Vec::new();
    if request.as_reader().take(MAX_FORM_BYTES as u64 + 1).read_to_end(&mut body).is_err() {
        return Err((400, "the body could not be read"));
    }
    if body.len() > MAX_FORM_BYTES {
        return Err((413, "the body is too large"));
    }
    Ok(body)
}

fn describe(err: &CaptureError) -> String {
    match err {
        CaptureError::Store(err) => format!("nothing was saved: {err:#}"),
        other => other.to_string(),
    }
}

trait HasToken {
    fn token(&self) -> &str;
}

impl HasToken for ConfirmForm {
    fn token(&self) -> &str {
        &self.token
    }
}

impl HasToken for SyncForm {
    fn token(&self) -> &str {
        &self.token
    }
}

impl HasToken for FailForm {
    fn token(&self) -> &str {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::assignment;

    /// A page over a store holding `assignments` as pulled; its sync loop never
    /// runs, so nothing changes behind the test's back.
    fn page_holding(assignments: &[Assignment]) -> (tempfile::TempDir, Page) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open");
        store.apply_pull(assignments, "1", "now").expect("pulled");
        let syncer = Arc::new(Syncer::new(store.clone()));
        (dir, Page::new(store, syncer, 8790))
    }

    fn pulled(id: &str, version: u64, status: AssignmentStatus) -> Assignment {
        Assignment { delivery_id: DeliveryId::parse(id).expect("id"), version, ..assignment(1, status) }
    }

    fn filled_in(page: &Page) -> ConfirmForm {
        ConfirmForm {
            token: page.form_token.clone(),
            confirmation_id: new_confirmation_id(),
            recipient: "Front desk".into(),
            quantity: "2".into(),
            ..ConfirmForm::default()
        }
    }

    #[test]
    fn an_upcoming_delivery_says_where_its_goods_are_headed_and_offers_no_forms() {
        let (_dir, page) = page_holding(&[pulled("D-000003", 1, AssignmentStatus::Upcoming)]);

        let delivery = page.delivery("D-000003", None, None, None);
        let list = page.index("");

        assert_eq!(delivery.status, 200);
        assert!(delivery.body.contains("On its way to B1"), "{}", delivery.body);
        assert!(!delivery.body.contains("confirm-form") && !delivery.body.contains("fail-form"), "{}", delivery.body);
        assert!(list.body.contains("on its way to B1"), "{}", list.body);
        assert!(!list.body.contains(">upcoming<"), "{}", list.body);
    }

    #[test]
    fn a_stale_form_posted_to_an_upcoming_delivery_is_refused_and_saves_nothing() {
        let (_dir, page) = page_holding(&[pulled("D-000003", 1, AssignmentStatus::Upcoming)]);
        let not_ready =
            "D-000003 is on its way to B1; confirm it once its goods are there (pull again to see it ready)";

        let confirmed = page.confirm("D-000003", filled_in(&page));
        let failed = page.fail(
            "D-000003",
            FailForm {
                token: page.form_token.clone(),
                confirmation_id: new_confirmation_id(),
                reason: "customer_absent".into(),
                note: String::new(),
            },
        );

        for refused in [confirmed, failed] {
            assert_eq!(refused.status, 422);
            assert!(refused.body.contains(not_ready), "{}", refused.body);
            assert!(!refused.body.contains("confirm-form"), "{}", refused.body);
        }
        assert_eq!(page.store.queued(), 0);
    }

    #[test]
    fn a_reversed_confirmation_shows_its_forms_again_under_the_new_version() {
        let (_dir, page) = page_holding(&[pulled("D-000001", 1, AssignmentStatus::Ready)]);
        let saved = page.confirm("D-000001", filled_in(&page));
        assert_eq!(saved.status, 303);
        assert!(!page.delivery("D-000001", None, None, None).body.contains("confirm-form"), "captured: no form");

        let reversed = [pulled("D-000001", 3, AssignmentStatus::Ready)];
        page.store.apply_pull(&reversed, "3", "later").expect("pulled");

        let delivery = page.delivery("D-000001", None, None, None);
        assert!(delivery.body.contains("confirm-form") && delivery.body.contains("fail-form"), "{}", delivery.body);
        assert!(page.index("").body.contains(r#"id="open-D-000001""#), "listed among the open ones");
        assert_eq!(page.confirm("D-000001", filled_in(&page)).status, 303, "captured again");
    }

    #[test]
    fn a_follow_up_delivery_id_works_in_the_pages_urls() {
        let (_dir, page) = page_holding(&[pulled("D-000001-2", 1, AssignmentStatus::Ready)]);

        let delivery = page.delivery("D-000001-2", None, None, None);
        assert!(delivery.body.contains(r#"action="/deliveries/D-000001-2/confirm""#), "{}", delivery.body);
        let saved = page.confirm("D-000001-2", filled_in(&page));
        assert_eq!((saved.status, saved.location.as_deref()), (303, Some("/?saved=D-000001-2")));

        let list = page.index("saved=D-000001-2");
        assert!(list.body.contains("D-000001-2 saved on this handheld"), "{}", list.body);
        assert!(list.body.contains(r#"href="/deliveries/D-000001-2""#), "{}", list.body);
    }
}
