//! A [`Store`] made of several instances that take the calls in turn: what a
//! load balancer in front of several servers on one database does.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use async_trait::async_trait;
use handover_server::{
    domain::{
        access::Principal,
        chain::{DeviceChain, KeyMismatch},
        confirmations::{DeviceSync, PushOutcome, Pushed, RejectionLog},
        corrections::{Corrected, Correction, CorrectionRefusal},
        network::{Customer, Item, KnownNetwork, Node},
        orders::{CustomerAccount, Draft, HandoverCode, Receipt},
        sessions::{DeviceBinding, DeviceInUse, RefreshToken, Session},
        shipments::{AssignRefusal, CourierAccount, Delivery, LegRefusal},
        stock::{Balance, LedgerEntry},
    },
    store::{
        Account, DeliveryQuery, DraftStep, FeedEntry, ImportError, ImportPlan, PlanResult, ReceiptQuery,
        RefreshOutcome, Step, Store, StoreError,
    },
};
use handover_shared::{
    api::ImportSummary, CustomerId, DeliveryId, DeviceId, ItemId, LegId, NodeId, OrderId, ReceiptId, Username,
};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug)]
pub struct InTurn {
    instances: Vec<Arc<dyn Store>>,
    next: AtomicUsize,
}

impl InTurn {
    pub fn new(instances: Vec<Arc<dyn Store>>) -> Self {
        InTurn { instances, next: AtomicUsize::new(0) }
    }

    fn next(&self) -> &dyn Store {
        &*self.instances[self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len()]
    }
}

/// Implements every method by handing the call to the next instance.
macro_rules! in_turn {
    ($( fn $method:ident(&self $(, $arg:ident: $ty:ty)* ) -> $answer:ty; )+) => {
        #[async_trait]
        impl Store for InTurn {
            fn images(&self) -> &dyn handover_server::store::images::ImageStore {
                self.next().images()
            }
            $(
                async fn $method(&self $(, $arg: $ty)*) -> $answer {
                    self.next().$method($($arg),*).await
                }
            )+
        }
    };
}

in_turn! {
    fn is_empty(&self) -> Result<bool, StoreError>;
    fn known_network(&self) -> Result<KnownNetwork, StoreError>;
    fn import_network(&self, plan: ImportPlan, now: OffsetDateTime) -> Result<ImportSummary, ImportError>;
    fn account(&self, username: &Username) -> Result<Option<Account>, StoreError>;
    fn node(&self, id: &NodeId) -> Result<Option<Node>, StoreError>;
    fn item(&self, id: &ItemId) -> Result<Option<Item>, StoreError>;
    fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, StoreError>;
    fn node_stock(&self, id: &NodeId) -> Result<Vec<(ItemId, Balance)>, StoreError>;
    fn stock_snapshot(&self) -> Result<(Vec<LedgerEntry>, Vec<(NodeId, ItemId, Balance)>), StoreError>;
    fn open_session(&self, session: Session, refresh_hash: [u8; 32], refresh: RefreshToken, handheld: bool, now: OffsetDateTime) -> Result<Result<(), DeviceInUse>, StoreError>;
    fn release_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError>;
    fn device_bindings(&self) -> Result<Vec<DeviceBinding>, StoreError>;
    fn device_chain(&self, device: &DeviceId) -> Result<Option<DeviceChain>, StoreError>;
    fn device_chains(&self) -> Result<Vec<DeviceChain>, StoreError>;
    fn register_device_key(
        &self,
        device: &DeviceId,
        key: &str,
        by: &Username,
        now: OffsetDateTime
    ) -> Result<Result<(), KeyMismatch>, StoreError>;
    fn rotate_refresh(
        &self,
        presented_hash: [u8; 32],
        successor_hash: [u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime
    ) -> Result<RefreshOutcome, StoreError>;
    fn close_session(&self, refresh_hash: [u8; 32], now: OffsetDateTime) -> Result<Option<Session>, StoreError>;
    fn revoke_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError>;
    fn session(&self, id: &Uuid) -> Result<Option<Session>, StoreError>;
    fn create_draft(&self, draft: Draft) -> Result<(), StoreError>;
    fn draft(&self, id: &OrderId) -> Result<Option<Draft>, StoreError>;
    fn open_drafts(&self, customer: Option<&CustomerId>) -> Result<Vec<Draft>, StoreError>;
    fn confirm_draft(&self, id: &OrderId, code: HandoverCode, now: OffsetDateTime) -> Result<DraftStep<(Receipt, bool)>, StoreError>;
    fn cancel_draft(&self, id: &OrderId, now: OffsetDateTime) -> Result<DraftStep<Draft>, StoreError>;
    fn purge_drafts(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
    fn receipt(&self, id: &ReceiptId) -> Result<Option<Receipt>, StoreError>;
    fn receipts(&self, query: &ReceiptQuery) -> Result<Vec<Receipt>, StoreError>;
    fn recent_receipts(&self, customer: &CustomerId, limit: usize) -> Result<Vec<Receipt>, StoreError>;
    fn customer_account(&self, customer: &CustomerId) -> Result<CustomerAccount, StoreError>;
    fn items(&self) -> Result<Vec<Item>, StoreError>;
    fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    fn all_balances(&self) -> Result<Vec<(NodeId, ItemId, Balance)>, StoreError>;
    fn plan_pending(&self, now: OffsetDateTime) -> Result<Vec<PlanResult>, StoreError>;
    fn goods_receipt(&self, node: &NodeId, item: &ItemId, quantity: u32, now: OffsetDateTime) -> Result<Balance, StoreError>;
    fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError>;
    fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError>;
    fn assign_delivery(
        &self,
        id: &DeliveryId,
        by: &Principal,
        courier: &CourierAccount,
        now: OffsetDateTime
    ) -> Result<Step<Delivery, AssignRefusal>, StoreError>;
    fn assignment_changes(&self, courier: &Username, cursor: u64, limit: usize) -> Result<(Vec<FeedEntry>, u64, bool), StoreError>;
    fn push_confirmations(&self, sync: DeviceSync, batch: Vec<Pushed>) -> Result<Vec<PushOutcome>, StoreError>;
    fn record_sync(&self, sync: DeviceSync) -> Result<(), StoreError>;
    fn device_syncs(&self) -> Result<Vec<DeviceSync>, StoreError>;
    fn rejection_logs(&self) -> Result<Vec<RejectionLog>, StoreError>;
    fn issue_leg(&self, leg: &LegId, now: OffsetDateTime) -> Result<Step<Delivery, LegRefusal>, StoreError>;
    fn correct(&self, correction: &Correction, by: &Principal, reason: &str, now: OffsetDateTime) -> Result<Step<Corrected, CorrectionRefusal>, StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
}
