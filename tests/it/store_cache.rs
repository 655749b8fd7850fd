//! `CachedKeyStore`: the store suite over a cached `MemoryKeyStore`, and the cache's own rules.
#![cfg(feature = "cache")]

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use common::suite::{self, Backend};
use common::verdict_through;
use tokio::sync::Notify;
use tower_api_key::{
    key::{KeyDigest, KeyFormat},
    store::CachedKeyStore,
    KeyId, KeyIdentity, KeyRecord, KeyStore, LookupId, MemoryKeyStore, StoreError, Tier,
};

/// Each instance has its own cache over one shared memory store, as two processes over one
/// database would.
#[derive(Default)]
struct CachedMemory(MemoryKeyStore);

#[async_trait]
impl Backend for CachedMemory {
    type Store = CachedKeyStore<MemoryKeyStore>;

    async fn instance(&self) -> Self::Store {
        CachedKeyStore::new(self.0.clone())
    }
}

tower_api_key::store_suite!(CachedMemory::default());

/// A store that counts lookups and can be made to fail or to wait.
#[derive(Clone, Default)]
struct Probe {
    inner: MemoryKeyStore,
    lookups: Arc<AtomicUsize>,
    /// Lookups that have read the record (and may now wait at the gate).
    reads: Arc<AtomicUsize>,
    uses: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    delay: Option<Duration>,
    /// When set, a lookup reads the record, then waits for this before answering.
    gate: Option<Arc<Notify>>,
    /// When set, a revocation or deletion commits, then waits this long before answering.
    write_delay: Option<Duration>,
    /// When set, a revocation waits this long before it commits.
    commit_delay: Option<Duration>,
}

impl Probe {
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KeyStore for Probe {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::new("the database is down"));
        }
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let found = self.inner.find(lookup_id).await;
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        found
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        self.uses.fetch_add(1, Ordering::SeqCst);
        self.inner.record_use(record, at);
    }
}

#[async_trait]
impl tower_api_key::store::WritableKeyStore for Probe {
    async fn create(
        &self,
        record: KeyRecord,
        quota: tower_api_key::store::Quota,
    ) -> Result<(), tower_api_key::store::CreateError> {
        self.inner.create(record, quota).await
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
        if let Some(delay) = self.commit_delay {
            tokio::time::sleep(delay).await;
        }
        let revoked = self.inner.revoke(account_id, key_id, at).await;
        self.answer_late().await;
        revoked
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let deleted = self.inner.delete(account_id, key_id).await;
        self.answer_late().await;
        deleted
    }
}

impl Probe {
    async fn answer_late(&self) {
        if let Some(delay) = self.write_delay {
            tokio::time::sleep(delay).await;
        }
    }
}

/// A stored key and its record.
fn stored_key(store: &MemoryKeyStore) -> (tower_api_key::ApiKey, KeyRecord) {
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::random(), "acct_1", "ci", Tier::FREE);
    let record = KeyRecord::new(key.digest(), identity);
    store.insert(record.clone());
    (key, record)
}

#[tokio::test]
async fn repeated_lookups_of_a_key_reach_the_store_once() {
    let probe = Probe::default();
    let (key, _) = stored_key(&probe.inner);
    let cache = CachedKeyStore::new(probe.clone());
    for _ in 0..100 {
        assert!(cache
            .find(&key.digest().lookup_id())
            .await
            .unwrap()
            .is_some());
    }
    assert_eq!(probe.lookups(), 1);
}

#[tokio::test]
async fn unknown_keys_are_cached_for_the_negative_ttl() {
    let probe = Probe::default();
    // Long enough that 100 lookups fit in it even on a loaded machine.
    let cache = CachedKeyStore::new(probe.clone()).negative_ttl(Duration::from_secs(1));
    let unknown = KeyDigest::of("sk_live_unknown").lookup_id();
    for _ in 0..100 {
        assert!(cache.find(&unknown).await.unwrap().is_none());
    }
    assert_eq!(
        probe.lookups(),
        1,
        "a flood of one bad key reaches the store once"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cache.find(&unknown).await.unwrap();
    assert_eq!(probe.lookups(), 2);
}

#[tokio::test]
async fn a_key_created_through_the_cache_is_not_hidden_by_a_cached_miss() {
    use tower_api_key::store::WritableKeyStore;
    let cache = CachedKeyStore::new(MemoryKeyStore::new());
    let key = KeyFormat::default().generate();
    let lookup_id = key.digest().lookup_id();
    assert!(
        cache.find(&lookup_id).await.unwrap().is_none(),
        "now cached as unknown"
    );
    let identity = KeyIdentity::new(KeyId::random(), "acct_1", "ci", Tier::FREE);
    let quota = tower_api_key::store::Quota::new(3, SystemTime::now());
    cache
        .create(KeyRecord::new(key.digest(), identity), quota)
        .await
        .unwrap();
    assert!(cache.find(&lookup_id).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_key_make_one_store_call() {
    let probe = Probe {
        delay: Some(Duration::from_millis(50)),
        ..Probe::default()
    };
    let (key, _) = stored_key(&probe.inner);
    let cache = CachedKeyStore::new(probe.clone());
    let lookups: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            let lookup_id = key.digest().lookup_id();
            tokio::spawn(async move { cache.find(&lookup_id).await.unwrap().is_some() })
        })
        .collect();
    for lookup in lookups {
        assert!(lookup.await.unwrap());
    }
    assert_eq!(probe.lookups(), 1);
}

#[tokio::test]
async fn store_errors_are_not_cached() {
    let probe = Probe::default();
    let (key, _) = stored_key(&probe.inner);
    let cache = CachedKeyStore::new(probe.clone());
    probe.failing.store(true, Ordering::SeqCst);
    assert_eq!(
        verdict_through(cache.clone(), &key).await,
        "authentication_unavailable"
    );
    probe.failing.store(false, Ordering::SeqCst);
    assert_eq!(verdict_through(cache, &key).await, "ok");
}

#[tokio::test]
async fn revocation_through_the_cache_is_seen_at_once() {
    let store = MemoryKeyStore::new();
    let clock = suite::clock();
    let keys = suite::manager(CachedKeyStore::new(store), &clock);
    let created = suite::create(&keys, "acct_1").await;
    assert_eq!(suite::verdict(&keys, &created.key).await, "ok");
    keys.revoke("acct_1", &created.info.id).await.unwrap();
    assert_eq!(suite::verdict(&keys, &created.key).await, "expired_api_key");
}

#[tokio::test]
async fn deletion_through_the_cache_is_seen_at_once() {
    let clock = suite::clock();
    let keys = suite::manager(CachedKeyStore::new(MemoryKeyStore::new()), &clock);
    let created = suite::create(&keys, "acct_1").await;
    assert_eq!(suite::verdict(&keys, &created.key).await, "ok");
    keys.delete("acct_1", &created.info.id).await.unwrap();
    assert_eq!(suite::verdict(&keys, &created.key).await, "invalid_api_key");
}

#[tokio::test]
async fn rotation_through_the_cache_ends_the_old_key_after_its_grace() {
    let clock = suite::clock();
    let keys = suite::manager(CachedKeyStore::new(MemoryKeyStore::new()), &clock);
    let old = suite::create(&keys, "acct_1").await;
    assert_eq!(
        suite::verdict(&keys, &old.key).await,
        "ok",
        "now cached without an expiry"
    );
    let grace = Duration::from_secs(60);
    keys.rotate("acct_1", &old.info.id, grace).await.unwrap();
    clock.advance(grace);
    assert_eq!(suite::verdict(&keys, &old.key).await, "expired_api_key");
}

#[tokio::test]
async fn another_instance_sees_a_revocation_within_the_ttl() {
    let shared = MemoryKeyStore::new();
    // Long enough that the lookups before the sleep fit in it even on a loaded machine.
    let ttl = Duration::from_secs(1);
    let clock = suite::clock();
    let here = suite::manager(CachedKeyStore::new(shared.clone()).ttl(ttl), &clock);
    let elsewhere = suite::manager(CachedKeyStore::new(shared), &clock);
    let created = suite::create(&here, "acct_1").await;
    assert_eq!(suite::verdict(&here, &created.key).await, "ok");
    elsewhere.revoke("acct_1", &created.info.id).await.unwrap();
    assert_eq!(
        suite::verdict(&here, &created.key).await,
        "ok",
        "within the TTL this instance may still accept the key: the documented bound"
    );
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(suite::verdict(&here, &created.key).await, "expired_api_key");
}

#[tokio::test]
async fn entries_end_at_their_key_s_expiry() {
    let probe = Probe::default();
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::random(), "acct_1", "ci", Tier::FREE);
    let expires_at = SystemTime::now() + Duration::from_millis(500);
    probe
        .inner
        .insert(KeyRecord::new(key.digest(), identity).with_expires_at(expires_at));
    let cache = CachedKeyStore::new(probe.clone()).ttl(Duration::from_secs(60));
    cache.find(&key.digest().lookup_id()).await.unwrap();
    cache.find(&key.digest().lookup_id()).await.unwrap();
    assert_eq!(probe.lookups(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    cache.find(&key.digest().lookup_id()).await.unwrap();
    assert_eq!(probe.lookups(), 2, "the entry ended with the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_in_flight_during_a_revocation_does_not_cache_the_old_record() {
    let gate = Arc::new(Notify::new());
    let probe = Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    };
    let (key, record) = stored_key(&probe.inner);
    let cache = CachedKeyStore::new(probe.clone());
    let lookup_id = key.digest().lookup_id();

    // The lookup reads the active record, then stalls before answering.
    let in_flight = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.find(&lookup_id).await.unwrap() })
    };
    while probe.lookups() == 0 {
        tokio::task::yield_now().await;
    }
    let revoke = {
        use tower_api_key::store::WritableKeyStore;
        cache.revoke("acct_1", record.identity.key_id(), SystemTime::now())
    };
    // The revocation writes straight through; no lookup of its own waits at the gate.
    revoke.await.unwrap().unwrap();
    let releaser = tokio::spawn(async move {
        loop {
            gate.notify_one();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    in_flight.await.unwrap();
    let after = cache.find(&lookup_id).await.unwrap().unwrap();
    releaser.abort();
    assert!(
        after.revoked_at.is_some(),
        "the pre-revocation record was cached"
    );
}

#[tokio::test]
async fn uses_are_recorded_once_per_interval_through_the_cache() {
    let probe = Probe::default();
    let (key, _) = stored_key(&probe.inner);
    let cache = CachedKeyStore::new(probe.clone());
    for _ in 0..100 {
        assert_eq!(verdict_through(cache.clone(), &key).await, "ok");
    }
    assert_eq!(probe.uses.load(Ordering::SeqCst), 1);
}

/// A cache over a store whose writes commit at once but answer a minute later, and a key it
/// has cached as valid.
async fn cached_key_over_a_slow_writer() -> (CachedKeyStore<Probe>, tower_api_key::ApiKey, KeyId) {
    let probe = Probe {
        write_delay: Some(Duration::from_secs(60)),
        ..Probe::default()
    };
    let (key, record) = stored_key(&probe.inner);
    let cache = CachedKeyStore::new(probe);
    assert_eq!(verdict_through(cache.clone(), &key).await, "ok");
    (cache, key, record.identity.key_id().clone())
}

#[tokio::test]
async fn a_revocation_cut_short_after_the_store_committed_is_seen_at_once() {
    use tower_api_key::store::WritableKeyStore;
    let (cache, key, key_id) = cached_key_over_a_slow_writer().await;
    let revoke = cache.revoke("acct_1", &key_id, SystemTime::now());
    let cut_short = tokio::time::timeout(Duration::from_millis(50), revoke).await;
    assert!(cut_short.is_err(), "the revocation was to time out");
    assert_eq!(verdict_through(cache, &key).await, "expired_api_key");
}

#[tokio::test]
async fn a_deletion_cut_short_after_the_store_committed_is_seen_at_once() {
    use tower_api_key::store::WritableKeyStore;
    let (cache, key, key_id) = cached_key_over_a_slow_writer().await;
    let delete = cache.delete("acct_1", &key_id);
    let cut_short = tokio::time::timeout(Duration::from_millis(50), delete).await;
    assert!(cut_short.is_err(), "the deletion was to time out");
    assert_eq!(verdict_through(cache, &key).await, "invalid_api_key");
}

#[tokio::test]
async fn a_revocation_that_commits_after_its_caller_left_is_seen_once_it_commits() {
    use tower_api_key::store::WritableKeyStore;
    let probe = Probe {
        commit_delay: Some(Duration::from_millis(200)),
        ..Probe::default()
    };
    let (key, record) = stored_key(&probe.inner);
    let cache = CachedKeyStore::new(probe.clone());
    let revoke = cache.revoke("acct_1", record.identity.key_id(), SystemTime::now());
    let cut_short = tokio::time::timeout(Duration::from_millis(20), revoke).await;
    assert!(cut_short.is_err(), "the revocation was to time out");
    // Not committed yet: the key still works, and its record is cached again.
    assert_eq!(verdict_through(cache.clone(), &key).await, "ok");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while verdict_through(cache.clone(), &key).await == "ok" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revocation committed, but this instance still accepts the key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(verdict_through(cache, &key).await, "expired_api_key");
}

/// A change feed driven by the test: it hands its `Invalidator` out once the cache starts it.
fn manual_feed() -> (
    tower_api_key::store::ChangeFeed,
    tokio::sync::oneshot::Receiver<tower_api_key::store::Invalidator>,
) {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let feed = tower_api_key::store::ChangeFeed::new(|invalidator| async move {
        let _ = sender.send(invalidator);
    });
    (feed, receiver)
}

/// A cache over `probe` whose hand-driven feed listens, started by a lookup of `key`; its TTL
/// is an hour, so that only the feed can explain a refusal.
async fn listening_cache(
    probe: &Probe,
    key: &tower_api_key::ApiKey,
) -> (CachedKeyStore<Probe>, tower_api_key::store::Invalidator) {
    let (feed, invalidator) = manual_feed();
    let cache = CachedKeyStore::new(probe.clone())
        .ttl(Duration::from_secs(3600))
        .push_invalidation(feed);
    cache.find(&key.digest().lookup_id()).await.unwrap();
    let invalidator = invalidator.await.expect("the first lookup starts the feed");
    invalidator.listening();
    (cache, invalidator)
}

#[tokio::test]
async fn a_cache_with_a_feed_serves_nothing_until_the_feed_listens() {
    let probe = Probe::default();
    let (key, _) = stored_key(&probe.inner);
    let (feed, invalidator) = manual_feed();
    let cache = CachedKeyStore::new(probe.clone()).push_invalidation(feed);
    let lookup_id = key.digest().lookup_id();
    for _ in 0..3 {
        assert!(cache.find(&lookup_id).await.unwrap().is_some());
    }
    assert_eq!(probe.lookups(), 3, "served from the cache before listening");

    let invalidator = invalidator.await.expect("the first lookup starts the feed");
    invalidator.listening();
    for _ in 0..3 {
        assert!(cache.find(&lookup_id).await.unwrap().is_some());
    }
    assert_eq!(
        probe.lookups(),
        4,
        "once listening, one lookup fills the cache"
    );
}

#[tokio::test]
async fn a_change_pushed_by_the_feed_evicts_the_key_at_once() {
    let probe = Probe::default();
    let (key, record) = stored_key(&probe.inner);
    let (cache, invalidator) = listening_cache(&probe, &key).await;
    let lookup_id = key.digest().lookup_id();
    assert_eq!(verdict_through(cache.clone(), &key).await, "ok");
    assert_eq!(verdict_through(cache.clone(), &key).await, "ok");
    let before = probe.lookups();

    // Another instance revokes the key in the shared store; this cache is told.
    probe
        .inner
        .insert(record.clone().with_revoked_at(SystemTime::now()));
    assert_eq!(
        verdict_through(cache.clone(), &key).await,
        "ok",
        "still cached: nothing was pushed yet"
    );
    invalidator.changed(&lookup_id);
    assert_eq!(
        verdict_through(cache.clone(), &key).await,
        "expired_api_key"
    );
    assert_eq!(probe.lookups(), before + 1);
}

#[tokio::test]
async fn a_feed_that_loses_its_channel_stops_the_cache_serving_until_it_listens_again() {
    let probe = Probe::default();
    let (key, record) = stored_key(&probe.inner);
    let (cache, invalidator) = listening_cache(&probe, &key).await;
    assert_eq!(verdict_through(cache.clone(), &key).await, "ok");

    // The channel drops; a revocation happens meanwhile, and its message is never sent.
    invalidator.lost();
    probe
        .inner
        .insert(record.clone().with_revoked_at(SystemTime::now()));
    assert_eq!(
        verdict_through(cache.clone(), &key).await,
        "expired_api_key"
    );
    // Listening again, the cache does not bring back what it held before.
    invalidator.listening();
    assert_eq!(
        verdict_through(cache.clone(), &key).await,
        "expired_api_key"
    );
    assert!(!invalidator.is_closed());
    drop(cache);
    assert!(
        invalidator.is_closed(),
        "the feed can tell the cache is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_in_flight_when_the_feed_reconnects_is_not_trusted() {
    let gate = Arc::new(Notify::new());
    let probe = Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    };
    let (key, record) = stored_key(&probe.inner);
    let (feed, invalidator) = manual_feed();
    let cache = CachedKeyStore::new(probe.clone())
        .ttl(Duration::from_secs(3600))
        .push_invalidation(feed);
    let lookup_id = key.digest().lookup_id();

    // A lookup reads the active record while the feed is down, and stalls.
    let in_flight = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.find(&lookup_id).await.unwrap() })
    };
    let invalidator = invalidator.await.unwrap();
    // Once the lookup has read the record: the revocation must come after the read.
    while probe.reads.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // The key is revoked while the feed is down (no message), then the feed listens again.
    probe
        .inner
        .insert(record.clone().with_revoked_at(SystemTime::now()));
    invalidator.listening();
    let releaser = tokio::spawn(async move {
        loop {
            gate.notify_one();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    in_flight.await.unwrap();
    let after = cache.find(&lookup_id).await.unwrap().unwrap();
    releaser.abort();
    assert!(
        after.revoked_at.is_some(),
        "a record read before the feed listened was served after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_panics_leaves_a_cache_that_serves_nothing() {
    let probe = Probe::default();
    let (key, _) = stored_key(&probe.inner);
    let (told, listened) = tokio::sync::oneshot::channel::<()>();
    let feed = tower_api_key::store::ChangeFeed::new(|invalidator| async move {
        invalidator.listening();
        let _ = told.send(());
        tokio::time::sleep(Duration::from_millis(50)).await;
        panic!("the feed broke");
    });
    let cache = CachedKeyStore::new(probe.clone())
        .ttl(Duration::from_secs(3600))
        .push_invalidation(feed);
    let lookup_id = key.digest().lookup_id();
    cache.find(&lookup_id).await.unwrap();
    listened.await.unwrap();
    cache.find(&lookup_id).await.unwrap();
    assert!(
        cache.find_now(&lookup_id).is_some(),
        "served while listening"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        cache.find_now(&lookup_id).is_none(),
        "still served after its feed died"
    );
}

/// A lookup outside any tokio runtime neither panics nor starts the feed: the cache asks the
/// store, and the feed starts with the first lookup made on a runtime.
#[test]
fn a_cache_with_a_feed_answers_outside_a_tokio_runtime() {
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            std::thread::yield_now();
        }
    }
    let probe = Probe::default();
    let (key, _) = stored_key(&probe.inner);
    let (feed, mut invalidator) = manual_feed();
    let cache = CachedKeyStore::new(probe.clone()).push_invalidation(feed);
    let lookup_id = key.digest().lookup_id();
    for _ in 0..2 {
        assert!(block_on(cache.find(&lookup_id)).unwrap().is_some());
    }
    assert_eq!(
        probe.lookups(),
        2,
        "served from a cache whose feed never started"
    );
    assert!(
        invalidator.try_recv().is_err(),
        "the feed started without a runtime"
    );
}
