//! The storage boundary. Handlers and services see only the [`Store`] trait;
//! [`sled::SledStore`] implements it, and a second backend implements it
//! without touching either.
//!
//! **The domain decides, the store persists.** A method that changes state
//! reads the records the domain rule needs, calls the rule in
//! `crate::domain` (which returns a [`ChangeSet`](crate::domain::changes::ChangeSet)
//! and the outcome), and writes that change set. A backend numbers what is
//! appended (receipts, ledger lines, feed changes), keeps its own indexes, and
//! decides nothing else.
//!
//! What every backend guarantees (`server/tests/store_contract.rs` checks each
//! on every backend):
//!
//! - **Atomic.** Each method's change is written whole or not at all, and is
//!   judged against the records as of its own transaction: two concurrent
//!   calls never both act on the same old state (no unit reserved twice, no
//!   confirmation applied twice).
//! - **Durable when answered.** A method that writes returns only once its
//!   change survives a crash; a replay (a second Confirm, a retried push) is
//!   answered only once the first is durable too. [`Store::record_sync`]
//!   (dashboard bookkeeping) is the one exception: durable at the next write
//!   or [`Store::flush`], which makes everything written so far durable.
//! - **Replays answer the same.** Confirming a draft again returns the same
//!   receipt; a confirmation id keeps its first outcome forever and is applied
//!   at most once.
//! - **Receipt numbers are contiguous**: 1, 2, 3... in the order of their
//!   Confirm, with no gap and no repeat, whatever runs concurrently; receipt
//!   order is the order planning follows.
//! - **The feed has no gaps.** Every change to a delivery that a courier holds
//!   or held gets a change number greater than every change committed before
//!   it; a reader from cursor `c` sees every change after `c`, in commit
//!   order, and a change committed after a read is after that read's cursor.
//! - **Judged against the store, not the caller.** A refused change (an
//!   import that conflicts with the stored network, a push or an issue that
//!   the records forbid) writes nothing; a step repeated (a leg issued again,
//!   a delivery assigned to the courier who holds it, a draft cancelled
//!   again) changes nothing and answers as the first did.
//! - **One planner, one import.** [`Store::plan_pending`] and
//!   [`Store::import_network`] each run one at a time per store, across every
//!   process that shares it, and never at the same time as each other.

pub mod images;
pub mod postgres;
pub mod sled;

use async_trait::async_trait;
use handover_shared::{
    api::{ImportSummary, Problem},
    CustomerId, DeliveryId, DeviceId, ItemId, LegId, NodeId, OrderId, ReceiptId, Username,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    access::Principal,
    chain::{DeviceChain, KeyMismatch},
    confirmations::{DeviceSync, PushOutcome, Pushed, RejectionLog},
    corrections::{Corrected, Correction, CorrectionRefusal},
    network::{Customer, Item, KnownNetwork, Node},
    orders::{CustomerAccount, Draft, DraftRefusal, HandoverCode, Receipt},
    sessions::{DeviceBinding, DeviceInUse, RefreshToken, Session},
    shipments::{AssignRefusal, CourierAccount, Delivery, DeliveryCard, LegRefusal},
    stock::{Balance, LedgerEntry},
};
pub use crate::domain::{
    changes::{Inconsistent, Step},
    network::{Account, ImportPlan},
    sessions::RefreshOutcome,
    shipments::PlanResult,
};

/// A step (confirm, cancel) on a draft.
pub type DraftStep<T> = Step<T, DraftRefusal>;

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
    /// The database cannot be reached (down, restarting, out of connections):
    /// nothing was written, and the same call may succeed shortly.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("stored record {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the storage task failed: {0}")]
    Task(String),
    /// A domain rule found the stored records inconsistent; nothing was written.
    #[error(transparent)]
    Inconsistent(#[from] Inconsistent),
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
    /// Applies `domain::network::import` to the plan over the stored network:
    /// upserts everything it names, in one transaction, or refuses it whole
    /// with every conflict. One import at a time, and none during planning.
    async fn import_network(&self, plan: ImportPlan, now: OffsetDateTime) -> Result<ImportSummary, ImportError>;

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError>;
    async fn node(&self, id: &NodeId) -> Result<Option<Node>, StoreError>;
    async fn item(&self, id: &ItemId) -> Result<Option<Item>, StoreError>;
    async fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, StoreError>;
    /// Every item with a balance at the node, by item id.
    async fn node_stock(&self, id: &NodeId) -> Result<Vec<(ItemId, Balance)>, StoreError>;
    /// Every stored balance, with the ledger read in the same snapshot, for audits.
    async fn stock_snapshot(&self) -> Result<(Vec<LedgerEntry>, Vec<(NodeId, ItemId, Balance)>), StoreError>;

    /// Applies `domain::sessions::open`: opens a session with its first
    /// refresh token; a courier's `handheld` must be the account's or
    /// nobody's (its first login binds it), and one bound to another account
    /// is refused, writing nothing.
    async fn open_session(
        &self,
        session: Session,
        refresh_hash: [u8; 32],
        refresh: RefreshToken,
        handheld: bool,
        now: OffsetDateTime,
    ) -> Result<Result<(), DeviceInUse>, StoreError>;
    /// Applies `domain::sessions::release_device`: the device is nobody's
    /// again and its live sessions are revoked; returns those.
    async fn release_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError>;
    /// Where this backend keeps proof images (photos, signatures).
    fn images(&self) -> &dyn images::ImageStore;
    /// A device's registered key and chain of signed confirmations.
    async fn device_chain(&self, device: &DeviceId) -> Result<Option<DeviceChain>, StoreError>;
    /// Every device's key and chain, by device id.
    async fn device_chains(&self) -> Result<Vec<DeviceChain>, StoreError>;
    /// Applies `domain::chain::register_key` to the device's stored chain.
    async fn register_device_key(
        &self,
        device: &DeviceId,
        key: &str,
        by: &Username,
        now: OffsetDateTime,
    ) -> Result<Result<(), KeyMismatch>, StoreError>;
    /// Every device binding, by device id.
    async fn device_bindings(&self) -> Result<Vec<DeviceBinding>, StoreError>;
    /// Applies `domain::sessions::refresh` to the presented token.
    async fn rotate_refresh(
        &self,
        presented_hash: [u8; 32],
        successor_hash: [u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<RefreshOutcome, StoreError>;
    /// Applies `domain::sessions::close` (logout); `None` when the token is unknown.
    async fn close_session(&self, refresh_hash: [u8; 32], now: OffsetDateTime) -> Result<Option<Session>, StoreError>;
    /// Applies `domain::sessions::revoke_device`; returns the sessions it revoked.
    async fn revoke_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError>;
    /// A session by id, revoked or not: every authenticated request asks
    /// whether its session was revoked (cached briefly, see `auth`).
    async fn session(&self, id: &Uuid) -> Result<Option<Session>, StoreError>;

    async fn create_draft(&self, draft: Draft) -> Result<(), StoreError>;
    async fn draft(&self, id: &OrderId) -> Result<Option<Draft>, StoreError>;
    /// Drafts still open (possibly expired), newest first; of one customer, or all.
    async fn open_drafts(&self, customer: Option<&CustomerId>) -> Result<Vec<Draft>, StoreError>;
    /// Applies `domain::orders::confirm` with the next receipt number. On a
    /// later confirm the same receipt comes back and nothing changes (`false`).
    async fn confirm_draft(
        &self,
        id: &OrderId,
        code: HandoverCode,
        now: OffsetDateTime,
    ) -> Result<DraftStep<(Receipt, bool)>, StoreError>;
    /// Applies `domain::orders::cancel`; cancelling twice is harmless.
    async fn cancel_draft(&self, id: &OrderId, now: OffsetDateTime) -> Result<DraftStep<Draft>, StoreError>;
    /// Forgets the drafts that `Draft::is_stale` at `before`; a draft that
    /// changed since it was read (confirmed meanwhile) is kept.
    async fn purge_drafts(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    async fn receipt(&self, id: &ReceiptId) -> Result<Option<Receipt>, StoreError>;
    /// One page of receipts; asks for `limit` and returns at most that many.
    async fn receipts(&self, query: &ReceiptQuery) -> Result<Vec<Receipt>, StoreError>;
    /// A customer's latest receipts, newest first.
    async fn recent_receipts(&self, customer: &CustomerId, limit: usize) -> Result<Vec<Receipt>, StoreError>;
    async fn customer_account(&self, customer: &CustomerId) -> Result<CustomerAccount, StoreError>;
    /// The catalogue, by item id.
    async fn items(&self) -> Result<Vec<Item>, StoreError>;
    /// Every account, by username.
    async fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// Every stored balance, by node then item.
    async fn all_balances(&self) -> Result<Vec<(NodeId, ItemId, Balance)>, StoreError>;

    /// Applies `domain::shipments::plan_receipt` to every receipt not yet
    /// planned, in receipt order, in transactions of a few hundred receipts:
    /// the stock is read inside the transaction, so that goods receipts and
    /// pushes meanwhile never make a unit reserved twice, and a crash leaves a
    /// chunk wholly planned or not at all. One run at a time per store.
    async fn plan_pending(&self, now: OffsetDateTime) -> Result<Vec<PlanResult>, StoreError>;
    /// Applies `domain::shipments::goods_receipt`.
    async fn goods_receipt(
        &self,
        node: &NodeId,
        item: &ItemId,
        quantity: u32,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError>;
    async fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError>;
    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError>;
    /// Applies `domain::shipments::assign`.
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
    /// Applies `domain::confirmations::push` to each confirmation of the batch
    /// in order (each sees the ones before it), `push_unreadable` to each
    /// element that did not read, `log_rejections` to what the batch
    /// remembered, and records the device's sync with it, at
    /// `sync.last_sync_at`; returns once all of it is durable.
    async fn push_confirmations(&self, sync: DeviceSync, batch: Vec<Pushed>) -> Result<Vec<PushOutcome>, StoreError>;
    /// Records that a device synced (pull or push).
    async fn record_sync(&self, sync: DeviceSync) -> Result<(), StoreError>;
    /// Every device's last sync, by device id.
    async fn device_syncs(&self) -> Result<Vec<DeviceSync>, StoreError>;
    /// Every device's review list of rejected confirmations (bounded per
    /// device, see `domain::confirmations::log_rejections`), by device id.
    async fn rejection_logs(&self) -> Result<Vec<RejectionLog>, StoreError>;
    /// Applies `domain::shipments::issue_leg`.
    async fn issue_leg(&self, leg: &LegId, now: OffsetDateTime) -> Result<Step<Delivery, LegRefusal>, StoreError>;
    /// Applies `domain::corrections::correct`, reading in its transaction what
    /// [`CorrectionInputs`](crate::domain::corrections::CorrectionInputs) lists:
    /// the delivery named, its receipt (or the receipt named, and its latest
    /// delivery), the receipt's latest delivery when another, their stock and
    /// the customer's account.
    async fn correct(
        &self,
        correction: &Correction,
        by: &Principal,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Step<Corrected, CorrectionRefusal>, StoreError>;

    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<(), StoreError>;
}
