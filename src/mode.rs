//! Live and test keys: [`KeyMode`], and [`RequireModeLayer`] to refuse one mode on a route.

use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::scope::{check_then_call, RequireFuture};

/// Whether a key is a live key (`sk_live_...`) or a test key (`sk_test_...`), as Stripe's are.
///
/// Both kinds live in one store and authenticate alike; handlers read the mode from
/// [`KeyIdentity::mode`](crate::KeyIdentity::mode) to keep test traffic away from real data,
/// and [`RequireModeLayer`] (or the axum extractors `LiveKey` and `TestKey`) refuses one mode
/// on a route. [`KeyManager`](crate::KeyManager) records the mode when it creates a key, from
/// the prefix it generates the key with; as a key's digest covers its prefix, a test key's
/// random part presented as `sk_live_...` is just an unknown key.
///
/// It serializes as `"live"` or `"test"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// A key for real traffic: the default.
    #[default]
    Live,
    /// A key for development and tests, to be kept away from real data and side effects.
    Test,
}

impl KeyMode {
    /// `"live"` or `"test"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }

    /// The mode named `"live"` or `"test"`, as [`KeyMode::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "live" => Some(Self::Live),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
}

impl fmt::Display for KeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A [`Layer`] that lets through only requests authenticated with a key of one mode: put it
/// inside [`ApiKeyLayer`](crate::ApiKeyLayer), on the routes that must refuse the other mode.
///
/// A key of the other mode gets `403` in the crate's envelope, with code `live_key_required`
/// (a test key on a live-only route) or `test_key_required` (a live key on a test-only route).
/// 403 rather than 401: the key is valid, and sending it again will not help. A request that
/// carries no [`KeyIdentity`](crate::KeyIdentity) (the layer is outside `ApiKeyLayer`, a
/// misconfiguration) gets `500` with code `internal_error`. With axum, the extractors `LiveKey`
/// and `TestKey` do the same check in a handler's arguments.
///
/// ```
/// use std::convert::Infallible;
///
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_api_key::{KeyManager, KeyMode, MemoryKeyStore, NewKey, RequireModeLayer, Tier};
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireMode<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<crate::ResponseBody<ResBody>>;
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
    fn modes_round_trip_through_their_names() {
        for mode in [KeyMode::Live, KeyMode::Test] {
            assert_eq!(KeyMode::parse(mode.as_str()), Some(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(KeyMode::parse("Live"), None);
    }

    #[test]
    fn modes_serialize_in_lowercase() {
        assert_eq!(serde_json::to_value(KeyMode::Test).unwrap(), "test");
        assert_eq!(KeyMode::default(), KeyMode::Live);
    }
}
