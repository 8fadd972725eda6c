//! Access tokens (JWT, HS256 pinned) and refresh tokens (random, stored hashed).
//!
//! HS256 because only this server verifies its tokens: it is fast (about 25 times
//! an EdDSA check) and sound with a random 256-bit key. Verification pins the
//! algorithm and requires `exp`, `iss`, `aud` and `sub`; jsonwebtoken 10.3+ also
//! refuses an `exp` sent as a string (CVE-2026-25537).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use handover_shared::{CustomerId, DeviceId, NodeId, Role, Username};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::access::Principal;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Username,
    pub role: Role,
    /// The session, so that revoking it kills its access tokens at once.
    pub sid: Uuid,
    pub dev: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cust: Option<CustomerId>,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

impl From<Claims> for Principal {
    fn from(claims: Claims) -> Self {
        Principal {
            username: claims.sub,
            role: claims.role,
            device_id: claims.dev,
            session_id: claims.sid,
            node_id: claims.node,
            customer_id: claims.cust,
        }
    }
}

/// Why an access token was refused. Deliberately coarse: the client learns that
/// the token is unusable, not which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is invalid")]
    Invalid,
}

/// Signs and checks access tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    pub access_ttl_secs: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The shortest HS256 key accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

impl TokenKeys {
    pub fn new(secret: &[u8], issuer: &str, audience: &str, access_ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Clocks on one server agree with themselves; a few seconds covers rounding.
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            access_ttl_secs,
        }
    }

    /// Issues an access token for a principal, valid from `now`.
    pub fn issue(&self, principal: &Principal, now: OffsetDateTime) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now.unix_timestamp();
        let claims = Claims {
            sub: principal.username.clone(),
            role: principal.role,
            sid: principal.session_id,
            dev: principal.device_id.clone(),
            node: principal.node_id.clone(),
            cust: principal.customer_id.clone(),
            iat,
            exp: iat.saturating_add(i64::try_from(self.access_ttl_secs).unwrap_or(i64::MAX)),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks signature, algorithm, expiry, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|data| data.claims).map_err(|err| {
            match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            }
        })
    }
}

/// A new refresh token: 256 random bits, base64url. Only its hash is stored.
pub fn new_refresh_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

/// SHA-256 is enough here: the token is random and long, not a guessable password.
pub fn hash_refresh_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7u8; 32], "handover", "handover-api", 900)
    }

    fn principal() -> Principal {
        Principal {
            username: Username::parse("exp1").expect("id"),
            role: Role::Expediter,
            device_id: DeviceId::parse("hh-1").expect("id"),
            session_id: Uuid::now_v7(),
            node_id: Some(NodeId::parse("B1").expect("id")),
            customer_id: None,
        }
    }

    #[test]
    fn an_issued_token_verifies_into_its_principal() {
        let principal = principal();
        let token = keys().issue(&principal, OffsetDateTime::now_utc()).expect("issue");
        let claims = keys().verify(&token).expect("valid");
        assert_eq!(Principal::from(claims), principal);
    }

    #[test]
    fn expired_foreign_and_tampered_tokens_are_refused() {
        let old = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let expired = keys().issue(&principal(), old).expect("issue");
        assert_eq!(keys().verify(&expired), Err(TokenError::Expired));

        let foreign = TokenKeys::new(&[8u8; 32], "handover", "handover-api", 900)
            .issue(&principal(), OffsetDateTime::now_utc())
            .expect("issue");
        assert_eq!(keys().verify(&foreign), Err(TokenError::Invalid));

        let other_audience = TokenKeys::new(&[7u8; 32], "handover", "elsewhere", 900)
            .issue(&principal(), OffsetDateTime::now_utc())
            .expect("issue");
        assert_eq!(keys().verify(&other_audience), Err(TokenError::Invalid));

        let good = keys().issue(&principal(), OffsetDateTime::now_utc()).expect("issue");
        let mut tampered = good.clone();
        tampered.push('x');
        assert_eq!(keys().verify(&tampered), Err(TokenError::Invalid));
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, hash_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(hash_refresh_token(&a), hash_a);
        assert_eq!(a.len(), 43);
    }
}
