//! Who a request was authenticated as.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::AuthError;
use crate::limit::RateLimit;
use crate::mode::KeyMode;
use crate::scope::Scopes;

/// The public id of a key: safe to log, show in listings and use in URLs.
///
/// It is not derived from the key, so it reveals nothing about it. Cloning is cheap (one
/// reference count); ids compare, hash and serialize as their text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// Wraps an id a store assigned.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into().into())
    }

    /// A new random id, `key_` followed by 32 hexadecimal digits.
    pub fn random() -> Self {
        Self::new(format!("key_{}", uuid::Uuid::new_v4().simple()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plan an account is on, which bounds how many keys it may hold.
///
/// Cloning never allocates: a name given as a `String` is shared.
#[derive(Clone)]
pub struct Tier(TierName);

#[derive(Clone)]
enum TierName {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Tier {
    /// The free tier.
    pub const FREE: Tier = Tier(TierName::Static("free"));
    /// The pro tier.
    pub const PRO: Tier = Tier(TierName::Static("pro"));

    /// A tier by name, for plans beyond free and pro.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        match name.into() {
            Cow::Borrowed(name) => Self(TierName::Static(name)),
            Cow::Owned(name) => Self(TierName::Shared(name.into())),
        }
    }

    /// The tier's name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            TierName::Static(name) => name,
            TierName::Shared(name) => name,
        }
    }
}

impl PartialEq for Tier {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Tier {}

impl Hash for Tier {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tier").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As its name.
impl Serialize for Tier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// From its name.
impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// The identity of an authenticated key, which the layer puts in the request's extensions.
///
/// Cloning is cheap (reference counts, no allocation). It serializes as an object of its fields (`key_id`, `account_id`, `name`,
/// `tier`, `mode`, and `scopes`, `rate_limit` and `metadata` when set), metadata included: leave internal
/// metadata out before returning it to callers. It deserializes from that form, so that a store
/// can keep it as a document. Read it in a handler from the request
/// extensions, or with the axum extractor (feature `axum`):
///
/// ```
/// use tower_api_key::{KeyId, KeyIdentity, Tier, access::{KeyMode, Scopes}};
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
#[derive(Clone, PartialEq)]
pub struct KeyIdentity(Arc<Fields>);

/// What an identity holds, behind one shared pointer: the layer clones an identity into every
/// request it accepts, and that costs one reference count.
#[derive(Clone, PartialEq, Serialize)]
struct Fields {
    key_id: KeyId,
    account_id: Box<str>,
    name: Box<str>,
    tier: Tier,
    mode: KeyMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<Scopes>,
    // Boxed together: most keys have neither, and each identity takes 8 bytes for both.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    rare: Option<Box<Rare>>,
}

/// The fields of an identity that most keys leave empty.
#[derive(Clone, Default, PartialEq, Serialize)]
struct Rare {
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<serde_json::Value>,
}

impl KeyIdentity {
    /// The identity of live key `key_id`, named `name`, of account `account_id` on `tier`, with
    /// full access.
    pub fn new(
        key_id: KeyId,
        account_id: impl AsRef<str>,
        name: impl AsRef<str>,
        tier: Tier,
    ) -> Self {
        Self(Arc::new(Fields {
            key_id,
            account_id: account_id.as_ref().into(),
            name: name.as_ref().into(),
            tier,
            mode: KeyMode::Live,
            scopes: None,
            rare: None,
        }))
    }

    /// Attaches application data (roles, a team, limits) for handlers to read.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.rare().metadata = Some(metadata);
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

    /// The same identity, limited to `limit` by [`RateLimitLayer`](crate::limit::RateLimitLayer)
    /// instead of its tier's limit.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rare().rate_limit = Some(limit);
        self
    }

    fn rare(&mut self) -> &mut Rare {
        Arc::make_mut(&mut self.0)
            .rare
            .get_or_insert_with(Box::default)
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
        self.0.rare.as_ref()?.metadata.as_ref()
    }

    /// Whether the key is a live or a test key.
    pub fn mode(&self) -> KeyMode {
        self.0.mode
    }

    /// The scopes a restricted key is limited to; `None` for a key with full access.
    pub fn scopes(&self) -> Option<&Scopes> {
        self.0.scopes.as_ref()
    }

    /// The key's own rate limit, if it has one; without, its tier's applies.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.0.rare.as_ref()?.rate_limit
    }

    /// Whether the key may do what `scope` allows: it has full access, or that scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().is_none_or(|scopes| scopes.contains(scope))
    }

    /// The scope check of [`RequireScopeLayer`](crate::access::RequireScopeLayer) and the `Scoped`
    /// extractor: `Ok` if the key [has](KeyIdentity::has_scope) `scope`, else
    /// [`AuthError::InsufficientScope`] (`403`).
    pub fn require_scope(&self, scope: &str) -> Result<(), AuthError> {
        if self.has_scope(scope) {
            return Ok(());
        }
        Err(AuthError::InsufficientScope {
            scope: Cow::Owned(scope.to_owned()),
        })
    }

    /// The mode check of [`RequireModeLayer`](crate::access::RequireModeLayer) and the `LiveKey` and
    /// `TestKey` extractors: `Ok` if the key is of mode `required`, else
    /// [`AuthError::WrongMode`] (`403`).
    pub fn require_mode(&self, required: KeyMode) -> Result<(), AuthError> {
        if self.mode() == required {
            return Ok(());
        }
        Err(AuthError::WrongMode { required })
    }
}

impl Serialize for KeyIdentity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// From the form it serializes to: `key_id`, `account_id`, `name` and `tier` are required;
/// `mode` is `live` when absent; `scopes` (valid by [`Scopes::new`], else an error),
/// `rate_limit` and `metadata` are optional (a `metadata` of `null` is kept as `null`).
/// Unknown fields are ignored.
///
/// ```
/// use tower_api_key::{access::KeyMode, KeyIdentity};
///
/// let json = r#"{"key_id":"key_1","account_id":"acct_42","name":"ci","tier":"pro","mode":"test","scopes":["iocs:read"]}"#;
/// let identity: KeyIdentity = serde_json::from_str(json).unwrap();
/// assert_eq!(identity.mode(), KeyMode::Test);
/// assert!(identity.has_scope("iocs:read"));
/// assert_eq!(serde_json::to_string(&identity).unwrap(), json);
/// ```
impl<'de> Deserialize<'de> for KeyIdentity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Form {
            key_id: KeyId,
            account_id: String,
            name: String,
            tier: Tier,
            #[serde(default)]
            mode: KeyMode,
            #[serde(default)]
            scopes: Option<Vec<String>>,
            #[serde(default)]
            rate_limit: Option<RateLimit>,
            #[serde(default, deserialize_with = "present")]
            metadata: Option<serde_json::Value>,
        }

        /// A field that is present, even as `null`.
        fn present<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<serde_json::Value>, D::Error> {
            serde_json::Value::deserialize(deserializer).map(Some)
        }

        let form = Form::deserialize(deserializer)?;
        let mut identity =
            Self::new(form.key_id, form.account_id, form.name, form.tier).with_mode(form.mode);
        if let Some(scopes) = form.scopes {
            let scopes = Scopes::new(scopes).map_err(serde::de::Error::custom)?;
            identity = identity.with_scopes(scopes);
        }
        if let Some(limit) = form.rate_limit {
            identity = identity.with_rate_limit(limit);
        }
        if let Some(metadata) = form.metadata {
            identity = identity.with_metadata(metadata);
        }
        Ok(identity)
    }
}

impl fmt::Debug for KeyIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyIdentity")
            .field("key_id", &self.0.key_id)
            .field("account_id", &self.account_id())
            .field("name", &self.name())
            .field("tier", &self.0.tier)
            .field("mode", &self.0.mode)
            .field("scopes", &self.scopes())
            .field("rate_limit", &self.rate_limit())
            .field("metadata", &self.metadata())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> KeyIdentity {
        identity_on(Tier::FREE)
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

    #[test]
    fn identity_reads_back_each_of_its_texts() {
        let identity = KeyIdentity::new(KeyId::new("key_é"), "acct_ü", "naïve name", Tier::PRO);
        assert_eq!(identity.key_id().as_str(), "key_é");
        assert_eq!(identity.account_id(), "acct_ü");
        assert_eq!(identity.name(), "naïve name");
        let empty = KeyIdentity::new(KeyId::new(""), "", "", Tier::FREE);
        assert_eq!(
            (empty.key_id().as_str(), empty.account_id(), empty.name()),
            ("", "", "")
        );
    }

    #[test]
    fn identity_keeps_free_pro_and_other_tiers() {
        for tier in [Tier::FREE, Tier::PRO, Tier::new("enterprise")] {
            let identity = KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", tier.clone());
            assert_eq!(identity.tier(), &tier);
        }
        let named = KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", Tier::new("pro"));
        assert_eq!(named, identity_on(Tier::PRO));
    }

    #[test]
    fn tiers_compare_hash_and_serialize_as_their_names() {
        use std::collections::HashSet;
        let owned = Tier::new(String::from("pro"));
        assert_eq!(owned, Tier::PRO);
        assert!(HashSet::from([Tier::PRO]).contains(&owned));
        assert_eq!(serde_json::to_string(&owned).unwrap(), r#""pro""#);
        assert_eq!(serde_json::from_str::<Tier>(r#""pro""#).unwrap(), Tier::PRO);
        assert_eq!(format!("{owned:?}"), r#"Tier("pro")"#);
    }

    fn identity_on(tier: Tier) -> KeyIdentity {
        KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", tier)
    }

    #[test]
    fn builders_keep_the_other_fields() {
        let identity = identity_on(Tier::new("enterprise"))
            .with_scopes(Scopes::new(["iocs:read"]).unwrap())
            .with_metadata(serde_json::json!({"team": "platform"}))
            .with_mode(KeyMode::Test)
            .with_key_id(KeyId::new("key_2"));
        assert_eq!(identity.key_id().as_str(), "key_2");
        assert_eq!(identity.account_id(), "acct");
        assert_eq!(identity.name(), "ci");
        assert_eq!(identity.tier().as_str(), "enterprise");
        assert_eq!(identity.mode(), KeyMode::Test);
        assert!(identity.has_scope("iocs:read") && !identity.has_scope("iocs:write"));
        assert_eq!(identity.metadata().unwrap()["team"], "platform");
    }

    #[test]
    fn changing_a_clone_leaves_the_original_as_it_was() {
        let original = identity().with_metadata(serde_json::json!(1));
        let changed = original
            .clone()
            .with_metadata(serde_json::json!(2))
            .with_scopes(Scopes::new(["a"]).unwrap());
        assert_eq!(original.metadata(), Some(&serde_json::json!(1)));
        assert!(original.scopes().is_none());
        assert_eq!(changed.metadata(), Some(&serde_json::json!(2)));
    }

    #[test]
    fn identities_differ_in_any_field() {
        let base = identity();
        let others = [
            KeyIdentity::new(KeyId::new("key_2"), "acct", "ci", Tier::FREE),
            KeyIdentity::new(KeyId::new("key_1"), "acct2", "ci", Tier::FREE),
            KeyIdentity::new(KeyId::new("key_1"), "acct", "ci2", Tier::FREE),
            identity_on(Tier::PRO),
            identity().with_mode(KeyMode::Test),
            identity().with_scopes(Scopes::new(["a"]).unwrap()),
            identity().with_metadata(serde_json::json!({})),
        ];
        for other in others {
            assert_ne!(base, other);
        }
        assert_eq!(base, identity());
    }

    #[test]
    fn key_id_of_an_identity_is_equal_and_hashes_equal_to_the_same_id() {
        use std::collections::HashSet;
        let identity = identity();
        let from_identity = identity.key_id().clone();
        assert_eq!(from_identity, KeyId::new("key_1"));
        assert_eq!(format!("{from_identity:?}"), r#"KeyId("key_1")"#);
        assert_eq!(serde_json::to_string(&from_identity).unwrap(), r#""key_1""#);
        let ids: HashSet<KeyId> = [KeyId::new("key_1")].into();
        assert!(ids.contains(&from_identity));
        assert!(KeyId::new("key_0") < from_identity && from_identity < KeyId::new("key_2"));
    }

    #[test]
    fn identity_round_trips_through_json() {
        let identities = [
            identity(),
            identity_on(Tier::new("enterprise"))
                .with_mode(KeyMode::Test)
                .with_scopes(Scopes::new(["keys:write", "iocs:read"]).unwrap())
                .with_rate_limit(RateLimit::per_minute(7).burst(3))
                .with_metadata(serde_json::json!({"team": "platform", "n": [1, 2]})),
            identity().with_metadata(serde_json::Value::Null),
        ];
        for identity in identities {
            let json = serde_json::to_string(&identity).unwrap();
            let read: KeyIdentity = serde_json::from_str(&json).unwrap();
            assert_eq!(read, identity, "{json}");
            assert_eq!(serde_json::to_string(&read).unwrap(), json);
        }
    }

    #[test]
    fn identity_refuses_invalid_scopes_and_missing_fields() {
        let bad_scopes = r#"{"key_id":"k","account_id":"a","name":"n","tier":"free","scopes":[]}"#;
        assert!(serde_json::from_str::<KeyIdentity>(bad_scopes).is_err());
        let no_account = r#"{"key_id":"k","name":"n","tier":"free"}"#;
        assert!(serde_json::from_str::<KeyIdentity>(no_account).is_err());
        let minimal = r#"{"key_id":"k","account_id":"a","name":"n","tier":"free"}"#;
        let read: KeyIdentity = serde_json::from_str(minimal).unwrap();
        assert_eq!(read.mode(), KeyMode::Live);
        assert_eq!((read.scopes(), read.metadata()), (None, None));
    }

    #[test]
    fn identity_serializes_every_field_by_name() {
        let identity = identity_on(Tier::new("enterprise"))
            .with_metadata(serde_json::json!({"team": "platform"}));
        assert_eq!(
            serde_json::to_value(identity).unwrap(),
            serde_json::json!({
                "key_id": "key_1",
                "account_id": "acct",
                "name": "ci",
                "tier": "enterprise",
                "mode": "live",
                "metadata": {"team": "platform"},
            })
        );
    }
}
