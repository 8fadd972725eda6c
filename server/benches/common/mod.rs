//! What the benchmarks share: reading their size from the environment, importing
//! a network, placing orders through the real order path from many tasks, reading
//! every receipt back, the raw sled baseline and number formatting.

use std::{
    process::ExitCode,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use handover_server::{
    domain::{
        access::Principal,
        orders::{RawOrder, Receipt, DRAFT_TTL},
    },
    import, orders,
    store::{sled::SledStore, ReceiptQuery, Store},
};
use handover_shared::{
    api::{NetworkAccount, NetworkFile, NetworkNode, NetworkStock},
    DeviceId, NodeKind, Role,
};
use uuid::Uuid;

/// Every account of a benchmark's network has this password: it is hashed anyway.
pub const PASSWORD: &str = "bench-password";
/// The dispatcher account that places the orders.
pub const DISPATCHER: &str = "disp";
/// Tasks placing orders at once, so that their writes share group-commit flushes.
pub const CONCURRENT_WRITERS: usize = 64;
/// Receipts read per `Store::receipts` page.
const PAGE: usize = 10_000;

/// The positive whole number in the environment variable `var` (`10_000` is
/// fine), or `default` when it is not set.
pub fn count_from_env(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Err(_) => default,
        Ok(raw) => raw
            .trim()
            .replace('_', "")
            .parse()
            .ok()
            .filter(|count| *count > 0)
            .unwrap_or_else(|| panic!("{var} must be a positive whole number, not {raw:?}")),
    }
}

/// A well-formed id from a generated string.
pub fn id<T: TryFrom<String>>(raw: String) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(raw).expect("generated ids are well formed")
}

/// The dispatcher `username` acting from `device`, as the order path sees it.
pub fn dispatcher(username: &str, device: &str) -> Principal {
    Principal {
        username: id(username.into()),
        role: Role::Dispatcher,
        device_id: DeviceId::parse(device).expect("a well-formed device id"),
        session_id: Uuid::nil(),
        node_id: None,
        customer_id: None,
    }
}

/// A node of a network file.
pub fn network_node(id: &str, kind: NodeKind, name: String) -> NetworkNode {
    NetworkNode { id: id.into(), kind: kind.as_str().into(), name }
}

/// A stock line of a network file.
pub fn network_stock(node_id: &str, item_id: &str, quantity: u64) -> NetworkStock {
    NetworkStock {
        node_id: node_id.into(),
        item_id: item_id.into(),
        quantity: i64::try_from(quantity).expect("stock fits an i64"),
    }
}

/// An account of a network file, with the benchmarks' [`PASSWORD`].
pub fn network_account(username: &str, role: Role, node_id: Option<&str>) -> NetworkAccount {
    NetworkAccount {
        username: username.into(),
        password: PASSWORD.into(),
        role: role.as_str().into(),
        node_id: node_id.map(str::to_owned),
        customer_id: None,
    }
}

/// Imports `file` into the store, timed.
pub async fn import_file(store: &SledStore, file: &NetworkFile) -> Duration {
    let start = Instant::now();
    import::import_network(store, file).await.expect("the generated network imports");
    start.elapsed()
}

/// How placing the orders went.
pub struct Setup {
    pub time: Duration,
    pub flushes: u64,
    pub waiters: u64,
}

/// Places every order (draft, then confirm) as `by`, from [`CONCURRENT_WRITERS`]
/// tasks; order `i` goes to task `i % CONCURRENT_WRITERS`.
pub async fn place_orders(store: &SledStore, by: &Principal, orders: Vec<RawOrder>) -> Setup {
    let mut lanes: Vec<Vec<RawOrder>> = (0..CONCURRENT_WRITERS).map(|_| Vec::new()).collect();
    for (i, order) in orders.into_iter().enumerate() {
        lanes[i % CONCURRENT_WRITERS].push(order);
    }
    let (flushes, waiters) = commit_counts(store);
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
    let time = start.elapsed();
    let (flushes_after, waiters_after) = commit_counts(store);
    Setup { time, flushes: flushes_after - flushes, waiters: waiters_after - waiters }
}

/// The store's group-commit flushes so far, and the durable writes they answered.
pub fn commit_counts(store: &SledStore) -> (u64, u64) {
    let stats = store.commit().stats();
    (stats.flushes.load(Relaxed), stats.waiters.load(Relaxed))
}

/// Every receipt, in receipt order, read page by page.
pub async fn all_receipts(store: &SledStore) -> Vec<Receipt> {
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

/// Inserts `count` records made by `record` (numbered from 1) into a fresh sled
/// tree from one thread, flushing after every `flush_every` inserts and after the
/// last one.
pub fn raw_sled_inserts(count: usize, flush_every: usize, mut record: impl FnMut(u64) -> Vec<u8>) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary dir for the baseline");
    let db = sled::open(dir.path()).expect("a fresh sled database");
    let tree = db.open_tree("baseline").expect("a fresh tree");
    let start = Instant::now();
    for seq in 1..=count as u64 {
        tree.insert(seq.to_be_bytes(), record(seq)).expect("sled inserts");
        if seq % flush_every as u64 == 0 || seq == count as u64 {
            db.flush().expect("sled flushes");
        }
    }
    start.elapsed()
}

pub fn seconds(time: Duration) -> String {
    format!("{:.2}", time.as_secs_f64())
}

/// `1234567` as `1,234,567`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Prints `passed` when there is no problem; else `failed` and every problem,
/// loudly, and answers a failure.
pub fn report_problems(problems: &[String], passed: &str, failed: &str) -> ExitCode {
    if problems.is_empty() {
        println!("check: {passed}");
        return ExitCode::SUCCESS;
    }
    eprintln!();
    eprintln!("!!!!!!!! BUG: {failed} !!!!!!!!");
    for problem in problems {
        eprintln!("!!! {problem}");
    }
    ExitCode::FAILURE
}
