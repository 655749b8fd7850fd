//! Metrics (feature `metrics`): what the crate counts and times, through the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! With the feature on, the crate reports to whatever recorder the application installed
//! (`metrics-exporter-prometheus`, say), or to none; without it, the call sites compile to
//! nothing. The names are the constants below.
//!
//! | Name | Type | Unit | Labels | Counts |
//! |------|------|------|--------|--------|
//! | [`tower_api_key_decisions_total`](DECISIONS_TOTAL) | counter | requests | `outcome`, `code` | each decision of an [`ApiKeyLayer`](crate::ApiKeyLayer) |
//! | [`tower_api_key_store_lookup_seconds`](STORE_LOOKUP_SECONDS) | histogram | seconds | none | each lookup the layer waits for |
//! | [`tower_api_key_cache_hits_total`](CACHE_HITS_TOTAL) | counter | lookups | none | lookups a `CachedKeyStore` answered from its cache |
//! | [`tower_api_key_cache_misses_total`](CACHE_MISSES_TOTAL) | counter | lookups | none | lookups a `CachedKeyStore` passed to its store |
//! | [`tower_api_key_rate_limited_total`](RATE_LIMITED_TOTAL) | counter | requests | `mode` | requests a `limit::RateLimitLayer` refused `429 rate_limited` |
//! | [`tower_api_key_usage_exceeded_total`](USAGE_EXCEEDED_TOTAL) | counter | requests | none | requests a `limit::CreditsLayer` refused `429 usage_exceeded` |
//!
//! **Labels are a closed set of fixed words.** No key, digest, lookup id, key id, account id,
//! key name, scope, request id, path or any other text that a client or an account holder
//! chooses is ever a label: it would leak into dashboards, and let anyone with a key make new
//! series at will. The values are exactly:
//!
//! - `outcome`: `accepted` (the key is good), `refused` (the layer answered the request
//!   itself), or `anonymous` (an [`optional`](crate::ApiKeyLayer::optional) layer let a request
//!   without a key through).
//! - `code`: `none` for `accepted` and `anonymous`; for `refused`, the refusal's
//!   [`AuthError::code`](crate::AuthError::code): `missing_api_key`, `invalid_api_key`
//!   (including a key in the query string and two different keys), `expired_api_key` or
//!   `authentication_unavailable` (the store failed: the `503`).
//! - `mode`: `local` (counted in this process) or `global` (counted in Redis,
//!   `RateLimitLayer::global`).
//!
//! The histogram times only the lookups the layer has to wait for (a database or Redis round
//! trip, a cache miss), failed ones included; a store that answers at once from memory
//! ([`MemoryKeyStore`](crate::MemoryKeyStore), a `CachedKeyStore` hit) is not timed, so the
//! valid-key path of an in-memory or cached store pays one counter increment and no clock read.
//! It has no `store` label: a layer has one store, so tell the services apart by the
//! exporter's own labels (`job`, `instance`).
//!
//! A refusal by the checks inside the layer (`403 insufficient_scope`, the mode checks) is not a
//! decision of the layer and is not counted here; the limits' refusals have their own counters.
//!
//! Call [`describe`] once after installing the recorder to give each metric its unit and help
//! text. With Prometheus:
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
//!     .install_recorder()
//!     .expect("no other recorder is installed");
//! tower_api_key::metrics::describe();
//! let body: String = handle.render(); // the answer to `GET /metrics`
//! # }
//! ```
//!
//! `cargo run --example axum --features metrics` serves it, with buckets for the histogram
//! (the exporter makes a summary of a histogram it has no buckets for).
//!
//! ```text
//! # TYPE tower_api_key_decisions_total counter
//! tower_api_key_decisions_total{outcome="accepted",code="none"} 1041
//! tower_api_key_decisions_total{outcome="refused",code="invalid_api_key"} 7
//! ```

#[cfg(feature = "metrics")]
use metrics::{Key, Label, Level, Metadata};

/// Counter: the decisions of [`ApiKeyLayer`](crate::ApiKeyLayer), one per request it sees,
/// labelled `outcome` (`accepted`, `refused`, `anonymous`) and `code` (`none`, or the
/// refusal's [`AuthError::code`](crate::AuthError::code)).
pub const DECISIONS_TOTAL: &str = "tower_api_key_decisions_total";

/// Histogram, in seconds: how long the layer waited for its store's answer to one lookup
/// (failed lookups included; answers the store had at once, in memory, are not timed). No
/// labels.
pub const STORE_LOOKUP_SECONDS: &str = "tower_api_key_store_lookup_seconds";

/// Counter: lookups a `CachedKeyStore` answered from its cache (a known key, or an unknown key
/// cached as unknown). No labels.
pub const CACHE_HITS_TOTAL: &str = "tower_api_key_cache_hits_total";

/// Counter: lookups a `CachedKeyStore` could not answer from its cache and asked its store
/// about (concurrent misses of one key share one store call, and each counts). No labels.
pub const CACHE_MISSES_TOTAL: &str = "tower_api_key_cache_misses_total";

/// Counter: requests a `limit::RateLimitLayer` refused `429 rate_limited`, labelled `mode`:
/// `local` (counted in this process) or `global` (counted in Redis).
pub const RATE_LIMITED_TOTAL: &str = "tower_api_key_rate_limited_total";

/// Counter: requests a `limit::CreditsLayer` refused `429 usage_exceeded`, their key's credits
/// spent. No labels.
pub const USAGE_EXCEEDED_TOTAL: &str = "tower_api_key_usage_exceeded_total";

/// Describes every metric above to the installed recorder: its unit and help text, which an
/// exporter shows (Prometheus's `# HELP`). Call it once, after installing the recorder.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        DECISIONS_TOTAL,
        Unit::Count,
        "API key decisions of the layer, by outcome and refusal code"
    );
    describe_histogram!(
        STORE_LOOKUP_SECONDS,
        Unit::Seconds,
        "Time the layer waited for the key store to answer one lookup"
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        Unit::Count,
        "Key lookups answered from the in-process cache"
    );
    describe_counter!(
        CACHE_MISSES_TOTAL,
        Unit::Count,
        "Key lookups the in-process cache passed to its store"
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        Unit::Count,
        "Requests refused 429 rate_limited, by where the limit is counted"
    );
    describe_counter!(
        USAGE_EXCEEDED_TOTAL,
        Unit::Count,
        "Requests refused 429 usage_exceeded: the key's credits are spent"
    );
}

// Every key is a `static` built at compile time (name, labels and hash), so that reporting is
// a recorder call with no allocation: `metrics::counter!` builds its key at each call (and
// allocates its labels unless they are literals at the call site).

/// A static key of `name` with the labels `$label => $value`.
#[cfg(feature = "metrics")]
macro_rules! static_key {
    ($name:expr $(, $label:literal => $value:literal)*) => {{
        static LABELS: &[Label] = &[$(Label::from_static_parts($label, $value)),*];
        static KEY: Key = Key::from_static_parts($name, LABELS);
        &KEY
    }};
}

#[cfg(feature = "metrics")]
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

#[cfg(feature = "metrics")]
fn increment(key: &'static Key) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
}

/// The decision key of a refusal with `code`; all of them static.
#[cfg(feature = "metrics")]
fn refusal_key(code: &'static str) -> &'static Key {
    macro_rules! refused {
        ($($code:literal),*) => {
            match code {
                $($code => static_key!(DECISIONS_TOTAL, "outcome" => "refused", "code" => $code),)*
                _ => static_key!(DECISIONS_TOTAL, "outcome" => "refused", "code" => "other"),
            }
        };
    }
    refused!(
        "missing_api_key",
        "invalid_api_key",
        "expired_api_key",
        "authentication_unavailable",
        "insufficient_scope",
        "live_key_required",
        "test_key_required",
        "internal_error",
        "rate_limited",
        "usage_exceeded"
    )
}

/// The layer accepted a key.
#[inline]
pub(crate) fn accepted() {
    #[cfg(feature = "metrics")]
    increment(static_key!(DECISIONS_TOTAL, "outcome" => "accepted", "code" => "none"));
}

/// The layer refused a request with `error`.
#[inline]
pub(crate) fn refused(error: &crate::AuthError) {
    #[cfg(feature = "metrics")]
    increment(refusal_key(error.code()));
    #[cfg(not(feature = "metrics"))]
    let _ = error;
}

/// An optional layer let a request without a key through.
#[inline]
pub(crate) fn anonymous() {
    #[cfg(feature = "metrics")]
    increment(static_key!(DECISIONS_TOTAL, "outcome" => "anonymous", "code" => "none"));
}

/// Awaits `lookup`, a store's `find`, and records how long it took.
#[inline]
pub(crate) async fn timed_lookup<T>(lookup: impl std::future::Future<Output = T>) -> T {
    #[cfg(feature = "metrics")]
    let started = std::time::Instant::now();
    let found = lookup.await;
    #[cfg(feature = "metrics")]
    metrics::with_recorder(|recorder| {
        recorder.register_histogram(static_key!(STORE_LOOKUP_SECONDS), &METADATA)
    })
    .record(started.elapsed().as_secs_f64());
    found
}

/// A `CachedKeyStore` answered from its cache.
#[inline]
#[cfg_attr(not(feature = "cache"), allow(dead_code))]
pub(crate) fn cache_hit() {
    #[cfg(feature = "metrics")]
    increment(static_key!(CACHE_HITS_TOTAL));
}

/// A `CachedKeyStore` asked its store.
#[inline]
#[cfg_attr(not(feature = "cache"), allow(dead_code))]
pub(crate) fn cache_miss() {
    #[cfg(feature = "metrics")]
    increment(static_key!(CACHE_MISSES_TOTAL));
}

/// Where a rate limit is counted: the `mode` label of [`RATE_LIMITED_TOTAL`].
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
pub(crate) enum LimitMode {
    /// In this process.
    Local,
    /// In Redis, across instances.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Global,
}

/// A rate limit refused a request.
#[inline]
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
pub(crate) fn rate_limited(mode: LimitMode) {
    #[cfg(feature = "metrics")]
    increment(match mode {
        LimitMode::Local => static_key!(RATE_LIMITED_TOTAL, "mode" => "local"),
        LimitMode::Global => static_key!(RATE_LIMITED_TOTAL, "mode" => "global"),
    });
    #[cfg(not(feature = "metrics"))]
    let _ = mode;
}

/// A key's credits could not pay for a request.
#[inline]
pub(crate) fn usage_exceeded() {
    #[cfg(feature = "metrics")]
    increment(static_key!(USAGE_EXCEEDED_TOTAL));
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_code_has_its_own_static_key() {
        use crate::{AuthError, StoreError};
        let errors = [
            AuthError::Missing,
            AuthError::Conflicting,
            AuthError::KeyInQuery,
            AuthError::Invalid,
            AuthError::Expired,
            AuthError::Unavailable(StoreError::new("down")),
            AuthError::MissingIdentity,
            AuthError::UsageExceeded {
                refills_at: None,
                refills_in: None,
            },
        ];
        for error in errors {
            let key = refusal_key(error.code());
            let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
            assert_eq!(key.name(), DECISIONS_TOTAL);
            assert_eq!(labels, [("outcome", "refused"), ("code", error.code())]);
        }
    }
}
