//! Access inside an authenticated request: what a key may do ([`Scopes`]), whether it is a live
//! or a test key ([`KeyMode`]), and the layers that check either on a route.
//!
//! A key created with scopes ([`NewKey::scopes`](crate::NewKey::scopes)) may call only the
//! routes that require one of them; a key created without scopes has full access, as Stripe's
//! standard keys do. Scopes are compared exactly: `keys:write` does not imply `keys:read`. Keys
//! are live (`sk_live_`) or test (`sk_test_`) keys, from one store. Put [`RequireScopeLayer`] or
//! [`RequireModeLayer`] inside [`ApiKeyLayer`](crate::ApiKeyLayer), on the routes that need
//! them; with axum, the `Scoped`, `LiveKey` and `TestKey` extractors do the same checks in a
//! handler's arguments. Both answer `403` as the layer answers its refusals (see
//! [`AuthError`]), with the layer's [`error_response`](crate::ApiKeyLayer::error_response)
//! hook if it has one.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_api_key::access::{KeyMode, RequireModeLayer, RequireScopeLayer};
//! use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let keys = KeyManager::new(MemoryKeyStore::new());
//! let sandbox = keys
//!     .create(NewKey::new("acct_42", Tier::FREE, "sandbox").mode(KeyMode::Test))
//!     .await
//!     .unwrap();
//!
//! // Payouts move real money: only live keys with the `payouts:write` scope (or full access).
//! let payouts = ServiceBuilder::new()
//!     .layer(keys.layer())
//!     .layer(RequireModeLayer::live())
//!     .layer(RequireScopeLayer::new("payouts:write"))
//!     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//!
//! let request = Request::builder()
//!     .header("X-API-Key", sandbox.key.expose_secret())
//!     .body(String::new())
//!     .unwrap();
//! let response = payouts.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::FORBIDDEN); // `live_key_required`
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::{AuthError, Refusals};
use crate::identity::KeyIdentity;
pub use crate::mode::KeyMode;
use crate::scope::is_valid_scope;
pub use crate::scope::{ScopeError, Scopes, MAX_SCOPES, MAX_SCOPE_LEN};

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
/// use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier, access::RequireScopeLayer};
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
    inner_service_accessors!();
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

/// The request's identity, if `check` passes it; [`AuthError::Missing`] if an optional layer
/// let it through without a key, [`AuthError::MissingIdentity`] if no layer authenticated it. The check of the layers and of the axum extractors alike.
pub(crate) fn checked_identity(
    extensions: &http::Extensions,
    check: impl FnOnce(&KeyIdentity) -> Result<(), AuthError>,
) -> Result<&KeyIdentity, AuthError> {
    let identity = extensions.get::<KeyIdentity>().ok_or_else(|| {
        // An optional layer let the request through without a key: the check needs one.
        match extensions.get::<crate::layer::Anonymous>() {
            Some(_) => AuthError::Missing,
            None => AuthError::MissingIdentity,
        }
    })?;
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
    /// The response future of [`RequireScope`] and [`RequireMode`](crate::access::RequireMode): the
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

/// A [`Layer`] that lets through only requests authenticated with a key of one mode: put it
/// inside [`ApiKeyLayer`](crate::ApiKeyLayer), on the routes that must refuse the other mode.
///
/// A key of the other mode gets `403` in the crate's envelope, with code `live_key_required`
/// (a test key on a live-only route) or `test_key_required` (a live key on a test-only route).
/// 403 rather than 401: the key is valid, and sending it again will not help. A request that
/// carries no [`KeyIdentity`] (the layer is outside `ApiKeyLayer`, a
/// misconfiguration) gets `500` with code `internal_error`. With axum, the extractors `LiveKey`
/// and `TestKey` do the same check in a handler's arguments.
///
/// ```
/// use std::convert::Infallible;
///
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier, access::{KeyMode, RequireModeLayer}};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keys = KeyManager::new(MemoryKeyStore::new());
/// let test = keys
///     .create(NewKey::new("acct_42", Tier::FREE, "ci").mode(KeyMode::Test))
///     .await
///     .unwrap();
/// assert!(test.key.expose_secret().starts_with("sk_test_"));
///
/// // Payouts move real money: test keys are refused.
/// let payouts = ServiceBuilder::new()
///     .layer(keys.layer())
///     .layer(RequireModeLayer::live())
///     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
///
/// let request = Request::builder()
///     .header("X-API-Key", test.key.expose_secret())
///     .body(String::new())
///     .unwrap();
/// let response = payouts.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), StatusCode::FORBIDDEN); // code `live_key_required`
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RequireModeLayer {
    mode: KeyMode,
}

impl RequireModeLayer {
    /// Lets through keys of `mode` only.
    pub fn new(mode: KeyMode) -> Self {
        Self { mode }
    }

    /// Lets through live keys only: test keys are refused with `live_key_required`.
    pub fn live() -> Self {
        Self::new(KeyMode::Live)
    }

    /// Lets through test keys only (a sandbox route): live keys are refused with
    /// `test_key_required`.
    pub fn test() -> Self {
        Self::new(KeyMode::Test)
    }
}

impl<S> Layer<S> for RequireModeLayer {
    type Service = RequireMode<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireMode {
            inner,
            mode: self.mode,
        }
    }
}

/// The service built by [`RequireModeLayer`]: checks the key's mode, then calls `S`.
#[derive(Clone, Debug)]
pub struct RequireMode<S> {
    inner: S,
    mode: KeyMode,
}

impl<S> RequireMode<S> {
    inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireMode<S>
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
        let required = self.mode;
        check_then_call(&mut self.inner, request, |identity| {
            identity.require_mode(required)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "not a valid scope")]
    fn require_scope_layer_refuses_an_invalid_scope() {
        let _ = RequireScopeLayer::new("keys write");
    }
}
