//! Delivery confirmations: how the server judges one that a handheld pushes.
//! The rules are what make the Delivered flag flip exactly once: a confirmation
//! id seen before is answered with its first outcome (never applied twice), the
//! uploader must have held the assignment version it quotes (never trusting the
//! device's clock), and a delivery confirmed by someone else refuses the rest.

use handover_shared::{
    api::DeliveryProof,
    sync::{Confirmation, Outcome},
    CustomerId, DeviceId, ItemId, NodeId, Username,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{
    changes::{ChangeSet, Inconsistent, StockBook},
    orders::{CustomerAccount, Receipt},
    shipments::{hand_over, issue_leg_stock, Assignment, Delivery, DeliveryState, LegStatus, StockEffect},
    stock::Movement,
};

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

impl DeviceSync {
    /// This sync as recorded over the device's `previous` one: a sync that
    /// reports nothing queued (a pull) keeps what the last push said.
    pub fn over(&self, previous: Option<&DeviceSync>) -> DeviceSync {
        let mut sync = self.clone();
        if sync.reported_queued.is_none() {
            sync.reported_queued = previous.and_then(|before| before.reported_queued);
        }
        sync
    }
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
    // A delivered confirmation is honoured under any version its uploader held
    // (the goods were handed over); a failed attempt only under the current
    // one, so that it cannot take back a delivery that moved on since.
    if confirmation.outcome == Outcome::Failed && confirmation.version != delivery.version {
        return reject(
            RejectCode::Superseded,
            format!(
                "delivery {} is at version {}; a failed attempt captured under version {} changes nothing",
                delivery.delivery_id, delivery.version, confirmation.version
            ),
        );
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

/// What a pushed confirmation needs read besides its id's record and its
/// delivery: the receipt, the stock its goods move through, the customer's
/// account when empties come back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReads {
    pub receipt: bool,
    pub stock: Vec<(NodeId, ItemId)>,
    pub account: Option<CustomerId>,
}

impl PushReads {
    pub fn of(confirmation: &Confirmation, delivery: Option<&Delivery>) -> PushReads {
        match delivery {
            Some(delivery) if confirmation.outcome == Outcome::Delivered => PushReads {
                receipt: true,
                stock: delivery.stock_nodes().map(|node| (node.clone(), delivery.item_id.clone())).collect(),
                account: (confirmation.empties_collected > 0).then(|| delivery.customer_id.clone()),
            },
            _ => PushReads::default(),
        }
    }
}

/// The records a pushed confirmation is judged and applied against, read as
/// [`PushReads`] says.
#[derive(Debug, Clone, Default)]
pub struct PushInputs {
    pub seen: Option<SeenConfirmation>,
    pub delivery: Option<Delivery>,
    pub receipt: Option<Receipt>,
    pub stock: StockBook,
    /// `None` when not read, or when the customer has no account record yet.
    pub account: Option<CustomerAccount>,
}

/// Who pushed, from which device, and when the server received it.
#[derive(Debug, Clone, Copy)]
pub struct Pusher<'a> {
    pub uploader: &'a Username,
    pub device: &'a DeviceId,
    pub received_at: OffsetDateTime,
}

/// Judges one pushed confirmation and, when sound, applies it: the answer and
/// everything it changes. A delivered confirmation, in one change: issues the
/// transfer legs not yet issued (the goods did travel), hands the goods over,
/// frees what was not handed over, turns the receipt's Delivered flag on with
/// the proof, applies the empties collected. A failed one puts the delivery
/// back to the dispatcher under a new version. The first outcome of a
/// well-formed id is remembered; an id seen before is never remembered again.
pub fn push(
    confirmation: &Confirmation,
    digest: &str,
    by: Pusher<'_>,
    inputs: PushInputs,
) -> Result<(PushOutcome, ChangeSet), Inconsistent> {
    let c = confirmation;
    let mut changes = ChangeSet::default();
    let remember = |outcome: FirstOutcome| SeenConfirmation {
        confirmation_id: c.confirmation_id.clone(),
        digest: digest.to_owned(),
        delivery_id: c.delivery_id.clone(),
        uploader: by.uploader.clone(),
        device_id: by.device.clone(),
        received_at: by.received_at,
        outcome,
    };
    match judge(c, digest, by.uploader, inputs.seen.as_ref(), inputs.delivery.as_ref()) {
        Verdict::Replay(first) => return Ok((PushOutcome::replay(&first), changes)),
        Verdict::Reject { code, message } => {
            // The first outcome stays forever: an id seen before is not
            // remembered again, and a malformed id has no identity to replay.
            if inputs.seen.is_none() && uuid::Uuid::parse_str(&c.confirmation_id).is_ok() {
                changes.confirmations.push(remember(FirstOutcome::Rejected { code, message: message.clone() }));
            }
            return Ok((PushOutcome::Rejected { code, message }, changes));
        }
        Verdict::Apply => {}
    }
    let PushInputs { delivery, receipt, mut stock, account, .. } = inputs;
    let before = delivery.ok_or_else(|| Inconsistent(format!("an applied confirmation without {}", c.delivery_id)))?;
    let mut delivery = before.clone();
    let now = by.received_at;
    let previous = before.assignee.clone();
    let detail = match c.outcome {
        Outcome::Delivered => {
            let mut receipt =
                receipt.ok_or_else(|| Inconsistent(format!("the receipt of {} was not read", delivery.delivery_id)))?;
            let receipt_before = receipt.clone();
            hand_over_goods(&mut delivery, c.quantity, &mut stock, now)?;
            receipt.delivered = true;
            receipt.delivered_at = Some(now);
            receipt.proof = Some(DeliveryProof {
                confirmation_id: c.confirmation_id.clone(),
                delivered_by: by.uploader.clone(),
                device_id: by.device.clone(),
                captured_at: c.captured_at,
                received_at: now,
                recipient: c.recipient.clone().unwrap_or_default(),
                quantity: c.quantity,
                empties_collected: c.empties_collected,
                position: c.position,
                signed: c.signature.is_some(),
                photo_digest: c.photo_digest.clone(),
            });
            if c.empties_collected > 0 {
                let account = account.unwrap_or_default().with_empties_collected(c.empties_collected);
                changes.customer_accounts.push((receipt.customer_id.clone(), account));
            }
            changes.put_receipt(Some(receipt_before), receipt);
            changes.take_stock(stock);
            format!("delivered {} of {} to {}", c.quantity, delivery.quantity, c.recipient.as_deref().unwrap_or(""))
        }
        Outcome::Failed => {
            // Back to the dispatcher for another attempt.
            let reason = c.reason.map(|r| format!("{r:?}")).unwrap_or_default();
            delivery.version += 1;
            delivery.assignee = None;
            delivery.assignments.push(Assignment {
                version: delivery.version,
                assignee: None,
                at: now,
                by: format!("{} (failed: {reason})", by.uploader),
            });
            format!("failed: {reason}; {}", c.note.as_deref().unwrap_or(""))
        }
    };
    for courier in previous.iter().chain((previous.as_ref() != Some(by.uploader)).then_some(by.uploader)) {
        changes.notify(courier, &delivery.delivery_id);
    }
    changes.audit.push(AuditEntry {
        at: now,
        actor: by.uploader.clone(),
        device_id: by.device.clone(),
        action: format!("{:?}", c.outcome).to_lowercase(),
        delivery_id: delivery.delivery_id.clone(),
        confirmation_id: c.confirmation_id.clone(),
        detail,
    });
    changes.put_delivery(Some(before), delivery);
    changes.confirmations.push(remember(FirstOutcome::Accepted));
    Ok((PushOutcome::Accepted, changes))
}

/// The goods reach the customer: transfer legs not recorded yet are issued, in
/// the flow of the goods; `quantity` units leave the delivering node and the
/// rest of the reservation is freed; the delivery is delivered.
fn hand_over_goods(
    delivery: &mut Delivery,
    quantity: u32,
    stock: &mut StockBook,
    now: OffsetDateTime,
) -> Result<(), Inconsistent> {
    let item = delivery.item_id.clone();
    let last = delivery
        .legs
        .len()
        .checked_sub(1)
        .ok_or_else(|| Inconsistent(format!("{} has no legs", delivery.delivery_id)))?;
    for index in 0..last {
        if delivery.legs[index].status != LegStatus::Issued {
            issue_leg_stock(delivery, index, stock, now)?;
        }
    }
    let from = delivery.delivering_node().clone();
    let leg_id = delivery.legs[last].leg_id.clone();
    let [handed] = hand_over(&from, quantity);
    stock.apply(&item, &handed, Movement::HandOver { leg_id }, now)?;
    let rest = delivery.quantity - quantity;
    if rest > 0 {
        let release = StockEffect { node: &from, on_hand_delta: 0, reserved_delta: -i64::from(rest) };
        stock.apply(&item, &release, Movement::Release { delivery_id: delivery.delivery_id.clone() }, now)?;
    }
    delivery.legs[last].status = LegStatus::Completed;
    delivery.legs[last].issued_at = Some(now);
    delivery.state = DeliveryState::Delivered;
    Ok(())
}

#[cfg(test)]
#[path = "confirmations_tests.rs"]
mod tests;
