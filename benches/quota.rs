//! What an account's history costs a quota check (issue 20, finding 1), on each store:
//!
//! - `create/0`, `create/100k`: one create for an account at its limit of 3 active keys (so it
//!   is refused and changes nothing: it is the count that is timed), with no revoked key or with
//!   100,000 revoked keys in its history.
//! - `lookup_during_creates/0`, `lookup_during_creates/100k`: a lookup of another account's key
//!   while another task runs such creates in a loop, the wait a tenant sees (lookups that fail,
//!   as the store gives up, are timed too and counted in a printed line).
//!
//! The memory store always runs; Redis and PostgreSQL run when `REDIS_URL` / `DATABASE_URL` are
//! set (and their features are on), each in a prefix or table of its own, removed afterwards.
//! At the end the bench prints each row's 100k / 0 ratio of medians: near 1 when the count is
//! independent of history.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench --all-features --bench quota
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion};
use tokio::runtime::Runtime;
use tower_api_key::{
    key::{KeyDigest, KeyFormat},
    store::{Quota, WritableKeyStore},
    KeyId, KeyIdentity, KeyRecord, LookupId, MemoryKeyStore, Tier,
};

/// Revoked keys in the long history.
const HISTORY: usize = 100_000;
/// The limit, and the active keys each benchmarked account holds.
const LIMIT: usize = 3;
const EMPTY: &str = "acct_empty";
const LONG: &str = "acct_history";
const OTHER: &str = "acct_other";
/// The rows of each group, and the accounts they create for.
const HISTORIES: [(&str, &str); 2] = [("0", EMPTY), ("100k", LONG)];

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn new_record(account: &str) -> KeyRecord {
    let identity = KeyIdentity::new(KeyId::random(), account, "bench", Tier::FREE);
    KeyRecord::new(KeyFormat::default().generate().digest(), identity)
}

/// The `index`th revoked key of the long history.
fn revoked_record(index: usize) -> KeyRecord {
    let identity = KeyIdentity::new(
        KeyId::new(format!("key_rev_{index}")),
        LONG,
        "old",
        Tier::FREE,
    );
    KeyRecord::new(KeyDigest::of(&format!("revoked {index}")), identity).with_revoked_at(now())
}

/// Fills both benchmarked accounts to their limit, and gives `OTHER` the key that is looked up.
async fn fill<S: WritableKeyStore>(store: &S) -> LookupId {
    for account in [EMPTY, LONG] {
        for _ in 0..LIMIT {
            store.create(new_record(account), quota()).await.unwrap();
        }
    }
    let other = new_record(OTHER);
    let lookup_id = other.digest.lookup_id();
    store.create(other, quota()).await.unwrap();
    lookup_id
}

fn quota() -> Quota {
    Quota::new(LIMIT, now())
}

/// Creates for `account`, refused at its limit, in a loop on the runtime until dropped.
struct BackgroundCreates(Arc<AtomicBool>);

impl BackgroundCreates {
    fn start<S: WritableKeyStore + Clone + 'static>(
        runtime: &Runtime,
        store: &S,
        account: &str,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (store, record, running) = (store.clone(), new_record(account), Arc::clone(&stop));
        runtime.spawn(async move {
            while !running.load(Ordering::Relaxed) {
                let _ = store.create(record.clone(), quota()).await;
                // The memory store never yields: let the worker take other tasks.
                tokio::task::yield_now().await;
            }
        });
        Self(stop)
    }
}

impl Drop for BackgroundCreates {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The four rows of `group` over `store`, already filled and seeded.
fn bench_store<S: WritableKeyStore + Clone + 'static>(
    c: &mut Criterion,
    runtime: &Runtime,
    group: &str,
    store: &S,
    other: &LookupId,
) {
    let name = group;
    let mut group = c.benchmark_group(group);
    for (history, account) in HISTORIES {
        let record = new_record(account);
        group.bench_function(BenchmarkId::new("create", history), |b| {
            b.to_async(runtime).iter(|| async {
                let refused = store.create(record.clone(), quota()).await;
                assert!(refused.is_err(), "the account is at its limit");
            })
        });
    }
    for (history, account) in HISTORIES {
        let _creates = BackgroundCreates::start(runtime, store, account);
        let failed = AtomicU64::new(0);
        group.bench_function(BenchmarkId::new("lookup_during_creates", history), |b| {
            b.to_async(runtime).iter(|| async {
                // A store that gives up is timed too: its wait ends in a 503.
                if store.find(other).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        let failed = failed.into_inner();
        if failed > 0 {
            println!("{name}/lookup_during_creates/{history}: {failed} lookups failed (503)");
        }
    }
    group.finish();
}

fn memory(c: &mut Criterion, runtime: &Runtime) {
    let store = MemoryKeyStore::new();
    let other = runtime.block_on(fill(&store));
    for index in 0..HISTORY {
        store.insert(revoked_record(index));
    }
    bench_store(c, runtime, "quota_memory", &store, &other);
}

#[cfg(feature = "redis")]
fn redis(c: &mut Criterion, runtime: &Runtime) {
    let Some(url) = std::env::var("REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        println!("quota_redis: skipped, REDIS_URL is not set");
        return;
    };
    let prefix = format!("tower-api-key-bench-{}", uuid::Uuid::new_v4().simple());
    let client = redis::Client::open(url).unwrap();
    // The store's own timeout (2 s) bounds each wait, not the connection's default 0.5 s.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)));
    let connection = runtime
        .block_on(redis::aio::ConnectionManager::new_with_config(
            client, config,
        ))
        .unwrap();
    let store = runtime.block_on(async {
        tower_api_key::store::RedisKeyStore::new(connection.clone()).prefix(prefix.clone())
    });
    let other = runtime.block_on(async {
        let other = fill(&store).await;
        seed_redis(connection.clone(), &prefix).await;
        other
    });
    bench_store(c, runtime, "quota_redis", &store, &other);
    runtime.block_on(remove_redis_keys(connection, &prefix));
}

/// Writes the long history as the Redis store does (its module docs give the layout), in
/// pipelines: a create then a revoke each would take minutes.
#[cfg(feature = "redis")]
async fn seed_redis(mut connection: redis::aio::ConnectionManager, prefix: &str) {
    let revoked_at = now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        .to_string();
    for chunk in (0..HISTORY).collect::<Vec<_>>().chunks(1_000) {
        let mut pipeline = redis::pipe();
        for &index in chunk {
            let record = revoked_record(index);
            let hex = record.digest.to_hex();
            let key_id = record.identity.key_id().to_string();
            pipeline
                .hset_multiple(
                    format!("{{{prefix}}}:lookup:{}", &hex[..32]),
                    &[
                        ("digest", hex.as_str()),
                        ("key_id", &key_id),
                        ("account_id", LONG),
                        ("name", "old"),
                        ("tier", "free"),
                        ("mode", "live"),
                        ("revoked_at", &revoked_at),
                    ],
                )
                .ignore()
                .set(format!("{{{prefix}}}:id:{key_id}"), &hex[..32])
                .ignore()
                .sadd(format!("{{{prefix}}}:account:{LONG}"), &key_id)
                .ignore();
        }
        let () = pipeline.query_async(&mut connection).await.unwrap();
    }
}

#[cfg(feature = "redis")]
async fn remove_redis_keys(mut connection: redis::aio::ConnectionManager, prefix: &str) {
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{prefix}}}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            let () = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

#[cfg(not(feature = "redis"))]
fn redis(_: &mut Criterion, _: &Runtime) {
    println!("quota_redis: skipped, built without the `redis` feature");
}

#[cfg(feature = "postgres")]
fn postgres(c: &mut Criterion, runtime: &Runtime) {
    let Some(url) = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        println!("quota_postgres: skipped, DATABASE_URL is not set");
        return;
    };
    let table = format!("api_keys_bench_{}", uuid::Uuid::new_v4().simple());
    let pool = runtime
        .block_on(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&url),
        )
        .unwrap();
    let store = runtime.block_on(async {
        let store = tower_api_key::store::PgKeyStore::new(pool.clone()).table(&table);
        store.migrate().await.unwrap();
        store
    });
    let run = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let other = runtime.block_on(async {
        let other = fill(&store).await;
        run(format!(
            "INSERT INTO \"{table}\" (key_id, lookup_id, digest, account_id, name, tier, revoked_at) \
             SELECT 'key_rev_' || i, decode(lpad(to_hex(i), 32, '0'), 'hex'), \
                    decode(repeat('00', 32), 'hex'), '{LONG}', 'old', 'free', now() \
             FROM generate_series(1, {HISTORY}) AS i; \
             ANALYZE \"{table}\";"
        ))
        .await;
        other
    });
    bench_store(c, runtime, "quota_postgres", &store, &other);
    runtime.block_on(run(format!("DROP TABLE \"{table}\"")));
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: &mut Criterion, _: &Runtime) {
    println!("quota_postgres: skipped, built without the `postgres` feature");
}

/// Where criterion writes its estimates, as it decides by default (without `cargo metadata`).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        Into::into,
    );
    target.join("criterion")
}

/// The median of `group`/`row`/`history` in this run's estimates, in nanoseconds.
fn median(group: &str, row: &str, history: &str) -> Option<f64> {
    let path = criterion_home()
        .join(group)
        .join(row)
        .join(history)
        .join("new/estimates.json");
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

/// `nanos` in the unit that keeps it between 1 and 1,000.
fn readable(nanos: f64) -> String {
    match nanos {
        n if n < 1e3 => format!("{n:.0} ns"),
        n if n < 1e6 => format!("{:.1} µs", n / 1e3),
        n => format!("{:.1} ms", n / 1e6),
    }
}

fn print_ratios() {
    println!("\nmedians, and 100k revoked keys / none:");
    for group in ["quota_memory", "quota_redis", "quota_postgres"] {
        for row in ["create", "lookup_during_creates"] {
            if let (Some(none), Some(long)) = (median(group, row, "0"), median(group, row, "100k"))
            {
                println!(
                    "{group}/{row}: {} -> {}: ratio {:.2}",
                    readable(none),
                    readable(long),
                    long / none
                );
            }
        }
    }
}

fn main() {
    // Two workers: one runs the background creates while the bench's thread looks keys up.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default()
        .output_directory(&criterion_home())
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    memory(&mut c, &runtime);
    redis(&mut c, &runtime);
    postgres(&mut c, &runtime);
    c.final_summary();
    print_ratios();
}
