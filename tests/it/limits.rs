//! Rate limits per key: `RateLimitLayer` inside `ApiKeyLayer`, its `429` and its headers.
#![cfg(feature = "rate-limit")]

use crate::common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{assert_envelope, echo_identity, request, send, with_key, Answer};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::clock::ManualClock;
use tower_api_key::key::KeyFormat;
use tower_api_key::limit::{RateLimit, RateLimitLayer};
use tower_api_key::manage::TierLimits;
use tower_api_key::{ApiKey, AuthError, KeyManager, MemoryKeyStore, NewKey, Tier};

const ACCOUNT: &str = "acct_1";

fn manager() -> KeyManager<MemoryKeyStore> {
    let limits = TierLimits::default().with(Tier::new("enterprise"), 10);
    KeyManager::new(MemoryKeyStore::new()).tier_limits(limits)
}

async fn create(keys: &KeyManager<MemoryKeyStore>, account: &str, tier: Tier) -> ApiKey {
    let new = NewKey::new(account, tier, "key");
    keys.create(new).await.unwrap().key
}

fn clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
}

/// The free tier limited to 3 requests per minute (one every 20 s), on a manual clock.
fn three_per_minute(clock: &ManualClock) -> RateLimitLayer {
    let limits = TierLimits::default().with_rate_limit(Tier::FREE, RateLimit::per_minute(3));
    RateLimitLayer::new(limits).clock(clock.clone())
}

/// What `layer`, inside the manager's layer, answers to `key`; clones share the counters.
async fn call(keys: &KeyManager<MemoryKeyStore>, layer: &RateLimitLayer, key: &ApiKey) -> Answer {
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(layer.clone())
        .service_fn(echo_identity);
    send(service, &with_key(key)).await
}

fn assert_rate_limited(answer: &Answer, retry_after: u64, quota: u32) {
    assert_envelope(answer, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(answer.header("retry-after"), retry_after.to_string());
    assert_eq!(
        answer.header("ratelimit-policy"),
        format!(r#""default";q={quota};w=60"#)
    );
    assert_eq!(
        answer.header("ratelimit"),
        format!(r#""default";r=0;t={retry_after}"#)
    );
}

#[tokio::test]
async fn requests_within_the_limit_pass_and_the_next_is_429_with_its_headers() {
    let keys = manager();
    let key = create(&keys, ACCOUNT, Tier::FREE).await;
    let clock = clock();
    let layer = three_per_minute(&clock);
    for _ in 0..3 {
        let answer = call(&keys, &layer, &key).await;
        assert!(answer.reached_inner_service());
        assert!(!answer.headers.contains_key("ratelimit"), "only when asked");
    }
    let answer = call(&keys, &layer, &key).await;
    assert_rate_limited(&answer, 20, 3);
    assert_eq!(
        answer.json()["error"]["message"],
        "Too many requests: the limit is 3 requests per minute. Retry in 20 seconds, and \
         spread requests out to stay within the limit."
    );
}

#[tokio::test]
async fn a_429_carries_its_auth_error_in_the_response_extensions() {
    let keys = manager();
    let key = create(&keys, ACCOUNT, Tier::FREE).await;
    let clock = clock();
    let limits = TierLimits::default().with_rate_limit(Tier::FREE, RateLimit::per_minute(1));
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(RateLimitLayer::new(limits).clock(clock))
        .service_fn(echo_identity);
    let first = service.clone().oneshot(request(&with_key(&key))).await;
    assert_eq!(first.unwrap().status(), StatusCode::OK);
    let response = service.oneshot(request(&with_key(&key))).await.unwrap();
    let error = response.extensions().get::<AuthError>().unwrap();
    let AuthError::RateLimited { retry_after, limit } = error else {
        panic!("not rate limited: {error:?}");
    };
    assert_eq!(*retry_after, Duration::from_secs(60));
    assert_eq!(*limit, RateLimit::per_minute(1));
}

#[tokio::test]
async fn retry_after_is_rounded_up_to_whole_seconds() {
    let keys = manager();
    let key = create(&keys, ACCOUNT, Tier::FREE).await;
    let clock = clock();
    let layer = three_per_minute(&clock);
    for _ in 0..3 {
        call(&keys, &layer, &key).await;
    }
    clock.advance(Duration::from_millis(500));
    assert_rate_limited(&call(&keys, &layer, &key).await, 20, 3); // 19.5 s
}

#[tokio::test]
async fn the_limit_refills_with_time() {
    let keys = manager();
    let key = create(&keys, ACCOUNT, Tier::FREE).await;
    let clock = clock();
    let layer = three_per_minute(&clock);
    for _ in 0..3 {
        assert!(call(&keys, &layer, &key).await.reached_inner_service());
    }
    assert_eq!(call(&keys, &layer, &key).await.status, 429);

    clock.advance(Duration::from_secs(20)); // one request back
    assert!(call(&keys, &layer, &key).await.reached_inner_service());
    assert_rate_limited(&call(&keys, &layer, &key).await, 20, 3);

    clock.advance(Duration::from_secs(60)); // the whole burst back
    for _ in 0..3 {
        assert!(call(&keys, &layer, &key).await.reached_inner_service());
    }
    assert_eq!(call(&keys, &layer, &key).await.status, 429);
}

#[tokio::test]
async fn each_key_has_its_own_limit_by_default() {
    let keys = manager();
    let first = create(&keys, ACCOUNT, Tier::FREE).await;
    let second = create(&keys, ACCOUNT, Tier::FREE).await;
    let layer = three_per_minute(&clock());
    for _ in 0..3 {
        call(&keys, &layer, &first).await;
    }
    assert_eq!(call(&keys, &layer, &first).await.status, 429);
    assert!(call(&keys, &layer, &second).await.reached_inner_service());
}

#[tokio::test]
async fn per_account_keys_share_one_limit() {
    let keys = manager();
    let first = create(&keys, ACCOUNT, Tier::FREE).await;
    let second = create(&keys, ACCOUNT, Tier::FREE).await;
    let other_account = create(&keys, "acct_2", Tier::FREE).await;
    let layer = three_per_minute(&clock()).per_account();
    for key in [&first, &second, &first] {
        assert!(call(&keys, &layer, key).await.reached_inner_service());
    }
    assert_rate_limited(&call(&keys, &layer, &second).await, 20, 3);
    assert!(call(&keys, &layer, &other_account)
        .await
        .reached_inner_service());
}

#[tokio::test]
async fn tiers_get_their_own_default_limits() {
    let keys = manager();
    let free = create(&keys, ACCOUNT, Tier::FREE).await;
    let pro = create(&keys, "acct_2", Tier::PRO).await;
    let layer = RateLimitLayer::new(TierLimits::default()).clock(clock());
    for (key, quota) in [(&free, 60), (&pro, 600)] {
        for _ in 0..quota {
            assert!(call(&keys, &layer, key).await.reached_inner_service());
        }
        // One request back every 60 / quota seconds: 1 s, rounded up.
        assert_rate_limited(&call(&keys, &layer, key).await, 1, quota);
    }
}

#[tokio::test]
async fn a_tier_without_a_rate_limit_is_not_limited() {
    let keys = manager();
    let enterprise = create(&keys, ACCOUNT, Tier::new("enterprise")).await;
    let layer = RateLimitLayer::new(TierLimits::default())
        .clock(clock())
        .headers_on_success();
    for _ in 0..1_000 {
        let answer = call(&keys, &layer, &enterprise).await;
        assert!(answer.reached_inner_service());
        assert!(!answer.headers.contains_key("ratelimit"));
    }
}

#[tokio::test]
async fn an_invalid_key_gets_401_and_consumes_nothing() {
    let keys = manager();
    let key = create(&keys, ACCOUNT, Tier::FREE).await;
    let unknown = KeyFormat::default().generate();
    let layer = three_per_minute(&clock());
    for _ in 0..10 {
        let answer = call(&keys, &layer, &unknown).await;
        assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    }
    for _ in 0..3 {
        assert!(call(&keys, &layer, &key).await.reached_inner_service());
    }
    assert_eq!(call(&keys, &layer, &key).await.status, 429);
}

#[tokio::test]
async fn headers_on_success_show_the_policy_and_what_is_left() {
    let keys = manager();
    let key = create(&keys, ACCOUNT, Tier::FREE).await;
    let layer = three_per_minute(&clock()).headers_on_success();
    for remaining in [2, 1, 0] {
        let answer = call(&keys, &layer, &key).await;
        assert!(answer.reached_inner_service());
        assert_eq!(answer.header("ratelimit-policy"), r#""default";q=3;w=60"#);
        assert_eq!(
            answer.header("ratelimit"),
            format!(r#""default";r={remaining};t=20"#)
        );
    }
    assert_rate_limited(&call(&keys, &layer, &key).await, 20, 3);
}

#[tokio::test]
async fn a_grpc_call_over_the_limit_gets_resource_exhausted() {
    let keys = manager();
    let key = create(&keys, ACCOUNT, Tier::FREE).await;
    let clock = clock();
    let limits = TierLimits::default().with_rate_limit(Tier::FREE, RateLimit::per_minute(1));
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(RateLimitLayer::new(limits).clock(clock))
        .service_fn(echo_identity);
    let grpc_call = || {
        let mut request: Request<Full<Bytes>> = request(&with_key(&key));
        *request.method_mut() = http::Method::POST;
        *request.version_mut() = http::Version::HTTP_2;
        (request.headers_mut()).insert("content-type", "application/grpc".parse().unwrap());
        request
    };
    let first = service.clone().oneshot(grpc_call()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(!first.headers().contains_key("grpc-status"));
    let refused = Answer::read(service.oneshot(grpc_call()).await.unwrap()).await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(refused.header("grpc-status"), "8");
    assert!(refused
        .header("grpc-message")
        .starts_with("rate_limited: Too many requests"));
    assert_eq!(refused.header("retry-after"), "60");
}

#[tokio::test]
async fn rate_limit_outside_the_api_key_layer_is_500_internal_error() {
    let keys = manager();
    let key = create(&keys, ACCOUNT, Tier::FREE).await;
    let misordered = ServiceBuilder::new()
        .layer(three_per_minute(&clock()))
        .layer(keys.layer())
        .service_fn(echo_identity);
    let answer = send(misordered, &with_key(&key)).await;
    assert_envelope(&answer, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
}

#[tokio::test]
async fn a_key_s_own_limit_overrides_its_tier_s() {
    let keys = manager();
    let own = NewKey::new(ACCOUNT, Tier::FREE, "own").rate_limit(RateLimit::per_minute(1));
    let own = keys.create(own).await.unwrap().key;
    let tiered = create(&keys, ACCOUNT, Tier::FREE).await;
    let clock = clock();
    let layer = three_per_minute(&clock);
    assert!(call(&keys, &layer, &own).await.reached_inner_service());
    assert_rate_limited(&call(&keys, &layer, &own).await, 60, 1);
    for _ in 0..3 {
        assert!(call(&keys, &layer, &tiered).await.reached_inner_service());
    }
    assert_rate_limited(&call(&keys, &layer, &tiered).await, 20, 3);
    // A key's own limit applies even on a tier without one.
    let unlimited = RateLimitLayer::new(TierLimits::none()).clock(clock.clone());
    assert!(call(&keys, &unlimited, &own).await.reached_inner_service());
    assert_eq!(
        call(&keys, &unlimited, &own).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}
