//! The failed-attempts limiter of `examples/failed_attempts.rs`, over real HTTP on loopback.
//!
//! Each client is a loopback address of its own (127.0.0.1, 127.0.0.2), bound as the client
//! socket's local address, so the server tells them apart by `ConnectInfo` as it would real
//! clients. Time is governor's `FakeRelativeClock`: nothing sleeps.
#![cfg(feature = "axum")]

#[allow(dead_code)] // The example's `main` is not called here.
#[path = "../../examples/failed_attempts.rs"]
mod example;

use crate::common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{assert_envelope, Answer};
use example::{client_of, FailedAttempts};
use governor::clock::FakeRelativeClock;
use governor::Quota;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_api_key::{key::KeyFormat, ApiKey, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier};

/// Failures allowed in a burst; then one more every `REFILL`.
const BURST: u32 = 3;
const REFILL: Duration = Duration::from_secs(20);

const FIRST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SECOND: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

struct Server {
    address: SocketAddr,
    clock: FakeRelativeClock,
    key: ApiKey,
}

impl Server {
    async fn start() -> Self {
        let store = MemoryKeyStore::new();
        let key = KeyFormat::default().generate();
        let identity = KeyIdentity::new(KeyId::random(), "acct_1", "ci", Tier::FREE);
        store.insert(KeyRecord::new(key.digest(), identity));

        let clock = FakeRelativeClock::default();
        let burst = NonZeroU32::new(BURST).unwrap();
        let quota = Quota::with_period(REFILL).unwrap().allow_burst(burst);
        let attempts = Arc::new(FailedAttempts::new(quota, clock.clone()));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = example::app(store, attempts);
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
        Self {
            address,
            clock,
            key,
        }
    }

    /// `GET /api/whoami` from the loopback address `from`, with `headers`.
    async fn whoami(&self, from: IpAddr, headers: &[(&str, &str)]) -> Answer {
        assert!(from.is_loopback(), "tests only talk over loopback");
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(from));
        let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
        let mut request = Request::get(format!("http://{}/api/whoami", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::default()).unwrap();
        Answer::read(client.request(request).await.unwrap()).await
    }

    /// A gRPC-shaped `POST /api/whoami` (HTTP/1.1 with `te: trailers`) with a well-formed key
    /// that the store does not know: refused the gRPC way, HTTP 200 with `grpc-status: 16`.
    async fn grpc_call_with_bad_key(&self, from: IpAddr) -> Answer {
        assert!(from.is_loopback(), "tests only talk over loopback");
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(from));
        let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
        let guess = KeyFormat::default().generate();
        let request = Request::post(format!("http://{}/api/whoami", self.address))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-api-key", guess.expose_secret())
            .body(Full::default())
            .unwrap();
        Answer::read(client.request(request).await.unwrap()).await
    }

    async fn with_good_key(&self, from: IpAddr) -> Answer {
        self.whoami(from, &[("x-api-key", self.key.expose_secret())])
            .await
    }

    /// A well-formed key that the store does not know: `401 invalid_api_key`.
    async fn with_bad_key(&self, from: IpAddr) -> Answer {
        let guess = KeyFormat::default().generate();
        self.whoami(from, &[("x-api-key", guess.expose_secret())])
            .await
    }

    /// Fails `BURST` times from `from`, each answered 401, which blocks it.
    async fn use_up_failures(&self, from: IpAddr) {
        for attempt in 1..=BURST {
            let answer = self.with_bad_key(from).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
        }
    }
}

#[tokio::test]
async fn failures_past_the_quota_get_429_with_retry_after_in_the_envelope() {
    let server = Server::start().await;
    server.use_up_failures(FIRST).await;
    let refused = server.with_bad_key(FIRST).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(refused.header("retry-after"), REFILL.as_secs().to_string());
}

#[tokio::test]
async fn refused_grpc_calls_count_as_failures() {
    let server = Server::start().await;
    for attempt in 1..=BURST {
        let answer = server.grpc_call_with_bad_key(FIRST).await;
        assert_eq!(answer.status, StatusCode::OK, "attempt {attempt}");
        assert_eq!(answer.header("grpc-status"), "16", "attempt {attempt}");
    }
    let refused = server.with_bad_key(FIRST).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[tokio::test]
async fn blocked_client_is_refused_even_with_a_good_key() {
    let server = Server::start().await;
    server.use_up_failures(FIRST).await;
    let refused = server.with_good_key(FIRST).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[tokio::test]
async fn another_client_is_not_affected_by_a_blocked_one() {
    let server = Server::start().await;
    server.use_up_failures(FIRST).await;
    assert_eq!(server.with_good_key(SECOND).await.status, StatusCode::OK);
    // And it has its whole quota of failures.
    server.use_up_failures(SECOND).await;
}

#[tokio::test]
async fn successes_are_never_counted() {
    let server = Server::start().await;
    for request in 1..=100 {
        let answer = server.with_good_key(FIRST).await;
        assert_eq!(answer.status, StatusCode::OK, "request {request}");
    }
    // A hundred successes left the whole quota of failures untouched.
    server.use_up_failures(FIRST).await;
}

#[tokio::test]
async fn blocked_client_is_let_in_again_once_retry_after_has_passed() {
    let server = Server::start().await;
    server.use_up_failures(FIRST).await;
    // Requests refused while blocked do not prolong the block.
    for _ in 0..5 {
        assert_eq!(
            server.with_good_key(FIRST).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    server.clock.advance(REFILL - Duration::from_secs(1));
    let almost = server.with_good_key(FIRST).await;
    assert_eq!(almost.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(almost.header("retry-after"), "1");

    server.clock.advance(Duration::from_secs(1));
    assert_eq!(server.with_good_key(FIRST).await.status, StatusCode::OK);
}

#[tokio::test]
async fn after_a_block_each_refill_allows_one_more_failure() {
    let server = Server::start().await;
    server.use_up_failures(FIRST).await;
    for period in 1..=3 {
        server.clock.advance(REFILL);
        let failure = server.with_bad_key(FIRST).await;
        assert_eq!(failure.status, StatusCode::UNAUTHORIZED, "period {period}");
        let refused = server.with_bad_key(FIRST).await;
        assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    }
}

#[tokio::test]
async fn refusal_keeps_a_sane_request_id() {
    let server = Server::start().await;
    server.use_up_failures(FIRST).await;
    let refused = server.whoami(FIRST, &[("x-request-id", "trace-42")]).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(refused.json()["error"]["request_id"], "trace-42");
}

#[test]
fn ipv6_clients_are_counted_per_64_network_and_mapped_ipv4_as_ipv4() {
    let host = |text: &str| client_of(text.parse::<IpAddr>().unwrap());
    assert_eq!(host("2001:db8::1"), host("2001:db8::ffff:ffff"));
    assert_eq!(
        host("2001:db8::1"),
        IpAddr::V6("2001:db8::".parse::<Ipv6Addr>().unwrap())
    );
    assert_ne!(host("2001:db8::1"), host("2001:db8:0:1::1"));
    assert_eq!(host("::ffff:192.0.2.7"), host("192.0.2.7"));
    assert_ne!(host("192.0.2.7"), host("192.0.2.8"));
}
