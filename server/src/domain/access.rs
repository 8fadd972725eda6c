//! Who may do what, in two steps that every endpoint takes:
//!
//! 1. the **role** check: the endpoint names the roles it serves, and the HTTP
//!    layer's `Auth<R>` extractor refuses everyone else before the handler runs;
//! 2. the **object** check: once the handler has loaded the object, it calls
//!    [`Principal::ensure_can_see`], and the object's [`Guarded`] implementation
//!    says who owns it. An object the caller may not see answers exactly as an
//!    absent one ([`Hidden`], a 404): its existence is none of the caller's
//!    business.
//!
//! Both live here, as plain code that tests call directly.

use handover_shared::{CustomerId, DeviceId, NodeId, Role, Username};
use uuid::Uuid;

/// The authenticated caller, as its access token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: Username,
    pub role: Role,
    pub device_id: DeviceId,
    pub session_id: Uuid,
    /// Expediter: its branch; seller and serviceman: their seller node.
    pub node_id: Option<NodeId>,
    /// Customer accounts: their customer.
    pub customer_id: Option<CustomerId>,
}

/// The caller may not do this (its role, or a rule of the operation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

/// An object the caller may not see: told as if it did not exist, in the
/// very words of an absent one ("no delivery D-000001").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {0}")]
pub struct Hidden(pub String);

/// An object with owners. Implemented next to each object kind, so that adding a
/// kind means deciding who sees it.
pub trait Guarded {
    /// A short name for messages, like "customer C1".
    fn describe(&self) -> String;
    fn visible_to(&self, principal: &Principal) -> bool;
}

impl Principal {
    /// The object check of every endpoint that reads or changes an object.
    pub fn ensure_can_see(&self, object: &impl Guarded) -> Result<(), Hidden> {
        if object.visible_to(self) {
            Ok(())
        } else {
            Err(Hidden(object.describe()))
        }
    }

    pub fn is_dispatcher(&self) -> bool {
        self.role == Role::Dispatcher
    }
}

impl Principal {
    /// Dispatchers act for every customer; a customer account for its own.
    pub fn acts_for_customer(&self, customer: &CustomerId) -> bool {
        self.is_dispatcher() || self.customer_id.as_ref() == Some(customer)
    }
}

#[cfg(test)]
mod tests {
    use handover_shared::NodeKind;

    use super::*;
    use crate::domain::{
        fixtures::{customer, principal},
        network::Node,
    };

    #[test]
    fn a_customer_sees_itself_and_no_other() {
        let me = principal(Role::Customer, Some("C1"));
        assert!(me.ensure_can_see(&customer("C1")).is_ok());
        assert_eq!(me.ensure_can_see(&customer("C2")), Err(Hidden("customer C2".into())));
        assert_eq!(Hidden("customer C2".into()).to_string(), "no customer C2", "as if absent");
    }

    #[test]
    fn a_dispatcher_sees_every_customer_and_node() {
        let dispatcher = principal(Role::Dispatcher, None);
        assert!(dispatcher.ensure_can_see(&customer("C7")).is_ok());
        let node =
            Node { id: NodeId::parse("MW").expect("id"), kind: NodeKind::MasterWarehouse, name: "Central".into() };
        assert!(dispatcher.ensure_can_see(&node).is_ok());
        assert!(principal(Role::Expediter, None).ensure_can_see(&node).is_err());
    }
}
