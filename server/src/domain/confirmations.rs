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

pub const MAX_RECIPIENT_LEN: usize = 200;
pub const MAX_NOTE_LEN: usize = 1000;
/// A drawn signature as a PNG data URL stays well under this.
pub const MAX_SIGNATURE_BYTES: usize = 256 * 1024;
pub const MAX_EMPTIES: u32 = 10_000;

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
    Invalid,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::NotAssignee => "not_assignee",
            RejectCode::DeliveryCancelled => "delivery_cancelled",
            RejectCode::AlreadyDelivered => "already_delivered",
            RejectCode::ConflictingDuplicate => "conflicting_duplicate",
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

/// Checks what a confirmation says on its own, before looking at the delivery.
pub fn check_content(c: &Confirmation) -> Result<(), String> {
    if uuid::Uuid::parse_str(&c.confirmation_id).is_err() {
        return Err(format!("confirmation_id {:?} is not a UUID", c.confirmation_id));
    }
    if c.version == 0 {
        return Err("version must be the assignment version the handheld held (1 or more)".into());
    }
    let text_ok = |text: &str, max: usize| text.chars().count() <= max && !text.chars().any(char::is_control);
    if let Some(note) = &c.note {
        if !text_ok(note, MAX_NOTE_LEN) {
            return Err(format!("note must be at most {MAX_NOTE_LEN} characters, without control characters"));
        }
    }
    if c.empties_collected > MAX_EMPTIES {
        return Err(format!("empties_collected must be at most {MAX_EMPTIES}"));
    }
    if let Some(signature) = &c.signature {
        if signature.len() > MAX_SIGNATURE_BYTES || !signature.starts_with("data:image/png;base64,") {
            return Err(format!("signature must be a PNG data URL of at most {MAX_SIGNATURE_BYTES} bytes"));
        }
    }
    if let Some(digest) = &c.photo_digest {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("photo_digest must be a SHA-256 in hex (64 characters)".into());
        }
    }
    if let Some(position) = &c.position {
        if !(-90.0..=90.0).contains(&position.lat) || !(-180.0..=180.0).contains(&position.lon) {
            return Err("position must have a latitude in -90..90 and a longitude in -180..180".into());
        }
    }
    match c.outcome {
        Outcome::Delivered => {
            let recipient = c.recipient.as_deref().map(str::trim).unwrap_or_default();
            if recipient.is_empty() || !text_ok(recipient, MAX_RECIPIENT_LEN) {
                return Err(format!(
                    "a delivered confirmation names its recipient (1 to {MAX_RECIPIENT_LEN} characters)"
                ));
            }
            if c.quantity == 0 {
                return Err("a delivered confirmation hands over at least 1 unit".into());
            }
            if c.reason.is_some() {
                return Err("a delivered confirmation has no failure reason".into());
            }
        }
        Outcome::Failed => {
            match c.reason {
                None => return Err("a failed confirmation gives its reason".into()),
                Some(handover_shared::sync::FailureReason::Other)
                    if c.note.as_deref().map(str::trim).unwrap_or_default().is_empty() =>
                {
                    return Err("reason `other` needs a note".into())
                }
                Some(_) => {}
            }
            if c.quantity != 0 || c.empties_collected != 0 {
                return Err("a failed confirmation hands over nothing and collects nothing".into());
            }
        }
    }
    Ok(())
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
    if let Err(message) = check_content(confirmation) {
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
