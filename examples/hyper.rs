//! The IOC API of `examples/axum.rs` with hyper and hyper-util only: `ApiKeyLayer` wraps a plain
//! tower service.
//!
//! ```text
//! cargo run --example hyper           # PORT=8080 cargo run --example hyper for another port
//! ```

use std::convert::Infallible;
use std::net::Ipv4Addr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_api_key::{
    key::KeyFormat, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier,
};

const DEFAULT_PORT: u16 = 3001;
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

/// The inner service: only requests with an active key reach it.
async fn handler(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET || request.uri().path() != "/api/v1/iocs" {
        return Ok(error(StatusCode::NOT_FOUND, "not_found", "No such route."));
    }
    // The layer always sets it; if it ever did not, refuse rather than serve anonymously.
    let Some(identity) = request.extensions().get::<KeyIdentity>() else {
        let message = "The request reached the handler unauthenticated.";
        return Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            message,
        ));
    };

    let query = request.uri().query().unwrap_or_default();
    let kind = query_param(query, "type");
    let limit = match query_param(query, "limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(limit)) => limit.min(MAX_LIMIT),
        Some(Err(_)) => {
            let message = "limit must be a whole number.";
            return Ok(error(StatusCode::BAD_REQUEST, "invalid_parameter", message));
        }
    };
    let data: Vec<Value> = IOCS
        .iter()
        .filter(|(ioc_kind, _)| kind.is_none_or(|kind| *ioc_kind == kind))
        .take(limit)
        .map(|(kind, value)| json!({ "type": kind, "value": value }))
        .collect();
    let body = json!({ "data": data, "count": data.len(), "authenticated_as": identity });
    Ok(json_response(StatusCode::OK, &body))
}

/// The value of the first `name=value` pair of a query string; no percent-decoding is needed
/// for the values this API takes.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// An error in the same envelope as the layer's refusals, with a fresh request id.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let body = json!({ "error": { "code": code, "message": message, "request_id": request_id } });
    let mut response = json_response(status, &body);
    let request_id = HeaderValue::from_str(&request_id).expect("hex digits are a header value");
    response.headers_mut().insert("x-request-id", request_id);
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let port = port_from_env();

    let store = MemoryKeyStore::new();
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::random(), "acct_demo", "demo", Tier::FREE);
    store.insert(KeyRecord::new(key.digest(), identity));

    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(store))
        .service_fn(handler);

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let address = listener.local_addr()?;
    println!("listening on http://{address}");
    println!("demo API key (shown once):");
    println!("{}", key.expose_secret());
    println!(
        "curl -H \"Authorization: Bearer {}\" \"http://{address}/api/v1/iocs?type=ipv4&limit=10\"",
        key.expose_secret()
    );

    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = connection {
                eprintln!("connection error: {error}");
            }
        });
    }
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
