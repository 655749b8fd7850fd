//! The layer in an OpenAPI document, with [`utoipa`]: its two security schemes, the error
//! envelope as a schema, and its refusals as reusable responses (feature `utoipa`).
//!
//! [`ApiKeySecurity`] adds to a document, in one call:
//!
//! | where                               | name                      | what |
//! |-------------------------------------|---------------------------|------|
//! | `components.securitySchemes`        | [`API_KEY_SCHEME`]        | `apiKey` in the header `X-API-Key` |
//! | `components.securitySchemes`        | [`BEARER_SCHEME`]         | `http`, scheme `bearer` (`Authorization: Bearer sk_...`) |
//! | `security`                          |                           | either scheme, for every operation that sets no `security` of its own |
//! | `components.schemas`                | [`ERROR_SCHEMA`]          | `{"error":{"code","message","request_id"}}`, `code` one of [`ERROR_CODES`] |
//! | `components.responses`              | [`UNAUTHORIZED`]          | `401`: no key, or a key that is invalid or expired |
//! | `components.responses`              | [`FORBIDDEN`]             | `403`: a scope or mode the key lacks |
//! | `components.responses`              | [`TOO_MANY_REQUESTS`]     | `429`: rate limited or out of credits, with `Retry-After`, `RateLimit-Policy` and `RateLimit` |
//! | `components.responses`              | [`SERVICE_UNAVAILABLE`]   | `503`: the key store cannot be reached |
//!
//! Each response has an example body. Every operation already in the document that the key
//! protects, that is, one without a `security` of its own, or whose `security` is not only the
//! empty requirement `{}`, gets a reference to each of the four responses for the statuses it
//! does not document itself. An operation that needs no key says so with `security: [{}]`
//! (`security(())` in `#[utoipa::path]`), and is left alone. Apply the modifier last, after
//! the operations are in the document, or call [`ApiKeySecurity::add_to`] again when more are
//! added; it replaces only what it adds.
//!
//! ```
//! use tower_api_key::openapi::ApiKeySecurity;
//! use utoipa::OpenApi;
//!
//! #[utoipa::path(get, path = "/api/v1/iocs", responses((status = 200, description = "The indicators")))]
//! async fn list_iocs() {}
//!
//! #[utoipa::path(get, path = "/health", security(()), responses((status = 200, description = "ok")))]
//! async fn health() {}
//!
//! #[derive(OpenApi)]
//! #[openapi(paths(list_iocs, health), modifiers(&ApiKeySecurity))]
//! struct ApiDoc;
//!
//! let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
//! let schemes = &document["components"]["securitySchemes"];
//! assert_eq!(schemes["api_key"]["in"], "header");
//! assert_eq!(schemes["api_key"]["name"], "X-API-Key");
//! assert_eq!(schemes["bearer"]["scheme"], "bearer");
//! assert_eq!(document["security"], serde_json::json!([{ "api_key": [] }, { "bearer": [] }]));
//!
//! let refusals = &document["paths"]["/api/v1/iocs"]["get"]["responses"];
//! assert_eq!(refusals["401"]["$ref"], "#/components/responses/Unauthorized");
//! assert_eq!(refusals["429"]["$ref"], "#/components/responses/TooManyRequests");
//! // `/health` needs no key: no refusal of the layer's.
//! assert!(document["paths"]["/health"]["get"]["responses"].get("401").is_none());
//! ```
//!
//! A document built by hand takes the same call: `ApiKeySecurity::add_to(&mut document)`.
//!
//! The envelope's `code` lists the codes this crate answers with. An application that answers
//! with codes of its own ([`ErrorResponse`](crate::response::ErrorResponse)) adds them to the
//! schema's `enum`, or removes the `enum`, after the call.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, OpenApi, Ref, RefOr, Response};
use utoipa::Modify;

/// The name of the `apiKey` security scheme, the key in the header `X-API-Key`.
pub const API_KEY_SCHEME: &str = "api_key";
/// The name of the `http` `bearer` security scheme, the key in `Authorization: Bearer`.
pub const BEARER_SCHEME: &str = "bearer";
/// The name of the error envelope's schema, `#/components/schemas/ApiKeyError`.
pub const ERROR_SCHEMA: &str = "ApiKeyError";
/// The name of the `401` response, `#/components/responses/Unauthorized`.
pub const UNAUTHORIZED: &str = "Unauthorized";
/// The name of the `403` response, `#/components/responses/Forbidden`.
pub const FORBIDDEN: &str = "Forbidden";
/// The name of the `429` response, `#/components/responses/TooManyRequests`.
pub const TOO_MANY_REQUESTS: &str = "TooManyRequests";
/// The name of the `503` response, `#/components/responses/ServiceUnavailable`.
pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";

/// Every `code` the crate answers with: the layer's ([`AuthError::code`](crate::AuthError::code))
/// and, with the `axum` feature, the keys API's and
/// [`errors_in_envelope`](crate::response::errors_in_envelope)'s.
pub const ERROR_CODES: &[&str] = &[
    "missing_api_key",
    "invalid_api_key",
    "expired_api_key",
    "insufficient_scope",
    "live_key_required",
    "test_key_required",
    "rate_limited",
    "usage_exceeded",
    "authentication_unavailable",
    "internal_error",
    "invalid_request",
    "not_found",
    "method_not_allowed",
    "cannot_grant_scope",
    "key_too_powerful",
    "key_limit_reached",
    "service_unavailable",
];

/// Adds the layer's security schemes, error envelope and refusals to an OpenAPI document: as
/// `#[openapi(modifiers(&ApiKeySecurity))]`, or [`ApiKeySecurity::add_to`] for a document built
/// by hand. The [module docs](self) list what it adds.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiKeySecurity;

impl ApiKeySecurity {
    /// Adds the security schemes, a global requirement of either, the envelope's schema and
    /// the four responses to `document`, and refers to the responses from each operation that
    /// needs a key (see the [module docs](self)). What it adds replaces anything of the same
    /// name; an operation's own responses and `security` are kept.
    pub fn add_to(document: &mut OpenApi) {
        let components = document.components.get_or_insert_with(Components::default);
        let schemes: BTreeMap<String, RefOr<SecurityScheme>> = parse(json!({
            API_KEY_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "The API key, `sk_live_...` or `sk_test_...`."
            },
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "The API key as a bearer token: `Authorization: Bearer sk_live_...`."
            }
        }));
        components.security_schemes.extend(schemes);
        components
            .schemas
            .insert(ERROR_SCHEMA.to_owned(), parse(error_schema()));
        let responses: BTreeMap<String, RefOr<Response>> = parse(responses());
        components.responses.extend(responses);

        let either = [API_KEY_SCHEME, BEARER_SCHEME]
            .map(|scheme| SecurityRequirement::new(scheme, Vec::<String>::new()));
        let security = document.security.get_or_insert_with(Vec::new);
        for requirement in either {
            if !security.contains(&requirement) {
                security.push(requirement);
            }
        }

        for item in document.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
                &mut item.query,
            ];
            let operations = operations.into_iter().flatten();
            for operation in operations.chain(item.additional_operations.values_mut()) {
                if needs_key(operation) {
                    refer_to_refusals(operation);
                }
            }
        }
    }
}

impl Modify for ApiKeySecurity {
    fn modify(&self, openapi: &mut OpenApi) {
        Self::add_to(openapi);
    }
}

/// Whether the global requirement applies to `operation`: it sets none of its own, or one that
/// is more than the empty requirement.
fn needs_key(operation: &Operation) -> bool {
    let open = SecurityRequirement::default();
    match &operation.security {
        None => true,
        Some(requirements) => !requirements.iter().all(|requirement| *requirement == open),
    }
}

fn refer_to_refusals(operation: &mut Operation) {
    for (status, name) in [
        ("401", UNAUTHORIZED),
        ("403", FORBIDDEN),
        ("429", TOO_MANY_REQUESTS),
        ("503", SERVICE_UNAVAILABLE),
    ] {
        let reference = format!("#/components/responses/{name}");
        (operation.responses.responses)
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::new(reference)));
    }
}

/// A piece of the document from its JSON: the plainest way to write it, and the JSON is what
/// is served.
fn parse<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the crate's OpenAPI pieces are valid")
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "Every refusal of the API key layer, and every error of the keys API, in one envelope.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "request_id"],
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "What went wrong, for programs: stable, snake_case.",
                        "enum": ERROR_CODES
                    },
                    "message": {
                        "type": "string",
                        "description": "What went wrong and what to do, for people. Never holds a key."
                    },
                    "request_id": {
                        "type": "string",
                        "description": "The request's `X-Request-Id`, as sent when sane, else a new `req_...`; also in the response's `X-Request-Id`."
                    }
                }
            }
        },
        "example": envelope("invalid_api_key", "The API key is not valid.")
    })
}

fn envelope(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "request_id": "req_3f2a9c1e7b5d4a60" } })
}

/// A response in the envelope, with `example` as its body, `headers` as its headers.
fn refusal(description: &str, example: Value, headers: Value) -> Value {
    let mut headers = headers;
    headers["X-Request-Id"] = json!({
        "description": "The request's id, as in the body's `request_id`.",
        "schema": { "type": "string" }
    });
    json!({
        "description": description,
        "headers": headers,
        "content": {
            "application/json": {
                "schema": { "$ref": format!("#/components/schemas/{ERROR_SCHEMA}") },
                "example": example
            }
        }
    })
}

fn responses() -> Value {
    let challenge = json!({
        "WWW-Authenticate": {
            "description": "The RFC 6750 challenge: `Bearer`, with `error=\"invalid_token\"` for a key that is not valid.",
            "schema": { "type": "string" }
        }
    });
    let scope_challenge = json!({
        "WWW-Authenticate": {
            "description": "For a missing scope: `Bearer error=\"insufficient_scope\", scope=\"...\"`.",
            "schema": { "type": "string" }
        }
    });
    let limits = json!({
        "Retry-After": {
            "description": "Seconds until a request may pass, rounded up.",
            "schema": { "type": "integer", "minimum": 0 }
        },
        "RateLimit-Policy": {
            "description": "The limit, draft-ietf-httpapi-ratelimit-headers: `\"default\";q=60;w=60`, `q` requests per `w` seconds.",
            "schema": { "type": "string" }
        },
        "RateLimit": {
            "description": "What is left: `\"default\";r=0;t=30`, `r` requests within `t` seconds.",
            "schema": { "type": "string" }
        }
    });
    json!({
        UNAUTHORIZED: refusal(
            "No API key (`missing_api_key`), or one that is not valid (`invalid_api_key`) or has expired (`expired_api_key`).",
            envelope("missing_api_key", "API key is required. Include it in the X-API-Key header."),
            challenge,
        ),
        FORBIDDEN: refusal(
            "The key lacks a scope this operation needs (`insufficient_scope`), or is of the wrong mode (`live_key_required`, `test_key_required`).",
            envelope("insufficient_scope", "This API key lacks the scope iocs:write."),
            scope_challenge,
        ),
        TOO_MANY_REQUESTS: refusal(
            "The key sent too many requests (`rate_limited`) or has no credits left (`usage_exceeded`).",
            envelope("rate_limited", "Too many requests. Retry after 30 seconds."),
            limits,
        ),
        SERVICE_UNAVAILABLE: refusal(
            "The key could not be checked: its store cannot be reached (`authentication_unavailable`).",
            envelope("authentication_unavailable", "The API key could not be checked right now. Retry later."),
            json!({}),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each piece survives utoipa's types unchanged: nothing is dropped on the way.
    #[test]
    fn pieces_round_trip() {
        for value in [error_schema(), responses()] {
            let parsed: Value = match value.get("type") {
                Some(_) => serde_json::to_value(parse::<RefOr<utoipa::openapi::schema::Schema>>(
                    value.clone(),
                ))
                .unwrap(),
                None => {
                    serde_json::to_value(parse::<BTreeMap<String, RefOr<Response>>>(value.clone()))
                        .unwrap()
                }
            };
            assert_eq!(parsed, value);
        }
    }

    #[test]
    fn codes_cover_the_layer() {
        use crate::AuthError;
        for error in [AuthError::Missing, AuthError::Invalid, AuthError::Expired] {
            assert!(ERROR_CODES.contains(&error.code()));
        }
    }
}
