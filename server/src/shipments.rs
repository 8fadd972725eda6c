//! Shipment processing as the API uses it: planning runs (on demand, after each
//! confirmed order and after each goods receipt), goods receipts, leg issues and
//! (re)assignment. The rules are in `domain::shipments`; the store applies them.

use std::sync::Arc;

use handover_shared::{DeliveryId, ErrorCode, ItemId, LegId, NodeId, Username};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::{
    domain::{
        access::{Forbidden, Hidden, Principal},
        corrections::{Corrected, Correction, CorrectionRefusal},
        shipments::{AssignRefusal, CourierAccount, Delivery, LegRefusal},
        stock::Balance,
    },
    store::{DeliveryQuery, PlanResult, Step, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ShipmentFailure {
    #[error("{0}")]
    NotFound(String),
    /// Well-formed input that names something unusable, with its stable code.
    #[error("{message}")]
    Invalid { code: ErrorCode, message: String },
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error(transparent)]
    Assign(#[from] AssignRefusal),
    #[error(transparent)]
    Leg(#[from] LegRefusal),
    #[error(transparent)]
    Correction(#[from] CorrectionRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs planning in the background when something may have made it possible
/// (a confirmed order). Wake-ups that arrive during a run coalesce into one more
/// run, so a burst of orders costs a few runs, not one each.
#[derive(Debug, Clone)]
pub struct Planner {
    wake: Arc<Notify>,
}

impl Planner {
    /// Starts the background task on the current runtime; it plans once at start,
    /// for receipts confirmed before a restart.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let wake = Arc::new(Notify::new());
        let task_wake = Arc::clone(&wake);
        wake.notify_one();
        actix_web::rt::spawn(async move {
            loop {
                task_wake.notified().await;
                match store.plan_pending(OffsetDateTime::now_utc()).await {
                    Ok(results) if results.is_empty() => {}
                    Ok(results) => log_run(&results),
                    Err(err) => tracing::error!(error = %err, "background planning failed"),
                }
            }
        });
        Planner { wake }
    }

    pub fn trigger(&self) {
        self.wake.notify_one();
    }
}

fn log_run(results: &[PlanResult]) {
    let planned = results.iter().filter(|r| matches!(r, PlanResult::Planned(_))).count();
    tracing::info!(planned, backordered = results.len() - planned, "planning run");
}

/// One planning run, now.
pub async fn run(store: &dyn Store) -> Result<Vec<PlanResult>, ShipmentFailure> {
    let results = store.plan_pending(OffsetDateTime::now_utc()).await?;
    log_run(&results);
    Ok(results)
}

/// Goods arrived at a node; the backorders are planned again at once. Returns
/// the item's stock at the node after that planning run.
pub async fn goods_receipt(
    store: &dyn Store,
    planner: &Planner,
    node_id: &NodeId,
    item_id: &ItemId,
    quantity: u32,
) -> Result<(Balance, Vec<PlanResult>), ShipmentFailure> {
    store.node(node_id).await?.ok_or_else(|| ShipmentFailure::NotFound(format!("no node {node_id}")))?;
    if store.item(item_id).await?.is_none() {
        return Err(ShipmentFailure::Invalid {
            code: ErrorCode::UnknownItem,
            message: format!("there is no item {item_id}"),
        });
    }
    if quantity == 0 {
        return Err(ShipmentFailure::Invalid {
            code: ErrorCode::InvalidQuantity,
            message: "a goods receipt brings at least 1 unit".into(),
        });
    }
    store.goods_receipt(node_id, item_id, quantity, OffsetDateTime::now_utc()).await?;
    tracing::info!(node_id = %node_id, item_id = %item_id, quantity, "goods receipt");
    // The goods receipt is durable: a planning failure must not make the client
    // retry it (and count the goods twice); the background planner tries again.
    let results = run(store).await.unwrap_or_else(|err| {
        tracing::error!(error = %err, "planning after a goods receipt failed");
        planner.trigger();
        Vec::new()
    });
    // The figure after the run, which may have reserved some of what arrived.
    let balance = store
        .node_stock(node_id)
        .await?
        .into_iter()
        .find_map(|(item, balance)| (item == *item_id).then_some(balance))
        .unwrap_or_default();
    Ok((balance, results))
}

/// A delivery the principal may see.
pub async fn delivery(store: &dyn Store, principal: &Principal, id: &DeliveryId) -> Result<Delivery, ShipmentFailure> {
    let delivery = store.delivery(id).await?.ok_or_else(|| ShipmentFailure::NotFound(format!("no delivery {id}")))?;
    principal.ensure_can_see(&delivery)?;
    Ok(delivery)
}

/// Deliveries the principal may list: a dispatcher any, a seller those entrusted
/// to its node, a courier its own.
pub async fn deliveries(
    store: &dyn Store,
    principal: &Principal,
    mut query: DeliveryQuery,
) -> Result<Vec<Delivery>, ShipmentFailure> {
    use handover_shared::Role;
    match principal.role {
        Role::Dispatcher => {}
        Role::Seller => {
            let seller = principal.node_id.clone();
            query.entrusted_to =
                Some(seller.ok_or_else(|| Forbidden(format!("seller {} has no node", principal.username)))?);
        }
        Role::Expediter | Role::Serviceman => query.assignee = Some(principal.username.clone()),
        Role::Admin | Role::Customer => {
            return Err(Forbidden(format!("{} {} has no deliveries", principal.role, principal.username)).into())
        }
    }
    Ok(store.deliveries(&query).await?)
}

/// (Re)assigns a delivery to a courier.
pub async fn assign(
    store: &dyn Store,
    principal: &Principal,
    id: &DeliveryId,
    assignee: &Username,
) -> Result<Delivery, ShipmentFailure> {
    // Who may see it is checked first, so a seller learns nothing of others' deliveries.
    delivery(store, principal, id).await?;
    let account = store.account(assignee).await?.ok_or_else(|| ShipmentFailure::Invalid {
        code: ErrorCode::UnknownAssignee,
        message: format!("there is no account {assignee}"),
    })?;
    let courier = CourierAccount {
        username: account.username,
        role: account.membership.role(),
        node_id: account.membership.node_id().cloned(),
    };
    match store.assign_delivery(id, principal, &courier, OffsetDateTime::now_utc()).await? {
        Step::Done(delivery) => {
            tracing::info!(delivery_id = %id, assignee = %assignee, version = delivery.version, "delivery assigned");
            Ok(delivery)
        }
        Step::Refused(refusal) => Err(refusal.into()),
        Step::NotFound => Err(ShipmentFailure::NotFound(format!("no delivery {id}"))),
    }
}

/// Issues a transfer leg: the goods leave its node and arrive at the next.
pub async fn issue_leg(store: &dyn Store, leg: &LegId) -> Result<Delivery, ShipmentFailure> {
    match store.issue_leg(leg, OffsetDateTime::now_utc()).await? {
        Step::Done(delivery) => Ok(delivery),
        Step::Refused(refusal) => Err(refusal.into()),
        Step::NotFound => Err(ShipmentFailure::NotFound(format!("no leg {leg}"))),
    }
}

/// Cancels a delivery or a receipt, or reverses a confirmation: the rules of
/// `domain::corrections`, which also say who may.
pub async fn correct(
    store: &dyn Store,
    principal: &Principal,
    correction: &Correction,
    reason: &str,
) -> Result<Corrected, ShipmentFailure> {
    match store.correct(correction, principal, reason, OffsetDateTime::now_utc()).await? {
        Step::Done(corrected) => {
            tracing::info!(
                correction = ?correction,
                by = %principal.username,
                receipt_id = %corrected.receipt.receipt_id,
                "correction applied"
            );
            Ok(corrected)
        }
        Step::Refused(CorrectionRefusal::NotAllowed(message)) => Err(Forbidden(message).into()),
        Step::Refused(refusal) => Err(refusal.into()),
        Step::NotFound => Err(ShipmentFailure::NotFound(match correction {
            Correction::CancelDelivery(id) | Correction::Reverse(id) => format!("no delivery {id}"),
            Correction::CancelReceipt(id) => format!("no receipt {id}"),
        })),
    }
}

impl From<Hidden> for ShipmentFailure {
    fn from(hidden: Hidden) -> Self {
        ShipmentFailure::NotFound(hidden.to_string())
    }
}
