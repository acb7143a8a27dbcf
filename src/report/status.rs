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

use crate::carbon::budget::{
    Amount, CarbonBudget, LiveState, PredictedFrom, STATE_FILE_ENV, assess, state_file_name,
    unknown_lines,
};
use crate::carbon::intensity::Resolved;
use crate::carbon::predict::project_to_limit;
use crate::carbon::summary::{SummaryInput, render_live};
use crate::config::Config;
use crate::footprint::{self, Row};
use crate::spool::Spool;
use crate::units::{GramsPerKwh, Joules};

use super::squeue::{QueueInfo, queue_info};

/// The most of a user's summary file `status` reads (a summary is a few
/// kilobytes).
pub const MAX_SUMMARY: u64 = 1 << 20;

/// The job's live summary in its work dir, read as the job's user when the
/// caller is root (never as root: a link there could point anywhere), as the
/// caller otherwise; see [`crate::deliver::read_user_file`].
pub fn from_work_dir(job: u32, q: &QueueInfo) -> Result<String, String> {
    let dir = q
        .work_dir
        .as_ref()
        .ok_or_else(|| format!("squeue gave no work dir for job {job}"))?;
    let p = dir.join(format!("carbontrack-{job}.txt"));
    let id = if crate::ffi::identity::euid() == 0 {
        let (name, uid, gid) = q.user.clone().ok_or_else(|| {
            format!(
                "squeue gave no user for job {job}; {} is not read as root",
                p.display()
            )
        })?;
        let groups = crate::ffi::identity::user_groups(&name, gid).unwrap_or_else(|_| vec![gid]);
        Some(crate::ffi::identity::FsIdentity { uid, gid, groups })
    } else {
        None
    };
    let bytes =
        crate::deliver::read_user_file(id.as_ref(), &p, MAX_SUMMARY).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
    let budget = spool
        .read_handoff(job)
        .ok()
        .flatten()
        .and_then(|j| j.budget);
    Ok(render_rows(&job.to_string(), &rows, time_limit, now)
        .map(|text| text + &budget_lines(budget, &rows, time_limit)))
}

/// The budget block of the spool's view: used so far, and the projection to
/// the time limit (the epoch marks are the job's, in its work dir).
pub fn budget_lines(
    budget: Option<CarbonBudget>,
    rows: &[Row],
    time_limit: Option<Duration>,
) -> String {
    let (Some(b), Some(t)) = (budget, footprint::total_of(rows)) else {
        return String::new();
    };
    let (Some(energy_kwh), Some(co2e_g)) = (t.energy_kwh, t.co2e_g) else {
        return format!("\n{}\n", unknown_lines(b).join("\n"));
    };
    let used = Amount { energy_kwh, co2e_g };
    let elapsed = Duration::from_secs_f64(t.duration_s.max(0.0));
    let predicted = time_limit
        .zip(t.energy_j)
        .and_then(|(l, j)| project_to_limit(elapsed, Joules(j), l))
        .map(|p| {
            let k = p.projected_energy.0 / t.energy_j.unwrap_or(0.0).max(f64::MIN_POSITIVE);
            (
                Amount {
                    energy_kwh: used.energy_kwh * k,
                    co2e_g: used.co2e_g * k,
                },
                PredictedFrom::TimeLimit,
            )
        });
    let s = assess(b, used, predicted);
    let mut text = String::from("\n");
    if let Some(a) = s.alert() {
        text.push_str(&a);
        text.push('\n');
    }
    for l in s.lines(false) {
        text.push_str(&l);
        text.push('\n');
    }
    text
}

/// The job's state file in its work dir, read as in [`from_work_dir`].
fn state_from_work_dir(job: u32, q: &QueueInfo) -> Result<Vec<u8>, String> {
    let dir = q
        .work_dir
        .as_ref()
        .ok_or_else(|| format!("squeue gave no work dir for job {job}"))?;
    let p = dir.join(state_file_name(&job.to_string()));
    let id = match (crate::ffi::identity::euid(), &q.user) {
        (0, Some((name, uid, gid))) => Some(crate::ffi::identity::FsIdentity {
            uid: *uid,
            gid: *gid,
            groups: crate::ffi::identity::user_groups(name, *gid).unwrap_or_else(|_| vec![*gid]),
        }),
        (0, None) => return Err(format!("squeue gave no user for job {job}")),
        _ => None,
    };
    crate::deliver::read_user_file(id.as_ref(), &p, MAX_SUMMARY).map_err(|e| e.to_string())
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
            attribution: None,
        },
        now,
    ))
}

/// `carbontrack status --json`: the job's live state file, as the job (or
/// `carbontrack run`) left it: `$CARBONTRACK_STATE_FILE` inside the job,
/// else `carbontrack-<jobid>.json` in the work dir squeue names.
pub fn json_main(job_id: Option<u32>, squeue: &Path, timeout: Duration) -> std::process::ExitCode {
    use std::process::ExitCode;
    let env_job = std::env::var("SLURM_JOB_ID")
        .ok()
        .and_then(|v| v.parse().ok());
    let own = std::env::var_os(STATE_FILE_ENV)
        .map(PathBuf::from)
        .filter(|_| job_id.is_none() || job_id == env_job);
    let read = match (own, job_id.or(env_job)) {
        (Some(p), _) => {
            crate::deliver::read_user_file(None, &p, MAX_SUMMARY).map_err(|e| e.to_string())
        }
        (None, Some(job)) => queue_info(squeue, job, timeout)
            .map_err(|e| format!("squeue: {e}"))
            .and_then(|q| state_from_work_dir(job, &q)),
        (None, None) => Err(format!(
            "give a job id, or run it inside a job or `carbontrack run` with a budget \
             ({STATE_FILE_ENV} is not set)"
        )),
    };
    match read.and_then(|b| {
        serde_json::from_slice::<LiveState>(&b).map_err(|e| format!("not a state file: {e}"))
    }) {
        Ok(state) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&state).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "carbontrack status --json: {e} (the state file is kept while a job with \
                 --carbon-budget runs)"
            );
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::total::tests::row;

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

    #[test]
    fn the_spool_view_shows_the_budget() {
        // 1 kW for an hour: 1.5 kWh with PUE, 600 g at 400 g/kWh; four times
        // that by the 4-hour limit.
        let rows = vec![row("n1", "gpu", "GPU-a", Some(3.6e6))];
        let b = crate::carbon::budget::parse_budget;
        let four_h = Some(Duration::from_secs(4 * 3600));
        for (budget, limit, want) in [
            (
                "2kg",
                four_h,
                "\nOVER BUDGET: predicted 2.40 kg CO2e to the time limit, over the carbon budget \
                 of 2.00 kg CO2e (carbontrack does not stop the job)\nCarbon budget: 2.00 kg CO2e\n  \
                 Used so far: 600 g CO2e (30% of the budget)\n  Predicted to the time limit: \
                 2.40 kg CO2e (120% of the budget)\n",
            ),
            (
                "10kWh",
                four_h,
                "\nCarbon budget: 10.0 kWh\n  Used so far: 1.50 kWh (15% of the budget)\n  \
                 Predicted to the time limit: 6.00 kWh (60% of the budget)\n",
            ),
            (
                "500g",
                None,
                "\nOVER BUDGET: 600 g CO2e used, over the carbon budget of 500 g CO2e \
                 (carbontrack does not stop the job)\nCarbon budget: 500 g CO2e\n  Used so far: \
                 600 g CO2e (120% of the budget)\n",
            ),
        ] {
            assert_eq!(budget_lines(b(budget).ok(), &rows, limit), want, "{budget}");
        }
        assert_eq!(budget_lines(None, &rows, four_h), "");
        let none = vec![row("n1", "gpu", "GPU-a", None)];
        assert_eq!(
            budget_lines(b("1g").ok(), &none, four_h),
            "\nCarbon budget: 1.00 g CO2e\n  Used: unknown (nothing could be measured)\n"
        );
    }
}
