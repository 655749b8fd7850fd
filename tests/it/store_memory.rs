//! The store suite against `MemoryKeyStore`.

use crate::common;

use async_trait::async_trait;
use common::suite::Backend;
use tower_api_key::MemoryKeyStore;

/// Instances of one memory store are its clones, which share keys.
#[derive(Default)]
struct Memory(MemoryKeyStore);

#[async_trait]
impl Backend for Memory {
    type Store = MemoryKeyStore;

    async fn instance(&self) -> MemoryKeyStore {
        self.0.clone()
    }
}

tower_api_key::store_suite!(Memory::default());
