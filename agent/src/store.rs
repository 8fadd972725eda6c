//! The handheld's local store (sled under `--data-dir`): the session, the
//! assignments as last pulled, the outbox of confirmations not yet accepted, the
//! rejected list and the sync cursor. Every write the courier is told about is
//! flushed before the command returns.

use std::path::Path;

use anyhow::{bail, Context as _};
use handover_shared::{
    sync::{Assignment, AssignmentStatus, Confirmation},
    DeliveryId, DeviceId, Username,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::Transactional as _;

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
        match self.get_meta("session")? {
            Some(session) => Ok(session),
            None => bail!("not logged in on this handheld: run `handover-agent login` first"),
        }
    }

    pub fn save_session(&self, session: &Session) -> anyhow::Result<()> {
        self.put_meta("session", session)?;
        self.flush()
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
    /// (a double tap on the page) keep one.
    pub fn enqueue(&self, confirmation: &Confirmation) -> anyhow::Result<Enqueued> {
        let key = confirmation.confirmation_id.as_bytes().to_vec();
        let value = encode(confirmation)?;
        let slot = captured_key(&confirmation.delivery_id, confirmation.version);
        let id = encode(&confirmation.confirmation_id)?;
        let outcome = (&self.outbox, &self.captured)
            .transaction(|(outbox, captured)| {
                if let Some(previous) = captured.get(slot.as_bytes())? {
                    return Ok(if previous.as_ref() == id.as_slice() {
                        Enqueued::AlreadySaved
                    } else {
                        Enqueued::Taken(decode(&previous).unwrap_or_default())
                    });
                }
                outbox.insert(key.as_slice(), value.as_slice())?;
                captured.insert(slot.as_bytes(), id.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(Enqueued::Saved)
            })
            .map_err(|err| anyhow::anyhow!("saving the confirmation failed: {err:?}"))?;
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

    /// The server refused it: it moves to the rejected list, in one step.
    pub fn reject(&self, confirmation: &Confirmation, code: &str, message: &str) -> anyhow::Result<()> {
        let key = confirmation.confirmation_id.as_bytes().to_vec();
        let record =
            encode(&Rejected { confirmation: confirmation.clone(), code: code.into(), message: message.into() })?;
        (&self.outbox, &self.rejected)
            .transaction(|(outbox, rejected)| {
                outbox.remove(key.as_slice())?;
                rejected.insert(key.as_slice(), record.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|err| anyhow::anyhow!("moving a rejected confirmation failed: {err:?}"))?;
        Ok(())
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
            assert_eq!(store.enqueue(&first).expect("queued"), Enqueued::Saved);
            assert_eq!(store.enqueue(&second).expect("queued"), Enqueued::Saved);
        }
        let store = LocalStore::open(dir.path()).expect("reopen");
        let ids: Vec<String> = store.outbox().expect("outbox").into_iter().map(|c| c.confirmation_id).collect();
        assert_eq!(ids, vec![first.confirmation_id.clone(), second.confirmation_id.clone()], "oldest first");
        assert_eq!(store.captured_for(&DeliveryId::from_seq(1), 1).expect("read"), Some(first.confirmation_id.clone()));
        assert_eq!(store.enqueue(&first).expect("read"), Enqueued::AlreadySaved, "the same form sent twice");
        let other = confirmation(1);
        assert_eq!(store.enqueue(&other).expect("read"), Enqueued::Taken(first.confirmation_id.clone()));
        let mut next_version = confirmation(1);
        next_version.version = 2;
        assert_eq!(store.enqueue(&next_version).expect("queued"), Enqueued::Saved, "a new assignment version");
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
}
