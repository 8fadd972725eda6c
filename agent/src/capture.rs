//! Capturing what happened at a delivery: checked against the local copy of the
//! assignment and against the confirmation rules the server applies, then saved
//! durably in the outbox, with its photo. The command line and the handheld page
//! both capture through here, so they accept and refuse exactly the same things.

use handover_shared::{
    proof::code_matches,
    sync::{Assignment, AssignmentStatus, Confirmation, FailureReason, Outcome, Position},
    DeliveryId, NodeId,
};

use crate::store::{Enqueued, LocalStore, Photo};

/// What the courier reports for a delivered parcel.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    pub recipient: String,
    /// Units handed over; the whole delivery when absent.
    pub quantity: Option<u32>,
    pub empties: u32,
    pub note: Option<String>,
    /// A `data:image/png;base64,...` URL drawn on the handheld page.
    pub signature: Option<String>,
    pub evidence: Evidence,
    /// The customer's handover code as entered at the door.
    pub code: Option<String>,
}

/// What the courier reports for a failed attempt. No handover code: nothing
/// was handed over.
#[derive(Debug, Clone)]
pub struct Failed {
    pub reason: FailureReason,
    pub note: Option<String>,
    /// A photo is evidence of a failed attempt too (a closed door).
    pub evidence: Evidence,
}

/// What backs a capture up, delivered or failed.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub photo: Option<Photo>,
    pub position: Option<Position>,
}

/// How the handover code entered at the door compares with the receipt's,
/// checked on the handheld against the slow hash it pulled (the server
/// checks again and records the outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    Matches,
    DoesNotMatch,
    /// A code was entered, but the receipt has none to compare with.
    ReceiptHasNoCode,
    /// The receipt has a code and none was entered.
    NotEntered,
    /// Nothing to say: no code on the receipt and none entered, or a failed attempt.
    NotApplicable,
}

impl CodeCheck {
    fn of(assignment: &Assignment, entered: Option<&str>) -> CodeCheck {
        match (assignment.handover_code_hash.as_deref(), entered) {
            (Some(hash), Some(code)) if code_matches(hash, code) => CodeCheck::Matches,
            (Some(_), Some(_)) => CodeCheck::DoesNotMatch,
            (Some(_), None) => CodeCheck::NotEntered,
            (None, Some(_)) => CodeCheck::ReceiptHasNoCode,
            (None, None) => CodeCheck::NotApplicable,
        }
    }

    /// What the courier is told at once, if anything.
    pub fn message(self) -> Option<&'static str> {
        match self {
            CodeCheck::Matches => Some("handover code matches"),
            CodeCheck::DoesNotMatch => {
                Some("handover code does not match: the delivery is saved and recorded as not verified")
            }
            CodeCheck::ReceiptHasNoCode => {
                Some("this receipt has no handover code: the code entered is saved but cannot be checked")
            }
            CodeCheck::NotEntered => {
                Some("no handover code entered: the delivery is saved and recorded without the customer's code")
            }
            CodeCheck::NotApplicable => None,
        }
    }

    /// Whether the message is good news (the page colours it so).
    pub fn is_good(self) -> bool {
        self == CodeCheck::Matches
    }
}

/// A capture saved (or found saved, for a form sent twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub confirmation_id: String,
    pub code_check: CodeCheck,
}

/// Why nothing was saved.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0} is not among this handheld's assignments (run `handover-agent pull` when online)")]
    Unknown(DeliveryId),
    /// The goods have not reached the pickup node: confirming now would claim a
    /// hand-over that cannot have happened, and failing it would send back a
    /// delivery that was never attempted.
    #[error("{id} is on its way to {pickup_node}; confirm it once its goods are there (pull again to see it ready)")]
    NotReady { id: DeliveryId, pickup_node: NodeId },
    #[error("{id} is {status}; nothing to confirm")]
    Closed { id: DeliveryId, status: &'static str },
    #[error("{id} was already confirmed on this handheld ({previous})")]
    AlreadyCaptured { id: DeliveryId, previous: String },
    #[error("the quantity must be from 1 to {max} for {id}")]
    Quantity { id: DeliveryId, max: u32 },
    #[error("the position's accuracy must be a distance in metres, 0 or more")]
    Accuracy,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Saves a delivered confirmation and returns its id, with what the handover
/// code entered says. `confirmation_id` lets a form sent twice (a double tap, a
/// reload) land once: the second time finds it saved and says so; the command
/// line passes `None`. A wrong code does not stop the save: the customer may
/// not have it at hand, and the delivery is recorded as not verified.
pub fn deliver(
    store: &LocalStore,
    id: &DeliveryId,
    report: Delivered,
    confirmation_id: Option<String>,
) -> Result<Saved, CaptureError> {
    let assignment = open_assignment(store, id)?;
    let quantity = report.quantity.unwrap_or(assignment.quantity);
    if quantity == 0 || quantity > assignment.quantity {
        return Err(CaptureError::Quantity { id: id.clone(), max: assignment.quantity });
    }
    let mut confirmation = blank(&assignment, Outcome::Delivered, confirmation_id);
    confirmation.quantity = quantity;
    confirmation.recipient = Some(report.recipient.trim().to_owned());
    confirmation.empties_collected = report.empties;
    confirmation.note = non_empty(report.note);
    confirmation.signature = non_empty(report.signature);
    confirmation.handover_code = non_empty(report.code);
    let code_check = CodeCheck::of(&assignment, confirmation.handover_code.as_deref());
    let confirmation_id = save(store, confirmation, report.evidence)?;
    Ok(Saved { confirmation_id, code_check })
}

/// Saves a failed attempt and returns its id.
pub fn fail(
    store: &LocalStore,
    id: &DeliveryId,
    report: Failed,
    confirmation_id: Option<String>,
) -> Result<Saved, CaptureError> {
    let assignment = open_assignment(store, id)?;
    let mut confirmation = blank(&assignment, Outcome::Failed, confirmation_id);
    confirmation.reason = Some(report.reason);
    confirmation.note = non_empty(report.note);
    let confirmation_id = save(store, confirmation, report.evidence)?;
    Ok(Saved { confirmation_id, code_check: CodeCheck::NotApplicable })
}

/// The assignment if it can be captured now: ready at its pickup node. Whether
/// something was already captured under its version is checked by the save
/// itself, atomically.
fn open_assignment(store: &LocalStore, id: &DeliveryId) -> Result<Assignment, CaptureError> {
    let assignment = store.assignment(id)?.ok_or_else(|| CaptureError::Unknown(id.clone()))?;
    let status = match assignment.status {
        AssignmentStatus::Ready => return Ok(assignment),
        AssignmentStatus::Upcoming => {
            return Err(CaptureError::NotReady { id: id.clone(), pickup_node: assignment.pickup_node })
        }
        AssignmentStatus::Delivered => "delivered",
        AssignmentStatus::Cancelled => "cancelled",
        AssignmentStatus::ReassignedAway => "reassigned to another courier",
    };
    Err(CaptureError::Closed { id: id.clone(), status })
}

fn blank(assignment: &Assignment, outcome: Outcome, confirmation_id: Option<String>) -> Confirmation {
    Confirmation {
        confirmation_id: confirmation_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        delivery_id: assignment.delivery_id.clone(),
        version: assignment.version,
        outcome,
        reason: None,
        note: None,
        quantity: 0,
        recipient: None,
        empties_collected: 0,
        captured_at: time::OffsetDateTime::now_utc(),
        position: None,
        signature: None,
        photo_digest: None,
        handover_code: None,
        device_seq: None,
        prev_hash: None,
        device_signature: None,
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

fn save(store: &LocalStore, mut confirmation: Confirmation, evidence: Evidence) -> Result<String, CaptureError> {
    if let Some(position) = evidence.position {
        // `Confirmation::check` bounds latitude and longitude; what the
        // signed record writes of the accuracy must be a number too.
        if position.accuracy_m.is_some_and(|metres| !metres.is_finite() || metres < 0.0) {
            return Err(CaptureError::Accuracy);
        }
    }
    confirmation.position = evidence.position;
    confirmation.photo_digest = evidence.photo.as_ref().map(|photo| photo.digest().to_owned());
    confirmation.check().map_err(CaptureError::Invalid)?;
    let confirmation_id = confirmation.confirmation_id.clone();
    match store.enqueue(&confirmation, evidence.photo.as_ref())? {
        Enqueued::Saved | Enqueued::AlreadySaved => Ok(confirmation_id),
        Enqueued::Taken(previous) => {
            Err(CaptureError::AlreadyCaptured { id: confirmation.delivery_id.clone(), previous })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::assignment;

    /// `id` at `version` as a pull would bring it (quantity 2, pickup at B1).
    fn pulled(id: &str, version: u64, status: AssignmentStatus) -> Assignment {
        Assignment { delivery_id: DeliveryId::parse(id).expect("id"), version, ..assignment(1, status) }
    }

    fn store_holding(assignments: &[Assignment]) -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open");
        store.apply_pull(assignments, "1", "now").expect("pulled");
        (dir, store)
    }

    fn handed_over() -> Delivered {
        Delivered { recipient: "Front desk".into(), ..Delivered::default() }
    }

    fn absent() -> Failed {
        Failed { reason: FailureReason::CustomerAbsent, note: None, evidence: Evidence::default() }
    }

    #[test]
    fn an_upcoming_delivery_refuses_deliver_and_fail_and_saves_nothing() {
        let (_dir, store) = store_holding(&[pulled("D-000003", 1, AssignmentStatus::Upcoming)]);
        let id = DeliveryId::parse("D-000003").expect("id");

        let delivered = deliver(&store, &id, handed_over(), None).expect_err("not ready");
        let failed = fail(&store, &id, absent(), None).expect_err("not ready");

        for refused in [delivered, failed] {
            assert!(matches!(&refused, CaptureError::NotReady { pickup_node, .. } if pickup_node.as_str() == "B1"));
            assert_eq!(
                refused.to_string(),
                "D-000003 is on its way to B1; confirm it once its goods are there (pull again to see it ready)"
            );
        }
        assert_eq!(store.queued(), 0);
        assert_eq!(store.captured_for(&id, 1).expect("read"), None);
    }

    #[test]
    fn once_a_pull_brings_it_ready_an_upcoming_delivery_can_be_captured() {
        let (_dir, store) = store_holding(&[pulled("D-000003", 1, AssignmentStatus::Upcoming)]);
        let id = DeliveryId::parse("D-000003").expect("id");
        assert!(matches!(deliver(&store, &id, handed_over(), None), Err(CaptureError::NotReady { .. })));

        store.apply_pull(&[pulled("D-000003", 2, AssignmentStatus::Ready)], "2", "later").expect("pulled");
        let saved = deliver(&store, &id, handed_over(), None).expect("saved once ready").confirmation_id;

        let outbox = store.outbox().expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert_eq!((outbox[0].confirmation_id.as_str(), outbox[0].version), (saved.as_str(), 2));
    }

    #[test]
    fn a_confirmation_the_dispatcher_reversed_can_be_captured_again_under_the_new_version() {
        let (_dir, store) = store_holding(&[pulled("D-000001", 1, AssignmentStatus::Ready)]);
        let id = DeliveryId::parse("D-000001").expect("id");
        let first = deliver(&store, &id, handed_over(), None).expect("saved").confirmation_id;
        store.settle(&first).expect("the server took it");
        store.apply_pull(&[pulled("D-000001", 2, AssignmentStatus::Delivered)], "2", "later").expect("pulled");
        assert!(matches!(fail(&store, &id, absent(), None), Err(CaptureError::Closed { .. })));

        store.apply_pull(&[pulled("D-000001", 3, AssignmentStatus::Ready)], "3", "reversed").expect("pulled");
        assert_eq!(store.captured_for(&id, 3).expect("read"), None, "open again under the new version");
        let second = deliver(&store, &id, handed_over(), None).expect("captured again").confirmation_id;

        assert_ne!(second, first);
        assert_eq!(store.captured_for(&id, 3).expect("read"), Some(second));
        assert_eq!(store.captured_for(&id, 1).expect("read"), Some(first), "the first capture keeps its slot");
    }

    #[test]
    fn a_follow_up_delivery_for_a_short_delivery_is_captured_under_its_own_id() {
        let (_dir, store) = store_holding(&[
            pulled("D-000001", 2, AssignmentStatus::Delivered),
            pulled("D-000001-2", 1, AssignmentStatus::Ready),
        ]);
        let follow_up = DeliveryId::parse("D-000001-2").expect("a follow-up id parses");

        let saved = fail(&store, &follow_up, absent(), None).expect("saved").confirmation_id;

        let outbox = store.outbox().expect("outbox");
        assert_eq!(outbox[0].delivery_id, follow_up);
        assert_eq!(store.captured_for(&follow_up, 1).expect("read"), Some(saved));
        assert_eq!(store.captured_for(&DeliveryId::from_seq(1), 1).expect("read"), None, "the original is apart");
    }

    /// A ready delivery whose receipt has the code 042517.
    fn coded(id: &str) -> Assignment {
        let hash = handover_shared::proof::hash_code("042517", &[3; 16]).expect("a hash");
        Assignment { handover_code_hash: Some(hash), ..pulled(id, 1, AssignmentStatus::Ready) }
    }

    fn with_code(code: &str) -> Delivered {
        Delivered { code: Some(code.into()), ..handed_over() }
    }

    #[test]
    fn the_code_entered_is_checked_at_once_and_saved_whether_it_matches_or_not() {
        let (_dir, store) = store_holding(&[coded("D-000001"), coded("D-000002"), coded("D-000003")]);
        let id = |raw: &str| DeliveryId::parse(raw).expect("id");

        let right = deliver(&store, &id("D-000001"), with_code("042 517"), None).expect("saved");
        let wrong = deliver(&store, &id("D-000002"), with_code("111111"), None).expect("saved all the same");
        let none = deliver(&store, &id("D-000003"), handed_over(), None).expect("saved without");

        assert_eq!(right.code_check.message(), Some("handover code matches"));
        assert_eq!(
            wrong.code_check.message(),
            Some("handover code does not match: the delivery is saved and recorded as not verified")
        );
        assert_eq!(none.code_check, CodeCheck::NotEntered);
        let codes: Vec<Option<String>> = store.outbox().expect("outbox").into_iter().map(|c| c.handover_code).collect();
        assert_eq!(codes, [Some("042 517".to_owned()), Some("111111".to_owned()), None], "as entered, for the server");
    }

    #[test]
    fn a_code_for_a_receipt_without_one_is_kept_and_said_unchecked() {
        let (_dir, store) = store_holding(&[
            pulled("D-000001", 1, AssignmentStatus::Ready),
            pulled("D-000002", 1, AssignmentStatus::Ready),
        ]);
        let id = |raw: &str| DeliveryId::parse(raw).expect("id");

        let entered = deliver(&store, &id("D-000001"), with_code("042517"), None).expect("saved");
        let plain = deliver(&store, &id("D-000002"), handed_over(), None).expect("saved");

        assert_eq!(entered.code_check, CodeCheck::ReceiptHasNoCode);
        assert!(entered.code_check.message().is_some_and(|m| m.contains("has no handover code")));
        assert_eq!(plain.code_check.message(), None, "no code on either side: nothing to say");
    }

    #[test]
    fn a_failed_attempt_keeps_its_photo_and_position() {
        let (_dir, store) = store_holding(&[pulled("D-000001", 1, AssignmentStatus::Ready)]);
        let id = DeliveryId::parse("D-000001").expect("id");
        let photo = crate::store::tests::jpeg(5);
        let position = Position { lat: -33.8688, lon: 151.2093, accuracy_m: Some(8.0) };
        let report = Failed { evidence: Evidence { photo: Some(photo.clone()), position: Some(position) }, ..absent() };

        let saved = fail(&store, &id, report, None).expect("saved");

        assert_eq!(saved.code_check.message(), None);
        let kept = store.outbox().expect("outbox").remove(0);
        assert_eq!((kept.photo_digest.as_deref(), kept.position), (Some(photo.digest()), Some(position)));
        assert_eq!(store.photo(photo.digest()).expect("read").as_deref(), Some(photo.bytes()));
    }

    #[test]
    fn a_position_out_of_range_or_an_accuracy_that_is_no_distance_saves_nothing() {
        let (_dir, store) = store_holding(&[pulled("D-000001", 1, AssignmentStatus::Ready)]);
        let id = DeliveryId::parse("D-000001").expect("id");
        let at = |lat, accuracy_m| Delivered {
            evidence: Evidence { photo: None, position: Some(Position { lat, lon: 10.0, accuracy_m }) },
            ..handed_over()
        };

        assert!(matches!(deliver(&store, &id, at(91.0, None), None), Err(CaptureError::Invalid(_))));
        assert!(matches!(deliver(&store, &id, at(f64::NAN, None), None), Err(CaptureError::Invalid(_))));
        assert!(matches!(deliver(&store, &id, at(50.0, Some(-1.0)), None), Err(CaptureError::Accuracy)));
        assert!(matches!(deliver(&store, &id, at(50.0, Some(f64::INFINITY)), None), Err(CaptureError::Accuracy)));
        assert_eq!(store.queued(), 0);
        assert!(deliver(&store, &id, at(50.0, Some(4.5)), None).is_ok());
    }
}
