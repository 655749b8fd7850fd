//! Managing keys, the "Settings → API Keys" side: create (the key is shown once), list, revoke,
//! delete, rotate, with a quota of active keys per tier ([`TierLimits`]: free 3, pro 50).
//!
//! ```
//! use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_api_key::manage::ManageError> {
//! let keys = KeyManager::new(MemoryKeyStore::new());
//! let created = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await?;
//! println!("your key, shown once: {}", created.key.expose_secret());
//!
//! let listed = keys.list("acct_42").await?; // names, hints and times; never a key
//! assert_eq!(listed[0].name, "ci");
//! keys.revoke("acct_42", &created.info.id).await?; // the key now gets 401 expired_api_key
//! # Ok(())
//! # }
//! ```
//!
//! Test keys count against the same quota as live keys: a test key authenticates like any
//! other on every route that does not refuse test keys, so a separate allowance would let an
//! account hold more working keys than its tier allows.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::audit::{Actor, AuditAction, AuditEvent, AuditSink, SharedSink, TracingAudit};
use crate::clock::{Clock, SystemClock};
use crate::identity::{KeyId, KeyIdentity, Tier};
use crate::key::{ApiKey, KeyDigest, KeyFormat};
use crate::layer::ApiKeyLayer;
use crate::limit::{Credits, RateLimit};
use crate::mode::KeyMode;
use crate::scope::{ScopeError, Scopes};
use crate::store::{CreateError, KeyRecord, Quota, StoreError, WritableKeyStore};

mod import;
pub use import::{ImportError, ImportOutcome, ImportQuota, ImportedKey};

/// The longest key name, in characters.
pub const MAX_NAME_LEN: usize = 100;

/// The longest lifetime a key (or a rotation's grace period) may be given: 100 years, which
/// keeps every time representable in every store and in RFC 3339.
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How many active keys an account of each tier may hold, and how many requests each key may
/// send.
///
/// The default allows 3 keys on [`Tier::FREE`] and 50 on [`Tier::PRO`]. A tier not listed may
/// create no key at all, so that a typo in a tier name does not lift the limit.
///
/// The default also limits each free key to 60 requests per minute and each pro key to 600 ([`RateLimit::per_minute`],
/// a burst of the whole count), enforced by [`RateLimitLayer`](crate::limit::RateLimitLayer).
/// A tier without a rate limit is not rate limited: unlike the key quota, a rate limit is a
/// guard against load, not a part of the plan that a typo could lift.
#[derive(Clone, Debug)]
pub struct TierLimits {
    keys: HashMap<Tier, usize>,
    rates: HashMap<Tier, RateLimit>,
}

impl Default for TierLimits {
    fn default() -> Self {
        Self::none()
            .with(Tier::FREE, 3)
            .with(Tier::PRO, 50)
            .with_rate_limit(Tier::FREE, RateLimit::per_minute(60))
            .with_rate_limit(Tier::PRO, RateLimit::per_minute(600))
    }
}

impl TierLimits {
    /// No tier at all: add each with [`TierLimits::with`]. No rate limit either.
    pub fn none() -> Self {
        Self {
            keys: HashMap::new(),
            rates: HashMap::new(),
        }
    }

    /// The same limits, with `tier` allowed `limit` active keys.
    pub fn with(mut self, tier: Tier, limit: usize) -> Self {
        self.keys.insert(tier, limit);
        self
    }

    /// How many active keys `tier` may hold, if it is listed.
    pub fn limit(&self, tier: &Tier) -> Option<usize> {
        self.keys.get(tier).copied()
    }

    /// The same limits, with each key of `tier` limited to `limit`.
    pub fn with_rate_limit(mut self, tier: Tier, limit: RateLimit) -> Self {
        self.rates.insert(tier, limit);
        self
    }

    /// The same limits, with no rate limit on `tier`.
    pub fn without_rate_limit(mut self, tier: &Tier) -> Self {
        self.rates.remove(tier);
        self
    }

    /// The rate limit of each key of `tier`, if it has one.
    pub fn rate_limit(&self, tier: &Tier) -> Option<RateLimit> {
        self.rates.get(tier).copied()
    }

    /// Every tier's rate limit.
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    pub(crate) fn rate_limits(&self) -> impl Iterator<Item = (&Tier, &RateLimit)> {
        self.rates.iter()
    }
}

/// What to create: a key for an account, with a name, and optionally an expiry, scopes,
/// metadata, or the test mode.
#[derive(Clone, Debug)]
pub struct NewKey {
    account_id: String,
    tier: Tier,
    name: String,
    expiry: Option<Expiry>,
    metadata: Option<serde_json::Value>,
    scopes: Option<Vec<String>>,
    mode: KeyMode,
    rate_limit: Option<RateLimit>,
    credits: Option<Credits>,
    creator: Option<KeyInfo>,
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    At(SystemTime),
    After(Duration),
}

impl Expiry {
    /// The expiry time of a key created at `now`, which must be later than `now`.
    fn time_after(self, now: SystemTime) -> Result<SystemTime, ManageError> {
        let time = match self {
            Self::At(time) => Some(time),
            Self::After(lifetime) => now.checked_add(lifetime),
        };
        let latest = now.checked_add(MAX_LIFETIME);
        time.filter(|time| *time > now && latest.is_none_or(|latest| *time <= latest))
            .ok_or(ManageError::InvalidExpiry)
    }
}

impl NewKey {
    /// A live key with full access, named `name`, for account `account_id`, which is on `tier`.
    pub fn new(account_id: impl Into<String>, tier: Tier, name: impl Into<String>) -> Self {
        Self {
            account_id: account_id.into(),
            tier,
            name: name.into(),
            expiry: None,
            metadata: None,
            scopes: None,
            mode: KeyMode::Live,
            rate_limit: None,
            credits: None,
            creator: None,
        }
    }

    /// Restricts the key to `scopes` (see [`Scopes`]): it then passes only the checks
    /// ([`RequireScopeLayer`](crate::access::RequireScopeLayer)) that require one of them. Without this
    /// call the key has full access. The scopes are checked by
    /// [`KeyManager::create`], which refuses invalid ones with [`ManageError::InvalidScopes`].
    pub fn scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Makes a key of `mode`: with [`KeyMode::Test`], an `sk_test_` key.
    pub fn mode(mut self, mode: KeyMode) -> Self {
        self.mode = mode;
        self
    }

    /// The key stops working at `expires_at`, which must be in the future.
    pub fn expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expiry = Some(Expiry::At(expires_at));
        self
    }

    /// The key stops working `lifetime` after its creation; `lifetime` must not be zero.
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.expiry = Some(Expiry::After(lifetime));
        self
    }

    /// Limits the key to `limit` ([`RateLimitLayer`](crate::limit::RateLimitLayer)) instead of
    /// its tier's rate limit.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Gives the key a balance of `credits` that each request through a
    /// [`CreditsLayer`](crate::limit::CreditsLayer) spends; a refill in it starts counting
    /// from the key's creation. Without this call the key's requests are not metered.
    pub fn credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Application data that handlers read from the key's [`KeyIdentity`].
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// The key is made by `creator` (the key of the request asking for it):
    /// [`KeyManager::create`] refuses it with [`ManageError::Overreach`] if it would be more
    /// powerful than `creator` ([`KeyInfo::may_manage`]). Only the manager can apply the rule
    /// here, because only it knows when an [`expires_in`](NewKey::expires_in) ends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier, manage::{ManageError, Overreach}};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ManageError> {
    /// let keys = KeyManager::new(MemoryKeyStore::new());
    /// let hourly = NewKey::new("acct_42", Tier::PRO, "hourly").expires_in(Duration::from_secs(3600));
    /// let hourly = keys.create(hourly).await?.info;
    ///
    /// let forever = NewKey::new("acct_42", Tier::PRO, "forever").created_by(&hourly);
    /// let refused = keys.create(forever).await;
    /// assert!(matches!(refused, Err(ManageError::Overreach(Overreach::Outlives))));
    ///
    /// let shorter = NewKey::new("acct_42", Tier::PRO, "shorter")
    ///     .expires_in(Duration::from_secs(60))
    ///     .created_by(&hourly);
    /// keys.create(shorter).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn created_by(mut self, creator: &KeyInfo) -> Self {
        self.creator = Some(creator.clone());
        self
    }
}

/// A key just created: the plaintext key, to show its owner now and never again, and its
/// public description.
#[derive(Clone, Debug)]
pub struct CreatedKey {
    /// The key. It is stored nowhere: once dropped, it cannot be read back.
    pub key: ApiKey,
    /// The key's public description, as listings show it.
    pub info: KeyInfo,
}

/// What an account's owner may see of a key: never the key or its digest.
///
/// It serializes with times as RFC 3339 UTC strings (`null` when unknown).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key's public id.
    pub id: KeyId,
    /// Its name.
    pub name: String,
    /// Whether it is a live or a test key.
    pub mode: KeyMode,
    /// The scopes it is restricted to; `None` (`null`) for full access.
    pub scopes: Option<Scopes>,
    /// Its prefix and last four characters, `sk_live_...Xy12`, to recognise it by.
    pub hint: Option<String>,
    /// When it was created.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: Option<SystemTime>,
    /// When it stops working, if ever.
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: Option<SystemTime>,
    /// When it was revoked, if it was.
    #[serde(serialize_with = "rfc3339")]
    pub revoked_at: Option<SystemTime>,
    /// Since when it is disabled, if it is ([`KeyManager::disable`]).
    #[serde(serialize_with = "rfc3339")]
    pub disabled_at: Option<SystemTime>,
    /// When it last authenticated a request, to within the layer's
    /// [interval](crate::ApiKeyLayer::last_used_interval).
    #[serde(serialize_with = "rfc3339")]
    pub last_used_at: Option<SystemTime>,
    /// Its rate limit: its own, or (as [`KeyManager`] shows it) its tier's; `None` (`null`)
    /// if neither.
    pub rate_limit: Option<RateLimit>,
    /// Its balance of credits (as [`KeyManager`] shows it, with any refill that fell due);
    /// `None` (`null`) if its requests are not metered.
    pub credits: Option<Credits>,
}

impl From<&KeyRecord> for KeyInfo {
    fn from(record: &KeyRecord) -> Self {
        Self {
            id: record.identity.key_id().clone(),
            name: record.identity.name().to_owned(),
            mode: record.identity.mode(),
            scopes: record.identity.scopes().cloned(),
            hint: record.hint.as_deref().map(str::to_owned),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            disabled_at: record.disabled_at,
            last_used_at: record.last_used_at,
            rate_limit: record.identity.rate_limit(),
            credits: record.credits,
        }
    }
}

impl KeyInfo {
    /// Whether this key may create or remove (revoke, delete, rotate) `target`: only if
    /// `target` is no more powerful in any way, so that no key can make or remove a key more
    /// powerful than itself. Else the first way in which it is more powerful, checked in this
    /// order:
    ///
    /// - mode: a test key manages only test keys ([`Overreach::LiveKey`]);
    /// - scopes: a restricted key manages only keys with some of its scopes
    ///   ([`Overreach::FullAccess`], [`Overreach::Scope`]);
    /// - expiry: a key that expires manages only keys that expire no later
    ///   ([`Overreach::Outlives`]).
    ///
    /// [`KeyManager::create`] applies it to a key [created by](NewKey::created_by) another;
    /// check it before [`KeyManager::revoke`], [`delete`](KeyManager::delete) or
    /// [`rotate`](KeyManager::rotate) on behalf of a key.
    ///
    /// ```
    /// use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier, access::KeyMode, manage::{ManageError, Overreach}};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ManageError> {
    /// let keys = KeyManager::new(MemoryKeyStore::new());
    /// let new = |name| NewKey::new("acct_42", Tier::PRO, name);
    /// let admin = keys.create(new("admin")).await?.info;
    /// let manager = keys.create(new("manager").scopes(["iocs:read", "keys:write"])).await?.info;
    /// let reader = keys.create(new("reader").scopes(["iocs:read"])).await?.info;
    /// let sandbox = keys.create(new("sandbox").mode(KeyMode::Test)).await?.info;
    ///
    /// assert_eq!(admin.may_manage(&manager), Ok(()));
    /// assert_eq!(manager.may_manage(&reader), Ok(()));
    /// assert_eq!(manager.may_manage(&admin), Err(Overreach::FullAccess));
    /// assert_eq!(reader.may_manage(&manager), Err(Overreach::Scope("keys:write".into())));
    /// assert_eq!(sandbox.may_manage(&admin), Err(Overreach::LiveKey));
    /// # Ok(())
    /// # }
    /// ```
    pub fn may_manage(&self, target: &KeyInfo) -> Result<(), Overreach> {
        mode_covers(self.mode, target.mode)?;
        scopes_cover(self.scopes.as_ref(), target.scopes.as_ref())?;
        expiry_covers(self.expires_at, target.expires_at)
    }
}

fn mode_covers(own: KeyMode, target: KeyMode) -> Result<(), Overreach> {
    match (own, target) {
        (KeyMode::Test, KeyMode::Live) => Err(Overreach::LiveKey),
        _ => Ok(()),
    }
}

fn scopes_cover(own: Option<&Scopes>, target: Option<&Scopes>) -> Result<(), Overreach> {
    match (own, target) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(Overreach::FullAccess),
        (Some(own), Some(target)) => match target.iter().find(|scope| !own.contains(scope)) {
            Some(missing) => Err(Overreach::Scope(missing.to_owned())),
            None => Ok(()),
        },
    }
}

fn expiry_covers(own: Option<SystemTime>, target: Option<SystemTime>) -> Result<(), Overreach> {
    match (own, target) {
        (Some(own), target) if target.is_none_or(|target| target > own) => Err(Overreach::Outlives),
        _ => Ok(()),
    }
}

/// How a key would be more powerful than the key creating or removing it
/// ([`KeyInfo::may_manage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overreach {
    /// The key is live, and a test key manages only test keys.
    LiveKey,
    /// The key has full access, and the managing key is restricted.
    FullAccess,
    /// The key has this scope, which the managing key lacks.
    Scope(String),
    /// The managing key expires, and the key outlives it: it never expires, or expires later.
    Outlives,
}

impl fmt::Display for Overreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LiveKey => f.write_str("a test key cannot create or remove live keys"),
            Self::FullAccess => f.write_str(
                "a key without full access cannot create or remove a key with full access",
            ),
            Self::Scope(scope) => write!(
                f,
                "a key without the scope \"{scope}\" cannot create or remove a key with it"
            ),
            Self::Outlives => f.write_str(
                "a key that expires cannot create or remove a key that expires later, or never",
            ),
        }
    }
}

impl std::error::Error for Overreach {}

pub(crate) fn rfc3339<S: Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        // humantime panics before 1970 and cannot write years past 9999: a store's odd time is
        // a serialization error, never a panic.
        Some(time)
            if time
                .duration_since(SystemTime::UNIX_EPOCH)
                .is_ok_and(|since| since <= LATEST) =>
        {
            serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
        }
        Some(_) => Err(serde::ser::Error::custom(
            "a key time lies outside the years 1970 to 9999",
        )),
        None => serializer.serialize_none(),
    }
}

/// 9999-12-31T23:59:59Z after the epoch: the last time RFC 3339 writes with four-digit years.
const LATEST: Duration = Duration::from_secs(253_402_300_799);

/// Why a key could not be created, revoked, deleted or rotated.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManageError {
    /// The name is empty once trimmed, longer than [`MAX_NAME_LEN`] characters, or holds
    /// control characters.
    InvalidName,
    /// The scopes are not valid scopes, or there are none or too many.
    InvalidScopes(ScopeError),
    /// The manager's [`KeyFormat`] has no prefix for keys of this mode (test keys need a
    /// [test prefix](KeyFormat::test_prefix), which the default format has).
    UnsupportedMode(KeyMode),
    /// The expiry is not in the future, or more than [`MAX_LIFETIME`] ahead; or a rotation's
    /// grace period is longer than that.
    InvalidExpiry,
    /// The tier has no limit in the [`TierLimits`].
    UnknownTier(Tier),
    /// The account already holds as many active keys as its tier allows.
    KeyLimitReached {
        /// The account's tier.
        tier: Tier,
        /// How many active keys it allows.
        limit: usize,
    },
    /// The account has no such key (or no such active key, to rotate).
    NotFound,
    /// The key would be more powerful than the key creating it ([`NewKey::created_by`]).
    Overreach(Overreach),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for ManageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName => write!(
                f,
                "a key name must be 1 to {MAX_NAME_LEN} characters, without control characters"
            ),
            Self::InvalidScopes(error) => error.fmt(f),
            Self::UnsupportedMode(mode) => {
                write!(f, "this service's key format has no prefix for {mode} keys")
            }
            Self::InvalidExpiry => f.write_str("a key's expiry must be in the future"),
            Self::UnknownTier(tier) => write!(f, "the tier \"{tier}\" has no key limit configured"),
            Self::KeyLimitReached { tier, limit } => write!(
                f,
                "the {tier} tier allows {limit} active keys; revoke one before creating another"
            ),
            Self::NotFound => f.write_str("no such key"),
            Self::Overreach(overreach) => overreach.fmt(f),
            Self::Store(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for ManageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(error) => Some(error),
            Self::InvalidScopes(error) => Some(error),
            Self::Overreach(overreach) => Some(overreach),
            _ => None,
        }
    }
}

impl From<StoreError> for ManageError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// The key management API over a [`WritableKeyStore`]: what a "Settings → API Keys" page needs.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier, manage::ManageError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ManageError> {
/// let keys = KeyManager::new(MemoryKeyStore::new());
///
/// let created = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await?;
/// println!("your key, shown once: {}", created.key.expose_secret());
///
/// let listed = keys.list("acct_42").await?;
/// assert_eq!(listed[0].name, "ci");
///
/// // A replacement; the old key keeps working for an hour, then expires.
/// let replacement = keys.rotate("acct_42", &created.info.id, Duration::from_secs(3600)).await?;
/// keys.revoke("acct_42", &replacement.info.id).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KeyManager<S> {
    store: S,
    format: KeyFormat,
    limits: TierLimits,
    clock: Arc<dyn Clock>,
    audit: SharedSink,
    actor: Actor,
}

impl<S: WritableKeyStore> KeyManager<S> {
    /// Manages the keys of `store`, generating keys of the default [`KeyFormat`] (`sk_live_`,
    /// and `sk_test_` for test keys), with the default [`TierLimits`] and the system clock.
    pub fn new(store: S) -> Self {
        Self {
            store,
            format: KeyFormat::default(),
            limits: TierLimits::default(),
            clock: Arc::new(SystemClock),
            audit: Arc::new(TracingAudit),
            actor: Actor::Application,
        }
    }

    /// Sends the [audit events](crate::audit) of every change to `sink` instead of `tracing`.
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Arc::new(sink);
        self
    }

    /// The same manager, naming `actor` in the audit events of the changes it makes: a clone
    /// (the store and sink are shared) to make one request's changes with.
    pub fn acting_as(&self, actor: Actor) -> Self
    where
        S: Clone,
    {
        Self {
            actor,
            ..self.clone()
        }
    }

    /// Sends one audit event about `key_id` of `account_id`, by this manager's actor, now.
    fn emit(&self, action: AuditAction, account_id: &str, key_id: &KeyId) {
        self.audit.record(&AuditEvent {
            at: self.clock.now(),
            action,
            account_id: account_id.to_owned(),
            key_id: key_id.clone(),
            actor: self.actor.clone(),
        });
    }

    /// Generates keys of `format`: live keys with its first prefix, test keys with its
    /// [test prefix](KeyFormat::test_prefix).
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }

    /// Limits the active keys per tier by `limits`.
    pub fn tier_limits(mut self, limits: TierLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads the time from `clock`: give the layer the same one.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store the keys are kept in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// A layer that checks keys against this manager's store, with its key format and clock,
    /// so that the two cannot disagree.
    pub fn layer(&self) -> ApiKeyLayer
    where
        S: Clone,
    {
        ApiKeyLayer::new(self.store.clone())
            .key_format(self.format.clone())
            .clock(Arc::clone(&self.clock))
    }

    /// Creates a key. The plaintext key is in the result and nowhere else.
    ///
    /// Test keys count against the account's quota as live keys do: a test key authenticates
    /// like any other on every route that does not refuse test keys, so a separate allowance
    /// would let an account hold more working keys than its tier allows.
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey, ManageError> {
        let account_id = new.account_id.clone();
        let name = valid_name(&new.name)?;
        let scopes = new
            .scopes
            .map(Scopes::new)
            .transpose()
            .map_err(ManageError::InvalidScopes)?;
        let limit = self.limit(&new.tier)?;
        let now = self.clock.now();
        let expires_at = new
            .expiry
            .map(|expiry| expiry.time_after(now))
            .transpose()?;
        let mut identity =
            KeyIdentity::new(KeyId::random(), new.account_id, name, new.tier).with_mode(new.mode);
        if let Some(scopes) = scopes {
            identity = identity.with_scopes(scopes);
        }
        if let Some(metadata) = new.metadata {
            identity = identity.with_metadata(metadata);
        }
        if let Some(rate_limit) = new.rate_limit {
            identity = identity.with_rate_limit(rate_limit);
        }
        let credits = new.credits.map(|credits| match credits.refill {
            Some(refill) => credits.refilled(refill, now),
            None => credits,
        });
        let quota = Quota::new(limit, now);
        let created =
            (self.insert(identity, expires_at, credits, quota, new.creator.as_ref())).await?;
        self.emit(AuditAction::Created, &account_id, &created.info.id);
        Ok(created)
    }

    /// The account's keys, oldest first, revoked and expired ones included.
    pub async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, ManageError> {
        let mut records = self.store.list(account_id).await?;
        records.sort_by(|a, b| {
            (a.created_at, a.identity.key_id()).cmp(&(b.created_at, b.identity.key_id()))
        });
        Ok(records.iter().map(|record| self.info(record)).collect())
    }

    /// One of the account's keys, whatever its state.
    pub async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<KeyInfo, ManageError> {
        let record = self.store.get(account_id, key_id).await?;
        record
            .as_ref()
            .map(|record| self.info(record))
            .ok_or(ManageError::NotFound)
    }

    /// Adds `amount` credits to a key's balance (see [`Credits::top_up`]); a key whose requests
    /// were not metered gets a balance of `amount`. A refill later sets the balance back to the
    /// refill's amount, top-up or not.
    pub async fn top_up(
        &self,
        account_id: &str,
        key_id: &KeyId,
        amount: u64,
    ) -> Result<KeyInfo, ManageError> {
        let now = self.clock.now();
        let record = (self.store)
            .top_up_credits(account_id, key_id, amount, now)
            .await?;
        record
            .as_ref()
            .map(|record| self.info(record))
            .ok_or(ManageError::NotFound)
    }

    /// What listings show of `record`: its tier's rate limit if it has none of its own, and its
    /// balance with any refill that fell due.
    fn info(&self, record: &KeyRecord) -> KeyInfo {
        let mut info = KeyInfo::from(record);
        let tier = record.identity.tier();
        info.rate_limit = info.rate_limit.or_else(|| self.limits.rate_limit(tier));
        let now = self.clock.now();
        info.credits = info.credits.map(|credits| credits.as_of(now));
        info
    }

    /// Revokes a key: it stops working at once (`expired_api_key`), and its record stays for
    /// audit. Revoking a revoked key changes nothing.
    pub async fn revoke(&self, account_id: &str, key_id: &KeyId) -> Result<KeyInfo, ManageError> {
        let record = self
            .store
            .revoke(account_id, key_id, self.clock.now())
            .await?
            .ok_or(ManageError::NotFound)?;
        self.emit(AuditAction::Revoked, account_id, key_id);
        Ok(self.info(&record))
    }

    /// Disables a key: it is refused (`401 expired_api_key`, "deactivated") until
    /// [enabled](KeyManager::enable) again, at once on every instance whose cache is pushed
    /// changes. Unlike a revocation it can be undone, and the key keeps counting toward its
    /// account's quota (so that disabling one key to create another cannot exceed it). Disabling
    /// a disabled key changes nothing.
    pub async fn disable(&self, account_id: &str, key_id: &KeyId) -> Result<KeyInfo, ManageError> {
        self.set_disabled(account_id, key_id, Some(self.clock.now()))
            .await
    }

    /// Enables a [disabled](KeyManager::disable) key again: it works as before, unless it was
    /// revoked or expired meanwhile. Enabling an enabled key changes nothing.
    pub async fn enable(&self, account_id: &str, key_id: &KeyId) -> Result<KeyInfo, ManageError> {
        self.set_disabled(account_id, key_id, None).await
    }

    async fn set_disabled(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: Option<SystemTime>,
    ) -> Result<KeyInfo, ManageError> {
        let record = (self.store.set_disabled(account_id, key_id, at))
            .await?
            .ok_or(ManageError::NotFound)?;
        let action = match at {
            Some(_) => AuditAction::Disabled,
            None => AuditAction::Enabled,
        };
        self.emit(action, account_id, key_id);
        Ok(self.info(&record))
    }

    /// Revokes the key `key`, found by its digest whatever its account, because it was
    /// published (a secret scanner found it at `url`): the audit event is
    /// [`ReportedLeaked`](AuditAction::ReportedLeaked). The key's record as it is now, or `None`
    /// if no store record has this key: a key of another deployment, or no key at all. A key
    /// already revoked stays as it was.
    pub async fn revoke_leaked(
        &self,
        key: &str,
        url: Option<String>,
    ) -> Result<Option<KeyInfo>, ManageError> {
        let digest = KeyDigest::of(key);
        let Some(record) = (self.store.find(&digest.lookup_id()).await?)
            .filter(|record| record.digest.matches(&digest))
        else {
            return Ok(None);
        };
        if record.revoked_at.is_some() {
            return Ok(Some(self.info(&record)));
        }
        let (account_id, key_id) = (record.identity.account_id(), record.identity.key_id());
        let revoked = (self.store.revoke(account_id, key_id, self.clock.now()))
            .await?
            .unwrap_or(record.clone());
        self.emit(AuditAction::ReportedLeaked { url }, account_id, key_id);
        Ok(Some(self.info(&revoked)))
    }

    /// Deletes a key and its record: it is then unknown (`invalid_api_key`).
    pub async fn delete(&self, account_id: &str, key_id: &KeyId) -> Result<(), ManageError> {
        let deleted = self.store.delete(account_id, key_id).await?;
        deleted.ok_or(ManageError::NotFound)?;
        self.emit(AuditAction::Deleted, account_id, key_id);
        Ok(())
    }

    /// Creates a replacement for an active key and lets the old key work for `grace` more,
    /// then expire, so integrations can switch without downtime.
    ///
    /// The replacement has the old key's name, tier, mode, scopes, metadata and expiry: rotation
    /// changes the secret, not the policy. The old key does not count against the quota while it is rotated
    /// out, so an account at its limit can rotate, and holds one key more than its limit until
    /// the grace period ends. Rotate a key once: a replacement of a key already being rotated
    /// out would expire with it.
    pub async fn rotate(
        &self,
        account_id: &str,
        key_id: &KeyId,
        grace: Duration,
    ) -> Result<CreatedKey, ManageError> {
        let now = self.clock.now();
        let old = self
            .store
            .get(account_id, key_id)
            .await?
            .filter(|record| record.is_active(now))
            .ok_or(ManageError::NotFound)?;
        let limit = self.limit(old.identity.tier())?;
        let retire_at = Expiry::After(grace).time_after(now)?;
        let identity = old.identity.with_key_id(KeyId::random());
        let credits = old.credits.map(|credits| credits.as_of(now));
        let quota = Quota::new(limit, now).retiring(key_id.clone(), retire_at);
        let created = (self.insert(identity, old.expires_at, credits, quota, None)).await?;
        let replacement = created.info.id.clone();
        self.emit(AuditAction::Rotated { replacement }, account_id, key_id);
        Ok(created)
    }

    fn limit(&self, tier: &Tier) -> Result<usize, ManageError> {
        self.limits
            .limit(tier)
            .ok_or_else(|| ManageError::UnknownTier(tier.clone()))
    }

    async fn insert(
        &self,
        identity: KeyIdentity,
        expires_at: Option<SystemTime>,
        credits: Option<Credits>,
        quota: Quota,
        creator: Option<&KeyInfo>,
    ) -> Result<CreatedKey, ManageError> {
        let mode = identity.mode();
        let prefix = (self.format.prefix_for(mode)).ok_or(ManageError::UnsupportedMode(mode))?;
        let key = self
            .format
            .generate_for(mode)
            .expect("the mode has a prefix");
        let secret = key.expose_secret();
        let hint = hint_of(secret, prefix);
        let tier = identity.tier().clone();
        let mut record = KeyRecord::new(key.digest(), identity)
            .with_created_at(quota.now)
            .with_hint(hint);
        record.expires_at = expires_at;
        record.credits = credits;
        let info = self.info(&record);
        if let Some(creator) = creator {
            creator.may_manage(&info).map_err(ManageError::Overreach)?;
        }
        let limit = quota.limit;
        self.store
            .create(record, quota)
            .await
            .map_err(|error| match error {
                CreateError::LimitReached => ManageError::KeyLimitReached { tier, limit },
                CreateError::RetiringKeyNotFound => ManageError::NotFound,
                // Random ids and keys do not collide; a store that says so is misbehaving.
                CreateError::AlreadyExists => ManageError::Store(StoreError::new(
                    "the store reports a fresh random key as existing",
                )),
                CreateError::Store(error) => ManageError::Store(error),
            })?;
        Ok(CreatedKey { key, info })
    }
}

impl<S> fmt::Debug for KeyManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("format", &self.format)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What listings show of `key`, whose prefix is `prefix`: the prefix and the last four
/// characters (`sk_live_...Xy12`), or the prefix alone for a key whose body is shorter than 16
/// characters, of which four would tell too much.
fn hint_of(key: &str, prefix: &str) -> String {
    // Keys are visible ASCII: any byte index is a character boundary.
    let body = &key[prefix.len()..];
    if body.len() >= 16 {
        format!("{prefix}...{}", &body[body.len() - 4..])
    } else {
        format!("{prefix}...")
    }
}

/// The name trimmed, if it is 1 to [`MAX_NAME_LEN`] characters with no control character.
fn valid_name(name: &str) -> Result<&str, ManageError> {
    let name = name.trim();
    let length = name.chars().count();
    if (1..=MAX_NAME_LEN).contains(&length) && !name.chars().any(char::is_control) {
        Ok(name)
    } else {
        Err(ManageError::InvalidName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed() {
        assert_eq!(valid_name("  ci  ").unwrap(), "ci");
    }

    #[test]
    fn names_of_1_to_100_characters_are_valid() {
        assert!(valid_name("a").is_ok());
        assert!(valid_name(&"é".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn empty_blank_long_or_control_names_are_invalid() {
        for name in ["", "   ", "line\nbreak", "tab\there"] {
            assert!(
                matches!(valid_name(name), Err(ManageError::InvalidName)),
                "{name:?}"
            );
        }
        assert!(valid_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn default_limits_are_free_3_and_pro_50() {
        let limits = TierLimits::default();
        assert_eq!(limits.limit(&Tier::FREE), Some(3));
        assert_eq!(limits.limit(&Tier::PRO), Some(50));
        assert_eq!(limits.limit(&Tier::new("gold")), None);
    }

    #[test]
    fn key_info_serializes_times_as_rfc3339_utc() {
        let info = KeyInfo {
            id: KeyId::new("key_1"),
            name: "ci".into(),
            mode: KeyMode::Live,
            scopes: None,
            hint: Some("sk_live_...abcd".into()),
            created_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            expires_at: None,
            revoked_at: None,
            disabled_at: None,
            last_used_at: None,
            rate_limit: Some(RateLimit::per_minute(60)),
            credits: None,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["rate_limit"]["requests"], 60);
        assert_eq!(json["credits"], serde_json::Value::Null);
        assert_eq!(json["created_at"], "2023-11-14T22:13:20Z");
        assert_eq!(json["expires_at"], serde_json::Value::Null);
    }

    /// A key's info with only what [`KeyInfo::may_manage`] compares; `expires_at` in seconds
    /// after the epoch.
    fn powers(mode: KeyMode, scopes: Option<&[&str]>, expires_at: Option<u64>) -> KeyInfo {
        KeyInfo {
            id: KeyId::new("key_1"),
            name: "k".into(),
            mode,
            scopes: scopes.map(|scopes| Scopes::new(scopes.iter().copied()).unwrap()),
            hint: None,
            created_at: None,
            expires_at: expires_at.map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            revoked_at: None,
            disabled_at: None,
            last_used_at: None,
            rate_limit: None,
            credits: None,
        }
    }

    const LIVE: KeyMode = KeyMode::Live;
    const TEST: KeyMode = KeyMode::Test;

    #[test]
    fn full_access_live_key_that_never_expires_manages_any_key() {
        let admin = powers(LIVE, None, None);
        for target in [
            powers(LIVE, None, None),
            powers(TEST, Some(&["iocs:read"]), Some(1)),
        ] {
            assert_eq!(admin.may_manage(&target), Ok(()));
        }
    }

    #[test]
    fn test_key_may_not_manage_a_live_key() {
        let test = powers(TEST, None, None);
        assert_eq!(
            test.may_manage(&powers(LIVE, None, None)),
            Err(Overreach::LiveKey)
        );
        assert_eq!(test.may_manage(&powers(TEST, None, None)), Ok(()));
    }

    #[test]
    fn restricted_key_may_not_manage_a_full_access_key() {
        let restricted = powers(LIVE, Some(&["keys:write"]), None);
        let admin = powers(LIVE, None, None);
        assert_eq!(restricted.may_manage(&admin), Err(Overreach::FullAccess));
    }

    #[test]
    fn restricted_key_may_not_manage_a_key_with_a_scope_it_lacks() {
        let restricted = powers(LIVE, Some(&["iocs:read", "keys:write"]), None);
        let wider = powers(LIVE, Some(&["iocs:read", "iocs:write"]), None);
        let refused = restricted.may_manage(&wider);
        assert_eq!(refused, Err(Overreach::Scope("iocs:write".into())));
    }

    #[test]
    fn restricted_key_manages_keys_with_some_of_its_scopes() {
        let restricted = powers(LIVE, Some(&["iocs:read", "keys:write"]), None);
        for scopes in [&["iocs:read"][..], &["iocs:read", "keys:write"]] {
            let target = powers(LIVE, Some(scopes), None);
            assert_eq!(restricted.may_manage(&target), Ok(()), "{scopes:?}");
        }
    }

    #[test]
    fn expiring_key_may_not_manage_a_key_that_never_expires_or_expires_later() {
        let expiring = powers(LIVE, None, Some(100));
        for expires_at in [None, Some(101)] {
            let target = powers(LIVE, None, expires_at);
            let refused = expiring.may_manage(&target);
            assert_eq!(refused, Err(Overreach::Outlives), "{expires_at:?}");
        }
    }

    #[test]
    fn expiring_key_manages_keys_that_expire_no_later() {
        let expiring = powers(LIVE, None, Some(100));
        for expires_at in [99, 100] {
            let target = powers(LIVE, None, Some(expires_at));
            assert_eq!(expiring.may_manage(&target), Ok(()), "{expires_at}");
        }
    }

    #[test]
    fn mode_is_checked_before_scopes_and_scopes_before_expiry() {
        let caller = powers(TEST, Some(&["iocs:read"]), Some(100));
        let target = powers(LIVE, None, None);
        assert_eq!(caller.may_manage(&target), Err(Overreach::LiveKey));
        let target = powers(TEST, None, None);
        assert_eq!(caller.may_manage(&target), Err(Overreach::FullAccess));
    }

    #[tokio::test]
    async fn create_refuses_a_key_more_powerful_than_its_creator() {
        let keys = KeyManager::new(crate::MemoryKeyStore::new());
        let new = |name: &str| NewKey::new("acct", Tier::PRO, name);
        let reader = new("reader").scopes(["iocs:read"]);
        let reader = keys.create(reader).await.unwrap().info;
        let refused = keys.create(new("admin").created_by(&reader)).await;
        assert!(matches!(
            refused,
            Err(ManageError::Overreach(Overreach::FullAccess))
        ));
        assert_eq!(keys.list("acct").await.unwrap().len(), 1, "nothing created");
    }

    #[tokio::test]
    async fn create_compares_an_expires_in_at_the_managers_clock() {
        let clock =
            crate::clock::ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        let keys = KeyManager::new(crate::MemoryKeyStore::new()).clock(clock);
        let new = |name: &str| NewKey::new("acct", Tier::PRO, name);
        let hourly = new("hourly").expires_in(Duration::from_secs(3600));
        let hourly = keys.create(hourly).await.unwrap().info;
        let later = new("later").expires_in(Duration::from_secs(3601));
        let refused = keys.create(later.created_by(&hourly)).await;
        assert!(matches!(
            refused,
            Err(ManageError::Overreach(Overreach::Outlives))
        ));
        let same = new("same").expires_in(Duration::from_secs(3600));
        assert!(keys.create(same.created_by(&hourly)).await.is_ok());
    }

    #[test]
    fn key_info_shows_mode_and_scopes() {
        let identity = KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", Tier::FREE)
            .with_mode(KeyMode::Test)
            .with_scopes(Scopes::new(["iocs:read"]).unwrap());
        let record = KeyRecord::new(crate::key::KeyDigest::of("sk_test_x"), identity);
        let json = serde_json::to_value(KeyInfo::from(&record)).unwrap();
        assert_eq!(json["mode"], "test");
        assert_eq!(json["scopes"], serde_json::json!(["iocs:read"]));
    }
}
