//! `migrate-store` against a real PostgreSQL: a sled store with a history made
//! through the store and the services (an import, orders placed, confirmed and
//! cancelled, planning, reassignments, a leg issued, goods received,
//! confirmations accepted and rejected, sessions opened, refreshed and
//! revoked) is moved into a scratch database; then both stores must answer
//! every read the same, and the copy must go on numbering where sled stopped.
//!
//! Runs when `HANDOVER_TEST_POSTGRES` names a server; skipped otherwise.

#[path = "store_contract/fixture.rs"]
// The contract suite's world, shared: this file uses part of it.
#[allow(dead_code)]
mod fixture;

use std::{path::Path, sync::Arc};

use fixture::{assign, delivered, dispatcher, draft, failed, held, item_id, name, node_id, now, opened, EXP1, EXP2};
use handover_server::{
    domain::{
        confirmations::{DeviceSync, PushOutcome, RejectCode},
        sessions::{RefreshToken, Session},
        shipments::DeliveryStatus,
    },
    migrate_store::{migrate_store, MigrateStoreError, Report},
    orders,
    store::{
        postgres::{PgOptions, PgStore, ScratchDatabase, JWT_SECRET_NAME, RECORD_TABLES},
        sled::SledStore,
        DeliveryQuery, ReceiptQuery, RefreshOutcome, Step, Store,
    },
};
use handover_shared::{sync::Confirmation, CustomerId, DeviceId, OrderId};
use rand::RngCore as _;
use time::Duration;
use uuid::Uuid;

/// More than any read here returns: a read with this limit is a whole read.
const ALL: usize = 10_000;

/// What the fixture asks of a backend: here, the sled store of one data dir.
trait Backend {
    async fn open(&self) -> Arc<dyn Store>;
}

struct SledDir<'a>(&'a Path);

impl Backend for SledDir<'_> {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(SledStore::open(self.0).expect("a fresh sled store"))
    }
}

/// A scratch database, or `None` (and a note) when no server is named.
fn scratch(test: &str) -> Option<ScratchDatabase> {
    let database = ScratchDatabase::from_env();
    if database.is_none() {
        eprintln!("{test}: skipped, HANDOVER_TEST_POSTGRES is unset");
    }
    database
}

fn options(database: &ScratchDatabase) -> PgOptions {
    PgOptions::new(database.url())
}

fn device(text: &str) -> DeviceId {
    DeviceId::parse(text).expect("a device id")
}

/// Order `i` (customers in turn) of `quantity`, placed and confirmed: its receipt number.
async fn confirmed(store: &dyn Store, i: usize, quantity: i128) -> u64 {
    let draft = draft(store, i, quantity).await;
    let (receipt, _) = orders::confirm(store, &dispatcher(), &draft.order_id).await.expect("a fresh draft confirms");
    receipt.seq
}

/// One confirmation pushed alone (so that each has a moment of its own).
async fn push(store: &dyn Store, courier: &str, confirmation: Confirmation) -> PushOutcome {
    fixture::push(store, courier, vec![confirmation]).await.remove(0)
}

fn token_hash() -> [u8; 32] {
    let mut hash = [0u8; 32];
    rand::rng().fill_bytes(&mut hash);
    hash
}

/// What the tests need to know of the history they made.
struct History {
    sessions: Vec<Uuid>,
    /// The live refresh token of EXP1's session, and the one it replaced.
    live_token: [u8; 32],
    retired_token: [u8; 32],
    drafts: Vec<OrderId>,
    /// An accepted confirmation, to push again after the move.
    accepted: Confirmation,
    signing_key: Vec<u8>,
}

/// A sled store in `dir` with some of everything, and a generated signing key
/// beside it (random bytes, as the server makes).
async fn sled_with_history(dir: &Path) -> History {
    let store = opened(&SledDir(dir), 6, 10).await;
    let store = &*store;
    for i in 0..12 {
        confirmed(store, i, 1).await;
    }
    confirmed(store, 0, 20).await; // more than any node holds: backordered
    let open = draft(store, 1, 2).await;
    let cancelled = draft(store, 2, 1).await;
    orders::cancel(store, &dispatcher(), &cancelled.order_id).await.expect("an open draft cancels");
    store.plan_pending(now()).await.expect("planning runs");
    store.goods_receipt(&node_id("B2"), &item_id(), 4, now()).await.expect("received");

    let (mine, theirs) = (held(store, EXP1).await, held(store, EXP2).await);
    assert!(
        mine.len() >= 4 && !theirs.is_empty(),
        "both couriers carry deliveries: {} and {}",
        mine.len(),
        theirs.len()
    );
    assign(store, &theirs[0], EXP1).await;
    assign(store, &mine[0], EXP2).await;
    let upcoming = mine.iter().find(|d| d.status() == DeliveryStatus::Upcoming).expect("a delivery from MW");
    match store.issue_leg(&upcoming.delivery_id.leg(0), now()).await {
        Ok(Step::Done(_)) => {}
        other => panic!("the leg is not issued: {other:?}"),
    }
    let accepted = delivered(&mine[1]);
    assert_eq!(push(store, EXP1, accepted.clone()).await, PushOutcome::Accepted);
    assert_eq!(push(store, EXP1, failed(&mine[2])).await, PushOutcome::Accepted);
    let not_theirs = push(store, EXP2, delivered(&mine[3])).await;
    assert!(matches!(not_theirs, PushOutcome::Rejected { code: RejectCode::NotAssignee, .. }), "{not_theirs:?}");
    let stale = push(store, EXP1, Confirmation { version: 999, ..delivered(&mine[3]) }).await;
    assert!(matches!(stale, PushOutcome::Rejected { .. }), "{stale:?}");
    store
        .record_sync(DeviceSync { device_id: device("hh-pull-only"), ..fixture::sync_of(EXP2) })
        .await
        .expect("a sync is recorded");
    let key = handover_shared::proof::DeviceKey::from_secret([4; 32]).public_key();
    let registered = store.register_device_key(&device("hh-signing"), &key, &name(EXP2), now()).await;
    assert!(matches!(registered, Ok(Ok(()))), "a device key is registered: {registered:?}");
    let photo = vec![0xFF, 0xD8, 0xFF, 0xE0, 7, 7, 7];
    store.images().put(&handover_shared::proof::sha256_hex(&photo), photo).await.expect("an image is stored");

    let mut sessions = Vec::new();
    let (retired_token, live_token) = (token_hash(), token_hash());
    for (courier, device_id) in [(EXP1, "hh-exp-1"), (EXP2, "hh-exp-2"), (EXP2, "hh-lost")] {
        let session = Session {
            id: Uuid::new_v4(),
            username: name(courier),
            device_id: device(device_id),
            created_at: now(),
            revoked_at: None,
            revoke_reason: None,
        };
        let first = if sessions.is_empty() { retired_token } else { token_hash() };
        let token = RefreshToken { session_id: session.id, expires_at: now() + Duration::days(30), retired_at: None };
        sessions.push(session.id);
        store.open_session(session, first, token, true, now()).await.expect("a session opens").expect("a free device");
    }
    let rotated = store.rotate_refresh(retired_token, live_token, now() + Duration::days(30), now()).await;
    assert!(matches!(rotated, Ok(RefreshOutcome::Rotated(_))), "{rotated:?}");
    assert_eq!(store.revoke_device(&device("hh-lost"), now()).await.expect("revoked").len(), 1);

    let mut signing_key = vec![0u8; 32];
    rand::rng().fill_bytes(&mut signing_key);
    std::fs::write(
        dir.join("jwt-secret"),
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &signing_key),
    )
    .expect("the key file is written");
    store.flush().await.expect("flushed");
    History {
        sessions,
        live_token,
        retired_token,
        drafts: vec![open.order_id, cancelled.order_id],
        accepted,
        signing_key,
    }
}

/// Everything a client can read of a store, in the store's own order.
#[derive(Debug, PartialEq)]
struct Observed {
    nodes: Vec<String>,
    items: Vec<String>,
    customers: Vec<String>,
    accounts: Vec<String>,
    /// Each listing or record read, as its debug text (some records lack `Eq`).
    reads: Vec<(String, String)>,
}

async fn observe(store: &dyn Store, history: &History) -> Observed {
    let mut reads: Vec<(String, String)> = Vec::new();
    let mut read = |what: String, value: &dyn std::fmt::Debug| reads.push((what, format!("{value:?}")));
    let known = store.known_network().await.expect("the network reads");
    let mut nodes: Vec<_> = known.nodes.keys().cloned().collect();
    nodes.sort();
    let mut customers: Vec<CustomerId> = known.customers.iter().cloned().collect();
    customers.sort();
    for node in &nodes {
        read(format!("node {node}"), &store.node(node).await.expect("reads"));
        read(format!("stock of {node}"), &store.node_stock(node).await.expect("reads"));
    }
    for customer in &customers {
        read(format!("customer {customer}"), &store.customer(customer).await.expect("reads"));
        read(format!("account of {customer}"), &store.customer_account(customer).await.expect("reads"));
        read(format!("recent receipts of {customer}"), &store.recent_receipts(customer, 3).await.expect("reads"));
        read(format!("open drafts of {customer}"), &store.open_drafts(Some(customer)).await.expect("reads"));
        let theirs = ReceiptQuery { customer_id: Some(customer.clone()), limit: ALL, ..Default::default() };
        read(format!("receipts of {customer}"), &store.receipts(&theirs).await.expect("reads"));
    }
    let items = store.items().await.expect("reads");
    for item in &items {
        read(format!("item {}", item.id), &store.item(&item.id).await.expect("reads"));
    }
    let accounts = store.accounts().await.expect("reads");
    for account in &accounts {
        read(format!("account {}", account.username), &store.account(&account.username).await.expect("reads"));
    }
    let receipt_queries = [
        ("all receipts", ReceiptQuery { limit: ALL, ..Default::default() }),
        ("delivered receipts", ReceiptQuery { delivered: Some(true), limit: ALL, ..Default::default() }),
        ("undelivered receipts", ReceiptQuery { delivered: Some(false), limit: ALL, ..Default::default() }),
        ("backordered receipts", ReceiptQuery { backordered: Some(true), limit: ALL, ..Default::default() }),
        ("a page of receipts", ReceiptQuery { after: Some(3), limit: 4, ..Default::default() }),
        ("recent receipts", ReceiptQuery { since: Some(now() - Duration::hours(1)), limit: ALL, ..Default::default() }),
    ];
    for (what, query) in receipt_queries {
        read(what.into(), &store.receipts(&query).await.expect("reads"));
    }
    for receipt in &store.receipts(&ReceiptQuery { limit: ALL, ..Default::default() }).await.expect("reads") {
        read(format!("receipt {}", receipt.receipt_id), &store.receipt(&receipt.receipt_id).await.expect("reads"));
    }
    let delivery_queries = [
        ("all deliveries", DeliveryQuery { limit: ALL, ..Default::default() }),
        ("open deliveries", DeliveryQuery { open_only: true, limit: ALL, ..Default::default() }),
        ("unassigned", DeliveryQuery { unassigned_only: true, limit: ALL, ..Default::default() }),
        ("entrusted", DeliveryQuery { entrusted_only: true, limit: ALL, ..Default::default() }),
        ("of exp-1", DeliveryQuery { assignee: Some(name(EXP1)), limit: ALL, ..Default::default() }),
        ("of exp-2", DeliveryQuery { assignee: Some(name(EXP2)), limit: ALL, ..Default::default() }),
        ("a page of deliveries", DeliveryQuery { after: Some(2), limit: 3, ..Default::default() }),
    ];
    for (what, query) in delivery_queries {
        read(what.into(), &store.deliveries(&query).await.expect("reads"));
    }
    for delivery in &store.deliveries(&DeliveryQuery { limit: ALL, ..Default::default() }).await.expect("reads") {
        let id = &delivery.delivery_id;
        read(format!("delivery {id}"), &store.delivery(id).await.expect("reads"));
    }
    read("stock snapshot".into(), &store.stock_snapshot().await.expect("reads"));
    read("balances".into(), &store.all_balances().await.expect("reads"));
    read("device syncs".into(), &store.device_syncs().await.expect("reads"));
    read("rejection logs".into(), &store.rejection_logs().await.expect("reads"));
    read("device chains".into(), &store.device_chains().await.expect("reads"));
    read("open drafts".into(), &store.open_drafts(None).await.expect("reads"));
    for id in &history.drafts {
        read(format!("draft {id}"), &store.draft(id).await.expect("reads"));
    }
    for id in &history.sessions {
        read(format!("session {id}"), &store.session(id).await.expect("reads"));
    }
    for courier in [EXP1, EXP2] {
        for limit in [2, ALL] {
            let mut cursor = 0;
            loop {
                let (entries, last, more) =
                    store.assignment_changes(&name(courier), cursor, limit).await.expect("a pull");
                let shown: Vec<_> = entries
                    .iter()
                    .map(|entry| (&entry.delivery, &entry.customer_name, &entry.item_name, entry.empties_expected))
                    .collect();
                read(format!("feed of {courier} from {cursor} by {limit}"), &(shown, last, more));
                cursor = last;
                if !more {
                    break;
                }
            }
        }
    }
    Observed {
        nodes: nodes.iter().map(ToString::to_string).collect(),
        items: items.iter().map(|item| item.id.to_string()).collect(),
        customers: customers.iter().map(ToString::to_string).collect(),
        accounts: accounts.iter().map(|account| account.username.to_string()).collect(),
        reads,
    }
}

async fn migrated(dir: &Path, database: &ScratchDatabase) -> Report {
    match migrate_store(dir, &options(database)).await {
        Ok(report) => report,
        Err(err) => panic!("the migration fails: {err}"),
    }
}

#[tokio::test]
async fn both_stores_answer_every_read_the_same_and_postgres_numbers_on_where_sled_stopped() {
    let Some(database) = scratch("both_stores_answer_every_read_the_same") else { return };
    let dir = tempfile::tempdir().expect("a temporary dir");
    let history = sled_with_history(dir.path()).await;

    let report = migrated(dir.path(), &database).await;

    assert!(report.mismatches.is_empty(), "{report}");
    let copied = PgStore::open(&options(&database)).await.expect("the copy opens");
    assert_eq!(copied.images().digests().await.expect("listed").len(), 1, "the proof images are copied");
    let kinds: Vec<&str> = report.counts.iter().map(|(kind, _, _)| *kind).collect();
    assert_eq!(kinds, RECORD_TABLES, "every kind of record is counted");
    for (kind, in_sled, in_postgres) in &report.counts {
        assert!(*in_sled > 0, "the history holds some {kind}");
        assert_eq!(in_sled, in_postgres, "{kind}");
    }
    assert_eq!(report.sled_counters, report.postgres_counters);
    assert_eq!(report.sled_counters.receipt, 13);
    let sled: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("the sled store opens again"));
    let postgres = PgStore::open(&options(&database)).await.expect("the copy opens");
    assert_eq!(postgres.secret(JWT_SECRET_NAME).await.expect("reads"), Some(history.signing_key.clone()));
    let postgres: Arc<dyn Store> = Arc::new(postgres);
    let (on_sled, on_postgres) = (observe(&*sled, &history).await, observe(&*postgres, &history).await);
    for ((what, in_sled), (_, in_postgres)) in on_sled.reads.iter().zip(&on_postgres.reads) {
        assert_eq!(in_sled, in_postgres, "{what} reads differently");
    }
    assert_eq!(on_sled, on_postgres);

    // A replay is answered from the copied first outcome, and applied once.
    assert_eq!(push(&*postgres, EXP1, history.accepted.clone()).await, PushOutcome::Duplicate);
    // The copied refresh tokens: the live one rotates, the retired one revokes its session.
    let rotated = postgres.rotate_refresh(history.live_token, token_hash(), now() + Duration::days(1), now()).await;
    assert!(matches!(rotated, Ok(RefreshOutcome::Rotated(_))), "{rotated:?}");
    let reused = postgres.rotate_refresh(history.retired_token, token_hash(), now() + Duration::days(1), now()).await;
    assert!(matches!(reused, Ok(RefreshOutcome::ReuseDetected(_))), "{reused:?}");

    // Numbering goes on: the next receipt, ledger line and feed changes.
    let before = report.postgres_counters;
    assert_eq!(confirmed(&*postgres, 1, 1).await, before.receipt + 1, "the next receipt number");
    postgres.goods_receipt(&node_id("B1"), &item_id(), 1, now()).await.expect("ok");
    let (ledger, _) = postgres.stock_snapshot().await.expect("reads");
    assert_eq!(ledger.last().map(|line| line.seq), Some(before.ledger + 1), "the next ledger line");
    let theirs = held(&*postgres, EXP2).await;
    assign(&*postgres, &theirs[0], EXP1).await;
    let mut lasts = Vec::new();
    for courier in [EXP1, EXP2] {
        let (entries, last, _) = postgres.assignment_changes(&name(courier), before.feed, ALL).await.expect("a pull");
        assert_eq!(entries.len(), 1, "{courier} is told of the reassignment once");
        lasts.push(last);
    }
    lasts.sort_unstable();
    assert_eq!(lasts, [before.feed + 1, before.feed + 2], "the next feed changes");
}

#[tokio::test]
async fn a_target_that_holds_anything_is_refused_and_left_unchanged() {
    let (Some(database), Some(holding_a_key)) =
        (scratch("a_target_that_holds_anything_is_refused"), ScratchDatabase::from_env())
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary dir");
    sled_with_history(dir.path()).await;
    migrated(dir.path(), &database).await;
    let target = PgStore::open(&options(&database)).await.expect("the copy opens");
    let counts = target.record_counts().await.expect("counts");
    let counters = target.counters().await.expect("counters");

    let again = migrate_store(dir.path(), &options(&database)).await;

    let Err(MigrateStoreError::TargetNotEmpty(held)) = &again else { panic!("not refused: {again:?}") };
    assert_eq!(held.len(), RECORD_TABLES.len() + 2, "every table holds something, secrets and counters too: {held:?}");
    let message = again.as_ref().map(drop).expect_err("refused").to_string();
    assert!(message.contains("not empty") && message.contains("nothing was changed"), "{message}");
    assert_eq!(target.record_counts().await.expect("counts"), counts, "nothing was written");
    assert_eq!(target.counters().await.expect("counters"), counters);

    // A database where a server on PostgreSQL started once holds its key only.
    let started = PgStore::open(&options(&holding_a_key)).await.expect("opens");
    let key = started.shared_secret(JWT_SECRET_NAME, b"a key made by a server started on it").await.expect("made");
    let refused = migrate_store(dir.path(), &options(&holding_a_key)).await;
    assert!(matches!(&refused, Err(MigrateStoreError::TargetNotEmpty(held)) if held == &["secrets"]), "{refused:?}");
    assert_eq!(started.secret(JWT_SECRET_NAME).await.expect("reads"), Some(key));
    assert!(started.record_counts().await.expect("counts").iter().all(|(_, n)| *n == 0));
}

#[tokio::test]
async fn a_store_in_use_or_missing_is_not_migrated_and_the_target_is_not_touched() {
    let Some(database) = scratch("a_store_in_use_or_missing_is_not_migrated") else { return };
    let dir = tempfile::tempdir().expect("a temporary dir");
    let running = SledStore::open(dir.path()).expect("a store, held open as a running server holds it");

    let in_use = migrate_store(dir.path(), &options(&database)).await;
    let missing = migrate_store(&dir.path().join("nothing-here"), &options(&database)).await;

    let message = in_use.as_ref().map(drop).expect_err("refused").to_string();
    assert!(message.contains("in use by another process"), "{message}");
    let message = missing.as_ref().map(drop).expect_err("refused").to_string();
    assert!(message.contains("holds no sled store"), "{message}");
    assert!(!dir.path().join("nothing-here").exists(), "no store is made where none was");
    let target = PgStore::connect(&options(&database)).expect("a pool");
    assert_eq!(target.schema_version().await.expect("reads"), 0, "the target was not touched");
    drop(running);
}
