//! The hint that tells a key's owner which key a record is, without its secret.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-secret reminder of a key for its owner: its prefix and last four characters,
/// `sk_live_...Xy12`.
///
/// A hint of up to 22 bytes (every hint [`KeyManager`](crate::KeyManager) writes for a prefix of
/// up to 15 characters) is kept inline: it costs no allocation, and cloning it, as a store does
/// on every lookup, touches no count shared between threads. A longer one is shared.
///
/// ```
/// use tower_api_key::key::KeyHint;
///
/// let hint = KeyHint::from("sk_live_...Xy12");
/// assert_eq!(hint.as_str(), "sk_live_...Xy12");
/// assert!(hint.ends_with("Xy12")); // and every other `str` method
/// ```
#[derive(Clone)]
pub struct KeyHint(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE_LEN] },
    Shared(Arc<str>),
}

/// The longest hint kept inline: what fits beside the variant's tag and the length in 24 bytes
/// (the shared form, an `Arc<str>`, takes 16).
const INLINE_LEN: usize = 22;

impl KeyHint {
    /// The hint's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // The bytes are a whole `str`'s, so this never falls back.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(text) => text,
        }
    }

    fn inline(text: &str) -> Option<Self> {
        let len = u8::try_from(text.len())
            .ok()
            .filter(|&len| usize::from(len) <= INLINE_LEN)?;
        let mut bytes = [0; INLINE_LEN];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Some(Self(Repr::Inline { len, bytes }))
    }
}

impl Deref for KeyHint {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for KeyHint {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for KeyHint {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for KeyHint {
    fn from(text: &str) -> Self {
        Self::inline(text).unwrap_or_else(|| Self(Repr::Shared(text.into())))
    }
}

impl From<String> for KeyHint {
    fn from(text: String) -> Self {
        Self::inline(&text).unwrap_or_else(|| Self(Repr::Shared(text.into())))
    }
}

impl From<Box<str>> for KeyHint {
    fn from(text: Box<str>) -> Self {
        Self::inline(&text).unwrap_or_else(|| Self(Repr::Shared(text.into())))
    }
}

impl From<Cow<'_, str>> for KeyHint {
    fn from(text: Cow<'_, str>) -> Self {
        match text {
            Cow::Borrowed(text) => text.into(),
            Cow::Owned(text) => text.into(),
        }
    }
}

impl From<Arc<str>> for KeyHint {
    fn from(text: Arc<str>) -> Self {
        Self::inline(&text).unwrap_or(Self(Repr::Shared(text)))
    }
}

impl PartialEq for KeyHint {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for KeyHint {}

impl PartialEq<str> for KeyHint {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for KeyHint {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for KeyHint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyHint {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

// As `str` hashes, so that a set of hints can be searched by `&str` (`Borrow<str>`).
impl Hash for KeyHint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// As a string.
impl Serialize for KeyHint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// From a string.
impl<'de> Deserialize<'de> for KeyHint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Cow::<'de, str>::deserialize(deserializer).map(Self::from)
    }
}

impl fmt::Debug for KeyHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for KeyHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn every_form(text: &str) -> [KeyHint; 5] {
        [
            KeyHint::from(text),
            KeyHint::from(text.to_owned()),
            KeyHint::from(Box::<str>::from(text)),
            KeyHint::from(Cow::Owned(text.to_owned())),
            KeyHint::from(Arc::<str>::from(text)),
        ]
    }

    #[test]
    fn hints_up_to_22_bytes_are_inline_and_longer_ones_shared_from_every_source() {
        let longest = "x".repeat(INLINE_LEN);
        let too_long = "x".repeat(INLINE_LEN + 1);
        for (text, inline) in [
            ("", true),
            ("sk_live_...Xy12", true),
            ("ключ_...Ω", true),
            (&longest, true),
            (&too_long, false),
        ] {
            for hint in every_form(text) {
                assert_eq!(matches!(hint.0, Repr::Inline { .. }), inline, "{text:?}");
                assert_eq!(hint.as_str(), text);
                assert_eq!(hint.to_string(), text);
                assert_eq!(format!("{hint:?}"), format!("{text:?}"));
                assert_eq!(hint, *text);
            }
        }
    }

    #[test]
    fn a_hint_takes_24_bytes_and_none_costs_nothing_more() {
        assert_eq!(std::mem::size_of::<KeyHint>(), 24);
        assert_eq!(std::mem::size_of::<Option<KeyHint>>(), 24);
    }

    #[test]
    fn hints_compare_order_and_hash_as_their_text() {
        let (a, b) = (
            KeyHint::from("sk_live_...Xy12"),
            KeyHint::from("sk_live_...Xy13"),
        );
        assert_ne!(a, b);
        assert!(a < b);
        let long = "sk_a_very_long_prefix_...Xy12";
        let shared = KeyHint::from(long);
        assert!(shared < a, "ordered as text, whatever the form");
        let set: HashSet<KeyHint> = [a, shared].into();
        assert!(set.contains("sk_live_...Xy12"));
        assert!(set.contains(long));
        assert!(!set.contains("sk_live_...Xy13"));
    }

    #[test]
    fn a_hint_is_serialized_as_its_text() {
        for text in ["sk_live_...Xy12", "sk_a_very_long_prefix_...Xy12"] {
            let json = serde_json::to_string(&KeyHint::from(text)).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<KeyHint>(&json).unwrap(), text);
        }
    }
}
