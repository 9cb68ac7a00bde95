//! tollgate-tools: the operator's tools behind `tollgate simulate` and
//! `tollgate bench` (`docs/TOOLS.md` is the guide).
//!
//! - [`simulate`]: runs the six algorithms on the memory store under a
//!   manual clock over a traffic pattern (steady, bursts, bursts at window
//!   edges, ramp, on-off, or a recorded trace), prints a table of what each
//!   admitted and draws offered vs admitted traffic per algorithm (SVG, PNG);
//! - [`bench`](mod@bench): drives load at a target — the library in process
//!   (`direct`, memory or Redis), any HTTP endpoint (`http`), the server's
//!   JSON API (`api`) or its Envoy rate limit gRPC service (`grpc`) — in
//!   Artillery-like phases (open or closed model), and reports throughput,
//!   latency percentiles, outcomes and whether any key was over-admitted.
//!
//! Both are plain `clap::Args` structs with a `run` function, so the
//! `tollgate` binary only adds them as subcommands.
//!
//! ```
//! use tollgate_tools::simulate::{self, Pattern};
//!
//! let policy = simulate::parse_policies("10/1s")?;
//! let arrivals = Pattern::EdgeBurst { size: 10 }.arrivals(std::time::Duration::from_secs(2), 1_000_000)?;
//! let runs = simulate::simulate(&policy, &arrivals);
//! let fixed = &runs[0];
//! assert_eq!(fixed.policy.algorithm().name(), "fixed_window");
//! // 10 just before the edge at 1 s and 10 just after: twice the limit in one period.
//! assert_eq!(fixed.worst_window, 20);
//! let log = &runs[2];
//! assert_eq!((log.policy.algorithm().name(), log.worst_window), ("sliding_log", 10));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bench;
pub mod overrides;
pub mod simulate;

/// Parses a duration such as `500ms`, `5s`, `1m` (the units of policies:
/// `us`, `ms`, `s`, `m`, `h`, `d`); a bare number is seconds.
///
/// # Errors
/// A message naming the problem.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text.parse().map_err(|_| format!("`{text}` overflows"))?;
        return Ok(std::time::Duration::from_secs(secs));
    }
    tollgate::policy::parse_duration(text)
}
