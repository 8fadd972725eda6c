//! JSON bodies of the HTTP API under `/api/v1`. Field names are snake_case.
//!
//! Compatibility: request types refuse unknown fields, so that a typo is an error
//! and not a silently ignored value; response types may grow new fields, and
//! readers (the agent) must ignore fields they do not know.

use serde::{Deserialize, Serialize};

use time::OffsetDateTime;

use crate::{CustomerId, DeliveryId, DeviceId, ErrorCode, ItemId, LegId, NodeId, OrderId, ReceiptId, Role, Username};

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// One error: a stable machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, snake_case; clients branch on it through [`ErrorDetail::known_code`].
    /// One of [`ErrorCode`]'s strings; kept a `String` because a newer server
    /// may add codes, and an unknown code must not make the body unreadable.
    pub code: String,
    /// For people; its wording may change.
    pub message: String,
    /// Every individual problem, when there are several (an invalid network file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl ErrorDetail {
    /// The code as this build knows it; `None` for a code from a newer server.
    pub fn known_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

/// One problem found in a document, located by a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Where, for example `customers[2].branch_1`, or the field name of an order.
    pub path: String,
    /// The problem's own stable code, where the endpoint has one per case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub message: String,
}

impl Problem {
    /// A problem without a code of its own.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { path: path.into(), code: None, message: message.into() }
    }
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// `POST /api/v1/auth/login`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// The handheld's stable id. When absent the server makes one and returns it;
    /// the client keeps it for later logins from the same device.
    #[serde(default)]
    pub device_id: Option<DeviceId>,
    /// The handheld's Ed25519 public key (base64), registered with its device
    /// on the first login that brings one: from then on the device's
    /// confirmations must be signed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("device_id", &self.device_id)
            .field("device_key", &self.device_key)
            .finish()
    }
}

/// A fresh token pair, from login or refresh.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// Bearer token for `Authorization: Bearer ...`; a JWT the client must treat
    /// as opaque.
    pub access_token: String,
    /// Single use: each refresh returns a new one and retires this one. Presenting
    /// a retired one again revokes the whole session.
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub role: Role,
    pub username: Username,
    /// The device the refresh token is bound to.
    pub device_id: DeviceId,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("role", &self.role)
            .field("username", &self.username)
            .field("device_id", &self.device_id)
            .finish()
    }
}

/// `POST /api/v1/auth/refresh` and `POST /api/v1/auth/logout`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshRequest { refresh_token: [redacted] }")
    }
}

/// `GET /api/v1/auth/me`: who the bearer token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    pub username: Username,
    pub role: Role,
    pub device_id: DeviceId,
    /// The node an expediter, serviceman or seller belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// The customer a customer account orders for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
}

/// `POST /api/v1/admin/devices/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRevoked {
    pub device_id: DeviceId,
    /// How many live sessions were cut off.
    pub sessions_revoked: u64,
}

/// The network file, as loaded by `handover-server import` and
/// `POST /api/v1/admin/network`.
///
/// Identifiers, kinds, roles and numbers are kept raw here on purpose: the server
/// checks the whole document and lists every problem at once, instead of stopping
/// at the first bad value as deserialisation would.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    #[serde(default)]
    pub nodes: Vec<NetworkNode>,
    #[serde(default)]
    pub items: Vec<NetworkItem>,
    #[serde(default)]
    pub stock: Vec<NetworkStock>,
    #[serde(default)]
    pub customers: Vec<NetworkCustomer>,
    #[serde(default)]
    pub accounts: Vec<NetworkAccount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkNode {
    pub id: String,
    /// `manufacturer`, `master_warehouse`, `branch_warehouse` or `seller`.
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkItem {
    pub id: String,
    pub name: String,
    /// Used ones are collected back for recycling.
    #[serde(default)]
    pub collectable: bool,
    /// The largest quantity one order may ask for.
    pub max_per_order: i64,
    #[serde(default)]
    pub discontinued: bool,
}

/// Sets the on-hand quantity of an item at a node (a stock count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkStock {
    pub node_id: String,
    pub item_id: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCustomer {
    pub id: String,
    pub name: String,
    /// The nearest branch warehouse, checked first.
    pub branch_1: String,
    /// The second branch warehouse, checked second.
    pub branch_2: String,
    /// The seller (sales representative) the customer is associated with.
    pub seller_id: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAccount {
    pub username: String,
    /// Stored only as an argon2id hash.
    pub password: String,
    pub role: String,
    /// Expediter: its branch warehouse; seller and serviceman: their seller node.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Customer accounts: the customer they order for.
    #[serde(default)]
    pub customer_id: Option<String>,
}

impl std::fmt::Debug for NetworkAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkAccount")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("role", &self.role)
            .field("node_id", &self.node_id)
            .field("customer_id", &self.customer_id)
            .finish()
    }
}

/// What an accepted import changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    pub nodes: u64,
    pub items: u64,
    pub stock: u64,
    pub customers: u64,
    pub accounts: u64,
}

/// `GET /api/v1/nodes/{id}/stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStock {
    pub node_id: NodeId,
    pub items: Vec<StockLevel>,
}

/// Stock of one item at one node, derived from the stock ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    pub item_id: crate::ItemId,
    pub on_hand: u64,
    /// Promised to planned deliveries, not yet issued.
    pub reserved: u64,
    /// `on_hand - reserved`: what the cascade may still take.
    pub available: u64,
}

/// `POST /api/v1/orders`. The server reads the body field by field, so that
/// every abnormal datum gets its own code; this type is for clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub customer_id: CustomerId,
    pub item_id: ItemId,
    pub quantity: u32,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Draft,
    Cancelled,
    Confirmed,
}

/// A draft order and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub customer_id: CustomerId,
    pub item_id: ItemId,
    pub item_name: String,
    pub quantity: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// A draft not confirmed by then can no longer be.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Set once confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<ReceiptId>,
}

/// An order receipt, with its flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptView {
    pub receipt_id: ReceiptId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub item_id: ItemId,
    pub quantity: u32,
    /// Used cartridges the courier should collect (0 for items not collected).
    pub empties_expected: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// A delivery has been planned for it.
    pub planned: bool,
    /// No node could cover it at the last planning run; it waits for stock.
    #[serde(default)]
    pub backordered: bool,
    pub delivered: bool,
    /// The code the customer gives the courier at the door; shown to the
    /// customer only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_code: Option<String>,
    /// Server time of the accepted confirmation.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    /// The latest delivery planned for it (a follow-up after a short hand-over).
    pub delivery_id: Option<DeliveryId>,
    /// Who delivered, and the proof: the latest hand-over that stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<DeliveryProof>,
    /// Units handed over so far, net of reversals; `delivered` turns on when
    /// they reach `quantity`.
    #[serde(default)]
    pub delivered_quantity: u32,
    /// Every delivery planned for it, in order.
    #[serde(default)]
    pub deliveries: Vec<DeliveryId>,
    #[serde(default)]
    pub cancelled: bool,
    /// Who cancelled it, when and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<InterventionView>,
    /// Hand-overs a dispatcher reversed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reversals: Vec<ReversalView>,
}

/// Who stepped in, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterventionView {
    pub by: Username,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: String,
}

/// A hand-over undone by a dispatcher: its goods went back to the delivering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReversalView {
    pub delivery_id: DeliveryId,
    pub confirmation_id: String,
    pub quantity: u32,
    pub empties_collected: u32,
    pub by: Username,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: String,
}

/// `POST /api/v1/deliveries/{id}/cancel`, `.../reverse` and
/// `POST /api/v1/receipts/{id}/cancel`: why. Required, except from a customer
/// calling off its own receipt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionRequest {
    #[serde(default)]
    pub reason: String,
}

/// What the courier's handheld recorded when the goods were handed over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryProof {
    pub confirmation_id: String,
    pub delivered_by: Username,
    pub device_id: DeviceId,
    /// The handheld's clock (recorded, not trusted).
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    /// The server's clock when the confirmation was accepted.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub recipient: String,
    pub quantity: u32,
    pub empties_collected: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<crate::sync::Position>,
    /// A signature was drawn (kept on the server, not repeated here).
    pub signed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo_digest: Option<String>,
    /// SHA-256 (hex) of the drawn signature's PNG, served at
    /// `/api/v1/receipts/{id}/images/{digest}` like the photo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_digest: Option<String>,
    /// Whether the photo has reached the server (it uploads after the
    /// confirmation). Filled in when shown; not stored.
    #[serde(default)]
    pub photo_received: bool,
    /// Whether the handover code entered at the door was the customer's;
    /// `None` when none was entered (or the receipt has no code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_verified: Option<bool>,
    /// Whether the confirmation came signed by its device's registered key.
    #[serde(default)]
    pub device_signature: DeviceSignature,
    /// Its place in the device's chain, when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_seq: Option<u64>,
}

/// How a confirmation's origin stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSignature {
    /// Signed by its device's registered key, verified on arrival; the record
    /// is at `GET /api/v1/receipts/{id}/proof`.
    Verified,
    /// From a device that registered no key (an integration pushing through
    /// the raw API, or a confirmation from before device keys).
    #[default]
    Unsigned,
}

/// `GET /api/v1/receipts/{id}/proof`: every signed confirmation of the
/// receipt's deliveries, oldest first, each checkable offline
/// (`handover-agent verify FILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptProof {
    pub receipt_id: ReceiptId,
    pub records: Vec<crate::proof::SignedProof>,
}

/// `GET` and `PUT /api/v1/deliveries/{id}/photos/{digest}`: how far an
/// upload has come. The next chunk starts at `received`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoUpload {
    pub digest: String,
    pub received: u64,
    /// The photo is stored, checked against its digest: the handheld may drop it.
    pub complete: bool,
}

/// `GET /api/v1/receipts`: one page, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptPage {
    pub receipts: Vec<ReceiptView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<ReceiptId>,
}

/// `GET /api/v1/customers/{id}`: the customer information.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerInfo {
    pub customer_id: CustomerId,
    pub name: String,
    pub branch_1: NodeId,
    pub branch_2: NodeId,
    pub seller_id: NodeId,
    /// On while used cartridges are expected back.
    pub collection_flag: bool,
    pub empties_expected: u64,
    pub order_count: u64,
    /// The latest receipts, newest first (at most 50; see `GET /api/v1/receipts`).
    pub order_history: Vec<ReceiptView>,
}

/// `POST /api/v1/shipments/run`: what one planning run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentRun {
    pub planned: Vec<PlannedDelivery>,
    /// Receipts no node could cover; planned again when stock changes.
    pub backordered: Vec<ReceiptId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDelivery {
    pub receipt_id: ReceiptId,
    pub delivery_id: DeliveryId,
    /// `branch_1`, `branch_2`, `master_warehouse`, `seller` or `manufacturer`.
    pub source: String,
    pub source_node: NodeId,
    /// The expediter chosen, if any serves the delivering branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<Username>,
    /// Set when the delivery is entrusted to the customer's seller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrusted_to: Option<NodeId>,
}

/// `GET /api/v1/deliveries/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub delivery_id: DeliveryId,
    pub receipt_id: ReceiptId,
    pub customer_id: CustomerId,
    pub item_id: ItemId,
    pub quantity: u32,
    pub source: String,
    pub source_node: NodeId,
    /// Where the courier picks the goods up.
    pub delivering_node: NodeId,
    pub legs: Vec<LegView>,
    pub assignee: Option<Username>,
    /// The seller node a delivery is entrusted to, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrusted_to: Option<NodeId>,
    /// `upcoming` (upstream legs not issued), `ready`, `delivered` or `cancelled`.
    pub status: String,
    /// Bumped at each (re)assignment.
    pub version: u64,
    pub assignments: Vec<AssignmentView>,
    #[serde(with = "time::serde::rfc3339")]
    pub planned_at: OffsetDateTime,
    /// Every accepted confirmation, delivered or failed, in the order received.
    #[serde(default)]
    pub attempts: Vec<AttemptView>,
    #[serde(default)]
    pub cancelled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<InterventionView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reversals: Vec<ReversalView>,
    /// The delivery whose short hand-over this one carries the rest of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up_of: Option<DeliveryId>,
}

/// One attempt at the door, as the handheld reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptView {
    pub confirmation_id: String,
    /// `delivered` or `failed`.
    pub outcome: crate::sync::Outcome,
    /// For `failed`: `customer_absent`, `refused`, `damaged`, `wrong_address` or `other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::sync::FailureReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub quantity: u32,
    pub empties_collected: u32,
    pub by: Username,
    pub device_id: DeviceId,
    /// The assignment version it was captured under.
    pub version: u64,
    /// The handheld's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// A dispatcher reversed this hand-over.
    #[serde(default)]
    pub reversed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegView {
    pub leg_id: LegId,
    pub from: NodeId,
    /// A node id, or `customer:ID` for the last leg.
    pub to: String,
    /// `planned`, `issued` or `completed`.
    pub status: String,
    /// When it was issued (or, for the last leg, completed).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub issued_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentView {
    pub version: u64,
    pub assignee: Option<Username>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub by: String,
}

/// `POST /api/v1/deliveries/{id}/assign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    pub assignee: Username,
}

/// `POST /api/v1/nodes/{id}/stock`: goods arrived at a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoodsReceiptRequest {
    pub item_id: ItemId,
    pub quantity: u32,
}

/// The answer to a goods receipt: the new stock, and the planning run it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodsReceiptResult {
    pub node_id: NodeId,
    pub stock: StockLevel,
    pub run: ShipmentRun,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_network_parses() {
        let doc = r#"{
          "nodes": [{"id": "MFR", "kind": "manufacturer", "name": "Plant"}],
          "items": [{"id": "TC-100", "name": "Toner 100", "collectable": true, "max_per_order": 20, "discontinued": false}],
          "stock": [{"node_id": "B1", "item_id": "TC-100", "quantity": 5}],
          "customers": [{"id": "C1", "name": "Office A", "branch_1": "B1", "branch_2": "B2", "seller_id": "S1"}],
          "accounts": [{"username": "cust1", "password": "secret-pass", "role": "customer", "customer_id": "C1"}]
        }"#;
        let file: NetworkFile = serde_json::from_str(doc).expect("example parses");
        assert_eq!(file.items[0].max_per_order, 20);
        assert_eq!(file.accounts[0].customer_id.as_deref(), Some("C1"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let login =
            LoginRequest { username: "u".into(), password: "hunter22".into(), device_id: None, device_key: None };
        assert!(!format!("{login:?}").contains("hunter22"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let res: Result<RefreshRequest, _> = serde_json::from_str(r#"{"refresh_token": "x", "extra": 1}"#);
        assert!(res.is_err());
    }
}
