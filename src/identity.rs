//! Who a request was authenticated as.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::mode::KeyMode;
use crate::scope::Scopes;

/// The public id of a key: safe to log, show in listings and use in URLs.
///
/// It is not derived from the key, so it reveals nothing about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Box<str>);

impl KeyId {
    /// Wraps an id a store assigned.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into().into_boxed_str())
    }

    /// A new random id, `key_` followed by 32 hexadecimal digits.
    pub fn random() -> Self {
        Self(format!("key_{}", uuid::Uuid::new_v4().simple()).into_boxed_str())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The plan an account is on, which bounds how many keys it may hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tier(Cow<'static, str>);

impl Tier {
    /// The free tier.
    pub const FREE: Tier = Tier(Cow::Borrowed("free"));
    /// The pro tier.
    pub const PRO: Tier = Tier(Cow::Borrowed("pro"));

    /// A tier by name, for plans beyond free and pro.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self(name.into())
    }

    /// The tier's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity of an authenticated key, which the layer puts in the request's extensions.
///
/// Cloning is cheap (one reference count). It serializes as an object of its fields (`key_id`,
/// `account_id`, `name`, `tier`, `mode`, and `scopes` and `metadata` when set), metadata
/// included: leave internal metadata out before returning it to callers. Read it in a handler
/// from the request extensions, or with the axum extractor (feature `axum`):
///
/// ```
/// use tower_api_key::{KeyId, KeyIdentity, KeyMode, Scopes, Tier};
///
/// let identity = KeyIdentity::new(KeyId::new("key_1"), "acct_42", "ci", Tier::FREE)
///     .with_metadata(serde_json::json!({"team": "platform"}))
///     .with_mode(KeyMode::Test)
///     .with_scopes(Scopes::new(["iocs:read"]).unwrap());
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(identity);
///
/// let identity = request.extensions().get::<KeyIdentity>().unwrap();
/// assert_eq!(identity.account_id(), "acct_42");
/// assert_eq!(identity.metadata().unwrap()["team"], "platform");
/// assert_eq!(identity.mode(), KeyMode::Test);
/// assert!(identity.has_scope("iocs:read"));
/// assert!(!identity.has_scope("keys:write"));
/// ```
///
/// A store that builds identities itself (not through [`KeyManager`](crate::KeyManager)) sets
/// the mode of test keys with [`KeyIdentity::with_mode`]: identities are live by default.
#[derive(Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct KeyIdentity(Arc<IdentityFields>);

// Boxed strings and metadata keep this small: a store holds one per key.
#[derive(Clone, PartialEq, Serialize)]
struct IdentityFields {
    key_id: KeyId,
    account_id: Box<str>,
    name: Box<str>,
    tier: Tier,
    mode: KeyMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<Scopes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Box<serde_json::Value>>,
}

impl KeyIdentity {
    /// The identity of live key `key_id`, named `name`, of account `account_id` on `tier`, with
    /// full access.
    pub fn new(
        key_id: KeyId,
        account_id: impl Into<String>,
        name: impl Into<String>,
        tier: Tier,
    ) -> Self {
        Self(Arc::new(IdentityFields {
            key_id,
            account_id: account_id.into().into_boxed_str(),
            name: name.into().into_boxed_str(),
            tier,
            mode: KeyMode::Live,
            scopes: None,
            metadata: None,
        }))
    }

    /// Attaches application data (roles, a team, limits) for handlers to read.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        Arc::make_mut(&mut self.0).metadata = Some(Box::new(metadata));
        self
    }

    /// The same identity, for a key of `mode`.
    pub fn with_mode(mut self, mode: KeyMode) -> Self {
        Arc::make_mut(&mut self.0).mode = mode;
        self
    }

    /// The same identity, restricted to `scopes`.
    pub fn with_scopes(mut self, scopes: Scopes) -> Self {
        Arc::make_mut(&mut self.0).scopes = Some(scopes);
        self
    }

    /// The same identity for another key, as a rotation's replacement has.
    pub(crate) fn with_key_id(mut self, key_id: KeyId) -> Self {
        Arc::make_mut(&mut self.0).key_id = key_id;
        self
    }

    /// The key's public id.
    pub fn key_id(&self) -> &KeyId {
        &self.0.key_id
    }

    /// The account the key belongs to.
    pub fn account_id(&self) -> &str {
        &self.0.account_id
    }

    /// The name its owner gave the key.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The account's tier.
    pub fn tier(&self) -> &Tier {
        &self.0.tier
    }

    /// Application data attached to the key, if any.
    pub fn metadata(&self) -> Option<&serde_json::Value> {
        self.0.metadata.as_deref()
    }

    /// Whether the key is a live or a test key.
    pub fn mode(&self) -> KeyMode {
        self.0.mode
    }

    /// The scopes a restricted key is limited to; `None` for a key with full access.
    pub fn scopes(&self) -> Option<&Scopes> {
        self.0.scopes.as_ref()
    }

    /// Whether the key may do what `scope` allows: it has full access, or that scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0
            .scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(scope))
    }
}

impl fmt::Debug for KeyIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyIdentity")
            .field("key_id", &self.0.key_id)
            .field("account_id", &self.0.account_id)
            .field("name", &self.0.name)
            .field("tier", &self.0.tier)
            .field("mode", &self.0.mode)
            .field("scopes", &self.0.scopes)
            .field("metadata", &self.0.metadata)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> KeyIdentity {
        KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", Tier::FREE)
    }

    #[test]
    fn new_identity_is_a_live_key_with_full_access() {
        let identity = identity();
        assert_eq!(identity.mode(), KeyMode::Live);
        assert!(identity.scopes().is_none());
        assert!(identity.has_scope("anything:at_all"));
    }

    #[test]
    fn restricted_identity_has_only_its_scopes() {
        let identity = identity().with_scopes(Scopes::new(["iocs:read"]).unwrap());
        assert!(identity.has_scope("iocs:read"));
        assert!(!identity.has_scope("iocs:write"));
        assert!(!identity.has_scope("iocs"));
    }

    #[test]
    fn identity_serializes_its_mode_and_only_set_scopes() {
        let full = serde_json::to_value(identity()).unwrap();
        assert_eq!(full["mode"], "live");
        assert!(full.get("scopes").is_none());
        let restricted = identity()
            .with_mode(KeyMode::Test)
            .with_scopes(Scopes::new(["b", "a"]).unwrap());
        let restricted = serde_json::to_value(restricted).unwrap();
        assert_eq!(restricted["mode"], "test");
        assert_eq!(restricted["scopes"], serde_json::json!(["a", "b"]));
    }
}
