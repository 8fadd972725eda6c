//! Push, then pull, with the session's token refreshed when it expires and
//! transient failures retried with capped exponential backoff and jitter.

use std::time::Duration;

use anyhow::bail;
use handover_shared::sync::{ConfirmationBatch, ResultStatus};
use rand::Rng as _;
use serde::Serialize;

use crate::{
    client::{CallError, Client},
    store::{LocalStore, Session},
};

/// Confirmations per request.
const BATCH: usize = 100;
/// Tries per request before the sync gives up (the outbox keeps everything).
const ATTEMPTS: u32 = 4;

#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    pub pulled: usize,
    pub queued: usize,
}

/// Runs `call` with the session's access token: refreshes it once if it
/// expired, and retries transient failures with backoff and jitter.
fn authorized<T>(
    store: &LocalStore,
    session: &mut Session,
    client: &Client,
    call: impl Fn(&str) -> Result<T, CallError>,
) -> anyhow::Result<T> {
    let mut refreshed = false;
    let mut attempt = 0;
    loop {
        match call(&session.access_token) {
            Ok(value) => return Ok(value),
            Err(CallError::Unauthorized { code, .. }) if code == "token_expired" && !refreshed => {
                refreshed = true;
                match client.refresh(&session.refresh_token) {
                    Ok(pair) => {
                        session.access_token = pair.access_token;
                        session.refresh_token = pair.refresh_token;
                        store.save_session(session)?;
                    }
                    Err(CallError::Unauthorized { message, .. }) => bail!(
                        "this handheld's session ended ({message}); log in again with `handover-agent login` — nothing queued is lost"
                    ),
                    Err(err) => bail!("refreshing the session failed: {err}"),
                }
            }
            Err(CallError::Unauthorized { message, .. }) => {
                bail!("the server refused this handheld's session ({message}); log in again — nothing queued is lost")
            }
            Err(err) if err.is_transient() && attempt + 1 < ATTEMPTS => {
                attempt += 1;
                let base = 200u64.saturating_mul(1 << attempt).min(2_000);
                let jitter = rand::rng().random_range(0..=base / 2);
                std::thread::sleep(Duration::from_millis(base + jitter));
            }
            Err(err) if err.is_transient() => {
                bail!("{err}; {} confirmation(s) stay queued, run `handover-agent sync` again later", store.queued())
            }
            Err(err) => bail!("{err}"),
        }
    }
}

/// Fetches what changed since the cursor; returns how many assignments changed.
pub fn pull(store: &LocalStore) -> anyhow::Result<usize> {
    let mut session = store.session()?;
    let client = Client::new(&session.server, session.ca.as_deref().map(std::path::Path::new))?;
    let cursor = store.cursor()?;
    let changes = authorized(store, &mut session, &client, |token| client.pull(token, cursor.as_deref()))?;
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    store.apply_pull(&changes.assignments, &changes.cursor, &now)?;
    Ok(changes.assignments.len())
}

/// Pushes the outbox in batches, applying each result as it comes, then pulls.
pub fn sync(store: &LocalStore) -> anyhow::Result<SyncReport> {
    let mut session = store.session()?;
    let client = Client::new(&session.server, session.ca.as_deref().map(std::path::Path::new))?;
    let mut report = SyncReport::default();
    let outbox = store.outbox()?;
    for chunk in outbox.chunks(BATCH) {
        let batch = ConfirmationBatch {
            device_id: session.device_id.clone(),
            confirmations: chunk.to_vec(),
            queued: Some(store.queued() as u64),
        };
        let answer = authorized(store, &mut session, &client, |token| client.push(token, &batch))?;
        for (confirmation, result) in chunk.iter().zip(answer.results) {
            match result.status {
                ResultStatus::Accepted => {
                    store.settle(&confirmation.confirmation_id)?;
                    report.accepted += 1;
                }
                ResultStatus::Duplicate => {
                    store.settle(&confirmation.confirmation_id)?;
                    report.duplicate += 1;
                }
                ResultStatus::Rejected => {
                    let code = result.code.unwrap_or_default();
                    store.reject(confirmation, &code, &result.message.unwrap_or_default())?;
                    report.rejected += 1;
                }
            }
        }
        store.flush()?;
    }
    report.pulled = pull(store)?;
    report.queued = store.queued();
    Ok(report)
}
