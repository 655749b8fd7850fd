//! Refusals for gRPC clients, which read `grpc-status`, not the HTTP status or a JSON body.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// Whether the request is a gRPC call: its `Content-Type` is `application/grpc` or
/// `application/grpc+<codec>`.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= 16
            && value[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(value.get(16), None | Some(b'+' | b';'))
    })
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
/// `grpc-message`, percent-encoded as the gRPC protocol requires.
pub(crate) fn response(status: StatusCode, code: &str, message: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(status_code(status)));
    headers.insert(GRPC_MESSAGE, percent_encoded(&format!("{code}: {message}")));
    response
}

/// Every byte outside `0x20..=0x7E`, and `%`, as `%XX`.
fn percent_encoded(message: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7E).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::try_from(encoded).expect("percent-encoded text is visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with_content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn grpc_content_types_are_grpc() {
        for value in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&headers_with_content_type(value)), "{value}");
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
            assert!(!is_grpc(&headers_with_content_type(value)), "{value}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn refusal_is_http_200_with_the_grpc_status_and_message() {
        let response = response(StatusCode::UNAUTHORIZED, "missing_api_key", "Send a key.");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers[GRPC_STATUS], "16");
        assert_eq!(headers[GRPC_MESSAGE], "missing_api_key: Send a key.");
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
