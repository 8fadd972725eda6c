//! Pushed confirmations on PostgreSQL: each request's batch in one
//! transaction, judged by `domain::confirmations::push`, each confirmation
//! seeing the ones before it.

use deadpool_postgres::Transaction;
use handover_shared::sync::Confirmation;

use super::{
    reads::record,
    sql::{encode, execute, Failed},
    working::Working,
};
use crate::domain::{
    chain::DeviceChain,
    changes::ChangeSet,
    confirmations::{self, DeviceSync, FirstOutcome, PushInputs, PushOutcome, PushReads, Pushed, Pusher, RejectionLog},
};

/// Judges and applies one pushed batch, each confirmation seeing the ones
/// before it, in the caller's transaction.
pub(super) async fn push_batch(
    tx: &Transaction<'_>,
    sync: &DeviceSync,
    batch: &[Pushed],
    digests: &[String],
) -> Result<Vec<PushOutcome>, Failed> {
    let mut working = Working::new(tx);
    // Deliveries first, in number order: two pushes of the same confirmation
    // (a retry sent to two instances) queue on the same row, and the second
    // then finds the first's outcome.
    let readable = || {
        batch.iter().filter_map(|element| match element {
            Pushed::Confirmation(confirmation, _) => Some(confirmation),
            Pushed::Unreadable(_) => None,
        })
    };
    working.lock_deliveries(readable().filter_map(|confirmation| confirmation.delivery_id.number())).await?;
    working.read_seen(batch.iter().map(|element| element.confirmation_id().to_owned())).await?;
    // Then everything the batch's confirmations read, a statement per table
    // rather than a round trip per confirmation.
    let (mut receipts, mut stock, mut customers) = (Vec::new(), Vec::new(), Vec::new());
    for confirmation in readable() {
        let Some(delivery) = confirmation.delivery_id.number().map(|seq| working.delivery(seq)) else { continue };
        let Some(delivery) = delivery.await? else { continue };
        let reads = PushReads::of(confirmation, Some(&delivery));
        receipts.extend(delivery.receipt_id.seq().filter(|_| reads.receipt));
        stock.extend(reads.stock);
        customers.extend(reads.account);
    }
    working.lock_receipts(receipts).await?;
    working.stock(stock).await?;
    working.lock_customer_accounts(customers).await?;
    let synced = working.sync_over(sync).await?;
    working.apply(ChangeSet { device_syncs: vec![synced], ..ChangeSet::default() })?;
    let by = Pusher { uploader: &sync.username, device: &sync.device_id, received_at: sync.last_sync_at };
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut remembered = Vec::new();
    // Locked: two pushes from one device (to two instances) extend its chain
    // one after the other.
    let mut chain: Option<DeviceChain> = record(
        tx,
        "device chain",
        "SELECT body::text FROM device_chains WHERE device_id = $1 FOR UPDATE",
        &[&sync.device_id.as_str()],
    )
    .await?;
    for (index, (element, digest)) in batch.iter().zip(digests).enumerate() {
        if index > 0 {
            handover_shared::failpoint!(
                "push.between_items",
                Failed::Store(crate::store::StoreError::Backend("failpoint".into()))
            );
        }
        let (outcome, changes) = match element {
            Pushed::Confirmation(confirmation, origin) => {
                let inputs = PushInputs { chain: chain.clone(), ..push_inputs(&mut working, confirmation).await? };
                confirmations::push(confirmation, digest, origin, by, inputs)?
            }
            Pushed::Unreadable(unreadable) => {
                let seen = working.seen(&unreadable.confirmation_id).await?;
                confirmations::push_unreadable(unreadable, by, seen.as_ref())
            }
        };
        remembered.extend(changes.confirmations.iter().cloned());
        if let Some(advanced) = changes.device_chains.last() {
            chain = Some(advanced.clone());
        }
        working.apply(changes)?;
        outcomes.push(outcome);
    }
    if remembered.iter().any(|seen| matches!(seen.outcome, FirstOutcome::Rejected { .. })) {
        // The row is made first, empty, so that two pushes from one device
        // queue on its lock, and the second adds to what the first wrote.
        let empty = RejectionLog { device_id: sync.device_id.clone(), recent: Vec::new(), dropped: 0 };
        execute(
            tx,
            "INSERT INTO rejection_logs (device_id, body) VALUES ($1, $2::text::jsonb) ON CONFLICT DO NOTHING",
            &[&sync.device_id.as_str(), &encode(&empty)?],
        )
        .await?;
        let log = record(
            tx,
            "rejection log",
            "SELECT body::text FROM rejection_logs WHERE device_id = $1 FOR UPDATE",
            &[&sync.device_id.as_str()],
        )
        .await?;
        if let Some(log) = confirmations::log_rejections(log, &sync.device_id, &remembered) {
            working.apply(ChangeSet { rejection_logs: vec![log], ..ChangeSet::default() })?;
        }
    }
    working.write().await?;
    Ok(outcomes)
}

/// Reads what `confirmations::push` judges a confirmation against.
async fn push_inputs(working: &mut Working<'_, '_>, confirmation: &Confirmation) -> Result<PushInputs, Failed> {
    let seen = working.seen(&confirmation.confirmation_id).await?;
    let delivery = match confirmation.delivery_id.number() {
        Some(seq) => working.delivery(seq).await?,
        None => None,
    };
    let Some(delivery) = delivery else {
        return Ok(PushInputs { seen, ..PushInputs::default() });
    };
    let reads = PushReads::of(confirmation, Some(&delivery));
    let receipt = match delivery.receipt_id.seq().filter(|_| reads.receipt) {
        Some(seq) => working.receipt(seq).await?,
        None => None,
    };
    let stock = working.stock(reads.stock).await?;
    let account = match &reads.account {
        Some(customer) => working.customer_account(customer).await?,
        None => None,
    };
    Ok(PushInputs { seen, delivery: Some(delivery), receipt, stock, account, chain: None })
}
