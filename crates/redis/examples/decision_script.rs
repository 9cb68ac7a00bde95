//! Prints the decision script, so that shell benchmarks can load it into a
//! Redis (`redis-cli SCRIPT LOAD "$(...)"`) and drive the very `EVALSHA` the
//! store sends with `redis-benchmark`: the ceiling the store is compared
//! against (`scripts/bench-server.sh`).
//!
//! ```sh
//! cargo run -q -p tollgate-redis --example decision_script > /tmp/decision.lua
//! ```

fn main() {
    print!("{}", tollgate_redis::script::SOURCE);
}
