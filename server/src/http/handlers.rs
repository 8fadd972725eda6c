//! Thin handlers: extract, call, respond.

use actix_web::{web, HttpRequest, HttpResponse};
use handover_shared::{
    api::{DeviceRevoked, Health, LoginRequest, LoginResponse, Me, NetworkFile, NodeStock, RefreshRequest, StockLevel},
    DeviceId, NodeId,
};

use super::{
    error::ApiError,
    extract::{Admin, AnyRole, Auth, Dispatcher},
    AppState,
};
use crate::import::import_network as run_import;

type Json<T> = web::Json<T>;
type State = web::Data<AppState>;

pub async fn health() -> Json<Health> {
    web::Json(Health { status: "ok".into() })
}

#[tracing::instrument(skip_all, fields(username = ?body.username))]
pub async fn login(state: State, req: HttpRequest, body: Json<LoginRequest>) -> Result<Json<LoginResponse>, ApiError> {
    let address = req.peer_addr().map(|addr| addr.ip());
    Ok(web::Json(state.auth.login(body.into_inner(), address).await?))
}

pub async fn refresh(state: State, body: Json<RefreshRequest>) -> Result<Json<LoginResponse>, ApiError> {
    Ok(web::Json(state.auth.refresh(&body.refresh_token).await?))
}

pub async fn logout(state: State, body: Json<RefreshRequest>) -> Result<HttpResponse, ApiError> {
    state.auth.logout(&body.refresh_token).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn me(caller: Auth<AnyRole>) -> Json<Me> {
    let principal = caller.principal;
    web::Json(Me {
        username: principal.username,
        role: principal.role,
        device_id: principal.device_id,
        node_id: principal.node_id,
        customer_id: principal.customer_id,
    })
}

#[tracing::instrument(skip_all, fields(admin = %caller.username))]
pub async fn import_network(
    state: State,
    caller: Auth<Admin>,
    body: Json<NetworkFile>,
) -> Result<Json<handover_shared::api::ImportSummary>, ApiError> {
    let summary = run_import(state.store.as_ref(), &body).await?;
    tracing::info!(?summary, "network imported");
    // A stock count may have brought what a backorder waits for.
    // The import is durable: a planning failure is logged and retried in the
    // background, not reported as a failed import.
    if summary.stock > 0 {
        if let Err(err) = crate::shipments::run(state.store.as_ref()).await {
            tracing::error!(error = %err, "planning after an import failed");
            state.planner.trigger();
        }
    }
    Ok(web::Json(summary))
}

#[tracing::instrument(skip_all, fields(admin = %caller.username, device_id = %path))]
pub async fn revoke_device(
    state: State,
    caller: Auth<Admin>,
    path: web::Path<DeviceId>,
) -> Result<Json<DeviceRevoked>, ApiError> {
    let device_id = path.into_inner();
    let sessions_revoked = state.auth.revoke_device(&device_id).await?;
    Ok(web::Json(DeviceRevoked { device_id, sessions_revoked }))
}

/// `POST /api/v1/admin/devices/{device_id}/release`: the device is nobody's
/// again (handed to another courier), and its sessions are cut off.
#[tracing::instrument(skip_all, fields(admin = %caller.username, device_id = %path))]
pub async fn release_device(
    state: State,
    caller: Auth<Admin>,
    path: web::Path<DeviceId>,
) -> Result<Json<DeviceRevoked>, ApiError> {
    let device_id = path.into_inner();
    let sessions_revoked = state.auth.release_device(&device_id).await?;
    Ok(web::Json(DeviceRevoked { device_id, sessions_revoked }))
}

pub async fn node_stock(
    state: State,
    caller: Auth<Dispatcher>,
    path: web::Path<NodeId>,
) -> Result<Json<NodeStock>, ApiError> {
    let node_id = path.into_inner();
    let node = state.store.node(&node_id).await?.ok_or_else(|| ApiError::NotFound(format!("no node {node_id}")))?;
    caller.ensure_can_see(&node)?;
    let items = state
        .store
        .node_stock(&node_id)
        .await?
        .into_iter()
        .map(|(item_id, balance)| StockLevel {
            item_id,
            on_hand: balance.on_hand,
            reserved: balance.reserved,
            available: balance.available(),
        })
        .collect();
    Ok(web::Json(NodeStock { node_id, items }))
}

/// `GET /api/v1/stock/audit`: replays the stock ledger and compares it with the
/// stored balances, as of one moment.
pub async fn stock_audit(state: State, _caller: Auth<Dispatcher>) -> Result<HttpResponse, ApiError> {
    let (entries, balances) = state.store.stock_snapshot().await?;
    let (balanced, mismatches, negative) = match crate::domain::stock::audit(&entries, &balances) {
        Ok(mismatches) => (mismatches.is_empty(), mismatches, false),
        Err(_) => (false, Vec::new(), true),
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "ledger_entries": entries.len(),
        "balances": balances.len(),
        "balanced": balanced,
        "went_negative": negative,
        "mismatches": mismatches,
    })))
}
