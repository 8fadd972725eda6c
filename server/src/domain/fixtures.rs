//! Test fixtures shared by the domain's unit tests.

use handover_shared::{CustomerId, DeviceId, ItemId, NodeId, OrderId, Role, Username};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    access::Principal,
    network::{Customer, Item},
    orders::{Draft, Receipt, ValidOrder, DRAFT_TTL},
};

/// An account named `someone` with `role`, acting for `customer` when given.
pub fn principal(role: Role, customer: Option<&str>) -> Principal {
    Principal {
        username: Username::parse("someone").expect("id"),
        role,
        device_id: DeviceId::parse("dev-1").expect("id"),
        session_id: Uuid::nil(),
        node_id: None,
        customer_id: customer.map(|c| CustomerId::parse(c).expect("id")),
    }
}

/// A customer served by branches B1 and B2 and seller S1.
pub fn customer(id: &str) -> Customer {
    let node = |raw: &str| NodeId::parse(raw).expect("id");
    Customer {
        id: CustomerId::parse(id).expect("id"),
        name: "Office".into(),
        branch_1: node("B1"),
        branch_2: node("B2"),
        seller_id: node("S1"),
    }
}

/// Receipt number `seq`, not planned yet: `quantity` units of `item` for
/// `customer`, confirmed at the epoch; a collectable item expects its empties.
pub fn receipt(seq: u64, customer: &str, item: &str, quantity: u32, collectable: bool) -> Receipt {
    let item = Item {
        id: ItemId::parse(item).expect("id"),
        name: item.into(),
        collectable,
        max_per_order: 100,
        discontinued: false,
    };
    let order = ValidOrder { customer_id: CustomerId::parse(customer).expect("id"), item, quantity };
    let order_id = OrderId::parse(format!("o{seq}")).expect("id");
    let at = OffsetDateTime::UNIX_EPOCH;
    let draft = Draft::new(order, order_id, &principal(Role::Dispatcher, None), at, DRAFT_TTL);
    Receipt::from_draft(&draft, seq, at)
}

/// A receipt's handover code, with a stand-in hash (no test here checks it
/// against a handheld's slow hash).
pub fn handover_code() -> super::orders::HandoverCode {
    super::orders::HandoverCode { code: "042517".into(), hash: "$argon2id$stand-in".into() }
}
