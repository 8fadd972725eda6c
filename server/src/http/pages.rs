//! The server-rendered pages: login and the ordering screen (order form,
//! confirmation screen, receipt). They work without JavaScript and call the same
//! order service as the JSON API.
//!
//! Sessions live in an encrypted cookie (`HttpOnly`, `SameSite=Strict`, and
//! `Secure` whenever TLS is on) that carries the login session id; a revoked
//! session is refused on the next page like a revoked token. Every form carries
//! a CSRF token kept in that cookie and checked on POST.

use actix_session::{Session, SessionExt as _};
use actix_web::{
    dev::Payload,
    http::{header, StatusCode},
    web, FromRequest, HttpRequest, HttpResponse, ResponseError,
};
use askama::Template;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use handover_shared::{
    api::{DeviceSignature, LoginRequest},
    CustomerId, DeviceId, NodeId, OrderId, ReceiptId, Role, Username,
};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::AppState;
use crate::{
    auth::AuthError,
    domain::{
        access::Principal,
        corrections::{customer_may_cancel, Correction},
        network::Item,
        orders::{Draft, DraftRefusal, DraftState, OrderField, RawOrder, RawQuantity, Receipt},
    },
    orders::{self, OrderFailure},
    shipments::{self, ShipmentFailure},
};

type State = web::Data<AppState>;

const SESSION_KEY: &str = "login";
const CSRF_KEY: &str = "csrf";

/// What the session cookie holds about a logged-in user.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoggedIn {
    session_id: Uuid,
    username: Username,
    role: Role,
    device_id: DeviceId,
    node_id: Option<NodeId>,
    customer_id: Option<CustomerId>,
    /// Lets logout end the server-side session; the cookie is encrypted.
    refresh_token: String,
    /// Unix seconds. The cookie lives in the browser, so its age is checked here.
    expires_at: i64,
}

/// How long a page login lasts.
const PAGE_SESSION_SECS: i64 = 12 * 3600;

/// Why a page cannot be shown. Rendered as HTML, never as JSON.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("log in first")]
    LoginRequired { next: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl From<OrderFailure> for PageError {
    fn from(failure: OrderFailure) -> Self {
        match failure {
            OrderFailure::NotFound(message) => PageError::NotFound(message),
            OrderFailure::Forbidden(forbidden) => PageError::Forbidden(forbidden.to_string()),
            OrderFailure::Store(err) => PageError::Internal(err.to_string()),
            other => PageError::BadRequest(other.to_string()),
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
    back: &'a str,
    back_label: &'a str,
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self {
            PageError::LoginRequired { .. } => StatusCode::SEE_OTHER,
            PageError::Forbidden(_) => StatusCode::FORBIDDEN,
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (title, message) = match self {
            PageError::LoginRequired { next } => return redirect(&format!("/login?next={}", encode_next(next))),
            PageError::Forbidden(message) => ("Not allowed", message.as_str()),
            PageError::NotFound(message) => ("Not found", message.as_str()),
            PageError::BadRequest(message) => ("That did not work", message.as_str()),
            PageError::Internal(detail) => {
                tracing::error!(error = %detail, "page failed");
                ("Something went wrong", "An internal error occurred; it has been logged. Please try again.")
            }
        };
        html(self.status_code(), &MessagePage { title, message, back: "/order", back_label: "Back to ordering" })
    }
}

/// A 303 to a local path.
pub(super) fn redirect(location: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, location)).finish()
}

/// Renders a template with the headers every page carries.
pub(super) fn html(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "same-origin"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body),
        Err(err) => {
            tracing::error!(error = %err, "template failed");
            HttpResponse::InternalServerError().content_type("text/plain; charset=utf-8").body("internal error")
        }
    }
}

/// Only local paths are followed after login, so the page cannot be used to send
/// a user elsewhere.
fn safe_next(next: Option<&str>) -> Option<&str> {
    const PAGES: [&str; 3] = ["/order", "/receipts/", "/dashboard"];
    next.filter(|path| {
        // Printable ASCII only: browsers drop tabs and newlines from URLs, which
        // would turn "/\t/evil.example" into "//evil.example"; and a header value
        // cannot hold control characters.
        path.bytes().all(|b| b.is_ascii_graphic())
            && !path.contains('\\')
            && PAGES.iter().any(|page| path.starts_with(page))
    })
}

/// Where a role lands after login when no page was asked for.
fn landing(role: Role) -> &'static str {
    match role {
        Role::Dispatcher | Role::Seller => "/dashboard",
        _ => "/order",
    }
}

fn encode_next(next: &str) -> String {
    form_urlencoded::byte_serialize(next.as_bytes()).collect()
}

/// The session's CSRF token, made on first use.
fn csrf_token(session: &Session) -> Result<String, PageError> {
    if let Ok(Some(token)) = session.get::<String>(CSRF_KEY) {
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    session.insert(CSRF_KEY, &token).map_err(|err| PageError::Internal(err.to_string()))?;
    Ok(token)
}

/// Refuses a form whose CSRF token is not the session's.
pub(super) fn check_csrf(session: &Session, submitted: Option<&str>) -> Result<(), PageError> {
    let expected = session.get::<String>(CSRF_KEY).ok().flatten();
    match (expected, submitted) {
        (Some(expected), Some(submitted)) if bool::from(expected.as_bytes().ct_eq(submitted.as_bytes())) => Ok(()),
        _ => Err(PageError::BadRequest(
            "This form has expired or did not come from this site. Go back, reload the page and try again.".into(),
        )),
    }
}

/// A logged-in user of the pages.
pub struct PageUser {
    pub(super) principal: Principal,
    refresh_token: String,
    pub(super) session: Session,
}

impl std::fmt::Debug for PageUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageUser").field("principal", &self.principal).finish_non_exhaustive()
    }
}

impl PageUser {
    /// The logged-in user. The account is read again on every page, so that a
    /// re-import that changes its role or its customer takes effect at once.
    async fn load(req: &HttpRequest) -> Result<Self, PageError> {
        let next = req.uri().path_and_query().map_or("/order", |pq| pq.as_str()).to_owned();
        let session = req.get_session();
        let login = session.get::<LoggedIn>(SESSION_KEY).ok().flatten();
        let state = req.app_data::<State>().ok_or_else(|| PageError::Internal("application state missing".into()))?;
        let Some(login) = login else {
            return Err(PageError::LoginRequired { next });
        };
        let revoked =
            state.auth.is_revoked(&login.session_id).await.map_err(|err| PageError::Internal(err.to_string()))?;
        if revoked || login.expires_at <= time::OffsetDateTime::now_utc().unix_timestamp() {
            session.purge();
            return Err(PageError::LoginRequired { next });
        }
        let Some(account) =
            state.store.account(&login.username).await.map_err(|err| PageError::Internal(err.to_string()))?
        else {
            session.purge();
            return Err(PageError::LoginRequired { next });
        };
        let span = tracing::Span::current();
        span.record("username", login.username.as_str());
        span.record("device_id", login.device_id.as_str());
        Ok(PageUser {
            principal: Principal {
                username: account.username,
                role: account.membership.role(),
                device_id: login.device_id,
                session_id: login.session_id,
                node_id: account.membership.node_id().cloned(),
                customer_id: account.membership.customer_id().cloned(),
            },
            refresh_token: login.refresh_token,
            session,
        })
    }

    /// The ordering screen is for customer accounts; dispatchers use the API.
    fn customer(&self) -> Result<CustomerId, PageError> {
        match (&self.principal.role, &self.principal.customer_id) {
            (Role::Customer, Some(customer)) => Ok(customer.clone()),
            _ => Err(PageError::Forbidden(format!(
                "The ordering screen is for customer accounts; {} is {}.",
                self.principal.username,
                self.principal.role.with_article()
            ))),
        }
    }

    pub(super) fn csrf(&self) -> Result<String, PageError> {
        csrf_token(&self.session)
    }
}

impl FromRequest for PageUser {
    type Error = PageError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, PageError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { Self::load(&req).await })
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    next: &'a str,
    username: &'a str,
    error: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn home(req: HttpRequest) -> HttpResponse {
    match PageUser::load(&req).await {
        Ok(user) => redirect(landing(user.principal.role)),
        Err(_) => redirect("/login"),
    }
}

pub async fn login_form(session: Session, query: web::Query<NextQuery>) -> Result<HttpResponse, PageError> {
    let asked = safe_next(query.next.as_deref());
    if let Some(login) = session.get::<LoggedIn>(SESSION_KEY).ok().flatten() {
        return Ok(redirect(asked.unwrap_or(landing(login.role))));
    }
    let next = asked.unwrap_or("");
    let csrf = csrf_token(&session)?;
    Ok(html(StatusCode::OK, &LoginPage { csrf: &csrf, next, username: "", error: None }))
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    csrf: Option<String>,
    username: Option<String>,
    password: Option<String>,
    next: Option<String>,
}

pub async fn login_submit(
    state: State,
    req: HttpRequest,
    session: Session,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, PageError> {
    check_csrf(&session, form.csrf.as_deref())?;
    let asked = safe_next(form.next.as_deref()).map(str::to_owned);
    let username = form.username.clone().unwrap_or_default();
    let request = LoginRequest {
        username: username.clone(),
        password: form.password.clone().unwrap_or_default(),
        device_id: DeviceId::parse(format!("web-{}", Uuid::new_v4().simple())).ok(),
        device_key: None,
    };
    let address = req.peer_addr().map(|addr| addr.ip());
    match state.auth.login_principal(request, address).await {
        Ok((tokens, principal)) => {
            // A new cookie at login: a session id planted before login is useless.
            session.renew();
            let next = asked.unwrap_or_else(|| landing(principal.role).to_owned());
            let login = LoggedIn {
                session_id: principal.session_id,
                username: principal.username,
                role: principal.role,
                device_id: principal.device_id,
                node_id: principal.node_id,
                customer_id: principal.customer_id,
                refresh_token: tokens.refresh_token,
                expires_at: time::OffsetDateTime::now_utc().unix_timestamp() + PAGE_SESSION_SECS,
            };
            session.insert(SESSION_KEY, &login).map_err(|err| PageError::Internal(err.to_string()))?;
            session.remove(CSRF_KEY);
            Ok(redirect(&next))
        }
        Err(err @ (AuthError::InvalidCredentials | AuthError::RateLimited { .. })) => {
            let status = if matches!(err, AuthError::RateLimited { .. }) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            };
            let csrf = csrf_token(&session)?;
            let message = err.to_string();
            let next = asked.as_deref().unwrap_or("");
            Ok(html(status, &LoginPage { csrf: &csrf, next, username: &username, error: Some(&message) }))
        }
        Err(err) => Err(PageError::Internal(err.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

pub async fn logout(state: State, user: PageUser, form: web::Form<CsrfForm>) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    if let Err(err) = state.auth.logout(&user.refresh_token).await {
        tracing::warn!(error = %err, "ending the page session failed");
    }
    user.session.purge();
    Ok(redirect("/login"))
}

#[derive(Template)]
#[template(path = "order.html")]
struct OrderPage<'a> {
    username: &'a str,
    csrf: &'a str,
    customer_name: &'a str,
    items: &'a [Item],
    selected_item: &'a str,
    quantity: &'a str,
    item_error: Option<String>,
    quantity_error: Option<String>,
    notice: Option<&'a str>,
    alert: Option<String>,
}

/// What the order form shows around the form itself.
#[derive(Default)]
struct FormState<'a> {
    selected_item: &'a str,
    quantity: &'a str,
    item_error: Option<String>,
    quantity_error: Option<String>,
    notice: Option<&'a str>,
    alert: Option<String>,
}

async fn order_page(
    state: &AppState,
    user: &PageUser,
    status: StatusCode,
    form: FormState<'_>,
) -> Result<HttpResponse, PageError> {
    let customer_id = user.customer()?;
    let customer = state
        .store
        .customer(&customer_id)
        .await
        .map_err(|err| PageError::Internal(err.to_string()))?
        .ok_or_else(|| PageError::NotFound(format!("no customer {customer_id}")))?;
    let mut items = state.store.items().await.map_err(|err| PageError::Internal(err.to_string()))?;
    items.retain(|item| !item.discontinued);
    let csrf = user.csrf()?;
    Ok(html(
        status,
        &OrderPage {
            username: user.principal.username.as_str(),
            csrf: &csrf,
            customer_name: &customer.name,
            items: &items,
            selected_item: form.selected_item,
            quantity: form.quantity,
            item_error: form.item_error,
            quantity_error: form.quantity_error,
            notice: form.notice,
            alert: form.alert,
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
}

pub async fn order_form(
    state: State,
    user: PageUser,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, PageError> {
    // Only known notices are shown: the query never puts text on the page.
    let notice = match query.notice.as_deref() {
        Some("discarded") => Some("The draft was discarded."),
        _ => None,
    };
    order_page(&state, &user, StatusCode::OK, FormState { notice, ..FormState::default() }).await
}

#[derive(Debug, Deserialize)]
pub struct OrderForm {
    csrf: Option<String>,
    item_id: Option<String>,
    quantity: Option<String>,
}

pub async fn order_submit(state: State, user: PageUser, form: web::Form<OrderForm>) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    let customer_id = user.customer()?;
    let raw = RawOrder {
        customer_id: Some(customer_id.to_string()),
        item_id: form.item_id.clone(),
        quantity: form.quantity.clone().map_or(RawQuantity::Missing, RawQuantity::Text),
        shape_problems: Vec::new(),
    };
    let ttl = state.settings.orders.draft_ttl();
    match orders::place_draft(state.store.as_ref(), &user.principal, &raw, ttl).await {
        Ok(draft) => Ok(redirect(&format!("/order/{}", draft.order_id))),
        Err(OrderFailure::Abnormal(problems)) => {
            let mut page = FormState {
                selected_item: form.item_id.as_deref().unwrap_or(""),
                quantity: form.quantity.as_deref().unwrap_or(""),
                ..FormState::default()
            };
            for problem in problems {
                let slot = match problem.field {
                    OrderField::ItemId => &mut page.item_error,
                    OrderField::Quantity => &mut page.quantity_error,
                    OrderField::CustomerId | OrderField::Body => &mut page.alert,
                };
                slot.get_or_insert(problem.message);
            }
            order_page(&state, &user, StatusCode::UNPROCESSABLE_ENTITY, page).await
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage<'a> {
    username: &'a str,
    csrf: &'a str,
    customer_name: &'a str,
    draft: &'a Draft,
}

pub async fn order_show(state: State, user: PageUser, path: web::Path<OrderId>) -> Result<HttpResponse, PageError> {
    user.customer()?;
    let draft = orders::draft(state.store.as_ref(), &user.principal, &path).await?;
    match &draft.state {
        DraftState::Confirmed { receipt_id } => return Ok(redirect(&format!("/receipts/{receipt_id}"))),
        DraftState::Cancelled { .. } => return Ok(redirect("/order?notice=discarded")),
        DraftState::Open if draft.is_expired(time::OffsetDateTime::now_utc()) => {
            let alert = Some("This draft has expired; place the order again.".to_owned());
            return order_page(&state, &user, StatusCode::CONFLICT, FormState { alert, ..FormState::default() }).await;
        }
        DraftState::Open => {}
    }
    let customer_name = state
        .store
        .customer(&draft.customer_id)
        .await
        .map_err(|err| PageError::Internal(err.to_string()))?
        .map_or_else(|| draft.customer_id.to_string(), |customer| customer.name);
    let csrf = user.csrf()?;
    Ok(html(
        StatusCode::OK,
        &ConfirmPage {
            username: user.principal.username.as_str(),
            csrf: &csrf,
            customer_name: &customer_name,
            draft: &draft,
        },
    ))
}

/// The ordering form again, saying why a draft could not take the step.
async fn refused(state: &AppState, user: &PageUser, refusal: DraftRefusal) -> Result<HttpResponse, PageError> {
    let alert = Some(refusal.to_string());
    order_page(state, user, StatusCode::CONFLICT, FormState { alert, ..FormState::default() }).await
}

pub async fn order_confirm(
    state: State,
    user: PageUser,
    path: web::Path<OrderId>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    user.customer()?;
    match orders::confirm(state.store.as_ref(), &user.principal, &path).await {
        Ok((receipt, created)) => {
            if created {
                state.planner.trigger();
            }
            Ok(redirect(&format!("/receipts/{}", receipt.receipt_id)))
        }
        Err(OrderFailure::Refused(refusal)) => refused(&state, &user, refusal).await,
        Err(other) => Err(other.into()),
    }
}

pub async fn order_cancel(
    state: State,
    user: PageUser,
    path: web::Path<OrderId>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    user.customer()?;
    match orders::cancel(state.store.as_ref(), &user.principal, &path).await {
        Ok(_) => Ok(redirect("/order?notice=discarded")),
        Err(OrderFailure::Refused(refusal)) => refused(&state, &user, refusal).await,
        Err(other) => Err(other.into()),
    }
}

#[derive(Template)]
#[template(path = "receipt.html")]
struct ReceiptPage<'a> {
    username: &'a str,
    csrf: &'a str,
    receipt: &'a Receipt,
    created: String,
    notice: Option<&'static str>,
    alert: Option<String>,
    /// Its customer may still call it off alone.
    cancellable: bool,
    /// Its customer may no longer: say whom to ask.
    ask_dispatcher: bool,
    /// Who cancelled it, when and why.
    cancelled: Option<String>,
    /// Each reversed hand-over, said in words.
    reversals: Vec<String>,
    /// Shown to the receipt's customer only.
    handover_code: Option<&'a str>,
    proof: Option<ProofShown>,
}

/// The latest hand-over's proof, as the receipt page shows it.
struct ProofShown {
    recipient: String,
    units: u32,
    empties: u32,
    by: String,
    captured: String,
    received: String,
    /// "55.7558123, 37.6173000 (±12 m)", and a map link for it.
    position: Option<(String, String)>,
    signature_url: Option<String>,
    photo_url: Option<String>,
    /// A photo was taken but has not reached the server yet.
    photo_pending: bool,
    code: &'static str,
    origin: String,
    proof_url: String,
}

fn proof_shown(
    receipt: &Receipt,
    photo_received: bool,
    when: impl Fn(time::OffsetDateTime) -> String,
) -> Option<ProofShown> {
    let proof = receipt.proof.as_ref()?;
    let id = &receipt.receipt_id;
    let image = |digest: &String| format!("/receipts/{id}/images/{digest}");
    Some(ProofShown {
        recipient: proof.recipient.clone(),
        units: proof.quantity,
        empties: proof.empties_collected,
        by: proof.delivered_by.to_string(),
        captured: when(proof.captured_at),
        received: when(proof.received_at),
        position: proof.position.map(|at| {
            let accuracy = at.accuracy_m.map(|m| format!(" (±{m:.0} m)")).unwrap_or_default();
            (
                format!("{:.7}, {:.7}{accuracy}", at.lat, at.lon),
                format!(
                    "https://www.openstreetmap.org/?mlat={:.7}&mlon={:.7}#map=18/{:.7}/{:.7}",
                    at.lat, at.lon, at.lat, at.lon
                ),
            )
        }),
        signature_url: proof.signature_digest.as_ref().map(image),
        photo_url: proof.photo_digest.as_ref().filter(|_| photo_received).map(image),
        photo_pending: proof.photo_digest.is_some() && !photo_received,
        code: match proof.code_verified {
            Some(true) => "matched",
            Some(false) => "did not match (delivered without it)",
            None => "not entered",
        },
        origin: match (proof.device_signature, proof.device_seq) {
            (DeviceSignature::Verified, Some(seq)) => {
                format!("signed by handheld {} (record {seq}), verified", proof.device_id)
            }
            _ => format!("unsigned (handheld {} registered no key)", proof.device_id),
        },
        proof_url: format!("/receipts/{id}/proof.json"),
    })
}

#[derive(Debug, Deserialize)]
pub struct ReceiptQuery {
    notice: Option<String>,
}

const UTC_MINUTE: &[time::format_description::FormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");

pub async fn receipt(
    state: State,
    user: PageUser,
    path: web::Path<ReceiptId>,
    query: web::Query<ReceiptQuery>,
) -> Result<HttpResponse, PageError> {
    let notice = match query.notice.as_deref() {
        Some("cancelled") => Some("Your order was cancelled."),
        _ => None,
    };
    receipt_page(&state, &user, &path, notice, None, StatusCode::OK).await
}

async fn receipt_page(
    state: &AppState,
    user: &PageUser,
    id: &ReceiptId,
    notice: Option<&'static str>,
    alert: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let store = state.store.as_ref();
    let receipt = orders::receipt(store, &user.principal, id).await?;
    let latest = match &receipt.delivery_id {
        Some(delivery) => store.delivery(delivery).await.map_err(|err| PageError::Internal(err.to_string()))?,
        None => None,
    };
    let when = |at: time::OffsetDateTime| at.format(UTC_MINUTE).unwrap_or_default();
    let cancelled =
        receipt.cancellation.as_ref().map(|c| format!("cancelled by {} on {}: {}", c.by, when(c.at), c.reason));
    let reversals = receipt
        .reversals
        .iter()
        .map(|r| {
            let by = &r.intervention;
            format!(
                "{} unit(s) of {} reversed by {} on {}: {}",
                r.quantity,
                r.delivery_id,
                by.by,
                when(by.at),
                by.reason
            )
        })
        .collect();
    let csrf = user.csrf()?;
    let photo_received = match &receipt.proof {
        Some(proof) => {
            crate::proof::photo_received(store, proof).await.map_err(|err| PageError::Internal(err.to_string()))?
        }
        None => false,
    };
    let proof = proof_shown(&receipt, photo_received, when);
    let handover_code = receipt
        .handover_code
        .as_ref()
        .filter(|_| user.principal.customer_id.as_ref() == Some(&receipt.customer_id))
        .map(|code| code.code.as_str());
    Ok(html(
        status,
        &ReceiptPage {
            handover_code,
            proof,
            username: user.principal.username.as_str(),
            csrf: &csrf,
            created: when(receipt.created_at),
            cancellable: user.principal.role == Role::Customer && customer_may_cancel(&receipt, latest.as_ref()),
            ask_dispatcher: user.principal.role == Role::Customer
                && !customer_may_cancel(&receipt, latest.as_ref())
                && receipt.cancellation.is_none()
                && !receipt.delivered,
            receipt: &receipt,
            notice,
            alert,
            cancelled,
            reversals,
        },
    ))
}

/// A photo or signature of the receipt's proof, for its page.
pub async fn receipt_image(
    state: State,
    user: PageUser,
    path: web::Path<(ReceiptId, String)>,
) -> Result<HttpResponse, PageError> {
    let (id, digest) = path.into_inner();
    let store = state.store.as_ref();
    let receipt = orders::receipt(store, &user.principal, &id).await?;
    match crate::proof::image(store, &receipt, &digest).await {
        Ok((kind, bytes)) => Ok(super::proof::image_response(kind, bytes)),
        Err(crate::proof::ProofFailure::Store(err)) => Err(PageError::Internal(err.to_string())),
        Err(other) => Err(PageError::NotFound(other.to_string())),
    }
}

/// The receipt's signed records, to save and check offline
/// (`handover-agent verify FILE`); the same document as the API's.
pub async fn receipt_proof(
    state: State,
    user: PageUser,
    path: web::Path<ReceiptId>,
) -> Result<HttpResponse, PageError> {
    let store = state.store.as_ref();
    let receipt = orders::receipt(store, &user.principal, &path).await?;
    let records =
        crate::proof::signed_records(store, &receipt).await.map_err(|err| PageError::Internal(err.to_string()))?;
    Ok(HttpResponse::Ok()
        .insert_header(("Content-Disposition", format!("attachment; filename=\"proof-{}.json\"", receipt.receipt_id)))
        .json(handover_shared::api::ReceiptProof { receipt_id: receipt.receipt_id, records }))
}

#[derive(Debug, Deserialize)]
pub struct ReceiptCancelForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// The customer's Cancel on its receipt page.
pub async fn receipt_cancel(
    state: State,
    user: PageUser,
    path: web::Path<ReceiptId>,
    form: web::Form<ReceiptCancelForm>,
) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    user.customer()?;
    let correction = Correction::CancelReceipt(path.clone());
    let reason = form.reason.as_deref().unwrap_or_default();
    match shipments::correct(state.store.as_ref(), &user.principal, &correction, reason).await {
        Ok(_) => Ok(redirect(&format!("/receipts/{}?notice=cancelled", path.as_str()))),
        Err(failure @ ShipmentFailure::Correction(_)) => {
            receipt_page(&state, &user, &path, None, Some(failure.to_string()), StatusCode::CONFLICT).await
        }
        Err(ShipmentFailure::Forbidden(forbidden)) => Err(PageError::Forbidden(forbidden.to_string())),
        Err(ShipmentFailure::NotFound(message)) => Err(PageError::NotFound(message)),
        Err(other) => Err(PageError::Internal(other.to_string())),
    }
}

/// For `FormConfig` and `PathConfig` on the pages: bad input gets an HTML page.
pub fn form_error(err: actix_web::error::UrlencodedError, _req: &HttpRequest) -> actix_web::Error {
    PageError::BadRequest(format!("The form could not be read: {err}")).into()
}

pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    PageError::NotFound(format!("That address names nothing here ({err}).")).into()
}

pub fn query_error(err: actix_web::error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    PageError::BadRequest(format!("The address could not be read: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/order")), Some("/order"));
        assert_eq!(safe_next(Some("/receipts/R-000001")), Some("/receipts/R-000001"));
        for hostile in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "order",
            "",
            "/\t/evil.example/x",
            "/order\r\nX: y",
            "/somewhere-else",
        ] {
            assert_eq!(safe_next(Some(hostile)), None, "{hostile}");
        }
        assert_eq!(safe_next(None), None);
        assert_eq!(landing(Role::Dispatcher), "/dashboard");
        assert_eq!(landing(Role::Customer), "/order");
    }

    #[test]
    fn the_next_path_is_percent_encoded() {
        assert_eq!(encode_next("/order?notice=x&y"), "%2Forder%3Fnotice%3Dx%26y");
    }
}
