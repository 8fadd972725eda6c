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
//!
//! The photo is downscaled in the browser (by that same script) before it is
//! sent, as a `data:` URL in a hidden field: the form stays a plain form that
//! works without script, minus the signature, the photo and the position.

use std::{
    collections::HashMap,
    io::Read as _,
    sync::{Arc, Mutex, PoisonError},
};

use askama::Template;
use base64::{engine::general_purpose::STANDARD, Engine as _};
use handover_shared::{
    sync::{Assignment, AssignmentStatus, FailureReason, Outcome, Position},
    DeliveryId, NodeId,
};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::{
    capture::{self, CaptureError, CodeCheck, Delivered, Evidence, Failed, Saved},
    daemon::{LinkState, Syncer},
    handoff,
    store::{LocalStore, Photo},
};

/// Room for the largest photo a capture may carry (4 MiB, a third more as
/// base64, a little more again escaped in a form body) and a drawn signature.
/// The page sends far less (it downscales to 1600 px); a command handing a
/// capture over sends the photo as it is, so the limit is set by the largest
/// photo rather than by the page's.
const MAX_FORM_BYTES: usize = 6 * 1024 * 1024;

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
    /// How the handover code compared at each delivery's last save, shown
    /// once the form redirects to the list. Kept here rather than in the
    /// redirect's URL, so that no link can make the page claim a code matched.
    code_checks: Mutex<HashMap<String, CodeCheck>>,
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
    /// How the handover code compared: the notice's class (good news or
    /// not) and its words.
    code_notice: Option<(&'static str, &'static str)>,
    open: Vec<Row>,
    done: Vec<Row>,
    queued: usize,
    photos_waiting: usize,
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
    /// The photo downscaled by the page, as a `data:image/jpeg;base64,` URL.
    photo: String,
    lat: String,
    lon: String,
    accuracy: String,
    /// The customer's handover code as entered.
    code: String,
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
    photo: String,
    lat: String,
    lon: String,
    accuracy: String,
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

/// The photo as the page sends it: a `data:image/...;base64,` URL (empty:
/// none), checked by its bytes as the command line's is.
fn photo_from_page(url: &str) -> Result<Option<Photo>, String> {
    let url = url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    let encoded = url
        .strip_prefix("data:image/")
        .and_then(|rest| rest.split_once(";base64,"))
        .map(|(_, encoded)| encoded)
        .ok_or_else(|| "the photo did not arrive as an image; take it again".to_owned())?;
    let bytes = STANDARD.decode(encoded).map_err(|_| "the photo arrived damaged; take it again".to_owned())?;
    Photo::new(bytes).map(Some)
}

/// The position the page asked the browser for (empty: none).
fn position_from_page(lat: &str, lon: &str, accuracy: &str) -> Result<Option<Position>, String> {
    let (lat, lon, accuracy) = (lat.trim(), lon.trim(), accuracy.trim());
    if lat.is_empty() && lon.is_empty() {
        return Ok(None);
    }
    let degrees = |text: &str| text.parse::<f64>().map_err(|_| "the position arrived damaged; record it again");
    let accuracy_m = match accuracy {
        "" => None,
        metres => Some(degrees(metres)?),
    };
    Ok(Some(Position { lat: degrees(lat)?, lon: degrees(lon)?, accuracy_m }))
}

fn evidence_from_page(photo: &str, lat: &str, lon: &str, accuracy: &str) -> Result<Evidence, String> {
    Ok(Evidence { photo: photo_from_page(photo)?, position: position_from_page(lat, lon, accuracy)? })
}

impl Page {
    pub fn new(store: LocalStore, syncer: Arc<Syncer>, port: u16) -> Self {
        let form_token = uuid::Uuid::new_v4().simple().to_string();
        let handoff_token = uuid::Uuid::new_v4().simple().to_string();
        let hosts = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        Self { store, syncer, hosts, form_token, handoff_token, code_checks: Mutex::default() }
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
        let handed_photo = |photo: Option<String>| -> Result<Option<Photo>, String> {
            let Some(encoded) = photo else { return Ok(None) };
            let bytes = STANDARD.decode(encoded).map_err(|_| "the photo is not base64".to_owned())?;
            Photo::new(bytes).map(Some)
        };
        let saved = match capture {
            handoff::Capture::Delivered { delivery_id, recipient, quantity, empties, note, photo, position, code } => {
                DeliveryId::parse(delivery_id).map_err(|err| format!("invalid delivery id: {err}")).and_then(|id| {
                    let evidence = Evidence { photo: handed_photo(photo)?, position };
                    let report = Delivered { recipient, quantity, empties, note, signature: None, evidence, code };
                    capture::deliver(&self.store, &id, report, None).map_err(|err| describe(&err))
                })
            }
            handoff::Capture::Failed { delivery_id, reason, note, photo, position } => {
                DeliveryId::parse(delivery_id).map_err(|err| format!("invalid delivery id: {err}")).and_then(|id| {
                    let evidence = Evidence { photo: handed_photo(photo)?, position };
                    capture::fail(&self.store, &id, Failed { reason, note, evidence }, None)
                        .map_err(|err| describe(&err))
                })
            }
        };
        match saved {
            Ok(saved) => {
                self.syncer.nudge();
                let notice = saved.code_check.message().map(str::to_owned);
                answer(
                    200,
                    match notice {
                        Some(notice) => {
                            handoff::Answer::SavedWithNotice { confirmation_id: saved.confirmation_id, notice }
                        }
                        None => handoff::Answer::Saved(saved.confirmation_id),
                    },
                )
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
        let photos_waiting = self.store.photos_waiting().map(|p| p.len()).unwrap_or_default();
        Reply::json(&json!({
            "queued": queued,
            "rejected": rejected,
            "photos_waiting": photos_waiting,
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
            let code_notice = saved.as_ref().and_then(|id| {
                let checks = self.code_checks.lock().unwrap_or_else(PoisonError::into_inner);
                let check = checks.get(id.as_str()).copied()?;
                Some((if check.is_good() { "notice" } else { "alert" }, check.message()?))
            });
            Ok(IndexPage {
                banner: self.banner(),
                who: self.store.session().map(|s| s.username.to_string()).unwrap_or_else(|_| "not logged in".into()),
                notice: saved
                    .map(|id| format!("{id} saved on this handheld. It goes to the server as soon as it can.")),
                code_notice,
                open,
                done,
                queued: self.store.queued(),
                photos_waiting: self.store.photos_waiting()?.len(),
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
                evidence: evidence_from_page(&form.photo, &form.lat, &form.lon, &form.accuracy)?,
                code: Some(form.code.clone()),
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
            Ok(reason) => evidence_from_page(&form.photo, &form.lat, &form.lon, &form.accuracy).and_then(|evidence| {
                capture::fail(
                    &self.store,
                    &id,
                    Failed { reason, note: Some(form.note.clone()), evidence },
                    Some(form.confirmation_id.clone()),
                )
                .map_err(|err| describe(&err))
            }),
        };
        self.after_capture(raw_id, saved, None, Some(form))
    }

    fn after_capture(
        &self,
        raw_id: &str,
        saved: Result<Saved, String>,
        form: Option<ConfirmForm>,
        fail_form: Option<FailForm>,
    ) -> Reply {
        match saved {
            Ok(saved) => {
                self.syncer.nudge();
                self.code_checks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(raw_id.to_owned(), saved.code_check);
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
                ..FailForm::default()
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

    fn coded(id: &str) -> Assignment {
        let hash = handover_shared::proof::hash_code("042517", &[3; 16]).expect("a hash");
        Assignment { handover_code_hash: Some(hash), ..pulled(id, 1, AssignmentStatus::Ready) }
    }

    fn data_url(photo: &Photo) -> String {
        format!("data:image/jpeg;base64,{}", STANDARD.encode(photo.bytes()))
    }

    #[test]
    fn the_code_field_shows_only_for_a_receipt_with_a_code_and_both_forms_take_a_photo() {
        let (_dir, page) = page_holding(&[coded("D-000001"), pulled("D-000002", 1, AssignmentStatus::Ready)]);

        let with_code = page.delivery("D-000001", None, None, None).body;
        let without = page.delivery("D-000002", None, None, None).body;

        assert!(with_code.contains(r#"name="code""#) && !with_code.contains("no-code"), "{with_code}");
        assert!(!without.contains(r#"name="code""#) && without.contains("This receipt has no handover code"));
        assert_eq!(with_code.matches(r#"capture="environment""#).count(), 2, "the confirm and the fail form");
        assert_eq!(with_code.matches(r#"name="photo""#).count(), 2);
        assert!(with_code.contains(r#"accept="image/*""#) && with_code.contains(r#"name="lat""#));
        assert!(!with_code.contains("<script>"), "no inline script: the policy allows only /handheld.js");
    }

    #[test]
    fn a_photo_a_position_and_a_code_are_saved_and_the_list_says_how_the_code_compared() {
        let (_dir, page) = page_holding(&[coded("D-000001"), coded("D-000002")]);
        let photo = crate::store::tests::jpeg(4);
        let form = |code: &str| ConfirmForm {
            photo: data_url(&photo),
            lat: "52.5200066".into(),
            lon: "13.404954".into(),
            accuracy: "11.5".into(),
            code: code.into(),
            ..filled_in(&page)
        };

        assert_eq!(page.confirm("D-000001", form("042517")).status, 303);
        assert_eq!(page.confirm("D-000002", form("999999")).status, 303);

        let matched = page.index("saved=D-000001").body;
        assert!(
            matched.contains(r#"<p class="notice" id="code-check" role="status">handover code matches</p>"#),
            "{matched}"
        );
        let wrong = page.index("saved=D-000002").body;
        assert!(wrong.contains(r#"class="alert" id="code-check""#) && wrong.contains("recorded as not verified"));
        assert!(!page.index("").body.contains("code-check"), "said after a save only");
        let kept = page.store.outbox().expect("outbox").remove(0);
        assert_eq!(kept.photo_digest.as_deref(), Some(photo.digest()));
        assert_eq!(kept.position, Some(Position { lat: 52.5200066, lon: 13.404954, accuracy_m: Some(11.5) }));
        assert_eq!(page.store.photos_waiting().expect("read").len(), 2, "one photo, filed under both deliveries");
    }

    #[test]
    fn a_photo_that_is_not_an_image_sends_the_form_back_with_what_was_typed() {
        let (_dir, page) = page_holding(&[pulled("D-000001", 1, AssignmentStatus::Ready)]);
        for (photo, why) in [
            ("data:text/html;base64,PGgxPg==".to_owned(), "did not arrive as an image"),
            (format!("data:image/gif;base64,{}", STANDARD.encode(b"GIF89a....")), "JPEG, PNG or WebP"),
            ("data:image/jpeg;base64,@@@".to_owned(), "arrived damaged"),
        ] {
            let form = ConfirmForm { photo, note: "left at the desk".into(), ..filled_in(&page) };

            let refused = page.confirm("D-000001", form);

            assert_eq!(refused.status, 422);
            assert!(refused.body.contains(why), "{why}: {}", refused.body);
            assert!(refused.body.contains("left at the desk"), "what was typed comes back");
        }
        assert_eq!(page.store.queued(), 0);
    }

    #[test]
    fn a_failed_attempt_takes_a_photo_of_the_closed_door() {
        let (_dir, page) = page_holding(&[pulled("D-000001", 1, AssignmentStatus::Ready)]);
        let photo = crate::store::tests::jpeg(6);
        let form = FailForm {
            token: page.form_token.clone(),
            confirmation_id: new_confirmation_id(),
            reason: "customer_absent".into(),
            photo: data_url(&photo),
            ..FailForm::default()
        };

        assert_eq!(page.fail("D-000001", form).status, 303);

        let kept = page.store.outbox().expect("outbox").remove(0);
        assert_eq!((kept.outcome, kept.photo_digest.as_deref()), (Outcome::Failed, Some(photo.digest())));
    }

    #[test]
    fn the_largest_photo_handed_over_by_a_command_fits_the_body_limit() {
        let largest = vec![0u8; handover_shared::proof::MAX_PHOTO_BYTES as usize];
        let capture = handoff::Capture::Failed {
            delivery_id: "D-000001".into(),
            reason: FailureReason::CustomerAbsent,
            note: Some("n".repeat(1000)),
            photo: Some(STANDARD.encode(&largest)),
            position: Some(Position { lat: 1.0, lon: 2.0, accuracy_m: Some(3.0) }),
        };
        let body = serde_json::to_vec(&capture).expect("json");
        assert!(body.len() <= MAX_FORM_BYTES, "{} bytes", body.len());
    }

    /// The page served over HTTP, as the daemon serves it, until dropped.
    struct Served {
        url: String,
        server: Arc<Server>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn serve(store: LocalStore) -> (Served, String) {
        let server = Arc::new(Server::http("127.0.0.1:0").expect("a port"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let page = Page::new(store.clone(), Arc::new(Syncer::new(store)), port);
        let token = page.form_token.clone();
        let serving = Arc::clone(&server);
        let thread = std::thread::spawn(move || page.serve(&serving));
        (Served { url: format!("http://127.0.0.1:{port}"), server, thread: Some(thread) }, token)
    }

    #[test]
    fn a_form_carrying_a_downscaled_photo_is_taken_and_a_body_over_the_limit_is_not() {
        let (_dir, page) = page_holding(&[pulled("D-000001", 1, AssignmentStatus::Ready)]);
        let store = page.store.clone();
        drop(page);
        let (served, token) = serve(store.clone());
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client");
        // About what a 1600 px JPEG at 0.85 weighs, and a little more.
        let photo = Photo::new([&[0xFF, 0xD8, 0xFF, 0xE0][..], &vec![0xAB; 1_500_000]].concat()).expect("a JPEG");
        let form = |photo: String| {
            serde_urlencoded::to_string([
                ("token", token.as_str()),
                ("confirmation_id", &new_confirmation_id()),
                ("recipient", "Front desk"),
                ("quantity", "2"),
                ("photo", &photo),
            ])
            .expect("a form")
        };
        let post = |body: String| {
            client
                .post(format!("{}/deliveries/D-000001/confirm", served.url))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .map(|answer| answer.status().as_u16())
        };

        // The page stops reading at the limit: the sender may see the
        // connection closed before it reads the 413.
        let oversized = post(form("x".repeat(MAX_FORM_BYTES)));
        assert!(oversized.as_ref().map_or(true, |status| *status == 413), "{oversized:?}");
        assert_eq!(store.queued(), 0);
        assert_eq!(post(form(data_url(&photo))).expect("an answer"), 303);
        assert_eq!(store.photo(photo.digest()).expect("read").map(|bytes| bytes.len()), Some(1_500_004));
    }
}
