//! The day's exceptions, one scene at a time: a receipt planned by the real
//! planner, confirmations pushed through the real rules, corrections applied
//! over what they return.

use std::collections::BTreeMap;

use handover_shared::{
    sync::{Confirmation, FailureReason, Outcome},
    DeviceId, ItemId, NodeId, ReceiptId, Username,
};

use super::*;
use crate::domain::chain::SignatureCheck;
use crate::domain::{
    confirmations::{self, PushInputs, PushOutcome, PushReads, Pusher, RejectCode},
    fixtures::customer,
    orders::Receipt,
    shipments::{self, CascadeNodes, PlanInputs, PlanResult},
    stock::{Balance, Movement},
};

fn node(raw: &str) -> NodeId {
    NodeId::parse(raw).expect("a node id")
}

fn exp1() -> Username {
    Username::parse("exp1").expect("a username")
}

fn toner() -> ItemId {
    ItemId::parse("TC").expect("an item id")
}

fn dispatcher() -> Principal {
    crate::domain::fixtures::principal(Role::Dispatcher, None)
}

fn the_customer() -> Principal {
    crate::domain::fixtures::principal(Role::Customer, Some("C1"))
}

/// One receipt of C1 for toner, its deliveries, the stock and C1's account,
/// written only through the change sets the rules return.
struct Scene {
    receipt: Receipt,
    deliveries: BTreeMap<u64, Delivery>,
    stock: BTreeMap<NodeId, Balance>,
    account: CustomerAccount,
    moves: Vec<Movement>,
    now: OffsetDateTime,
}

impl Scene {
    /// An order of `quantity` (collectable) with `stock` on hand, planned.
    fn planned(quantity: u32, stock: &[(&str, u64)]) -> Scene {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut receipt = crate::domain::fixtures::receipt(1, "C1", "TC", quantity, true);
        let mut scene = Scene {
            stock: stock.iter().map(|(n, on_hand)| (node(n), Balance { on_hand: *on_hand, reserved: 0 })).collect(),
            account: CustomerAccount { empties_expected: u64::from(quantity), orders: 1 },
            receipt: receipt.clone(),
            deliveries: BTreeMap::new(),
            moves: Vec::new(),
            now,
        };
        let nodes = CascadeNodes::for_customer(&customer("C1"), Some(&node("MW")), None);
        let book = scene.book(nodes.all());
        let expediters = [(exp1(), node("B1"), 0)];
        receipt.planned = false;
        let inputs = PlanInputs { receipt, nodes: &nodes, stock: book, expediters: &expediters };
        let (result, changes) = shipments::plan_receipt(inputs, now).expect("plans");
        assert!(matches!(result, PlanResult::Planned(_)), "{result:?}");
        scene.apply(changes);
        scene
    }

    fn book<'a>(&self, nodes: impl IntoIterator<Item = &'a NodeId>) -> StockBook {
        StockBook::new(nodes.into_iter().map(|n| (n.clone(), toner(), self.stock.get(n).copied().unwrap_or_default())))
    }

    fn apply(&mut self, changes: ChangeSet) {
        for replace in changes.receipts {
            self.receipt = replace.after;
        }
        for replace in changes.deliveries {
            self.deliveries.insert(replace.after.delivery_id.number().expect("numbered"), replace.after);
        }
        for (node, _, balance) in changes.balances {
            self.stock.insert(node, balance);
        }
        for (_, account) in changes.customer_accounts {
            self.account = account;
        }
        self.moves.extend(changes.ledger.into_iter().map(|line| line.movement));
    }

    fn delivery(&self, id: &str) -> Delivery {
        self.deliveries.values().find(|d| d.delivery_id.as_str() == id).cloned().expect("a delivery")
    }

    fn balance(&self, at: &str) -> (u64, u64) {
        let balance = self.stock.get(&node(at)).copied().unwrap_or_default();
        (balance.on_hand, balance.reserved)
    }

    fn issue_all(&mut self, id: &str) {
        let delivery = self.delivery(id);
        for index in 0..delivery.legs.len() - 1 {
            let delivery = self.delivery(id);
            let stock = self.book(delivery.stock_nodes());
            let Step::Done((_, changes)) = shipments::issue_leg(delivery, index, stock, self.now).expect("sound")
            else {
                panic!("leg {index} of {id} not issued");
            };
            self.apply(changes);
        }
    }

    /// Pushes `confirmation` as exp1, reading what a backend would.
    fn push(
        &mut self,
        confirmation: &Confirmation,
        seen: Option<confirmations::SeenConfirmation>,
    ) -> (PushOutcome, ChangeSet) {
        let delivery = self.deliveries.values().find(|d| d.delivery_id == confirmation.delivery_id).cloned();
        let reads = PushReads::of(confirmation, delivery.as_ref());
        let inputs = PushInputs {
            chain: None,
            seen,
            receipt: reads.receipt.then(|| self.receipt.clone()),
            stock: self.book(reads.stock.iter().map(|(n, _)| n)),
            account: Some(self.account.clone()),
            delivery,
        };
        let (device, uploader) = (DeviceId::parse("hh-1").expect("an id"), exp1());
        let by = Pusher { uploader: &uploader, device: &device, received_at: self.now };
        let (outcome, changes) = confirmations::push(
            confirmation,
            &confirmations::digest(confirmation),
            &SignatureCheck::Unsigned,
            by,
            inputs,
        )
        .expect("sound");
        self.apply(changes.clone());
        (outcome, changes)
    }

    fn deliver(&mut self, id: &str, quantity: u32, empties: u32) -> Confirmation {
        let delivery = self.delivery(id);
        let mut confirmation = Confirmation::delivered(delivery.delivery_id, delivery.version, quantity, "Desk");
        confirmation.empties_collected = empties;
        assert_eq!(self.push(&confirmation, None).0, PushOutcome::Accepted);
        confirmation
    }

    /// Applies a correction, reading what a backend would.
    fn correct(&mut self, correction: &Correction, by: &Principal, reason: &str) -> Step<Corrected, CorrectionRefusal> {
        let find = |id: &handover_shared::DeliveryId| self.deliveries.values().find(|d| d.delivery_id == *id).cloned();
        let named = correction.delivery().and_then(find);
        let latest = CorrectionInputs::latest_to_read(named.as_ref(), &self.receipt).and_then(|id| find(&id));
        let mut inputs = CorrectionInputs::of(correction, named, self.receipt.clone(), latest);
        let nodes: Vec<NodeId> = inputs.stock_to_read().into_iter().map(|(node, _)| node).collect();
        inputs.stock = self.book(&nodes);
        inputs.account = Some(self.account.clone());
        match correct(correction, by, reason, inputs, self.now).expect("sound") {
            Step::Done((corrected, changes)) => {
                self.apply(changes);
                Step::Done(corrected)
            }
            Step::Refused(refusal) => Step::Refused(refusal),
            Step::NotFound => Step::NotFound,
        }
    }
}

fn refusal(step: Step<Corrected, CorrectionRefusal>) -> CorrectionRefusal {
    match step {
        Step::Refused(refusal) => refusal,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_short_hand_over_counts_its_units_and_reserves_the_rest_for_a_follow_up() {
    let mut scene = Scene::planned(4, &[("B1", 10)]);
    scene.deliver("D-000001", 1, 1);
    assert_eq!(scene.balance("B1"), (9, 3), "on hand 9, reserved 3");
    assert_eq!((scene.receipt.delivered_quantity, scene.receipt.delivered), (1, false));
    let follow_up = scene.delivery("D-000001-2");
    assert_eq!(
        (follow_up.quantity, follow_up.assignee.clone(), follow_up.status()),
        (3, Some(exp1()), DeliveryStatus::Ready)
    );
    assert_eq!(follow_up.follow_up_of.as_ref().map(|id| id.as_str()), Some("D-000001"));
    assert_eq!(scene.receipt.delivery_id.as_ref(), Some(&follow_up.delivery_id));
    assert_eq!(scene.account.empties_expected, 3, "what is still to come stays expected");
    let kinds: Vec<_> = scene.moves.iter().rev().take(3).map(|m| format!("{m:?}")).collect();
    assert!(
        kinds[0].starts_with("Reserve") && kinds[1].starts_with("Release") && kinds[2].starts_with("HandOver"),
        "{kinds:?}"
    );

    scene.deliver("D-000001-2", 3, 3);
    assert_eq!((scene.receipt.delivered_quantity, scene.receipt.delivered), (4, true));
    assert_eq!(scene.balance("B1"), (6, 0));
    assert_eq!(scene.account.empties_expected, 0);
}

#[test]
fn a_delivery_on_its_way_is_not_ready_and_nothing_moves() {
    let mut scene = Scene::planned(2, &[("MW", 5)]);
    let before = (scene.balance("MW"), scene.balance("B1"));
    let delivery = scene.delivery("D-000001");
    assert_eq!(delivery.status(), DeliveryStatus::Upcoming);
    let mut failed = Confirmation::delivered(delivery.delivery_id.clone(), 1, 0, "");
    (failed.outcome, failed.reason, failed.recipient) = (Outcome::Failed, Some(FailureReason::CustomerAbsent), None);
    for confirmation in [Confirmation::delivered(delivery.delivery_id.clone(), 1, 2, "Desk"), failed] {
        let (outcome, changes) = scene.push(&confirmation, None);
        let PushOutcome::Rejected { code: RejectCode::NotReady, message } = outcome else { panic!("{outcome:?}") };
        assert_eq!(message, "delivery D-000001 is still on its way to B1: its goods issues come first");
        assert!(changes.ledger.is_empty() && changes.deliveries.is_empty() && changes.receipts.is_empty());
    }
    assert_eq!((scene.balance("MW"), scene.balance("B1")), before, "no leg issued, no stock moved");
    scene.issue_all("D-000001");
    scene.deliver("D-000001", 2, 0);
    assert!(scene.receipt.delivered, "confirmable once ready");
}

#[test]
fn a_failed_attempt_is_kept_with_its_wire_reason_and_note() {
    let mut scene = Scene::planned(2, &[("B1", 5)]);
    let mut failed = Confirmation::delivered(scene.delivery("D-000001").delivery_id, 1, 0, "");
    (failed.outcome, failed.reason, failed.recipient) = (Outcome::Failed, Some(FailureReason::CustomerAbsent), None);
    failed.note = Some("Closed on Mondays".into());
    assert_eq!(scene.push(&failed, None).0, PushOutcome::Accepted);
    let delivery = scene.delivery("D-000001");
    assert!(delivery.awaits_reattempt());
    let attempt = delivery.attempts.last().expect("an attempt");
    assert_eq!(
        (attempt.reason, attempt.note.as_deref()),
        (Some(FailureReason::CustomerAbsent), Some("Closed on Mondays"))
    );
    assert_eq!(delivery.assignments.last().map(|a| a.by.as_str()), Some("exp1 (failed: customer_absent)"));
    assert_eq!(scene.balance("B1"), (5, 2), "still reserved for the next attempt");
}

#[test]
fn cancelling_frees_the_reservation_where_the_goods_are_and_a_late_confirmation_is_refused() {
    let mut scene = Scene::planned(3, &[("MW", 5)]);
    let delivery = scene.delivery("D-000001");
    let stock = scene.book(delivery.stock_nodes());
    let Step::Done((_, changes)) = shipments::issue_leg(delivery, 0, stock, scene.now).expect("sound") else {
        panic!("not issued")
    };
    scene.apply(changes);
    assert_eq!((scene.balance("MW"), scene.balance("B1")), ((2, 0), (3, 3)));
    let correction = Correction::CancelDelivery(scene.delivery("D-000001").delivery_id);
    assert_eq!(
        refusal(scene.correct(&correction, &dispatcher(), "  ")),
        CorrectionRefusal::InvalidReason("say why (reason)".into())
    );
    let Step::Done(corrected) = scene.correct(&correction, &dispatcher(), "customer moved away") else { panic!() };
    assert_eq!(corrected.delivery.map(|d| d.state), Some(DeliveryState::Cancelled));
    assert_eq!((scene.balance("MW"), scene.balance("B1")), ((2, 0), (3, 0)), "the goods stay where they arrived");
    let cancellation = scene.receipt.cancellation.clone().expect("the receipt says so");
    assert_eq!((cancellation.by.as_str(), cancellation.reason.as_str()), ("someone", "customer moved away"));
    assert_eq!(scene.account.empties_expected, 0, "no empties for goods that never come");
    let moves = scene.moves.len();
    assert!(matches!(scene.correct(&correction, &dispatcher(), "again"), Step::Done(_)), "twice is harmless");
    assert_eq!(scene.moves.len(), moves, "and changes nothing");

    let confirmation = Confirmation::delivered(scene.delivery("D-000001").delivery_id, 1, 3, "Desk");
    let (outcome, _) = scene.push(&confirmation, None);
    assert!(matches!(outcome, PushOutcome::Rejected { code: RejectCode::DeliveryCancelled, .. }), "{outcome:?}");
}

#[test]
fn a_customer_cancels_its_own_receipt_only_before_anything_moved() {
    let mut scene = Scene::planned(2, &[("MW", 5)]);
    let correction = Correction::CancelReceipt(ReceiptId::from_seq(1));
    let other = crate::domain::fixtures::principal(Role::Customer, Some("C2"));
    assert!(matches!(scene.correct(&correction, &other, ""), Step::NotFound), "another's receipt is not there");
    scene.issue_all("D-000001");
    assert_eq!(
        refusal(scene.correct(&correction, &the_customer(), "")),
        CorrectionRefusal::TooLate(ReceiptId::from_seq(1))
    );
    assert!(
        matches!(scene.correct(&correction, &dispatcher(), "asked by phone"), Step::Done(_)),
        "the dispatcher still can"
    );

    let mut early = Scene::planned(2, &[("B1", 5)]);
    let Step::Done(corrected) = early.correct(&correction, &the_customer(), "") else { panic!() };
    assert_eq!(corrected.receipt.cancellation.map(|c| c.reason), Some("called off by the customer".into()));
    assert_eq!(early.balance("B1"), (5, 0));
}

#[test]
fn an_unplanned_receipt_cancelled_leaves_the_planning_queue() {
    let mut scene = Scene::planned(2, &[("B1", 5)]);
    scene.receipt.planned = false;
    scene.receipt.delivery_id = None;
    scene.receipt.deliveries.clear();
    assert!(scene.receipt.awaits_planning());
    let Step::Done(corrected) = scene.correct(&Correction::CancelReceipt(ReceiptId::from_seq(1)), &the_customer(), "")
    else {
        panic!()
    };
    assert!(!corrected.receipt.awaits_planning());
}

#[test]
fn a_reversal_takes_the_goods_back_reopens_the_delivery_and_a_retry_stays_a_duplicate() {
    let mut scene = Scene::planned(4, &[("B1", 10)]);
    let correction = Correction::Reverse(scene.delivery("D-000001").delivery_id);
    assert!(matches!(refusal(scene.correct(&correction, &dispatcher(), "oops")), CorrectionRefusal::NotDelivered(..)));
    let confirmation = scene.deliver("D-000001", 4, 2);
    assert_eq!((scene.balance("B1"), scene.account.empties_expected), ((6, 0), 2));
    assert!(matches!(scene.correct(&correction, &the_customer(), "oops"), Step::NotFound), "a delivery it cannot see");

    let Step::Done(corrected) = scene.correct(&correction, &dispatcher(), "wrong house ticked") else { panic!() };
    let delivery = corrected.delivery.expect("the delivery");
    assert_eq!((delivery.state, delivery.version, delivery.assignee.clone()), (DeliveryState::Open, 2, Some(exp1())));
    assert_eq!(delivery.reversals[0].intervention.reason, "wrong house ticked");
    assert_eq!(scene.balance("B1"), (10, 4), "back on hand and reserved again");
    assert_eq!(
        (scene.receipt.delivered, scene.receipt.delivered_quantity, scene.receipt.proof.is_none()),
        (false, 0, true)
    );
    assert_eq!(scene.receipt.reversals.len(), 1);
    assert_eq!(scene.account.empties_expected, 4, "the empties are owed again");
    assert!(matches!(scene.moves.last(), Some(Movement::TakeBack { .. })));

    let seen = confirmations::SeenConfirmation {
        confirmation_id: confirmation.confirmation_id.clone(),
        digest: confirmations::digest(&confirmation),
        delivery_id: Some(confirmation.delivery_id.clone()),
        uploader: exp1(),
        device_id: DeviceId::parse("hh-1").expect("an id"),
        received_at: scene.now,
        outcome: confirmations::FirstOutcome::Accepted,
    };
    let (outcome, changes) = scene.push(&confirmation, Some(seen));
    assert_eq!((outcome, changes.is_empty()), (PushOutcome::Duplicate, true), "a retry is not a new delivery");
    scene.deliver("D-000001", 4, 4);
    assert!(scene.receipt.delivered, "delivered again under the new version");
}

#[test]
fn reversing_a_short_hand_over_takes_back_its_untouched_follow_up() {
    let mut scene = Scene::planned(4, &[("B1", 10)]);
    scene.deliver("D-000001", 1, 0);
    let correction = Correction::Reverse(scene.delivery("D-000001").delivery_id);
    let Step::Done(corrected) = scene.correct(&correction, &dispatcher(), "not this one") else { panic!() };
    assert_eq!(corrected.delivery.map(|d| (d.quantity, d.state)), Some((4, DeliveryState::Open)));
    assert_eq!(scene.delivery("D-000001-2").state, DeliveryState::Cancelled);
    assert_eq!(scene.balance("B1"), (10, 4));
    assert_eq!(scene.receipt.delivery_id.as_ref().map(|id| id.as_str()), Some("D-000001"));

    scene.deliver("D-000001", 2, 0);
    assert_eq!(scene.delivery("D-000001-3").quantity, 2, "a new round, never a reused id");
    scene.deliver("D-000001-3", 2, 0);
    let moved = refusal(scene.correct(&correction, &dispatcher(), "too late"));
    assert!(matches!(moved, CorrectionRefusal::FollowUpMoved(..)), "{moved:?}");
}

#[test]
fn a_short_hand_over_whose_follow_up_failed_can_still_be_reversed() {
    let mut scene = Scene::planned(5, &[("B1", 10)]);
    scene.deliver("D-000001", 3, 0);
    let follow_up = scene.delivery("D-000001-2");
    let mut failed = Confirmation::delivered(follow_up.delivery_id, follow_up.version, 0, "");
    (failed.outcome, failed.reason, failed.recipient) = (Outcome::Failed, Some(FailureReason::CustomerAbsent), None);
    assert_eq!(scene.push(&failed, None).0, PushOutcome::Accepted);
    let correction = Correction::Reverse(scene.delivery("D-000001").delivery_id);
    let Step::Done(corrected) = scene.correct(&correction, &dispatcher(), "wrong house") else { panic!() };
    assert_eq!(corrected.delivery.map(|d| (d.quantity, d.state)), Some((5, DeliveryState::Open)));
    assert_eq!(scene.delivery("D-000001-2").state, DeliveryState::Cancelled);
    assert_eq!((scene.balance("B1"), scene.receipt.delivered_quantity), ((10, 5), 0));
}

#[test]
fn a_delivery_delivered_before_attempts_were_kept_is_reversed_from_its_proof() {
    let mut scene = Scene::planned(2, &[("B1", 10)]);
    scene.deliver("D-000001", 2, 2);
    // As stored by the first release: no attempts, no count on the receipt.
    let number = scene.delivery("D-000001").delivery_id.number().expect("numbered");
    scene.deliveries.get_mut(&number).expect("kept").attempts.clear();
    scene.receipt.delivered_quantity = 0;
    assert_eq!(scene.receipt.delivered_units(), 2, "shown from its proof");
    let correction = Correction::Reverse(scene.delivery("D-000001").delivery_id);
    let Step::Done(corrected) = scene.correct(&correction, &dispatcher(), "wrong house") else { panic!() };
    assert_eq!(corrected.delivery.map(|d| d.state), Some(DeliveryState::Open));
    assert_eq!((scene.balance("B1"), scene.account.empties_expected), ((10, 2), 2));
}
