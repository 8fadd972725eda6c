//! Device keys on PostgreSQL: `domain::chain::register_key` against the
//! stored chain, its row locked.

use deadpool_postgres::Transaction;
use handover_shared::{DeviceId, Username};
use time::OffsetDateTime;

use super::{
    reads::record,
    sql::{encode, execute, Failed},
};
use crate::domain::chain::{self, DeviceChain, KeyMismatch};

/// The first key is inserted, never upserted: of two logins racing with
/// different keys, the second finds the first's row and is judged against it.
pub(super) async fn register_key(
    tx: &Transaction<'_>,
    device: &DeviceId,
    key: &str,
    by: &Username,
    now: OffsetDateTime,
) -> Result<Result<(), KeyMismatch>, Failed> {
    if let Ok(Some(first)) = chain::register_key(None, device, key, by, now) {
        execute(
            tx,
            "INSERT INTO device_chains (device_id, body) VALUES ($1, $2::text::jsonb) ON CONFLICT DO NOTHING",
            &[&device.as_str(), &encode(&first)?],
        )
        .await?;
    }
    let stored: Option<DeviceChain> = record(
        tx,
        "device chain",
        "SELECT body::text FROM device_chains WHERE device_id = $1 FOR UPDATE",
        &[&device.as_str()],
    )
    .await?;
    Ok(chain::register_key(stored.as_ref(), device, key, by, now).map(|_| ()))
}
