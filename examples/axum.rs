//! An indicator-of-compromise API behind `ApiKeyLayer`, with axum.
//!
//! ```text
//! cargo run --example axum            # PORT=8080 cargo run --example axum for another port
//! ```
//!
//! It prints a demo key and a curl command to try it. `/api/...` needs a key; `/health` does not.

use std::net::Ipv4Addr;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower_api_key::{ApiKeyLayer, KeyFormat, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier};

const DEFAULT_PORT: u16 = 3000;
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

/// The whole service: `/health` is open, everything under `/api` needs a key from `store`.
fn app(store: MemoryKeyStore) -> Router {
    let api = Router::new()
        .route("/v1/iocs", get(list_iocs))
        // Inside the layer, so that callers without a key cannot map which routes exist.
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(ApiKeyLayer::new(store));
    Router::new()
        .route("/health", get(health))
        .nest("/api", api)
}

async fn list_iocs(identity: KeyIdentity, Query(query): Query<IocQuery>) -> Json<Value> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let data: Vec<Value> = IOCS
        .iter()
        .filter(|(kind, _)| query.kind.as_deref().is_none_or(|wanted| *kind == wanted))
        .take(limit)
        .map(|(kind, value)| json!({ "type": kind, "value": value }))
        .collect();
    Json(json!({ "data": data, "count": data.len(), "authenticated_as": identity }))
}

async fn health() -> &'static str {
    "ok"
}

#[tokio::main]
async fn main() {
    let port = port_from_env();

    let store = MemoryKeyStore::new();
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::random(), "acct_demo", "demo", Tier::FREE);
    store.insert(KeyRecord::new(key.digest(), identity));

    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
        Ok(listener) => listener,
        Err(error) => exit_with(1, &format!("cannot listen on 127.0.0.1:{port}: {error}")),
    };
    // Ask the socket, so that PORT=0 prints the port the system picked.
    let address = listener
        .local_addr()
        .expect("a bound socket has an address");
    println!("listening on http://{address}");
    println!("demo API key (shown once):");
    println!("{}", key.expose_secret());
    println!(
        "curl -H \"Authorization: Bearer {}\" \"http://{address}/api/v1/iocs?type=ipv4&limit=10\"",
        key.expose_secret()
    );

    axum::serve(listener, app(store))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .unwrap_or_else(|error| exit_with(1, &format!("server error: {error}")));
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
