//! The hint that tells a key's owner which key a record is, without its secret.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A non-secret reminder of a key for its owner: its prefix and last four characters,
/// `sk_live_...Xy12`.
///
/// A hint of up to 22 bytes (every hint [`KeyManager`](crate::KeyManager) writes for a prefix of
/// up to 15 characters) is kept inline: it costs no allocation, and cloning it, as a store does
/// on every lookup, touches no count shared between threads. A longer one is shared.
///
/// ```
/// use tower_api_key::KeyHint;
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

/// The longest hint kept inline: what fits beside the length in the 24 bytes a shared one takes.
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
    use super::*;

    #[test]
    fn short_hints_are_inline_and_long_ones_shared() {
        let short = "sk_live_...Xy12";
        assert!(matches!(KeyHint::from(short).0, Repr::Inline { .. }));
        let longest = "x".repeat(INLINE_LEN);
        assert!(matches!(
            KeyHint::from(longest.as_str()).0,
            Repr::Inline { .. }
        ));
        let long = "x".repeat(INLINE_LEN + 1);
        assert!(matches!(KeyHint::from(long.clone()).0, Repr::Shared(_)));
        for text in [short, &longest, &long, "", "ключ_...Ω"] {
            for hint in [
                KeyHint::from(text),
                KeyHint::from(text.to_owned()),
                KeyHint::from(Arc::<str>::from(text)),
            ] {
                assert_eq!(hint.as_str(), text);
                assert_eq!(hint.to_string(), text);
                assert_eq!(format!("{hint:?}"), format!("{text:?}"));
            }
        }
    }

    #[test]
    fn a_hint_takes_24_bytes_and_none_costs_nothing_more() {
        assert_eq!(std::mem::size_of::<KeyHint>(), 24);
        assert_eq!(std::mem::size_of::<Option<KeyHint>>(), 24);
    }

    #[test]
    fn hints_compare_by_text_whatever_their_form() {
        let long = "sk_a_very_long_prefix_...Xy12";
        assert_eq!(KeyHint::from(long), KeyHint::from(long.to_owned()));
        assert_ne!(
            KeyHint::from("sk_live_...Xy12"),
            KeyHint::from("sk_live_...Xy13")
        );
    }
}
