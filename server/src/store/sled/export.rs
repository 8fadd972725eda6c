//! A whole sled store read out as records, for `handover-server migrate-store`
//! (see `crate::migrate_store`): every record of every tree, the appended
//! lines (ledger, feed, audit) with their original numbers and in their
//! order, and the counters of the numbers given.
//!
//! The indexes (`customer_receipts`, `courier_deliveries`, `device_sessions`,
//! `unplanned`) are not read: they follow from the records, and a target
//! keeps its own from them.

use handover_shared::{CustomerId, ItemId, NodeId, Username};
use serde::de::DeserializeOwned;

use super::{
    codec::{backend, balances, decode, feed_changes, ledger_entries, number_key, scan},
    trees::Trees,
    write::RECEIPT_COUNTER,
    SledStore,
};
use crate::{
    domain::{
        chain::DeviceChain,
        confirmations::{AuditEntry, DeviceSync, RejectionLog, SeenConfirmation},
        network::{Account, Customer, Item, Node},
        orders::{CustomerAccount, Draft, Receipt},
        sessions::{DeviceBinding, RefreshToken, Session},
        shipments::Delivery,
        stock::{Balance, LedgerEntry},
    },
    store::StoreError,
};

/// The counter of the last feed change given (`FEED_COUNTER` of `write`).
const FEED_COUNTER: &[u8] = b"feed";

/// Everything a sled store holds. Lists keep the store's order: records by
/// key, appended lines by their number (the audit log by when it was written).
#[derive(Debug, Default)]
pub struct SledExport {
    pub nodes: Vec<Node>,
    pub items: Vec<Item>,
    pub customers: Vec<Customer>,
    pub accounts: Vec<Account>,
    pub balances: Vec<(NodeId, ItemId, Balance)>,
    pub ledger: Vec<LedgerEntry>,
    pub sessions: Vec<Session>,
    /// By the SHA-256 of the token.
    pub refresh_tokens: Vec<([u8; 32], RefreshToken)>,
    pub drafts: Vec<Draft>,
    pub receipts: Vec<Receipt>,
    pub customer_accounts: Vec<(CustomerId, CustomerAccount)>,
    pub deliveries: Vec<Delivery>,
    /// Each courier's count of open deliveries, zeros included.
    pub courier_loads: Vec<(Username, u64)>,
    /// Every change of the couriers' feed, by change number.
    pub feed: Vec<FeedChange>,
    pub confirmations: Vec<SeenConfirmation>,
    pub audit: Vec<AuditEntry>,
    pub device_syncs: Vec<DeviceSync>,
    pub device_bindings: Vec<DeviceBinding>,
    pub rejection_logs: Vec<RejectionLog>,
    pub device_chains: Vec<DeviceChain>,
    pub counters: Counters,
}

/// One change of the couriers' feed: a delivery changed for a courier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedChange {
    pub change: u64,
    pub courier: Username,
    pub delivery_seq: u64,
}

/// The last number given of each numbered kind, so that a copy goes on
/// from there: the next receipt, feed change or ledger line takes the number
/// after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub receipt: u64,
    pub feed: u64,
    /// sled numbers ledger lines from its database-wide id generator, which
    /// other trees share, so the ledger's numbers may skip: the last one given
    /// to the ledger is its last line's.
    pub ledger: u64,
}

impl SledExport {
    /// How many records of each kind, named like the trees (which the
    /// PostgreSQL tables are named like); appended lines count one each.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        let count = |n: usize| n as u64;
        vec![
            ("nodes", count(self.nodes.len())),
            ("items", count(self.items.len())),
            ("customers", count(self.customers.len())),
            ("accounts", count(self.accounts.len())),
            ("stock", count(self.balances.len())),
            ("ledger", count(self.ledger.len())),
            ("sessions", count(self.sessions.len())),
            ("refresh_tokens", count(self.refresh_tokens.len())),
            ("drafts", count(self.drafts.len())),
            ("receipts", count(self.receipts.len())),
            ("customer_accounts", count(self.customer_accounts.len())),
            ("deliveries", count(self.deliveries.len())),
            ("courier_load", count(self.courier_loads.len())),
            ("courier_feed", count(self.feed.len())),
            ("confirmations", count(self.confirmations.len())),
            ("audit", count(self.audit.len())),
            ("device_syncs", count(self.device_syncs.len())),
            ("device_bindings", count(self.device_bindings.len())),
            ("rejection_logs", count(self.rejection_logs.len())),
            ("device_chains", count(self.device_chains.len())),
        ]
    }
}

impl SledStore {
    /// Reads every record out (see [`SledExport`]). Meant for a store that
    /// nothing writes meanwhile: the trees are read one after the other.
    pub async fn export(&self) -> Result<SledExport, StoreError> {
        self.blocking(|inner| export(&inner.trees)).await
    }
}

fn export(trees: &Trees) -> Result<SledExport, StoreError> {
    let ledger = ledger_entries(&trees.ledger)?;
    let receipts: Vec<Receipt> = scan(trees.receipts.iter())?;
    let feed = feed(&trees.courier_feed)?;
    let counters = Counters {
        receipt: counter(&trees.counters, RECEIPT_COUNTER)?,
        feed: counter(&trees.counters, FEED_COUNTER)?,
        ledger: ledger.last().map_or(0, |entry| entry.seq),
    };
    // A counter behind its records would give a copy numbers already taken.
    if let Some(receipt) = receipts.iter().map(|receipt| receipt.seq).max().filter(|seq| *seq > counters.receipt) {
        return Err(corrupt(format!("receipt {receipt} is past the receipt counter ({})", counters.receipt)));
    }
    if let Some(change) = feed.last().map(|change| change.change).filter(|change| *change > counters.feed) {
        return Err(corrupt(format!("feed change {change} is past the feed counter ({})", counters.feed)));
    }
    Ok(SledExport {
        nodes: scan(trees.nodes.iter())?,
        items: scan(trees.items.iter())?,
        customers: scan(trees.customers.iter())?,
        accounts: scan(trees.accounts.iter())?,
        balances: balances(&trees.stock)?,
        ledger,
        sessions: scan(trees.sessions.iter())?,
        refresh_tokens: keyed(&trees.refresh_tokens, "refresh token", |key| key.try_into().ok())?,
        drafts: scan(trees.drafts.iter())?,
        receipts,
        customer_accounts: keyed(&trees.customer_accounts, "customer account", |key| {
            std::str::from_utf8(key).ok().and_then(|raw| CustomerId::parse(raw).ok())
        })?,
        deliveries: scan(trees.deliveries.iter())?,
        courier_loads: courier_loads(&trees.courier_load)?,
        feed,
        confirmations: scan(trees.confirmations.iter())?,
        audit: audit(&trees.audit)?,
        device_syncs: scan(trees.device_syncs.iter())?,
        device_bindings: scan(trees.device_bindings.iter())?,
        rejection_logs: scan(trees.rejection_logs.iter())?,
        device_chains: scan(trees.device_chains.iter())?,
        counters,
    })
}

fn corrupt(message: String) -> StoreError {
    StoreError::Backend(format!("the sled store is inconsistent: {message}"))
}

/// Every record of a tree whose key is part of the record's identity, with
/// that key as `parse` reads it.
fn keyed<K, T: DeserializeOwned>(
    tree: &sled::Tree,
    what: &str,
    parse: impl Fn(&[u8]) -> Option<K>,
) -> Result<Vec<(K, T)>, StoreError> {
    tree.iter()
        .map(|entry| {
            let (key, value) = entry.map_err(backend)?;
            let parsed = parse(&key).ok_or_else(|| corrupt(format!("bad {what} key {key:?}")))?;
            Ok((parsed, decode(&key, &value)?))
        })
        .collect()
}

fn courier_loads(tree: &sled::Tree) -> Result<Vec<(Username, u64)>, StoreError> {
    tree.iter()
        .map(|entry| {
            let (key, value) = entry.map_err(backend)?;
            let courier = std::str::from_utf8(&key)
                .ok()
                .and_then(|raw| Username::parse(raw).ok())
                .ok_or_else(|| corrupt(format!("bad courier load key {key:?}")))?;
            Ok((courier, number_key(&value)?))
        })
        .collect()
}

/// The last number a counter gave (0 when it never gave one).
fn counter(tree: &sled::Tree, name: &[u8]) -> Result<u64, StoreError> {
    tree.get(name).map_err(backend)?.map_or(Ok(0), |bytes| number_key(&bytes))
}

/// Every feed change of every courier, by change number: a record is keyed
/// `courier \0 its last change` and holds one or more changes (see
/// `codec::feed_changes`).
fn feed(tree: &sled::Tree) -> Result<Vec<FeedChange>, StoreError> {
    let mut changes = Vec::new();
    for entry in tree.iter() {
        let (key, value) = entry.map_err(backend)?;
        let bad = || corrupt(format!("bad feed key {key:?}"));
        let split = key.iter().position(|byte| *byte == 0).ok_or_else(bad)?;
        let courier =
            std::str::from_utf8(&key[..split]).ok().and_then(|raw| Username::parse(raw).ok()).ok_or_else(bad)?;
        for (change, delivery_seq) in feed_changes(&key[split + 1..], &value)? {
            changes.push(FeedChange { change, courier: courier.clone(), delivery_seq });
        }
    }
    changes.sort_by_key(|change| change.change);
    if let Some(pair) = changes.windows(2).find(|pair| pair[0].change == pair[1].change) {
        return Err(corrupt(format!("feed change {} was given more than once", pair[0].change)));
    }
    Ok(changes)
}

/// Every audit entry, in the order written: a record holds the entries one
/// transaction appended (or a single entry, in stores written before grouped
/// appends), keyed by a number that grows with time.
fn audit(tree: &sled::Tree) -> Result<Vec<AuditEntry>, StoreError> {
    let mut entries = Vec::new();
    for record in tree.iter() {
        let (key, value) = record.map_err(backend)?;
        if value.first() == Some(&b'[') {
            entries.extend(decode::<Vec<AuditEntry>>(&key, &value)?);
        } else {
            entries.push(decode(&key, &value)?);
        }
    }
    Ok(entries)
}
