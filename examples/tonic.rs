//! A gRPC service behind `ApiKeyLayer`, with tonic.
//!
//! ```text
//! cargo run --example tonic           # PORT=50052 cargo run --example tonic for another port
//! ```
//!
//! It prints a demo key and a curl command that calls `demo.v1.Account/WhoAmI` with it. A client
//! sends the key as `authorization: Bearer sk_live_...` or `x-api-key` metadata. The layer
//! answers a refused call the gRPC way: `UNAUTHENTICATED` (16) for a missing, wrong, revoked or
//! expired key and `UNAVAILABLE` (14) when the key store fails, with the crate's error code in
//! the message (`missing_api_key: ...`). A call it lets through carries the caller's
//! `KeyIdentity` in its extensions, where the handler reads it.
//!
//! With tonic-prost-build, `mod proto` below is what `tonic::include_proto!` brings in; it is
//! written out here so that the example builds without `protoc`.

use std::net::Ipv4Addr;

use proto::account_server::{Account, AccountServer};
use proto::{WhoAmIReply, WhoAmIRequest};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tower_api_key::{key::KeyFormat, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, KeyStore};
use tower_api_key::{MemoryKeyStore, Tier};

const DEFAULT_PORT: u16 = 50051;

/// The service: answers who the caller's key belongs to.
#[derive(Debug, Default)]
pub struct AccountService;

#[tonic::async_trait]
impl Account for AccountService {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        // The layer always sets it; if it ever did not, refuse rather than serve anonymously.
        let identity = request
            .extensions()
            .get::<KeyIdentity>()
            .ok_or_else(|| Status::internal("The call reached the handler unauthenticated."))?;
        Ok(Response::new(WhoAmIReply {
            account_id: identity.account_id().to_owned(),
            key_id: identity.key_id().as_str().to_owned(),
            key_name: identity.name().to_owned(),
        }))
    }
}

/// Serves [`AccountService`] on `listener`, every call authenticated by a key from `store`.
pub async fn serve(
    listener: TcpListener,
    store: impl KeyStore,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        // Protects every service of the server. To protect one and leave others open (say, a
        // health check), wrap that one with `tonic::service::LayerExt`, which keeps its name:
        // `.add_service(ApiKeyLayer::new(store).named_layer(AccountServer::new(AccountService)))`
        .layer(ApiKeyLayer::new(store))
        .add_service(AccountServer::new(AccountService))
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let port = port_from_env();
    let store = MemoryKeyStore::new();
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::random(), "acct_demo", "demo", Tier::FREE);
    store.insert(KeyRecord::new(key.digest(), identity));

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    // Ask the socket, so that PORT=0 prints the port the system picked.
    let address = listener.local_addr()?;
    println!("listening on http://{address} (gRPC, plaintext HTTP/2)");
    println!("demo API key (shown once):");
    println!("{}", key.expose_secret());
    // An empty `WhoAmIRequest` is 5 bytes on the wire: uncompressed, length 0.
    println!(
        "printf '\\0\\0\\0\\0\\0' | curl -si --http2-prior-knowledge -H 'content-type: application/grpc' \
         -H 'te: trailers' -H \"x-api-key: {}\" --data-binary @- --output - http://{address}{}",
        key.expose_secret(),
        proto::account_server::WHO_AM_I,
    );

    serve(listener, store).await?;
    Ok(())
}

/// The port from the `PORT` environment variable, or [`DEFAULT_PORT`].
fn port_from_env() -> u16 {
    let Some(port) = std::env::var_os("PORT") else {
        return DEFAULT_PORT;
    };
    port.to_str()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("error: PORT must be a number from 0 to 65535, not {port:?}");
            std::process::exit(2)
        })
}

/// What tonic-prost-build generates from this file, cut down to the one unary method:
///
/// ```proto
/// syntax = "proto3";
/// package demo.v1;
///
/// service Account {
///   rpc WhoAmI(WhoAmIRequest) returns (WhoAmIReply);
/// }
/// message WhoAmIRequest {}
/// message WhoAmIReply {
///   string account_id = 1;
///   string key_id = 2;
///   string key_name = 3;
/// }
/// ```
pub mod proto {
    /// The request of `WhoAmI`: empty, the key says who is asking.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WhoAmIRequest {}

    /// The answer of `WhoAmI`: the identity of the caller's key.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WhoAmIReply {
        /// The account the key belongs to.
        #[prost(string, tag = "1")]
        pub account_id: String,
        /// The key's id (never the key).
        #[prost(string, tag = "2")]
        pub key_id: String,
        /// The key's name.
        #[prost(string, tag = "3")]
        pub key_name: String,
    }

    /// The server side: a trait to implement and the tower service that routes to it.
    pub mod account_server {
        use std::convert::Infallible;
        use std::sync::Arc;
        use std::task::{Context, Poll};

        use tonic::body::Body;
        use tonic::codegen::{BoxFuture, Service};
        use tonic::server::{Grpc, NamedService};
        use tonic::{Request, Response, Status};
        use tonic_prost::ProstCodec;

        use super::{WhoAmIReply, WhoAmIRequest};

        /// The path of the `WhoAmI` method.
        pub const WHO_AM_I: &str = "/demo.v1.Account/WhoAmI";

        /// The methods of `service Account`.
        #[tonic::async_trait]
        pub trait Account: Send + Sync + 'static {
            /// Who the caller's key belongs to.
            async fn who_am_i(
                &self,
                request: Request<WhoAmIRequest>,
            ) -> Result<Response<WhoAmIReply>, Status>;
        }

        /// An [`Account`] as a tower service that tonic's `Server` can serve.
        #[derive(Debug)]
        pub struct AccountServer<T>(Arc<T>);

        impl<T> AccountServer<T> {
            /// Serves `inner`.
            pub fn new(inner: T) -> Self {
                Self(Arc::new(inner))
            }
        }

        impl<T> Clone for AccountServer<T> {
            fn clone(&self) -> Self {
                Self(Arc::clone(&self.0))
            }
        }

        impl<T> NamedService for AccountServer<T> {
            const NAME: &'static str = "demo.v1.Account";
        }

        impl<T: Account> Service<http::Request<Body>> for AccountServer<T> {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = BoxFuture<Self::Response, Self::Error>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: http::Request<Body>) -> Self::Future {
                let inner = Arc::clone(&self.0);
                Box::pin(async move {
                    if request.uri().path() != WHO_AM_I {
                        return Ok(Status::unimplemented("No such method.").into_http());
                    }
                    let method = WhoAmI(inner);
                    Ok(Grpc::new(ProstCodec::default())
                        .unary(method, request)
                        .await)
                })
            }
        }

        /// `WhoAmI` as the unary service that `Grpc` decodes for and encodes from.
        struct WhoAmI<T>(Arc<T>);

        impl<T: Account> Service<Request<WhoAmIRequest>> for WhoAmI<T> {
            type Response = Response<WhoAmIReply>;
            type Error = Status;
            type Future = BoxFuture<Self::Response, Status>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: Request<WhoAmIRequest>) -> Self::Future {
                let inner = Arc::clone(&self.0);
                Box::pin(async move { inner.who_am_i(request).await })
            }
        }
    }

    /// The client side.
    pub mod account_client {
        use http::uri::PathAndQuery;
        use tonic::client::Grpc;
        use tonic::transport::Channel;
        use tonic::{IntoRequest, Response, Status};
        use tonic_prost::ProstCodec;

        use super::account_server::WHO_AM_I;
        use super::{WhoAmIReply, WhoAmIRequest};

        /// Calls `service Account` over a tonic [`Channel`].
        #[derive(Debug, Clone)]
        pub struct AccountClient(Grpc<Channel>);

        impl AccountClient {
            /// A client of the server at the other end of `channel`.
            pub fn new(channel: Channel) -> Self {
                Self(Grpc::new(channel))
            }

            /// Who the key in `request`'s metadata belongs to.
            pub async fn who_am_i(
                &mut self,
                request: impl IntoRequest<WhoAmIRequest>,
            ) -> Result<Response<WhoAmIReply>, Status> {
                self.0
                    .ready()
                    .await
                    .map_err(|error| Status::unavailable(format!("not connected: {error}")))?;
                let path = PathAndQuery::from_static(WHO_AM_I);
                let codec = ProstCodec::default();
                self.0.unary(request.into_request(), path, codec).await
            }
        }
    }
}
