//! The one API error. Every layer's error converts into [`ApiError`], and one
//! `match` maps each to its status and stable code. Unexpected failures are
//! logged with their cause chain and reach the client as an opaque 500.

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::ServiceResponse,
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{header, StatusCode},
    middleware::ErrorHandlerResponse,
    HttpRequest, HttpResponse, ResponseError,
};
use handover_shared::api::{ErrorBody, ErrorDetail, Problem};

use crate::{
    auth::AuthError,
    domain::{
        access::Forbidden,
        orders::{DraftRefusal, OrderProblemCode},
        shipments::{AssignRefusal, LegRefusal},
    },
    import::ImportFailure,
    orders::OrderFailure,
    shipments::ShipmentFailure,
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Input that cannot be read: malformed JSON, a wrong type, an unknown field.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("send the body as JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    /// Input judged and refused, with the status its most severe problem calls for.
    #[error("{message}")]
    Rejected { status: StatusCode, code: &'static str, message: String, problems: Vec<Problem> },
    /// A document that parses but breaks rules; every problem listed.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String, problems: Vec<Problem> },
    /// A request that conflicts with the object's state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<ImportFailure> for ApiError {
    fn from(failure: ImportFailure) -> Self {
        match failure {
            ImportFailure::Invalid(problems) => ApiError::Unprocessable {
                code: "invalid_network",
                message: format!("the network file has {} problem(s); nothing was imported", problems.len()),
                problems,
            },
            ImportFailure::Store(err) => ApiError::Store(err),
            ImportFailure::Internal(message) => ApiError::Internal(message),
        }
    }
}

impl From<ShipmentFailure> for ApiError {
    fn from(failure: ShipmentFailure) -> Self {
        match failure {
            ShipmentFailure::NotFound(message) => ApiError::NotFound(message),
            ShipmentFailure::Invalid { code, message } => {
                ApiError::Unprocessable { code, message, problems: Vec::new() }
            }
            ShipmentFailure::Forbidden(forbidden) => ApiError::Forbidden(forbidden),
            ShipmentFailure::Assign(AssignRefusal::NotAllowed(message)) => ApiError::Forbidden(Forbidden(message)),
            ShipmentFailure::Assign(refusal @ AssignRefusal::WrongCourier { .. }) => {
                ApiError::Unprocessable { code: "wrong_courier", message: refusal.to_string(), problems: Vec::new() }
            }
            ShipmentFailure::Assign(refusal @ AssignRefusal::Closed(..)) => {
                ApiError::Conflict { code: "delivery_closed", message: refusal.to_string() }
            }
            ShipmentFailure::Leg(refusal) => ApiError::Conflict {
                code: match refusal {
                    LegRefusal::LastLeg(_) => "last_leg",
                    LegRefusal::PreviousNotIssued(_) => "previous_leg_not_issued",
                    LegRefusal::Closed(..) => "delivery_closed",
                },
                message: refusal.to_string(),
            },
            ShipmentFailure::Store(err) => ApiError::Store(err),
        }
    }
}

impl From<OrderFailure> for ApiError {
    fn from(failure: OrderFailure) -> Self {
        match failure {
            OrderFailure::Abnormal(problems) => abnormal_order(problems),
            OrderFailure::NotFound(message) => ApiError::NotFound(message),
            OrderFailure::Refused(refusal) => ApiError::Conflict {
                code: match refusal {
                    DraftRefusal::Cancelled => "order_cancelled",
                    DraftRefusal::Expired => "draft_expired",
                    DraftRefusal::AlreadyConfirmed => "order_confirmed",
                },
                message: refusal.to_string(),
            },
            OrderFailure::Forbidden(forbidden) => ApiError::Forbidden(forbidden),
            OrderFailure::Store(err) => ApiError::Store(err),
        }
    }
}

/// Abnormal order data: the most severe problem decides the status and the
/// top-level code (problems arrive sorted, most severe first); every problem is
/// listed with its field and its own code.
fn abnormal_order(problems: Vec<crate::domain::orders::OrderProblem>) -> ApiError {
    let Some(first) = problems.first() else {
        return ApiError::Internal("an abnormal order without problems".into());
    };
    let code = first.code.as_str();
    let message = match problems.len() {
        1 => format!("{}; nothing was stored", first.message),
        n => format!("the order has {n} problems; nothing was stored"),
    };
    let status = match first.code {
        OrderProblemCode::NotYourCustomer => StatusCode::FORBIDDEN,
        OrderProblemCode::MissingField | OrderProblemCode::UnknownField | OrderProblemCode::InvalidField => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let problems = problems
        .into_iter()
        .map(|p| Problem {
            path: p.field.as_str().to_owned(),
            code: Some(p.code.as_str().to_owned()),
            message: p.message,
        })
        .collect();
    ApiError::Rejected { status, code, message, problems }
}

impl ApiError {
    /// Status, stable code, message and problems, in one place.
    fn parts(&self) -> (StatusCode, &'static str, String, &[Problem]) {
        const NONE: &[Problem] = &[];
        let opaque = || "an internal error occurred; it has been logged".to_owned();
        match self {
            ApiError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message.clone(), NONE),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", self.to_string(), NONE)
            }
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", self.to_string(), NONE)
            }
            ApiError::Unprocessable { code, message, problems } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, message.clone(), problems)
            }
            ApiError::Rejected { status, code, message, problems } => (*status, code, message.clone(), problems),
            ApiError::Conflict { code, message } => (StatusCode::CONFLICT, code, message.clone(), NONE),
            ApiError::Auth(err) => {
                let code = match err {
                    AuthError::InvalidCredentials => "invalid_credentials",
                    AuthError::RateLimited { .. } => "rate_limited",
                    AuthError::InvalidRefreshToken => "invalid_refresh_token",
                    AuthError::RefreshTokenReused => "refresh_token_reused",
                    AuthError::MissingToken => "missing_token",
                    AuthError::Token(crate::auth::tokens::TokenError::Expired) => "token_expired",
                    AuthError::Token(crate::auth::tokens::TokenError::Invalid) => "invalid_token",
                    AuthError::SessionRevoked => "session_revoked",
                    AuthError::Store(_) | AuthError::Internal(_) => {
                        return (StatusCode::INTERNAL_SERVER_ERROR, "internal", opaque(), NONE)
                    }
                };
                let status = match err {
                    AuthError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::UNAUTHORIZED,
                };
                (status, code, err.to_string(), NONE)
            }
            ApiError::Forbidden(err) => (StatusCode::FORBIDDEN, "forbidden", err.to_string(), NONE),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message.clone(), NONE),
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", opaque(), NONE)
            }
        }
    }
}

/// Builds the SPEC's error body.
pub fn error_body(code: &str, message: String, problems: Vec<Problem>) -> ErrorBody {
    ErrorBody { error: ErrorDetail { code: code.to_owned(), message, problems } }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let (status, code, message, problems) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, cause = ?std::error::Error::source(self), "request failed");
        }
        let mut response = HttpResponse::build(status);
        if let ApiError::Auth(AuthError::RateLimited { retry_after_secs }) = self {
            response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(error_body(code, message, problems.to_vec()))
    }
}

/// For `JsonConfig::error_handler`: bodies that cannot be read.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    match err {
        JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(err) => ApiError::BadRequest {
            code: "invalid_json",
            message: format!("the body is not valid for this endpoint: {err}"),
        },
        other => ApiError::BadRequest { code: "invalid_body", message: format!("the body could not be read: {other}") },
    }
    .into()
}

/// For `PathConfig::error_handler`: a malformed id in the URL.
pub fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::BadRequest { code: "invalid_path", message: format!("the URL names an invalid id: {err}") }.into()
}

/// For `QueryConfig::error_handler`.
pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::BadRequest { code: "invalid_query", message: format!("the query string is invalid: {err}") }.into()
}

/// Last line of defence, as an `ErrorHandlers` default: any error response that
/// is neither JSON nor one of our HTML pages (an unknown route, a wrong method, a
/// framework error) gets the SPEC's JSON error body, never an empty body.
pub fn ensure_json_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json_or_page = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json") || value.starts_with("text/html"));
    if is_json_or_page {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this endpoint does not take that method".to_owned()),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large".to_owned()),
        s if s.is_server_error() => ("internal", "an internal error occurred; it has been logged".to_owned()),
        s => ("http_error", s.canonical_reason().unwrap_or("request refused").to_lowercase()),
    };
    let (req, _) = res.into_parts();
    let response = HttpResponse::build(status).json(error_body(code, message, Vec::new()));
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, response).map_into_boxed_body().map_into_right_body()))
}
