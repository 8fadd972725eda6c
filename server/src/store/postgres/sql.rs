//! What every PostgreSQL call shares: the error that ends an attempt, whether
//! to try the transaction again, and the decoding of stored records.

use deadpool_postgres::GenericClient;
use handover_shared::api::Problem;
use serde::{de::DeserializeOwned, Serialize};
use tokio_postgres::{error::SqlState, types::ToSql, Row};

use crate::store::StoreError;

/// Why one attempt at a transaction ended early.
#[derive(Debug)]
pub(super) enum Failed {
    /// PostgreSQL refused or lost the statement.
    Db(tokio_postgres::Error),
    /// The records or the domain refused the change; nothing is written.
    Store(StoreError),
    /// An import clashes with the stored network.
    Conflicts(Vec<Problem>),
    /// A pooled connection turned out closed before anything was sent on it
    /// (the database restarted since it was opened): another one is tried.
    Stale(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(err: tokio_postgres::Error) -> Self {
        Failed::Db(err)
    }
}

impl From<StoreError> for Failed {
    fn from(err: StoreError) -> Self {
        Failed::Store(err)
    }
}

impl From<crate::domain::changes::Inconsistent> for Failed {
    fn from(err: crate::domain::changes::Inconsistent) -> Self {
        Failed::Store(err.into())
    }
}

impl Failed {
    /// A conflict with a concurrent transaction that a fresh attempt resolves:
    /// a deadlock between row locks, a serialization failure, or two writers
    /// inserting the same new key (a stock row, a confirmation id) at once. The
    /// loser's next attempt reads what the winner wrote.
    pub(super) fn is_transient(&self) -> bool {
        let err = match self {
            Failed::Stale(_) => return true,
            Failed::Db(err) => err,
            Failed::Store(_) | Failed::Conflicts(_) => return false,
        };
        matches!(
            err.code(),
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::UNIQUE_VIOLATION
        )
    }

    /// An error of the first statement on a pooled connection.
    pub(super) fn at_start(err: tokio_postgres::Error) -> Failed {
        if err.is_closed() {
            Failed::Stale(err)
        } else {
            Failed::Db(err)
        }
    }

    pub(super) fn into_store(self) -> StoreError {
        match self {
            Failed::Db(err) | Failed::Stale(err) => db_error(err),
            Failed::Store(err) => err,
            Failed::Conflicts(problems) => {
                StoreError::Backend(format!("{} import conflict(s) outside an import", problems.len()))
            }
        }
    }
}

/// A PostgreSQL error as the store reports it: the database out of reach (its
/// connection closed, the server shutting down or not accepting connections)
/// is `Unavailable`, which the API answers with 503; anything else is a failure.
pub(super) fn db_error(err: tokio_postgres::Error) -> StoreError {
    let unreachable = err.is_closed()
        || err.code().is_some_and(|code| {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
        })
        || err.code().is_none() && err.to_string().contains("connection");
    if unreachable {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(format!(
            "postgres: {}",
            err.as_db_error().map_or_else(|| err.to_string(), |db| db.to_string())
        ))
    }
}

pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Runs a statement prepared once per connection.
pub(super) async fn query(client: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, Failed> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

pub(super) async fn execute(client: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<u64, Failed> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.execute(&statement, params).await?)
}

/// A record stored as JSON, read as text (`body::text`) in column `column`.
pub(super) fn decode<T: DeserializeOwned>(
    row: &Row,
    column: usize,
    key: impl std::fmt::Display,
) -> Result<T, StoreError> {
    let text: &str = row.try_get(column).map_err(|err| StoreError::Backend(format!("postgres: {err}")))?;
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt { key: key.to_string(), source })
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Backend(format!("cannot encode a record: {err}")))
}

/// A number as PostgreSQL's `bigint`.
pub(super) fn big(number: u64) -> Result<i64, StoreError> {
    i64::try_from(number).map_err(|_| StoreError::Backend(format!("{number} is out of bigint's range")))
}

/// A stored `bigint` that counts or numbers something.
pub(super) fn count(row: &Row, column: usize) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(column).map_err(|err| StoreError::Backend(format!("postgres: {err}")))?;
    u64::try_from(value).map_err(|_| StoreError::Backend(format!("negative stored number {value}")))
}
