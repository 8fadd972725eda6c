//! Authentication and roles as typed extractors. A handler that takes
//! `Auth<Dispatcher>` cannot run for anyone else: the role check happens before
//! the handler, and forgetting it means forgetting the parameter, which leaves
//! the handler without a principal to work with.

use std::{future::Future, marker::PhantomData, ops::Deref, pin::Pin};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use handover_shared::Role;

use super::{error::ApiError, AppState};
use crate::domain::access::{Forbidden, Principal};

/// A set of roles an endpoint serves.
pub trait Roles: 'static {
    const ALLOWED: &'static [Role];
}

/// Any authenticated account.
#[derive(Debug)]
pub enum AnyRole {}
impl Roles for AnyRole {
    const ALLOWED: &'static [Role] = Role::ALL;
}

#[derive(Debug)]
pub enum Admin {}
impl Roles for Admin {
    const ALLOWED: &'static [Role] = &[Role::Admin];
}

#[derive(Debug)]
pub enum Dispatcher {}
impl Roles for Dispatcher {
    const ALLOWED: &'static [Role] = &[Role::Dispatcher];
}

/// Those who place orders: customers for themselves, dispatchers for anyone.
#[derive(Debug)]
pub enum OrderPlacer {}
impl Roles for OrderPlacer {
    const ALLOWED: &'static [Role] = &[Role::Customer, Role::Dispatcher];
}

/// Those who may read deliveries; which ones is the object check's business.
#[derive(Debug)]
pub enum DeliveryReader {}
impl Roles for DeliveryReader {
    const ALLOWED: &'static [Role] = &[Role::Dispatcher, Role::Seller, Role::Expediter, Role::Serviceman];
}

/// Those who may (re)assign deliveries: dispatchers any, sellers their own.
#[derive(Debug)]
pub enum DeliveryAssigner {}
impl Roles for DeliveryAssigner {
    const ALLOWED: &'static [Role] = &[Role::Dispatcher, Role::Seller];
}

/// The couriers: expediters and servicemen, who carry handhelds.
#[derive(Debug)]
pub enum Courier {}
impl Roles for Courier {
    const ALLOWED: &'static [Role] = &[Role::Expediter, Role::Serviceman];
}

/// An authenticated caller whose role is in `R`.
#[derive(Debug)]
pub struct Auth<R: Roles> {
    pub principal: Principal,
    roles: PhantomData<R>,
}

impl<R: Roles> Deref for Auth<R> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

/// The token of an `Authorization: Bearer ...` header.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn authorize<R: Roles>(req: HttpRequest) -> Result<Auth<R>, ApiError> {
    let state =
        req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::Internal("application state missing".into()))?;
    let principal = state.auth.authenticate(bearer(&req)).await?;
    if !R::ALLOWED.contains(&principal.role) {
        let allowed: Vec<&str> = R::ALLOWED.iter().map(|role| role.as_str()).collect();
        return Err(Forbidden(format!(
            "this endpoint is for {}; {} is {}",
            allowed.join(" or "),
            principal.username,
            principal.role.with_article()
        ))
        .into());
    }
    let span = tracing::Span::current();
    span.record("username", principal.username.as_str());
    span.record("device_id", principal.device_id.as_str());
    Ok(Auth { principal, roles: PhantomData })
}

impl<R: Roles> FromRequest for Auth<R> {
    type Error = ApiError;
    // The session's revocation may take a store read.
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        Box::pin(authorize(req.clone()))
    }
}
