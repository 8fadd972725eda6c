//! Accounts and tokens: login, refresh, logout, device revocation and the check
//! of an access token. [`AuthService`] holds the rules; the HTTP layer only
//! extracts the input and maps the errors.

pub mod passwords;
pub mod throttle;
pub mod tokens;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use handover_shared::{
    api::{LoginRequest, LoginResponse},
    DeviceId, Role, Username,
};
use rand::RngCore;
use secrecy::ExposeSecret;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::{
    config::AuthSettings,
    domain::{
        access::Principal,
        network::MAX_PASSWORD_LEN,
        sessions::{RefreshRefusal, RefreshToken, Session},
    },
    store::{Account, RefreshOutcome, Store, StoreError},
};
use tokens::{hash_refresh_token, new_refresh_token, TokenError, TokenKeys};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("too many login attempts; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the refresh token is unknown, expired or revoked; log in again")]
    InvalidRefreshToken,
    #[error("this refresh token was already used; the session is revoked, log in again")]
    RefreshTokenReused,
    #[error("no bearer token; log in first")]
    MissingToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("this session has been revoked; log in again")]
    SessionRevoked,
    #[error(transparent)]
    DeviceInUse(#[from] crate::domain::sessions::DeviceInUse),
    #[error("device {} registered another key, and a device's key never changes: log in from a new device id", .0.device_id)]
    DeviceKeyMismatch(crate::domain::chain::KeyMismatch),
    #[error("device_key: {0}")]
    InvalidDeviceKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub struct AuthService {
    store: Arc<dyn Store>,
    keys: TokenKeys,
    refresh_ttl: Duration,
    throttle: throttle::LoginThrottle,
    revocations: Revocations,
}

/// How long a session the store said was live is taken as live without asking
/// again: a revocation made through another server instance on the same store
/// cuts its tokens off within this time (one made here, at once).
pub const REVOCATION_STALENESS: std::time::Duration = std::time::Duration::from_secs(1);

/// Sessions remembered at most; past that the cache starts over.
const REVOCATION_CACHE_SESSIONS: usize = 100_000;

/// What the store last said of each session that showed a token: checked on
/// every request, read from the store at most once per session per
/// [`REVOCATION_STALENESS`]. A revocation never ends, so it is kept.
#[derive(Debug)]
struct Revocations {
    checked: Mutex<HashMap<Uuid, Checked>>,
    staleness: std::time::Duration,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations { checked: Mutex::default(), staleness: REVOCATION_STALENESS }
    }
}

#[derive(Debug, Clone, Copy)]
enum Checked {
    Revoked,
    LiveAt(std::time::Instant),
}

impl Revocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Checked>> {
        self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is known without the store: `None` when it must be read.
    fn known(&self, session: &Uuid) -> Option<bool> {
        match self.lock().get(session) {
            Some(Checked::Revoked) => Some(true),
            Some(Checked::LiveAt(at)) if at.elapsed() < self.staleness => Some(false),
            _ => None,
        }
    }

    fn remember(&self, session: Uuid, revoked: bool) {
        let mut checked = self.lock();
        if checked.len() >= REVOCATION_CACHE_SESSIONS && !checked.contains_key(&session) {
            checked.clear();
        }
        let state = if revoked { Checked::Revoked } else { Checked::LiveAt(std::time::Instant::now()) };
        checked.insert(session, state);
    }
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl AuthService {
    pub async fn new(store: Arc<dyn Store>, settings: &AuthSettings, secret: &[u8]) -> Result<Self, StoreError> {
        Ok(Self {
            store,
            keys: TokenKeys::new(secret, &settings.issuer, &settings.audience, settings.access_ttl_secs),
            refresh_ttl: Duration::seconds(i64::try_from(settings.refresh_ttl_secs).unwrap_or(i64::MAX)),
            throttle: throttle::LoginThrottle::new(settings),
            revocations: Revocations::default(),
        })
    }

    /// Forgets rate-limit entries that have recovered, so memory stays bounded.
    pub fn prune_rate_limits(&self) {
        self.throttle.prune();
    }

    /// Checks the password and opens a session on the device.
    pub async fn login(&self, request: LoginRequest, address: Option<IpAddr>) -> Result<LoginResponse, AuthError> {
        Ok(self.login_principal(request, address).await?.0)
    }

    /// Like `login`, also returning the principal (the pages keep it in their
    /// session cookie instead of a bearer token).
    pub async fn login_principal(
        &self,
        request: LoginRequest,
        address: Option<IpAddr>,
    ) -> Result<(LoginResponse, Principal), AuthError> {
        let wait = self.throttle.before(&request.username, address, std::time::Instant::now())?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let account = match Username::parse(request.username.as_str()) {
            Ok(username) if request.password.len() <= MAX_PASSWORD_LEN => self.store.account(&username).await?,
            _ => None,
        };
        let password = request.password;
        let verified = tokio::task::spawn_blocking(move || match account {
            Some(account) if passwords::verify(&password, &account.password_hash) => Some(account),
            Some(_) => None,
            None => {
                passwords::verify_against_dummy(&password);
                None
            }
        })
        .await
        .map_err(|err| AuthError::Internal(format!("password check failed: {err}")))?;
        let Some(account) = verified else {
            self.throttle.failed(&request.username, std::time::Instant::now());
            return Err(AuthError::InvalidCredentials);
        };
        self.throttle.succeeded(&request.username, address);

        let now = OffsetDateTime::now_utc();
        let device_id = match request.device_id {
            Some(device_id) => device_id,
            None => DeviceId::parse(format!("dev-{}", Uuid::new_v4().simple()))
                .map_err(|err| AuthError::Internal(err.to_string()))?,
        };
        let session = Session {
            id: Uuid::now_v7(),
            username: account.username.clone(),
            device_id,
            created_at: now,
            revoked_at: None,
            revoke_reason: None,
        };
        let (refresh_token, refresh_hash) = new_refresh_token();
        let refresh = RefreshToken { session_id: session.id, expires_at: now + self.refresh_ttl, retired_at: None };
        // Only couriers' handhelds are bound to their accounts (see `sessions::open`).
        let handheld = matches!(account.membership.role(), Role::Expediter | Role::Serviceman);
        // A courier's handheld registers its signing key; the key of any
        // other login is not used, and not kept.
        let device_key = request.device_key.filter(|_| handheld);
        if let Some(key) = &device_key {
            handover_shared::proof::public_key(key).map_err(AuthError::InvalidDeviceKey)?;
            let registered = self.store.device_chain(&session.device_id).await?;
            crate::domain::chain::register_key(registered.as_ref(), &session.device_id, key, &account.username, now)
                .map_err(AuthError::DeviceKeyMismatch)?;
        }
        self.store.open_session(session.clone(), refresh_hash, refresh, handheld, now).await??;
        if let Some(key) = &device_key {
            // Checked above; a login racing with another key is refused
            // here, before its tokens are handed out.
            self.store
                .register_device_key(&session.device_id, key, &account.username, now)
                .await?
                .map_err(AuthError::DeviceKeyMismatch)?;
        }
        tracing::info!(username = %account.username, device_id = %session.device_id, session_id = %session.id, "login");
        let principal = principal_of(&account, &session);
        Ok((self.token_pair(&account, &session, refresh_token, now)?, principal))
    }

    fn token_pair(
        &self,
        account: &Account,
        session: &Session,
        refresh_token: String,
        now: OffsetDateTime,
    ) -> Result<LoginResponse, AuthError> {
        let principal = principal_of(account, session);
        let access_token = self
            .keys
            .issue(&principal, now)
            .map_err(|err| AuthError::Internal(format!("cannot sign a token: {err}")))?;
        Ok(LoginResponse {
            access_token,
            refresh_token,
            expires_in: self.keys.access_ttl_secs,
            role: principal.role,
            username: principal.username,
            device_id: principal.device_id,
        })
    }

    /// Trades a refresh token for a new pair, retiring it.
    pub async fn refresh(&self, presented: &str) -> Result<LoginResponse, AuthError> {
        let now = OffsetDateTime::now_utc();
        let (successor, successor_hash) = new_refresh_token();
        let outcome = self
            .store
            .rotate_refresh(hash_refresh_token(presented), successor_hash, now + self.refresh_ttl, now)
            .await?;
        match outcome {
            RefreshOutcome::Rotated(session) => {
                // The account is read again: a re-import may have changed its role.
                let account = self.store.account(&session.username).await?.ok_or(AuthError::InvalidRefreshToken)?;
                self.token_pair(&account, &session, successor, now)
            }
            RefreshOutcome::ReuseDetected(session) => {
                tracing::warn!(username = %session.username, device_id = %session.device_id, session_id = %session.id, "refresh token reused; session revoked");
                self.mark_revoked([session.id]);
                Err(AuthError::RefreshTokenReused)
            }
            RefreshOutcome::Refused(
                RefreshRefusal::Unknown | RefreshRefusal::Expired | RefreshRefusal::SessionRevoked,
            ) => Err(AuthError::InvalidRefreshToken),
        }
    }

    /// Ends the session a refresh token belongs to.
    pub async fn logout(&self, presented: &str) -> Result<(), AuthError> {
        let now = OffsetDateTime::now_utc();
        let session = self
            .store
            .close_session(hash_refresh_token(presented), now)
            .await?
            .ok_or(AuthError::InvalidRefreshToken)?;
        self.mark_revoked([session.id]);
        Ok(())
    }

    /// Cuts a device off: its refresh tokens stop working and its access tokens
    /// are refused from now on.
    pub async fn revoke_device(&self, device: &DeviceId) -> Result<u64, AuthError> {
        let revoked = self.store.revoke_device(device, OffsetDateTime::now_utc()).await?;
        tracing::warn!(device_id = %device, sessions = revoked.len(), "device revoked");
        let count = revoked.len() as u64;
        self.mark_revoked(revoked);
        Ok(count)
    }

    /// Releases a device (handed to another courier): nobody's again, and its
    /// sessions are cut off with it.
    pub async fn release_device(&self, device: &DeviceId) -> Result<u64, AuthError> {
        let revoked = self.store.release_device(device, OffsetDateTime::now_utc()).await?;
        tracing::warn!(device_id = %device, sessions = revoked.len(), "device released");
        let count = revoked.len() as u64;
        self.mark_revoked(revoked);
        Ok(count)
    }

    fn mark_revoked(&self, sessions: impl IntoIterator<Item = Uuid>) {
        for session in sessions {
            self.revocations.remember(session, true);
        }
    }

    /// Whether a session was revoked (logout, device revoked, token reuse), by
    /// this server or another on the same store (see [`REVOCATION_STALENESS`]).
    /// A session the store does not know counts as revoked.
    pub async fn is_revoked(&self, session_id: &Uuid) -> Result<bool, StoreError> {
        if let Some(revoked) = self.revocations.known(session_id) {
            return Ok(revoked);
        }
        let revoked = self.store.session(session_id).await?.is_none_or(|session| session.revoked_at.is_some());
        self.revocations.remember(*session_id, revoked);
        Ok(revoked)
    }

    /// The check behind every authenticated endpoint.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer.ok_or(AuthError::MissingToken)?;
        let claims = self.keys.verify(token)?;
        if self.is_revoked(&claims.sid).await? {
            return Err(AuthError::SessionRevoked);
        }
        Ok(claims.into())
    }
}

fn principal_of(account: &Account, session: &Session) -> Principal {
    Principal {
        username: account.username.clone(),
        role: account.membership.role(),
        device_id: session.device_id.clone(),
        session_id: session.id,
        node_id: account.membership.node_id().cloned(),
        customer_id: account.membership.customer_id().cloned(),
    }
}

/// The HS256 key: from configuration when given, else from `DATA_DIR/jwt-secret`,
/// made on first start (256 random bits, file mode 0600).
pub fn load_or_create_secret(settings: &AuthSettings, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    if let Some(secret) = &settings.auth_secret() {
        anyhow::ensure!(
            secret.len() >= tokens::MIN_SECRET_LEN,
            "auth.jwt_secret must be at least {} bytes",
            tokens::MIN_SECRET_LEN
        );
        return Ok(secret.clone());
    }
    if let Some(key) = &settings.stored_key {
        anyhow::ensure!(key.bytes().len() >= tokens::MIN_SECRET_LEN, "the JWT key kept in the store is too short");
        return Ok(key.bytes().to_vec());
    }
    let path = data_dir.join(crate::files::JWT_SECRET_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let secret =
            URL_SAFE_NO_PAD.decode(text.trim()).with_context(|| format!("{} is not base64url", path.display()))?;
        anyhow::ensure!(secret.len() >= tokens::MIN_SECRET_LEN, "{} holds a key that is too short", path.display());
        return Ok(secret);
    }
    let secret = new_secret();
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    crate::files::write_private(&path, URL_SAFE_NO_PAD.encode(&secret).as_bytes())?;
    tracing::info!(path = %path.display(), "no auth.jwt_secret configured: created a new JWT signing key");
    Ok(secret)
}

/// A new random signing key: 32 random bytes.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    secret
}

impl AuthSettings {
    fn auth_secret(&self) -> Option<Vec<u8>> {
        self.jwt_secret.as_ref().map(|s| s.expose_secret().as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use handover_shared::api::NetworkFile;

    use super::*;
    use crate::store::sled::SledStore;

    async fn store_with_a_dispatcher(dir: &Path) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).expect("a fresh store"));
        let file: NetworkFile = serde_json::from_value(serde_json::json!({
            "accounts": [{"username": "disp", "password": "a-password", "role": "dispatcher"}]
        }))
        .expect("a network file");
        crate::import::import_network(store.as_ref(), &file).await.expect("imported");
        store
    }

    #[tokio::test]
    async fn a_revocation_through_another_server_on_the_same_store_is_seen_once_the_live_answer_is_stale() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let store = store_with_a_dispatcher(dir.path()).await;
        let (settings, secret) = (AuthSettings::default(), [7u8; 32]);
        let here = AuthService::new(Arc::clone(&store), &settings, &secret).await.expect("a service");
        let mut there = AuthService::new(Arc::clone(&store), &settings, &secret).await.expect("a service");
        // Its live answers go stale at once, as they would after a second.
        there.revocations.staleness = std::time::Duration::ZERO;
        let device = DeviceId::parse("laptop-1").expect("a device id");
        let request = LoginRequest {
            username: "disp".into(),
            password: "a-password".into(),
            device_id: Some(device.clone()),
            device_key: None,
        };
        let login = here.login(request, None).await.expect("logged in");
        let bearer = Some(login.access_token.as_str());
        assert!(here.authenticate(bearer).await.is_ok());
        assert!(there.authenticate(bearer).await.is_ok());

        assert_eq!(here.revoke_device(&device).await.expect("revoked"), 1);
        assert!(matches!(here.authenticate(bearer).await, Err(AuthError::SessionRevoked)), "at once where revoked");
        assert!(
            matches!(there.authenticate(bearer).await, Err(AuthError::SessionRevoked)),
            "on another server once its live answer is stale"
        );
    }

    #[tokio::test]
    async fn a_token_of_a_session_the_store_does_not_know_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let store = store_with_a_dispatcher(dir.path()).await;
        let service = AuthService::new(store, &AuthSettings::default(), &[7u8; 32]).await.expect("a service");
        assert!(service.is_revoked(&Uuid::now_v7()).await.expect("checked"));
    }
}
