//! The footprint CSV: the contract other tools and users rely on (design.md,
//! "Footprint CSV"). One row per device per node, then one `total` row.
//!
//! Columns, in this order: `job_id,node,component,device,start,end,duration_s,
//! share,energy_j,pue,energy_kwh,intensity_g_per_kwh,co2e_g,status`, then
//! `intensity_source` (which source gave the intensity, and what was filled in).
//! Readers must accept further columns after these.
//!
//! What was not measured has empty energy fields and an `unavailable: …`
//! status: never 0. A total over rows some of which are unavailable or
//! incomplete is marked `incomplete: …`, naming them, so a sum that is a lower
//! bound never passes for the whole.

use std::io::{Read, Write};
use std::time::SystemTime;

use serde::{Deserialize, Serialize, Serializer};

use crate::carbon::intensity::Resolved;
use crate::measure::{DeviceEnergy, Status};
use crate::units::{JOULES_PER_KWH, Joules};

/// The `component` of the total row.
pub const TOTAL: &str = "total";

/// The `node` of a total row over several nodes.
pub const ALL_NODES: &str = "all";

/// One node's measurement of one job: the input the rows are made from.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFootprint {
    pub job_id: String,
    pub node: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub devices: Vec<DeviceEnergy>,
}

/// One CSV row. Optional fields are written empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub job_id: String,
    pub node: String,
    /// `cpu`, `dram`, `gpu` or `total`.
    pub component: String,
    /// `package-N`, a GPU UUID, or empty on the total row.
    pub device: String,
    /// RFC 3339 UTC with milliseconds.
    pub start: String,
    pub end: String,
    #[serde(serialize_with = "fixed3")]
    pub duration_s: f64,
    /// Empty on the total row.
    #[serde(serialize_with = "opt_share")]
    pub share: Option<f64>,
    #[serde(serialize_with = "opt_fixed3")]
    pub energy_j: Option<f64>,
    #[serde(serialize_with = "short")]
    pub pue: f64,
    #[serde(serialize_with = "opt_kwh")]
    pub energy_kwh: Option<f64>,
    #[serde(serialize_with = "opt_fixed3")]
    pub intensity_g_per_kwh: Option<f64>,
    #[serde(serialize_with = "opt_fixed3")]
    pub co2e_g: Option<f64>,
    pub status: String,
    #[serde(default)]
    pub intensity_source: String,
}

impl Row {
    pub fn is_total(&self) -> bool {
        self.component == TOTAL
    }

    /// The status as the measurement core's type (`None` if it is not one).
    pub fn parsed_status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }
}

/// The device rows of one node, then its total row.
pub fn node_rows(fp: &NodeFootprint, pue: f64, intensity: &Resolved) -> Vec<Row> {
    let mut rows = device_rows(fp, pue, intensity);
    let total = total_of(&rows);
    rows.extend(total);
    rows
}

/// One row per device, no total: what several nodes' files are merged from.
pub fn device_rows(fp: &NodeFootprint, pue: f64, intensity: &Resolved) -> Vec<Row> {
    let start = rfc3339(fp.start);
    let end = rfc3339(fp.end);
    let duration_s = fp
        .end
        .duration_since(fp.start)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    fp.devices
        .iter()
        .map(|d| {
            // `energy` is None exactly when unavailable; guard the other cases
            // so that a row never shows energy without an honest status.
            let (energy, status) = match (&d.energy, &d.status) {
                (Some(_), Status::Unavailable(r)) => (None, Status::Unavailable(r.clone())),
                (None, Status::Unavailable(r)) => (None, Status::Unavailable(r.clone())),
                (None, _) => (None, Status::Unavailable("no energy reported".into())),
                (Some(e), s) => (Some(*e), s.clone()),
            };
            let kwh = energy.map(|e| kwh(e, pue));
            Row {
                job_id: fp.job_id.clone(),
                node: fp.node.clone(),
                component: d.component.as_str().to_string(),
                device: d.device.clone(),
                start: start.clone(),
                end: end.clone(),
                duration_s,
                share: Some(d.share),
                energy_j: energy.map(|e| e.0),
                pue,
                energy_kwh: kwh,
                intensity_g_per_kwh: Some(intensity.g_per_kwh.0),
                co2e_g: kwh.map(|k| k * intensity.g_per_kwh.0),
                status: status.to_csv(),
                intensity_source: intensity.describe(),
            }
        })
        .collect()
}

fn kwh(e: Joules, pue: f64) -> f64 {
    e.0 * pue / JOULES_PER_KWH
}

/// The total row over device rows (any total rows among them are skipped), from
/// one node or several: used for a node's file and when the epilog merges
/// the nodes' rows into the job's. `None` for no device rows at all.
///
/// Energy, kWh and CO2e are sums of the measured rows; `pue` and the intensity
/// are the effective ones (kWh per joule, grams per kWh), which equal the
/// configured ones when all rows share them. The node is the common node, or
/// `all`; the span runs from the earliest start to the latest end.
pub fn total_of(rows: &[Row]) -> Option<Row> {
    let devices: Vec<&Row> = rows.iter().filter(|r| !r.is_total()).collect();
    let first = *devices.first()?;
    let measured: Vec<&Row> = devices
        .iter()
        .copied()
        .filter(|r| r.energy_j.is_some())
        .collect();
    let node = if devices.iter().all(|r| r.node == first.node) {
        first.node.clone()
    } else {
        ALL_NODES.to_string()
    };
    let start = devices
        .iter()
        .map(|r| r.start.as_str())
        .min_by(|a, b| cmp_time(a, b));
    let end = devices
        .iter()
        .map(|r| r.end.as_str())
        .max_by(|a, b| cmp_time(a, b));
    let (start, end) = (start.unwrap_or_default(), end.unwrap_or_default());
    let duration_s = match (
        humantime::parse_rfc3339_weak(start),
        humantime::parse_rfc3339_weak(end),
    ) {
        (Ok(a), Ok(b)) => b.duration_since(a).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        _ => devices.iter().map(|r| r.duration_s).fold(0.0, f64::max),
    };
    let lacking = lacking_clause(&devices);
    let sources: Vec<&str> = {
        let mut s: Vec<&str> = devices
            .iter()
            .map(|r| r.intensity_source.as_str())
            .collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let intensity_source = sources.join(" | ");

    if measured.is_empty() {
        return Some(Row {
            job_id: first.job_id.clone(),
            node,
            component: TOTAL.into(),
            device: String::new(),
            start: start.into(),
            end: end.into(),
            duration_s,
            share: None,
            energy_j: None,
            pue: first.pue,
            energy_kwh: None,
            intensity_g_per_kwh: first.intensity_g_per_kwh,
            co2e_g: None,
            status: format!("unavailable: nothing measured ({})", components(&devices)),
            intensity_source,
        });
    }
    let joules: f64 = measured.iter().filter_map(|r| r.energy_j).sum();
    // From the most precise columns: rows read back from a CSV carry
    // `co2e_g` rounded to 0.001 g, which for a short job is a visible part of
    // it, while joules, PUE and intensity keep their precision.
    let row_kwh = |r: &Row| match r.energy_j {
        Some(j) => j * r.pue / JOULES_PER_KWH,
        None => r.energy_kwh.unwrap_or(0.0),
    };
    let kwh: f64 = measured.iter().map(|r| row_kwh(r)).sum();
    let co2e: f64 = measured
        .iter()
        .map(|r| match r.intensity_g_per_kwh {
            Some(i) => row_kwh(r) * i,
            None => r.co2e_g.unwrap_or(0.0),
        })
        .sum();
    let pue = if joules > 0.0 {
        kwh * JOULES_PER_KWH / joules
    } else {
        first.pue
    };
    let intensity = if kwh > 0.0 {
        Some(co2e / kwh)
    } else {
        first.intensity_g_per_kwh
    };
    let status = if lacking.is_empty() {
        "ok".to_string()
    } else if devices
        .iter()
        .all(|r| r.status == "ok" || r.status.starts_with("estimated:"))
    {
        // Measured and modelled figures added: said by the total's prefix.
        format!("estimated: {lacking}")
    } else {
        format!("incomplete: {lacking}")
    };
    Some(Row {
        job_id: first.job_id.clone(),
        node,
        component: TOTAL.into(),
        device: String::new(),
        start: start.into(),
        end: end.into(),
        duration_s,
        share: None,
        energy_j: Some(joules),
        pue,
        energy_kwh: Some(kwh),
        intensity_g_per_kwh: intensity,
        co2e_g: Some(co2e),
        status,
        intensity_source,
    })
}

/// The components of `rows`, each once, in order: `cpu, dram, gpu`.
fn components(rows: &[&Row]) -> String {
    let mut comps: Vec<&str> = Vec::new();
    for r in rows {
        if !comps.contains(&r.component.as_str()) {
            comps.push(&r.component);
        }
    }
    comps.join(", ")
}

/// What a total inherits from its rows, in one short clause whatever the
/// number of rows: `2 of 5 rows incomplete (cpu, dram)`, `1 of 5 rows
/// unavailable (gpu), 2 incomplete (cpu, dram)`; empty when every row is
/// `ok`. The rows themselves say which device and why.
fn lacking_clause(devices: &[&Row]) -> String {
    let kinds = ["unavailable", "incomplete", "estimated"];
    let mut parts = Vec::new();
    for kind in kinds {
        // CPU rows inside a GPU module's figure (GH200) lack nothing.
        let rows: Vec<&&Row> = devices
            .iter()
            .filter(|r| r.status.split(':').next() == Some(kind))
            .filter(|r| !r.status.contains(crate::measure::INSIDE_GPU_MODULE))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let rows: Vec<&Row> = rows.into_iter().copied().collect();
        let count = if parts.is_empty() {
            let noun = if devices.len() == 1 { "row" } else { "rows" };
            format!("{} of {} {noun}", rows.len(), devices.len())
        } else {
            rows.len().to_string()
        };
        parts.push(format!("{count} {kind} ({})", components(&rows)));
    }
    // A status this code does not know is not `ok` either.
    let other = devices
        .iter()
        .filter(|r| r.status != "ok" && !kinds.contains(&r.status.split(':').next().unwrap_or("")))
        .count();
    if other > 0 {
        parts.push(format!("{other} not ok"));
    }
    parts.join(", ")
}

/// The components whose figures a total's status says are estimated
/// (`estimated: 1 of 3 rows estimated (cpu)`, `incomplete: … 1 estimated
/// (cpu)`): `cpu`, or `None` when nothing in it is estimated.
pub fn estimated_components(total_status: &str) -> Option<&str> {
    let (_, rest) = total_status.split_once(" estimated (")?;
    rest.split_once(')').map(|(c, _)| c)
}

/// Joins the footprints of successive sampling segments of one job on one
/// node (without an extern step, each step that samples leaves a segment):
/// one row per device over the whole span, energies and CO2e added, then a
/// fresh total. A device measured in one segment and not in another is
/// `incomplete`, since part of the run is missing for it.
pub fn merge_segments(earlier: &[Row], later: &[Row]) -> Vec<Row> {
    let mut merged: Vec<Row> = Vec::new();
    for r in earlier.iter().chain(later).filter(|r| !r.is_total()) {
        let Some(m) = merged
            .iter_mut()
            .find(|m| m.node == r.node && m.component == r.component && m.device == r.device)
        else {
            merged.push(r.clone());
            continue;
        };
        if cmp_time(&r.start, &m.start).is_lt() {
            m.start.clone_from(&r.start);
        }
        if cmp_time(&r.end, &m.end).is_gt() {
            m.end.clone_from(&r.end);
        }
        m.duration_s = match (
            humantime::parse_rfc3339_weak(&m.start),
            humantime::parse_rfc3339_weak(&m.end),
        ) {
            (Ok(a), Ok(b)) => b.duration_since(a).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            _ => m.duration_s + r.duration_s,
        };
        let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        let gap = m.energy_j.is_some() != r.energy_j.is_some();
        m.energy_j = add(m.energy_j, r.energy_j);
        m.energy_kwh = add(m.energy_kwh, r.energy_kwh);
        m.co2e_g = add(m.co2e_g, r.co2e_g);
        m.share = match (m.share, r.share) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // The intensity the added CO2e implies: energy-weighted over segments.
        if let (Some(kwh), Some(g)) = (m.energy_kwh, m.co2e_g)
            && kwh > 0.0
        {
            m.intensity_g_per_kwh = Some(g / kwh);
        }
        if m.intensity_source != r.intensity_source
            && !m.intensity_source.contains(&r.intensity_source)
        {
            m.intensity_source = format!("{} | {}", m.intensity_source, r.intensity_source);
        }
        m.status = match (m.status.as_str(), r.status.as_str()) {
            ("ok", "ok") => "ok".to_string(),
            _ if gap => {
                let why = [&m.status, &r.status]
                    .into_iter()
                    .find(|s| *s != "ok")
                    .cloned()
                    .unwrap_or_default();
                let why = why
                    .split_once(": ")
                    .map_or(why.as_str(), |(_, r)| r)
                    .to_string();
                let full = format!("incomplete: measured in part of the run only ({why})");
                if full.len() <= crate::measure::MAX_STATUS {
                    full
                } else {
                    "incomplete: measured in part of the run only".to_string()
                }
            }
            (a, "ok") => a.to_string(),
            (_, b) => b.to_string(),
        };
    }
    let total = total_of(&merged);
    merged.extend(total);
    merged
}

fn cmp_time(a: &str, b: &str) -> std::cmp::Ordering {
    match (
        humantime::parse_rfc3339_weak(a),
        humantime::parse_rfc3339_weak(b),
    ) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// RFC 3339 UTC with milliseconds, as the CSV writes times.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A CSV that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("footprint CSV: {0}")]
pub struct CsvError(#[from] csv::Error);

/// Writes the header and the rows.
pub fn write_csv<W: Write>(w: W, rows: &[Row]) -> Result<(), CsvError> {
    let mut wr = csv::WriterBuilder::new().has_headers(true).from_writer(w);
    if rows.is_empty() {
        wr.write_record(COLUMNS)?;
    }
    for r in rows {
        wr.serialize(r)?;
    }
    wr.flush().map_err(csv::Error::from)?;
    Ok(())
}

/// The columns in order, as the header names them.
pub const COLUMNS: [&str; 15] = [
    "job_id",
    "node",
    "component",
    "device",
    "start",
    "end",
    "duration_s",
    "share",
    "energy_j",
    "pue",
    "energy_kwh",
    "intensity_g_per_kwh",
    "co2e_g",
    "status",
    "intensity_source",
];

/// Reads rows back by column name, so columns added after the contract's (by
/// a later version) are ignored, and a file without `intensity_source` reads.
pub fn read_csv<R: Read>(r: R) -> Result<Vec<Row>, CsvError> {
    let mut rd = csv::ReaderBuilder::new().flexible(true).from_reader(r);
    rd.deserialize()
        .map(|row| row.map_err(CsvError::from))
        .collect()
}

// Number formats: energy to the millijoule, kWh to 6 significant figures (a
// short job's kWh is a small number), grams to the milligram, share to 6
// decimals (cores/package cores), PUE as given.

fn fixed3<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{x:.3}"))
}

fn opt_fixed3<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match x {
        Some(x) => fixed3(x, s),
        None => s.serialize_str(""),
    }
}

fn opt_share<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match x {
        Some(x) => s.serialize_str(&trim_zeros(format!("{x:.6}"))),
        None => s.serialize_str(""),
    }
}

fn short<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&trim_zeros(format!("{x:.6}")))
}

fn opt_kwh<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match x {
        Some(x) => s.serialize_str(&fmt_kwh(*x)),
        None => s.serialize_str(""),
    }
}

/// kWh with at least 6 significant figures and at least 6 decimals, in plain
/// notation (`0.000438889`, `12.345679`, `0.000000`).
pub fn fmt_kwh(x: f64) -> String {
    let decimals = if x == 0.0 {
        6
    } else {
        (5 - x.abs().log10().floor() as i32).clamp(6, 15) as usize
    };
    format!("{x:.decimals$}")
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        let t = s.trim_end_matches('0').trim_end_matches('.');
        t.to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_total_of_read_back_rows_keeps_the_precision_of_joules_and_intensity() {
        // Seven small rows whose co2e_g, rounded to 0.001 g in the file, would
        // add up to a visibly wrong total.
        let rows: Vec<Row> = (0..7)
            .map(|i| Row {
                job_id: "1".into(),
                node: format!("n{}", i % 2),
                component: "gpu".into(),
                device: format!("GPU-{i}"),
                start: "2026-01-01T00:00:00Z".into(),
                end: "2026-01-01T00:00:10Z".into(),
                duration_s: 10.0,
                share: Some(1.0),
                energy_j: Some(333.333),
                pue: 1.5,
                energy_kwh: Some(0.000138889),
                intensity_g_per_kwh: Some(400.0),
                co2e_g: Some(0.056),
                status: "ok".into(),
                intensity_source: "fixed by site".into(),
            })
            .collect();
        let mut csv = Vec::new();
        write_csv(&mut csv, &rows).unwrap();
        let back = read_csv(csv.as_slice()).unwrap();
        let t = total_of(&back).unwrap();
        let exact_kwh = 7.0 * 333.333 * 1.5 / 3.6e6;
        assert!((t.energy_kwh.unwrap() - exact_kwh).abs() < 1e-12, "{t:?}");
        assert!(
            (t.co2e_g.unwrap() - exact_kwh * 400.0).abs() < 1e-9,
            "{t:?}"
        );
        assert!(
            (t.intensity_g_per_kwh.unwrap() - 400.0).abs() < 1e-9,
            "{t:?}"
        );
    }

    #[test]
    fn segments_merge_into_one_row_per_device() {
        let row = |start: &str, end: &str, dev: &str, e: Option<f64>, status: &str| Row {
            job_id: "9".into(),
            node: "n1".into(),
            component: "cpu".into(),
            device: dev.into(),
            start: start.into(),
            end: end.into(),
            duration_s: 0.0,
            share: Some(0.5),
            energy_j: e,
            pue: 1.5,
            energy_kwh: e.map(|e| e * 1.5 / 3.6e6),
            intensity_g_per_kwh: Some(100.0),
            co2e_g: e.map(|e| e * 1.5 / 3.6e6 * 100.0),
            status: status.into(),
            intensity_source: "fixed by site".into(),
        };
        let a = [row(
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:01:00Z",
            "package-0",
            Some(600.0),
            "ok",
        )];
        let b = [
            row(
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:03:00Z",
                "package-0",
                Some(1200.0),
                "ok",
            ),
            row(
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:03:00Z",
                "package-1",
                None,
                "unavailable: gone",
            ),
        ];
        let m = merge_segments(&a, &b);
        assert_eq!(m.len(), 3, "{m:#?}");
        assert_eq!(m[0].energy_j, Some(1800.0));
        assert_eq!(
            (m[0].start.as_str(), m[0].end.as_str()),
            ("2026-01-01T00:00:00Z", "2026-01-01T00:03:00Z")
        );
        assert_eq!(m[0].duration_s, 180.0);
        assert!((m[0].co2e_g.unwrap() - 1800.0 * 1.5 / 3.6e6 * 100.0).abs() < 1e-9);
        assert_eq!(m[0].status, "ok");
        assert_eq!(m[1].energy_j, None);
        assert!(m[2].is_total());
        assert_eq!(m[2].energy_j, Some(1800.0));
        assert!(m[2].status.starts_with("incomplete"), "{}", m[2].status);

        // A device measured in one segment only is incomplete, not silently whole.
        let c = [row(
            "2026-01-01T00:03:00Z",
            "2026-01-01T00:04:00Z",
            "package-1",
            Some(60.0),
            "ok",
        )];
        let m2 = merge_segments(&m, &c);
        let p1 = m2.iter().find(|r| r.device == "package-1").unwrap();
        assert_eq!(p1.energy_j, Some(60.0));
        assert!(
            p1.status
                .starts_with("incomplete: measured in part of the run only"),
            "{}",
            p1.status
        );
    }

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::measure::Component;
    use crate::units::GramsPerKwh;

    fn at(s: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_714_521_600 + s) + Duration::from_millis(ms)
    }

    fn dev(c: Component, d: &str, share: f64, j: Option<f64>, status: Status) -> DeviceEnergy {
        DeviceEnergy {
            component: c,
            device: d.into(),
            share,
            energy: j.map(Joules),
            status,
        }
    }

    fn intensity() -> Resolved {
        Resolved {
            g_per_kwh: GramsPerKwh(445.0),
            source: "world average (IEA 2024)".into(),
            note: None,
        }
    }

    fn node(name: &str, devices: Vec<DeviceEnergy>) -> NodeFootprint {
        NodeFootprint {
            job_id: "42".into(),
            node: name.into(),
            start: at(0, 250),
            end: at(3600, 750),
            devices,
        }
    }

    fn csv_text(rows: &[Row]) -> String {
        let mut out = Vec::new();
        write_csv(&mut out, rows).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn header_is_the_contract() {
        let text = csv_text(&[]);
        assert_eq!(
            text.lines().next().unwrap(),
            "job_id,node,component,device,start,end,duration_s,share,energy_j,pue,energy_kwh,intensity_g_per_kwh,co2e_g,status,intensity_source"
        );
        let fp = node(
            "n1",
            vec![dev(Component::Gpu, "GPU-a", 1.0, Some(1.0), Status::Ok)],
        );
        let text = csv_text(&node_rows(&fp, 1.58, &intensity()));
        assert_eq!(text.lines().next().unwrap(), COLUMNS.join(","));
    }

    #[test]
    fn rows_units_and_rounding() {
        let fp = node(
            "n1",
            vec![
                dev(
                    Component::Cpu,
                    "package-0",
                    0.25,
                    Some(360_000.0),
                    Status::Ok,
                ),
                dev(
                    Component::Dram,
                    "package-0",
                    0.25,
                    Some(1234.56789),
                    Status::Ok,
                ),
                dev(Component::Gpu, "GPU-1b2c", 1.0, Some(1.0), Status::Ok),
                dev(
                    Component::Cpu,
                    "package-1",
                    1.0 / 3.0,
                    Some(0.0),
                    Status::Ok,
                ),
            ],
        );
        let text = csv_text(&node_rows(&fp, 1.58, &intensity()));
        let lines: Vec<&str> = text.lines().collect();
        // 360 kJ = 0.1 kWh at the devices; ×1.58 = 0.158 kWh; ×445 = 70.31 g.
        assert_eq!(
            lines[1],
            "42,n1,cpu,package-0,2024-05-01T00:00:00.250Z,2024-05-01T01:00:00.750Z,3600.500,0.25,360000.000,1.58,0.158000,445.000,70.310,ok,world average (IEA 2024)"
        );
        // 1234.56789 J: 3 decimals; ×1.58/3.6e6 = 0.000541838 kWh (6 significant).
        assert!(
            lines[2].contains(",1234.568,1.58,0.000541838,445.000,0.241,ok,"),
            "{}",
            lines[2]
        );
        // 1 J: 4.38889e-7 kWh, still 6 significant, no exponent; 0.000195 g.
        assert!(
            lines[3].contains(",1.000,1.58,0.000000438889,445.000,0.000,ok,"),
            "{}",
            lines[3]
        );
        // A measured zero is a real 0, with share 1/3 to 6 decimals.
        assert!(
            lines[4].contains(",0.333333,0.000,1.58,0.000000,445.000,0.000,ok,"),
            "{}",
            lines[4]
        );
        // Total: sums, node kept for a single node, empty device and share.
        let want_kwh = (360_000.0 + 1234.56789 + 1.0) * 1.58 / 3.6e6;
        assert!(
            lines[5].starts_with(&format!(
                "42,n1,total,,2024-05-01T00:00:00.250Z,2024-05-01T01:00:00.750Z,3600.500,,361235.568,1.58,{},445.000,",
                fmt_kwh(want_kwh)
            )),
            "{}",
            lines[5]
        );
        assert!(
            lines[5].ends_with(",ok,world average (IEA 2024)"),
            "{}",
            lines[5]
        );
    }

    #[test]
    fn unavailable_is_empty_never_zero_and_makes_the_total_incomplete() {
        let fp = node(
            "n1",
            vec![
                dev(Component::Cpu, "package-0", 0.5, Some(7200.0), Status::Ok),
                DeviceEnergy::unavailable(Component::Gpu, "GPU-x", "NVML not found"),
                dev(
                    Component::Dram,
                    "package-0",
                    0.5,
                    Some(100.0),
                    Status::Incomplete("counter lost at 12:00".into()),
                ),
            ],
        );
        let rows = node_rows(&fp, 1.5, &intensity());
        let text = csv_text(&rows);
        let gpu = text.lines().nth(2).unwrap();
        assert!(
            gpu.contains(",GPU-x,")
                && gpu.contains(",0,,1.5,,445.000,,unavailable: NVML not found,"),
            "{gpu}"
        );
        let total = &rows[3];
        assert_eq!(total.energy_j, Some(7300.0));
        assert_eq!(
            total.status,
            "incomplete: 1 of 3 rows unavailable (gpu), 1 incomplete (dram)"
        );
        // Energy without a status claiming it is never dropped silently, and a
        // device with no energy but an `ok` status is not passed off as 0.
        let fp = node(
            "n1",
            vec![dev(Component::Gpu, "GPU-y", 1.0, None, Status::Ok)],
        );
        let rows = node_rows(&fp, 1.5, &intensity());
        assert_eq!(rows[0].energy_j, None);
        assert_eq!(rows[0].status, "unavailable: no energy reported");
        assert_eq!(rows[1].energy_j, None);
        assert_eq!(rows[1].co2e_g, None);
        assert_eq!(rows[1].status, "unavailable: nothing measured (gpu)");
    }

    #[test]
    fn the_total_status_stays_short_with_many_gpus() {
        let mut devices = vec![
            dev(
                Component::Cpu,
                "package-0",
                0.5,
                Some(10.0),
                Status::Incomplete(crate::measure::cpuset::NOTE_COUNT.into()),
            ),
            dev(
                Component::Dram,
                "package-0",
                0.5,
                Some(1.0),
                Status::Incomplete(crate::measure::cpuset::NOTE_COUNT.into()),
            ),
        ];
        for i in 0..64 {
            devices.push(dev(
                Component::Gpu,
                &format!("GPU-{i:08}-1111-2222-3333-444455556666"),
                1.0,
                Some(100.0),
                Status::Incomplete("GPU 3 stopped answering at 2026-01-01T00:00:00Z".into()),
            ));
        }
        let rows = node_rows(&node("n1", devices), 1.5, &intensity());
        let total = rows.last().unwrap();
        assert_eq!(
            total.status,
            "incomplete: 66 of 66 rows incomplete (cpu, dram, gpu)"
        );
        for r in &rows {
            assert!(r.status.len() <= crate::measure::MAX_STATUS, "{}", r.status);
        }
    }

    #[test]
    fn round_trip_and_tolerant_reader() {
        let fp = node(
            "n1",
            vec![
                dev(Component::Gpu, "GPU-a,b", 1.0, Some(3600.0), Status::Ok),
                DeviceEnergy::unavailable(Component::Cpu, "package-0", "energy_uj unreadable"),
            ],
        );
        let rows = node_rows(&fp, 1.58, &intensity());
        let back = read_csv(csv_text(&rows).as_bytes()).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].device, "GPU-a,b");
        assert_eq!(back[0].energy_j, Some(3600.0));
        assert_eq!(back[1].energy_j, None);
        assert_eq!(
            back[1].parsed_status(),
            Some(Status::Unavailable("energy_uj unreadable".into()))
        );
        assert!(back[2].is_total());

        // A later version's extra column, and an older file without intensity_source.
        let text = "job_id,node,component,device,start,end,duration_s,share,energy_j,pue,energy_kwh,intensity_g_per_kwh,co2e_g,status,intensity_source,future\n\
                    7,n,gpu,GPU-a,2024-05-01T00:00:00.000Z,2024-05-01T00:00:01.000Z,1.000,1,5.000,1.58,0.000002,445.000,0.001,ok,x,extra\n";
        let r = read_csv(text.as_bytes()).unwrap();
        assert_eq!(r[0].energy_j, Some(5.0));
        let text = "job_id,node,component,device,start,end,duration_s,share,energy_j,pue,energy_kwh,intensity_g_per_kwh,co2e_g,status\n\
                    7,n,gpu,GPU-a,2024-05-01T00:00:00.000Z,2024-05-01T00:00:01.000Z,1.000,1,,1.58,,445.000,,unavailable: x\n";
        let r = read_csv(text.as_bytes()).unwrap();
        assert_eq!((r[0].energy_j, r[0].intensity_source.as_str()), (None, ""));
    }

    #[test]
    fn merging_nodes_into_one_total() {
        let a = NodeFootprint {
            start: at(10, 0),
            end: at(110, 0),
            ..node(
                "n1",
                vec![dev(Component::Gpu, "GPU-a", 1.0, Some(1000.0), Status::Ok)],
            )
        };
        let b = NodeFootprint {
            start: at(5, 0),
            end: at(100, 0),
            ..node(
                "n2",
                vec![dev(Component::Gpu, "GPU-b", 1.0, Some(3000.0), Status::Ok)],
            )
        };
        let other = Resolved {
            g_per_kwh: GramsPerKwh(100.0),
            source: "fixed by site".into(),
            note: None,
        };
        let mut rows = node_rows(&a, 1.2, &intensity());
        rows.extend(node_rows(&b, 1.2, &other));
        let t = total_of(&rows).unwrap();
        assert_eq!(t.node, ALL_NODES);
        assert_eq!(t.energy_j, Some(4000.0));
        assert_eq!(
            (t.start.as_str(), t.end.as_str()),
            ("2024-05-01T00:00:05.000Z", "2024-05-01T00:01:50.000Z")
        );
        assert_eq!(t.duration_s, 105.0);
        let kwh = 4000.0 * 1.2 / 3.6e6;
        assert!((t.energy_kwh.unwrap() - kwh).abs() < 1e-15);
        assert!((t.pue - 1.2).abs() < 1e-12);
        let g = 1000.0 * 1.2 / 3.6e6 * 445.0 + 3000.0 * 1.2 / 3.6e6 * 100.0;
        assert!((t.co2e_g.unwrap() - g).abs() < 1e-12);
        assert!((t.intensity_g_per_kwh.unwrap() - g / kwh).abs() < 1e-9);
        assert_eq!(
            t.intensity_source,
            "fixed by site | world average (IEA 2024)"
        );
        assert_eq!(total_of(&[]), None);
    }

    #[test]
    fn kwh_format() {
        for (x, want) in [
            (0.0, "0.000000"),
            (0.158, "0.158000"),
            (12.3456789, "12.345679"),
            (0.000438889, "0.000438889"),
            (1234.5678912, "1234.567891"),
        ] {
            assert_eq!(fmt_kwh(x), want, "{x}");
        }
    }
}
