//! Capturing what happened at a delivery: checked against the local copy of the
//! assignment and against the confirmation rules the server applies, then saved
//! durably in the outbox. The command line and the handheld page both capture
//! through here, so they accept and refuse exactly the same things.

use handover_shared::{
    sync::{Assignment, AssignmentStatus, Confirmation, FailureReason, Outcome},
    DeliveryId,
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

/// The assignment if it is still open. Whether something was already captured
/// under its version is checked by the save itself, atomically.
fn open_assignment(store: &LocalStore, id: &DeliveryId) -> Result<Assignment, CaptureError> {
    let assignment = store.assignment(id)?.ok_or_else(|| CaptureError::Unknown(id.clone()))?;
    let status = match assignment.status {
        AssignmentStatus::Upcoming | AssignmentStatus::Ready => None,
        AssignmentStatus::Delivered => Some("delivered"),
        AssignmentStatus::Cancelled => Some("cancelled"),
        AssignmentStatus::ReassignedAway => Some("reassigned to another courier"),
    };
    if let Some(status) = status {
        return Err(CaptureError::Closed { id: id.clone(), status });
    }
    Ok(assignment)
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
