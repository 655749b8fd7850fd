//! Redis store (feature `redis`): keys in Redis, a single node or a cluster, shared by every
//! instance of a service.
//!
//! A store's Redis keys all begin with its prefix in braces (angle brackets below mark what
//! varies, braces are literal: with the prefix `billing`, a record is at
//! `{billing}:lookup:5f0e…`):
//!
//! | Redis key                              | Type       | Holds                                  |
//! |----------------------------------------|------------|----------------------------------------|
//! | `{<prefix>}:lookup:<lookup id in hex>` | hash       | the record, so `find` is one `HGETALL` |
//! | `{<prefix>}:id:<key id>`               | string     | the key's lookup id in hex             |
//! | `{<prefix>}:account:<account id>`      | set        | all the account's key ids, for `list`  |
//! | `{<prefix>}:active:<account id>`       | sorted set | its active key ids, scored by expiry   |
//! | `{<prefix>}:rate:<subject>`            | string     | a shared rate limit's counter          |
//!
//! The active set scores each key id by its expiry in microseconds (`+inf` for none). A key
//! leaves it when it is revoked or deleted, and once expired at the next `create` of its
//! account, so a quota check costs the same however many revoked keys the account has had.
//!
//! A record's fields are `digest` (hex), `key_id`, `account_id`, `name`, `tier`, `mode` (`live`
//! or `test`; a record without it, written by an earlier version, is live) and, when set,
//! `scopes` (space-separated), `metadata` (JSON), `hint`, `created_at`, `expires_at`,
//! `revoked_at`, `disabled_at` and `last_used_at` (integer microseconds since the Unix epoch), `rate_limit`
//! (the key's own limit, JSON: `{"requests":60,"period_secs":60,"burst":60}`), and for a key
//! with a balance of credits `credits_remaining` (a decimal `u64`), `credits_refill_amount`
//! and `credits_refill_every` (`day` or `month`) if it is refilled, and `credits_refilled_at`
//! (microseconds) once it has been. A record written by an earlier version, without these
//! fields, is a key with no limit of its own and no balance. Fields rather than one JSON
//! document let the scripts change a time or a balance in place: re-encoding the record with
//! Lua's cjson would alter metadata (`[]` becomes `{}`, integers are rounded to 14 digits).
//!
//! Every write is one Lua script, which Redis runs atomically with respect to every other
//! client: so `create` counts and inserts in one step for all application instances, and a
//! spend of credits refills, compares and takes in one step, so that of N concurrent spends
//! on a balance of M exactly `min(N, M)` succeed. Lua's numbers are doubles, exact only below
//! 2^53, so the scripts keep balances as decimal strings and do their arithmetic digit by
//! digit: exact over the whole `u64` range. Each script also publishes the lookup id (hex) of
//! every key it changes on the channel `{<prefix>}:changes`, for [`RedisKeyStore::changes`];
//! recording a last use, spending credits and topping them up publish nothing, as no cache
//! decides by them.
//!
//! The `rate` counters are for rate limits shared by every instance: each holds the
//! theoretical arrival time of a GCRA counter, in microseconds by the Redis server's clock, and
//! expires once its burst would be full again.
//!
//! Redis Cluster runs a script only when every key it touches is in one hash slot, and routes
//! it by the keys it declares: `{<prefix>}` is a hash tag, so all of a store's keys are in one
//! slot (`RedisKeyStore`'s docs say why one), and every script declares in `KEYS` each key it
//! touches. An operation on a key id first reads the key's lookup id (`{<prefix>}:id:<key
//! id>`, fixed for the key's life) to name its record, and its script checks that the id still
//! points there: if the key was deleted meanwhile, the operation reads again.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, Value};
use async_trait::async_trait;

use super::usage::UsageQueue;
use super::within;
use super::{CreateError, KeyRecord, KeyStore, Quota, StoreError, WritableKeyStore};
use crate::identity::{KeyId, KeyIdentity, Tier};
use crate::key::{KeyDigest, LookupId};
#[cfg(feature = "rate-limit")]
use crate::limit::RateLimit;
use crate::limit::{Credits, Refill, RefillPeriod, Spend};
use crate::mode::KeyMode;
use crate::scope::Scopes;

const DEFAULT_PREFIX: &str = "tower-api-key";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an operation reads a key's lookup id again when the key changed meanwhile: each
/// retry means it was deleted (and its id reused) between two round trips.
const ATTEMPTS: usize = 3;

/// A store that keeps keys in Redis, so that every instance of a service sees the same keys,
/// revocations and quotas.
///
/// It works over a single Redis (with or without replicas) through the [`ConnectionManager`]
/// you pass to [`new`](RedisKeyStore::new), or over a Redis Cluster through a
/// [`ClusterConnection`] passed to [`cluster`](RedisKeyStore::cluster); both reconnect by
/// themselves, so when Redis comes back after an outage, authentication resumes without
/// restarting anything. Each operation is bounded by a [timeout](RedisKeyStore::timeout)
/// (2 seconds by default); a Redis that is down, slow, or holds a malformed record gives a
/// [`StoreError`], so the layer answers `503`, never `401` and never a pass.
///
/// There is no schema to apply: Redis keys are created on the first write, all under the
/// [prefix](RedisKeyStore::prefix) (`tower-api-key` by default). Give each application sharing
/// a Redis its own prefix.
///
/// Creates, revocations, deletions, last-used updates, and spends and top-ups of credits are
/// Lua scripts, each atomic across every instance: of N concurrent creates for an account one
/// below its quota, exactly one succeeds; of N concurrent spends on a balance of M, exactly
/// `min(N, M)` do. An operation that times out may still be applied once Redis gets to it.
/// [`changes`](RedisKeyStore::changes) tells every instance's cache which keys changed.
///
/// Clones are cheap and share the connection. Its `Debug` shows the prefix and the timeout,
/// never the connection (whose URL may hold a password).
///
/// # Redis Cluster
///
/// On a cluster, the store runs the same scripts, with the same guarantees: quotas exact under
/// concurrent creates, every write one atomic script (no failure leaves it half done), and
/// `find` one round trip. For that, every Redis key of a store begins with its prefix in
/// braces, `{<prefix>}:`, a hash tag that keeps them all in one hash slot, since Redis runs a
/// script only on keys of one slot.
///
/// The cost is that a cluster does not spread one store: its keys live on the one master that
/// holds its slot (and on that master's replicas), and every lookup goes there. A key takes
/// under 1 KB of Redis memory all told, so a million keys fit in about a gigabyte; a
/// [`CachedKeyStore`](super::CachedKeyStore) in front keeps most lookups off Redis, and stores
/// with different prefixes land in different slots. Spreading accounts over slots would lose
/// the guarantees: `find` knows only the lookup id, so a record's slot would follow its lookup
/// id while a quota is counted per account, and a create or a revocation would be two scripts
/// on two slots, with a moment between them where a failure leaves them disagreeing.
///
/// ```no_run
/// use std::time::Duration;
///
/// use redis::aio::ConnectionManager;
/// use tower_api_key::{ApiKeyLayer, KeyManager, NewKey, Tier, store::RedisKeyStore};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let connection = ConnectionManager::new(client).await?;
/// // No schema to apply; a prefix of its own keeps this application's keys apart.
/// let store = RedisKeyStore::new(connection)
///     .prefix("billing-api")
///     .timeout(Duration::from_secs(1));
///
/// let keys = KeyManager::new(store.clone());
/// let created = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await?;
/// println!("your key, shown once: {}", created.key.expose_secret());
///
/// let layer = ApiKeyLayer::new(store); // or `keys.layer()`, with the manager's clock
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisKeyStore {
    redis: Redis,
    usage: UsageQueue,
}

/// The connection and where the keys are: all that the last-used writer needs too.
#[derive(Clone)]
struct Redis {
    connection: Connection,
    prefix: Arc<str>,
    timeout: Duration,
}

/// A single Redis or a cluster: the scripts and commands are the same, only the routing
/// differs.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, command: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(command),
            Self::Cluster(connection) => connection.req_packed_command(command),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

impl RedisKeyStore {
    /// A store on a single Redis (with or without replicas) over `connection`, with the prefix
    /// `tower-api-key` and a timeout of 2 seconds.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it starts the task that writes last-used times.
    pub fn new(connection: ConnectionManager) -> Self {
        Self::over(Connection::Single(connection))
    }

    /// A store on a Redis Cluster over `connection`, otherwise as [`RedisKeyStore::new`]. All
    /// the store's keys are in the hash slot of its prefix (see
    /// [Redis Cluster](RedisKeyStore#redis-cluster)).
    ///
    /// ```no_run
    /// use redis::cluster::ClusterClient;
    /// use tower_api_key::store::RedisKeyStore;
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let nodes = ["redis://redis-a:6379", "redis://redis-b:6379", "redis://redis-c:6379"];
    /// let connection = ClusterClient::new(nodes)?.get_async_connection().await?;
    /// let store = RedisKeyStore::cluster(connection).prefix("billing-api");
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`RedisKeyStore::new`].
    pub fn cluster(connection: ClusterConnection) -> Self {
        Self::over(Connection::Cluster(connection))
    }

    fn over(connection: Connection) -> Self {
        Self::start(Redis {
            connection,
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Keeps every Redis key of this store under `{prefix}:` (the braces included: they make
    /// the prefix the keys' hash tag), instead of `{tower-api-key}:`.
    ///
    /// # Panics
    ///
    /// If `prefix` is empty or holds a `{` or `}`, which would break the hash tag. Also outside
    /// a tokio runtime, as [`RedisKeyStore::new`].
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix: String = prefix.into();
        assert!(
            !prefix.is_empty() && !prefix.contains(['{', '}']),
            "RedisKeyStore::prefix: {prefix:?} must be non-empty and hold no `{{` or `}}`"
        );
        Self::start(Redis {
            prefix: prefix.into(),
            ..self.redis
        })
    }

    /// Fails each operation that takes longer than `timeout` with a [`StoreError`], so that
    /// the layer answers `503` instead of waiting for a Redis that does not answer.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`RedisKeyStore::new`].
    pub fn timeout(self, timeout: Duration) -> Self {
        Self::start(Redis {
            timeout,
            ..self.redis
        })
    }

    /// The feed that tells a [`CachedKeyStore`](super::CachedKeyStore) in front of this store
    /// which keys changed, through any instance: it subscribes to the channel
    /// `{<prefix>}:changes`, on which every create, revocation, deletion and rotation publishes
    /// the lookup id of each key it changes.
    ///
    /// The feed holds a pub/sub connection of its own, made from `client` (the store's
    /// connection cannot subscribe); the cache trusts it only once a check message published
    /// through the store's connection has come back on it; it checks the connection with a
    /// `PING` after each idle second, and reconnects by itself. Changes made to the store's
    /// Redis keys by anything but this crate (`redis-cli`, say) are not pushed. On a cluster, give it a client for any one node: a message
    /// published on one node reaches the subscribers of every node. While that node is down,
    /// the cache serves nothing it holds, and every lookup goes to Redis.
    ///
    /// ```no_run
    /// use redis::aio::ConnectionManager;
    /// use tower_api_key::{ApiKeyLayer, store::{CachedKeyStore, RedisKeyStore}};
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let store = RedisKeyStore::new(ConnectionManager::new(client.clone()).await?);
    /// let cached = CachedKeyStore::new(store.clone()).push_invalidation(store.changes(client));
    /// let layer = ApiKeyLayer::new(cached);
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn changes(&self, client: ::redis::Client) -> super::ChangeFeed {
        let channel = self.redis.channel();
        let timeout = self.redis.timeout;
        let redis = self.redis.clone();
        super::ChangeFeed::new(move |invalidator| async move {
            super::changes::resubscribe("redis", invalidator, |invalidator| {
                listen(
                    redis.clone(),
                    client.clone(),
                    channel.clone(),
                    timeout,
                    invalidator,
                )
            })
            .await;
        })
    }

    /// The store over `redis`, with its own last-used writer (the replaced one stops once its
    /// queue is dropped).
    fn start(redis: Redis) -> Self {
        let writer = redis.clone();
        let usage = UsageQueue::spawn(move |key_id, at| {
            let redis = writer.clone();
            async move { redis.record_last_use(&key_id, at).await }
        });
        Self { redis, usage }
    }
}

impl fmt::Debug for RedisKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeyStore")
            .field("prefix", &self.redis.prefix)
            .field("timeout", &self.redis.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyStore for RedisKeyStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        let mut command = ::redis::cmd("HGETALL");
        command.arg(self.redis.key("lookup", &lookup_id.to_hex()));
        let fields = within("Redis", self.redis.timeout, self.redis.query(&command)).await?;
        parse_record(fields)
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        self.usage.push(record.identity.key_id(), at);
    }
}

#[async_trait]
impl WritableKeyStore for RedisKeyStore {
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        within(
            "Redis",
            self.redis.timeout,
            self.redis.create(&record, &quota),
        )
        .await
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        within("Redis", self.redis.timeout, self.redis.list(account_id)).await
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        within(
            "Redis",
            self.redis.timeout,
            self.redis.get(account_id, key_id),
        )
        .await
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let at = [micros(at)?.to_string()];
        let revoke = self.redis.change(&REVOKE, account_id, key_id, &at);
        within("Redis", self.redis.timeout, revoke).await
    }

    async fn set_disabled(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: Option<SystemTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let at = [at
            .map(micros)
            .transpose()?
            .map_or(String::new(), |at| at.to_string())];
        let change = self.redis.change(&SET_DISABLED, account_id, key_id, &at);
        within("Redis", self.redis.timeout, change).await
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let delete = self.redis.change(&DELETE, account_id, key_id, &[]);
        within("Redis", self.redis.timeout, delete).await
    }

    async fn spend_credits(
        &self,
        key_id: &KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<Option<Spend>, StoreError> {
        let spend = self.redis.spend(key_id, cost, now);
        within("Redis", self.redis.timeout, spend).await
    }

    async fn top_up_credits(
        &self,
        account_id: &str,
        key_id: &KeyId,
        amount: u64,
        now: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let [day, month] = period_starts(now)?;
        let args = [amount.to_string(), day, month];
        let top_up = self.redis.change(&TOP_UP, account_id, key_id, &args);
        within("Redis", self.redis.timeout, top_up).await
    }
}

/// What [`RedisKeyStore::take_rate`] took.
#[cfg(feature = "rate-limit")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    /// How many requests were taken: at least 1, at most the number wanted.
    pub(crate) granted: u32,
    /// How many more could be taken at once right after.
    pub(crate) remaining: u32,
}

#[cfg(feature = "rate-limit")]
impl RedisKeyStore {
    /// The longest interval and tolerance a rate counter keeps, in microseconds (about 142
    /// years): so that every number of its script stays below 2^53, exact in Lua's doubles.
    const RATE_MICROS_MAX: u64 = 1 << 52;

    /// Takes up to `want` requests (>= 1; 0 counts as 1) from `subject`'s GCRA counter under
    /// `limit`, in one atomic step, by the Redis server's clock (`TIME`), so that instances
    /// whose clocks differ share one limit.
    ///
    /// `Ok(Ok(Taken { granted, remaining }))` with `1 <= granted <= want`, or
    /// `Ok(Err(retry_after))` when not even one request is available. The counter is the
    /// Redis key `{<prefix>}:rate:<subject>`: subjects of different kinds (key ids, account
    /// ids) must not collide. Times are whole microseconds: the interval between requests,
    /// `limit`'s period divided by its requests, is rounded up to one, so that no more than
    /// the limit ever passes (beyond a million requests per second, a million per second
    /// do). One round trip (`EVALSHA`), bounded by the store's timeout.
    pub(crate) async fn take_rate(
        &self,
        subject: &str,
        limit: RateLimit,
        want: u32,
    ) -> Result<Result<Taken, Duration>, StoreError> {
        let interval = limit.interval().as_nanos().div_ceil(1_000).max(1);
        let interval = u64::try_from(interval)
            .unwrap_or(u64::MAX)
            .min(Self::RATE_MICROS_MAX);
        let tolerance =
            (interval.saturating_mul(limit.burst_size().into())).min(Self::RATE_MICROS_MAX);
        let keys = [self.redis.key("rate", subject)];
        let args = [
            interval.to_string(),
            tolerance.to_string(),
            want.max(1).to_string(),
        ];
        let take = self.redis.run::<(i64, i64)>(&TAKE_RATE, &keys, &args);
        let (granted, other) = within("Redis", self.redis.timeout, take).await?;
        let unexpected = || StoreError::new("the Redis rate limit script gave an unknown answer");
        if granted < 1 {
            let retry_after = u64::try_from(other).map_err(|_| unexpected())?;
            return Ok(Err(Duration::from_micros(retry_after)));
        }
        Ok(Ok(Taken {
            granted: u32::try_from(granted).map_err(|_| unexpected())?,
            remaining: u32::try_from(other).map_err(|_| unexpected())?,
        }))
    }
}

impl Redis {
    /// The Redis key `{<prefix>}:<kind>:<name>`.
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{{{}}}:{kind}:{name}", self.prefix)
    }

    /// The pub/sub channel the scripts announce changes on.
    fn channel(&self) -> String {
        format!("{{{}}}:changes", self.prefix)
    }

    /// The lookup id (hex) that key `key_id` has, if it exists: read before a script so that
    /// the script can declare the record's Redis key.
    async fn lookup_hex_of(&self, key_id: &KeyId) -> Result<Option<String>, StoreError> {
        let mut command = ::redis::cmd("GET");
        command.arg(self.key("id", key_id.as_str()));
        self.query(&command).await
    }

    async fn create(&self, record: &KeyRecord, quota: &Quota) -> Result<(), CreateError> {
        let identity = &record.identity;
        let (key_id, account_id) = (identity.key_id(), identity.account_id());
        let lookup_hex = record.digest.lookup_id().to_hex();
        let mut keys = vec![
            self.key("id", key_id.as_str()),
            self.key("lookup", &lookup_hex),
            self.key("account", account_id),
            self.key("active", account_id),
        ];
        let mut args = vec![
            self.channel(),
            quota.limit.to_string(),
            micros(quota.now)?.to_string(),
            lookup_hex,
            key_id.to_string(),
            account_id.to_owned(),
        ];
        // The retiring key's id, new expiry and lookup id, or three blanks. Its lookup id, and
        // so its record's Redis key, are read at each attempt.
        match &quota.retiring {
            Some((retiring, retire_at)) => {
                keys.extend([self.key("id", retiring.as_str()), String::new()]);
                let retire_at = micros(*retire_at)?.to_string();
                args.extend([retiring.to_string(), retire_at, String::new()]);
            }
            None => args.extend([String::new(), String::new(), String::new()]),
        }
        args.extend(record_fields(record)?);
        for _ in 0..ATTEMPTS {
            if let Some((retiring, _)) = &quota.retiring {
                let Some(retiring_hex) = self.lookup_hex_of(retiring).await? else {
                    return Err(CreateError::RetiringKeyNotFound);
                };
                keys[5] = self.key("lookup", &retiring_hex);
                args[8] = retiring_hex;
            }
            let outcome: String = self.run(&CREATE, &keys, &args).await?;
            return match outcome.as_str() {
                "created" => Ok(()),
                "limit_reached" => Err(CreateError::LimitReached),
                "retiring_key_not_found" => Err(CreateError::RetiringKeyNotFound),
                "already_exists" => Err(CreateError::AlreadyExists),
                "moved" => continue,
                _ => Err(StoreError::new("the Redis create script gave an unknown answer").into()),
            };
        }
        Err(moved_meanwhile().into())
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let mut command = ::redis::cmd("SMEMBERS");
        command.arg(self.key("account", account_id));
        let key_ids: Vec<String> = self.query(&command).await?;
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut command = ::redis::cmd("MGET");
        for key_id in &key_ids {
            command.arg(self.key("id", key_id));
        }
        let lookups: Vec<Option<String>> = self.query(&command).await?;
        let mut pipeline = ::redis::pipe();
        let mut listed = Vec::new();
        for (key_id, lookup_hex) in key_ids.iter().zip(&lookups) {
            if let Some(lookup_hex) = lookup_hex {
                pipeline.cmd("HGETALL").arg(self.key("lookup", lookup_hex));
                listed.push(key_id);
            }
        }
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let records: Vec<HashMap<String, String>> = pipeline
            .query_async(&mut connection)
            .await
            .map_err(StoreError::new)?;
        let mut found = Vec::with_capacity(records.len());
        for (key_id, fields) in listed.into_iter().zip(records) {
            if let Some(record) = parse_record(fields)? {
                if is_of(&record, account_id, key_id) {
                    found.push(record);
                }
            }
        }
        Ok(found)
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let Some(lookup_hex) = self.lookup_hex_of(key_id).await? else {
            return Ok(None);
        };
        let mut command = ::redis::cmd("HGETALL");
        command.arg(self.key("lookup", &lookup_hex));
        let record = parse_record(self.query(&command).await?)?;
        Ok(record.filter(|record| is_of(record, account_id, key_id.as_str())))
    }

    /// Runs `script` (revoke, delete or top up) on key `key_id` of `account_id`, with `extra` as
    /// its last arguments: the record after the change, or `None` if there is no such key.
    async fn change(
        &self,
        script: &Script,
        account_id: &str,
        key_id: &KeyId,
        extra: &[String],
    ) -> Result<Option<KeyRecord>, StoreError> {
        for _ in 0..ATTEMPTS {
            let Some(lookup_hex) = self.lookup_hex_of(key_id).await? else {
                return Ok(None);
            };
            let keys = [
                self.key("id", key_id.as_str()),
                self.key("lookup", &lookup_hex),
                self.key("account", account_id),
                self.key("active", account_id),
            ];
            let mut args = vec![
                self.channel(),
                lookup_hex,
                account_id.to_owned(),
                key_id.to_string(),
            ];
            args.extend_from_slice(extra);
            // `None`: the key's lookup id changed between the two round trips.
            let fields: Option<HashMap<String, String>> = self.run(script, &keys, &args).await?;
            if let Some(fields) = fields {
                return parse_record(fields);
            }
        }
        Err(moved_meanwhile())
    }

    /// Spends `cost` of key `key_id`'s credits at `now`: see [`SPEND_LUA`].
    async fn spend(
        &self,
        key_id: &KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<Option<Spend>, StoreError> {
        let [day, month] = period_starts(now)?;
        for _ in 0..ATTEMPTS {
            let Some(lookup_hex) = self.lookup_hex_of(key_id).await? else {
                return Ok(None);
            };
            let keys = [
                self.key("id", key_id.as_str()),
                self.key("lookup", &lookup_hex),
            ];
            let args = [lookup_hex, cost.to_string(), day.clone(), month.clone()];
            // `None`: the key's lookup id changed between the two round trips.
            let answer: Option<Vec<Option<String>>> = self.run(&SPEND, &keys, &args).await?;
            if let Some(answer) = answer {
                return parse_spend(answer).map(Some);
            }
        }
        Err(moved_meanwhile())
    }

    /// Sets the key's `last_used_at` to `at` unless it already holds a later time.
    async fn record_last_use(&self, key_id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        let at = micros(at)?.to_string();
        within("Redis", self.timeout, async {
            let Some(lookup_hex) = self.lookup_hex_of(key_id).await? else {
                return Ok(());
            };
            let keys = [
                self.key("id", key_id.as_str()),
                self.key("lookup", &lookup_hex),
            ];
            // A key deleted meanwhile has no use to record.
            self.run::<i64>(&RECORD_USE, &keys, &[lookup_hex, at])
                .await
                .map(drop)
        })
        .await
    }

    /// Runs `script` with `keys` as its `KEYS` and `args` as its `ARGV`.
    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut connection = self.connection.clone();
        (invocation.invoke_async(&mut connection).await).map_err(StoreError::new)
    }

    async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        (command.query_async(&mut connection).await).map_err(StoreError::new)
    }
}

/// One session of [`RedisKeyStore::changes`]: subscribes to `channel` and relays each message,
/// until the connection fails (an error) or the cache is gone.
async fn listen(
    redis: Redis,
    client: ::redis::Client,
    channel: String,
    timeout: Duration,
    invalidator: super::Invalidator,
) -> Result<(), StoreError> {
    use futures_core::Stream;

    /// How long the connection may stay silent before a `PING` checks it.
    const IDLE: Duration = super::changes::FEED_IDLE;
    let pubsub = within("Redis", timeout, async {
        let mut pubsub = client.get_async_pubsub().await.map_err(StoreError::new)?;
        // Returns once Redis has confirmed the subscription.
        pubsub.subscribe(&channel).await.map_err(StoreError::new)?;
        Ok::<_, StoreError>(pubsub)
    })
    .await?;
    let (mut sink, mut messages) = pubsub.split();
    // Trusted only once a message published the way the scripts publish (from the store's slot,
    // through the store's connection) has arrived: a client for another server or database, or
    // a cluster node cut off from the slot's master, would otherwise listen to silence.
    let nonce = format!("listening:{}", uuid::Uuid::new_v4().simple());
    within("Redis", timeout, async {
        let slot_key = redis.key("feed", "check");
        // The count is of this node's subscribers only, on a cluster: not a check.
        let _: i64 = redis
            .run(&PUBLISH, &[slot_key], &[channel.clone(), nonce.clone()])
            .await?;
        loop {
            let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut messages).poll_next(cx));
            let message = next
                .await
                .ok_or_else(|| StoreError::new("the Redis pub/sub connection was lost"))?;
            let payload = std::str::from_utf8(message.get_payload_bytes()).unwrap_or("");
            if payload == nonce {
                return Ok::<_, StoreError>(());
            }
        }
    })
    .await
    .map_err(|error| {
        StoreError::new(format!(
            "the change feed did not hear its own check message ({error}): give it a client \
             for the store's Redis"
        ))
    })?;
    invalidator.listening();
    while !invalidator.is_closed() {
        // Receiving is cancel-safe: a message that arrives after the timeout waits for the next poll.
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut messages).poll_next(cx));
        match tokio::time::timeout(IDLE, next).await {
            Ok(Some(message)) => {
                let payload = std::str::from_utf8(message.get_payload_bytes());
                match payload.ok().and_then(LookupId::from_hex) {
                    Some(lookup_id) => invalidator.changed(&lookup_id),
                    // Another feed's check message: no change.
                    None if payload.is_ok_and(|text| text.starts_with("listening:")) => {}
                    // Not the scripts': it may still mean a change, so forget everything.
                    None => invalidator.listening(),
                }
            }
            Ok(None) => return Err(StoreError::new("the Redis pub/sub connection was lost")),
            Err(_idle) => {
                let ping = async { sink.ping::<Value>().await.map_err(StoreError::new) };
                within("Redis", timeout, ping).await?;
            }
        }
    }
    Ok(())
}

/// Whether `record` is key `key_id` of `account_id`, as the key id's entry promised.
fn is_of(record: &KeyRecord, account_id: &str, key_id: &str) -> bool {
    record.identity.account_id() == account_id && record.identity.key_id().as_str() == key_id
}

fn moved_meanwhile() -> StoreError {
    StoreError::new("the key was deleted and created again in Redis while it was being changed")
}

/// The record's fields as `HSET` arguments: name, value, name, value...
fn record_fields(record: &KeyRecord) -> Result<Vec<String>, StoreError> {
    let identity = &record.identity;
    let mut fields = vec![
        ("digest", record.digest.to_hex()),
        ("key_id", identity.key_id().to_string()),
        ("account_id", identity.account_id().to_owned()),
        ("name", identity.name().to_owned()),
        ("tier", identity.tier().to_string()),
        ("mode", identity.mode().to_string()),
    ];
    if let Some(scopes) = identity.scopes() {
        fields.push(("scopes", scopes.to_string()));
    }
    if let Some(metadata) = identity.metadata() {
        fields.push(("metadata", metadata.to_string()));
    }
    if let Some(hint) = &record.hint {
        fields.push(("hint", hint.to_string()));
    }
    if let Some(limit) = identity.rate_limit() {
        let json = serde_json::to_string(&limit).map_err(StoreError::new)?;
        fields.push(("rate_limit", json));
    }
    if let Some(credits) = &record.credits {
        fields.push(("credits_remaining", credits.remaining.to_string()));
        if let Some(refill) = credits.refill {
            fields.push(("credits_refill_amount", refill.amount.to_string()));
            fields.push(("credits_refill_every", period_name(refill.every).to_owned()));
        }
    }
    let times = [
        ("created_at", record.created_at),
        ("expires_at", record.expires_at),
        ("revoked_at", record.revoked_at),
        ("disabled_at", record.disabled_at),
        ("last_used_at", record.last_used_at),
        (
            "credits_refilled_at",
            record.credits.and_then(|credits| credits.refilled_at),
        ),
    ];
    for (name, time) in times {
        if let Some(time) = time {
            fields.push((name, micros(time)?.to_string()));
        }
    }
    Ok(fields
        .into_iter()
        .flat_map(|(name, value)| [name.to_owned(), value])
        .collect())
}

/// The record held in `fields`, or `None` if there are none (no such record).
fn parse_record(fields: HashMap<String, String>) -> Result<Option<KeyRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut fields = Fields(fields);
    let digest =
        KeyDigest::from_hex(&fields.required("digest")?).ok_or_else(|| malformed("digest"))?;
    let mut identity = KeyIdentity::new(
        KeyId::new(fields.required("key_id")?),
        fields.required("account_id")?,
        fields.required("name")?,
        Tier::new(fields.required("tier")?),
    );
    if let Some(mode) = fields.optional("mode") {
        let mode = KeyMode::parse(&mode).ok_or_else(|| malformed("mode"))?;
        identity = identity.with_mode(mode);
    }
    if let Some(scopes) = fields.optional("scopes") {
        let scopes = Scopes::new(scopes.split(' ')).map_err(|_| malformed("scopes"))?;
        identity = identity.with_scopes(scopes);
    }
    if let Some(metadata) = fields.optional("metadata") {
        let metadata = serde_json::from_str(&metadata).map_err(|_| malformed("metadata"))?;
        identity = identity.with_metadata(metadata);
    }
    if let Some(limit) = fields.optional("rate_limit") {
        let limit = serde_json::from_str(&limit).map_err(|_| malformed("rate_limit"))?;
        identity = identity.with_rate_limit(limit);
    }
    Ok(Some(KeyRecord {
        credits: fields.credits()?,
        digest,
        identity,
        expires_at: fields.time("expires_at")?,
        revoked_at: fields.time("revoked_at")?,
        disabled_at: fields.time("disabled_at")?,
        created_at: fields.time("created_at")?,
        last_used_at: fields.time("last_used_at")?,
        hint: fields.optional("hint").map(Into::into),
    }))
}

/// The spend script's answer: its outcome, then the balance's fields in the order it reads them.
fn parse_spend(answer: Vec<Option<String>>) -> Result<Spend, StoreError> {
    const FIELDS: [&str; 4] = [
        "credits_remaining",
        "credits_refill_amount",
        "credits_refill_every",
        "credits_refilled_at",
    ];
    let unexpected = || StoreError::new("the Redis spend script gave an unknown answer");
    let mut answer = answer.into_iter();
    let outcome = answer.next().flatten().ok_or_else(unexpected)?;
    if outcome == "unmetered" {
        return Ok(Spend::Unmetered);
    }
    let fields = FIELDS
        .iter()
        .zip(answer)
        .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
        .collect();
    let credits = Fields(fields).credits()?.ok_or_else(unexpected)?;
    match outcome.as_str() {
        "spent" => Ok(Spend::Spent(credits)),
        "exhausted" => Ok(Spend::Exhausted(credits)),
        _ => Err(unexpected()),
    }
}

/// The starts of the day and of the month that `now` falls in (UTC), in microseconds: when a
/// daily or a monthly refill last fell due, for the credit scripts.
fn period_starts(now: SystemTime) -> Result<[String; 2], StoreError> {
    let day = micros(RefillPeriod::Day.start_of(now))?;
    let month = micros(RefillPeriod::Month.start_of(now))?;
    Ok([day.to_string(), month.to_string()])
}

/// A record's fields as Redis returned them, taken out one by one.
struct Fields(HashMap<String, String>);

impl Fields {
    fn optional(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    fn required(&mut self, name: &str) -> Result<String, StoreError> {
        self.optional(name).ok_or_else(|| malformed(name))
    }

    /// A count of credits: a decimal `u64`, as the scripts keep it.
    fn count(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        self.optional(name)
            .map(|value| value.parse().map_err(|_| malformed(name)))
            .transpose()
    }

    /// The balance of credits, if the key has one: `credits_remaining`, with a refill if
    /// `credits_refill_amount` and `credits_refill_every` are set (both or neither).
    fn credits(&mut self) -> Result<Option<Credits>, StoreError> {
        let remaining = self.count("credits_remaining")?;
        let amount = self.count("credits_refill_amount")?;
        let every = self.optional("credits_refill_every");
        let refilled_at = self.time("credits_refilled_at")?;
        let Some(remaining) = remaining else {
            // Parts of a balance without the balance: not what this store writes.
            return match (amount, every, refilled_at) {
                (None, None, None) => Ok(None),
                _ => Err(malformed("credits_remaining")),
            };
        };
        let refill = match (amount, every) {
            (None, None) => None,
            (Some(amount), Some(every)) => {
                let every =
                    parse_period(&every).ok_or_else(|| malformed("credits_refill_every"))?;
                Some(Refill { amount, every })
            }
            (None, Some(_)) => return Err(malformed("credits_refill_amount")),
            (Some(_), None) => return Err(malformed("credits_refill_every")),
        };
        Ok(Some(Credits {
            remaining,
            refill,
            refilled_at,
        }))
    }

    fn time(&mut self, name: &str) -> Result<Option<SystemTime>, StoreError> {
        self.optional(name)
            .map(|value| {
                value
                    .parse()
                    .ok()
                    .and_then(from_micros)
                    .ok_or_else(|| malformed(name))
            })
            .transpose()
    }
}

/// How `credits_refill_every` names a refill period (as `RefillPeriod` serializes).
fn period_name(period: RefillPeriod) -> &'static str {
    match period {
        RefillPeriod::Day => "day",
        RefillPeriod::Month => "month",
    }
}

fn parse_period(name: &str) -> Option<RefillPeriod> {
    [RefillPeriod::Day, RefillPeriod::Month]
        .into_iter()
        .find(|period| period_name(*period) == name)
}

/// The error for a record that is not what this store writes. It names the field only: the
/// value could be a digest.
fn malformed(field: &str) -> StoreError {
    StoreError::new(format!(
        "an API key record in Redis has a missing or malformed `{field}`"
    ))
}

/// `time` as whole microseconds since the Unix epoch (negative before it).
fn micros(time: SystemTime) -> Result<i64, StoreError> {
    let micros = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).ok(),
        Err(before) => i64::try_from(before.duration().as_micros())
            .ok()
            .map(|micros| -micros),
    };
    micros.ok_or_else(|| StoreError::new("a time too far from 1970 to store in Redis"))
}

fn from_micros(micros: i64) -> Option<SystemTime> {
    let distance = Duration::from_micros(micros.unsigned_abs());
    if micros < 0 {
        UNIX_EPOCH.checked_sub(distance)
    } else {
        UNIX_EPOCH.checked_add(distance)
    }
}

/// Lua shared by the scripts. Times are compared as Lua numbers (exact to the microsecond
/// until the year 2255) and written back as the strings given, so no rounding is ever stored.
const LUA_HELPERS: &str = r#"
local function micros(value)
  local number = tonumber(value)
  if not number then error('an API key record in Redis has a malformed time') end
  return number
end

local function is_active(record, now)
  local times = redis.call('HMGET', record, 'revoked_at', 'expires_at')
  return not times[1] and (not times[2] or now < micros(times[2]))
end
"#;

/// KEYS: the new key's id entry and record, its account's set and active set, then for a
/// rotation the retiring key's id entry and record. ARGV: the channel, limit, now, the new
/// key's lookup id in hex, key id and account id, the retiring key's id, new expiry and lookup
/// id in hex (blank without one), then the record's fields as `HSET` arguments.
const CREATE_LUA: &str = r#"
local id, record, account, active_set = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local retiring_id, retiring_record = KEYS[5], KEYS[6]
local channel, limit, now = ARGV[1], tonumber(ARGV[2]), micros(ARGV[3])
local lookup_hex, key_id, account_id = ARGV[4], ARGV[5], ARGV[6]
local retiring, retire_at, retiring_hex = ARGV[7], ARGV[8], ARGV[9]

if redis.call('EXISTS', id) == 1 or redis.call('EXISTS', record) == 1 then
  return 'already_exists'
end

if retiring_record then
  if redis.call('GET', retiring_id) ~= retiring_hex then return 'moved' end
  local owner = redis.call('HMGET', retiring_record, 'key_id', 'account_id')
  if owner[1] ~= retiring or owner[2] ~= account_id or not is_active(retiring_record, now) then
    return 'retiring_key_not_found'
  end
end

-- Counted from the active set alone, so revoked and expired history is never read.
redis.call('ZREMRANGEBYSCORE', active_set, '-inf', ARGV[3])
local active = redis.call('ZCARD', active_set)
if retiring_record and redis.call('ZSCORE', active_set, retiring) then active = active - 1 end
if active >= limit then return 'limit_reached' end

if retiring_record then
  local own = redis.call('HGET', retiring_record, 'expires_at')
  if not own or micros(retire_at) < micros(own) then
    redis.call('HSET', retiring_record, 'expires_at', retire_at)
    redis.call('ZADD', active_set, 'XX', retire_at, retiring)
  end
  redis.call('PUBLISH', channel, retiring_hex)
end

redis.call('HSET', record, unpack(ARGV, 10))
redis.call('SET', id, lookup_hex)
redis.call('SADD', account, key_id)
if is_active(record, now) then
  local expires_at = redis.call('HGET', record, 'expires_at') or '+inf'
  redis.call('ZADD', active_set, expires_at, key_id)
end
-- A negative entry for this lookup id may be cached somewhere.
redis.call('PUBLISH', channel, lookup_hex)
return 'created'
"#;

/// KEYS: the key's id entry, record, account's set and active set. ARGV: the channel, the
/// key's lookup id in hex, account id, key id, time. The record after the change, an empty one
/// if the account has no such key, or nil if the id entry no longer points at that record.
/// `HSETNX` keeps the first revocation time.
const REVOKE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return false end
local owner = redis.call('HMGET', KEYS[2], 'key_id', 'account_id')
if owner[1] ~= ARGV[4] or owner[2] ~= ARGV[3] then return {} end
redis.call('HSETNX', KEYS[2], 'revoked_at', ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return redis.call('HGETALL', KEYS[2])
"#;

/// KEYS and ARGV as for revoking, with the time blank to enable the key. A disabled key stays
/// in the active set: it counts toward the quota. `HSETNX` keeps the first time it was disabled.
const SET_DISABLED_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return false end
local owner = redis.call('HMGET', KEYS[2], 'key_id', 'account_id')
if owner[1] ~= ARGV[4] or owner[2] ~= ARGV[3] then return {} end
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[2], 'disabled_at')
else
  redis.call('HSETNX', KEYS[2], 'disabled_at', ARGV[5])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return redis.call('HGETALL', KEYS[2])
"#;

/// KEYS and ARGV as for revoking, without the time. The deleted record, an empty one, or nil.
const DELETE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return false end
local owner = redis.call('HMGET', KEYS[2], 'key_id', 'account_id')
if owner[1] ~= ARGV[4] or owner[2] ~= ARGV[3] then return {} end
local record = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return record
"#;

/// KEYS: the key's id entry and record. ARGV: the key's lookup id in hex, time. Checks that the
/// record exists, as `HSET` would create one. Publishes nothing: no cache decides by it.
const RECORD_USE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local last = redis.call('HGET', KEYS[2], 'last_used_at')
if not last or micros(last) < micros(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'last_used_at', ARGV[2])
end
return 1
"#;

/// Lua shared by the credit scripts. A count of credits is a `u64`, kept in Redis as its decimal
/// string and handled as one: Lua's numbers are doubles, exact only below 2^53, so counts are
/// compared, subtracted and added digit by digit, exact over the whole `u64` range (a top-up
/// saturates at `u64::MAX`, as [`Credits::top_up`] does). Times are microseconds, as above.
const CREDITS_LUA: &str = r#"
local U64_MAX = '18446744073709551615'

local function count(value, field)
  local canonical = value == '0' or (type(value) == 'string' and value:match('^[1-9]%d*$'))
  if not canonical or #value > #U64_MAX or (#value == #U64_MAX and value > U64_MAX) then
    error('an API key record in Redis has a malformed ' .. field)
  end
  return value
end

-- -1, 0 or 1 as count a is below, equal to or above count b; byte by byte, so that no locale
-- has a say.
local function compare(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  for i = 1, #a do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end

-- a - b, for a >= b.
local function subtract(a, b)
  local digits, borrow = {}, 0
  for i = 0, #a - 1 do
    local digit = a:byte(#a - i) - 48 - borrow
    if i < #b then digit = digit - (b:byte(#b - i) - 48) end
    if digit < 0 then digit, borrow = digit + 10, 1 else borrow = 0 end
    digits[#a - i] = digit
  end
  local difference = table.concat(digits):gsub('^0+', '')
  if difference == '' then return '0' end
  return difference
end

-- a + b, or U64_MAX if the sum is larger.
local function add(a, b)
  local digits, carry, width = {}, 0, math.max(#a, #b)
  for i = 0, width - 1 do
    local digit = carry
    if i < #a then digit = digit + a:byte(#a - i) - 48 end
    if i < #b then digit = digit + b:byte(#b - i) - 48 end
    if digit >= 10 then digit, carry = digit - 10, 1 else carry = 0 end
    digits[width - i] = digit
  end
  local sum = table.concat(digits)
  if carry == 1 then sum = '1' .. sum end
  if compare(sum, U64_MAX) > 0 then return U64_MAX end
  return sum
end

-- The record's balance as {remaining, refill amount, refill period, refilled at} (false for
-- each field it lacks), refilled first if a refill fell due: a refill period began (day_start
-- or month_start) after refilled_at, or refilled_at is unset. Nil if the key has no balance.
local function balance(record, day_start, month_start)
  local credits = redis.call('HMGET', record, 'credits_remaining', 'credits_refill_amount',
    'credits_refill_every', 'credits_refilled_at')
  if not credits[1] then return nil end
  count(credits[1], 'credits_remaining')
  if credits[2] then
    count(credits[2], 'credits_refill_amount')
    local start
    if credits[3] == 'day' then start = day_start
    elseif credits[3] == 'month' then start = month_start
    else error('an API key record in Redis has a malformed credits_refill_every') end
    if not credits[4] or micros(credits[4]) < micros(start) then
      redis.call('HSET', record, 'credits_remaining', credits[2], 'credits_refilled_at', start)
      credits[1], credits[4] = credits[2], start
    end
  end
  return credits
end
"#;

/// KEYS: the key's id entry and record. ARGV: the key's lookup id in hex, the cost, the starts
/// of the current day and month (microseconds). Nil if the id entry no longer points at that
/// record, else the outcome (`spent`, `exhausted` or `unmetered`) and the balance's four
/// fields after it. Publishes nothing: no cache decides by a balance.
const SPEND_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local credits = balance(KEYS[2], ARGV[3], ARGV[4])
if not credits then return {'unmetered'} end
local cost = count(ARGV[2], 'cost')
local outcome = 'exhausted'
if compare(credits[1], cost) >= 0 then
  credits[1] = subtract(credits[1], cost)
  redis.call('HSET', KEYS[2], 'credits_remaining', credits[1])
  outcome = 'spent'
end
return {outcome, credits[1], credits[2], credits[3], credits[4]}
"#;

/// KEYS as for revoking. ARGV: the channel (unused), the key's lookup id in hex, account id,
/// key id, amount, the starts of the current day and month. As revoking answers. A key without
/// a balance gets one of `amount`, never refilled. Publishes nothing, as spending.
const TOP_UP_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return false end
local owner = redis.call('HMGET', KEYS[2], 'key_id', 'account_id')
if owner[1] ~= ARGV[4] or owner[2] ~= ARGV[3] then return {} end
local amount = count(ARGV[5], 'amount')
local credits = balance(KEYS[2], ARGV[6], ARGV[7])
local remaining = amount
if credits then remaining = add(credits[1], amount) end
redis.call('HSET', KEYS[2], 'credits_remaining', remaining)
return redis.call('HGETALL', KEYS[2])
"#;

/// KEYS: the subject's counter: its theoretical arrival time (TAT), integer microseconds by
/// the Redis server's clock. ARGV: the interval between requests, the tolerance (interval ×
/// burst), both in microseconds, and how many requests are wanted. `{granted, remaining}`, or
/// `{0, microseconds until one request is available}`.
///
/// Every number stays below 2^53 (the store caps interval and tolerance at 2^52 µs), so Lua's
/// doubles hold them exactly; the TAT is written with `%d`, never in exponent form. The
/// counter expires when the burst would be full again, when it no longer says anything.
#[cfg(feature = "rate-limit")]
const TAKE_RATE_LUA: &str = r#"
-- TIME before a write needs effects replication, the default since Redis 5.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval, tolerance, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if not tat then error('a rate counter in Redis is malformed') end
if tat < now then tat = now end

-- floor(span / interval), checked against the rounding of the division.
local span, available = now + tolerance - tat, 0
if span >= interval then
  available = math.floor(span / interval)
  if available * interval > span then available = available - 1 end
  if (available + 1) * interval <= span then available = available + 1 end
end
if available < 1 then return {0, tat + interval - tolerance - now} end

local granted = math.min(want, available)
tat = tat + granted * interval
local ttl = math.ceil((tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', string.format('%d', ttl))
return {granted, available - granted}
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_HELPERS}{body}"))
}

fn credits_script(body: &str) -> Script {
    Script::new(&format!("{LUA_HELPERS}{CREDITS_LUA}{body}"))
}

static CREATE: LazyLock<Script> = LazyLock::new(|| script(CREATE_LUA));
static REVOKE: LazyLock<Script> = LazyLock::new(|| script(REVOKE_LUA));
static SET_DISABLED: LazyLock<Script> = LazyLock::new(|| script(SET_DISABLED_LUA));
static DELETE: LazyLock<Script> = LazyLock::new(|| script(DELETE_LUA));
static RECORD_USE: LazyLock<Script> = LazyLock::new(|| script(RECORD_USE_LUA));
static SPEND: LazyLock<Script> = LazyLock::new(|| credits_script(SPEND_LUA));
static TOP_UP: LazyLock<Script> = LazyLock::new(|| credits_script(TOP_UP_LUA));
#[cfg(feature = "rate-limit")]
static TAKE_RATE: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_RATE_LUA));
/// KEYS: any key of the store's slot (so that a cluster runs it there); ARGV: channel, message.
static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new("return redis.call('PUBLISH', ARGV[1], ARGV[2])"));

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        let identity = KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", Tier::PRO)
            .with_metadata(serde_json::json!({"roles": [], "n": 9_007_199_254_740_993_u64}))
            .with_mode(KeyMode::Test)
            .with_scopes(Scopes::new(["keys:write", "iocs:read"]).unwrap());
        let at = UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_000);
        KeyRecord::new(KeyDigest::of("sk_live_x"), identity)
            .with_created_at(at)
            .with_expires_at(at + Duration::from_micros(1))
            .with_hint("sk_live_...abcd")
    }

    fn stored(record: &KeyRecord) -> HashMap<String, String> {
        let fields = record_fields(record).unwrap();
        fields
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect()
    }

    #[test]
    fn times_round_trip_to_the_microsecond_on_both_sides_of_1970() {
        for time in [
            UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_000),
            UNIX_EPOCH - Duration::new(86_400, 654_321_000),
            UNIX_EPOCH,
        ] {
            assert_eq!(from_micros(micros(time).unwrap()), Some(time));
        }
    }

    #[test]
    fn record_round_trips_through_its_fields() {
        let record = record();
        let parsed = parse_record(stored(&record)).unwrap().unwrap();
        assert!(parsed.digest.matches(&record.digest));
        assert_eq!(parsed.identity, record.identity);
        assert_eq!(parsed.created_at, record.created_at);
        assert_eq!(parsed.expires_at, record.expires_at);
        assert_eq!(parsed.revoked_at, None);
        assert_eq!(parsed.last_used_at, None);
        assert_eq!(parsed.hint, record.hint);
    }

    #[test]
    fn record_of_an_earlier_version_without_mode_or_scopes_is_a_live_key_with_full_access() {
        let mut fields = stored(&record());
        fields.remove("mode");
        fields.remove("scopes");
        let parsed = parse_record(fields).unwrap().unwrap();
        assert_eq!(parsed.identity.mode(), KeyMode::Live);
        assert!(parsed.identity.scopes().is_none());
    }

    #[test]
    fn rate_limit_and_credits_round_trip_through_their_fields() {
        let refilled_at = UNIX_EPOCH + Duration::from_secs(1_764_547_200);
        let credits = Credits::new(u64::MAX).refilled(Refill::monthly(1_000), refilled_at);
        let limit = crate::limit::RateLimit::per_minute(7).burst(3);
        let mut record = record().with_credits(credits);
        record.identity = record.identity.with_rate_limit(limit);
        let fields = stored(&record);
        assert_eq!(fields["credits_remaining"], "18446744073709551615");
        assert_eq!(fields["credits_refill_every"], "month");
        assert_eq!(
            fields["rate_limit"],
            r#"{"requests":7,"period_secs":60,"burst":3}"#
        );
        let parsed = parse_record(fields).unwrap().unwrap();
        assert_eq!(parsed.credits, Some(credits));
        assert_eq!(parsed.identity.rate_limit(), Some(limit));

        let never_refilled = record.with_credits(Credits::new(0));
        let parsed = parse_record(stored(&never_refilled)).unwrap().unwrap();
        assert_eq!(parsed.credits, Some(Credits::new(0)));
    }

    #[test]
    fn record_of_an_earlier_version_has_no_rate_limit_and_no_credits() {
        let fields = stored(&record());
        assert!(!fields.keys().any(|name| name.starts_with("credits_")));
        let parsed = parse_record(fields).unwrap().unwrap();
        assert_eq!(parsed.identity.rate_limit(), None);
        assert_eq!(parsed.credits, None);
    }

    #[test]
    fn malformed_or_partial_credits_are_an_error_that_names_the_field() {
        let refill = Credits::new(5).refilled(Refill::daily(9), UNIX_EPOCH);
        let record = record().with_credits(refill);
        for (field, junk) in [
            ("credits_remaining", "-1"),
            ("credits_remaining", "18446744073709551616"),
            ("credits_refill_amount", "1e3"),
            ("credits_refill_every", "week"),
            ("credits_refilled_at", "soon"),
            ("rate_limit", r#"{"requests":0,"period_secs":60}"#),
        ] {
            let mut fields = stored(&record);
            fields.insert(field.to_owned(), junk.to_owned());
            let error = parse_record(fields).unwrap_err().to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
        for (missing, named) in [
            ("credits_remaining", "credits_remaining"),
            ("credits_refill_every", "credits_refill_every"),
            ("credits_refill_amount", "credits_refill_amount"),
        ] {
            let mut fields = stored(&record);
            fields.remove(missing);
            let error = parse_record(fields).unwrap_err().to_string();
            assert!(error.contains(named), "{missing}: {error}");
        }
    }

    #[test]
    fn spend_answers_are_read_with_their_balance() {
        let some = |value: &str| Some(value.to_owned());
        let answer = vec![some("spent"), some("4"), some("9"), some("day"), some("0")];
        let credits = Credits::new(4).refilled(Refill::daily(9), UNIX_EPOCH);
        assert_eq!(parse_spend(answer).unwrap(), Spend::Spent(credits));
        let answer = vec![some("exhausted"), some("0"), None, None, None];
        assert_eq!(
            parse_spend(answer).unwrap(),
            Spend::Exhausted(Credits::new(0))
        );
        assert_eq!(
            parse_spend(vec![some("unmetered")]).unwrap(),
            Spend::Unmetered
        );
        assert!(parse_spend(vec![some("spent")]).is_err());
        assert!(parse_spend(vec![some("maybe"), some("1")]).is_err());
        assert!(parse_spend(Vec::new()).is_err());
    }

    #[test]
    fn no_fields_is_no_record() {
        assert!(parse_record(HashMap::new()).unwrap().is_none());
    }

    #[test]
    fn malformed_field_is_an_error_that_names_only_the_field() {
        let record = record();
        for (field, junk) in [
            ("digest", "zz"),
            ("created_at", "yesterday"),
            ("metadata", "{"),
            ("mode", "staging"),
            ("scopes", "iocs:read  keys:write"),
        ] {
            let mut fields = stored(&record);
            fields.insert(field.to_owned(), junk.to_owned());
            let error = parse_record(fields).unwrap_err().to_string();
            assert!(error.contains(field), "{error}");
            assert!(!error.contains(&record.digest.to_hex()[..8]), "{error}");
        }
        let mut fields = stored(&record);
        fields.remove("account_id");
        assert!(parse_record(fields).is_err());
    }
}

/// [`RedisKeyStore::take_rate`] on the Redis at `REDIS_URL`: crate-internal, so tested here
/// rather than in `tests/it`.
#[cfg(all(test, feature = "rate-limit"))]
mod rate_tests {
    use std::sync::Arc;

    use super::*;

    /// A store on the Redis at `REDIS_URL`, on a connection of its own, under a prefix no
    /// other run uses. Unset, the tests fail: a backend test that cannot reach its server
    /// must not pass.
    async fn store(prefix: &str) -> RedisKeyStore {
        let url = std::env::var("REDIS_URL").unwrap_or_default();
        assert!(
            !url.is_empty(),
            "REDIS_URL is not set: the `redis` feature's rate limit tests need a Redis server, \
             e.g. REDIS_URL=redis://127.0.0.1:6379 cargo test --all-features --lib redis"
        );
        let client = ::redis::Client::open(url.as_str())
            .unwrap_or_else(|error| panic!("REDIS_URL is not a Redis URL: {error}"));
        let connection = ConnectionManager::new(client)
            .await
            .unwrap_or_else(|error| panic!("cannot reach the Redis at REDIS_URL: {error}"));
        RedisKeyStore::new(connection).prefix(prefix)
    }

    /// A store on the Redis Cluster whose nodes `REDIS_CLUSTER_URLS` lists (comma-separated),
    /// on a connection of its own. Unset, the tests fail, as above.
    async fn cluster_store(prefix: &str) -> RedisKeyStore {
        let urls = std::env::var("REDIS_CLUSTER_URLS").unwrap_or_default();
        assert!(
            !urls.is_empty(),
            "REDIS_CLUSTER_URLS is not set: the `redis` feature's cluster tests need a Redis \
             Cluster; `bash .ci/redis-cluster.sh start` starts one on 127.0.0.1"
        );
        let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
        let connection = ::redis::cluster::ClusterClient::new(nodes)
            .unwrap_or_else(|error| panic!("REDIS_CLUSTER_URLS are not Redis URLs: {error}"))
            .get_async_connection()
            .await
            .unwrap_or_else(|error| panic!("cannot reach the cluster: {error}"));
        RedisKeyStore::cluster(connection).prefix(prefix)
    }

    fn unique(kind: &str) -> String {
        format!(
            "tower-api-key-test-{kind}-{}",
            uuid::Uuid::new_v4().simple()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_share_one_limit_of_exactly_the_burst() {
        let prefix = unique("rate");
        let stores = [
            store(&prefix).await,
            store(&prefix).await,
            store(&prefix).await,
        ];
        assert_instances_share_one_limit(stores).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_share_one_limit_of_exactly_the_burst_on_a_cluster() {
        let prefix = unique("rate");
        let stores = [
            cluster_store(&prefix).await,
            cluster_store(&prefix).await,
            cluster_store(&prefix).await,
        ];
        assert_instances_share_one_limit(stores).await;
    }

    /// 1,000 concurrent takes of one request each, spread over `stores`, under 100 per minute:
    /// exactly the burst passes, and the rest are told to retry within one interval.
    async fn assert_instances_share_one_limit(stores: [RedisKeyStore; 3]) {
        let stores = Arc::new(stores);
        let subject = unique("key");
        let limit = RateLimit::per_minute(100);
        let takes: Vec<_> = (0..1_000)
            .map(|index| {
                let (stores, subject) = (Arc::clone(&stores), subject.clone());
                tokio::spawn(async move { stores[index % 3].take_rate(&subject, limit, 1).await })
            })
            .collect();
        let (mut remaining, mut refused) = (Vec::new(), 0);
        for take in takes {
            match take.await.unwrap().unwrap() {
                Ok(taken) => {
                    assert_eq!(taken.granted, 1);
                    remaining.push(taken.remaining);
                }
                Err(retry_after) => {
                    assert!(retry_after > Duration::ZERO, "{retry_after:?}");
                    // One interval (600 ms), with slack for a clock read between calls.
                    assert!(retry_after <= Duration::from_millis(650), "{retry_after:?}");
                    refused += 1;
                }
            }
        }
        remaining.sort_unstable();
        assert_eq!(
            remaining,
            (0..100).collect::<Vec<u32>>(),
            "each of the burst's requests was granted once, in one order"
        );
        assert_eq!(refused, 900);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_take_of_several_gets_at_most_what_is_left() {
        let store = store(&unique("rate")).await;
        let subject = unique("account");
        let limit = RateLimit::per_minute(100);
        let taken = store.take_rate(&subject, limit, 95).await.unwrap().unwrap();
        assert_eq!(
            taken,
            Taken {
                granted: 95,
                remaining: 5
            }
        );
        let taken = store.take_rate(&subject, limit, 10).await.unwrap().unwrap();
        assert_eq!(
            taken,
            Taken {
                granted: 5,
                remaining: 0
            }
        );
        let refused = store.take_rate(&subject, limit, 10).await.unwrap();
        assert!(
            matches!(refused, Err(retry_after) if retry_after <= Duration::from_millis(600)),
            "{refused:?}"
        );
        // Another subject has a counter of its own.
        let other = store.take_rate(&unique("key"), limit, 1).await.unwrap();
        assert_eq!(
            other,
            Ok(Taken {
                granted: 1,
                remaining: 99
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_request_passes_after_its_retry_after_and_the_counter_expires() {
        let prefix = unique("rate");
        let store = store(&prefix).await;
        let subject = unique("key");
        let limit = RateLimit::per_second(10).burst(2);
        let taken = store.take_rate(&subject, limit, 5).await.unwrap().unwrap();
        assert_eq!(taken.granted, 2, "the burst");
        let retry_after = store
            .take_rate(&subject, limit, 1)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100),
            "{retry_after:?}"
        );
        tokio::time::sleep(retry_after + Duration::from_millis(5)).await;
        let taken = store.take_rate(&subject, limit, 5).await.unwrap().unwrap();
        assert_eq!(taken.granted, 1, "one interval later, one request");

        let mut connection = store.redis.connection.clone();
        let mut command = ::redis::cmd("PTTL");
        command.arg(format!("{{{prefix}}}:rate:{subject}"));
        let ttl: i64 = command.query_async(&mut connection).await.unwrap();
        assert!(
            (1..=200).contains(&ttl),
            "the burst is full again within 200 ms: {ttl}"
        );
    }
}
