//! Global counters (features `rate-limit` and `redis`): GCRA in Redis, one atomic script per
//! round trip, optionally taken in leases that this process spends.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::RateLimit;
use crate::store::{RedisKeyStore, StoreError};

/// Counters in Redis, shared by every instance that counts there.
pub(crate) struct GlobalCounters {
    store: RedisKeyStore,
    /// How many requests one round trip takes; 1 without leases.
    lease_size: u32,
    fail_open: bool,
    leases: Arc<Mutex<Leases>>,
}

/// Requests taken from Redis and not yet spent, per subject and limit.
#[derive(Default)]
struct Leases {
    by_subject: HashMap<(String, RateLimit), Lease>,
    /// Leases added since the last sweep of expired ones.
    added: usize,
}

/// Requests taken at once: `left` may be spent here until `until`.
struct Lease {
    left: u32,
    /// What Redis said was left beyond the lease when it was taken.
    remaining: u32,
    until: Instant,
}

/// The shortest time a lease may be spent in: a lease lasts this, or the limit's interval if
/// longer.
const LEASE_LIFE: Duration = Duration::from_secs(1);

/// Sweeps expired leases after this many new ones.
const SWEEP_AFTER: usize = 1024;

impl GlobalCounters {
    pub(crate) fn new(store: RedisKeyStore) -> Self {
        Self {
            store,
            lease_size: 1,
            fail_open: false,
            leases: Arc::default(),
        }
    }

    /// The same counters, taking `size` requests per round trip.
    pub(crate) fn with_lease_size(&self, size: u32) -> Self {
        Self {
            lease_size: size,
            ..self.fresh()
        }
    }

    /// The same counters, letting requests pass when Redis fails.
    pub(crate) fn failing_open(&self) -> Self {
        Self {
            fail_open: true,
            ..self.fresh()
        }
    }

    /// The same counters, with no lease of this process's.
    pub(crate) fn fresh(&self) -> Self {
        Self {
            store: self.store.clone(),
            lease_size: self.lease_size,
            fail_open: self.fail_open,
            leases: Arc::default(),
        }
    }

    pub(crate) fn fails_open(&self) -> bool {
        self.fail_open
    }

    /// Counts one request of `subject` under `limit`: what is left of the burst, or how long
    /// until the next request passes.
    pub(crate) async fn check(
        &self,
        subject: &str,
        limit: RateLimit,
    ) -> Result<Result<u32, Duration>, StoreError> {
        if self.lease_size == 1 {
            let taken = self.store.take_rate(subject, limit, 1).await?;
            return Ok(taken.map(|taken| taken.remaining));
        }
        if let Some(remaining) = self.spend_lease(subject, limit) {
            return Ok(Ok(remaining));
        }
        match self
            .store
            .take_rate(subject, limit, self.lease_size)
            .await?
        {
            Ok(taken) => {
                // One of the requests taken is this one's; the others wait here for the next.
                let left = taken.granted - 1;
                self.add_lease(subject, limit, left, taken.remaining);
                Ok(Ok(left + taken.remaining))
            }
            // Requests that other round trips of this process took meanwhile may be left.
            Err(retry_after) => Ok(self.spend_lease(subject, limit).ok_or(retry_after)),
        }
    }

    /// Keeps `left` requests taken for `subject`, to spend within [`LEASE_LIFE`] (or the limit's
    /// interval, if longer). Added to a lease still running, they expire with it: a request is
    /// never kept longer.
    fn add_lease(&self, subject: &str, limit: RateLimit, left: u32, remaining: u32) {
        if left == 0 {
            return;
        }
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let lease = (leases.by_subject)
            .entry((subject.to_owned(), limit))
            .or_insert(Lease {
                left: 0,
                remaining,
                until: now + limit.interval().max(LEASE_LIFE),
            });
        if lease.until <= now {
            lease.until = now + limit.interval().max(LEASE_LIFE);
            lease.left = 0;
        }
        lease.left += left;
        lease.remaining = remaining;
        leases.added += 1;
        if leases.added >= SWEEP_AFTER {
            leases.by_subject.retain(|_, lease| lease.until > now);
            leases.added = 0;
        }
    }

    /// Spends a request of a lease of `subject`'s, if one is left and not expired.
    fn spend_lease(&self, subject: &str, limit: RateLimit) -> Option<u32> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        // Borrowed lookups need the key's own type: one allocation, only with leases.
        let key = (subject.to_owned(), limit);
        let lease = leases.by_subject.get_mut(&key)?;
        if lease.until <= Instant::now() || lease.left == 0 {
            leases.by_subject.remove(&key);
            return None;
        }
        lease.left -= 1;
        Some(lease.left + lease.remaining)
    }
}

impl fmt::Debug for GlobalCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalCounters")
            .field("lease_size", &self.lease_size)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}
