//! Secret hygiene: keys flow through every path (success, each refusal, a store failure, a key
//! in the query string, the whole lifecycle, every store) while all `tracing` output is
//! captured at TRACE level; then no answer, no log line, no event or span field, and no `Debug`
//! of a type that holds or sees a key may contain any key used, its body (what follows the
//! prefix), its digest in hexadecimal (either case) or its lookup id in hexadecimal.
//!
//! One subscriber captures the whole test binary, so each test checks the whole log against
//! every secret registered so far: the last test to finish has checked everything.
//!
//! ```text
//! cargo test --test logs secret_hygiene::
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo test --all-features --test logs secret_hygiene::
//! ```

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{request, Answer, FailingStore};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    clock::ManualClock,
    key::{KeyDigest, KeyFormat},
    response::Rejection,
    store::WritableKeyStore,
    ApiKey, ApiKeyLayer, KeyIdentity, KeyManager, KeyStore, MemoryKeyStore, NewKey, Tier,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// A failed test must not hide what the others find: a poisoned lock still holds its data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything `tracing` recorded in this test binary: the formatted log, and each event's and
/// span's fields one by one.
pub(crate) struct Capture {
    text: Arc<Mutex<Vec<u8>>>,
    records: Arc<Mutex<Vec<Captured>>>,
}

/// One event, or the fields given to a span.
#[derive(Clone, Debug)]
struct Captured {
    level: tracing::Level,
    target: String,
    fields: BTreeMap<String, String>,
}

static CAPTURE: LazyLock<Capture> = LazyLock::new(|| {
    let capture = Capture {
        text: Arc::default(),
        records: Arc::default(),
    };
    let text = Arc::clone(&capture.text);
    let formatted = tracing_subscriber::fmt::layer()
        .with_writer(move || SharedWriter(Arc::clone(&text)))
        .with_span_events(FmtSpan::FULL);
    let subscriber = tracing_subscriber::registry()
        .with(formatted)
        .with(Recorder(Arc::clone(&capture.records)));
    tracing::subscriber::set_global_default(subscriber)
        .expect("no other subscriber is set in this test binary");
    capture
});

/// Installs the capture (once for the binary) before a test's first event.
pub(crate) fn capture() -> &'static Capture {
    &CAPTURE
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Records every event and every span's fields, whatever their level.
struct Recorder(Arc<Mutex<Vec<Captured>>>);

impl Recorder {
    fn push(&self, metadata: &tracing::Metadata<'_>, record: impl FnOnce(&mut Fields)) {
        let mut fields = Fields::default();
        record(&mut fields);
        lock(&self.0).push(Captured {
            level: *metadata.level(),
            target: metadata.target().to_owned(),
            fields: fields.0,
        });
    }
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'lookup> tracing_subscriber::registry::LookupSpan<'lookup>,
{
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        self.push(event.metadata(), |fields| event.record(fields));
    }

    fn on_new_span(&self, attributes: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        self.push(attributes.metadata(), |fields| attributes.record(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        if let Some(metadata) = context.metadata(id) {
            self.push(metadata, |fields| values.record(fields));
        }
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = format!("{value} / {value:?}");
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(&format!(" / {cause} / {cause:?}"));
            source = cause.source();
        }
        self.0.insert(field.name().to_owned(), text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Capture {
    fn records(&self) -> Vec<Captured> {
        lock(&self.records).clone()
    }
}

/// Every secret form of `key`: the key, its body, its digest and its lookup id in hex.
fn secret_forms(key: &str) -> Vec<String> {
    let hex = KeyDigest::of(key).to_hex();
    let body = ["sk_live_", "sk_test_"]
        .iter()
        .find_map(|prefix| key.strip_prefix(prefix))
        .unwrap_or(key);
    // Short forms would match by chance; every key the tests use has a long body.
    assert!(body.len() >= 16, "test keys have long bodies: {key}");
    vec![
        key.to_owned(),
        body.to_owned(),
        hex.to_uppercase(),
        hex[..32].to_owned(),
        hex[..32].to_uppercase(),
        hex,
    ]
}

/// The secrets a test used, and the texts it collected (answers, `Debug` output), each with
/// what it is.
#[derive(Default)]
struct Seen {
    secrets: BTreeSet<String>,
    texts: Vec<(String, String)>,
}

impl Seen {
    /// Registers `key`, sent or stored by the test, as a secret.
    fn secret(&mut self, key: &str) {
        self.secrets.extend(secret_forms(key));
    }

    fn text(&mut self, what: &str, text: String) {
        self.texts.push((what.to_owned(), text));
    }

    fn debug(&mut self, what: &str, value: &dyn Debug) {
        self.text(what, format!("{value:?}"));
        self.text(&format!("{what} (alternate)"), format!("{value:#?}"));
    }

    fn answer(&mut self, what: &str, answer: &Answer) {
        let text = format!(
            "{} {:?} {}",
            answer.status,
            answer.headers,
            String::from_utf8_lossy(&answer.body)
        );
        self.text(&format!("the answer to {what}"), text);
    }

    /// Asserts that nothing seen and nothing logged by the whole binary holds a secret of
    /// this test.
    fn assert_clean(&self) {
        assert!(!self.secrets.is_empty(), "the test registered its keys");
        for (what, text) in &self.texts {
            self.assert_no_secret(what, text);
        }
        let capture = capture();
        let log = String::from_utf8_lossy(&lock(&capture.text)).into_owned();
        self.assert_no_secret("the formatted log", &log);
        for record in capture.records() {
            self.assert_no_secret("a captured event or span", &format!("{record:?}"));
        }
    }

    fn assert_no_secret(&self, what: &str, text: &str) {
        for secret in &self.secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} holds the secret {secret:?}: {text}"
            );
        }
    }
}

/// The keys of every state a store tells apart.
struct PathKeys {
    active: ApiKey,
    revoked: ApiKey,
    expired: ApiKey,
    deleted: ApiKey,
    unknown: ApiKey,
    test_mode: ApiKey,
}

fn account() -> String {
    format!("acct_{}", uuid::Uuid::new_v4().simple())
}

/// Creates a key of each state through `keys`, registering each as a secret.
async fn path_keys<S: WritableKeyStore + Clone>(
    keys: &KeyManager<S>,
    clock: &ManualClock,
    seen: &mut Seen,
) -> PathKeys {
    let account = account();
    let create = |new: NewKey| {
        let keys = keys.clone();
        async move { keys.create(new).await.unwrap() }
    };
    let new = || NewKey::new(&account, Tier::PRO, "hygiene").metadata(serde_json::json!({"n": 1}));
    let expired = create(new().expires_in(Duration::from_secs(60))).await;
    let active = create(new()).await;
    let revoked = create(new()).await;
    let deleted = create(new()).await;
    let test_mode = create(new().mode(tower_api_key::access::KeyMode::Test)).await;
    keys.revoke(&account, &revoked.info.id).await.unwrap();
    keys.delete(&account, &deleted.info.id).await.unwrap();
    clock.advance(Duration::from_secs(61));
    let unknown = KeyFormat::default().generate();
    seen.secret(unknown.expose_secret());
    for created in [&expired, &active, &revoked, &deleted, &test_mode] {
        seen.secret(created.key.expose_secret());
        seen.debug("a created key", created);
        seen.debug("a created key's info", &created.info);
        seen.debug("a created key's ApiKey", &created.key);
        seen.debug("a created key's digest", &created.key.digest());
        seen.debug(
            "a created key's lookup id",
            &created.key.digest().lookup_id(),
        );
        let json = serde_json::to_string(&created.info).unwrap();
        seen.text("a created key's info as JSON", json);
        let found = keys.store().find(&created.key.digest().lookup_id()).await;
        seen.debug("a stored record", &found);
        if let Ok(Some(record)) = found {
            seen.debug("a stored identity", &record.identity);
        }
    }
    let listed = keys.list(&account).await.unwrap();
    seen.debug("a listing", &listed);
    seen.text("a listing as JSON", serde_json::to_string(&listed).unwrap());
    PathKeys {
        active: active.key,
        revoked: revoked.key,
        expired: expired.key,
        deleted: deleted.key,
        unknown,
        test_mode: test_mode.key,
    }
}

/// The layer's service over an inner service that notes the `Debug` of every request it gets,
/// and checks that the credential headers reached it marked sensitive.
async fn call(layer: &ApiKeyLayer, request: Request<Full<Bytes>>, seen: &mut Seen) -> Answer {
    let reached = Arc::new(Mutex::new(Vec::new()));
    let noted = Arc::clone(&reached);
    let service = ServiceBuilder::new().layer(layer.clone()).service_fn(
        move |request: Request<Full<Bytes>>| {
            let noted = Arc::clone(&noted);
            async move {
                for name in ["authorization", "x-api-key"] {
                    for value in request.headers().get_all(name) {
                        assert!(value.is_sensitive(), "{name} reached the service unmarked");
                    }
                }
                noted.lock().unwrap().push(format!("{request:?}"));
                let identity = request.extensions().get::<KeyIdentity>().cloned();
                let body = serde_json::json!({ "identity": identity }).to_string();
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
            }
        },
    );
    seen.debug("the layered service", &service);
    let answer = Answer::read(service.oneshot(request).await.unwrap()).await;
    for request in reached.lock().unwrap().iter() {
        seen.text("a request the service got", request.clone());
    }
    answer
}

/// A layer over `store` that also notes the `Debug` of every rejection and its error.
fn noting_layer(layer: ApiKeyLayer, rejections: &Arc<Mutex<Vec<String>>>) -> ApiKeyLayer {
    let rejections = Arc::clone(rejections);
    layer.error_response(move |rejection: &Rejection| {
        let mut noted = rejections.lock().unwrap();
        noted.push(format!(
            "{rejection:?} {:?} {}",
            rejection.error(),
            rejection.error()
        ));
        noted.push(format!("{rejection:#?}"));
        rejection.to_json_response()
    })
}

/// Header names and values of a request.
type HeaderValues = Vec<(&'static str, String)>;

/// Sends a request of every kind through `layer`: each answer must be the documented one.
async fn every_path(layer: ApiKeyLayer, keys: &PathKeys, seen: &mut Seen) {
    let rejections = Arc::new(Mutex::new(Vec::new()));
    let layer = noting_layer(layer, &rejections);
    seen.debug("the layer", &layer);
    let secret_of = |key: &ApiKey| key.expose_secret().to_owned();
    let malformed = [
        "sk_live_Malformed-Key-With-Dashes-0123456789".to_owned(),
        "sk_live_Malformed Key With Spaces 0123456789".to_owned(),
        format!("sk_live_{}", "TooLong".repeat(50)),
        format!(
            "pk_live_{}",
            &secret_of(&KeyFormat::default().generate())[8..]
        ),
    ];
    let bad_checksum = {
        let key = secret_of(&keys.active);
        let (head, last) = key.split_at(key.len() - 1);
        format!("{head}{}", if last == "a" { "b" } else { "a" })
    };
    for key in malformed.iter().chain([&bad_checksum]) {
        seen.secret(key);
    }
    let bearer = |key: &ApiKey| format!("Bearer {}", key.expose_secret());
    let unauthorized = StatusCode::UNAUTHORIZED;
    let cases: Vec<(&str, HeaderValues, StatusCode)> = vec![
        (
            "an active key in X-API-Key",
            vec![("x-api-key", secret_of(&keys.active))],
            StatusCode::OK,
        ),
        (
            "an active key as Bearer",
            vec![("authorization", bearer(&keys.active))],
            StatusCode::OK,
        ),
        (
            "an active key in both headers",
            vec![
                ("authorization", bearer(&keys.active)),
                ("x-api-key", secret_of(&keys.active)),
            ],
            StatusCode::OK,
        ),
        (
            "a test-mode key",
            vec![("x-api-key", secret_of(&keys.test_mode))],
            StatusCode::OK,
        ),
        (
            "an active key with a request id",
            vec![
                ("x-api-key", secret_of(&keys.active)),
                ("x-request-id", "trace-1".to_owned()),
            ],
            StatusCode::OK,
        ),
        ("no key", vec![], unauthorized),
        (
            "a malformed key",
            vec![("x-api-key", malformed[0].clone())],
            unauthorized,
        ),
        (
            "a key with spaces",
            vec![("x-api-key", malformed[1].clone())],
            unauthorized,
        ),
        (
            "an over-long key",
            vec![("authorization", format!("Bearer {}", malformed[2]))],
            unauthorized,
        ),
        (
            "a key of another prefix",
            vec![("x-api-key", malformed[3].clone())],
            unauthorized,
        ),
        (
            "a bad checksum",
            vec![("x-api-key", bad_checksum.clone())],
            unauthorized,
        ),
        (
            "an unknown key",
            vec![("x-api-key", secret_of(&keys.unknown))],
            unauthorized,
        ),
        (
            "a deleted key",
            vec![("authorization", bearer(&keys.deleted))],
            unauthorized,
        ),
        (
            "a revoked key",
            vec![("x-api-key", secret_of(&keys.revoked))],
            unauthorized,
        ),
        (
            "an expired key",
            vec![("authorization", bearer(&keys.expired))],
            unauthorized,
        ),
        (
            "two different keys",
            vec![
                ("x-api-key", secret_of(&keys.active)),
                ("authorization", bearer(&keys.unknown)),
            ],
            unauthorized,
        ),
        (
            "a repeated header with two keys",
            vec![
                ("x-api-key", secret_of(&keys.active)),
                ("x-api-key", secret_of(&keys.revoked)),
            ],
            unauthorized,
        ),
        (
            "a gRPC call with a revoked key",
            vec![
                ("content-type", "application/grpc".to_owned()),
                ("te", "trailers".to_owned()),
                ("x-api-key", secret_of(&keys.revoked)),
            ],
            StatusCode::OK, // gRPC answers its errors with HTTP 200 and a grpc-status
        ),
    ];
    for (what, headers, status) in cases {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        let mut request = request(&headers);
        if what.starts_with("a gRPC call") {
            *request.method_mut() = http::Method::POST;
        }
        let answer = call(&layer, request, seen).await;
        assert_eq!(answer.status, status, "{what}");
        seen.answer(what, &answer);
    }
    for rejection in rejections.lock().unwrap().iter() {
        seen.text("a rejection and its error", rejection.clone());
    }
}

/// The lifecycle's answers and errors that are not keys: rotation, refusals, deletion.
async fn lifecycle_rest<S: WritableKeyStore + Clone>(keys: &KeyManager<S>, seen: &mut Seen) {
    let account = account();
    let created = keys
        .create(NewKey::new(&account, Tier::FREE, "rotated"))
        .await
        .unwrap();
    seen.secret(created.key.expose_secret());
    let rotated = keys
        .rotate(&account, &created.info.id, Duration::from_secs(60))
        .await
        .unwrap();
    seen.secret(rotated.key.expose_secret());
    seen.debug("a rotation's new key", &rotated);
    for name in ["a", "b"] {
        let created = keys.create(NewKey::new(&account, Tier::FREE, name)).await;
        if let Ok(created) = &created {
            seen.secret(created.key.expose_secret());
        }
        seen.debug("a create near the quota", &created);
    }
    let refused = keys
        .create(NewKey::new(&account, Tier::FREE, "one too many"))
        .await;
    seen.debug("a create over the quota", &refused);
    let blank = keys.create(NewKey::new(&account, Tier::FREE, "  ")).await;
    seen.debug("a create with a blank name", &blank);
    seen.debug(
        "a revocation",
        &keys.revoke(&account, &rotated.info.id).await,
    );
    seen.debug("a deletion", &keys.delete(&account, &created.info.id).await);
    seen.debug("a listing", &keys.list(&account).await);
    seen.debug("the manager", keys);
    seen.debug(
        "the new key request",
        &NewKey::new(&account, Tier::PRO, "n"),
    );
}

/// Every path and the whole lifecycle through `keys`'s store.
async fn check_store<S: WritableKeyStore + Clone + Debug>(store: S) {
    capture();
    let clock = common::suite::clock();
    let keys = KeyManager::new(store).clock(clock.clone());
    let mut seen = Seen::default();
    let path_keys = path_keys(&keys, &clock, &mut seen).await;
    every_path(keys.layer(), &path_keys, &mut seen).await;
    lifecycle_rest(&keys, &mut seen).await;
    seen.debug("the store", keys.store());
    seen.assert_clean();
    let records = capture().records();
    assert!(
        records
            .iter()
            .any(|record| record.target.starts_with("tower_api_key")
                && record
                    .fields
                    .get("outcome")
                    .is_some_and(|o| o == "accepted")),
        "the capture holds the layer's events at debug level"
    );
}

#[tokio::test]
async fn memory_store_paths_and_lifecycle_leak_no_key() {
    check_store(MemoryKeyStore::new()).await;
}

#[cfg(feature = "cache")]
#[tokio::test]
async fn cached_store_paths_and_lifecycle_leak_no_key() {
    check_store(tower_api_key::store::CachedKeyStore::new(
        MemoryKeyStore::new(),
    ))
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_paths_and_lifecycle_leak_no_key() {
    let store = backends::postgres().await;
    check_store(store.clone()).await;
    #[cfg(feature = "cache")]
    check_store(tower_api_key::store::CachedKeyStore::new(store)).await;
    let records = capture().records();
    assert!(
        records
            .iter()
            .any(|record| record.target.starts_with("sqlx")),
        "the capture holds sqlx's own events, so they were checked too"
    );
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_paths_and_lifecycle_leak_no_key() {
    let store = backends::redis().await;
    check_store(store.clone()).await;
    #[cfg(feature = "cache")]
    check_store(tower_api_key::store::CachedKeyStore::new(store)).await;
}

/// A store failure answers 503 and logs an error event with its cause, and neither holds the
/// key.
async fn check_failure(store: impl KeyStore + Debug) {
    capture();
    let key = KeyFormat::default().generate();
    let mut seen = Seen::default();
    seen.secret(key.expose_secret());
    seen.debug("the failing store", &store);
    let rejections = Arc::new(Mutex::new(Vec::new()));
    let layer = noting_layer(ApiKeyLayer::new(store), &rejections);
    let request_id = format!("req-hygiene-{}", uuid::Uuid::new_v4().simple());
    let request = request(&[
        ("x-api-key", key.expose_secret().as_bytes()),
        ("x-request-id", request_id.as_bytes()),
    ]);
    let answer = call(&layer, request, &mut seen).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    seen.answer("a key while the store fails", &answer);
    for rejection in rejections.lock().unwrap().iter() {
        seen.text("the rejection", rejection.clone());
    }
    let logged = capture().records().into_iter().any(|record| {
        record.level == tracing::Level::ERROR
            && record.fields.get("request_id") == Some(&request_id)
            && record.fields.contains_key("error")
    });
    assert!(
        logged,
        "the failure is logged at error level with its cause"
    );
    seen.assert_clean();
}

/// The common failing store, which has no `Debug` of its own.
struct FailingStoreDebug;

impl Debug for FailingStoreDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailingStore")
    }
}

#[async_trait::async_trait]
impl KeyStore for FailingStoreDebug {
    async fn find(
        &self,
        lookup_id: &tower_api_key::LookupId,
    ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
        FailingStore.find(lookup_id).await
    }
}

#[tokio::test]
async fn store_failure_leaks_no_key() {
    check_failure(FailingStoreDebug).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_leaks_no_key() {
    check_failure(backends::unreachable_postgres().await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_leaks_no_key() {
    check_failure(backends::unreachable_redis().await).await;
}

/// The parameters the layer knows carry keys.
const CREDENTIAL_PARAMETERS: [&str; 5] =
    ["access_token", "api_key", "apikey", "api-key", "x-api-key"];

/// Sends `key` in the query string as `parameter`, and returns the warning it caused.
async fn send_in_query(parameter: &str, query: &str, seen: &mut Seen) -> Captured {
    let request_id = format!("req-query-{}", uuid::Uuid::new_v4().simple());
    let request = Request::builder()
        .uri(format!("/api/v1/iocs?{query}"))
        .header("x-request-id", &request_id)
        .body(Full::default())
        .unwrap();
    let answer = call(&ApiKeyLayer::new(MemoryKeyStore::new()), request, seen).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{query}");
    assert_eq!(answer.error_code(), "invalid_api_key", "{query}");
    seen.answer(&format!("a key in the query as {parameter}"), &answer);
    let warnings: Vec<_> = capture()
        .records()
        .into_iter()
        .filter(|record| {
            record.level == tracing::Level::WARN
                && record.fields.get("request_id") == Some(&request_id)
        })
        .collect();
    assert_eq!(warnings.len(), 1, "one warning for {query}: {warnings:?}");
    warnings.into_iter().next().unwrap()
}

#[tokio::test]
async fn key_in_query_string_is_refused_with_a_warning_that_names_only_the_parameter() {
    capture();
    let mut seen = Seen::default();
    let parameters = CREDENTIAL_PARAMETERS.iter().copied().chain(["q"]);
    for parameter in parameters {
        let key = KeyFormat::default().generate();
        seen.secret(key.expose_secret());
        let query = format!("type=ipv4&{parameter}={}&limit=10", key.expose_secret());
        let warning = send_in_query(parameter, &query, &mut seen).await;
        assert_eq!(
            warning.fields.get("parameter").map(String::as_str),
            Some(parameter),
            "{warning:?}"
        );
    }
    seen.assert_clean();
}

#[tokio::test]
async fn key_in_query_string_beside_a_good_header_is_refused_too() {
    capture();
    let mut seen = Seen::default();
    let keys = common::Keys::new();
    for key in [&keys.active, &keys.unknown] {
        seen.secret(key.expose_secret());
    }
    let request = Request::builder()
        .uri(format!(
            "/api/v1/iocs?api_key={}",
            keys.unknown.expose_secret()
        ))
        .header("x-api-key", keys.active.expose_secret())
        .body(Full::default())
        .unwrap();
    let answer = call(&ApiKeyLayer::new(keys.store.clone()), request, &mut seen).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error_code(), "invalid_api_key");
    seen.answer("a key in the query beside a good header", &answer);
    seen.assert_clean();
}

#[tokio::test]
async fn key_hidden_in_a_query_parameter_name_is_not_logged() {
    capture();
    let mut seen = Seen::default();
    let (named, valued) = (
        KeyFormat::default().generate(),
        KeyFormat::default().generate(),
    );
    seen.secret(named.expose_secret());
    seen.secret(valued.expose_secret());
    let query = format!(
        "{}={}",
        format_args!("note_{}", named.expose_secret()),
        valued.expose_secret()
    );
    send_in_query("a name holding a key", &query, &mut seen).await;
    seen.assert_clean();
}

#[test]
fn debug_of_key_types_is_redacted() {
    capture();
    let format = KeyFormat::default();
    let key = format.generate();
    let mut seen = Seen::default();
    seen.secret(key.expose_secret());
    let digest = key.digest();
    let identity = KeyIdentity::new(tower_api_key::KeyId::random(), "acct_1", "ci", Tier::FREE);
    let record =
        tower_api_key::KeyRecord::new(digest, identity.clone()).with_hint("sk_live_...abcd");
    let store = MemoryKeyStore::new();
    store.insert(record.clone());
    seen.debug("an ApiKey", &key);
    seen.debug(
        "an ApiKey made from text",
        &ApiKey::new(key.expose_secret()),
    );
    seen.debug("a KeyDigest", &digest);
    seen.debug(
        "a KeyDigest from bytes",
        &KeyDigest::from_bytes(*digest.as_bytes()),
    );
    seen.debug("a LookupId", &digest.lookup_id());
    seen.debug("a KeyRecord", &record);
    seen.debug("a KeyIdentity", &identity);
    seen.debug("a MemoryKeyStore holding the key", &store);
    seen.debug("a layer over it", &ApiKeyLayer::new(store.clone()));
    seen.debug("a KeyManager over it", &KeyManager::new(store));
    seen.debug("the key format", &format);
    let mut headers = http::HeaderMap::new();
    let mut value = http::HeaderValue::from_str(key.expose_secret()).unwrap();
    value.set_sensitive(true);
    headers.insert("x-api-key", value);
    seen.debug("headers marked sensitive", &headers);
    seen.assert_clean();
}

/// The shared backends, from `DATABASE_URL` and `REDIS_URL`; a test fails if they are unset or
/// unreachable.
#[cfg(any(feature = "postgres", feature = "redis"))]
mod backends {
    use std::time::Duration;

    #[cfg(feature = "postgres")]
    fn pool(options: sqlx::postgres::PgConnectOptions) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options)
    }

    #[cfg(feature = "postgres")]
    fn pg_options() -> sqlx::postgres::PgConnectOptions {
        let url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL is not set: this test needs a PostgreSQL server");
        url.parse().expect("DATABASE_URL is a PostgreSQL URL")
    }

    #[cfg(feature = "postgres")]
    pub async fn postgres() -> tower_api_key::store::PgKeyStore {
        let table = format!("api_keys_{}", uuid::Uuid::new_v4().simple());
        let store = tower_api_key::store::PgKeyStore::new(pool(pg_options())).table(&table);
        store
            .migrate()
            .await
            .expect("the PostgreSQL at DATABASE_URL is reachable");
        store
    }

    #[cfg(feature = "postgres")]
    pub async fn unreachable_postgres() -> tower_api_key::store::PgKeyStore {
        let closed = super::common::proxy::closed_port().await;
        let options = pg_options().host("127.0.0.1").port(closed.port());
        tower_api_key::store::PgKeyStore::new(pool(options)).timeout(Duration::from_millis(500))
    }

    #[cfg(feature = "redis")]
    fn redis_client(address: Option<std::net::SocketAddr>) -> redis::Client {
        let url = std::env::var("REDIS_URL").expect("REDIS_URL is not set: this test needs Redis");
        let url = match address {
            Some(address) => format!("redis://{address}"),
            None => url,
        };
        redis::Client::open(url).expect("REDIS_URL is a Redis URL")
    }

    #[cfg(feature = "redis")]
    pub async fn redis() -> tower_api_key::store::RedisKeyStore {
        let connection = redis::aio::ConnectionManager::new(redis_client(None))
            .await
            .expect("the Redis at REDIS_URL is reachable");
        let prefix = format!("tower-api-key-hygiene-{}", uuid::Uuid::new_v4().simple());
        tower_api_key::store::RedisKeyStore::new(connection).prefix(prefix)
    }

    #[cfg(feature = "redis")]
    pub async fn unreachable_redis() -> tower_api_key::store::RedisKeyStore {
        let closed = super::common::proxy::closed_port().await;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(200)))
            .set_number_of_retries(1);
        let connection =
            redis::aio::ConnectionManager::new_lazy_with_config(redis_client(Some(closed)), config)
                .unwrap();
        tower_api_key::store::RedisKeyStore::new(connection).timeout(Duration::from_millis(500))
    }
}
