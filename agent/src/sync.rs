//! Push, then pull, then upload the photos, with the session's token
//! refreshed when it expires and transient failures retried with capped
//! exponential backoff and jitter.
//!
//! Photos go up in chunks that the server takes only where its upload stands,
//! so an upload cut anywhere (a lost link, the agent killed) resumes at the
//! next sync from what the server says it has. The agent lets go of a photo's
//! bytes only once the server says it holds the whole photo, checked against
//! its digest.

use std::time::Duration;

use handover_shared::{
    api::PhotoUpload,
    sync::{Confirmation, ConfirmationBatch, ConfirmationResult, ResultStatus, MAX_BATCH},
    ErrorCode,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng as _;
use serde::Serialize;

use crate::{
    client::{CallError, Client},
    store::{LocalStore, Session, SignatureRefused, WaitingPhoto},
};

/// Confirmations per request unless told otherwise (the server takes up to
/// [`MAX_BATCH`]).
pub const DEFAULT_BATCH: u16 = 100;

/// Bytes per photo chunk: small enough that a chunk lost on a poor link costs
/// little, large enough that a photo takes a handful of requests.
pub const PHOTO_CHUNK: usize = 256 * 1024;

/// `upload_offset` answers in a row before an upload is left for the next
/// sync: each one means another writer moved the upload meanwhile, which one
/// handheld syncing at a time should never cause.
const MAX_OFFSET_RETRIES: u32 = 3;

/// How long to wait before asking once more about an upload the server holds
/// whole but has not finished (it checks and files such uploads itself).
const FINISHING_PAUSE: Duration = Duration::from_millis(250);

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
    /// Photos the server now holds whole (their bytes left the handheld).
    pub photos_uploaded: usize,
    /// Photos the server will never take; `status` lists why.
    pub photos_dropped: usize,
    /// Photos still on the handheld after this sync.
    pub photos_waiting: usize,
    /// Why some photos stay, one line each; the next sync tries them again.
    pub photo_problems: Vec<String>,
    /// The server refused this handheld's signature (`bad_signature`): the
    /// push stopped there, the confirmation stays queued, and the courier
    /// must log in again. `sync` says so and fails; the daemon shows it.
    pub signature_refused: Option<SignatureRefused>,
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
            if is_signature_refusal(&result) {
                // Not final: the server does not remember it, and takes the
                // confirmation once it holds the key that signs it (or it is
                // signed). It stays queued, its photo and slot with it.
                report.signature_refused.get_or_insert_with(|| SignatureRefused {
                    device_id: session.device_id.clone(),
                    confirmation_id: confirmation.confirmation_id.clone(),
                    message: result.message.clone().unwrap_or_default(),
                });
                continue;
            }
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
        if report.signature_refused.is_some() {
            // The rest was signed (or not) the same way: no use sending it
            // before the courier logs in again.
            break;
        }
    }
    bar.finish_and_clear();
    match &report.signature_refused {
        Some(refused) => store.note_signature_refused(refused)?,
        None => store.clear_signature_refused()?,
    }
    // The assignments before the photos: on a slow link, the day's work
    // should not wait behind megabytes of evidence.
    report.pulled = pull_with(store, &mut session, &client, options)?;
    prefer_the_answering_server(store, &mut session, &client)?;
    report.queued = store.queued();
    upload_photos(store, &mut session, &client, options, &mut report)?;
    Ok(report)
}

/// The reject code of a confirmation whose device signature the server
/// refused (a rejection code of the push, not an error code: the wire
/// carries those as text).
const BAD_SIGNATURE: &str = "bad_signature";

/// The server refused a confirmation's signature: `bad_signature`, which it
/// answers without keeping it as the confirmation's outcome.
fn is_signature_refusal(result: &ConfirmationResult) -> bool {
    result.status == ResultStatus::Rejected && result.code.as_deref() == Some(BAD_SIGNATURE)
}

/// A refusal that the photo upload acts on, taken apart from the failures
/// that [`authorized`] deals with (expired tokens, unreachable servers).
#[derive(Debug)]
struct Refusal {
    status: u16,
    code: String,
    message: String,
}

impl Refusal {
    fn is(&self, code: ErrorCode) -> bool {
        ErrorCode::parse(&self.code) == Some(code)
    }

    /// The server will never take this photo for this delivery: the delivery
    /// is not one this courier holds, or the bytes are not a photo it keeps.
    fn is_final(&self) -> bool {
        // A server from before photo uploads answers `not_found` too, for the
        // endpoint itself ("no such endpoint"): that photo is kept for a
        // server that takes photos, not dropped.
        let no_such_endpoint = self.message == "no such endpoint";
        (self.is(ErrorCode::NotFound) && !no_such_endpoint) || self.is(ErrorCode::InvalidPhoto)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server refused ({} {}): {}", self.status, self.code, self.message)
    }
}

/// A refusal as a value, so that the caller can act on its code; any other
/// failure stays an error for [`authorized`].
fn refusal_apart<T>(answer: Result<T, CallError>) -> Result<Result<T, Refusal>, CallError> {
    match answer {
        Err(CallError::Refused { status, code, message }) => Ok(Err(Refusal { status, code, message })),
        other => other.map(Ok),
    }
}

/// What became of one photo's upload.
#[derive(Debug)]
enum Upload {
    /// The server holds it whole, checked against its digest.
    Complete,
    /// The server will never take it.
    Refused(Refusal),
    /// Not now, for this reason; the photo stays for the next sync.
    Held(String),
}

/// Uploads the photos whose confirmation the server took (accepted, or
/// already known): it files a photo only under an attempt of its delivery by
/// this courier, so a photo whose confirmation is still queued waits (asked
/// now, the server would answer `not_found`, and the photo would be dropped).
/// A photo of a refused confirmation left with it. A lost link stops the
/// uploads where they are; the next sync resumes them.
fn upload_photos(
    store: &LocalStore,
    session: &mut Session,
    client: &Client,
    options: &SyncOptions,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    for photo in store.photos_waiting()? {
        if photo.waits_for_confirmation {
            continue;
        }
        let Some(bytes) = store.photo(&photo.digest)? else {
            // Let go of meanwhile (another delivery's upload of the same photo).
            continue;
        };
        let uploaded = upload_photo(store, session, client, options, &photo, &bytes).map_err(|err| match err {
            SyncError::Offline { message, queued } => {
                let waiting = store.photos_waiting().map(|waiting| waiting.len()).unwrap_or_default();
                SyncError::Offline { message: format!("{message}; {waiting} photo(s) wait to upload"), queued }
            }
            other => other,
        })?;
        match uploaded {
            Upload::Complete => {
                store.photo_uploaded(&photo.delivery_id, &photo.digest)?;
                report.photos_uploaded += 1;
            }
            Upload::Refused(refusal) => {
                store.photo_refused(&photo.delivery_id, &photo.digest, &refusal.code, &refusal.message)?;
                report.photos_dropped += 1;
            }
            Upload::Held(why) => {
                store.note_photo_problem(&photo.digest, Some(&why))?;
                report.photo_problems.push(format!("photo {} of {}: {why}", photo.digest, photo.delivery_id));
            }
        }
    }
    report.photos_waiting = store.photos_waiting()?.len();
    Ok(())
}

/// Uploads one photo from where the server's upload stands, a chunk at a time.
fn upload_photo(
    store: &LocalStore,
    session: &mut Session,
    client: &Client,
    options: &SyncOptions,
    photo: &WaitingPhoto,
    bytes: &[u8],
) -> Result<Upload, SyncError> {
    let (delivery, digest) = (&photo.delivery_id, photo.digest.as_str());
    let total = bytes.len() as u64;
    let ask = |session: &mut Session| {
        authorized(store, session, client, options.attempts, |token| {
            refusal_apart(client.photo_upload(token, delivery, digest))
        })
    };
    let mut restarted = false;
    let mut offset_retries = 0;
    let mut asked_to_finish = false;
    let mut answer = ask(session)?;
    loop {
        let state = match answer {
            Ok(state) => state,
            Err(refusal) if refusal.is_final() => return Ok(Upload::Refused(refusal)),
            Err(refusal) => return Ok(Upload::Held(refusal.to_string())),
        };
        if state.complete {
            return Ok(Upload::Complete);
        }
        if state.received == total {
            // The server holds every byte and is finishing the upload
            // (checking it, filing it): a moment, then ask once more; still
            // not done, the next sync asks again. Never sent again, never
            // dropped for this.
            if asked_to_finish {
                return Ok(Upload::Held(format!(
                    "the server holds all {total} bytes but has not finished the upload yet"
                )));
            }
            asked_to_finish = true;
            std::thread::sleep(FINISHING_PAUSE);
            answer = ask(session)?;
            continue;
        }
        let Some(chunk) = next_chunk(bytes, &state) else {
            return Ok(Upload::Held(format!(
                "the server says it received {} bytes of this {total}-byte photo without completing it",
                state.received
            )));
        };
        let start = state.received;
        let put = authorized(store, session, client, options.attempts, |token| {
            refusal_apart(client.put_photo_chunk(token, delivery, digest, start, chunk, total))
        })?;
        handover_shared::failpoint!("agent.mid_photo_upload", SyncError::Failed(anyhow::anyhow!("failpoint")));
        answer = match put {
            Err(refusal) if refusal.is(ErrorCode::UploadOffset) => {
                offset_retries += 1;
                if offset_retries > MAX_OFFSET_RETRIES {
                    return Ok(Upload::Held(format!("the upload kept moving under it ({refusal})")));
                }
                ask(session)?
            }
            Err(refusal) if refusal.is(ErrorCode::PhotoDigestMismatch) => {
                if restarted {
                    return Ok(Upload::Held(format!("twice the server found the bytes do not match ({refusal})")));
                }
                // The server dropped what it had: once more from the start.
                restarted = true;
                Ok(PhotoUpload { digest: digest.to_owned(), received: 0, complete: false })
            }
            Ok(next) if !next.complete && next.received <= start => {
                // Sending the same chunk again would get the same answer.
                return Ok(Upload::Held(format!(
                    "the server took the chunk at {start} but stands at {}",
                    next.received
                )));
            }
            other => {
                offset_retries = 0;
                other
            }
        };
    }
}

/// The bytes to send next: from where the server stands, at most a chunk;
/// `None` when it stands at or past the end.
fn next_chunk<'a>(bytes: &'a [u8], state: &PhotoUpload) -> Option<&'a [u8]> {
    let start = usize::try_from(state.received).ok().filter(|&start| start < bytes.len())?;
    bytes.get(start..bytes.len().min(start + PHOTO_CHUNK))
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
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex, PoisonError},
        thread::JoinHandle,
    };

    use handover_shared::{
        api::{ErrorBody, ErrorDetail},
        proof::sha256_hex,
        DeviceId, Username,
    };

    use super::*;
    use crate::store::{tests::confirmation, Photo};

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

    /// What the fake server does and saw.
    #[derive(Debug, Default)]
    struct Fake {
        /// Bytes received so far, per `DELIVERY/DIGEST`.
        received: HashMap<String, Vec<u8>>,
        complete: Vec<String>,
        /// Every `Content-Range` sent, in order.
        ranges: Vec<String>,
        /// Uploads to spoil when their last byte arrives (as if corrupted on the way).
        spoil: u32,
        /// An answer to every request instead: status, code, message.
        refuse: Option<(u16, &'static str, &'static str)>,
        /// Bytes of the first chunk that landed from an earlier try of the
        /// same request, whose answer was lost: the chunk itself then starts
        /// behind the upload.
        landed_before: usize,
        /// Answers every chunk without keeping it (a server gone wrong).
        drops_chunks: bool,
        /// Answers about a whole, checked upload that say `complete: false`
        /// (the server finishing it), the last chunk's included, before it
        /// completes.
        finishing: u32,
        /// Uploads whole and checked, not finished yet.
        unfinished: Vec<String>,
        /// Photo GETs, in all.
        gets: usize,
        /// The reject code every pushed confirmation gets; accepted when `None`.
        push_code: Option<&'static str>,
        /// The confirmation ids of every push, in order.
        pushes: Vec<Vec<String>>,
    }

    /// A server that speaks the photo upload protocol on plain HTTP, from
    /// the spec: GET says where an upload stands, PUT takes the chunk that
    /// starts there, and the last chunk completes it once the digest matches.
    struct FakeServer {
        url: String,
        server: Arc<tiny_http::Server>,
        state: Arc<Mutex<Fake>>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeServer {
        fn start(fake: Fake) -> FakeServer {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("a port"));
            let url = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
            let state = Arc::new(Mutex::new(fake));
            let (serving, shared) = (Arc::clone(&server), Arc::clone(&state));
            let thread = std::thread::spawn(move || {
                for mut request in serving.incoming_requests() {
                    let (status, body) =
                        answer(&mut shared.lock().unwrap_or_else(PoisonError::into_inner), &mut request);
                    let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(status));
                }
            });
            FakeServer { url, server, state, thread: Some(thread) }
        }

        fn saw<T>(&self, look: impl FnOnce(&Fake) -> T) -> T {
            look(&self.state.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn error(status: u16, code: &str, message: &str) -> (u16, String) {
        let body = ErrorBody { error: ErrorDetail { code: code.into(), message: message.into(), problems: vec![] } };
        (status, serde_json::to_string(&body).expect("json"))
    }

    fn answer(fake: &mut Fake, request: &mut tiny_http::Request) -> (u16, String) {
        if request.url().starts_with("/api/v1/sync/assignments") {
            let changes =
                handover_shared::sync::AssignmentChanges { cursor: "1".into(), assignments: vec![], more: false };
            return (200, serde_json::to_string(&changes).expect("json"));
        }
        if request.url() == "/api/v1/sync/confirmations" {
            let mut body = Vec::new();
            let _ = request.as_reader().read_to_end(&mut body);
            let batch: ConfirmationBatch = serde_json::from_slice(&body).expect("a batch");
            let ids: Vec<String> = batch.confirmations.iter().map(|c| c.confirmation_id.clone()).collect();
            let results = ids
                .iter()
                .map(|id| ConfirmationResult {
                    confirmation_id: id.clone(),
                    status: if fake.push_code.is_some() { ResultStatus::Rejected } else { ResultStatus::Accepted },
                    code: fake.push_code.map(str::to_owned),
                    message: fake.push_code.map(|_| "device hh-1 registered no key: log in again".to_owned()),
                })
                .collect();
            fake.pushes.push(ids);
            let answer = handover_shared::sync::ConfirmationResults { results };
            return (200, serde_json::to_string(&answer).expect("json"));
        }
        if let Some((status, code, message)) = fake.refuse {
            return error(status, code, message);
        }
        let key = request.url().trim_start_matches("/api/v1/deliveries/").replacen("/photos/", "/", 1);
        let digest = key.split('/').nth(1).unwrap_or_default().to_owned();
        if *request.method() == tiny_http::Method::Put {
            let range = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Content-Range"))
                .map(|h| h.value.as_str().to_owned())
                .unwrap_or_default();
            fake.ranges.push(range.clone());
            let parsed = range.strip_prefix("bytes ").and_then(|rest| {
                let (span, total) = rest.split_once('/')?;
                let (start, end) = span.split_once('-')?;
                Some((start.parse::<usize>().ok()?, end.parse::<usize>().ok()?, total.parse::<usize>().ok()?))
            });
            let Some((start, end, total)) = parsed else {
                return error(400, "invalid_content_range", "no range");
            };
            let mut body = Vec::new();
            let _ = request.as_reader().read_to_end(&mut body);
            if fake.drops_chunks {
                body.clear();
                let upload = PhotoUpload { digest, received: 0, complete: false };
                return (200, serde_json::to_string(&upload).expect("json"));
            }
            if body.len() != end + 1 - start {
                return error(400, "invalid_content_range", "the body is not the range");
            }
            let held = fake.received.entry(key.clone()).or_default();
            if fake.landed_before > 0 {
                held.extend_from_slice(&body[..fake.landed_before]);
                fake.landed_before = 0;
            }
            if start != held.len() {
                return error(409, "upload_offset", "the chunk does not start where the upload stands");
            }
            held.extend_from_slice(&body);
            if held.len() == total {
                if fake.spoil > 0 || sha256_hex(held) != digest {
                    fake.spoil = fake.spoil.saturating_sub(1);
                    held.clear();
                    return error(422, "photo_digest_mismatch", "the bytes do not match the digest");
                }
                if fake.finishing > 0 {
                    fake.unfinished.push(key.clone());
                } else {
                    fake.complete.push(key.clone());
                }
            }
        } else {
            fake.gets += 1;
            if fake.unfinished.contains(&key) {
                fake.finishing = fake.finishing.saturating_sub(1);
                if fake.finishing == 0 {
                    fake.unfinished.retain(|unfinished| *unfinished != key);
                    fake.complete.push(key.clone());
                }
            }
        }
        let received = fake.received.get(&key).map_or(0, Vec::len) as u64;
        let upload = PhotoUpload { digest, received, complete: fake.complete.contains(&key) };
        (200, serde_json::to_string(&upload).expect("json"))
    }

    /// A store logged in against `server`, holding one confirmation of
    /// delivery 1 with a photo of `size` bytes; the server took the
    /// confirmation, so the photo is the next to go.
    fn holding_a_photo(server: &str, size: usize) -> (tempfile::TempDir, LocalStore, Photo) {
        let (dir, store, photo, captured) = holding_a_queued_photo(server, size);
        store.settle(&captured.confirmation_id).expect("accepted");
        (dir, store, photo)
    }

    /// A store logged in against `server`, holding one confirmation of
    /// delivery 1, still queued, with a photo of `size` bytes.
    fn holding_a_queued_photo(server: &str, size: usize) -> (tempfile::TempDir, LocalStore, Photo, Confirmation) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open");
        store
            .save_session(&Session {
                servers: vec![server.to_owned()],
                ca: None,
                username: Username::parse("exp1").expect("name"),
                device_id: DeviceId::parse("hh-1").expect("id"),
                access_token: "t".into(),
                refresh_token: "r".into(),
            })
            .expect("saved");
        let bytes: Vec<u8> =
            [0xFF, 0xD8, 0xFF, 0xE0].into_iter().chain((0..size - 4).map(|n| (n % 251) as u8)).collect();
        let photo = Photo::new(bytes).expect("a JPEG");
        let captured = Confirmation { photo_digest: Some(photo.digest().to_owned()), ..confirmation(1) };
        store.enqueue(&captured, Some(&photo)).expect("queued");
        (dir, store, photo, captured)
    }

    fn upload(store: &LocalStore) -> Result<SyncReport, SyncError> {
        let options = SyncOptions { attempts: 1, timeout: Duration::from_secs(5), ..SyncOptions::default() };
        let (mut session, client) = connect(store, &options)?;
        let mut report = SyncReport::default();
        upload_photos(store, &mut session, &client, &options, &mut report)?;
        Ok(report)
    }

    fn key(photo: &Photo) -> String {
        format!("D-000001/{}", photo.digest())
    }

    #[test]
    fn a_photo_goes_up_in_chunks_and_leaves_the_handheld_once_complete() {
        let server = FakeServer::start(Fake::default());
        let (_dir, store, photo) = holding_a_photo(&server.url, 600_000);

        let report = upload(&store).expect("uploaded");

        assert_eq!((report.photos_uploaded, report.photos_waiting), (1, 0));
        assert_eq!(
            server.saw(|fake| fake.ranges.clone()),
            ["bytes 0-262143/600000", "bytes 262144-524287/600000", "bytes 524288-599999/600000"]
        );
        assert_eq!(server.saw(|fake| fake.received.get(&key(&photo)).cloned()).as_deref(), Some(photo.bytes()));
        assert!(store.photo(photo.digest()).expect("read").is_none(), "the bytes left once the server had them");
        assert!(store.photos_waiting().expect("read").is_empty());
    }

    #[test]
    fn an_upload_cut_short_resumes_where_the_server_stands() {
        let (_dir, store, photo) = holding_a_photo("http://127.0.0.1:9", 300_000);
        // The agent was killed after the server took 1000 bytes.
        let mut fake = Fake::default();
        fake.received.insert(key(&photo), photo.bytes()[..1000].to_vec());
        let server = FakeServer::start(fake);
        let mut session = store.session().expect("a session");
        session.servers = vec![server.url.clone()];
        store.save_session(&session).expect("saved");

        let report = upload(&store).expect("uploaded");

        assert_eq!(report.photos_uploaded, 1);
        assert_eq!(server.saw(|fake| fake.ranges.clone()), ["bytes 1000-263143/300000", "bytes 263144-299999/300000"]);
        assert_eq!(server.saw(|fake| fake.received.get(&key(&photo)).cloned()).as_deref(), Some(photo.bytes()));
    }

    #[test]
    fn a_chunk_sent_behind_the_upload_asks_where_it_stands_and_goes_on_from_there() {
        let server = FakeServer::start(Fake { landed_before: 400, ..Fake::default() });
        let (_dir, store, photo) = holding_a_photo(&server.url, 1000);

        assert_eq!(upload(&store).expect("uploaded").photos_uploaded, 1);

        assert_eq!(server.saw(|fake| fake.ranges.clone()), ["bytes 0-999/1000", "bytes 400-999/1000"]);
        assert_eq!(server.saw(|fake| fake.received.get(&key(&photo)).cloned()).as_deref(), Some(photo.bytes()));
    }

    #[test]
    fn a_digest_mismatch_starts_the_upload_again_once_and_then_keeps_the_photo() {
        let server = FakeServer::start(Fake { spoil: 1, ..Fake::default() });
        let (_dir, store, _photo) = holding_a_photo(&server.url, 1000);
        assert_eq!(upload(&store).expect("uploaded").photos_uploaded, 1, "the second try from 0 went through");
        assert_eq!(server.saw(|fake| fake.ranges.clone()), ["bytes 0-999/1000", "bytes 0-999/1000"]);

        let server = FakeServer::start(Fake { spoil: 2, ..Fake::default() });
        let (_dir, store, photo) = holding_a_photo(&server.url, 1000);
        let report = upload(&store).expect("no error: the photo waits");
        assert_eq!((report.photos_uploaded, report.photos_waiting, report.photo_problems.len()), (0, 1, 1));
        assert!(report.photo_problems[0].contains("photo_digest_mismatch"), "{:?}", report.photo_problems);
        assert!(store.photo(photo.digest()).expect("read").is_some(), "kept for the next sync");
        let waiting = store.photos_waiting().expect("read");
        assert!(waiting[0].problem.as_deref().is_some_and(|why| why.contains("twice")), "{waiting:?}");
    }

    #[test]
    fn a_server_that_keeps_no_chunk_leaves_the_photo_waiting_instead_of_a_loop() {
        let server = FakeServer::start(Fake { drops_chunks: true, ..Fake::default() });
        let (_dir, store, photo) = holding_a_photo(&server.url, 1000);

        let report = upload(&store).expect("no error");

        assert_eq!((report.photos_waiting, report.photo_problems.len()), (1, 1));
        assert_eq!(server.saw(|fake| fake.ranges.len()), 1, "one chunk sent, then the photo waits");
        assert!(store.photo(photo.digest()).expect("read").is_some());
    }

    #[test]
    fn a_photo_the_server_will_never_take_is_dropped_with_why() {
        for (code, message) in [("not_found", "no such delivery for you"), ("invalid_photo", "not an image")] {
            let status = if code == "not_found" { 404 } else { 422 };
            let server = FakeServer::start(Fake { refuse: Some((status, code, message)), ..Fake::default() });
            let (_dir, store, photo) = holding_a_photo(&server.url, 1000);

            let report = upload(&store).expect("no error");

            assert_eq!((report.photos_dropped, report.photos_waiting), (1, 0), "{code}");
            assert!(store.photo(photo.digest()).expect("read").is_none());
            let dropped = store.dropped_photos().expect("read");
            assert_eq!((dropped[0].code.as_str(), dropped[0].message.as_str()), (code, message));
        }
    }

    #[test]
    fn a_server_without_photo_uploads_keeps_the_photo_for_later() {
        let server =
            FakeServer::start(Fake { refuse: Some((404, "not_found", "no such endpoint")), ..Fake::default() });
        let (_dir, store, photo) = holding_a_photo(&server.url, 1000);

        let report = upload(&store).expect("no error");

        assert_eq!((report.photos_dropped, report.photos_waiting), (0, 1));
        assert!(store.photo(photo.digest()).expect("read").is_some());
        assert!(store.dropped_photos().expect("read").is_empty());
    }

    #[test]
    fn without_a_server_the_upload_stops_and_loses_nothing() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let url = format!("http://{}", closed.local_addr().expect("an address"));
        drop(closed);
        let (_dir, store, photo) = holding_a_photo(&url, 1000);

        let stopped = upload(&store).expect_err("offline");

        assert!(matches!(stopped, SyncError::Offline { .. }), "{stopped}");
        assert!(stopped.to_string().contains("1 photo(s) wait to upload"), "{stopped}");
        assert!(store.photo(photo.digest()).expect("read").is_some());
        assert_eq!(store.photos_waiting().expect("read").len(), 1);
    }

    #[test]
    fn a_photo_the_server_already_holds_whole_is_let_go_without_sending_it_again() {
        let (_dir, store, photo) = holding_a_photo("http://127.0.0.1:9", 1000);
        let mut fake = Fake::default();
        fake.received.insert(key(&photo), photo.bytes().to_vec());
        fake.complete.push(key(&photo));
        let server = FakeServer::start(fake);
        let mut session = store.session().expect("a session");
        session.servers = vec![server.url.clone()];
        store.save_session(&session).expect("saved");

        assert_eq!(upload(&store).expect("uploaded").photos_uploaded, 1);
        assert!(server.saw(|fake| fake.ranges.is_empty()), "nothing sent again");
        assert!(store.photo(photo.digest()).expect("read").is_none());
    }

    fn sync_once(store: &LocalStore, batch_size: usize) -> Result<SyncReport, SyncError> {
        let options =
            SyncOptions { attempts: 1, batch_size, timeout: Duration::from_secs(5), ..SyncOptions::default() };
        sync(store, &options)
    }

    #[test]
    fn a_refused_signature_keeps_the_confirmation_queued_and_stops_the_push_until_a_login() {
        let server = FakeServer::start(Fake { push_code: Some("bad_signature"), ..Fake::default() });
        let (_dir, store, photo, refused) = holding_a_queued_photo(&server.url, 1000);
        let later = confirmation(2);
        store.enqueue(&later, None).expect("queued");

        let report = sync_once(&store, 1).expect("a report");

        let said = report.signature_refused.as_ref().expect("the report says so");
        assert_eq!(
            (said.confirmation_id.as_str(), said.device_id.as_str()),
            (refused.confirmation_id.as_str(), "hh-1")
        );
        assert_eq!((report.rejected, report.queued), (0, 2));
        assert_eq!(server.saw(|fake| fake.pushes.clone()), [vec![refused.confirmation_id.clone()]], "then it stopped");
        assert!(store.rejected().expect("read").is_empty(), "not final");
        assert!(store.queued_confirmation(&refused.confirmation_id).expect("read").is_some());
        assert_eq!(store.captured_for(&refused.delivery_id, 1).expect("read"), Some(refused.confirmation_id.clone()));
        assert!(store.photo(photo.digest()).expect("read").is_some(), "its photo stays");
        assert!(store.dropped_photos().expect("read").is_empty());
        assert_eq!(server.saw(|fake| fake.gets), 0, "no upload for a photo whose confirmation waits");
        assert_eq!(store.signature_refused().expect("read").as_ref(), Some(said));

        // Logged in again (the key registered), the next sync sends it again.
        store.complete_login(&store.session().expect("a session"), None).expect("logged in");
        assert_eq!(store.signature_refused().expect("read"), None);
        server.state.lock().unwrap_or_else(PoisonError::into_inner).push_code = None;
        let report = sync_once(&store, 1).expect("a report");
        assert_eq!((report.accepted, report.queued, report.photos_uploaded), (2, 0, 1));
        assert!(report.signature_refused.is_none());
    }

    #[test]
    fn another_refusal_stays_final() {
        let server = FakeServer::start(Fake { push_code: Some("not_assignee"), ..Fake::default() });
        let (_dir, store, photo, refused) = holding_a_queued_photo(&server.url, 1000);

        let report = sync_once(&store, 1).expect("a report");

        assert_eq!((report.rejected, report.queued, report.signature_refused.is_none()), (1, 0, true));
        assert_eq!(
            store.rejection(&refused.confirmation_id).expect("read").map(|r| r.code),
            Some("not_assignee".into())
        );
        assert!(store.photo(photo.digest()).expect("read").is_none(), "dropped with its confirmation");
    }

    #[test]
    fn a_photo_whose_confirmation_is_still_queued_is_not_tried() {
        let server =
            FakeServer::start(Fake { refuse: Some((404, "not_found", "no such delivery")), ..Fake::default() });
        let (_dir, store, photo, _queued) = holding_a_queued_photo(&server.url, 1000);

        let report = upload(&store).expect("no error");

        assert_eq!((report.photos_dropped, report.photos_waiting), (0, 1));
        assert_eq!(server.saw(|fake| fake.gets), 0, "the server was not asked");
        assert!(store.photo(photo.digest()).expect("read").is_some(), "kept for after its confirmation");
        assert!(store.dropped_photos().expect("read").is_empty());
    }

    #[test]
    fn an_upload_the_server_is_finishing_is_asked_about_once_more_then_left_for_the_next_sync() {
        let server = FakeServer::start(Fake { finishing: 1, ..Fake::default() });
        let (_dir, store, photo) = holding_a_photo(&server.url, 1000);
        assert_eq!(upload(&store).expect("uploaded").photos_uploaded, 1, "finished by the second look");
        assert!(store.photo(photo.digest()).expect("read").is_none());

        let server = FakeServer::start(Fake { finishing: 10, ..Fake::default() });
        let (_dir, store, photo) = holding_a_photo(&server.url, 1000);
        let report = upload(&store).expect("no error: the photo waits");
        assert_eq!((report.photos_uploaded, report.photos_dropped, report.photos_waiting), (0, 0, 1));
        assert_eq!(server.saw(|fake| (fake.ranges.len(), fake.gets)), (1, 2), "sent once, asked twice, no loop");
        assert!(report.photo_problems[0].contains("has not finished the upload yet"), "{:?}", report.photo_problems);
        assert!(store.photo(photo.digest()).expect("read").is_some());

        // The next sync finds it finished.
        server.state.lock().unwrap_or_else(PoisonError::into_inner).finishing = 0;
        assert_eq!(upload(&store).expect("uploaded").photos_uploaded, 1);
        assert_eq!(server.saw(|fake| fake.ranges.len()), 1, "nothing sent again");
    }

    #[test]
    fn the_next_chunk_starts_where_the_server_stands_and_stops_at_the_end() {
        let bytes = vec![0u8; PHOTO_CHUNK + 10];
        let at = |received| PhotoUpload { digest: String::new(), received, complete: false };
        assert_eq!(next_chunk(&bytes, &at(0)).map(<[u8]>::len), Some(PHOTO_CHUNK));
        assert_eq!(next_chunk(&bytes, &at(PHOTO_CHUNK as u64)).map(<[u8]>::len), Some(10));
        assert_eq!(next_chunk(&bytes, &at(bytes.len() as u64)), None);
        assert_eq!(next_chunk(&bytes, &at(u64::MAX)), None);
    }
}
