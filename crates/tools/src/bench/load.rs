//! The shape of the load: phases (open or closed model), keys and cost.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::BenchError;

/// How requests are started during a phase.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Open model: requests start on a schedule whatever the latency (the
    /// rate moves linearly from `from` to `to` per second over the phase),
    /// so a slow target shows up as latency, not as less load.
    Open {
        /// Arrivals per second at the start of the phase.
        from: f64,
        /// Arrivals per second at its end.
        to: f64,
    },
    /// Closed model: `workers` loops, each sending its next request when the
    /// previous one is answered.
    Closed {
        /// Concurrent workers.
        workers: usize,
    },
}

/// One phase of the load.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Phase {
    /// How long it lasts.
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// How requests start.
    pub model: Model,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.duration.as_secs_f64();
        match self.model {
            Model::Open { from, to } if from == to => write!(f, "{secs} s at {from}/s (open)"),
            Model::Open { from, to } => write!(f, "{secs} s from {from}/s to {to}/s (open)"),
            Model::Closed { workers } => write!(f, "{secs} s with {workers} workers (closed)"),
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    /// `60s:rate=100`, `30s:rate=10..100` (a ramp), `60s:concurrency=8`.
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "invalid phase `{text}`: expected DURATION:rate=N, DURATION:rate=FROM..TO \
                 or DURATION:concurrency=N (e.g. 60s:rate=100)"
            )
        };
        let (duration, spec) = text.split_once(':').ok_or_else(usage)?;
        let duration = crate::parse_duration(duration)?;
        let (what, value) = spec.split_once('=').ok_or_else(usage)?;
        let model = match what {
            "rate" => {
                let (from, to) = value.split_once("..").unwrap_or((value, value));
                let rate = |v: &str| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|r| r.is_finite() && *r >= 0.0)
                        .ok_or_else(usage)
                };
                Model::Open {
                    from: rate(from)?,
                    to: rate(to)?,
                }
            }
            "concurrency" => Model::Closed {
                workers: value.parse().ok().filter(|&n| n > 0).ok_or_else(usage)?,
            },
            _ => return Err(usage()),
        };
        Ok(Phase { duration, model })
    }
}

/// How keys are chosen among `--keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Key `k` (from 0) with weight `1 / (k + 1)^s`: a few hot keys and a
    /// long tail.
    Zipf,
}

/// Load options shared by every target.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// A phase (repeatable, run in order): `60s:rate=100` (open model,
    /// arrivals per second), `30s:rate=10..100` (ramp), `60s:concurrency=8`
    /// (closed model).
    #[arg(long = "phase", value_name = "PHASE")]
    pub phases: Vec<Phase>,
    /// Phases from a YAML file in Artillery's shape (`config.phases` with
    /// `duration`, `arrivalRate`, `rampTo`, `arrivalCount`, `pause`; and
    /// `config.target`).
    #[arg(long, value_name = "FILE")]
    pub phases_file: Option<PathBuf>,
    /// Without phases: one open phase at this many arrivals per second.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Without phases: one closed phase with this many workers (default 8).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Stop after this long in total (default: the phases' total, or 10 s).
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Distinct keys.
    #[arg(long, default_value_t = 1)]
    pub keys: u32,
    /// How requests pick their key.
    #[arg(long, value_enum, default_value = "uniform")]
    pub key_distribution: KeyDistribution,
    /// The exponent `s` of the Zipf distribution.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Keys are this prefix followed by a number (default: `bench-<run id>-`,
    /// so that runs never share state).
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Units charged per request.
    #[arg(long, default_value_t = 1)]
    pub cost: u64,
    /// The policy: for `direct` the policy used (default `gcra 1000/1s`);
    /// for the other targets the policy the target is expected to enforce
    /// per key, so admissions can be checked against it.
    #[arg(long)]
    pub policy: Option<String>,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Open model: requests in flight beyond this wait to start (their wait
    /// counts as latency).
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Give up on one request after this long (counted as an error).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Allow targets that are not on this machine (loopback only by default).
    #[arg(long)]
    pub allow_remote: bool,
}

/// The phases to run and the overall bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Phases, in order.
    pub phases: Vec<Phase>,
    /// The run stops at this time at the latest.
    pub duration: Duration,
    /// The run stops after this many requests.
    pub max_requests: Option<u64>,
}

/// What an Artillery file gave besides its phases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArtilleryTarget {
    /// `config.target`.
    pub target: Option<String>,
    /// The first request of the first scenario: method and path.
    pub request: Option<(String, String)>,
}

impl LoadArgs {
    /// The plan: `--phase`s, else the file's phases, else one phase of
    /// `--rate` or `--concurrency`; bounded by `--duration`.
    ///
    /// # Errors
    /// [`BenchError::Args`] for an unreadable phases file or an empty plan.
    pub fn plan(&self) -> Result<(Plan, ArtilleryTarget), BenchError> {
        let mut artillery = ArtilleryTarget::default();
        let mut phases = self.phases.clone();
        if phases.is_empty() {
            if let Some(path) = &self.phases_file {
                let (file_phases, target) = read_artillery(path)?;
                phases = file_phases;
                artillery = target;
            }
        }
        if phases.is_empty() {
            let duration = self.duration.unwrap_or(Duration::from_secs(10));
            let model = match (self.rate, self.concurrency) {
                (Some(rate), _) => Model::Open {
                    from: rate,
                    to: rate,
                },
                (None, workers) => Model::Closed {
                    workers: workers.unwrap_or(8).max(1),
                },
            };
            phases.push(Phase { duration, model });
        }
        let total: Duration = phases.iter().map(|p| p.duration).sum();
        let duration = self.duration.map_or(total, |d| d.min(total));
        if duration.is_zero() {
            return Err(BenchError::Args("the run would last 0 s".into()));
        }
        if self.cost == 0 {
            return Err(BenchError::Args("--cost must be at least 1".into()));
        }
        if self.keys == 0 {
            return Err(BenchError::Args("--keys must be at least 1".into()));
        }
        Ok((
            Plan {
                phases,
                duration,
                max_requests: self.max_requests,
            },
            artillery,
        ))
    }
}

#[derive(Debug, Deserialize)]
struct ArtilleryFile {
    config: ArtilleryConfig,
    #[serde(default)]
    scenarios: Vec<ArtilleryScenario>,
}

#[derive(Debug, Deserialize)]
struct ArtilleryConfig {
    target: Option<String>,
    #[serde(default)]
    phases: Vec<ArtilleryPhase>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtilleryPhase {
    duration: Option<YamlDuration>,
    arrival_rate: Option<f64>,
    ramp_to: Option<f64>,
    arrival_count: Option<f64>,
    pause: Option<YamlDuration>,
    /// Not Artillery: a closed-model phase.
    concurrency: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum YamlDuration {
    Seconds(f64),
    Text(String),
}

impl YamlDuration {
    fn get(&self) -> Result<Duration, String> {
        match self {
            YamlDuration::Seconds(s) if s.is_finite() && *s >= 0.0 => {
                Ok(Duration::from_secs_f64(*s))
            }
            YamlDuration::Seconds(s) => Err(format!("invalid duration {s}")),
            YamlDuration::Text(t) => crate::parse_duration(t.trim()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ArtilleryScenario {
    #[serde(default)]
    flow: Vec<serde_norway::Mapping>,
}

/// Reads phases (and the target) from an Artillery YAML file.
///
/// # Errors
/// [`BenchError::Args`] naming the file and the problem.
pub fn read_artillery(path: &Path) -> Result<(Vec<Phase>, ArtilleryTarget), BenchError> {
    let fail = |reason: String| BenchError::Args(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let file: ArtilleryFile = serde_norway::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let mut phases = Vec::new();
    for (n, p) in file.config.phases.iter().enumerate() {
        let at = |reason: String| fail(format!("phase {}: {reason}", n + 1));
        if let Some(pause) = &p.pause {
            let duration = pause.get().map_err(at)?;
            let model = Model::Open { from: 0.0, to: 0.0 };
            phases.push(Phase { duration, model });
            continue;
        }
        let duration = p
            .duration
            .as_ref()
            .ok_or_else(|| at("no duration".into()))?
            .get()
            .map_err(at)?;
        let model = match (p.concurrency, p.arrival_rate, p.arrival_count) {
            (Some(workers), _, _) if workers > 0 => Model::Closed { workers },
            (_, Some(from), _) => Model::Open {
                from,
                to: p.ramp_to.unwrap_or(from),
            },
            (_, None, Some(count)) => {
                let rate = count / duration.as_secs_f64().max(1e-9);
                Model::Open {
                    from: rate,
                    to: rate,
                }
            }
            _ => return Err(at("expected arrivalRate, arrivalCount or pause".into())),
        };
        phases.push(Phase { duration, model });
    }
    let request = file
        .scenarios
        .first()
        .and_then(|s| s.flow.first())
        .and_then(|step| {
            step.iter().find_map(|(method, spec)| {
                let method = method.as_str()?;
                let url = spec.get("url")?.as_str()?;
                Some((method.to_ascii_uppercase(), url.to_owned()))
            })
        });
    Ok((
        phases,
        ArtilleryTarget {
            target: file.config.target,
            request,
        },
    ))
}

/// Chooses keys: uniform or Zipf, from a seeded generator, so a run's
/// sequence of keys is reproducible.
#[derive(Debug, Clone)]
pub struct KeyPicker {
    state: u64,
    /// Zipf only: cumulative weights.
    cumulative: Vec<f64>,
    keys: u32,
}

impl KeyPicker {
    /// A picker over `keys` keys.
    pub fn new(keys: u32, distribution: KeyDistribution, exponent: f64, seed: u64) -> Self {
        let cumulative = match distribution {
            KeyDistribution::Uniform => Vec::new(),
            KeyDistribution::Zipf => {
                let mut total = 0.0;
                (0..keys)
                    .map(|k| {
                        total += 1.0 / f64::from(k + 1).powf(exponent);
                        total
                    })
                    .collect()
            }
        };
        KeyPicker {
            state: seed,
            cumulative,
            keys: keys.max(1),
        }
    }

    /// The next key's index.
    pub fn next_key(&mut self) -> u32 {
        let r = self.next_u64();
        if self.cumulative.is_empty() {
            return (r % u64::from(self.keys)) as u32;
        }
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let target = (r >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.cumulative
            .partition_point(|&c| c <= target)
            .min(self.keys as usize - 1) as u32
    }

    /// splitmix64: small, fast, good enough to spread keys.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The offset (from the phase's start) of arrival `i` of an open phase
/// whose rate moves linearly from `from` to `to` per second over `duration`;
/// `None` once it falls outside the phase.
pub fn arrival_offset(i: u64, from: f64, to: f64, duration: Duration) -> Option<Duration> {
    let d = duration.as_secs_f64();
    let i = i as f64;
    // Arrivals by time t: n(t) = from t + (to - from) t^2 / (2 d); solve n(t) = i.
    let t = if (to - from).abs() < 1e-12 {
        if from <= 0.0 {
            return None;
        }
        i / from
    } else {
        let a = (to - from) / (2.0 * d);
        let disc = from * from + 4.0 * a * i;
        if disc < 0.0 {
            return None;
        }
        (-from + disc.sqrt()) / (2.0 * a)
    };
    (t.is_finite() && t >= 0.0 && t < d).then(|| Duration::from_secs_f64(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse() {
        let p: Phase = "60s:rate=100".parse().expect("valid");
        assert_eq!(p.duration, Duration::from_secs(60));
        assert_eq!(
            p.model,
            Model::Open {
                from: 100.0,
                to: 100.0
            }
        );
        let p: Phase = "1m:rate=0..50".parse().expect("valid");
        assert_eq!(
            p.model,
            Model::Open {
                from: 0.0,
                to: 50.0
            }
        );
        let p: Phase = "5s:concurrency=4".parse().expect("valid");
        assert_eq!(p.model, Model::Closed { workers: 4 });
        assert!("5s".parse::<Phase>().is_err());
        assert!("5s:rate=-1".parse::<Phase>().is_err());
    }

    #[test]
    fn open_arrivals_follow_the_rate() {
        let second = Duration::from_secs(1);
        let steady = (0..).map_while(|i| arrival_offset(i, 100.0, 100.0, second));
        assert_eq!(steady.count(), 100);
        // A ramp from 0 to 100/s over 1 s offers 50.
        let ramp = (0..).map_while(|i| arrival_offset(i, 0.0, 100.0, second));
        assert_eq!(ramp.count(), 50);
        let down = (0..).map_while(|i| arrival_offset(i, 100.0, 0.0, second));
        assert_eq!(down.count(), 50);
    }

    #[test]
    fn zipf_prefers_low_keys() {
        let mut picker = KeyPicker::new(100, KeyDistribution::Zipf, 1.0, 7);
        let mut counts = [0u32; 100];
        for _ in 0..10_000 {
            counts[picker.next_key() as usize] += 1;
        }
        // Key 0 has weight 1 / H(100) ~ 19%.
        assert!((1_500..2_300).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > 5 * counts[9]);
    }

    #[test]
    fn artillery_phases_are_read() {
        let dir = std::env::temp_dir().join(format!("tollgate-artillery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("a.yml");
        std::fs::write(
            &path,
            "config:\n  target: http://localhost:3000\n  phases:\n    - duration: 60\n      arrivalRate: 100\n    - duration: 10\n      arrivalRate: 5\n      rampTo: 50\n    - pause: 2\nscenarios:\n  - flow:\n      - get:\n          url: /api/resource\n",
        )
        .expect("write");
        let (phases, target) = read_artillery(&path).expect("valid");
        assert_eq!(phases.len(), 3);
        assert_eq!(
            phases[0].model,
            Model::Open {
                from: 100.0,
                to: 100.0
            }
        );
        assert_eq!(
            phases[1].model,
            Model::Open {
                from: 5.0,
                to: 50.0
            }
        );
        assert_eq!(phases[2].duration, Duration::from_secs(2));
        assert_eq!(target.target.as_deref(), Some("http://localhost:3000"));
        assert_eq!(target.request, Some(("GET".into(), "/api/resource".into())));
        let _ = std::fs::remove_dir_all(dir);
    }
}
