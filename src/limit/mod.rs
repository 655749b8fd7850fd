//! Usage limits per key: rate limits ([`RateLimitLayer`], feature `rate-limit`) and balances of
//! credits ([`CreditsLayer`]), each answered with `429` in the crate's envelope.
//!
//! Put these layers inside [`ApiKeyLayer`](crate::ApiKeyLayer), so that only authenticated
//! requests reach a counter: a wrong key is refused with `401` before it could use up anyone's
//! limit.
//!
//! # Rate limits
//!
//! Each key's limit is its own ([`NewKey::rate_limit`](crate::NewKey::rate_limit)) or else its
//! tier's, in [`TierLimits`](crate::manage::TierLimits) (free 60 requests per minute, pro 600 by
//! default); a key with neither is not limited. By default every key has its own counter;
//! [`RateLimitLayer::per_account`] makes all keys of an account share one. Listings
//! ([`KeyInfo::rate_limit`](crate::manage::KeyInfo::rate_limit)) show each key's limit.
//!
//! See [`RateLimitLayer`] for an example.
//!
//! ## The answer
//!
//! A refused request gets `429` in the crate's envelope (or the layer's
//! [`error_response`](crate::ApiKeyLayer::error_response) hook's body, or `grpc-status` 8
//! RESOURCE_EXHAUSTED for a gRPC call), with [`AuthError::RateLimited`](crate::AuthError::RateLimited) in its extensions, a
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
//! ## Local limits
//!
//! By default limits are counted in this process with GCRA: a key may send its burst (by
//! default, the limit's whole count) at once, then one request every `period / requests`. The
//! policy header advertises the sustained rate. A layer's clones and the services it builds
//! share its counters; another `RateLimitLayer::new` starts its own, and each instance of a
//! service counts alone, so that N instances allow N times the limit.
//!
//! Memory is bounded by the keys (or accounts) of the store, since only authenticated requests
//! reach a counter: one entry per key seen. Entries of keys whose burst has refilled are
//! dropped, which changes no answer, by a sweep whose cost each request pays only its share of;
//! keys that are deleted or go quiet do not stay.
//!
//! ## Global limits
//!
//! With the feature `redis`, [`RateLimitLayer::global`] counts in Redis instead: every
//! instance of a service that counts in the same Redis (and [prefix](crate::store::RedisKeyStore::prefix))
//! shares one limit per key. Each request is one atomic script (GCRA on the Redis server's
//! clock, so that instances whose clocks differ agree), one round trip.
//! [`RateLimitLayer::leases`] takes several requests per round trip and spends them in this
//! process: most requests then make no round trip, and the instances together still never
//! accept more than the limit grants (requests taken and not spent within a second, or the
//! limit's interval if longer, are lost, so they may accept fewer).
//!
//! When Redis cannot be asked, a request is refused with `503` (`authentication_unavailable`)
//! and the failure logged: limits fail closed. [`RateLimitLayer::fail_open`] lets requests pass
//! instead, for a service that would rather serve unlimited than not at all.
//!
//! # Credits
//!
//! A key may carry a balance of [`Credits`] ([`NewKey::credits`](crate::NewKey::credits)),
//! optionally [refilled](Refill) every day or month. [`CreditsLayer`] makes each request spend
//! its cost (1, or what the route sets: put one layer per route with its own
//! [`cost`](CreditsLayer::cost)), atomically in the store that holds the keys, so that instances
//! sharing a store never accept more requests than there were credits. A request the balance
//! cannot pay gets `429` with code `usage_exceeded`, a message that says when the balance is
//! refilled, and `Retry-After` until then if it is. Listings show the balance;
//! [`KeyManager::top_up`](crate::KeyManager::top_up) adds to it. When the store fails, the
//! request is refused with `503`: credits always fail closed.

mod credits;
#[cfg(all(feature = "rate-limit", feature = "redis"))]
mod global;
#[cfg(feature = "rate-limit")]
mod local;
#[cfg(feature = "rate-limit")]
mod rate;

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

pub use self::credits::{
    Credits, CreditsFuture, CreditsLayer, CreditsSpent, Refill, RefillPeriod, Spend,
};
#[cfg(feature = "rate-limit")]
pub use self::rate::{RateLimitFuture, RateLimitLayer, RateLimited};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    pub(crate) fn interval(&self) -> Duration {
        (self.period() / self.requests.get()).max(Duration::from_nanos(1))
    }

    /// `RateLimit-Policy: "default";q=<requests>;w=<seconds>`.
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
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
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
pub(crate) fn seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The seconds a refused client is told to wait: rounded up, and at least 1.
pub(crate) fn retry_after_secs(retry_after: Duration) -> u64 {
    seconds_up(retry_after).max(1)
}

/// `RateLimit: "default";r=<remaining>;t=<seconds>`.
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
pub(crate) fn service_limit_header(remaining: u32, seconds: u64) -> HeaderValue {
    HeaderValue::try_from(format!(r#""default";r={remaining};t={seconds}"#)).expect("digits")
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
    fn headers_follow_the_draft_s_syntax() {
        assert_eq!(
            RateLimit::per_minute(60).policy_header(),
            r#""default";q=60;w=60"#
        );
        assert_eq!(service_limit_header(0, 30), r#""default";r=0;t=30"#);
    }
}
