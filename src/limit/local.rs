//! The counters of [`RateLimitLayer`](super::RateLimitLayer) in this process: GCRA per subject
//! and limit, in a hash table split into shards, each behind its own lock.
//!
//! Each (subject, limit) pair has one theoretical arrival time (TAT), in nanoseconds of the
//! counters' clock. With `interval` the time between two requests once the burst is spent and
//! `tolerance = interval × (burst − 1)`, a request at `now` passes if `tat − tolerance <= now`;
//! it then moves the TAT to `max(tat, now) + interval`, and what is left of the burst is
//! `(now + tolerance − max(tat, now)) / interval`. A refused request waits
//! `tat − tolerance − now`. A subject without an entry counts as one whose TAT is `now`: its
//! whole burst is there, so an entry whose TAT is not after `now` changes no answer and may go.
//!
//! The hit path reads the clock once, hashes the borrowed subject (foldhash), locks one shard
//! and finds the entry in place: no allocation, no reference count. Only a subject's first
//! request (or its first after its entry was swept) stores an owned copy of it.
//!
//! Memory: each shard counts the requests that found a full burst ("fresh": new entries among
//! them). Once there have been as many as the shard kept at its last sweep (at least
//! [`MIN_SWEEP`]), the request that counts the last one sweeps the shard: it drops the entries
//! whose burst has been full again for at least [`GRACE`]. A sweep visits the shard's table once
//! (the table shrinks when most of it was dropped), so each fresh request pays for at most a
//! constant share of it. The grace keeps a subject that comes back often with a full burst
//! (every key of a rotation, a client polling just under its limit) from having its entry
//! dropped and stored again on every visit, which a sweep of every refilled entry did; what a
//! shard keeps is the subjects not yet refilled plus those seen within the last [`GRACE`].

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crossbeam_utils::CachePadded;
use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::RateLimit;
use crate::clock::Clock;
use crate::identity::KeyId;

/// Whose requests a counter counts: a key's, or an account's.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Subject<'a> {
    Key(&'a KeyId),
    Account(&'a str),
}

impl<'a> Subject<'a> {
    /// The kind of subject (so that a key id and an account id never share a counter) and its
    /// id.
    fn parts(self) -> (u8, &'a str) {
        match self {
            Self::Key(key_id) => (0, key_id.as_str()),
            Self::Account(account_id) => (1, account_id),
        }
    }
}

/// A [`Subject`] as an entry keeps it: a key id shares the identity's `Arc`.
enum OwnedSubject {
    Key(KeyId),
    Account(Box<str>),
}

impl OwnedSubject {
    fn new(subject: Subject<'_>) -> Self {
        match subject {
            Subject::Key(key_id) => Self::Key(key_id.clone()),
            Subject::Account(account_id) => Self::Account(account_id.into()),
        }
    }

    fn borrow(&self) -> Subject<'_> {
        match self {
            Self::Key(key_id) => Subject::Key(key_id),
            Self::Account(account_id) => Subject::Account(account_id),
        }
    }

    fn is(&self, subject: Subject<'_>) -> bool {
        match (self, subject) {
            // Most often the same `Arc` (the store's record's): no need to compare the bytes.
            (Self::Key(own), Subject::Key(other)) => {
                std::ptr::eq(own.as_str(), other.as_str()) || own.as_str() == other.as_str()
            }
            (Self::Account(own), Subject::Account(other)) => **own == *other,
            _ => false,
        }
    }
}

/// A limit's GCRA parameters, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gcra {
    /// The time between two requests once the burst is spent (at least 1).
    interval: u64,
    /// `interval × (burst − 1)`: how far the TAT may run ahead of now.
    tolerance: u64,
    /// What is left after a request that found the whole burst: `burst − 1` (or less if
    /// `tolerance` saturated).
    most_left: u32,
}

impl Gcra {
    fn of(limit: RateLimit) -> Self {
        let interval = nanos(limit.interval()).max(1);
        let burst_left = limit.burst_size() - 1;
        let tolerance = interval.saturating_mul(burst_left.into());
        Self {
            interval,
            tolerance,
            most_left: u32::try_from(tolerance / interval)
                .map_or(burst_left, |left| left.min(burst_left)),
        }
    }

    /// Counts one request at `now` against `tat`: what is left of the burst, or how long until
    /// a request passes.
    fn check(self, tat: &mut u64, now: u64) -> Result<u32, Duration> {
        if *tat <= now {
            // The whole burst is there (the common case for a key not in a hurry): no division.
            *tat = now.saturating_add(self.interval);
            return Ok(self.most_left);
        }
        let earliest = *tat - self.tolerance.min(*tat);
        if now < earliest {
            return Err(Duration::from_nanos(earliest - now));
        }
        let left = (now.saturating_add(self.tolerance) - *tat) / self.interval;
        *tat = tat.saturating_add(self.interval);
        Ok(u32::try_from(left).map_or(self.most_left, |left| left.min(self.most_left)))
    }
}

/// The counter of one subject under one limit.
struct Entry {
    subject: OwnedSubject,
    limit: RateLimit,
    gcra: Gcra,
    /// The theoretical arrival time, in nanoseconds of the counters' clock.
    tat: u64,
}

/// Sweeps a shard no more often than after this many fresh requests in it.
const MIN_SWEEP: usize = 64;

/// How long a sweep keeps the entry of a subject whose burst is full again, in nanoseconds.
const GRACE: u64 = 1_000_000_000;

/// One shard of the counters.
struct Shard {
    table: HashTable<Entry>,
    /// Requests that found a full burst since the last sweep (new entries among them).
    fresh: usize,
    /// How many fresh requests start the next sweep: as many entries as the last sweep kept,
    /// and at least [`MIN_SWEEP`].
    sweep_after: usize,
}

impl Shard {
    fn new() -> Self {
        Self {
            table: HashTable::new(),
            fresh: 0,
            sweep_after: MIN_SWEEP,
        }
    }

    fn check(
        &mut self,
        hash: u64,
        subject: Subject<'_>,
        limit: RateLimit,
        now: u64,
        hasher: &RandomState,
    ) -> Result<u32, Duration> {
        let found = self.table.find_mut(hash, |entry| {
            entry.limit == limit && entry.subject.is(subject)
        });
        let (verdict, fresh) = match found {
            Some(entry) => {
                let full = entry.tat <= now;
                (entry.gcra.check(&mut entry.tat, now), full)
            }
            None => {
                let gcra = Gcra::of(limit);
                let mut tat = now;
                let verdict = gcra.check(&mut tat, now);
                let entry = Entry {
                    subject: OwnedSubject::new(subject),
                    limit,
                    gcra,
                    tat,
                };
                self.table
                    .insert_unique(hash, entry, |entry| hash_of(hasher, entry));
                (verdict, true)
            }
        };
        if fresh {
            self.count_fresh(now, hasher);
        }
        verdict
    }

    /// Counts a request that found a full burst, and sweeps once there have been
    /// `sweep_after` of them.
    fn count_fresh(&mut self, now: u64, hasher: &RandomState) {
        self.fresh += 1;
        if self.fresh < self.sweep_after {
            return;
        }
        // Full again since `GRACE` ago: no answer depends on these entries.
        let refilled_by = now.saturating_sub(GRACE);
        self.table.retain(|entry| entry.tat > refilled_by);
        let left = self.table.len();
        if self.table.capacity() > 4 * left.max(MIN_SWEEP) {
            self.table
                .shrink_to(2 * left.max(MIN_SWEEP), |entry| hash_of(hasher, entry));
        }
        self.fresh = 0;
        self.sweep_after = left.max(MIN_SWEEP);
    }
}

/// Every subject's counter, for any limit.
pub(crate) struct LocalCounters {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    hasher: RandomState,
    clock: LimitClock,
}

impl LocalCounters {
    pub(crate) fn new(clock: LimitClock) -> Self {
        // A few shards per thread that may count at once, so that two rarely wait on each other.
        let threads = std::thread::available_parallelism().map_or(4, usize::from);
        let shards = (4 * threads).next_power_of_two().clamp(8, 256);
        Self {
            shards: (0..shards)
                .map(|_| CachePadded::new(Mutex::new(Shard::new())))
                .collect(),
            hasher: RandomState::default(),
            clock,
        }
    }

    /// Counts one request of `subject` under `limit`: what is left of the burst, or how long
    /// until the next request passes.
    pub(crate) fn check(&self, subject: Subject<'_>, limit: RateLimit) -> Result<u32, Duration> {
        let now = self.clock.now();
        let hash = hash(&self.hasher, subject, limit);
        self.shard(hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(hash, subject, limit, now, &self.hasher)
    }

    pub(crate) fn clock(&self) -> &LimitClock {
        &self.clock
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // Bits the shard's table does not use much: it takes the low ones for the bucket and the
        // top seven for the tag.
        let index = (hash >> 32) as usize & (self.shards.len() - 1);
        &self.shards[index]
    }
}

impl fmt::Debug for LocalCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCounters").finish_non_exhaustive()
    }
}

fn hash(hasher: &RandomState, subject: Subject<'_>, limit: RateLimit) -> u64 {
    let (kind, id) = subject.parts();
    let mut state = hasher.build_hasher();
    state.write(id.as_bytes());
    state.write_u64(u64::from(limit.requests()) << 32 | u64::from(limit.burst_size()));
    state.write_u64(u64::from(kind) << 32 | u64::from(limit.period_secs.get()));
    state.finish()
}

fn hash_of(hasher: &RandomState, entry: &Entry) -> u64 {
    hash(hasher, entry.subject.borrow(), entry.limit)
}

/// Whole nanoseconds of `duration`, at most `u64::MAX` (584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The time as the counters read it: since a monotonic origin, or a [`Clock`]'s time since the
/// Unix epoch.
///
/// The monotonic clock is quanta's: it reads the CPU's time-stamp counter where that is stable
/// (about 10 ns here, where `std::time::Instant::now` takes about 28), and the OS clock where
/// it is not.
#[derive(Clone)]
pub(crate) enum LimitClock {
    Monotonic(quanta::Instant),
    Custom(Arc<dyn Clock>),
}

impl LimitClock {
    pub(crate) fn monotonic() -> Self {
        Self::Monotonic(quanta::Instant::now())
    }

    /// Nanoseconds since the origin (or the Unix epoch).
    fn now(&self) -> u64 {
        match self {
            Self::Monotonic(origin) => nanos(quanta::Instant::now().duration_since(*origin)),
            Self::Custom(clock) => nanos(
                (clock.now())
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn manual() -> (ManualClock, LocalCounters) {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let counters = LocalCounters::new(LimitClock::Custom(Arc::new(clock.clone())));
        (clock, counters)
    }

    impl LocalCounters {
        fn len(&self) -> usize {
            (self.shards.iter())
                .map(|shard| shard.lock().unwrap().table.len())
                .sum()
        }

        fn has_entry(&self, subject: Subject<'_>, limit: RateLimit) -> bool {
            let hash = hash(&self.hasher, subject, limit);
            let shard = self.shard(hash).lock().unwrap();
            (shard.table)
                .find(hash, |entry| {
                    entry.limit == limit && entry.subject.is(subject)
                })
                .is_some()
        }
    }

    #[test]
    fn a_burst_then_one_request_per_interval() {
        let (clock, counters) = manual();
        let key = KeyId::random();
        let limit = RateLimit::per_minute(3); // one every 20 s
        let check = || counters.check(Subject::Key(&key), limit);
        assert_eq!(check(), Ok(2));
        assert_eq!(check(), Ok(1));
        assert_eq!(check(), Ok(0));
        assert_eq!(check(), Err(Duration::from_secs(20)));
        for _ in 0..3 {
            clock.advance(Duration::from_secs(20));
            assert_eq!(check(), Ok(0));
            assert_eq!(check(), Err(Duration::from_secs(20)));
        }
        clock.advance(Duration::from_secs(60)); // the whole burst back, and no more
        assert_eq!(check(), Ok(2));
        assert_eq!(check(), Ok(1));
        assert_eq!(check(), Ok(0));
        assert!(check().is_err());
    }

    #[test]
    fn retry_after_is_exact() {
        let (clock, counters) = manual();
        let account = "acct_1";
        let limit = RateLimit::per_minute(3);
        let check = || counters.check(Subject::Account(account), limit);
        for _ in 0..3 {
            assert!(check().is_ok());
        }
        clock.advance(Duration::from_millis(500));
        assert_eq!(check(), Err(Duration::from_millis(19_500)));
        clock.advance(Duration::from_nanos(19_499_999_999));
        assert_eq!(check(), Err(Duration::from_nanos(1)));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(check(), Ok(0));
        // A refused request does not count: the wait is the same after it.
        assert_eq!(check(), Err(Duration::from_secs(20)));
        assert_eq!(check(), Err(Duration::from_secs(20)));
    }

    #[test]
    fn remaining_counts_what_is_left_of_the_burst() {
        let (clock, counters) = manual();
        let key = KeyId::random();
        let limit = RateLimit::per_second(1).burst(5);
        let check = || counters.check(Subject::Key(&key), limit);
        assert_eq!(check(), Ok(4));
        assert_eq!(check(), Ok(3));
        clock.advance(Duration::from_millis(999));
        assert_eq!(check(), Ok(2), "not yet a whole interval back");
        clock.advance(Duration::from_millis(1));
        assert_eq!(check(), Ok(2));
        clock.advance(Duration::from_secs(2));
        assert_eq!(check(), Ok(3));
        clock.advance(Duration::from_secs(3600));
        assert_eq!(check(), Ok(4), "never more than the burst");
    }

    #[test]
    fn a_limit_of_more_than_one_request_per_nanosecond_passes_its_burst() {
        let (_clock, counters) = manual();
        let key = KeyId::random();
        let limit = RateLimit::per_second(u32::MAX); // an interval of 1 ns
        for left in (u32::MAX - 3..u32::MAX).rev() {
            assert_eq!(counters.check(Subject::Key(&key), limit), Ok(left));
        }
        let long = RateLimit::new(1, u32::MAX).burst(u32::MAX); // saturates, does not overflow
        assert!(counters.check(Subject::Key(&key), long).is_ok());
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

    #[test]
    fn a_key_and_an_account_with_the_same_id_count_apart() {
        let (_clock, counters) = manual();
        let key = KeyId::new("same");
        let limit = RateLimit::per_minute(1);
        assert_eq!(counters.check(Subject::Key(&key), limit), Ok(0));
        assert_eq!(counters.check(Subject::Account("same"), limit), Ok(0));
        assert!(counters.check(Subject::Key(&key), limit).is_err());
    }

    #[test]
    fn entries_of_refilled_keys_are_swept_away() {
        let (clock, counters) = manual();
        let limit = RateLimit::per_second(1);
        let quiet = KeyId::random();
        let spent = KeyId::random();
        let per_minute = RateLimit::per_minute(1);
        assert!(counters.check(Subject::Key(&quiet), limit).is_ok());
        assert!(counters.check(Subject::Key(&spent), per_minute).is_ok());
        let rounds = 15;
        let per_round = 2_000;
        for _ in 0..rounds {
            clock.advance(Duration::from_secs(3)); // every burst is full again, past the grace
            for _ in 0..per_round {
                let key = KeyId::random();
                assert!(counters.check(Subject::Key(&key), limit).is_ok());
            }
        }
        // Without sweeps there would be 30,002 entries; a shard keeps at most about twice
        // what its last sweep kept, which is this round's keys.
        let len = counters.len();
        assert!(len <= 2 * per_round, "{len} entries left");
        assert!(!counters.has_entry(Subject::Key(&quiet), limit));
        // 45 s later, the per-minute key's entry is still needed, and still there.
        assert!(counters.has_entry(Subject::Key(&spent), per_minute));
        assert!(counters.check(Subject::Key(&spent), per_minute).is_err());
    }

    #[test]
    fn a_key_that_comes_back_within_the_grace_keeps_its_entry() {
        let (clock, counters) = manual();
        let limit = RateLimit::per_second(1_000); // full again 1 ms after each request
        let keys: Vec<KeyId> = (0..1_000).map(|_| KeyId::random()).collect();
        for round in 0..10 {
            clock.advance(Duration::from_millis(100));
            for key in &keys {
                assert_eq!(counters.check(Subject::Key(key), limit), Ok(999));
            }
            assert_eq!(counters.len(), keys.len(), "round {round}");
        }
        clock.advance(Duration::from_secs(2)); // past the grace: the next sweeps drop them
        for _ in 0..8 * MIN_SWEEP * counters.shards.len() {
            assert!(counters
                .check(Subject::Key(&KeyId::random()), limit)
                .is_ok());
        }
        let kept = keys
            .iter()
            .filter(|key| counters.has_entry(Subject::Key(key), limit));
        assert_eq!(kept.count(), 0);
    }

    #[test]
    fn requests_that_find_a_full_burst_start_sweeps_too() {
        let hasher = RandomState::default();
        let mut shard = Shard::new();
        let limit = RateLimit::per_second(1_000); // full again 1 ms after each request
        let (quiet, busy) = (KeyId::random(), KeyId::random());
        let mut check = |key: &KeyId, now: u64| {
            let subject = Subject::Key(key);
            shard.check(hash(&hasher, subject, limit), subject, limit, now, &hasher)
        };
        let start = 5 * GRACE;
        assert_eq!(check(&quiet, start), Ok(999));
        for request in 0..MIN_SWEEP as u64 {
            // No new entry: only hits on the busy key's full burst count.
            assert_eq!(
                check(&busy, start + 2 * GRACE + 2_000_000 * request),
                Ok(999)
            );
        }
        assert_eq!(shard.table.len(), 1, "the quiet key's entry is gone");
        assert!(shard
            .table
            .iter()
            .all(|entry| entry.subject.is(Subject::Key(&busy))));
    }

    #[test]
    fn many_threads_on_one_key_never_pass_more_than_the_burst() {
        let (clock, counters) = manual();
        let key = KeyId::random();
        let limit = RateLimit::per_minute(100);
        for round in 0..3 {
            let passed = std::sync::atomic::AtomicU32::new(0);
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| {
                        for _ in 0..1_000 {
                            if counters.check(Subject::Key(&key), limit).is_ok() {
                                passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(passed.into_inner(), 100, "round {round}");
            clock.advance(Duration::from_secs(60)); // the whole burst back
        }
    }
}
