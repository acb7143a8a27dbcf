//! Greener start times: the same energy profile moved to other start times,
//! weighed with a site's hourly intensity file (`intensity=file:`).
//!
//! The approach is that of CATS, the Climate-Aware Task Scheduler
//! (github.com/GreenScheduler/cats): given a job's duration and an hourly
//! carbon-intensity forecast, every candidate start whose whole run the
//! forecast covers is scored by the intensity over the run, and the lowest is
//! offered against starting now. carbontrack does the same with the job's
//! measured profile (energy per timeline point, not a flat power) for the
//! final summary, looking back over the 24 h before the actual start ("it
//! would have emitted x % less had it started at 03:00"), and with a flat
//! profile looking ahead for `carbontrack suggest`. Only candidates the file
//! covers hour by hour count: a fallback figure filled in for a missing hour
//! would make the comparison meaningless. Pure functions; no code of CATS.

use std::time::{Duration, SystemTime};

use super::intensity::{EnergySpan, HourTable, hour_start, hour_weights, unix_secs};
use crate::units::{GramsPerKwh, Joules};

const HOUR: u64 = 3600;

/// A run's energy over time, relative to its start.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// `(from, to, energy)`, as offsets from the start.
    spans: Vec<(Duration, Duration, Joules)>,
    length: Duration,
}

impl Profile {
    /// A measured profile: the timeline's spans of a run from `start` to
    /// `end`. With no energy in them (an idle or very short run), the run's
    /// time is weighed evenly instead.
    pub fn measured(start: SystemTime, end: SystemTime, spans: &[EnergySpan]) -> Profile {
        let length = end.duration_since(start).unwrap_or_default();
        let rel = |t: SystemTime| t.duration_since(start).unwrap_or_default();
        let spans: Vec<_> = spans
            .iter()
            .filter(|s| s.2.0 > 0.0)
            .map(|&(a, b, e)| (rel(a), rel(b), e))
            .collect();
        if spans.is_empty() {
            return Profile::flat(length);
        }
        Profile { spans, length }
    }

    /// Constant power for `length` (what `suggest` assumes).
    pub fn flat(length: Duration) -> Profile {
        Profile {
            spans: vec![(
                Duration::ZERO,
                length,
                Joules(length.as_secs_f64().max(1.0)),
            )],
            length,
        }
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    fn at(&self, start: SystemTime) -> Vec<EnergySpan> {
        self.spans
            .iter()
            .map(|&(a, b, e)| (start + a, start + b, e))
            .collect()
    }
}

/// Why a start cannot be scored: the first hour the file lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uncovered(pub SystemTime);

/// The energy-weighted mean intensity of `profile` started at `start`, from
/// `table` alone.
pub fn mean_intensity(
    table: &HourTable,
    profile: &Profile,
    start: SystemTime,
) -> Result<GramsPerKwh, Uncovered> {
    let weights = hour_weights((start, start + profile.length), &profile.at(start));
    let (mut sum, mut total) = (0.0, 0.0);
    for (h, w) in weights {
        let i = table.0.get(&h).ok_or(Uncovered(hour_start(h)))?;
        sum += w * i;
        total += w;
    }
    Ok(GramsPerKwh(if total > 0.0 { sum / total } else { 0.0 }))
}

/// One scored start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub start: SystemTime,
    pub g_per_kwh: GramsPerKwh,
}

/// The best start against a reference one (the actual start, or now).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub reference: Scored,
    /// The lowest-intensity candidate; the reference itself when none beats it.
    pub best: Scored,
    /// Candidates the file covers, of all candidates.
    pub covered: usize,
    pub candidates: usize,
}

impl Choice {
    /// How much less the best start emits than the reference, as a fraction
    /// (0.38 for 38 % less); 0 when the reference is the best.
    pub fn saving(&self) -> f64 {
        let r = self.reference.g_per_kwh.0;
        if r > 0.0 {
            (r - self.best.g_per_kwh.0) / r
        } else {
            0.0
        }
    }

    pub fn is_reference(&self) -> bool {
        self.best.start == self.reference.start
    }
}

/// Why no choice could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoChoice {
    /// The reference start itself is not covered.
    Reference(Uncovered),
    /// No candidate is covered (the first one's first missing hour).
    Candidates(Option<Uncovered>),
}

impl std::fmt::Display for NoChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hour = |u: &Uncovered| humantime::format_rfc3339_seconds(u.0).to_string();
        match self {
            NoChoice::Reference(u) => write!(f, "the file has no figure for {}", hour(u)),
            NoChoice::Candidates(Some(u)) => write!(
                f,
                "the file covers no candidate start (none for {}, for one)",
                hour(u)
            ),
            NoChoice::Candidates(None) => f.write_str("there is no candidate start"),
        }
    }
}

/// Scores `reference` and every candidate with `table`; the lowest mean
/// intensity wins, the earliest on a tie, and the reference unless a
/// candidate beats it. Candidates the file does not cover are skipped.
pub fn best_start(
    table: &HourTable,
    profile: &Profile,
    reference: SystemTime,
    candidates: &[SystemTime],
) -> Result<Choice, NoChoice> {
    let r = Scored {
        start: reference,
        g_per_kwh: mean_intensity(table, profile, reference).map_err(NoChoice::Reference)?,
    };
    let mut best = r;
    let (mut covered, mut first_gap) = (0, None);
    for &c in candidates {
        match mean_intensity(table, profile, c) {
            Ok(g) => {
                covered += 1;
                if g.0 < best.g_per_kwh.0 {
                    best = Scored {
                        start: c,
                        g_per_kwh: g,
                    };
                }
            }
            Err(u) => {
                first_gap.get_or_insert(u);
            }
        }
    }
    if covered == 0 && !candidates.contains(&reference) {
        return Err(NoChoice::Candidates(first_gap));
    }
    Ok(Choice {
        reference: r,
        best,
        covered,
        candidates: candidates.len(),
    })
}

/// Whole UTC hours from `lookback` before `start` up to (not including) it:
/// the starts the final summary weighs against the actual one.
pub fn hours_before(start: SystemTime, lookback: Duration) -> Vec<SystemTime> {
    let from = unix_secs(start) - lookback.as_secs_f64();
    let mut h = (from / HOUR as f64).ceil() as i64;
    let mut v = Vec::new();
    loop {
        let t = hour_start(h);
        if t >= start {
            return v;
        }
        v.push(t);
        h += 1;
    }
}

/// Now, then every whole UTC hour up to `within` after it: the starts
/// `suggest` weighs.
pub fn hours_ahead(now: SystemTime, within: Duration) -> Vec<SystemTime> {
    let until = now + within;
    let mut v = vec![now];
    let mut h = (unix_secs(now) / HOUR as f64).floor() as i64 + 1;
    loop {
        let t = hour_start(h);
        if t > until {
            return v;
        }
        v.push(t);
        h += 1;
    }
}

/// The final summary's line, e.g. `Greener start: starting at 2024-05-01
/// 03:00 UTC would have emitted 38% less CO2e (212 g instead of 340 g) ...`.
/// `co2e_g` is the run's actual CO2e (with PUE), scaled by the ratio of mean
/// intensities for the other start.
pub fn summary_line(
    choice: Result<&Choice, &NoChoice>,
    co2e_g: Option<f64>,
    lookback: Duration,
) -> String {
    let window = format!("{} h", lookback.as_secs() / HOUR);
    let c = match choice {
        Ok(c) => c,
        Err(why) => {
            return format!("Greener start: not computed for the {window} before the run: {why}.");
        }
    };
    if c.is_reference() {
        return format!(
            "Greener start: none in the {window} before the run; its actual start was the \
             greenest of the {} starts the intensity file covers.",
            c.covered + 1
        );
    }
    let grams = co2e_g
        .map(|g| {
            let other = g * c.best.g_per_kwh.0 / c.reference.g_per_kwh.0.max(f64::MIN_POSITIVE);
            format!(
                " ({} g instead of {} g)",
                super::equivalents::fmt_significant(other, 3),
                super::equivalents::fmt_significant(g, 3)
            )
        })
        .unwrap_or_default();
    format!(
        "Greener start: started at {} UTC: -{:.0}% CO2e{grams}, the same energy profile at \
         {} instead of {} gCO2e/kWh (best of {} starts in the {window} before the run; the \
         approach of CATS, github.com/GreenScheduler/cats).",
        fmt_hour(c.best.start),
        100.0 * c.saving(),
        super::equivalents::fmt_significant(c.best.g_per_kwh.0, 3),
        super::equivalents::fmt_significant(c.reference.g_per_kwh.0, 3),
        c.covered,
    )
}

/// `2024-05-01 03:00`.
pub fn fmt_hour(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} {}", &s[..10], &s[11..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    /// 2024-05-01T00:00:00Z, hour index 476256.
    const DAY: u64 = 1_714_521_600;
    const H0: i64 = (DAY / HOUR) as i64;

    fn t(hours: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(DAY as f64 + hours * 3600.0)
    }

    /// Hours from `first` (relative to DAY) with these figures.
    fn table(first: i64, values: &[f64]) -> HourTable {
        HourTable(
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| (H0 + first + i as i64, v))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn hours(n: f64) -> Duration {
        Duration::from_secs_f64(n * 3600.0)
    }

    #[test]
    fn mean_intensity_follows_the_energy() {
        // Hours 0..4 at 100, 200, 300, 400.
        let tab = table(0, &[100.0, 200.0, 300.0, 400.0]);
        // Profile: 1 kJ in the first half hour, 3 kJ in the second.
        let start = t(0.5);
        let profile = Profile::measured(
            start,
            t(1.5),
            &[
                (t(0.5), t(1.0), Joules(1000.0)),
                (t(1.0), t(1.5), Joules(3000.0)),
            ],
        );
        // (start h) -> mean
        for (at, want) in [
            (0.5, Ok(175.0)), // 1/4 at 100 + 3/4 at 200
            (0.0, Ok(100.0)), // all in hour 0
            (1.0, Ok(200.0)), // all in hour 1
            (1.5, Ok(275.0)), // 1/4 at 200 + 3/4 at 300
            (2.5, Ok(375.0)), // 1/4 at 300 + 3/4 at 400
            (3.5, Err(Uncovered(t(4.0)))),
            (-0.5, Err(Uncovered(t(-1.0)))),
        ] {
            let got = mean_intensity(&tab, &profile, t(at)).map(|g| g.0);
            assert_eq!(got, want, "start {at} h");
        }
    }

    #[test]
    fn candidate_hours() {
        // 10:17 with a 24 h look-back: 10:17 the day before is not on the
        // hour, so 11:00 the day before .. 10:00 today: 24 starts.
        let before = hours_before(t(34.0 + 17.0 / 60.0), hours(24.0));
        assert_eq!(before.len(), 24);
        assert_eq!(before[0], t(11.0));
        assert_eq!(*before.last().unwrap(), t(34.0));
        // On the hour: the start itself is the reference, not a candidate.
        let before = hours_before(t(24.0), hours(24.0));
        assert_eq!((before.len(), before[0]), (24, t(0.0)));
        assert_eq!(*before.last().unwrap(), t(23.0));
        // Ahead: now, then the whole hours up to the window's end.
        let ahead = hours_ahead(t(0.25), hours(3.0));
        assert_eq!(ahead, vec![t(0.25), t(1.0), t(2.0), t(3.0)]);
        assert_eq!(hours_ahead(t(0.0), hours(1.0)), vec![t(0.0), t(1.0)]);
        assert_eq!(hours_ahead(t(0.5), Duration::ZERO), vec![t(0.5)]);
    }

    #[test]
    fn the_best_start_and_its_saving() {
        let flat2 = Profile::flat(hours(2.0));
        // 12 hours: dirty, a clean dip at hours 3-4, dirty again.
        let tab = table(
            0,
            &[
                400.0, 400.0, 300.0, 100.0, 100.0, 300.0, 400.0, 400.0, 500.0, 500.0, 500.0, 500.0,
            ],
        );
        // (reference h, candidates h) -> (best h, saving, covered)
        type Row = (f64, Vec<f64>, Result<(f64, f64, usize), NoChoice>);
        let rows: Vec<Row> = vec![
            // Started at 8: 500 g/kWh; at 3, 100: -80 %.
            (8.0, (0..8).map(f64::from).collect(), Ok((3.0, 0.8, 8))),
            // Started at the dip: nothing beats it.
            (3.0, vec![0.0, 1.0, 2.0], Ok((3.0, 0.0, 3))),
            // Candidates past the file's end are skipped, not counted.
            (8.0, vec![9.0, 10.0, 11.0, 12.0], Ok((8.0, 0.0, 2))),
            // Off the hour: from 2.5, half an hour at 300 and 1.5 h at 100.
            (
                8.0,
                vec![2.5],
                Ok((2.5, 1.0 - (0.5 * 300.0 + 1.5 * 100.0) / 2.0 / 500.0, 1)),
            ),
            // The reference itself not covered: no comparison.
            (
                11.0,
                vec![3.0],
                Err(NoChoice::Reference(Uncovered(t(12.0)))),
            ),
            // No candidate covered.
            (
                8.0,
                vec![-3.0, 20.0],
                Err(NoChoice::Candidates(Some(Uncovered(t(-3.0))))),
            ),
        ];
        for (reference, cands, want) in rows {
            let cands: Vec<SystemTime> = cands.into_iter().map(t).collect();
            let got = best_start(&tab, &flat2, t(reference), &cands).map(|c| {
                let best_h = (unix_secs(c.best.start) - DAY as f64) / 3600.0;
                (best_h, (c.saving() * 1e9).round() / 1e9, c.covered)
            });
            let want = want.map(|(h, s, n)| (h, (s * 1e9).round() / 1e9, n));
            assert_eq!(got, want, "reference {reference}");
        }
    }

    #[test]
    fn a_measured_profile_prefers_the_hour_its_energy_falls_in() {
        // Busy first hour, idle second: the clean hour should hold the busy one.
        let tab = table(0, &[100.0, 500.0, 500.0, 100.0, 500.0]);
        let p = Profile::measured(
            t(1.0),
            t(3.0),
            &[
                (t(1.0), t(2.0), Joules(9000.0)),
                (t(2.0), t(3.0), Joules(1000.0)),
            ],
        );
        let c = best_start(&tab, &p, t(1.0), &[t(0.0), t(2.0), t(3.0)]).unwrap();
        // At 0: 0.9*100+0.1*500 = 140; at 3: 0.9*100 + 0.1*500 = 140; the earlier wins.
        assert_eq!(c.best.start, t(0.0));
        assert!((c.best.g_per_kwh.0 - 140.0).abs() < 1e-9, "{c:?}");
        assert!((c.reference.g_per_kwh.0 - 500.0).abs() < 1e-9, "{c:?}");
        assert!((c.saving() - 0.72).abs() < 1e-9, "{c:?}");
        // Without any energy, the run's time is weighed evenly.
        let idle = Profile::measured(t(1.0), t(3.0), &[]);
        assert_eq!(idle, Profile::flat(hours(2.0)));
    }

    #[test]
    fn summary_lines() {
        let c = Choice {
            reference: Scored {
                start: t(10.0),
                g_per_kwh: GramsPerKwh(500.0),
            },
            best: Scored {
                start: t(3.0),
                g_per_kwh: GramsPerKwh(310.0),
            },
            covered: 24,
            candidates: 24,
        };
        let day = hours(24.0);
        let line = summary_line(Ok(&c), Some(340.0), day);
        assert!(
            line.starts_with(
                "Greener start: started at 2024-05-01 03:00 UTC: -38% CO2e (211 g instead of 340 g)"
            ),
            "{line}"
        );
        assert!(
            line.contains("best of 24 starts in the 24 h before"),
            "{line}"
        );
        assert!(line.contains("CATS"), "{line}");
        let same = Choice {
            best: c.reference,
            ..c
        };
        assert!(
            summary_line(Ok(&same), Some(340.0), day)
                .contains("actual start was the greenest of the 25"),
        );
        let why = NoChoice::Reference(Uncovered(t(10.0)));
        assert_eq!(
            summary_line(Err(&why), None, day),
            "Greener start: not computed for the 24 h before the run: the file has no figure \
             for 2024-05-01T10:00:00Z."
        );
    }
}
