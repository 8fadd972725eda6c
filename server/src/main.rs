//! `handover-server`: serve, import a network file, revoke a device.

use std::{net::TcpListener, path::PathBuf, sync::Arc};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use handover_server::{
    auth::AuthService,
    config::{Overrides, Settings},
    demo,
    import::{import_network, ImportFailure},
    startup::launch,
    store::{sled::SledStore, Store},
    telemetry,
};
use handover_shared::{api::NetworkFile, DeviceId};

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the pages.
    Serve {
        /// Where the store lives [default: ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
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
    /// Import a network file (with the server stopped). Refused whole on any problem.
    Import {
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Cut a lost handheld off: revoke every session of a device (server stopped;
    /// while it runs, use POST /api/v1/admin/devices/{id}/revoke).
    RevokeDevice {
        device_id: String,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    // Armed by FAILPOINTS in test builds only; nothing otherwise.
    let _failpoints = handover_shared::failpoints::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { data_dir, listen, certs_dir, http, demo } => {
            let overrides = Overrides { data_dir, listen, certs_dir, plain_http: http, demo };
            serve(load_settings(cli.config.as_deref(), &overrides)?).await
        }
        Command::Import { file, data_dir } => {
            let settings = load_settings(cli.config.as_deref(), &Overrides { data_dir, ..Overrides::default() })?;
            import(&settings, &file).await
        }
        Command::RevokeDevice { device_id, data_dir } => {
            let settings = load_settings(cli.config.as_deref(), &Overrides { data_dir, ..Overrides::default() })?;
            revoke_device(&settings, &device_id).await
        }
    }
}

fn load_settings(file: Option<&std::path::Path>, overrides: &Overrides) -> anyhow::Result<Settings> {
    Settings::load(file, overrides).context("invalid configuration")
}

fn open_store(settings: &Settings) -> anyhow::Result<Arc<SledStore>> {
    let store = SledStore::open(&settings.data_dir)
        .with_context(|| format!("cannot open the store in {}", settings.data_dir.display()))?;
    Ok(Arc::new(store))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&settings)?;
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

async fn import(settings: &Settings, path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: NetworkFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a network file", path.display()))?;
    let store = open_store(settings)?;
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

async fn revoke_device(settings: &Settings, raw: &str) -> anyhow::Result<()> {
    let device_id = DeviceId::parse(raw).with_context(|| format!("invalid device id {raw:?}"))?;
    let store: Arc<dyn Store> = open_store(settings)?;
    let secret = handover_server::auth::load_or_create_secret(&settings.auth, &settings.data_dir)?;
    let auth = AuthService::new(store, &settings.auth, &secret).await?;
    let revoked = auth.revoke_device(&device_id).await?;
    println!("revoked {revoked} session(s) of device {device_id}");
    Ok(())
}
