//! Live and test keys: [`KeyMode`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// Whether a key is a live key (`sk_live_...`) or a test key (`sk_test_...`), as Stripe's are.
///
/// Both kinds live in one store and authenticate alike; handlers read the mode from
/// [`KeyIdentity::mode`](crate::KeyIdentity::mode) to keep test traffic away from real data,
/// and [`RequireModeLayer`](crate::access::RequireModeLayer) (or the axum extractors `LiveKey` and `TestKey`) refuses one mode
/// on a route. [`KeyManager`](crate::KeyManager) records the mode when it creates a key, from
/// the prefix it generates the key with; as a key's digest covers its prefix, a test key's
/// random part presented as `sk_live_...` is just an unknown key.
///
/// It serializes as `"live"` or `"test"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// A key for real traffic: the default.
    #[default]
    Live,
    /// A key for development and tests, to be kept away from real data and side effects.
    Test,
}

impl KeyMode {
    /// `"live"` or `"test"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }

    /// The mode named `"live"` or `"test"`, as [`KeyMode::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "live" => Some(Self::Live),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
}

impl fmt::Display for KeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_through_their_names() {
        for mode in [KeyMode::Live, KeyMode::Test] {
            assert_eq!(KeyMode::parse(mode.as_str()), Some(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(KeyMode::parse("Live"), None);
    }

    #[test]
    fn modes_serialize_in_lowercase() {
        assert_eq!(serde_json::to_value(KeyMode::Test).unwrap(), "test");
        assert_eq!(KeyMode::default(), KeyMode::Live);
    }
}
