//! The dispatcher's dashboard and the seller's page of entrusted deliveries.
//! Server-rendered, behind the same session cookie and CSRF checks as the
//! ordering screen; every change goes through the shipment service.

use actix_web::{http::StatusCode, web, HttpResponse};
use askama::Template;
use handover_shared::{DeliveryId, LegId, ReceiptId, Role, Username};
use serde::Deserialize;

use super::{
    pages::{check_csrf, html, redirect, PageError, PageUser},
    paging,
    shipments::delivery_view,
    AppState,
};
use time::format_description::FormatItem;

use crate::{
    domain::{
        corrections::Correction,
        network::{Account, Membership},
        shipments::Delivery,
    },
    orders, shipments,
    shipments::ShipmentFailure,
    store::{DeliveryQuery, ReceiptQuery},
};

type State = web::Data<AppState>;

/// Rows per table page.
const PAGE: usize = 25;

struct ReceiptRow {
    receipt_id: String,
    customer_id: String,
    item_id: String,
    quantity: u32,
    created: String,
    planned: bool,
    backordered: bool,
    delivered: bool,
    delivered_quantity: u32,
    cancelled: bool,
    delivery_id: String,
}

struct LegRow {
    from: String,
    to: String,
    status: String,
}

struct DeliveryRow {
    delivery_id: String,
    receipt_id: String,
    customer_id: String,
    item_id: String,
    quantity: u32,
    source: String,
    source_node: String,
    legs: Vec<LegRow>,
    assignee: Option<String>,
    entrusted_to: String,
    status: String,
    /// The next transfer leg that can be issued, if any.
    next_leg: Option<String>,
}

struct DeviceRow {
    device_id: String,
    username: String,
    last_sync: String,
    /// Left queued after its last push.
    queued: String,
    /// Since when something has stayed queued, if it has.
    queued_since: String,
    /// Queued for longer than `dashboard.stuck_queue_minutes`.
    stuck: bool,
    /// The account the device id is registered to.
    registered_to: String,
    /// Its signed chain: "unsigned", or the last record number received.
    chain: String,
    /// Record numbers that never arrived ("4, 7–9"), empty when none.
    missing: String,
}

/// A device's chain as the dashboard says it.
fn chain_cells(chain: Option<&crate::domain::chain::DeviceChain>) -> (String, String) {
    let Some(chain) = chain else { return ("unsigned".to_owned(), String::new()) };
    let head = chain
        .highest()
        .map_or_else(|| "key registered, nothing signed yet".to_owned(), |n| format!("signed, up to {n}"));
    let missing = chain
        .missing()
        .iter()
        .map(|&(first, last)| if first == last { first.to_string() } else { format!("{first}–{last}") })
        .collect::<Vec<_>>()
        .join(", ");
    (head, missing)
}

/// A delivery whose last attempt failed, waiting for the dispatcher.
struct FailedRow {
    delivery_id: String,
    receipt_id: String,
    customer_id: String,
    item_id: String,
    quantity: u32,
    reason: String,
    note: String,
    by: String,
    at: String,
    /// Who may carry it on a new attempt.
    couriers: Vec<String>,
}

struct RejectedRow {
    received: String,
    username: String,
    device_id: String,
    delivery_id: String,
    code: String,
    message: String,
}

struct StockRow {
    node: String,
    item_id: String,
    on_hand: u64,
    reserved: u64,
    available: u64,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage<'a> {
    username: &'a str,
    csrf: &'a str,
    notice: Option<&'a str>,
    alert: Option<String>,
    backorders: Vec<ReceiptRow>,
    waiting: Vec<DeliveryRow>,
    failed: Vec<FailedRow>,
    deliveries: Vec<DeliveryRow>,
    deliveries_next: Option<String>,
    receipts: Vec<ReceiptRow>,
    receipts_next: Option<String>,
    stock: Vec<StockRow>,
    devices: Vec<DeviceRow>,
    rejected: Vec<RejectedRow>,
    rejected_pages: RejectedPages,
}

/// Where the page of rejected confirmations stands among all listed, and
/// what each device's bounded list no longer shows.
struct RejectedPages {
    total: usize,
    previous: Option<usize>,
    next: Option<usize>,
    /// Per device: rejections dropped from its list (their outcomes are kept).
    dropped: Vec<(String, u64)>,
}

#[derive(Template)]
#[template(path = "seller.html")]
struct SellerPage<'a> {
    username: &'a str,
    csrf: &'a str,
    seller: &'a str,
    notice: Option<&'a str>,
    alert: Option<String>,
    deliveries: Vec<DeliveryRow>,
    servicemen: Vec<Username>,
}

fn receipt_row(receipt: &crate::domain::orders::Receipt) -> ReceiptRow {
    ReceiptRow {
        receipt_id: receipt.receipt_id.to_string(),
        customer_id: receipt.customer_id.to_string(),
        item_id: receipt.item_id.to_string(),
        quantity: receipt.quantity,
        created: receipt
            .created_at
            .format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]"))
            .unwrap_or_default(),
        planned: receipt.planned,
        backordered: receipt.backordered,
        delivered: receipt.delivered,
        delivered_quantity: receipt.delivered_quantity,
        cancelled: receipt.cancellation.is_some(),
        delivery_id: receipt.delivery_id.as_ref().map(ToString::to_string).unwrap_or_default(),
    }
}

fn failed_row(delivery: &Delivery, accounts: &[Account], minute: &[FormatItem<'_>]) -> Option<FailedRow> {
    let attempt = delivery.attempts.last()?;
    let (role, node) = delivery.carrier.courier();
    let couriers = accounts
        .iter()
        .filter(|account| account.membership.role() == role && account.membership.node_id() == Some(node))
        .map(|account| account.username.to_string())
        .collect();
    Some(FailedRow {
        delivery_id: delivery.delivery_id.to_string(),
        receipt_id: delivery.receipt_id.to_string(),
        customer_id: delivery.customer_id.to_string(),
        item_id: delivery.item_id.to_string(),
        quantity: delivery.quantity,
        reason: attempt.reason.map(|reason| reason.as_str()).unwrap_or_default().to_owned(),
        note: attempt.note.clone().unwrap_or_default(),
        by: attempt.by.to_string(),
        at: attempt.received_at.format(minute).unwrap_or_default(),
        couriers,
    })
}

fn delivery_row(delivery: &Delivery) -> DeliveryRow {
    let view = delivery_view(delivery);
    let last = view.legs.len().saturating_sub(1);
    let next_leg = view.legs[..last].iter().find(|leg| leg.status == "planned").map(|leg| leg.leg_id.to_string());
    DeliveryRow {
        delivery_id: view.delivery_id.to_string(),
        receipt_id: view.receipt_id.to_string(),
        customer_id: view.customer_id.to_string(),
        item_id: view.item_id.to_string(),
        quantity: view.quantity,
        source: view.source,
        source_node: view.source_node.to_string(),
        legs: view
            .legs
            .into_iter()
            .map(|leg| LegRow { from: leg.from.to_string(), to: leg.to, status: leg.status })
            .collect(),
        assignee: view.assignee.map(|a| a.to_string()),
        entrusted_to: view.entrusted_to.map(|n| n.to_string()).unwrap_or_default(),
        status: view.status,
        next_leg,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DashboardQuery {
    notice: Option<String>,
    receipts_after: Option<ReceiptId>,
    deliveries_after: Option<DeliveryId>,
    rejected_page: Option<usize>,
}

/// Only known notices are shown: the query never puts text on the page.
fn notice(key: Option<&str>) -> Option<&'static str> {
    match key {
        Some("planned") => Some("Planning ran."),
        Some("issued") => Some("The leg was issued."),
        Some("assigned") => Some("The delivery was assigned."),
        Some("cancelled") => Some("The delivery was cancelled."),
        Some("receipt-cancelled") => Some("The receipt was cancelled."),
        Some("reversed") => Some("The confirmation was reversed; the delivery is open again."),
        _ => None,
    }
}

fn internal(err: impl std::fmt::Display) -> PageError {
    PageError::Internal(err.to_string())
}

pub async fn dashboard(
    state: State,
    user: PageUser,
    query: web::Query<DashboardQuery>,
) -> Result<HttpResponse, PageError> {
    let notice = notice(query.notice.as_deref());
    match user.principal.role {
        Role::Dispatcher => dispatcher_page(&state, &user, &query, notice, None, StatusCode::OK).await,
        Role::Seller => seller_page(&state, &user, notice, None, StatusCode::OK).await,
        role => Err(PageError::Forbidden(format!(
            "The dashboard is for dispatchers and sellers; {} is {}.",
            user.principal.username,
            role.with_article()
        ))),
    }
}

async fn dispatcher_page(
    state: &AppState,
    user: &PageUser,
    query: &DashboardQuery,
    notice: Option<&str>,
    alert: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let store = state.store.as_ref();
    let principal = &user.principal;
    let backorders = orders::receipts(
        store,
        principal,
        ReceiptQuery { backordered: Some(true), limit: PAGE * 4, ..ReceiptQuery::default() },
    )
    .await?;
    let receipts = orders::receipts(
        store,
        principal,
        ReceiptQuery {
            after: query.receipts_after.as_ref().and_then(ReceiptId::seq),
            limit: PAGE,
            ..ReceiptQuery::default()
        },
    )
    .await?;
    let open = DeliveryQuery {
        open_only: true,
        after: query.deliveries_after.as_ref().and_then(DeliveryId::number),
        limit: PAGE,
        ..DeliveryQuery::default()
    };
    let deliveries = shipments::deliveries(store, principal, open).await.map_err(page_error)?;
    let unassigned = DeliveryQuery {
        open_only: true,
        entrusted_only: true,
        unassigned_only: true,
        limit: PAGE * 4,
        ..DeliveryQuery::default()
    };
    let waiting: Vec<DeliveryRow> = shipments::deliveries(store, principal, unassigned)
        .await
        .map_err(page_error)?
        .iter()
        .map(delivery_row)
        .collect();
    let stock = store
        .all_balances()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|(node, item, balance)| StockRow {
            node: node.to_string(),
            item_id: item.to_string(),
            on_hand: balance.on_hand,
            reserved: balance.reserved,
            available: balance.available(),
        })
        .collect();
    let minute = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    let unassigned =
        DeliveryQuery { open_only: true, unassigned_only: true, limit: PAGE * 4, ..DeliveryQuery::default() };
    let accounts = store.accounts().await.map_err(internal)?;
    let failed = shipments::deliveries(store, principal, unassigned)
        .await
        .map_err(page_error)?
        .iter()
        .filter(|delivery| delivery.awaits_reattempt())
        .filter_map(|delivery| failed_row(delivery, &accounts, minute))
        .collect();
    let now = time::OffsetDateTime::now_utc();
    let patience = state.settings.dashboard.stuck_queue();
    let registered: std::collections::HashMap<_, _> = store
        .device_bindings()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|binding| (binding.device_id, binding.username))
        .collect();
    let chains: std::collections::HashMap<_, _> = store
        .device_chains()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|chain| (chain.device_id.clone(), chain))
        .collect();
    let devices = store
        .device_syncs()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|d| {
            let (chain, missing) = chain_cells(chains.get(&d.device_id));
            DeviceRow {
                device_id: d.device_id.to_string(),
                username: d.username.to_string(),
                last_sync: d.last_sync_at.format(minute).unwrap_or_default(),
                queued: d.reported_queued.map_or_else(|| "not reported".to_owned(), |n| n.to_string()),
                queued_since: d.queued_since.and_then(|since| since.format(minute).ok()).unwrap_or_default(),
                stuck: d.is_stuck(now, patience),
                registered_to: registered.get(&d.device_id).map(ToString::to_string).unwrap_or_default(),
                chain,
                missing,
            }
        })
        .collect();
    // Each device's review list is bounded; together they are read whole and
    // shown a page at a time, newest first.
    let logs = store.rejection_logs().await.map_err(internal)?;
    let dropped: Vec<(String, u64)> =
        logs.iter().filter(|log| log.dropped > 0).map(|log| (log.device_id.to_string(), log.dropped)).collect();
    // Newest first, also among those one push received at the same instant.
    let mut listed: Vec<_> = logs.into_iter().flat_map(|log| log.recent.into_iter().rev()).collect();
    listed.sort_by_key(|seen| std::cmp::Reverse(seen.received_at));
    let rejected_total = listed.len();
    let rejected_page = query.rejected_page.unwrap_or(0).min(rejected_total / PAGE);
    let rejected = listed
        .into_iter()
        .skip(rejected_page * PAGE)
        .take(PAGE)
        .map(|seen| {
            let (code, message) = match seen.outcome {
                crate::domain::confirmations::FirstOutcome::Rejected { code, message } => {
                    (code.as_str().to_owned(), message)
                }
                crate::domain::confirmations::FirstOutcome::Accepted => (String::new(), String::new()),
            };
            RejectedRow {
                received: seen.received_at.format(minute).unwrap_or_default(),
                username: seen.uploader.to_string(),
                device_id: seen.device_id.to_string(),
                delivery_id: seen.delivery_id.as_ref().map(ToString::to_string).unwrap_or_default(),
                code,
                message,
            }
        })
        .collect();
    let rejected_pages = RejectedPages {
        total: rejected_total,
        previous: rejected_page.checked_sub(1),
        next: ((rejected_page + 1) * PAGE < rejected_total).then_some(rejected_page + 1),
        dropped,
    };
    let csrf = user.csrf()?;
    Ok(html(
        status,
        &DashboardPage {
            devices,
            rejected,
            rejected_pages,
            username: principal.username.as_str(),
            csrf: &csrf,
            notice,
            alert,
            backorders: backorders.iter().map(receipt_row).collect(),
            waiting,
            failed,
            deliveries_next: paging::next_after(&deliveries, PAGE, |d| d.delivery_id.to_string()),
            deliveries: deliveries.iter().map(delivery_row).collect(),
            receipts_next: (receipts.len() == PAGE)
                .then(|| receipts.last().map(|r| r.receipt_id.to_string()))
                .flatten(),
            receipts: receipts.iter().map(receipt_row).collect(),
            stock,
        },
    ))
}

async fn seller_page(
    state: &AppState,
    user: &PageUser,
    notice: Option<&str>,
    alert: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let store = state.store.as_ref();
    let seller = user.principal.node_id.clone().ok_or_else(|| internal("a seller account without a node"))?;
    let query = DeliveryQuery { open_only: true, limit: PAGE * 4, ..DeliveryQuery::default() };
    let deliveries = shipments::deliveries(store, &user.principal, query).await.map_err(page_error)?;
    let servicemen = store
        .accounts()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|a| matches!(&a.membership, Membership::Serviceman { node_id } if *node_id == seller))
        .map(|a| a.username)
        .collect();
    let csrf = user.csrf()?;
    Ok(html(
        status,
        &SellerPage {
            username: user.principal.username.as_str(),
            csrf: &csrf,
            seller: seller.as_str(),
            notice,
            alert,
            deliveries: deliveries.iter().map(delivery_row).collect(),
            servicemen,
        },
    ))
}

fn page_error(failure: ShipmentFailure) -> PageError {
    match failure {
        ShipmentFailure::NotFound(message) => PageError::NotFound(message),
        ShipmentFailure::Forbidden(forbidden) => PageError::Forbidden(forbidden.to_string()),
        ShipmentFailure::Store(err) => internal(err),
        other => PageError::BadRequest(other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    csrf: Option<String>,
}

fn dispatcher_only(user: &PageUser) -> Result<(), PageError> {
    if user.principal.role == Role::Dispatcher {
        Ok(())
    } else {
        Err(PageError::Forbidden(format!(
            "Only dispatchers may do this; {} is {}.",
            user.principal.username,
            user.principal.role.with_article()
        )))
    }
}

pub async fn run_planning(state: State, user: PageUser, form: web::Form<CsrfOnly>) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    dispatcher_only(&user)?;
    shipments::run(state.store.as_ref()).await.map_err(page_error)?;
    Ok(redirect("/dashboard?notice=planned"))
}

pub async fn issue_leg(
    state: State,
    user: PageUser,
    path: web::Path<LegId>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    dispatcher_only(&user)?;
    match shipments::issue_leg(state.store.as_ref(), &path).await {
        Ok(_) => Ok(redirect("/dashboard?notice=issued")),
        Err(failure @ ShipmentFailure::Leg(_)) => {
            let query = DashboardQuery::default();
            dispatcher_page(&state, &user, &query, None, Some(failure.to_string()), StatusCode::CONFLICT).await
        }
        Err(other) => Err(page_error(other)),
    }
}

#[derive(Debug, Deserialize)]
pub struct AssignForm {
    csrf: Option<String>,
    assignee: Option<String>,
}

pub async fn assign(
    state: State,
    user: PageUser,
    path: web::Path<DeliveryId>,
    form: web::Form<AssignForm>,
) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    let assignee = Username::parse(form.assignee.clone().unwrap_or_default())
        .map_err(|_| PageError::BadRequest("Choose a serviceman to assign.".into()))?;
    match shipments::assign(state.store.as_ref(), &user.principal, &path, &assignee).await {
        Ok(_) => Ok(redirect("/dashboard?notice=assigned")),
        Err(failure @ (ShipmentFailure::Assign(_) | ShipmentFailure::Invalid { .. })) => {
            let alert = Some(failure.to_string());
            match user.principal.role {
                Role::Seller => seller_page(&state, &user, None, alert, StatusCode::UNPROCESSABLE_ENTITY).await,
                _ => {
                    let query = DashboardQuery {
                        notice: None,
                        receipts_after: None,
                        deliveries_after: None,
                        rejected_page: None,
                    };
                    dispatcher_page(&state, &user, &query, None, alert, StatusCode::UNPROCESSABLE_ENTITY).await
                }
            }
        }
        Err(other) => Err(page_error(other)),
    }
}

#[derive(Debug, Deserialize)]
pub struct CorrectionForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// Applies a correction from a dashboard form; a refusal shows the dashboard
/// again with why.
async fn correct(
    state: &AppState,
    user: &PageUser,
    correction: Correction,
    form: &CorrectionForm,
    done: &str,
) -> Result<HttpResponse, PageError> {
    check_csrf(&user.session, form.csrf.as_deref())?;
    let reason = form.reason.as_deref().unwrap_or_default();
    match shipments::correct(state.store.as_ref(), &user.principal, &correction, reason).await {
        Ok(_) => Ok(redirect(&format!("/dashboard?notice={done}"))),
        Err(failure @ ShipmentFailure::Correction(_)) => {
            let alert = Some(failure.to_string());
            match user.principal.role {
                Role::Seller => seller_page(state, user, None, alert, StatusCode::CONFLICT).await,
                _ => {
                    let query = DashboardQuery {
                        notice: None,
                        receipts_after: None,
                        deliveries_after: None,
                        rejected_page: None,
                    };
                    dispatcher_page(state, user, &query, None, alert, StatusCode::CONFLICT).await
                }
            }
        }
        Err(other) => Err(page_error(other)),
    }
}

pub async fn cancel_delivery(
    state: State,
    user: PageUser,
    path: web::Path<DeliveryId>,
    form: web::Form<CorrectionForm>,
) -> Result<HttpResponse, PageError> {
    correct(&state, &user, Correction::CancelDelivery(path.into_inner()), &form, "cancelled").await
}

pub async fn reverse_delivery(
    state: State,
    user: PageUser,
    path: web::Path<DeliveryId>,
    form: web::Form<CorrectionForm>,
) -> Result<HttpResponse, PageError> {
    correct(&state, &user, Correction::Reverse(path.into_inner()), &form, "reversed").await
}

pub async fn cancel_receipt(
    state: State,
    user: PageUser,
    path: web::Path<ReceiptId>,
    form: web::Form<CorrectionForm>,
) -> Result<HttpResponse, PageError> {
    correct(&state, &user, Correction::CancelReceipt(path.into_inner()), &form, "receipt-cancelled").await
}
