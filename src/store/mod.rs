//! Where keys are kept: the [`KeyStore`] trait and its implementations.
//!
//! A store maps a [`LookupId`] to a [`KeyRecord`]. It never sees a plaintext key and never
//! compares secrets: the layer compares the record's [`KeyDigest`] with the presented key's in
//! constant time, so a store cannot get that wrong.

mod memory;

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

pub use self::memory::MemoryKeyStore;
use crate::identity::KeyIdentity;
use crate::key::{KeyDigest, LookupId};

/// A source of API key records: the read path the layer needs.
///
/// Implement it over any database or service; a store is a few dozen lines. The layer calls
/// [`KeyStore::find`] once per request that carries a well-formed key, and decides from the
/// record: the store only fetches.
///
/// ```
/// use async_trait::async_trait;
/// use tower_api_key::{KeyRecord, KeyStore, LookupId, StoreError};
///
/// /// A store that fails closed: every lookup is an error, so every request gets a 503.
/// struct Maintenance;
///
/// #[async_trait]
/// impl KeyStore for Maintenance {
///     async fn find(&self, _lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
///         Err(StoreError::new("the key database is in maintenance"))
///     }
/// }
///
/// // Object-safe: a layer can hold any store behind an `Arc<dyn KeyStore>`.
/// let store: std::sync::Arc<dyn KeyStore> = std::sync::Arc::new(Maintenance);
/// let _layer = tower_api_key::ApiKeyLayer::new(store);
/// ```
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record stored under `lookup_id`, or `None` if there is none (unknown or deleted key).
    ///
    /// Return revoked and expired records too: the layer answers `expired_api_key` for them.
    /// An error makes the layer answer `503`, never `401` and never a pass.
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError>;
}

#[async_trait]
impl<S: KeyStore + ?Sized> KeyStore for Arc<S> {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        (**self).find(lookup_id).await
    }
}

/// What a store keeps for one key.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The SHA-256 digest of the key.
    pub digest: KeyDigest,
    /// Who the key authenticates as.
    pub identity: KeyIdentity,
    /// When the key stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
}

impl KeyRecord {
    /// An active key that never expires.
    pub fn new(digest: KeyDigest, identity: KeyIdentity) -> Self {
        Self {
            digest,
            identity,
            expires_at: None,
            revoked_at: None,
        }
    }

    /// The same record, expiring at `expires_at`.
    pub fn with_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// The same record, revoked at `revoked_at`.
    pub fn with_revoked_at(mut self, revoked_at: SystemTime) -> Self {
        self.revoked_at = Some(revoked_at);
        self
    }

    /// Whether the key works at `now`: neither revoked nor expired.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires_at| now < expires_at)
    }
}

/// A store could not answer: the layer responds `503`, failing closed.
///
/// Its message is for logs, never sent to the client.
#[derive(Debug)]
pub struct StoreError(Box<dyn Error + Send + Sync>);

impl StoreError {
    /// Wraps the backend's error (or a message).
    pub fn new(source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self(source.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key store unavailable: {}", self.0)
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{KeyId, Tier};

    fn record() -> KeyRecord {
        let identity = KeyIdentity::new(KeyId::new("key_1"), "acct", "ci", Tier::FREE);
        KeyRecord::new(KeyDigest::of("sk_live_x"), identity)
    }

    #[test]
    fn new_record_is_active() {
        assert!(record().is_active(SystemTime::now()));
    }

    #[test]
    fn revoked_record_is_inactive() {
        let now = SystemTime::now();
        assert!(!record().with_revoked_at(now).is_active(now));
    }

    #[test]
    fn record_expires_at_its_expiry() {
        let now = SystemTime::now();
        let record = record().with_expires_at(now + Duration::from_secs(1));
        assert!(record.is_active(now));
        assert!(!record.is_active(now + Duration::from_secs(1)));
    }

    #[test]
    fn store_error_keeps_its_source() {
        let error = StoreError::new("connection refused");
        assert_eq!(
            error.to_string(),
            "key store unavailable: connection refused"
        );
        assert_eq!(error.source().unwrap().to_string(), "connection refused");
    }
}
