//! Order processing rules: judging order data (the SPEC's "abnormal data"), the
//! life of a draft, and what a confirmed order changes.
//!
//! Order data is judged whole before anything is stored: every problem is
//! reported with its field and a stable code, so that the ordering screen can
//! show each error next to its field and the API can answer with all of them.

use handover_shared::{CustomerId, ItemId, Role};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{
    access::{Guarded, Principal},
    changes::ChangeSet,
    network::{Customer, Item},
};

/// How long a draft waits for Confirm or Cancel, unless configured otherwise.
pub const DRAFT_TTL: Duration = Duration::hours(24);

/// The fields of an order, as the screen and the API name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderField {
    CustomerId,
    ItemId,
    Quantity,
    /// The request as a whole (an unknown field, a body that is not an object).
    Body,
}

impl OrderField {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderField::CustomerId => "customer_id",
            OrderField::ItemId => "item_id",
            OrderField::Quantity => "quantity",
            OrderField::Body => "body",
        }
    }
}

/// One abnormal datum, with its stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderProblem {
    pub field: OrderField,
    pub code: OrderProblemCode,
    pub message: String,
}

/// What is wrong with one field of an order. Each maps to its API
/// [`ErrorCode`](handover_shared::ErrorCode), which holds the wire string and the
/// status (see `docs/error-codes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderProblemCode {
    UnknownCustomer,
    UnknownItem,
    DiscontinuedItem,
    InvalidQuantity,
    QuantityAboveLimit,
    MissingField,
    UnknownField,
    InvalidField,
    /// A customer ordering for another customer.
    NotYourCustomer,
}

impl OrderProblemCode {
    /// The API code this problem is reported with, alone or in `problems`.
    pub fn error_code(self) -> handover_shared::ErrorCode {
        use handover_shared::ErrorCode;
        match self {
            OrderProblemCode::UnknownCustomer => ErrorCode::UnknownCustomer,
            OrderProblemCode::UnknownItem => ErrorCode::UnknownItem,
            OrderProblemCode::DiscontinuedItem => ErrorCode::DiscontinuedItem,
            OrderProblemCode::InvalidQuantity => ErrorCode::InvalidQuantity,
            OrderProblemCode::QuantityAboveLimit => ErrorCode::QuantityAboveLimit,
            OrderProblemCode::MissingField => ErrorCode::MissingField,
            OrderProblemCode::UnknownField => ErrorCode::UnknownField,
            OrderProblemCode::InvalidField => ErrorCode::InvalidField,
            OrderProblemCode::NotYourCustomer => ErrorCode::NotYourCustomer,
        }
    }

    /// The most severe problem decides how the API answers. Severity follows the
    /// status of the problem's API code, so that it is not classified twice:
    /// refused access (403) first, then a malformed request (400), then data
    /// that is well-formed but unusable (422 and anything else).
    pub fn severity(self) -> u8 {
        match self.error_code().status() {
            403 => 3,
            400 => 2,
            _ => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.error_code().as_str()
    }
}

/// A quantity as it arrived, before judging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawQuantity {
    Missing,
    /// Typed into a form.
    Text(String),
    /// A JSON integer (possibly huge or negative).
    Integer(i128),
    /// A JSON number with a fraction or exponent.
    NotWhole(String),
    /// A JSON value of another type.
    WrongType(&'static str),
}

/// Order data as it arrived: from JSON or from the ordering screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOrder {
    pub customer_id: Option<String>,
    pub item_id: Option<String>,
    pub quantity: RawQuantity,
    /// Problems found while reading the request's shape (unknown fields, wrong types).
    pub shape_problems: Vec<OrderProblem>,
}

/// The records an order names, looked up by the caller. `None` when the id was
/// malformed or names nothing.
#[derive(Debug, Clone, Default)]
pub struct OrderLookups {
    pub customer: Option<Customer>,
    pub item: Option<Item>,
}

/// Order data that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    pub customer_id: CustomerId,
    pub item: Item,
    pub quantity: u32,
}

fn problem(field: OrderField, code: OrderProblemCode, message: impl Into<String>) -> OrderProblem {
    OrderProblem { field, code, message: message.into() }
}

/// Judges order data. `principal` decides whose orders may be placed: a
/// customer account orders for its own customer only; a dispatcher for anyone.
pub fn judge(raw: &RawOrder, principal: &Principal, found: &OrderLookups) -> Result<ValidOrder, Vec<OrderProblem>> {
    use OrderField as F;
    use OrderProblemCode as C;
    let mut problems = raw.shape_problems.clone();
    // A field whose shape was already refused is not judged again.
    let shaped = |field: OrderField| raw.shape_problems.iter().any(|p| p.field == field);

    let customer_id = match raw.customer_id.as_deref().map(str::trim) {
        _ if shaped(F::CustomerId) => None,
        None | Some("") => {
            problems.push(problem(F::CustomerId, C::MissingField, "choose the customer to order for"));
            None
        }
        Some(text) => match (&found.customer, CustomerId::parse(text)) {
            (_, Err(_)) | (None, Ok(_)) => {
                problems.push(problem(F::CustomerId, C::UnknownCustomer, format!("there is no customer {text:?}")));
                None
            }
            (Some(customer), Ok(id)) if customer.id == id => Some(id),
            (Some(_), Ok(_)) => {
                problems.push(problem(F::CustomerId, C::UnknownCustomer, format!("there is no customer {text:?}")));
                None
            }
        },
    };
    if let Some(id) = &customer_id {
        if principal.role == Role::Customer && principal.customer_id.as_ref() != Some(id) {
            problems.push(problem(
                F::CustomerId,
                C::NotYourCustomer,
                format!("{} may only order for its own customer, not for {id}", principal.username),
            ));
        }
    }

    let item = match raw.item_id.as_deref().map(str::trim) {
        _ if shaped(F::ItemId) => None,
        None | Some("") => {
            problems.push(problem(F::ItemId, C::MissingField, "choose an item"));
            None
        }
        Some(text) => match &found.item {
            Some(item) if ItemId::parse(text).is_ok_and(|id| id == item.id) => {
                if item.discontinued {
                    problems.push(problem(
                        F::ItemId,
                        C::DiscontinuedItem,
                        format!("{} ({}) is discontinued and can no longer be ordered", item.name, item.id),
                    ));
                    None
                } else {
                    Some(item.clone())
                }
            }
            _ => {
                problems.push(problem(F::ItemId, C::UnknownItem, format!("there is no item {text:?}")));
                None
            }
        },
    };

    let quantity = if shaped(F::Quantity) {
        None
    } else {
        judge_quantity(&raw.quantity, item.as_ref()).map_err(|p| problems.push(p)).ok()
    };

    match (customer_id, item, quantity) {
        (Some(customer_id), Some(item), Some(quantity)) if problems.is_empty() => {
            Ok(ValidOrder { customer_id, item, quantity })
        }
        _ => {
            // Most severe first; within a severity, in field order (a stable sort).
            problems.sort_by_key(|p| std::cmp::Reverse(p.code.severity()));
            Err(problems)
        }
    }
}

/// A positive whole number, at most the item's per-order limit (when the item
/// is known; otherwise only the number itself is judged).
fn judge_quantity(raw: &RawQuantity, item: Option<&Item>) -> Result<u32, OrderProblem> {
    use OrderField::Quantity as F;
    use OrderProblemCode as C;
    let whole = "enter the quantity as a whole number of at least 1";
    let value: i128 = match raw {
        RawQuantity::Missing => return Err(problem(F, C::MissingField, "enter a quantity")),
        RawQuantity::Text(text) => {
            let text = text.trim();
            if text.is_empty() {
                return Err(problem(F, C::MissingField, "enter a quantity"));
            }
            match text.parse::<i128>() {
                Ok(value) => value,
                // Digits only, but too many for any number: too large, not malformed.
                Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => i128::MAX,
                Err(_) => {
                    return Err(problem(F, C::InvalidQuantity, format!("{text:?} is not a whole number; {whole}")))
                }
            }
        }
        RawQuantity::Integer(value) => *value,
        RawQuantity::NotWhole(text) => {
            return Err(problem(F, C::InvalidQuantity, format!("{text} is not a whole number; {whole}")))
        }
        RawQuantity::WrongType(kind) => {
            return Err(problem(F, C::InvalidQuantity, format!("the quantity must be a number, not {kind}")))
        }
    };
    if value < 1 {
        return Err(problem(F, C::InvalidQuantity, format!("{value} is too small; {whole}")));
    }
    let limit = item.map_or(u32::MAX, |item| item.max_per_order);
    match u32::try_from(value) {
        Ok(quantity) if quantity <= limit => Ok(quantity),
        _ => Err(problem(
            F,
            C::QuantityAboveLimit,
            match item {
                Some(item) => format!("at most {} of {} per order", item.max_per_order, item.id),
                None => "the quantity is too large".to_owned(),
            },
        )),
    }
}

/// What became of a draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DraftState {
    Open,
    Cancelled {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Confirmed {
        receipt_id: handover_shared::ReceiptId,
    },
}

/// A judged order waiting for Confirm or Cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    pub order_id: handover_shared::OrderId,
    pub customer_id: CustomerId,
    pub item_id: ItemId,
    pub item_name: String,
    pub quantity: u32,
    pub collectable: bool,
    pub created_by: handover_shared::Username,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub state: DraftState,
}

impl Draft {
    pub fn new(
        order: ValidOrder,
        order_id: handover_shared::OrderId,
        principal: &Principal,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Self {
        Draft {
            order_id,
            customer_id: order.customer_id,
            item_id: order.item.id,
            item_name: order.item.name,
            quantity: order.quantity,
            collectable: order.item.collectable,
            created_by: principal.username.clone(),
            created_at: now,
            expires_at: now + ttl,
            state: DraftState::Open,
        }
    }

    /// Past its time: Confirm is refused.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now >= self.expires_at
    }

    /// Whether a purge at `before` forgets it: an open draft that expired, or
    /// one cancelled, before then. A confirmed draft is kept (a retried
    /// Confirm must find its receipt).
    pub fn is_stale(&self, before: OffsetDateTime) -> bool {
        match self.state {
            DraftState::Open => self.expires_at < before,
            DraftState::Cancelled { at } => at < before,
            DraftState::Confirmed { .. } => false,
        }
    }

    /// How many used cartridges the courier should collect for this order.
    pub fn empties_expected(&self) -> u32 {
        if self.collectable {
            self.quantity
        } else {
            0
        }
    }
}

/// What Confirm may do with a draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmDecision {
    /// Generate the receipt.
    Confirm,
    /// Already confirmed: answer with the same receipt, change nothing.
    Replay(handover_shared::ReceiptId),
    Refuse(DraftRefusal),
}

/// Why a draft cannot take a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DraftRefusal {
    #[error("this order was cancelled; place a new one")]
    Cancelled,
    #[error("this draft has expired; place the order again")]
    Expired,
    #[error("this order is already confirmed and can no longer be cancelled")]
    AlreadyConfirmed,
}

pub fn decide_confirm(draft: &Draft, now: OffsetDateTime) -> ConfirmDecision {
    match &draft.state {
        DraftState::Confirmed { receipt_id } => ConfirmDecision::Replay(receipt_id.clone()),
        DraftState::Cancelled { .. } => ConfirmDecision::Refuse(DraftRefusal::Cancelled),
        DraftState::Open if draft.is_expired(now) => ConfirmDecision::Refuse(DraftRefusal::Expired),
        DraftState::Open => ConfirmDecision::Confirm,
    }
}

/// What Cancel may do with a draft: cancelling twice is harmless.
pub fn decide_cancel(draft: &Draft) -> Result<bool, DraftRefusal> {
    match draft.state {
        DraftState::Open => Ok(true),
        DraftState::Cancelled { .. } => Ok(false),
        DraftState::Confirmed { .. } => Err(DraftRefusal::AlreadyConfirmed),
    }
}

/// What Confirm did.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirmed {
    /// The first Confirm: this receipt was generated.
    New(Box<Receipt>),
    /// Confirmed before: the receipt it generated then, unchanged.
    Replay(handover_shared::ReceiptId),
}

/// Confirm, in one step: the draft is marked confirmed, the receipt generated
/// under `next_seq` (the store's next receipt number), the customer
/// information (order history, collection flag) updated. `account` is the
/// customer's, as stored (default when it has none yet).
pub fn confirm(
    draft: &Draft,
    next_seq: u64,
    account: CustomerAccount,
    code: HandoverCode,
    now: OffsetDateTime,
) -> Result<(Confirmed, ChangeSet), DraftRefusal> {
    let mut changes = ChangeSet::default();
    match decide_confirm(draft, now) {
        ConfirmDecision::Refuse(refusal) => Err(refusal),
        ConfirmDecision::Replay(receipt_id) => Ok((Confirmed::Replay(receipt_id), changes)),
        ConfirmDecision::Confirm => {
            let receipt = Receipt { handover_code: Some(code), ..Receipt::from_draft(draft, next_seq, now) };
            let mut confirmed = draft.clone();
            confirmed.state = DraftState::Confirmed { receipt_id: receipt.receipt_id.clone() };
            changes.drafts.push(confirmed);
            changes.customer_accounts.push((receipt.customer_id.clone(), account.with_order(&receipt)));
            changes.put_receipt(None, receipt.clone());
            Ok((Confirmed::New(Box::new(receipt)), changes))
        }
    }
}

/// Cancel: the draft is discarded (kept as cancelled until purged). Cancelling
/// twice changes nothing the second time.
pub fn cancel(draft: Draft, now: OffsetDateTime) -> Result<(Draft, ChangeSet), DraftRefusal> {
    let mut changes = ChangeSet::default();
    if !decide_cancel(&draft)? {
        return Ok((draft, changes));
    }
    let mut cancelled = draft;
    cancelled.state = DraftState::Cancelled { at: now };
    changes.drafts.push(cancelled.clone());
    Ok((cancelled, changes))
}

/// The order receipt: what Confirm generates. Its flags start off; shipment
/// planning and delivery confirmation turn them on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub receipt_id: handover_shared::ReceiptId,
    /// Position in receipt order (the number in the id).
    pub seq: u64,
    pub order_id: handover_shared::OrderId,
    pub customer_id: CustomerId,
    pub item_id: ItemId,
    pub quantity: u32,
    /// Used cartridges to collect on delivery (0 for items not collected).
    pub empties_expected: u32,
    pub ordered_by: handover_shared::Username,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub planned: bool,
    /// No node could cover it at the last planning run; it waits for stock.
    #[serde(default)]
    pub backordered: bool,
    pub delivered: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub delivery_id: Option<handover_shared::DeliveryId>,
    /// Who delivered and what the handheld recorded: the latest hand-over
    /// that stands (a reversal takes it away).
    #[serde(default)]
    pub proof: Option<handover_shared::api::DeliveryProof>,
    /// Units handed over so far, net of reversals; the Delivered flag turns on
    /// when they reach `quantity`.
    #[serde(default)]
    pub delivered_quantity: u32,
    /// Every delivery planned for it, in order: the first, then a follow-up
    /// after each short hand-over. `delivery_id` is the latest.
    #[serde(default)]
    pub deliveries: Vec<handover_shared::DeliveryId>,
    #[serde(default)]
    pub cancellation: Option<super::shipments::Intervention>,
    #[serde(default)]
    pub reversals: Vec<super::shipments::Reversal>,
    /// What the customer gives the courier at the door; `None` for receipts
    /// made before codes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_code: Option<HandoverCode>,
}

/// A receipt's handover code, and the slow salted hash of it that its
/// courier's handheld receives instead (see `handover_shared::proof`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverCode {
    pub code: String,
    pub hash: String,
}

impl std::fmt::Debug for HandoverCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandoverCode([redacted])")
    }
}

impl Receipt {
    /// Builds the receipt of a confirmed draft; `seq` comes from the store's counter.
    pub fn from_draft(draft: &Draft, seq: u64, now: OffsetDateTime) -> Self {
        Receipt {
            receipt_id: handover_shared::ReceiptId::from_seq(seq),
            seq,
            order_id: draft.order_id.clone(),
            customer_id: draft.customer_id.clone(),
            item_id: draft.item_id.clone(),
            quantity: draft.quantity,
            empties_expected: draft.empties_expected(),
            ordered_by: draft.created_by.clone(),
            created_at: now,
            planned: false,
            backordered: false,
            delivered: false,
            delivered_at: None,
            delivery_id: None,
            proof: None,
            delivered_quantity: 0,
            deliveries: Vec::new(),
            cancellation: None,
            reversals: Vec::new(),
            handover_code: None,
        }
    }

    /// Waits for the planner: not planned yet, and not called off.
    pub fn awaits_planning(&self) -> bool {
        !self.planned && self.cancellation.is_none()
    }

    /// The id of its next follow-up delivery: a round after every delivery
    /// planned for it, so that none is ever reused.
    pub fn next_follow_up(&self) -> Option<handover_shared::DeliveryId> {
        let rounds =
            self.deliveries.iter().chain(&self.delivery_id).filter_map(|id| id.parts().map(|(_, round)| round));
        let round = rounds.max().unwrap_or(1).checked_add(1)?;
        Some(handover_shared::DeliveryId::of_round(self.seq, round)).filter(|id| id.parts().is_some())
    }

    /// Units handed over, as a client is shown them: a receipt delivered
    /// before they were counted says so through its proof (or, lacking one,
    /// its flag).
    pub fn delivered_units(&self) -> u32 {
        match (&self.proof, self.delivered && self.delivered_quantity == 0) {
            (Some(proof), true) => proof.quantity,
            (None, true) => self.quantity,
            _ => self.delivered_quantity,
        }
    }

    /// Ordered units not handed over (yet).
    pub fn outstanding(&self) -> u32 {
        self.quantity.saturating_sub(self.delivered_quantity)
    }

    /// The empties still expected for units not handed over: an order of a
    /// collectable item expects one per unit.
    pub fn empties_outstanding(&self) -> u32 {
        if self.empties_expected > 0 {
            self.outstanding()
        } else {
            0
        }
    }
}

/// The customer information that orders change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerAccount {
    /// Used cartridges still to be collected; the collection flag is on while
    /// this is above zero.
    pub empties_expected: u64,
    pub orders: u64,
}

impl CustomerAccount {
    pub fn collection_flag(&self) -> bool {
        self.empties_expected > 0
    }

    /// Empties collected on a delivery clear what is expected; collecting more
    /// than expected clears it, never below zero.
    pub fn with_empties_collected(&self, collected: u32) -> CustomerAccount {
        CustomerAccount {
            empties_expected: self.empties_expected.saturating_sub(u64::from(collected)),
            orders: self.orders,
        }
    }

    /// Empties no longer expected: their cartridges will never come (the
    /// order was cancelled). Never below zero.
    pub fn with_empties_waived(&self, waived: u32) -> CustomerAccount {
        self.with_empties_collected(waived)
    }

    /// Empties expected again: a reversed hand-over's, which the customer
    /// still holds.
    pub fn with_empties_owed(&self, owed: u32) -> CustomerAccount {
        CustomerAccount { empties_expected: self.empties_expected + u64::from(owed), orders: self.orders }
    }

    /// What confirming `receipt` does to the customer information.
    pub fn with_order(&self, receipt: &Receipt) -> CustomerAccount {
        CustomerAccount {
            empties_expected: self.empties_expected + u64::from(receipt.empties_expected),
            orders: self.orders + 1,
        }
    }
}

impl Guarded for Draft {
    fn describe(&self) -> String {
        format!("order {}", self.order_id)
    }

    fn visible_to(&self, principal: &Principal) -> bool {
        principal.acts_for_customer(&self.customer_id)
    }
}

impl Guarded for Receipt {
    fn describe(&self) -> String {
        format!("receipt {}", self.receipt_id)
    }

    fn visible_to(&self, principal: &Principal) -> bool {
        principal.acts_for_customer(&self.customer_id)
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::domain::fixtures::{customer, principal};

    fn item(discontinued: bool) -> Item {
        Item {
            id: ItemId::parse("TC-100").expect("id"),
            name: "Toner".into(),
            collectable: true,
            max_per_order: 20,
            discontinued,
        }
    }

    fn raw(customer: &str, item: &str, quantity: RawQuantity) -> RawOrder {
        RawOrder {
            customer_id: Some(customer.into()),
            item_id: Some(item.into()),
            quantity,
            shape_problems: Vec::new(),
        }
    }

    fn found() -> OrderLookups {
        OrderLookups { customer: Some(customer("C1")), item: Some(item(false)) }
    }

    fn codes(result: Result<ValidOrder, Vec<OrderProblem>>) -> Vec<(&'static str, &'static str)> {
        result.expect_err("refused").iter().map(|p| (p.field.as_str(), p.code.as_str())).collect()
    }

    #[test]
    fn a_sound_order_is_valid() {
        let order = judge(
            &raw("C1", "TC-100", RawQuantity::Text(" 3 ".into())),
            &principal(Role::Customer, Some("C1")),
            &found(),
        )
        .expect("valid");
        assert_eq!(order.quantity, 3);
        assert_eq!(order.customer_id.as_str(), "C1");
    }

    #[rstest]
    #[case::zero(RawQuantity::Integer(0), "invalid_quantity")]
    #[case::negative(RawQuantity::Integer(-4), "invalid_quantity")]
    #[case::fraction(RawQuantity::NotWhole("2.5".into()), "invalid_quantity")]
    #[case::text(RawQuantity::Text("two".into()), "invalid_quantity")]
    #[case::text_fraction(RawQuantity::Text("2.0".into()), "invalid_quantity")]
    #[case::wrong_type(RawQuantity::WrongType("text"), "invalid_quantity")]
    #[case::above_limit(RawQuantity::Integer(21), "quantity_above_limit")]
    #[case::huge(RawQuantity::Integer(i128::from(u64::MAX) * 4), "quantity_above_limit")]
    #[case::huge_text(RawQuantity::Text("99999999999999999999999999999999999999999".into()), "quantity_above_limit")]
    #[case::missing(RawQuantity::Missing, "missing_field")]
    #[case::blank(RawQuantity::Text("  ".into()), "missing_field")]
    fn each_abnormal_quantity_has_its_code(#[case] quantity: RawQuantity, #[case] code: &str) {
        let result = judge(&raw("C1", "TC-100", quantity), &principal(Role::Dispatcher, None), &found());
        assert_eq!(codes(result), vec![("quantity", code)]);
    }

    #[test]
    fn unknown_and_discontinued_records_are_named() {
        let dispatcher = principal(Role::Dispatcher, None);
        let nothing = OrderLookups::default();
        assert_eq!(
            codes(judge(&raw("C9", "XX", RawQuantity::Integer(1)), &dispatcher, &nothing)),
            vec![("customer_id", "unknown_customer"), ("item_id", "unknown_item")]
        );
        let retired = OrderLookups { customer: Some(customer("C1")), item: Some(item(true)) };
        assert_eq!(
            codes(judge(&raw("C1", "TC-100", RawQuantity::Integer(1)), &dispatcher, &retired)),
            vec![("item_id", "discontinued_item")]
        );
        assert_eq!(
            codes(judge(&raw("C 1", "TC-100", RawQuantity::Integer(1)), &dispatcher, &found())),
            vec![("customer_id", "unknown_customer")],
            "a malformed id names no customer"
        );
    }

    #[test]
    fn a_customer_ordering_for_another_is_refused_first() {
        let other = OrderLookups { customer: Some(customer("C2")), item: Some(item(false)) };
        let problems =
            judge(&raw("C2", "TC-100", RawQuantity::Integer(0)), &principal(Role::Customer, Some("C1")), &other)
                .expect_err("refused");
        assert_eq!(problems[0].code, OrderProblemCode::NotYourCustomer);
        assert_eq!(problems[0].message, "someone may only order for its own customer, not for C2");
        assert_eq!(problems.len(), 2, "and the other problems are still listed");
    }

    #[test]
    fn a_refused_shape_is_not_judged_twice() {
        let mut order = raw("C1", "TC-100", RawQuantity::Integer(1));
        order.item_id = None;
        order.shape_problems.push(OrderProblem {
            field: OrderField::ItemId,
            code: OrderProblemCode::InvalidField,
            message: "item_id must be a string".into(),
        });
        assert_eq!(
            codes(judge(&order, &principal(Role::Dispatcher, None), &found())),
            vec![("item_id", "invalid_field")]
        );
    }

    fn draft(state: DraftState) -> Draft {
        let now = OffsetDateTime::UNIX_EPOCH;
        let valid = ValidOrder { customer_id: CustomerId::parse("C1").expect("id"), item: item(false), quantity: 4 };
        let mut draft = Draft::new(
            valid,
            handover_shared::OrderId::parse("o1").expect("id"),
            &principal(Role::Customer, Some("C1")),
            now,
            DRAFT_TTL,
        );
        draft.state = state;
        draft
    }

    #[test]
    fn a_draft_confirms_once_then_replays_and_never_after_cancel_or_expiry() {
        let start = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(decide_confirm(&draft(DraftState::Open), start), ConfirmDecision::Confirm);
        let receipt_id = handover_shared::ReceiptId::from_seq(7);
        assert_eq!(
            decide_confirm(&draft(DraftState::Confirmed { receipt_id: receipt_id.clone() }), start),
            ConfirmDecision::Replay(receipt_id)
        );
        assert_eq!(
            decide_confirm(&draft(DraftState::Cancelled { at: start }), start),
            ConfirmDecision::Refuse(DraftRefusal::Cancelled)
        );
        assert_eq!(
            decide_confirm(&draft(DraftState::Open), start + DRAFT_TTL),
            ConfirmDecision::Refuse(DraftRefusal::Expired)
        );
        assert_eq!(decide_cancel(&draft(DraftState::Open)), Ok(true));
        assert_eq!(decide_cancel(&draft(DraftState::Cancelled { at: start })), Ok(false));
        assert_eq!(
            decide_cancel(&draft(DraftState::Confirmed { receipt_id: handover_shared::ReceiptId::from_seq(1) })),
            Err(DraftRefusal::AlreadyConfirmed)
        );
    }

    #[test]
    fn confirming_a_collectable_order_raises_the_collection_flag() {
        let receipt = Receipt::from_draft(&draft(DraftState::Open), 1, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(receipt.receipt_id.as_str(), "R-000001");
        assert!(!receipt.delivered && !receipt.planned);
        let account = CustomerAccount::default();
        assert!(!account.collection_flag());
        let after = account.with_order(&receipt);
        assert_eq!(after, CustomerAccount { empties_expected: 4, orders: 1 });
        assert!(after.collection_flag());
    }
}
