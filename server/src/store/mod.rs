//! The storage boundary. Handlers and domain rules see only the [`Store`] trait;
//! [`sled::SledStore`] implements it today, and a PostgreSQL backend can
//! implement it later without touching either.
//!
//! Contract for every backend: each method is atomic (all of its records change
//! or none), and a method that writes returns only once its change is durable.

pub mod commit;
pub mod sled;

use async_trait::async_trait;
use handover_shared::{
    api::{ImportSummary, Problem},
    CustomerId, DeliveryId, DeviceId, ItemId, LegId, NodeId, OrderId, ReceiptId, Username,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    access::Principal,
    network::{Customer, Item, KnownNetwork, Membership, Node, StockCount},
    orders::{CustomerAccount, Draft, DraftRefusal, Receipt},
    sessions::{RefreshRefusal, RefreshToken, Session},
    shipments::{AssignRefusal, CourierAccount, Delivery, DeliveryCard, LegRefusal},
    stock::{Balance, LedgerEntry},
};

/// A stored account; the password only as its argon2id hash (PHC string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub username: Username,
    pub password_hash: String,
    pub membership: Membership,
}

/// A validated network file whose passwords are already hashed.
#[derive(Debug, Clone, Default)]
pub struct ImportPlan {
    pub nodes: Vec<Node>,
    pub items: Vec<Item>,
    pub stock: Vec<StockCount>,
    pub customers: Vec<Customer>,
    pub accounts: Vec<Account>,
}

/// The outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was retired and `new_hash` now belongs to the session.
    Rotated(Session),
    /// The token had been used before; the session is now revoked.
    ReuseDetected(Session),
    Refused(RefreshRefusal),
}

/// The outcome of a step on an object whose state may forbid it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T, R> {
    Done(T),
    Refused(R),
    NotFound,
}

/// A step (confirm, cancel) on a draft.
pub type DraftStep<T> = Step<T, DraftRefusal>;

/// What one planning run did to one receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanResult {
    Planned(Box<Delivery>),
    Backordered(ReceiptId),
}

/// Which deliveries to list, in receipt order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only open deliveries (not delivered, not cancelled).
    pub open_only: bool,
    pub assignee: Option<Username>,
    /// Only those entrusted to this seller node.
    pub entrusted_to: Option<NodeId>,
    /// Only those entrusted to some seller.
    pub entrusted_only: bool,
    /// Only those nobody carries yet.
    pub unassigned_only: bool,
    pub after: Option<u64>,
    pub limit: usize,
}

/// Which receipts to list, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptQuery {
    pub customer_id: Option<CustomerId>,
    pub delivered: Option<bool>,
    pub backordered: Option<bool>,
    /// Created at or after.
    pub since: Option<OffsetDateTime>,
    /// Start after this position in receipt order (the previous page's last).
    pub after: Option<u64>,
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data dir {path} is in use by another process (is the server running?)")]
    Locked { path: String },
    #[error("the data dir was written by an unsupported format version {found} (this build reads {expected})")]
    UnsupportedFormat { found: String, expected: u32 },
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("stored record {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the storage task failed: {0}")]
    Task(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is valid on its own but clashes with the stored state.
    #[error("the network file conflicts with the stored network")]
    Conflicts(Vec<Problem>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A changed delivery, with the names and the empties a handheld shows.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    pub delivery: DeliveryCard,
    pub customer_name: String,
    pub item_name: String,
    pub empties_expected: u32,
}

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Nothing was ever imported.
    async fn is_empty(&self) -> Result<bool, StoreError>;
    async fn known_network(&self) -> Result<KnownNetwork, StoreError>;
    /// Upserts everything the plan names, in one transaction. A stock count
    /// becomes a ledger entry for the difference with the current on-hand.
    async fn import_network(&self, plan: ImportPlan, now: OffsetDateTime) -> Result<ImportSummary, ImportError>;

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError>;
    async fn node(&self, id: &NodeId) -> Result<Option<Node>, StoreError>;
    async fn item(&self, id: &ItemId) -> Result<Option<Item>, StoreError>;
    async fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, StoreError>;
    /// Every item with a balance at the node, by item id.
    async fn node_stock(&self, id: &NodeId) -> Result<Vec<(ItemId, Balance)>, StoreError>;
    /// The whole ledger, in sequence order.
    async fn ledger(&self) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Every stored balance, with the ledger read in the same snapshot, for audits.
    async fn stock_snapshot(&self) -> Result<(Vec<LedgerEntry>, Vec<(NodeId, ItemId, Balance)>), StoreError>;

    /// Opens a session with its first refresh token.
    async fn open_session(
        &self,
        session: Session,
        refresh_hash: [u8; 32],
        refresh: RefreshToken,
    ) -> Result<(), StoreError>;
    /// Applies `decide_refresh` to the presented token and carries out the decision.
    async fn rotate_refresh(
        &self,
        presented_hash: [u8; 32],
        successor_hash: [u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<RefreshOutcome, StoreError>;
    /// Ends the session a refresh token belongs to (logout); `None` when unknown.
    async fn close_session(&self, refresh_hash: [u8; 32], now: OffsetDateTime) -> Result<Option<Session>, StoreError>;
    /// Revokes every live session of a device; returns the ones it revoked.
    async fn revoke_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError>;
    /// Every revoked session id, so that their access tokens die at once.
    async fn revoked_sessions(&self) -> Result<Vec<Uuid>, StoreError>;

    async fn create_draft(&self, draft: Draft) -> Result<(), StoreError>;
    async fn draft(&self, id: &OrderId) -> Result<Option<Draft>, StoreError>;
    /// Drafts still open (possibly expired), newest first; of one customer, or all.
    async fn open_drafts(&self, customer: Option<&CustomerId>) -> Result<Vec<Draft>, StoreError>;
    /// Applies `decide_confirm`. On the first confirm, in one transaction: the
    /// draft is marked confirmed, the receipt generated with the next receipt
    /// number, the customer information updated. On a later one, the same
    /// receipt comes back and nothing changes (`false`).
    async fn confirm_draft(&self, id: &OrderId, now: OffsetDateTime) -> Result<DraftStep<(Receipt, bool)>, StoreError>;
    /// Applies `decide_cancel`; cancelling twice is harmless.
    async fn cancel_draft(&self, id: &OrderId, now: OffsetDateTime) -> Result<DraftStep<Draft>, StoreError>;
    /// Forgets drafts that expired or were cancelled before `before`; confirmed
    /// drafts are kept (a retried confirm must find its receipt).
    async fn purge_drafts(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    async fn receipt(&self, id: &ReceiptId) -> Result<Option<Receipt>, StoreError>;
    /// One page of receipts; asks for `limit` and returns at most that many.
    async fn receipts(&self, query: &ReceiptQuery) -> Result<Vec<Receipt>, StoreError>;
    /// A customer's latest receipts, newest first.
    async fn recent_receipts(&self, customer: &CustomerId, limit: usize) -> Result<Vec<Receipt>, StoreError>;
    async fn customer_account(&self, customer: &CustomerId) -> Result<CustomerAccount, StoreError>;
    /// The catalogue, by item id.
    async fn items(&self) -> Result<Vec<Item>, StoreError>;
    /// Every node, by id.
    async fn nodes(&self) -> Result<Vec<Node>, StoreError>;
    /// Every account, by username.
    async fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// Every stored balance, by node then item.
    async fn all_balances(&self) -> Result<Vec<(NodeId, ItemId, Balance)>, StoreError>;

    /// Plans every receipt not yet planned, in receipt order, in transactions of
    /// a few hundred receipts: the cascade reads available stock inside the
    /// transaction, so that concurrent runs and goods receipts never reserve a
    /// unit twice, and a crash leaves a chunk wholly planned or not at all.
    async fn plan_pending(&self, now: OffsetDateTime) -> Result<Vec<PlanResult>, StoreError>;
    /// Goods arrived at a node: on-hand grows, recorded in the ledger.
    async fn goods_receipt(
        &self,
        node: &NodeId,
        item: &ItemId,
        quantity: u32,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError>;
    async fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError>;
    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError>;
    /// Applies `check_assignment` and, when it passes and the assignee changes,
    /// bumps the version and records the assignment.
    async fn assign_delivery(
        &self,
        id: &DeliveryId,
        by: &Principal,
        courier: &CourierAccount,
        now: OffsetDateTime,
    ) -> Result<Step<Delivery, AssignRefusal>, StoreError>;
    /// The deliveries that changed for a courier after change number `cursor`
    /// (assigned, reassigned away, moved towards ready...), each once, in the
    /// order of their latest change, with what the handheld shows of them; and
    /// the number of the last change read. At most `limit` changes are read; the
    /// bool says whether more follow. One read, however many changed.
    async fn assignment_changes(
        &self,
        courier: &Username,
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<FeedEntry>, u64, bool), StoreError>;
    /// Judges and applies a batch of confirmations in order (see
    /// `domain::confirmations`), and records the device's sync with it, at
    /// `sync.last_sync_at`; returns once all of it is durable.
    async fn push_confirmations(
        &self,
        sync: crate::domain::confirmations::DeviceSync,
        batch: Vec<handover_shared::sync::Confirmation>,
    ) -> Result<Vec<crate::domain::confirmations::PushOutcome>, StoreError>;
    /// Records that a device synced (pull or push).
    async fn record_sync(&self, sync: crate::domain::confirmations::DeviceSync) -> Result<(), StoreError>;
    /// Every device's last sync, by device id.
    async fn device_syncs(&self) -> Result<Vec<crate::domain::confirmations::DeviceSync>, StoreError>;
    /// Rejected confirmations, for the dispatcher to review.
    async fn rejected_confirmations(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::confirmations::SeenConfirmation>, StoreError>;
    /// Applies `check_issue` and moves the goods along the leg in the ledger.
    async fn issue_leg(&self, leg: &LegId, now: OffsetDateTime) -> Result<Step<Delivery, LegRefusal>, StoreError>;

    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<(), StoreError>;
}
