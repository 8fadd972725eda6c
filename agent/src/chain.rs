//! This handheld's chain of signed confirmations. Each confirmation saved
//! while the handheld holds a device key is numbered (1, 2, 3...) and linked
//! to the one before by the hash of its signed record, then signed: a
//! confirmation later removed from, or slipped into, the handheld's history
//! shows as a gap or a broken link to anyone holding the records (see
//! `handover_shared::proof` and `handover-agent verify`).
//!
//! The rule lives here as a pure function; the store reads the chain, calls
//! it and writes the result in the transaction that saves the confirmation.

use anyhow::Context as _;
use handover_shared::{
    proof::{sha256_hex, DeviceKey, SignedRecord, Unsignable, CHAIN_START},
    sync::Confirmation,
    DeviceId,
};
use rand::TryRngCore as _;
use serde::{Deserialize, Serialize};

/// Where one device's chain stands. Kept in the store as is, one per device
/// id: a handheld that logs in under another device id starts that device's
/// chain at 1, as the server expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    /// The number the next signed confirmation takes.
    pub next_seq: u64,
    /// SHA-256 (hex) of the last signed record's text; [`CHAIN_START`] before the first.
    pub last_hash: String,
}

impl ChainState {
    /// A device that has signed nothing yet.
    pub fn start() -> Self {
        ChainState { next_seq: 1, last_hash: CHAIN_START.to_owned() }
    }

    /// `confirmation` signed as the chain's next record (its number, its link
    /// and its signature set), and the chain after it.
    pub fn sign_next(
        &self,
        confirmation: &Confirmation,
        key: &DeviceKey,
        device: &DeviceId,
    ) -> Result<(Confirmation, ChainState), Unsignable> {
        let mut signed = Confirmation {
            device_seq: Some(self.next_seq),
            prev_hash: Some(self.last_hash.clone()),
            device_signature: None,
            ..confirmation.clone()
        };
        let text = SignedRecord::of(&signed, device)?.text();
        signed.device_signature = Some(key.sign(&text));
        let next = ChainState { next_seq: self.next_seq + 1, last_hash: sha256_hex(text.as_bytes()) };
        Ok((signed, next))
    }
}

/// 32 bytes from the operating system's random source: the secret of a new
/// device key. Drawn from the OS directly (not a user-space generator) since
/// the key lives as long as the handheld.
pub fn new_device_secret() -> anyhow::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .context("the operating system gave no randomness for a device key")?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use handover_shared::{proof::verify, DeliveryId};

    use super::*;

    #[test]
    fn each_signed_record_links_to_the_one_before_and_verifies_under_the_key() {
        let key = DeviceKey::from_secret([9; 32]);
        let device = DeviceId::parse("hh-1").expect("an id");
        let first = Confirmation::delivered(DeliveryId::from_seq(1), 1, 1, "Desk");
        let second = Confirmation::delivered(DeliveryId::from_seq(2), 1, 1, "Desk");

        let (one, after_one) = ChainState::start().sign_next(&first, &key, &device).expect("signed");
        let (two, after_two) = after_one.sign_next(&second, &key, &device).expect("signed");

        let text = |c: &Confirmation| SignedRecord::of(c, &device).expect("a record").text();
        assert_eq!((one.device_seq, one.prev_hash.as_deref()), (Some(1), Some(CHAIN_START)));
        assert_eq!((two.device_seq, two.prev_hash.clone()), (Some(2), Some(sha256_hex(text(&one).as_bytes()))));
        assert_eq!(after_two, ChainState { next_seq: 3, last_hash: sha256_hex(text(&two).as_bytes()) });
        for signed in [&one, &two] {
            let signature = signed.device_signature.as_deref().expect("signed");
            assert_eq!(verify(&key.public_key(), &text(signed), signature), Ok(()));
            assert_eq!(signed.check(), Ok(()), "a signed confirmation passes the shared check");
        }
    }

    #[test]
    fn two_device_secrets_differ() {
        assert_ne!(new_device_secret().expect("random"), new_device_secret().expect("random"));
    }
}
