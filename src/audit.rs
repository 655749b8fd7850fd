//! What happened to keys, and who did it: the audit events that [`KeyManager`] emits.
//!
//! Every change a [`KeyManager`] makes to a key (created, rotated, revoked, deleted, disabled,
//! enabled, imported, reported leaked) is an [`AuditEvent`]: the time, the account, the key id,
//! the [`Actor`] and the [`AuditAction`]. Never a secret: an event holds no key, no digest and no
//! hint.
//!
//! By default each event is a `tracing` event at `INFO` level, target `tower_api_key::audit`
//! ([`TracingAudit`]). Give the manager a sink of your own to keep them elsewhere (a table, a
//! queue): any `Fn(&AuditEvent)`. A sink is called after the change is made, in the task that
//! made it, so it should not block: send to a channel to do slow work.
//!
//! Name who acts with [`KeyManager::acting_as`]: the keys API names the calling key, the
//! secret-scanning endpoint names the scanner; otherwise events name [`Actor::Application`].
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use tower_api_key::{audit::{Actor, AuditAction, AuditEvent}, KeyManager, MemoryKeyStore, NewKey, Tier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let events = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&events);
//! let keys = KeyManager::new(MemoryKeyStore::new())
//!     .audit(move |event: &AuditEvent| sink.lock().unwrap().push(event.clone()));
//!
//! let created = keys.create(NewKey::new("acct_42", Tier::FREE, "ci")).await?;
//! let admin = keys.acting_as(Actor::User("ada@example.com".into()));
//! admin.revoke("acct_42", &created.info.id).await?;
//!
//! let events = events.lock().unwrap();
//! assert_eq!(events[0].action, AuditAction::Created);
//! assert_eq!(events[0].actor, Actor::Application);
//! assert_eq!(events[1].action, AuditAction::Revoked);
//! assert_eq!(events[1].actor, Actor::User("ada@example.com".into()));
//! assert_eq!(events[1].key_id, created.info.id);
//! # Ok(())
//! # }
//! ```
//!
//! [`KeyManager`]: crate::KeyManager
//! [`KeyManager::acting_as`]: crate::KeyManager::acting_as

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::identity::KeyId;

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When it happened, by the manager's clock.
    #[serde(serialize_with = "serialize_time")]
    pub at: SystemTime,
    /// What happened.
    pub action: AuditAction,
    /// The account the key belongs to.
    pub account_id: String,
    /// The key it happened to.
    pub key_id: KeyId,
    /// Who did it.
    pub actor: Actor,
}

/// What happened to a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
#[non_exhaustive]
pub enum AuditAction {
    /// The key was created.
    Created,
    /// The key was rotated: `replacement` is the new key, and this one expires after its grace
    /// period.
    Rotated {
        /// The key that replaces it.
        replacement: KeyId,
    },
    /// The key was revoked.
    Revoked,
    /// The key and its record were deleted.
    Deleted,
    /// The key was disabled: refused until it is enabled again.
    Disabled,
    /// The key was enabled again.
    Enabled,
    /// The key was imported from another system.
    Imported,
    /// A secret scanner reported the key public, and it was revoked.
    ReportedLeaked {
        /// Where the scanner found it (a commit's URL), if it said.
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
}

impl AuditAction {
    /// The action's name: `created`, `rotated`, `revoked`, `deleted`, `disabled`, `enabled`,
    /// `imported` or `reported_leaked`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Rotated { .. } => "rotated",
            Self::Revoked => "revoked",
            Self::Deleted => "deleted",
            Self::Disabled => "disabled",
            Self::Enabled => "enabled",
            Self::Imported => "imported",
            Self::ReportedLeaked { .. } => "reported_leaked",
        }
    }
}

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "id")]
#[non_exhaustive]
pub enum Actor {
    /// The application itself, when it named no one (the default).
    Application,
    /// A request authenticated by this key (the keys API names the calling key).
    Key(KeyId),
    /// A person or tool the application names: a signed-in user, an operator, the command line.
    User(String),
    /// A secret scanner that reported the key public (GitHub's secret scanning).
    SecretScanner,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Application => f.write_str("application"),
            Self::Key(key_id) => write!(f, "key:{key_id}"),
            Self::User(name) => write!(f, "user:{name}"),
            Self::SecretScanner => f.write_str("secret_scanner"),
        }
    }
}

/// Where a [`KeyManager`](crate::KeyManager) sends its [`AuditEvent`]s. Implemented for every
/// `Fn(&AuditEvent) + Send + Sync + 'static`.
pub trait AuditSink: Send + Sync + 'static {
    /// Receives one event, after the change it describes was made.
    fn record(&self, event: &AuditEvent);
}

impl<F: Fn(&AuditEvent) + Send + Sync + 'static> AuditSink for F {
    fn record(&self, event: &AuditEvent) {
        self(event)
    }
}

/// The default sink: each event as a `tracing` event at `INFO` level, target
/// `tower_api_key::audit`, with the fields `action`, `account_id`, `key_id`, `actor` (and
/// `replacement` or `url` where the action has them).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingAudit;

impl AuditSink for TracingAudit {
    fn record(&self, event: &AuditEvent) {
        let (replacement, url) = match &event.action {
            AuditAction::Rotated { replacement } => (Some(replacement.as_str()), None),
            AuditAction::ReportedLeaked { url } => (None, url.as_deref()),
            _ => (None, None),
        };
        tracing::info!(
            target: "tower_api_key::audit",
            action = event.action.name(),
            account_id = %event.account_id,
            key_id = %event.key_id,
            actor = %event.actor,
            replacement,
            url,
            "key {}",
            event.action.name(),
        );
    }
}

fn serialize_time<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    crate::store::times::serialize(&Some(*at), serializer)
}

/// A shared sink, as the manager holds it.
pub(crate) type SharedSink = Arc<dyn AuditSink>;
