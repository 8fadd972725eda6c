//! `handover-server`: serve, import a network file, revoke a device, apply
//! the PostgreSQL schema, move a sled store into PostgreSQL.

use std::{net::TcpListener, path::PathBuf, sync::Arc};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use handover_server::{
    auth::AuthService,
    config::{Overrides, Settings, StoreBackend, StoredKey},
    demo,
    import::{import_network, ImportFailure},
    migrate_store::{migrate_store, MigrateStoreError},
    startup::launch,
    store::{
        postgres::{PgOptions, PgStore},
        sled::SledStore,
        Store,
    },
    telemetry,
};
use handover_shared::{api::NetworkFile, DeviceId};
use secrecy::{ExposeSecret as _, SecretString};

/// Handover central server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML configuration file (its values are overridden by HANDOVER__* variables and flags).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Where the data is kept: the same flags for every command.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Where the sled store (and a generated JWT key) lives [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Which backend keeps the data: sled (embedded) or postgres [default: sled].
    #[arg(long = "store", value_name = "BACKEND")]
    store_backend: Option<String>,
    /// The database for `--store postgres`. Prefer HANDOVER__STORE__POSTGRES_URL
    /// when it carries a password: a flag shows in the process list.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
}

impl StoreArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            data_dir: self.data_dir,
            store_backend: self.store_backend,
            postgres_url: self.postgres_url,
            ..Overrides::default()
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the pages.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on; port 0 picks a free one [default: 127.0.0.1:8443].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Where TLS material is read or made [default: ./certs].
        #[arg(long, value_name = "DIR")]
        certs_dir: Option<PathBuf>,
        /// Serve plain HTTP instead of TLS.
        #[arg(long)]
        http: bool,
        /// Load the demo network when the store is empty.
        #[arg(long)]
        demo: bool,
    },
    /// Import a network file. Refused whole on any problem. With sled, stop
    /// the server first; on PostgreSQL it may run beside the servers.
    Import {
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Cut a lost handheld off: revoke every session of a device (sled: with
    /// the server stopped; while it runs, use POST /api/v1/admin/devices/{id}/revoke).
    RevokeDevice {
        device_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Create or upgrade the PostgreSQL schema (`serve` also does it when it
    /// starts), and print its version.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Move a sled store into an empty PostgreSQL database, with the server
    /// stopped: copies everything in one transaction, then checks the copy
    /// against the sled store. The sled store is left as it was.
    MigrateStore {
        /// The data dir of the sled server (its store and its JWT key).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The empty target database, `postgres://...`. Prefer the variable
        /// when the URL carries a password: a flag shows in the process list.
        #[arg(long, value_name = "URL", env = "HANDOVER_MIGRATE_TO", hide_env_values = true)]
        to: SecretString,
    },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    // Stores, keys and certificates made from here on are the owner's only.
    handover_shared::private::owner_only_from_now_on();
    telemetry::init();
    // Armed by FAILPOINTS in test builds only; nothing otherwise.
    let _failpoints = handover_shared::failpoints::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { store, listen, certs_dir, http, demo } => {
            let overrides = Overrides { listen, certs_dir, plain_http: http, demo, ..store.overrides() };
            serve(load_settings(cli.config.as_deref(), &overrides)?).await
        }
        Command::Import { file, store } => {
            let mut settings = load_settings(cli.config.as_deref(), &store.overrides())?;
            import(&mut settings, &file).await
        }
        Command::RevokeDevice { device_id, store } => {
            let mut settings = load_settings(cli.config.as_deref(), &store.overrides())?;
            revoke_device(&mut settings, &device_id).await
        }
        Command::Migrate { store } => migrate(&load_settings(cli.config.as_deref(), &store.overrides())?).await,
        Command::MigrateStore { data_dir, to } => {
            let outcome = migrate_store(&data_dir, &PgOptions::new(to.expose_secret())).await;
            if let Some(report) = outcome.as_ref().map_or_else(MigrateStoreError::report, Some) {
                print!("{report}");
            }
            outcome.map(drop).map_err(anyhow::Error::from)
        }
    }
}

fn load_settings(file: Option<&std::path::Path>, overrides: &Overrides) -> anyhow::Result<Settings> {
    Settings::load(file, overrides).context("invalid configuration")
}

fn pg_options(settings: &Settings) -> anyhow::Result<PgOptions> {
    let url = settings.store.postgres_url.as_ref().context("store.postgres_url is not set")?;
    let mut options = PgOptions::new(url.expose_secret());
    options.pool_size = settings.store.postgres_pool_size;
    options.connect_timeout = std::time::Duration::from_secs(settings.store.postgres_connect_timeout_secs);
    Ok(options)
}

/// Opens the configured store. On PostgreSQL, without `auth.jwt_secret`, the
/// signing key is the one kept in the database (made by the first instance),
/// so that every instance accepts the tokens of the others.
async fn open_store(settings: &mut Settings) -> anyhow::Result<Arc<dyn Store>> {
    match settings.store.backend {
        StoreBackend::Sled => {
            let store = SledStore::open(&settings.data_dir)
                .with_context(|| format!("cannot open the store in {}", settings.data_dir.display()))?;
            Ok(Arc::new(store))
        }
        StoreBackend::Postgres => {
            let store = PgStore::open(&pg_options(settings)?).await.context("cannot open the PostgreSQL store")?;
            if settings.auth.jwt_secret.is_none() {
                // Raw bytes, like the sled data dir's `jwt-secret` once
                // decoded: `migrate-store` copies that key here as it is.
                let shared = store.shared_secret("jwt", &handover_server::auth::new_secret()).await?;
                settings.auth.stored_key = Some(StoredKey::new(&shared));
            }
            Ok(Arc::new(store))
        }
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    if settings.store.backend == StoreBackend::Sled {
        println!("the sled store needs no migration: it is laid out when it is opened");
        return Ok(());
    }
    let store = PgStore::connect(&pg_options(settings)?)?;
    let report = store.migrate().await.context("migrating the PostgreSQL schema")?;
    if report.applied.is_empty() {
        println!("the schema is up to date (version {})", report.version);
    } else {
        println!("applied migration(s) {:?}; the schema is at version {}", report.applied, report.version);
    }
    Ok(())
}

async fn serve(mut settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&mut settings).await?;
    if settings.demo && demo::load_if_empty(store.as_ref()).await.context("loading the demo network")? {
        print_demo_banner();
    }
    let listener =
        TcpListener::bind(settings.listen).with_context(|| format!("cannot listen on {}", settings.listen))?;
    let certs_dir = settings.certs_dir.clone();
    let tls = settings.tls.enabled;
    let running = launch(settings, store, listener).await?;
    println!("listening on {}", running.url());
    if tls {
        eprintln!(
            "try: curl --cacert {} {}/healthz",
            certs_dir.join(handover_server::tls::CA_CERT).display(),
            running.url()
        );
    }
    running.until_stopped().await
}

/// On standard output, for the person who started the demo: the log (standard
/// error, often kept in files) never carries a password.
fn print_demo_banner() {
    println!("loaded the demo network; every demo account's password is {:?}:", demo::DEMO_PASSWORD);
    for (username, role, home) in demo::accounts() {
        println!("  {username:<8} {role:<11} {home}");
    }
}

async fn import(settings: &mut Settings, path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: NetworkFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a network file", path.display()))?;
    let store = open_store(settings).await?;
    match import_network(store.as_ref(), &file).await {
        Ok(summary) => {
            println!(
                "imported {} node(s), {} item(s), {} stock line(s), {} customer(s), {} account(s)",
                summary.nodes, summary.items, summary.stock, summary.customers, summary.accounts
            );
            Ok(())
        }
        Err(ImportFailure::Invalid(problems)) => {
            for problem in &problems {
                eprintln!("  {}: {}", problem.path, problem.message);
            }
            bail!("{} problem(s) in {}; nothing was imported", problems.len(), path.display())
        }
        Err(err) => Err(err.into()),
    }
}

async fn revoke_device(settings: &mut Settings, raw: &str) -> anyhow::Result<()> {
    let device_id = DeviceId::parse(raw).with_context(|| format!("invalid device id {raw:?}"))?;
    let store = open_store(settings).await?;
    let secret = handover_server::auth::load_or_create_secret(&settings.auth, &settings.data_dir)?;
    let auth = AuthService::new(store, &settings.auth, &secret).await?;
    let revoked = auth.revoke_device(&device_id).await?;
    println!("revoked {revoked} session(s) of device {device_id}");
    Ok(())
}
