//! The axum extractor for [`KeyIdentity`] (feature `axum`).

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::request::Parts;
use http::StatusCode;

use crate::envelope::envelope;
use crate::identity::KeyIdentity;
use crate::request_id::{request_id, X_REQUEST_ID};

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
/// On a route the layer does not cover, extraction fails with [`MissingIdentity`]; use
/// `Option<KeyIdentity>` on routes where a key is optional.
impl<S: Send + Sync> FromRequestParts<S> for KeyIdentity {
    type Rejection = MissingIdentity;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<KeyIdentity>()
            .cloned()
            .ok_or_else(|| MissingIdentity {
                request_id: request_id(&parts.headers),
            })
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

/// The rejection of the [`KeyIdentity`] extractor on a route that
/// [`ApiKeyLayer`](crate::ApiKeyLayer) does not cover: a server misconfiguration.
///
/// It answers `500` with the crate's envelope and code `internal_error`, so that the route stays
/// closed and the caller is not told to fix a key that is not at fault.
#[derive(Debug)]
pub struct MissingIdentity {
    request_id: HeaderValue,
}

impl IntoResponse for MissingIdentity {
    fn into_response(self) -> Response {
        let body: Bytes = envelope(
            "internal_error",
            "The server could not authenticate this request: its API key check is not \
             configured for this route. Contact the service's operators.",
            self.request_id.to_str().unwrap_or_default(),
        );
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (X_REQUEST_ID, self.request_id),
            ],
            body,
        )
            .into_response()
    }
}
