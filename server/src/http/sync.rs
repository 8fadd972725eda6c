//! The sync endpoints that the handheld agent calls.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use actix_web::{web, HttpResponse};
use handover_shared::{
    proof::SignedRecord,
    sync::{
        Assignment, AssignmentChanges, AssignmentStatus, Confirmation, ConfirmationResult, ConfirmationResults,
        ResultStatus, MAX_BATCH,
    },
    DeliveryId, DeviceId, ErrorCode,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    error::ApiError,
    extract::{Auth, Courier},
    AppState,
};
use crate::{
    domain::{
        chain::SignatureCheck,
        confirmations::{DeviceSync, PushOutcome, Pushed, Unreadable},
        shipments::DeliveryStatus,
    },
    store::FeedEntry,
};

/// A continued first pull: it still lists only what there is to do.
const FIRST_PULL: &str = "first:";

/// A device's pulls are recorded at most this often (see [`RecentPulls`]).
const PULL_RECORD_INTERVAL: Duration = Duration::from_secs(30);

/// When each device's last recorded pull was. Handhelds pull every few seconds
/// and the dashboard shows the last sync to the minute: recording every pull
/// would turn a read into a write (and into sled's segment cleaning, which
/// rides on writes) for nothing. Pushes are always recorded, with their batch.
#[derive(Debug, Default)]
pub struct RecentPulls {
    recorded: Mutex<HashMap<DeviceId, Instant>>,
}

impl RecentPulls {
    /// Whether a pull by `device` at `now` is to be recorded; if so, notes it.
    pub fn due(&self, device: &DeviceId, now: Instant) -> bool {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        match recorded.get(device) {
            Some(at) if now.saturating_duration_since(*at) < PULL_RECORD_INTERVAL => false,
            _ => {
                recorded.insert(device.clone(), now);
                true
            }
        }
    }
}

/// Pushes each device may make per minute: a handheld pushing refusals by
/// the thousand is held to a pace, and so is what it costs the store.
pub struct PushLimits(governor::DefaultKeyedRateLimiter<DeviceId>);

impl PushLimits {
    pub fn per_minute(pushes: u32) -> Self {
        let quota = governor::Quota::per_minute(std::num::NonZeroU32::new(pushes).unwrap_or(std::num::NonZeroU32::MIN));
        PushLimits(governor::RateLimiter::keyed(quota))
    }

    /// Refused (with how long to wait) when `device` pushed too often.
    fn check(&self, device: &DeviceId) -> Result<(), ApiError> {
        use governor::clock::Clock as _;
        self.0.check_key(device).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ApiError::TooManyPushes { retry_after_secs: wait.as_secs().max(1) }
        })
    }

    /// Forgets devices that have recovered, so memory stays bounded.
    pub fn prune(&self) {
        self.0.retain_recent();
    }
}

impl std::fmt::Debug for PushLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushLimits").finish_non_exhaustive()
    }
}

type State = web::Data<AppState>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// The `cursor` of the previous pull; absent for the first one.
    since: Option<String>,
}

/// `GET /api/v1/sync/assignments?since=CURSOR`: the courier's assignments that
/// changed since its last pull. The first pull lists what the courier holds now;
/// later ones also say which deliveries went to someone else.
pub async fn assignments(
    state: State,
    caller: Auth<Courier>,
    query: web::Query<Since>,
) -> Result<HttpResponse, ApiError> {
    let (cursor, first) = match query.since.as_deref() {
        None | Some("") => (0, true),
        Some(raw) => {
            let (number, first) = match raw.strip_prefix(FIRST_PULL) {
                Some(rest) => (rest, true),
                None => (raw, false),
            };
            let cursor = number.parse::<u64>().map_err(|_| {
                ApiError::refused(
                    ErrorCode::InvalidQuery,
                    format!("since must be the cursor of a previous pull, not {raw:?}"),
                )
            })?;
            (cursor, first)
        }
    };
    let store = state.store.as_ref();
    let page = usize::try_from(state.settings.limits.pull_page_changes).unwrap_or(usize::MAX);
    let (entries, last, more) = store.assignment_changes(&caller.username, cursor, page).await?;
    if state.recent_pulls.due(&caller.device_id, Instant::now()) {
        store
            .record_sync(DeviceSync {
                device_id: caller.device_id.clone(),
                username: caller.username.clone(),
                last_sync_at: time::OffsetDateTime::now_utc(),
                reported_queued: None,
                queued_since: None,
            })
            .await?;
    }
    let mut assignments = Vec::with_capacity(entries.len());
    for FeedEntry { delivery, customer_name, item_name, empties_expected } in entries {
        let mine = delivery.assignee.as_ref() == Some(&caller.username);
        let status = if mine {
            match delivery.status() {
                DeliveryStatus::Upcoming => AssignmentStatus::Upcoming,
                DeliveryStatus::Ready => AssignmentStatus::Ready,
                DeliveryStatus::Delivered => AssignmentStatus::Delivered,
                DeliveryStatus::Cancelled => AssignmentStatus::Cancelled,
            }
        } else {
            AssignmentStatus::ReassignedAway
        };
        // A first pull (all its pages) lists only what there is to do.
        if first && !matches!(status, AssignmentStatus::Upcoming | AssignmentStatus::Ready) {
            continue;
        }
        assignments.push(Assignment {
            pickup_node: delivery.delivering_node().clone(),
            handover_code_hash: delivery.handover_code_hash,
            customer_name,
            item_name,
            delivery_id: delivery.delivery_id,
            version: delivery.version,
            status,
            receipt_id: delivery.receipt_id,
            customer_id: delivery.customer_id,
            item_id: delivery.item_id,
            quantity: delivery.quantity,
            empties_expected,
        });
    }
    let cursor = if first && more { format!("{FIRST_PULL}{last}") } else { last.to_string() };
    Ok(HttpResponse::Ok().json(AssignmentChanges { cursor, assignments, more }))
}

/// A pushed batch as it arrives: its confirmations are read one by one, so
/// that a malformed one is answered on its own and the rest still apply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushedBatch {
    device_id: DeviceId,
    confirmations: Vec<serde_json::Value>,
    /// See [`handover_shared::sync::ConfirmationBatch::queued`].
    #[serde(default)]
    queued: Option<u64>,
}

/// The body as a batch: a JSON object (serde would also take an array for a
/// struct, by position), with `device_id` and a `confirmations` list.
fn read_batch(body: serde_json::Value) -> Result<PushedBatch, ApiError> {
    let refused = |why: String| ApiError::refused(ErrorCode::InvalidJson, why);
    if !body.is_object() {
        return Err(refused(
            "the body is not valid for this endpoint: an object with device_id and confirmations is expected".into(),
        ));
    }
    serde_json::from_value(body).map_err(|err| refused(format!("the body is not valid for this endpoint: {err}")))
}

/// Reads one element of `confirmations`; the refusal names the field at fault.
fn read_pushed(value: serde_json::Value) -> Pushed {
    let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    let confirmation_id = text("confirmation_id").unwrap_or_default();
    let delivery_id = text("delivery_id").and_then(|id| DeliveryId::parse(id).ok());
    let digest =
        Sha256::digest(serde_json::to_vec(&value).unwrap_or_default()).iter().map(|b| format!("{b:02x}")).collect();
    match serde_path_to_error::deserialize::<_, Confirmation>(value) {
        Ok(confirmation) => Pushed::Confirmation(confirmation, SignatureCheck::Unsigned),
        Err(err) => {
            let path = err.path().to_string();
            let message = if path == "." {
                format!("not a confirmation: {}", err.inner())
            } else {
                format!("{path}: {}", err.inner())
            };
            Pushed::Unreadable(Unreadable { confirmation_id, delivery_id, digest, message })
        }
    }
}

/// `POST /api/v1/sync/confirmations`: one result per confirmation, in order,
/// answered once everything accepted is durable. Each element is judged on
/// its own: a malformed one is `rejected` with code `invalid`, and its id
/// keeps that first outcome like any other.
pub async fn confirmations(
    state: State,
    caller: Auth<Courier>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    state.push_limits.check(&caller.device_id)?;
    let batch = read_batch(body.into_inner())?;
    if batch.device_id != caller.device_id {
        return Err(ApiError::refused(
            ErrorCode::DeviceMismatch,
            format!("this session belongs to device {}, not {}", caller.device_id, batch.device_id),
        ));
    }
    if batch.confirmations.len() > usize::from(MAX_BATCH) {
        return Err(ApiError::refused(
            ErrorCode::BatchTooLarge,
            format!("send at most {MAX_BATCH} confirmations per batch"),
        ));
    }
    let answered = batch.confirmations.len();
    let mut pushed: Vec<Pushed> = batch.confirmations.into_iter().map(read_pushed).collect();
    let key = state.store.device_chain(&caller.device_id).await?.map(|chain| chain.public_key);
    check_signatures(key, &caller.device_id, &mut pushed).await?;
    let ids: Vec<String> = pushed.iter().map(|element| element.confirmation_id().to_owned()).collect();
    let sync = DeviceSync {
        device_id: caller.device_id.clone(),
        username: caller.username.clone(),
        last_sync_at: time::OffsetDateTime::now_utc(),
        reported_queued: DeviceSync::left_after_push(batch.queued, answered),
        queued_since: None,
    };
    let signatures = drawn_signatures(&pushed);
    let outcomes = state.store.push_confirmations(sync, pushed).await?;
    // Kept before the answer: a confirmation the handheld is told it may drop
    // has its drawn signature on the server (a retry after a crash here
    // answers `duplicate` and stores it then).
    for ((digest, png), outcome) in signatures.into_iter().zip(&outcomes) {
        if let (Some(digest), PushOutcome::Accepted | PushOutcome::Duplicate) = (digest, outcome) {
            state.store.images().put(&digest, png).await?;
        }
    }
    handover_shared::failpoint!(
        "push.after_flush",
        ApiError::from(crate::store::StoreError::Backend("failpoint push.after_flush".into()))
    );
    let results =
        ids.into_iter().zip(outcomes).map(|(confirmation_id, outcome)| result(confirmation_id, outcome)).collect();
    tracing::info!(username = %caller.username, device_id = %caller.device_id, "confirmations pushed");
    Ok(HttpResponse::Ok().json(ConfirmationResults { results }))
}

/// Each element's drawn signature as PNG bytes, by digest (`None` for none).
fn drawn_signatures(pushed: &[Pushed]) -> Vec<(Option<String>, Vec<u8>)> {
    pushed
        .iter()
        .map(|element| match element {
            Pushed::Confirmation(confirmation, _) => {
                match confirmation.signature.as_deref().map(handover_shared::proof::signature_png) {
                    Some(Ok(png)) => (Some(handover_shared::proof::sha256_hex(&png)), png),
                    _ => (None, Vec::new()),
                }
            }
            Pushed::Unreadable(_) => (None, Vec::new()),
        })
        .collect()
}

/// Signed confirmations verified together: one batch verification per
/// thread (falling back to one by one to find a bad one).
const VERIFY_CHUNK: usize = 64;

/// Verifies the device signatures of a batch before it queues for the
/// store's one-at-a-time transaction: in parallel, off the request threads,
/// in batches. Each confirmation's check goes with it; the domain decides in
/// the transaction what an unsigned or badly signed one means for its device.
async fn check_signatures(key: Option<String>, device: &DeviceId, pushed: &mut [Pushed]) -> Result<(), ApiError> {
    let mut signed = Vec::new();
    for (index, element) in pushed.iter_mut().enumerate() {
        let Pushed::Confirmation(confirmation, check) = element else { continue };
        *check = match (confirmation.device_signature.as_deref(), &key) {
            (None, _) => SignatureCheck::Unsigned,
            (Some(_), None) => SignatureCheck::Bad(format!("device {device} registered no key")),
            (Some(signature), Some(_)) => match SignedRecord::of(confirmation, device) {
                Err(why) => SignatureCheck::Bad(why.to_string()),
                Ok(record) => {
                    signed.push((index, record.text(), signature.to_owned()));
                    continue;
                }
            },
        };
    }
    let Some(key) = key.filter(|_| !signed.is_empty()) else { return Ok(()) };
    let verifier = handover_shared::proof::public_key(&key).ok();
    let mut checks = Vec::new();
    for chunk in signed.chunks(VERIFY_CHUNK) {
        let (chunk, verifier, key) = (chunk.to_vec(), verifier, key.clone());
        checks.push(tokio::task::spawn_blocking(move || verify_chunk(verifier, &key, chunk)));
    }
    for check in checks {
        for (index, verdict) in check.await.map_err(|err| ApiError::Internal(err.to_string()))? {
            if let Some(Pushed::Confirmation(_, check)) = pushed.get_mut(index) {
                *check = verdict;
            }
        }
    }
    Ok(())
}

/// One batch verification for the chunk; when it fails, each signature on
/// its own, so that only the bad ones are refused.
fn verify_chunk(
    verifier: Option<ed25519_dalek::VerifyingKey>,
    key: &str,
    chunk: Vec<(usize, String, String)>,
) -> Vec<(usize, SignatureCheck)> {
    let verified =
        |record: String, signature: String| SignatureCheck::Verified { key: key.to_owned(), record, signature };
    let parsed: Option<Vec<ed25519_dalek::Signature>> =
        chunk.iter().map(|(_, _, signature)| handover_shared::proof::signature(signature).ok()).collect();
    if let (Some(verifier), Some(signatures)) = (verifier, parsed) {
        let messages: Vec<&[u8]> = chunk.iter().map(|(_, record, _)| record.as_bytes()).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &vec![verifier; chunk.len()]).is_ok() {
            return chunk.into_iter().map(|(index, record, signature)| (index, verified(record, signature))).collect();
        }
    }
    chunk
        .into_iter()
        .map(|(index, record, signature)| {
            let verdict = match handover_shared::proof::verify(key, &record, &signature) {
                Ok(()) => verified(record, signature),
                Err(why) => SignatureCheck::Bad(why),
            };
            (index, verdict)
        })
        .collect()
}

fn result(confirmation_id: String, outcome: PushOutcome) -> ConfirmationResult {
    match outcome {
        PushOutcome::Accepted => {
            ConfirmationResult { confirmation_id, status: ResultStatus::Accepted, code: None, message: None }
        }
        PushOutcome::Duplicate => {
            ConfirmationResult { confirmation_id, status: ResultStatus::Duplicate, code: None, message: None }
        }
        PushOutcome::Rejected { code, message } => ConfirmationResult {
            confirmation_id,
            status: ResultStatus::Rejected,
            code: Some(code.as_str().to_owned()),
            message: Some(message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_pull_is_recorded_at_most_once_per_interval() {
        let pulls = RecentPulls::default();
        let (phone, other) = (DeviceId::parse("phone-1").expect("an id"), DeviceId::parse("phone-2").expect("an id"));
        let start = Instant::now();
        assert!(pulls.due(&phone, start), "a first pull is recorded");
        assert!(!pulls.due(&phone, start + Duration::from_secs(5)), "one soon after is not");
        assert!(pulls.due(&other, start + Duration::from_secs(5)), "another device's is");
        assert!(pulls.due(&phone, start + PULL_RECORD_INTERVAL), "one an interval later is");
        assert!(!pulls.due(&phone, start + PULL_RECORD_INTERVAL + Duration::from_secs(1)));
    }
}
