//! The agent binary answers on its own. (This integration test also makes
//! `cargo test --workspace` build the binary that the end-to-end tests run.)

#[test]
fn the_agent_reports_its_version() {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_handover-agent")).arg("--version").output().expect("runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("handover-agent 0.1.0"));
}

/// A receipt's proof of two chained records by one key, as the server serves it.
fn proof_file(dir: &std::path::Path, tamper: bool) -> std::path::PathBuf {
    use handover_shared::{
        proof::{sha256_hex, DeviceKey, SignedProof, SignedRecord, CHAIN_START},
        sync::Confirmation,
        DeliveryId, DeviceId,
    };
    let key = DeviceKey::from_secret([4; 32]);
    let device = DeviceId::parse("hh-1").expect("an id");
    let mut prev_hash = CHAIN_START.to_owned();
    let records: Vec<SignedProof> = (1..=2)
        .map(|seq| {
            let mut confirmation = Confirmation::delivered(DeliveryId::from_seq(seq), 1, 2, "Front desk");
            confirmation.device_seq = Some(seq);
            confirmation.prev_hash = Some(prev_hash.clone());
            let record = SignedRecord::of(&confirmation, &device).expect("a record").text();
            prev_hash = sha256_hex(record.as_bytes());
            let signature = key.sign(&record);
            let record = if tamper && seq == 2 { record.replace("\"quantity\":2", "\"quantity\":1") } else { record };
            SignedProof { record, signature, device_id: device.clone(), public_key: key.public_key() }
        })
        .collect();
    let path = dir.join("proof.json");
    let file = serde_json::json!({"receipt_id": "R-000001", "records": records});
    std::fs::write(&path, file.to_string()).expect("written");
    path
}

#[test]
fn verify_passes_a_genuine_proof_and_fails_a_tampered_one_with_no_store_and_no_server() {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let verify = |tamper: bool| {
        std::process::Command::new(env!("CARGO_BIN_EXE_handover-agent"))
            .args(["--data-dir", dir.path().join("no-store").to_str().expect("UTF-8")])
            .arg("verify")
            .arg(proof_file(dir.path(), tamper))
            .output()
            .expect("runs")
    };

    let genuine = verify(false);
    let stdout = String::from_utf8_lossy(&genuine.stdout);
    assert!(genuine.status.success(), "{stdout}{}", String::from_utf8_lossy(&genuine.stderr));
    assert!(stdout.contains("[ok] device hh-1, seq 2, D-000002, delivered, quantity 2"), "{stdout}");
    assert!(stdout.contains("verdict: verified: 2 record(s)") && stdout.contains("1 chain link(s) checked"));

    let tampered = verify(true);
    let stdout = String::from_utf8_lossy(&tampered.stdout);
    assert!(!tampered.status.success());
    assert!(stdout.contains("[FAILED] record 2 (device hh-1)") && stdout.contains("NOT VERIFIED"), "{stdout}");
    assert!(!dir.path().join("no-store").exists(), "verify opens no store");
}
