//! The schema, as numbered migrations kept in `server/migrations/` and built
//! into the binary. Each runs once, in its own transaction, recorded in
//! `schema_migrations`; every instance applies what is missing when it starts,
//! under an advisory lock, so that instances started together do not race.

use deadpool_postgres::Client;

use super::sql::{db_error, Failed};
use crate::store::StoreError;

/// Every migration, in order: (version, name, SQL). Append only: a migration
/// that has shipped is never edited, a later one changes what it made.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("../../../migrations/0001_initial.sql")),
    (2, "devices", include_str!("../../../migrations/0002_devices.sql")),
    (3, "proof", include_str!("../../../migrations/0003_proof.sql")),
];

/// The advisory lock key that migrations hold (an arbitrary constant of ours).
const MIGRATION_LOCK: i64 = 0x4841_4e44_0001;

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, in order.
    pub applied: Vec<i32>,
    /// The schema version afterwards.
    pub version: i32,
}

/// Applies the migrations the database lacks. A database whose schema is
/// newer than this build knows is refused: an older binary must not write it.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, StoreError> {
    run(client).await.map_err(Failed::into_store)
}

async fn run(client: &mut Client) -> Result<MigrationReport, Failed> {
    let tx = client.transaction().await?;
    // Taken before anything else: instances that start together create the
    // bookkeeping table and apply each migration one after the other.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if let Some(newer) = done.iter().find(|version| **version > known) {
        return Err(Failed::Store(StoreError::UnsupportedFormat {
            found: format!("schema {newer}"),
            expected: known as u32,
        }));
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name]).await?;
        tracing::info!(version, name, "applied a schema migration");
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(MigrationReport { applied, version: known })
}

/// The schema version the database is at (0 before any migration).
pub async fn version(client: &Client) -> Result<i32, StoreError> {
    let exists = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(db_error)?
        .get::<_, bool>(0);
    if !exists {
        return Ok(0);
    }
    let row =
        client.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await.map_err(db_error)?;
    Ok(row.get(0))
}
