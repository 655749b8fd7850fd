//! The secret scanning endpoint (`secret_scanning::router`): reports signed as GitHub signs
//! them, with a P-256 key pair made here; what they revoke, what they answer, what is refused;
//! and GitHub's key list fetched from a server on loopback.
#![cfg(feature = "secret-scanning")]

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use axum::Router;
use base64::Engine;
use common::{assert_envelope, verdict_through, Answer};
use http::{Request, StatusCode};
use p256::ecdsa::{signature::Signer, DerSignature, Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_api_key::audit::{Actor, AuditAction, AuditEvent};
use tower_api_key::clock::ManualClock;
use tower_api_key::key::KeyFormat;
use tower_api_key::manage::{CreatedKey, TierLimits};
use tower_api_key::secret_scanning::{self, PublicKeys, MAX_BODY_BYTES, MAX_TOKENS};
use tower_api_key::store::{CreateError, Quota, WritableKeyStore};
use tower_api_key::{
    KeyId, KeyManager, KeyRecord, KeyStore, LookupId, MemoryKeyStore, NewKey, StoreError, Tier,
};

/// A signing key of GitHub's, as this test makes one, and its identifier.
struct Github {
    identifier: String,
    key: SigningKey,
}

impl Github {
    fn new() -> Self {
        let mut secret = [0; 32];
        getrandom::fill(&mut secret).unwrap();
        Self {
            identifier: hex::encode(&secret[..8]),
            key: SigningKey::from_slice(&secret).unwrap(),
        }
    }

    fn pem(&self) -> String {
        (self.key.verifying_key())
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    /// This key alone, as a fixed list.
    fn public_keys(&self) -> PublicKeys {
        PublicKeys::fixed([(self.identifier.clone(), self.pem())]).unwrap()
    }

    /// The list of `keys` in GitHub's format.
    fn list(keys: &[&Github]) -> String {
        let keys: Vec<Value> = (keys.iter())
            .map(|github| json!({"key_identifier": github.identifier, "key": github.pem(), "is_current": true}))
            .collect();
        json!({ "public_keys": keys }).to_string()
    }

    /// `Github-Public-Key-Signature` of `body`.
    fn sign(&self, body: &str) -> String {
        let signature: DerSignature = self.key.sign(body.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(signature)
    }

    /// A report of `body`, signed.
    fn report(&self, body: &str) -> Request<Body> {
        report(
            body,
            &[
                ("github-public-key-identifier", &self.identifier),
                ("github-public-key-signature", &self.sign(body)),
            ],
        )
    }
}

fn report(body: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::post("/").header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

/// A report's body: each token of `tokens` as a match of type `tower_api_key`.
fn matches(tokens: &[&str]) -> String {
    let matches: Vec<Value> = (tokens.iter().enumerate())
        .map(|(i, token)| {
            json!({
                "token": token,
                "type": "tower_api_key",
                "url": format!("https://github.com/octo/repo/blob/{i}/config.yml"),
                "source": "content",
            })
        })
        .collect();
    Value::Array(matches).to_string()
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    Answer::read(app.clone().oneshot(request).await.unwrap()).await
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The account of every key that [`keys_with`] makes.
const ACCOUNT: &str = "acct_leaky";

/// A manager over `store` whose free tier may hold many keys, and `n` keys of [`ACCOUNT`] in it.
async fn keys_with<S: WritableKeyStore + Clone>(
    store: S,
    n: usize,
) -> (KeyManager<S>, Vec<CreatedKey>) {
    let keys = KeyManager::new(store).tier_limits(TierLimits::none().with(Tier::FREE, 100_000));
    let mut created = Vec::new();
    for i in 0..n {
        let new = NewKey::new(ACCOUNT, Tier::FREE, format!("key {i}"));
        created.push(keys.create(new).await.unwrap());
    }
    (keys, created)
}

async fn verdict(keys: &KeyManager<impl WritableKeyStore + Clone>, key: &CreatedKey) -> String {
    verdict_through(keys.store().clone(), &key.key).await
}

#[tokio::test]
async fn signed_report_revokes_the_reported_keys_and_labels_each_match_in_order() {
    let github = Github::new();
    let (keys, created) = keys_with(MemoryKeyStore::new(), 3).await;
    let other_deployment = KeyFormat::default().generate();
    let tokens = [
        created[0].key.expose_secret(),
        other_deployment.expose_secret(),
        "not a key at all",
        created[1].key.expose_secret(),
    ];
    let body = matches(&tokens);
    let app = secret_scanning::router(keys.clone(), github.public_keys());

    let answer = send(&app, github.report(&body)).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "application/json");
    let expected: Vec<Value> = (tokens.iter())
        .zip(["true_positive", "false_positive", "false_positive", "true_positive"])
        .map(|(token, label)| json!({"token_hash": sha256_hex(token), "token_type": "tower_api_key", "label": label}))
        .collect();
    assert_eq!(answer.json(), Value::Array(expected));
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    for token in tokens {
        assert!(!text.contains(token), "the answer echoes a token");
    }
    assert_eq!(verdict(&keys, &created[0]).await, "expired_api_key");
    assert_eq!(verdict(&keys, &created[1]).await, "expired_api_key");
    assert_eq!(
        verdict(&keys, &created[2]).await,
        "ok",
        "an unreported key still works"
    );
}

#[tokio::test]
async fn a_key_already_revoked_is_a_true_positive_and_stays_revoked() {
    let github = Github::new();
    let (keys, created) = keys_with(MemoryKeyStore::new(), 1).await;
    let revoked = keys.revoke(ACCOUNT, &created[0].info.id).await.unwrap();
    let app = secret_scanning::router(keys.clone(), github.public_keys());

    let answer = send(
        &app,
        github.report(&matches(&[created[0].key.expose_secret()])),
    )
    .await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()[0]["label"], "true_positive");
    let now = keys.get(ACCOUNT, &created[0].info.id).await.unwrap();
    assert_eq!(
        now.revoked_at, revoked.revoked_at,
        "the first revocation's time stays"
    );
}

#[tokio::test]
async fn each_revocation_is_an_audit_event_by_the_scanner_with_the_match_s_url() {
    let github = Github::new();
    let events = Arc::new(Mutex::new(Vec::<AuditEvent>::new()));
    let sink = Arc::clone(&events);
    let (keys, created) = keys_with(MemoryKeyStore::new(), 2).await;
    let keys = keys.audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()));
    let body = json!([
        {"token": created[0].key.expose_secret(), "type": "tower_api_key", "url": "https://github.com/octo/repo/blob/abc/.env", "source": "commit"},
        {"token": created[1].key.expose_secret(), "type": "tower_api_key", "url": "", "source": "npm"},
        {"token": "sk_live_random", "type": "tower_api_key", "url": "https://example.com", "source": "content"},
    ])
    .to_string();
    let app = secret_scanning::router(keys, github.public_keys());

    assert_eq!(
        send(&app, github.report(&body)).await.status,
        StatusCode::OK
    );

    let mut events = events.lock().unwrap().clone();
    events.sort_by_key(|event| event.key_id != created[0].info.id);
    assert_eq!(
        events.len(),
        2,
        "one event per key revoked, none for false positives"
    );
    let url = Some("https://github.com/octo/repo/blob/abc/.env".to_owned());
    assert_eq!(events[0].action, AuditAction::ReportedLeaked { url });
    assert_eq!(
        events[1].action,
        AuditAction::ReportedLeaked { url: None },
        "an empty url is no url"
    );
    for (event, key) in events.iter().zip(&created) {
        assert_eq!(event.actor, Actor::SecretScanner);
        assert_eq!(event.key_id, key.info.id);
        assert_eq!(event.account_id, ACCOUNT);
    }
}

#[tokio::test]
async fn a_key_named_twice_in_a_report_is_revoked_once_and_labelled_twice() {
    let github = Github::new();
    let events = Arc::new(Mutex::new(Vec::<AuditEvent>::new()));
    let sink = Arc::clone(&events);
    let (keys, created) = keys_with(MemoryKeyStore::new(), 1).await;
    let keys = keys.audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()));
    let token = created[0].key.expose_secret();
    let app = secret_scanning::router(keys, github.public_keys());

    let answer = send(&app, github.report(&matches(&[token, "x", token]))).await;

    let labels: Vec<Value> = (answer.json().as_array().unwrap().iter())
        .map(|label| label["label"].clone())
        .collect();
    assert_eq!(labels, ["true_positive", "false_positive", "true_positive"]);
    assert_eq!(events.lock().unwrap().len(), 1, "one revocation, one event");
}

/// Sends the request that `request` makes of a report of an active key, for a router that
/// trusts `github`'s key; asserts the refusal, and that the key still works.
async fn assert_refused_and_nothing_revoked(
    request: impl FnOnce(&Github, &str) -> Request<Body>,
    status: StatusCode,
    code: &str,
) {
    let github = Github::new();
    let (keys, created) = keys_with(MemoryKeyStore::new(), 1).await;
    let app = secret_scanning::router(keys.clone(), github.public_keys());
    let body = matches(&[created[0].key.expose_secret()]);

    let answer = send(&app, request(&github, &body)).await;

    assert_envelope(&answer, status, code);
    assert_eq!(
        verdict(&keys, &created[0]).await,
        "ok",
        "nothing was revoked"
    );
}

#[tokio::test]
async fn unsigned_report_is_refused_and_revokes_nothing() {
    let unsigned = |_: &Github, body: &str| report(body, &[]);
    assert_refused_and_nothing_revoked(unsigned, StatusCode::UNAUTHORIZED, "invalid_signature")
        .await;
}

#[tokio::test]
async fn report_without_its_signature_or_without_its_identifier_is_refused() {
    let no_signature = |github: &Github, body: &str| {
        report(
            body,
            &[("github-public-key-identifier", &github.identifier)],
        )
    };
    assert_refused_and_nothing_revoked(no_signature, StatusCode::UNAUTHORIZED, "invalid_signature")
        .await;
    let no_identifier = |github: &Github, body: &str| {
        report(body, &[("github-public-key-signature", &github.sign(body))])
    };
    assert_refused_and_nothing_revoked(
        no_identifier,
        StatusCode::UNAUTHORIZED,
        "invalid_signature",
    )
    .await;
}

#[tokio::test]
async fn report_signed_by_another_key_under_the_right_identifier_is_refused() {
    let forged = |github: &Github, body: &str| {
        let impostor = Github::new();
        report(
            body,
            &[
                ("github-public-key-identifier", &github.identifier),
                ("github-public-key-signature", &impostor.sign(body)),
            ],
        )
    };
    assert_refused_and_nothing_revoked(forged, StatusCode::UNAUTHORIZED, "invalid_signature").await;
}

#[tokio::test]
async fn report_signed_by_a_key_the_list_does_not_name_is_refused() {
    let unknown = |_: &Github, body: &str| Github::new().report(body);
    assert_refused_and_nothing_revoked(unknown, StatusCode::UNAUTHORIZED, "invalid_signature")
        .await;
}

#[tokio::test]
async fn signature_of_another_body_is_refused() {
    let other_body = |github: &Github, body: &str| {
        let signed = matches(&["sk_live_something_else"]);
        report(
            body,
            &[
                ("github-public-key-identifier", &github.identifier),
                ("github-public-key-signature", &github.sign(&signed)),
            ],
        )
    };
    assert_refused_and_nothing_revoked(other_body, StatusCode::UNAUTHORIZED, "invalid_signature")
        .await;
}

#[tokio::test]
async fn signature_that_is_not_base64_der_is_refused() {
    for signature in ["not base64!", "aGVsbG8=", ""] {
        let garbled = |github: &Github, body: &str| {
            report(
                body,
                &[
                    ("github-public-key-identifier", &github.identifier),
                    ("github-public-key-signature", signature),
                ],
            )
        };
        assert_refused_and_nothing_revoked(garbled, StatusCode::UNAUTHORIZED, "invalid_signature")
            .await;
    }
}

/// ECDSA signatures come in two equally valid forms, `s` and `n - s`; GitHub's signer (Go)
/// makes either, so both must pass.
#[tokio::test]
async fn signature_with_a_high_s_is_accepted() {
    let github = Github::new();
    let (keys, created) = keys_with(MemoryKeyStore::new(), 1).await;
    let app = secret_scanning::router(keys.clone(), github.public_keys());
    let body = matches(&[created[0].key.expose_secret()]);
    let signature: Signature = github.key.sign(body.as_bytes());
    let (r, s) = signature.split_scalars();
    let high = Signature::from_scalars(r, -*s).unwrap();
    let low = high.normalize_s().unwrap_or(high);
    let high = if low == high { signature } else { high };
    assert!(
        high.normalize_s().is_some(),
        "the signature sent has the high s"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(high.to_der());
    let request = report(
        &body,
        &[
            ("github-public-key-identifier", &github.identifier),
            ("github-public-key-signature", &encoded),
        ],
    );

    let answer = send(&app, request).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()[0]["label"], "true_positive");
}

#[tokio::test]
async fn signed_body_that_is_not_a_report_is_400_and_revokes_nothing() {
    for body in [
        r#"{"token":"x"}"#,
        "[{\"type\":\"t\"}]",
        "not json",
        "[1, 2]",
    ] {
        let github = Github::new();
        let app =
            secret_scanning::router(KeyManager::new(MemoryKeyStore::new()), github.public_keys());
        let answer = send(&app, github.report(body)).await;
        assert_envelope(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let github = Github::new();
    let app = secret_scanning::router(KeyManager::new(MemoryKeyStore::new()), github.public_keys());
    let body = format!("[{}]", " ".repeat(MAX_BODY_BYTES));
    let answer = send(&app, github.report(&body)).await;
    assert_envelope(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn report_of_more_matches_than_allowed_is_413_and_revokes_nothing() {
    let github = Github::new();
    let (keys, created) = keys_with(MemoryKeyStore::new(), 1).await;
    let app = secret_scanning::router(keys.clone(), github.public_keys());
    let mut tokens = vec!["x"; MAX_TOKENS];
    tokens.push(created[0].key.expose_secret());

    let answer = send(&app, github.report(&matches(&tokens))).await;

    assert_envelope(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(verdict(&keys, &created[0]).await, "ok");
}

#[tokio::test]
async fn other_methods_and_paths_are_answered_in_the_envelope() {
    let github = Github::new();
    let app = secret_scanning::router(KeyManager::new(MemoryKeyStore::new()), github.public_keys());
    let get = send(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_envelope(&get, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let elsewhere = send(
        &app,
        Request::post("/elsewhere").body(Body::empty()).unwrap(),
    )
    .await;
    assert_envelope(&elsewhere, StatusCode::NOT_FOUND, "not_found");
}

/// A memory store whose revocations fail once `revocations_left` is spent.
#[derive(Clone)]
struct FailingRevocations {
    inner: MemoryKeyStore,
    revocations_left: Arc<AtomicUsize>,
}

#[async_trait]
impl KeyStore for FailingRevocations {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.find(lookup_id).await
    }
}

#[async_trait]
impl WritableKeyStore for FailingRevocations {
    async fn create(&self, record: KeyRecord, quota: Quota) -> Result<(), CreateError> {
        self.inner.create(record, quota).await
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(account_id).await
    }

    async fn get(&self, account_id: &str, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(account_id, key_id).await
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let left = self
            .revocations_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            });
        if left.is_err() {
            return Err(StoreError::new("connection reset by 127.0.0.1:5432"));
        }
        self.inner.revoke(account_id, key_id, at).await
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.delete(account_id, key_id).await
    }
}

#[tokio::test]
async fn store_failure_is_503_and_the_report_sent_again_finishes_the_job() {
    let github = Github::new();
    let store = FailingRevocations {
        inner: MemoryKeyStore::new(),
        revocations_left: Arc::new(AtomicUsize::new(1)),
    };
    let (keys, created) = keys_with(store.clone(), 3).await;
    let app = secret_scanning::router(keys.clone(), github.public_keys());
    let tokens: Vec<&str> = created
        .iter()
        .map(|created| created.key.expose_secret())
        .collect();
    let body = matches(&tokens);

    let failed = send(&app, github.report(&body)).await;
    assert_envelope(
        &failed,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    );
    let mut verdicts = Vec::new();
    for key in &created {
        verdicts.push(verdict(&keys, key).await);
    }
    assert!(
        verdicts.contains(&"expired_api_key".to_owned()),
        "the one revocation made stays: {verdicts:?}"
    );

    store.revocations_left.store(usize::MAX, Ordering::SeqCst);
    let again = send(&app, github.report(&body)).await;
    assert_eq!(again.status, StatusCode::OK);
    for (key, label) in created.iter().zip(again.json().as_array().unwrap()) {
        assert_eq!(label["label"], "true_positive");
        assert_eq!(verdict(&keys, key).await, "expired_api_key");
    }
}

/// A report of 1,000 matches, half of them keys of `keys`'s store: all of those revoked, and
/// the time it took printed.
async fn thousand_match_report_revokes_every_key<S: WritableKeyStore + Clone>(
    store: S,
    name: &str,
) {
    let github = Github::new();
    let (keys, created) = keys_with(store, 500).await;
    let foreign: Vec<_> = (0..500).map(|_| KeyFormat::default().generate()).collect();
    let tokens: Vec<&str> = (created.iter().map(|created| created.key.expose_secret()))
        .zip(foreign.iter().map(|key| key.expose_secret()))
        .flat_map(|(ours, theirs)| [ours, theirs])
        .collect();
    let app = secret_scanning::router(keys.clone(), github.public_keys());
    let request = github.report(&matches(&tokens));

    let started = Instant::now();
    let answer = send(&app, request).await;
    let took = started.elapsed();

    println!("a report of 1,000 matches (500 keys of the store) on {name}: {took:?}");
    assert_eq!(answer.status, StatusCode::OK);
    let labels = answer.json();
    let labels = labels.as_array().unwrap();
    assert_eq!(labels.len(), 1000);
    for (i, label) in labels.iter().enumerate() {
        let expected = if i % 2 == 0 {
            "true_positive"
        } else {
            "false_positive"
        };
        assert_eq!(label["label"], expected, "match {i}");
        assert_eq!(label["token_hash"], sha256_hex(tokens[i]));
    }
    let listed = keys.list(ACCOUNT).await.unwrap();
    assert_eq!(listed.len(), 500);
    assert!(
        listed.iter().all(|info| info.revoked_at.is_some()),
        "every reported key is revoked"
    );
}

#[tokio::test]
async fn thousand_match_report_revokes_every_key_on_the_memory_store() {
    thousand_match_report_revokes_every_key(MemoryKeyStore::new(), "the memory store").await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_match_report_revokes_every_key_on_postgres() {
    use std::str::FromStr;
    use tower_api_key::store::PgKeyStore;

    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
    let options = sqlx::postgres::PgConnectOptions::from_str(&url).unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect_lazy_with(options);
    let table = format!("api_keys_scan_{}", uuid::Uuid::new_v4().simple());
    let store = PgKeyStore::new(pool).table(&table);
    store.migrate().await.unwrap();
    thousand_match_report_revokes_every_key(store, "PostgreSQL").await;
}

/// A server on loopback that serves a key list, or fails, and counts its requests.
#[derive(Clone)]
struct KeyListServer {
    /// The list it serves; `None`: it answers 500.
    list: Arc<Mutex<Option<String>>>,
    requests: Arc<AtomicUsize>,
    user_agents: Arc<Mutex<Vec<String>>>,
    url: String,
}

impl KeyListServer {
    async fn start(list: Option<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/meta/public_keys/secret_scanning",
            listener.local_addr().unwrap()
        );
        let server = Self {
            list: Arc::new(Mutex::new(list)),
            requests: Arc::default(),
            user_agents: Arc::default(),
            url,
        };
        let state = server.clone();
        let app = Router::new().route(
            "/meta/public_keys/secret_scanning",
            axum::routing::get(move |headers: http::HeaderMap| async move {
                state.requests.fetch_add(1, Ordering::SeqCst);
                let agent = headers
                    .get("user-agent")
                    .map(|agent| agent.to_str().unwrap().to_owned());
                state
                    .user_agents
                    .lock()
                    .unwrap()
                    .push(agent.unwrap_or_default());
                match state.list.lock().unwrap().clone() {
                    Some(list) => (StatusCode::OK, list),
                    None => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    fn serve(&self, list: Option<String>) {
        *self.list.lock().unwrap() = list;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A router over a new store whose public keys are fetched from `server` by `clock`, and a
/// report that it accepts when signed by a listed key (a report of no match).
fn fetching_router(server: &KeyListServer, clock: &ManualClock) -> Router {
    let public_keys = PublicKeys::fetched_with_clock(&server.url, clock.clone());
    secret_scanning::router(KeyManager::new(MemoryKeyStore::new()), public_keys)
}

fn start_clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

#[tokio::test]
async fn fetched_list_checks_reports_and_is_fetched_once_an_hour() {
    let github = Github::new();
    let server = KeyListServer::start(Some(Github::list(&[&github]))).await;
    let clock = start_clock();
    let app = fetching_router(&server, &clock);

    assert_eq!(send(&app, github.report("[]")).await.status, StatusCode::OK);
    clock.advance(Duration::from_secs(59 * 60));
    assert_eq!(send(&app, github.report("[]")).await.status, StatusCode::OK);
    assert_eq!(
        server.requests(),
        1,
        "the second report within the hour used the cached list"
    );

    clock.advance(Duration::from_secs(2 * 60));
    assert_eq!(send(&app, github.report("[]")).await.status, StatusCode::OK);
    assert_eq!(
        server.requests(),
        2,
        "the list is fetched again after an hour"
    );
    let agents = server.user_agents.lock().unwrap().clone();
    assert!(
        agents
            .iter()
            .all(|agent| agent.starts_with("tower-api-key/")),
        "{agents:?}"
    );
}

#[tokio::test]
async fn fetched_list_falls_back_to_the_last_good_list_when_the_server_fails() {
    let github = Github::new();
    let server = KeyListServer::start(Some(Github::list(&[&github]))).await;
    let clock = start_clock();
    let app = fetching_router(&server, &clock);
    assert_eq!(send(&app, github.report("[]")).await.status, StatusCode::OK);

    server.serve(None);
    clock.advance(Duration::from_secs(2 * 3600));
    let answer = send(&app, github.report("[]")).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        server.requests(),
        2,
        "the expired list was fetched again, and that failed"
    );
    let forged = Github::new();
    let refused = send(&app, forged.report("[]")).await;
    assert_envelope(&refused, StatusCode::UNAUTHORIZED, "invalid_signature");
}

#[tokio::test]
async fn unknown_identifier_fetches_the_list_again_at_most_once_a_minute() {
    let old = Github::new();
    let new = Github::new();
    let server = KeyListServer::start(Some(Github::list(&[&old]))).await;
    let clock = start_clock();
    let app = fetching_router(&server, &clock);
    assert_eq!(send(&app, old.report("[]")).await.status, StatusCode::OK);

    // GitHub rotates: its list names the new key, and reports are signed with it.
    server.serve(Some(Github::list(&[&old, &new])));
    clock.advance(Duration::from_secs(30));
    let too_soon = send(&app, new.report("[]")).await;
    assert_envelope(&too_soon, StatusCode::UNAUTHORIZED, "invalid_signature");
    assert_eq!(
        server.requests(),
        1,
        "not fetched again within a minute of the last fetch"
    );

    clock.advance(Duration::from_secs(31));
    assert_eq!(send(&app, new.report("[]")).await.status, StatusCode::OK);
    assert_eq!(
        server.requests(),
        2,
        "fetched again for the unknown identifier"
    );

    for _ in 0..5 {
        let garbage = send(&app, Github::new().report("[]")).await;
        assert_envelope(&garbage, StatusCode::UNAUTHORIZED, "invalid_signature");
    }
    assert_eq!(
        server.requests(),
        2,
        "unknown identifiers do not make the list fetched more than once a minute"
    );
}

#[tokio::test]
async fn without_any_list_fetched_reports_are_503_and_revoke_nothing() {
    let github = Github::new();
    let server = KeyListServer::start(None).await;
    let clock = start_clock();
    let (keys, created) = keys_with(MemoryKeyStore::new(), 1).await;
    let public_keys = PublicKeys::fetched_with_clock(&server.url, clock.clone());
    let app = secret_scanning::router(keys.clone(), public_keys);

    let answer = send(
        &app,
        github.report(&matches(&[created[0].key.expose_secret()])),
    )
    .await;

    assert_envelope(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    );
    assert_eq!(verdict(&keys, &created[0]).await, "ok");
    server.serve(Some(Github::list(&[&github])));
    clock.advance(Duration::from_secs(61));
    let answer = send(
        &app,
        github.report(&matches(&[created[0].key.expose_secret()])),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "a later fetch succeeds");
}

#[test]
fn key_lists_in_github_s_format_are_read_and_bad_ones_refused() {
    use tower_api_key::secret_scanning::PublicKeyError;

    let github = Github::new();
    assert!(PublicKeys::from_json(Github::list(&[&github]).as_bytes()).is_ok());
    assert_eq!(
        PublicKeys::from_json(b"[]").unwrap_err(),
        PublicKeyError::NotTheFormat
    );
    assert_eq!(
        PublicKeys::from_json(br#"{"public_keys": []}"#).unwrap_err(),
        PublicKeyError::NoKeys
    );
    let not_a_key = r#"{"public_keys": [{"key_identifier": "k1", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "is_current": true}]}"#;
    assert_eq!(
        PublicKeys::from_json(not_a_key.as_bytes()).unwrap_err(),
        PublicKeyError::InvalidKey("k1".to_owned())
    );
}
