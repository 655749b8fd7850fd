//! The counters of [`RateLimitLayer`](super::RateLimitLayer) in this process: GCRA per subject
//! ([`governor`]), one limiter per distinct limit.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::RateLimit;
use crate::clock::Clock;
use crate::identity::KeyId;

/// Whose requests a counter counts: a key's, or an account's.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Subject<'a> {
    Key(&'a KeyId),
    Account(&'a str),
}

/// A [`Subject`] as a counter's key.
#[derive(Clone, PartialEq, Eq, Hash)]
enum OwnedSubject {
    Key(KeyId),
    Account(Box<str>),
}

impl From<Subject<'_>> for OwnedSubject {
    fn from(subject: Subject<'_>) -> Self {
        match subject {
            Subject::Key(key_id) => Self::Key(key_id.clone()),
            Subject::Account(account_id) => Self::Account(account_id.into()),
        }
    }
}

type Limiter = RateLimiter<
    OwnedSubject,
    DashMapStateStore<OwnedSubject>,
    LimitClock,
    StateInformationMiddleware,
>;

/// The counters of one limit.
struct Counters {
    limit: RateLimit,
    limiter: Limiter,
    /// Subjects found with a full burst since the last sweep (new entries among them).
    fresh: AtomicUsize,
    /// How many fresh subjects start the next sweep.
    sweep_after: AtomicUsize,
}

/// Sweeps no more often than after this many fresh subjects.
const MIN_SWEEP: usize = 1024;

impl Counters {
    fn new(limit: RateLimit, clock: LimitClock) -> Self {
        let quota = Quota::with_period(limit.interval())
            .expect("the interval is at least 1 ns")
            .allow_burst(limit.burst);
        Self {
            limit,
            limiter: Limiter::new(quota, DashMapStateStore::default(), clock),
            fresh: AtomicUsize::new(0),
            sweep_after: AtomicUsize::new(MIN_SWEEP),
        }
    }

    fn check(&self, subject: Subject<'_>) -> Result<u32, Duration> {
        match self.limiter.check_key(&subject.into()) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                if remaining + 1 >= self.limit.burst_size() {
                    self.count_fresh();
                }
                Ok(remaining)
            }
            Err(not_until) => {
                let now = governor::clock::Clock::now(self.limiter.clock());
                Err(not_until.wait_time_from(now))
            }
        }
    }

    /// Counts a subject found with a full burst, and drops the entries of refilled subjects
    /// once there have been as many as the last sweep left (at least [`MIN_SWEEP`]).
    fn count_fresh(&self) {
        let fresh = self.fresh.fetch_add(1, Ordering::Relaxed) + 1;
        if fresh >= self.sweep_after.load(Ordering::Relaxed)
            && self
                .fresh
                .compare_exchange(fresh, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            let left = self.limiter.len();
            self.sweep_after
                .store(left.max(MIN_SWEEP), Ordering::Relaxed);
        }
    }
}

/// Every subject's counter, for any limit.
pub(crate) struct LocalCounters {
    by_limit: RwLock<HashMap<RateLimit, Arc<Counters>>>,
    clock: LimitClock,
}

impl LocalCounters {
    pub(crate) fn new(clock: LimitClock) -> Self {
        Self {
            by_limit: RwLock::default(),
            clock,
        }
    }

    /// Counts one request of `subject` under `limit`: what is left of the burst, or how long
    /// until the next request passes.
    pub(crate) fn check(&self, subject: Subject<'_>, limit: RateLimit) -> Result<u32, Duration> {
        let read = self.by_limit.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(counters) = read.get(&limit) {
            return counters.check(subject);
        }
        drop(read);
        let counters = Arc::clone(
            (self
                .by_limit
                .write()
                .unwrap_or_else(PoisonError::into_inner))
            .entry(limit)
            .or_insert_with(|| Arc::new(Counters::new(limit, self.clock.clone()))),
        );
        counters.check(subject)
    }

    pub(crate) fn clock(&self) -> &LimitClock {
        &self.clock
    }
}

impl fmt::Debug for LocalCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCounters").finish_non_exhaustive()
    }
}

/// The time as the counters read it: since a monotonic origin, or a [`Clock`]'s time since the
/// Unix epoch.
#[derive(Clone)]
pub(crate) enum LimitClock {
    Monotonic(Instant),
    Custom(Arc<dyn Clock>),
}

impl LimitClock {
    pub(crate) fn monotonic() -> Self {
        Self::Monotonic(Instant::now())
    }
}

impl governor::clock::Clock for LimitClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        match self {
            Self::Monotonic(origin) => origin.elapsed(),
            Self::Custom(clock) => (clock.now())
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_refilled_keys_are_swept_away() {
        let clock = crate::clock::ManualClock::new(SystemTime::UNIX_EPOCH);
        let counters = LocalCounters::new(LimitClock::Custom(Arc::new(clock.clone())));
        let limit = RateLimit::per_second(1);
        for _ in 0..MIN_SWEEP - 1 {
            assert!(counters
                .check(Subject::Key(&KeyId::random()), limit)
                .is_ok());
        }
        let len = || counters.by_limit.read().unwrap()[&limit].limiter.len();
        assert_eq!(len(), MIN_SWEEP - 1);
        clock.advance(Duration::from_secs(2)); // every burst is full again
        let _ = counters.check(Subject::Key(&KeyId::random()), limit); // the MIN_SWEEP-th sweeps
        assert!(len() <= 1, "{} entries left", len());
    }

    #[test]
    fn each_limit_counts_apart() {
        let counters = LocalCounters::new(LimitClock::monotonic());
        let key = KeyId::random();
        assert_eq!(
            counters.check(Subject::Key(&key), RateLimit::per_minute(1)),
            Ok(0)
        );
        assert!(counters
            .check(Subject::Key(&key), RateLimit::per_minute(1))
            .is_err());
        assert_eq!(
            counters.check(Subject::Key(&key), RateLimit::per_minute(2)),
            Ok(1)
        );
    }
}
