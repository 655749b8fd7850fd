//! The demo's OpenAPI document (`GET /openapi.json`, feature `utoipa`): valid against the
//! OpenAPI 3.1 schema, and true to what the demo answers.
//!
//! `data/openapi-3.1-schema.json` is the OpenAPI Initiative's schema for 3.1 documents
//! (`https://spec.openapis.org/oas/3.1/schema/2022-10-07`, `schemas/v3.1/schema.json` in
//! OAI/OpenAPI-Specification, Apache-2.0), vendored so that nothing is fetched. It checks the
//! document's structure; the JSON Schemas inside it are checked by compiling the envelope's.
#![cfg(all(feature = "utoipa", feature = "axum", feature = "rate-limit"))]

use std::net::SocketAddr;

use http::{Method, StatusCode};
use serde_json::Value;
use tower_api_key::openapi::{ApiKeySecurity, ERROR_CODES, ERROR_SCHEMA};
use tower_api_key::{ApiKey, KeyManager, MemoryKeyStore, NewKey, Tier};

use crate::common::{self, Answer};
use crate::demo::example;

const OPENAPI_3_1_SCHEMA: &str = include_str!("data/openapi-3.1-schema.json");

/// The demo on 127.0.0.1, each free-tier key limited to `per_minute` requests, and its keys.
async fn start(
    per_minute: u32,
) -> (
    SocketAddr,
    KeyManager<MemoryKeyStore>,
    String,
    ApiKey,
    ApiKey,
) {
    let store = MemoryKeyStore::new();
    let keys = KeyManager::new(store.clone());
    let account = common::suite::account();
    let (live, test) = example::demo_keys(&keys, &account).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = example::app(
        KeyManager::new(store),
        example::rate_limit(example::tier_limits(per_minute)),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, keys, account, live.key, test.key)
}

async fn call(
    address: SocketAddr,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Answer {
    let headers: Vec<(&str, &[u8])> = key
        .iter()
        .map(|key| ("x-api-key", key.as_bytes()))
        .collect();
    common::http(address, method, path, &headers, body).await
}

/// The document as the demo serves it.
async fn served_document(address: SocketAddr) -> Value {
    let answer = common::http(address, Method::GET, "/openapi.json", &[], "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "application/json");
    answer.json()
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    (validator.iter_errors(instance))
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect()
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let (address, ..) = start(60).await;
    let document = served_document(address).await;
    let schema: Value = serde_json::from_str(OPENAPI_3_1_SCHEMA).unwrap();
    assert_eq!(
        schema["$id"],
        "https://spec.openapis.org/oas/3.1/schema/2022-10-07"
    );
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert_eq!(errors(&validator, &document), Vec::<String>::new());
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1."));

    // The schema does check: a document without `info`, or with a bad scheme, is refused.
    let mut broken = document.clone();
    broken.as_object_mut().unwrap().remove("info");
    assert!(!validator.is_valid(&broken));
    let mut broken = document.clone();
    broken["components"]["securitySchemes"]["api_key"]["in"] = "body".into();
    assert!(!validator.is_valid(&broken));

    // Every `$ref` resolves inside the document.
    let mut references = Vec::new();
    collect_refs(&document, &mut references);
    assert!(!references.is_empty());
    for reference in references {
        let pointer = reference.strip_prefix('#').expect("local references only");
        assert!(document.pointer(pointer).is_some(), "{reference} resolves");
    }
}

#[tokio::test]
async fn the_document_has_the_crates_security_and_refusals() {
    let (address, ..) = start(60).await;
    let document = served_document(address).await;
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(
        schemes["api_key"],
        serde_json::json!({ "type": "apiKey", "in": "header", "name": "X-API-Key", "description": schemes["api_key"]["description"] })
    );
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(
        document["security"],
        serde_json::json!([{ "api_key": [] }, { "bearer": [] }])
    );
    assert_eq!(
        document["paths"]["/health"]["get"]["security"],
        serde_json::json!([{}])
    );

    // The envelope's examples match the envelope.
    let envelope = envelope_validator(&document);
    let code_enum = &document["components"]["schemas"][ERROR_SCHEMA]["properties"]["error"]
        ["properties"]["code"]["enum"];
    assert_eq!(code_enum, &serde_json::json!(ERROR_CODES));
    let examples = [document["components"]["schemas"][ERROR_SCHEMA]["example"].clone()]
        .into_iter()
        .chain(
            document["components"]["responses"]
                .as_object()
                .unwrap()
                .values()
                .map(|response| response["content"]["application/json"]["example"].clone()),
        );
    for example in examples {
        assert_eq!(
            errors(&envelope, &example),
            Vec::<String>::new(),
            "{example}"
        );
    }

    // Every operation under `/api` documents the layer's refusals.
    let paths = document["paths"].as_object().unwrap();
    for (path, item) in paths.iter().filter(|(path, _)| path.starts_with("/api/")) {
        for (method, operation) in item
            .as_object()
            .unwrap()
            .iter()
            .filter(|(key, _)| *key != "parameters")
        {
            for status in ["401", "403", "429", "503"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} documents {status}"
                );
            }
        }
    }

    // The document built by hand is the one `ApiKeySecurity` completes: applying it again
    // changes nothing.
    let mut again = example::openapi_document();
    ApiKeySecurity::add_to(&mut again);
    assert_eq!(serde_json::to_value(again).unwrap(), document);
}

/// A request (method, path, key, body) and the status and code the demo answers it with.
type Case<'a> = (
    Method,
    &'a str,
    Option<&'a str>,
    &'a str,
    StatusCode,
    &'a str,
);

/// The demo's refusals: each one's status is documented for its operation, and its body
/// matches the documented schema, its `code` one of the documented codes.
#[tokio::test]
async fn the_demos_refusals_are_documented() {
    const PER_MINUTE: u32 = 5;
    let (address, keys, account, live, test) = start(PER_MINUTE).await;
    let document = served_document(address).await;
    // On the pro tier, so that the account may have more than the free tier's 3 keys.
    let reader = (keys
        .create(NewKey::new(&account, Tier::PRO, "reader").scopes(["iocs:read"]))
        .await)
        .unwrap()
        .key;
    let (live, test, reader) = (
        live.expose_secret(),
        test.expose_secret(),
        reader.expose_secret(),
    );

    let cases: [Case<'_>; 8] = [
        (
            Method::GET,
            "/api/v1/iocs",
            None,
            "",
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
        ),
        (
            Method::GET,
            "/api/v1/keys",
            None,
            "",
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
        ),
        (
            Method::POST,
            "/api/v1/iocs",
            Some(reader),
            r#"{"type":"ipv4","value":"192.0.2.1"}"#,
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            Method::POST,
            "/api/v1/iocs",
            Some(test),
            r#"{"type":"ipv4","value":"192.0.2.1"}"#,
            StatusCode::FORBIDDEN,
            "live_key_required",
        ),
        (
            Method::GET,
            "/api/v1/keys",
            Some(reader),
            "",
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            Method::POST,
            "/api/v1/iocs",
            Some(live),
            "not json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/api/v1/keys/key_unknown",
            Some(live),
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/api/v1/keys/key_unknown/rotate",
            Some(live),
            "{}",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, key, body, status, code) in cases {
        let answer = call(address, method.clone(), path, key, body).await;
        assert_eq!(answer.status, status, "{method} {path}: {:?}", answer.body);
        assert_documented(&document, &method, path, &answer, code);
    }

    // An invalid key, sent as a bearer token: the other scheme.
    let headers: &common::Headers<'_> = &[(
        "authorization",
        b"Bearer sk_live_0000000000000000000000000000000000",
    )];
    let answer = common::http(address, Method::GET, "/api/v1/iocs", headers, "").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_documented(
        &document,
        &Method::GET,
        "/api/v1/iocs",
        &answer,
        "invalid_api_key",
    );
    let answer = call(
        address,
        Method::GET,
        "/api/v1/iocs",
        Some("sk_live_not_a_key"),
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_documented(
        &document,
        &Method::GET,
        "/api/v1/iocs",
        &answer,
        "invalid_api_key",
    );

    // Past the limit: 429, with the documented headers.
    let limited = (keys
        .create(
            NewKey::new(&account, Tier::PRO, "limited")
                .rate_limit(tower_api_key::limit::RateLimit::per_minute(PER_MINUTE)),
        )
        .await)
        .unwrap()
        .key;
    let limited = Some(limited.expose_secret());
    let mut answer = call(address, Method::GET, "/api/v1/iocs", limited, "").await;
    for _ in 0..PER_MINUTE * 2 {
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        answer = call(address, Method::GET, "/api/v1/iocs", limited, "").await;
    }
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    let response = assert_documented(
        &document,
        &Method::GET,
        "/api/v1/iocs",
        &answer,
        "rate_limited",
    );
    for header in response["headers"].as_object().unwrap().keys() {
        assert!(
            answer.headers.contains_key(header.as_str()),
            "the 429 has {header}"
        );
    }
    assert!(response["headers"].get("Retry-After").is_some());
    assert!(response["headers"].get("RateLimit-Policy").is_some());
    assert!(response["headers"].get("RateLimit").is_some());
}

/// The layer's `503`, over a store that is down, is the documented `ServiceUnavailable`. (The
/// demo's stores are writable ones; the layer is the same.)
#[tokio::test]
async fn a_store_outage_is_the_documented_503() {
    use tower::{ServiceBuilder, ServiceExt};
    let (address, ..) = start(60).await;
    let document = served_document(address).await;
    let key = KeyManager::new(MemoryKeyStore::new())
        .create(NewKey::new("acct_1", Tier::FREE, "any"))
        .await
        .unwrap()
        .key;
    let service = ServiceBuilder::new()
        .layer(tower_api_key::ApiKeyLayer::new(common::FailingStore))
        .service_fn(common::echo_identity);
    let request = common::request(&[("x-api-key", key.expose_secret().as_bytes())]);
    let answer = Answer::read(service.oneshot(request).await.unwrap()).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_documented(
        &document,
        &Method::GET,
        "/api/v1/iocs",
        &answer,
        "authentication_unavailable",
    );
}

/// Asserts that `answer`'s status is documented for `method` `path`, in the envelope, and that
/// its body matches the envelope's schema with `code`; returns the documented response.
fn assert_documented(
    document: &Value,
    method: &Method,
    path: &str,
    answer: &Answer,
    code: &str,
) -> Value {
    let operation = operation(document, method, path);
    let status = answer.status.as_str();
    let mut response = operation["responses"]
        .get(status)
        .unwrap_or_else(|| panic!("{method} {path} documents {status}"))
        .clone();
    if let Some(reference) = response.get("$ref").and_then(Value::as_str) {
        response = document
            .pointer(reference.trim_start_matches('#'))
            .unwrap()
            .clone();
    }
    let schema = &response["content"]["application/json"]["schema"];
    assert_eq!(
        schema["$ref"],
        format!("#/components/schemas/{ERROR_SCHEMA}"),
        "{method} {path} {status}"
    );
    assert_eq!(answer.header("content-type"), "application/json");
    let body = answer.json();
    assert_eq!(
        errors(&envelope_validator(document), &body),
        Vec::<String>::new(),
        "{body}"
    );
    assert_eq!(body["error"]["code"], code);
    assert!(ERROR_CODES.contains(&code));
    response
}

/// The envelope's schema, compiled on its own (JSON Schema 2020-12, as OpenAPI 3.1's are).
fn envelope_validator(document: &Value) -> jsonschema::Validator {
    let schema = &document["components"]["schemas"][ERROR_SCHEMA];
    jsonschema::draft202012::new(schema).unwrap()
}

/// The operation that `method` `path` reaches, matching `{...}` segments to anything.
fn operation<'a>(document: &'a Value, method: &Method, path: &str) -> &'a Value {
    let path = path.split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    let (_, item) = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(template, _)| {
            let template: Vec<&str> = template.split('/').collect();
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(template, segment)| {
                    template == segment || (template.starts_with('{') && template.ends_with('}'))
                })
        })
        .unwrap_or_else(|| panic!("{path} is documented"));
    let operation = &item[method.as_str().to_ascii_lowercase()];
    assert!(operation.is_object(), "{method} {path} is documented");
    operation
}

fn collect_refs(value: &Value, references: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get("$ref") {
                references.push(reference.clone());
            }
            object
                .values()
                .for_each(|value| collect_refs(value, references));
        }
        Value::Array(array) => array
            .iter()
            .for_each(|value| collect_refs(value, references)),
        _ => {}
    }
}
