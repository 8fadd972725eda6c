//! Server configuration, in layers: built-in defaults, then an optional TOML
//! file, then `HANDOVER__SECTION__KEY` environment variables, then command-line
//! flags. Unknown keys are refused at every layer, so a typo never goes unnoticed.

use std::{net::SocketAddr, path::PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Everything the server needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the sled store and the generated JWT key live.
    pub data_dir: PathBuf,
    pub store: StoreSettings,
    pub listen: SocketAddr,
    /// Where TLS material is read from (and, in development mode, made).
    pub certs_dir: PathBuf,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub orders: OrderSettings,
    pub dashboard: DashboardSettings,
    /// Load the demo network when the store is empty.
    pub demo: bool,
}

/// Which backend keeps the data.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    /// `postgres://user:password@host:port/database`, for `backend = "postgres"`.
    /// Secret: it may carry a password.
    pub postgres_url: Option<SecretString>,
    /// Connections each instance keeps open at most.
    pub postgres_pool_size: usize,
    /// How long a request waits for a database connection before it is
    /// answered 503.
    pub postgres_connect_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded, in `data_dir`: one process, no setup.
    #[default]
    Sled,
    /// A PostgreSQL database that any number of instances share.
    Postgres,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sled,
            postgres_url: None,
            postgres_pool_size: 16,
            postgres_connect_timeout_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Serve HTTPS. Plain HTTP only when this is turned off explicitly (`--http`).
    pub enabled: bool,
    /// Development mode: when the certificate is missing, make a local CA and a
    /// server certificate for localhost under `certs_dir`. Turn off in production,
    /// where the operator provides `server.pem` and `server-key.pem`.
    pub generate_dev_certs: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The HS256 key, at least 32 bytes. When absent, the server makes a random
    /// one in `data_dir/jwt-secret` on first start and reuses it afterwards.
    pub jwt_secret: Option<SecretString>,
    /// The key kept in the store (PostgreSQL's `secrets`), used when
    /// `jwt_secret` is not set: filled when the store opens, never read from
    /// configuration.
    #[serde(skip)]
    pub stored_key: Option<StoredKey>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// Login attempts allowed per minute from one client address at one
    /// account (refused beyond; formerly per username from anywhere, which let
    /// anyone lock an owner out).
    #[serde(alias = "login_attempts_per_minute_per_username")]
    pub login_attempts_per_minute_per_username_and_address: u32,
    /// Login attempts allowed per minute from one client address (refused beyond).
    pub login_attempts_per_minute_per_address: u32,
    /// Wrong passwords per minute for one account, from anywhere, before
    /// attempts from addresses new to it are paced (see `auth::throttle`).
    pub login_failures_per_minute_per_username: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// The largest JSON body of an ordinary request.
    pub json_body_bytes: usize,
    /// The largest network file accepted by `POST /api/v1/admin/network`.
    pub network_body_bytes: usize,
    /// The largest batch of confirmations (`POST /api/v1/sync/confirmations`).
    pub sync_body_bytes: usize,
    /// The most changes one pull returns (`more` says when others follow).
    pub pull_page_changes: u64,
    /// Pushes of confirmations one device may make per minute (a handheld
    /// pushes every few seconds at most); beyond, `429 rate_limited`.
    pub pushes_per_minute_per_device: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            store: StoreSettings::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            certs_dir: PathBuf::from("./certs"),
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            orders: OrderSettings::default(),
            dashboard: DashboardSettings::default(),
            demo: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderSettings {
    /// How long a draft waits for Confirm before it expires.
    pub draft_ttl_secs: u64,
}

impl Default for OrderSettings {
    fn default() -> Self {
        Self { draft_ttl_secs: 24 * 3600 }
    }
}

impl OrderSettings {
    pub fn draft_ttl(&self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.draft_ttl_secs).unwrap_or(i64::MAX))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSettings {
    /// A handheld that has had confirmations queued after every push for
    /// longer than this is flagged on the dashboard.
    pub stuck_queue_minutes: u64,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self { stuck_queue_minutes: 30 }
    }
}

impl DashboardSettings {
    pub fn stuck_queue(&self) -> time::Duration {
        time::Duration::minutes(i64::try_from(self.stuck_queue_minutes).unwrap_or(i64::MAX))
    }
}

/// A signing key's raw bytes, kept out of `Debug` output.
#[derive(Clone)]
pub struct StoredKey(std::sync::Arc<[u8]>);

impl StoredKey {
    pub fn new(bytes: &[u8]) -> Self {
        StoredKey(bytes.into())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredKey([REDACTED])")
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self { enabled: true, generate_dev_certs: true }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            stored_key: None,
            issuer: "handover".into(),
            audience: "handover-api".into(),
            access_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 3600,
            login_attempts_per_minute_per_username_and_address: 10,
            login_attempts_per_minute_per_address: 60,
            login_failures_per_minute_per_username: 10,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            json_body_bytes: 64 * 1024,
            network_body_bytes: 8 * 1024 * 1024,
            sync_body_bytes: 16 * 1024 * 1024,
            pull_page_changes: 500,
            pushes_per_minute_per_device: 120,
        }
    }
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    /// `sled` or `postgres`.
    pub store_backend: Option<String>,
    pub postgres_url: Option<String>,
    pub listen: Option<String>,
    pub certs_dir: Option<PathBuf>,
    pub plain_http: bool,
    pub demo: bool,
}

impl Settings {
    /// Reads the layers. `file` is optional; a named file that does not exist is
    /// an error, not a silent fallback to defaults.
    pub fn load(file: Option<&std::path::Path>, overrides: &Overrides) -> Result<Self, config::ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("HANDOVER").prefix_separator("__").separator("__").try_parsing(true),
        );
        if let Some(dir) = &overrides.data_dir {
            builder = builder.set_override("data_dir", dir.display().to_string())?;
        }
        if let Some(backend) = &overrides.store_backend {
            builder = builder.set_override("store.backend", backend.as_str())?;
        }
        if let Some(url) = &overrides.postgres_url {
            builder = builder.set_override("store.postgres_url", url.as_str())?;
        }
        if let Some(listen) = &overrides.listen {
            builder = builder.set_override("listen", listen.as_str())?;
        }
        if let Some(dir) = &overrides.certs_dir {
            builder = builder.set_override("certs_dir", dir.display().to_string())?;
        }
        if overrides.plain_http {
            builder = builder.set_override("tls.enabled", false)?;
        }
        if overrides.demo {
            builder = builder.set_override("demo", true)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.check()?;
        Ok(settings)
    }

    /// Bounds that keep time arithmetic sane.
    fn check(&self) -> Result<(), config::ConfigError> {
        const YEAR: u64 = 365 * 24 * 3600;
        let bounded = [
            ("auth.access_ttl_secs", self.auth.access_ttl_secs, 24 * 3600),
            ("auth.refresh_ttl_secs", self.auth.refresh_ttl_secs, YEAR),
            ("orders.draft_ttl_secs", self.orders.draft_ttl_secs, YEAR),
            ("dashboard.stuck_queue_minutes", self.dashboard.stuck_queue_minutes, YEAR / 60),
            ("limits.pull_page_changes", self.limits.pull_page_changes, 10_000),
            ("store.postgres_connect_timeout_secs", self.store.postgres_connect_timeout_secs, 3600),
        ];
        for (key, value, max) in bounded {
            if value > max {
                return Err(config::ConfigError::Message(format!("{key} must be at most {max}, got {value}")));
            }
        }
        if self.limits.pull_page_changes == 0 {
            return Err(config::ConfigError::Message("limits.pull_page_changes must be at least 1".into()));
        }
        if self.store.backend == StoreBackend::Postgres && self.store.postgres_url.is_none() {
            return Err(config::ConfigError::Message(
                "store.backend = \"postgres\" needs store.postgres_url (or --postgres-url)".into(),
            ));
        }
        if self.store.postgres_pool_size == 0 {
            return Err(config::ConfigError::Message("store.postgres_pool_size must be at least 1".into()));
        }
        if self.auth.access_ttl_secs == 0 || self.auth.refresh_ttl_secs == 0 {
            return Err(config::ConfigError::Message("token lifetimes must be at least 1 second".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let settings = Settings::default();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
        assert!(settings.tls.enabled);
    }

    #[test]
    fn flags_override_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "listen = \"127.0.0.1:9000\"\n[auth]\naccess_ttl_secs = 60\n").expect("write");
        let overrides = Overrides { plain_http: true, ..Overrides::default() };
        let settings = Settings::load(Some(&good), &overrides).expect("loads");
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.auth.access_ttl_secs, 60);
        assert!(!settings.tls.enabled);

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[auth]\naccess_ttl = 60\n").expect("write");
        let err = Settings::load(Some(&bad), &Overrides::default()).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("access_ttl")), "unknown key named in the error");
    }

    #[test]
    fn lifetimes_out_of_bounds_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ttl.toml");
        std::fs::write(&file, "[orders]\ndraft_ttl_secs = 1000000000000\n").expect("write");
        let err = Settings::load(Some(&file), &Overrides::default()).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("orders.draft_ttl_secs must be at most 31536000, got 1000000000000"));
    }

    #[test]
    fn the_postgres_backend_needs_its_url_and_hides_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pg.toml");
        std::fs::write(&file, "[store]\nbackend = \"postgres\"\n").expect("write");
        let err = Settings::load(Some(&file), &Overrides::default()).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("store.backend = \"postgres\" needs store.postgres_url (or --postgres-url)"));

        let overrides =
            Overrides { postgres_url: Some("postgres://u:hunter2@db/handover".into()), ..Overrides::default() };
        let settings = Settings::load(Some(&file), &overrides).expect("loads");
        assert_eq!(settings.store.backend, StoreBackend::Postgres);
        assert!(!format!("{settings:?}").contains("hunter2"), "the database password stays out of logs");

        std::fs::write(&file, "[store]\nbackend = \"mysql\"\n").expect("write");
        let err = Settings::load(Some(&file), &Overrides::default()).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("mysql")), "an unknown backend is named");
    }

    #[test]
    fn the_jwt_secret_is_redacted_in_debug_output() {
        let mut settings = Settings::default();
        settings.auth.jwt_secret = Some(SecretString::from("super-secret-signing-key-0123456789"));
        assert!(!format!("{settings:?}").contains("super-secret"));
    }
}
