//! The layer inside a tower-http stack that sets and propagates request ids and traces requests:
//! the envelope, the response header and the log all carry the one id.

use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{echo_identity, request, Answer, Keys};
use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::ApiKeyLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing_subscriber::fmt::MakeWriter;

/// Everything the subscriber writes, kept for the test to read.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A log of this thread's events at DEBUG, until the guard is dropped. The global capture is
/// installed first, so that each callsite's interest is computed with it.
fn log_this_thread() -> (Log, tracing::subscriber::DefaultGuard) {
    crate::secret_hygiene::capture();
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(log.clone())
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

/// Sends `headers` through SetRequestId → PropagateRequestId → Trace → ApiKeyLayer, logging at
/// DEBUG into the returned log.
async fn send_through_tower_http(keys: Keys, headers: &[(&str, &[u8])]) -> (Answer, Log) {
    let (log, _guard) = log_this_thread();
    let service = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(ApiKeyLayer::new(keys.store))
        .service_fn(echo_identity);
    let response = service.oneshot(request(headers)).await.unwrap();
    (Answer::read(response).await, log)
}

#[tokio::test]
async fn refusal_uses_the_request_id_that_tower_http_set() {
    let (answer, log) = send_through_tower_http(Keys::new(), &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "the id is tower-http's uuid, not one of ours: {id}"
    );
    assert_eq!(answer.json()["error"]["request_id"], id.as_str());
    let decisions = log.lines_with("outcome=");
    assert_eq!(decisions.len(), 1, "one event per decision: {decisions:?}");
    assert!(decisions[0].contains("missing_api_key"));
    assert!(decisions[0].contains(&id));
    assert!(decisions[0].contains("api_key_auth"), "in the layer's span");
}

#[tokio::test]
async fn acceptance_is_logged_with_key_account_and_request_id() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().to_owned();
    let (answer, log) = send_through_tower_http(keys, &[("x-api-key", key.as_bytes())]).await;
    assert!(answer.reached_inner_service());
    let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    let decisions = log.lines_with("outcome=");
    assert_eq!(decisions.len(), 1, "one event per decision: {decisions:?}");
    let event = &decisions[0];
    assert!(event.contains("accepted"), "{event}");
    assert!(event.contains("key_active"), "{event}");
    assert!(event.contains("acct_1"), "{event}");
    assert!(event.contains(&id), "{event}");
    assert!(!event.contains(&key), "never the key");
}

/// Sends `headers` straight to `ApiKeyLayer`, logging at DEBUG into the returned log.
async fn send_to_the_layer(keys: Keys, headers: &[(&str, &[u8])]) -> (Answer, Log) {
    let (log, _guard) = log_this_thread();
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(keys.store))
        .service_fn(echo_identity);
    let response = service.oneshot(request(headers)).await.unwrap();
    (Answer::read(response).await, log)
}

#[tokio::test]
async fn acceptance_never_logs_an_insane_request_id() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().to_owned();
    let forged = format!(
        "{}\" outcome=\"refused\" account_id=\"victim",
        "a".repeat(8 * 1024)
    );
    let headers: [(&str, &[u8]); 2] = [
        ("x-api-key", key.as_bytes()),
        ("x-request-id", forged.as_bytes()),
    ];
    let (answer, log) = send_to_the_layer(keys, &headers).await;
    assert!(answer.reached_inner_service());
    let decisions = log.lines_with("outcome=");
    assert_eq!(decisions.len(), 1, "one event per decision: {decisions:?}");
    let event = &decisions[0];
    assert!(event.contains("accepted"), "{event}");
    assert!(!event.contains("victim"), "{event}");
    assert!(!event.contains(&"a".repeat(129)), "{event}");
}

#[tokio::test]
async fn acceptance_logs_a_sane_request_id_as_sent() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().to_owned();
    let headers: [(&str, &[u8]); 2] = [
        ("x-api-key", key.as_bytes()),
        ("x-request-id", b"req_from_the_proxy"),
    ];
    let (_, log) = send_to_the_layer(keys, &headers).await;
    let decisions = log.lines_with("outcome=");
    assert_eq!(decisions.len(), 1, "one event per decision: {decisions:?}");
    assert!(
        decisions[0].contains("req_from_the_proxy"),
        "{}",
        decisions[0]
    );
}
