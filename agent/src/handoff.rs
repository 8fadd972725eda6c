//! `confirm` and `fail` while the daemon runs. The daemon holds the local store
//! (sled allows one process), so a command that finds the store in use hands
//! its capture to the daemon's page instead of failing: the daemon saves it
//! through the same capture path as its own forms, and syncs it at once.
//!
//! The daemon publishes where its page listens and a secret made at its start
//! in `DATA_DIR/daemon.json`, readable by its owner only. The file is read only
//! when the store is in use, that is while some process holds it, so a file left
//! by a daemon that was killed is never trusted on its own: a dead page refuses
//! the connection and the command says the store is in use.

use std::{io::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use handover_shared::sync::{FailureReason, Position};
use serde::{Deserialize, Serialize};

const FILE: &str = "daemon.json";
/// The header that carries the daemon's secret.
pub const TOKEN_HEADER: &str = "x-handover-token";
/// The page's route for captures handed over.
pub const CAPTURE_PATH: &str = "/capture";

/// Where a running daemon takes captures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Door {
    /// `http://127.0.0.1:PORT`.
    pub page: String,
    pub token: String,
}

/// A capture handed to the daemon: what `confirm` or `fail` was given. The
/// fields added with proof of delivery are left out when empty, so that a
/// plain capture still reads at a daemon started from an older build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum Capture {
    Delivered {
        delivery_id: String,
        recipient: String,
        quantity: Option<u32>,
        empties: u32,
        note: Option<String>,
        /// The photo's bytes, base64: the daemon checks them as the page's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        photo: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
        /// The customer's handover code as entered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    Failed {
        delivery_id: String,
        reason: FailureReason,
        note: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        photo: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
    },
}

/// The daemon's answer: the saved confirmation's id, or why nothing was saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Saved(String),
    /// Saved, with something the courier must hear at once (how the handover
    /// code compared). Its own variant, so that an older command reading a
    /// plain save is not surprised.
    SavedWithNotice {
        confirmation_id: String,
        notice: String,
    },
    Refused(String),
}

/// Writes `door` for commands run beside this daemon (owner-only, replaced whole).
pub fn publish(dir: &Path, door: &Door) -> anyhow::Result<()> {
    let path = dir.join(FILE);
    let partial = dir.join(format!("{FILE}.partial"));
    // A leftover from a crash may carry any mode: it goes, and the file is
    // made anew, owner-only whatever the umask, before the secret is written.
    match std::fs::remove_file(&partial) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing {}", partial.display()))
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial).with_context(|| format!("writing {}", partial.display()))?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(&serde_json::to_vec(door)?)?;
    file.sync_all()?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
}

/// Hands `capture` to the daemon of `dir`. `Ok(None)` when no daemon answers
/// there (none published, or it is gone): the caller reports the store in use.
pub fn send(dir: &Path, capture: &Capture, timeout: Duration) -> anyhow::Result<Option<Answer>> {
    let Ok(raw) = std::fs::read(dir.join(FILE)) else {
        return Ok(None);
    };
    let door: Door = serde_json::from_slice(&raw).context("the daemon's door file is unreadable")?;
    let client = reqwest::blocking::Client::builder().timeout(timeout).no_proxy().build()?;
    let response = match client
        .post(format!("{}{CAPTURE_PATH}", door.page))
        .header(TOKEN_HEADER, &door.token)
        .json(capture)
        .send()
    {
        Ok(response) => response,
        Err(err) if err.is_connect() => return Ok(None),
        Err(err) => return Err(err).context("handing the capture to the daemon"),
    };
    let status = response.status();
    let answer = response.json::<Answer>();
    match answer {
        Ok(answer) => Ok(Some(answer)),
        Err(_) => anyhow::bail!("the daemon answered {status} to the capture; nothing is known to be saved"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_reads_back_as_sent_and_unknown_fields_are_refused() {
        let sent = Capture::Failed {
            delivery_id: "D-000001".into(),
            reason: FailureReason::Refused,
            note: None,
            photo: None,
            position: None,
        };
        let wire = serde_json::to_string(&sent).expect("encodes");
        assert!(wire.contains(r#""outcome":"failed""#), "{wire}");
        assert!(!wire.contains("photo") && !wire.contains("position"), "empty evidence is left out: {wire}");
        assert!(matches!(serde_json::from_str(&wire), Ok(Capture::Failed { reason: FailureReason::Refused, .. })));
        let extra = r#"{"outcome":"delivered","delivery_id":"D-000001","recipient":"A","quantity":null,"empties":0,"note":null,"x":1}"#;
        assert!(serde_json::from_str::<Capture>(extra).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn the_door_is_readable_by_its_owner_only_and_a_missing_one_means_no_daemon() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("a temporary dir");
        let capture = Capture::Failed {
            delivery_id: "D-000001".into(),
            reason: FailureReason::Refused,
            note: None,
            photo: None,
            position: None,
        };
        assert!(send(dir.path(), &capture, Duration::from_secs(1)).expect("no error").is_none());
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let page = format!("http://{}", closed.local_addr().expect("an address"));
        drop(closed);
        publish(dir.path(), &Door { page, token: "secret".into() }).expect("published");
        let mode = std::fs::metadata(dir.path().join(FILE)).expect("written").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A door nobody answers at is no daemon.
        assert!(send(dir.path(), &capture, Duration::from_secs(1)).expect("no error").is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_leftover_readable_partial_never_publishes_a_readable_door() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("a temporary dir");
        let partial = dir.path().join(format!("{FILE}.partial"));
        std::fs::write(&partial, b"left by a crash").expect("written");
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).expect("made readable");
        publish(dir.path(), &Door { page: "http://127.0.0.1:1".into(), token: "secret".into() }).expect("published");
        let mode = std::fs::metadata(dir.path().join(FILE)).expect("written").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret is never readable by others");
        assert!(!partial.exists());
    }
}
