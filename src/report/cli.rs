//! The admin subcommands' flags and entry points; `src/bin/carbontrack.rs`
//! only dispatches here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};

use crate::config::Config;

use super::aggregate::{self, Filter, Format, GroupBy};
use super::delivery::{EpilogJob, Tools};
use super::epilog;
use super::plugstack::{self, Origin};
use super::{ledger, status};

/// Settings shared by the admin commands. By default they come from the
/// plugin's line in plugstack.conf; each flag overrides one key.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigFlags {
    /// plugstack.conf to read (default: PlugStackConfig of $SLURM_CONF).
    #[arg(long, value_name = "FILE")]
    pub plugstack: Option<PathBuf>,
    /// Override spool=.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<String>,
    /// Override ledger= (a path, or `none`).
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<String>,
    /// Override accounting_field= (AdminComment, Comment, SystemComment).
    #[arg(long, value_name = "FIELD")]
    pub accounting_field: Option<String>,
    /// Override pue=.
    #[arg(long, value_name = "PUE")]
    pub pue: Option<String>,
    /// Override intensity=.
    #[arg(long, value_name = "SPEC")]
    pub intensity: Option<String>,
    /// Override any other key, as in plugstack.conf (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The sacct command.
    #[arg(long, value_name = "PATH", default_value = "sacct")]
    pub sacct: PathBuf,
    /// The sacctmgr command.
    #[arg(long, value_name = "PATH", default_value = "sacctmgr")]
    pub sacctmgr: PathBuf,
    /// The squeue command.
    #[arg(long, value_name = "PATH", default_value = "squeue")]
    pub squeue: PathBuf,
    /// How long one Slurm command may run before it is killed.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub command_timeout: Duration,
    /// How long the epilog waits for accounting to record the job's end
    /// (slurmctld sends it asynchronously) before queueing the job.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub end_wait: Duration,
    /// How long after a multi-node job's first part reached the shared=
    /// directory its missing parts are waited for; then the parts present
    /// are delivered, marked incomplete.
    #[arg(long, value_name = "DURATION", default_value = "10min", value_parser = humantime::parse_duration)]
    pub part_wait: Duration,
}

impl ConfigFlags {
    fn overrides(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (k, val) in [
            ("spool", &self.spool),
            ("ledger", &self.ledger),
            ("accounting_field", &self.accounting_field),
            ("pue", &self.pue),
            ("intensity", &self.intensity),
        ] {
            if let Some(x) = val {
                v.push(format!("{k}={x}"));
            }
        }
        v.extend(self.set.iter().cloned());
        v
    }

    pub fn load(&self) -> Result<(Config, Origin), plugstack::PlugstackError> {
        plugstack::load(self.plugstack.as_deref(), &self.overrides())
    }

    pub fn tools(&self) -> Tools {
        Tools {
            sacct: self.sacct.clone(),
            sacctmgr: self.sacctmgr.clone(),
            timeout: self.command_timeout,
            end_wait: self.end_wait,
            part_wait: self.part_wait,
            ..Tools::default()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EpilogArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
    /// The job (default: $SLURM_JOB_ID, as slurmd sets it for the Epilog).
    #[arg(long, value_name = "JOBID")]
    pub job_id: Option<u32>,
    /// Time spent retrying older queued jobs after this one.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_budget: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct FlushArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// Slurm accounting (sacct): what Slurm lets the caller see.
    Sacct,
    /// The cluster ledger CSV.
    Ledger,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub partition: Option<String>,
    /// Jobs that ended at or after this time (UTC; YYYY-MM-DD[THH:MM[:SS]] or RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub since: Option<SystemTime>,
    /// Jobs that ended before this time.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub until: Option<SystemTime>,
    #[arg(long, value_enum)]
    pub by: Option<GroupBy>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[arg(long, value_enum, default_value = "sacct")]
    pub source: Source,
}

fn time_arg(s: &str) -> Result<SystemTime, String> {
    aggregate::parse_time(s).ok_or_else(|| {
        format!("`{s}` is not a time: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS] (UTC) or RFC 3339")
    })
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
    /// The job (default: $SLURM_JOB_ID).
    pub job_id: Option<u32>,
    /// The job's live state as JSON (used, predicted, budget, over_budget),
    /// for a job with --carbon-budget; inside the job or `carbontrack run`,
    /// from $CARBONTRACK_STATE_FILE.
    #[arg(long)]
    pub json: bool,
}

fn log_line(line: String) {
    eprintln!("{line}");
}

/// `carbontrack epilog`: always exits 0, whatever happens (a non-zero Epilog
/// drains the node); every problem is one line on stderr.
pub fn epilog_main(a: &EpilogArgs) -> ExitCode {
    let run = || {
        let (config, origin) = match a.config.load() {
            Ok(c) => c,
            Err(e) => {
                log_line(format!(
                    "carbontrack: epilog: {e}; nothing delivered, footprints kept"
                ));
                return;
            }
        };
        if let Origin::Defaults(why) = &origin
            && a.config.spool.is_none()
        {
            log_line(format!("carbontrack: epilog: {why}; using defaults"));
        }
        let mut job = match (EpilogJob::from_env(), a.job_id) {
            (Ok(j), _) => j,
            (Err(_), Some(_)) => EpilogJob::default(),
            (Err(e), None) => {
                log_line(format!("carbontrack: epilog: {e}"));
                return;
            }
        };
        if let Some(id) = a.job_id {
            job.job_id = id;
        }
        epilog::epilog(
            &config,
            &a.config.tools(),
            &job,
            a.retry_budget,
            &mut log_line,
        );
    };
    if std::panic::catch_unwind(run).is_err() {
        log_line(
            "carbontrack: epilog: internal error (panic); footprints kept in the spool".into(),
        );
    }
    ExitCode::SUCCESS
}

/// `carbontrack flush`: exit 0 when the outbox is empty afterwards, 1 when
/// jobs remain queued, 2 when it could not run.
pub fn flush_main(a: &FlushArgs) -> ExitCode {
    let config = match a.config.load() {
        Ok((c, _)) => c,
        Err(e) => {
            log_line(format!("carbontrack: flush: {e}"));
            return ExitCode::from(2);
        }
    };
    match epilog::flush(&config, &a.config.tools(), &mut log_line) {
        Ok(r) => {
            println!(
                "delivered {} job(s), {} still queued",
                r.delivered.len(),
                r.queued.len()
            );
            if r.queued.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            log_line(format!("carbontrack: flush: {e}"));
            ExitCode::from(2)
        }
    }
}

pub fn report_main(a: &ReportArgs) -> ExitCode {
    let config = match a.config.load() {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("carbontrack report: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = Filter {
        user: a.user.clone(),
        account: a.account.clone(),
        partition: a.partition.clone(),
        since: a.since,
        until: a.until,
    };
    if a.source == Source::Sacct && config.accounting_field == "Comment" {
        eprintln!("carbontrack report: {}", crate::config::COMMENT_WARNING);
    }
    let report = match a.source {
        Source::Sacct => aggregate::sacct_records(
            &a.config.sacct,
            &config.accounting_field,
            &filter,
            a.config.command_timeout.max(Duration::from_secs(60)),
        )
        .map(|(r, bad)| {
            if bad > 0 {
                eprintln!(
                    "carbontrack report: skipped {bad} sacct record(s) that did not read as {} fields",
                    aggregate::SACCT_COLUMNS.split(',').count() + 1
                );
            }
            aggregate::aggregate(&r, &filter, a.by)
        })
        .map_err(|e| e.to_string()),
        Source::Ledger => match &config.ledger {
            None => Err(
                "no ledger is configured (ledger=none); use --ledger FILE or --source sacct".into(),
            ),
            Some(p) => {
                // Streamed: a ledger of millions of jobs is never held whole.
                let mut agg = aggregate::Aggregator::new(&filter, a.by);
                ledger::report_into(p, &mut agg)
                    .map(|bad| {
                        if bad > 0 {
                            eprintln!(
                                "carbontrack report: skipped {bad} unreadable ledger row(s) in {}",
                                p.display()
                            );
                        }
                        agg.finish()
                    })
                    .map_err(|e| e.to_string())
            }
        },
    };
    match report {
        Ok((groups, total)) => {
            print!("{}", aggregate::render(&groups, &total, a.by, a.format));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("carbontrack report: {e}");
            ExitCode::from(1)
        }
    }
}

pub fn status_main(a: &StatusArgs) -> ExitCode {
    if a.json {
        return status::json_main(a.job_id, &a.config.squeue, a.config.command_timeout);
    }
    let job = match a.job_id.or_else(|| {
        std::env::var("SLURM_JOB_ID")
            .ok()
            .and_then(|v| v.parse().ok())
    }) {
        Some(j) => j,
        None => {
            eprintln!("carbontrack status: give a job id (or run it inside the job)");
            return ExitCode::from(2);
        }
    };
    let config = match a.config.load() {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("carbontrack status: {e}");
            return ExitCode::from(2);
        }
    };
    let queue = super::squeue::queue_info(&a.config.squeue, job, a.config.command_timeout);
    let limit = queue.as_ref().ok().and_then(|q| q.time_limit);
    // The spool is root's: anyone else goes to the job's own summary.
    let spool_view = if crate::ffi::identity::euid() == 0 {
        status::from_spool(&config, job, limit, SystemTime::now())
    } else {
        Err(format!(
            "the live footprint in {} is root's",
            config.spool.display()
        ))
    };
    if let Ok(Some(text)) = &spool_view {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    // Not root, or not on a node of the job: the user's own live summary,
    // read as the job's user.
    let work_view = queue.as_ref().ok().map(|q| status::from_work_dir(job, q));
    if let Some(Ok(text)) = &work_view {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    let spool_why = match &spool_view {
        Err(e) => e.clone(),
        Ok(_) => format!("no live footprint of job {job} on this node"),
    };
    let why = match (&queue, &work_view) {
        (Err(e), _) => format!("{spool_why}; squeue: {e}"),
        (_, Some(Err(e))) => format!("{spool_why}; {e}"),
        _ => format!("{spool_why} and no summary in its work dir"),
    };
    eprintln!("carbontrack status: job {job}: {why}");
    ExitCode::from(1)
}
