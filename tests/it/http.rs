//! The layer in a real axum server on 127.0.0.1, called over HTTP/1.1 by a hyper client.
#![cfg(feature = "axum")]

use crate::common;

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use common::{assert_envelope, Answer, FailingStore, Headers, Keys};
use http::StatusCode;
use tower_api_key::{ApiKeyLayer, KeyIdentity};

async fn whoami(identity: KeyIdentity) -> Json<KeyIdentity> {
    Json(identity)
}

async fn credentials_are_sensitive(headers: http::HeaderMap) -> String {
    let sensitive = ["authorization", "x-api-key"]
        .iter()
        .flat_map(|name| headers.get_all(*name))
        .all(http::HeaderValue::is_sensitive);
    sensitive.to_string()
}

async fn maybe_whoami(identity: Option<KeyIdentity>) -> String {
    identity.map_or_else(
        || "anonymous".to_owned(),
        |identity| identity.account_id().to_owned(),
    )
}

/// Serves `/api/whoami` behind `layer`, and `/open/*` outside it, on a free loopback port.
async fn serve(layer: ApiKeyLayer) -> SocketAddr {
    let app = Router::new()
        .route("/api/whoami", get(whoami))
        .route("/api/sensitive", get(credentials_are_sensitive))
        .layer(layer)
        .route("/open/whoami", get(whoami))
        .route("/open/maybe", get(maybe_whoami));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

async fn get_with(address: SocketAddr, path: &str, headers: &Headers<'_>) -> Answer {
    common::http(address, http::Method::GET, path, headers, "").await
}

#[tokio::test]
async fn valid_key_gets_200_with_identity_over_http() {
    let keys = Keys::new();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    let bearer = format!("Bearer {}", keys.active.expose_secret());
    let answer = get_with(
        address,
        "/api/whoami",
        &[("authorization", bearer.as_bytes())],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["key_id"], "key_active");
    assert_eq!(answer.json()["account_id"], "acct_1");
}

#[tokio::test]
async fn each_refusal_has_its_envelope_over_http() {
    let keys = Keys::new();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    let active = keys.active.expose_secret().as_bytes();
    let unknown = keys.unknown.expose_secret().as_bytes();
    let cases: [(&Headers<'_>, &str, &str); 7] = [
        (&[], "missing_api_key", "Bearer"),
        (
            &[("x-api-key", b"sk_live_typo")],
            "invalid_api_key",
            r#"Bearer error="invalid_token""#,
        ),
        (
            &[("x-api-key", unknown)],
            "invalid_api_key",
            r#"Bearer error="invalid_token""#,
        ),
        (
            &[("x-api-key", keys.revoked.expose_secret().as_bytes())],
            "expired_api_key",
            r#"Bearer error="invalid_token""#,
        ),
        (
            &[("x-api-key", keys.expired.expose_secret().as_bytes())],
            "expired_api_key",
            r#"Bearer error="invalid_token""#,
        ),
        (
            &[
                ("x-api-key", active),
                ("authorization", b"Bearer sk_live_other"),
            ],
            "invalid_api_key",
            r#"Bearer error="invalid_token""#,
        ),
        (
            &[("x-api-key", b"sk_live_\xff\xfe")],
            "invalid_api_key",
            r#"Bearer error="invalid_token""#,
        ),
    ];
    for (headers, code, challenge) in cases {
        let answer = get_with(address, "/api/whoami", headers).await;
        assert_envelope(&answer, StatusCode::UNAUTHORIZED, code);
        assert_eq!(answer.header("www-authenticate"), challenge, "{code}");
    }
}

#[tokio::test]
async fn ten_kilobyte_header_is_invalid_over_http() {
    let keys = Keys::new();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    let value = vec![b'a'; 10 * 1024];
    let answer = get_with(address, "/api/whoami", &[("x-api-key", &value)]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

#[tokio::test]
async fn key_in_query_string_is_refused_over_http() {
    let keys = Keys::new();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    let key = keys.active.expose_secret();
    let path = format!("/api/whoami?api_key={key}");
    let answer = get_with(address, &path, &[("x-api-key", key.as_bytes())]).await;
    assert_envelope(&answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

/// A key of the default shape (`sk_live_` and 38 base62 characters) whose checksum is wrong.
fn key_with_a_wrong_checksum(key: &str) -> String {
    let last = key.len() - 1;
    let swapped = if key.ends_with('0') { "1" } else { "0" };
    let typo = format!("{}{swapped}", &key[..last]);
    assert!(!tower_api_key::key::KeyFormat::default().is_well_formed(&typo));
    typo
}

/// The answer to a key in the query string: 401 `invalid_api_key`, `invalid_request`.
fn assert_key_in_query_refusal(answer: &Answer, query: &str) {
    assert_envelope(answer, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(
        answer.header("www-authenticate"),
        r#"Bearer error="invalid_request""#,
        "{query}"
    );
}

#[tokio::test]
async fn query_values_that_merely_start_with_a_prefix_pass_over_http() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().to_owned();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    for query in ["type=sk_test_x", "filter=sk_abc", "q=sk_live_abc&page=2"] {
        let path = format!("/api/whoami?{query}");
        let answer = get_with(address, &path, &[("x-api-key", key.as_bytes())]).await;
        assert_eq!(answer.status, StatusCode::OK, "{query}");
        assert_eq!(answer.json()["key_id"], "key_active", "{query}");
    }
}

#[tokio::test]
async fn key_shaped_query_values_are_refused_over_http() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().to_owned();
    let unknown = keys.unknown.expose_secret().to_owned();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    for query in [
        format!("q={}", key_with_a_wrong_checksum(&unknown)),
        format!("token={unknown}"),
        format!("token={key}"),
        format!("q={}", unknown.replace('_', "%5F")),
        format!("q=foo+{unknown}"),
        format!("q=see%20{unknown}%2C"),
    ] {
        let path = format!("/api/whoami?{query}");
        let answer = get_with(address, &path, &[("x-api-key", key.as_bytes())]).await;
        assert_key_in_query_refusal(&answer, &query);
    }
}

#[tokio::test]
async fn key_shaped_query_parameter_name_is_refused_and_never_echoed_over_http() {
    let keys = Keys::new();
    let key = keys.active.expose_secret().to_owned();
    let name = key_with_a_wrong_checksum(keys.unknown.expose_secret());
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    for query in [name.clone(), format!("page=2&{name}=1")] {
        let path = format!("/api/whoami?{query}");
        let answer = get_with(address, &path, &[("x-api-key", key.as_bytes())]).await;
        assert_key_in_query_refusal(&answer, &query);
        let body = String::from_utf8_lossy(&answer.body);
        assert!(!body.contains(&name["sk_live_".len()..]), "{body}");
        assert!(answer
            .headers
            .values()
            .all(|value| !String::from_utf8_lossy(value.as_bytes()).contains(&name[8..])));
    }
}

#[tokio::test]
async fn store_failure_is_503_over_http() {
    let keys = Keys::new();
    let address = serve(ApiKeyLayer::new(FailingStore)).await;
    let key = keys.active.expose_secret().as_bytes();
    let answer = get_with(address, "/api/whoami", &[("x-api-key", key)]).await;
    assert_envelope(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication_unavailable",
    );
}

#[tokio::test]
async fn incoming_request_id_is_reused_over_http() {
    let address = serve(ApiKeyLayer::new(Keys::new().store)).await;
    let answer = get_with(address, "/api/whoami", &[("x-request-id", b"lb-7f3a")]).await;
    assert_eq!(answer.header("x-request-id"), "lb-7f3a");
    assert_eq!(answer.json()["error"]["request_id"], "lb-7f3a");
}

#[tokio::test]
async fn extractor_outside_the_layer_fails_closed_with_the_envelope() {
    let keys = Keys::new();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    let key = keys.active.expose_secret().as_bytes();
    let answer = get_with(address, "/open/whoami", &[("x-api-key", key)]).await;
    assert_envelope(&answer, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
}

#[tokio::test]
async fn optional_extractor_outside_the_layer_is_none() {
    let address = serve(ApiKeyLayer::new(Keys::new().store)).await;
    let answer = get_with(address, "/open/maybe", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "anonymous");
}

#[tokio::test]
async fn credential_rules_hold_over_http() {
    let keys = Keys::new();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    let key = keys.active.expose_secret();
    let bearer = |scheme: &str| format!("{scheme} {key}").into_bytes();
    let padded = format!(" {key}\t").into_bytes();
    let other = keys.unknown.expose_secret().as_bytes();
    // (case, headers, expected outcome)
    type Row<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>, &'a str);
    let rows: Vec<Row<'_>> = vec![
        (
            "lowercase scheme",
            vec![("authorization", bearer("bearer"))],
            "ok",
        ),
        (
            "uppercase scheme",
            vec![("authorization", bearer("BEARER"))],
            "ok",
        ),
        (
            "several spaces",
            vec![("authorization", bearer("Bearer   "))],
            "ok",
        ),
        ("padded x-api-key", vec![("x-api-key", padded)], "ok"),
        (
            "same key in both headers",
            vec![
                ("authorization", bearer("Bearer")),
                ("x-api-key", key.into()),
            ],
            "ok",
        ),
        (
            "repeated header, same key",
            vec![("x-api-key", key.into()), ("x-api-key", key.into())],
            "ok",
        ),
        (
            "repeated header, different keys",
            vec![("x-api-key", key.into()), ("x-api-key", other.into())],
            "invalid_api_key",
        ),
        (
            "basic alone",
            vec![("authorization", b"Basic dTpw".to_vec())],
            "missing_api_key",
        ),
        (
            "basic with x-api-key",
            vec![
                ("authorization", b"Basic dTpw".to_vec()),
                ("x-api-key", key.into()),
            ],
            "ok",
        ),
        (
            "empty bearer",
            vec![("authorization", b"Bearer".to_vec())],
            "missing_api_key",
        ),
        (
            "empty x-api-key",
            vec![("x-api-key", Vec::new())],
            "missing_api_key",
        ),
        (
            "inner space",
            vec![("x-api-key", b"sk_live_a b".to_vec())],
            "invalid_api_key",
        ),
    ];
    for (name, headers, expected) in rows {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let answer = get_with(address, "/api/whoami", &headers).await;
        let outcome = if answer.status == StatusCode::OK {
            "ok".to_owned()
        } else {
            answer.error_code()
        };
        assert_eq!(outcome, expected, "{name}");
    }
}

#[tokio::test]
async fn credential_headers_are_sensitive_in_the_handler_over_http() {
    let keys = Keys::new();
    let address = serve(ApiKeyLayer::new(keys.store)).await;
    let key = keys.active.expose_secret().as_bytes();
    let bearer = format!("Bearer {}", keys.active.expose_secret());
    let headers: &Headers<'_> = &[("authorization", bearer.as_bytes()), ("x-api-key", key)];
    let answer = get_with(address, "/api/sensitive", headers).await;
    assert_eq!(answer.body, "true");
}
