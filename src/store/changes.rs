//! Push invalidation: how a shared store's change messages reach a [`CachedKeyStore`](super::CachedKeyStore).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use super::cache::Shared;
use crate::key::LookupId;

type Run = Box<dyn FnOnce(Invalidator) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Push invalidation: the listening side of a shared store, which tells every instance's
/// [`CachedKeyStore`](super::CachedKeyStore) which keys changed, so that a key revoked through
/// one instance is refused by all of them at once, not after the cache's TTL.
///
/// The shipped stores make one: `PgKeyStore::changes` (through `LISTEN`/`NOTIFY`, fed by a
/// trigger, so a change made with plain SQL is pushed too) and `RedisKeyStore::changes`
/// (through pub/sub). Hand it to
/// [`CachedKeyStore::push_invalidation`](super::CachedKeyStore::push_invalidation), which runs
/// it in the background: each change heard evicts that key, and while the feed is not listening
/// (before its first subscription, after losing its connection, until it has subscribed again)
/// the cache serves nothing it holds, so a change it could have missed is never trusted.
///
/// **The guarantee**: a lookup that starts after the store's message about a change has reached
/// an instance sees the change; an instance whose feed is not listening asks the store on every
/// lookup. A feed connection that closes is noticed at once; one that hangs without closing is
/// found out by the ping the shipped feeds send after each silent second, within a second plus
/// the store's timeout, and only in that window can a change go unseen. The TTL stays as a
/// backstop.
///
/// A store of your own can push too: build a feed from its listening loop. The loop should run
/// until [`Invalidator::is_closed`] (the cache is gone), reconnect by itself, and call
/// [`lost`](Invalidator::lost) and [`listening`](Invalidator::listening) around every gap.
///
/// ```
/// use tower_api_key::{MemoryKeyStore, store::{CachedKeyStore, ChangeFeed}};
///
/// // A feed from some message bus: `listening` once subscribed, `changed` for every message,
/// // `lost` when the subscription drops (then subscribe again, and say `listening` again).
/// let feed = ChangeFeed::new(|invalidator| async move {
///     invalidator.listening();
///     // while let Some(lookup_id) = subscription.next().await { invalidator.changed(&lookup_id) }
///     invalidator.lost();
/// });
/// let store = CachedKeyStore::new(MemoryKeyStore::new()).push_invalidation(feed);
/// ```
pub struct ChangeFeed(Run);

impl ChangeFeed {
    /// A feed whose loop is `run`.
    pub fn new<F, Fut>(run: F) -> Self
    where
        F: FnOnce(Invalidator) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Box::new(move |invalidator| Box::pin(run(invalidator))))
    }

    /// Runs the feed on the tokio runtime. However its loop ends (it returns, panics, or the
    /// runtime drops it), the cache is told the feed is [`lost`](Invalidator::lost), so that it
    /// never trusts a feed that no longer runs.
    pub(crate) fn start(self, runtime: &tokio::runtime::Handle, invalidator: Invalidator) {
        let guard = LostOnDrop(invalidator.clone());
        let run = (self.0)(invalidator);
        runtime.spawn(async move {
            let _guard = guard;
            run.await;
        });
    }
}

impl fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeFeed").finish_non_exhaustive()
    }
}

/// Tells the cache its feed is lost when dropped.
struct LostOnDrop(Invalidator);

impl Drop for LostOnDrop {
    fn drop(&mut self) {
        self.0.lost();
    }
}

/// What a [`ChangeFeed`] tells its cache. Cheap to clone; it does not keep the cache alive.
#[derive(Clone)]
pub struct Invalidator {
    cache: Weak<Shared>,
}

impl Invalidator {
    pub(crate) fn new(cache: &Arc<Shared>) -> Self {
        Self {
            cache: Arc::downgrade(cache),
        }
    }

    /// The record of `lookup_id` changed in the store: evicts it, lookups in flight included.
    pub fn changed(&self, lookup_id: &LookupId) {
        if let Some(cache) = self.cache.upgrade() {
            cache.retire(Some(vec![*lookup_id]));
        }
    }

    /// The feed stopped listening (its connection dropped): until
    /// [`listening`](Invalidator::listening), the cache serves nothing it holds.
    pub fn lost(&self) {
        if let Some(cache) = self.cache.upgrade() {
            cache.stop_listening();
        }
    }

    /// The feed listens (again): every later change will reach [`changed`](Invalidator::changed).
    /// Call it once the subscription is confirmed. What the cache held, and lookups begun
    /// before, are dropped, since a change could have been missed meanwhile.
    pub fn listening(&self) {
        if let Some(cache) = self.cache.upgrade() {
            cache.start_listening();
        }
    }

    /// Whether the cache trusts this feed now.
    #[cfg(any(feature = "postgres", feature = "redis"))]
    fn is_listening(&self) -> bool {
        (self.cache.upgrade()).is_some_and(|cache| cache.is_listening())
    }

    /// Whether the cache is gone, so that the feed can stop.
    pub fn is_closed(&self) -> bool {
        self.cache.strong_count() == 0
    }
}

impl fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidator")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// How long a feed's connection may stay silent before the feed checks it (a ping, bounded by
/// the store's timeout): a connection that hangs without closing is found out within this plus
/// the timeout, and the cache stops serving then.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) const FEED_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a feed's `session` again and again until the cache is gone. A session connects,
/// subscribes, calls [`Invalidator::listening`], and relays changes until its connection fails
/// (an error) or the cache is gone (`Ok`). Between sessions the cache is told
/// [`lost`](Invalidator::lost), and the next attempt waits: 100 ms, doubling up to 5 s, back to
/// 100 ms after a session that listened.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) async fn resubscribe<F, Fut>(
    store: &'static str,
    invalidator: Invalidator,
    mut session: F,
) where
    F: FnMut(Invalidator) -> Fut,
    Fut: Future<Output = Result<(), crate::StoreError>> + Send + 'static,
{
    const FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
    const LONGEST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let mut wait = FIRST_WAIT;
    while !invalidator.is_closed() {
        // A task of its own, so that a session that panics (on a malformed message, say) is a
        // lost session like any other, and the feed goes on.
        let outcome = match tokio::spawn(session(invalidator.clone())).await {
            Ok(outcome) => outcome,
            Err(error) => Err(crate::StoreError::new(format!(
                "the feed's session failed: {error}"
            ))),
        };
        if invalidator.is_listening() {
            wait = FIRST_WAIT;
        }
        invalidator.lost();
        match outcome {
            Ok(()) => return,
            Err(error) => tracing::warn!(
                store,
                error = &error as &dyn std::error::Error,
                "API key change feed lost; cached keys are not served until it listens again"
            ),
        }
        // Jittered, so that instances that lost their feeds together do not all come back at once.
        tokio::time::sleep(wait.mul_f64(0.5 + jitter())).await;
        wait = (wait * 2).min(LONGEST_WAIT);
    }
}

/// A number in [0, 1), different at each call: enough to spread reconnections.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn jitter() -> f64 {
    f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 256.0
}
