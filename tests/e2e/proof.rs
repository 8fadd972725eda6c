//! Proof of delivery end to end: a handheld's signed confirmation with a
//! photo, a position and the customer's code, shown on the customer's
//! receipt and verified offline; photo uploads that resume, refuse a wrong
//! digest and a delivery the uploader does not hold; and signed pushes that
//! are tampered with, replayed, reordered or left with a gap. The real
//! server and agent binaries, over real TLS, on whichever store the run is on.

use handover_shared::proof::{sha256_hex, DeviceKey, SignedRecord, CHAIN_START};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    helpers::{binary, Sandbox, TestServer, DEMO_PASSWORD},
    sync::push,
};

/// A JPEG as far as its bytes say, large enough for three chunks of 256 KiB.
fn photo_bytes(seed: u8) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend((0..600_000u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}

/// A demo server with one planned delivery, D-000001 of 2 TC-100 for C1;
/// returns it with the dispatcher's token and the courier who holds it.
async fn planned(sandbox: &Sandbox) -> (TestServer, String, String) {
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 2).await;
    server.plan(&dispatcher).await;
    let delivery = server.delivery(&dispatcher, "D-000001").await;
    let courier = delivery["assignee"].as_str().expect("a courier").to_owned();
    (server, dispatcher, courier)
}

async fn put_chunk(
    server: &TestServer,
    token: &str,
    delivery: &str,
    digest: &str,
    bytes: &[u8],
    first: usize,
    len: usize,
) -> (StatusCode, Value) {
    let chunk = bytes[first..first + len].to_vec();
    let answer = server
        .client
        .put(format!("{}/api/v1/deliveries/{delivery}/photos/{digest}", server.url))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("bytes {first}-{}/{}", first + len - 1, bytes.len()))
        .body(chunk)
        .send()
        .await
        .expect("the server answers");
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_signed_confirmation_with_photo_position_and_code_shows_on_the_receipt_and_verifies_offline() {
    let sandbox = Sandbox::new();
    let (server, dispatcher, courier) = planned(&sandbox).await;
    let customer = server.token("cust1").await;
    let receipt = server.receipt(&customer, "R-000001").await;
    let code = receipt["handover_code"].as_str().expect("the customer sees its code").to_owned();
    assert_eq!(server.receipt(&dispatcher, "R-000001").await.get("handover_code"), None, "only the customer does");

    let login = sandbox.agent_login(&courier, &server.url, &courier, DEMO_PASSWORD, Some("hh-proof"));
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    sandbox.agent_ok(&courier, &["pull"]);
    let photo = sandbox.path("door.jpg");
    std::fs::write(&photo, photo_bytes(1)).expect("a photo file");
    let confirm = sandbox.agent(
        &courier,
        &[
            "confirm",
            "D-000001",
            "--recipient",
            "Front desk",
            "--photo",
            photo.to_str().expect("a path"),
            "--lat",
            "55.7558",
            "--lon",
            "37.6173",
            "--code",
            &code,
        ],
        None,
    );
    assert!(confirm.status.success(), "{}", String::from_utf8_lossy(&confirm.stderr));
    assert!(String::from_utf8_lossy(&confirm.stderr).contains("matches"), "the handheld checks the code offline");
    sandbox.agent_ok(&courier, &["sync"]);

    let receipt = server.receipt(&customer, "R-000001").await;
    let proof = &receipt["proof"];
    assert_eq!(receipt["delivered"], true, "{receipt}");
    assert_eq!(
        (&proof["code_verified"], &proof["device_signature"], &proof["device_seq"], &proof["photo_received"]),
        (&json!(true), &json!("verified"), &json!(1), &json!(true)),
        "{proof}"
    );
    assert_eq!(proof["position"]["lat"], 55.7558);
    let digest = proof["photo_digest"].as_str().expect("a photo digest");
    let image = server
        .client
        .get(format!("{}/api/v1/receipts/R-000001/images/{digest}", server.url))
        .bearer_auth(&customer)
        .send()
        .await
        .expect("an answer");
    assert_eq!(image.headers()["content-type"], "image/jpeg");
    assert_eq!(image.bytes().await.expect("the photo").to_vec(), photo_bytes(1), "the photo reached the server whole");
    let other_customer = server.token("cust2").await;
    let (status, _) = server.get(&format!("/api/v1/receipts/R-000001/images/{digest}"), Some(&other_customer)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only to whom may see the receipt");

    // The signed record, checked offline by the agent's verifier.
    let (status, signed) = server.get("/api/v1/receipts/R-000001/proof", Some(&customer)).await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let file = sandbox.path("proof.json");
    std::fs::write(&file, signed.to_string()).expect("written");
    let verify = std::process::Command::new(binary("handover-agent"))
        .args(["verify", file.to_str().expect("a path")])
        .output()
        .expect("the verifier runs");
    assert!(
        verify.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let tampered = signed.to_string().replace("Front desk", "Back door");
    std::fs::write(&file, tampered).expect("written");
    let verify = std::process::Command::new(binary("handover-agent"))
        .args(["verify", file.to_str().expect("a path")])
        .output()
        .expect("the verifier runs");
    assert!(!verify.status.success(), "a tampered record does not verify");
}

#[tokio::test]
async fn photo_uploads_resume_refuse_a_wrong_digest_and_a_delivery_not_held_and_store_a_photo_once() {
    let sandbox = Sandbox::new();
    let (server, _dispatcher, courier) = planned(&sandbox).await;
    let session = server.login(&courier, DEMO_PASSWORD, Some("hh-uploads")).await;
    let (token, device) = (session.access_token, session.device_id.to_string());
    let bytes = photo_bytes(2);
    let digest = sha256_hex(&bytes);
    let path = format!("/api/v1/deliveries/D-000001/photos/{digest}");
    // Nothing names the photo yet: it follows its confirmation.
    let (status, _) = server.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut confirmation = handover_shared::sync::Confirmation::delivered(
        handover_shared::DeliveryId::parse("D-000001").expect("an id"),
        1,
        2,
        "Front desk",
    );
    confirmation.photo_digest = Some(digest.clone());
    let confirmation = serde_json::to_value(&confirmation).expect("json");
    assert_eq!(push(&server, &token, &device, vec![confirmation]).await, vec![verdict("accepted", None)]);

    // Other bytes under its digest are refused whole, and dropped.
    let other = photo_bytes(9);
    let (status, wrong) = put_chunk(&server, &token, "D-000001", &digest, &other, 0, other.len()).await;
    assert_eq!((status, &wrong["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("photo_digest_mismatch")));
    let (status, state) = server.get(&path, Some(&token)).await;
    assert_eq!((status, &state["received"], &state["complete"]), (StatusCode::OK, &json!(0), &json!(false)));

    let (status, first) = put_chunk(&server, &token, "D-000001", &digest, &bytes, 0, 262_144).await;
    assert_eq!((status, &first["received"]), (StatusCode::OK, &json!(262_144)), "{first}");
    // Cut off: the handheld asks where the upload stands and resumes there.
    let (_, state) = server.get(&path, Some(&token)).await;
    assert_eq!(state["received"], 262_144);
    let (status, misplaced) = put_chunk(&server, &token, "D-000001", &digest, &bytes, 0, 1000).await;
    assert_eq!((status, &misplaced["error"]["code"]), (StatusCode::CONFLICT, &json!("upload_offset")));
    let (status, _) = put_chunk(&server, &token, "D-000001", &digest, &bytes, 262_144, 262_144).await;
    assert_eq!(status, StatusCode::OK);
    let rest = bytes.len() - 524_288;
    let (status, done) = put_chunk(&server, &token, "D-000001", &digest, &bytes, 524_288, rest).await;
    assert_eq!((status, &done["complete"]), (StatusCode::OK, &json!(true)), "{done}");
    let (_, again) = server.get(&path, Some(&token)).await;
    assert_eq!(again["complete"], true, "the same photo again is already there");
    let (status, again) = put_chunk(&server, &token, "D-000001", &digest, &bytes, 0, 1000).await;
    assert_eq!((status, &again["complete"]), (StatusCode::OK, &json!(true)), "stored once, not appended again");

    // Another courier of the branch holds nothing here, and no attempt
    // names any other photo.
    let other_courier = ["exp1", "exp2"].into_iter().find(|name| *name != courier).expect("another expediter");
    let other_token = server.token(other_courier).await;
    let (status, refused) = put_chunk(&server, &other_token, "D-000001", &digest, &bytes, 0, 1000).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_found")), "{refused}");
    let unnamed = sha256_hex(&other);
    let (status, _) = put_chunk(&server, &token, "D-000001", &unnamed, &other, 0, 1000).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a photo no attempt names");
}

#[tokio::test]
async fn an_agent_killed_mid_upload_resumes_the_photo_at_its_next_sync() {
    let sandbox = Sandbox::new();
    let (server, dispatcher, courier) = planned(&sandbox).await;
    let login = sandbox.agent_login(&courier, &server.url, &courier, DEMO_PASSWORD, Some("hh-kill"));
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    sandbox.agent_ok(&courier, &["pull"]);
    let photo = sandbox.path("door.jpg");
    std::fs::write(&photo, photo_bytes(3)).expect("a photo file");
    sandbox.agent_ok(
        &courier,
        &["confirm", "D-000001", "--recipient", "Front desk", "--photo", photo.to_str().expect("a path")],
    );
    // The process ends on the spot after its first chunk, like a kill -9.
    let crashed = sandbox
        .agent_command(&courier, &["sync"])
        .env("FAILPOINTS", "agent.mid_photo_upload=return(exit)")
        .output()
        .expect("the agent runs");
    assert_eq!(crashed.status.code(), Some(handover_shared::failpoints::EXIT_STATUS));
    let digest = sha256_hex(&photo_bytes(3));
    let token = server.token(&courier).await;
    let (_, state) = server.get(&format!("/api/v1/deliveries/D-000001/photos/{digest}"), Some(&token)).await;
    assert_eq!((&state["received"], &state["complete"]), (&json!(262_144), &json!(false)), "cut after one chunk");

    sandbox.agent_ok(&courier, &["sync"]);
    let (_, state) = server.get(&format!("/api/v1/deliveries/D-000001/photos/{digest}"), Some(&token)).await;
    assert_eq!(state["complete"], true, "resumed and finished: {state}");
    let receipt = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!(receipt["proof"]["photo_received"], true, "{receipt}");
}

#[tokio::test]
async fn a_photo_upload_whose_every_connection_is_cut_mid_way_resumes_until_it_is_whole() {
    use crate::proxy::{Fault, FaultyProxy};
    let sandbox = Sandbox::new();
    let server = sandbox.start(&["--demo", "--http"]);
    let dispatcher = server.token("disp").await;
    server.confirm_order(&dispatcher, "C1", "TC-100", 2).await;
    server.plan(&dispatcher).await;
    let courier = server.delivery(&dispatcher, "D-000001").await["assignee"].as_str().expect("a courier").to_owned();
    let proxy = FaultyProxy::start(server.addr(), 0);
    let url = format!("http://{}", proxy.addr);
    let login = ["login", "--server", url.as_str(), "--username", courier.as_str(), "--password-stdin"];
    let login = sandbox.agent(&courier, &login, Some(&format!("{DEMO_PASSWORD}\n")));
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    sandbox.agent_ok(&courier, &["pull"]);
    let photo = sandbox.path("door.jpg");
    std::fs::write(&photo, photo_bytes(4)).expect("a photo file");
    sandbox.agent_ok(
        &courier,
        &["confirm", "D-000001", "--recipient", "Front desk", "--photo", photo.to_str().expect("a path")],
    );

    // Every connection is cut after 400 KB: the 600 KB photo can only get
    // through by resuming where each cut left it, never by starting over.
    proxy.set_fault(Fault::CutRequest { after_bytes: 400_000 });
    let token = server.token(&courier).await;
    let digest = sha256_hex(&photo_bytes(4));
    let state_path = format!("/api/v1/deliveries/D-000001/photos/{digest}");
    let mut syncs = 0;
    loop {
        syncs += 1;
        let _ = sandbox.agent(&courier, &["sync"], None);
        let (_, state) = server.get(&state_path, Some(&token)).await;
        if state["complete"] == true {
            break;
        }
        assert!(syncs < 6, "still not whole after {syncs} syncs: {state}");
    }
    assert!(proxy.tally().faults() > 0, "the proxy cut connections");
    let stored = server
        .client
        .get(format!("{}/api/v1/receipts/R-000001/images/{digest}", server.url))
        .bearer_auth(&dispatcher)
        .send()
        .await
        .expect("an answer")
        .bytes()
        .await
        .expect("the photo");
    assert_eq!(stored.to_vec(), photo_bytes(4), "whole, byte for byte");
    let status: Value = serde_json::from_str(&sandbox.agent_ok(&courier, &["status", "--json"])).expect("JSON");
    assert_eq!(status["photos_waiting"], 0, "dropped once stored: {status}");
}

/// A courier's raw-API handheld with its own key.
struct Signer {
    device: String,
    key: DeviceKey,
    last: String,
}

impl Signer {
    /// A delivered confirmation of D-00000`delivery`, numbered `seq`, linked
    /// to `prev`, signed; `tamper` changes it after signing.
    fn signed(&self, id: u32, delivery: u64, seq: u64, prev: &str, code: Option<&str>) -> (Value, String) {
        let mut confirmation = handover_shared::sync::Confirmation::delivered(
            handover_shared::DeliveryId::from_seq(delivery),
            1,
            1,
            "Front desk",
        );
        confirmation.confirmation_id = format!("01936a00-0000-7000-8000-{id:012}");
        confirmation.handover_code = code.map(str::to_owned);
        confirmation.device_seq = Some(seq);
        confirmation.prev_hash = Some(prev.to_owned());
        let device = handover_shared::DeviceId::parse(self.device.clone()).expect("an id");
        let record = SignedRecord::of(&confirmation, &device).expect("a record").text();
        confirmation.device_signature = Some(self.key.sign(&record));
        (serde_json::to_value(&confirmation).expect("json"), sha256_hex(record.as_bytes()))
    }
}

fn verdict(status: &str, code: Option<&str>) -> (String, Option<String>) {
    (status.to_owned(), code.map(str::to_owned))
}

#[tokio::test]
async fn tampered_foreign_unsigned_replayed_and_reordered_pushes_are_refused_and_a_gap_shows() {
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();
    let dispatcher = server.token("disp").await;
    for _ in 0..3 {
        server.confirm_order(&dispatcher, "C1", "TC-100", 1).await;
    }
    server.plan(&dispatcher).await;
    let courier = "exp1";
    for id in ["D-000001", "D-000002", "D-000003"] {
        let (status, body) = server
            .post(&format!("/api/v1/deliveries/{id}/assign"), &json!({"assignee": courier}), Some(&dispatcher))
            .await;
        assert!(status.is_success(), "{body}");
    }
    let signer = Signer { device: "hh-raw".into(), key: DeviceKey::from_secret([9; 32]), last: CHAIN_START.into() };
    let login = json!({"username": courier, "password": DEMO_PASSWORD, "device_id": signer.device, "device_key": signer.key.public_key()});
    let (status, session) = server.post("/api/v1/auth/login", &login, None).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let token = session["access_token"].as_str().expect("a token").to_owned();
    let other_key = json!({"username": courier, "password": DEMO_PASSWORD, "device_id": signer.device, "device_key": DeviceKey::from_secret([8; 32]).public_key()});
    let (status, refused) = server.post("/api/v1/auth/login", &other_key, None).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::CONFLICT, &json!("device_key_mismatch")));

    let (mut tampered, _) = signer.signed(1, 1, 1, &signer.last, None);
    tampered["recipient"] = json!("Back door");
    let foreign =
        Signer { key: DeviceKey::from_secret([7; 32]), device: signer.device.clone(), last: CHAIN_START.into() };
    let (foreign, _) = foreign.signed(2, 1, 1, CHAIN_START, None);
    let (mut unsigned, _) = signer.signed(3, 1, 1, CHAIN_START, None);
    for field in ["device_seq", "prev_hash", "device_signature"] {
        unsigned.as_object_mut().expect("an object").remove(field);
    }
    let bad = verdict("rejected", Some("bad_signature"));
    assert_eq!(
        push(&server, &token, &signer.device, vec![tampered, foreign, unsigned]).await,
        vec![bad.clone(), bad.clone(), bad]
    );

    // Number 1 with the wrong code, then number 3 (2 is missing), then a
    // second "number 1", then a "number 2" that 3 does not follow.
    let (first, first_hash) = signer.signed(4, 1, 1, CHAIN_START, Some("000000"));
    let (third, _) = signer.signed(5, 3, 3, &sha256_hex(b"some other record"), None);
    let (replayed, _) = signer.signed(6, 2, 1, CHAIN_START, None);
    let (second, _) = signer.signed(7, 2, 2, &first_hash, None);
    let answers = push(&server, &token, &signer.device, vec![first, third, replayed, second]).await;
    assert_eq!(
        answers,
        vec![
            verdict("accepted", None),
            verdict("accepted", None),
            verdict("rejected", Some("sequence_reused")),
            verdict("rejected", Some("chain_broken")),
        ]
    );
    let receipt = server.receipt(&dispatcher, "R-000001").await;
    assert_eq!(
        (&receipt["proof"]["code_verified"], &receipt["proof"]["device_signature"]),
        (&json!(false), &json!("verified"))
    );
    let receipt = server.receipt(&dispatcher, "R-000003").await;
    assert_eq!(receipt["proof"].get("code_verified"), None, "no code entered: {receipt}");

    // The dashboard shows the record that never arrived.
    let page = crate::authz::page_session(&server, &sandbox, Some("disp")).await;
    let dashboard =
        page.get(format!("{}/dashboard", server.url)).send().await.expect("the dashboard").text().await.expect("html");
    let row = dashboard.split("id=\"device-hh-raw\"").nth(1).expect("the device's row");
    let row = row.split("</tr>").next().unwrap_or_default();
    assert!(row.contains("signed, up to 3") && row.contains(">2<"), "{row}");
}
