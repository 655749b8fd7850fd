//! A custom `KeyStore` over a JSON document, as a config file or a secrets manager could hold it.
//!
//! ```text
//! cargo run --example custom_store
//! ```
//!
//! No server: it sends three requests through the layer and checks the answers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    access::{KeyMode, Scopes},
    key::{KeyDigest, KeyFormat},
    ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, KeyStore, LookupId, StoreError, Tier,
};

/// Read-only keys, loaded once; the layer does the checking, so the store only looks up.
#[derive(Debug)]
struct JsonKeyStore {
    records: HashMap<LookupId, KeyRecord>,
}

/// One key as the document lists it.
#[derive(Deserialize)]
// A misspelt `revoked` must fail the load, not leave the key active.
#[serde(deny_unknown_fields)]
struct Entry {
    key_id: String,
    account_id: String,
    name: String,
    tier: String,
    #[serde(deserialize_with = "hex_digest")]
    digest: KeyDigest,
    #[serde(default)]
    revoked: bool,
    /// `"live"` (the default) or `"test"`: the store must say which, as the layer trusts it.
    #[serde(default)]
    mode: KeyMode,
    /// Absent for full access.
    scopes: Option<Vec<String>>,
}

impl JsonKeyStore {
    fn from_json(document: &str) -> serde_json::Result<Self> {
        let entries: Vec<Entry> = serde_json::from_str(document)?;
        // The document says whether a key is revoked, not when: loading time stands in.
        let loaded_at = SystemTime::now();
        let records = entries
            .into_iter()
            .map(|entry| {
                let key_id = KeyId::new(entry.key_id);
                let tier = Tier::new(entry.tier);
                let mut identity = KeyIdentity::new(key_id, entry.account_id, entry.name, tier)
                    .with_mode(entry.mode);
                if let Some(scopes) = entry.scopes {
                    let scopes = Scopes::new(scopes).map_err(serde_json::Error::custom)?;
                    identity = identity.with_scopes(scopes);
                }
                let mut record = KeyRecord::new(entry.digest, identity);
                if entry.revoked {
                    record = record.with_revoked_at(loaded_at);
                }
                Ok((entry.digest.lookup_id(), record))
            })
            .collect::<serde_json::Result<_>>()?;
        Ok(Self { records })
    }
}

#[async_trait]
impl KeyStore for JsonKeyStore {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.records.get(lookup_id).cloned())
    }
}

fn hex_digest<'de, D: Deserializer<'de>>(deserializer: D) -> Result<KeyDigest, D::Error> {
    let hex = String::deserialize(deserializer)?;
    KeyDigest::from_hex(&hex)
        .ok_or_else(|| D::Error::custom("a digest must be 64 hexadecimal digits"))
}

async fn whoami(request: Request<Empty<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let identity = request
        .extensions()
        .get::<KeyIdentity>()
        .expect("ApiKeyLayer sets the identity");
    let access = identity
        .scopes()
        .map_or_else(|| "full access".to_owned(), |scopes| scopes.to_string());
    let greeting = format!(
        "hello {}, {} key {} ({}, {} tier, {access})",
        identity.account_id(),
        identity.mode(),
        identity.key_id(),
        identity.name(),
        identity.tier()
    );
    Ok(Response::new(Full::from(greeting)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // What an operator provisioned: keys handed to their owners, only digests in the document.
    let format = KeyFormat::default();
    let (active, revoked) = (format.generate(), format.generate());
    let sandbox = format
        .generate_for(KeyMode::Test)
        .expect("the default has test keys");
    let document = json!([
        {
            "key_id": "key_ci",
            "account_id": "acct_42",
            "name": "ci",
            "tier": "pro",
            "digest": active.digest().to_hex(),
        },
        {
            "key_id": "key_old_laptop",
            "account_id": "acct_42",
            "name": "old laptop",
            "tier": "pro",
            "digest": revoked.digest().to_hex(),
            "revoked": true,
        },
        {
            "key_id": "key_sandbox",
            "account_id": "acct_42",
            "name": "sandbox",
            "tier": "pro",
            "digest": sandbox.digest().to_hex(),
            "mode": "test",
            "scopes": ["iocs:read"],
        },
    ]);
    println!("{document:#}\n");

    let store = JsonKeyStore::from_json(&document.to_string()).expect("the document is valid");
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(store))
        .service_fn(whoami);

    // Well-formed, so it reaches the store, which does not know it.
    let unknown = format.generate();
    let cases = [
        ("active key", &active, StatusCode::OK, None),
        ("restricted test key", &sandbox, StatusCode::OK, None),
        (
            "unknown key",
            &unknown,
            StatusCode::UNAUTHORIZED,
            Some("invalid_api_key"),
        ),
        (
            "revoked key",
            &revoked,
            StatusCode::UNAUTHORIZED,
            Some("expired_api_key"),
        ),
    ];
    for (label, key, status, code) in cases {
        let request = Request::builder()
            .header(AUTHORIZATION, format!("Bearer {}", key.expose_secret()))
            .body(Empty::new())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        let actual_status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        println!(
            "{label}: {actual_status}\n{}\n",
            String::from_utf8_lossy(&body)
        );

        assert_eq!(actual_status, status, "{label}");
        if let Some(code) = code {
            let envelope: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(envelope["error"]["code"], code, "{label}");
        }
    }
}
