//! Importing keys issued by another system: [`KeyManager::import`].

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::{hint_of, valid_name, KeyManager, ManageError, LATEST};
use crate::audit::AuditAction;
use crate::identity::{KeyId, KeyIdentity, Tier};
use crate::key::{ApiKey, KeyDigest};
use crate::mode::KeyMode;
use crate::scope::{ScopeError, Scopes};
use crate::store::{CreateError, KeyRecord, Quota, WritableKeyStore};

/// How many accounts' keys an import that respects the quota checks at a time.
const CONCURRENT_ACCOUNTS: usize = 16;

/// The longest key id or account id an import accepts, in bytes.
const MAX_ID_LEN: usize = 255;

/// A key issued by another system, to [import](KeyManager::import) with its id, account, tier,
/// name and times: from the plaintext key, which the manager's [`KeyFormat`](crate::key::KeyFormat)
/// must accept (a [legacy prefix](crate::key::KeyFormat::legacy_prefix) for keys of another
/// shape), or from its SHA-256 digest alone, all a store needs.
///
/// A live key with full access, no expiry, created at the time of the import, unless told
/// otherwise. A key imported from its digest has no hint unless given one.
#[derive(Clone, Debug)]
pub struct ImportedKey {
    secret: Secret,
    key_id: KeyId,
    account_id: String,
    tier: Tier,
    name: String,
    created_at: Option<SystemTime>,
    expires_at: Option<SystemTime>,
    mode: KeyMode,
    scopes: Option<Vec<String>>,
    hint: Option<String>,
    metadata: Option<serde_json::Value>,
}

#[derive(Clone, Debug)]
enum Secret {
    Key(ApiKey),
    Digest(KeyDigest),
}

impl ImportedKey {
    /// The plaintext key `key`, whose id is `key_id`, of account `account_id` on `tier`, named
    /// `name`. Only its digest is stored.
    pub fn key(
        key: ApiKey,
        key_id: KeyId,
        account_id: impl Into<String>,
        tier: Tier,
        name: impl Into<String>,
    ) -> Self {
        Self::with_secret(
            Secret::Key(key),
            key_id,
            account_id.into(),
            tier,
            name.into(),
        )
    }

    /// The key whose SHA-256 digest is `digest` (of the whole key string, as
    /// [`KeyDigest::of`] computes it), otherwise as [`ImportedKey::key`].
    pub fn digest(
        digest: KeyDigest,
        key_id: KeyId,
        account_id: impl Into<String>,
        tier: Tier,
        name: impl Into<String>,
    ) -> Self {
        Self::with_secret(
            Secret::Digest(digest),
            key_id,
            account_id.into(),
            tier,
            name.into(),
        )
    }

    fn with_secret(
        secret: Secret,
        key_id: KeyId,
        account_id: String,
        tier: Tier,
        name: String,
    ) -> Self {
        Self {
            secret,
            key_id,
            account_id,
            tier,
            name,
            created_at: None,
            expires_at: None,
            mode: KeyMode::Live,
            scopes: None,
            hint: None,
            metadata: None,
        }
    }

    /// When the other system created the key.
    pub fn created_at(mut self, created_at: SystemTime) -> Self {
        self.created_at = Some(created_at);
        self
    }

    /// When the key stops working; a time already past imports an expired key.
    pub fn expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// The key's mode; a plaintext key's prefix must name the same.
    pub fn mode(mut self, mode: KeyMode) -> Self {
        self.mode = mode;
        self
    }

    /// Restricts the key to `scopes`, as [`NewKey::scopes`](crate::NewKey::scopes) does.
    pub fn scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// What listings show to recognise the key by (`ak_...Xy12`), never the key: for a key
    /// imported from its digest, which otherwise has none. A plaintext key's hint is otherwise
    /// its prefix and last four characters (the prefix alone for a body under 16 characters).
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Application data that handlers read from the key's [`KeyIdentity`].
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// Whether an import counts each key against its account's quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportQuota {
    /// Each key goes through the atomic quota check of [`KeyManager::create`]: a key beyond
    /// its tier's limit of active keys is rejected ([`ManageError::KeyLimitReached`]) and the
    /// others go on. One store call per key, the keys of one account in order and up to 16
    /// accounts at a time.
    Respected,
    /// No quota is counted: for a migration, whose accounts may hold more keys than their
    /// tier would let them create. Keys go to the store in bulk
    /// ([`WritableKeyStore::import`]).
    Bypassed,
}

/// What became of one key of an [import](KeyManager::import).
#[derive(Debug)]
#[non_exhaustive]
pub enum ImportOutcome {
    /// The key is stored now.
    Imported,
    /// A key with its id or its secret was stored already, and was left as it is: running an
    /// import twice imports nothing twice.
    AlreadyPresent,
    /// The key was not imported, for this reason.
    Rejected(ImportError),
}

/// Why one key of an [import](KeyManager::import) was rejected.
#[derive(Debug)]
#[non_exhaustive]
pub enum ImportError {
    /// The plaintext key would not authenticate: the manager's key format does not accept it
    /// (give its prefix to [`KeyFormat::legacy_prefix`](crate::key::KeyFormat::legacy_prefix)),
    /// or its prefix names another mode than the key's.
    KeyNotAccepted,
    /// The key id or account id is empty, longer than 255 bytes, or holds control characters.
    InvalidId,
    /// The creation or expiry time lies outside the years 1970 to 9999, or the key expires
    /// before it was created.
    InvalidTime,
    /// Refused as [`KeyManager::create`] refuses a key: an invalid name or scopes, an unknown
    /// tier, or (with [`ImportQuota::Respected`]) the tier's limit reached.
    Refused(ManageError),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyNotAccepted => f.write_str(
                "the key format does not accept this key, or its prefix names another mode \
                 (configure its prefix as a legacy prefix)",
            ),
            Self::InvalidId => write!(
                f,
                "a key id and an account id must be 1 to {MAX_ID_LEN} bytes, without control \
                 characters"
            ),
            Self::InvalidTime => f.write_str(
                "a time lies outside the years 1970 to 9999, or the key expires before its \
                 creation",
            ),
            Self::Refused(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for ImportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Refused(error) => Some(error),
            _ => None,
        }
    }
}

impl<S: WritableKeyStore> KeyManager<S> {
    /// Imports `keys` issued by another system, keeping their ids, names, times and secrets,
    /// so that their owners go on using them: the outcome of each key, in order. A key already
    /// present (its id or its secret stored) is left as it is, so importing twice imports
    /// nothing twice; a rejected key does not stop the others. Each key imported is an
    /// [`Imported`](AuditAction::Imported) audit event.
    ///
    /// An error is the store's failure, which stops the import: the keys before it may be
    /// stored, and importing all of them again imports the rest.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::{access::KeyMode, key::{KeyDigest, KeyFormat}, ApiKey, KeyId, KeyManager, MemoryKeyStore, Tier};
    /// use tower_api_key::manage::{ImportOutcome, ImportQuota, ImportedKey};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_api_key::manage::ManageError> {
    /// // Keys of the old system start with `ak_` and have no checksum.
    /// let format = KeyFormat::default().legacy_prefix("ak_", KeyMode::Live);
    /// let keys = KeyManager::new(MemoryKeyStore::new()).key_format(format);
    /// let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let old = vec![
    ///     ImportedKey::key(ApiKey::new("ak_9f8e7d6c5b4a"), KeyId::new("old_1"), "acct_42", Tier::PRO, "ci")
    ///         .created_at(created),
    ///     ImportedKey::digest(KeyDigest::of("ak_0a1b2c3d4e5f"), KeyId::new("old_2"), "acct_42", Tier::PRO, "deploy")
    ///         .created_at(created),
    /// ];
    /// let outcomes = keys.import(old.clone(), ImportQuota::Bypassed).await?;
    /// assert!(outcomes.iter().all(|outcome| matches!(outcome, ImportOutcome::Imported)));
    ///
    /// let again = keys.import(old, ImportQuota::Bypassed).await?;
    /// assert!(again.iter().all(|outcome| matches!(outcome, ImportOutcome::AlreadyPresent)));
    /// assert_eq!(keys.list("acct_42").await?.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn import(
        &self,
        keys: Vec<ImportedKey>,
        quota: ImportQuota,
    ) -> Result<Vec<ImportOutcome>, ManageError> {
        let now = self.clock.now();
        let mut outcomes = Vec::with_capacity(keys.len());
        let mut valid = Vec::with_capacity(keys.len());
        for key in keys {
            match self.imported_record(key, now) {
                Ok(record) => {
                    valid.push((outcomes.len(), record));
                    outcomes.push(ImportOutcome::Imported);
                }
                Err(error) => outcomes.push(ImportOutcome::Rejected(error)),
            }
        }
        let events: Vec<(usize, String, KeyId)> = (valid.iter())
            .map(|(index, record)| {
                let identity = &record.identity;
                let account_id = identity.account_id().to_owned();
                (*index, account_id, identity.key_id().clone())
            })
            .collect();
        match quota {
            ImportQuota::Respected => {
                // Accounts are independent: each account's keys are checked in order, and
                // several accounts at a time.
                let mut accounts: HashMap<String, usize> = HashMap::new();
                let mut groups: Vec<Vec<(usize, KeyRecord)>> = Vec::new();
                for (index, record) in valid {
                    let account_id = record.identity.account_id().to_owned();
                    let group = *accounts.entry(account_id).or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                    groups[group].push((index, record));
                }
                let imported: Vec<Vec<(usize, ImportOutcome)>> = stream::iter(groups)
                    .map(|group| async move {
                        let mut imported = Vec::with_capacity(group.len());
                        for (index, record) in group {
                            imported.push((index, self.import_one(record, now).await?));
                        }
                        Ok::<_, ManageError>(imported)
                    })
                    .buffer_unordered(CONCURRENT_ACCOUNTS)
                    .try_collect()
                    .await?;
                for (index, outcome) in imported.into_iter().flatten() {
                    outcomes[index] = outcome;
                }
            }
            ImportQuota::Bypassed => {
                let records: Vec<KeyRecord> = valid.into_iter().map(|(_, record)| record).collect();
                let inserted = self.store.import(records).await?;
                if inserted.len() != events.len() {
                    let message = "the store's import answered for another number of keys";
                    return Err(ManageError::Store(crate::StoreError::new(message)));
                }
                for ((index, _, _), inserted) in events.iter().zip(inserted) {
                    if !inserted {
                        outcomes[*index] = ImportOutcome::AlreadyPresent;
                    }
                }
            }
        }
        for (index, account_id, key_id) in &events {
            if matches!(outcomes[*index], ImportOutcome::Imported) {
                self.emit(AuditAction::Imported, account_id, key_id);
            }
        }
        Ok(outcomes)
    }

    /// `record` created through the quota check, or why not.
    async fn import_one(
        &self,
        record: KeyRecord,
        now: SystemTime,
    ) -> Result<ImportOutcome, ManageError> {
        let tier = record.identity.tier().clone();
        let limit = self.limit(&tier)?;
        let lookup_id = record.digest.lookup_id();
        let (account_id, key_id) = (
            record.identity.account_id().to_owned(),
            record.identity.key_id().clone(),
        );
        match self.store.create(record, Quota::new(limit, now)).await {
            Ok(()) => Ok(ImportOutcome::Imported),
            Err(CreateError::AlreadyExists) => Ok(ImportOutcome::AlreadyPresent),
            Err(CreateError::LimitReached) => {
                // A store counts before it looks for the key: a key imported by an earlier run
                // into a full account is present, not refused.
                let present = self.store.find(&lookup_id).await?.is_some()
                    || self.store.get(&account_id, &key_id).await?.is_some();
                Ok(if present {
                    ImportOutcome::AlreadyPresent
                } else {
                    let refusal = ManageError::KeyLimitReached { tier, limit };
                    ImportOutcome::Rejected(ImportError::Refused(refusal))
                })
            }
            Err(CreateError::RetiringKeyNotFound) => Err(ManageError::Store(
                crate::StoreError::new("the store retired a key that an import did not name"),
            )),
            Err(CreateError::Store(error)) => Err(ManageError::Store(error)),
        }
    }

    /// The record of `key`, checked as `create` checks a new key, and its secret against the
    /// key format.
    fn imported_record(&self, key: ImportedKey, now: SystemTime) -> Result<KeyRecord, ImportError> {
        if !valid_id(key.key_id.as_str()) || !valid_id(&key.account_id) {
            return Err(ImportError::InvalidId);
        }
        let name = valid_name(&key.name).map_err(ImportError::Refused)?;
        let scopes = (key.scopes.map(Scopes::new).transpose())
            .map_err(|error: ScopeError| ImportError::Refused(ManageError::InvalidScopes(error)))?;
        self.limit(&key.tier).map_err(ImportError::Refused)?;
        let created_at = key.created_at.unwrap_or(now);
        let in_range = |time: SystemTime| {
            (time.duration_since(SystemTime::UNIX_EPOCH)).is_ok_and(|since| since <= LATEST)
        };
        let expires_well = key
            .expires_at
            .is_none_or(|expires_at| in_range(expires_at) && expires_at > created_at);
        if !in_range(created_at) || !expires_well {
            return Err(ImportError::InvalidTime);
        }
        let (digest, hint) = match &key.secret {
            Secret::Key(secret) => {
                let text = secret.expose_secret();
                let (prefix, _) = (self.format.prefix_of(text.as_bytes()))
                    .filter(|(_, mode)| *mode == key.mode)
                    .ok_or(ImportError::KeyNotAccepted)?;
                (
                    secret.digest(),
                    key.hint.or_else(|| Some(hint_of(text, prefix))),
                )
            }
            Secret::Digest(digest) => (*digest, key.hint),
        };
        let mut identity =
            KeyIdentity::new(key.key_id, key.account_id, name, key.tier).with_mode(key.mode);
        if let Some(scopes) = scopes {
            identity = identity.with_scopes(scopes);
        }
        if let Some(metadata) = key.metadata {
            identity = identity.with_metadata(metadata);
        }
        let mut record = KeyRecord::new(digest, identity).with_created_at(created_at);
        record.expires_at = key.expires_at;
        if let Some(hint) = hint {
            record = record.with_hint(hint);
        }
        Ok(record)
    }
}

/// 1 to [`MAX_ID_LEN`] bytes without control characters.
fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::audit::AuditEvent;
    use crate::key::KeyFormat;
    use crate::MemoryKeyStore;

    fn digest_key(id: &str) -> ImportedKey {
        let digest = KeyDigest::of(&format!("ak_{id}"));
        ImportedKey::digest(digest, KeyId::new(id), "acct_1", Tier::FREE, "old")
    }

    fn reason(outcome: &ImportOutcome) -> String {
        match outcome {
            ImportOutcome::Rejected(error) => error.to_string(),
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[tokio::test]
    async fn each_invalid_key_is_rejected_for_its_own_reason_and_the_rest_go_on() {
        let format = KeyFormat::default().legacy_prefix("ak_", KeyMode::Live);
        let keys = KeyManager::new(MemoryKeyStore::new()).key_format(format);
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let plain = |key: &str, id: &str| {
            ImportedKey::key(
                ApiKey::new(key),
                KeyId::new(id),
                "acct_1",
                Tier::FREE,
                "old",
            )
        };
        let batch = vec![
            digest_key(""),
            ImportedKey::digest(KeyDigest::of("x"), KeyId::new("a"), "", Tier::FREE, "old"),
            ImportedKey::digest(
                KeyDigest::of("y"),
                KeyId::new("b"),
                "acct_1",
                Tier::FREE,
                " ",
            ),
            digest_key("c").scopes(Vec::<String>::new()),
            ImportedKey::digest(
                KeyDigest::of("z"),
                KeyId::new("d"),
                "acct_1",
                Tier::new("gold"),
                "x",
            ),
            digest_key("e").created_at(before_1970),
            digest_key("f").created_at(created).expires_at(created),
            plain("zz_not_accepted", "g"),
            plain("ak_a_test_key_as_live", "h").mode(KeyMode::Test),
            digest_key("ok"),
        ];
        let outcomes = keys.import(batch, ImportQuota::Bypassed).await.unwrap();
        let reasons: Vec<String> = outcomes[..9].iter().map(reason).collect();
        assert!(
            reasons[0].contains("key id and an account id"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("key id and an account id"),
            "{reasons:?}"
        );
        assert!(reasons[2].contains("key name"), "{reasons:?}");
        assert!(reasons[3].contains("scope"), "{reasons:?}");
        assert!(reasons[4].contains("\"gold\""), "{reasons:?}");
        assert!(reasons[5].contains("1970 to 9999"), "{reasons:?}");
        assert!(reasons[6].contains("before its creation"), "{reasons:?}");
        assert!(reasons[7].contains("does not accept"), "{reasons:?}");
        assert!(reasons[8].contains("another mode"), "{reasons:?}");
        assert!(matches!(outcomes[9], ImportOutcome::Imported));
        assert_eq!(keys.list("acct_1").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn only_keys_imported_are_audit_events() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let keys = KeyManager::new(MemoryKeyStore::new())
            .audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()));
        let batch = || vec![digest_key("one"), digest_key("two"), digest_key("")];
        for quota in [ImportQuota::Respected, ImportQuota::Bypassed] {
            keys.import(batch(), quota).await.unwrap();
        }
        let events = events.lock().unwrap();
        let imported: Vec<&str> = events.iter().map(|event| event.key_id.as_str()).collect();
        assert_eq!(
            imported,
            ["one", "two"],
            "a second run and a rejected key are no events"
        );
        assert!(events
            .iter()
            .all(|event| event.action == AuditAction::Imported));
        assert!(events.iter().all(|event| event.account_id == "acct_1"));
    }

    #[test]
    fn a_hint_shows_four_characters_of_a_long_body_only() {
        assert_eq!(hint_of("ak_0123456789abcdefWXYZ", "ak_"), "ak_...WXYZ");
        assert_eq!(hint_of("ak_0123456789abcde", "ak_"), "ak_...");
        assert_eq!(hint_of("0123456789abcdefWXYZ", ""), "...WXYZ");
    }
}
