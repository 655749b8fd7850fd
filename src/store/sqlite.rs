//! A store in a SQLite database file (feature `sqlite`), through sqlx.
//!
//! The table is `PgKeyStore`'s, column for column, in SQLite's types (see `sqlite.sql`, and the
//! table in [`SqliteKeyStore`]'s docs); the statements are the same too, so both stores answer
//! alike. What differs is how `create` is made atomic: SQLite has one writer at a time, and
//! `BEGIN IMMEDIATE` takes that write lock before the count, so no other create can count
//! between this one's count and its insert.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::query::Query;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow,
};
use sqlx::Row;

use super::columns::{spend_in_sql, CreditColumns};
use super::usage::UsageQueue;
use super::within;
use super::{CreateError, KeyRecord, KeyStore, Quota, StoreError, WritableKeyStore};
use crate::identity::{KeyId, KeyIdentity, Tier};
use crate::key::{KeyDigest, LookupId};
use crate::limit::{Credits, RateLimit, RefillPeriod, Spend};
use crate::mode::KeyMode;
use crate::scope::Scopes;

/// The schema; [`SqliteKeyStore::migrate`] applies it.
const SCHEMA: &str = include_str!("sqlite.sql");

/// How long an operation may take by default before it fails.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection made by [`SqliteKeyStore::connect`] waits for another writer's lock
/// before it fails: longer than the default timeout, so that the timeout decides.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns of a record, in the order every query selects them: a macro, so that the
/// statements below are `&'static str`s put together at compile time.
macro_rules! columns {
    () => {
        "key_id, digest, account_id, name, tier, metadata, hint, \
         created_at, expires_at, revoked_at, last_used_at, mode, scopes, \
         rate_limit, credits_remaining, credits_refill_amount, credits_refill_every, \
         credits_refilled_at, disabled_at"
    };
}

/// The columns of a balance of credits, in the order [`credits_from_row`] reads them.
macro_rules! credit_columns {
    () => {
        "credits_remaining, credits_refill_amount, credits_refill_every, credits_refilled_at"
    };
}

/// The columns added since the first schema, with their definitions as `sqlite.sql` writes
/// them: [`SqliteKeyStore::migrate`] adds those a table lacks, as SQLite has no
/// `ADD COLUMN IF NOT EXISTS`.
const ADDED_COLUMNS: [(&str, &str); 6] = [
    ("rate_limit", "TEXT"),
    (
        "credits_remaining",
        "INTEGER CHECK (credits_remaining >= 0)",
    ),
    (
        "credits_refill_amount",
        "INTEGER CHECK (credits_refill_amount >= 0)",
    ),
    (
        "credits_refill_every",
        "TEXT CHECK (credits_refill_every IN ('day', 'month'))",
    ),
    ("credits_refilled_at", "INTEGER"),
    ("disabled_at", "INTEGER"),
];

/// Whether a refill fell due: the key has one, and was last refilled before the start of the
/// current period, `$day` or `$month` (parameters) as its refill is daily or monthly; both are
/// computed by `RefillPeriod::start_of`, so that the database and the other stores agree.
macro_rules! refill_due {
    ($day:literal, $month:literal) => {
        concat!(
            "(credits_refill_every IS NOT NULL AND (credits_refilled_at IS NULL OR \
              credits_refilled_at < CASE credits_refill_every \
                                    WHEN 'day' THEN ",
            $day,
            " ELSE ",
            $month,
            " END))"
        )
    };
}

/// The balance as of now: the refill's amount if one fell due, else what is left.
macro_rules! balance {
    ($day:literal, $month:literal) => {
        concat!(
            "(CASE WHEN ",
            refill_due!($day, $month),
            " THEN credits_refill_amount ELSE credits_remaining END)"
        )
    };
}

/// When the balance was last refilled, as of now: the start of the current period if a refill
/// fell due.
macro_rules! refilled_at {
    ($day:literal, $month:literal) => {
        concat!(
            "(CASE WHEN ",
            refill_due!($day, $month),
            " THEN CASE credits_refill_every WHEN 'day' THEN ",
            $day,
            " ELSE ",
            $month,
            " END ELSE credits_refilled_at END)"
        )
    };
}

/// The rule of `Credits::spend` for key ?1, cost ?2, at a time in the day starting at ?3 and
/// the month starting at ?4: the balance refilled if a refill fell due, less ?2 if it can pay
/// ?2. No row is changed when it cannot, nor for a key without a balance (whose balance is
/// NULL). One statement, so one write under SQLite's single writer lock.
const SPEND: &str = concat!(
    "UPDATE api_keys SET credits_remaining = ",
    balance!("?3", "?4"),
    " - ?2, credits_refilled_at = ",
    refilled_at!("?3", "?4"),
    " WHERE key_id = ?1 AND ",
    balance!("?3", "?4"),
    " >= ?2 RETURNING ",
    credit_columns!()
);

const CREDITS: &str = concat!(
    "SELECT ",
    credit_columns!(),
    " FROM api_keys WHERE key_id = ?1"
);

/// The rule of `Credits::top_up` for key ?2 of account ?1, amount ?3, day and month starting at
/// ?4 and ?5: refilled if due, then ?3 added, saturating at the largest INTEGER (SQLite would
/// otherwise turn an overflowing sum into a REAL); a key without a balance gets one of ?3.
const TOP_UP: &str = concat!(
    "UPDATE api_keys SET credits_remaining = CASE \
         WHEN credits_remaining IS NULL THEN ?3 \
         WHEN ",
    balance!("?4", "?5"),
    " > 9223372036854775807 - ?3 THEN 9223372036854775807 \
         ELSE ",
    balance!("?4", "?5"),
    " + ?3 END, credits_refilled_at = ",
    refilled_at!("?4", "?5"),
    " WHERE account_id = ?1 AND key_id = ?2 RETURNING ",
    columns!()
);

const FIND: &str = concat!("SELECT ", columns!(), " FROM api_keys WHERE lookup_id = ?1");

/// The account's active keys at ?2 other than ?3, and whether ?3 is one of them. Active as
/// `KeyRecord::is_active`, written as the `api_keys_active_idx` index is, so that the count
/// range-scans it.
const COUNT_ACTIVE: &str = "SELECT count(*) FILTER (WHERE key_id IS NOT ?3), \
                                   count(*) FILTER (WHERE key_id = ?3) \
                            FROM api_keys \
                            WHERE account_id = ?1 AND revoked_at IS NULL \
                              AND coalesce(expires_at, 9223372036854775807) > ?2";

/// A key that never expired gets the given expiry; one that expires sooner keeps its own.
const RETIRE: &str = "UPDATE api_keys SET expires_at = min(coalesce(expires_at, ?3), ?3) \
                      WHERE account_id = ?1 AND key_id = ?2";

/// Either unique column (key_id, lookup_id) taken: nothing is inserted. `ON CONFLICT`, not
/// `INSERT OR IGNORE`, which would also skip a row that breaks a `CHECK`, silently.
const INSERT: &str = concat!(
    "INSERT INTO api_keys (lookup_id, ",
    columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
       ?18, ?19, ?20) \
     ON CONFLICT DO NOTHING"
);

/// Oldest first; SQLite's default collation compares key ids byte by byte, as `COLLATE "C"`.
const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM api_keys WHERE account_id = ?1 ORDER BY created_at NULLS FIRST, key_id"
);

const GET: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM api_keys WHERE account_id = ?1 AND key_id = ?2"
);

/// `coalesce` keeps the first revocation's time.
const REVOKE: &str = concat!(
    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?3) \
     WHERE account_id = ?1 AND key_id = ?2 RETURNING ",
    columns!()
);

/// `coalesce` keeps the first time a key was disabled; ?3 NULL enables it.
const SET_DISABLED: &str = concat!(
    "UPDATE api_keys SET disabled_at = CASE WHEN ?3 IS NULL THEN NULL \
                                            ELSE coalesce(disabled_at, ?3) END \
     WHERE account_id = ?1 AND key_id = ?2 RETURNING ",
    columns!()
);

const DELETE: &str = concat!(
    "DELETE FROM api_keys WHERE account_id = ?1 AND key_id = ?2 RETURNING ",
    columns!()
);

/// Never moves a last use back, and writes no row it would not change.
const TOUCH: &str = "UPDATE api_keys SET last_used_at = ?2 \
                     WHERE key_id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)";

/// A store that keeps keys in a SQLite database file, through your [`sqlx`] pool: keys that
/// outlive the process without a database server, for one machine.
///
/// Requests find keys by their [`LookupId`], a `UNIQUE` (so indexed) column; the store never
/// sees a key and never compares digests. [`WritableKeyStore::create`] counts the account's
/// active keys and inserts in one `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock
/// before the count: so the quota holds across every connection and process that opens the file,
/// and of 50 concurrent creates for an account one below its limit, exactly one succeeds.
///
/// SQLite has one writer at a time. With the database in WAL mode, readers (every request's
/// lookup) go on while a write is made; with a busy timeout, a writer waits for the lock rather
/// than failing at once. [`SqliteKeyStore::connect`] sets both; over a pool of your own, set them
/// in its options (`journal_mode(SqliteJournalMode::Wal)`; sqlx's busy timeout is 5 s unless you
/// change it). Use a local file: WAL needs shared memory, so not a network file system.
///
/// Every operation fails with a [`StoreError`] after the [timeout](SqliteKeyStore::timeout)
/// (2 s by default), so that a database locked for too long makes the layer answer `503`, as does
/// a row the store would not have written. Last-used times are written by a background task, so
/// requests never wait for them. Clones are cheap and share the pool. Its `Debug` shows the
/// timeout, never the pool, whose options may hold a SQLCipher key.
///
/// ```
/// use tower_api_key::{ApiKeyLayer, KeyManager, NewKey, Tier, store::SqliteKeyStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A file, created if missing: `sqlite://keys.db?mode=rwc`. In memory here, for the example.
/// let store = SqliteKeyStore::connect("sqlite::memory:").await?;
/// // Creates the table and its indexes unless they exist; or apply `sqlite.sql` yourself.
/// store.migrate().await?;
///
/// let keys = KeyManager::new(store.clone());
/// let created = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await?;
/// println!("your key, shown once: {}", created.key.expose_secret());
///
/// let layer = ApiKeyLayer::new(store);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// # Schema
///
/// One table, `api_keys`, `STRICT`; the crate's `src/store/sqlite.sql` creates it.
///
/// | Column | Type | Holds |
/// |--------|------|-------|
/// | `key_id` | `TEXT` primary key | the key's [`KeyId`] |
/// | `lookup_id` | `BLOB` unique | the first 16 bytes of the key's SHA-256 digest |
/// | `digest` | `BLOB` | the whole digest, 32 bytes |
/// | `account_id`, `name`, `tier` | `TEXT` | the [`KeyIdentity`] |
/// | `metadata` | `TEXT` | JSON, or `NULL` |
/// | `hint` | `TEXT` | `sk_live_...Xy12`, or `NULL` |
/// | `created_at`, `expires_at`, `revoked_at`, `last_used_at` | `INTEGER` | microseconds since the Unix epoch (negative before 1970), or `NULL` |
/// | `mode` | `TEXT` | `live` or `test` |
/// | `scopes` | `TEXT` | a sorted JSON array of strings, or `NULL` for full access |
/// | `rate_limit` | `TEXT` | the key's own [`RateLimit`] as JSON, `{"requests":60,"period_secs":60,"burst":60}`, or `NULL` for its tier's |
/// | `credits_remaining` | `INTEGER` | the balance of [`Credits`], or `NULL` if the key is not metered |
/// | `credits_refill_amount`, `credits_refill_every` | `INTEGER`, `TEXT` | its [`Refill`](crate::limit::Refill): the amount, and `day` or `month`; `NULL` without one |
/// | `credits_refilled_at` | `INTEGER` | the start of the period of the last refill, in microseconds, or `NULL` |
///
/// Times keep microseconds, as PostgreSQL does: a finer part is dropped towards the past.
/// Amounts of credits above `i64::MAX` are kept as `i64::MAX` (a balance that large is as good
/// as unlimited). [`SqliteKeyStore::migrate`] adds the columns from `rate_limit` on to a table
/// created before them.
///
/// [`spend_credits`](WritableKeyStore::spend_credits) is one `UPDATE` that refills and spends,
/// or changes nothing if the balance cannot pay, so that spends from any number of connections
/// and processes never take more than the balance; [`top_up_credits`](WritableKeyStore::top_up_credits)
/// is one `UPDATE` too. Two
/// indexes serve listing (`account_id`) and the quota count (the account's unrevoked keys by
/// expiry, so the count reads none of its revoked or expired ones).
#[derive(Clone)]
pub struct SqliteKeyStore {
    pool: SqlitePool,
    timeout: Duration,
    usage: UsageQueue,
}

impl SqliteKeyStore {
    /// A store over `pool`, with a 2-second timeout.
    ///
    /// Apply the schema once with [`SqliteKeyStore::migrate`] (or with your own migrations).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it starts the task that writes last-used times.
    pub fn new(pool: SqlitePool) -> Self {
        Self::build(pool, DEFAULT_TIMEOUT)
    }

    /// A store over a new pool to the database at `url`, in WAL mode, whose connections wait up
    /// to 5 s for another writer's lock.
    ///
    /// `url` is sqlx's: `sqlite://keys.db` opens `keys.db` in the working directory, and fails
    /// unless it exists; `sqlite://keys.db?mode=rwc` creates it if missing;
    /// `sqlite:///var/lib/app/keys.db` is an absolute path. For other pool settings, make the pool
    /// yourself and call [`SqliteKeyStore::new`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`SqliteKeyStore::new`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::new)?
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .map_err(StoreError::new)?;
        Ok(Self::new(pool))
    }

    /// Fails each operation that takes longer than `timeout` (2 s by default), including the
    /// wait for a pooled connection and for another writer's lock.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`SqliteKeyStore::new`].
    pub fn timeout(self, timeout: Duration) -> Self {
        Self::build(self.pool, timeout)
    }

    /// Creates the table and its indexes unless they exist, and adds the columns a table created
    /// by an earlier version lacks, in one transaction.
    ///
    /// Safe to run at every start, from any number of processes at once. The schema is
    /// `src/store/sqlite.sql` in the crate, to copy into your own migrations instead if you
    /// prefer.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        within("SQLite", self.timeout, async {
            let mut transaction = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(StoreError::new)?;
            sqlx::raw_sql(SCHEMA)
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::new)?;
            let present: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info('api_keys')")
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(StoreError::new)?;
            for (name, definition) in ADDED_COLUMNS {
                if !present.iter().any(|present| present == name) {
                    let add = format!("ALTER TABLE api_keys ADD COLUMN {name} {definition}");
                    sqlx::query(sqlx::AssertSqlSafe(add))
                        .execute(&mut *transaction)
                        .await
                        .map_err(StoreError::new)?;
                }
            }
            transaction.commit().await.map_err(StoreError::new)
        })
        .await
    }

    fn build(pool: SqlitePool, timeout: Duration) -> Self {
        let usage = {
            let pool = pool.clone();
            UsageQueue::spawn(move |key_id: KeyId, at: SystemTime| {
                let pool = pool.clone();
                within("SQLite", timeout, async move {
                    sqlx::query(TOUCH)
                        .bind(key_id.as_str())
                        .bind(micros(at)?)
                        .execute(&pool)
                        .await
                        .map(drop)
                        .map_err(StoreError::new)
                })
            })
        };
        Self {
            pool,
            timeout,
            usage,
        }
    }

    /// The count, the retirement and the insert of [`WritableKeyStore::create`], in one
    /// transaction that holds the database's write lock from its start.
    async fn create_locked(&self, record: &KeyRecord, quota: &Quota) -> Result<(), CreateError> {
        let identity = &record.identity;
        let account_id = identity.account_id();
        let retiring_id = quota.retiring.as_ref().map(|(key_id, _)| key_id.as_str());
        // Everything that can fail to encode, before the lock is taken.
        let now = micros(quota.now)?;
        let retire_at = quota
            .retiring
            .as_ref()
            .map(|(_, expires_at)| micros(*expires_at))
            .transpose()?;
        let insert = insert(record)?;

        // IMMEDIATE: the write lock now, not at the insert. A deferred transaction would count
        // under a read snapshot, and two creates could both count below the limit.
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::new)?;
        let (others, retiring_is_active): (i64, i64) = sqlx::query_as(COUNT_ACTIVE)
            .bind(account_id)
            .bind(now)
            .bind(retiring_id)
            .fetch_one(&mut *transaction)
            .await
            .map_err(StoreError::new)?;
        let refusal = if retiring_id.is_some() && retiring_is_active == 0 {
            Some(CreateError::RetiringKeyNotFound)
        } else if usize::try_from(others).map_or(true, |others| others >= quota.limit) {
            Some(CreateError::LimitReached)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            transaction.rollback().await.map_err(StoreError::new)?;
            return Err(refusal);
        }
        if let (Some(key_id), Some(retire_at)) = (retiring_id, retire_at) {
            sqlx::query(RETIRE)
                .bind(account_id)
                .bind(key_id)
                .bind(retire_at)
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::new)?;
        }
        let inserted = insert
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::new)?;
        if inserted.rows_affected() == 0 {
            // Nor the retirement: the rotation did not happen.
            transaction.rollback().await.map_err(StoreError::new)?;
            return Err(CreateError::AlreadyExists);
        }
        transaction.commit().await.map_err(StoreError::new)?;
        Ok(())
    }

    /// Runs `query`, which returns at most one record.
    async fn fetch_record(
        &self,
        query: Query<'_, Sqlite, SqliteArguments>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        within("SQLite", self.timeout, async {
            let row = query
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::new)?;
            row.as_ref().map(record_from_row).transpose()
        })
        .await
    }
}

impl fmt::Debug for SqliteKeyStore {
    // Not the pool: its connect options may hold a SQLCipher key among their pragmas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(FIND).bind(&lookup_id.as_bytes()[..]);
        self.fetch_record(query).await
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        self.usage.push(record.identity.key_id(), at);
    }
}

#[async_trait]
impl WritableKeyStore for SqliteKeyStore {
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        within("SQLite", self.timeout, self.create_locked(&record, &quota)).await
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        within("SQLite", self.timeout, async {
            let rows = sqlx::query(LIST)
                .bind(account_id)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::new)?;
            rows.iter().map(record_from_row).collect()
        })
        .await
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(GET).bind(account_id).bind(key_id.as_str());
        self.fetch_record(query).await
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(REVOKE)
            .bind(account_id)
            .bind(key_id.as_str())
            .bind(micros(at)?);
        self.fetch_record(query).await
    }

    async fn set_disabled(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: Option<SystemTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(SET_DISABLED)
            .bind(account_id)
            .bind(key_id.as_str())
            .bind(at.map(micros).transpose()?);
        self.fetch_record(query).await
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(DELETE).bind(account_id).bind(key_id.as_str());
        self.fetch_record(query).await
    }

    /// One `UPDATE` that refills and spends, or changes nothing if the balance cannot pay.
    /// When nothing was spent, a read tells a missing key from one without a balance or one
    /// that cannot pay; should that read find a balance that can pay after all (topped up in
    /// between), the spend is tried again. A refill that fell due is written with the next
    /// spend, not by a refused one: the balance reads the same either way ([`Credits::as_of`]).
    ///
    /// A cost above `i64::MAX` is more than any stored balance, so never paid.
    async fn spend_credits(
        &self,
        key_id: &KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<Option<Spend>, StoreError> {
        let day_start = micros(RefillPeriod::Day.start_of(now))?;
        let month_start = micros(RefillPeriod::Month.start_of(now))?;
        within("SQLite", self.timeout, async {
            let spend = |cost: i64| async move {
                let row = sqlx::query(SPEND)
                    .bind(key_id.as_str())
                    .bind(cost)
                    .bind(day_start)
                    .bind(month_start)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::new)?;
                row.map(|row| credits_from_row(&row)).transpose()
            };
            let read = || async move {
                let row = sqlx::query(CREDITS)
                    .bind(key_id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::new)?;
                row.map(|row| credits_from_row(&row)).transpose()
            };
            spend_in_sql(cost, now, spend, read).await
        })
        .await
    }

    /// One `UPDATE` that refills and adds, saturating at `i64::MAX` (as does an `amount` above
    /// it).
    async fn top_up_credits(
        &self,
        account_id: &str,
        key_id: &KeyId,
        amount: u64,
        now: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(TOP_UP)
            .bind(account_id)
            .bind(key_id.as_str())
            .bind(i64::try_from(amount).unwrap_or(i64::MAX))
            .bind(micros(RefillPeriod::Day.start_of(now))?)
            .bind(micros(RefillPeriod::Month.start_of(now))?);
        self.fetch_record(query).await
    }

    /// The inserts of `create`, `IMPORT_BATCH` to a transaction (one write lock and one sync
    /// each, where a create takes one of each per key), each transaction within the store's
    /// timeout: a record whose key id or key is taken is skipped (`ON CONFLICT DO NOTHING`).
    async fn import(&self, records: Vec<KeyRecord>) -> Result<Vec<bool>, StoreError> {
        let mut inserted = Vec::with_capacity(records.len());
        for batch in records.chunks(super::IMPORT_BATCH) {
            let inserts: Vec<_> = batch.iter().map(insert).collect::<Result<_, _>>()?;
            let batch_inserted = within("SQLite", self.timeout, async {
                let mut transaction = (self.pool.begin_with("BEGIN IMMEDIATE"))
                    .await
                    .map_err(StoreError::new)?;
                let mut inserted = Vec::with_capacity(inserts.len());
                for insert in inserts {
                    let done =
                        (insert.execute(&mut *transaction).await).map_err(StoreError::new)?;
                    inserted.push(done.rows_affected() == 1);
                }
                transaction.commit().await.map_err(StoreError::new)?;
                Ok::<_, StoreError>(inserted)
            })
            .await?;
            inserted.extend(batch_inserted);
        }
        Ok(inserted)
    }
}

/// `value` as JSON text, for the `metadata` and `scopes` columns.
fn json(value: &(impl serde::Serialize + ?Sized)) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::new)
}

/// `time` in microseconds since the Unix epoch, as the schema keeps times. A finer part is
/// dropped towards the past, so that a time before 1970 is not moved later.
fn micros(time: SystemTime) -> Result<i64, StoreError> {
    let micros = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_micros()).ok(),
        Err(before) => {
            let before = before.duration();
            let partial = i128::from(before.subsec_nanos() % 1_000 != 0);
            i128::try_from(before.as_micros())
                .ok()
                .map(|micros| -(micros + partial))
        }
    };
    micros
        .and_then(|micros| i64::try_from(micros).ok())
        .ok_or_else(|| StoreError::new("a time is out of the range SQLite keeps"))
}

/// The time `micros` microseconds from the Unix epoch, if this system can represent it.
fn time(micros: i64) -> Result<SystemTime, StoreError> {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    let time = if micros >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    time.ok_or_else(|| StoreError::new("a stored time is out of this system's time range"))
}

/// A record from a row of [`columns!`]; an error for anything the store would not have written.
fn record_from_row(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let text = |column: &str| row.try_get::<String, _>(column).map_err(StoreError::new);
    let optional_text = |column: &str| {
        row.try_get::<Option<String>, _>(column)
            .map_err(StoreError::new)
    };
    let optional_time = |column: &str| {
        row.try_get::<Option<i64>, _>(column)
            .map_err(StoreError::new)?
            .map(time)
            .transpose()
    };
    let digest: Vec<u8> = row.try_get("digest").map_err(StoreError::new)?;
    let digest = <[u8; 32]>::try_from(digest.as_slice())
        .map_err(|_| StoreError::new("a stored key digest is not 32 bytes long"))?;
    let mode = KeyMode::parse(&text("mode")?)
        .ok_or_else(|| StoreError::new("a stored key's mode is neither live nor test"))?;
    let mut identity = KeyIdentity::new(
        KeyId::new(text("key_id")?),
        text("account_id")?,
        text("name")?,
        Tier::new(text("tier")?),
    )
    .with_mode(mode);
    if let Some(scopes) = optional_text("scopes")? {
        let scopes = serde_json::from_str::<Vec<String>>(&scopes)
            .ok()
            .and_then(|scopes| Scopes::new(scopes).ok())
            .ok_or_else(|| StoreError::new("a stored key's scopes are not valid scopes"))?;
        identity = identity.with_scopes(scopes);
    }
    if let Some(metadata) = optional_text("metadata")? {
        let metadata = serde_json::from_str(&metadata)
            .map_err(|_| StoreError::new("a stored key's metadata is not JSON"))?;
        identity = identity.with_metadata(metadata);
    }
    if let Some(rate_limit) = optional_text("rate_limit")? {
        identity = identity.with_rate_limit(rate_limit_from_json(&rate_limit)?);
    }
    let mut record = KeyRecord::new(KeyDigest::from_bytes(digest), identity);
    record.credits = credits_from_row(row)?;
    record.hint = optional_text("hint")?.map(Into::into);
    record.created_at = optional_time("created_at")?;
    record.expires_at = optional_time("expires_at")?;
    record.revoked_at = optional_time("revoked_at")?;
    record.disabled_at = optional_time("disabled_at")?;
    record.last_used_at = optional_time("last_used_at")?;
    Ok(record)
}

/// The insert of `record`, written once for `create` and `import`: nothing if its key id or
/// lookup id is taken. Everything that can fail to encode fails here, before any lock.
fn insert(record: &KeyRecord) -> Result<Query<'_, Sqlite, SqliteArguments>, StoreError> {
    let identity = &record.identity;
    let metadata = identity.metadata().map(json).transpose()?;
    let scopes = identity.scopes().map(json).transpose()?;
    let rate_limit = identity.rate_limit().as_ref().map(json).transpose()?;
    let credits = CreditColumns::of(record.credits.as_ref());
    let refilled_at = credits.refilled_at.map(micros).transpose()?;
    let encode = |time: Option<SystemTime>| time.map(micros).transpose();
    let created_at = encode(record.created_at)?;
    let expires_at = encode(record.expires_at)?;
    let revoked_at = encode(record.revoked_at)?;
    let last_used_at = encode(record.last_used_at)?;
    let disabled_at = encode(record.disabled_at)?;
    let query = sqlx::query(INSERT)
        .bind(&record.digest.lookup_id().as_bytes()[..])
        .bind(identity.key_id().as_str())
        .bind(&record.digest.as_bytes()[..])
        .bind(identity.account_id())
        .bind(identity.name())
        .bind(identity.tier().as_str())
        .bind(metadata)
        .bind(record.hint.as_deref())
        .bind(created_at)
        .bind(expires_at)
        .bind(revoked_at)
        .bind(last_used_at)
        .bind(identity.mode().as_str())
        .bind(scopes)
        .bind(rate_limit)
        .bind(credits.remaining)
        .bind(credits.refill_amount)
        .bind(credits.refill_every)
        .bind(refilled_at)
        .bind(disabled_at);
    Ok(query)
}

/// A rate limit from its JSON form in the `rate_limit` column.
fn rate_limit_from_json(json: &str) -> Result<RateLimit, StoreError> {
    serde_json::from_str(json)
        .map_err(|_| StoreError::new("a stored key's rate limit is not a rate limit"))
}

/// A balance of credits from a row of [`credit_columns!`] (among others).
fn credits_from_row(row: &SqliteRow) -> Result<Option<Credits>, StoreError> {
    let integer = |name: &str| row.try_get::<Option<i64>, _>(name).map_err(StoreError::new);
    let every: Option<String> = row
        .try_get("credits_refill_every")
        .map_err(StoreError::new)?;
    CreditColumns {
        remaining: integer("credits_remaining")?,
        refill_amount: integer("credits_refill_amount")?,
        refill_every: every.as_deref(),
        refilled_at: integer("credits_refilled_at")?.map(time).transpose()?,
    }
    .credits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanos: u32) -> SystemTime {
        let since = Duration::new(seconds.unsigned_abs(), nanos);
        if seconds >= 0 {
            UNIX_EPOCH + since
        } else {
            UNIX_EPOCH - since
        }
    }

    #[test]
    fn times_round_trip_through_microseconds() {
        for time in [
            at(0, 0),
            at(1_800_000_000, 123_456_000),
            at(-86_400, 1_000),
            at(-1, 999_999_000),
        ] {
            assert_eq!(self::time(micros(time).unwrap()).unwrap(), time);
        }
    }

    #[test]
    fn a_part_of_a_microsecond_is_dropped_towards_the_past() {
        assert_eq!(micros(at(1, 1_999)).unwrap(), 1_000_001);
        // 86,400 s and 1 ns before the epoch: one microsecond more before it, not less.
        assert_eq!(micros(at(-86_400, 1)).unwrap(), -86_400_000_001);
    }

    #[test]
    fn insert_binds_every_column() {
        assert!(INSERT.contains("?20)"));
        assert!(!INSERT.contains("?21"));
        let columns = INSERT.split(['(', ')']).nth(1).unwrap();
        assert_eq!(columns.split(',').count(), 20);
    }

    /// The plan of `statement` on a fresh in-memory database holding the schema.
    async fn plan(statement: &'static str, parameters: usize) -> String {
        let store = SqliteKeyStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let explain = format!("EXPLAIN QUERY PLAN {statement}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(explain));
        for _ in 0..parameters {
            query = query.bind(0_i64);
        }
        let rows = query.fetch_all(&store.pool).await.unwrap();
        rows.iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn quota_count_range_scans_the_active_index() {
        let plan = plan(COUNT_ACTIVE, 3).await;
        assert!(
            plan.contains("USING INDEX api_keys_active_idx (account_id=? AND <expr>>?)"),
            "{plan}"
        );
    }

    #[tokio::test]
    async fn lookups_use_an_index() {
        for (statement, parameters) in [(FIND, 1), (GET, 2), (LIST, 1), (TOUCH, 2)] {
            let plan = plan(statement, parameters).await;
            assert!(plan.contains("USING INDEX"), "{statement}: {plan}");
            assert!(!plan.contains("SCAN api_keys"), "{statement}: {plan}");
        }
    }

    #[test]
    fn rate_limits_are_read_from_their_json_form_only() {
        let limit = RateLimit::per_minute(7).burst(3);
        let json = serde_json::to_string(&limit).unwrap();
        assert_eq!(rate_limit_from_json(&json).unwrap(), limit);
        let no_burst = r#"{"requests":5,"period_secs":1}"#;
        assert_eq!(
            rate_limit_from_json(no_burst).unwrap(),
            RateLimit::per_second(5)
        );
        for invalid in [
            r#"{"requests":0,"period_secs":1}"#,
            r#"{"requests":5}"#,
            r#"{"requests":-1,"period_secs":1}"#,
            r#""5/s""#,
        ] {
            assert!(rate_limit_from_json(invalid).is_err(), "{invalid}");
        }
    }

    #[test]
    fn added_columns_are_defined_as_the_schema_defines_them() {
        for (name, definition) in ADDED_COLUMNS {
            let column = format!("    {name} {definition}");
            assert!(SCHEMA.contains(&column), "{column}");
        }
    }

    /// The table as the first version of the schema created it, before rate limits and credits.
    const FIRST_TABLE: &str = "CREATE TABLE api_keys (
        key_id TEXT NOT NULL PRIMARY KEY,
        lookup_id BLOB NOT NULL UNIQUE,
        digest BLOB NOT NULL,
        account_id TEXT NOT NULL,
        name TEXT NOT NULL,
        tier TEXT NOT NULL,
        metadata TEXT,
        hint TEXT,
        created_at INTEGER,
        expires_at INTEGER,
        revoked_at INTEGER,
        last_used_at INTEGER,
        mode TEXT NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test')),
        scopes TEXT
    ) STRICT";

    /// The columns of the `api_keys` table of `store`: name, type, not null, default.
    async fn table_columns(store: &SqliteKeyStore) -> Vec<(String, String, i64, Option<String>)> {
        sqlx::query_as(
            "SELECT name, type, \"notnull\", dflt_value FROM pragma_table_info('api_keys')",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn migrating_a_table_without_credits_adds_them_and_keeps_its_keys() {
        let old = SqliteKeyStore::connect("sqlite::memory:").await.unwrap();
        sqlx::raw_sql(FIRST_TABLE).execute(&old.pool).await.unwrap();
        let digest = KeyDigest::of("sk_live_old");
        sqlx::query(
            "INSERT INTO api_keys (key_id, lookup_id, digest, account_id, name, tier) \
             VALUES ('key_old', ?1, ?2, 'acct_old', 'old', 'free')",
        )
        .bind(&digest.lookup_id().as_bytes()[..])
        .bind(&digest.as_bytes()[..])
        .execute(&old.pool)
        .await
        .unwrap();
        old.migrate().await.unwrap();
        old.migrate().await.unwrap();

        let fresh = SqliteKeyStore::connect("sqlite::memory:").await.unwrap();
        fresh.migrate().await.unwrap();
        assert_eq!(table_columns(&old).await, table_columns(&fresh).await);
        let found = old.find(&digest.lookup_id()).await.unwrap().unwrap();
        assert_eq!(found.identity.rate_limit(), None);
        assert_eq!(found.credits, None);
        let key_id = KeyId::new("key_old");
        let topped = old.top_up_credits("acct_old", &key_id, 3, UNIX_EPOCH);
        let topped = topped.await.unwrap().unwrap();
        assert_eq!(topped.credits, Some(Credits::new(3)));
        // The CHECK constraints came with the columns.
        let negative = sqlx::query("UPDATE api_keys SET credits_remaining = -1")
            .execute(&old.pool)
            .await;
        assert!(negative.is_err());
    }

    #[tokio::test]
    async fn credit_statements_use_the_primary_key() {
        for (statement, parameters) in [(SPEND, 4), (CREDITS, 1), (TOP_UP, 5)] {
            let plan = plan(statement, parameters).await;
            assert!(plan.contains("USING INDEX"), "{statement}: {plan}");
            assert!(!plan.contains("SCAN api_keys"), "{statement}: {plan}");
        }
    }
}
