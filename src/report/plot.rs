//! The power timeline, `carbontrack-<jobid>.svg`: power over time per
//! component, stacked (CPU, DRAM, all GPUs), with the epoch marks, the time
//! limit and the epoch prediction where known, and the totals and CO2e in
//! the legend. One picture per node (see the README): each node's sampler
//! keeps its own timeline.
//!
//! Hand-written SVG, a pure function of its input ([`render`]): the picture
//! is a few rectangles' worth of paths and text, which no plotting crate
//! makes shorter, and the crates that draw charts bring fonts and rasterisers
//! a plugin inside slurmstepd has no use for.
//!
//! Design, for a person at a glance and on a grey-scale printer:
//! - stacked step areas (a timeline point is an average over its span, so a
//!   step, not a slope, is what was measured), bottom to top CPU, DRAM, GPU;
//! - Okabe & Ito's colour-blind-safe palette (Okabe, Ito: "Color Universal
//!   Design", 2008), picked so the three also differ in lightness: CPU dark
//!   blue, DRAM light yellow with a hatch, GPU mid orange;
//! - epoch ends as thin grey lines numbered at the top; the time limit and
//!   the predicted end as dashed lines of different dash patterns; a limit or
//!   prediction far beyond the run is named in the legend instead of
//!   squashing the run into the chart's first sliver;
//! - time as elapsed `h:mm` (or `m:ss` for short runs) from the start, given
//!   in UTC; power in W or kW, on ticks of 1, 2 or 5 × 10^k.
//!
//! Bounded: at most [`MAX_BINS`] steps are drawn whatever the timeline's
//! length (the sampler's timeline is itself bounded), so a week-long job's
//! picture is the size of an hour-long one's.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::carbon::equivalents::fmt_significant;
use crate::carbon::summary::{fmt_duration, fmt_grams, fmt_kwh};
use crate::footprint::{Row, total_of};
use crate::measure::sampler::TimelinePoint;
use crate::units::{GramsCo2e, JOULES_PER_KWH};

/// Most steps drawn: about one per 2 px of the chart's width.
pub const MAX_BINS: usize = 480;

/// A limit or prediction further than this many times the run's length is
/// named in the legend, not drawn.
const MAX_STRETCH: f64 = 3.0;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 560.0;
/// The chart's area.
const X0: f64 = 80.0;
const X1: f64 = 930.0;
const Y0: f64 = 78.0;
const Y1: f64 = 400.0;

const FONT: &str = "DejaVu Sans, Verdana, Arial, Helvetica, sans-serif";

/// One stacked series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub component: &'static str,
    pub label: &'static str,
    pub colour: &'static str,
}

/// Bottom to top. Okabe-Ito blue, yellow, orange.
pub const SERIES: [Series; 3] = [
    Series {
        component: "cpu",
        label: "CPU",
        colour: "#0072B2",
    },
    Series {
        component: "dram",
        label: "DRAM",
        colour: "#F0E442",
    },
    Series {
        component: "gpu",
        label: "GPU (all)",
        colour: "#E69F00",
    },
];

const LIMIT_COLOUR: &str = "#D55E00";
const PREDICTION_COLOUR: &str = "#CC79A7";

/// What the picture shows.
#[derive(Debug, Clone)]
pub struct PlotInput<'a> {
    pub job_id: &'a str,
    pub node: &'a str,
    /// Wall time of the timeline's first sample: elapsed time counts from it.
    pub start: SystemTime,
    /// The measured run's length.
    pub elapsed: Duration,
    pub points: &'a [TimelinePoint],
    /// Epoch ends, as time since `start`.
    pub epochs: &'a [Duration],
    pub time_limit: Option<Duration>,
    /// The epoch prediction: its total epochs, the epochs it was made after,
    /// and the predicted length of the whole run.
    pub prediction: Option<(u32, u32, Duration)>,
    /// The footprint rows the legend's figures come from (the total row
    /// among them).
    pub rows: &'a [Row],
    pub pue: f64,
    /// A line under the title (say, that the timeline covers only part of
    /// the figures).
    pub note: Option<&'a str>,
}

/// One drawn step: average watts per component from `start` to `end`
/// seconds after the start; `None` where not measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bin {
    pub start: f64,
    pub end: f64,
    pub watts: [Option<f64>; 3],
}

impl Bin {
    fn stacked(&self) -> f64 {
        self.watts.iter().flatten().sum()
    }
}

/// The timeline as at most `max` steps: neighbouring points merged in equal
/// groups, each component's power weighted by duration, so the energy under
/// the steps is the energy of the points.
pub fn bins(points: &[TimelinePoint], start: SystemTime, max: usize) -> Vec<Bin> {
    let max = max.max(1);
    let per = points.len().div_ceil(max).max(1);
    let secs = |t: SystemTime| match t.duration_since(start) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    points
        .chunks(per)
        .filter_map(|group| {
            let first = group.first()?;
            let last = group.last()?;
            let mut watts = [None; 3];
            for (i, w) in watts.iter_mut().enumerate() {
                let (mut joules, mut span) = (0.0, 0.0);
                for p in group {
                    let d = p.duration.as_secs_f64();
                    if let Some(v) = [p.cpu, p.dram, p.gpu][i] {
                        joules += v.0 * d;
                        span += d;
                    }
                }
                if span > 0.0 {
                    *w = Some(joules / span);
                }
            }
            Some(Bin {
                start: secs(first.start),
                end: secs(last.start) + last.duration.as_secs_f64(),
                watts,
            })
        })
        .collect()
}

/// The top of the power axis at most, whatever a point says.
const MAX_AXIS_WATTS: f64 = 1e7;

/// The step of a linear axis from 0 to `max`: 1, 2 or 5 × 10^k, the smallest
/// that needs at most `max_ticks` steps.
pub fn nice_step(max: f64, max_ticks: u32) -> f64 {
    if max.is_nan() || max <= 0.0 || max.is_infinite() {
        return 1.0;
    }
    let rough = max / f64::from(max_ticks.max(1));
    let mag = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| max / s <= f64::from(max_ticks) + 1e-9)
        .unwrap_or(10.0 * mag)
}

/// Steps of the time axis, in seconds: round clock intervals.
const TIME_STEPS: [u64; 20] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
    172_800, 604_800,
];

/// The time axis's step for a span of `secs`: the smallest round interval
/// that needs at most `max_ticks` steps.
pub fn time_step(secs: f64, max_ticks: u32) -> u64 {
    TIME_STEPS
        .iter()
        .copied()
        .find(|&s| secs / s as f64 <= f64::from(max_ticks))
        .unwrap_or_else(|| {
            // Beyond weeks: whole weeks.
            let weeks = (secs / 604_800.0 / f64::from(max_ticks.max(1))).ceil() as u64;
            weeks.max(1) * 604_800
        })
}

/// A time tick: `m:ss` when the axis steps in seconds, days (`3d`) when it
/// steps in days, else `h:mm` (hours past 24 keep counting, as elapsed time
/// does).
pub fn fmt_tick_time(secs: u64, step: u64) -> String {
    if step < 60 {
        format!("{}:{:02}", secs / 60, secs % 60)
    } else if step >= 86_400 {
        format!("{}d", secs / 86_400)
    } else {
        format!("{}:{:02}", secs / 3600, secs / 60 % 60)
    }
}

/// A power tick in W, or kW from a step of 1 kW up, with the decimals the
/// step needs.
pub fn fmt_tick_power(watts: f64, step: f64) -> String {
    let (v, s, unit) = if step >= 1000.0 {
        (watts / 1000.0, step / 1000.0, "kW")
    } else {
        (watts, step, "W")
    };
    let decimals = if s >= 1.0 {
        0
    } else {
        (-s.log10().floor()) as usize
    };
    format!("{v:.decimals$} {unit}")
}

/// Escapes text for SVG character data and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // XML 1.0 allows no other control characters.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The picture, as an SVG document.
pub fn render(i: &PlotInput) -> String {
    let bins = bins(i.points, i.start, MAX_BINS);
    let elapsed = i
        .elapsed
        .as_secs_f64()
        .max(bins.last().map_or(0.0, |b| b.end));
    let fits = |d: Duration| elapsed > 0.0 && d.as_secs_f64() <= elapsed * MAX_STRETCH;
    let limit_drawn = i.time_limit.filter(|&d| fits(d));
    let predicted_drawn = i.prediction.filter(|p| fits(p.2));
    let x_max = [
        Some(elapsed),
        limit_drawn.map(|d| d.as_secs_f64()),
        predicted_drawn.map(|p| p.2.as_secs_f64()),
    ]
    .into_iter()
    .flatten()
    .fold(1.0_f64, f64::max);
    let t_step = time_step(x_max, 10);
    // A peak that is no number (a corrupt point) must not make the tick
    // loops below endless: the axis stops at 10 MW whatever is drawn.
    let peak = bins.iter().map(Bin::stacked).fold(0.0_f64, f64::max);
    let peak = if peak.is_finite() {
        peak.min(MAX_AXIS_WATTS)
    } else {
        0.0
    };
    let p_step = nice_step(peak * 1.08, 6);
    let y_max = (peak * 1.08 / p_step).ceil().max(1.0) * p_step;
    let x = |s: f64| X0 + (X1 - X0) * (s / x_max).clamp(0.0, 1.0);
    let y = |w: f64| Y1 - (Y1 - Y0) * (w / y_max).clamp(0.0, 1.0);

    let drawn: Vec<usize> = (0..SERIES.len())
        .filter(|&k| bins.iter().any(|b| b.watts[k].is_some()))
        .collect();

    let mut s = String::with_capacity(64 * 1024);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" font-size="13">"#
    );
    let _ = writeln!(
        s,
        "<title>carbontrack: job {} on {}, power over time</title>",
        escape(i.job_id),
        escape(i.node)
    );
    s.push_str(concat!(
        r##"<defs><pattern id="hatch" width="7" height="7" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">"##,
        r##"<rect width="7" height="7" fill="#F0E442"/><line x1="0" y1="0" x2="0" y2="7" stroke="#9A8F00" stroke-width="1.2"/></pattern></defs>"##,
        "\n",
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##,
        "\n"
    ));
    // Title and what the picture is of.
    let _ = writeln!(
        s,
        r##"<text x="{X0}" y="30" font-size="19" font-weight="bold" fill="#222">Job {} on {}: power over time</text>"##,
        escape(i.job_id),
        escape(i.node)
    );
    let started = humantime::format_rfc3339_seconds(i.start)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC");
    let mut sub = format!(
        "Started {started}, measured for {}",
        fmt_duration(Duration::from_secs_f64(elapsed))
    );
    if drawn.len() > 1 {
        let names: Vec<&str> = drawn
            .iter()
            .map(|&k| SERIES[k].label.trim_end_matches(" (all)"))
            .collect();
        let _ = write!(sub, ". Stacked bottom up: {}", names.join(", "));
    }
    // What one step stands for: the longest average drawn.
    let step = bins.iter().map(|b| b.end - b.start).fold(0.0_f64, f64::max);
    if step > 0.0 {
        let _ = write!(
            sub,
            "; each step a {} average",
            fmt_duration(Duration::from_secs_f64(step))
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{X0}" y="52" font-size="13" fill="#555">{}</text>"##,
        escape(&sub)
    );

    // Grid and axes.
    s.push_str(r##"<g stroke="#d9d9d9" stroke-width="1">"##);
    let mut w = 0.0;
    while w <= y_max + p_step * 1e-6 {
        let _ = write!(
            s,
            r#"<line x1="{X0}" y1="{0:.1}" x2="{X1}" y2="{0:.1}"/>"#,
            y(w)
        );
        w += p_step;
    }
    let mut t = 0;
    while (t as f64) <= x_max {
        let _ = write!(
            s,
            r#"<line x1="{0:.1}" y1="{Y0}" x2="{0:.1}" y2="{Y1}"/>"#,
            x(t as f64)
        );
        t += t_step;
    }
    s.push_str("</g>\n");

    // The stacked areas, bottom up.
    for &k in &drawn {
        let below = |b: &Bin| b.watts[..k].iter().flatten().sum::<f64>();
        let above = |b: &Bin| below(b) + b.watts[k].unwrap_or(0.0);
        let fill = if SERIES[k].component == "dram" {
            "url(#hatch)".to_string()
        } else {
            SERIES[k].colour.to_string()
        };
        let mut d = String::new();
        for run in runs(&bins) {
            let _ = write!(d, "M{:.1},{:.1}", x(run[0].start), y(below(&run[0])));
            for b in run {
                let _ = write!(
                    d,
                    "L{:.1},{:.1}L{:.1},{:.1}",
                    x(b.start),
                    y(above(b)),
                    x(b.end),
                    y(above(b))
                );
            }
            for b in run.iter().rev() {
                let _ = write!(
                    d,
                    "L{:.1},{:.1}L{:.1},{:.1}",
                    x(b.end),
                    y(below(b)),
                    x(b.start),
                    y(below(b))
                );
            }
            d.push('Z');
        }
        let _ = writeln!(
            s,
            r##"<path d="{d}" fill="{fill}" stroke="#ffffff" stroke-width="0.6" stroke-linejoin="round"><title>{}</title></path>"##,
            SERIES[k].label
        );
    }
    if drawn.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="15" fill="#555">No power was measured (see the summary, carbontrack-{}.txt)</text>"##,
            (X0 + X1) / 2.0,
            (Y0 + Y1) / 2.0,
            escape(i.job_id)
        );
    }

    // Epoch ends, numbered at the top; labels thinned to stay apart.
    let every = label_every(i.epochs.len(), X1 - X0, 22.0);
    for (n, at) in i.epochs.iter().enumerate() {
        let xe = x(at.as_secs_f64());
        let _ = write!(
            s,
            r##"<line x1="{xe:.1}" y1="{Y0}" x2="{xe:.1}" y2="{Y1}" stroke="#333333" stroke-width="1" stroke-opacity="0.75"/>"##
        );
        if (n + 1) % every == 0 || n == 0 {
            let _ = write!(
                s,
                r##"<text x="{xe:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="#333">{}</text>"##,
                Y0 - 5.0,
                n + 1
            );
        }
    }
    if !i.epochs.is_empty() {
        s.push('\n');
    }
    let dashed = |s: &mut String, at: Duration, colour: &str, dash: &str, label: &str, row: f64| {
        let xl = x(at.as_secs_f64());
        let anchor = if xl > X1 - 120.0 { "end" } else { "start" };
        let dx = if anchor == "end" { -4.0 } else { 4.0 };
        let _ = writeln!(
            s,
            r##"<line x1="{xl:.1}" y1="{Y0}" x2="{xl:.1}" y2="{Y1}" stroke="{colour}" stroke-width="2.2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}" font-size="12" fill="{colour}" font-weight="bold">{}</text>"##,
            xl + dx,
            Y0 + 14.0 + 16.0 * row,
            escape(label)
        );
    };
    if let Some(l) = limit_drawn {
        dashed(&mut s, l, LIMIT_COLOUR, "9 5", "time limit", 0.0);
    }
    if let Some((n, _, at)) = predicted_drawn {
        dashed(
            &mut s,
            at,
            PREDICTION_COLOUR,
            "3 3",
            &format!("predicted end ({n} epochs)"),
            // A line lower, so the two labels never overlap.
            1.0,
        );
    }

    // Axes and tick labels.
    let _ = writeln!(
        s,
        r##"<path d="M{X0},{Y0}V{Y1}H{X1}" fill="none" stroke="#444" stroke-width="1.2"/>"##
    );
    let mut w = 0.0;
    while w <= y_max + p_step * 1e-6 {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">{}</text>"##,
            X0 - 6.0,
            y(w) + 4.5,
            fmt_tick_power(w, p_step)
        );
        w += p_step;
    }
    let mut t = 0;
    while (t as f64) <= x_max {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">{}</text>"##,
            x(t as f64),
            Y1 + 18.0,
            fmt_tick_time(t, t_step)
        );
        t += t_step;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">elapsed time ({}) since the start</text>"##,
        (X0 + X1) / 2.0,
        Y1 + 38.0,
        match t_step {
            0..60 => "m:ss",
            86_400.. => "days",
            _ => "h:mm",
        }
    );

    legend(
        &mut s,
        i,
        &drawn,
        limit_drawn.is_some(),
        predicted_drawn.is_some(),
    );
    if let Some(n) = i.note {
        let _ = writeln!(
            s,
            r##"<text x="{X0}" y="{:.1}" font-size="12" font-style="italic" fill="#555">{}</text>"##,
            HEIGHT - 10.0,
            escape(n)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Contiguous stretches of bins: a gap longer than half a bin (a clock
/// step, sampling that stopped) breaks the area rather than bridging it.
fn runs(bins: &[Bin]) -> Vec<&[Bin]> {
    let mut out = Vec::new();
    let mut from = 0;
    for k in 1..bins.len() {
        let gap = bins[k].start - bins[k - 1].end;
        let len = (bins[k - 1].end - bins[k - 1].start).max(1.0);
        if gap > len / 2.0 {
            out.push(&bins[from..k]);
            from = k;
        }
    }
    if from < bins.len() {
        out.push(&bins[from..]);
    }
    out
}

/// Label every n-th of `count` marks so that labels stay `min_gap` apart on
/// an axis `width` long (assuming evenly spread marks).
pub fn label_every(count: usize, width: f64, min_gap: f64) -> usize {
    if count == 0 {
        return 1;
    }
    let fit = (width / min_gap).floor().max(1.0) as usize;
    let every = count.div_ceil(fit).max(1);
    // Round up to 1, 2, 5, 10, 20, 50 … so the numbers read as a sequence.
    let mut nice = 1;
    loop {
        for m in [1, 2, 5] {
            if nice * m >= every {
                return nice * m;
            }
        }
        nice *= 10;
    }
}

/// The legend under the chart: per-component energy at the devices, the
/// total with PUE and its CO2e, and what the lines mean.
fn legend(s: &mut String, i: &PlotInput, drawn: &[usize], limit: bool, predicted: bool) {
    let mut yl = Y1 + 70.0;
    let _ = writeln!(
        s,
        r##"<text x="{X0}" y="{yl}" font-weight="bold" fill="#222">Energy at the devices</text>"##
    );
    let mut xl = X0 + 170.0;
    for (k, series) in SERIES.iter().enumerate() {
        let of: Vec<&Row> = i
            .rows
            .iter()
            .filter(|r| !r.is_total() && r.component == series.component)
            .collect();
        if of.is_empty() && !drawn.contains(&k) {
            continue;
        }
        let measured: Vec<f64> = of.iter().filter_map(|r| r.energy_j).collect();
        let figure = if of.is_empty() {
            String::new()
        } else if measured.is_empty() {
            ": not measured".to_string()
        } else {
            format!(
                ": {} kWh",
                fmt_kwh(measured.iter().sum::<f64>() / JOULES_PER_KWH)
            )
        };
        let fill = if !of.is_empty() && measured.is_empty() {
            // Hollow: nothing of it is in the chart.
            "none"
        } else if series.component == "dram" {
            "url(#hatch)"
        } else {
            series.colour
        };
        let _ = writeln!(
            s,
            r##"<rect x="{xl}" y="{:.1}" width="16" height="16" fill="{fill}" stroke="#444" stroke-width="0.8"/><text x="{:.1}" y="{yl}" fill="#222">{}{}</text>"##,
            yl - 13.0,
            xl + 22.0,
            series.label,
            escape(&figure)
        );
        xl += 225.0;
    }

    yl += 26.0;
    let total = i
        .rows
        .iter()
        .find(|r| r.is_total())
        .cloned()
        .or_else(|| total_of(i.rows));
    let line = match total.as_ref().and_then(|t| t.energy_kwh.map(|k| (t, k))) {
        Some((t, kwh)) => {
            let mut l = format!("Total: {} kWh with PUE {}", fmt_kwh(kwh), i.pue);
            if let Some(g) = t.co2e_g {
                let _ = write!(l, ", {} CO2e", fmt_grams(GramsCo2e(g)));
                if let Some(gi) = t.intensity_g_per_kwh {
                    let _ = write!(l, " at {} g/kWh", fmt_significant(gi, 3));
                }
            }
            if t.status != "ok" {
                let _ = write!(l, " ({})", t.status);
            }
            l
        }
        None => "Total: unavailable (nothing could be measured)".to_string(),
    };
    let _ = writeln!(
        s,
        r##"<text x="{X0}" y="{yl}" font-weight="bold" fill="#222">{}</text>"##,
        escape(&line)
    );

    yl += 26.0;
    let mut xl = X0;
    let mut key = |s: &mut String, stroke: &str, dash: Option<&str>, width: f64, text: &str| {
        let dash = dash
            .map(|d| format!(r#" stroke-dasharray="{d}""#))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            r##"<line x1="{xl}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{stroke}" stroke-width="{width}"{dash}/><text x="{:.1}" y="{yl}" fill="#222">{}</text>"##,
            yl - 4.5,
            xl + 28.0,
            yl - 4.5,
            xl + 34.0,
            escape(text)
        );
        xl += 34.0 + 7.2 * text.chars().count() as f64 + 24.0;
    };
    if !i.epochs.is_empty() {
        key(
            s,
            "#333333",
            None,
            1.0,
            &format!("epoch ends ({})", i.epochs.len()),
        );
    }
    if let Some(l) = i.time_limit {
        let text = if limit {
            format!("time limit {}", fmt_duration(l))
        } else {
            format!("time limit {} (beyond the chart)", fmt_duration(l))
        };
        key(s, LIMIT_COLOUR, Some("9 5"), 2.2, &text);
    }
    if let Some((n, after, at)) = i.prediction {
        let text = format!(
            "predicted end of {n} epochs (after {after}): {}{}",
            fmt_duration(at),
            if predicted { "" } else { " (beyond the chart)" }
        );
        key(s, PREDICTION_COLOUR, Some("3 3"), 2.2, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Watts;

    fn point(start: u64, secs: u64, cpu: Option<f64>, gpu: Option<f64>) -> TimelinePoint {
        TimelinePoint {
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(start),
            duration: Duration::from_secs(secs),
            cpu: cpu.map(Watts),
            dram: None,
            gpu: gpu.map(Watts),
        }
    }

    #[test]
    fn nice_steps() {
        // (max, ticks) -> step
        for (max, ticks, want) in [
            (100.0, 5, 20.0),
            (108.0, 6, 20.0),
            (1.0, 5, 0.2),
            (7.3, 6, 2.0),
            (350.0, 6, 100.0),
            (3500.0, 6, 1000.0),
            (0.0, 6, 1.0),
            (f64::NAN, 6, 1.0),
            (60.0, 6, 10.0),
        ] {
            assert_eq!(nice_step(max, ticks), want, "{max}/{ticks}");
        }
    }

    #[test]
    fn time_steps_are_round_clock_intervals() {
        // (span s, ticks) -> step s
        for (span, ticks, want) in [
            (45.0, 10, 5),
            (100.0, 10, 10),
            (600.0, 10, 60),
            (3600.0, 10, 600),
            (5400.0, 10, 600),
            (7200.0, 10, 900),
            (86_400.0, 10, 10_800),
            (7.0 * 86_400.0, 10, 86_400),
            (100.0 * 86_400.0, 10, 2 * 604_800),
        ] {
            assert_eq!(time_step(span, ticks), want, "{span}");
        }
    }

    #[test]
    fn tick_labels() {
        for (secs, step, want) in [
            (0, 10, "0:00"),
            (90, 30, "1:30"),
            (0, 600, "0:00"),
            (5400, 600, "1:30"),
            (100_800, 10_800, "28:00"),
            (172_800, 86_400, "2d"),
        ] {
            assert_eq!(fmt_tick_time(secs, step), want);
        }
        for (w, step, want) in [
            (0.0, 50.0, "0 W"),
            (250.0, 50.0, "250 W"),
            (0.4, 0.2, "0.4 W"),
            (0.05, 0.05, "0.05 W"),
            (3000.0, 1000.0, "3 kW"),
            (2000.0, 2000.0, "2 kW"),
        ] {
            assert_eq!(fmt_tick_power(w, step), want);
        }
    }

    #[test]
    fn labels_are_thinned_to_round_intervals() {
        for (count, want) in [(0, 1), (4, 1), (38, 1), (39, 2), (100, 5), (400, 20)] {
            assert_eq!(label_every(count, 850.0, 22.0), want, "{count}");
        }
    }

    #[test]
    fn merging_keeps_the_energy_and_the_bound() {
        let t0 = SystemTime::UNIX_EPOCH;
        let points: Vec<TimelinePoint> = (0..1000)
            .map(|k| {
                point(
                    60 * k,
                    60,
                    Some(100.0 + k as f64),
                    (k % 2 == 0).then_some(50.0),
                )
            })
            .collect();
        let b = bins(&points, t0, MAX_BINS);
        assert!(b.len() <= MAX_BINS, "{}", b.len());
        let energy = |k: usize, b: &[Bin]| {
            b.iter()
                .map(|b| b.watts[k].unwrap_or(0.0) * (b.end - b.start))
                .sum::<f64>()
        };
        let cpu_truth: f64 = points.iter().map(|p| p.cpu.unwrap().0 * 60.0).sum();
        assert!((energy(0, &b) - cpu_truth).abs() < 1e-6 * cpu_truth);
        // GPU measured half the time at 50 W: its steps average 50 W where
        // measured, so a bin of both kinds says 50, not 25.
        assert!(
            b.iter().all(|x| x.watts[2].is_none_or(|w| w == 50.0)),
            "GPU steps other than 50 W"
        );
        // The last bin holds the odd point alone, whose GPU was not measured.
        assert_eq!(b.iter().filter(|x| x.watts[2].is_none()).count(), 1);
        assert!(b.iter().all(|x| x.watts[1].is_none()));
        assert_eq!(b.first().unwrap().start, 0.0);
        assert_eq!(b.last().unwrap().end, 60_000.0);
        // Few points: one bin each.
        assert_eq!(bins(&points[..5], t0, MAX_BINS).len(), 5);
        assert!(bins(&[], t0, MAX_BINS).is_empty());
    }

    #[test]
    fn gaps_break_the_area() {
        let b = bins(
            &[
                point(0, 60, Some(1.0), None),
                point(60, 60, Some(1.0), None),
                point(600, 60, Some(1.0), None),
            ],
            SystemTime::UNIX_EPOCH,
            MAX_BINS,
        );
        let r = runs(&b);
        assert_eq!(r.iter().map(|r| r.len()).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("a\u{1}b"), "a\u{FFFD}b");
        let rows = [];
        let svg = render(&PlotInput {
            job_id: "<42>",
            node: "n&1",
            start: SystemTime::UNIX_EPOCH,
            elapsed: Duration::from_secs(60),
            points: &[point(0, 60, Some(10.0), None)],
            epochs: &[],
            time_limit: None,
            prediction: None,
            rows: &rows,
            pue: 1.0,
            note: Some("</text><script>"),
        });
        assert!(!svg.contains("<42>") && !svg.contains("<script>"), "{svg}");
        assert!(svg.contains("Job &lt;42&gt; on n&amp;1"), "{svg}");
    }

    /// A point whose power is no number or beyond reason still gives a
    /// bounded picture (the tick loops end).
    #[test]
    fn a_corrupt_point_gives_a_bounded_picture() {
        let rows = [];
        for w in [f64::INFINITY, f64::NAN, 1e300] {
            let svg = render(&PlotInput {
                job_id: "1",
                node: "n",
                start: SystemTime::UNIX_EPOCH,
                elapsed: Duration::from_secs(120),
                points: &[point(0, 60, Some(w), None), point(60, 60, Some(10.0), None)],
                epochs: &[],
                time_limit: None,
                prediction: None,
                rows: &rows,
                pue: 1.0,
                note: None,
            });
            assert!(
                svg.len() < 100_000 && svg.ends_with("</svg>\n"),
                "{w}: {}",
                svg.len()
            );
        }
    }

    #[test]
    fn far_limits_are_named_not_drawn() {
        let rows = [];
        let points = [point(0, 600, Some(10.0), Some(20.0))];
        let input = |limit: u64| PlotInput {
            job_id: "1",
            node: "n",
            start: SystemTime::UNIX_EPOCH,
            elapsed: Duration::from_secs(600),
            points: &points,
            epochs: &[],
            time_limit: Some(Duration::from_secs(limit)),
            prediction: Some((10, 1, Duration::from_secs(1200))),
            rows: &rows,
            pue: 1.0,
            note: None,
        };
        let near = render(&input(1800));
        assert!(near.contains(">time limit<"), "{near}");
        assert!(near.contains("predicted end (10 epochs)"), "{near}");
        assert!(!near.contains("beyond the chart"), "{near}");
        let far = render(&input(48 * 3600));
        assert!(!far.contains(">time limit<"), "{far}");
        assert!(
            far.contains("time limit 2d 00h 00m (beyond the chart)"),
            "{far}"
        );
        // The axis then ends at the prediction (20 min): its last tick.
        assert!(far.contains(">0:20<"), "{far}");
        assert!(!far.contains(">0:30<"), "{far}");
    }
}
