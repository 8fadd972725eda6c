//! Delivery confirmations: how the server judges one that a handheld pushes.
//! The rules are what make the Delivered flag flip exactly once: a confirmation
//! id seen before is answered with its first outcome (never applied twice), the
//! uploader must have held the assignment version it quotes (never trusting the
//! device's clock), and a delivery confirmed by someone else refuses the rest.

use handover_shared::{
    api::{DeliveryProof, DeviceSignature},
    proof::{normalise_code, sha256_hex, signature_png},
    sync::{Confirmation, Outcome},
    CustomerId, DeliveryId, DeviceId, ItemId, NodeId, Username,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{
    chain::{self, DeviceChain, SignatureCheck},
    changes::{ChangeSet, Inconsistent, StockBook},
    orders::{CustomerAccount, Receipt},
    shipments::{
        hand_over, reserve, Assignment, Attempt, Delivery, DeliveryState, DeliveryStatus, Destination, Leg, LegStatus,
        StockEffect,
    },
    stock::Movement,
};

pub use handover_shared::sync::{MAX_EMPTIES, MAX_NOTE_LEN, MAX_RECIPIENT_LEN, MAX_SIGNATURE_BYTES};

/// Why a confirmation will never be applied. Stable wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The uploader did not hold the assignment version it quotes.
    NotAssignee,
    /// The delivery's goods are not at its delivering node yet (transfer legs
    /// not issued): nothing can have been handed over, nor attempted.
    NotReady,
    DeliveryCancelled,
    /// Another confirmation was accepted first.
    AlreadyDelivered,
    /// This id was seen before with other content.
    ConflictingDuplicate,
    /// A `failed` captured under an assignment version that is no longer the
    /// delivery's current one: the delivery moved on since, so it changes nothing.
    Superseded,
    Invalid,
    /// The device signature does not verify under the device's registered
    /// key, or a device that registered a key pushed an unsigned one.
    BadSignature,
    /// The device already sent a confirmation under this sequence number.
    SequenceReused,
    /// The record's hash link does not meet its neighbour's in the device's chain.
    ChainBroken,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::NotAssignee => "not_assignee",
            RejectCode::NotReady => "not_ready",
            RejectCode::DeliveryCancelled => "delivery_cancelled",
            RejectCode::AlreadyDelivered => "already_delivered",
            RejectCode::ConflictingDuplicate => "conflicting_duplicate",
            RejectCode::Superseded => "superseded",
            RejectCode::Invalid => "invalid",
            RejectCode::BadSignature => "bad_signature",
            RejectCode::SequenceReused => "sequence_reused",
            RejectCode::ChainBroken => "chain_broken",
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
    /// `None` for an element whose delivery id did not read.
    pub delivery_id: Option<handover_shared::DeliveryId>,
    pub uploader: Username,
    pub device_id: DeviceId,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub outcome: FirstOutcome,
}

/// Rejections a device's review list keeps; older ones are counted, not listed.
pub const REJECTIONS_LISTED_PER_DEVICE: usize = 200;

/// A device's latest rejected confirmations, for the dispatcher to review:
/// bounded, so that a handheld pushing refusals by the thousand costs a
/// bounded list and a count, not an ever longer dashboard. Every first
/// outcome is still remembered for exactly-once (as [`SeenConfirmation`]);
/// this is only what is listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionLog {
    pub device_id: DeviceId,
    /// Oldest first.
    pub recent: Vec<SeenConfirmation>,
    /// Rejections no longer listed.
    pub dropped: u64,
}

/// The device's log with the rejections a push just remembered added, the
/// oldest beyond [`REJECTIONS_LISTED_PER_DEVICE`] dropped and counted; `None`
/// when the push remembered no rejection (nothing to write).
pub fn log_rejections(
    log: Option<RejectionLog>,
    device: &DeviceId,
    remembered: &[SeenConfirmation],
) -> Option<RejectionLog> {
    let mut rejected =
        remembered.iter().filter(|seen| matches!(seen.outcome, FirstOutcome::Rejected { .. })).peekable();
    rejected.peek()?;
    let mut log = log.unwrap_or_else(|| RejectionLog { device_id: device.clone(), recent: Vec::new(), dropped: 0 });
    log.recent.extend(rejected.cloned());
    let excess = log.recent.len().saturating_sub(REJECTIONS_LISTED_PER_DEVICE);
    log.recent.drain(..excess);
    log.dropped += excess as u64;
    Some(log)
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

/// The last time a device synced, and what it still had queued after its
/// last push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSync {
    pub device_id: DeviceId,
    pub username: Username,
    #[serde(with = "time::serde::rfc3339")]
    pub last_sync_at: OffsetDateTime,
    /// Left in the outbox after the last push (`None`: never reported).
    pub reported_queued: Option<u64>,
    /// Since when the device has had something queued after every push: the
    /// dashboard flags a handheld stuck for longer than it should be.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub queued_since: Option<OffsetDateTime>,
}

impl DeviceSync {
    /// What a push leaves in the device's outbox: the device reports its
    /// outbox with the batch in it, and every element of the batch gets its
    /// final answer (accepted, duplicate or rejected) and leaves it.
    pub fn left_after_push(reported: Option<u64>, answered: usize) -> Option<u64> {
        reported.map(|queued| queued.saturating_sub(u64::try_from(answered).unwrap_or(u64::MAX)))
    }

    /// This sync as recorded over the device's `previous` one: a sync that
    /// reports nothing queued (a pull) keeps what the last push said; the
    /// queue's age runs from the first push that left something behind.
    pub fn over(&self, previous: Option<&DeviceSync>) -> DeviceSync {
        let mut sync = self.clone();
        match sync.reported_queued {
            None => {
                sync.reported_queued = previous.and_then(|before| before.reported_queued);
                sync.queued_since = previous.and_then(|before| before.queued_since);
            }
            Some(0) => sync.queued_since = None,
            Some(_) => {
                sync.queued_since = previous.and_then(|before| before.queued_since).or(Some(sync.last_sync_at));
            }
        }
        sync
    }

    /// Something has waited on the handheld for longer than `patience`.
    pub fn is_stuck(&self, now: OffsetDateTime, patience: time::Duration) -> bool {
        self.queued_since.is_some_and(|since| now - since > patience)
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

/// The digest of a confirmation's content (its canonical JSON), without its
/// place in the device's chain: the same capture signed after it was first
/// sent (a handheld upgraded with a queue) is a retry, not other content.
pub fn digest(confirmation: &Confirmation) -> String {
    let content = Confirmation { device_seq: None, prev_hash: None, device_signature: None, ..confirmation.clone() };
    let bytes = serde_json::to_vec(&content).unwrap_or_default();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// An id seen before: with the same content, its first outcome; with other
/// content, why it is a conflicting duplicate.
fn judge_seen(seen: &SeenConfirmation, digest: &str, id: &str) -> Result<FirstOutcome, String> {
    if seen.digest == digest {
        Ok(seen.outcome.clone())
    } else {
        Err(format!("confirmation {id} was received before with other content"))
    }
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
        return match judge_seen(seen, digest, &confirmation.confirmation_id) {
            Ok(first) => Verdict::Replay(first),
            Err(message) => reject(RejectCode::ConflictingDuplicate, message),
        };
    }
    if let Err(message) = confirmation.check() {
        return reject(RejectCode::Invalid, message);
    }
    // A delivery the uploader never held, absent or another's, is answered
    // alike: which delivery numbers exist is none of a courier's business.
    let not_held = || {
        reject(
            RejectCode::NotAssignee,
            format!(
                "{uploader} did not hold delivery {} at version {}",
                confirmation.delivery_id, confirmation.version
            ),
        )
    };
    let Some(delivery) = delivery else { return not_held() };
    let held =
        delivery.assignments.iter().any(|a| a.version == confirmation.version && a.assignee.as_ref() == Some(uploader));
    if !held {
        return not_held();
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
    if delivery.status() == DeliveryStatus::Upcoming {
        return reject(
            RejectCode::NotReady,
            format!(
                "delivery {} is still on its way to {}: its goods issues come first",
                delivery.delivery_id,
                delivery.delivering_node()
            ),
        );
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

/// One element of a pushed batch, as read: each is judged on its own.
#[derive(Debug, Clone, PartialEq)]
// Nearly every element is a confirmation, and a batch holds at most 200:
// boxing them would only add an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Pushed {
    /// A confirmation, with what the signature check before the
    /// transaction found of it.
    Confirmation(Confirmation, SignatureCheck),
    /// Not a confirmation (a wrong type, an unknown field, a bad date).
    Unreadable(Unreadable),
}

/// A pushed element that does not read as a confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Its `confirmation_id`, when that is a string; empty otherwise.
    pub confirmation_id: String,
    pub delivery_id: Option<DeliveryId>,
    /// SHA-256 (hex) of the element as sent, to tell a resend from other content.
    pub digest: String,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Pushed {
    pub fn confirmation_id(&self) -> &str {
        match self {
            Pushed::Confirmation(confirmation, _) => &confirmation.confirmation_id,
            Pushed::Unreadable(unreadable) => &unreadable.confirmation_id,
        }
    }

    /// What tells a resend of this element from other content under its id.
    pub fn digest(&self) -> String {
        match self {
            Pushed::Confirmation(confirmation, _) => digest(confirmation),
            Pushed::Unreadable(unreadable) => unreadable.digest.clone(),
        }
    }
}

/// An unsigned confirmation.
impl From<Confirmation> for Pushed {
    fn from(confirmation: Confirmation) -> Self {
        Pushed::Confirmation(confirmation, SignatureCheck::Unsigned)
    }
}

/// Judges an element that does not read as a confirmation. Its id keeps its
/// first outcome like any other: one seen before answers as then (its
/// rejection when sent the same, `conflicting_duplicate` with other content),
/// and a new well-formed id is remembered rejected `invalid`.
pub fn push_unreadable(
    element: &Unreadable,
    by: Pusher<'_>,
    seen: Option<&SeenConfirmation>,
) -> (PushOutcome, ChangeSet) {
    let mut changes = ChangeSet::default();
    if let Some(seen) = seen {
        let outcome = match judge_seen(seen, &element.digest, &element.confirmation_id) {
            Ok(first) => PushOutcome::replay(&first),
            Err(message) => PushOutcome::Rejected { code: RejectCode::ConflictingDuplicate, message },
        };
        return (outcome, changes);
    }
    let (code, message) = (RejectCode::Invalid, element.message.clone());
    if uuid::Uuid::parse_str(&element.confirmation_id).is_ok() {
        changes.confirmations.push(SeenConfirmation {
            confirmation_id: element.confirmation_id.clone(),
            digest: element.digest.clone(),
            delivery_id: element.delivery_id.clone(),
            uploader: by.uploader.clone(),
            device_id: by.device.clone(),
            received_at: by.received_at,
            outcome: FirstOutcome::Rejected { code, message: message.clone() },
        });
    }
    (PushOutcome::Rejected { code, message }, changes)
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
    /// The pushing device's key and chain; `None` when it registered no key.
    pub chain: Option<DeviceChain>,
}

/// Who pushed, from which device, and when the server received it.
#[derive(Debug, Clone, Copy)]
pub struct Pusher<'a> {
    pub uploader: &'a Username,
    pub device: &'a DeviceId,
    pub received_at: OffsetDateTime,
}

/// Judges one pushed confirmation and, when sound, applies it: the answer and
/// everything it changes. A delivered confirmation, in one change: hands the
/// goods over, counts them on the receipt (whose Delivered flag turns on once
/// every ordered unit is delivered) with the proof, applies the empties
/// collected, and reserves what was not handed over for a follow-up delivery
/// of the rest. A failed one puts the delivery back to the dispatcher under a
/// new version. Either is kept as an attempt on the delivery. The first
/// outcome of a well-formed id is remembered; an id seen before is never
/// remembered again.
pub fn push(
    confirmation: &Confirmation,
    digest: &str,
    origin: &SignatureCheck,
    by: Pusher<'_>,
    inputs: PushInputs,
) -> Result<(PushOutcome, ChangeSet), Inconsistent> {
    let c = confirmation;
    let mut changes = ChangeSet::default();
    let remember = |outcome: FirstOutcome| SeenConfirmation {
        confirmation_id: c.confirmation_id.clone(),
        digest: digest.to_owned(),
        delivery_id: Some(c.delivery_id.clone()),
        uploader: by.uploader.clone(),
        device_id: by.device.clone(),
        received_at: by.received_at,
        outcome,
    };
    // A retry answers as the first time, whoever signed it; a new id must
    // come from its device as the device's key says.
    let signed = match inputs.seen {
        Some(_) => None,
        None => match chain::judge_origin(origin, inputs.chain.as_ref(), c, by.device) {
            Ok(signed) => signed,
            Err(refusal) => {
                let (code, message) = (refusal.code, refusal.message);
                if refusal.remember && uuid::Uuid::parse_str(&c.confirmation_id).is_ok() {
                    changes.confirmations.push(remember(FirstOutcome::Rejected { code, message: message.clone() }));
                }
                return Ok((PushOutcome::Rejected { code, message }, changes));
            }
        },
    };
    let signed = signed.map(|accepted| {
        // The record arrived, whatever becomes of the confirmation.
        changes.device_chains.push(accepted.chain);
        accepted.signed
    });
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
    delivery.attempts.push(Attempt {
        confirmation_id: c.confirmation_id.clone(),
        outcome: c.outcome,
        reason: c.reason,
        note: c.note.clone(),
        quantity: c.quantity,
        empties_collected: c.empties_collected,
        by: by.uploader.clone(),
        device_id: by.device.clone(),
        version: c.version,
        captured_at: c.captured_at,
        received_at: now,
        photo_digest: c.photo_digest.clone(),
        signed: signed.clone(),
    });
    let detail = match c.outcome {
        Outcome::Delivered => {
            let mut receipt =
                receipt.ok_or_else(|| Inconsistent(format!("the receipt of {} was not read", delivery.delivery_id)))?;
            let receipt_before = receipt.clone();
            hand_over_goods(&mut delivery, c.quantity, &mut stock, now)?;
            receipt.delivered_quantity = receipt.delivered_quantity.saturating_add(c.quantity).min(receipt.quantity);
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
                signature_digest: c
                    .signature
                    .as_deref()
                    .and_then(|url| signature_png(url).ok())
                    .map(|png| sha256_hex(&png)),
                photo_received: false,
                code_verified: code_verified(
                    receipt.handover_code.as_ref().map(|code| code.code.as_str()),
                    c.handover_code.as_deref(),
                ),
                device_signature: match &signed {
                    Some(_) => DeviceSignature::Verified,
                    None => DeviceSignature::Unsigned,
                },
                device_seq: signed.as_ref().map(|signed| signed.device_seq),
            });
            let rest = delivery.quantity - c.quantity;
            if rest > 0 {
                let id = receipt
                    .next_follow_up()
                    .ok_or_else(|| Inconsistent(format!("{} has no follow-up number", receipt.receipt_id)))?;
                let follow_up = follow_up(&delivery, id, rest, by.uploader, &mut stock, now)?;
                changes.notify(by.uploader, &follow_up.delivery_id);
                receipt.deliveries.push(follow_up.delivery_id.clone());
                receipt.delivery_id = Some(follow_up.delivery_id.clone());
                changes.put_delivery(None, follow_up);
            }
            if receipt.outstanding() == 0 {
                receipt.delivered = true;
                receipt.delivered_at = Some(now);
            }
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
            let reason = c.reason.map(|r| r.as_str()).unwrap_or_default();
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

/// Whether the code entered at the door is the customer's: `None` when
/// none was entered or the receipt has none (made before codes existed).
pub fn code_verified(receipt_code: Option<&str>, entered: Option<&str>) -> Option<bool> {
    let (code, entered) = (receipt_code?, entered?);
    Some(
        normalise_code(entered)
            .is_some_and(|entered| subtle::ConstantTimeEq::ct_eq(code.as_bytes(), entered.as_bytes()).into()),
    )
}

/// The goods reach the customer: `quantity` units leave the delivering node
/// and the delivery is delivered. Its transfer legs were all issued (a
/// confirmation of a delivery on its way is refused as `not_ready`).
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
    if let Some(leg) = delivery.legs[..last].iter().find(|leg| leg.status != LegStatus::Issued) {
        return Err(Inconsistent(format!(
            "{} handed over before its leg {} was issued",
            delivery.delivery_id, leg.leg_id
        )));
    }
    let from = delivery.delivering_node().clone();
    let leg_id = delivery.legs[last].leg_id.clone();
    let [handed] = hand_over(&from, quantity);
    stock.apply(&item, &handed, Movement::HandOver { leg_id }, now)?;
    delivery.legs[last].status = LegStatus::Completed;
    delivery.legs[last].issued_at = Some(now);
    delivery.state = DeliveryState::Delivered;
    Ok(())
}

/// The delivery of what a short hand-over left: the `rest` goes back to the
/// delivering node's stock and is reserved at once for it. It leaves from that
/// node, by the same kind of carrier, with the courier who was at the door
/// (who may hand it on through a reassignment).
fn follow_up(
    short: &Delivery,
    id: DeliveryId,
    rest: u32,
    courier: &Username,
    stock: &mut StockBook,
    now: OffsetDateTime,
) -> Result<Delivery, Inconsistent> {
    let node = short.delivering_node().clone();
    let release = StockEffect { node: &node, on_hand_delta: 0, reserved_delta: -i64::from(rest) };
    stock.apply(&short.item_id, &release, Movement::Release { delivery_id: short.delivery_id.clone() }, now)?;
    let [reservation] = reserve(&node, rest);
    stock.apply(&short.item_id, &reservation, Movement::Reserve { delivery_id: id.clone() }, now)?;
    let assignee = Some(courier.clone());
    Ok(Delivery {
        legs: vec![Leg {
            leg_id: id.leg(0),
            from: node.clone(),
            to: Destination::Customer(short.customer_id.clone()),
            status: LegStatus::Planned,
            issued_at: None,
        }],
        carrier: short.carrier.clone(),
        assignments: vec![Assignment {
            version: 1,
            assignee: assignee.clone(),
            at: now,
            by: format!("follow-up of {}", short.delivery_id),
        }],
        delivery_id: id,
        receipt_id: short.receipt_id.clone(),
        customer_id: short.customer_id.clone(),
        item_id: short.item_id.clone(),
        quantity: rest,
        source: short.source,
        source_node: node,
        assignee,
        version: 1,
        state: DeliveryState::Open,
        planned_at: now,
        attempts: Vec::new(),
        cancellation: None,
        reversals: Vec::new(),
        follow_up_of: Some(short.delivery_id.clone()),
        handover_code_hash: short.handover_code_hash.clone(),
    })
}

#[cfg(test)]
#[path = "confirmations_tests.rs"]
mod tests;
