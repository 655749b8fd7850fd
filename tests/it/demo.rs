//! The demo service (`examples/axum.rs`) over real HTTP on 127.0.0.1: the key-management flow a
//! user would follow with curl.
#![cfg(all(feature = "axum", feature = "rate-limit"))]

#[allow(dead_code)] // The demo's `main` is not called here.
#[path = "../../examples/axum.rs"]
pub(crate) mod example;

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{assert_envelope, Answer};
use http::{Method, StatusCode};
use tower_api_key::manage::TierLimits;
use tower_api_key::{
    clock::ManualClock, manage::CreatedKey, store::WritableKeyStore, ApiKey, KeyId, KeyManager,
    MemoryKeyStore, NewKey, Tier,
};

struct Demo<S = MemoryKeyStore> {
    address: SocketAddr,
    clock: ManualClock,
    store: S,
    /// The demo's free-tier account, new for each demo.
    account: String,
    /// The live key the demo prints at start, with full access.
    key: ApiKey,
    key_id: KeyId,
    /// The test key the demo prints at start, restricted to `example::TEST_KEY_SCOPES`.
    test_key: ApiKey,
    test_key_id: KeyId,
}

impl Demo {
    async fn start() -> Self {
        Self::start_with(MemoryKeyStore::new()).await
    }
}

impl<S: WritableKeyStore + Clone> Demo<S> {
    async fn start_with(store: S) -> Self {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let account = common::suite::account();
        let keys = KeyManager::new(store.clone()).clock(clock.clone());
        let (live, test) = example::demo_keys(&keys, &account).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = example::app(
            KeyManager::new(store.clone()).clock(clock.clone()),
            example::rate_limit(example::tier_limits(60)),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            address,
            clock,
            store,
            account,
            key: live.key,
            key_id: live.info.id,
            test_key: test.key,
            test_key_id: test.info.id,
        }
    }

    async fn call(&self, method: Method, path: &str, key: &str, body: &str) -> Answer {
        let headers: &common::Headers<'_> = &[("x-api-key", key.as_bytes())];
        common::http(self.address, method, path, headers, body).await
    }

    async fn create(&self, body: &str) -> Answer {
        self.create_with(&self.key, body).await
    }

    async fn create_with(&self, key: &ApiKey, body: &str) -> Answer {
        self.call(Method::POST, "/api/v1/keys", key.expose_secret(), body)
            .await
    }

    async fn list_with(&self, key: &str) -> Answer {
        self.call(Method::GET, "/api/v1/keys", key, "").await
    }

    async fn revoke_with(&self, key: &ApiKey, id: &KeyId) -> Answer {
        let path = format!("/api/v1/keys/{id}");
        self.call(Method::DELETE, &path, key.expose_secret(), "")
            .await
    }

    /// The demo's keys, managed directly, at the demo's time.
    fn keys(&self) -> KeyManager<S> {
        KeyManager::new(self.store.clone()).clock(self.clock.clone())
    }

    /// A key of the demo's account made directly, `customize`d from a pro-tier key named
    /// `name`: on the pro tier, so that it can create more keys than the free tier's 3.
    async fn add(&self, name: &str, customize: impl FnOnce(NewKey) -> NewKey) -> CreatedKey {
        let new = customize(NewKey::new(&self.account, Tier::PRO, name));
        self.keys().create(new).await.unwrap()
    }

    async fn is_revoked(&self, id: &KeyId) -> bool {
        let listed = self.keys().list(&self.account).await.unwrap();
        let info = listed.iter().find(|info| info.id == *id).unwrap();
        info.revoked_at.is_some()
    }

    async fn iocs_with(&self, key: &str) -> Answer {
        self.call(Method::GET, "/api/v1/iocs?type=ipv4&limit=10", key, "")
            .await
    }
}

fn is_rfc3339_utc(value: &serde_json::Value) -> bool {
    let text = value.as_str().unwrap_or_default();
    humantime::parse_rfc3339(text).is_ok() && text.ends_with('Z')
}

#[tokio::test]
async fn banner_prints_each_key_alone_on_its_line() {
    let demo = Demo::start().await;
    let banner = example::banner("127.0.0.1:3000", &demo.account, &demo.key, &demo.test_key);
    let lines: Vec<&str> = banner.lines().collect();
    let live: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| line.starts_with("sk_live_"))
        .collect();
    assert_eq!(live, [demo.key.expose_secret()]);
    let test: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| line.starts_with("sk_test_"))
        .collect();
    assert_eq!(test, [demo.test_key.expose_secret()]);
}

#[tokio::test]
async fn printed_key_reads_iocs_and_health_is_open() {
    let demo = Demo::start().await;
    let answer = demo.iocs_with(demo.key.expose_secret()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json()["authenticated_as"]["account_id"],
        demo.account.as_str()
    );
    let health = common::http(demo.address, Method::GET, "/health", &[], "").await;
    assert_eq!(health.status, StatusCode::OK);
    let anonymous = common::http(demo.address, Method::GET, "/api/v1/iocs", &[], "").await;
    assert_envelope(&anonymous, StatusCode::UNAUTHORIZED, "missing_api_key");
}

#[tokio::test]
async fn keys_page_is_served_without_a_key_under_a_strict_policy_and_holds_no_key() {
    let demo = Demo::start().await;
    let page = common::http(demo.address, Method::GET, "/settings/api-keys", &[], "").await;
    let script_path = "/settings/api-keys/page.js";
    let script = common::http(demo.address, Method::GET, script_path, &[], "").await;
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(
        script.header("content-type"),
        "text/javascript; charset=utf-8"
    );
    for answer in [&page, &script] {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("cache-control"), "no-store");
        assert_eq!(answer.header("x-content-type-options"), "nosniff");
        assert_eq!(answer.header("referrer-policy"), "no-referrer");
        let policy = answer.header("content-security-policy");
        assert_eq!(policy, example::keys_page_policy());
        for directive in [
            "default-src 'none'",
            "script-src 'self';",
            "style-src 'sha256-",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{directive} not in {policy}");
        }
        assert!(!policy.contains("unsafe"), "{policy}");
        let body = std::str::from_utf8(&answer.body).unwrap();
        for secret in [demo.key.expose_secret(), demo.test_key.expose_secret()] {
            assert!(!body.contains(secret));
        }
        assert!(!body.contains("sk_live_") && !body.contains("sk_test_"));
        // Nothing from elsewhere: no address with a scheme or of another host.
        assert!(
            !body.contains("://") && !body.contains("src=\"//"),
            "{body}"
        );
        // Data from the server goes into the page as text only.
        assert!(!body.contains("innerHTML") && !body.contains("localStorage"));
    }
    let page = std::str::from_utf8(&page.body).unwrap();
    assert!(page.contains("<script src=\"/settings/api-keys/page.js\" defer></script>"));
    assert!(page.contains("type=\"password\""));
    assert!(page.contains("role=\"alert\""));
}

#[tokio::test]
async fn create_use_list_revoke_use_again() {
    create_use_list_revoke_use_again_on(Demo::start().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn create_use_list_revoke_use_again_on_postgres() {
    let url =
        std::env::var("DATABASE_URL").expect("DATABASE_URL must be set for the postgres tests");
    let pool = sqlx::PgPool::connect_lazy(&url).unwrap();
    let table = format!("demo_{}", uuid::Uuid::new_v4().simple());
    let store = tower_api_key::store::PgKeyStore::new(pool).table(&table);
    store.migrate().await.unwrap();
    create_use_list_revoke_use_again_on(Demo::start_with(store).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn create_use_list_revoke_use_again_on_redis() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL must be set for the redis tests");
    let client = redis::Client::open(url).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!("tower-api-key-demo-{}", uuid::Uuid::new_v4().simple());
    let store = tower_api_key::store::RedisKeyStore::new(connection).prefix(prefix);
    create_use_list_revoke_use_again_on(Demo::start_with(store).await).await;
}

/// The flow of the README's curl commands, the same on every store.
async fn create_use_list_revoke_use_again_on<S: WritableKeyStore + Clone>(demo: Demo<S>) {
    let created = demo.create(r#"{"name": "ci", "expires_in": 3600}"#).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created.header("cache-control"),
        "no-store",
        "the key must not be cached"
    );
    let body = created.json();
    let fields: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        fields,
        [
            "created_at",
            "expires_at",
            "id",
            "key",
            "mode",
            "name",
            "scopes"
        ]
    );
    assert_eq!(body["mode"], "live");
    assert_eq!(body["scopes"], serde_json::Value::Null, "full access");
    assert_eq!(body["name"], "ci");
    assert!(is_rfc3339_utc(&body["created_at"]) && is_rfc3339_utc(&body["expires_at"]));
    let key = body["key"].as_str().unwrap().to_owned();
    let id = body["id"].as_str().unwrap().to_owned();

    assert_eq!(demo.iocs_with(&key).await.status, StatusCode::OK);

    let listed = demo.call(Method::GET, "/api/v1/keys", &key, "").await;
    assert_eq!(listed.status, StatusCode::OK);
    let data = listed.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 3, "the printed keys and the new one");
    assert!(data
        .iter()
        .any(|info| info["id"] == id.as_str() && info["name"] == "ci"));
    let listing = String::from_utf8(listed.body.to_vec()).unwrap();
    assert!(
        !listing.contains(&key["sk_live_".len()..]),
        "listings never hold a key"
    );
    assert!(!listing.contains(&demo.key.expose_secret()["sk_live_".len()..]));
    assert!(!listing.contains(&demo.test_key.expose_secret()["sk_test_".len()..]));

    let revoked = demo
        .call(
            Method::DELETE,
            &format!("/api/v1/keys/{id}"),
            demo.key.expose_secret(),
            "",
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_envelope(
        &demo.iocs_with(&key).await,
        StatusCode::UNAUTHORIZED,
        "expired_api_key",
    );
}

#[tokio::test]
async fn created_key_expires_after_expires_in() {
    let demo = Demo::start().await;
    let created = demo
        .create(r#"{"name": "short", "expires_in": 60}"#)
        .await
        .json();
    let created_at = humantime::parse_rfc3339(created["created_at"].as_str().unwrap()).unwrap();
    let expires_at = humantime::parse_rfc3339(created["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires_at.duration_since(created_at).unwrap(),
        Duration::from_secs(60)
    );
    let key = created["key"].as_str().unwrap();
    assert_eq!(demo.iocs_with(key).await.status, StatusCode::OK);
    demo.clock.advance(Duration::from_secs(60));
    assert_envelope(
        &demo.iocs_with(key).await,
        StatusCode::UNAUTHORIZED,
        "expired_api_key",
    );
}

#[tokio::test]
async fn fourth_key_of_the_free_demo_account_is_refused() {
    let demo = Demo::start().await;
    let third = demo.create(r#"{"name": "third"}"#).await;
    assert_eq!(third.status, StatusCode::CREATED);
    // Test keys count against the same quota as live keys.
    let over = demo.create(r#"{"name": "fourth", "mode": "test"}"#).await;
    assert_envelope(&over, StatusCode::FORBIDDEN, "key_limit_reached");
    let message = over.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("free") && message.contains('3'),
        "{message}"
    );
}

#[tokio::test]
async fn revoking_an_unknown_or_foreign_key_is_404() {
    let demo = Demo::start().await;
    let key = demo.key.expose_secret();
    let unknown = demo
        .call(Method::DELETE, "/api/v1/keys/key_unknown", key, "")
        .await;
    assert_envelope(&unknown, StatusCode::NOT_FOUND, "not_found");

    let theirs = KeyManager::new(demo.store.clone())
        .clock(demo.clock.clone())
        .create(NewKey::new("acct_other", Tier::FREE, "theirs"))
        .await
        .unwrap();
    let path = format!("/api/v1/keys/{}", theirs.info.id);
    let foreign = demo.call(Method::DELETE, &path, key, "").await;
    assert_envelope(&foreign, StatusCode::NOT_FOUND, "not_found");
    let still_works = demo.iocs_with(theirs.key.expose_secret()).await;
    assert_eq!(still_works.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_create_requests_are_400_invalid_request() {
    let demo = Demo::start().await;
    let long_name = format!(r#"{{"name": "{}"}}"#, "n".repeat(101));
    for body in [
        "not json",
        "{}",
        r#"{"name": 42}"#,
        r#"{"name": "   "}"#,
        long_name.as_str(),
        r#"{"name": "ci", "expires_in": 0}"#,
        r#"{"name": "ci", "expires_in": -5}"#,
        r#"{"name": "ci", "expires_in": "soon"}"#,
        r#"{"name": "ci", "expires_in": 400000000000}"#,
        r#"{"name": "ci", "scopes": []}"#,
        r#"{"name": "ci", "scopes": ["keys write"]}"#,
        r#"{"name": "ci", "scopes": "iocs:read"}"#,
        r#"{"name": "ci", "mode": "staging"}"#,
    ] {
        let answer = demo.create(body).await;
        assert_envelope(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let listed = demo
        .call(Method::GET, "/api/v1/keys", demo.key.expose_secret(), "")
        .await;
    assert_eq!(
        listed.json()["data"].as_array().unwrap().len(),
        2,
        "nothing was created"
    );
}

#[tokio::test]
async fn printed_keys_are_a_live_key_with_full_access_and_a_restricted_test_key() {
    let demo = Demo::start().await;
    assert!(demo.key.expose_secret().starts_with("sk_live_"));
    assert!(demo.test_key.expose_secret().starts_with("sk_test_"));
    let answer = demo.iocs_with(demo.test_key.expose_secret()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["authenticated_as"]["mode"], "test");

    let listed = demo.list_with(demo.test_key.expose_secret()).await;
    assert_eq!(listed.status, StatusCode::OK);
    let data = listed.json()["data"].as_array().unwrap().clone();
    let of_mode = |mode: &str| {
        data.iter()
            .find(|info| info["mode"] == mode)
            .unwrap()
            .clone()
    };
    assert_eq!(of_mode("live")["scopes"], serde_json::Value::Null);
    assert_eq!(
        of_mode("test")["scopes"],
        serde_json::json!(example::TEST_KEY_SCOPES)
    );
    assert!(of_mode("test")["hint"]
        .as_str()
        .unwrap()
        .starts_with("sk_test_..."));
}

#[tokio::test]
async fn key_created_with_scopes_is_listed_with_them_and_limited_to_them() {
    let demo = Demo::start().await;
    let created = demo
        .create(r#"{"name": "reader", "scopes": ["iocs:read"]}"#)
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.json()["scopes"], serde_json::json!(["iocs:read"]));
    let reader = created.json()["key"].as_str().unwrap().to_owned();

    let listed = demo.list_with(demo.key.expose_secret()).await.json();
    let listed = listed["data"].as_array().unwrap();
    let info = listed.iter().find(|info| info["name"] == "reader").unwrap();
    assert_eq!(info["scopes"], serde_json::json!(["iocs:read"]));

    assert_eq!(demo.iocs_with(&reader).await.status, StatusCode::OK);
    let denied = demo.list_with(&reader).await;
    assert_envelope(&denied, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(
        denied.header("www-authenticate"),
        r#"Bearer error="insufficient_scope", scope="keys:read""#
    );
}

#[tokio::test]
async fn key_management_writes_need_keys_write() {
    let demo = Demo::start().await;
    let created = demo
        .create(r#"{"name": "lister", "scopes": ["keys:read"]}"#)
        .await
        .json();
    let lister = created["key"].as_str().unwrap();
    let challenge = r#"Bearer error="insufficient_scope", scope="keys:write""#;

    let create = demo
        .call(Method::POST, "/api/v1/keys", lister, r#"{"name": "x"}"#)
        .await;
    assert_envelope(&create, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(create.header("www-authenticate"), challenge);

    let path = format!("/api/v1/keys/{}", created["id"].as_str().unwrap());
    let revoke = demo.call(Method::DELETE, &path, lister, "").await;
    assert_envelope(&revoke, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(revoke.header("www-authenticate"), challenge);
    assert_eq!(
        demo.list_with(lister).await.status,
        StatusCode::OK,
        "not revoked"
    );
}

#[tokio::test]
async fn restricted_key_cannot_create_a_key_with_a_scope_it_lacks() {
    let demo = Demo::start().await;
    for body in [
        r#"{"name": "wider", "scopes": ["iocs:write"]}"#,
        r#"{"name": "wider", "scopes": ["iocs:read", "admin"]}"#,
    ] {
        let answer = demo.create_with(&demo.test_key, body).await;
        assert_envelope(&answer, StatusCode::FORBIDDEN, "cannot_grant_scope");
    }
    let listed = demo.list_with(demo.key.expose_secret()).await.json();
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        2,
        "nothing created"
    );
}

#[tokio::test]
async fn restricted_key_creates_keys_with_its_own_scopes_by_default() {
    let demo = Demo::start().await;
    let answer = demo
        .create_with(&demo.test_key, r#"{"name": "same"}"#)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(
        answer.json()["scopes"],
        serde_json::json!(example::TEST_KEY_SCOPES)
    );
}

#[tokio::test]
async fn test_key_creates_test_keys_and_cannot_create_live_keys() {
    let demo = Demo::start().await;
    let live = demo
        .create_with(&demo.test_key, r#"{"name": "live", "mode": "live"}"#)
        .await;
    assert_envelope(&live, StatusCode::FORBIDDEN, "live_key_required");
    let test = demo
        .create_with(&demo.test_key, r#"{"name": "test"}"#)
        .await;
    assert_eq!(test.status, StatusCode::CREATED);
    assert_eq!(test.json()["mode"], "test");
    assert!(test.json()["key"].as_str().unwrap().starts_with("sk_test_"));
}

#[tokio::test]
async fn live_key_creates_a_test_key_on_request() {
    let demo = Demo::start().await;
    let answer = demo.create(r#"{"name": "sandbox", "mode": "test"}"#).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let key = answer.json()["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_test_"));
    let iocs = demo.iocs_with(&key).await;
    assert_eq!(iocs.json()["authenticated_as"]["mode"], "test");
}

#[tokio::test]
async fn test_key_cannot_revoke_a_live_key() {
    let demo = Demo::start().await;
    let listed = demo.list_with(demo.key.expose_secret()).await.json();
    let live_id = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|info| info["mode"] == "live")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/keys/{live_id}");
    let answer = demo
        .call(Method::DELETE, &path, demo.test_key.expose_secret(), "")
        .await;
    assert_envelope(&answer, StatusCode::FORBIDDEN, "live_key_required");
    assert_eq!(
        demo.iocs_with(demo.key.expose_secret()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn submitting_an_indicator_needs_a_live_key_with_iocs_write() {
    let demo = Demo::start().await;
    let body = r#"{"type": "ipv4", "value": "192.0.2.1"}"#;
    let by_test_key = demo
        .call(
            Method::POST,
            "/api/v1/iocs",
            demo.test_key.expose_secret(),
            body,
        )
        .await;
    assert_envelope(&by_test_key, StatusCode::FORBIDDEN, "live_key_required");

    let reader = demo
        .create(r#"{"name": "reader", "scopes": ["iocs:read"]}"#)
        .await
        .json();
    let reader = reader["key"].as_str().unwrap();
    let by_reader = demo.call(Method::POST, "/api/v1/iocs", reader, body).await;
    assert_envelope(&by_reader, StatusCode::FORBIDDEN, "insufficient_scope");

    let by_live_key = demo
        .call(Method::POST, "/api/v1/iocs", demo.key.expose_secret(), body)
        .await;
    assert_eq!(by_live_key.status, StatusCode::ACCEPTED);
    assert_eq!(by_live_key.json()["status"], "received");
}

#[tokio::test]
async fn restricted_live_key_cannot_revoke_a_full_access_key() {
    let demo = Demo::start().await;
    let manager = demo.add("manager", |new| new.scopes(["keys:write"])).await;
    let answer = demo.revoke_with(&manager.key, &demo.key_id).await;
    assert_envelope(&answer, StatusCode::FORBIDDEN, "key_too_powerful");
    assert!(!demo.is_revoked(&demo.key_id).await);
}

#[tokio::test]
async fn restricted_key_cannot_revoke_a_key_with_a_scope_it_lacks() {
    let demo = Demo::start().await;
    let scopes = ["iocs:read", "keys:write"];
    let manager = demo.add("manager", |new| new.scopes(scopes)).await;
    let writer = demo.add("writer", |new| new.scopes(["iocs:write"])).await;
    let answer = demo.revoke_with(&manager.key, &writer.info.id).await;
    assert_envelope(&answer, StatusCode::FORBIDDEN, "key_too_powerful");
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("\"iocs:write\""), "{message}");
    assert!(!demo.is_revoked(&writer.info.id).await);
}

#[tokio::test]
async fn key_created_by_an_expiring_key_expires_with_it_by_default() {
    let demo = Demo::start().await;
    let hourly = demo
        .add("hourly", |new| new.expires_in(Duration::from_secs(3600)))
        .await;
    let answer = demo.create_with(&hourly.key, r#"{"name": "child"}"#).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let hourly = serde_json::to_value(&hourly.info).unwrap();
    assert_eq!(answer.json()["expires_at"], hourly["expires_at"]);
}

#[tokio::test]
async fn expiring_key_cannot_create_a_key_that_expires_later_than_itself() {
    let demo = Demo::start().await;
    let hourly = demo
        .add("hourly", |new| new.expires_in(Duration::from_secs(3600)))
        .await;
    let body = r#"{"name": "longer", "expires_in": 3601}"#;
    let answer = demo.create_with(&hourly.key, body).await;
    assert_envelope(&answer, StatusCode::FORBIDDEN, "key_too_powerful");
    let listed = demo.keys().list(&demo.account).await.unwrap();
    assert_eq!(listed.len(), 3, "nothing created");
}

#[tokio::test]
async fn expiring_key_cannot_revoke_a_key_that_outlives_it() {
    let demo = Demo::start().await;
    let hourly = demo
        .add("hourly", |new| new.expires_in(Duration::from_secs(3600)))
        .await;
    let answer = demo.revoke_with(&hourly.key, &demo.key_id).await;
    assert_envelope(&answer, StatusCode::FORBIDDEN, "key_too_powerful");
    assert!(!demo.is_revoked(&demo.key_id).await);
}

#[tokio::test]
async fn full_access_live_key_revokes_any_key_of_its_account() {
    let demo = Demo::start().await;
    let hourly_reader = demo
        .add("hourly reader", |new| {
            new.scopes(["iocs:read"])
                .expires_in(Duration::from_secs(3600))
        })
        .await;
    for id in [&demo.test_key_id, &hourly_reader.info.id, &demo.key_id] {
        let answer = demo.revoke_with(&demo.key, id).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{id}");
        assert!(demo.is_revoked(id).await, "{id}");
    }
}

#[tokio::test]
async fn restricted_key_creates_and_revokes_keys_with_some_of_its_scopes() {
    let demo = Demo::start().await;
    let scopes = ["iocs:read", "keys:write"];
    let manager = demo.add("manager", |new| new.scopes(scopes)).await;
    let body = r#"{"name": "reader", "scopes": ["iocs:read"]}"#;
    let created = demo.create_with(&manager.key, body).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = KeyId::new(created.json()["id"].as_str().unwrap());
    let answer = demo.revoke_with(&manager.key, &id).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn expiring_key_creates_and_revokes_keys_that_expire_no_later() {
    let demo = Demo::start().await;
    let hourly = demo
        .add("hourly", |new| new.expires_in(Duration::from_secs(3600)))
        .await;
    let body = r#"{"name": "minute", "expires_in": 60}"#;
    let created = demo.create_with(&hourly.key, body).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = KeyId::new(created.json()["id"].as_str().unwrap());
    let answer = demo.revoke_with(&hourly.key, &id).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
}

/// Serves the demo's app over `store` on a new port of 127.0.0.1.
async fn serve_demo<S: WritableKeyStore + Clone>(store: S) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = example::app(
        KeyManager::new(store),
        example::rate_limit(TierLimits::default()),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// What `key` gets from the demo at `address`: "ok" or the error code.
async fn verdict_at(address: SocketAddr, key: &ApiKey) -> String {
    let headers: &common::Headers<'_> = &[("x-api-key", key.expose_secret().as_bytes())];
    let answer = common::http(address, Method::GET, "/api/v1/iocs", headers, "").await;
    match answer.status {
        StatusCode::OK => "ok".to_owned(),
        _ => answer.error_code(),
    }
}

/// Two demo instances, each with its own connections, cache and feed, as `STORE=postgres` and
/// `STORE=redis` run them, with caches that would keep a record for an hour: a key revoked
/// through one is refused by the other within moments, which only the push can explain. The
/// live key, still active, is returned with the two addresses.
async fn a_revocation_through_one_demo_instance_reaches_the_other<S>(
    one: S,
    two: S,
) -> (CreatedKey, [SocketAddr; 2])
where
    S: WritableKeyStore + Clone,
{
    let (first, second) = (serve_demo(one.clone()).await, serve_demo(two.clone()).await);
    let account = common::suite::account();
    let (live, test) = example::demo_keys(&KeyManager::new(one), &account)
        .await
        .unwrap();

    // Both instances have cached both keys, and the second serves them from its cache: its
    // feed listens (a cache serves nothing until its feed does).
    let start = std::time::Instant::now();
    loop {
        for address in [first, second] {
            for key in [&live.key, &test.key] {
                assert_eq!(verdict_at(address, key).await, "ok");
            }
        }
        if two.find_now(&test.key.digest().lookup_id()).is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the feed never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Revoked through the first instance's API: the second refuses it.
    let path = format!("/api/v1/keys/{}", test.info.id);
    let headers: &common::Headers<'_> = &[("x-api-key", live.key.expose_secret().as_bytes())];
    let revoked = common::http(first, Method::DELETE, &path, headers, "").await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        verdict_within(second, &test.key, "expired_api_key").await,
        "expired_api_key",
        "the other instance still accepts a key revoked through the first"
    );
    (live, [first, second])
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_one_demo_instance_is_refused_by_another_on_postgres() {
    let url =
        std::env::var("DATABASE_URL").expect("DATABASE_URL must be set for the postgres tests");
    let hour = Duration::from_secs(3600);
    let one = example::cached_postgres(&url, hour).await.unwrap();
    let two = example::cached_postgres(&url, hour).await.unwrap();
    let (live, addresses) =
        a_revocation_through_one_demo_instance_reaches_the_other(one, two).await;

    // Revoked with plain SQL, by an operator: both refuse it.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1")
        .bind(live.info.id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    for address in addresses {
        assert_eq!(
            verdict_within(address, &live.key, "expired_api_key").await,
            "expired_api_key",
            "a key revoked with plain SQL is still accepted"
        );
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_one_demo_instance_is_refused_by_another_on_redis() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL must be set for the redis tests");
    let hour = Duration::from_secs(3600);
    let one = example::cached_redis(&url, hour).await.unwrap();
    let two = example::cached_redis(&url, hour).await.unwrap();
    a_revocation_through_one_demo_instance_reaches_the_other(one, two).await;
}

/// Asks until the answer is `expected`, for at most 2 seconds (the push takes milliseconds;
/// the caches' TTL is an hour); the last answer.
async fn verdict_within(address: SocketAddr, key: &ApiKey, expected: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let verdict = verdict_at(address, key).await;
        if verdict == expected || tokio::time::Instant::now() > deadline {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_free_key_gets_60_requests_a_minute_and_listings_show_the_limit() {
    let demo = Demo::start().await;
    let key = demo.key.expose_secret();
    let first = demo.iocs_with(key).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("ratelimit-policy"), r#""default";q=60;w=60"#);
    assert_eq!(first.header("ratelimit"), r#""default";r=59;t=1"#);
    for _ in 1..60 {
        assert_eq!(demo.iocs_with(key).await.status, StatusCode::OK);
    }
    let refused = demo.iocs_with(key).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(refused.header("retry-after"), "1");
    // Each key counts alone: the test key still has its minute.
    let listed = demo.list_with(demo.test_key.expose_secret()).await;
    assert_eq!(listed.status, StatusCode::OK);
    let limit = &listed.json()["data"][0]["rate_limit"];
    assert_eq!(
        *limit,
        serde_json::json!({"requests": 60, "period_secs": 60, "burst": 60})
    );
}

#[tokio::test]
async fn every_error_under_api_is_in_the_envelope_with_the_caller_s_request_id() {
    let demo = Demo::start().await;
    let key = demo.key.expose_secret();
    for (method, path) in [
        (Method::GET, "/api/v1/iocs?limit=abc"),
        (Method::GET, "/api/v2/nothing"),
        (Method::PUT, "/api/v1/keys"),
        (Method::GET, "/api/v1/keys/key_of_nobody"),
    ] {
        let headers: &common::Headers<'_> = &[
            ("x-api-key", key.as_bytes()),
            ("x-request-id", b"req_demo_42"),
        ];
        let answer = common::http(demo.address, method.clone(), path, headers, "").await;
        assert!(
            answer.status.is_client_error(),
            "{method} {path}: {}",
            answer.status
        );
        let code = answer.error_code();
        assert_envelope(&answer, answer.status, &code);
        assert_eq!(
            answer.json()["error"]["request_id"],
            "req_demo_42",
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_browser_s_preflight_is_answered_and_a_refusal_is_readable_cross_origin() {
    let demo = Demo::start().await;
    let preflight: &common::Headers<'_> = &[
        ("origin", b"https://app.example.com"),
        ("access-control-request-method", b"GET"),
        ("access-control-request-headers", b"x-api-key"),
    ];
    let answer = common::http(demo.address, Method::OPTIONS, "/api/v1/iocs", preflight, "").await;
    assert_eq!(answer.status, StatusCode::OK, "a preflight carries no key");
    assert_eq!(answer.header("access-control-allow-origin"), "*");
    assert!(answer
        .header("access-control-allow-headers")
        .contains("x-api-key"));

    let no_key: &common::Headers<'_> = &[("origin", b"https://app.example.com")];
    let refused = common::http(demo.address, Method::GET, "/api/v1/iocs", no_key, "").await;
    assert_envelope(&refused, StatusCode::UNAUTHORIZED, "missing_api_key");
    assert_eq!(refused.header("access-control-allow-origin"), "*");
    assert!(refused
        .header("access-control-expose-headers")
        .contains("x-request-id"));

    let key = demo.key.expose_secret().as_bytes();
    let with_key: &common::Headers<'_> =
        &[("origin", b"https://app.example.com"), ("x-api-key", key)];
    let answer = common::http(demo.address, Method::GET, "/api/v1/iocs", with_key, "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("access-control-allow-origin"), "*");
}

/// Issue 19's end-to-end leak: a key created through the demo's API, pushed to a public
/// repository, reported by GitHub's scanner to `POST /api/v1/secret-scanning` with a report
/// signed by a key of the demo's keys file, and refused from then on.
#[cfg(feature = "secret-scanning")]
#[tokio::test]
async fn a_key_reported_leaked_to_the_demo_s_secret_scanning_endpoint_is_refused() {
    use base64::Engine;
    use p256::ecdsa::{signature::Signer, DerSignature, SigningKey};
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    // GitHub's key pair, and the keys file that names its public key.
    let mut secret = [0; 32];
    getrandom::fill(&mut secret).unwrap();
    let github = SigningKey::from_slice(&secret).unwrap();
    let pem = (github.verifying_key().to_public_key_pem(LineEnding::LF)).unwrap();
    let file = std::env::temp_dir().join(format!("keys-{}.json", uuid::Uuid::new_v4().simple()));
    let list = serde_json::json!({"public_keys": [{"key_identifier": "demo-key-1", "key": pem, "is_current": true}]});
    std::fs::write(&file, list.to_string()).unwrap();
    let public_keys = example::read_public_keys(&file).unwrap();
    std::fs::remove_file(&file).unwrap();

    let store = MemoryKeyStore::new();
    let keys = KeyManager::new(store.clone());
    let account = common::suite::account();
    let (live, _) = example::demo_keys(&keys, &account).await.unwrap();
    let app = example::app(keys.clone(), example::rate_limit(example::tier_limits(60)));
    let app = example::secret_scanning(app, keys, public_keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let printed: &common::Headers<'_> = &[("x-api-key", live.key.expose_secret().as_bytes())];
    let created = common::http(
        address,
        Method::POST,
        "/api/v1/keys",
        printed,
        r#"{"name": "ci"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let leaked = created.json()["key"].as_str().unwrap().to_owned();
    let with_leaked: &common::Headers<'_> = &[("x-api-key", leaked.as_bytes())];
    let before = common::http(address, Method::GET, "/api/v1/iocs", with_leaked, "").await;
    assert_eq!(before.status, StatusCode::OK);

    let report = serde_json::json!([{"token": leaked, "type": "tower_api_key", "url": "https://github.com/octo/demo/blob/main/.env", "source": "content"}]).to_string();
    let signature: DerSignature = github.sign(report.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(signature);
    let signed: &common::Headers<'_> = &[
        ("github-public-key-identifier", b"demo-key-1"),
        ("github-public-key-signature", signature.as_bytes()),
    ];
    let answer = common::http(
        address,
        Method::POST,
        "/api/v1/secret-scanning",
        signed,
        &report,
    )
    .await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()[0]["label"], "true_positive");
    let after = common::http(address, Method::GET, "/api/v1/iocs", with_leaked, "").await;
    assert_envelope(&after, StatusCode::UNAUTHORIZED, "expired_api_key");
    let still = common::http(address, Method::GET, "/api/v1/iocs", printed, "").await;
    assert_eq!(still.status, StatusCode::OK, "unreported keys still work");
    let unsigned = common::http(
        address,
        Method::POST,
        "/api/v1/secret-scanning",
        &[],
        &report,
    )
    .await;
    assert_envelope(&unsigned, StatusCode::UNAUTHORIZED, "invalid_signature");
}
