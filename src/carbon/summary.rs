//! The human summary, `carbontrack-<jobid>.txt`: refreshed while the job runs
//! (energy so far, average power, projections) and rewritten at the end
//! (actual figures, equivalents, actual against predicted). Written for the
//! ML researcher who launched the job; the prediction block keeps the shape
//! carbontracker users know ("Predicted consumption for N epoch(s)").

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::equivalents::{equivalents, fmt_significant};
use super::intensity::Resolved;
use super::predict::{EpochMark, EpochPrediction, predict_epochs, project_to_limit};
use crate::footprint::{Row, total_of};
use crate::measure::cpuset::{NOTE_COUNT, NOTE_LAYOUT, NOTE_WHOLE_NODE};
use crate::measure::explain;
use crate::units::{GramsCo2e, GramsPerKwh, JOULES_PER_KWH, Joules};

/// The epochs a job declared (`--carbon-epochs=N`) and those it has marked.
#[derive(Debug, Clone, Copy)]
pub struct EpochProgress<'a> {
    pub total_epochs: u32,
    /// carbontracker's `epochs_before_pred`.
    pub before_pred: u32,
    /// Where the first epoch began (usually the start of tracking, zero energy).
    pub start: EpochMark,
    pub marks: &'a [EpochMark],
}

impl EpochProgress<'_> {
    /// The prediction with every epoch so far (the live one, refined each epoch).
    pub fn latest(&self) -> Option<EpochPrediction> {
        predict_epochs(self.start, self.marks, self.total_epochs, self.before_pred)
    }

    /// The first prediction shown, after `before_pred` epochs: what the final
    /// summary holds against the actual figures.
    pub fn first(&self) -> Option<EpochPrediction> {
        let n = self.before_pred.max(1) as usize;
        predict_epochs(
            self.start,
            self.marks.get(..n)?,
            self.total_epochs,
            self.before_pred,
        )
    }
}

/// What a summary is made of.
#[derive(Debug, Clone, Copy)]
pub struct SummaryInput<'a> {
    pub job_id: &'a str,
    /// Footprint rows of the job (device rows; a total row among them is ignored
    /// and recomputed).
    pub rows: &'a [Row],
    /// Time since tracking started (live), or the run's length (final).
    pub elapsed: Duration,
    /// The job's time limit, `None` for unlimited or unknown.
    pub time_limit: Option<Duration>,
    pub pue: f64,
    pub intensity: &'a Resolved,
    pub epochs: Option<EpochProgress<'a>>,
    /// How the job's CPU share was found (`Slurm's core allocation …`), said
    /// once under the energy; `None` where not known (a summary made from
    /// rows alone).
    pub attribution: Option<&'a str>,
}

/// What an incomplete total means for the reader. Energy that was not
/// measured makes it a lower bound; a share attributed by CPU count or to the
/// whole node (no cpuset) is an approximation that usually overstates the
/// job's part of a shared node.
/// An estimate (`cpu_tdp=`) is neither: it is said as such.
fn incompleteness(rows: &[Row]) -> &'static str {
    let estimated = |r: &&Row| r.status.starts_with("estimated: ");
    let devices = || {
        rows.iter()
            .filter(|r| !r.is_total() && r.status != "ok")
            .filter(|r| !estimated(r))
    };
    let attribution = |r: &&Row| {
        r.status.starts_with("incomplete: ")
            && [NOTE_COUNT, NOTE_WHOLE_NODE, NOTE_LAYOUT]
                .iter()
                .any(|n| r.status.contains(n))
    };
    let missing = devices().any(|r| !attribution(&r));
    let any_estimate = rows.iter().filter(|r| !r.is_total()).any(|r| estimated(&r));
    match (missing, devices().any(|r| attribution(&r)), any_estimate) {
        (true, true, false) => "energy missing from some devices, CPU share approximate",
        (true, true, true) => {
            "energy missing from some devices, CPU share approximate, CPU energy estimated"
        }
        (true, false, false) => "a lower bound",
        (true, false, true) => "energy missing from some devices, CPU energy estimated",
        (false, true, false) => "CPU share approximate",
        (false, true, true) => "CPU share approximate, CPU energy estimated",
        (false, false, true) => "CPU energy estimated, not measured",
        (false, false, false) => "CPU share approximate",
    }
}

/// One note per kind of status the rows carry: the statuses of that kind,
/// the components that have them, and what it means and how an admin fixes
/// it ([`crate::measure::explain`]). The rows' statuses stay short; this is
/// where they are explained, once each, in the summary and the node's log.
pub fn notes(rows: &[Row]) -> Vec<Note> {
    let mut notes: Vec<Note> = Vec::new();
    for r in rows.iter().filter(|r| !r.is_total() && r.status != "ok") {
        let reason = r
            .status
            .split_once(": ")
            .map_or(r.status.as_str(), |(_, x)| x);
        let Some(text) = explain(reason) else {
            continue;
        };
        match notes.iter_mut().find(|n| n.text == text) {
            Some(n) => {
                if !n.statuses.contains(&r.status) {
                    n.statuses.push(r.status.clone());
                }
                if !n.components.contains(&r.component) {
                    n.components.push(r.component.clone());
                }
            }
            None => notes.push(Note {
                statuses: vec![r.status.clone()],
                components: vec![r.component.clone()],
                text,
            }),
        }
    }
    notes
}

/// See [`notes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub statuses: Vec<String>,
    pub components: Vec<String>,
    pub text: &'static str,
}

impl Note {
    /// Whether this note is about how the CPU share was attributed (said by
    /// the plugin when sampling starts).
    pub fn is_attribution(&self) -> bool {
        self.statuses.iter().any(|s| {
            [NOTE_COUNT, NOTE_WHOLE_NODE, NOTE_LAYOUT]
                .iter()
                .any(|n| s.contains(n))
        })
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.statuses.join("; "),
            self.components.join(", "),
            self.text
        )
    }
}

/// The notes under their own heading.
fn notes_block(s: &mut String, i: &SummaryInput) {
    let notes = notes(i.rows);
    if notes.is_empty() {
        return;
    }
    s.push('\n');
    let _ = writeln!(s, "Notes on the figures above:");
    for n in notes {
        let _ = writeln!(s, "  {n}");
    }
}

/// The line naming how the job's CPU share was found, when known.
fn attribution_line(s: &mut String, i: &SummaryInput) {
    if let Some(a) = i.attribution {
        let _ = writeln!(s, "CPU and DRAM share: {a}");
    }
}

/// The final summary of a footprint known only by its rows (joined from
/// segments or from several nodes): no epochs, the run's length and the
/// intensity taken from the total row.
pub fn render_final_from_rows(job_id: &str, pue: f64, rows: &[Row]) -> String {
    let total = rows.iter().find(|r| r.is_total());
    let intensity = Resolved {
        g_per_kwh: GramsPerKwh(total.and_then(|t| t.intensity_g_per_kwh).unwrap_or(0.0)),
        source: total
            .map(|t| t.intensity_source.clone())
            .unwrap_or_default(),
        note: None,
    };
    render_final(&SummaryInput {
        job_id,
        rows,
        elapsed: Duration::from_secs_f64(total.map_or(0.0, |t| t.duration_s)),
        time_limit: None,
        pue,
        intensity: &intensity,
        epochs: None,
        attribution: None,
    })
}

/// The live summary, as of `now`.
pub fn render_live(i: &SummaryInput, now: SystemTime) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "carbontrack: job {} (running; updated {})",
        i.job_id,
        humantime::format_rfc3339_seconds(now)
    );
    let limit = i
        .time_limit
        .map(|l| format!(" of a {} time limit", fmt_duration(l)))
        .unwrap_or_default();
    let _ = writeln!(s, "Elapsed: {}{limit}", fmt_duration(i.elapsed));
    s.push('\n');
    let total = energy_block(&mut s, i, "Energy so far");
    if let Some(w) = total.and_then(|e| e.over(i.elapsed)) {
        let _ = writeln!(s, "  average power {} W", fmt_significant(w.0, 3));
    }
    attribution_line(&mut s, i);
    if let Some(e) = total {
        let _ = writeln!(s, "CO2e so far: {}", fmt_grams(co2e(i, e)));
    }
    intensity_lines(&mut s, i);

    if let (Some(limit), Some(e)) = (i.time_limit, total) {
        s.push('\n');
        match project_to_limit(i.elapsed, e, limit) {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "Projected to the time limit ({}), at the average power so far:",
                    fmt_duration(limit)
                );
                consumption(&mut s, i, limit, p.projected_energy, false);
            }
            None => {
                let _ = writeln!(
                    s,
                    "Projection to the time limit: after the first {}.",
                    fmt_duration(
                        super::predict::MIN_ELAPSED_FOR_PROJECTION
                            .min(limit.mul_f64(super::predict::MIN_FRACTION_OF_LIMIT))
                    )
                );
            }
        }
    }
    if let Some(ep) = i.epochs {
        s.push('\n');
        match ep.latest() {
            Some(p) => prediction_block(&mut s, i, &p),
            None => {
                let _ = writeln!(
                    s,
                    "Prediction for {} epoch(s): after {} completed epoch(s) ({} so far; mark each with `carbontrack epoch`).",
                    ep.total_epochs,
                    ep.before_pred.max(1),
                    ep.marks.len()
                );
            }
        }
    }
    notes_block(&mut s, i);
    s
}

/// The final summary.
pub fn render_final(i: &SummaryInput) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "carbontrack: job {} (finished)", i.job_id);
    let total_row = total_of(i.rows);
    if let Some(t) = &total_row {
        let _ = writeln!(
            s,
            "Run: {} to {} ({}) on {}",
            t.start,
            t.end,
            fmt_duration(i.elapsed),
            nodes(i.rows)
        );
    }
    s.push('\n');
    let total = energy_block(&mut s, i, "Energy");
    attribution_line(&mut s, i);
    intensity_lines(&mut s, i);
    s.push('\n');
    match total {
        Some(e) => {
            let _ = writeln!(s, "Actual consumption:");
            consumption(&mut s, i, i.elapsed, e, true);
        }
        None => {
            let _ = writeln!(
                s,
                "Actual consumption: unavailable (nothing could be measured)."
            );
        }
    }
    if let Some(ep) = i.epochs {
        s.push('\n');
        match ep.first() {
            Some(first) => {
                let _ = writeln!(
                    s,
                    "Predicted against actual, for {} epoch(s):",
                    ep.total_epochs
                );
                let _ = writeln!(
                    s,
                    "  Predicted after {} epoch(s): Time: {}, Energy: {} kWh, CO2eq: {}",
                    first.epochs_done,
                    fmt_duration(first.predicted_time),
                    fmt_kwh(facility_kwh(i, first.predicted_energy)),
                    fmt_grams(co2e(i, first.predicted_energy))
                );
                let done = ep.marks.len();
                if let Some(last) = ep.marks.last() {
                    let time = last.at.saturating_sub(ep.start.at);
                    let energy = last.cumulative_energy - ep.start.cumulative_energy;
                    let _ = writeln!(
                        s,
                        "  Actual for {done} completed epoch(s): Time: {}, Energy: {} kWh, CO2eq: {}",
                        fmt_duration(time),
                        fmt_kwh(facility_kwh(i, energy)),
                        fmt_grams(co2e(i, energy))
                    );
                    if done as u32 == ep.total_epochs && first.predicted_energy.0 > 0.0 {
                        let _ = writeln!(
                            s,
                            "  The prediction's energy was {} the actual.",
                            fmt_error(first.predicted_energy.0, energy.0)
                        );
                    } else if (done as u32) < ep.total_epochs {
                        let _ = writeln!(
                            s,
                            "  Only {done} of {} epochs were completed.",
                            ep.total_epochs
                        );
                    }
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "No epoch prediction: {} of {} epoch(s) completed, {} needed.",
                    ep.marks.len(),
                    ep.total_epochs,
                    ep.before_pred.max(1)
                );
            }
        }
    }
    notes_block(&mut s, i);
    s
}

/// The per-component energy lines and the total; returns the measured total.
fn energy_block(s: &mut String, i: &SummaryInput, title: &str) -> Option<Joules> {
    let _ = writeln!(s, "{title} at the devices (before PUE), per component:");
    let devices: Vec<&Row> = i.rows.iter().filter(|r| !r.is_total()).collect();
    for comp in ["cpu", "dram", "gpu", "ane"] {
        let of: Vec<&&Row> = devices.iter().filter(|r| r.component == comp).collect();
        if of.is_empty() {
            continue;
        }
        let measured: Vec<f64> = of.iter().filter_map(|r| r.energy_j).collect();
        let lacking: Vec<String> = of
            .iter()
            .filter(|r| r.status != "ok")
            .map(|r| format!("{} {}", r.device, r.status))
            .collect();
        let n = of.len();
        let devs = if n == 1 { "device" } else { "devices" };
        if measured.is_empty() {
            let _ = writeln!(s, "  {comp:<5} unavailable ({})", lacking.join("; "));
        } else {
            let e: f64 = measured.iter().sum();
            let extra = if lacking.is_empty() {
                String::new()
            } else {
                format!("; {}", lacking.join("; "))
            };
            let _ = writeln!(
                s,
                "  {comp:<5} {} kWh ({n} {devs}{extra})",
                fmt_kwh(e / JOULES_PER_KWH)
            );
        }
    }
    let total = total_of(i.rows)?;
    match total.energy_j {
        Some(j) => {
            let note = if total.status == "ok" {
                String::new()
            } else {
                format!(" ({}; {})", total.status, incompleteness(i.rows))
            };
            let _ = writeln!(s, "  total {} kWh{note}", fmt_kwh(j / JOULES_PER_KWH));
            Some(Joules(j))
        }
        None => {
            let _ = writeln!(s, "  total unavailable");
            None
        }
    }
}

fn intensity_lines(s: &mut String, i: &SummaryInput) {
    let _ = writeln!(
        s,
        "PUE: {} (facility overhead applied to the energy above)",
        i.pue
    );
    let _ = writeln!(
        s,
        "Carbon intensity: {} gCO2e/kWh, {}",
        fmt_significant(i.intensity.g_per_kwh.0, 3),
        i.intensity.describe()
    );
}

/// carbontracker's block: Time, Energy (kWh, with PUE), CO2eq, equivalents.
fn consumption(s: &mut String, i: &SummaryInput, time: Duration, e: Joules, equivalents_too: bool) {
    let g = co2e(i, e);
    let _ = writeln!(s, "  Time: {}", fmt_duration(time));
    let _ = writeln!(
        s,
        "  Energy: {} kWh (with PUE {})",
        fmt_kwh(facility_kwh(i, e)),
        i.pue
    );
    let _ = writeln!(s, "  CO2eq: {}", fmt_grams(g));
    if equivalents_too {
        equivalents_lines(s, g);
    }
}

fn equivalents_lines(s: &mut String, g: GramsCo2e) {
    let _ = writeln!(s, "  This is equivalent to:");
    for e in equivalents(g) {
        let _ = writeln!(s, "    {}", e.line());
    }
}

fn prediction_block(s: &mut String, i: &SummaryInput, p: &EpochPrediction) {
    let _ = writeln!(
        s,
        "Predicted consumption for {} epoch(s) (mean of the {} completed epoch(s) x {}):",
        p.total_epochs, p.epochs_done, p.total_epochs
    );
    consumption(s, i, p.predicted_time, p.predicted_energy, true);
}

fn facility_kwh(i: &SummaryInput, e: Joules) -> f64 {
    super::facility_kwh(e, i.pue).0
}

fn co2e(i: &SummaryInput, e: Joules) -> GramsCo2e {
    super::co2e(e, i.pue, i.intensity.g_per_kwh)
}

fn nodes(rows: &[Row]) -> String {
    let mut n: Vec<&str> = rows
        .iter()
        .filter(|r| !r.is_total())
        .map(|r| r.node.as_str())
        .collect();
    n.sort_unstable();
    n.dedup();
    n.join(", ")
}

/// kWh to 3 significant figures (`0.158`, `0.000439`, `1234`).
pub fn fmt_kwh(kwh: f64) -> String {
    fmt_significant(kwh, 3)
}

/// A mass of CO2e in g, kg or t, 3 significant figures.
pub fn fmt_grams(g: GramsCo2e) -> String {
    let x = g.0;
    if x.abs() >= 1e6 {
        format!("{} t", fmt_significant(x / 1e6, 3))
    } else if x.abs() >= 1e3 {
        format!("{} kg", fmt_significant(x / 1e3, 3))
    } else {
        format!("{} g", fmt_significant(x, 3))
    }
}

/// `45s`, `2m 05s`, `1h 02m 03s`, `3d 04h 05m`: whole seconds, largest units first.
pub fn fmt_duration(d: Duration) -> String {
    let t = d.as_secs_f64().round() as u64;
    let (days, h, m, sec) = (t / 86_400, t / 3600 % 24, t / 60 % 60, t % 60);
    if days > 0 {
        format!("{days}d {h:02}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m {sec:02}s")
    } else if m > 0 {
        format!("{m}m {sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// `12% above` / `3% below` / `equal to`.
fn fmt_error(predicted: f64, actual: f64) -> String {
    if actual <= 0.0 {
        return "not comparable to".into();
    }
    let pct = 100.0 * (predicted - actual) / actual;
    if pct.abs() < 0.5 {
        "equal to".into()
    } else if pct > 0.0 {
        format!("{pct:.0}% above")
    } else {
        format!("{:.0}% below", -pct)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::footprint::{NodeFootprint, node_rows};
    use crate::measure::{Component, DeviceEnergy, Status};
    use crate::units::GramsPerKwh;

    fn world() -> Resolved {
        Resolved {
            g_per_kwh: GramsPerKwh(445.0),
            source: "world average (IEA 2024)".into(),
            note: None,
        }
    }

    fn rows(cpu_j: f64, gpu_j: Option<f64>) -> Vec<Row> {
        let mut devices = vec![DeviceEnergy {
            component: Component::Cpu,
            device: "package-0".into(),
            share: 0.5,
            energy: Some(Joules(cpu_j)),
            status: Status::Ok,
        }];
        devices.push(match gpu_j {
            Some(j) => DeviceEnergy {
                component: Component::Gpu,
                device: "GPU-aa".into(),
                share: 1.0,
                energy: Some(Joules(j)),
                status: Status::Ok,
            },
            None => DeviceEnergy::unavailable(Component::Gpu, "GPU-aa", "NVML not found"),
        });
        let start = UNIX_EPOCH + Duration::from_secs(1_714_521_600);
        let fp = NodeFootprint {
            job_id: "42".into(),
            node: "node1".into(),
            start,
            end: start + Duration::from_secs(3600),
            devices,
        };
        node_rows(&fp, 1.58, &world())
    }

    #[test]
    fn notes_explain_each_kind_of_status_once_under_their_own_heading() {
        let mut rows = rows(100.0, Some(50.0));
        for r in rows.iter_mut().filter(|r| r.component == "cpu") {
            r.status = format!("incomplete: {NOTE_WHOLE_NODE}");
        }
        let dram = rows[0].clone();
        rows.insert(
            1,
            Row {
                component: "dram".into(),
                ..dram
            },
        );
        let intensity = world();
        let input = SummaryInput {
            job_id: "9",
            rows: &rows,
            elapsed: Duration::from_secs(3600),
            time_limit: None,
            pue: 1.58,
            intensity: &intensity,
            epochs: None,
            attribution: Some("the whole node"),
        };
        let text = render_final(&input);
        assert_eq!(
            text.matches("Notes on the figures above:").count(),
            1,
            "{text}"
        );
        let note = format!(
            "  incomplete: {NOTE_WHOLE_NODE} (cpu, dram): {}",
            explain(NOTE_WHOLE_NODE).unwrap()
        );
        assert!(text.lines().any(|l| l == note), "{text}");
        assert_eq!(text.matches("ConstrainCores=yes").count(), 1, "{text}");
        assert!(
            text.contains("CPU and DRAM share: the whole node"),
            "{text}"
        );
        // All rows ok: no notes at all.
        let ok = super::tests::rows(100.0, Some(50.0));
        let text = render_final(&SummaryInput { rows: &ok, ..input });
        assert!(!text.contains("Notes"), "{text}");
    }

    #[test]
    fn an_incomplete_total_says_which_way_it_errs() {
        let attributed = |mut rows: Vec<Row>| {
            rows[0].status = format!("incomplete: {NOTE_WHOLE_NODE}");
            rows
        };
        let estimated = |mut rows: Vec<Row>| {
            rows[0].status = "estimated: TDP 100 W (cpu_tdp=100), CPU time".into();
            rows
        };
        for (rows, want) in [
            (rows(100.0, None), "a lower bound"),
            (attributed(rows(100.0, Some(50.0))), "CPU share approximate"),
            (
                attributed(rows(100.0, None)),
                "energy missing from some devices, CPU share approximate",
            ),
            // An estimate is no lower bound, and is said.
            (
                estimated(rows(100.0, Some(50.0))),
                "CPU energy estimated, not measured",
            ),
            (
                estimated(rows(100.0, None)),
                "energy missing from some devices, CPU energy estimated",
            ),
        ] {
            assert_eq!(incompleteness(&rows), want);
        }
    }

    fn mark(at: u64, e: f64) -> EpochMark {
        EpochMark {
            at: Duration::from_secs(at),
            cumulative_energy: Joules(e),
        }
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().map(str::trim).collect()
    }

    #[test]
    fn live_summary_key_lines() {
        // 600 s in: 36 kJ cpu + 144 kJ gpu = 180 kJ = 0.05 kWh; 300 W.
        let rows = rows(36_000.0, Some(144_000.0));
        let intensity = world();
        let marks = [mark(300, 90_000.0)];
        let input = SummaryInput {
            job_id: "42",
            rows: &rows,
            elapsed: Duration::from_secs(600),
            time_limit: Some(Duration::from_secs(3600)),
            pue: 1.58,
            intensity: &intensity,
            epochs: Some(EpochProgress {
                total_epochs: 10,
                before_pred: 1,
                start: mark(0, 0.0),
                marks: &marks,
            }),
            attribution: None,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_714_522_200);
        let text = render_live(&input, now);
        let l = lines(&text);
        for want in [
            "carbontrack: job 42 (running; updated 2024-05-01T00:10:00Z)",
            "Elapsed: 10m 00s of a 1h 00m 00s time limit",
            "cpu   0.0100 kWh (1 device)",
            "gpu   0.0400 kWh (1 device)",
            "total 0.0500 kWh",
            "average power 300 W",
            // 0.05 × 1.58 × 445 = 35.155 g
            "CO2e so far: 35.2 g",
            "PUE: 1.58 (facility overhead applied to the energy above)",
            "Carbon intensity: 445 gCO2e/kWh, world average (IEA 2024)",
            "Projected to the time limit (1h 00m 00s), at the average power so far:",
            // 0.3 kWh × 1.58 = 0.474 kWh; × 445 = 210.93 g
            "Energy: 0.474 kWh (with PUE 1.58)",
            "CO2eq: 211 g",
            "Predicted consumption for 10 epoch(s) (mean of the 1 completed epoch(s) x 10):",
            "Time: 50m 00s",
            // 900 kJ = 0.25 kWh × 1.58 = 0.395 kWh; × 445 = 175.775 g; / 106.8 = 1.65 km
            "Energy: 0.395 kWh (with PUE 1.58)",
            "CO2eq: 176 g",
            "This is equivalent to:",
            "1.65 km travelled by car (EEA 2024, new EU passenger cars)",
        ] {
            assert!(l.contains(&want), "missing `{want}` in:\n{text}");
        }
    }

    #[test]
    fn live_summary_before_any_prediction() {
        let rows = rows(1_000.0, None);
        let intensity = world();
        let input = SummaryInput {
            job_id: "7",
            rows: &rows,
            elapsed: Duration::from_secs(30),
            time_limit: Some(Duration::from_secs(7200)),
            pue: 1.58,
            intensity: &intensity,
            epochs: Some(EpochProgress {
                total_epochs: 5,
                before_pred: 2,
                start: mark(0, 0.0),
                marks: &[mark(20, 500.0)],
            }),
            attribution: None,
        };
        let text = render_live(&input, UNIX_EPOCH);
        let l = lines(&text);
        for want in [
            "gpu   unavailable (GPU-aa unavailable: NVML not found)",
            "total 0.000278 kWh (incomplete: 1 of 2 rows unavailable (gpu); a lower bound)",
            "Projection to the time limit: after the first 2m 00s.",
            "Prediction for 5 epoch(s): after 2 completed epoch(s) (1 so far; mark each with `carbontrack epoch`).",
        ] {
            assert!(l.contains(&want), "missing `{want}` in:\n{text}");
        }
        assert!(!text.contains("Predicted consumption"), "{text}");
    }

    #[test]
    fn final_summary_actual_against_predicted() {
        // Epoch 1: 300 s, 90 kJ; the four epochs: 1300 s, 400 kJ.
        let rows = rows(100_000.0, Some(320_000.0));
        let intensity = world();
        let marks = [
            mark(300, 90_000.0),
            mark(630, 190_000.0),
            mark(960, 295_000.0),
            mark(1300, 400_000.0),
        ];
        let input = SummaryInput {
            job_id: "42",
            rows: &rows,
            elapsed: Duration::from_secs(3600),
            time_limit: Some(Duration::from_secs(3600)),
            pue: 1.58,
            intensity: &intensity,
            epochs: Some(EpochProgress {
                total_epochs: 4,
                before_pred: 1,
                start: mark(0, 0.0),
                marks: &marks,
            }),
            attribution: None,
        };
        let text = render_final(&input);
        let l = lines(&text);
        for want in [
            "carbontrack: job 42 (finished)",
            "Run: 2024-05-01T00:00:00.000Z to 2024-05-01T01:00:00.000Z (1h 00m 00s) on node1",
            "total 0.117 kWh",
            "Actual consumption:",
            "Time: 1h 00m 00s",
            // 420 kJ × 1.58 / 3.6e6 = 0.18433 kWh; × 445 = 82.03 g; / 106.8 = 0.768 km
            "Energy: 0.184 kWh (with PUE 1.58)",
            "CO2eq: 82.0 g",
            "0.768 km travelled by car (EEA 2024, new EU passenger cars)",
            "Predicted against actual, for 4 epoch(s):",
            // 4 × 90 kJ = 360 kJ → 0.158 kWh, 70.3 g
            "Predicted after 1 epoch(s): Time: 20m 00s, Energy: 0.158 kWh, CO2eq: 70.3 g",
            // 400 kJ → 0.17556 kWh, 78.1 g
            "Actual for 4 completed epoch(s): Time: 21m 40s, Energy: 0.176 kWh, CO2eq: 78.1 g",
            "The prediction's energy was 10% below the actual.",
        ] {
            assert!(l.contains(&want), "missing `{want}` in:\n{text}");
        }
    }

    #[test]
    fn formats() {
        for (d, want) in [
            (0, "0s"),
            (45, "45s"),
            (125, "2m 05s"),
            (3723, "1h 02m 03s"),
            (273_900, "3d 04h 05m"),
        ] {
            assert_eq!(fmt_duration(Duration::from_secs(d)), want);
        }
        for (g, want) in [
            (0.0, "0 g"),
            (35.155, "35.2 g"),
            (1234.0, "1.23 kg"),
            (2.5e6, "2.50 t"),
        ] {
            assert_eq!(fmt_grams(GramsCo2e(g)), want);
        }
        assert_eq!(fmt_error(110.0, 100.0), "10% above");
        assert_eq!(fmt_error(90.0, 100.0), "10% below");
        assert_eq!(fmt_error(100.2, 100.0), "equal to");
    }
}
