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
        against_actual(&mut s, i, &ep);
    }
    notes_block(&mut s, i);
    s
}

/// The final summary's "predicted against actual" block. Like is set beside
/// like: the first prediction's mean epoch, times the `k` epochs actually
/// completed, beside the actual figures of those `k`; then, on a line of its
/// own, what it predicted for all `N` declared epochs. A run that stopped
/// after 4 of 10 epochs is not held against a 10-epoch prediction.
fn against_actual(s: &mut String, i: &SummaryInput, ep: &EpochProgress) {
    let done = u32::try_from(ep.marks.len()).unwrap_or(u32::MAX);
    let (Some(first), Some(last)) = (ep.first(), ep.marks.last()) else {
        let _ = writeln!(
            s,
            "No epoch prediction: {done} of {} epoch(s) completed, {} needed.",
            ep.total_epochs,
            ep.before_pred.max(1)
        );
        return;
    };
    let figures = |time: Duration, energy: Joules| {
        format!(
            "Time: {}, Energy: {} kWh, CO2eq: {}",
            fmt_duration(time),
            fmt_kwh(facility_kwh(i, energy)),
            fmt_grams(co2e(i, energy))
        )
    };
    let for_done = first.for_epochs(done);
    let _ = writeln!(
        s,
        "Predicted against actual, for the {done} completed epoch(s) of {}:",
        ep.total_epochs
    );
    let _ = writeln!(
        s,
        "  Predicted after {} epoch(s), for {done} epoch(s): {}",
        first.epochs_done,
        figures(for_done.predicted_time, for_done.predicted_energy)
    );
    let time = last.at.saturating_sub(ep.start.at);
    let energy = last.cumulative_energy - ep.start.cumulative_energy;
    let _ = writeln!(
        s,
        "  Actual for {done} completed epoch(s): {}",
        figures(time, energy)
    );
    if for_done.predicted_energy.0 > 0.0 {
        let _ = writeln!(
            s,
            "  The prediction's energy was {} the actual.",
            fmt_error(for_done.predicted_energy.0, energy.0)
        );
    }
    if done < ep.total_epochs {
        let _ = writeln!(
            s,
            "  Predicted after {} epoch(s), for all {} epoch(s): {}",
            first.epochs_done,
            ep.total_epochs,
            figures(first.predicted_time, first.predicted_energy)
        );
        let _ = writeln!(
            s,
            "  Only {done} of {} epochs were completed.",
            ep.total_epochs
        );
    } else if done > ep.total_epochs {
        let _ = writeln!(
            s,
            "  {done} epochs were marked, more than the {} declared (--carbon-epochs).",
            ep.total_epochs
        );
    }
}

/// carbontracker's "Predicted consumption for N epoch(s):" block, on its own,
/// as `carbontrack run --pid` prints it once `before_pred` epochs are done
/// (the Python API's `epoch_end`); `None` before then or without epochs.
pub fn render_predicted_block(i: &SummaryInput) -> Option<String> {
    let p = i.epochs?.first()?;
    let mut s = String::new();
    let _ = writeln!(s, "Predicted consumption for {} epoch(s):", p.total_epochs);
    consumption(&mut s, i, p.predicted_time, p.predicted_energy, true);
    let _ = writeln!(
        s,
        "  (the mean of the first {} epoch(s) x {}; an epoch runs from the end of the one before)",
        p.epochs_done, p.total_epochs
    );
    Some(s)
}

/// carbontracker's "Actual consumption for K epoch(s):" block: from the start
/// to the end of the last completed epoch; with no epoch completed,
/// "Actual consumption:" for the whole run. An incomplete total says so.
pub fn render_actual_block(i: &SummaryInput) -> String {
    let mut s = String::new();
    let total = total_of(i.rows);
    let Some(whole) = total.as_ref().and_then(|t| t.energy_j).map(Joules) else {
        let _ = writeln!(
            s,
            "Actual consumption: unavailable (nothing could be measured)."
        );
        return s;
    };
    let last = i
        .epochs
        .and_then(|ep| ep.marks.last().map(|m| (ep.start, *m, ep.marks.len())));
    match last {
        Some((start, m, done)) => {
            let _ = writeln!(s, "Actual consumption for {done} epoch(s):");
            let time = m.at.saturating_sub(start.at);
            consumption(
                &mut s,
                i,
                time,
                m.cumulative_energy - start.cumulative_energy,
                true,
            );
        }
        None => {
            let _ = writeln!(s, "Actual consumption:");
            consumption(&mut s, i, i.elapsed, whole, true);
        }
    }
    if let Some(t) = total.filter(|t| t.status != "ok") {
        let _ = writeln!(s, "  ({}; {})", t.status, incompleteness(i.rows));
    }
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
            "Predicted against actual, for the 4 completed epoch(s) of 4:",
            // 4 × 90 kJ = 360 kJ → 0.158 kWh, 70.3 g
            "Predicted after 1 epoch(s), for 4 epoch(s): Time: 20m 00s, Energy: 0.158 kWh, CO2eq: 70.3 g",
            // 400 kJ → 0.17556 kWh, 78.1 g
            "Actual for 4 completed epoch(s): Time: 21m 40s, Energy: 0.176 kWh, CO2eq: 78.1 g",
            "The prediction's energy was 10% below the actual.",
        ] {
            assert!(l.contains(&want), "missing `{want}` in:\n{text}");
        }
    }

    /// Like with like: the prediction for the epochs actually completed
    /// beside their actuals, and the prediction for all N on its own line;
    /// honest when no prediction was ever made.
    #[test]
    fn final_summary_sets_the_prediction_for_the_completed_epochs_beside_them() {
        let rows = rows(100_000.0, Some(320_000.0));
        let intensity = world();
        // Epochs of 300, 330, 330, 340 s and 90, 100, 105, 105 kJ.
        let marks = [
            mark(300, 90_000.0),
            mark(630, 190_000.0),
            mark(960, 295_000.0),
            mark(1300, 400_000.0),
        ];
        let for_four = "Predicted after 1 epoch(s), for 4 epoch(s): Time: 20m 00s, \
                        Energy: 0.158 kWh, CO2eq: 70.3 g";
        let actual_four = "Actual for 4 completed epoch(s): Time: 21m 40s, Energy: 0.176 kWh, \
                           CO2eq: 78.1 g";
        // (declared N, before_pred, marks, lines wanted, text not wanted)
        type Case<'a> = (u32, u32, &'a [EpochMark], Vec<&'a str>, Vec<&'a str>);
        let cases: [Case; 6] = [
            (
                10,
                1,
                &marks,
                vec![
                    "Predicted against actual, for the 4 completed epoch(s) of 10:",
                    for_four,
                    actual_four,
                    "The prediction's energy was 10% below the actual.",
                    // 10 × 90 kJ = 900 kJ → 0.395 kWh, 176 g; 10 × 300 s.
                    "Predicted after 1 epoch(s), for all 10 epoch(s): Time: 50m 00s, \
                     Energy: 0.395 kWh, CO2eq: 176 g",
                    "Only 4 of 10 epochs were completed.",
                ],
                vec!["for 10 epoch(s): Time", "No epoch prediction"],
            ),
            (
                4,
                1,
                &marks,
                vec![
                    "Predicted against actual, for the 4 completed epoch(s) of 4:",
                    for_four,
                    actual_four,
                ],
                vec!["for all", "Only"],
            ),
            (
                // After 2 epochs (mean 315 s, 95 kJ), 2 completed of 10.
                10,
                2,
                &marks[..2],
                vec![
                    // 2 × 95 kJ = 190 kJ → 0.0834 kWh, 37.1 g: the actual exactly.
                    "Predicted after 2 epoch(s), for 2 epoch(s): Time: 10m 30s, \
                     Energy: 0.0834 kWh, CO2eq: 37.1 g",
                    "Actual for 2 completed epoch(s): Time: 10m 30s, Energy: 0.0834 kWh, \
                     CO2eq: 37.1 g",
                    "The prediction's energy was equal to the actual.",
                    "Predicted after 2 epoch(s), for all 10 epoch(s): Time: 52m 30s, \
                     Energy: 0.417 kWh, CO2eq: 186 g",
                ],
                vec![],
            ),
            (
                10,
                1,
                &[],
                vec!["No epoch prediction: 0 of 10 epoch(s) completed, 1 needed."],
                vec!["Predicted", "Actual for"],
            ),
            (
                10,
                2,
                &marks[..1],
                vec!["No epoch prediction: 1 of 10 epoch(s) completed, 2 needed."],
                vec!["Predicted", "Actual for"],
            ),
            (
                3,
                1,
                &marks,
                vec![
                    for_four,
                    actual_four,
                    "4 epochs were marked, more than the 3 declared (--carbon-epochs).",
                ],
                vec!["for all", "Only"],
            ),
        ];
        for (total, before_pred, marks, want, not) in cases {
            let input = SummaryInput {
                job_id: "42",
                rows: &rows,
                elapsed: Duration::from_secs(3600),
                time_limit: None,
                pue: 1.58,
                intensity: &intensity,
                epochs: Some(EpochProgress {
                    total_epochs: total,
                    before_pred,
                    start: mark(0, 0.0),
                    marks,
                }),
                attribution: None,
            };
            let text = render_final(&input);
            let l = lines(&text);
            for w in want {
                assert!(
                    l.contains(&w),
                    "N={total} k={}: missing `{w}` in:\n{text}",
                    marks.len()
                );
            }
            for n in not {
                assert!(!text.contains(n), "N={total}: unexpected `{n}` in:\n{text}");
            }
        }
        // Epochs never declared: no prediction block at all.
        let input = SummaryInput {
            job_id: "42",
            rows: &rows,
            elapsed: Duration::from_secs(3600),
            time_limit: None,
            pue: 1.58,
            intensity: &intensity,
            epochs: None,
            attribution: None,
        };
        let text = render_final(&input);
        assert!(!text.contains("epoch"), "{text}");
    }

    /// The blocks `carbontrack run --pid` prints, in carbontracker's shape.
    #[test]
    fn carbontracker_blocks() {
        let rows = rows(100_000.0, Some(320_000.0));
        let intensity = world();
        let marks = [mark(300, 90_000.0), mark(630, 190_000.0)];
        let input = SummaryInput {
            job_id: "local",
            rows: &rows,
            elapsed: Duration::from_secs(3600),
            time_limit: None,
            pue: 1.58,
            intensity: &intensity,
            epochs: Some(EpochProgress {
                total_epochs: 4,
                before_pred: 2,
                start: mark(0, 0.0),
                marks: &marks,
            }),
            attribution: None,
        };
        // 4 × 95 kJ = 380 kJ → 0.16678 kWh, 74.2 g; 4 × 315 s = 21m 00s
        assert_eq!(
            lines(&render_predicted_block(&input).unwrap()),
            [
                "Predicted consumption for 4 epoch(s):",
                "Time: 21m 00s",
                "Energy: 0.167 kWh (with PUE 1.58)",
                "CO2eq: 74.2 g",
                "This is equivalent to:",
                "0.695 km travelled by car (EEA 2024, new EU passenger cars)",
                "0.0316 litres of petrol burnt (US EPA GHG Equivalencies, 8,887 g CO2/US gallon)",
                "(the mean of the first 2 epoch(s) x 4; an epoch runs from the end of the one before)",
            ]
        );
        // To the end of epoch 2: 190 kJ → 0.083389 kWh, 37.1 g, 10m 30s.
        let actual = render_actual_block(&input);
        let l = lines(&actual);
        assert_eq!(
            l[..4],
            [
                "Actual consumption for 2 epoch(s):",
                "Time: 10m 30s",
                "Energy: 0.0834 kWh (with PUE 1.58)",
                "CO2eq: 37.1 g"
            ]
        );
        // One epoch short of a prediction; no epoch at all: the whole run,
        // and an incomplete total says so.
        let one = SummaryInput {
            epochs: Some(EpochProgress {
                marks: &marks[..1],
                ..input.epochs.unwrap()
            }),
            ..input
        };
        assert_eq!(render_predicted_block(&one), None);
        let partial = self::rows(100_000.0, None);
        let none = SummaryInput {
            epochs: None,
            rows: &partial,
            ..input
        };
        let text = render_actual_block(&none);
        let l = lines(&text);
        assert_eq!(l[..2], ["Actual consumption:", "Time: 1h 00m 00s"]);
        assert_eq!(
            l.last(),
            Some(&"(incomplete: 1 of 2 rows unavailable (gpu); a lower bound)"),
            "{text}"
        );
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
