//! End-to-end tests: the real `handover-server` (and later `handover-agent`)
//! binaries, started on port 0 in temporary directories, spoken to over real TLS.
//! One test binary, so that linking happens once.

mod agent;
mod authz;
mod browser;
mod browser_exceptions;
mod exceptions;
mod faults;
mod foundation;
mod handheld;
mod helpers;
mod hostile;
mod instances;
mod migrate_store;
mod orders;
mod pages;
mod proof;
mod proxy;
mod security;
mod shipments;
mod sync;
