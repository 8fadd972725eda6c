//! What a decision changes. Every domain operation that changes state takes the
//! records it needs and returns a [`ChangeSet`]; a storage backend writes it
//! whole, in one transaction, and decides nothing: it numbers the appended
//! lines, keeps its own indexes, and says when the change is durable.
//!
//! Records are written whole, each as a [`Replace`] that carries what it
//! replaced, so that a backend can keep its indexes (a courier's deliveries,
//! the receipts waiting for planning) without reading the record again.

use std::collections::BTreeMap;

use handover_shared::{CustomerId, DeliveryId, ItemId, NodeId, Username};
use time::OffsetDateTime;

use super::{
    chain::DeviceChain,
    confirmations::{AuditEntry, DeviceSync, RejectionLog, SeenConfirmation},
    network::{Account, Customer, Item, Node},
    orders::{CustomerAccount, Draft, Receipt},
    sessions::{BindingChange, RefreshToken, Session},
    shipments::{Delivery, StockEffect},
    stock::{Balance, LedgerEntry, Movement},
};

/// A record written whole: `after` replaces `before` (`None` for a new record).
#[derive(Debug, Clone, PartialEq)]
pub struct Replace<T> {
    pub before: Option<T>,
    pub after: T,
}

/// One stock movement, as the domain decides it; the backend gives it its
/// sequence number in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLine {
    pub at: OffsetDateTime,
    pub node_id: NodeId,
    pub item_id: ItemId,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub movement: Movement,
}

impl StockLine {
    pub fn numbered(self, seq: u64) -> LedgerEntry {
        LedgerEntry {
            seq,
            at: self.at,
            node_id: self.node_id,
            item_id: self.item_id,
            on_hand_delta: self.on_hand_delta,
            reserved_delta: self.reserved_delta,
            movement: self.movement,
        }
    }
}

/// Everything one decision writes. Empty when it changes nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeSet {
    pub nodes: Vec<Node>,
    pub items: Vec<Item>,
    pub customers: Vec<Customer>,
    pub accounts: Vec<Account>,
    pub drafts: Vec<Draft>,
    pub receipts: Vec<Replace<Receipt>>,
    pub customer_accounts: Vec<(CustomerId, CustomerAccount)>,
    pub deliveries: Vec<Replace<Delivery>>,
    /// Added to each courier's count of open deliveries (the load that the
    /// choice of an expediter reads).
    pub courier_loads: BTreeMap<Username, i64>,
    /// Balances after the movements in `ledger`, one per (node, item) touched.
    pub balances: Vec<(NodeId, ItemId, Balance)>,
    /// Stock movements, in order; appended to the ledger.
    pub ledger: Vec<StockLine>,
    /// A delivery changed for a courier (assigned, reassigned away, moved
    /// towards ready, delivered...): appended to that courier's feed, in order.
    pub feed: Vec<(Username, DeliveryId)>,
    pub audit: Vec<AuditEntry>,
    /// First outcomes of confirmation ids never seen before; written once, never replaced.
    pub confirmations: Vec<SeenConfirmation>,
    pub device_syncs: Vec<DeviceSync>,
    pub sessions: Vec<Session>,
    /// Refresh tokens by the SHA-256 of their value.
    pub refresh_tokens: Vec<([u8; 32], RefreshToken)>,
    /// Devices bound to an account, or released.
    pub device_bindings: Vec<BindingChange>,
    /// Devices' review lists of rejected confirmations, written whole.
    pub rejection_logs: Vec<RejectionLog>,
    /// Devices' keys and chains, written whole.
    pub device_chains: Vec<DeviceChain>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        *self == ChangeSet::default()
    }

    /// Records a delivery's new state, and what it does to its couriers' loads.
    pub fn put_delivery(&mut self, before: Option<Delivery>, after: Delivery) {
        let carried = |delivery: &Delivery| delivery.assignee.clone().filter(|_| delivery.is_open());
        if let Some(courier) = before.as_ref().and_then(carried) {
            *self.courier_loads.entry(courier).or_default() -= 1;
        }
        if let Some(courier) = carried(&after) {
            *self.courier_loads.entry(courier).or_default() += 1;
        }
        self.courier_loads.retain(|_, delta| *delta != 0);
        self.deliveries.push(Replace { before, after });
    }

    pub fn put_receipt(&mut self, before: Option<Receipt>, after: Receipt) {
        self.receipts.push(Replace { before, after });
    }

    /// Tells a courier that a delivery changed for it.
    pub fn notify(&mut self, courier: &Username, delivery: &DeliveryId) {
        self.feed.push((courier.clone(), delivery.clone()));
    }

    /// Takes the stock book's movements and final balances.
    pub fn take_stock(&mut self, book: StockBook) {
        self.balances.extend(book.touched.into_iter().map(|(node, item)| {
            let balance = book.balances.get(&(node.clone(), item.clone())).copied().unwrap_or_default();
            (node, item, balance)
        }));
        self.ledger.extend(book.lines);
    }
}

/// The outcome of a step on an object whose state may forbid it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T, R> {
    Done(T),
    Refused(R),
    NotFound,
}

/// The records a decision found inconsistent with each other: a bug or a
/// damaged store, never the caller's fault. Nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent records: {0}")]
pub struct Inconsistent(pub String);

/// The balances a decision may move, read by the backend beforehand, and the
/// movements made so far. A balance that was not read is an error, never
/// taken as zero: a backend that forgot one must not overwrite it.
#[derive(Debug, Clone, Default)]
pub struct StockBook {
    balances: BTreeMap<(NodeId, ItemId), Balance>,
    touched: Vec<(NodeId, ItemId)>,
    lines: Vec<StockLine>,
}

impl StockBook {
    /// The balances as read (absent ones as zero by the backend).
    pub fn new(read: impl IntoIterator<Item = (NodeId, ItemId, Balance)>) -> Self {
        StockBook {
            balances: read.into_iter().map(|(node, item, balance)| ((node, item), balance)).collect(),
            ..StockBook::default()
        }
    }

    pub fn balance(&self, node: &NodeId, item: &ItemId) -> Result<Balance, Inconsistent> {
        self.balances
            .get(&(node.clone(), item.clone()))
            .copied()
            .ok_or_else(|| Inconsistent(format!("the stock of {item} at {node} was not read")))
    }

    /// Applies one movement; refuses one that would leave negative stock.
    pub fn apply(
        &mut self,
        item: &ItemId,
        effect: &StockEffect<'_>,
        movement: Movement,
        at: OffsetDateTime,
    ) -> Result<Balance, Inconsistent> {
        let balance = self.balance(effect.node, item)?;
        let updated = effect.apply(balance).map_err(|_| {
            Inconsistent(format!("stock of {item} at {} would go negative ({movement:?})", effect.node))
        })?;
        let key = (effect.node.clone(), item.clone());
        if !self.touched.contains(&key) {
            self.touched.push(key.clone());
        }
        self.balances.insert(key, updated);
        self.lines.push(StockLine {
            at,
            node_id: effect.node.clone(),
            item_id: item.clone(),
            on_hand_delta: effect.on_hand_delta,
            reserved_delta: effect.reserved_delta,
            movement,
        });
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stock_book_refuses_a_balance_it_was_not_given() {
        let (node, item) = (NodeId::parse("B1").expect("id"), ItemId::parse("TC").expect("id"));
        let mut book = StockBook::new([]);
        let effect = StockEffect { node: &node, on_hand_delta: 1, reserved_delta: 0 };
        let refused = book.apply(&item, &effect, Movement::GoodsReceipt, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(refused, Err(Inconsistent("the stock of TC at B1 was not read".into())));
    }

    #[test]
    fn a_stock_book_chains_movements_and_reports_each_balance_once() {
        let (node, item) = (NodeId::parse("B1").expect("id"), ItemId::parse("TC").expect("id"));
        let mut book = StockBook::new([(node.clone(), item.clone(), Balance { on_hand: 2, reserved: 0 })]);
        let at = OffsetDateTime::UNIX_EPOCH;
        book.apply(
            &item,
            &StockEffect { node: &node, on_hand_delta: 3, reserved_delta: 0 },
            Movement::GoodsReceipt,
            at,
        )
        .expect("applies");
        let effect = StockEffect { node: &node, on_hand_delta: 0, reserved_delta: 6 };
        assert!(book.apply(&item, &effect, Movement::GoodsReceipt, at).is_err(), "more reserved than on hand");
        let mut changes = ChangeSet::default();
        changes.take_stock(book);
        assert_eq!(changes.balances, vec![(node, item, Balance { on_hand: 5, reserved: 0 })]);
        assert_eq!(changes.ledger.len(), 1, "the refused movement left no line");
    }
}
