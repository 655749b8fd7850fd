//! Where keys are kept: the [`KeyStore`] trait and its implementations: [`MemoryKeyStore`],
//! and behind features `PgKeyStore` (`postgres`), `SqliteKeyStore` (`sqlite`), `RedisKeyStore`
//! (`redis`) and `CachedKeyStore` (`cache`), an in-process cache in front of any store.
//!
//! A store of your own implements [`KeyStore::find`]; one that keys are also created in
//! implements [`WritableKeyStore`] too:
//!
//! ```
//! use std::collections::HashMap;
//!
//! use async_trait::async_trait;
//! use tower_api_key::{KeyRecord, KeyStore, LookupId, StoreError};
//!
//! struct MapStore(HashMap<LookupId, KeyRecord>);
//!
//! #[async_trait]
//! impl KeyStore for MapStore {
//!     async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
//!         Ok(self.0.get(lookup_id).cloned())
//!     }
//! }
//! ```
//!
//! A store maps a [`LookupId`] to a [`KeyRecord`]. It never sees a plaintext key and never
//! compares secrets: the layer compares the record's [`KeyDigest`] with the presented key's in
//! constant time, so a store cannot get that wrong.

#[cfg(feature = "cache")]
mod cache;
#[cfg(feature = "cache")]
mod changes;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod columns;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
mod usage;

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(feature = "cache")]
pub use self::cache::CachedKeyStore;
#[cfg(feature = "cache")]
pub use self::changes::{ChangeFeed, Invalidator};
pub use self::memory::MemoryKeyStore;
#[cfg(feature = "postgres")]
pub use self::postgres::PgKeyStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisKeyStore;
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteKeyStore;
pub use crate::error::StoreError;
use crate::identity::{KeyId, KeyIdentity};
use crate::key::{KeyDigest, LookupId};
use crate::limit::{Credits, Spend};

/// A source of API key records: the read path the layer needs.
///
/// Implement it over any database or service; a store is a few dozen lines, as only
/// [`find`](KeyStore::find) is required. The layer calls
/// [`KeyStore::find`] once per request that carries a well-formed key, and decides from the
/// record: the store only fetches.
///
/// ```
/// use async_trait::async_trait;
/// use tower_api_key::{KeyRecord, KeyStore, LookupId, StoreError};
///
/// /// A store that fails closed: every lookup is an error, so every request gets a 503.
/// struct Maintenance;
///
/// #[async_trait]
/// impl KeyStore for Maintenance {
///     async fn find(&self, _lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
///         Err(StoreError::new("the key database is in maintenance"))
///     }
/// }
///
/// // Object-safe: a layer can hold any store behind an `Arc<dyn KeyStore>`.
/// let store: std::sync::Arc<dyn KeyStore> = std::sync::Arc::new(Maintenance);
/// let _layer = tower_api_key::ApiKeyLayer::new(store);
/// ```
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record stored under `lookup_id`, or `None` if there is none (unknown or deleted key).
    ///
    /// Return revoked and expired records too: the layer answers `expired_api_key` for them.
    /// An error makes the layer answer `503`, never `401` and never a pass.
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError>;

    /// What [`find`](KeyStore::find) would answer, if the store can tell at once without waiting
    /// (its records are in memory); `None` to be asked through `find`.
    ///
    /// The layer tries it first: an answer here spares a boxed future per request. The default
    /// answers `None`; remote stores keep it.
    fn find_now(&self, lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        let _ = lookup_id;
        None
    }

    /// Notes that the key of `record` authenticated a request at `at`, for
    /// [`KeyRecord::last_used_at`].
    ///
    /// The layer calls it only when the record's `last_used_at` is older than its
    /// [interval](crate::ApiKeyLayer::last_used_interval), so not on every request. It runs on
    /// the request's path: it must not block, so a remote store queues the write for a
    /// background task. The default does nothing.
    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        let _ = (record, at);
    }
}

#[async_trait]
impl<S: KeyStore + ?Sized> KeyStore for Arc<S> {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        (**self).find(lookup_id).await
    }

    fn find_now(&self, lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        (**self).find_now(lookup_id)
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        (**self).record_use(record, at);
    }
}

/// A store that keys can also be created in and removed from: the write path of
/// [`KeyManager`](crate::KeyManager), apart from the read path so that a read-only store
/// implements none of it.
///
/// Each method concerns one account's keys, and a key of another account is treated as absent.
/// Policy (names, quotas per tier, rotation) lives in `KeyManager`; a store only has to make
/// [`create`](WritableKeyStore::create) atomic.
#[async_trait]
pub trait WritableKeyStore: KeyStore {
    /// Adds `record`, unless a record with its key id or its key already exists, or it would
    /// leave its account with more than `quota.limit` keys that
    /// [count toward it](KeyRecord::counts_toward_quota). The count and the insert are one atomic step: of N concurrent creates for an
    /// account one below its limit, exactly one succeeds.
    ///
    /// With `quota.retiring`, that key is left out of the count and set to expire (no later than
    /// its own expiry) in the same step: a rotation.
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError>;

    /// Every record of `account_id`, revoked and expired ones included.
    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError>;

    /// The record of key `key_id` of `account_id`, whatever its state, or `None` if there is no
    /// such key. One read: rotating or managing one key never reads the account's history.
    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Marks key `key_id` of `account_id` revoked at `at`, keeping the record; revoking a revoked
    /// key keeps its first time. The record after the change, or `None` if there is no such key.
    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Disables key `key_id` of `account_id` at `at`, or with `None` enables it again: a
    /// disabled key is refused (`expired_api_key`) until enabled, and keeps counting toward its
    /// account's quota. Disabling a disabled key keeps its first time. The record after the
    /// change, or `None` if there is no such key. The default answers an error.
    async fn set_disabled(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: Option<SystemTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let _ = (account_id, key_id, at);
        Err(StoreError::new("this key store cannot disable keys"))
    }

    /// Deletes key `key_id` of `account_id`, returning its record, or `None` if there is no such
    /// key.
    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Spends `cost` credits of key `key_id`'s balance at `now`, by the rule of
    /// [`Credits::spend`] (refill first, then take all or nothing), in one atomic step: of N
    /// concurrent spends on a balance of M, exactly `min(N, M)` succeed. `None` if there is no
    /// such key.
    ///
    /// [`CreditsLayer`](crate::limit::CreditsLayer) calls it for each request. The default
    /// answers an error: a store that keeps no credits refuses metered requests with `503`.
    async fn spend_credits(
        &self,
        key_id: &KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<Option<Spend>, StoreError> {
        let _ = (key_id, cost, now);
        Err(StoreError::new("this key store keeps no credits"))
    }

    /// Adds `amount` credits to key `key_id` of `account_id` at `now`, by the rule of
    /// [`Credits::top_up`], in one atomic step; a key without a balance gets one of `amount`.
    /// The record after the change, or `None` if there is no such key. The default answers an
    /// error.
    async fn top_up_credits(
        &self,
        account_id: &str,
        key_id: &KeyId,
        amount: u64,
        now: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let _ = (account_id, key_id, amount, now);
        Err(StoreError::new("this key store keeps no credits"))
    }

    /// Adds each of `records` that is not stored yet, counting no quota: the bulk path of
    /// [`KeyManager::import`](crate::KeyManager::import) when a migration bypasses the quota.
    /// Whether each record was inserted, in order: `false` for one whose key id or key is
    /// stored already (in any account, or earlier in `records`), which is left as it is. Running
    /// an import twice inserts nothing the second time.
    ///
    /// Not atomic as a whole: on an error, some records may be stored, and importing them all
    /// again inserts the rest. The default calls [`create`](WritableKeyStore::create) for each
    /// record with no limit; the SQL stores insert a batch in one transaction.
    async fn import(&self, records: Vec<KeyRecord>) -> Result<Vec<bool>, StoreError> {
        let mut inserted = Vec::with_capacity(records.len());
        for record in records {
            match self.create(record, Quota::unlimited()).await {
                Ok(()) => inserted.push(true),
                Err(CreateError::AlreadyExists) => inserted.push(false),
                Err(CreateError::Store(error)) => return Err(error),
                Err(refusal) => return Err(StoreError::new(refusal.to_string())),
            }
        }
        Ok(inserted)
    }
}

/// How many records the SQL stores' [`import`](WritableKeyStore::import) inserts in one
/// transaction: large enough that the commits cost little, small enough that one transaction
/// finishes well within a store's timeout.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
const IMPORT_BATCH: usize = 1_000;

/// The rule that [`WritableKeyStore::create`] checks atomically with the insert.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Quota {
    /// The most keys the account may hold once the new one is added, counting those that
    /// [count toward the quota](KeyRecord::counts_toward_quota): active or disabled.
    pub limit: usize,
    /// The time at which keys are counted (neither revoked nor expired).
    pub now: SystemTime,
    /// A key being rotated out, and when it is to expire: not counted.
    pub retiring: Option<(KeyId, SystemTime)>,
}

impl Quota {
    /// At most `limit` active keys at `now`.
    pub fn new(limit: usize, now: SystemTime) -> Self {
        Self {
            limit,
            now,
            retiring: None,
        }
    }

    /// No limit at all: what [`WritableKeyStore::import`] creates records with by default.
    pub fn unlimited() -> Self {
        Self::new(usize::MAX, SystemTime::now())
    }

    /// The same quota, while key `key_id` is rotated out to expire at `expires_at`.
    pub fn retiring(mut self, key_id: KeyId, expires_at: SystemTime) -> Self {
        self.retiring = Some((key_id, expires_at));
        self
    }
}

/// Why [`WritableKeyStore::create`] added nothing.
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateError {
    /// The account already holds its limit of active keys.
    LimitReached,
    /// The key to retire is not an active key of the account.
    RetiringKeyNotFound,
    /// A record with the same key id, or for the same key, already exists (in any account).
    AlreadyExists,
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LimitReached => f.write_str("the account holds its limit of active keys"),
            Self::RetiringKeyNotFound => f.write_str("the key to rotate is not an active key"),
            Self::AlreadyExists => f.write_str("a key with this id or this secret already exists"),
            Self::Store(error) => error.fmt(f),
        }
    }
}

impl Error for CreateError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Store(error) => Some(error),
            _ => None,
        }
    }
}

impl From<StoreError> for CreateError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// What a store keeps for one key.
///
/// It serializes (with serde) to a stable form that a file or document store can keep whole,
/// and deserializes from it:
///
/// ```json
/// {
///   "digest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
///   "identity": {"key_id": "key_1", "account_id": "acct_42", "name": "ci", "tier": "free", "mode": "live"},
///   "created_at": "2027-01-15T08:00:00Z",
///   "expires_at": "2027-01-15T09:00:00.250000000Z",
///   "hint": "sk_live_...Xy12",
///   "credits": {"remaining": 500, "refill": {"amount": 1000, "every": "month"}, "refilled_at": "2027-01-15T08:00:00Z"}
/// }
/// ```
///
/// - `digest`: the key's SHA-256 digest as 64 lowercase hexadecimal digits
///   ([`KeyDigest::to_hex`]); never the key itself, which no record holds.
/// - `identity`: the [`KeyIdentity`] in the form it always serializes to (what handlers see).
/// - `expires_at`, `revoked_at`, `disabled_at`, `created_at`, `last_used_at`: RFC 3339 times in UTC (`Z`),
///   whole seconds without a fraction, others with nine digits of nanoseconds;
///   a time outside the years 1970 to 9999 is a serialization error.
/// - `hint`: the non-secret reminder of the key.
/// - `credits`: `remaining`, `refill` (`amount` and `every`, `day` or `month`) and
///   `refilled_at`, the exact balance (not the listing's `refills_at`).
///
/// Fields that are `None` are left out, and read back as `None` when absent or `null`;
/// unknown fields are ignored.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::{key::KeyDigest, KeyId, KeyIdentity, KeyRecord, Tier};
///
/// let identity = KeyIdentity::new(KeyId::new("key_1"), "acct_42", "ci", Tier::FREE);
/// let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// let record = KeyRecord::new(KeyDigest::of("sk_live_example"), identity).with_created_at(created);
/// let json = serde_json::to_value(&record).unwrap();
/// assert_eq!(json["created_at"], "2027-01-15T08:00:00Z");
/// assert_eq!(json["identity"]["account_id"], "acct_42");
/// let read: KeyRecord = serde_json::from_value(json).unwrap();
/// assert!(read.digest.matches(&record.digest));
/// assert_eq!(read.created_at, Some(created));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The SHA-256 digest of the key.
    pub digest: KeyDigest,
    /// Who the key authenticates as.
    pub identity: KeyIdentity,
    /// When the key stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
    /// Since when the key is disabled, if it is: refused until enabled again, unlike a
    /// revocation, which is for good.
    pub disabled_at: Option<SystemTime>,
    /// When the key was created, if the store knows.
    pub created_at: Option<SystemTime>,
    /// When the key last authenticated a request, give or take the layer's
    /// [interval](crate::ApiKeyLayer::last_used_interval).
    pub last_used_at: Option<SystemTime>,
    /// A non-secret reminder of the key for its owner: its prefix and last four characters,
    /// `sk_live_...Xy12`.
    pub hint: Option<Arc<str>>,
    /// The key's balance of credits, if its requests are metered, as of the last change: see
    /// [`Credits::as_of`].
    pub credits: Option<Credits>,
}

impl KeyRecord {
    /// An active key that never expires.
    pub fn new(digest: KeyDigest, identity: KeyIdentity) -> Self {
        Self {
            digest,
            identity,
            expires_at: None,
            revoked_at: None,
            disabled_at: None,
            created_at: None,
            last_used_at: None,
            hint: None,
            credits: None,
        }
    }

    /// The same record, expiring at `expires_at`.
    pub fn with_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// The same record, revoked at `revoked_at`.
    pub fn with_revoked_at(mut self, revoked_at: SystemTime) -> Self {
        self.revoked_at = Some(revoked_at);
        self
    }

    /// The same record, disabled since `disabled_at`.
    pub fn with_disabled_at(mut self, disabled_at: SystemTime) -> Self {
        self.disabled_at = Some(disabled_at);
        self
    }

    /// The same record, created at `created_at`.
    pub fn with_created_at(mut self, created_at: SystemTime) -> Self {
        self.created_at = Some(created_at);
        self
    }

    /// The same record, with a [hint](KeyRecord::hint).
    pub fn with_hint(mut self, hint: impl Into<Arc<str>>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The same record, with a balance of [credits](KeyRecord::credits).
    pub fn with_credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Whether the key works at `now`: neither revoked, expired nor disabled.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.disabled_at.is_none() && self.counts_toward_quota(now)
    }

    /// Whether the key counts toward its account's [`Quota`] at `now`: neither revoked nor
    /// expired. A disabled key counts, so that disabling a key, creating another and enabling
    /// the first cannot take an account past its limit.
    pub fn counts_toward_quota(&self, now: SystemTime) -> bool {
        is_active(self.revoked_at, self.expires_at, now)
    }
}

/// The stable serialized form of a [`KeyRecord`].
#[derive(Serialize, Deserialize)]
struct RecordForm {
    #[serde(with = "digest_hex")]
    digest: KeyDigest,
    identity: KeyIdentity,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "times")]
    expires_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "times")]
    revoked_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "times")]
    disabled_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "times")]
    created_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "times")]
    last_used_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hint: Option<Arc<str>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "stored_credits"
    )]
    credits: Option<Credits>,
}

/// In its stable form: see [`KeyRecord`].
impl Serialize for KeyRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = self.clone();
        RecordForm {
            digest: record.digest,
            identity: record.identity,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            disabled_at: record.disabled_at,
            created_at: record.created_at,
            last_used_at: record.last_used_at,
            hint: record.hint,
            credits: record.credits,
        }
        .serialize(serializer)
    }
}

/// From its stable form: see [`KeyRecord`].
impl<'de> Deserialize<'de> for KeyRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = RecordForm::deserialize(deserializer)?;
        Ok(Self {
            digest: form.digest,
            identity: form.identity,
            expires_at: form.expires_at,
            revoked_at: form.revoked_at,
            disabled_at: form.disabled_at,
            created_at: form.created_at,
            last_used_at: form.last_used_at,
            hint: form.hint,
            credits: form.credits,
        })
    }
}

/// A digest as 64 hexadecimal digits.
mod digest_hex {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use crate::key::KeyDigest;

    pub(super) fn serialize<S: Serializer>(
        digest: &KeyDigest,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&digest.to_hex())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<KeyDigest, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        KeyDigest::from_hex(&text)
            .ok_or_else(|| D::Error::custom("a digest is 64 hexadecimal digits"))
    }
}

/// Optional times as RFC 3339 in UTC: whole seconds without a fraction, others to the
/// nanosecond; years 1970 to 9999.
pub(crate) mod times {
    use std::time::{Duration, SystemTime};

    use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

    /// 9999-12-31T23:59:59Z, the last second humantime can write.
    const LATEST: Duration = Duration::from_secs(253_402_300_799);

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let Some(time) = time else {
            return serializer.serialize_none();
        };
        match time.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(since) if since.as_secs() <= LATEST.as_secs() => {
                if since.subsec_nanos() == 0 {
                    serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
                } else {
                    serializer.collect_str(&humantime::format_rfc3339_nanos(*time))
                }
            }
            _ => Err(S::Error::custom(
                "a key time lies outside the years 1970 to 9999",
            )),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let Some(text) = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)? else {
            return Ok(None);
        };
        humantime::parse_rfc3339(&text).map(Some).map_err(|error| {
            D::Error::custom(format_args!("{error}: an RFC 3339 time in UTC is expected"))
        })
    }
}

/// A balance as a record keeps it: `remaining`, `refill` and `refilled_at`, exactly.
mod stored_credits {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::limit::{Credits, Refill};

    #[derive(Serialize)]
    struct Form {
        remaining: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        refill: Option<Refill>,
        #[serde(skip_serializing_if = "Option::is_none", with = "super::times")]
        refilled_at: Option<SystemTime>,
    }

    pub(super) fn serialize<S: Serializer>(
        credits: &Option<Credits>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        credits
            .map(|credits| Form {
                remaining: credits.remaining,
                refill: credits.refill,
                refilled_at: credits.refilled_at,
            })
            .serialize(serializer)
    }

    /// [`Credits`]'s own form, which reads `refilled_at` too.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Credits>, D::Error> {
        Option::<Credits>::deserialize(deserializer)
    }
}

/// [`KeyRecord::counts_toward_quota`], for stores that keep the times in another form.
fn is_active(
    revoked_at: Option<SystemTime>,
    expires_at: Option<SystemTime>,
    now: SystemTime,
) -> bool {
    revoked_at.is_none() && expires_at.is_none_or(|expires_at| now < expires_at)
}

/// The outcome of `operation`, or an error naming `server` once `timeout` has passed: how the
/// shipped stores bound every call, so that a server that hangs gives `503`, not a wait.
#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
async fn within<T, E: From<StoreError>>(
    server: &str,
    timeout: std::time::Duration,
    operation: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(timeout, operation)
        .await
        .unwrap_or_else(|_| {
            let message = format!("{server} did not answer within {timeout:?}");
            Err(StoreError::new(message).into())
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{KeyId, Tier};

    fn record() -> KeyRecord {
        let identity = KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", Tier::FREE);
        KeyRecord::new(KeyDigest::of("sk_live_x"), identity)
    }

    #[test]
    fn new_record_is_active() {
        assert!(record().is_active(SystemTime::now()));
    }

    #[test]
    fn revoked_record_is_inactive() {
        let now = SystemTime::now();
        assert!(!record().with_revoked_at(now).is_active(now));
    }

    #[test]
    fn record_expires_at_its_expiry() {
        let now = SystemTime::now();
        let record = record().with_expires_at(now + Duration::from_secs(1));
        assert!(record.is_active(now));
        assert!(!record.is_active(now + Duration::from_secs(1)));
    }

    fn full_record() -> KeyRecord {
        use crate::access::{KeyMode, Scopes};
        use crate::limit::{RateLimit, Refill};
        let at = |secs: u64, nanos: u32| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        let identity = KeyIdentity::new(KeyId::new("key_9"), "acct_42", "deploy", Tier::PRO)
            .with_mode(KeyMode::Test)
            .with_scopes(Scopes::new(["iocs:read", "keys:write"]).unwrap())
            .with_rate_limit(RateLimit::per_minute(7).burst(3))
            .with_metadata(serde_json::json!({"team": "platform"}));
        let mut record = KeyRecord::new(KeyDigest::of("sk_test_x"), identity)
            .with_created_at(at(1_800_000_000, 0))
            .with_expires_at(at(1_800_003_600, 250_000_000))
            .with_revoked_at(at(1_800_000_060, 1))
            .with_hint("sk_test_...Xy12")
            .with_credits(Credits::new(500).refilled(Refill::monthly(1_000), at(1_800_000_000, 0)));
        record.last_used_at = Some(at(1_800_000_030, 0));
        record
    }

    fn assert_same(read: &KeyRecord, record: &KeyRecord) {
        assert!(read.digest.matches(&record.digest));
        assert_eq!(read.identity, record.identity);
        assert_eq!(read.expires_at, record.expires_at);
        assert_eq!(read.revoked_at, record.revoked_at);
        assert_eq!(read.created_at, record.created_at);
        assert_eq!(read.last_used_at, record.last_used_at);
        assert_eq!(read.hint, record.hint);
        assert_eq!(read.credits, record.credits);
    }

    #[test]
    fn a_record_round_trips_through_json_in_its_stable_form() {
        let record = full_record();
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "digest": record.digest.to_hex(),
                "identity": {
                    "key_id": "key_9", "account_id": "acct_42", "name": "deploy", "tier": "pro",
                    "mode": "test", "scopes": ["iocs:read", "keys:write"],
                    "rate_limit": {"requests": 7, "period_secs": 60, "burst": 3},
                    "metadata": {"team": "platform"},
                },
                "expires_at": "2027-01-15T09:00:00.250000000Z",
                "revoked_at": "2027-01-15T08:01:00.000000001Z",
                "created_at": "2027-01-15T08:00:00Z",
                "last_used_at": "2027-01-15T08:00:30Z",
                "hint": "sk_test_...Xy12",
                "credits": {
                    "remaining": 500,
                    "refill": {"amount": 1000, "every": "month"},
                    "refilled_at": "2027-01-15T08:00:00Z",
                },
            })
        );
        let read: KeyRecord = serde_json::from_value(json).unwrap();
        assert_same(&read, &record);
    }

    #[test]
    fn a_bare_record_leaves_its_empty_fields_out_and_reads_them_back_as_none() {
        let record = record();
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("null") && !json.contains("_at"), "{json}");
        let read: KeyRecord = serde_json::from_str(&json).unwrap();
        assert_same(&read, &record);
        let with_nulls = serde_json::json!({
            "digest": record.digest.to_hex(), "identity": record.identity,
            "expires_at": null, "credits": null, "hint": null, "unknown": 1,
        });
        assert_same(&serde_json::from_value(with_nulls).unwrap(), &record);
    }

    #[test]
    fn a_record_never_holds_the_key_and_refuses_malformed_fields() {
        let json = serde_json::to_string(&full_record()).unwrap();
        assert!(!json.contains("sk_test_x\""), "{json}");
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        for (field, bad) in [
            ("digest", serde_json::json!("00ff")),
            ("created_at", serde_json::json!("2027-01-15 08:00:00")),
            ("expires_at", serde_json::json!(1_800_000_000)),
        ] {
            let good = value[field].clone();
            value[field] = bad;
            assert!(
                serde_json::from_value::<KeyRecord>(value.clone()).is_err(),
                "{field}"
            );
            value[field] = good;
        }
        assert!(serde_json::from_value::<KeyRecord>(value).is_ok());
    }

    #[test]
    fn a_time_before_1970_is_a_serialization_error_not_a_panic() {
        let record = record().with_created_at(SystemTime::UNIX_EPOCH - Duration::from_secs(1));
        assert!(serde_json::to_string(&record).is_err());
    }

    #[test]
    fn store_error_displays_as_the_error_it_wraps() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(StoreError::new(io).to_string(), "connection refused");
    }
}
