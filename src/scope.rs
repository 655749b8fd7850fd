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
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde::Serialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::{AuthError, Refusals};
use crate::identity::KeyIdentity;

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
            identity.require_scope(scope)
        })
    }
}

/// Checks the request's identity with `check`: calls `inner` (the service made ready) if it
/// passes, else answers the refusal without calling it.
pub(crate) fn check_then_call<S, ReqBody, ResBody>(
    inner: &mut S,
    request: Request<ReqBody>,
    check: impl FnOnce(&KeyIdentity) -> Result<(), AuthError>,
) -> RequireFuture<S::Future>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let extensions = request.extensions();
    match checked_identity(extensions, check) {
        Ok(_) => RequireFuture {
            kind: Kind::Inner {
                future: inner.call(request),
            },
        },
        Err(error) => RequireFuture {
            kind: Kind::Rejected {
                response: Some(refusals_of(extensions).respond(error, (&request).into())),
            },
        },
    }
}

/// The request's identity, if `check` passes it; [`AuthError::MissingIdentity`] if no layer
/// authenticated the request. The check of the layers and of the axum extractors alike.
pub(crate) fn checked_identity(
    extensions: &http::Extensions,
    check: impl FnOnce(&KeyIdentity) -> Result<(), AuthError>,
) -> Result<&KeyIdentity, AuthError> {
    let identity = extensions
        .get::<KeyIdentity>()
        .ok_or(AuthError::MissingIdentity)?;
    check(identity).map(|()| identity)
}

/// How the [`ApiKeyLayer`](crate::ApiKeyLayer) that authenticated a request answers refusals;
/// the defaults if none did.
pub(crate) fn refusals_of(extensions: &http::Extensions) -> &Refusals {
    extensions
        .get::<Arc<Refusals>>()
        .map_or(Refusals::fallback(), |refusals| refusals)
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
}
