//! The layer's behaviour, request by request, through `tower::ServiceExt::oneshot`.

use crate::common;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::{assert_envelope, echo_identity, request, Answer, CountingStore, FailingStore, Keys};
use http::header::HeaderName;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_api_key::{
    access::KeyMode,
    key::{KeyDigest, KeyFormat},
    response::Rejection,
    ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, KeyStore, MemoryKeyStore, Tier,
};

async fn send(layer: ApiKeyLayer, headers: &[(&str, &[u8])]) -> Answer {
    let service = ServiceBuilder::new().layer(layer).service_fn(echo_identity);
    Answer::read(service.oneshot(request(headers)).await.unwrap()).await
}

fn bearer(key: &tower_api_key::ApiKey) -> Vec<u8> {
    format!("Bearer {}", key.expose_secret()).into_bytes()
}

const MISSING_MESSAGE: &str = "API key is required. Include it in the Authorization header as \
                               \"Bearer sk_live_...\" or in the X-API-Key header.";

#[tokio::test]
async fn bearer_key_reaches_inner_service_with_identity() {
    let keys = Keys::new();
    let answer = send(
        ApiKeyLayer::new(keys.store),
        &[("authorization", &bearer(&keys.active))],
    )
    .await;
    assert!(answer.reached_inner_service());
    let identity = &answer.json()["identity"];
    assert_eq!(identity["key_id"], "key_active");
    assert_eq!(identity["account_id"], "acct_1");
    assert_eq!(identity["name"], "active");
    assert_eq!(identity["tier"], "free");
    assert_eq!(identity["metadata"]["role"], "reader");
}

#[tokio::test]
async fn x_api_key_reaches_inner_service() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().as_bytes();
    let answer = send(ApiKeyLayer::new(keys.store), &[("x-api-key", key)]).await;
    assert!(answer.reached_inner_service());
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let keys = Keys::new();
    let value = format!("bEARER   {}", keys.active.expose_secret());
    let answer = send(
        ApiKeyLayer::new(keys.store),
        &[("authorization", value.as_bytes())],
    )
    .await;
    assert!(answer.reached_inner_service());
}

#[tokio::test]
async fn surrounding_whitespace_is_ignored() {
    let keys = Keys::new();
    let value = format!("\t{} ", keys.active.expose_secret());
    let answer = send(
        ApiKeyLayer::new(keys.store),
        &[("x-api-key", value.as_bytes())],
    )
    .await;
    assert!(answer.reached_inner_service());
}

#[tokio::test]
async fn both_headers_with_the_same_key_are_accepted() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().as_bytes();
    let headers: &[(&str, &[u8])] = &[("authorization", &bearer(&keys.active)), ("x-api-key", key)];
    assert!(send(ApiKeyLayer::new(keys.store), headers)
        .await
        .reached_inner_service());
}

#[tokio::test]
async fn both_headers_with_different_keys_are_rejected() {
    let keys = Keys::new();
    let other = KeyFormat::default().generate();
    let headers: &[(&str, &[u8])] = &[
        ("authorization", &bearer(&keys.active)),
        ("x-api-key", other.expose_secret().as_bytes()),
    ];
    let answer = send(ApiKeyLayer::new(keys.store), headers).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(
        answer.header("www-authenticate"),
        r#"Bearer error="invalid_token""#
    );
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("two different API keys"));
}

#[tokio::test]
async fn repeated_header_with_different_keys_is_rejected() {
    let keys = Keys::new();
    let headers: &[(&str, &[u8])] = &[
        ("x-api-key", keys.active.expose_secret().as_bytes()),
        ("x-api-key", keys.unknown.expose_secret().as_bytes()),
    ];
    let answer = send(ApiKeyLayer::new(keys.store), headers).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn repeated_header_with_the_same_key_is_accepted() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().as_bytes();
    let answer = send(
        ApiKeyLayer::new(keys.store),
        &[("x-api-key", key), ("x-api-key", key)],
    )
    .await;
    assert!(answer.reached_inner_service());
}

#[tokio::test]
async fn other_scheme_alone_is_missing() {
    let keys = Keys::new();
    let answer = send(
        ApiKeyLayer::new(keys.store),
        &[("authorization", b"Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "missing_api_key");
}

#[tokio::test]
async fn other_scheme_with_x_api_key_uses_x_api_key() {
    let keys = Keys::new();
    let headers: &[(&str, &[u8])] = &[
        ("authorization", b"Basic dXNlcjpwYXNz"),
        ("x-api-key", keys.active.expose_secret().as_bytes()),
    ];
    assert!(send(ApiKeyLayer::new(keys.store), headers)
        .await
        .reached_inner_service());
}

#[tokio::test]
async fn empty_token_is_missing() {
    let keys = Keys::new();
    let answer = send(
        ApiKeyLayer::new(keys.store),
        &[("authorization", b"Bearer ")],
    )
    .await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "missing_api_key");
}

#[tokio::test]
async fn non_utf8_key_is_invalid() {
    let keys = Keys::new();
    let answer = send(
        ApiKeyLayer::new(keys.store),
        &[("x-api-key", b"sk_live_\xff\xfe")],
    )
    .await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn ten_kilobyte_value_is_invalid_without_lookup() {
    let keys = Keys::new();
    let store = CountingStore::new(keys.store);
    let mut value = b"sk_live_".to_vec();
    value.resize(10 * 1024, b'a');
    let answer = send(ApiKeyLayer::new(store.clone()), &[("x-api-key", &value)]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(store.lookups(), 0);
}

async fn send_to(keys: Keys, uri: &str, headers: &[(&str, &[u8])]) -> Answer {
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store))
        .service_fn(echo_identity);
    let mut request = request(headers);
    *request.uri_mut() = uri.parse().unwrap();
    Answer::read(service.oneshot(request).await.unwrap()).await
}

#[tokio::test]
async fn key_in_query_string_is_refused_even_beside_a_good_header() {
    let keys = Keys::new();
    let key = keys.active.expose_secret();
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store))
        .service_fn(echo_identity);
    let request = Request::builder()
        .uri(format!("/api/v1/iocs?page=2&token={key}"))
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap();
    let answer = Answer::read(service.oneshot(request).await.unwrap()).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(
        answer.headers["www-authenticate"],
        r#"Bearer error="invalid_request""#
    );
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("API keys are not accepted in the URL query string"));
}

#[tokio::test]
async fn credential_parameter_in_query_string_is_refused_whatever_its_value() {
    let answer = send_to(Keys::new(), "/api/v1/iocs?api_key=not-a-key", &[]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn other_query_parameters_do_not_matter() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().to_owned();
    let uri = "/api/v1/iocs?key=abc&q=sk_live&api_key=";
    let answer = send_to(keys, uri, &[("x-api-key", key.as_bytes())]).await;
    assert!(answer.reached_inner_service());
    let answer = send_to(Keys::new(), uri, &[]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "missing_api_key");
}

#[tokio::test]
async fn missing_key_message_is_the_seed_s_word_for_word() {
    let answer = send(ApiKeyLayer::new(MemoryKeyStore::new()), &[]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "missing_api_key");
    assert_eq!(answer.json()["error"]["message"], MISSING_MESSAGE);
    assert_eq!(answer.header("www-authenticate"), "Bearer");
}

#[tokio::test]
async fn missing_key_message_names_the_configured_prefix_and_headers() {
    let layer = ApiKeyLayer::new(MemoryKeyStore::new())
        .key_format(KeyFormat::new("pk_"))
        .api_key_header(HeaderName::from_static("x-service-key"));
    let answer = send(layer, &[]).await;
    assert_eq!(
        answer.json()["error"]["message"],
        "API key is required. Include it in the Authorization header as \"Bearer pk_...\" \
         or in the X-Service-Key header."
    );
}

#[tokio::test]
async fn wrong_checksum_is_invalid_without_lookup() {
    let keys = Keys::new();
    let store = CountingStore::new(keys.store);
    let mut typo = keys.active.expose_secret().to_owned().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let answer = send(ApiKeyLayer::new(store.clone()), &[("x-api-key", &typo)]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(
        answer.header("www-authenticate"),
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn random_string_is_invalid_without_lookup() {
    let keys = Keys::new();
    let store = CountingStore::new(keys.store);
    let answer = send(
        ApiKeyLayer::new(store.clone()),
        &[("x-api-key", b"sk_live_hunter2")],
    )
    .await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn unknown_key_is_invalid_after_one_lookup() {
    let keys = Keys::new();
    let store = CountingStore::new(keys.store);
    let key = keys.unknown.expose_secret().as_bytes();
    let answer = send(ApiKeyLayer::new(store.clone()), &[("x-api-key", key)]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(store.lookups(), 1);
}

#[tokio::test]
async fn deleted_key_is_invalid() {
    let keys = Keys::new();
    let key = keys.deleted.expose_secret().as_bytes();
    let answer = send(ApiKeyLayer::new(keys.store), &[("x-api-key", key)]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn revoked_key_is_expired() {
    let keys = Keys::new();
    let key = keys.revoked.expose_secret().as_bytes();
    let answer = send(ApiKeyLayer::new(keys.store), &[("x-api-key", key)]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "expired_api_key");
    assert_eq!(
        answer.header("www-authenticate"),
        r#"Bearer error="invalid_token""#
    );
}

#[tokio::test]
async fn key_past_its_expiry_is_expired() {
    let keys = Keys::new();
    let key = keys.expired.expose_secret().as_bytes();
    let answer = send(ApiKeyLayer::new(keys.store), &[("x-api-key", key)]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "expired_api_key");
}

#[tokio::test]
async fn wrong_secret_under_a_known_lookup_id_is_invalid() {
    // A record whose lookup id matches the presented key but whose digest does not: only the
    // layer's constant-time comparison can refuse it.
    struct CollidingStore(KeyRecord);
    #[async_trait::async_trait]
    impl KeyStore for CollidingStore {
        async fn find(
            &self,
            _lookup_id: &tower_api_key::LookupId,
        ) -> Result<Option<KeyRecord>, tower_api_key::StoreError> {
            Ok(Some(self.0.clone()))
        }
    }
    let stored = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::new("key_1"), "acct_1", "ci", Tier::FREE);
    let store = CollidingStore(KeyRecord::new(stored.digest(), identity));
    let presented = KeyFormat::default().generate();
    let answer = send(
        ApiKeyLayer::new(store),
        &[("x-api-key", presented.expose_secret().as_bytes())],
    )
    .await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn store_failure_is_503_and_never_reaches_the_service() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().as_bytes();
    let answer = send(ApiKeyLayer::new(FailingStore), &[("x-api-key", key)]).await;
    assert_envelope(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication_unavailable",
    );
    assert!(answer.headers.get("www-authenticate").is_none());
    let body = String::from_utf8(answer.body.to_vec()).unwrap();
    assert!(
        !body.contains("5432"),
        "backend details stay out of responses: {body}"
    );
}

#[tokio::test]
async fn generated_request_id_starts_with_req() {
    let answer = send(ApiKeyLayer::new(MemoryKeyStore::new()), &[]).await;
    assert!(answer.header("x-request-id").starts_with("req_"));
}

#[tokio::test]
async fn sane_incoming_request_id_is_reused() {
    let answer = send(
        ApiKeyLayer::new(MemoryKeyStore::new()),
        &[("x-request-id", b"trace-42")],
    )
    .await;
    assert_eq!(answer.header("x-request-id"), "trace-42");
    assert_eq!(answer.json()["error"]["request_id"], "trace-42");
}

#[tokio::test]
async fn insane_incoming_request_id_is_replaced() {
    let answer = send(
        ApiKeyLayer::new(MemoryKeyStore::new()),
        &[("x-request-id", b"<script>")],
    )
    .await;
    assert!(answer.json()["error"]["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
}

#[tokio::test]
async fn no_response_echoes_the_key() {
    let keys = Keys::new();
    let cases: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![("x-api-key", keys.revoked.expose_secret().into())],
        vec![("x-api-key", keys.unknown.expose_secret().into())],
        vec![(
            "x-api-key",
            format!("{}x", keys.active.expose_secret()).into(),
        )],
        vec![
            ("x-api-key", keys.active.expose_secret().into()),
            ("authorization", bearer(&keys.unknown)),
        ],
    ];
    for case in cases {
        let headers: Vec<(&str, &[u8])> = case.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let answer = send(ApiKeyLayer::new(keys.store.clone()), &headers).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        let everything = format!(
            "{:?}{}",
            answer.headers,
            String::from_utf8_lossy(&answer.body)
        );
        for key in [&keys.active, &keys.revoked, &keys.unknown] {
            let body = &key.expose_secret()["sk_live_".len()..];
            assert!(!everything.contains(body), "echoed a key: {everything}");
        }
    }
}

#[tokio::test]
async fn additional_prefix_is_accepted() {
    let store = MemoryKeyStore::new();
    // An additional prefix names live keys: `sk_test_` is the default format's test prefix.
    let key = KeyFormat::new("sk_old_").generate();
    let identity = KeyIdentity::new(KeyId::new("key_t"), "acct_1", "old", Tier::FREE);
    store.insert(KeyRecord::new(key.digest(), identity));
    let layer = ApiKeyLayer::new(store).key_format(KeyFormat::default().also_accept("sk_old_"));
    assert!(
        send(layer, &[("x-api-key", key.expose_secret().as_bytes())])
            .await
            .reached_inner_service()
    );
}

#[tokio::test]
async fn a_legacy_prefix_accepts_keys_of_another_shape() {
    let store = MemoryKeyStore::new();
    let legacy = "3f1c9a7e-legacy-key";
    let identity = KeyIdentity::new(KeyId::new("key_l"), "acct_1", "legacy", Tier::FREE);
    store.insert(KeyRecord::new(KeyDigest::of(legacy), identity));
    let strict = send(
        ApiKeyLayer::new(store.clone()),
        &[("x-api-key", legacy.as_bytes())],
    )
    .await;
    assert_eq!(strict.status, StatusCode::UNAUTHORIZED);
    let format = KeyFormat::default().legacy_prefix("", KeyMode::Live);
    let layer = ApiKeyLayer::new(store).key_format(format);
    assert!(send(layer, &[("x-api-key", legacy.as_bytes())])
        .await
        .reached_inner_service());
}

#[tokio::test]
async fn an_imported_legacy_key_authenticates_and_a_made_up_own_key_is_refused_unlooked_up() {
    use tower_api_key::manage::{ImportOutcome, ImportQuota, ImportedKey};
    use tower_api_key::{ApiKey, KeyManager};

    let memory = MemoryKeyStore::new();
    let format = KeyFormat::default().legacy_prefix("ak_", KeyMode::Live);
    let keys = KeyManager::new(memory.clone()).key_format(format.clone());
    let legacy = ApiKey::new("ak_9f8e7d6c5b4a3f2e1d0c");
    let imported = ImportedKey::key(
        legacy.clone(),
        KeyId::new("old_1"),
        "acct_1",
        Tier::FREE,
        "ci",
    );
    let outcomes = keys.import(vec![imported], ImportQuota::Respected).await;
    assert!(matches!(outcomes.unwrap()[..], [ImportOutcome::Imported]));

    let store = CountingStore::new(memory);
    let layer = ApiKeyLayer::new(store.clone()).key_format(format);
    let answer = send(
        layer.clone(),
        &[("x-api-key", legacy.expose_secret().as_bytes())],
    )
    .await;
    assert!(answer.reached_inner_service());
    assert_eq!(store.lookups(), 1);
    let made_up = format!("sk_live_{}", "a".repeat(38));
    let answer = send(layer, &[("x-api-key", made_up.as_bytes())]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(
        store.lookups(),
        1,
        "a bad checksum is refused before any lookup"
    );
}

#[tokio::test]
async fn custom_header_names_replace_the_defaults() {
    let keys = Keys::new();
    let layer = ApiKeyLayer::new(keys.store)
        .authorization_header(HeaderName::from_static("proxy-authorization"))
        .api_key_header(HeaderName::from_static("x-service-key"));
    let key = keys.active.expose_secret().as_bytes();
    let default_header = send(layer.clone(), &[("x-api-key", key)]).await;
    assert_eq!(default_header.error_code(), "missing_api_key");
    assert!(send(layer.clone(), &[("x-service-key", key)])
        .await
        .reached_inner_service());
    let proxy = bearer(&keys.active);
    assert!(send(layer, &[("proxy-authorization", &proxy)])
        .await
        .reached_inner_service());
}

#[tokio::test]
async fn switched_off_authorization_header_lets_a_gateway_jwt_through() {
    let keys = Keys::new();
    let layer = ApiKeyLayer::new(keys.store).authorization_header(None);
    let headers: &common::Headers<'_> = &[
        (
            "authorization",
            b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJnYXRld2F5In0.c2ln",
        ),
        ("x-api-key", keys.active.expose_secret().as_bytes()),
    ];
    assert!(send(layer.clone(), headers).await.reached_inner_service());
    let answer = send(layer, &headers[..1]).await;
    assert_eq!(
        answer.json()["error"]["message"],
        "API key is required. Include it in the X-API-Key header."
    );
}

#[test]
#[should_panic(expected = "at least one header")]
fn switching_off_both_headers_is_refused() {
    let _ = ApiKeyLayer::new(MemoryKeyStore::new())
        .authorization_header(None)
        .api_key_header(None);
}

#[tokio::test]
async fn error_response_hook_cannot_turn_a_refusal_into_a_success() {
    let layer = ApiKeyLayer::new(MemoryKeyStore::new())
        .error_response(|_: &Rejection| Response::new(Bytes::from_static(b"fine")));
    let answer = send(layer, &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body, "fine");
}

#[tokio::test]
async fn error_response_hook_replaces_the_body_and_keeps_protocol_headers() {
    let layer = ApiKeyLayer::new(MemoryKeyStore::new()).error_response(|rejection: &Rejection| {
        let body = format!("{}|{}", rejection.error().code(), rejection.request_id());
        Response::builder()
            .status(rejection.error().status())
            .header("content-type", "application/problem+json")
            .body(Bytes::from(body))
            .unwrap()
    });
    let answer = send(layer, &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.header("content-type"), "application/problem+json");
    assert_eq!(answer.header("cache-control"), "no-store");
    assert_eq!(answer.header("www-authenticate"), "Bearer");
    let request_id = answer.header("x-request-id").to_owned();
    assert_eq!(answer.body, format!("missing_api_key|{request_id}"));
}

#[tokio::test]
async fn credential_headers_are_sensitive_when_the_service_sees_them() {
    let keys = Keys::new();
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store))
        .service_fn(|request: Request<Full<Bytes>>| async move {
            let headers = request.headers();
            let sensitive = headers["authorization"].is_sensitive()
                && headers["x-api-key"].is_sensitive()
                && !headers["accept"].is_sensitive();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(sensitive.to_string()))))
        });
    let key = keys.active.expose_secret().as_bytes();
    let request = request(&[
        ("authorization", &bearer(&keys.active)),
        ("x-api-key", key),
        ("accept", b"*/*"),
    ]);
    let answer = Answer::read(service.oneshot(request).await.unwrap()).await;
    assert_eq!(answer.body, "true");
}

#[tokio::test]
async fn store_behind_arc_dyn_works() {
    let keys = Keys::new();
    let store: Arc<dyn KeyStore> = Arc::new(keys.store);
    let key = keys.active.expose_secret().as_bytes();
    assert!(send(ApiKeyLayer::new(store), &[("x-api-key", key)])
        .await
        .reached_inner_service());
}

/// An inner service that refuses to be called unless that very instance was polled ready, as
/// services with reserved capacity do (tower's `Buffer`, `ConcurrencyLimit`).
struct ReadyTracking {
    ready: bool,
}

impl Clone for ReadyTracking {
    fn clone(&self) -> Self {
        Self { ready: false }
    }
}

impl Service<Request<Full<Bytes>>> for ReadyTracking {
    type Response = Response<Full<Bytes>>;
    type Error = &'static str;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<Full<Bytes>>) -> Self::Future {
        let ready = std::mem::replace(&mut self.ready, false);
        std::future::ready(if ready {
            Ok(Response::new(Full::default()))
        } else {
            Err("called before ready")
        })
    }
}

#[tokio::test]
async fn calls_the_inner_service_that_was_made_ready() {
    let keys = Keys::new();
    let mut service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store))
        .service(ReadyTracking { ready: false });
    let key = keys.active.expose_secret().as_bytes();
    for _ in 0..2 {
        let ready = service.ready().await.unwrap();
        let response = ready.call(request(&[("x-api-key", key)])).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn inner_service_is_never_called_for_a_refused_request() {
    let keys = Keys::new();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store.clone()))
        .service(service_fn(move |request: Request<Full<Bytes>>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            echo_identity(request)
        }));
    for key in [&keys.revoked, &keys.expired, &keys.deleted, &keys.unknown] {
        let request = request(&[("x-api-key", key.expose_secret().as_bytes())]);
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A gRPC call (an HTTP/2 `POST` with a gRPC content type) with `headers`.
async fn send_grpc(layer: ApiKeyLayer, headers: &[(&str, &[u8])]) -> Answer {
    let mut request = request(headers);
    *request.method_mut() = http::Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    send_with_grpc_content_type(layer, request).await
}

async fn send_with_grpc_content_type(
    layer: ApiKeyLayer,
    mut request: Request<Full<Bytes>>,
) -> Answer {
    let service = ServiceBuilder::new().layer(layer).service_fn(echo_identity);
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Answer::read(service.oneshot(request).await.unwrap()).await
}

#[tokio::test]
async fn a_get_labelled_grpc_gets_the_http_refusal() {
    let keys = Keys::new();
    let answer = send_with_grpc_content_type(ApiKeyLayer::new(keys.store), request(&[])).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "missing_api_key");
    assert!(!answer.headers.contains_key("grpc-status"));
}

#[tokio::test]
async fn a_grpc_refusal_is_never_cached() {
    let answer = send_grpc(ApiKeyLayer::new(Keys::new().store), &[]).await;
    assert_eq!(answer.headers["grpc-status"], "16");
    assert_eq!(answer.headers["cache-control"], "no-store");
}

#[tokio::test]
async fn refusals_of_every_kind_carry_their_auth_error() {
    let keys = Keys::new();
    let active = keys.active.expose_secret().to_owned();
    let in_query = Request::get(format!("/api?api_key={active}"))
        .body(Full::default())
        .unwrap();
    let rendered = ApiKeyLayer::new(keys.store.clone())
        .error_response(|_: &Rejection| Response::new(Bytes::from_static(b"refused")));
    let failing = ApiKeyLayer::new(FailingStore);
    let cases: [(&str, ApiKeyLayer, Request<Full<Bytes>>, &str); 4] = [
        (
            "missing",
            ApiKeyLayer::new(keys.store.clone()),
            request(&[]),
            "missing_api_key",
        ),
        (
            "in the query",
            ApiKeyLayer::new(keys.store.clone()),
            in_query,
            "invalid_api_key",
        ),
        ("custom body", rendered, request(&[]), "missing_api_key"),
        (
            "store down",
            failing,
            request(&[("x-api-key", active.as_bytes())]),
            "authentication_unavailable",
        ),
    ];
    for (what, layer, request, code) in cases {
        let service = ServiceBuilder::new().layer(layer).service_fn(echo_identity);
        let response = service.oneshot(request).await.unwrap();
        let error = response.extensions().get::<tower_api_key::AuthError>();
        assert_eq!(error.map(|error| error.code()), Some(code), "{what}");
    }
}

#[tokio::test]
async fn every_refusal_carries_its_auth_error_in_the_response_extensions() {
    let keys = Keys::new();
    let revoked = keys.revoked.expose_secret().to_owned();
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store))
        .service_fn(echo_identity);
    let plain = request(&[("x-api-key", revoked.as_bytes())]);
    let mut grpc = request(&[("x-api-key", revoked.as_bytes())]);
    *grpc.method_mut() = http::Method::POST;
    *grpc.version_mut() = http::Version::HTTP_2;
    grpc.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    for request in [plain, grpc] {
        let response = service.clone().oneshot(request).await.unwrap();
        let error = response.extensions().get::<tower_api_key::AuthError>();
        assert!(
            matches!(error, Some(tower_api_key::AuthError::Expired)),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn grpc_call_without_key_gets_unauthenticated() {
    let answer = send_grpc(ApiKeyLayer::new(Keys::new().store), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "application/grpc");
    assert_eq!(answer.headers["grpc-status"], "16");
    let message = answer.headers["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("missing_api_key: API key is required."));
    assert!(answer.headers.contains_key("x-request-id"));
    assert!(answer.body.is_empty());
}

#[tokio::test]
async fn grpc_call_with_revoked_key_gets_unauthenticated_with_its_code() {
    let keys = Keys::new();
    let key = keys.revoked.expose_secret().as_bytes().to_vec();
    let answer = send_grpc(ApiKeyLayer::new(keys.store), &[("x-api-key", &key)]).await;
    assert_eq!(answer.headers["grpc-status"], "16");
    let message = answer.headers["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("expired_api_key: "));
}

#[tokio::test]
async fn grpc_call_during_store_failure_gets_unavailable() {
    let key = Keys::new().active.expose_secret().as_bytes().to_vec();
    let answer = send_grpc(ApiKeyLayer::new(FailingStore), &[("x-api-key", &key)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["grpc-status"], "14");
}

#[tokio::test]
async fn grpc_call_with_good_key_reaches_the_service() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().as_bytes().to_vec();
    let answer = send_grpc(ApiKeyLayer::new(keys.store), &[("x-api-key", &key)]).await;
    assert!(answer.reached_inner_service());
}

#[tokio::test]
async fn grpc_call_skips_the_error_response_hook() {
    let layer = ApiKeyLayer::new(Keys::new().store)
        .error_response(|_: &Rejection| Response::new(Bytes::from_static(b"custom")));
    let answer = send_grpc(layer, &[]).await;
    assert_eq!(answer.headers["grpc-status"], "16");
    assert!(answer.body.is_empty());
}
