//! Login throttling that slows the guesser, never the owner. Limits that
//! refuse before the password is checked are keyed by the client's address:
//! all its attempts, and its attempts at one account. An account guessed at
//! from everywhere cannot be refused that way without locking its owner out
//! (anyone could do it on purpose), so past its budget of failures its wrong
//! passwords are answered slowly instead, and the right one still at once.

use std::{net::IpAddr, num::NonZeroU32, time::Duration};

use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AuthError;
use crate::config::AuthSettings;

/// How long a wrong password waits for its answer once its account has had
/// more failures, from anywhere, than its budget.
pub const FAILED_LOGIN_SLOWDOWN: Duration = Duration::from_secs(2);

pub struct LoginThrottle {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_account_and_address: DefaultKeyedRateLimiter<(String, IpAddr)>,
    failures_by_account: DefaultKeyedRateLimiter<String>,
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

impl LoginThrottle {
    pub fn new(settings: &AuthSettings) -> Self {
        LoginThrottle {
            by_address: RateLimiter::keyed(per_minute(settings.login_attempts_per_minute_per_address)),
            by_account_and_address: RateLimiter::keyed(per_minute(
                settings.login_attempts_per_minute_per_username_and_address,
            )),
            failures_by_account: RateLimiter::keyed(per_minute(settings.login_failures_per_minute_per_username)),
        }
    }

    /// Before the password is checked: refused when this address tried too
    /// often, at anything or at this account.
    pub fn before(&self, username: &str, address: Option<IpAddr>) -> Result<(), AuthError> {
        let Some(address) = address else { return Ok(()) };
        let clock = governor::clock::DefaultClock::default();
        let retry = |not_until: governor::NotUntil<_>| AuthError::RateLimited {
            retry_after_secs: not_until.wait_time_from(clock.now()).as_secs().max(1),
        };
        self.by_address.check_key(&address).map_err(retry)?;
        self.by_account_and_address.check_key(&(account_key(username), address)).map_err(retry)?;
        Ok(())
    }

    /// After a wrong password: how long to hold its answer back, when the
    /// account has had more failures than its budget, from wherever.
    pub fn after_failure(&self, username: &str) -> Option<Duration> {
        self.failures_by_account.check_key(&account_key(username)).is_err().then_some(FAILED_LOGIN_SLOWDOWN)
    }

    /// Forgets entries that have recovered, so memory stays bounded.
    pub fn prune(&self) {
        self.by_address.retain_recent();
        self.by_account_and_address.retain_recent();
        self.failures_by_account.retain_recent();
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

    #[test]
    fn a_guesser_is_refused_and_the_owner_elsewhere_is_not() {
        let throttle = throttle();
        let (guesser, owner): (IpAddr, IpAddr) = ("127.0.0.2".parse().expect("ip"), "127.0.0.3".parse().expect("ip"));
        for _ in 0..5 {
            throttle.before("cust3", Some(guesser)).expect("within the budget");
            throttle.after_failure("cust3");
        }
        assert!(matches!(throttle.before("cust3", Some(guesser)), Err(AuthError::RateLimited { .. })));
        assert!(throttle.before("cust3", Some(owner)).is_ok(), "the owner, elsewhere, is let in to try");
        assert!(throttle.before("cust2", Some(guesser)).is_ok(), "another account from the guesser's address");
    }

    #[test]
    fn past_its_failure_budget_an_account_answers_wrong_passwords_slowly() {
        let throttle = throttle();
        let slowed: Vec<Option<Duration>> = (0..7).map(|_| throttle.after_failure("cust3")).collect();
        assert_eq!(slowed[..5], [None; 5], "the budget");
        assert_eq!(slowed[5..], [Some(FAILED_LOGIN_SLOWDOWN); 2], "then slowly");
        assert_eq!(throttle.after_failure("cust2"), None, "other accounts are not");
    }

    #[test]
    fn one_address_cannot_spread_its_guesses_over_many_accounts_unbounded() {
        let throttle = throttle();
        let address: IpAddr = "127.0.0.9".parse().expect("ip");
        let allowed = (0..40).filter(|i| throttle.before(&format!("user{i}"), Some(address)).is_ok()).count();
        assert_eq!(allowed, 30, "the address's budget");
    }
}
