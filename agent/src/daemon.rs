//! The background sync of `handover-agent daemon`: on an interval, at once when
//! a confirmation is saved, and with a growing, jittered delay while the server
//! cannot be reached. The handheld page reads the link state from here.

use std::{
    sync::{Condvar, Mutex, PoisonError},
    time::Duration,
};

use rand::Rng as _;
use serde::Serialize;

use crate::{
    store::{LocalStore, SignatureRefused},
    sync::{self, SyncError, SyncOptions},
};

/// The first wait after a failed sync; it doubles up to the configured cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What the courier should know about the link to the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkState {
    /// `None` until the first sync has been tried.
    pub online: Option<bool>,
    /// Why the last sync did not go through, in words for the courier.
    pub problem: Option<String>,
    /// When the last sync went through (the handheld's clock, RFC 3339).
    pub last_sync_at: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Between syncs while everything is fine.
    pub interval: Duration,
    /// The longest wait between tries while the server is unreachable.
    pub max_backoff: Duration,
}

/// The sync loop and what it knows, shared with the page.
#[derive(Debug)]
pub struct Syncer {
    store: LocalStore,
    link: Mutex<LinkState>,
    nudged: Mutex<bool>,
    wake: Condvar,
}

impl Syncer {
    pub fn new(store: LocalStore) -> Self {
        let last_sync_at = store.last_sync_at().ok().flatten();
        // A signature the server refused at an earlier sync shows from the
        // start, not only after this daemon's first sync.
        let problem = store.signature_refused().ok().flatten().map(|refused| signature_problem(&refused));
        Self {
            store,
            link: Mutex::new(LinkState { last_sync_at, problem, ..LinkState::default() }),
            nudged: Mutex::new(false),
            wake: Condvar::new(),
        }
    }

    pub fn link(&self) -> LinkState {
        self.link.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Asks for a sync now (a confirmation was saved, or the courier asked).
    pub fn nudge(&self) {
        *self.nudged.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }

    /// Waits `delay`, or less if nudged.
    fn sleep(&self, delay: Duration) {
        let nudged = self.nudged.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut nudged, _) =
            self.wake.wait_timeout_while(nudged, delay, |nudged| !*nudged).unwrap_or_else(PoisonError::into_inner);
        *nudged = false;
    }

    /// Syncs forever. Each sync makes one try per request; the waiting between
    /// tries is done here, so a nudge cuts a long backoff short.
    pub fn run(&self, schedule: Schedule, options: SyncOptions) {
        let options = SyncOptions { attempts: 1, ..options };
        let mut failures = 0u32;
        loop {
            let outcome = sync::sync(&self.store, &options);
            let delay = match &outcome {
                Ok(_) => {
                    failures = 0;
                    schedule.interval
                }
                Err(SyncError::SessionEnded(_)) => schedule.interval,
                Err(SyncError::Offline { .. } | SyncError::Failed(_)) => {
                    failures = failures.saturating_add(1);
                    backoff(failures, schedule.max_backoff)
                }
            };
            self.record(outcome);
            self.sleep(delay);
        }
    }

    fn record(&self, outcome: Result<sync::SyncReport, SyncError>) {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(report) => {
                link.online = Some(true);
                link.problem = report.signature_refused.as_ref().map(signature_problem);
                link.last_sync_at = self.store.last_sync_at().ok().flatten();
            }
            Err(SyncError::Offline { message, .. }) => {
                link.online = Some(false);
                link.problem = Some(message);
            }
            Err(err @ SyncError::SessionEnded(_)) => {
                link.online = Some(true);
                link.problem = Some(format!("{err}: stop the daemon, log in, start it again"));
            }
            Err(SyncError::Failed(err)) => {
                link.problem = Some(format!("{err:#}"));
            }
        }
    }
}

/// What the page says while the server refuses this handheld's signature.
fn signature_problem(refused: &SignatureRefused) -> String {
    format!("{refused}: stop the daemon, log in, start it again")
}

/// The wait after the `failures`-th failed sync in a row: doubling from one
/// second, capped, with up to a quarter of jitter so that handhelds coming back
/// together do not knock together.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = doubled.min(cap);
    let jitter = rand::rng().random_range(0.0..=0.25);
    base.mul_f64(1.0 + jitter).min(cap.max(FIRST_BACKOFF))
}

#[cfg(test)]
mod tests {
    use handover_shared::DeviceId;

    use super::*;

    #[test]
    fn a_refused_signature_is_the_page_s_problem_from_the_start_and_after_each_sync_that_meets_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open");
        let refused = SignatureRefused {
            device_id: DeviceId::parse("hh-1").expect("id"),
            confirmation_id: "c-1".into(),
            message: "device hh-1 registered no key: log in again to register one".into(),
        };
        store.note_signature_refused(&refused).expect("noted");

        let syncer = Syncer::new(store);
        let problem = syncer.link().problem.expect("shown before the first sync");
        assert!(problem.starts_with("the server refused this handheld's signature: log in again"), "{problem}");

        syncer.record(Ok(sync::SyncReport { signature_refused: Some(refused), ..sync::SyncReport::default() }));
        assert_eq!((syncer.link().online, syncer.link().problem), (Some(true), Some(problem)));
        syncer.record(Ok(sync::SyncReport::default()));
        assert_eq!(syncer.link().problem, None, "a sync that meets none clears it");
    }

    #[test]
    fn the_backoff_doubles_from_one_second_and_stays_under_its_cap() {
        let cap = Duration::from_secs(60);
        for failures in 1..=40 {
            let wait = backoff(failures, cap);
            let floor = FIRST_BACKOFF.saturating_mul(1 << (failures - 1).min(16)).min(cap);
            assert!(wait >= floor, "{failures}: {wait:?} under {floor:?}");
            assert!(wait <= cap, "{failures}: {wait:?} over the cap");
        }
        assert!(backoff(1, cap) < Duration::from_millis(1_251));
    }
}
