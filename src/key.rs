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
    /// key is, like any key, 1 to [`MAX_KEY_LEN`] visible ASCII characters. Legacy keys have no
    /// shape to look for: [`pattern`](KeyFormat::pattern) and [`find_keys`](KeyFormat::find_keys)
    /// leave them out.
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
    /// ```
    ///
    /// A match may still fail the checksum; [`find_keys`](KeyFormat::find_keys) keeps only the
    /// keys that pass it, so a scanner can tell a real key from a lookalike without a lookup.
    pub fn pattern(&self) -> String {
        let prefixes: Vec<String> = self.prefixes().map(escape_for_regex).collect();
        format!(
            r"(?-u:\b)(?:{})[0-9A-Za-z]{{{BODY_LEN}}}(?-u:\b)",
            prefixes.join("|")
        )
    }

    /// The keys of this format in `text`, as byte ranges, in order: each an accepted prefix and
    /// a body of the right length and alphabet whose checksum is right, not touching a letter,
    /// digit or `_` on either side. For finding keys pasted in tickets, logs or commits.
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
        let bytes = text.as_bytes();
        let mut found: Vec<Range<usize>> = self
            .prefixes()
            .flat_map(|prefix| {
                text.match_indices(prefix)
                    .map(move |(start, _)| (start, prefix))
            })
            .filter_map(move |(start, prefix)| {
                let end = start + prefix.len() + BODY_LEN;
                let candidate = bytes.get(start..end)?;
                let is_word = |byte: &u8| byte.is_ascii_alphanumeric() || *byte == b'_';
                let clear_before = start == 0 || !is_word(&bytes[start - 1]);
                let clear_after = bytes.get(end).is_none_or(|byte| !is_word(byte));
                let body = &candidate[prefix.len()..];
                let shaped =
                    clear_before && clear_after && every_byte(body, u8::is_ascii_alphanumeric);
                (shaped && has_valid_body(candidate, prefix)).then_some(start..end)
            })
            .collect();
        found.sort_by_key(|range| range.start);
        found.dedup();
        found.into_iter()
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
        let mut keys = self.find_keys(text).peekable();
        if keys.peek().is_none() {
            return Cow::Borrowed(text);
        }
        let mut redacted = String::with_capacity(text.len());
        let mut copied = 0;
        for range in keys {
            let prefix_len = range.len() - BODY_LEN;
            redacted.push_str(&text[copied..range.start + prefix_len]);
            redacted.push_str("[REDACTED]");
            copied = range.end;
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
}
