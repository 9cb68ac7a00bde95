//! The decision scripts: the prelude, the algorithm files a check needs and
//! the dispatcher, concatenated into one Lua script, so that a check of
//! several policies of different algorithms is still one `EVALSHA`.
//!
//! Redis runs a cached script's whole body on every call, so every function
//! it defines is created again each time. A script holding all six
//! algorithms therefore paid for five it did not run (about 1 µs of Redis
//! CPU per decision, an eighth of it, measured with `INFO commandstats`:
//! docs/BENCHMARKS.md). Each check now runs the script of exactly its
//! algorithms: one of 63, built and hashed the first time it is needed.

use std::sync::{LazyLock, OnceLock};

use tollgate::{Algorithm, PolicyRef};

/// The shared helpers every script starts with.
const PRELUDE: &str = include_str!("lua/prelude.lua");
/// The entry point every script ends with.
const MAIN: &str = include_str!("lua/main.lua");

/// Each algorithm's file, in [`Algorithm::ALL`]'s order.
const ALGORITHMS: [(Algorithm, &str); 6] = [
    (Algorithm::FixedWindow, include_str!("lua/fixed_window.lua")),
    (
        Algorithm::SlidingWindow,
        include_str!("lua/sliding_window.lua"),
    ),
    (Algorithm::SlidingLog, include_str!("lua/sliding_log.lua")),
    (Algorithm::TokenBucket, include_str!("lua/token_bucket.lua")),
    (Algorithm::Gcra, include_str!("lua/gcra.lua")),
    (Algorithm::LeakyBucket, include_str!("lua/leaky_bucket.lua")),
];

/// The full source of the decision script: every algorithm. What a tool
/// that loads one script by hand (`redis-cli SCRIPT LOAD`) takes.
pub const SOURCE: &str = concat!(
    include_str!("lua/prelude.lua"),
    include_str!("lua/fixed_window.lua"),
    include_str!("lua/sliding_window.lua"),
    include_str!("lua/sliding_log.lua"),
    include_str!("lua/token_bucket.lua"),
    include_str!("lua/gcra.lua"),
    include_str!("lua/leaky_bucket.lua"),
    include_str!("lua/main.lua"),
);

/// A decision script of a set of algorithms: its source and hash.
#[derive(Debug)]
pub struct Decision {
    /// The Lua source, sent with `EVAL` when Redis does not have it.
    pub source: String,
    /// Its SHA-1, for `EVALSHA`.
    pub script: redis::Script,
}

/// The scripts built so far, by [`mask`].
static BY_MASK: [OnceLock<Decision>; 64] = [const { OnceLock::new() }; 64];

/// The bit of `algorithm` in a mask (its place in [`Algorithm::ALL`]).
fn bit(algorithm: Algorithm) -> u8 {
    let index = ALGORITHMS
        .iter()
        .position(|(a, _)| *a == algorithm)
        .unwrap_or(0);
    1 << index
}

/// The set of algorithms of `policies`, as a mask of [`Algorithm::ALL`]'s
/// places.
pub fn mask(policies: &[PolicyRef<'_>]) -> u8 {
    policies
        .iter()
        .fold(0, |mask, p| mask | bit(p.policy.algorithm()))
}

/// The script holding exactly the algorithms of `mask` (every algorithm
/// for 0, which no check has).
pub fn for_mask(mask: u8) -> &'static Decision {
    let mask = if mask == 0 { 0x3f } else { mask & 0x3f };
    BY_MASK[usize::from(mask)].get_or_init(|| {
        let mut source = String::with_capacity(SOURCE.len());
        source.push_str(PRELUDE);
        for (i, (_, file)) in ALGORITHMS.iter().enumerate() {
            if mask & (1 << i) != 0 {
                source.push_str(file);
            }
        }
        source.push_str(MAIN);
        let script = redis::Script::new(&source);
        Decision { source, script }
    })
}

/// The source of the envoyproxy/ratelimit counter script: a fixed window
/// kept in envoyproxy/ratelimit's key layout (`lua/envoy_counter.lua`), for
/// [`RedisStore::apply_envoy_counter`](crate::RedisStore::apply_envoy_counter).
pub const ENVOY_COUNTER_SOURCE: &str = concat!(
    include_str!("lua/prelude.lua"),
    include_str!("lua/envoy_counter.lua"),
);

/// The envoyproxy/ratelimit counter script, hashed once.
pub static ENVOY_COUNTER: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(ENVOY_COUNTER_SOURCE));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_mask_is_the_full_script() {
        assert_eq!(for_mask(0x3f).source, SOURCE);
        assert_eq!(for_mask(0).source, SOURCE);
        assert_eq!(
            for_mask(0x3f).script.get_hash(),
            redis::Script::new(SOURCE).get_hash()
        );
    }

    #[test]
    fn a_script_holds_exactly_its_algorithms() {
        for (i, (algorithm, file)) in ALGORITHMS.iter().enumerate() {
            let alone = for_mask(1 << i);
            assert!(alone.source.contains(file), "{algorithm:?}");
            for (other, other_file) in &ALGORITHMS {
                if other != algorithm {
                    assert!(
                        !alone.source.contains(other_file),
                        "{other:?} in {algorithm:?}'s"
                    );
                }
            }
        }
        let policy: tollgate::Policy = "gcra 10/1s".parse().unwrap();
        let window: tollgate::Policy = "fixed_window 10/1s".parse().unwrap();
        let refs = [
            PolicyRef {
                name: "a",
                policy: &policy,
            },
            PolicyRef {
                name: "b",
                policy: &window,
            },
        ];
        assert_eq!(
            mask(&refs),
            bit(Algorithm::Gcra) | bit(Algorithm::FixedWindow)
        );
    }
}
