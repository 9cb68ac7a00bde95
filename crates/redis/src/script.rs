//! The decision code: the prelude, the algorithm files and the entry point
//! (`main.lua`'s `decide`), concatenated, so that a check of several
//! policies of different algorithms is still one call. It runs two ways:
//!
//! - as a Redis function ([`LIBRARY`]): one library holding every
//!   algorithm, loaded once with `FUNCTION LOAD`, called with `FCALL`. Its
//!   top level (every helper, algorithm and dispatch table) runs once per
//!   load, not per call. The production path on Redis 7 and later.
//! - as a script ([`for_mask`]), for `EVALSHA` where functions are not
//!   available (Redis before 7, or an ACL without `FUNCTION`). Redis runs a
//!   cached script's whole body on every call, so every function it defines
//!   is created again each time: each check runs the script of exactly its
//!   algorithms, one of 63, built and hashed the first time it is needed,
//!   and only a lease call's script ([`for_lease_mask`]) holds the lease
//!   code, only a reservation's ([`for_reserve_mask`]) the reservation
//!   code.
//!
//! docs/REDIS.md says how the store chooses, and docs/BENCHMARKS.md what
//! each costs.

use std::sync::{LazyLock, OnceLock};

use tollgate::{Algorithm, PolicyRef};

/// The shared helpers every script starts with.
const PRELUDE: &str = include_str!("lua/prelude.lua");
/// The entry point (`decide`) every script and the library end with.
const MAIN: &str = include_str!("lua/main.lua");
/// What makes a script of the code: a script's body runs on every call.
const SCRIPT_TAIL: &str = "return decide(KEYS, ARGV)\n";

/// What the lease files share, after the algorithm files.
const LEASE_PRELUDE: &str = include_str!("lua/lease/prelude.lua");
/// The lease step, after [`MAIN`].
const LEASE_MAIN: &str = include_str!("lua/lease/main.lua");

/// What the reservation files share, after the lease files.
const RESERVE_PRELUDE: &str = include_str!("lua/reserve/prelude.lua");
/// The reservation steps, after [`MAIN`] (and [`LEASE_MAIN`], where both
/// are held).
const RESERVE_MAIN: &str = include_str!("lua/reserve/main.lua");

/// The reservation file (`OVERDRAW`) of each algorithm that can be
/// reserved, after its lease file.
const RESERVE_ALGORITHMS: [(Algorithm, &str); 4] = [
    (
        Algorithm::FixedWindow,
        include_str!("lua/reserve/fixed_window.lua"),
    ),
    (
        Algorithm::SlidingWindow,
        include_str!("lua/reserve/sliding_window.lua"),
    ),
    (
        Algorithm::TokenBucket,
        include_str!("lua/reserve/token_bucket.lua"),
    ),
    (Algorithm::Gcra, include_str!("lua/reserve/gcra.lua")),
];

/// The lease file of each algorithm that leases, after its algorithm file.
const LEASE_ALGORITHMS: [(Algorithm, &str); 4] = [
    (
        Algorithm::FixedWindow,
        include_str!("lua/lease/fixed_window.lua"),
    ),
    (
        Algorithm::SlidingWindow,
        include_str!("lua/lease/sliding_window.lua"),
    ),
    (
        Algorithm::TokenBucket,
        include_str!("lua/lease/token_bucket.lua"),
    ),
    (Algorithm::Gcra, include_str!("lua/lease/gcra.lua")),
];

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

/// The full source of the decision script: every algorithm, the lease
/// code and the reservation code. What a tool that loads one script by
/// hand (`redis-cli SCRIPT LOAD`) takes.
pub const SOURCE: &str = concat!(
    include_str!("lua/prelude.lua"),
    include_str!("lua/fixed_window.lua"),
    include_str!("lua/sliding_window.lua"),
    include_str!("lua/sliding_log.lua"),
    include_str!("lua/token_bucket.lua"),
    include_str!("lua/gcra.lua"),
    include_str!("lua/leaky_bucket.lua"),
    include_str!("lua/lease/prelude.lua"),
    include_str!("lua/lease/fixed_window.lua"),
    include_str!("lua/lease/sliding_window.lua"),
    include_str!("lua/lease/token_bucket.lua"),
    include_str!("lua/lease/gcra.lua"),
    include_str!("lua/reserve/prelude.lua"),
    include_str!("lua/reserve/fixed_window.lua"),
    include_str!("lua/reserve/sliding_window.lua"),
    include_str!("lua/reserve/token_bucket.lua"),
    include_str!("lua/reserve/gcra.lua"),
    include_str!("lua/main.lua"),
    include_str!("lua/lease/main.lua"),
    include_str!("lua/reserve/main.lua"),
    "return decide(KEYS, ARGV)\n",
);

/// The function library: every algorithm, the lease and the reservation
/// code, and one function, `decide`, registered under the library's own
/// name.
#[derive(Debug)]
pub struct Library {
    /// `tollgate_` and the first 16 hex digits of the SHA-1 of the code:
    /// the name of the library and of its function. Two versions of
    /// tollgate with different code load libraries of different names, so
    /// both run side by side during a rolling upgrade, and loading one
    /// (`FUNCTION LOAD REPLACE`) can only replace a library of the same
    /// name, which holds the same code.
    pub name: String,
    /// What `FUNCTION LOAD` takes: the `#!lua name=` line, the code and the
    /// registration.
    pub source: String,
}

/// The function library, built and hashed once.
pub static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let code = code(0x3f, Kind::All);
    let hash = redis::Script::new(&code).get_hash().to_owned();
    let name = format!("tollgate_{}", &hash[..16]);
    let source = format!("#!lua name={name}\n{code}redis.register_function('{name}', decide)\n");
    Library { name, source }
});

/// A decision script of a set of algorithms: its source and hash.
#[derive(Debug)]
pub struct Decision {
    /// The Lua source, sent with `EVAL` when Redis does not have it.
    pub source: String,
    /// Its SHA-1, for `EVALSHA`.
    pub script: redis::Script,
}

/// The scripts built so far, by [`mask`]: of decisions, of lease calls,
/// and of reservations (both steps).
static BY_MASK: [OnceLock<Decision>; 64] = [const { OnceLock::new() }; 64];
static LEASE_BY_MASK: [OnceLock<Decision>; 64] = [const { OnceLock::new() }; 64];
static RESERVE_BY_MASK: [OnceLock<Decision>; 64] = [const { OnceLock::new() }; 64];

/// What a piece of code holds beyond the decision code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Nothing: a check's script.
    Decision,
    /// The lease code: a lease call's script.
    Lease,
    /// The reservation code and the lease files it uses (`LEASE_UNTIL`,
    /// `GIVE_BACK`), without the lease step: a reservation's script.
    Reserve,
    /// Everything: the library, and [`SOURCE`].
    All,
}

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

/// The code of the algorithms of `mask` (a full mask: every algorithm)
/// and what `kind` adds, without a script's tail: the prelude, the
/// algorithm files, the lease files, the reservation files, the entry
/// point, the lease step, the reservation steps.
fn code(mask: u8, kind: Kind) -> String {
    let lease_files = kind != Kind::Decision;
    let lease_step = matches!(kind, Kind::Lease | Kind::All);
    let reserve = matches!(kind, Kind::Reserve | Kind::All);
    let mut code = String::with_capacity(SOURCE.len());
    code.push_str(PRELUDE);
    for (i, (_, file)) in ALGORITHMS.iter().enumerate() {
        if mask & (1 << i) != 0 {
            code.push_str(file);
        }
    }
    let mut push_files = |prelude: &str, files: &[(Algorithm, &str)]| {
        code.push_str(prelude);
        for (algorithm, file) in files {
            if mask & bit(*algorithm) != 0 {
                code.push_str(file);
            }
        }
    };
    if lease_files {
        push_files(LEASE_PRELUDE, &LEASE_ALGORITHMS);
    }
    if reserve {
        push_files(RESERVE_PRELUDE, &RESERVE_ALGORITHMS);
    }
    code.push_str(MAIN);
    if lease_step {
        code.push_str(LEASE_MAIN);
    }
    if reserve {
        code.push_str(RESERVE_MAIN);
    }
    code
}

/// The script of `mask` in `scripts` (every algorithm for 0, which no
/// check has), built the first time.
fn script(scripts: &'static [OnceLock<Decision>; 64], mask: u8, kind: Kind) -> &'static Decision {
    let mask = if mask == 0 { 0x3f } else { mask & 0x3f };
    scripts[usize::from(mask)].get_or_init(|| {
        let mut source = code(mask, kind);
        source.push_str(SCRIPT_TAIL);
        let script = redis::Script::new(&source);
        Decision { source, script }
    })
}

/// The decision script holding exactly the algorithms of `mask` (every
/// algorithm for 0, which no check has), without the lease code.
pub fn for_mask(mask: u8) -> &'static Decision {
    script(&BY_MASK, mask, Kind::Decision)
}

/// The script of a lease call on the algorithms of `mask`: theirs and
/// their lease code.
pub fn for_lease_mask(mask: u8) -> &'static Decision {
    script(&LEASE_BY_MASK, mask, Kind::Lease)
}

/// The script of a reservation's steps (reserve and settle) on the
/// algorithms of `mask`: theirs, the lease files they use (`LEASE_UNTIL`,
/// `GIVE_BACK`) and their reservation code.
pub fn for_reserve_mask(mask: u8) -> &'static Decision {
    script(&RESERVE_BY_MASK, mask, Kind::Reserve)
}

/// The source of the envoyproxy/ratelimit counter script: a fixed window
/// kept in envoyproxy/ratelimit's key layout (`lua/envoy_counter.lua`), for
/// [`RedisStore::apply_envoy_counter`](crate::RedisStore::apply_envoy_counter).
pub const ENVOY_COUNTER_SOURCE: &str = concat!(
    include_str!("lua/prelude.lua"),
    include_str!("lua/envoy_counter.lua"),
);

/// A policy as the decision code takes it: one argument, `"<algorithm>
/// <limit> <period µs> <capacity> <scaled unit> <scaled rate>"` (main.lua).
/// One word per policy lets the library parse each policy once.
pub fn policy_arg(policy: &tollgate::Policy) -> String {
    PolicyArg(policy).to_string()
}

/// [`policy_arg`] as it is written: the store writes it straight into the
/// command's buffer, with no string of its own per decision.
pub(crate) struct PolicyArg<'a>(pub(crate) &'a tollgate::Policy);

impl std::fmt::Display for PolicyArg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let policy = self.0;
        write!(
            f,
            "{} {} {} {} {} {}",
            policy.algorithm().name(),
            policy.limit(),
            policy.period_us(),
            policy.capacity(),
            policy.scaled_unit(),
            policy.scaled_rate()
        )
    }
}

/// The envoyproxy/ratelimit counter script, hashed once.
pub static ENVOY_COUNTER: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(ENVOY_COUNTER_SOURCE));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_holds_every_algorithm_and_is_named_by_its_code() {
        let library = &*LIBRARY;
        assert!(library.name.starts_with("tollgate_"));
        assert_eq!(library.name.len(), "tollgate_".len() + 16);
        assert!(
            library
                .source
                .starts_with(&format!("#!lua name={}\n", library.name))
        );
        for (_, file) in ALGORITHMS
            .iter()
            .chain(&LEASE_ALGORITHMS)
            .chain(&RESERVE_ALGORITHMS)
        {
            assert!(library.source.contains(file));
        }
        assert!(library.source.contains(LEASE_MAIN));
        assert!(library.source.contains(RESERVE_MAIN));
        assert!(!library.source.contains(SCRIPT_TAIL));
    }

    #[test]
    fn the_full_mask_is_the_full_script() {
        assert_eq!(code(0x3f, Kind::All) + SCRIPT_TAIL, SOURCE);
        assert!(LIBRARY.source.contains(&code(0x3f, Kind::All)));
        // A decision's script has no lease or reservation code; a lease
        // call's no reservation code; a reservation's no lease step.
        for source in [&for_mask(0x3f).source, &for_mask(0).source] {
            assert!(!source.contains(LEASE_PRELUDE));
            assert!(!source.contains(LEASE_MAIN));
            assert!(!source.contains(RESERVE_PRELUDE));
            assert!(!source.contains(RESERVE_MAIN));
        }
        assert!(!for_lease_mask(0x3f).source.contains(RESERVE_PRELUDE));
        assert!(!for_lease_mask(0x3f).source.contains(RESERVE_MAIN));
        assert!(for_lease_mask(0x3f).source.contains(LEASE_MAIN));
        let reserve = &for_reserve_mask(0).source;
        assert!(reserve.contains(LEASE_PRELUDE) && reserve.contains(RESERVE_MAIN));
        assert!(!reserve.contains(LEASE_MAIN));
    }

    #[test]
    fn a_script_holds_exactly_its_algorithms() {
        for (i, (algorithm, file)) in ALGORITHMS.iter().enumerate() {
            let alone = for_mask(1 << i);
            assert!(alone.source.contains(file), "{algorithm:?}");
            let lease = for_lease_mask(1 << i);
            assert!(lease.source.contains(file), "{algorithm:?}");
            let reserve = for_reserve_mask(1 << i);
            assert!(reserve.source.contains(file), "{algorithm:?}");
            for (other, reserve_file) in &RESERVE_ALGORITHMS {
                assert!(!alone.source.contains(reserve_file));
                assert!(!lease.source.contains(reserve_file));
                assert_eq!(
                    reserve.source.contains(reserve_file),
                    other == algorithm,
                    "{other:?}'s reservation code in {algorithm:?}'s reservation script"
                );
            }
            for (other, lease_file) in &LEASE_ALGORITHMS {
                assert_eq!(
                    reserve.source.contains(lease_file),
                    other == algorithm,
                    "{other:?}'s lease code in {algorithm:?}'s reservation script"
                );
            }
            for (other, lease_file) in &LEASE_ALGORITHMS {
                assert!(
                    !alone.source.contains(lease_file),
                    "{other:?} in {algorithm:?}'s"
                );
                assert_eq!(
                    lease.source.contains(lease_file),
                    other == algorithm,
                    "{other:?}'s lease code in {algorithm:?}'s lease script"
                );
            }
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
