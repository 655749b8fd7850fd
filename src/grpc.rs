//! Refusals for gRPC clients, which read `grpc-status`, not the HTTP status or a JSON body.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, TE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// What decides how a refusal is written: the request's method, version and headers.
#[derive(Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    pub(crate) version: Version,
    pub(crate) headers: &'a HeaderMap,
}

impl<'a, B> From<&'a Request<B>> for RequestHead<'a> {
    fn from(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            version: request.version(),
            headers: request.headers(),
        }
    }
}

impl<'a> From<&'a Parts> for RequestHead<'a> {
    fn from(parts: &'a Parts) -> Self {
        Self {
            method: &parts.method,
            version: parts.version,
            headers: &parts.headers,
        }
    }
}

impl RequestHead<'_> {
    /// Whether the request is shaped as a gRPC call: a `POST`, over HTTP/2 or with
    /// `te: trailers`, whose `Content-Type` is `application/grpc` or `application/grpc+<codec>`.
    /// Anything else is answered over plain HTTP, however it labels its body.
    pub(crate) fn is_grpc_call(&self) -> bool {
        *self.method == Method::POST
            && (self.version == Version::HTTP_2 || self.accepts_trailers())
            && self.headers.get(CONTENT_TYPE).is_some_and(|value| {
                let value = value.as_bytes();
                value.len() >= 16
                    && value[..16].eq_ignore_ascii_case(b"application/grpc")
                    && matches!(value.get(16), None | Some(b'+' | b';'))
            })
    }

    fn accepts_trailers(&self) -> bool {
        self.headers.get_all(TE).iter().any(|value| {
            value
                .as_bytes()
                .split(|&byte| byte == b',')
                .any(|item| item.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        })
    }
}

/// The gRPC status code that says what `status` says.
pub(crate) fn status_code(status: StatusCode) -> u16 {
    match status {
        StatusCode::BAD_REQUEST => 3,            // INVALID_ARGUMENT
        StatusCode::NOT_FOUND => 5,              // NOT_FOUND
        StatusCode::FORBIDDEN => 7,              // PERMISSION_DENIED
        StatusCode::TOO_MANY_REQUESTS => 8,      // RESOURCE_EXHAUSTED
        StatusCode::UNAUTHORIZED => 16,          // UNAUTHENTICATED
        StatusCode::SERVICE_UNAVAILABLE => 14,   // UNAVAILABLE
        StatusCode::INTERNAL_SERVER_ERROR => 13, // INTERNAL
        _ => 2,                                  // UNKNOWN
    }
}

/// A trailers-only gRPC answer: HTTP 200, the status in `grpc-status`, and `code: message` in
/// `grpc-message`, percent-encoded as the gRPC protocol requires. Never to be cached.
pub(crate) fn response(status: StatusCode, code: &str, message: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(GRPC_STATUS, HeaderValue::from(status_code(status)));
    headers.insert(GRPC_MESSAGE, percent_encoded(&format!("{code}: {message}")));
    response
}

/// What the gRPC protocol percent-encodes in `grpc-message`: every byte outside `0x20..=0x7E`
/// (`CONTROLS` is `0x00..=0x1F` and `0x7F`; non-ASCII bytes are always encoded), and `%`.
const GRPC_MESSAGE_ENCODED: &AsciiSet = &CONTROLS.add(b'%');

fn percent_encoded(message: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(message, GRPC_MESSAGE_ENCODED).to_string();
    HeaderValue::try_from(encoded).expect("percent-encoded text is visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request of `method` and `version` with `headers`.
    fn request(method: Method, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut request = Request::builder().method(method).version(version);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    fn is_grpc_call(request: &Request<()>) -> bool {
        RequestHead::from(request).is_grpc_call()
    }

    /// An HTTP/2 `POST` with `content_type`, as gRPC clients send.
    fn h2_post(content_type: &str) -> Request<()> {
        request(
            Method::POST,
            Version::HTTP_2,
            &[("content-type", content_type)],
        )
    }

    #[test]
    fn grpc_content_types_are_grpc() {
        for value in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc_call(&h2_post(value)), "{value}");
        }
    }

    #[test]
    fn other_content_types_are_not_grpc() {
        for value in [
            "application/json",
            "application/grpc-web",
            "application/grpcx",
            "grpc",
        ] {
            assert!(!is_grpc_call(&h2_post(value)), "{value}");
        }
        assert!(!is_grpc_call(&request(Method::POST, Version::HTTP_2, &[])));
    }

    #[test]
    fn a_post_over_http_1_1_is_grpc_only_with_te_trailers() {
        let grpc = ("content-type", "application/grpc");
        let plain = request(Method::POST, Version::HTTP_11, &[grpc]);
        assert!(!is_grpc_call(&plain));
        for te in ["trailers", "Trailers", "gzip, trailers"] {
            let with_te = request(Method::POST, Version::HTTP_11, &[grpc, ("te", te)]);
            assert!(is_grpc_call(&with_te), "{te}");
        }
    }

    #[test]
    fn only_a_post_is_a_grpc_call() {
        let headers = [("content-type", "application/grpc"), ("te", "trailers")];
        for method in [Method::GET, Method::PUT, Method::OPTIONS] {
            let h2 = request(method.clone(), Version::HTTP_2, &headers);
            assert!(!is_grpc_call(&h2), "{method}");
            let h1 = request(method.clone(), Version::HTTP_11, &headers);
            assert!(!is_grpc_call(&h1), "{method}");
        }
    }

    #[test]
    fn refusal_is_http_200_with_the_grpc_status_and_message() {
        let response = response(StatusCode::UNAUTHORIZED, "missing_api_key", "Send a key.");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers[GRPC_STATUS], "16");
        assert_eq!(headers[GRPC_MESSAGE], "missing_api_key: Send a key.");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert!(response.body().is_empty());
    }

    #[test]
    fn message_is_percent_encoded() {
        assert_eq!(
            percent_encoded("100% \"sure\"\n€"),
            "100%25 \"sure\"%0A%E2%82%AC"
        );
    }

    #[test]
    fn store_failure_is_unavailable() {
        assert_eq!(status_code(StatusCode::SERVICE_UNAVAILABLE), 14);
    }
}
