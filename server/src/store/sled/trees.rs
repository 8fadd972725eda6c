//! The trees of the store, declared once: what each holds and how it is keyed.

use sled::transaction::TransactionalTree;

use super::codec::{abort, backend, TxResult};
use crate::store::StoreError;

/// Declares the trees once: the struct of opened trees, the list a
/// transaction spans, and [`Tx`], the same trees inside a transaction.
macro_rules! declare_trees {
    ($( $(#[$doc:meta])* $name:ident, )+) => {
        // Some trees are only ever written, through `Tx`.
        #[allow(dead_code)]
        pub(super) struct Trees {
            $( $(#[$doc])* pub(super) $name: sled::Tree, )+
            /// Every tree above, in order: what a transaction spans.
            pub(super) all: Vec<sled::Tree>,
        }

        impl Trees {
            pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
                $( let $name = db.open_tree(stringify!($name)).map_err(backend)?; )+
                let all = vec![$( $name.clone(), )+];
                Ok(Trees { $( $name, )+ all })
            }
        }

        /// The trees inside one transaction.
        pub(super) struct Tx<'v> {
            $( pub(super) $name: &'v TransactionalTree, )+
        }

        impl<'v> Tx<'v> {
            pub(super) fn new(view: &'v [TransactionalTree]) -> TxResult<Self> {
                let [$( $name, )+] = view else {
                    return Err(abort(StoreError::Backend("a transaction spans other trees".into())));
                };
                Ok(Tx { $( $name, )+ })
            }
        }
    };
}

declare_trees! {
    nodes,
    items,
    customers,
    accounts,
    /// `node \0 item` to [`Balance`], kept in step with `ledger`.
    stock,
    /// Big-endian sequence number of its first entry to the entries one transaction appended.
    ledger,
    sessions,
    /// SHA-256 of a refresh token to `RefreshToken`.
    refresh_tokens,
    /// `device \0 session uuid` to nothing: which sessions a device holds.
    device_sessions,
    /// Order id to `Draft`.
    drafts,
    /// Big-endian receipt number to `Receipt`: receipt order is key order.
    receipts,
    /// `customer \0 receipt number` to nothing: a customer's order history.
    customer_receipts,
    /// Customer id to `CustomerAccount` (collection flag, order count).
    customer_accounts,
    /// Named counters, big-endian u64: the last receipt number, the last feed change.
    counters,
    /// Receipt numbers not yet planned (new, or backordered), in receipt order.
    unplanned,
    /// Big-endian receipt number to `Delivery` (a delivery is numbered like its receipt).
    deliveries,
    /// Username to big-endian count of open deliveries assigned to the courier.
    courier_load,
    /// `username \0 delivery number` to nothing: a courier's deliveries.
    courier_deliveries,
    /// `username \0 last change number` to (change number, delivery number)
    /// pairs: every change to a delivery that a courier holds or held, in
    /// order; pulls read it.
    courier_feed,
    /// Confirmation id to `SeenConfirmation`: the first outcome of every id.
    confirmations,
    /// Sequence number to the audit entries one transaction appended.
    audit,
    /// Device id to `DeviceSync`.
    device_syncs,
    /// Device id to `DeviceBinding`: the account it belongs to.
    device_bindings,
    /// Device id to `RejectionLog`: its rejected confirmations to review.
    rejection_logs,
    /// Device id to `DeviceChain`: its registered key and which signed
    /// confirmations arrived.
    device_chains,
}
