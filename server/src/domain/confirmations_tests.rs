//! Tests of the confirmation rules.

use handover_shared::{
    sync::{Confirmation, FailureReason, Outcome},
    CustomerId, DeliveryId, ItemId, NodeId, ReceiptId,
};
use rstest::rstest;

use super::*;
use crate::domain::chain::SignatureCheck;
use crate::domain::shipments::{Assignment, Carrier, Delivery, DeliveryState, Source};

fn name(raw: &str) -> Username {
    Username::parse(raw).expect("id")
}

/// A delivery of 3 units, assigned to exp1 at version 1, then to exp2 at version 2.
fn delivery() -> Delivery {
    let at = OffsetDateTime::UNIX_EPOCH;
    Delivery {
        delivery_id: DeliveryId::from_seq(1),
        receipt_id: ReceiptId::from_seq(1),
        customer_id: CustomerId::parse("C1").expect("id"),
        item_id: ItemId::parse("TC-100").expect("id"),
        quantity: 3,
        source: Source::Branch1,
        source_node: NodeId::parse("B1").expect("id"),
        legs: Vec::new(),
        carrier: Carrier::Distributor { branch: NodeId::parse("B1").expect("id") },
        assignee: Some(name("exp2")),
        version: 2,
        assignments: vec![
            Assignment { version: 1, assignee: Some(name("exp1")), at, by: "planner".into() },
            Assignment { version: 2, assignee: Some(name("exp2")), at, by: "disp".into() },
        ],
        state: DeliveryState::Open,
        planned_at: at,
        attempts: Vec::new(),
        cancellation: None,
        reversals: Vec::new(),
        follow_up_of: None,
        handover_code_hash: None,
    }
}

fn delivered(version: u64) -> Confirmation {
    Confirmation {
        confirmation_id: "0192f1a2-0000-7000-8000-000000000001".into(),
        delivery_id: DeliveryId::from_seq(1),
        version,
        outcome: Outcome::Delivered,
        reason: None,
        note: None,
        quantity: 3,
        recipient: Some("Ms Reception".into()),
        empties_collected: 2,
        // Days ahead: the device clock decides nothing.
        captured_at: OffsetDateTime::now_utc() + time::Duration::days(9),
        position: None,
        signature: Some("data:image/png;base64,iVBORw0KGgo=".into()),
        photo_digest: None,
        handover_code: None,
        device_seq: None,
        prev_hash: None,
        device_signature: None,
    }
}

fn failed(reason: FailureReason, note: Option<&str>) -> Confirmation {
    Confirmation {
        outcome: Outcome::Failed,
        reason: Some(reason),
        note: note.map(Into::into),
        quantity: 0,
        recipient: None,
        empties_collected: 0,
        ..delivered(2)
    }
}

fn code(verdict: Verdict) -> Option<&'static str> {
    match verdict {
        Verdict::Reject { code, .. } => Some(code.as_str()),
        _ => None,
    }
}

#[test]
fn the_current_assignee_confirms_a_delivery() {
    let c = delivered(2);
    assert_eq!(judge(&c, &digest(&c), &name("exp2"), None, Some(&delivery())), Verdict::Apply);
}

#[test]
fn a_courier_reassigned_since_capture_is_honoured_for_the_version_it_held() {
    let c = delivered(1);
    assert_eq!(judge(&c, &digest(&c), &name("exp1"), None, Some(&delivery())), Verdict::Apply);
}

#[test]
fn a_version_the_uploader_never_held_is_not_its_delivery() {
    let c = delivered(2);
    let verdict = judge(&c, &digest(&c), &name("exp1"), None, Some(&delivery()));
    assert_eq!(
        verdict,
        Verdict::Reject {
            code: RejectCode::NotAssignee,
            message: "exp1 did not hold delivery D-000001 at version 2".into()
        }
    );
    let c = delivered(7);
    assert_eq!(code(judge(&c, &digest(&c), &name("exp2"), None, Some(&delivery()))), Some("not_assignee"));
}

#[test]
fn a_retry_gets_the_first_outcome_and_other_content_under_the_same_id_is_refused() {
    let c = delivered(2);
    let seen = SeenConfirmation {
        confirmation_id: c.confirmation_id.clone(),
        digest: digest(&c),
        delivery_id: Some(c.delivery_id.clone()),
        uploader: name("exp2"),
        device_id: DeviceId::parse("hh-1").expect("id"),
        received_at: OffsetDateTime::UNIX_EPOCH,
        outcome: FirstOutcome::Accepted,
    };
    let mut now_delivered = delivery();
    now_delivered.state = DeliveryState::Delivered;
    assert_eq!(
        judge(&c, &digest(&c), &name("exp2"), Some(&seen), Some(&now_delivered)),
        Verdict::Replay(FirstOutcome::Accepted),
        "the retry of an accepted confirmation is not refused as already delivered"
    );
    let mut other = c.clone();
    other.recipient = Some("Someone else".into());
    assert_eq!(code(judge(&other, &digest(&other), &name("exp2"), Some(&seen), None)), Some("conflicting_duplicate"));
}

#[test]
fn a_delivery_confirmed_first_by_another_refuses_the_later_one() {
    let mut done = delivery();
    done.state = DeliveryState::Delivered;
    let c = delivered(1);
    assert_eq!(code(judge(&c, &digest(&c), &name("exp1"), None, Some(&done))), Some("already_delivered"));
    done.state = DeliveryState::Cancelled;
    assert_eq!(code(judge(&c, &digest(&c), &name("exp1"), None, Some(&done))), Some("delivery_cancelled"));
}

#[test]
fn a_failure_with_its_reason_is_applied() {
    let c = failed(FailureReason::CustomerAbsent, None);
    assert_eq!(judge(&c, &digest(&c), &name("exp2"), None, Some(&delivery())), Verdict::Apply);
    let c = failed(FailureReason::Other, Some("gate locked"));
    assert_eq!(judge(&c, &digest(&c), &name("exp2"), None, Some(&delivery())), Verdict::Apply);
}

#[rstest]
#[case::not_a_uuid(|c: &mut Confirmation| c.confirmation_id = "abc".into())]
#[case::version_zero(|c: &mut Confirmation| c.version = 0)]
#[case::no_recipient(|c: &mut Confirmation| c.recipient = None)]
#[case::blank_recipient(|c: &mut Confirmation| c.recipient = Some("   ".into()))]
#[case::nothing_handed_over(|c: &mut Confirmation| c.quantity = 0)]
#[case::more_than_the_delivery(|c: &mut Confirmation| c.quantity = 4)]
#[case::reason_on_a_delivery(|c: &mut Confirmation| c.reason = Some(FailureReason::Refused))]
#[case::failed_without_reason(|c: &mut Confirmation| { c.outcome = Outcome::Failed; c.quantity = 0; c.empties_collected = 0; })]
#[case::other_without_note(|c: &mut Confirmation| { *c = failed(FailureReason::Other, Some(" ")); })]
#[case::failed_handing_over(|c: &mut Confirmation| { *c = failed(FailureReason::Refused, None); c.quantity = 1; })]
#[case::huge_note(|c: &mut Confirmation| c.note = Some("x".repeat(MAX_NOTE_LEN + 1)))]
#[case::control_characters(|c: &mut Confirmation| c.recipient = Some("Ms\u{0}R".into()))]
#[case::too_many_empties(|c: &mut Confirmation| c.empties_collected = MAX_EMPTIES + 1)]
#[case::signature_not_png(|c: &mut Confirmation| c.signature = Some("<svg/>".into()))]
#[case::signature_too_big(|c: &mut Confirmation| c.signature = Some(format!("data:image/png;base64,{}", "A".repeat(MAX_SIGNATURE_BYTES))))]
#[case::bad_photo_digest(|c: &mut Confirmation| c.photo_digest = Some("beef".into()))]
#[case::position_off_earth(|c: &mut Confirmation| c.position = Some(handover_shared::sync::Position { lat: 91.0, lon: 0.0, accuracy_m: None }))]
fn invalid_data_is_rejected_as_invalid(#[case] spoil: fn(&mut Confirmation)) {
    let mut c = delivered(2);
    spoil(&mut c);
    assert_eq!(code(judge(&c, &digest(&c), &name("exp2"), None, Some(&delivery()))), Some("invalid"));
}

#[test]
fn an_unknown_delivery_is_answered_as_anothers() {
    let c = delivered(2);
    let unknown = judge(&c, &digest(&c), &name("exp2"), None, None);
    assert_eq!(
        unknown,
        Verdict::Reject {
            code: RejectCode::NotAssignee,
            message: "exp2 did not hold delivery D-000001 at version 2".into()
        }
    );
    let anothers = judge(&c, &digest(&c), &name("exp3"), None, Some(&delivery()));
    assert_eq!(code(anothers), Some("not_assignee"), "nothing tells the two apart but the name");
}

#[test]
fn the_digest_tells_content_apart_and_ignores_nothing() {
    let c = delivered(2);
    let mut d = c.clone();
    assert_eq!(digest(&c), digest(&d));
    d.empties_collected += 1;
    assert_ne!(digest(&c), digest(&d));
    assert_eq!(digest(&c).len(), 64);
}

/// Who pushes, at the epoch.
fn by<'a>(uploader: &'a Username, device: &'a DeviceId) -> Pusher<'a> {
    Pusher { uploader, device, received_at: OffsetDateTime::UNIX_EPOCH }
}

#[test]
fn a_stale_failed_attempt_is_superseded_and_changes_nothing() {
    // Reassigned from exp1 (version 1) to exp2 (version 2): exp1's failed
    // attempt, captured before, must not take the delivery back from exp2.
    let (exp1, device) = (name("exp1"), DeviceId::parse("hh-1").expect("id"));
    let stale = Confirmation { version: 1, ..failed(FailureReason::CustomerAbsent, None) };
    let inputs = PushInputs { chain: None, delivery: Some(delivery()), ..PushInputs::default() };
    let (outcome, changes) =
        push(&stale, &digest(&stale), &SignatureCheck::Unsigned, by(&exp1, &device), inputs).expect("judged");
    let PushOutcome::Rejected { code: RejectCode::Superseded, message } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(message, "delivery D-000001 is at version 2; a failed attempt captured under version 1 changes nothing");
    assert!(changes.deliveries.is_empty() && changes.feed.is_empty() && changes.audit.is_empty(), "{changes:?}");
    assert_eq!(changes.confirmations.len(), 1, "only the refusal is remembered");
}

#[test]
fn a_failed_attempt_under_the_current_version_puts_the_delivery_back_to_the_dispatcher() {
    let (exp2, device) = (name("exp2"), DeviceId::parse("hh-2").expect("id"));
    let attempt = failed(FailureReason::Refused, None);
    let inputs = PushInputs { chain: None, delivery: Some(delivery()), ..PushInputs::default() };
    let (outcome, changes) =
        push(&attempt, &digest(&attempt), &SignatureCheck::Unsigned, by(&exp2, &device), inputs).expect("judged");
    assert_eq!(outcome, PushOutcome::Accepted);
    let after = &changes.deliveries[0].after;
    assert_eq!((after.assignee.as_ref(), after.version), (None, 3));
    assert_eq!(changes.courier_loads.get(&exp2), Some(&-1), "exp2 carries one delivery fewer");
    assert_eq!(changes.feed, vec![(exp2.clone(), after.delivery_id.clone())]);
    assert!(changes.ledger.is_empty(), "no goods moved");
}

#[test]
fn a_conflicting_duplicate_is_refused_without_touching_the_first_outcome() {
    let (exp2, device) = (name("exp2"), DeviceId::parse("hh-2").expect("id"));
    let first = delivered(2);
    let seen = SeenConfirmation {
        confirmation_id: first.confirmation_id.clone(),
        digest: digest(&first),
        delivery_id: Some(first.delivery_id.clone()),
        uploader: exp2.clone(),
        device_id: device.clone(),
        received_at: OffsetDateTime::UNIX_EPOCH,
        outcome: FirstOutcome::Accepted,
    };
    let other = Confirmation { recipient: Some("Someone else".into()), ..first.clone() };
    let intruder = name("exp1");
    let inputs =
        PushInputs { chain: None, seen: Some(seen.clone()), delivery: Some(delivery()), ..PushInputs::default() };
    let (outcome, changes) =
        push(&other, &digest(&other), &SignatureCheck::Unsigned, by(&intruder, &device), inputs).expect("judged");
    assert!(matches!(outcome, PushOutcome::Rejected { code: RejectCode::ConflictingDuplicate, .. }), "{outcome:?}");
    assert!(changes.is_empty(), "the first outcome stays as it was: {changes:?}");
    // The first sender's retry still gets the first outcome.
    let inputs = PushInputs { chain: None, seen: Some(seen), delivery: Some(delivery()), ..PushInputs::default() };
    let (retry, changes) =
        push(&first, &digest(&first), &SignatureCheck::Unsigned, by(&exp2, &device), inputs).expect("judged");
    assert_eq!((retry, changes.is_empty()), (PushOutcome::Duplicate, true));
}

#[test]
fn records_that_do_not_fit_together_are_an_error_and_change_nothing() {
    // A sound confirmation, but the backend handed in no receipt, or not the
    // stock its goods move through: never applied half, never against zero.
    let (exp2, device) = (name("exp2"), DeviceId::parse("hh-2").expect("id"));
    let c = Confirmation { empties_collected: 0, ..delivered(2) };
    let mut planned = delivery();
    planned.legs = crate::domain::shipments::plan_legs(
        &planned.delivery_id,
        Source::Branch1,
        &crate::domain::shipments::CascadeNodes::for_customer(&crate::domain::fixtures::customer("C1"), None, None),
        &planned.customer_id,
    );
    let without_receipt = PushInputs { delivery: Some(planned.clone()), ..PushInputs::default() };
    let err = push(&c, &digest(&c), &SignatureCheck::Unsigned, by(&exp2, &device), without_receipt)
        .expect_err("inconsistent");
    assert_eq!(err.0, "the receipt of D-000001 was not read");
    let mut receipt = crate::domain::fixtures::receipt(1, "C1", "TC-100", 3, false);
    (receipt.planned, receipt.delivery_id) = (true, Some(planned.delivery_id.clone()));
    let without_stock = PushInputs { delivery: Some(planned), receipt: Some(receipt), ..PushInputs::default() };
    let err =
        push(&c, &digest(&c), &SignatureCheck::Unsigned, by(&exp2, &device), without_stock).expect_err("inconsistent");
    assert_eq!(err.0, "the stock of TC-100 at B1 was not read");
}

#[test]
fn an_unreadable_element_keeps_its_first_outcome_like_any_other() {
    let (exp1, device) = (name("exp1"), DeviceId::parse("hh-1").expect("id"));
    let unreadable = Unreadable {
        confirmation_id: "0192f1a2-0000-7000-8000-00000000000a".into(),
        delivery_id: Some(DeliveryId::from_seq(1)),
        digest: "d1".into(),
        message: "captured_at: not a date".into(),
    };
    let (outcome, changes) = push_unreadable(&unreadable, by(&exp1, &device), None);
    let refused = PushOutcome::Rejected { code: RejectCode::Invalid, message: "captured_at: not a date".into() };
    assert_eq!(outcome, refused);
    let [remembered] = <[SeenConfirmation; 1]>::try_from(changes.confirmations).expect("remembered once");
    assert_eq!(
        (remembered.digest.as_str(), &remembered.outcome),
        ("d1", &FirstOutcome::Rejected { code: RejectCode::Invalid, message: "captured_at: not a date".into() })
    );

    let (again, changes) = push_unreadable(&unreadable, by(&exp1, &device), Some(&remembered));
    assert_eq!((again, changes.is_empty()), (refused, true), "sent the same: the same answer");
    let other = Unreadable { digest: "d2".into(), ..unreadable.clone() };
    let (other, _) = push_unreadable(&other, by(&exp1, &device), Some(&remembered));
    assert!(matches!(other, PushOutcome::Rejected { code: RejectCode::ConflictingDuplicate, .. }), "{other:?}");

    let nameless = Unreadable { confirmation_id: "not-a-uuid".into(), ..unreadable };
    let (_, changes) = push_unreadable(&nameless, by(&exp1, &device), None);
    assert!(changes.is_empty(), "an id that is no UUID has no identity to remember");
}

#[test]
fn a_devices_review_list_keeps_its_latest_rejections_and_counts_the_rest() {
    let device = DeviceId::parse("hh-1").expect("id");
    let seen = |n: usize, outcome: FirstOutcome| SeenConfirmation {
        confirmation_id: format!("c{n}"),
        digest: String::new(),
        delivery_id: None,
        uploader: name("exp1"),
        device_id: device.clone(),
        received_at: OffsetDateTime::UNIX_EPOCH,
        outcome,
    };
    let refused = || FirstOutcome::Rejected { code: RejectCode::NotAssignee, message: "no".into() };
    assert_eq!(log_rejections(None, &device, &[seen(0, FirstOutcome::Accepted)]), None, "nothing to list");

    let first: Vec<_> = (0..REJECTIONS_LISTED_PER_DEVICE - 1).map(|n| seen(n, refused())).collect();
    let log = log_rejections(None, &device, &first).expect("a log");
    assert_eq!((log.recent.len(), log.dropped), (REJECTIONS_LISTED_PER_DEVICE - 1, 0));
    let more = [seen(900, refused()), seen(901, FirstOutcome::Accepted), seen(902, refused()), seen(903, refused())];
    let log = log_rejections(Some(log), &device, &more).expect("a log");
    assert_eq!((log.recent.len(), log.dropped), (REJECTIONS_LISTED_PER_DEVICE, 2), "the cap, and what it dropped");
    assert_eq!(log.recent.first().map(|s| s.confirmation_id.as_str()), Some("c2"), "the oldest went");
    assert_eq!(log.recent.last().map(|s| s.confirmation_id.as_str()), Some("c903"), "the newest stays");
    assert!(log.recent.iter().all(|s| s.confirmation_id != "c901"), "accepted ones are not listed");
}
