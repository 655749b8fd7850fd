//! Key lifecycle through the library: create, list, revoke, delete, expire, rotate, quotas,
//! last-used, with an injected clock so no test sleeps.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use common::{echo_identity, request, Answer};
use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    clock::ManualClock,
    manage::{ManageError, TierLimits},
    store::WritableKeyStore,
    ApiKey, ApiKeyLayer, KeyId, KeyManager, KeyRecord, KeyStore, LookupId, MemoryKeyStore, NewKey,
    StoreError, Tier,
};

const ACCOUNT: &str = "acct_1";
const START: Duration = Duration::from_secs(1_800_000_000);

struct World {
    store: MemoryKeyStore,
    clock: ManualClock,
    keys: KeyManager<MemoryKeyStore>,
}

impl World {
    fn new() -> Self {
        let store = MemoryKeyStore::new();
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + START);
        let keys = KeyManager::new(store.clone()).clock(clock.clone());
        Self { store, clock, keys }
    }

    fn now(&self) -> SystemTime {
        tower_api_key::clock::Clock::now(&self.clock)
    }

    async fn create(&self, name: &str) -> tower_api_key::manage::CreatedKey {
        self.keys
            .create(NewKey::new(ACCOUNT, Tier::FREE, name))
            .await
            .unwrap()
    }

    /// The answer of the layer, over this world's store and clock, to a request with `key`.
    async fn use_key(&self, key: &ApiKey) -> Answer {
        let layer = ApiKeyLayer::new(self.store.clone()).clock(self.clock.clone());
        let service = ServiceBuilder::new().layer(layer).service_fn(echo_identity);
        let request = request(&[("x-api-key", key.expose_secret().as_bytes())]);
        Answer::read(service.oneshot(request).await.unwrap()).await
    }

    async fn code_for(&self, key: &ApiKey) -> String {
        let answer = self.use_key(key).await;
        if answer.status == StatusCode::OK {
            "ok".to_owned()
        } else {
            answer.error_code()
        }
    }
}

#[tokio::test]
async fn created_key_authenticates_as_its_account() {
    let world = World::new();
    let created = world.create("ci").await;
    let answer = world.use_key(&created.key).await;
    assert!(answer.reached_inner_service());
    let identity = &answer.json()["identity"];
    assert_eq!(identity["key_id"], created.info.id.as_str());
    assert_eq!(identity["account_id"], ACCOUNT);
    assert_eq!(identity["name"], "ci");
    assert_eq!(identity["tier"], "free");
}

#[tokio::test]
async fn created_key_is_returned_once_with_its_public_record() {
    let world = World::new();
    let created = world.create("  ci  ").await;
    let secret = created.key.expose_secret();
    assert!(secret.starts_with("sk_live_"));
    assert_eq!(created.info.name, "ci", "names are trimmed");
    assert_eq!(created.info.created_at, Some(world.now()));
    let hint = created.info.hint.as_deref().unwrap();
    assert_eq!(hint, format!("sk_live_...{}", &secret[secret.len() - 4..]));
}

#[tokio::test]
async fn plaintext_key_is_stored_nowhere() {
    let world = World::new();
    let created = world.create("ci").await;
    let body = &created.key.expose_secret()["sk_live_".len()..];
    let records = world.store.list(ACCOUNT).await.unwrap();
    let stored = format!("{records:?}{:?}", world.keys.list(ACCOUNT).await.unwrap());
    assert!(!stored.contains(body));
    assert!(!stored.contains(&created.key.digest().to_hex()));
    assert!(records[0].digest.matches(&created.key.digest()));
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let world = World::new();
    for name in ["", "   ", &"n".repeat(101)] {
        let result = world
            .keys
            .create(NewKey::new(ACCOUNT, Tier::FREE, name))
            .await;
        assert!(matches!(result, Err(ManageError::InvalidName)), "{name:?}");
    }
    assert!(world.keys.list(ACCOUNT).await.unwrap().is_empty());
}

#[tokio::test]
async fn expiry_must_be_in_the_future() {
    let world = World::new();
    let past = NewKey::new(ACCOUNT, Tier::FREE, "ci").expires_at(world.now());
    assert!(matches!(
        world.keys.create(past).await,
        Err(ManageError::InvalidExpiry)
    ));
    let zero = NewKey::new(ACCOUNT, Tier::FREE, "ci").expires_in(Duration::ZERO);
    assert!(matches!(
        world.keys.create(zero).await,
        Err(ManageError::InvalidExpiry)
    ));
}

#[tokio::test]
async fn listing_shows_the_account_s_keys_without_secrets() {
    let world = World::new();
    let first = world.create("first").await;
    world.clock.advance(Duration::from_secs(1));
    let second = world.create("second").await;
    world
        .keys
        .create(NewKey::new("acct_other", Tier::FREE, "theirs"))
        .await
        .unwrap();
    let listed = world.keys.list(ACCOUNT).await.unwrap();
    let names: Vec<_> = listed.iter().map(|info| info.name.as_str()).collect();
    assert_eq!(
        names,
        ["first", "second"],
        "oldest first, this account only"
    );
    let json = serde_json::to_string(&listed).unwrap();
    for created in [&first, &second] {
        assert!(!json.contains(&created.key.expose_secret()["sk_live_".len()..]));
    }
    let fields: Vec<_> = serde_json::to_value(&listed[0])
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        fields,
        [
            "created_at",
            "credits",
            "disabled_at",
            "expires_at",
            "hint",
            "id",
            "last_used_at",
            "mode",
            "name",
            "rate_limit",
            "revoked_at",
            "scopes"
        ]
    );
}

#[tokio::test]
async fn revoked_key_is_expired_and_stays_listed() {
    let world = World::new();
    let created = world.create("ci").await;
    let revoked = world.keys.revoke(ACCOUNT, &created.info.id).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(world.now()));
    assert_eq!(world.code_for(&created.key).await, "expired_api_key");
    let listed = world.keys.list(ACCOUNT).await.unwrap();
    assert_eq!(listed[0].revoked_at, Some(world.now()));
}

#[tokio::test]
async fn revoking_twice_keeps_the_first_time() {
    let world = World::new();
    let created = world.create("ci").await;
    let first = world.keys.revoke(ACCOUNT, &created.info.id).await.unwrap();
    world.clock.advance(Duration::from_secs(5));
    let second = world.keys.revoke(ACCOUNT, &created.info.id).await.unwrap();
    assert_eq!(first.revoked_at, second.revoked_at);
}

#[tokio::test]
async fn deleted_key_is_invalid_and_unlisted() {
    let world = World::new();
    let created = world.create("ci").await;
    world.keys.delete(ACCOUNT, &created.info.id).await.unwrap();
    assert_eq!(world.code_for(&created.key).await, "invalid_api_key");
    assert!(world.keys.list(ACCOUNT).await.unwrap().is_empty());
}

#[tokio::test]
async fn another_account_s_key_cannot_be_revoked_or_deleted() {
    let world = World::new();
    let created = world.create("ci").await;
    let id = &created.info.id;
    assert!(matches!(
        world.keys.revoke("acct_other", id).await,
        Err(ManageError::NotFound)
    ));
    assert!(matches!(
        world.keys.delete("acct_other", id).await,
        Err(ManageError::NotFound)
    ));
    assert_eq!(world.code_for(&created.key).await, "ok");
}

#[tokio::test]
async fn unknown_key_id_is_not_found() {
    let world = World::new();
    let unknown = KeyId::new("key_unknown");
    assert!(matches!(
        world.keys.revoke(ACCOUNT, &unknown).await,
        Err(ManageError::NotFound)
    ));
    assert!(matches!(
        world.keys.delete(ACCOUNT, &unknown).await,
        Err(ManageError::NotFound)
    ));
}

#[tokio::test]
async fn key_expires_at_its_expiry() {
    let world = World::new();
    let new = NewKey::new(ACCOUNT, Tier::FREE, "ci").expires_in(Duration::from_secs(3600));
    let created = world.keys.create(new).await.unwrap();
    assert_eq!(
        created.info.expires_at,
        Some(world.now() + Duration::from_secs(3600))
    );
    world.clock.advance(Duration::from_secs(3599));
    assert_eq!(world.code_for(&created.key).await, "ok");
    world.clock.advance(Duration::from_secs(1));
    assert_eq!(world.code_for(&created.key).await, "expired_api_key");
}

#[tokio::test]
async fn rotated_key_works_through_its_grace_period_then_expires() {
    let world = World::new();
    let old = world.create("ci").await;
    let grace = Duration::from_secs(600);
    let new = world
        .keys
        .rotate(ACCOUNT, &old.info.id, grace)
        .await
        .unwrap();
    assert_ne!(new.info.id, old.info.id);
    assert_eq!(new.info.name, "ci");
    assert_eq!(world.code_for(&new.key).await, "ok");
    world.clock.advance(grace - Duration::from_secs(1));
    assert_eq!(world.code_for(&old.key).await, "ok");
    world.clock.advance(Duration::from_secs(1));
    assert_eq!(world.code_for(&old.key).await, "expired_api_key");
    assert_eq!(world.code_for(&new.key).await, "ok");
}

#[tokio::test]
async fn rotation_keeps_the_key_s_expiry_and_never_extends_it() {
    let world = World::new();
    let new = NewKey::new(ACCOUNT, Tier::FREE, "ci").expires_in(Duration::from_secs(100));
    let old = world.keys.create(new).await.unwrap();
    world.clock.advance(Duration::from_secs(10));
    let replacement = world
        .keys
        .rotate(ACCOUNT, &old.info.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(replacement.info.expires_at, old.info.expires_at);
    let listed = world.keys.list(ACCOUNT).await.unwrap();
    let old_info = listed.iter().find(|info| info.id == old.info.id).unwrap();
    assert_eq!(
        old_info.expires_at, old.info.expires_at,
        "grace never extends a key's life"
    );
}

#[tokio::test]
async fn expiry_and_grace_are_bounded_by_max_lifetime() {
    let world = World::new();
    let far =
        NewKey::new(ACCOUNT, Tier::FREE, "far").expires_in(Duration::from_secs(400_000_000_000));
    assert!(matches!(
        world.keys.create(far).await,
        Err(ManageError::InvalidExpiry)
    ));
    let longest =
        NewKey::new(ACCOUNT, Tier::FREE, "longest").expires_in(tower_api_key::manage::MAX_LIFETIME);
    let created = world.keys.create(longest).await.unwrap();
    let rotated = world
        .keys
        .rotate(ACCOUNT, &created.info.id, Duration::MAX)
        .await;
    assert!(
        matches!(rotated, Err(ManageError::InvalidExpiry)),
        "{rotated:?}"
    );
    assert!(serde_json::to_string(&world.keys.list(ACCOUNT).await.unwrap()).is_ok());
}

#[tokio::test]
async fn listing_a_time_before_1970_is_an_error_not_a_panic() {
    let world = World::new();
    let key = tower_api_key::key::KeyFormat::default().generate();
    let identity =
        tower_api_key::KeyIdentity::new(KeyId::new("key_old"), ACCOUNT, "old", Tier::FREE);
    let created_at = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
    world
        .store
        .insert(KeyRecord::new(key.digest(), identity).with_created_at(created_at));
    let listed = world.keys.list(ACCOUNT).await.unwrap();
    assert!(serde_json::to_string(&listed).is_err());
}

#[tokio::test]
async fn rotation_works_at_the_quota() {
    let world = World::new();
    let keys = [
        world.create("a").await,
        world.create("b").await,
        world.create("c").await,
    ];
    let rotated = world
        .keys
        .rotate(ACCOUNT, &keys[0].info.id, Duration::from_secs(60))
        .await;
    assert!(rotated.is_ok(), "{rotated:?}");
    let over = world
        .keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "d"))
        .await;
    assert!(matches!(over, Err(ManageError::KeyLimitReached { .. })));
}

#[tokio::test]
async fn revoked_key_cannot_be_rotated() {
    let world = World::new();
    let created = world.create("ci").await;
    world.keys.revoke(ACCOUNT, &created.info.id).await.unwrap();
    let result = world
        .keys
        .rotate(ACCOUNT, &created.info.id, Duration::from_secs(60))
        .await;
    assert!(matches!(result, Err(ManageError::NotFound)));
}

#[tokio::test]
async fn free_tier_holds_three_active_keys() {
    let world = World::new();
    for name in ["a", "b", "c"] {
        world.create(name).await;
    }
    let result = world
        .keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "d"))
        .await;
    match result {
        Err(ManageError::KeyLimitReached { tier, limit }) => {
            assert_eq!((tier, limit), (Tier::FREE, 3));
        }
        other => panic!("expected the limit, got {other:?}"),
    }
}

#[tokio::test]
async fn pro_tier_holds_fifty_active_keys() {
    let world = World::new();
    for index in 0..50 {
        let new = NewKey::new(ACCOUNT, Tier::PRO, format!("key {index}"));
        world.keys.create(new).await.unwrap();
    }
    let result = world
        .keys
        .create(NewKey::new(ACCOUNT, Tier::PRO, "51st"))
        .await;
    assert!(matches!(
        result,
        Err(ManageError::KeyLimitReached { limit: 50, .. })
    ));
}

#[tokio::test]
async fn revoked_keys_do_not_count_toward_the_quota() {
    let world = World::new();
    let first = world.create("a").await;
    world.create("b").await;
    world.create("c").await;
    world.keys.revoke(ACCOUNT, &first.info.id).await.unwrap();
    assert!(world
        .keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "d"))
        .await
        .is_ok());
}

#[tokio::test]
async fn expired_keys_do_not_count_toward_the_quota() {
    let world = World::new();
    let short = NewKey::new(ACCOUNT, Tier::FREE, "short").expires_in(Duration::from_secs(60));
    world.keys.create(short).await.unwrap();
    world.create("b").await;
    world.create("c").await;
    assert!(world
        .keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "d"))
        .await
        .is_err());
    world.clock.advance(Duration::from_secs(60));
    assert!(world
        .keys
        .create(NewKey::new(ACCOUNT, Tier::FREE, "d"))
        .await
        .is_ok());
}

#[tokio::test]
async fn quotas_are_per_account() {
    let world = World::new();
    for name in ["a", "b", "c"] {
        world.create(name).await;
    }
    let other = NewKey::new("acct_other", Tier::FREE, "mine");
    assert!(world.keys.create(other).await.is_ok());
}

#[tokio::test]
async fn tiers_and_limits_are_configurable() {
    let world = World::new();
    let gold = Tier::new("gold");
    let keys =
        KeyManager::new(world.store.clone()).tier_limits(TierLimits::none().with(gold.clone(), 1));
    keys.create(NewKey::new(ACCOUNT, gold.clone(), "a"))
        .await
        .unwrap();
    let over = keys.create(NewKey::new(ACCOUNT, gold, "b")).await;
    assert!(matches!(
        over,
        Err(ManageError::KeyLimitReached { limit: 1, .. })
    ));
    let free = keys.create(NewKey::new(ACCOUNT, Tier::FREE, "c")).await;
    assert!(matches!(free, Err(ManageError::UnknownTier(tier)) if tier == Tier::FREE));
}

/// Counts the layer's `record_use` calls, to show they are coalesced.
#[derive(Clone)]
struct CountingUses {
    inner: MemoryKeyStore,
    uses: Arc<AtomicUsize>,
}

#[async_trait]
impl KeyStore for CountingUses {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.find(lookup_id).await
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        self.uses.fetch_add(1, Ordering::SeqCst);
        self.inner.record_use(record, at);
    }
}

#[tokio::test]
async fn last_use_is_recorded_at_most_once_per_interval() {
    let world = World::new();
    let created = world.create("ci").await;
    let store = CountingUses {
        inner: world.store.clone(),
        uses: Arc::default(),
    };
    let layer = ApiKeyLayer::new(store.clone())
        .clock(world.clock.clone())
        .last_used_interval(Duration::from_secs(60));
    let service = ServiceBuilder::new().layer(layer).service_fn(echo_identity);
    let send = || {
        let request = request(&[("x-api-key", created.key.expose_secret().as_bytes())]);
        service.clone().oneshot(request)
    };
    let first_use = world.now();
    for _ in 0..100 {
        assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    }
    world.clock.advance(Duration::from_secs(59));
    send().await.unwrap();
    assert_eq!(store.uses.load(Ordering::SeqCst), 1);
    let listed = world.keys.list(ACCOUNT).await.unwrap();
    assert_eq!(listed[0].last_used_at, Some(first_use));

    world.clock.advance(Duration::from_secs(1));
    send().await.unwrap();
    assert_eq!(store.uses.load(Ordering::SeqCst), 2);
    let listed = world.keys.list(ACCOUNT).await.unwrap();
    assert_eq!(listed[0].last_used_at, Some(world.now()));
}

#[tokio::test]
async fn refused_requests_record_no_use() {
    let world = World::new();
    let created = world.create("ci").await;
    world.keys.revoke(ACCOUNT, &created.info.id).await.unwrap();
    assert_eq!(world.code_for(&created.key).await, "expired_api_key");
    assert_eq!(
        world.keys.list(ACCOUNT).await.unwrap()[0].last_used_at,
        None
    );
}
