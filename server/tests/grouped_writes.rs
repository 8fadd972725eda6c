//! The store groups writes into shared transactions: concurrent pushes (whatever
//! batches are waiting form one group) and planning (chunks of receipts). Each
//! request must still get exactly its own outcomes, in order, every delivery be
//! applied once, and planning across chunk boundaries reserve each unit once.

use std::collections::HashMap;

use handover_server::{
    domain::{
        access::Principal,
        confirmations::{DeviceSync, PushOutcome, Pushed, RejectCode},
        orders::{RawOrder, RawQuantity, DRAFT_TTL},
        shipments::CourierAccount,
        stock,
    },
    import, orders,
    store::{sled::SledStore, Step, Store},
};
use handover_shared::{api::NetworkFile, sync::Confirmation, DeliveryId, DeviceId, NodeId, ReceiptId, Role, Username};
use time::OffsetDateTime;
use uuid::Uuid;

const COURIERS: [&str; 4] = ["exp-1", "exp-2", "exp-3", "exp-4"];
const ORDERS: usize = 48;
const STOCK: u64 = 1_000;

fn network_with_stock(stock: u64) -> NetworkFile {
    let accounts = COURIERS
        .iter()
        .map(|c| serde_json::json!({"username": c, "password": "a-password", "role": "expediter", "node_id": "B1"}));
    serde_json::from_value(serde_json::json!({
        "nodes": [
            {"id": "MFR", "kind": "manufacturer", "name": "Plant"},
            {"id": "MW", "kind": "master_warehouse", "name": "Central"},
            {"id": "B1", "kind": "branch_warehouse", "name": "North"},
            {"id": "B2", "kind": "branch_warehouse", "name": "South"},
            {"id": "S1", "kind": "seller", "name": "Rep"}
        ],
        "items": [{"id": "TC-100", "name": "Toner", "collectable": false, "max_per_order": 20, "discontinued": false}],
        "stock": [{"node_id": "B1", "item_id": "TC-100", "quantity": stock}],
        "customers": (0..6).map(|i| serde_json::json!({
            "id": format!("C-{i}"), "name": format!("Office {i}"), "branch_1": "B1", "branch_2": "B2", "seller_id": "S1"
        })).collect::<Vec<_>>(),
        "accounts": std::iter::once(serde_json::json!(
            {"username": "disp", "password": "a-password", "role": "dispatcher"}
        )).chain(accounts).collect::<Vec<_>>()
    }))
    .expect("the test network parses")
}

fn delivered(delivery: &handover_server::domain::shipments::DeliveryCard) -> Confirmation {
    Confirmation::delivered(delivery.delivery_id.clone(), delivery.version, delivery.quantity, "Front desk")
}

fn sync_of(courier: &str) -> DeviceSync {
    DeviceSync {
        device_id: DeviceId::parse(format!("dev-{courier}")).expect("a device id"),
        username: Username::parse(courier).expect("a username"),
        last_sync_at: OffsetDateTime::now_utc(),
        reported_queued: Some(1),
        queued_since: None,
    }
}

fn dispatcher() -> Principal {
    Principal {
        username: Username::parse("disp").expect("a username"),
        role: Role::Dispatcher,
        device_id: DeviceId::parse("desk").expect("a device id"),
        session_id: Uuid::nil(),
        node_id: None,
        customer_id: None,
    }
}

/// Places `count` orders through the real order path; order `i` asks for `quantity(i)`.
async fn place_orders(store: &SledStore, count: usize, quantity: impl Fn(usize) -> i128) {
    let dispatcher = dispatcher();
    for i in 0..count {
        let raw = RawOrder {
            customer_id: Some(format!("C-{}", i % 6)),
            item_id: Some("TC-100".into()),
            quantity: RawQuantity::Integer(quantity(i)),
            shape_problems: Vec::new(),
        };
        let draft = orders::place_draft(store, &dispatcher, &raw, DRAFT_TTL).await.expect("a valid order");
        orders::confirm(store, &dispatcher, &draft.order_id).await.expect("a fresh draft confirms");
    }
}

/// A fresh store with the test network (`stock` units at B1), `count` orders
/// placed (order `i` for `quantity(i)`) and one planning run done. The
/// directory must outlive the store.
async fn planned_store(stock: u64, count: usize, quantity: impl Fn(usize) -> i128) -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let store = SledStore::open(dir.path()).expect("a fresh store");
    import::import_network(&store, &network_with_stock(stock)).await.expect("the network imports");
    place_orders(&store, count, quantity).await;
    store.plan_pending(OffsetDateTime::now_utc()).await.expect("planning runs");
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planning_across_chunks_reserves_each_unit_once_in_receipt_order() {
    // More receipts than one planning transaction takes, and stock for two thirds of them.
    const RECEIPTS: usize = 450;
    const UNITS: u64 = 300;
    // One run plans them all, in three transactions (200, 200 and 50 receipts).
    let (_dir, store) = planned_store(UNITS, RECEIPTS, |_| 1).await;
    let mut planned_seqs = Vec::new();
    for courier in COURIERS {
        let username = Username::parse(courier).expect("a username");
        let (entries, _, _) = store.assignment_changes(&username, 0, 1_000).await.expect("a pull");
        planned_seqs.extend(entries.iter().map(|e| e.delivery.delivery_id.number().expect("a numbered id")));
        let load = u64::try_from(entries.len()).expect("a count");
        assert_eq!(load, UNITS / COURIERS.len() as u64, "{courier} got its share, fewest open deliveries first");
    }
    planned_seqs.sort_unstable();
    let first: Vec<u64> = (1..=UNITS).collect();
    assert_eq!(planned_seqs, first, "the first receipts in order got the stock, each once");
    let b1 = store.node_stock(&NodeId::parse("B1").expect("a node id")).await.expect("stock reads");
    let reserved = b1.iter().map(|(_, balance)| balance.reserved).sum::<u64>();
    assert_eq!(reserved, UNITS, "every unit reserved once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_each_get_their_own_outcomes_and_apply_once() {
    let (_dir, store) = planned_store(STOCK, ORDERS, |i| 1 + (i % 3) as i128).await;

    // Each courier pushes its deliveries one by one and two by two from several
    // tasks at once; one confirmation is sent twice, by two tasks in flight
    // together, and one courier quotes another's delivery.
    let mut holdings = HashMap::new();
    for courier in COURIERS {
        let username = Username::parse(courier).expect("a username");
        let (entries, _, _) = store.assignment_changes(&username, 0, 1_000).await.expect("a pull");
        assert!(entries.len() >= 2, "{courier} holds deliveries");
        holdings.insert(courier, entries.into_iter().map(|e| e.delivery).collect::<Vec<_>>());
    }
    let mut requests: Vec<(&str, Vec<Confirmation>)> = Vec::new();
    let mut expected: HashMap<ReceiptId, String> = HashMap::new();
    for courier in COURIERS {
        for (i, pair) in holdings[courier].chunks(2).enumerate() {
            let batch: Vec<Confirmation> = pair.iter().map(delivered).collect();
            for (delivery, confirmation) in pair.iter().zip(&batch) {
                expected.insert(delivery.receipt_id.clone(), confirmation.confirmation_id.clone());
            }
            if i % 2 == 0 {
                requests.push((courier, batch));
            } else {
                requests.extend(batch.into_iter().map(|c| (courier, vec![c])));
            }
        }
    }
    let resent = requests[0].1[0].clone();
    requests.push((requests[0].0, vec![resent.clone()]));
    let foreign = delivered(&holdings[COURIERS[1]][0]);
    requests.push((COURIERS[0], vec![foreign]));

    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(courier, batch)| {
            let store = store.clone();
            tokio::spawn(async move {
                let ids: Vec<String> = batch.iter().map(|c| c.confirmation_id.clone()).collect();
                let outcomes = store
                    .push_confirmations(sync_of(courier), batch.into_iter().map(Pushed::from).collect())
                    .await
                    .expect("the push is stored");
                (ids, outcomes)
            })
        })
        .collect();
    let mut by_id: HashMap<String, Vec<PushOutcome>> = HashMap::new();
    for task in tasks {
        let (ids, outcomes) = task.await.expect("a push task");
        assert_eq!(ids.len(), outcomes.len(), "one outcome per confirmation sent");
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            by_id.entry(id).or_default().push(outcome);
        }
    }

    let resent_outcomes = &by_id[&resent.confirmation_id];
    assert_eq!(resent_outcomes.len(), 2);
    assert!(resent_outcomes.contains(&PushOutcome::Accepted) && resent_outcomes.contains(&PushOutcome::Duplicate));
    let foreign_rejected = by_id.values().flatten().filter(|o| {
        matches!(o, PushOutcome::Rejected { code: RejectCode::NotAssignee | RejectCode::AlreadyDelivered, .. })
    });
    assert_eq!(foreign_rejected.count(), 1, "the foreign confirmation alone is refused");
    let mut handed_over = 0;
    for (receipt_id, confirmation_id) in &expected {
        assert!(by_id[confirmation_id].contains(&PushOutcome::Accepted), "{confirmation_id} was accepted");
        let receipt = store.receipt(receipt_id).await.expect("reads").expect("exists");
        assert!(receipt.delivered, "{receipt_id} is delivered");
        let proof = receipt.proof.expect("a delivered receipt has its proof");
        assert_eq!(&proof.confirmation_id, confirmation_id, "{receipt_id} carries its own confirmation");
        handed_over += u64::from(receipt.quantity);
    }
    assert_eq!(expected.len(), ORDERS, "every receipt was confirmed");
    let b1 = store.node_stock(&NodeId::parse("B1").expect("a node id")).await.expect("stock reads");
    let on_hand = b1.iter().map(|(_, balance)| balance.on_hand).sum::<u64>();
    assert_eq!(on_hand, STOCK - handed_over, "each hand-over left the branch once");
    let syncs = store.device_syncs().await.expect("device syncs read");
    assert_eq!(syncs.len(), COURIERS.len(), "every device's push was recorded with it");
    // The import's stock count is a single-line ledger record; planning and
    // pushes wrote theirs grouped. Read back, they are one ledger in order.
    let (ledger, balances) = store.stock_snapshot().await.expect("the ledger and stock read");
    assert_eq!(ledger.len(), 1 + 2 * ORDERS, "the count, a reservation and a hand-over per receipt");
    assert!(ledger.windows(2).all(|pair| pair[0].seq < pair[1].seq), "in sequence order, each line once");
    assert_eq!(stock::audit(&ledger, &balances), Ok(vec![]), "the ledger replays to the stored stock");
}

/// The ids of what a courier's pull lists, from `cursor`, `page` changes at a
/// time, following the cursors; and the last cursor.
async fn pull_in_pages(store: &SledStore, courier: &Username, cursor: u64, page: usize) -> (Vec<DeliveryId>, u64) {
    let (mut listed, mut cursor) = (Vec::new(), cursor);
    for _ in 0..=ORDERS {
        let (entries, last, more) = store.assignment_changes(courier, cursor, page).await.expect("a pull");
        listed.extend(entries.into_iter().map(|entry| entry.delivery.delivery_id));
        assert!(last > cursor || !more, "a pull with more to come moves the cursor on");
        cursor = last;
        if !more {
            return (listed, cursor);
        }
    }
    panic!("{courier} never reached the end of its feed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_page_through_grouped_feed_records_and_single_ones() {
    // One planning transaction: one feed record per courier, 12 changes each.
    let (_dir, store) = planned_store(STOCK, ORDERS, |_| 1).await;

    let mut cursors = HashMap::new();
    for courier in COURIERS {
        let username = Username::parse(courier).expect("a username");
        let (whole, _) = pull_in_pages(&store, &username, 0, 1_000).await;
        assert_eq!(whole.len(), ORDERS / COURIERS.len(), "{courier} holds its share");
        for page in [1, 5, 7] {
            // Pages end inside the record: each next pull starts there.
            let (paged, cursor) = pull_in_pages(&store, &username, 0, page).await;
            assert_eq!(paged, whole, "{courier} in pages of {page}: each change once, in order");
            cursors.insert(courier, cursor);
        }
    }

    // A dispatcher's reassignment writes single-line records after the grouped ones.
    let (from, to) = (Username::parse(COURIERS[0]).expect("a name"), Username::parse(COURIERS[1]).expect("a name"));
    let (held, _) = pull_in_pages(&store, &from, 0, 1_000).await;
    let moved = held[3].clone();
    let target = CourierAccount { username: to.clone(), role: Role::Expediter, node_id: NodeId::parse("B1").ok() };
    let step = store.assign_delivery(&moved, &dispatcher(), &target, OffsetDateTime::now_utc()).await;
    assert!(matches!(step, Ok(Step::Done(_))), "{step:?}");
    for (courier, expected) in [(&from, "reassigned away"), (&to, "newly assigned")] {
        let cursor = cursors[courier.as_str()];
        let (since, _) = pull_in_pages(&store, courier, cursor, 1).await;
        assert_eq!(since, vec![moved.clone()], "{courier} learns of the delivery {expected}, and of nothing else");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capture_of_a_delivery_in_the_same_batch_meets_it_delivered() {
    // Both are judged in one transaction: the second must see what the first wrote.
    let (_dir, store) = planned_store(STOCK, ORDERS, |_| 2).await;
    let courier = Username::parse(COURIERS[0]).expect("a username");
    let (entries, _, _) = store.assignment_changes(&courier, 0, 1_000).await.expect("a pull");
    let delivery = &entries[0].delivery;
    let (first, mut second) = (delivered(delivery), delivered(delivery));
    second.quantity = 1;
    let outcomes = store
        .push_confirmations(sync_of(COURIERS[0]), vec![first.clone().into(), second.into()])
        .await
        .expect("stored");
    assert_eq!(outcomes[0], PushOutcome::Accepted);
    assert!(matches!(outcomes[1], PushOutcome::Rejected { .. }), "{:?}", outcomes[1]);
    let receipt = store.receipt(&delivery.receipt_id).await.expect("reads").expect("exists");
    assert_eq!(receipt.proof.map(|p| (p.confirmation_id, p.quantity)), Some((first.confirmation_id, 2)));
    let b1 = store.node_stock(&NodeId::parse("B1").expect("a node id")).await.expect("stock reads");
    assert_eq!(b1.iter().map(|(_, balance)| balance.on_hand).sum::<u64>(), STOCK - 2, "handed over once");
}
