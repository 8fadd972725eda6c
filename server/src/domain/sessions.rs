//! Login sessions and refresh-token rotation rules.
//!
//! A login opens a session bound to one device. Each refresh token is single
//! use: refreshing retires it and issues its successor in the same session.
//! Presenting a retired token again means that two parties hold the session's
//! tokens (a copied handheld, a stolen token), so the whole session is revoked;
//! the courier logs in again with the password.

use handover_shared::{DeviceId, Username};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::changes::ChangeSet;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: Uuid,
    pub username: Username,
    pub device_id: DeviceId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub revoke_reason: Option<RevokeReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Logout,
    DeviceRevoked,
    RefreshTokenReused,
}

/// One refresh token, stored under the SHA-256 of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub session_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub retired_at: Option<OffsetDateTime>,
}

/// What to do with a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Retire it and issue its successor.
    Rotate,
    /// A retired token came back: revoke the whole session.
    RevokeSession,
    Refuse(RefreshRefusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshRefusal {
    Unknown,
    Expired,
    SessionRevoked,
}

/// The rotation rule, shared by every store backend.
pub fn decide_refresh(token: Option<&RefreshToken>, session: Option<&Session>, now: OffsetDateTime) -> RefreshDecision {
    let (Some(token), Some(session)) = (token, session) else {
        return RefreshDecision::Refuse(RefreshRefusal::Unknown);
    };
    if session.revoked_at.is_some() {
        RefreshDecision::Refuse(RefreshRefusal::SessionRevoked)
    } else if token.retired_at.is_some() {
        RefreshDecision::RevokeSession
    } else if token.expires_at <= now {
        RefreshDecision::Refuse(RefreshRefusal::Expired)
    } else {
        RefreshDecision::Rotate
    }
}

/// The outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was retired and its successor now belongs to the session.
    Rotated(Session),
    /// The token had been used before; the session is now revoked.
    ReuseDetected(Session),
    Refused(RefreshRefusal),
}

/// Carries out [`decide_refresh`] for the token stored under `presented_hash`:
/// a rotation retires it and stores its successor under `successor_hash`; a
/// reuse revokes the session.
pub fn refresh(
    presented_hash: [u8; 32],
    token: Option<RefreshToken>,
    session: Option<Session>,
    successor: ([u8; 32], OffsetDateTime),
    now: OffsetDateTime,
) -> (RefreshOutcome, ChangeSet) {
    let mut changes = ChangeSet::default();
    let outcome = match (decide_refresh(token.as_ref(), session.as_ref(), now), token, session) {
        (RefreshDecision::Rotate, Some(mut token), Some(session)) => {
            token.retired_at = Some(now);
            let (successor_hash, expires_at) = successor;
            changes.refresh_tokens.push((presented_hash, token));
            changes
                .refresh_tokens
                .push((successor_hash, RefreshToken { session_id: session.id, expires_at, retired_at: None }));
            RefreshOutcome::Rotated(session)
        }
        (RefreshDecision::RevokeSession, _, Some(session)) => {
            let revoked = revoke(session, RevokeReason::RefreshTokenReused, now);
            changes.sessions.push(revoked.clone());
            RefreshOutcome::ReuseDetected(revoked)
        }
        (RefreshDecision::Refuse(refusal), _, _) => RefreshOutcome::Refused(refusal),
        // decide_refresh rotates or revokes only with both records present.
        _ => RefreshOutcome::Refused(RefreshRefusal::Unknown),
    };
    (outcome, changes)
}

/// Logout: the presented token is retired and its session revoked (each
/// once). `None` when the token or its session is unknown.
pub fn close(
    presented_hash: [u8; 32],
    token: Option<RefreshToken>,
    session: Option<Session>,
    now: OffsetDateTime,
) -> Option<(Session, ChangeSet)> {
    let (mut token, session) = (token?, session?);
    let mut changes = ChangeSet::default();
    if token.retired_at.is_none() {
        token.retired_at = Some(now);
        changes.refresh_tokens.push((presented_hash, token));
    }
    let session = if session.revoked_at.is_none() {
        let revoked = revoke(session, RevokeReason::Logout, now);
        changes.sessions.push(revoked.clone());
        revoked
    } else {
        session
    };
    Some((session, changes))
}

/// A lost handheld: every live session of the device is revoked. Returns the
/// ones it revoked.
pub fn revoke_device(sessions: Vec<Session>, now: OffsetDateTime) -> (Vec<Uuid>, ChangeSet) {
    let mut changes = ChangeSet::default();
    let revoked = sessions
        .into_iter()
        .filter(|session| session.revoked_at.is_none())
        .map(|session| {
            let id = session.id;
            changes.sessions.push(revoke(session, RevokeReason::DeviceRevoked, now));
            id
        })
        .collect();
    (revoked, changes)
}

/// Which account a device id belongs to: the first that logged in on it,
/// until an admin releases it. A device id is whatever the client says, so
/// without this another courier could log in under a colleague's handheld id,
/// overwrite its row on the dashboard, and be cut off with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBinding {
    pub device_id: DeviceId,
    pub username: Username,
    #[serde(with = "time::serde::rfc3339")]
    pub bound_at: OffsetDateTime,
}

/// A device's binding before and after a change (`None`: unbound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingChange {
    pub device_id: DeviceId,
    pub before: Option<DeviceBinding>,
    pub after: Option<DeviceBinding>,
}

/// A login on a device registered to another account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {0} is registered to another account; use your own handheld's id, or ask an admin to release it")]
pub struct DeviceInUse(pub DeviceId);

/// Opens a session with its first refresh token. A courier's handheld must
/// be the account's or nobody's, and its first login binds it; other
/// accounts (a browser, an integration) neither bind nor are checked, so that
/// nobody but a courier can claim a handheld's id ahead of it.
pub fn open(
    session: Session,
    refresh: ([u8; 32], RefreshToken),
    handheld: bool,
    binding: Option<DeviceBinding>,
    now: OffsetDateTime,
) -> Result<ChangeSet, DeviceInUse> {
    let mut changes = ChangeSet::default();
    match binding {
        _ if !handheld => {}
        Some(bound) if bound.username != session.username => return Err(DeviceInUse(session.device_id)),
        Some(_) => {}
        None => changes.device_bindings.push(BindingChange {
            device_id: session.device_id.clone(),
            before: None,
            after: Some(DeviceBinding {
                device_id: session.device_id.clone(),
                username: session.username.clone(),
                bound_at: now,
            }),
        }),
    }
    changes.sessions.push(session);
    changes.refresh_tokens.push(refresh);
    Ok(changes)
}

/// An admin releases a device (handed to another courier): it is nobody's
/// again, and every live session on it is revoked with it, so that the
/// previous holder's tokens die with the binding. Returns the sessions revoked.
pub fn release_device(
    binding: Option<DeviceBinding>,
    sessions: Vec<Session>,
    now: OffsetDateTime,
) -> (Vec<Uuid>, ChangeSet) {
    let (revoked, mut changes) = revoke_device(sessions, now);
    if let Some(bound) = binding {
        changes.device_bindings.push(BindingChange {
            device_id: bound.device_id.clone(),
            before: Some(bound),
            after: None,
        });
    }
    (revoked, changes)
}

fn revoke(mut session: Session, reason: RevokeReason, now: OffsetDateTime) -> Session {
    session.revoked_at = Some(now);
    session.revoke_reason = Some(reason);
    session
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    fn session() -> Session {
        Session {
            id: Uuid::nil(),
            username: Username::parse("exp1").expect("id"),
            device_id: DeviceId::parse("hh-1").expect("id"),
            created_at: OffsetDateTime::UNIX_EPOCH,
            revoked_at: None,
            revoke_reason: None,
        }
    }

    fn token(expires_in: Duration, retired: bool) -> RefreshToken {
        let now = OffsetDateTime::UNIX_EPOCH;
        RefreshToken { session_id: Uuid::nil(), expires_at: now + expires_in, retired_at: retired.then_some(now) }
    }

    #[test]
    fn a_live_token_rotates() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let decision = decide_refresh(Some(&token(Duration::hours(1), false)), Some(&session()), now);
        assert_eq!(decision, RefreshDecision::Rotate);
    }

    #[test]
    fn a_retired_token_presented_again_revokes_the_session() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let decision = decide_refresh(Some(&token(Duration::hours(1), true)), Some(&session()), now);
        assert_eq!(decision, RefreshDecision::RevokeSession);
    }

    #[test]
    fn expired_unknown_and_revoked_are_refused() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let expired = token(Duration::ZERO, false);
        assert_eq!(
            decide_refresh(Some(&expired), Some(&session()), now),
            RefreshDecision::Refuse(RefreshRefusal::Expired)
        );
        assert_eq!(decide_refresh(None, None, now), RefreshDecision::Refuse(RefreshRefusal::Unknown));
        let mut revoked = session();
        revoked.revoked_at = Some(now);
        assert_eq!(
            decide_refresh(Some(&token(Duration::hours(1), true)), Some(&revoked), now),
            RefreshDecision::Refuse(RefreshRefusal::SessionRevoked)
        );
    }
}

#[cfg(test)]
mod change_tests {
    use time::Duration;

    use super::*;

    fn session(revoked: bool) -> Session {
        Session {
            id: Uuid::nil(),
            username: Username::parse("exp1").expect("id"),
            device_id: DeviceId::parse("hh-1").expect("id"),
            created_at: OffsetDateTime::UNIX_EPOCH,
            revoked_at: revoked.then_some(OffsetDateTime::UNIX_EPOCH),
            revoke_reason: revoked.then_some(RevokeReason::Logout),
        }
    }

    fn token(retired: bool) -> RefreshToken {
        let now = OffsetDateTime::UNIX_EPOCH;
        RefreshToken {
            session_id: Uuid::nil(),
            expires_at: now + Duration::hours(1),
            retired_at: retired.then_some(now),
        }
    }

    #[test]
    fn a_rotation_retires_the_token_and_stores_its_successor() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::minutes(5);
        let (outcome, changes) = refresh([1; 32], Some(token(false)), Some(session(false)), ([2; 32], now), now);
        assert_eq!(outcome, RefreshOutcome::Rotated(session(false)));
        assert_eq!(changes.refresh_tokens.len(), 2);
        assert_eq!(changes.refresh_tokens[0], ([1; 32], RefreshToken { retired_at: Some(now), ..token(false) }));
        assert_eq!(changes.refresh_tokens[1].1.retired_at, None);
        assert!(changes.sessions.is_empty());
    }

    #[test]
    fn a_reused_token_revokes_the_session_and_stores_nothing_else() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let (outcome, changes) = refresh([1; 32], Some(token(true)), Some(session(false)), ([2; 32], now), now);
        let RefreshOutcome::ReuseDetected(revoked) = outcome else { panic!("{outcome:?}") };
        assert_eq!(revoked.revoke_reason, Some(RevokeReason::RefreshTokenReused));
        assert_eq!((changes.sessions, changes.refresh_tokens.len()), (vec![revoked], 0));
    }

    #[test]
    fn logout_twice_changes_nothing_the_second_time() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let (closed, changes) = close([1; 32], Some(token(false)), Some(session(false)), now).expect("known");
        assert_eq!(closed.revoke_reason, Some(RevokeReason::Logout));
        assert_eq!((changes.sessions.len(), changes.refresh_tokens.len()), (1, 1));
        let (_, again) = close([1; 32], Some(token(true)), Some(closed), now).expect("known");
        assert!(again.is_empty());
        assert!(close([1; 32], None, None, now).is_none());
    }

    #[test]
    fn revoking_a_device_revokes_only_its_live_sessions() {
        let live = Session { id: Uuid::from_u128(7), ..session(false) };
        let (revoked, changes) = revoke_device(vec![session(true), live], OffsetDateTime::UNIX_EPOCH);
        assert_eq!(revoked, vec![Uuid::from_u128(7)]);
        assert_eq!(changes.sessions[0].revoke_reason, Some(RevokeReason::DeviceRevoked));
    }

    #[test]
    fn a_device_is_its_first_accounts_until_released() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let refresh = ([1; 32], token(false));
        let changes = open(session(false), refresh.clone(), true, None, now).expect("a new device");
        let bound = changes.device_bindings[0].after.clone().expect("bound");
        assert_eq!((bound.username.as_str(), changes.sessions.len()), ("exp1", 1));

        let again = open(session(false), refresh.clone(), true, Some(bound.clone()), now).expect("its own account");
        assert!(again.device_bindings.is_empty(), "already bound: nothing to write");

        let impostor = Session { username: Username::parse("exp2").expect("id"), ..session(false) };
        assert_eq!(
            open(impostor.clone(), refresh.clone(), true, Some(bound.clone()), now),
            Err(DeviceInUse(bound.device_id.clone()))
        );
        let browser = open(impostor, refresh.clone(), false, Some(bound.clone()), now).expect("not a handheld");
        assert!(browser.device_bindings.is_empty(), "a browser neither binds nor is checked");
        let message = DeviceInUse(bound.device_id.clone()).to_string();
        assert!(!message.contains("exp1"), "whose it is stays unsaid: {message}");

        let (revoked, released) = release_device(Some(bound), vec![session(false)], now);
        assert_eq!((revoked, released.device_bindings[0].after.clone()), (vec![Uuid::nil()], None));
        assert_eq!(released.sessions[0].revoke_reason, Some(RevokeReason::DeviceRevoked));
    }
}
