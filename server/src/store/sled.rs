//! The sled backend of [`Store`].
//!
//! Layout: one sled database under `DATA_DIR/store.v1`, with a tree per record
//! kind, named explicitly. Values are JSON (readable with any sled tool, and
//! tolerant of added fields); keys are ids, or ids joined with a 0 byte (ids can
//! never contain one). The `meta` tree records the format version, so that a
//! later layout can detect and migrate this one.
//!
//! Every blocking sled call runs on tokio's blocking pool, and every write waits
//! on the group commit before it returns.

use std::{collections::HashMap, path::Path, sync::Arc};

use async_trait::async_trait;
use handover_shared::{
    api::{ImportSummary, Problem},
    sync::{Confirmation, Outcome},
    CustomerId, DeliveryId, DeviceId, ItemId, LegId, NodeId, NodeKind, OrderId, ReceiptId, Username,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::{
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
    Transactional,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    commit::GroupCommit, Account, DeliveryQuery, DraftStep, FeedEntry, ImportError, ImportPlan, PlanResult,
    ReceiptQuery, RefreshOutcome, Step, Store, StoreError,
};
use crate::domain::{
    access::Principal,
    confirmations::{self as confirming, AuditEntry, DeviceSync, FirstOutcome, PushOutcome, SeenConfirmation, Verdict},
    network::{Customer, Item, KnownNetwork, Membership, Node},
    orders::{decide_cancel, decide_confirm, ConfirmDecision, CustomerAccount, Draft, DraftState, Receipt},
    sessions::{decide_refresh, RefreshDecision, RefreshToken, RevokeReason, Session},
    shipments::{
        cascade, check_assignment, check_issue, choose_courier, hand_over, plan_legs, reserve, transfer, AssignRefusal,
        Assignment, Carrier, CascadeNodes, CourierAccount, Delivery, DeliveryCard, DeliveryState, Destination,
        LegRefusal, LegStatus, Source, StockEffect,
    },
    stock::{Balance, LedgerEntry, Movement},
};

/// The layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const STORE_DIR: &str = "store.v1";
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
    /// One planning run at a time, so that receipts are planned in receipt order.
    planning: std::sync::Mutex<()>,
    /// Pushed batches waiting to be applied, and the turn to apply them
    /// (see `apply_pushes_until_answered`).
    push_queue: std::sync::Mutex<std::collections::VecDeque<PushJob>>,
    push_turn: std::sync::Mutex<()>,
    /// Transactions that applied pushed batches, for benchmarks: batches per
    /// transaction is how much they share.
    push_transactions: std::sync::atomic::AtomicU64,
    /// Stock movements hold it shared; an audit holds it alone, to read the ledger
    /// and the balances as of one moment (sled has no multi-tree snapshot read).
    stock_gate: std::sync::RwLock<()>,
}

struct Trees {
    nodes: sled::Tree,
    items: sled::Tree,
    customers: sled::Tree,
    accounts: sled::Tree,
    /// `node \0 item` to [`Balance`], kept in step with `ledger`.
    stock: sled::Tree,
    /// Big-endian sequence number to [`LedgerEntry`].
    ledger: sled::Tree,
    sessions: sled::Tree,
    /// SHA-256 of a refresh token to [`RefreshToken`].
    refresh_tokens: sled::Tree,
    /// `device \0 session uuid` to nothing: which sessions a device holds.
    device_sessions: sled::Tree,
    /// Order id to [`Draft`].
    drafts: sled::Tree,
    /// Big-endian receipt number to [`Receipt`]: receipt order is key order.
    receipts: sled::Tree,
    /// `customer \0 receipt number` to nothing: a customer's order history.
    customer_receipts: sled::Tree,
    /// Customer id to [`CustomerAccount`] (collection flag, order count).
    customer_accounts: sled::Tree,
    /// Named counters, big-endian u64: `receipt` is the last receipt number.
    counters: sled::Tree,
    /// Receipt numbers not yet planned (new, or backordered), in receipt order.
    unplanned: sled::Tree,
    /// Big-endian receipt number to [`Delivery`] (a delivery is numbered like its receipt).
    deliveries: sled::Tree,
    /// Username to big-endian count of open deliveries assigned to the courier.
    courier_load: sled::Tree,
    /// `username \0 delivery number` to nothing: a courier's deliveries.
    courier_deliveries: sled::Tree,
    /// `username \0 change number` to a big-endian delivery number: every change
    /// to a delivery that a courier holds or held, in order; pulls read it.
    courier_feed: sled::Tree,
    /// Confirmation id to [`SeenConfirmation`]: the first outcome of every id.
    confirmations: sled::Tree,
    /// Sequence number to [`AuditEntry`].
    audit: sled::Tree,
    /// Device id to [`DeviceSync`].
    device_syncs: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// Why a transaction gave up: a domain conflict or a store failure.
enum Abort {
    Conflicts(Vec<Problem>),
    Store(StoreError),
}

impl From<StoreError> for Abort {
    fn from(err: StoreError) -> Self {
        Abort::Store(err)
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<Abort>>;

fn abort(err: StoreError) -> ConflictableTransactionError<Abort> {
    ConflictableTransactionError::Abort(Abort::Store(err))
}

/// The name of a stored customer or item, read without the rest of the record.
#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

/// The empties a stored receipt expects, read without the rest of the record.
#[derive(Deserialize)]
struct EmptiesOnly {
    empties_expected: u32,
}

fn backend(err: sled::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|err| StoreError::Backend(format!("cannot encode a record: {err}")))
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), source })
}

fn pair_key(first: &str, second: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(first.len() + 1 + second.len());
    key.extend_from_slice(first.as_bytes());
    key.push(0);
    key.extend_from_slice(second);
    key
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key).map_err(backend)?.map(|bytes| decode(key, &bytes)).transpose()
}

fn tx_get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    let value = tree.get(key)?;
    value.map(|bytes| decode(key, &bytes).map_err(abort)).transpose()
}

fn tx_put<T: Serialize>(tree: &TransactionalTree, key: &[u8], value: &T) -> TxResult<()> {
    tree.insert(key, encode(value).map_err(abort)?)?;
    Ok(())
}

/// Turns a finished transaction into the caller's error types.
fn finish<T>(result: Result<T, TransactionError<Abort>>) -> Result<T, ImportError> {
    match result {
        Ok(value) => Ok(value),
        Err(TransactionError::Abort(Abort::Conflicts(problems))) => Err(ImportError::Conflicts(problems)),
        Err(TransactionError::Abort(Abort::Store(err))) => Err(ImportError::Store(err)),
        Err(TransactionError::Storage(err)) => Err(ImportError::Store(backend(err))),
    }
}

/// For transactions that never abort with conflicts.
fn finish_store<T>(result: Result<T, TransactionError<Abort>>) -> Result<T, StoreError> {
    finish(result).map_err(|err| match err {
        ImportError::Store(err) => err,
        ImportError::Conflicts(problems) => StoreError::Backend(format!("unexpected conflicts: {problems:?}")),
    })
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
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let trees = Trees {
            nodes: tree("nodes")?,
            items: tree("items")?,
            customers: tree("customers")?,
            accounts: tree("accounts")?,
            stock: tree("stock")?,
            ledger: tree("ledger")?,
            sessions: tree("sessions")?,
            refresh_tokens: tree("refresh_tokens")?,
            device_sessions: tree("device_sessions")?,
            drafts: tree("drafts")?,
            receipts: tree("receipts")?,
            customer_receipts: tree("customer_receipts")?,
            customer_accounts: tree("customer_accounts")?,
            counters: tree("counters")?,
            unplanned: tree("unplanned")?,
            deliveries: tree("deliveries")?,
            courier_load: tree("courier_load")?,
            courier_deliveries: tree("courier_deliveries")?,
            courier_feed: tree("courier_feed")?,
            confirmations: tree("confirmations")?,
            audit: tree("audit")?,
            device_syncs: tree("device_syncs")?,
        };
        let commit = GroupCommit::start(db.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                trees,
                commit,
                planning: std::sync::Mutex::new(()),
                push_queue: std::sync::Mutex::default(),
                push_turn: std::sync::Mutex::new(()),
                push_transactions: std::sync::atomic::AtomicU64::new(0),
                stock_gate: std::sync::RwLock::new(()),
            }),
        })
    }

    /// The group commit, for its counters.
    pub fn commit(&self) -> &GroupCommit {
        &self.inner.commit
    }

    /// How many transactions have applied pushed batches, retries of a failed
    /// group's batches included (see `apply_pushes_until_answered`).
    pub fn push_transactions(&self) -> u64 {
        self.inner.push_transactions.load(std::sync::atomic::Ordering::Relaxed)
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

fn scan<T: DeserializeOwned>(
    iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<T>, StoreError> {
    iter.map(|entry| {
        let (key, value) = entry.map_err(backend)?;
        decode(&key, &value)
    })
    .collect()
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
        self.blocking(|inner| {
            let t = &inner.trees;
            let nodes: Vec<Node> = scan(t.nodes.iter())?;
            let items: Vec<Item> = scan(t.items.iter())?;
            let customers: Vec<Customer> = scan(t.customers.iter())?;
            Ok(KnownNetwork {
                nodes: nodes.into_iter().map(|node| (node.id, node.kind)).collect(),
                items: items.into_iter().map(|item| item.id).collect(),
                customers: customers.into_iter().map(|customer| customer.id).collect(),
            })
        })
        .await
    }

    async fn import_network(&self, plan: ImportPlan, now: OffsetDateTime) -> Result<ImportSummary, ImportError> {
        let inner = Arc::clone(&self.inner);
        let summary = tokio::task::spawn_blocking(move || {
            // No planning run may read customers and couriers while they change
            // (same lock order as planning: `planning`, then `stock_gate`).
            let _no_planning = inner.planning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _moving_stock = inner.stock_gate.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let t = &inner.trees;
            let trees = (&t.nodes, &t.items, &t.customers, &t.accounts, &t.stock, &t.ledger);
            finish(trees.transaction(|(nodes, items, customers, accounts, stock, ledger)| {
                let mut conflicts = Vec::new();
                for (i, node) in plan.nodes.iter().enumerate() {
                    // Re-checked here: another import may have landed since validation.
                    if let Some(stored) = tx_get::<Node>(nodes, node.id.as_str().as_bytes())? {
                        if stored.kind != node.kind {
                            conflicts.push(Problem::new(
                                format!("nodes[{i}].kind"),
                                format!("node {} is already a {}; a node's kind cannot change", node.id, stored.kind),
                            ));
                        }
                    }
                    tx_put(nodes, node.id.as_str().as_bytes(), node)?;
                }
                for item in &plan.items {
                    tx_put(items, item.id.as_str().as_bytes(), item)?;
                }
                for customer in &plan.customers {
                    tx_put(customers, customer.id.as_str().as_bytes(), customer)?;
                }
                for account in &plan.accounts {
                    tx_put(accounts, account.username.as_str().as_bytes(), account)?;
                }
                for (i, count) in plan.stock.iter().enumerate() {
                    let key = pair_key(count.node_id.as_str(), count.item_id.as_str().as_bytes());
                    let balance: Balance = tx_get(stock, &key)?.unwrap_or_default();
                    let target = i64::try_from(count.quantity).unwrap_or(i64::MAX);
                    let current = i64::try_from(balance.on_hand).unwrap_or(i64::MAX);
                    let delta = target - current;
                    match balance.apply(delta, 0) {
                        Err(_) => conflicts.push(Problem::new(
                            format!("stock[{i}].quantity"),
                            format!(
                                "{} of {} at {} are reserved for planned deliveries; on hand cannot drop to {}",
                                balance.reserved, count.item_id, count.node_id, count.quantity
                            ),
                        )),
                        Ok(_) if delta == 0 => {}
                        Ok(updated) => {
                            ledger.append(|seq| LedgerEntry {
                                seq,
                                at: now,
                                node_id: count.node_id.clone(),
                                item_id: count.item_id.clone(),
                                on_hand_delta: delta,
                                reserved_delta: 0,
                                movement: Movement::StockCount,
                            })?;
                            tx_put(stock, &key, &updated)?;
                        }
                    }
                }
                if !conflicts.is_empty() {
                    return Err(ConflictableTransactionError::Abort(Abort::Conflicts(conflicts)));
                }
                Ok(ImportSummary {
                    nodes: plan.nodes.len() as u64,
                    items: plan.items.len() as u64,
                    stock: plan.stock.len() as u64,
                    customers: plan.customers.len() as u64,
                    accounts: plan.accounts.len() as u64,
                })
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
        let prefix = pair_key(id.as_str(), b"");
        self.blocking(move |inner| {
            inner
                .trees
                .stock
                .scan_prefix(&prefix)
                .map(|entry| {
                    let (key, value) = entry.map_err(backend)?;
                    let item = std::str::from_utf8(&key[prefix.len()..])
                        .ok()
                        .and_then(|raw| ItemId::parse(raw).ok())
                        .ok_or_else(|| StoreError::Backend(format!("bad stock key {key:?}")))?;
                    Ok((item, decode(&key, &value)?))
                })
                .collect()
        })
        .await
    }

    async fn ledger(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        self.blocking(|inner| ledger_entries(&inner.trees.ledger)).await
    }

    async fn stock_snapshot(&self) -> Result<(Vec<LedgerEntry>, Vec<(NodeId, ItemId, Balance)>), StoreError> {
        self.blocking(|inner| {
            // No stock movement runs while the gate is held: both trees are read as of one moment.
            let _all_movements_paused = inner.stock_gate.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok((ledger_entries(&inner.trees.ledger)?, balances(&inner.trees.stock)?))
        })
        .await
    }

    async fn open_session(
        &self,
        session: Session,
        refresh_hash: [u8; 32],
        refresh: RefreshToken,
    ) -> Result<(), StoreError> {
        self.write(move |inner| {
            let t = &inner.trees;
            let index_key = pair_key(session.device_id.as_str(), session.id.as_bytes());
            finish_store((&t.sessions, &t.refresh_tokens, &t.device_sessions).transaction(
                |(sessions, tokens, devices)| {
                    tx_put(sessions, session.id.as_bytes(), &session)?;
                    tx_put(tokens, &refresh_hash, &refresh)?;
                    devices.insert(index_key.as_slice(), &[])?;
                    Ok(())
                },
            ))
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
            let t = &inner.trees;
            finish_store((&t.sessions, &t.refresh_tokens).transaction(|(sessions, tokens)| {
                let token: Option<RefreshToken> = tx_get(tokens, &presented_hash)?;
                let session: Option<Session> = match &token {
                    Some(token) => tx_get(sessions, token.session_id.as_bytes())?,
                    None => None,
                };
                match (decide_refresh(token.as_ref(), session.as_ref(), now), token, session) {
                    (RefreshDecision::Rotate, Some(mut token), Some(session)) => {
                        token.retired_at = Some(now);
                        tx_put(tokens, &presented_hash, &token)?;
                        let successor =
                            RefreshToken { session_id: session.id, expires_at: successor_expires_at, retired_at: None };
                        tx_put(tokens, &successor_hash, &successor)?;
                        Ok(RefreshOutcome::Rotated(session))
                    }
                    (RefreshDecision::RevokeSession, _, Some(mut session)) => {
                        session.revoked_at = Some(now);
                        session.revoke_reason = Some(RevokeReason::RefreshTokenReused);
                        tx_put(sessions, session.id.as_bytes(), &session)?;
                        Ok(RefreshOutcome::ReuseDetected(session))
                    }
                    (RefreshDecision::Refuse(refusal), _, _) => Ok(RefreshOutcome::Refused(refusal)),
                    // decide_refresh only rotates or revokes with both records present.
                    _ => Ok(RefreshOutcome::Refused(crate::domain::sessions::RefreshRefusal::Unknown)),
                }
            }))
        })
        .await
    }

    async fn close_session(&self, refresh_hash: [u8; 32], now: OffsetDateTime) -> Result<Option<Session>, StoreError> {
        self.write(move |inner| {
            let t = &inner.trees;
            finish_store((&t.sessions, &t.refresh_tokens).transaction(|(sessions, tokens)| {
                let Some(mut token) = tx_get::<RefreshToken>(tokens, &refresh_hash)? else {
                    return Ok(None);
                };
                let Some(mut session) = tx_get::<Session>(sessions, token.session_id.as_bytes())? else {
                    return Ok(None);
                };
                if token.retired_at.is_none() {
                    token.retired_at = Some(now);
                    tx_put(tokens, &refresh_hash, &token)?;
                }
                if session.revoked_at.is_none() {
                    session.revoked_at = Some(now);
                    session.revoke_reason = Some(RevokeReason::Logout);
                    tx_put(sessions, session.id.as_bytes(), &session)?;
                }
                Ok(Some(session))
            }))
        })
        .await
    }

    async fn revoke_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError> {
        let prefix = pair_key(device.as_str(), b"");
        self.write(move |inner| {
            let t = &inner.trees;
            let ids: Vec<Uuid> = t
                .device_sessions
                .scan_prefix(&prefix)
                .keys()
                .map(|key| {
                    let key = key.map_err(backend)?;
                    Uuid::from_slice(&key[prefix.len()..])
                        .map_err(|err| StoreError::Backend(format!("bad device index key: {err}")))
                })
                .collect::<Result<_, _>>()?;
            finish_store(t.sessions.transaction(|sessions| {
                let mut revoked = Vec::new();
                for id in &ids {
                    if let Some(mut session) = tx_get::<Session>(sessions, id.as_bytes())? {
                        if session.revoked_at.is_none() {
                            session.revoked_at = Some(now);
                            session.revoke_reason = Some(RevokeReason::DeviceRevoked);
                            tx_put(sessions, id.as_bytes(), &session)?;
                            revoked.push(*id);
                        }
                    }
                }
                Ok(revoked)
            }))
        })
        .await
    }

    async fn revoked_sessions(&self) -> Result<Vec<Uuid>, StoreError> {
        self.blocking(|inner| {
            let sessions: Vec<Session> = scan(inner.trees.sessions.iter())?;
            Ok(sessions.into_iter().filter(|s| s.revoked_at.is_some()).map(|s| s.id).collect())
        })
        .await
    }

    async fn create_draft(&self, draft: Draft) -> Result<(), StoreError> {
        self.write(move |inner| {
            inner.trees.drafts.insert(draft.order_id.as_str().as_bytes(), encode(&draft)?).map_err(backend)?;
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
        self.blocking(move |inner| {
            let drafts: Vec<Draft> = scan(inner.trees.drafts.iter().rev())?;
            Ok(drafts
                .into_iter()
                .filter(|d| d.state == DraftState::Open && customer.as_ref().is_none_or(|c| *c == d.customer_id))
                .collect())
        })
        .await
    }

    async fn confirm_draft(&self, id: &OrderId, now: OffsetDateTime) -> Result<DraftStep<(Receipt, bool)>, StoreError> {
        let key = id.clone();
        let (step, changed) = self
            .blocking(move |inner| {
                let t = &inner.trees;
                let trees =
                    (&t.drafts, &t.receipts, &t.customer_receipts, &t.customer_accounts, &t.counters, &t.unplanned);
                finish_store(trees.transaction(|(drafts, receipts, history, accounts, counters, unplanned)| {
                    let Some(mut draft) = tx_get::<Draft>(drafts, key.as_str().as_bytes())? else {
                        return Ok((DraftStep::NotFound, false));
                    };
                    match decide_confirm(&draft, now) {
                        ConfirmDecision::Refuse(refusal) => Ok((DraftStep::Refused(refusal), false)),
                        ConfirmDecision::Replay(receipt_id) => {
                            let seq = receipt_id.seq().ok_or_else(|| {
                                abort(StoreError::Backend(format!("draft {} names a bad receipt id", draft.order_id)))
                            })?;
                            let receipt = tx_get::<Receipt>(receipts, &seq.to_be_bytes())?.ok_or_else(|| {
                                abort(StoreError::Backend(format!(
                                    "receipt {receipt_id} of a confirmed draft is missing"
                                )))
                            })?;
                            Ok((DraftStep::Done((receipt, false)), false))
                        }
                        ConfirmDecision::Confirm => {
                            let seq = tx_get_counter(counters, b"receipt")? + 1;
                            let receipt = Receipt::from_draft(&draft, seq, now);
                            draft.state = DraftState::Confirmed { receipt_id: receipt.receipt_id.clone() };
                            let account: CustomerAccount =
                                tx_get(accounts, receipt.customer_id.as_str().as_bytes())?.unwrap_or_default();
                            counters.insert(b"receipt".as_slice(), seq.to_be_bytes().as_slice())?;
                            tx_put(receipts, &seq.to_be_bytes(), &receipt)?;
                            tx_put(drafts, key.as_str().as_bytes(), &draft)?;
                            tx_put(accounts, receipt.customer_id.as_str().as_bytes(), &account.with_order(&receipt))?;
                            history.insert(pair_key(receipt.customer_id.as_str(), &seq.to_be_bytes()), &[])?;
                            unplanned.insert(&seq.to_be_bytes(), &[])?;
                            Ok((DraftStep::Done((receipt, true)), true))
                        }
                    }
                }))
            })
            .await?;
        // A replay is answered only once the first confirm is durable too: a
        // double click must not see a receipt that a crash could still lose.
        if changed || matches!(step, DraftStep::Done(_)) {
            self.inner.commit.durable().await?;
        }
        Ok(step)
    }

    async fn cancel_draft(&self, id: &OrderId, now: OffsetDateTime) -> Result<DraftStep<Draft>, StoreError> {
        let key = id.clone();
        self.write(move |inner| {
            finish_store(inner.trees.drafts.transaction(|drafts| {
                let Some(mut draft) = tx_get::<Draft>(drafts, key.as_str().as_bytes())? else {
                    return Ok(DraftStep::NotFound);
                };
                match decide_cancel(&draft) {
                    Err(refusal) => Ok(DraftStep::Refused(refusal)),
                    Ok(false) => Ok(DraftStep::Done(draft)),
                    Ok(true) => {
                        draft.state = DraftState::Cancelled { at: now };
                        tx_put(drafts, key.as_str().as_bytes(), &draft)?;
                        Ok(DraftStep::Done(draft))
                    }
                }
            }))
        })
        .await
    }

    async fn purge_drafts(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.write(move |inner| {
            let mut purged = 0;
            for entry in inner.trees.drafts.iter() {
                let (key, value) = entry.map_err(backend)?;
                let draft: Draft = decode(&key, &value)?;
                let stale = match draft.state {
                    DraftState::Open => draft.expires_at < before,
                    DraftState::Cancelled { at } => at < before,
                    DraftState::Confirmed { .. } => false,
                };
                // Removed only if unchanged since read: a draft confirmed meanwhile stays.
                if stale
                    && inner.trees.drafts.compare_and_swap(&key, Some(&value), None::<&[u8]>).map_err(backend)?.is_ok()
                {
                    purged += 1;
                }
            }
            Ok(purged)
        })
        .await
    }

    async fn receipt(&self, id: &ReceiptId) -> Result<Option<Receipt>, StoreError> {
        let Some(seq) = id.seq() else {
            return Ok(None);
        };
        self.blocking(move |inner| get(&inner.trees.receipts, &seq.to_be_bytes())).await
    }

    async fn receipts(&self, query: &ReceiptQuery) -> Result<Vec<Receipt>, StoreError> {
        let query = query.clone();
        self.blocking(move |inner| {
            let t = &inner.trees;
            let start = query.after.map_or(0, |after| after.saturating_add(1));
            let keep = |receipt: &Receipt| {
                query.delivered.is_none_or(|delivered| receipt.delivered == delivered)
                    && query.backordered.is_none_or(|backordered| receipt.backordered == backordered)
                    && query.since.is_none_or(|since| receipt.created_at >= since)
            };
            let index = query.customer_id.as_ref().map(|customer| (&t.customer_receipts, customer.as_str()));
            page(&t.receipts, index, start, query.limit, keep)
        })
        .await
    }

    async fn recent_receipts(&self, customer: &CustomerId, limit: usize) -> Result<Vec<Receipt>, StoreError> {
        let prefix = pair_key(customer.as_str(), b"");
        self.blocking(move |inner| {
            let t = &inner.trees;
            let mut recent = Vec::new();
            for key in t.customer_receipts.scan_prefix(&prefix).keys().rev().take(limit) {
                let key = key.map_err(backend)?;
                if let Some(receipt) = get(&t.receipts, &key[prefix.len()..])? {
                    recent.push(receipt);
                }
            }
            Ok(recent)
        })
        .await
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

    async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.blocking(|inner| scan(inner.trees.nodes.iter())).await
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.blocking(|inner| scan(inner.trees.accounts.iter())).await
    }

    async fn all_balances(&self) -> Result<Vec<(NodeId, ItemId, Balance)>, StoreError> {
        self.blocking(|inner| balances(&inner.trees.stock)).await
    }

    async fn plan_pending(&self, now: OffsetDateTime) -> Result<Vec<PlanResult>, StoreError> {
        let (results, changed) = self.blocking(move |inner| plan_pending(inner, now)).await?;
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
            let _moving_stock = inner.stock_gate.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let t = &inner.trees;
            finish_store((&t.stock, &t.ledger).transaction(|(stock, ledger)| {
                let effect = StockEffect { node: &node, on_hand_delta: i64::from(quantity), reserved_delta: 0 };
                tx_apply(stock, ledger, &item, &effect, &Movement::GoodsReceipt, now)
            }))
        })
        .await
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError> {
        let Some(seq) = id.seq() else {
            return Ok(None);
        };
        self.blocking(move |inner| get(&inner.trees.deliveries, &seq.to_be_bytes())).await
    }

    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let query = query.clone();
        self.blocking(move |inner| {
            let t = &inner.trees;
            let start = query.after.map_or(0, |after| after.saturating_add(1));
            let keep = |delivery: &Delivery| {
                (!query.open_only || delivery.is_open())
                    && (!query.unassigned_only || delivery.assignee.is_none())
                    && query.assignee.as_ref().is_none_or(|a| delivery.assignee.as_ref() == Some(a))
                    && query
                        .entrusted_to
                        .as_ref()
                        .is_none_or(|n| matches!(&delivery.carrier, Carrier::Seller { seller } if seller == n))
                    && (!query.entrusted_only || matches!(delivery.carrier, Carrier::Seller { .. }))
            };
            // A courier's deliveries come from its index, not a scan of them all.
            let index = query.assignee.as_ref().map(|courier| (&t.courier_deliveries, courier.as_str()));
            page(&t.deliveries, index, start, query.limit, keep)
        })
        .await
    }

    async fn assign_delivery(
        &self,
        id: &DeliveryId,
        by: &Principal,
        courier: &CourierAccount,
        now: OffsetDateTime,
    ) -> Result<Step<Delivery, AssignRefusal>, StoreError> {
        let Some(seq) = id.seq() else {
            return Ok(Step::NotFound);
        };
        let (by, courier) = (by.clone(), courier.clone());
        self.write(move |inner| {
            let t = &inner.trees;
            let trees = (&t.deliveries, &t.courier_load, &t.courier_deliveries, &t.counters, &t.courier_feed);
            finish_store(trees.transaction(|(deliveries, loads, index, counters, feed)| {
                let Some(mut delivery) = tx_get::<Delivery>(deliveries, &seq.to_be_bytes())? else {
                    return Ok(Step::NotFound);
                };
                if let Err(refusal) = check_assignment(&delivery, &by, &courier) {
                    return Ok(Step::Refused(refusal));
                }
                if delivery.assignee.as_ref() == Some(&courier.username) {
                    return Ok(Step::Done(delivery));
                }
                if let Some(previous) = &delivery.assignee {
                    tx_add_load(loads, previous, -1)?;
                    index.remove(pair_key(previous.as_str(), &seq.to_be_bytes()))?;
                    // The previous courier learns on its next pull that it was reassigned away.
                    tx_feed(counters, feed, previous, seq)?;
                }
                tx_add_load(loads, &courier.username, 1)?;
                index.insert(pair_key(courier.username.as_str(), &seq.to_be_bytes()), &[])?;
                tx_feed(counters, feed, &courier.username, seq)?;
                delivery.version += 1;
                delivery.assignee = Some(courier.username.clone());
                delivery.assignments.push(Assignment {
                    version: delivery.version,
                    assignee: delivery.assignee.clone(),
                    at: now,
                    by: by.username.to_string(),
                });
                tx_put(deliveries, &seq.to_be_bytes(), &delivery)?;
                Ok(Step::Done(delivery))
            }))
        })
        .await
    }

    async fn issue_leg(&self, leg: &LegId, now: OffsetDateTime) -> Result<Step<Delivery, LegRefusal>, StoreError> {
        let Some((delivery_id, index)) = leg.split() else {
            return Ok(Step::NotFound);
        };
        let Some(seq) = delivery_id.seq() else {
            return Ok(Step::NotFound);
        };
        self.write(move |inner| {
            let _moving_stock = inner.stock_gate.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let t = &inner.trees;
            let trees = (&t.deliveries, &t.stock, &t.ledger, &t.counters, &t.courier_feed);
            finish_store(trees.transaction(|(deliveries, stock, ledger, counters, feed)| {
                let Some(mut delivery) = tx_get::<Delivery>(deliveries, &seq.to_be_bytes())? else {
                    return Ok(Step::NotFound);
                };
                if index >= delivery.legs.len() {
                    return Ok(Step::NotFound);
                }
                match check_issue(&delivery, index) {
                    Err(refusal) => return Ok(Step::Refused(refusal)),
                    Ok(false) => return Ok(Step::Done(delivery)),
                    Ok(true) => {}
                }
                let leg = &delivery.legs[index];
                let Destination::Node(to) = &leg.to else {
                    return Err(abort(StoreError::Backend(format!("transfer leg {} ends at a customer", leg.leg_id))));
                };
                let [leaving, arriving] = transfer(&leg.from, to, delivery.quantity);
                let leg_id = leg.leg_id.clone();
                tx_apply(stock, ledger, &delivery.item_id, &leaving, &Movement::Issue { leg_id: leg_id.clone() }, now)?;
                tx_apply(stock, ledger, &delivery.item_id, &arriving, &Movement::Arrive { leg_id }, now)?;
                delivery.legs[index].status = LegStatus::Issued;
                delivery.legs[index].issued_at = Some(now);
                if let Some(courier) = &delivery.assignee {
                    // Its courier sees it move from upcoming towards ready.
                    tx_feed(counters, feed, courier, seq)?;
                }
                tx_put(deliveries, &seq.to_be_bytes(), &delivery)?;
                Ok(Step::Done(delivery))
            }))
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
        self.blocking(move |inner| {
            let t = &inner.trees;
            let prefix = pair_key(courier.as_str(), b"");
            let from = pair_key(courier.as_str(), &cursor.saturating_add(1).to_be_bytes());
            let mut changed: Vec<u64> = Vec::new();
            let mut last_change = cursor;
            let mut more = false;
            'records: for entry in t.courier_feed.range(from..) {
                let (key, value) = entry.map_err(backend)?;
                if !key.starts_with(&prefix) {
                    break;
                }
                // A grouped record may start at or before the cursor: its earlier changes were sent.
                for (change, delivery) in feed_changes(&key[prefix.len()..], &value)? {
                    if change <= cursor {
                        continue;
                    }
                    if changed.len() >= limit {
                        more = true;
                        break 'records;
                    }
                    last_change = change;
                    changed.push(delivery);
                }
            }
            // Each changed delivery once, at the place of its latest change.
            let mut seen = std::collections::HashSet::new();
            let mut latest: Vec<u64> = changed.into_iter().rev().filter(|seq| seen.insert(*seq)).collect();
            latest.reverse();
            // A courier's deliveries share a few customers and items: read each
            // once. Each record is decoded only as far as a pull needs it.
            let mut customers: HashMap<CustomerId, String> = HashMap::new();
            let mut items: HashMap<ItemId, String> = HashMap::new();
            let mut entries = Vec::with_capacity(latest.len());
            for seq in latest {
                let Some(delivery) = get::<DeliveryCard>(&t.deliveries, &seq.to_be_bytes())? else { continue };
                if !customers.contains_key(&delivery.customer_id) {
                    let customer: Option<NameOnly> = get(&t.customers, delivery.customer_id.as_str().as_bytes())?;
                    customers.insert(delivery.customer_id.clone(), customer.map(|c| c.name).unwrap_or_default());
                }
                if !items.contains_key(&delivery.item_id) {
                    let item: Option<NameOnly> = get(&t.items, delivery.item_id.as_str().as_bytes())?;
                    items.insert(delivery.item_id.clone(), item.map(|i| i.name).unwrap_or_default());
                }
                let receipt: Option<EmptiesOnly> = match delivery.receipt_id.seq() {
                    Some(receipt) => get(&t.receipts, &receipt.to_be_bytes())?,
                    None => None,
                };
                entries.push(FeedEntry {
                    customer_name: customers.get(&delivery.customer_id).cloned().unwrap_or_default(),
                    item_name: items.get(&delivery.item_id).cloned().unwrap_or_default(),
                    empties_expected: receipt.map_or(0, |r| r.empties_expected),
                    delivery,
                });
            }
            Ok((entries, last_change, more))
        })
        .await
    }

    async fn push_confirmations(
        &self,
        sync: DeviceSync,
        batch: Vec<Confirmation>,
    ) -> Result<Vec<PushOutcome>, StoreError> {
        let outcomes = self
            .blocking(move |inner| {
                let digests = batch.iter().map(confirming::digest).collect();
                let (answer, answered) = std::sync::mpsc::sync_channel(1);
                let job = PushJob { sync, batch, digests, answer };
                inner.push_queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(job);
                apply_pushes_until_answered(inner, &answered)
            })
            .await?;
        handover_shared::failpoint!("push.after_write", StoreError::Backend("failpoint".into()));
        // Answered only once durable: what this batch accepted, and what a replay
        // in it refers to (its first acceptance may share this very group).
        self.inner.commit.durable().await?;
        Ok(outcomes)
    }

    async fn record_sync(&self, sync: DeviceSync) -> Result<(), StoreError> {
        // Bookkeeping for the dashboard: not worth a flush of its own.
        self.blocking(move |inner| {
            finish_store(inner.trees.device_syncs.transaction(|tree| tx_record_sync(tree, &sync)))
        })
        .await
    }

    async fn device_syncs(&self) -> Result<Vec<DeviceSync>, StoreError> {
        self.blocking(|inner| scan(inner.trees.device_syncs.iter())).await
    }

    async fn rejected_confirmations(&self, limit: usize) -> Result<Vec<SeenConfirmation>, StoreError> {
        self.blocking(move |inner| {
            let mut rejected = Vec::new();
            for entry in inner.trees.confirmations.iter() {
                let (key, value) = entry.map_err(backend)?;
                let seen: SeenConfirmation = decode(&key, &value)?;
                if matches!(seen.outcome, FirstOutcome::Rejected { .. }) {
                    rejected.push(seen);
                }
            }
            // Newest first.
            rejected.sort_by_key(|seen| std::cmp::Reverse(seen.received_at));
            rejected.truncate(limit);
            Ok(rejected)
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.commit.durable().await
    }
}

/// The trees a push writes, inside its transaction.
#[derive(Clone, Copy)]
struct PushTrees<'a> {
    confirmations: &'a TransactionalTree,
    deliveries: &'a TransactionalTree,
    receipts: &'a TransactionalTree,
    stock: &'a TransactionalTree,
    accounts: &'a TransactionalTree,
    loads: &'a TransactionalTree,
    courier_deliveries: &'a TransactionalTree,
    /// The group's ledger, feed and audit lines.
    lines: &'a Appends<'a>,
}

/// Confirmations applied in one transaction at most, gathered from as many
/// waiting batches as fit: enough to share the cost of a transaction and of its
/// hot rows, few enough that one group does not hold up the next for long.
const PUSH_GROUP_CONFIRMATIONS: usize = 1_000;

/// A pushed batch waiting for its turn, and where its outcomes go.
struct PushJob {
    /// Who pushed, from which device, when, and what it said it still had queued.
    sync: DeviceSync,
    batch: Vec<Confirmation>,
    /// Computed by the request's own thread, before it queues.
    digests: Vec<String>,
    answer: std::sync::mpsc::SyncSender<Result<Vec<PushOutcome>, StoreError>>,
}

/// Applies queued batches, whoever pushed them, until this request's own batch
/// has been answered (flat combining). The thread holding `push_turn` takes what
/// is queued, applies it as one group, answers every batch in it, and only then
/// lets go: so a thread that gets the turn and finds its batch gone finds its
/// answer waiting. Concurrent groups would gain nothing: sled 0.34 runs every
/// transaction under one process-wide lock (`Transactional::transaction` holds
/// `concurrency_control::write()` through the closure and the commit), and the
/// groups would share rows anyway (the branch's stock, the couriers' loads, the
/// feed counter). Taking turns lets many small batches (handhelds syncing one
/// confirmation each) share one transaction and one flush.
fn apply_pushes_until_answered(
    inner: &Inner,
    answered: &std::sync::mpsc::Receiver<Result<Vec<PushOutcome>, StoreError>>,
) -> Result<Vec<PushOutcome>, StoreError> {
    loop {
        {
            let _turn = inner.push_turn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let group = take_push_group(inner);
            if !group.is_empty() {
                apply_push_group(inner, group);
            }
        }
        match answered.try_recv() {
            Ok(outcome) => return outcome,
            Err(std::sync::mpsc::TryRecvError::Empty) => continue,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                // The thread applying it panicked before answering.
                return Err(StoreError::Task("the batch's group failed before it was answered".into()));
            }
        }
    }
}

/// Queued batches, oldest first, up to [`PUSH_GROUP_CONFIRMATIONS`] (at least one batch).
fn take_push_group(inner: &Inner) -> Vec<PushJob> {
    let mut queue = inner.push_queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut group = Vec::new();
    let mut confirmations = 0;
    while let Some(job) = queue.front() {
        if !group.is_empty() && confirmations + job.batch.len() > PUSH_GROUP_CONFIRMATIONS {
            break;
        }
        confirmations += job.batch.len();
        group.extend(queue.pop_front());
    }
    group
}

/// Applies a group of batches in one transaction and answers each. Should the
/// group fail, each batch is tried again alone, so that one batch's failure
/// (a failpoint, a record that does not read) is its own answer only.
fn apply_push_group(inner: &Inner, group: Vec<PushJob>) {
    let _moving_stock = inner.stock_gate.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    match push_transaction(inner, &group) {
        Ok(outcomes) => {
            for (job, outcomes) in group.into_iter().zip(outcomes) {
                // A request that gave up (its connection closed) needs no answer.
                let _ = job.answer.send(Ok(outcomes));
            }
        }
        Err(err) if group.len() == 1 => {
            let _ = group[0].answer.send(Err(err));
        }
        Err(_) => {
            for job in group {
                let alone = push_transaction(inner, std::slice::from_ref(&job));
                let _ = job.answer.send(alone.map(|mut outcomes| outcomes.remove(0)));
            }
        }
    }
}

/// Judges and applies batches in order, each confirmation in order, in one
/// transaction: a crash leaves all of it applied (and remembered) or none.
/// Rows that many confirmations share are written once per transaction.
fn push_transaction(inner: &Inner, group: &[PushJob]) -> Result<Vec<Vec<PushOutcome>>, StoreError> {
    inner.push_transactions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = &inner.trees;
    let trees = (
        &t.confirmations,
        &t.deliveries,
        &t.receipts,
        &t.stock,
        &t.ledger,
        &t.customer_accounts,
        &t.courier_load,
        &t.courier_deliveries,
        &t.counters,
        &t.courier_feed,
        &t.audit,
        &t.device_syncs,
    );
    finish_store(trees.transaction(|view| {
        let lines = Appends::new(&view.8, &view.4, &view.9, Some(&view.10));
        let trees = PushTrees {
            confirmations: &view.0,
            deliveries: &view.1,
            receipts: &view.2,
            stock: &view.3,
            accounts: &view.5,
            loads: &view.6,
            courier_deliveries: &view.7,
            lines: &lines,
        };
        let device_syncs = &view.11;
        let mut answers = Vec::with_capacity(group.len());
        for job in group {
            tx_record_sync(device_syncs, &job.sync)?;
            let (uploader, device, now) = (&job.sync.username, &job.sync.device_id, job.sync.last_sync_at);
            let mut outcomes = Vec::with_capacity(job.batch.len());
            for (index, (confirmation, digest)) in job.batch.iter().zip(&job.digests).enumerate() {
                if index > 0 {
                    handover_shared::failpoint!("push.between_items", abort(StoreError::Backend("failpoint".into())));
                }
                outcomes.push(tx_push_one(&trees, uploader, device, confirmation, digest, now)?);
            }
            answers.push(outcomes);
        }
        lines.write()?;
        Ok(answers)
    }))
}

/// Records a device's sync. One that reports nothing queued (a pull) keeps
/// what the last push said.
fn tx_record_sync(tree: &TransactionalTree, sync: &DeviceSync) -> TxResult<()> {
    let key = sync.device_id.as_str().as_bytes();
    let mut sync = sync.clone();
    if sync.reported_queued.is_none() {
        sync.reported_queued = tx_get::<DeviceSync>(tree, key)?.and_then(|before| before.reported_queued);
    }
    tx_put(tree, key, &sync)
}

/// Judges one confirmation and, when sound, applies it, inside the batch's transaction.
fn tx_push_one(
    trees: &PushTrees<'_>,
    uploader: &Username,
    device: &DeviceId,
    c: &Confirmation,
    digest: &str,
    now: OffsetDateTime,
) -> TxResult<PushOutcome> {
    let PushTrees { confirmations, deliveries, receipts, stock, accounts, loads, courier_deliveries, lines } = *trees;
    let seq = c.delivery_id.seq();
    let id_key = c.confirmation_id.as_bytes();
    let seen: Option<SeenConfirmation> = tx_get(confirmations, id_key)?;
    let delivery: Option<Delivery> = match seq {
        Some(seq) => tx_get(deliveries, &seq.to_be_bytes())?,
        None => None,
    };
    let remember = |outcome: FirstOutcome| -> TxResult<()> {
        let record = SeenConfirmation {
            confirmation_id: c.confirmation_id.clone(),
            digest: digest.to_owned(),
            delivery_id: c.delivery_id.clone(),
            uploader: uploader.clone(),
            device_id: device.clone(),
            received_at: now,
            outcome,
        };
        tx_put(confirmations, id_key, &record)
    };
    let (Some(mut delivery), Some(seq)) =
        (match confirming::judge(c, digest, uploader, seen.as_ref(), delivery.as_ref()) {
            Verdict::Replay(first) => return Ok(PushOutcome::replay(&first)),
            Verdict::Reject { code, message } => {
                // Only well-formed ids are remembered: a malformed one has no identity to replay.
                if uuid::Uuid::parse_str(&c.confirmation_id).is_ok() {
                    remember(FirstOutcome::Rejected { code, message: message.clone() })?;
                }
                return Ok(PushOutcome::Rejected { code, message });
            }
            Verdict::Apply => (delivery, seq),
        })
    else {
        return Err(abort(StoreError::Backend("an applied confirmation without its delivery".into())));
    };
    let key = seq.to_be_bytes();
    let previous = delivery.assignee.clone();
    if let Some(courier) = &previous {
        tx_add_load(loads, courier, -1)?;
    }
    let action = match c.outcome {
        Outcome::Delivered => {
            let item = delivery.item_id.clone();
            let last = delivery.legs.len().saturating_sub(1);
            // The goods were handed over, so they did travel: transfer legs
            // not recorded yet are issued now, in the flow of the goods.
            for index in 0..last {
                if delivery.legs[index].status == LegStatus::Issued {
                    continue;
                }
                let leg = &delivery.legs[index];
                let Destination::Node(to) = &leg.to else {
                    return Err(abort(StoreError::Backend(format!("transfer leg {} ends at a customer", leg.leg_id))));
                };
                let [leaving, arriving] = transfer(&leg.from, to, delivery.quantity);
                let leg_id = leg.leg_id.clone();
                tx_apply(stock, lines, &item, &leaving, &Movement::Issue { leg_id: leg_id.clone() }, now)?;
                tx_apply(stock, lines, &item, &arriving, &Movement::Arrive { leg_id }, now)?;
                delivery.legs[index].status = LegStatus::Issued;
                delivery.legs[index].issued_at = Some(now);
            }
            let from = delivery.delivering_node().clone();
            let leg_id = delivery.legs[last].leg_id.clone();
            let [handed] = hand_over(&from, c.quantity);
            tx_apply(stock, lines, &item, &handed, &Movement::HandOver { leg_id }, now)?;
            let rest = delivery.quantity - c.quantity;
            if rest > 0 {
                let release = StockEffect { node: &from, on_hand_delta: 0, reserved_delta: -i64::from(rest) };
                tx_apply(
                    stock,
                    lines,
                    &item,
                    &release,
                    &Movement::Release { delivery_id: delivery.delivery_id.clone() },
                    now,
                )?;
            }
            delivery.legs[last].status = LegStatus::Completed;
            delivery.legs[last].issued_at = Some(now);
            delivery.state = DeliveryState::Delivered;
            let mut receipt: Receipt = tx_get(receipts, &key)?
                .ok_or_else(|| abort(StoreError::Backend(format!("receipt of {} is missing", delivery.delivery_id))))?;
            receipt.delivered = true;
            receipt.delivered_at = Some(now);
            receipt.proof = Some(handover_shared::api::DeliveryProof {
                confirmation_id: c.confirmation_id.clone(),
                delivered_by: uploader.clone(),
                device_id: device.clone(),
                captured_at: c.captured_at,
                received_at: now,
                recipient: c.recipient.clone().unwrap_or_default(),
                quantity: c.quantity,
                empties_collected: c.empties_collected,
                position: c.position,
                signed: c.signature.is_some(),
                photo_digest: c.photo_digest.clone(),
            });
            tx_put(receipts, &key, &receipt)?;
            if c.empties_collected > 0 {
                let account: CustomerAccount =
                    tx_get(accounts, receipt.customer_id.as_str().as_bytes())?.unwrap_or_default();
                let account = account.with_empties_collected(c.empties_collected);
                tx_put(accounts, receipt.customer_id.as_str().as_bytes(), &account)?;
            }
            format!("delivered {} of {} to {}", c.quantity, delivery.quantity, c.recipient.as_deref().unwrap_or(""))
        }
        Outcome::Failed => {
            // Back to the dispatcher for another attempt.
            if let Some(courier) = &previous {
                courier_deliveries.remove(pair_key(courier.as_str(), &key))?;
            }
            delivery.version += 1;
            delivery.assignee = None;
            let reason = c.reason.map(|r| format!("{r:?}")).unwrap_or_default();
            delivery.assignments.push(Assignment {
                version: delivery.version,
                assignee: None,
                at: now,
                by: format!("{uploader} (failed: {reason})"),
            });
            format!("failed: {reason}; {}", c.note.as_deref().unwrap_or(""))
        }
    };
    for courier in previous.iter().chain((previous.as_ref() != Some(uploader)).then_some(uploader)) {
        lines.feed(courier, seq)?;
    }
    tx_put(deliveries, &key, &delivery)?;
    let entry = AuditEntry {
        at: now,
        actor: uploader.clone(),
        device_id: device.clone(),
        action: format!("{:?}", c.outcome).to_lowercase(),
        delivery_id: delivery.delivery_id.clone(),
        confirmation_id: c.confirmation_id.clone(),
        detail: action,
    };
    lines.audit(entry)?;
    remember(FirstOutcome::Accepted)?;
    Ok(PushOutcome::Accepted)
}

/// One page of records keyed by a big-endian number, in key order, from `start`
/// on: through a secondary index (`owner \0 number` to nothing) when one is
/// given, else over the main tree. Records that `keep` refuses are skipped.
fn page<T: DeserializeOwned>(
    main: &sled::Tree,
    index: Option<(&sled::Tree, &str)>,
    start: u64,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let mut page = Vec::new();
    match index {
        Some((index, owner)) => {
            let prefix = pair_key(owner, b"");
            for key in index.range(pair_key(owner, &start.to_be_bytes())..).keys() {
                let key = key.map_err(backend)?;
                if !key.starts_with(&prefix) || page.len() >= limit {
                    break;
                }
                if let Some(record) = get::<T>(main, &key[prefix.len()..])?.filter(|record| keep(record)) {
                    page.push(record);
                }
            }
        }
        None => {
            for entry in main.range(start.to_be_bytes()..) {
                if page.len() >= limit {
                    break;
                }
                let (key, value) = entry.map_err(backend)?;
                let record: T = decode(&key, &value)?;
                if keep(&record) {
                    page.push(record);
                }
            }
        }
    }
    Ok(page)
}

/// Every balance of the stock tree, with its node and item.
fn balances(stock: &sled::Tree) -> Result<Vec<(NodeId, ItemId, Balance)>, StoreError> {
    let mut balances = Vec::new();
    for entry in stock.iter() {
        let (key, value) = entry.map_err(backend)?;
        let split = key.iter().position(|b| *b == 0).ok_or_else(|| StoreError::Backend("bad stock key".into()))?;
        let node = std::str::from_utf8(&key[..split]).ok().and_then(|raw| NodeId::parse(raw).ok());
        let item = std::str::from_utf8(&key[split + 1..]).ok().and_then(|raw| ItemId::parse(raw).ok());
        let (Some(node), Some(item)) = (node, item) else {
            return Err(StoreError::Backend(format!("bad stock key {key:?}")));
        };
        balances.push((node, item, decode(&key, &value)?));
    }
    Ok(balances)
}

/// Applies one stock movement and records it in the ledger.
fn tx_apply(
    stock: &TransactionalTree,
    ledger: &impl LedgerLines,
    item: &ItemId,
    effect: &StockEffect<'_>,
    movement: &Movement,
    now: OffsetDateTime,
) -> TxResult<Balance> {
    let key = pair_key(effect.node.as_str(), item.as_str().as_bytes());
    let balance: Balance = tx_get(stock, &key)?.unwrap_or_default();
    let updated = effect.apply(balance).map_err(|_| {
        abort(StoreError::Backend(format!("stock of {item} at {} would go negative ({movement:?})", effect.node)))
    })?;
    tx_put(stock, &key, &updated)?;
    ledger.append(|seq| LedgerEntry {
        seq,
        at: now,
        node_id: effect.node.clone(),
        item_id: item.clone(),
        on_hand_delta: effect.on_hand_delta,
        reserved_delta: effect.reserved_delta,
        movement: movement.clone(),
    })?;
    Ok(updated)
}

/// Where a transaction's ledger lines go: straight into the ledger tree, one
/// record each, or into the [`Appends`] of a grouped transaction.
trait LedgerLines {
    /// Appends the entry that `make` builds with its sequence number.
    fn append(&self, make: impl FnOnce(u64) -> LedgerEntry) -> TxResult<()>;
}

impl LedgerLines for TransactionalTree {
    fn append(&self, make: impl FnOnce(u64) -> LedgerEntry) -> TxResult<()> {
        let seq = self.generate_id()?;
        tx_put(self, &seq.to_be_bytes(), &make(seq))
    }
}

/// The lines that a grouped transaction (a group of pushes, a chunk of
/// planning) appends to the ledger, the couriers' feed and the audit log, kept
/// until its body has run and then written as one record per tree, and one per
/// courier for the feed. sled's cost is per key written (a lookup, a page
/// update, a share of a leaf split): a delivered confirmation used to write
/// three or four single-line records, and a group's lines now share one ledger
/// record, one audit record and one feed record per courier. Readers take both forms ([`ledger_entries`],
/// [`feed_changes`]): single-line records are still written by the
/// transactions that change one thing.
struct Appends<'t> {
    counters: &'t TransactionalTree,
    ledger_tree: &'t TransactionalTree,
    feed_tree: &'t TransactionalTree,
    audit_tree: Option<&'t TransactionalTree>,
    pending: std::cell::RefCell<PendingLines>,
}

#[derive(Default)]
struct PendingLines {
    ledger: Vec<LedgerEntry>,
    audit: Vec<AuditEntry>,
    /// Per courier, its (change number, delivery) pairs, big-endian, in order.
    feed: std::collections::BTreeMap<Username, Vec<u8>>,
    last_change: Option<u64>,
}

impl<'t> Appends<'t> {
    fn new(
        counters: &'t TransactionalTree,
        ledger_tree: &'t TransactionalTree,
        feed_tree: &'t TransactionalTree,
        audit_tree: Option<&'t TransactionalTree>,
    ) -> Self {
        Appends { counters, ledger_tree, feed_tree, audit_tree, pending: Default::default() }
    }

    /// Records that a delivery changed for a courier, under the next change number.
    fn feed(&self, courier: &Username, delivery_seq: u64) -> TxResult<()> {
        let mut pending = self.pending.borrow_mut();
        let change = match pending.last_change {
            Some(last) => last + 1,
            None => tx_get_counter(self.counters, b"feed")? + 1,
        };
        pending.last_change = Some(change);
        let pairs = pending.feed.entry(courier.clone()).or_default();
        pairs.extend_from_slice(&change.to_be_bytes());
        pairs.extend_from_slice(&delivery_seq.to_be_bytes());
        Ok(())
    }

    fn audit(&self, entry: AuditEntry) -> TxResult<()> {
        if self.audit_tree.is_none() {
            return Err(abort(StoreError::Backend("this transaction does not write the audit log".into())));
        }
        self.pending.borrow_mut().audit.push(entry);
        Ok(())
    }

    /// Writes what was appended. A feed record is keyed by its courier and its
    /// last change number, so that a pull from cursor `c` finds every record
    /// holding a change after `c` by a range read from `c + 1`.
    fn write(self) -> TxResult<()> {
        let pending = self.pending.into_inner();
        if let Some(first) = pending.ledger.first() {
            tx_put(self.ledger_tree, &first.seq.to_be_bytes(), &pending.ledger)?;
        }
        if let (Some(tree), false) = (self.audit_tree, pending.audit.is_empty()) {
            tx_put(tree, &tree.generate_id()?.to_be_bytes(), &pending.audit)?;
        }
        if let Some(last) = pending.last_change {
            for (courier, pairs) in &pending.feed {
                let last_of_courier = &pairs[pairs.len() - FEED_PAIR..][..8];
                self.feed_tree.insert(pair_key(courier.as_str(), last_of_courier), pairs.as_slice())?;
            }
            self.counters.insert(b"feed".as_slice(), last.to_be_bytes().as_slice())?;
        }
        Ok(())
    }
}

impl LedgerLines for Appends<'_> {
    fn append(&self, make: impl FnOnce(u64) -> LedgerEntry) -> TxResult<()> {
        let seq = self.ledger_tree.generate_id()?;
        self.pending.borrow_mut().ledger.push(make(seq));
        Ok(())
    }
}

/// Bytes of one (change number, delivery) pair in a grouped feed record.
const FEED_PAIR: usize = 16;

/// The (change number, delivery) pairs of one feed record: a single-line
/// record is keyed by its change and holds the delivery; a grouped one holds
/// its pairs (see [`Appends`]).
fn feed_changes(change_key: &[u8], value: &[u8]) -> Result<Vec<(u64, u64)>, StoreError> {
    let number = |bytes: &[u8]| bytes.try_into().map(u64::from_be_bytes);
    let bad = || StoreError::Backend("bad feed record".into());
    if value.len() == 8 {
        return Ok(vec![(number(change_key).map_err(|_| bad())?, number(value).map_err(|_| bad())?)]);
    }
    if value.is_empty() || value.len() % FEED_PAIR != 0 {
        return Err(bad());
    }
    value
        .chunks_exact(FEED_PAIR)
        .map(|pair| Ok((number(&pair[..8]).map_err(|_| bad())?, number(&pair[8..]).map_err(|_| bad())?)))
        .collect()
}

/// Every ledger entry in order: a record holds one entry, or the array of
/// entries that one grouped transaction appended (see [`Appends`]).
fn ledger_entries(ledger: &sled::Tree) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut entries = Vec::new();
    for record in ledger.iter() {
        let (key, value) = record.map_err(backend)?;
        if value.first() == Some(&b'[') {
            entries.extend(decode::<Vec<LedgerEntry>>(&key, &value)?);
        } else {
            entries.push(decode(&key, &value)?);
        }
    }
    // Transactions take turns, so records never interleave; sorting keeps the
    // order by sequence number should that ever change (already sorted: linear).
    entries.sort_by_key(|entry| entry.seq);
    Ok(entries)
}

/// Records that a delivery changed for a courier, under the next change number.
fn tx_feed(
    counters: &TransactionalTree,
    feed: &TransactionalTree,
    courier: &Username,
    delivery_seq: u64,
) -> TxResult<()> {
    let change = tx_get_counter(counters, b"feed")? + 1;
    counters.insert(b"feed".as_slice(), change.to_be_bytes().as_slice())?;
    feed.insert(pair_key(courier.as_str(), &change.to_be_bytes()), delivery_seq.to_be_bytes().as_slice())?;
    Ok(())
}

/// Adds `delta` to a courier's count of open deliveries.
fn tx_add_load(loads: &TransactionalTree, courier: &Username, delta: i64) -> TxResult<u64> {
    let current = tx_get_counter(loads, courier.as_str().as_bytes())?;
    let updated = current.saturating_add_signed(delta);
    loads.insert(courier.as_str().as_bytes(), updated.to_be_bytes().as_slice())?;
    Ok(updated)
}

/// Receipts planned in one transaction: a run's writes share its cost and its
/// hot rows (the stock, the couriers' loads, the feed counter).
const PLAN_CHUNK: usize = 200;

/// What planning needs of the network, read once per run. Imports, which change
/// customers and couriers, wait for the run to end (they take the planning lock).
struct PlanningNetwork {
    customers: HashMap<CustomerId, Customer>,
    master: Option<NodeId>,
    manufacturer: Option<NodeId>,
    expediters: HashMap<NodeId, Vec<Username>>,
}

impl PlanningNetwork {
    fn load(trees: &Trees) -> Result<Self, StoreError> {
        let nodes: Vec<Node> = scan(trees.nodes.iter())?;
        let first_of = |kind: NodeKind| nodes.iter().find(|node| node.kind == kind).map(|node| node.id.clone());
        let customers: Vec<Customer> = scan(trees.customers.iter())?;
        let accounts: Vec<Account> = scan(trees.accounts.iter())?;
        let mut expediters: HashMap<NodeId, Vec<Username>> = HashMap::new();
        for account in accounts {
            if let Membership::Expediter { node_id } = account.membership {
                expediters.entry(node_id).or_default().push(account.username);
            }
        }
        Ok(PlanningNetwork {
            customers: customers.into_iter().map(|customer| (customer.id.clone(), customer)).collect(),
            master: first_of(NodeKind::MasterWarehouse),
            manufacturer: first_of(NodeKind::Manufacturer),
            expediters,
        })
    }
}

/// One planning run; returns what it did and whether it wrote anything.
fn plan_pending(inner: &Inner, now: OffsetDateTime) -> Result<(Vec<PlanResult>, bool), StoreError> {
    let _one_run_at_a_time = inner.planning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = &inner.trees;
    let pending: Vec<u64> = t
        .unplanned
        .iter()
        .keys()
        .map(|key| {
            let key = key.map_err(backend)?;
            let bytes: [u8; 8] =
                key.as_ref().try_into().map_err(|_| StoreError::Backend("bad unplanned key".into()))?;
            Ok(u64::from_be_bytes(bytes))
        })
        .collect::<Result<_, StoreError>>()?;
    if pending.is_empty() {
        return Ok((Vec::new(), false));
    }
    let network = PlanningNetwork::load(t)?;
    let mut results = Vec::new();
    let mut changed = false;
    let trees = (
        &t.receipts,
        &t.unplanned,
        &t.stock,
        &t.ledger,
        &t.deliveries,
        &t.courier_load,
        &t.courier_deliveries,
        &t.counters,
        &t.courier_feed,
    );
    for chunk in pending.chunks(PLAN_CHUNK) {
        // Held per chunk, not per run, so that an audit waits for one chunk only.
        let _moving_stock = inner.stock_gate.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (planned, wrote) = finish_store(trees.transaction(|view| {
            let lines = Appends::new(&view.7, &view.3, &view.8, None);
            let mut planned = Vec::with_capacity(chunk.len());
            let mut wrote = false;
            for &seq in chunk {
                let (result, changed) = tx_plan_one(view, &lines, &network, seq, now)?;
                planned.extend(result);
                wrote |= changed;
            }
            lines.write()?;
            Ok((planned, wrote))
        }))?;
        results.extend(planned);
        changed |= wrote;
    }
    Ok((results, changed))
}

/// The trees planning writes, inside its transaction.
type PlanTrees = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

/// Plans receipt `seq` inside its chunk's transaction: finds the source, plans
/// the legs, reserves the stock and assigns a courier; or marks it backordered.
fn tx_plan_one(
    view: &PlanTrees,
    lines: &Appends<'_>,
    network: &PlanningNetwork,
    seq: u64,
    now: OffsetDateTime,
) -> TxResult<(Option<PlanResult>, bool)> {
    // The ledger, the counters and the feed are written through `lines`.
    let (receipts, unplanned, stock, _, deliveries, loads, index, _, _) = view;
    let key = seq.to_be_bytes();
    let Some(mut receipt) = tx_get::<Receipt>(receipts, &key)?.filter(|r| !r.planned) else {
        unplanned.remove(&key)?;
        return Ok((None, true));
    };
    let customer = network.customers.get(&receipt.customer_id).ok_or_else(|| {
        abort(StoreError::Backend(format!(
            "receipt {} names unknown customer {}",
            receipt.receipt_id, receipt.customer_id
        )))
    })?;
    let nodes = CascadeNodes::for_customer(customer, network.master.as_ref(), network.manufacturer.as_ref());
    let quantity = u64::from(receipt.quantity);
    let mut read_failure = None;
    let found = cascade(&nodes, quantity, |node| {
        let key = pair_key(node.as_str(), receipt.item_id.as_str().as_bytes());
        match tx_get::<Balance>(stock, &key) {
            Ok(balance) => balance.unwrap_or_default().available(),
            Err(err) => {
                read_failure = Some(err);
                0
            }
        }
    });
    if let Some(err) = read_failure {
        return Err(err);
    }
    let Some((source, node)) = found else {
        if receipt.backordered {
            return Ok((Some(PlanResult::Backordered(receipt.receipt_id)), false));
        }
        receipt.backordered = true;
        tx_put(receipts, &key, &receipt)?;
        return Ok((Some(PlanResult::Backordered(receipt.receipt_id)), true));
    };
    let delivery_id = DeliveryId::from_seq(seq);
    let legs = plan_legs(&delivery_id, source, &nodes, &receipt.customer_id);
    let carrier = match source {
        Source::Seller => Carrier::Seller { seller: node.clone() },
        _ => Carrier::Distributor { branch: legs.last().map_or_else(|| node.clone(), |leg| leg.from.clone()) },
    };
    let [reservation] = reserve(&node, receipt.quantity);
    tx_apply(
        stock,
        lines,
        &receipt.item_id,
        &reservation,
        &Movement::Reserve { delivery_id: delivery_id.clone() },
        now,
    )?;
    let assignee = match &carrier {
        Carrier::Seller { .. } => None,
        Carrier::Distributor { branch } => {
            let mut candidates = Vec::new();
            for name in network.expediters.get(branch).map(Vec::as_slice).unwrap_or_default() {
                candidates.push((name, tx_get_counter(loads, name.as_str().as_bytes())?));
            }
            choose_courier(candidates)
        }
    };
    if let Some(courier) = &assignee {
        tx_add_load(loads, courier, 1)?;
        index.insert(pair_key(courier.as_str(), &key), &[])?;
        lines.feed(courier, seq)?;
    }
    let delivery = Delivery {
        delivery_id: delivery_id.clone(),
        receipt_id: receipt.receipt_id.clone(),
        customer_id: receipt.customer_id.clone(),
        item_id: receipt.item_id.clone(),
        quantity: receipt.quantity,
        source,
        source_node: node,
        legs,
        carrier,
        assignee: assignee.clone(),
        version: 1,
        assignments: vec![Assignment { version: 1, assignee, at: now, by: "planner".into() }],
        state: DeliveryState::Open,
        planned_at: now,
    };
    receipt.planned = true;
    receipt.backordered = false;
    receipt.delivery_id = Some(delivery_id);
    tx_put(receipts, &key, &receipt)?;
    tx_put(deliveries, &key, &delivery)?;
    unplanned.remove(&key)?;
    Ok((Some(PlanResult::Planned(Box::new(delivery))), true))
}

/// Reads a big-endian counter inside a transaction (0 when absent).
fn tx_get_counter(tree: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
    match tree.get(key)? {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                abort(StoreError::Backend(format!("counter {} is not 8 bytes", String::from_utf8_lossy(key))))
            })?;
            Ok(u64::from_be_bytes(array))
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(err) = self.db.flush() {
            tracing::error!(error = %err, "final flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{atomic::Ordering, PoisonError},
        thread,
        time::Duration,
    };

    use super::*;
    use crate::domain::confirmations::RejectCode;

    fn confirmation(delivery: &str) -> Confirmation {
        Confirmation::delivered(DeliveryId::parse(delivery).expect("a delivery id"), 1, 1, "Front desk")
    }

    fn sync(courier: &str) -> DeviceSync {
        DeviceSync {
            device_id: DeviceId::parse(format!("dev-{courier}")).expect("a device id"),
            username: Username::parse(courier).expect("a username"),
            last_sync_at: OffsetDateTime::now_utc(),
            reported_queued: None,
        }
    }

    /// Pushes `batches` from threads of their own while the turn is held, so
    /// that all of them are queued before any is applied; then lets go.
    fn push_while_queued(store: &SledStore, batches: Vec<Vec<Confirmation>>) -> Vec<Result<Vec<PushOutcome>, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let count = batches.len();
        let turn = store.inner.push_turn.lock().unwrap_or_else(PoisonError::into_inner);
        let pushers: Vec<_> = batches
            .into_iter()
            .enumerate()
            .map(|(i, batch)| {
                let (store, handle) = (store.clone(), runtime.handle().clone());
                thread::spawn(move || handle.block_on(store.push_confirmations(sync(&format!("courier-{i}")), batch)))
            })
            .collect();
        while store.inner.push_queue.lock().unwrap_or_else(PoisonError::into_inner).len() < count {
            thread::sleep(Duration::from_millis(2));
        }
        drop(turn);
        pushers
            .into_iter()
            .map(|pusher| pusher.join().expect("a pusher thread").map_err(|err| err.to_string()))
            .collect()
    }

    #[test]
    fn batches_queued_together_share_one_transaction_and_each_gets_its_own_outcomes() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let store = SledStore::open(dir.path()).expect("a fresh store");
        let sent: Vec<Vec<Confirmation>> = vec![
            vec![confirmation("D-000001")],
            vec![confirmation("D-000002"), confirmation("D-000003")],
            vec![confirmation("D-000004")],
        ];
        let answers = push_while_queued(&store, sent.clone());
        assert_eq!(store.push_transactions(), 1, "one transaction for the three queued batches");
        for (batch, answer) in sent.iter().zip(answers) {
            let outcomes = answer.expect("the batch was applied");
            assert_eq!(outcomes.len(), batch.len());
            for (confirmation, outcome) in batch.iter().zip(outcomes) {
                // No such delivery: refused, and the refusal names the batch's own delivery.
                let PushOutcome::Rejected { code: RejectCode::Invalid, message } = outcome else {
                    panic!("{outcome:?}");
                };
                assert!(message.contains(confirmation.delivery_id.as_str()), "{message}");
            }
        }
        assert_eq!(store.inner.trees.confirmations.len(), 4, "every refusal is remembered");
        assert_eq!(store.inner.trees.device_syncs.len(), 3, "every device's sync is recorded with its batch");
    }

    #[test]
    fn a_batch_that_fails_in_a_group_fails_alone() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let store = SledStore::open(dir.path()).expect("a fresh store");
        let damaged = DeliveryId::parse("D-000007").expect("a delivery id").seq().expect("a numbered id");
        store.inner.trees.deliveries.insert(damaged.to_be_bytes(), b"not json".as_slice()).expect("written");
        let answers = push_while_queued(
            &store,
            vec![vec![confirmation("D-000001")], vec![confirmation("D-000007")], vec![confirmation("D-000002")]],
        );
        assert!(answers[0].as_ref().is_ok_and(|outcomes| outcomes.len() == 1), "{:?}", answers[0]);
        assert!(answers[1].as_ref().is_err_and(|err| err.contains("unreadable")), "{:?}", answers[1]);
        assert!(answers[2].as_ref().is_ok_and(|outcomes| outcomes.len() == 1), "{:?}", answers[2]);
        assert_eq!(store.inner.trees.confirmations.len(), 2, "nothing of the failed batch is remembered");
        assert_eq!(store.inner.push_transactions.load(Ordering::Relaxed), 4, "the group, then each batch alone");
    }
}
