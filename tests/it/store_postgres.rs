//! The store suite against `PgKeyStore` on the server at `DATABASE_URL`, then what only this
//! store has: its schema, its table name, and how it fails when the server does.
//!
//! Each test process keeps its keys in a table of its own, `api_keys_<uuid>`, so nothing an
//! earlier run left in the database matters.
#![cfg(feature = "postgres")]

use crate::common;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use common::proxy::{self, Proxy};
use common::suite::{self, Backend};
use common::{assert_envelope, echo_identity, request, verdict_through, Answer};
use http::StatusCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::OnceCell;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    access::KeyMode,
    clock::Clock,
    key::{KeyDigest, KeyFormat},
    limit::{Credits, RateLimit, Refill, Spend},
    store::{PgKeyStore, Quota, WritableKeyStore},
    ApiKey, KeyId, KeyIdentity, KeyManager, KeyRecord, KeyStore, NewKey, Tier,
};

/// Two application instances over one database: each instance has its own pool.
struct Pg;

#[async_trait]
impl Backend for Pg {
    type Store = PgKeyStore;

    async fn instance(&self) -> PgKeyStore {
        static MIGRATED: OnceCell<()> = OnceCell::const_new();
        let store = PgKeyStore::new(pool(server())).table(table());
        MIGRATED
            .get_or_init(|| async {
                store
                    .migrate()
                    .await
                    .expect("the schema applies to the DATABASE_URL server");
            })
            .await;
        store
    }
}

tower_api_key::store_suite!(Pg);

/// The server's connection options, from `DATABASE_URL`, which must be set.
fn server() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: the PostgreSQL store's tests need a server, as in \
             DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test --features postgres"
        )
    });
    PgConnectOptions::from_str(&url).expect("DATABASE_URL is a PostgreSQL URL")
}

/// This process's table, which no earlier run used.
fn table() -> &'static str {
    static TABLE: OnceLock<String> = OnceLock::new();
    TABLE.get_or_init(unique_table)
}

fn unique_table() -> String {
    format!("api_keys_{}", uuid::Uuid::new_v4().simple())
}

/// A small pool that connects on first use, so that making it never blocks.
fn pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options)
}

/// The server's options, sent to `address` instead.
fn server_at(address: SocketAddr) -> PgConnectOptions {
    server()
        .host(&address.ip().to_string())
        .port(address.port())
}

/// The server's loopback address, for a proxy in front of it.
async fn server_address() -> SocketAddr {
    let options = server();
    let mut addresses = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .expect("DATABASE_URL's host resolves");
    addresses
        .find(|address| address.ip().is_loopback())
        .expect("DATABASE_URL names a server on this machine")
}

/// What the layer over `keys`'s store answers to a request with `key`.
async fn answer(keys: &KeyManager<PgKeyStore>, key: &ApiKey) -> Answer {
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .service_fn(echo_identity);
    let request = request(&[("x-api-key", key.expose_secret().as_bytes())]);
    Answer::read(service.oneshot(request).await.unwrap()).await
}

fn assert_unavailable(answer: &Answer) {
    assert_envelope(
        answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "authentication_unavailable",
    );
}

/// Runs `sql` on this process's table, written as `{table}`, as someone other than the store.
async fn run_on_table(sql: &str, key_id: &KeyId) {
    run_on_table_named(table(), sql, key_id).await;
}

const SHORT_TIMEOUT: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_gives_503() {
    let store = PgKeyStore::new(pool(server_at(proxy::closed_port().await))).timeout(SHORT_TIMEOUT);
    let keys = KeyManager::new(store);
    assert_unavailable(&answer(&keys, &KeyFormat::default().generate()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_gives_503_within_the_timeout() {
    let store =
        PgKeyStore::new(pool(server_at(proxy::silent_server().await))).timeout(SHORT_TIMEOUT);
    let keys = KeyManager::new(store);
    let started = Instant::now();
    assert_unavailable(&answer(&keys, &KeyFormat::default().generate()).await);
    assert!(
        started.elapsed() < SHORT_TIMEOUT * 5,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_gives_503_and_auth_resumes_by_itself() {
    let clock = suite::clock();
    let direct = suite::manager(Pg.instance().await, &clock);
    let created = suite::create(&direct, &suite::account()).await;
    let proxy = Proxy::start(server_address().await).await;
    let timeout = Duration::from_millis(500);
    let store = PgKeyStore::new(pool(server_at(proxy.address)))
        .table(table())
        .timeout(timeout);
    let keys = suite::manager(store, &clock);
    assert_eq!(answer(&keys, &created.key).await.status, StatusCode::OK);

    proxy.hang();
    let started = Instant::now();
    assert_unavailable(&answer(&keys, &created.key).await);
    // Bounded by the timeout, not by TCP's minutes; the margin absorbs a loaded machine.
    assert!(
        started.elapsed() < timeout + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = answer(&keys, &created.key).await;
        if answer.status == StatusCode::OK {
            break;
        }
        assert_unavailable(&answer);
        assert!(Instant::now() < deadline, "auth did not resume within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_digest_gives_503() {
    let clock = suite::clock();
    let keys = suite::manager(Pg.instance().await, &clock);
    let created = suite::create(&keys, &suite::account()).await;
    run_on_table(
        "UPDATE \"{table}\" SET digest = '\\x00ff'::bytea WHERE key_id = $1",
        &created.info.id,
    )
    .await;
    assert_unavailable(&answer(&keys, &created.key).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_expiry_gives_503_not_a_panic() {
    let clock = suite::clock();
    let keys = suite::manager(Pg.instance().await, &clock);
    let created = suite::create(&keys, &suite::account()).await;
    run_on_table(
        "UPDATE \"{table}\" SET expires_at = 'infinity' WHERE key_id = $1",
        &created.info.id,
    )
    .await;
    assert_unavailable(&answer(&keys, &created.key).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_round_trip_to_the_microsecond() {
    let store = Pg.instance().await;
    let at = |seconds: i64, micros: u32| {
        let since = Duration::new(seconds.unsigned_abs(), micros * 1_000);
        if seconds >= 0 {
            SystemTime::UNIX_EPOCH + since
        } else {
            SystemTime::UNIX_EPOCH - since
        }
    };
    let identity = KeyIdentity::new(KeyId::random(), suite::account(), "times", Tier::FREE);
    let mut record = KeyRecord::new(KeyDigest::of(&uuid::Uuid::new_v4().to_string()), identity)
        .with_created_at(at(1_800_000_000, 123_456))
        .with_expires_at(at(1_900_000_000, 999_999))
        .with_revoked_at(at(-86_400, 1));
    record.last_used_at = Some(at(0, 0));
    let now = at(1_800_000_000, 0);
    store
        .create(record.clone(), Quota::new(3, now))
        .await
        .unwrap();
    let found = store
        .find(&record.digest.lookup_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.created_at, record.created_at);
    assert_eq!(found.expires_at, record.expires_at);
    assert_eq!(found.revoked_at, record.revoked_at);
    assert_eq!(found.last_used_at, record.last_used_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_round_trips_whole() {
    let store = Pg.instance().await;
    let metadata = serde_json::json!({
        "roles": ["reader", "writer"],
        "limits": {"rps": 12.5, "burst": 40},
        "note": "clé \u{1F511}",
        "none": null,
    });
    let identity = KeyIdentity::new(KeyId::random(), suite::account(), "meta", Tier::PRO)
        .with_metadata(metadata.clone());
    let record = KeyRecord::new(KeyDigest::of(&uuid::Uuid::new_v4().to_string()), identity);
    store
        .create(record.clone(), Quota::new(3, SystemTime::now()))
        .await
        .unwrap();
    let found = store
        .find(&record.digest.lookup_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.identity, record.identity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_keeps_the_earlier_expiry() {
    let store = Pg.instance().await;
    let account = suite::account();
    let now = suite::clock().now();
    let expiring = |name: &str, after: u64| {
        let identity = KeyIdentity::new(KeyId::random(), &account, name, Tier::PRO);
        KeyRecord::new(KeyDigest::of(&uuid::Uuid::new_v4().to_string()), identity)
            .with_expires_at(now + Duration::from_secs(after))
    };
    let (soon, late) = (expiring("soon", 10), expiring("late", 1_000));
    let retire_at = now + Duration::from_secs(300);
    for old in [&soon, &late] {
        store.create(old.clone(), Quota::new(5, now)).await.unwrap();
        let retiring = Quota::new(5, now).retiring(old.identity.key_id().clone(), retire_at);
        store
            .create(expiring("new", 5_000), retiring)
            .await
            .unwrap();
    }
    let expiry = |record: &KeyRecord| {
        let store = store.clone();
        let lookup_id = record.digest.lookup_id();
        async move { store.find(&lookup_id).await.unwrap().unwrap().expires_at }
    };
    assert_eq!(expiry(&soon).await, soon.expires_at);
    assert_eq!(expiry(&late).await, Some(retire_at));
}

/// Waits (at most 2 s) until the background writer has recorded `at` as `record`'s last use.
async fn wait_for_last_use(store: &PgKeyStore, record: &KeyRecord, at: SystemTime) {
    for _ in 0..100 {
        let found = store.find(&record.digest.lookup_id()).await.unwrap();
        if found.unwrap().last_used_at == Some(at) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the last use was not recorded within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_never_moves_back() {
    let store = Pg.instance().await;
    let account = suite::account();
    let record = |name: &str| {
        let identity = KeyIdentity::new(KeyId::random(), &account, name, Tier::PRO);
        KeyRecord::new(KeyDigest::of(&uuid::Uuid::new_v4().to_string()), identity)
    };
    let (used, marker) = (record("used"), record("marker"));
    let now = suite::clock().now();
    for record in [&used, &marker] {
        store
            .create(record.clone(), Quota::new(3, now))
            .await
            .unwrap();
    }
    let later = now + Duration::from_secs(60);
    store.record_use(&used, later);
    wait_for_last_use(&store, &used, later).await;
    store.record_use(&used, now);
    // The writer finishes a batch before it takes the next: once the second marker is written,
    // the earlier use has been.
    store.record_use(&marker, now);
    wait_for_last_use(&store, &marker, now).await;
    store.record_use(&marker, later);
    wait_for_last_use(&store, &marker, later).await;
    wait_for_last_use(&store, &used, later).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_twice_and_concurrently_is_fine() {
    let table = unique_table();
    let a = PgKeyStore::new(pool(server())).table(&table);
    let b = PgKeyStore::new(pool(server())).table(&table);
    let (first, second) = tokio::join!(a.migrate(), b.migrate());
    first.unwrap();
    second.unwrap();
    a.migrate().await.unwrap();
    let unknown = KeyFormat::default().generate().digest().lookup_id();
    assert!(b.find(&unknown).await.unwrap().is_none());
    sqlx::query(AssertSqlSafe(format!("DROP TABLE \"{table}\"")))
        .execute(&pool(server()))
        .await
        .unwrap();
}

/// One account's history in `{table}`: 1,000 revoked keys, 1 expired and 2 active in 2027
/// (one without expiry).
const HISTORY: &str = r#"
INSERT INTO "{table}" (key_id, lookup_id, digest, account_id, name, tier, expires_at, revoked_at)
SELECT 'key_' || i, decode(lpad(to_hex(i), 32, '0'), 'hex'), decode(repeat('00', 32), 'hex'),
       'acct_history', 'old', 'free',
       CASE i WHEN 1001 THEN timestamptz '2020-01-01' WHEN 1002 THEN timestamptz '2100-01-01' END,
       CASE WHEN i <= 1000 THEN timestamptz '2020-01-01' END
FROM generate_series(1, 1003) AS i;
ANALYZE "{table}";
"#;

/// Rows that scans of `table` have read (sequentially, or as index entries) and rows inserted,
/// once the statistics count `inserted` rows: backends report them when their connection closes.
async fn reads_once_inserted(table: &str, inserted: i64) -> i64 {
    let observer = pool(server());
    for _ in 0..100 {
        let (read, rows): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(t.seq_tup_read, 0) + coalesce(sum(i.idx_tup_read), 0)::bigint, \
                    t.n_tup_ins \
             FROM pg_stat_user_tables t LEFT JOIN pg_stat_user_indexes i USING (relid) \
             WHERE t.relname = $1 GROUP BY t.seq_tup_read, t.n_tup_ins",
        )
        .bind(table)
        .fetch_one(&observer)
        .await
        .unwrap();
        if rows == inserted {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the statistics did not count {inserted} inserted rows within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_reads_none_of_the_account_s_revoked_or_expired_rows() {
    let table = unique_table();
    let admin = pool(server());
    PgKeyStore::new(admin.clone())
        .table(&table)
        .migrate()
        .await
        .unwrap();
    sqlx::raw_sql(AssertSqlSafe(HISTORY.replace("{table}", &table)))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let before = reads_once_inserted(&table, 1_003).await;

    let connections = pool(server());
    let store = PgKeyStore::new(connections.clone()).table(&table);
    let identity = KeyIdentity::new(KeyId::random(), "acct_history", "new", Tier::FREE);
    let record = KeyRecord::new(KeyFormat::default().generate().digest(), identity);
    let now = suite::clock().now();
    store.create(record, Quota::new(10, now)).await.unwrap();
    connections.close().await;
    let read = reads_once_inserted(&table, 1_004).await - before;
    assert_eq!(
        read, 2,
        "the quota check read {read} rows for 2 active keys"
    );
    sqlx::query(AssertSqlSafe(format!("DROP TABLE \"{table}\"")))
        .execute(&pool(server()))
        .await
        .unwrap();
}

/// The schema before keys had modes and scopes, as version 0.1 created it.
const SCHEMA_WITHOUT_MODES_AND_SCOPES: &str = r#"
CREATE TABLE "{table}" (
    key_id TEXT PRIMARY KEY,
    lookup_id BYTEA NOT NULL UNIQUE,
    digest BYTEA NOT NULL,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    metadata JSONB,
    hint TEXT,
    created_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX "{table}_account_id_idx" ON "{table}" (account_id);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_table_without_modes_and_scopes_keeps_its_keys_live_with_full_access() {
    let table = unique_table();
    let admin = pool(server());
    sqlx::raw_sql(AssertSqlSafe(
        SCHEMA_WITHOUT_MODES_AND_SCOPES.replace("{table}", &table),
    ))
    .execute(&admin)
    .await
    .unwrap();
    let old_key = KeyFormat::default().generate();
    let digest = old_key.digest();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{table}\" (key_id, lookup_id, digest, account_id, name, tier) \
         VALUES ('key_old', $1, $2, 'acct_old', 'old', 'free')"
    )))
    .bind(&digest.lookup_id().as_bytes()[..])
    .bind(&digest.as_bytes()[..])
    .execute(&admin)
    .await
    .unwrap();

    let store = PgKeyStore::new(pool(server())).table(&table);
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let found = store.find(&digest.lookup_id()).await.unwrap().unwrap();
    assert_eq!(found.identity.mode(), KeyMode::Live);
    assert_eq!(found.identity.scopes(), None);
    let keys = suite::manager(store, &suite::clock());
    let new = NewKey::new("acct_old", Tier::FREE, "new")
        .mode(KeyMode::Test)
        .scopes(["iocs:read"]);
    let created = keys.create(new).await.unwrap();
    assert_eq!(answer(&keys, &created.key).await.status, StatusCode::OK);
    sqlx::query(AssertSqlSafe(format!("DROP TABLE \"{table}\"")))
        .execute(&admin)
        .await
        .unwrap();
}

/// The schema before keys had rate limits and credits, with modes and scopes.
const SCHEMA_WITHOUT_CREDITS: &str = r#"
CREATE TABLE "{table}" (
    key_id TEXT PRIMARY KEY,
    lookup_id BYTEA NOT NULL UNIQUE,
    digest BYTEA NOT NULL,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    metadata JSONB,
    hint TEXT,
    created_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    mode TEXT NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test')),
    scopes TEXT[]
);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_table_without_credits_keeps_its_keys_unmetered_and_adds_the_columns() {
    let table = unique_table();
    let admin = pool(server());
    sqlx::raw_sql(AssertSqlSafe(
        SCHEMA_WITHOUT_CREDITS.replace("{table}", &table),
    ))
    .execute(&admin)
    .await
    .unwrap();
    let old_key = KeyFormat::default().generate();
    let digest = old_key.digest();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{table}\" (key_id, lookup_id, digest, account_id, name, tier) \
         VALUES ('key_old', $1, $2, 'acct_old', 'old', 'free')"
    )))
    .bind(&digest.lookup_id().as_bytes()[..])
    .bind(&digest.as_bytes()[..])
    .execute(&admin)
    .await
    .unwrap();

    let store = PgKeyStore::new(pool(server())).table(&table);
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let found = store.find(&digest.lookup_id()).await.unwrap().unwrap();
    assert_eq!((found.identity.rate_limit(), found.credits), (None, None));
    let old_id = KeyId::new("key_old");
    let now = SystemTime::now();
    let spend = store.spend_credits(&old_id, 1, now).await.unwrap();
    assert_eq!(spend, Some(Spend::Unmetered));

    let keys = suite::manager(store.clone(), &suite::clock());
    let new = NewKey::new("acct_old", Tier::FREE, "new")
        .rate_limit(RateLimit::per_second(3))
        .credits(Credits::new(2));
    let created = keys.create(new).await.unwrap();
    let found = store
        .find(&created.key.digest().lookup_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.identity.rate_limit(), Some(RateLimit::per_second(3)));
    assert_eq!(found.credits, Some(Credits::new(2)));
    let spend = store.spend_credits(&created.info.id, 2, now).await.unwrap();
    assert_eq!(spend, Some(Spend::Spent(Credits::new(0))));
    // The columns came with their CHECK constraints.
    let negative = sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{table}\" SET credits_remaining = -1"
    )))
    .execute(&admin)
    .await;
    assert!(negative.is_err(), "{negative:?}");
    sqlx::query(AssertSqlSafe(format!("DROP TABLE \"{table}\"")))
        .execute(&admin)
        .await
        .unwrap();
}

/// Requests spend credits, so spends must not make every instance's cache forget the key:
/// the trigger leaves the balance out, as it does the last use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spends_and_top_ups_notify_nothing_and_a_revocation_does() {
    let table = unique_table();
    let clock = suite::clock();
    let keys = suite::manager(PgKeyStore::new(pool(server())).table(&table), &clock);
    keys.store().migrate().await.unwrap();
    let account = suite::account();
    let daily = Credits::new(5).refilled(Refill::daily(5), SystemTime::UNIX_EPOCH);
    let metered = NewKey::new(&account, Tier::FREE, "metered").credits(daily);
    let metered = keys.create(metered).await.unwrap();
    let other = keys
        .create(NewKey::new(&account, Tier::FREE, "other"))
        .await
        .unwrap();

    let mut listener = sqlx::postgres::PgListener::connect_with(&pool(server()))
        .await
        .unwrap();
    listener.listen(&format!("{table}_changes")).await.unwrap();
    let store = keys.store();
    let now = clock.now();
    let spent = store.spend_credits(&metered.info.id, 1, now).await.unwrap();
    assert!(
        matches!(spent, Some(Spend::Spent(credits)) if credits.remaining == 4),
        "{spent:?}"
    );
    let refused = store.spend_credits(&metered.info.id, 5, now).await.unwrap();
    assert!(
        matches!(refused, Some(Spend::Exhausted(credits)) if credits.remaining == 4),
        "{refused:?}"
    );
    let topped = keys.top_up(&account, &metered.info.id, 3).await.unwrap();
    assert_eq!(topped.credits.map(|credits| credits.remaining), Some(7));
    // And the refill at midnight, written by the next spend.
    clock.set(Refill::daily(5).every.next_after(now));
    let refilled = store.spend_credits(&metered.info.id, 1, clock.now()).await;
    assert!(
        matches!(refilled, Ok(Some(Spend::Spent(credits))) if credits.remaining == 4),
        "{refilled:?}"
    );
    keys.revoke(&account, &other.info.id).await.unwrap();

    let first = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the revocation notifies")
        .unwrap();
    assert_eq!(
        first.payload(),
        other.key.digest().lookup_id().to_hex(),
        "the first notification is the revocation's"
    );
    sqlx::query(AssertSqlSafe(format!("DROP TABLE \"{table}\"")))
        .execute(&pool(server()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "is not a plain SQL identifier")]
async fn invalid_table_name_panics_at_construction() {
    let _ = PgKeyStore::new(pool(server())).table("api_keys; DROP TABLE api_keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_shows_no_password() {
    let store = PgKeyStore::new(pool(server().password("hunter2-secret")));
    let debug = format!("{store:?}");
    assert!(debug.contains("api_keys"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
}

/// The suite again over a cache in front of each instance.
#[cfg(feature = "cache")]
mod cached {
    use super::*;
    use tower_api_key::store::CachedKeyStore;

    struct CachedPg;

    #[async_trait]
    impl Backend for CachedPg {
        type Store = CachedKeyStore<PgKeyStore>;

        async fn instance(&self) -> Self::Store {
            CachedKeyStore::new(Pg.instance().await)
        }
    }

    tower_api_key::store_suite!(CachedPg);
}

/// An instance over a table of its own, behind a cache that would keep records for an hour and
/// is told of changes by the table's `LISTEN` feed; its pool, cache and feed are its own.
async fn pushed_instance(table: &str) -> tower_api_key::store::CachedKeyStore<PgKeyStore> {
    let store = PgKeyStore::new(pool(server())).table(table);
    tower_api_key::store::CachedKeyStore::new(store.clone())
        .ttl(Duration::from_secs(3600))
        .push_invalidation(store.changes())
}

/// Terminates the `LISTEN` connections of `table`'s feeds; how many there were.
async fn kill_listeners(admin: &PgPool, table: &str) -> i64 {
    // The feed's connection is named after its channel.
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(format!("{table}_changes"))
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_instance_reach_the_other_s_cache_at_once() {
    let table = unique_table();
    let one = KeyManager::new(PgKeyStore::new(pool(server())).table(&table));
    one.store().migrate().await.unwrap();
    let two = pushed_instance(&table).await;
    let account = suite::account();
    let mut keys = Vec::new();
    for name in ["revoked", "deleted", "rotated", "sql", "disabled"] {
        keys.push(
            one.create(NewKey::new(&account, Tier::PRO, name))
                .await
                .unwrap(),
        );
    }
    for created in &keys {
        assert_eq!(verdict_through(two.clone(), &created.key).await, "ok");
    }
    wait_until_listening(&two, &keys[0].key).await;

    one.revoke(&account, &keys[0].info.id).await.unwrap();
    one.delete(&account, &keys[1].info.id).await.unwrap();
    let rotated = one
        .rotate(&account, &keys[2].info.id, Duration::from_millis(1))
        .await
        .unwrap();
    run_on_table_named(
        &table,
        "UPDATE {table} SET revoked_at = now() WHERE key_id = $1",
        &keys[3].info.id,
    )
    .await;
    one.disable(&account, &keys[4].info.id).await.unwrap();
    let expected = [
        "expired_api_key",
        "invalid_api_key",
        "expired_api_key",
        "expired_api_key",
        "expired_api_key",
    ];
    for (created, expected) in keys.iter().zip(expected) {
        assert_eq!(
            verdict_within(two.clone(), &created.key, expected).await,
            expected,
            "key {} is still cached as it was",
            created.info.name
        );
    }
    assert_eq!(verdict_through(two.clone(), &rotated.key).await, "ok");
    // Enabling is pushed too: the disabled record cached since is evicted.
    one.enable(&account, &keys[4].info.id).await.unwrap();
    assert_eq!(
        verdict_within(two.clone(), &keys[4].key, "ok").await,
        "ok",
        "the enabled key is still cached as disabled"
    );
}

/// Waits until `cache`'s feed listens: the cache serves what it holds only then.
async fn wait_until_listening(
    cache: &tower_api_key::store::CachedKeyStore<PgKeyStore>,
    key: &ApiKey,
) {
    let start = std::time::Instant::now();
    loop {
        assert_eq!(verdict_through(cache.clone(), key).await, "ok");
        if cache.find_now(&key.digest().lookup_id()).is_some() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the feed never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks until `store` answers `expected` for `key`, for at most 2 seconds (the push takes
/// milliseconds, the TTL is an hour); the last answer.
async fn verdict_within(store: impl KeyStore + Clone, key: &ApiKey, expected: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let verdict = verdict_through(store.clone(), key).await;
        if verdict == expected || std::time::Instant::now() > deadline {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `sql` on `table`, written as `{table}`, as someone other than the store.
async fn run_on_table_named(table: &str, sql: &str, key_id: &KeyId) {
    let sql = sql.replace("{table}", table);
    sqlx::query(AssertSqlSafe(sql))
        .bind(key_id.as_str())
        .execute(&pool(server()))
        .await
        .unwrap();
}

/// Load on one instance while another revokes keys and the first's `LISTEN` connection is
/// killed again and again: a key is never accepted once a second has passed since its
/// revocation returned (the TTL is an hour, so only the push or the feed's distrust while it
/// reconnects can explain a refusal), and a key never revoked is never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_invalidation_holds_under_load_while_the_listener_is_killed() {
    const KEYS: usize = 30;
    const REVOKED: usize = 15;
    let table = unique_table();
    let one = KeyManager::new(PgKeyStore::new(pool(server())).table(&table));
    one.store().migrate().await.unwrap();
    let two = pushed_instance(&table).await;
    let account = suite::account();
    let mut keys = Vec::new();
    for index in 0..KEYS {
        let new = NewKey::new(&account, Tier::PRO, format!("load {index}"));
        keys.push(one.create(new).await.unwrap());
    }
    wait_until_listening(&two, &keys[0].key).await;
    for created in &keys {
        assert_eq!(verdict_through(two.clone(), &created.key).await, "ok");
    }
    let keys = Arc::new(keys);
    let revoked_at: Arc<Mutex<Vec<Option<std::time::Instant>>>> =
        Arc::new(Mutex::new(vec![None; KEYS]));
    let start = std::time::Instant::now();
    let run_for = Duration::from_secs(4);

    let killer = {
        let table = table.clone();
        tokio::spawn(async move {
            let admin = pool(server());
            let mut killed = 0;
            while start.elapsed() < run_for {
                killed += kill_listeners(&admin, &table).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            killed
        })
    };
    let revoker = {
        let (keys, revoked_at, account) =
            (Arc::clone(&keys), Arc::clone(&revoked_at), account.clone());
        tokio::spawn(async move {
            for index in 0..REVOKED {
                tokio::time::sleep(Duration::from_millis(150)).await;
                one.revoke(&account, &keys[index].info.id).await.unwrap();
                revoked_at.lock().unwrap()[index] = Some(std::time::Instant::now());
            }
        })
    };
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (two, keys) = (two.clone(), Arc::clone(&keys));
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut index = worker;
            while start.elapsed() < run_for + Duration::from_secs(1) {
                index = (index + 7) % KEYS;
                let sent = std::time::Instant::now();
                answers.push((
                    index,
                    sent,
                    verdict_through(two.clone(), &keys[index].key).await,
                ));
                // A cache hit never waits: let the revoker and the killer run.
                tokio::task::yield_now().await;
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    revoker.await.unwrap();
    let killed = killer.await.unwrap();

    let revoked_at = revoked_at.lock().unwrap().clone();
    let (mut wrong, mut checked_after_revocation) = (Vec::new(), 0);
    for (index, sent, verdict) in &answers {
        match revoked_at[*index] {
            None if *index >= REVOKED && verdict != "ok" => wrong.push((index, verdict.clone())),
            Some(at) if *sent > at + Duration::from_secs(1) => {
                checked_after_revocation += 1;
                if verdict != "expired_api_key" {
                    wrong.push((index, verdict.clone()));
                }
            }
            _ => {}
        }
    }
    println!(
        "{} answers, {checked_after_revocation} after a revocation, {killed} LISTEN connections \
         killed, wrong verdicts: {wrong:?}",
        answers.len()
    );
    assert!(killed >= 5, "the listener was killed only {killed} times");
    assert!(
        checked_after_revocation > 100,
        "too few answers after a revocation to judge"
    );
    assert!(wrong.is_empty(), "wrong verdicts: {wrong:?}");
}

/// A feed whose connection hangs without closing (a proxy that stops passing bytes) is found out
/// by its ping: within a second plus the store's timeout the cache stops serving, so a key
/// revoked meanwhile, whose message never arrives, gets `503` (the store hangs too) rather than
/// a pass; once the connection flows again the feed listens again and the key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_feed_is_found_out_and_its_cache_stops_serving() {
    let table = unique_table();
    let direct = KeyManager::new(PgKeyStore::new(pool(server())).table(&table));
    direct.store().migrate().await.unwrap();
    let account = suite::account();
    let created = direct
        .create(NewKey::new(&account, Tier::PRO, "hung"))
        .await
        .unwrap();
    let proxy = Proxy::start(server_address().await).await;
    let timeout = Duration::from_millis(500);
    let store = PgKeyStore::new(pool(server_at(proxy.address)))
        .table(&table)
        .timeout(timeout);
    let cache = tower_api_key::store::CachedKeyStore::new(store.clone())
        .ttl(Duration::from_secs(3600))
        .push_invalidation(store.changes());
    wait_until_listening(&cache, &created.key).await;

    proxy.hang();
    direct.revoke(&account, &created.info.id).await.unwrap();
    let hung = Instant::now();
    // Found out within the feed's idle second plus the timeout; the margin absorbs a loaded
    // machine. Until then the cache may still serve what it holds.
    let found_out = Duration::from_secs(1) + timeout + Duration::from_secs(2);
    loop {
        let verdict = verdict_through(cache.clone(), &created.key).await;
        if verdict == "authentication_unavailable" {
            break;
        }
        assert_eq!(verdict, "ok", "neither the cached record nor 503");
        assert!(
            hung.elapsed() < found_out,
            "the hung feed was not found out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        assert_eq!(
            verdict_through(cache.clone(), &created.key).await,
            "authentication_unavailable"
        );
    }

    proxy.resume();
    assert_eq!(
        verdict_within(cache.clone(), &created.key, "expired_api_key").await,
        "expired_api_key"
    );
}

/// `TRUNCATE` fires no row trigger: its own trigger makes every instance forget everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_the_table_is_pushed_too() {
    let table = unique_table();
    let one = KeyManager::new(PgKeyStore::new(pool(server())).table(&table));
    one.store().migrate().await.unwrap();
    let two = pushed_instance(&table).await;
    let created = one
        .create(NewKey::new(suite::account(), Tier::PRO, "truncated"))
        .await
        .unwrap();
    wait_until_listening(&two, &created.key).await;
    let sql = format!("TRUNCATE \"{table}\"");
    sqlx::query(AssertSqlSafe(sql))
        .execute(&pool(server()))
        .await
        .unwrap();
    assert_eq!(
        verdict_within(two.clone(), &created.key, "invalid_api_key").await,
        "invalid_api_key"
    );
}

/// A table whose trigger is missing pushes nothing: its feed never listens, and the cache asks
/// the store every time rather than trusting silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_over_a_table_without_its_trigger_never_listens() {
    let table = unique_table();
    let one = KeyManager::new(PgKeyStore::new(pool(server())).table(&table));
    one.store().migrate().await.unwrap();
    let sql = format!("DROP TRIGGER \"{table}_notify\" ON \"{table}\"");
    sqlx::query(AssertSqlSafe(sql))
        .execute(&pool(server()))
        .await
        .unwrap();
    let two = pushed_instance(&table).await;
    let created = one
        .create(NewKey::new(suite::account(), Tier::PRO, "untriggered"))
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(verdict_through(two.clone(), &created.key).await, "ok");
        assert!(
            two.find_now(&created.key.digest().lookup_id()).is_none(),
            "served from a cache whose feed cannot hear changes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
