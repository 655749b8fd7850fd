//! API key authentication for any [tower](https://docs.rs/tower) service: axum, hyper, tonic.
//!
//! [`ApiKeyLayer`] reads a key from `Authorization: Bearer <key>` or `X-API-Key: <key>`, checks
//! its format and checksum, finds its record in a [`KeyStore`], compares digests in constant time,
//! and either passes the request on with the key's [`KeyIdentity`] in its extensions or answers
//! with a JSON error envelope:
//!
//! ```json
//! {"error":{"code":"missing_api_key","message":"API key is required. ...","request_id":"req_..."}}
//! ```
//!
//! # Quick start with axum
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_api_key::{ApiKeyLayer, KeyFormat, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier};
//!
//! async fn whoami(identity: KeyIdentity) -> String {
//!     format!("hello, {}", identity.account_id())
//! }
//!
//! let store = MemoryKeyStore::new();
//! let key = KeyFormat::default().generate(); // `sk_live_...`: show it to its owner once
//! let identity = KeyIdentity::new(KeyId::random(), "acct_42", "laptop", Tier::FREE);
//! store.insert(KeyRecord::new(key.digest(), identity)); // the store keeps only the digest
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .layer(ApiKeyLayer::new(store));
//! ```
//!
//! `examples/axum.rs` is a complete service with key management endpoints.
//!
//! # With hyper, or any tower service
//!
//! The layer wraps any `Service<http::Request<B>>`; the identity is in the request's extensions.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_api_key::{ApiKeyLayer, KeyIdentity, MemoryKeyStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::new(MemoryKeyStore::new()))
//!     .service_fn(|request: Request<String>| async move {
//!         let identity = request.extensions().get::<KeyIdentity>().expect("set by the layer");
//!         Ok::<_, Infallible>(Response::new(identity.account_id().to_owned()))
//!     });
//! // Serve it with hyper-util's `TowerToHyperService`; see `examples/hyper.rs`.
//! let response = service.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```
//!
//! # With tonic
//!
//! `Server::builder().layer(ApiKeyLayer::new(store))` protects every service of a tonic server
//! (or wrap one service with tonic's `LayerExt::named_layer`). A gRPC call (a `POST` over HTTP/2
//! or with `te: trailers`, `Content-Type: application/grpc`) is refused the way gRPC clients
//! read: HTTP 200 with `grpc-status` 16 (UNAUTHENTICATED), or 14 (UNAVAILABLE) when the store
//! fails, and `grpc-message: <code>: <message>`. Handlers read the identity with
//! `request.extensions().get::<KeyIdentity>()`. `examples/tonic.rs` is a complete service.
//!
//! # Errors
//!
//! | Status | `code`                       | When                                              |
//! |--------|------------------------------|---------------------------------------------------|
//! | 401    | `missing_api_key`            | no key in either header                           |
//! | 401    | `invalid_api_key`            | malformed, bad checksum, unknown, deleted, two different keys, or a record whose mode is not its prefix's |
//! | 401    | `expired_api_key`            | revoked, or past its expiry                       |
//! | 503    | `authentication_unavailable` | the store failed: the request is refused, never let through |
//! | 403    | `insufficient_scope`         | the key lacks the scope of a [`RequireScopeLayer`] |
//! | 403    | `live_key_required`, `test_key_required` | the key's mode is refused by a [`RequireModeLayer`] |
//!
//! A key in the URL query string is refused too (`invalid_api_key`, [`AuthError::KeyInQuery`]):
//! it has already leaked into logs.
//!
//! Every refusal carries `Cache-Control: no-store`, the request id in `X-Request-Id` (the
//! request's own if it is sane, see [`ApiKeyLayer`]), on 401 a `WWW-Authenticate: Bearer`
//! challenge (RFC 6750), and its [`AuthError`] in the
//! response's extensions, so that a layer outside can tell it from the application's answers. Replace the body with [`ApiKeyLayer::error_response`]; answer in the
//! same envelope from your own code (a rate limiter's 429, a permission check's 403) with
//! [`ErrorResponse`].
//!
//! # Logs and request ids
//!
//! Each decision is one `tracing` event in an `api_key_auth` span, with its `outcome`, the
//! `key_id` and `account_id` when accepted, and the `request_id`; never the key. Put tower-http's
//! `SetRequestIdLayer` and `PropagateRequestIdLayer` outside this layer, and the id they set is
//! the one in the envelope, the response header and the log.
//!
//! # Writing a store
//!
//! [`KeyStore`] has one required method: fetch the [`KeyRecord`] stored under a [`LookupId`]. The
//! layer does the rest, so a store cannot compare secrets wrongly. See its docs and
//! `examples/custom_store.rs`.
//!
//! # Managing keys
//!
//! [`KeyManager`] creates keys (shown once), lists them without secrets, revokes, deletes and
//! rotates them, and holds each account to its tier's quota of active keys ([`TierLimits`]:
//! free 3, pro 50). It works over any [`WritableKeyStore`], the write path that a read-only
//! store need not implement. Give the manager and the layer the same [`Clock`]; in tests a
//! [`ManualClock`] moves time without sleeping. When keys manage keys, no key may create or
//! remove a key more powerful than itself in scopes, mode or expiry: [`KeyInfo::may_manage`]
//! decides, and [`NewKey::created_by`] has [`KeyManager::create`] apply it.
//!
//! # Scopes and test keys
//!
//! A key may carry [`Scopes`] (`NewKey::scopes`), like Stripe's restricted keys; a key without
//! scopes has full access. A route asks for a scope with [`RequireScopeLayer`] inside the
//! [`ApiKeyLayer`] (or, with axum, the `Scoped<T>` extractor), and a key without it gets `403
//! insufficient_scope` with the RFC 6750 challenge. Keys are live (`sk_live_`) or test
//! (`sk_test_`, `NewKey::mode(KeyMode::Test)`) in the same store; [`KeyIdentity::mode`] says
//! which, and [`RequireModeLayer`] (or the `LiveKey` / `TestKey` extractors) refuses one mode on
//! a route.
//!
//! ```
//! use http::{Request, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, RequireScopeLayer, Tier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let keys = KeyManager::new(MemoryKeyStore::new());
//! let reader = NewKey::new("acct_42", Tier::PRO, "dashboard").scopes(["iocs:read"]);
//! let reader = keys.create(reader).await.unwrap();
//!
//! let service = ServiceBuilder::new()
//!     .layer(keys.layer())
//!     .layer(RequireScopeLayer::new("keys:write"))
//!     .service_fn(|_: Request<String>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) });
//! let request = Request::builder()
//!     .header("x-api-key", reader.key.expose_secret())
//!     .body(String::new())
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//! # }
//! ```
//!
//! # Security model
//!
//! - Keys are `sk_live_` plus 32 random base62 characters from the OS CSPRNG (~190 bits) and a
//!   CRC32 checksum, so typos and random strings are rejected without a lookup ([`KeyFormat`]).
//! - Stores hold SHA-256 digests, never keys, indexed by the digest's first half; the layer
//!   compares the whole digest in constant time (`subtle`).
//! - Keys are read from headers only; a key in the query string is refused and logged by its
//!   parameter's name, never its value.
//! - [`ApiKey`], [`KeyDigest`] and [`LookupId`] have no `Display` and a redacted `Debug`; the
//!   credential headers are marked sensitive before the inner service sees them; no response
//!   repeats a key.
//! - A store failure is a `503`: the layer fails closed.
//!
//! # Features
//!
//! - `axum` (default): [`KeyIdentity`] is an axum extractor. It pulls in `axum-core` only;
//!   hyper and tonic services can turn it off with `default-features = false`.
//! - `postgres`: `PgKeyStore`, keys in PostgreSQL through sqlx.
//! - `redis`: `RedisKeyStore`, keys in Redis through the redis crate's `ConnectionManager`.
//! - `cache`: `CachedKeyStore`, an in-process cache in front of any store.
//!
//! Minimum Rust: 1.85; the `postgres` feature needs 1.94 (sqlx 0.9).
//!
//! # Choosing a store
//!
//! [`MemoryKeyStore`] serves tests and single instances. Several instances share keys through
//! `PgKeyStore` or `RedisKeyStore`, usually behind a `CachedKeyStore`, whose TTL bounds how long
//! another instance may accept a key revoked elsewhere (10 s by default).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

mod body;
mod clock;
mod credentials;
mod envelope;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod grpc;
mod identity;
mod key;
mod layer;
mod lifecycle;
mod mode;
mod request_id;
mod scope;
mod store;

pub use body::ResponseBody;
pub use clock::{Clock, ManualClock, SystemClock};
pub use envelope::ErrorResponse;
pub use error::{AuthError, Rejection};
#[cfg(feature = "axum")]
pub use extract::{AuthRejection, LiveKey, RequiredScope, Scoped, TestKey};
pub use identity::{KeyId, KeyIdentity, Tier};
pub use key::{ApiKey, KeyDigest, KeyFormat, LookupId, MAX_KEY_LEN};
pub use layer::{ApiKeyAuth, ApiKeyLayer, ResponseFuture};
pub use lifecycle::{
    CreatedKey, KeyInfo, KeyManager, ManageError, NewKey, Overreach, TierLimits, MAX_LIFETIME,
    MAX_NAME_LEN,
};
pub use mode::{KeyMode, RequireMode, RequireModeLayer};
pub use scope::{
    RequireFuture, RequireScope, RequireScopeLayer, ScopeError, Scopes, MAX_SCOPES, MAX_SCOPE_LEN,
};
#[cfg(feature = "cache")]
pub use store::CachedKeyStore;
#[cfg(feature = "postgres")]
pub use store::PgKeyStore;
#[cfg(feature = "redis")]
pub use store::RedisKeyStore;
pub use store::{
    CreateError, KeyRecord, KeyStore, MemoryKeyStore, Quota, StoreError, WritableKeyStore,
};

// Compiles and runs the README's Rust examples with the doc tests, so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
