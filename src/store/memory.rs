use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::{KeyRecord, KeyStore, StoreError};
use crate::identity::KeyId;
use crate::key::LookupId;

/// An in-process store: the default for tests, demos and single-instance services.
///
/// Lookups are O(1) hash-map reads under a read lock, so concurrent requests do not wait for each
/// other. Clones share the same keys, so keep one to manage keys while the layer holds another.
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
    by_lookup_id: HashMap<LookupId, KeyRecord>,
    lookup_id_by_key_id: HashMap<KeyId, LookupId>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record, replacing any with the same key id or the same key.
    pub fn insert(&self, record: KeyRecord) {
        let lookup_id = record.digest.lookup_id();
        let key_id = record.identity.key_id().clone();
        let mut keys = self.write();
        keys.remove_by_key_id(&key_id);
        if let Some(replaced) = keys.by_lookup_id.remove(&lookup_id) {
            keys.lookup_id_by_key_id.remove(replaced.identity.key_id());
        }
        keys.lookup_id_by_key_id.insert(key_id, lookup_id);
        keys.by_lookup_id.insert(lookup_id, record);
    }

    /// Deletes the record of key `key_id`, returning it; the key is then unknown.
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

impl Keys {
    fn remove_by_key_id(&mut self, key_id: &KeyId) -> Option<KeyRecord> {
        let lookup_id = self.lookup_id_by_key_id.remove(key_id)?;
        self.by_lookup_id.remove(&lookup_id)
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.read().by_lookup_id.get(lookup_id).cloned())
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

    #[test]
    fn clones_share_keys() {
        let store = MemoryKeyStore::new();
        let clone = store.clone();
        store.insert(record("key_1", "k"));
        assert!(find(&clone, "k").is_some());
    }
}
