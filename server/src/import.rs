//! Loading a network file: validate the whole document against itself and the
//! store, hash the passwords, then apply everything in one transaction. Shared by
//! `handover-server import` and `POST /api/v1/admin/network`.

use handover_shared::api::{ImportSummary, NetworkFile, Problem};
use time::OffsetDateTime;

use crate::{
    auth::passwords,
    domain::network::{self, AccountSpec},
    store::{Account, ImportError, ImportPlan, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ImportFailure {
    #[error("the network file has {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// Imports a network file whole, or changes nothing. The file is validated
/// here against the stored network, before the passwords are hashed (slow on
/// purpose); the store judges it again under its own import lock, so that two
/// imports at once (two files adding a master warehouse each) never both pass,
/// whichever server instance runs them.
pub async fn import_network(store: &dyn Store, file: &NetworkFile) -> Result<ImportSummary, ImportFailure> {
    let known = store.known_network().await?;
    let valid = network::validate(file, &known).map_err(ImportFailure::Invalid)?;
    let accounts =
        tokio::task::spawn_blocking(move || hash_accounts(&valid.accounts).map(|accounts| (valid, accounts)))
            .await
            .map_err(|err| ImportFailure::Internal(format!("password hashing failed: {err}")))?;
    let (valid, accounts) = accounts?;
    let plan =
        ImportPlan { nodes: valid.nodes, items: valid.items, stock: valid.stock, customers: valid.customers, accounts };
    store.import_network(plan, OffsetDateTime::now_utc()).await.map_err(|err| match err {
        ImportError::Conflicts(problems) => ImportFailure::Invalid(problems),
        ImportError::Store(err) => ImportFailure::Store(err),
    })
}

/// Hashes every password, spread over the machine's cores: argon2id is slow on
/// purpose, and a network file can name many accounts.
fn hash_accounts(specs: &[AccountSpec]) -> Result<Vec<Account>, ImportFailure> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = specs.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = specs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|spec| {
                            let password_hash = passwords::hash(spec.password())
                                .map_err(|err| ImportFailure::Internal(format!("cannot hash a password: {err}")))?;
                            Ok(Account {
                                username: spec.username.clone(),
                                password_hash,
                                membership: spec.membership.clone(),
                            })
                        })
                        .collect::<Result<Vec<_>, ImportFailure>>()
                })
            })
            .collect();
        let mut accounts = Vec::with_capacity(specs.len());
        for worker in workers {
            let part =
                worker.join().map_err(|_| ImportFailure::Internal("a password hashing thread panicked".into()))??;
            accounts.extend(part);
        }
        Ok(accounts)
    })
}
