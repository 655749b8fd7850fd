//! Cost of the layer per request, through `oneshot` on a trivial inner service.
//!
//! `cargo bench` runs it; compare each row with `baseline` from the same run.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_api_key::{
    ApiKey, ApiKeyLayer, KeyFormat, KeyId, KeyIdentity, KeyRecord, MemoryKeyStore, Tier,
};

async fn ok(_request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::default()))
}

fn store_with(count: usize) -> (MemoryKeyStore, ApiKey) {
    let store = MemoryKeyStore::new();
    let format = KeyFormat::default();
    let mut last = None;
    for index in 0..count {
        let key = format.generate();
        let identity = KeyIdentity::new(
            KeyId::new(format!("key_{index}")),
            "acct",
            "bench",
            Tier::FREE,
        );
        store.insert(KeyRecord::new(key.digest(), identity));
        last = Some(key);
    }
    (store, last.expect("at least one key"))
}

fn request(header: Option<(&str, &str)>) -> Request<Full<Bytes>> {
    let mut request = Request::builder().uri("/api/v1/iocs");
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    request.body(Full::default()).unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (store, key) = store_with(1_000);
    let bearer = format!("Bearer {}", key.expose_secret());
    let typo = format!("{}x", &key.expose_secret()[..key.expose_secret().len() - 1]);
    let unknown = KeyFormat::default().generate();

    let baseline = ServiceBuilder::new().service_fn(ok);
    let layered = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(store))
        .service(service_fn(ok));

    let mut group = c.benchmark_group("request");
    group.bench_function("baseline", |b| {
        b.to_async(&runtime)
            .iter(|| baseline.oneshot(request(Some(("authorization", &bearer)))))
    });
    group.bench_function("valid_key_1k", |b| {
        b.to_async(&runtime).iter(|| {
            layered
                .clone()
                .oneshot(request(Some(("authorization", &bearer))))
        })
    });
    group.bench_function("missing_api_key", |b| {
        b.to_async(&runtime)
            .iter(|| layered.clone().oneshot(request(None)))
    });
    group.bench_function("invalid_api_key_checksum", |b| {
        b.to_async(&runtime)
            .iter(|| layered.clone().oneshot(request(Some(("x-api-key", &typo)))))
    });
    group.bench_function("invalid_api_key_unknown", |b| {
        b.to_async(&runtime).iter(|| {
            layered
                .clone()
                .oneshot(request(Some(("x-api-key", unknown.expose_secret()))))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
