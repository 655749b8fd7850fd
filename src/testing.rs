//! A test kit for stores of your own (feature `testing`): the behavioural suite that every
//! shipped store passes, and a guide to writing a [`WritableKeyStore`].
//!
//! # Running the suite
//!
//! Turn the feature on for your tests only:
//!
//! ```toml
//! [dev-dependencies]
//! tower-api-key = { version = "0.1", features = ["testing"] }
//! ```
//!
//! Then, in a test file, say how to make instances of your store (a [`Backend`]) and call
//! [`store_suite!`](crate::store_suite), which writes one `#[test]` per function of this module
//! listed below, each on its own Tokio runtime:
//!
//! ```
//! use async_trait::async_trait;
//! use tower_api_key::{testing::Backend, MemoryKeyStore};
//!
//! /// Your store in place of `MemoryKeyStore`: instances share their keys, as application
//! /// instances over one database do.
//! #[derive(Default)]
//! struct MyBackend(MemoryKeyStore);
//!
//! #[async_trait]
//! impl Backend for MyBackend {
//!     type Store = MemoryKeyStore;
//!
//!     async fn instance(&self) -> MemoryKeyStore {
//!         self.0.clone() // a store over a server would connect anew here
//!     }
//! }
//!
//! tower_api_key::store_suite!(MyBackend::default());
//! # fn main() {}
//! ```
//!
//! `cargo test` then runs `created_key_is_found_with_its_whole_record`,
//! `concurrent_creates_one_below_the_limit_give_one_key` and the others; `cargo test
//! credits_` runs the credit tests alone. Each suite function can also be called from a test
//! of your own with a backend: `tower_api_key::testing::last_use_is_recorded(MyBackend::new()).await`.
//! The helpers the suite is written with ([`clock`], [`account`], [`manager`], [`create`],
//! [`verdict`]) are public, for tests of what only your store does.
//!
//! # What the suite checks
//!
//! Through a [`KeyManager`] over your store (with a [`ManualClock`]) and through the layer
//! (called as a plain `tower_service::Service`, its refusals read from the [`AuthError`] in
//! each response's extensions):
//!
//! - lookups: a created key is found with its whole record; an unknown key is not; scopes,
//!   mode, rate limits and credits survive `create`, `find` and `list`; a record's mode is kept
//!   as given;
//! - the layer's verdicts: active passes, revoked and expired are `expired_api_key`, deleted
//!   and unknown are `invalid_api_key`; a key expires at its expiry to the second;
//! - the write path: `create` refuses an existing key id or key; `get`, `list`, `revoke` and
//!   `delete` see one account's keys only; revoking keeps the first time; deleting returns the
//!   record;
//! - quotas: only active keys count, exactly, across revocations, deletions, rotations and
//!   expiries; of 50 concurrent creates through two instances, one key below the limit, exactly
//!   one succeeds;
//! - rotation: the old key works through the grace period and expires after it, atomically
//!   with the new key's creation;
//! - instances: each sees the others' creates and revocations at once;
//! - last use: recorded within 2 s of a request;
//! - credits: 150 concurrent spends through three instances on a balance of 50 spend exactly
//!   50; spends take all or nothing; refills fall due at 00:00 UTC; top-ups add.
//! - import ([`WritableKeyStore::import`], through [`KeyManager::import`]): 1,010 keys stored
//!   in bulk, found by their digests, and none twice on a second run; a stored key id or key
//!   left as it is; imported legacy keys authenticate; the quota respected or bypassed.
//!
//! A store that keeps no credits fails the last two credit tests (`credits_are_spent_...`,
//! `credits_refill_...`): call the other functions from tests of your own instead of the
//! macro, and never put a `CreditsLayer` in front of that store.
//!
//! # Writing a `WritableKeyStore`
//!
//! A store maps a [`LookupId`](crate::LookupId) (the first half of a key's SHA-256 digest) to
//! a [`KeyRecord`](crate::KeyRecord). It never sees a key and never compares secrets: the layer
//! does, in constant time. `examples/custom_writable_store.rs` writes one from scratch, a
//! `Mutex<HashMap>` persisted to a JSON file, and passes the suite; the rules it follows:
//!
//! **`find`** answers the record of a lookup id, revoked and expired ones too (the layer
//! answers `expired_api_key` for them), or `None`; an error makes the layer answer `503`. It is
//! on every request's path: an async driver is awaited, and a blocking one (a file, `rusqlite`,
//! a synchronous client) runs in `tokio::task::spawn_blocking`, never on the async threads:
//!
//! ```
//! use std::path::PathBuf;
//!
//! use async_trait::async_trait;
//! use tower_api_key::{KeyRecord, KeyStore, LookupId, StoreError};
//!
//! /// One JSON file per key, named by its lookup id in hex: read with blocking calls.
//! struct KeyFiles(PathBuf);
//!
//! #[async_trait]
//! impl KeyStore for KeyFiles {
//!     async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
//!         let path = self.0.join(format!("{}.json", lookup_id.to_hex()));
//!         tokio::task::spawn_blocking(move || match std::fs::read(&path) {
//!             Ok(json) => serde_json::from_slice(&json).map(Some).map_err(StoreError::new),
//!             Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
//!             Err(error) => Err(StoreError::new(error)),
//!         })
//!         .await
//!         .map_err(StoreError::new)?
//!     }
//! }
//! ```
//!
//! A store whose records are in memory also answers
//! [`find_now`](crate::KeyStore::find_now), which spares the layer a future.
//!
//! **`record_use`** notes a key's last use. It runs on the request's path and is not async: it
//! must not block. Update memory, or queue the write for a background task (the shipped stores
//! batch them); the layer calls it at most once per key per interval.
//!
//! **`create`** is the one step that must be atomic: refuse a record whose key id or lookup id
//! exists (in any account) with [`CreateError::AlreadyExists`]; count the account's active
//! keys at `quota.now`, leaving out `quota.retiring`'s key; refuse with
//! [`CreateError::LimitReached`] when the count is at `quota.limit`; and insert, in one
//! transaction or under one lock, so that of N concurrent creates one below the limit exactly
//! one succeeds. "Active" here is
//! [`KeyRecord::counts_toward_quota`](crate::KeyRecord::counts_toward_quota): not revoked and
//! not expired at `quota.now`, disabled or not. With `quota.retiring = Some((old, at))`, `old` must be an
//! active key of the account ([`CreateError::RetiringKeyNotFound`] otherwise), and in the same
//! step its expiry becomes `at` or its own, whichever is earlier: a rotation.
//!
//! **`list`** answers every record of the account, revoked and expired ones included, in any
//! order: the manager sorts. **`get`**, **`revoke`** and **`delete`** treat another account's
//! key as absent (`None`); `revoke` keeps the record and its first revocation time; `delete`
//! returns the record it removed. **`set_disabled`** sets `disabled_at` (keeping the first
//! time) or clears it, and leaves the key in the quota's count.
//!
//! **Credits** ([`spend_credits`](WritableKeyStore::spend_credits) and
//! [`top_up_credits`](WritableKeyStore::top_up_credits)) are provided methods that refuse by
//! default, so a store without credits compiles as is (and a `CreditsLayer` in front of it
//! answers `503`). To keep balances, apply [`Credits::spend`] and [`Credits::top_up`] to the
//! stored balance in one atomic step, and store the balance they return even when a spend is
//! refused (a refill may have fallen due); `spend_credits` is for any account's key (the layer
//! spends for the key that authenticated), `top_up_credits` for the account's only.
//!
//! **Importing** ([`import`](WritableKeyStore::import)) is provided: a `create` per record
//! with no limit, a record already stored answering `false`. Override it to insert many records
//! at once (the SQL stores take 1,000 to a transaction), keeping that answer.
//!
//! **Keeping records whole**: [`KeyRecord`](crate::KeyRecord) serializes with serde to a
//! stable form (digest in hex, RFC 3339 times, the exact balance, never a key), so that a file
//! or document store need not map fields by hand.
//!
//! The whole example:
//!
//! ```no_run
#![doc = include_str!("../examples/custom_writable_store.rs")]
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::{Request, Response, StatusCode};
use tower_service::Service;

use crate::{
    access::{KeyMode, Scopes},
    clock::{Clock, ManualClock},
    limit::{Credits, RateLimit, Refill, RefillPeriod, Spend},
    manage::{CreatedKey, ManageError},
    store::{CreateError, Quota, WritableKeyStore},
    ApiKey, AuthError, KeyId, KeyIdentity, KeyManager, KeyStore, NewKey, Tier,
};

/// A kind of store under test, able to make several instances over one server, as several
/// instances of an application would each open their own.
///
/// Instances of one backend share their keys: a key created through one is found, listed,
/// revoked and spent through the others. A store kept in one process makes its instances by
/// cloning a shared handle; a store over a server opens a new connection (or pool) each time.
/// [`store_suite!`](crate::store_suite) evaluates the backend's expression once per test, so
/// each test may start from a fresh database; the suite also uses a new account per test, so a
/// shared database works too.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The store under test.
    type Store: WritableKeyStore + Clone;

    /// A new instance. Instances of one backend share their keys.
    async fn instance(&self) -> Self::Store;
}

/// Runs `test` to completion on a new multi-thread Tokio runtime of two workers, as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` would: what each test that
/// [`store_suite!`](crate::store_suite) generates does, so that your crate needs no Tokio
/// macros.
///
/// # Panics
///
/// If the runtime cannot be built, or `test` panics.
pub fn run<F: Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime for the store suite")
        .block_on(test)
}

/// A [`ManualClock`] at 2027-01-15T08:00:00Z, a whole second, so that stores that keep
/// microseconds (or seconds) round-trip it exactly.
pub fn clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

/// An account id that no earlier run has used (`acct_` and a random UUID), so that the suite
/// can run against a database that earlier runs left keys in.
pub fn account() -> String {
    format!("acct_{}", uuid::Uuid::new_v4().simple())
}

/// A [`KeyManager`] over `store` that reads the time from `clock`.
pub fn manager<S: WritableKeyStore + Clone>(store: S, clock: &ManualClock) -> KeyManager<S> {
    KeyManager::new(store).clock(clock.clone())
}

/// Creates a free-tier key named `ci` for `account` through `keys`.
///
/// # Panics
///
/// If the manager refuses it.
pub async fn create<S: WritableKeyStore + Clone>(
    keys: &KeyManager<S>,
    account: &str,
) -> CreatedKey {
    keys.create(NewKey::new(account, Tier::FREE, "ci"))
        .await
        .unwrap()
}

/// What the layer over `keys`'s store (with the manager's clock and key format) answers to a
/// request carrying `key` in `X-API-Key`: `"ok"` if it reached the service behind the layer
/// with an identity, or the refusal's code (`"invalid_api_key"`, `"expired_api_key"`, ...), read
/// from the [`AuthError`] in the response's extensions.
///
/// # Panics
///
/// If the answer is neither a pass nor a refusal with an [`AuthError`].
pub async fn verdict<S: WritableKeyStore + Clone>(keys: &KeyManager<S>, key: &ApiKey) -> String {
    let mut service = tower_layer::Layer::layer(&keys.layer(), Identified);
    std::future::poll_fn(|cx| Service::<Request<String>>::poll_ready(&mut service, cx))
        .await
        .unwrap_or_else(|never| match never {});
    let request = Request::get("/v1/things")
        .header("x-api-key", key.expose_secret())
        .body(String::new())
        .expect("a valid request");
    let response = service
        .call(request)
        .await
        .unwrap_or_else(|never| match never {});
    if let Some(error) = response.extensions().get::<AuthError>() {
        return error.code().to_owned();
    }
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "neither a pass nor a refusal of the layer"
    );
    "ok".to_owned()
}

/// The service behind the layer in [`verdict`]: `200` if the request carries an identity.
#[derive(Clone, Copy)]
struct Identified;

impl<B> Service<Request<B>> for Identified {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut response = Response::new(String::new());
        if request.extensions().get::<KeyIdentity>().is_none() {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        std::future::ready(Ok(response))
    }
}

/// A key created through the manager is found by its lookup id with its whole record: digest,
/// identity (name, tier, metadata), creation and expiry times, hint, not revoked.
pub async fn created_key_is_found_with_its_whole_record(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let new = NewKey::new(&account, Tier::PRO, "deploy bot")
        .expires_in(Duration::from_secs(3600))
        .metadata(serde_json::json!({"team": "platform", "n": 1}));
    let created = keys.create(new).await.unwrap();
    let found = keys
        .store()
        .find(&created.key.digest().lookup_id())
        .await
        .unwrap()
        .expect("the created key is found");
    assert!(found.digest.matches(&created.key.digest()));
    assert_eq!(found.identity.key_id(), &created.info.id);
    assert_eq!(found.identity.account_id(), account);
    assert_eq!(found.identity.name(), "deploy bot");
    assert_eq!(found.identity.tier(), &Tier::PRO);
    assert_eq!(found.identity.metadata().unwrap()["team"], "platform");
    assert_eq!(found.created_at, Some(clock.now()));
    assert_eq!(
        found.expires_at,
        Some(clock.now() + Duration::from_secs(3600))
    );
    assert_eq!(found.revoked_at, None);
    assert_eq!(found.hint.as_deref(), created.info.hint.as_deref());
}

/// A test-mode key's mode and scopes, and a live key's full access, survive `create`, `find` and
/// `list`.
pub async fn scopes_and_mode_survive_create_find_and_list(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let restricted = NewKey::new(&account, Tier::FREE, "restricted test")
        .mode(KeyMode::Test)
        .scopes(["keys:write", "iocs:read"]);
    let restricted = keys.create(restricted).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let full = create(&keys, &account).await;
    let scopes = Scopes::new(["iocs:read", "keys:write"]).unwrap();

    let found = |key: ApiKey| {
        let store = keys.store().clone();
        async move {
            let lookup_id = key.digest().lookup_id();
            store.find(&lookup_id).await.unwrap().unwrap().identity
        }
    };
    let restricted_identity = found(restricted.key.clone()).await;
    assert_eq!(restricted_identity.mode(), KeyMode::Test);
    assert_eq!(restricted_identity.scopes(), Some(&scopes));
    let full_identity = found(full.key.clone()).await;
    assert_eq!(full_identity.mode(), KeyMode::Live);
    assert_eq!(full_identity.scopes(), None);

    let listed = keys.list(&account).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].mode, listed[0].scopes.as_ref()),
        (KeyMode::Test, Some(&scopes))
    );
    assert_eq!(
        (listed[1].mode, listed[1].scopes.as_ref()),
        (KeyMode::Live, None)
    );
    assert!(listed[0]
        .hint
        .as_deref()
        .unwrap()
        .starts_with("sk_test_..."));
    assert_eq!(verdict(&keys, &restricted.key).await, "ok");
}

/// `find` answers `None` for a key never stored.
pub async fn unknown_key_is_not_found(backend: impl Backend) {
    let store = backend.instance().await;
    let unknown = crate::key::KeyFormat::default().generate();
    assert!(store
        .find(&unknown.digest().lookup_id())
        .await
        .unwrap()
        .is_none());
}

/// Through the layer: an active key passes, a revoked one is `expired_api_key`, a deleted or
/// unknown one `invalid_api_key`.
pub async fn layer_decides_each_state(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let active = create(&keys, &account).await;
    let revoked = create(&keys, &account).await;
    let deleted = create(&keys, &account).await;
    keys.revoke(&account, &revoked.info.id).await.unwrap();
    keys.delete(&account, &deleted.info.id).await.unwrap();
    assert_eq!(verdict(&keys, &active.key).await, "ok");
    assert_eq!(verdict(&keys, &revoked.key).await, "expired_api_key");
    assert_eq!(verdict(&keys, &deleted.key).await, "invalid_api_key");
    let unknown = crate::key::KeyFormat::default().generate();
    assert_eq!(verdict(&keys, &unknown).await, "invalid_api_key");
}

/// A key works until the second before its expiry and is `expired_api_key` from it on (a
/// [`ManualClock`]).
pub async fn key_expires_at_its_expiry(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let new = NewKey::new(account(), Tier::FREE, "short").expires_in(Duration::from_secs(60));
    let created = keys.create(new).await.unwrap();
    clock.advance(Duration::from_secs(59));
    assert_eq!(verdict(&keys, &created.key).await, "ok");
    clock.advance(Duration::from_secs(1));
    assert_eq!(verdict(&keys, &created.key).await, "expired_api_key");
}

/// `list` shows one account's keys only, revoked ones included, with their revocation time.
pub async fn listing_is_per_account_and_keeps_revoked_keys(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let (mine, theirs) = (account(), account());
    let first = create(&keys, &mine).await;
    clock.advance(Duration::from_secs(1));
    let second = create(&keys, &mine).await;
    create(&keys, &theirs).await;
    keys.revoke(&mine, &first.info.id).await.unwrap();
    let listed = keys.list(&mine).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|info| &info.id).collect();
    assert_eq!(ids, [&first.info.id, &second.info.id]);
    assert_eq!(listed[0].revoked_at, Some(clock.now()));
}

/// `revoke` of another account's key or of an unknown key is `None`; revoking twice keeps the
/// first time.
pub async fn revoking_keeps_the_first_time_and_respects_accounts(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let created = create(&keys, &account).await;
    let store = keys.store();
    assert!(store
        .revoke("acct_other", &created.info.id, clock.now())
        .await
        .unwrap()
        .is_none());
    let first = store
        .revoke(&account, &created.info.id, clock.now())
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let again = store
        .revoke(&account, &created.info.id, clock.now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.revoked_at, again.revoked_at);
    assert!(store
        .revoke(&account, &KeyId::new("key_none"), clock.now())
        .await
        .unwrap()
        .is_none());
}

/// `get` finds a key of its account in any state, and neither another account's key nor a deleted
/// one.
pub async fn getting_one_key_respects_accounts_and_shows_any_state(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let created = create(&keys, &account).await;
    let store = keys.store();
    let got = store
        .get(&account, &created.info.id)
        .await
        .unwrap()
        .unwrap();
    assert!(got.digest.matches(&created.key.digest()));
    assert_eq!(got.identity.account_id(), account);
    assert!(store
        .get("acct_other", &created.info.id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get(&account, &KeyId::new("key_none"))
        .await
        .unwrap()
        .is_none());
    keys.revoke(&account, &created.info.id).await.unwrap();
    let revoked = keys.get(&account, &created.info.id).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(clock.now()));
    keys.delete(&account, &created.info.id).await.unwrap();
    assert!(matches!(
        keys.get(&account, &created.info.id).await,
        Err(ManageError::NotFound)
    ));
}

/// `delete` of another account's key is `None`; a deletion returns the record, and the key is then
/// neither found nor listed nor deleted again.
pub async fn deleting_returns_the_record_and_respects_accounts(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let created = create(&keys, &account).await;
    let store = keys.store();
    assert!(store
        .delete("acct_other", &created.info.id)
        .await
        .unwrap()
        .is_none());
    let deleted = store
        .delete(&account, &created.info.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted.identity.key_id(), &created.info.id);
    assert!(store
        .find(&created.key.digest().lookup_id())
        .await
        .unwrap()
        .is_none());
    assert!(store
        .delete(&account, &created.info.id)
        .await
        .unwrap()
        .is_none());
    assert!(keys.list(&account).await.unwrap().is_empty());
}

/// `create` refuses with [`CreateError::AlreadyExists`] a record whose key id or key is stored
/// already, even under another account, and takes nothing over.
pub async fn create_refuses_an_existing_key_id_or_key(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let created = create(&keys, &account).await;
    let store = keys.store();
    let record = store
        .find(&created.key.digest().lookup_id())
        .await
        .unwrap()
        .unwrap();
    let quota = || Quota::new(50, clock.now());
    let same = store.create(record.clone(), quota()).await;
    assert!(matches!(same, Err(CreateError::AlreadyExists)), "{same:?}");

    // The same key id for another account and another key must not take the key over.
    let other_key = crate::key::KeyFormat::default().generate();
    let identity = crate::KeyIdentity::new(created.info.id.clone(), "acct_thief", "x", Tier::FREE);
    let thief = crate::KeyRecord::new(other_key.digest(), identity);
    let taken = store.create(thief, quota()).await;
    assert!(
        matches!(taken, Err(CreateError::AlreadyExists)),
        "{taken:?}"
    );
    assert_eq!(verdict(&keys, &created.key).await, "ok");
    assert_eq!(verdict(&keys, &other_key).await, "invalid_api_key");
    assert_eq!(keys.list(&account).await.unwrap().len(), 1);
}

/// The quota counts active keys only: revoked and expired keys make room again.
pub async fn quota_counts_only_active_keys(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let short = NewKey::new(&account, Tier::FREE, "short").expires_in(Duration::from_secs(10));
    keys.create(short).await.unwrap();
    let revoked = create(&keys, &account).await;
    create(&keys, &account).await;
    let over = keys.create(NewKey::new(&account, Tier::FREE, "4th")).await;
    assert!(
        matches!(over, Err(ManageError::KeyLimitReached { limit: 3, .. })),
        "{over:?}"
    );
    keys.revoke(&account, &revoked.info.id).await.unwrap();
    create(&keys, &account).await;
    clock.advance(Duration::from_secs(10));
    create(&keys, &account).await;
    let over = keys
        .create(NewKey::new(&account, Tier::FREE, "again"))
        .await;
    assert!(
        matches!(over, Err(ManageError::KeyLimitReached { .. })),
        "{over:?}"
    );
}

/// A rotation at the quota's limit succeeds, both keys work during the grace period, the old one
/// expires after it; retiring an unknown key is [`CreateError::RetiringKeyNotFound`].
pub async fn rotation_retires_the_old_key_atomically(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let old = create(&keys, &account).await;
    create(&keys, &account).await;
    create(&keys, &account).await;
    let grace = Duration::from_secs(300);
    let new = keys.rotate(&account, &old.info.id, grace).await.unwrap();
    assert_eq!(verdict(&keys, &old.key).await, "ok");
    assert_eq!(verdict(&keys, &new.key).await, "ok");
    clock.advance(grace);
    assert_eq!(verdict(&keys, &old.key).await, "expired_api_key");
    assert_eq!(verdict(&keys, &new.key).await, "ok");

    let fresh = crate::key::KeyFormat::default().generate();
    let identity = crate::KeyIdentity::new(KeyId::random(), &account, "fresh", Tier::FREE);
    let record = crate::KeyRecord::new(fresh.digest(), identity);
    let quota = Quota::new(50, clock.now()).retiring(KeyId::new("key_none"), clock.now());
    let refused = keys.store().create(record, quota).await;
    assert!(
        matches!(refused, Err(CreateError::RetiringKeyNotFound)),
        "{refused:?}"
    );
}

/// Of 50 concurrent creates through two instances, for an account one key below its limit, exactly
/// one succeeds: the count and the insert are one atomic step.
pub async fn concurrent_creates_one_below_the_limit_give_one_key(backend: impl Backend) {
    let clock = clock();
    let (a, b) = (backend.instance().await, backend.instance().await);
    let instances = [manager(a, &clock), manager(b, &clock)];
    let account = account();
    create(&instances[0], &account).await;
    create(&instances[1], &account).await;
    let instances = Arc::new(instances);
    let attempts: Vec<_> = (0..50)
        .map(|index| {
            let instances = Arc::clone(&instances);
            let account = account.clone();
            tokio::spawn(async move {
                let new = NewKey::new(account, Tier::FREE, format!("race {index}"));
                instances[index % 2].create(new).await
            })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => created += 1,
            Err(ManageError::KeyLimitReached { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 1, "exactly one of 50 concurrent creates succeeds");
    assert_eq!(instances[0].list(&account).await.unwrap().len(), 3);
}

/// Two instances see each other's creates and revocations at once (a cache must be invalidated
/// across instances).
pub async fn instances_see_each_other_s_creates_and_revocations(backend: impl Backend) {
    let clock = clock();
    let a = manager(backend.instance().await, &clock);
    let b = manager(backend.instance().await, &clock);
    let account = account();
    let created = create(&a, &account).await;
    assert_eq!(verdict(&b, &created.key).await, "ok");
    b.revoke(&account, &created.info.id).await.unwrap();
    let other = create(&b, &account).await;
    assert_eq!(verdict(&a, &other.key).await, "ok");
    assert_eq!(verdict(&a, &created.key).await, "expired_api_key");
    assert_eq!(a.list(&account).await.unwrap().len(), 2);
}

/// After a request, the key's `last_used_at` is the request's time within 2 s (`record_use` may
/// write in the background).
pub async fn last_use_is_recorded(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let created = create(&keys, &account).await;
    assert_eq!(verdict(&keys, &created.key).await, "ok");
    // Remote stores write in the background: wait for it, boundedly.
    for _ in 0..100 {
        if keys.list(&account).await.unwrap()[0].last_used_at == Some(clock.now()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the key's last use was not recorded within 2 s");
}

/// A record whose mode is not its key's prefix (`sk_test_` stored as live, or the reverse) is
/// refused as `invalid_api_key`: the store keeps the mode as given.
pub async fn a_record_whose_mode_is_not_its_key_s_prefix_is_refused(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let format = crate::key::KeyFormat::default();
    let test_key = format.generate_for(KeyMode::Test).unwrap();
    let live_key = format.generate();
    let mismatched = [(&test_key, KeyMode::Live), (&live_key, KeyMode::Test)];
    for (key, mode) in mismatched {
        let identity =
            crate::KeyIdentity::new(KeyId::random(), &account, "hand", Tier::FREE).with_mode(mode);
        let record = crate::KeyRecord::new(key.digest(), identity);
        let quota = Quota::new(50, clock.now());
        keys.store().create(record, quota).await.unwrap();
        assert_eq!(
            verdict(&keys, key).await,
            "invalid_api_key",
            "{mode} record"
        );
    }
}

/// The quota stays exact after many revocations, a deletion, a rotation and expiries: a store that
/// counts with a counter must keep it right.
pub async fn quota_stays_exact_across_revocations_deletions_rotations_and_expiry(
    backend: impl Backend,
) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    for _ in 0..20 {
        let revoked = create(&keys, &account).await;
        keys.revoke(&account, &revoked.info.id).await.unwrap();
    }
    let deleted = create(&keys, &account).await;
    keys.delete(&account, &deleted.info.id).await.unwrap();
    let short = NewKey::new(&account, Tier::FREE, "short").expires_in(Duration::from_secs(10));
    keys.create(short).await.unwrap();
    let rotated = create(&keys, &account).await;
    let grace = Duration::from_secs(5);
    keys.rotate(&account, &rotated.info.id, grace)
        .await
        .unwrap();
    let at_limit = keys.create(NewKey::new(&account, Tier::FREE, "4th")).await;
    assert!(
        matches!(at_limit, Err(ManageError::KeyLimitReached { limit: 3, .. })),
        "{at_limit:?}"
    );

    // The short key and the rotated one expire: the replacement is left, with room for two.
    clock.advance(Duration::from_secs(10));
    create(&keys, &account).await;
    create(&keys, &account).await;
    let over = keys.create(NewKey::new(&account, Tier::FREE, "4th")).await;
    assert!(
        matches!(over, Err(ManageError::KeyLimitReached { limit: 3, .. })),
        "{over:?}"
    );
}

/// A key's own rate limit and its balance of credits (amount, refill, when it was last refilled)
/// survive `create`, `find` and `list`; a plain key has neither.
pub async fn rate_limits_and_credits_survive_create_find_and_list(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let own_limit = RateLimit::per_minute(7).burst(3);
    let credits = Credits::new(500).refilled(Refill::monthly(1_000), SystemTime::UNIX_EPOCH);
    let limited = NewKey::new(&account, Tier::FREE, "metered")
        .rate_limit(own_limit)
        .credits(credits);
    let limited = keys.create(limited).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let plain = create(&keys, &account).await;

    let found = |key: ApiKey| {
        let store = keys.store().clone();
        async move {
            let lookup_id = key.digest().lookup_id();
            store.find(&lookup_id).await.unwrap().unwrap()
        }
    };
    let record = found(limited.key.clone()).await;
    assert_eq!(record.identity.rate_limit(), Some(own_limit));
    let stored = record.credits.expect("the balance is stored");
    assert_eq!(stored.remaining, 500);
    assert_eq!(stored.refill, Some(Refill::monthly(1_000)));
    // The refill counts from the key's creation.
    let created_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    assert_eq!(stored.refilled_at, Some(created_at));
    let record = found(plain.key.clone()).await;
    assert_eq!((record.identity.rate_limit(), record.credits), (None, None));

    let listed = keys.list(&account).await.unwrap();
    assert_eq!(listed[0].rate_limit, Some(own_limit));
    assert_eq!(
        listed[0].credits.map(|credits| credits.remaining),
        Some(500)
    );
    assert_eq!(
        listed[1].rate_limit,
        Some(RateLimit::per_minute(60)),
        "the tier's"
    );
    assert_eq!(listed[1].credits, None);
    let json = serde_json::to_value(&listed[0]).unwrap();
    assert_eq!(json["rate_limit"]["requests"], 7);
    assert_eq!(json["credits"]["remaining"], 500);
    assert_eq!(json["credits"]["refill"]["every"], "month");
    assert_eq!(json["credits"]["refills_at"], "2027-02-01T00:00:00Z");
}

/// 150 concurrent spends of one credit through three instances, on a balance of 50: exactly 50 are
/// spent and 100 refused ([`WritableKeyStore::spend_credits`] is atomic).
pub async fn credits_are_spent_exactly_across_instances(backend: impl Backend) {
    let clock = clock();
    let instances: Vec<_> = [
        backend.instance().await,
        backend.instance().await,
        backend.instance().await,
    ]
    .into_iter()
    .map(|store| manager(store, &clock))
    .collect();
    let account = account();
    let new = NewKey::new(&account, Tier::FREE, "metered").credits(Credits::new(50));
    let key_id = instances[0].create(new).await.unwrap().info.id;
    let instances = Arc::new(instances);
    let spends: Vec<_> = (0..150)
        .map(|index| {
            let (instances, key_id, now) = (Arc::clone(&instances), key_id.clone(), clock.now());
            tokio::spawn(async move {
                let store = instances[index % 3].store();
                store.spend_credits(&key_id, 1, now).await.unwrap().unwrap()
            })
        })
        .collect();
    let (mut spent, mut exhausted) = (0, 0);
    for spend in spends {
        match spend.await.unwrap() {
            Spend::Spent(_) => spent += 1,
            Spend::Exhausted(credits) => {
                assert_eq!(credits.remaining, 0);
                exhausted += 1;
            }
            Spend::Unmetered => panic!("the key has a balance"),
        }
    }
    assert_eq!(
        (spent, exhausted),
        (50, 100),
        "exactly the balance is spent"
    );
    let info = instances[1].get(&account, &key_id).await.unwrap();
    assert_eq!(info.credits.map(|credits| credits.remaining), Some(0));
}

/// Spends take all or nothing, a refill falls due at 00:00 UTC, top-ups add (and give a balance to
/// a key without one, not to another account's key), and an unknown key's spend is `None`.
pub async fn credits_refill_take_all_or_nothing_and_are_topped_up(backend: impl Backend) {
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let store = keys.store().clone();
    let account = account();
    let daily = Credits::new(2).refilled(Refill::daily(3), SystemTime::UNIX_EPOCH);
    let new = NewKey::new(&account, Tier::FREE, "daily").credits(daily);
    let key_id = keys.create(new).await.unwrap().info.id;
    let spend = |cost: u64| {
        let (store, key_id, now) = (store.clone(), key_id.clone(), clock.now());
        async move { store.spend_credits(&key_id, cost, now).await.unwrap() }
    };
    let remaining = |spend: Option<Spend>| match spend {
        Some(Spend::Spent(credits)) => Ok(credits.remaining),
        Some(Spend::Exhausted(credits)) => Err(credits.remaining),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        remaining(spend(3).await),
        Err(2),
        "more than the balance takes nothing"
    );
    assert_eq!(remaining(spend(2).await), Ok(0));
    assert_eq!(remaining(spend(1).await), Err(0));

    // A top-up adds; the refill at midnight UTC sets the balance back to its amount.
    let topped = keys.top_up(&account, &key_id, 4).await.unwrap();
    assert_eq!(topped.credits.map(|credits| credits.remaining), Some(4));
    assert_eq!(remaining(spend(1).await), Ok(3));
    let midnight = RefillPeriod::Day.next_after(clock.now());
    clock.set(midnight);
    assert_eq!(
        remaining(spend(1).await),
        Ok(2),
        "refilled to 3, then spent 1"
    );
    let listed = keys.get(&account, &key_id).await.unwrap().credits.unwrap();
    assert_eq!(
        listed.refills_at(),
        Some(midnight + Duration::from_secs(86_400))
    );

    // Another account's key is not topped up; a key without a balance gets one.
    let other = keys.top_up(&self::account(), &key_id, 1).await;
    assert!(matches!(other, Err(ManageError::NotFound)), "{other:?}");
    let plain = create(&keys, &account).await.info.id;
    let plain_spend = store.spend_credits(&plain, 1, clock.now()).await.unwrap();
    assert_eq!(plain_spend, Some(Spend::Unmetered));
    let topped = keys.top_up(&account, &plain, 5).await.unwrap();
    assert_eq!(topped.credits.map(|credits| credits.remaining), Some(5));
    assert_eq!(
        remaining(store.spend_credits(&plain, 5, clock.now()).await.unwrap()),
        Ok(0)
    );
    let unknown = store.spend_credits(&KeyId::random(), 1, clock.now()).await;
    assert_eq!(unknown.unwrap(), None);
}

/// A disabled key is refused (`expired_api_key`) through every instance until it is enabled,
/// is listed with the time it was disabled (the first, when disabled twice), keeps its place
/// in the quota, cannot be rotated, and stays revoked if revoked meanwhile; another account's
/// key is not found. (An instance's cache learns of another's change by its feed or TTL, so
/// each check reads through an instance that has not cached the key since, or made the change.)
pub async fn disabling_refuses_a_key_until_enabled_and_keeps_its_quota_place(
    backend: impl Backend,
) {
    let clock = clock();
    let a = manager(backend.instance().await, &clock);
    let b = manager(backend.instance().await, &clock);
    let account = account();
    let created = create(&a, &account).await;
    let id = &created.info.id;
    assert_eq!(verdict(&a, &created.key).await, "ok");
    let disabled = a.disable(&account, id).await.unwrap();
    assert_eq!(disabled.disabled_at, Some(clock.now()));
    assert_eq!(verdict(&a, &created.key).await, "expired_api_key");
    assert_eq!(verdict(&b, &created.key).await, "expired_api_key");
    let first = clock.now();
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        b.disable(&account, id).await.unwrap().disabled_at,
        Some(first)
    );
    assert_eq!(b.list(&account).await.unwrap()[0].disabled_at, Some(first));
    let elsewhere = b.disable(&self::account(), id).await;
    assert!(
        matches!(elsewhere, Err(ManageError::NotFound)),
        "{elsewhere:?}"
    );
    let rotated = b.rotate(&account, id, Duration::from_secs(60)).await;
    assert!(matches!(rotated, Err(ManageError::NotFound)), "{rotated:?}");

    // The free tier's limit is 3: the disabled key still counts.
    create(&a, &account).await;
    create(&a, &account).await;
    let over = a
        .create(NewKey::new(&account, Tier::FREE, "one more"))
        .await;
    assert!(
        matches!(over, Err(ManageError::KeyLimitReached { limit: 3, .. })),
        "{over:?}"
    );

    let enabled = b.enable(&account, id).await.unwrap();
    assert_eq!(enabled.disabled_at, None);
    assert_eq!(verdict(&b, &created.key).await, "ok");
    b.disable(&account, id).await.unwrap();
    b.revoke(&account, id).await.unwrap();
    b.enable(&account, id).await.unwrap();
    assert_eq!(verdict(&b, &created.key).await, "expired_api_key");
}

/// The [audit events](crate::audit) of keys' whole lives, in order, each with the manager's
/// time, the account, the key id and the actor: imported, created, rotated (naming the replacement),
/// disabled, enabled, revoked, reported leaked (by the scanner), deleted. No event holds a
/// secret.
pub async fn audit_events_follow_a_key_s_whole_life(backend: impl Backend) {
    use crate::audit::{Actor, AuditAction, AuditEvent};
    use std::sync::Mutex;

    let clock = clock();
    let events = Arc::new(Mutex::new(Vec::<AuditEvent>::new()));
    let sink = Arc::clone(&events);
    let keys = manager(backend.instance().await, &clock)
        .audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()));
    let account = account();
    let admin = Actor::User("ada@example.com".into());
    let migration = Actor::User("migration".into());
    let legacy = ApiKey::new(format!("ak_{}", uuid::Uuid::new_v4().simple()));
    let legacy_id = KeyId::new(format!("old_{}", uuid::Uuid::new_v4().simple()));
    let old = crate::manage::ImportedKey::digest(
        legacy.digest(),
        legacy_id.clone(),
        &account,
        Tier::FREE,
        "from the old system",
    )
    .created_at(clock.now() - Duration::from_secs(86_400));
    let imported = (keys.acting_as(migration.clone()))
        .import(vec![old], crate::manage::ImportQuota::Bypassed)
        .await
        .unwrap();
    assert!(matches!(
        imported[..],
        [crate::manage::ImportOutcome::Imported]
    ));
    let created = create(&keys, &account).await;
    let id = created.info.id.clone();
    clock.advance(Duration::from_secs(1));
    let by_admin = keys.acting_as(admin.clone());
    let replacement = (by_admin.rotate(&account, &id, Duration::from_secs(60)))
        .await
        .unwrap();
    let new = replacement.info.id.clone();
    by_admin.disable(&account, &new).await.unwrap();
    by_admin.enable(&account, &new).await.unwrap();
    let by_key = keys.acting_as(Actor::Key(new.clone()));
    by_key.revoke(&account, &id).await.unwrap();
    let scanner = keys.acting_as(Actor::SecretScanner);
    let url = Some("https://github.com/octo/repo/commit/1".to_owned());
    let leaked = (scanner.revoke_leaked(replacement.key.expose_secret(), url.clone()))
        .await
        .unwrap();
    assert!(leaked.is_some_and(|info| info.revoked_at == Some(clock.now())));
    let unknown = crate::key::KeyFormat::default().generate();
    assert_eq!(
        scanner
            .revoke_leaked(unknown.expose_secret(), None)
            .await
            .unwrap(),
        None
    );
    keys.delete(&account, &id).await.unwrap();

    let events = events.lock().unwrap().clone();
    let seen: Vec<(AuditAction, &KeyId, &Actor)> = events
        .iter()
        .map(|event| (event.action.clone(), &event.key_id, &event.actor))
        .collect();
    let rotated = AuditAction::Rotated {
        replacement: new.clone(),
    };
    assert_eq!(
        seen,
        [
            (AuditAction::Imported, &legacy_id, &migration),
            (AuditAction::Created, &id, &Actor::Application),
            (rotated, &id, &admin),
            (AuditAction::Disabled, &new, &admin),
            (AuditAction::Enabled, &new, &admin),
            (AuditAction::Revoked, &id, &Actor::Key(new.clone())),
            (
                AuditAction::ReportedLeaked { url },
                &new,
                &Actor::SecretScanner
            ),
            (AuditAction::Deleted, &id, &Actor::Application),
        ]
    );
    assert_eq!(events[1].at, clock.now() - Duration::from_secs(1));
    assert!(events[2..].iter().all(|event| event.at == clock.now()));
    assert!(events.iter().all(|event| event.account_id == account));
    let written = format!("{events:?} {}", serde_json::to_string(&events).unwrap());
    for key in [&created.key, &replacement.key, &legacy] {
        let secret = key.expose_secret();
        assert!(!written.contains(&secret[8..]), "an event holds a key");
        assert!(
            !written.contains(&key.digest().to_hex()),
            "an event holds a digest"
        );
    }
}

/// `n` keys of an older system (`ak_`, no checksum) for `account` on `tier`, imported from their
/// digests, created a day before `clock`'s time: the keys and what to import.
fn legacy_keys(
    account: &str,
    tier: Tier,
    n: usize,
    clock: &ManualClock,
) -> (Vec<ApiKey>, Vec<crate::manage::ImportedKey>) {
    let created_at = clock.now() - Duration::from_secs(86_400);
    (0..n)
        .map(|index| {
            let key = ApiKey::new(format!("ak_{}", uuid::Uuid::new_v4().simple()));
            let imported = crate::manage::ImportedKey::digest(
                key.digest(),
                KeyId::new(format!("old_{}", uuid::Uuid::new_v4().simple())),
                account,
                tier.clone(),
                format!("old key {index}"),
            )
            .created_at(created_at);
            (key, imported)
        })
        .unzip()
}

/// Counts the outcomes of an import: imported, already present, rejected.
fn tally(outcomes: &[crate::manage::ImportOutcome]) -> (usize, usize, usize) {
    use crate::manage::ImportOutcome;
    outcomes.iter().fold(
        (0, 0, 0),
        |(imported, present, rejected), outcome| match outcome {
            ImportOutcome::Imported => (imported + 1, present, rejected),
            ImportOutcome::AlreadyPresent => (imported, present + 1, rejected),
            _ => (imported, present, rejected + 1),
        },
    )
}

/// A bulk import past the quota ([`ImportQuota::Bypassed`](crate::manage::ImportQuota), more
/// keys than one SQL transaction takes) stores every key, found by its digest with its id,
/// name and creation time; the same import again stores nothing.
pub async fn import_in_bulk_stores_each_key_once(backend: impl Backend) {
    use crate::manage::ImportQuota;
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let (plain, imported) = legacy_keys(&account, Tier::PRO, 1_010, &clock);
    let first = keys.import(imported.clone(), ImportQuota::Bypassed).await;
    assert_eq!(tally(&first.unwrap()), (1_010, 0, 0));
    let listed = keys.list(&account).await.unwrap();
    assert_eq!(listed.len(), 1_010);
    for (index, key) in plain.iter().enumerate().step_by(101) {
        let found = (keys.store().find(&key.digest().lookup_id()).await.unwrap())
            .expect("an imported key is found by its digest");
        assert!(found.digest.matches(&key.digest()));
        assert_eq!(found.identity.name(), format!("old key {index}"));
        assert_eq!(found.identity.account_id(), account);
        assert_eq!(
            found.created_at,
            Some(clock.now() - Duration::from_secs(86_400))
        );
        assert_eq!(found.hint, None, "a digest gives no hint");
    }
    let again = keys.import(imported, ImportQuota::Bypassed).await;
    assert_eq!(tally(&again.unwrap()), (0, 1_010, 0));
    assert_eq!(keys.list(&account).await.unwrap().len(), 1_010);
}

/// An import, past the quota or not, leaves a stored key as it is when a key to import has
/// its id (in any account) or its secret: reported already present, nothing taken over.
pub async fn import_leaves_an_existing_id_or_key_as_it_is(backend: impl Backend) {
    use crate::manage::{ImportQuota, ImportedKey};
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let created = create(&keys, &account).await;
    let other_key = ApiKey::new(format!("ak_{}", uuid::Uuid::new_v4().simple()));
    for quota in [ImportQuota::Bypassed, ImportQuota::Respected] {
        let same_id = ImportedKey::digest(
            other_key.digest(),
            created.info.id.clone(),
            "acct_thief",
            Tier::PRO,
            "thief",
        );
        let same_key = ImportedKey::digest(
            created.key.digest(),
            KeyId::random(),
            "acct_thief",
            Tier::PRO,
            "thief",
        );
        let outcomes = keys.import(vec![same_id, same_key], quota).await.unwrap();
        assert_eq!(tally(&outcomes), (0, 2, 0), "{quota:?}: {outcomes:?}");
    }
    let found = (keys.store().find(&created.key.digest().lookup_id()).await)
        .unwrap()
        .unwrap();
    assert_eq!(found.identity.key_id(), &created.info.id);
    assert_eq!(found.identity.name(), "ci");
    assert_eq!(found.identity.account_id(), account);
    assert!(keys
        .store()
        .find(&other_key.digest().lookup_id())
        .await
        .unwrap()
        .is_none());
    assert!(keys.list("acct_thief").await.unwrap().is_empty());
    assert_eq!(verdict(&keys, &created.key).await, "ok");
}

/// Imported keys authenticate through the layer of a manager whose format has their legacy
/// prefix: a plaintext key and a key imported from its digest alone; an imported key whose
/// expiry is past is refused as expired, and a made-up key of the crate's own prefix as
/// invalid.
pub async fn imported_legacy_keys_authenticate(backend: impl Backend) {
    use crate::manage::{ImportQuota, ImportedKey};
    let clock = clock();
    let format = crate::key::KeyFormat::default().legacy_prefix("ak_", KeyMode::Live);
    let keys = manager(backend.instance().await, &clock).key_format(format);
    let account = account();
    let plain = ApiKey::new(format!("ak_{}", uuid::Uuid::new_v4().simple()));
    let by_digest = ApiKey::new(format!("ak_{}", uuid::Uuid::new_v4().simple()));
    let expired = ApiKey::new(format!("ak_{}", uuid::Uuid::new_v4().simple()));
    let import = |key: ImportedKey| {
        key.created_at(clock.now() - Duration::from_secs(7_200))
            .expires_at(clock.now() + Duration::from_secs(3_600))
    };
    let plain_id = KeyId::random();
    let outcomes = keys
        .import(
            vec![
                import(ImportedKey::key(
                    plain.clone(),
                    plain_id.clone(),
                    &account,
                    Tier::FREE,
                    "plain",
                )),
                import(ImportedKey::digest(
                    by_digest.digest(),
                    KeyId::random(),
                    &account,
                    Tier::FREE,
                    "digest",
                )),
                ImportedKey::key(
                    expired.clone(),
                    KeyId::random(),
                    &account,
                    Tier::FREE,
                    "expired",
                )
                .created_at(clock.now() - Duration::from_secs(7_200))
                .expires_at(clock.now() - Duration::from_secs(3_600)),
            ],
            ImportQuota::Respected,
        )
        .await
        .unwrap();
    assert_eq!(tally(&outcomes), (3, 0, 0), "{outcomes:?}");
    assert_eq!(verdict(&keys, &plain).await, "ok");
    assert_eq!(verdict(&keys, &by_digest).await, "ok");
    assert_eq!(verdict(&keys, &expired).await, "expired_api_key");
    let made_up = ApiKey::new(format!("sk_live_{}", "a".repeat(38)));
    assert_eq!(verdict(&keys, &made_up).await, "invalid_api_key");
    let info = keys.get(&account, &plain_id).await.unwrap();
    assert_eq!(
        info.expires_at,
        Some(clock.now() + Duration::from_secs(3_600))
    );
    let hint = info.hint.expect("a plaintext key's hint");
    assert!(
        hint.starts_with("ak_...") && plain.expose_secret().ends_with(&hint[6..]),
        "{hint}"
    );
}

/// An import that respects the quota stores each account's keys, in their order, up to the
/// tier's limit of active keys and rejects the rest, whatever the accounts' rows are
/// interleaved with, and says the same when run again; bypassing it stores them.
pub async fn import_respecting_the_quota_stops_at_the_limit(backend: impl Backend) {
    use crate::manage::{ImportError, ImportOutcome, ImportQuota};
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    // 20 accounts of 5 keys each, their rows interleaved: the quota of 3 holds for each, and
    // each account's first 3 rows are the ones imported, however many accounts go at a time.
    let accounts: Vec<String> = (0..20).map(|_| account()).collect();
    let per_account: Vec<_> = (accounts.iter())
        .map(|account| legacy_keys(account, Tier::FREE, 5, &clock).1)
        .collect();
    let imported: Vec<_> = (0..5)
        .flat_map(|row| per_account.iter().map(move |keys| keys[row].clone()))
        .collect();
    for run in 0..2 {
        let outcomes = keys
            .import(imported.clone(), ImportQuota::Respected)
            .await
            .unwrap();
        let expected = if run == 0 { (60, 0, 40) } else { (0, 60, 40) };
        assert_eq!(tally(&outcomes), expected, "run {run}: {outcomes:?}");
        for (index, outcome) in outcomes.iter().enumerate() {
            let refused = matches!(
                outcome,
                ImportOutcome::Rejected(ImportError::Refused(ManageError::KeyLimitReached {
                    limit: 3,
                    ..
                }))
            );
            // Rows 0..60 are each account's first three keys.
            assert_eq!(refused, index >= 60, "row {index}: {outcome:?}");
        }
    }
    let bypassed = keys.import(imported, ImportQuota::Bypassed).await.unwrap();
    assert_eq!(tally(&bypassed), (40, 60, 0));
    for account in &accounts {
        assert_eq!(keys.list(account).await.unwrap().len(), 5);
    }
}

/// Generates one test per function of the [store suite](crate::testing), each with the backend
/// that `$backend` evaluates to.
///
/// Call it at the top level of a test file (or in a module of tests) with an expression of a
/// type that implements [`Backend`](crate::testing::Backend); it is evaluated once per test,
/// inside that test's runtime. Each test runs on its own multi-thread Tokio runtime of two
/// workers ([`testing::run`](crate::testing::run)), so the crate that calls it needs no Tokio
/// macros. The tests are named after the functions, so that `cargo test <name>` runs one.
///
/// ```
/// # use async_trait::async_trait;
/// # use tower_api_key::{testing::Backend, MemoryKeyStore};
/// # #[derive(Default)]
/// # struct Memory(MemoryKeyStore);
/// # #[async_trait]
/// # impl Backend for Memory {
/// #     type Store = MemoryKeyStore;
/// #     async fn instance(&self) -> MemoryKeyStore {
/// #         self.0.clone()
/// #     }
/// # }
/// tower_api_key::store_suite!(Memory::default());
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_suite {
    ($backend:expr) => {
        $crate::store_suite!(@tests $backend;
            created_key_is_found_with_its_whole_record,
            scopes_and_mode_survive_create_find_and_list,
            unknown_key_is_not_found,
            layer_decides_each_state,
            key_expires_at_its_expiry,
            listing_is_per_account_and_keeps_revoked_keys,
            revoking_keeps_the_first_time_and_respects_accounts,
            getting_one_key_respects_accounts_and_shows_any_state,
            deleting_returns_the_record_and_respects_accounts,
            create_refuses_an_existing_key_id_or_key,
            quota_counts_only_active_keys,
            rotation_retires_the_old_key_atomically,
            concurrent_creates_one_below_the_limit_give_one_key,
            instances_see_each_other_s_creates_and_revocations,
            last_use_is_recorded,
            a_record_whose_mode_is_not_its_key_s_prefix_is_refused,
            quota_stays_exact_across_revocations_deletions_rotations_and_expiry,
            rate_limits_and_credits_survive_create_find_and_list,
            credits_are_spent_exactly_across_instances,
            credits_refill_take_all_or_nothing_and_are_topped_up,
            disabling_refuses_a_key_until_enabled_and_keeps_its_quota_place,
            audit_events_follow_a_key_s_whole_life,
            import_in_bulk_stores_each_key_once,
            import_leaves_an_existing_id_or_key_as_it_is,
            imported_legacy_keys_authenticate,
            import_respecting_the_quota_stops_at_the_limit,
        );
    };
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::testing::run(async { $crate::testing::$name($backend).await });
            }
        )*
    };
}
