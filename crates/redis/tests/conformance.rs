//! The Redis store passes the same conformance suite as the memory store,
//! on a standalone server and on a 3-master Cluster.

mod common;

use tollgate_testkit::redis::{RedisCluster, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_redis_conforms() {
    let server = RedisServer::start();
    let url = server.url();
    tollgate_testkit::conformance::run_all(|clock| {
        let url = url.clone();
        async move { common::standalone(&url, clock).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_conforms() {
    let cluster = RedisCluster::start(3, 0);
    let urls = cluster.urls();
    tollgate_testkit::conformance::run_all(|clock| {
        let urls = urls.clone();
        async move { common::cluster(&urls, clock).await }
    })
    .await;
}
