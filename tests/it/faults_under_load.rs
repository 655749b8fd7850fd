//! Faults under load: 10,000 requests over 64 keep-alive HTTP/1.1 connections to a real server
//! on 127.0.0.1, with keys of every kind, while the key store fails, hangs and recovers in turn.
//! Every answer must be the right one for the moment it was given.
//!
//! Each request notes the store's phase when it was sent and when it was answered (the
//! [`Timeline`]'s epochs); it may get the answer of any phase in between, and of no other. A
//! phase change is an epoch of its own in which both phases hold, since a fault cannot be
//! switched on at the same instant everywhere. With a cache in front, a request may also share
//! a store call that began before it was sent (the cache makes one call per key), so its window
//! opens at the oldest call under way when it was sent. When a fault ends, the store is
//! recovering (both phases hold) until it has answered a probe; from then on it is up, and every
//! answer must be exactly right again, with nothing restarted.
//!
//! The rules: a pass only for a valid key, and only with its own identity; while the store is
//! down (failing, or hung behind a timeout) a key that reaches it gets `503
//! authentication_unavailable`, or, with a cache in front, what the cache holds (a pass only for
//! a valid key); a bad checksum or no key never reaches the store and always gets its `401`.
//!
//! ```text
//! cargo test --test it faults_under_load:: -- --nocapture
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo test --all-features --test it faults_under_load:: -- --nocapture
//! ```

use crate::common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use common::faulty::FaultyStore;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_api_key::{
    key::KeyFormat, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier,
};

const REQUESTS: usize = 10_000;
const CONNECTIONS: usize = 64;
const KEYS: usize = 1_000;
/// Fail, recover, hang, recover: this many times during a run.
const CYCLES: usize = 4;
/// Requests sent in each phase of a cycle; a cycle ends well before the run does, so every
/// connection is still busy when the store hangs.
const UP_REQUESTS: usize = 700;
const FAILING_REQUESTS: usize = 500;
const HANGING_REQUESTS: usize = 128;
/// How many lookups of the in-memory store must be stuck before a hang ends.
const STUCK_LOOKUPS: usize = CONNECTIONS / 2;
/// Far beyond a run's length (under 40 s on a loaded 2-core machine): a run that takes this long
/// has stalled.
const STALL_GUARD: Duration = Duration::from_secs(300);

/// What a key is, which decides the answer it should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Valid,
    Revoked,
    Expired,
    /// Well-formed with a right checksum, never stored.
    Unknown,
    /// A valid key with its last character changed.
    BadChecksum,
    /// No key at all.
    Missing,
}

impl Class {
    fn reaches_the_store(self) -> bool {
        !matches!(self, Class::BadChecksum | Class::Missing)
    }
}

/// One of the keys requests are drawn from.
struct LoadKey {
    class: Class,
    key: Option<String>,
    /// The key id a pass must carry.
    id: Option<KeyId>,
}

/// The keys of a run, and the records a store must hold for them.
struct KeySet {
    keys: Vec<LoadKey>,
    records: Vec<KeyRecord>,
}

impl KeySet {
    /// 1,000 keys: 500 valid, 150 revoked, 150 expired, 100 unknown, 100 with a bad checksum.
    fn new() -> Self {
        let format = KeyFormat::default();
        let now = SystemTime::now();
        let mut set = Self {
            keys: Vec::with_capacity(KEYS),
            records: Vec::new(),
        };
        for index in 0..KEYS {
            let class = match index {
                0..500 => Class::Valid,
                500..650 => Class::Revoked,
                650..800 => Class::Expired,
                800..900 => Class::Unknown,
                _ => Class::BadChecksum,
            };
            let key = format.generate();
            let id = KeyId::random();
            let identity = KeyIdentity::new(
                id.clone(),
                format!("acct_load_{}", index % 50),
                "load",
                Tier::PRO,
            );
            let record = KeyRecord::new(key.digest(), identity);
            let record = match class {
                Class::Revoked => Some(record.with_revoked_at(now - Duration::from_secs(60))),
                Class::Expired => Some(record.with_expires_at(now - Duration::from_secs(3600))),
                Class::Valid => Some(record),
                _ => None,
            };
            set.records.extend(record);
            let secret = key.expose_secret().to_owned();
            let secret = match class {
                Class::BadChecksum => with_last_character_changed(&secret),
                _ => secret,
            };
            set.keys.push(LoadKey {
                class,
                id: (class == Class::Valid).then_some(id),
                key: Some(secret),
            });
        }
        set.keys.push(LoadKey {
            class: Class::Missing,
            key: None,
            id: None,
        });
        set
    }

    /// The key of request `index`: about 8% carry none, the others one of the 1,000 keys.
    fn pick(&self, index: usize) -> &LoadKey {
        let random = splitmix64(index as u64);
        if random % 100 < 8 {
            &self.keys[KEYS]
        } else {
            &self.keys[(random >> 8) as usize % KEYS]
        }
    }
}

fn with_last_character_changed(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    let changed = if last == "a" { "b" } else { "a" };
    let bad = format!("{head}{changed}");
    assert!(!KeyFormat::default().is_well_formed(&bad));
    bad
}

/// A fixed pseudo-random permutation of request indexes, so runs are alike.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The store's phases, as bits: an epoch of a phase change holds both phases.
const UP: u8 = 1;
const FAILING: u8 = 2;
const HANGING: u8 = 4;

/// The phases of the store, one per epoch, in order; the current epoch is the last.
struct Timeline {
    epoch: Arc<AtomicUsize>,
    phases: Mutex<Vec<u8>>,
}

impl Timeline {
    fn new() -> Self {
        Self {
            epoch: Arc::default(),
            phases: Mutex::new(vec![UP]),
        }
    }

    fn now(&self) -> usize {
        self.epoch.load(Ordering::SeqCst)
    }

    fn enter(&self, phases: u8) {
        let mut all = self.phases.lock().unwrap();
        all.push(phases);
        self.epoch.store(all.len() - 1, Ordering::SeqCst);
    }

    /// Every phase the store was in from epoch `from` to epoch `to`.
    fn span(&self, from: usize, to: usize) -> u8 {
        let all = self.phases.lock().unwrap();
        all[from..=to].iter().fold(0, |span, phases| span | phases)
    }
}

/// How a test makes its store fail, hang and come back.
#[async_trait]
trait Faults: Send + Sync {
    fn fail(&self);
    fn hang(&self);
    fn resume(&self);
    /// Returns once the store answers again after `resume`.
    async fn recovered(&self);
    /// Whether a hang has lasted long enough, `sent` requests into it.
    fn hang_is_over(&self, sent: usize) -> bool;
    /// The epoch at which the oldest store call under way began, for stores behind a cache.
    fn oldest_call(&self) -> Option<usize>;
    /// Lookups that reached the store, for stores that count them.
    fn lookups(&self) -> Option<usize>;
}

/// One store set-up under test.
struct Instance {
    name: &'static str,
    layer: ApiKeyLayer,
    faults: Arc<dyn Faults>,
    timeline: Arc<Timeline>,
    keys: Arc<KeySet>,
    /// A cache in front may answer from what it holds while the store is down.
    cached: bool,
    /// The store gives up on a hung backend (with a 503) instead of waiting for it.
    hang_times_out: bool,
}

/// What the layer answered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// 200, for the key with this id.
    Passed(String),
    /// A refusal: its status and envelope code.
    Refused(u16, String),
}

impl Answer {
    fn refused(status: StatusCode, code: &str) -> Self {
        Self::Refused(status.as_u16(), code.to_owned())
    }

    fn unavailable() -> Self {
        Self::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "authentication_unavailable",
        )
    }

    async fn read(response: Response<Incoming>) -> Self {
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if status == StatusCode::OK {
            return Self::Passed(String::from_utf8_lossy(&body).into_owned());
        }
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|json| json["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("unreadable body {body:?}"));
        Self::Refused(status.as_u16(), code)
    }
}

/// The answer `key` gets while the store works.
fn answer_when_up(key: &LoadKey) -> Answer {
    let unauthorized = |code| Answer::refused(StatusCode::UNAUTHORIZED, code);
    match key.class {
        Class::Valid => Answer::Passed(key.id.as_ref().unwrap().to_string()),
        Class::Revoked | Class::Expired => unauthorized("expired_api_key"),
        Class::Unknown | Class::BadChecksum => unauthorized("invalid_api_key"),
        Class::Missing => unauthorized("missing_api_key"),
    }
}

/// One request, and what came of it.
struct Outcome {
    index: usize,
    /// The first epoch whose answer it may get.
    from: usize,
    answered: usize,
    answer: Answer,
}

impl Instance {
    /// The answers that are right for `key` in the phases of `span`.
    fn right_answers(&self, key: &LoadKey, span: u8) -> Vec<Answer> {
        let up = answer_when_up(key);
        if !key.class.reaches_the_store() {
            return vec![up];
        }
        let faulty = span & FAILING != 0 || (span & HANGING != 0 && self.hang_times_out);
        let mut right = Vec::new();
        if span & UP != 0 || (faulty && self.cached) {
            right.push(up);
        }
        if faulty {
            right.push(Answer::unavailable());
        }
        right
    }

    async fn run(self) -> Totals {
        let started = Instant::now();
        let (address, accepted) = serve(self.layer.clone()).await;
        let next = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let keys = Arc::clone(&self.keys);
                let timeline = Arc::clone(&self.timeline);
                let faults = Arc::clone(&self.faults);
                let next = Arc::clone(&next);
                tokio::spawn(client(address, keys, timeline, faults, next))
            })
            .collect();
        // Not a timed assert: a guard, so that a lost wake-up fails the test instead of hanging it.
        let outcomes = tokio::time::timeout(STALL_GUARD, async {
            let cycles = self.drive_faults(&next).await;
            let mut outcomes = Vec::with_capacity(REQUESTS);
            for client in clients {
                outcomes.extend(client.await.unwrap());
            }
            (cycles, outcomes)
        })
        .await;
        let (cycles, outcomes) = outcomes.unwrap_or_else(|_| {
            panic!(
                "{}: the run stalled with {} of {REQUESTS} requests sent",
                self.name,
                next.load(Ordering::SeqCst).min(REQUESTS)
            )
        });
        let mut totals = self.judge(&outcomes);
        totals.cycles = cycles;
        totals.connections = accepted.load(Ordering::SeqCst);
        totals.lookups = self.faults.lookups();
        totals.elapsed = started.elapsed();
        totals
    }

    /// Fails, recovers, hangs and recovers the store, [`CYCLES`] times, as requests go out.
    async fn drive_faults(&self, sent: &AtomicUsize) -> usize {
        let reach = |count: usize| async move {
            while sent.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let cycle = UP_REQUESTS + FAILING_REQUESTS + UP_REQUESTS + HANGING_REQUESTS;
        assert!(CYCLES * cycle + 2 * CONNECTIONS < REQUESTS);
        for start in (0..CYCLES).map(|n| n * cycle) {
            reach(start + UP_REQUESTS).await;
            self.change(UP, FAILING, || self.faults.fail());
            reach(start + UP_REQUESTS + FAILING_REQUESTS).await;
            self.recover(FAILING).await;
            reach(start + 2 * UP_REQUESTS + FAILING_REQUESTS).await;
            self.change(UP, HANGING, || self.faults.hang());
            let hang_began = sent.load(Ordering::SeqCst);
            while !self
                .faults
                .hang_is_over(sent.load(Ordering::SeqCst) - hang_began)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.recover(HANGING).await;
        }
        CYCLES
    }

    fn change(&self, from: u8, to: u8, apply: impl FnOnce()) {
        self.timeline.enter(from | to);
        apply();
        self.timeline.enter(to);
    }

    /// Ends a fault; the store is up once it has answered again.
    async fn recover(&self, fault: u8) {
        self.timeline.enter(fault | UP);
        self.faults.resume();
        tokio::time::timeout(Duration::from_secs(30), self.faults.recovered())
            .await
            .unwrap_or_else(|_| panic!("{}: the store did not recover within 30 s", self.name));
        self.timeline.enter(UP);
    }

    fn judge(&self, outcomes: &[Outcome]) -> Totals {
        let mut totals = Totals::default();
        for outcome in outcomes {
            let key = self.keys.pick(outcome.index);
            let span = self.timeline.span(outcome.from, outcome.answered);
            *totals.per_class.entry(key.class).or_default() += 1;
            match &outcome.answer {
                Answer::Passed(_) => totals.passed += 1,
                Answer::Refused(503, _) => totals.unavailable += 1,
                Answer::Refused(..) => totals.refused += 1,
            }
            if matches!(outcome.answer, Answer::Passed(_)) && span & UP == 0 {
                totals.passed_while_down += 1;
            }
            if key.class.reaches_the_store() {
                totals.reaching_the_store += 1;
            }
            let right = self.right_answers(key, span);
            if !right.contains(&outcome.answer) {
                totals.wrong += 1;
                if totals.examples.len() < 10 {
                    totals.examples.push(format!(
                        "request {} ({:?}, phases {span:#05b}): {:?}, right: {right:?}",
                        outcome.index, key.class, outcome.answer,
                    ));
                }
            }
        }
        totals.requests = outcomes.len();
        totals
    }
}

/// A server on an ephemeral port of 127.0.0.1 running the layer over a handler that answers the
/// identity's key id; it counts the connections it accepts.
async fn serve(layer: ApiKeyLayer) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service_fn(key_id_of_caller);
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, accepted)
}

async fn key_id_of_caller(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let identity = request
        .extensions()
        .get::<KeyIdentity>()
        .expect("the layer passes only requests it identified");
    Ok(Response::new(Full::new(Bytes::from(
        identity.key_id().to_string(),
    ))))
}

/// One keep-alive connection sending requests one after another until all are sent.
async fn client(
    address: SocketAddr,
    keys: Arc<KeySet>,
    timeline: Arc<Timeline>,
    faults: Arc<dyn Faults>,
    next: Arc<AtomicUsize>,
) -> Vec<Outcome> {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut outcomes = Vec::new();
    loop {
        let index = next.fetch_add(1, Ordering::SeqCst);
        if index >= REQUESTS {
            return outcomes;
        }
        let mut request = Request::builder()
            .uri("/load")
            .header(http::header::HOST, "127.0.0.1");
        if let Some(key) = &keys.pick(index).key {
            request = match index % 2 {
                0 => request.header("authorization", format!("Bearer {key}")),
                _ => request.header("x-api-key", key),
            };
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        let sent = timeline.now();
        let from = faults.oldest_call().map_or(sent, |oldest| oldest.min(sent));
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        let answer = Answer::read(response).await;
        outcomes.push(Outcome {
            index,
            from,
            answered: timeline.now(),
            answer,
        });
    }
}

/// What a run counted.
#[derive(Default)]
struct Totals {
    requests: usize,
    per_class: BTreeMap<Class, usize>,
    passed: usize,
    refused: usize,
    unavailable: usize,
    /// Passes answered while the store was failing or hung throughout (cache hits).
    passed_while_down: usize,
    reaching_the_store: usize,
    wrong: usize,
    examples: Vec<String>,
    cycles: usize,
    connections: usize,
    lookups: Option<usize>,
    elapsed: Duration,
}

impl Totals {
    fn print(&self, name: &str) {
        println!(
            "{name}: {} requests in {:.1?} over {} connections, {} fail/hang cycles",
            self.requests, self.elapsed, self.connections, self.cycles
        );
        println!("{name}:   per class {:?}", self.per_class);
        println!(
            "{name}:   200: {} ({} while the store was down), 401: {}, 503: {}",
            self.passed, self.passed_while_down, self.refused, self.unavailable
        );
        if let Some(lookups) = self.lookups {
            println!(
                "{name}:   store lookups: {lookups} for {} requests with a well-formed key",
                self.reaching_the_store
            );
        }
        println!("{name}:   wrong verdicts: {}", self.wrong);
        for example in &self.examples {
            println!("{name}:     {example}");
        }
    }

    /// The run's own checks: all answered, every verdict right, faults felt, no reconnects.
    fn assert_sound(&self, name: &str) {
        self.print(name);
        assert_eq!(self.requests, REQUESTS, "{name}: every request is answered");
        assert_eq!(self.wrong, 0, "{name}: wrong verdicts: {:?}", self.examples);
        assert!(self.unavailable > 0, "{name}: the faults reached the layer");
        assert!(self.passed > 0, "{name}: valid keys passed");
        assert_eq!(
            self.connections, CONNECTIONS,
            "{name}: every connection stayed open through the faults"
        );
    }
}

/// Faults of an in-memory store, injected in the store itself.
struct MemoryFaults(FaultyStore<MemoryKeyStore>);

#[async_trait]
impl Faults for MemoryFaults {
    fn fail(&self) {
        self.0.fail();
    }

    fn hang(&self) {
        self.0.hang();
    }

    fn resume(&self) {
        self.0.resume();
    }

    async fn recovered(&self) {}

    fn hang_is_over(&self, sent: usize) -> bool {
        // Nothing times out: wait until half the connections are stuck on a lookup.
        self.0.hanging() >= STUCK_LOOKUPS || sent >= 10 * HANGING_REQUESTS
    }

    fn oldest_call(&self) -> Option<usize> {
        None
    }

    fn lookups(&self) -> Option<usize> {
        Some(self.0.lookups())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_failing_and_hanging_under_load_never_gives_a_wrong_verdict() {
    let keys = Arc::new(KeySet::new());
    let memory = MemoryKeyStore::new();
    for record in &keys.records {
        memory.insert(record.clone());
    }
    let store = FaultyStore::new(memory);
    let instance = Instance {
        name: "memory",
        layer: ApiKeyLayer::new(store.clone()),
        faults: Arc::new(MemoryFaults(store)),
        timeline: Arc::new(Timeline::new()),
        keys,
        cached: false,
        hang_times_out: false,
    };
    let totals = instance.run().await;
    totals.assert_sound("memory");
    assert_eq!(
        totals.passed_while_down, 0,
        "no pass while the store is down"
    );
    assert_eq!(
        totals.lookups,
        Some(totals.reaching_the_store),
        "missing keys and bad checksums never reach the store; each other key once"
    );
}

/// The backend tests: a cached remote store behind a [`FaultProxy`].
#[cfg(all(feature = "cache", any(feature = "postgres", feature = "redis")))]
mod remote {
    use super::*;
    use common::faulty::{FaultProxy, InFlight};
    use tower_api_key::{store::CachedKeyStore, KeyStore, LookupId};

    /// The backends' timeout: long enough that a loaded machine does not hit it while the
    /// backend works, as that would be a 503 while the store is up.
    pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Short, so that lookups keep reaching the backend.
    pub const CACHE_TTL: Duration = Duration::from_millis(200);

    /// Faults of a remote store, injected between it and its server.
    pub struct ProxyFaults<S> {
        pub proxy: FaultProxy,
        pub store: InFlight<S>,
    }

    #[async_trait]
    impl<S: KeyStore> Faults for ProxyFaults<S> {
        fn fail(&self) {
            self.proxy.fail();
        }

        fn hang(&self) {
            self.proxy.hang();
        }

        fn resume(&self) {
            self.proxy.resume();
        }

        async fn recovered(&self) {
            let probe = LookupId::from_bytes([0; 16]);
            while self.store.get_ref().find(&probe).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        fn hang_is_over(&self, sent: usize) -> bool {
            sent >= HANGING_REQUESTS
        }

        fn oldest_call(&self) -> Option<usize> {
            self.store.oldest()
        }

        fn lookups(&self) -> Option<usize> {
            None
        }
    }

    /// An instance over `store`, which reaches its server through `proxy`, behind a cache.
    pub fn instance<S: KeyStore + Clone>(
        name: &'static str,
        store: S,
        proxy: FaultProxy,
        keys: Arc<KeySet>,
    ) -> Instance {
        let timeline = Arc::new(Timeline::new());
        let store = InFlight::new(store, Arc::clone(&timeline.epoch));
        let cache = CachedKeyStore::new(store.clone())
            .ttl(CACHE_TTL)
            .negative_ttl(CACHE_TTL / 2);
        Instance {
            name,
            layer: ApiKeyLayer::new(cache),
            faults: Arc::new(ProxyFaults { proxy, store }),
            timeline,
            keys,
            cached: true,
            hang_times_out: true,
        }
    }

    /// Adds `keys`' records through `store`, 8 at a time.
    pub async fn insert_all<S: tower_api_key::store::WritableKeyStore + Clone>(
        store: &S,
        keys: &KeySet,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in keys.records.chunks(KEYS.div_ceil(8)) {
            let store = store.clone();
            let chunk = chunk.to_vec();
            tasks.spawn(async move {
                for record in chunk {
                    let quota = tower_api_key::store::Quota::new(KEYS, SystemTime::now());
                    store.create(record, quota).await.unwrap();
                }
            });
        }
        while let Some(task) = tasks.join_next().await {
            task.unwrap();
        }
    }
}

#[cfg(all(feature = "postgres", feature = "cache"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_postgres_failing_and_hanging_under_load_never_gives_a_wrong_verdict() {
    use std::str::FromStr;

    use common::faulty::FaultProxy;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use tower_api_key::store::PgKeyStore;

    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: this test needs a PostgreSQL server");
    let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL is a PostgreSQL URL");
    let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .expect("DATABASE_URL's host resolves")
        .find(|address| address.ip().is_loopback())
        .expect("DATABASE_URL names a server on this machine");
    let pool = |options: PgConnectOptions| {
        PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(remote::STORE_TIMEOUT)
            .connect_lazy_with(options)
    };
    let table = format!("api_keys_{}", uuid::Uuid::new_v4().simple());
    let direct = PgKeyStore::new(pool(options.clone())).table(&table);
    direct
        .migrate()
        .await
        .expect("the PostgreSQL at DATABASE_URL is reachable");
    let keys = Arc::new(KeySet::new());
    remote::insert_all(&direct, &keys).await;

    let proxy = FaultProxy::start(upstream).await;
    let proxied = options
        .host(&proxy.address.ip().to_string())
        .port(proxy.address.port());
    let store = PgKeyStore::new(pool(proxied))
        .table(&table)
        .timeout(remote::STORE_TIMEOUT);
    let totals = remote::instance("postgres", store, proxy, keys).run().await;
    totals.assert_sound("postgres + cache");
}

#[cfg(all(feature = "redis", feature = "cache"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_redis_failing_and_hanging_under_load_never_gives_a_wrong_verdict() {
    use std::net::ToSocketAddrs;

    use common::faulty::FaultProxy;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use redis::{Client, ConnectionAddr, IntoConnectionInfo};
    use tower_api_key::store::RedisKeyStore;

    let url = std::env::var("REDIS_URL").expect("REDIS_URL is not set: this test needs Redis");
    let info = url
        .as_str()
        .into_connection_info()
        .expect("REDIS_URL is a Redis URL");
    let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        panic!("REDIS_URL must be a plain redis:// URL");
    };
    let upstream = (host.as_str(), port)
        .to_socket_addrs()
        .expect("REDIS_URL's host resolves")
        .find(|address| address.ip().is_loopback())
        .expect("REDIS_URL names a server on this machine");
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(remote::STORE_TIMEOUT))
        .set_response_timeout(Some(remote::STORE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100));
    let connect = |info: redis::ConnectionInfo| {
        let config = config.clone();
        async move {
            ConnectionManager::new_with_config(Client::open(info).unwrap(), config)
                .await
                .expect("the Redis at REDIS_URL is reachable")
        }
    };
    let prefix = format!("tower-api-key-load-{}", uuid::Uuid::new_v4().simple());
    let direct = RedisKeyStore::new(connect(info.clone()).await).prefix(prefix.clone());
    let keys = Arc::new(KeySet::new());
    remote::insert_all(&direct, &keys).await;

    let proxy = FaultProxy::start(upstream).await;
    let proxied = info.set_addr(ConnectionAddr::Tcp(
        proxy.address.ip().to_string(),
        proxy.address.port(),
    ));
    let store = RedisKeyStore::new(connect(proxied).await)
        .prefix(prefix)
        .timeout(remote::STORE_TIMEOUT);
    let totals = remote::instance("redis", store, proxy, keys).run().await;
    totals.assert_sound("redis + cache");
}
