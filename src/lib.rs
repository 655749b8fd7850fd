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
//! use tower_api_key::{ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier, key::KeyFormat};
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
//! Only the routes added before `.layer(...)` need a key; add open routes (a health check)
//! after it. When you `nest` a protected router, give it a `.fallback(...)` before
//! `.layer(...)`: otherwise an unknown path under its prefix answers `404` without asking for a
//! key, which tells anyone which routes exist.
//!
//! ```
//! # use axum::{body::Body, http::{Request, StatusCode}, routing::get, Router};
//! # use tower::ServiceExt;
//! # use tower_api_key::{ApiKeyLayer, MemoryKeyStore};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let api = Router::new()
//!     .route("/v1/iocs", get(|| async { "[]" }))
//!     .fallback(|| async { StatusCode::NOT_FOUND }) // inside the layer: unknown paths need a key
//!     .layer(ApiKeyLayer::new(MemoryKeyStore::new()));
//! let app: Router = Router::new()
//!     .nest("/api", api)
//!     .route("/health", get(|| async { "ok" })); // open
//!
//! let probe = Request::get("/api/v1/secret-route").body(Body::empty()).unwrap();
//! let response = app.oneshot(probe).await.unwrap();
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```
//!
//! Outside axum, read the identity with `request.extensions().get::<KeyIdentity>()`. The
//! [`KeyIdentity`] extractor (feature `axum`) answers `500 internal_error` on a route the layer
//! does not cover, a configuration error. Where a key is optional, use
//! [`ApiKeyLayer::optional`]: a request without a key goes on anonymous (`Option<KeyIdentity>`
//! is `None`), and a key that is presented is still checked.
//!
//! # Browsers and CORS
//!
//! A browser sends a preflight (`OPTIONS` with `Access-Control-Request-Headers: x-api-key`)
//! without the key, so the layer would refuse it `401`. Put tower-http's `CorsLayer` outside
//! the layer: it answers preflights itself, and adds its headers to the layer's refusals too,
//! so the page can read their envelope. (No opt-in is needed in the layer: a preflight that
//! reaches it means the CORS layer is missing or inside.)
//!
//! ```
//! use axum::{http::{header, Method}, routing::get, Router};
//! use tower_api_key::{ApiKeyLayer, MemoryKeyStore};
//! use tower_http::cors::{AllowOrigin, CorsLayer};
//!
//! let cors = CorsLayer::new()
//!     .allow_origin(AllowOrigin::exact("https://app.example.com".parse().unwrap()))
//!     .allow_methods([Method::GET, Method::POST, Method::DELETE])
//!     .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, "x-api-key".parse().unwrap()])
//!     .expose_headers(["x-request-id".parse().unwrap(), header::RETRY_AFTER]);
//! let app: Router = Router::new()
//!     .route("/api/v1/iocs", get(|| async { "[]" }))
//!     .layer(ApiKeyLayer::new(MemoryKeyStore::new()))
//!     .layer(cors); // the last layer added is the outermost
//! ```
//!
//! `cargo run --example axum` serves a complete service on 127.0.0.1: it prints a live and a
//! test key of a free-tier demo account, each alone on its line, and manages that account's
//! keys over HTTP; the example's own documentation lists its routes and scopes.
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
//! # gRPC and tonic
//!
//! `Server::builder().layer(ApiKeyLayer::new(store))` protects every service of a tonic server.
//! To protect one service and leave another open (a health check), wrap just that one:
//! `.add_service(ApiKeyLayer::new(store).named_layer(AccountServer::new(AccountService)))`, with
//! `tonic::service::LayerExt` in scope. Clients send the key as `authorization: Bearer ...` or
//! `x-api-key` metadata; handlers read the identity with
//! `request.extensions().get::<KeyIdentity>()`.
//!
//! A gRPC call (a `POST` over HTTP/2 or with `te: trailers`, whose `content-type` is
//! `application/grpc` or `application/grpc+<codec>`) is refused the way gRPC clients read: HTTP
//! 200 with a trailers-only answer, `grpc-status` 16 (UNAUTHENTICATED) for every 401 below, 7
//! (PERMISSION_DENIED) for a 403, 8 (RESOURCE_EXHAUSTED) for a rate limit's 429, 14
//! (UNAVAILABLE) when the store fails, 13 (INTERNAL) for the 500 of a check without the layer, `grpc-message: <code>:
//! <message>`, and the request id in `x-request-id` metadata. `examples/tonic.rs` is a complete
//! service that needs no `protoc`.
//!
//! # Errors
//!
//! | Status | `code`                       | When                                              |
//! |--------|------------------------------|---------------------------------------------------|
//! | 401    | `missing_api_key`            | no key in either header                           |
//! | 401    | `invalid_api_key`            | malformed, bad checksum, unknown, deleted, two different keys, or a record whose mode is not its prefix's |
//! | 401    | `expired_api_key`            | revoked, or past its expiry                       |
//! | 503    | `authentication_unavailable` | the store failed: the request is refused, never let through |
//! | 403    | `insufficient_scope`         | the key lacks the scope of a [`RequireScopeLayer`](access::RequireScopeLayer) |
//! | 403    | `live_key_required`, `test_key_required` | the key's mode is refused by a [`RequireModeLayer`](access::RequireModeLayer) |
//! | 429    | `rate_limited`               | the key has used its rate limit (`limit::RateLimitLayer`, feature `rate-limit`) |
//! | 429    | `usage_exceeded`             | the key's credits cannot pay for the request (`limit::CreditsLayer`) |
//! | 500    | `internal_error`             | a scope, mode or rate-limit check, or an extractor, runs without the layer before it |
//!
//! A key in the URL query string is refused too (`invalid_api_key`, [`AuthError::KeyInQuery`]):
//! it has already leaked into logs.
//!
//! Every refusal carries `Cache-Control: no-store`, the request id in `X-Request-Id` (the
//! request's own if it is sane, see [`ApiKeyLayer`]), on 401 a `WWW-Authenticate: Bearer`
//! challenge (RFC 6750), and its [`AuthError`] in the
//! response's extensions, so that a layer outside can tell it from the application's answers. Replace the body with [`ApiKeyLayer::error_response`]; answer in the
//! same envelope from your own code (a rate limiter's 429, a permission check's 403) with
//! [`ErrorResponse`](response::ErrorResponse).
//!
//! # Logs, request ids and tower-http
//!
//! Each decision of the layer is one `tracing` event in an `api_key_auth` span, with its `outcome`
//! (`accepted` or the error code), the `key_id` and `account_id` when accepted, and the
//! `request_id`; never the key. Acceptances are DEBUG, the layer's refusals INFO (the 403s of
//! the scope and mode checks are not logged), a key in a URL WARN
//! (naming the parameter, never its value), a store failure ERROR with its cause. Put
//! tower-http's request-id layers outside this one, and the id they set is the one in the
//! envelope, the `X-Request-Id` response header and the log:
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_api_key::{ApiKeyLayer, MemoryKeyStore};
//! use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
//! use tower_http::trace::TraceLayer;
//!
//! let middleware = ServiceBuilder::new()
//!     .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
//!     .layer(PropagateRequestIdLayer::x_request_id())
//!     .layer(TraceLayer::new_for_http())
//!     .layer(ApiKeyLayer::new(MemoryKeyStore::new()));
//! # let _ = middleware;
//! ```
//!
//! # Limiting failed attempts
//!
//! The layer answers every guess in constant time but does not count guesses. A middleware
//! outside it can: every refusal carries its [`AuthError`] in the response's extensions, so it
//! can count the refusals of a key (401s and gRPC refusals alike, not the store's 503s) per
//! client IP and answer `429` with `Retry-After` in the same envelope
//! ([`ErrorResponse`](response::ErrorResponse)) before a blocked client's key is even read.
//! `examples/failed_attempts.rs` does this with a `governor` keyed rate limiter (10 failures,
//! then one every 6 s; IPv6 clients by /64), and never slows a client down for its successes.
//! `tower_governor` charges every request on the way in, so it cannot tell failures from
//! successes. Behind a reverse proxy, key by the forwarded address only when the peer is your
//! proxy.
//!
//! # Writing a store
//!
//! [`KeyStore`] has one required method: fetch the [`KeyRecord`] stored under a [`LookupId`]. The
//! layer does the rest, so a store cannot compare secrets wrongly. See its docs and
//! `examples/custom_store.rs`.
//!
//! # Choosing a store
//!
//! | Store | Feature | Use it when |
//! |-------|---------|-------------|
//! | [`MemoryKeyStore`] | | tests, demos, one instance whose keys can live in the process |
//! | `PgKeyStore` | `postgres` | several instances, and PostgreSQL is already your database |
//! | `SqliteKeyStore` | `sqlite` | one machine, keys that outlive the process, no database server |
//! | `RedisKeyStore` | `redis` | several instances, and a Redis or a Redis Cluster is at hand |
//! | `CachedKeyStore` | `cache` | in front of any of them, so most requests never reach the database |
//! | your own [`KeyStore`] | | keys live elsewhere; add [`WritableKeyStore`](store::WritableKeyStore) to manage them |
//!
//! All of them pass one behavioural suite: the same answers, the same quotas under concurrent
//! creates from two instances, the same lifecycle. The PostgreSQL, SQLite and Redis stores bound
//! every call with a timeout (2 s by default), so a database that is down or hung makes the layer
//! answer `503`, never `401`, and record last-used times from a background task, so no request
//! waits for that write. Each type's docs say how to set it up.
//!
//! **Revocations everywhere at once.** A `CachedKeyStore` keeps records for its TTL (10 s by
//! default). Creating, revoking, deleting or rotating through it takes effect on this instance at
//! once. With [push invalidation](store::ChangeFeed) (`PgKeyStore::changes`,
//! `RedisKeyStore::changes`), every other instance evicts the key as soon as the store's
//! message reaches it, well under a second (`benches/README.md` has the lag measured), and an
//! instance whose feed has lost its connection asks the store until it listens again. Without
//! it, another instance may go on accepting a key revoked elsewhere for at most its TTL plus one
//! lookup of the inner store (at most that store's timeout).
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use tower_api_key::{ApiKeyLayer, store::{CachedKeyStore, PgKeyStore}};
//!
//! let store = PgKeyStore::new(pool);
//! store.migrate().await?; // includes the trigger that announces every change
//! let layer = ApiKeyLayer::new(CachedKeyStore::new(store.clone()).push_invalidation(store.changes()));
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! # Managing keys
//!
//! [`KeyManager`] creates keys (shown once), lists them without secrets, revokes, deletes and
//! rotates them, and holds each account to its tier's quota of active keys ([`TierLimits`](manage::TierLimits):
//! free 3, pro 50). It works over any [`WritableKeyStore`](store::WritableKeyStore), the write path that a read-only
//! store need not implement. Give the manager and the layer the same [`Clock`](clock::Clock); in tests a
//! [`ManualClock`](clock::ManualClock) moves time without sleeping. When keys manage keys, no key may create or
//! remove a key more powerful than itself in scopes, mode or expiry: [`KeyInfo::may_manage`](manage::KeyInfo::may_manage)
//! decides, and [`NewKey::created_by`] has [`KeyManager::create`] apply it.
//!
//! [`KeyManager::disable`] switches a key off until [`KeyManager::enable`] switches it on
//! again: meanwhile it is refused as `expired_api_key` ("deactivated"), listed with its
//! `disabled_at`, and still counted in its account's quota, so that disabling cannot be used
//! to hold more keys than the tier allows. Revocation is for good; disabling is for a key under
//! suspicion, or an account on hold. Every change is an [audit event](audit): created, rotated,
//! revoked, deleted, disabled, enabled, imported, reported leaked, with the time, the account,
//! the key id and who acted ([`KeyManager::acting_as`]), never a secret; a `tracing` event
//! unless the manager is given a sink of its own ([`KeyManager::audit`]).
//!
//! A service moving to this crate keeps its users' keys: [`KeyManager::import`] takes keys of
//! another system (plaintext, accepted by a [legacy prefix](key::KeyFormat::legacy_prefix)
//! without a checksum, or their SHA-256 digests alone) with their ids, names, creation times
//! and expiry, in bulk, the quota respected or, for a migration, bypassed; a key already there
//! is left as it is, so importing twice imports nothing twice. The command line does it from a
//! JSON-lines or CSV file (`tower-api-key import`).
//!
//! ```
//! use tower_api_key::{audit::Actor, KeyManager, MemoryKeyStore, NewKey, Tier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_api_key::manage::ManageError> {
//! let keys = KeyManager::new(MemoryKeyStore::new());
//! let created = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await?;
//! let support = keys.acting_as(Actor::User("support@example.com".into()));
//! let info = support.disable("acct_42", &created.info.id).await?;
//! assert!(info.disabled_at.is_some());
//! let info = support.enable("acct_42", &created.info.id).await?;
//! assert!(info.disabled_at.is_none());
//! # Ok(())
//! # }
//! ```
//!
//! Over HTTP, [`keys_api::router`] (feature `axum`) is the "Settings → API Keys" API as an axum
//! `Router` over any `KeyManager`: nest it inside the layer, and each key manages its own
//! account's keys under those rules, every error answered in the envelope.
//!
//! # Scopes and test keys
//!
//! A key may carry [`Scopes`](access::Scopes) (`NewKey::scopes`), like Stripe's restricted keys; a key without
//! scopes has full access. A route asks for a scope with [`RequireScopeLayer`](access::RequireScopeLayer) inside the
//! [`ApiKeyLayer`] (or, with axum, the `Scoped<T>` extractor), and a key without it gets `403
//! insufficient_scope` with the RFC 6750 challenge. Keys are live (`sk_live_`) or test
//! (`sk_test_`, `NewKey::mode(KeyMode::Test)`) in the same store; [`KeyIdentity::mode`] says
//! which, and [`RequireModeLayer`](access::RequireModeLayer) (or the `LiveKey` / `TestKey` extractors) refuses one mode on
//! a route.
//!
//! ```
//! use http::{Request, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_api_key::access::RequireScopeLayer;
//! use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};
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
//! # When a key leaks
//!
//! The keys' prefix and checksum exist so that leaked keys can be found:
//!
//! - [`KeyFormat::pattern`](key::KeyFormat::pattern) is the regular expression to register with
//!   a secret scanner (`(?-u:\b)(?:sk_live_|sk_test_)[0-9A-Za-z]{38}(?-u:\b)`);
//!   [`KeyFormat::find_keys`](key::KeyFormat::find_keys) finds the checksum-valid keys in a
//!   text, and [`KeyFormat::redact`](key::KeyFormat::redact) removes them.
//! - [`redact::RedactKeys`] (feature `tracing-redaction`) redacts every key from each log line
//!   that `tracing_subscriber`'s `fmt` layer writes, whatever field it was pasted into.
//! - A query parameter whose name or value has a key's prefix, length and alphabet is refused,
//!   checksum or not: a mistyped key in a URL has leaked all the same.
//! - [`secret_scanning::router`] (feature `secret-scanning`) is the endpoint of GitHub's secret
//!   scanning partner program: GitHub reports the keys it finds in public code, signed, and each
//!   one is revoked at once ([`KeyManager::revoke_leaked`]), on every instance whose cache is
//!   pushed changes.
//! - [`KeyManager::disable`] takes a key under suspicion out of service until it is cleared;
//!   every change is an [audit event](audit), the scanner's included.
//!
//! # Security model
//!
//! - Keys are `sk_live_` plus 32 random base62 characters from the OS CSPRNG (~190 bits) and a
//!   CRC32 checksum, so typos and random strings are rejected without a lookup ([`KeyFormat`](key::KeyFormat)).
//!   The checksum is no secret: it filters mistakes, not crafted keys, which each cost one
//!   lookup. A listing's hint shows a key's last 4 characters, which leaves over 160 bits unknown.
//! - Stores hold SHA-256 digests, never keys, indexed by the digest's first half; the layer
//!   compares the whole digest in constant time (`subtle`), and checks the secret before the
//!   revocation status, so a wrong key cannot learn whether a key exists or was revoked.
//! - Keys are read from headers only; a key in the query string is refused and logged by its
//!   parameter's name, never its value.
//! - [`ApiKey`], [`KeyDigest`](key::KeyDigest) and [`LookupId`] have no `Display` and a redacted `Debug`; the
//!   credential headers are marked sensitive before the inner service sees them; no response
//!   repeats a key.
//! - A store failure is a `503`, logged at ERROR with its cause: the layer fails closed, and
//!   nothing passes without a positive answer from the store.
//!
//! # Features
//!
//! - `axum` (default): [`KeyIdentity`] is an axum extractor, `keys_api::router` the keys API
//!   as an axum `Router`, and `response::errors_in_envelope` answers axum's own rejections in
//!   the envelope. It pulls in axum without its server (no hyper, no tokio); hyper and tonic
//!   services can turn it off with `default-features = false`.
//! - `postgres`: `PgKeyStore`, keys in PostgreSQL through sqlx; turns on `cache`.
//! - `sqlite`: `SqliteKeyStore`, keys in a SQLite file through sqlx, which compiles SQLite in.
//! - `redis`: `RedisKeyStore`, keys in Redis, a single node or a cluster, through the redis
//!   crate; turns on `cache`.
//! - `cache`: `CachedKeyStore`, an in-process cache in front of any store, with push
//!   invalidation from a shared store.
//! - `rate-limit`: `limit::RateLimitLayer`: each key (or account) limited to its own or its
//!   tier's requests per period (free 60, pro 600 per minute by default), with the `429`,
//!   `Retry-After` and `RateLimit` headers; counted in this process (GCRA), or with `redis` in
//!   Redis, one limit across instances.
//! - `testing`: the `testing` module, the store suite that every shipped store passes, for a
//!   store of your own (`tower_api_key::store_suite!(MyBackend::new());` in a test file), and a
//!   guide to writing one.
//! - `metrics`: decisions, store lookup latency, cache hits and misses and limit refusals
//!   through the `metrics` facade; names and labels in `metrics`.
//! - `utoipa`: `openapi::ApiKeySecurity` adds the key's security schemes, the error envelope and
//!   the refusals (401, 403, 429, 503) to a `utoipa` OpenAPI document in one call.
//! - `secret-scanning`: `secret_scanning::router`, the endpoint of GitHub's secret scanning
//!   partner program: it checks each report's signature and revokes the published keys; its
//!   public keys are fixed or fetched from GitHub (reqwest with rustls). Turns on `axum`.
//! - `tracing-redaction`: `redact::RedactKeys`, a writer for `tracing_subscriber`'s `fmt`
//!   layer that redacts every key from each log line before it is written.
//! - `cli`: the `tower-api-key` command line, which manages keys in a PostgreSQL, Redis or
//!   SQLite store (`cargo install tower-api-key --features cli`).
//!
//! Balances of credits (`limit::CreditsLayer`) need no feature: every shipped store keeps them.
//!
//! Minimum Rust: 1.85; the `utoipa` feature needs 1.88 (utoipa 6), and the `postgres`, `sqlite`
//! and `cli` features 1.94 (sqlx 0.9).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

/// `get_ref`, `get_mut` and `into_inner` for a middleware service whose inner service is in
/// its field `inner`, as tower-http writes them.
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// The inner service, unwrapped.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub mod access;
pub mod audit;
mod body;
pub mod clock;
mod credentials;
mod envelope;
mod error;
#[cfg(feature = "axum")]
pub mod extract;
mod grpc;
mod identity;
pub mod key;
#[cfg(feature = "axum")]
pub mod keys_api;
pub mod layer;
pub mod limit;
pub mod manage;
pub mod metrics;
mod mode;
#[cfg(feature = "utoipa")]
pub mod openapi;
#[cfg(feature = "tracing-redaction")]
pub mod redact;
mod request_id;
pub mod response;
mod scope;
#[cfg(feature = "secret-scanning")]
pub mod secret_scanning;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::AuthError;
pub use identity::{KeyId, KeyIdentity, Tier};
pub use key::{ApiKey, LookupId};
pub use layer::ApiKeyLayer;
pub use manage::{KeyManager, NewKey};
pub use store::{KeyRecord, KeyStore, MemoryKeyStore, StoreError};

// Compiles and runs the README's Rust examples with the doc tests, so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
