//! An indicator-of-compromise API behind `ApiKeyLayer`, with axum.
//!
//! ```text
//! cargo run --example axum            # PORT=8080 cargo run --example axum for another port
//! ```
//!
//! It prints the live key alone on its own line (`grep '^sk_live_'` finds it), the test key
//! likewise, and curl commands to try them. `/api/...` needs a key; `/health` and the page `/settings/api-keys` do not. The live key (`sk_live_...`) has full access; the test key (`sk_test_...`) is
//! restricted to the scopes `iocs:read`, `keys:read` and `keys:write`. With a key (`K`), manage
//! the demo account's keys (it is on the free tier: 3 active keys, live and test together, so
//! one more than the two printed):
//!
//! ```text
//! curl -X POST -H "X-API-Key: $K" -d '{"name":"ci","expires_in":3600}' http://127.0.0.1:3000/api/v1/keys
//! curl -X POST -H "X-API-Key: $K" -d '{"name":"reader","scopes":["iocs:read"],"mode":"test"}' http://127.0.0.1:3000/api/v1/keys
//! curl -H "X-API-Key: $K" http://127.0.0.1:3000/api/v1/keys
//! curl -X DELETE -H "X-API-Key: $K" http://127.0.0.1:3000/api/v1/keys/key_...
//! curl -X POST -H "X-API-Key: $K" -d '{"type":"ipv4","value":"192.0.2.1"}' http://127.0.0.1:3000/api/v1/iocs
//! ```
//!
//! | Route                               | Scope        | Mode       |
//! |-------------------------------------|--------------|------------|
//! | `GET /api/v1/iocs`                  | `iocs:read`  | any        |
//! | `POST /api/v1/iocs`                 | `iocs:write` | live only  |
//! | `GET /api/v1/keys`, `/api/v1/keys/…` | `keys:read`  | any        |
//! | `POST /api/v1/keys`                 | `keys:write` | any        |
//! | `DELETE /api/v1/keys/…` (revoke; `?permanent=true` deletes) | `keys:write` | any |
//! | `POST /api/v1/keys/…/rotate`        | `keys:write` | any        |
//! | `POST /api/v1/keys/…/disable`, `/enable` | `keys:write` | any   |
//!
//! The keys routes are the crate's [`keys_api::router`]; every error under `/api` is answered
//! in the envelope with the caller's `X-Request-Id` ([`errors_in_envelope`]). The demo logs to
//! stdout, filtered by `RUST_LOG` (`info` by default), the keys' audit events included (target
//! `tower_api_key::audit`).
//!
//! No key can make or remove a key more powerful than itself ([`KeyInfo::may_manage`]): a test
//! key creates and revokes only test keys (else `403 live_key_required`); a key without full
//! access creates only keys with some of its own scopes (else `403 cannot_grant_scope`) and
//! revokes only such keys; a key that expires creates and revokes only keys that expire no
//! later than itself. Revoking a key with more scopes, or creating or revoking one that outlives
//! the caller, is `403 key_too_powerful`. A new key has, unless the body says otherwise, the
//! caller's scopes, mode and expiry: a key that expires creates keys that expire with it.
//!
//! A body that is not the JSON asked for, or an invalid name, expiry or scope, gets `400
//! invalid_request`; a fourth active key `403 key_limit_reached`; an id of another account `404
//! not_found`.
//!
//! The keys live in memory unless `STORE` says otherwise; each start makes a new free-tier
//! account (`acct_demo_...`), so a persistent store never runs out of its 3 keys:
//!
//! ```text
//! STORE=postgres DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example axum --features postgres
//! STORE=sqlite cargo run --example axum --features sqlite
//! STORE=redis REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum --features redis
//! ```
//!
//! With `STORE=postgres` or `STORE=redis` the demo runs as a deployment should: behind `CachedKeyStore` with push invalidation, so repeat requests with a key make no
//! round trip to the store, and a key revoked through any instance is refused by every instance
//! as soon as the store's message arrives. `CACHE_TTL_SECONDS` (10 by default) is the cache's
//! backstop.
//!
//! With `STORE=sqlite` the keys are in `tower-api-key-demo.db` in the working directory, created
//! if missing; `SQLITE_URL` names another file (`sqlite:///tmp/keys.db?mode=rwc`).
//!
//! Each free-tier key may send 60 requests per minute (`RATE_LIMIT_PER_MINUTE` sets another
//! number), counted in this process, or in Redis with `STORE=redis`, one limit for every
//! instance; pro keys 600. Every answer under `/api` carries `RateLimit-Policy` and
//! `RateLimit`; past the limit the answer is `429 rate_limited` with `Retry-After`, and
//! `GET /api/v1/keys` shows each key's `rate_limit`:
//!
//! ```text
//! for i in $(seq 100); do curl -s -o /dev/null -w "%{http_code} " -H "X-API-Key: $K" http://127.0.0.1:3000/api/v1/iocs; done
//! curl -i -H "X-API-Key: $K" http://127.0.0.1:3000/api/v1/iocs
//! ```
//!
//! `GET /settings/api-keys` is the same in a browser: a page (`keys_page.html`, its script
//! `keys_page.js`; nothing fetched from elsewhere) where a person pastes a key with `keys:write`
//! and sees the account's keys, creates one (shown once, with a Copy button) and revokes one,
//! with each error's message from the envelope. The page holds no secret, so it is served
//! outside the key layer, with `Cache-Control: no-store` and a Content-Security-Policy that runs
//! only the demo's own script and talks only to the demo. The pasted key lives in a JavaScript
//! variable: never in a URL, storage or a cookie; reloading the page forgets it.
//!
//! Built with `--features metrics`, the demo also serves `GET /metrics`, outside the key layer:
//! the crate's metrics ([`tower_api_key::metrics`]: decisions by outcome and code, store lookup
//! latency, cache hits and misses, limit refusals) in Prometheus's text format, from
//! `metrics-exporter-prometheus`. No label holds a key, a key id or an account id. (A real
//! service would serve it on an internal port, or behind its own access control.)
//!
//! ```text
//! cargo run --example axum --features metrics
//! curl http://127.0.0.1:3000/metrics
//! ```
//!
//! With `--features utoipa`, `GET /openapi.json` (outside the key layer) is the demo's OpenAPI
//! 3.1 document: its routes, the keys in `X-API-Key` or `Authorization: Bearer`, and the
//! refusals in the envelope, from `tower_api_key::openapi::ApiKeySecurity`.
//!
//! Built with `--features secret-scanning` and started with `SECRET_SCANNING_KEYS_FILE` naming
//! a file of public keys in GitHub's format (`{"public_keys": [{"key_identifier", "key",
//! "is_current"}]}`), the demo also takes GitHub's secret scanning reports at `POST
//! /api/v1/secret-scanning`, outside the key layer (the scanner sends no key, it signs): a
//! report signed by a key of the file revokes every demo key it names. To play GitHub, make a
//! key pair and a file that names its public key, then report the printed live key (`K`):
//!
//! ```text
//! openssl ecparam -genkey -name prime256v1 -noout -out github.pem
//! openssl ec -in github.pem -pubout -out github.pub.pem
//! jq -n --rawfile key github.pub.pem '{public_keys: [{key_identifier: "demo-key-1", key: $key, is_current: true}]}' > keys.json
//! SECRET_SCANNING_KEYS_FILE=keys.json cargo run --example axum --features secret-scanning
//! printf '[{"token":"%s","type":"tower_api_key","url":"https://github.com/octo/demo/blob/main/.env","source":"content"}]' "$K" > body.json
//! curl -H "Github-Public-Key-Identifier: demo-key-1" \
//!      -H "Github-Public-Key-Signature: $(openssl dgst -sha256 -sign github.pem body.json | base64 -w0)" \
//!      --data-binary @body.json http://127.0.0.1:3000/api/v1/secret-scanning
//! curl -H "X-API-Key: $K" http://127.0.0.1:3000/api/v1/iocs   # 401 expired_api_key
//! ```
//!
//! The answer labels the key `true_positive` (`false_positive` for a string that is no key of
//! this store) with the SHA-256 of the token, never the token; see
//! `tower_api_key::secret_scanning`.
//!
//! [`KeyInfo::may_manage`]: tower_api_key::manage::KeyInfo::may_manage

use std::net::Ipv4Addr;

#[cfg(any(feature = "postgres", feature = "redis"))]
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Query;
use axum::handler::Handler;
use axum::http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::StatusCode;
use axum::middleware::{from_fn, map_response};
use axum::response::{Html, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use tokio::net::TcpListener;
use tower_api_key::{
    access::{KeyMode, RequireModeLayer, RequireScopeLayer},
    extract::{RequiredScope, Scoped},
    keys_api,
    limit::{RateLimit, RateLimitLayer},
    manage::{CreatedKey, ManageError, TierLimits},
    response::{errors_in_envelope, ErrorResponse},
    store::WritableKeyStore,
    ApiKey, KeyManager, MemoryKeyStore, NewKey, Tier,
};
use tower_http::cors::{Any, CorsLayer};

const DEFAULT_PORT: u16 = 3000;
/// The demo's SQLite database unless `SQLITE_URL` names another: a file in the working directory,
/// created if missing.
#[cfg(feature = "sqlite")]
const DEFAULT_SQLITE_URL: &str = "sqlite://tower-api-key-demo.db?mode=rwc";
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;

/// Sample indicators, as (type, value): documentation addresses, example domains.
const IOCS: &[(&str, &str)] = &[
    ("ipv4", "192.0.2.17"),
    ("ipv4", "198.51.100.42"),
    ("ipv4", "203.0.113.8"),
    ("domain", "login-update.example.com"),
    ("domain", "cdn.malware.example.net"),
    (
        "sha256",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ),
];

#[derive(Deserialize)]
struct IocQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<usize>,
}

/// The scopes of the printed test key: everything the demo has but submitting indicators.
pub const TEST_KEY_SCOPES: [&str; 3] = ["iocs:read", "keys:read", "keys:write"];

/// `iocs:read`, for the `Scoped` extractor.
struct IocsRead;

impl RequiredScope for IocsRead {
    const SCOPE: &'static str = "iocs:read";
}

/// The whole service: `/health` and the keys page are open, everything under `/api` needs a key from `keys`'s
/// store, and `/api/v1/keys` manages them. Reads check their scope with the `Scoped`
/// extractor, writes with `RequireScopeLayer` (and `RequireModeLayer`): both ways work.
///
/// `rate_limit` limits each key's requests under `/api`, after authentication.
pub fn app<S: WritableKeyStore + Clone>(keys: KeyManager<S>, rate_limit: RateLimitLayer) -> Router {
    // The last layer runs first: a test key hears that it is the wrong mode.
    let submit = submit_ioc
        .layer(RequireScopeLayer::new("iocs:write"))
        .layer(RequireModeLayer::live());
    let api = Router::new()
        .route("/v1/iocs", get(list_iocs).post(submit))
        .nest("/v1/keys", keys_api::router(keys.clone()))
        // Inside the layer, so that callers without a key cannot map which routes exist.
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(from_fn(errors_in_envelope))
        .layer(map_response(no_store))
        .layer(rate_limit)
        .layer(keys.layer())
        // Outside the key layer: it answers browsers' preflights, which carry no key, and adds
        // its headers to refusals, so that a page on another origin can read their envelope.
        .layer(cors());
    Router::new()
        .route("/health", get(health))
        .merge(keys_page())
        .merge(openapi())
        .nest("/api", api)
}

/// `GET /openapi.json`, outside the key layer, with the `utoipa` feature; nothing without it.
fn openapi() -> Router {
    let router = Router::new();
    #[cfg(feature = "utoipa")]
    let router = router.route("/openapi.json", get(|| async { Json(openapi_document()) }));
    router
}

/// The demo's OpenAPI document, served at `GET /openapi.json`: its routes, written by hand
/// (bodies in outline), then the crate's security schemes, envelope and refusals, which every
/// route under `/api` may answer.
#[cfg(feature = "utoipa")]
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let envelope = json!({ "$ref": "#/components/schemas/ApiKeyError" });
    let error = |description: &str| json!({ "description": description, "content": { "application/json": { "schema": envelope } } });
    let object = |description: &str| json!({ "description": description, "content": { "application/json": { "schema": { "type": "object" } } } });
    let body = |required: &[&str], properties: Value| {
        json!({
            "required": true,
            "content": { "application/json": { "schema": {
                "type": "object", "required": required, "properties": properties
            } } }
        })
    };
    let id = json!({
        "name": "id", "in": "path", "required": true,
        "description": "The key's id, `key_...`.", "schema": { "type": "string" }
    });
    let new_key = json!({
        "name": { "type": "string" },
        "expires_in": { "type": "integer", "minimum": 1, "description": "Seconds." },
        "scopes": { "type": "array", "items": { "type": "string" } },
        "mode": { "type": "string", "enum": ["live", "test"] }
    });
    let keys_errors = |mut responses: Value| {
        responses["400"] = error("The body, query or id is not valid (`invalid_request`).");
        responses["403"] = error(
            "A scope or mode the key lacks, or a key it may not manage (`insufficient_scope`, \
             `live_key_required`, `cannot_grant_scope`, `key_too_powerful`, `key_limit_reached`).",
        );
        responses["503"] = error("The key store cannot be reached (`service_unavailable`, `authentication_unavailable`).");
        responses
    };
    let not_found = |mut responses: Value| {
        responses["404"] = error("No key of the caller's account has this id (`not_found`).");
        responses
    };
    let document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tower-api-key demo",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Indicators of compromise, and the account's API keys, behind `ApiKeyLayer`."
        },
        "paths": {
            "/health": { "get": {
                "operationId": "health", "security": [{}],
                "responses": { "200": { "description": "`ok`", "content": { "text/plain": { "schema": { "type": "string" } } } } }
            } },
            "/api/v1/iocs": {
                "get": {
                    "operationId": "listIocs", "summary": "List indicators (scope `iocs:read`).",
                    "parameters": [
                        { "name": "type", "in": "query", "required": false, "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0, "maximum": MAX_LIMIT } }
                    ],
                    "responses": { "200": object("`{\"data\", \"count\", \"authenticated_as\"}`") }
                },
                "post": {
                    "operationId": "submitIoc", "summary": "Submit an indicator (scope `iocs:write`, live keys only).",
                    "requestBody": body(&["type", "value"], json!({ "type": { "type": "string" }, "value": { "type": "string" } })),
                    "responses": {
                        "202": object("Received for review."),
                        "400": error("The body is not `{\"type\", \"value\"}` (`invalid_request`).")
                    }
                }
            },
            "/api/v1/keys": {
                "get": {
                    "operationId": "listKeys", "summary": "The account's keys (scope `keys:read`).",
                    "responses": keys_errors(json!({ "200": object("`{\"data\": [...]}`: the keys, never their secrets.") }))
                },
                "post": {
                    "operationId": "createKey", "summary": "Create a key (scope `keys:write`).",
                    "requestBody": body(&["name"], new_key),
                    "responses": keys_errors(json!({ "201": object("The new key, with its secret `key`, shown once.") }))
                }
            },
            "/api/v1/keys/{id}": {
                "parameters": [id],
                "get": {
                    "operationId": "getKey", "summary": "One key (scope `keys:read`).",
                    "responses": not_found(keys_errors(json!({ "200": object("The key, without its secret.") })))
                },
                "delete": {
                    "operationId": "revokeKey", "summary": "Revoke a key; `?permanent=true` deletes it (scope `keys:write`).",
                    "parameters": [{ "name": "permanent", "in": "query", "required": false, "schema": { "type": "boolean" } }],
                    "responses": not_found(keys_errors(json!({
                        "204": { "description": "Revoked (the record stays), or with `?permanent=true` deleted." }
                    })))
                }
            },
            "/api/v1/keys/{id}/rotate": {
                "parameters": [id],
                "post": {
                    "operationId": "rotateKey", "summary": "Replace a key; the old one works `grace_period` seconds more (scope `keys:write`).",
                    "requestBody": {
                        "content": { "application/json": { "schema": { "type": "object", "properties": {
                            "grace_period": { "type": "integer", "minimum": 1, "description": "Seconds; 86400 by default." }
                        } } } }
                    },
                    "responses": not_found(keys_errors(json!({ "201": object("The replacement, with its secret `key`, shown once.") })))
                }
            }
        }
    });
    let mut document: utoipa::openapi::OpenApi =
        serde_json::from_value(document).expect("the demo's document is an OpenAPI document");
    tower_api_key::openapi::ApiKeySecurity::add_to(&mut document);
    document
}

/// CORS for `/api`: any origin may call it, since the browser sends no credential of its own
/// (keys go in headers that a page sets itself, never in cookies), with the key headers allowed
/// and the request id and rate-limit headers readable.
fn cors() -> CorsLayer {
    use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
    use axum::http::{HeaderName, Method};
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            AUTHORIZATION,
            CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            RETRY_AFTER,
            HeaderName::from_static("ratelimit"),
            HeaderName::from_static("ratelimit-policy"),
        ])
}

/// The "Settings → API Keys" page, a person's way to the keys API.
const KEYS_PAGE: &str = include_str!("keys_page.html");
/// The page's script, served by the demo so that the page's policy runs no inline script.
const KEYS_PAGE_SCRIPT: &str = include_str!("keys_page.js");

/// `GET /settings/api-keys` and its script, outside the key layer: neither holds a secret.
fn keys_page() -> Router {
    let policy = HeaderValue::try_from(keys_page_policy()).expect("the policy is ASCII");
    Router::new()
        .route("/settings/api-keys", get(|| async { Html(KEYS_PAGE) }))
        .route(
            "/settings/api-keys/page.js",
            get(|| async {
                let javascript = HeaderValue::from_static("text/javascript; charset=utf-8");
                ([(CONTENT_TYPE, javascript)], KEYS_PAGE_SCRIPT)
            }),
        )
        .layer(map_response(move |mut response: Response| {
            let headers = response.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(CONTENT_SECURITY_POLICY, policy.clone());
            headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            std::future::ready(response)
        }))
}

/// The page's Content-Security-Policy: its own script, its one `<style>` element (by digest),
/// requests to the demo only; no frames, forms, plugins or other origins.
pub fn keys_page_policy() -> String {
    let style = KEYS_PAGE
        .split_once("<style>")
        .and_then(|(_, rest)| rest.split_once("</style>"))
        .map_or("", |(style, _)| style);
    let digest = base64(&sha2::Sha256::digest(style.as_bytes()));
    format!(
        "default-src 'none'; script-src 'self'; style-src 'sha256-{digest}'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// Standard base64, with padding, for the policy's digest.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (i, byte)| {
            bits | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            text.push(if i <= chunk.len() {
                char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize])
            } else {
                '='
            });
        }
    }
    text
}

/// Answers about an account's keys (one holds a new key) must not be kept by any cache.
async fn no_store(mut response: Response) -> Response {
    let no_store = HeaderValue::from_static("no-store");
    response.headers_mut().insert(CACHE_CONTROL, no_store);
    response
}

/// The demo account's printed keys: a live key with full access, and a test key restricted to
/// [`TEST_KEY_SCOPES`].
pub async fn demo_keys<S: WritableKeyStore>(
    keys: &KeyManager<S>,
    account: &str,
) -> Result<(CreatedKey, CreatedKey), ManageError> {
    let live = keys
        .create(NewKey::new(account, Tier::FREE, "demo"))
        .await?;
    let test = NewKey::new(account, Tier::FREE, "demo (test)")
        .mode(KeyMode::Test)
        .scopes(TEST_KEY_SCOPES);
    Ok((live, keys.create(test).await?))
}

async fn list_iocs(identity: Scoped<IocsRead>, Query(query): Query<IocQuery>) -> Json<Value> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let data: Vec<Value> = IOCS
        .iter()
        .filter(|(kind, _)| query.kind.as_deref().is_none_or(|wanted| *kind == wanted))
        .take(limit)
        .map(|(kind, value)| json!({ "type": kind, "value": value }))
        .collect();
    let identity = identity.into_inner();
    Json(json!({ "data": data, "count": data.len(), "authenticated_as": identity }))
}

/// `POST /api/v1/iocs` `{"type": "ipv4", "value": "192.0.2.1"}`: submits an indicator for
/// review. Live keys only, so that tests never feed the shared list.
async fn submit_ioc(body: Bytes) -> Result<(StatusCode, Json<Value>), ErrorResponse> {
    let ioc: SubmittedIoc = serde_json::from_slice(&body)
        .ok()
        .filter(|ioc: &SubmittedIoc| !ioc.kind.is_empty() && !ioc.value.is_empty())
        .ok_or_else(|| {
            ErrorResponse::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The body must be a JSON object with a non-empty string \"type\" and \"value\".",
            )
        })?;
    let body = json!({ "status": "received", "type": ioc.kind, "value": ioc.value });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmittedIoc {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

async fn health() -> &'static str {
    "ok"
}

/// What `GET /metrics` renders: the Prometheus recorder that `main` installed.
#[cfg(feature = "metrics")]
static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs the Prometheus recorder, with buckets for the store lookup histogram (otherwise it
/// would be a summary), and its upkeep, which drains the histogram's samples every 5 seconds.
#[cfg(feature = "metrics")]
fn install_metrics() {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use tower_api_key::metrics::STORE_LOOKUP_SECONDS;

    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(STORE_LOOKUP_SECONDS.to_owned()), &buckets)
        .and_then(PrometheusBuilder::install_recorder)
        .unwrap_or_else(|error| {
            exit_with(1, &format!("cannot install the metrics recorder: {error}"))
        });
    tower_api_key::metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    _ = METRICS.set(handle);
}

/// `app`, and with the feature `metrics` `GET /metrics`, outside the key layer.
fn with_metrics(app: Router) -> Router {
    #[cfg(feature = "metrics")]
    let app = app.route(
        "/metrics",
        get(|| async {
            let body = METRICS
                .get()
                .map(|handle| handle.render())
                .unwrap_or_default();
            (
                [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                body,
            )
        }),
    );
    app
}

#[tokio::main]
async fn main() {
    // The crate's events (refusals, store failures) and the keys API's, filtered by RUST_LOG;
    // none of them holds a key. With `tracing-redaction`, a key in any other event is redacted.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    #[cfg(feature = "tracing-redaction")]
    let logs = logs.with_writer(tower_api_key::redact::RedactKeys::new(std::io::stdout));
    logs.init();
    #[cfg(feature = "metrics")]
    install_metrics();
    let port = port_from_env();
    let limits = tier_limits(rate_limit_per_minute());
    let rate_limit = rate_limit(limits.clone());
    let store = std::env::var("STORE").unwrap_or_else(|_| "memory".to_owned());
    match store.as_str() {
        "memory" => {
            let keys = KeyManager::new(MemoryKeyStore::new()).tier_limits(limits);
            serve(keys, rate_limit, port).await;
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            let url = required_env("DATABASE_URL");
            let store = cached_postgres(&url, cache_ttl())
                .await
                .unwrap_or_else(|error| exit_with(1, &format!("cannot use PostgreSQL: {error}")));
            serve(KeyManager::new(store).tier_limits(limits), rate_limit, port).await;
        }
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let url = std::env::var("SQLITE_URL").unwrap_or_else(|_| DEFAULT_SQLITE_URL.to_owned());
            let store = tower_api_key::store::SqliteKeyStore::connect(&url)
                .await
                .unwrap_or_else(|error| exit_with(1, &format!("cannot open {url}: {error}")));
            store
                .migrate()
                .await
                .unwrap_or_else(|error| exit_with(1, &format!("cannot apply the schema: {error}")));
            serve(KeyManager::new(store).tier_limits(limits), rate_limit, port).await;
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let url = required_env("REDIS_URL");
            let store = cached_redis(&url, cache_ttl())
                .await
                .unwrap_or_else(|error| exit_with(1, &format!("cannot use Redis: {error}")));
            // One limit for every instance: counted in the Redis that holds the keys.
            let rate_limit = rate_limit.global(store.get_ref().clone());
            serve(KeyManager::new(store).tier_limits(limits), rate_limit, port).await;
        }
        other => exit_with(
            2,
            &format!(
                "STORE must be memory, postgres (built with --features postgres), sqlite \
                 (built with --features sqlite) or redis (built with --features redis), \
                 not {other:?}"
            ),
        ),
    }
}

/// The demo's tiers: the crate's defaults (free: 3 keys, 60 requests per minute; pro: 50 keys,
/// 600 per minute), with `per_minute` requests per minute on the free tier.
pub fn tier_limits(per_minute: u32) -> TierLimits {
    TierLimits::default().with_rate_limit(Tier::FREE, RateLimit::per_minute(per_minute))
}

/// The demo's rate limit, counted in this process: each key limited by `limits`, with the
/// `RateLimit` headers on every answer.
pub fn rate_limit(limits: TierLimits) -> RateLimitLayer {
    RateLimitLayer::new(limits).headers_on_success()
}

/// `RATE_LIMIT_PER_MINUTE`, or 60.
fn rate_limit_per_minute() -> u32 {
    match std::env::var("RATE_LIMIT_PER_MINUTE") {
        Err(_) => 60,
        Ok(requests) => requests
            .parse()
            .ok()
            .filter(|requests| *requests > 0)
            .unwrap_or_else(|| exit_with(2, "RATE_LIMIT_PER_MINUTE must be a whole number from 1")),
    }
}

/// How long the cache keeps a record: `CACHE_TTL_SECONDS`, or the cache's default of 10 s. With
/// push invalidation this is only the backstop.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn cache_ttl() -> Duration {
    match std::env::var("CACHE_TTL_SECONDS") {
        Err(_) => Duration::from_secs(10),
        Ok(seconds) => seconds
            .parse()
            .map(Duration::from_secs)
            .unwrap_or_else(|_| {
                exit_with(2, "CACHE_TTL_SECONDS must be a whole number of seconds")
            }),
    }
}

/// The store as a deployment should run it: PostgreSQL at `url`, schema applied, behind a
/// cache that keeps records for `ttl` and evicts a key as soon as any instance changes it
/// (`LISTEN`/`NOTIFY`). Repeat requests with a key make no round trip to the database.
#[cfg(feature = "postgres")]
pub async fn cached_postgres(
    url: &str,
    ttl: Duration,
) -> Result<tower_api_key::store::CachedKeyStore<tower_api_key::store::PgKeyStore>, String> {
    use tower_api_key::store::{CachedKeyStore, PgKeyStore};
    let pool = sqlx::PgPool::connect(url)
        .await
        .map_err(|error| format!("cannot reach PostgreSQL: {error}"))?;
    let store = PgKeyStore::new(pool);
    store
        .migrate()
        .await
        .map_err(|error| format!("cannot apply the schema: {error}"))?;
    Ok(CachedKeyStore::new(store.clone())
        .ttl(ttl)
        .push_invalidation(store.changes()))
}

/// The store as a deployment should run it: Redis at `url`, behind a cache that keeps records
/// for `ttl` and evicts a key as soon as any instance changes it (pub/sub).
#[cfg(feature = "redis")]
pub async fn cached_redis(
    url: &str,
    ttl: Duration,
) -> Result<tower_api_key::store::CachedKeyStore<tower_api_key::store::RedisKeyStore>, String> {
    use tower_api_key::store::{CachedKeyStore, RedisKeyStore};
    let client = redis::Client::open(url).map_err(|error| format!("bad REDIS_URL: {error}"))?;
    let connection = redis::aio::ConnectionManager::new(client.clone())
        .await
        .map_err(|error| format!("cannot reach Redis: {error}"))?;
    let store = RedisKeyStore::new(connection);
    Ok(CachedKeyStore::new(store.clone())
        .ttl(ttl)
        .push_invalidation(store.changes(client)))
}

/// Creates the demo keys, prints them, and serves until Ctrl-C.
async fn serve<S: WritableKeyStore + Clone>(
    keys: KeyManager<S>,
    rate_limit: RateLimitLayer,
    port: u16,
) {
    // A fresh free-tier account per start, so a persistent store never fills its quota of 3;
    // the printed keys are the first 2 of its 3.
    let account = format!(
        "acct_demo_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (live, test) = demo_keys(&keys, &account)
        .await
        .unwrap_or_else(|error| exit_with(1, &format!("cannot create the demo keys: {error}")));
    let key = live.key;

    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
        Ok(listener) => listener,
        Err(error) => exit_with(1, &format!("cannot listen on 127.0.0.1:{port}: {error}")),
    };
    // Ask the socket, so that PORT=0 prints the port the system picked.
    let address = listener
        .local_addr()
        .expect("a bound socket has an address");
    print!(
        "{}",
        banner(&address.to_string(), &account, &key, &test.key)
    );

    let app = with_secret_scanning(with_metrics(app(keys.clone(), rate_limit)), keys);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .unwrap_or_else(|error| exit_with(1, &format!("server error: {error}")));
}

/// `app`, and when `SECRET_SCANNING_KEYS_FILE` is set, `POST /api/v1/secret-scanning` (feature
/// `secret-scanning`), outside the key layer, checked against that file's public keys.
fn with_secret_scanning<S: WritableKeyStore + Clone>(app: Router, keys: KeyManager<S>) -> Router {
    let Some(path) = std::env::var_os("SECRET_SCANNING_KEYS_FILE") else {
        return app;
    };
    #[cfg(feature = "secret-scanning")]
    {
        let public_keys = read_public_keys(std::path::Path::new(&path))
            .unwrap_or_else(|error| exit_with(2, &error));
        secret_scanning(app, keys, public_keys)
    }
    #[cfg(not(feature = "secret-scanning"))]
    {
        let _ = (app, keys);
        exit_with(
            2,
            &format!(
                "SECRET_SCANNING_KEYS_FILE is set ({path:?}) but the demo was built without \
                 --features secret-scanning"
            ),
        )
    }
}

/// `app` with GitHub's secret scanning reports taken at `POST /api/v1/secret-scanning`, outside
/// the key layer, signed by a key of `public_keys`.
#[cfg(feature = "secret-scanning")]
pub fn secret_scanning<S: WritableKeyStore + Clone>(
    app: Router,
    keys: KeyManager<S>,
    public_keys: tower_api_key::secret_scanning::PublicKeys,
) -> Router {
    let reports = tower_api_key::secret_scanning::router(keys, public_keys);
    app.nest("/api/v1/secret-scanning", reports)
}

/// The public keys in the file at `path`, in GitHub's format.
#[cfg(feature = "secret-scanning")]
pub fn read_public_keys(
    path: &std::path::Path,
) -> Result<tower_api_key::secret_scanning::PublicKeys, String> {
    let json =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    tower_api_key::secret_scanning::PublicKeys::from_json(&json)
        .map_err(|error| format!("{}: {error}", path.display()))
}

/// What the demo prints at start: each key alone on its own line, under a line saying what it
/// is, so that `grep '^sk_live_'` finds the live key; then curl commands to try.
pub fn banner(address: &str, account: &str, live: &ApiKey, test: &ApiKey) -> String {
    let (live, test) = (live.expose_secret(), test.expose_secret());
    let scopes = TEST_KEY_SCOPES.join(" ");
    format!(
        "listening on http://{address}\n\
         account {account}: free tier, 3 active keys at most; the 2 below are active, so it may create 1 more\n\
         live key, full access (shown once):\n\
         {live}\n\
         test key, scopes {scopes} (shown once):\n\
         {test}\n\
         try:\n  \
         curl -H \"Authorization: Bearer {live}\" \"http://{address}/api/v1/iocs?type=ipv4&limit=10\"\n  \
         curl -H \"X-API-Key: {test}\" http://{address}/api/v1/keys\n\
         or manage the keys in a browser: http://{address}/settings/api-keys\n"
    )
}

#[cfg(any(feature = "postgres", feature = "redis"))]
fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| exit_with(2, &format!("{name} must be set")))
}

/// The port from the `PORT` environment variable, or [`DEFAULT_PORT`].
fn port_from_env() -> u16 {
    let Some(port) = std::env::var_os("PORT") else {
        return DEFAULT_PORT;
    };
    port.to_str()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| {
            exit_with(
                2,
                &format!("PORT must be a number from 0 to 65535, not {port:?}"),
            )
        })
}

async fn shutdown_signal() {
    // Without a Ctrl-C handler, serve until killed rather than stop at once.
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn exit_with(code: i32, message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(code)
}
