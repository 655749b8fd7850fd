//! The integration tests, in one crate so that the library is linked once: the HTTP contract
//! through the layer, each store against the one store suite (`tower_api_key::testing`,
//! feature `testing`), the demo and the examples over real connections on loopback.
//!
//! ```text
//! cargo test                                   # the memory store and everything without a server
//! bash .ci/redis-cluster.sh start              # a Redis Cluster on 127.0.0.1:7001-7003
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   REDIS_CLUSTER_URLS=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!   cargo test --all-features                  # every store
//! cargo test --all-features --test it store_redis::   # one module
//! ```

mod common;

mod browser;
mod cli;
mod credits;
mod demo;
mod failed_attempts;
mod faults_under_load;
mod global_limits;
mod hostile_headers;
mod http;
mod keys_api;
mod layer;
mod lifecycle;
mod limits;
mod metrics;
mod modes;
mod openapi;
mod optional;
mod properties;
mod redaction;
mod scopes;
mod secret_scanning;
mod store_cache;
mod store_custom;
mod store_memory;
mod store_postgres;
mod store_redis;
mod store_redis_cluster;
mod store_sqlite;
mod timing;
mod tonic;
