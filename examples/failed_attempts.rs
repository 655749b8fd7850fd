//! Limiting failed attempts per client: `429 Too Many Requests` with `Retry-After`, in the same
//! JSON envelope as the layer's own refusals.
//!
//! ```text
//! cargo run --example failed_attempts   # PORT=8080 cargo run --example failed_attempts
//! ```
//!
//! It prints a demo key and two curl commands. Each client address may fail 10 times in a burst,
//! then once every 6 seconds; a client past that is refused before its key is even read:
//!
//! ```text
//! HTTP/1.1 429 Too Many Requests
//! retry-after: 6
//! {"error":{"code":"rate_limited","message":"Too many failed attempts from your address. ...","request_id":"req_..."}}
//! ```
//!
//! # How it works
//!
//! A middleware outside [`ApiKeyLayer`] keys each request by the client's IP address (from
//! axum's `ConnectInfo<SocketAddr>`, so serve with `into_make_service_with_connect_info`):
//!
//! 1. If the client is blocked, answer 429 at once: the request never reaches `ApiKeyLayer`, so a
//!    blocked client cannot test keys, not even the right one.
//! 2. Otherwise pass the request on. Only when `ApiKeyLayer` refused the key (its response
//!    carries an `AuthError`: a 401, or a gRPC refusal, which is an HTTP 200) does it count a
//!    failure against the client, in a `governor` keyed rate limiter (GCRA: a burst, then a
//!    steady refill). Successes are never counted: a client with a good key is not slowed down
//!    by its own traffic, however heavy. Nor are the store's 503s.
//! 3. The failure that uses up the quota blocks the client until the limiter would allow one
//!    more, which is the `Retry-After` of the 429s it gets meanwhile. Refused requests do not
//!    count, so waiting `Retry-After` always works.
//!
//! `tower_governor` is the usual way to rate-limit a tower stack, but it charges every request
//! on the way in, before the answer is known: it can limit requests, not failures. Here the
//! limiter is `governor` itself, which `tower_governor` is built on.
//!
//! # Choices to revisit for your deployment
//!
//! - **Blocked means blocked.** While a client is blocked, a good key from it is refused too:
//!   letting good keys through would need checking them, and would tell an attacker which guess
//!   was right. Clients that share an address (NAT, a company proxy) share its quota, so size
//!   the burst for them.
//! - **Behind a reverse proxy** every request comes from the proxy's address. Key by the client
//!   address the proxy sets (`X-Forwarded-For`, `Forwarded`) only when the peer *is* your proxy;
//!   otherwise any client can pick its own key. tower_governor's `SmartIpKeyExtractor` docs say
//!   the same.
//! - **IPv6** clients are counted per /64 network, since one host commonly holds a whole /64.
//! - **In-flight requests** are counted when they fail, so a client that sends k requests at
//!   once can fail up to k − 1 times beyond its quota before the block starts. Pair this with a
//!   per-client concurrency limit if that matters; keys have about 190 random bits, so the
//!   limit is about load and noise, not about making guessing feasible.
//! - **One process:** the counts live in memory. Several instances each count on their own; a
//!   cluster-wide limit needs a shared counter (Redis, for example).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::net::TcpListener;
use tower_api_key::{
    key::KeyFormat, response::ErrorResponse, ApiKeyLayer, AuthError, KeyId, KeyIdentity, KeyRecord,
    MemoryKeyStore, Tier,
};

const DEFAULT_PORT: u16 = 3002;

/// Failures a client may make in a burst; then one more every minute / `FAILURES_PER_MINUTE`.
const FAILURES_PER_MINUTE: u32 = 10;

/// Failed attempts per client, and the clients blocked for making too many.
///
/// Generic over `governor`'s clock so that tests can move time (`FakeRelativeClock`).
#[derive(Debug)]
pub struct FailedAttempts<C: Clock = DefaultClock> {
    failures: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, StateInformationMiddleware>,
    /// Until when each blocked client is refused.
    blocked: Mutex<HashMap<IpAddr, C::Instant>>,
}

impl<C: Clock> FailedAttempts<C> {
    /// Allows each client the failures of `quota`, timed by `clock`.
    pub fn new(quota: Quota, clock: C) -> Self {
        Self {
            failures: RateLimiter::dashmap_with_clock(quota, clock).with_middleware(),
            blocked: Mutex::default(),
        }
    }

    /// How much longer `client` is blocked, if it is.
    pub fn blocked_for(&self, client: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *blocked.get(&client)?;
        let now = self.failures.clock().now();
        if now < until {
            return Some(until.duration_since(now).into());
        }
        blocked.remove(&client);
        None
    }

    /// Counts a failed attempt by `client`, and blocks it if that used up its quota.
    pub fn record_failure(&self, client: IpAddr) {
        let until = match self.failures.check_key(&client) {
            Ok(state) if state.remaining_burst_capacity() > 0 => return,
            // That was the last failure allowed. GCRA does not update on a refusal, so checking
            // again only reads when the next one will be.
            Ok(_) => match self.failures.check_key(&client) {
                Err(not_until) => not_until.earliest_possible(),
                Ok(_) => return, // The quota refilled in between.
            },
            // Sent before the block began, with others in flight.
            Err(not_until) => not_until.earliest_possible(),
        };
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.insert(client, until);
    }

    /// Forgets the clients whose counts are back to a fresh start, to bound memory: call it now
    /// and then.
    pub fn retain_recent(&self) {
        self.failures.retain_recent();
        let now = self.failures.clock().now();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.retain(|_, until| *until > now);
    }
}

/// Whom failures are counted against: the address itself for IPv4 (IPv4-mapped IPv6
/// addresses included), the /64 network for IPv6.
pub fn client_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
    }
}

/// Refuses blocked clients before `ApiKeyLayer`, and counts the keys it refuses.
async fn limit_failed_attempts<C>(
    State(attempts): State<Arc<FailedAttempts<C>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response
where
    C: Clock + Send + Sync + 'static,
{
    let client = client_of(peer.ip());
    if let Some(wait) = attempts.blocked_for(client) {
        return ErrorResponse::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many failed attempts from your address. Retry after the number of seconds in \
             the Retry-After header, with a valid API key.",
        )
        .for_request(&request)
        .retry_after(wait)
        .into_response()
        .map(Body::from);
    }
    let response = next.run(request).await;
    if is_failed_attempt(&response) {
        attempts.record_failure(client);
    }
    response
}

/// Whether `ApiKeyLayer` refused the request for its key: a 401, or a gRPC call's HTTP 200 with
/// `grpc-status: 16`. Known by the [`AuthError`] the layer puts on each refusal, so a 401 of the
/// application's own is not counted, nor is a 503 of a store outage, which is not the client's
/// doing.
fn is_failed_attempt(response: &Response) -> bool {
    response
        .extensions()
        .get::<AuthError>()
        .is_some_and(|error| !matches!(error, AuthError::Unavailable(_)))
}

/// `/health` is open; `/api/whoami` needs a key from `store`, and failed attempts at it are
/// limited by `attempts`.
pub fn app<C>(store: MemoryKeyStore, attempts: Arc<FailedAttempts<C>>) -> Router
where
    C: Clock + Send + Sync + 'static,
{
    let api = Router::new()
        .route("/whoami", get(whoami))
        .layer(ApiKeyLayer::new(store))
        // Added last, so outermost: it sees the request before `ApiKeyLayer` and its answer after.
        .layer(from_fn_with_state(attempts, limit_failed_attempts::<C>));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .nest("/api", api)
}

async fn whoami(identity: KeyIdentity) -> String {
    format!("hello, {}", identity.account_id())
}

#[tokio::main]
async fn main() {
    let port = match std::env::var("PORT") {
        Ok(port) => port.parse().expect("PORT must be a number from 0 to 65535"),
        Err(_) => DEFAULT_PORT,
    };
    let store = MemoryKeyStore::new();
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::random(), "acct_demo", "demo", Tier::FREE);
    store.insert(KeyRecord::new(key.digest(), identity));

    let per_minute = NonZeroU32::new(FAILURES_PER_MINUTE).expect("the quota is not zero");
    let attempts = Arc::new(FailedAttempts::new(
        Quota::per_minute(per_minute),
        DefaultClock::default(),
    ));
    let housekeeping = Arc::clone(&attempts);
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(Duration::from_secs(60));
        loop {
            every_minute.tick().await;
            housekeeping.retain_recent();
        }
    });

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap_or_else(|error| panic!("cannot listen on 127.0.0.1:{port}: {error}"));
    let address = listener
        .local_addr()
        .expect("a bound socket has an address");
    println!("listening on http://{address}");
    println!("demo API key (shown once): {}", key.expose_secret());
    println!(
        "curl -H \"X-API-Key: {}\" http://{address}/api/whoami",
        key.expose_secret()
    );
    println!(
        "for i in $(seq 12); do curl -s -H \"X-API-Key: sk_live_wrong\" \
         http://{address}/api/whoami; echo; done   # 10 x 401, then 429"
    );

    let app = app(store, attempts).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // Without a Ctrl-C handler, serve until killed rather than stop at once.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await
        .expect("the server runs until Ctrl-C");
}
