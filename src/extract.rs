//! The axum extractors (feature `axum`): [`KeyIdentity`] itself, [`Scoped`] for a key with a
//! scope, and [`LiveKey`] and [`TestKey`] for a key of one mode. Each refusal is an
//! [`AuthRejection`], answered as the layer answers its own.
//!
//! ```
//! use axum::{routing::post, Router};
//! use tower_api_key::extract::{LiveKey, RequiredScope, Scoped};
//! use tower_api_key::{ApiKeyLayer, MemoryKeyStore};
//!
//! struct PayoutsWrite;
//!
//! impl RequiredScope for PayoutsWrite {
//!     const SCOPE: &'static str = "payouts:write";
//! }
//!
//! // Only a live key with the `payouts:write` scope, or full access, gets here.
//! async fn payout(LiveKey(_): LiveKey, identity: Scoped<PayoutsWrite>) -> String {
//!     format!("paying out to {}", identity.account_id())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/payouts", post(payout))
//!     .layer(ApiKeyLayer::new(MemoryKeyStore::new()));
//! ```

use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::access::{checked_identity, refusals_of};
use crate::error::AuthError;
use crate::identity::KeyIdentity;
use crate::mode::KeyMode;
use crate::scope::is_valid_scope;

/// Extracts the identity that [`ApiKeyLayer`](crate::ApiKeyLayer) put in the request.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_api_key::{ApiKeyLayer, KeyIdentity, MemoryKeyStore};
///
/// async fn whoami(identity: KeyIdentity) -> String {
///     format!("{} ({})", identity.account_id(), identity.name())
/// }
///
/// let app: Router = Router::new()
///     .route("/whoami", get(whoami))
///     .layer(ApiKeyLayer::new(MemoryKeyStore::new()));
/// ```
///
/// On a route the layer does not cover, extraction fails with `500`
/// ([`AuthError::MissingIdentity`]). Behind an [optional](crate::ApiKeyLayer::optional) layer, a
/// request without a key fails with `401 missing_api_key`; use `Option<KeyIdentity>` where a key
/// is optional.
impl<S: Send + Sync> FromRequestParts<S> for KeyIdentity {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        checked(parts, |_| Ok(()))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for KeyIdentity {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<KeyIdentity>().cloned())
    }
}

/// A scope that a route requires, named by a type for the [`Scoped`] extractor.
///
/// ```
/// use tower_api_key::extract::RequiredScope;
///
/// struct KeysWrite;
///
/// impl RequiredScope for KeysWrite {
///     const SCOPE: &'static str = "keys:write";
/// }
/// ```
///
/// `SCOPE` must be a valid scope (see [`Scopes`](crate::access::Scopes)): a handler that extracts a
/// `Scoped` of an invalid one fails to build.
///
/// ```compile_fail
/// use axum::{routing::get, Router};
/// use tower_api_key::extract::{RequiredScope, Scoped};
///
/// struct Spaced;
///
/// impl RequiredScope for Spaced {
///     const SCOPE: &'static str = "keys write"; // a space: not a scope
/// }
///
/// async fn handler(_: Scoped<Spaced>) {}
///
/// let app: Router = Router::new().route("/", get(handler));
/// ```
pub trait RequiredScope: Send + Sync + 'static {
    /// The scope.
    const SCOPE: &'static str;
}

/// Extracts the identity of a key that has the scope `T::SCOPE`, or full access: the
/// [`RequireScopeLayer`](crate::access::RequireScopeLayer) check, in a handler's arguments.
///
/// A restricted key without the scope is refused with `403` `insufficient_scope` and its
/// `WWW-Authenticate` challenge; a route outside [`ApiKeyLayer`](crate::ApiKeyLayer) answers
/// `500` `internal_error` ([`AuthRejection`]). It dereferences to the [`KeyIdentity`].
///
/// ```
/// use axum::{routing::post, Router};
/// use tower_api_key::{ApiKeyLayer, MemoryKeyStore, extract::{RequiredScope, Scoped}};
///
/// struct KeysWrite;
///
/// impl RequiredScope for KeysWrite {
///     const SCOPE: &'static str = "keys:write";
/// }
///
/// async fn create_key(identity: Scoped<KeysWrite>) -> String {
///     format!("creating a key for {}", identity.account_id())
/// }
///
/// let app: Router = Router::new()
///     .route("/keys", post(create_key))
///     .layer(ApiKeyLayer::new(MemoryKeyStore::new()));
/// ```
pub struct Scoped<T> {
    identity: KeyIdentity,
    scope: PhantomData<fn() -> T>,
}

impl<T> Scoped<T> {
    /// The identity.
    pub fn into_inner(self) -> KeyIdentity {
        self.identity
    }
}

impl<T> Deref for Scoped<T> {
    type Target = KeyIdentity;

    fn deref(&self) -> &KeyIdentity {
        &self.identity
    }
}

impl<T> Clone for Scoped<T> {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            scope: PhantomData,
        }
    }
}

impl<T: RequiredScope> fmt::Debug for Scoped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("scope", &T::SCOPE)
            .field("identity", &self.identity)
            .finish()
    }
}

impl<S: Send + Sync, T: RequiredScope> FromRequestParts<S> for Scoped<T> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        const {
            assert!(
                is_valid_scope(T::SCOPE),
                "RequiredScope::SCOPE must be 1 to 64 visible ASCII characters, without quotes \
                 or backslashes"
            );
        }
        let identity = checked(parts, |identity| identity.require_scope(T::SCOPE))?;
        Ok(Self {
            identity,
            scope: PhantomData,
        })
    }
}

/// Extracts the identity of a live key: a test key is refused with `403` `live_key_required`,
/// as [`RequireModeLayer::live`](crate::access::RequireModeLayer::live) does.
///
/// ```
/// use axum::{routing::post, Router};
/// use tower_api_key::{ApiKeyLayer, MemoryKeyStore, extract::LiveKey};
///
/// async fn payout(LiveKey(identity): LiveKey) -> String {
///     format!("paying out to {}", identity.account_id())
/// }
///
/// let app: Router = Router::new()
///     .route("/payouts", post(payout))
///     .layer(ApiKeyLayer::new(MemoryKeyStore::new()));
/// ```
#[derive(Clone, Debug)]
pub struct LiveKey(pub KeyIdentity);

/// Extracts the identity of a test key: a live key is refused with `403` `test_key_required`,
/// as [`RequireModeLayer::test`](crate::access::RequireModeLayer::test) does. For sandbox-only routes
/// (simulating an event, resetting test data).
#[derive(Clone, Debug)]
pub struct TestKey(pub KeyIdentity);

impl<S: Send + Sync> FromRequestParts<S> for LiveKey {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        checked(parts, |identity| identity.require_mode(KeyMode::Live)).map(Self)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TestKey {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        checked(parts, |identity| identity.require_mode(KeyMode::Test)).map(Self)
    }
}

/// The request's identity if `check` passes it, else the refusal, answered as the
/// [`ApiKeyLayer`](crate::ApiKeyLayer) that authenticated the request answers refusals.
fn checked(
    parts: &Parts,
    check: impl FnOnce(&KeyIdentity) -> Result<(), AuthError>,
) -> Result<KeyIdentity, AuthRejection> {
    match checked_identity(&parts.extensions, check) {
        Ok(identity) => Ok(identity.clone()),
        Err(error) => {
            let response = refusals_of(&parts.extensions).respond(error.clone(), parts.into());
            Err(AuthRejection {
                error,
                response: Box::new(response),
            })
        }
    }
}

/// The rejection of the crate's extractors ([`KeyIdentity`], [`Scoped`], [`LiveKey`],
/// [`TestKey`]): the [`AuthError`], answered as every refusal of the crate is (the JSON
/// envelope, or the layer's [`error_response`](crate::ApiKeyLayer::error_response) hook).
#[derive(Debug)]
pub struct AuthRejection {
    error: AuthError,
    // Boxed: rejections are rare, and extraction results stay small.
    response: Box<http::Response<bytes::Bytes>>,
}

impl AuthRejection {
    /// Why the request was refused.
    pub fn error(&self) -> &AuthError {
        &self.error
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        self.response.map(axum_core::body::Body::from)
    }
}
