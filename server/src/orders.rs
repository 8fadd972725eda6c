//! Order processing as the screen and the API use it: judge the data, keep the
//! draft, confirm or cancel it, read receipts and customer information. Access
//! is checked here, on the loaded objects, so both front ends share it.

use handover_shared::{CustomerId, ItemId, OrderId, ReceiptId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    access::{Forbidden, Hidden, Principal},
    network::Customer,
    orders::{
        judge, CustomerAccount, Draft, DraftRefusal, HandoverCode, OrderLookups, OrderProblem, RawOrder, Receipt,
    },
};
use crate::store::{DraftStep, ReceiptQuery, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OrderFailure {
    #[error("the order data has {} problem(s)", .0.len())]
    Abnormal(Vec<OrderProblem>),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] DraftRefusal),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Judges order data and, when it is sound, keeps it as a draft. Abnormal data
/// stores nothing.
pub async fn place_draft(
    store: &dyn Store,
    principal: &Principal,
    raw: &RawOrder,
    ttl: time::Duration,
) -> Result<Draft, OrderFailure> {
    let mut found = OrderLookups::default();
    if let Some(id) = raw.customer_id.as_deref().and_then(|text| CustomerId::parse(text.trim()).ok()) {
        found.customer = store.customer(&id).await?;
    }
    if let Some(id) = raw.item_id.as_deref().and_then(|text| ItemId::parse(text.trim()).ok()) {
        found.item = store.item(&id).await?;
    }
    let order = judge(raw, principal, &found).map_err(OrderFailure::Abnormal)?;
    let order_id = OrderId::parse(Uuid::now_v7().to_string()).map_err(|err| StoreError::Backend(err.to_string()))?;
    let draft = Draft::new(order, order_id, principal, OffsetDateTime::now_utc(), ttl);
    store.create_draft(draft.clone()).await?;
    tracing::info!(order_id = %draft.order_id, customer_id = %draft.customer_id, item_id = %draft.item_id, quantity = draft.quantity, "draft order");
    Ok(draft)
}

/// A draft the principal may act on.
pub async fn draft(store: &dyn Store, principal: &Principal, id: &OrderId) -> Result<Draft, OrderFailure> {
    let draft = store.draft(id).await?.ok_or_else(|| OrderFailure::NotFound(format!("no order {id}")))?;
    principal.ensure_can_see(&draft)?;
    Ok(draft)
}

/// The open drafts the principal may see, newest first.
pub async fn open_drafts(store: &dyn Store, principal: &Principal) -> Result<Vec<Draft>, OrderFailure> {
    if principal.is_dispatcher() {
        return Ok(store.open_drafts(None).await?);
    }
    let customer = principal
        .customer_id
        .as_ref()
        .ok_or_else(|| Forbidden(format!("{} has no orders to list", principal.username)))?;
    Ok(store.open_drafts(Some(customer)).await?)
}

/// Confirms a draft: the receipt, and whether this call created it (a repeated
/// confirm returns the same receipt and changes nothing).
pub async fn confirm(store: &dyn Store, principal: &Principal, id: &OrderId) -> Result<(Receipt, bool), OrderFailure> {
    // Whose draft it is never changes, so checking before the step is race-free.
    draft(store, principal, id).await?;
    let code = fresh_handover_code().await?;
    match store.confirm_draft(id, code, OffsetDateTime::now_utc()).await? {
        DraftStep::Done((receipt, created)) => {
            if created {
                tracing::info!(order_id = %id, receipt_id = %receipt.receipt_id, "order confirmed");
            }
            Ok((receipt, created))
        }
        DraftStep::Refused(refusal) => Err(refusal.into()),
        DraftStep::NotFound => Err(OrderFailure::NotFound(format!("no order {id}"))),
    }
}

/// A fresh handover code for a receipt about to be made, with the slow hash
/// its courier's handheld will check it against. Hashing takes tens of
/// milliseconds of CPU, so it runs off the request threads; a repeated
/// confirm makes one for nothing, which is cheaper than asking first.
pub async fn fresh_handover_code() -> Result<HandoverCode, StoreError> {
    // At most one hash per core at a time: each takes 19 MiB, and a burst of
    // confirms must queue here rather than on the blocking pool.
    static HASHING: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
    });
    let _turn = HASHING.acquire().await.map_err(|err| StoreError::Task(err.to_string()))?;
    tokio::task::spawn_blocking(|| {
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        let hash = handover_shared::proof::hash_code(&code, &rand::random())
            .map_err(|err| StoreError::Backend(format!("hashing a handover code: {err}")))?;
        Ok(HandoverCode { code, hash })
    })
    .await
    .map_err(|err| StoreError::Task(err.to_string()))?
}

/// Discards a draft.
pub async fn cancel(store: &dyn Store, principal: &Principal, id: &OrderId) -> Result<Draft, OrderFailure> {
    draft(store, principal, id).await?;
    match store.cancel_draft(id, OffsetDateTime::now_utc()).await? {
        DraftStep::Done(draft) => Ok(draft),
        DraftStep::Refused(refusal) => Err(refusal.into()),
        DraftStep::NotFound => Err(OrderFailure::NotFound(format!("no order {id}"))),
    }
}

pub async fn receipt(store: &dyn Store, principal: &Principal, id: &ReceiptId) -> Result<Receipt, OrderFailure> {
    let receipt = store.receipt(id).await?.ok_or_else(|| OrderFailure::NotFound(format!("no receipt {id}")))?;
    principal.ensure_can_see(&receipt)?;
    Ok(receipt)
}

/// Lists receipts; a customer account sees only its own, whatever it asks for.
pub async fn receipts(
    store: &dyn Store,
    principal: &Principal,
    mut query: ReceiptQuery,
) -> Result<Vec<Receipt>, OrderFailure> {
    if !principal.is_dispatcher() {
        match (&principal.customer_id, &query.customer_id) {
            (Some(own), Some(asked)) if own != asked => {
                return Err(Forbidden(format!("{} may only list its own receipts", principal.username)).into())
            }
            (Some(own), _) => query.customer_id = Some(own.clone()),
            (None, _) => return Err(Forbidden(format!("{} has no receipts to list", principal.username)).into()),
        }
    }
    Ok(store.receipts(&query).await?)
}

/// How many receipts the customer information lists.
pub const HISTORY_LENGTH: usize = 50;

/// The customer information: the customer, its collection flag and history.
pub async fn customer_info(
    store: &dyn Store,
    principal: &Principal,
    id: &CustomerId,
) -> Result<(Customer, CustomerAccount, Vec<Receipt>), OrderFailure> {
    let customer = store.customer(id).await?.ok_or_else(|| OrderFailure::NotFound(format!("no customer {id}")))?;
    principal.ensure_can_see(&customer)?;
    let account = store.customer_account(id).await?;
    let history = store.recent_receipts(id, HISTORY_LENGTH).await?;
    Ok((customer, account, history))
}

impl From<Hidden> for OrderFailure {
    fn from(hidden: Hidden) -> Self {
        OrderFailure::NotFound(hidden.to_string())
    }
}
