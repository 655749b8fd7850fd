//! An axum hello-world for `benches/http_load.sh`: with `--layer`, behind `ApiKeyLayer` over a
//! `MemoryKeyStore`. It prints the address, then (with `--layer`) a valid key, one per line.
//!
//! ```text
//! cargo run --release --example hello_load -- [--layer]
//! ```

use axum::routing::get;
use axum::Router;
use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};

#[tokio::main]
async fn main() {
    let with_layer = std::env::args().any(|argument| argument == "--layer");
    let mut app = Router::new().route("/", get(|| async { "hello" }));
    let mut key = None;
    if with_layer {
        let keys = KeyManager::new(MemoryKeyStore::new());
        let created = keys
            .create(NewKey::new("acct_load", Tier::PRO, "load"))
            .await
            .expect("a new store takes a key");
        key = Some(created.key);
        app = app.layer(keys.layer());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    println!("{}", listener.local_addr().expect("a bound address"));
    if let Some(key) = key {
        println!("{}", key.expose_secret());
    }
    axum::serve(listener, app).await.expect("the server runs");
}
