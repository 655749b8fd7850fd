//! The gRPC example (`examples/tonic.rs`) over real HTTP/2 on 127.0.0.1, called with a tonic
//! client: refusals are gRPC statuses, and the key's identity reaches the handler.

#[allow(dead_code)] // The example's `main` is not called here.
#[path = "../../examples/tonic.rs"]
mod example;

use crate::common;

use common::{FailingStore, Keys};
use example::proto::account_client::AccountClient;
use example::proto::account_server::{AccountServer, WHO_AM_I};
use example::proto::{WhoAmIReply, WhoAmIRequest};
use example::AccountService;
use http::header::CONTENT_TYPE;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::service::LayerExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Status};
use tower::ServiceExt;
use tower_api_key::{ApiKey, ApiKeyLayer, KeyStore};

/// Serves the example on an ephemeral port with keys from `store`; a channel to it.
async fn start(store: impl KeyStore) -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { example::serve(listener, store).await.unwrap() });
    connect(address).await
}

async fn connect(address: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `WhoAmI` with the given metadata, as a client of the server behind `channel`.
async fn who_am_i(
    channel: Channel,
    metadata: &[(&'static str, String)],
) -> Result<WhoAmIReply, Status> {
    let mut request = Request::new(WhoAmIRequest {});
    for (name, value) in metadata {
        let value = MetadataValue::try_from(value.as_str()).unwrap();
        request.metadata_mut().insert(*name, value);
    }
    let response = AccountClient::new(channel).who_am_i(request).await?;
    Ok(response.into_inner())
}

fn bearer(key: &ApiKey) -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {}", key.expose_secret()))]
}

fn x_api_key(key: &ApiKey) -> [(&'static str, String); 1] {
    [("x-api-key", key.expose_secret().to_owned())]
}

/// The reply the active key of [`Keys`] should get: its own identity.
fn active_identity() -> WhoAmIReply {
    WhoAmIReply {
        account_id: "acct_1".to_owned(),
        key_id: "key_active".to_owned(),
        key_name: "active".to_owned(),
    }
}

#[tokio::test]
async fn call_without_key_is_unauthenticated_with_missing_api_key() {
    let keys = Keys::new();
    let channel = start(keys.store).await;

    let status = who_am_i(channel, &[]).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("missing_api_key: API key is required. Include it"),
        "{status:?}"
    );
}

#[tokio::test]
async fn wrong_key_is_unauthenticated_with_invalid_api_key() {
    let keys = Keys::new();
    let channel = start(keys.store).await;

    let status = who_am_i(channel, &bearer(&keys.unknown)).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("invalid_api_key: "),
        "{status:?}"
    );
}

#[tokio::test]
async fn revoked_key_is_unauthenticated_with_expired_api_key() {
    let keys = Keys::new();
    let channel = start(keys.store).await;

    let status = who_am_i(channel, &x_api_key(&keys.revoked))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("expired_api_key: "),
        "{status:?}"
    );
}

#[tokio::test]
async fn bearer_key_in_metadata_reaches_handler_with_its_identity() {
    let keys = Keys::new();
    let channel = start(keys.store).await;

    let reply = who_am_i(channel, &bearer(&keys.active)).await.unwrap();

    assert_eq!(reply, active_identity());
}

#[tokio::test]
async fn x_api_key_metadata_reaches_handler_with_its_identity() {
    let keys = Keys::new();
    let channel = start(keys.store).await;

    let reply = who_am_i(channel, &x_api_key(&keys.active)).await.unwrap();

    assert_eq!(reply, active_identity());
}

#[tokio::test]
async fn failing_store_is_unavailable_with_authentication_unavailable() {
    let keys = Keys::new();
    let channel = start(FailingStore).await;

    let status = who_am_i(channel, &bearer(&keys.active)).await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("authentication_unavailable: "),
        "{status:?}"
    );
    // The store's own error (it names a database address) stays on the server.
    assert!(!status.message().contains("5432"), "{status:?}");
}

#[tokio::test]
async fn refusal_status_carries_the_request_id_in_its_metadata() {
    let keys = Keys::new();
    let channel = start(keys.store).await;

    let status = who_am_i(channel, &[]).await.unwrap_err();

    let request_id = status.metadata().get("x-request-id").expect("x-request-id");
    assert!(
        request_id.to_str().unwrap().starts_with("req_"),
        "{request_id:?}"
    );
}

/// The raw HTTP/2 answer, through the channel as a plain tower service: a trailers-only
/// response, which every gRPC client reads, rather than a 401 with a JSON body.
#[tokio::test]
async fn refusal_is_a_trailers_only_http_200() {
    let keys = Keys::new();
    let channel = start(keys.store).await;
    let request = http::Request::post(format!("http://example.test{WHO_AM_I}"))
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();

    let response = channel.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[CONTENT_TYPE], "application/grpc");
    assert_eq!(headers["grpc-status"], "16");
    let message = headers["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("missing_api_key: "), "{message}");
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    let body = response.into_body().collect().await.unwrap();
    assert!(body.trailers().is_none());
    assert!(body.to_bytes().is_empty());
}

/// The per-service form that the example's comment shows: `named_layer` keeps the service's
/// gRPC name, so tonic's router still finds it.
#[tokio::test]
async fn named_layer_protects_a_single_service() {
    let keys = Keys::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = ApiKeyLayer::new(keys.store).named_layer(AccountServer::new(AccountService));
    let server = Server::builder()
        .add_service(service)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(async move { server.await.unwrap() });
    let channel = connect(address).await;

    let refused = who_am_i(channel.clone(), &[]).await.unwrap_err();
    let reply = who_am_i(channel, &bearer(&keys.active)).await.unwrap();

    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(reply, active_identity());
}
