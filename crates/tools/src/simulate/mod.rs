//! `tollgate simulate`: the six algorithms side by side on one traffic
//! pattern, exactly.
//!
//! Every algorithm runs on its own [`MemoryStore`] under a [`ManualClock`]
//! set to each request's arrival time, so a run is a pure function of its
//! arguments: the same pattern and policy give the same table and the same
//! pictures on every machine. Times start at an instant aligned to the
//! policy's period, so fixed windows begin at 0 s, 1 s, ... of the plot.
//!
//! - [`Pattern`]: the offered traffic, as sorted arrival offsets in µs;
//! - [`parse_policies`]: `10/1s` means that limit under all six algorithms
//!   (with `burst` where it means something), `token_bucket 10/1s` one;
//! - [`simulate`]: runs them, giving one [`AlgorithmRun`] per algorithm;
//! - [`plot`]: draws the runs (SVG, PNG);
//! - [`settle`]: the `settle` pattern, where each request reserves an
//!   estimate and settles later at a cost known only then.

pub mod plot;
pub mod settle;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tollgate::{Algorithm, ManualClock, MemoryStore, Mode, Policy, PolicyError, PolicyRef};

/// The most requests a pattern may offer: the simulation keeps every
/// admitted timestamp, so this bounds its memory (tens of MB).
pub const MAX_REQUESTS: usize = 5_000_000;

/// The key every simulated request is charged to.
const KEY: &[u8] = b"simulated-client";

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimulateError {
    /// The policy text is invalid.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// The pattern's arguments are invalid.
    #[error("pattern: {0}")]
    Pattern(String),
    /// The trace file could not be read or parsed.
    #[error("trace {path}: {reason}")]
    Trace {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A plot could not be written.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Writing the table or JSON failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// The shape of the offered traffic, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatternKind {
    /// Evenly spaced requests at `--rate`.
    Steady,
    /// `--burst-size` requests at the same instant, every `--every`.
    Burst,
    /// Around every other window edge (1, 3, 5, ... periods),
    /// `--burst-size` requests spread over the last tenth of a period before
    /// the edge and as many over the first tenth after it.
    EdgeBurst,
    /// A rate rising linearly from 0 to `--rate` over the run.
    Ramp,
    /// `--rate` for `--every`, then nothing for `--every`, repeated.
    OnOff,
    /// Timestamps read from `--trace` (one per line, µs or ms).
    Trace,
    /// Costs known only at the end: evenly spaced requests at `--rate`,
    /// each reserving `--estimate` and settling after a drawn `--hold` at a
    /// cost drawn around the estimate (`--cost`, `--cost-spread`). Only the
    /// four algorithms that can be reserved.
    Settle,
}

/// The unit of a trace file's timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceUnit {
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
}

/// Offered traffic. Arrival offsets are in µs from the start of the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    /// Evenly spaced requests, `rate` per second.
    Steady {
        /// Requests per second.
        rate: f64,
    },
    /// `size` requests at once every `every`, from 0.
    Burst {
        /// Requests per burst.
        size: u64,
        /// Time between bursts.
        every: Duration,
    },
    /// `size` requests in the tenth of a period before every other window
    /// edge and `size` in the tenth after it.
    EdgeBurst {
        /// Requests on each side of an edge.
        size: u64,
    },
    /// A rate rising linearly from 0 to `rate` per second.
    Ramp {
        /// The final rate, requests per second.
        rate: f64,
    },
    /// `rate` per second for `every`, then silence for `every`.
    OnOff {
        /// Requests per second while on.
        rate: f64,
        /// Length of each on and each off stretch.
        every: Duration,
    },
    /// Recorded arrival times (µs, any origin; sorted and rebased to 0).
    Trace(Vec<u64>),
}

impl Pattern {
    /// The arrival offsets (µs, sorted) within `duration`, for a policy of
    /// period `period_us` (used by [`Pattern::EdgeBurst`]).
    ///
    /// # Errors
    /// [`SimulateError::Pattern`] for a non-positive rate, an empty interval
    /// or more than [`MAX_REQUESTS`] requests.
    pub fn arrivals(&self, duration: Duration, period_us: u64) -> Result<Vec<u64>, SimulateError> {
        let end = tollgate::clock::micros(duration);
        let bad = |reason: &str| Err(SimulateError::Pattern(reason.to_owned()));
        let rate_ok = |rate: f64| rate.is_finite() && rate > 0.0;
        let too_many = |n: f64| n > MAX_REQUESTS as f64;
        let mut out = Vec::new();
        match self {
            Pattern::Steady { rate } => {
                if !rate_ok(*rate) {
                    return bad("rate must be positive");
                }
                if too_many(rate * duration.as_secs_f64()) {
                    return bad("too many requests: lower --rate or --duration");
                }
                let mut i = 0u64;
                loop {
                    let t = (i as f64 * 1e6 / rate).round() as u64;
                    if t >= end {
                        break;
                    }
                    out.push(t);
                    i += 1;
                }
            }
            Pattern::Burst { size, every } => {
                let every = every.as_micros() as u64;
                if every == 0 || *size == 0 {
                    return bad("--every and --burst-size must be positive");
                }
                if too_many(*size as f64 * (end / every + 1) as f64) {
                    return bad("too many requests: lower --burst-size or raise --every");
                }
                let mut t = 0;
                while t < end {
                    out.extend(std::iter::repeat_n(t, *size as usize));
                    t += every;
                }
            }
            Pattern::EdgeBurst { size } => {
                let span = (period_us / 10).max(1);
                if *size == 0 {
                    return bad("--burst-size must be positive");
                }
                if too_many(2.0 * *size as f64 * (end / period_us / 2 + 1) as f64) {
                    return bad("too many requests: lower --burst-size");
                }
                let mut edge = period_us;
                while edge < end {
                    // Evenly over [edge - span, edge), then [edge, edge + span).
                    for i in 0..*size {
                        out.push(edge - span + i * span / size);
                    }
                    for i in 0..*size {
                        let t = edge + i * span / size;
                        if t < end {
                            out.push(t);
                        }
                    }
                    edge += 2 * period_us;
                }
            }
            Pattern::Ramp { rate } => {
                if !rate_ok(*rate) {
                    return bad("rate must be positive");
                }
                let secs = duration.as_secs_f64();
                if too_many(rate * secs / 2.0) {
                    return bad("too many requests: lower --rate or --duration");
                }
                // n(t) = rate t^2 / (2 D): request i arrives at sqrt(2 D i / rate).
                let mut i = 0u64;
                loop {
                    let t = ((2.0 * secs * i as f64 / rate).sqrt() * 1e6).round() as u64;
                    if t >= end {
                        break;
                    }
                    out.push(t);
                    i += 1;
                }
            }
            Pattern::OnOff { rate, every } => {
                if !rate_ok(*rate) {
                    return bad("rate must be positive");
                }
                let every = every.as_micros() as u64;
                if every == 0 {
                    return bad("--every must be positive");
                }
                if too_many(rate * duration.as_secs_f64()) {
                    return bad("too many requests: lower --rate or --duration");
                }
                let mut start = 0;
                while start < end {
                    let mut i = 0u64;
                    loop {
                        let t = start + (i as f64 * 1e6 / rate).round() as u64;
                        if t >= (start + every).min(end) {
                            break;
                        }
                        out.push(t);
                        i += 1;
                    }
                    start += 2 * every;
                }
            }
            Pattern::Trace(times) => {
                let origin = times.iter().copied().min().unwrap_or(0);
                out = times
                    .iter()
                    .map(|t| t - origin)
                    .filter(|&t| t < end)
                    .collect();
                if out.len() > MAX_REQUESTS {
                    return bad("trace too long");
                }
                out.sort_unstable();
            }
        }
        Ok(out)
    }
}

/// Reads a trace: one timestamp per line in `unit`; blank lines and lines
/// starting with `#` are skipped.
///
/// # Errors
/// [`SimulateError::Trace`] when the file cannot be read or a line is not
/// a non-negative integer.
pub fn read_trace(path: &Path, unit: TraceUnit) -> Result<Vec<u64>, SimulateError> {
    let fail = |reason: String| SimulateError::Trace {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let scale = match unit {
        TraceUnit::Us => 1,
        TraceUnit::Ms => 1_000,
    };
    let mut times = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let t: u64 = line.parse().map_err(|_| {
            fail(format!(
                "line {}: `{line}` is not an integer timestamp",
                n + 1
            ))
        })?;
        times.push(
            t.checked_mul(scale)
                .ok_or_else(|| fail(format!("line {}: overflows", n + 1)))?,
        );
        if times.len() > MAX_REQUESTS {
            return Err(fail(format!("more than {MAX_REQUESTS} timestamps")));
        }
    }
    if times.is_empty() {
        return Err(fail("no timestamps".into()));
    }
    Ok(times)
}

/// Parses the policy to simulate. With an algorithm name
/// (`token_bucket 10/s burst 20`) that one policy; without
/// (`10/1s`, `10/1s burst 20`) the same limit and period under all six
/// algorithms, in [`Algorithm::ALL`] order, the burst applied to the bucket
/// algorithms only.
///
/// # Errors
/// The [`PolicyError`] of the first invalid policy.
pub fn parse_policies(text: &str) -> Result<Vec<Policy>, PolicyError> {
    let first = text.split_whitespace().next().unwrap_or("");
    if first.parse::<Algorithm>().is_ok() {
        return Ok(vec![text.parse()?]);
    }
    let has_burst = text.split_whitespace().any(|w| w == "burst");
    let base: Policy = format!("gcra {text}").parse()?;
    Algorithm::ALL
        .into_iter()
        .map(|algorithm| {
            let burst = (algorithm.has_burst() && has_burst).then_some(base.burst());
            Policy::new(algorithm, base.limit(), base.period(), burst)
        })
        .collect()
}

/// What one algorithm did with the offered traffic.
#[derive(Debug, Clone, Serialize)]
pub struct AlgorithmRun {
    /// The policy, with its algorithm.
    #[serde(serialize_with = "display")]
    pub policy: Policy,
    /// Requests offered.
    pub offered: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests denied.
    pub denied: u64,
    /// The most requests admitted in any window of one period (`[t, t+P)`
    /// for any `t`). For `leaky_bucket`, counted at the instant each request
    /// proceeds (arrival plus its `delay`), which is what it shapes.
    pub worst_window: u64,
    /// When each admitted request proceeds, µs from the start (the arrival,
    /// plus the delay for `leaky_bucket`), sorted.
    #[serde(skip)]
    pub admitted_at: Vec<u64>,
    /// The `settle` pattern's costs (`None` for the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub costs: Option<settle::CostRun>,
}

fn display<S: serde::Serializer>(policy: &Policy, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(policy)
}

/// Runs every policy over `arrivals` (sorted µs offsets, each a request of
/// cost 1), each on a fresh memory store under a manual clock.
pub fn simulate(policies: &[Policy], arrivals: &[u64]) -> Vec<AlgorithmRun> {
    policies
        .iter()
        .map(|policy| simulate_one(policy, arrivals))
        .collect()
}

fn simulate_one(policy: &Policy, arrivals: &[u64]) -> AlgorithmRun {
    // An origin aligned to the period puts fixed windows' edges at whole
    // periods of the run; one period in, so that time never starts at 0.
    let origin = policy.period_us();
    let clock = ManualClock::new(origin);
    let store = MemoryStore::with_clock_and_shards(clock.clone(), 1);
    let refs = [PolicyRef {
        name: "simulated",
        policy,
    }];
    let mut admitted_at = Vec::new();
    let mut denied = 0;
    for &t in arrivals {
        clock.set_us(origin + t);
        let decisions = store.apply_sync(tollgate::Check::new(KEY, &refs, 1, Mode::Consume));
        match decisions.first() {
            Some(d) if d.allowed => {
                admitted_at.push(t + tollgate::clock::micros(d.delay));
            }
            _ => denied += 1,
        }
    }
    admitted_at.sort_unstable();
    AlgorithmRun {
        policy: *policy,
        offered: arrivals.len() as u64,
        admitted: admitted_at.len() as u64,
        denied,
        worst_window: worst_window(&admitted_at, policy.period_us()),
        admitted_at,
        costs: None,
    }
}

/// Runs every policy over the `settle` pattern's `requests` (sorted by
/// arrival), each on a fresh memory store under a manual clock.
pub fn simulate_settle(
    policies: &[Policy],
    requests: &[settle::Request],
    model: &settle::CostModel,
) -> Vec<AlgorithmRun> {
    policies
        .iter()
        .map(|policy| {
            let outcome = settle::run(policy, policy.period_us(), requests, model);
            AlgorithmRun {
                policy: *policy,
                offered: requests.len() as u64,
                admitted: outcome.admitted_at.len() as u64,
                denied: outcome.denied,
                worst_window: worst_window(&outcome.admitted_at, policy.period_us()),
                admitted_at: outcome.admitted_at,
                costs: Some(outcome.costs),
            }
        })
        .collect()
}

/// The most timestamps of sorted `times` in any half-open window
/// `[t, t + period)`.
pub fn worst_window(times: &[u64], period: u64) -> u64 {
    worst_window_by(times, |t| *t, |_| 1, period)
}

/// The largest sum of the weights of items (sorted by `at`) in any
/// half-open window `[t, t + period)`.
pub fn worst_window_by<T>(
    items: &[T],
    at: impl Fn(&T) -> u64,
    weight: impl Fn(&T) -> u64,
    period: u64,
) -> u64 {
    let (mut best, mut sum, mut start) = (0, 0, 0);
    for item in items {
        let t = at(item);
        sum += weight(item);
        while at(&items[start]) + period <= t {
            sum -= weight(&items[start]);
            start += 1;
        }
        best = best.max(sum);
    }
    best
}

/// Command line of `tollgate simulate`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Run the six algorithms over a traffic pattern (exact, reproducible) and plot them"
)]
pub struct SimulateArgs {
    /// The traffic pattern.
    #[arg(long, value_enum, default_value = "steady")]
    pub pattern: PatternKind,
    /// The policy: `10/1s` (all six algorithms), `10/1s burst 20` (burst for
    /// the bucket algorithms), or one algorithm (`token_bucket 10/1s`).
    #[arg(long, default_value = "10/1s")]
    pub policy: String,
    /// How long to simulate.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Offered requests per second (steady, ramp: the final rate, on-off:
    /// while on). Default: three times the policy's rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests per burst (burst), or on each side of an edge (edge-burst).
    /// Default: the policy's limit.
    #[arg(long)]
    pub burst_size: Option<u64>,
    /// Time between bursts (burst; default two periods), or the length of
    /// each on and off stretch (on-off; default one period).
    #[arg(long, value_parser = crate::parse_duration)]
    pub every: Option<Duration>,
    /// The trace file for `--pattern trace`: one timestamp per line.
    #[arg(long, required_if_eq("pattern", "trace"))]
    pub trace: Option<PathBuf>,
    /// The unit of the trace's timestamps.
    #[arg(long, value_enum, default_value = "ms")]
    pub trace_unit: TraceUnit,
    /// Directory to write `<name>.svg` and `<name>.png` into; no plot without it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File name of the plots, without extension. Default: the pattern's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Write the SVG only.
    #[arg(long)]
    pub no_png: bool,
    /// Print the table as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Units each request reserves (settle). Default: a tenth of the
    /// policy's capacity (at least 1).
    #[arg(long)]
    pub estimate: Option<u64>,
    /// How the actual cost is drawn around the estimate (settle).
    #[arg(long, value_enum, default_value = "lognormal")]
    pub cost: settle::CostDistribution,
    /// The spread of the actual cost (settle): uniform, the fraction of the
    /// estimate either side (0 to 1); lognormal, σ (0 to 3).
    #[arg(long, default_value_t = 0.5)]
    pub cost_spread: f64,
    /// The mean time from a reservation to its settle (settle); each is
    /// drawn uniformly from 0 to twice it. Default: a tenth of a period.
    #[arg(long, value_parser = crate::parse_duration)]
    pub hold: Option<Duration>,
    /// How long a reservation stays open (settle): a settle later than
    /// this is too late, and the estimate stays charged.
    #[arg(long, default_value = "5m", value_parser = crate::parse_duration)]
    pub deadline: Duration,
    /// How far a settle may overdraw each policy (settle). Default: the
    /// policy's default, its capacity.
    #[arg(long)]
    pub max_overdraft: Option<u64>,
    /// The seed of the settle pattern's draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The whole result of a simulation, as printed with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The pattern.
    pub pattern: PatternKind,
    /// The policy text given.
    pub policy: String,
    /// The simulated time, µs.
    pub duration_us: u64,
    /// Requests offered.
    pub offered: u64,
    /// The `settle` pattern's cost model (absent for the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub costs: Option<settle::CostModel>,
    /// One entry per algorithm.
    pub runs: Vec<AlgorithmRun>,
    /// The plots written.
    pub files: Vec<PathBuf>,
}

impl SimulateArgs {
    /// The pattern these arguments describe.
    ///
    /// # Errors
    /// [`SimulateError`] when the trace cannot be read.
    pub fn pattern(&self, policy: &Policy) -> Result<Pattern, SimulateError> {
        let period = policy.period();
        let default_rate = match self.pattern {
            // Twice the policy's rate in cost.
            PatternKind::Settle => {
                2.0 * policy.limit() as f64
                    / self.cost_model(policy).estimate as f64
                    / period.as_secs_f64()
            }
            _ => 3.0 * policy.limit() as f64 / period.as_secs_f64(),
        };
        let rate = self.rate.unwrap_or(default_rate);
        let size = self.burst_size.unwrap_or(policy.limit());
        Ok(match self.pattern {
            PatternKind::Steady | PatternKind::Settle => Pattern::Steady { rate },
            PatternKind::Burst => Pattern::Burst {
                size,
                every: self.every.unwrap_or(2 * period),
            },
            PatternKind::EdgeBurst => Pattern::EdgeBurst { size },
            PatternKind::Ramp => Pattern::Ramp { rate },
            PatternKind::OnOff => Pattern::OnOff {
                rate,
                every: self.every.unwrap_or(period),
            },
            PatternKind::Trace => {
                let path = self.trace.as_deref().ok_or_else(|| {
                    SimulateError::Pattern("--pattern trace needs --trace FILE".into())
                })?;
                Pattern::Trace(read_trace(path, self.trace_unit)?)
            }
        })
    }

    /// The `settle` pattern's cost model for `policy` (the first one
    /// simulated): the flags, with their defaults derived from it.
    pub fn cost_model(&self, policy: &Policy) -> settle::CostModel {
        settle::CostModel {
            estimate: self
                .estimate
                .unwrap_or_else(|| (policy.capacity() / 10).max(1)),
            distribution: self.cost,
            spread: self.cost_spread,
            hold: self.hold.unwrap_or(policy.period() / 10),
            deadline: self.deadline,
            seed: self.seed,
        }
    }

    /// The policies to simulate: [`parse_policies`], and for the `settle`
    /// pattern only those that can be reserved, each with
    /// `--max-overdraft`.
    ///
    /// # Errors
    /// [`SimulateError::Policy`] for an invalid policy, one that cannot be
    /// reserved (named alone), or an overdraft above its capacity.
    pub fn policies(&self) -> Result<Vec<Policy>, SimulateError> {
        let policies = parse_policies(&self.policy)?;
        if self.pattern != PatternKind::Settle {
            return Ok(policies);
        }
        let reservable = policies
            .iter()
            .filter(|p| tollgate::algorithm::can_reserve(p.algorithm()))
            .map(|p| match self.max_overdraft {
                Some(units) => p.with_max_overdraft(units),
                None => Ok(*p),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if reservable.is_empty() {
            return Err(PolicyError::ReserveNotSupported(policies[0].algorithm()).into());
        }
        Ok(reservable)
    }

    /// Simulates and writes the plots, without printing.
    ///
    /// # Errors
    /// [`SimulateError`] naming the invalid argument or the file that could
    /// not be written.
    pub fn report(&self) -> Result<Report, SimulateError> {
        let policies = self.policies()?;
        let first = policies[0];
        let arrivals = self
            .pattern(&first)?
            .arrivals(self.duration, first.period_us())?;
        let (runs, model, offered_costs) = if self.pattern == PatternKind::Settle {
            let model = self.cost_model(&first);
            model.validate()?;
            let requests = model.requests(&arrivals);
            let offered: Vec<(u64, u64)> = requests.iter().map(|r| (r.at, r.actual)).collect();
            (
                simulate_settle(&policies, &requests, &model),
                Some(model),
                Some(offered),
            )
        } else {
            (simulate(&policies, &arrivals), None, None)
        };
        let mut files = Vec::new();
        if let Some(dir) = &self.out {
            std::fs::create_dir_all(dir)?;
            let name = self
                .name
                .clone()
                .unwrap_or_else(|| format!("simulate-{}", pattern_name(self.pattern)));
            let what = match model {
                Some(model) => format!(
                    "units of cost in the last {} (offered vs charged), estimate {}",
                    plot::format_period(first.period_us()),
                    model.estimate
                ),
                None => format!(
                    "requests in the last {} (offered vs admitted)",
                    plot::format_period(first.period_us())
                ),
            };
            let title = format!(
                "{} pattern, policy {}: {what}",
                pattern_name(self.pattern),
                self.policy,
            );
            let chart = plot::Chart {
                title: &title,
                duration_us: tollgate::clock::micros(self.duration),
                arrivals: &arrivals,
                costs: offered_costs.as_deref(),
                runs: &runs,
            };
            let svg = dir.join(format!("{name}.svg"));
            plot::write_svg(&chart, &svg)?;
            files.push(svg);
            if !self.no_png {
                let png = dir.join(format!("{name}.png"));
                plot::write_png(&chart, &png)?;
                files.push(png);
            }
        }
        Ok(Report {
            pattern: self.pattern,
            policy: self.policy.clone(),
            duration_us: tollgate::clock::micros(self.duration),
            offered: arrivals.len() as u64,
            costs: model,
            runs,
            files,
        })
    }
}

/// The pattern's command line name.
fn pattern_name(kind: PatternKind) -> &'static str {
    match kind {
        PatternKind::Steady => "steady",
        PatternKind::Burst => "burst",
        PatternKind::EdgeBurst => "edge-burst",
        PatternKind::Ramp => "ramp",
        PatternKind::OnOff => "on-off",
        PatternKind::Trace => "trace",
        PatternKind::Settle => "settle",
    }
}

/// The table printed by `tollgate simulate`.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let secs = report.duration_us as f64 / 1e6;
    let _ = writeln!(
        out,
        "{} pattern over {secs} s: {} requests offered",
        pattern_name(report.pattern),
        report.offered
    );
    let _ = writeln!(
        out,
        "{:<32} {:>9} {:>9} {:>13} {:>7}",
        "policy", "admitted", "denied", "worst window", "limit"
    );
    for run in &report.runs {
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>9} {:>13} {:>7}",
            run.policy.to_string(),
            run.admitted,
            run.denied,
            run.worst_window,
            run.policy.limit()
        );
    }
    let _ = writeln!(
        out,
        "worst window: the most admitted in any window of one period \
         (leaky_bucket: counted when each request proceeds, after its delay)"
    );
    if let Some(model) = &report.costs {
        let _ = writeln!(
            out,
            "\ncosts (estimate {} per request, actual cost {} with spread {}):",
            model.estimate,
            model.distribution.name(),
            model.spread
        );
        let _ = writeln!(
            out,
            "{:<32} {:>10} {:>10} {:>9} {:>9} {:>8} {:>7} {:>13} {:>11}",
            "policy",
            "offered",
            "kept",
            "returned",
            "overdrawn",
            "unpaid",
            "expired",
            "worst window",
            "cap + od"
        );
        for run in &report.runs {
            let Some(c) = &run.costs else { continue };
            let _ = writeln!(
                out,
                "{:<32} {:>10} {:>10} {:>9} {:>9} {:>8} {:>7} {:>13} {:>11}",
                run.policy.to_string(),
                c.offered,
                c.kept,
                c.returned,
                c.overdrawn,
                c.unpaid,
                c.expired,
                c.worst_window,
                run.policy.capacity() + run.policy.max_overdraft()
            );
        }
        let _ = writeln!(
            out,
            "kept: units left charged (estimates less what came back, plus overdrafts); \
             worst window: the most kept in any window of one period"
        );
    }
    for file in &report.files {
        let _ = writeln!(out, "wrote {}", file.display());
    }
    out
}

/// Runs `tollgate simulate`: prints the table (or JSON) to stdout and
/// writes the plots.
///
/// # Errors
/// As [`SimulateArgs::report`].
pub fn run(args: &SimulateArgs) -> Result<(), SimulateError> {
    let report = args.report()?;
    let text = if args.json {
        serde_json::to_string_pretty(&report).map_err(std::io::Error::other)? + "\n"
    } else {
        table(&report)
    };
    use std::io::Write as _;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_window_is_half_open() {
        assert_eq!(worst_window(&[], 10), 0);
        assert_eq!(worst_window(&[0, 9, 10, 19, 20], 10), 2);
        assert_eq!(worst_window(&[5, 5, 5], 1), 3);
        let weighted = [(0u64, 3u64), (9, 4), (10, 5), (19, 1)];
        assert_eq!(worst_window_by(&weighted, |w| w.0, |w| w.1, 10), 9);
        assert_eq!(worst_window_by(&weighted, |w| w.0, |w| w.1, 11), 12);
    }

    #[test]
    fn policy_without_algorithm_means_all_six() {
        let all = parse_policies("10/1s burst 20").expect("valid");
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].to_string(), "fixed_window 10/1s");
        assert_eq!(all[3].to_string(), "token_bucket 10/1s burst 20");
        let one = parse_policies("sliding_log 5/1m").expect("valid");
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn patterns_offer_what_they_say() {
        let second = Duration::from_secs(1);
        let steady = Pattern::Steady { rate: 10.0 }.arrivals(second, 1_000_000);
        assert_eq!(steady.expect("valid").len(), 10);
        let ramp = Pattern::Ramp { rate: 100.0 }.arrivals(second, 1_000_000);
        assert_eq!(ramp.expect("valid").len(), 50);
        let edge = Pattern::EdgeBurst { size: 4 }
            .arrivals(3 * second, 1_000_000)
            .expect("valid");
        assert_eq!(edge.len(), 8);
        assert!(edge.iter().all(|&t| (900_000..1_100_000).contains(&t)));
    }
}
