//! The one API error. Every layer's error converts into [`ApiError`], and one
//! `match` ([`ApiError::code`]) gives each its [`ErrorCode`]; the status is the
//! code's, from the one table in `handover_shared::error_code`. Unexpected
//! failures are logged with their cause chain and reach the client as an opaque
//! 500.

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::ServiceResponse,
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{header, StatusCode},
    middleware::ErrorHandlerResponse,
    HttpRequest, HttpResponse, ResponseError,
};
use handover_shared::{
    api::{ErrorBody, ErrorDetail, Problem},
    ErrorCode,
};

use crate::{
    auth::{tokens::TokenError, AuthError},
    domain::{
        access::{Forbidden, Hidden},
        corrections::CorrectionRefusal,
        orders::{DraftRefusal, OrderProblem},
        shipments::{AssignRefusal, LegRefusal},
    },
    import::ImportFailure,
    orders::OrderFailure,
    shipments::ShipmentFailure,
    store::StoreError,
};

/// What a client is told of an unexpected failure; the details are in the log.
const OPAQUE: &str = "an internal error occurred; it has been logged";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused by the HTTP layer itself (an unreadable body or query, a wrong
    /// device), with the code it chose.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("send the body as JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Order(#[from] OrderFailure),
    #[error(transparent)]
    Shipment(#[from] ShipmentFailure),
    #[error(transparent)]
    Import(#[from] ImportFailure),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this handheld pushed too often; try again in {retry_after_secs} s")]
    TooManyPushes { retry_after_secs: u64 },
    #[error("{0}")]
    Internal(String),
}

impl From<crate::proof::ProofFailure> for ApiError {
    fn from(failure: crate::proof::ProofFailure) -> Self {
        use crate::{domain::photos::PhotoRefusal, proof::ProofFailure};
        let message = failure.to_string();
        let code = match failure {
            ProofFailure::NotFound(message) => return ApiError::NotFound(message),
            ProofFailure::Store(err) => return ApiError::Store(err),
            ProofFailure::Misplaced { .. } => ErrorCode::UploadOffset,
            ProofFailure::Refused(PhotoRefusal::InvalidRange(_)) => ErrorCode::InvalidContentRange,
            ProofFailure::Refused(PhotoRefusal::DigestMismatch { .. }) => ErrorCode::PhotoDigestMismatch,
            ProofFailure::Refused(PhotoRefusal::InvalidPhoto(_)) => ErrorCode::InvalidPhoto,
        };
        ApiError::refused(code, message)
    }
}

impl From<Hidden> for ApiError {
    fn from(hidden: Hidden) -> Self {
        ApiError::NotFound(hidden.to_string())
    }
}

impl ApiError {
    /// A refusal of the HTTP layer with its code.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::Refused { code, message: message.into() }
    }

    /// The stable code of every error, in one place. The status is the code's.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Refused { code, .. } => *code,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::Auth(err) => match err {
                AuthError::InvalidCredentials => ErrorCode::InvalidCredentials,
                AuthError::RateLimited { .. } => ErrorCode::RateLimited,
                AuthError::InvalidRefreshToken => ErrorCode::InvalidRefreshToken,
                AuthError::RefreshTokenReused => ErrorCode::RefreshTokenReused,
                AuthError::MissingToken => ErrorCode::MissingToken,
                AuthError::Token(TokenError::Expired) => ErrorCode::TokenExpired,
                AuthError::Token(TokenError::Invalid) => ErrorCode::InvalidToken,
                AuthError::SessionRevoked => ErrorCode::SessionRevoked,
                AuthError::DeviceInUse(_) => ErrorCode::DeviceInUse,
                AuthError::DeviceKeyMismatch(_) => ErrorCode::DeviceKeyMismatch,
                AuthError::InvalidDeviceKey(_) => ErrorCode::InvalidDeviceKey,
                AuthError::Store(err) => store_code(err),
                AuthError::Internal(_) => ErrorCode::Internal,
            },
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Order(failure) => match failure {
                // Problems arrive most severe first; the first decides.
                OrderFailure::Abnormal(problems) => {
                    problems.first().map_or(ErrorCode::Internal, |first| first.code.error_code())
                }
                OrderFailure::NotFound(_) => ErrorCode::NotFound,
                OrderFailure::Refused(DraftRefusal::Cancelled) => ErrorCode::OrderCancelled,
                OrderFailure::Refused(DraftRefusal::Expired) => ErrorCode::DraftExpired,
                OrderFailure::Refused(DraftRefusal::AlreadyConfirmed) => ErrorCode::OrderConfirmed,
                OrderFailure::Forbidden(_) => ErrorCode::Forbidden,
                OrderFailure::Store(err) => store_code(err),
            },
            ApiError::Shipment(failure) => match failure {
                ShipmentFailure::NotFound(_) => ErrorCode::NotFound,
                ShipmentFailure::Invalid { code, .. } => *code,
                ShipmentFailure::Forbidden(_) | ShipmentFailure::Assign(AssignRefusal::NotAllowed(_)) => {
                    ErrorCode::Forbidden
                }
                ShipmentFailure::Assign(AssignRefusal::WrongCourier { .. }) => ErrorCode::WrongCourier,
                ShipmentFailure::Assign(AssignRefusal::Closed(..)) | ShipmentFailure::Leg(LegRefusal::Closed(..)) => {
                    ErrorCode::DeliveryClosed
                }
                ShipmentFailure::Leg(LegRefusal::LastLeg(_)) => ErrorCode::LastLeg,
                ShipmentFailure::Leg(LegRefusal::PreviousNotIssued(_)) => ErrorCode::PreviousLegNotIssued,
                ShipmentFailure::Correction(refusal) => match refusal {
                    CorrectionRefusal::NotAllowed(_) => ErrorCode::Forbidden,
                    CorrectionRefusal::InvalidReason(_) => ErrorCode::InvalidReason,
                    CorrectionRefusal::DeliveryClosed(..) => ErrorCode::DeliveryClosed,
                    CorrectionRefusal::ReceiptClosed(..) => ErrorCode::ReceiptClosed,
                    CorrectionRefusal::NotDelivered(..) => ErrorCode::NotDelivered,
                    CorrectionRefusal::TooLate(_) => ErrorCode::CancelTooLate,
                    CorrectionRefusal::FollowUpMoved(..) => ErrorCode::FollowUpMoved,
                },
                ShipmentFailure::Store(err) => store_code(err),
            },
            ApiError::Import(failure) => match failure {
                ImportFailure::Invalid(_) => ErrorCode::InvalidNetwork,
                ImportFailure::Store(err) => store_code(err),
                ImportFailure::Internal(_) => ErrorCode::Internal,
            },
            ApiError::Store(err) => store_code(err),
            ApiError::TooManyPushes { .. } => ErrorCode::RateLimited,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message and the problems of the body; opaque for an internal error.
    fn message_and_problems(&self, code: ErrorCode) -> (String, Vec<Problem>) {
        match self {
            _ if code == ErrorCode::Internal => (OPAQUE.to_owned(), Vec::new()),
            _ if code == ErrorCode::StoreUnavailable => {
                ("the server cannot reach its database; nothing was changed, try again shortly".to_owned(), Vec::new())
            }
            ApiError::Order(OrderFailure::Abnormal(problems)) => abnormal_order(problems),
            ApiError::Import(ImportFailure::Invalid(problems)) => {
                (format!("the network file has {} problem(s); nothing was imported", problems.len()), problems.clone())
            }
            other => (other.to_string(), Vec::new()),
        }
    }
}

/// A store out of reach is the database's outage, said as such (503, try
/// again shortly); any other store failure is internal.
fn store_code(err: &StoreError) -> ErrorCode {
    match err {
        StoreError::Unavailable(_) => ErrorCode::StoreUnavailable,
        _ => ErrorCode::Internal,
    }
}

/// Seconds a client waits before trying again after a `store_unavailable`.
const STORE_RETRY_AFTER_SECS: u32 = 2;

/// The HTTP status of a code, from its table entry.
pub fn status_of(code: ErrorCode) -> StatusCode {
    // The table's statuses are all valid (a unit test checks); the fallback
    // only keeps this total.
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Abnormal order data: every problem is listed with its field and its own
/// code; the message names the one problem or counts them.
fn abnormal_order(problems: &[OrderProblem]) -> (String, Vec<Problem>) {
    let message = match problems {
        [only] => format!("{}; nothing was stored", only.message),
        many => format!("the order has {} problems; nothing was stored", many.len()),
    };
    let problems = problems
        .iter()
        .map(|p| Problem {
            path: p.field.as_str().to_owned(),
            code: Some(p.code.as_str().to_owned()),
            message: p.message.clone(),
        })
        .collect();
    (message, problems)
}

/// Builds the SPEC's error body.
pub fn error_body(code: ErrorCode, message: String, problems: Vec<Problem>) -> ErrorBody {
    ErrorBody { error: ErrorDetail { code: code.as_str().to_owned(), message, problems } }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status_of(self.code())
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let code = self.code();
        let status = status_of(code);
        if status.is_server_error() {
            tracing::error!(error = %self, cause = ?std::error::Error::source(self), "request failed");
        }
        let mut response = HttpResponse::build(status);
        if let ApiError::Auth(AuthError::RateLimited { retry_after_secs })
        | ApiError::TooManyPushes { retry_after_secs } = self
        {
            response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if code == ErrorCode::StoreUnavailable {
            response.insert_header((header::RETRY_AFTER, STORE_RETRY_AFTER_SECS.to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        let (message, problems) = self.message_and_problems(code);
        response.json(error_body(code, message, problems))
    }
}

/// For `JsonConfig::error_handler`: bodies that cannot be read.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    match err {
        JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(err) => {
            ApiError::refused(ErrorCode::InvalidJson, format!("the body is not valid for this endpoint: {err}"))
        }
        other => ApiError::refused(ErrorCode::InvalidBody, format!("the body could not be read: {other}")),
    }
    .into()
}

/// For `PathConfig::error_handler`: a malformed id in the URL.
pub fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::refused(ErrorCode::InvalidPath, format!("the URL names an invalid id: {err}")).into()
}

/// For `QueryConfig::error_handler`.
pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::refused(ErrorCode::InvalidQuery, format!("the query string is invalid: {err}")).into()
}

/// Last line of defence, as an `ErrorHandlers` default: any error response that
/// is neither JSON nor one of our HTML pages (an unknown route, a wrong method, a
/// framework error) gets the SPEC's JSON error body, never an empty body. The
/// framework chose the status already and it is kept: for the codes named here
/// it is the code's own; `internal` and `http_error` stand for any 5xx and any
/// other 4xx.
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
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such endpoint".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => {
            (ErrorCode::MethodNotAllowed, "this endpoint does not take that method".to_owned())
        }
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "the request body is too large".to_owned()),
        s if s.is_server_error() => (ErrorCode::Internal, OPAQUE.to_owned()),
        s => (ErrorCode::HttpError, s.canonical_reason().unwrap_or("request refused").to_lowercase()),
    };
    let (req, _) = res.into_parts();
    let response = HttpResponse::build(status).json(error_body(code, message, Vec::new()));
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, response).map_into_boxed_body().map_into_right_body()))
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;
    use serde_json::{json, Value};

    use super::*;
    use crate::domain::orders::{OrderField, OrderProblemCode};

    async fn answer(err: ApiError) -> (StatusCode, Option<String>, Value) {
        let response = err.error_response();
        let status = response.status();
        let challenge = response.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(Into::into);
        let bytes = to_bytes(response.into_body()).await.expect("the body is in memory");
        (status, challenge, serde_json::from_slice(&bytes).expect("the body is JSON"))
    }

    fn problem(field: OrderField, code: OrderProblemCode, message: &str) -> OrderProblem {
        OrderProblem { field, code, message: message.into() }
    }

    #[test]
    fn every_status_in_the_table_is_one_actix_knows() {
        for &code in ErrorCode::ALL {
            assert!(StatusCode::from_u16(code.status()).is_ok(), "{code}: {}", code.status());
        }
    }

    #[actix_web::test]
    async fn abnormal_order_data_answers_with_the_status_of_its_most_severe_problem() {
        let problems = vec![
            problem(OrderField::CustomerId, OrderProblemCode::NotYourCustomer, "not yours"),
            problem(OrderField::Quantity, OrderProblemCode::InvalidQuantity, "too small"),
        ];

        let got = answer(OrderFailure::Abnormal(problems).into()).await;

        let body = json!({"error": {"code": "not_your_customer", "message": "the order has 2 problems; nothing was stored",
        "problems": [
            {"path": "customer_id", "code": "not_your_customer", "message": "not yours"},
            {"path": "quantity", "code": "invalid_quantity", "message": "too small"}
        ]}});
        assert_eq!(got, (StatusCode::FORBIDDEN, None, body));
    }

    #[actix_web::test]
    async fn a_shipment_refusal_answers_with_its_code_and_the_codes_status() {
        let failure =
            ShipmentFailure::Invalid { code: ErrorCode::UnknownAssignee, message: "there is no account x".into() };

        let got = answer(failure.into()).await;

        let body = json!({"error": {"code": "unknown_assignee", "message": "there is no account x"}});
        assert_eq!(got, (StatusCode::UNPROCESSABLE_ENTITY, None, body));
    }

    #[actix_web::test]
    async fn an_expired_token_answers_401_with_a_bearer_challenge() {
        let got = answer(AuthError::Token(TokenError::Expired).into()).await;

        let body = json!({"error": {"code": "token_expired", "message": "the access token has expired"}});
        assert_eq!(got, (StatusCode::UNAUTHORIZED, Some("Bearer".to_owned()), body));
    }

    #[actix_web::test]
    async fn a_store_failure_inside_a_layer_error_is_an_opaque_500() {
        let failure = OrderFailure::Store(StoreError::Backend("disk on fire".into()));

        let got = answer(failure.into()).await;

        let body = json!({"error": {"code": "internal", "message": OPAQUE}});
        assert_eq!(got, (StatusCode::INTERNAL_SERVER_ERROR, None, body));
    }

    #[actix_web::test]
    async fn a_database_out_of_reach_is_a_503_that_says_to_retry() {
        let failure = ShipmentFailure::Store(StoreError::Unavailable("connection refused to 10.0.0.7".into()));

        let response = ApiError::from(failure).error_response();

        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after = response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(String::from);
        assert_eq!(retry_after.as_deref(), Some("2"));
        let bytes = to_bytes(response.into_body()).await.expect("the body is in memory");
        let body: Value = serde_json::from_slice(&bytes).expect("the body is JSON");
        assert_eq!(body["error"]["code"], "store_unavailable");
        assert!(!body.to_string().contains("10.0.0.7"), "the database's address stays in the log: {body}");
    }
}
