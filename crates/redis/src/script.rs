//! The decision script: the six algorithm files and the dispatcher,
//! concatenated at compile time into one Lua script, so that a check of
//! several policies of different algorithms is still one `EVALSHA`.

use std::sync::LazyLock;

/// The full source of the decision script.
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

/// The script's SHA-1, hashed once for the life of the process.
pub static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SOURCE));

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
