//! `handover-agent`: the courier's handheld. It keeps the assignments and an
//! outbox of delivery confirmations in a local sled store, works with no
//! network, and syncs with the server when it can. It never links actix or the
//! server; it speaks the wire types of `handover-shared` over HTTPS.

mod capture;
mod chain;
mod client;
mod daemon;
mod handoff;
mod login;
mod page;
mod store;
mod sync;
mod verify;

use std::{
    io::{IsTerminal as _, Read as _},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use clap::{Args, Parser, Subcommand};
use handover_shared::{
    sync::{FailureReason, Position},
    DeliveryId, DeviceId,
};
use serde_json::json;

use crate::{
    capture::{Delivered, Evidence, Failed, Saved},
    daemon::{Schedule, Syncer},
    store::{LocalStore, Photo, StoreInUse},
    sync::SyncOptions,
};

/// Handover handheld agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Where the local store lives.
    #[arg(long, global = true, value_name = "DIR", default_value = "./agent-data")]
    data_dir: PathBuf,
    /// Seconds a request to the server may take before it counts as failed.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in and keep the session on this handheld.
    Login {
        /// The server's address; give it once per instance (`--server URL
        /// --server URL2`): when one does not answer, the next is tried.
        #[arg(long = "server", required = true)]
        servers: Vec<String>,
        /// The CA certificate to trust (the server's `certs/ca.pem` in development).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        #[arg(long)]
        username: String,
        /// Read the password from standard input instead of asking for it.
        #[arg(long)]
        password_stdin: bool,
        /// This handheld's id; by default the one it already has, or a new one.
        #[arg(long)]
        device_id: Option<String>,
    },
    /// Fetch the assignments that changed since the last pull.
    Pull,
    /// List the assignments kept on this handheld (works offline).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Record a delivery as delivered (works offline; saved before it says so).
    Confirm {
        delivery_id: String,
        #[arg(long)]
        recipient: String,
        /// Units handed over [default: the whole delivery].
        #[arg(long)]
        quantity: Option<u32>,
        /// Used cartridges taken back.
        #[arg(long, default_value_t = 0)]
        empties: u32,
        #[arg(long)]
        note: Option<String>,
        /// The customer's handover code, as given at the door: checked at once
        /// on this handheld, and saved even when it does not match.
        #[arg(long)]
        code: Option<String>,
        #[command(flatten)]
        evidence: EvidenceArgs,
    },
    /// Record a failed delivery attempt (works offline).
    Fail {
        delivery_id: String,
        /// customer_absent, refused, damaged, wrong_address or other (needs --note).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        evidence: EvidenceArgs,
    },
    /// Check a proof of delivery offline: the JSON of
    /// `GET /api/v1/receipts/{id}/proof`, or one signed proof from it.
    Verify {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Push the outbox, pull, then upload the photos waiting.
    Sync {
        #[arg(long)]
        json: bool,
        /// Confirmations per request (1 to 200).
        #[arg(long, default_value_t = sync::DEFAULT_BATCH, value_parser = clap::value_parser!(u16).range(1..=i64::from(handover_shared::sync::MAX_BATCH)))]
        batch_size: u16,
    },
    /// What is queued, rejected, and when the last sync was.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The confirmations the server refused, with the reason.
    Rejected {
        #[arg(long)]
        json: bool,
    },
    /// Sync in the background and serve the handheld page on 127.0.0.1.
    Daemon {
        /// The page's port on 127.0.0.1 (0 picks a free one; the line
        /// `handheld page on http://127.0.0.1:PORT` says which).
        #[arg(long, default_value_t = 8790)]
        port: u16,
        /// Seconds between syncs while the server answers.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        interval: u64,
        /// The longest wait, in seconds, between tries while the server is unreachable.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
        max_backoff: u64,
    },
}

/// What backs a capture up, as given on the command line.
#[derive(Debug, Clone, Args)]
struct EvidenceArgs {
    /// A photo (JPEG, PNG or WebP, at most 4 MiB), kept on the handheld and
    /// uploaded after the confirmation.
    #[arg(long, value_name = "FILE")]
    photo: Option<PathBuf>,
    /// Where it happened: latitude in degrees (with --lon).
    #[arg(long, value_name = "DEG", requires = "lon", allow_negative_numbers = true)]
    lat: Option<f64>,
    /// Longitude in degrees (with --lat).
    #[arg(long, value_name = "DEG", requires = "lat", allow_negative_numbers = true)]
    lon: Option<f64>,
    /// How far off the position may be, in metres.
    #[arg(long, value_name = "METRES", requires = "lat")]
    accuracy: Option<f64>,
}

impl EvidenceArgs {
    /// The photo read and checked (by its bytes), and the position.
    fn read(&self) -> anyhow::Result<Evidence> {
        let photo = match &self.photo {
            Some(path) => {
                let bytes = read_photo(path)?;
                Some(Photo::new(bytes).map_err(|why| anyhow::anyhow!("--photo {}: {why}", path.display()))?)
            }
            None => None,
        };
        let position = match (self.lat, self.lon) {
            (Some(lat), Some(lon)) => Some(Position { lat, lon, accuracy_m: self.accuracy }),
            _ => None,
        };
        Ok(Evidence { photo, position })
    }
}

/// A photo file's bytes, read no further than the size limit allows.
fn read_photo(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("--photo {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(handover_shared::proof::MAX_PHOTO_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("--photo {}", path.display()))?;
    Ok(bytes)
}

/// Tells the courier how the capture went: its id on standard output (what
/// scripts read), and what the handover code said on standard error.
fn report_saved(saved: &Saved) {
    println!("{}", saved.confirmation_id);
    if let Some(message) = saved.code_check.message() {
        eprintln!("{message}");
    }
}

fn main() -> ExitCode {
    // The local store holds the courier's tokens: the owner's only.
    handover_shared::private::owner_only_from_now_on();
    // Armed by FAILPOINTS in test builds only; nothing otherwise.
    let _failpoints = handover_shared::failpoints::setup();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handover-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Offline and storeless: it checks a file, whoever runs it.
    if let Command::Verify { file } = &cli.command {
        return verify::run(file);
    }
    let store = match LocalStore::open(&cli.data_dir) {
        Ok(store) => store,
        Err(err) if err.is::<StoreInUse>() => return hand_to_daemon(&cli, err),
        Err(err) => return Err(err),
    };
    let options = SyncOptions { timeout: Duration::from_secs(cli.timeout), ..SyncOptions::default() };
    match cli.command {
        Command::Login { servers, ca, username, password_stdin, device_id } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_to_string(&mut line).context("reading the password from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                rpassword::prompt_password("password: ").context("reading the password")?
            };
            let device_id = device_id.map(|raw| DeviceId::parse(raw).context("invalid --device-id")).transpose()?;
            let credentials = login::Credentials { servers, ca, username, password, device_id };
            let logged_in = login::login(&store, credentials, options.timeout)?;
            println!("logged in as {} ({}) on device {}", logged_in.username, logged_in.role, logged_in.device_id);
            if logged_in.signed > 0 {
                println!(
                    "{} queued confirmation(s) saved before the server registered this handheld's signing key are \
                     signed now",
                    logged_in.signed
                );
            }
            Ok(())
        }
        Command::Pull => {
            let changed = sync::pull(&store, &options)?;
            println!("{changed} assignment(s) changed");
            Ok(())
        }
        Command::List { json } => list(&store, json),
        Command::Confirm { delivery_id, recipient, quantity, empties, note, code, evidence } => {
            let id = DeliveryId::parse(delivery_id).context("invalid delivery id")?;
            check_recipient(&recipient)?;
            let evidence = evidence.read()?;
            let report = Delivered { recipient, quantity, empties, note, signature: None, evidence, code };
            report_saved(&capture::deliver(&store, &id, report, None)?);
            Ok(())
        }
        Command::Fail { delivery_id, reason, note, evidence } => {
            let id = DeliveryId::parse(delivery_id).context("invalid delivery id")?;
            let reason = failure_reason(&reason, note.as_deref())?;
            let evidence = evidence.read()?;
            report_saved(&capture::fail(&store, &id, Failed { reason, note, evidence }, None)?);
            Ok(())
        }
        Command::Verify { file } => verify::run(&file),
        Command::Sync { json, batch_size } => {
            let progress = !json && std::io::stdout().is_terminal();
            let report = sync::sync(&store, &SyncOptions { batch_size: batch_size.into(), progress, ..options })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "pushed: {} accepted, {} duplicate, {} rejected; pulled: {} change(s); queued: {}; photos: {} \
                     uploaded, {} dropped, {} waiting",
                    report.accepted,
                    report.duplicate,
                    report.rejected,
                    report.pulled,
                    report.queued,
                    report.photos_uploaded,
                    report.photos_dropped,
                    report.photos_waiting
                );
                for problem in &report.photo_problems {
                    eprintln!("{problem}");
                }
            }
            match &report.signature_refused {
                // The report is out; the exit status says the push stopped.
                Some(refused) => bail!("{refused}"),
                None => Ok(()),
            }
        }
        Command::Status { json } => {
            let session = store.session().ok();
            let (waiting, dropped) = (store.photos_waiting()?, store.dropped_photos()?);
            let signature_refused = store.signature_refused()?;
            let device_key = match (store.signing()?, store.device_key()?) {
                (true, _) => Some("registered"),
                (false, Some(_)) => Some("pending"),
                (false, None) => None,
            };
            let status = json!({
                "queued": store.queued(),
                "rejected": store.rejected()?.len(),
                "last_sync_at": store.last_sync_at()?,
                "username": session.as_ref().map(|s| s.username.to_string()),
                "device_id": session.as_ref().map(|s| s.device_id.to_string()),
                "server": session.as_ref().and_then(|s| s.servers.first().cloned()),
                "servers": session.as_ref().map(|s| s.servers.clone()),
                "signing": device_key == Some("registered"),
                "device_key": device_key,
                "signature_refused": signature_refused,
                "photos_waiting": waiting.len(),
                "photos": waiting,
                "photos_dropped": dropped,
            });
            if json {
                println!("{status}");
            } else {
                println!(
                    "queued: {}, rejected: {}, photos waiting to upload: {}, last sync: {}",
                    status["queued"],
                    status["rejected"],
                    waiting.len(),
                    status["last_sync_at"].as_str().unwrap_or("never")
                );
                if let Some(refused) = &signature_refused {
                    println!("{refused}");
                }
                for photo in &waiting {
                    let problem = match (&photo.problem, photo.waits_for_confirmation) {
                        (Some(why), _) => format!(" ({why})"),
                        (None, true) => " (after its confirmation is sent)".to_owned(),
                        (None, false) => String::new(),
                    };
                    println!("photo waiting  {}  {}  {} bytes{problem}", photo.delivery_id, photo.digest, photo.size);
                }
                for photo in &dropped {
                    println!(
                        "photo dropped  {}  {}  {}: {}",
                        photo.delivery_id, photo.digest, photo.code, photo.message
                    );
                }
            }
            Ok(())
        }
        Command::Daemon { port, interval, max_backoff } => daemon(
            store,
            &cli.data_dir,
            port,
            Schedule { interval: Duration::from_secs(interval), max_backoff: Duration::from_secs(max_backoff) },
            options,
        ),
        Command::Rejected { json } => {
            let rejected = store.rejected()?;
            if json {
                let rows: Vec<_> = rejected
                    .iter()
                    .map(|r| json!({"confirmation_id": r.confirmation.confirmation_id, "delivery_id": r.confirmation.delivery_id, "code": r.code, "message": r.message}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in &rejected {
                    println!(
                        "{}  {}  {}: {}",
                        r.confirmation.confirmation_id, r.confirmation.delivery_id, r.code, r.message
                    );
                }
            }
            Ok(())
        }
    }
}

fn check_recipient(recipient: &str) -> anyhow::Result<()> {
    if recipient.trim().is_empty() {
        bail!("name the recipient with --recipient");
    }
    Ok(())
}

fn failure_reason(raw: &str, note: Option<&str>) -> anyhow::Result<FailureReason> {
    let reason: FailureReason = serde_json::from_value(json!(raw)).map_err(|_| {
        anyhow::anyhow!("unknown reason {raw:?}: customer_absent, refused, damaged, wrong_address or other")
    })?;
    if reason == FailureReason::Other && note.map(str::trim).unwrap_or_default().is_empty() {
        bail!("reason `other` needs --note");
    }
    Ok(reason)
}

/// The store is in use: `confirm` and `fail` go to the running daemon, which
/// saves them as its page would; anything else says the store is in use.
fn hand_to_daemon(cli: &Cli, in_use: anyhow::Error) -> anyhow::Result<()> {
    // The photo is read and checked here, so that a wrong file is named by
    // this command; the daemon checks the bytes again as it would the page's.
    let handed = |evidence: &EvidenceArgs| -> anyhow::Result<(Option<String>, Option<Position>)> {
        let Evidence { photo, position } = evidence.read()?;
        Ok((photo.map(|photo| STANDARD.encode(photo.bytes())), position))
    };
    let capture = match &cli.command {
        Command::Confirm { delivery_id, recipient, quantity, empties, note, code, evidence } => {
            check_recipient(recipient)?;
            let (photo, position) = handed(evidence)?;
            handoff::Capture::Delivered {
                delivery_id: delivery_id.clone(),
                recipient: recipient.clone(),
                quantity: *quantity,
                empties: *empties,
                note: note.clone(),
                photo,
                position,
                code: code.clone(),
            }
        }
        Command::Fail { delivery_id, reason, note, evidence } => {
            let reason = failure_reason(reason, note.as_deref())?;
            let (photo, position) = handed(evidence)?;
            handoff::Capture::Failed { delivery_id: delivery_id.clone(), reason, note: note.clone(), photo, position }
        }
        _ => return Err(in_use),
    };
    match handoff::send(&cli.data_dir, &capture, Duration::from_secs(cli.timeout))? {
        Some(handoff::Answer::Saved(id)) => {
            println!("{id}");
            Ok(())
        }
        Some(handoff::Answer::SavedWithNotice { confirmation_id, notice }) => {
            println!("{confirmation_id}");
            eprintln!("{notice}");
            Ok(())
        }
        Some(handoff::Answer::Refused(message)) => bail!("{message}"),
        None => Err(in_use),
    }
}

fn list(store: &LocalStore, json: bool) -> anyhow::Result<()> {
    let assignments = store.assignments()?;
    if json {
        println!("{}", serde_json::to_string(&assignments)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<9} {:>4}  {:<8} {:<10} {:<8} CAPTURED",
        "DELIVERY", "STATUS", "QTY", "ITEM", "CUSTOMER", "PICKUP"
    );
    for a in assignments {
        let captured = if store.captured_for(&a.delivery_id, a.version)?.is_some() { "yes" } else { "" };
        let status = serde_json::to_value(a.status)?.as_str().unwrap_or_default().to_owned();
        // The ids' `Display` ignores widths: their text is padded instead.
        println!(
            "{:<12} {:<9} {:>4}  {:<8} {:<10} {:<8} {}",
            a.delivery_id.as_str(),
            status,
            a.quantity,
            a.item_id.as_str(),
            a.customer_id.as_str(),
            a.pickup_node.as_str(),
            captured
        );
    }
    Ok(())
}

/// Starts the background sync, then serves the page on this thread.
fn daemon(
    store: LocalStore,
    data_dir: &Path,
    port: u16,
    schedule: Schedule,
    options: SyncOptions,
) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(("127.0.0.1", port))
        .map_err(|err| anyhow::anyhow!("cannot serve the handheld page on 127.0.0.1:{port}: {err}"))?;
    let port = server.server_addr().to_ip().map(|a| a.port()).context("the page listens on an IP address")?;
    let syncer = Arc::new(Syncer::new(store.clone()));
    let background = Arc::clone(&syncer);
    std::thread::Builder::new().name("sync".into()).spawn(move || background.run(schedule, options))?;
    let page = page::Page::new(store, syncer, port);
    handoff::publish(data_dir, &handoff::Door { page: format!("http://127.0.0.1:{port}"), token: page.secret() })?;
    println!("handheld page on http://127.0.0.1:{port}");
    page.serve(&server);
    Ok(())
}
