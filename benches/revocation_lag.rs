//! How long a revocation through one instance takes to reach another instance's cache, and how
//! many store round trips a request makes with and without the pushed cache.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo bench --all-features --bench revocation_lag
//! ```
//!
//! Two instances share one store, each with its own connections; the second has a cache whose
//! TTL is an hour, told of changes by the store's feed. For each of `REVOCATIONS` keys, the
//! second instance caches the key, the first revokes it, and the second looks the key up again
//! and again until it sees the revocation: the lag is counted from the moment the revocation
//! returned. Then a layer answers 1,000 requests with one key over the bare store and over the
//! pushed cache, each connected through a proxy on 127.0.0.1 that counts round trips: the
//! bursts of bytes the client sends, each of which waits for the server's answer.

use std::time::{Duration, Instant};

use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::store::{CachedKeyStore, ChangeFeed, WritableKeyStore};
use tower_api_key::{ApiKey, KeyManager, KeyStore, NewKey, Tier};

const REVOCATIONS: usize = 40;
const REQUESTS: usize = 1_000;

#[tokio::main]
async fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let mut ran = false;
    if let Ok(url) = std::env::var("DATABASE_URL") {
        postgres(&url).await;
        ran = true;
    }
    if let Ok(url) = std::env::var("REDIS_URL") {
        redis(&url).await;
        ran = true;
    }
    if !ran {
        println!("revocation_lag: set DATABASE_URL (and REDIS_URL) to measure");
    }
}

async fn postgres(url: &str) {
    use sqlx::PgPool;
    use tower_api_key::store::PgKeyStore;
    let table = format!("lag_{}", uuid::Uuid::new_v4().simple());
    let connect = || async {
        PgPool::connect(url)
            .await
            .expect("DATABASE_URL is reachable")
    };
    let one = PgKeyStore::new(connect().await).table(&table);
    one.migrate().await.expect("the schema applies");
    let bare = PgKeyStore::new(connect().await).table(&table);
    let feed = bare.changes();
    lag("PostgreSQL", one.clone(), bare.clone(), feed).await;

    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a PostgreSQL URL");
    let (proxy, sent) =
        counting_proxy(format!("{}:{}", options.get_host(), options.get_port())).await;
    let through_proxy =
        |options: sqlx::postgres::PgConnectOptions| options.host("127.0.0.1").port(proxy.port());
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a PostgreSQL URL");
    let via_proxy = || async {
        PgPool::connect_with(through_proxy(options.clone()))
            .await
            .expect("the proxy reaches the server")
    };
    let bare = PgKeyStore::new(via_proxy().await).table(&table);
    let pushed = PgKeyStore::new(via_proxy().await).table(&table);
    let feed = pushed.changes();
    round_trips("PostgreSQL", one, bare, pushed, feed, sent).await;
}

async fn redis(url: &str) {
    use redis::aio::ConnectionManager;
    use tower_api_key::store::RedisKeyStore;
    let prefix = format!("lag-{}", uuid::Uuid::new_v4().simple());
    let client = redis::Client::open(url).expect("a Redis URL");
    let connect = |client: redis::Client| async move {
        ConnectionManager::new(client)
            .await
            .expect("REDIS_URL is reachable")
    };
    let store = |connection| RedisKeyStore::new(connection).prefix(prefix.clone());
    let one = store(connect(client.clone()).await);
    let two = store(connect(client.clone()).await);
    let feed = two.changes(client.clone());
    lag("Redis", one.clone(), two, feed).await;

    let server = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        _ => panic!("REDIS_URL must name a TCP server"),
    };
    let (proxy, sent) = counting_proxy(server).await;
    let proxied = redis::Client::open(format!("redis://{proxy}")).expect("a Redis URL");
    let bare = store(connect(proxied.clone()).await);
    let pushed = store(connect(proxied.clone()).await);
    let feed = pushed.changes(client);
    round_trips("Redis", one, bare, pushed, feed, sent).await;
}

/// A proxy on 127.0.0.1 to `server`, and the count of bursts clients sent through it.
async fn counting_proxy(
    server: String,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&sent);
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = upstream.into_split();
            let counter = std::sync::Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(read) = client_read.read(&mut buffer).await {
                    if read == 0 || server_write.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (address, sent)
}

/// The lag of `REVOCATIONS` revocations through `one`, seen through a pushed cache over `two`.
async fn lag<S: WritableKeyStore + Clone>(name: &str, one: S, two: S, feed: ChangeFeed) {
    let keys = KeyManager::new(one);
    let cache = CachedKeyStore::new(two)
        .ttl(Duration::from_secs(3600))
        .push_invalidation(feed);
    let account = format!("acct_{}", uuid::Uuid::new_v4().simple());
    let mut created = Vec::new();
    for index in 0..REVOCATIONS {
        let new = NewKey::new(&account, Tier::PRO, format!("lag {index}"));
        created.push(keys.create(new).await.expect("a key is created"));
    }
    // The feed starts with the first lookup, and the cache serves once it listens.
    let first = created[0].key.digest().lookup_id();
    let start = Instant::now();
    while {
        cache.find(&first).await.expect("the store answers");
        cache.find_now(&first).is_none()
    } {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the feed never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut lags = Vec::new();
    for key in &created {
        let lookup_id = key.key.digest().lookup_id();
        cache.find(&lookup_id).await.expect("the store answers");
        keys.revoke(&account, &key.info.id)
            .await
            .expect("the key is revoked");
        let revoked = Instant::now();
        loop {
            let found = cache.find(&lookup_id).await.expect("the store answers");
            if found.is_some_and(|record| record.revoked_at.is_some()) {
                break;
            }
            assert!(revoked.elapsed() < Duration::from_secs(60), "never seen");
            tokio::task::yield_now().await;
        }
        lags.push(revoked.elapsed());
    }
    lags.sort();
    let at = |fraction: f64| lags[((lags.len() - 1) as f64 * fraction).round() as usize];
    println!(
        "{name}: revocation seen by the other instance after: p50 {:?}, p99 {:?}, max {:?} \
         ({} revocations)",
        at(0.5),
        at(0.99),
        lags[lags.len() - 1],
        lags.len()
    );
}

/// Store round trips per request through the layer, over `bare` and over a cache of `pushed`,
/// both connected through the proxy that counts bursts in `sent`.
async fn round_trips<S: WritableKeyStore + Clone>(
    name: &str,
    one: S,
    bare: S,
    pushed: S,
    feed: ChangeFeed,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let counter = || sent.load(std::sync::atomic::Ordering::SeqCst);
    let keys = KeyManager::new(one);
    let account = format!("acct_{}", uuid::Uuid::new_v4().simple());
    let created = keys
        .create(NewKey::new(&account, Tier::PRO, "round trips"))
        .await
        .expect("a key is created");
    let cache = CachedKeyStore::new(pushed)
        .ttl(Duration::from_secs(3600))
        .push_invalidation(feed);
    let misses = CachedKeyStore::new(bare.clone()).max_capacity(0);
    for (label, store) in [
        ("bare store", Box::new(bare) as Box<dyn KeyStore>),
        ("cache miss (a cache that keeps nothing)", Box::new(misses)),
        ("pushed cache", Box::new(cache)),
    ] {
        let store: std::sync::Arc<dyn KeyStore> = store.into();
        answer(&store, &created.key).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = counter();
        let mut times = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let start = Instant::now();
            answer(&store, &created.key).await;
            times.push(start.elapsed());
        }
        // Last-use writes go out in the background.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = counter();
        times.sort();
        println!(
            "{name}: {label}: {:.2} store round trips per request, latency p50 {:?} p99 {:?} \
             ({REQUESTS} requests with one key)",
            (after - before) as f64 / REQUESTS as f64,
            times[REQUESTS / 2],
            times[REQUESTS * 99 / 100],
        );
    }
}

async fn answer(store: &std::sync::Arc<dyn KeyStore>, key: &ApiKey) {
    let service = ServiceBuilder::new()
        .layer(tower_api_key::ApiKeyLayer::new(std::sync::Arc::clone(
            store,
        )))
        .service_fn(|_request: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
    let request = http::Request::builder()
        .header("x-api-key", key.expose_secret())
        .body(String::new())
        .expect("a request");
    let response = service.oneshot(request).await.expect("an answer");
    assert_eq!(response.status(), 200, "the key is accepted");
}
