//! Arbitrary headers and query strings through `ApiKeyLayer` over a `MemoryKeyStore`.
//!
//! The input is text: the first line is the query string (without `?`), every further line is
//! `name:value` (the value is every byte after the first `:`, untrimmed). Lines whose name or
//! value `http` refuses are dropped, as no server could hand them to the layer.
//!
//! Checked on every input: no panic, the answer is ready at the first poll (the memory store
//! answers synchronously), 200 only when a credential header carries the known key, otherwise
//! 401 (never a 5xx), and no key appears in the response unless the request sent it as its own
//! `X-Request-Id`, which the layer echoes by design.
#![no_main]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower::{Layer, Service};
use tower_api_key::{ApiKey, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier, key::KeyFormat, layer::ApiKeyAuth};

/// Active in the store. The seed corpus carries it, so the fuzzer starts next to the 200 path.
const KNOWN: &str = "sk_live_FuzzKnownKey0123456789abcdefABCD17PAiV";
/// Revoked in the store.
const REVOKED: &str = "sk_live_FuzzRevokedKey123456789abcdefABC0tPT9C";
/// Well formed, not in the store.
const UNKNOWN: &str = "sk_live_FuzzOtherKey0123456789abcdefABCD3CSuTn";

type Inner = tower::util::ServiceFn<
    fn(Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>,
>;

fn answer_ok(
    _request: Request<()>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

static SERVICE: LazyLock<ApiKeyAuth<Inner>> = LazyLock::new(|| {
    let format = KeyFormat::default();
    for key in [KNOWN, REVOKED, UNKNOWN] {
        assert!(format.is_well_formed(key), "fixture key {key} is malformed");
    }
    let store = MemoryKeyStore::new();
    let record = |id: &str, key: &str| {
        let identity = KeyIdentity::new(KeyId::new(id), "acct_fuzz", id, Tier::FREE);
        KeyRecord::new(ApiKey::new(key).digest(), identity)
    };
    store.insert(record("key_known", KNOWN));
    let revoked_at = SystemTime::now() - Duration::from_secs(60);
    store.insert(record("key_revoked", REVOKED).with_revoked_at(revoked_at));
    let inner: Inner = tower::service_fn(answer_ok as fn(_) -> _);
    ApiKeyLayer::new(store).layer(inner)
});

/// The request the input describes.
fn request(data: &[u8]) -> Request<()> {
    let mut lines = data.split(|&byte| byte == b'\n');
    let query = lines.next().unwrap_or_default();
    let mut path_and_query = b"/fuzz".to_vec();
    if !query.is_empty() {
        path_and_query.push(b'?');
        path_and_query.extend_from_slice(query);
    }
    let uri =
        http::Uri::try_from(path_and_query).unwrap_or_else(|_| http::Uri::from_static("/fuzz"));
    let mut request = Request::new(());
    *request.uri_mut() = uri;
    for line in lines {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            request.headers_mut().append(name, value);
        }
    }
    request
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fuzz_target!(|data: &[u8]| {
    let request = request(data);
    let credentials: Vec<Vec<u8>> = [AUTHORIZATION.as_str(), "x-api-key"]
        .into_iter()
        .flat_map(|name| request.headers().get_all(name))
        .map(|value| value.as_bytes().to_vec())
        .collect();
    let request_ids: Vec<Vec<u8>> = (request.headers().get_all("x-request-id").iter())
        .map(|value| value.as_bytes().to_vec())
        .collect();

    let mut cx = Context::from_waker(Waker::noop());
    let mut service = SERVICE.clone();
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut future = pin!(service.call(request));
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        panic!("the layer over a MemoryKeyStore must answer at the first poll");
    };

    let status = response.status();
    assert!(!status.is_server_error(), "answered {status}");
    if status == StatusCode::OK {
        assert!(
            credentials
                .iter()
                .any(|value| contains(value, KNOWN.as_bytes())),
            "200 without the known key"
        );
    } else {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    let (parts, body) = response.into_parts();
    let mut body = pin!(body);
    let mut bytes = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Pending => panic!("the response body must be ready"),
        }
    }
    for key in [KNOWN, REVOKED, UNKNOWN] {
        // The random part alone is as secret as the whole key.
        let secret = &key.as_bytes()["sk_live_".len()..];
        if request_ids.iter().any(|id| contains(id, secret)) {
            continue;
        }
        assert!(!contains(&bytes, secret), "the body echoes a key");
        for value in parts.headers.values() {
            assert!(!contains(value.as_bytes(), secret), "a header echoes a key");
        }
    }
});
