//! Planning runs: every receipt not yet planned, in receipt order, through
//! `domain::shipments::plan_receipt`, a few hundred receipts per transaction.

use time::OffsetDateTime;

use super::{
    codec::{abort, backend, finish_store, number_key, scan, tx_get, tx_get_counter, tx_stock, TxResult},
    lock,
    write::write_changes,
    Inner, Trees, Tx,
};
use crate::{
    domain::{
        changes::ChangeSet,
        network::Node,
        orders::Receipt,
        shipments::{delivering_branch, plan_receipt, PlanInputs, PlanResult, PlanningNetwork},
    },
    store::StoreError,
};

/// Receipts planned in one transaction: a run's writes share its cost and its
/// hot rows (the stock, the couriers' loads, the feed counter).
const PLAN_CHUNK: usize = 200;

/// What planning needs of the network, read once per run. Imports, which change
/// customers and couriers, wait for the run to end (they take the same lock).
fn planning_network(trees: &Trees) -> Result<PlanningNetwork, StoreError> {
    let nodes: Vec<Node> = scan(trees.nodes.iter())?;
    Ok(PlanningNetwork::new(&nodes, scan(trees.customers.iter())?, scan(trees.accounts.iter())?))
}

/// One planning run; returns what it did and whether it wrote anything.
pub(super) fn plan_pending(inner: &Inner, now: OffsetDateTime) -> Result<(Vec<PlanResult>, bool), StoreError> {
    let _one_run_at_a_time = lock(&inner.planning);
    let t = &inner.trees;
    let pending: Vec<u64> =
        t.unplanned.iter().keys().map(|key| number_key(&key.map_err(backend)?)).collect::<Result<_, StoreError>>()?;
    if pending.is_empty() {
        return Ok((Vec::new(), false));
    }
    let network = planning_network(t)?;
    let mut results = Vec::new();
    let mut changed = false;
    for chunk in pending.chunks(PLAN_CHUNK) {
        // Held per chunk, not per run, so that an audit waits for one chunk only.
        let _moving_stock = inner.moving_stock();
        let (planned, wrote) = finish_store(inner.transaction(|tx, appends| {
            let mut planned = Vec::with_capacity(chunk.len());
            let mut wrote = false;
            for &seq in chunk {
                let (result, changes) = tx_plan_one(tx, &network, seq, now)?;
                planned.extend(result);
                wrote |= !changes.is_empty();
                write_changes(tx, appends, changes)?;
            }
            Ok((planned, wrote))
        }))?;
        results.extend(planned);
        changed |= wrote;
    }
    Ok((results, changed))
}

/// Reads what planning receipt `seq` needs and asks the domain. A number
/// whose receipt is gone or already planned is a stale index entry: dropped.
fn tx_plan_one(
    tx: &Tx<'_>,
    network: &PlanningNetwork,
    seq: u64,
    now: OffsetDateTime,
) -> TxResult<(Option<PlanResult>, ChangeSet)> {
    let key = seq.to_be_bytes();
    let Some(receipt) = tx_get::<Receipt>(tx.receipts, &key)?.filter(Receipt::awaits_planning) else {
        tx.unplanned.remove(&key)?;
        return Ok((None, ChangeSet::default()));
    };
    let nodes = network.cascade(&receipt).map_err(|err| abort(err.into()))?;
    let stock = tx_stock(tx, nodes.all().map(|node| (node, &receipt.item_id)))?;
    let branch = delivering_branch(&receipt, &nodes, &stock).map_err(|err| abort(err.into()))?;
    let mut expediters = Vec::new();
    for (name, branch) in network.expediters_of(branch.as_ref()) {
        let load = tx_get_counter(tx.courier_load, name.as_str().as_bytes())?;
        expediters.push((name, branch, load));
    }
    let inputs = PlanInputs { receipt, nodes: &nodes, stock, expediters: &expediters };
    let (result, changes) = plan_receipt(inputs, now).map_err(|err| abort(err.into()))?;
    Ok((Some(result), changes))
}
