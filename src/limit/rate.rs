//! [`RateLimitLayer`]: the layer, its service and its future; the counters are in `local`.

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

/// A [`Layer`] that refuses a key's requests beyond its tier's [`RateLimit`] with `429`: put it
/// inside [`ApiKeyLayer`](crate::ApiKeyLayer). See [the module](self) for the answer.
///
/// Clones, and the services built from it, share its counters. A request without a
/// [`KeyIdentity`] (the layer outside `ApiKeyLayer`, a misconfiguration) gets `500`
/// `internal_error`.
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
    counters: LocalCounters,
}

impl Limits {
    /// Counts a request of `identity`: `Ok(None)` if it is not limited.
    fn check(&self, identity: &KeyIdentity) -> Result<Option<Passed>, AuthError> {
        let limit = identity.rate_limit().or_else(|| {
            let tier = identity.tier();
            (self.tiers.iter())
                .find(|(limited, _)| limited == tier)
                .map(|(_, limit)| *limit)
        });
        let Some(limit) = limit else {
            return Ok(None);
        };
        let subject = if self.per_account {
            Subject::Account(identity.account_id())
        } else {
            Subject::Key(identity.key_id())
        };
        match self.counters.check(subject, limit) {
            Ok(remaining) => Ok(Some(Passed { limit, remaining })),
            Err(retry_after) => {
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
}

impl RateLimitLayer {
    /// Limits each key to its own [`RateLimit`] ([`NewKey::rate_limit`](crate::NewKey::rate_limit)),
    /// or else its tier's in `limits` ([`TierLimits::with_rate_limit`]); a key with neither is
    /// not limited.
    pub fn new(limits: TierLimits) -> Self {
        let tiers = limits
            .rate_limits()
            .map(|(tier, limit)| (tier.clone(), *limit))
            .collect();
        Self {
            limits: Arc::new(Limits {
                tiers,
                per_account: false,
                counters: LocalCounters::new(LimitClock::monotonic()),
            }),
            headers_on_success: false,
        }
    }

    /// All keys of an account share one counter (by default, each key has its own), limited by
    /// the limit of the key that sends the request (keys of one account with different limits
    /// count apart, one counter per limit). Starts with fresh counters.
    pub fn per_account(self) -> Self {
        let counters = LocalCounters::new(self.limits.counters.clock().clone());
        self.with_limits(|limits| Limits {
            tiers: limits.tiers.clone(),
            per_account: true,
            counters,
        })
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
        let counters = LocalCounters::new(LimitClock::Custom(Arc::new(clock)));
        self.with_limits(|limits| Limits {
            tiers: limits.tiers.clone(),
            per_account: limits.per_account,
            counters,
        })
    }

    fn with_limits(self, change: impl FnOnce(&Limits) -> Limits) -> Self {
        Self {
            limits: Arc::new(change(&self.limits)),
            ..self
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
            .and_then(|identity| self.limits.check(identity));
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
