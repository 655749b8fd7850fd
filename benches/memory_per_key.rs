//! How much resident memory `MemoryKeyStore` takes per key: fills a store with 1,000,000 keys
//! and compares the process's resident set size before and after (Linux: `/proc/self/statm`).
//! It measures bare records first, then records as `KeyManager` writes them (a creation time and
//! a hint), in a second store.
//!
//! ```text
//! cargo bench --bench memory_per_key
//! ```

use std::time::SystemTime;

use tower_api_key::{key::KeyFormat, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier};

const KEYS: usize = 1_000_000;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux's /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Fills a new store with `KEYS` records made by `record`, and reports the growth of the
/// resident set; the store is returned so that it is still held while measured.
fn measure(what: &str, record: impl Fn(usize) -> KeyRecord) -> MemoryKeyStore {
    let store = MemoryKeyStore::new();
    let before = resident_bytes();
    for index in 0..KEYS {
        store.insert(record(index));
    }
    let after = resident_bytes();
    println!(
        "{what}: {} keys: resident {} MiB -> {} MiB: {} bytes per key",
        store.len(),
        before >> 20,
        after >> 20,
        (after - before) / KEYS
    );
    store
}

fn main() {
    let format = KeyFormat::default();
    // Three keys per account, as a free tier allows.
    let identity = |index: usize| {
        KeyIdentity::new(
            KeyId::random(),
            format!("acct_{}", index / 3),
            "ci",
            Tier::FREE,
        )
    };
    let bare = measure("bare records", |index| {
        KeyRecord::new(format.generate().digest(), identity(index))
    });
    let now = SystemTime::now();
    let managed = measure("records with a creation time and a hint", |index| {
        let key = format.generate();
        let secret = key.expose_secret();
        let hint = format!("sk_live_...{}", &secret[secret.len() - 4..]);
        KeyRecord::new(key.digest(), identity(index))
            .with_created_at(now)
            .with_hint(hint)
    });
    drop((bare, managed));
}
