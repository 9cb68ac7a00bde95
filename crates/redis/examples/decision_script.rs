//! Prints a decision script, so that shell benchmarks can load it into a
//! Redis (`redis-cli SCRIPT LOAD "$(...)"`) and drive the very `EVALSHA` the
//! store sends with `redis-benchmark`: the ceiling the store is compared
//! against (`scripts/bench-server.sh`), and the Redis CPU per decision
//! (`scripts/bench-script-cpu.sh`).
//!
//! With algorithm names, the script a check of those algorithms runs; with
//! none, the script of all six.
//!
//! ```sh
//! cargo run -q -p tollgate-redis --example decision_script -- gcra > /tmp/gcra.lua
//! ```

use tollgate::{Algorithm, Policy, PolicyRef};
use tollgate_redis::script;

fn main() {
    let policies: Vec<Policy> = std::env::args()
        .skip(1)
        .map(|name| {
            let algorithm: Algorithm = name.parse().unwrap_or_else(|e| {
                eprintln!("{name}: {e}");
                std::process::exit(2);
            });
            Policy::new(algorithm, 10, std::time::Duration::from_secs(1), None).unwrap_or_else(
                |e| {
                    eprintln!("{name}: {e}");
                    std::process::exit(2);
                },
            )
        })
        .collect();
    if policies.is_empty() {
        print!("{}", script::SOURCE);
        return;
    }
    let refs: Vec<PolicyRef<'_>> = policies
        .iter()
        .map(|policy| PolicyRef { name: "p", policy })
        .collect();
    print!("{}", script::for_mask(script::mask(&refs)).source);
}
