//! API keys: their format, generation and digest.
//!
//! ```
//! use tower_api_key::key::KeyFormat;
//!
//! let format = KeyFormat::default();
//! let key = format.generate(); // `sk_live_...`: show it to its owner once
//! assert!(format.is_well_formed(key.expose_secret()));
//! let digest = key.digest(); // what a store keeps, looked up by `digest.lookup_id()`
//! # let _ = digest;
//! ```
//!
//! A key is a prefix followed by a body of 32 random base62 characters and a
//! 6-character CRC32 checksum of the prefix and those random characters, like GitHub's tokens:
//!
//! ```text
//! sk_live_ 4eC39HqLyjWDarjtT1zdp7dcFg1fy1Pd 6rcyfA
//! prefix   random (32 chars, ~190 bits)     checksum
//! ```
//!
//! The checksum lets the layer reject a typo or a made-up string as `invalid_api_key` before any
//! store lookup. Stores never see a key: they hold its [`KeyDigest`] (SHA-256) and find it by its
//! [`LookupId`], the first half of that digest, which reveals nothing usable about the key.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::fmt;
use std::ops::Range;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::mode::KeyMode;

/// Number of random base62 characters in a generated key's body: about 190 bits, so at least
/// 160 remain secret when a listing shows the last four characters.
pub(crate) const RANDOM_LEN: usize = 32;

/// Number of base62 characters of the checksum that ends a key's body.
pub(crate) const CHECKSUM_LEN: usize = 6;

/// Length of a key's body: the random characters and the checksum.
const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;

/// The fewest characters after a [legacy prefix](KeyFormat::legacy_prefix) that make a legacy
/// key, in a text: about 64 bits as hex, 95 as base62.
const MIN_LEGACY_BODY_LEN: usize = 16;

/// The longest key the layer hashes; longer credentials are rejected unread.
pub const MAX_KEY_LEN: usize = 256;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A plaintext API key, as handed to its owner once at creation.
///
/// It has no `Display` and a redacted `Debug`, so it cannot end up in a log by accident; read it
/// deliberately with [`ApiKey::expose_secret`].
///
/// ```compile_fail
/// let key = tower_api_key::key::KeyFormat::default().generate();
/// println!("{key}"); // no `Display`: does not compile
/// ```
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps an existing key, for example one read from a secrets manager.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The plaintext key. Show it to its owner once; never log or store it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest that stores keep in place of the key.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The SHA-256 digest of an API key: what a [`KeyStore`](crate::KeyStore) holds instead of the key.
///
/// Digests are compared only in constant time ([`KeyDigest::matches`]); `Debug` is redacted.
///
/// ```compile_fail
/// let digest = tower_api_key::key::KeyDigest::of("sk_live_x");
/// let _ = format!("{digest}"); // no `Display`: does not compile
/// ```
///
/// ```compile_fail
/// let digest = tower_api_key::key::KeyDigest::of("sk_live_x");
/// let _ = digest == digest; // no `==`, which would not be constant-time: does not compile
/// ```
#[derive(Clone, Copy)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Hashes a plaintext key.
    pub fn of(key: &str) -> Self {
        Self::of_bytes(key.as_bytes())
    }

    pub(crate) fn of_bytes(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Rebuilds a digest from the 32 bytes a store kept.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes to store.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hexadecimal digits, for stores that keep text.
    ///
    /// A digest does not give the key back, but keep it out of logs all the same.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads a digest written by [`KeyDigest::to_hex`]; `None` unless `text` is 64 hexadecimal
    /// digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// The id a store finds this digest's record by: its first 16 bytes.
    pub fn lookup_id(&self) -> LookupId {
        let mut id = [0; 16];
        id.copy_from_slice(&self.0[..16]);
        LookupId(id)
    }

    /// Whether two digests are equal, compared in constant time.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        // `subtle` compares every word whatever the first difference, and keeps the compiler
        // from turning the comparison into a branch on the data. Words rather than bytes: its
        // optimisation barrier is a call per element.
        self.words().ct_eq(&other.words()).into()
    }

    fn words(&self) -> [u64; 4] {
        std::array::from_fn(|index| {
            let bytes = self.0[index * 8..][..8].try_into().expect("8 of 32 bytes");
            u64::from_ne_bytes(bytes)
        })
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(<redacted>)")
    }
}

/// The index under which a store keeps a key's record: the first 16 bytes of its [`KeyDigest`].
///
/// Knowing it does not help to find the key (SHA-256 is not invertible), so stores may index and
/// compare it in any way they like; the full digest is then compared by the layer in constant
/// time. Like the digest, it has a redacted `Debug` and no `Display`.
///
/// ```compile_fail
/// let lookup_id = tower_api_key::key::KeyDigest::of("sk_live_x").lookup_id();
/// let _ = lookup_id.to_string(); // no `Display`: does not compile
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LookupId([u8; 16]);

// The bytes come from SHA-256, so any eight of them are already a uniform hash: hashing those
// alone lets a map's hasher pass them through (equal ids hash equal, as `Eq` requires).
impl std::hash::Hash for LookupId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

impl LookupId {
    /// Rebuilds a lookup id from the 16 bytes a store kept.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes to index by.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id as 32 lowercase hexadecimal digits, as text stores and change messages carry it.
    /// Not a secret (half of the key's digest), but nothing to show users either.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads an id written by [`LookupId::to_hex`]; `None` unless `text` is 32 hexadecimal
    /// digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Debug for LookupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupId(<redacted>)")
    }
}

/// Which keys the layer accepts, and the shape of the keys it generates.
///
/// The default accepts live keys (`sk_live_`) and test keys (`sk_test_`) whose checksum is
/// right, and generates live keys unless asked for a test key ([`KeyMode`]). Add prefixes with
/// [`KeyFormat::also_accept`]; keys of another shape (issued before this crate, and
/// [imported](crate::manage::ImportedKey)) are accepted with [`KeyFormat::legacy_prefix`].
///
/// ```
/// use tower_api_key::{access::KeyMode, key::KeyFormat};
///
/// let format = KeyFormat::default();
/// let key = format.generate();
/// assert!(key.expose_secret().starts_with("sk_live_"));
/// assert!(format.is_well_formed(key.expose_secret()));
/// assert!(!format.is_well_formed("sk_live_not-a-real-key"));
///
/// let test_key = format.generate_for(KeyMode::Test).unwrap();
/// assert!(test_key.expose_secret().starts_with("sk_test_"));
/// assert!(format.is_well_formed(test_key.expose_secret()));
///
/// // A format of one prefix has no test keys, and accepts none.
/// let live_only = KeyFormat::new("sk_live_");
/// assert!(live_only.generate_for(KeyMode::Test).is_none());
/// assert!(!live_only.is_well_formed(test_key.expose_secret()));
/// ```
#[derive(Clone, Debug)]
pub struct KeyFormat {
    prefixes: Vec<Cow<'static, str>>,
    test_prefix: Option<Cow<'static, str>>,
    /// Prefixes of keys accepted without a checksum, each with the mode it names.
    legacy: Vec<(Cow<'static, str>, KeyMode)>,
}

/// `sk_live_` and `sk_test_` keys.
impl Default for KeyFormat {
    fn default() -> Self {
        Self::new("sk_live_").test_prefix("sk_test_")
    }
}

impl KeyFormat {
    /// Keys that start with `prefix`, which is also the prefix of generated live keys. Such a
    /// format has no test keys until [`KeyFormat::test_prefix`] gives them a prefix.
    ///
    /// # Panics
    ///
    /// If `prefix` holds anything but visible ASCII characters, as it could not be sent in a
    /// header.
    pub fn new(prefix: impl Into<Cow<'static, str>>) -> Self {
        Self {
            prefixes: vec![valid_prefix(prefix.into())],
            test_prefix: None,
            legacy: Vec::new(),
        }
    }

    /// Accepts test keys that start with `prefix` (`sk_test_` in the default format), and
    /// generates test keys with it; replaces any earlier test prefix.
    ///
    /// # Panics
    ///
    /// As [`KeyFormat::new`], and if `prefix` is already a prefix of live keys: a prefix names
    /// one mode.
    pub fn test_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        let prefix = valid_prefix(prefix.into());
        assert_one_mode(self.prefixes.contains(&prefix), &prefix);
        self.assert_not_legacy(&prefix);
        self.test_prefix = Some(prefix);
        self
    }

    /// Also accepts live keys that start with `prefix` (for example `sk_old_`, the prefix of keys
    /// issued earlier). Test keys have their own [test prefix](KeyFormat::test_prefix).
    ///
    /// # Panics
    ///
    /// As [`KeyFormat::new`], and if `prefix` is the test prefix: a prefix names one mode.
    pub fn also_accept(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        let prefix = valid_prefix(prefix.into());
        assert_one_mode(self.test_prefix.as_ref() == Some(&prefix), &prefix);
        self.assert_not_legacy(&prefix);
        self.prefixes.push(prefix);
        self
    }

    /// Also accepts keys of `mode` that start with `prefix` without checking their body: keys
    /// issued before this crate (by another system, of another shape, with no checksum), kept
    /// when a service moves to it ([`KeyManager::import`](crate::KeyManager::import)). Only
    /// their digest is looked up, so a typo in one costs a store lookup.
    ///
    /// The format's own keys stay checked: a key that starts with one of its prefixes (its live
    /// or test prefix, or one it [also accepts](KeyFormat::also_accept)) must pass the checksum,
    /// unless a longer legacy prefix matches it. So `legacy_prefix("", KeyMode::Live)` accepts a
    /// key of any shape, yet still rejects a made-up `sk_live_` key without a lookup. A legacy
    /// key is, like any key, 1 to [`MAX_KEY_LEN`] visible ASCII characters. In a text,
    /// [`pattern`](KeyFormat::pattern), [`find_keys`](KeyFormat::find_keys) and the query-string
    /// refusal take a legacy prefix followed by at least 16 base64url characters for a legacy key;
    /// a key under the empty prefix has no shape to look for.
    ///
    /// ```
    /// use tower_api_key::{access::KeyMode, key::KeyFormat};
    ///
    /// let format = KeyFormat::default().legacy_prefix("ak_", KeyMode::Live);
    /// assert!(format.is_well_formed("ak_3f1c9a7e-0b1d-4c55"));
    /// assert!(format.is_well_formed(format.generate().expose_secret()));
    /// assert!(!format.is_well_formed("sk_live_made-up"));
    /// assert!(!format.is_well_formed("ak_with space"));
    /// ```
    ///
    /// # Panics
    ///
    /// As [`KeyFormat::new`], and if `prefix` is one of the format's checked prefixes (or
    /// already a legacy prefix): a prefix is either checked or not, and names one mode.
    pub fn legacy_prefix(mut self, prefix: impl Into<Cow<'static, str>>, mode: KeyMode) -> Self {
        let prefix = valid_prefix(prefix.into());
        assert!(
            !self.prefixes().any(|checked| checked == prefix),
            "the key prefix {prefix:?} cannot be both checked and legacy"
        );
        self.assert_not_legacy(&prefix);
        self.legacy.push((prefix, mode));
        self
    }

    fn assert_not_legacy(&self, prefix: &str) {
        assert!(
            !self.legacy.iter().any(|(legacy, _)| legacy == prefix),
            "the key prefix {prefix:?} is already a legacy prefix"
        );
    }

    /// The prefix of generated live keys, shown in the `missing_api_key` message.
    pub fn prefix(&self) -> &str {
        &self.prefixes[0]
    }

    /// The prefix of generated keys of `mode`; `None` for test keys of a format without a
    /// [test prefix](KeyFormat::test_prefix).
    pub fn prefix_for(&self, mode: KeyMode) -> Option<&str> {
        match mode {
            KeyMode::Live => Some(self.prefix()),
            KeyMode::Test => self.test_prefix.as_deref(),
        }
    }

    /// Every accepted prefix, the generated live keys' first, the test keys' last.
    pub(crate) fn prefixes(&self) -> impl Iterator<Item = &str> + Clone {
        self.prefixes
            .iter()
            .chain(&self.test_prefix)
            .map(|prefix| &**prefix)
    }

    /// Whether `key` has an accepted prefix, a body of the right length and alphabet, and the
    /// right checksum; or starts with a [legacy prefix](KeyFormat::legacy_prefix) and is 1 to
    /// [`MAX_KEY_LEN`] visible ASCII characters.
    pub fn is_well_formed(&self, key: &str) -> bool {
        self.mode_of(key.as_bytes()).is_some()
    }

    /// The mode that `key`'s prefix says, if the key is [well formed](KeyFormat::is_well_formed):
    /// test for the [test prefix](KeyFormat::test_prefix), live for any other checked prefix,
    /// and for a legacy key the mode of the longest [legacy prefix](KeyFormat::legacy_prefix) it
    /// starts with.
    pub(crate) fn mode_of(&self, key: &[u8]) -> Option<KeyMode> {
        self.prefix_of(key).map(|(_, mode)| mode)
    }

    /// The prefix under which `key` is [well formed](KeyFormat::is_well_formed), and the mode
    /// it names.
    pub(crate) fn prefix_of(&self, key: &[u8]) -> Option<(&str, KeyMode)> {
        if let Some(prefix) = self.prefixes().find(|prefix| has_valid_body(key, prefix)) {
            let is_test = Some(prefix) == self.test_prefix.as_deref();
            let mode = if is_test {
                KeyMode::Test
            } else {
                KeyMode::Live
            };
            return Some((prefix, mode));
        }
        self.legacy_prefix_of(key)
    }

    /// `key`'s prefix and mode as a legacy key: `None` unless the longest prefix it starts
    /// with, of the checked and legacy ones, is a legacy prefix (a key under a checked prefix
    /// must pass the checksum), and it is 1 to [`MAX_KEY_LEN`] visible ASCII characters.
    fn legacy_prefix_of(&self, key: &[u8]) -> Option<(&str, KeyMode)> {
        let (legacy, mode) = self
            .legacy
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix.as_bytes()))
            .max_by_key(|(prefix, _)| prefix.len())?;
        let checked = self
            .prefixes()
            .filter(|prefix| key.starts_with(prefix.as_bytes()))
            .map(str::len)
            .max();
        let bounded =
            (1..=MAX_KEY_LEN).contains(&key.len()) && every_byte(key, u8::is_ascii_graphic);
        (bounded && checked.is_none_or(|checked| checked < legacy.len())).then_some((legacy, *mode))
    }

    /// The regular expression that matches this format's keys, for a secret scanner to
    /// register (GitHub's secret scanning partner program, a pre-commit hook): an accepted
    /// prefix, then the body's 38 base62 characters, between ASCII word boundaries (`(?-u:\b)`
    /// in the syntax of Rust's `regex` and RE2: a letter such as `é` right before a key does not
    /// hide it). For the default format:
    ///
    /// ```
    /// use tower_api_key::key::KeyFormat;
    ///
    /// assert_eq!(
    ///     KeyFormat::default().pattern(),
    ///     r"(?-u:\b)(?:sk_live_|sk_test_)[0-9A-Za-z]{38}(?-u:\b)"
    /// );
    /// // Legacy keys, of any shape: at least 16 characters of base64url after their prefix.
    /// use tower_api_key::access::KeyMode;
    /// assert_eq!(
    ///     KeyFormat::default().legacy_prefix("ak_", KeyMode::Live).pattern(),
    ///     r"(?-u:\b)(?:(?:sk_live_|sk_test_)[0-9A-Za-z]{38}(?-u:\b)|(?:ak_)[0-9A-Za-z_-]{16,})"
    /// );
    /// ```
    ///
    /// A match may still fail the checksum; [`find_keys`](KeyFormat::find_keys) keeps only the
    /// keys that pass it, so a scanner can tell a real key from a lookalike without a lookup.
    pub fn pattern(&self) -> String {
        let checked: Vec<String> = self.prefixes().map(escape_for_regex).collect();
        let checked = format!(
            r"(?:{})[0-9A-Za-z]{{{BODY_LEN}}}(?-u:\b)",
            checked.join("|")
        );
        let legacy: Vec<String> = self.legacy_prefixes().map(escape_for_regex).collect();
        if legacy.is_empty() {
            format!(r"(?-u:\b){checked}")
        } else {
            let legacy = legacy.join("|");
            format!(r"(?-u:\b)(?:{checked}|(?:{legacy})[0-9A-Za-z_-]{{{MIN_LEGACY_BODY_LEN},}})")
        }
    }

    /// The non-empty [legacy prefixes](KeyFormat::legacy_prefix): a legacy key without a
    /// prefix has no shape to look for in a text.
    pub(crate) fn legacy_prefixes(&self) -> impl Iterator<Item = &str> + Clone {
        (self.legacy.iter())
            .map(|(prefix, _)| &**prefix)
            .filter(|prefix| !prefix.is_empty())
    }

    /// The keys of this format in `text`, as byte ranges, in order: each an accepted prefix and
    /// a body of the right length and alphabet whose checksum is right, not touching a letter,
    /// digit or `_` on either side. For finding keys pasted in tickets, logs or commits.
    ///
    /// [Legacy keys](KeyFormat::legacy_prefix) may have any shape, so here they are a legacy
    /// prefix (not empty) followed by at least 16 characters of base64url (letters, digits,
    /// `-`, `_`: the alphabets of hex, base62, base64url and UUIDs), all of them: 16 such
    /// characters is less than any random secret needs, and more than the identifiers and words
    /// that happen to start with a prefix (`ak_x`). A key holding other characters (`.`, `+`,
    /// `/`) is found up to the first of them.
    ///
    /// ```
    /// use tower_api_key::key::KeyFormat;
    ///
    /// let format = KeyFormat::default();
    /// let key = format.generate();
    /// let text = format!("curl -H 'X-API-Key: {}' https://api.example.com", key.expose_secret());
    /// let found: Vec<&str> = format.find_keys(&text).map(|range| &text[range]).collect();
    /// assert_eq!(found, [key.expose_secret()]);
    /// // The right shape with a wrong checksum is no key.
    /// assert_eq!(format.find_keys("sk_live_00000000000000000000000000000000000000").count(), 0);
    /// ```
    pub fn find_keys<'t>(&'t self, text: &'t str) -> impl Iterator<Item = Range<usize>> + 't {
        self.keys_in(text).map(|key| key.range)
    }

    /// Whether `text` holds something shaped like a key of this format, right checksum or not:
    /// what [`find_keys`](KeyFormat::find_keys) finds, before it asks the checksum. A leaked key
    /// with a typo is still a leak.
    pub(crate) fn contains_key_shape(&self, text: &str) -> bool {
        !self.shaped(text).is_empty()
    }

    /// The spans of `text` that [`find_keys`](KeyFormat::find_keys) finds.
    fn keys_in<'t>(&'t self, text: &'t str) -> impl Iterator<Item = Shaped> + 't {
        self.shaped(text).into_iter().filter(move |key| {
            let prefix = &text[key.range.start..key.range.start + key.prefix_len];
            !key.checked || has_valid_body(&text.as_bytes()[key.range.clone()], prefix)
        })
    }

    /// The spans of `text` shaped like a key of this format (an accepted prefix not touching a
    /// letter, digit or `_` before it, then a body as [`KeyFormat::body_len`] reads it), in
    /// order and not overlapping: the one rule of [`find_keys`](KeyFormat::find_keys) and the
    /// query-string refusal.
    fn shaped(&self, text: &str) -> Vec<Shaped> {
        let bytes = text.as_bytes();
        let checked = self.prefixes().map(|prefix| (prefix, true));
        let legacy = self.legacy_prefixes().map(|prefix| (prefix, false));
        let mut found: Vec<Shaped> = checked
            .chain(legacy)
            .flat_map(|(prefix, checked)| {
                let starts = text.match_indices(prefix).map(|(start, _)| start);
                starts.map(move |start| (start, prefix, checked))
            })
            .filter(|&(start, _, _)| start == 0 || !is_word(&bytes[start - 1]))
            .filter_map(|(start, prefix, checked)| {
                let body_start = start + prefix.len();
                let body_len = Self::body_len(&bytes[body_start..], checked)?;
                Some(Shaped {
                    range: start..body_start + body_len,
                    prefix_len: prefix.len(),
                    checked,
                })
            })
            .collect();
        // Where two prefixes match at one place, the longer span, then the longer prefix.
        found.sort_by_key(|key| {
            (
                key.range.start,
                Reverse(key.range.end),
                Reverse(key.prefix_len),
            )
        });
        let mut end = 0;
        found.retain(|key| {
            let apart = key.range.start >= end;
            if apart {
                end = key.range.end;
            }
            apart
        });
        found
    }

    /// The length of the key body at the start of `rest` (what follows a prefix), if one is
    /// there: after a `checked` prefix, [`BODY_LEN`] base62 characters not followed by a letter,
    /// digit or `_`; after a legacy prefix, the whole run of base64url characters if it is at
    /// least [`MIN_LEGACY_BODY_LEN`] long.
    fn body_len(rest: &[u8], checked: bool) -> Option<usize> {
        if checked {
            let body = rest.get(..BODY_LEN)?;
            let clear_after = rest.get(BODY_LEN).is_none_or(|byte| !is_word(byte));
            (clear_after && every_byte(body, u8::is_ascii_alphanumeric)).then_some(BODY_LEN)
        } else {
            let is_base64url = |byte: &&u8| is_word(byte) || **byte == b'-';
            let len = rest.iter().take_while(is_base64url).count();
            (len >= MIN_LEGACY_BODY_LEN).then_some(len)
        }
    }

    /// `text` with every key that [`find_keys`](KeyFormat::find_keys) finds replaced by its
    /// prefix and `[REDACTED]`; `text` itself, not copied, when it holds none.
    ///
    /// ```
    /// use tower_api_key::key::KeyFormat;
    ///
    /// let format = KeyFormat::default();
    /// let key = format.generate();
    /// let line = format!("retrying with key={}", key.expose_secret());
    /// assert_eq!(format.redact(&line), "retrying with key=sk_live_[REDACTED]");
    /// assert!(matches!(format.redact("no key here"), std::borrow::Cow::Borrowed(_)));
    /// ```
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut keys = self.keys_in(text).peekable();
        if keys.peek().is_none() {
            return Cow::Borrowed(text);
        }
        let mut redacted = String::with_capacity(text.len());
        let mut copied = 0;
        for key in keys {
            redacted.push_str(&text[copied..key.range.start + key.prefix_len]);
            redacted.push_str("[REDACTED]");
            copied = key.range.end;
        }
        redacted.push_str(&text[copied..]);
        Cow::Owned(redacted)
    }

    /// Generates a new live key with this format's first prefix, from the operating system's
    /// cryptographically secure random number generator.
    ///
    /// # Panics
    ///
    /// If the operating system cannot provide random bytes, which no supported platform does
    /// once booted.
    pub fn generate(&self) -> ApiKey {
        generate_with(self.prefix())
    }

    /// Generates a new key of `mode`, as [`KeyFormat::generate`] does; `None` for a test key
    /// if the format has no [test prefix](KeyFormat::test_prefix).
    ///
    /// # Panics
    ///
    /// As [`KeyFormat::generate`].
    pub fn generate_for(&self, mode: KeyMode) -> Option<ApiKey> {
        self.prefix_for(mode).map(generate_with)
    }
}

/// A span of a text shaped like a key: where it is, and how long its prefix is.
struct Shaped {
    range: Range<usize>,
    prefix_len: usize,
    /// Whether its prefix is one of the format's own, whose keys have a checksum.
    checked: bool,
}

/// Whether `byte` is a letter, a digit or `_`: what a key may not touch.
fn is_word(byte: &u8) -> bool {
    byte.is_ascii_alphanumeric() || *byte == b'_'
}

/// `prefix` with the characters that mean something in a regular expression escaped.
fn escape_for_regex(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for character in prefix.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(character) {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// A new key: `prefix`, then random base62 characters and their checksum.
fn generate_with(prefix: &str) -> ApiKey {
    let mut random = [0u8; RANDOM_LEN];
    fill_base62(&mut random);
    let mut key = String::with_capacity(prefix.len() + BODY_LEN);
    key.push_str(prefix);
    // The body is base62, so ASCII.
    key.extend(random.iter().map(|&byte| char::from(byte)));
    let check = checksum(key.as_bytes());
    key.extend(check.iter().map(|&byte| char::from(byte)));
    ApiKey(key)
}

fn assert_one_mode(clash: bool, prefix: &str) {
    assert!(
        !clash,
        "the key prefix {prefix:?} cannot name both live and test keys"
    );
}

fn valid_prefix(prefix: Cow<'static, str>) -> Cow<'static, str> {
    assert!(
        prefix.bytes().all(|byte| byte.is_ascii_graphic()),
        "a key prefix must be visible ASCII characters, got {prefix:?}"
    );
    prefix
}

/// Whether `key` is `prefix`, then a body of the right length and alphabet, ending in the
/// checksum of what comes before it.
fn has_valid_body(key: &[u8], prefix: &str) -> bool {
    let Some(body) = key.strip_prefix(prefix.as_bytes()) else {
        return false;
    };
    let (covered, check) = key.split_at(key.len().saturating_sub(CHECKSUM_LEN));
    body.len() == BODY_LEN
        && every_byte(body, u8::is_ascii_alphanumeric)
        && checksum(covered) == check
}

/// Whether every byte passes `test`: a fold without early exit, which the compiler checks 16 or
/// 32 bytes at a time, where `Iterator::all` goes byte by byte. Bound the length first.
pub(crate) fn every_byte(bytes: &[u8], test: impl Fn(&u8) -> bool) -> bool {
    bytes.iter().fold(true, |all, byte| all & test(byte))
}

/// CRC32 of a key's prefix and random characters (`covered`), as [`CHECKSUM_LEN`] base62 digits
/// (62^6 > 2^32). The prefix is covered so that a slip in it (`sk_test_` for `sk_live_`) is
/// caught without a lookup too.
fn checksum(covered: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut value = crc32fast::hash(covered);
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

/// Fills `out` with uniformly random base62 characters from the OS CSPRNG.
fn fill_base62(out: &mut [u8]) {
    let mut filled = 0;
    let mut random = [0u8; 64];
    while filled < out.len() {
        getrandom::fill(&mut random)
            .expect("the operating system's random number generator failed");
        // Bytes of 248 and above are dropped so that `% 62` is unbiased (248 = 4 * 62).
        for &byte in random.iter().filter(|&&byte| byte < 248) {
            if filled == out.len() {
                break;
            }
            out[filled] = BASE62[usize::from(byte % 62)];
            filled += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_generated_by_earlier_versions_stay_well_formed() {
        // Keys whose checksums an earlier version computed (the fuzz target's fixtures): the
        // checksum must not change under keys already handed out.
        for key in [
            "sk_live_FuzzKnownKey0123456789abcdefABCD17PAiV",
            "sk_live_FuzzRevokedKey123456789abcdefABC0tPT9C",
            "sk_live_FuzzOtherKey0123456789abcdefABCD3CSuTn",
        ] {
            assert!(KeyFormat::default().is_well_formed(key), "{key}");
        }
        assert!(
            !KeyFormat::default().is_well_formed("sk_live_FuzzKnownKey0123456789abcdefABCD17PAiW")
        );
    }

    #[test]
    fn generated_keys_have_prefix_body_and_checksum() {
        let key = KeyFormat::default().generate();
        let key = key.expose_secret();
        assert_eq!(key.len(), "sk_live_".len() + BODY_LEN);
        assert!(key.starts_with("sk_live_"));
        assert!(KeyFormat::default().is_well_formed(key));
    }

    #[test]
    fn generated_keys_carry_at_least_160_secret_bits_beside_a_4_character_hint() {
        let random_bits = RANDOM_LEN as f64 * 62f64.log2();
        let hint_bits = 4.0 * 62f64.log2();
        assert!(
            random_bits - hint_bits >= 160.0,
            "{random_bits} - {hint_bits}"
        );
        assert_eq!(
            KeyFormat::default().generate().expose_secret().len(),
            8 + 32 + 6
        );
    }

    #[test]
    fn generated_keys_differ() {
        let format = KeyFormat::default();
        assert_ne!(
            format.generate().expose_secret(),
            format.generate().expose_secret()
        );
    }

    #[test]
    fn a_key_under_another_accepted_prefix_breaks_the_checksum() {
        let format = KeyFormat::default();
        let live = format.generate().expose_secret().to_owned();
        let as_test = live.replacen("sk_live_", "sk_test_", 1);
        assert!(format.is_well_formed(&live));
        assert!(!format.is_well_formed(&as_test));
    }

    #[test]
    fn every_single_character_change_breaks_the_checksum() {
        let format = KeyFormat::default();
        let key = format.generate().expose_secret().to_owned();
        let prefix_len = "sk_live_".len();
        for position in prefix_len..key.len() {
            for &replacement in BASE62 {
                let mut changed = key.clone().into_bytes();
                if changed[position] == replacement {
                    continue;
                }
                changed[position] = replacement;
                let changed = String::from_utf8(changed).unwrap();
                assert!(!format.is_well_formed(&changed), "accepted {position}");
            }
        }
    }

    #[test]
    fn truncated_and_extended_keys_are_malformed() {
        let format = KeyFormat::default();
        let key = format.generate().expose_secret().to_owned();
        assert!(!format.is_well_formed(&key[..key.len() - 1]));
        assert!(!format.is_well_formed(&format!("{key}0")));
    }

    #[test]
    fn other_prefixes_are_rejected_unless_accepted() {
        let other = KeyFormat::new("pk_live_").generate();
        assert!(!KeyFormat::default().is_well_formed(other.expose_secret()));
        let both = KeyFormat::default().also_accept("pk_live_");
        assert!(both.is_well_formed(other.expose_secret()));
    }

    #[test]
    fn default_format_generates_and_accepts_live_and_test_keys() {
        let format = KeyFormat::default();
        let live = format.generate_for(KeyMode::Live).unwrap();
        let test = format.generate_for(KeyMode::Test).unwrap();
        assert!(live.expose_secret().starts_with("sk_live_"));
        assert!(test.expose_secret().starts_with("sk_test_"));
        assert!(format.is_well_formed(live.expose_secret()));
        assert!(format.is_well_formed(test.expose_secret()));
    }

    #[test]
    fn a_key_s_prefix_names_its_mode() {
        let format = KeyFormat::default().also_accept("sk_old_");
        let mode_of = |key: ApiKey| format.mode_of(key.expose_secret().as_bytes());
        assert_eq!(mode_of(format.generate()), Some(KeyMode::Live));
        assert_eq!(mode_of(generate_with("sk_old_")), Some(KeyMode::Live));
        let test = format.generate_for(KeyMode::Test).unwrap();
        assert_eq!(mode_of(test), Some(KeyMode::Test));
        assert_eq!(format.mode_of(b"sk_test_not-a-key"), None);
    }

    #[test]
    fn a_live_key_under_a_shorter_test_prefix_is_live() {
        let format = KeyFormat::new("sk_live_").test_prefix("sk_");
        let live = format.generate();
        assert_eq!(
            format.mode_of(live.expose_secret().as_bytes()),
            Some(KeyMode::Live)
        );
    }

    #[test]
    fn a_legacy_key_s_mode_is_its_longest_legacy_prefix_s() {
        let format = KeyFormat::default()
            .legacy_prefix("ak_", KeyMode::Live)
            .legacy_prefix("ak_test_", KeyMode::Test);
        assert_eq!(format.mode_of(b"ak_123"), Some(KeyMode::Live));
        assert_eq!(format.mode_of(b"ak_test_123"), Some(KeyMode::Test));
        assert_eq!(format.mode_of(b"bk_123"), None);
    }

    #[test]
    fn the_format_s_own_keys_stay_checked_beside_legacy_keys() {
        let format = KeyFormat::default().legacy_prefix("", KeyMode::Live);
        assert_eq!(format.mode_of(b"3f1c9a7e-legacy"), Some(KeyMode::Live));
        assert_eq!(format.mode_of(b"sk_live_made-up"), None);
        assert_eq!(format.mode_of(b"sk_test_made-up"), None);
        let test = format.generate_for(KeyMode::Test).unwrap();
        assert_eq!(
            format.mode_of(test.expose_secret().as_bytes()),
            Some(KeyMode::Test)
        );
        // A longer legacy prefix under a checked one wins.
        let nested = KeyFormat::new("sk_").legacy_prefix("sk_old_", KeyMode::Live);
        assert_eq!(nested.mode_of(b"sk_old_123"), Some(KeyMode::Live));
        assert_eq!(nested.mode_of(b"sk_123"), None);
    }

    #[test]
    fn legacy_keys_are_bounded_visible_ascii() {
        let format = KeyFormat::default().legacy_prefix("ak_", KeyMode::Live);
        let longest = format!("ak_{}", "a".repeat(MAX_KEY_LEN - 3));
        assert!(format.is_well_formed(&longest));
        assert!(!format.is_well_formed(&format!("{longest}a")));
        assert!(!format.is_well_formed("ak_a b"));
        assert!(!format.is_well_formed("ak_é"));
        assert!(!KeyFormat::default()
            .legacy_prefix("", KeyMode::Live)
            .is_well_formed(""));
    }

    #[test]
    #[should_panic(expected = "cannot be both checked and legacy")]
    fn a_checked_prefix_cannot_be_legacy() {
        let _ = KeyFormat::default().legacy_prefix("sk_test_", KeyMode::Test);
    }

    #[test]
    #[should_panic(expected = "already a legacy prefix")]
    fn a_legacy_prefix_cannot_be_checked_later() {
        let _ = KeyFormat::new("sk_live_")
            .legacy_prefix("ak_", KeyMode::Live)
            .also_accept("ak_");
    }

    #[test]
    #[should_panic(expected = "cannot name both live and test keys")]
    fn a_test_prefix_cannot_be_a_live_prefix() {
        let _ = KeyFormat::new("sk_").test_prefix("sk_");
    }

    #[test]
    #[should_panic(expected = "cannot name both live and test keys")]
    fn an_additional_live_prefix_cannot_be_the_test_prefix() {
        let _ = KeyFormat::default().also_accept("sk_test_");
    }

    #[test]
    fn format_without_test_prefix_has_no_test_keys() {
        let format = KeyFormat::new("sk_live_");
        assert_eq!(format.prefix_for(KeyMode::Test), None);
        assert!(format.generate_for(KeyMode::Test).is_none());
        let test = KeyFormat::default().generate_for(KeyMode::Test).unwrap();
        assert!(!format.is_well_formed(test.expose_secret()));
    }

    #[test]
    fn test_prefix_replaces_the_earlier_one() {
        let format = KeyFormat::default().test_prefix("xk_test_");
        let test = format.generate_for(KeyMode::Test).unwrap();
        assert!(test.expose_secret().starts_with("xk_test_"));
        let old = KeyFormat::default().generate_for(KeyMode::Test).unwrap();
        assert!(!format.is_well_formed(old.expose_secret()));
        assert_eq!(
            format.prefixes().collect::<Vec<_>>(),
            ["sk_live_", "xk_test_"]
        );
    }

    #[test]
    fn an_empty_legacy_prefix_accepts_any_other_shape() {
        assert!(KeyFormat::default()
            .legacy_prefix("", KeyMode::Live)
            .is_well_formed("legacy-key-123"));
        assert!(!KeyFormat::default().is_well_formed("legacy-key-123"));
    }

    #[test]
    #[should_panic(expected = "visible ASCII")]
    fn prefix_with_space_is_refused() {
        let _ = KeyFormat::new("sk live_");
    }

    #[test]
    fn digests_match_only_the_same_key() {
        let digest = KeyDigest::of("sk_live_a");
        assert!(digest.matches(&KeyDigest::of("sk_live_a")));
        assert!(!digest.matches(&KeyDigest::of("sk_live_b")));
    }

    #[test]
    fn digests_differing_in_any_one_bit_do_not_match() {
        let digest = KeyDigest::of("sk_live_a");
        for byte in 0..32 {
            for bit in 0..8 {
                let mut changed = digest.0;
                changed[byte] ^= 1 << bit;
                assert!(
                    !digest.matches(&KeyDigest(changed)),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn digest_round_trips_through_hex() {
        let digest = KeyDigest::of("sk_live_a");
        let hex = digest.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(KeyDigest::from_hex(&hex).unwrap().matches(&digest));
        assert!(KeyDigest::from_hex(&hex.to_uppercase())
            .unwrap()
            .matches(&digest));
    }

    #[test]
    fn malformed_hex_is_not_a_digest() {
        let hex = KeyDigest::of("sk_live_a").to_hex();
        assert!(KeyDigest::from_hex(&hex[1..]).is_none());
        assert!(KeyDigest::from_hex(&format!("{}g", &hex[1..])).is_none());
        assert!(KeyDigest::from_hex(&format!("+{}", &hex[1..])).is_none());
        assert!(KeyDigest::from_hex(&"é".repeat(32)).is_none());
    }

    #[test]
    fn lookup_id_is_the_digest_prefix() {
        let digest = KeyDigest::of("sk_live_a");
        assert_eq!(digest.lookup_id().as_bytes(), &digest.as_bytes()[..16]);
    }

    #[test]
    fn debug_output_is_redacted() {
        let key = KeyFormat::default().generate();
        let digest = key.digest();
        for debug in [
            format!("{key:?}"),
            format!("{digest:?}"),
            format!("{:?}", digest.lookup_id()),
        ] {
            assert!(debug.contains("<redacted>"), "{debug}");
            assert!(!debug.contains(&key.expose_secret()[8..]), "{debug}");
        }
    }

    #[test]
    fn keys_are_found_only_as_whole_tokens() {
        let format = KeyFormat::default();
        let (one, two) = (
            format.generate(),
            format.generate_for(KeyMode::Test).unwrap(),
        );
        let (one, two) = (one.expose_secret(), two.expose_secret());
        let text = format!("a={one}&b={two}");
        let found: Vec<&str> = format.find_keys(&text).map(|range| &text[range]).collect();
        assert_eq!(found, [one, two]);
        assert_eq!(
            format.redact(&text),
            "a=sk_live_[REDACTED]&b=sk_test_[REDACTED]"
        );
        for glued in [
            format!("x{one}"),
            format!("{one}9"),
            format!("_{one}"),
            format!("{one}_"),
        ] {
            assert_eq!(format.find_keys(&glued).count(), 0, "{glued}");
        }
        let typo = format!("{}X{}", &one[..20], &one[21..]);
        assert_eq!(format.find_keys(&typo).count(), usize::from(typo == one));
        assert_eq!(format.find_keys(&one[..one.len() - 1]).count(), 0);
    }

    #[test]
    fn a_key_shape_is_found_whatever_its_checksum() {
        let format = KeyFormat::default();
        let lookalike = format!("sk_live_{}", "0".repeat(BODY_LEN));
        assert_eq!(format.find_keys(&lookalike).count(), 0);
        assert!(format.contains_key_shape(&lookalike));
        assert!(format.contains_key_shape(&format!("see {lookalike}.")));
        for text in ["sk_test_x", "sk_abc", "sk_live_", &lookalike[1..]] {
            assert!(!format.contains_key_shape(text), "{text}");
        }
        assert!(!format.contains_key_shape(&format!("x{lookalike}")));
        assert!(!format.contains_key_shape(&format!("{lookalike}0")));
    }

    #[test]
    fn legacy_keys_are_found_as_a_prefix_and_16_or_more_base64url_characters() {
        let format = KeyFormat::default()
            .legacy_prefix("ak_", KeyMode::Live)
            .legacy_prefix("", KeyMode::Live);
        let text = "a ak_550e8400-e29b-41d4 b ak_0123456789abcde c ak_ab_cd-0123456789 \
                    d sk_live_0123456789abcdef0123456789abcdef012345";
        let found: Vec<&str> = format.find_keys(text).map(|range| &text[range]).collect();
        assert_eq!(found, ["ak_550e8400-e29b-41d4", "ak_ab_cd-0123456789"]);
        assert_eq!(
            format.redact(text),
            "a ak_[REDACTED] b ak_0123456789abcde c ak_[REDACTED] \
                    d sk_live_0123456789abcdef0123456789abcdef012345"
        );
        let generated = format.generate();
        assert_eq!(format.find_keys(generated.expose_secret()).count(), 1);
    }

    #[test]
    fn the_pattern_finds_what_find_keys_finds_before_the_checksum() {
        let key = KeyFormat::default().generate();
        let key = key.expose_secret();
        let text = format!(
            "{key} x{key} {key}_ sk_live_550e8400-e29b-41d4-a716 é{key} sk_test_short sk_live_{}",
            "Z".repeat(40)
        );
        let text = format!("{text} ak_550e8400-e29b-41d4-a716 ak_short x_ak_0123456789abcdef");
        let legacy = KeyFormat::default().legacy_prefix("ak_", KeyMode::Live);
        for format in [KeyFormat::default(), legacy] {
            let pattern = regex::Regex::new(&format.pattern()).unwrap();
            let matched: Vec<_> = pattern.find_iter(&text).map(|m| m.range()).collect();
            let shaped: Vec<_> = format.shaped(&text).into_iter().map(|s| s.range).collect();
            assert_eq!(matched, shaped, "{}", format.pattern());
            assert!(!matched.is_empty());
        }
    }

    #[test]
    fn overlapping_prefixes_give_one_span() {
        let format = KeyFormat::new("sk_live_").legacy_prefix("sk_", KeyMode::Live);
        let key = format.generate();
        let text = key.expose_secret();
        let spans = format.shaped(text);
        assert_eq!(spans.len(), 1);
        assert_eq!(
            (spans[0].range.clone(), spans[0].prefix_len),
            (0..text.len(), 8)
        );
        assert_eq!(format.redact(text), "sk_live_[REDACTED]");
    }
}
