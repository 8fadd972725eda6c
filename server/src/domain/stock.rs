//! The stock ledger. Every movement of goods is an entry; the on-hand and
//! reserved figures of a node are the sum of its entries and never go negative.
//! Storage keeps a running balance next to the ledger, updated in the same
//! transaction, so that reads need not replay history; `replay` recomputes the
//! balances from the entries, for checks.

use std::collections::BTreeMap;

use handover_shared::{ItemId, NodeId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Stock of one item at one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub on_hand: u64,
    pub reserved: u64,
}

impl Balance {
    /// What the cascade may still promise.
    pub fn available(self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Applies a movement, refusing one that would make a figure negative or let
    /// reservations exceed what is on hand.
    pub fn apply(self, on_hand_delta: i64, reserved_delta: i64) -> Result<Balance, NegativeStock> {
        let on_hand = self.on_hand.checked_add_signed(on_hand_delta).ok_or(NegativeStock)?;
        let reserved = self.reserved.checked_add_signed(reserved_delta).ok_or(NegativeStock)?;
        if reserved > on_hand {
            return Err(NegativeStock);
        }
        Ok(Balance { on_hand, reserved })
    }
}

/// A movement would leave negative stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the movement would leave negative stock")]
pub struct NegativeStock;

/// Why stock moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Movement {
    /// A stock count from a network import set the on-hand figure.
    StockCount,
    /// Goods arrived from outside the network (`POST /api/v1/nodes/{id}/stock`).
    GoodsReceipt,
    /// Planning promised the goods to a delivery.
    Reserve { delivery_id: handover_shared::DeliveryId },
    /// A transfer leg: the goods left this node...
    Issue { leg_id: handover_shared::LegId },
    /// ...and arrived at the next one, still reserved.
    Arrive { leg_id: handover_shared::LegId },
    /// The last leg: the goods were handed to the customer.
    HandOver { leg_id: handover_shared::LegId },
    /// A delivery's reservation was freed: the rest of a short hand-over
    /// (reserved again at once for its follow-up), or a cancelled delivery's.
    Release { delivery_id: handover_shared::DeliveryId },
    /// A reversed hand-over: the goods came back to the node, reserved again
    /// for their delivery.
    TakeBack { delivery_id: handover_shared::DeliveryId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub node_id: NodeId,
    pub item_id: ItemId,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub movement: Movement,
}

/// Recomputes every balance from the ledger, in sequence order.
pub fn replay<'a>(
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
) -> Result<BTreeMap<(NodeId, ItemId), Balance>, NegativeStock> {
    let mut balances: BTreeMap<(NodeId, ItemId), Balance> = BTreeMap::new();
    for entry in entries {
        let key = (entry.node_id.clone(), entry.item_id.clone());
        let balance = balances.get(&key).copied().unwrap_or_default();
        balances.insert(key, balance.apply(entry.on_hand_delta, entry.reserved_delta)?);
    }
    Ok(balances)
}

/// A balance that disagrees with the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub node_id: NodeId,
    pub item_id: ItemId,
    pub stored: Balance,
    pub replayed: Balance,
}

/// Checks stored balances against the ledger: replaying every entry must never go
/// negative and must give exactly the stored figures.
pub fn audit(entries: &[LedgerEntry], stored: &[(NodeId, ItemId, Balance)]) -> Result<Vec<Mismatch>, NegativeStock> {
    let mut replayed = replay(entries)?;
    let mut mismatches = Vec::new();
    for (node_id, item_id, balance) in stored {
        let from_ledger = replayed.remove(&(node_id.clone(), item_id.clone())).unwrap_or_default();
        if from_ledger != *balance {
            mismatches.push(Mismatch {
                node_id: node_id.clone(),
                item_id: item_id.clone(),
                stored: *balance,
                replayed: from_ledger,
            });
        }
    }
    mismatches.extend(
        replayed.into_iter().filter(|(_, b)| *b != Balance::default()).map(|((node_id, item_id), replayed)| Mismatch {
            node_id,
            item_id,
            stored: Balance::default(),
            replayed,
        }),
    );
    Ok(mismatches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_balance_never_goes_negative() {
        let balance = Balance { on_hand: 3, reserved: 2 };
        assert_eq!(balance.available(), 1);
        assert_eq!(balance.apply(-1, 0), Ok(Balance { on_hand: 2, reserved: 2 }));
        assert_eq!(balance.apply(-2, 0), Err(NegativeStock));
        assert_eq!(balance.apply(0, -3), Err(NegativeStock));
        assert_eq!(balance.apply(0, 2), Err(NegativeStock));
    }

    #[test]
    fn replay_sums_the_entries() {
        let entry = |seq, delta| LedgerEntry {
            seq,
            at: OffsetDateTime::UNIX_EPOCH,
            node_id: NodeId::parse("B1").expect("id"),
            item_id: ItemId::parse("TC").expect("id"),
            on_hand_delta: delta,
            reserved_delta: 0,
            movement: Movement::StockCount,
        };
        let balances = replay(&[entry(1, 5), entry(2, -2)]).expect("balanced");
        assert_eq!(balances.values().next().map(|b| b.on_hand), Some(3));
        assert_eq!(replay(&[entry(1, -1)]), Err(NegativeStock));
    }

    #[test]
    fn an_audit_finds_balances_that_disagree_with_the_ledger() {
        let entry = LedgerEntry {
            seq: 1,
            at: OffsetDateTime::UNIX_EPOCH,
            node_id: NodeId::parse("B1").expect("id"),
            item_id: ItemId::parse("TC").expect("id"),
            on_hand_delta: 4,
            reserved_delta: 1,
            movement: Movement::GoodsReceipt,
        };
        let right = Balance { on_hand: 4, reserved: 1 };
        let key = (entry.node_id.clone(), entry.item_id.clone());
        assert_eq!(audit(std::slice::from_ref(&entry), &[(key.0.clone(), key.1.clone(), right)]), Ok(vec![]));
        let wrong = Balance { on_hand: 5, reserved: 1 };
        let found = audit(std::slice::from_ref(&entry), &[(key.0.clone(), key.1.clone(), wrong)]).expect("replays");
        assert_eq!(
            found,
            vec![Mismatch { node_id: key.0.clone(), item_id: key.1.clone(), stored: wrong, replayed: right }]
        );
        assert_eq!(
            audit(std::slice::from_ref(&entry), &[]).map(|m| m.len()),
            Ok(1),
            "a balance missing from the store"
        );
    }
}
