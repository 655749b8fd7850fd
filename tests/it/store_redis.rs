//! The store suite and the fault tests against `RedisKeyStore`, on the Redis at `REDIS_URL`.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo test --features redis --test it store_redis::
//! ```
#![cfg(feature = "redis")]

use crate::common;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use common::proxy::{self, Proxy};
use common::suite::{account, clock, create, manager, verdict, Backend};
use common::{assert_envelope, echo_identity, request, Answer};
use http::StatusCode;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    clock::{Clock, ManualClock},
    key::{KeyDigest, KeyFormat},
    limit::{Credits, Refill, RefillPeriod, Spend},
    store::{Quota, RedisKeyStore, WritableKeyStore},
    ApiKey, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, KeyStore, NewKey, Tier,
};

/// A prefix no earlier run used, shared by this process's stores, so that whatever earlier
/// runs left in Redis does not matter.
static PREFIX: LazyLock<String> =
    LazyLock::new(|| format!("tower-api-key-test-{}", uuid::Uuid::new_v4().simple()));

/// Where the tests' Redis is. Unset, the tests fail: a backend test that cannot reach its server
/// must not pass.
fn redis_info() -> ConnectionInfo {
    let url = std::env::var("REDIS_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "REDIS_URL is not set: the `redis` feature's tests need a Redis server, \
         e.g. REDIS_URL=redis://127.0.0.1:6379 cargo test --features redis --test it store_redis::"
    );
    url.as_str()
        .into_connection_info()
        .unwrap_or_else(|error| panic!("REDIS_URL is not a Redis URL: {error}"))
}

/// The Redis server's socket address, for the proxy.
fn redis_address() -> SocketAddr {
    let ConnectionAddr::Tcp(host, port) = redis_info().addr().clone() else {
        panic!("the fault tests need REDIS_URL to be a plain redis:// URL");
    };
    (host.as_str(), port)
        .to_socket_addrs()
        .unwrap()
        .find(|address| address.ip().is_loopback())
        .expect("the tests only talk to a Redis on loopback")
}

/// A new connection to the tests' Redis.
async fn connect() -> ConnectionManager {
    let client = Client::open(redis_info()).unwrap();
    ConnectionManager::new(client)
        .await
        .unwrap_or_else(|error| panic!("cannot reach the Redis at REDIS_URL: {error}"))
}

/// Short timeouts and few retries, so that a fault shows within the tests' patience.
fn impatient() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(200)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100))
}

/// Each instance has its own connection, as separate application instances would.
struct Redis {
    prefix: String,
}

impl Redis {
    fn shared() -> Self {
        Self {
            prefix: PREFIX.clone(),
        }
    }
}

#[async_trait]
impl Backend for Redis {
    type Store = RedisKeyStore;

    async fn instance(&self) -> RedisKeyStore {
        RedisKeyStore::new(connect().await).prefix(self.prefix.clone())
    }
}

tower_api_key::store_suite!(Redis::shared());

/// The layer's answer to `key` over `store`.
async fn answer(store: impl KeyStore, key: &ApiKey, clock: &ManualClock) -> Answer {
    let layer = ApiKeyLayer::new(store).clock(clock.clone());
    let service = ServiceBuilder::new().layer(layer).service_fn(echo_identity);
    let request = request(&[("x-api-key", key.expose_secret().as_bytes())]);
    Answer::read(service.oneshot(request).await.unwrap()).await
}

/// Asserts that the layer over `store` answers 503 to a key, within `patience`.
async fn assert_unavailable(store: RedisKeyStore, patience: Duration) {
    let key = KeyFormat::default().generate();
    let started = Instant::now();
    let answer = answer(store, &key, &clock()).await;
    assert_envelope(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication_unavailable",
    );
    assert!(
        started.elapsed() < patience,
        "answered after {:?}",
        started.elapsed()
    );
}

/// A store whose connection is made on first use: the redis crate builds such a
/// `ConnectionManager` without reaching the server, so it can point at a server that is down.
fn lazy_store(address: SocketAddr, timeout: Duration) -> RedisKeyStore {
    let client = Client::open(format!("redis://{address}")).unwrap();
    let connection = ConnectionManager::new_lazy_with_config(client, impatient()).unwrap();
    RedisKeyStore::new(connection)
        .prefix(PREFIX.clone())
        .timeout(timeout)
}

/// The Redis key `{<prefix>}:<kind>:<name>`, as the store names them.
fn redis_key(prefix: &str, kind: &str, name: &str) -> String {
    format!("{{{prefix}}}:{kind}:{name}")
}

fn record_key(prefix: &str, key: &ApiKey) -> String {
    redis_key(prefix, "lookup", &key.digest().lookup_id().to_hex())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_gives_503() {
    let store = lazy_store(proxy::closed_port().await, Duration::from_millis(200));
    assert_unavailable(store, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_never_answers_gives_503_within_the_timeout() {
    let store = lazy_store(proxy::silent_server().await, Duration::from_millis(200));
    assert_unavailable(store, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_gives_503_and_auth_resumes_when_it_answers_again() {
    let proxy = Proxy::start(redis_address()).await;
    let (host, port) = (proxy.address.ip().to_string(), proxy.address.port());
    let info = redis_info().set_addr(ConnectionAddr::Tcp(host, port));
    let connection = ConnectionManager::new_with_config(Client::open(info).unwrap(), impatient())
        .await
        .unwrap();
    let timeout = Duration::from_millis(300);
    let store = RedisKeyStore::new(connection)
        .prefix(PREFIX.clone())
        .timeout(timeout);
    let clock = clock();
    let created = create(&manager(store.clone(), &clock), &account()).await;
    assert_eq!(
        answer(store.clone(), &created.key, &clock).await.status,
        StatusCode::OK
    );

    proxy.hang();
    let started = Instant::now();
    let hung = answer(store.clone(), &created.key, &clock).await;
    assert_envelope(
        &hung,
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication_unavailable",
    );
    // Bounded by the timeout, not by TCP's minutes; the margin absorbs a loaded machine.
    assert!(started.elapsed() < timeout + Duration::from_secs(2));

    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = answer(store.clone(), &created.key, &clock).await;
        if answer.status == StatusCode::OK {
            break;
        }
        assert_envelope(
            &answer,
            StatusCode::SERVICE_UNAVAILABLE,
            "authentication_unavailable",
        );
        assert!(Instant::now() < deadline, "auth did not resume within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_that_is_not_a_hash_gives_503() {
    let clock = clock();
    let keys = manager(Redis::shared().instance().await, &clock);
    let created = create(&keys, &account()).await;
    let mut raw = connect().await;
    let _: () = redis::cmd("SET")
        .arg(record_key(&PREFIX, &created.key))
        .arg("not a record")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        verdict(&keys, &created.key).await,
        "authentication_unavailable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_with_a_malformed_field_gives_503() {
    let clock = clock();
    let keys = manager(Redis::shared().instance().await, &clock);
    let created = create(&keys, &account()).await;
    let mut raw = connect().await;
    let _: () = redis::cmd("HSET")
        .arg(record_key(&PREFIX, &created.key))
        .arg("expires_at")
        .arg("tomorrow")
        .query_async(&mut raw)
        .await
        .unwrap();
    let answer = answer(keys.store().clone(), &created.key, &clock).await;
    assert_envelope(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication_unavailable",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_with_different_prefixes_do_not_see_each_other_s_keys() {
    let clock = clock();
    let unique = |name: &str| format!("{}-{name}", *PREFIX);
    let (prefix_a, prefix_b) = (unique("a"), unique("b"));
    let a = manager(
        Redis {
            prefix: prefix_a.clone(),
        }
        .instance()
        .await,
        &clock,
    );
    let b = manager(
        Redis {
            prefix: prefix_b.clone(),
        }
        .instance()
        .await,
        &clock,
    );
    let account = account();
    let created = create(&a, &account).await;

    assert_eq!(verdict(&b, &created.key).await, "invalid_api_key");
    assert!(b.list(&account).await.unwrap().is_empty());
    for _ in 0..3 {
        create(&b, &account).await; // the free tier's 3, beside the key under `a`
    }
    assert_eq!(a.list(&account).await.unwrap().len(), 1);

    let mut raw = connect().await;
    let mut written: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix_a}}}:*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    written.sort();
    let expected = [
        redis_key(&prefix_a, "account", &account),
        redis_key(&prefix_a, "active", &account),
        redis_key(&prefix_a, "id", created.info.id.as_str()),
        record_key(&prefix_a, &created.key),
    ];
    assert_eq!(written, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_round_trip_to_the_microsecond_and_metadata_exactly() {
    let store = Redis::shared().instance().await;
    let created_at = UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_000);
    let metadata = serde_json::json!({
        "roles": [],
        "limits": {},
        "big": 9_007_199_254_740_993_u64,
        "ratio": 0.1,
        "nested": [null, true, "é"],
    });
    let identity = KeyIdentity::new(KeyId::random(), account(), "precise", Tier::new("gold"))
        .with_metadata(metadata.clone());
    let key = KeyFormat::default().generate();
    let record = KeyRecord::new(key.digest(), identity)
        .with_created_at(created_at)
        .with_expires_at(created_at + Duration::from_micros(1));
    store
        .create(record, Quota::new(1, created_at))
        .await
        .unwrap();

    let found = store
        .find(&key.digest().lookup_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.created_at, Some(created_at));
    assert_eq!(
        found.expires_at,
        Some(created_at + Duration::from_micros(1))
    );
    assert_eq!(found.identity.metadata(), Some(&metadata));
    assert_eq!(found.identity.tier(), &Tier::new("gold"));
}

/// A record as an earlier version wrote it: no mode, scopes, rate limit or credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_of_an_earlier_version_has_no_limit_and_no_balance_until_topped_up() {
    let clock = clock();
    let keys = manager(Redis::shared().instance().await, &clock);
    let (account, key_id, key) = (account(), KeyId::random(), KeyFormat::default().generate());
    let mut raw = connect().await;
    let _: () = redis::cmd("HSET")
        .arg(record_key(&PREFIX, &key))
        .arg(&[
            ("digest", key.digest().to_hex()),
            ("key_id", key_id.to_string()),
            ("account_id", account.clone()),
            ("name", "old".to_owned()),
            ("tier", "free".to_owned()),
        ])
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(redis_key(&PREFIX, "id", key_id.as_str()))
        .arg(key.digest().lookup_id().to_hex())
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(redis_key(&PREFIX, "account", &account))
        .arg(key_id.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();

    let store = keys.store();
    let found = store
        .find(&key.digest().lookup_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.identity.rate_limit(), found.credits), (None, None));
    assert_eq!(verdict(&keys, &key).await, "ok");
    let spend = store.spend_credits(&key_id, 1, clock.now()).await.unwrap();
    assert_eq!(spend, Some(Spend::Unmetered));
    let topped = keys.top_up(&account, &key_id, 2).await.unwrap();
    assert_eq!(topped.credits, Some(Credits::new(2)));
    assert_eq!(
        keys.list(&account).await.unwrap()[0].credits,
        Some(Credits::new(2))
    );
}

/// Balances are decimal strings in Redis and in the scripts: exact beyond 2^53 (where Lua's
/// doubles stop being) and up to `u64::MAX`, where a top-up saturates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_stay_exact_over_the_whole_u64_range() {
    let clock = clock();
    let keys = manager(Redis::shared().instance().await, &clock);
    let store = keys.store().clone();
    let account = account();
    let beyond_doubles = (1_u64 << 53) + 1;
    let new = NewKey::new(&account, Tier::FREE, "big").credits(Credits::new(beyond_doubles));
    let created = keys.create(new).await.unwrap();
    let key_id = created.info.id;
    let spend = |cost: u64| {
        let (store, key_id, now) = (store.clone(), key_id.clone(), clock.now());
        async move {
            match store.spend_credits(&key_id, cost, now).await.unwrap() {
                Some(Spend::Spent(credits)) => Ok(credits.remaining),
                Some(Spend::Exhausted(credits)) => Err(credits.remaining),
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(spend(1).await, Ok(1 << 53));
    assert_eq!(spend((1 << 53) + 1).await, Err(1 << 53));
    let topped = keys.top_up(&account, &key_id, u64::MAX - 10).await.unwrap();
    assert_eq!(topped.credits.unwrap().remaining, u64::MAX, "saturated");
    assert_eq!(spend(u64::MAX - 1).await, Ok(1));
    assert_eq!(spend(2).await, Err(1));
    let topped = keys.top_up(&account, &key_id, u64::MAX - 1).await.unwrap();
    assert_eq!(topped.credits.unwrap().remaining, u64::MAX, "exactly full");
    assert_eq!(spend(999).await, Ok(u64::MAX - 999));
    let mut raw = connect().await;
    let stored: String = redis::cmd("HGET")
        .arg(record_key(&PREFIX, &created.key))
        .arg("credits_remaining")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(stored, (u64::MAX - 999).to_string());

    // A refill of u64::MAX, due on the 1st of the next month.
    let refill = Credits::new(0).refilled(Refill::monthly(u64::MAX), UNIX_EPOCH);
    let new = NewKey::new(&account, Tier::FREE, "refilled").credits(refill);
    let refilled = keys.create(new).await.unwrap().info.id;
    let spent = store
        .spend_credits(&refilled, 3, clock.now())
        .await
        .unwrap();
    assert!(matches!(spent, Some(Spend::Exhausted(_))), "{spent:?}");
    clock.set(RefillPeriod::Month.next_after(clock.now()));
    let spent = store
        .spend_credits(&refilled, 3, clock.now())
        .await
        .unwrap();
    let Some(Spend::Spent(credits)) = spent else {
        panic!("{spent:?}");
    };
    assert_eq!(credits.remaining, u64::MAX - 3);
    assert_eq!(
        credits.refilled_at,
        Some(RefillPeriod::Month.start_of(clock.now()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_balance_gives_an_error_and_is_left_alone() {
    let clock = clock();
    let keys = manager(Redis::shared().instance().await, &clock);
    let account = account();
    let new = NewKey::new(&account, Tier::FREE, "metered").credits(Credits::new(5));
    let created = keys.create(new).await.unwrap();
    let mut raw = connect().await;
    for junk in ["lots", "-1", "05", "18446744073709551616"] {
        let _: () = redis::cmd("HSET")
            .arg(record_key(&PREFIX, &created.key))
            .arg("credits_remaining")
            .arg(junk)
            .query_async(&mut raw)
            .await
            .unwrap();
        let spend = keys.store().spend_credits(&created.info.id, 1, clock.now());
        assert!(spend.await.is_err(), "{junk}");
        let top_up = keys.top_up(&account, &created.info.id, 1).await;
        assert!(top_up.is_err(), "{junk}");
        let stored: String = redis::cmd("HGET")
            .arg(record_key(&PREFIX, &created.key))
            .arg("credits_remaining")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(stored, junk);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_never_moves_back() {
    let clock = clock();
    let keys = manager(Redis::shared().instance().await, &clock);
    let account = account();
    create(&keys, &account).await;
    let record = keys.store().list(&account).await.unwrap().remove(0);
    let later = clock.now() + Duration::from_secs(60);
    keys.store().record_use(&record, later);
    let recorded = async {
        for _ in 0..100 {
            if keys.list(&account).await.unwrap()[0].last_used_at == Some(later) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(recorded.await, "the later use was not recorded within 2 s");
    keys.store().record_use(&record, clock.now());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        keys.list(&account).await.unwrap()[0].last_used_at,
        Some(later)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_use_does_not_wait_for_a_hung_server() {
    let store = lazy_store(proxy::silent_server().await, Duration::from_secs(2));
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::random(), account(), "ci", Tier::FREE);
    let record = KeyRecord::new(key.digest(), identity);
    let started = Instant::now();
    for _ in 0..1_000 {
        store.record_use(&record, SystemTime::now());
    }
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn debug_shows_no_password() {
    let client = Client::open("redis://:hunter2@127.0.0.1:1").unwrap();
    let connection = ConnectionManager::new_lazy_with_config(client, impatient()).unwrap();
    let store = RedisKeyStore::new(connection).prefix("billing");
    let debug = format!("{store:?}");
    assert!(debug.contains("billing"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
}

#[tokio::test]
#[should_panic(expected = "must be non-empty and hold no `{` or `}`")]
async fn prefix_that_would_break_the_hash_tag_is_refused() {
    let client = Client::open("redis://127.0.0.1:1").unwrap();
    let connection = ConnectionManager::new_lazy_with_config(client, impatient()).unwrap();
    let _ = RedisKeyStore::new(connection).prefix("app}");
}

#[tokio::test]
async fn digest_is_not_in_a_malformed_record_s_error() {
    let store = Redis::shared().instance().await;
    let key = KeyFormat::default().generate();
    let mut raw = connect().await;
    let _: () = redis::cmd("HSET")
        .arg(record_key(&PREFIX, &key))
        .arg("digest")
        .arg(KeyDigest::of("sk_live_other").to_hex())
        .query_async(&mut raw)
        .await
        .unwrap();
    let error = store
        .find(&key.digest().lookup_id())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !error.contains(&KeyDigest::of("sk_live_other").to_hex()[..8]),
        "{error}"
    );
}

/// The members of `account`'s active set, sorted, with their scores as Redis gives them.
async fn active_set(account: &str) -> Vec<(String, String)> {
    let mut raw = connect().await;
    let mut members: Vec<(String, String)> = redis::cmd("ZRANGE")
        .arg(redis_key(&PREFIX, "active", account))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut raw)
        .await
        .unwrap();
    members.sort();
    members
}

fn micros(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_set_holds_exactly_the_account_s_active_keys() {
    let clock = clock();
    let keys = manager(Redis::shared().instance().await, &clock);
    let account = account();
    let entry = |id: &KeyId, score: String| (id.to_string(), score);
    let forever = || "inf".to_owned();

    let revoked = create(&keys, &account).await.info.id;
    let deleted = create(&keys, &account).await.info.id;
    let short = NewKey::new(&account, Tier::FREE, "short").expires_in(Duration::from_secs(10));
    let short = keys.create(short).await.unwrap().info.id;
    keys.revoke(&account, &revoked).await.unwrap();
    keys.delete(&account, &deleted).await.unwrap();
    let short_entry = entry(&short, micros(clock.now() + Duration::from_secs(10)));
    let only_short = vec![short_entry.clone()];
    assert_eq!(active_set(&account).await, only_short);

    // A record written already revoked never enters the set.
    let identity = KeyIdentity::new(KeyId::random(), &account, "dead", Tier::FREE);
    let dead = KeyRecord::new(KeyFormat::default().generate().digest(), identity)
        .with_revoked_at(clock.now());
    let quota = Quota::new(3, clock.now());
    keys.store().create(dead, quota).await.unwrap();
    assert_eq!(active_set(&account).await, only_short);

    let rotated = create(&keys, &account).await.info.id;
    let replacement = keys
        .rotate(&account, &rotated, Duration::from_secs(5))
        .await
        .unwrap()
        .info
        .id;
    let retiring = entry(&rotated, micros(clock.now() + Duration::from_secs(5)));
    let mut expected = vec![short_entry, retiring, entry(&replacement, forever())];
    expected.sort();
    assert_eq!(active_set(&account).await, expected);

    // The next create drops the keys that expired meanwhile.
    clock.advance(Duration::from_secs(10));
    let fresh = create(&keys, &account).await.info.id;
    let mut expected = vec![entry(&replacement, forever()), entry(&fresh, forever())];
    expected.sort();
    assert_eq!(active_set(&account).await, expected);
}

/// The suite again over a cache in front of each instance.
#[cfg(feature = "cache")]
mod cached {
    use super::*;
    use tower_api_key::store::CachedKeyStore;

    struct CachedRedis(Redis);

    #[async_trait]
    impl Backend for CachedRedis {
        type Store = CachedKeyStore<RedisKeyStore>;

        async fn instance(&self) -> Self::Store {
            CachedKeyStore::new(self.0.instance().await)
        }
    }

    tower_api_key::store_suite!(CachedRedis(Redis::shared()));
}

/// Push invalidation through pub/sub. The tests take a [`Deployment`](changes::Deployment), so
/// that `store_redis_cluster` runs them on the cluster too; each test has a prefix of its own.
pub mod changes {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::StreamExt;
    use redis::aio::{MultiplexedConnection, PubSub};
    use tower_api_key::manage::CreatedKey;
    use tower_api_key::store::CachedKeyStore;
    use tower_api_key::{KeyManager, LookupId, StoreError};

    /// Long enough that only a change message can make a cache drop a record within a test.
    const TTL: Duration = Duration::from_secs(3600);

    /// Where a test's stores live: the single Redis, or the cluster.
    #[async_trait]
    pub trait Deployment: Send + Sync {
        /// A new store under `prefix`, on a connection of its own, as an application instance
        /// would have.
        async fn store(&self, prefix: &str) -> RedisKeyStore;

        /// The `host:port` of the node that change feeds of stores under `prefix` subscribe
        /// on: on a cluster, one that does not hold the prefix's slot, so that every message
        /// crosses nodes.
        async fn feed_node(&self, prefix: &str) -> String;
    }

    /// The Redis at `REDIS_URL`.
    pub struct SingleNode;

    #[async_trait]
    impl Deployment for SingleNode {
        async fn store(&self, prefix: &str) -> RedisKeyStore {
            RedisKeyStore::new(connect().await).prefix(prefix)
        }

        async fn feed_node(&self, _prefix: &str) -> String {
            redis_address().to_string()
        }
    }

    /// A prefix for one test alone.
    pub fn unique_prefix() -> String {
        format!("tower-api-key-test-{}", uuid::Uuid::new_v4().simple())
    }

    /// The channel that stores under `prefix` publish their changes on.
    pub fn channel(prefix: &str) -> String {
        format!("{{{prefix}}}:changes")
    }

    /// A plain connection to one node.
    pub async fn node_connection(node: &str) -> MultiplexedConnection {
        let client = Client::open(format!("redis://{node}")).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    /// Runs `words` as a command on `connection`, asserting that it succeeds.
    pub async fn command(connection: &mut MultiplexedConnection, words: &[&str]) {
        let _: redis::Value = redis::cmd(words[0])
            .arg(&words[1..])
            .query_async(connection)
            .await
            .unwrap_or_else(|error| panic!("{} failed: {error}", words[..2].join(" ")));
    }

    /// A subscription to `channel` on `node`, confirmed.
    pub async fn subscribe(node: &str, channel: &str) -> PubSub {
        let client = Client::open(format!("redis://{node}")).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(channel).await.unwrap();
        pubsub
    }

    /// The next message heard on `pubsub`, within 2 s.
    pub async fn next_message(pubsub: &mut PubSub) -> String {
        let mut messages = pubsub.on_message();
        let message = tokio::time::timeout(Duration::from_secs(2), messages.next());
        let message = message.await.expect("a message within 2 s").unwrap();
        String::from_utf8(message.get_payload_bytes().to_vec()).unwrap()
    }

    pub fn lookup_hex(key: &ApiKey) -> String {
        key.digest().lookup_id().to_hex()
    }

    /// Counts the lookups that reach Redis, to tell when a cache answers from memory.
    #[derive(Clone)]
    struct Counted {
        inner: RedisKeyStore,
        finds: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl KeyStore for Counted {
        async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
            self.finds.fetch_add(1, Ordering::SeqCst);
            self.inner.find(lookup_id).await
        }
    }

    /// An instance that writes: a cache with its own feed, under a key manager.
    pub async fn writer(
        deployment: &impl Deployment,
        prefix: &str,
        clock: &ManualClock,
    ) -> KeyManager<CachedKeyStore<RedisKeyStore>> {
        let store = deployment.store(prefix).await;
        let feed = store.changes(feed_client(&deployment.feed_node(prefix).await));
        manager(
            CachedKeyStore::new(store).ttl(TTL).push_invalidation(feed),
            clock,
        )
    }

    fn feed_client(node: &str) -> Client {
        Client::open(format!("redis://{node}")).unwrap()
    }

    /// An instance that authenticates: a cache with its own feed (from `client`) over a store
    /// whose lookups it counts.
    pub struct Reader {
        cache: CachedKeyStore<Counted>,
        finds: Arc<AtomicUsize>,
        clock: ManualClock,
    }

    impl Reader {
        pub async fn new(deployment: &impl Deployment, prefix: &str, clock: &ManualClock) -> Self {
            let client = feed_client(&deployment.feed_node(prefix).await);
            Self::with_feed_client(deployment, prefix, clock, client).await
        }

        pub async fn with_feed_client(
            deployment: &impl Deployment,
            prefix: &str,
            clock: &ManualClock,
            client: Client,
        ) -> Self {
            let store = deployment.store(prefix).await;
            let feed = store.changes(client);
            let finds = Arc::new(AtomicUsize::new(0));
            let counted = Counted {
                inner: store,
                finds: Arc::clone(&finds),
            };
            let cache = CachedKeyStore::new(counted)
                .ttl(TTL)
                .push_invalidation(feed);
            Self {
                cache,
                finds,
                clock: clock.clone(),
            }
        }

        /// `"ok"` or the error code the layer over this instance answers to `key`.
        pub async fn verdict(&self, key: &ApiKey) -> String {
            let answer = answer(self.cache.clone(), key, &self.clock).await;
            match answer.status {
                StatusCode::OK => "ok".to_owned(),
                _ => answer.error_code(),
            }
        }

        fn finds(&self) -> usize {
            self.finds.load(Ordering::SeqCst)
        }

        /// Waits until the cache accepts `key` from memory, as it does once its feed listens.
        pub async fn until_cached(&self, key: &ApiKey, patience: Duration) {
            let deadline = Instant::now() + patience;
            loop {
                assert_eq!(self.verdict(key).await, "ok");
                let finds = self.finds();
                assert_eq!(self.verdict(key).await, "ok");
                if self.finds() == finds {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cache did not answer from memory within {patience:?}: its feed is not listening"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Waits until every lookup of `key` goes to Redis, as when the feed is not listening.
        pub async fn until_uncached(&self, key: &ApiKey, patience: Duration) {
            let deadline = Instant::now() + patience;
            loop {
                let finds = self.finds();
                self.verdict(key).await;
                self.verdict(key).await;
                if self.finds() == finds + 2 {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cache still answered from memory after {patience:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Waits until a lookup of `key` goes to Redis, as the first one after the cache has
        /// dropped what it held.
        pub async fn until_read_again(&self, key: &ApiKey, patience: Duration) {
            let deadline = Instant::now() + patience;
            loop {
                let finds = self.finds();
                assert_eq!(self.verdict(key).await, "ok");
                if self.finds() > finds {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cache still held the key after {patience:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Waits until the cache refuses `key` with `code`, boundedly: a change message takes
        /// milliseconds, and the TTL an hour.
        pub async fn until_refused(&self, key: &ApiKey, code: &str) {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let verdict = self.verdict(key).await;
                if verdict == code {
                    return;
                }
                assert_eq!(verdict, "ok");
                assert!(
                    Instant::now() < deadline,
                    "the other instance still accepted the key after 2 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Two instances over one Redis, each with its own cache and feed, and a key the reader
    /// holds in its cache.
    struct Pair {
        prefix: String,
        clock: ManualClock,
        writer: KeyManager<CachedKeyStore<RedisKeyStore>>,
        reader: Reader,
        account: String,
        created: CreatedKey,
    }

    async fn pair(deployment: &impl Deployment) -> Pair {
        let (prefix, clock) = (unique_prefix(), clock());
        let writer = writer(deployment, &prefix, &clock).await;
        let reader = Reader::new(deployment, &prefix, &clock).await;
        let account = account();
        let created = create(&writer, &account).await;
        reader
            .until_cached(&created.key, Duration::from_secs(5))
            .await;
        Pair {
            prefix,
            clock,
            writer,
            reader,
            account,
            created,
        }
    }

    pub async fn revocation_through_one_instance_is_refused_by_the_other(
        deployment: impl Deployment,
    ) {
        let pair = pair(&deployment).await;
        let id = &pair.created.info.id;
        pair.writer.revoke(&pair.account, id).await.unwrap();
        pair.reader
            .until_refused(&pair.created.key, "expired_api_key")
            .await;
    }

    pub async fn disabling_and_enabling_through_one_instance_reach_the_other(
        deployment: impl Deployment,
    ) {
        let pair = pair(&deployment).await;
        let id = &pair.created.info.id;
        pair.writer.disable(&pair.account, id).await.unwrap();
        pair.reader
            .until_refused(&pair.created.key, "expired_api_key")
            .await;
        // The disabled record is now cached: a verdict reads nothing from Redis.
        let finds = pair.reader.finds();
        assert_eq!(
            pair.reader.verdict(&pair.created.key).await,
            "expired_api_key"
        );
        assert_eq!(pair.reader.finds(), finds);
        pair.writer.enable(&pair.account, id).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while pair.reader.verdict(&pair.created.key).await != "ok" {
            assert!(
                Instant::now() < deadline,
                "the other instance still refused the enabled key after 2 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn deletion_through_one_instance_is_refused_by_the_other(
        deployment: impl Deployment,
    ) {
        let pair = pair(&deployment).await;
        let id = &pair.created.info.id;
        pair.writer.delete(&pair.account, id).await.unwrap();
        pair.reader
            .until_refused(&pair.created.key, "invalid_api_key")
            .await;
    }

    pub async fn rotation_through_one_instance_is_seen_by_the_other(deployment: impl Deployment) {
        let pair = pair(&deployment).await;
        let grace = Duration::from_secs(5);
        let id = &pair.created.info.id;
        let new = pair.writer.rotate(&pair.account, id, grace).await.unwrap();
        // The change is the old key's new expiry: a record cached before it has none.
        pair.clock.advance(grace);
        pair.reader
            .until_refused(&pair.created.key, "expired_api_key")
            .await;
        assert_eq!(pair.reader.verdict(&new.key).await, "ok");
    }

    pub async fn killed_feed_stops_the_cache_serving_until_it_resubscribes(
        deployment: impl Deployment,
    ) {
        let (prefix, clock) = (unique_prefix(), clock());
        let node = deployment.feed_node(&prefix).await;
        // The reader's feed logs in as a user of its own, so that only its connection is cut.
        let mut admin = node_connection(&node).await;
        let user = format!("tower-api-key-feed-{}", uuid::Uuid::new_v4().simple());
        let password = uuid::Uuid::new_v4().simple().to_string();
        let login = format!(">{password}");
        let set_user = |state| ["ACL", "SETUSER", &user, state, &login, "&*", "+@all"];
        command(&mut admin, &set_user("on")).await;
        let client = Client::open(format!("redis://{user}:{password}@{node}")).unwrap();
        let writer = writer(&deployment, &prefix, &clock).await;
        let reader = Reader::with_feed_client(&deployment, &prefix, &clock, client).await;
        let account = account();
        let revoked = create(&writer, &account).await;
        let probe = create(&writer, &account).await;
        let patience = Duration::from_secs(5);
        reader.until_cached(&revoked.key, patience).await;
        reader.until_cached(&probe.key, patience).await;

        // The feed's connection is cut, and it cannot log in again until its user is back.
        command(&mut admin, &set_user("off")).await;
        command(&mut admin, &["CLIENT", "KILL", "USER", &user]).await;
        reader.until_uncached(&probe.key, patience).await;
        writer.revoke(&account, &revoked.info.id).await.unwrap();
        assert_eq!(reader.verdict(&revoked.key).await, "expired_api_key");

        command(&mut admin, &set_user("on")).await;
        // Within the feed's longest wait between attempts (5 s), and then some.
        reader
            .until_cached(&probe.key, Duration::from_secs(15))
            .await;
        assert_eq!(reader.verdict(&revoked.key).await, "expired_api_key");
        command(&mut admin, &["ACL", "DELUSER", &user]).await;
    }

    pub async fn malformed_message_makes_the_cache_forget_everything(deployment: impl Deployment) {
        let pair = pair(&deployment).await;
        let mut connection = node_connection(&deployment.feed_node(&pair.prefix).await).await;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel(&pair.prefix))
            .arg("not a lookup id")
            .query_async(&mut connection)
            .await
            .unwrap();
        let patience = Duration::from_secs(2);
        pair.reader
            .until_read_again(&pair.created.key, patience)
            .await;
    }

    pub async fn idle_feed_checks_its_connection_and_stays_listening(deployment: impl Deployment) {
        let pair = pair(&deployment).await;
        let finds = pair.reader.finds();
        // Past the feed's idle second, after which it pings Redis, twice.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(pair.reader.verdict(&pair.created.key).await, "ok");
        assert_eq!(
            pair.reader.finds(),
            finds,
            "the feed listened again after its ping"
        );
    }

    pub async fn recording_a_use_publishes_nothing(deployment: impl Deployment) {
        let (prefix, clock) = (unique_prefix(), clock());
        let node = deployment.feed_node(&prefix).await;
        let mut messages = subscribe(&node, &channel(&prefix)).await;
        let keys = manager(deployment.store(&prefix).await, &clock);
        let account = account();
        let used = create(&keys, &account).await;
        let record = keys.store().get(&account, &used.info.id).await.unwrap();
        let later = clock.now() + Duration::from_secs(60);
        keys.store().record_use(&record.unwrap(), later);
        let recorded = async {
            for _ in 0..100 {
                let record = keys.store().get(&account, &used.info.id).await.unwrap();
                if record.unwrap().last_used_at == Some(later) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        };
        assert!(recorded.await, "the use was not recorded within 2 s");
        // Another key's create: its message comes right after anything the use published.
        let after = create(&keys, &account).await;
        let heard = [
            next_message(&mut messages).await,
            next_message(&mut messages).await,
        ];
        assert_eq!(heard, [lookup_hex(&used.key), lookup_hex(&after.key)]);
    }

    pub async fn spending_and_topping_up_credits_publish_nothing(deployment: impl Deployment) {
        let (prefix, clock) = (unique_prefix(), clock());
        let node = deployment.feed_node(&prefix).await;
        let mut messages = subscribe(&node, &channel(&prefix)).await;
        let keys = manager(deployment.store(&prefix).await, &clock);
        let account = account();
        let new = NewKey::new(&account, Tier::FREE, "metered").credits(Credits::new(1));
        let metered = keys.create(new).await.unwrap();
        let store = keys.store();
        for expected in ["spent", "exhausted"] {
            let spend = store.spend_credits(&metered.info.id, 1, clock.now()).await;
            let outcome = match spend.unwrap() {
                Some(Spend::Spent(_)) => "spent",
                Some(Spend::Exhausted(_)) => "exhausted",
                other => panic!("{other:?}"),
            };
            assert_eq!(outcome, expected);
        }
        keys.top_up(&account, &metered.info.id, 5).await.unwrap();
        // Another key's create: its message comes right after anything those published.
        let after = create(&keys, &account).await;
        let heard = [
            next_message(&mut messages).await,
            next_message(&mut messages).await,
        ];
        assert_eq!(heard, [lookup_hex(&metered.key), lookup_hex(&after.key)]);
    }
}

/// One `#[tokio::test]` per push-invalidation test of [`changes`], on `$deployment`.
#[macro_export]
macro_rules! redis_changes_suite {
    ($deployment:expr) => {
        $crate::redis_changes_suite!(@tests $deployment;
            revocation_through_one_instance_is_refused_by_the_other,
            disabling_and_enabling_through_one_instance_reach_the_other,
            deletion_through_one_instance_is_refused_by_the_other,
            rotation_through_one_instance_is_seen_by_the_other,
            killed_feed_stops_the_cache_serving_until_it_resubscribes,
            malformed_message_makes_the_cache_forget_everything,
            idle_feed_checks_its_connection_and_stays_listening,
            recording_a_use_publishes_nothing,
            spending_and_topping_up_credits_publish_nothing,
        );
    };
    (@tests $deployment:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::store_redis::changes::$name($deployment).await;
            }
        )*
    };
}

mod single_node_changes {
    crate::redis_changes_suite!(super::changes::SingleNode);
}
