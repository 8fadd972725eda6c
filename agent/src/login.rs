//! `handover-agent login`: opens a session for this handheld and registers its
//! device key with the server. The key is made (once) and kept before the
//! login is sent, but stays pending, signing nothing, until a login's answer
//! is in: only then does the store note it as registered for the device, in
//! the transaction that saves the session and signs what was queued unsigned.
//! A login that fails, or whose answer is lost, leaves captures unsigned,
//! which the server takes from a device that registered no key; a key it did
//! register (the answer lost) makes it answer `bad_signature`, which the
//! handheld keeps queued until the next login.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use handover_shared::{api::LoginRequest, DeviceId, ErrorCode, Role, Username};

use crate::{
    chain,
    client::{CallError, Client},
    store::{LocalStore, Session},
};

/// What the courier gave `login`.
#[derive(Debug)]
pub struct Credentials {
    pub servers: Vec<String>,
    pub ca: Option<PathBuf>,
    pub username: String,
    pub password: String,
    /// The device id asked for; by default the session's, or a new one.
    pub device_id: Option<DeviceId>,
}

/// A login kept on the handheld.
#[derive(Debug)]
pub struct LoggedIn {
    pub username: Username,
    pub role: Role,
    pub device_id: DeviceId,
    /// Queued confirmations saved unsigned and signed by this login.
    pub signed: usize,
}

/// Logs in and keeps the session; see the module's docs for the key.
pub fn login(store: &LocalStore, credentials: Credentials, timeout: Duration) -> anyhow::Result<LoggedIn> {
    let Credentials { servers, ca, username, password, device_id } = credentials;
    let device_id = match device_id {
        Some(device_id) => device_id,
        None => match store.session() {
            Ok(previous) => previous.device_id,
            Err(_) => DeviceId::parse(format!("hh-{}", uuid::Uuid::new_v4().simple()))?,
        },
    };
    // Asked before anything is sent; the answer's device is checked again
    // when the session is kept (the server may answer another id).
    if let Some(blocked) = store.device_change_blocked(&device_id)? {
        anyhow::bail!("login refused: {blocked}");
    }
    // Kept before it is sent, so that a login whose answer is lost (and
    // which the server may have registered the key for) is retried with it.
    let key = store.device_key_or_new(chain::new_device_secret)?;
    let client = Client::new(&servers, ca.as_deref(), timeout)?;
    let request =
        LoginRequest { username, password, device_id: Some(device_id.clone()), device_key: Some(key.public_key()) };
    let answer = client.login(&request).map_err(|err| match err {
        CallError::Refused { code, .. } if ErrorCode::parse(&code) == Some(ErrorCode::DeviceKeyMismatch) => {
            anyhow::anyhow!(
                "login refused: device {device_id} registered another signing key with the server (this handheld's \
                 store was made anew, or the id is another handheld's), and a device's key never changes: log in \
                 under a new device id, or without --device-id for one from the server"
            )
        }
        other => anyhow::anyhow!("login failed: {other}"),
    })?;
    let ca = ca.map(|path| std::fs::canonicalize(&path).unwrap_or(path).display().to_string());
    let session = Session {
        servers,
        ca,
        username: answer.username.clone(),
        device_id: answer.device_id.clone(),
        access_token: answer.access_token,
        refresh_token: answer.refresh_token,
    };
    // The server registers the key of a courier's handheld only (whoever
    // else logs in on one signs nothing it would check).
    let registered = answer.role.is_courier().then(|| key.public_key());
    let signed = store
        .complete_login(&session, registered.as_deref())
        .with_context(|| format!("login refused: the server answered for device {}", answer.device_id))?;
    Ok(LoggedIn { username: answer.username, role: answer.role, device_id: answer.device_id, signed })
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex, PoisonError},
        thread::JoinHandle,
    };

    use handover_shared::api::{ErrorBody, ErrorDetail, LoginResponse};

    use super::*;
    use crate::store::tests::{confirmation, session_as};

    /// A server that gives every request the same answer and keeps the
    /// bodies it was sent.
    struct OneAnswer {
        url: String,
        server: Arc<tiny_http::Server>,
        bodies: Arc<Mutex<Vec<String>>>,
        thread: Option<JoinHandle<()>>,
    }

    impl OneAnswer {
        fn start(status: u16, body: String) -> OneAnswer {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("a port"));
            let url = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
            let bodies = Arc::new(Mutex::new(Vec::new()));
            let (serving, seen) = (Arc::clone(&server), Arc::clone(&bodies));
            let thread = std::thread::spawn(move || {
                for mut request in serving.incoming_requests() {
                    let mut sent = String::new();
                    let _ = request.as_reader().read_to_string(&mut sent);
                    seen.lock().unwrap_or_else(PoisonError::into_inner).push(sent);
                    let _ = request.respond(tiny_http::Response::from_string(body.clone()).with_status_code(status));
                }
            });
            OneAnswer { url, server, bodies, thread: Some(thread) }
        }

        fn welcoming(role: Role, device: &str) -> OneAnswer {
            let answer = LoginResponse {
                access_token: "a".into(),
                refresh_token: "r".into(),
                expires_in: 900,
                role,
                username: Username::parse("exp1").expect("name"),
                device_id: DeviceId::parse(device).expect("id"),
            };
            OneAnswer::start(200, serde_json::to_string(&answer).expect("json"))
        }

        fn sent(&self) -> Vec<String> {
            self.bodies.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }
    }

    impl Drop for OneAnswer {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn credentials(server: &OneAnswer, device: Option<&str>) -> Credentials {
        Credentials {
            servers: vec![server.url.clone()],
            ca: None,
            username: "exp1".into(),
            password: "secret".into(),
            device_id: device.map(|id| DeviceId::parse(id).expect("id")),
        }
    }

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open");
        (dir, store)
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn a_refused_login_leaves_its_key_pending_and_captures_unsigned() {
        let (_dir, store) = store();
        store.complete_login(&session_as("hh-1"), None).expect("an earlier login, before device keys");
        let body = ErrorBody {
            error: ErrorDetail { code: "invalid_credentials".into(), message: "wrong".into(), problems: vec![] },
        };
        let server = OneAnswer::start(401, serde_json::to_string(&body).expect("json"));

        let failed = login(&store, credentials(&server, None), TIMEOUT).expect_err("refused");
        store.enqueue(&confirmation(1), None).expect("queued");

        assert!(failed.to_string().starts_with("login failed"), "{failed:#}");
        let key = store.device_key().expect("read").expect("kept for the next try");
        assert!(server.sent()[0].contains(&key.public_key()), "the login sent it");
        assert!(!store.outbox().expect("outbox")[0].is_signed(), "the server registered no key");
        assert!(!store.signing().expect("read"));
    }

    #[test]
    fn a_login_that_goes_through_registers_the_key_it_sent_and_signs_what_was_queued() {
        let (_dir, store) = store();
        store.complete_login(&session_as("hh-1"), None).expect("an earlier login");
        store.enqueue(&confirmation(1), None).expect("queued unsigned");
        let pending = store.device_key_or_new(|| Ok([3; 32])).expect("made by a login that failed");
        let server = OneAnswer::welcoming(Role::Expediter, "hh-1");

        let logged_in = login(&store, credentials(&server, None), TIMEOUT).expect("logged in");
        store.enqueue(&confirmation(2), None).expect("queued");

        assert_eq!((logged_in.device_id.as_str(), logged_in.signed), ("hh-1", 1));
        assert!(server.sent()[0].contains(&pending.public_key()), "the pending key is the one sent");
        let numbers: Vec<Option<u64>> = store.outbox().expect("outbox").iter().map(|c| c.device_seq).collect();
        assert_eq!(numbers, [Some(1), Some(2)]);
        assert!(store.signing().expect("read"));
    }

    #[test]
    fn a_login_whose_key_the_server_keeps_not_signs_nothing() {
        let (_dir, store) = store();
        let server = OneAnswer::welcoming(Role::Dispatcher, "hh-1");

        login(&store, credentials(&server, Some("hh-1")), TIMEOUT).expect("logged in");
        store.enqueue(&confirmation(1), None).expect("queued");

        assert!(!store.outbox().expect("outbox")[0].is_signed());
    }

    #[test]
    fn a_login_under_another_device_id_is_refused_before_it_is_sent_while_signed_confirmations_wait() {
        let (_dir, store) = store();
        let server = OneAnswer::welcoming(Role::Expediter, "hh-1");
        login(&store, credentials(&server, Some("hh-1")), TIMEOUT).expect("logged in");
        store.enqueue(&confirmation(1), None).expect("queued, signed as hh-1");

        let refused = login(&store, credentials(&server, Some("hh-2")), TIMEOUT).expect_err("refused");

        assert_eq!(
            refused.to_string(),
            "login refused: 1 confirmation(s) signed as device hh-1 still wait; sync them first, or log in as hh-1"
        );
        assert_eq!(server.sent().len(), 1, "only the first login was sent");
        assert_eq!(store.session().expect("kept").device_id.as_str(), "hh-1");
        login(&store, credentials(&server, Some("hh-1")), TIMEOUT).expect("the same id is fine");
    }

    #[test]
    fn a_server_that_answers_another_device_id_is_not_followed_while_signed_confirmations_wait() {
        let (_dir, store) = store();
        let first = OneAnswer::welcoming(Role::Expediter, "hh-1");
        login(&store, credentials(&first, Some("hh-1")), TIMEOUT).expect("logged in");
        store.enqueue(&confirmation(1), None).expect("queued, signed as hh-1");
        let minting = OneAnswer::welcoming(Role::Expediter, "dev-9");

        let refused = login(&store, credentials(&minting, None), TIMEOUT).expect_err("refused");

        let why = format!("{refused:#}");
        assert!(why.contains("1 confirmation(s) signed as device hh-1 still wait"), "{why}");
        assert_eq!(store.session().expect("kept").device_id.as_str(), "hh-1");
    }
}
