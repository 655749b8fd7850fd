//! Does the secret comparison take the same time however much of the secret is right?
//!
//! A dudect-style check (Reparaz, Balasch, Verbauwhede, "Dude, is my code constant time?", 2017).
//! The layer finds a record by the first 16 bytes of the key's SHA-256 digest (its `LookupId`) and
//! compares all 32 bytes in constant time (`KeyDigest::matches`, with `subtle`). An attacker who
//! could time that comparison would learn how many secret bytes they got right. So a wrong key is
//! given that shares the lookup id and differs from the stored digest:
//!
//! - class A: in byte 16, the first secret byte (an early-exit comparison would stop at once);
//! - class B: in byte 31, the last one (an early-exit comparison would read all 32 bytes).
//!
//! The two classes are interleaved at random, each call is timed with `std::time::Instant`, the
//! slowest samples are cropped at several percentiles as dudect does (noise from interrupts and
//! other processes lives in the tail), and Welch's t statistic compares the two classes for each
//! crop. `|t| < 4.5` for every crop (dudect's threshold) means no difference was found.
//!
//! The tests are `#[ignore]`d: they take seconds in release mode and mean nothing in debug mode.
//!
//! ```text
//! cargo test --release --test it timing:: -- --ignored --nocapture
//! ```
//!
//! - `layer_timing_does_not_depend_on_which_secret_byte_is_wrong`: the whole request path through
//!   `ApiKeyLayer` (a store that answers at once, the comparison, the 401 envelope).
//! - `digest_comparison_timing_does_not_depend_on_which_byte_is_wrong`: `KeyDigest::matches`
//!   alone, timed in batches so that its few nanoseconds stand out of the timer's resolution.
//! - `check_detects_an_early_exit_comparison` and
//!   `check_detects_an_early_exit_comparison_behind_the_layer`: the same statistic on a
//!   deliberately leaky byte-by-byte comparison, alone and inside the layer's path, must find the
//!   leak; so the checks above cannot pass because the method is blind.
//!
//! Other processes on the machine add noise, not bias: the classes are interleaved at random, so
//! load falls on both alike. A failure is worth rerunning once on a quiet machine; a failure
//! that persists is a leak.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{service_fn, Layer, Service};
use tower_api_key::{
    key::{KeyDigest, KeyFormat},
    ApiKey, ApiKeyLayer, KeyId, KeyIdentity, KeyRecord, KeyStore, LookupId, StoreError, Tier,
};

/// dudect's threshold: above it, the two classes' timings differ.
const THRESHOLD: f64 = 4.5;

/// Samples timed through the layer, half of each class on average.
const LAYER_SAMPLES: usize = 2_000_000;

/// Samples of the comparison alone, each timing `BATCH` comparisons of one class.
const DIGEST_SAMPLES: usize = 1_000_000;
/// Enough comparisons (about 2.5 ns each) that a sample spans many ticks of a coarse clock:
/// with too few, most samples tie at one or two clock values and the crops say nothing.
const BATCH: usize = 256;

/// Samples run and thrown away first, to warm caches and branch predictors.
const WARM_UP: usize = 20_000;

/// Samples above the given share of all samples (by time) are dropped before the test;
/// 1.0 keeps every sample. dudect crops at many percentiles between 7 % and 99.9 %.
const CROPS: [f64; 9] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0];

/// The timed tests run one at a time, whatever `--test-threads` says, so that they do not
/// compete for the two cores.
static MEASURING: Mutex<()> = Mutex::new(());

/// Byte 16 (class A) or byte 31 (class B): the first and last bytes after the lookup id.
const WRONG_BYTE: [usize; 2] = [16, 31];

/// The presented key, and for each class a record under the same lookup id whose digest differs
/// from the key's in that class's byte.
struct Fixture {
    key: ApiKey,
    records: [KeyRecord; 2],
}

impl Fixture {
    fn new() -> Self {
        let key = KeyFormat::default().generate();
        let digest = key.digest();
        // Both records share one identity, so cloning either touches the same memory.
        let identity = KeyIdentity::new(KeyId::new("key_timing"), "acct_timing", "t", Tier::FREE);
        let records = WRONG_BYTE.map(|byte| {
            let stored = digest_differing_in(&digest, byte);
            assert!(stored.lookup_id() == digest.lookup_id());
            assert!(!stored.matches(&digest));
            KeyRecord::new(stored, identity.clone())
        });
        Self { key, records }
    }

    fn presented_digest(&self) -> KeyDigest {
        self.key.digest()
    }
}

/// `digest` with one bit of byte `index` flipped, rebuilt from hex as a text store would.
fn digest_differing_in(digest: &KeyDigest, index: usize) -> KeyDigest {
    let mut bytes = *digest.as_bytes();
    bytes[index] ^= 0x01;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    KeyDigest::from_hex(&hex).expect("64 hexadecimal digits")
}

/// Answers every lookup at once with the record of the class being measured.
struct ClassStore {
    records: [KeyRecord; 2],
    class: AtomicUsize,
    /// With `Some`, the store also compares the stored digest with this one byte by byte,
    /// stopping at the first difference: the leak the control must find.
    leaky_compare_with: Option<KeyDigest>,
}

impl ClassStore {
    fn record(&self) -> KeyRecord {
        // An index, not a branch, so both classes run the same instructions.
        let record = &self.records[self.class.load(Ordering::Relaxed)];
        if let Some(presented) = &self.leaky_compare_with {
            black_box(early_exit_eq(
                record.digest.as_bytes(),
                presented.as_bytes(),
            ));
        }
        record.clone()
    }
}

#[async_trait]
impl KeyStore for ClassStore {
    async fn find(&self, _lookup_id: &LookupId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(Some(self.record()))
    }

    fn find_now(&self, _lookup_id: &LookupId) -> Option<Result<Option<KeyRecord>, StoreError>> {
        Some(Ok(Some(self.record())))
    }
}

/// The comparison a careless store would write: byte by byte, returning at the first difference.
fn early_exit_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    for (left, right) in left.iter().zip(right) {
        // `black_box` keeps the compiler from turning the loop into one wide comparison.
        if black_box(*left) != black_box(*right) {
            return false;
        }
    }
    true
}

/// Welch's t statistic of class 0 against class 1, from running sums.
#[derive(Default)]
struct Welch {
    count: [f64; 2],
    mean: [f64; 2],
    /// Sum of squared differences from the mean (Welford).
    m2: [f64; 2],
}

impl Welch {
    fn push(&mut self, class: usize, value: f64) {
        self.count[class] += 1.0;
        let delta = value - self.mean[class];
        self.mean[class] += delta / self.count[class];
        self.m2[class] += delta * (value - self.mean[class]);
    }

    /// `None` while either class has fewer than two samples.
    fn t(&self) -> Option<f64> {
        if self.count.iter().any(|&count| count < 2.0) {
            return None;
        }
        let variance = |class: usize| self.m2[class] / (self.count[class] - 1.0);
        let standard_error = (variance(0) / self.count[0] + variance(1) / self.count[1]).sqrt();
        Some((self.mean[0] - self.mean[1]) / standard_error)
    }
}

/// One crop's verdict.
struct Crop {
    percentile: f64,
    kept: usize,
    mean_ns: [f64; 2],
    /// `None` when the crop left one class (nearly) empty: all its samples were slower.
    t: Option<f64>,
}

/// Welch's t for every crop of `samples` (class, nanoseconds).
fn crops(samples: &[(u8, u64)]) -> Vec<Crop> {
    let mut sorted: Vec<u64> = samples.iter().map(|&(_, time)| time).collect();
    sorted.sort_unstable();
    CROPS
        .iter()
        .map(|&percentile| {
            let cutoff = if percentile >= 1.0 {
                u64::MAX
            } else {
                sorted[(percentile * sorted.len() as f64) as usize]
            };
            let mut welch = Welch::default();
            // `<=`: samples that tie with the cutoff stay, or a clock with coarse ticks would
            // leave a crop with a handful of samples.
            for &(class, time) in samples.iter().filter(|&&(_, time)| time <= cutoff) {
                welch.push(usize::from(class), time as f64);
            }
            Crop {
                percentile,
                kept: (welch.count[0] + welch.count[1]) as usize,
                mean_ns: welch.mean,
                t: welch.t(),
            }
        })
        .collect()
}

/// A random class (0 or 1) for each of `count` samples, from the OS random number generator.
fn random_classes(count: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; count.div_ceil(8)];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    (0..count)
        .map(|index| (bytes[index / 8] >> (index % 8)) & 1)
        .collect()
}

/// Runs `measure` once per sample with a random class, after a warm-up, and returns each
/// sample's class and the nanoseconds `measure` reported.
fn sample(count: usize, mut measure: impl FnMut(usize) -> u64) -> Vec<(u8, u64)> {
    for class in random_classes(WARM_UP) {
        black_box(measure(usize::from(class)));
    }
    random_classes(count)
        .into_iter()
        .map(|class| (class, measure(usize::from(class))))
        .collect()
}

/// Prints every crop and returns the largest |t|.
fn report(name: &str, samples: &[(u8, u64)], started: Instant) -> f64 {
    let crops = crops(samples);
    println!(
        "\n{name}: {} samples in {:.1} s",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    println!("  crop     kept       mean A (ns)  mean B (ns)  t");
    for crop in &crops {
        let t = crop
            .t
            .map_or_else(|| "one class empty".to_owned(), |t| format!("{t:>8.2}"));
        println!(
            "  {:>6.1}%  {:>9}  {:>11.2}  {:>11.2}  {t}",
            crop.percentile * 100.0,
            crop.kept,
            crop.mean_ns[0],
            crop.mean_ns[1],
        );
    }
    // A crop that keeps one class only separates the classes completely: an infinite |t|.
    let max = crops
        .iter()
        .map(|crop| crop.t.map_or(f64::INFINITY, f64::abs))
        .fold(0.0, f64::max);
    println!("  max |t| = {max:.2} (threshold {THRESHOLD})");
    if cfg!(debug_assertions) {
        println!("  (debug build: run with --release for figures that mean something)");
    }
    max
}

/// Times requests through `ApiKeyLayer` over `store`, each answered by the store at once.
fn sample_layer(store: ClassStore, key: &ApiKey, count: usize) -> Vec<(u8, u64)> {
    let store = std::sync::Arc::new(store);
    let inner = service_fn(|_request: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let mut service = ApiKeyLayer::new(std::sync::Arc::clone(&store)).layer(inner);
    let bearer = HeaderValue::try_from(format!("Bearer {}", key.expose_secret())).unwrap();
    let mut cx = Context::from_waker(Waker::noop());

    // Both classes must take the same path: well-formed, found, wrong digest, 401.
    for class in 0..2 {
        store.class.store(class, Ordering::Relaxed);
        let request = Request::builder()
            .header(AUTHORIZATION, bearer.clone())
            .body(Empty::new())
            .unwrap();
        let mut future = pin!(service.call(request));
        let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
            panic!("a store that answers at once gives an answer at once");
        };
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "class {class}");
    }

    sample(count, |class| {
        // Built outside the timed span: the same request for both classes.
        let request = Request::builder()
            .header(AUTHORIZATION, bearer.clone())
            // A fixed, sane id spares generating a random one inside the timed span.
            .header("x-request-id", "req_timing")
            .body(Empty::new())
            .unwrap();
        store.class.store(class, Ordering::Relaxed);
        assert!(service.poll_ready(&mut cx).is_ready());

        let start = Instant::now();
        let mut future = pin!(service.call(request));
        let answer = future.as_mut().poll(&mut cx);
        let elapsed = start.elapsed();

        // Dropped outside the timed span.
        drop(black_box(answer));
        elapsed.as_nanos() as u64
    })
}

/// Times `BATCH` calls of `compare(stored, presented)` per sample.
fn sample_comparison(
    fixture: &Fixture,
    count: usize,
    compare: impl Fn(&KeyDigest, &KeyDigest) -> bool,
) -> Vec<(u8, u64)> {
    let presented = fixture.presented_digest();
    let stored = fixture.records.each_ref().map(|record| record.digest);
    sample(count, |class| {
        // Copied into one place for both classes: where a digest sits (a cache line boundary
        // inside it or not) must not tell the classes apart.
        let stored = black_box(stored[class]);
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(compare(black_box(&stored), black_box(&presented)));
        }
        start.elapsed().as_nanos() as u64
    })
}

#[test]
#[ignore = "statistical timing check: cargo test --release --test it timing:: -- --ignored --nocapture"]
fn layer_timing_does_not_depend_on_which_secret_byte_is_wrong() {
    let _one_at_a_time = MEASURING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let fixture = Fixture::new();
    let store = ClassStore {
        records: fixture.records.clone(),
        class: AtomicUsize::new(0),
        leaky_compare_with: None,
    };
    let started = Instant::now();
    let samples = sample_layer(store, &fixture.key, LAYER_SAMPLES);
    let max = report(
        "ApiKeyLayer, wrong byte 16 (A) vs 31 (B)",
        &samples,
        started,
    );
    assert!(
        max < THRESHOLD,
        "timing depends on the wrong byte: |t| = {max:.2}"
    );
}

#[test]
#[ignore = "statistical timing check: cargo test --release --test it timing:: -- --ignored --nocapture"]
fn digest_comparison_timing_does_not_depend_on_which_byte_is_wrong() {
    let _one_at_a_time = MEASURING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let fixture = Fixture::new();
    let started = Instant::now();
    let samples = sample_comparison(&fixture, DIGEST_SAMPLES, KeyDigest::matches);
    let max = report(
        &format!("KeyDigest::matches x{BATCH}, wrong byte 16 (A) vs 31 (B)"),
        &samples,
        started,
    );
    assert!(
        max < THRESHOLD,
        "timing depends on the wrong byte: |t| = {max:.2}"
    );
}

#[test]
#[ignore = "statistical timing check: cargo test --release --test it timing:: -- --ignored --nocapture"]
fn check_detects_an_early_exit_comparison() {
    let _one_at_a_time = MEASURING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let fixture = Fixture::new();
    let started = Instant::now();
    let samples = sample_comparison(&fixture, DIGEST_SAMPLES, |stored, presented| {
        early_exit_eq(stored.as_bytes(), presented.as_bytes())
    });
    let max = report(
        &format!("leaky control: early-exit comparison x{BATCH}"),
        &samples,
        started,
    );
    assert!(
        max >= THRESHOLD,
        "the check missed a known leak: |t| = {max:.2}"
    );
}

#[test]
#[ignore = "statistical timing check: cargo test --release --test it timing:: -- --ignored --nocapture"]
fn check_detects_an_early_exit_comparison_behind_the_layer() {
    let _one_at_a_time = MEASURING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let fixture = Fixture::new();
    let store = ClassStore {
        records: fixture.records.clone(),
        class: AtomicUsize::new(0),
        leaky_compare_with: Some(fixture.presented_digest()),
    };
    let started = Instant::now();
    let samples = sample_layer(store, &fixture.key, LAYER_SAMPLES);
    let max = report(
        "leaky control: ApiKeyLayer over a store comparing byte by byte",
        &samples,
        started,
    );
    assert!(
        max >= THRESHOLD,
        "the check missed a known leak: |t| = {max:.2}"
    );
}

#[test]
fn welch_t_matches_a_worked_example() {
    // Class 0: 1, 2, 3 (mean 2, variance 1); class 1: 4, 6, 8 (mean 6, variance 4).
    // t = (2 - 6) / sqrt(1/3 + 4/3) = -4 / sqrt(5/3).
    let mut welch = Welch::default();
    for (class, value) in [(0, 1.0), (1, 4.0), (0, 2.0), (1, 6.0), (0, 3.0), (1, 8.0)] {
        welch.push(class, value);
    }
    let expected = -4.0 / (5.0f64 / 3.0).sqrt();
    let t = welch.t().unwrap();
    assert!((t - expected).abs() < 1e-12, "{t}");
}
