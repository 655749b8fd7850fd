//! Usage limits across instances on one real store: global rate limits in Redis (three layers,
//! each with its own connection, on one key), and credits spent through three layers over
//! three instances of PostgreSQL and of Redis.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo test --all-features --test it global_limits::
//! ```
#![cfg(all(feature = "rate-limit", feature = "redis", feature = "postgres"))]

use crate::common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{assert_envelope, echo_identity, request, with_key, Answer};
use http::{Request, StatusCode};
use http_body_util::Full;
use redis::aio::ConnectionManager;
use redis::Client;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::limit::{Credits, CreditsLayer, RateLimit, RateLimitLayer};
use tower_api_key::manage::TierLimits;
use tower_api_key::store::{PgKeyStore, RedisKeyStore, WritableKeyStore};
use tower_api_key::{ApiKey, ApiKeyLayer, KeyManager, MemoryKeyStore, NewKey, Tier};

/// How many requests each cross-instance test sends, spread over three instances.
const REQUESTS: usize = 1_000;

/// One instance of a service, answering with the status only.
type Instance = BoxCloneService<Request<Full<Bytes>>, StatusCode, Infallible>;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| {
        panic!("REDIS_URL is not set: these tests need a Redis server (redis://127.0.0.1:6379)")
    })
}

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL is not set: these tests need PostgreSQL (postgres://postgres@127.0.0.1:5432/test)")
    })
}

/// A prefix or table name no earlier run used.
fn unique(kind: &str) -> String {
    format!("{kind}_{}", uuid::Uuid::new_v4().simple())
}

/// A Redis store with a connection of its own, as a separate instance would have.
async fn redis_instance(prefix: &str) -> RedisKeyStore {
    let client = Client::open(redis_url()).unwrap();
    let connection = ConnectionManager::new(client)
        .await
        .unwrap_or_else(|error| panic!("cannot reach the Redis at REDIS_URL: {error}"));
    RedisKeyStore::new(connection).prefix(prefix)
}

/// A PostgreSQL store with a pool of its own over `table`.
async fn postgres_instance(table: &str) -> PgKeyStore {
    let pool = sqlx::PgPool::connect(&database_url())
        .await
        .unwrap_or_else(|error| panic!("cannot reach the PostgreSQL at DATABASE_URL: {error}"));
    PgKeyStore::new(pool).table(table)
}

/// Sends `REQUESTS` requests with `key`, all at once, spread over `instances`: how many were
/// accepted and how many refused with `429`.
async fn spread(instances: &[Instance], key: &ApiKey) -> (usize, usize) {
    let calls: Vec<_> = (0..REQUESTS)
        .map(|index| {
            let instance = instances[index % instances.len()].clone();
            let request = request(&with_key(key));
            tokio::spawn(async move { instance.oneshot(request).await.unwrap() })
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    (accepted, refused)
}

/// An instance that authenticates against the store `$keys` and then applies `$limit`.
macro_rules! instance {
    ($keys:expr, $limit:expr) => {
        BoxCloneService::new(
            ServiceBuilder::new()
                .map_response(|response: http::Response<_>| response.status())
                .layer(ApiKeyLayer::new($keys))
                .layer($limit)
                .service_fn(echo_identity),
        )
    };
}

async fn key_limited_to_100_per_hour(keys: &KeyManager<MemoryKeyStore>) -> ApiKey {
    let new = NewKey::new("acct_1", Tier::FREE, "shared").rate_limit(RateLimit::per_hour(100));
    keys.create(new).await.unwrap().key
}

/// Three instances that authenticate against `keys` and count in one Redis, each through its
/// own connection, taking `lease` requests per round trip.
async fn three_global_instances(keys: &MemoryKeyStore, lease: u32) -> Vec<Instance> {
    let prefix = unique("limits");
    let mut instances = Vec::new();
    for _ in 0..3 {
        let mut limit =
            RateLimitLayer::new(TierLimits::none()).global(redis_instance(&prefix).await);
        if lease > 1 {
            limit = limit.leases(lease);
        }
        instances.push(instance!(keys.clone(), limit));
    }
    instances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_counting_in_redis_accept_at_most_the_limit() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let key = key_limited_to_100_per_hour(&keys).await;
    let instances = three_global_instances(keys.store(), 1).await;
    let (accepted, refused) = spread(&instances, &key).await;
    println!("global, one round trip per request: {accepted} of {REQUESTS} accepted");
    assert_eq!((accepted, refused), (100, REQUESTS - 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_taking_leases_accept_at_most_the_limit() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let key = key_limited_to_100_per_hour(&keys).await;
    let instances = three_global_instances(keys.store(), 10).await;
    let (accepted, refused) = spread(&instances, &key).await;
    println!("global with leases of 10, all at once: {accepted} of {REQUESTS} accepted");
    // All at once, most requests ask Redis before any lease is back, so some leased requests
    // may be left unspent: fewer than the limit may pass, never more.
    assert!(accepted <= 100, "{accepted} accepted over a limit of 100");
    assert_eq!(accepted + refused, REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_taking_leases_in_turn_accept_exactly_the_limit() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let key = key_limited_to_100_per_hour(&keys).await;
    let instances = three_global_instances(keys.store(), 10).await;
    let mut accepted = 0;
    for index in 0..300 {
        let instance = instances[index % 3].clone();
        if instance.oneshot(request(&with_key(&key))).await.unwrap() == StatusCode::OK {
            accepted += 1;
        }
    }
    println!("global with leases of 10, in turn: {accepted} of 300 accepted");
    assert_eq!(accepted, 100, "every request taken is spent, and no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_refusal_is_the_429_with_its_headers() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let new = NewKey::new("acct_1", Tier::FREE, "one").rate_limit(RateLimit::per_minute(1));
    let key = keys.create(new).await.unwrap().key;
    let prefix = unique("limits");
    let limit = RateLimitLayer::new(TierLimits::none())
        .global(redis_instance(&prefix).await)
        .headers_on_success();
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store().clone()))
        .layer(limit)
        .service_fn(echo_identity);
    let first = service
        .clone()
        .oneshot(request(&with_key(&key)))
        .await
        .unwrap();
    let first = Answer::read(first).await;
    assert!(first.reached_inner_service());
    assert_eq!(first.header("ratelimit"), r#""default";r=0;t=60"#);
    let refused = Answer::read(service.oneshot(request(&with_key(&key))).await.unwrap()).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = refused.header("retry-after").parse().unwrap();
    assert!(
        (59..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(refused.header("ratelimit-policy"), r#""default";q=1;w=60"#);
}

/// A Redis store on a port where nothing listens: every call fails at once.
async fn unreachable_redis() -> RedisKeyStore {
    let address = common::proxy::closed_port().await;
    let client = Client::open(format!("redis://{address}")).unwrap();
    let connection = ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(200)))
            .set_number_of_retries(0),
    )
    .unwrap();
    RedisKeyStore::new(connection).timeout(Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_fails_global_limits_refuse_with_503_unless_told_to_fail_open() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let key = key_limited_to_100_per_hour(&keys).await;
    let closed = RateLimitLayer::new(TierLimits::none()).global(unreachable_redis().await);
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store().clone()))
        .layer(closed)
        .service_fn(echo_identity);
    let answer = Answer::read(service.oneshot(request(&with_key(&key))).await.unwrap()).await;
    assert_envelope(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication_unavailable",
    );

    let open = RateLimitLayer::new(TierLimits::none())
        .global(unreachable_redis().await)
        .fail_open();
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store().clone()))
        .layer(open)
        .service_fn(echo_identity);
    let answer = Answer::read(service.oneshot(request(&with_key(&key))).await.unwrap()).await;
    assert!(
        answer.reached_inner_service(),
        "fail_open lets the request pass"
    );
}

/// Three instances over `stores`, each spending 1 credit per request in its own store.
fn three_credit_instances<S: WritableKeyStore + Clone>(stores: [S; 3]) -> Vec<Instance> {
    stores
        .into_iter()
        .map(|store| instance!(store.clone(), CreditsLayer::new(store)))
        .collect()
}

async fn credits_across_instances<S: WritableKeyStore + Clone>(stores: [S; 3], name: &str) {
    let keys = KeyManager::new(stores[0].clone());
    let new = NewKey::new(unique("acct"), Tier::FREE, "metered").credits(Credits::new(100));
    let key = keys.create(new).await.unwrap().key;
    let (accepted, refused) = spread(&three_credit_instances(stores), &key).await;
    println!("credits on {name}: {accepted} of {REQUESTS} accepted on a balance of 100");
    assert_eq!((accepted, refused), (100, REQUESTS - 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_accept_exactly_the_credits() {
    let table = unique("credits");
    let stores = [
        postgres_instance(&table).await,
        postgres_instance(&table).await,
        postgres_instance(&table).await,
    ];
    stores[0].migrate().await.unwrap();
    credits_across_instances(stores, "PostgreSQL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_redis_accept_exactly_the_credits() {
    let prefix = unique("credits");
    let stores = [
        redis_instance(&prefix).await,
        redis_instance(&prefix).await,
        redis_instance(&prefix).await,
    ];
    credits_across_instances(stores, "Redis").await;
}
