//! Device keys and each device's chain of signed confirmations. A handheld
//! registers its Ed25519 public key at login; from then on every
//! confirmation it pushes must be signed by that key, numbered (1, 2, 3...)
//! and linked to the one before by the hash of its record. The server keeps
//! which numbers arrived, so that a number that never did (a wiped or stolen
//! handheld's queue) shows as a gap, and refuses a number used twice or a
//! link that does not meet its neighbour's.
//!
//! Signatures are verified before the store's transaction, in parallel
//! (`http::sync`); the transaction only judges the outcome here against the
//! chain as it stands, so that the key a signature was checked under is the
//! device's key at the moment it is applied.

use std::collections::BTreeMap;

use handover_shared::{
    proof::{sha256_hex, CHAIN_START},
    sync::Confirmation,
    DeviceId, Username,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::confirmations::RejectCode;

/// What the server knows of one device's key and chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceChain {
    pub device_id: DeviceId,
    /// Ed25519, base64. Registered once; it never changes.
    pub public_key: String,
    pub registered_by: Username,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    /// Sequence numbers received, as inclusive ranges: ascending, disjoint,
    /// never adjacent.
    #[serde(default)]
    pub received: Vec<(u64, u64)>,
    /// The links a late arrival is checked against: each received number
    /// next to a gap, and the highest. The others are dropped, so that a
    /// device's record stays as small as its gaps.
    #[serde(default)]
    pub links: BTreeMap<u64, Link>,
}

/// One signed record's place in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// SHA-256 (hex) of the record's text.
    pub record_hash: String,
    /// The record's `prev_hash`.
    pub prev_hash: String,
}

/// A login brought another key than the one its device registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMismatch {
    pub device_id: DeviceId,
}

/// Applies a key brought by a login: the device's first key is registered;
/// the same key again changes nothing (`None`); another key is refused.
pub fn register_key(
    chain: Option<&DeviceChain>,
    device: &DeviceId,
    key: &str,
    by: &Username,
    now: OffsetDateTime,
) -> Result<Option<DeviceChain>, KeyMismatch> {
    match chain {
        Some(chain) if chain.public_key == key => Ok(None),
        Some(_) => Err(KeyMismatch { device_id: device.clone() }),
        None => Ok(Some(DeviceChain {
            device_id: device.clone(),
            public_key: key.to_owned(),
            registered_by: by.clone(),
            registered_at: now,
            received: Vec::new(),
            links: BTreeMap::new(),
        })),
    }
}

/// What the signature check before the transaction found for one pushed
/// confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// It carries no device signature.
    Unsigned,
    /// Its record's signature verified under `key`.
    Verified { key: String, record: String, signature: String },
    /// It carries a signature that does not verify, or that no registered
    /// key could have made.
    Bad(String),
}

/// A confirmation's signed record, kept on its attempt as it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAttempt {
    pub device_seq: u64,
    /// The record's canonical text.
    pub record: String,
    /// Ed25519 over the text, base64.
    pub signature: String,
}

/// Why a confirmation's origin is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRefusal {
    pub code: RejectCode,
    pub message: String,
    /// Whether its id keeps this outcome: only when the device's key vouches
    /// for the content (a bad signature proves nothing about who sent it, and
    /// must not stop the genuine confirmation under the same id).
    pub remember: bool,
}

/// A verified confirmation's entry into its device's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub chain: DeviceChain,
    pub signed: SignedAttempt,
}

fn refuse(code: RejectCode, message: String, remember: bool) -> OriginRefusal {
    OriginRefusal { code, message, remember }
}

/// Judges where a new confirmation (one whose id was never seen) comes from.
/// A device that registered no key may push unsigned confirmations (they are
/// recorded as such); a device that did may push only confirmations signed
/// by that key, each with a number of its own that links to its neighbours.
/// `Ok(None)`: unsigned and allowed; `Ok(Some(..))`: the chain with this
/// record in it, to write with whatever the confirmation's outcome is.
pub fn judge_origin(
    check: &SignatureCheck,
    chain: Option<&DeviceChain>,
    confirmation: &Confirmation,
    device: &DeviceId,
) -> Result<Option<Accepted>, OriginRefusal> {
    let bad = |message: String| refuse(RejectCode::BadSignature, message, false);
    let Some(chain) = chain else {
        return match check {
            SignatureCheck::Unsigned => Ok(None),
            _ => Err(bad(format!("device {device} registered no key: log in again to register one"))),
        };
    };
    let (record, signature) = match check {
        SignatureCheck::Unsigned => {
            return Err(bad(format!("device {device} registered a key: its confirmations must be signed")))
        }
        SignatureCheck::Bad(why) => return Err(bad(why.clone())),
        SignatureCheck::Verified { key, .. } if *key != chain.public_key => {
            return Err(bad(format!("signed by another key than device {device}'s")))
        }
        SignatureCheck::Verified { record, signature, .. } => (record, signature),
    };
    let (Some(seq), Some(prev_hash)) = (confirmation.device_seq, confirmation.prev_hash.as_deref()) else {
        return Err(bad("a signed confirmation carries device_seq and prev_hash".into()));
    };
    let record_hash = sha256_hex(record.as_bytes());
    let broken = |message: String| Err(refuse(RejectCode::ChainBroken, message, true));
    if chain.has_received(seq) {
        return Err(refuse(
            RejectCode::SequenceReused,
            format!("device {device} already sent a confirmation numbered {seq}"),
            true,
        ));
    }
    let expected_prev = match seq {
        1 => Some(CHAIN_START),
        _ => chain.links.get(&(seq - 1)).map(|link| link.record_hash.as_str()),
    };
    if expected_prev.is_some_and(|expected| expected != prev_hash) {
        return broken(format!("confirmation {seq} of device {device} does not follow the one numbered before it"));
    }
    if chain.links.get(&(seq + 1)).is_some_and(|next| next.prev_hash != record_hash) {
        return broken(format!("confirmation {seq} of device {device} is not the one its successor follows"));
    }
    let signed = SignedAttempt { device_seq: seq, record: record.clone(), signature: signature.clone() };
    let chain = chain.with_link(seq, Link { record_hash, prev_hash: prev_hash.to_owned() });
    Ok(Some(Accepted { chain, signed }))
}

impl DeviceChain {
    pub fn has_received(&self, seq: u64) -> bool {
        self.received.iter().any(|&(first, last)| (first..=last).contains(&seq))
    }

    pub fn highest(&self) -> Option<u64> {
        self.received.last().map(|&(_, last)| last)
    }

    /// Numbers below the highest received that never arrived, as inclusive
    /// ranges: what a wiped or stolen handheld never sent.
    pub fn missing(&self) -> Vec<(u64, u64)> {
        let mut missing = Vec::new();
        let mut next = 1;
        for &(first, last) in &self.received {
            if first > next {
                missing.push((next, first - 1));
            }
            next = last + 1;
        }
        missing
    }

    /// The chain with `seq` received, keeping only the links that a later
    /// arrival can be checked against.
    fn with_link(&self, seq: u64, link: Link) -> DeviceChain {
        let mut chain = self.clone();
        chain.received.push((seq, seq));
        chain.received.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(chain.received.len());
        for (first, last) in chain.received.drain(..) {
            match merged.last_mut() {
                Some(previous) if first <= previous.1 + 1 => previous.1 = previous.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        chain.received = merged;
        chain.links.insert(seq, link);
        let highest = chain.highest();
        let interior =
            |n: u64| Some(n) != highest && (n == 1 || chain.has_received(n - 1)) && chain.has_received(n + 1);
        let dropped: Vec<u64> = chain.links.keys().copied().filter(|&n| interior(n)).collect();
        for n in dropped {
            chain.links.remove(&n);
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use handover_shared::{proof::SignedRecord, DeliveryId};

    use super::*;

    struct Device {
        id: DeviceId,
        key: handover_shared::proof::DeviceKey,
        last: String,
        next: u64,
    }

    impl Device {
        fn new() -> Device {
            let key = handover_shared::proof::DeviceKey::from_secret([5; 32]);
            Device { id: DeviceId::parse("phone-1").expect("id"), key, last: CHAIN_START.into(), next: 1 }
        }

        fn sign(&mut self) -> (Confirmation, SignatureCheck) {
            let mut confirmation = Confirmation::delivered(DeliveryId::from_seq(self.next), 1, 1, "Desk");
            confirmation.device_seq = Some(self.next);
            confirmation.prev_hash = Some(self.last.clone());
            let record = SignedRecord::of(&confirmation, &self.id).expect("a record").text();
            let signature = self.key.sign(&record);
            confirmation.device_signature = Some(signature.clone());
            self.last = sha256_hex(record.as_bytes());
            self.next += 1;
            (confirmation, SignatureCheck::Verified { key: self.key.public_key(), record, signature })
        }
    }

    fn registered(device: &Device) -> DeviceChain {
        let courier = Username::parse("exp1").expect("name");
        register_key(None, &device.id, &device.key.public_key(), &courier, OffsetDateTime::UNIX_EPOCH)
            .expect("a first key")
            .expect("registered")
    }

    fn take(chain: &DeviceChain, pushed: &(Confirmation, SignatureCheck), id: &DeviceId) -> DeviceChain {
        judge_origin(&pushed.1, Some(chain), &pushed.0, id).expect("accepted").expect("signed").chain
    }

    #[test]
    fn a_key_is_registered_once_and_never_replaced() {
        let device = Device::new();
        let chain = registered(&device);
        let courier = Username::parse("exp1").expect("name");
        let again =
            register_key(Some(&chain), &device.id, &device.key.public_key(), &courier, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(again, Ok(None), "the same key changes nothing");
        let other = handover_shared::proof::DeviceKey::from_secret([6; 32]).public_key();
        assert!(register_key(Some(&chain), &device.id, &other, &courier, OffsetDateTime::UNIX_EPOCH).is_err());
    }

    #[test]
    fn a_late_arrival_fills_its_gap_and_only_the_gap_edges_keep_their_links() {
        let mut device = Device::new();
        let pushed: Vec<_> = (0..5).map(|_| device.sign()).collect();
        let mut chain = registered(&device);
        for n in [0, 1, 3, 4] {
            chain = take(&chain, &pushed[n], &device.id);
        }
        assert_eq!(chain.missing(), vec![(3, 3)], "number 3 never arrived");
        assert_eq!(chain.links.keys().copied().collect::<Vec<_>>(), vec![2, 4, 5]);
        chain = take(&chain, &pushed[2], &device.id);
        assert_eq!((chain.missing(), chain.received.clone()), (vec![], vec![(1, 5)]));
        assert_eq!(chain.links.keys().copied().collect::<Vec<_>>(), vec![5], "only the head is kept");
    }

    #[test]
    fn a_reused_number_a_reordered_link_and_an_unsigned_push_are_refused() {
        let mut device = Device::new();
        let (first, second) = (device.sign(), device.sign());
        let chain = take(&registered(&device), &first, &device.id);
        let reused = judge_origin(&first.1, Some(&chain), &first.0, &device.id).expect_err("a number used twice");
        assert_eq!((reused.code, reused.remember), (RejectCode::SequenceReused, true));

        // The second record claims to follow something other than the first.
        let mut reordered = Device { next: 2, last: "ab".repeat(32), ..Device::new() };
        let stray = reordered.sign();
        let broken = judge_origin(&stray.1, Some(&chain), &stray.0, &device.id).expect_err("a broken link");
        assert_eq!(broken.code, RejectCode::ChainBroken);
        assert!(judge_origin(&second.1, Some(&chain), &second.0, &device.id).is_ok());

        let unsigned = judge_origin(&SignatureCheck::Unsigned, Some(&chain), &second.0, &device.id)
            .expect_err("a keyed device's unsigned push");
        assert_eq!((unsigned.code, unsigned.remember), (RejectCode::BadSignature, false));
        let other =
            SignatureCheck::Verified { key: "b3RoZXI=".into(), record: String::new(), signature: String::new() };
        assert_eq!(
            judge_origin(&other, Some(&chain), &second.0, &device.id).map_err(|refusal| refusal.code),
            Err(RejectCode::BadSignature)
        );
        assert_eq!(judge_origin(&SignatureCheck::Unsigned, None, &second.0, &device.id), Ok(None));
    }
}
