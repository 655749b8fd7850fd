//! An axum hello-world for `benches/http_load.sh` and `benches/http_instructions.sh`: with
//! `--plain`, no check; with `--layer`, behind `ApiKeyLayer` over a `MemoryKeyStore`; with `--floor`, behind the unavoidable
//! work done by hand (parse the header, SHA-256 the key, one `HashMap` lookup, one constant-time
//! compare, one identity inserted), as the criterion bench's `floor` row does. It prints the
//! address, then a valid key, one per line.
//!
//! ```text
//! cargo bench --bench hello_load -- --plain | --layer | --floor
//! ```
//!
//! Without one of those (as when `cargo bench` runs every bench) it serves nothing and says how
//! to run it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::util::MapRequestLayer;
use tower_api_key::{KeyIdentity, KeyManager, MemoryKeyStore, NewKey, Tier};

#[tokio::main]
async fn main() {
    let variant = std::env::args().nth(1).unwrap_or_default();
    if !["--plain", "--layer", "--floor"].contains(&variant.as_str()) {
        println!(
            "hello_load serves HTTP for benches/http_load.sh and benches/http_instructions.sh"
        );
        return;
    }
    let keys = KeyManager::new(MemoryKeyStore::new());
    let created = keys
        .create(NewKey::new("acct_load", Tier::PRO, "load"))
        .await
        .expect("a new store takes a key");
    let mut app = Router::new().route("/", get(|| async { "hello" }));
    match variant.as_str() {
        "--layer" => app = app.layer(keys.layer()),
        "--floor" => {
            let digest: [u8; 32] = Sha256::digest(created.key.expose_secret()).into();
            let table = Arc::new(HashMap::from([(
                <[u8; 16]>::try_from(&digest[..16]).expect("16 bytes"),
                (
                    digest,
                    KeyIdentity::new(created.info.id.clone(), "acct_load", "load", Tier::PRO),
                ),
            )]));
            app = app.layer(MapRequestLayer::new(move |request| floor(&table, request)));
        }
        _ => {}
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    println!("{}", listener.local_addr().expect("a bound address"));
    println!("{}", created.key.expose_secret());
    axum::serve(listener, app).await.expect("the server runs");
}

type FloorTable = HashMap<[u8; 16], ([u8; 32], KeyIdentity)>;

/// The work no API key check can avoid, by hand; it serves only the one valid key it is sent.
fn floor(table: &FloorTable, mut request: Request) -> Request {
    let header = request.headers().get("authorization");
    let key = header
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .expect("a bearer key");
    let digest: [u8; 32] = Sha256::digest(key).into();
    let lookup: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    let (stored, identity) = table.get(&lookup).expect("the key the example printed");
    assert!(
        bool::from(stored.ct_eq(&digest)),
        "the key the example printed"
    );
    let identity = identity.clone();
    request.extensions_mut().insert(identity);
    request
}
