//! Login throttling that slows the guesser and never locks the owner out of
//! where it usually logs in from.
//!
//! - Before the password is checked, each client address has a budget: all
//!   its attempts, and its attempts at one account. Beyond either: 429.
//! - Each account has a budget of wrong passwords from anywhere. Past it, the
//!   account is paced for a minute: an attempt from an address that never
//!   logged in to it waits for a slot, one every two seconds for the whole
//!   account, before its password is checked (right or wrong alike, so the
//!   wait tells nothing), and one that would wait more than ten seconds is
//!   refused. An address that logged in to the account before is not paced:
//!   a stranger guessing from everywhere cannot keep the owner out.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    num::NonZeroU32,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AuthError;
use crate::config::AuthSettings;

/// How far apart paced attempts at one account are let through.
pub const PACE: Duration = Duration::from_secs(2);
/// The longest a paced attempt waits for its slot; beyond, it is refused.
pub const LONGEST_WAIT: Duration = Duration::from_secs(10);
/// How long an account stays paced after its budget of failures ran out.
const PACED_FOR: Duration = Duration::from_secs(60);
/// Accounts and addresses remembered at most; past that the memory starts over.
const REMEMBERED: usize = 100_000;

pub struct LoginThrottle {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_account_and_address: DefaultKeyedRateLimiter<(String, IpAddr)>,
    failures_by_account: DefaultKeyedRateLimiter<String>,
    paced: Mutex<Paced>,
}

/// Which accounts are paced, their next slot, and where each account logged in from.
#[derive(Default)]
struct Paced {
    until: HashMap<String, Instant>,
    next_slot: HashMap<String, Instant>,
    known: HashSet<(String, IpAddr)>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle").finish_non_exhaustive()
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// The account key, cut to the longest valid username so that memory stays
/// bounded whatever is sent.
fn account_key(username: &str) -> String {
    username.chars().take(handover_shared::ids::MAX_ID_LEN + 1).collect()
}

fn rate_limited(wait: Duration) -> AuthError {
    AuthError::RateLimited { retry_after_secs: wait.as_secs().max(1) }
}

impl LoginThrottle {
    pub fn new(settings: &AuthSettings) -> Self {
        LoginThrottle {
            by_address: RateLimiter::keyed(per_minute(settings.login_attempts_per_minute_per_address)),
            by_account_and_address: RateLimiter::keyed(per_minute(
                settings.login_attempts_per_minute_per_username_and_address,
            )),
            failures_by_account: RateLimiter::keyed(per_minute(settings.login_failures_per_minute_per_username)),
            paced: Mutex::default(),
        }
    }

    fn paced(&self) -> MutexGuard<'_, Paced> {
        self.paced.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Before the password is checked: refused when this address tried too
    /// often (at anything, or at this account), or when the account is paced
    /// and its next slot is too far; otherwise how long to wait for the slot.
    pub fn before(&self, username: &str, address: Option<IpAddr>, now: Instant) -> Result<Duration, AuthError> {
        let account = account_key(username);
        if let Some(address) = address {
            let clock = governor::clock::DefaultClock::default();
            let retry = |not_until: governor::NotUntil<_>| rate_limited(not_until.wait_time_from(clock.now()));
            self.by_address.check_key(&address).map_err(retry)?;
            self.by_account_and_address.check_key(&(account.clone(), address)).map_err(retry)?;
        }
        let mut paced = self.paced();
        let is_paced = paced.until.get(&account).is_some_and(|until| *until > now);
        let known = address.is_some_and(|address| paced.known.contains(&(account.clone(), address)));
        if !is_paced || known {
            return Ok(Duration::ZERO);
        }
        let slot = paced.next_slot.get(&account).copied().filter(|slot| *slot > now).unwrap_or(now);
        let wait = slot - now;
        if wait > LONGEST_WAIT {
            return Err(rate_limited(wait));
        }
        paced.next_slot.insert(account, slot + PACE);
        Ok(wait)
    }

    /// A right password: this address may log in to the account unpaced from now on.
    pub fn succeeded(&self, username: &str, address: Option<IpAddr>) {
        let Some(address) = address else { return };
        let mut paced = self.paced();
        if paced.known.len() >= REMEMBERED {
            paced.known.clear();
        }
        paced.known.insert((account_key(username), address));
    }

    /// A wrong password: past the account's budget, it is paced for a while.
    pub fn failed(&self, username: &str, now: Instant) {
        let account = account_key(username);
        if self.failures_by_account.check_key(&account).is_err() {
            let mut paced = self.paced();
            if paced.until.len() >= REMEMBERED {
                paced.until.clear();
                paced.next_slot.clear();
            }
            paced.until.insert(account, now + PACED_FOR);
        }
    }

    /// Forgets entries that have recovered, so memory stays bounded.
    pub fn prune(&self) {
        self.by_address.retain_recent();
        self.by_account_and_address.retain_recent();
        self.failures_by_account.retain_recent();
        let now = Instant::now();
        let mut paced = self.paced();
        paced.until.retain(|_, until| *until > now);
        paced.next_slot.retain(|_, slot| *slot > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        let settings = AuthSettings {
            login_attempts_per_minute_per_address: 30,
            login_attempts_per_minute_per_username_and_address: 5,
            login_failures_per_minute_per_username: 5,
            ..AuthSettings::default()
        };
        LoginThrottle::new(&settings)
    }

    fn ip(raw: &str) -> Option<IpAddr> {
        raw.parse().ok()
    }

    #[test]
    fn a_guessing_address_is_refused_and_the_owner_elsewhere_is_not() {
        let (throttle, now) = (throttle(), Instant::now());
        for _ in 0..5 {
            assert_eq!(throttle.before("cust3", ip("127.0.0.2"), now).expect("within the budget"), Duration::ZERO);
            throttle.failed("cust3", now);
        }
        assert!(matches!(throttle.before("cust3", ip("127.0.0.2"), now), Err(AuthError::RateLimited { .. })));
        assert_eq!(throttle.before("cust3", ip("127.0.0.3"), now).expect("let in"), Duration::ZERO, "budget not spent");
        assert!(throttle.before("cust2", ip("127.0.0.2"), now).is_ok(), "another account from the guesser's address");
    }

    #[test]
    fn past_its_failure_budget_an_account_is_paced_except_where_it_logged_in_before() {
        let (throttle, now) = (throttle(), Instant::now());
        throttle.succeeded("cust3", ip("10.0.0.1"));
        for n in 0..6 {
            throttle.before("cust3", ip(&format!("10.1.0.{n}")), now).expect("let in");
            throttle.failed("cust3", now);
        }
        // Now paced: strangers wait for slots two seconds apart, then are refused.
        let waits: Vec<_> = (0..6).map(|n| throttle.before("cust3", ip(&format!("10.2.0.{n}")), now)).collect();
        let expected = [0, 2, 4, 6, 8, 10].map(Duration::from_secs);
        assert_eq!(waits.iter().map(|w| w.as_ref().ok().copied()).collect::<Vec<_>>(), expected.map(Some));
        assert!(matches!(throttle.before("cust3", ip("10.2.1.1"), now), Err(AuthError::RateLimited { .. })));
        // The owner, from where it logged in before, is not.
        assert_eq!(throttle.before("cust3", ip("10.0.0.1"), now).expect("let in"), Duration::ZERO);
        // A minute later the pacing is over.
        let later = now + PACED_FOR + Duration::from_secs(1);
        assert_eq!(throttle.before("cust3", ip("10.3.0.1"), later).expect("let in"), Duration::ZERO);
    }

    #[test]
    fn one_address_cannot_spread_its_guesses_over_many_accounts_unbounded() {
        let (throttle, now) = (throttle(), Instant::now());
        let allowed = (0..40).filter(|i| throttle.before(&format!("user{i}"), ip("127.0.0.9"), now).is_ok()).count();
        assert_eq!(allowed, 30, "the address's budget");
    }
}
