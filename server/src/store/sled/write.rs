//! The one writer of change sets: every state change the domain decides
//! reaches sled through [`write_changes`], inside the caller's transaction.

use std::{cell::RefCell, collections::BTreeMap};

use handover_shared::Username;

use super::{
    codec::{abort, pair_key, stock_key, tx_get_counter, tx_put, TxResult, FEED_PAIR},
    Tx,
};
use crate::{
    domain::{
        changes::{ChangeSet, Replace},
        confirmations::AuditEntry,
        orders::Receipt,
        shipments::Delivery,
        stock::LedgerEntry,
    },
    store::StoreError,
};

/// Counter of the last receipt number given.
pub(super) const RECEIPT_COUNTER: &[u8] = b"receipt";
/// Counter of the last feed change number given.
const FEED_COUNTER: &[u8] = b"feed";

/// Writes a change set: records whole, this backend's indexes kept from what
/// each record replaced, appended lines gathered in `appends`.
pub(super) fn write_changes(tx: &Tx<'_>, appends: &Appends, changes: ChangeSet) -> TxResult<()> {
    let ChangeSet {
        nodes,
        items,
        customers,
        accounts,
        drafts,
        receipts,
        customer_accounts,
        deliveries,
        courier_loads,
        balances,
        ledger,
        feed,
        audit,
        confirmations,
        device_syncs,
        sessions,
        device_bindings,
        rejection_logs,
        refresh_tokens,
        device_chains,
    } = changes;
    for node in &nodes {
        tx_put(tx.nodes, node.id.as_str().as_bytes(), node)?;
    }
    for item in &items {
        tx_put(tx.items, item.id.as_str().as_bytes(), item)?;
    }
    for customer in &customers {
        tx_put(tx.customers, customer.id.as_str().as_bytes(), customer)?;
    }
    for account in &accounts {
        tx_put(tx.accounts, account.username.as_str().as_bytes(), account)?;
    }
    for draft in &drafts {
        tx_put(tx.drafts, draft.order_id.as_str().as_bytes(), draft)?;
    }
    for receipt in &receipts {
        write_receipt(tx, receipt)?;
    }
    for (customer, account) in &customer_accounts {
        tx_put(tx.customer_accounts, customer.as_str().as_bytes(), account)?;
    }
    for delivery in &deliveries {
        write_delivery(tx, delivery)?;
    }
    for (courier, delta) in &courier_loads {
        let load = tx_get_counter(tx.courier_load, courier.as_str().as_bytes())?.saturating_add_signed(*delta);
        tx.courier_load.insert(courier.as_str().as_bytes(), load.to_be_bytes().as_slice())?;
    }
    for (node, item, balance) in &balances {
        tx_put(tx.stock, &stock_key(node, item), balance)?;
    }
    for line in ledger {
        appends.ledger(line.numbered(tx.ledger.generate_id()?));
    }
    for (courier, delivery) in &feed {
        let seq = delivery.number().ok_or_else(|| abort(StoreError::Backend(format!("bad delivery id {delivery}"))))?;
        appends.feed(tx, courier, seq)?;
    }
    appends.audit(audit);
    for seen in &confirmations {
        tx_put(tx.confirmations, seen.confirmation_id.as_bytes(), seen)?;
    }
    for change in &device_bindings {
        match &change.after {
            Some(binding) => tx_put(tx.device_bindings, change.device_id.as_str().as_bytes(), binding)?,
            None => {
                tx.device_bindings.remove(change.device_id.as_str().as_bytes())?;
            }
        }
    }
    for log in &rejection_logs {
        tx_put(tx.rejection_logs, log.device_id.as_str().as_bytes(), log)?;
    }
    for chain in &device_chains {
        tx_put(tx.device_chains, chain.device_id.as_str().as_bytes(), chain)?;
    }
    for sync in &device_syncs {
        tx_put(tx.device_syncs, sync.device_id.as_str().as_bytes(), sync)?;
    }
    for session in &sessions {
        tx_put(tx.sessions, session.id.as_bytes(), session)?;
        tx.device_sessions.insert(pair_key(session.device_id.as_str(), session.id.as_bytes()), &[])?;
    }
    for (hash, token) in &refresh_tokens {
        tx_put(tx.refresh_tokens, hash, token)?;
    }
    Ok(())
}

/// A receipt, its number, the customer's order history and the receipts
/// waiting for planning.
fn write_receipt(tx: &Tx<'_>, Replace { before, after }: &Replace<Receipt>) -> TxResult<()> {
    let key = after.seq.to_be_bytes();
    tx_put(tx.receipts, &key, after)?;
    if before.is_none() {
        if after.seq > tx_get_counter(tx.counters, RECEIPT_COUNTER)? {
            tx.counters.insert(RECEIPT_COUNTER, key.as_slice())?;
        }
        tx.customer_receipts.insert(pair_key(after.customer_id.as_str(), &key), &[])?;
    }
    match (before.as_ref().map(Receipt::awaits_planning), after.awaits_planning()) {
        (None | Some(false), true) => {
            tx.unplanned.insert(&key, &[])?;
        }
        (Some(true), false) => {
            tx.unplanned.remove(&key)?;
        }
        _ => {}
    }
    Ok(())
}

/// A delivery (numbered like its receipt) and its courier's index.
fn write_delivery(tx: &Tx<'_>, Replace { before, after }: &Replace<Delivery>) -> TxResult<()> {
    let seq = after
        .delivery_id
        .number()
        .ok_or_else(|| abort(StoreError::Backend(format!("bad delivery id {}", after.delivery_id))))?;
    let key = seq.to_be_bytes();
    tx_put(tx.deliveries, &key, after)?;
    let previous = before.as_ref().and_then(|before| before.assignee.as_ref());
    if previous != after.assignee.as_ref() {
        if let Some(previous) = previous {
            tx.courier_deliveries.remove(pair_key(previous.as_str(), &key))?;
        }
        if let Some(courier) = &after.assignee {
            tx.courier_deliveries.insert(pair_key(courier.as_str(), &key), &[])?;
        }
    }
    Ok(())
}

/// The lines a transaction appends to the ledger, the couriers' feed and the
/// audit log, kept until its body has run and then written as one record per
/// tree, and one per courier for the feed. sled's cost is per key written (a
/// lookup, a page update, a share of a leaf split): a group of pushes or a
/// chunk of planning appends hundreds of lines, which share a few records.
/// Readers take these and the single-line records of older stores alike
/// (`codec::ledger_entries`, `codec::feed_changes`).
#[derive(Default)]
pub(super) struct Appends {
    pending: RefCell<PendingLines>,
}

#[derive(Default)]
struct PendingLines {
    ledger: Vec<LedgerEntry>,
    audit: Vec<AuditEntry>,
    /// Per courier, its (change number, delivery) pairs, big-endian, in order.
    feed: BTreeMap<Username, Vec<u8>>,
    last_change: Option<u64>,
}

impl Appends {
    fn ledger(&self, entry: LedgerEntry) {
        self.pending.borrow_mut().ledger.push(entry);
    }

    /// Records that a delivery changed for a courier, under the next change number.
    fn feed(&self, tx: &Tx<'_>, courier: &Username, delivery_seq: u64) -> TxResult<()> {
        let mut pending = self.pending.borrow_mut();
        let change = match pending.last_change {
            Some(last) => last + 1,
            None => tx_get_counter(tx.counters, FEED_COUNTER)? + 1,
        };
        pending.last_change = Some(change);
        let pairs = pending.feed.entry(courier.clone()).or_default();
        pairs.extend_from_slice(&change.to_be_bytes());
        pairs.extend_from_slice(&delivery_seq.to_be_bytes());
        Ok(())
    }

    fn audit(&self, entries: Vec<AuditEntry>) {
        self.pending.borrow_mut().audit.extend(entries);
    }

    /// Writes what was appended. A feed record is keyed by its courier and its
    /// last change number, so that a pull from cursor `c` finds every record
    /// holding a change after `c` by a range read from `c + 1`.
    pub(super) fn write(self, tx: &Tx<'_>) -> TxResult<()> {
        let pending = self.pending.into_inner();
        if let Some(first) = pending.ledger.first() {
            tx_put(tx.ledger, &first.seq.to_be_bytes(), &pending.ledger)?;
        }
        if !pending.audit.is_empty() {
            tx_put(tx.audit, &tx.audit.generate_id()?.to_be_bytes(), &pending.audit)?;
        }
        if let Some(last) = pending.last_change {
            for (courier, pairs) in &pending.feed {
                let last_of_courier = &pairs[pairs.len() - FEED_PAIR..][..8];
                tx.courier_feed.insert(pair_key(courier.as_str(), last_of_courier), pairs.as_slice())?;
            }
            tx.counters.insert(FEED_COUNTER, last.to_be_bytes().as_slice())?;
        }
        Ok(())
    }
}
