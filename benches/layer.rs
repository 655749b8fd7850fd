//! Cost of the layer per request, through `oneshot` on a trivial inner service, against what no
//! layer can avoid. All rows run in one `cargo bench` (`--all-features` adds the cache row), so
//! compare them as ratios of medians from the same run:
//!
//! - `baseline`: no middleware.
//! - `tower_http_async_auth`: tower-http's `AsyncRequireAuthorizationLayer` accepting at once,
//!   what tower plumbing alone costs.
//! - `floor`: the unavoidable work by hand: parse the header, SHA-256 the key, one `HashMap`
//!   lookup, one constant-time compare, one identity inserted into the extensions.
//! - `valid_key_1k` / `valid_key_1m`: the layer over `MemoryKeyStore` with 1,000 or 1,000,000
//!   keys, rotating over 1,000 of them so lookups are not all cache-hot.
//! - `missing_api_key`, `invalid_api_key_checksum` (never reaches the store),
//!   `invalid_api_key_unknown` (good checksum, unknown key).
//! - `valid_key_1k_rate_limited` (feature `rate-limit`): `valid_key_1k` with a `RateLimitLayer`
//!   inside, at a limit that never refuses (every key's burst is full again by its next
//!   request); `valid_key_1k_rate_layer_no_limit`, the same layer with no limit to count, so
//!   that the two differences tell the layer's plumbing from the counting.
//! - `cache_hit` (feature `cache`): the layer over `CachedKeyStore<MemoryKeyStore>`, warm;
//!   `cache_hit_pushed`, the same with push invalidation on.

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{service_fn, ServiceBuilder, ServiceExt};
#[cfg(feature = "cache")]
use tower_api_key::KeyStore;
use tower_api_key::{
    key::KeyFormat, ApiKey, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier,
};
use tower_http::auth::AsyncRequireAuthorizationLayer;

/// How many keys each valid-key row rotates over.
const ROTATION: usize = 1_000;

async fn ok(_request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::default()))
}

/// A store of `count` keys, and the `Bearer` headers of `ROTATION` of them spread across it.
fn store_with(count: usize) -> (MemoryKeyStore, Vec<String>) {
    let store = MemoryKeyStore::new();
    let format = KeyFormat::default();
    let step = count / ROTATION;
    let mut sample = Vec::with_capacity(ROTATION);
    for index in 0..count {
        let key = format.generate();
        let identity = KeyIdentity::new(
            KeyId::new(format!("key_{index}")),
            "acct",
            "bench",
            Tier::FREE,
        );
        store.insert(KeyRecord::new(key.digest(), identity).with_hint("sk_live_...abcd"));
        if index % step == 0 && sample.len() < ROTATION {
            sample.push(format!("Bearer {}", key.expose_secret()));
        }
    }
    (store, sample)
}

fn request(header: Option<(&str, &str)>) -> Request<Full<Bytes>> {
    let mut request = Request::builder().uri("/api/v1/iocs");
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    request.body(Full::default()).unwrap()
}

/// Cycles through `values`, one per call.
struct Rotation<'a> {
    values: &'a [String],
    next: Cell<usize>,
}

impl<'a> Rotation<'a> {
    fn new(values: &'a [String]) -> Self {
        Self {
            values,
            next: Cell::new(0),
        }
    }

    fn next(&self) -> &'a str {
        let index = self.next.get();
        self.next.set((index + 1) % self.values.len());
        &self.values[index]
    }
}

/// The floor's table: what the layer's work needs and nothing more.
type FloorTable = HashMap<[u8; 16], ([u8; 32], KeyIdentity)>;

fn floor_table(keys: &[String]) -> FloorTable {
    keys.iter()
        .enumerate()
        .map(|(index, bearer)| {
            let digest: [u8; 32] = Sha256::digest(&bearer.as_bytes()[7..]).into();
            let lookup: [u8; 16] = digest[..16].try_into().unwrap();
            let identity = KeyIdentity::new(
                KeyId::new(format!("key_{index}")),
                "acct",
                "bench",
                Tier::FREE,
            );
            (lookup, (digest, identity))
        })
        .collect()
}

/// The unavoidable work on one request, by hand.
fn floor_work(table: &FloorTable, mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let value = request.headers()["authorization"].to_str().unwrap();
    let key = value.strip_prefix("Bearer ").unwrap();
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let lookup: [u8; 16] = digest[..16].try_into().unwrap();
    let (stored, identity) = table.get(&lookup).unwrap();
    assert!(bool::from(stored.ct_eq(&digest)));
    let identity = identity.clone();
    request.extensions_mut().insert(identity);
    request
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (store_1k, keys_1k) = store_with(1_000);
    let (store_1m, keys_1m) = store_with(1_000_000);
    let table = floor_table(&keys_1k);
    let valid_1k = Rotation::new(&keys_1k);
    let valid_1m = Rotation::new(&keys_1m);
    let any_key: &ApiKey = &KeyFormat::default().generate();
    let typo = format!(
        "{}x",
        &any_key.expose_secret()[..any_key.expose_secret().len() - 1]
    );
    let unknown = KeyFormat::default().generate();

    let baseline = service_fn(ok);
    let tower_http = ServiceBuilder::new()
        .layer(AsyncRequireAuthorizationLayer::new(
            |request: Request<Full<Bytes>>| async move { Ok::<_, Response<Full<Bytes>>>(request) },
        ))
        .service_fn(ok);
    let layer_1k = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(store_1k.clone()))
        .service_fn(ok);
    let layer_1m = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(store_1m))
        .service_fn(ok);

    let mut group = c.benchmark_group("request");
    group.bench_function("baseline", |b| {
        b.to_async(&runtime)
            .iter(|| baseline.oneshot(request(Some(("authorization", valid_1k.next())))))
    });
    group.bench_function("tower_http_async_auth", |b| {
        b.to_async(&runtime).iter(|| {
            tower_http
                .clone()
                .oneshot(request(Some(("authorization", valid_1k.next()))))
        })
    });
    group.bench_function("floor", |b| {
        b.to_async(&runtime).iter(|| {
            let request = floor_work(&table, request(Some(("authorization", valid_1k.next()))));
            baseline.oneshot(request)
        })
    });
    group.bench_function("valid_key_1k", |b| {
        b.to_async(&runtime).iter(|| {
            layer_1k
                .clone()
                .oneshot(request(Some(("authorization", valid_1k.next()))))
        })
    });
    #[cfg(feature = "rate-limit")]
    {
        use tower_api_key::limit::{RateLimit, RateLimitLayer};
        use tower_api_key::manage::TierLimits;

        let limits =
            TierLimits::none().with_rate_limit(Tier::FREE, RateLimit::per_second(u32::MAX));
        let layer_limited = ServiceBuilder::new()
            .layer(ApiKeyLayer::new(store_1k.clone()))
            .layer(RateLimitLayer::new(limits))
            .service_fn(ok);
        group.bench_function("valid_key_1k_rate_limited", |b| {
            b.to_async(&runtime).iter(|| {
                layer_limited
                    .clone()
                    .oneshot(request(Some(("authorization", valid_1k.next()))))
            })
        });
        let layer_unlimited = ServiceBuilder::new()
            .layer(ApiKeyLayer::new(store_1k.clone()))
            .layer(RateLimitLayer::new(TierLimits::none()))
            .service_fn(ok);
        group.bench_function("valid_key_1k_rate_layer_no_limit", |b| {
            b.to_async(&runtime).iter(|| {
                layer_unlimited
                    .clone()
                    .oneshot(request(Some(("authorization", valid_1k.next()))))
            })
        });
    }
    group.bench_function("valid_key_1m", |b| {
        b.to_async(&runtime).iter(|| {
            layer_1m
                .clone()
                .oneshot(request(Some(("authorization", valid_1m.next()))))
        })
    });
    group.bench_function("missing_api_key", |b| {
        b.to_async(&runtime)
            .iter(|| layer_1k.clone().oneshot(request(None)))
    });
    group.bench_function("invalid_api_key_checksum", |b| {
        b.to_async(&runtime).iter(|| {
            layer_1k
                .clone()
                .oneshot(request(Some(("x-api-key", &typo))))
        })
    });
    group.bench_function("invalid_api_key_unknown", |b| {
        b.to_async(&runtime).iter(|| {
            layer_1k
                .clone()
                .oneshot(request(Some(("x-api-key", unknown.expose_secret()))))
        })
    });
    #[cfg(feature = "cache")]
    {
        let cached = tower_api_key::store::CachedKeyStore::new(store_1k.clone());
        runtime.block_on(async {
            for bearer in &keys_1k {
                let key = ApiKey::new(&bearer[7..]);
                cached.find(&key.digest().lookup_id()).await.unwrap();
            }
        });
        let layer_cached = ServiceBuilder::new()
            .layer(ApiKeyLayer::new(cached))
            .service_fn(ok);
        group.bench_function("cache_hit", |b| {
            b.to_async(&runtime).iter(|| {
                layer_cached
                    .clone()
                    .oneshot(request(Some(("authorization", valid_1k.next()))))
            })
        });

        // The same with push invalidation on: a feed that listens and never hears a change.
        let feed = tower_api_key::store::ChangeFeed::new(|invalidator| async move {
            invalidator.listening();
            std::future::pending::<()>().await;
        });
        let pushed =
            tower_api_key::store::CachedKeyStore::new(store_1k.clone()).push_invalidation(feed);
        runtime.block_on(async {
            for bearer in &keys_1k {
                let key = ApiKey::new(&bearer[7..]);
                pushed.find(&key.digest().lookup_id()).await.unwrap();
            }
            // Now that the feed listens, fill the cache it trusts.
            tokio::task::yield_now().await;
            for bearer in &keys_1k {
                let key = ApiKey::new(&bearer[7..]);
                pushed.find(&key.digest().lookup_id()).await.unwrap();
                assert!(pushed.find_now(&key.digest().lookup_id()).is_some());
            }
        });
        let layer_pushed = ServiceBuilder::new()
            .layer(ApiKeyLayer::new(pushed))
            .service_fn(ok);
        group.bench_function("cache_hit_pushed", |b| {
            b.to_async(&runtime).iter(|| {
                layer_pushed
                    .clone()
                    .oneshot(request(Some(("authorization", valid_1k.next()))))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
