//! Domain rules as plain functions and types: no HTTP, no storage. Handlers and
//! the command line parse their input into these types, and tests call them
//! directly.

pub mod access;
pub mod chain;
pub mod changes;
pub mod confirmations;
pub mod corrections;
#[cfg(test)]
mod fixtures;
pub mod network;
#[cfg(test)]
mod operations_tests;
pub mod orders;
pub mod photos;
pub mod sessions;
pub mod shipments;
pub mod stock;
