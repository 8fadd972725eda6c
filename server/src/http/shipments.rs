//! The shipment endpoints: planning runs, deliveries, assignment, goods
//! receipts and leg issues.

use actix_web::{web, HttpResponse};
use handover_shared::{
    api::{
        AssignRequest, AssignmentView, AttemptView, CorrectionRequest, DeliveryView, GoodsReceiptRequest,
        GoodsReceiptResult, LegView, PlannedDelivery, ShipmentRun, StockLevel,
    },
    DeliveryId, LegId, NodeId,
};
use serde::Deserialize;

use super::orders::{intervention_view, reversal_view};
use super::{
    error::ApiError,
    extract::{Auth, DeliveryAssigner, DeliveryReader, Dispatcher},
    paging, AppState,
};
use crate::{
    domain::{
        corrections::{Corrected, Correction},
        shipments::{Carrier, Delivery, Destination, LegStatus},
    },
    shipments,
    store::{DeliveryQuery, PlanResult},
};

type State = web::Data<AppState>;

pub fn run_view(results: &[PlanResult]) -> ShipmentRun {
    let mut run = ShipmentRun::default();
    for result in results {
        match result {
            PlanResult::Planned(delivery) => run.planned.push(PlannedDelivery {
                receipt_id: delivery.receipt_id.clone(),
                delivery_id: delivery.delivery_id.clone(),
                source: delivery.source.as_str().to_owned(),
                source_node: delivery.source_node.clone(),
                assignee: delivery.assignee.clone(),
                entrusted_to: entrusted_to(delivery),
            }),
            PlanResult::Backordered(receipt_id) => run.backordered.push(receipt_id.clone()),
        }
    }
    run
}

fn entrusted_to(delivery: &Delivery) -> Option<NodeId> {
    match &delivery.carrier {
        Carrier::Seller { seller } => Some(seller.clone()),
        Carrier::Distributor { .. } => None,
    }
}

pub fn delivery_view(delivery: &Delivery) -> DeliveryView {
    DeliveryView {
        delivery_id: delivery.delivery_id.clone(),
        receipt_id: delivery.receipt_id.clone(),
        customer_id: delivery.customer_id.clone(),
        item_id: delivery.item_id.clone(),
        quantity: delivery.quantity,
        source: delivery.source.as_str().to_owned(),
        source_node: delivery.source_node.clone(),
        delivering_node: delivery.delivering_node().clone(),
        legs: delivery
            .legs
            .iter()
            .map(|leg| LegView {
                leg_id: leg.leg_id.clone(),
                from: leg.from.clone(),
                to: match &leg.to {
                    Destination::Node(node) => node.to_string(),
                    Destination::Customer(customer) => format!("customer:{customer}"),
                },
                status: match leg.status {
                    LegStatus::Planned => "planned",
                    LegStatus::Issued => "issued",
                    LegStatus::Completed => "completed",
                }
                .to_owned(),
                issued_at: leg.issued_at,
            })
            .collect(),
        assignee: delivery.assignee.clone(),
        entrusted_to: entrusted_to(delivery),
        status: delivery.status().as_str().to_owned(),
        version: delivery.version,
        assignments: delivery
            .assignments
            .iter()
            .map(|a| AssignmentView { version: a.version, assignee: a.assignee.clone(), at: a.at, by: a.by.clone() })
            .collect(),
        planned_at: delivery.planned_at,
        attempts: delivery
            .attempts
            .iter()
            .map(|attempt| AttemptView {
                confirmation_id: attempt.confirmation_id.clone(),
                outcome: attempt.outcome,
                reason: attempt.reason,
                note: attempt.note.clone(),
                quantity: attempt.quantity,
                empties_collected: attempt.empties_collected,
                by: attempt.by.clone(),
                device_id: attempt.device_id.clone(),
                version: attempt.version,
                captured_at: attempt.captured_at,
                received_at: attempt.received_at,
                reversed: delivery.reversals.iter().any(|r| r.confirmation_id == attempt.confirmation_id),
            })
            .collect(),
        cancelled: delivery.cancellation.is_some(),
        cancellation: delivery.cancellation.as_ref().map(intervention_view),
        reversals: delivery.reversals.iter().map(reversal_view).collect(),
        follow_up_of: delivery.follow_up_of.clone(),
    }
}

pub async fn run(state: State, _caller: Auth<Dispatcher>) -> Result<HttpResponse, ApiError> {
    let results = shipments::run(state.store.as_ref()).await?;
    Ok(HttpResponse::Ok().json(run_view(&results)))
}

pub async fn goods_receipt(
    state: State,
    _caller: Auth<Dispatcher>,
    path: web::Path<NodeId>,
    body: web::Json<GoodsReceiptRequest>,
) -> Result<HttpResponse, ApiError> {
    let node_id = path.into_inner();
    let (balance, results) =
        shipments::goods_receipt(state.store.as_ref(), &state.planner, &node_id, &body.item_id, body.quantity).await?;
    Ok(HttpResponse::Ok().json(GoodsReceiptResult {
        node_id,
        stock: StockLevel {
            item_id: body.item_id.clone(),
            on_hand: balance.on_hand,
            reserved: balance.reserved,
            available: balance.available(),
        },
        run: run_view(&results),
    }))
}

pub async fn show(
    state: State,
    caller: Auth<DeliveryReader>,
    path: web::Path<DeliveryId>,
) -> Result<HttpResponse, ApiError> {
    let delivery = shipments::delivery(state.store.as_ref(), &caller, &path).await?;
    Ok(HttpResponse::Ok().json(delivery_view(&delivery)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryFilter {
    open: Option<bool>,
    after: Option<DeliveryId>,
    limit: Option<usize>,
}

pub async fn list(
    state: State,
    caller: Auth<DeliveryReader>,
    filter: web::Query<DeliveryFilter>,
) -> Result<HttpResponse, ApiError> {
    let limit = paging::limit(filter.limit)?;
    let after = paging::after(filter.after.as_ref(), DeliveryId::number, "a delivery id like D-000123")?;
    let query = DeliveryQuery { open_only: filter.open.unwrap_or(false), after, limit, ..DeliveryQuery::default() };
    let deliveries = shipments::deliveries(state.store.as_ref(), &caller, query).await?;
    let next_after = paging::next_after(&deliveries, limit, |d| d.delivery_id.clone());
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "deliveries": deliveries.iter().map(delivery_view).collect::<Vec<_>>(),
        "next_after": next_after,
    })))
}

pub async fn assign(
    state: State,
    caller: Auth<DeliveryAssigner>,
    path: web::Path<DeliveryId>,
    body: web::Json<AssignRequest>,
) -> Result<HttpResponse, ApiError> {
    let delivery = shipments::assign(state.store.as_ref(), &caller, &path, &body.assignee).await?;
    Ok(HttpResponse::Ok().json(delivery_view(&delivery)))
}

/// `POST /api/v1/deliveries/{id}/cancel`.
pub async fn cancel(
    state: State,
    caller: Auth<DeliveryAssigner>,
    path: web::Path<DeliveryId>,
    body: web::Json<CorrectionRequest>,
) -> Result<HttpResponse, ApiError> {
    let correction = Correction::CancelDelivery(path.into_inner());
    let corrected = shipments::correct(state.store.as_ref(), &caller, &correction, &body.reason).await?;
    corrected_delivery(corrected)
}

/// `POST /api/v1/deliveries/{id}/reverse`.
pub async fn reverse(
    state: State,
    caller: Auth<Dispatcher>,
    path: web::Path<DeliveryId>,
    body: web::Json<CorrectionRequest>,
) -> Result<HttpResponse, ApiError> {
    let correction = Correction::Reverse(path.into_inner());
    let corrected = shipments::correct(state.store.as_ref(), &caller, &correction, &body.reason).await?;
    corrected_delivery(corrected)
}

fn corrected_delivery(corrected: Corrected) -> Result<HttpResponse, ApiError> {
    let delivery = corrected.delivery.ok_or_else(|| ApiError::Internal("a corrected delivery went missing".into()))?;
    Ok(HttpResponse::Ok().json(delivery_view(&delivery)))
}

pub async fn issue_leg(
    state: State,
    _caller: Auth<Dispatcher>,
    path: web::Path<LegId>,
) -> Result<HttpResponse, ApiError> {
    let delivery = shipments::issue_leg(state.store.as_ref(), &path).await?;
    Ok(HttpResponse::Ok().json(delivery_view(&delivery)))
}
