//! Planning benchmark: how fast Handover plans order receipts.
//!
//! It builds a network of 50 nodes (1 manufacturer, 1 master warehouse, 40
//! branch warehouses, 8 sellers), 5 items, 2,000 customers and about a hundred
//! courier accounts, imports it with `import::import_network` into a `SledStore`
//! in a temporary directory, and places the receipts through the real order path
//! (a draft, then its confirmation) from many concurrent tasks. Stock is spread so
//! that receipts go down all five cascade paths, and a few become backorders.
//!
//! Then, in the same run, it measures:
//!
//! - the pure cascade: the same receipts planned in memory with the domain
//!   functions only (`cascade`, `reserve`, `plan_legs`, `choose_courier`), from
//!   the stored stock; best and median of several runs;
//! - stored planning: one `Store::plan_pending` call that plans every receipt,
//!   each in its own sled transaction, with one flush at the end;
//! - a baseline: raw sled inserts of as many small JSON records into a fresh
//!   tree, with one flush at the end.
//!
//! The pure run is the oracle: same receipts, same order, same starting stock, so
//! the stored run must give every receipt the same source and courier. A
//! difference is a bug: it is printed loudly and the process exits non-zero.
//! Nothing about time is asserted; the figures are printed.
//!
//! Run it with
//!
//! ```text
//! cargo bench -p handover-server --bench planning
//! HANDOVER_BENCH_RECEIPTS=5000 cargo bench -p handover-server --bench planning   # a quick run
//! ```

mod common;

use std::{
    collections::HashMap,
    hint::black_box,
    process::ExitCode,
    time::{Duration, Instant},
};

use common::{
    all_receipts, count_from_env, dispatcher, grouped, id, import_file, network_account, network_node, network_stock,
    place_orders, raw_sled_inserts, report_problems, seconds, Setup, CONCURRENT_WRITERS, DISPATCHER,
};
use handover_server::{
    domain::{
        network::{Customer, Item, StockCount},
        orders::{RawOrder, RawQuantity, Receipt},
        shipments::{cascade, choose_courier, plan_legs, reserve, Carrier, CascadeNodes, Source},
        stock::Balance,
    },
    store::{sled::SledStore, PlanResult, Store},
};
use handover_shared::{
    api::{NetworkCustomer, NetworkFile, NetworkItem},
    CustomerId, DeliveryId, ItemId, NodeId, NodeKind, ReceiptId, Role, Username,
};
use serde::Serialize;
use time::OffsetDateTime;

/// How many receipts to plan, unless `HANDOVER_BENCH_RECEIPTS` says otherwise.
const DEFAULT_RECEIPTS: usize = 100_000;
const BRANCHES: usize = 40;
const SELLERS: usize = 8;
const ITEMS: usize = 5;
const CUSTOMERS: usize = 2_000;
const EXPEDITERS_PER_BRANCH: usize = 2;
const SERVICEMEN_PER_SELLER: usize = 2;
/// Order quantities are 1 to this, evenly.
const MAX_QUANTITY: u64 = 4;
/// Runs of the pure cascade, for a best and a median.
const PURE_RUNS: usize = 5;
const SEED: u64 = 0x4841_4e44_4f56_4552;

fn main() -> ExitCode {
    let receipts = count_from_env("HANDOVER_BENCH_RECEIPTS", DEFAULT_RECEIPTS);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let data_dir = tempfile::tempdir().expect("a temporary data dir");
    let store = SledStore::open(data_dir.path()).expect("a fresh sled store opens");
    let mut rng = Rng(SEED);
    let network = Network::generate(receipts, &mut rng);

    progress(&format!(
        "importing {} nodes, {} customers, {} accounts",
        network.node_count(),
        CUSTOMERS,
        network.accounts.len()
    ));
    let import_time = runtime.block_on(import_file(&store, &network.file()));
    progress(&format!("placing {receipts} orders (draft + confirm) from {CONCURRENT_WRITERS} tasks"));
    let by = dispatcher(DISPATCHER, "planning-bench");
    let setup = runtime.block_on(place_orders(&store, &by, network.orders(receipts, &mut rng)));
    let world = runtime.block_on(PlanningWorld::load(&store, &network));
    progress(&format!("planning in memory, {PURE_RUNS} runs"));
    let pure = plan_purely(&world);
    progress("planning in the store (one plan_pending call)");
    let stored = runtime.block_on(plan_stored(&store));
    let stored_receipts = runtime.block_on(all_receipts(&store));
    progress("raw sled inserts");
    let raw = raw_sled_baseline(receipts);

    let problems = verify(&world, &pure.outcomes, &stored.outcomes, &stored_receipts);
    let figures = Figures { cores, receipts, import_time, setup, pure_times: pure.times, stored: stored.time, raw };
    print_mix(&PathCounts::of(&pure.outcomes), &PathCounts::of(&stored.outcomes));
    print_figures(&figures);
    report_problems(
        &problems,
        "every receipt is planned or backordered, and the stored run matches the pure run receipt by receipt",
        "the stored planning disagrees with the pure cascade",
    )
}

fn progress(step: &str) {
    eprintln!("[planning bench] {step}");
}

/// A small deterministic generator (SplitMix64): every run asks for the same network and orders.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number from 0 to `bound - 1`.
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// One account of the generated network.
struct AccountRow {
    username: Username,
    role: Role,
    node_id: Option<NodeId>,
}

/// The generated network, as domain values; [`Network::file`] writes it as a network file.
struct Network {
    manufacturer: NodeId,
    master: NodeId,
    branches: Vec<NodeId>,
    sellers: Vec<NodeId>,
    items: Vec<Item>,
    customers: Vec<Customer>,
    stock: Vec<StockCount>,
    accounts: Vec<AccountRow>,
}

impl Network {
    fn generate(receipts: usize, rng: &mut Rng) -> Self {
        let branches: Vec<NodeId> = (0..BRANCHES).map(|b| id(format!("B{b:02}"))).collect();
        let sellers: Vec<NodeId> = (0..SELLERS).map(|s| id(format!("S{s}"))).collect();
        let items = (0..ITEMS)
            .map(|i| Item {
                id: id(format!("TC-{}", 100 * (i + 1))),
                name: format!("Toner {}", 100 * (i + 1)),
                collectable: i % 2 == 0,
                max_per_order: 20,
                discontinued: false,
            })
            .collect();
        let customers = (0..CUSTOMERS)
            .map(|c| {
                let first = rng.below(BRANCHES);
                let second = (first + 1 + rng.below(BRANCHES - 1)) % BRANCHES;
                Customer {
                    id: id(format!("C{c:04}")),
                    name: format!("Office {c}"),
                    branch_1: branches[first].clone(),
                    branch_2: branches[second].clone(),
                    seller_id: sellers[rng.below(SELLERS)].clone(),
                }
            })
            .collect();
        let mut network = Network {
            manufacturer: id("MFR".into()),
            master: id("MW".into()),
            branches,
            sellers,
            items,
            customers,
            stock: Vec::new(),
            accounts: Vec::new(),
        };
        network.stock = network.spread_stock(receipts);
        network.accounts = network.couriers_and_dispatcher();
        network
    }

    /// Stock for a mix of paths. Of the expected demand per item: half in the
    /// branches (the even ones hold three times what the odd ones do, so that
    /// odd branches run dry early and send their customers to branch #2), 15% at
    /// the master warehouse, 10% over the sellers and 22% at the manufacturer.
    /// The last 3%, and late orders that no single node can cover whole any
    /// more, become backorders.
    fn spread_stock(&self, receipts: usize) -> Vec<StockCount> {
        let demand_per_item = receipts as u64 * (1 + MAX_QUANTITY) / 2 / ITEMS as u64;
        let share = |per_mille: u64, nodes: usize| demand_per_item * per_mille / 1000 / nodes as u64;
        let even_branch = share(375, BRANCHES / 2);
        let odd_branch = share(125, BRANCHES / 2);
        let mut holdings: Vec<(&NodeId, u64)> =
            vec![(&self.master, share(150, 1)), (&self.manufacturer, share(220, 1))];
        holdings.extend(
            self.branches.iter().enumerate().map(|(b, node)| (node, if b % 2 == 0 { even_branch } else { odd_branch })),
        );
        holdings.extend(self.sellers.iter().map(|node| (node, share(100, SELLERS))));
        holdings
            .into_iter()
            .flat_map(|(node, quantity)| {
                self.items.iter().map(move |item| StockCount {
                    node_id: node.clone(),
                    item_id: item.id.clone(),
                    quantity,
                })
            })
            .collect()
    }

    fn couriers_and_dispatcher(&self) -> Vec<AccountRow> {
        let account = |username: String, role, node_id: Option<&NodeId>| AccountRow {
            username: id(username),
            role,
            node_id: node_id.cloned(),
        };
        let mut accounts = vec![account(DISPATCHER.into(), Role::Dispatcher, None)];
        for branch in &self.branches {
            accounts.extend(
                (1..=EXPEDITERS_PER_BRANCH)
                    .map(|n| account(format!("exp-{branch}-{n}"), Role::Expediter, Some(branch))),
            );
        }
        for seller in &self.sellers {
            accounts.push(account(format!("rep-{seller}"), Role::Seller, Some(seller)));
            accounts.extend(
                (1..=SERVICEMEN_PER_SELLER)
                    .map(|n| account(format!("svc-{seller}-{n}"), Role::Serviceman, Some(seller))),
            );
        }
        accounts
    }

    fn node_count(&self) -> usize {
        2 + self.branches.len() + self.sellers.len()
    }

    /// The network file that `import::import_network` loads.
    fn file(&self) -> NetworkFile {
        let node = |id: &NodeId, kind: NodeKind| network_node(id.as_str(), kind, format!("Node {id}"));
        let mut nodes =
            vec![node(&self.manufacturer, NodeKind::Manufacturer), node(&self.master, NodeKind::MasterWarehouse)];
        nodes.extend(self.branches.iter().map(|b| node(b, NodeKind::BranchWarehouse)));
        nodes.extend(self.sellers.iter().map(|s| node(s, NodeKind::Seller)));
        NetworkFile {
            nodes,
            items: self
                .items
                .iter()
                .map(|item| NetworkItem {
                    id: item.id.to_string(),
                    name: item.name.clone(),
                    collectable: item.collectable,
                    max_per_order: i64::from(item.max_per_order),
                    discontinued: item.discontinued,
                })
                .collect(),
            stock: self
                .stock
                .iter()
                .map(|count| network_stock(count.node_id.as_str(), count.item_id.as_str(), count.quantity))
                .collect(),
            customers: self
                .customers
                .iter()
                .map(|c| NetworkCustomer {
                    id: c.id.to_string(),
                    name: c.name.clone(),
                    branch_1: c.branch_1.to_string(),
                    branch_2: c.branch_2.to_string(),
                    seller_id: c.seller_id.to_string(),
                })
                .collect(),
            accounts: self
                .accounts
                .iter()
                .map(|a| network_account(a.username.as_str(), a.role, a.node_id.as_ref().map(NodeId::as_str)))
                .collect(),
        }
    }

    /// Order data as the API would receive it: a random customer, item and quantity.
    fn orders(&self, count: usize, rng: &mut Rng) -> Vec<RawOrder> {
        (0..count)
            .map(|_| RawOrder {
                customer_id: Some(self.customers[rng.below(CUSTOMERS)].id.to_string()),
                item_id: Some(self.items[rng.below(ITEMS)].id.to_string()),
                quantity: RawQuantity::Integer(1 + rng.below(MAX_QUANTITY as usize) as i128),
                shape_problems: Vec::new(),
            })
            .collect()
    }

    /// The expediters serving each branch.
    fn expediters(&self) -> HashMap<NodeId, Vec<Username>> {
        let mut by_branch: HashMap<NodeId, Vec<Username>> = HashMap::new();
        for account in self.accounts.iter().filter(|a| a.role == Role::Expediter) {
            let branch = account.node_id.clone().expect("an expediter serves a branch");
            by_branch.entry(branch).or_default().push(account.username.clone());
        }
        by_branch
    }
}

/// What the in-memory planner needs: the receipts in receipt order, each
/// customer's cascade, the expediters of each branch and the stock before planning.
struct PlanningWorld {
    receipts: Vec<Receipt>,
    cascades: HashMap<CustomerId, CascadeNodes>,
    expediters: HashMap<NodeId, Vec<Username>>,
    stock: HashMap<(NodeId, ItemId), Balance>,
}

impl PlanningWorld {
    async fn load(store: &SledStore, network: &Network) -> Self {
        let receipts = all_receipts(store).await;
        let (_, balances) = store.stock_snapshot().await.expect("a stock snapshot");
        let cascades = network
            .customers
            .iter()
            .map(|c| (c.id.clone(), CascadeNodes::for_customer(c, Some(&network.master), Some(&network.manufacturer))))
            .collect();
        PlanningWorld {
            receipts,
            cascades,
            expediters: network.expediters(),
            stock: balances.into_iter().map(|(node, item, balance)| ((node, item), balance)).collect(),
        }
    }
}

/// What planning decided for one receipt: where the goods come from (`None`:
/// backordered) and which courier carries them (`None` for an entrusted delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    receipt_id: ReceiptId,
    source: Option<Source>,
    assignee: Option<Username>,
}

/// Plans every receipt in memory, from the starting stock, with no load on any courier.
fn plan_in_memory(world: &PlanningWorld) -> Vec<Outcome> {
    let mut stock = world.stock.clone();
    let mut loads: HashMap<Username, u64> = HashMap::new();
    world.receipts.iter().map(|receipt| plan_one(world, receipt, &mut stock, &mut loads)).collect()
}

fn plan_one(
    world: &PlanningWorld,
    receipt: &Receipt,
    stock: &mut HashMap<(NodeId, ItemId), Balance>,
    loads: &mut HashMap<Username, u64>,
) -> Outcome {
    let backordered = Outcome { receipt_id: receipt.receipt_id.clone(), source: None, assignee: None };
    let nodes = &world.cascades[&receipt.customer_id];
    let item = &receipt.item_id;
    let available = |node: &NodeId| stock.get(&(node.clone(), item.clone())).map_or(0, |b| b.available());
    let Some((source, node)) = cascade(nodes, u64::from(receipt.quantity), available) else {
        return backordered;
    };
    let [reservation] = reserve(&node, receipt.quantity);
    let balance = stock.entry((node.clone(), item.clone())).or_default();
    *balance = reservation.apply(*balance).expect("the cascade picks a node that covers the quantity");
    let legs = plan_legs(&DeliveryId::from_seq(receipt.seq), source, nodes, &receipt.customer_id);
    let carrier = match source {
        Source::Seller => Carrier::Seller { seller: node.clone() },
        _ => Carrier::Distributor { branch: legs.last().map_or_else(|| node.clone(), |leg| leg.from.clone()) },
    };
    let assignee = match &carrier {
        Carrier::Seller { .. } => None,
        Carrier::Distributor { branch } => {
            let candidates = world.expediters.get(branch).map(Vec::as_slice).unwrap_or_default();
            let courier = choose_courier(candidates.iter().map(|name| (name, loads.get(name).copied().unwrap_or(0))));
            if let Some(courier) = &courier {
                *loads.entry(courier.clone()).or_default() += 1;
            }
            courier
        }
    };
    black_box((legs, carrier));
    Outcome { receipt_id: receipt.receipt_id.clone(), source: Some(source), assignee }
}

struct PureRuns {
    /// Sorted, fastest first.
    times: Vec<Duration>,
    outcomes: Vec<Outcome>,
}

fn plan_purely(world: &PlanningWorld) -> PureRuns {
    let mut times = Vec::with_capacity(PURE_RUNS);
    let mut outcomes = Vec::new();
    for _ in 0..PURE_RUNS {
        let start = Instant::now();
        let run = plan_in_memory(world);
        times.push(start.elapsed());
        outcomes = run;
    }
    times.sort();
    PureRuns { times, outcomes }
}

struct StoredRun {
    time: Duration,
    outcomes: Vec<Outcome>,
}

async fn plan_stored(store: &SledStore) -> StoredRun {
    let start = Instant::now();
    let results = store.plan_pending(OffsetDateTime::now_utc()).await.expect("plan_pending succeeds");
    let time = start.elapsed();
    let outcomes = results
        .into_iter()
        .map(|result| match result {
            PlanResult::Planned(delivery) => {
                Outcome { receipt_id: delivery.receipt_id, source: Some(delivery.source), assignee: delivery.assignee }
            }
            PlanResult::Backordered(receipt_id) => Outcome { receipt_id, source: None, assignee: None },
        })
        .collect();
    StoredRun { time, outcomes }
}

#[derive(Serialize)]
struct RawRecord {
    seq: u64,
    receipt_id: String,
    planned: bool,
}

/// Inserts `count` small JSON records into a fresh sled tree, then flushes once.
fn raw_sled_baseline(count: usize) -> Duration {
    raw_sled_inserts(count, count, |seq| {
        let record = RawRecord { seq, receipt_id: format!("R-{seq:06}"), planned: true };
        serde_json::to_vec(&record).expect("a record encodes")
    })
}

/// How many receipts went down each path.
#[derive(Debug, Default, PartialEq, Eq)]
struct PathCounts {
    shipped: [u64; 5],
    backordered: u64,
}

impl PathCounts {
    fn of(outcomes: &[Outcome]) -> Self {
        let mut counts = PathCounts::default();
        for outcome in outcomes {
            match outcome.source {
                Some(source) => counts.shipped[Source::CASCADE.iter().position(|s| *s == source).unwrap_or(0)] += 1,
                None => counts.backordered += 1,
            }
        }
        counts
    }

    fn rows(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Source::CASCADE.iter().map(|s| s.as_str()).zip(self.shipped).chain([("backorder", self.backordered)])
    }
}

/// Everything that says the stored run went wrong; empty when it agrees with the oracle.
fn verify(world: &PlanningWorld, pure: &[Outcome], stored: &[Outcome], receipts: &[Receipt]) -> Vec<String> {
    let mut problems = Vec::new();
    let expected = world.receipts.len();
    if stored.len() != expected {
        problems.push(format!("plan_pending answered for {} receipts, not {expected}", stored.len()));
    }
    let planned = receipts.iter().filter(|r| r.planned).count();
    let backordered = receipts.iter().filter(|r| r.backordered && !r.planned).count();
    if receipts.len() != expected || planned + backordered != expected {
        problems.push(format!(
            "of {} stored receipts (expected {expected}), {planned} are planned and {backordered} backordered",
            receipts.len()
        ));
    }
    if PathCounts::of(pure) != PathCounts::of(stored) {
        problems.push("the path mix of the stored run differs from the pure run".into());
    }
    let differing: Vec<_> = pure.iter().zip(stored).filter(|(p, s)| p != s).collect();
    if let Some((p, s)) = differing.first() {
        problems.push(format!(
            "{} receipts were planned differently; the first: pure {p:?}, stored {s:?}",
            differing.len()
        ));
    }
    problems
}

fn print_mix(pure: &PathCounts, stored: &PathCounts) {
    println!();
    println!("path mix              {:>10} {:>10}", "pure", "stored");
    for ((path, p), (_, s)) in pure.rows().zip(stored.rows()) {
        println!("  {path:<19} {:>10} {:>10}", grouped(p), grouped(s));
    }
}

struct Figures {
    cores: usize,
    receipts: usize,
    import_time: Duration,
    setup: Setup,
    pure_times: Vec<Duration>,
    stored: Duration,
    raw: Duration,
}

fn print_figures(f: &Figures) {
    let n = f.receipts as f64;
    let rate = |time: Duration| n / time.as_secs_f64();
    let pure_best = rate(f.pure_times[0]);
    let pure_median = rate(f.pure_times[f.pure_times.len() / 2]);
    let stored = rate(f.stored);
    let raw = rate(f.raw);
    let per_flush = f.setup.waiters as f64 / f.setup.flushes.max(1) as f64;
    let runs = f.pure_times.len();
    let rows = [
        row("cores", f.cores.to_string(), ""),
        row("receipts", grouped(f.receipts as u64), ""),
        row("import (network file, argon2 hashing)", seconds(f.import_time), "s"),
        row("setup: orders placed (draft + confirm)", seconds(f.setup.time), "s"),
        row("setup: order rate", grouped(rate(f.setup.time) as u64), "orders/s"),
        row("setup: group-commit flushes", grouped(f.setup.flushes), ""),
        row("setup: durable writes per flush", format!("{per_flush:.1}"), "writes"),
        row(format!("pure cascade, best of {runs}"), grouped(pure_best as u64), "receipts/s"),
        row(format!("pure cascade, median of {runs}"), grouped(pure_median as u64), "receipts/s"),
        row("stored planning (one plan_pending)", seconds(f.stored), "s"),
        row("stored planning rate", grouped(stored as u64), "receipts/s"),
        row("raw sled insert (one flush)", seconds(f.raw), "s"),
        row("raw sled insert rate", grouped(raw as u64), "records/s"),
    ];
    println!();
    println!("{:<42} {:>14}  unit", "figure", "value");
    for (figure, value, unit) in rows {
        println!("{figure:<42} {value:>14}  {unit}");
    }
    println!();
    println!("stored planning = {:.1}% of raw sled insert rate", 100.0 * stored / raw);
    println!("stored planning = {:.2}% of pure cascade rate (median)", 100.0 * stored / pure_median);
}

fn row(figure: impl Into<String>, value: String, unit: &'static str) -> (String, String, &'static str) {
    (figure.into(), value, unit)
}
