//! A whole sled store written into an empty database in one transaction
//! (`handover-server migrate-store`, see `crate::migrate_store`), and the
//! reads that check the copy.
//!
//! Records go through the writer ([`Pending`]) as a change set of new records
//! would, so that every column beside a body (a delivery's assignee, a
//! receipt's flags, a confirmation's `rejected`...) is filled exactly as the
//! writer fills it. Appended lines are the exception: the writer numbers them
//! anew from the counters, and a copy must keep the numbers that receipts,
//! couriers' cursors and audits already hold. So ledger lines and feed changes
//! are inserted here with their sled numbers, and the counters are set to the
//! last numbers sled gave; the next line written takes the number after it.

use std::collections::BTreeMap;

use deadpool_postgres::{GenericClient, Transaction};

use super::{
    sql::{big, count, encode, execute, query, Failed},
    write::Pending,
    PgStore,
};
use crate::{
    domain::{
        changes::{ChangeSet, Replace},
        sessions::BindingChange,
    },
    store::{
        sled::{Counters, SledExport},
        StoreError,
    },
};

/// The tables that hold records, named like the sled trees they come from,
/// in the order counts are reported.
pub const RECORD_TABLES: &[&str] = &[
    "nodes",
    "items",
    "customers",
    "accounts",
    "stock",
    "ledger",
    "sessions",
    "refresh_tokens",
    "drafts",
    "receipts",
    "customer_accounts",
    "deliveries",
    "courier_load",
    "courier_feed",
    "confirmations",
    "audit",
    "device_syncs",
    "device_bindings",
    "rejection_logs",
    "device_chains",
];

/// The name under which the JWT signing key is kept (`main.rs::open_store`
/// reads it through [`PgStore::shared_secret`]).
pub const JWT_SECRET_NAME: &str = "jwt";

/// Records per statement: large enough that a big store takes few round
/// trips, small enough that no statement carries megabytes of parameters.
const CHUNK: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target holds something (these tables, `secrets` or `counters`
    /// among them); nothing was written.
    #[error("the target database is not empty (it holds: {}); migrate-store copies into an empty database only, and changed nothing", .0.join(", "))]
    NotEmpty(Vec<&'static str>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Failed> for RestoreError {
    fn from(failed: Failed) -> Self {
        RestoreError::Store(failed.into_store())
    }
}

impl PgStore {
    /// Which tables hold anything: a record, a secret, or a counter past 0.
    pub async fn holding(&self) -> Result<Vec<&'static str>, StoreError> {
        let client = self.client().await.map_err(Failed::into_store)?;
        holding(&client).await.map_err(Failed::into_store)
    }

    /// Writes everything `export` holds, and the JWT signing key when one is
    /// given (its raw bytes), in one transaction: all of it or, on any
    /// failure, nothing. Refused when the database holds anything; the tables
    /// are locked against writers (readers go on) from that check to the
    /// commit, so nothing written meanwhile slips between them.
    pub async fn restore(&self, export: &SledExport, signing_key: Option<&[u8]>) -> Result<(), RestoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Failed::at_start)?;
        let locked = RECORD_TABLES.iter().chain(&["secrets", "counters"]).copied().collect::<Vec<_>>().join(", ");
        tx.batch_execute(&format!("LOCK TABLE {locked} IN EXCLUSIVE MODE")).await.map_err(Failed::Db)?;
        let held = holding(&tx).await?;
        if !held.is_empty() {
            return Err(RestoreError::NotEmpty(held));
        }
        write_records(&tx, export).await?;
        write_ledger(&tx, export).await?;
        write_feed(&tx, export).await?;
        write_loads(&tx, export).await?;
        set_counters(&tx, export.counters).await?;
        if let Some(key) = signing_key {
            execute(&tx, "INSERT INTO secrets (name, value) VALUES ($1, $2)", &[&JWT_SECRET_NAME, &key]).await?;
        }
        tx.commit().await.map_err(Failed::Db)?;
        Ok(())
    }

    /// How many rows each of [`RECORD_TABLES`] holds, in that order.
    pub async fn record_counts(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let client = self.client().await.map_err(Failed::into_store)?;
        let counted: Vec<String> =
            RECORD_TABLES.iter().map(|table| format!("(SELECT count(*) FROM {table})")).collect();
        let rows = query(&client, &format!("SELECT {}", counted.join(", ")), &[]).await.map_err(Failed::into_store)?;
        let row = rows.first().ok_or_else(|| StoreError::Backend("the counts came back empty".into()))?;
        RECORD_TABLES.iter().enumerate().map(|(column, table)| Ok((*table, count(row, column)?))).collect()
    }

    /// The last number given of each numbered kind.
    pub async fn counters(&self) -> Result<Counters, StoreError> {
        let client = self.client().await.map_err(Failed::into_store)?;
        let rows = query(&client, "SELECT name, value FROM counters", &[]).await.map_err(Failed::into_store)?;
        let mut counters = Counters::default();
        for row in &rows {
            let value = count(row, 1)?;
            match row.get::<_, &str>(0) {
                "receipt" => counters.receipt = value,
                "feed" => counters.feed = value,
                "ledger" => counters.ledger = value,
                _ => {}
            }
        }
        Ok(counters)
    }

    /// A stored secret's bytes, without making one (unlike [`PgStore::shared_secret`]).
    pub async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await.map_err(Failed::into_store)?;
        let rows =
            query(&client, "SELECT value FROM secrets WHERE name = $1", &[&name]).await.map_err(Failed::into_store)?;
        Ok(rows.first().map(|row| row.get(0)))
    }
}

/// Which tables hold anything, as seen by `client` (inside a transaction:
/// as of its snapshot and locks).
async fn holding(client: &impl GenericClient) -> Result<Vec<&'static str>, Failed> {
    let mut checks: Vec<(&'static str, String)> =
        RECORD_TABLES.iter().map(|table| (*table, format!("EXISTS (SELECT 1 FROM {table})"))).collect();
    checks.push(("secrets", "EXISTS (SELECT 1 FROM secrets)".into()));
    checks.push(("counters", "EXISTS (SELECT 1 FROM counters WHERE value <> 0)".into()));
    let sql = format!("SELECT {}", checks.iter().map(|(_, check)| check.as_str()).collect::<Vec<_>>().join(", "));
    let rows = query(client, &sql, &[]).await?;
    let row = rows.first().ok_or_else(|| StoreError::Backend("the emptiness check came back empty".into()))?;
    Ok(checks
        .iter()
        .enumerate()
        .filter(|(column, _)| row.get::<_, bool>(*column))
        .map(|(_, (table, _))| *table)
        .collect())
}

/// The `part`-th chunk of `records` (empty past their end).
fn chunk<T: Clone>(records: &[T], part: usize) -> Vec<T> {
    records.chunks(CHUNK).nth(part).map(<[T]>::to_vec).unwrap_or_default()
}

/// Records as new ones: nothing before them.
fn created<T>(records: Vec<T>) -> Vec<Replace<T>> {
    records.into_iter().map(|after| Replace { before: None, after }).collect()
}

/// Every keyed record, through the writer: chunk by chunk, each chunk of
/// every kind as one change set of new records. The audit log goes this way
/// too: the writer appends it in the order given, which is sled's.
async fn write_records(tx: &Transaction<'_>, export: &SledExport) -> Result<(), Failed> {
    let longest = export.counts().iter().map(|(_, n)| *n as usize).max().unwrap_or(0);
    for part in 0..longest.div_ceil(CHUNK) {
        // Every field named: a kind added to change sets must be decided on here.
        let changes = ChangeSet {
            nodes: chunk(&export.nodes, part),
            items: chunk(&export.items, part),
            customers: chunk(&export.customers, part),
            accounts: chunk(&export.accounts, part),
            drafts: chunk(&export.drafts, part),
            receipts: created(chunk(&export.receipts, part)),
            customer_accounts: chunk(&export.customer_accounts, part),
            deliveries: created(chunk(&export.deliveries, part)),
            balances: chunk(&export.balances, part),
            audit: chunk(&export.audit, part),
            confirmations: chunk(&export.confirmations, part),
            device_syncs: chunk(&export.device_syncs, part),
            sessions: chunk(&export.sessions, part),
            refresh_tokens: chunk(&export.refresh_tokens, part),
            device_bindings: chunk(&export.device_bindings, part)
                .into_iter()
                .map(|binding| BindingChange {
                    device_id: binding.device_id.clone(),
                    before: None,
                    after: Some(binding),
                })
                .collect(),
            rejection_logs: chunk(&export.rejection_logs, part),
            device_chains: chunk(&export.device_chains, part),
            // Written below with their sled numbers and values, not as the
            // writer would number or add them.
            ledger: Vec::new(),
            feed: Vec::new(),
            courier_loads: BTreeMap::new(),
        };
        let mut pending = Pending::default();
        // New rows: inserted (the writer only updates the rows it read).
        for (node, item, _) in &changes.balances {
            pending.balance_was_absent(node.clone(), item.clone());
        }
        for (customer, _) in &changes.customer_accounts {
            pending.customer_account_was_absent(customer.clone());
        }
        pending.add(changes)?;
        pending.write(tx).await?;
    }
    Ok(())
}

async fn write_ledger(tx: &Transaction<'_>, export: &SledExport) -> Result<(), Failed> {
    for lines in export.ledger.chunks(CHUNK) {
        let seqs = lines.iter().map(|line| big(line.seq)).collect::<Result<Vec<_>, _>>()?;
        let bodies = lines.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        execute(
            tx,
            "INSERT INTO ledger (seq, body) SELECT s, b::jsonb FROM unnest($1::bigint[], $2::text[]) AS v(s, b)",
            &[&seqs, &bodies],
        )
        .await?;
    }
    Ok(())
}

async fn write_feed(tx: &Transaction<'_>, export: &SledExport) -> Result<(), Failed> {
    for changes in export.feed.chunks(CHUNK) {
        let numbers = changes.iter().map(|change| big(change.change)).collect::<Result<Vec<_>, _>>()?;
        let couriers: Vec<&str> = changes.iter().map(|change| change.courier.as_str()).collect();
        let deliveries = changes.iter().map(|change| big(change.delivery_seq)).collect::<Result<Vec<_>, _>>()?;
        execute(
            tx,
            "INSERT INTO courier_feed (change, courier, delivery_seq)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])",
            &[&numbers, &couriers, &deliveries],
        )
        .await?;
    }
    Ok(())
}

/// Each courier's load as sled counted it, zeros included (the writer adds
/// changes to loads, and skips a change of zero).
async fn write_loads(tx: &Transaction<'_>, export: &SledExport) -> Result<(), Failed> {
    for loads in export.courier_loads.chunks(CHUNK) {
        let couriers: Vec<&str> = loads.iter().map(|(courier, _)| courier.as_str()).collect();
        let open = loads.iter().map(|(_, open)| big(*open)).collect::<Result<Vec<_>, _>>()?;
        execute(
            tx,
            "INSERT INTO courier_load (username, open) SELECT * FROM unnest($1::text[], $2::bigint[])",
            &[&couriers, &open],
        )
        .await?;
    }
    Ok(())
}

async fn set_counters(tx: &Transaction<'_>, counters: Counters) -> Result<(), Failed> {
    let names = ["receipt", "feed", "ledger"];
    let values = [big(counters.receipt)?, big(counters.feed)?, big(counters.ledger)?];
    let set = execute(
        tx,
        "UPDATE counters SET value = v.value FROM unnest($1::text[], $2::bigint[]) AS v(name, value)
         WHERE counters.name = v.name",
        &[&names.as_slice(), &values.as_slice()],
    )
    .await?;
    if set != names.len() as u64 {
        return Err(Failed::Store(StoreError::Backend(format!("{set} of the {} counters exist", names.len()))));
    }
    Ok(())
}
