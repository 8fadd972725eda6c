//! The sync endpoints that the handheld agent calls.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use handover_shared::sync::{Assignment, AssignmentChanges, AssignmentStatus};
use serde::Deserialize;

use super::{
    error::ApiError,
    extract::{Auth, Courier},
    AppState,
};
use crate::domain::shipments::DeliveryStatus;

type State = web::Data<AppState>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// The `cursor` of the previous pull; absent for the first one.
    since: Option<String>,
}

/// `GET /api/v1/sync/assignments?since=CURSOR`: the courier's assignments that
/// changed since its last pull. The first pull lists what the courier holds now;
/// later ones also say which deliveries went to someone else.
pub async fn assignments(
    state: State,
    caller: Auth<Courier>,
    query: web::Query<Since>,
) -> Result<HttpResponse, ApiError> {
    let cursor = match query.since.as_deref() {
        None | Some("") => 0,
        Some(raw) => raw.parse::<u64>().map_err(|_| ApiError::BadRequest {
            code: "invalid_query",
            message: format!("since must be the cursor of a previous pull, not {raw:?}"),
        })?,
    };
    let store = state.store.as_ref();
    let (deliveries, last) = store.assignment_changes(&caller.username, cursor).await?;
    let mut customers = HashMap::new();
    let mut items = HashMap::new();
    let mut assignments = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let mine = delivery.assignee.as_ref() == Some(&caller.username);
        let status = if mine {
            match delivery.status() {
                DeliveryStatus::Upcoming => AssignmentStatus::Upcoming,
                DeliveryStatus::Ready => AssignmentStatus::Ready,
                DeliveryStatus::Delivered => AssignmentStatus::Delivered,
                DeliveryStatus::Cancelled => AssignmentStatus::Cancelled,
            }
        } else {
            AssignmentStatus::ReassignedAway
        };
        // A first pull lists only what there is to do.
        if cursor == 0 && !matches!(status, AssignmentStatus::Upcoming | AssignmentStatus::Ready) {
            continue;
        }
        if !customers.contains_key(&delivery.customer_id) {
            let name = store.customer(&delivery.customer_id).await?.map(|c| c.name).unwrap_or_default();
            customers.insert(delivery.customer_id.clone(), name);
        }
        if !items.contains_key(&delivery.item_id) {
            let name = store.item(&delivery.item_id).await?.map(|i| i.name).unwrap_or_default();
            items.insert(delivery.item_id.clone(), name);
        }
        let empties_expected = store.receipt(&delivery.receipt_id).await?.map_or(0, |r| r.empties_expected);
        assignments.push(Assignment {
            pickup_node: delivery.delivering_node().clone(),
            customer_name: customers.get(&delivery.customer_id).cloned().unwrap_or_default(),
            item_name: items.get(&delivery.item_id).cloned().unwrap_or_default(),
            delivery_id: delivery.delivery_id,
            version: delivery.version,
            status,
            receipt_id: delivery.receipt_id,
            customer_id: delivery.customer_id,
            item_id: delivery.item_id,
            quantity: delivery.quantity,
            empties_expected,
        });
    }
    Ok(HttpResponse::Ok().json(AssignmentChanges { cursor: last.to_string(), assignments }))
}
