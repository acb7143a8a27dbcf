//! `carbontrack status [JOBID]`: a running job's energy so far and its
//! projection to the time limit.
//!
//! Root (an admin on the node) reads the sampler's live footprint in the
//! spool; anyone else gets the job's own live summary file
//! (`carbontrack-<jobid>.txt` in its work dir), which the sampler refreshes
//! as the user. Either way it is this node's view: run it on a node of the
//! job (e.g. `srun --jobid=N --overlap carbontrack status`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::carbon::intensity::Resolved;
use crate::carbon::summary::{SummaryInput, render_live};
use crate::config::Config;
use crate::footprint::{self, Row};
use crate::spool::Spool;
use crate::units::GramsPerKwh;

use super::cmd;

/// What `squeue` says about a running job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueInfo {
    pub time_limit: Option<Duration>,
    pub work_dir: Option<PathBuf>,
}

/// Slurm's time format: `[D-]HH:MM:SS`, `MM:SS`, `M`, or `UNLIMITED`.
pub fn parse_slurm_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let secs = match (parts.as_slice(), days > 0) {
        ([h, m, s], _) => h * 3600 + m * 60 + s,
        ([h, m], true) => h * 3600 + m * 60,
        ([m, s], false) => m * 60 + s,
        ([h], true) => h * 3600,
        ([m], false) => m * 60,
        _ => return None,
    };
    Some(Duration::from_secs(days * 86_400 + secs))
}

/// Time limit and work dir from `squeue -h -j N -o %l|%Z`.
pub fn queue_info(squeue: &Path, job: u32, timeout: Duration) -> Result<QueueInfo, cmd::CmdError> {
    let out = cmd::run(
        squeue,
        ["-h", "-j", &job.to_string(), "-o", "%l|%Z"],
        &[],
        timeout,
    )?;
    let line = out.stdout.lines().next().unwrap_or_default();
    let (limit, dir) = line.split_once('|').unwrap_or((line, ""));
    Ok(QueueInfo {
        time_limit: parse_slurm_duration(limit),
        work_dir: (!dir.trim().is_empty()).then(|| PathBuf::from(dir.trim())),
    })
}

/// The live summary from the spool's live footprints of `job`, or `None`
/// when this node has none.
pub fn from_spool(
    config: &Config,
    job: u32,
    time_limit: Option<Duration>,
    now: SystemTime,
) -> Result<Option<String>, String> {
    let spool = Spool::open(&config.spool).map_err(|e| e.to_string())?;
    let mut rows: Vec<Row> = Vec::new();
    for p in spool.live_footprints(job).map_err(|e| e.to_string())? {
        let bytes = spool.read_file(&p).map_err(|e| e.to_string())?;
        let r = footprint::read_csv(&bytes[..]).map_err(|e| format!("{}: {e}", p.display()))?;
        rows.extend(r.into_iter().filter(|r| !r.is_total()));
    }
    Ok(render_rows(&job.to_string(), &rows, time_limit, now))
}

/// The live summary of footprint rows so far (pure).
pub fn render_rows(
    job: &str,
    rows: &[Row],
    time_limit: Option<Duration>,
    now: SystemTime,
) -> Option<String> {
    let t = footprint::total_of(rows)?;
    let elapsed = Duration::from_secs_f64(t.duration_s.max(0.0));
    let intensity = Resolved {
        g_per_kwh: GramsPerKwh(t.intensity_g_per_kwh.unwrap_or(0.0)),
        source: t.intensity_source.clone(),
        note: None,
    };
    Some(render_live(
        &SummaryInput {
            job_id: job,
            rows,
            elapsed,
            time_limit,
            pue: t.pue,
            intensity: &intensity,
            epochs: None,
        },
        now,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::total::tests::row;

    #[test]
    fn slurm_durations() {
        for (s, want) in [
            ("1:00:00", Some(3600)),
            ("2-00:00:00", Some(172_800)),
            ("1-2", Some(93_600)),
            ("30:00", Some(1800)),
            ("5", Some(300)),
            ("UNLIMITED", None),
            ("INVALID", None),
        ] {
            assert_eq!(
                parse_slurm_duration(s),
                want.map(Duration::from_secs),
                "{s}"
            );
        }
    }

    #[test]
    fn live_summary_projects_to_the_limit() {
        // One hour at 1 kW (3.6 MJ) of a 4-hour limit: 4 kWh at the devices.
        let rows = vec![row("n1", "gpu", "GPU-a", Some(3.6e6))];
        let text = render_rows(
            "7",
            &rows,
            Some(Duration::from_secs(4 * 3600)),
            SystemTime::now(),
        )
        .unwrap();
        assert!(text.contains("job 7 (running"), "{text}");
        assert!(text.contains("Projected to the time limit"), "{text}");
        assert!(text.contains("average power 1000 W"), "{text}");
        assert_eq!(render_rows("7", &[], None, SystemTime::now()), None);
    }
}
