//! Heap allocations the layer makes per successful request, counted by a counting global
//! allocator on the test's own thread. The count is deterministic, so it is asserted exactly.
//! Alone in its test binary: another test's process-wide state (a global `tracing` subscriber
//! turns the layer's spans on) would change the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;

use http::{Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_api_key::{
    key::KeyFormat, ApiKey, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier,
};

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Counts allocations made on a thread while it is counting, and passes everything to `System`.
struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// thread-local `Cell`s with const initializers, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|count| count.set(count.get() + 1));
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from `System.alloc` with this `layout`.
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// How many allocations `work` makes on this thread, from its start to its output.
async fn allocations_of<F: std::future::Future>(work: impl FnOnce() -> F) -> (usize, F::Output) {
    ALLOCATIONS.with(|count| count.set(0));
    COUNTING.with(|counting| counting.set(true));
    let output = work().await;
    COUNTING.with(|counting| counting.set(false));
    (ALLOCATIONS.with(Cell::get), output)
}

/// Something already in the extensions, as axum's router puts `MatchedPath` and `OriginalUri`
/// there before route layers run.
#[derive(Clone)]
struct AlreadyThere;

fn store_with_key() -> (MemoryKeyStore, ApiKey) {
    let store = MemoryKeyStore::new();
    let key = KeyFormat::default().generate();
    let identity = KeyIdentity::new(KeyId::new("key_1"), "acct_1", "ci", Tier::FREE);
    store.insert(KeyRecord::new(key.digest(), identity).with_hint("sk_live_...abcd"));
    (store, key)
}

fn request(key: &ApiKey, prefilled: bool) -> Request<()> {
    let mut request = Request::builder()
        .header("authorization", format!("Bearer {}", key.expose_secret()))
        .body(())
        .unwrap();
    if prefilled {
        request.extensions_mut().insert(AlreadyThere);
    }
    request
}

async fn count_layer_allocations(prefilled: bool, with_hook: bool) -> usize {
    let (store, key) = store_with_key();
    let mut layer = ApiKeyLayer::new(store);
    if with_hook {
        layer = layer.error_response(|rejection| {
            http::Response::new(bytes::Bytes::from(rejection.message().to_owned()))
        });
    }
    let mut service =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|request: Request<()>| async move {
                assert!(request.extensions().get::<KeyIdentity>().is_some());
                Ok::<_, Infallible>(Response::new(()))
            });
    // The first request records the key's first use: count a later one, as most requests are.
    let first = service
        .ready()
        .await
        .unwrap()
        .call(request(&key, prefilled))
        .await;
    assert_eq!(first.unwrap().status(), 200);

    let request = request(&key, prefilled);
    let ready = service.ready().await.unwrap();
    // `call` does the work for a store that answers at once, so it is counted too.
    let (count, response) = allocations_of(|| ready.call(request)).await;
    assert_eq!(response.unwrap().status(), 200);
    count
}

#[tokio::test(flavor = "current_thread")]
async fn successful_request_allocates_once_when_extensions_are_in_use() {
    // The one allocation is the identity's box in the extensions map.
    assert_eq!(count_layer_allocations(true, false).await, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn with_an_error_response_hook_a_success_allocates_twice() {
    // And the box of the hook's settings, for the scope and mode checks inside the layer.
    assert_eq!(count_layer_allocations(true, true).await, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn on_empty_extensions_the_layer_allocates_only_what_inserting_the_identity_costs() {
    let identity = KeyIdentity::new(KeyId::new("key_1"), "acct_1", "ci", Tier::FREE);
    let mut bare = Request::new(());
    let (by_hand, previous) =
        allocations_of(|| async { bare.extensions_mut().insert(identity) }).await;
    assert!(previous.is_none());
    assert_eq!(
        by_hand, 3,
        "http's Extensions: the map's box, its table, the value's box"
    );
    assert_eq!(count_layer_allocations(false, false).await, by_hand);
}
