use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::changes::{ChangeFeed, Invalidator};
use super::{CreateError, KeyRecord, KeyStore, Quota, StoreError, WritableKeyStore};
use crate::clock::{Clock, SystemClock};
use crate::identity::KeyId;
use crate::key::LookupId;
use crate::limit::Spend;

const DEFAULT_MAX_CAPACITY: u64 = 100_000;
const DEFAULT_TTL: Duration = Duration::from_secs(10);
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// How many write generations the cache keeps: a write, or a change pushed by another instance,
/// makes the entries of its stripe (1 in 4,096) be read again, which keeps the bookkeeping small
/// and fixed (32 KiB) while a busy fleet's stream of changes retires little else.
pub(crate) const STRIPES: usize = 4096;

/// What a lookup found, and the write generation of its stripe when the lookup began.
///
/// A write bumps the generation after the store has changed. An entry whose generation is no
/// longer current may have been read before that change, so it is dropped and read again:
/// this closes the race where a lookup in flight during a write caches what it read before it.
///
/// It also keeps the latest use the layer reported since it was cached, laid over the record's
/// own `last_used_at` so that the layer does not ask again before its interval.
struct Cached {
    found: Option<KeyRecord>,
    generation: u64,
    /// When the entry stops being served: the TTL (or negative TTL) after it was read, never
    /// past the key's own expiry. `None` for a TTL beyond what `Instant` can hold.
    expires: Option<Instant>,
    /// Microseconds since the epoch of the latest use; 0 for none.
    last_used: AtomicU64,
}

impl Cached {
    /// The record found, with the latest use reported since.
    fn record(&self) -> Option<KeyRecord> {
        let mut found = self.found.clone();
        let micros = self.last_used.load(Ordering::Relaxed);
        if let (Some(record), true) = (&mut found, micros > 0) {
            let used = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
            record.last_used_at = record.last_used_at.max(Some(used));
        }
        found
    }
}

/// An in-process cache in front of any [`KeyStore`] (feature `cache`), so that most requests
/// never reach the database.
///
/// - It holds at most [`max_capacity`](CachedKeyStore::max_capacity) records, each for at most
///   [`ttl`](CachedKeyStore::ttl) and never past the key's own expiry. Eviction is S3-FIFO
///   (quick_cache): keys seen once leave first, so a flood of one-off keys does not push out keys
///   in regular use.
/// - Unknown keys are cached too, for [`negative_ttl`](CachedKeyStore::negative_ttl), so a flood
///   of one bad key does not reach the database. Store errors are never cached.
/// - Concurrent lookups of one key wait for a single call to the store.
/// - Creating, revoking, deleting and rotating through this wrapper update this instance at
///   once, including lookups that were in flight during the change. A call dropped before the
///   store answers (a client disconnect, a timeout) drops every entry, since the store may have
///   committed the change; the write itself runs on to its end (on the tokio runtime) and
///   updates this instance again then, in case the store commits later.
///
/// **Staleness bound**: with [push invalidation](CachedKeyStore::push_invalidation), another
/// instance refuses a key revoked, deleted or rotated out elsewhere as soon as the store's
/// message reaches it (see [`ChangeFeed`]). Without it, another instance (another process with
/// its own cache) may go on accepting such a key for at most `ttl` (10 seconds by default) plus
/// the duration of one lookup of the inner store.
///
/// Clones share one cache. Set the options before cloning: each option method builds a new,
/// empty cache, which clones made earlier do not share (nor see its writes).
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{ApiKeyLayer, MemoryKeyStore, store::CachedKeyStore};
///
/// let store = CachedKeyStore::new(MemoryKeyStore::new()).ttl(Duration::from_secs(5));
/// let layer = ApiKeyLayer::new(store);
/// ```
pub struct CachedKeyStore<S> {
    // Shared with the writes it runs, which finish even when their caller goes away.
    inner: Arc<S>,
    // quick_cache: a hit is one shard read lock and a hash lookup, and its S3-FIFO eviction keeps
    // a flood of one-off keys from pushing out keys in regular use. Seeded, because negative entries
    // hold lookup ids that callers chose (by grinding keys), and fast: SipHash cost as much as
    // the rest of a hit.
    shared: Arc<Shared>,
    /// Lookups under way, so that concurrent misses of one key make one store call.
    in_flight: Arc<Mutex<HashMap<LookupId, Arc<Fill>>>>,
    config: CacheConfig,
}

/// What the cache's clones, the writes it runs and its change feed share.
pub(crate) struct Shared {
    records: Records,
    /// Write generations, one per stripe of lookup ids: an entry read before a write to its
    /// stripe is not trusted after it (see [`Cached`]).
    writes: [AtomicU64; STRIPES],
    /// False while a change feed is attached and not listening: then nothing cached is served.
    listening: AtomicBool,
}

type Records = quick_cache::sync::Cache<
    LookupId,
    Arc<Cached>,
    quick_cache::UnitWeighter,
    foldhash::fast::RandomState,
>;

#[derive(Clone)]
struct CacheConfig {
    max_capacity: u64,
    ttl: Duration,
    negative_ttl: Duration,
    clock: Arc<dyn Clock>,
    /// The change feed, until the first lookup starts it.
    feed: Option<Arc<Mutex<Option<ChangeFeed>>>>,
}

impl<S: KeyStore> CachedKeyStore<S> {
    /// Caches the records of `inner`: up to 100,000 of them, for 10 seconds each, and unknown
    /// keys for 5 seconds.
    pub fn new(inner: S) -> Self {
        Self::with_config(
            Arc::new(inner),
            CacheConfig {
                max_capacity: DEFAULT_MAX_CAPACITY,
                ttl: DEFAULT_TTL,
                negative_ttl: DEFAULT_NEGATIVE_TTL,
                clock: Arc::new(SystemClock),
                feed: None,
            },
        )
    }

    /// Holds at most about `max_capacity` records (known and unknown keys together): the
    /// capacity is split over internal shards, each share rounded up, so the cache may hold up
    /// to one entry per shard more. 0 caches nothing; concurrent lookups of a key still share
    /// one call to the store.
    pub fn max_capacity(self, max_capacity: u64) -> Self {
        let config = CacheConfig {
            max_capacity,
            ..self.config
        };
        Self::with_config(self.inner, config)
    }

    /// Keeps a record for at most `ttl`: the bound on how long another instance's revocation
    /// can go unseen here.
    pub fn ttl(self, ttl: Duration) -> Self {
        let config = CacheConfig { ttl, ..self.config };
        Self::with_config(self.inner, config)
    }

    /// Remembers that a key is unknown for `negative_ttl`.
    pub fn negative_ttl(self, negative_ttl: Duration) -> Self {
        let config = CacheConfig {
            negative_ttl,
            ..self.config
        };
        Self::with_config(self.inner, config)
    }

    /// Reads the time from `clock` to end entries at their key's expiry.
    pub fn clock(self, clock: impl Clock) -> Self {
        let config = CacheConfig {
            clock: Arc::new(clock),
            ..self.config
        };
        Self::with_config(self.inner, config)
    }

    /// Evicts entries as soon as `feed` hears that their keys changed in the store, whichever
    /// instance changed them (see [`ChangeFeed`] for the guarantee). The feed starts with the
    /// first lookup made on a tokio runtime, on that runtime; until it listens, and whenever it
    /// stops listening, lookups go to the store.
    ///
    /// ```
    /// use tower_api_key::{MemoryKeyStore, store::{CachedKeyStore, ChangeFeed}};
    ///
    /// # let feed = ChangeFeed::new(|invalidator| async move { invalidator.listening() });
    /// // With a shared store, the feed comes from it: `PgKeyStore::changes`, `RedisKeyStore::changes`.
    /// let store = CachedKeyStore::new(MemoryKeyStore::new()).push_invalidation(feed);
    /// ```
    pub fn push_invalidation(self, feed: ChangeFeed) -> Self {
        let config = CacheConfig {
            feed: Some(Arc::new(Mutex::new(Some(feed)))),
            ..self.config
        };
        Self::with_config(self.inner, config)
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn with_config(inner: Arc<S>, config: CacheConfig) -> Self {
        // 0 caches nothing (lookups are still shared). quick_cache splits the capacity over
        // its shards, rounding each share up: the cache may hold a few entries more.
        let capacity = config.max_capacity;
        let records = quick_cache::sync::Cache::with(
            usize::try_from(capacity).unwrap_or(usize::MAX),
            capacity,
            quick_cache::UnitWeighter,
            foldhash::fast::RandomState::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        );
        let shared = Arc::new(Shared {
            records,
            writes: std::array::from_fn(|_| AtomicU64::new(0)),
            listening: AtomicBool::new(config.feed.is_none()),
        });
        Self {
            inner,
            shared,
            in_flight: Arc::default(),
            config,
        }
    }

    /// The write generation of `lookup_id`'s stripe.
    fn generation(&self, lookup_id: &LookupId) -> &AtomicU64 {
        &self.shared.writes[stripe(lookup_id)]
    }

    /// Starts the change feed, if there is one still to start.
    /// Outside a tokio runtime it waits for a lookup made inside one: until then the cache asks
    /// the store every time.
    fn start_feed(&self) {
        let Some(feed) = &self.config.feed else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(feed) = lock(feed).take() {
            feed.start(&runtime, Invalidator::new(&self.shared));
        }
    }

    /// Runs `write`, a write of the inner store, to its end even if the caller goes away; once
    /// it is done, retires what was cached of the `lookup_ids` it changed, including lookups
    /// still in flight. `lookup_ids` answers `None` when the write failed without saying what
    /// changed (it may have timed out after the store committed): then every entry is retired.
    ///
    /// A caller that goes away before the write is done (a client disconnect, a timeout) retires
    /// every entry at once, as the store may have committed already; the write still retires
    /// its own when it ends, in case the store commits later.
    async fn write<T, E>(
        &self,
        write: impl Future<Output = Result<T, E>> + Send + 'static,
        lookup_ids: impl FnOnce(&Result<T, E>) -> Option<Vec<LookupId>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let retirer = Arc::clone(&self.shared);
        let unfinished = RetireAllOnDrop(Arc::clone(&retirer));
        let finish = async move {
            let result = write.await;
            retirer.retire(lookup_ids(&result));
            result
        };
        let result = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => match runtime.spawn(finish).await {
                Ok(result) => result,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => Err(StoreError::new(
                    "the write was cancelled: the runtime is shutting down",
                )
                .into()),
            },
            Err(_) => finish.await,
        };
        unfinished.disarm();
        result
    }

    /// Reads `lookup_id` from the store and caches it; concurrent callers share one read.
    async fn fill(&self, lookup_id: &LookupId) -> Result<Arc<Cached>, StoreError> {
        let waiter = Waiter {
            in_flight: &self.in_flight,
            lookup_id: *lookup_id,
            fill: Arc::clone(lock(&self.in_flight).entry(*lookup_id).or_default()),
        };
        let filled = waiter
            .fill
            .get_or_init(|| async {
                let generation = self.generation(lookup_id).load(Ordering::SeqCst);
                let found = self.inner.find(lookup_id).await.map_err(Arc::new)?;
                let cached = Arc::new(Cached {
                    expires: Instant::now().checked_add(self.config.lifetime(found.as_ref())),
                    found,
                    generation,
                    last_used: AtomicU64::new(0),
                });
                self.shared.records.insert(*lookup_id, Arc::clone(&cached));
                Ok(cached)
            })
            .await
            .clone();
        filled.map_err(StoreError::new)
    }

    /// The cached answer for `lookup_id`, if there is one no write has overtaken.
    fn cached(&self, lookup_id: &LookupId) -> Option<Option<KeyRecord>> {
        if !self.shared.listening.load(Ordering::SeqCst) {
            return None;
        }
        let cached = self.shared.records.get(lookup_id)?;
        let stale = cached.generation != self.generation(lookup_id).load(Ordering::SeqCst);
        // Stale: read before a write to its stripe. Expired: past its lifetime.
        if stale
            || cached
                .expires
                .is_some_and(|expires| expires <= Instant::now())
        {
            // Only this entry: a fresher one another lookup put there since must stay.
            self.shared
                .records
                .remove_if(lookup_id, |current| Arc::ptr_eq(current, &cached));
            return None;
        }
        crate::metrics::cache_hit();
        Some(cached.record())
    }
}

impl Shared {
    pub(crate) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// The change feed stopped listening: serve nothing cached until it listens again.
    pub(crate) fn stop_listening(&self) {
        self.listening.store(false, Ordering::SeqCst);
        self.retire(None);
    }

    /// The change feed listens: drop what was cached or in flight before (a change may have
    /// been missed meanwhile), then serve from the cache again.
    pub(crate) fn start_listening(&self) {
        self.retire(None);
        self.listening.store(true, Ordering::SeqCst);
    }

    /// Makes the entries of `lookup_ids` stale, or every entry for `None`; lookups in flight
    /// included.
    pub(crate) fn retire(&self, lookup_ids: Option<Vec<LookupId>>) {
        let Some(lookup_ids) = lookup_ids else {
            self.writes
                .iter()
                .for_each(|generation| _ = generation.fetch_add(1, Ordering::SeqCst));
            self.records.clear();
            return;
        };
        for lookup_id in lookup_ids {
            self.writes[stripe(&lookup_id)].fetch_add(1, Ordering::SeqCst);
            self.records.remove(&lookup_id);
        }
    }
}

/// The stripe of write generations that `lookup_id` belongs to.
fn stripe(lookup_id: &LookupId) -> usize {
    usize::from(u16::from_le_bytes([
        lookup_id.as_bytes()[0],
        lookup_id.as_bytes()[1],
    ])) % STRIPES
}

impl<S> Clone for CachedKeyStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            shared: Arc::clone(&self.shared),
            in_flight: Arc::clone(&self.in_flight),
            config: self.config.clone(),
        }
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for CachedKeyStore<S> {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(found) = self.cached(lookup_id) {
            return Ok(found);
        }
        crate::metrics::cache_miss();
        self.start_feed();
        let filled = self.fill(lookup_id).await?;
        if filled.generation == self.generation(lookup_id).load(Ordering::SeqCst) {
            return Ok(filled.record());
        }
        // A write overtook the read: what it found may be stale, so ask the store itself.
        self.shared
            .records
            .remove_if(lookup_id, |current| Arc::ptr_eq(current, &filled));
        self.inner.find(lookup_id).await
    }

    fn find_now(&self, lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        self.cached(lookup_id).map(Ok)
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        if let Some(cached) = self.shared.records.get(&record.digest.lookup_id()) {
            let micros = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_micros());
            cached
                .last_used
                .fetch_max(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        self.inner.record_use(record, at);
    }
}

#[async_trait]
impl<S: WritableKeyStore> WritableKeyStore for CachedKeyStore<S> {
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        let mut changed = vec![record.digest.lookup_id()];
        if let Some((retiring, _)) = &quota.retiring {
            // The retired key's cached record must learn its new expiry: find it before the
            // write, so that a failure here changes nothing.
            let retired = self
                .inner
                .get(record.identity.account_id(), retiring)
                .await?;
            changed.extend(retired.map(|old| old.digest.lookup_id()));
        }
        let inner = Arc::clone(&self.inner);
        let write = async move { inner.create(record, quota).await };
        self.write(write, |_| Some(changed)).await
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(account_id).await
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(account_id, key_id).await
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (inner, account_id, key_id) = (
            Arc::clone(&self.inner),
            account_id.to_owned(),
            key_id.clone(),
        );
        let write = async move { inner.revoke(&account_id, &key_id, at).await };
        self.write(write, changed_lookup_id).await
    }

    async fn set_disabled(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: Option<SystemTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (inner, account_id, key_id) = (
            Arc::clone(&self.inner),
            account_id.to_owned(),
            key_id.clone(),
        );
        let write = async move { inner.set_disabled(&account_id, &key_id, at).await };
        self.write(write, changed_lookup_id).await
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (inner, account_id, key_id) = (
            Arc::clone(&self.inner),
            account_id.to_owned(),
            key_id.clone(),
        );
        let write = async move { inner.delete(&account_id, &key_id).await };
        self.write(write, changed_lookup_id).await
    }

    // Balances are not cached: the layer decides nothing from them, and each spend must reach
    // the store that all instances share.
    async fn spend_credits(
        &self,
        key_id: &KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<Option<Spend>, StoreError> {
        self.inner.spend_credits(key_id, cost, now).await
    }

    async fn top_up_credits(
        &self,
        account_id: &str,
        key_id: &KeyId,
        amount: u64,
        now: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        (self.inner)
            .top_up_credits(account_id, key_id, amount, now)
            .await
    }

    /// The inner store's import; then every imported key is forgotten, so that a lookup made
    /// before the import (cached as unknown) does not outlive it.
    async fn import(&self, records: Vec<KeyRecord>) -> Result<Vec<bool>, StoreError> {
        let changed: Vec<LookupId> = records
            .iter()
            .map(|record| record.digest.lookup_id())
            .collect();
        let inner = Arc::clone(&self.inner);
        let write = async move { inner.import(records).await };
        self.write(write, |_| Some(changed)).await
    }
}

/// Retires every cached entry when dropped: a write whose caller went away may have changed any.
struct RetireAllOnDrop(Arc<Shared>);

impl RetireAllOnDrop {
    /// The caller saw the write end, which retired what it changed.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for RetireAllOnDrop {
    fn drop(&mut self) {
        self.0.retire(None);
    }
}

fn changed_lookup_id(result: &Result<Option<KeyRecord>, StoreError>) -> Option<Vec<LookupId>> {
    match result {
        Ok(Some(record)) => Some(vec![record.digest.lookup_id()]),
        Ok(None) => Some(Vec::new()),
        Err(_) => None,
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedKeyStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedKeyStore")
            .field("inner", &self.inner)
            .field("entries", &self.shared.records.len())
            .field("push_invalidation", &self.config.feed.is_some())
            .field("max_capacity", &self.config.max_capacity)
            .field("ttl", &self.config.ttl)
            .field("negative_ttl", &self.config.negative_ttl)
            .finish_non_exhaustive()
    }
}

/// One read of the store that concurrent lookups of a key wait for.
type Fill = tokio::sync::OnceCell<Result<Arc<Cached>, Arc<StoreError>>>;

/// A lookup waiting on a [`Fill`]. However it ends, done or dropped (a client gone, a timeout),
/// it takes the fill out of the in-flight map once the fill is done or nobody else waits, so
/// that cancelled lookups of many keys cannot grow the map.
struct Waiter<'a> {
    in_flight: &'a Mutex<HashMap<LookupId, Arc<Fill>>>,
    lookup_id: LookupId,
    fill: Arc<Fill>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(self.in_flight);
        let ours = in_flight
            .get(&self.lookup_id)
            .is_some_and(|current| Arc::ptr_eq(current, &self.fill));
        // Under the lock no one else can take a clone: 2 means the map's and ours.
        let last = self.fill.initialized() || Arc::strong_count(&self.fill) == 2;
        if ours && last {
            in_flight.remove(&self.lookup_id);
        }
    }
}

// No code panics while holding the lock, so a poisoned lock still holds a consistent map.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CacheConfig {
    /// How long an answer is served: known keys for the TTL but not past their own expiry,
    /// unknown keys for the negative TTL.
    fn lifetime(&self, found: Option<&KeyRecord>) -> Duration {
        let Some(record) = found else {
            return self.negative_ttl;
        };
        let until_expiry = record.expires_at.map(|expires_at| {
            expires_at
                .duration_since(self.clock.now())
                .unwrap_or(Duration::ZERO)
        });
        until_expiry.map_or(self.ttl, |left| left.min(self.ttl))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::KeyDigest;

    /// A store whose lookups never finish, as one hung during an outage.
    #[derive(Clone)]
    struct Hung;

    #[async_trait]
    impl KeyStore for Hung {
        async fn find(&self, _lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn cancelled_lookups_leave_nothing_in_flight() {
        let cache = CachedKeyStore::new(Hung);
        for index in 0..100 {
            let lookup_id = KeyDigest::of(&format!("sk_live_{index}")).lookup_id();
            let lookup = tokio::time::timeout(Duration::from_millis(1), cache.find(&lookup_id));
            assert!(lookup.await.is_err(), "the hung store never answers");
        }
        assert!(lock(&cache.in_flight).is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_fill_to_the_others() {
        let cache = CachedKeyStore::new(Hung);
        let lookup_id = KeyDigest::of("sk_live_shared").lookup_id();
        let spawn = || {
            let cache = cache.clone();
            tokio::spawn(async move { cache.find(&lookup_id).await })
        };
        let (first, second) = (spawn(), spawn());
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(lock(&cache.in_flight).len(), 1, "the second still waits");
        second.abort();
        assert!(second.await.unwrap_err().is_cancelled());
        assert!(lock(&cache.in_flight).is_empty());
    }

    /// A store that knows one key and counts the lookups of each.
    #[derive(Clone, Default)]
    struct Counting {
        known: Option<KeyRecord>,
        lookups: Arc<Mutex<HashMap<[u8; 16], usize>>>,
    }

    impl Counting {
        fn lookups_of(&self, lookup_id: &LookupId) -> usize {
            lock(&self.lookups)
                .get(lookup_id.as_bytes())
                .copied()
                .unwrap_or(0)
        }
    }

    #[async_trait]
    impl KeyStore for Counting {
        async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
            *lock(&self.lookups)
                .entry(*lookup_id.as_bytes())
                .or_default() += 1;
            Ok(self
                .known
                .clone()
                .filter(|record| record.digest.lookup_id() == *lookup_id))
        }
    }

    /// A counting store that knows `known_record()`.
    fn knowing_hot_key() -> Counting {
        Counting {
            known: Some(known_record()),
            ..Counting::default()
        }
    }

    fn known_record() -> KeyRecord {
        let identity =
            crate::KeyIdentity::new(KeyId::new("key_hot"), "acct", "hot", crate::Tier::FREE);
        KeyRecord::new(KeyDigest::of("sk_live_hot"), identity)
    }

    #[tokio::test]
    async fn holds_at_most_max_capacity_entries() {
        let cache = CachedKeyStore::new(Counting::default()).max_capacity(50);
        for index in 0..1_000 {
            let lookup_id = KeyDigest::of(&format!("sk_live_{index}")).lookup_id();
            assert!(cache.find(&lookup_id).await.unwrap().is_none());
        }
        assert!(
            (1..=50).contains(&cache.shared.records.len()),
            "{} entries",
            cache.shared.records.len()
        );
    }

    #[tokio::test]
    async fn a_key_in_regular_use_stays_cached_through_a_flood_of_one_off_keys() {
        let store = knowing_hot_key();
        let cache = CachedKeyStore::new(store.clone()).max_capacity(100);
        let one_off = |index: usize| KeyDigest::of(&format!("sk_live_flood_{index}")).lookup_id();
        // Already full of one-off keys when the key in use first arrives.
        for index in 0..1_000 {
            assert!(cache.find(&one_off(index)).await.unwrap().is_none());
        }
        let hot = known_record().digest.lookup_id();
        for index in 1_000..11_000 {
            if index % 25 == 0 {
                assert!(cache.find(&hot).await.unwrap().is_some());
            }
            assert!(cache.find(&one_off(index)).await.unwrap().is_none());
        }
        // 400 uses, each after 25 one-off keys: read from the store at most twice.
        assert!(store.lookups_of(&hot) <= 2, "{}", store.lookups_of(&hot));
    }

    #[tokio::test]
    async fn zero_capacity_caches_nothing() {
        let store = knowing_hot_key();
        let cache = CachedKeyStore::new(store.clone()).max_capacity(0);
        let hot = known_record().digest.lookup_id();
        for _ in 0..3 {
            assert!(cache.find(&hot).await.unwrap().is_some());
        }
        assert_eq!(store.lookups_of(&hot), 3);
        assert_eq!(cache.shared.records.len(), 0);
    }
}
