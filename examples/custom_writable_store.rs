//! A `WritableKeyStore` written from scratch: keys in a map in memory, persisted to a JSON file.
//!
//! ```text
//! cargo run --example custom_writable_store
//! ```
//!
//! No server: it creates keys through a `KeyManager`, sends requests through the layer, then
//! opens the file again and finds the keys there. The crate's `testing` module (feature
//! `testing`) walks through the rules this store follows, and `tests/it/store_custom.rs` runs
//! the store suite on it:
//!
//! ```text
//! cargo test --features testing --test it store_custom::
//! ```
//!
//! One process per file: two processes over one file would each keep their own map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use tower_api_key::{
    limit::{Credits, Spend},
    store::{CreateError, Quota, WritableKeyStore},
    KeyId, KeyRecord, KeyStore, LookupId, StoreError,
};

/// Keys in a JSON file, as an array of records in their serde form (`KeyRecord` serializes:
/// digest as hex, times in RFC 3339, never a key).
///
/// The map in memory answers every read; each change is written to the file before the call
/// returns. Clones share the map and the file.
#[derive(Clone)]
pub struct JsonFileStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// Every record by its lookup id, and a version counted up by each change.
    keys: Mutex<Keys>,
    /// The version that the file holds. Writes of the file take this lock, in turn.
    written: Mutex<u64>,
}

#[derive(Default)]
struct Keys {
    records: HashMap<LookupId, KeyRecord>,
    version: u64,
}

impl Keys {
    /// The record of key `key_id`, of any account.
    fn by_key_id(&mut self, key_id: &KeyId) -> Option<&mut KeyRecord> {
        self.records
            .values_mut()
            .find(|record| record.identity.key_id() == key_id)
    }

    /// The record of key `key_id` of `account_id`: another account's key is absent.
    fn in_account(&mut self, account_id: &str, key_id: &KeyId) -> Option<&mut KeyRecord> {
        self.by_key_id(key_id)
            .filter(|record| record.identity.account_id() == account_id)
    }

    /// What the file is to hold after a change: the version and the records as JSON.
    fn changed(&mut self) -> Result<(u64, Vec<u8>), StoreError> {
        self.version += 1;
        let records: Vec<&KeyRecord> = self.records.values().collect();
        let json = serde_json::to_vec_pretty(&records).map_err(StoreError::new)?;
        Ok((self.version, json))
    }
}

impl JsonFileStore {
    /// The store in the file at `path`, empty if there is no file yet. Reads the file at once,
    /// blocking: call it at startup (or in `spawn_blocking`).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let records: Vec<KeyRecord> = match std::fs::read(&path) {
            Ok(json) => serde_json::from_slice(&json).map_err(StoreError::new)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(StoreError::new(error)),
        };
        let records = records
            .into_iter()
            .map(|record| (record.digest.lookup_id(), record))
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                keys: Mutex::new(Keys {
                    records,
                    version: 0,
                }),
                written: Mutex::new(0),
            }),
        })
    }

    /// The map, locked. Each holder only reads or changes the map: the lock is never held
    /// across an `.await` or a file write, so it never blocks a request for long.
    fn keys(&self) -> MutexGuard<'_, Keys> {
        // A panic while holding the lock leaves the map whole: every change is one assignment.
        self.shared
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `json`, the map at `version`, to the file, off the async threads: to a temporary
    /// file, then renamed over the old one, so that a crash leaves one whole version. A write
    /// that comes after a newer one is skipped: the file holds that newer version already.
    async fn persist(&self, (version, json): (u64, Vec<u8>)) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let mut written = shared.written.lock().unwrap_or_else(|e| e.into_inner());
            if *written >= version {
                return Ok(());
            }
            let temporary = shared.path.with_extension("json.tmp");
            std::fs::write(&temporary, json).map_err(StoreError::new)?;
            std::fs::rename(&temporary, &shared.path).map_err(StoreError::new)?;
            *written = version;
            Ok(())
        })
        .await
        .map_err(StoreError::new)?
    }

    /// The file the store is in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

#[async_trait]
impl KeyStore for JsonFileStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        // Revoked and expired records too: the layer tells them apart.
        Ok(self.keys().records.get(lookup_id).cloned())
    }

    /// The map is in memory: the layer gets its answer without a future.
    fn find_now(&self, lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        Some(Ok(self.keys().records.get(lookup_id).cloned()))
    }

    /// On the request's path, so no file write here: the map takes the time, and the file gets
    /// it with the next change. (A store over a server queues the write for a background task.)
    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        if let Some(stored) = self.keys().records.get_mut(&record.digest.lookup_id()) {
            if stored.last_used_at.is_none_or(|last| last < at) {
                stored.last_used_at = Some(at);
            }
        }
    }
}

#[async_trait]
impl WritableKeyStore for JsonFileStore {
    /// The checks and the insert under one lock: of N concurrent creates for an account one
    /// below its limit, the first to take the lock succeeds and the others count its key.
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        let snapshot = {
            let mut keys = self.keys();
            let lookup_id = record.digest.lookup_id();
            let key_id = record.identity.key_id();
            if keys.records.contains_key(&lookup_id) || keys.by_key_id(key_id).is_some() {
                return Err(CreateError::AlreadyExists);
            }
            let account_id = record.identity.account_id();
            // A rotation: the old key must be an active key of the account, and is not counted.
            let retiring = match &quota.retiring {
                Some((old, expires_at)) => {
                    let old = keys
                        .in_account(account_id, old)
                        .filter(|old| old.counts_toward_quota(quota.now))
                        .ok_or(CreateError::RetiringKeyNotFound)?;
                    Some((old.digest.lookup_id(), *expires_at))
                }
                None => None,
            };
            let active = keys
                .records
                .values()
                .filter(|other| other.identity.account_id() == account_id)
                .filter(|other| other.counts_toward_quota(quota.now))
                .filter(|other| Some(other.digest.lookup_id()) != retiring.map(|(id, _)| id))
                .count();
            if active >= quota.limit {
                return Err(CreateError::LimitReached);
            }
            if let Some((old, expires_at)) = retiring {
                let old = keys
                    .records
                    .get_mut(&old)
                    .expect("found above, under the lock");
                // No later than its own expiry.
                old.expires_at = Some(old.expires_at.map_or(expires_at, |own| own.min(expires_at)));
            }
            keys.records.insert(lookup_id, record);
            keys.changed()?
        };
        Ok(self.persist(snapshot).await?)
    }

    /// In any order: the manager sorts by creation time.
    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let keys = self.keys();
        let records = keys.records.values();
        Ok(records
            .filter(|record| record.identity.account_id() == account_id)
            .cloned()
            .collect())
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self
            .keys()
            .in_account(account_id, key_id)
            .map(|r| r.clone()))
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (revoked, snapshot) = {
            let mut keys = self.keys();
            let Some(record) = keys.in_account(account_id, key_id) else {
                return Ok(None);
            };
            // Revoking again keeps the first time.
            record.revoked_at.get_or_insert(at);
            let revoked = record.clone();
            (revoked, keys.changed()?)
        };
        self.persist(snapshot).await?;
        Ok(Some(revoked))
    }

    async fn set_disabled(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: Option<SystemTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (changed, snapshot) = {
            let mut keys = self.keys();
            let Some(record) = keys.in_account(account_id, key_id) else {
                return Ok(None);
            };
            // Disabling again keeps the first time; `None` enables.
            record.disabled_at = at.and(record.disabled_at.or(at));
            let changed = record.clone();
            (changed, keys.changed()?)
        };
        self.persist(snapshot).await?;
        Ok(Some(changed))
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (deleted, snapshot) = {
            let mut keys = self.keys();
            let Some(record) = keys.in_account(account_id, key_id) else {
                return Ok(None);
            };
            let lookup_id = record.digest.lookup_id();
            let deleted = keys.records.remove(&lookup_id).expect("found above");
            (deleted, keys.changed()?)
        };
        self.persist(snapshot).await?;
        Ok(Some(deleted))
    }

    /// The rule of `Credits::spend` under the lock, so concurrent spends never overdraw. Any
    /// account's key: the layer spends for the key that authenticated.
    async fn spend_credits(
        &self,
        key_id: &KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<Option<Spend>, StoreError> {
        let (spend, snapshot) = {
            let mut keys = self.keys();
            let Some(record) = keys.by_key_id(key_id) else {
                return Ok(None);
            };
            let Some(credits) = record.credits else {
                return Ok(Some(Spend::Unmetered));
            };
            let spend = match credits.spend(cost, now) {
                Ok(spent) => Spend::Spent(spent),
                // Refused, but a refill that fell due is kept.
                Err(left) => Spend::Exhausted(left),
            };
            let (Spend::Spent(after) | Spend::Exhausted(after)) = spend else {
                unreachable!("matched above")
            };
            record.credits = Some(after);
            (spend, keys.changed()?)
        };
        self.persist(snapshot).await?;
        Ok(Some(spend))
    }

    /// A key without a balance gets one of `amount`.
    async fn top_up_credits(
        &self,
        account_id: &str,
        key_id: &KeyId,
        amount: u64,
        now: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (topped, snapshot) = {
            let mut keys = self.keys();
            let Some(record) = keys.in_account(account_id, key_id) else {
                return Ok(None);
            };
            let credits = record.credits.unwrap_or(Credits::new(0));
            record.credits = Some(credits.top_up(amount, now));
            let topped = record.clone();
            (topped, keys.changed()?)
        };
        self.persist(snapshot).await?;
        Ok(Some(topped))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use http::{Request, StatusCode};
    use tower::{ServiceBuilder, ServiceExt};
    use tower_api_key::{KeyManager, NewKey, Tier};

    let path = std::env::temp_dir().join(format!("keys-{}.json", uuid::Uuid::new_v4().simple()));
    let keys = KeyManager::new(JsonFileStore::open(&path)?);
    let created = keys
        .create(NewKey::new("acct_42", Tier::FREE, "laptop"))
        .await?;
    let revoked = keys
        .create(NewKey::new("acct_42", Tier::FREE, "old"))
        .await?;
    keys.revoke("acct_42", &revoked.info.id).await?;

    // Another process, later: the same file, another store.
    let reopened = JsonFileStore::open(&path)?;
    let service = ServiceBuilder::new()
        .layer(tower_api_key::ApiKeyLayer::new(reopened))
        .service_fn(|_request: Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
        });
    for (name, key, expected) in [
        ("laptop", &created.key, StatusCode::OK),
        ("old, revoked", &revoked.key, StatusCode::UNAUTHORIZED),
    ] {
        let request = Request::get("/")
            .header("x-api-key", key.expose_secret())
            .body(String::new())?;
        let status = service.clone().oneshot(request).await?.status();
        assert_eq!(status, expected);
        println!("{name}: {status}");
    }
    let file = std::fs::read_to_string(&path)?;
    assert!(!file.contains(created.key.expose_secret()), "never a key");
    println!(
        "{} holds {} bytes, digests only",
        path.display(),
        file.len()
    );
    std::fs::remove_file(&path)?;
    Ok(())
}
