//! The sled backend of [`Store`]: reads, writes the change sets the domain
//! returns, and keeps its indexes. It decides nothing.
//!
//! Layout: one sled database under `DATA_DIR/store.v1`, with a tree per record
//! kind, named explicitly (see [`trees`]); encodings in
//! [`codec`]. The `meta` tree records the format version, so that a later
//! layout can detect and migrate this one.
//!
//! Every blocking sled call runs on tokio's blocking pool, and every write waits
//! on the [`commit::GroupCommit`] before it returns. sled is one process per
//! data dir (it locks its files), so the locks that make planning and imports
//! one at a time per store are process mutexes here.

mod codec;
pub mod commit;
mod corrections_reads;
mod export;
mod planning;
mod push;
mod reads;
mod trees;
mod write;

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use handover_shared::{
    api::{ImportSummary, Problem},
    CustomerId, DeliveryId, DeviceId, ItemId, LegId, NodeId, OrderId, ReceiptId, Username,
};
use sled::{
    transaction::{ConflictableTransactionError, TransactionError},
    Transactional,
};
use time::OffsetDateTime;
use uuid::Uuid;

pub use self::export::{Counters, FeedChange, SledExport};
use self::{
    codec::{abort, backend, finish, finish_store, get, scan, tx_get, tx_get_counter, tx_stock, TxResult},
    commit::GroupCommit,
    trees::{Trees, Tx},
    write::{write_changes, Appends, RECEIPT_COUNTER},
};
use super::{
    images::{FileImages, ImageStore},
    Account, DeliveryQuery, DraftStep, FeedEntry, ImportError, ImportPlan, PlanResult, ReceiptQuery, RefreshOutcome,
    Step, Store, StoreError,
};
use crate::domain::{
    access::Principal,
    chain::{self, DeviceChain, KeyMismatch},
    changes::ChangeSet,
    confirmations::{DeviceSync, PushOutcome, Pushed, RejectionLog},
    corrections::{self, Corrected, Correction, CorrectionRefusal},
    network::{self, Customer, Item, KnownNetwork, Node},
    orders::{self, Confirmed, CustomerAccount, Draft, HandoverCode, Receipt},
    sessions::{self, DeviceBinding, DeviceInUse, RefreshToken, Session},
    shipments::{self, AssignRefusal, CourierAccount, Delivery, LegRefusal},
    stock::{Balance, LedgerEntry},
};

/// The layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const STORE_DIR: &str = "store.v1";
/// Photos and signatures, beside the store (see `store::images`).
const IMAGES_DIR: &str = "images";
const FORMAT_KEY: &[u8] = b"format_version";

/// An opened sled store. Cloning is cheap and shares the database.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    trees: Trees,
    commit: GroupCommit,
    /// The store-level lock: one planning run or import at a time, so that
    /// receipts are planned in receipt order and an import is judged against
    /// what the previous one stored.
    planning: std::sync::Mutex<()>,
    pushes: push::PushQueue,
    /// Stock movements hold it shared; an audit holds it alone, to read the ledger
    /// and the balances as of one moment (sled has no multi-tree snapshot read).
    stock_gate: std::sync::RwLock<()>,
    /// Photos and signatures, as files beside the store.
    images: FileImages,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// Why a transaction gave up: the domain refused the change, or the store failed.
enum Abort {
    Conflicts(Vec<Problem>),
    Store(StoreError),
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    /// Runs `body` in one transaction over every tree, then writes the lines
    /// it appended. `body` may run more than once (sled retries on conflict).
    fn transaction<T>(&self, body: impl Fn(&Tx<'_>, &Appends) -> TxResult<T>) -> Result<T, TransactionError<Abort>> {
        self.trees.all.as_slice().transaction(|view| {
            let tx = Tx::new(view)?;
            let appends = Appends::default();
            let value = body(&tx, &appends)?;
            appends.write(&tx)?;
            Ok(value)
        })
    }

    /// A transaction that writes the change set its body returns with its value.
    fn apply<T>(&self, body: impl Fn(&Tx<'_>) -> TxResult<(T, ChangeSet)>) -> Result<T, StoreError> {
        finish_store(self.transaction(|tx, appends| {
            let (value, changes) = body(tx)?;
            write_changes(tx, appends, changes)?;
            Ok(value)
        }))
    }

    fn moving_stock(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.stock_gate.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SledStore {
    /// Opens (or creates) the store under `data_dir`. Blocking.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(STORE_DIR);
        std::fs::create_dir_all(&path)
            .map_err(|err| StoreError::Backend(format!("cannot create {}: {err}", path.display())))?;
        let db = sled::Config::new().path(&path).open().map_err(|err| match err {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked { path: data_dir.display().to_string() }
            }
            other => backend(other),
        })?;
        check_format(&db)?;
        // Password hashes and sessions: the owner's only, whatever made them looser.
        let tightened =
            handover_shared::private::tighten(&[data_dir, &data_dir.join(crate::files::JWT_SECRET_FILE)], &[&path])
                .map_err(|err| StoreError::Backend(format!("cannot make {} private: {err}", data_dir.display())))?;
        for path in tightened {
            tracing::warn!(path = %path.display(), "was readable by other users; now owner-only");
        }
        let trees = Trees::open(&db)?;
        let commit = GroupCommit::start(db.clone())?;
        let images = FileImages::open(&data_dir.join(IMAGES_DIR))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                trees,
                commit,
                planning: std::sync::Mutex::new(()),
                pushes: push::PushQueue::default(),
                stock_gate: std::sync::RwLock::new(()),
                images,
            }),
        })
    }

    /// Opens the store under `data_dir`, which must hold one already (a
    /// command that reads a store must not make an empty one where a path is
    /// mistyped). Blocking.
    pub fn open_existing(data_dir: &Path) -> Result<Self, StoreError> {
        if !data_dir.join(STORE_DIR).is_dir() {
            return Err(StoreError::Backend(format!("{} holds no sled store ({STORE_DIR})", data_dir.display())));
        }
        Self::open(data_dir)
    }

    /// The group commit, for its counters.
    pub fn commit(&self) -> &GroupCommit {
        &self.inner.commit
    }

    /// How many transactions have applied pushed batches, retries of a failed
    /// group's batches included (see `push::apply_until_answered`).
    pub fn push_transactions(&self) -> u64 {
        self.inner.pushes.transactions()
    }

    /// Runs blocking sled work on tokio's blocking pool.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner)).await.map_err(|err| StoreError::Task(err.to_string()))?
    }

    /// Runs blocking work that writes, then waits until it is durable.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let value = self.blocking(work).await?;
        self.inner.commit.durable().await?;
        Ok(value)
    }
}

/// The sessions of these ids, read in the transaction (a device's, found
/// through its index beforehand).
fn tx_sessions(tx: &Tx<'_>, ids: &[Uuid]) -> TxResult<Vec<Session>> {
    let mut held = Vec::with_capacity(ids.len());
    for id in ids {
        held.extend(tx_get::<Session>(tx.sessions, id.as_bytes())?);
    }
    Ok(held)
}

fn check_format(db: &sled::Db) -> Result<(), StoreError> {
    let meta = db.open_tree("meta").map_err(backend)?;
    match meta.get(FORMAT_KEY).map_err(backend)? {
        Some(found) if found.as_ref() == FORMAT_VERSION.to_string().as_bytes() => Ok(()),
        Some(found) => Err(StoreError::UnsupportedFormat {
            found: String::from_utf8_lossy(&found).into_owned(),
            expected: FORMAT_VERSION,
        }),
        None => {
            meta.insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes()).map_err(backend)?;
            db.flush().map_err(backend)?;
            Ok(())
        }
    }
}

#[async_trait]
impl Store for SledStore {
    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.blocking(|inner| {
            let t = &inner.trees;
            Ok(t.nodes.is_empty() && t.items.is_empty() && t.accounts.is_empty() && t.customers.is_empty())
        })
        .await
    }

    async fn known_network(&self) -> Result<KnownNetwork, StoreError> {
        self.blocking(|inner| reads::known_network(&inner.trees)).await
    }

    async fn import_network(&self, plan: ImportPlan, now: OffsetDateTime) -> Result<ImportSummary, ImportError> {
        let inner = Arc::clone(&self.inner);
        let summary = tokio::task::spawn_blocking(move || {
            // Same lock order as planning: `planning`, then `stock_gate`. Only
            // imports write nodes, so the network read here stays current.
            let _one_at_a_time = lock(&inner.planning);
            let _moving_stock = inner.moving_stock();
            let stored = reads::known_network(&inner.trees)?;
            finish(inner.transaction(|tx, appends| {
                let counted = plan.stock.iter().map(|count| (&count.node_id, &count.item_id));
                let stock = tx_stock(tx, counted)?;
                match network::import(plan.clone(), &stored, stock, now) {
                    Err(problems) => Err(ConflictableTransactionError::Abort(Abort::Conflicts(problems))),
                    Ok((summary, changes)) => {
                        write_changes(tx, appends, changes)?;
                        Ok(summary)
                    }
                }
            }))
        })
        .await
        .map_err(|err| StoreError::Task(err.to_string()))??;
        self.inner.commit.durable().await?;
        Ok(summary)
    }

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        let key = username.clone();
        self.blocking(move |inner| get(&inner.trees.accounts, key.as_str().as_bytes())).await
    }

    async fn node(&self, id: &NodeId) -> Result<Option<Node>, StoreError> {
        let key = id.clone();
        self.blocking(move |inner| get(&inner.trees.nodes, key.as_str().as_bytes())).await
    }

    async fn item(&self, id: &ItemId) -> Result<Option<Item>, StoreError> {
        let key = id.clone();
        self.blocking(move |inner| get(&inner.trees.items, key.as_str().as_bytes())).await
    }

    async fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, StoreError> {
        let key = id.clone();
        self.blocking(move |inner| get(&inner.trees.customers, key.as_str().as_bytes())).await
    }

    async fn node_stock(&self, id: &NodeId) -> Result<Vec<(ItemId, Balance)>, StoreError> {
        let id = id.clone();
        self.blocking(move |inner| reads::node_stock(&inner.trees, &id)).await
    }

    async fn stock_snapshot(&self) -> Result<(Vec<LedgerEntry>, Vec<(NodeId, ItemId, Balance)>), StoreError> {
        self.blocking(|inner| {
            // No stock movement runs while the gate is held: both trees are read as of one moment.
            let _all_movements_paused = inner.stock_gate.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok((codec::ledger_entries(&inner.trees.ledger)?, codec::balances(&inner.trees.stock)?))
        })
        .await
    }

    async fn open_session(
        &self,
        session: Session,
        refresh_hash: [u8; 32],
        refresh: RefreshToken,
        handheld: bool,
        now: OffsetDateTime,
    ) -> Result<Result<(), DeviceInUse>, StoreError> {
        self.write(move |inner| {
            inner.apply(|tx| {
                let binding = tx_get(tx.device_bindings, session.device_id.as_str().as_bytes())?;
                Ok(match sessions::open(session.clone(), (refresh_hash, refresh.clone()), handheld, binding, now) {
                    Ok(changes) => (Ok(()), changes),
                    Err(in_use) => (Err(in_use), ChangeSet::default()),
                })
            })
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        presented_hash: [u8; 32],
        successor_hash: [u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<RefreshOutcome, StoreError> {
        self.write(move |inner| {
            inner.apply(|tx| {
                let (token, session) = reads::tx_token_and_session(tx, &presented_hash)?;
                Ok(sessions::refresh(presented_hash, token, session, (successor_hash, successor_expires_at), now))
            })
        })
        .await
    }

    async fn close_session(&self, refresh_hash: [u8; 32], now: OffsetDateTime) -> Result<Option<Session>, StoreError> {
        self.write(move |inner| {
            inner.apply(|tx| {
                let (token, session) = reads::tx_token_and_session(tx, &refresh_hash)?;
                Ok(match sessions::close(refresh_hash, token, session, now) {
                    Some((session, changes)) => (Some(session), changes),
                    None => (None, ChangeSet::default()),
                })
            })
        })
        .await
    }

    async fn revoke_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError> {
        let device = device.clone();
        self.write(move |inner| {
            let ids = reads::device_session_ids(&inner.trees, &device)?;
            inner.apply(|tx| Ok(sessions::revoke_device(tx_sessions(tx, &ids)?, now)))
        })
        .await
    }

    async fn release_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError> {
        let device = device.clone();
        self.write(move |inner| {
            let ids = reads::device_session_ids(&inner.trees, &device)?;
            inner.apply(|tx| {
                let binding = tx_get(tx.device_bindings, device.as_str().as_bytes())?;
                Ok(sessions::release_device(binding, tx_sessions(tx, &ids)?, now))
            })
        })
        .await
    }

    async fn device_bindings(&self) -> Result<Vec<DeviceBinding>, StoreError> {
        self.blocking(|inner| scan(inner.trees.device_bindings.iter())).await
    }

    fn images(&self) -> &dyn ImageStore {
        &self.inner.images
    }

    async fn device_chain(&self, device: &DeviceId) -> Result<Option<DeviceChain>, StoreError> {
        let device = device.clone();
        self.blocking(move |inner| get(&inner.trees.device_chains, device.as_str().as_bytes())).await
    }

    async fn device_chains(&self) -> Result<Vec<DeviceChain>, StoreError> {
        self.blocking(|inner| scan(inner.trees.device_chains.iter())).await
    }

    async fn register_device_key(
        &self,
        device: &DeviceId,
        key: &str,
        by: &Username,
        now: OffsetDateTime,
    ) -> Result<Result<(), KeyMismatch>, StoreError> {
        let (device, key, by) = (device.clone(), key.to_owned(), by.clone());
        self.write(move |inner| {
            inner.apply(|tx| {
                let chain: Option<DeviceChain> = tx_get(tx.device_chains, device.as_str().as_bytes())?;
                Ok(match chain::register_key(chain.as_ref(), &device, &key, &by, now) {
                    Ok(registered) => {
                        (Ok(()), ChangeSet { device_chains: registered.into_iter().collect(), ..ChangeSet::default() })
                    }
                    Err(mismatch) => (Err(mismatch), ChangeSet::default()),
                })
            })
        })
        .await
    }

    async fn session(&self, id: &Uuid) -> Result<Option<Session>, StoreError> {
        let id = *id;
        self.blocking(move |inner| get(&inner.trees.sessions, id.as_bytes())).await
    }

    async fn create_draft(&self, draft: Draft) -> Result<(), StoreError> {
        // One record, so no transaction: a sled transaction costs far more than
        // the insert, and every order makes a draft.
        self.write(move |inner| {
            inner.trees.drafts.insert(draft.order_id.as_str().as_bytes(), codec::encode(&draft)?).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn draft(&self, id: &OrderId) -> Result<Option<Draft>, StoreError> {
        let key = id.clone();
        self.blocking(move |inner| get(&inner.trees.drafts, key.as_str().as_bytes())).await
    }

    async fn open_drafts(&self, customer: Option<&CustomerId>) -> Result<Vec<Draft>, StoreError> {
        let customer = customer.cloned();
        self.blocking(move |inner| reads::open_drafts(&inner.trees, customer.as_ref())).await
    }

    async fn confirm_draft(
        &self,
        id: &OrderId,
        code: HandoverCode,
        now: OffsetDateTime,
    ) -> Result<DraftStep<(Receipt, bool)>, StoreError> {
        let key = id.clone();
        let step = self
            .blocking(move |inner| {
                inner.apply(|tx| {
                    let Some(draft) = tx_get::<Draft>(tx.drafts, key.as_str().as_bytes())? else {
                        return Ok((DraftStep::NotFound, ChangeSet::default()));
                    };
                    let next_seq = tx_get_counter(tx.counters, RECEIPT_COUNTER)? + 1;
                    let account: CustomerAccount =
                        tx_get(tx.customer_accounts, draft.customer_id.as_str().as_bytes())?.unwrap_or_default();
                    match orders::confirm(&draft, next_seq, account, code.clone(), now) {
                        Err(refusal) => Ok((DraftStep::Refused(refusal), ChangeSet::default())),
                        Ok((Confirmed::New(receipt), changes)) => Ok((DraftStep::Done((*receipt, true)), changes)),
                        Ok((Confirmed::Replay(receipt_id), changes)) => {
                            let receipt = receipt_id
                                .seq()
                                .map(|seq| tx_get::<Receipt>(tx.receipts, &seq.to_be_bytes()))
                                .transpose()?
                                .flatten()
                                .ok_or_else(|| {
                                    abort(StoreError::Backend(format!(
                                        "receipt {receipt_id} of confirmed draft {} is missing",
                                        draft.order_id
                                    )))
                                })?;
                            Ok((DraftStep::Done((receipt, false)), changes))
                        }
                    }
                })
            })
            .await?;
        // A replay is answered only once the first confirm is durable too: a
        // double click must not see a receipt that a crash could still lose.
        if matches!(step, DraftStep::Done(_)) {
            self.inner.commit.durable().await?;
        }
        Ok(step)
    }

    async fn cancel_draft(&self, id: &OrderId, now: OffsetDateTime) -> Result<DraftStep<Draft>, StoreError> {
        let key = id.clone();
        self.write(move |inner| {
            inner.apply(|tx| {
                let Some(draft) = tx_get::<Draft>(tx.drafts, key.as_str().as_bytes())? else {
                    return Ok((DraftStep::NotFound, ChangeSet::default()));
                };
                Ok(match orders::cancel(draft, now) {
                    Err(refusal) => (DraftStep::Refused(refusal), ChangeSet::default()),
                    Ok((draft, changes)) => (DraftStep::Done(draft), changes),
                })
            })
        })
        .await
    }

    async fn purge_drafts(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.write(move |inner| reads::purge_drafts(&inner.trees, before)).await
    }

    async fn receipt(&self, id: &ReceiptId) -> Result<Option<Receipt>, StoreError> {
        let Some(seq) = id.seq() else {
            return Ok(None);
        };
        self.blocking(move |inner| get(&inner.trees.receipts, &seq.to_be_bytes())).await
    }

    async fn receipts(&self, query: &ReceiptQuery) -> Result<Vec<Receipt>, StoreError> {
        let query = query.clone();
        self.blocking(move |inner| reads::receipts(&inner.trees, &query)).await
    }

    async fn recent_receipts(&self, customer: &CustomerId, limit: usize) -> Result<Vec<Receipt>, StoreError> {
        let customer = customer.clone();
        self.blocking(move |inner| reads::recent_receipts(&inner.trees, &customer, limit)).await
    }

    async fn customer_account(&self, customer: &CustomerId) -> Result<CustomerAccount, StoreError> {
        let key = customer.clone();
        self.blocking(
            move |inner| Ok(get(&inner.trees.customer_accounts, key.as_str().as_bytes())?.unwrap_or_default()),
        )
        .await
    }

    async fn items(&self) -> Result<Vec<Item>, StoreError> {
        self.blocking(|inner| scan(inner.trees.items.iter())).await
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.blocking(|inner| scan(inner.trees.accounts.iter())).await
    }

    async fn all_balances(&self) -> Result<Vec<(NodeId, ItemId, Balance)>, StoreError> {
        self.blocking(|inner| codec::balances(&inner.trees.stock)).await
    }

    async fn plan_pending(&self, now: OffsetDateTime) -> Result<Vec<PlanResult>, StoreError> {
        let (results, changed) = self.blocking(move |inner| planning::plan_pending(inner, now)).await?;
        if changed {
            self.inner.commit.durable().await?;
        }
        Ok(results)
    }

    async fn goods_receipt(
        &self,
        node: &NodeId,
        item: &ItemId,
        quantity: u32,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError> {
        let (node, item) = (node.clone(), item.clone());
        self.write(move |inner| {
            let _moving_stock = inner.moving_stock();
            inner.apply(|tx| {
                let stock = tx_stock(tx, [(&node, &item)])?;
                shipments::goods_receipt(&node, &item, quantity, stock, now).map_err(|err| abort(err.into()))
            })
        })
        .await
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError> {
        let Some(seq) = id.number() else {
            return Ok(None);
        };
        self.blocking(move |inner| get(&inner.trees.deliveries, &seq.to_be_bytes())).await
    }

    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let query = query.clone();
        self.blocking(move |inner| reads::deliveries(&inner.trees, &query)).await
    }

    async fn assign_delivery(
        &self,
        id: &DeliveryId,
        by: &Principal,
        courier: &CourierAccount,
        now: OffsetDateTime,
    ) -> Result<Step<Delivery, AssignRefusal>, StoreError> {
        let Some(seq) = id.number() else {
            return Ok(Step::NotFound);
        };
        let (by, courier) = (by.clone(), courier.clone());
        self.write(move |inner| {
            inner.apply(|tx| {
                let Some(delivery) = tx_get::<Delivery>(tx.deliveries, &seq.to_be_bytes())? else {
                    return Ok((Step::NotFound, ChangeSet::default()));
                };
                Ok(match shipments::assign(delivery, &by, &courier, now) {
                    Err(refusal) => (Step::Refused(refusal), ChangeSet::default()),
                    Ok((delivery, changes)) => (Step::Done(delivery), changes),
                })
            })
        })
        .await
    }

    async fn issue_leg(&self, leg: &LegId, now: OffsetDateTime) -> Result<Step<Delivery, LegRefusal>, StoreError> {
        let Some((seq, index)) = leg.split().and_then(|(delivery, index)| Some((delivery.number()?, index))) else {
            return Ok(Step::NotFound);
        };
        self.write(move |inner| {
            let _moving_stock = inner.moving_stock();
            inner.apply(|tx| {
                let Some(delivery) = tx_get::<Delivery>(tx.deliveries, &seq.to_be_bytes())? else {
                    return Ok((Step::NotFound, ChangeSet::default()));
                };
                let stock = tx_stock(tx, delivery.stock_nodes().map(|node| (node, &delivery.item_id)))?;
                Ok(match shipments::issue_leg(delivery, index, stock, now).map_err(|err| abort(err.into()))? {
                    Step::Done((delivery, changes)) => (Step::Done(delivery), changes),
                    Step::Refused(refusal) => (Step::Refused(refusal), ChangeSet::default()),
                    Step::NotFound => (Step::NotFound, ChangeSet::default()),
                })
            })
        })
        .await
    }

    async fn correct(
        &self,
        correction: &Correction,
        by: &Principal,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Step<Corrected, CorrectionRefusal>, StoreError> {
        let (correction, by, reason) = (correction.clone(), by.clone(), reason.to_owned());
        self.write(move |inner| {
            let _moving_stock = inner.moving_stock();
            inner.apply(|tx| {
                let inputs = corrections_reads::tx_correction_inputs(tx, &correction)?;
                Ok(
                    match corrections::correct(&correction, &by, &reason, inputs, now)
                        .map_err(|err| abort(err.into()))?
                    {
                        Step::Done((corrected, changes)) => (Step::Done(corrected), changes),
                        Step::Refused(refusal) => (Step::Refused(refusal), ChangeSet::default()),
                        Step::NotFound => (Step::NotFound, ChangeSet::default()),
                    },
                )
            })
        })
        .await
    }

    async fn assignment_changes(
        &self,
        courier: &Username,
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<FeedEntry>, u64, bool), StoreError> {
        let courier = courier.clone();
        self.blocking(move |inner| reads::assignment_changes(&inner.trees, &courier, cursor, limit)).await
    }

    async fn push_confirmations(&self, sync: DeviceSync, batch: Vec<Pushed>) -> Result<Vec<PushOutcome>, StoreError> {
        let outcomes = self.blocking(move |inner| push::push(inner, sync, batch)).await?;
        handover_shared::failpoint!("push.after_write", StoreError::Backend("failpoint".into()));
        // Answered only once durable: what this batch accepted, and what a replay
        // in it refers to (its first acceptance may share this very group).
        self.inner.commit.durable().await?;
        Ok(outcomes)
    }

    async fn record_sync(&self, sync: DeviceSync) -> Result<(), StoreError> {
        // Bookkeeping for the dashboard: not worth a flush of its own.
        self.blocking(move |inner| {
            inner.apply(|tx| {
                let changes = ChangeSet { device_syncs: vec![push::tx_sync_over(tx, &sync)?], ..ChangeSet::default() };
                Ok(((), changes))
            })
        })
        .await
    }

    async fn device_syncs(&self) -> Result<Vec<DeviceSync>, StoreError> {
        self.blocking(|inner| scan(inner.trees.device_syncs.iter())).await
    }

    async fn rejection_logs(&self) -> Result<Vec<RejectionLog>, StoreError> {
        self.blocking(|inner| scan(inner.trees.rejection_logs.iter())).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.commit.durable().await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(err) = self.db.flush() {
            tracing::error!(error = %err, "final flush failed");
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn a_data_dir_left_readable_by_others_is_made_owner_only_when_opened() {
        let root = tempfile::tempdir().expect("a temporary dir");
        let data_dir = root.path().join("data");
        drop(SledStore::open(&data_dir).expect("a fresh store"));
        let key = data_dir.join(crate::files::JWT_SECRET_FILE);
        std::fs::write(&key, b"a key").expect("written");
        let store = data_dir.join(STORE_DIR);
        let db = store.join("db");
        for (path, loose) in [(&data_dir, 0o755), (&store, 0o755), (&db, 0o644), (&key, 0o644)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(loose)).expect("loosened");
        }
        drop(SledStore::open(&data_dir).expect("reopened"));
        assert_eq!((mode(&data_dir), mode(&store), mode(&db), mode(&key)), (0o700, 0o700, 0o600, 0o600));
    }
}
