use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use async_trait::async_trait;

use super::{CreateError, KeyRecord, KeyStore, Quota, StoreError, WritableKeyStore};
use crate::identity::KeyId;
use crate::key::LookupId;

/// An in-process store: the default for tests, demos and single-instance services.
///
/// Lookups are O(1) hash-map reads under a read lock, so concurrent requests do not wait for each
/// other; writes take the lock briefly, which makes quota checks atomic. Clones share the same
/// keys, so keep one to manage keys while the layer holds another.
///
/// ```
/// use tower_api_key::{KeyFormat, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier};
///
/// let store = MemoryKeyStore::new();
/// let key = KeyFormat::default().generate();
/// let identity = KeyIdentity::new(KeyId::random(), "acct_42", "ci", Tier::FREE);
/// store.insert(KeyRecord::new(key.digest(), identity));
/// assert_eq!(store.len(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryKeyStore {
    keys: Arc<RwLock<Keys>>,
}

/// The records and their indexes, changed together under one lock.
#[derive(Debug, Default)]
struct Keys {
    by_lookup_id: HashMap<LookupId, KeyRecord, BuildHasherDefault<PassThrough>>,
    lookup_id_by_key_id: HashMap<KeyId, LookupId>,
    key_ids_by_account: HashMap<String, Vec<KeyId>>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record as it is, with no quota check, replacing any with the same key id or the
    /// same key. To create keys for users, use [`KeyManager`](crate::KeyManager).
    ///
    /// The store indexes records by bytes of their digest without a secret seed, which is safe
    /// for digests of keys this crate generated. Do not insert keys that untrusted users chose:
    /// they could pick keys whose digests crowd one bucket.
    pub fn insert(&self, record: KeyRecord) {
        let mut keys = self.write();
        keys.remove_by_key_id(record.identity.key_id());
        if let Some(replaced) = keys.by_lookup_id.get(&record.digest.lookup_id()) {
            let replaced = replaced.identity.key_id().clone();
            keys.remove_by_key_id(&replaced);
        }
        keys.add(record);
    }

    /// Deletes the record of key `key_id`, of any account, returning it; the key is then unknown.
    pub fn remove(&self, key_id: &KeyId) -> Option<KeyRecord> {
        self.write().remove_by_key_id(key_id)
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.read().by_lookup_id.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // No code panics while holding the lock, so a poisoned lock still holds consistent keys.
    fn read(&self) -> RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A hasher for [`LookupId`]s, whose `Hash` writes one uniformly random `u64`: it passes that
/// through instead of running SipHash over it. Callers choose which ids to look up, never which
/// are stored (those are digests of keys this crate generated), so they cannot crowd a bucket.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        // Only `LookupId` is hashed here, and it writes a single `u64`.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Keys {
    fn add(&mut self, record: KeyRecord) {
        let lookup_id = record.digest.lookup_id();
        let key_id = record.identity.key_id().clone();
        self.key_ids_by_account
            .entry(record.identity.account_id().to_owned())
            .or_default()
            .push(key_id.clone());
        self.lookup_id_by_key_id.insert(key_id, lookup_id);
        self.by_lookup_id.insert(lookup_id, record);
    }

    fn remove_by_key_id(&mut self, key_id: &KeyId) -> Option<KeyRecord> {
        let lookup_id = self.lookup_id_by_key_id.remove(key_id)?;
        let record = self.by_lookup_id.remove(&lookup_id)?;
        let account_id = record.identity.account_id();
        if let Some(ids) = self.key_ids_by_account.get_mut(account_id) {
            ids.retain(|id| id != key_id);
            if ids.is_empty() {
                self.key_ids_by_account.remove(account_id);
            }
        }
        Some(record)
    }

    /// The record of key `key_id` if it belongs to `account_id`.
    fn get_mut(&mut self, account_id: &str, key_id: &KeyId) -> Option<&mut KeyRecord> {
        let lookup_id = self.lookup_id_by_key_id.get(key_id)?;
        self.by_lookup_id
            .get_mut(lookup_id)
            .filter(|record| record.identity.account_id() == account_id)
    }

    fn records_of<'a>(&'a self, account_id: &str) -> impl Iterator<Item = &'a KeyRecord> + 'a {
        self.key_ids_by_account
            .get(account_id)
            .into_iter()
            .flatten()
            .filter_map(|key_id| self.by_lookup_id.get(self.lookup_id_by_key_id.get(key_id)?))
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.read().by_lookup_id.get(lookup_id).cloned())
    }

    fn find_now(&self, lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        Some(Ok(self.read().by_lookup_id.get(lookup_id).cloned()))
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        let mut keys = self.write();
        if let Some(stored) = keys.by_lookup_id.get_mut(&record.digest.lookup_id()) {
            stored.last_used_at = stored.last_used_at.max(Some(at));
        }
    }
}

#[async_trait]
impl WritableKeyStore for MemoryKeyStore {
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        let mut keys = self.write();
        let taken = keys
            .lookup_id_by_key_id
            .contains_key(record.identity.key_id())
            || keys.by_lookup_id.contains_key(&record.digest.lookup_id());
        if taken {
            return Err(CreateError::AlreadyExists);
        }
        let account_id = record.identity.account_id();
        let retiring_id = quota.retiring.as_ref().map(|(key_id, _)| key_id);
        if let Some(key_id) = retiring_id {
            let active = keys
                .get_mut(account_id, key_id)
                .is_some_and(|old| old.is_active(quota.now));
            if !active {
                return Err(CreateError::RetiringKeyNotFound);
            }
        }
        let active = keys
            .records_of(account_id)
            .filter(|old| Some(old.identity.key_id()) != retiring_id && old.is_active(quota.now))
            .count();
        if active >= quota.limit {
            return Err(CreateError::LimitReached);
        }
        if let Some((key_id, expires_at)) = &quota.retiring {
            if let Some(old) = keys.get_mut(account_id, key_id) {
                old.expires_at = Some(
                    old.expires_at
                        .map_or(*expires_at, |own| own.min(*expires_at)),
                );
            }
        }
        keys.add(record);
        Ok(())
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.read().records_of(account_id).cloned().collect())
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.write();
        Ok(keys.get_mut(account_id, key_id).map(|record| {
            record.revoked_at.get_or_insert(at);
            record.clone()
        }))
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.write();
        if keys.get_mut(account_id, key_id).is_none() {
            return Ok(None);
        }
        Ok(keys.remove_by_key_id(key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyDigest, KeyIdentity, Tier};

    fn record(key_id: &str, key: &str) -> KeyRecord {
        let identity = KeyIdentity::new(KeyId::new(key_id), "acct", "ci", Tier::FREE);
        KeyRecord::new(KeyDigest::of(key), identity)
    }

    fn find(store: &MemoryKeyStore, key: &str) -> Option<KeyRecord> {
        let lookup_id = KeyDigest::of(key).lookup_id();
        store.read().by_lookup_id.get(&lookup_id).cloned()
    }

    #[test]
    fn inserting_same_key_id_replaces_the_old_key() {
        let store = MemoryKeyStore::new();
        store.insert(record("key_1", "old"));
        store.insert(record("key_1", "new"));
        assert_eq!(store.len(), 1);
        assert!(find(&store, "old").is_none());
        assert!(find(&store, "new").is_some());
    }

    #[test]
    fn inserting_same_key_under_new_id_drops_the_old_id() {
        let store = MemoryKeyStore::new();
        store.insert(record("key_1", "same"));
        store.insert(record("key_2", "same"));
        assert_eq!(store.len(), 1);
        assert!(store.remove(&KeyId::new("key_1")).is_none());
        assert!(store.remove(&KeyId::new("key_2")).is_some());
        assert!(store.is_empty());
    }

    #[test]
    fn removed_key_is_not_found() {
        let store = MemoryKeyStore::new();
        store.insert(record("key_1", "k"));
        assert!(store.remove(&KeyId::new("key_1")).is_some());
        assert!(find(&store, "k").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_stay_consistent_while_keys_are_written() {
        let store = MemoryKeyStore::new();
        let stable = record("key_stable", "stable");
        store.insert(stable.clone());
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for index in 0..2_000 {
                    let key_id = format!("key_{index}");
                    store.insert(record(&key_id, &key_id));
                    if index % 2 == 0 {
                        store.remove(&KeyId::new(key_id));
                    }
                }
            })
        };
        let lookup_id = stable.digest.lookup_id();
        while !writer.is_finished() {
            let found = store.find(&lookup_id).await.unwrap().unwrap();
            assert_eq!(found.identity.key_id().as_str(), "key_stable");
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        assert_eq!(store.len(), 1 + 1_000);
        let found = store
            .find(&KeyDigest::of("key_1999").lookup_id())
            .await
            .unwrap();
        assert!(found.is_some());
    }

    #[test]
    fn clones_share_keys() {
        let store = MemoryKeyStore::new();
        let clone = store.clone();
        store.insert(record("key_1", "k"));
        assert!(find(&clone, "k").is_some());
    }
}
