//! The sync benchmark on PostgreSQL (`HANDOVER_BENCH_STORE=postgres`), run
//! after the sled figures in the same process, so that both and their
//! baselines come from one run on one machine.
//!
//! First the baselines, on a scratch database of the PostgreSQL server that
//! `HANDOVER_TEST_POSTGRES` names: pgbench's TPC-B-like load (`pgbench -i -s
//! 10`, `CHECKPOINT`, then `pgbench -c 8 -j 2 -T 20`), and how long one
//! durable commit takes (one client committing one-row inserts, with the
//! WAL flush waited for and without). The commit is timed again after the
//! loads: the disk's flush latency on this shared machine moves with what
//! else writes to it.
//! Then the network of the sled run in a fresh scratch database there, with
//! four runs' worth of deliveries at the ingest branch (N per run) and none at
//! the agent's branch. Two server instances serve that database, as two
//! `handover-server serve` processes would: each `startup::launch`ed with a
//! `PgStore` pool of its own (`PgOptions::new`, 16 connections), the same
//! settings (so one JWT key), no proxy in front. Every courier logs in on the
//! first. Each load runs twice, all couriers on the first instance, then half
//! of them on each: pull; durable ingest in batches of 100; durable ingest in
//! batches of 1. PostgreSQL commits synchronously, so a push is answered only
//! once its transaction is on disk.
//!
//! Before each load the benchmark waits for its own process to idle, runs
//! `CHECKPOINT` (each load then starts with no dirty pages and pays the same
//! full-page writes) and opens the connections the load will use. During the
//! load it samples `pg_stat_activity` and `pg_locks` every 20 ms from the
//! admin database (so that the probe is not counted in the scratch
//! database's figures): what each connection of the scratch database is
//! doing (executing, waiting for a row lock, for the WAL, or idle in a
//! transaction while the server computes), in which statement, and what the
//! holder of a row lock that others wait for is doing meanwhile. After the
//! load, and PostgreSQL's statistics delay (11 s), it reads the deltas of
//! `pg_stat_database` and `pg_stat_wal`, of the CPU time of every `postgres`
//! process (`/proc`) and of the machine's (`/proc/stat`): what bounds each
//! load, by the database's own account. `pg_stat_statements` is not used: it
//! needs `shared_preload_libraries`, which needs a restart of the server.

use std::{
    collections::HashMap,
    future::Future,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use handover_server::{
    config::StoreBackend,
    domain::{
        access::Principal,
        orders::{RawOrder, Receipt, DRAFT_TTL},
    },
    import, orders,
    store::{
        postgres::{PgOptions, PgStore, ScratchDatabase, TEST_SERVER_VARIABLE},
        ReceiptQuery, Store,
    },
    tls,
};
use tokio::{runtime::Runtime, task::JoinHandle};
use tokio_postgres::{Client, NoTls};

use super::{
    drive, holdings, lanes_of, latencies, log_in, millis, per_second, plan_all, progress, pull_load, pull_rounds,
    push_load, server_settings, start_server, verify_store, wait_until_idle, Courier, Figures, IngestWork, Push, Run,
    Usage, World, BATCH, COURIERS, CUSTOMERS_PER_BRANCH, PULL_HOLDING,
};
use crate::common::{dispatcher, grouped, seconds, CONCURRENT_WRITERS, DISPATCHER};

/// Chooses the backend: `sled` (the default) or `postgres`.
const STORE_CHOICE: &str = "HANDOVER_BENCH_STORE";
/// The ingest runs on PostgreSQL, by batch size: batches of 100 on one
/// instance, then on two; batches of 1 on one, then on two.
const RUNS: [usize; 4] = [BATCH, BATCH, 1, 1];
/// pgbench's scale (10 branches, 1,000,000 accounts), clients, threads and seconds.
const PGBENCH_SCALE: &str = "10";
const PGBENCH_CLIENTS: &str = "8";
const PGBENCH_THREADS: &str = "2";
const PGBENCH_SECONDS: &str = "20";
/// One-row commits timed per commit-latency probe.
const COMMIT_PROBES: usize = 200;
/// How often `pg_stat_activity` is sampled during a load.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Longer than PostgreSQL 15's backends may keep what they counted before
/// they publish it once idle (`PGSTAT_IDLE_INTERVAL`, 10 s): the counters
/// read after it are complete.
const STATS_FLUSH: Duration = Duration::from_secs(11);
/// Receipts read per `Store::receipts` page when the store is read back.
const PAGE: usize = 10_000;
/// Statement text shown per sampled connection state.
const STATEMENT_CHARS: usize = 64;
/// Connection states listed per load, the most frequent first.
const STATES_SHOWN: usize = 10;
/// The target: confirmations per second in batches of 100, on one instance.
const INGEST_TARGET: f64 = 10_000.0;

/// The admin URL of the PostgreSQL server to measure, when
/// `HANDOVER_BENCH_STORE` is `postgres`; `None` for sled.
pub(super) fn chosen_server() -> Result<Option<String>, String> {
    let choice = std::env::var(STORE_CHOICE).unwrap_or_default();
    match choice.trim() {
        "" | "sled" => Ok(None),
        "postgres" => {
            std::env::var(TEST_SERVER_VARIABLE).ok().filter(|url| !url.trim().is_empty()).map(Some).ok_or_else(|| {
                format!(
                    "{STORE_CHOICE}=postgres needs {TEST_SERVER_VARIABLE}: the PostgreSQL server, as the URL of a \
                     database to connect to while making others (postgres://postgres@127.0.0.1:5432/postgres)"
                )
            })
        }
        other => Err(format!("{STORE_CHOICE} is sled or postgres, not {other:?}")),
    }
}

/// Everything measured on PostgreSQL.
pub(super) struct PgFigures {
    /// The server's version and the settings that bear on durable ingest.
    server: String,
    pgbench: Result<Pgbench, String>,
    /// Commit latency before the loads, and after them.
    commits: [Result<CommitLatency, String>; 2],
    receipts: usize,
    import_time: Duration,
    placing: Duration,
    planning: Duration,
    pull: Pair,
    batched: Pair,
    single: Pair,
    run_time: Duration,
}

/// One kind of load, on one instance and then on two.
struct Pair {
    one: Measured,
    two: Measured,
}

/// One load, as the generator saw it and as the database did.
struct Measured {
    run: Run,
    db: DbActivity,
}

struct Pgbench {
    tps: f64,
    latency_ms: Option<f64>,
    init: Duration,
}

/// The median time of a one-row insert, each its own transaction, from one client.
struct CommitLatency {
    durable: Duration,
    /// With `synchronous_commit = off`: everything but the wait for the WAL flush.
    unflushed: Duration,
}

/// Measures the baseline and the server on PostgreSQL (see the module's docs).
pub(super) fn measure(runtime: &Runtime, n: usize, admin_url: &str, problems: &mut Vec<String>) -> PgFigures {
    let started = Instant::now();
    progress(&format!(
        "baseline: pgbench -i -s {PGBENCH_SCALE}, then pgbench -c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS} \
         -T {PGBENCH_SECONDS}, on a scratch database"
    ));
    let baseline = ScratchDatabase::create(admin_url, None);
    let pgbench = baseline.as_ref().map_err(Clone::clone).and_then(|db| pgbench(runtime, admin_url, db));
    if let Err(err) = &pgbench {
        progress(&format!("the pgbench baseline failed: {err}"));
    }
    let commit_latency = || match &baseline {
        Ok(db) => runtime.block_on(commit_latency(db.url())),
        Err(err) => Err(err.clone()),
    };
    let commits_before = commit_latency();

    let db = ScratchDatabase::create(admin_url, None).expect("a scratch database for the benchmark");
    let options = PgOptions::new(db.url());
    let store = runtime.block_on(PgStore::open(&options)).expect("the PostgreSQL store opens");
    let server = runtime.block_on(describe_server(admin_url));
    let world = World::with(RUNS.len() * n, 0);
    progress(&format!(
        "PostgreSQL: importing 3 branches, {} customers, {} accounts",
        3 * CUSTOMERS_PER_BRANCH,
        world.accounts().len()
    ));
    let import_started = Instant::now();
    runtime.block_on(import::import_network(&store, &world.file())).expect("the generated network imports");
    let import_time = import_started.elapsed();
    let orders = world.orders();
    progress(&format!("PostgreSQL: placing {} orders (draft + confirm)", orders.len()));
    let placing = runtime.block_on(place_orders(&store, &dispatcher(DISPATCHER, "sync-bench"), orders));
    progress("PostgreSQL: planning them (one plan_pending)");
    let planning = runtime.block_on(plan_all(&store, world.receipt_count()));

    let dir = tempfile::tempdir().expect("a temporary dir");
    let (data_dir, certs_dir) = (dir.path().join("data"), dir.path().join("certs"));
    // Both instances get the same settings, data dir included: the JWT key
    // that the first makes there signs for both, as the one key that every
    // instance shares does in production (this leaves the key's source to
    // the server's own code).
    let mut settings = server_settings(&data_dir, &certs_dir);
    settings.store.backend = StoreBackend::Postgres;
    progress("PostgreSQL: starting two server instances on the database, each with a pool of its own");
    let first = start_server(Arc::new(store.clone()), settings.clone());
    let second_store = runtime.block_on(PgStore::open(&options)).expect("the second instance's store opens");
    let second = start_server(Arc::new(second_store), settings);
    let ca_pem = std::fs::read(certs_dir.join(tls::CA_CERT)).expect("the server made its development CA");
    progress(&format!("PostgreSQL: logging in {} couriers", 2 * COURIERS));
    let ingest_couriers = runtime.block_on(log_in(&first.url, &ca_pem, &world.ingest().couriers));
    let pull_couriers = runtime.block_on(log_in(&first.url, &ca_pem, &world.pull().couriers));
    let holdings = runtime.block_on(holdings(&first.url, &ingest_couriers));
    let work = IngestWork::new(&ingest_couriers, &holdings, &RUNS);

    let one = [first.url.clone()];
    let two = [first.url.clone(), second.url.clone()];
    let probe = Probe { admin_url, database: db.name() };
    // What the setup counted reaches the statistics before the first load's are read.
    std::thread::sleep(STATS_FLUSH);
    let rounds = pull_rounds(n);
    let pulls = format!("pull, {rounds} rounds of {COURIERS} couriers, {PULL_HOLDING} assignments each");
    let pull = Pair {
        one: measured(runtime, &probe, &pulls, &one, &pull_couriers, pull_load(&one, &pull_couriers, rounds, problems)),
        two: measured(runtime, &probe, &pulls, &two, &pull_couriers, pull_load(&two, &pull_couriers, rounds, problems)),
    };
    let batched = Pair {
        one: ingest(runtime, &probe, &one, &ingest_couriers, &work.runs[0], problems),
        two: ingest(runtime, &probe, &two, &ingest_couriers, &work.runs[1], problems),
    };
    let single = Pair {
        one: ingest(runtime, &probe, &one, &ingest_couriers, &work.runs[2], problems),
        two: ingest(runtime, &probe, &two, &ingest_couriers, &work.runs[3], problems),
    };

    progress("PostgreSQL: stopping the servers");
    first.stop(runtime);
    second.stop(runtime);
    let commits_after = commit_latency();
    drop(baseline);
    let receipts = runtime.block_on(every_receipt(&store));
    problems.extend(runtime.block_on(verify_store(&store, receipts, &world, &work.sent)));
    PgFigures {
        server,
        pgbench,
        commits: [commits_before, commits_after],
        receipts: world.receipt_count(),
        import_time,
        placing,
        planning,
        pull,
        batched,
        single,
        run_time: started.elapsed(),
    }
}

/// One ingest run of the prepared work, measured.
fn ingest(
    runtime: &Runtime,
    probe: &Probe<'_>,
    urls: &[String],
    couriers: &[Courier],
    run: &[Vec<Push>],
    problems: &mut Vec<String>,
) -> Measured {
    let size = run.iter().flatten().map(|push| push.ids.len()).max().unwrap_or(0);
    let what = format!("ingest, {} confirmations in batches of {size}", grouped(IngestWork::count(run) as u64));
    measured(runtime, probe, &what, urls, couriers, push_load(urls, couriers, run, problems))
}

fn instances(urls: &[String]) -> &'static str {
    if urls.len() == 1 {
        "one instance"
    } else {
        "two instances"
    }
}

/// Runs `load` from a settled start with the database probed (see the module's docs).
fn measured(
    runtime: &Runtime,
    probe: &Probe<'_>,
    what: &str,
    urls: &[String],
    couriers: &[Courier],
    load: impl Future<Output = Run>,
) -> Measured {
    progress(&format!("PostgreSQL: {what}, {}", instances(urls)));
    wait_until_idle();
    runtime.block_on(async {
        if let Err(err) = probe.checkpoint().await {
            progress(&format!("CHECKPOINT failed ({err}); measuring anyway"));
        }
        warm_up(urls, couriers).await;
        let sampling = probe.start().await;
        let run = load.await;
        let db = sampling.finish().await;
        Measured { run, db }
    })
}

/// Opens each courier's connection to the instance it is about to load (a
/// request to `/healthz`), so that no load pays for TLS handshakes.
async fn warm_up(urls: &[String], couriers: &[Courier]) {
    let urls: Vec<String> = urls.iter().map(|url| format!("{url}/healthz")).collect();
    let load = drive(&urls, lanes_of(couriers, 1)).await;
    for answer in load.answers.iter().flatten() {
        assert_eq!(answer.status, 200, "a health check: {}", String::from_utf8_lossy(&answer.body));
    }
}

/// Where the probe connects (the admin database, so that its queries are not
/// counted in the figures of the database it watches) and what it watches.
struct Probe<'a> {
    admin_url: &'a str,
    database: &'a str,
}

impl Probe<'_> {
    async fn connect(&self) -> Result<Client, String> {
        let (client, connection) =
            tokio_postgres::connect(self.admin_url, NoTls).await.map_err(|err| err.to_string())?;
        // Ends when the client is dropped.
        tokio::spawn(connection);
        Ok(client)
    }

    async fn checkpoint(&self) -> Result<(), String> {
        self.connect().await?.batch_execute("CHECKPOINT").await.map_err(|err| err.to_string())
    }

    /// Reads the counters and the CPU clocks, and starts sampling.
    async fn start(&self) -> Sampling {
        let client = self.connect().await.ok().map(Arc::new);
        let before = match &client {
            Some(client) => Counters::read(client, self.database).await,
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample(client.clone(), self.database.to_owned(), Arc::clone(&stop)));
        Sampling {
            client,
            database: self.database.to_owned(),
            before,
            cpu: CpuClock::now(),
            started: Instant::now(),
            stop,
            sampler,
        }
    }
}

/// A load being probed.
struct Sampling {
    client: Option<Arc<Client>>,
    database: String,
    before: Option<Counters>,
    cpu: CpuClock,
    started: Instant,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<Samples>,
}

impl Sampling {
    async fn finish(self) -> DbActivity {
        let (wall, cpu) = (self.started.elapsed(), CpuClock::now());
        self.stop.store(true, Relaxed);
        let samples = self.sampler.await.unwrap_or_default();
        // Idle backends publish what they counted within [`STATS_FLUSH`]; so
        // the next load's counters start from these.
        tokio::time::sleep(STATS_FLUSH).await;
        let after = match &self.client {
            Some(client) => Counters::read(client, &self.database).await,
            None => None,
        };
        let machine = cpu.machine.since(self.cpu.machine);
        DbActivity {
            wall,
            counters: self.before.zip(after).map(|(before, after)| after.since(before)),
            process_cpu: cpu.process.since(self.cpu.process).cpu,
            postgres_cpu: cpu_time(
                cpu.postgres
                    .iter()
                    .map(|(pid, ticks)| ticks.saturating_sub(self.cpu.postgres.get(pid).copied().unwrap_or(0))),
            ),
            machine_busy: machine.busy as f64 / machine.total.max(1) as f64,
            machine_iowait: machine.iowait as f64 / machine.total.max(1) as f64,
            samples,
        }
    }
}

/// What the database and the machine did during one load.
struct DbActivity {
    wall: Duration,
    /// `None` when the statistics could not be read.
    counters: Option<Counters>,
    /// This process: the server instances and the load generator.
    process_cpu: Duration,
    /// Every `postgres` process of the server (other databases' included).
    postgres_cpu: Duration,
    /// Shares of all the machine's cores.
    machine_busy: f64,
    machine_iowait: f64,
    samples: Samples,
}

/// What `pg_stat_activity` showed, sample after sample.
#[derive(Default)]
struct Samples {
    taken: u64,
    /// Per (what a connection of the database was doing, its statement): how
    /// many times a connection was seen so.
    states: HashMap<(String, String), u64>,
    /// The same, of the connections holding a row lock that another waits
    /// for (the head of a lock queue): where a serialized section's time goes.
    holding: HashMap<(String, String), u64>,
    /// Samples in which some connection of the database held such a lock.
    held: u64,
    /// Connections of other databases seen executing: others loading the same server.
    others_executing: u64,
}

/// Every client connection: whether it holds a transaction's lock that
/// another waits for (a row lock waits on the locker's transaction id),
/// whether it is the database's, and what it is doing.
const ACTIVITY: &str = "WITH heads AS (
     SELECT DISTINCT h.pid FROM pg_locks w
       JOIN pg_locks h ON h.locktype = 'transactionid' AND h.transactionid = w.transactionid AND h.granted
      WHERE w.locktype = 'transactionid' AND NOT w.granted)
 SELECT a.pid IN (SELECT pid FROM heads), coalesce(a.datname = $1, false), coalesce(a.state, ''),
        coalesce(a.wait_event_type, ''), coalesce(a.wait_event, ''), coalesce(left(a.query, 512), '')
   FROM pg_stat_activity a WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()";

/// Samples every [`SAMPLE_EVERY`] until `stop`.
async fn sample(client: Option<Arc<Client>>, database: String, stop: Arc<AtomicBool>) -> Samples {
    let mut samples = Samples::default();
    let Some(client) = client else {
        return samples;
    };
    let Ok(statement) = client.prepare(ACTIVITY).await else {
        return samples;
    };
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Relaxed) {
        tick.tick().await;
        let Ok(rows) = client.query(&statement, &[&database]).await else {
            break;
        };
        samples.taken += 1;
        let mut held = false;
        for row in rows {
            let (head, ours, state): (bool, bool, &str) = (row.get(0), row.get(1), row.get(2));
            if !ours {
                samples.others_executing += u64::from(state == "active");
                continue;
            }
            let what = doing(state, row.get(3), row.get(4), row.get(5));
            if head {
                held = true;
                *samples.holding.entry(what.clone()).or_default() += 1;
            }
            *samples.states.entry(what).or_default() += 1;
        }
        samples.held += u64::from(held);
    }
    samples
}

/// What a sampled connection was doing, and the statement it was in (or, idle
/// in a transaction, the one it had just run).
fn doing(state: &str, wait_type: &str, wait: &str, query: &str) -> (String, String) {
    let statement = || {
        let text = query.split_whitespace().collect::<Vec<_>>().join(" ");
        match text.char_indices().nth(STATEMENT_CHARS) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text,
        }
    };
    match (state, wait_type) {
        ("active", "") => ("executing".into(), statement()),
        ("active", "Lock") => (format!("waiting for a lock ({wait})"), statement()),
        ("active", _) => (format!("waiting on {wait_type}:{wait}"), statement()),
        ("idle in transaction", _) => ("idle in a transaction".into(), format!("after {}", statement())),
        ("idle", _) => ("idle, no transaction".into(), String::new()),
        (other, _) => (other.into(), statement()),
    }
}

/// The database's counters (`pg_stat_database`) and the server's WAL
/// (`pg_stat_wal`, and the insert position for its bytes).
#[derive(Clone, Copy)]
struct Counters {
    commits: i64,
    rollbacks: i64,
    blocks_read: i64,
    blocks_hit: i64,
    deadlocks: i64,
    /// Milliseconds that the database's connections spent executing
    /// statements, and idle inside a transaction.
    active_ms: f64,
    idle_in_transaction_ms: f64,
    wal_bytes: i64,
    wal_full_pages: i64,
    wal_syncs: i64,
}

impl Counters {
    async fn read(client: &Client, database: &str) -> Option<Counters> {
        let row = client
            .query_one(
                "SELECT d.xact_commit, d.xact_rollback, d.blks_read, d.blks_hit, d.deadlocks,
                        d.active_time, d.idle_in_transaction_time,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, w.wal_fpi, w.wal_sync
                   FROM pg_stat_database d CROSS JOIN pg_stat_wal w WHERE d.datname = $1",
                &[&database],
            )
            .await
            .ok()?;
        Some(Counters {
            commits: row.get(0),
            rollbacks: row.get(1),
            blocks_read: row.get(2),
            blocks_hit: row.get(3),
            deadlocks: row.get(4),
            active_ms: row.get(5),
            idle_in_transaction_ms: row.get(6),
            wal_bytes: row.get(7),
            wal_full_pages: row.get(8),
            wal_syncs: row.get(9),
        })
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            commits: self.commits - before.commits,
            rollbacks: self.rollbacks - before.rollbacks,
            blocks_read: self.blocks_read - before.blocks_read,
            blocks_hit: self.blocks_hit - before.blocks_hit,
            deadlocks: self.deadlocks - before.deadlocks,
            active_ms: self.active_ms - before.active_ms,
            idle_in_transaction_ms: self.idle_in_transaction_ms - before.idle_in_transaction_ms,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            wal_full_pages: self.wal_full_pages - before.wal_full_pages,
            wal_syncs: self.wal_syncs - before.wal_syncs,
        }
    }
}

/// CPU time used so far: by this process, by each `postgres` process (in
/// clock ticks, by pid), and by the whole machine.
struct CpuClock {
    process: Usage,
    postgres: HashMap<u32, u64>,
    machine: MachineTicks,
}

impl CpuClock {
    fn now() -> Self {
        CpuClock { process: Usage::now(), postgres: postgres_ticks(), machine: MachineTicks::now() }
    }
}

/// The machine's CPU ticks (`/proc/stat`), all cores together.
#[derive(Clone, Copy, Default)]
struct MachineTicks {
    busy: u64,
    iowait: u64,
    total: u64,
}

impl MachineTicks {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
            return MachineTicks::default();
        };
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|n| n.parse().ok()).collect();
        let total: u64 = ticks.iter().sum();
        let (idle, iowait) = (ticks.get(3).copied().unwrap_or(0), ticks.get(4).copied().unwrap_or(0));
        MachineTicks { busy: total.saturating_sub(idle + iowait), iowait, total }
    }

    fn since(self, before: MachineTicks) -> MachineTicks {
        MachineTicks {
            busy: self.busy.saturating_sub(before.busy),
            iowait: self.iowait.saturating_sub(before.iowait),
            total: self.total.saturating_sub(before.total),
        }
    }
}

/// User and system CPU ticks of every process named `postgres`, by pid.
fn postgres_ticks() -> HashMap<u32, u64> {
    let mut ticks = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ...`; utime and stime are the 14th and 15th fields.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        ticks.insert(pid, field(11) + field(12));
    }
    ticks
}

/// Clock ticks as time, at the kernel's `CLK_TCK` (`getconf`; 100 where it cannot say).
fn cpu_time(ticks: impl Iterator<Item = u64>) -> Duration {
    static PER_SECOND: OnceLock<u64> = OnceLock::new();
    let per_second = *PER_SECOND.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    });
    Duration::from_secs_f64(ticks.sum::<u64>() as f64 / per_second as f64)
}

/// pgbench's TPC-B-like load on a scratch database of the server, after a `CHECKPOINT`.
fn pgbench(runtime: &Runtime, admin_url: &str, db: &ScratchDatabase) -> Result<Pgbench, String> {
    let started = Instant::now();
    run_pgbench(&["-i", "-q", "-s", PGBENCH_SCALE], db.url())?;
    let init = started.elapsed();
    runtime.block_on(Probe { admin_url, database: db.name() }.checkpoint())?;
    wait_until_idle();
    let report = run_pgbench(&["-c", PGBENCH_CLIENTS, "-j", PGBENCH_THREADS, "-T", PGBENCH_SECONDS], db.url())?;
    let figure = |prefix: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse::<f64>().ok())
    };
    let tps = figure("tps = ").ok_or_else(|| format!("pgbench printed no tps: {report}"))?;
    Ok(Pgbench { tps, latency_ms: figure("latency average = "), init })
}

/// Times [`COMMIT_PROBES`] one-row commits from one client, durable, then
/// with `synchronous_commit = off`, in the database at `url`.
async fn commit_latency(url: &str) -> Result<CommitLatency, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(|err| err.to_string())?;
    // Ends when the client is dropped.
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS commit_probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
        .await
        .map_err(|err| err.to_string())?;
    let insert = client.prepare("INSERT INTO commit_probe (at) VALUES (now())").await.map_err(|err| err.to_string())?;
    let median = || async {
        let mut times = Vec::with_capacity(COMMIT_PROBES);
        for _ in 0..COMMIT_PROBES {
            let start = Instant::now();
            client.execute(&insert, &[]).await.map_err(|err| err.to_string())?;
            times.push(start.elapsed());
        }
        times.sort();
        Ok::<_, String>(times[times.len() / 2])
    };
    let durable = median().await?;
    client.batch_execute("SET synchronous_commit = off").await.map_err(|err| err.to_string())?;
    let unflushed = median().await?;
    Ok(CommitLatency { durable, unflushed })
}

/// Runs pgbench on the database at `url`; its report.
fn run_pgbench(args: &[&str], url: &str) -> Result<String, String> {
    let output = Command::new("pgbench")
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run pgbench: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "pgbench {} exited with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The server's version and the settings that bear on durable ingest.
async fn describe_server(admin_url: &str) -> String {
    let probe = Probe { admin_url, database: "" };
    let described = match probe.connect().await {
        Ok(client) => client
            .query_one(
                "SELECT 'PostgreSQL ' || current_setting('server_version') || '; '
                        || string_agg(name || ' ' || coalesce(nullif(current_setting(name), ''), '(none)'), ', '
                                      ORDER BY ord)
                   FROM unnest(ARRAY['fsync', 'synchronous_commit', 'wal_sync_method', 'commit_delay',
                                     'full_page_writes', 'shared_buffers', 'max_wal_size', 'autovacuum',
                                     'max_connections', 'shared_preload_libraries']) WITH ORDINALITY AS s(name, ord)",
                &[],
            )
            .await
            .map(|row| row.get::<_, String>(0))
            .map_err(|err| err.to_string()),
        Err(err) => Err(err),
    };
    described.unwrap_or_else(|err| format!("PostgreSQL (its settings could not be read: {err})"))
}

/// Places every order (draft, then confirm) from [`CONCURRENT_WRITERS`] tasks,
/// order `i` by task `i % CONCURRENT_WRITERS`, as `common::place_orders` does
/// on sled (which also counts sled's group-commit flushes).
async fn place_orders(store: &PgStore, by: &Principal, orders: Vec<RawOrder>) -> Duration {
    let mut lanes: Vec<Vec<RawOrder>> = (0..CONCURRENT_WRITERS).map(|_| Vec::new()).collect();
    for (i, order) in orders.into_iter().enumerate() {
        lanes[i % CONCURRENT_WRITERS].push(order);
    }
    let start = Instant::now();
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let (store, by) = (store.clone(), by.clone());
            tokio::spawn(async move {
                for raw in lane {
                    let draft =
                        orders::place_draft(&store, &by, &raw, DRAFT_TTL).await.expect("a generated order is valid");
                    orders::confirm(&store, &by, &draft.order_id).await.expect("a fresh draft confirms");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("an order-placing task panicked");
    }
    start.elapsed()
}

/// Every receipt, in receipt order, read page by page.
async fn every_receipt(store: &dyn Store) -> Vec<Receipt> {
    let mut receipts: Vec<Receipt> = Vec::new();
    loop {
        let query = ReceiptQuery { after: receipts.last().map(|r| r.seq), limit: PAGE, ..ReceiptQuery::default() };
        let page = store.receipts(&query).await.expect("receipts list");
        if page.is_empty() {
            return receipts;
        }
        receipts.extend(page);
    }
}

fn share(part: Duration, wall: Duration, cores: usize) -> String {
    format!("{:.0}%", 100.0 * part.as_secs_f64() / wall.as_secs_f64() / cores as f64)
}

/// What one load did, as the database and the machine saw it.
fn print_load(name: &str, measured: &Measured, cores: usize) {
    let (run, db) = (&measured.run, &measured.db);
    println!(
        "  {name}: {} items in {} requests, {} s; cpu: benchmark process {}, postgres {}, machine busy {:.0}% \
         (iowait {:.0}%)",
        grouped(run.items as u64),
        grouped(run.requests as u64),
        seconds(run.wall),
        share(db.process_cpu, db.wall, cores),
        share(db.postgres_cpu, db.wall, cores),
        100.0 * db.machine_busy,
        100.0 * db.machine_iowait,
    );
    match &db.counters {
        Some(c) => println!(
            "    database: {} commits ({:.2} per request), {} rollbacks, {} deadlocks; connections executing \
             {:.1} s, idle in a transaction {:.1} s; WAL {:.2} KiB per item, {} WAL syncs, {} full-page images; \
             blocks {} read, {} hit",
            grouped(c.commits.max(0) as u64),
            c.commits as f64 / run.requests.max(1) as f64,
            c.rollbacks,
            c.deadlocks,
            c.active_ms / 1000.0,
            c.idle_in_transaction_ms / 1000.0,
            c.wal_bytes as f64 / 1024.0 / run.items.max(1) as f64,
            grouped(c.wal_syncs.max(0) as u64),
            grouped(c.wal_full_pages.max(0) as u64),
            grouped(c.blocks_read.max(0) as u64),
            grouped(c.blocks_hit.max(0) as u64),
        ),
        None => println!("    database: its statistics could not be read"),
    }
    let samples = &db.samples;
    let taken = samples.taken.max(1) as f64;
    let open: u64 = samples.states.values().sum();
    println!(
        "    its connections, sampled {} times: {:.1} open on average (both instances' pools); other databases' \
         connections executing: {:.2}",
        samples.taken,
        open as f64 / taken,
        samples.others_executing as f64 / taken
    );
    for ((doing, statement), count) in most_frequent(&samples.states) {
        println!("      {:>6.2}  {doing:<38} {statement}", count as f64 / taken);
    }
    let holding: u64 = samples.holding.values().sum();
    println!(
        "    a row lock that others waited for was held in {:.0}% of the samples; what its holder was doing, as \
         shares of its time:",
        100.0 * samples.held as f64 / taken
    );
    for ((doing, statement), count) in most_frequent(&samples.holding) {
        println!("      {:>5.1}%  {doing:<38} {statement}", 100.0 * count as f64 / holding.max(1) as f64);
    }
}

/// The [`STATES_SHOWN`] most frequent states, the most frequent first.
fn most_frequent(states: &HashMap<(String, String), u64>) -> Vec<(&(String, String), u64)> {
    let mut states: Vec<_> = states.iter().map(|(state, count)| (state, *count)).collect();
    states.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    states.truncate(STATES_SHOWN);
    states
}

/// A line of the PostgreSQL table.
struct Line {
    figure: String,
    value: String,
    two_over_one: String,
    sled: String,
    over_sled: String,
    transactions: String,
    over_pgbench: String,
    target: &'static str,
    met: Option<bool>,
}

impl Line {
    fn new(figure: impl Into<String>, value: impl Into<String>) -> Self {
        Line {
            figure: figure.into(),
            value: value.into(),
            two_over_one: String::new(),
            sled: String::new(),
            over_sled: String::new(),
            transactions: String::new(),
            over_pgbench: String::new(),
            target: "",
            met: None,
        }
    }
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", 100.0 * ratio)
}

/// The lines of one kind of load: its rate on one instance and on two, each
/// against sled's of the same run and, for pushes (one transaction each),
/// against pgbench's transactions per second; `target` is the one instance's.
fn pair_lines(name: &str, unit: &str, pair: &Pair, sled: &Run, pgbench: Option<f64>, target: Option<f64>) -> Vec<Line> {
    let (one, two) = (&pair.one.run, &pair.two.run);
    let mut lines = Vec::new();
    for (instances, run, is_two) in [("one instance", one, false), ("two instances", two, true)] {
        let mut line = Line::new(format!("{name}, {instances}"), per_second(run.rate(), unit));
        line.sled = per_second(sled.rate(), unit);
        line.over_sled = percent(run.rate() / sled.rate());
        if let Some(tps) = pgbench {
            let transactions = run.requests as f64 / run.wall.as_secs_f64();
            line.transactions = format!("{transactions:.0}");
            line.over_pgbench = percent(transactions / tps);
        }
        if is_two {
            line.two_over_one = percent(two.rate() / one.rate());
            line.target = ">= one instance";
            line.met = Some(two.rate() >= one.rate());
        } else if let Some(target) = target {
            line.target = ">= 10,000 conf/s";
            line.met = Some(one.rate() >= target);
        }
        lines.push(line);
        lines.push(Line::new(format!("  latency p50 / p99, {instances}"), latencies(run)));
    }
    lines
}

pub(super) fn print_figures(pg: &PgFigures, sled: &Figures) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!();
    println!("{}", pg.server);
    println!(
        "{} s from the pgbench baseline to the figures; setup: {} receipts; import {} s; orders placed in {} s \
         ({} orders/s, draft + confirm from {CONCURRENT_WRITERS} tasks); planned in {} s",
        seconds(pg.run_time),
        grouped(pg.receipts as u64),
        seconds(pg.import_time),
        seconds(pg.placing),
        grouped((pg.receipts as f64 / pg.placing.as_secs_f64()) as u64),
        seconds(pg.planning),
    );
    let tps = match &pg.pgbench {
        Ok(bench) => {
            println!(
                "  pgbench TPC-B-like: -i -s {PGBENCH_SCALE} in {} s; -c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS} \
                 -T {PGBENCH_SECONDS}: {:.0} tps, latency average {} ms",
                seconds(bench.init),
                bench.tps,
                bench.latency_ms.map_or_else(|| "?".into(), |ms| format!("{ms:.2}")),
            );
            Some(bench.tps)
        }
        Err(err) => {
            println!("  pgbench: not measured ({err})");
            None
        }
    };
    for (when, commits) in ["before the loads", "after them"].iter().zip(&pg.commits) {
        match commits {
            Ok(latency) => println!(
                "  a one-row commit from one client, {when} (median of {COMMIT_PROBES}): {} ms durable, {} ms with \
                 synchronous_commit off",
                millis(latency.durable),
                millis(latency.unflushed)
            ),
            Err(err) => println!("  a one-row commit, {when}: not measured ({err})"),
        }
    }
    println!(
        "  (cpu: shares of all {cores} cores; the benchmark process holds both server instances and the \
         generator; postgres is every postgres process of the server)"
    );
    for (name, pair) in [("pull", &pg.pull), ("batches of 100", &pg.batched), ("batches of 1", &pg.single)] {
        print_load(&format!("{name}, one instance"), &pair.one, cores);
        print_load(&format!("{name}, two instances"), &pair.two, cores);
    }

    let batched = "durable ingest, batches of 100";
    let mut lines = pair_lines(batched, "conf", &pg.batched, &sled.batched, tps, Some(INGEST_TARGET));
    lines.extend(pair_lines("durable ingest, batches of 1", "conf", &pg.single, &sled.single, tps, None));
    let pull = format!("pull, {PULL_HOLDING} assignments each");
    lines.extend(pair_lines(&pull, "req", &pg.pull, &sled.pull, None, None));
    if let Some(tps) = tps {
        lines.push(Line::new("pgbench TPC-B-like (baseline)", format!("{} tps", grouped(tps.round() as u64))));
    }
    println!();
    println!(
        "{:<46} {:>16} {:>8}  {:<18} {:>8} {:>6} {:>9}  {:<18} met",
        "figure (PostgreSQL)", "value", "two/one", "sled, same run", "PG/sled", "tx/s", "/pgbench", "target"
    );
    for line in lines {
        let met = match line.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "{:<46} {:>16} {:>8}  {:<18} {:>8} {:>6} {:>9}  {:<18} {met}",
            line.figure,
            line.value,
            line.two_over_one,
            line.sled,
            line.over_sled,
            line.transactions,
            line.over_pgbench,
            line.target
        );
    }
    println!();
    println!(
        "tx/s: pushes answered per second, each one transaction; /pgbench: that over pgbench's tps. Timings are \
         never asserted."
    );
}
