//! The demo network, compiled into the binary so that `serve --demo` works from
//! any directory. `demo/network.json` in the repository is the same file.
//!
//! Its stock is arranged so that every sourcing path of the cascade is reachable
//! by customer C1 (branch #1 B1, branch #2 B2, seller S1):
//!
//! | C1 orders        | ships from                     |
//! | ---------------- | ------------------------------ |
//! | TC-100, 1 to 5   | branch #1 (B1 holds 5)         |
//! | TC-100, 6 to 10  | branch #2 (B2 holds 10)        |
//! | TC-100, 11 to 20 | master warehouse (MW holds 40) |
//! | TC-200, 1 to 6   | the seller (S1 holds 6)        |
//! | TC-200, 7 to 10  | manufacturer (MFR holds 500)   |
//! | DR-300, any      | manufacturer (MFR holds 200)   |
//!
//! TC-050 is discontinued, for the abnormal-data checks.

use handover_shared::api::NetworkFile;

use crate::{import::ImportFailure, store::Store};

pub const DEMO_NETWORK: &str = include_str!("../../demo/network.json");

/// The password of every demo account.
pub const DEMO_PASSWORD: &str = "handover-demo";

/// Loads the demo network when nothing was ever imported. Returns whether it did.
pub async fn load_if_empty(store: &dyn Store) -> Result<bool, ImportFailure> {
    if !store.is_empty().await? {
        return Ok(false);
    }
    let file: NetworkFile = serde_json::from_str(DEMO_NETWORK)
        .map_err(|err| ImportFailure::Internal(format!("the built-in demo network is unreadable: {err}")))?;
    crate::import::import_network(store, &file).await?;
    Ok(true)
}

/// The demo accounts, as `(username, role, belongs to)`, for the start-up banner.
pub fn accounts() -> Vec<(String, String, String)> {
    serde_json::from_str::<NetworkFile>(DEMO_NETWORK)
        .map(|file| {
            file.accounts
                .into_iter()
                .map(|account| {
                    let home = account.node_id.or(account.customer_id).unwrap_or_default();
                    (account.username, account.role, home)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::network::{validate, KnownNetwork};

    #[test]
    fn the_demo_network_is_valid_and_uses_the_demo_password() {
        let file: NetworkFile = serde_json::from_str(DEMO_NETWORK).expect("parses");
        let network = validate(&file, &KnownNetwork::default()).expect("valid");
        assert!(network.accounts.iter().all(|a| a.password() == DEMO_PASSWORD));
        assert_eq!(accounts().len(), network.accounts.len());
    }
}
