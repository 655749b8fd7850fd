//! Rate limits per key (feature `rate-limit`): [`RateLimitLayer`] answers `429` with code
//! `rate_limited` once a key has used its tier's [`RateLimit`].
//!
//! Put it inside [`ApiKeyLayer`](crate::ApiKeyLayer), so that only authenticated requests reach
//! a counter: a wrong key is refused with `401` before it could use up anyone's limit. Each key's
//! limit comes from its tier, in [`TierLimits`] (free 60 requests per minute, pro 600 by
//! default); a tier without a rate limit is not limited. By default every key has its own
//! counter; [`RateLimitLayer::per_account`] makes all keys of an account share one.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_api_key::limit::{RateLimit, RateLimitLayer};
//! use tower_api_key::manage::TierLimits;
//! use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let keys = KeyManager::new(MemoryKeyStore::new());
//! let created = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await.unwrap();
//!
//! // The free tier gets 2 requests per minute here (60 by default).
//! let limits = TierLimits::default().with_rate_limit(Tier::FREE, RateLimit::per_minute(2));
//! let mut service = ServiceBuilder::new()
//!     .layer(keys.layer()) // outside: authenticates
//!     .layer(RateLimitLayer::new(limits)) // inside: counts authenticated requests only
//!     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//!
//! let request = || {
//!     Request::builder()
//!         .header("x-api-key", created.key.expose_secret())
//!         .body(String::new())
//!         .unwrap()
//! };
//! for _ in 0..2 {
//!     let response = service.ready().await.unwrap().call(request()).await.unwrap();
//!     assert_eq!(response.status(), StatusCode::OK);
//! }
//! let response = service.ready().await.unwrap().call(request()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS); // code `rate_limited`
//! assert_eq!(response.headers()["retry-after"], "30");
//! assert_eq!(response.headers()["ratelimit-policy"], r#""default";q=2;w=60"#);
//! assert_eq!(response.headers()["ratelimit"], r#""default";r=0;t=30"#);
//! # }
//! ```
//!
//! # The answer
//!
//! A refused request gets `429` in the crate's envelope (or the layer's
//! [`error_response`](crate::ApiKeyLayer::error_response) hook's body, or `grpc-status` 8
//! RESOURCE_EXHAUSTED for a gRPC call), with [`AuthError::RateLimited`] in its extensions, a
//! message that says in how many seconds to retry, and these headers, following
//! [draft-ietf-httpapi-ratelimit-headers-11](https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/11/)
//! (fields as Structured Field lists, the policy named `"default"`):
//!
//! | Header             | Value                          | Meaning                                 |
//! |--------------------|--------------------------------|-----------------------------------------|
//! | `Retry-After`      | `30`                           | seconds until the next request passes, rounded up |
//! | `RateLimit-Policy` | `"default";q=60;w=60`          | `q` requests per `w` seconds            |
//! | `RateLimit`        | `"default";r=0;t=30`           | `r` requests left now; `t` seconds within which no more than `r` pass |
//!
//! With [`RateLimitLayer::headers_on_success`], the responses that pass carry `RateLimit-Policy`
//! and `RateLimit` too, where `r` is what is left of the burst and `t` the limit's interval
//! between requests, rounded up to whole seconds: one more request is added back within it.
//!
//! # The algorithm, and memory
//!
//! Limits are enforced in this process with GCRA ([`governor`](https://docs.rs/governor)): a
//! key may send its burst (by default, the limit's whole count) at once, then one request
//! every `period / requests`. The policy header advertises the sustained rate. A layer's clones
//! and the services it builds share its counters; another `RateLimitLayer::new` starts its own,
//! and each instance of a service counts alone, so that N instances allow N times the limit.
//! Limits shared by instances (Redis, PostgreSQL) and limits stored on a key are not part of
//! this module yet.
//!
//! Memory is bounded by the keys (or accounts) of the store, since only authenticated requests
//! reach a counter: one entry per key seen (its id and a 64-bit time). Entries of keys whose burst
//! has refilled are dropped, which changes no answer, by a sweep that runs on the request that
//! finds the 1,024th full burst since the last one (or more: as many as the last sweep left), so
//! that each request pays for its share only; keys that are deleted or go quiet do not stay.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::access::{checked_identity, refusals_of};
use crate::body::ResponseBody;
use crate::clock::Clock;
use crate::error::AuthError;
use crate::identity::{KeyId, KeyIdentity, Tier};
use crate::manage::TierLimits;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A rate limit: `requests` per `period`, with a burst of up to `burst` requests at once.
///
/// Serialized as `{"requests": 60, "period_secs": 60, "burst": 60}`; `burst` may be left out
/// when read, and is then the request count. Every number must be at least 1.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::limit::RateLimit;
///
/// let limit = RateLimit::per_minute(600).burst(50);
/// assert_eq!(limit.requests(), 600);
/// assert_eq!(limit.period(), Duration::from_secs(60));
/// assert_eq!(limit.burst_size(), 50);
/// let json = serde_json::to_string(&limit).unwrap();
/// assert_eq!(json, r#"{"requests":600,"period_secs":60,"burst":50}"#);
/// let read: RateLimit = serde_json::from_str(r#"{"requests":5,"period_secs":1}"#).unwrap();
/// assert_eq!(read, RateLimit::per_second(5));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RateLimitForm", into = "RateLimitForm")]
pub struct RateLimit {
    requests: NonZeroU32,
    period_secs: NonZeroU32,
    burst: NonZeroU32,
}

impl RateLimit {
    /// `requests` per `period_secs` seconds, with a burst of `requests`.
    ///
    /// # Panics
    ///
    /// If `requests` or `period_secs` is 0.
    pub fn new(requests: u32, period_secs: u32) -> Self {
        let (Some(requests), Some(period_secs)) =
            (NonZeroU32::new(requests), NonZeroU32::new(period_secs))
        else {
            panic!("RateLimit: a limit needs at least 1 request per at least 1 second");
        };
        Self {
            requests,
            period_secs,
            burst: requests,
        }
    }

    /// `requests` per second.
    ///
    /// # Panics
    ///
    /// If `requests` is 0.
    pub fn per_second(requests: u32) -> Self {
        Self::new(requests, 1)
    }

    /// `requests` per minute.
    ///
    /// # Panics
    ///
    /// If `requests` is 0.
    pub fn per_minute(requests: u32) -> Self {
        Self::new(requests, 60)
    }

    /// `requests` per hour.
    ///
    /// # Panics
    ///
    /// If `requests` is 0.
    pub fn per_hour(requests: u32) -> Self {
        Self::new(requests, 3600)
    }

    /// The same rate, with up to `burst` requests at once (by default, the request count).
    ///
    /// # Panics
    ///
    /// If `burst` is 0.
    pub fn burst(self, burst: u32) -> Self {
        let burst = NonZeroU32::new(burst).expect("RateLimit: a burst needs at least 1 request");
        Self { burst, ..self }
    }

    /// The number of requests per period.
    pub fn requests(&self) -> u32 {
        self.requests.get()
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs.get().into())
    }

    /// How many requests may be sent at once.
    pub fn burst_size(&self) -> u32 {
        self.burst.get()
    }

    /// The time between two requests once the burst is spent.
    fn interval(&self) -> Duration {
        (self.period() / self.requests.get()).max(Duration::from_nanos(1))
    }

    fn quota(&self) -> Quota {
        Quota::with_period(self.interval())
            .expect("the interval is at least 1 ns")
            .allow_burst(self.burst)
    }

    /// `RateLimit-Policy: "default";q=<requests>;w=<seconds>`.
    pub(crate) fn policy_header(&self) -> HeaderValue {
        let value = format!(r#""default";q={};w={}"#, self.requests, self.period_secs);
        HeaderValue::try_from(value).expect("digits and quotes")
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let requests = self.requests.get();
        let plural = if requests == 1 { "" } else { "s" };
        match self.period_secs.get() {
            1 => write!(f, "{requests} request{plural} per second"),
            60 => write!(f, "{requests} request{plural} per minute"),
            3600 => write!(f, "{requests} request{plural} per hour"),
            secs => write!(f, "{requests} request{plural} per {secs} seconds"),
        }
    }
}

/// The serialized form of a [`RateLimit`].
#[derive(Serialize, Deserialize)]
struct RateLimitForm {
    requests: u32,
    period_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<u32>,
}

impl TryFrom<RateLimitForm> for RateLimit {
    type Error = &'static str;

    fn try_from(form: RateLimitForm) -> Result<Self, Self::Error> {
        let invalid = "a rate limit's requests, period_secs and burst must be at least 1";
        let requests = NonZeroU32::new(form.requests).ok_or(invalid)?;
        let period_secs = NonZeroU32::new(form.period_secs).ok_or(invalid)?;
        let burst = match form.burst {
            None => requests,
            Some(burst) => NonZeroU32::new(burst).ok_or(invalid)?,
        };
        Ok(Self {
            requests,
            period_secs,
            burst,
        })
    }
}

impl From<RateLimit> for RateLimitForm {
    fn from(limit: RateLimit) -> Self {
        Self {
            requests: limit.requests.get(),
            period_secs: limit.period_secs.get(),
            burst: Some(limit.burst.get()),
        }
    }
}

/// Whole seconds of `duration`, rounded up.
pub(crate) fn seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The seconds a refused client is told to wait: rounded up, and at least 1.
pub(crate) fn retry_after_secs(retry_after: Duration) -> u64 {
    seconds_up(retry_after).max(1)
}

/// `RateLimit: "default";r=<remaining>;t=<seconds>`.
pub(crate) fn service_limit_header(remaining: u32, seconds: u64) -> HeaderValue {
    HeaderValue::try_from(format!(r#""default";r={remaining};t={seconds}"#)).expect("digits")
}

/// A [`Layer`] that refuses a key's requests beyond its tier's [`RateLimit`] with `429`: put it
/// inside [`ApiKeyLayer`](crate::ApiKeyLayer). See [the module](self) for the answer.
///
/// Clones, and the services built from it, share its counters. A request without a
/// [`KeyIdentity`] (the layer outside `ApiKeyLayer`, a misconfiguration) gets `500`
/// `internal_error`.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiters: Arc<Limiters>,
    headers_on_success: bool,
}

impl RateLimitLayer {
    /// Limits each key to its tier's rate limit in `limits`
    /// ([`TierLimits::with_rate_limit`]); tiers without one are not limited.
    pub fn new(limits: TierLimits) -> Self {
        let tiers = limits
            .rate_limits()
            .map(|(tier, limit)| (tier.clone(), *limit))
            .collect();
        Self {
            limiters: Arc::new(Limiters::new(tiers, false, LimitClock::monotonic())),
            headers_on_success: false,
        }
    }

    /// All keys of an account share one limit (by default, each key has its own), taken from
    /// the tier of the key that sends the request (keys of one account on two tiers count
    /// apart, one counter per tier). Starts with fresh counters.
    pub fn per_account(self) -> Self {
        let limiters = &self.limiters;
        let limiters = Limiters::new(limiters.tier_limits(), true, limiters.clock.clone());
        Self {
            limiters: Arc::new(limiters),
            ..self
        }
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
    /// longer. Starts with fresh counters.
    pub fn clock(self, clock: impl Clock) -> Self {
        let limiters = &self.limiters;
        let clock = LimitClock::Custom(Arc::new(clock));
        let limiters = Limiters::new(limiters.tier_limits(), limiters.per_account, clock);
        Self {
            limiters: Arc::new(limiters),
            ..self
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiters: Arc::clone(&self.limiters),
            headers_on_success: self.headers_on_success,
        }
    }
}

/// The service built by [`RateLimitLayer`]: counts the key's request, then calls `S`, or
/// answers `429`.
#[derive(Clone, Debug)]
pub struct RateLimited<S> {
    inner: S,
    limiters: Arc<Limiters>,
    headers_on_success: bool,
}

impl<S> RateLimited<S> {
    inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimited<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let extensions = request.extensions();
        let decision = checked_identity(extensions, |_| Ok(()))
            .and_then(|identity| self.limiters.check(identity));
        match decision {
            Ok(passed) => {
                let headers = passed.filter(|_| self.headers_on_success);
                RateLimitFuture {
                    kind: Kind::Inner {
                        future: self.inner.call(request),
                        headers,
                    },
                }
            }
            Err(error) => {
                let response = refusals_of(extensions).respond(error, (&request).into());
                RateLimitFuture {
                    kind: Kind::Rejected {
                        response: Some(response),
                    },
                }
            }
        }
    }
}

/// The headers of a request that passed: its limit, what is left, and when one more is added.
#[derive(Clone, Copy, Debug)]
struct Passed {
    limit: RateLimit,
    remaining: u32,
}

pin_project! {
    /// The response future of [`RateLimited`]: the inner service's, or a `429`.
    pub struct RateLimitFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F, headers: Option<Passed> },
        Rejected { response: Option<Response<Bytes>> },
    }
}

impl<F, ResBody, E> Future for RateLimitFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, headers } => future.poll(cx).map_ok(|mut response| {
                if let Some(passed) = headers.take() {
                    let seconds = seconds_up(passed.limit.interval());
                    let headers = response.headers_mut();
                    (headers.entry(RATELIMIT_POLICY))
                        .or_insert_with(|| passed.limit.policy_header());
                    (headers.entry(RATELIMIT))
                        .or_insert_with(|| service_limit_header(passed.remaining, seconds));
                }
                response.map(ResponseBody::inner)
            }),
            KindProj::Rejected { response } => {
                let response = response
                    .take()
                    .expect("RateLimitFuture polled after completion");
                Poll::Ready(Ok(response.map(ResponseBody::rejection)))
            }
        }
    }
}

impl<F> fmt::Debug for RateLimitFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitFuture").finish_non_exhaustive()
    }
}

/// Whose requests a counter counts: a key's, or an account's.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Subject {
    Key(KeyId),
    Account(Box<str>),
}

type Limiter =
    RateLimiter<Subject, DashMapStateStore<Subject>, LimitClock, StateInformationMiddleware>;

/// The counters of one tier.
struct TierLimiter {
    tier: Tier,
    limit: RateLimit,
    limiter: Limiter,
    /// Subjects found with a full burst since the last sweep (new entries among them).
    fresh: AtomicUsize,
    /// How many fresh subjects start the next sweep.
    sweep_after: AtomicUsize,
}

/// Sweeps no more often than after this many fresh subjects.
const MIN_SWEEP: usize = 1024;

impl TierLimiter {
    fn check(&self, subject: &Subject) -> Result<Passed, AuthError> {
        match self.limiter.check_key(subject) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                if remaining + 1 >= self.limit.burst_size() {
                    self.count_fresh();
                }
                Ok(Passed {
                    limit: self.limit,
                    remaining,
                })
            }
            Err(not_until) => {
                let now = governor::clock::Clock::now(self.limiter.clock());
                Err(AuthError::RateLimited {
                    retry_after: not_until.wait_time_from(now),
                    limit: self.limit,
                })
            }
        }
    }

    /// Counts a subject found with a full burst, and drops the entries of refilled subjects
    /// once there have been as many as the last sweep left (at least [`MIN_SWEEP`]).
    fn count_fresh(&self) {
        let fresh = self.fresh.fetch_add(1, Ordering::Relaxed) + 1;
        if fresh >= self.sweep_after.load(Ordering::Relaxed)
            && self
                .fresh
                .compare_exchange(fresh, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            let left = self.limiter.len();
            self.sweep_after
                .store(left.max(MIN_SWEEP), Ordering::Relaxed);
        }
    }
}

/// The counters of every limited tier.
pub(crate) struct Limiters {
    tiers: Vec<TierLimiter>,
    per_account: bool,
    clock: LimitClock,
}

impl Limiters {
    fn new(tiers: Vec<(Tier, RateLimit)>, per_account: bool, clock: LimitClock) -> Self {
        let tiers = tiers
            .into_iter()
            .map(|(tier, limit)| TierLimiter {
                tier,
                limit,
                limiter: Limiter::new(limit.quota(), DashMapStateStore::default(), clock.clone()),
                fresh: AtomicUsize::new(0),
                sweep_after: AtomicUsize::new(MIN_SWEEP),
            })
            .collect();
        Self {
            tiers,
            per_account,
            clock,
        }
    }

    fn tier_limits(&self) -> Vec<(Tier, RateLimit)> {
        (self.tiers.iter())
            .map(|tier| (tier.tier.clone(), tier.limit))
            .collect()
    }

    /// Counts a request of `identity`: `Ok(None)` if its tier is not limited.
    fn check(&self, identity: &KeyIdentity) -> Result<Option<Passed>, AuthError> {
        let Some(tier) = self.tiers.iter().find(|tier| tier.tier == *identity.tier()) else {
            return Ok(None);
        };
        let subject = if self.per_account {
            Subject::Account(identity.account_id().into())
        } else {
            Subject::Key(identity.key_id().clone())
        };
        let passed = tier.check(&subject);
        if let Err(AuthError::RateLimited { retry_after, .. }) = &passed {
            tracing::debug!(
                outcome = "rate_limited",
                key_id = %identity.key_id(),
                account_id = identity.account_id(),
                retry_after_secs = retry_after_secs(*retry_after),
            );
        }
        passed.map(Some)
    }
}

impl fmt::Debug for Limiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tiers: Vec<_> = (self.tiers.iter())
            .map(|tier| (&tier.tier, tier.limit))
            .collect();
        f.debug_struct("Limiters")
            .field("tiers", &tiers)
            .field("per_account", &self.per_account)
            .finish_non_exhaustive()
    }
}

/// The time as governor reads it: since a monotonic origin, or a [`Clock`]'s time since the
/// Unix epoch.
#[derive(Clone)]
enum LimitClock {
    Monotonic(Instant),
    Custom(Arc<dyn Clock>),
}

impl LimitClock {
    fn monotonic() -> Self {
        Self::Monotonic(Instant::now())
    }
}

impl governor::clock::Clock for LimitClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        match self {
            Self::Monotonic(origin) => origin.elapsed(),
            Self::Custom(clock) => (clock.now())
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_rounded_up() {
        assert_eq!(seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_up(Duration::from_secs(2)), 2);
        assert_eq!(seconds_up(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn burst_defaults_to_the_request_count() {
        assert_eq!(RateLimit::per_minute(60).burst_size(), 60);
        assert_eq!(RateLimit::per_minute(60).burst(5).burst_size(), 5);
    }

    #[test]
    fn a_zero_limit_is_refused_when_read() {
        let zero = serde_json::from_str::<RateLimit>(r#"{"requests":0,"period_secs":60}"#);
        assert!(zero.is_err());
        let zero = serde_json::from_str::<RateLimit>(r#"{"requests":1,"period_secs":0}"#);
        assert!(zero.is_err());
    }

    #[test]
    #[should_panic(expected = "at least 1 request")]
    fn a_zero_limit_panics_when_built() {
        let _ = RateLimit::per_second(0);
    }

    #[test]
    fn entries_of_refilled_keys_are_swept_away() {
        let clock = crate::clock::ManualClock::new(SystemTime::UNIX_EPOCH);
        let tiers = vec![(Tier::FREE, RateLimit::per_second(1))];
        let limiters = Limiters::new(tiers, false, LimitClock::Custom(Arc::new(clock.clone())));
        let identity = || KeyIdentity::new(KeyId::random(), "acct_1", "key", Tier::FREE);
        for _ in 0..MIN_SWEEP - 1 {
            assert!(limiters.check(&identity()).unwrap().is_some());
        }
        let limiter = &limiters.tiers[0].limiter;
        assert_eq!(limiter.len(), MIN_SWEEP - 1);
        clock.advance(Duration::from_secs(2)); // every burst is full again
        limiters.check(&identity()).unwrap(); // the MIN_SWEEP-th new key sweeps
        assert!(limiter.len() <= 1, "{} entries left", limiter.len());
    }

    #[test]
    fn headers_follow_the_draft_s_syntax() {
        assert_eq!(
            RateLimit::per_minute(60).policy_header(),
            r#""default";q=60;w=60"#
        );
        assert_eq!(service_limit_header(0, 30), r#""default";r=0;t=30"#);
    }
}
