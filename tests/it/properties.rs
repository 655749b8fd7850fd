//! Properties of the credential parser and the key format, checked on generated inputs.
//!
//! Case counts are kept small enough that the file runs in a few seconds in a debug build; the
//! fuzz targets in `fuzz/` explore the same ground for as long as one likes.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::{echo_identity, Answer, Keys};
use http::header::HeaderValue;
use http::{Request, StatusCode};
use http_body_util::Full;
use proptest::prelude::*;
use proptest::sample::Index;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    key::KeyFormat, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, KeyStore, LookupId, MemoryKeyStore,
    StoreError, Tier,
};

/// A store that counts every question the layer asks it, through `find` and `find_now` alike.
#[derive(Clone, Default)]
struct LookupCounter {
    inner: MemoryKeyStore,
    lookups: Arc<AtomicUsize>,
}

impl LookupCounter {
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KeyStore for LookupCounter {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find(lookup_id).await
    }

    fn find_now(&self, lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find_now(lookup_id)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Sends a request with `headers` (and `query`, if any) through `layer`.
fn send(
    runtime: &tokio::runtime::Runtime,
    layer: &ApiKeyLayer,
    query: &str,
    headers: &[(&str, HeaderValue)],
) -> Answer {
    let mut request = Request::builder().uri(format!("/api/v1/iocs?{query}"));
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    let request = request.body(Full::<Bytes>::default()).unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(echo_identity);
    runtime.block_on(async { Answer::read(service.oneshot(request).await.unwrap()).await })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Bytes `HeaderValue::from_bytes` accepts: tab, visible ASCII and space, and 0x80 to 0xFF.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff]
}

/// A header value: sometimes a scheme, sometimes a real key, sometimes padding or arbitrary
/// bytes around it.
fn header_value(keys: Vec<Vec<u8>>) -> impl Strategy<Value = HeaderValue> {
    let scheme = prop_oneof![
        Just(&b""[..]),
        Just(&b"Bearer "[..]),
        Just(&b"bEaReR\t"[..]),
        Just(&b"Basic "[..]),
    ];
    let key = prop_oneof![Just(Vec::new()), proptest::sample::select(keys)];
    let noise = prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(prop_oneof![Just(b' '), Just(b'\t')], 1..4),
        proptest::collection::vec(header_byte(), 1..48),
    ];
    (scheme, key, noise, any::<bool>()).prop_map(|(scheme, key, noise, noise_first)| {
        let mut value = scheme.to_vec();
        if noise_first {
            value.extend(noise.iter().chain(&key));
        } else {
            value.extend(key.iter().chain(&noise));
        }
        HeaderValue::from_bytes(&value).expect("only bytes HeaderValue accepts")
    })
}

fn header_name() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec![
        "authorization",
        "x-api-key",
        "x-request-id",
        "cookie",
        "proxy-authorization",
    ])
}

fn query() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9_%=&+;.-]{0,40}").unwrap()
}

/// One character change of a key.
#[derive(Clone, Debug)]
enum Change {
    Substitute(Index, u8),
    Delete(Index),
    Insert(Index, u8),
    /// Swaps the first pair of adjacent, different characters at or after the index.
    Swap(Index),
}

fn change() -> impl Strategy<Value = Change> {
    let visible = 0x21u8..=0x7e;
    prop_oneof![
        (any::<Index>(), visible.clone()).prop_map(|(at, with)| Change::Substitute(at, with)),
        any::<Index>().prop_map(Change::Delete),
        (any::<Index>(), visible).prop_map(|(at, with)| Change::Insert(at, with)),
        any::<Index>().prop_map(Change::Swap),
    ]
}

/// `key` changed by `change`, or `None` if the change would leave it as it was.
fn apply(change: &Change, key: &str) -> Option<String> {
    let mut bytes = key.as_bytes().to_vec();
    match *change {
        Change::Substitute(at, with) => {
            let at = at.index(bytes.len());
            if bytes[at] == with {
                return None;
            }
            bytes[at] = with;
        }
        Change::Delete(at) => {
            bytes.remove(at.index(bytes.len()));
        }
        Change::Insert(at, with) => bytes.insert(at.index(bytes.len() + 1), with),
        Change::Swap(at) => {
            let start = at.index(bytes.len() - 1);
            let pair = (start..bytes.len() - 1)
                .chain(0..start)
                .find(|&i| bytes[i] != bytes[i + 1])?;
            bytes.swap(pair, pair + 1);
        }
    }
    Some(String::from_utf8(bytes).expect("visible ASCII"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_credential_headers_never_panic_nor_get_a_5xx(
        headers in proptest::collection::vec((header_name(), header_value(every_key())), 0..12),
        query in query(),
    ) {
        let (keys, runtime) = (fixture(), runtime());
        let layer = ApiKeyLayer::new(keys.store.clone());
        let answer = send(&runtime, &layer, &query, &headers);
        prop_assert!(
            answer.status == StatusCode::OK || answer.status == StatusCode::UNAUTHORIZED,
            "{}", answer.status
        );
        let active = keys.active.expose_secret().as_bytes();
        if answer.status == StatusCode::OK {
            let carried = headers.iter().any(|(name, value)| {
                matches!(*name, "authorization" | "x-api-key") && contains(value.as_bytes(), active)
            });
            prop_assert!(carried, "200 without the active key in a credential header");
        } else {
            prop_assert!(answer.json()["error"]["code"].is_string());
        }
        let echoed_by_request_id = headers
            .iter()
            .any(|(name, value)| *name == "x-request-id" && contains(value.as_bytes(), &active[8..]));
        if !echoed_by_request_id {
            prop_assert!(!contains(&answer.body, &active[8..]), "the body repeats the key");
        }
    }

    #[test]
    fn any_number_of_copies_of_one_key_is_accepted(
        in_authorization in 0usize..60,
        in_x_api_key in 0usize..60,
    ) {
        prop_assume!(in_authorization + in_x_api_key > 0);
        let (keys, runtime) = (fixture(), runtime());
        let key = keys.active.expose_secret();
        let bearer = HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
        let plain = HeaderValue::from_str(key).unwrap();
        let headers: Vec<(&str, HeaderValue)> = std::iter::repeat_n(("authorization", bearer), in_authorization)
            .chain(std::iter::repeat_n(("x-api-key", plain), in_x_api_key))
            .collect();
        let answer = send(&runtime, &ApiKeyLayer::new(keys.store.clone()), "", &headers);
        prop_assert!(answer.reached_inner_service(), "{}", answer.status);
    }

    #[test]
    fn generated_keys_are_well_formed(
        prefix in "[!-~]{1,16}",
        other in "[!-~]{1,16}",
    ) {
        let format = KeyFormat::new(prefix.clone());
        let key = format.generate();
        prop_assert!(key.expose_secret().starts_with(&prefix));
        prop_assert!(format.is_well_formed(key.expose_secret()));
        prop_assert!(format.also_accept(other).is_well_formed(key.expose_secret()));
    }

    #[test]
    fn default_format_generates_well_formed_keys(_case in 0u8..32) {
        let format = KeyFormat::default();
        prop_assert!(format.is_well_formed(format.generate().expose_secret()));
    }

    #[test]
    fn one_character_change_breaks_the_format(prefix in "[!-~]{1,16}", change in change()) {
        let format = KeyFormat::new(prefix);
        let key = format.generate();
        let changed = apply(&change, key.expose_secret());
        prop_assume!(changed.is_some());
        prop_assert!(!format.is_well_formed(&changed.unwrap()), "{change:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn one_character_change_is_refused_without_a_store_lookup(change in change(), bearer in any::<bool>()) {
        let (store, key) = counted_store_with_one_key();
        let changed = apply(&change, key.expose_secret());
        prop_assume!(changed.is_some());
        let changed = changed.unwrap();
        let header = if bearer {
            ("authorization", HeaderValue::from_str(&format!("Bearer {changed}")).unwrap())
        } else {
            ("x-api-key", HeaderValue::from_str(&changed).unwrap())
        };
        let answer = send(&runtime(), &ApiKeyLayer::new(store.clone()), "", &[header]);
        prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        prop_assert_eq!(answer.error_code(), "invalid_api_key");
        prop_assert_eq!(store.lookups(), 0, "{:?}", change);
    }
}

/// The control for the property above: the unchanged key is looked up, once.
#[test]
fn unchanged_key_is_looked_up_once() {
    let (store, key) = counted_store_with_one_key();
    let header = HeaderValue::from_str(key.expose_secret()).unwrap();
    let answer = send(
        &runtime(),
        &ApiKeyLayer::new(store.clone()),
        "",
        &[("x-api-key", header)],
    );
    assert!(answer.reached_inner_service());
    assert_eq!(store.lookups(), 1);
}

fn counted_store_with_one_key() -> (LookupCounter, tower_api_key::ApiKey) {
    let store = LookupCounter::default();
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::new("key_1"), "acct_1", "ci", Tier::FREE);
    store.inner.insert(KeyRecord::new(key.digest(), identity));
    (store, key)
}

/// The keys of one fixture, made once so that generated headers can carry them.
fn fixture() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(Keys::new)
}

fn every_key() -> Vec<Vec<u8>> {
    let keys = fixture();
    [
        &keys.active,
        &keys.revoked,
        &keys.expired,
        &keys.deleted,
        &keys.unknown,
    ]
    .iter()
    .map(|key| key.expose_secret().as_bytes().to_vec())
    .collect()
}

/// Text around a key: anything, then a character that cannot continue a key (or nothing).
fn surroundings() -> impl Strategy<Value = (String, String)> {
    let text = "[ -~\n\u{e9}\u{4e2d}]{0,40}";
    let edge = prop_oneof![
        Just(String::new()),
        "[ :=\"'\n,;/(){}<>-]".prop_map(String::from)
    ];
    (text, edge.clone(), edge, text).prop_map(|(before, open, close, after)| {
        (format!("{before}{open}"), format!("{close}{after}"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every generated key, live or test, is found where it stands in any text, and redacted.
    #[test]
    fn every_generated_key_is_found_and_redacted((before, after) in surroundings(), test in any::<bool>()) {
        let format = KeyFormat::default();
        let mode = if test { tower_api_key::access::KeyMode::Test } else { tower_api_key::access::KeyMode::Live };
        let key = format.generate_for(mode).unwrap();
        // A word character right before the key would make it part of a longer token.
        let before = if before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            format!("{before} ")
        } else {
            before
        };
        let after = if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            format!(" {after}")
        } else {
            after
        };
        let text = format!("{before}{}{after}", key.expose_secret());
        let found: Vec<_> = format.find_keys(&text).collect();
        prop_assert_eq!(found, vec![before.len()..before.len() + key.expose_secret().len()]);
        let pattern = regex::Regex::new(&format.pattern()).unwrap();
        let matched: Vec<_> = pattern.find_iter(&text).map(|found| found.range()).collect();
        prop_assert_eq!(matched, format.find_keys(&text).collect::<Vec<_>>(), "the scanner's pattern agrees");
        let redacted = format.redact(&text);
        prop_assert!(!redacted.contains(key.expose_secret()));
        prop_assert!(redacted.contains("[REDACTED]"));
    }

    /// Random text, and random bodies of the key's exact shape after its prefix, give no key
    /// that passes the checksum.
    #[test]
    fn random_text_gives_no_false_positive(text in "[ -~]{0,200}", body in "[0-9A-Za-z]{38}") {
        let format = KeyFormat::default();
        prop_assert_eq!(format.find_keys(&text).count(), 0);
        let lookalike = format!("token sk_live_{body} end");
        prop_assert_eq!(format.find_keys(&lookalike).count(), 0);
        prop_assert_eq!(format.redact(&lookalike), lookalike.as_str());
    }
}
