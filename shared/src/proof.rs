//! Proof of delivery that a third party can check: the signed record of a
//! confirmation (its canonical encoding, what the handheld's Ed25519 key
//! signs), the photo formats a handheld may attach, and the customer's
//! handover code, which the handheld checks offline against a slow hash.
//!
//! The format is described for outside verifiers in `docs/api.md` ("Proof
//! of delivery").

use base64::{engine::general_purpose::STANDARD, Engine as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::{format_description::well_known::Rfc3339, UtcOffset};

use crate::{
    sync::{Confirmation, FailureReason, Outcome},
    DeliveryId, DeviceId,
};

/// The `format` of every signed record this build writes.
pub const RECORD_FORMAT: &str = "handover-confirmation/1";

/// `prev_hash` of a device's first confirmation: it has no predecessor.
pub const CHAIN_START: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex of SHA-256 length: what photo digests and chain hashes are.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a handheld signs for one confirmation. Every value is a string, an
/// integer or null (positions are decimal strings with 7 places, so that no
/// float formatting differs between writer and reader), and the fields are
/// written in this order, as compact JSON: the record's text is its
/// canonical encoding, and it is kept as it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRecord {
    pub format: String,
    pub device_id: DeviceId,
    /// 1 for the device's first confirmation, then one more for each.
    pub device_seq: u64,
    /// SHA-256 (hex) of the text of the device's previous record;
    /// [`CHAIN_START`] for the first.
    pub prev_hash: String,
    pub confirmation_id: String,
    pub delivery_id: DeliveryId,
    pub version: u64,
    pub outcome: Outcome,
    pub reason: Option<FailureReason>,
    pub note: Option<String>,
    pub quantity: u32,
    pub recipient: Option<String>,
    pub empties_collected: u32,
    /// RFC 3339, in UTC.
    pub captured_at: String,
    pub lat: Option<String>,
    pub lon: Option<String>,
    pub accuracy_m: Option<String>,
    /// SHA-256 (hex) of the drawn signature's PNG bytes.
    pub signature_sha256: Option<String>,
    /// SHA-256 (hex) of the photo's bytes.
    pub photo_sha256: Option<String>,
}

/// A confirmation that cannot be put in a signed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsignable(pub String);

fn degrees(value: f64) -> String {
    format!("{value:.7}")
}

impl SignedRecord {
    /// The record of `confirmation`, pushed from `device`, under its own
    /// `device_seq` and `prev_hash`.
    pub fn of(confirmation: &Confirmation, device: &DeviceId) -> Result<SignedRecord, Unsignable> {
        let (Some(device_seq), Some(prev_hash)) = (confirmation.device_seq, confirmation.prev_hash.clone()) else {
            return Err(Unsignable("a signed confirmation carries device_seq and prev_hash".into()));
        };
        let captured_at = confirmation
            .captured_at
            .to_offset(UtcOffset::UTC)
            .format(&Rfc3339)
            .map_err(|err| Unsignable(format!("captured_at cannot be written: {err}")))?;
        let signature_sha256 = match &confirmation.signature {
            Some(url) => Some(sha256_hex(&signature_png(url).map_err(Unsignable)?)),
            None => None,
        };
        let position = confirmation.position;
        Ok(SignedRecord {
            format: RECORD_FORMAT.to_owned(),
            device_id: device.clone(),
            device_seq,
            prev_hash,
            confirmation_id: confirmation.confirmation_id.clone(),
            delivery_id: confirmation.delivery_id.clone(),
            version: confirmation.version,
            outcome: confirmation.outcome,
            reason: confirmation.reason,
            note: confirmation.note.clone(),
            quantity: confirmation.quantity,
            recipient: confirmation.recipient.clone(),
            empties_collected: confirmation.empties_collected,
            captured_at,
            lat: position.map(|p| degrees(p.lat)),
            lon: position.map(|p| degrees(p.lon)),
            accuracy_m: position.and_then(|p| p.accuracy_m).map(|m| format!("{m:.1}")),
            signature_sha256,
            photo_sha256: confirmation.photo_digest.clone(),
        })
    }

    /// The canonical encoding: what is signed, hashed into the chain, and kept.
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a record's text back; `None` when it is not one.
    pub fn parse(text: &str) -> Option<SignedRecord> {
        let record: SignedRecord = serde_json::from_str(text).ok()?;
        // Only the canonical text of a record is one: the same fields
        // written otherwise (spaces, another order) would hash differently.
        (record.text() == text).then_some(record)
    }
}

/// The PNG bytes of a drawn signature's `data:image/png;base64,...` URL.
pub fn signature_png(url: &str) -> Result<Vec<u8>, String> {
    let encoded = url
        .strip_prefix("data:image/png;base64,")
        .ok_or_else(|| "signature must be a data:image/png;base64 URL".to_owned())?;
    let bytes = STANDARD.decode(encoded).map_err(|err| format!("signature is not base64: {err}"))?;
    if ImageKind::sniff(&bytes) != Some(ImageKind::Png) {
        return Err("signature is not a PNG image".into());
    }
    Ok(bytes)
}

/// A handheld's Ed25519 key pair. The private half never leaves the handheld.
pub struct DeviceKey(SigningKey);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DeviceKey").field(&self.public_key()).finish()
    }
}

impl DeviceKey {
    /// A key pair from 32 random bytes (the caller's source of randomness:
    /// the agent uses the operating system's).
    pub fn from_secret(secret: [u8; 32]) -> DeviceKey {
        DeviceKey(SigningKey::from_bytes(&secret))
    }

    pub fn secret(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key, base64 (standard, padded): what the server registers.
    pub fn public_key(&self) -> String {
        STANDARD.encode(self.0.verifying_key().as_bytes())
    }

    /// The signature (base64) of a record's text.
    pub fn sign(&self, text: &str) -> String {
        STANDARD.encode(self.0.sign(text.as_bytes()).to_bytes())
    }
}

/// A registered public key, read from its base64. A weak (small-order) key
/// is refused: signatures under it could be forged by anyone.
pub fn public_key(encoded: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| "a device key is 32 bytes in base64".to_owned())?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "the device key is not an Ed25519 public key".to_owned())?;
    if key.is_weak() {
        return Err("the device key is a weak (small-order) point".into());
    }
    Ok(key)
}

/// A signature, read from its base64.
pub fn signature(encoded: &str) -> Result<Signature, String> {
    let bytes: [u8; 64] = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| "a device signature is 64 bytes in base64".to_owned())?;
    Ok(Signature::from_bytes(&bytes))
}

/// Whether `signature` (base64) is `key`'s (base64) over `text`. Strict:
/// no malleable or small-order signature passes.
pub fn verify(key: &str, text: &str, signature_b64: &str) -> Result<(), String> {
    let key = public_key(key)?;
    let signature = signature(signature_b64)?;
    key.verify_strict(text.as_bytes(), &signature).map_err(|_| "the device signature does not verify".to_owned())
}

/// One signed confirmation as the proof endpoint returns it, and as
/// `handover-agent verify` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedProof {
    /// The record's canonical text, as it arrived.
    pub record: String,
    /// Ed25519 over the record's text, base64.
    pub signature: String,
    pub device_id: DeviceId,
    /// The device's registered public key, base64.
    pub public_key: String,
}

/// What a check of a [`SignedProof`] found: the record, read.
pub fn check_proof(proof: &SignedProof) -> Result<SignedRecord, String> {
    verify(&proof.public_key, &proof.record, &proof.signature)?;
    let record = SignedRecord::parse(&proof.record).ok_or("the record is not a canonical signed record")?;
    if record.format != RECORD_FORMAT {
        return Err(format!("unknown record format {:?}", record.format));
    }
    if record.device_id != proof.device_id {
        return Err(format!("the record names device {}, the proof {}", record.device_id, proof.device_id));
    }
    Ok(record)
}

/// Photos a handheld may attach, recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    Jpeg,
    Png,
    Webp,
}

/// The largest photo a confirmation may carry (the page downscales to far less).
pub const MAX_PHOTO_BYTES: u64 = 4 * 1024 * 1024;

impl ImageKind {
    pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
        match bytes {
            [0xFF, 0xD8, 0xFF, ..] => Some(ImageKind::Jpeg),
            [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(ImageKind::Png),
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(ImageKind::Webp),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Webp => "image/webp",
        }
    }
}

/// A photo's bytes, checked as the handheld keeps them and as the server
/// accepts them: a known image format, within the size limit.
pub fn check_photo(bytes: &[u8]) -> Result<ImageKind, String> {
    if bytes.len() as u64 > MAX_PHOTO_BYTES {
        return Err(format!("a photo is at most {} MiB", MAX_PHOTO_BYTES / 1024 / 1024));
    }
    ImageKind::sniff(bytes).ok_or_else(|| "a photo is a JPEG, PNG or WebP image".to_owned())
}

/// Digits in a customer's handover code.
pub const HANDOVER_CODE_DIGITS: usize = 6;

/// The code as entered at the door: digits only, spaces and dashes ignored.
pub fn normalise_code(entered: &str) -> Option<String> {
    let digits: String = entered.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    (digits.len() == HANDOVER_CODE_DIGITS && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The slow hash a handheld receives instead of the code: argon2id with the
/// crate's default cost (19 MiB, 2 passes), as a PHC string with its salt.
/// One guess costs tens of milliseconds, so a lost handheld gives up its
/// customers' codes only to hours of work per code (see docs/security.md).
pub fn hash_code(code: &str, salt: &[u8; 16]) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let salt = SaltString::encode_b64(salt).map_err(|err| err.to_string())?;
    argon2::Argon2::default()
        .hash_password(code.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| err.to_string())
}

/// Whether `entered` is the code behind `hash` (from [`hash_code`]).
pub fn code_matches(hash: &str, entered: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
    let Some(code) = normalise_code(entered) else { return false };
    PasswordHash::new(hash)
        .is_ok_and(|parsed| argon2::Argon2::default().verify_password(code.as_bytes(), &parsed).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Position;

    fn signed(seq: u64) -> Confirmation {
        let mut confirmation = Confirmation::delivered(DeliveryId::from_seq(4), 1, 2, "Front desk");
        confirmation.device_seq = Some(seq);
        confirmation.prev_hash = Some(CHAIN_START.to_owned());
        confirmation.position = Some(Position { lat: 55.75581234567, lon: 37.6173, accuracy_m: Some(12.34) });
        confirmation
    }

    #[test]
    fn a_record_reads_back_from_its_own_text_and_from_nothing_else() {
        let device = DeviceId::parse("phone-1").expect("an id");
        let record = SignedRecord::of(&signed(1), &device).expect("a record");
        assert_eq!(record.lat.as_deref(), Some("55.7558123"));
        assert_eq!(record.accuracy_m.as_deref(), Some("12.3"));
        let text = record.text();
        assert_eq!(SignedRecord::parse(&text), Some(record));
        assert_eq!(SignedRecord::parse(&text.replace(",\"", ", \"")), None, "spaced text is not canonical");
    }

    #[test]
    fn the_same_confirmation_after_a_json_round_trip_gives_the_same_record() {
        let device = DeviceId::parse("phone-1").expect("an id");
        let sent = signed(3);
        let received: Confirmation =
            serde_json::from_str(&serde_json::to_string(&sent).expect("json")).expect("read back");
        assert_eq!(
            SignedRecord::of(&sent, &device).expect("a record").text(),
            SignedRecord::of(&received, &device).expect("a record").text()
        );
    }

    #[test]
    fn a_signature_verifies_over_its_record_only_and_under_its_key_only() {
        let (key, other) = (DeviceKey::from_secret([7; 32]), DeviceKey::from_secret([8; 32]));
        let device = DeviceId::parse("phone-1").expect("an id");
        let text = SignedRecord::of(&signed(1), &device).expect("a record").text();
        let signature = key.sign(&text);
        assert_eq!(verify(&key.public_key(), &text, &signature), Ok(()));
        assert!(verify(&other.public_key(), &text, &signature).is_err(), "another device's key");
        assert!(verify(&key.public_key(), &text.replace("Front desk", "Back door"), &signature).is_err());
        let proof = SignedProof { record: text, signature, device_id: device, public_key: key.public_key() };
        assert_eq!(check_proof(&proof).map(|record| record.device_seq), Ok(1));
        let elsewhere = SignedProof { device_id: DeviceId::parse("phone-2").expect("an id"), ..proof };
        assert!(check_proof(&elsewhere).is_err(), "a record names the device it came from");
    }

    #[test]
    fn photos_are_recognised_by_their_bytes() {
        assert_eq!(check_photo(&[0xFF, 0xD8, 0xFF, 0xE0, 0]), Ok(ImageKind::Jpeg));
        assert_eq!(check_photo(b"RIFF\x10\0\0\0WEBPVP8 "), Ok(ImageKind::Webp));
        assert!(check_photo(b"GIF89a").is_err());
        assert!(check_photo(b"<svg></svg>").is_err());
    }

    #[test]
    fn a_weak_key_is_refused() {
        // The identity point: every signature "verifies" under it.
        let identity = STANDARD.encode([1u8].iter().chain([0u8; 31].iter()).copied().collect::<Vec<u8>>());
        assert!(public_key(&identity).is_err());
        assert!(public_key(&DeviceKey::from_secret([1; 32]).public_key()).is_ok());
    }

    #[test]
    fn a_handover_code_matches_its_hash_and_nothing_else() {
        let hash = hash_code("042517", &[3; 16]).expect("a hash");
        assert!(!hash.contains("042517"), "the hash does not carry the code");
        assert!(code_matches(&hash, "042 517"));
        assert!(!code_matches(&hash, "042518"));
        assert!(!code_matches(&hash, ""));
        assert!(!code_matches("not a hash", "042517"));
    }
}
