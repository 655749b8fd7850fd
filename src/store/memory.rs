use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use hashbrown::HashTable;

use super::{CreateError, KeyRecord, KeyStore, Quota, StoreError, WritableKeyStore};
use crate::identity::KeyId;
use crate::identity::KeyIdentity;
use crate::key::{KeyDigest, LookupId};
use crate::limit::{Credits, Spend};

/// An in-process store: the default for tests, demos and single-instance services.
///
/// Lookups are O(1) hash-table reads under a read lock sharded per thread (crossbeam's
/// `ShardedLock`), so concurrent requests neither wait for each other nor bounce one shared
/// lock word between cores; writes take every shard briefly, which makes quota checks atomic.
/// Clones share the same keys, so keep one to manage keys while the layer holds another.
///
/// A key with short ids and name takes about 460 bytes, 500 as [`KeyManager`](crate::KeyManager)
/// writes it with a creation time and a hint (`cargo bench --bench memory_per_key`),
/// of which about 80 are the index of active keys that quota checks count. Its times are kept to
/// the nanosecond from 1677 to 2262; a time beyond is kept as the nearest of those.
///
/// ```
/// use tower_api_key::{KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier, key::KeyFormat};
///
/// let store = MemoryKeyStore::new();
/// let key = KeyFormat::default().generate();
/// let identity = KeyIdentity::new(KeyId::random(), "acct_42", "ci", Tier::FREE);
/// store.insert(KeyRecord::new(key.digest(), identity));
/// assert_eq!(store.len(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryKeyStore {
    keys: Arc<ShardedLock<Keys>>,
}

/// The records and their indexes, changed together under one lock.
///
/// Each record sits once in `slots`; the three indexes hold only its slot number (4 bytes), so
/// no key id or account id is copied into an index. An account's records are chained through
/// [`Slot::next_in_account`] from the slot its index entry names.
#[derive(Default)]
struct Keys {
    slots: Vec<Option<Slot>>,
    /// Empty slots, reused before `slots` grows.
    free: Vec<u32>,
    /// Hashed by the lookup id's first eight bytes, which come from SHA-256.
    by_lookup_id: HashTable<u32>,
    /// Hashed with a per-store random seed: key ids and account ids may be chosen by users.
    by_key_id: HashTable<u32>,
    /// The first slot of each account's chain.
    by_account: HashTable<u32>,
    active: ActiveKeys,
    /// The balances of the keys that have one, apart from the slots, which most keys would
    /// leave empty.
    credits: Balances,
    seed: RandomState,
    len: usize,
}

/// Each metered key's balance, by key id.
#[derive(Default)]
struct Balances(HashMap<KeyId, Credits>);

impl Balances {
    fn of(&self, key_id: &KeyId) -> Option<Credits> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(key_id).copied()
    }
}

/// Each account's active keys, by slot number, with their expiry: what a quota check counts,
/// so that it reads none of the account's revoked or expired records.
///
/// A key leaves it when revoked or removed, and once expired at its account's next create.
#[derive(Default)]
struct ActiveKeys(HashMap<Box<str>, HashMap<u32, StoredTime>>);

impl ActiveKeys {
    /// Adds slot `slot` of `account_id`, or sets its expiry if it is there.
    fn insert(&mut self, account_id: &str, slot: u32, expires_at: StoredTime) {
        match self.0.get_mut(account_id) {
            Some(slots) => {
                slots.insert(slot, expires_at);
            }
            None => {
                self.0
                    .insert(account_id.into(), HashMap::from([(slot, expires_at)]));
            }
        }
    }

    fn remove(&mut self, account_id: &str, slot: u32) {
        if let Some(slots) = self.0.get_mut(account_id) {
            slots.remove(&slot);
            if slots.is_empty() {
                self.0.remove(account_id);
            }
        }
    }

    fn contains(&self, account_id: &str, slot: u32) -> bool {
        self.0
            .get(account_id)
            .is_some_and(|slots| slots.contains_key(&slot))
    }

    /// How many keys of `account_id` are active at `now`, after dropping those expired by then.
    fn count(&mut self, account_id: &str, now: SystemTime) -> usize {
        let Some(slots) = self.0.get_mut(account_id) else {
            return 0;
        };
        slots.retain(|_, expires_at| super::is_active(None, expires_at.get(), now));
        let count = slots.len();
        if count == 0 {
            self.0.remove(account_id);
        }
        count
    }
}

struct Slot {
    record: StoredRecord,
    next_in_account: Option<u32>,
}

/// A [`KeyRecord`] as the store keeps it: 96 bytes, where `KeyRecord` takes 176.
struct StoredRecord {
    digest: KeyDigest,
    identity: KeyIdentity,
    hint: Option<Arc<str>>,
    expires_at: StoredTime,
    revoked_at: StoredTime,
    disabled_at: StoredTime,
    created_at: StoredTime,
    last_used_at: StoredTime,
}

impl StoredRecord {
    fn new(record: KeyRecord) -> Self {
        Self {
            digest: record.digest,
            identity: record.identity,
            hint: record.hint,
            expires_at: StoredTime::new(record.expires_at),
            revoked_at: StoredTime::new(record.revoked_at),
            disabled_at: StoredTime::new(record.disabled_at),
            created_at: StoredTime::new(record.created_at),
            last_used_at: StoredTime::new(record.last_used_at),
        }
    }

    /// The record, with its balance from `credits`.
    fn to_record(&self, credits: &Balances) -> KeyRecord {
        KeyRecord {
            digest: self.digest,
            identity: self.identity.clone(),
            hint: self.hint.clone(),
            expires_at: self.expires_at.get(),
            revoked_at: self.revoked_at.get(),
            disabled_at: self.disabled_at.get(),
            created_at: self.created_at.get(),
            last_used_at: self.last_used_at.get(),
            credits: credits.of(self.identity.key_id()),
        }
    }

    /// Whether the key counts toward its account's quota at `now`: neither revoked nor expired.
    fn counts_toward_quota(&self, now: SystemTime) -> bool {
        super::is_active(self.revoked_at.get(), self.expires_at.get(), now)
    }
}

/// An optional time in 8 bytes, where `Option<SystemTime>` takes 16: nanoseconds since the Unix
/// epoch, exact from 1677 to 2262; a time beyond is kept as the nearest of those two.
#[derive(Clone, Copy, PartialEq)]
struct StoredTime(i64);

impl StoredTime {
    const NONE: Self = Self(i64::MIN);

    fn new(time: Option<SystemTime>) -> Self {
        let Some(time) = time else {
            return Self::NONE;
        };
        let nanos = match time.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            // `NONE` is one below the earliest time kept.
            Err(before) => {
                i64::try_from(before.duration().as_nanos()).map_or(i64::MIN + 1, |nanos| -nanos)
            }
        };
        Self(nanos)
    }

    fn get(self) -> Option<SystemTime> {
        if self == Self::NONE {
            return None;
        }
        let since_epoch = Duration::from_nanos(self.0.unsigned_abs());
        if self.0 < 0 {
            SystemTime::UNIX_EPOCH.checked_sub(since_epoch)
        } else {
            SystemTime::UNIX_EPOCH.checked_add(since_epoch)
        }
    }
}

// Records are redacted by their own `Debug`; the indexes are slot numbers and say nothing.
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record as it is (its times within the range above), with no quota check,
    /// replacing any with the same key id or the same key. To create keys for users, use
    /// [`KeyManager`](crate::KeyManager).
    ///
    /// The store indexes records by bytes of their digest without a secret seed, which is safe
    /// for digests of keys this crate generated. Do not insert keys that untrusted users chose:
    /// they could pick keys whose digests crowd one bucket.
    pub fn insert(&self, record: KeyRecord) {
        let mut keys = self.write();
        keys.remove_by_key_id(record.identity.key_id());
        if let Some(slot) = keys.slot_of_lookup_id(&record.digest.lookup_id()) {
            keys.remove_slot(slot);
        }
        keys.add(record);
    }

    /// Deletes the record of key `key_id`, of any account, returning it; the key is then unknown.
    pub fn remove(&self, key_id: &KeyId) -> Option<KeyRecord> {
        self.write().remove_by_key_id(key_id)
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.read().len
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // No code panics while holding the lock, so a poisoned lock still holds consistent keys.
    fn read(&self) -> ShardedLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hash of a lookup id: its first eight bytes, already uniform since they come from SHA-256.
/// Callers choose which ids to look up, never which are stored, so they cannot crowd a bucket.
fn lookup_hash(lookup_id: &LookupId) -> u64 {
    let mut first = [0; 8];
    first.copy_from_slice(&lookup_id.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

impl Keys {
    fn slot(&self, index: u32) -> &Slot {
        // Indexes only ever hold numbers of occupied slots.
        match &self.slots[index as usize] {
            Some(slot) => slot,
            None => unreachable!("an index names an empty slot"),
        }
    }

    fn record_mut(&mut self, index: u32) -> &mut StoredRecord {
        match &mut self.slots[index as usize] {
            Some(slot) => &mut slot.record,
            None => unreachable!("an index names an empty slot"),
        }
    }

    /// The slot that `index` holds under `hash` whose record `matches`.
    fn find_in(
        &self,
        index: &HashTable<u32>,
        hash: u64,
        matches: impl Fn(&StoredRecord) -> bool,
    ) -> Option<u32> {
        index
            .find(hash, |&slot| {
                self.slots[slot as usize]
                    .as_ref()
                    .is_some_and(|slot| matches(&slot.record))
            })
            .copied()
    }

    fn slot_of_lookup_id(&self, lookup_id: &LookupId) -> Option<u32> {
        self.find_in(&self.by_lookup_id, lookup_hash(lookup_id), |record| {
            record.digest.lookup_id() == *lookup_id
        })
    }

    fn record_of_lookup_id(&self, lookup_id: &LookupId) -> Option<&StoredRecord> {
        self.slot_of_lookup_id(lookup_id)
            .map(|index| &self.slot(index).record)
    }

    /// The record of `lookup_id`, with its balance.
    fn find(&self, lookup_id: &LookupId) -> Option<KeyRecord> {
        (self.record_of_lookup_id(lookup_id)).map(|record| record.to_record(&self.credits))
    }

    fn slot_of_key_id(&self, key_id: &KeyId) -> Option<u32> {
        self.find_in(
            &self.by_key_id,
            self.seed.hash_one(key_id.as_str()),
            |record| record.identity.key_id() == key_id,
        )
    }

    fn first_of_account(&self, account_id: &str) -> Option<u32> {
        self.find_in(&self.by_account, self.seed.hash_one(account_id), |record| {
            record.identity.account_id() == account_id
        })
    }

    fn add(&mut self, record: KeyRecord) {
        if let Some(credits) = record.credits {
            (self.credits.0).insert(record.identity.key_id().clone(), credits);
        }
        let record = StoredRecord::new(record);
        let lookup_hash = lookup_hash_of(&record);
        let key_id_hash = key_id_hash_of(&self.seed, &record);
        let account_hash = account_hash_of(&self.seed, &record);
        let next_in_account = self.first_of_account(record.identity.account_id());
        let slot = Some(Slot {
            record,
            next_in_account,
        });
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = slot;
                index
            }
            None => {
                // A store of four billion keys would not fit in memory long before this.
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 keys");
                self.slots.push(slot);
                index
            }
        };
        let Self {
            slots,
            by_lookup_id,
            by_key_id,
            by_account,
            active,
            seed,
            ..
        } = self;
        let slots = &*slots;
        let record = match &slots[index as usize] {
            Some(slot) => &slot.record,
            None => unreachable!("slot {index} was just filled"),
        };
        if record.revoked_at == StoredTime::NONE {
            active.insert(record.identity.account_id(), index, record.expires_at);
        }
        by_lookup_id.insert_unique(lookup_hash, index, rehash(slots, lookup_hash_of));
        by_key_id.insert_unique(
            key_id_hash,
            index,
            rehash(slots, |record| key_id_hash_of(seed, record)),
        );
        match next_in_account {
            // The account's chain now starts at the new slot.
            Some(old_first) => {
                if let Ok(entry) = by_account.find_entry(account_hash, |&index| index == old_first)
                {
                    *entry.into_mut() = index;
                }
            }
            None => {
                by_account.insert_unique(
                    account_hash,
                    index,
                    rehash(slots, |record| account_hash_of(seed, record)),
                );
            }
        }
        self.len += 1;
    }

    fn remove_by_key_id(&mut self, key_id: &KeyId) -> Option<KeyRecord> {
        let index = self.slot_of_key_id(key_id)?;
        Some(self.remove_slot(index))
    }

    /// Empties slot `index`, unlinking it from every index, and returns its record.
    fn remove_slot(&mut self, index: u32) -> KeyRecord {
        let slot = self.slot(index);
        let lookup_hash = lookup_hash_of(&slot.record);
        let key_id_hash = key_id_hash_of(&self.seed, &slot.record);
        let account_hash = account_hash_of(&self.seed, &slot.record);
        let next = slot.next_in_account;
        if let Ok(entry) = self.by_lookup_id.find_entry(lookup_hash, |&i| i == index) {
            entry.remove();
        }
        if let Ok(entry) = self.by_key_id.find_entry(key_id_hash, |&i| i == index) {
            entry.remove();
        }
        // Unlink from the account's chain: either the index entry or a predecessor points here.
        match self.by_account.find_entry(account_hash, |&i| i == index) {
            Ok(entry) => match next {
                Some(next) => *entry.into_mut() = next,
                None => {
                    entry.remove();
                }
            },
            Err(_) => {
                let account_id = self.slot(index).record.identity.account_id();
                let mut cursor = self.find_in(&self.by_account, account_hash, |record| {
                    record.identity.account_id() == account_id
                });
                while let Some(current) = cursor {
                    let slot = match &mut self.slots[current as usize] {
                        Some(slot) => slot,
                        None => break,
                    };
                    if slot.next_in_account == Some(index) {
                        slot.next_in_account = next;
                        break;
                    }
                    cursor = slot.next_in_account;
                }
            }
        }
        self.len -= 1;
        self.free.push(index);
        match self.slots[index as usize].take() {
            Some(slot) => {
                self.active.remove(slot.record.identity.account_id(), index);
                let record = slot.record.to_record(&self.credits);
                if record.credits.is_some() {
                    self.credits.0.remove(record.identity.key_id());
                }
                record
            }
            None => unreachable!("slot {index} was just read"),
        }
    }

    /// The slot of key `key_id` if it belongs to `account_id`.
    fn slot_in_account(&self, account_id: &str, key_id: &KeyId) -> Option<u32> {
        let index = self.slot_of_key_id(key_id)?;
        Some(index).filter(|&index| self.slot(index).record.identity.account_id() == account_id)
    }

    /// Marks slot `index` revoked at `at` unless it already is, and returns its record.
    fn revoke(&mut self, index: u32, at: SystemTime) -> KeyRecord {
        let Self {
            slots,
            active,
            credits,
            ..
        } = self;
        let record = match &mut slots[index as usize] {
            Some(slot) => &mut slot.record,
            None => unreachable!("an index names an empty slot"),
        };
        if record.revoked_at == StoredTime::NONE {
            record.revoked_at = StoredTime::new(Some(at));
        }
        active.remove(record.identity.account_id(), index);
        record.to_record(credits)
    }

    /// Disables slot `index` at `at` unless it already is, or enables it with `None`, and
    /// returns its record. It stays in the quota's count either way.
    fn set_disabled(&mut self, index: u32, at: Option<SystemTime>) -> KeyRecord {
        let Self { slots, credits, .. } = self;
        let record = match &mut slots[index as usize] {
            Some(slot) => &mut slot.record,
            None => unreachable!("an index names an empty slot"),
        };
        if at.is_none() || record.disabled_at == StoredTime::NONE {
            record.disabled_at = StoredTime::new(at);
        }
        record.to_record(credits)
    }

    /// Sets slot `index` to expire at `expires_at`, unless it expires earlier: a rotation.
    fn retire(&mut self, index: u32, expires_at: SystemTime) {
        let Self { slots, active, .. } = self;
        let record = match &mut slots[index as usize] {
            Some(slot) => &mut slot.record,
            None => unreachable!("an index names an empty slot"),
        };
        let own = record.expires_at.get();
        record.expires_at =
            StoredTime::new(Some(own.map_or(expires_at, |own| own.min(expires_at))));
        let account_id = record.identity.account_id();
        if active.contains(account_id, index) {
            active.insert(account_id, index, record.expires_at);
        }
    }

    fn records_of<'a>(&'a self, account_id: &str) -> impl Iterator<Item = &'a StoredRecord> + 'a {
        let mut cursor = self.first_of_account(account_id);
        std::iter::from_fn(move || {
            let slot = self.slot(cursor?);
            cursor = slot.next_in_account;
            Some(&slot.record)
        })
    }
}

/// What a table needs to rehash its entries as it grows: the hash of a slot's record.
fn rehash<'a>(
    slots: &'a [Option<Slot>],
    hash_of: impl Fn(&StoredRecord) -> u64 + 'a,
) -> impl Fn(&u32) -> u64 + 'a {
    move |&index| {
        slots[index as usize]
            .as_ref()
            .map_or(0, |slot| hash_of(&slot.record))
    }
}

fn lookup_hash_of(record: &StoredRecord) -> u64 {
    lookup_hash(&record.digest.lookup_id())
}

fn key_id_hash_of(seed: &RandomState, record: &StoredRecord) -> u64 {
    seed.hash_one(record.identity.key_id().as_str())
}

fn account_hash_of(seed: &RandomState, record: &StoredRecord) -> u64 {
    seed.hash_one(record.identity.account_id())
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.read().find(lookup_id))
    }

    fn find_now(&self, lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        Some(Ok(self.read().find(lookup_id)))
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        let mut keys = self.write();
        if let Some(index) = keys.slot_of_lookup_id(&record.digest.lookup_id()) {
            let stored = keys.record_mut(index);
            stored.last_used_at = StoredTime::new(stored.last_used_at.get().max(Some(at)));
        }
    }
}

#[async_trait]
impl WritableKeyStore for MemoryKeyStore {
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        let mut keys = self.write();
        let taken = keys.slot_of_key_id(record.identity.key_id()).is_some()
            || keys.slot_of_lookup_id(&record.digest.lookup_id()).is_some();
        if taken {
            return Err(CreateError::AlreadyExists);
        }
        let account_id = record.identity.account_id();
        let retiring = match &quota.retiring {
            Some((key_id, expires_at)) => {
                let index = keys
                    .slot_in_account(account_id, key_id)
                    .filter(|&index| keys.slot(index).record.counts_toward_quota(quota.now))
                    .ok_or(CreateError::RetiringKeyNotFound)?;
                Some((index, *expires_at))
            }
            None => None,
        };
        let mut active = keys.active.count(account_id, quota.now);
        if let Some((index, _)) = retiring {
            active -= usize::from(keys.active.contains(account_id, index));
        }
        if active >= quota.limit {
            return Err(CreateError::LimitReached);
        }
        if let Some((index, expires_at)) = retiring {
            keys.retire(index, expires_at);
        }
        keys.add(record);
        Ok(())
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let keys = self.read();
        let records = keys.records_of(account_id);
        Ok(records
            .map(|record| record.to_record(&keys.credits))
            .collect())
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let keys = self.read();
        let index = keys.slot_in_account(account_id, key_id);
        Ok(index.map(|index| keys.slot(index).record.to_record(&keys.credits)))
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.write();
        let index = keys.slot_in_account(account_id, key_id);
        Ok(index.map(|index| keys.revoke(index, at)))
    }

    async fn set_disabled(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: Option<SystemTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.write();
        let index = keys.slot_in_account(account_id, key_id);
        Ok(index.map(|index| keys.set_disabled(index, at)))
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.write();
        let index = keys.slot_in_account(account_id, key_id);
        Ok(index.map(|index| keys.remove_slot(index)))
    }

    async fn spend_credits(
        &self,
        key_id: &KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<Option<Spend>, StoreError> {
        let mut keys = self.write();
        let Some(index) = keys.slot_of_key_id(key_id) else {
            return Ok(None);
        };
        let key_id = keys.slot(index).record.identity.key_id().clone();
        let Some(credits) = keys.credits.0.get_mut(&key_id) else {
            return Ok(Some(Spend::Unmetered));
        };
        Ok(Some(match credits.spend(cost, now) {
            Ok(spent) => {
                *credits = spent;
                Spend::Spent(spent)
            }
            Err(left) => {
                *credits = left;
                Spend::Exhausted(left)
            }
        }))
    }

    async fn top_up_credits(
        &self,
        account_id: &str,
        key_id: &KeyId,
        amount: u64,
        now: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.write();
        let Some(index) = keys.slot_in_account(account_id, key_id) else {
            return Ok(None);
        };
        let key_id = keys.slot(index).record.identity.key_id().clone();
        let credits = keys.credits.0.entry(key_id).or_insert(Credits::new(0));
        *credits = credits.top_up(amount, now);
        Ok(Some(keys.slot(index).record.to_record(&keys.credits)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyDigest;
    use crate::{KeyIdentity, Tier};

    fn record(key_id: &str, key: &str) -> KeyRecord {
        let identity = KeyIdentity::new(KeyId::new(key_id), "acct", "ci", Tier::FREE);
        KeyRecord::new(KeyDigest::of(key), identity)
    }

    fn find(store: &MemoryKeyStore, key: &str) -> Option<KeyRecord> {
        let lookup_id = KeyDigest::of(key).lookup_id();
        store.read().find(&lookup_id)
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
    fn removing_any_key_of_an_account_keeps_the_others_listed() {
        for removed in ["key_1", "key_2", "key_3"] {
            let store = MemoryKeyStore::new();
            for id in ["key_1", "key_2", "key_3"] {
                store.insert(record(id, id));
            }
            store.insert(KeyRecord::new(
                KeyDigest::of("other"),
                KeyIdentity::new(KeyId::new("key_other"), "acct_2", "ci", Tier::FREE),
            ));
            assert!(store.remove(&KeyId::new(removed)).is_some());
            let keys = store.read();
            let mut listed: Vec<_> = keys
                .records_of("acct")
                .map(|record| record.identity.key_id().as_str().to_owned())
                .collect();
            listed.sort();
            let expected: Vec<_> = ["key_1", "key_2", "key_3"]
                .into_iter()
                .filter(|id| *id != removed)
                .collect();
            assert_eq!(listed, expected, "after removing {removed}");
            assert_eq!(keys.records_of("acct_2").count(), 1);
        }
    }

    #[test]
    fn emptied_slots_are_reused() {
        let store = MemoryKeyStore::new();
        for round in 0..100 {
            let id = format!("key_{round}");
            store.insert(record(&id, &id));
            assert!(store.remove(&KeyId::new(id)).is_some());
        }
        let keys = store.read();
        assert_eq!(keys.slots.len(), 1);
        assert_eq!(keys.len, 0);
        assert!(keys.records_of("acct").next().is_none());
    }

    #[test]
    fn clones_share_keys() {
        let store = MemoryKeyStore::new();
        let clone = store.clone();
        store.insert(record("key_1", "k"));
        assert!(find(&clone, "k").is_some());
    }

    #[test]
    fn stored_times_read_back_exactly() {
        let epoch = SystemTime::UNIX_EPOCH;
        let times = [
            None,
            Some(epoch),
            Some(epoch + Duration::new(1_780_000_000, 123_456_789)),
            Some(epoch - Duration::new(86_400, 1)),
            Some(epoch + Duration::from_nanos(i64::MAX as u64)),
            Some(epoch - Duration::from_nanos(i64::MAX as u64)),
        ];
        for time in times {
            assert_eq!(StoredTime::new(time).get(), time);
        }
    }

    #[test]
    fn stored_times_beyond_the_range_keep_the_nearest() {
        let epoch = SystemTime::UNIX_EPOCH;
        let far = Duration::from_secs(400 * 365 * 86_400);
        let latest = epoch + Duration::from_nanos(i64::MAX as u64);
        let earliest = epoch - Duration::from_nanos(i64::MAX as u64);
        assert_eq!(StoredTime::new(Some(epoch + far)).get(), Some(latest));
        assert_eq!(StoredTime::new(Some(epoch - far)).get(), Some(earliest));
    }

    #[test]
    fn stored_record_reads_back_as_inserted() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_780_000_000, 7);
        let inserted = record("key_1", "k")
            .with_created_at(at)
            .with_expires_at(at + Duration::from_secs(60))
            .with_revoked_at(at + Duration::from_secs(1))
            .with_hint("sk_live_...abcd");
        let mut inserted = inserted;
        inserted.last_used_at = Some(at + Duration::from_nanos(1));
        let store = MemoryKeyStore::new();
        store.insert(inserted.clone());
        let found = find(&store, "k").unwrap();
        assert_eq!(found.identity, inserted.identity);
        assert_eq!(found.hint, inserted.hint);
        assert_eq!(
            (
                found.created_at,
                found.expires_at,
                found.revoked_at,
                found.last_used_at
            ),
            (
                inserted.created_at,
                inserted.expires_at,
                inserted.revoked_at,
                inserted.last_used_at
            )
        );
        assert!(found.digest.matches(&KeyDigest::of("k")));
    }

    /// The key ids in `account_id`'s active index, sorted.
    fn active_ids(store: &MemoryKeyStore, account_id: &str) -> Vec<String> {
        let keys = store.read();
        let mut ids: Vec<_> = keys
            .active
            .0
            .get(account_id)
            .into_iter()
            .flat_map(|slots| slots.keys())
            .map(|&index| {
                keys.slot(index)
                    .record
                    .identity
                    .key_id()
                    .as_str()
                    .to_owned()
            })
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn active_index_holds_only_the_account_s_active_keys() {
        let store = MemoryKeyStore::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let quota = |now| Quota::new(10, now);
        for id in ["revoked", "deleted", "rotated", "kept"] {
            store.create(record(id, id), quota(now)).await.unwrap();
        }
        let short = record("short", "short").with_expires_at(now + Duration::from_secs(10));
        store.create(short, quota(now)).await.unwrap();
        let dead = record("dead", "dead").with_revoked_at(now);
        store.create(dead, quota(now)).await.unwrap();
        store
            .revoke("acct", &KeyId::new("revoked"), now)
            .await
            .unwrap();
        store.delete("acct", &KeyId::new("deleted")).await.unwrap();
        let rotation = quota(now).retiring(KeyId::new("rotated"), now + Duration::from_secs(5));
        let replacement = record("replacement", "replacement");
        store.create(replacement, rotation).await.unwrap();
        let expected = ["kept", "replacement", "rotated", "short"];
        assert_eq!(active_ids(&store, "acct"), expected);

        // A create drops the keys expired by its time: the rotated one and the short one.
        let later = now + Duration::from_secs(10);
        store
            .create(record("fresh", "fresh"), quota(later))
            .await
            .unwrap();
        assert_eq!(active_ids(&store, "acct"), ["fresh", "kept", "replacement"]);
    }

    // The layout that keeps a store of 1,000,000 keys under 512 bytes a key (see the
    // `memory_per_key` bench): a slot of 104 bytes, the identity behind one pointer.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_slot_takes_104_bytes() {
        assert_eq!(std::mem::size_of::<StoredRecord>(), 96);
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 104);
        assert_eq!(std::mem::size_of::<KeyRecord>(), 176);
    }
}
