//! `handover-agent verify FILE`: checks proof of delivery offline, with no
//! store and no server, so that anyone handed the file (a customer, an
//! auditor) can check it with nothing but this binary. The file is what
//! `GET /api/v1/receipts/{id}/proof` returns, or one signed proof of it.
//!
//! Each record must verify under the public key it names, be a canonical
//! signed record, and name the device it is filed under. Records of one
//! device with consecutive numbers must link: the later one's `prev_hash` is
//! the hash of the earlier one's text. Numbers that are not consecutive are
//! not a fault: a receipt's proof holds its own confirmations only, and the
//! device signed others in between.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context as _};
use handover_shared::{
    api::ReceiptProof,
    proof::{check_proof, sha256_hex, SignedProof, SignedRecord, CHAIN_START},
    sync::Outcome,
    DeviceId, ReceiptId,
};
use serde::Deserialize;

/// What `verify` reads.
#[derive(Deserialize)]
#[serde(untagged)]
enum ProofFile {
    Receipt(ReceiptProof),
    Single(SignedProof),
}

/// What a check found: a line per record, and every problem.
#[derive(Debug, Default)]
pub struct Verification {
    pub receipt: Option<ReceiptId>,
    pub lines: Vec<String>,
    pub problems: Vec<String>,
    /// Pairs of consecutive records whose link was checked.
    pub links_checked: usize,
}

impl Verification {
    /// Whether the file proves something and nothing in it failed.
    pub fn holds(&self) -> bool {
        self.problems.is_empty() && !self.lines.is_empty()
    }

    fn verdict(&self) -> String {
        if self.lines.is_empty() {
            return "verdict: NOT VERIFIED: the file holds no signed record, so it proves nothing".into();
        }
        if self.problems.is_empty() {
            return format!(
                "verdict: verified: {} record(s), each signed by its device's key, {} chain link(s) checked",
                self.lines.len(),
                self.links_checked
            );
        }
        format!("verdict: NOT VERIFIED: {} problem(s)", self.problems.len())
    }
}

/// Checks the text of a proof file.
pub fn check(text: &str) -> Result<Verification, String> {
    let file: ProofFile = serde_json::from_str(text).map_err(|_| {
        "the file is neither a receipt's proof ({\"receipt_id\", \"records\"}) nor one signed proof \
         ({\"record\", \"signature\", \"device_id\", \"public_key\"})"
            .to_owned()
    })?;
    let (receipt, proofs) = match file {
        ProofFile::Receipt(proof) => (Some(proof.receipt_id), proof.records),
        ProofFile::Single(proof) => (None, vec![proof]),
    };
    let mut verification = Verification { receipt, ..Verification::default() };
    let mut verified = Vec::new();
    for (index, proof) in proofs.iter().enumerate() {
        match check_proof(proof) {
            Ok(record) => {
                verification.lines.push(format!("[ok] {}", describe(&record)));
                verified.push((proof, record));
            }
            Err(why) => {
                let line = format!("[FAILED] record {} (device {}): {why}", index + 1, proof.device_id);
                verification.lines.push(line.clone());
                verification.problems.push(line);
            }
        }
    }
    check_chains(&verified, &mut verification);
    Ok(verification)
}

/// One record in a line: who, which, what, when, and the digests of what it
/// carried.
fn describe(record: &SignedRecord) -> String {
    let outcome = match (record.outcome, record.reason) {
        (Outcome::Delivered, _) => "delivered".to_owned(),
        (Outcome::Failed, Some(reason)) => format!("failed ({})", reason.as_str()),
        (Outcome::Failed, None) => "failed".to_owned(),
    };
    let mut line = format!(
        "device {}, seq {}, {}, {outcome}, quantity {}",
        record.device_id, record.device_seq, record.delivery_id, record.quantity
    );
    if let Some(recipient) = &record.recipient {
        line.push_str(&format!(", recipient {recipient:?}"));
    }
    line.push_str(&format!(", captured {}", record.captured_at));
    if let (Some(lat), Some(lon)) = (&record.lat, &record.lon) {
        line.push_str(&format!(", at {lat},{lon}"));
        if let Some(metres) = &record.accuracy_m {
            line.push_str(&format!(" (±{metres} m)"));
        }
    }
    if let Some(digest) = &record.photo_sha256 {
        line.push_str(&format!(", photo sha256 {digest}"));
    }
    if let Some(digest) = &record.signature_sha256 {
        line.push_str(&format!(", signature sha256 {digest}"));
    }
    line
}

/// Checks the links between verified records of the same device.
fn check_chains(verified: &[(&SignedProof, SignedRecord)], verification: &mut Verification) {
    let mut by_device: BTreeMap<&DeviceId, Vec<(&SignedProof, &SignedRecord)>> = BTreeMap::new();
    for (proof, record) in verified {
        by_device.entry(&record.device_id).or_default().push((proof, record));
    }
    for (device, mut records) in by_device {
        let mut keys: Vec<&str> = records.iter().map(|(proof, _)| proof.public_key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() > 1 {
            // A device registers one key for good: two keys are two devices
            // claiming one id.
            verification.problems.push(format!("device {device}'s records are signed under {} keys", keys.len()));
        }
        records.sort_by_key(|(_, record)| record.device_seq);
        for (_, record) in records.iter().filter(|(_, record)| record.device_seq == 1) {
            if record.prev_hash != CHAIN_START {
                verification
                    .problems
                    .push(format!("record 1 of device {device} claims a predecessor (prev_hash {})", record.prev_hash));
            }
        }
        for pair in records.windows(2) {
            let [(earlier_proof, earlier), (later_proof, later)] = pair else { continue };
            if earlier.device_seq == later.device_seq {
                if earlier_proof.record != later_proof.record {
                    verification
                        .problems
                        .push(format!("device {device} signed two different records numbered {}", later.device_seq));
                }
            } else if later.device_seq == earlier.device_seq + 1 {
                verification.links_checked += 1;
                let expected = sha256_hex(earlier_proof.record.as_bytes());
                if later.prev_hash != expected {
                    verification.problems.push(format!(
                        "record {} of device {device} does not follow record {}: its prev_hash is {}, the hash of \
                         record {} is {expected}",
                        later.device_seq, earlier.device_seq, later.prev_hash, earlier.device_seq
                    ));
                }
            }
        }
    }
}

/// Reads, checks and reports `path`; fails when the proof does not hold.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let verification = check(&text).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
    if let Some(receipt) = &verification.receipt {
        println!("receipt {receipt}: {} signed record(s)", verification.lines.len());
    }
    for line in &verification.lines {
        println!("{line}");
    }
    for problem in verification.problems.iter().filter(|problem| !problem.starts_with("[FAILED]")) {
        println!("[FAILED] {problem}");
    }
    println!("{}", verification.verdict());
    if !verification.holds() {
        bail!("{} does not prove what it says", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use handover_shared::{proof::DeviceKey, sync::Confirmation, DeliveryId};
    use serde_json::json;

    use super::*;
    use crate::chain::ChainState;

    fn device() -> DeviceId {
        DeviceId::parse("hh-1").expect("an id")
    }

    /// `count` confirmations signed in one chain by one key, as the proof
    /// endpoint would list them.
    fn chained(count: u64, key: &DeviceKey) -> Vec<SignedProof> {
        let mut chain = ChainState::start();
        (1..=count)
            .map(|n| {
                let confirmation = Confirmation::delivered(DeliveryId::from_seq(n), 1, 2, "Front desk");
                let (signed, next) = chain.sign_next(&confirmation, key, &device()).expect("signed");
                chain = next;
                SignedProof {
                    record: SignedRecord::of(&signed, &device()).expect("a record").text(),
                    signature: signed.device_signature.expect("a signature"),
                    device_id: device(),
                    public_key: key.public_key(),
                }
            })
            .collect()
    }

    fn receipt_file(records: &[SignedProof]) -> String {
        json!({"receipt_id": "R-000001", "records": records}).to_string()
    }

    #[test]
    fn a_receipts_chained_records_verify_with_their_links() {
        let key = DeviceKey::from_secret([1; 32]);
        let verification = check(&receipt_file(&chained(3, &key))).expect("readable");

        assert!(verification.holds(), "{:?}", verification.problems);
        assert_eq!((verification.lines.len(), verification.links_checked), (3, 2));
        assert!(verification.lines[0].starts_with("[ok] device hh-1, seq 1, D-000001, delivered, quantity 2"));
        assert!(verification.lines[0].contains(r#"recipient "Front desk""#), "{}", verification.lines[0]);
        assert_eq!(verification.receipt.as_ref().map(ReceiptId::as_str), Some("R-000001"));
    }

    #[test]
    fn one_signed_proof_on_its_own_verifies() {
        let key = DeviceKey::from_secret([1; 32]);
        let single = serde_json::to_string(&chained(1, &key)[0]).expect("json");
        let verification = check(&single).expect("readable");
        assert!(verification.holds(), "{:?}", verification.problems);
        assert_eq!(verification.receipt, None);
    }

    #[test]
    fn a_tampered_record_fails() {
        let key = DeviceKey::from_secret([1; 32]);
        let mut records = chained(2, &key);
        records[1].record = records[1].record.replace("Front desk", "Back door");

        let verification = check(&receipt_file(&records)).expect("readable");

        assert!(!verification.holds());
        assert_eq!(verification.problems.len(), 1, "{:?}", verification.problems);
        assert!(verification.problems[0].contains("does not verify"), "{:?}", verification.problems);
    }

    #[test]
    fn a_record_that_does_not_follow_its_predecessor_fails() {
        let key = DeviceKey::from_secret([1; 32]);
        let mut records = chained(3, &key);
        // Number 2 as signed in another history: the same key, another past.
        let stray = ChainState { next_seq: 2, last_hash: "ab".repeat(32) };
        let confirmation = Confirmation::delivered(DeliveryId::from_seq(9), 1, 1, "Someone else");
        let (signed, _) = stray.sign_next(&confirmation, &key, &device()).expect("signed");
        records[1] = SignedProof {
            record: SignedRecord::of(&signed, &device()).expect("a record").text(),
            signature: signed.device_signature.expect("a signature"),
            ..records[1].clone()
        };

        let verification = check(&receipt_file(&records)).expect("readable");

        assert!(!verification.holds());
        assert!(
            verification.problems.iter().any(|p| p.contains("record 2 of device hh-1 does not follow record 1")),
            "{:?}",
            verification.problems
        );
        assert!(
            verification.problems.iter().any(|p| p.contains("record 3 of device hh-1 does not follow record 2")),
            "{:?}",
            verification.problems
        );
    }

    #[test]
    fn two_records_under_one_number_fail_and_gaps_do_not() {
        let key = DeviceKey::from_secret([1; 32]);
        let records = chained(4, &key);
        let gapped = check(&receipt_file(&[records[0].clone(), records[3].clone()])).expect("readable");
        assert!(gapped.holds(), "other receipts' records in between: {:?}", gapped.problems);
        assert_eq!(gapped.links_checked, 0);

        let forked = chained(2, &DeviceKey::from_secret([2; 32]));
        let verification = check(&receipt_file(&[records[1].clone(), forked[1].clone()])).expect("readable");
        assert!(!verification.holds());
        assert!(verification.problems.iter().any(|p| p.contains("under 2 keys")), "{:?}", verification.problems);
        assert!(
            verification.problems.iter().any(|p| p.contains("two different records numbered 2")),
            "{:?}",
            verification.problems
        );
    }

    #[test]
    fn a_file_without_records_proves_nothing_and_another_document_is_refused() {
        let empty = check(&receipt_file(&[])).expect("readable");
        assert!(!empty.holds());
        assert!(empty.verdict().contains("proves nothing"));
        assert!(check(r#"{"receipt_id": 3}"#).is_err());
        assert!(check("not json").is_err());
    }
}
