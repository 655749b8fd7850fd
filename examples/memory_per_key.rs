//! How much resident memory `MemoryKeyStore` takes per key: fills a store with 1,000,000 keys
//! and compares the process's resident set size before and after (Linux: `/proc/self/statm`).
//!
//! ```text
//! cargo run --release --example memory_per_key
//! ```

use tower_api_key::{KeyFormat, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier};

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

fn main() {
    let format = KeyFormat::default();
    let store = MemoryKeyStore::new();
    let before = resident_bytes();
    for index in 0..KEYS {
        // Three keys per account, as a free tier allows.
        let identity = KeyIdentity::new(
            KeyId::random(),
            format!("acct_{}", index / 3),
            "ci",
            Tier::FREE,
        );
        store.insert(KeyRecord::new(format.generate().digest(), identity));
    }
    let after = resident_bytes();
    println!(
        "{} keys: resident {} MiB -> {} MiB: {} bytes per key",
        store.len(),
        before >> 20,
        after >> 20,
        (after - before) / KEYS
    );
}
