//! Prints the decision code, so that shell benchmarks (and operators) can
//! load it into a Redis and drive the very call the store sends with
//! `redis-benchmark`: the ceiling the store is compared against
//! (`scripts/bench-server.sh`), and the Redis CPU per decision
//! (`scripts/bench-script-cpu.sh`).
//!
//! With `--policy "<policy>"` (e.g. `"gcra 100/1s"`), that policy as the
//! one argument the decision code takes for it (main.lua's ARGV).
//! With `--library`, the function library (`redis-cli FUNCTION LOAD
//! "$(...)"` answers its name, which is also its function's: `FCALL <name>`).
//! With algorithm names, the script a check of those algorithms runs where
//! functions cannot be used (`SCRIPT LOAD`, `EVALSHA`); with neither, the
//! script of all six.
//!
//! ```sh
//! cargo run -q -p tollgate-redis --example decision_script -- --library > /tmp/tollgate.lua
//! cargo run -q -p tollgate-redis --example decision_script -- gcra > /tmp/gcra.lua
//! ```

use tollgate::{Algorithm, Policy, PolicyRef};
use tollgate_redis::script;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--library") => {
            print!("{}", script::LIBRARY.source);
            return;
        }
        Some("--policy") => {
            let text = std::env::args().nth(2).unwrap_or_default();
            let policy: Policy = text.parse().unwrap_or_else(|e| {
                eprintln!("{text}: {e}");
                std::process::exit(2);
            });
            print!("{}", script::policy_arg(&policy));
            return;
        }
        _ => {}
    }
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
