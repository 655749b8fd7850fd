//! Restricted keys: scopes set at creation, checked per route by `RequireScopeLayer` and the axum
//! `Scoped` extractor.

use crate::common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
#[cfg(feature = "axum")]
use common::Headers;
use common::{assert_envelope, echo_identity, send, with_key, Answer};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    access::{RequireScopeLayer, ScopeError, Scopes, MAX_SCOPES, MAX_SCOPE_LEN},
    manage::ManageError,
    ApiKey, AuthError, KeyManager, MemoryKeyStore, NewKey, Tier,
};

const ACCOUNT: &str = "acct_1";

fn manager() -> KeyManager<MemoryKeyStore> {
    KeyManager::new(MemoryKeyStore::new())
}

/// A key of [`ACCOUNT`], restricted to `scopes` if there are some.
async fn create(keys: &KeyManager<MemoryKeyStore>, scopes: Option<&[&str]>) -> ApiKey {
    let mut new = NewKey::new(ACCOUNT, Tier::PRO, "key");
    if let Some(scopes) = scopes {
        new = new.scopes(scopes.iter().copied());
    }
    keys.create(new).await.unwrap().key
}

/// What a route that requires `scope`, behind the manager's layer, answers to `key`.
async fn call(keys: &KeyManager<MemoryKeyStore>, scope: &'static str, key: &ApiKey) -> Answer {
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(RequireScopeLayer::new(scope))
        .service_fn(echo_identity);
    send(service, &with_key(key)).await
}

fn assert_insufficient_scope(answer: &Answer, scope: &str) {
    assert_envelope(answer, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(
        answer.header("www-authenticate"),
        format!(r#"Bearer error="insufficient_scope", scope="{scope}""#)
    );
}

#[tokio::test]
async fn key_created_without_scopes_passes_every_scope_check() {
    let keys = manager();
    let key = create(&keys, None).await;
    for scope in ["keys:write", "iocs:read", "admin"] {
        assert!(call(&keys, scope, &key).await.reached_inner_service());
    }
}

#[tokio::test]
async fn key_with_the_required_scope_passes_with_its_scopes_on_the_identity() {
    let keys = manager();
    let key = create(&keys, Some(&["keys:write", "iocs:read"])).await;
    let answer = call(&keys, "keys:write", &key).await;
    assert!(answer.reached_inner_service());
    assert_eq!(
        answer.json()["identity"]["scopes"],
        serde_json::json!(["iocs:read", "keys:write"])
    );
}

#[tokio::test]
async fn key_without_the_required_scope_is_403_insufficient_scope_with_a_challenge() {
    let keys = manager();
    let key = create(&keys, Some(&["keys:read"])).await;
    let answer = call(&keys, "keys:write", &key).await;
    assert_insufficient_scope(&answer, "keys:write");
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("\"keys:write\""), "{message}");
}

#[tokio::test]
async fn scopes_match_exactly_not_by_prefix() {
    let keys = manager();
    let key = create(&keys, Some(&["keys", "keys:write:all"])).await;
    assert_insufficient_scope(&call(&keys, "keys:write", &key).await, "keys:write");
}

#[tokio::test]
async fn refusal_carries_the_request_s_own_id() {
    let keys = manager();
    let key = create(&keys, Some(&["keys:read"])).await;
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(RequireScopeLayer::new("keys:write"))
        .service_fn(echo_identity);
    let mut headers = with_key(&key);
    headers.push(("x-request-id", b"trace-42"));
    let answer = send(service, &headers).await;
    assert_insufficient_scope(&answer, "keys:write");
    assert_eq!(answer.json()["error"]["request_id"], "trace-42");
}

#[tokio::test]
async fn stacked_scope_layers_require_every_scope() {
    let keys = manager();
    let both = create(&keys, Some(&["iocs:read", "iocs:write"])).await;
    let one = create(&keys, Some(&["iocs:read"])).await;
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(RequireScopeLayer::new("iocs:read"))
        .layer(RequireScopeLayer::new("iocs:write"))
        .service_fn(echo_identity);
    let answer = send(service.clone(), &with_key(&both)).await;
    assert!(answer.reached_inner_service());
    let answer = send(service, &with_key(&one)).await;
    assert_insufficient_scope(&answer, "iocs:write");
}

#[tokio::test]
async fn scope_check_outside_the_api_key_layer_is_500_internal_error() {
    let keys = manager();
    let key = create(&keys, None).await;
    let misordered = ServiceBuilder::new()
        .layer(RequireScopeLayer::new("keys:write"))
        .layer(keys.layer())
        .service_fn(echo_identity);
    let answer = send(misordered, &with_key(&key)).await;
    assert_envelope(&answer, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert!(answer.headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn refused_request_never_reaches_the_inner_service() {
    let keys = manager();
    let key = create(&keys, Some(&["keys:read"])).await;
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::clone(&reached);
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(RequireScopeLayer::new("keys:write"))
        .service_fn(move |_: Request<Full<Bytes>>| {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        });
    let answer = send(service, &with_key(&key)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(!reached.load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test]
async fn invalid_scopes_are_refused_at_creation_and_nothing_is_stored() {
    let keys = manager();
    let long = "s".repeat(MAX_SCOPE_LEN + 1);
    let too_many: Vec<String> = (0..=MAX_SCOPES).map(|index| format!("s{index}")).collect();
    let cases: Vec<(Vec<String>, ScopeError)> = vec![
        (vec![], ScopeError::Empty),
        (too_many, ScopeError::TooMany),
        (
            vec!["ok".into(), "keys write".into()],
            ScopeError::Malformed { position: 1 },
        ),
        (vec!["".into()], ScopeError::Malformed { position: 0 }),
        (vec![long], ScopeError::Malformed { position: 0 }),
        (vec![r#"a"b"#.into()], ScopeError::Malformed { position: 0 }),
        (vec![r"a\b".into()], ScopeError::Malformed { position: 0 }),
        (vec!["clé".into()], ScopeError::Malformed { position: 0 }),
    ];
    for (scopes, expected) in cases {
        let new = NewKey::new(ACCOUNT, Tier::FREE, "bad").scopes(scopes.clone());
        match keys.create(new).await {
            Err(ManageError::InvalidScopes(error)) => assert_eq!(error, expected, "{scopes:?}"),
            other => panic!("{scopes:?} gave {other:?}"),
        }
    }
    assert!(keys.store().is_empty());
}

#[tokio::test]
async fn duplicate_scopes_are_stored_once_and_sorted() {
    let keys = manager();
    let new = NewKey::new(ACCOUNT, Tier::FREE, "dup").scopes(["b", "a", "b"]);
    let created = keys.create(new).await.unwrap();
    assert_eq!(created.info.scopes, Some(Scopes::new(["a", "b"]).unwrap()));
}

#[tokio::test]
async fn listing_shows_scopes_and_null_for_full_access() {
    let keys = manager();
    create(&keys, Some(&["iocs:read"])).await;
    create(&keys, None).await;
    let listed = serde_json::to_value(keys.list(ACCOUNT).await.unwrap()).unwrap();
    let scopes: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|info| info["scopes"].clone())
        .collect();
    assert!(scopes.contains(&serde_json::json!(["iocs:read"])));
    assert!(scopes.contains(&serde_json::Value::Null));
}

#[tokio::test]
async fn rotation_keeps_the_key_s_scopes() {
    let keys = manager();
    let new = NewKey::new(ACCOUNT, Tier::FREE, "ci").scopes(["iocs:read"]);
    let old = keys.create(new).await.unwrap();
    let replacement = keys
        .rotate(ACCOUNT, &old.info.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(replacement.info.scopes, old.info.scopes);
    let answer = call(&keys, "keys:write", &replacement.key).await;
    assert_insufficient_scope(&answer, "keys:write");
}

#[test]
fn check_errors_have_their_documented_status_and_code() {
    let insufficient = AuthError::InsufficientScope {
        scope: "keys:write".into(),
    };
    assert_eq!(insufficient.status(), StatusCode::FORBIDDEN);
    assert_eq!(insufficient.code(), "insufficient_scope");
    let missing = AuthError::MissingIdentity;
    assert_eq!(missing.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(missing.code(), "internal_error");
}

#[cfg(feature = "axum")]
mod axum_extractor {
    use axum::routing::get;
    use axum::Router;
    use tower_api_key::extract::{RequiredScope, Scoped};

    use super::*;

    struct KeysWrite;

    impl RequiredScope for KeysWrite {
        const SCOPE: &'static str = "keys:write";
    }

    async fn handler(identity: Scoped<KeysWrite>) -> String {
        identity.name().to_owned()
    }

    fn app(keys: &KeyManager<MemoryKeyStore>) -> Router {
        Router::new()
            .route("/keys", get(handler))
            .layer(keys.layer())
    }

    async fn get_keys(app: Router, headers: &Headers<'_>) -> Answer {
        let mut request = Request::builder().uri("/keys");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        Answer::read(app.oneshot(request).await.unwrap()).await
    }

    #[tokio::test]
    async fn scoped_extractor_lets_a_key_with_the_scope_or_full_access_through() {
        let keys = manager();
        for scopes in [Some(&["keys:write"][..]), None] {
            let key = create(&keys, scopes).await;
            let answer = get_keys(app(&keys), &with_key(&key)).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.body, "key");
        }
    }

    #[tokio::test]
    async fn scoped_extractor_refuses_a_key_without_the_scope() {
        let keys = manager();
        let key = create(&keys, Some(&["keys:read"])).await;
        let answer = get_keys(app(&keys), &with_key(&key)).await;
        assert_insufficient_scope(&answer, "keys:write");
    }

    #[tokio::test]
    async fn scoped_extractor_outside_the_layer_is_500_internal_error() {
        let app = Router::new().route("/keys", get(handler));
        let answer = get_keys(app, &[]).await;
        assert_envelope(&answer, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    }

    #[tokio::test]
    async fn scope_layer_works_as_an_axum_route_layer() {
        let keys = manager();
        let key = create(&keys, Some(&["keys:read"])).await;
        let app = Router::new()
            .route(
                "/keys",
                get(|| async { "listed" }).route_layer(RequireScopeLayer::new("keys:write")),
            )
            .layer(keys.layer());
        let answer = get_keys(app, &with_key(&key)).await;
        assert_insufficient_scope(&answer, "keys:write");
    }
}

#[tokio::test]
async fn a_scope_refusal_carries_its_auth_error_in_the_response_extensions() {
    let keys = manager();
    let key = create(&keys, Some(&["iocs:read"])).await;
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .layer(RequireScopeLayer::new("keys:write"))
        .service_fn(echo_identity);
    let response = service
        .oneshot(common::request(&with_key(&key)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let error = response.extensions().get::<AuthError>();
    assert!(
        matches!(error, Some(AuthError::InsufficientScope { scope }) if scope == "keys:write"),
        "{error:?}"
    );
}

/// One renderer reaches every refusal the crate makes behind a layer: its own 401 and 503, the
/// 403s of the scope and mode layers, and those of the axum extractors. (The 500 of a route
/// that no layer covers has no layer to take a renderer from: it is the default envelope.)
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_problem_json_renderer_answers_every_status_through_layers_and_extractors() {
    use axum::routing::get;
    use axum::Router;
    use tower_api_key::{
        access::{KeyMode, RequireModeLayer},
        extract::{LiveKey, RequiredScope, Scoped},
        ApiKeyLayer,
    };

    struct KeysWrite;
    impl RequiredScope for KeysWrite {
        const SCOPE: &'static str = "keys:write";
    }

    fn problem_json(rejection: &tower_api_key::response::Rejection) -> Response<Bytes> {
        let body = serde_json::json!({
            "type": format!("https://example.com/errors/{}", rejection.error().code()),
            "title": rejection.message(),
            "status": rejection.error().status().as_u16(),
        });
        Response::builder()
            .status(rejection.error().status())
            .header("content-type", "application/problem+json")
            .body(Bytes::from(body.to_string()))
            .unwrap()
    }

    let keys = manager();
    let reader = create(&keys, Some(&["iocs:read"])).await;
    let test_key = keys
        .create(NewKey::new(ACCOUNT, Tier::PRO, "test").mode(KeyMode::Test))
        .await
        .unwrap()
        .key;
    let layer = keys.layer().error_response(problem_json);
    let app = Router::new()
        .route(
            "/scope-layer",
            get(|| async { "ok" }).route_layer(RequireScopeLayer::new("keys:write")),
        )
        .route(
            "/mode-layer",
            get(|| async { "ok" }).route_layer(RequireModeLayer::live()),
        )
        .route(
            "/scope-extractor",
            get(|_: Scoped<KeysWrite>| async { "ok" }),
        )
        .route("/mode-extractor", get(|_: LiveKey| async { "ok" }));
    // One request per minute for the reader's tier, used up below before the cases run.
    #[cfg(feature = "rate-limit")]
    let app = app.route(
        "/rate-limit",
        get(|| async { "ok" }).route_layer(tower_api_key::limit::RateLimitLayer::new(
            tower_api_key::manage::TierLimits::none()
                .with_rate_limit(Tier::PRO, tower_api_key::limit::RateLimit::per_minute(1)),
        )),
    );
    let app = app.layer(layer);
    let down = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(ApiKeyLayer::new(common::FailingStore).error_response(problem_json));

    #[allow(unused_mut)]
    let mut cases: Vec<(&str, &Router, Option<&ApiKey>, u16, &str)> = vec![
        ("/scope-layer", &app, None, 401, "missing_api_key"),
        ("/", &down, Some(&reader), 503, "authentication_unavailable"),
        (
            "/scope-layer",
            &app,
            Some(&reader),
            403,
            "insufficient_scope",
        ),
        (
            "/mode-layer",
            &app,
            Some(&test_key),
            403,
            "live_key_required",
        ),
        (
            "/scope-extractor",
            &app,
            Some(&reader),
            403,
            "insufficient_scope",
        ),
        (
            "/mode-extractor",
            &app,
            Some(&test_key),
            403,
            "live_key_required",
        ),
    ];
    #[cfg(feature = "rate-limit")]
    {
        let first = Request::builder()
            .uri("/rate-limit")
            .header("x-api-key", reader.expose_secret())
            .body(axum::body::Body::empty())
            .unwrap();
        let first = app.clone().oneshot(first).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        cases.push(("/rate-limit", &app, Some(&reader), 429, "rate_limited"));
    }
    for (path, router, key, status, code) in cases {
        let mut request = Request::builder().uri(path);
        if let Some(key) = key {
            request = request.header("x-api-key", key.expose_secret());
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        let answer = Answer::read(router.clone().oneshot(request).await.unwrap()).await;
        assert_eq!(answer.status.as_u16(), status, "{path}");
        assert_eq!(
            answer.header("content-type"),
            "application/problem+json",
            "{path}"
        );
        let expected_type = format!("https://example.com/errors/{code}");
        assert_eq!(answer.json()["type"], expected_type.as_str(), "{path}");
        assert_eq!(answer.header("cache-control"), "no-store", "{path}");
        if status == 429 {
            assert_eq!(answer.header("retry-after"), "60", "{path}");
            assert!(answer.headers.contains_key("ratelimit"), "{path}");
        }
    }
}
