//! `carbontrack suggest --duration D [--within W] [--intensity SPEC]`: the
//! greenest time to start a job of length D in the coming W, from a site's
//! hourly intensity file (history and forecast, `file:` source), against
//! starting now, and the `sbatch --begin=` that asks Slurm for it.
//!
//! The approach is CATS' (the Climate-Aware Task Scheduler,
//! github.com/GreenScheduler/cats): score every start the forecast covers
//! by the intensity over the whole run. A flat power is assumed; the saving
//! in per cent does not depend on the power then, and `--power` turns it into
//! grams. See [`crate::carbon::greener`].

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;

use crate::carbon::equivalents::fmt_significant;
use crate::carbon::greener::{self, Choice, NoChoice, Profile, fmt_hour};
use crate::carbon::intensity::{HourTable, IntensitySpec, read_hourly_file, unix_secs};

#[derive(Debug, Clone, Args)]
pub struct SuggestArgs {
    /// How long the job runs, e.g. 2h, 90min.
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How far ahead it may start, e.g. 12h (default 24h).
    #[arg(long, value_name = "W", default_value = "24h", value_parser = humantime::parse_duration)]
    pub within: Duration,
    /// file:/path.csv (default: intensity= of the plugin's plugstack.conf line).
    #[arg(long, value_name = "SPEC")]
    pub intensity: Option<String>,
    /// The job's average power in watts, to give grams as well as per cent.
    #[arg(long, value_name = "W")]
    pub power: Option<f64>,
    /// plugstack.conf to read the intensity from.
    #[arg(long, value_name = "FILE")]
    pub plugstack: Option<std::path::PathBuf>,
}

/// The best start for a run of `duration` starting within `within` of `now`.
pub fn suggest(
    table: &HourTable,
    duration: Duration,
    within: Duration,
    now: SystemTime,
) -> Result<Choice, NoChoice> {
    let candidates = greener::hours_ahead(now, within);
    greener::best_start(table, &Profile::flat(duration), now, &candidates[1..])
}

/// `2024-05-01T05:00:00` in the zone `offset_s` seconds east of UTC (the
/// submitting host's, which `sbatch --begin` reads).
pub fn begin_arg(t: SystemTime, offset_s: i64) -> String {
    let local = t.checked_add(Duration::from_secs(offset_s.max(0) as u64));
    let local = match (offset_s < 0, local) {
        (true, _) => t.checked_sub(Duration::from_secs(offset_s.unsigned_abs())),
        (false, l) => l,
    }
    .unwrap_or(t);
    let s = humantime::format_rfc3339_seconds(local).to_string();
    s.trim_end_matches('Z').to_string()
}

/// `24 h`, or humantime's form for a window not in whole hours.
fn fmt_window(d: Duration) -> String {
    if d.as_secs().is_multiple_of(3600) {
        format!("{} h", d.as_secs() / 3600)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// What `suggest` prints.
pub fn render(
    c: &Choice,
    now: SystemTime,
    duration: Duration,
    within: Duration,
    power_w: Option<f64>,
    offset_s: i64,
) -> String {
    let mut s = String::new();
    let wait = c.best.start.duration_since(now).unwrap_or_default();
    let mins = wait.as_secs().div_ceil(60);
    if c.is_reference() {
        let _ = writeln!(
            s,
            "Best start: now ({} UTC): no start in the next {} is greener ({} starts covered).",
            fmt_hour(now),
            fmt_window(within),
            c.covered + 1
        );
    } else {
        let _ = writeln!(
            s,
            "Best start: {} UTC, in {}h{:02}m (of {} starts covered in the next {}).",
            fmt_hour(c.best.start),
            mins / 60,
            mins % 60,
            c.covered + 1,
            fmt_window(within)
        );
    }
    let _ = writeln!(
        s,
        "Expected CO2e: {} g per kWh over the {} run, against {} g per kWh starting now: -{:.0}%.",
        fmt_significant(c.best.g_per_kwh.0, 3),
        humantime::format_duration(duration),
        fmt_significant(c.reference.g_per_kwh.0, 3),
        100.0 * c.saving()
    );
    if let Some(w) = power_w {
        let kwh = w * duration.as_secs_f64() / 3.6e6;
        let _ = writeln!(
            s,
            "At {} W ({} kWh, before PUE): {} g CO2e, against {} g starting now.",
            fmt_significant(w, 3),
            fmt_significant(kwh, 3),
            fmt_significant(kwh * c.best.g_per_kwh.0, 3),
            fmt_significant(kwh * c.reference.g_per_kwh.0, 3)
        );
    }
    if !c.is_reference() {
        let _ = writeln!(s, "sbatch --begin={}", begin_arg(c.best.start, offset_s));
    }
    s
}

pub fn suggest_main(a: &SuggestArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("carbontrack suggest: {e}");
        ExitCode::from(1)
    };
    if a.duration.is_zero() {
        return fail("--duration must be more than zero".into());
    }
    if let Some(w) = a.power
        && !(w.is_finite() && w > 0.0)
    {
        return fail(format!(
            "--power {w}: give the job's average power in watts"
        ));
    }
    let spec = match &a.intensity {
        Some(v) => IntensitySpec::parse(v).map_err(|e| format!("--intensity: {e}")),
        None => crate::report::plugstack::load(a.plugstack.as_deref(), &[])
            .map(|(c, _)| c.intensity)
            .map_err(|e| e.to_string()),
    };
    let path = match spec {
        Ok(IntensitySpec::File(p)) => p,
        Ok(other) => {
            return fail(format!(
                "needs an hourly intensity file (--intensity file:/path.csv); the source is {other:?}"
            ));
        }
        Err(e) => return fail(e),
    };
    let table = match read_hourly_file(&path) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let now = SystemTime::now();
    match suggest(&table, a.duration, a.within, now) {
        Ok(c) => {
            let offset =
                crate::ffi::clock::local_utc_offset(unix_secs(c.best.start) as i64).unwrap_or(0);
            print!("{}", render(&c, now, a.duration, a.within, a.power, offset));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!(
            "{}: {e}; a {} run starting within {} needs hourly figures from now to its end",
            path.display(),
            humantime::format_duration(a.duration),
            humantime::format_duration(a.within)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carbon::intensity::parse_hourly_csv;
    use std::time::UNIX_EPOCH;

    /// 2024-05-01T00:00:00Z.
    const DAY: u64 = 1_714_521_600;

    fn t(h: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(DAY as f64 + h * 3600.0)
    }

    fn file(values: &[f64]) -> HourTable {
        let mut text = String::from("timestamp,g_per_kwh\n");
        for (i, v) in values.iter().enumerate() {
            text.push_str(&format!("{},{v}\n", DAY + 3600 * i as u64));
        }
        parse_hourly_csv(&text).unwrap()
    }

    #[test]
    fn suggestions_over_a_forecast() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        let tab = file(&[400.0, 400.0, 300.0, 100.0, 100.0, 300.0, 400.0, 400.0]);
        // (now h, duration, within) -> (best h, saving) or the error
        for (now, d, w, want) in [
            // From 00:30, 2 h: now is 1.5 h at 400 and 0.5 h at 300, 375.
            (0.5, h(2), h(24), Ok((3.0, 1.0 - 100.0 / 375.0))),
            // Within 1 h only: 01:00 (400, 300) = 350.
            (0.5, h(2), h(1), Ok((1.0, 1.0 - 350.0 / 375.0))),
            // At the dip already: start now.
            (3.0, h(2), h(24), Ok((3.0, 0.0))),
            // The run from now passes the file's end.
            (7.0, h(2), h(24), Err(())),
            // Before the file starts.
            (-2.0, h(1), h(1), Err(())),
        ] {
            let got = suggest(&tab, d, w, t(now))
                .map(|c| {
                    let best = (unix_secs(c.best.start) - DAY as f64) / 3600.0;
                    (best, (c.saving() * 1e9).round() / 1e9)
                })
                .map_err(|_| ());
            let want = want.map(|(b, s): (f64, f64)| (b, (s * 1e9).round() / 1e9));
            assert_eq!(got, want, "now {now} h, {d:?} within {w:?}");
        }
    }

    #[test]
    fn what_suggest_prints() {
        let tab = file(&[400.0, 400.0, 300.0, 100.0, 100.0, 300.0, 400.0, 400.0]);
        let now = t(0.5);
        let c = suggest(
            &tab,
            Duration::from_secs(7200),
            Duration::from_secs(86_400),
            now,
        )
        .unwrap();
        let text = render(
            &c,
            now,
            Duration::from_secs(7200),
            Duration::from_secs(86_400),
            Some(500.0),
            7200,
        );
        assert_eq!(
            text,
            "Best start: 2024-05-01 03:00 UTC, in 2h30m (of 7 starts covered in the next 24 h).\n\
             Expected CO2e: 100 g per kWh over the 2h run, against 375 g per kWh starting now: -73%.\n\
             At 500 W (1.00 kWh, before PUE): 100 g CO2e, against 375 g starting now.\n\
             sbatch --begin=2024-05-01T05:00:00\n"
        );
        let c = suggest(
            &tab,
            Duration::from_secs(7200),
            Duration::from_secs(3600),
            t(3.0),
        )
        .unwrap();
        let text = render(
            &c,
            t(3.0),
            Duration::from_secs(7200),
            Duration::from_secs(3600),
            None,
            0,
        );
        assert!(
            text.starts_with("Best start: now (2024-05-01 03:00 UTC)"),
            "{text}"
        );
        assert!(!text.contains("sbatch"), "{text}");
    }

    #[test]
    fn begin_is_in_the_submitting_hosts_zone() {
        for (offset, want) in [
            (0, "2024-05-01T03:00:00"),
            (7200, "2024-05-01T05:00:00"),
            (-5 * 3600, "2024-04-30T22:00:00"),
            (19_800, "2024-05-01T08:30:00"),
        ] {
            assert_eq!(begin_arg(t(3.0), offset), want, "{offset}");
        }
    }
}
