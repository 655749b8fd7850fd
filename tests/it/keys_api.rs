//! `keys_api::router`, nested inside `ApiKeyLayer` (or given an `Account`): what the demo does
//! not already show, every error in the envelope with the caller's request id.
#![cfg(feature = "axum")]

use crate::common;

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::Router;
use common::{assert_envelope, Answer};
use http::{Method, Request, StatusCode};
use tower::ServiceExt;
use tower_api_key::access::KeyMode;
use tower_api_key::clock::ManualClock;
use tower_api_key::keys_api::{self, Account};
use tower_api_key::manage::CreatedKey;
use tower_api_key::{ApiKey, KeyManager, MemoryKeyStore, NewKey, Tier};

const ACCOUNT: &str = "acct_1";

struct Api {
    app: Router,
    keys: KeyManager<MemoryKeyStore>,
    clock: ManualClock,
}

impl Api {
    fn new() -> Self {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let keys = KeyManager::new(MemoryKeyStore::new()).clock(clock.clone());
        let app = Router::new()
            .nest("/keys", keys_api::router(keys.clone()))
            .layer(keys.layer());
        Self { app, keys, clock }
    }

    async fn key(&self, customize: impl FnOnce(NewKey) -> NewKey) -> CreatedKey {
        let new = customize(NewKey::new(ACCOUNT, Tier::PRO, "admin"));
        self.keys.create(new).await.unwrap()
    }

    async fn call(&self, method: Method, path: &str, key: &ApiKey, body: &str) -> Answer {
        self.call_with(method, path, key.expose_secret(), body)
            .await
    }

    async fn call_with(&self, method: Method, path: &str, key: &str, body: &str) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", key)
            .header("x-request-id", "req_from_the_caller")
            .body(Body::from(body.to_owned()))
            .unwrap();
        Answer::read(self.app.clone().oneshot(request).await.unwrap()).await
    }

    async fn verdict(&self, key: &ApiKey) -> String {
        let answer = self.call(Method::GET, "/keys", key, "").await;
        match answer.status {
            StatusCode::OK => "ok".to_owned(),
            _ => answer.error_code(),
        }
    }
}

/// The envelope, with the id the caller sent.
fn assert_refused(answer: &Answer, status: StatusCode, code: &str) {
    assert_envelope(answer, status, code);
    assert_eq!(answer.json()["error"]["request_id"], "req_from_the_caller");
}

#[tokio::test]
async fn rotation_answers_a_new_key_and_the_old_one_works_until_its_grace_ends() {
    let api = Api::new();
    let admin = api.key(|new| new).await;
    let old = api.key(|new| new.scopes(["iocs:read"])).await;
    let path = format!("/keys/{}/rotate", old.info.id);
    let rotated = api
        .call(Method::POST, &path, &admin.key, r#"{"grace_period": 60}"#)
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let body = rotated.json();
    let new_key = body["key"].as_str().unwrap();
    let with_new = api.call_with(Method::GET, "/keys", new_key, "").await;
    assert_refused(&with_new, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(
        body["scopes"],
        serde_json::json!(["iocs:read"]),
        "the policy stays"
    );
    assert_ne!(body["id"], old.info.id.as_str());
    let full_access = api.key(|new| new).await.key;
    assert_eq!(api.verdict(&full_access).await, "ok");
    let listed = api
        .call(Method::GET, "/keys", &full_access, "")
        .await
        .json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 4);
    let get = |id: String| {
        let (api, key) = (&api, full_access.clone());
        async move {
            api.call(Method::GET, &format!("/keys/{id}"), &key, "")
                .await
        }
    };
    let one = get(old.info.id.to_string()).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(
        one.json()["expires_at"],
        "2027-01-15T08:01:00Z",
        "retired in 60 s"
    );
    // The old key still authenticates (and lacks keys:read) until the grace period ends.
    assert_eq!(api.verdict(&old.key).await, "insufficient_scope");
    api.clock.advance(Duration::from_secs(60));
    assert_eq!(api.verdict(&old.key).await, "expired_api_key");
    let one = get(body["id"].as_str().unwrap().to_owned()).await;
    assert_eq!(
        one.json()["expires_at"],
        serde_json::Value::Null,
        "the new key lives on"
    );
    let refused = api
        .call(Method::POST, &path, &admin.key, r#"{"grace_period": 0}"#)
        .await;
    assert_refused(&refused, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn permanent_deletion_forgets_the_key_and_a_bad_query_is_400_in_the_envelope() {
    let api = Api::new();
    let admin = api.key(|new| new).await;
    let target = api.key(|new| new).await;
    let path = format!("/keys/{}?permanent=true", target.info.id);
    assert_eq!(
        api.call(Method::DELETE, &path, &admin.key, "").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.verdict(&target.key).await, "invalid_api_key");
    let gone = api
        .call(
            Method::GET,
            &format!("/keys/{}", target.info.id),
            &admin.key,
            "",
        )
        .await;
    assert_refused(&gone, StatusCode::NOT_FOUND, "not_found");

    let other = api.key(|new| new).await;
    let path = format!("/keys/{}?permanent=maybe", other.info.id);
    let bad = api.call(Method::DELETE, &path, &admin.key, "").await;
    assert_refused(&bad, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        api.verdict(&other.key).await,
        "ok",
        "a bad request changes nothing"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_answered_in_the_envelope() {
    let api = Api::new();
    let admin = api.key(|new| new).await;
    let unknown = api.call(Method::GET, "/keys/a/b/c", &admin.key, "").await;
    assert_refused(&unknown, StatusCode::NOT_FOUND, "not_found");
    let wrong = api.call(Method::PUT, "/keys", &admin.key, "").await;
    assert_refused(&wrong, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let body = api
        .call(Method::POST, "/keys", &admin.key, "not json")
        .await;
    assert_refused(&body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn a_key_without_keys_write_cannot_change_keys_and_hears_the_scope_it_lacks() {
    let api = Api::new();
    let reader = api.key(|new| new.scopes(["keys:read"])).await;
    let target = api.key(|new| new.scopes(["keys:read"])).await;
    let path = format!("/keys/{}/rotate", target.info.id);
    let refused = api.call(Method::POST, &path, &reader.key, "").await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(
        refused.header("www-authenticate"),
        r#"Bearer error="insufficient_scope", scope="keys:write""#
    );
    assert_eq!(
        api.call(Method::GET, "/keys", &reader.key, "").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_test_key_cannot_rotate_or_delete_a_live_key() {
    let api = Api::new();
    let test_key = api.key(|new| new.mode(KeyMode::Test)).await;
    let live = api.key(|new| new).await;
    let rotate = format!("/keys/{}/rotate", live.info.id);
    let refused = api.call(Method::POST, &rotate, &test_key.key, "").await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "live_key_required");
    let delete = format!("/keys/{}?permanent=true", live.info.id);
    let refused = api.call(Method::DELETE, &delete, &test_key.key, "").await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "live_key_required");
    assert_eq!(api.verdict(&live.key).await, "ok");
}

#[tokio::test]
async fn an_account_from_a_session_manages_its_keys_without_a_key() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let owner = Account::new("acct_session").tier(Tier::PRO);
    let app = Router::new()
        .nest("/settings/api-keys", keys_api::router(keys.clone()))
        .layer(axum::Extension(owner));
    let call = |method: Method, path: &str, body: &str| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let app = app.clone();
        async move { Answer::read(app.oneshot(request).await.unwrap()).await }
    };
    let created = call(Method::POST, "/settings/api-keys", r#"{"name": "laptop"}"#).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let listed = keys.list("acct_session").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "laptop");
    assert_eq!(
        listed[0].expires_at, None,
        "an owner's keys do not inherit an expiry"
    );
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/settings/api-keys/{id}");
    assert_eq!(
        call(Method::DELETE, &path, "").await.status,
        StatusCode::NO_CONTENT
    );
    assert!(keys.list("acct_session").await.unwrap()[0]
        .revoked_at
        .is_some());
}

#[tokio::test]
async fn without_a_key_or_an_account_the_router_answers_500() {
    let keys = KeyManager::new(MemoryKeyStore::new());
    let app = Router::new().nest("/keys", keys_api::router(keys));
    let request = Request::get("/keys").body(Body::empty()).unwrap();
    let answer = Answer::read(app.oneshot(request).await.unwrap()).await;
    assert_envelope(&answer, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
}

#[tokio::test]
async fn a_store_failure_is_503_and_names_no_server() {
    let keys = KeyManager::new(common::faulty::ListingsAndSpendsFail::default());
    let admin = keys
        .create(NewKey::new(ACCOUNT, Tier::PRO, "admin"))
        .await
        .unwrap();
    let app = Router::new()
        .nest("/keys", keys_api::router(keys.clone()))
        .layer(keys.layer());
    let request = Request::get("/keys")
        .header("x-api-key", admin.key.expose_secret())
        .body(Body::empty())
        .unwrap();
    let answer = Answer::read(app.oneshot(request).await.unwrap()).await;
    assert_envelope(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    );
    assert!(!String::from_utf8_lossy(&answer.body).contains("5432"));
}

#[tokio::test]
async fn a_disabled_key_is_refused_until_enabled_and_the_audit_names_the_calling_key() {
    use std::sync::{Arc, Mutex};
    use tower_api_key::audit::{Actor, AuditAction, AuditEvent};

    let events = Arc::new(Mutex::new(Vec::<AuditEvent>::new()));
    let sink = Arc::clone(&events);
    let mut api = Api::new();
    api.keys = api
        .keys
        .clone()
        .audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()));
    api.app = Router::new()
        .nest("/keys", keys_api::router(api.keys.clone()))
        .layer(api.keys.layer());
    let admin = api.key(|new| new).await;
    let target = api.key(|new| new).await;
    let disable = format!("/keys/{}/disable", target.info.id);
    let enable = format!("/keys/{}/enable", target.info.id);

    let disabled = api.call(Method::POST, &disable, &admin.key, "").await;
    assert_eq!(disabled.status, StatusCode::OK);
    assert_eq!(disabled.json()["disabled_at"], "2027-01-15T08:00:00Z");
    assert_eq!(disabled.json()["revoked_at"], serde_json::Value::Null);
    assert_eq!(api.verdict(&target.key).await, "expired_api_key");
    let listed = api.call(Method::GET, "/keys", &admin.key, "").await.json();
    let rows = listed["data"].as_array().unwrap();
    let row = (rows.iter())
        .find(|row| row["id"] == target.info.id.as_str())
        .unwrap();
    assert_eq!(row["disabled_at"], "2027-01-15T08:00:00Z");

    // A disabled key manages nothing, not even its own enabling.
    let by_itself = api.call(Method::POST, &enable, &target.key, "").await;
    assert_refused(&by_itself, StatusCode::UNAUTHORIZED, "expired_api_key");
    // A test key cannot switch a live key; a reader cannot switch anything.
    let test_key = api.key(|new| new.mode(KeyMode::Test)).await;
    let refused = api.call(Method::POST, &enable, &test_key.key, "").await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "live_key_required");
    let reader = api.key(|new| new.scopes(["keys:read"])).await;
    let refused = api.call(Method::POST, &enable, &reader.key, "").await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "insufficient_scope");
    let unknown = api
        .call(Method::POST, "/keys/key_nope/disable", &admin.key, "")
        .await;
    assert_refused(&unknown, StatusCode::NOT_FOUND, "not_found");

    let enabled = api.call(Method::POST, &enable, &admin.key, "").await;
    assert_eq!(enabled.status, StatusCode::OK);
    assert_eq!(enabled.json()["disabled_at"], serde_json::Value::Null);
    assert_eq!(api.verdict(&target.key).await, "ok");

    let by_admin = Actor::Key(admin.info.id.clone());
    let changes: Vec<(AuditAction, Actor)> = (events.lock().unwrap().iter())
        .filter(|event| event.key_id == target.info.id)
        .map(|event| (event.action.clone(), event.actor.clone()))
        .collect();
    assert_eq!(
        changes,
        [
            (AuditAction::Created, Actor::Application),
            (AuditAction::Disabled, by_admin.clone()),
            (AuditAction::Enabled, by_admin),
        ]
    );
}
