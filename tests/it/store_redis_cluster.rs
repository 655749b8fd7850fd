//! The store suite and the push-invalidation tests against `RedisKeyStore` on the Redis Cluster
//! whose nodes `REDIS_CLUSTER_URLS` lists (comma-separated), as `store_redis` runs them on a
//! single Redis. `.ci/redis-cluster.sh start` starts such a cluster on 127.0.0.1:
//!
//! ```text
//! REDIS_CLUSTER_URLS=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!   cargo test --features redis --test it store_redis_cluster::
//! ```
#![cfg(feature = "redis")]

use crate::common;

use std::sync::LazyLock;

use async_trait::async_trait;
use common::suite::Backend;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tower_api_key::store::RedisKeyStore;

/// A prefix no earlier run used, shared by this process's suite stores.
static PREFIX: LazyLock<String> =
    LazyLock::new(|| format!("tower-api-key-test-{}", uuid::Uuid::new_v4().simple()));

/// The cluster's nodes. Unset, the tests fail: a backend test that cannot reach its server must
/// not pass.
fn nodes() -> Vec<String> {
    let urls = std::env::var("REDIS_CLUSTER_URLS").unwrap_or_default();
    assert!(
        !urls.is_empty(),
        "REDIS_CLUSTER_URLS is not set: the `redis` feature's cluster tests need a Redis Cluster; \
         `bash .ci/redis-cluster.sh start` starts one on 127.0.0.1 and prints the variable"
    );
    urls.split(',').map(|url| url.trim().to_owned()).collect()
}

/// A new connection to the cluster.
async fn connect() -> ClusterConnection {
    let client = ClusterClient::new(nodes()).unwrap();
    client
        .get_async_connection()
        .await
        .unwrap_or_else(|error| panic!("cannot reach the cluster at REDIS_CLUSTER_URLS: {error}"))
}

/// Each instance has its own connection, as separate application instances would.
struct Cluster {
    prefix: String,
}

#[async_trait]
impl Backend for Cluster {
    type Store = RedisKeyStore;

    async fn instance(&self) -> RedisKeyStore {
        RedisKeyStore::cluster(connect().await).prefix(self.prefix.clone())
    }
}

tower_api_key::store_suite!(Cluster {
    prefix: PREFIX.clone()
});

mod changes {
    use super::*;
    use crate::common::suite::{account, clock, create, manager};
    use crate::store_redis::changes::{
        channel, lookup_hex, next_message, node_connection, subscribe, unique_prefix, Deployment,
    };

    /// The cluster, with change feeds on a node that does not hold the stores' slot.
    pub struct ClusterNodes;

    #[async_trait]
    impl Deployment for ClusterNodes {
        async fn store(&self, prefix: &str) -> RedisKeyStore {
            RedisKeyStore::cluster(connect().await).prefix(prefix)
        }

        async fn feed_node(&self, prefix: &str) -> String {
            let key = format!("{{{prefix}}}:probe");
            for node in node_addresses() {
                // A node that does not hold the key's slot answers MOVED.
                let mut connection = node_connection(&node).await;
                let owns = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async::<i64>(&mut connection)
                    .await
                    .is_ok();
                if !owns {
                    return node;
                }
            }
            panic!("every node holds the slot of {key}: the cluster has one master");
        }
    }

    /// Each node's `host:port`.
    fn node_addresses() -> Vec<String> {
        let nodes = nodes();
        let addresses: Vec<String> = nodes
            .iter()
            .filter_map(|url| url.strip_prefix("redis://"))
            .map(|address| address.trim_end_matches('/').to_owned())
            .collect();
        assert_eq!(
            addresses.len(),
            nodes.len(),
            "the tests need REDIS_CLUSTER_URLS to be plain redis://host:port URLs"
        );
        addresses
    }

    crate::redis_changes_suite!(ClusterNodes);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_script_s_message_reaches_subscribers_on_every_node() {
        let (prefix, clock) = (unique_prefix(), clock());
        let mut subscribers = Vec::new();
        for node in node_addresses() {
            subscribers.push(subscribe(&node, &channel(&prefix)).await);
        }
        let keys = manager(ClusterNodes.store(&prefix).await, &clock);
        let created = create(&keys, &account()).await;
        for subscriber in &mut subscribers {
            assert_eq!(next_message(subscriber).await, lookup_hex(&created.key));
        }
    }
}
