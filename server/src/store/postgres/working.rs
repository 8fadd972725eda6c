//! The records one transaction reads, locked, and kept with the changes the
//! domain made to them, so that each decision of a batch (a push of many
//! confirmations, a chunk of planning) sees the ones before it, as it would
//! in a sled transaction, without a round trip per record.
//!
//! Every record a decision may change is read `FOR UPDATE`: the row stays
//! locked until the commit, so a concurrent transaction on another instance
//! waits and then reads what this one wrote (READ COMMITTED takes a fresh
//! snapshot per statement, and a locked row is read at its latest version).
//! Rows that do not exist yet cannot be locked; the writer inserts them
//! without `ON CONFLICT`, so the second of two such writers fails on the key
//! and its transaction is tried again.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use handover_shared::{CustomerId, ItemId, NodeId, Username};

use super::{
    sql::{big, count, decode, query, Failed},
    write::{delivery_seq, Pending},
};
use crate::{
    domain::{
        changes::{ChangeSet, StockBook},
        confirmations::{DeviceSync, SeenConfirmation},
        orders::{CustomerAccount, Receipt},
        shipments::Delivery,
        stock::Balance,
    },
    store::StoreError,
};

pub(super) struct Working<'a, 't> {
    pub(super) tx: &'a Transaction<'t>,
    deliveries: HashMap<u64, Option<Delivery>>,
    receipts: HashMap<u64, Option<Receipt>>,
    stock: HashMap<(NodeId, ItemId), Balance>,
    customer_accounts: HashMap<CustomerId, Option<CustomerAccount>>,
    seen: HashMap<String, Option<SeenConfirmation>>,
    loads: HashMap<Username, u64>,
    device_syncs: HashMap<String, Option<DeviceSync>>,
    pending: Pending,
}

impl<'a, 't> Working<'a, 't> {
    pub(super) fn new(tx: &'a Transaction<'t>) -> Self {
        Working {
            tx,
            deliveries: HashMap::new(),
            receipts: HashMap::new(),
            stock: HashMap::new(),
            customer_accounts: HashMap::new(),
            seen: HashMap::new(),
            loads: HashMap::new(),
            device_syncs: HashMap::new(),
            pending: Pending::default(),
        }
    }

    /// Locks and reads the deliveries not read yet, in number order.
    pub(super) async fn lock_deliveries(&mut self, seqs: impl IntoIterator<Item = u64>) -> Result<(), Failed> {
        let missing = missing(seqs, |seq| self.deliveries.contains_key(seq));
        if missing.is_empty() {
            return Ok(());
        }
        let keys = missing.iter().map(|seq| big(*seq)).collect::<Result<Vec<_>, _>>()?;
        let rows = query(
            self.tx,
            "SELECT seq, body::text FROM deliveries WHERE seq = ANY($1) ORDER BY seq FOR UPDATE",
            &[&keys],
        )
        .await?;
        for seq in missing {
            self.deliveries.insert(seq, None);
        }
        for row in rows {
            let seq = count(&row, 0)?;
            self.deliveries.insert(seq, Some(decode(&row, 1, format!("delivery {seq}"))?));
        }
        Ok(())
    }

    /// A delivery as this transaction sees it (locked first).
    pub(super) async fn delivery(&mut self, seq: u64) -> Result<Option<Delivery>, Failed> {
        self.lock_deliveries([seq]).await?;
        Ok(self.deliveries.get(&seq).cloned().flatten())
    }

    pub(super) async fn lock_receipts(&mut self, seqs: impl IntoIterator<Item = u64>) -> Result<(), Failed> {
        let missing = missing(seqs, |seq| self.receipts.contains_key(seq));
        if missing.is_empty() {
            return Ok(());
        }
        let keys = missing.iter().map(|seq| big(*seq)).collect::<Result<Vec<_>, _>>()?;
        let rows = query(
            self.tx,
            "SELECT seq, body::text FROM receipts WHERE seq = ANY($1) ORDER BY seq FOR UPDATE",
            &[&keys],
        )
        .await?;
        for seq in missing {
            self.receipts.insert(seq, None);
        }
        for row in rows {
            let seq = count(&row, 0)?;
            self.receipts.insert(seq, Some(decode(&row, 1, format!("receipt {seq}"))?));
        }
        Ok(())
    }

    pub(super) async fn receipt(&mut self, seq: u64) -> Result<Option<Receipt>, Failed> {
        self.lock_receipts([seq]).await?;
        Ok(self.receipts.get(&seq).cloned().flatten())
    }

    /// The stock book over these balances, locked and read where not read yet.
    pub(super) async fn stock(
        &mut self,
        keys: impl IntoIterator<Item = (NodeId, ItemId)>,
    ) -> Result<StockBook, Failed> {
        let wanted: Vec<(NodeId, ItemId)> = keys.into_iter().collect();
        let mut missing: Vec<&(NodeId, ItemId)> = wanted.iter().filter(|key| !self.stock.contains_key(*key)).collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let nodes: Vec<&str> = missing.iter().map(|(node, _)| node.as_str()).collect();
            let items: Vec<&str> = missing.iter().map(|(_, item)| item.as_str()).collect();
            let rows = query(
                self.tx,
                "SELECT s.node_id, s.item_id, s.body::text FROM stock s
                 JOIN unnest($1::text[], $2::text[]) AS k(n, i) ON s.node_id = k.n AND s.item_id = k.i
                 ORDER BY s.node_id, s.item_id FOR UPDATE OF s",
                &[&nodes, &items],
            )
            .await?;
            let mut found = HashMap::new();
            for row in rows {
                let (node, item): (&str, &str) = (row.get(0), row.get(1));
                let balance: Balance = decode(&row, 2, format!("stock {node}/{item}"))?;
                found.insert((node.to_owned(), item.to_owned()), balance);
            }
            for (node, item) in missing {
                let key = (node.as_str().to_owned(), item.as_str().to_owned());
                let balance = match found.remove(&key) {
                    Some(balance) => balance,
                    None => {
                        self.pending.balance_was_absent(node.clone(), item.clone());
                        Balance::default()
                    }
                };
                self.stock.insert((node.clone(), item.clone()), balance);
            }
        }
        Ok(StockBook::new(wanted.into_iter().map(|(node, item)| {
            let balance = self.stock.get(&(node.clone(), item.clone())).copied().unwrap_or_default();
            (node, item, balance)
        })))
    }

    /// Locks and reads the customers' account records not read yet.
    pub(super) async fn lock_customer_accounts(
        &mut self,
        customers: impl IntoIterator<Item = CustomerId>,
    ) -> Result<(), Failed> {
        let mut missing: Vec<CustomerId> =
            customers.into_iter().filter(|customer| !self.customer_accounts.contains_key(customer)).collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = missing.iter().map(CustomerId::as_str).collect();
        let rows = query(
            self.tx,
            "SELECT customer_id, body::text FROM customer_accounts WHERE customer_id = ANY($1)
             ORDER BY customer_id FOR UPDATE",
            &[&keys],
        )
        .await?;
        let mut found: HashMap<String, CustomerAccount> = HashMap::new();
        for row in rows {
            let customer: String = row.get(0);
            let account = decode(&row, 1, format!("customer account {customer}"))?;
            found.insert(customer, account);
        }
        for customer in missing {
            let account = found.remove(customer.as_str());
            if account.is_none() {
                self.pending.customer_account_was_absent(customer.clone());
            }
            self.customer_accounts.insert(customer, account);
        }
        Ok(())
    }

    /// A customer's account record, locked; `None` when it has none yet.
    pub(super) async fn customer_account(&mut self, customer: &CustomerId) -> Result<Option<CustomerAccount>, Failed> {
        self.lock_customer_accounts([customer.clone()]).await?;
        Ok(self.customer_accounts.get(customer).cloned().flatten())
    }

    /// Reads the first outcomes of these confirmation ids. Called after the
    /// deliveries they name are locked: a concurrent push of the same id
    /// waits on the same delivery, so what is read here is final.
    pub(super) async fn read_seen(&mut self, ids: impl IntoIterator<Item = String>) -> Result<(), Failed> {
        let mut missing: Vec<String> = ids.into_iter().filter(|id| !self.seen.contains_key(id)).collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let rows = query(self.tx, "SELECT id, body::text FROM confirmations WHERE id = ANY($1)", &[&missing]).await?;
        for id in missing {
            self.seen.insert(id, None);
        }
        for row in rows {
            let id: String = row.get(0);
            let seen: SeenConfirmation = decode(&row, 1, format!("confirmation {id}"))?;
            self.seen.insert(id, Some(seen));
        }
        Ok(())
    }

    pub(super) async fn seen(&mut self, id: &str) -> Result<Option<SeenConfirmation>, Failed> {
        self.read_seen([id.to_owned()]).await?;
        Ok(self.seen.get(id).cloned().flatten())
    }

    /// Locks and reads the couriers' loads not read yet (absent is zero).
    pub(super) async fn lock_loads(&mut self, names: impl IntoIterator<Item = Username>) -> Result<(), Failed> {
        let mut missing: Vec<Username> = names.into_iter().filter(|name| !self.loads.contains_key(name)).collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = missing.iter().map(Username::as_str).collect();
        let rows = query(
            self.tx,
            "SELECT username, greatest(open, 0) FROM courier_load WHERE username = ANY($1) ORDER BY username FOR UPDATE",
            &[&keys],
        )
        .await?;
        let mut found: HashMap<String, u64> = HashMap::new();
        for row in rows {
            found.insert(row.get(0), count(&row, 1)?);
        }
        for name in missing {
            let load = found.get(name.as_str()).copied().unwrap_or(0);
            self.loads.insert(name, load);
        }
        Ok(())
    }

    pub(super) fn load(&self, name: &Username) -> u64 {
        self.loads.get(name).copied().unwrap_or(0)
    }

    /// A device's sync over what was recorded of it before.
    pub(super) async fn sync_over(&mut self, sync: &DeviceSync) -> Result<DeviceSync, Failed> {
        let device = sync.device_id.as_str().to_owned();
        if !self.device_syncs.contains_key(&device) {
            let rows =
                query(self.tx, "SELECT body::text FROM device_syncs WHERE device_id = $1 FOR UPDATE", &[&device])
                    .await?;
            let previous: Option<DeviceSync> =
                rows.first().map(|row| decode(row, 0, format!("device sync {device}"))).transpose()?;
            self.device_syncs.insert(device.clone(), previous);
        }
        Ok(sync.over(self.device_syncs.get(&device).and_then(Option::as_ref)))
    }

    /// Keeps what a decision changed: later reads in this transaction see it,
    /// and the commit writes it.
    pub(super) fn apply(&mut self, changes: ChangeSet) -> Result<(), StoreError> {
        for replace in &changes.deliveries {
            self.deliveries.insert(delivery_seq(&replace.after)?, Some(replace.after.clone()));
        }
        for replace in &changes.receipts {
            self.receipts.insert(replace.after.seq, Some(replace.after.clone()));
        }
        for (node, item, balance) in &changes.balances {
            self.stock.insert((node.clone(), item.clone()), *balance);
        }
        for (customer, account) in &changes.customer_accounts {
            self.customer_accounts.insert(customer.clone(), Some(account.clone()));
        }
        for seen in &changes.confirmations {
            self.seen.insert(seen.confirmation_id.clone(), Some(seen.clone()));
        }
        for (courier, delta) in &changes.courier_loads {
            let load = self.loads.entry(courier.clone()).or_default();
            *load = load.saturating_add_signed(*delta);
        }
        for sync in &changes.device_syncs {
            self.device_syncs.insert(sync.device_id.as_str().to_owned(), Some(sync.clone()));
        }
        self.pending.add(changes)
    }

    /// Writes what was applied; the caller commits.
    pub(super) async fn write(self) -> Result<bool, Failed> {
        let wrote = !self.pending.is_empty();
        if wrote {
            self.pending.write(self.tx).await?;
        }
        Ok(wrote)
    }
}

/// The keys not read yet, each once, in order.
fn missing(keys: impl IntoIterator<Item = u64>, known: impl Fn(&u64) -> bool) -> Vec<u64> {
    let mut missing: Vec<u64> = keys.into_iter().filter(|key| !known(key)).collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}
