//! The Handover central server. It takes customers' orders, decides which node
//! of the supply chain ships each one, assigns deliveries to couriers, and takes
//! their confirmations from the handheld agent.
//!
//! Layers, outermost first: `http` (actix-web handlers and extractors), the
//! application services (`auth`, `import`), `domain` (plain rules, no I/O) and
//! `store` (the storage boundary, sled behind it). `main.rs` only reads the
//! command line and calls into here.

pub mod auth;
pub mod config;
pub mod demo;
pub mod domain;
mod files;
pub mod http;
pub mod import;
pub mod migrate_store;
pub mod orders;
pub mod proof;
pub mod shipments;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
