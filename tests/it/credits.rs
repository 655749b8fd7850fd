//! Credits: `CreditsLayer` inside `ApiKeyLayer` spends each request's cost from its key's
//! balance, and answers `429 usage_exceeded` (or `503`) in the envelope.

use crate::common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{assert_envelope, echo_identity, request, send, with_key, Answer};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::limit::{Credits, CreditsLayer, Refill};
use tower_api_key::store::WritableKeyStore;
use tower_api_key::{ApiKey, AuthError, KeyId, KeyManager, MemoryKeyStore, NewKey, Tier};

const ACCOUNT: &str = "acct_1";

/// 2026-12-02T12:00:00Z.
fn clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_212_800))
}

async fn metered<S: WritableKeyStore + Clone>(
    keys: &KeyManager<S>,
    credits: Credits,
) -> (ApiKey, KeyId) {
    let new = NewKey::new(ACCOUNT, Tier::FREE, "metered").credits(credits);
    let created = keys.create(new).await.unwrap();
    (created.key, created.info.id)
}

/// What `credits`, inside the manager's layer, answers to `key`.
async fn call<S: WritableKeyStore + Clone>(
    keys: &KeyManager<S>,
    credits: &CreditsLayer,
    key: &ApiKey,
) -> Answer {
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(credits.clone())
        .service_fn(echo_identity);
    send(service, &with_key(key)).await
}

#[tokio::test]
async fn each_request_spends_its_cost_and_one_the_balance_cannot_pay_is_429() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let (key, key_id) = metered(&keys, Credits::new(10)).await;
    let credits = CreditsLayer::new(keys.store().clone()).cost(4);
    for _ in 0..2 {
        assert!(call(&keys, &credits, &key).await.reached_inner_service());
    }
    let refused = call(&keys, &credits, &key).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "usage_exceeded");
    assert_eq!(
        refused.json()["error"]["message"],
        "This API key has used its credits, and they are not refilled: top up its credits to \
         go on."
    );
    assert!(
        !refused.headers.contains_key("retry-after"),
        "no refill to wait for"
    );
    let left = keys.get(ACCOUNT, &key_id).await.unwrap().credits.unwrap();
    assert_eq!(left.remaining, 2, "the refused request took nothing");
    // A cheaper route still passes with what is left.
    let cheap = CreditsLayer::new(keys.store().clone()).cost(2);
    assert!(call(&keys, &cheap, &key).await.reached_inner_service());
}

#[tokio::test]
async fn the_refusal_says_when_the_balance_refills_and_a_refill_lets_the_key_go_on() {
    let clock = clock();
    let keys = KeyManager::new(MemoryKeyStore::new()).clock(clock.clone());
    let (key, _) = metered(
        &keys,
        Credits::new(1).refilled(Refill::daily(1), clock.now()),
    )
    .await;
    let credits = CreditsLayer::new(keys.store().clone()).clock(clock.clone());
    assert!(call(&keys, &credits, &key).await.reached_inner_service());
    let refused = call(&keys, &credits, &key).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "usage_exceeded");
    assert_eq!(
        refused.json()["error"]["message"],
        "This API key has used its credits. They are refilled at 2026-12-03T00:00:00Z; until \
         then, top up its credits to go on."
    );
    assert_eq!(refused.header("retry-after"), (12 * 3600).to_string());
    clock.advance(Duration::from_secs(12 * 3600));
    assert!(call(&keys, &credits, &key).await.reached_inner_service());
}

#[tokio::test]
async fn a_top_up_lets_an_exhausted_key_go_on() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let (key, key_id) = metered(&keys, Credits::new(0)).await;
    let credits = CreditsLayer::new(keys.store().clone());
    let refused = call(&keys, &credits, &key).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "usage_exceeded");
    let error = refused_error(&keys, &credits, &key).await;
    assert!(matches!(
        error,
        AuthError::UsageExceeded {
            refills_at: None,
            ..
        }
    ));
    let topped = keys.top_up(ACCOUNT, &key_id, 1).await.unwrap();
    assert_eq!(topped.credits.unwrap().remaining, 1);
    assert!(call(&keys, &credits, &key).await.reached_inner_service());
    assert_eq!(
        call(&keys, &credits, &key).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// The `AuthError` a refusal carries in its extensions.
async fn refused_error(
    keys: &KeyManager<MemoryKeyStore>,
    credits: &CreditsLayer,
    key: &ApiKey,
) -> AuthError {
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(credits.clone())
        .service_fn(echo_identity);
    let response = service.oneshot(request(&with_key(key))).await.unwrap();
    response.extensions().get::<AuthError>().unwrap().clone()
}

#[tokio::test]
async fn keys_without_a_balance_are_not_metered() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let key = keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "plain"))
        .await
        .unwrap()
        .key;
    let credits = CreditsLayer::new(keys.store().clone()).cost(1_000);
    for _ in 0..3 {
        assert!(call(&keys, &credits, &key).await.reached_inner_service());
    }
}

#[tokio::test]
async fn an_invalid_key_gets_401_and_spends_nothing() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let (_, key_id) = metered(&keys, Credits::new(1)).await;
    let credits = CreditsLayer::new(keys.store().clone());
    let stranger = tower_api_key::key::KeyFormat::default().generate();
    let answer = call(&keys, &credits, &stranger).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    let left = keys.get(ACCOUNT, &key_id).await.unwrap().credits.unwrap();
    assert_eq!(left.remaining, 1);
}

#[tokio::test]
async fn each_route_sets_its_cost_with_axum_route_layer() {
    use axum::routing::get;
    let keys = KeyManager::new(MemoryKeyStore::new());
    let (key, key_id) = metered(&keys, Credits::new(12)).await;
    let cost = |cost| CreditsLayer::new(keys.store().clone()).cost(cost);
    let app = axum::Router::new()
        .route("/search", get(|| async { "results" }).route_layer(cost(1)))
        .route("/report", get(|| async { "report" }).route_layer(cost(10)))
        .layer(keys.layer());
    let get = |path: &'static str| {
        let app = app.clone();
        let key = key.clone();
        async move {
            let request = Request::get(path)
                .header("x-api-key", key.expose_secret())
                .body(axum::body::Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        }
    };
    assert_eq!(get("/report").await, StatusCode::OK); // 2 left
    assert_eq!(get("/search").await, StatusCode::OK); // 1 left
    assert_eq!(get("/report").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(get("/search").await, StatusCode::OK); // 0 left
    assert_eq!(get("/search").await, StatusCode::TOO_MANY_REQUESTS);
    let left = keys.get(ACCOUNT, &key_id).await.unwrap().credits.unwrap();
    assert_eq!(left.remaining, 0);
}

#[tokio::test]
async fn a_grpc_call_without_credits_gets_resource_exhausted() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let (key, _) = metered(&keys, Credits::new(0)).await;
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(CreditsLayer::new(keys.store().clone()))
        .service_fn(echo_identity);
    let mut call: Request<Full<Bytes>> = request(&with_key(&key));
    *call.method_mut() = http::Method::POST;
    *call.version_mut() = http::Version::HTTP_2;
    (call.headers_mut()).insert("content-type", "application/grpc".parse().unwrap());
    let refused = Answer::read(service.oneshot(call).await.unwrap()).await;
    assert_eq!(refused.header("grpc-status"), "8");
    assert!(refused
        .header("grpc-message")
        .starts_with("usage_exceeded: "));
}

#[tokio::test]
async fn credits_fail_closed_with_503_when_the_store_fails() {
    let keys = KeyManager::new(common::faulty::ListingsAndSpendsFail::default());
    let (key, _) = metered(&keys, Credits::new(100)).await;
    let credits = CreditsLayer::new(keys.store().clone());
    let answer = call(&keys, &credits, &key).await;
    assert_envelope(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication_unavailable",
    );
    assert!(
        !String::from_utf8_lossy(&answer.body).contains("5432"),
        "no store detail leaks"
    );
    // A key without a balance is refused the same way: without the store, the layer cannot
    // tell that it is not metered.
    let plain = keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "plain"))
        .await
        .unwrap()
        .key;
    assert_eq!(
        call(&keys, &credits, &plain).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn credits_outside_the_api_key_layer_is_500_internal_error() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let (key, _) = metered(&keys, Credits::new(1)).await;
    let misordered = ServiceBuilder::new()
        .layer(CreditsLayer::new(keys.store().clone()))
        .layer(keys.layer())
        .service_fn(echo_identity);
    let answer = send(misordered, &with_key(&key)).await;
    assert_envelope(&answer, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
}
