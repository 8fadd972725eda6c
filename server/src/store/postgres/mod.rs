//! The PostgreSQL backend of [`Store`], for several server instances on one
//! database. Like the sled backend it reads, writes the change sets the
//! domain returns, keeps its indexes, and decides nothing.
//!
//! Layout: a table per record kind, each record whole as JSON beside the
//! columns its queries use (`server/migrations/`). Concurrency: READ
//! COMMITTED transactions that lock, `FOR UPDATE`, every row a decision may
//! change before reading it (see [`working`]); a transaction that loses a
//! deadlock or a race on a new key is tried again from the start. Planning and
//! imports hold a transaction-scoped advisory lock, so that one runs at a time
//! across instances. Every commit is synchronous: durable when answered.

mod corrections;
mod devices;
mod migrations;
mod planning;
mod push;
mod reads;
mod restore;
mod scratch;
mod sql;
mod working;
mod write;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Client, Pool, Runtime, Transaction};
use handover_shared::{
    api::ImportSummary, CustomerId, DeliveryId, DeviceId, ItemId, LegId, NodeId, OrderId, ReceiptId, Username,
};
use time::OffsetDateTime;
use tokio_postgres::{IsolationLevel, NoTls};
use uuid::Uuid;

pub use self::{
    migrations::{MigrationReport, MIGRATIONS},
    restore::{RestoreError, JWT_SECRET_NAME, RECORD_TABLES},
    scratch::{ScratchDatabase, TEST_SERVER_VARIABLE},
};
use self::{
    reads::{record, records},
    sql::{big, count, db_error, query, Failed},
    working::Working,
};
use super::{
    Account, DeliveryQuery, DraftStep, FeedEntry, ImportError, ImportPlan, PlanResult, ReceiptQuery, RefreshOutcome,
    Step, Store, StoreError,
};
use crate::domain::{
    access::Principal,
    chain::{DeviceChain, KeyMismatch},
    changes::ChangeSet,
    confirmations::{DeviceSync, PushOutcome, Pushed, RejectionLog},
    corrections::{self as domain_corrections, Corrected, Correction, CorrectionRefusal},
    network::{self, Customer, Item, KnownNetwork, Node},
    orders::{self, Confirmed, CustomerAccount, Draft, HandoverCode, Receipt},
    sessions::{self, DeviceBinding, DeviceInUse, RefreshToken, Session},
    shipments::{self, AssignRefusal, CourierAccount, Delivery, LegRefusal},
    stock::{Balance, LedgerEntry},
};

/// The advisory lock that planning chunks and imports hold (an arbitrary
/// constant of ours, in the database's one space of advisory keys).
const PLANNING_LOCK: i64 = 0x4841_4e44_0002;

/// How many times a transaction that lost a deadlock or a race on a new key
/// is tried again before the error is returned.
const ATTEMPTS: u32 = 20;

/// How the pool reaches the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub url: String,
    /// Connections kept open at most, per instance.
    pub pool_size: usize,
    /// How long a request waits for a connection, or for a new one to open,
    /// before it is answered 503.
    pub connect_timeout: Duration,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions { url: url.into(), pool_size: 16, connect_timeout: Duration::from_secs(5) }
    }
}

/// A pool of connections to the database. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("status", &self.pool.status()).finish()
    }
}

/// Runs `$body` (an expression that uses the transaction `$tx` and returns a
/// future of `Result<T, Failed>`) in a transaction, committed when it
/// succeeds; tried again from the start while it fails transiently.
macro_rules! in_transaction {
    ($store:expr, $tx:ident => $body:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome: Result<_, Failed> = async {
                let mut client = $store.client().await?;
                let $tx = client.transaction().await.map_err(Failed::at_start)?;
                let value = $body.await?;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Err(failed) if failed.is_transient() && attempt < ATTEMPTS => {
                    tracing::debug!(attempt, error = ?failed, "a transaction lost a race: trying again");
                    continue;
                }
                other => break other,
            }
        }
    }};
}

/// Runs `$body` (a future of `Result<T, Failed>` that reads through `$client`)
/// on a pooled connection; again on another one when the first turns out
/// closed (a read changes nothing, so trying again is safe).
macro_rules! reading {
    ($store:expr, $client:ident => $body:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome: Result<_, Failed> = async {
                let connection = $store.client().await?;
                let $client = &connection;
                $body.await
            }
            .await;
            match outcome {
                Err(Failed::Db(err)) if err.is_closed() && attempt < ATTEMPTS => continue,
                other => break other.map_err(Failed::into_store),
            }
        }
    }};
}

// After the macros, which it uses.
mod images;

impl PgStore {
    /// Connects, and applies the migrations the database lacks.
    pub async fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let store = Self::connect(options)?;
        let mut client = store.client().await.map_err(Failed::into_store)?;
        migrations::migrate(&mut client).await?;
        Ok(store)
    }

    /// A pool over the database, without touching it (see [`PgStore::migrate`]).
    pub fn connect(options: &PgOptions) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config =
            options.url.parse().map_err(|err| StoreError::Backend(format!("invalid store.postgres_url: {err}")))?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            NoTls,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|err| StoreError::Backend(format!("cannot build the connection pool: {err}")))?;
        Ok(PgStore { pool })
    }

    /// Applies the migrations the database lacks (`handover-server migrate`).
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut client = self.client().await.map_err(Failed::into_store)?;
        migrations::migrate(&mut client).await
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.client().await.map_err(Failed::into_store)?;
        migrations::version(&client).await
    }

    /// The JWT signing key every instance shares: the one stored, or else
    /// `candidate`, stored now. The first instance to start makes it.
    pub async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await.map_err(Failed::into_store)?;
        client
            .execute(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &candidate],
            )
            .await
            .map_err(db_error)?;
        let row = client.query_one("SELECT value FROM secrets WHERE name = $1", &[&name]).await.map_err(db_error)?;
        Ok(row.get(0))
    }

    /// Whether nothing at all is stored (`migrate-store` refuses a target that
    /// is not): no record in any table, no secret, every counter at 0.
    pub async fn holds_nothing(&self) -> Result<bool, StoreError> {
        Ok(self.holding().await?.is_empty())
    }

    /// A pooled connection; a database out of reach is `Unavailable`.
    async fn client(&self) -> Result<Client, Failed> {
        // Whatever keeps a connection from opening (refused, timed out, the
        // database not accepting connections) is an outage to the caller.
        self.pool.get().await.map_err(|err| {
            let why = match err {
                deadpool_postgres::PoolError::Backend(err) => {
                    err.as_db_error().map_or_else(|| err.to_string(), ToString::to_string)
                }
                other => other.to_string(),
            };
            Failed::Store(StoreError::Unavailable(format!("no database connection: {why}")))
        })
    }
}

/// Writes a change set decided outside any read (a new session, a new draft).
/// A device's sessions, locked to the commit.
async fn device_sessions(tx: &Transaction<'_>, device: &DeviceId) -> Result<Vec<Session>, Failed> {
    records(
        tx,
        "session",
        "SELECT body::text FROM sessions WHERE device_id = $1 ORDER BY id FOR UPDATE",
        &[&device.as_str()],
    )
    .await
}

/// A device's binding, locked to the commit (a first login inserts it).
async fn device_binding(tx: &Transaction<'_>, device: &DeviceId) -> Result<Option<DeviceBinding>, Failed> {
    record(
        tx,
        "device binding",
        "SELECT body::text FROM device_bindings WHERE device_id = $1 FOR UPDATE",
        &[&device.as_str()],
    )
    .await
}

async fn write_alone(tx: &Transaction<'_>, changes: ChangeSet) -> Result<(), Failed> {
    let mut working = Working::new(tx);
    working.apply(changes)?;
    working.write().await?;
    Ok(())
}

async fn token_and_session(
    working: &Working<'_, '_>,
    hash: &[u8; 32],
) -> Result<(Option<RefreshToken>, Option<Session>), Failed> {
    let token: Option<RefreshToken> = record(
        working.tx,
        "refresh token",
        "SELECT body::text FROM refresh_tokens WHERE hash = $1 FOR UPDATE",
        &[&hash.as_slice()],
    )
    .await?;
    let session = match &token {
        Some(token) => {
            record(
                working.tx,
                "session",
                "SELECT body::text FROM sessions WHERE id = $1 FOR UPDATE",
                &[&token.session_id],
            )
            .await?
        }
        None => None,
    };
    Ok((token, session))
}

async fn locked_draft(tx: &Transaction<'_>, id: &OrderId) -> Result<Option<Draft>, Failed> {
    record(tx, "draft", "SELECT body::text FROM drafts WHERE order_id = $1 FOR UPDATE", &[&id.as_str()]).await
}

#[async_trait]
impl Store for PgStore {
    async fn is_empty(&self) -> Result<bool, StoreError> {
        reading!(self, client => async {
            let rows = query(
                client,
                "SELECT NOT EXISTS (SELECT 1 FROM nodes) AND NOT EXISTS (SELECT 1 FROM items)
                    AND NOT EXISTS (SELECT 1 FROM accounts) AND NOT EXISTS (SELECT 1 FROM customers)",
                &[],
            )
            .await?;
            Ok(rows.first().is_some_and(|row| row.get::<_, bool>(0)))
        })
    }

    async fn known_network(&self) -> Result<KnownNetwork, StoreError> {
        reading!(self, client => async { reads::known_network(client).await })
    }

    async fn import_network(&self, plan: ImportPlan, now: OffsetDateTime) -> Result<ImportSummary, ImportError> {
        let outcome = in_transaction!(self, tx => async {
            // One import at a time, and none during a planning chunk; the network
            // read after the lock is the one the import is judged against.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLANNING_LOCK]).await?;
            let stored = reads::known_network(&tx).await?;
            let mut working = Working::new(&tx);
            let counted = plan.stock.iter().map(|count| (count.node_id.clone(), count.item_id.clone()));
            let stock = working.stock(counted).await?;
            let (summary, changes) = network::import(plan.clone(), &stored, stock, now).map_err(Failed::Conflicts)?;
            working.apply(changes)?;
            working.write().await?;
            Ok::<_, Failed>(summary)
        });
        outcome.map_err(|failed| match failed {
            Failed::Conflicts(problems) => ImportError::Conflicts(problems),
            other => ImportError::Store(other.into_store()),
        })
    }

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        reading!(self, client => async {
            record(client, "account", "SELECT body::text FROM accounts WHERE username = $1", &[&username.as_str()]).await
        })
    }

    async fn node(&self, id: &NodeId) -> Result<Option<Node>, StoreError> {
        reading!(self, client => async { record(client, "node", "SELECT body::text FROM nodes WHERE id = $1", &[&id.as_str()]).await })
    }

    async fn item(&self, id: &ItemId) -> Result<Option<Item>, StoreError> {
        reading!(self, client => async { record(client, "item", "SELECT body::text FROM items WHERE id = $1", &[&id.as_str()]).await })
    }

    async fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, StoreError> {
        reading!(self, client => async {
            record(client, "customer", "SELECT body::text FROM customers WHERE id = $1", &[&id.as_str()]).await
        })
    }

    async fn node_stock(&self, id: &NodeId) -> Result<Vec<(ItemId, Balance)>, StoreError> {
        reading!(self, client => async { reads::node_stock(client, id).await })
    }

    async fn stock_snapshot(&self) -> Result<(Vec<LedgerEntry>, Vec<(NodeId, ItemId, Balance)>), StoreError> {
        let mut client = self.client().await.map_err(Failed::into_store)?;
        let outcome: Result<_, Failed> = async {
            // Both read in one snapshot: the ledger and the balances agree.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let ledger = reads::ledger(&tx).await?;
            let balances = reads::balances(&tx).await?;
            tx.commit().await?;
            Ok((ledger, balances))
        }
        .await;
        outcome.map_err(Failed::into_store)
    }

    async fn open_session(
        &self,
        session: Session,
        refresh_hash: [u8; 32],
        refresh: RefreshToken,
        handheld: bool,
        now: OffsetDateTime,
    ) -> Result<Result<(), DeviceInUse>, StoreError> {
        in_transaction!(self, tx => async {
            let binding = device_binding(&tx, &session.device_id).await?;
            match sessions::open(session.clone(), (refresh_hash, refresh.clone()), handheld, binding, now) {
                Ok(changes) => {
                    write_alone(&tx, changes).await?;
                    Ok::<_, Failed>(Ok(()))
                }
                Err(in_use) => Ok(Err(in_use)),
            }
        })
        .map_err(Failed::into_store)
    }

    async fn rotate_refresh(
        &self,
        presented_hash: [u8; 32],
        successor_hash: [u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<RefreshOutcome, StoreError> {
        in_transaction!(self, tx => async {
            let mut working = Working::new(&tx);
            let (token, session) = token_and_session(&working, &presented_hash).await?;
            let (outcome, changes) =
                sessions::refresh(presented_hash, token, session, (successor_hash, successor_expires_at), now);
            working.apply(changes)?;
            working.write().await?;
            Ok::<_, Failed>(outcome)
        })
        .map_err(Failed::into_store)
    }

    async fn close_session(&self, refresh_hash: [u8; 32], now: OffsetDateTime) -> Result<Option<Session>, StoreError> {
        in_transaction!(self, tx => async {
            let mut working = Working::new(&tx);
            let (token, session) = token_and_session(&working, &refresh_hash).await?;
            let Some((session, changes)) = sessions::close(refresh_hash, token, session, now) else {
                return Ok(None);
            };
            working.apply(changes)?;
            working.write().await?;
            Ok::<_, Failed>(Some(session))
        })
        .map_err(Failed::into_store)
    }

    async fn revoke_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError> {
        in_transaction!(self, tx => async {
            let (revoked, changes) = sessions::revoke_device(device_sessions(&tx, device).await?, now);
            write_alone(&tx, changes).await?;
            Ok::<_, Failed>(revoked)
        })
        .map_err(Failed::into_store)
    }

    async fn release_device(&self, device: &DeviceId, now: OffsetDateTime) -> Result<Vec<Uuid>, StoreError> {
        in_transaction!(self, tx => async {
            let held = device_sessions(&tx, device).await?;
            let binding = device_binding(&tx, device).await?;
            let (revoked, changes) = sessions::release_device(binding, held, now);
            write_alone(&tx, changes).await?;
            Ok::<_, Failed>(revoked)
        })
        .map_err(Failed::into_store)
    }

    async fn device_bindings(&self) -> Result<Vec<DeviceBinding>, StoreError> {
        reading!(self, client => async {
            records(client, "device binding", "SELECT body::text FROM device_bindings ORDER BY device_id", &[]).await
        })
    }

    fn images(&self) -> &dyn super::images::ImageStore {
        self
    }

    async fn device_chain(&self, device: &DeviceId) -> Result<Option<DeviceChain>, StoreError> {
        reading!(self, client => async {
            record(client, "device chain", "SELECT body::text FROM device_chains WHERE device_id = $1", &[&device.as_str()])
                .await
        })
    }

    async fn device_chains(&self) -> Result<Vec<DeviceChain>, StoreError> {
        reading!(self, client => async {
            records(client, "device chain", "SELECT body::text FROM device_chains ORDER BY device_id", &[]).await
        })
    }

    async fn register_device_key(
        &self,
        device: &DeviceId,
        key: &str,
        by: &Username,
        now: OffsetDateTime,
    ) -> Result<Result<(), KeyMismatch>, StoreError> {
        in_transaction!(self, tx => devices::register_key(&tx, device, key, by, now)).map_err(Failed::into_store)
    }

    async fn session(&self, id: &Uuid) -> Result<Option<Session>, StoreError> {
        reading!(self, client => async { record(client, "session", "SELECT body::text FROM sessions WHERE id = $1", &[id]).await })
    }

    async fn create_draft(&self, draft: Draft) -> Result<(), StoreError> {
        let changes = ChangeSet { drafts: vec![draft], ..ChangeSet::default() };
        in_transaction!(self, tx => write_alone(&tx, changes.clone())).map_err(Failed::into_store)
    }

    async fn draft(&self, id: &OrderId) -> Result<Option<Draft>, StoreError> {
        reading!(self, client => async {
            record(client, "draft", "SELECT body::text FROM drafts WHERE order_id = $1", &[&id.as_str()]).await
        })
    }

    async fn open_drafts(&self, customer: Option<&CustomerId>) -> Result<Vec<Draft>, StoreError> {
        reading!(self, client => async { reads::open_drafts(client, customer).await })
    }

    async fn confirm_draft(
        &self,
        id: &OrderId,
        code: HandoverCode,
        now: OffsetDateTime,
    ) -> Result<DraftStep<(Receipt, bool)>, StoreError> {
        in_transaction!(self, tx => async {
            let Some(draft) = locked_draft(&tx, id).await? else {
                return Ok(DraftStep::NotFound);
            };
            // The counter's row stays locked to the commit: receipt numbers are
            // given one at a time across instances, with no gap.
            let rows = query(&tx, "SELECT value FROM counters WHERE name = 'receipt' FOR UPDATE", &[]).await?;
            let last = rows.first().map(|row| count(row, 0)).transpose()?.unwrap_or(0);
            let mut working = Working::new(&tx);
            let account = working.customer_account(&draft.customer_id).await?.unwrap_or_default();
            match orders::confirm(&draft, last + 1, account, code.clone(), now) {
                Err(refusal) => Ok(DraftStep::Refused(refusal)),
                Ok((Confirmed::New(receipt), changes)) => {
                    working.apply(changes)?;
                    working.write().await?;
                    Ok(DraftStep::Done((*receipt, true)))
                }
                Ok((Confirmed::Replay(receipt_id), changes)) => {
                    let receipt = match receipt_id.seq() {
                        Some(seq) => working.receipt(seq).await?,
                        None => None,
                    };
                    let receipt = receipt.ok_or_else(|| {
                        StoreError::Backend(format!("receipt {receipt_id} of confirmed draft {} is missing", draft.order_id))
                    })?;
                    working.apply(changes)?;
                    working.write().await?;
                    Ok::<_, Failed>(DraftStep::Done((receipt, false)))
                }
            }
        })
        .map_err(Failed::into_store)
    }

    async fn cancel_draft(&self, id: &OrderId, now: OffsetDateTime) -> Result<DraftStep<Draft>, StoreError> {
        in_transaction!(self, tx => async {
            let Some(draft) = locked_draft(&tx, id).await? else {
                return Ok(DraftStep::NotFound);
            };
            match orders::cancel(draft, now) {
                Err(refusal) => Ok(DraftStep::Refused(refusal)),
                Ok((draft, changes)) => {
                    write_alone(&tx, changes).await?;
                    Ok::<_, Failed>(DraftStep::Done(draft))
                }
            }
        })
        .map_err(Failed::into_store)
    }

    async fn purge_drafts(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        in_transaction!(self, tx => async {
            // `Draft::is_stale` alone decides which go; drafts being confirmed
            // right now are skipped (locked), as a confirmed draft is kept.
            let drafts: Vec<Draft> = records(
                &tx,
                "draft",
                "SELECT body::text FROM drafts ORDER BY order_id FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await?;
            let stale: Vec<&str> =
                drafts.iter().filter(|draft| draft.is_stale(before)).map(|draft| draft.order_id.as_str()).collect();
            let purged = sql::execute(&tx, "DELETE FROM drafts WHERE order_id = ANY($1)", &[&stale]).await?;
            Ok::<_, Failed>(purged)
        })
        .map_err(Failed::into_store)
    }

    async fn receipt(&self, id: &ReceiptId) -> Result<Option<Receipt>, StoreError> {
        let Some(seq) = id.seq() else {
            return Ok(None);
        };
        reading!(self, client => async {
            record(client, "receipt", "SELECT body::text FROM receipts WHERE seq = $1", &[&big(seq)?]).await
        })
    }

    async fn receipts(&self, query: &ReceiptQuery) -> Result<Vec<Receipt>, StoreError> {
        reading!(self, client => async { reads::receipts(client, query).await })
    }

    async fn recent_receipts(&self, customer: &CustomerId, limit: usize) -> Result<Vec<Receipt>, StoreError> {
        reading!(self, client => async { reads::recent_receipts(client, customer, limit).await })
    }

    async fn customer_account(&self, customer: &CustomerId) -> Result<CustomerAccount, StoreError> {
        reading!(self, client => async {
            let account: Option<CustomerAccount> = record(
                client,
                "customer account",
                "SELECT body::text FROM customer_accounts WHERE customer_id = $1",
                &[&customer.as_str()],
            )
            .await?;
            Ok(account.unwrap_or_default())
        })
    }

    async fn items(&self) -> Result<Vec<Item>, StoreError> {
        reading!(self, client => async { records(client, "item", "SELECT body::text FROM items ORDER BY id", &[]).await })
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        reading!(self, client => async { records(client, "account", "SELECT body::text FROM accounts ORDER BY username", &[]).await })
    }

    async fn all_balances(&self) -> Result<Vec<(NodeId, ItemId, Balance)>, StoreError> {
        reading!(self, client => async { reads::balances(client).await })
    }

    async fn plan_pending(&self, now: OffsetDateTime) -> Result<Vec<PlanResult>, StoreError> {
        let pending = reading!(self, client => async { planning::pending(client).await })?;
        let mut results = Vec::new();
        for chunk in pending.chunks(planning::PLAN_CHUNK) {
            let (planned, _wrote) =
                in_transaction!(self, tx => planning::plan_chunk(&tx, chunk, now)).map_err(Failed::into_store)?;
            results.extend(planned);
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
        in_transaction!(self, tx => async {
            let mut working = Working::new(&tx);
            let stock = working.stock([(node.clone(), item.clone())]).await?;
            let (balance, changes) = shipments::goods_receipt(node, item, quantity, stock, now)?;
            working.apply(changes)?;
            working.write().await?;
            Ok::<_, Failed>(balance)
        })
        .map_err(Failed::into_store)
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError> {
        let Some(seq) = id.number() else {
            return Ok(None);
        };
        reading!(self, client => async {
            record(client, "delivery", "SELECT body::text FROM deliveries WHERE seq = $1", &[&big(seq)?]).await
        })
    }

    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        reading!(self, client => async { reads::deliveries(client, query).await })
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
        in_transaction!(self, tx => async {
            let mut working = Working::new(&tx);
            let Some(delivery) = working.delivery(seq).await? else {
                return Ok(Step::NotFound);
            };
            match shipments::assign(delivery, by, courier, now) {
                Err(refusal) => Ok(Step::Refused(refusal)),
                Ok((delivery, changes)) => {
                    working.apply(changes)?;
                    working.write().await?;
                    Ok::<_, Failed>(Step::Done(delivery))
                }
            }
        })
        .map_err(Failed::into_store)
    }

    async fn issue_leg(&self, leg: &LegId, now: OffsetDateTime) -> Result<Step<Delivery, LegRefusal>, StoreError> {
        let Some((seq, index)) = leg.split().and_then(|(delivery, index)| Some((delivery.number()?, index))) else {
            return Ok(Step::NotFound);
        };
        in_transaction!(self, tx => async {
            let mut working = Working::new(&tx);
            let Some(delivery) = working.delivery(seq).await? else {
                return Ok(Step::NotFound);
            };
            let keys: Vec<_> = delivery.stock_nodes().map(|node| (node.clone(), delivery.item_id.clone())).collect();
            let stock = working.stock(keys).await?;
            match shipments::issue_leg(delivery, index, stock, now)? {
                Step::Done((delivery, changes)) => {
                    working.apply(changes)?;
                    working.write().await?;
                    Ok::<_, Failed>(Step::Done(delivery))
                }
                Step::Refused(refusal) => Ok(Step::Refused(refusal)),
                Step::NotFound => Ok(Step::NotFound),
            }
        })
        .map_err(Failed::into_store)
    }

    async fn correct(
        &self,
        correction: &Correction,
        by: &Principal,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Step<Corrected, CorrectionRefusal>, StoreError> {
        in_transaction!(self, tx => async {
            let mut working = Working::new(&tx);
            let inputs = corrections::correction_inputs(&mut working, correction).await?;
            match domain_corrections::correct(correction, by, reason, inputs, now)? {
                Step::Done((corrected, changes)) => {
                    working.apply(changes)?;
                    working.write().await?;
                    Ok::<_, Failed>(Step::Done(corrected))
                }
                Step::Refused(refusal) => Ok(Step::Refused(refusal)),
                Step::NotFound => Ok(Step::NotFound),
            }
        })
        .map_err(Failed::into_store)
    }

    async fn assignment_changes(
        &self,
        courier: &Username,
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<FeedEntry>, u64, bool), StoreError> {
        reading!(self, client => async { reads::assignment_changes(client, courier, cursor, limit).await })
    }

    async fn push_confirmations(&self, sync: DeviceSync, batch: Vec<Pushed>) -> Result<Vec<PushOutcome>, StoreError> {
        let digests: Vec<String> = batch.iter().map(Pushed::digest).collect();
        let outcomes =
            in_transaction!(self, tx => push::push_batch(&tx, &sync, &batch, &digests)).map_err(Failed::into_store)?;
        handover_shared::failpoint!("push.after_write", StoreError::Backend("failpoint".into()));
        Ok(outcomes)
    }

    async fn record_sync(&self, sync: DeviceSync) -> Result<(), StoreError> {
        in_transaction!(self, tx => async {
            let mut working = Working::new(&tx);
            let synced = working.sync_over(&sync).await?;
            working.apply(ChangeSet { device_syncs: vec![synced], ..ChangeSet::default() })?;
            working.write().await?;
            Ok::<_, Failed>(())
        })
        .map_err(Failed::into_store)
    }

    async fn device_syncs(&self) -> Result<Vec<DeviceSync>, StoreError> {
        reading!(self, client => async {
            records(client, "device sync", "SELECT body::text FROM device_syncs ORDER BY device_id", &[]).await
        })
    }

    async fn rejection_logs(&self) -> Result<Vec<RejectionLog>, StoreError> {
        reading!(self, client => async {
            records(client, "rejection log", "SELECT body::text FROM rejection_logs ORDER BY device_id", &[]).await
        })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every transaction commits synchronously: what was answered is durable.
        Ok(())
    }
}
