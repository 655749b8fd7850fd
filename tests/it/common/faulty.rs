//! Faults on demand, for tests that keep a service under load while its key store fails, hangs
//! and comes back: a store wrapper that fails or hangs when told, a TCP proxy that does the same
//! to a real server's connections, and a wrapper that tells which store calls are under way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_api_key::{KeyRecord, KeyStore, LookupId, StoreError};

/// What a faulty store or proxy does to the calls that reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: calls go through.
    None,
    /// Calls fail at once: the store answers an error, the proxy closes connections.
    Fail,
    /// Calls wait, answering nothing, until the fault changes.
    Hang,
}

/// A store that fails or hangs when the test says so, and otherwise asks `inner`.
///
/// A lookup that hangs waits until the fault changes, then goes on as the new fault says: after
/// [`FaultyStore::resume`] it answers from `inner`. It has no `find_now`, so the layer always
/// waits for its `find`, as it would for a remote store.
#[derive(Clone)]
pub struct FaultyStore<S> {
    inner: S,
    fault: Arc<watch::Sender<Fault>>,
    lookups: Arc<AtomicUsize>,
    hanging: Arc<AtomicUsize>,
}

impl<S: KeyStore> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fault: Arc::new(watch::Sender::new(Fault::None)),
            lookups: Arc::default(),
            hanging: Arc::default(),
        }
    }

    pub fn fail(&self) {
        self.fault.send_replace(Fault::Fail);
    }

    pub fn hang(&self) {
        self.fault.send_replace(Fault::Hang);
    }

    pub fn resume(&self) {
        self.fault.send_replace(Fault::None);
    }

    /// Lookups made so far, whatever their outcome.
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Lookups waiting now for a hang to end.
    pub fn hanging(&self) -> usize {
        self.hanging.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for FaultyStore<S> {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut fault = self.fault.subscribe();
        loop {
            let now = *fault.borrow_and_update();
            match now {
                Fault::None => return self.inner.find(lookup_id).await,
                Fault::Fail => return Err(StoreError::new("injected fault: the store is down")),
                Fault::Hang => {
                    let _waiting = Count::up(&self.hanging);
                    // The sender lives as long as this store does.
                    let _ = fault.changed().await;
                }
            }
        }
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        self.inner.record_use(record, at);
    }
}

/// Adds one to a counter for as long as it lives, even if the future holding it is dropped.
struct Count<'a>(&'a AtomicUsize);

impl<'a> Count<'a> {
    fn up(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A TCP proxy on 127.0.0.1 in front of a real server that can refuse service, hang and resume.
///
/// - [`fail`](FaultProxy::fail) closes every relayed connection and closes each new one as soon
///   as it is accepted, as a server that is going down does.
/// - [`hang`](FaultProxy::hang) stops relaying: connections, old and new, stay open and silent.
/// - [`resume`](FaultProxy::resume) relays new connections again; the ones held open during a
///   hang are closed, so clients reconnect as they would to a restarted server.
pub struct FaultProxy {
    pub address: SocketAddr,
    fault: watch::Sender<Fault>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        assert!(upstream.ip().is_loopback(), "tests only talk to loopback");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let fault = watch::Sender::new(Fault::None);
        let watcher = fault.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, watcher.clone()));
            }
        });
        Self { address, fault }
    }

    pub fn fail(&self) {
        self.fault.send_replace(Fault::Fail);
    }

    pub fn hang(&self) {
        self.fault.send_replace(Fault::Hang);
    }

    pub fn resume(&self) {
        self.fault.send_replace(Fault::None);
    }
}

/// Relays one connection while there is no fault; any change of fault ends it (after holding it
/// open and silent for as long as a hang lasts).
async fn relay(mut client: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Fault>) {
    let now = *fault.borrow_and_update();
    match now {
        Fault::Fail => return,
        Fault::Hang => return hold_until_change(&mut fault).await,
        Fault::None => {}
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = fault.changed() => {
            let now = *fault.borrow_and_update();
            if now == Fault::Hang {
                hold_until_change(&mut fault).await;
            }
        }
    }
}

/// Waits for the next change of fault; a dropped proxy counts as one.
async fn hold_until_change(fault: &mut watch::Receiver<Fault>) {
    let _ = fault.changed().await;
}

/// A transparent wrapper that knows which of its store calls are under way, and since when:
/// each call is stamped with the value of `clock` (a counter the test advances) when it began.
///
/// A cache in front of it lets several requests share one call, so a request may get the answer
/// of a call that began before the request was sent; [`InFlight::oldest`] tells how far back.
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    clock: Arc<AtomicUsize>,
    /// How many calls under way began at each stamp.
    calls: Arc<Mutex<BTreeMap<usize, usize>>>,
}

impl<S: KeyStore> InFlight<S> {
    pub fn new(inner: S, clock: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            clock,
            calls: Arc::default(),
        }
    }

    /// The earliest stamp of the calls under way, if any is.
    pub fn oldest(&self) -> Option<usize> {
        let calls = self.calls.lock().unwrap();
        calls.keys().next().copied()
    }

    /// The wrapped store, to call without being counted.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for InFlight<S> {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        let _call = Call::begin(&self.calls, self.clock.load(Ordering::SeqCst));
        self.inner.find(lookup_id).await
    }

    fn find_now(&self, lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        self.inner.find_now(lookup_id)
    }

    fn record_use(&self, record: &KeyRecord, at: SystemTime) {
        self.inner.record_use(record, at);
    }
}

/// One call under way; it ends when dropped, finished or cancelled.
struct Call<'a> {
    calls: &'a Mutex<BTreeMap<usize, usize>>,
    stamp: usize,
}

impl<'a> Call<'a> {
    fn begin(calls: &'a Mutex<BTreeMap<usize, usize>>, stamp: usize) -> Self {
        *calls.lock().unwrap().entry(stamp).or_default() += 1;
        Self { calls, stamp }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = calls.get_mut(&self.stamp) {
            *count -= 1;
            if *count == 0 {
                calls.remove(&self.stamp);
            }
        }
    }
}

/// A memory store whose listings and credit spends fail, as a database that goes down after
/// authentication: keys are created, found and managed one by one as usual.
#[derive(Clone, Default)]
pub struct ListingsAndSpendsFail(tower_api_key::MemoryKeyStore);

const DOWN: &str = "connection refused by 127.0.0.1:5432";

#[async_trait]
impl KeyStore for ListingsAndSpendsFail {
    async fn find(&self, lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        self.0.find(lookup_id).await
    }
}

#[async_trait]
impl tower_api_key::store::WritableKeyStore for ListingsAndSpendsFail {
    async fn create(
        &self,
        record: KeyRecord,
        quota: tower_api_key::store::Quota,
    ) -> Result<(), tower_api_key::store::CreateError> {
        self.0.create(record, quota).await
    }

    async fn list(&self, _account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Err(StoreError::new(DOWN))
    }

    async fn get(
        &self,
        account_id: &str,
        key_id: &tower_api_key::KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.0.get(account_id, key_id).await
    }

    async fn revoke(
        &self,
        account_id: &str,
        key_id: &tower_api_key::KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.0.revoke(account_id, key_id, at).await
    }

    async fn delete(
        &self,
        account_id: &str,
        key_id: &tower_api_key::KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.0.delete(account_id, key_id).await
    }

    async fn spend_credits(
        &self,
        _key_id: &tower_api_key::KeyId,
        _cost: u64,
        _now: SystemTime,
    ) -> Result<Option<tower_api_key::limit::Spend>, StoreError> {
        Err(StoreError::new(DOWN))
    }
}
