//! Fixtures shared by the integration tests.
#![allow(dead_code)] // Each test crate uses a different part of the fixtures.

pub mod faulty;
pub mod proxy;
pub mod suite;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_api_key::{
    key::KeyFormat, ApiKey, KeyId, KeyIdentity, KeyRecord, KeyStore, LookupId, MemoryKeyStore,
    StoreError, Tier,
};

/// A store with one key in each state the layer tells apart.
pub struct Keys {
    pub store: MemoryKeyStore,
    pub active: ApiKey,
    pub revoked: ApiKey,
    pub expired: ApiKey,
    pub deleted: ApiKey,
    /// Well-formed, checksum right, never stored.
    pub unknown: ApiKey,
}

impl Keys {
    pub fn new() -> Self {
        let store = MemoryKeyStore::new();
        let format = KeyFormat::default();
        let now = SystemTime::now();
        let add = |name: &str, customize: fn(KeyRecord, SystemTime) -> KeyRecord| {
            let key = format.generate();
            let identity = KeyIdentity::new(
                KeyId::new(format!("key_{name}")),
                "acct_1",
                name,
                Tier::FREE,
            )
            .with_metadata(serde_json::json!({"role": "reader"}));
            store.insert(customize(KeyRecord::new(key.digest(), identity), now));
            key
        };
        let active = add("active", |record, _| record);
        let revoked = add("revoked", |record, now| record.with_revoked_at(now));
        let expired = add("expired", |record, now| {
            record.with_expires_at(now - Duration::from_secs(1))
        });
        let deleted = add("deleted", |record, _| record);
        store.remove(&KeyId::new("key_deleted"));
        Self {
            store,
            active,
            revoked,
            expired,
            deleted,
            unknown: format.generate(),
        }
    }
}

/// Counts lookups, to prove that some requests never reach the store.
#[derive(Clone)]
pub struct CountingStore {
    pub inner: MemoryKeyStore,
    pub lookups: Arc<AtomicUsize>,
}

impl CountingStore {
    pub fn new(inner: MemoryKeyStore) -> Self {
        Self {
            inner,
            lookups: Arc::default(),
        }
    }

    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KeyStore for CountingStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find(lookup_id).await
    }
}

/// A store whose backend is down.
pub struct FailingStore;

#[async_trait]
impl KeyStore for FailingStore {
    async fn find(&self, _lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::new("connection refused by 127.0.0.1:5432"))
    }
}

/// What the inner service saw of a request that reached it.
pub const REACHED: &str = "reached";

/// An inner service that answers 200 with the identity it was handed, as JSON.
pub async fn echo_identity(
    request: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let identity = request.extensions().get::<KeyIdentity>();
    let body = serde_json::json!({ REACHED: true, "identity": identity });
    Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
}

/// Header names and raw values, in the order they are sent.
pub type Headers<'a> = [(&'a str, &'a [u8])];

/// What a layer over `store` answers to a request with `key`: `"ok"`, or the error code.
pub async fn verdict_through(
    store: impl tower_api_key::KeyStore,
    key: &tower_api_key::ApiKey,
) -> String {
    use tower::{ServiceBuilder, ServiceExt};
    let service = ServiceBuilder::new()
        .layer(tower_api_key::ApiKeyLayer::new(store))
        .service_fn(echo_identity);
    let request = request(&[("x-api-key", key.expose_secret().as_bytes())]);
    let answer = Answer::read(service.oneshot(request).await.unwrap()).await;
    match answer.status {
        StatusCode::OK => "ok".to_owned(),
        _ => answer.error_code(),
    }
}

/// A request to `/api/v1/iocs` with the given headers.
pub fn request(headers: &Headers<'_>) -> Request<Full<Bytes>> {
    let mut request = Request::builder().uri("/api/v1/iocs?type=ipv4");
    for (name, value) in headers {
        request = request.header(*name, http::HeaderValue::from_bytes(value).unwrap());
    }
    request.body(Full::default()).unwrap()
}

/// Sends one HTTP/1.1 request to a server on `address` (a loopback address) and reads the answer.
pub async fn http(
    address: std::net::SocketAddr,
    method: http::Method,
    path: &str,
    headers: &Headers<'_>,
    body: &str,
) -> Answer {
    assert!(address.ip().is_loopback(), "tests only talk to loopback");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, http::HeaderValue::from_bytes(value).unwrap());
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    Answer::read(client.request(request).await.unwrap()).await
}

/// A response, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub async fn read<B>(response: Response<B>) -> Self
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    pub fn reached_inner_service(&self) -> bool {
        self.status == StatusCode::OK && self.json()[REACHED] == true
    }
}

/// Asserts the envelope's exact shape and headers for a refusal.
pub fn assert_envelope(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status);
    assert_eq!(answer.header("content-type"), "application/json");
    assert_eq!(answer.header("cache-control"), "no-store");
    let json = answer.json();
    let error = json["error"].as_object().unwrap();
    assert_eq!(
        json.as_object().unwrap().len(),
        1,
        "only an `error` member: {json}"
    );
    assert_eq!(error.len(), 3, "only code, message and request_id: {json}");
    assert_eq!(error["code"], code);
    assert!(!error["message"].as_str().unwrap().is_empty());
    let request_id = error["request_id"].as_str().unwrap();
    assert_eq!(answer.header("x-request-id"), request_id);
}

/// The `X-API-Key` header carrying `key`.
pub fn with_key(key: &ApiKey) -> Vec<(&'static str, &[u8])> {
    vec![("x-api-key", key.expose_secret().as_bytes())]
}

/// What `service` answers, through `oneshot`, to a request with `headers`.
pub async fn send<S, B>(service: S, headers: &Headers<'_>) -> Answer
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    Answer::read(service.oneshot(request(headers)).await.unwrap()).await
}
