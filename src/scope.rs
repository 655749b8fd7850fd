//! Scopes: what a restricted key may do, like Stripe's restricted keys, and
//! [`RequireScopeLayer`], the route-level check.
//!
//! A key created with scopes ([`NewKey::scopes`](crate::NewKey::scopes)) may call only the
//! routes that require one of them; a key created without scopes has full access, as Stripe's
//! standard keys do. Scopes are compared exactly: `keys:write` does not imply `keys:read`.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use serde::Serialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::envelope::ErrorResponse;
use crate::grpc::RequestHead;
use crate::identity::KeyIdentity;
use crate::mode::KeyMode;

/// The most scopes a key may have.
pub const MAX_SCOPES: usize = 32;

/// The longest scope, in characters.
pub const MAX_SCOPE_LEN: usize = 64;

/// The scopes of a restricted key: 1 to [`MAX_SCOPES`] valid scopes, sorted, without
/// duplicates.
///
/// A valid scope is 1 to [`MAX_SCOPE_LEN`] visible ASCII characters other than `"` and `\`
/// (RFC 6749's `scope-token`), so `iocs:read`, `keys:write` and `admin` are; it is then safe in
/// a header and in a `WWW-Authenticate` challenge. `Display` writes them space-separated, as
/// OAuth does. Serializes as a JSON array of strings.
///
/// ```
/// use tower_api_key::Scopes;
///
/// let scopes = Scopes::new(["keys:write", "iocs:read", "keys:write"]).unwrap();
/// assert_eq!(scopes.iter().collect::<Vec<_>>(), ["iocs:read", "keys:write"]);
/// assert!(scopes.contains("iocs:read"));
/// assert_eq!(scopes.to_string(), "iocs:read keys:write");
/// assert!(Scopes::new(["keys write"]).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scopes(Box<[Box<str>]>);

impl Scopes {
    /// The scopes given, sorted and without duplicates, or why they are not valid scopes.
    pub fn new<I>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut valid: Vec<Box<str>> = Vec::new();
        for (position, scope) in scopes.into_iter().enumerate() {
            // Counted before deduplication, so that a huge list is refused without being read.
            if position == MAX_SCOPES {
                return Err(ScopeError::TooMany);
            }
            let scope = scope.into();
            if !is_valid_scope(&scope) {
                return Err(ScopeError::Malformed { position });
            }
            valid.push(scope.into_boxed_str());
        }
        if valid.is_empty() {
            return Err(ScopeError::Empty);
        }
        valid.sort_unstable();
        valid.dedup();
        Ok(Self(valid.into_boxed_slice()))
    }

    /// Whether `scope` is one of these.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|own| (**own).cmp(scope)).is_ok()
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.0.iter().map(|scope| &**scope)
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, scope) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope)?;
        }
        Ok(())
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Why a list of scopes is not valid ([`Scopes::new`], or
/// [`ManageError::InvalidScopes`](crate::ManageError::InvalidScopes) at creation).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeError {
    /// The list is empty. Leave the scopes out for a key with full access.
    Empty,
    /// The list has more than [`MAX_SCOPES`] scopes.
    TooMany,
    /// The scope at `position` (counting from 0) is empty, longer than [`MAX_SCOPE_LEN`], or
    /// holds a character other than visible ASCII, `"` and `\` excepted.
    Malformed {
        /// Where the scope is in the list, from 0.
        position: usize,
    },
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str(
                "a restricted key needs at least one scope; leave the scopes out for full access",
            ),
            Self::TooMany => write!(f, "a key may have at most {MAX_SCOPES} scopes"),
            Self::Malformed { position } => write!(
                f,
                "scope number {} is not valid: a scope is 1 to {MAX_SCOPE_LEN} visible ASCII \
                 characters, without spaces, quotes or backslashes",
                position + 1
            ),
        }
    }
}

impl std::error::Error for ScopeError {}

/// Whether `scope` is 1 to [`MAX_SCOPE_LEN`] of RFC 6749's `NQCHAR`: visible ASCII but `"`
/// and `\`. A `const fn`, so that the axum extractor checks its scope at compile time.
pub(crate) const fn is_valid_scope(scope: &str) -> bool {
    let bytes = scope.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_SCOPE_LEN {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if !byte.is_ascii_graphic() || byte == b'"' || byte == b'\\' {
            return false;
        }
        index += 1;
    }
    true
}

/// Why a check on the authenticated key ([`RequireScopeLayer`],
/// [`RequireModeLayer`](crate::RequireModeLayer), or their axum extractors) refused a request
/// that [`ApiKeyLayer`](crate::ApiKeyLayer) had let through.
///
/// | Variant                        | Status | `code`               | `WWW-Authenticate`                                   |
/// |--------------------------------|--------|----------------------|------------------------------------------------------|
/// | `InsufficientScope`            | 403    | `insufficient_scope` | `Bearer error="insufficient_scope", scope="<scope>"` |
/// | `WrongMode { required: Live }` | 403    | `live_key_required`  | (none)                                               |
/// | `WrongMode { required: Test }` | 403    | `test_key_required`  | (none)                                               |
/// | `MissingIdentity`              | 500    | `internal_error`     | (none)                                               |
///
/// The answers are in the layer's envelope, with `Cache-Control: no-store` and `X-Request-Id`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessError {
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
    /// The request carries no [`KeyIdentity`]: the check runs outside `ApiKeyLayer`, a server
    /// misconfiguration. Refused so that the route stays closed.
    MissingIdentity,
}

impl AccessError {
    /// 403, or 500 for [`AccessError::MissingIdentity`].
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingIdentity => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::FORBIDDEN,
        }
    }

    /// The machine-readable `code` of the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::WrongMode {
                required: KeyMode::Live,
            } => "live_key_required",
            Self::WrongMode {
                required: KeyMode::Test,
            } => "test_key_required",
            Self::MissingIdentity => "internal_error",
        }
    }

    /// The answer to `request`, in the crate's envelope (see
    /// [`ErrorResponse::for_request`]), with this error in its extensions.
    pub fn to_response<B>(&self, request: &Request<B>) -> Response<Bytes> {
        self.error_response(request.into()).into_response()
    }

    pub(crate) fn error_response(&self, request: RequestHead<'_>) -> ErrorResponse {
        let response = ErrorResponse::new(self.status(), self.code(), self.to_string())
            .answering(request)
            .extension(self.clone());
        match self {
            Self::InsufficientScope { scope } => {
                let challenge = format!(r#"Bearer error="insufficient_scope", scope="{scope}""#);
                let challenge = HeaderValue::try_from(challenge)
                    .expect("a valid scope is visible ASCII without quotes");
                response.header(WWW_AUTHENTICATE, challenge)
            }
            _ => response,
        }
    }
}

/// The message of the envelope: what went wrong and what to do.
impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InsufficientScope { scope } => write!(
                f,
                "This API key does not have the scope \"{scope}\" that this endpoint requires. \
                 Use a key that has it, or a key with full access."
            ),
            Self::WrongMode {
                required: KeyMode::Live,
            } => f.write_str(
                "This endpoint accepts live keys only, and the request used a test key. \
                 Use a live key.",
            ),
            Self::WrongMode {
                required: KeyMode::Test,
            } => f.write_str(
                "This endpoint accepts test keys only, and the request used a live key. \
                 Use a test key.",
            ),
            Self::MissingIdentity => f.write_str(
                "The server could not authenticate this request: its API key check is not \
                 configured for this route. Contact the service's operators.",
            ),
        }
    }
}

impl std::error::Error for AccessError {}

/// A [`Layer`] that lets through only requests whose key has a scope, or has full access: put
/// it inside [`ApiKeyLayer`](crate::ApiKeyLayer), on the routes that need the scope.
///
/// A restricted key without the scope gets `403` with code `insufficient_scope` and
/// `WWW-Authenticate: Bearer error="insufficient_scope", scope="<scope>"` (RFC 6750 §3). A
/// request without a [`KeyIdentity`] (this layer outside `ApiKeyLayer`) gets `500`
/// `internal_error`. Scopes are compared exactly (`keys:write` does not imply `keys:read`);
/// stack two layers to require two scopes. With axum, `route_layer` puts it
/// on a route, and the `Scoped` extractor does the same check in a handler's arguments.
///
/// ```
/// use std::convert::Infallible;
///
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, RequireScopeLayer, Tier};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keys = KeyManager::new(MemoryKeyStore::new());
/// let reader = keys
///     .create(NewKey::new("acct_42", Tier::FREE, "dashboard").scopes(["keys:read"]))
///     .await
///     .unwrap();
///
/// let create_key = ServiceBuilder::new()
///     .layer(keys.layer())
///     .layer(RequireScopeLayer::new("keys:write"))
///     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
///
/// let request = Request::builder()
///     .header("Authorization", format!("Bearer {}", reader.key.expose_secret()))
///     .body(String::new())
///     .unwrap();
/// let response = create_key.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// assert_eq!(
///     response.headers()["www-authenticate"],
///     r#"Bearer error="insufficient_scope", scope="keys:write""#
/// );
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RequireScopeLayer {
    scope: Cow<'static, str>,
}

impl RequireScopeLayer {
    /// Requires `scope`.
    ///
    /// # Panics
    ///
    /// If `scope` is not a valid scope (see [`Scopes`]): a key could never have it.
    pub fn new(scope: impl Into<Cow<'static, str>>) -> Self {
        let scope = scope.into();
        assert!(
            is_valid_scope(&scope),
            "RequireScopeLayer: {scope:?} is not a valid scope (1 to {MAX_SCOPE_LEN} visible \
             ASCII characters, without quotes or backslashes)"
        );
        Self { scope }
    }

    /// The scope it requires.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            scope: self.scope.clone(),
        }
    }
}

/// The service built by [`RequireScopeLayer`]: checks the key's scopes, then calls `S`.
#[derive(Clone, Debug)]
pub struct RequireScope<S> {
    inner: S,
    scope: Cow<'static, str>,
}

impl<S> RequireScope<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScope<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RequireFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let scope = &self.scope;
        check_then_call(&mut self.inner, request, |identity| {
            if identity.has_scope(scope) {
                Ok(())
            } else {
                Err(AccessError::InsufficientScope {
                    scope: scope.clone(),
                })
            }
        })
    }
}

/// Checks the request's identity with `check`: calls `inner` (the service made ready) if it
/// passes, else answers the refusal without calling it.
pub(crate) fn check_then_call<S, ReqBody, ResBody>(
    inner: &mut S,
    request: Request<ReqBody>,
    check: impl FnOnce(&KeyIdentity) -> Result<(), AccessError>,
) -> RequireFuture<S::Future>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let verdict = match request.extensions().get::<KeyIdentity>() {
        Some(identity) => check(identity),
        None => Err(AccessError::MissingIdentity),
    };
    match verdict {
        Ok(()) => RequireFuture {
            kind: Kind::Inner {
                future: inner.call(request),
            },
        },
        Err(error) => RequireFuture {
            kind: Kind::Rejected {
                response: Some(error.to_response(&request)),
            },
        },
    }
}

pin_project! {
    /// The response future of [`RequireScope`] and [`RequireMode`](crate::RequireMode): the
    /// inner service's, or a refusal.
    pub struct RequireFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        Rejected { response: Option<Response<Bytes>> },
    }
}

impl<F, ResBody, E> Future for RequireFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future
                .poll(cx)
                .map_ok(|response| response.map(ResponseBody::inner)),
            KindProj::Rejected { response } => {
                let response = response
                    .take()
                    .expect("RequireFuture polled after completion");
                Poll::Ready(Ok(response.map(ResponseBody::rejection)))
            }
        }
    }
}

impl<F> fmt::Debug for RequireFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_sorted_and_deduplicated() {
        let scopes = Scopes::new(["b", "a", "b"]).unwrap();
        assert_eq!(scopes.iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn scope_tokens_of_visible_ascii_are_valid() {
        for scope in [
            "keys:write",
            "a",
            "x.y/z-1_2",
            "!#$%&'()*+,-./:;<=>?@[]^_`{|}~",
        ] {
            assert!(is_valid_scope(scope), "{scope:?}");
        }
        assert!(is_valid_scope(&"s".repeat(MAX_SCOPE_LEN)));
    }

    #[test]
    fn empty_long_spaced_quoted_or_non_ascii_scopes_are_invalid() {
        let long = "s".repeat(MAX_SCOPE_LEN + 1);
        for scope in [
            "",
            " ",
            "keys write",
            "a\"b",
            "a\\b",
            "clé",
            "tab\t",
            "nl\n",
            &long,
        ] {
            assert!(!is_valid_scope(scope), "{scope:?}");
        }
    }

    #[test]
    fn malformed_scope_is_reported_by_position() {
        let error = Scopes::new(["ok", "not ok"]).unwrap_err();
        assert_eq!(error, ScopeError::Malformed { position: 1 });
        assert!(error.to_string().contains("number 2"), "{error}");
    }

    #[test]
    fn no_scopes_and_too_many_scopes_are_refused() {
        assert_eq!(
            Scopes::new(Vec::<String>::new()).unwrap_err(),
            ScopeError::Empty
        );
        let many = (0..=MAX_SCOPES).map(|index| format!("s{index}"));
        assert_eq!(Scopes::new(many).unwrap_err(), ScopeError::TooMany);
        let most = (0..MAX_SCOPES).map(|index| format!("s{index}"));
        assert!(Scopes::new(most).is_ok());
    }

    #[test]
    fn scopes_serialize_as_an_array_and_display_space_separated() {
        let scopes = Scopes::new(["keys:write", "iocs:read"]).unwrap();
        assert_eq!(
            serde_json::to_value(&scopes).unwrap(),
            serde_json::json!(["iocs:read", "keys:write"])
        );
        assert_eq!(scopes.to_string(), "iocs:read keys:write");
    }

    #[test]
    #[should_panic(expected = "not a valid scope")]
    fn require_scope_layer_refuses_an_invalid_scope() {
        let _ = RequireScopeLayer::new("keys write");
    }

    #[test]
    fn insufficient_scope_challenge_names_the_scope() {
        let error = AccessError::InsufficientScope {
            scope: "keys:write".into(),
        };
        let response = error.to_response(&Request::new(()));
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="keys:write""#
        );
    }
}
