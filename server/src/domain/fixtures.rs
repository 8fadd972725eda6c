//! Test fixtures shared by the domain's unit tests.

use handover_shared::{CustomerId, DeviceId, NodeId, Role, Username};
use uuid::Uuid;

use super::{access::Principal, network::Customer};

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
