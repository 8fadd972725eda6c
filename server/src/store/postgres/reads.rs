//! Reads outside transactions: single records, listings, pages, the feed.

use std::collections::HashSet;

use deadpool_postgres::GenericClient;
use handover_shared::{CustomerId, ItemId, NodeId, Username};
use serde::de::DeserializeOwned;

use super::sql::{big, count, decode, query, Failed};
use crate::{
    domain::{
        network::{Customer, Item, KnownNetwork, Node},
        orders::{Draft, Receipt},
        shipments::{Delivery, DeliveryCard},
        stock::{Balance, LedgerEntry},
    },
    store::{DeliveryQuery, FeedEntry, ReceiptQuery, StoreError},
};

/// The most rows a listing asks for: a limit past it is a whole read anyway.
const LIMIT_CAP: usize = 1 << 30;

fn limit(limit: usize) -> i64 {
    limit.min(LIMIT_CAP) as i64
}

/// The records in `body` (column 0) of every row.
pub(super) async fn records<T: DeserializeOwned>(
    client: &impl GenericClient,
    what: &str,
    sql: &str,
    params: &super::sql::Params<'_>,
) -> Result<Vec<T>, Failed> {
    let rows = query(client, sql, params).await?;
    rows.iter().enumerate().map(|(i, row)| Ok(decode(row, 0, format!("{what} #{i}"))?)).collect()
}

/// One record by key, or `None`.
pub(super) async fn record<T: DeserializeOwned>(
    client: &impl GenericClient,
    what: &str,
    sql: &str,
    params: &super::sql::Params<'_>,
) -> Result<Option<T>, Failed> {
    Ok(records(client, what, sql, params).await?.into_iter().next())
}

pub(super) async fn known_network(client: &impl GenericClient) -> Result<KnownNetwork, Failed> {
    let nodes: Vec<Node> = records(client, "node", "SELECT body::text FROM nodes ORDER BY id", &[]).await?;
    let items: Vec<Item> = records(client, "item", "SELECT body::text FROM items ORDER BY id", &[]).await?;
    let customers: Vec<Customer> =
        records(client, "customer", "SELECT body::text FROM customers ORDER BY id", &[]).await?;
    Ok(KnownNetwork {
        nodes: nodes.into_iter().map(|node| (node.id, node.kind)).collect(),
        items: items.into_iter().map(|item| item.id).collect(),
        customers: customers.into_iter().map(|customer| customer.id).collect(),
    })
}

pub(super) async fn node_stock(client: &impl GenericClient, node: &NodeId) -> Result<Vec<(ItemId, Balance)>, Failed> {
    let rows =
        query(client, "SELECT item_id, body::text FROM stock WHERE node_id = $1 ORDER BY item_id", &[&node.as_str()])
            .await?;
    rows.iter()
        .map(|row| {
            let item: &str = row.get(0);
            let item =
                ItemId::parse(item).map_err(|err| StoreError::Backend(format!("bad stock item {item}: {err}")))?;
            let balance = decode(row, 1, format!("stock {node}/{item}"))?;
            Ok((item, balance))
        })
        .collect()
}

pub(super) async fn balances(client: &impl GenericClient) -> Result<Vec<(NodeId, ItemId, Balance)>, Failed> {
    let rows = query(client, "SELECT node_id, item_id, body::text FROM stock ORDER BY node_id, item_id", &[]).await?;
    rows.iter()
        .map(|row| {
            let (node, item): (&str, &str) = (row.get(0), row.get(1));
            let balance = decode(row, 2, format!("stock {node}/{item}"))?;
            let bad = |err| StoreError::Backend(format!("bad stock key {node}/{item}: {err}"));
            Ok((NodeId::parse(node).map_err(bad)?, ItemId::parse(item).map_err(bad)?, balance))
        })
        .collect()
}

pub(super) async fn ledger(client: &impl GenericClient) -> Result<Vec<LedgerEntry>, Failed> {
    records(client, "ledger line", "SELECT body::text FROM ledger ORDER BY seq", &[]).await
}

pub(super) async fn open_drafts(
    client: &impl GenericClient,
    customer: Option<&CustomerId>,
) -> Result<Vec<Draft>, Failed> {
    match customer {
        Some(customer) => {
            records(
                client,
                "draft",
                "SELECT body::text FROM drafts WHERE open AND customer_id = $1 ORDER BY order_id DESC",
                &[&customer.as_str()],
            )
            .await
        }
        None => records(client, "draft", "SELECT body::text FROM drafts WHERE open ORDER BY order_id DESC", &[]).await,
    }
}

pub(super) async fn receipts(client: &impl GenericClient, q: &ReceiptQuery) -> Result<Vec<Receipt>, Failed> {
    let after = big(q.after.unwrap_or(0))?;
    records(
        client,
        "receipt",
        "SELECT body::text FROM receipts
         WHERE seq > $1
           AND ($2::text IS NULL OR customer_id = $2)
           AND ($3::bool IS NULL OR delivered = $3)
           AND ($4::bool IS NULL OR backordered = $4)
           AND ($5::timestamptz IS NULL OR created_at >= $5)
         ORDER BY seq LIMIT $6",
        &[&after, &q.customer_id.as_ref().map(|c| c.as_str()), &q.delivered, &q.backordered, &q.since, &limit(q.limit)],
    )
    .await
}

pub(super) async fn recent_receipts(
    client: &impl GenericClient,
    customer: &CustomerId,
    count: usize,
) -> Result<Vec<Receipt>, Failed> {
    records(
        client,
        "receipt",
        "SELECT body::text FROM receipts WHERE customer_id = $1 ORDER BY seq DESC LIMIT $2",
        &[&customer.as_str(), &limit(count)],
    )
    .await
}

pub(super) async fn deliveries(client: &impl GenericClient, q: &DeliveryQuery) -> Result<Vec<Delivery>, Failed> {
    let after = big(q.after.unwrap_or(0))?;
    records(
        client,
        "delivery",
        "SELECT body::text FROM deliveries
         WHERE seq > $1
           AND (NOT $2 OR open)
           AND ($3::text IS NULL OR assignee = $3)
           AND ($4::text IS NULL OR seller = $4)
           AND (NOT $5 OR seller IS NOT NULL)
           AND (NOT $6 OR assignee IS NULL)
         ORDER BY seq LIMIT $7",
        &[
            &after,
            &q.open_only,
            &q.assignee.as_ref().map(|a| a.as_str()),
            &q.entrusted_to.as_ref().map(|n| n.as_str()),
            &q.entrusted_only,
            &q.unassigned_only,
            &limit(q.limit),
        ],
    )
    .await
}

/// See `Store::assignment_changes`. Numbers follow commit order (see
/// `write`), so the changes after `cursor` that this read sees are all of
/// them up to the last one it returns.
pub(super) async fn assignment_changes(
    client: &impl GenericClient,
    courier: &Username,
    cursor: u64,
    page: usize,
) -> Result<(Vec<FeedEntry>, u64, bool), Failed> {
    let rows = query(
        client,
        "SELECT change, delivery_seq FROM courier_feed WHERE courier = $1 AND change > $2 ORDER BY change LIMIT $3",
        &[&courier.as_str(), &big(cursor)?, &limit(page.saturating_add(1))],
    )
    .await?;
    let more = rows.len() > page;
    let mut last_change = cursor;
    let mut changed = Vec::with_capacity(rows.len().min(page));
    for row in rows.iter().take(page) {
        last_change = count(row, 0)?;
        changed.push(count(row, 1)?);
    }
    // Each changed delivery once, at the place of its latest change.
    let mut seen = HashSet::new();
    let mut latest: Vec<u64> = changed.into_iter().rev().filter(|seq| seen.insert(*seq)).collect();
    latest.reverse();
    if latest.is_empty() {
        return Ok((Vec::new(), last_change, more));
    }
    let seqs = latest.iter().map(|seq| big(*seq)).collect::<Result<Vec<_>, _>>()?;
    let rows = query(
        client,
        "SELECT d.body::text, coalesce(c.body->>'name', ''), coalesce(i.body->>'name', ''),
                coalesce((r.body->>'empties_expected')::bigint, 0)
         FROM unnest($1::bigint[]) WITH ORDINALITY AS l(seq, ord)
         JOIN deliveries d ON d.seq = l.seq
         LEFT JOIN customers c ON c.id = d.customer_id
         LEFT JOIN items i ON i.id = d.item_id
         LEFT JOIN receipts r ON r.seq = d.receipt_seq
         ORDER BY l.ord",
        &[&seqs],
    )
    .await?;
    let entries = rows
        .iter()
        .map(|row| {
            let delivery: DeliveryCard = decode(row, 0, "delivery of a feed")?;
            let empties: i64 = row.get(3);
            Ok(FeedEntry {
                delivery,
                customer_name: row.get(1),
                item_name: row.get(2),
                empties_expected: u32::try_from(empties).unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok((entries, last_change, more))
}
