//! Planning runs on PostgreSQL: every receipt not yet planned, in receipt
//! order, through `domain::shipments::plan_receipt`, a chunk per transaction.
//! Each chunk holds the planning advisory lock, which imports take too: one
//! planner at a time across every instance on the database.

use deadpool_postgres::Transaction;
use handover_shared::{NodeId, Username};
use time::OffsetDateTime;

use super::{
    reads::records,
    sql::{count, query, Failed},
    working::Working,
    PLANNING_LOCK,
};
use crate::domain::{
    network::{Account, Customer, Node},
    shipments::{delivering_branch, plan_receipt, PlanInputs, PlanResult, PlanningNetwork},
};

/// Receipts planned in one transaction: a run's writes share its cost and its
/// hot rows (the stock, the couriers' loads, the counters).
pub(super) const PLAN_CHUNK: usize = 200;

/// The receipts waiting for planning, in receipt order.
pub(super) async fn pending(client: &impl deadpool_postgres::GenericClient) -> Result<Vec<u64>, Failed> {
    let rows = query(client, "SELECT seq FROM receipts WHERE NOT planned ORDER BY seq", &[]).await?;
    rows.iter().map(|row| Ok(count(row, 0)?)).collect()
}

/// What planning needs of the network for one chunk, read under the lock that
/// imports take, so that it cannot change until the chunk commits.
async fn planning_network(tx: &Transaction<'_>, customers: &[&str]) -> Result<PlanningNetwork, Failed> {
    let nodes: Vec<Node> = records(tx, "node", "SELECT body::text FROM nodes ORDER BY id", &[]).await?;
    let customers: Vec<Customer> =
        records(tx, "customer", "SELECT body::text FROM customers WHERE id = ANY($1)", &[&customers]).await?;
    let accounts: Vec<Account> =
        records(tx, "account", "SELECT body::text FROM accounts ORDER BY username", &[]).await?;
    Ok(PlanningNetwork::new(&nodes, customers, accounts))
}

/// Plans one chunk of receipt numbers; returns what it did and whether it wrote.
pub(super) async fn plan_chunk(
    tx: &Transaction<'_>,
    chunk: &[u64],
    now: OffsetDateTime,
) -> Result<(Vec<PlanResult>, bool), Failed> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLANNING_LOCK]).await?;
    let mut working = Working::new(tx);
    working.lock_receipts(chunk.iter().copied()).await?;
    let mut receipts = Vec::with_capacity(chunk.len());
    for &seq in chunk {
        // Planned meanwhile by another instance's run: nothing left to do.
        if let Some(receipt) = working.receipt(seq).await?.filter(crate::domain::orders::Receipt::awaits_planning) {
            receipts.push(receipt);
        }
    }
    if receipts.is_empty() {
        return Ok((Vec::new(), false));
    }
    let customer_ids: Vec<&str> = receipts.iter().map(|receipt| receipt.customer_id.as_str()).collect();
    let network = planning_network(tx, &customer_ids).await?;
    // Every balance the chunk may move, locked at once in key order.
    let mut all_stock = Vec::new();
    for receipt in &receipts {
        let nodes = network.cascade(receipt)?;
        all_stock.extend(nodes.all().map(|node| (node.clone(), receipt.item_id.clone())));
    }
    working.stock(all_stock).await?;
    let mut results = Vec::with_capacity(receipts.len());
    for receipt in receipts {
        let nodes = network.cascade(&receipt)?;
        let stock = working.stock(nodes.all().map(|node| (node.clone(), receipt.item_id.clone()))).await?;
        let branch = delivering_branch(&receipt, &nodes, &stock)?;
        let names = network.expediters_of(branch.as_ref());
        working.lock_loads(names.iter().map(|(name, _)| name.clone())).await?;
        let expediters: Vec<(Username, NodeId, u64)> = names
            .into_iter()
            .map(|(name, branch)| {
                let load = working.load(&name);
                (name, branch, load)
            })
            .collect();
        let inputs = PlanInputs { receipt, nodes: &nodes, stock, expediters: &expediters };
        let (result, changes) = plan_receipt(inputs, now)?;
        working.apply(changes)?;
        results.push(result);
    }
    let wrote = working.write().await?;
    Ok((results, wrote))
}
