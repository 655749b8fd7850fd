//! A store in PostgreSQL (feature `postgres`), through sqlx.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgRow, PgTypeInfo, PgValueFormat, PgValueRef, Postgres,
};
use sqlx::query::Query;
use sqlx::types::time::OffsetDateTime;
use sqlx::{AssertSqlSafe, Decode, Encode, PgPool, Row, Type};

use super::columns::{spend_in_sql, CreditColumns};
use super::usage::UsageQueue;
use super::within;
use super::{CreateError, KeyRecord, KeyStore, Quota, StoreError, WritableKeyStore};
use crate::identity::{KeyId, KeyIdentity, Tier};
use crate::key::{KeyDigest, LookupId};
use crate::limit::{Credits, RateLimit, RefillPeriod, Spend};
use crate::mode::KeyMode;
use crate::scope::Scopes;

/// The schema, for the default table name; [`PgKeyStore::migrate`] applies it.
const SCHEMA: &str = include_str!("postgres.sql");

/// The table name as the schema spells it, quoted, which [`Statements::new`] replaces.
const SCHEMA_TABLE: &str = "\"api_keys";

/// The first half of the advisory lock that serializes one account's creates.
const ACCOUNT_LOCK: i32 = 0x746b_6101;

/// The first half of the advisory lock that serializes migrations of one table.
const MIGRATION_LOCK: i32 = 0x746b_6102;

/// How long an operation may take by default before it fails.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest table name, in bytes: PostgreSQL's 63 less room for the longest index suffix,
/// `_account_id_idx` (the other is `_active_idx`), which PostgreSQL would otherwise truncate
/// into a clash.
const MAX_IDENTIFIER_LEN: usize = 63 - "_account_id_idx".len();

/// The columns of a record, in the order every query selects them.
const COLUMNS: &str = "key_id, digest, account_id, name, tier, metadata, hint, \
                       created_at, expires_at, revoked_at, last_used_at, mode, scopes, \
                       rate_limit, credits_remaining, credits_refill_amount, \
                       credits_refill_every, credits_refilled_at, disabled_at";

/// The columns of a balance of credits, in the order [`credits_from_row`] reads them.
const CREDIT_COLUMNS: &str =
    "credits_remaining, credits_refill_amount, credits_refill_every, credits_refilled_at";

/// A store that keeps keys in PostgreSQL, through your [`sqlx`] pool, so that every instance
/// of a service sees the same keys, revocations and quotas.
///
/// Requests find keys by their [`LookupId`], a `UNIQUE` (so indexed) column; the store never
/// sees a key and never compares digests. [`WritableKeyStore::create`] counts the account's active keys and inserts in one
/// transaction, under a transaction-scoped advisory lock on the account
/// (`pg_advisory_xact_lock(1953194241, hashtext(account_id))`), so that the quota holds across
/// processes, including for an account that has no key yet.
///
/// A key's own rate limit is kept as JSONB (`rate_limit`), its balance of credits in four
/// columns (`credits_remaining`, `credits_refill_amount`, `credits_refill_every`,
/// `credits_refilled_at`; amounts above `i64::MAX` are kept as `i64::MAX`, as good as
/// unlimited). [`spend_credits`](WritableKeyStore::spend_credits) is one `UPDATE` that refills
/// and spends, or changes nothing if the balance cannot pay: concurrent spends from any number
/// of instances queue on the row's lock, so they never take more than the balance.
/// [`top_up_credits`](WritableKeyStore::top_up_credits) is one `UPDATE` too. Neither notifies
/// the [change feed](PgKeyStore::changes): a balance decides no authentication.
///
/// Every operation fails with a [`StoreError`] after the [timeout](PgKeyStore::timeout) (2 s by
/// default), so that a database that is down or hung makes the layer answer `503`; the pool
/// reconnects by itself once the database is back. Last-used times are written by a background
/// task, so requests never wait for them. Clones are cheap and share the pool.
///
/// ```no_run
/// use std::time::Duration;
///
/// use sqlx::postgres::PgPoolOptions;
/// use tower_api_key::{ApiKeyLayer, KeyManager, NewKey, Tier, store::PgKeyStore};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PgPoolOptions::new()
///     .max_connections(10)
///     .connect("postgres://app@127.0.0.1/app")
///     .await?;
/// let store = PgKeyStore::new(pool)
///     .table("api_keys")
///     .timeout(Duration::from_secs(1));
/// // Creates the table and its indexes unless they exist; or apply `postgres.sql` yourself.
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
#[derive(Clone)]
pub struct PgKeyStore {
    pool: PgPool,
    statements: Arc<Statements>,
    timeout: Duration,
    usage: UsageQueue,
}

impl PgKeyStore {
    /// A store over `pool`, in table `api_keys`, with a 2-second timeout.
    ///
    /// Apply the schema once with [`PgKeyStore::migrate`] (or with your own migrations).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it starts the task that writes last-used times.
    pub fn new(pool: PgPool) -> Self {
        Self::build(pool, Statements::new("api_keys"), DEFAULT_TIMEOUT)
    }

    /// Keeps the keys in table `name` (found through the connection's `search_path`) instead of
    /// `api_keys`.
    ///
    /// # Panics
    ///
    /// Unless `name` is a plain SQL identifier of at most 48 bytes: a lowercase ASCII letter or
    /// `_`, then lowercase ASCII letters, digits or `_`. The name is written into SQL, so
    /// nothing else is accepted. Also outside a tokio runtime, as [`PgKeyStore::new`].
    pub fn table(self, name: &str) -> Self {
        assert!(
            is_plain_identifier(name),
            "PgKeyStore::table: {name:?} is not a plain SQL identifier \
             ([a-z_][a-z0-9_]*, at most {MAX_IDENTIFIER_LEN} bytes)"
        );
        Self::build(self.pool, Statements::new(name), self.timeout)
    }

    /// Fails each operation that takes longer than `timeout` (2 s by default), including the
    /// wait for a pooled connection.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`PgKeyStore::new`].
    pub fn timeout(self, timeout: Duration) -> Self {
        Self::build(self.pool, self.statements, timeout)
    }

    /// Creates the table and its indexes unless they exist, and adds the columns a table created
    /// by an earlier version lacks (modes and scopes, rate limits and credits).
    ///
    /// Safe to run at every start, from any number of instances at once: migrations of one
    /// table are serialized by an advisory lock. The schema is `src/store/postgres.sql` in the
    /// crate, to copy into your own migrations instead if you prefer.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        within("PostgreSQL", self.timeout, async {
            let mut transaction = self.pool.begin().await.map_err(StoreError::new)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(MIGRATION_LOCK)
                .bind(&self.statements.table)
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::new)?;
            sqlx::raw_sql(sql(&self.statements.schema))
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::new)?;
            transaction.commit().await.map_err(StoreError::new)
        })
        .await
    }

    /// The feed that tells a [`CachedKeyStore`](super::CachedKeyStore) in front of this store
    /// which keys changed, through any instance or with plain SQL (`TRUNCATE` included): it
    /// `LISTEN`s on the channel `{table}_changes`, which the schema's triggers notify with the
    /// changed key's lookup id. The feed holds one connection of its own, opened with the pool's
    /// options and named after its channel in `pg_stat_activity`; it checks that the table's
    /// trigger is there and enabled before the cache trusts it, checks the connection with a
    /// query after each idle second, and reconnects by itself. The pool's options must reach
    /// PostgreSQL itself or a pooler in session mode: in transaction mode `LISTEN` hears
    /// nothing. Changes made while triggers do not fire (`session_replication_role = replica`,
    /// as `pg_restore` and logical replication use, or a disabled trigger) are not pushed.
    ///
    /// ```no_run
    /// use tower_api_key::{ApiKeyLayer, store::{CachedKeyStore, PgKeyStore}};
    ///
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PgKeyStore::new(pool);
    /// store.migrate().await?; // the trigger that notifies is part of the schema
    /// let cached = CachedKeyStore::new(store.clone()).push_invalidation(store.changes());
    /// let layer = ApiKeyLayer::new(cached);
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn changes(&self) -> super::ChangeFeed {
        let pool = self.pool.clone();
        let channel = format!("{}_changes", self.statements.table);
        let timeout = self.timeout;
        super::ChangeFeed::new(move |invalidator| async move {
            super::changes::resubscribe("postgres", invalidator, |invalidator| {
                listen(pool.clone(), channel.clone(), timeout, invalidator)
            })
            .await;
        })
    }

    fn build(pool: PgPool, statements: Arc<Statements>, timeout: Duration) -> Self {
        let usage = {
            let (pool, statements) = (pool.clone(), Arc::clone(&statements));
            UsageQueue::spawn(move |key_id: KeyId, at: SystemTime| {
                let (pool, statements) = (pool.clone(), Arc::clone(&statements));
                within("PostgreSQL", timeout, async move {
                    sqlx::query(sql(&statements.touch))
                        .bind(key_id.as_str())
                        .bind(PgTime(at))
                        .execute(&pool)
                        .await
                        .map(drop)
                        .map_err(StoreError::new)
                })
            })
        };
        Self {
            pool,
            statements,
            timeout,
            usage,
        }
    }

    /// The count, the retirement and the insert of [`WritableKeyStore::create`], in one
    /// transaction under the account's lock.
    async fn create_locked(&self, record: &KeyRecord, quota: &Quota) -> Result<(), CreateError> {
        let account_id = record.identity.account_id();
        let retiring_id = quota.retiring.as_ref().map(|(key_id, _)| key_id.as_str());
        // Read committed whatever the pool's default: the count must see what earlier holders
        // of the lock committed, so its snapshot has to be taken after the lock is granted.
        let mut transaction = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(StoreError::new)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(ACCOUNT_LOCK)
            .bind(account_id)
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::new)?;
        let (others, retiring_is_active): (i64, bool) =
            sqlx::query_as(sql(&self.statements.count_active))
                .bind(account_id)
                .bind(PgTime(quota.now))
                .bind(retiring_id)
                .fetch_one(&mut *transaction)
                .await
                .map_err(StoreError::new)?;
        let refusal = if retiring_id.is_some() && !retiring_is_active {
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
        if let Some((key_id, expires_at)) = &quota.retiring {
            sqlx::query(sql(&self.statements.retire))
                .bind(account_id)
                .bind(key_id.as_str())
                .bind(PgTime(*expires_at))
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::new)?;
        }
        let inserted = self
            .insert(record)?
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::new)?;
        if inserted.rows_affected() == 0 {
            // Dropping the transaction rolls the retirement back.
            return Err(CreateError::AlreadyExists);
        }
        transaction.commit().await.map_err(StoreError::new)?;
        Ok(())
    }

    /// The insert of `record`, written once for `create` and `import`: nothing if its key id
    /// or lookup id is taken.
    fn insert<'q>(
        &self,
        record: &'q KeyRecord,
    ) -> Result<Query<'q, Postgres, PgArguments>, StoreError> {
        let identity = &record.identity;
        let rate_limit = identity
            .rate_limit()
            .map(serde_json::to_value)
            .transpose()
            .map_err(StoreError::new)?;
        let credits = CreditColumns::of(record.credits.as_ref());
        let query = sqlx::query(sql(&self.statements.insert))
            .bind(identity.key_id().as_str())
            .bind(&record.digest.lookup_id().as_bytes()[..])
            .bind(&record.digest.as_bytes()[..])
            .bind(identity.account_id())
            .bind(identity.name())
            .bind(identity.tier().as_str())
            .bind(identity.metadata())
            .bind(record.hint.as_deref())
            .bind(record.created_at.map(PgTime))
            .bind(record.expires_at.map(PgTime))
            .bind(record.revoked_at.map(PgTime))
            .bind(record.last_used_at.map(PgTime))
            .bind(identity.mode().as_str())
            .bind(
                identity
                    .scopes()
                    .map(|scopes| scopes.iter().collect::<Vec<_>>()),
            )
            .bind(rate_limit)
            .bind(credits.remaining)
            .bind(credits.refill_amount)
            .bind(credits.refill_every)
            .bind(credits.refilled_at.map(PgTime))
            .bind(record.disabled_at.map(PgTime));
        Ok(query)
    }

    /// Runs `query`, which returns at most one record.
    async fn fetch_record(
        &self,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        within("PostgreSQL", self.timeout, async {
            let row = query
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::new)?;
            row.as_ref().map(record_from_row).transpose()
        })
        .await
    }
}

impl fmt::Debug for PgKeyStore {
    // Not the pool: its connect options hold the database password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgKeyStore")
            .field("table", &self.statements.table)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(sql(&self.statements.find)).bind(&lookup_id.as_bytes()[..]);
        self.fetch_record(query).await
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        self.usage.push(record.identity.key_id(), at);
    }
}

#[async_trait]
impl WritableKeyStore for PgKeyStore {
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        within(
            "PostgreSQL",
            self.timeout,
            self.create_locked(&record, &quota),
        )
        .await
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        within("PostgreSQL", self.timeout, async {
            let rows = sqlx::query(sql(&self.statements.list))
                .bind(account_id)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::new)?;
            rows.iter().map(record_from_row).collect()
        })
        .await
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(sql(&self.statements.get))
            .bind(account_id)
            .bind(key_id.as_str());
        self.fetch_record(query).await
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(sql(&self.statements.revoke))
            .bind(account_id)
            .bind(key_id.as_str())
            .bind(PgTime(at));
        self.fetch_record(query).await
    }

    async fn set_disabled(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: Option<SystemTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(sql(&self.statements.set_disabled))
            .bind(account_id)
            .bind(key_id.as_str())
            .bind(at.map(PgTime));
        self.fetch_record(query).await
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(sql(&self.statements.delete))
            .bind(account_id)
            .bind(key_id.as_str());
        self.fetch_record(query).await
    }

    /// One `UPDATE` that refills and spends, or changes nothing if the balance cannot pay:
    /// concurrent spends on one balance, from any number of instances, queue on the row's lock
    /// and each sees the balance the one before left. When nothing was spent, a read tells a
    /// missing key from one without a balance or one that cannot pay; should that read find a
    /// balance that can pay after all (topped up in between), the spend is tried again. A
    /// refill that fell due is written with the next spend, not by a refused one: the balance
    /// reads the same either way ([`Credits::as_of`]).
    ///
    /// A cost above `i64::MAX` is more than any stored balance, so never paid.
    async fn spend_credits(
        &self,
        key_id: &KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<Option<Spend>, StoreError> {
        let day_start = PgTime(RefillPeriod::Day.start_of(now));
        let month_start = PgTime(RefillPeriod::Month.start_of(now));
        within("PostgreSQL", self.timeout, async {
            let spend = |cost: i64| async move {
                let row = sqlx::query(sql(&self.statements.spend))
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
                let row = sqlx::query(sql(&self.statements.credits))
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
        let query = sqlx::query(sql(&self.statements.top_up))
            .bind(account_id)
            .bind(key_id.as_str())
            .bind(i64::try_from(amount).unwrap_or(i64::MAX))
            .bind(PgTime(RefillPeriod::Day.start_of(now)))
            .bind(PgTime(RefillPeriod::Month.start_of(now)));
        self.fetch_record(query).await
    }

    /// The inserts of `create`, `IMPORT_BATCH` to a transaction, each transaction within the
    /// store's timeout: a record whose key id or key is taken is skipped (`ON CONFLICT DO
    /// NOTHING`), so a transaction fails only with the server.
    async fn import(&self, records: Vec<KeyRecord>) -> Result<Vec<bool>, StoreError> {
        let mut inserted = Vec::with_capacity(records.len());
        for batch in records.chunks(super::IMPORT_BATCH) {
            let batch_inserted = within("PostgreSQL", self.timeout, async {
                let mut transaction = self.pool.begin().await.map_err(StoreError::new)?;
                let mut inserted = Vec::with_capacity(batch.len());
                for record in batch {
                    let done = (self.insert(record)?)
                        .execute(&mut *transaction)
                        .await
                        .map_err(StoreError::new)?;
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

/// The SQL of every operation, written once for the store's table.
struct Statements {
    table: String,
    schema: Arc<str>,
    find: Arc<str>,
    count_active: Arc<str>,
    retire: Arc<str>,
    insert: Arc<str>,
    list: Arc<str>,
    get: Arc<str>,
    revoke: Arc<str>,
    delete: Arc<str>,
    touch: Arc<str>,
    set_disabled: Arc<str>,
    spend: Arc<str>,
    credits: Arc<str>,
    top_up: Arc<str>,
}

impl Statements {
    /// The statements for table `table`, which must be a plain identifier.
    fn new(table: &str) -> Arc<Self> {
        let statement = |text: String| Arc::<str>::from(text);
        // Active at $2: neither revoked nor expired, as `KeyRecord::is_active`; written as the
        // `_active_idx` index is, so that the count range-scans it.
        let active = "revoked_at IS NULL AND coalesce(expires_at, 'infinity') > $2";
        Arc::new(Self {
            table: table.to_owned(),
            schema: statement(SCHEMA.replace(SCHEMA_TABLE, &format!("\"{table}"))),
            find: statement(format!(
                "SELECT {COLUMNS} FROM \"{table}\" WHERE lookup_id = $1"
            )),
            count_active: statement(format!(
                "SELECT count(*) FILTER (WHERE key_id IS DISTINCT FROM $3), \
                        coalesce(bool_or(key_id = $3), false) \
                 FROM \"{table}\" WHERE account_id = $1 AND {active}"
            )),
            // `least` ignores NULL: a key that never expired gets the given expiry.
            retire: statement(format!(
                "UPDATE \"{table}\" SET expires_at = least(expires_at, $3) \
                 WHERE account_id = $1 AND key_id = $2"
            )),
            // Either unique column (key_id, lookup_id) taken: nothing is inserted.
            insert: statement(format!(
                "INSERT INTO \"{table}\" (key_id, lookup_id, {columns}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                         $16, $17, $18, $19, $20) \
                 ON CONFLICT DO NOTHING",
                columns = COLUMNS.trim_start_matches("key_id, "),
            )),
            list: statement(format!(
                "SELECT {COLUMNS} FROM \"{table}\" WHERE account_id = $1 \
                 ORDER BY created_at NULLS FIRST, key_id COLLATE \"C\""
            )),
            get: statement(format!(
                "SELECT {COLUMNS} FROM \"{table}\" WHERE account_id = $1 AND key_id = $2"
            )),
            // `coalesce` keeps the first revocation's time.
            revoke: statement(format!(
                "UPDATE \"{table}\" SET revoked_at = coalesce(revoked_at, $3) \
                 WHERE account_id = $1 AND key_id = $2 RETURNING {COLUMNS}"
            )),
            // `coalesce` keeps the first time a key was disabled; $3 NULL enables it.
            set_disabled: statement(format!(
                "UPDATE \"{table}\" SET disabled_at = CASE WHEN $3::timestamptz IS NULL THEN NULL \
                                              ELSE coalesce(disabled_at, $3) END \
                 WHERE account_id = $1 AND key_id = $2 RETURNING {COLUMNS}"
            )),
            delete: statement(format!(
                "DELETE FROM \"{table}\" WHERE account_id = $1 AND key_id = $2 \
                 RETURNING {COLUMNS}"
            )),
            // Never moves a last use back, and writes no row it would not change.
            touch: statement(format!(
                "UPDATE \"{table}\" SET last_used_at = $2 \
                 WHERE key_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)"
            )),
            // The rule of `Credits::spend`, in one statement: the balance refilled if a refill
            // fell due, less $2 if it can pay $2; no row is changed when it cannot (nor for a
            // key without a balance, whose `balance` is NULL). PostgreSQL evaluates the `SET`
            // and the `WHERE` against the row's latest version once it holds the row's lock.
            spend: statement(format!(
                "UPDATE \"{table}\" SET credits_remaining = {balance} - $2, \
                        credits_refilled_at = {refilled_at} \
                 WHERE key_id = $1 AND {balance} >= $2 RETURNING {CREDIT_COLUMNS}",
                balance = balance("$3", "$4"),
                refilled_at = refilled_at("$3", "$4"),
            )),
            credits: statement(format!(
                "SELECT {CREDIT_COLUMNS} FROM \"{table}\" WHERE key_id = $1"
            )),
            // The rule of `Credits::top_up`: refilled if due, then $3 added, saturating at the
            // largest BIGINT; a key without a balance gets one of $3.
            top_up: statement(format!(
                "UPDATE \"{table}\" SET credits_remaining = CASE \
                     WHEN credits_remaining IS NULL THEN $3 \
                     WHEN {balance} > {max} - $3 THEN {max} \
                     ELSE {balance} + $3 END, \
                   credits_refilled_at = {refilled_at} \
                 WHERE account_id = $1 AND key_id = $2 RETURNING {COLUMNS}",
                balance = balance("$4", "$5"),
                refilled_at = refilled_at("$4", "$5"),
                max = i64::MAX,
            )),
        })
    }
}

/// Whether a refill fell due: the key has one, and was last refilled before the start of the
/// current period, `day_start` or `month_start` as its refill is daily or monthly (both
/// computed by `RefillPeriod::start_of`, so that the database and the other stores agree).
fn refill_due(day_start: &str, month_start: &str) -> String {
    format!(
        "(credits_refill_every IS NOT NULL AND (credits_refilled_at IS NULL OR \
          credits_refilled_at < CASE credits_refill_every \
                                WHEN 'day' THEN {day_start} ELSE {month_start} END))"
    )
}

/// The balance as of now: the refill's amount if one fell due, else what is left.
fn balance(day_start: &str, month_start: &str) -> String {
    let due = refill_due(day_start, month_start);
    format!("(CASE WHEN {due} THEN credits_refill_amount ELSE credits_remaining END)")
}

/// When the balance was last refilled, as of now: the start of the current period if a refill
/// fell due.
fn refilled_at(day_start: &str, month_start: &str) -> String {
    let due = refill_due(day_start, month_start);
    format!(
        "(CASE WHEN {due} THEN CASE credits_refill_every \
                               WHEN 'day' THEN {day_start} ELSE {month_start} END \
          ELSE credits_refilled_at END)"
    )
}

/// A statement for sqlx, which asks that SQL built at run time be marked as audited: the only
/// value written into it is the table name, a checked plain identifier.
fn sql(statement: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(statement))
}

/// Whether `name` is `[a-z_][a-z0-9_]*` and fits in a PostgreSQL identifier.
fn is_plain_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|byte| byte.is_ascii_lowercase() || byte == b'_');
    first_ok
        && name.len() <= MAX_IDENTIFIER_LEN
        && bytes.all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

/// One session of [`PgKeyStore::changes`]: listens on `channel` and relays each notification,
/// until the connection fails (an error) or the cache is gone.
async fn listen(
    pool: PgPool,
    channel: String,
    timeout: Duration,
    invalidator: super::Invalidator,
) -> Result<(), StoreError> {
    /// How long the connection may stay silent before a query checks it.
    const IDLE: Duration = super::changes::FEED_IDLE;
    // A connection of its own, not one of the application's pool: a pool of one, for this
    // session only, so that a hung connection left behind never holds a slot anyone needs.
    // Named after its channel, so that an operator can tell it in `pg_stat_activity`.
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone().application_name(&channel));
    let mut listener = within("PostgreSQL", timeout, async {
        let mut listener = sqlx::postgres::PgListener::connect_with(&own)
            .await
            .map_err(StoreError::new)?;
        // A lost connection ends the session (and the cache stops serving), rather than being
        // replaced silently while notifications go missing.
        listener.eager_reconnect(false);
        listener.listen(&channel).await.map_err(StoreError::new)?;
        // Listening is of no use if nothing notifies: the table must have its trigger, enabled.
        let table = channel.trim_end_matches("_changes");
        let notifying: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = to_regclass(quote_ident($1)) \
             AND tgname = $2 AND tgenabled <> 'D')",
        )
        .bind(table)
        .bind(format!("{table}_notify"))
        .fetch_one(&mut listener)
        .await
        .map_err(StoreError::new)?;
        if !notifying {
            return Err(StoreError::new(format!(
                "table {table} has no enabled {table}_notify trigger: apply the schema \
                 (PgKeyStore::migrate) so that changes are pushed"
            )));
        }
        Ok::<_, StoreError>(listener)
    })
    .await?;
    invalidator.listening();
    while !invalidator.is_closed() {
        // `try_recv` is cancel-safe: a notification half read stays for the next call.
        match tokio::time::timeout(IDLE, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => {
                // `payload` panics on text that is not UTF-8 (a database in SQL_ASCII): the
                // session then ends, and the feed reconnects.
                match LookupId::from_hex(notification.payload()) {
                    Some(lookup_id) => invalidator.changed(&lookup_id),
                    // Not the trigger's: it may still mean a change, so forget everything.
                    None => invalidator.listening(),
                }
            }
            Ok(Ok(None)) => return Err(StoreError::new("the LISTEN connection was lost")),
            Ok(Err(error)) => return Err(StoreError::new(error)),
            Err(_idle) => {
                within("PostgreSQL", timeout, async {
                    sqlx::query("SELECT 1")
                        .execute(&mut listener)
                        .await
                        .map(drop)
                        .map_err(StoreError::new)
                })
                .await?;
            }
        }
    }
    Ok(())
}

/// A record from a row of [`COLUMNS`]; an error for anything the store would not have written.
fn record_from_row(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let text = |column: &str| row.try_get::<String, _>(column).map_err(StoreError::new);
    let time = |column: &str| {
        row.try_get::<Option<PgTime>, _>(column)
            .map(|time| time.map(|PgTime(time)| time))
            .map_err(StoreError::new)
    };
    let digest: Vec<u8> = row.try_get("digest").map_err(StoreError::new)?;
    let digest = <[u8; 32]>::try_from(digest.as_slice())
        .map_err(|_| StoreError::new("a stored key digest is not 32 bytes long"))?;
    let metadata: Option<serde_json::Value> = row.try_get("metadata").map_err(StoreError::new)?;
    let mode = KeyMode::parse(&text("mode")?)
        .ok_or_else(|| StoreError::new("a stored key's mode is neither live nor test"))?;
    let scopes: Option<Vec<String>> = row.try_get("scopes").map_err(StoreError::new)?;
    let mut identity = KeyIdentity::new(
        KeyId::new(text("key_id")?),
        text("account_id")?,
        text("name")?,
        Tier::new(text("tier")?),
    )
    .with_mode(mode);
    if let Some(scopes) = scopes {
        let scopes = Scopes::new(scopes)
            .map_err(|_| StoreError::new("a stored key's scopes are not valid scopes"))?;
        identity = identity.with_scopes(scopes);
    }
    if let Some(metadata) = metadata {
        identity = identity.with_metadata(metadata);
    }
    let rate_limit: Option<serde_json::Value> =
        row.try_get("rate_limit").map_err(StoreError::new)?;
    if let Some(rate_limit) = rate_limit {
        identity = identity.with_rate_limit(rate_limit_from_json(rate_limit)?);
    }
    let mut record = KeyRecord::new(KeyDigest::from_bytes(digest), identity);
    record.credits = credits_from_row(row)?;
    let hint: Option<String> = row.try_get("hint").map_err(StoreError::new)?;
    record.hint = hint.map(Into::into);
    record.created_at = time("created_at")?;
    record.expires_at = time("expires_at")?;
    record.revoked_at = time("revoked_at")?;
    record.disabled_at = time("disabled_at")?;
    record.last_used_at = time("last_used_at")?;
    Ok(record)
}

/// A rate limit from its JSON form in the `rate_limit` column.
fn rate_limit_from_json(json: serde_json::Value) -> Result<RateLimit, StoreError> {
    serde_json::from_value(json)
        .map_err(|_| StoreError::new("a stored key's rate limit is not a rate limit"))
}

/// A balance of credits from a row of [`CREDIT_COLUMNS`] (among others).
fn credits_from_row(row: &PgRow) -> Result<Option<Credits>, StoreError> {
    let column = |name: &str| row.try_get::<Option<i64>, _>(name).map_err(StoreError::new);
    let every: Option<String> = row
        .try_get("credits_refill_every")
        .map_err(StoreError::new)?;
    let refilled_at: Option<PgTime> = row
        .try_get("credits_refilled_at")
        .map_err(StoreError::new)?;
    CreditColumns {
        remaining: column("credits_remaining")?,
        refill_amount: column("credits_refill_amount")?,
        refill_every: every.as_deref(),
        refilled_at: refilled_at.map(|PgTime(time)| time),
    }
    .credits()
}

/// A `TIMESTAMPTZ` as a [`SystemTime`], exact to the microsecond.
///
/// Not through sqlx's `OffsetDateTime`, whose decoding panics on values it cannot represent
/// (past year 9999, or `infinity`); here such a value is a decoding error, so a `503`.
#[derive(Clone, Copy)]
struct PgTime(SystemTime);

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC.
const PG_EPOCH_MICROS: i128 = 946_684_800_000_000;

impl Type<Postgres> for PgTime {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for PgTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        // Sub-microsecond parts are dropped towards the past, as PostgreSQL keeps microseconds.
        let unix_micros = match self.0.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i128::try_from(after.as_micros())?,
            Err(before) => {
                let before = before.duration();
                let micros = i128::try_from(before.as_micros())?;
                let partial = i128::from(before.subsec_nanos() % 1_000 != 0);
                -(micros + partial)
            }
        };
        let micros = i64::try_from(unix_micros - PG_EPOCH_MICROS)
            .map_err(|_| "a time is out of PostgreSQL's range")?;
        <i64 as Encode<Postgres>>::encode_by_ref(&micros, buf)
    }

    fn size_hint(&self) -> usize {
        size_of::<i64>()
    }
}

impl Decode<'_, Postgres> for PgTime {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        if value.format() != PgValueFormat::Binary {
            return Err("a TIMESTAMPTZ arrived as text".into());
        }
        let micros = <i64 as Decode<Postgres>>::decode(value)?;
        if micros == i64::MAX || micros == i64::MIN {
            return Err("an infinite TIMESTAMPTZ is not a time".into());
        }
        let unix_micros = i128::from(micros) + PG_EPOCH_MICROS;
        let magnitude = Duration::from_micros(u64::try_from(unix_micros.unsigned_abs())?);
        let time = if unix_micros >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(magnitude)
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(magnitude)
        };
        time.map(PgTime)
            .ok_or_else(|| "a TIMESTAMPTZ is out of this system's time range".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_account_lock_is_the_one_taken() {
        assert_eq!(ACCOUNT_LOCK, 1_953_194_241);
    }

    #[test]
    fn plain_identifiers_are_valid_table_names() {
        for name in [
            "api_keys",
            "_keys",
            "keys_2",
            &"k".repeat(MAX_IDENTIFIER_LEN),
        ] {
            assert!(is_plain_identifier(name), "{name:?}");
        }
    }

    #[test]
    fn other_names_are_invalid_table_names() {
        let long = "k".repeat(MAX_IDENTIFIER_LEN + 1);
        for name in [
            "",
            "2keys",
            "Keys",
            "api-keys",
            "a.b",
            "k\"; DROP",
            "clé",
            &long,
        ] {
            assert!(!is_plain_identifier(name), "{name:?}");
        }
    }

    #[test]
    fn schema_names_only_the_chosen_table() {
        let statements = Statements::new("tenant_keys");
        assert!(!statements.schema.contains("api_keys"));
        assert!(statements
            .schema
            .contains("CREATE TABLE IF NOT EXISTS \"tenant_keys\""));
        assert!(statements
            .schema
            .contains("\"tenant_keys_account_id_idx\" ON \"tenant_keys\""));
        assert!(statements
            .schema
            .contains("\"tenant_keys_active_idx\" ON \"tenant_keys\""));
    }

    #[test]
    fn insert_binds_every_column_and_replaces_nothing() {
        let insert = &Statements::new("api_keys").insert;
        assert!(insert.contains("$20)"));
        assert!(!insert.contains("$21"));
        assert!(insert.ends_with("ON CONFLICT DO NOTHING"));
    }

    #[test]
    fn rate_limits_are_read_from_their_json_form_only() {
        let limit = RateLimit::per_minute(7).burst(3);
        let json = serde_json::to_string(&limit).unwrap();
        assert_eq!(
            rate_limit_from_json(serde_json::from_str(&json).unwrap()).unwrap(),
            limit
        );
        let no_burst = r#"{"requests":5,"period_secs":1}"#;
        assert_eq!(
            rate_limit_from_json(serde_json::from_str(no_burst).unwrap()).unwrap(),
            RateLimit::per_second(5)
        );
        for invalid in [
            r#"{"requests":0,"period_secs":1}"#,
            r#"{"requests":5}"#,
            r#"{"requests":-1,"period_secs":1}"#,
            r#""5/s""#,
        ] {
            assert!(
                rate_limit_from_json(serde_json::from_str(invalid).unwrap()).is_err(),
                "{invalid}"
            );
        }
    }
}
