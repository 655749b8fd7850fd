//! The JSON error envelope, and [`ErrorResponse`] to answer in it from outside the layer.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use serde::Serialize;

use crate::grpc::{self, RequestHead};
use crate::request_id::{request_id, X_REQUEST_ID};

/// A refusal in the crate's JSON envelope, for answers the layer does not give itself: `429`
/// from a rate limiter, `403` from a permission check, `404` from a handler.
///
/// The response has the same shape as the layer's own refusals:
/// `{"error":{"code":"...","message":"...","request_id":"req_..."}}`, with
/// `Content-Type: application/json`, `Cache-Control: no-store` and `X-Request-Id`.
///
/// ```
/// use std::time::Duration;
///
/// use http::{Request, StatusCode};
/// use tower_api_key::response::ErrorResponse;
///
/// let request = Request::get("/api").header("x-request-id", "req_42").body(()).unwrap();
///
/// let response = ErrorResponse::new(
///     StatusCode::TOO_MANY_REQUESTS,
///     "rate_limited",
///     "Too many failed attempts. Retry after the time in the Retry-After header.",
/// )
/// .for_request(&request)
/// .retry_after(Duration::from_millis(1500))
/// .into_response();
///
/// assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(response.headers()["retry-after"], "2");
/// assert_eq!(response.headers()["x-request-id"], "req_42");
/// let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
/// assert_eq!(body["error"]["code"], "rate_limited");
/// assert_eq!(body["error"]["request_id"], "req_42");
/// ```
#[derive(Clone, Debug)]
pub struct ErrorResponse {
    status: StatusCode,
    code: Cow<'static, str>,
    message: Cow<'static, str>,
    request_id: Option<HeaderValue>,
    grpc: bool,
    headers: HeaderMap,
}

impl ErrorResponse {
    /// A refusal with `status`, a machine-readable `code` and a `message` for the caller.
    ///
    /// The message is sent as given: never put a key or a secret in it.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            request_id: None,
            grpc: false,
            headers: HeaderMap::new(),
        }
    }

    /// Answers `request`: keeps its `X-Request-Id` when that is sane (by the rule documented
    /// on [`ApiKeyLayer`](crate::ApiKeyLayer)), and answers a gRPC call the gRPC way, as the
    /// layer does (HTTP 200, the status in `grpc-status`: 7 PERMISSION_DENIED for a 403,
    /// 8 RESOURCE_EXHAUSTED for a 429, 16 UNAUTHENTICATED for a 401, 14 UNAVAILABLE for a 503).
    /// A gRPC call is a `POST` over HTTP/2 or with `te: trailers`, with a `Content-Type` of
    /// `application/grpc`. Without this call, the response is JSON with a new id.
    pub fn for_request<B>(mut self, request: &Request<B>) -> Self {
        self.request_id = Some(request_id(request.headers()));
        self.grpc = RequestHead::from(request).is_grpc_call();
        self
    }

    /// Answers with `request_id`, already checked or made by [`request_id`].
    #[cfg(feature = "axum")]
    pub(crate) fn with_request_id(mut self, request_id: HeaderValue) -> Self {
        self.request_id = Some(request_id);
        self
    }

    /// Adds a header to the response, such as a `WWW-Authenticate` challenge.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets `Retry-After` to `wait` in whole seconds, rounded up (at least 1).
    pub fn retry_after(self, wait: Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.header(RETRY_AFTER, HeaderValue::from(seconds.max(1)))
    }

    /// The response.
    pub fn into_response(self) -> Response<Bytes> {
        let request_id = self
            .request_id
            .unwrap_or_else(|| request_id(&HeaderMap::new()));
        let mut response = if self.grpc {
            grpc::response(self.status, &self.code, &self.message)
        } else {
            let id = request_id.to_str().unwrap_or_default();
            let mut response = Response::new(envelope(&self.code, &self.message, id));
            *response.status_mut() = self.status;
            (response.headers_mut())
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        };
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(X_REQUEST_ID, request_id);
        headers.extend(self.headers);
        response
    }
}

/// Without [`for_request`](ErrorResponse::for_request), the response has a new request id;
/// under [`errors_in_envelope`], the request's own.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for ErrorResponse {
    fn into_response(self) -> axum_core::response::Response {
        let deferred = self.request_id.is_none().then(|| Deferred(self.clone()));
        let mut response = self.into_response().map(axum_core::body::Body::from);
        if let Some(deferred) = deferred {
            response.extensions_mut().insert(deferred);
        }
        response
    }
}

/// An error response made without its request's id, for [`errors_in_envelope`] to write
/// again with it.
#[cfg(feature = "axum")]
#[derive(Clone, Debug)]
struct Deferred(ErrorResponse);

/// An axum middleware (feature `axum`) that answers in the crate's envelope, with the request's
/// id, the errors that axum and its extractors answer in plain text or not at all: a path, a
/// query string or a body that could not be read (`400 invalid_request`), a route that does
/// not exist (`404 not_found`), a method it does not take (`405 method_not_allowed`); other
/// client errors without a JSON body become `invalid_request` with their status. An
/// [`ErrorResponse`] that a handler returns gets the request's id. Other JSON answers, the
/// layer's refusals among them, pass unchanged.
///
/// ```
/// use axum::{extract::Query, middleware, routing::get, Router};
/// use tower::ServiceExt;
/// use tower_api_key::response::errors_in_envelope;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// #[derive(serde::Deserialize)]
/// struct Page {
///     limit: usize,
/// }
///
/// let app: Router = Router::new()
///     .route("/items", get(|Query(page): Query<Page>| async move { page.limit.to_string() }))
///     .layer(middleware::from_fn(errors_in_envelope));
///
/// let request = http::Request::get("/items?limit=abc")
///     .header("x-request-id", "req_42")
///     .body(axum::body::Body::empty())
///     .unwrap();
/// let response = app.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), 400);
/// assert_eq!(response.headers()["content-type"], "application/json");
/// assert_eq!(response.headers()["x-request-id"], "req_42");
/// # }
/// ```
#[cfg(feature = "axum")]
pub async fn errors_in_envelope(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let request_id = request_id(request.headers());
    let mut response = next.run(request).await;
    let error = match response.extensions_mut().remove::<Deferred>() {
        Some(Deferred(error)) => error,
        None if response.status().is_client_error() && !is_json(response.headers()) => {
            let (code, message) = match response.status() {
                StatusCode::NOT_FOUND => (
                    "not_found",
                    "There is no such endpoint. Check the method and the path.",
                ),
                StatusCode::METHOD_NOT_ALLOWED => (
                    "method_not_allowed",
                    "This endpoint does not take this method.",
                ),
                _ => (
                    "invalid_request",
                    "The request could not be read: check its path, its query string and its \
                     body.",
                ),
            };
            ErrorResponse::new(response.status(), code, message)
        }
        None => return response,
    };
    let mut answer = error.with_request_id(request_id).into_response();
    // Headers the handler set (`Allow` on a 405, say) stay.
    for (name, value) in response.headers() {
        if name != CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            answer.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    answer.map(axum::body::Body::from)
}

#[cfg(feature = "axum")]
fn is_json(headers: &HeaderMap) -> bool {
    (headers.get(CONTENT_TYPE))
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}

/// `{"error":{"code":...,"message":...,"request_id":...}}`
pub(crate) fn envelope(code: &str, message: &str, request_id: &str) -> Bytes {
    let envelope = Envelope {
        error: EnvelopeFields {
            code,
            message,
            request_id,
        },
    };
    serde_json::to_vec(&envelope)
        .expect("strings always serialize")
        .into()
}

/// The envelope's outer object; its fields serialize in the order they are declared.
#[derive(Serialize)]
struct Envelope<'a> {
    error: EnvelopeFields<'a>,
}

#[derive(Serialize)]
struct EnvelopeFields<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn envelope_bytes_are_exactly_the_documented_shape() {
        assert_eq!(
            envelope("invalid_api_key", "Fix \"it\".", "req_1"),
            r#"{"error":{"code":"invalid_api_key","message":"Fix \"it\".","request_id":"req_1"}}"#
        );
    }

    #[test]
    fn envelope_is_json_of_any_text() {
        let texts = [
            "plain",
            "",
            "quote \" and backslash \\",
            "control \u{0} \u{1f} \n \t and \u{7f}",
            "non-ASCII: é ü 漢字 🔑",
            "</script>",
        ];
        for text in texts {
            let body: serde_json::Value =
                serde_json::from_slice(&envelope(text, text, text)).unwrap();
            let fields = &body["error"];
            for field in ["code", "message", "request_id"] {
                assert_eq!(fields[field], text, "{field} of {text:?}");
            }
        }
    }

    #[test]
    fn error_response_has_the_envelope_and_its_headers() {
        let response = ErrorResponse::new(StatusCode::FORBIDDEN, "nope", "Ask for access.")
            .header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            )
            .into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(headers[http::header::WWW_AUTHENTICATE], "Bearer");
        let id = headers[X_REQUEST_ID].to_str().unwrap();
        assert!(id.starts_with("req_"));
        assert_eq!(
            body(&response),
            serde_json::json!({"error": {"code": "nope", "message": "Ask for access.", "request_id": id}})
        );
    }

    #[test]
    fn error_response_reuses_a_sane_request_id_and_replaces_an_insane_one() {
        let with_id = |id| Request::get("/").header(X_REQUEST_ID, id).body(()).unwrap();
        let kept = ErrorResponse::new(StatusCode::NOT_FOUND, "not_found", "No such key.")
            .for_request(&with_id("abc-1"))
            .into_response();
        assert_eq!(kept.headers()[X_REQUEST_ID], "abc-1");
        assert_eq!(body(&kept)["error"]["request_id"], "abc-1");

        let replaced = ErrorResponse::new(StatusCode::NOT_FOUND, "not_found", "No such key.")
            .for_request(&with_id("has space"))
            .into_response();
        assert_ne!(replaced.headers()[X_REQUEST_ID], "has space");
    }

    #[test]
    fn error_response_to_a_grpc_call_is_a_grpc_status() {
        let call = Request::post("/pkg.Service/Method")
            .version(http::Version::HTTP_2)
            .header(CONTENT_TYPE, "application/grpc")
            .body(())
            .unwrap();
        let response = ErrorResponse::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Wait.")
            .for_request(&call)
            .retry_after(Duration::from_secs(2))
            .into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()["grpc-status"], "8");
        assert_eq!(response.headers()["grpc-message"], "rate_limited: Wait.");
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert!(response.body().is_empty());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let retry_after = |wait| {
            ErrorResponse::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Wait.")
                .retry_after(wait)
                .into_response()
                .headers()[RETRY_AFTER]
                .clone()
        };
        assert_eq!(retry_after(Duration::from_secs(3)), "3");
        assert_eq!(retry_after(Duration::from_millis(3001)), "4");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }
}
