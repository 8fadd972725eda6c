//! Delivery confirmations: how the server judges one that a handheld pushes.
//! The rules are what make the Delivered flag flip exactly once: a confirmation
//! id seen before is answered with its first outcome (never applied twice), the
//! uploader must have held the assignment version it quotes (never trusting the
//! device's clock), and a delivery confirmed by someone else refuses the rest.

use handover_shared::{
    sync::{Confirmation, Outcome},
    DeviceId, Username,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::shipments::{Delivery, DeliveryState};

pub use handover_shared::sync::{MAX_EMPTIES, MAX_NOTE_LEN, MAX_RECIPIENT_LEN, MAX_SIGNATURE_BYTES};

/// Why a confirmation will never be applied. Stable wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The uploader did not hold the assignment version it quotes.
    NotAssignee,
    DeliveryCancelled,
    /// Another confirmation was accepted first.
    AlreadyDelivered,
    /// This id was seen before with other content.
    ConflictingDuplicate,
    /// A `failed` captured under an assignment version that is no longer the
    /// delivery's current one: the delivery moved on since, so it changes nothing.
    Superseded,
    Invalid,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::NotAssignee => "not_assignee",
            RejectCode::DeliveryCancelled => "delivery_cancelled",
            RejectCode::AlreadyDelivered => "already_delivered",
            RejectCode::ConflictingDuplicate => "conflicting_duplicate",
            RejectCode::Superseded => "superseded",
            RejectCode::Invalid => "invalid",
        }
    }
}

/// The first outcome of a confirmation id, replayed to every retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FirstOutcome {
    Accepted,
    Rejected { code: RejectCode, message: String },
}

/// What the server remembers of every confirmation id it judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenConfirmation {
    pub confirmation_id: String,
    /// SHA-256 (hex) of the content, to tell a retry from a different confirmation.
    pub digest: String,
    pub delivery_id: handover_shared::DeliveryId,
    pub uploader: Username,
    pub device_id: DeviceId,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub outcome: FirstOutcome,
}

/// What the server answers for one pushed confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    Accepted,
    Duplicate,
    Rejected { code: RejectCode, message: String },
}

impl PushOutcome {
    /// The answer to a retry of a confirmation whose first outcome was `first`.
    pub fn replay(first: &FirstOutcome) -> PushOutcome {
        match first {
            FirstOutcome::Accepted => PushOutcome::Duplicate,
            FirstOutcome::Rejected { code, message } => PushOutcome::Rejected { code: *code, message: message.clone() },
        }
    }
}

/// The last time a device synced, and what it said it still had queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSync {
    pub device_id: DeviceId,
    pub username: Username,
    #[serde(with = "time::serde::rfc3339")]
    pub last_sync_at: OffsetDateTime,
    pub reported_queued: Option<u64>,
}

/// One entry of the audit log: who did what to which delivery, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: Username,
    pub device_id: DeviceId,
    pub action: String,
    pub delivery_id: handover_shared::DeliveryId,
    pub confirmation_id: String,
    pub detail: String,
}

/// The server's decision for one pushed confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New and sound: apply it.
    Apply,
    /// Seen before with the same content: answer as the first time, change nothing.
    Replay(FirstOutcome),
    Reject {
        code: RejectCode,
        message: String,
    },
}

fn reject(code: RejectCode, message: impl Into<String>) -> Verdict {
    Verdict::Reject { code, message: message.into() }
}

/// The digest of a confirmation's content (its canonical JSON).
pub fn digest(confirmation: &Confirmation) -> String {
    let bytes = serde_json::to_vec(confirmation).unwrap_or_default();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Judges a pushed confirmation. `seen` is what the server remembers of its id,
/// `delivery` the delivery it names, as of now.
pub fn judge(
    confirmation: &Confirmation,
    digest: &str,
    uploader: &Username,
    seen: Option<&SeenConfirmation>,
    delivery: Option<&Delivery>,
) -> Verdict {
    if let Some(seen) = seen {
        return if seen.digest == digest {
            Verdict::Replay(seen.outcome.clone())
        } else {
            reject(
                RejectCode::ConflictingDuplicate,
                format!("confirmation {} was received before with other content", confirmation.confirmation_id),
            )
        };
    }
    if let Err(message) = confirmation.check() {
        return reject(RejectCode::Invalid, message);
    }
    let Some(delivery) = delivery else {
        return reject(RejectCode::Invalid, format!("there is no delivery {}", confirmation.delivery_id));
    };
    let held =
        delivery.assignments.iter().any(|a| a.version == confirmation.version && a.assignee.as_ref() == Some(uploader));
    if !held {
        return reject(
            RejectCode::NotAssignee,
            format!("{uploader} did not hold delivery {} at version {}", delivery.delivery_id, confirmation.version),
        );
    }
    match delivery.state {
        DeliveryState::Cancelled => {
            return reject(RejectCode::DeliveryCancelled, format!("delivery {} was cancelled", delivery.delivery_id))
        }
        DeliveryState::Delivered => {
            return reject(
                RejectCode::AlreadyDelivered,
                format!("delivery {} was already confirmed by another confirmation", delivery.delivery_id),
            )
        }
        DeliveryState::Open => {}
    }
    if confirmation.outcome == Outcome::Delivered && confirmation.quantity > delivery.quantity {
        return reject(
            RejectCode::Invalid,
            format!(
                "{} units handed over, but delivery {} carries {}",
                confirmation.quantity, delivery.delivery_id, delivery.quantity
            ),
        );
    }
    Verdict::Apply
}

#[cfg(test)]
#[path = "confirmations_tests.rs"]
mod tests;
