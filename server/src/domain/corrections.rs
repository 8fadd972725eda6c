//! Corrections to a day's deliveries: a dispatcher (or a seller, for what it
//! was entrusted) cancels a delivery, a customer calls off its own receipt
//! before anything moved, a dispatcher reverses a confirmation made by
//! mistake. Each is written as compensating records: the ledger gains lines,
//! the records gain who, when and why; nothing already recorded is edited away.

use handover_shared::{sync::Outcome, DeliveryId, ItemId, NodeId, ReceiptId, Role};
use time::OffsetDateTime;

use super::{
    access::{Guarded as _, Principal},
    changes::{ChangeSet, Inconsistent, Step, StockBook},
    orders::{CustomerAccount, Receipt},
    shipments::{
        Assignment, Attempt, Carrier, Delivery, DeliveryState, DeliveryStatus, Intervention, LegStatus, Reversal,
        StockEffect,
    },
    stock::Movement,
};

/// The longest reason kept with a correction.
pub const MAX_REASON_LEN: usize = 500;

/// What a customer's own cancellation says when it gives no reason.
const CUSTOMER_CALLED_OFF: &str = "called off by the customer";

/// A correction and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Correction {
    CancelDelivery(DeliveryId),
    /// The receipt, with its latest delivery when it has one.
    CancelReceipt(ReceiptId),
    Reverse(DeliveryId),
}

impl Correction {
    /// The delivery it names; for a receipt, the backend reads its latest.
    pub fn delivery(&self) -> Option<&DeliveryId> {
        match self {
            Correction::CancelDelivery(id) | Correction::Reverse(id) => Some(id),
            Correction::CancelReceipt(_) => None,
        }
    }
}

/// What a correction is judged and applied against: the receipt, the delivery
/// (the one named, or the receipt's latest), the receipt's latest delivery
/// when the correction names an earlier one, the stock of their item at their
/// [`Delivery::stock_nodes`], and the customer's account (`None` when it has
/// no record yet).
///
/// A receipt has at most one open delivery, its latest: a follow-up is
/// planned only once the delivery before it is delivered.
#[derive(Debug, Clone, Default)]
pub struct CorrectionInputs {
    pub receipt: Option<Receipt>,
    pub delivery: Option<Delivery>,
    pub latest: Option<Delivery>,
    pub stock: StockBook,
    pub account: Option<CustomerAccount>,
}

impl CorrectionInputs {
    /// The receipt a correction reads: the one it names, or its named
    /// delivery's (read first, so that a delivery is locked before its receipt
    /// as pushes do). `None`: nothing to correct.
    pub fn receipt_to_read(correction: &Correction, named: Option<&Delivery>) -> Option<ReceiptId> {
        match (correction, named) {
            (Correction::CancelReceipt(id), _) => Some(id.clone()),
            (_, Some(delivery)) => Some(delivery.receipt_id.clone()),
            (_, None) => None,
        }
    }

    /// The receipt's latest delivery, to read unless it is the one named.
    pub fn latest_to_read(named: Option<&Delivery>, receipt: &Receipt) -> Option<DeliveryId> {
        receipt.delivery_id.clone().filter(|latest| named.is_none_or(|named| named.delivery_id != *latest))
    }

    /// The records read, sorted: a receipt correction works on the receipt's
    /// latest delivery; one naming a delivery keeps the latest beside it.
    /// Stock and account are read next ([`Self::stock_to_read`]).
    pub fn of(correction: &Correction, named: Option<Delivery>, receipt: Receipt, latest: Option<Delivery>) -> Self {
        let (delivery, latest) = match correction {
            Correction::CancelReceipt(_) => (latest, None),
            Correction::CancelDelivery(_) | Correction::Reverse(_) => (named, latest),
        };
        CorrectionInputs { receipt: Some(receipt), delivery, latest, ..CorrectionInputs::default() }
    }

    /// The balances the correction may move: its deliveries' item at their nodes.
    pub fn stock_to_read(&self) -> Vec<(NodeId, ItemId)> {
        self.delivery
            .iter()
            .chain(&self.latest)
            .flat_map(|d| d.stock_nodes().map(|node| (node.clone(), d.item_id.clone())))
            .collect()
    }
}

/// The receipt and the delivery after a correction.
#[derive(Debug, Clone, PartialEq)]
pub struct Corrected {
    pub receipt: Receipt,
    pub delivery: Option<Delivery>,
}

/// Why a correction is refused. Nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorrectionRefusal {
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    InvalidReason(String),
    #[error("delivery {0} is {1}: {2}")]
    DeliveryClosed(DeliveryId, DeliveryStatus, &'static str),
    #[error("receipt {0} is {1}")]
    ReceiptClosed(ReceiptId, &'static str),
    #[error("delivery {0} is {1}; only a delivered one can be reversed")]
    NotDelivered(DeliveryId, DeliveryStatus),
    #[error("receipt {0} is on its way (goods issued or delivery attempted); ask the dispatcher to cancel it")]
    TooLate(ReceiptId),
    #[error("delivery {1}, which carries on from {0}, was delivered or carried on since; reverse {1} first")]
    FollowUpMoved(DeliveryId, DeliveryId),
}

/// Judges a correction by `by` and, when allowed, applies it.
pub fn correct(
    correction: &Correction,
    by: &Principal,
    reason: &str,
    inputs: CorrectionInputs,
    now: OffsetDateTime,
) -> Result<Step<(Corrected, ChangeSet), CorrectionRefusal>, Inconsistent> {
    let CorrectionInputs { receipt, delivery, latest, mut stock, account } = inputs;
    let Some(receipt) = receipt else { return Ok(Step::NotFound) };
    if correction.delivery().is_some() && delivery.is_none() {
        return Ok(Step::NotFound);
    }
    // What the caller may not see answers as if it did not exist.
    let visible = match correction {
        Correction::CancelReceipt(_) => receipt.visible_to(by),
        Correction::CancelDelivery(_) | Correction::Reverse(_) => delivery.as_ref().is_some_and(|d| d.visible_to(by)),
    };
    if !visible {
        return Ok(Step::NotFound);
    }
    if let Err(refusal) = allowed(correction, by, &receipt, delivery.as_ref()) {
        return Ok(Step::Refused(refusal));
    }
    let reason = match judge_reason(reason, by) {
        Ok(reason) => reason,
        Err(refusal) => return Ok(Step::Refused(refusal)),
    };
    let intervention = Intervention { by: by.username.clone(), at: now, reason };
    let mut changes = ChangeSet::default();
    let receipt_before = receipt.clone();
    let mut receipt = receipt;
    let mut account = account.unwrap_or_default();
    let account_before = account.clone();
    let delivery = match correction {
        Correction::CancelDelivery(_) | Correction::CancelReceipt(_) => {
            let cancelled_before = match correction {
                Correction::CancelDelivery(_) => delivery.as_ref().is_some_and(|d| d.state == DeliveryState::Cancelled),
                _ => receipt.cancellation.is_some(),
            };
            if cancelled_before {
                // Answered as the first time; nothing changes.
                return Ok(Step::Done((Corrected { receipt, delivery }, changes)));
            }
            if let Some(refusal) = cancel_refusal(correction, by, &receipt, delivery.as_ref()) {
                return Ok(Step::Refused(refusal));
            }
            let delivery = match delivery {
                Some(delivery) if delivery.is_open() => {
                    Some(cancel_open(delivery, &intervention, &mut stock, &mut changes, now)?)
                }
                other => other,
            };
            account = account.with_empties_waived(receipt.empties_outstanding());
            receipt.cancellation = Some(intervention);
            delivery
        }
        Correction::Reverse(_) => {
            let delivery = delivery.ok_or_else(|| Inconsistent("a reversal without its delivery".into()))?;
            if delivery.state != DeliveryState::Delivered {
                return Ok(Step::Refused(CorrectionRefusal::NotDelivered(
                    delivery.delivery_id.clone(),
                    delivery.status(),
                )));
            }
            if receipt.cancellation.is_some() {
                return Ok(Step::Refused(CorrectionRefusal::ReceiptClosed(
                    receipt.receipt_id.clone(),
                    "cancelled: nothing on it can be reversed",
                )));
            }
            // An open follow-up (attempted or not) holds nothing handed over:
            // it goes with the reversal. One delivered has its own hand-over
            // to correct first.
            let follow_up = match latest {
                None => None,
                Some(latest) if latest.follow_up_of.as_ref() == Some(&delivery.delivery_id) && latest.is_open() => {
                    Some(latest)
                }
                Some(latest) => {
                    return Ok(Step::Refused(CorrectionRefusal::FollowUpMoved(
                        delivery.delivery_id.clone(),
                        latest.delivery_id.clone(),
                    )))
                }
            };
            let mut reversing =
                Reversing { receipt: &mut receipt, account: &mut account, stock: &mut stock, changes: &mut changes };
            Some(reverse(delivery, follow_up, intervention, &mut reversing, now)?)
        }
    };
    if account != account_before {
        changes.customer_accounts.push((receipt.customer_id.clone(), account));
    }
    changes.put_receipt(Some(receipt_before), receipt.clone());
    changes.take_stock(stock);
    Ok(Step::Done((Corrected { receipt, delivery }, changes)))
}

/// Who may make which correction: a dispatcher any; a seller cancels the
/// deliveries entrusted to its node; a customer cancels its own receipts.
fn allowed(
    correction: &Correction,
    by: &Principal,
    receipt: &Receipt,
    delivery: Option<&Delivery>,
) -> Result<(), CorrectionRefusal> {
    let permitted = match (correction, by.role) {
        (_, Role::Dispatcher) => true,
        (Correction::CancelDelivery(_), Role::Seller) => delivery.is_some_and(
            |delivery| matches!(&delivery.carrier, Carrier::Seller { seller } if by.node_id.as_ref() == Some(seller)),
        ),
        (Correction::CancelReceipt(_), Role::Customer) => by.customer_id.as_ref() == Some(&receipt.customer_id),
        _ => false,
    };
    if permitted {
        return Ok(());
    }
    let what = match correction {
        Correction::CancelDelivery(id) => format!("cancel delivery {id}"),
        Correction::CancelReceipt(id) => format!("cancel receipt {id}"),
        Correction::Reverse(id) => format!("reverse delivery {id}"),
    };
    Err(CorrectionRefusal::NotAllowed(format!("{} {} may not {what}", by.role, by.username)))
}

/// A reason people can read later: required, except from a customer calling
/// off its own order.
fn judge_reason(reason: &str, by: &Principal) -> Result<String, CorrectionRefusal> {
    let reason = reason.trim();
    if reason.is_empty() {
        return match by.role {
            Role::Customer => Ok(CUSTOMER_CALLED_OFF.to_owned()),
            _ => Err(CorrectionRefusal::InvalidReason("say why (reason)".into())),
        };
    }
    if reason.chars().count() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(CorrectionRefusal::InvalidReason(format!(
            "the reason must be at most {MAX_REASON_LEN} characters, without control characters"
        )));
    }
    Ok(reason.to_owned())
}

/// Why a cancellation cannot go ahead, if it cannot.
fn cancel_refusal(
    correction: &Correction,
    by: &Principal,
    receipt: &Receipt,
    delivery: Option<&Delivery>,
) -> Option<CorrectionRefusal> {
    if receipt.delivered {
        return Some(match (correction, delivery) {
            (Correction::CancelDelivery(_), Some(delivery)) => CorrectionRefusal::DeliveryClosed(
                delivery.delivery_id.clone(),
                delivery.status(),
                "reverse its confirmation first",
            ),
            _ => CorrectionRefusal::ReceiptClosed(
                receipt.receipt_id.clone(),
                "delivered and can no longer be cancelled; reverse its delivery first",
            ),
        });
    }
    if let Some(delivery) = delivery.filter(|delivery| delivery.state == DeliveryState::Delivered) {
        if matches!(correction, Correction::CancelDelivery(_)) {
            return Some(CorrectionRefusal::DeliveryClosed(
                delivery.delivery_id.clone(),
                delivery.status(),
                "reverse its confirmation first",
            ));
        }
    }
    (by.role == Role::Customer && !customer_may_cancel(receipt, delivery))
        .then(|| CorrectionRefusal::TooLate(receipt.receipt_id.clone()))
}

/// A customer may call off its own receipt alone while nothing happened to
/// it yet: not cancelled, nothing handed over, no goods issued, no attempt at
/// the door. `latest` is the receipt's latest delivery, if planned.
pub fn customer_may_cancel(receipt: &Receipt, latest: Option<&Delivery>) -> bool {
    receipt.cancellation.is_none()
        && !receipt.delivered
        && receipt.delivered_quantity == 0
        && receipt.deliveries.len() <= 1
        && !latest.is_some_and(Delivery::under_way)
}

/// Cancels an open delivery: its reservation is freed where its goods are now
/// (legs already issued leave them where they arrived), and its courier's next
/// pull drops it.
fn cancel_open(
    delivery: Delivery,
    intervention: &Intervention,
    stock: &mut StockBook,
    changes: &mut ChangeSet,
    now: OffsetDateTime,
) -> Result<Delivery, Inconsistent> {
    let mut after = delivery.clone();
    let at = delivery.goods_at().clone();
    let release = StockEffect { node: &at, on_hand_delta: 0, reserved_delta: -i64::from(delivery.quantity) };
    stock.apply(&delivery.item_id, &release, Movement::Release { delivery_id: delivery.delivery_id.clone() }, now)?;
    after.state = DeliveryState::Cancelled;
    after.cancellation = Some(intervention.clone());
    if let Some(courier) = &after.assignee {
        changes.notify(courier, &after.delivery_id);
    }
    changes.put_delivery(Some(delivery), after.clone());
    Ok(after)
}

/// The records a reversal changes besides the delivery.
struct Reversing<'a> {
    receipt: &'a mut Receipt,
    account: &'a mut CustomerAccount,
    stock: &'a mut StockBook,
    changes: &'a mut ChangeSet,
}

/// Undoes the hand-over that stands on a delivered delivery: the goods come
/// back to the delivering node, reserved again, and so does the rest that a
/// short hand-over gave its `follow_up` (cancelled, untouched as it is); the
/// receipt counts them no more (its Delivered flag goes off) and the customer
/// owes their empties again; the delivery is open, whole, under a new
/// version, with the courier who had it. A retry of the reversed confirmation
/// still answers `duplicate`.
fn reverse(
    delivery: Delivery,
    follow_up: Option<Delivery>,
    intervention: Intervention,
    on: &mut Reversing<'_>,
    now: OffsetDateTime,
) -> Result<Delivery, Inconsistent> {
    let handed = delivery
        .standing_hand_over()
        .filter(|attempt| attempt.outcome == Outcome::Delivered)
        .cloned()
        .or_else(|| recorded_before_attempts(&delivery, on.receipt))
        .ok_or_else(|| Inconsistent(format!("delivered {} has no hand-over to reverse", delivery.delivery_id)))?;
    let mut after = delivery.clone();
    let node = delivery.delivering_node().clone();
    let back = StockEffect {
        node: &node,
        on_hand_delta: i64::from(handed.quantity),
        reserved_delta: i64::from(handed.quantity),
    };
    let item = &delivery.item_id;
    on.stock.apply(item, &back, Movement::TakeBack { delivery_id: delivery.delivery_id.clone() }, now)?;
    if let Some(follow_up) = follow_up {
        let rest = follow_up.quantity;
        cancel_open(follow_up, &intervention, on.stock, on.changes, now)?;
        let [again] = super::shipments::reserve(&node, rest);
        on.stock.apply(item, &again, Movement::Reserve { delivery_id: delivery.delivery_id.clone() }, now)?;
        on.receipt.delivery_id = Some(delivery.delivery_id.clone());
    }
    if let Some(last) = after.legs.last_mut() {
        last.status = LegStatus::Planned;
        last.issued_at = None;
    }
    after.state = DeliveryState::Open;
    after.version += 1;
    after.assignee = delivery.assignee.clone().or_else(|| Some(handed.by.clone()));
    after.assignments.push(Assignment {
        version: after.version,
        assignee: after.assignee.clone(),
        at: now,
        by: intervention.by.to_string(),
    });
    let reversal = Reversal {
        delivery_id: delivery.delivery_id.clone(),
        confirmation_id: handed.confirmation_id.clone(),
        quantity: handed.quantity,
        empties_collected: handed.empties_collected,
        intervention,
    };
    after.reversals.push(reversal.clone());
    if let Some(courier) = &after.assignee {
        on.changes.notify(courier, &after.delivery_id);
    }
    let receipt = &mut *on.receipt;
    receipt.delivered_quantity = receipt.delivered_quantity.saturating_sub(handed.quantity);
    receipt.delivered = false;
    receipt.delivered_at = None;
    if receipt.proof.as_ref().is_some_and(|proof| proof.confirmation_id == handed.confirmation_id) {
        receipt.proof = None;
    }
    receipt.reversals.push(reversal);
    *on.account = on.account.with_empties_owed(handed.empties_collected);
    on.changes.put_delivery(Some(delivery), after.clone());
    Ok(after)
}

/// The hand-over of a delivery delivered before deliveries kept their
/// attempts: read back from its receipt's proof.
fn recorded_before_attempts(delivery: &Delivery, receipt: &Receipt) -> Option<Attempt> {
    let proof = receipt.proof.as_ref().filter(|_| delivery.attempts.is_empty())?;
    Some(Attempt {
        confirmation_id: proof.confirmation_id.clone(),
        outcome: Outcome::Delivered,
        reason: None,
        note: None,
        quantity: proof.quantity,
        empties_collected: proof.empties_collected,
        by: proof.delivered_by.clone(),
        device_id: proof.device_id.clone(),
        version: delivery.version,
        captured_at: proof.captured_at,
        received_at: proof.received_at,
        photo_digest: proof.photo_digest.clone(),
        signed: None,
    })
}

#[cfg(test)]
#[path = "corrections_tests.rs"]
mod tests;
