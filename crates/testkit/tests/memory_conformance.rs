//! The memory store passes the conformance suite.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    tollgate_testkit::conformance::run_all(|clock| async move {
        tollgate::MemoryStore::with_clock(clock)
    })
    .await;
}
