//! The one writer of change sets: what the domain decided in one transaction,
//! gathered ([`Pending::add`]) and written with a statement per table.
//!
//! Numbers are given here. Ledger lines and feed changes take the next numbers
//! of their counters as the transaction's last statements, and the counter's
//! row stays locked until the commit: a transaction that numbers after this
//! one waits for it to commit, so numbers follow commit order. A reader that
//! has seen change `n` has seen every change before it, which is what a
//! courier's cursor relies on (a sequence would hand out numbers in the order
//! transactions asked, and a later number could commit first).

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Transaction;
use handover_shared::{CustomerId, ItemId, NodeId, Username};
use uuid::Uuid;

use super::sql::{big, count, encode, execute, query, Failed};
use crate::{
    domain::{
        chain::DeviceChain,
        changes::{ChangeSet, StockLine},
        confirmations::{AuditEntry, DeviceSync, FirstOutcome, RejectionLog, SeenConfirmation},
        network::{Account, Customer, Item, Node},
        orders::{CustomerAccount, Draft, Receipt},
        sessions::{BindingChange, RefreshToken, Session},
        shipments::{Carrier, Delivery},
        stock::Balance,
    },
    store::StoreError,
};

/// Everything one transaction writes, each keyed record at its last value.
#[derive(Debug, Default)]
pub(super) struct Pending {
    nodes: BTreeMap<NodeId, Node>,
    items: BTreeMap<ItemId, Item>,
    customers: BTreeMap<CustomerId, Customer>,
    accounts: BTreeMap<Username, Account>,
    drafts: BTreeMap<String, Draft>,
    /// Each receipt, and whether it is new.
    receipts: BTreeMap<u64, (Receipt, bool)>,
    customer_accounts: BTreeMap<CustomerId, CustomerAccount>,
    deliveries: BTreeMap<u64, Delivery>,
    courier_loads: BTreeMap<Username, i64>,
    balances: BTreeMap<(NodeId, ItemId), Balance>,
    ledger: Vec<StockLine>,
    feed: Vec<(Username, u64)>,
    audit: Vec<AuditEntry>,
    confirmations: BTreeMap<String, SeenConfirmation>,
    device_syncs: BTreeMap<String, DeviceSync>,
    sessions: BTreeMap<Uuid, Session>,
    refresh_tokens: BTreeMap<[u8; 32], RefreshToken>,
    /// Each device's binding as first read and as last decided.
    device_bindings: BTreeMap<String, BindingChange>,
    rejection_logs: BTreeMap<String, RejectionLog>,
    device_chains: BTreeMap<String, DeviceChain>,
    /// Rows that did not exist when read: inserted, so that a concurrent
    /// writer that also found them missing fails on the key and tries again,
    /// instead of one overwriting the other.
    new_balances: BTreeSet<(NodeId, ItemId)>,
    new_customer_accounts: BTreeSet<CustomerId>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.items.is_empty()
            && self.customers.is_empty()
            && self.accounts.is_empty()
            && self.drafts.is_empty()
            && self.receipts.is_empty()
            && self.customer_accounts.is_empty()
            && self.deliveries.is_empty()
            && self.courier_loads.is_empty()
            && self.balances.is_empty()
            && self.ledger.is_empty()
            && self.feed.is_empty()
            && self.audit.is_empty()
            && self.confirmations.is_empty()
            && self.device_syncs.is_empty()
            && self.sessions.is_empty()
            && self.device_bindings.is_empty()
            && self.rejection_logs.is_empty()
            && self.device_chains.is_empty()
            && self.refresh_tokens.is_empty()
    }

    /// Marks a stock row read as absent (zero).
    pub(super) fn balance_was_absent(&mut self, node: NodeId, item: ItemId) {
        self.new_balances.insert((node, item));
    }

    pub(super) fn customer_account_was_absent(&mut self, customer: CustomerId) {
        self.new_customer_accounts.insert(customer);
    }

    /// Adds a change set after the ones added before.
    pub(super) fn add(&mut self, changes: ChangeSet) -> Result<(), StoreError> {
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
        self.nodes.extend(nodes.into_iter().map(|node| (node.id.clone(), node)));
        self.items.extend(items.into_iter().map(|item| (item.id.clone(), item)));
        self.customers.extend(customers.into_iter().map(|customer| (customer.id.clone(), customer)));
        self.accounts.extend(accounts.into_iter().map(|account| (account.username.clone(), account)));
        self.drafts.extend(drafts.into_iter().map(|draft| (draft.order_id.as_str().to_owned(), draft)));
        for replace in receipts {
            let new = replace.before.is_none() || self.receipts.get(&replace.after.seq).is_some_and(|(_, new)| *new);
            self.receipts.insert(replace.after.seq, (replace.after, new));
        }
        self.customer_accounts.extend(customer_accounts);
        for replace in deliveries {
            let seq = delivery_seq(&replace.after)?;
            self.deliveries.insert(seq, replace.after);
        }
        for (courier, delta) in courier_loads {
            *self.courier_loads.entry(courier).or_default() += delta;
        }
        self.balances.extend(balances.into_iter().map(|(node, item, balance)| ((node, item), balance)));
        self.ledger.extend(ledger);
        for (courier, delivery) in feed {
            let seq = delivery.number().ok_or_else(|| StoreError::Backend(format!("bad delivery id {delivery}")))?;
            self.feed.push((courier, seq));
        }
        self.audit.extend(audit);
        for seen in confirmations {
            if self.confirmations.contains_key(&seen.confirmation_id) {
                return Err(StoreError::Backend(format!("confirmation {} judged twice", seen.confirmation_id)));
            }
            self.confirmations.insert(seen.confirmation_id.clone(), seen);
        }
        self.device_syncs.extend(device_syncs.into_iter().map(|sync| (sync.device_id.as_str().to_owned(), sync)));
        self.sessions.extend(sessions.into_iter().map(|session| (session.id, session)));
        self.rejection_logs.extend(rejection_logs.into_iter().map(|log| (log.device_id.as_str().to_owned(), log)));
        self.device_chains.extend(device_chains.into_iter().map(|chain| (chain.device_id.as_str().to_owned(), chain)));
        for change in device_bindings {
            match self.device_bindings.entry(change.device_id.as_str().to_owned()) {
                std::collections::btree_map::Entry::Occupied(mut kept) => kept.get_mut().after = change.after,
                std::collections::btree_map::Entry::Vacant(new) => {
                    new.insert(change);
                }
            }
        }
        self.refresh_tokens.extend(refresh_tokens);
        Ok(())
    }

    /// Writes everything, the numbered appends last (see the module's docs).
    pub(super) async fn write(self, tx: &Transaction<'_>) -> Result<(), Failed> {
        write_documents(tx, "nodes", "id", &self.nodes, |node| Ok(vec![node.kind.as_str().to_owned()])).await?;
        write_documents(tx, "items", "id", &self.items, |_| Ok(vec![])).await?;
        write_documents(tx, "customers", "id", &self.customers, |_| Ok(vec![])).await?;
        write_documents(tx, "accounts", "username", &self.accounts, |_| Ok(vec![])).await?;
        self.write_drafts(tx).await?;
        self.write_receipts(tx).await?;
        self.write_customer_accounts(tx).await?;
        self.write_deliveries(tx).await?;
        self.write_loads(tx).await?;
        self.write_balances(tx).await?;
        self.write_confirmations(tx).await?;
        self.write_small_records(tx).await?;
        write_ledger(tx, &self.ledger).await?;
        write_audit(tx, &self.audit).await?;
        write_feed(tx, &self.feed).await?;
        Ok(())
    }

    async fn write_drafts(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        if self.drafts.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::new();
        let mut customers = Vec::new();
        let mut open = Vec::new();
        let mut bodies = Vec::new();
        for (id, draft) in &self.drafts {
            ids.push(id.as_str());
            customers.push(draft.customer_id.as_str());
            open.push(draft.state == crate::domain::orders::DraftState::Open);
            bodies.push(encode(draft)?);
        }
        execute(
            tx,
            "INSERT INTO drafts (order_id, customer_id, open, body)
             SELECT i, c, o, b::jsonb FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[]) AS v(i, c, o, b)
             ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, open = EXCLUDED.open, body = EXCLUDED.body",
            &[&ids, &customers, &open, &bodies],
        )
        .await?;
        Ok(())
    }

    async fn write_receipts(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        if self.receipts.is_empty() {
            return Ok(());
        }
        let mut columns = ReceiptColumns::default();
        let mut last_new = None;
        for (seq, (receipt, new)) in &self.receipts {
            columns.seq.push(big(*seq)?);
            columns.customer.push(receipt.customer_id.as_str());
            // The column keeps receipts out of the planning queue: planned or cancelled.
            columns.planned.push(!receipt.awaits_planning());
            columns.delivered.push(receipt.delivered);
            columns.backordered.push(receipt.backordered);
            columns.created_at.push(receipt.created_at);
            columns.body.push(encode(receipt)?);
            if *new {
                last_new = Some(big(*seq)?);
            }
        }
        let c = &columns;
        execute(
            tx,
            "INSERT INTO receipts (seq, customer_id, planned, delivered, backordered, created_at, body)
             SELECT s, c, p, d, b, t, j::jsonb
             FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::bool[], $5::bool[], $6::timestamptz[], $7::text[])
                  AS v(s, c, p, d, b, t, j)
             ON CONFLICT (seq) DO UPDATE SET planned = EXCLUDED.planned, delivered = EXCLUDED.delivered,
                 backordered = EXCLUDED.backordered, body = EXCLUDED.body",
            &[&c.seq, &c.customer, &c.planned, &c.delivered, &c.backordered, &c.created_at, &c.body],
        )
        .await?;
        if let Some(last) = last_new {
            execute(tx, "UPDATE counters SET value = greatest(value, $1) WHERE name = 'receipt'", &[&last]).await?;
        }
        Ok(())
    }

    async fn write_customer_accounts(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        let (new, known): (Vec<_>, Vec<_>) =
            self.customer_accounts.iter().partition(|(customer, _)| self.new_customer_accounts.contains(*customer));
        for (rows, insert_only) in [(new, true), (known, false)] {
            if rows.is_empty() {
                continue;
            }
            let ids: Vec<&str> = rows.iter().map(|(customer, _)| customer.as_str()).collect();
            let bodies = rows.iter().map(|(_, account)| encode(account)).collect::<Result<Vec<_>, _>>()?;
            let sql = if insert_only {
                "INSERT INTO customer_accounts (customer_id, body)
                 SELECT i, b::jsonb FROM unnest($1::text[], $2::text[]) AS v(i, b)"
            } else {
                "UPDATE customer_accounts SET body = v.b::jsonb FROM unnest($1::text[], $2::text[]) AS v(i, b)
                 WHERE customer_id = v.i"
            };
            execute(tx, sql, &[&ids, &bodies]).await?;
        }
        Ok(())
    }

    async fn write_deliveries(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        if self.deliveries.is_empty() {
            return Ok(());
        }
        let mut c = DeliveryColumns::default();
        for (seq, delivery) in &self.deliveries {
            c.seq.push(big(*seq)?);
            c.assignee.push(delivery.assignee.as_ref().map(|name| name.as_str()));
            c.seller.push(match &delivery.carrier {
                Carrier::Seller { seller } => Some(seller.as_str()),
                Carrier::Distributor { .. } => None,
            });
            c.open.push(delivery.is_open());
            c.customer.push(delivery.customer_id.as_str());
            c.item.push(delivery.item_id.as_str());
            let receipt = delivery
                .receipt_id
                .seq()
                .ok_or_else(|| StoreError::Backend(format!("bad receipt id {}", delivery.receipt_id)))?;
            c.receipt.push(big(receipt)?);
            c.body.push(encode(delivery)?);
        }
        execute(
            tx,
            "INSERT INTO deliveries (seq, assignee, seller, open, customer_id, item_id, receipt_seq, body)
             SELECT s, a, se, o, c, i, r, b::jsonb
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::bigint[], $8::text[])
                  AS v(s, a, se, o, c, i, r, b)
             ON CONFLICT (seq) DO UPDATE SET assignee = EXCLUDED.assignee, seller = EXCLUDED.seller,
                 open = EXCLUDED.open, body = EXCLUDED.body",
            &[&c.seq, &c.assignee, &c.seller, &c.open, &c.customer, &c.item, &c.receipt, &c.body],
        )
        .await?;
        Ok(())
    }

    async fn write_loads(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        let changed: Vec<_> = self.courier_loads.iter().filter(|(_, delta)| **delta != 0).collect();
        if changed.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = changed.iter().map(|(name, _)| name.as_str()).collect();
        let deltas: Vec<i64> = changed.iter().map(|(_, delta)| **delta).collect();
        // Adding is the same whatever order concurrent writers add in. Read
        // back at no less than zero, as sled's saturating count is.
        execute(
            tx,
            "INSERT INTO courier_load (username, open) SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (username) DO UPDATE SET open = courier_load.open + EXCLUDED.open",
            &[&names, &deltas],
        )
        .await?;
        Ok(())
    }

    async fn write_balances(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        let (new, known): (Vec<_>, Vec<_>) =
            self.balances.iter().partition(|(key, _)| self.new_balances.contains(*key));
        for (rows, insert_only) in [(new, true), (known, false)] {
            if rows.is_empty() {
                continue;
            }
            let nodes: Vec<&str> = rows.iter().map(|((node, _), _)| node.as_str()).collect();
            let items: Vec<&str> = rows.iter().map(|((_, item), _)| item.as_str()).collect();
            let bodies = rows.iter().map(|(_, balance)| encode(balance)).collect::<Result<Vec<_>, _>>()?;
            let sql = if insert_only {
                "INSERT INTO stock (node_id, item_id, body)
                 SELECT n, i, b::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS v(n, i, b)"
            } else {
                "UPDATE stock SET body = v.b::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS v(n, i, b)
                 WHERE node_id = v.n AND item_id = v.i"
            };
            execute(tx, sql, &[&nodes, &items, &bodies]).await?;
        }
        Ok(())
    }

    async fn write_confirmations(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        if self.confirmations.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::new();
        let mut rejected = Vec::new();
        let mut received = Vec::new();
        let mut bodies = Vec::new();
        for (id, seen) in &self.confirmations {
            ids.push(id.as_str());
            rejected.push(matches!(seen.outcome, FirstOutcome::Rejected { .. }));
            received.push(seen.received_at);
            bodies.push(encode(seen)?);
        }
        // A first outcome is written once: an id already there is a
        // concurrent judgement of the same id, and this attempt starts over.
        execute(
            tx,
            "INSERT INTO confirmations (id, rejected, received_at, body)
             SELECT i, r, t, b::jsonb FROM unnest($1::text[], $2::bool[], $3::timestamptz[], $4::text[]) AS v(i, r, t, b)",
            &[&ids, &rejected, &received, &bodies],
        )
        .await?;
        Ok(())
    }

    /// Device syncs, sessions and refresh tokens: few per transaction.
    async fn write_small_records(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        for (device, sync) in &self.device_syncs {
            put_by_device(tx, "device_syncs", device, encode(sync)?).await?;
        }
        for (id, session) in &self.sessions {
            execute(
                tx,
                "INSERT INTO sessions (id, device_id, body) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                &[id, &session.device_id.as_str(), &encode(session)?],
            )
            .await?;
        }
        for (device, change) in &self.device_bindings {
            match (&change.before, &change.after) {
                // A new binding is inserted: of two accounts racing for an
                // unbound id, the second fails on the key and is judged again.
                (None, Some(binding)) => {
                    execute(
                        tx,
                        "INSERT INTO device_bindings (device_id, body) VALUES ($1, $2::text::jsonb)",
                        &[&device.as_str(), &encode(binding)?],
                    )
                    .await?
                }
                (Some(_), Some(binding)) => {
                    execute(
                        tx,
                        "UPDATE device_bindings SET body = $2::text::jsonb WHERE device_id = $1",
                        &[&device.as_str(), &encode(binding)?],
                    )
                    .await?
                }
                (_, None) => {
                    execute(tx, "DELETE FROM device_bindings WHERE device_id = $1", &[&device.as_str()]).await?
                }
            };
        }
        for (device, log) in &self.rejection_logs {
            put_by_device(tx, "rejection_logs", device, encode(log)?).await?;
        }
        for (device, chain) in &self.device_chains {
            put_by_device(tx, "device_chains", device, encode(chain)?).await?;
        }
        for (hash, token) in &self.refresh_tokens {
            execute(
                tx,
                "INSERT INTO refresh_tokens (hash, body) VALUES ($1, $2::text::jsonb)
                 ON CONFLICT (hash) DO UPDATE SET body = EXCLUDED.body",
                &[&hash.as_slice(), &encode(token)?],
            )
            .await?;
        }
        Ok(())
    }
}

/// A record kept whole under its device id in `table` (one of ours), the
/// last write replacing it.
async fn put_by_device(tx: &Transaction<'_>, table: &str, device: &str, body: String) -> Result<(), Failed> {
    let sql = format!(
        "INSERT INTO {table} (device_id, body) VALUES ($1, $2::text::jsonb)
         ON CONFLICT (device_id) DO UPDATE SET body = EXCLUDED.body"
    );
    execute(tx, &sql, &[&device, &body]).await?;
    Ok(())
}

#[derive(Default)]
struct ReceiptColumns<'a> {
    seq: Vec<i64>,
    customer: Vec<&'a str>,
    planned: Vec<bool>,
    delivered: Vec<bool>,
    backordered: Vec<bool>,
    created_at: Vec<time::OffsetDateTime>,
    body: Vec<String>,
}

#[derive(Default)]
struct DeliveryColumns<'a> {
    seq: Vec<i64>,
    assignee: Vec<Option<&'a str>>,
    seller: Vec<Option<&'a str>>,
    open: Vec<bool>,
    customer: Vec<&'a str>,
    item: Vec<&'a str>,
    receipt: Vec<i64>,
    body: Vec<String>,
}

pub(super) fn delivery_seq(delivery: &Delivery) -> Result<u64, StoreError> {
    delivery
        .delivery_id
        .number()
        .ok_or_else(|| StoreError::Backend(format!("bad delivery id {}", delivery.delivery_id)))
}

/// Upserts records kept whole under a text key, with `extra` columns after
/// the key (the nodes' kind).
async fn write_documents<K: AsRef<str>, T: serde::Serialize>(
    tx: &Transaction<'_>,
    table: &str,
    key: &str,
    records: &BTreeMap<K, T>,
    extra: impl Fn(&T) -> Result<Vec<String>, StoreError>,
) -> Result<(), Failed> {
    if records.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = records.keys().map(AsRef::as_ref).collect();
    let bodies = records.values().map(encode).collect::<Result<Vec<_>, _>>()?;
    let extras = records.values().map(&extra).collect::<Result<Vec<_>, _>>()?;
    if extras.iter().all(Vec::is_empty) {
        let sql = format!(
            "INSERT INTO {table} ({key}, body) SELECT k, b::jsonb FROM unnest($1::text[], $2::text[]) AS v(k, b)
             ON CONFLICT ({key}) DO UPDATE SET body = EXCLUDED.body"
        );
        execute(tx, &sql, &[&keys, &bodies]).await?;
    } else {
        // Only nodes have an extra column: their kind.
        let kinds: Vec<&str> = extras.iter().map(|extra| extra.first().map_or("", String::as_str)).collect();
        let sql = format!(
            "INSERT INTO {table} ({key}, kind, body)
             SELECT k, x, b::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS v(k, x, b)
             ON CONFLICT ({key}) DO UPDATE SET kind = EXCLUDED.kind, body = EXCLUDED.body"
        );
        execute(tx, &sql, &[&keys, &kinds, &bodies]).await?;
    }
    Ok(())
}

/// Takes `n` numbers from a counter: the first of them. The row stays
/// locked until the transaction ends.
async fn take_numbers(tx: &Transaction<'_>, counter: &str, n: usize) -> Result<u64, Failed> {
    let rows = query(
        tx,
        "UPDATE counters SET value = value + $2 WHERE name = $1 RETURNING value - $2 + 1",
        &[&counter, &big(n as u64)?],
    )
    .await?;
    let row = rows.first().ok_or_else(|| StoreError::Backend(format!("the {counter} counter is missing")))?;
    Ok(count(row, 0)?)
}

async fn write_ledger(tx: &Transaction<'_>, lines: &[StockLine]) -> Result<(), Failed> {
    if lines.is_empty() {
        return Ok(());
    }
    let first = take_numbers(tx, "ledger", lines.len()).await?;
    let mut seqs = Vec::with_capacity(lines.len());
    let mut bodies = Vec::with_capacity(lines.len());
    for (offset, line) in lines.iter().enumerate() {
        let seq = first + offset as u64;
        seqs.push(big(seq)?);
        bodies.push(encode(&line.clone().numbered(seq))?);
    }
    execute(
        tx,
        "INSERT INTO ledger (seq, body) SELECT s, b::jsonb FROM unnest($1::bigint[], $2::text[]) AS v(s, b)",
        &[&seqs, &bodies],
    )
    .await?;
    Ok(())
}

async fn write_audit(tx: &Transaction<'_>, entries: &[AuditEntry]) -> Result<(), Failed> {
    if entries.is_empty() {
        return Ok(());
    }
    let bodies = entries.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
    execute(
        tx,
        "INSERT INTO audit (body) SELECT b::jsonb FROM unnest($1::text[]) WITH ORDINALITY AS v(b, o) ORDER BY o",
        &[&bodies],
    )
    .await?;
    Ok(())
}

async fn write_feed(tx: &Transaction<'_>, feed: &[(Username, u64)]) -> Result<(), Failed> {
    if feed.is_empty() {
        return Ok(());
    }
    let first = take_numbers(tx, "feed", feed.len()).await?;
    let changes = (0..feed.len()).map(|offset| big(first + offset as u64)).collect::<Result<Vec<_>, _>>()?;
    let couriers: Vec<&str> = feed.iter().map(|(courier, _)| courier.as_str()).collect();
    let deliveries = feed.iter().map(|(_, seq)| big(*seq)).collect::<Result<Vec<_>, _>>()?;
    execute(
        tx,
        "INSERT INTO courier_feed (change, courier, delivery_seq)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])",
        &[&changes, &couriers, &deliveries],
    )
    .await?;
    Ok(())
}
