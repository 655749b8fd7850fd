//! The middleware: [`ApiKeyLayer`], the [`ApiKeyAuth`] service it builds, and its future.
//!
//! # How keys are read
//!
//! - `Authorization: Bearer <key>` (the scheme in any case, then one or more spaces) or
//!   `X-API-Key: <key>`. Both names are configurable ([`ApiKeyLayer::authorization_header`],
//!   [`ApiKeyLayer::api_key_header`]), and either can be switched off with `None`: behind a
//!   gateway that sends its own bearer token in `Authorization`, read `X-API-Key` alone.
//! - Never from a cookie or the body. A key in the URL query string is refused with
//!   `invalid_api_key`, even beside a good key in a header, because it has already leaked into
//!   logs and browser history: a parameter named `access_token`, `api_key`, `apikey`, `api-key` or
//!   `x-api-key` (any case) with a value, or any parameter whose name or value holds something
//!   shaped like a key (a prefix, then the body's length and alphabet; checksum or not), alone or
//!   within a longer value. `?type=sk_test_x` is no key. The warning in the log names the parameter (when short enough that no key fits in
//!   it), never its value.
//! - Spaces and tabs around the key are ignored. An `Authorization` header of another scheme
//!   (`Basic ...`) is ignored, so `X-API-Key` still works beside it.
//! - The same key in both headers, or in a repeated header, is fine; two different keys are
//!   refused.
//! - A value with inner spaces, control characters, non-ASCII or non-UTF-8 bytes, or longer than
//!   [`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN) characters is `invalid_api_key`, rejected before
//!   hashing.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_api_key::{ApiKeyLayer, MemoryKeyStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::new(MemoryKeyStore::new()))
//!     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//! // A key in the URL is refused, whatever the headers say.
//! let request = Request::get("/api?api_key=sk_live_x").body(String::new()).unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::{Request, Response, Uri};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

pub use crate::body::ResponseBody;
use crate::clock::{Clock, SystemClock};
use crate::credentials::{key_in_query, CredentialError, CredentialHeaders};
use crate::error::{AuthError, ErrorResponseFn, Messages, Refusals, Rejection};
use crate::grpc::RequestHead;
use crate::identity::KeyIdentity;
use crate::key::{KeyDigest, KeyFormat};
use crate::mode::KeyMode;
use crate::request_id::{request_id, sane_request_id};
use crate::store::{KeyRecord, KeyStore, StoreError};

/// A [`Layer`] that authenticates every request by API key before it reaches the inner service.
///
/// A request with an active key goes on with the key's [`KeyIdentity`] in its extensions; any
/// other gets the JSON error envelope (see [`AuthError`] for the codes). The steps:
///
/// 1. Read the key from `Authorization: Bearer <key>` or `X-API-Key: <key>`. A key in the URL
///    query string is refused (`invalid_api_key`, and a warning in the log that names the
///    parameter, never its value), even beside a good key in a header. The scheme is case-insensitive; spaces and tabs around the key are ignored; an
///    `Authorization` of another scheme (`Basic ...`) is ignored; an empty key is no key. Two
///    different keys in one request (in both headers, or a header repeated) are refused, never
///    resolved by picking one; the same key twice is fine. A value that is not 1 to
///    [`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN) visible ASCII characters is `invalid_api_key`. The
///    credential headers are marked sensitive on the way, so the inner service's loggers
///    redact them.
/// 2. Check its [format](KeyFormat): prefix, length, alphabet and checksum. A typo is rejected
///    here, without a store lookup.
/// 3. Find the record by the key's [`LookupId`](crate::LookupId) in the [`KeyStore`], compare the
///    digests in constant time, check that the record's [mode](crate::access::KeyMode) is the one the
///    key's prefix says (an `sk_test_` key whose record says live is `invalid_api_key`: the
///    record is wrong, and neither side can be trusted), and that the key is neither revoked nor
///    expired. A store error is answered `503` and logged with `tracing`; it never lets a
///    request through.
///
/// Every refusal carries a request id, in the body and in `X-Request-Id`. A request that
/// arrives with a sane `X-Request-Id` (set by a proxy, or by tower-http's `SetRequestIdLayer`
/// earlier in the stack) keeps it, so logs correlate: exactly one value of 1 to 128 characters,
/// each an ASCII letter or digit or one of `-` `_` `.` `:`. Otherwise the layer makes a new one,
/// `req_` and 32 random hexadecimal digits.
///
/// A gRPC call (a `POST` over HTTP/2 or with `te: trailers`, with `Content-Type:
/// application/grpc...`) is refused the way gRPC clients understand: HTTP 200 with
/// `grpc-status: 16` (UNAUTHENTICATED), or `14` (UNAVAILABLE) when the store fails, and
/// `grpc-message: <code>: <message>`, so `tonic` reports `Code::Unauthenticated`. Any other
/// request gets the HTTP answer, whatever its `Content-Type`.
///
/// Every refusal carries `Cache-Control: no-store`, and its [`AuthError`] in the response's
/// extensions, so that a layer outside can recognise it (a gRPC refusal is an HTTP 200).
///
/// Each decision is one `tracing` event inside a `api_key_auth` span (DEBUG): `outcome`
/// (`accepted` or the error code), `key_id` and `account_id` when accepted, and `request_id`
/// (an acceptance logs the request's own id only when it is sane by the rule above, else none);
/// never the key. Acceptances are DEBUG, refusals INFO, a key in a URL WARN, a store failure
/// ERROR.
///
/// ```
/// use std::convert::Infallible;
///
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_api_key::{ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier, key::KeyFormat};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryKeyStore::new();
/// let key = KeyFormat::default().generate();
/// let identity = KeyIdentity::new(KeyId::random(), "acct_42", "ci", Tier::FREE);
/// store.insert(KeyRecord::new(key.digest(), identity));
///
/// let service = ServiceBuilder::new()
///     .layer(ApiKeyLayer::new(store))
///     .service_fn(|request: Request<String>| async move {
///         let identity = request.extensions().get::<KeyIdentity>().unwrap();
///         Ok::<_, Infallible>(Response::new(format!("hello, {}", identity.account_id())))
///     });
///
/// let request = Request::builder()
///     .header("X-API-Key", key.expose_secret())
///     .body(String::new())
///     .unwrap();
/// let response = service.clone().oneshot(request).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
///
/// let response = service.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// # }
/// ```
#[derive(Clone)]
pub struct ApiKeyLayer {
    config: Arc<Config>,
}

/// The store, what the layer checks and how it answers; shared by every service it builds, in
/// one `Arc` so that cloning a service (axum does, for each request) touches one shared count.
#[derive(Clone)]
struct Config {
    store: Arc<dyn KeyStore>,
    headers: CredentialHeaders,
    format: KeyFormat,
    error_response: Option<Arc<ErrorResponseFn>>,
    /// How refusals are answered, from the settings above; handed on to the checks inside.
    refusals: Arc<Refusals>,
    clock: Arc<dyn Clock>,
    last_used_interval: Duration,
    /// Whether a request without a key goes on, anonymous.
    optional: bool,
}

/// The mark of a request that [`ApiKeyLayer::optional`] let through without a key: the checks
/// inside answer it `401 missing_api_key`, not `500`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Anonymous;

/// How stale a key's last-used time may get before the layer records a new one.
const DEFAULT_LAST_USED_INTERVAL: Duration = Duration::from_secs(60);

impl ApiKeyLayer {
    /// A layer that checks keys against `store`, reading `Authorization` and `X-API-Key`, and
    /// accepting the default [`KeyFormat`] (`sk_live_` keys).
    pub fn new(store: impl KeyStore) -> Self {
        Self {
            config: Arc::new(Config::new(
                Arc::new(store),
                CredentialHeaders::default(),
                KeyFormat::default(),
            )),
        }
    }

    /// Accepts keys of `format` instead of the default `sk_live_` keys.
    pub fn key_format(self, format: KeyFormat) -> Self {
        self.configure(|config| config.format = format)
    }

    /// Reads `Bearer` keys from the header `name` instead of `Authorization`, or, with `None`,
    /// from no such header: for services behind a gateway whose own bearer token (say, a JWT)
    /// travels in `Authorization` next to `X-API-Key`.
    ///
    /// # Panics
    ///
    /// If this switches off the last header a key could be read from.
    pub fn authorization_header(self, name: impl Into<Option<HeaderName>>) -> Self {
        let name = name.into();
        self.configure(|config| config.headers.authorization = name)
    }

    /// Reads plain keys from the header `name` instead of `X-API-Key`, or, with `None`, from no
    /// such header.
    ///
    /// # Panics
    ///
    /// If this switches off the last header a key could be read from.
    pub fn api_key_header(self, name: impl Into<Option<HeaderName>>) -> Self {
        let name = name.into();
        self.configure(|config| config.headers.api_key = name)
    }

    /// Renders refusals with `render` instead of the JSON envelope, for example as RFC 9457
    /// problem details: the layer's own (401, 503) and those of the checks inside it
    /// ([`RequireScopeLayer`](crate::access::RequireScopeLayer),
    /// [`RequireModeLayer`](crate::access::RequireModeLayer) and the axum extractors, 403), which find
    /// it in the request's extensions.
    ///
    /// The crate still sets the status and adds `Cache-Control: no-store`, `X-Request-Id` and
    /// the `WWW-Authenticate` challenge to the response, unless `render` set them. gRPC calls are
    /// always refused the gRPC way, without `render`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::header::CONTENT_TYPE;
    /// use http::Response;
    /// use tower_api_key::{ApiKeyLayer, MemoryKeyStore, response::Rejection};
    ///
    /// fn problem_json(rejection: &Rejection) -> Response<Bytes> {
    ///     let body = serde_json::json!({
    ///         "type": format!("https://example.com/errors/{}", rejection.error().code()),
    ///         "title": rejection.message(),
    ///         "status": rejection.error().status().as_u16(),
    ///         "instance": rejection.request_id(),
    ///     });
    ///     Response::builder()
    ///         .status(rejection.error().status())
    ///         .header(CONTENT_TYPE, "application/problem+json")
    ///         .body(Bytes::from(body.to_string()))
    ///         .unwrap()
    /// }
    ///
    /// let layer = ApiKeyLayer::new(MemoryKeyStore::new()).error_response(problem_json);
    /// ```
    pub fn error_response(
        self,
        render: impl Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.configure(|config| config.error_response = Some(Arc::new(render)))
    }

    /// Reads the time from `clock` to judge expiry: give it the one your
    /// [`KeyManager`](crate::KeyManager) uses.
    pub fn clock(self, clock: impl Clock) -> Self {
        self.configure(|config| config.clock = Arc::new(clock))
    }

    /// Records a key's use in the store ([`KeyStore::record_use`]) at most once per `interval`
    /// per key, so that listings show when a key was last used without a store write on every
    /// request. The default is 60 seconds.
    pub fn last_used_interval(self, interval: Duration) -> Self {
        self.configure(|config| config.last_used_interval = interval)
    }

    /// Lets a request without a key through, anonymous: it reaches the inner service with no
    /// [`KeyIdentity`] (in axum, `Option<KeyIdentity>` is `None`). A key that is presented is
    /// checked as always: a wrong, malformed, revoked or expired key, two different keys, or a
    /// key in the query string is still refused. For routes that serve everyone and serve
    /// key holders more (a higher limit, private fields).
    ///
    /// Inside, a check that needs a key ([`RequireScopeLayer`](crate::access::RequireScopeLayer),
    /// the `KeyIdentity` and `Scoped` extractors) answers an anonymous request `401
    /// missing_api_key`.
    ///
    /// ```
    /// use std::convert::Infallible;
    ///
    /// use http::{Request, Response, StatusCode};
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_api_key::{ApiKeyLayer, KeyIdentity, MemoryKeyStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let service = ServiceBuilder::new()
    ///     .layer(ApiKeyLayer::new(MemoryKeyStore::new()).optional())
    ///     .service_fn(|request: Request<String>| async move {
    ///         let who = match request.extensions().get::<KeyIdentity>() {
    ///             Some(identity) => identity.account_id().to_owned(),
    ///             None => "anonymous".to_owned(),
    ///         };
    ///         Ok::<_, Infallible>(Response::new(who))
    ///     });
    ///
    /// let anonymous = service.clone().oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(anonymous.status(), StatusCode::OK);
    ///
    /// let wrong_key = Request::builder()
    ///     .header("x-api-key", "sk_live_not_a_key")
    ///     .body(String::new())
    ///     .unwrap();
    /// let refused = service.oneshot(wrong_key).await.unwrap();
    /// assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    /// # }
    /// ```
    pub fn optional(self) -> Self {
        self.configure(|config| config.optional = true)
    }

    fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        let config = Arc::make_mut(&mut self.config);
        change(config);
        assert!(
            config.headers.authorization.is_some() || config.headers.api_key.is_some(),
            "an ApiKeyLayer must read keys from at least one header"
        );
        config.refusals = Arc::new(Refusals::new(
            Messages::new(&config.format, &config.headers),
            config.error_response.clone(),
        ));
        self
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

impl fmt::Debug for ApiKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("headers", &self.headers)
            .field("format", &self.format)
            .field("custom_error_response", &self.error_response.is_some())
            .field("last_used_interval", &self.last_used_interval)
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

impl Config {
    fn new(store: Arc<dyn KeyStore>, headers: CredentialHeaders, format: KeyFormat) -> Self {
        Self {
            store,
            refusals: Arc::new(Refusals::new(Messages::new(&format, &headers), None)),
            headers,
            format,
            error_response: None,
            clock: Arc::new(SystemClock),
            last_used_interval: DEFAULT_LAST_USED_INTERVAL,
            optional: false,
        }
    }

    /// Steps 1 and 2: the request's key, if it has a well-formed one. The credential headers
    /// are marked sensitive on the way.
    fn read_key<B>(&self, request: &mut Request<B>) -> Result<PresentedKey, AuthError> {
        if query_parameter_with_key(request.uri(), &self.format).is_some() {
            return Err(AuthError::KeyInQuery);
        }
        let key = self
            .headers
            .read_key(request.headers_mut())
            .map_err(|error| match error {
                CredentialError::Missing => AuthError::Missing,
                CredentialError::Conflicting => AuthError::Conflicting,
                CredentialError::Malformed => AuthError::Invalid,
            })?;
        let mode = self.format.mode_of(key).ok_or(AuthError::Invalid)?;
        Ok(PresentedKey {
            digest: KeyDigest::of_bytes(key),
            mode,
        })
    }

    /// After step 3: the identity goes on in the request's extensions, or the refusal (returned) is
    /// the answer.
    fn decide<B>(
        &self,
        verdict: Result<KeyIdentity, AuthError>,
        request: &mut Request<B>,
    ) -> Option<Response<Bytes>> {
        match verdict {
            Ok(identity) => {
                crate::metrics::accepted();
                log_acceptance(&identity, request.headers());
                let extensions = request.extensions_mut();
                extensions.insert(identity);
                // The checks inside need the refusal settings only to reach a custom hook: the
                // default answers of their refusals do not depend on this layer's settings.
                if self.error_response.is_some() {
                    extensions.insert(Arc::clone(&self.refusals));
                }
                None
            }
            Err(error) => Some(self.reject(error, request)),
        }
    }

    /// The answer to a refused request: gRPC's for a gRPC call, else the hook's or the JSON
    /// envelope; with the error in its extensions.
    fn reject<B>(&self, error: AuthError, request: &Request<B>) -> Response<Bytes> {
        crate::metrics::refused(&error);
        let rejection = self
            .refusals
            .rejection(error, request_id(request.headers()));
        self.log_refusal(&rejection, request.uri());
        let grpc = RequestHead::from(request).is_grpc_call();
        self.refusals.answer(rejection, grpc)
    }

    /// The one event of a refusal: a store failure is an error, a key in a URL a warning (the
    /// key has leaked), any other refusal is the client's business.
    fn log_refusal(&self, rejection: &Rejection, uri: &Uri) {
        let outcome = rejection.error().code();
        let request_id = rejection.request_id();
        match rejection.error() {
            AuthError::Unavailable(cause) => tracing::error!(
                outcome,
                request_id,
                error = cause as &dyn std::error::Error,
                "API key store failed; request refused"
            ),
            AuthError::KeyInQuery => tracing::warn!(
                outcome,
                request_id,
                parameter = query_parameter_with_key(uri, &self.format),
                "API key sent in the URL query string; request refused"
            ),
            _ => tracing::info!(
                outcome,
                request_id,
                reason = %rejection.error(),
                "API key refused"
            ),
        }
    }
}

/// The name of the query parameter that carries a key, if one does.
fn query_parameter_with_key<'u>(uri: &'u Uri, format: &KeyFormat) -> Option<&'u str> {
    uri.query().and_then(|query| key_in_query(query, format))
}

/// The one event of an accepted request.
fn log_acceptance(identity: &KeyIdentity, headers: &HeaderMap) {
    tracing::debug!(
        outcome = "accepted",
        key_id = identity.key_id().as_str(),
        account_id = identity.account_id(),
        request_id = sane_request_id(headers).and_then(|id| id.to_str().ok()),
        "API key accepted"
    );
}

/// The span of one decision, or none when no subscriber takes DEBUG at all: tracing's `log`
/// feature (on under axum's default features) would otherwise hand every request's disabled span
/// to `log`. (`debug_span!` then asks the subscriber about the span by its name.)
fn decision_span() -> tracing::Span {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        tracing::debug_span!("api_key_auth")
    } else {
        tracing::Span::none()
    }
}

/// What a request presented: its key's digest, and the mode its prefix says.
struct PresentedKey {
    digest: KeyDigest,
    mode: KeyMode,
}

/// Step 3, as the future that waits for the store: look up, then conclude.
async fn authenticate(config: Arc<Config>, key: PresentedKey) -> Result<KeyIdentity, AuthError> {
    let found = crate::metrics::timed_lookup(config.store.find(&key.digest.lookup_id())).await;
    conclude(&config, found, &key)
}

/// Step 3 once the store has answered: verify the record, and note the key's use when the last
/// one noted is older than the interval.
fn conclude(
    config: &Config,
    found: Result<Option<KeyRecord>, StoreError>,
    key: &PresentedKey,
) -> Result<KeyIdentity, AuthError> {
    let now = config.clock.now();
    let record = verify(found, key, now)?;
    let due = record.last_used_at.is_none_or(|last| {
        now.duration_since(last)
            .is_ok_and(|elapsed| elapsed >= config.last_used_interval)
    });
    if due {
        config.store.record_use(&record, now);
    }
    Ok(record.identity)
}

/// The record of an active key whose digest and mode match, or why not.
fn verify(
    found: Result<Option<KeyRecord>, StoreError>,
    key: &PresentedKey,
    now: SystemTime,
) -> Result<KeyRecord, AuthError> {
    let record = found
        .map_err(AuthError::Unavailable)?
        .ok_or(AuthError::Invalid)?;
    // The secret is checked first, so a wrong key never learns whether a key is revoked.
    if !record.digest.matches(&key.digest) {
        return Err(AuthError::Invalid);
    }
    // A record whose mode is not the one its key's prefix says is corrupt or hand-made wrongly
    // (an `sk_test_` key stored as live): trusting either side could open a live-only route.
    if record.identity.mode() != key.mode {
        return Err(AuthError::Invalid);
    }
    if !record.is_active(now) {
        return Err(AuthError::Expired);
    }
    Ok(record)
}

/// The service built by [`ApiKeyLayer`]: authenticates each request, then calls `S`.
#[derive(Clone)]
pub struct ApiKeyAuth<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> ApiKeyAuth<S> {
    inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for ApiKeyAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let span = decision_span();
        let _entered = span.enter();
        let key = match self.config.read_key(&mut request) {
            Ok(key) => key,
            Err(AuthError::Missing) if self.config.optional => {
                crate::metrics::anonymous();
                let extensions = request.extensions_mut();
                extensions.insert(Anonymous);
                if self.config.error_response.is_some() {
                    extensions.insert(Arc::clone(&self.config.refusals));
                }
                return ResponseFuture::inner(self.inner.call(request));
            }
            Err(error) => {
                let response = self.config.reject(error, &request);
                return ResponseFuture::rejected(response);
            }
        };

        // A store that holds its records in memory answers at once: no future to box.
        if let Some(found) = self.config.store.find_now(&key.digest.lookup_id()) {
            let verdict = conclude(&self.config, found, &key);
            return match self.config.decide(verdict, &mut request) {
                None => ResponseFuture::inner(self.inner.call(request)),
                Some(refusal) => ResponseFuture::rejected(refusal),
            };
        }

        // `self.inner` is the clone that was made ready; keep it and leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        let lookup = authenticate(Arc::clone(&config), key);
        drop(_entered);
        ResponseFuture {
            state: State::Lookup {
                lookup: Box::pin(lookup.instrument(span.clone())),
                pending: Some(Box::new(Pending {
                    request,
                    inner,
                    config,
                    span,
                })),
            },
        }
    }
}

type LookupFuture = Pin<Box<dyn Future<Output = Result<KeyIdentity, AuthError>> + Send>>;

/// What waits for the store's answer: the request and the ready inner service.
struct Pending<S, ReqBody> {
    request: Request<ReqBody>,
    inner: S,
    config: Arc<Config>,
    span: tracing::Span,
}

pin_project! {
    /// The response future of [`ApiKeyAuth`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // Boxed, so that the future of a request answered at once (an in-memory store, a cache
        // hit) stays small: it is moved several times on its way to the executor.
        Lookup { lookup: LookupFuture, pending: Option<Box<Pending<S, ReqBody>>> },
        Inner { #[pin] future: S::Future },
        Rejected { response: Option<Response<Bytes>> },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Lookup { lookup, pending } => {
                    let verdict = ready!(lookup.as_mut().poll(cx));
                    let Pending {
                        mut request,
                        mut inner,
                        config,
                        span,
                    } = *pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match span.in_scope(|| config.decide(verdict, &mut request)) {
                        None => State::Inner {
                            future: inner.call(request),
                        },
                        Some(refusal) => State::Rejected {
                            response: Some(refusal),
                        },
                    }
                }
                StateProj::Inner { future } => {
                    return future
                        .poll(cx)
                        .map_ok(|response| response.map(ResponseBody::inner));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
            };
            this.state.set(next);
        }
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{KeyId, Tier};

    fn presented(key: &str) -> PresentedKey {
        PresentedKey {
            digest: KeyDigest::of(key),
            mode: KeyMode::Live,
        }
    }

    fn record(key: &str) -> KeyRecord {
        let identity = KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", Tier::FREE);
        KeyRecord::new(KeyDigest::of(key), identity)
    }

    #[test]
    fn verify_accepts_active_matching_key() {
        let identity = verify(Ok(Some(record("k"))), &presented("k"), SystemTime::now());
        assert_eq!(identity.unwrap().identity.key_id().as_str(), "key_1");
    }

    #[test]
    fn verify_rejects_unknown_key_as_invalid() {
        let result = verify(Ok(None), &presented("k"), SystemTime::now());
        assert!(matches!(result, Err(AuthError::Invalid)));
    }

    #[test]
    fn verify_rejects_wrong_digest_as_invalid() {
        let result = verify(
            Ok(Some(record("k"))),
            &presented("other"),
            SystemTime::now(),
        );
        assert!(matches!(result, Err(AuthError::Invalid)));
    }

    #[test]
    fn verify_checks_the_secret_before_the_status() {
        let now = SystemTime::now();
        let revoked = record("k").with_revoked_at(now);
        let result = verify(Ok(Some(revoked)), &presented("other"), now);
        assert!(matches!(result, Err(AuthError::Invalid)));
    }

    #[test]
    fn verify_rejects_a_record_whose_mode_is_not_the_key_s() {
        let now = SystemTime::now();
        let test_key = PresentedKey {
            mode: KeyMode::Test,
            ..presented("k")
        };
        let result = verify(Ok(Some(record("k"))), &test_key, now);
        assert!(matches!(result, Err(AuthError::Invalid)));
        let test_record = KeyRecord::new(
            KeyDigest::of("k"),
            record("k").identity.with_mode(KeyMode::Test),
        );
        let result = verify(Ok(Some(test_record)), &presented("k"), now);
        assert!(matches!(result, Err(AuthError::Invalid)));
    }

    #[test]
    fn verify_rejects_revoked_key_as_expired() {
        let now = SystemTime::now();
        let result = verify(
            Ok(Some(record("k").with_revoked_at(now))),
            &presented("k"),
            now,
        );
        assert!(matches!(result, Err(AuthError::Expired)));
    }

    #[test]
    fn verify_rejects_key_past_expiry_as_expired() {
        let now = SystemTime::now();
        let expired = record("k").with_expires_at(now - Duration::from_secs(1));
        let result = verify(Ok(Some(expired)), &presented("k"), now);
        assert!(matches!(result, Err(AuthError::Expired)));
    }

    #[test]
    fn verify_turns_store_errors_into_unavailable() {
        let result = verify(
            Err(StoreError::new("down")),
            &presented("k"),
            SystemTime::now(),
        );
        assert!(matches!(result, Err(AuthError::Unavailable(_))));
    }
}
