//! Where the carbon intensity of a job's electricity comes from, and the one
//! figure a job gets from it.
//!
//! Sources, as `intensity=` names them:
//! - a number: a fixed gCO2e/kWh the site chose (its supplier's contract mix);
//! - a zone code (`DK`, `us`): that country's annual average from
//!   [`super::zones`] (OWID);
//! - `file:/path.csv`: hourly `timestamp,g_per_kwh` rows a site refreshes (from
//!   cron, say); the job's energy is weighted hour by hour over its run;
//! - `electricitymaps:ZONE`: the ElectricityMaps hourly history, fetched by the
//!   epilog only (see [`super::live`]); while the job runs, and whenever the
//!   live source fails, the fallback is used;
//! - nothing: the world average, 445 gCO2e/kWh (IEA 2024).
//!
//! Precedence and fallbacks: the configured source is used for every hour it
//! covers; hours it does not cover (missing rows, an unreadable file, a failed
//! or not-yet-run live query) use the fallback (`intensity_fallback=`, a number
//! or a zone; by default the zone of an `electricitymaps:` zone when the table
//! has it, else the world average). The figure's [`Resolved::source`] and
//! [`Resolved::note`] say which source gave it and what was filled in, and both
//! go into the CSV's `intensity_source` column and the summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::constants::{WORLD_AVERAGE_G_PER_KWH, WORLD_AVERAGE_SOURCE};
use super::zones;
use crate::units::{GramsPerKwh, Joules};

/// Highest intensity accepted anywhere (the dirtiest grids are near 1000).
pub const MAX_G_PER_KWH: f64 = 5000.0;

/// Seconds in an hour, the resolution of hourly intensity data.
const HOUR: i64 = 3600;

/// The configured source of carbon intensity (`intensity=` in plugstack.conf).
#[derive(Debug, Clone, PartialEq)]
pub enum IntensitySpec {
    /// Nothing configured: the world average.
    WorldAverage,
    /// A fixed figure the site chose.
    Fixed(GramsPerKwh),
    /// A zone's annual average from the shipped table (canonical upper case).
    Zone(String),
    /// A site-maintained CSV of hourly `timestamp,g_per_kwh` rows.
    File(PathBuf),
    /// ElectricityMaps' hourly history for this zone (their zone key, upper
    /// case, e.g. `DK-DK1`), queried by the epilog.
    ElectricityMaps(String),
}

impl IntensitySpec {
    pub fn parse(v: &str) -> Result<IntensitySpec, String> {
        let v = v.trim();
        if let Some(p) = v.strip_prefix("file:") {
            return if p.starts_with('/') {
                Ok(IntensitySpec::File(PathBuf::from(p)))
            } else {
                Err(format!("`{p}` is not an absolute path"))
            };
        }
        if let Some(z) = v.strip_prefix("electricitymaps:") {
            let ok = !z.is_empty()
                && z.len() <= 32
                && z.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            return if ok {
                Ok(IntensitySpec::ElectricityMaps(z.to_ascii_uppercase()))
            } else {
                Err(format!(
                    "`{z}` is not an ElectricityMaps zone key such as DK-DK1"
                ))
            };
        }
        if let Ok(g) = v.parse::<f64>() {
            return if (0.0..=MAX_G_PER_KWH).contains(&g) {
                Ok(IntensitySpec::Fixed(GramsPerKwh(g)))
            } else {
                Err(format!(
                    "{g} gCO2e/kWh is out of range (0 to {MAX_G_PER_KWH})"
                ))
            };
        }
        if v.len() == 2 && v.chars().all(|c| c.is_ascii_alphabetic()) {
            return match zones::zone(v) {
                Some(z) => Ok(IntensitySpec::Zone(z.code.to_string())),
                None => Err(format!(
                    "zone `{v}` is not in the shipped table; give a number or file:/path instead"
                )),
            };
        }
        Err(format!(
            "`{v}` is not a number, a known zone code, file:/path or electricitymaps:ZONE"
        ))
    }

    /// Parses `intensity_fallback=`: only sources that cannot fail (a number, a
    /// zone, or `world`).
    pub fn parse_fallback(v: &str) -> Result<IntensitySpec, String> {
        if v.trim() == "world" {
            return Ok(IntensitySpec::WorldAverage);
        }
        match IntensitySpec::parse(v)? {
            s @ (IntensitySpec::Fixed(_) | IntensitySpec::Zone(_)) => Ok(s),
            _ => Err(format!(
                "`{v}` can fail itself; a fallback is a number, a zone or world"
            )),
        }
    }

    /// The figure of a source that needs no data: a number, a zone, the world
    /// average. `None` for files and live sources.
    pub fn constant(&self) -> Option<Resolved> {
        let (g, source) = match self {
            IntensitySpec::WorldAverage => (
                GramsPerKwh(WORLD_AVERAGE_G_PER_KWH),
                WORLD_AVERAGE_SOURCE.to_string(),
            ),
            IntensitySpec::Fixed(g) => (*g, "fixed by site".to_string()),
            IntensitySpec::Zone(code) => {
                let z = zones::zone(code)?;
                (GramsPerKwh(z.g_per_kwh), z.source())
            }
            IntensitySpec::File(_) | IntensitySpec::ElectricityMaps(_) => return None,
        };
        Some(Resolved {
            g_per_kwh: g,
            source,
            note: None,
        })
    }

    /// The fallback used when nothing was configured for it: the country of
    /// an ElectricityMaps zone (`DK-DK1` -> `DK`) when the table has it, else the
    /// world average.
    pub fn default_fallback(&self) -> IntensitySpec {
        if let IntensitySpec::ElectricityMaps(z) = self
            && let Some(zone) = z.get(..2).and_then(zones::zone)
        {
            return IntensitySpec::Zone(zone.code.to_string());
        }
        IntensitySpec::WorldAverage
    }
}

/// The intensity a job's footprint uses, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub g_per_kwh: GramsPerKwh,
    /// e.g. `fixed by site`, `zone DK annual average (OWID 2021)`,
    /// `file /etc/x.csv hourly`, `world average (IEA 2024)`.
    pub source: String,
    /// What was filled in or went wrong, e.g. `2 of 5 hours missing (...)`.
    pub note: Option<String>,
}

impl Resolved {
    /// Source and note in one line, for the CSV's `intensity_source` column.
    pub fn describe(&self) -> String {
        match &self.note {
            Some(n) => format!("{}; {n}", self.source),
            None => self.source.clone(),
        }
    }
}

/// One span of the sampler's timeline: the job's energy from `.0` to `.1`.
pub type EnergySpan = (SystemTime, SystemTime, Joules);

/// Resolves the configured source for a job that ran over `window` and used
/// energy as `energy_by_time` says. Reads a `file:` source; never queries the
/// live source (that is [`super::live::resolve_live`], for the epilog): an
/// `electricitymaps:` spec gives its fallback here, with a note.
///
/// `fallback` must be a constant source (see [`IntensitySpec::parse_fallback`]);
/// anything else is treated as the world average.
pub fn resolve(
    spec: &IntensitySpec,
    fallback: &IntensitySpec,
    window: (SystemTime, SystemTime),
    energy_by_time: &[EnergySpan],
) -> Resolved {
    if let Some(r) = spec.constant() {
        return r;
    }
    let fb = constant_or_world(fallback);
    match spec {
        IntensitySpec::File(path) => resolve_read(
            path,
            read_hourly_file(path).map_err(|e| e.to_string()).as_ref(),
            fallback,
            window,
            energy_by_time,
        ),
        IntensitySpec::ElectricityMaps(zone) => Resolved {
            note: Some(format!(
                "ElectricityMaps {zone} is queried by the epilog only; so far {}",
                fb.source
            )),
            ..fb
        },
        _ => fb,
    }
}

/// An hourly file's figure from the table read from it (or why it could not
/// be read), without reading it again: a tracked run reads its file once,
/// off slurmstepd's main thread, where a file on a mount that stopped
/// answering would hang the step.
pub fn resolve_read(
    path: &Path,
    table: Result<&HourTable, &String>,
    fallback: &IntensitySpec,
    window: (SystemTime, SystemTime),
    energy_by_time: &[EnergySpan],
) -> Resolved {
    let fb = constant_or_world(fallback);
    match table {
        Ok(table) => weigh(
            table,
            &hour_weights(window, energy_by_time),
            &fb,
            format!("file {} hourly", path.display()),
        ),
        Err(e) => Resolved {
            note: Some(format!("{e}; used {}", fb.source)),
            ..fb
        },
    }
}

/// A constant source's figure, or the world average.
pub(crate) fn constant_or_world(spec: &IntensitySpec) -> Resolved {
    spec.constant().unwrap_or_else(|| {
        IntensitySpec::WorldAverage
            .constant()
            .expect("the world average is a constant")
    })
}

/// Hourly intensity, keyed by the hour's index (Unix seconds / 3600, UTC).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourTable(pub BTreeMap<i64, f64>);

/// A bad intensity file; the message names the file, the line and the fix.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("intensity file {0}")]
    Refused(String),
    #[error("intensity file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "intensity file {path} line {line}: {problem} (expected `timestamp,g_per_kwh` with an RFC 3339 UTC time or Unix seconds)"
    )]
    Line {
        path: String,
        line: usize,
        problem: String,
    },
}

/// The most of a site's hourly file that is read: years of hours are a few
/// megabytes.
pub const MAX_HOURLY_FILE: u64 = 64 << 20;

/// Reads and parses a site's hourly file: a regular file (a link an admin
/// made is followed; a FIFO is refused, never waited on), at most
/// [`MAX_HOURLY_FILE`] bytes.
pub fn read_hourly_file(path: &Path) -> Result<HourTable, FileError> {
    let refused = |e: crate::safe_fs::SafeFsError| match e {
        crate::safe_fs::SafeFsError::Io { source, .. } => FileError::Read {
            path: path.display().to_string(),
            source,
        },
        e => FileError::Refused(e.to_string()),
    };
    let f = crate::safe_fs::open_regular(path).map_err(refused)?;
    let bytes = crate::safe_fs::read_bounded(path, f, MAX_HOURLY_FILE).map_err(refused)?;
    let text = String::from_utf8(bytes).map_err(|e| FileError::Read {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    parse_hourly_csv(&text).map_err(|(line, problem)| FileError::Line {
        path: path.display().to_string(),
        line,
        problem,
    })
}

/// Parses `timestamp,g_per_kwh` rows. A row stands for the UTC hour that
/// contains its timestamp, `[t, t+1h)` for a timestamp on the hour. The first
/// line may be a header; `#` lines and blank lines are skipped; a later row for
/// the same hour replaces an earlier one (a refresh appended). Errors carry
/// the 1-based line number.
pub fn parse_hourly_csv(text: &str) -> Result<HourTable, (usize, String)> {
    let mut table = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(',').map(str::trim);
        let (Some(ts), Some(val)) = (fields.next(), fields.next()) else {
            return Err((i + 1, format!("`{line}` has no second column")));
        };
        let value = match val.parse::<f64>() {
            Ok(v) => v,
            Err(_) if table.is_empty() && i == first_data_line(text) => continue, // header
            Err(_) => return Err((i + 1, format!("`{val}` is not a number"))),
        };
        if !(0.0..=MAX_G_PER_KWH).contains(&value) {
            return Err((i + 1, format!("{value} gCO2e/kWh is out of range")));
        }
        let t = parse_timestamp(ts).ok_or_else(|| (i + 1, format!("`{ts}` is not a time")))?;
        table.insert(t.div_euclid(HOUR), value);
    }
    Ok(HourTable(table))
}

fn first_data_line(text: &str) -> usize {
    text.lines()
        .position(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .unwrap_or(0)
}

/// Unix seconds (`1714557600`, decimals allowed) or RFC 3339 in UTC
/// (`2024-05-01T10:00:00Z`, `2024-05-01 10:00:00`, fractions allowed).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<f64>() {
        return secs.is_finite().then(|| secs.floor() as i64);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(unix_secs(t).floor() as i64)
}

/// Seconds since the Unix epoch, negative before it.
pub(crate) fn unix_secs(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// How much of the job's energy fell in each UTC hour. Each span's energy is
/// spread uniformly over it (a zero-length span counts in the hour containing
/// it). With no energy at all (a zero-length or idle job), the window's time is
/// weighed instead, and a zero-length window counts the hour containing its
/// start, so there is always at least one hour.
pub fn hour_weights(
    window: (SystemTime, SystemTime),
    energy_by_time: &[EnergySpan],
) -> BTreeMap<i64, f64> {
    let mut w = BTreeMap::new();
    for &(a, b, e) in energy_by_time {
        if e.0 > 0.0 {
            spread(&mut w, unix_secs(a), unix_secs(b), e.0);
        }
    }
    if w.values().sum::<f64>() > 0.0 {
        return w;
    }
    let (a, b) = (unix_secs(window.0), unix_secs(window.1));
    spread(&mut w, a, b, (b - a).max(1.0));
    w
}

fn spread(w: &mut BTreeMap<i64, f64>, a: f64, b: f64, weight: f64) {
    let hour_of = |t: f64| (t / HOUR as f64).floor() as i64;
    if b <= a {
        *w.entry(hour_of(a)).or_default() += weight;
        return;
    }
    let span = b - a;
    let mut h = hour_of(a);
    loop {
        let lo = a.max((h * HOUR) as f64);
        let hi = b.min(((h + 1) * HOUR) as f64);
        if hi > lo {
            *w.entry(h).or_default() += weight * (hi - lo) / span;
        }
        if ((h + 1) * HOUR) as f64 >= b {
            break;
        }
        h += 1;
    }
}

/// The energy-weighted mean intensity, `Σ E_h I_h / Σ E_h`, with the fallback
/// for hours the table lacks; the note says how many hours, and how much of
/// the energy, used it.
pub fn weigh(
    table: &HourTable,
    weights: &BTreeMap<i64, f64>,
    fallback: &Resolved,
    source: String,
) -> Resolved {
    let total: f64 = weights.values().sum();
    let (mut sum, mut missing, mut missing_w) = (0.0, 0usize, 0.0);
    for (h, &wh) in weights {
        match table.0.get(h) {
            Some(&i) => sum += wh * i,
            None => {
                sum += wh * fallback.g_per_kwh.0;
                missing += 1;
                missing_w += wh;
            }
        }
    }
    let g = if total > 0.0 {
        sum / total
    } else {
        fallback.g_per_kwh.0
    };
    let hours = weights.len();
    let note = (missing > 0).then(|| {
        let share = if total > 0.0 {
            100.0 * missing_w / total
        } else {
            100.0
        };
        format!(
            "{missing} of {hours} hours missing ({share:.0}% of the energy): used {} for them",
            fallback.source
        )
    });
    Resolved {
        g_per_kwh: GramsPerKwh(g),
        source,
        note,
    }
}

/// The UTC hour containing `t`, as a time (for messages and tests).
pub fn hour_start(hour: i64) -> SystemTime {
    if hour >= 0 {
        UNIX_EPOCH + Duration::from_secs((hour * HOUR) as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs((-hour * HOUR) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-01T00:00:00Z.
    const DAY: u64 = 1_714_521_600;

    fn t(secs_after_midnight: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(DAY + secs_after_midnight)
    }

    fn h(n: u64) -> u64 {
        n * 3600
    }

    fn world() -> Resolved {
        constant_or_world(&IntensitySpec::WorldAverage)
    }

    fn table(rows: &[(u64, f64)]) -> HourTable {
        HourTable(
            rows.iter()
                .map(|&(hr, g)| (((DAY + h(hr)) / 3600) as i64, g))
                .collect(),
        )
    }

    #[test]
    fn parses_numbers_zones_files_and_live_zones() {
        for (v, want) in [
            ("120", IntensitySpec::Fixed(GramsPerKwh(120.0))),
            ("0", IntensitySpec::Fixed(GramsPerKwh(0.0))),
            ("DK", IntensitySpec::Zone("DK".into())),
            ("dk", IntensitySpec::Zone("DK".into())),
            (" Se ", IntensitySpec::Zone("SE".into())),
            (
                "file:/etc/ci.csv",
                IntensitySpec::File("/etc/ci.csv".into()),
            ),
            (
                "electricitymaps:dk-dk1",
                IntensitySpec::ElectricityMaps("DK-DK1".into()),
            ),
        ] {
            assert_eq!(IntensitySpec::parse(v), Ok(want), "{v}");
        }
        for (v, needle) in [
            ("XX", "not in the shipped table"),
            ("LU", "not in the shipped table"),
            ("-1", "out of range"),
            ("6000", "out of range"),
            ("file:rel.csv", "absolute"),
            ("electricitymaps:", "zone key"),
            ("electricitymaps:a/b", "zone key"),
            ("Denmark", "not a number"),
        ] {
            let e = IntensitySpec::parse(v).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
        }
        assert_eq!(
            IntensitySpec::parse_fallback("world"),
            Ok(IntensitySpec::WorldAverage)
        );
        assert_eq!(
            IntensitySpec::parse_fallback("no"),
            Ok(IntensitySpec::Zone("NO".into()))
        );
        assert!(IntensitySpec::parse_fallback("file:/x").is_err());
    }

    #[test]
    fn constant_sources_name_themselves() {
        let r = resolve(
            &IntensitySpec::WorldAverage,
            &IntensitySpec::WorldAverage,
            (t(0), t(10)),
            &[],
        );
        assert_eq!(r.g_per_kwh, GramsPerKwh(445.0));
        assert_eq!(r.describe(), "world average (IEA 2024)");
        let r = IntensitySpec::Zone("DK".into()).constant().unwrap();
        assert_eq!(
            (r.g_per_kwh, r.source.as_str()),
            (GramsPerKwh(149.7), "zone DK annual average (OWID 2021)")
        );
        let r = IntensitySpec::Fixed(GramsPerKwh(12.5)).constant().unwrap();
        assert_eq!(
            (r.g_per_kwh, r.source.as_str()),
            (GramsPerKwh(12.5), "fixed by site")
        );
        assert_eq!(
            IntensitySpec::ElectricityMaps("DK-DK2".into()).default_fallback(),
            IntensitySpec::Zone("DK".into())
        );
        assert_eq!(
            IntensitySpec::ElectricityMaps("US-CAL-CISO".into()).default_fallback(),
            IntensitySpec::Zone("US".into())
        );
        assert_eq!(
            IntensitySpec::ElectricityMaps("XK".into()).default_fallback(),
            IntensitySpec::WorldAverage
        );
    }

    #[test]
    fn file_rows_in_all_accepted_forms() {
        let text = format!(
            "timestamp,g_per_kwh\n# refreshed hourly\n\n2024-05-01T00:00:00Z,100\n2024-05-01 01:00:00,200.5\n{},300\n2024-05-01T03:30:00Z, 400 \n{},250\n",
            DAY + h(2),
            DAY + h(2) + 59
        );
        let got = parse_hourly_csv(&text).unwrap();
        assert_eq!(
            got,
            table(&[(0, 100.0), (1, 200.5), (2, 250.0), (3, 400.0)])
        );
    }

    #[test]
    fn bad_file_rows_name_their_line() {
        for (text, line, needle) in [
            ("t,g\n2024-05-01T00:00:00Z,abc\n", 2, "not a number"),
            ("2024-05-01T00:00:00Z\n", 1, "no second column"),
            ("yesterday,100\n", 1, "not a time"),
            ("1714521600,-5\n", 1, "out of range"),
            ("1714521600,100\nt,g\n", 2, "not a number"),
        ] {
            let (l, p) = parse_hourly_csv(text).unwrap_err();
            assert_eq!(l, line, "{text}");
            assert!(p.contains(needle), "{text}: {p}");
        }
    }

    #[test]
    fn hour_weighting_table() {
        let tab = table(&[(0, 100.0), (1, 300.0), (2, 500.0)]);
        // (energy spans as (start s, end s, J) after midnight, window, expected g/kWh, missing hours)
        struct Case {
            name: &'static str,
            spans: Vec<(u64, u64, f64)>,
            window: (u64, u64),
            want: f64,
            missing: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "inside one hour",
                spans: vec![(600, 1200, 50.0)],
                window: (600, 1200),
                want: 100.0,
                missing: None,
            },
            Case {
                name: "half each side of a boundary, even power",
                spans: vec![(h(1) - 1800, h(1) + 1800, 3600.0)],
                window: (h(1) - 1800, h(1) + 1800),
                want: 200.0,
                missing: None,
            },
            Case {
                name: "uneven power across the boundary",
                spans: vec![(h(1) - 1800, h(1), 1000.0), (h(1), h(1) + 1800, 3000.0)],
                window: (h(1) - 1800, h(1) + 1800),
                want: (1000.0 * 100.0 + 3000.0 * 300.0) / 4000.0,
                missing: None,
            },
            Case {
                name: "three hours, a quarter, a whole and a quarter",
                spans: vec![(h(1) - 900, h(2) + 900, 5400.0)],
                window: (h(1) - 900, h(2) + 900),
                want: (900.0 * 100.0 + 3600.0 * 300.0 + 900.0 * 500.0) / 5400.0,
                missing: None,
            },
            Case {
                name: "span ends exactly on the hour",
                spans: vec![(0, h(1), 10.0)],
                window: (0, h(1)),
                want: 100.0,
                missing: None,
            },
            Case {
                name: "zero-length job counts its hour",
                spans: vec![],
                window: (h(1) + 5, h(1) + 5),
                want: 300.0,
                missing: None,
            },
            Case {
                name: "zero energy weighs by time",
                spans: vec![(h(1) - 1800, h(1) + 1800, 0.0)],
                window: (h(1) - 1800, h(1) + 1800),
                want: 200.0,
                missing: None,
            },
            Case {
                name: "a missing hour uses the fallback",
                spans: vec![(h(2) + 1800, h(3) + 1800, 3600.0)],
                window: (h(2) + 1800, h(3) + 1800),
                want: (500.0 + 445.0) / 2.0,
                missing: Some(
                    "1 of 2 hours missing (50% of the energy): used world average (IEA 2024) for them",
                ),
            },
            Case {
                name: "all hours missing",
                spans: vec![(h(5), h(7), 10.0)],
                window: (h(5), h(7)),
                want: 445.0,
                missing: Some("2 of 2 hours missing (100% of the energy)"),
            },
        ];
        for c in cases {
            let spans: Vec<EnergySpan> = c
                .spans
                .iter()
                .map(|&(a, b, e)| (t(a), t(b), Joules(e)))
                .collect();
            let r = weigh(
                &tab,
                &hour_weights((t(c.window.0), t(c.window.1)), &spans),
                &world(),
                "file x hourly".into(),
            );
            assert!(
                (r.g_per_kwh.0 - c.want).abs() < 1e-9,
                "{}: {} != {}",
                c.name,
                r.g_per_kwh.0,
                c.want
            );
            match (c.missing, &r.note) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.starts_with(want), "{}: {got}", c.name),
                (w, g) => panic!("{}: note {g:?}, wanted {w:?}", c.name),
            }
        }
    }

    #[test]
    fn file_source_end_to_end_and_unreadable_file_falls_back() {
        let dir = std::env::temp_dir().join(format!("ct-intensity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ci.csv");
        std::fs::write(&path, format!("{},80\n{},120\n", DAY, DAY + h(1))).unwrap();
        let spec = IntensitySpec::File(path.clone());
        let spans = [(t(h(1) - 600), t(h(1) + 600), Joules(1200.0))];
        let r = resolve(
            &spec,
            &IntensitySpec::Zone("DK".into()),
            (t(h(1) - 600), t(h(1) + 600)),
            &spans,
        );
        assert!((r.g_per_kwh.0 - 100.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.describe(), format!("file {} hourly", path.display()));

        std::fs::write(&path, "ts,g\nnot-a-time,1\n").unwrap();
        let r = resolve(&spec, &IntensitySpec::Zone("DK".into()), (t(0), t(1)), &[]);
        assert_eq!(r.g_per_kwh, GramsPerKwh(149.7));
        let d = r.describe();
        assert!(
            d.starts_with("zone DK annual average (OWID 2021); intensity file"),
            "{d}"
        );
        assert!(d.contains("line 2"), "{d}");

        // A FIFO at the name: refused at once (the fallback used), never
        // waited on for a writer.
        std::fs::remove_file(&path).unwrap();
        crate::safe_fs::tests::mkfifo(&path);
        let r = crate::safe_fs::tests::quick("a FIFO as the intensity file", || {
            resolve(&spec, &IntensitySpec::Zone("DK".into()), (t(0), t(1)), &[])
        });
        assert_eq!(r.g_per_kwh, GramsPerKwh(149.7));
        assert!(r.describe().contains("is a FIFO"), "{}", r.describe());
        std::fs::remove_dir_all(&dir).unwrap();

        let r = resolve(&spec, &IntensitySpec::WorldAverage, (t(0), t(1)), &[]);
        assert_eq!(r.g_per_kwh, GramsPerKwh(445.0));
        assert!(r.describe().contains("No such file"), "{}", r.describe());
    }

    #[test]
    fn live_spec_outside_the_epilog_uses_its_fallback() {
        let spec = IntensitySpec::ElectricityMaps("DK-DK1".into());
        let r = resolve(&spec, &spec.default_fallback(), (t(0), t(1)), &[]);
        assert_eq!(r.g_per_kwh, GramsPerKwh(149.7));
        assert!(
            r.describe().contains("queried by the epilog only"),
            "{}",
            r.describe()
        );
    }

    #[test]
    fn hour_start_inverts_hour_index() {
        assert_eq!(hour_start(((DAY + h(3)) / 3600) as i64), t(h(3)));
    }
}
