//! Global rate limits in Redis: the latency a request pays on loopback and the round trips it
//! makes, with and without leases, against the same layer counting in this process.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo bench --all-features --bench global_limit
//! ```
//!
//! Rows (criterion, so compare medians from one run): `local` (the layer counting in this
//! process), `global` (one `EVALSHA` per request) and `global_leases_10` (ten requests taken per
//! round trip). Each rotates over 100 keys of one memory store, at a limit that never refuses.
//! Then each layer answers 1,000 requests, one at a time, while the Redis server counts the
//! scripts it runs (`INFO commandstats`): the round trips per request, and the latency of each
//! request (p50, p99).

use std::cell::Cell;
use std::convert::Infallible;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::key::KeyFormat;
use tower_api_key::limit::{RateLimit, RateLimitLayer};
use tower_api_key::manage::TierLimits;
use tower_api_key::store::RedisKeyStore;
use tower_api_key::{ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier};

const KEYS: usize = 100;
const COUNTED: usize = 1_000;

async fn ok(_request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::default()))
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("global_limit: set REDIS_URL to measure");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL is a Redis URL");
    let store = runtime.block_on(async {
        let connection = redis::aio::ConnectionManager::new(client.clone())
            .await
            .expect("REDIS_URL is reachable");
        let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
        RedisKeyStore::new(connection).prefix(prefix)
    });

    let keys = MemoryKeyStore::new();
    let format = KeyFormat::default();
    let headers: Vec<String> = (0..KEYS)
        .map(|index| {
            let key = format.generate();
            let identity = KeyIdentity::new(
                KeyId::new(format!("key_{index}")),
                "acct",
                "bench",
                Tier::FREE,
            );
            keys.insert(KeyRecord::new(key.digest(), identity));
            format!("Bearer {}", key.expose_secret())
        })
        .collect();
    let next = Cell::new(0);
    let request = || {
        let index = next.get();
        next.set((index + 1) % KEYS);
        Request::builder()
            .header("authorization", &headers[index])
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    // A limit no row reaches: a million per second, a burst of a million.
    let limits = TierLimits::none().with_rate_limit(Tier::FREE, RateLimit::per_second(1_000_000));
    let local = RateLimitLayer::new(limits.clone());
    let global = RateLimitLayer::new(limits.clone()).global(store.clone());
    let leased = RateLimitLayer::new(limits).global(store).leases(10);
    let service = |limit: &RateLimitLayer| {
        ServiceBuilder::new()
            .layer(ApiKeyLayer::new(keys.clone()))
            .layer(limit.clone())
            .service_fn(ok)
    };

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("global_limit");
    for (name, limit) in [
        ("local", &local),
        ("global", &global),
        ("global_leases_10", &leased),
    ] {
        let service = service(limit);
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| service.clone().oneshot(request()))
        });
    }
    group.finish();
    criterion.final_summary();

    for (name, limit) in [
        ("local", &local),
        ("global", &global),
        ("global_leases_10", &leased),
    ] {
        let service = service(limit);
        let (round_trips, mut latencies) = runtime.block_on(async {
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let before = scripts_run(&mut connection).await;
            let mut latencies = Vec::with_capacity(COUNTED);
            for _ in 0..COUNTED {
                let started = std::time::Instant::now();
                let response = service.clone().oneshot(request()).await.unwrap();
                latencies.push(started.elapsed());
                assert!(response.status().is_success(), "{}", response.status());
            }
            (scripts_run(&mut connection).await - before, latencies)
        });
        latencies.sort();
        println!(
            "{name}: {:.2} round trips per request ({round_trips} scripts for {COUNTED} \
             requests); latency p50 {:?}, p99 {:?}",
            round_trips as f64 / COUNTED as f64,
            latencies[COUNTED / 2],
            latencies[COUNTED * 99 / 100],
        );
    }
}

/// How many scripts the Redis server has run (`EVALSHA` and `EVAL` calls).
async fn scripts_run(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    info.lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            let calls = line.split("calls=").nth(1)?;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}
