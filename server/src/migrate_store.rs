//! `handover-server migrate-store --data-dir DIR --to URL`: moves a stopped
//! sled store into an empty PostgreSQL database.
//!
//! Open, refuse, copy, verify, report:
//!
//! 1. The sled store in `DIR` is opened, which locks it: while a server runs
//!    on it the command stops there, saying so. The target gets the schema
//!    ([`PgStore::migrate`]) and is refused, unchanged, when it holds anything
//!    at all (records, a secret, a counter past 0).
//! 2. Everything is read out of sled ([`SledStore::export`]) and written in
//!    one PostgreSQL transaction ([`PgStore::restore`]): every record, the
//!    ledger lines and feed changes under their sled numbers, the counters at
//!    the last numbers sled gave, and the JWT signing key of `DIR/jwt-secret`.
//! 3. After the commit both sides are read again: the count of every kind of
//!    record, the counters, the ledgers, and the stored balances, which each
//!    side's ledger must replay to ([`stock::audit`], over [`stock::replay`]).
//!    Any difference is an error.
//!
//! The sled store is only read: after a failure the old server starts on it
//! as before.

use std::{fmt, path::Path, path::PathBuf};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use crate::{
    auth::tokens::MIN_SECRET_LEN,
    domain::stock,
    store::{
        postgres::{PgOptions, PgStore, RestoreError, JWT_SECRET_NAME},
        sled::{Counters, SledStore},
        Store, StoreError,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum MigrateStoreError {
    #[error("the sled store: {0}")]
    Sled(#[source] StoreError),
    #[error("{path} does not hold a usable JWT signing key: {why}")]
    SigningKey { path: PathBuf, why: String },
    #[error("the target database is not empty (it holds: {}): migrate-store copies into an empty database only; nothing was changed", .0.join(", "))]
    TargetNotEmpty(Vec<&'static str>),
    #[error("the PostgreSQL target: {0}")]
    Target(#[source] StoreError),
    /// The copy is committed, and reads back differently.
    #[error("the copy in PostgreSQL does not match the sled store: {}", .0.mismatches.join("; "))]
    Mismatch(Box<Report>),
}

impl MigrateStoreError {
    /// The report of a copy that was made and checked, when there is one.
    pub fn report(&self) -> Option<&Report> {
        match self {
            MigrateStoreError::Mismatch(report) => Some(report),
            _ => None,
        }
    }
}

impl From<RestoreError> for MigrateStoreError {
    fn from(err: RestoreError) -> Self {
        match err {
            RestoreError::NotEmpty(held) => MigrateStoreError::TargetNotEmpty(held),
            RestoreError::Store(err) => MigrateStoreError::Target(err),
        }
    }
}

/// What was copied, as both sides read after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Each kind of record: how many sled holds, and how many PostgreSQL does.
    pub counts: Vec<(&'static str, u64, u64)>,
    pub sled_counters: Counters,
    pub postgres_counters: Counters,
    /// Lines of sled's ledger, and its stored balances.
    pub ledger_lines: usize,
    pub balances: usize,
    /// The file the JWT signing key was copied from; `None` when the data dir
    /// had none (the sled server signed with `auth.jwt_secret`).
    pub signing_key_from: Option<PathBuf>,
    /// Every difference found; empty when the copy matches.
    pub mismatches: Vec<String>,
}

/// The signing key of a sled data dir: the bytes the sled server signed with.
struct SigningKey {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// Moves the sled store of `data_dir` into the empty database of `target`
/// (see the module's docs).
pub async fn migrate_store(data_dir: &Path, target: &PgOptions) -> Result<Report, MigrateStoreError> {
    let signing_key = signing_key(data_dir)?;
    let sled = SledStore::open_existing(data_dir).map_err(MigrateStoreError::Sled)?;
    let postgres = PgStore::connect(target).map_err(MigrateStoreError::Target)?;
    // A database that has the schema already is checked before migrating, so
    // that one refused is left as it was, its schema version included.
    if postgres.schema_version().await.map_err(MigrateStoreError::Target)? > 0 {
        refuse_unless_empty(&postgres).await?;
    }
    postgres.migrate().await.map_err(MigrateStoreError::Target)?;
    refuse_unless_empty(&postgres).await?;
    let export = sled.export().await.map_err(MigrateStoreError::Sled)?;
    postgres.restore(&export, signing_key.as_ref().map(|key| key.bytes.as_slice())).await?;
    drop(export);
    // Proof images (photos, signatures): files beside the sled store, rows
    // in PostgreSQL. One at a time, so that memory holds one image.
    for digest in sled.images().digests().await.map_err(MigrateStoreError::Sled)? {
        if let Some(bytes) = sled.images().get(&digest).await.map_err(MigrateStoreError::Sled)? {
            postgres.images().put(&digest, bytes).await.map_err(MigrateStoreError::Target)?;
        }
    }
    let report = verify(&sled, &postgres, signing_key.as_ref()).await?;
    if report.mismatches.is_empty() {
        Ok(report)
    } else {
        Err(MigrateStoreError::Mismatch(Box::new(report)))
    }
}

async fn refuse_unless_empty(postgres: &PgStore) -> Result<(), MigrateStoreError> {
    let held = postgres.holding().await.map_err(MigrateStoreError::Target)?;
    if held.is_empty() {
        Ok(())
    } else {
        Err(MigrateStoreError::TargetNotEmpty(held))
    }
}

/// The key in `DATA_DIR/jwt-secret`, if the sled server made one, as the raw
/// bytes it signs with (the file holds them in base64url).
///
/// Why raw bytes. On PostgreSQL, a server without `auth.jwt_secret` signs
/// with the secret stored under `jwt` (`main.rs::open_store` puts it into
/// `auth.jwt_secret`, whose text's bytes are the key). Tokens signed before
/// the move (access tokens, and the page cookies whose key is derived from the
/// same one) check after it only if those bytes are the very bytes sled
/// signed with: the file's decoded bytes, not its base64url text, which would
/// be another key and end every handheld's session (an agent takes a token
/// that does not check for a session that ended). So the decoded bytes are
/// stored. `open_store` passes them on as they are when they are UTF-8; a key
/// that `load_or_create_secret` made (32 random bytes) almost never is, and
/// `open_store` then refuses to start ("the stored JWT key is not text")
/// until it hands the stored bytes to the token keys unchanged.
///
/// A sled server given `auth.jwt_secret` signed with that instead; its
/// operator keeps giving it to the servers on PostgreSQL, which then ignore
/// the stored key.
fn signing_key(data_dir: &Path) -> Result<Option<SigningKey>, MigrateStoreError> {
    let path = data_dir.join(crate::files::JWT_SECRET_FILE);
    let unusable = |why: String| MigrateStoreError::SigningKey { path: path.clone(), why };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(unusable(err.to_string())),
    };
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|err| unusable(format!("not base64url: {err}")))?;
    if bytes.len() < MIN_SECRET_LEN {
        return Err(unusable(format!("{} bytes, fewer than {MIN_SECRET_LEN}", bytes.len())));
    }
    Ok(Some(SigningKey { path, bytes }))
}

/// Reads both sides after the commit and lists every difference.
async fn verify(
    sled: &SledStore,
    postgres: &PgStore,
    signing_key: Option<&SigningKey>,
) -> Result<Report, MigrateStoreError> {
    let export = sled.export().await.map_err(MigrateStoreError::Sled)?;
    let copied = postgres.record_counts().await.map_err(MigrateStoreError::Target)?;
    let mut mismatches = Vec::new();
    let mut counts = Vec::new();
    let kinds = export.counts();
    for (kind, in_sled) in &kinds {
        match copied.iter().find(|(table, _)| table == kind) {
            Some((_, in_postgres)) => {
                if in_postgres != in_sled {
                    mismatches.push(format!("{kind}: {in_sled} in sled, {in_postgres} in PostgreSQL"));
                }
                counts.push((*kind, *in_sled, *in_postgres));
            }
            None => mismatches.push(format!("{kind}: not counted in PostgreSQL")),
        }
    }
    for (table, _) in copied.iter().filter(|(table, _)| !kinds.iter().any(|(kind, _)| kind == table)) {
        mismatches.push(format!("{table}: not counted in sled"));
    }
    let (sled_images, postgres_images) = (
        sled.images().digests().await.map_err(MigrateStoreError::Sled)?,
        postgres.images().digests().await.map_err(MigrateStoreError::Target)?,
    );
    if sled_images != postgres_images {
        mismatches.push(format!(
            "images: {} in sled, {} in PostgreSQL, not the same",
            sled_images.len(),
            postgres_images.len()
        ));
    }
    let postgres_counters = postgres.counters().await.map_err(MigrateStoreError::Target)?;
    if postgres_counters != export.counters {
        mismatches.push(format!(
            "the counters: {} in sled, {} in PostgreSQL",
            counters(&export.counters),
            counters(&postgres_counters)
        ));
    }
    let (sled_ledger, mut sled_balances) = sled.stock_snapshot().await.map_err(MigrateStoreError::Sled)?;
    let (postgres_ledger, mut postgres_balances) =
        postgres.stock_snapshot().await.map_err(MigrateStoreError::Target)?;
    for (side, ledger, balances) in
        [("sled", &sled_ledger, &sled_balances), ("PostgreSQL", &postgres_ledger, &postgres_balances)]
    {
        match stock::audit(ledger, balances) {
            Ok(differing) if differing.is_empty() => {}
            Ok(differing) => mismatches.push(format!(
                "{side}: {} stored balance(s) differ from the ledger's replay, as {:?}",
                differing.len(),
                differing[0]
            )),
            Err(err) => mismatches.push(format!("{side}: the ledger's replay fails: {err}")),
        }
    }
    if sled_ledger != postgres_ledger {
        mismatches.push("the ledgers differ".into());
    }
    sled_balances.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    postgres_balances.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    if sled_balances != postgres_balances {
        mismatches.push("the stored balances differ".into());
    }
    if let Some(key) = signing_key {
        let stored = postgres.secret(JWT_SECRET_NAME).await.map_err(MigrateStoreError::Target)?;
        if stored.as_deref() != Some(key.bytes.as_slice()) {
            mismatches.push(format!("the JWT signing key stored is not the one of {}", key.path.display()));
        }
    }
    Ok(Report {
        counts,
        sled_counters: export.counters,
        postgres_counters,
        ledger_lines: sled_ledger.len(),
        balances: sled_balances.len(),
        signing_key_from: signing_key.map(|key| key.path.clone()),
        mismatches,
    })
}

fn counters(counters: &Counters) -> String {
    format!("receipt {}, feed {}, ledger {}", counters.receipt, counters.feed, counters.ledger)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<20} {:>10} {:>10}", "records", "sled", "postgres")?;
        for (kind, in_sled, in_postgres) in &self.counts {
            writeln!(f, "{kind:<20} {in_sled:>10} {in_postgres:>10}")?;
        }
        writeln!(f, "last numbers given: {} (sled)", counters(&self.sled_counters))?;
        writeln!(f, "                    {} (postgres)", counters(&self.postgres_counters))?;
        if self.mismatches.is_empty() {
            writeln!(
                f,
                "stock: on both sides the ledger ({} line(s)) replays to the {} stored balance(s), and they are equal",
                self.ledger_lines, self.balances
            )?;
        }
        match &self.signing_key_from {
            Some(path) => writeln!(f, "JWT signing key: copied from {}", path.display())?,
            None => writeln!(f, "JWT signing key: none in the data dir (the sled server used auth.jwt_secret)")?,
        }
        for mismatch in &self.mismatches {
            writeln!(f, "MISMATCH: {mismatch}")?;
        }
        Ok(())
    }
}
