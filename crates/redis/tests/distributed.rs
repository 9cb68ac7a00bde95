//! Distributed exactness: several independent limiters — separate
//! connections, and separate OS processes — hammering one key together admit
//! exactly the limit of the exact algorithms, on standalone and on Cluster.

mod common;

use std::process::Command;

use tollgate::{Algorithm, Limiter};
use tollgate_redis::{RedisOptions, RedisStore};
use tollgate_testkit::redis::{RedisCluster, RedisServer};

/// Policies with a limit of 100 per hour for each exact algorithm.
fn policies() -> Vec<(String, tollgate::Policy)> {
    Algorithm::ALL
        .into_iter()
        .filter(|a| a.is_exact())
        .map(|a| {
            (
                a.name().to_owned(),
                format!("{a} 100/1h").parse().expect("valid"),
            )
        })
        .collect()
}

async fn connect(urls: &[String], prefix: &str) -> RedisStore {
    let options = RedisOptions::default()
        .prefix(prefix)
        .timeout(std::time::Duration::from_secs(5));
    if urls.len() == 1 {
        RedisStore::connect(&urls[0], options)
            .await
            .expect("connect")
    } else {
        RedisStore::connect_cluster(urls, options)
            .await
            .expect("connect")
    }
}

/// Runs `tasks` tasks making `per_task` single-unit checks each, spread
/// over `limiters`; returns how many were admitted.
async fn admitted_by(
    limiters: &[Limiter<RedisStore>],
    name: &str,
    tasks: usize,
    per_task: usize,
) -> u64 {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let limiter = limiters[t % limiters.len()].clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                let mut n = 0u64;
                for _ in 0..per_task {
                    n += u64::from(
                        limiter
                            .check(&name, "shared", 1)
                            .await
                            .expect("redis")
                            .allowed,
                    );
                }
                n
            })
        })
        .collect();
    let mut admitted = 0;
    for h in handles {
        admitted += h.await.expect("task");
    }
    admitted
}

/// `instances` limiters with their own connection, 64 tasks in all.
async fn hammer(urls: &[String], instances: usize) {
    let prefix = common::unique_prefix();
    for (name, policy) in policies() {
        let mut limiters = Vec::new();
        for _ in 0..instances {
            let store = connect(urls, &prefix).await;
            limiters.push(Limiter::builder(store).policy(name.clone(), policy).build());
        }
        let admitted = admitted_by(&limiters, &name, 64, 4).await;
        assert_eq!(
            admitted, 100,
            "{name}: {instances} instances x 64 tasks admitted {admitted}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_on_standalone_admit_exactly_the_limit() {
    let server = RedisServer::start();
    hammer(&[server.url()], 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_on_a_cluster_admit_exactly_the_limit() {
    let cluster = RedisCluster::start(3, 0);
    hammer(&cluster.urls(), 4).await;
}

/// The environment variable that turns this test binary into a worker.
const WORKER: &str = "TOLLGATE_DISTRIBUTED_WORKER";

/// Runs as the coordinator in a normal test run: starts Redis and four
/// copies of this test binary as separate processes (each re-entering this
/// test as a worker with its own runtime and connection), then checks that
/// together they admitted exactly the limit.
#[test]
fn separate_processes_admit_exactly_the_limit() {
    if let Ok(spec) = std::env::var(WORKER) {
        return worker(&spec);
    }
    for topology in ["standalone", "cluster"] {
        let (_server, _cluster, urls) = if topology == "standalone" {
            let s = RedisServer::start();
            let url = s.url();
            (Some(s), None, vec![url])
        } else {
            let c = RedisCluster::start(3, 0);
            let urls = c.urls();
            (None, Some(c), urls)
        };
        let prefix = common::unique_prefix();
        let exe = std::env::current_exe().expect("test binary path");
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(&exe)
                    .args([
                        "--exact",
                        "separate_processes_admit_exactly_the_limit",
                        "--nocapture",
                        "--test-threads",
                        "1",
                    ])
                    .env(WORKER, format!("{prefix} {}", urls.join(",")))
                    .output()
            })
            .collect();
        let mut totals = std::collections::BTreeMap::<String, u64>::new();
        for child in children {
            let out = child.expect("worker process ran");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "worker failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // libtest prints "test <name> ... " without a newline before the
            // test's own output, so the marker may start mid-line.
            for line in stdout
                .lines()
                .filter_map(|l| l.find("admitted ").map(|i| &l[i + 9..]))
            {
                let (name, n) = line.split_once(' ').expect("admitted <policy> <n>");
                *totals.entry(name.to_owned()).or_default() += n.parse::<u64>().expect("count");
            }
        }
        assert_eq!(
            totals.len(),
            policies().len(),
            "{topology}: every policy reported: {totals:?}"
        );
        for (name, admitted) in totals {
            assert_eq!(
                admitted, 100,
                "{topology} {name}: 4 processes admitted {admitted}"
            );
        }
    }
}

fn worker(spec: &str) {
    let (prefix, urls) = spec.split_once(' ').expect("prefix and urls");
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = connect(&urls, prefix).await;
        for (name, policy) in policies() {
            let limiter = Limiter::builder(store.clone())
                .policy(name.clone(), policy)
                .build();
            let admitted = admitted_by(&[limiter], &name, 16, 4).await;
            println!("admitted {name} {admitted}");
        }
    });
}
