//! "Settings → API Keys" as an axum [`Router`] (feature `axum`): create, list, get, revoke,
//! delete and rotate the caller's account's keys over any [`KeyManager`], answering every error
//! in the crate's envelope.
//!
//! Nest it where the application wants it, inside [`ApiKeyLayer`](crate::ApiKeyLayer):
//!
//! ```
//! use axum::Router;
//! use tower_api_key::{keys_api, KeyManager, MemoryKeyStore};
//!
//! let keys = KeyManager::new(MemoryKeyStore::new());
//! let app: Router = Router::new()
//!     .nest("/api/v1/keys", keys_api::router(keys.clone()))
//!     .layer(keys.layer());
//! ```
//!
//! | Route                                | Scope        | Answer |
//! |--------------------------------------|--------------|--------|
//! | `GET /`                              | `keys:read`  | `200 {"data": [KeyInfo...]}`, oldest first |
//! | `POST /` `{"name", "expires_in"?, "scopes"?, "mode"?}` | `keys:write` | `201 {"id", "name", "key", "mode", "scopes", "created_at", "expires_at"}`: the only kind of answer that ever holds a key |
//! | `GET /{id}`                          | `keys:read`  | `200` its [`KeyInfo`] |
//! | `DELETE /{id}`                       | `keys:write` | `204`: revoked; the record stays, listed with `revoked_at` |
//! | `DELETE /{id}?permanent=true`        | `keys:write` | `204`: deleted; the key is then unknown |
//! | `POST /{id}/rotate` `{"grace_period"?}` | `keys:write` | `201`, as `POST /`: a replacement; the old key works `grace_period` seconds more (default 86,400) |
//! | `POST /{id}/disable`                 | `keys:write` | `200` its [`KeyInfo`], with `disabled_at`: refused (`401 expired_api_key`) until enabled |
//! | `POST /{id}/enable`                  | `keys:write` | `200` its [`KeyInfo`]: it works again |
//!
//! [`KeyInfo`] serializes with the key's id, name, mode, scopes, hint, times, rate limit and
//! credits, never the key or its digest.
//!
//! # Who may do what
//!
//! The caller's account is its key's: a key only ever sees and changes its own account's keys,
//! and another account's key id is `404 not_found`. A key with scopes needs `keys:read` to read
//! and `keys:write` to change (`403 insufficient_scope`). No key creates, revokes, deletes or
//! rotates, disables or enables a key more powerful than itself ([`KeyInfo::may_manage`]): a test key manages only
//! test keys (`403 live_key_required`), a restricted key only keys with some of its scopes
//! (`403 cannot_grant_scope` on create, `403 key_too_powerful` otherwise), a key that expires
//! only keys that expire no later (`403 key_too_powerful`). A new key takes, unless the body
//! says otherwise, the caller's scopes, mode and expiry, and the caller's tier; the tier's quota
//! is `403 key_limit_reached`. A body or query that is not the one asked for is `400
//! invalid_request`; a route that does not exist `404 not_found`, a method it does not take
//! `405 method_not_allowed`; a store that fails `503 service_unavailable`. Each answer carries
//! the caller's `X-Request-Id` (when sane), or a new one, in the header and the envelope.
//!
//! # Keys managed from a session
//!
//! An application whose users manage their keys in a web page signed in with its own session
//! (not with a key) names the account instead: put an [`Account`] in the request's extensions,
//! from a middleware that runs after its session check. The router then acts for the account's
//! owner, with full access, and needs no key:
//!
//! ```
//! use axum::{extract::Request, middleware::{self, Next}, Router};
//! use tower_api_key::{keys_api::{self, Account}, KeyManager, MemoryKeyStore};
//!
//! async fn account_from_session(mut request: Request, next: Next) -> axum::response::Response {
//!     // Your session check here; this one signs everyone in as acct_42.
//!     request.extensions_mut().insert(Account::new("acct_42"));
//!     next.run(request).await
//! }
//!
//! let keys = KeyManager::new(MemoryKeyStore::new());
//! let app: Router = Router::new()
//!     .nest("/settings/api-keys", keys_api::router(keys))
//!     .layer(middleware::from_fn(account_from_session));
//! ```
//!
//! Keys created this way are on [`Tier::FREE`] unless the [`Account`] names another tier
//! ([`Account::tier`]).

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::Actor;
use crate::identity::{KeyId, KeyIdentity, Tier};
use crate::layer::Anonymous;
use crate::manage::{KeyInfo, KeyManager, ManageError, NewKey, Overreach, MAX_LIFETIME};
use crate::mode::KeyMode;
use crate::response::{errors_in_envelope, ErrorResponse};
use crate::store::WritableKeyStore;

/// How long a rotated key keeps working by default: a day.
const DEFAULT_GRACE: Duration = Duration::from_secs(86_400);

/// The keys API over `keys`: see [the module](self) for its routes and rules. Nest it inside
/// [`ApiKeyLayer`](crate::ApiKeyLayer) (or give it an [`Account`]).
pub fn router<S: WritableKeyStore + Clone>(keys: KeyManager<S>) -> Router {
    Router::new()
        .route("/", get(list::<S>).post(create::<S>))
        .route("/{id}", get(get_one::<S>).delete(remove::<S>))
        .route("/{id}/rotate", post(rotate::<S>))
        .route("/{id}/disable", post(disable::<S>))
        .route("/{id}/enable", post(enable::<S>))
        .fallback(|| async { ApiError::not_found_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(keys)
        .layer(middleware::from_fn(errors_in_envelope))
}

/// The account whose keys a request manages, for an application that signs its users in with
/// its own session: see [the module](self#keys-managed-from-a-session).
#[derive(Clone, Debug)]
pub struct Account {
    id: String,
    tier: Tier,
}

impl Account {
    /// Account `id`, on [`Tier::FREE`].
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            tier: Tier::FREE,
        }
    }

    /// The same account, on `tier`: the tier of the keys it creates.
    pub fn tier(self, tier: Tier) -> Self {
        Self { tier, ..self }
    }
}

/// Who is asking: a key, or an account's owner signed in another way.
enum Caller {
    Key(KeyIdentity),
    Owner(Account),
}

impl Caller {
    fn of(request: &axum::http::request::Parts) -> Result<Self, ApiError> {
        if let Some(account) = request.extensions.get::<Account>() {
            return Ok(Self::Owner(account.clone()));
        }
        match request.extensions.get::<KeyIdentity>() {
            Some(identity) => Ok(Self::Key(identity.clone())),
            // An optional `ApiKeyLayer` let the request through without a key.
            None if request.extensions.get::<Anonymous>().is_some() => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Managing keys needs an API key with the keys:read or keys:write scope: send \
                 it in the Authorization header as \"Bearer <key>\" or in the X-API-Key header.",
            )),
            None => Err(ApiError::unauthenticated()),
        }
    }

    fn account_id(&self) -> &str {
        match self {
            Self::Key(identity) => identity.account_id(),
            Self::Owner(account) => &account.id,
        }
    }

    /// Who the audit events of the caller's changes name: its key, or for an owner the
    /// application.
    fn actor(&self) -> Actor {
        match self {
            Self::Key(identity) => Actor::Key(identity.key_id().clone()),
            Self::Owner(_) => Actor::Application,
        }
    }

    fn require_scope(&self, scope: &'static str) -> Result<(), ApiError> {
        match self {
            Self::Key(identity) if !identity.has_scope(scope) => {
                let message = format!(
                    "This API key does not have the scope \"{scope}\" that this endpoint \
                     requires. Use a key that has it, or a key with full access."
                );
                let challenge = format!(r#"Bearer error="insufficient_scope", scope="{scope}""#);
                Err(ApiError {
                    challenge: HeaderValue::try_from(challenge).ok(),
                    ..ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", &message)
                })
            }
            _ => Ok(()),
        }
    }

    /// `keys` acting as the caller, once it is checked that the caller may `act` on key `id`
    /// of its account: a key only on keys no more powerful than itself
    /// ([`KeyInfo::may_manage`]), an owner on any.
    async fn changing<S: WritableKeyStore + Clone>(
        &self,
        keys: &KeyManager<S>,
        id: &KeyId,
        act: &str,
    ) -> Result<KeyManager<S>, ApiError> {
        if let Some(own) = self.info(keys).await? {
            let target = keys.get(self.account_id(), id).await?;
            own.may_manage(&target)
                .map_err(|overreach| ApiError::cannot_change(overreach, act))?;
        }
        Ok(keys.acting_as(self.actor()))
    }

    /// The caller's own key's description, which holds its expiry; `None` for an owner.
    async fn info<S: WritableKeyStore>(
        &self,
        keys: &KeyManager<S>,
    ) -> Result<Option<KeyInfo>, ApiError> {
        let Self::Key(identity) = self else {
            return Ok(None);
        };
        match keys.get(identity.account_id(), identity.key_id()).await {
            Ok(info) => Ok(Some(info)),
            Err(ManageError::NotFound) => Err(ApiError::caller_unknown()),
            Err(error) => Err(error.into()),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Self::of(parts)
    }
}

/// `GET /`: the account's keys, without secrets.
async fn list<S: WritableKeyStore>(
    State(keys): State<KeyManager<S>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_scope("keys:read")?;
    let data = keys.list(caller.account_id()).await?;
    Ok(Json(json!({ "data": data })))
}

/// `GET /{id}`: one of the account's keys.
async fn get_one<S: WritableKeyStore>(
    State(keys): State<KeyManager<S>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    caller.require_scope("keys:read")?;
    Ok(Json(keys.get(caller.account_id(), &KeyId::new(id)).await?))
}

/// `POST /`: a new key for the account, in the only kind of answer that ever holds a key.
async fn create<S: WritableKeyStore + Clone>(
    State(keys): State<KeyManager<S>>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_scope("keys:write")?;
    let request: CreateKeyRequest = serde_json::from_slice(&body).map_err(|_| {
        ApiError::invalid_request(
            "The body must be a JSON object with a string \"name\", and optionally a \
             positive integer \"expires_in\" (seconds), an array of strings \"scopes\", \
             and a \"mode\" of \"live\" or \"test\".",
        )
    })?;
    let own = caller.info(&keys).await?;
    let mut new = request.into_new_key(&caller, own.as_ref())?;
    if let Some(own) = &own {
        new = new.created_by(own);
    }
    let keys = keys.acting_as(caller.actor());
    let created = keys.create(new).await.map_err(|error| match error {
        ManageError::Overreach(overreach) => ApiError::cannot_create(overreach),
        error => error.into(),
    })?;
    Ok((StatusCode::CREATED, Json(with_key(&created))))
}

/// What `POST /` and `POST /{id}/rotate` answer: the key, with its id, name, mode, scopes,
/// creation and expiry.
fn with_key(created: &crate::manage::CreatedKey) -> Value {
    let info = serde_json::to_value(&created.info).expect("key info serializes");
    json!({
        "id": info["id"],
        "name": info["name"],
        "key": created.key.expose_secret(),
        "mode": info["mode"],
        "scopes": info["scopes"],
        "created_at": info["created_at"],
        "expires_at": info["expires_at"],
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    permanent: bool,
}

/// `DELETE /{id}`: revokes (or, with `?permanent=true`, deletes) one of the account's keys that
/// is no more powerful than the caller.
async fn remove<S: WritableKeyStore + Clone>(
    State(keys): State<KeyManager<S>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    caller.require_scope("keys:write")?;
    let id = KeyId::new(id);
    let account_id = caller.account_id();
    let keys = caller.changing(&keys, &id, "revoke").await?;
    if query.permanent {
        keys.delete(account_id, &id).await?;
    } else {
        keys.revoke(account_id, &id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    grace_period: Option<i64>,
}

/// `POST /{id}/rotate`: a replacement for one of the account's active keys, which keeps working
/// for the grace period.
async fn rotate<S: WritableKeyStore + Clone>(
    State(keys): State<KeyManager<S>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_scope("keys:write")?;
    let request: RotateRequest = if body.is_empty() {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            ApiError::invalid_request(
                "The body must be empty, or a JSON object with an optional positive integer \
                 \"grace_period\" (seconds).",
            )
        })?
    };
    let grace = match request.grace_period {
        None => DEFAULT_GRACE,
        Some(seconds) => positive_seconds(seconds, "grace_period")?,
    };
    let id = KeyId::new(id);
    let account_id = caller.account_id();
    let keys = caller.changing(&keys, &id, "rotate").await?;
    let created = keys.rotate(account_id, &id, grace).await?;
    Ok((StatusCode::CREATED, Json(with_key(&created))))
}

/// `POST /{id}/disable`: disables one of the account's keys that is no more powerful than the
/// caller, until it is enabled again.
async fn disable<S: WritableKeyStore + Clone>(
    State(keys): State<KeyManager<S>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    switch(keys, caller, KeyId::new(id), true).await
}

/// `POST /{id}/enable`: enables one of the account's disabled keys that is no more powerful
/// than the caller.
async fn enable<S: WritableKeyStore + Clone>(
    State(keys): State<KeyManager<S>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    switch(keys, caller, KeyId::new(id), false).await
}

async fn switch<S: WritableKeyStore + Clone>(
    keys: KeyManager<S>,
    caller: Caller,
    id: KeyId,
    disable: bool,
) -> Result<Json<KeyInfo>, ApiError> {
    caller.require_scope("keys:write")?;
    let account_id = caller.account_id();
    let verb = if disable { "disable" } else { "enable" };
    let keys = caller.changing(&keys, &id, verb).await?;
    let info = if disable {
        keys.disable(account_id, &id).await?
    } else {
        keys.enable(account_id, &id).await?
    };
    Ok(Json(info))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyRequest {
    name: String,
    expires_in: Option<i64>,
    scopes: Option<Vec<String>>,
    mode: Option<KeyMode>,
}

impl CreateKeyRequest {
    /// The key asked for, with the caller's tier, and its scopes, mode and expiry where the body
    /// names none (a key's; an owner's are full access, live, never).
    fn into_new_key(self, caller: &Caller, own: Option<&KeyInfo>) -> Result<NewKey, ApiError> {
        let tier = match caller {
            Caller::Key(identity) => identity.tier().clone(),
            Caller::Owner(account) => account.tier.clone(),
        };
        let mode = self
            .mode
            .or(own.map(|own| own.mode))
            .unwrap_or(KeyMode::Live);
        let mut new = NewKey::new(caller.account_id(), tier, self.name).mode(mode);
        match (self.scopes, own.and_then(|own| own.scopes.as_ref())) {
            (Some(scopes), _) => new = new.scopes(scopes),
            (None, Some(scopes)) => new = new.scopes(scopes.iter()),
            (None, None) => {}
        }
        match (self.expires_in, own.and_then(|own| own.expires_at)) {
            (Some(seconds), _) => new = new.expires_in(positive_seconds(seconds, "expires_in")?),
            (None, Some(expires_at)) => new = new.expires_at(inherited_expiry(expires_at)?),
            (None, None) => {}
        }
        Ok(new)
    }
}

/// The expiry a new key takes from its creator's, `own`: the same, but no further ahead than a
/// key may live. A creator that expired since it authenticated creates nothing.
fn inherited_expiry(own: SystemTime) -> Result<SystemTime, ApiError> {
    let now = SystemTime::now();
    if own <= now {
        return Err(ApiError::caller_expired());
    }
    Ok(now
        .checked_add(MAX_LIFETIME)
        .map_or(own, |latest| own.min(latest)))
}

fn positive_seconds(seconds: i64, field: &str) -> Result<Duration, ApiError> {
    u64::try_from(seconds)
        .ok()
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::invalid_request(&format!(
                "\"{field}\" must be a positive number of seconds."
            ))
        })
}

/// An error of the keys API, written in the envelope by
/// [`errors_in_envelope`], with the request's id.
#[derive(Clone, Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The `WWW-Authenticate` challenge of a missing scope (RFC 6750 §3.1).
    challenge: Option<HeaderValue>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: &str) -> Self {
        Self {
            status,
            code,
            message: message.to_owned(),
            challenge: None,
        }
    }

    fn invalid_request(message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn not_found_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no such endpoint. Check the method and the path.",
        )
    }

    fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "This endpoint does not take this method.",
        )
    }

    /// No key, no account: the router was mounted outside `ApiKeyLayer`.
    fn unauthenticated() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "The server could not tell whose keys to manage.",
        )
    }

    /// A test key tried to `act` (`"create live keys"`).
    fn live_key_required(act: &str) -> Self {
        let message = format!("A test key cannot {act}. Use a live key.");
        Self::new(StatusCode::FORBIDDEN, "live_key_required", &message)
    }

    /// The caller asked for a key more powerful than itself.
    fn cannot_create(overreach: Overreach) -> Self {
        match overreach {
            Overreach::LiveKey => Self::live_key_required("create live keys"),
            // A valid scope: the manager refuses invalid ones before comparing.
            Overreach::Scope(scope) => Self::cannot_grant(&format!("the scope \"{scope}\"")),
            Overreach::FullAccess => Self::cannot_grant("full access"),
            Overreach::Outlives => Self::too_powerful(
                "create a key that expires later than itself. Ask for an \"expires_in\" that \
                 ends no later than this key's \"expires_at\", or leave it out to expire with \
                 this key",
            ),
        }
    }

    /// The caller tried to `act` (`"revoke"`, `"rotate"`) a key more powerful than itself.
    fn cannot_change(overreach: Overreach, act: &str) -> Self {
        match overreach {
            Overreach::LiveKey => Self::live_key_required(&format!("{act} live keys")),
            Overreach::Scope(scope) => Self::too_powerful(&format!(
                "{act} a key with the scope \"{scope}\", which it does not have itself. Use a \
                 key with that scope, or with full access"
            )),
            Overreach::FullAccess => Self::too_powerful(&format!(
                "{act} a key with full access, which it does not have itself. Use a key with \
                 full access"
            )),
            Overreach::Outlives => Self::too_powerful(&format!(
                "{act} a key that expires later than itself, or never. Use a key that expires \
                 no sooner"
            )),
        }
    }

    /// A restricted key tried to create a key with `access` (`the scope "x"`), which it lacks.
    fn cannot_grant(access: &str) -> Self {
        let message = format!(
            "This key cannot create a key with {access}, which it does not have itself. Ask \
             only for scopes of this key, or use a key with full access."
        );
        Self::new(StatusCode::FORBIDDEN, "cannot_grant_scope", &message)
    }

    /// The caller tried to `act` on a key more powerful than itself (`"revoke a key ..."`).
    fn too_powerful(act: &str) -> Self {
        let message = format!("This key cannot {act}.");
        Self::new(StatusCode::FORBIDDEN, "key_too_powerful", &message)
    }

    /// The caller's key authenticated but has expired since.
    fn caller_expired() -> Self {
        let message = "This key has expired. Use another key.";
        Self::new(StatusCode::UNAUTHORIZED, "expired_api_key", message)
    }

    /// The caller's key authenticated but is no longer in its account's keys: it was deleted.
    fn caller_unknown() -> Self {
        let message = "This key no longer exists. Use another key.";
        Self::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
    }
}

impl From<ManageError> for ApiError {
    fn from(error: ManageError) -> Self {
        let (status, code) = match &error {
            ManageError::InvalidName
            | ManageError::InvalidExpiry
            | ManageError::InvalidScopes(_)
            | ManageError::UnsupportedMode(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ManageError::KeyLimitReached { .. } => (StatusCode::FORBIDDEN, "key_limit_reached"),
            ManageError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ManageError::Overreach(_) => (StatusCode::FORBIDDEN, "key_too_powerful"),
            ManageError::UnknownTier(_) => (StatusCode::FORBIDDEN, "key_limit_reached"),
            ManageError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        };
        let message = match &error {
            ManageError::Store(store) => {
                tracing::error!(
                    error = store as &dyn std::error::Error,
                    "the keys API could not reach the key store"
                );
                "Keys cannot be managed right now. Retry shortly.".to_owned()
            }
            ManageError::NotFound => "This account has no key with that id.".to_owned(),
            _ => sentence(&error.to_string()),
        };
        Self {
            status,
            code,
            message,
            challenge: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(
            status = self.status.as_u16(),
            code = self.code,
            "the keys API refused a request"
        );
        let mut error = ErrorResponse::new(self.status, self.code, self.message);
        if let Some(challenge) = self.challenge {
            error = error.header(WWW_AUTHENTICATE, challenge);
        }
        IntoResponse::into_response(error)
    }
}

/// `the tier "x" has no key limit` as `The tier "x" has no key limit.`
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        format!("{}{}.", first.to_uppercase(), chars.as_str())
    })
}
