//! The one table of API error codes: every `code` that an error body
//! `{"error": {"code": ..., "message": ...}}` can carry, declared once with its
//! HTTP status and where it applies. The server converts every error into one
//! of these and takes the status from here; the agent matches on them; the test
//! `server/tests/error_codes.rs` keeps `docs/error-codes.md` in step.
//!
//! Compatibility: a newer server may send a code that this table does not know.
//! That is why [`crate::api::ErrorDetail::code`] stays a `String` on the wire and
//! readers turn it into an `ErrorCode` with [`ErrorCode::parse`], getting `None`
//! for a code they do not know: an unknown code must never make an error body
//! unreadable, and keeping it as a string also keeps it for the message shown to
//! people. `ErrorCode` itself (de)serialises as its string and refuses an unknown
//! one, so that where it is used as a typed field a typo is caught.
//!
//! The status is a plain `u16` so that this crate needs no HTTP library.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Declares the table: each entry is a one-line doc (where the code applies,
/// also shown in `docs/error-codes.md`), the variant, its wire string and its
/// HTTP status. Exactly one doc line per entry, so that the wording stays short.
macro_rules! error_codes {
    ($( #[doc = $applies:literal] $variant:ident = ($code:literal, $status:literal), )+) => {
        /// A stable, machine-readable API error code. See the module documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( #[doc = $applies] $variant, )+
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$variant, )+];

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $code, )+
                }
            }

            /// The HTTP status that an error with this code is answered with.
            pub const fn status(self) -> u16 {
                match self {
                    $( ErrorCode::$variant => $status, )+
                }
            }

            /// Where the code applies, in one line.
            pub fn applies_to(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $applies.trim(), )+
                }
            }

            /// The code named by a wire string; `None` for a code this build does
            /// not know (one from a newer server).
            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code {
                    $( $code => Some(ErrorCode::$variant), )+
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// The body is not valid JSON for the endpoint: malformed, a wrong type, an unknown field.
    InvalidJson = ("invalid_json", 400),
    /// The body could not be read at all (cut short, bad encoding).
    InvalidBody = ("invalid_body", 400),
    /// The URL names a malformed id.
    InvalidPath = ("invalid_path", 400),
    /// A query parameter is malformed or out of range (`limit`, `after`, `since`).
    InvalidQuery = ("invalid_query", 400),
    /// A confirmation push names another device than the session's.
    DeviceMismatch = ("device_mismatch", 400),
    /// A confirmation push holds more confirmations than one batch may.
    BatchTooLarge = ("batch_too_large", 400),
    /// The body is not sent as `Content-Type: application/json`.
    UnsupportedMediaType = ("unsupported_media_type", 415),
    /// The body is larger than the endpoint's limit.
    PayloadTooLarge = ("payload_too_large", 413),
    /// A network file breaks rules; every problem is listed in `problems`.
    InvalidNetwork = ("invalid_network", 422),
    /// Order data: a customer account orders for another customer.
    NotYourCustomer = ("not_your_customer", 403),
    /// Order data: `customer_id`, `item_id` or `quantity` is absent or blank.
    MissingField = ("missing_field", 400),
    /// Order data: the body has a field an order does not have.
    UnknownField = ("unknown_field", 400),
    /// Order data: an id is not a string, or the body is not a JSON object.
    InvalidField = ("invalid_field", 400),
    /// Order data: no such customer.
    UnknownCustomer = ("unknown_customer", 422),
    /// Order data or a goods receipt: no such item.
    UnknownItem = ("unknown_item", 422),
    /// Order data: the item can no longer be ordered.
    DiscontinuedItem = ("discontinued_item", 422),
    /// Order data or a goods receipt: the quantity is not a whole number of at least 1.
    InvalidQuantity = ("invalid_quantity", 422),
    /// Order data: more than the item's `max_per_order`.
    QuantityAboveLimit = ("quantity_above_limit", 422),
    /// Order confirm or cancel: the draft was cancelled.
    OrderCancelled = ("order_cancelled", 409),
    /// Order confirm: the draft expired before it was confirmed.
    DraftExpired = ("draft_expired", 409),
    /// Order cancel: the draft was already confirmed into a receipt.
    OrderConfirmed = ("order_confirmed", 409),
    /// Delivery assignment: the courier may not deliver it (wrong branch or seller, or not a courier).
    WrongCourier = ("wrong_courier", 422),
    /// Delivery assignment: there is no such account.
    UnknownAssignee = ("unknown_assignee", 422),
    /// Delivery assignment or leg issue: the delivery is already delivered or cancelled.
    DeliveryClosed = ("delivery_closed", 409),
    /// Delivery reverse: the delivery is not delivered, so there is nothing to reverse.
    NotDelivered = ("not_delivered", 409),
    /// Receipt cancel: the receipt is already delivered, or a reversal names a cancelled receipt.
    ReceiptClosed = ("receipt_closed", 409),
    /// Receipt cancel by its customer: goods were issued or a delivery attempted; the dispatcher can still cancel it.
    CancelTooLate = ("cancel_too_late", 409),
    /// Delivery reverse: the follow-up delivery of its short hand-over moved on since; correct that one first.
    FollowUpMoved = ("follow_up_moved", 409),
    /// Delivery or receipt cancel, delivery reverse: the reason is missing, too long, or holds control characters.
    InvalidReason = ("invalid_reason", 422),
    /// Leg issue: the last leg completes when the delivery is confirmed, not by an issue.
    LastLeg = ("last_leg", 409),
    /// Leg issue: an earlier leg of the delivery is not issued yet.
    PreviousLegNotIssued = ("previous_leg_not_issued", 409),
    /// Login: wrong username or password.
    InvalidCredentials = ("invalid_credentials", 401),
    /// Login: too many attempts for the username or address; the answer carries `Retry-After`.
    RateLimited = ("rate_limited", 429),
    /// Login: the device id is registered to another account (an admin can release it).
    DeviceInUse = ("device_in_use", 409),
    /// Login: the device registered another public key, and a device's key never changes: log in under a new device id.
    DeviceKeyMismatch = ("device_key_mismatch", 409),
    /// Login: `device_key` is not an Ed25519 public key in base64.
    InvalidDeviceKey = ("invalid_device_key", 422),
    /// Photo upload: the chunk does not start where the upload stands (`received`); ask and resume from there.
    UploadOffset = ("upload_offset", 409),
    /// Photo upload: `Content-Range` is missing or malformed, or disagrees with the body or an earlier chunk.
    InvalidContentRange = ("invalid_content_range", 400),
    /// Photo upload: the bytes received do not hash to the digest in the URL; the upload starts again from 0.
    PhotoDigestMismatch = ("photo_digest_mismatch", 422),
    /// Photo upload: not a JPEG, PNG or WebP image, or larger than the limit.
    InvalidPhoto = ("invalid_photo", 422),
    /// Refresh or logout: the refresh token is unknown, expired or revoked.
    InvalidRefreshToken = ("invalid_refresh_token", 401),
    /// Refresh: the refresh token was already used; the session is revoked.
    RefreshTokenReused = ("refresh_token_reused", 401),
    /// Any authenticated endpoint: no bearer token.
    MissingToken = ("missing_token", 401),
    /// Any authenticated endpoint: the access token expired; refresh it and try again.
    TokenExpired = ("token_expired", 401),
    /// Any authenticated endpoint: the access token is malformed or not ours.
    InvalidToken = ("invalid_token", 401),
    /// Any authenticated endpoint: the session or its device has been revoked.
    SessionRevoked = ("session_revoked", 401),
    /// Any endpoint: the caller's role does not allow this (an object it may not see is `not_found`).
    Forbidden = ("forbidden", 403),
    /// Any endpoint: the object does not exist or the caller may not see it, or the endpoint does not exist.
    NotFound = ("not_found", 404),
    /// Any endpoint: it does not take that method.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// Any other refusal by the HTTP framework; the answer keeps the framework's 4xx status.
    HttpError = ("http_error", 400),
    /// Any endpoint: an unexpected failure; details only in the server log.
    Internal = ("internal", 500),
    /// Any endpoint: the server cannot reach its database (down, restarting, out of connections). Nothing was changed; retry after `Retry-After` seconds.
    StoreUnavailable = ("store_unavailable", 503),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ErrorCode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an API error code")
            }

            fn visit_str<E: de::Error>(self, code: &str) -> Result<ErrorCode, E> {
                ErrorCode::parse(code).ok_or_else(|| E::custom(format_args!("unknown error code {code:?}")))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::api::ErrorBody;

    #[test]
    fn every_code_string_is_unique_and_snake_case() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} is declared twice");
            let snake = !text.is_empty()
                && text.starts_with(|c: char| c.is_ascii_lowercase())
                && !text.ends_with('_')
                && !text.contains("__")
                && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            assert!(snake, "{text} is not snake_case");
        }
    }

    #[test]
    fn every_status_is_an_error_status_and_every_code_says_where_it_applies() {
        for code in ErrorCode::ALL {
            assert!((400..=599).contains(&code.status()), "{code}: {}", code.status());
            assert!(!code.applies_to().is_empty(), "{code} does not say where it applies");
        }
    }

    #[test]
    fn every_code_parses_back_from_its_string_and_through_serde() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let wire = serde_json::to_string(&code).expect("encodes");
            assert_eq!(wire, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&wire).expect("decodes"), code);
        }
    }

    #[test]
    fn an_unknown_code_is_none_and_its_error_body_still_reads() {
        assert_eq!(ErrorCode::parse("code_from_a_newer_server"), None);
        assert!(serde_json::from_str::<ErrorCode>("\"code_from_a_newer_server\"").is_err());

        let body: ErrorBody =
            serde_json::from_str(r#"{"error": {"code": "code_from_a_newer_server", "message": "new"}}"#)
                .expect("an unknown code still reads");

        assert_eq!((body.error.code.as_str(), body.error.known_code()), ("code_from_a_newer_server", None));
    }

    #[test]
    fn a_known_code_in_an_error_body_reads_as_its_variant() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error": {"code": "token_expired", "message": "expired"}}"#).expect("reads");

        assert_eq!(body.error.known_code(), Some(ErrorCode::TokenExpired));
    }
}
