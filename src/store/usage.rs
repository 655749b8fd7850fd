//! Last-used times for remote stores: queued by `record_use`, written by a background task, so
//! that the request never waits for the write.

use std::collections::HashMap;
use std::future::Future;
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::StoreError;
use crate::identity::KeyId;

/// How many uses may wait for the writer; past that, uses are dropped (a last-used time is a
/// hint, and the next use after the interval records it again).
const CAPACITY: usize = 4096;

/// The sending half: cheap to call from `KeyStore::record_use`.
#[derive(Clone, Debug)]
pub(crate) struct UsageQueue {
    sender: mpsc::Sender<(KeyId, SystemTime)>,
}

impl UsageQueue {
    /// Starts the writer on the current tokio runtime. It applies `write` to each key's latest
    /// use, coalescing uses that arrive while it writes, and stops when every queue is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub(crate) fn spawn<W, F>(write: W) -> Self
    where
        W: Fn(KeyId, SystemTime) -> F + Send + 'static,
        F: Future<Output = Result<(), StoreError>> + Send,
    {
        let (sender, mut receiver) = mpsc::channel::<(KeyId, SystemTime)>(CAPACITY);
        tokio::spawn(async move {
            let mut batch: HashMap<KeyId, SystemTime> = HashMap::new();
            while let Some((key_id, at)) = receiver.recv().await {
                batch.insert(key_id, at);
                while let Ok((key_id, at)) = receiver.try_recv() {
                    let latest = batch.entry(key_id).or_insert(at);
                    *latest = (*latest).max(at);
                }
                for (key_id, at) in batch.drain() {
                    if let Err(error) = write(key_id, at).await {
                        tracing::warn!(
                            error = &error as &dyn std::error::Error,
                            "could not record an API key's last use"
                        );
                    }
                }
            }
        });
        Self { sender }
    }

    /// Queues a use without waiting.
    pub(crate) fn push(&self, key_id: &KeyId, at: SystemTime) {
        // A full queue drops the use: see `CAPACITY`.
        let _ = self.sender.try_send((key_id.clone(), at));
    }
}
