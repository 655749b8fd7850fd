//! Metrics (feature `metrics`): what the layer, the cache and the limits report, read from a
//! recorder local to the test's thread, with their exact names and labels; and that no label
//! ever holds a key, its digest, a key id or an account id.
#![cfg(feature = "metrics")]

use crate::common;

use std::collections::BTreeMap;
use std::future::Future;

use common::{echo_identity, send, with_key, CountingStore, FailingStore, Keys};
use http::StatusCode;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::ServiceBuilder;
use tower_api_key::metrics::{
    CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL, DECISIONS_TOTAL, RATE_LIMITED_TOTAL,
    STORE_LOOKUP_SECONDS, USAGE_EXCEEDED_TOTAL,
};
use tower_api_key::{ApiKey, ApiKeyLayer, KeyStore};

/// What one run reported: each series (`name{label="value",...}`) and its count (a counter's
/// value, a histogram's number of samples); series at 0 left out.
type Report = BTreeMap<String, u64>;

/// Every label value the crate may report: a closed set of fixed words.
const LABEL_VALUES: &[&str] = &[
    "accepted",
    "refused",
    "anonymous",
    "none",
    "missing_api_key",
    "invalid_api_key",
    "expired_api_key",
    "authentication_unavailable",
    "local",
    "global",
];

/// Runs `run` on a current-thread runtime with a recorder of its own (a local recorder holds for
/// its thread only), and returns its output and what it reported. Checks on the way that every
/// label is a known word and that none holds one of `secrets`.
fn measured<T>(secrets: &[String], run: impl Future<Output = T>) -> (T, Report) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let output = metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run)
    });
    let mut report = Report::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        for label in key.labels() {
            assert!(
                LABEL_VALUES.contains(&label.value()),
                "{}: {label:?} is not a known label value",
                key.name()
            );
            for secret in secrets {
                assert!(
                    !label.value().contains(secret.as_str())
                        && !label.key().contains(secret.as_str()),
                    "{}: {label:?} holds {secret:?}",
                    key.name()
                );
            }
        }
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}=\"{}\"", label.key(), label.value()))
            .collect();
        let series = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        let count = match value {
            DebugValue::Counter(count) => count,
            DebugValue::Histogram(samples) => {
                assert!(samples
                    .iter()
                    .all(|seconds| seconds.0 >= 0.0 && seconds.0 < 10.0));
                samples.len() as u64
            }
            DebugValue::Gauge(_) => panic!("{series}: the crate reports no gauge"),
        };
        if count > 0 {
            report.insert(series, count);
        }
    }
    (output, report)
}

/// The series of a decision.
fn decision(outcome: &str, code: &str) -> String {
    format!("{DECISIONS_TOTAL}{{outcome=\"{outcome}\",code=\"{code}\"}}")
}

/// What must never be a label: the key, its digest and lookup id in hex, its key id, its
/// account id.
fn secrets_of(key: &ApiKey, key_id: &str, account_id: &str) -> Vec<String> {
    vec![
        key.expose_secret().to_owned(),
        key.digest().to_hex(),
        key.digest().lookup_id().to_hex(),
        key_id.to_owned(),
        account_id.to_owned(),
    ]
}

/// What a layer over `store` answers to `key` (or to no key).
/// What three requests with `$key` get through `$keys`'s layer and then `$limit`.
macro_rules! three_calls {
    ($keys:expr, $limit:expr, $key:expr) => {
        async {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let service = ServiceBuilder::new()
                    .layer($keys.layer())
                    .layer($limit.clone())
                    .service_fn(echo_identity);
                statuses.push(send(service, &with_key($key)).await.status);
            }
            statuses
        }
    };
}

async fn status(store: impl KeyStore, key: Option<&ApiKey>) -> StatusCode {
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(store))
        .service_fn(echo_identity);
    let headers = key.map(with_key).unwrap_or_default();
    send(service, &headers).await.status
}

#[test]
fn the_layer_counts_each_decision_by_outcome_and_code_and_times_the_lookups_it_waits_for() {
    let keys = Keys::new();
    let secrets = [
        secrets_of(&keys.active, "key_active", "acct_1"),
        secrets_of(&keys.revoked, "key_revoked", "acct_1"),
    ]
    .concat();
    let (statuses, report) = measured(&secrets, async {
        [
            // The memory store answers at once: counted, not timed.
            status(keys.store.clone(), Some(&keys.active)).await,
            status(keys.store.clone(), None).await,
            status(keys.store.clone(), Some(&keys.unknown)).await,
            status(keys.store.clone(), Some(&keys.revoked)).await,
            // These two wait for their store (`find`): timed.
            status(CountingStore::new(keys.store.clone()), Some(&keys.active)).await,
            status(FailingStore, Some(&keys.active)).await,
        ]
    });
    use StatusCode as S;
    assert_eq!(
        statuses,
        [
            S::OK,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::OK,
            S::SERVICE_UNAVAILABLE
        ]
    );
    assert_eq!(
        report,
        Report::from([
            (decision("accepted", "none"), 2),
            (decision("refused", "missing_api_key"), 1),
            (decision("refused", "invalid_api_key"), 1),
            (decision("refused", "expired_api_key"), 1),
            (decision("refused", "authentication_unavailable"), 1),
            (STORE_LOOKUP_SECONDS.to_owned(), 2),
        ])
    );
}

#[test]
fn a_key_in_the_query_or_two_keys_count_as_invalid() {
    let keys = Keys::new();
    let secrets = [
        secrets_of(&keys.active, "key_active", "acct_1"),
        secrets_of(&keys.unknown, "key_unknown", "acct_1"),
    ]
    .concat();
    let bearer = format!("Bearer {}", keys.unknown.expose_secret());
    let two = [
        ("x-api-key", keys.active.expose_secret().as_bytes()),
        ("authorization", bearer.as_bytes()),
    ];
    let mut in_query = common::request(&with_key(&keys.active));
    *in_query.uri_mut() = format!("/api?api_key={}", keys.active.expose_secret())
        .parse()
        .unwrap();
    let (statuses, report) = measured(&secrets, async {
        use tower::ServiceExt;
        let service = ServiceBuilder::new()
            .layer(ApiKeyLayer::new(keys.store.clone()))
            .service_fn(echo_identity);
        [
            send(service.clone(), &two).await.status,
            service.oneshot(in_query).await.unwrap().status(),
        ]
    });
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED; 2]);
    assert_eq!(
        report,
        Report::from([(decision("refused", "invalid_api_key"), 2)])
    );
}

#[test]
fn an_optional_layer_counts_a_request_without_a_key_as_anonymous() {
    let keys = Keys::new();
    let secrets = secrets_of(&keys.active, "key_active", "acct_1");
    let (statuses, report) = measured(&secrets, async {
        let service = ServiceBuilder::new()
            .layer(ApiKeyLayer::new(keys.store.clone()).optional())
            .service_fn(echo_identity);
        [
            send(service.clone(), &[]).await.status,
            send(service.clone(), &with_key(&keys.active)).await.status,
            send(service, &with_key(&keys.unknown)).await.status,
        ]
    });
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::UNAUTHORIZED]
    );
    assert_eq!(
        report,
        Report::from([
            (decision("anonymous", "none"), 1),
            (decision("accepted", "none"), 1),
            (decision("refused", "invalid_api_key"), 1),
        ])
    );
}

#[cfg(feature = "cache")]
#[test]
fn the_cache_counts_its_hits_and_misses_and_only_misses_are_timed() {
    use tower_api_key::store::CachedKeyStore;

    let keys = Keys::new();
    let secrets = [
        secrets_of(&keys.active, "key_active", "acct_1"),
        secrets_of(&keys.unknown, "key_unknown", "acct_1"),
    ]
    .concat();
    let (statuses, report) = measured(&secrets, async {
        let cache = CachedKeyStore::new(keys.store.clone());
        [
            status(cache.clone(), Some(&keys.active)).await, // miss: asks the store
            status(cache.clone(), Some(&keys.active)).await, // hit
            status(cache.clone(), Some(&keys.active)).await, // hit
            status(cache.clone(), Some(&keys.unknown)).await, // miss
            status(cache.clone(), Some(&keys.unknown)).await, // hit: unknown keys are cached too
            status(cache, None).await,                       // no lookup at all
        ]
    });
    use StatusCode as S;
    assert_eq!(
        statuses,
        [
            S::OK,
            S::OK,
            S::OK,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED
        ]
    );
    assert_eq!(
        report,
        Report::from([
            (CACHE_HITS_TOTAL.to_owned(), 3),
            (CACHE_MISSES_TOTAL.to_owned(), 2),
            (decision("accepted", "none"), 3),
            (decision("refused", "invalid_api_key"), 2),
            (decision("refused", "missing_api_key"), 1),
            (STORE_LOOKUP_SECONDS.to_owned(), 2),
        ])
    );
}

#[cfg(feature = "rate-limit")]
#[test]
fn a_local_rate_limit_counts_its_refusals() {
    use std::time::{Duration, SystemTime};
    use tower_api_key::clock::ManualClock;
    use tower_api_key::limit::{RateLimit, RateLimitLayer};
    use tower_api_key::manage::TierLimits;
    use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};

    let keys = KeyManager::new(MemoryKeyStore::new());
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    let limits = TierLimits::default().with_rate_limit(Tier::FREE, RateLimit::per_minute(2));
    let limit = RateLimitLayer::new(limits).clock(clock);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let created = runtime
        .block_on(keys.create(NewKey::new("acct_limited", Tier::FREE, "key")))
        .unwrap();
    let secrets = secrets_of(&created.key, created.info.id.as_str(), "acct_limited");
    let (statuses, report) = measured(&secrets, async {
        three_calls!(keys, limit, &created.key).await
    });
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(
        report,
        Report::from([
            (decision("accepted", "none"), 3),
            (format!("{RATE_LIMITED_TOTAL}{{mode=\"local\"}}"), 1),
        ])
    );
}

#[test]
fn credits_count_the_requests_they_cannot_pay_for() {
    use tower_api_key::limit::{Credits, CreditsLayer};
    use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};

    let keys = KeyManager::new(MemoryKeyStore::new());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let new = NewKey::new("acct_metered", Tier::FREE, "metered").credits(Credits::new(2));
    let created = runtime.block_on(keys.create(new)).unwrap();
    let secrets = secrets_of(&created.key, created.info.id.as_str(), "acct_metered");
    let (statuses, report) = measured(&secrets, async {
        let credits = CreditsLayer::new(keys.store().clone());
        three_calls!(keys, credits, &created.key).await
    });
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(
        report,
        Report::from([
            (decision("accepted", "none"), 3),
            (USAGE_EXCEEDED_TOTAL.to_owned(), 1),
        ])
    );
}

#[cfg(all(feature = "rate-limit", feature = "redis"))]
#[test]
fn a_global_rate_limit_counts_its_refusals_as_global() {
    use tower_api_key::limit::{RateLimit, RateLimitLayer};
    use tower_api_key::manage::TierLimits;
    use tower_api_key::store::RedisKeyStore;
    use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| {
        panic!("REDIS_URL is not set: this test needs a Redis server (redis://127.0.0.1:6379)")
    });
    let keys = KeyManager::new(MemoryKeyStore::new());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let created = runtime
        .block_on(keys.create(NewKey::new("acct_global", Tier::FREE, "key")))
        .unwrap();
    let secrets = secrets_of(&created.key, created.info.id.as_str(), "acct_global");
    let (statuses, report) = measured(&secrets, async {
        let client = redis::Client::open(url).unwrap();
        let connection = redis::aio::ConnectionManager::new(client)
            .await
            .unwrap_or_else(|error| panic!("cannot reach the Redis at REDIS_URL: {error}"));
        let prefix = format!("metrics_{}", uuid::Uuid::new_v4().simple());
        let counters = RedisKeyStore::new(connection).prefix(prefix);
        let limits = TierLimits::default().with_rate_limit(Tier::FREE, RateLimit::per_minute(2));
        let limit = RateLimitLayer::new(limits).global(counters);
        three_calls!(keys, limit, &created.key).await
    });
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(
        report,
        Report::from([
            (decision("accepted", "none"), 3),
            (format!("{RATE_LIMITED_TOTAL}{{mode=\"global\"}}"), 1),
        ])
    );
}
