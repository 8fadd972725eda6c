//! Capturing what happened at a delivery: checked against the local copy of the
//! assignment and against the confirmation rules the server applies, then saved
//! durably in the outbox. The command line and the handheld page both capture
//! through here, so they accept and refuse exactly the same things.

use handover_shared::{
    sync::{Assignment, AssignmentStatus, Confirmation, FailureReason, Outcome},
    DeliveryId, NodeId,
};

use crate::store::{Enqueued, LocalStore};

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
}

/// What the courier reports for a failed attempt.
#[derive(Debug, Clone)]
pub struct Failed {
    pub reason: FailureReason,
    pub note: Option<String>,
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
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Saves a delivered confirmation and returns its id. `confirmation_id` lets a
/// form sent twice (a double tap, a reload) land once: the second time finds it
/// saved and says so; the command line passes `None`.
pub fn deliver(
    store: &LocalStore,
    id: &DeliveryId,
    report: Delivered,
    confirmation_id: Option<String>,
) -> Result<String, CaptureError> {
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
    save(store, confirmation)
}

/// Saves a failed attempt and returns its id.
pub fn fail(
    store: &LocalStore,
    id: &DeliveryId,
    report: Failed,
    confirmation_id: Option<String>,
) -> Result<String, CaptureError> {
    let assignment = open_assignment(store, id)?;
    let mut confirmation = blank(&assignment, Outcome::Failed, confirmation_id);
    confirmation.reason = Some(report.reason);
    confirmation.note = non_empty(report.note);
    save(store, confirmation)
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
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

fn save(store: &LocalStore, confirmation: Confirmation) -> Result<String, CaptureError> {
    confirmation.check().map_err(CaptureError::Invalid)?;
    let confirmation_id = confirmation.confirmation_id.clone();
    match store.enqueue(&confirmation)? {
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
        Failed { reason: FailureReason::CustomerAbsent, note: None }
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
        let saved = deliver(&store, &id, handed_over(), None).expect("saved once ready");

        let outbox = store.outbox().expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert_eq!((outbox[0].confirmation_id.as_str(), outbox[0].version), (saved.as_str(), 2));
    }

    #[test]
    fn a_confirmation_the_dispatcher_reversed_can_be_captured_again_under_the_new_version() {
        let (_dir, store) = store_holding(&[pulled("D-000001", 1, AssignmentStatus::Ready)]);
        let id = DeliveryId::parse("D-000001").expect("id");
        let first = deliver(&store, &id, handed_over(), None).expect("saved");
        store.settle(&first).expect("the server took it");
        store.apply_pull(&[pulled("D-000001", 2, AssignmentStatus::Delivered)], "2", "later").expect("pulled");
        assert!(matches!(fail(&store, &id, absent(), None), Err(CaptureError::Closed { .. })));

        store.apply_pull(&[pulled("D-000001", 3, AssignmentStatus::Ready)], "3", "reversed").expect("pulled");
        assert_eq!(store.captured_for(&id, 3).expect("read"), None, "open again under the new version");
        let second = deliver(&store, &id, handed_over(), None).expect("captured again");

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

        let saved = fail(&store, &follow_up, absent(), None).expect("saved");

        let outbox = store.outbox().expect("outbox");
        assert_eq!(outbox[0].delivery_id, follow_up);
        assert_eq!(store.captured_for(&follow_up, 1).expect("read"), Some(saved));
        assert_eq!(store.captured_for(&DeliveryId::from_seq(1), 1).expect("read"), None, "the original is apart");
    }
}
