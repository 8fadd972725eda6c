//! Sync benchmark: how fast the server takes delivery confirmations from
//! handhelds, durably, how fast couriers pull, and how the real agent fares
//! with a full outbox.
//!
//! It builds a network in-process (`import::import_network` into a `SledStore`
//! in a temporary directory): three branch warehouses with plenty of one item,
//! 64 expediters at branch B1 (the ingest couriers), one at B2 (the agent's
//! courier) and 64 at B3 (the pull couriers), and 100 customers per branch. It
//! places the orders through the real order path (a draft, then its
//! confirmation) and plans them with one `Store::plan_pending`. The planner
//! gives a delivery to the least-loaded expediter of its branch, so B1's
//! couriers hold 3N/64 deliveries each, B2's courier holds min(N, 10,000) +
//! min(N, 1,000) and each of B3's holds 50. Who holds what is then read the
//! way a handheld reads it, with `GET /api/v1/sync/assignments`. Each of B1's
//! couriers also logs in on a second handheld that registers an Ed25519 key
//! (`LoginRequest::device_key`), for the signed load below.
//!
//! The real server runs in-process (`startup::launch`, HTTPS with development
//! certificates made in a temporary directory, its own actix system and worker
//! defaults), loaded over loopback by a Rust generator: reqwest with rustls
//! trusting the development CA, one connection per courier, each sending its
//! next request as soon as the answer to the last one has arrived. Measured:
//!
//! - durable ingest, `POST /api/v1/sync/confirmations` from 64 couriers at once:
//!   N confirmations in batches of 100, then N more signed, in batches of 100
//!   from the couriers' keyed handhelds, then N more in batches of 1. The
//!   server answers a batch only after the group-commit flush that covers it
//!   (`store/commit.rs`), so this is durable ingest. The signed confirmations
//!   are numbered, chained and signed per handheld before the load starts
//!   (signing is the handheld's cost, not the server's), and the server
//!   verifies every signature before its transaction and keeps each record and
//!   its device's chain: the signed load beside the unsigned one of the same
//!   run is what signing costs the server;
//! - pull, `GET /api/v1/sync/assignments` from the 64 pull couriers, 50
//!   assignments in every answer;
//! - baselines: raw sled inserts of N confirmations' JSON into a fresh database,
//!   one thread, a `flush` every 100; and a JSON echo endpoint (parse a batch of
//!   one confirmation, answer it) served by actix-web with the server's TLS
//!   configuration and worker defaults, loaded with the very bodies that the
//!   batches of 1 carried (three times over, for a steadier figure);
//! - the agent: `cargo build --release -p handover-agent` and its size; then the
//!   real binary against the running server: `login`, `pull`; min(N, 1,000)
//!   `confirm` processes while its daemon runs (each hands its capture to the
//!   daemon, which syncs them), each timed; the daemon stopped, one `confirm`
//!   process per remaining delivery, each timed, and one `sync --json` that
//!   drains the whole outbox, timed, with the agent's peak RSS. The sync runs
//!   under a second copy of this benchmark whose only child is the agent, and
//!   which reads `getrusage(RUSAGE_CHILDREN)` once the agent has exited: the
//!   figure is the agent's, not the benchmark's nor cargo's.
//!
//! Before each load, the benchmark flushes the store and waits for the process
//! to idle (sled goes on cleaning segments after a large setup). Beside each
//! load it prints this process's CPU use (server and generator
//! together) and, from `/proc/self/io`, the bytes it wrote to storage per item:
//! what tells a load bound by the processors from one bound by the disk.
//!
//! Checks: every pushed confirmation is answered `accepted`, every pull lists
//! the courier's 50 assignments, the echo answers what it was sent, the agent's
//! sync reports everything accepted and nothing queued; afterwards, read from
//! the store, every confirmed receipt is delivered with the proof of exactly the
//! confirmation sent for it, no other receipt is delivered, each branch's
//! stock went down by exactly what was handed over, each signed confirmation's
//! attempt kept its signed record under the number it was sent with, and each
//! keyed handheld's chain holds every number it sent, without a gap. A failure
//! (an agent that does not build included) is printed loudly and the process
//! exits non-zero. Timings are printed beside the targets of the performance
//! issues, never asserted: the generator, the server and the agent share this
//! machine's cores.
//!
//! Run it with
//!
//! ```text
//! cargo bench -p handover-server --bench sync
//! HANDOVER_BENCH_CONFIRMATIONS=1000 cargo bench -p handover-server --bench sync   # a quick run
//! HANDOVER_BENCH_SKIP_AGENT=1 cargo bench -p handover-server --bench sync         # the server's figures only
//! HANDOVER_BENCH_STORE=postgres HANDOVER_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo bench -p handover-server --bench sync                                  # sled, then PostgreSQL
//! ```
//!
//! `HANDOVER_BENCH_STORE` chooses the backend: `sled` (the default, all of
//! the above) or `postgres`. On PostgreSQL one process measures, in turn,
//! the server on sled as above but without the agent (the same-run figures
//! PostgreSQL is compared with), pgbench's TPC-B-like load on a scratch
//! database of the same PostgreSQL server, and then the server on a fresh
//! scratch database there, through one instance and through two instances
//! on that database; `sync_postgres/mod.rs` says how.

mod common;
mod sync_postgres;

use std::{
    collections::HashMap,
    future::Future,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Output, Stdio},
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use actix_web::{dev::ServerHandle, web, App, HttpResponse, HttpServer};
use common::{
    all_receipts, commit_counts, count_from_env, dispatcher, grouped, id, import_file, network_account, network_node,
    network_stock, place_orders, raw_sled_inserts, report_problems, seconds, Setup, DISPATCHER, PASSWORD,
};
use handover_server::{
    config::{AuthSettings, LimitSettings, Settings},
    domain::orders::{RawOrder, RawQuantity, Receipt},
    startup,
    store::{sled::SledStore, PlanResult, Store},
    tls,
};
use handover_shared::{
    api::{LoginRequest, LoginResponse, NetworkAccount, NetworkCustomer, NetworkFile, NetworkItem},
    proof::{sha256_hex, DeviceKey, SignedRecord, CHAIN_START},
    sync::{
        Assignment, AssignmentChanges, AssignmentStatus, Confirmation, ConfirmationBatch, ConfirmationResults,
        Position, ResultStatus,
    },
    CustomerId, DeliveryId, DeviceId, NodeId, NodeKind, ReceiptId, Role,
};
use nix::sys::resource::{getrusage, UsageWho};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

/// Confirmations per ingest run, unless `HANDOVER_BENCH_CONFIRMATIONS` says otherwise.
const DEFAULT_CONFIRMATIONS: usize = 10_000;
/// Couriers loading the server at once, one connection each.
const COURIERS: usize = 64;
/// Confirmations per batch in the first ingest run and in the signed one,
/// and inserts per flush in the sled baseline.
const BATCH: usize = 100;
/// Signed ingest in batches of 100 should reach this share of unsigned ingest
/// in batches of 100 (the signing issue's target).
const SIGNED_TARGET: f64 = 0.6;
/// How many times the echo baseline sends the bodies of the batches of 1: a longer run, a steadier figure.
const ECHO_ROUNDS: usize = 3;
/// Assignments each pull courier holds.
const PULL_HOLDING: usize = 50;
/// Runs at the start and at the end of the agent's `confirm`s compared.
const CONFIRM_WINDOW: usize = 1_000;
/// The most confirmations the agent's outbox is filled with.
const AGENT_OUTBOX_MAX: usize = 10_000;
/// The most `confirm`s run while the agent's daemon holds its store (handed to it).
const HANDED_MAX: usize = 1_000;
/// How long the daemon may take to send what was handed to it.
const DAEMON_DRAIN_LIMIT: Duration = Duration::from_secs(60);
const CUSTOMERS_PER_BRANCH: usize = 100;
/// Order quantities are 1 to this, in turn.
const MAX_QUANTITY: usize = 4;
const ITEM: &str = "TC-100";
const INGEST_BRANCH: &str = "B1";
const AGENT_BRANCH: &str = "B2";
const PULL_BRANCH: &str = "B3";
const AGENT_COURIER: &str = "handheld";
const CONFIRMATIONS_PATH: &str = "/api/v1/sync/confirmations";
const ASSIGNMENTS_PATH: &str = "/api/v1/sync/assignments";
/// Set to measure the server alone (a quicker run while working on it).
const SKIP_AGENT: &str = "HANDOVER_BENCH_SKIP_AGENT";
/// Set when this benchmark runs as the measuring parent of the agent's sync.
const MEASURE_CHILD: &str = "HANDOVER_BENCH_MEASURE_CHILD";
/// Starts the line on which that parent reports what it measured.
const MEASURED: &str = "measured:";
/// Idle for this long (under 5% of one core) counts as settled.
const SETTLE_WINDOW: Duration = Duration::from_millis(200);
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    if std::env::var_os(MEASURE_CHILD).is_some() {
        let command: Vec<String> = std::env::args().skip(1).collect();
        return measure_child(&command);
    }
    let n = count_from_env("HANDOVER_BENCH_CONFIRMATIONS", DEFAULT_CONFIRMATIONS);
    let postgres = match sync_postgres::chosen_server() {
        Ok(postgres) => postgres,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let mut problems = Vec::new();
    let agent = if postgres.is_some() {
        progress("on PostgreSQL the agent is not measured: the server on sled, pgbench, then the server on PostgreSQL");
        None
    } else if std::env::var_os(SKIP_AGENT).is_some() {
        progress(&format!("{SKIP_AGENT} is set: the agent's figures are skipped"));
        None
    } else {
        progress("building the agent (cargo build --release -p handover-agent)");
        build_agent().map_err(|err| problems.push(format!("the agent did not build: {err}"))).ok()
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let sled = measure_sled(&runtime, n, agent.as_deref(), &mut problems);
    print_figures(&sled);
    if let Some(admin_url) = postgres {
        let postgres = sync_postgres::measure(&runtime, n, &admin_url, &mut problems);
        sync_postgres::print_figures(&postgres, &sled);
    }
    report_problems(
        &problems,
        "every confirmation was accepted, and every confirmed receipt is delivered once, with its proof and its stock",
        "sync went wrong",
    )
}

/// Everything measured on sled: the setup, the baselines, the loads, the agent
/// when there is one, and the store read back.
fn measure_sled(
    runtime: &tokio::runtime::Runtime,
    n: usize,
    agent: Option<&Path>,
    problems: &mut Vec<String>,
) -> Figures {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("a temporary dir");
    let (data_dir, certs_dir) = (dir.path().join("data"), dir.path().join("certs"));
    let store = SledStore::open(&data_dir).expect("a fresh sled store opens");
    let world = World::new(n);
    progress(&format!(
        "importing 3 branches, {} customers, {} accounts",
        3 * CUSTOMERS_PER_BRANCH,
        world.accounts().len()
    ));
    let import_time = runtime.block_on(import_file(&store, &world.file()));
    let orders = world.orders();
    progress(&format!("placing {} orders (draft + confirm)", orders.len()));
    let placing = runtime.block_on(place_orders(&store, &dispatcher(DISPATCHER, "sync-bench"), orders));
    progress("planning them (one plan_pending)");
    let planning = runtime.block_on(plan_all(&store, world.receipt_count()));
    progress(&format!("baseline: raw sled inserts of {n} confirmations, a flush every {BATCH}"));
    let before_raw = Usage::now();
    let raw = raw_sled_inserts(n, BATCH, |seq| {
        let confirmation = delivered(DeliveryId::from_seq(seq), 1, 1 + (seq % MAX_QUANTITY as u64) as u32);
        serde_json::to_vec(&confirmation).expect("a confirmation encodes")
    });
    let raw_written = Usage::now().since(before_raw).written;

    progress("starting the server");
    let server = start_server(Arc::new(store.clone()), server_settings(&data_dir, &certs_dir));
    let ca = certs_dir.join(tls::CA_CERT);
    let ca_pem = std::fs::read(&ca).expect("the server made its development CA");
    progress(&format!("logging in {} couriers, and the first {COURIERS} again on keyed handhelds", 2 * COURIERS));
    let ingest_couriers = runtime.block_on(log_in(&server.url, &ca_pem, &world.ingest().couriers));
    let pull_couriers = runtime.block_on(log_in(&server.url, &ca_pem, &world.pull().couriers));
    let (keyed_couriers, keys): (Vec<Courier>, Vec<DeviceKey>) =
        runtime.block_on(log_in_keyed(&server.url, &ca_pem, &world.ingest().couriers)).into_iter().unzip();
    let holdings = runtime.block_on(holdings(&server.url, &ingest_couriers));
    let (unsigned_holdings, signed_holdings) = set_aside_for_signing(holdings);
    let work = IngestWork::new(&ingest_couriers, &unsigned_holdings, &[BATCH, 1]);
    let (batched_work, single_work) = (&work.runs[0], &work.runs[1]);
    let signed_work = SignedWork::new(&keyed_couriers, keys, &signed_holdings);
    let url = [server.url.clone()];

    let rounds = pull_rounds(n);
    progress(&format!("pull: {rounds} rounds of {COURIERS} couriers, {PULL_HOLDING} assignments each"));
    settle(runtime, &store);
    let pull = runtime.block_on(pull_load(&url, &pull_couriers, rounds, problems));
    progress(&format!("ingest: {} confirmations in batches of {BATCH}", IngestWork::count(batched_work)));
    settle(runtime, &store);
    let batched = runtime.block_on(sled_push_load(&server.url, &ingest_couriers, batched_work, &store, problems));
    progress(&format!(
        "ingest: {} signed confirmations in batches of {BATCH} from {COURIERS} keyed handhelds (signed beforehand \
         in {} s)",
        IngestWork::count(&signed_work.run),
        seconds(signed_work.signing)
    ));
    settle(runtime, &store);
    let signed = runtime.block_on(sled_push_load(&server.url, &keyed_couriers, &signed_work.run, &store, problems));
    progress(&format!("ingest: {} confirmations in batches of 1", IngestWork::count(single_work)));
    settle(runtime, &store);
    let single = runtime.block_on(sled_push_load(&server.url, &ingest_couriers, single_work, &store, problems));
    progress("baseline: JSON echo over TLS, batches of 1");
    settle(runtime, &store);
    let echo_server = start_echo(&certs_dir);
    let echo = runtime.block_on(echo_load(&echo_server.url, &ca_pem, single_work, problems));
    echo_server.stop(runtime);

    let mut sent = work.sent;
    sent.extend(signed_work.sent.iter().map(|(receipt, confirmation)| (receipt.clone(), confirmation.clone())));
    let agent_size = agent.and_then(|path| std::fs::metadata(path).ok()).map(|meta| meta.len());
    let agent_run = agent.and_then(|agent| {
        let handed = n.min(HANDED_MAX);
        let outbox = world.agent().receipts - handed;
        progress(&format!(
            "the agent: login, pull, {handed} confirms handed to its daemon, {outbox} confirm processes, one sync"
        ));
        run_agent(runtime, agent, &server.url, &ca, dir.path(), (handed, outbox), &mut sent, problems)
    });
    progress("stopping the server");
    server.stop(runtime);
    let receipts = runtime.block_on(all_receipts(&store));
    problems.extend(runtime.block_on(verify_store(&store, receipts, &world, &sent)));
    problems.extend(runtime.block_on(verify_signed(&store, &signed_work)));

    Figures {
        n,
        receipts: world.receipt_count(),
        import_time,
        placing,
        planning,
        raw,
        raw_written,
        pull,
        batched,
        signed,
        signing: signed_work.signing,
        single,
        echo,
        agent_size,
        agent: agent_run,
        run_time: started.elapsed(),
    }
}

/// Pull rounds per courier: a fifth of N pulls in all, at least two each.
fn pull_rounds(n: usize) -> usize {
    (n / 5).div_ceil(COURIERS).max(2)
}

/// Flushes the store, then waits (at most [`SETTLE_LIMIT`]) until this process
/// has been idle for [`SETTLE_WINDOW`]: sled goes on writing out and cleaning
/// its segments after a large setup or load, and the next load measured would
/// otherwise pay for it.
fn settle(runtime: &tokio::runtime::Runtime, store: &SledStore) {
    runtime.block_on(store.flush()).expect("the store flushes");
    wait_until_idle();
}

/// Waits (at most [`SETTLE_LIMIT`]) until this process has been idle for [`SETTLE_WINDOW`].
fn wait_until_idle() {
    let deadline = Instant::now() + SETTLE_LIMIT;
    while Instant::now() < deadline {
        let before = Usage::now();
        std::thread::sleep(SETTLE_WINDOW);
        if Usage::now().since(before).cpu < SETTLE_WINDOW / 20 {
            return;
        }
    }
    progress("still busy after the settle limit; measuring anyway");
}

fn progress(step: &str) {
    eprintln!("[sync bench] {step}");
}

/// One branch of the network, its couriers and how many receipts it gets.
struct Branch {
    id: &'static str,
    /// Its customers' branch #2 (never used: branch #1 covers every order).
    second: &'static str,
    couriers: Vec<String>,
    receipts: usize,
}

/// The generated network: B1 for the ingest couriers, B2 for the agent's
/// courier, B3 for the pull couriers.
struct World {
    branches: [Branch; 3],
}

impl World {
    /// Three ingest runs of `n` (batches of 100, signed batches of 100,
    /// batches of 1) and the agent's outbox.
    fn new(n: usize) -> Self {
        World::with(3 * n, n.min(AGENT_OUTBOX_MAX) + n.min(HANDED_MAX))
    }

    fn with(ingest_receipts: usize, agent_receipts: usize) -> Self {
        let couriers = |prefix: &str| (1..=COURIERS).map(|i| format!("{prefix}-{i:02}")).collect();
        World {
            branches: [
                Branch { id: INGEST_BRANCH, second: PULL_BRANCH, couriers: couriers("in"), receipts: ingest_receipts },
                Branch {
                    id: AGENT_BRANCH,
                    second: INGEST_BRANCH,
                    couriers: vec![AGENT_COURIER.into()],
                    receipts: agent_receipts,
                },
                Branch {
                    id: PULL_BRANCH,
                    second: INGEST_BRANCH,
                    couriers: couriers("pl"),
                    receipts: COURIERS * PULL_HOLDING,
                },
            ],
        }
    }

    fn ingest(&self) -> &Branch {
        &self.branches[0]
    }

    fn agent(&self) -> &Branch {
        &self.branches[1]
    }

    fn pull(&self) -> &Branch {
        &self.branches[2]
    }

    fn receipt_count(&self) -> usize {
        self.branches.iter().map(|b| b.receipts).sum()
    }

    fn customer(branch: &str, i: usize) -> String {
        format!("C-{branch}-{:03}", i % CUSTOMERS_PER_BRANCH)
    }

    /// The branch a customer's orders ship from.
    fn branch_of(customer: &CustomerId) -> &str {
        customer.as_str().split('-').nth(1).unwrap_or_default()
    }

    fn quantity(i: usize) -> u64 {
        1 + (i % MAX_QUANTITY) as u64
    }

    /// What a branch holds before planning: exactly what its orders need.
    fn stock(branch: &Branch) -> u64 {
        (0..branch.receipts).map(World::quantity).sum()
    }

    /// Each branch's orders, its customers in turn.
    fn orders(&self) -> Vec<RawOrder> {
        let mut orders = Vec::with_capacity(self.receipt_count());
        for branch in &self.branches {
            orders.extend((0..branch.receipts).map(|i| RawOrder {
                customer_id: Some(World::customer(branch.id, i)),
                item_id: Some(ITEM.into()),
                quantity: RawQuantity::Integer(i128::from(World::quantity(i))),
                shape_problems: Vec::new(),
            }));
        }
        orders
    }

    fn accounts(&self) -> Vec<NetworkAccount> {
        let mut accounts = vec![network_account(DISPATCHER, Role::Dispatcher, None)];
        for branch in &self.branches {
            accounts.extend(branch.couriers.iter().map(|c| network_account(c, Role::Expediter, Some(branch.id))));
        }
        accounts
    }

    /// The network file that `import::import_network` loads.
    fn file(&self) -> NetworkFile {
        let node = |id: &str, kind: NodeKind| network_node(id, kind, id.into());
        let mut nodes = vec![
            node("MFR", NodeKind::Manufacturer),
            node("MW", NodeKind::MasterWarehouse),
            node("S1", NodeKind::Seller),
        ];
        nodes.extend(self.branches.iter().map(|b| node(b.id, NodeKind::BranchWarehouse)));
        let customers = self.branches.iter().flat_map(|branch| {
            (0..CUSTOMERS_PER_BRANCH).map(move |i| NetworkCustomer {
                id: World::customer(branch.id, i),
                name: format!("Office {i} of {}", branch.id),
                branch_1: branch.id.into(),
                branch_2: branch.second.into(),
                seller_id: "S1".into(),
            })
        });
        NetworkFile {
            nodes,
            items: vec![NetworkItem {
                id: ITEM.into(),
                name: "Toner 100".into(),
                collectable: false,
                max_per_order: 20,
                discontinued: false,
            }],
            stock: self.branches.iter().map(|b| network_stock(b.id, ITEM, World::stock(b))).collect(),
            customers: customers.collect(),
            accounts: self.accounts(),
        }
    }
}

/// Plans every receipt; each must go to an expediter of its branch #1.
async fn plan_all(store: &dyn Store, receipts: usize) -> Duration {
    let start = Instant::now();
    let results = store.plan_pending(OffsetDateTime::now_utc()).await.expect("plan_pending succeeds");
    let time = start.elapsed();
    let assigned = results.iter().filter(|r| matches!(r, PlanResult::Planned(d) if d.assignee.is_some())).count();
    assert_eq!(assigned, receipts, "every receipt is planned and assigned to a courier");
    time
}

/// A `delivered` confirmation of the whole delivery, as a handheld captures it.
fn delivered(delivery_id: DeliveryId, version: u64, quantity: u32) -> Confirmation {
    Confirmation {
        position: Some(Position { lat: 52.2297, lon: 21.0122, accuracy_m: Some(12.0) }),
        ..Confirmation::delivered(delivery_id, version, quantity, "Front desk")
    }
}

/// A server on a thread of its own, under its own actix system, as the binary runs it.
struct Served {
    url: String,
    handle: ServerHandle,
    thread: JoinHandle<()>,
}

impl Served {
    /// Runs `serve` on a new thread with a listener bound to a free loopback
    /// port; `serve` sends back the server's URL and handle, then serves until stopped.
    fn start<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, mpsc::Sender<(String, ServerHandle)>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let (ready, address) = mpsc::channel();
        let thread = std::thread::spawn(move || actix_web::rt::System::new().block_on(serve(listener, ready)));
        let (url, handle) = address.recv().expect("the server thread says where it listens");
        Served { url, handle, thread }
    }

    /// Stops gracefully and waits for the thread (the real server flushes its store last).
    fn stop(self, runtime: &tokio::runtime::Runtime) {
        runtime.block_on(self.handle.stop(true));
        self.thread.join().expect("the server thread ends cleanly");
    }
}

/// The real server's settings for the benchmark: development certificates
/// made in `certs_dir`, login limits raised (129 handhelds log in from one
/// address), and the per-device push limit lifted (each courier pushes its
/// batches back to back, far above a handheld's pace).
fn server_settings(data_dir: &Path, certs_dir: &Path) -> Settings {
    Settings {
        data_dir: data_dir.to_owned(),
        certs_dir: certs_dir.to_owned(),
        auth: AuthSettings { login_attempts_per_minute_per_address: 10_000, ..AuthSettings::default() },
        limits: LimitSettings { pushes_per_minute_per_device: u32::MAX, ..LimitSettings::default() },
        ..Settings::default()
    }
}

/// The real server, on the benchmark's store.
fn start_server(store: Arc<dyn Store>, settings: Settings) -> Served {
    Served::start(move |listener, ready| async move {
        let running = startup::launch(settings, store, listener).await.expect("the server launches");
        ready.send((running.url().to_owned(), running.handle())).expect("the benchmark waits for the address");
        running.until_stopped().await.expect("the server stops cleanly");
    })
}

/// A trivial JSON echo with the real server's TLS configuration and worker defaults.
fn start_echo(certs_dir: &Path) -> Served {
    let config = tls::server_config(certs_dir).expect("the server's TLS configuration loads");
    Served::start(move |listener, ready| async move {
        let url = format!("https://{}", listener.local_addr().expect("a bound listener"));
        let server = HttpServer::new(|| App::new().route("/echo", web::post().to(echo)))
            .listen_rustls_0_23(listener, config)
            .expect("the echo server listens")
            .run();
        ready.send((url, server.handle())).expect("the benchmark waits for the address");
        server.await.expect("the echo server stops cleanly");
    })
}

async fn echo(batch: web::Json<ConfirmationBatch>) -> HttpResponse {
    HttpResponse::Ok().json(batch.into_inner())
}

fn tls_client(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("the development CA parses"))
        .timeout(Duration::from_secs(300))
        .build()
        .expect("a TLS client")
}

/// A courier logged in on a handheld of its own, with its own connection.
struct Courier {
    device_id: DeviceId,
    token: String,
    client: reqwest::Client,
}

/// Logs every courier in at once, each on its own connection, which stays open for its loads.
async fn log_in(url: &str, ca_pem: &[u8], usernames: &[String]) -> Vec<Courier> {
    let handhelds = usernames.iter().map(|username| (username.clone(), format!("bench-{username}"), None)).collect();
    log_in_handhelds(url, ca_pem, handhelds).await
}

/// Logs every courier in again, on a second handheld of its own that
/// registers an Ed25519 key: the signed load's couriers, each with its key.
/// The keys come from the usernames, so that a run is repeatable.
async fn log_in_keyed(url: &str, ca_pem: &[u8], usernames: &[String]) -> Vec<(Courier, DeviceKey)> {
    let keys: Vec<DeviceKey> = usernames
        .iter()
        .map(|username| DeviceKey::from_secret(Sha256::digest(format!("bench-key-{username}")).into()))
        .collect();
    let handhelds = usernames
        .iter()
        .zip(&keys)
        .map(|(username, key)| (username.clone(), format!("bench-{username}-keyed"), Some(key.public_key())))
        .collect();
    log_in_handhelds(url, ca_pem, handhelds).await.into_iter().zip(keys).collect()
}

/// Logs every handheld (username, device id, the key it registers) in at
/// once, each on its own connection.
async fn log_in_handhelds(url: &str, ca_pem: &[u8], handhelds: Vec<(String, String, Option<String>)>) -> Vec<Courier> {
    let tasks: Vec<_> = handhelds
        .into_iter()
        .map(|(username, device, device_key)| {
            let (client, url) = (tls_client(ca_pem), format!("{url}/api/v1/auth/login"));
            tokio::spawn(async move {
                let device_id = DeviceId::parse(device).expect("a well-formed device id");
                let request = LoginRequest {
                    username: username.clone(),
                    password: PASSWORD.into(),
                    device_id: Some(device_id),
                    device_key,
                };
                let response = client.post(&url).json(&request).send().await.expect("the server answers a login");
                let status = response.status();
                let body = response.text().await.expect("the login answer arrives");
                assert!(status.is_success(), "logging {username} in failed: {status} {body}");
                let answer: LoginResponse = serde_json::from_str(&body).expect("a login answer");
                Courier { device_id: answer.device_id, token: answer.access_token, client }
            })
        })
        .collect();
    let mut couriers = Vec::with_capacity(tasks.len());
    for task in tasks {
        couriers.push(task.await.expect("a login task panicked"));
    }
    couriers
}

/// One connection's share of a load: its requests, sent one after the other,
/// each as soon as the last one was answered. A `None` body is a GET.
struct Lane {
    client: reqwest::Client,
    token: String,
    bodies: Vec<Option<Vec<u8>>>,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// What one load measured; `answers` per lane, in request order.
struct Load {
    wall: Duration,
    /// Sorted, fastest first.
    latencies: Vec<Duration>,
    answers: Vec<Vec<Answer>>,
    /// What this process (server and generator alike) used meanwhile.
    used: Usage,
}

/// CPU time and bytes written to storage by this process, where the kernel tells.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu: Duration,
    written: Option<u64>,
}

impl Usage {
    fn now() -> Self {
        let cpu = getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |usage| {
            let micros = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().unsigned_abs()) + Duration::from_micros(tv.tv_usec().unsigned_abs())
            };
            micros(usage.user_time()) + micros(usage.system_time())
        });
        let written = std::fs::read_to_string("/proc/self/io").ok().and_then(|io| {
            io.lines().find_map(|line| line.strip_prefix("write_bytes:").and_then(|n| n.trim().parse().ok()))
        });
        Usage { cpu, written }
    }

    fn since(self, before: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(before.cpu),
            written: self.written.zip(before.written).map(|(after, before)| after.saturating_sub(before)),
        }
    }
}

impl Lane {
    async fn run(self, url: &str) -> (Vec<Duration>, Vec<Answer>) {
        let mut latencies = Vec::with_capacity(self.bodies.len());
        let mut answers = Vec::with_capacity(self.bodies.len());
        for body in self.bodies {
            let request = match body {
                Some(body) => self.client.post(url).header("content-type", "application/json").body(body),
                None => self.client.get(url),
            };
            let request = request.bearer_auth(&self.token);
            let start = Instant::now();
            let response = request.send().await.expect("the server answers");
            let status = response.status().as_u16();
            let body = response.bytes().await.expect("the answer arrives").to_vec();
            latencies.push(start.elapsed());
            answers.push(Answer { status, body });
        }
        (latencies, answers)
    }
}

/// Runs every lane at once, lane `i` against `urls[i % urls.len()]`: one
/// server, or the same number of couriers on each of several.
async fn drive(urls: &[String], lanes: Vec<Lane>) -> Load {
    let before = Usage::now();
    let start = Instant::now();
    let tasks: Vec<_> = lanes
        .into_iter()
        .zip(urls.iter().cycle())
        .map(|(lane, url)| {
            let url = url.clone();
            tokio::spawn(async move { lane.run(&url).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (lane_latencies, lane_answers) = task.await.expect("a load task panicked");
        latencies.extend(lane_latencies);
        answers.push(lane_answers);
    }
    let wall = start.elapsed();
    let used = Usage::now().since(before);
    latencies.sort();
    Load { wall, latencies, answers, used }
}

/// The same request from every courier, `rounds` times each.
fn lanes_of(couriers: &[Courier], rounds: usize) -> Vec<Lane> {
    couriers
        .iter()
        .map(|c| Lane { client: c.client.clone(), token: c.token.clone(), bodies: vec![None; rounds] })
        .collect()
}

/// Counts what went wrong in a load, to report the count and the first case.
struct Faults {
    what: String,
    count: usize,
    first: Option<String>,
}

impl Faults {
    fn new(what: impl Into<String>) -> Self {
        Faults { what: what.into(), count: 0, first: None }
    }

    fn add(&mut self, detail: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(detail());
        }
    }

    fn report(self, problems: &mut Vec<String>) {
        if let Some(first) = self.first {
            problems.push(format!("{}: {} wrong; the first: {first}", self.what, self.count));
        }
    }
}

/// What each ingest courier holds, read with the pulls a handheld makes (page
/// after page, while the server says more follow).
async fn holdings(url: &str, couriers: &[Courier]) -> Vec<Vec<Assignment>> {
    let tasks: Vec<_> = couriers
        .iter()
        .map(|courier| {
            let (client, token, url) =
                (courier.client.clone(), courier.token.clone(), format!("{url}{ASSIGNMENTS_PATH}"));
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let mut request = client.get(&url).bearer_auth(&token);
                    if let Some(cursor) = &cursor {
                        request = request.query(&[("since", cursor)]);
                    }
                    let response = request.send().await.expect("the server answers a pull");
                    let status = response.status();
                    let body = response.bytes().await.expect("the pull's answer arrives");
                    assert_eq!(status, 200, "a courier's first pull: {}", String::from_utf8_lossy(&body));
                    let changes: AssignmentChanges = serde_json::from_slice(&body).expect("an assignments answer");
                    held.extend(changes.assignments);
                    if !changes.more {
                        return held;
                    }
                    cursor = Some(changes.cursor);
                }
            })
        })
        .collect();
    let mut holdings = Vec::with_capacity(tasks.len());
    for task in tasks {
        holdings.push(task.await.expect("a pulling task panicked"));
    }
    holdings
}

/// One batch as pushed, with the ids it carries, to check the answer against.
struct Push {
    body: Vec<u8>,
    ids: Vec<String>,
}

/// The ingest runs, per courier: its deliveries shared out evenly between
/// the runs (the first runs get one more when they do not divide), each run
/// in batches of its own size; and which confirmation was sent for which receipt.
struct IngestWork {
    /// Per run, per courier, that courier's batches in order.
    runs: Vec<Vec<Vec<Push>>>,
    sent: HashMap<ReceiptId, String>,
}

impl IngestWork {
    fn new(couriers: &[Courier], holdings: &[Vec<Assignment>], batch_sizes: &[usize]) -> Self {
        let mut work = IngestWork { runs: batch_sizes.iter().map(|_| Vec::new()).collect(), sent: HashMap::new() };
        for (courier, held) in couriers.iter().zip(holdings) {
            let mut rest = &held[..];
            for (run, (&size, share)) in batch_sizes.iter().zip(shares(held.len(), batch_sizes.len())).enumerate() {
                let (part, after) = rest.split_at(share);
                rest = after;
                let pushes = work.pushes(courier, part, size);
                work.runs[run].push(pushes);
            }
        }
        work
    }

    fn pushes(&mut self, courier: &Courier, held: &[Assignment], size: usize) -> Vec<Push> {
        batches(&courier.device_id, held, size, &mut self.sent, |_, _| {})
    }

    /// Confirmations in one run.
    fn count(run: &[Vec<Push>]) -> usize {
        run.iter().flatten().map(|push| push.ids.len()).sum()
    }
}

/// A handheld's batches of `size` confirming what it `held`, in order, from
/// `device`; `finish` completes each confirmation before it is encoded (the
/// signed load numbers and signs it there). Which confirmation was sent for
/// which receipt goes into `sent`.
fn batches(
    device: &DeviceId,
    held: &[Assignment],
    size: usize,
    sent: &mut HashMap<ReceiptId, String>,
    mut finish: impl FnMut(&Assignment, &mut Confirmation),
) -> Vec<Push> {
    let mut queued = held.len();
    held.chunks(size)
        .map(|chunk| {
            let mut confirmations = Vec::with_capacity(chunk.len());
            for assignment in chunk {
                let mut confirmation =
                    delivered(assignment.delivery_id.clone(), assignment.version, assignment.quantity);
                finish(assignment, &mut confirmation);
                sent.insert(assignment.receipt_id.clone(), confirmation.confirmation_id.clone());
                confirmations.push(confirmation);
            }
            let ids = confirmations.iter().map(|c| c.confirmation_id.clone()).collect();
            let batch = ConfirmationBatch { device_id: device.clone(), confirmations, queued: Some(queued as u64) };
            queued -= chunk.len();
            Push { body: serde_json::to_vec(&batch).expect("a batch encodes"), ids }
        })
        .collect()
}

/// Each ingest courier's holding split in two: what the unsigned runs
/// confirm, and the last third of it, which its keyed handheld confirms signed.
fn set_aside_for_signing(holdings: Vec<Vec<Assignment>>) -> (Vec<Vec<Assignment>>, Vec<Vec<Assignment>>) {
    holdings
        .into_iter()
        .map(|mut held| {
            let signed = held.split_off(held.len() - held.len() / 3);
            (held, signed)
        })
        .unzip()
}

/// The signed load, per keyed handheld: its confirmations numbered from 1,
/// chained and signed in the order it pushes them, as the agent does, before
/// the load starts.
struct SignedWork {
    /// Per keyed handheld, its batches in order.
    run: Vec<Vec<Push>>,
    /// Which confirmation was sent for which receipt.
    sent: HashMap<ReceiptId, String>,
    /// Per delivery, the confirmation sent for it and its number in its handheld's chain.
    numbered: HashMap<DeliveryId, (String, u64)>,
    /// Each keyed handheld and how many confirmations it signed (numbers 1 to that).
    chains: Vec<(DeviceId, u64)>,
    /// Building and signing the records, one thread: the handhelds' cost, not timed in the load.
    signing: Duration,
}

impl SignedWork {
    fn new(couriers: &[Courier], keys: Vec<DeviceKey>, holdings: &[Vec<Assignment>]) -> Self {
        let mut work = SignedWork {
            run: Vec::with_capacity(couriers.len()),
            sent: HashMap::new(),
            numbered: HashMap::new(),
            chains: Vec::with_capacity(couriers.len()),
            signing: Duration::ZERO,
        };
        for ((courier, key), held) in couriers.iter().zip(keys).zip(holdings) {
            let device = &courier.device_id;
            let (mut seq, mut prev_hash) = (0u64, CHAIN_START.to_owned());
            let (numbered, signing) = (&mut work.numbered, &mut work.signing);
            let pushes = batches(device, held, BATCH, &mut work.sent, |assignment, confirmation| {
                let start = Instant::now();
                seq += 1;
                confirmation.device_seq = Some(seq);
                confirmation.prev_hash = Some(std::mem::take(&mut prev_hash));
                let text =
                    SignedRecord::of(confirmation, device).expect("a bench confirmation has a signed record").text();
                confirmation.device_signature = Some(key.sign(&text));
                prev_hash = sha256_hex(text.as_bytes());
                *signing += start.elapsed();
                numbered.insert(assignment.delivery_id.clone(), (confirmation.confirmation_id.clone(), seq));
            });
            work.run.push(pushes);
            work.chains.push((device.clone(), held.len() as u64));
        }
        work
    }
}

/// `total` shared out into `parts` as evenly as can be, the larger shares first.
fn shares(total: usize, parts: usize) -> impl Iterator<Item = usize> {
    (0..parts).map(move |part| total / parts + usize::from(part < total % parts))
}

/// What one run measured, for the table.
struct Run {
    /// Confirmations, or requests where each request is one item.
    items: usize,
    requests: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    used: Usage,
    /// Group-commit flushes during the run, and the writes they made durable.
    flushes: u64,
    waiters: u64,
    /// Transactions that applied the pushed batches (several batches share one).
    push_transactions: u64,
}

impl Run {
    fn of(load: &Load, items: usize) -> Self {
        Run {
            items,
            requests: load.latencies.len(),
            wall: load.wall,
            latencies: load.latencies.clone(),
            used: load.used,
            flushes: 0,
            waiters: 0,
            push_transactions: 0,
        }
    }

    fn rate(&self) -> f64 {
        self.items as f64 / self.wall.as_secs_f64()
    }

    fn latency(&self, quantile: f64) -> Duration {
        percentile(&self.latencies, quantile)
    }
}

fn sorted(mut durations: Vec<Duration>) -> Vec<Duration> {
    durations.sort();
    durations
}

/// The `quantile` (0 to 1) of sorted durations, by the nearest rank.
fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `rounds` pulls from every pull courier, spread over the servers at `urls`;
/// each must list its 50 open assignments.
async fn pull_load(urls: &[String], couriers: &[Courier], rounds: usize, problems: &mut Vec<String>) -> Run {
    let urls: Vec<String> = urls.iter().map(|url| format!("{url}{ASSIGNMENTS_PATH}")).collect();
    let load = drive(&urls, lanes_of(couriers, rounds)).await;
    let mut faults = Faults::new("pull answers");
    for answer in load.answers.iter().flatten() {
        let listed = serde_json::from_slice::<AssignmentChanges>(&answer.body).ok().map(|changes| {
            let open = changes
                .assignments
                .iter()
                .filter(|a| matches!(a.status, AssignmentStatus::Ready | AssignmentStatus::Upcoming))
                .count();
            (changes.assignments.len(), open)
        });
        if answer.status != 200 || listed != Some((PULL_HOLDING, PULL_HOLDING)) {
            faults.add(|| format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body)));
        }
    }
    faults.report(problems);
    Run::of(&load, load.latencies.len())
}

/// [`push_load`] on the sled server, with the group commit's flushes and the
/// push transactions counted.
async fn sled_push_load(
    url: &str,
    couriers: &[Courier],
    work: &[Vec<Push>],
    store: &SledStore,
    problems: &mut Vec<String>,
) -> Run {
    let ((flushes, waiters), groups) = (commit_counts(store), store.push_transactions());
    let run = push_load(&[url.to_owned()], couriers, work, problems).await;
    let (flushes_after, waiters_after) = commit_counts(store);
    Run {
        flushes: flushes_after - flushes,
        waiters: waiters_after - waiters,
        push_transactions: store.push_transactions() - groups,
        ..run
    }
}

/// Pushes every courier's batches at once, courier `i` to `urls[i % urls.len()]`;
/// every confirmation must come back `accepted`.
async fn push_load(urls: &[String], couriers: &[Courier], work: &[Vec<Push>], problems: &mut Vec<String>) -> Run {
    let lanes = couriers
        .iter()
        .zip(work)
        .map(|(c, pushes)| Lane {
            client: c.client.clone(),
            token: c.token.clone(),
            bodies: pushes.iter().map(|push| Some(push.body.clone())).collect(),
        })
        .collect();
    let urls: Vec<String> = urls.iter().map(|url| format!("{url}{CONFIRMATIONS_PATH}")).collect();
    let load = drive(&urls, lanes).await;
    let size = work.iter().flatten().map(|push| push.ids.len()).max().unwrap_or(0);
    let mut faults = Faults::new(format!("confirmations pushed in batches of up to {size}"));
    for (answers, pushes) in load.answers.iter().zip(work) {
        for (answer, push) in answers.iter().zip(pushes) {
            let results = serde_json::from_slice::<ConfirmationResults>(&answer.body).ok().map(|r| r.results);
            let Some(results) = results.filter(|results| answer.status == 200 && results.len() == push.ids.len())
            else {
                faults.add(|| format!("a batch answered {} {}", answer.status, String::from_utf8_lossy(&answer.body)));
                continue;
            };
            for (result, sent) in results.iter().zip(&push.ids) {
                if result.status != ResultStatus::Accepted || result.confirmation_id != *sent {
                    faults.add(|| format!("{sent} answered {result:?}"));
                }
            }
        }
    }
    faults.report(problems);
    Run::of(&load, IngestWork::count(work))
}

/// The batches of 1 again, [`ECHO_ROUNDS`] times over, to the echo endpoint,
/// each courier's on a new connection of its own (opened before the clock starts).
async fn echo_load(url: &str, ca_pem: &[u8], work: &[Vec<Push>], problems: &mut Vec<String>) -> Run {
    let url = [format!("{url}/echo")];
    let clients: Vec<reqwest::Client> = work.iter().map(|_| tls_client(ca_pem)).collect();
    // `count` bodies of every lane, its batches in turn, on that lane's connection.
    let lanes = |count: &dyn Fn(usize) -> usize| -> Vec<Lane> {
        work.iter()
            .zip(&clients)
            .map(|(pushes, client)| Lane {
                client: client.clone(),
                token: String::new(),
                bodies: pushes.iter().cycle().take(count(pushes.len())).map(|push| Some(push.body.clone())).collect(),
            })
            .collect()
    };
    drive(&url, lanes(&|_| 1)).await;
    let load = drive(&url, lanes(&|batches| ECHO_ROUNDS * batches)).await;
    let mut faults = Faults::new("echo answers");
    for (answers, pushes) in load.answers.iter().zip(work) {
        for (answer, push) in answers.iter().zip(pushes.iter().cycle()) {
            let echoed = serde_json::from_slice::<ConfirmationBatch>(&answer.body).ok();
            let sent = serde_json::from_slice::<ConfirmationBatch>(&push.body).ok();
            if answer.status != 200 || echoed.is_none() || echoed != sent {
                faults.add(|| format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body)));
            }
        }
    }
    faults.report(problems);
    Run::of(&load, load.latencies.len())
}

/// Besides `CARGO_PKG_*`, what cargo sets in the environment of a benchmark it runs.
const CARGO_SETS_FOR_TARGETS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// Builds the agent in release with the cargo that runs this benchmark, and
/// answers where cargo put it (so `CARGO_TARGET_DIR` and cargo's config count).
fn build_agent() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // What cargo set for this benchmark describes the server package, not the
    // build: left in, it reaches build scripts that watch it (ring's watches
    // CARGO_MANIFEST_DIR) and every run would rebuild them, then again from a shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || CARGO_SETS_FOR_TARGETS.contains(&name.as_ref()) {
            command.env_remove(name.as_ref());
        }
    }
    let output = command
        .args(["build", "--release", "-p", "handover-agent", "--message-format=json-render-diagnostics"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    if !output.status.success() {
        return Err(format!("cargo build exited with {}", output.status));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact" && message["target"]["name"] == "handover-agent")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo named no handover-agent executable".into())
}

/// What the real agent measured.
struct AgentRun {
    /// Each `confirm` process, start to exit; sorted.
    confirms: Vec<Duration>,
    /// Each `confirm` process run while the daemon held the store, start to
    /// exit (the daemon saved the capture); sorted.
    handed: Vec<Duration>,
    /// The median `confirm` of the first and of the last [`CONFIRM_WINDOW`] runs:
    /// does a fuller outbox slow it down?
    first_and_last: (Duration, Duration),
    drained: usize,
    drain: Duration,
    peak_rss_kib: u64,
}

/// The agent's courier on a fresh handheld: login, pull; `handed` `confirm`
/// processes while its daemon runs (they hand their capture to it, and it
/// syncs them), then, the daemon stopped, one `confirm` process per remaining
/// delivery, then one `sync --json` run under [`measure_child`].
#[allow(clippy::too_many_arguments)]
fn run_agent(
    runtime: &tokio::runtime::Runtime,
    agent: &Path,
    url: &str,
    ca: &Path,
    work: &Path,
    (handed, outbox): (usize, usize),
    sent: &mut HashMap<ReceiptId, String>,
    problems: &mut Vec<String>,
) -> Option<AgentRun> {
    let data = work.join("agent-data");
    let run = |args: &[&str], stdin: Option<&str>| -> Output {
        let mut child = Command::new(agent)
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the agent starts");
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(text.as_bytes()).expect("the agent reads its password");
        }
        child.wait_with_output().expect("the agent runs")
    };
    let failed = |what: &str, output: &Output| {
        format!("agent {what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim())
    };
    let ca = ca.display().to_string();
    let login = ["login", "--server", url, "--ca", &ca, "--username", AGENT_COURIER, "--password-stdin"];
    for (what, args, stdin) in [("login", &login[..], Some(PASSWORD)), ("pull", &["pull"][..], None)] {
        let output = run(args, stdin.map(|p| format!("{p}\n")).as_deref());
        if !output.status.success() {
            problems.push(failed(what, &output));
            return None;
        }
    }
    let listed = run(&["list", "--json"], None);
    let assignments: Vec<Assignment> = match serde_json::from_slice(&listed.stdout) {
        Ok(assignments) => assignments,
        Err(err) => {
            problems.push(format!("{} (or its output is not a list of assignments: {err})", failed("list", &listed)));
            return None;
        }
    };
    if assignments.len() != handed + outbox {
        problems.push(format!("the agent pulled {} assignments, not {}", assignments.len(), handed + outbox));
    }
    let (to_hand, to_confirm) = assignments.split_at(handed.min(assignments.len()));
    let mut faults = Faults::new("agent confirm runs");
    let mut confirm = |assignment: &Assignment| -> (Duration, bool) {
        let start = Instant::now();
        let output = run(&["confirm", assignment.delivery_id.as_str(), "--recipient", "Front desk"], None);
        let took = start.elapsed();
        let confirmation_id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let saved = output.status.success() && Uuid::try_parse(&confirmation_id).is_ok();
        if saved {
            sent.insert(assignment.receipt_id.clone(), confirmation_id);
        } else {
            faults.add(|| failed(&format!("confirm {}", assignment.delivery_id), &output));
        }
        (took, saved)
    };

    let mut daemon = Command::new(agent)
        .arg("--data-dir")
        .arg(&data)
        .args(["daemon", "--port", "0", "--interval", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the agent's daemon starts");
    let mut announced = String::new();
    if let Some(stdout) = daemon.stdout.as_mut() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut announced).ok();
    }
    let page = announced.trim().strip_prefix("handheld page on http://").unwrap_or_default().to_owned();
    let handed: Vec<Duration> = to_hand.iter().map(|assignment| confirm(assignment).0).collect();
    if !runtime.block_on(wait_for_daemon_outbox(&page)) {
        problems.push(format!("the agent's daemon at {page:?} did not send its {} captures", to_hand.len()));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();

    let mut confirms = Vec::with_capacity(to_confirm.len());
    let mut saved = 0u64;
    for (i, assignment) in to_confirm.iter().enumerate() {
        let (took, ok) = confirm(assignment);
        confirms.push(took);
        saved += u64::from(ok);
        if (i + 1) % 1000 == 0 {
            progress(&format!("  {} confirm processes", i + 1));
        }
    }
    faults.report(problems);
    let window = CONFIRM_WINDOW.min(confirms.len());
    let median = |runs: &[Duration]| percentile(&sorted(runs.to_vec()), 0.5);
    let first_and_last = (median(&confirms[..window]), median(&confirms[confirms.len() - window..]));
    confirms.sort();

    let exe = std::env::current_exe().expect("the benchmark knows its own path");
    let output = Command::new(exe)
        .env(MEASURE_CHILD, "1")
        .arg(agent)
        .arg("--data-dir")
        .arg(&data)
        .args(["sync", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("the measuring copy of the benchmark runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let measured: Vec<u64> = stdout
        .lines()
        .find_map(|line| line.strip_prefix(MEASURED))
        .map(|line| line.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let [peak_rss_kib, micros, 0] = measured[..] else {
        problems.push(format!("{} (measured: {measured:?})", failed("sync", &output)));
        return None;
    };
    let report: Option<serde_json::Value> = stdout.lines().find_map(|line| serde_json::from_str(line).ok());
    let drained = report.as_ref().and_then(|r| r["accepted"].as_u64()).unwrap_or(0) as usize;
    let all_taken = report
        .as_ref()
        .is_some_and(|r| r["accepted"].as_u64() == Some(saved) && r["rejected"] == 0 && r["queued"] == 0);
    if !all_taken {
        problems.push(format!("the agent's sync did not take all {saved} confirmations: {stdout}"));
    }
    Some(AgentRun {
        confirms,
        handed: sorted(handed),
        first_and_last,
        drained,
        drain: Duration::from_micros(micros),
        peak_rss_kib,
    })
}

/// Polls the daemon's `/status` at `host_port` (plain HTTP on loopback) until
/// its outbox is empty; false after [`DAEMON_DRAIN_LIMIT`].
async fn wait_for_daemon_outbox(host_port: &str) -> bool {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + DAEMON_DRAIN_LIMIT;
    while Instant::now() < deadline {
        let status = match client.get(format!("http://{host_port}/status")).send().await {
            Ok(response) => response.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        if status.is_some_and(|status| status["queued"] == 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Runs `command` as this process's only child and prints its output, then a
/// line `measured: PEAK_RSS_KIB MICROSECONDS EXIT_CODE`. The peak is the
/// child's own: `RUSAGE_CHILDREN` covers waited-for children, and there is one.
fn measure_child(command: &[String]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("{MEASURE_CHILD} is set but no command was given");
        return ExitCode::FAILURE;
    };
    let start = Instant::now();
    let output = match Command::new(program).args(args).env_remove(MEASURE_CHILD).stdin(Stdio::null()).output() {
        Ok(output) => output,
        Err(err) => {
            eprintln!("cannot run {program}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = start.elapsed();
    let peak_kib = getrusage(UsageWho::RUSAGE_CHILDREN).map(|usage| usage.max_rss()).unwrap_or(-1);
    let mut stdout = std::io::stdout().lock();
    let written =
        stdout.write_all(&output.stdout).and_then(|()| std::io::stderr().write_all(&output.stderr)).and_then(|()| {
            writeln!(stdout, "\n{MEASURED} {peak_kib} {} {}", elapsed.as_micros(), output.status.code().unwrap_or(-1))
        });
    if written.is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Checks the store after the runs against every receipt read back from it:
/// every receipt a confirmation was sent for is delivered with that
/// confirmation's proof, no other is, and each branch's stock went down by
/// exactly what was handed over.
async fn verify_store(
    store: &dyn Store,
    receipts: Vec<Receipt>,
    world: &World,
    sent: &HashMap<ReceiptId, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if receipts.len() != world.receipt_count() {
        problems.push(format!("the store holds {} receipts, not {}", receipts.len(), world.receipt_count()));
    }
    let mut faults = Faults::new("receipts after the runs");
    let mut handed_over: HashMap<&str, u64> = HashMap::new();
    let mut reserved: HashMap<&str, u64> = HashMap::new();
    for receipt in &receipts {
        let expected = sent.get(&receipt.receipt_id);
        let proof = receipt.proof.as_ref().map(|p| &p.confirmation_id);
        let branch = World::branch_of(&receipt.customer_id);
        match (expected, receipt.delivered) {
            (Some(id), true) if proof == Some(id) => {
                *handed_over.entry(branch).or_default() += u64::from(receipt.quantity)
            }
            (None, false) if proof.is_none() => *reserved.entry(branch).or_default() += u64::from(receipt.quantity),
            _ => faults.add(|| {
                format!("{} sent {expected:?}, delivered {}, proof of {proof:?}", receipt.receipt_id, receipt.delivered)
            }),
        }
    }
    faults.report(&mut problems);
    for branch in &world.branches {
        let node: NodeId = id(branch.id.into());
        let stock = store.node_stock(&node).await.expect("a branch's stock");
        let balance = stock.iter().find(|(item, _)| item.as_str() == ITEM).map(|(_, balance)| *balance);
        let on_hand = World::stock(branch) - handed_over.get(branch.id).copied().unwrap_or(0);
        let held = reserved.get(branch.id).copied().unwrap_or(0);
        // No balance is none on hand and none reserved, as the stores read it:
        // a branch counted at zero (the agent's, on PostgreSQL) has none.
        if balance.map_or((0, 0), |b| (b.on_hand, b.reserved)) != (on_hand, held) {
            problems.push(format!(
                "stock of {ITEM} at {}: {balance:?}, expected {on_hand} on hand and {held} reserved",
                branch.id
            ));
        }
    }
    problems
}

/// Checks the signed load in the store: each signed confirmation's attempt
/// kept its signed record, under the number it was sent with, and each keyed
/// handheld's chain holds every number it sent, without a gap. (That its
/// receipt is delivered with its proof, [`verify_store`] checks.)
async fn verify_signed(store: &dyn Store, work: &SignedWork) -> Vec<String> {
    let mut problems = Vec::new();
    let mut faults = Faults::new("signed confirmations after the runs");
    for (delivery_id, (confirmation_id, seq)) in &work.numbered {
        let delivery = store.delivery(delivery_id).await.expect("a delivery reads");
        let kept = delivery
            .as_ref()
            .and_then(|delivery| delivery.attempts.iter().find(|a| &a.confirmation_id == confirmation_id))
            .map(|attempt| attempt.signed.as_ref().map(|signed| signed.device_seq));
        if kept != Some(Some(*seq)) {
            faults.add(|| format!("{delivery_id}: {confirmation_id} sent as number {seq}, its attempt kept {kept:?}"));
        }
    }
    faults.report(&mut problems);
    let mut faults = Faults::new("keyed handhelds' chains after the runs");
    for (device, signed) in &work.chains {
        let chain = store.device_chain(device).await.expect("a device chain reads");
        let received = chain.map(|chain| chain.received);
        let expected: Vec<(u64, u64)> = (*signed > 0).then_some((1, *signed)).into_iter().collect();
        if received.as_ref() != Some(&expected) {
            faults.add(|| format!("{device} sent 1 to {signed}, its chain received {received:?}"));
        }
    }
    faults.report(&mut problems);
    problems
}

struct Figures {
    n: usize,
    receipts: usize,
    import_time: Duration,
    placing: Setup,
    planning: Duration,
    raw: Duration,
    raw_written: Option<u64>,
    pull: Run,
    batched: Run,
    /// Signed, in batches of 100, from the keyed handhelds.
    signed: Run,
    /// What signing the signed load took beforehand, on one thread.
    signing: Duration,
    single: Run,
    echo: Run,
    agent_size: Option<u64>,
    agent: Option<AgentRun>,
    /// Everything after building the agent.
    run_time: Duration,
}

/// One line of the final table.
struct Row {
    figure: String,
    value: String,
    baseline: String,
    ratio: String,
    target: &'static str,
    /// Whether this run met the target; `None` where there is none, or nothing was measured.
    met: Option<bool>,
}

impl Row {
    fn new(figure: impl Into<String>, value: impl Into<String>) -> Self {
        Row {
            figure: figure.into(),
            value: value.into(),
            baseline: String::new(),
            ratio: String::new(),
            target: "",
            met: None,
        }
    }

    fn against(self, baseline: impl Into<String>, ratio: f64) -> Self {
        Row { baseline: baseline.into(), ratio: format!("{:.1}%", 100.0 * ratio), ..self }
    }

    fn target(self, target: &'static str, met: bool) -> Self {
        Row { target, met: Some(met), ..self }
    }
}

fn per_second(rate: f64, unit: &str) -> String {
    format!("{} {unit}/s", grouped(rate as u64))
}

fn millis(time: Duration) -> String {
    format!("{:.1}", time.as_secs_f64() * 1000.0)
}

fn latencies(run: &Run) -> String {
    format!("{} / {} ms", millis(run.latency(0.50)), millis(run.latency(0.99)))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_figures(f: &Figures) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let kernel =
        Command::new("uname").arg("-r").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    println!();
    println!(
        "machine: {cores} cores, Linux {}; {} s from the agent built to the figures",
        kernel.as_deref().unwrap_or("?"),
        seconds(f.run_time)
    );
    println!(
        "setup: {} receipts; import {} s (argon2 hashing); orders placed in {} s ({:.1} durable writes per flush); \
         planned in {} s",
        grouped(f.receipts as u64),
        seconds(f.import_time),
        seconds(f.placing.time),
        f.placing.waiters as f64 / f.placing.flushes.max(1) as f64,
        seconds(f.planning)
    );
    if let Some(written) = f.raw_written {
        println!("  raw sled: {:.1} KiB written per record", written as f64 / 1024.0 / f.n as f64);
    }
    println!("  (cpu: this process's, server and generator together, as a share of all cores)");
    for (name, run) in [
        ("pull", &f.pull),
        ("batches of 100", &f.batched),
        ("signed, batches of 100", &f.signed),
        ("batches of 1", &f.single),
        ("echo", &f.echo),
    ] {
        let mut notes = vec![
            format!("{} items in {} requests", grouped(run.items as u64), grouped(run.requests as u64)),
            format!("{} s", seconds(run.wall)),
            format!("cpu {:.0}%", 100.0 * run.used.cpu.as_secs_f64() / run.wall.as_secs_f64() / cores as f64),
        ];
        if let Some(written) = run.used.written {
            notes.push(format!("{:.1} KiB written per item", written as f64 / 1024.0 / run.items.max(1) as f64));
        }
        if run.flushes > 0 {
            notes.push(format!(
                "{} flushes, {:.1} batches per flush",
                grouped(run.flushes),
                run.waiters as f64 / run.flushes as f64
            ));
        }
        if run.push_transactions > 0 {
            notes.push(format!(
                "{} transactions, {:.1} batches per transaction",
                grouped(run.push_transactions),
                run.requests as f64 / run.push_transactions as f64
            ));
        }
        println!("  {name}: {}", notes.join(", "));
    }
    println!(
        "  (signed: the records were built and signed beforehand, {} us each on one thread, not timed in the load)",
        (f.signing.as_secs_f64() * 1e6 / f.signed.items.max(1) as f64).round()
    );

    let raw = f.n as f64 / f.raw.as_secs_f64();
    let echo = f.echo.rate();
    let batched_ratio = f.batched.rate() / raw;
    let signed_ratio = f.signed.rate() / f.batched.rate();
    let single_ratio = f.single.rate() / echo;
    let pull_ratio = f.pull.rate() / echo;
    let mut rows = vec![
        Row::new("durable ingest, batches of 100", per_second(f.batched.rate(), "conf"))
            .against(format!("raw sled {}", per_second(raw, "rec")), batched_ratio)
            .target(">= 20,000 conf/s and >= 25%", f.batched.rate() >= 20_000.0 && batched_ratio >= 0.25),
        Row::new("  batch latency p50 / p99", latencies(&f.batched)),
        Row::new("durable ingest, signed, batches of 100", per_second(f.signed.rate(), "conf"))
            .against(format!("unsigned {}", per_second(f.batched.rate(), "conf")), signed_ratio)
            .target(">= 60% of unsigned", signed_ratio >= SIGNED_TARGET),
        Row::new("  batch latency p50 / p99", latencies(&f.signed)),
        Row::new("durable ingest, batches of 1", per_second(f.single.rate(), "conf"))
            .against(format!("echo {}", per_second(echo, "req")), single_ratio)
            .target(">= 25% of echo", single_ratio >= 0.25),
        Row::new("  batch latency p50 / p99", latencies(&f.single)),
        Row::new(format!("pull, {PULL_HOLDING} assignments each"), per_second(f.pull.rate(), "req"))
            .against(format!("echo {}", per_second(echo, "req")), pull_ratio)
            .target(">= 50% of echo", pull_ratio >= 0.5),
        Row::new("  pull latency p50 / p99", latencies(&f.pull)),
        Row::new("raw sled, a flush every 100 (baseline)", per_second(raw, "rec")),
        Row::new("JSON echo over TLS, batches of 1 (baseline)", per_second(echo, "req")),
        Row::new("  echo latency p50 / p99", latencies(&f.echo)),
    ];
    if let Some(size) = f.agent_size {
        rows.push(
            Row::new("agent binary (release)", format!("{:.2} MiB", mib(size))).target("<= 8 MiB", mib(size) <= 8.0),
        );
    }
    if let Some(agent) = &f.agent {
        let p99 = percentile(&agent.confirms, 0.99);
        rows.push(
            Row::new(
                format!("agent confirm p50 / p99 ({} runs)", grouped(agent.confirms.len() as u64)),
                format!("{} / {} ms", millis(percentile(&agent.confirms, 0.5)), millis(p99)),
            )
            .target("p99 < 10 ms", p99 < Duration::from_millis(10)),
        );
        if !agent.handed.is_empty() {
            rows.push(Row::new(
                format!("  confirm handed to the daemon ({} runs)", grouped(agent.handed.len() as u64)),
                format!("{} / {} ms", millis(percentile(&agent.handed, 0.5)), millis(percentile(&agent.handed, 0.99))),
            ));
        }
        let window = CONFIRM_WINDOW.min(agent.confirms.len());
        rows.push(Row::new(
            format!("  confirm p50, first / last {} runs", grouped(window as u64)),
            format!("{} / {} ms", millis(agent.first_and_last.0), millis(agent.first_and_last.1)),
        ));
        rows.push(Row::new(
            format!("agent sync draining {}", grouped(agent.drained as u64)),
            format!("{} s", seconds(agent.drain)),
        ));
        rows.push(Row::new(
            "  agent sync rate (push, then pull)",
            per_second(agent.drained as f64 / agent.drain.as_secs_f64(), "conf"),
        ));
        let rss = mib(agent.peak_rss_kib * 1024);
        rows.push(
            Row::new(format!("agent peak RSS syncing {}", grouped(agent.drained as u64)), format!("{rss:.1} MiB"))
                .target("< 20 MiB syncing 10,000", rss < 20.0),
        );
    }
    println!();
    println!("{:<44} {:>18}  {:<24} {:>7}  {:<28} met", "figure", "value", "baseline", "ratio", "target");
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "{:<44} {:>18}  {:<24} {:>7}  {:<28} {met}",
            row.figure, row.value, row.baseline, row.ratio, row.target
        );
    }
    println!();
    println!(
        "Timings are measured on a shared machine and never asserted; only the checks below decide the exit code."
    );
}
