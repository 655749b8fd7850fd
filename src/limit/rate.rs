//! [`RateLimitLayer`]: the layer, its service and its future; the counters are in `local` (in
//! this process) or in Redis (`global`).

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

#[cfg(feature = "redis")]
use super::global::GlobalCounters;
use super::local::{LimitClock, LocalCounters, Subject};
use super::{
    retry_after_secs, seconds_up, service_limit_header, RateLimit, RATELIMIT, RATELIMIT_POLICY,
};
use crate::access::{checked_identity, refusals_of};
use crate::body::ResponseBody;
use crate::clock::Clock;
use crate::error::AuthError;
use crate::identity::{KeyIdentity, Tier};
use crate::manage::TierLimits;
use crate::metrics::LimitMode;

/// A [`Layer`] that refuses a key's requests beyond its [`RateLimit`] with `429`: put it
/// inside [`ApiKeyLayer`](crate::ApiKeyLayer). See [the module](super) for the answer.
///
/// Clones, and the services built from it, share its counters. A request without a
/// [`KeyIdentity`] (the layer outside `ApiKeyLayer`, a misconfiguration) gets `500`
/// `internal_error`.
///
/// ```
/// use std::convert::Infallible;
///
/// use http::{Request, Response, StatusCode};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_api_key::limit::{RateLimit, RateLimitLayer};
/// use tower_api_key::manage::TierLimits;
/// use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keys = KeyManager::new(MemoryKeyStore::new());
/// let created = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await.unwrap();
///
/// // The free tier gets 2 requests per minute here (60 by default).
/// let limits = TierLimits::default().with_rate_limit(Tier::FREE, RateLimit::per_minute(2));
/// let mut service = ServiceBuilder::new()
///     .layer(keys.layer()) // outside: authenticates
///     .layer(RateLimitLayer::new(limits)) // inside: counts authenticated requests only
///     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
///
/// let request = || {
///     Request::builder()
///         .header("x-api-key", created.key.expose_secret())
///         .body(String::new())
///         .unwrap()
/// };
/// for _ in 0..2 {
///     let response = service.ready().await.unwrap().call(request()).await.unwrap();
///     assert_eq!(response.status(), StatusCode::OK);
/// }
/// let response = service.ready().await.unwrap().call(request()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS); // code `rate_limited`
/// assert_eq!(response.headers()["retry-after"], "30");
/// assert_eq!(response.headers()["ratelimit-policy"], r#""default";q=2;w=60"#);
/// assert_eq!(response.headers()["ratelimit"], r#""default";r=0;t=30"#);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limits: Arc<Limits>,
    headers_on_success: bool,
}

/// What a layer limits, and where it counts.
#[derive(Debug)]
struct Limits {
    /// Each tier's limit, for keys without their own.
    tiers: Vec<(Tier, RateLimit)>,
    per_account: bool,
    counters: Counters,
}

/// Where the counters are.
#[derive(Debug)]
enum Counters {
    Local(LocalCounters),
    #[cfg(feature = "redis")]
    Global(Arc<GlobalCounters>),
}

/// A decision: made at once, or to wait for.
enum Check {
    Now(Result<Option<Passed>, AuthError>),
    #[cfg(feature = "redis")]
    Later(Pin<Box<dyn Future<Output = Result<Option<Passed>, AuthError>> + Send>>),
}

impl Limits {
    /// The limit of `identity`: its own, or its tier's.
    fn limit_of(&self, identity: &KeyIdentity) -> Option<RateLimit> {
        identity.rate_limit().or_else(|| {
            let tier = identity.tier();
            (self.tiers.iter())
                .find(|(limited, _)| limited == tier)
                .map(|(_, limit)| *limit)
        })
    }

    fn subject<'a>(&self, identity: &'a KeyIdentity) -> Subject<'a> {
        if self.per_account {
            Subject::Account(identity.account_id())
        } else {
            Subject::Key(identity.key_id())
        }
    }

    /// Counts a request of `identity`: `None` if it is not limited.
    fn check(&self, identity: &KeyIdentity) -> Check {
        let Some(limit) = self.limit_of(identity) else {
            return Check::Now(Ok(None));
        };
        match &self.counters {
            Counters::Local(counters) => {
                let counted = counters.check(self.subject(identity), limit);
                Check::Now(decide(identity, limit, counted, LimitMode::Local))
            }
            #[cfg(feature = "redis")]
            Counters::Global(counters) => {
                let counters = Arc::clone(counters);
                let subject = match self.subject(identity) {
                    Subject::Key(key_id) => format!("key:{key_id}"),
                    Subject::Account(account_id) => format!("account:{account_id}"),
                };
                let identity = identity.clone();
                Check::Later(Box::pin(async move {
                    match counters.check(&subject, limit).await {
                        Ok(counted) => decide(&identity, limit, counted, LimitMode::Global),
                        Err(error) if counters.fails_open() => {
                            tracing::warn!(
                                error = &error as &dyn std::error::Error,
                                key_id = %identity.key_id(),
                                "could not count a request against its global rate limit; \
                                 letting it pass (fail_open)"
                            );
                            Ok(None)
                        }
                        Err(error) => {
                            tracing::error!(
                                error = &error as &dyn std::error::Error,
                                key_id = %identity.key_id(),
                                "could not count a request against its global rate limit; \
                                 refusing it"
                            );
                            Err(AuthError::Unavailable(error))
                        }
                    }
                }))
            }
        }
    }
}

/// The answer to a request counted in `mode`: what is left, or how long to wait.
fn decide(
    identity: &KeyIdentity,
    limit: RateLimit,
    counted: Result<u32, std::time::Duration>,
    mode: LimitMode,
) -> Result<Option<Passed>, AuthError> {
    match counted {
        Ok(remaining) => Ok(Some(Passed { limit, remaining })),
        Err(retry_after) => {
            crate::metrics::rate_limited(mode);
            tracing::debug!(
                outcome = "rate_limited",
                key_id = %identity.key_id(),
                account_id = identity.account_id(),
                retry_after_secs = retry_after_secs(retry_after),
            );
            Err(AuthError::RateLimited { retry_after, limit })
        }
    }
}

impl RateLimitLayer {
    /// Limits each key to its own [`RateLimit`] ([`NewKey::rate_limit`](crate::NewKey::rate_limit)),
    /// or else its tier's in `limits` ([`TierLimits::with_rate_limit`]); a key with neither is
    /// not limited. Counts in this process.
    pub fn new(limits: TierLimits) -> Self {
        let tiers = limits
            .rate_limits()
            .map(|(tier, limit)| (tier.clone(), *limit))
            .collect();
        Self {
            limits: Arc::new(Limits {
                tiers,
                per_account: false,
                counters: Counters::Local(LocalCounters::new(LimitClock::monotonic())),
            }),
            headers_on_success: false,
        }
    }

    /// All keys of an account share one counter (by default, each key has its own), limited by
    /// the limit of the key that sends the request (keys of one account with different limits
    /// count apart, one counter per limit).
    pub fn per_account(self) -> Self {
        let counters = self.limits.counters.fresh();
        self.with_counters(true, counters)
    }

    /// Adds `RateLimit-Policy` and `RateLimit` to the responses that pass (unless the inner
    /// service set them).
    pub fn headers_on_success(self) -> Self {
        Self {
            headers_on_success: true,
            ..self
        }
    }

    /// Reads the time from `clock` (by default, a monotonic clock), for tests with a
    /// [`ManualClock`](crate::clock::ManualClock). A wall clock that steps back makes keys wait
    /// longer. Starts with fresh counters in this process. (Global counters read the time of
    /// the Redis server.)
    pub fn clock(self, clock: impl Clock) -> Self {
        let counters = LocalCounters::new(LimitClock::Custom(Arc::new(clock)));
        let per_account = self.limits.per_account;
        self.with_counters(per_account, Counters::Local(counters))
    }

    /// Counts in `store`'s Redis instead of this process: one limit for every instance of the
    /// service that counts there (see [global limits](super#global-limits)), at one round trip
    /// per request, or fewer with [`leases`](RateLimitLayer::leases).
    #[cfg(feature = "redis")]
    pub fn global(self, store: crate::store::RedisKeyStore) -> Self {
        let per_account = self.limits.per_account;
        self.with_counters(
            per_account,
            Counters::Global(Arc::new(GlobalCounters::new(store))),
        )
    }

    /// In global mode, takes up to `size` requests at a time from Redis and spends them here,
    /// so that most requests make no round trip (by default 1: every request asks Redis).
    /// Every request accepted was taken from the one limit in Redis, so the instances together
    /// never accept more than it grants; a request taken is spent within a second (or the
    /// limit's interval, if longer) or lost, so they may accept fewer. Within a window shorter
    /// than that, up to `size - 1` requests per instance taken earlier may add to those the
    /// limit grants in it.
    ///
    /// # Panics
    ///
    /// If `size` is 0, or the layer is not [global](RateLimitLayer::global).
    #[cfg(feature = "redis")]
    pub fn leases(self, size: u32) -> Self {
        assert!(
            size > 0,
            "RateLimitLayer::leases: a lease needs at least 1 request"
        );
        let Counters::Global(counters) = &self.limits.counters else {
            panic!("RateLimitLayer::leases: leases are for global limits: call `global` first");
        };
        let counters = counters.with_lease_size(size);
        let per_account = self.limits.per_account;
        self.with_counters(per_account, Counters::Global(Arc::new(counters)))
    }

    /// In global mode, lets requests pass when Redis cannot be asked (by default they are
    /// refused with `503`, `authentication_unavailable`): for a service that would rather
    /// serve unlimited than not at all. The failure is logged either way.
    ///
    /// # Panics
    ///
    /// If the layer is not [global](RateLimitLayer::global).
    #[cfg(feature = "redis")]
    pub fn fail_open(self) -> Self {
        let Counters::Global(counters) = &self.limits.counters else {
            panic!("RateLimitLayer::fail_open: only global limits can fail: call `global` first");
        };
        let counters = counters.failing_open();
        let per_account = self.limits.per_account;
        self.with_counters(per_account, Counters::Global(Arc::new(counters)))
    }

    /// The same limits, counted by `counters`, per account or per key.
    fn with_counters(self, per_account: bool, counters: Counters) -> Self {
        let limits = Limits {
            tiers: self.limits.tiers.clone(),
            per_account,
            counters,
        };
        Self {
            limits: Arc::new(limits),
            ..self
        }
    }
}

impl Counters {
    /// Empty counters of the same kind.
    fn fresh(&self) -> Self {
        match self {
            Self::Local(counters) => Self::Local(LocalCounters::new(counters.clock().clone())),
            #[cfg(feature = "redis")]
            Self::Global(counters) => Self::Global(Arc::new(counters.fresh())),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limits: Arc::clone(&self.limits),
            headers_on_success: self.headers_on_success,
        }
    }
}

/// The service built by [`RateLimitLayer`]: counts the key's request, then calls `S`, or
/// answers `429`.
#[derive(Clone, Debug)]
pub struct RateLimited<S> {
    inner: S,
    limits: Arc<Limits>,
    headers_on_success: bool,
}

impl<S> RateLimited<S> {
    inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimited<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let extensions = request.extensions();
        let check = match checked_identity(extensions, |_| Ok(())) {
            Ok(identity) => self.limits.check(identity),
            Err(error) => Check::Now(Err(error)),
        };
        let headers_on_success = self.headers_on_success;
        let kind = match check {
            Check::Now(Ok(passed)) => Kind::Inner {
                future: self.inner.call(request),
                headers: passed.filter(|_| headers_on_success),
            },
            Check::Now(Err(error)) => Kind::Rejected {
                response: Some(refusals_of(extensions).respond(error, (&request).into())),
            },
            #[cfg(feature = "redis")]
            Check::Later(check) => {
                // The service that was polled ready waits in the future; a clone stays here.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let decide = Box::pin(async move {
                    match check.await {
                        Ok(passed) => Ok(passed.filter(|_| headers_on_success)),
                        Err(error) => Err(error),
                    }
                });
                Kind::Counting {
                    check: decide,
                    then: Some(Box::new(move |decision| match decision {
                        Ok(headers) => Kind::Inner {
                            future: inner.call(request),
                            headers,
                        },
                        Err(error) => Kind::Rejected {
                            response: Some(
                                refusals_of(request.extensions()).respond(error, (&request).into()),
                            ),
                        },
                    })),
                }
            }
        };
        RateLimitFuture { kind }
    }
}

/// The headers of a request that passed: its limit, what is left, and when one more is added.
#[derive(Clone, Copy, Debug)]
struct Passed {
    limit: RateLimit,
    remaining: u32,
}

/// What a global check decides: the headers of a pass, or the refusal.
type Decision = Result<Option<Passed>, AuthError>;

pin_project! {
    /// The response future of [`RateLimited`]: the inner service's, or a `429`.
    pub struct RateLimitFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    enum Kind<F> {
        Inner { #[pin] future: F, headers: Option<Passed> },
        Rejected { response: Option<Response<Bytes>> },
        Counting {
            check: Pin<Box<dyn Future<Output = Decision> + Send>>,
            then: Option<Box<dyn FnOnce(Decision) -> Kind<F> + Send>>,
        },
    }
}

impl<F, ResBody, E> Future for RateLimitFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                KindProj::Inner { future, headers } => {
                    return future.poll(cx).map_ok(|mut response| {
                        if let Some(passed) = headers.take() {
                            add_headers(&mut response, passed);
                        }
                        response.map(ResponseBody::inner)
                    })
                }
                KindProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("RateLimitFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
                KindProj::Counting { check, then } => {
                    let decision = std::task::ready!(check.as_mut().poll(cx));
                    let then = then
                        .take()
                        .expect("RateLimitFuture polled after completion");
                    then(decision)
                }
            };
            self.as_mut().project().kind.set(next);
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` on a response that passed, unless it has them.
fn add_headers<B>(response: &mut Response<B>, passed: Passed) {
    let seconds = seconds_up(passed.limit.interval());
    let headers = response.headers_mut();
    (headers.entry(RATELIMIT_POLICY)).or_insert_with(|| passed.limit.policy_header());
    (headers.entry(RATELIMIT)).or_insert_with(|| service_limit_header(passed.remaining, seconds));
}

impl<F> fmt::Debug for RateLimitFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitFuture").finish_non_exhaustive()
    }
}
