//! The store contract: the guarantees every [`Store`] backend gives, written once
//! over the trait and run for each backend. A backend joins with an impl of
//! [`Backend`] and one `store_contract!` line, below the sled one.
//!
//! The tests drive the store through the trait and the public services (import,
//! orders), as the server does. Where a guarantee is about concurrency, the test
//! runs the calls concurrently on tokio tasks; nothing sleeps or times anything.

#[path = "store_contract/fixture.rs"]
mod fixture;
#[path = "store_contract/in_turn.rs"]
mod in_turn;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use fixture::*;
use handover_server::domain::sessions::{RefreshToken, Session};
use handover_server::{
    domain::{
        confirmations::{PushOutcome, Pushed, RejectCode},
        corrections::{Correction, CorrectionRefusal},
        network::{Customer, Item, Node},
        orders::{DraftRefusal, DraftState},
        shipments::{DeliveryCard, DeliveryState, DeliveryStatus, LegStatus},
        stock::{Balance, Movement},
    },
    import, orders,
    store::{Account, ImportError, ImportPlan, Step, Store},
};
use handover_shared::{sync::Confirmation, DeviceId, NodeKind};

/// What the suite needs of a backend.
trait Backend: Sized + Send + Sync + 'static {
    /// A new, empty store; `None` when this backend cannot run here (a database
    /// backend without its URL), and its tests pass as skipped.
    fn fresh() -> Option<Self>;
    /// Opens the store. Every handle of a previous open has been dropped.
    async fn open(&self) -> Arc<dyn Store>;
    /// The data as a power cut would leave it now, taken while the store is open.
    fn crash_image(&self) -> Self;
}

/// The sled backend: a temporary data dir.
struct SledBackend(tempfile::TempDir);

impl Backend for SledBackend {
    fn fresh() -> Option<Self> {
        Some(Self(tempfile::tempdir().expect("a temporary dir")))
    }

    async fn open(&self) -> Arc<dyn Store> {
        // Dropping the last handle releases the data dir (the group commit's
        // thread is joined), so it opens again at once.
        Arc::new(handover_server::store::sled::SledStore::open(self.0.path()).expect("the sled store opens"))
    }

    fn crash_image(&self) -> Self {
        let image = tempfile::tempdir().expect("a temporary dir");
        copy_dir(self.0.path(), image.path());
        Self(image)
    }
}

/// The PostgreSQL backend: a database of its own on the server that
/// `HANDOVER_TEST_POSTGRES` names, dropped with the backend; skipped when
/// the variable is unset.
struct PgBackend(handover_server::store::postgres::ScratchDatabase);

impl Backend for PgBackend {
    fn fresh() -> Option<Self> {
        handover_server::store::postgres::ScratchDatabase::from_env().map(Self)
    }

    async fn open(&self) -> Arc<dyn Store> {
        let options = handover_server::store::postgres::PgOptions::new(self.0.url());
        Arc::new(handover_server::store::postgres::PgStore::open(&options).await.expect("the PostgreSQL store opens"))
    }

    /// What PostgreSQL has committed: a copy of the database (the open
    /// store's connections are cut to take it, as a crash would cut them).
    fn crash_image(&self) -> Self {
        Self(self.0.copy().expect("a copy of the test database"))
    }
}

/// Two server instances on one PostgreSQL database: two stores, each with its
/// own pool, taking the calls in turn. Every contract then holds across
/// instances: the concurrent confirms, pushes, planning runs and imports of
/// each test reach both.
struct PgTwoInstances(handover_server::store::postgres::ScratchDatabase);

impl Backend for PgTwoInstances {
    fn fresh() -> Option<Self> {
        handover_server::store::postgres::ScratchDatabase::from_env().map(Self)
    }

    async fn open(&self) -> Arc<dyn Store> {
        let options = handover_server::store::postgres::PgOptions::new(self.0.url());
        let open = || handover_server::store::postgres::PgStore::open(&options);
        let (first, second) = tokio::join!(open(), open());
        let instances =
            [first, second].map(|store| Arc::new(store.expect("the PostgreSQL store opens")) as Arc<dyn Store>);
        Arc::new(in_turn::InTurn::new(instances.to_vec()))
    }

    fn crash_image(&self) -> Self {
        Self(self.0.copy().expect("a copy of the test database"))
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("a directory");
    for entry in std::fs::read_dir(from).expect("a directory to copy") {
        let entry = entry.expect("an entry");
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("a copy");
        }
    }
}

/// `store_contract!(module, BackendType);` runs every contract for a backend,
/// one test each, in a module named after it.
macro_rules! store_contract {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;
            store_contract!(@each $backend;
                receipt_numbers_are_contiguous_and_each_draft_makes_one_receipt,
                a_replayed_batch_answers_the_same_and_changes_nothing,
                a_confirmation_id_keeps_its_first_outcome_whoever_sends_it_again,
                an_import_that_conflicts_with_the_stored_network_changes_nothing,
                of_two_imports_at_once_each_adding_a_master_warehouse_one_is_refused,
                a_batch_applies_its_sound_confirmations_and_remembers_every_outcome,
                the_feed_shows_each_change_to_the_next_read_from_the_cursor_before_it,
                the_feed_reads_the_same_in_pages_of_any_size,
                a_reader_following_its_cursor_misses_no_change_committed_while_it_reads,
                the_ledger_replays_to_the_stored_stock_after_concurrent_movements,
                acknowledged_writes_survive_a_reopen_and_a_power_cut,
                cancelling_a_draft_twice_is_harmless,
                a_purge_forgets_stale_drafts_and_keeps_confirmed_ones,
                issuing_a_leg_twice_moves_the_goods_once,
                assigning_the_same_courier_twice_bumps_the_version_once,
                each_goods_receipt_adds_its_quantity_exactly_once,
                a_short_hand_over_stores_its_follow_up_and_one_reversal_of_two_takes_it_back,
                a_cancel_and_a_confirmation_at_once_never_both_apply,
                a_cancelled_receipt_is_never_planned,
                of_two_accounts_logging_in_on_a_new_device_at_once_one_gets_it,
                a_devices_rejections_are_listed_to_a_bound_and_the_rest_counted,
                of_two_keys_registered_for_one_device_at_once_one_stands,
                signed_pushes_extend_their_devices_chain_and_a_gap_stays_visible,
                an_image_upload_takes_only_the_chunk_that_continues_it_and_an_image_is_stored_once,
            );
        }
    };
    (@each $backend:ty; $($contract:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $contract() {
            match <$backend as super::Backend>::fresh() {
                Some(backend) => super::$contract(backend).await,
                None => eprintln!("skipped: {} is not configured here", stringify!($backend)),
            }
        }
    )+};
}

store_contract!(sled, SledBackend);
store_contract!(postgres, PgBackend);
store_contract!(postgres_two_instances, PgTwoInstances);

// 1. Receipts.

async fn receipt_numbers_are_contiguous_and_each_draft_makes_one_receipt(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    let mut drafts = Vec::new();
    for i in 0..40 {
        drafts.push(draft(&*store, i, 1).await.order_id);
    }
    // Every draft confirmed at once; every fourth by two requests (a double click).
    let confirms: Vec<_> = drafts.iter().chain(drafts.iter().step_by(4)).cloned().collect();
    let answers = at_once(&store, confirms.len(), |store, i| {
        let order_id = confirms[i].clone();
        async move { orders::confirm(&*store, &dispatcher(), &order_id).await.expect("a draft confirms") }
    })
    .await;
    let mut by_draft: HashMap<_, Vec<_>> = HashMap::new();
    for (order_id, answer) in confirms.iter().zip(answers) {
        by_draft.entry(order_id).or_default().push(answer);
    }
    for (order_id, answers) in &by_draft {
        let created = answers.iter().filter(|(_, created)| *created).count();
        assert_eq!(created, 1, "draft {order_id}: exactly one confirm made its receipt");
        assert!(
            answers.iter().all(|(r, _)| *r == answers[0].0),
            "draft {order_id}: every confirm got the same receipt"
        );
    }
    let (again, created) = orders::confirm(&*store, &dispatcher(), &drafts[0]).await.expect("a later confirm");
    assert!(!created && again == by_draft[&drafts[0]][0].0, "a later confirm returns the first receipt");
    let numbers: Vec<u64> = all_receipts(&*store).await.iter().map(|r| r.seq).collect();
    assert_eq!(numbers, (1..=40).collect::<Vec<_>>(), "receipt numbers run 1..=40, no gap, no repeat");
    let counted: u64 = observe(&*store).await.customers.iter().map(|(_, account)| account.orders).sum();
    assert_eq!(counted, 40, "each receipt counted once in the customer information");
}

// 2, 3. Replays.

async fn a_replayed_batch_answers_the_same_and_changes_nothing(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 6, 2).await;
    let (mine, theirs) = (held(&*store, EXP1).await, held(&*store, EXP2).await);
    let empty_handed = Confirmation { quantity: 0, ..delivered(&mine[2]) };
    let batch = vec![delivered(&mine[0]), failed(&mine[1]), delivered(&theirs[0]), empty_handed];
    let first = push(&*store, EXP1, batch.clone()).await;
    assert!(matches!(first[..], [PushOutcome::Accepted, PushOutcome::Accepted, PushOutcome::Rejected { .. }, _]));
    assert!(matches!(&first[3], PushOutcome::Rejected { code: RejectCode::Invalid, .. }), "{:?}", first[3]);
    let before = observe(&*store).await;

    // The same batch again, twice at once, as two retries in flight together.
    let retries = at_once(&store, 2, |store, _| {
        let batch = batch.clone();
        async move { push(&*store, EXP1, batch).await }
    })
    .await;
    let replayed: Vec<PushOutcome> = first
        .iter()
        .map(|outcome| if *outcome == PushOutcome::Accepted { PushOutcome::Duplicate } else { outcome.clone() })
        .collect();
    assert_eq!(retries, [replayed.clone(), replayed], "accepted comes back duplicate, rejected the same");
    assert_unchanged(&*store, &before, "a replay").await;
}

async fn a_confirmation_id_keeps_its_first_outcome_whoever_sends_it_again(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 4, 1).await;
    let (mine, theirs) = (held(&*store, EXP1).await, held(&*store, EXP2).await);
    let (accepted, refused) = (delivered(&mine[0]), delivered(&theirs[0]));
    assert_eq!(push(&*store, EXP1, vec![accepted.clone(), refused.clone()]).await[0], PushOutcome::Accepted);
    let first_refusal = push(&*store, EXP1, vec![refused.clone()]).await;
    assert_eq!(push(&*store, EXP1, vec![accepted.clone()]).await, [PushOutcome::Duplicate]);

    // Another courier sends both ids with content of its own.
    let impostors = [&accepted, &refused].map(|c| Confirmation { recipient: Some("Someone else".into()), ..c.clone() });
    for outcome in push(&*store, EXP2, impostors.to_vec()).await {
        let conflicting = matches!(outcome, PushOutcome::Rejected { code: RejectCode::ConflictingDuplicate, .. });
        assert!(conflicting, "same id, other content: {outcome:?}");
    }
    let retried = push(&*store, EXP1, vec![accepted.clone(), refused]).await;
    assert_eq!(retried[0], PushOutcome::Duplicate, "the first sender's retry still meets its acceptance");
    assert_eq!(retried[1..], first_refusal[..], "and its refusal, word for word");
    let receipt = store.receipt(&mine[0].receipt_id).await.expect("reads").expect("exists");
    let proof = receipt.proof.expect("delivered, with its proof");
    assert_eq!((proof.confirmation_id, proof.recipient), (accepted.confirmation_id, "Front desk".to_owned()));
}

// 4. Atomicity.

async fn an_import_that_conflicts_with_the_stored_network_changes_nothing(backend: impl Backend) {
    let store = opened(&backend, 10, 0).await;
    planned(&*store, 3, 2).await;
    let before = observe(&*store).await;

    // Sound on its own, but counts fewer toners at B1 than planning reserved there.
    let mut file = network(10, 50);
    file.stock[0].quantity = 5;
    file.nodes[2].name = "Renamed".into();
    file.items[0].name = "Renamed".into();
    file.accounts[1].password = "another-password".into();
    let refused = import::import_network(&*store, &file).await;
    assert!(matches!(refused, Err(import::ImportFailure::Invalid(ref p)) if !p.is_empty()), "{refused:?}");
    assert_unchanged(&*store, &before, "an import counting less than is reserved").await;

    // Changes to everything, and a node's kind: as if another import landed after validation.
    let renamed = || String::from("Renamed");
    let mut plan = ImportPlan {
        nodes: before.nodes.iter().map(|node| Node { name: renamed(), ..node.clone() }).collect(),
        items: before.items.iter().map(|item| Item { name: renamed(), ..item.clone() }).collect(),
        stock: before.balances.iter().map(|(node, item, _)| stock_count(node, item, 1_000)).collect(),
        customers: before.customers.iter().map(|(c, _)| Customer { name: renamed(), ..c.clone() }).collect(),
        accounts: before.accounts.iter().map(|a| Account { password_hash: renamed(), ..a.clone() }).collect(),
    };
    plan.nodes[0].kind = if plan.nodes[0].kind == NodeKind::Seller { NodeKind::Manufacturer } else { NodeKind::Seller };
    let refused = store.import_network(plan, now()).await;
    assert!(matches!(refused, Err(ImportError::Conflicts(ref p)) if !p.is_empty()), "{refused:?}");
    assert_unchanged(&*store, &before, "an import changing a node's kind").await;
}

async fn of_two_imports_at_once_each_adding_a_master_warehouse_one_is_refused(backend: impl Backend) {
    // Each plan is sound against the empty store it was validated against; the
    // store judges them again, one import at a time.
    let store = backend.open().await;
    let master = |id: &str| ImportPlan {
        nodes: vec![Node { id: node_id(id), kind: NodeKind::MasterWarehouse, name: id.into() }],
        ..ImportPlan::default()
    };
    let imports =
        at_once(&store, 2, |store, i| async move { store.import_network(master(["MW-A", "MW-B"][i]), now()).await })
            .await;
    let refused: Vec<_> = imports.iter().filter(|outcome| matches!(outcome, Err(ImportError::Conflicts(_)))).collect();
    assert_eq!((refused.len(), imports.len()), (1, 2), "exactly one passes: {imports:?}");
    let masters = store.known_network().await.expect("reads").nodes.into_values();
    assert_eq!(masters.filter(|kind| *kind == NodeKind::MasterWarehouse).count(), 1);
}

async fn a_batch_applies_its_sound_confirmations_and_remembers_every_outcome(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 6, 3).await;
    let (mine, theirs) = (held(&*store, EXP1).await, held(&*store, EXP2).await);
    let batch = vec![delivered(&mine[0]), delivered(&theirs[0]), delivered(&mine[1])];
    let outcomes = push(&*store, EXP1, batch.clone()).await;
    assert_eq!(outcomes[0], PushOutcome::Accepted);
    assert!(matches!(outcomes[1], PushOutcome::Rejected { code: RejectCode::NotAssignee, .. }), "{outcomes:?}");
    assert_eq!(outcomes[2], PushOutcome::Accepted, "a refusal in the middle stops nothing after it");
    for (delivery, accepted) in [(&mine[0], true), (&theirs[0], false), (&mine[1], true)] {
        let receipt = store.receipt(&delivery.receipt_id).await.expect("reads").expect("exists");
        assert_eq!(receipt.delivered, accepted, "{}: delivered only if accepted", delivery.delivery_id);
    }
    let b1 = balance(&*store, "B1").await;
    assert_eq!((b1.on_hand, b1.reserved), (100 - 6, 18 - 6), "two hand-overs of 3 left the branch, once each");
    let logs = store.rejection_logs().await.expect("rejection logs read");
    let listed: Vec<_> = logs.iter().flat_map(|log| &log.recent).map(|seen| &seen.confirmation_id).collect();
    assert_eq!(listed, [&batch[1].confirmation_id], "the refusal is listed for the dispatcher");
    let mut alone = Vec::new();
    for confirmation in batch {
        alone.extend(push(&*store, EXP1, vec![confirmation]).await);
    }
    assert_eq!(alone, [PushOutcome::Duplicate, outcomes[1].clone(), PushOutcome::Duplicate], "each one remembered");
    assert_stock_balanced(&*store).await;
}

// 5. The feed.

async fn the_feed_shows_each_change_to_the_next_read_from_the_cursor_before_it(backend: impl Backend) {
    // Four deliveries from B1 (ready), the next from the master warehouse (upcoming).
    let store = opened(&backend, 4, 100).await;
    planned(&*store, 8, 1).await;
    let (_, mut cursor) = read_feed(&*store, EXP1, 0, 2).await;

    planned(&*store, 2, 1).await;
    let (seen, next) = next_read(&*store, cursor, "planning").await;
    let newly_held: Vec<_> = held(&*store, EXP1).await.split_off(4).into_iter().map(|d| d.delivery_id).collect();
    assert_eq!(ids(&seen), newly_held, "the newly planned delivery, and nothing else");
    cursor = next;

    let theirs = held(&*store, EXP2).await;
    assign(&*store, &theirs[0], EXP1).await;
    let (seen, next) = next_read(&*store, cursor, "an assignment to it").await;
    assert_eq!(ids(&seen), [theirs[0].delivery_id.clone()]);
    cursor = next;

    let mine = held(&*store, EXP1).await;
    assign(&*store, &mine[0], EXP2).await;
    let (seen, next) = next_read(&*store, cursor, "a reassignment away").await;
    assert_eq!(ids(&seen), [mine[0].delivery_id.clone()]);
    assert_eq!(seen[0].assignee, Some(name(EXP2)), "shown with its new courier");
    cursor = next;

    let upcoming = mine.iter().find(|d| d.status() == DeliveryStatus::Upcoming).expect("an upcoming delivery");
    issue(&*store, upcoming, 0).await;
    let (seen, next) = next_read(&*store, cursor, "a leg issued").await;
    assert_eq!((ids(&seen), seen[0].status()), (vec![upcoming.delivery_id.clone()], DeliveryStatus::Ready));
    cursor = next;

    push(&*store, EXP1, vec![delivered(&mine[1]), failed(&mine[2])]).await;
    let (seen, _) = next_read(&*store, cursor, "a delivery confirmed and one failed").await;
    assert_eq!(ids(&seen), [mine[1].delivery_id.clone(), mine[2].delivery_id.clone()]);
    assert_eq!((seen[0].state, &seen[1].assignee), (DeliveryState::Delivered, &None), "back to the dispatcher");
}

/// What the next reads of EXP1's feed from `from` show, to its end, and the new cursor.
async fn next_read(store: &dyn Store, from: u64, step: &str) -> (Vec<DeliveryCard>, u64) {
    let (pages, next) = read_feed(store, EXP1, from, 2).await;
    let seen = latest_of(pages);
    assert!(!seen.is_empty(), "{step}: the next read from {from} shows it");
    (seen, next)
}

async fn the_feed_reads_the_same_in_pages_of_any_size(backend: impl Backend) {
    let store = opened(&backend, 6, 100).await;
    planned(&*store, 12, 1).await;
    let mine = held(&*store, EXP1).await;
    assign(&*store, &mine[0], EXP2).await;
    assign(&*store, &mine[0], EXP1).await;
    issue(&*store, mine.iter().rfind(|d| d.legs.len() > 1).expect("a delivery with a transfer leg"), 0).await;
    push(&*store, EXP1, vec![delivered(&mine[1])]).await;
    for courier in [EXP1, EXP2] {
        let (whole, end) = read_feed(&*store, courier, 0, 10_000).await;
        let whole = latest_of(whole);
        for limit in [1, 2, 5] {
            let (pages, paged_end) = read_feed(&*store, courier, 0, limit).await;
            assert_eq!(latest_of(pages), whole, "{courier} in pages of {limit}: each change once, in commit order");
            assert_eq!(paged_end, end, "{courier} in pages of {limit} ends at the same cursor");
        }
    }
}

async fn a_reader_following_its_cursor_misses_no_change_committed_while_it_reads(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 12, 1).await;
    let deliveries = [held(&*store, EXP1).await, held(&*store, EXP2).await].concat();
    let writing = Arc::new(AtomicBool::new(true));
    let reader = {
        let (store, writing) = (Arc::clone(&store), Arc::clone(&writing));
        tokio::spawn(async move {
            let (mut cursor, mut seen) = (0, HashMap::new());
            loop {
                let last_round = !writing.load(Ordering::SeqCst);
                let (pages, next) = read_feed(&*store, EXP1, cursor, 2).await;
                seen.extend(pages.into_iter().flatten().map(|card| (card.delivery_id.clone(), card)));
                cursor = next;
                if last_round {
                    return seen;
                }
            }
        })
    };
    // Three writers move their deliveries back and forth between the couriers.
    at_once(&store, 3, |store, writer| {
        let share = deliveries[writer * 4..][..4].to_vec();
        async move {
            for round in 0..4 {
                for delivery in &share {
                    let (home, away) = if delivery.assignee == Some(name(EXP1)) { (EXP1, EXP2) } else { (EXP2, EXP1) };
                    assign(&*store, delivery, if round % 2 == 0 { away } else { home }).await;
                }
            }
        }
    })
    .await;
    writing.store(false, Ordering::SeqCst);
    let followed = reader.await.expect("the reader task");
    let whole = latest_of(read_feed(&*store, EXP1, 0, 10_000).await.0);
    let whole: HashMap<_, _> = whole.into_iter().map(|card| (card.delivery_id.clone(), card)).collect();
    assert_eq!(whole.len(), deliveries.len(), "every delivery passed through {EXP1}");
    assert_eq!(followed, whole, "the reader's last view of each delivery is its latest change");
}

// 6. Stock.

async fn the_ledger_replays_to_the_stored_stock_after_concurrent_movements(backend: impl Backend) {
    let store = opened(&backend, 6, 10).await;
    orders_for(&*store, 12, 2).await;
    // Two planning runs race each other and goods receipts that let backorders through.
    let received = [("MW", 4), ("B1", 2), ("MFR", 6)];
    at_once(&store, 2 + received.len(), |store, i| async move {
        if let Some((node, quantity)) = i.checked_sub(2).map(|r| received[r]) {
            store.goods_receipt(&node_id(node), &item_id(), quantity, now()).await.expect("a goods receipt");
        }
        store.plan_pending(now()).await.expect("planning runs");
    })
    .await;
    // Every delivery moves on at once: its transfer legs, then its hand-over (every third short).
    let open = [held(&*store, EXP1).await, held(&*store, EXP2).await].concat();
    assert!(open.iter().any(|d| d.legs.len() > 2), "some goods travel from the manufacturer");
    let outcomes = at_once(&store, open.len(), |store, i| {
        let delivery = open[i].clone();
        async move {
            for leg in 0..delivery.legs.len() - 1 {
                issue(&*store, &delivery, leg).await;
            }
            let quantity = delivery.quantity - u32::from(i % 3 == 0);
            let courier = delivery.assignee.clone().expect("assigned");
            push(&*store, courier.as_str(), vec![Confirmation { quantity, ..delivered(&delivery) }]).await
        }
    })
    .await;
    assert!(outcomes.iter().all(|o| *o == [PushOutcome::Accepted]), "{outcomes:?}");
    let (_, balances) = assert_stock_balanced(&*store).await;
    let receipts = all_receipts(&*store).await;
    let handed_over: u64 = receipts.iter().filter_map(|r| r.proof.as_ref()).map(|p| u64::from(p.quantity)).sum();
    let on_hand: u64 = balances.iter().map(|(_, _, b)| b.on_hand).sum();
    assert_eq!(on_hand, 16 + 12 - handed_over, "counted, plus received, less handed over");
}

// 7. Durability.

async fn acknowledged_writes_survive_a_reopen_and_a_power_cut(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 3, 1).await;
    push(&*store, EXP1, vec![delivered(&held(&*store, EXP1).await[0])]).await;
    let acknowledged = observe(&*store).await;
    let cut = backend.crash_image();

    // Bookkeeping that waits for no flush of its own, until flush() is called.
    store.record_sync(sync_of(EXP2)).await.expect("a sync recorded");
    store.flush().await.expect("a flush");
    let syncs = store.device_syncs().await.expect("device syncs read");
    let cut_after_flush = backend.crash_image();
    drop(store);

    let reopened = backend.open().await;
    assert_unchanged(&*reopened, &acknowledged, "a reopen").await;
    assert_eq!(reopened.device_syncs().await.expect("device syncs read"), syncs, "every sync after a reopen");
    drop(reopened);
    assert_unchanged(&*cut.open().await, &acknowledged, "a power cut after the writes returned").await;
    let after_cut = cut_after_flush.open().await;
    assert_eq!(after_cut.device_syncs().await.expect("device syncs read"), syncs, "a power cut after flush()");
}

// 8. Steps taken twice.

async fn a_purge_forgets_stale_drafts_and_keeps_confirmed_ones(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    let (open, cancelled, confirmed) =
        (draft(&*store, 0, 1).await.order_id, draft(&*store, 1, 1).await.order_id, draft(&*store, 2, 1).await.order_id);
    let placed = now();
    assert!(matches!(store.cancel_draft(&cancelled, placed).await.expect("a cancel"), Step::Done(_)));
    assert!(matches!(store.confirm_draft(&confirmed, code(), placed).await.expect("a confirm"), Step::Done(_)));

    // Before any of them went stale: nothing goes.
    assert_eq!(store.purge_drafts(placed - time::Duration::hours(1)).await.expect("a purge"), 0);
    // Long after: the expired open draft and the cancelled one go; a confirmed
    // draft stays, so that a retried Confirm finds its receipt.
    let later = placed + time::Duration::days(400);
    assert_eq!(store.purge_drafts(later).await.expect("a purge"), 2);
    assert_eq!(store.draft(&open).await.expect("reads"), None);
    assert_eq!(store.draft(&cancelled).await.expect("reads"), None);
    assert!(store.draft(&confirmed).await.expect("reads").is_some(), "the confirmed draft is kept");
    assert_eq!(store.purge_drafts(later).await.expect("a purge"), 0, "a second purge finds nothing");
}

async fn cancelling_a_draft_twice_is_harmless(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    let id = draft(&*store, 0, 1).await.order_id;
    let answers = at_once(&store, 2, |store, _| {
        let id = id.clone();
        async move { store.cancel_draft(&id, now()).await.expect("a cancel") }
    })
    .await;
    let before = observe(&*store).await;
    let stored = store.draft(&id).await.expect("reads").expect("kept");
    assert!(matches!(stored.state, DraftState::Cancelled { .. }), "{stored:?}");
    assert!(answers.iter().all(|a| *a == Step::Done(stored.clone())), "both cancels answer the one cancellation");
    assert_eq!(store.cancel_draft(&id, now()).await.expect("a cancel"), Step::Done(stored), "a third one too");
    let confirm = store.confirm_draft(&id, code(), now()).await.expect("a confirm");
    assert!(matches!(confirm, Step::Refused(DraftRefusal::Cancelled)), "{confirm:?}");
    assert_unchanged(&*store, &before, "cancelling again, and confirming a cancelled draft").await;
}

async fn issuing_a_leg_twice_moves_the_goods_once(backend: impl Backend) {
    let store = opened(&backend, 0, 100).await;
    planned(&*store, 2, 5).await;
    let delivery = held(&*store, EXP1).await.remove(0);
    let lines_before = store.stock_snapshot().await.expect("stock reads").0.len();
    let issued = at_once(&store, 2, |store, _| {
        let delivery = delivery.clone();
        async move { issue(&*store, &delivery, 0).await.legs[0].status }
    })
    .await;
    assert_eq!(issued, [LegStatus::Issued, LegStatus::Issued]);
    let settled = observe(&*store).await;
    issue(&*store, &delivery, 0).await;
    assert_unchanged(&*store, &settled, "a third issue").await;
    let moves: Vec<_> = settled.ledger[lines_before..].iter().map(|e| (e.node_id.as_str(), e.on_hand_delta)).collect();
    assert_eq!(moves, [("MW", -5), ("B1", 5)], "the goods left the master warehouse once and arrived once");
    assert_stock_balanced(&*store).await;
}

async fn assigning_the_same_courier_twice_bumps_the_version_once(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 2, 1).await;
    let delivery = held(&*store, EXP1).await.remove(0);
    let versions = at_once(&store, 2, |store, _| {
        let delivery = delivery.clone();
        async move { assign(&*store, &delivery, EXP2).await.version }
    })
    .await;
    assert_eq!(versions, [delivery.version + 1; 2], "one bump, seen by both");
    let settled = observe(&*store).await;
    assign(&*store, &delivery, EXP2).await;
    assert_unchanged(&*store, &settled, "assigning the courier it has").await;
    let now_held = store.delivery(&delivery.delivery_id).await.expect("reads").expect("exists");
    assert_eq!(now_held.assignments.len(), delivery.assignments.len() + 1, "one assignment recorded");
}

async fn each_goods_receipt_adds_its_quantity_exactly_once(backend: impl Backend) {
    let store = opened(&backend, 0, 0).await;
    let after_each = at_once(&store, 10, |store, _| async move {
        store.goods_receipt(&node_id("B2"), &item_id(), 3, now()).await.expect("a goods receipt").on_hand
    })
    .await;
    let after_each: HashSet<u64> = after_each.into_iter().collect();
    assert_eq!(after_each, (1..=10).map(|n| n * 3).collect(), "each call saw the ones before it, none lost");
    assert_eq!(balance(&*store, "B2").await, Balance { on_hand: 30, reserved: 0 });
    let (ledger, _) = assert_stock_balanced(&*store).await;
    let lines = ledger.iter().filter(|e| e.movement == Movement::GoodsReceipt).count();
    assert_eq!(lines, 10, "one ledger line per goods receipt");
}

// Corrections: short hand-overs, cancellations, reversals.

async fn correct(store: &dyn Store, correction: &Correction) -> Step<DeliveryState, CorrectionRefusal> {
    match store.correct(correction, &dispatcher(), "a contract test", now()).await.expect("the correction is stored") {
        Step::Done(corrected) => Step::Done(corrected.delivery.map_or(DeliveryState::Cancelled, |d| d.state)),
        Step::Refused(refusal) => Step::Refused(refusal),
        Step::NotFound => Step::NotFound,
    }
}

async fn a_short_hand_over_stores_its_follow_up_and_one_reversal_of_two_takes_it_back(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 1, 4).await;
    let delivery = held(&*store, EXP1).await.remove(0);
    let short = Confirmation { quantity: 1, ..delivered(&delivery) };
    assert_eq!(push(&*store, EXP1, vec![short]).await, [PushOutcome::Accepted]);
    let follow_up = held(&*store, EXP1).await.remove(0);
    assert_eq!(
        (follow_up.delivery_id.as_str(), follow_up.quantity),
        ("D-000001-2", 3),
        "the rest, held by the courier"
    );
    let (pages, _) = read_feed(&*store, EXP1, 0, 100).await;
    assert!(ids(&latest_of(pages)).contains(&follow_up.delivery_id), "and in its feed");
    assert_eq!(balance(&*store, "B1").await, Balance { on_hand: 99, reserved: 3 });
    let receipt = &all_receipts(&*store).await[0];
    assert_eq!((receipt.delivered_quantity, receipt.delivered), (1, false));

    // Two dispatchers reverse it at once: one does, the other finds nothing delivered.
    let reverse = Correction::Reverse(delivery.delivery_id.clone());
    let answers = at_once(&store, 2, |store, _| {
        let reverse = reverse.clone();
        async move { correct(&*store, &reverse).await }
    })
    .await;
    let done = answers.iter().filter(|a| **a == Step::Done(DeliveryState::Open)).count();
    let refused = answers.iter().filter(|a| matches!(a, Step::Refused(CorrectionRefusal::NotDelivered(..)))).count();
    assert_eq!((done, refused), (1, 1), "{answers:?}");
    assert_eq!(balance(&*store, "B1").await, Balance { on_hand: 100, reserved: 4 }, "taken back once");
    let cancelled = store.delivery(&follow_up.delivery_id).await.expect("reads").expect("kept");
    assert_eq!(cancelled.state, DeliveryState::Cancelled, "the follow-up went with it");
    let receipt = &all_receipts(&*store).await[0];
    assert_eq!((receipt.delivered_quantity, receipt.reversals.len()), (0, 1));
    assert_stock_balanced(&*store).await;
}

async fn a_cancel_and_a_confirmation_at_once_never_both_apply(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 6, 2).await;
    let deliveries = held(&*store, EXP1).await;
    for delivery in &deliveries {
        let cancel = Correction::CancelDelivery(delivery.delivery_id.clone());
        let confirmation = delivered(delivery);
        let [pushed, cancelled] = <[_; 2]>::try_from(
            at_once(&store, 2, |store, i| {
                let (cancel, confirmation) = (cancel.clone(), confirmation.clone());
                async move {
                    if i == 0 {
                        format!("{:?}", push(&*store, EXP1, vec![confirmation]).await[0])
                    } else {
                        format!("{:?}", correct(&*store, &cancel).await)
                    }
                }
            })
            .await,
        )
        .expect("two answers");
        let delivered_first = pushed == "Accepted" && cancelled.contains("DeliveryClosed");
        let cancelled_first = pushed.contains("DeliveryCancelled") && cancelled == "Done(Cancelled)";
        assert!(delivered_first ^ cancelled_first, "{}: push {pushed}, cancel {cancelled}", delivery.delivery_id);
    }
    let raced: HashSet<_> = deliveries.iter().map(|d| d.receipt_id.clone()).collect();
    let receipts = all_receipts(&*store).await;
    let raced: Vec<_> = receipts.iter().filter(|r| raced.contains(&r.receipt_id)).collect();
    assert_eq!(raced.len(), deliveries.len());
    assert!(raced.iter().all(|r| r.delivered != r.cancellation.is_some()), "each delivered or cancelled, not both");
    assert_stock_balanced(&*store).await;
    let still_held: u64 = held(&*store, EXP2).await.iter().map(|d| u64::from(d.quantity)).sum();
    assert_eq!(balance(&*store, "B1").await.reserved, still_held, "only the untouched ones stay reserved");
}

async fn a_cancelled_receipt_is_never_planned(backend: impl Backend) {
    let store = opened(&backend, 0, 0).await;
    planned(&*store, 1, 2).await;
    let receipt = all_receipts(&*store).await.remove(0);
    assert!(receipt.backordered, "no stock anywhere");
    let cancel = Correction::CancelReceipt(receipt.receipt_id.clone());
    assert_eq!(correct(&*store, &cancel).await, Step::Done(DeliveryState::Cancelled));
    store.goods_receipt(&node_id("B1"), &item_id(), 10, now()).await.expect("a goods receipt");
    assert!(store.plan_pending(now()).await.expect("planning runs").is_empty(), "nothing to plan");
    let after = all_receipts(&*store).await.remove(0);
    assert!(!after.planned && after.cancellation.is_some());
    assert_eq!(balance(&*store, "B1").await, Balance { on_hand: 10, reserved: 0 });
}

// Devices.

async fn of_two_accounts_logging_in_on_a_new_device_at_once_one_gets_it(backend: impl Backend) {
    let store = opened(&backend, 0, 0).await;
    let device = DeviceId::parse("hh-contested").expect("a device id");
    let answers = at_once(&store, 2, |store, i| {
        let device = device.clone();
        async move {
            let session = Session {
                id: uuid::Uuid::now_v7(),
                username: name([EXP1, EXP2][i]),
                device_id: device,
                created_at: now(),
                revoked_at: None,
                revoke_reason: None,
            };
            let expires_at = now() + time::Duration::hours(1);
            let refresh = RefreshToken { session_id: session.id, expires_at, retired_at: None };
            let hash = [u8::try_from(i).expect("small"); 32];
            store.open_session(session, hash, refresh, true, now()).await.expect("stored")
        }
    })
    .await;
    assert_eq!(answers.iter().filter(|answer| answer.is_ok()).count(), 1, "{answers:?}");
    let bindings = store.device_bindings().await.expect("bindings read");
    let winner = if answers[0].is_ok() { EXP1 } else { EXP2 };
    let bound: Vec<_> = bindings.iter().map(|b| (b.device_id.as_str(), b.username.as_str())).collect();
    assert_eq!(bound, [("hh-contested", winner)]);

    let revoked = store.release_device(&device, now()).await.expect("released");
    assert_eq!(revoked.len(), 1, "the winner's session is cut off with it");
    assert!(store.device_bindings().await.expect("bindings read").is_empty(), "nobody's again");
}

async fn a_devices_rejections_are_listed_to_a_bound_and_the_rest_counted(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    planned(&*store, 2, 1).await;
    // Deliveries exp-2 never held, by the hundred, in two batches: each refused.
    let theirs = held(&*store, EXP1).await.remove(0);
    let refused = |n: usize| (0..n).map(|_| delivered(&theirs)).collect::<Vec<_>>();
    let batches = [refused(150), refused(150)];
    for batch in &batches {
        let outcomes = push(&*store, EXP2, batch.clone()).await;
        assert!(outcomes.iter().all(|o| matches!(o, PushOutcome::Rejected { code: RejectCode::NotAssignee, .. })));
    }
    push(&*store, EXP1, vec![Confirmation { quantity: 0, ..delivered(&theirs) }]).await;
    let logs = store.rejection_logs().await.expect("logs read");
    let summary: Vec<_> = logs.iter().map(|log| (log.device_id.as_str(), log.recent.len(), log.dropped)).collect();
    let cap = handover_server::domain::confirmations::REJECTIONS_LISTED_PER_DEVICE;
    assert_eq!(summary, [("dev-exp-1", 1, 0), ("dev-exp-2", cap, 300 - cap as u64)], "per device, bounded, counted");
    let newest = logs[1].recent.last().map(|seen| seen.confirmation_id.as_str());
    assert_eq!(newest, Some(batches[1][149].confirmation_id.as_str()), "the latest are the ones listed");
    // The first one, no longer listed, still keeps its outcome.
    let before = observe(&*store).await;
    let again = push(&*store, EXP2, vec![batches[0][0].clone()]).await;
    assert!(matches!(&again[0], PushOutcome::Rejected { code: RejectCode::NotAssignee, .. }), "{again:?}");
    assert_unchanged(&*store, &before, "a dropped rejection sent again").await;
}

/// A receipt's handover code (its hash is a stand-in: no handheld checks it here).
fn code() -> handover_server::domain::orders::HandoverCode {
    handover_server::domain::orders::HandoverCode { code: "042517".into(), hash: "$argon2id$stand-in".into() }
}

async fn of_two_keys_registered_for_one_device_at_once_one_stands(backend: impl Backend) {
    let store = opened(&backend, 0, 0).await;
    let device = DeviceId::parse("dev-exp-1").expect("a device id");
    let keys: Vec<String> =
        [1u8, 2].iter().map(|&seed| handover_shared::proof::DeviceKey::from_secret([seed; 32]).public_key()).collect();
    let answers = at_once(&store, 2, |store, i| {
        let (device, key) = (device.clone(), keys[i].clone());
        async move { store.register_device_key(&device, &key, &name(EXP1), now()).await.expect("stored") }
    })
    .await;
    assert_eq!(answers.iter().filter(|answer| answer.is_ok()).count(), 1, "{answers:?}");
    let stored = store.device_chain(&device).await.expect("read").expect("a key registered");
    let winner = if answers[0].is_ok() { &keys[0] } else { &keys[1] };
    assert_eq!(&stored.public_key, winner);
    let again = store.register_device_key(&device, winner, &name(EXP1), now()).await.expect("stored");
    assert_eq!(again, Ok(()), "the same key again is no change");
}

/// `confirmation` signed by `key` as number `seq` of `device`, after `prev`;
/// returns it as pushed (with its check) and its record's hash.
fn signed(
    mut confirmation: Confirmation,
    key: &handover_shared::proof::DeviceKey,
    device: &DeviceId,
    seq: u64,
    prev: &str,
) -> (Pushed, String) {
    use handover_server::domain::chain::SignatureCheck;
    confirmation.device_seq = Some(seq);
    confirmation.prev_hash = Some(prev.to_owned());
    let record = handover_shared::proof::SignedRecord::of(&confirmation, device).expect("a record").text();
    let signature = key.sign(&record);
    confirmation.device_signature = Some(signature.clone());
    let hash = handover_shared::proof::sha256_hex(record.as_bytes());
    (Pushed::Confirmation(confirmation, SignatureCheck::Verified { key: key.public_key(), record, signature }), hash)
}

async fn signed_pushes_extend_their_devices_chain_and_a_gap_stays_visible(backend: impl Backend) {
    let store = opened(&backend, 100, 0).await;
    // Planned in turn between two couriers: exp-1 holds three.
    planned(&*store, 6, 1).await;
    let mine = held(&*store, EXP1).await;
    let device = sync_of(EXP1).device_id;
    let key = handover_shared::proof::DeviceKey::from_secret([3; 32]);
    let registered = store.register_device_key(&device, &key.public_key(), &name(EXP1), now()).await;
    assert_eq!(registered.expect("stored"), Ok(()));
    let (first, first_hash) = signed(delivered(&mine[0]), &key, &device, 1, handover_shared::proof::CHAIN_START);
    let (third, _) = signed(delivered(&mine[1]), &key, &device, 3, &"ab".repeat(32));
    let outcomes = store.push_confirmations(sync_of(EXP1), vec![first, third]).await.expect("stored");
    assert_eq!(outcomes, [PushOutcome::Accepted, PushOutcome::Accepted]);
    // An unsigned push from a device with a key is refused, and remembers nothing.
    let unsigned = push(&*store, EXP1, vec![delivered(&mine[2])]).await;
    assert!(matches!(unsigned[0], PushOutcome::Rejected { code: RejectCode::BadSignature, .. }), "{unsigned:?}");

    let chain = store.device_chain(&device).await.expect("read").expect("a chain");
    assert_eq!((chain.missing(), chain.highest()), (vec![(2, 2)], Some(3)), "number 2 never arrived");
    let delivery = store.delivery(&mine[0].delivery_id).await.expect("read").expect("stored");
    let kept = delivery.attempts[0].signed.as_ref().expect("the signed record is kept");
    assert_eq!(handover_shared::proof::sha256_hex(kept.record.as_bytes()), first_hash, "as it arrived");
    let (second, _) = signed(delivered(&mine[2]), &key, &device, 2, &first_hash);
    let broken = store.push_confirmations(sync_of(EXP1), vec![second]).await.expect("stored");
    assert!(matches!(broken[0], PushOutcome::Rejected { code: RejectCode::ChainBroken, .. }), "3 does not follow it");
}

async fn an_image_upload_takes_only_the_chunk_that_continues_it_and_an_image_is_stored_once(backend: impl Backend) {
    use handover_server::store::images::{Misplaced, UploadState};
    let store = opened(&backend, 0, 0).await;
    let images = store.images();
    let photo = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4];
    let digest = handover_shared::proof::sha256_hex(&photo);
    assert_eq!(images.upload_state(&digest).await.expect("read"), UploadState::Partial { received: 0, total: None });
    assert_eq!(images.append(&digest, 0, 8, photo[..3].to_vec()).await.expect("written"), Ok(3));
    let again = images.append(&digest, 0, 8, photo[..3].to_vec()).await.expect("read");
    assert_eq!(again, Err(Misplaced { received: 3, total: Some(8) }), "a chunk sent twice is appended once");
    assert!(images.append(&digest, 3, 9, photo[3..].to_vec()).await.expect("read").is_err(), "another total");
    assert_eq!(images.append(&digest, 3, 8, photo[3..].to_vec()).await.expect("written"), Ok(8));
    assert_eq!(images.upload(&digest).await.expect("read"), photo);
    images.put(&digest, photo.to_vec()).await.expect("stored");
    images.put(&digest, photo.to_vec()).await.expect("stored again");
    images.discard_upload(&digest).await.expect("discarded");
    assert_eq!(images.upload_state(&digest).await.expect("read"), UploadState::Stored);
    assert_eq!(images.get(&digest).await.expect("read").as_deref(), Some(photo.as_slice()));
    assert_eq!(images.digests().await.expect("listed"), [digest]);
}
