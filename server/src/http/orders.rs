//! The order endpoints: drafts, confirm, cancel, receipts, customer information.

use actix_web::{web, HttpResponse};
use handover_shared::{
    api::{
        CorrectionRequest, CustomerInfo, InterventionView, OrderStatus, OrderView, ReceiptPage, ReceiptProof,
        ReceiptView, ReversalView,
    },
    CustomerId, ErrorCode, OrderId, ReceiptId,
};
use serde::Deserialize;
use serde_json::Value;

use super::{
    error::ApiError,
    extract::{Auth, OrderPlacer},
    paging, AppState,
};
use crate::{
    domain::{
        access::Principal,
        corrections::Correction,
        orders::{Draft, DraftState, OrderField, OrderProblem, OrderProblemCode, RawOrder, RawQuantity, Receipt},
        shipments::{Intervention, Reversal},
    },
    orders, shipments,
    store::ReceiptQuery,
};

type State = web::Data<AppState>;

/// Reads an order body field by field, so that each abnormal datum gets its own
/// code instead of one deserialisation error for the whole body.
pub fn raw_order_from_json(body: &Value) -> RawOrder {
    let mut raw =
        RawOrder { customer_id: None, item_id: None, quantity: RawQuantity::Missing, shape_problems: Vec::new() };
    let Some(fields) = body.as_object() else {
        raw.shape_problems.push(OrderProblem {
            field: OrderField::Body,
            code: OrderProblemCode::InvalidField,
            message: "the body must be a JSON object with customer_id, item_id and quantity".into(),
        });
        return raw;
    };
    for (name, value) in fields {
        let text = |field: OrderField| match value {
            Value::String(text) => Ok(text.clone()),
            other => Err(OrderProblem {
                field,
                code: OrderProblemCode::InvalidField,
                message: format!("{} must be a string, not {}", field.as_str(), json_kind(other)),
            }),
        };
        match name.as_str() {
            "customer_id" => match text(OrderField::CustomerId) {
                Ok(id) => raw.customer_id = Some(id),
                Err(problem) => raw.shape_problems.push(problem),
            },
            "item_id" => match text(OrderField::ItemId) {
                Ok(id) => raw.item_id = Some(id),
                Err(problem) => raw.shape_problems.push(problem),
            },
            "quantity" => raw.quantity = raw_quantity(value),
            unknown => raw.shape_problems.push(OrderProblem {
                field: OrderField::Body,
                code: OrderProblemCode::UnknownField,
                message: format!("unknown field {unknown:?}; an order has customer_id, item_id and quantity"),
            }),
        }
    }
    raw
}

fn raw_quantity(value: &Value) -> RawQuantity {
    match value {
        Value::Number(number) => match number.as_i64().map(i128::from).or_else(|| number.as_u64().map(i128::from)) {
            Some(whole) => RawQuantity::Integer(whole),
            None => RawQuantity::NotWhole(number.to_string()),
        },
        Value::Null => RawQuantity::Missing,
        other => RawQuantity::WrongType(json_kind(other)),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub fn order_view(draft: &Draft) -> OrderView {
    let (status, receipt_id) = match &draft.state {
        DraftState::Open => (OrderStatus::Draft, None),
        DraftState::Cancelled { .. } => (OrderStatus::Cancelled, None),
        DraftState::Confirmed { receipt_id } => (OrderStatus::Confirmed, Some(receipt_id.clone())),
    };
    OrderView {
        order_id: draft.order_id.clone(),
        status,
        customer_id: draft.customer_id.clone(),
        item_id: draft.item_id.clone(),
        item_name: draft.item_name.clone(),
        quantity: draft.quantity,
        created_at: draft.created_at,
        expires_at: draft.expires_at,
        receipt_id,
    }
}

/// A receipt as `viewer` sees it: its customer also sees the handover code.
pub fn receipt_view_for(receipt: &Receipt, viewer: &Principal) -> ReceiptView {
    let mut view = receipt_view(receipt);
    if viewer.customer_id.as_ref() == Some(&receipt.customer_id) {
        view.handover_code = receipt.handover_code.as_ref().map(|code| code.code.clone());
    }
    view
}

/// A receipt without its handover code.
pub fn receipt_view(receipt: &Receipt) -> ReceiptView {
    ReceiptView {
        receipt_id: receipt.receipt_id.clone(),
        order_id: receipt.order_id.clone(),
        customer_id: receipt.customer_id.clone(),
        item_id: receipt.item_id.clone(),
        quantity: receipt.quantity,
        empties_expected: receipt.empties_expected,
        created_at: receipt.created_at,
        planned: receipt.planned,
        backordered: receipt.backordered,
        delivered: receipt.delivered,
        handover_code: None,
        delivered_at: receipt.delivered_at,
        delivery_id: receipt.delivery_id.clone(),
        proof: receipt.proof.clone(),
        delivered_quantity: receipt.delivered_units(),
        deliveries: receipt.deliveries.clone(),
        cancelled: receipt.cancellation.is_some(),
        cancellation: receipt.cancellation.as_ref().map(intervention_view),
        reversals: receipt.reversals.iter().map(reversal_view).collect(),
    }
}

pub fn intervention_view(intervention: &Intervention) -> InterventionView {
    InterventionView { by: intervention.by.clone(), at: intervention.at, reason: intervention.reason.clone() }
}

pub fn reversal_view(reversal: &Reversal) -> ReversalView {
    ReversalView {
        delivery_id: reversal.delivery_id.clone(),
        confirmation_id: reversal.confirmation_id.clone(),
        quantity: reversal.quantity,
        empties_collected: reversal.empties_collected,
        by: reversal.intervention.by.clone(),
        at: reversal.intervention.at,
        reason: reversal.intervention.reason.clone(),
    }
}

/// `POST /api/v1/receipts/{id}/cancel`: a customer calls off its own receipt
/// while nothing moved; a dispatcher cancels any receipt not delivered.
pub async fn cancel_receipt(
    state: State,
    caller: Auth<OrderPlacer>,
    path: web::Path<ReceiptId>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // The body is optional here (a customer need not say why), but one sent
    // must be sound.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        let request: CorrectionRequest = serde_json::from_slice(&body).map_err(|err| {
            ApiError::refused(ErrorCode::InvalidJson, format!("the body is not a cancel request: {err}"))
        })?;
        request.reason
    };
    let correction = Correction::CancelReceipt(path.into_inner());
    let corrected = shipments::correct(state.store.as_ref(), &caller, &correction, &reason).await?;
    Ok(HttpResponse::Ok().json(receipt_view(&corrected.receipt)))
}

pub async fn create(state: State, caller: Auth<OrderPlacer>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let ttl = state.settings.orders.draft_ttl();
    let draft = orders::place_draft(state.store.as_ref(), &caller, &raw_order_from_json(&body), ttl).await?;
    Ok(HttpResponse::Created().json(order_view(&draft)))
}

pub async fn list_drafts(state: State, caller: Auth<OrderPlacer>) -> Result<HttpResponse, ApiError> {
    let drafts = orders::open_drafts(state.store.as_ref(), &caller).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"orders": drafts.iter().map(order_view).collect::<Vec<_>>()})))
}

pub async fn show(state: State, caller: Auth<OrderPlacer>, path: web::Path<OrderId>) -> Result<HttpResponse, ApiError> {
    let draft = orders::draft(state.store.as_ref(), &caller, &path).await?;
    Ok(HttpResponse::Ok().json(order_view(&draft)))
}

/// 201 with the receipt the first time; 200 with the same receipt after.
pub async fn confirm(
    state: State,
    caller: Auth<OrderPlacer>,
    path: web::Path<OrderId>,
) -> Result<HttpResponse, ApiError> {
    let (receipt, created) = orders::confirm(state.store.as_ref(), &caller, &path).await?;
    if created {
        state.planner.trigger();
    }
    let mut response = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.json(receipt_view_for(&receipt, &caller)))
}

pub async fn cancel(
    state: State,
    caller: Auth<OrderPlacer>,
    path: web::Path<OrderId>,
) -> Result<HttpResponse, ApiError> {
    let draft = orders::cancel(state.store.as_ref(), &caller, &path).await?;
    Ok(HttpResponse::Ok().json(order_view(&draft)))
}

pub async fn receipt(
    state: State,
    caller: Auth<OrderPlacer>,
    path: web::Path<ReceiptId>,
) -> Result<HttpResponse, ApiError> {
    let receipt = orders::receipt(state.store.as_ref(), &caller, &path).await?;
    let mut view = receipt_view_for(&receipt, &caller);
    if let Some(proof) = view.proof.as_mut() {
        proof.photo_received = crate::proof::photo_received(state.store.as_ref(), proof).await?;
    }
    Ok(HttpResponse::Ok().json(view))
}

/// `GET /api/v1/receipts/{id}/proof`: the signed records of the receipt's
/// confirmations, each with its device's key, to check offline.
pub async fn proof(
    state: State,
    caller: Auth<OrderPlacer>,
    path: web::Path<ReceiptId>,
) -> Result<HttpResponse, ApiError> {
    let receipt = orders::receipt(state.store.as_ref(), &caller, &path).await?;
    let records = crate::proof::signed_records(state.store.as_ref(), &receipt).await?;
    Ok(HttpResponse::Ok().json(ReceiptProof { receipt_id: receipt.receipt_id, records }))
}

/// `GET /api/v1/receipts/{id}/images/{digest}`: a photo or signature of the
/// receipt's proof, to whom may see the receipt.
pub async fn image(
    state: State,
    caller: Auth<OrderPlacer>,
    path: web::Path<(ReceiptId, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, digest) = path.into_inner();
    let receipt = orders::receipt(state.store.as_ref(), &caller, &id).await?;
    let (kind, bytes) = crate::proof::image(state.store.as_ref(), &receipt, &digest).await?;
    Ok(super::proof::image_response(kind, bytes))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptFilter {
    customer_id: Option<CustomerId>,
    delivered: Option<bool>,
    backordered: Option<bool>,
    /// RFC 3339.
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<time::OffsetDateTime>,
    after: Option<ReceiptId>,
    limit: Option<usize>,
}

pub async fn list_receipts(
    state: State,
    caller: Auth<OrderPlacer>,
    filter: web::Query<ReceiptFilter>,
) -> Result<HttpResponse, ApiError> {
    let filter = filter.into_inner();
    let limit = paging::limit(filter.limit)?;
    let after = paging::after(filter.after.as_ref(), ReceiptId::seq, "a receipt id like R-000123")?;
    let query = ReceiptQuery {
        customer_id: filter.customer_id,
        delivered: filter.delivered,
        backordered: filter.backordered,
        since: filter.since,
        after,
        limit,
    };
    let receipts = orders::receipts(state.store.as_ref(), &caller, query).await?;
    let next_after = paging::next_after(&receipts, limit, |r| r.receipt_id.clone());
    Ok(HttpResponse::Ok().json(ReceiptPage { receipts: receipts.iter().map(receipt_view).collect(), next_after }))
}

pub async fn customer(
    state: State,
    caller: Auth<OrderPlacer>,
    path: web::Path<CustomerId>,
) -> Result<HttpResponse, ApiError> {
    let (customer, account, history) = orders::customer_info(state.store.as_ref(), &caller, &path).await?;
    Ok(HttpResponse::Ok().json(CustomerInfo {
        customer_id: customer.id,
        name: customer.name,
        branch_1: customer.branch_1,
        branch_2: customer.branch_2,
        seller_id: customer.seller_id,
        collection_flag: account.collection_flag(),
        empties_expected: account.empties_expected,
        order_count: account.orders,
        order_history: history.iter().map(receipt_view).collect(),
    }))
}
