//! Pushed confirmations, applied in groups: whatever batches wait, from any
//! number of handhelds, share one transaction and one flush.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Mutex,
    },
};

use handover_shared::sync::Confirmation;

use super::{
    codec::{abort, finish_store, tx_get, tx_stock, TxResult},
    lock,
    write::write_changes,
    Inner, Tx,
};
use crate::{
    domain::{
        chain::DeviceChain,
        changes::ChangeSet,
        confirmations::{self, DeviceSync, PushInputs, PushOutcome, PushReads, Pushed, Pusher},
    },
    store::StoreError,
};

/// Confirmations applied in one transaction at most, gathered from as many
/// waiting batches as fit: enough to share the cost of a transaction and of its
/// hot rows, few enough that one group does not hold up the next for long.
const GROUP_CONFIRMATIONS: usize = 1_000;

type Answer = Result<Vec<PushOutcome>, StoreError>;

/// Pushed batches waiting to be applied, and the turn to apply them.
#[derive(Default)]
pub(super) struct PushQueue {
    waiting: Mutex<VecDeque<PushJob>>,
    turn: Mutex<()>,
    /// Transactions that applied pushed batches, for benchmarks: batches per
    /// transaction is how much they share.
    transactions: AtomicU64,
}

impl PushQueue {
    pub(super) fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }
}

/// A pushed batch waiting for its turn, and where its outcomes go.
struct PushJob {
    /// Who pushed, from which device, when, and what it said it still had queued.
    sync: DeviceSync,
    batch: Vec<Pushed>,
    /// Computed by the request's own thread, before it queues.
    digests: Vec<String>,
    answer: mpsc::SyncSender<Answer>,
}

/// Queues a batch and applies queued batches until this one is answered.
pub(super) fn push(inner: &Inner, sync: DeviceSync, batch: Vec<Pushed>) -> Answer {
    let digests = batch.iter().map(Pushed::digest).collect();
    let (answer, answered) = mpsc::sync_channel(1);
    lock(&inner.pushes.waiting).push_back(PushJob { sync, batch, digests, answer });
    apply_until_answered(inner, &answered)
}

/// Applies queued batches, whoever pushed them, until this request's own batch
/// has been answered (flat combining). The thread holding the turn takes what
/// is queued, applies it as one group, answers every batch in it, and only then
/// lets go: so a thread that gets the turn and finds its batch gone finds its
/// answer waiting. Concurrent groups would gain nothing: sled 0.34 runs every
/// transaction under one process-wide lock (`Transactional::transaction` holds
/// `concurrency_control::write()` through the closure and the commit), and the
/// groups would share rows anyway (the branch's stock, the couriers' loads, the
/// feed counter). Taking turns lets many small batches (handhelds syncing one
/// confirmation each) share one transaction and one flush.
fn apply_until_answered(inner: &Inner, answered: &mpsc::Receiver<Answer>) -> Answer {
    loop {
        {
            let _turn = lock(&inner.pushes.turn);
            let group = take_group(inner);
            if !group.is_empty() {
                apply_group(inner, group);
            }
        }
        match answered.try_recv() {
            Ok(outcome) => return outcome,
            Err(mpsc::TryRecvError::Empty) => continue,
            Err(mpsc::TryRecvError::Disconnected) => {
                // The thread applying it panicked before answering.
                return Err(StoreError::Task("the batch's group failed before it was answered".into()));
            }
        }
    }
}

/// Queued batches, oldest first, up to [`GROUP_CONFIRMATIONS`] (at least one batch).
fn take_group(inner: &Inner) -> Vec<PushJob> {
    let mut queue = lock(&inner.pushes.waiting);
    let mut group = Vec::new();
    let mut confirmations = 0;
    while let Some(job) = queue.front() {
        if !group.is_empty() && confirmations + job.batch.len() > GROUP_CONFIRMATIONS {
            break;
        }
        confirmations += job.batch.len();
        group.extend(queue.pop_front());
    }
    group
}

/// Applies a group of batches in one transaction and answers each. Should the
/// group fail, each batch is tried again alone, so that one batch's failure
/// (a failpoint, a record that does not read) is its own answer only.
fn apply_group(inner: &Inner, group: Vec<PushJob>) {
    let _moving_stock = inner.moving_stock();
    match transaction(inner, &group) {
        Ok(outcomes) => {
            for (job, outcomes) in group.into_iter().zip(outcomes) {
                // A request that gave up (its connection closed) needs no answer.
                let _ = job.answer.send(Ok(outcomes));
            }
        }
        Err(err) if group.len() == 1 => {
            let _ = group[0].answer.send(Err(err));
        }
        Err(_) => {
            for job in group {
                let alone = transaction(inner, std::slice::from_ref(&job));
                let _ = job.answer.send(alone.map(|mut outcomes| outcomes.remove(0)));
            }
        }
    }
}

/// Judges and applies batches in order, each confirmation in order and seeing
/// the ones before it, in one transaction: a crash leaves all of it applied
/// (and remembered) or none.
fn transaction(inner: &Inner, group: &[PushJob]) -> Result<Vec<Vec<PushOutcome>>, StoreError> {
    inner.pushes.transactions.fetch_add(1, Ordering::Relaxed);
    finish_store(inner.transaction(|tx, appends| {
        let mut answers = Vec::with_capacity(group.len());
        for job in group {
            let synced = ChangeSet { device_syncs: vec![tx_sync_over(tx, &job.sync)?], ..ChangeSet::default() };
            write_changes(tx, appends, synced)?;
            let by = Pusher {
                uploader: &job.sync.username,
                device: &job.sync.device_id,
                received_at: job.sync.last_sync_at,
            };
            let mut outcomes = Vec::with_capacity(job.batch.len());
            let mut remembered = Vec::new();
            let mut chain: Option<DeviceChain> = tx_get(tx.device_chains, job.sync.device_id.as_str().as_bytes())?;
            for (index, (element, digest)) in job.batch.iter().zip(&job.digests).enumerate() {
                if index > 0 {
                    handover_shared::failpoint!("push.between_items", abort(StoreError::Backend("failpoint".into())));
                }
                let (outcome, changes) = match element {
                    Pushed::Confirmation(confirmation, origin) => {
                        let inputs = PushInputs { chain: chain.clone(), ..tx_push_inputs(tx, confirmation)? };
                        confirmations::push(confirmation, digest, origin, by, inputs)
                            .map_err(|err| abort(err.into()))?
                    }
                    Pushed::Unreadable(unreadable) => {
                        let seen = tx_get(tx.confirmations, unreadable.confirmation_id.as_bytes())?;
                        confirmations::push_unreadable(unreadable, by, seen.as_ref())
                    }
                };
                remembered.extend(changes.confirmations.iter().cloned());
                if let Some(advanced) = changes.device_chains.last() {
                    chain = Some(advanced.clone());
                }
                write_changes(tx, appends, changes)?;
                outcomes.push(outcome);
            }
            let device = &job.sync.device_id;
            let log = tx_get(tx.rejection_logs, device.as_str().as_bytes())?;
            if let Some(log) = confirmations::log_rejections(log, device, &remembered) {
                write_changes(tx, appends, ChangeSet { rejection_logs: vec![log], ..ChangeSet::default() })?;
            }
            answers.push(outcomes);
        }
        Ok(answers)
    }))
}

/// A device's sync over what was recorded of it before.
pub(super) fn tx_sync_over(tx: &Tx<'_>, sync: &DeviceSync) -> TxResult<DeviceSync> {
    let previous: Option<DeviceSync> = tx_get(tx.device_syncs, sync.device_id.as_str().as_bytes())?;
    Ok(sync.over(previous.as_ref()))
}

/// Reads what `confirmations::push` judges a confirmation against.
fn tx_push_inputs(tx: &Tx<'_>, confirmation: &Confirmation) -> TxResult<PushInputs> {
    let seen = tx_get(tx.confirmations, confirmation.confirmation_id.as_bytes())?;
    let delivery = match confirmation.delivery_id.number() {
        Some(seq) => tx_get(tx.deliveries, &seq.to_be_bytes())?,
        None => None,
    };
    let Some(delivery) = delivery else {
        return Ok(PushInputs { seen, ..PushInputs::default() });
    };
    let reads = PushReads::of(confirmation, Some(&delivery));
    let receipt = match delivery.receipt_id.seq().filter(|_| reads.receipt) {
        Some(seq) => tx_get(tx.receipts, &seq.to_be_bytes())?,
        None => None,
    };
    let stock = tx_stock(tx, reads.stock.iter().map(|(node, item)| (node, item)))?;
    let account = match &reads.account {
        Some(customer) => tx_get(tx.customer_accounts, customer.as_str().as_bytes())?,
        None => None,
    };
    Ok(PushInputs { seen, delivery: Some(delivery), receipt, stock, account, chain: None })
}
#[cfg(test)]
mod tests {
    use std::{sync::PoisonError, thread, time::Duration};

    use handover_shared::{DeliveryId, DeviceId, Username};
    use time::OffsetDateTime;

    use super::*;
    use crate::{
        domain::confirmations::RejectCode,
        store::{sled::SledStore, Store},
    };

    fn confirmation(delivery: &str) -> Confirmation {
        Confirmation::delivered(DeliveryId::parse(delivery).expect("a delivery id"), 1, 1, "Front desk")
    }

    fn sync(courier: &str) -> DeviceSync {
        DeviceSync {
            device_id: DeviceId::parse(format!("dev-{courier}")).expect("a device id"),
            username: Username::parse(courier).expect("a username"),
            last_sync_at: OffsetDateTime::now_utc(),
            reported_queued: None,
            queued_since: None,
        }
    }

    /// Pushes `batches` from threads of their own while the turn is held, so
    /// that all of them are queued before any is applied; then lets go.
    fn push_while_queued(store: &SledStore, batches: Vec<Vec<Confirmation>>) -> Vec<Result<Vec<PushOutcome>, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let count = batches.len();
        let turn = store.inner.pushes.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let pushers: Vec<_> = batches
            .into_iter()
            .enumerate()
            .map(|(i, batch)| {
                let (store, handle) = (store.clone(), runtime.handle().clone());
                let batch = batch.into_iter().map(Pushed::from).collect();
                thread::spawn(move || handle.block_on(store.push_confirmations(sync(&format!("courier-{i}")), batch)))
            })
            .collect();
        while store.inner.pushes.waiting.lock().unwrap_or_else(PoisonError::into_inner).len() < count {
            thread::sleep(Duration::from_millis(2));
        }
        drop(turn);
        pushers
            .into_iter()
            .map(|pusher| pusher.join().expect("a pusher thread").map_err(|err| err.to_string()))
            .collect()
    }

    #[test]
    fn batches_queued_together_share_one_transaction_and_each_gets_its_own_outcomes() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let store = SledStore::open(dir.path()).expect("a fresh store");
        let sent: Vec<Vec<Confirmation>> = vec![
            vec![confirmation("D-000001")],
            vec![confirmation("D-000002"), confirmation("D-000003")],
            vec![confirmation("D-000004")],
        ];
        let answers = push_while_queued(&store, sent.clone());
        assert_eq!(store.push_transactions(), 1, "one transaction for the three queued batches");
        for (batch, answer) in sent.iter().zip(answers) {
            let outcomes = answer.expect("the batch was applied");
            assert_eq!(outcomes.len(), batch.len());
            for (confirmation, outcome) in batch.iter().zip(outcomes) {
                // No such delivery: refused, and the refusal names the batch's own delivery.
                let PushOutcome::Rejected { code: RejectCode::NotAssignee, message } = outcome else {
                    panic!("{outcome:?}");
                };
                assert!(message.contains(confirmation.delivery_id.as_str()), "{message}");
            }
        }
        assert_eq!(store.inner.trees.confirmations.len(), 4, "every refusal is remembered");
        assert_eq!(store.inner.trees.device_syncs.len(), 3, "every device's sync is recorded with its batch");
    }

    #[test]
    fn a_batch_that_fails_in_a_group_fails_alone() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let store = SledStore::open(dir.path()).expect("a fresh store");
        let damaged = DeliveryId::parse("D-000007").expect("a delivery id").number().expect("a numbered id");
        store.inner.trees.deliveries.insert(damaged.to_be_bytes(), b"not json".as_slice()).expect("written");
        let answers = push_while_queued(
            &store,
            vec![vec![confirmation("D-000001")], vec![confirmation("D-000007")], vec![confirmation("D-000002")]],
        );
        assert!(answers[0].as_ref().is_ok_and(|outcomes| outcomes.len() == 1), "{:?}", answers[0]);
        assert!(answers[1].as_ref().is_err_and(|err| err.contains("unreadable")), "{:?}", answers[1]);
        assert!(answers[2].as_ref().is_ok_and(|outcomes| outcomes.len() == 1), "{:?}", answers[2]);
        assert_eq!(store.inner.trees.confirmations.len(), 2, "nothing of the failed batch is remembered");
        assert_eq!(store.inner.pushes.transactions(), 4, "the group, then each batch alone");
    }
}
