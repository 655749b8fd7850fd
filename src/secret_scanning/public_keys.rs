//! The public keys that sign GitHub's reports: a fixed list, or GitHub's published list fetched
//! and cached.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::clock::{Clock, SystemClock};

/// Where GitHub publishes the keys that sign its secret scanning reports.
pub const GITHUB_PUBLIC_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

/// How long a fetched list is used before it is fetched again: an hour.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);

/// The least time between two fetches of the list, whatever asks for them (an expired list, a
/// report signed by a key the list does not name, a failed fetch): a minute.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(60);

/// How long a fetch of the list may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest list accepted from the server (GitHub's is about 1 KB).
const MAX_LIST_BYTES: usize = 64 * 1024;

/// The public keys that reports may be signed with, each under its `key_identifier`: a list the
/// application fixes ([`fixed`](Self::fixed), [`from_json`](Self::from_json)), or GitHub's
/// published list ([`github`](Self::github)), fetched over HTTPS when first needed.
///
/// A fetched list is used for [`CACHE_TTL`] (an hour), then fetched again; when that fetch
/// fails, the last good list goes on being used, and the next fetch is tried a minute later. A
/// report signed by a key that the list does not name makes it fetched again at once (GitHub
/// rotates its keys), at most once per [`MIN_FETCH_INTERVAL`], so that unsigned garbage cannot
/// make the service hammer GitHub: at worst 60 fetches an hour, the limit of GitHub's API for
/// requests without a token from one address, and a fetch refused for that keeps the last good
/// list. Until a first fetch succeeds, reports are answered `503`, which GitHub retries. Clones
/// share the list.
///
/// ```
/// use tower_api_key::secret_scanning::PublicKeys;
///
/// let github = PublicKeys::github();
/// let fixed = PublicKeys::from_json(br#"{"public_keys": [{
///     "key_identifier": "4fe6b016179b74078ade7581abf4e84fb398c6fae4fb973972235b84fcd70ca3",
///     "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEoc88gnvv4P/Fh/ETPFkrM0qG+vqa\nNLPgQBcn/DEOy/uiNH5qKtY6Py+e2Eqf08jSHL3GihQ92tk8FWIshtP+qg==\n-----END PUBLIC KEY-----\n",
///     "is_current": true
/// }]}"#).unwrap();
/// # let _ = (github, fixed);
/// ```
#[derive(Clone)]
pub struct PublicKeys {
    source: Arc<Source>,
}

enum Source {
    Fixed(KeyList),
    Fetched(Fetcher),
}

impl PublicKeys {
    /// The keys `(key_identifier, PEM)`, each PEM a `-----BEGIN PUBLIC KEY-----` block (a
    /// SubjectPublicKeyInfo) of an ECDSA P-256 key, as `openssl ec -pubout` writes it.
    pub fn fixed<I, K, P>(keys: I) -> Result<Self, PublicKeyError>
    where
        I: IntoIterator<Item = (K, P)>,
        K: Into<String>,
        P: AsRef<str>,
    {
        let mut list = HashMap::new();
        for (identifier, pem) in keys {
            let identifier = identifier.into();
            let key = VerifyingKey::from_public_key_pem(pem.as_ref())
                .map_err(|_| PublicKeyError::InvalidKey(identifier.clone()))?;
            list.insert(identifier, key);
        }
        Self::from_list(KeyList(list))
    }

    /// The keys of a list in GitHub's format, as
    /// [`GITHUB_PUBLIC_KEYS_URL`] serves it:
    /// `{"public_keys": [{"key_identifier": "...", "key": "<PEM>", "is_current": true}]}`.
    pub fn from_json(json: &[u8]) -> Result<Self, PublicKeyError> {
        Self::from_list(KeyList::parse(json, true)?)
    }

    fn from_list(list: KeyList) -> Result<Self, PublicKeyError> {
        if list.0.is_empty() {
            return Err(PublicKeyError::NoKeys);
        }
        Ok(Self {
            source: Arc::new(Source::Fixed(list)),
        })
    }

    /// GitHub's published list, fetched from [`GITHUB_PUBLIC_KEYS_URL`] and cached.
    pub fn github() -> Self {
        Self::fetched(GITHUB_PUBLIC_KEYS_URL)
    }

    /// A list in GitHub's format fetched from `url` (`https://`, or `http://` for a server on
    /// this machine in tests) and cached as [`github`](Self::github)'s is.
    pub fn fetched(url: impl Into<String>) -> Self {
        Self::fetched_with_clock(url, SystemClock)
    }

    /// As [`fetched`](Self::fetched), reading the time (when the list expires, when it may be
    /// fetched again) from `clock`, so that tests can move it.
    pub fn fetched_with_clock(url: impl Into<String>, clock: impl Clock) -> Self {
        let fetcher = Fetcher {
            url: url.into(),
            clock: Arc::new(clock),
            state: Mutex::new(FetchState::default()),
        };
        Self {
            source: Arc::new(Source::Fetched(fetcher)),
        }
    }

    /// The key named `identifier`, fetching the list if it is due. `Err` only when no list
    /// could ever be had.
    pub(crate) async fn key(&self, identifier: &str) -> Result<Option<VerifyingKey>, Unavailable> {
        match &*self.source {
            Source::Fixed(list) => Ok(list.0.get(identifier).copied()),
            Source::Fetched(fetcher) => fetcher.key(identifier).await,
        }
    }
}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.source {
            Source::Fixed(list) => f.debug_tuple("PublicKeys::Fixed").field(list).finish(),
            Source::Fetched(fetcher) => f
                .debug_tuple("PublicKeys::Fetched")
                .field(&fetcher.url)
                .finish(),
        }
    }
}

/// Why a list of public keys was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKeyError {
    /// The text is not a JSON object `{"public_keys": [{"key_identifier", "key"}, ...]}`.
    NotTheFormat,
    /// The key with this identifier is not a PEM public key of ECDSA P-256.
    InvalidKey(String),
    /// The list names no key.
    NoKeys,
}

impl fmt::Display for PublicKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTheFormat => f.write_str(
                "the list is not GitHub's format, {\"public_keys\": [{\"key_identifier\", \"key\"}]}",
            ),
            Self::InvalidKey(identifier) => write!(
                f,
                "the key {identifier:?} is not a PEM public key (BEGIN PUBLIC KEY) of ECDSA P-256"
            ),
            Self::NoKeys => f.write_str("the list names no key"),
        }
    }
}

impl std::error::Error for PublicKeyError {}

/// The keys by identifier.
struct KeyList(HashMap<String, VerifyingKey>);

#[derive(Deserialize)]
struct KeyListJson {
    public_keys: Vec<KeyJson>,
}

#[derive(Deserialize)]
struct KeyJson {
    key_identifier: String,
    key: String,
}

impl KeyList {
    /// The list in GitHub's JSON. `strict`: a key that is not P-256 is an error; otherwise it
    /// is left out (GitHub might one day publish keys of another kind beside them).
    fn parse(json: &[u8], strict: bool) -> Result<Self, PublicKeyError> {
        let parsed: KeyListJson =
            serde_json::from_slice(json).map_err(|_| PublicKeyError::NotTheFormat)?;
        let mut list = HashMap::new();
        for entry in parsed.public_keys {
            match VerifyingKey::from_public_key_pem(&entry.key) {
                Ok(key) => {
                    list.insert(entry.key_identifier, key);
                }
                Err(_) if strict => return Err(PublicKeyError::InvalidKey(entry.key_identifier)),
                Err(_) => tracing::warn!(
                    key_identifier = %entry.key_identifier,
                    "a fetched secret scanning public key is not ECDSA P-256: left out"
                ),
            }
        }
        Ok(Self(list))
    }
}

impl fmt::Debug for KeyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// No list of public keys could be had: the first fetch failed, and no later one succeeded.
#[derive(Debug)]
pub(crate) struct Unavailable;

/// GitHub's list, fetched when due.
struct Fetcher {
    url: String,
    clock: Arc<dyn Clock>,
    /// Held while fetching, so that concurrent reports make one fetch and wait for it.
    state: Mutex<FetchState>,
}

#[derive(Default)]
struct FetchState {
    /// The last good list, and when it was fetched.
    list: Option<(Arc<KeyList>, SystemTime)>,
    /// When the last fetch began, good or not.
    last_attempt: Option<SystemTime>,
    client: Option<reqwest::Client>,
}

impl Fetcher {
    async fn key(&self, identifier: &str) -> Result<Option<VerifyingKey>, Unavailable> {
        let mut state = self.state.lock().await;
        let now = self.clock.now();
        let may_fetch = (state.last_attempt)
            .is_none_or(|last| now.duration_since(last).unwrap_or_default() >= MIN_FETCH_INTERVAL);
        let expired = (state.list.as_ref())
            .is_none_or(|(_, at)| now.duration_since(*at).unwrap_or_default() >= CACHE_TTL);
        let known = |state: &FetchState| {
            (state.list.as_ref()).and_then(|(list, _)| list.0.get(identifier).copied())
        };
        if may_fetch && (expired || known(&state).is_none()) {
            state.last_attempt = Some(now);
            match self.fetch(&mut state.client).await {
                Ok(list) => state.list = Some((Arc::new(list), now)),
                Err(error) if state.list.is_some() => tracing::warn!(
                    url = %self.url,
                    error = %error,
                    "could not fetch the secret scanning public keys: the last good list stays in use"
                ),
                Err(error) => tracing::error!(
                    url = %self.url,
                    error = %error,
                    "could not fetch the secret scanning public keys: reports are refused until a fetch succeeds"
                ),
            }
        }
        match state.list {
            None => Err(Unavailable),
            Some(_) => Ok(known(&state)),
        }
    }

    async fn fetch(&self, client: &mut Option<reqwest::Client>) -> Result<KeyList, String> {
        let client = match client {
            Some(client) => client,
            None => client.insert(http_client()?),
        };
        let mut response = (client.get(&self.url))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = (response.chunk().await)
            .map_err(|error| format!("reading the answer failed: {error}"))?
        {
            if body.len() + chunk.len() > MAX_LIST_BYTES {
                return Err(format!("the answer is over {MAX_LIST_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let list = KeyList::parse(&body, false).map_err(|error| error.to_string())?;
        if list.0.is_empty() {
            return Err(PublicKeyError::NoKeys.to_string());
        }
        Ok(list)
    }
}

/// An HTTPS client: rustls with ring and the system's trusted roots, a User-Agent (GitHub's API
/// refuses requests without one), a timeout.
fn http_client() -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|error| format!("no TLS verifier: {error}"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("no TLS configuration: {error}"))?
        .dangerous() // not dangerous: the platform's verifier checks certificates and names
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("tower-api-key/", env!("CARGO_PKG_VERSION")))
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|error| format!("no HTTP client: {error}"))
}
