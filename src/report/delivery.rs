//! Delivering a job's total: the primitives the Epilog and flush
//! ([`super::epilog`]) and the joining of multi-node jobs ([`super::shared`])
//! both use: the outbox record of a run ([`Pending`]) and its delivery into
//! accounting (a segment written with sacctmgr and read back), the ledger and
//! the user's work dir, each done once and recorded as done.
//!
//! Job ids are reused, so a record is a run ([`RunKey`]) and is written only
//! into the job accounting gives that id now if that job is the run measured
//! ([`Expect`]): sacctmgr writes the newest job with an id, whatever else is
//! asked, so an earlier run's figures go to the ledger only, with one line.
//!
//! Its own module so that the Epilog's run and the `shared=` joining both
//! import it and not each other.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::carbon::intensity::{EnergySpan, IntensitySpec, Resolved};
use crate::carbon::live::{LiveSettings, resolve_live};
use crate::config::Config;
use crate::footprint::{self, Row};
use crate::spool::{RunKey, Spool};
use crate::units::Joules;

use super::accounting::{self, Segment};
use super::cmd::{self, CmdError};
use super::ledger::{self, Appended};
use super::sacct;
use super::total::{JobMeta, JobTotal};

/// How long each sacct/sacctmgr call may take.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the epilog waits for accounting to record a job's end before
/// queueing it.
pub const DEFAULT_END_WAIT: Duration = Duration::from_secs(3);

/// How long one epilog spends on older queued jobs after its own.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(2);

/// How long writing a job's files into its work dir may take in an Epilog
/// or flush before they stay queued (a server that stopped answering).
pub const DEFAULT_USER_FILES_WAIT: Duration = Duration::from_secs(3);

/// How long after a multi-node job's first part arrived its missing parts
/// are waited for before the total goes out without them (marked
/// incomplete). Node Epilogs of one job start within seconds of each other;
/// a part later than this comes from a node that failed.
pub const DEFAULT_PART_WAIT: Duration = Duration::from_secs(600);

/// How far the clocks of a node and of slurmctld may differ. A run is
/// measured from after its job's start in accounting (the prolog runs once
/// slurmctld has started the job) to after its end; an earlier job with the
/// same id was measured to its end before the later job started (its Epilog
/// ran first). So a record measured to more than this before accounting's
/// start of the job is an earlier job's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// How long after a run's end accounting may still lack its job before the
/// run is taken for one that accounting will never have (its cluster was
/// renamed or its database replaced, and no later job took the id): its
/// figures then go to the ledger only.
pub const NEVER_IN_ACCOUNTING: Duration = Duration::from_secs(7 * 86_400);

/// The Slurm commands and their limits; overridable so tests and odd sites
/// can name them.
#[derive(Debug, Clone)]
pub struct Tools {
    pub sacct: PathBuf,
    pub sacctmgr: PathBuf,
    pub timeout: Duration,
    /// How long to wait for accounting to record the job's end.
    pub end_wait: Duration,
    /// How long a multi-node job's missing parts are waited for.
    pub part_wait: Duration,
    /// How long writing the user's files into the work dir may take.
    pub user_files_wait: Duration,
    /// The job whose Epilog this is (`None`: `flush`): only it and `flush`
    /// try again a work dir that did not answer before.
    pub own_job: Option<u32>,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            sacct: PathBuf::from("sacct"),
            sacctmgr: PathBuf::from("sacctmgr"),
            timeout: DEFAULT_COMMAND_TIMEOUT,
            end_wait: DEFAULT_END_WAIT,
            part_wait: DEFAULT_PART_WAIT,
            user_files_wait: DEFAULT_USER_FILES_WAIT,
            own_job: None,
        }
    }
}

/// A job's total waiting in the outbox, with what has been delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub total: JobTotal,
    /// The segment as computed at the epilog (kept, so a retry writes the
    /// same text even under a changed configuration).
    pub segment: String,
    /// The job field it goes into.
    pub field: String,
    pub accounting_done: bool,
    /// `None`: no ledger was configured when the job ended.
    pub ledger: Option<PathBuf>,
    pub ledger_done: bool,
    pub attempts: u32,
    pub last_error: String,
    /// The user's files, for a total joined from several nodes (a one-node
    /// job's files are written by the plugin on its node).
    #[serde(default)]
    pub user_files: Option<UserFiles>,
    #[serde(default)]
    pub user_files_done: bool,
    /// Tries whose work dir did not answer in time.
    #[serde(default)]
    pub user_files_late: u32,
    /// Keep the job's directory once delivered: in the shared directory it
    /// holds `total.csv`, the proof that stops a late part from being
    /// delivered a second time.
    #[serde(default)]
    pub keep_job_dir: bool,
    /// Why this run's figures are not written into accounting: its job id
    /// belongs to a later job there (ids are reused), and `sacctmgr` only
    /// writes the newest job with an id. The ledger still takes them.
    #[serde(default)]
    pub superseded: Option<String>,
}

/// The footprint and summary to write into the job's work dir, as its user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserFiles {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub dir: PathBuf,
    pub csv: String,
    pub txt: String,
    /// The power timeline, `carbontrack-<jobid>.svg`, where one was drawn
    /// (a one-node job's extern step draws it; a record without one, or one
    /// written before the timeline existed, delivers the CSV and summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
}

/// Where one delivery attempt got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Both parts done; the record and the job's spool state are gone.
    Done,
    /// Something is left; the record stays for a retry.
    Queued,
    /// Another process is delivering this job right now.
    Busy,
}

/// Why accounting could not take the segment yet.
#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    #[error("{0}")]
    Command(#[from] CmdError),
    #[error("job {0} is not in accounting yet (slurmctld has not sent it to slurmdbd)")]
    NotYet(u32),
    #[error("accounting has no end time for job {0} yet (slurmctld has not sent its completion)")]
    NotEnded(u32),
    #[error("sacctmgr changed nothing for job {job}: {output}")]
    NotModified { job: u32, output: String },
    #[error(
        "sacctmgr reported job {0} modified, but accounting does not hold the segment (slurmdbd stopped before the commit, or another writer replaced the field)"
    )]
    NotKept(u32),
    #[error(
        "accounting's job {job} started at {accounting}, after this run's measurement ended ({run}): the id now belongs to a later job"
    )]
    Superseded {
        job: u32,
        accounting: String,
        run: String,
    },
    #[error(
        "accounting's newest job {job} ended at {end}, before this run's measurement began ({run}): this run is not in accounting yet"
    )]
    EarlierInAccounting { job: u32, end: String, run: String },
    #[error("sacct's answer for job {job} does not read: {output}")]
    Unreadable { job: u32, output: String },
    #[error(
        "{field} holds Princeton jobstats' data (JS1:...), which jobstats reads back only when it is alone in the field; beside jobstats set accounting_field=SystemComment"
    )]
    Jobstats { job: u32, field: String },
}

impl AccountingError {
    /// Whether slurmdbd (or the command) is unreachable, so trying further
    /// jobs now is pointless.
    pub fn is_outage(&self) -> bool {
        matches!(self, AccountingError::Command(_))
    }
}

/// A log sink: one line per event, each starting `carbontrack: `.
pub type Log<'a> = &'a mut dyn FnMut(String);

/// What the Epilog knows of the job from its environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpilogJob {
    pub job_id: u32,
    pub meta: JobMeta,
    /// This node, as Slurm names it (`SLURMD_NODENAME`).
    pub node: String,
    /// Every node of the job (empty when unknown).
    pub nodes: Vec<String>,
    /// Why the node list could not be read, if it could not.
    pub nodes_error: Option<String>,
}

impl EpilogJob {
    /// From slurmd's Epilog environment (`SLURM_JOB_ID`, `SLURM_JOB_USER`,
    /// `SLURM_JOB_ACCOUNT`, `SLURM_JOB_PARTITION`, `SLURM_CLUSTER_NAME`,
    /// `SLURMD_NODENAME`, and the node list: `SLURM_JOB_NODELIST`, which
    /// Slurm 22.05 calls `SLURM_NODELIST` in the Epilog).
    pub fn from_env() -> Result<EpilogJob, String> {
        let get = |k: &str| std::env::var(k).unwrap_or_default();
        let id = get("SLURM_JOB_ID");
        let job_id = id.trim().parse().map_err(|_| {
            format!("SLURM_JOB_ID is `{id}`, not a job id (run from the Epilog, or set it)")
        })?;
        let list = Some(get("SLURM_JOB_NODELIST"))
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| get("SLURM_NODELIST"));
        let (nodes, nodes_error) = match crate::hostlist::expand(&list) {
            Ok(n) => (n, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Ok(EpilogJob {
            node: get("SLURMD_NODENAME"),
            nodes,
            nodes_error,
            job_id,
            meta: JobMeta {
                user: get("SLURM_JOB_USER"),
                account: get("SLURM_JOB_ACCOUNT"),
                partition: get("SLURM_JOB_PARTITION"),
                cluster: get("SLURM_CLUSTER_NAME"),
            },
        })
    }
}

/// What one epilog or flush run did, for the exit status of `flush` and for
/// tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunReport {
    pub delivered: Vec<u32>,
    pub queued: Vec<u32>,
    /// Spool files that could not be read and were moved aside.
    pub corrupt: Vec<PathBuf>,
}

pub(super) fn tally(report: &mut RunReport, job: u32, d: Delivered) {
    match d {
        Delivered::Done => report.delivered.push(job),
        Delivered::Queued => report.queued.push(job),
        Delivered::Busy => {}
    }
}

pub(super) fn retry_outbox(
    spool: &Spool,
    tools: &Tools,
    skip: Option<u32>,
    deadline: Option<Instant>,
    outage: &mut bool,
    report: &mut RunReport,
    log: Log,
) {
    let jobs = match spool.outbox_jobs() {
        Ok(j) => j,
        Err(e) => {
            log(format!("carbontrack: outbox: {e}"));
            return;
        }
    };
    // The Epilog's own job was just tried; an earlier run of the same id
    // waits for the next Epilog or flush.
    for run in jobs.into_iter().filter(|r| Some(r.job_id) != skip) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            report.queued.push(run.job_id);
            continue;
        }
        let d = deliver(spool, tools, run, outage, log);
        tally(report, run.job_id, d);
    }
}

/// Fills what the Epilog's environment did not say from the hand-off.
pub(super) fn fill_meta(meta: &mut JobMeta, h: &crate::job::JobInfo) {
    for (mine, theirs) in [
        (&mut meta.user, &h.user),
        (&mut meta.account, &h.account),
        (&mut meta.partition, &h.partition),
    ] {
        if mine.is_empty() {
            mine.clone_from(theirs);
        }
    }
}

/// A fresh outbox record for a total.
pub(super) fn pending_of(config: &Config, total: JobTotal) -> Pending {
    Pending {
        segment: Segment::of(&total).format(),
        total,
        field: config.accounting_field.clone(),
        accounting_done: false,
        ledger: config.ledger.clone(),
        ledger_done: config.ledger.is_none(),
        attempts: 0,
        last_error: String::new(),
        user_files: None,
        user_files_done: true,
        user_files_late: 0,
        keep_job_dir: false,
        superseded: None,
    }
}

/// A node footprint as the sampler writes it: rows, then the total row
/// last. A file cut short loses its total row, so a missing one means
/// truncated, not "smaller job".
pub fn read_node_footprint(p: &Path) -> Result<Vec<Row>, String> {
    let bytes = crate::safe_fs::read_own(p, crate::spool::MAX_FILE).map_err(|e| e.to_string())?;
    let rows = footprint::read_csv(&bytes[..]).map_err(|e| e.to_string())?;
    match rows.last() {
        Some(r) if r.is_total() && rows.len() > 1 => Ok(rows),
        Some(_) => Err("no total row at the end (truncated?)".into()),
        None => Err("no rows".into()),
    }
}

/// The live source's intensity for the job's window, when one is configured:
/// the sampler could not query it, the Epilog can.
pub(super) fn live_intensity(config: &Config, rows: &[Row], now: SystemTime) -> Option<Resolved> {
    let IntensitySpec::ElectricityMaps(zone) = &config.intensity else {
        return None;
    };
    let settings = LiveSettings::from_config(config)?;
    let spans: Vec<EnergySpan> = rows
        .iter()
        .filter_map(|r| {
            let a = humantime::parse_rfc3339_weak(&r.start).ok()?;
            let b = humantime::parse_rfc3339_weak(&r.end).ok()?;
            Some((a, b, Joules(r.energy_j?)))
        })
        .collect();
    let start = spans.iter().map(|s| s.0).min()?;
    let end = spans.iter().map(|s| s.1).max()?;
    Some(resolve_live(
        zone,
        &settings,
        &config.intensity_fallback(),
        (start, end),
        &spans,
        now,
    ))
}

pub(super) fn apply_intensity(rows: &mut [Row], r: &Resolved) {
    for row in rows {
        row.intensity_g_per_kwh = Some(r.g_per_kwh.0);
        row.co2e_g = row.energy_kwh.map(|k| k * r.g_per_kwh.0);
        row.intensity_source = r.describe();
    }
}

pub(super) fn to_json(p: &Pending) -> Vec<u8> {
    serde_json::to_vec_pretty(p).unwrap_or_default()
}

/// Delivers one outbox record: accounting, then the ledger, then the user's
/// files, recording each success; removes the record when all are done.
/// After an outage (`*outage`), accounting is not tried again in this run.
pub fn deliver(
    spool: &Spool,
    tools: &Tools,
    run: RunKey,
    outage: &mut bool,
    log: Log,
) -> Delivered {
    let job = run.job_id;
    let _lock = match spool.try_lock_outbox(run) {
        Ok(Some(l)) => l,
        Ok(None) => return Delivered::Busy,
        Err(e) => {
            log(format!("carbontrack: job {job}: {e}"));
            return Delivered::Queued;
        }
    };
    let path = spool.outbox_path(run);
    let text = match spool.read_file(&path) {
        Ok(t) => t,
        // Delivered by another process between listing and locking.
        Err(e) if e.is_not_found() => {
            let _ = spool.remove_outbox(run);
            return Delivered::Busy;
        }
        Err(e) => {
            log(format!("carbontrack: job {job}: outbox record: {e}"));
            return Delivered::Queued;
        }
    };
    let mut p: Pending = match serde_json::from_slice(&text) {
        Ok(p) => p,
        Err(e) => {
            let moved = spool.set_aside(job, &path);
            log(format!(
                "carbontrack: job {job}: skipped unreadable outbox record {}: {e}; {moved}",
                path.display()
            ));
            let _ = spool.remove_outbox(run);
            return Delivered::Queued;
        }
    };
    // Only the user's files are left, and their work dir did not answer
    // before: that is for `flush` and the job's own Epilog, and another
    // job's Epilog says nothing about it.
    if p.accounting_done
        && p.ledger_done
        && !p.user_files_done
        && p.user_files_late > 0
        && tools.own_job.is_some_and(|own| own != job)
    {
        return Delivered::Queued;
    }
    let before = p.clone();
    let expect = Expect {
        cluster: &p.total.cluster,
        start: humantime::parse_rfc3339_weak(&p.total.start).ok(),
        end: humantime::parse_rfc3339_weak(&p.total.end).ok(),
    };
    p.attempts += 1;
    let mut errors = Vec::new();
    if !p.accounting_done && !*outage {
        match set_segment(tools, job, &expect, &p.field, &p.segment) {
            Ok(()) => p.accounting_done = true,
            Err(e @ AccountingError::Superseded { .. }) => {
                // sacctmgr writes the newest job with an id: this run's
                // figures would land in another job. The ledger takes them
                // (said once, when delivered).
                p.superseded = Some(e.to_string());
                p.accounting_done = true;
                p.user_files_done = true;
            }
            Err(e @ AccountingError::Jobstats { .. }) => {
                p.superseded = Some(e.to_string());
                p.accounting_done = true;
            }
            Err(e @ (AccountingError::NotYet(_) | AccountingError::EarlierInAccounting { .. }))
                if expect
                    .end
                    .is_some_and(|t| t + NEVER_IN_ACCOUNTING < SystemTime::now()) =>
            {
                let on = if expect.cluster.is_empty() {
                    String::new()
                } else {
                    format!(" on cluster {}", expect.cluster)
                };
                let which = match e {
                    AccountingError::NotYet(_) => String::new(),
                    e => format!(" that this run could be ({e})"),
                };
                p.superseded = Some(format!(
                    "accounting still has no job {job}{on}{which} {} days after this run ended",
                    NEVER_IN_ACCOUNTING.as_secs() / 86_400
                ));
                p.accounting_done = true;
            }
            Err(e) => {
                *outage |= e.is_outage();
                errors.push(format!("accounting: {e}"));
            }
        }
    } else if !p.accounting_done {
        errors.push("accounting: skipped after an earlier failure in this run".into());
    }
    if !p.ledger_done
        && let Some(l) = &p.ledger
    {
        match ledger::append(l, &p.total) {
            Ok(Appended::Yes | Appended::AlreadyThere) => p.ledger_done = true,
            Err(e) => errors.push(e.to_string()),
        }
    }
    // A work dir that did not answer before is tried again by `flush` and
    // this job's own Epilog only, so that it never slows down another
    // job's Epilog on the node.
    let user_files_now = !p.user_files_done
        && (p.user_files_late == 0 || tools.own_job.is_none_or(|own| own == job));
    if user_files_now && let Some(u) = &p.user_files {
        match write_user_files(job, u, tools.user_files_wait, p.user_files_late, log) {
            // Done, or refused for a reason that does not mend itself (the
            // work dir gone, not writable by its owner): the total is kept
            // by the admin either way.
            UserFilesOutcome::Done => p.user_files_done = true,
            UserFilesOutcome::Late => {
                p.user_files_late += 1;
                errors.push(format!(
                    "the user's files: {} is not answering",
                    u.dir.display()
                ));
            }
        }
    } else if !p.user_files_done && p.user_files.is_none() {
        p.user_files_done = true;
    }
    if p.accounting_done && p.ledger_done && p.user_files_done {
        // Only the record goes: the job's directory was dropped when the
        // record was queued (a later job with this id may own it by now).
        // A record from before runs were keyed still has its directory.
        if run.start.is_none()
            && !p.keep_job_dir
            && let Err(e) = spool.remove_job(job)
        {
            log(format!("carbontrack: job {job}: delivered, but {e}"));
        }
        // Watched for a while, so that a writer replacing the whole field
        // after this does not erase the segment for good (watch.rs).
        if p.superseded.is_none()
            && let Err(e) = super::watch::record(
                spool,
                run,
                &super::watch::Watched::delivered(
                    run.job_id,
                    &p.total.cluster,
                    (&p.total.start, &p.total.end),
                    &p.field,
                    &p.segment,
                    SystemTime::now(),
                ),
            )
        {
            log(format!(
                "carbontrack: job {job}: delivered, but cannot watch the segment: {e}"
            ));
        }
        if let Err(e) = spool.remove_outbox(run) {
            log(format!("carbontrack: job {job}: delivered, but {e}"));
        }
        let kwh = p
            .total
            .energy_kwh
            .map_or("unknown".into(), footprint::fmt_kwh);
        match (&p.superseded, &p.ledger) {
            (Some(why), Some(l)) => log(format!(
                "carbontrack: job {run}: not written to {}: {why}; {kwh} kWh delivered to the ledger only ({})",
                p.field,
                l.display()
            )),
            (Some(why), None) => log(format!(
                "carbontrack: job {run}: not written to {}: {why}; no ledger is configured, so its {kwh} kWh are dropped",
                p.field
            )),
            (None, l) => log(format!(
                "carbontrack: job {job}: delivered {kwh} kWh to {}{}",
                p.field,
                l.as_ref()
                    .map(|l| format!(" and {}", l.display()))
                    .unwrap_or_default()
            )),
        }
        return Delivered::Done;
    }
    p.last_error = errors.join("; ");
    if p != before
        && let Err(e) = spool.write_outbox(run, &to_json(&p))
    {
        log(format!("carbontrack: job {job}: {e}"));
    }
    log(format!(
        "carbontrack: job {job}: queued for retry (attempt {}): {}",
        p.attempts, p.last_error
    ));
    Delivered::Queued
}

/// Where writing the user's files got to.
enum UserFilesOutcome {
    /// Written, or refused for good (said in the log).
    Done,
    /// The work dir did not answer within the wait.
    Late,
}

/// Writes the job's CSV and summary into its work dir as its user, on a
/// thread of its own, waiting at most `wait`: a work dir on a server that
/// stopped answering must not hold up the Epilog. A thread left waiting ends
/// with the process.
fn write_user_files(
    job: u32,
    u: &UserFiles,
    wait: Duration,
    late_before: u32,
    log: Log,
) -> UserFilesOutcome {
    let id = crate::ffi::identity::FsIdentity {
        uid: u.uid,
        gid: u.gid,
        groups: u.groups.clone(),
    };
    let mut files = vec![
        (format!("carbontrack-{job}.csv"), u.csv.clone().into_bytes()),
        (format!("carbontrack-{job}.txt"), u.txt.clone().into_bytes()),
    ];
    if let Some(svg) = &u.svg {
        files.push((
            crate::tracker::svg_name(&job.to_string()),
            svg.clone().into_bytes(),
        ));
    }
    let dir = u.dir.clone();
    // One run (an Epilog, a flush) gives a directory that did not answer no
    // second try, and stops trying any after a few: 200 queued jobs under
    // one dead home directory cost it one wait, not 200.
    {
        let dead = lock_dead();
        if dead.len() >= MAX_DEAD_DIRS || dead.contains(&dir) {
            return UserFilesOutcome::Late;
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("carbontrack-io".into())
        .spawn(move || {
            let r: Vec<_> = files
                .iter()
                .map(|(name, bytes)| {
                    crate::deliver::write_user_file(Some(&id), &dir, name, bytes)
                        .map_err(|e| (e.to_string(), e.is_permanent()))
                })
                .collect();
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        log(format!(
            "carbontrack: job {job}: cannot start a thread to write the user's files: {e}"
        ));
        return UserFilesOutcome::Late;
    }
    match rx.recv_timeout(wait) {
        Ok(results) => {
            let errors: Vec<&(String, bool)> =
                results.iter().filter_map(|r| r.as_ref().err()).collect();
            if errors.is_empty() {
                if late_before > 0 {
                    log(format!(
                        "carbontrack: job {job}: {} answers again; the user's files are delivered",
                        u.dir.display()
                    ));
                }
                return UserFilesOutcome::Done;
            }
            let for_good = errors.iter().all(|(_, permanent)| *permanent);
            let give_up = for_good || late_before + 1 >= MAX_USER_FILE_TRIES;
            for (e, _) in &errors {
                log(format!(
                    "carbontrack: job {job}: {e}; {}",
                    if give_up {
                        "the user's files are not written (the total is in accounting and the ledger)"
                            .to_string()
                    } else if late_before == 0 {
                        "the user's files stay queued for `carbontrack flush`".to_string()
                    } else {
                        format!("try {} of {MAX_USER_FILE_TRIES}", late_before + 1)
                    }
                ));
            }
            if give_up {
                UserFilesOutcome::Done
            } else {
                UserFilesOutcome::Late
            }
        }
        Err(_) => {
            lock_dead().push(u.dir.clone());
            if late_before == 0 {
                log(format!(
                    "carbontrack: job {job}: {} is not answering (no reply in {:.0} s); the user's files stay queued for `carbontrack flush`",
                    u.dir.display(),
                    wait.as_secs_f64()
                ));
            }
            UserFilesOutcome::Late
        }
    }
}

/// Tries for a job's user files that failed for a reason that may mend (a
/// full disk, a quota) before they are given up: a week of `flush` every 5
/// minutes.
const MAX_USER_FILE_TRIES: u32 = 2016;

/// Directories this process found not answering, at most this many tried.
const MAX_DEAD_DIRS: usize = 3;

static DEAD_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn lock_dead() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    DEAD_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The spool file with a job's user files still to deliver, left by the
/// extern step when the work dir did not answer.
pub const USER_FILES_RECORD: &str = "user-files.json";

/// Reads the job's field, merges the segment in, and writes it back if it
/// changed. Returns once accounting holds the segment.
///
/// Waits (up to `end_wait`) until accounting has the job's end: slurmctld
/// sends the job's completion record, which carries its own copy of the
/// comment fields, asynchronously; written before it, the segment could be
/// overwritten by it.
pub fn set_segment(
    tools: &Tools,
    job: u32,
    expect: &Expect,
    field: &str,
    segment: &str,
) -> Result<(), AccountingError> {
    let deadline = Instant::now() + tools.end_wait;
    let current = loop {
        let f = read_field(tools, job, expect.cluster, field)?;
        if let Some(f) = &f {
            expect.check(job, f)?;
        }
        match f {
            Some(JobField {
                ended: true, text, ..
            }) => break text,
            Some(_) | None if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Some(_) => return Err(AccountingError::NotEnded(job)),
            None => return Err(AccountingError::NotYet(job)),
        }
    };
    // Any text added after jobstats' base64 can make it unreadable to
    // jobstats (src/report/watch.rs): that field is not ours to share.
    if super::watch::is_jobstats(&current) {
        return Err(AccountingError::Jobstats {
            job,
            field: field.to_string(),
        });
    }
    let merged = accounting::merge(&current, segment);
    if merged == current {
        return Ok(());
    }
    let mut args = vec![
        "-i".to_string(),
        "modify".into(),
        "job".into(),
        "where".into(),
        format!("jobid={job}"),
    ];
    if !expect.cluster.is_empty() {
        args.push(format!("cluster={}", expect.cluster));
    }
    args.extend(["set".into(), format!("{field}={merged}")]);
    let out = cmd::run(&tools.sacctmgr, args, &[], tools.timeout)?;
    let said = format!("{}{}", out.stdout, out.stderr);
    if said.contains("Nothing modified") || said.contains("Nothing to modify") {
        return Err(AccountingError::NotModified {
            job,
            output: cmd::one_line(&said),
        });
    }
    // sacctmgr says "Modified" before it commits, and exits 0 whether the
    // commit took or not: a slurmdbd stopped between the two (an upgrade, a
    // restart) loses the write silently (one job in a 1000-job soak). Only
    // what accounting then holds counts; anything else is tried again.
    match read_field(tools, job, expect.cluster, field)? {
        Some(f) if accounting::merge(&f.text, segment) == f.text => Ok(()),
        _ => Err(AccountingError::NotKept(job)),
    }
}

/// Which job a record's segment belongs to: accounting's job with the id
/// must be on this cluster and be the run the record measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect<'a> {
    /// The job's cluster (empty: the local one).
    pub cluster: &'a str,
    /// When the run's measurement started and ended (`None`: unknown, not
    /// checked).
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
}

impl Expect<'_> {
    /// Whether accounting's newest job with this id is the measured run.
    pub(super) fn check(&self, job: u32, f: &JobField) -> Result<(), AccountingError> {
        let show = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        if let (Some(run_end), Some(start)) = (self.end, f.start)
            && run_end + CLOCK_SKEW < start
        {
            return Err(AccountingError::Superseded {
                job,
                accounting: show(start),
                run: show(run_end),
            });
        }
        if let (Some(run), Some(end)) = (self.start, f.end)
            && end + CLOCK_SKEW < run
        {
            return Err(AccountingError::EarlierInAccounting {
                job,
                end: show(end),
                run: show(run),
            });
        }
        Ok(())
    }
}

/// A job's field as accounting holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobField {
    /// Whether accounting has the job's end time.
    pub ended: bool,
    /// The job's start and end in accounting, when known.
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    pub text: String,
}

/// The job's field as accounting holds it (the newest job with this id, as
/// sacct gives for `-j`); `None` when sacct knows no such job. `-X`: the
/// allocation's record only, not its steps; times in UTC; records read with
/// a delimiter no field can hold ([`sacct`]).
pub fn read_field(
    tools: &Tools,
    job: u32,
    cluster: &str,
    field: &str,
) -> Result<Option<JobField>, AccountingError> {
    let (stdout, delim) = sacct::query(
        &tools.sacct,
        tools.timeout,
        cluster,
        &job.to_string(),
        &format!("End,Start,{field}"),
    )?;
    if stdout.trim().is_empty() {
        return Ok(None);
    }
    let (records, _) = sacct::records(&stdout, &delim, 3);
    let Some(f) = records.into_iter().next_back() else {
        return Err(AccountingError::Unreadable {
            job,
            output: cmd::one_line(&stdout),
        });
    };
    let known = |t: &str| !matches!(t.trim(), "" | "Unknown" | "None");
    Ok(Some(JobField {
        ended: known(f[0]),
        end: super::aggregate::parse_time(f[0]),
        start: super::aggregate::parse_time(f[1]),
        text: f[2].to_string(),
    }))
}
