//! Shipment processing rules: the stock cascade, the goods-issue legs from the
//! shipping node to the customer, who delivers, and what each step does to the
//! stock ledger. Plain functions over plain data; the store applies their
//! decisions atomically.

use std::collections::HashMap;

use handover_shared::{
    sync::{FailureReason, Outcome},
    CustomerId, DeliveryId, DeviceId, ItemId, LegId, NodeId, NodeKind, ReceiptId, Role, Username,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    access::{Guarded, Principal},
    changes::{ChangeSet, Inconsistent, Step, StockBook},
    network::{Account, Customer, Membership, Node},
    orders::Receipt,
    stock::{Balance, Movement, NegativeStock},
};

/// Where in the cascade a receipt found its stock, in cascade order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Branch1,
    Branch2,
    MasterWarehouse,
    Seller,
    Manufacturer,
}

impl Source {
    pub const CASCADE: [Source; 5] =
        [Source::Branch1, Source::Branch2, Source::MasterWarehouse, Source::Seller, Source::Manufacturer];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Branch1 => "branch_1",
            Source::Branch2 => "branch_2",
            Source::MasterWarehouse => "master_warehouse",
            Source::Seller => "seller",
            Source::Manufacturer => "manufacturer",
        }
    }
}

/// The nodes a customer's cascade visits. The network has at most one master
/// warehouse and one manufacturer; a network without them skips those steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CascadeNodes {
    pub branch_1: NodeId,
    pub branch_2: NodeId,
    pub master: Option<NodeId>,
    pub seller: NodeId,
    pub manufacturer: Option<NodeId>,
}

impl CascadeNodes {
    pub fn for_customer(customer: &Customer, master: Option<&NodeId>, manufacturer: Option<&NodeId>) -> Self {
        CascadeNodes {
            branch_1: customer.branch_1.clone(),
            branch_2: customer.branch_2.clone(),
            master: master.cloned(),
            seller: customer.seller_id.clone(),
            manufacturer: manufacturer.cloned(),
        }
    }

    /// Every node the cascade may visit, in cascade order.
    pub fn all(&self) -> impl Iterator<Item = &NodeId> {
        Source::CASCADE.into_iter().filter_map(|source| self.node(source))
    }

    pub fn node(&self, source: Source) -> Option<&NodeId> {
        match source {
            Source::Branch1 => Some(&self.branch_1),
            Source::Branch2 => Some(&self.branch_2),
            Source::MasterWarehouse => self.master.as_ref(),
            Source::Seller => Some(&self.seller),
            Source::Manufacturer => self.manufacturer.as_ref(),
        }
    }
}

/// The cascade: the first node, in the fixed order, whose available stock covers
/// the whole quantity. `available` reads the stock of the item at a node.
pub fn cascade(
    nodes: &CascadeNodes,
    quantity: u64,
    mut available: impl FnMut(&NodeId) -> u64,
) -> Option<(Source, NodeId)> {
    Source::CASCADE.into_iter().find_map(|source| {
        let node = nodes.node(source)?;
        (available(node) >= quantity).then(|| (source, node.clone()))
    })
}

/// Where a leg goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Destination {
    Node(NodeId),
    Customer(CustomerId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegStatus {
    /// Stock is reserved at `from`, not yet moved.
    Planned,
    /// A transfer leg whose goods left `from` and arrived at the next node.
    Issued,
    /// The last leg, once the delivery to the customer is confirmed.
    Completed,
}

/// One goods issue, in the flow of the goods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    pub leg_id: LegId,
    pub from: NodeId,
    pub to: Destination,
    pub status: LegStatus,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub issued_at: Option<OffsetDateTime>,
}

/// The legs from the shipping node to the customer:
/// branch → customer; master → branch #1 → customer;
/// manufacturer → master → branch #1 → customer; seller → customer.
pub fn plan_legs(delivery: &DeliveryId, source: Source, nodes: &CascadeNodes, customer: &CustomerId) -> Vec<Leg> {
    let mut stops: Vec<NodeId> = Vec::with_capacity(3);
    match source {
        Source::Branch1 => stops.push(nodes.branch_1.clone()),
        Source::Branch2 => stops.push(nodes.branch_2.clone()),
        Source::Seller => stops.push(nodes.seller.clone()),
        Source::MasterWarehouse => stops.extend(nodes.master.iter().cloned().chain([nodes.branch_1.clone()])),
        Source::Manufacturer => {
            stops.extend(nodes.manufacturer.iter().chain(nodes.master.iter()).cloned().chain([nodes.branch_1.clone()]))
        }
    }
    let destinations =
        stops.iter().skip(1).cloned().map(Destination::Node).chain([Destination::Customer(customer.clone())]);
    stops
        .iter()
        .zip(destinations)
        .enumerate()
        .map(|(index, (from, to))| Leg {
            leg_id: delivery.leg(index),
            from: from.clone(),
            to,
            status: LegStatus::Planned,
            issued_at: None,
        })
        .collect()
}

/// Who carries a delivery to the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Carrier {
    /// An expediter of the distributor serving the delivering branch.
    Distributor { branch: NodeId },
    /// Entrusted to the seller, whose account assigns one of its servicemen.
    Seller { seller: NodeId },
}

impl Carrier {
    /// The courier role that may carry it, and the node that courier belongs to.
    pub fn courier(&self) -> (Role, &NodeId) {
        match self {
            Carrier::Distributor { branch } => (Role::Expediter, branch),
            Carrier::Seller { seller } => (Role::Serviceman, seller),
        }
    }
}

/// Expediters are chosen among those serving the delivering branch, fewest open
/// deliveries first; ties go to the first username, so the choice is repeatable.
pub fn choose_courier<'a>(candidates: impl IntoIterator<Item = (&'a Username, u64)>) -> Option<Username> {
    candidates.into_iter().min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0))).map(|(name, _)| name.clone())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Open,
    Delivered,
    Cancelled,
}

/// One (re)assignment, kept forever: the sync needs who was assignee when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Bumped at each (re)assignment; a confirmation names the one it was captured under.
    pub version: u64,
    /// `None` while an entrusted delivery waits for the seller.
    pub assignee: Option<Username>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who decided: `planner`, or the dispatcher or seller account.
    pub by: String,
}

/// An accepted confirmation, kept on its delivery: each attempt at the door,
/// as the dispatcher reviews it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub confirmation_id: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub reason: Option<FailureReason>,
    #[serde(default)]
    pub note: Option<String>,
    /// Units handed over (0 for a failed attempt).
    pub quantity: u32,
    pub empties_collected: u32,
    pub by: Username,
    pub device_id: DeviceId,
    /// The assignment version it was captured under.
    pub version: u64,
    /// The handheld's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// SHA-256 (hex) of the photo taken at the door, uploaded on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo_digest: Option<String>,
    /// The device's signed record, as it arrived; `None` when unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<super::chain::SignedAttempt>,
}

/// Who stepped in, when and why: kept on every record it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intervention {
    pub by: Username,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: String,
}

/// A delivered confirmation undone (the wrong delivery was ticked): its goods
/// went back to the delivering node. Recorded beside it; the confirmation and
/// its ledger lines stay as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    pub delivery_id: DeliveryId,
    pub confirmation_id: String,
    pub quantity: u32,
    pub empties_collected: u32,
    pub intervention: Intervention,
}

/// A delivery: the goods of one receipt, from one node, to its customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: DeliveryId,
    pub receipt_id: ReceiptId,
    pub customer_id: CustomerId,
    pub item_id: ItemId,
    pub quantity: u32,
    pub source: Source,
    pub source_node: NodeId,
    pub legs: Vec<Leg>,
    pub carrier: Carrier,
    pub assignee: Option<Username>,
    pub version: u64,
    pub assignments: Vec<Assignment>,
    pub state: DeliveryState,
    #[serde(with = "time::serde::rfc3339")]
    pub planned_at: OffsetDateTime,
    /// Every accepted confirmation, delivered or failed, in the order received.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub cancellation: Option<Intervention>,
    #[serde(default)]
    pub reversals: Vec<Reversal>,
    /// The delivery whose short hand-over this one carries the rest of.
    #[serde(default)]
    pub follow_up_of: Option<DeliveryId>,
    /// The slow hash of the receipt's handover code, which the courier's
    /// handheld checks the code against offline; copied from the receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_code_hash: Option<String>,
}

/// The part of a stored [`Delivery`] that a courier's pull shows, read from the
/// same record. A pull reads dozens of deliveries, and decoding them was its
/// largest cost; serde skips the fields left out here (the assignment history
/// and the timestamps among them) without building them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeliveryCard {
    pub delivery_id: DeliveryId,
    pub receipt_id: ReceiptId,
    pub customer_id: CustomerId,
    pub item_id: ItemId,
    pub quantity: u32,
    pub source_node: NodeId,
    pub legs: Vec<LegCard>,
    pub assignee: Option<Username>,
    pub version: u64,
    pub state: DeliveryState,
    #[serde(default)]
    pub handover_code_hash: Option<String>,
}

/// What a pull needs of a leg: where it starts and whether it was issued.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LegCard {
    pub from: NodeId,
    pub status: LegStatus,
}

impl DeliveryCard {
    /// As [`Delivery::status`].
    pub fn status(&self) -> DeliveryStatus {
        courier_status(self.state, self.legs.iter().map(|leg| leg.status))
    }

    /// As [`Delivery::delivering_node`].
    pub fn delivering_node(&self) -> &NodeId {
        self.legs.last().map_or(&self.source_node, |leg| &leg.from)
    }
}

/// How a delivery looks to its courier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Upstream legs are not issued yet: the goods are not at the delivering node.
    Upcoming,
    /// The goods are at the delivering node, waiting for the courier.
    Ready,
    Delivered,
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Upcoming => "upcoming",
            DeliveryStatus::Ready => "ready",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a delivery in `state` looks to its courier, given its legs' statuses in
/// order: ready once every transfer leg (all but the last) is issued.
fn courier_status(state: DeliveryState, legs: impl ExactSizeIterator<Item = LegStatus>) -> DeliveryStatus {
    match state {
        DeliveryState::Delivered => DeliveryStatus::Delivered,
        DeliveryState::Cancelled => DeliveryStatus::Cancelled,
        DeliveryState::Open => {
            let transfers = legs.len().saturating_sub(1);
            if legs.take(transfers).all(|status| status == LegStatus::Issued) {
                DeliveryStatus::Ready
            } else {
                DeliveryStatus::Upcoming
            }
        }
    }
}

impl Delivery {
    pub fn status(&self) -> DeliveryStatus {
        courier_status(self.state, self.legs.iter().map(|leg| leg.status))
    }

    /// The node the courier picks the goods up at.
    pub fn delivering_node(&self) -> &NodeId {
        self.legs.last().map_or(&self.source_node, |leg| &leg.from)
    }

    /// Open deliveries count towards their courier's load.
    pub fn is_open(&self) -> bool {
        self.state == DeliveryState::Open
    }

    /// Every node its goods stay at on their way, in the flow of the goods:
    /// the nodes whose stock of its item a step of the delivery may move.
    pub fn stock_nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.legs.iter().map(|leg| &leg.from)
    }

    /// Where its reserved goods are now: the start of its first leg not yet issued.
    pub fn goods_at(&self) -> &NodeId {
        self.legs.iter().find(|leg| leg.status == LegStatus::Planned).map_or(self.delivering_node(), |leg| &leg.from)
    }

    /// Some goods issue or some attempt at the door happened: past the point
    /// where its customer may still call it off alone.
    pub fn under_way(&self) -> bool {
        !self.attempts.is_empty() || self.legs.iter().any(|leg| leg.status != LegStatus::Planned)
    }

    /// Open, carried by nobody, and its last attempt failed: the dispatcher's to
    /// send out again or to cancel.
    pub fn awaits_reattempt(&self) -> bool {
        self.is_open()
            && self.assignee.is_none()
            && self.attempts.last().is_some_and(|attempt| attempt.outcome == Outcome::Failed)
    }

    /// The accepted delivered confirmation that a reversal would undo.
    pub fn standing_hand_over(&self) -> Option<&Attempt> {
        self.attempts.iter().rev().find(|attempt| {
            attempt.outcome == Outcome::Delivered
                && !self.reversals.iter().any(|reversal| reversal.confirmation_id == attempt.confirmation_id)
        })
    }
}

impl Guarded for Delivery {
    fn describe(&self) -> String {
        format!("delivery {}", self.delivery_id)
    }

    /// Dispatchers see every delivery; a courier the ones assigned to it; a seller
    /// the ones entrusted to its node.
    fn visible_to(&self, principal: &Principal) -> bool {
        match principal.role {
            Role::Dispatcher => true,
            Role::Expediter | Role::Serviceman => self.assignee.as_ref() == Some(&principal.username),
            Role::Seller => {
                matches!(&self.carrier, Carrier::Seller { seller } if principal.node_id.as_ref() == Some(seller))
            }
            Role::Admin | Role::Customer => false,
        }
    }
}

/// Why an assignment is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignRefusal {
    #[error("{0}")]
    NotAllowed(String),
    #[error("{assignee} cannot carry this delivery: {reason}")]
    WrongCourier { assignee: Username, reason: String },
    #[error("delivery {0} is {1} and can no longer be assigned")]
    Closed(DeliveryId, DeliveryStatus),
}

/// The courier an assignment names, as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourierAccount {
    pub username: Username,
    pub role: Role,
    pub node_id: Option<NodeId>,
}

/// The assignment rule: a dispatcher may (re)assign any open delivery, a seller
/// only those entrusted to its node; the courier must be of the carrier's kind
/// and belong to its node (an expediter of the delivering branch, a serviceman
/// of the seller).
pub fn check_assignment(delivery: &Delivery, by: &Principal, courier: &CourierAccount) -> Result<(), AssignRefusal> {
    match by.role {
        Role::Dispatcher => {}
        Role::Seller if matches!(&delivery.carrier, Carrier::Seller { seller } if by.node_id.as_ref() == Some(seller)) =>
            {}
        _ => {
            return Err(AssignRefusal::NotAllowed(format!(
                "{} {} may not assign delivery {}",
                by.role, by.username, delivery.delivery_id
            )))
        }
    }
    if !delivery.is_open() {
        return Err(AssignRefusal::Closed(delivery.delivery_id.clone(), delivery.status()));
    }
    let (role, node) = delivery.carrier.courier();
    if courier.role != role || courier.node_id.as_ref() != Some(node) {
        return Err(AssignRefusal::WrongCourier {
            assignee: courier.username.clone(),
            reason: format!(
                "it needs {} of {node}, and {} is {} of {}",
                role.with_article(),
                courier.username,
                courier.role.with_article(),
                courier.node_id.as_ref().map_or("no node", |n| n.as_str())
            ),
        });
    }
    Ok(())
}

/// Why a leg cannot be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegRefusal {
    #[error("{0} is the last leg: it completes when the delivery is confirmed")]
    LastLeg(LegId),
    #[error("{0} must be issued first: legs are issued in the flow of the goods")]
    PreviousNotIssued(LegId),
    #[error("delivery {0} is {1}; its legs can no longer be issued")]
    Closed(DeliveryId, DeliveryStatus),
}

/// Whether leg `index` of a delivery may be issued now: `Ok(true)` to issue it,
/// `Ok(false)` when it already was (issuing twice changes nothing).
pub fn check_issue(delivery: &Delivery, index: usize) -> Result<bool, LegRefusal> {
    let leg = &delivery.legs[index];
    if leg.status == LegStatus::Issued {
        return Ok(false);
    }
    if !delivery.is_open() {
        return Err(LegRefusal::Closed(delivery.delivery_id.clone(), delivery.status()));
    }
    if index + 1 == delivery.legs.len() {
        return Err(LegRefusal::LastLeg(leg.leg_id.clone()));
    }
    if let Some(previous) = index.checked_sub(1).map(|i| &delivery.legs[i]) {
        if previous.status != LegStatus::Issued {
            return Err(LegRefusal::PreviousNotIssued(previous.leg_id.clone()));
        }
    }
    Ok(true)
}

/// (Re)assigns a delivery to a courier: the rule of [`check_assignment`]; a
/// new assignee gets a new version, both couriers hear of it. Assigning to the
/// courier who holds it changes nothing.
pub fn assign(
    delivery: Delivery,
    by: &Principal,
    courier: &CourierAccount,
    now: OffsetDateTime,
) -> Result<(Delivery, ChangeSet), AssignRefusal> {
    check_assignment(&delivery, by, courier)?;
    let mut changes = ChangeSet::default();
    if delivery.assignee.as_ref() == Some(&courier.username) {
        return Ok((delivery, changes));
    }
    let mut after = delivery.clone();
    if let Some(previous) = &delivery.assignee {
        // The previous courier learns on its next pull that it was reassigned away.
        changes.notify(previous, &delivery.delivery_id);
    }
    changes.notify(&courier.username, &delivery.delivery_id);
    after.version += 1;
    after.assignee = Some(courier.username.clone());
    after.assignments.push(Assignment {
        version: after.version,
        assignee: after.assignee.clone(),
        at: now,
        by: by.username.to_string(),
    });
    changes.put_delivery(Some(delivery), after.clone());
    Ok((after, changes))
}

/// Issues transfer leg `index` of a delivery ([`check_issue`]): the goods leave
/// its node and arrive at the next, still reserved; its courier sees the
/// delivery move towards ready. `stock` holds the item at the delivery's
/// [`Delivery::stock_nodes`]. Issuing twice changes nothing.
pub fn issue_leg(
    delivery: Delivery,
    index: usize,
    mut stock: StockBook,
    now: OffsetDateTime,
) -> Result<Step<(Delivery, ChangeSet), LegRefusal>, Inconsistent> {
    let mut changes = ChangeSet::default();
    if index >= delivery.legs.len() {
        return Ok(Step::NotFound);
    }
    match check_issue(&delivery, index) {
        Err(refusal) => return Ok(Step::Refused(refusal)),
        Ok(false) => return Ok(Step::Done((delivery, changes))),
        Ok(true) => {}
    }
    let mut after = delivery.clone();
    issue_leg_stock(&mut after, index, &mut stock, now)?;
    if let Some(courier) = &after.assignee {
        changes.notify(courier, &after.delivery_id);
    }
    changes.take_stock(stock);
    changes.put_delivery(Some(delivery), after.clone());
    Ok(Step::Done((after, changes)))
}

/// Moves the goods along transfer leg `index` and marks it issued.
pub(crate) fn issue_leg_stock(
    delivery: &mut Delivery,
    index: usize,
    stock: &mut StockBook,
    now: OffsetDateTime,
) -> Result<(), Inconsistent> {
    let leg = &delivery.legs[index];
    let Destination::Node(to) = &leg.to else {
        return Err(Inconsistent(format!("transfer leg {} ends at a customer", leg.leg_id)));
    };
    let [leaving, arriving] = transfer(&leg.from, to, delivery.quantity);
    let leg_id = leg.leg_id.clone();
    stock.apply(&delivery.item_id, &leaving, Movement::Issue { leg_id: leg_id.clone() }, now)?;
    stock.apply(&delivery.item_id, &arriving, Movement::Arrive { leg_id }, now)?;
    delivery.legs[index].status = LegStatus::Issued;
    delivery.legs[index].issued_at = Some(now);
    Ok(())
}

/// Goods arrived at a node from outside the network: on-hand grows. `stock`
/// holds the item at the node; returns its balance after.
pub fn goods_receipt(
    node: &NodeId,
    item: &ItemId,
    quantity: u32,
    mut stock: StockBook,
    now: OffsetDateTime,
) -> Result<(Balance, ChangeSet), Inconsistent> {
    let effect = StockEffect { node, on_hand_delta: i64::from(quantity), reserved_delta: 0 };
    let balance = stock.apply(item, &effect, Movement::GoodsReceipt, now)?;
    let mut changes = ChangeSet::default();
    changes.take_stock(stock);
    Ok((balance, changes))
}

/// What one planning run did to one receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanResult {
    Planned(Box<Delivery>),
    Backordered(ReceiptId),
}

/// What planning reads of the network: each customer, the master warehouse
/// and the manufacturer (the first of each kind, should a network name more),
/// and the expediters of each branch. Read by a backend once per run or chunk,
/// under the lock that keeps imports out meanwhile.
#[derive(Debug, Clone, Default)]
pub struct PlanningNetwork {
    customers: HashMap<CustomerId, Customer>,
    master: Option<NodeId>,
    manufacturer: Option<NodeId>,
    expediters: HashMap<NodeId, Vec<Username>>,
}

impl PlanningNetwork {
    /// From the stored records: `nodes` in id order, `accounts` in username
    /// order (expediters are listed in that order), and at least the customers
    /// of the receipts to plan.
    pub fn new(nodes: &[Node], customers: Vec<Customer>, accounts: Vec<Account>) -> Self {
        let first_of = |kind: NodeKind| nodes.iter().find(|node| node.kind == kind).map(|node| node.id.clone());
        let mut expediters: HashMap<NodeId, Vec<Username>> = HashMap::new();
        for account in accounts {
            if let Membership::Expediter { node_id } = account.membership {
                expediters.entry(node_id).or_default().push(account.username);
            }
        }
        PlanningNetwork {
            customers: customers.into_iter().map(|customer| (customer.id.clone(), customer)).collect(),
            master: first_of(NodeKind::MasterWarehouse),
            manufacturer: first_of(NodeKind::Manufacturer),
            expediters,
        }
    }

    /// The nodes the receipt's cascade visits.
    pub fn cascade(&self, receipt: &Receipt) -> Result<CascadeNodes, Inconsistent> {
        let customer = self.customers.get(&receipt.customer_id).ok_or_else(|| {
            Inconsistent(format!("receipt {} names unknown customer {}", receipt.receipt_id, receipt.customer_id))
        })?;
        Ok(CascadeNodes::for_customer(customer, self.master.as_ref(), self.manufacturer.as_ref()))
    }

    /// The expediters who may carry a delivery from `branch` ([`delivering_branch`]),
    /// each with the branch: whose loads the backend reads for [`PlanInputs`].
    pub fn expediters_of(&self, branch: Option<&NodeId>) -> Vec<(Username, NodeId)> {
        let Some(branch) = branch else { return Vec::new() };
        let names = self.expediters.get(branch).map(Vec::as_slice).unwrap_or_default();
        names.iter().map(|name| (name.clone(), branch.clone())).collect()
    }
}

/// What planning one receipt reads.
#[derive(Debug, Clone)]
pub struct PlanInputs<'a> {
    /// Not yet planned.
    pub receipt: Receipt,
    pub nodes: &'a CascadeNodes,
    /// The receipt's item at every node of `nodes`.
    pub stock: StockBook,
    /// The expediters of the delivering branch ([`delivering_branch`]), each
    /// with its node and its count of open deliveries; others are ignored.
    pub expediters: &'a [(Username, NodeId, u64)],
}

/// Plans one receipt: the cascade finds the first node that covers the whole
/// quantity, the stock is reserved there at once, the legs are planned towards
/// the customer, and the delivery goes to the least loaded expediter of the
/// delivering branch, or is entrusted to the seller. No node covers it: the
/// receipt is backordered (once; a backorder planned again in vain changes nothing).
pub fn plan_receipt(inputs: PlanInputs<'_>, now: OffsetDateTime) -> Result<(PlanResult, ChangeSet), Inconsistent> {
    let PlanInputs { receipt, nodes, mut stock, expediters } = inputs;
    let mut changes = ChangeSet::default();
    let Some((source, node)) = find_source(&receipt, nodes, &stock)? else {
        let result = PlanResult::Backordered(receipt.receipt_id.clone());
        if !receipt.backordered {
            let mut after = receipt.clone();
            after.backordered = true;
            changes.put_receipt(Some(receipt), after);
        }
        return Ok((result, changes));
    };
    let delivery_id = receipt
        .receipt_id
        .seq()
        .map(DeliveryId::from_seq)
        .ok_or_else(|| Inconsistent(format!("receipt {} has no number", receipt.receipt_id)))?;
    let legs = plan_legs(&delivery_id, source, nodes, &receipt.customer_id);
    let carrier = carrier_of(source, &node, nodes);
    let [reservation] = reserve(&node, receipt.quantity);
    stock.apply(&receipt.item_id, &reservation, Movement::Reserve { delivery_id: delivery_id.clone() }, now)?;
    let assignee = match &carrier {
        Carrier::Seller { .. } => None,
        Carrier::Distributor { branch } => {
            choose_courier(expediters.iter().filter(|(_, node, _)| node == branch).map(|(name, _, load)| (name, *load)))
        }
    };
    if let Some(courier) = &assignee {
        changes.notify(courier, &delivery_id);
    }
    let delivery = Delivery {
        delivery_id: delivery_id.clone(),
        receipt_id: receipt.receipt_id.clone(),
        customer_id: receipt.customer_id.clone(),
        item_id: receipt.item_id.clone(),
        quantity: receipt.quantity,
        source,
        source_node: node,
        legs,
        carrier,
        assignee: assignee.clone(),
        version: 1,
        assignments: vec![Assignment { version: 1, assignee, at: now, by: "planner".into() }],
        state: DeliveryState::Open,
        planned_at: now,
        attempts: Vec::new(),
        cancellation: None,
        reversals: Vec::new(),
        follow_up_of: None,
        handover_code_hash: receipt.handover_code.as_ref().map(|code| code.hash.clone()),
    };
    let mut after = receipt.clone();
    after.planned = true;
    after.backordered = false;
    after.deliveries.push(delivery_id.clone());
    after.delivery_id = Some(delivery_id);
    changes.put_receipt(Some(receipt), after);
    changes.take_stock(stock);
    changes.put_delivery(None, delivery.clone());
    Ok((PlanResult::Planned(Box::new(delivery)), changes))
}

/// The cascade over the receipt's item: where its whole quantity is found.
fn find_source(
    receipt: &Receipt,
    nodes: &CascadeNodes,
    stock: &StockBook,
) -> Result<Option<(Source, NodeId)>, Inconsistent> {
    let mut unread = None;
    let found = cascade(nodes, u64::from(receipt.quantity), |node| match stock.balance(node, &receipt.item_id) {
        Ok(balance) => balance.available(),
        Err(err) => {
            unread = Some(err);
            0
        }
    });
    unread.map_or(Ok(found), Err)
}

/// Who carries what ships from `node`: the seller's servicemen, or the
/// expediters of the branch the last leg starts at (see [`plan_legs`]).
fn carrier_of(source: Source, node: &NodeId, nodes: &CascadeNodes) -> Carrier {
    match source {
        Source::Seller => Carrier::Seller { seller: node.clone() },
        Source::Branch2 => Carrier::Distributor { branch: nodes.branch_2.clone() },
        Source::Branch1 | Source::MasterWarehouse | Source::Manufacturer => {
            Carrier::Distributor { branch: nodes.branch_1.clone() }
        }
    }
}

/// The branch whose expediters planning the receipt chooses among, read
/// before [`plan_receipt`]: `None` when no node covers it or the seller ships it.
pub fn delivering_branch(
    receipt: &Receipt,
    nodes: &CascadeNodes,
    stock: &StockBook,
) -> Result<Option<NodeId>, Inconsistent> {
    Ok(find_source(receipt, nodes, stock)?.and_then(|(source, node)| match carrier_of(source, &node, nodes) {
        Carrier::Distributor { branch } => Some(branch),
        Carrier::Seller { .. } => None,
    }))
}

/// What a step of a delivery does to stock: one movement per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockEffect<'a> {
    pub node: &'a NodeId,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
}

/// Planning reserves the whole quantity at the shipping node.
pub fn reserve(node: &NodeId, quantity: u32) -> [StockEffect<'_>; 1] {
    [StockEffect { node, on_hand_delta: 0, reserved_delta: i64::from(quantity) }]
}

/// Issuing a transfer leg moves the reserved goods to the next node, where they
/// stay reserved for the next leg.
pub fn transfer<'a>(from: &'a NodeId, to: &'a NodeId, quantity: u32) -> [StockEffect<'a>; 2] {
    let q = i64::from(quantity);
    [
        StockEffect { node: from, on_hand_delta: -q, reserved_delta: -q },
        StockEffect { node: to, on_hand_delta: q, reserved_delta: q },
    ]
}

/// Handing the goods to the customer takes them off the delivering node.
pub fn hand_over(node: &NodeId, quantity: u32) -> [StockEffect<'_>; 1] {
    let q = i64::from(quantity);
    [StockEffect { node, on_hand_delta: -q, reserved_delta: -q }]
}

impl StockEffect<'_> {
    pub fn apply(&self, balance: Balance) -> Result<Balance, NegativeStock> {
        balance.apply(self.on_hand_delta, self.reserved_delta)
    }
}

#[cfg(test)]
#[path = "shipments_tests.rs"]
mod tests;
