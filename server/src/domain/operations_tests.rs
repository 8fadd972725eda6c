//! The state-changing rules together, over an in-memory copy of what a store
//! keeps: for any sequence of planning runs, goods receipts, leg issues,
//! reassignments, pushed confirmations (full and short, failed, right, stale,
//! replayed, conflicting), cancellations (by the dispatcher or the customer)
//! and reversals on random networks, applying the change sets the domain
//! returns keeps the books straight: stock never negative and the ledger
//! replaying to the balances, goods neither made nor lost, every reservation
//! held by exactly one open delivery, each receipt's delivered quantity the
//! units its deliveries handed over net of reversals (never more than
//! ordered), a cancelled delivery never delivered, a confirmation id's first
//! outcome never rewritten, every courier's load equal to its open deliveries.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use handover_shared::{sync::Confirmation, CustomerId, DeviceId, ItemId, NodeId, Role, Username};
use proptest::prelude::*;
use time::OffsetDateTime;

use super::{
    access::Principal,
    changes::{ChangeSet, Step, StockBook, StockLine},
    confirmations::{self, FirstOutcome, PushInputs, PushOutcome, PushReads, Pusher, SeenConfirmation},
    corrections::{self, Correction, CorrectionInputs},
    network::{Customer, Item},
    orders::{self, Confirmed, CustomerAccount, Draft, Receipt, ValidOrder, DRAFT_TTL},
    shipments::{self, CascadeNodes, CourierAccount, Delivery, PlanInputs, PlanResult},
    stock::{self, Balance, LedgerEntry},
};

const EXPEDITERS: [(&str, &str); 3] = [("e1", "B1"), ("e2", "B1"), ("e3", "B2")];
const SERVICEMEN: [&str; 2] = ["s1", "s2"];
const ITEMS: [&str; 2] = ["TA", "TB"];
const NODES: [&str; 5] = ["MFR", "MW", "B1", "B2", "S1"];

fn user(raw: &str) -> Username {
    Username::parse(raw).expect("a username")
}

fn node(raw: &str) -> NodeId {
    NodeId::parse(raw).expect("a node id")
}

fn item_id(raw: &str) -> ItemId {
    ItemId::parse(raw).expect("an item id")
}

/// What a store keeps, in memory, written only through [`Books::apply`].
#[derive(Default)]
struct Books {
    receipts: BTreeMap<u64, Receipt>,
    deliveries: BTreeMap<u64, Delivery>,
    balances: BTreeMap<(NodeId, ItemId), Balance>,
    ledger: Vec<LedgerEntry>,
    loads: HashMap<Username, i64>,
    seen: HashMap<String, SeenConfirmation>,
    accounts: HashMap<CustomerId, CustomerAccount>,
    /// Units that left the network to customers, by delivery, net of the
    /// units a reversal took back.
    handed_over: BTreeMap<u64, i64>,
    /// Deliveries once seen cancelled.
    cancelled: BTreeSet<u64>,
    received: u64,
}

impl Books {
    fn stock(&self, keys: impl IntoIterator<Item = (NodeId, ItemId)>) -> StockBook {
        StockBook::new(keys.into_iter().map(|(node, item)| {
            let balance = self.balances.get(&(node.clone(), item.clone())).copied().unwrap_or_default();
            (node, item, balance)
        }))
    }

    fn apply(&mut self, changes: ChangeSet) -> Result<(), TestCaseError> {
        for receipt in changes.receipts {
            self.receipts.insert(receipt.after.seq, receipt.after);
        }
        for delivery in changes.deliveries {
            let seq = delivery.after.delivery_id.number().expect("numbered");
            if self.cancelled.contains(&seq) {
                prop_assert_eq!(delivery.after.state, shipments::DeliveryState::Cancelled, "cancelled stays cancelled");
            }
            if delivery.after.state == shipments::DeliveryState::Cancelled {
                self.cancelled.insert(seq);
            }
            self.deliveries.insert(seq, delivery.after);
        }
        for (courier, delta) in changes.courier_loads {
            *self.loads.entry(courier).or_default() += delta;
        }
        for (node, item, balance) in changes.balances {
            self.balances.insert((node, item), balance);
        }
        for line in changes.ledger {
            match &line.movement {
                stock::Movement::HandOver { leg_id } => {
                    let seq = leg_id.split().and_then(|(delivery, _)| delivery.number()).expect("a leg of a delivery");
                    *self.handed_over.entry(seq).or_default() -= line.on_hand_delta;
                }
                stock::Movement::TakeBack { delivery_id } => {
                    let seq = delivery_id.number().expect("a numbered delivery");
                    *self.handed_over.entry(seq).or_default() -= line.on_hand_delta;
                }
                _ => {}
            }
            let seq = self.ledger.len() as u64 + 1;
            self.ledger.push(line.numbered(seq));
        }
        for seen in changes.confirmations {
            prop_assert!(!self.seen.contains_key(&seen.confirmation_id), "{} remembered twice", seen.confirmation_id);
            self.seen.insert(seen.confirmation_id.clone(), seen);
        }
        for (customer, account) in changes.customer_accounts {
            self.accounts.insert(customer, account);
        }
        Ok(())
    }

    /// The invariants every sequence of steps keeps.
    fn check(&self, initial: u64) -> Result<(), TestCaseError> {
        let stored: Vec<_> = self.balances.iter().map(|((n, i), b)| (n.clone(), i.clone(), *b)).collect();
        let mismatches = stock::audit(&self.ledger, &stored);
        prop_assert_eq!(mismatches, Ok(Vec::new()), "the ledger replays to the balances");
        for balance in self.balances.values() {
            prop_assert!(balance.reserved <= balance.on_hand, "{balance:?}");
        }
        let on_hand: u64 = self.balances.values().map(|b| b.on_hand).sum();
        let handed: i64 = self.handed_over.values().sum();
        prop_assert_eq!(
            i64::try_from(on_hand).expect("small") + handed,
            i64::try_from(initial + self.received).expect("small"),
            "goods are neither made nor lost"
        );
        // Every reserved unit is held by one open delivery, where its goods are now.
        let mut held: BTreeMap<(NodeId, ItemId), u64> = BTreeMap::new();
        for delivery in self.deliveries.values().filter(|d| d.is_open()) {
            *held.entry((delivery.goods_at().clone(), delivery.item_id.clone())).or_default() +=
                u64::from(delivery.quantity);
        }
        for (key, balance) in &self.balances {
            prop_assert_eq!(balance.reserved, held.get(key).copied().unwrap_or_default(), "reserved at {:?}", key);
        }
        let mut by_receipt: BTreeMap<u64, Vec<(u64, &Delivery)>> = BTreeMap::new();
        for (number, delivery) in &self.deliveries {
            let handed = self.handed_over.get(number).copied().unwrap_or_default();
            prop_assert!(handed >= 0, "{} took back more than it handed over", delivery.delivery_id);
            let delivered = delivery.state == shipments::DeliveryState::Delivered;
            let standing = delivery.standing_hand_over().map_or(0, |attempt| i64::from(attempt.quantity));
            prop_assert_eq!(
                handed,
                if delivered { standing } else { 0 },
                "{} hands over what stands",
                delivery.delivery_id
            );
            let seq = delivery.receipt_id.seq().expect("a numbered receipt");
            by_receipt.entry(seq).or_default().push((u64::try_from(handed).expect("not negative"), delivery));
        }
        for (seq, receipt) in &self.receipts {
            let deliveries = by_receipt.get(seq).map(Vec::as_slice).unwrap_or_default();
            let handed: u64 = deliveries.iter().map(|(handed, _)| handed).sum();
            prop_assert_eq!(
                u64::from(receipt.delivered_quantity),
                handed,
                "{} counts what was handed over",
                receipt.receipt_id
            );
            prop_assert!(receipt.delivered_quantity <= receipt.quantity, "never more than ordered");
            prop_assert_eq!(receipt.delivered, receipt.delivered_quantity == receipt.quantity, "the Delivered flag");
            prop_assert!(deliveries.iter().filter(|(_, d)| d.is_open()).count() <= 1, "one open delivery at most");
            if receipt.cancellation.is_some() {
                prop_assert!(deliveries.iter().all(|(_, d)| !d.is_open()), "a cancelled receipt has nothing open");
            }
            if let Some(proof) = &receipt.proof {
                let first = self.seen.get(&proof.confirmation_id).map(|seen| &seen.outcome);
                prop_assert_eq!(first, Some(&FirstOutcome::Accepted), "the proof is an accepted confirmation");
            }
        }
        let mut open: HashMap<&Username, i64> = HashMap::new();
        for delivery in self.deliveries.values().filter(|d| d.is_open()) {
            if let Some(courier) = &delivery.assignee {
                *open.entry(courier).or_default() += 1;
            }
        }
        for (courier, load) in &self.loads {
            prop_assert_eq!(*load, open.get(courier).copied().unwrap_or_default(), "load of {}", courier);
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Action {
    Plan,
    GoodsReceipt { node: usize, item: usize, quantity: u32 },
    Issue { delivery: usize, leg: usize },
    Assign { delivery: usize, courier: usize },
    Push { delivery: usize, courier: usize, failed: bool, short: u32, stale: bool, reuse: Option<usize> },
    Cancel { delivery: usize },
    CancelReceipt { receipt: usize, by_customer: bool },
    Reverse { delivery: usize },
}

fn steps() -> impl Strategy<Value = Action> {
    prop_oneof![
        1 => Just(Action::Plan),
        1 => (0..NODES.len(), 0..ITEMS.len(), 1..6u32)
            .prop_map(|(node, item, quantity)| Action::GoodsReceipt { node, item, quantity }),
        2 => (0..12usize, 0..3usize).prop_map(|(delivery, leg)| Action::Issue { delivery, leg }),
        1 => (0..12usize, 0..5usize).prop_map(|(delivery, courier)| Action::Assign { delivery, courier }),
        4 => (0..12usize, 0..6usize, any::<bool>(), 0..3u32, any::<bool>(), proptest::option::weighted(0.2, 0..8usize))
            .prop_map(|(delivery, courier, failed, short, stale, reuse)| Action::Push {
                delivery, courier, failed, short, stale, reuse
            }),
        1 => (0..12usize).prop_map(|delivery| Action::Cancel { delivery }),
        1 => (0..12usize, any::<bool>()).prop_map(|(receipt, by_customer)| Action::CancelReceipt { receipt, by_customer }),
        2 => (0..12usize).prop_map(|delivery| Action::Reverse { delivery }),
    ]
}

#[derive(Debug, Clone)]
struct World {
    customers: Vec<Customer>,
    has_master: bool,
    stock: Vec<(usize, usize, u64)>,
    orders: Vec<(usize, usize, u32)>,
    steps: Vec<Action>,
}

fn worlds() -> impl Strategy<Value = World> {
    let customer = (any::<bool>(), 0..SERVICEMEN.len());
    (
        proptest::collection::vec(customer, 1..4),
        any::<bool>(),
        proptest::collection::vec((0..NODES.len(), 0..ITEMS.len(), 0..12u64), 0..8),
        proptest::collection::vec((0..3usize, 0..ITEMS.len(), 1..5u32), 1..12),
        proptest::collection::vec(steps(), 1..40),
    )
        .prop_map(|(customers, has_master, stock, orders, steps)| World {
            customers: customers
                .into_iter()
                .enumerate()
                .map(|(i, (swapped, _))| {
                    let (b1, b2) = if swapped { ("B2", "B1") } else { ("B1", "B2") };
                    Customer {
                        id: CustomerId::parse(format!("C{i}")).expect("a customer id"),
                        name: format!("Office {i}"),
                        branch_1: node(b1),
                        branch_2: node(b2),
                        seller_id: node("S1"),
                    }
                })
                .collect(),
            has_master,
            stock,
            orders,
            steps,
        })
}

fn dispatcher() -> Principal {
    super::fixtures::principal(Role::Dispatcher, None)
}

fn couriers() -> Vec<CourierAccount> {
    let expediters = EXPEDITERS.iter().map(|(name, branch)| CourierAccount {
        username: user(name),
        role: Role::Expediter,
        node_id: Some(node(branch)),
    });
    let servicemen = SERVICEMEN.iter().map(|name| CourierAccount {
        username: user(name),
        role: Role::Serviceman,
        node_id: Some(node("S1")),
    });
    expediters.chain(servicemen).collect()
}

/// Runs a world's steps through the domain, checking the books after each.
fn run(world: &World) -> Result<(), TestCaseError> {
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut books = Books::default();
    let mut initial = 0;
    for &(n, i, quantity) in &world.stock {
        // The network's stock counts, as an import records them.
        let key = (node(NODES[n]), item_id(ITEMS[i]));
        let delta = i64::try_from(quantity).expect("small");
        let seq = books.ledger.len() as u64 + 1;
        let count = StockLine {
            at: now,
            node_id: key.0.clone(),
            item_id: key.1.clone(),
            on_hand_delta: delta,
            reserved_delta: 0,
            movement: stock::Movement::StockCount,
        };
        books.ledger.push(count.numbered(seq));
        books.balances.entry(key).or_default().on_hand += quantity;
        initial += quantity;
    }
    for (seq, &(customer, item, quantity)) in (1u64..).zip(&world.orders) {
        let customer = &world.customers[customer % world.customers.len()];
        // Placed as a customer would: a draft, confirmed under the next number.
        let item = Item {
            id: item_id(ITEMS[item]),
            name: ITEMS[item].into(),
            collectable: true,
            max_per_order: 20,
            discontinued: false,
        };
        let order = ValidOrder { customer_id: customer.id.clone(), item, quantity };
        let order_id = handover_shared::OrderId::parse(format!("o{seq}")).expect("an order id");
        let draft = Draft::new(order, order_id, &dispatcher(), now, DRAFT_TTL);
        let account = books.accounts.get(&customer.id).cloned().unwrap_or_default();
        let (confirmed, changes) = orders::confirm(&draft, seq, account, super::fixtures::handover_code(), now)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(matches!(confirmed, Confirmed::New(_)));
        books.apply(changes)?;
    }
    let customers: HashMap<CustomerId, Customer> = world.customers.iter().map(|c| (c.id.clone(), c.clone())).collect();
    let master = world.has_master.then(|| node("MW"));
    let manufacturer = Some(node("MFR"));
    let couriers = couriers();
    let device = DeviceId::parse("hh").expect("a device id");
    let mut sent: Vec<Confirmation> = Vec::new();
    for step in &world.steps {
        let delivery_at = |index: usize| books.deliveries.values().nth(index % books.deliveries.len().max(1)).cloned();
        match step.clone() {
            Action::Plan => {
                let pending: Vec<Receipt> = books.receipts.values().filter(|r| r.awaits_planning()).cloned().collect();
                for receipt in pending {
                    let nodes = CascadeNodes::for_customer(
                        &customers[&receipt.customer_id],
                        master.as_ref(),
                        manufacturer.as_ref(),
                    );
                    let stock = books.stock(nodes.all().map(|n| (n.clone(), receipt.item_id.clone())));
                    let expediters: Vec<(Username, NodeId, u64)> = EXPEDITERS
                        .iter()
                        .map(|(name, branch)| {
                            let load = books.loads.get(&user(name)).copied().unwrap_or_default();
                            (user(name), node(branch), u64::try_from(load).unwrap_or_default())
                        })
                        .collect();
                    let inputs = PlanInputs { receipt: receipt.clone(), nodes: &nodes, stock, expediters: &expediters };
                    let (result, changes) =
                        shipments::plan_receipt(inputs, now).map_err(|e| TestCaseError::fail(e.0))?;
                    if let PlanResult::Planned(delivery) = &result {
                        prop_assert_eq!(delivery.quantity, receipt.quantity);
                    }
                    books.apply(changes)?;
                }
            }
            Action::GoodsReceipt { node: n, item, quantity } => {
                let (at, item) = (node(NODES[n]), item_id(ITEMS[item]));
                let stock = books.stock([(at.clone(), item.clone())]);
                let (_, changes) =
                    shipments::goods_receipt(&at, &item, quantity, stock, now).map_err(|e| TestCaseError::fail(e.0))?;
                books.received += u64::from(quantity);
                books.apply(changes)?;
            }
            Action::Issue { delivery, leg } => {
                let Some(delivery) = delivery_at(delivery) else { continue };
                let stock = books.stock(delivery.stock_nodes().map(|n| (n.clone(), delivery.item_id.clone())));
                if let Step::Done((_, changes)) =
                    shipments::issue_leg(delivery, leg, stock, now).map_err(|e| TestCaseError::fail(e.0))?
                {
                    books.apply(changes)?;
                }
            }
            Action::Assign { delivery, courier } => {
                let Some(delivery) = delivery_at(delivery) else { continue };
                if let Ok((_, changes)) =
                    shipments::assign(delivery, &dispatcher(), &couriers[courier % couriers.len()], now)
                {
                    books.apply(changes)?;
                }
            }
            Action::Push { delivery, courier, failed, short, stale, reuse } => {
                let Some(delivery) = delivery_at(delivery) else { continue };
                // Mostly the courier holding it; sometimes anyone.
                let uploader = match (&delivery.assignee, courier) {
                    (Some(holder), 0..=3) => holder.clone(),
                    _ => couriers[courier % couriers.len()].username.clone(),
                };
                let version = if stale { delivery.version.saturating_sub(1).max(1) } else { delivery.version };
                let quantity = delivery.quantity.saturating_sub(short).max(1);
                let mut confirmation =
                    Confirmation::delivered(delivery.delivery_id.clone(), version, quantity, "Front desk");
                confirmation.empties_collected = short;
                if failed {
                    confirmation.outcome = handover_shared::sync::Outcome::Failed;
                    confirmation.reason = Some(handover_shared::sync::FailureReason::Refused);
                    confirmation.recipient = None;
                    confirmation.quantity = 0;
                    confirmation.empties_collected = 0;
                }
                if let Some(earlier) = reuse.and_then(|i| sent.get(i % sent.len().max(1))) {
                    // A retry, or another capture under an id already used.
                    if courier % 2 == 0 {
                        confirmation = earlier.clone();
                    } else {
                        confirmation.confirmation_id = earlier.confirmation_id.clone();
                    }
                }
                let seen = books.seen.get(&confirmation.confirmation_id).cloned();
                let target = confirmation.delivery_id.number().and_then(|seq| books.deliveries.get(&seq)).cloned();
                let reads = PushReads::of(&confirmation, target.as_ref());
                let inputs = PushInputs {
                    chain: None,
                    receipt: target
                        .as_ref()
                        .and_then(|d| d.receipt_id.seq())
                        .filter(|_| reads.receipt)
                        .map(|seq| books.receipts[&seq].clone()),
                    stock: books.stock(reads.stock.iter().cloned()),
                    account: reads.account.as_ref().and_then(|c| books.accounts.get(c)).cloned(),
                    seen: seen.clone(),
                    delivery: target,
                };
                let digest = confirmations::digest(&confirmation);
                let by = Pusher { uploader: &uploader, device: &device, received_at: now };
                let (outcome, changes) =
                    confirmations::push(&confirmation, &digest, &super::chain::SignatureCheck::Unsigned, by, inputs)
                        .map_err(|e| TestCaseError::fail(e.0))?;
                if let Some(first) = &seen {
                    // Whoever sends it again, with whatever content: the first outcome, or a refusal that changes nothing.
                    prop_assert!(changes.is_empty(), "a seen id changed something: {changes:?}");
                    if first.digest == digest {
                        prop_assert_eq!(outcome, PushOutcome::replay(&first.outcome));
                    }
                }
                books.apply(changes)?;
                sent.push(confirmation);
            }
            Action::Cancel { delivery } => {
                let Some(delivery) = delivery_at(delivery) else { continue };
                let correction = Correction::CancelDelivery(delivery.delivery_id.clone());
                correct(&mut books, &correction, &dispatcher(), now)?;
            }
            Action::CancelReceipt { receipt, by_customer } => {
                let Some(receipt) = books.receipts.values().nth(receipt % books.receipts.len().max(1)).cloned() else {
                    continue;
                };
                let by = if by_customer {
                    super::fixtures::principal(Role::Customer, Some(receipt.customer_id.as_str()))
                } else {
                    dispatcher()
                };
                correct(&mut books, &Correction::CancelReceipt(receipt.receipt_id), &by, now)?;
            }
            Action::Reverse { delivery } => {
                let Some(delivery) = delivery_at(delivery) else { continue };
                correct(&mut books, &Correction::Reverse(delivery.delivery_id.clone()), &dispatcher(), now)?;
            }
        }
        books.check(initial)?;
    }
    Ok(())
}

/// Reads what a correction needs as a backend does, and applies what it decides.
fn correct(
    books: &mut Books,
    correction: &Correction,
    by: &Principal,
    now: OffsetDateTime,
) -> Result<(), TestCaseError> {
    // Read as a backend does, by the domain's plan.
    let delivery_of = |id: &handover_shared::DeliveryId| id.number().and_then(|n| books.deliveries.get(&n)).cloned();
    let named = correction.delivery().and_then(delivery_of);
    if correction.delivery().is_some() && named.is_none() {
        return Ok(());
    }
    let receipt = CorrectionInputs::receipt_to_read(correction, named.as_ref())
        .and_then(|id| id.seq())
        .and_then(|seq| books.receipts.get(&seq))
        .cloned();
    let Some(receipt) = receipt else { return Ok(()) };
    let latest = CorrectionInputs::latest_to_read(named.as_ref(), &receipt).and_then(|id| delivery_of(&id));
    let account = books.accounts.get(&receipt.customer_id).cloned();
    let mut inputs = CorrectionInputs::of(correction, named, receipt, latest);
    inputs.stock = books.stock(inputs.stock_to_read());
    inputs.account = account;
    match corrections::correct(correction, by, "a test", inputs, now).map_err(|e| TestCaseError::fail(e.0))? {
        Step::Done((_, changes)) => books.apply(changes),
        Step::Refused(_) | Step::NotFound => Ok(()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_steps_keeps_the_books_straight(world in worlds()) {
        run(&world)?;
    }
}
