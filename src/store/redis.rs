//! Redis store (feature `redis`): keys in Redis, shared by every instance of a service.
//!
//! Every Redis key starts with the store's prefix, so several applications can share one Redis:
//!
//! | Redis key                            | Type       | Holds                                  |
//! |--------------------------------------|------------|----------------------------------------|
//! | `{prefix}:lookup:{lookup id in hex}` | hash       | the record, so `find` is one `HGETALL` |
//! | `{prefix}:id:{key id}`               | string     | the key's lookup id in hex             |
//! | `{prefix}:account:{account id}`      | set        | all the account's key ids, for `list`  |
//! | `{prefix}:active:{account id}`       | sorted set | its active key ids, scored by expiry   |
//!
//! The active set scores each key id by its expiry in microseconds (`+inf` for none). A key
//! leaves it when it is revoked or deleted, and once expired at the next `create` of its
//! account, so a quota check costs the same however many revoked keys the account has had.
//!
//! A record's fields are `digest` (hex), `key_id`, `account_id`, `name`, `tier`, `mode` (`live`
//! or `test`; a record without it, written by an earlier version, is live) and, when set,
//! `scopes` (space-separated), `metadata` (JSON), `hint`, `created_at`, `expires_at`,
//! `revoked_at` and `last_used_at` (integer microseconds since the Unix epoch). Fields rather than one JSON document let the
//! scripts change a time in place: re-encoding the record with Lua's cjson would alter metadata
//! (`[]` becomes `{}`, integers are rounded to 14 digits).
//!
//! Every write is one Lua script, which Redis runs atomically with respect to every other
//! client: so `create` counts and inserts in one step for all application instances. The
//! scripts compute key names from the prefix, which standalone Redis (with or without
//! replicas) allows and Redis Cluster does not.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::ConnectionManager;
use ::redis::{FromRedisValue, RedisError, Script};
use async_trait::async_trait;

use super::usage::UsageQueue;
use super::{CreateError, KeyRecord, KeyStore, Quota, StoreError, WritableKeyStore};
use crate::identity::{KeyId, KeyIdentity, Tier};
use crate::key::{KeyDigest, LookupId};
use crate::mode::KeyMode;
use crate::scope::Scopes;

const DEFAULT_PREFIX: &str = "tower-api-key";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A store that keeps keys in Redis, so that every instance of a service sees the same keys,
/// revocations and quotas.
///
/// It works over the [`ConnectionManager`] you pass in, which reconnects by itself: when Redis
/// comes back after an outage, authentication resumes without restarting anything. Each
/// operation is bounded by a [timeout](RedisKeyStore::timeout) (2 seconds by default); a Redis
/// that is down, slow, or holds a malformed record gives a [`StoreError`], so the layer answers
/// `503`, never `401` and never a pass.
///
/// There is no schema to apply: Redis keys are created on the first write, all under the
/// [prefix](RedisKeyStore::prefix) (`tower-api-key` by default). Give each application sharing
/// a Redis its own prefix, and not one that extends another with a `:` (`app` and `app:keys`
/// could collide). The store needs a standalone Redis (replicas are fine), not Redis Cluster.
///
/// Creates, revocations, deletions and last-used updates are Lua scripts, each atomic across
/// every instance: of N concurrent creates for an account one below its quota, exactly one
/// succeeds. An operation that times out may still be applied once Redis gets to it.
///
/// Clones are cheap and share the connection. Its `Debug` shows the prefix and the timeout,
/// never the connection (whose URL may hold a password).
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
    connection: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

impl RedisKeyStore {
    /// A store over `connection`, with the prefix `tower-api-key` and a timeout of 2 seconds.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it starts the task that writes last-used times.
    pub fn new(connection: ConnectionManager) -> Self {
        Self::start(Redis {
            connection,
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Starts every Redis key of this store with `prefix` and a `:`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`RedisKeyStore::new`].
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into().into();
        Self::start(Redis {
            prefix,
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
        let key = format!("{}:lookup:{}", self.redis.prefix, lookup_hex(lookup_id));
        let mut connection = self.redis.connection.clone();
        let mut command = ::redis::cmd("HGETALL");
        command.arg(key);
        let fields = self
            .redis
            .within(command.query_async(&mut connection))
            .await?;
        parse_record(fields)
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        self.usage.push(record.identity.key_id(), at);
    }
}

#[async_trait]
impl WritableKeyStore for RedisKeyStore {
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        let mut args = vec![quota.limit.to_string(), micros(quota.now)?.to_string()];
        match &quota.retiring {
            Some((key_id, expires_at)) => {
                args.extend(["1".into(), key_id.to_string()]);
                args.push(micros(*expires_at)?.to_string());
            }
            None => args.extend(["0".into(), String::new(), String::new()]),
        }
        args.push(lookup_hex(&record.digest.lookup_id()));
        args.push(record.identity.key_id().to_string());
        args.push(record.identity.account_id().to_owned());
        args.extend(record_fields(&record)?);
        let outcome: String = self.redis.invoke(&CREATE, args).await?;
        match outcome.as_str() {
            "created" => Ok(()),
            "limit_reached" => Err(CreateError::LimitReached),
            "retiring_key_not_found" => Err(CreateError::RetiringKeyNotFound),
            "already_exists" => Err(CreateError::AlreadyExists),
            _ => Err(StoreError::new("the Redis create script gave an unknown answer").into()),
        }
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let records: Vec<HashMap<String, String>> = self
            .redis
            .invoke(&LIST, vec![account_id.to_owned()])
            .await?;
        records
            .into_iter()
            .filter_map(|fields| parse_record(fields).transpose())
            .collect()
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let args = vec![account_id.to_owned(), key_id.to_string()];
        parse_record(self.redis.invoke(&GET, args).await?)
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let args = vec![
            account_id.to_owned(),
            key_id.to_string(),
            micros(at)?.to_string(),
        ];
        parse_record(self.redis.invoke(&REVOKE, args).await?)
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let args = vec![account_id.to_owned(), key_id.to_string()];
        parse_record(self.redis.invoke(&DELETE, args).await?)
    }
}

impl Redis {
    /// Sets the key's `last_used_at` to `at` unless it already holds a later time.
    async fn record_last_use(&self, key_id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        let args = vec![key_id.to_string(), micros(at)?.to_string()];
        self.invoke::<i64>(&RECORD_USE, args).await.map(drop)
    }

    /// Runs `script` with the prefix and then `args` as its `ARGV`.
    async fn invoke<T: FromRedisValue>(
        &self,
        script: &Script,
        args: Vec<String>,
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&*self.prefix);
        for arg in &args {
            invocation.arg(arg);
        }
        let mut connection = self.connection.clone();
        self.within(invocation.invoke_async(&mut connection)).await
    }

    /// The outcome of `operation`, or an error once the timeout has passed.
    async fn within<T>(
        &self,
        operation: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, operation).await {
            Ok(outcome) => outcome.map_err(StoreError::new),
            Err(_) => Err(StoreError::new(format!(
                "Redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }
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
    let times = [
        ("created_at", record.created_at),
        ("expires_at", record.expires_at),
        ("revoked_at", record.revoked_at),
        ("last_used_at", record.last_used_at),
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
    Ok(Some(KeyRecord {
        digest,
        identity,
        expires_at: fields.time("expires_at")?,
        revoked_at: fields.time("revoked_at")?,
        created_at: fields.time("created_at")?,
        last_used_at: fields.time("last_used_at")?,
        hint: fields.optional("hint").map(Into::into),
    }))
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

/// The error for a record that is not what this store writes. It names the field only: the
/// value could be a digest.
fn malformed(field: &str) -> StoreError {
    StoreError::new(format!(
        "an API key record in Redis has a missing or malformed `{field}`"
    ))
}

fn lookup_hex(lookup_id: &LookupId) -> String {
    hex::encode(lookup_id.as_bytes())
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

/// Lua shared by the scripts. `ARGV[1]` is always the prefix. Times are compared as Lua
/// numbers (exact to the microsecond until the year 2255) and written back as the strings
/// given, so no rounding is ever stored.
const LUA_HELPERS: &str = r#"
local prefix = ARGV[1]
local function record_key(lookup_hex) return prefix .. ':lookup:' .. lookup_hex end
local function id_key(key_id) return prefix .. ':id:' .. key_id end
local function account_key(account_id) return prefix .. ':account:' .. account_id end
local function active_key(account_id) return prefix .. ':active:' .. account_id end

local function micros(value)
  local number = tonumber(value)
  if not number then error('an API key record in Redis has a malformed time') end
  return number
end

-- The Redis key of key `key_id`'s record, if that key belongs to `account_id`.
local function record_of(account_id, key_id)
  local lookup_hex = redis.call('GET', id_key(key_id))
  if not lookup_hex then return nil end
  local key = record_key(lookup_hex)
  if redis.call('HGET', key, 'account_id') ~= account_id then return nil end
  return key
end

local function is_active(key, now)
  local times = redis.call('HMGET', key, 'revoked_at', 'expires_at')
  return not times[1] and (not times[2] or now < micros(times[2]))
end

-- Puts key `key_id`, whose record is at `key`, in its account's active set if active at `now`.
local function track(account_id, key_id, key, now)
  if not is_active(key, now) then return end
  local expires_at = redis.call('HGET', key, 'expires_at') or '+inf'
  redis.call('ZADD', active_key(account_id), expires_at, key_id)
end

-- Deletes key `key_id`: its record (if it is that key's), its id and its account's entry.
local function remove(key_id)
  local lookup_hex = redis.call('GET', id_key(key_id))
  if not lookup_hex then return end
  local key = record_key(lookup_hex)
  local owner = redis.call('HMGET', key, 'key_id', 'account_id')
  if owner[1] == key_id then
    redis.call('SREM', account_key(owner[2]), key_id)
    redis.call('ZREM', active_key(owner[2]), key_id)
    redis.call('DEL', key)
  end
  redis.call('DEL', id_key(key_id))
end
"#;

/// ARGV: prefix, limit, now, "1" or "0" for a retiring key, its key id, its new expiry, the new
/// record's lookup id in hex, key id, account id, then its fields as `HSET` arguments.
const CREATE_LUA: &str = r#"
local limit, now = tonumber(ARGV[2]), micros(ARGV[3])
local has_retiring, retiring, retire_at = ARGV[4] == '1', ARGV[5], ARGV[6]
local lookup_hex, key_id, account_id = ARGV[7], ARGV[8], ARGV[9]

if redis.call('EXISTS', id_key(key_id)) == 1 or redis.call('EXISTS', record_key(lookup_hex)) == 1 then
  return 'already_exists'
end

local retiring_key = nil
if has_retiring then
  retiring_key = record_of(account_id, retiring)
  if not retiring_key or not is_active(retiring_key, now) then
    return 'retiring_key_not_found'
  end
end

-- Counted from the active set alone, so revoked and expired history is never read.
local active_set = active_key(account_id)
redis.call('ZREMRANGEBYSCORE', active_set, '-inf', ARGV[3])
local active = redis.call('ZCARD', active_set)
if has_retiring and redis.call('ZSCORE', active_set, retiring) then active = active - 1 end
if active >= limit then return 'limit_reached' end

if retiring_key then
  local own = redis.call('HGET', retiring_key, 'expires_at')
  if not own or micros(retire_at) < micros(own) then
    redis.call('HSET', retiring_key, 'expires_at', retire_at)
    redis.call('ZADD', active_set, 'XX', retire_at, retiring)
  end
end

local key = record_key(lookup_hex)
redis.call('HSET', key, unpack(ARGV, 10))
redis.call('SET', id_key(key_id), lookup_hex)
redis.call('SADD', account_key(account_id), key_id)
track(account_id, key_id, key, now)
return 'created'
"#;

/// ARGV: prefix, account id. The account's records, each as `HGETALL` gives it.
const LIST_LUA: &str = r#"
local records = {}
for _, key_id in ipairs(redis.call('SMEMBERS', account_key(ARGV[2]))) do
  local key = record_of(ARGV[2], key_id)
  if key then records[#records + 1] = redis.call('HGETALL', key) end
end
return records
"#;

/// ARGV: prefix, account id, key id. The record, or an empty one.
const GET_LUA: &str = r#"
local key = record_of(ARGV[2], ARGV[3])
if not key then return {} end
return redis.call('HGETALL', key)
"#;

/// ARGV: prefix, account id, key id, time. The record after the change, or an empty one.
/// `HSETNX` keeps the first revocation time.
const REVOKE_LUA: &str = r#"
local key = record_of(ARGV[2], ARGV[3])
if not key then return {} end
redis.call('HSETNX', key, 'revoked_at', ARGV[4])
redis.call('ZREM', active_key(ARGV[2]), ARGV[3])
return redis.call('HGETALL', key)
"#;

/// ARGV: prefix, account id, key id. The deleted record, or an empty one.
const DELETE_LUA: &str = r#"
local key = record_of(ARGV[2], ARGV[3])
if not key then return {} end
local record = redis.call('HGETALL', key)
remove(ARGV[3])
return record
"#;

/// ARGV: prefix, key id, time. Checks that the record exists, as `HSET` would create one.
const RECORD_USE_LUA: &str = r#"
local lookup_hex = redis.call('GET', id_key(ARGV[2]))
if not lookup_hex then return 0 end
local key = record_key(lookup_hex)
if redis.call('EXISTS', key) == 0 then return 0 end
local last = redis.call('HGET', key, 'last_used_at')
if not last or micros(last) < micros(ARGV[3]) then
  redis.call('HSET', key, 'last_used_at', ARGV[3])
end
return 1
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_HELPERS}{body}"))
}

static CREATE: LazyLock<Script> = LazyLock::new(|| script(CREATE_LUA));
static LIST: LazyLock<Script> = LazyLock::new(|| script(LIST_LUA));
static GET: LazyLock<Script> = LazyLock::new(|| script(GET_LUA));
static REVOKE: LazyLock<Script> = LazyLock::new(|| script(REVOKE_LUA));
static DELETE: LazyLock<Script> = LazyLock::new(|| script(DELETE_LUA));
static RECORD_USE: LazyLock<Script> = LazyLock::new(|| script(RECORD_USE_LUA));

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

    #[test]
    fn lookup_hex_is_the_digest_s_first_half() {
        let digest = KeyDigest::of("sk_live_x");
        assert_eq!(lookup_hex(&digest.lookup_id()), digest.to_hex()[..32]);
    }
}
