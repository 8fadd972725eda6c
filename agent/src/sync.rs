//! Push, then pull, with the session's token refreshed when it expires and
//! transient failures retried with capped exponential backoff and jitter.

use std::time::Duration;

use handover_shared::{
    sync::{Confirmation, ConfirmationBatch, ConfirmationResult, ResultStatus, MAX_BATCH},
    ErrorCode,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng as _;
use serde::Serialize;

use crate::{
    client::{CallError, Client},
    store::{LocalStore, Session},
};

/// Confirmations per request unless told otherwise (the server takes up to
/// [`MAX_BATCH`]).
pub const DEFAULT_BATCH: u16 = 100;

/// How a sync behaves.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Confirmations per request, 1 to [`MAX_BATCH`].
    pub batch_size: usize,
    /// Tries per request before the sync gives up; the daemon makes one and
    /// does its own backoff between syncs.
    pub attempts: u32,
    /// A progress bar on the terminal while the outbox drains.
    pub progress: bool,
    /// How long one request may take.
    pub timeout: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self { batch_size: DEFAULT_BATCH.into(), attempts: 4, progress: false, timeout: Duration::from_secs(30) }
    }
}

/// Why a sync stopped. Whatever it is, the outbox keeps what was not answered.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No server to talk to now: try again later.
    #[error("{message}; {queued} confirmation(s) stay queued, run `handover-agent sync` again later")]
    Offline { message: String, queued: usize },
    /// The session is over (revoked device, expired refresh token).
    #[error("{0}; log in again with `handover-agent login` — nothing queued is lost")]
    SessionEnded(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

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
    attempts: u32,
    call: impl Fn(&str) -> Result<T, CallError>,
) -> Result<T, SyncError> {
    let mut refreshed = false;
    let mut attempt = 0;
    loop {
        match call(&session.access_token) {
            Ok(value) => return Ok(value),
            Err(CallError::Unauthorized { code, .. })
                if ErrorCode::parse(&code) == Some(ErrorCode::TokenExpired) && !refreshed =>
            {
                refreshed = true;
                match client.refresh(&session.refresh_token) {
                    Ok(pair) => {
                        session.access_token = pair.access_token;
                        session.refresh_token = pair.refresh_token;
                        store.save_session(session)?;
                    }
                    Err(CallError::Unauthorized { message, .. }) => {
                        return Err(SyncError::SessionEnded(format!("this handheld's session ended ({message})")))
                    }
                    Err(err) if err.is_transient() => {
                        return Err(SyncError::Offline { message: err.to_string(), queued: store.queued() })
                    }
                    Err(err) => return Err(anyhow::anyhow!("refreshing the session failed: {err}").into()),
                }
            }
            Err(CallError::Unauthorized { message, .. }) => {
                return Err(SyncError::SessionEnded(format!("the server refused this handheld's session ({message})")))
            }
            Err(err) if err.is_transient() && attempt + 1 < attempts => {
                attempt += 1;
                let base = 200u64.saturating_mul(1 << attempt).min(2_000);
                let jitter = rand::rng().random_range(0..=base / 2);
                std::thread::sleep(Duration::from_millis(base + jitter));
            }
            Err(err) if err.is_transient() => {
                return Err(SyncError::Offline { message: err.to_string(), queued: store.queued() })
            }
            Err(err) => return Err(anyhow::anyhow!("{err}").into()),
        }
    }
}

/// Fetches what changed since the cursor; returns how many assignments changed.
pub fn pull(store: &LocalStore, options: &SyncOptions) -> Result<usize, SyncError> {
    let (mut session, client) = connect(store, options)?;
    let pulled = pull_with(store, &mut session, &client, options);
    prefer_the_answering_server(store, &mut session, &client)?;
    pulled
}

/// The server that answered last is tried first next time, so that a handheld
/// whose first address is down does not wait on it at every sync.
fn prefer_the_answering_server(store: &LocalStore, session: &mut Session, client: &Client) -> anyhow::Result<()> {
    let Some(position) = session.servers.iter().position(|server| server.trim_end_matches('/') == client.server())
    else {
        return Ok(());
    };
    if position > 0 {
        session.servers.rotate_left(position);
        store.save_session(session)?;
    }
    Ok(())
}

fn connect(store: &LocalStore, options: &SyncOptions) -> anyhow::Result<(Session, Client)> {
    let session = store.session()?;
    let client = Client::new(&session.servers, session.ca.as_deref().map(std::path::Path::new), options.timeout)?;
    Ok((session, client))
}

fn pull_with(
    store: &LocalStore,
    session: &mut Session,
    client: &Client,
    options: &SyncOptions,
) -> Result<usize, SyncError> {
    // Page after page; each page is kept with its cursor in one transaction,
    // so a pull cut short resumes where it stopped.
    let mut changed = 0;
    loop {
        let cursor = store.cursor()?;
        let changes =
            authorized(store, session, client, options.attempts, |token| client.pull(token, cursor.as_deref()))?;
        handover_shared::failpoint!("agent.mid_pull", SyncError::Failed(anyhow::anyhow!("failpoint")));
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(anyhow::Error::from)?;
        store.apply_pull(&changes.assignments, &changes.cursor, &now)?;
        changed += changes.assignments.len();
        if !changes.more {
            return Ok(changed);
        }
    }
}

/// Pushes the outbox in batches, applying each result as it comes, then pulls.
pub fn sync(store: &LocalStore, options: &SyncOptions) -> Result<SyncReport, SyncError> {
    let (mut session, client) = connect(store, options)?;
    let mut report = SyncReport::default();
    let batch_size = options.batch_size.clamp(1, usize::from(MAX_BATCH));
    // Counting the outbox is a scan in sled: once, then kept up to date here.
    let total = store.queued();
    let mut sent = 0;
    let bar = progress_bar(options.progress && total > batch_size, total);
    // A batch at a time from the store, never the whole outbox in memory.
    let mut after: Option<String> = None;
    loop {
        let chunk = store.outbox_after(after.as_deref(), batch_size)?;
        let Some(last) = chunk.last() else { break };
        after = Some(last.confirmation_id.clone());
        let batch = ConfirmationBatch {
            device_id: session.device_id.clone(),
            // What the outbox held at the start, less what was answered since.
            queued: Some(total.saturating_sub(sent).max(chunk.len()) as u64),
            confirmations: chunk,
        };
        let answer = authorized(store, &mut session, &client, options.attempts, |token| client.push(token, &batch))?;
        handover_shared::failpoint!("agent.after_upload", SyncError::Failed(anyhow::anyhow!("failpoint")));
        let chunk = batch.confirmations;
        check_answer(&chunk, &answer.results).map_err(anyhow::Error::msg)?;
        sent += chunk.len();
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
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    report.pulled = pull_with(store, &mut session, &client, options)?;
    prefer_the_answering_server(store, &mut session, &client)?;
    report.queued = store.queued();
    Ok(report)
}

/// The answer must speak of the batch sent, one result per confirmation, in
/// order; otherwise nothing leaves the outbox on its word.
fn check_answer(sent: &[Confirmation], results: &[ConfirmationResult]) -> Result<(), String> {
    let in_order = results.len() == sent.len()
        && results
            .iter()
            .zip(sent)
            .all(|(result, confirmation)| result.confirmation_id == confirmation.confirmation_id);
    if in_order {
        return Ok(());
    }
    Err(format!(
        "the server's answer does not match the batch ({} results for {} confirmations); nothing was removed from \
         the outbox",
        results.len(),
        sent.len()
    ))
}

/// A bar on standard error when asked for, a hidden one otherwise.
fn progress_bar(shown: bool, total: usize) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template("pushing {bar:30} {pos}/{len} confirmations, {per_sec}, {eta} left")
    {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::confirmation;

    fn accepted(c: &Confirmation) -> ConfirmationResult {
        ConfirmationResult {
            confirmation_id: c.confirmation_id.clone(),
            status: ResultStatus::Accepted,
            code: None,
            message: None,
        }
    }

    #[test]
    fn only_an_answer_with_one_result_per_confirmation_in_order_is_taken() {
        let sent = [confirmation(1), confirmation(2)];
        assert_eq!(check_answer(&sent, &[accepted(&sent[0]), accepted(&sent[1])]), Ok(()));
        for wrong in [vec![accepted(&sent[0])], vec![accepted(&sent[1]), accepted(&sent[0])], vec![]] {
            let refused = check_answer(&sent, &wrong).expect_err("a mismatched answer");
            assert!(refused.contains("nothing was removed from the outbox"), "{refused}");
        }
    }
}
