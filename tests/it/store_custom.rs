//! The store suite against the store that `examples/custom_writable_store.rs` writes from
//! scratch (a map persisted to a JSON file), as a user's test file would run it on theirs.

#[path = "../../examples/custom_writable_store.rs"]
#[allow(dead_code)] // The example's `main` is not called here.
mod example;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use example::JsonFileStore;
use tower_api_key::testing::{account, clock, create, manager, verdict, Backend};

/// One file per test; its instances are clones of one store, as the example is for one process.
struct JsonFile {
    store: JsonFileStore,
}

impl JsonFile {
    fn new() -> Self {
        let path = temporary_file();
        Self {
            store: JsonFileStore::open(path).unwrap(),
        }
    }
}

impl Drop for JsonFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.store.path());
    }
}

fn temporary_file() -> PathBuf {
    std::env::temp_dir().join(format!(
        "tower-api-key-test-{}.json",
        uuid::Uuid::new_v4().simple()
    ))
}

#[async_trait]
impl Backend for JsonFile {
    type Store = JsonFileStore;

    async fn instance(&self) -> JsonFileStore {
        self.store.clone()
    }
}

tower_api_key::store_suite!(JsonFile::new());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_gives_back_every_record_and_never_a_key() {
    let backend = JsonFile::new();
    let clock = clock();
    let keys = manager(backend.instance().await, &clock);
    let account = account();
    let kept = keys
        .create(
            tower_api_key::NewKey::new(&account, tower_api_key::Tier::PRO, "kept")
                .expires_in(Duration::from_secs(3600))
                .credits(tower_api_key::limit::Credits::new(5)),
        )
        .await
        .unwrap();
    let revoked = create(&keys, &account).await;
    clock.advance(Duration::from_secs(1));
    keys.revoke(&account, &revoked.info.id).await.unwrap();
    let deleted = create(&keys, &account).await;
    keys.delete(&account, &deleted.info.id).await.unwrap();

    let file = std::fs::read_to_string(backend.store.path()).unwrap();
    for key in [&kept.key, &revoked.key, &deleted.key] {
        assert!(!file.contains(key.expose_secret()), "a key in the file");
    }
    let reopened = manager(JsonFileStore::open(backend.store.path()).unwrap(), &clock);
    let before = keys.list(&account).await.unwrap();
    let after = reopened.list(&account).await.unwrap();
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        serde_json::to_value(&before).unwrap()
    );
    assert_eq!(after.len(), 2);
    assert_eq!(verdict(&reopened, &kept.key).await, "ok");
    assert_eq!(verdict(&reopened, &revoked.key).await, "expired_api_key");
    assert_eq!(verdict(&reopened, &deleted.key).await, "invalid_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_records_fails_the_open() {
    let path = temporary_file();
    std::fs::write(&path, r#"[{"digest": "not hex"}]"#).unwrap();
    assert!(JsonFileStore::open(&path).is_err());
    std::fs::remove_file(&path).unwrap();
}
