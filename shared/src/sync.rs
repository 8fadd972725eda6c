//! The sync protocol between the handheld agent and the server: the
//! assignments a courier pulls, and the delivery confirmations it pushes.
//!
//! Compatibility: the agent must ignore fields it does not know in what it
//! pulls; the server refuses unknown fields in what is pushed.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{CustomerId, DeliveryId, DeviceId, ItemId, NodeId, ReceiptId};

/// What the courier reports happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Failed,
}

/// Why a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    CustomerAbsent,
    Refused,
    Damaged,
    WrongAddress,
    /// Needs a note saying what happened.
    Other,
}

impl FailureReason {
    /// The wire code, as pushed and as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::CustomerAbsent => "customer_absent",
            FailureReason::Refused => "refused",
            FailureReason::Damaged => "damaged",
            FailureReason::WrongAddress => "wrong_address",
            FailureReason::Other => "other",
        }
    }
}

/// Where the handheld was, when it knew.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
}

/// One delivery confirmation, as captured on the handheld.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// Made by the agent (a UUID) before it says "saved"; the key of exactly-once.
    pub confirmation_id: String,
    pub delivery_id: DeliveryId,
    /// The assignment version the handheld held when the courier captured this.
    pub version: u64,
    pub outcome: Outcome,
    /// Required when `outcome` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Units handed over (`delivered`); 0 for `failed`.
    pub quantity: u32,
    /// Who took the goods (`delivered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Used cartridges taken back.
    #[serde(default)]
    pub empties_collected: u32,
    /// The handheld's clock: recorded, never trusted for decisions.
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// A drawn signature, as a `data:image/png;base64,...` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// SHA-256 (hex) of a photo kept on the handheld; the photo itself is
    /// uploaded on its own (`PUT /api/v1/deliveries/{id}/photos/{digest}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo_digest: Option<String>,
    /// The customer's handover code as entered at the door; the server checks
    /// it and records whether it matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_code: Option<String>,
    /// This confirmation's place in its device's chain: 1, 2, 3... Signed
    /// confirmations only (see [`crate::proof::SignedRecord`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_seq: Option<u64>,
    /// SHA-256 (hex) of the device's previous signed record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// Ed25519 (base64) of the signed record, by the device's registered key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_signature: Option<String>,
}

pub const MAX_RECIPIENT_LEN: usize = 200;
pub const MAX_NOTE_LEN: usize = 1000;
/// A drawn signature as a PNG data URL stays well under this.
pub const MAX_SIGNATURE_BYTES: usize = 256 * 1024;
pub const MAX_EMPTIES: u32 = 10_000;
/// Far beyond any handheld's life (a million confirmations a day for a
/// thousand years), and far from overflowing the server's chain arithmetic.
pub const MAX_DEVICE_SEQ: u64 = 1 << 40;

impl Confirmation {
    /// A `delivered` confirmation captured now under a fresh id, with nothing
    /// optional: no note, no empties, no position, signature or photo.
    pub fn delivered(delivery_id: DeliveryId, version: u64, quantity: u32, recipient: &str) -> Self {
        Confirmation {
            confirmation_id: uuid::Uuid::now_v7().to_string(),
            delivery_id,
            version,
            outcome: Outcome::Delivered,
            reason: None,
            note: None,
            quantity,
            recipient: Some(recipient.to_owned()),
            empties_collected: 0,
            captured_at: OffsetDateTime::now_utc(),
            position: None,
            signature: None,
            photo_digest: None,
            handover_code: None,
            device_seq: None,
            prev_hash: None,
            device_signature: None,
        }
    }

    /// Whether it carries a device signature (with its place in the chain).
    pub fn is_signed(&self) -> bool {
        self.device_signature.is_some()
    }

    /// Checks what a confirmation says on its own, before anyone looks at the
    /// delivery. The server judges pushed confirmations with it, and the agent
    /// checks a capture with it before saving, so that nothing the courier is
    /// told "saved" can come back `invalid`.
    pub fn check(&self) -> Result<(), String> {
        if uuid::Uuid::try_parse(&self.confirmation_id).is_err() {
            return Err(format!("confirmation_id {:?} is not a UUID", self.confirmation_id));
        }
        if self.version == 0 {
            return Err("version must be the assignment version the handheld held (1 or more)".into());
        }
        let text_ok = |text: &str, max: usize| text.chars().count() <= max && !text.chars().any(char::is_control);
        if let Some(note) = &self.note {
            if !text_ok(note, MAX_NOTE_LEN) {
                return Err(format!("note must be at most {MAX_NOTE_LEN} characters, without control characters"));
            }
        }
        if self.empties_collected > MAX_EMPTIES {
            return Err(format!("empties_collected must be at most {MAX_EMPTIES}"));
        }
        if let Some(signature) = &self.signature {
            if signature.len() > MAX_SIGNATURE_BYTES || crate::proof::signature_png(signature).is_err() {
                return Err(format!("signature must be a PNG data URL of at most {MAX_SIGNATURE_BYTES} bytes"));
            }
        }
        if let Some(digest) = &self.photo_digest {
            if !crate::proof::is_sha256_hex(digest) {
                return Err("photo_digest must be a SHA-256 in lowercase hex (64 characters)".into());
            }
        }
        if let Some(code) = &self.handover_code {
            if code.chars().count() > 32 || code.chars().any(char::is_control) {
                return Err("handover_code must be at most 32 characters, without control characters".into());
            }
        }
        match (self.device_seq, &self.prev_hash, &self.device_signature) {
            (None, None, None) => {}
            (Some(seq), Some(prev), Some(_))
                if (1..=MAX_DEVICE_SEQ).contains(&seq) && crate::proof::is_sha256_hex(prev) => {}
            _ => {
                return Err(format!(
                    "a signed confirmation carries device_seq (1 to {MAX_DEVICE_SEQ}), prev_hash (SHA-256 in hex) \
                     and device_signature together"
                ))
            }
        }
        if let Some(position) = &self.position {
            if !(-90.0..=90.0).contains(&position.lat) || !(-180.0..=180.0).contains(&position.lon) {
                return Err("position must have a latitude in -90..90 and a longitude in -180..180".into());
            }
            if position.accuracy_m.is_some_and(|metres| !metres.is_finite() || metres < 0.0) {
                return Err("position.accuracy_m must be a number of metres, 0 or more".into());
            }
        }
        match self.outcome {
            Outcome::Delivered => {
                let recipient = self.recipient.as_deref().map(str::trim).unwrap_or_default();
                if recipient.is_empty() || !text_ok(recipient, MAX_RECIPIENT_LEN) {
                    return Err(format!(
                        "a delivered confirmation names its recipient (1 to {MAX_RECIPIENT_LEN} characters)"
                    ));
                }
                if self.quantity == 0 {
                    return Err("a delivered confirmation hands over at least 1 unit".into());
                }
                if self.reason.is_some() {
                    return Err("a delivered confirmation has no failure reason".into());
                }
            }
            Outcome::Failed => {
                match self.reason {
                    None => return Err("a failed confirmation gives its reason".into()),
                    Some(FailureReason::Other)
                        if self.note.as_deref().map(str::trim).unwrap_or_default().is_empty() =>
                    {
                        return Err("reason `other` needs a note".into())
                    }
                    Some(_) => {}
                }
                if self.quantity != 0 || self.empties_collected != 0 {
                    return Err("a failed confirmation hands over nothing and collects nothing".into());
                }
            }
        }
        Ok(())
    }
}

/// The most confirmations one batch may carry; the server refuses more.
pub const MAX_BATCH: u16 = 200;

/// `POST /api/v1/sync/confirmations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationBatch {
    pub device_id: DeviceId,
    pub confirmations: Vec<Confirmation>,
    /// How many confirmations the outbox holds in all, this batch included: the
    /// dashboard shows it per device.
    #[serde(default)]
    pub queued: Option<u64>,
}

/// What became of one pushed confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// Applied now. Remove it from the outbox.
    Accepted,
    /// Already applied with the same content. Remove it from the outbox.
    Duplicate,
    /// Will never be applied; `code` says why. Move it to the rejected list.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmationResult {
    pub confirmation_id: String,
    pub status: ResultStatus,
    /// For `rejected`: `not_assignee`, `not_ready`, `delivery_cancelled`,
    /// `already_delivered`, `conflicting_duplicate`, `superseded` or `invalid`.
    /// New codes may be added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer to a batch: one result per confirmation, in order. The server
/// answers only once what it accepted is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmationResults {
    pub results: Vec<ConfirmationResult>,
}

/// How an assignment stands for the courier who pulls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentStatus {
    /// The goods are not at the delivering node yet.
    Upcoming,
    Ready,
    Delivered,
    Cancelled,
    /// Given to another courier: drop it from the handheld.
    ReassignedAway,
}

/// One assignment as the handheld keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub delivery_id: DeliveryId,
    /// Quote it in confirmations captured under this assignment.
    pub version: u64,
    pub status: AssignmentStatus,
    pub receipt_id: ReceiptId,
    pub customer_id: CustomerId,
    pub customer_name: String,
    pub item_id: ItemId,
    pub item_name: String,
    pub quantity: u32,
    pub empties_expected: u32,
    /// Where the courier picks the goods up.
    pub pickup_node: NodeId,
    /// The customer's handover code as a slow salted hash (a PHC string, see
    /// [`crate::proof::code_matches`]), never the code; absent for receipts
    /// made before codes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_code_hash: Option<String>,
}

/// `GET /api/v1/sync/assignments?since=CURSOR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentChanges {
    /// Pass as `since` next time.
    pub cursor: String,
    pub assignments: Vec<Assignment>,
    /// More changes wait after this page: pull again with the new cursor. A
    /// page holds a bounded number of changes, so that neither side ever holds
    /// a whole day's feed in memory.
    #[serde(default)]
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_delivered_confirmation_passes_its_own_check_under_a_fresh_id() {
        let delivery = DeliveryId::from_seq(7);
        let (one, two) =
            (Confirmation::delivered(delivery.clone(), 2, 3, "Desk"), Confirmation::delivered(delivery, 2, 3, "Desk"));
        assert_eq!(one.check(), Ok(()));
        assert_ne!(one.confirmation_id, two.confirmation_id, "each capture has its own id");
        assert_eq!(
            (one.outcome, one.version, one.quantity, one.recipient.as_deref()),
            (Outcome::Delivered, 2, 3, Some("Desk"))
        );
    }
}
