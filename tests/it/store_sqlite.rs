//! The store suite against `SqliteKeyStore`, then what only this store has: its schema, its
//! file outliving the store, WAL and the write lock, and how it answers a row it would not
//! have written.
//!
//! Each test keeps its keys in a file of its own, in a new directory under the system's
//! temporary directory that is removed when the test ends, so no earlier run matters.
#![cfg(feature = "sqlite")]

use crate::common;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use common::suite::{self, Backend};
use common::{assert_envelope, echo_identity, request, Answer};
use http::StatusCode;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::sync::OnceCell;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    clock::Clock,
    key::{KeyDigest, KeyFormat},
    store::{CreateError, Quota, SqliteKeyStore, WritableKeyStore},
    ApiKey, KeyId, KeyIdentity, KeyManager, KeyRecord, KeyStore, Tier,
};

/// A database file of its own, removed with its directory on drop.
struct TempDb {
    dir: PathBuf,
}

impl TempDb {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-api-key-sqlite-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("keys.db")
    }

    /// The file's URL, creating it if missing.
    fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path().display())
    }

    /// A pool of one connection of our own to the file, as another process would have.
    async fn other_process(&self) -> SqlitePool {
        let options = SqliteConnectOptions::from_str(&self.url()).unwrap();
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }

    /// A store over the file, with the schema applied.
    async fn store(&self) -> SqliteKeyStore {
        let store = SqliteKeyStore::connect(&self.url()).await.unwrap();
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two application instances over one file: each instance has its own pool.
struct Sqlite {
    db: TempDb,
    migrated: OnceCell<()>,
}

impl Sqlite {
    fn fresh() -> Self {
        Self {
            db: TempDb::new(),
            migrated: OnceCell::new(),
        }
    }
}

#[async_trait]
impl Backend for Sqlite {
    type Store = SqliteKeyStore;

    async fn instance(&self) -> SqliteKeyStore {
        let store = SqliteKeyStore::connect(&self.db.url())
            .await
            .expect("the temporary database opens");
        self.migrated
            .get_or_init(|| async { store.migrate().await.expect("the schema applies") })
            .await;
        store
    }
}

tower_api_key::store_suite!(Sqlite::fresh());

/// What the layer over `keys`'s store answers to a request with `key`.
async fn answer<S: WritableKeyStore + Clone>(keys: &KeyManager<S>, key: &ApiKey) -> Answer {
    let service = ServiceBuilder::new()
        .layer(keys.layer())
        .service_fn(echo_identity);
    let request = request(&[("x-api-key", key.expose_secret().as_bytes())]);
    Answer::read(service.oneshot(request).await.unwrap()).await
}

/// A record for a new random key of `account`, never stored.
fn record(account: &str, name: &str) -> KeyRecord {
    let identity = KeyIdentity::new(KeyId::random(), account, name, Tier::PRO);
    KeyRecord::new(KeyFormat::default().generate().digest(), identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_revocations_survive_a_restart() {
    let db = TempDb::new();
    let clock = suite::clock();
    let account = suite::account();
    let pool = SqlitePool::connect(&db.url()).await.unwrap();
    let store = SqliteKeyStore::new(pool.clone());
    store.migrate().await.unwrap();
    let keys = suite::manager(store, &clock);
    let active = suite::create(&keys, &account).await;
    let revoked = suite::create(&keys, &account).await;
    keys.revoke(&account, &revoked.info.id).await.unwrap();
    drop(keys);
    pool.close().await;

    // Without `mode=rwc`: the file must already be there.
    let url = format!("sqlite://{}", db.path().display());
    let reopened = SqliteKeyStore::connect(&url).await.unwrap();
    let keys = suite::manager(reopened, &clock);
    assert_eq!(answer(&keys, &active.key).await.status, StatusCode::OK);
    assert_envelope(
        &answer(&keys, &revoked.key).await,
        StatusCode::UNAUTHORIZED,
        "expired_api_key",
    );
    assert_eq!(keys.list(&account).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_twice_and_concurrently_is_fine() {
    let db = TempDb::new();
    let a = SqliteKeyStore::connect(&db.url()).await.unwrap();
    let b = SqliteKeyStore::connect(&db.url()).await.unwrap();
    let (first, second) = tokio::join!(a.migrate(), b.migrate());
    first.unwrap();
    second.unwrap();
    a.migrate().await.unwrap();
    let unknown = KeyFormat::default().generate().digest().lookup_id();
    assert!(b.find(&unknown).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_created_only_when_the_url_asks() {
    let db = TempDb::new();
    let without_mode = format!("sqlite://{}", db.path().display());
    assert!(SqliteKeyStore::connect(&without_mode).await.is_err());
    assert!(!db.path().exists());
    db.store().await;
    assert!(db.path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_puts_the_file_in_wal_mode() {
    let db = TempDb::new();
    db.store().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&db.other_process().await)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_go_on_while_another_process_holds_the_write_lock() {
    let db = TempDb::new();
    let keys = suite::manager(db.store().await, &suite::clock());
    let created = suite::create(&keys, &suite::account()).await;
    let other = db.other_process().await;
    let writing = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let started = Instant::now();
    assert_eq!(answer(&keys, &created.key).await.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    writing.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_waits_for_another_writer_rather_than_failing() {
    let db = TempDb::new();
    let store = db.store().await;
    let other = db.other_process().await;
    let writing = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writing.commit().await.unwrap();
    });
    let now = suite::clock().now();
    let created = store
        .create(record(&suite::account(), "patient"), Quota::new(3, now))
        .await;
    assert!(created.is_ok(), "{created:?}");
    release.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_past_the_timeout_fails_the_create_within_it() {
    let db = TempDb::new();
    let timeout = Duration::from_millis(200);
    let store = db.store().await.timeout(timeout);
    let other = db.other_process().await;
    let writing = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let started = Instant::now();
    let now = suite::clock().now();
    let created = store
        .create(record(&suite::account(), "impatient"), Quota::new(3, now))
        .await;
    assert!(matches!(created, Err(CreateError::Store(_))), "{created:?}");
    // Bounded by the timeout, not by the busy timeout's 5 s; the margin absorbs a loaded machine.
    assert!(
        started.elapsed() < timeout + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    writing.rollback().await.unwrap();
}

/// Rows the store would not have written but the schema lets in, each made by changing the
/// key bound as `?1`.
const MALFORMED_ROWS: &[&str] = &[
    "UPDATE api_keys SET digest = x'00ff' WHERE key_id = ?1",
    "UPDATE api_keys SET metadata = '{\"unclosed\": ' WHERE key_id = ?1",
    "UPDATE api_keys SET scopes = '[\"has space\"]' WHERE key_id = ?1",
    "UPDATE api_keys SET scopes = '[]' WHERE key_id = ?1",
    "UPDATE api_keys SET scopes = '{\"iocs:read\": true}' WHERE key_id = ?1",
    "UPDATE api_keys SET rate_limit = '{\"requests\": 0, \"period_secs\": 60}' WHERE key_id = ?1",
    "UPDATE api_keys SET rate_limit = 'sixty a minute' WHERE key_id = ?1",
    "UPDATE api_keys SET credits_refill_amount = 5 WHERE key_id = ?1",
    "UPDATE api_keys SET credits_remaining = 5, credits_refill_every = 'day' WHERE key_id = ?1",
    "UPDATE api_keys SET credits_refilled_at = 0 WHERE key_id = ?1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_store_would_not_have_written_gives_503_not_a_panic() {
    let db = TempDb::new();
    let keys = suite::manager(db.store().await, &suite::clock());
    let other = db.other_process().await;
    for sql in MALFORMED_ROWS {
        let created = suite::create(&keys, &suite::account()).await;
        sqlx::query(*sql)
            .bind(created.info.id.as_str())
            .execute(&other)
            .await
            .unwrap();
        assert_envelope(
            &answer(&keys, &created.key).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "authentication_unavailable",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_the_store_would_not_have_written_fails_the_spend() {
    let db = TempDb::new();
    let keys = suite::manager(db.store().await, &suite::clock());
    let created = suite::create(&keys, &suite::account()).await;
    sqlx::query("UPDATE api_keys SET credits_refill_every = 'day' WHERE key_id = ?1")
        .bind(created.info.id.as_str())
        .execute(&db.other_process().await)
        .await
        .unwrap();
    let now = suite::clock().now();
    let spent = keys.store().spend_credits(&created.info.id, 1, now).await;
    assert!(spent.is_err(), "{spent:?}");
    let refused = sqlx::query("UPDATE api_keys SET credits_refill_every = 'week'")
        .execute(&db.other_process().await)
        .await;
    assert!(
        refused.is_err(),
        "the schema refuses a period it does not know"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_a_time_that_is_not_an_integer() {
    let db = TempDb::new();
    let keys = suite::manager(db.store().await, &suite::clock());
    let created = suite::create(&keys, &suite::account()).await;
    let refused = sqlx::query("UPDATE api_keys SET expires_at = '2030-01-01' WHERE key_id = ?1")
        .bind(created.info.id.as_str())
        .execute(&db.other_process().await)
        .await;
    assert!(refused.is_err());
    assert_eq!(answer(&keys, &created.key).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_round_trip_to_the_microsecond() {
    let db = TempDb::new();
    let store = db.store().await;
    let at = |seconds: i64, micros: u32| {
        let since = Duration::new(seconds.unsigned_abs(), micros * 1_000);
        if seconds >= 0 {
            SystemTime::UNIX_EPOCH + since
        } else {
            SystemTime::UNIX_EPOCH - since
        }
    };
    let mut record = record(&suite::account(), "times")
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
    let db = TempDb::new();
    let store = db.store().await;
    let metadata = serde_json::json!({
        "roles": ["reader", "writer"],
        "limits": {"rps": 12.5, "burst": 40},
        "note": "clé \u{1F511}",
        "none": null,
        "empty": [],
    });
    let identity = KeyIdentity::new(KeyId::random(), suite::account(), "meta", Tier::PRO)
        .with_metadata(metadata);
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
    let db = TempDb::new();
    let store = db.store().await;
    let account = suite::account();
    let now = suite::clock().now();
    let expiring = |name: &str, after: u64| {
        record(&account, name).with_expires_at(now + Duration::from_secs(after))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_insert_rolls_the_retirement_back() {
    let db = TempDb::new();
    let store = db.store().await;
    let account = suite::account();
    let now = suite::clock().now();
    let old = record(&account, "old");
    store.create(old.clone(), Quota::new(5, now)).await.unwrap();
    let retiring = Quota::new(5, now).retiring(old.identity.key_id().clone(), now);
    let refused = store.create(old.clone(), retiring).await;
    assert!(
        matches!(refused, Err(CreateError::AlreadyExists)),
        "{refused:?}"
    );
    let found = store.find(&old.digest.lookup_id()).await.unwrap().unwrap();
    assert_eq!(found.expires_at, None);
}

/// Waits (at most 2 s) until the background writer has recorded `at` as `record`'s last use.
async fn wait_for_last_use(store: &SqliteKeyStore, record: &KeyRecord, at: SystemTime) {
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
    let db = TempDb::new();
    let store = db.store().await;
    let account = suite::account();
    let (used, marker) = (record(&account, "used"), record(&account, "marker"));
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
async fn debug_shows_no_file_or_url() {
    let db = TempDb::new();
    let store = db.store().await;
    let debug = format!("{store:?}");
    assert!(debug.contains("timeout"), "{debug}");
    assert!(!debug.contains("keys.db"), "{debug}");
}

/// The suite again over a cache in front of each instance.
#[cfg(feature = "cache")]
mod cached {
    use super::*;
    use tower_api_key::store::CachedKeyStore;

    struct CachedSqlite(Sqlite);

    #[async_trait]
    impl Backend for CachedSqlite {
        type Store = CachedKeyStore<SqliteKeyStore>;

        async fn instance(&self) -> Self::Store {
            CachedKeyStore::new(self.0.instance().await)
        }
    }

    tower_api_key::store_suite!(CachedSqlite(Sqlite::fresh()));
}
