//! The contract suite's world: a small network (a branch B1 with two
//! expediters, a master warehouse, a manufacturer), orders placed through the
//! order service, and what the tests read back to compare whole states.

use std::sync::Arc;

use handover_server::{
    domain::{
        access::Principal,
        confirmations::{DeviceSync, PushOutcome, Pushed, RejectionLog},
        network::{Customer, Item, Node, StockCount},
        orders::{CustomerAccount, Draft, RawOrder, RawQuantity, Receipt, DRAFT_TTL},
        shipments::{CourierAccount, Delivery, DeliveryCard},
        stock::{self, Balance, LedgerEntry},
    },
    import, orders,
    store::{Account, DeliveryQuery, ReceiptQuery, Step, Store},
};
use handover_shared::{
    api::NetworkFile,
    sync::{Confirmation, FailureReason, Outcome},
    CustomerId, DeliveryId, DeviceId, ItemId, NodeId, Role, Username,
};
use time::OffsetDateTime;

use super::Backend;

pub const EXP1: &str = "exp-1";
pub const EXP2: &str = "exp-2";
const CUSTOMERS: usize = 3;
/// More than any test reads at once: a read with this limit is a whole read.
const ALL: usize = 10_000;

/// The network, with `b1` toners counted at branch B1 and `mw` at the master warehouse.
pub fn network(b1: u64, mw: u64) -> NetworkFile {
    let customers = (1..=CUSTOMERS).map(|i| {
        serde_json::json!({"id": format!("C-{i}"), "name": format!("Office {i}"), "branch_1": "B1", "branch_2": "B2", "seller_id": "S1"})
    });
    serde_json::from_value(serde_json::json!({
        "nodes": [
            {"id": "MFR", "kind": "manufacturer", "name": "Plant"},
            {"id": "MW", "kind": "master_warehouse", "name": "Central"},
            {"id": "B1", "kind": "branch_warehouse", "name": "North"},
            {"id": "B2", "kind": "branch_warehouse", "name": "South"},
            {"id": "S1", "kind": "seller", "name": "Rep"}
        ],
        "items": [{"id": "TC-100", "name": "Toner", "collectable": true, "max_per_order": 20, "discontinued": false}],
        "stock": [
            {"node_id": "B1", "item_id": "TC-100", "quantity": b1},
            {"node_id": "MW", "item_id": "TC-100", "quantity": mw}
        ],
        "customers": customers.collect::<Vec<_>>(),
        "accounts": [
            {"username": "disp", "password": "a-password", "role": "dispatcher"},
            {"username": EXP1, "password": "a-password", "role": "expediter", "node_id": "B1"},
            {"username": EXP2, "password": "a-password", "role": "expediter", "node_id": "B1"}
        ]
    }))
    .expect("the test network parses")
}

/// A fresh store of the backend with the network imported.
pub async fn opened(backend: &impl Backend, b1: u64, mw: u64) -> Arc<dyn Store> {
    let store = backend.open().await;
    import::import_network(&*store, &network(b1, mw)).await.expect("the test network imports");
    store
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn name(text: &str) -> Username {
    Username::parse(text).expect("a username")
}

pub fn node_id(text: &str) -> NodeId {
    NodeId::parse(text).expect("a node id")
}

pub fn item_id() -> ItemId {
    ItemId::parse("TC-100").expect("an item id")
}

pub fn stock_count(node: &NodeId, item: &ItemId, quantity: u64) -> StockCount {
    StockCount { node_id: node.clone(), item_id: item.clone(), quantity }
}

pub fn dispatcher() -> Principal {
    Principal {
        username: name("disp"),
        role: Role::Dispatcher,
        device_id: DeviceId::parse("desk").expect("a device id"),
        session_id: uuid::Uuid::nil(),
        node_id: None,
        customer_id: None,
    }
}

pub fn sync_of(courier: &str) -> DeviceSync {
    DeviceSync {
        device_id: DeviceId::parse(format!("dev-{courier}")).expect("a device id"),
        username: name(courier),
        last_sync_at: now(),
        reported_queued: Some(1),
        queued_since: None,
    }
}

/// A draft of order `i` (customers in turn), judged and kept by the order service.
pub async fn draft(store: &dyn Store, i: usize, quantity: i128) -> Draft {
    let raw = RawOrder {
        customer_id: Some(format!("C-{}", 1 + i % CUSTOMERS)),
        item_id: Some("TC-100".into()),
        quantity: RawQuantity::Integer(quantity),
        shape_problems: Vec::new(),
    };
    orders::place_draft(store, &dispatcher(), &raw, DRAFT_TTL).await.expect("a valid order")
}

/// `count` orders of `quantity` placed and confirmed, one after the other.
pub async fn orders_for(store: &dyn Store, count: usize, quantity: i128) {
    for i in 0..count {
        let draft = draft(store, i, quantity).await;
        orders::confirm(store, &dispatcher(), &draft.order_id).await.expect("a fresh draft confirms");
    }
}

/// `count` orders of `quantity`, then one planning run.
pub async fn planned(store: &dyn Store, count: usize, quantity: i128) {
    orders_for(store, count, quantity).await;
    store.plan_pending(now()).await.expect("planning runs");
}

/// Runs `step(store, i)` for each `i` in `0..n`, each on a task of its own, all
/// released together; their answers, in order of `i`.
pub async fn at_once<T, F, Fut>(store: &Arc<dyn Store>, n: usize, step: F) -> Vec<T>
where
    F: Fn(Arc<dyn Store>, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (work, start) = (step(Arc::clone(store), i), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                work.await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(task.await.expect("a concurrent step"));
    }
    answers
}

/// The open deliveries a courier holds, in receipt order.
pub async fn held(store: &dyn Store, courier: &str) -> Vec<Delivery> {
    let query = DeliveryQuery { open_only: true, assignee: Some(name(courier)), limit: ALL, ..Default::default() };
    store.deliveries(&query).await.expect("deliveries read")
}

pub async fn assign(store: &dyn Store, delivery: &Delivery, courier: &str) -> Delivery {
    let target = CourierAccount { username: name(courier), role: Role::Expediter, node_id: Some(node_id("B1")) };
    match store.assign_delivery(&delivery.delivery_id, &dispatcher(), &target, now()).await {
        Ok(Step::Done(delivery)) => delivery,
        other => panic!("{} is not assigned to {courier}: {other:?}", delivery.delivery_id),
    }
}

pub async fn issue(store: &dyn Store, delivery: &Delivery, leg: usize) -> Delivery {
    match store.issue_leg(&delivery.delivery_id.leg(leg), now()).await {
        Ok(Step::Done(delivery)) => delivery,
        other => panic!("leg {leg} of {} is not issued: {other:?}", delivery.delivery_id),
    }
}

pub fn delivered(delivery: &Delivery) -> Confirmation {
    Confirmation::delivered(delivery.delivery_id.clone(), delivery.version, delivery.quantity, "Front desk")
}

pub fn failed(delivery: &Delivery) -> Confirmation {
    Confirmation {
        outcome: Outcome::Failed,
        reason: Some(FailureReason::CustomerAbsent),
        quantity: 0,
        recipient: None,
        ..delivered(delivery)
    }
}

pub async fn push(store: &dyn Store, courier: &str, batch: Vec<Confirmation>) -> Vec<PushOutcome> {
    let sent = batch.len();
    let outcomes = store
        .push_confirmations(sync_of(courier), batch.into_iter().map(Pushed::from).collect())
        .await
        .expect("the push is stored");
    assert_eq!(outcomes.len(), sent, "one outcome per confirmation sent");
    outcomes
}

/// A courier's feed from `cursor` to its end, `limit` changes a read: the pages
/// and the last cursor. Checks what every read promises on the way.
pub async fn read_feed(
    store: &dyn Store,
    courier: &str,
    mut cursor: u64,
    limit: usize,
) -> (Vec<Vec<DeliveryCard>>, u64) {
    let mut pages = Vec::new();
    for _ in 0..ALL {
        let (entries, last, more) = store.assignment_changes(&name(courier), cursor, limit).await.expect("a pull");
        assert!(entries.len() <= limit, "a read of at most {limit} changes returned {}", entries.len());
        if entries.is_empty() {
            assert!(!more && last == cursor, "an empty read ends the feed where it started ({cursor}, {last}, {more})");
        } else {
            assert!(last > cursor, "a read with changes moves the cursor on ({cursor} to {last})");
        }
        cursor = last;
        pages.push(entries.into_iter().map(|entry| entry.delivery).collect());
        if !more {
            return (pages, cursor);
        }
    }
    panic!("{courier}'s feed never ended");
}

/// Pages read one after the other, as one read would give them: each delivery
/// once, at the place of its latest change.
pub fn latest_of(pages: Vec<Vec<DeliveryCard>>) -> Vec<DeliveryCard> {
    let mut cards: Vec<DeliveryCard> = Vec::new();
    for card in pages.into_iter().flatten() {
        cards.retain(|seen| seen.delivery_id != card.delivery_id);
        cards.push(card);
    }
    cards
}

pub fn ids(cards: &[DeliveryCard]) -> Vec<DeliveryId> {
    cards.iter().map(|card| card.delivery_id.clone()).collect()
}

pub async fn all_receipts(store: &dyn Store) -> Vec<Receipt> {
    store.receipts(&ReceiptQuery { limit: ALL, ..Default::default() }).await.expect("receipts read")
}

pub async fn balance(store: &dyn Store, node: &str) -> Balance {
    let stock = store.node_stock(&node_id(node)).await.expect("stock reads");
    stock.into_iter().find(|(item, _)| *item == item_id()).map(|(_, balance)| balance).unwrap_or_default()
}

/// Everything a client can see of the store, to tell whether a step changed anything.
#[derive(Debug)]
pub struct Observed {
    pub nodes: Vec<Node>,
    pub items: Vec<Item>,
    pub customers: Vec<(Customer, CustomerAccount)>,
    pub accounts: Vec<Account>,
    pub receipts: Vec<Receipt>,
    pub deliveries: Vec<Delivery>,
    pub ledger: Vec<LedgerEntry>,
    pub balances: Vec<(NodeId, ItemId, Balance)>,
    /// Each courier's whole feed, and its end.
    pub feeds: Vec<(Vec<DeliveryCard>, u64)>,
    pub rejection_logs: Vec<RejectionLog>,
}

pub async fn observe(store: &dyn Store) -> Observed {
    let known = store.known_network().await.expect("the network reads");
    let mut node_ids: Vec<NodeId> = known.nodes.keys().cloned().collect();
    node_ids.sort();
    let mut nodes = Vec::new();
    for id in node_ids {
        let node = store.node(&id).await.expect("a node reads").expect("a known node exists");
        assert_eq!(Some(&node.kind), known.nodes.get(&id), "the known network and the node agree");
        nodes.push(node);
    }
    let mut customer_ids: Vec<CustomerId> = known.customers.into_iter().collect();
    customer_ids.sort();
    let mut customers = Vec::new();
    for id in customer_ids {
        let customer = store.customer(&id).await.expect("a customer reads").expect("a known customer exists");
        customers.push((customer, store.customer_account(&id).await.expect("an account reads")));
    }
    let mut feeds = Vec::new();
    for courier in [EXP1, EXP2] {
        let (pages, end) = read_feed(store, courier, 0, ALL).await;
        feeds.push((latest_of(pages), end));
    }
    let (ledger, balances) = store.stock_snapshot().await.expect("the stock reads");
    Observed {
        nodes,
        items: store.items().await.expect("items read"),
        customers,
        accounts: store.accounts().await.expect("accounts read"),
        receipts: all_receipts(store).await,
        deliveries: store.deliveries(&DeliveryQuery { limit: ALL, ..Default::default() }).await.expect("deliveries"),
        ledger,
        balances,
        feeds,
        rejection_logs: store.rejection_logs().await.expect("rejection logs read"),
    }
}

/// Asserts that the store looks as it did, naming each part that changed.
pub async fn assert_unchanged(store: &dyn Store, before: &Observed, why: &str) {
    let after = observe(store).await;
    macro_rules! compare {
        ($($part:ident),+) => {$(
            assert!(
                after.$part == before.$part,
                "{why}: the {} changed\nbefore: {:?}\nafter: {:?}",
                stringify!($part), before.$part, after.$part
            );
        )+};
    }
    compare!(nodes, items, customers, accounts, receipts, deliveries, ledger, balances, feeds, rejection_logs);
}

/// The ledger, read with the balances as of one moment, replays exactly to
/// them, never going negative; and every reserved unit belongs to one open delivery.
pub async fn assert_stock_balanced(store: &dyn Store) -> (Vec<LedgerEntry>, Vec<(NodeId, ItemId, Balance)>) {
    let (ledger, balances) = store.stock_snapshot().await.expect("the stock reads");
    assert!(
        ledger.windows(2).all(|pair| pair[0].seq < pair[1].seq),
        "the ledger reads in sequence order, each line once"
    );
    assert_eq!(stock::audit(&ledger, &balances), Ok(vec![]), "the ledger replays to the stored stock");
    let open = DeliveryQuery { open_only: true, limit: ALL, ..Default::default() };
    let promised: u64 = store.deliveries(&open).await.expect("deliveries").iter().map(|d| u64::from(d.quantity)).sum();
    let reserved: u64 = balances.iter().map(|(_, _, balance)| balance.reserved).sum();
    assert_eq!(reserved, promised, "every reserved unit is promised to one open delivery");
    (ledger, balances)
}
