//! GitHub's [secret scanning partner program] as an axum [`Router`] (feature
//! `secret-scanning`): GitHub finds this crate's keys in public repositories, gists and npm
//! packages and reports them here; the router checks the report's signature, revokes every key
//! of this deployment that it names, and answers which ones were real.
//!
//! Mount it where you registered its URL with GitHub, **outside**
//! [`ApiKeyLayer`](crate::ApiKeyLayer): the scanner sends no API key, its signature is its
//! credential.
//!
//! ```
//! use axum::{body::Body, http::Request, Router};
//! use base64::Engine;
//! use p256::ecdsa::{signature::Signer, DerSignature, SigningKey};
//! use p256::pkcs8::{EncodePublicKey, LineEnding};
//! use tower::ServiceExt;
//! use tower_api_key::secret_scanning::{self, PublicKeys};
//! use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // GitHub's signing key, as a test would make one; in production, `PublicKeys::github()`.
//! let github = SigningKey::from_slice(&[7; 32])?;
//! let pem = github.verifying_key().to_public_key_pem(LineEnding::LF)?;
//! let public_keys = PublicKeys::fixed([("github-key-1", pem)])?;
//!
//! let keys = KeyManager::new(MemoryKeyStore::new());
//! let app: Router = Router::new()
//!     .nest("/api/v1/secret-scanning", secret_scanning::router(keys.clone(), public_keys))
//!     .merge(Router::new() /* your API */.layer(keys.layer()));
//!
//! // A key pushed to a public repository, and GitHub's report of it.
//! let leaked = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await?;
//! let body = serde_json::json!([{
//!     "token": leaked.key.expose_secret(),
//!     "type": "tower_api_key",
//!     "url": "https://github.com/octo/repo/blob/abc/config.yml",
//!     "source": "content",
//! }])
//! .to_string();
//! let signature: DerSignature = github.sign(body.as_bytes());
//! let report = Request::post("/api/v1/secret-scanning")
//!     .header("github-public-key-identifier", "github-key-1")
//!     .header("github-public-key-signature", base64::engine::general_purpose::STANDARD.encode(signature))
//!     .body(Body::from(body))?;
//!
//! let response = app.oneshot(report).await?;
//! assert_eq!(response.status(), 200);
//! let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
//! let labels: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(labels[0]["label"], "true_positive");
//! assert!(keys.get("acct_42", &leaked.info.id).await?.revoked_at.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! # The exchange
//!
//! GitHub sends `POST` with a JSON array of matches, `[{"token", "type", "url", "source"}]`,
//! signed: `Github-Public-Key-Signature` is the base64 of a DER ECDSA P-256 / SHA-256 signature
//! of the raw body, by the key that `Github-Public-Key-Identifier` names in the
//! [`PublicKeys`]. The router answers `200` with one object per match, in the request's order:
//!
//! ```json
//! [{"token_hash": "<lowercase hex SHA-256 of the token>", "token_type": "<its type>", "label": "true_positive"}]
//! ```
//!
//! `true_positive` for a key of this deployment's store, revoked now or before;
//! `false_positive` for anything else (a well-formed key of another deployment, a random
//! string). The token itself is never echoed nor logged. Each revocation is an
//! [audit event](crate::audit) [`ReportedLeaked`](crate::audit::AuditAction::ReportedLeaked)
//! with the match's `url`, by [`Actor::SecretScanner`].
//!
//! # Refusals
//!
//! Nothing is revoked unless the signature is good. Every refusal is in the crate's envelope:
//!
//! | Status | `code` | When |
//! |--------|--------|------|
//! | 401 | `invalid_signature` | either header missing, an identifier the [`PublicKeys`] do not name, a signature that is not base64 DER, or one that does not match the body |
//! | 400 | `invalid_request` | a signed body that is not a JSON array of `{"token", "type"}` objects |
//! | 413 | `payload_too_large` | a body over [`MAX_BODY_BYTES`] (2 MiB), or more than [`MAX_TOKENS`] (5,000) matches |
//! | 503 | `service_unavailable` | the store failed, or no list of public keys could be fetched yet |
//!
//! On a `503` GitHub sends the report again. Keys revoked before a store failure stay revoked,
//! and sending the report again is harmless: revoking a revoked key changes nothing.
//!
//! # Large reports
//!
//! The keys of a report are revoked 16 at a time ([`KeyManager::revoke_leaked`] each: one
//! lookup by digest, and one write for a key of this store), each token once however often the
//! report names it, so a report of 1,000 matches answers well within GitHub's timeout of 30
//! seconds (`tests/it/secret_scanning.rs` prints the time it takes on the memory store and on
//! PostgreSQL).
//!
//! [secret scanning partner program]: https://docs.github.com/en/code-security/secret-scanning/secret-scanning-partnership-program/secret-scanning-partner-program

mod public_keys;

pub use public_keys::{
    PublicKeyError, PublicKeys, CACHE_TTL, GITHUB_PUBLIC_KEYS_URL, MIN_FETCH_INTERVAL,
};

use std::collections::HashSet;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use futures_util::{stream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use p256::ecdsa::{signature::Verifier, Signature};
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::key::KeyDigest;
use crate::manage::{KeyManager, ManageError};
use crate::response::{errors_in_envelope, ErrorResponse};
use crate::store::WritableKeyStore;

/// The largest report body read: 2 MiB (a match is about 250 bytes, so some 8,000 matches).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The most matches in one report.
pub const MAX_TOKENS: usize = 5_000;

/// How many keys of one report are revoked at a time.
const CONCURRENT_REVOCATIONS: usize = 16;

const KEY_IDENTIFIER: &str = "github-public-key-identifier";
const SIGNATURE: &str = "github-public-key-signature";

/// The secret scanning endpoint: `POST /` takes GitHub's reports, checks their signature
/// against `public_keys`, and revokes the reported keys of `keys`'s store. See
/// [the module](self). Mount it outside [`ApiKeyLayer`](crate::ApiKeyLayer).
pub fn router<S: WritableKeyStore + Clone>(keys: KeyManager<S>, public_keys: PublicKeys) -> Router {
    let scanner = Scanner {
        keys: keys.acting_as(Actor::SecretScanner),
        public_keys,
    };
    Router::new()
        .route("/", post(report::<S>))
        .fallback(|| async { ScanError::NotFound })
        .method_not_allowed_fallback(|| async { ScanError::MethodNotAllowed })
        .with_state(scanner)
        .layer(middleware::from_fn(errors_in_envelope))
}

#[derive(Clone)]
struct Scanner<S> {
    keys: KeyManager<S>,
    public_keys: PublicKeys,
}

/// One match of a report, as GitHub sends it.
#[derive(Deserialize)]
struct Match {
    token: String,
    #[serde(rename = "type")]
    token_type: String,
    #[serde(default)]
    url: Option<String>,
}

/// The answer about one match.
#[derive(Serialize)]
struct Label {
    token_hash: String,
    token_type: String,
    label: &'static str,
}

/// `POST /`: checks the signature, then revokes the report's keys.
async fn report<S: WritableKeyStore + Clone>(
    State(scanner): State<Scanner<S>>,
    request: Request,
) -> Result<Json<Vec<Label>>, ScanError> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return Err(ScanError::TooLarge),
        Err(_) => return Err(ScanError::Unreadable),
    };
    verify(&scanner.public_keys, &parts.headers, &body).await?;
    let matches: Vec<Match> = serde_json::from_slice(&body).map_err(|_| ScanError::NotAReport)?;
    if matches.len() > MAX_TOKENS {
        return Err(ScanError::TooManyTokens);
    }
    let keys_found = revoke_each_once(&scanner.keys, &matches).await?;
    let labels: Vec<Label> = (matches.iter())
        .map(|found_match| Label {
            label: if keys_found.contains(&found_match.token) {
                "true_positive"
            } else {
                "false_positive"
            },
            // The digest a store keeps of a key, in hex: SHA-256 of the token.
            token_hash: KeyDigest::of(&found_match.token).to_hex(),
            token_type: found_match.token_type.clone(),
        })
        .collect();
    let true_positives = labels
        .iter()
        .filter(|label| label.label == "true_positive")
        .count();
    tracing::info!(
        matches = labels.len(),
        true_positives,
        "a secret scanning report was handled"
    );
    Ok(Json(labels))
}

/// Revokes the keys of `matches`, [`CONCURRENT_REVOCATIONS`] at a time, each token once (a
/// report may name one twice, and one revocation makes one audit event), with the `url` of its
/// first match. The tokens that are keys of the store.
async fn revoke_each_once<S: WritableKeyStore>(
    keys: &KeyManager<S>,
    matches: &[Match],
) -> Result<HashSet<String>, ScanError> {
    let mut seen = HashSet::new();
    let unique: Vec<(String, Option<String>)> = (matches.iter())
        .filter(|found| seen.insert(found.token.as_str()))
        .map(|found| {
            let url = found.url.clone().filter(|url| !url.is_empty());
            (found.token.clone(), url)
        })
        .collect();
    stream::iter(unique)
        .map(|(token, url)| async move {
            let revoked = keys.revoke_leaked(&token, url).await?;
            Ok(revoked.is_some().then_some(token))
        })
        .buffer_unordered(CONCURRENT_REVOCATIONS)
        .try_filter_map(|key| async move { Ok(key) })
        .try_collect()
        .await
        .map_err(ScanError::Store)
}

/// Checks that `body` is signed by the public key that the headers name.
async fn verify(
    public_keys: &PublicKeys,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ScanError> {
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(identifier), Some(signature)) = (header(KEY_IDENTIFIER), header(SIGNATURE)) else {
        return Err(ScanError::Unsigned);
    };
    let signature = (base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .ok())
    .and_then(|der| Signature::from_der(&der).ok())
    .ok_or(ScanError::BadSignature)?;
    let key = (public_keys.key(identifier.trim()).await)
        .map_err(|_| ScanError::KeysUnavailable)?
        .ok_or(ScanError::UnknownKey)?;
    key.verify(body, &signature)
        .map_err(|_| ScanError::BadSignature)
}

/// Why a report was refused.
#[derive(Debug)]
enum ScanError {
    Unsigned,
    UnknownKey,
    BadSignature,
    KeysUnavailable,
    TooLarge,
    TooManyTokens,
    Unreadable,
    NotAReport,
    Store(ManageError),
    NotFound,
    MethodNotAllowed,
}

impl IntoResponse for ScanError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            Self::Unsigned => (
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "A report must carry the headers Github-Public-Key-Identifier and \
                 Github-Public-Key-Signature.",
            ),
            Self::UnknownKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "No known public key has the identifier in Github-Public-Key-Identifier.",
            ),
            Self::BadSignature => (
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "Github-Public-Key-Signature is not a base64 DER ECDSA P-256 signature of \
                 this body by the key named in Github-Public-Key-Identifier.",
            ),
            Self::KeysUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "The public keys that check reports could not be fetched. Retry shortly.",
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The report's body is over 2 MiB. Send it in smaller reports.",
            ),
            Self::TooManyTokens => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "A report may hold 5,000 matches at most. Send them in smaller reports.",
            ),
            Self::Unreadable => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The report's body could not be read.",
            ),
            Self::NotAReport => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The body must be a JSON array of objects with a string \"token\" and a string \
                 \"type\", and optionally \"url\" and \"source\".",
            ),
            Self::Store(error) => {
                tracing::error!(
                    error = error as &dyn std::error::Error,
                    "a secret scanning report could not be handled: the key store failed"
                );
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "The reported keys could not all be revoked right now. Send the report \
                     again: keys already revoked stay revoked.",
                )
            }
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "There is no such endpoint. Send reports with POST to the endpoint's path.",
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Send reports with POST.",
            ),
        };
        if status == StatusCode::UNAUTHORIZED {
            tracing::warn!(code, reason = ?self, "a secret scanning report was refused");
        }
        IntoResponse::into_response(ErrorResponse::new(status, code, message))
    }
}
