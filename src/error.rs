//! Why a request was refused, and the one function that answers every refusal: [`Refusals`].

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::{Arc, LazyLock};

use crate::credentials::CredentialHeaders;
use crate::envelope::envelope;
use crate::grpc::{self, RequestHead};
use crate::key::KeyFormat;
use crate::mode::KeyMode;
use crate::request_id::{request_id, X_REQUEST_ID};
use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

/// Why the crate refused a request: the layer (401, 503), a scope or mode check (403), a rate
/// limit (429), or a route that no layer authenticated (500).
///
/// Every refusal is answered with the same JSON envelope,
/// `{"error":{"code":"...","message":"...","request_id":"req_..."}}`:
///
/// | Variant             | Status | `code`                       | `WWW-Authenticate`               |
/// |---------------------|--------|------------------------------|----------------------------------|
/// | `Missing`           | 401    | `missing_api_key`            | `Bearer`                         |
/// | `Conflicting`       | 401    | `invalid_api_key`            | `Bearer error="invalid_token"`   |
/// | `KeyInQuery`        | 401    | `invalid_api_key`            | `Bearer error="invalid_request"` |
/// | `Invalid`           | 401    | `invalid_api_key`            | `Bearer error="invalid_token"`   |
/// | `Expired`           | 401    | `expired_api_key`            | `Bearer error="invalid_token"`   |
/// | `Unavailable`       | 503    | `authentication_unavailable` | (none)                           |
/// | `InsufficientScope` | 403    | `insufficient_scope`         | `Bearer error="insufficient_scope", scope="..."` |
/// | `WrongMode`         | 403    | `live_key_required`, `test_key_required` | (none)               |
/// | `RateLimited`       | 429    | `rate_limited`               | (none)                           |
/// | `UsageExceeded`     | 429    | `usage_exceeded`             | (none)                           |
/// | `MissingIdentity`   | 500    | `internal_error`             | (none)                           |
///
/// A `RateLimited` answer (feature `rate-limit`, from
/// [`RateLimitLayer`](crate::limit::RateLimitLayer)) also carries `Retry-After` and the
/// `RateLimit-Policy` and `RateLimit` headers (see [`limit`](crate::limit)); a
/// `UsageExceeded` answer (from [`CreditsLayer`](crate::limit::CreditsLayer)) carries
/// `Retry-After` when the balance is refilled.
///
/// Each response also has `Cache-Control: no-store` (and, in JSON, `Content-Type:
/// application/json`), and the
/// request id in `X-Request-Id` (see [`ApiKeyLayer`](crate::ApiKeyLayer) for where it comes
/// from). Messages tell the caller what to do and never repeat the key or a store's error.
/// [`ApiKeyLayer::error_response`](crate::ApiKeyLayer::error_response) replaces the body of
/// every one of them, the 403s of [`RequireScopeLayer`](crate::access::RequireScopeLayer),
/// [`RequireModeLayer`](crate::access::RequireModeLayer) and the axum extractors included.
///
/// Every refusal, whatever renders it (gRPC included), carries its `AuthError` in the
/// response's extensions, so that a layer outside can tell it from the inner service's own
/// answers, for example to count failed attempts:
/// `response.extensions().get::<AuthError>()`. (An `Unavailable` error holds the store's error,
/// whose text may name a database host or user: it stays in the process, never in a response
/// body or header.)
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carried no key.
    Missing,
    /// The request carried two different keys.
    Conflicting,
    /// The request carried a key in its URL query string, where logs and browser histories keep
    /// it. Refused even beside a good key in a header, so the client learns before it leaks more.
    KeyInQuery,
    /// The key is malformed, has a wrong checksum, is unknown or was deleted, or its record's
    /// mode is not the one its prefix says.
    Invalid,
    /// The key was revoked or disabled, or is past its expiry.
    Expired,
    /// The store could not be asked; the request is refused, not let through.
    Unavailable(StoreError),
    /// The key is restricted, and `scope` is not one of its scopes (RFC 6750 §3.1).
    InsufficientScope {
        /// The scope the route requires.
        scope: Cow<'static, str>,
    },
    /// The key is of the other mode than the route requires.
    WrongMode {
        /// The mode the route requires.
        required: KeyMode,
    },
    /// The request carries no [`KeyIdentity`](crate::KeyIdentity): a check runs outside
    /// `ApiKeyLayer`, a server misconfiguration. Refused so that the route stays closed.
    MissingIdentity,
    /// The key (or its account) has used its rate limit: it may send again after
    /// `retry_after`.
    #[cfg(feature = "rate-limit")]
    RateLimited {
        /// How long until the next request would pass.
        retry_after: std::time::Duration,
        /// The limit that was reached.
        limit: crate::limit::RateLimit,
    },
    /// The key's [credits](crate::limit::Credits) cannot pay for the request.
    UsageExceeded {
        /// When the balance is refilled, if it is.
        refills_at: Option<std::time::SystemTime>,
        /// How long until then.
        refills_in: Option<std::time::Duration>,
    },
}

impl AuthError {
    /// The HTTP status of the response: 401, 403 for a scope or mode check, 429 for a rate
    /// limit, 503 when the store is unavailable, 500 for a route no layer authenticated.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing
            | Self::Conflicting
            | Self::KeyInQuery
            | Self::Invalid
            | Self::Expired => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InsufficientScope { .. } | Self::WrongMode { .. } => StatusCode::FORBIDDEN,
            Self::MissingIdentity => StatusCode::INTERNAL_SERVER_ERROR,
            #[cfg(feature = "rate-limit")]
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UsageExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The machine-readable `code` of the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_api_key",
            Self::Conflicting | Self::KeyInQuery | Self::Invalid => "invalid_api_key",
            Self::Expired => "expired_api_key",
            Self::Unavailable(_) => "authentication_unavailable",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::WrongMode {
                required: KeyMode::Live,
            } => "live_key_required",
            Self::WrongMode {
                required: KeyMode::Test,
            } => "test_key_required",
            Self::MissingIdentity => "internal_error",
            #[cfg(feature = "rate-limit")]
            Self::RateLimited { .. } => "rate_limited",
            Self::UsageExceeded { .. } => "usage_exceeded",
        }
    }

    /// The `WWW-Authenticate` challenge of RFC 6750, for 401 answers and a missing scope.
    fn challenge(&self) -> Option<HeaderValue> {
        let challenge = match self {
            Self::Missing => "Bearer",
            Self::KeyInQuery => r#"Bearer error="invalid_request""#,
            Self::Conflicting | Self::Invalid | Self::Expired => r#"Bearer error="invalid_token""#,
            Self::InsufficientScope { scope } => {
                let challenge = format!(r#"Bearer error="insufficient_scope", scope="{scope}""#);
                // Scopes are checked to be visible ASCII without quotes where they are made.
                return HeaderValue::try_from(challenge).ok();
            }
            _ => return None,
        };
        Some(HeaderValue::from_static(challenge))
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no API key in the request"),
            Self::Conflicting => f.write_str("the request carries two different API keys"),
            Self::KeyInQuery => f.write_str("the request carries an API key in its query string"),
            Self::Invalid => f.write_str("the API key is not valid"),
            Self::Expired => f.write_str("the API key was revoked or disabled, or has expired"),
            Self::Unavailable(_) => f.write_str("the key store is unavailable"),
            Self::InsufficientScope { scope } => {
                write!(f, "the API key lacks the scope \"{scope}\"")
            }
            Self::WrongMode { required } => write!(f, "the route requires a {required} key"),
            Self::MissingIdentity => f.write_str("no ApiKeyLayer authenticated the request"),
            #[cfg(feature = "rate-limit")]
            Self::RateLimited { retry_after, .. } => write!(
                f,
                "the rate limit is used up; retry in {} s",
                crate::limit::retry_after_secs(*retry_after)
            ),
            Self::UsageExceeded { .. } => f.write_str("the API key's credits are used up"),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unavailable(error) => Some(error),
            _ => None,
        }
    }
}

/// A store could not answer: the layer responds `503`, failing closed.
///
/// It displays as the error it wraps. The layer logs it (with `tracing`, at error level) and
/// never sends it to the client.
///
/// Clones share the error they wrap.
#[derive(Clone, Debug)]
pub struct StoreError(Arc<dyn Error + Send + Sync>);

impl StoreError {
    /// Wraps the backend's error (or a message).
    pub fn new(source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self(Arc::from(source.into()))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// A refused request: the [`AuthError`], the message for the caller, and the request id.
///
/// Handed to a custom [`error_response`](crate::ApiKeyLayer::error_response) hook.
#[derive(Debug)]
pub struct Rejection {
    error: AuthError,
    message: Arc<str>,
    request_id: HeaderValue,
}

impl Rejection {
    pub(crate) fn new(error: AuthError, messages: &Messages, request_id: HeaderValue) -> Self {
        let message = match &error {
            AuthError::Missing => Arc::clone(&messages.missing),
            AuthError::Conflicting => Arc::clone(&messages.conflicting),
            AuthError::KeyInQuery => Arc::clone(&messages.key_in_query),
            AuthError::Invalid => Arc::clone(&messages.invalid),
            AuthError::Expired => Arc::clone(&messages.expired),
            AuthError::Unavailable(_) => Arc::clone(&messages.unavailable),
            AuthError::InsufficientScope { scope } => format!(
                "This API key does not have the scope \"{scope}\" that this endpoint requires. \
                 Use a key that has it, or a key with full access."
            )
            .into(),
            AuthError::WrongMode { required } => {
                let used = match required {
                    KeyMode::Live => KeyMode::Test,
                    KeyMode::Test => KeyMode::Live,
                };
                format!(
                    "This endpoint accepts {required} keys only, and the request used a {used} \
                     key. Use a {required} key."
                )
                .into()
            }
            AuthError::MissingIdentity => Arc::clone(&messages.missing_identity),
            #[cfg(feature = "rate-limit")]
            AuthError::RateLimited { retry_after, limit } => {
                let seconds = crate::limit::retry_after_secs(*retry_after);
                let unit = if seconds == 1 { "second" } else { "seconds" };
                format!(
                    "Too many requests: the limit is {limit}. Retry in {seconds} {unit}, and \
                     spread requests out to stay within the limit."
                )
                .into()
            }
            AuthError::UsageExceeded {
                refills_at: Some(at),
                ..
            } => format!(
                "This API key has used its credits. They are refilled at {}; until then, \
                 top up its credits to go on.",
                humantime::format_rfc3339_seconds(*at)
            )
            .into(),
            AuthError::UsageExceeded {
                refills_at: None, ..
            } => "This API key has used its credits, and they are not refilled: top up its \
                 credits to go on."
                .into(),
        };
        Self {
            error,
            message,
            request_id,
        }
    }

    /// Why the request was refused.
    pub fn error(&self) -> &AuthError {
        &self.error
    }

    /// Why the request was refused, taken out.
    pub(crate) fn into_error(self) -> AuthError {
        self.error
    }

    /// What the caller should do, in English; never contains the key.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The request's id, also sent in the `X-Request-Id` header.
    pub fn request_id(&self) -> &str {
        self.request_id
            .to_str()
            .expect("request ids are checked or generated as ASCII")
    }

    /// The default response: the JSON envelope, with its status and `Content-Type`. (The layer
    /// adds the other headers to whatever response renders a rejection.)
    pub fn to_json_response(&self) -> Response<Bytes> {
        let body = envelope(self.error.code(), self.message(), self.request_id());
        let mut response = Response::new(body);
        *response.status_mut() = self.error.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// The answer to a gRPC call: HTTP 200 with `grpc-status` 16 (UNAUTHENTICATED) for a 401,
    /// 7 (PERMISSION_DENIED) for a 403, 8 (RESOURCE_EXHAUSTED) for a 429, 14 (UNAVAILABLE) when
    /// the store failed, 13 (INTERNAL) for a 500, `code: message` in `grpc-message`,
    /// `Cache-Control: no-store`, the request id in `X-Request-Id`, and a rate limit's headers.
    fn to_grpc_response(&self) -> Response<Bytes> {
        let mut response = grpc::response(self.error.status(), self.error.code(), self.message());
        (response.headers_mut()).insert(X_REQUEST_ID, self.request_id.clone());
        self.add_limit_headers(&mut response);
        response
    }

    /// `Retry-After` of a rate limit's or a balance's refusal, and `RateLimit-Policy` and
    /// `RateLimit` of a rate limit's, unless the response already has them.
    fn add_limit_headers(&self, response: &mut Response<Bytes>) {
        let headers = response.headers_mut();
        match &self.error {
            #[cfg(feature = "rate-limit")]
            AuthError::RateLimited { retry_after, limit } => {
                use crate::limit::{
                    retry_after_secs, service_limit_header, RATELIMIT, RATELIMIT_POLICY,
                };
                let seconds = retry_after_secs(*retry_after);
                (headers.entry(RETRY_AFTER)).or_insert_with(|| HeaderValue::from(seconds));
                (headers.entry(RATELIMIT_POLICY)).or_insert_with(|| limit.policy_header());
                (headers.entry(RATELIMIT)).or_insert_with(|| service_limit_header(0, seconds));
            }
            AuthError::UsageExceeded {
                refills_in: Some(refills_in),
                ..
            } => {
                let seconds = crate::limit::retry_after_secs(*refills_in);
                (headers.entry(RETRY_AFTER)).or_insert_with(|| HeaderValue::from(seconds));
            }
            _ => {}
        }
    }

    /// Makes `response` a proper refusal whatever rendered it: the error's status, and
    /// `Cache-Control: no-store`, `X-Request-Id` and its `WWW-Authenticate` challenge unless the
    /// response already has them.
    fn finish(&self, response: &mut Response<Bytes>) {
        *response.status_mut() = self.error.status();
        let headers = response.headers_mut();
        headers
            .entry(CACHE_CONTROL)
            .or_insert_with(|| HeaderValue::from_static("no-store"));
        headers
            .entry(X_REQUEST_ID)
            .or_insert_with(|| self.request_id.clone());
        if let Some(challenge) = self.error.challenge() {
            headers.entry(WWW_AUTHENTICATE).or_insert(challenge);
        }
        self.add_limit_headers(response);
    }
}

/// A hook that renders a [`Rejection`] as a response, in place of the JSON envelope.
pub(crate) type ErrorResponseFn = dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync;

/// How the crate answers refusals: the messages and the rendering hook of the
/// [`ApiKeyLayer`](crate::ApiKeyLayer) that authenticated the request. The layer hands them on
/// in the request's extensions, so that the scope and mode checks inside it answer alike.
#[derive(Clone)]
pub(crate) struct Refusals {
    messages: Messages,
    render: Option<Arc<ErrorResponseFn>>,
}

impl Refusals {
    pub(crate) fn new(messages: Messages, render: Option<Arc<ErrorResponseFn>>) -> Self {
        Self { messages, render }
    }

    /// The refusals of a request that no layer configured: the default messages, JSON.
    pub(crate) fn fallback() -> &'static Self {
        static DEFAULT: LazyLock<Refusals> = LazyLock::new(|| {
            let messages = Messages::new(&KeyFormat::default(), &CredentialHeaders::default());
            Refusals::new(messages, None)
        });
        &DEFAULT
    }

    /// The answer to `request`, refused for `error`: the one function behind every refusal of
    /// the crate. A gRPC call gets gRPC's answer; any other the hook's or the JSON envelope,
    /// with the protocol headers. The error goes in the response's extensions.
    pub(crate) fn respond(&self, error: AuthError, request: RequestHead<'_>) -> Response<Bytes> {
        let rejection = self.rejection(error, request_id(request.headers));
        self.answer(rejection, request.is_grpc_call())
    }

    /// [`Refusals::respond`], for a rejection already made (and logged).
    pub(crate) fn answer(&self, rejection: Rejection, grpc: bool) -> Response<Bytes> {
        let mut response = if grpc {
            rejection.to_grpc_response()
        } else {
            let mut response = match &self.render {
                Some(render) => render(&rejection),
                None => rejection.to_json_response(),
            };
            rejection.finish(&mut response);
            response
        };
        response.extensions_mut().insert(rejection.into_error());
        response
    }

    /// A rejection of `error`, with these messages.
    pub(crate) fn rejection(&self, error: AuthError, request_id: HeaderValue) -> Rejection {
        Rejection::new(error, &self.messages, request_id)
    }
}

impl fmt::Debug for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refusals")
            .field("custom_error_response", &self.render.is_some())
            .finish_non_exhaustive()
    }
}

/// The messages of the envelope, built once from the layer's configuration.
#[derive(Clone, Debug)]
pub(crate) struct Messages {
    missing: Arc<str>,
    conflicting: Arc<str>,
    key_in_query: Arc<str>,
    invalid: Arc<str>,
    expired: Arc<str>,
    unavailable: Arc<str>,
    missing_identity: Arc<str>,
}

impl Messages {
    /// Messages naming the configured key prefix and headers.
    pub(crate) fn new(format: &KeyFormat, headers: &CredentialHeaders) -> Self {
        let prefix = format.prefix();
        let bearer = (headers.authorization.as_ref()).map(|name| {
            format!(
                "in the {} header as \"Bearer {prefix}...\"",
                display_name(name)
            )
        });
        let plain =
            (headers.api_key.as_ref()).map(|name| format!("in the {} header", display_name(name)));
        let place = match (bearer, plain) {
            (Some(bearer), Some(plain)) => format!("{bearer} or {plain}"),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => "in a request header".to_owned(),
        };
        Self {
            missing: format!("API key is required. Include it {place}.").into(),
            conflicting: format!(
                "The request carries two different API keys. Send one key, {place}."
            )
            .into(),
            key_in_query: format!(
                "API keys are not accepted in the URL query string, where logs and browser \
                 history keep them. Send the key {place}, and replace the key that was in the URL."
            )
            .into(),
            invalid: "The API key is not valid. Check it for typos or extra whitespace, and \
                      make sure it has not been deleted."
                .into(),
            expired: "The API key has been deactivated or has expired. Create a new key and \
                      update your integration."
                .into(),
            unavailable: "API keys cannot be checked right now. Retry the request shortly.".into(),
            missing_identity: "The server could not authenticate this request: its API key \
                               check is not configured for this route. Contact the service's \
                               operators."
                .into(),
        }
    }
}

/// A header's name as the messages show it: `Authorization`, `X-API-Key`, `X-Custom-Key`.
fn display_name(name: &HeaderName) -> String {
    if name == "x-api-key" {
        return "X-API-Key".to_owned();
    }
    name.as_str()
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(error: AuthError) -> Rejection {
        let messages = Messages::new(&KeyFormat::default(), &CredentialHeaders::default());
        Rejection::new(error, &messages, HeaderValue::from_static("req_1"))
    }

    #[test]
    fn missing_message_is_the_documented_one() {
        assert_eq!(
            rejection(AuthError::Missing).message(),
            "API key is required. Include it in the Authorization header as \
             \"Bearer sk_live_...\" or in the X-API-Key header."
        );
    }

    #[test]
    fn insufficient_scope_challenge_names_the_scope() {
        let error = AuthError::InsufficientScope {
            scope: "keys:write".into(),
        };
        let response = Refusals::fallback().respond(error, (&http::Request::new(())).into());
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="keys:write""#
        );
    }

    #[test]
    fn every_refusal_has_its_documented_status_and_code() {
        let cases = [
            (AuthError::Missing, 401, "missing_api_key"),
            (AuthError::Conflicting, 401, "invalid_api_key"),
            (AuthError::KeyInQuery, 401, "invalid_api_key"),
            (AuthError::Invalid, 401, "invalid_api_key"),
            (AuthError::Expired, 401, "expired_api_key"),
            (
                AuthError::Unavailable(StoreError::new("down")),
                503,
                "authentication_unavailable",
            ),
            (
                AuthError::InsufficientScope {
                    scope: "keys:write".into(),
                },
                403,
                "insufficient_scope",
            ),
            (
                AuthError::WrongMode {
                    required: KeyMode::Live,
                },
                403,
                "live_key_required",
            ),
            (
                AuthError::WrongMode {
                    required: KeyMode::Test,
                },
                403,
                "test_key_required",
            ),
            (AuthError::MissingIdentity, 500, "internal_error"),
            #[cfg(feature = "rate-limit")]
            (
                AuthError::RateLimited {
                    retry_after: std::time::Duration::from_millis(1500),
                    limit: crate::limit::RateLimit::per_minute(60),
                },
                429,
                "rate_limited",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status().as_u16(), error.code()), (status, code));
        }
    }

    #[test]
    fn header_names_display_in_canonical_case() {
        assert_eq!(display_name(&http::header::AUTHORIZATION), "Authorization");
        assert_eq!(
            display_name(&HeaderName::from_static("x-api-key")),
            "X-API-Key"
        );
        assert_eq!(
            display_name(&HeaderName::from_static("x-service-key")),
            "X-Service-Key"
        );
    }

    #[test]
    fn envelope_has_exactly_code_message_and_request_id() {
        let response = rejection(AuthError::Expired).to_json_response();
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "code": "expired_api_key",
                "message": rejection(AuthError::Expired).message(),
                "request_id": "req_1",
            }})
        );
    }

    #[test]
    fn unavailable_store_is_503_without_challenge() {
        let rejection = rejection(AuthError::Unavailable(StoreError::new("down")));
        let mut response = rejection.to_json_response();
        rejection.finish(&mut response);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "authentication_unavailable");
        assert!(
            !body.to_string().contains("down"),
            "store errors stay in the logs"
        );
    }

    #[test]
    fn finishing_keeps_the_hook_s_headers_and_sets_the_status() {
        let mut response = Response::new(Bytes::new());
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("private"));
        rejection(AuthError::Invalid).finish(&mut response);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let headers = response.headers();
        assert_eq!(headers[CACHE_CONTROL], "private");
        assert_eq!(headers[X_REQUEST_ID], "req_1");
        assert_eq!(headers[WWW_AUTHENTICATE], r#"Bearer error="invalid_token""#);
    }

    #[test]
    fn messages_name_only_the_headers_that_are_read() {
        let headers = CredentialHeaders {
            authorization: None,
            ..CredentialHeaders::default()
        };
        let messages = Messages::new(&KeyFormat::default(), &headers);
        assert_eq!(
            &*messages.missing,
            "API key is required. Include it in the X-API-Key header."
        );
    }
}
