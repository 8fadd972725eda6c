//! Reads that take more than one key: listings, pages, the couriers' feed.

use std::collections::{HashMap, HashSet};

use handover_shared::{CustomerId, DeviceId, ItemId, NodeId, Username};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    codec::{backend, decode, feed_changes, get, page, pair_key, scan, tx_get, TxResult},
    Trees, Tx,
};
use crate::{
    domain::{
        network::{Customer, Item, KnownNetwork, Node},
        orders::{Draft, DraftState, Receipt},
        sessions::{RefreshToken, Session},
        shipments::{Carrier, Delivery, DeliveryCard},
        stock::Balance,
    },
    store::{DeliveryQuery, FeedEntry, ReceiptQuery, StoreError},
};

/// The name of a stored customer or item, read without the rest of the record.
#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

/// The empties a stored receipt expects, read without the rest of the record.
#[derive(Deserialize)]
struct EmptiesOnly {
    empties_expected: u32,
}

pub(super) fn known_network(trees: &Trees) -> Result<KnownNetwork, StoreError> {
    let nodes: Vec<Node> = scan(trees.nodes.iter())?;
    let items: Vec<Item> = scan(trees.items.iter())?;
    let customers: Vec<Customer> = scan(trees.customers.iter())?;
    Ok(KnownNetwork {
        nodes: nodes.into_iter().map(|node| (node.id, node.kind)).collect(),
        items: items.into_iter().map(|item| item.id).collect(),
        customers: customers.into_iter().map(|customer| customer.id).collect(),
    })
}

pub(super) fn node_stock(trees: &Trees, node: &NodeId) -> Result<Vec<(ItemId, Balance)>, StoreError> {
    let prefix = pair_key(node.as_str(), b"");
    trees
        .stock
        .scan_prefix(&prefix)
        .map(|entry| {
            let (key, value) = entry.map_err(backend)?;
            let item = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|raw| ItemId::parse(raw).ok())
                .ok_or_else(|| StoreError::Backend(format!("bad stock key {key:?}")))?;
            Ok((item, decode(&key, &value)?))
        })
        .collect()
}

/// A refresh token by its hash, and the session it belongs to.
pub(super) fn tx_token_and_session(tx: &Tx<'_>, hash: &[u8; 32]) -> TxResult<(Option<RefreshToken>, Option<Session>)> {
    let token: Option<RefreshToken> = tx_get(tx.refresh_tokens, hash)?;
    let session = match &token {
        Some(token) => tx_get(tx.sessions, token.session_id.as_bytes())?,
        None => None,
    };
    Ok((token, session))
}

pub(super) fn device_session_ids(trees: &Trees, device: &DeviceId) -> Result<Vec<Uuid>, StoreError> {
    let prefix = pair_key(device.as_str(), b"");
    trees
        .device_sessions
        .scan_prefix(&prefix)
        .keys()
        .map(|key| {
            let key = key.map_err(backend)?;
            Uuid::from_slice(&key[prefix.len()..])
                .map_err(|err| StoreError::Backend(format!("bad device index key: {err}")))
        })
        .collect()
}

/// Drafts still open (possibly expired), newest first.
pub(super) fn open_drafts(trees: &Trees, customer: Option<&CustomerId>) -> Result<Vec<Draft>, StoreError> {
    let drafts: Vec<Draft> = scan(trees.drafts.iter().rev())?;
    Ok(drafts
        .into_iter()
        .filter(|d| d.state == DraftState::Open && customer.is_none_or(|c| *c == d.customer_id))
        .collect())
}

/// Removes the drafts stale at `before`, each only if unchanged since read: a
/// draft confirmed meanwhile stays.
pub(super) fn purge_drafts(trees: &Trees, before: OffsetDateTime) -> Result<u64, StoreError> {
    let mut purged = 0;
    for entry in trees.drafts.iter() {
        let (key, value) = entry.map_err(backend)?;
        let draft: Draft = decode(&key, &value)?;
        if draft.is_stale(before)
            && trees.drafts.compare_and_swap(&key, Some(&value), None::<&[u8]>).map_err(backend)?.is_ok()
        {
            purged += 1;
        }
    }
    Ok(purged)
}

pub(super) fn receipts(trees: &Trees, query: &ReceiptQuery) -> Result<Vec<Receipt>, StoreError> {
    let start = query.after.map_or(0, |after| after.saturating_add(1));
    let keep = |receipt: &Receipt| {
        query.delivered.is_none_or(|delivered| receipt.delivered == delivered)
            && query.backordered.is_none_or(|backordered| receipt.backordered == backordered)
            && query.since.is_none_or(|since| receipt.created_at >= since)
    };
    let index = query.customer_id.as_ref().map(|customer| (&trees.customer_receipts, customer.as_str()));
    page(&trees.receipts, index, start, query.limit, keep)
}

pub(super) fn recent_receipts(trees: &Trees, customer: &CustomerId, limit: usize) -> Result<Vec<Receipt>, StoreError> {
    let prefix = pair_key(customer.as_str(), b"");
    let mut recent = Vec::new();
    for key in trees.customer_receipts.scan_prefix(&prefix).keys().rev().take(limit) {
        let key = key.map_err(backend)?;
        if let Some(receipt) = get(&trees.receipts, &key[prefix.len()..])? {
            recent.push(receipt);
        }
    }
    Ok(recent)
}

pub(super) fn deliveries(trees: &Trees, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
    let start = query.after.map_or(0, |after| after.saturating_add(1));
    let keep = |delivery: &Delivery| {
        (!query.open_only || delivery.is_open())
            && (!query.unassigned_only || delivery.assignee.is_none())
            && query.assignee.as_ref().is_none_or(|a| delivery.assignee.as_ref() == Some(a))
            && query
                .entrusted_to
                .as_ref()
                .is_none_or(|n| matches!(&delivery.carrier, Carrier::Seller { seller } if seller == n))
            && (!query.entrusted_only || matches!(delivery.carrier, Carrier::Seller { .. }))
    };
    // A courier's deliveries come from its index, not a scan of them all.
    let index = query.assignee.as_ref().map(|courier| (&trees.courier_deliveries, courier.as_str()));
    page(&trees.deliveries, index, start, query.limit, keep)
}

/// See `Store::assignment_changes`.
pub(super) fn assignment_changes(
    trees: &Trees,
    courier: &Username,
    cursor: u64,
    limit: usize,
) -> Result<(Vec<FeedEntry>, u64, bool), StoreError> {
    let prefix = pair_key(courier.as_str(), b"");
    let from = pair_key(courier.as_str(), &cursor.saturating_add(1).to_be_bytes());
    let mut changed: Vec<u64> = Vec::new();
    let mut last_change = cursor;
    let mut more = false;
    'records: for entry in trees.courier_feed.range(from..) {
        let (key, value) = entry.map_err(backend)?;
        if !key.starts_with(&prefix) {
            break;
        }
        // A grouped record may start at or before the cursor: its earlier changes were sent.
        for (change, delivery) in feed_changes(&key[prefix.len()..], &value)? {
            if change <= cursor {
                continue;
            }
            if changed.len() >= limit {
                more = true;
                break 'records;
            }
            last_change = change;
            changed.push(delivery);
        }
    }
    // Each changed delivery once, at the place of its latest change.
    let mut seen = HashSet::new();
    let mut latest: Vec<u64> = changed.into_iter().rev().filter(|seq| seen.insert(*seq)).collect();
    latest.reverse();
    // A courier's deliveries share a few customers and items: read each
    // once. Each record is decoded only as far as a pull needs it.
    let mut customers: HashMap<CustomerId, String> = HashMap::new();
    let mut items: HashMap<ItemId, String> = HashMap::new();
    let mut entries = Vec::with_capacity(latest.len());
    for seq in latest {
        let Some(delivery) = get::<DeliveryCard>(&trees.deliveries, &seq.to_be_bytes())? else { continue };
        if !customers.contains_key(&delivery.customer_id) {
            let customer: Option<NameOnly> = get(&trees.customers, delivery.customer_id.as_str().as_bytes())?;
            customers.insert(delivery.customer_id.clone(), customer.map(|c| c.name).unwrap_or_default());
        }
        if !items.contains_key(&delivery.item_id) {
            let item: Option<NameOnly> = get(&trees.items, delivery.item_id.as_str().as_bytes())?;
            items.insert(delivery.item_id.clone(), item.map(|i| i.name).unwrap_or_default());
        }
        let receipt: Option<EmptiesOnly> = match delivery.receipt_id.seq() {
            Some(receipt) => get(&trees.receipts, &receipt.to_be_bytes())?,
            None => None,
        };
        entries.push(FeedEntry {
            customer_name: customers.get(&delivery.customer_id).cloned().unwrap_or_default(),
            item_name: items.get(&delivery.item_id).cloned().unwrap_or_default(),
            empties_expected: receipt.map_or(0, |r| r.empties_expected),
            delivery,
        });
    }
    Ok((entries, last_change, more))
}
