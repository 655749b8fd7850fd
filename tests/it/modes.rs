//! Live and test keys from one store: the identity's mode, and routes that refuse one mode.

use crate::common;

use std::time::Duration;

use common::{assert_envelope, echo_identity, send, with_key, Answer};
#[cfg(feature = "axum")]
use http::Request;
use http::StatusCode;
use tower::ServiceBuilder;
#[cfg(feature = "axum")]
use tower::ServiceExt;
use tower_api_key::{
    access::{KeyMode, RequireModeLayer},
    key::KeyFormat,
    manage::{CreatedKey, ManageError},
    ApiKey, ApiKeyLayer, KeyId, KeyIdentity, KeyManager, KeyRecord, MemoryKeyStore, NewKey, Tier,
};

const ACCOUNT: &str = "acct_1";

fn manager() -> KeyManager<MemoryKeyStore> {
    KeyManager::new(MemoryKeyStore::new())
}

async fn create(keys: &KeyManager<MemoryKeyStore>, mode: KeyMode) -> CreatedKey {
    let new = NewKey::new(ACCOUNT, Tier::FREE, mode.as_str()).mode(mode);
    keys.create(new).await.unwrap()
}

/// What a route behind the manager's layer and `check` answers to `key`.
async fn call(keys: &KeyManager<MemoryKeyStore>, check: RequireModeLayer, key: &ApiKey) -> Answer {
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(check)
        .service_fn(echo_identity);
    send(service, &with_key(key)).await
}

#[tokio::test]
async fn test_key_authenticates_with_test_mode_on_its_identity() {
    let keys = manager();
    let created = create(&keys, KeyMode::Test).await;
    assert!(created.key.expose_secret().starts_with("sk_test_"));
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .service_fn(echo_identity);
    let answer = send(service, &with_key(&created.key)).await;
    assert!(answer.reached_inner_service());
    assert_eq!(answer.json()["identity"]["mode"], "test");
}

#[tokio::test]
async fn live_key_is_the_default_and_says_so() {
    let keys = manager();
    let created = keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "live"))
        .await
        .unwrap();
    assert!(created.key.expose_secret().starts_with("sk_live_"));
    assert_eq!(created.info.mode, KeyMode::Live);
    let answer = call(&keys, RequireModeLayer::live(), &created.key).await;
    assert!(answer.reached_inner_service());
    assert_eq!(answer.json()["identity"]["mode"], "live");
}

#[tokio::test]
async fn live_only_route_refuses_a_test_key_with_403_live_key_required() {
    let keys = manager();
    let test = create(&keys, KeyMode::Test).await;
    let answer = call(&keys, RequireModeLayer::live(), &test.key).await;
    assert_envelope(&answer, StatusCode::FORBIDDEN, "live_key_required");
    assert!(answer.headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn test_only_route_refuses_a_live_key_with_403_test_key_required() {
    let keys = manager();
    let live = create(&keys, KeyMode::Live).await;
    let test = create(&keys, KeyMode::Test).await;
    let answer = call(&keys, RequireModeLayer::test(), &live.key).await;
    assert_envelope(&answer, StatusCode::FORBIDDEN, "test_key_required");
    let answer = call(&keys, RequireModeLayer::test(), &test.key).await;
    assert!(answer.reached_inner_service());
}

#[tokio::test]
async fn mode_check_outside_the_api_key_layer_is_500_internal_error() {
    let keys = manager();
    let live = create(&keys, KeyMode::Live).await;
    let misordered = ServiceBuilder::new()
        .layer(RequireModeLayer::live())
        .layer(keys.layer())
        .service_fn(echo_identity);
    let answer = send(misordered, &with_key(&live.key)).await;
    assert_envelope(&answer, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
}

#[tokio::test]
async fn test_key_with_a_live_prefix_is_refused_by_its_checksum() {
    let keys = manager();
    let test = create(&keys, KeyMode::Test).await;
    let body = &test.key.expose_secret()["sk_test_".len()..];
    let forged = ApiKey::new(format!("sk_live_{body}"));
    // The checksum covers the prefix, so the forgery never reaches the store; were it to, the
    // digest (which covers the prefix too) would find no record.
    assert!(!KeyFormat::default().is_well_formed(forged.expose_secret()));
    let answer = call(&keys, RequireModeLayer::live(), &forged).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn layer_with_a_live_only_format_refuses_test_keys_as_invalid() {
    let keys = manager();
    let test = create(&keys, KeyMode::Test).await;
    let layer = ApiKeyLayer::new(keys.store().clone()).key_format(KeyFormat::new("sk_live_"));
    let service = ServiceBuilder::new().layer(layer).service_fn(echo_identity);
    let answer = send(service, &with_key(&test.key)).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn test_keys_count_against_the_tier_quota() {
    let keys = manager();
    create(&keys, KeyMode::Live).await;
    create(&keys, KeyMode::Test).await;
    create(&keys, KeyMode::Test).await;
    for mode in [KeyMode::Live, KeyMode::Test] {
        let over = keys
            .create(NewKey::new(ACCOUNT, Tier::FREE, "4th").mode(mode))
            .await;
        assert!(
            matches!(over, Err(ManageError::KeyLimitReached { limit: 3, .. })),
            "{mode}: {over:?}"
        );
    }
}

#[tokio::test]
async fn listing_shows_each_key_s_mode_and_prefix() {
    let keys = manager();
    let live = create(&keys, KeyMode::Live).await;
    let test = create(&keys, KeyMode::Test).await;
    let listed = keys.list(ACCOUNT).await.unwrap();
    let of = |id| listed.iter().find(|info| &info.id == id).unwrap();
    assert_eq!(of(&live.info.id).mode, KeyMode::Live);
    assert!(of(&live.info.id)
        .hint
        .as_deref()
        .unwrap()
        .starts_with("sk_live_..."));
    assert_eq!(of(&test.info.id).mode, KeyMode::Test);
    assert!(of(&test.info.id)
        .hint
        .as_deref()
        .unwrap()
        .starts_with("sk_test_..."));
    let json = serde_json::to_value(of(&test.info.id)).unwrap();
    assert_eq!(json["mode"], "test");
}

#[tokio::test]
async fn rotating_a_test_key_gives_a_test_key() {
    let keys = manager();
    let old = create(&keys, KeyMode::Test).await;
    let replacement = keys
        .rotate(ACCOUNT, &old.info.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(replacement.key.expose_secret().starts_with("sk_test_"));
    assert_eq!(replacement.info.mode, KeyMode::Test);
    let answer = call(&keys, RequireModeLayer::live(), &replacement.key).await;
    assert_envelope(&answer, StatusCode::FORBIDDEN, "live_key_required");
}

#[tokio::test]
async fn a_format_without_a_test_prefix_cannot_create_test_keys() {
    let keys = manager().key_format(KeyFormat::new("sk_live_"));
    let refused = keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "t").mode(KeyMode::Test))
        .await;
    assert!(
        matches!(refused, Err(ManageError::UnsupportedMode(KeyMode::Test))),
        "{refused:?}"
    );
    assert!(keys.store().is_empty());
}

#[tokio::test]
async fn a_custom_test_prefix_makes_test_keys_with_it() {
    let format = KeyFormat::new("acme_live_").test_prefix("acme_test_");
    let keys = manager().key_format(format);
    let test = create(&keys, KeyMode::Test).await;
    assert!(test.key.expose_secret().starts_with("acme_test_"));
    let answer = call(&keys, RequireModeLayer::test(), &test.key).await;
    assert!(answer.reached_inner_service());
}

#[cfg(feature = "axum")]
mod axum_extractors {
    use axum::routing::get;
    use axum::Router;
    use tower_api_key::extract::{LiveKey, TestKey};

    use super::*;

    fn app(keys: &KeyManager<MemoryKeyStore>) -> Router {
        Router::new()
            .route(
                "/live",
                get(|LiveKey(identity): LiveKey| async move { identity.mode().to_string() }),
            )
            .route(
                "/test",
                get(|TestKey(identity): TestKey| async move { identity.mode().to_string() }),
            )
            .layer(keys.layer())
    }

    async fn get_path(app: Router, path: &str, key: &ApiKey) -> Answer {
        let request = Request::builder()
            .uri(path)
            .header("x-api-key", key.expose_secret())
            .body(axum::body::Body::empty())
            .unwrap();
        Answer::read(app.oneshot(request).await.unwrap()).await
    }

    #[tokio::test]
    async fn each_extractor_takes_its_own_mode() {
        let keys = manager();
        let live = create(&keys, KeyMode::Live).await;
        let test = create(&keys, KeyMode::Test).await;
        let answer = get_path(app(&keys), "/live", &live.key).await;
        assert_eq!(
            (answer.status, answer.body),
            (StatusCode::OK, "live".into())
        );
        let answer = get_path(app(&keys), "/test", &test.key).await;
        assert_eq!(
            (answer.status, answer.body),
            (StatusCode::OK, "test".into())
        );
    }

    #[tokio::test]
    async fn each_extractor_refuses_the_other_mode() {
        let keys = manager();
        let live = create(&keys, KeyMode::Live).await;
        let test = create(&keys, KeyMode::Test).await;
        let answer = get_path(app(&keys), "/live", &test.key).await;
        assert_envelope(&answer, StatusCode::FORBIDDEN, "live_key_required");
        let answer = get_path(app(&keys), "/test", &live.key).await;
        assert_envelope(&answer, StatusCode::FORBIDDEN, "test_key_required");
    }
}

#[tokio::test]
async fn test_key_stored_as_live_cannot_pass_a_live_only_route() {
    let store = MemoryKeyStore::new();
    let key = KeyFormat::default().generate_for(KeyMode::Test).unwrap();
    // `KeyIdentity::new` makes a live identity: a record hand-made without `with_mode`.
    let identity = KeyIdentity::new(KeyId::random(), ACCOUNT, "hand-made", Tier::FREE);
    store.insert(KeyRecord::new(key.digest(), identity));
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(store))
        .layer(RequireModeLayer::live())
        .service_fn(echo_identity);
    let answer = send(service, &with_key(&key)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error_code(), "invalid_api_key");
}
