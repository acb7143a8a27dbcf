//! `carbontrack run --pid PID`: measure this machine while a process that is
//! already running runs, for callers that cannot be wrapped, chiefly the
//! Python API (`python/`, carbontracker's `CarbonTracker` drop-in), which
//! starts it for its own process.
//!
//! It measures what `carbontrack run -- CMD` measures (this machine, or the
//! cpuset of the process's cgroup when narrower), watches an epoch file of
//! its own, named on stdout as `CARBONTRACK_EPOCH_FILE=<path>` once sampling
//! has begun, prints carbontracker's "Predicted consumption" block on stderr
//! once `--epochs-before-pred` epochs are marked, and ends when the process
//! exits or on SIGTERM, SIGINT, SIGHUP or SIGQUIT, with the "Actual
//! consumption" block and the CSV.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::epochs::EPOCH_FILE_ENV;
use crate::ffi::signals;
use crate::run::{Ended, RunRequest, local_plan, new_epoch_file};
use crate::tracker::Tracker;

/// How often the process is looked at and the prediction checked for.
const POLL: Duration = Duration::from_millis(250);

/// The signals that end a followed run (the Python API's `stop()` sends
/// SIGTERM); the others of [`signals::FORWARDED`] are ignored.
const STOP: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// The start time of a process (`/proc/<pid>/stat` field 22, clock ticks
/// since boot), which with its id names it: an id the kernel gives again to
/// a new process has another start time ([`crate::procstat`]).
///
/// `None` as well for a process that has ended but is not yet reaped (a
/// zombie, state `Z`, or dead, `X`): its parent may wait for our output before
/// reaping it.
pub fn start_time(stat: &str) -> Option<u64> {
    crate::procstat::parse(stat)
        .filter(|s| !matches!(s.state, 'Z' | 'X'))
        .map(|s| s.start)
}

fn process_start(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(start_time)
}

/// Follows `pid` until it exits or a stop signal comes; returns `Code(0)`.
pub fn follow(req: &RunRequest, pid: u32) -> Result<Ended> {
    let started = process_start(pid).with_context(|| {
        format!("no process {pid} to follow (/proc/{pid}/stat unreadable); give a running PID")
    })?;
    let blocked = signals::block(&signals::FORWARDED).context("cannot block the stop signals")?;
    let (epoch_file, _cleanup) = new_epoch_file()?;
    let cgroup = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let plan = local_plan(req, &cgroup, epoch_file.clone());
    let (tracker, log) = Tracker::start(plan).context("cannot start the sampler thread")?;
    for line in log {
        eprintln!("carbontrack: {line}");
    }
    announce(&epoch_file);

    let mut predicted = false;
    loop {
        if blocked.wait(POLL).is_some_and(|sig| STOP.contains(&sig)) {
            break;
        }
        if process_start(pid) != Some(started) {
            break;
        }
        if !predicted
            && req.epochs.is_some()
            && let Some(block) = tracker.predicted_block()
        {
            eprint!("\n{block}");
            predicted = true;
        }
    }

    let done = tracker.finish();
    if let (false, Some(block)) = (predicted, &done.predicted_block) {
        eprint!("\n{block}");
    }
    eprint!("\n{}", done.actual_block);
    for p in &done.delivered {
        eprintln!("carbontrack: footprint written to {}", p.display());
    }
    for p in &done.problems {
        eprintln!("carbontrack: {p}");
    }
    Ok(Ended::Code(0))
}

/// The one line on stdout: sampling has begun, and where epochs are marked
/// (`CARBONTRACK_EPOCH_FILE=<path> carbontrack epoch`). A reader that went
/// away costs nothing.
fn announce(epoch_file: &Path) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{EPOCH_FILE_ENV}={}", epoch_file.display());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_counted_after_the_name() {
        let tail = "S 1 1 1 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000 10";
        for (stat, want) in [
            (format!("42 (python3) {tail}"), Some(123_456)),
            (format!("42 (a b) c) {tail}"), Some(123_456)),
            (format!("42 (python3) {}", tail.replacen('S', "Z", 1)), None),
            ("42 (short) S 1".to_string(), None),
            ("garbage".to_string(), None),
        ] {
            assert_eq!(start_time(&stat), want, "{stat}");
        }
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(start_time(&own).is_some(), "{own}");
    }
}
