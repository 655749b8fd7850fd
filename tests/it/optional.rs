//! `ApiKeyLayer::optional`: no key passes anonymously; any key presented is checked as always.
#![cfg(feature = "axum")]

use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use common::{assert_envelope, echo_identity, request, send, with_key, Answer, REACHED};
use http::{Request, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::access::RequireScopeLayer;
use tower_api_key::{ApiKey, KeyIdentity, KeyManager, MemoryKeyStore, NewKey, Tier};

struct World {
    keys: KeyManager<MemoryKeyStore>,
    key: ApiKey,
}

async fn world() -> World {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let key = keys
        .create(NewKey::new("acct_1", Tier::FREE, "ci"))
        .await
        .unwrap()
        .key;
    World { keys, key }
}

async fn through_optional(world: &World, headers: &common::Headers<'_>, path: &str) -> Answer {
    let service = ServiceBuilder::new()
        .layer(world.keys.layer().optional())
        .service_fn(echo_identity);
    let mut request = request(headers);
    *request.uri_mut() = path.parse().unwrap();
    Answer::read(service.oneshot(request).await.unwrap()).await
}

#[tokio::test]
async fn no_key_goes_on_without_an_identity() {
    let world = world().await;
    let answer = through_optional(&world, &[], "/api/v1/iocs").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()[REACHED], true);
    assert_eq!(answer.json()["identity"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_valid_key_goes_on_with_its_identity() {
    let world = world().await;
    let answer = through_optional(&world, &with_key(&world.key), "/api/v1/iocs").await;
    assert_eq!(answer.json()["identity"]["account_id"], "acct_1");
}

#[tokio::test]
async fn a_wrong_malformed_conflicting_or_expired_key_is_still_refused() {
    let world = world().await;
    let stranger = tower_api_key::key::KeyFormat::default().generate();
    let cases: [(&common::Headers<'_>, &str); 3] = [
        (&with_key(&stranger), "invalid_api_key"),
        (&[("x-api-key", b"sk_live_short")], "invalid_api_key"),
        (
            &[
                ("x-api-key", world.key.expose_secret().as_bytes()),
                ("authorization", b"Bearer sk_live_other"),
            ],
            "invalid_api_key",
        ),
    ];
    for (headers, code) in cases {
        let answer = through_optional(&world, headers, "/api/v1/iocs").await;
        assert_envelope(&answer, StatusCode::UNAUTHORIZED, code);
    }
    let revoked = world
        .keys
        .create(NewKey::new("acct_1", Tier::FREE, "old").expires_in(Duration::from_secs(1)))
        .await
        .unwrap();
    world.keys.revoke("acct_1", &revoked.info.id).await.unwrap();
    let answer = through_optional(&world, &with_key(&revoked.key), "/api/v1/iocs").await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "expired_api_key");
}

#[tokio::test]
async fn a_key_in_the_query_string_is_still_refused() {
    let world = world().await;
    let path = format!("/api/v1/iocs?api_key={}", world.key.expose_secret());
    let answer = through_optional(&world, &[], &path).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn a_check_inside_answers_an_anonymous_request_401_missing_api_key() {
    let world = world().await;
    let service = ServiceBuilder::new()
        .layer(world.keys.layer().optional())
        .layer(RequireScopeLayer::new("iocs:read"))
        .service_fn(echo_identity);
    let answer = send(service, &[]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "missing_api_key");
    assert_eq!(answer.header("www-authenticate"), "Bearer");
}

#[tokio::test]
async fn axum_handlers_read_an_optional_identity_and_required_ones_refuse() {
    let world = world().await;
    async fn greet(identity: Option<KeyIdentity>) -> String {
        identity.map_or("hello, stranger".to_owned(), |identity| {
            format!("hello, {}", identity.account_id())
        })
    }
    async fn private(identity: KeyIdentity) -> String {
        identity.account_id().to_owned()
    }
    let app = Router::new()
        .route("/greet", get(greet))
        .route("/private", get(private))
        .layer(world.keys.layer().optional());
    let call = |path: &'static str, key: Option<&ApiKey>| {
        let mut request = Request::get(path);
        if let Some(key) = key {
            request = request.header("x-api-key", key.expose_secret());
        }
        let request = request.body(Body::empty()).unwrap();
        let app = app.clone();
        async move { Answer::read(app.oneshot(request).await.unwrap()).await }
    };
    assert_eq!(call("/greet", None).await.body, "hello, stranger");
    assert_eq!(call("/greet", Some(&world.key)).await.body, "hello, acct_1");
    let refused = call("/private", None).await;
    assert_envelope(&refused, StatusCode::UNAUTHORIZED, "missing_api_key");
    assert_eq!(call("/private", Some(&world.key)).await.body, "acct_1");
}
