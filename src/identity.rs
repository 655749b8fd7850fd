//! Who a request was authenticated as.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::AuthError;
use crate::mode::KeyMode;
use crate::scope::Scopes;

/// The public id of a key: safe to log, show in listings and use in URLs.
///
/// It is not derived from the key, so it reveals nothing about it. Cloning is cheap (one
/// reference count); ids compare, hash and serialize as their text. The id of a [`KeyIdentity`]
/// shares that identity's text, so a clone of it keeps the account id and name in memory too.
#[derive(Clone)]
pub struct KeyId {
    /// The id, followed in the id of a [`KeyIdentity`] by the identity's other text: an identity
    /// keeps all its text in this one allocation.
    text: Arc<str>,
    /// The id's length in bytes: where it ends in `text`.
    len: usize,
}

impl KeyId {
    /// Wraps an id a store assigned.
    pub fn new(id: impl Into<String>) -> Self {
        let id: String = id.into();
        Self {
            len: id.len(),
            text: id.into(),
        }
    }

    /// A new random id, `key_` followed by 32 hexadecimal digits.
    pub fn random() -> Self {
        Self::new(format!("key_{}", uuid::Uuid::new_v4().simple()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // `len` ends the id, which was whole text, so it is always a character boundary.
        self.text.get(..self.len).unwrap_or_default()
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

impl PartialEq for KeyId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for KeyId {}

impl Hash for KeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for KeyId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
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
/// Cloning is cheap (one reference count, two for a key with scopes, metadata or a tier other
/// than free and pro). It serializes as an object of its fields (`key_id`, `account_id`, `name`,
/// `tier`, `mode`, and `scopes` and `metadata` when set), metadata included: leave internal
/// metadata out before returning it to callers. Read it in a handler from the request
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
#[derive(Clone)]
pub struct KeyIdentity {
    /// The key id, whose allocation also holds the account id and then the name: a store keeps
    /// one identity per key, so one allocation per identity matters.
    key_id: KeyId,
    /// Where the account id ends in the key id's text.
    account_end: u32,
    mode: KeyMode,
    pro: bool,
    /// What most keys lack, kept apart so that they do not pay for it.
    extras: Option<Arc<Extras>>,
}

#[derive(Clone, Default, PartialEq)]
struct Extras {
    /// A tier other than free and pro, whose name may need an allocation of its own.
    other_tier: Option<Tier>,
    scopes: Option<Scopes>,
    metadata: Option<serde_json::Value>,
}

impl KeyIdentity {
    /// The identity of live key `key_id`, named `name`, of account `account_id` on `tier`, with
    /// full access.
    ///
    /// # Panics
    ///
    /// If the key id and the account id together are 4 GiB long or longer.
    pub fn new(
        key_id: KeyId,
        account_id: impl AsRef<str>,
        name: impl AsRef<str>,
        tier: Tier,
    ) -> Self {
        let (key_id, account_end) =
            identity_text(key_id.as_str(), account_id.as_ref(), name.as_ref());
        let pro = tier == Tier::PRO;
        let other_tier = (tier != Tier::FREE && !pro).then_some(tier);
        Self {
            key_id,
            account_end,
            mode: KeyMode::Live,
            pro,
            extras: other_tier.map(|other_tier| {
                Arc::new(Extras {
                    other_tier: Some(other_tier),
                    ..Extras::default()
                })
            }),
        }
    }

    fn extras_mut(&mut self) -> &mut Extras {
        Arc::make_mut(self.extras.get_or_insert_with(Arc::default))
    }

    /// Attaches application data (roles, a team, limits) for handlers to read.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.extras_mut().metadata = Some(metadata);
        self
    }

    /// The same identity, for a key of `mode`.
    pub fn with_mode(mut self, mode: KeyMode) -> Self {
        self.mode = mode;
        self
    }

    /// The same identity, restricted to `scopes`.
    pub fn with_scopes(mut self, scopes: Scopes) -> Self {
        self.extras_mut().scopes = Some(scopes);
        self
    }

    /// The same identity for another key, as a rotation's replacement has.
    pub(crate) fn with_key_id(mut self, key_id: KeyId) -> Self {
        (self.key_id, self.account_end) =
            identity_text(key_id.as_str(), self.account_id(), self.name());
        self
    }

    /// The key's public id.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The account the key belongs to.
    pub fn account_id(&self) -> &str {
        let text = &self.key_id.text;
        text.get(self.key_id.len..self.account_end as usize)
            .unwrap_or_default()
    }

    /// The name its owner gave the key.
    pub fn name(&self) -> &str {
        let text = &self.key_id.text;
        text.get(self.account_end as usize..).unwrap_or_default()
    }

    /// The account's tier.
    pub fn tier(&self) -> &Tier {
        static FREE: Tier = Tier::FREE;
        static PRO: Tier = Tier::PRO;
        match self.extras().and_then(|extras| extras.other_tier.as_ref()) {
            Some(tier) => tier,
            None if self.pro => &PRO,
            None => &FREE,
        }
    }

    /// Application data attached to the key, if any.
    pub fn metadata(&self) -> Option<&serde_json::Value> {
        self.extras()?.metadata.as_ref()
    }

    /// Whether the key is a live or a test key.
    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    /// The scopes a restricted key is limited to; `None` for a key with full access.
    pub fn scopes(&self) -> Option<&Scopes> {
        self.extras()?.scopes.as_ref()
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

    fn extras(&self) -> Option<&Extras> {
        self.extras.as_deref()
    }

    /// The fields as they serialize and compare.
    fn fields(&self) -> IdentityFields<'_> {
        IdentityFields {
            key_id: self.key_id(),
            account_id: self.account_id(),
            name: self.name(),
            tier: self.tier(),
            mode: self.mode,
            scopes: self.scopes(),
            metadata: self.metadata(),
        }
    }
}

/// An identity's text in one allocation: the key id, then the account id, then the name; and where
/// the account id ends.
fn identity_text(key_id: &str, account_id: &str, name: &str) -> (KeyId, u32) {
    let account_end = u32::try_from(key_id.len() + account_id.len())
        .expect("an API key identity's ids are shorter than 4 GiB");
    let key_id = KeyId {
        text: [key_id, account_id, name].concat().into(),
        len: key_id.len(),
    };
    (key_id, account_end)
}

#[derive(PartialEq, Serialize)]
struct IdentityFields<'a> {
    key_id: &'a KeyId,
    account_id: &'a str,
    name: &'a str,
    tier: &'a Tier,
    mode: KeyMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<&'a Scopes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a serde_json::Value>,
}

impl PartialEq for KeyIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.fields() == other.fields()
    }
}

impl Serialize for KeyIdentity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.fields().serialize(serializer)
    }
}

impl fmt::Debug for KeyIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = self.fields();
        f.debug_struct("KeyIdentity")
            .field("key_id", fields.key_id)
            .field("account_id", &fields.account_id)
            .field("name", &fields.name)
            .field("tier", fields.tier)
            .field("mode", &fields.mode)
            .field("scopes", &fields.scopes)
            .field("metadata", &fields.metadata)
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
        assert!(
            named.extras.is_none(),
            "a standard tier needs no allocation of its own"
        );
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
            // The same text split differently between the ids and the name.
            KeyIdentity::new(KeyId::new("key_1a"), "cct", "ci", Tier::FREE),
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
