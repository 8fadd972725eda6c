//! The HTTP layer: routes, extractors and the mapping of errors to responses.
//! Handlers have one shape: extract, parse into domain types, call the domain or
//! the store, respond. Rules live in `domain`, `auth` and `import`.

mod dashboard;
pub mod error;
pub mod extract;
mod handlers;
mod orders;
pub mod pages;
mod paging;
mod proof;
mod shipments;
pub mod sync;

use std::sync::Arc;

use actix_session::{config::BrowserSession, storage::CookieSessionStore, SessionMiddleware};
use actix_web::{
    cookie::{Key, SameSite},
    web,
};

use crate::{auth::AuthService, config::Settings, shipments::Planner, store::Store};

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub auth: AuthService,
    pub settings: Settings,
    /// Plans in the background after each confirmed order.
    pub planner: Planner,
    pub recent_pulls: sync::RecentPulls,
    pub push_limits: sync::PushLimits,
}

/// The largest chunk of a photo upload (handhelds send 256 KiB).
const PHOTO_CHUNK_LIMIT: usize = 1024 * 1024;

/// Registers every route and the JSON body limits.
pub fn routes(cfg: &mut web::ServiceConfig, limits: &crate::config::LimitSettings) {
    let json = web::JsonConfig::default().limit(limits.json_body_bytes).error_handler(error::json_error);
    // Confirmations carry drawn signatures: a batch may be a few megabytes.
    let sync_json = web::JsonConfig::default().limit(limits.sync_body_bytes).error_handler(error::json_error);
    let network_json = web::JsonConfig::default().limit(limits.network_body_bytes).error_handler(error::json_error);
    cfg.app_data(json)
        .app_data(web::PathConfig::default().error_handler(error::path_error))
        .app_data(web::QueryConfig::default().error_handler(error::query_error))
        .service(web::resource("/healthz").get(handlers::health))
        .service(
            web::scope("/api/v1")
                .service(web::resource("/auth/login").post(handlers::login))
                .service(web::resource("/auth/refresh").post(handlers::refresh))
                .service(web::resource("/auth/logout").post(handlers::logout))
                .service(web::resource("/auth/me").get(handlers::me))
                .service(web::resource("/admin/network").app_data(network_json).post(handlers::import_network))
                .service(web::resource("/admin/devices/{device_id}/revoke").post(handlers::revoke_device))
                .service(web::resource("/admin/devices/{device_id}/release").post(handlers::release_device))
                .service(
                    web::resource("/nodes/{node_id}/stock").get(handlers::node_stock).post(shipments::goods_receipt),
                )
                .service(web::resource("/shipments/run").post(shipments::run))
                .service(web::resource("/stock/audit").get(handlers::stock_audit))
                .service(web::resource("/deliveries").get(shipments::list))
                .service(web::resource("/deliveries/{delivery_id}").get(shipments::show))
                .service(web::resource("/deliveries/{delivery_id}/assign").post(shipments::assign))
                .service(web::resource("/deliveries/{delivery_id}/cancel").post(shipments::cancel))
                .service(web::resource("/deliveries/{delivery_id}/reverse").post(shipments::reverse))
                .service(web::resource("/legs/{leg_id}/issue").post(shipments::issue_leg))
                .service(
                    web::resource("/deliveries/{delivery_id}/photos/{digest}")
                        .app_data(web::PayloadConfig::new(PHOTO_CHUNK_LIMIT))
                        .get(proof::photo_state)
                        .put(proof::photo_chunk),
                )
                .service(web::resource("/sync/assignments").get(sync::assignments))
                .service(web::resource("/sync/confirmations").app_data(sync_json).post(sync::confirmations))
                .service(web::resource("/orders").post(orders::create).get(orders::list_drafts))
                .service(web::resource("/orders/{order_id}").get(orders::show))
                .service(web::resource("/orders/{order_id}/confirm").post(orders::confirm))
                .service(web::resource("/orders/{order_id}/cancel").post(orders::cancel))
                .service(web::resource("/receipts").get(orders::list_receipts))
                .service(web::resource("/receipts/{receipt_id}").get(orders::receipt))
                .service(web::resource("/receipts/{receipt_id}/cancel").post(orders::cancel_receipt))
                .service(web::resource("/receipts/{receipt_id}/proof").get(orders::proof))
                .service(web::resource("/receipts/{receipt_id}/images/{digest}").get(orders::image))
                .service(web::resource("/customers/{customer_id}").get(orders::customer)),
        );
}

/// Registers the pages, behind the session cookie. Registered last: its empty
/// prefix would otherwise shadow the API.
pub fn pages(cfg: &mut web::ServiceConfig, cookie_key: &Key, secure_cookies: bool) {
    let sessions = SessionMiddleware::builder(CookieSessionStore::default(), cookie_key.clone())
        .cookie_name("handover_session".to_owned())
        .cookie_secure(secure_cookies)
        .cookie_http_only(true)
        .cookie_same_site(SameSite::Strict)
        .session_lifecycle(BrowserSession::default())
        .build();
    cfg.service(
        web::scope("")
            .wrap(sessions)
            .app_data(web::FormConfig::default().limit(16 * 1024).error_handler(pages::form_error))
            .app_data(web::PathConfig::default().error_handler(pages::path_error))
            .app_data(web::QueryConfig::default().error_handler(pages::query_error))
            .service(web::resource("/").get(pages::home))
            .service(web::resource("/login").get(pages::login_form).post(pages::login_submit))
            .service(web::resource("/logout").post(pages::logout))
            .service(web::resource("/order").get(pages::order_form).post(pages::order_submit))
            .service(web::resource("/order/{order_id}").get(pages::order_show))
            .service(web::resource("/order/{order_id}/confirm").post(pages::order_confirm))
            .service(web::resource("/order/{order_id}/cancel").post(pages::order_cancel))
            .service(web::resource("/receipts/{receipt_id}").get(pages::receipt))
            .service(web::resource("/receipts/{receipt_id}/cancel").post(pages::receipt_cancel))
            .service(web::resource("/receipts/{receipt_id}/images/{digest}").get(pages::receipt_image))
            .service(web::resource("/receipts/{receipt_id}/proof.json").get(pages::receipt_proof))
            .service(web::resource("/dashboard").get(dashboard::dashboard))
            .service(web::resource("/dashboard/run").post(dashboard::run_planning))
            .service(web::resource("/dashboard/legs/{leg_id}/issue").post(dashboard::issue_leg))
            .service(web::resource("/dashboard/deliveries/{delivery_id}/assign").post(dashboard::assign))
            .service(web::resource("/dashboard/deliveries/{delivery_id}/cancel").post(dashboard::cancel_delivery))
            .service(web::resource("/dashboard/deliveries/{delivery_id}/reverse").post(dashboard::reverse_delivery))
            .service(web::resource("/dashboard/receipts/{receipt_id}/cancel").post(dashboard::cancel_receipt)),
    );
}
