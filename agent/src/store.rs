//! The handheld's local store (sled under `--data-dir`): the session, the
//! assignments as last pulled, the outbox of confirmations not yet accepted, the
//! rejected list and the sync cursor; the device key, the devices the server
//! registered it for, and their chains of signed confirmations; and the photos
//! waiting to upload. Every write the courier is told about is flushed before
//! the command returns.

use std::path::Path;

use anyhow::{bail, Context as _};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use handover_shared::{
    proof::{check_photo, sha256_hex, DeviceKey},
    sync::{Assignment, AssignmentStatus, Confirmation},
    DeliveryId, DeviceId, Username,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::{
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
    Transactional as _,
};

use crate::chain::ChainState;

/// Who is logged in on this handheld, and where the server is.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    /// Every address of the server, tried in turn; a session saved by an
    /// agent that knew one address (`"server": URL`) reads as a list of one.
    #[serde(alias = "server", deserialize_with = "one_or_many")]
    pub servers: Vec<String>,
    pub ca: Option<String>,
    pub username: Username,
    pub device_id: DeviceId,
    pub access_token: String,
    pub refresh_token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("servers", &self.servers)
            .field("username", &self.username)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(server) => vec![server],
        OneOrMany::Many(servers) => servers,
    })
}

/// A confirmation the server refused, kept for the courier to see.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejected {
    pub confirmation: Confirmation,
    pub code: String,
    pub message: String,
}

/// A photo fit to keep and upload: a JPEG, PNG or WebP image (known by its
/// bytes, never by a file name) within the size limit, with its digest.
/// Once one exists it is valid: the command line and the page make theirs
/// here, so both refuse the same files.
#[derive(Clone, PartialEq, Eq)]
pub struct Photo {
    digest: String,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Photo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Photo").field("digest", &self.digest).field("bytes", &self.bytes.len()).finish()
    }
}

impl Photo {
    pub fn new(bytes: Vec<u8>) -> Result<Photo, String> {
        check_photo(&bytes)?;
        Ok(Photo { digest: sha256_hex(&bytes), bytes })
    }

    /// SHA-256 (hex): the photo's key in the store and its name on the server.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Who waits for a photo's upload: the confirmation that carries its digest
/// and the delivery the server files it under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PhotoOwner {
    confirmation_id: String,
    delivery_id: DeliveryId,
}

/// What the store knows of a photo whose bytes it keeps: the bytes stay
/// until no owner is left.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PhotoRecord {
    owners: Vec<PhotoOwner>,
    size: u64,
    /// Why the last upload stopped short, for `status`; it goes with the
    /// record once the upload completes.
    #[serde(default)]
    problem: Option<String>,
}

/// A photo to upload for one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingPhoto {
    pub delivery_id: DeliveryId,
    pub digest: String,
    pub size: u64,
    /// Why the last upload stopped short, if it did.
    pub problem: Option<String>,
    /// No confirmation carrying it has been taken by the server yet (each
    /// still waits in the outbox). The server files a photo only under an
    /// attempt it holds, so the upload waits for the confirmation: tried
    /// now, it would be refused as unknown and dropped.
    pub waits_for_confirmation: bool,
}

/// A photo the server will never take (or whose confirmation it refused):
/// its bytes are gone, this says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedPhoto {
    pub delivery_id: DeliveryId,
    pub digest: String,
    pub code: String,
    pub message: String,
}

/// The device key's secret as kept (owner-only, like the session's tokens).
#[derive(Serialize, Deserialize)]
struct StoredDeviceKey {
    /// The 32 secret bytes, base64.
    secret: String,
}

fn read_device_key(raw: &[u8]) -> anyhow::Result<DeviceKey> {
    let stored: StoredDeviceKey = decode(raw)?;
    let secret: [u8; 32] = STANDARD
        .decode(stored.secret)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .context("the stored device key is not 32 bytes of base64")?;
    Ok(DeviceKey::from_secret(secret))
}

const SESSION: &str = "session";
/// The handheld's one key. Kept before the login that sends it, so that a
/// login whose answer is lost retries with the same key; it signs nothing
/// until the server is known to have registered it (see [`RegisteredKey`]).
const DEVICE_KEY: &str = "device_key";
/// The last `bad_signature` answer, until a login completes.
const SIGNATURE_REFUSED: &str = "signature_refused";

/// Where it is noted, in `meta`, that the server registered this handheld's
/// key for `device`.
fn registered_key_key(device: &DeviceId) -> String {
    format!("key_registered/{device}")
}

/// The server registered this handheld's key for a device: noted by the
/// login whose answer said so, in the transaction that saves its session.
/// Until then the key is pending: a confirmation signed with a key the
/// server does not hold would be refused (`bad_signature`).
#[derive(Serialize, Deserialize)]
struct RegisteredKey {
    /// The public key registered (base64), the one this store's key must have.
    public_key: String,
}

/// The server refused a confirmation's signature (`bad_signature`). It
/// does not remember that answer, so the confirmation stays queued; this
/// says why until a login completes (which registers the key, or signs what
/// was queued unsigned) and the next sync sends it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRefused {
    pub device_id: DeviceId,
    pub confirmation_id: String,
    /// The server's words.
    pub message: String,
}

impl std::fmt::Display for SignatureRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server refused this handheld's signature: log in again (`handover-agent login`), then sync; the \
             confirmations stay queued (device {}, confirmation {}: {})",
            self.device_id, self.confirmation_id, self.message
        )
    }
}

/// A login under another device id while confirmations signed as the
/// current one wait: the server would file them under the new id, whose
/// chain they are not part of, and refuse them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{count} confirmation(s) signed as device {device} still wait; sync them first, or log in as {device}")]
pub struct SignedAsAnotherDevice {
    pub count: usize,
    pub device: DeviceId,
}

/// Where the chain of `device` stands, in `meta`.
fn chain_key(device: &DeviceId) -> String {
    format!("chain/{device}")
}

fn dropped_key(delivery: &DeliveryId, digest: &str) -> String {
    format!("{delivery}/{digest}")
}

/// What a transaction returns; an abort carries why, in words.
type Tx<T> = Result<T, ConflictableTransactionError<String>>;

fn aborted(err: anyhow::Error) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(format!("{err:#}"))
}

/// The error of a transaction that did not commit, saying what it was for.
fn not_committed(what: &'static str) -> impl FnOnce(TransactionError<String>) -> anyhow::Error {
    move |err| match err {
        TransactionError::Abort(why) => anyhow::anyhow!("{what}: {why}"),
        TransactionError::Storage(err) => anyhow::anyhow!("{what}: {err}"),
    }
}

fn read_or_default<T: DeserializeOwned + Default>(tree: &TransactionalTree, key: &[u8]) -> Tx<T> {
    match tree.get(key)? {
        Some(raw) => decode(&raw).map_err(aborted),
        None => Ok(T::default()),
    }
}

/// The key to sign as `device` with: this store's key, once the server has
/// registered it for `device`; `None` while it is pending, or was never made.
fn registered_key(meta: &TransactionalTree, device: &DeviceId) -> Tx<Option<DeviceKey>> {
    let Some(raw_registered) = meta.get(registered_key_key(device).as_bytes())? else {
        return Ok(None);
    };
    let registered: RegisteredKey = decode(&raw_registered).map_err(aborted)?;
    let Some(raw_key) = meta.get(DEVICE_KEY)? else {
        return Ok(None);
    };
    let key = read_device_key(&raw_key).map_err(aborted)?;
    // A key is never replaced, so this holds; should it not, an unsigned
    // confirmation is refused by the server and kept, a wrongly signed one
    // would be too, and is not worth making.
    Ok((key.public_key() == registered.public_key).then_some(key))
}

/// `confirmation` as it is kept: once the server has registered this
/// handheld's key for the session's device, signed as the next record of
/// that device's chain (and the chain moved on in `meta`); as it came
/// otherwise (no session yet, a key still pending, a store from before
/// device keys), which the server takes from a device with no key.
fn sign_if_keyed(meta: &TransactionalTree, confirmation: &Confirmation) -> Tx<Confirmation> {
    let Some(raw_session) = meta.get(SESSION)? else {
        return Ok(confirmation.clone());
    };
    let device = decode::<Session>(&raw_session).map_err(aborted)?.device_id;
    let Some(key) = registered_key(meta, &device)? else {
        return Ok(confirmation.clone());
    };
    let chain_key = chain_key(&device);
    let chain = match meta.get(chain_key.as_bytes())? {
        Some(raw) => decode(&raw).map_err(aborted)?,
        None => ChainState::start(),
    };
    let (signed, next) = chain
        .sign_next(confirmation, &key, &device)
        .map_err(|err| ConflictableTransactionError::Abort(format!("the confirmation cannot be signed: {err}")))?;
    meta.insert(chain_key.as_bytes(), encode(&next).map_err(aborted)?)?;
    Ok(signed)
}

/// Keeps `photo`'s bytes (once, whoever else holds the same photo) and adds
/// `owner` to those waiting for its upload.
fn hold_photo(photos: &TransactionalTree, owners: &TransactionalTree, photo: &Photo, owner: PhotoOwner) -> Tx<()> {
    let digest = photo.digest.as_bytes();
    if photos.get(digest)?.is_none() {
        photos.insert(digest, photo.bytes.as_slice())?;
    }
    let mut record: PhotoRecord = read_or_default(owners, digest)?;
    record.size = photo.bytes.len() as u64;
    if !record.owners.contains(&owner) {
        record.owners.push(owner);
    }
    owners.insert(digest, encode(&record).map_err(aborted)?)?;
    Ok(())
}

/// Lets go of the owners that `gone` picks; the bytes go with the last owner.
/// Returns whether any owner was let go.
fn release_photo(
    photos: &TransactionalTree,
    owners: &TransactionalTree,
    digest: &str,
    gone: impl Fn(&PhotoOwner) -> bool,
) -> Tx<bool> {
    let Some(raw) = owners.get(digest.as_bytes())? else {
        return Ok(false);
    };
    let mut record: PhotoRecord = decode(&raw).map_err(aborted)?;
    let before = record.owners.len();
    record.owners.retain(|owner| !gone(owner));
    if record.owners.is_empty() {
        owners.remove(digest.as_bytes())?;
        photos.remove(digest.as_bytes())?;
    } else {
        owners.insert(digest.as_bytes(), encode(&record).map_err(aborted)?)?;
    }
    Ok(record.owners.len() != before)
}

#[derive(Debug, Clone)]
pub struct LocalStore {
    db: sled::Db,
    meta: sled::Tree,
    assignments: sled::Tree,
    /// UUIDv7 confirmation id (time-ordered) to [`Confirmation`].
    outbox: sled::Tree,
    rejected: sled::Tree,
    /// `DELIVERY_ID@VERSION` to the confirmation id captured under that
    /// assignment version on this device: one capture per version, so a delivery
    /// that failed and came back (a new version) can be captured again.
    captured: sled::Tree,
    /// Photo digest to the photo's bytes: content-addressed, so a photo
    /// attached twice is kept once.
    photos: sled::Tree,
    /// Photo digest to its [`PhotoRecord`]: who waits for its upload.
    photo_owners: sled::Tree,
    /// `DELIVERY_ID/DIGEST` to a [`DroppedPhoto`].
    dropped_photos: sled::Tree,
}

/// sled's page cache for the handheld's store.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// What became of a save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    Saved,
    /// This very confirmation was saved before (a form sent twice).
    AlreadySaved,
    /// Another confirmation holds this assignment version: its id.
    Taken(String),
}

fn captured_key(id: &DeliveryId, version: u64) -> String {
    format!("{id}@{version}")
}

fn encode<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).context("a local record is unreadable")
}

/// Another process holds the store: sled lets one process open it.
#[derive(Debug, thiserror::Error)]
#[error("{dir} is in use by another handover-agent (a daemon?)")]
pub struct StoreInUse {
    pub dir: String,
}

impl LocalStore {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // A handheld's store is small: a small page cache keeps the agent light
        // (sled's default is 1 GiB, and its memory grows with what it reads).
        let db =
            sled::Config::new().path(dir.join("agent.v1")).cache_capacity(CACHE_BYTES).open().map_err(
                |err| match err {
                    sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                        anyhow::Error::new(StoreInUse { dir: dir.display().to_string() })
                    }
                    other => anyhow::anyhow!("cannot open the local store in {}: {other}", dir.display()),
                },
            )?;
        // It holds the courier's tokens: the owner's only, whatever made it looser.
        let tightened = handover_shared::private::tighten(&[dir, &dir.join("daemon.json")], &[&dir.join("agent.v1")])
            .with_context(|| format!("making {} private", dir.display()))?;
        if !tightened.is_empty() {
            eprintln!(
                "handover-agent: {} was readable by other users; made it owner-only ({} entries)",
                dir.display(),
                tightened.len()
            );
        }
        Ok(Self {
            meta: db.open_tree("meta")?,
            assignments: db.open_tree("assignments")?,
            outbox: db.open_tree("outbox")?,
            rejected: db.open_tree("rejected")?,
            captured: db.open_tree("captured")?,
            photos: db.open_tree("photos")?,
            photo_owners: db.open_tree("photo_owners")?,
            dropped_photos: db.open_tree("dropped_photos")?,
            db,
        })
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.db.flush().context("flushing the local store")?;
        Ok(())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        self.meta.get(key)?.map(|bytes| decode(&bytes)).transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> anyhow::Result<()> {
        self.meta.insert(key, encode(value)?)?;
        Ok(())
    }

    pub fn session(&self) -> anyhow::Result<Session> {
        match self.get_meta(SESSION)? {
            Some(session) => Ok(session),
            None => bail!("not logged in on this handheld: run `handover-agent login` first"),
        }
    }

    pub fn save_session(&self, session: &Session) -> anyhow::Result<()> {
        self.put_meta(SESSION, session)?;
        self.flush()
    }

    /// The handheld's key, if it has one (made before its first login since
    /// device keys), whether or not the server registered it yet.
    pub fn device_key(&self) -> anyhow::Result<Option<DeviceKey>> {
        self.meta.get(DEVICE_KEY)?.map(|raw| read_device_key(&raw)).transpose()
    }

    /// The handheld's key, made from `new_secret` and kept durably if it has
    /// none yet. A key once kept is never replaced: a login whose answer was
    /// lost may have had it registered, and the next login sends it again.
    /// It stays pending, signing nothing, until [`LocalStore::complete_login`]
    /// notes that the server registered it.
    pub fn device_key_or_new(
        &self,
        new_secret: impl FnOnce() -> anyhow::Result<[u8; 32]>,
    ) -> anyhow::Result<DeviceKey> {
        if let Some(key) = self.device_key()? {
            return Ok(key);
        }
        let secret = new_secret()?;
        let record = encode(&StoredDeviceKey { secret: STANDARD.encode(secret) })?;
        // Should another key have been kept meanwhile, it stays and is the one returned.
        let _kept_first = self.meta.compare_and_swap(DEVICE_KEY, None as Option<&[u8]>, Some(record))?;
        self.flush()?;
        self.device_key()?.context("the device key just kept cannot be read back")
    }

    /// Whether confirmations captured now are signed: the session's device
    /// has this handheld's key registered with the server.
    pub fn signing(&self) -> anyhow::Result<bool> {
        let Ok(session) = self.session() else { return Ok(false) };
        self.meta
            .transaction(|meta| Ok(registered_key(meta, &session.device_id)?.is_some()))
            .map_err(not_committed("reading the device key failed"))
    }

    /// A login as `device` would strand confirmations signed as the current
    /// session's device (the server files a pushed confirmation under the
    /// session's device, whose chain it is not part of): how many, and as
    /// which device. `None` when the device stays the same, or nothing
    /// signed waits. Only this store's session signs, and it changes only
    /// through [`LocalStore::complete_login`], which refuses such a change:
    /// whatever is signed in the outbox was signed as the session's device.
    pub fn device_change_blocked(&self, device: &DeviceId) -> anyhow::Result<Option<SignedAsAnotherDevice>> {
        let Ok(current) = self.session() else { return Ok(None) };
        if current.device_id == *device {
            return Ok(None);
        }
        let mut count = 0;
        for value in self.outbox.iter().values() {
            if decode::<Confirmation>(&value?)?.is_signed() {
                count += 1;
            }
        }
        Ok((count > 0).then_some(SignedAsAnotherDevice { count, device: current.device_id }))
    }

    /// Keeps what a successful login answered, in one transaction: the
    /// session; that the server registered this handheld's key for the
    /// session's device (`registered_key`: the public key the login sent,
    /// `None` when the server keeps no key for this login); and the queued
    /// confirmations still unsigned signed into that device's chain, oldest
    /// first. A crash leaves either all of it or the store as before the
    /// login, never a registered key with unsigned confirmations queued
    /// (which the server refuses from a device with a key). The
    /// `bad_signature` noted by an earlier sync goes: the next sync sends
    /// those confirmations again. Refused, changing nothing, when
    /// confirmations signed as another device wait
    /// ([`SignedAsAnotherDevice`]). Returns how many confirmations it signed.
    pub fn complete_login(&self, session: &Session, registered_key: Option<&str>) -> anyhow::Result<usize> {
        if let Some(blocked) = self.device_change_blocked(&session.device_id)? {
            return Err(blocked.into());
        }
        let mut unsigned = Vec::new();
        for entry in self.outbox.iter() {
            let (key, value) = entry?;
            if !decode::<Confirmation>(&value)?.is_signed() {
                unsigned.push(key.to_vec());
            }
        }
        let session_record = encode(session)?;
        let registered = registered_key
            .map(|public_key| encode(&RegisteredKey { public_key: public_key.to_owned() }))
            .transpose()?;
        let registered_at = registered_key_key(&session.device_id);
        let signed = (&self.outbox, &self.meta)
            .transaction(|(outbox, meta)| {
                meta.insert(SESSION, session_record.as_slice())?;
                if let Some(record) = &registered {
                    meta.insert(registered_at.as_bytes(), record.as_slice())?;
                }
                meta.remove(SIGNATURE_REFUSED)?;
                let mut signed = 0;
                for key in &unsigned {
                    let Some(raw) = outbox.get(key.as_slice())? else { continue };
                    let confirmation: Confirmation = decode(&raw).map_err(aborted)?;
                    if confirmation.is_signed() {
                        continue;
                    }
                    let kept = sign_if_keyed(meta, &confirmation)?;
                    if kept.is_signed() {
                        outbox.insert(key.as_slice(), encode(&kept).map_err(aborted)?)?;
                        signed += 1;
                    }
                }
                Ok(signed)
            })
            .map_err(not_committed("saving the login failed"))?;
        self.flush()?;
        Ok(signed)
    }

    /// Notes a `bad_signature` answer until the next login (or a push that
    /// meets none).
    pub fn note_signature_refused(&self, refused: &SignatureRefused) -> anyhow::Result<()> {
        self.put_meta(SIGNATURE_REFUSED, refused)?;
        self.flush()
    }

    /// Forgets the last `bad_signature`: a push went through without one.
    pub fn clear_signature_refused(&self) -> anyhow::Result<()> {
        if self.meta.remove(SIGNATURE_REFUSED)?.is_some() {
            self.flush()?;
        }
        Ok(())
    }

    /// The last `bad_signature` answer, if no login or clean push came since.
    pub fn signature_refused(&self) -> anyhow::Result<Option<SignatureRefused>> {
        self.get_meta(SIGNATURE_REFUSED)
    }

    pub fn cursor(&self) -> anyhow::Result<Option<String>> {
        self.get_meta("cursor")
    }

    pub fn last_sync_at(&self) -> anyhow::Result<Option<String>> {
        self.get_meta("last_sync_at")
    }

    /// Keeps what a pull brought and moves the cursor, in one transaction.
    pub fn apply_pull(&self, assignments: &[Assignment], cursor: &str, at: &str) -> anyhow::Result<()> {
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = assignments
            .iter()
            .map(|a| {
                let key = a.delivery_id.as_str().as_bytes().to_vec();
                // Gone from this courier: forget it.
                let keep = !matches!(a.status, AssignmentStatus::ReassignedAway | AssignmentStatus::Cancelled);
                Ok((key, if keep { Some(encode(a)?) } else { None }))
            })
            .collect::<anyhow::Result<_>>()?;
        let (cursor, at) = (encode(&cursor)?, encode(&at)?);
        (&self.assignments, &self.meta)
            .transaction(|(assignments, meta)| {
                for (key, value) in &records {
                    match value {
                        Some(value) => assignments.insert(key.as_slice(), value.as_slice())?,
                        None => assignments.remove(key.as_slice())?,
                    };
                }
                meta.insert("cursor", cursor.as_slice())?;
                meta.insert("last_sync_at", at.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|err| anyhow::anyhow!("saving the pulled assignments failed: {err:?}"))?;
        self.flush()
    }

    pub fn assignments(&self) -> anyhow::Result<Vec<Assignment>> {
        self.assignments.iter().values().map(|v| decode(&v?)).collect()
    }

    pub fn assignment(&self, id: &DeliveryId) -> anyhow::Result<Option<Assignment>> {
        self.assignments.get(id.as_str())?.map(|v| decode(&v)).transpose()
    }

    /// The confirmation already captured on this device under an assignment
    /// version.
    pub fn captured_for(&self, id: &DeliveryId, version: u64) -> anyhow::Result<Option<String>> {
        self.captured.get(captured_key(id, version))?.map(|v| decode(&v)).transpose()
    }

    /// Queues a confirmation durably: after this returns `Saved`, power loss
    /// loses nothing. The check that nothing else was captured under the same
    /// assignment version is part of the same transaction, so two saves racing
    /// (a double tap on the page) keep one. So are the rest: once the server
    /// has registered this handheld's key for the session's device, the
    /// confirmation is signed as its chain's next record and the chain moves
    /// on; and `photo` (whose digest the confirmation carries) is
    /// kept for upload. A crash never leaves a number used without its
    /// confirmation, nor a confirmation without its photo; a form sent twice
    /// finds its slot taken before it takes a number.
    pub fn enqueue(&self, confirmation: &Confirmation, photo: Option<&Photo>) -> anyhow::Result<Enqueued> {
        if confirmation.photo_digest.as_deref() != photo.map(Photo::digest) {
            bail!("a confirmation is saved with the photo its photo_digest names, and only with it");
        }
        let key = confirmation.confirmation_id.as_bytes().to_vec();
        let slot = captured_key(&confirmation.delivery_id, confirmation.version);
        let id = encode(&confirmation.confirmation_id)?;
        let owner = PhotoOwner {
            confirmation_id: confirmation.confirmation_id.clone(),
            delivery_id: confirmation.delivery_id.clone(),
        };
        let outcome = (&self.outbox, &self.captured, &self.meta, &self.photos, &self.photo_owners)
            .transaction(|(outbox, captured, meta, photos, owners)| {
                if let Some(previous) = captured.get(slot.as_bytes())? {
                    return Ok(if previous.as_ref() == id.as_slice() {
                        Enqueued::AlreadySaved
                    } else {
                        Enqueued::Taken(decode(&previous).unwrap_or_default())
                    });
                }
                let kept = sign_if_keyed(meta, confirmation)?;
                outbox.insert(key.as_slice(), encode(&kept).map_err(aborted)?)?;
                captured.insert(slot.as_bytes(), id.as_slice())?;
                if let Some(photo) = photo {
                    hold_photo(photos, owners, photo, owner.clone())?;
                }
                Ok(Enqueued::Saved)
            })
            .map_err(not_committed("saving the confirmation failed"))?;
        self.flush()?;
        Ok(outcome)
    }

    /// The confirmation if it still waits in the outbox.
    pub fn queued_confirmation(&self, confirmation_id: &str) -> anyhow::Result<Option<Confirmation>> {
        self.outbox.get(confirmation_id)?.map(|v| decode(&v)).transpose()
    }

    pub fn rejection(&self, confirmation_id: &str) -> anyhow::Result<Option<Rejected>> {
        self.rejected.get(confirmation_id)?.map(|v| decode(&v)).transpose()
    }

    /// The outbox, oldest first.
    #[cfg(test)]
    pub fn outbox(&self) -> anyhow::Result<Vec<Confirmation>> {
        self.outbox_after(None, usize::MAX)
    }

    /// At most `limit` queued confirmations, oldest first, after the one with
    /// id `after` (ids are UUIDv7: they sort by capture).
    pub fn outbox_after(&self, after: Option<&str>, limit: usize) -> anyhow::Result<Vec<Confirmation>> {
        let from = match after {
            Some(id) => std::ops::Bound::Excluded(id.as_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        self.outbox
            .range::<Vec<u8>, _>((from, std::ops::Bound::Unbounded))
            .values()
            .take(limit)
            .map(|v| decode(&v?))
            .collect()
    }

    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// The server took it (accepted or duplicate): it leaves the outbox.
    pub fn settle(&self, confirmation_id: &str) -> anyhow::Result<()> {
        self.outbox.remove(confirmation_id)?;
        Ok(())
    }

    /// The server refused it: it moves to the rejected list, in one step, and
    /// its photo (which the server would not file under a refused
    /// confirmation) is dropped with it.
    pub fn reject(&self, confirmation: &Confirmation, code: &str, message: &str) -> anyhow::Result<()> {
        let key = confirmation.confirmation_id.as_bytes().to_vec();
        let record =
            encode(&Rejected { confirmation: confirmation.clone(), code: code.into(), message: message.into() })?;
        let photo = match &confirmation.photo_digest {
            Some(digest) => {
                let dropped = DroppedPhoto {
                    delivery_id: confirmation.delivery_id.clone(),
                    digest: digest.clone(),
                    code: code.to_owned(),
                    message: format!("its confirmation {} was refused: {message}", confirmation.confirmation_id),
                };
                Some((dropped_key(&dropped.delivery_id, digest), encode(&dropped)?, digest.clone()))
            }
            None => None,
        };
        (&self.outbox, &self.rejected, &self.photos, &self.photo_owners, &self.dropped_photos)
            .transaction(|(outbox, rejected, photos, owners, dropped)| {
                outbox.remove(key.as_slice())?;
                rejected.insert(key.as_slice(), record.as_slice())?;
                if let Some((dropped_key, dropped_record, digest)) = &photo {
                    let this = |owner: &PhotoOwner| owner.confirmation_id == confirmation.confirmation_id;
                    if release_photo(photos, owners, digest, this)? {
                        dropped.insert(dropped_key.as_bytes(), dropped_record.as_slice())?;
                    }
                }
                Ok(())
            })
            .map_err(not_committed("moving a rejected confirmation failed"))?;
        Ok(())
    }

    /// Every photo waiting to upload, one per delivery it is filed under,
    /// saying whether it still waits for its confirmation to be taken.
    pub fn photos_waiting(&self) -> anyhow::Result<Vec<WaitingPhoto>> {
        let mut waiting = Vec::new();
        for entry in self.photo_owners.iter() {
            let (digest, raw) = entry?;
            let digest = String::from_utf8(digest.to_vec()).context("a photo key is not a digest")?;
            let record: PhotoRecord = decode(&raw)?;
            // Per delivery, whether the server holds one of the confirmations
            // that carry the photo there (accepted, or a duplicate of one it
            // had): it left the outbox and was not refused.
            let mut deliveries: Vec<(&DeliveryId, bool)> = Vec::new();
            for owner in &record.owners {
                let taken = !self.outbox.contains_key(&owner.confirmation_id)?
                    && !self.rejected.contains_key(&owner.confirmation_id)?;
                match deliveries.iter_mut().find(|(delivery, _)| *delivery == &owner.delivery_id) {
                    Some((_, any_taken)) => *any_taken |= taken,
                    None => deliveries.push((&owner.delivery_id, taken)),
                }
            }
            for (delivery_id, taken) in deliveries {
                waiting.push(WaitingPhoto {
                    delivery_id: delivery_id.clone(),
                    digest: digest.clone(),
                    size: record.size,
                    problem: record.problem.clone(),
                    waits_for_confirmation: !taken,
                });
            }
        }
        Ok(waiting)
    }

    /// A kept photo's bytes.
    pub fn photo(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.photos.get(digest)?.map(|bytes| bytes.to_vec()))
    }

    /// The server has the photo for `delivery`, checked and stored: those
    /// waiting for it there let go, and its bytes go with the last of them.
    pub fn photo_uploaded(&self, delivery: &DeliveryId, digest: &str) -> anyhow::Result<()> {
        (&self.photos, &self.photo_owners)
            .transaction(|(photos, owners)| {
                release_photo(photos, owners, digest, |owner| owner.delivery_id == *delivery)
            })
            .map_err(not_committed("letting go of an uploaded photo failed"))?;
        self.flush()
    }

    /// The server will never take the photo for `delivery`: its bytes go
    /// (unless another delivery waits for them), and why is kept for `status`.
    pub fn photo_refused(&self, delivery: &DeliveryId, digest: &str, code: &str, message: &str) -> anyhow::Result<()> {
        let record = encode(&DroppedPhoto {
            delivery_id: delivery.clone(),
            digest: digest.to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
        })?;
        let key = dropped_key(delivery, digest);
        (&self.photos, &self.photo_owners, &self.dropped_photos)
            .transaction(|(photos, owners, dropped)| {
                release_photo(photos, owners, digest, |owner| owner.delivery_id == *delivery)?;
                dropped.insert(key.as_bytes(), record.as_slice())?;
                Ok(())
            })
            .map_err(not_committed("dropping a refused photo failed"))?;
        self.flush()
    }

    /// Notes why a photo's upload stopped short (the photo stays), or clears it.
    pub fn note_photo_problem(&self, digest: &str, problem: Option<&str>) -> anyhow::Result<()> {
        self.photo_owners
            .transaction(|owners| {
                let Some(raw) = owners.get(digest.as_bytes())? else { return Ok(()) };
                let mut record: PhotoRecord = decode(&raw).map_err(aborted)?;
                record.problem = problem.map(str::to_owned);
                owners.insert(digest.as_bytes(), encode(&record).map_err(aborted)?)?;
                Ok(())
            })
            .map_err(not_committed("noting a photo's problem failed"))?;
        self.flush()
    }

    /// Photos dropped for good, and why.
    pub fn dropped_photos(&self) -> anyhow::Result<Vec<DroppedPhoto>> {
        self.dropped_photos.iter().values().map(|v| decode(&v?)).collect()
    }

    pub fn rejected(&self) -> anyhow::Result<Vec<Rejected>> {
        self.rejected.iter().values().map(|v| decode(&v?)).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use handover_shared::{CustomerId, ItemId, NodeId, ReceiptId};

    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_store_left_readable_by_others_is_made_owner_only_when_opened() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &Path| std::fs::metadata(path).expect("exists").permissions().mode() & 0o777;
        let root = tempfile::tempdir().expect("a temporary dir");
        let dir = root.path().join("agent-data");
        drop(LocalStore::open(&dir).expect("a fresh store"));
        let db = dir.join("agent.v1").join("db");
        for (path, loose) in [(&dir, 0o755), (&dir.join("agent.v1"), 0o755), (&db, 0o644)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(loose)).expect("loosened");
        }
        drop(LocalStore::open(&dir).expect("reopened"));
        assert_eq!((mode(&dir), mode(&dir.join("agent.v1")), mode(&db)), (0o700, 0o700, 0o600));
    }

    #[test]
    fn a_session_saved_with_one_server_address_reads_as_a_list_of_one() {
        let saved = r#"{"server":"https://a:8443","ca":null,"username":"exp1","device_id":"hh-1",
            "access_token":"t","refresh_token":"r"}"#;
        let session: Session = serde_json::from_str(saved).expect("an older session reads");
        assert_eq!(session.servers, vec!["https://a:8443".to_owned()]);
        let now: Session = serde_json::from_str(&serde_json::to_string(&session).expect("encodes")).expect("reads");
        assert_eq!(now.servers, session.servers);
    }

    pub(crate) fn assignment(delivery: u64, status: AssignmentStatus) -> Assignment {
        Assignment {
            delivery_id: DeliveryId::from_seq(delivery),
            version: 1,
            status,
            receipt_id: ReceiptId::from_seq(delivery),
            customer_id: CustomerId::parse("C1").expect("id"),
            customer_name: "Office".into(),
            item_id: ItemId::parse("TC-100").expect("id"),
            item_name: "Toner".into(),
            quantity: 2,
            empties_expected: 2,
            pickup_node: NodeId::parse("B1").expect("id"),
            handover_code_hash: None,
        }
    }

    pub(crate) fn confirmation(delivery: u64) -> Confirmation {
        Confirmation {
            captured_at: time::OffsetDateTime::UNIX_EPOCH,
            ..Confirmation::delivered(DeliveryId::from_seq(delivery), 1, 2, "Front desk")
        }
    }

    #[test]
    fn a_queued_confirmation_survives_reopening_and_leaves_only_when_settled_or_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = confirmation(1);
        let second = confirmation(2);
        {
            let store = LocalStore::open(dir.path()).expect("open");
            assert_eq!(store.enqueue(&first, None).expect("queued"), Enqueued::Saved);
            assert_eq!(store.enqueue(&second, None).expect("queued"), Enqueued::Saved);
        }
        let store = LocalStore::open(dir.path()).expect("reopen");
        let ids: Vec<String> = store.outbox().expect("outbox").into_iter().map(|c| c.confirmation_id).collect();
        assert_eq!(ids, vec![first.confirmation_id.clone(), second.confirmation_id.clone()], "oldest first");
        assert_eq!(store.captured_for(&DeliveryId::from_seq(1), 1).expect("read"), Some(first.confirmation_id.clone()));
        assert_eq!(store.enqueue(&first, None).expect("read"), Enqueued::AlreadySaved, "the same form sent twice");
        let other = confirmation(1);
        assert_eq!(store.enqueue(&other, None).expect("read"), Enqueued::Taken(first.confirmation_id.clone()));
        let mut next_version = confirmation(1);
        next_version.version = 2;
        assert_eq!(store.enqueue(&next_version, None).expect("queued"), Enqueued::Saved, "a new assignment version");
        store.settle(&next_version.confirmation_id).expect("settled");

        store.settle(&first.confirmation_id).expect("settled");
        store.reject(&second, "not_assignee", "not yours").expect("rejected");
        assert_eq!(store.queued(), 0);
        let rejected = store.rejected().expect("rejected");
        assert_eq!((rejected.len(), rejected[0].code.as_str()), (1, "not_assignee"));
    }

    #[test]
    fn a_pull_keeps_assignments_forgets_those_gone_and_moves_the_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open");
        store
            .apply_pull(
                &[assignment(1, AssignmentStatus::Ready), assignment(2, AssignmentStatus::Upcoming)],
                "7",
                "now",
            )
            .expect("applied");
        store.apply_pull(&[assignment(2, AssignmentStatus::ReassignedAway)], "9", "later").expect("applied");
        let kept: Vec<u64> = store.assignments().expect("list").iter().filter_map(|a| a.delivery_id.number()).collect();
        assert_eq!(kept, vec![1]);
        assert_eq!(store.cursor().expect("cursor").as_deref(), Some("9"));
        assert_eq!(store.last_sync_at().expect("read").as_deref(), Some("later"));
    }

    pub(crate) fn session_as(device: &str) -> Session {
        Session {
            servers: vec!["https://a:8443".into()],
            ca: None,
            username: Username::parse("exp1").expect("name"),
            device_id: DeviceId::parse(device).expect("id"),
            access_token: "t".into(),
            refresh_token: "r".into(),
        }
    }

    /// A store logged in as device `hh-1`; when `keyed`, the server
    /// registered its device key at that login.
    fn logged_in(keyed: bool) -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open");
        let registered = keyed.then(|| store.device_key_or_new(|| Ok([7; 32])).expect("a key").public_key());
        store.complete_login(&session_as("hh-1"), registered.as_deref()).expect("logged in");
        (dir, store)
    }

    fn record_text(confirmation: &Confirmation) -> String {
        let device = DeviceId::parse("hh-1").expect("id");
        handover_shared::proof::SignedRecord::of(confirmation, &device).expect("a record").text()
    }

    pub(crate) fn jpeg(filler: u8) -> Photo {
        Photo::new([&[0xFF, 0xD8, 0xFF, 0xE0][..], &[filler; 64]].concat()).expect("a JPEG")
    }

    fn with_photo(delivery: u64, photo: &Photo) -> Confirmation {
        Confirmation { photo_digest: Some(photo.digest().to_owned()), ..confirmation(delivery) }
    }

    #[test]
    fn signed_confirmations_are_numbered_from_1_and_each_links_to_the_one_before() {
        let (_dir, store) = logged_in(true);
        let key = store.device_key().expect("read").expect("a key");
        for delivery in 1..=3 {
            assert_eq!(store.enqueue(&confirmation(delivery), None).expect("queued"), Enqueued::Saved);
        }

        let outbox = store.outbox().expect("outbox");

        let numbers: Vec<Option<u64>> = outbox.iter().map(|c| c.device_seq).collect();
        assert_eq!(numbers, vec![Some(1), Some(2), Some(3)]);
        assert_eq!(outbox[0].prev_hash.as_deref(), Some(handover_shared::proof::CHAIN_START));
        for pair in outbox.windows(2) {
            assert_eq!(pair[1].prev_hash, Some(sha256_hex(record_text(&pair[0]).as_bytes())));
        }
        for signed in &outbox {
            let signature = signed.device_signature.as_deref().expect("signed");
            assert_eq!(handover_shared::proof::verify(&key.public_key(), &record_text(signed), signature), Ok(()));
            assert_eq!(signed.check(), Ok(()));
        }
    }

    #[test]
    fn a_form_sent_twice_takes_one_number() {
        let (_dir, store) = logged_in(true);
        let tapped = confirmation(1);

        assert_eq!(store.enqueue(&tapped, None).expect("queued"), Enqueued::Saved);
        assert_eq!(store.enqueue(&tapped, None).expect("read"), Enqueued::AlreadySaved);
        assert_eq!(store.enqueue(&confirmation(1), None).expect("read"), Enqueued::Taken(tapped.confirmation_id));
        store.enqueue(&confirmation(2), None).expect("queued");

        let numbers: Vec<Option<u64>> = store.outbox().expect("outbox").iter().map(|c| c.device_seq).collect();
        assert_eq!(numbers, vec![Some(1), Some(2)], "neither the second tap nor the taken slot took a number");
    }

    #[test]
    fn without_a_device_key_confirmations_stay_unsigned() {
        let (_dir, store) = logged_in(false);
        let captured = confirmation(1);
        store.enqueue(&captured, None).expect("queued");
        let kept = store.outbox().expect("outbox").remove(0);
        assert!(!kept.is_signed());
        assert_eq!(kept, captured, "kept exactly as captured, as before device keys");
    }

    #[test]
    fn a_device_key_is_made_once_and_never_replaced() {
        let (_dir, store) = logged_in(false);
        assert!(store.device_key().expect("read").is_none());
        let first = store.device_key_or_new(|| Ok([1; 32])).expect("made");
        let again = store.device_key_or_new(|| Ok([2; 32])).expect("kept");
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(first.public_key(), handover_shared::proof::DeviceKey::from_secret([1; 32]).public_key());
    }

    #[test]
    fn confirmations_queued_before_the_key_was_registered_are_signed_oldest_first_at_the_login() {
        let (_dir, store) = logged_in(false);
        let (older, newer) = (confirmation(1), confirmation(2));
        store.enqueue(&older, None).expect("queued");
        store.enqueue(&newer, None).expect("queued");
        let key = store.device_key_or_new(|| Ok([7; 32])).expect("a key");

        let signed = store.complete_login(&session_as("hh-1"), Some(&key.public_key())).expect("logged in");
        store.enqueue(&confirmation(3), None).expect("queued");

        assert_eq!(signed, 2);
        let outbox = store.outbox().expect("outbox");
        let ids: Vec<(&str, Option<u64>)> = outbox.iter().map(|c| (c.confirmation_id.as_str(), c.device_seq)).collect();
        assert_eq!(ids[..2], [(older.confirmation_id.as_str(), Some(1)), (newer.confirmation_id.as_str(), Some(2))]);
        assert_eq!(outbox[2].device_seq, Some(3), "new captures continue the chain");
        assert_eq!(outbox[2].prev_hash, Some(sha256_hex(record_text(&outbox[1]).as_bytes())));
        assert_eq!(store.complete_login(&session_as("hh-1"), Some(&key.public_key())).expect("again"), 0);
    }

    #[test]
    fn a_key_the_server_has_not_registered_signs_nothing() {
        // Made before a login that failed (wrong password, offline), or whose
        // answer was lost; or a store from before this release, logged in
        // with its key made but never noted as registered.
        let (_dir, store) = logged_in(false);
        store.device_key_or_new(|| Ok([7; 32])).expect("a pending key");

        store.enqueue(&confirmation(1), None).expect("queued");

        assert!(!store.outbox().expect("outbox")[0].is_signed(), "the server would refuse it as bad_signature");
        assert!(!store.signing().expect("read"));
    }

    #[test]
    fn a_key_registered_for_one_device_does_not_sign_as_another() {
        let (_dir, store) = logged_in(true);
        assert!(store.signing().expect("read"));

        store.complete_login(&session_as("hh-2"), None).expect("logged in as hh-2, its key not registered");
        store.enqueue(&confirmation(1), None).expect("queued");

        assert!(!store.outbox().expect("outbox")[0].is_signed());
        assert!(!store.signing().expect("read"));
    }

    #[test]
    fn a_login_as_another_device_is_refused_while_confirmations_signed_as_this_one_wait() {
        let (_dir, store) = logged_in(true);
        let key = store.device_key().expect("read").expect("a key").public_key();
        let signed = confirmation(1);
        store.enqueue(&signed, None).expect("queued");
        store.enqueue(&confirmation(2), None).expect("queued");

        let refused = store.complete_login(&session_as("hh-2"), Some(&key)).expect_err("refused");

        let blocked = refused.downcast_ref::<SignedAsAnotherDevice>().expect("says why");
        assert_eq!(
            blocked.to_string(),
            "2 confirmation(s) signed as device hh-1 still wait; sync them first, or log in as hh-1"
        );
        assert_eq!(store.session().expect("kept").device_id.as_str(), "hh-1", "the old session stays");
        assert_eq!(store.complete_login(&session_as("hh-1"), Some(&key)).expect("the same id"), 0);
        store.settle(&signed.confirmation_id).expect("settled");
        let outbox = store.outbox().expect("outbox");
        store.reject(&outbox[0], "not_assignee", "not yours").expect("rejected");
        store.complete_login(&session_as("hh-2"), Some(&key)).expect("nothing signed waits");
        assert_eq!(store.session().expect("saved").device_id.as_str(), "hh-2");
    }

    #[test]
    fn unsigned_confirmations_do_not_block_a_device_change_and_are_signed_as_the_new_device() {
        let (_dir, store) = logged_in(false);
        store.enqueue(&confirmation(1), None).expect("queued");
        let key = store.device_key_or_new(|| Ok([7; 32])).expect("a key").public_key();

        assert_eq!(store.complete_login(&session_as("hh-2"), Some(&key)).expect("logged in"), 1);

        let kept = store.outbox().expect("outbox").remove(0);
        let text = handover_shared::proof::SignedRecord::of(&kept, &DeviceId::parse("hh-2").expect("id"))
            .expect("a record")
            .text();
        let signature = kept.device_signature.as_deref().expect("signed");
        assert_eq!(handover_shared::proof::verify(&key, &text, signature), Ok(()));
    }

    #[test]
    fn a_refused_signature_is_noted_until_the_next_login() {
        let (_dir, store) = logged_in(false);
        let refused = SignatureRefused {
            device_id: DeviceId::parse("hh-1").expect("id"),
            confirmation_id: "c-1".into(),
            message: "device hh-1 registered a key: its confirmations must be signed".into(),
        };
        store.note_signature_refused(&refused).expect("noted");
        assert_eq!(store.signature_refused().expect("read"), Some(refused.clone()));
        assert!(refused.to_string().starts_with("the server refused this handheld's signature: log in again"));

        store.complete_login(&session_as("hh-1"), None).expect("logged in");

        assert_eq!(store.signature_refused().expect("read"), None);
    }

    #[test]
    fn a_file_that_is_not_a_photo_is_refused_by_its_bytes() {
        assert!(Photo::new(b"GIF89a and the rest".to_vec()).is_err());
        assert!(Photo::new(b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec()).is_err());
        let too_large = [&[0xFF, 0xD8, 0xFF][..], &vec![0; handover_shared::proof::MAX_PHOTO_BYTES as usize]].concat();
        assert!(Photo::new(too_large).is_err());
        assert_eq!(jpeg(1).digest(), sha256_hex(jpeg(1).bytes()));
    }

    #[test]
    fn the_same_photo_attached_twice_is_kept_once_until_its_last_delivery_has_it() {
        let (_dir, store) = logged_in(true);
        let photo = jpeg(1);
        store.enqueue(&with_photo(1, &photo), Some(&photo)).expect("queued");
        store.enqueue(&with_photo(2, &photo), Some(&photo)).expect("queued");

        assert_eq!(store.photos.len(), 1, "kept once, under its digest");
        let waiting: Vec<String> =
            store.photos_waiting().expect("read").iter().map(|p| p.delivery_id.to_string()).collect();
        assert_eq!(waiting, ["D-000001", "D-000002"]);
        assert_eq!(store.photo(photo.digest()).expect("read").as_deref(), Some(photo.bytes()));

        store.photo_uploaded(&DeliveryId::from_seq(1), photo.digest()).expect("let go");
        assert!(store.photo(photo.digest()).expect("read").is_some(), "delivery 2 still waits for it");
        store.photo_uploaded(&DeliveryId::from_seq(2), photo.digest()).expect("let go");
        assert!(store.photo(photo.digest()).expect("read").is_none());
        assert!(store.photos_waiting().expect("read").is_empty());
    }

    #[test]
    fn a_confirmation_is_saved_with_the_photo_it_names_and_only_with_it() {
        let (_dir, store) = logged_in(true);
        let photo = jpeg(1);
        assert!(store.enqueue(&confirmation(1), Some(&photo)).is_err(), "a photo its confirmation does not name");
        assert!(store.enqueue(&with_photo(1, &photo), None).is_err(), "a digest without its photo");
        assert_eq!(store.queued(), 0);
        assert!(store.photo(photo.digest()).expect("read").is_none());
        let signed = store.enqueue(&with_photo(1, &photo), Some(&photo)).expect("queued");
        assert_eq!(signed, Enqueued::Saved);
        assert_eq!(store.outbox().expect("outbox")[0].device_seq, Some(1), "the refused saves took no number");
    }

    #[test]
    fn a_refused_confirmation_or_photo_drops_the_photo_and_says_why() {
        let (_dir, store) = logged_in(true);
        let (refused, unwanted) = (jpeg(1), jpeg(2));
        store.enqueue(&with_photo(1, &refused), Some(&refused)).expect("queued");
        store.enqueue(&with_photo(2, &unwanted), Some(&unwanted)).expect("queued");
        let first = store.outbox().expect("outbox").remove(0);

        store.reject(&first, "not_assignee", "not yours").expect("rejected");
        store
            .photo_refused(&DeliveryId::from_seq(2), unwanted.digest(), "not_found", "no such delivery")
            .expect("dropped");

        assert!(store.photo(refused.digest()).expect("read").is_none());
        assert!(store.photo(unwanted.digest()).expect("read").is_none());
        assert!(store.photos_waiting().expect("read").is_empty());
        let why: Vec<(String, String)> =
            store.dropped_photos().expect("read").into_iter().map(|d| (d.delivery_id.to_string(), d.code)).collect();
        assert_eq!(why, [("D-000001".to_owned(), "not_assignee".to_owned()), ("D-000002".into(), "not_found".into())]);
    }

    #[test]
    fn a_photo_waits_for_the_server_to_take_a_confirmation_that_carries_it() {
        let (_dir, store) = logged_in(true);
        let photo = jpeg(1);
        let attempt = with_photo(1, &photo);
        store.enqueue(&attempt, Some(&photo)).expect("queued");
        let waits = |store: &LocalStore| -> Vec<bool> {
            store.photos_waiting().expect("read").iter().map(|p| p.waits_for_confirmation).collect()
        };
        assert_eq!(waits(&store), [true], "its confirmation is still queued");

        store.settle(&attempt.confirmation_id).expect("accepted");
        assert_eq!(waits(&store), [false]);

        // The same photo under the delivery's next version, still queued:
        // the server holds an attempt of this delivery with it already.
        let again = Confirmation { version: 2, ..with_photo(1, &photo) };
        store.enqueue(&again, Some(&photo)).expect("queued");
        assert_eq!(waits(&store), [false]);
    }

    #[test]
    fn a_photo_problem_is_noted_and_the_photo_stays() {
        let (_dir, store) = logged_in(false);
        let photo = jpeg(3);
        store.enqueue(&with_photo(1, &photo), Some(&photo)).expect("queued");
        store.note_photo_problem(photo.digest(), Some("twice the server found the bytes do not match")).expect("noted");
        let waiting = store.photos_waiting().expect("read");
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].problem.as_deref(), Some("twice the server found the bytes do not match"));
        assert_eq!(waiting[0].size, photo.bytes().len() as u64);
    }
}
