//! Types that cross the wire between the Handover server, the handheld agent and
//! the end-to-end tests: identifiers, roles, node kinds and the JSON bodies of the
//! HTTP API.
//!
//! This crate depends on serde-level crates only, so that the agent stays light;
//! CI checks that neither actix nor sled ever shows up in its dependency tree.

pub mod api;
pub mod error_code;
pub mod failpoints;
pub mod ids;
pub mod kinds;
pub mod private;
pub mod proof;
pub mod sync;

pub use error_code::ErrorCode;
pub use ids::{CustomerId, DeliveryId, DeviceId, IdError, ItemId, LegId, NodeId, OrderId, ReceiptId, Username};
pub use kinds::{NodeKind, Role, UnknownName};
