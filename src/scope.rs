//! Scopes: what a restricted key may do, like Stripe's restricted keys.
//!
//! A key created with scopes ([`NewKey::scopes`](crate::NewKey::scopes)) may call only the
//! routes that require one of them; a key created without scopes has full access, as Stripe's
//! standard keys do. Scopes are compared exactly: `keys:write` does not imply `keys:read`.

use serde::Serialize;
use std::fmt;

/// The most scopes a key may have.
pub const MAX_SCOPES: usize = 32;

/// The longest scope, in characters.
pub const MAX_SCOPE_LEN: usize = 64;

/// The scopes of a restricted key: 1 to [`MAX_SCOPES`] valid scopes, sorted, without
/// duplicates.
///
/// A valid scope is 1 to [`MAX_SCOPE_LEN`] visible ASCII characters other than `"` and `\`
/// (RFC 6749's `scope-token`), so `iocs:read`, `keys:write` and `admin` are; it is then safe in
/// a header and in a `WWW-Authenticate` challenge. `Display` writes them space-separated, as
/// OAuth does. Serializes as a JSON array of strings.
///
/// ```
/// use tower_api_key::access::Scopes;
///
/// let scopes = Scopes::new(["keys:write", "iocs:read", "keys:write"]).unwrap();
/// assert_eq!(scopes.iter().collect::<Vec<_>>(), ["iocs:read", "keys:write"]);
/// assert!(scopes.contains("iocs:read"));
/// assert_eq!(scopes.to_string(), "iocs:read keys:write");
/// assert!(Scopes::new(["keys write"]).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scopes(Box<[Box<str>]>);

impl Scopes {
    /// The scopes given, sorted and without duplicates, or why they are not valid scopes.
    pub fn new<I>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut valid: Vec<Box<str>> = Vec::new();
        for (position, scope) in scopes.into_iter().enumerate() {
            // Counted before deduplication, so that a huge list is refused without being read.
            if position == MAX_SCOPES {
                return Err(ScopeError::TooMany);
            }
            let scope = scope.into();
            if !is_valid_scope(&scope) {
                return Err(ScopeError::Malformed { position });
            }
            valid.push(scope.into_boxed_str());
        }
        if valid.is_empty() {
            return Err(ScopeError::Empty);
        }
        valid.sort_unstable();
        valid.dedup();
        Ok(Self(valid.into_boxed_slice()))
    }

    /// Whether `scope` is one of these.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|own| (**own).cmp(scope)).is_ok()
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.0.iter().map(|scope| &**scope)
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, scope) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope)?;
        }
        Ok(())
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Why a list of scopes is not valid ([`Scopes::new`], or
/// [`ManageError::InvalidScopes`](crate::manage::ManageError::InvalidScopes) at creation).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeError {
    /// The list is empty. Leave the scopes out for a key with full access.
    Empty,
    /// The list has more than [`MAX_SCOPES`] scopes.
    TooMany,
    /// The scope at `position` (counting from 0) is empty, longer than [`MAX_SCOPE_LEN`], or
    /// holds a character other than visible ASCII, `"` and `\` excepted.
    Malformed {
        /// Where the scope is in the list, from 0.
        position: usize,
    },
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str(
                "a restricted key needs at least one scope; leave the scopes out for full access",
            ),
            Self::TooMany => write!(f, "a key may have at most {MAX_SCOPES} scopes"),
            Self::Malformed { position } => write!(
                f,
                "scope number {} is not valid: a scope is 1 to {MAX_SCOPE_LEN} visible ASCII \
                 characters, without spaces, quotes or backslashes",
                position + 1
            ),
        }
    }
}

impl std::error::Error for ScopeError {}

/// Whether `scope` is 1 to [`MAX_SCOPE_LEN`] of RFC 6749's `NQCHAR`: visible ASCII but `"`
/// and `\`. A `const fn`, so that the axum extractor checks its scope at compile time.
pub(crate) const fn is_valid_scope(scope: &str) -> bool {
    let bytes = scope.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_SCOPE_LEN {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if !byte.is_ascii_graphic() || byte == b'"' || byte == b'\\' {
            return false;
        }
        index += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_sorted_and_deduplicated() {
        let scopes = Scopes::new(["b", "a", "b"]).unwrap();
        assert_eq!(scopes.iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn scope_tokens_of_visible_ascii_are_valid() {
        for scope in [
            "keys:write",
            "a",
            "x.y/z-1_2",
            "!#$%&'()*+,-./:;<=>?@[]^_`{|}~",
        ] {
            assert!(is_valid_scope(scope), "{scope:?}");
        }
        assert!(is_valid_scope(&"s".repeat(MAX_SCOPE_LEN)));
    }

    #[test]
    fn empty_long_spaced_quoted_or_non_ascii_scopes_are_invalid() {
        let long = "s".repeat(MAX_SCOPE_LEN + 1);
        for scope in [
            "",
            " ",
            "keys write",
            "a\"b",
            "a\\b",
            "clé",
            "tab\t",
            "nl\n",
            &long,
        ] {
            assert!(!is_valid_scope(scope), "{scope:?}");
        }
    }

    #[test]
    fn malformed_scope_is_reported_by_position() {
        let error = Scopes::new(["ok", "not ok"]).unwrap_err();
        assert_eq!(error, ScopeError::Malformed { position: 1 });
        assert!(error.to_string().contains("number 2"), "{error}");
    }

    #[test]
    fn no_scopes_and_too_many_scopes_are_refused() {
        assert_eq!(
            Scopes::new(Vec::<String>::new()).unwrap_err(),
            ScopeError::Empty
        );
        let many = (0..=MAX_SCOPES).map(|index| format!("s{index}"));
        assert_eq!(Scopes::new(many).unwrap_err(), ScopeError::TooMany);
        let most = (0..MAX_SCOPES).map(|index| format!("s{index}"));
        assert!(Scopes::new(most).is_ok());
    }

    #[test]
    fn scopes_serialize_as_an_array_and_display_space_separated() {
        let scopes = Scopes::new(["keys:write", "iocs:read"]).unwrap();
        assert_eq!(
            serde_json::to_value(&scopes).unwrap(),
            serde_json::json!(["iocs:read", "keys:write"])
        );
        assert_eq!(scopes.to_string(), "iocs:read keys:write");
    }
}
