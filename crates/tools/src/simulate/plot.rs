//! Pictures of a simulation: one panel per algorithm, each showing the
//! requests offered and admitted in the trailing period over time, with the
//! policy's limit per period drawn in.
//!
//! "Requests in the last period" (a sliding count) is what a limit speaks
//! about, so it shows each algorithm's character directly: the fixed
//! window's count reaching twice the limit across an edge, the token
//! bucket's burst above the limit and then its steady rate, the sliding log
//! never above the line. Each plotted point is the *largest* value of the
//! count within its slice of time, so short peaks are never sampled away.
//!
//! Text needs a font: plotters renders it through `ab_glyph` from a font
//! file read at run time (`TOLLGATE_FONT`, else DejaVu Sans from Debian's
//! `fonts-dejavu-core` and a few other usual places), so building needs no
//! system library. Without a font the plots are drawn without any text
//! (a warning says so).

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{AlgorithmRun, SimulateError};
use tollgate::Algorithm;

/// Points per series: about one per pixel column of a panel.
const SAMPLES: usize = 500;
/// Size of the whole picture, in pixels.
const SIZE: (u32, u32) = (1200, 960);

/// Font files tried, in order, after `TOLLGATE_FONT`.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// What to draw.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    /// The title over all panels.
    pub title: &'a str,
    /// The simulated time, µs.
    pub duration_us: u64,
    /// Offered arrivals, sorted µs offsets.
    pub arrivals: &'a [u64],
    /// The `settle` pattern: each offered request's actual cost at its
    /// arrival. The chart then counts units of cost, not requests: offered
    /// cost, and the cost each algorithm kept charged
    /// ([`CostRun::charged`](super::settle::CostRun::charged)), against the
    /// limit and the limit plus `max_overdraft`.
    pub costs: Option<&'a [(u64, u64)]>,
    /// One run per panel.
    pub runs: &'a [AlgorithmRun],
}

/// Registers a font with plotters once; whether one was found.
pub fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let env = std::env::var_os("TOLLGATE_FONT").map(std::path::PathBuf::from);
        let candidates = env
            .into_iter()
            .chain(FONT_PATHS.iter().map(std::path::PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps fonts for the life of the process; this runs once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        eprintln!(
            "warning: no font found (install fonts-dejavu-core or set TOLLGATE_FONT to a .ttf): \
             plots are drawn without text"
        );
        false
    })
}

/// Writes the chart as SVG.
///
/// # Errors
/// [`SimulateError::Plot`] when drawing or writing fails.
pub fn write_svg(chart: &Chart<'_>, path: &Path) -> Result<(), SimulateError> {
    let fail = |e: String| SimulateError::Plot {
        path: path.to_owned(),
        reason: e,
    };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(chart, &root).map_err(fail)?;
    root.present().map_err(|e| fail(e.to_string()))
}

/// Writes the chart as PNG.
///
/// # Errors
/// [`SimulateError::Plot`] when drawing or writing fails.
pub fn write_png(chart: &Chart<'_>, path: &Path) -> Result<(), SimulateError> {
    let fail = |e: String| SimulateError::Plot {
        path: path.to_owned(),
        reason: e,
    };
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw(chart, &root).map_err(fail)?;
    root.present().map_err(|e| fail(e.to_string()))
}

/// The colour of an algorithm's admitted series (distinct per algorithm, so
/// a test can find each series in the SVG).
pub fn color(algorithm: Algorithm) -> RGBColor {
    match algorithm {
        Algorithm::FixedWindow => RGBColor(0x1F, 0x77, 0xB4),
        Algorithm::SlidingWindow => RGBColor(0xFF, 0x7F, 0x0E),
        Algorithm::SlidingLog => RGBColor(0x2C, 0xA0, 0x2C),
        Algorithm::TokenBucket => RGBColor(0x94, 0x67, 0xBD),
        Algorithm::Gcra => RGBColor(0x8C, 0x56, 0x4B),
        _ => RGBColor(0x17, 0xBE, 0xCF),
    }
}

const OFFERED: RGBColor = RGBColor(0xAA, 0xAA, 0xAA);
const LIMIT: RGBColor = RGBColor(0xD6, 0x27, 0x28);

fn draw<DB: DrawingBackend>(chart: &Chart<'_>, root: &DrawingArea<DB, Shift>) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let text = font_available();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let body = if text {
        root.titled(chart.title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?
    } else {
        root.margin(30, 0, 0, 0)
    };
    let rows = chart.runs.len().div_ceil(2).max(1);
    let cols = if chart.runs.len() > 1 { 2 } else { 1 };
    let panels = body.split_evenly((rows, cols));
    let duration = chart.duration_us.max(1);
    let secs = duration as f64 / 1e6;

    for (run, area) in chart.runs.iter().zip(panels.iter()) {
        let period = run.policy.period_us();
        let limit = run.policy.limit() as f64;
        let by_cost = |items: &[(u64, u64)]| {
            rolling_max_by(items, |c| c.0, |c| c.1, period, duration, SAMPLES)
        };
        let offered = match chart.costs {
            Some(costs) => by_cost(costs),
            None => rolling_max(chart.arrivals, period, duration, SAMPLES),
        };
        let admitted = match &run.costs {
            Some(costs) => by_cost(&costs.charged),
            None => rolling_max(&run.admitted_at, period, duration, SAMPLES),
        };
        // With costs, how far a settle may overdraw: a second line.
        let most = run
            .costs
            .as_ref()
            .map(|_| (run.policy.capacity() + run.policy.max_overdraft()) as f64);
        let top_admitted = admitted.iter().map(|p| p.1).max().unwrap_or(0) as f64;
        let top_offered = offered.iter().map(|p| p.1).max().unwrap_or(0) as f64;
        // Offered traffic far above the limit would flatten everything else:
        // cap the axis at 4x what matters and clip the offered line to it.
        let top = top_offered
            .min(4.0 * top_admitted.max(limit))
            .max(top_admitted)
            .max(most.unwrap_or(limit))
            // Headroom for the legend above the data.
            * 1.45;
        let clip = |v: u64| (v as f64).min(top);

        let mut builder = ChartBuilder::on(area);
        builder.margin(8);
        if text {
            builder
                .caption(
                    match &run.costs {
                        Some(costs) => format!(
                            "{}: admitted {} of {}, at most {} units in one period",
                            run.policy, run.admitted, run.offered, costs.worst_window
                        ),
                        None => format!(
                            "{}: admitted {} of {}, at most {} in one period",
                            run.policy, run.admitted, run.offered, run.worst_window
                        ),
                    },
                    ("sans-serif", 15),
                )
                .x_label_area_size(32)
                .y_label_area_size(44);
        }
        let mut ctx = builder
            .build_cartesian_2d(0f64..secs, 0f64..top)
            .map_err(|e| e.to_string())?;
        if text {
            ctx.configure_mesh()
                .x_desc("time (s)")
                .y_desc(if chart.costs.is_some() {
                    "units in the last period"
                } else {
                    "in the last period"
                })
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 12))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        let to_xy = |(t, v): (u64, u64)| (t as f64 / 1e6, clip(v));
        ctx.draw_series(LineSeries::new(
            offered.iter().copied().map(to_xy),
            OFFERED.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label(if chart.costs.is_some() {
            "offered cost"
        } else {
            "offered"
        })
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], OFFERED.stroke_width(2)));
        ctx.draw_series(LineSeries::new(
            [(0.0, limit), (secs, limit)],
            LIMIT.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?
        .label(format!("limit {} per period", run.policy.limit()))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], LIMIT.stroke_width(1)));
        if let Some(most) = most {
            let style = LIMIT.mix(0.45).stroke_width(1);
            ctx.draw_series(LineSeries::new([(0.0, most), (secs, most)], style))
                .map_err(|e| e.to_string())?
                .label(format!(
                    "capacity + max_overdraft {}",
                    run.policy.max_overdraft()
                ))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
        }
        let color = color(run.policy.algorithm());
        ctx.draw_series(LineSeries::new(
            admitted.iter().copied().map(to_xy),
            color.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label(if run.costs.is_some() {
            "charged (kept)"
        } else if run.policy.algorithm() == Algorithm::LeakyBucket {
            "admitted (when it proceeds)"
        } else {
            "admitted"
        })
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        if text {
            ctx.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The sliding count "timestamps in `(t - period, t]`" over `[0, duration)`,
/// cut into `samples` equal slices: for each slice, its start and the
/// largest value the count takes within it.
pub fn rolling_max(times: &[u64], period: u64, duration: u64, samples: usize) -> Vec<(u64, u64)> {
    rolling_max_by(times, |t| *t, |_| 1, period, duration, samples)
}

/// [`rolling_max`] of weighted items, sorted by `at`: the sliding sum of
/// the weights of the items in `(t - period, t]`.
pub fn rolling_max_by<T>(
    items: &[T],
    at: impl Fn(&T) -> u64,
    weight: impl Fn(&T) -> u64,
    period: u64,
    duration: u64,
    samples: usize,
) -> Vec<(u64, u64)> {
    let samples = samples.max(1);
    let mut out = Vec::with_capacity(samples);
    let (mut added, mut removed) = (0usize, 0usize);
    let mut count = 0u64;
    let next_event = |added: usize, removed: usize| -> Option<u64> {
        let add = items.get(added).map(&at);
        let remove = items.get(removed).map(|i| at(i) + period);
        match (add, remove) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    };
    // Applies every event at instant `when` (an item entering the window,
    // or one leaving it one period later).
    let apply = |when: u64, added: &mut usize, removed: &mut usize, count: &mut u64| {
        while let Some(item) = items.get(*added).filter(|i| at(i) == when) {
            *count += weight(item);
            *added += 1;
        }
        while let Some(item) = items.get(*removed).filter(|i| at(i) + period == when) {
            *count -= weight(item);
            *removed += 1;
        }
    };
    for slice in 0..samples {
        let start = (duration as u128 * slice as u128 / samples as u128) as u64;
        let end = (duration as u128 * (slice as u128 + 1) / samples as u128) as u64;
        while let Some(when) = next_event(added, removed).filter(|&w| w <= start) {
            apply(when, &mut added, &mut removed, &mut count);
        }
        let mut most = count;
        while let Some(when) = next_event(added, removed).filter(|&w| w < end) {
            apply(when, &mut added, &mut removed, &mut count);
            most = most.max(count);
        }
        out.push((start, most));
    }
    out
}

/// Formats µs in the largest unit that divides them (`1s`, `250ms`).
pub fn format_period(us: u64) -> String {
    for (size, name) in [
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1_000, "ms"),
    ] {
        if us % size == 0 {
            return format!("{}{name}", us / size);
        }
    }
    format!("{us}us")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_max_keeps_short_peaks() {
        // Three requests at 10..12 µs, period 5 µs: the count is 3 at 12 and
        // back to 0 at 17; one slice of 100 µs still shows the peak.
        assert_eq!(rolling_max(&[10, 11, 12], 5, 100, 1), vec![(0, 3)]);
        let fine = rolling_max(&[10, 11, 12], 5, 20, 4);
        assert_eq!(fine, vec![(0, 0), (5, 0), (10, 3), (15, 2)]);
    }

    #[test]
    fn rolling_max_by_sums_the_weights_in_the_window() {
        // 5 units at 10, 7 at 12: 12 in the window at 12, 7 from 15 (the
        // first left), 0 from 17.
        let items = [(10u64, 5u64), (12, 7)];
        let by = |d, n| rolling_max_by(&items, |i| i.0, |i| i.1, 5, d, n);
        assert_eq!(by(100, 1), vec![(0, 12)]);
        assert_eq!(by(20, 4), vec![(0, 0), (5, 0), (10, 12), (15, 7)]);
    }
}
