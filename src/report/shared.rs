//! One total for a job on several nodes, delivered once, whatever order the
//! nodes' Epilogs finish in and whether or not every node lives to run one.
//!
//! Node spools are node-local (the sampler's state lives there), so the
//! nodes' parts meet in a directory on a filesystem they all mount
//! (`shared=`), laid out like a spool:
//! ```text
//! <shared>/jobs/<jobid>/node-<node>.csv  each node's part, as its spool held it
//! <shared>/jobs/<jobid>/handoff          the job's user, groups and work dir
//! <shared>/jobs/<jobid>/job.json         the job's node list and accounting names
//! <shared>/jobs/<jobid>/.lock            held while parts are counted
//! <shared>/jobs/<jobid>/total.csv        the joined footprint, written once
//! <shared>/outbox/<jobid>-<start>.json|.lock  the total until delivered
//! ```
//! Job ids are reused (see [`crate::spool`]): a job's directory holds one
//! run. A part measured from after the parts already there arrived, and
//! whose measured time does not overlap theirs (or the total's), belongs to a
//! later run with the same id (the parts of one job all arrive after it
//! ended, whatever each node sampled): the earlier
//! run is then queued on its own, for the ledger only, if it was still
//! waiting for parts, its directory is dropped, and the later run starts
//! afresh, so an earlier run's claim, parts or work dir never reach it.
//!
//! A node whose part cannot be copied here (permissions, a full disk, the
//! filesystem not mounted) leaves `deposit.json` in its own spool's job
//! directory; the next Epilog or `carbontrack flush` on that node copies it.
//! Each Epilog copies its part in, then, holding the job's lock, counts the
//! parts. The one that finds all of them joins them, queues the total and
//! writes `total.csv`; the others leave. `total.csv` existing means "claimed":
//! a later Epilog, `flush`, or a part arriving late never queues the job
//! again. A part that never comes (its node's slurmd died, so its Epilog
//! never ran) is waited for `part_wait` after the first part arrived; then
//! the next `flush` or Epilog anywhere delivers the parts present, with the
//! total marked `incomplete: node X part missing`.
//!
//! Why not an `EpilogSlurmctld` aggregator: it starts while nodes still tear
//! down (slurm-facts.md), so it would have to poll for the parts anyway, on
//! a filesystem it can read from the controller; blocking slurmctld's script
//! slots for that is worse than letting the last node's Epilog finish the
//! job, which needs no waiting at all in the normal case.
//!
//! The lock is `flock`: on NFS it is carried by the NFS lock protocol and
//! needs working locks across clients (not mounted `nolock`; Lustre needs
//! `-o flock`). Directory caches on NFS may hide another node's fresh part
//! for a while; then no Epilog sees every part, and the job goes out complete
//! when `part_wait` has passed and the parts are visible.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::carbon::summary::render_final_from_rows;
use crate::config::{Config, ReportTarget};
use crate::footprint::{self, Row};
use crate::measure::{Status, fit_reasons};
use crate::spool::Spool;

use super::delivery::{
    CLOCK_SKEW, EpilogJob, Log, RunReport, Tools, UserFiles, apply_intensity, deliver, fill_meta,
    live_intensity, pending_of, read_node_footprint, retry_outbox, tally, to_json,
};
use super::total::{JobMeta, JobTotal};

/// The name of the joined footprint, the mark of a claimed job.
pub const TOTAL_FILE: &str = "total.csv";
const JOB_FILE: &str = "job.json";

/// In a node's own spool job directory: the Epilog's view of the job, left
/// when the part could not reach the shared directory, for a retry.
pub const DEPOSIT_FILE: &str = "deposit.json";

/// How long an Epilog waits for another node holding its job's lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long a sweep waits for another job's lock: whoever holds it is
/// delivering that job.
const SWEEP_LOCK_WAIT: Duration = Duration::from_millis(200);

/// A claimed job's directory stays this long, to recognise late parts.
const KEEP_CLAIMED: Duration = Duration::from_secs(30 * 86_400);

/// What every node knows of the job, kept beside the parts for `flush`,
/// which runs without the Epilog's environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct JobRecord {
    nodes: Vec<String>,
    meta: JobMeta,
}

/// What counting a job's parts came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The total of `run` is queued; `missing` names the nodes without a part.
    Queued {
        missing: Vec<String>,
        run: crate::spool::RunKey,
    },
    /// Parts are missing and not yet overdue.
    Waiting { missing: Vec<String> },
    /// Queued before (by this node or another).
    Claimed,
    /// Another process holds the job's lock.
    Busy,
    /// No readable part at all.
    Empty,
}

/// The Epilog's work for a multi-node job on one node: its part into the
/// shared directory, then the job's total if this was the last part.
#[allow(clippy::too_many_arguments)]
pub fn epilog(
    config: &Config,
    tools: &Tools,
    local: &Spool,
    shared: &Spool,
    job: &EpilogJob,
    outage: &mut bool,
    report: &mut RunReport,
    log: Log,
) {
    let id = job.job_id;
    let deposited = match deposit(config, local, shared, job, report, log) {
        Ok(d) => d,
        Err(e) => {
            log(format!(
                "carbontrack: job {id}: cannot leave this node's part in {}: {e}; it stays in {} and the next Epilog or `carbontrack flush` here tries again",
                shared.root().display(),
                local.job_dir(id).display()
            ));
            keep_for_retry(local, job, log);
            return;
        }
    };
    if !deposited {
        return;
    }
    let now = SystemTime::now();
    match complete(config, shared, id, tools.part_wait, now, LOCK_WAIT, log) {
        Ok(Outcome::Queued { run, .. }) => {
            let d = deliver(shared, tools, run, outage, log);
            tally(report, id, d);
        }
        Ok(Outcome::Waiting { missing }) => log(format!(
            "carbontrack: job {id}: part of {} kept; waiting for {}",
            job.node,
            missing.join(", ")
        )),
        Ok(Outcome::Busy) => log(format!(
            "carbontrack: job {id}: another node is counting the parts; it delivers"
        )),
        Ok(Outcome::Claimed | Outcome::Empty) => {}
        Err(e) => log(format!("carbontrack: job {id}: {e}")),
    }
}

/// Leaves the Epilog's view of a multi-node job in this node's spool, so
/// that the next Epilog or flush deposits its part (when it has one).
pub fn keep_for_retry(local: &Spool, job: &EpilogJob, log: Log) {
    let id = job.job_id;
    if local.node_footprints(id).map_or(true, |p| p.is_empty()) {
        return;
    }
    let text = serde_json::to_vec_pretty(job).unwrap_or_default();
    if let Err(e) = local.write_job_file(id, DEPOSIT_FILE, &text) {
        log(format!(
            "carbontrack: job {id}: cannot note the part for a retry: {e}; `carbontrack epilog --job-id {id}` on this node delivers it"
        ));
    }
}

/// Deposits the parts earlier Epilogs on this node could not leave in the
/// shared directory, and completes their jobs when they were the last.
#[allow(clippy::too_many_arguments)]
pub fn retry_deposits(
    config: &Config,
    tools: &Tools,
    local: &Spool,
    shared: &Spool,
    skip: Option<u32>,
    deadline: Option<Instant>,
    outage: &mut bool,
    report: &mut RunReport,
    log: Log,
) {
    let ids = match local.job_ids() {
        Ok(ids) => ids,
        Err(e) => {
            log(format!("carbontrack: {e}"));
            return;
        }
    };
    for id in ids.into_iter().filter(|j| Some(*j) != skip) {
        let marker = local.job_dir(id).join(DEPOSIT_FILE);
        let Ok(bytes) = local.read_file(&marker) else {
            continue;
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            report.queued.push(id);
            continue;
        }
        let job: EpilogJob = match serde_json::from_slice(&bytes) {
            Ok(j) => j,
            Err(e) => {
                let moved = local.set_aside(id, &marker);
                log(format!(
                    "carbontrack: job {id}: unreadable {}: {e}; {moved}",
                    marker.display()
                ));
                continue;
            }
        };
        log(format!(
            "carbontrack: job {id}: leaving the part of {} in {} again",
            job.node,
            shared.root().display()
        ));
        epilog(config, tools, local, shared, &job, outage, report, log);
    }
}

/// The measured time of these footprints' rows: earliest start, latest end.
fn window(rows: &[Row]) -> Option<(SystemTime, SystemTime)> {
    let t = |s: &str| humantime::parse_rfc3339_weak(s).ok();
    let start = rows.iter().filter_map(|r| t(&r.start)).min()?;
    let end = rows.iter().filter_map(|r| t(&r.end)).max()?;
    Some((start, end))
}

/// Whether two runs' measured times overlap (up to clock skew): the parts
/// of one run do, while runs with one id follow each other.
fn overlap(a: (SystemTime, SystemTime), b: (SystemTime, SystemTime)) -> bool {
    a.0 <= b.1 + CLOCK_SKEW && b.0 <= a.1 + CLOCK_SKEW
}

/// When the newest part in a job's shared directory arrived (else when the
/// directory was claimed or first written to).
fn last_deposit(shared: &Spool, id: u32) -> Option<SystemTime> {
    let mtime = |p: &std::path::Path| fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
    let dir = shared.job_dir(id);
    shared
        .node_footprints(id)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| mtime(p))
        .max()
        .or_else(|| mtime(&dir.join(TOTAL_FILE)))
        .or_else(|| mtime(&dir.join(JOB_FILE)))
}

/// The measured time of what a job's shared directory holds.
fn dir_window(shared: &Spool, id: u32) -> Option<(SystemTime, SystemTime)> {
    let mut rows: Vec<Row> = shared
        .node_footprints(id)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| read_node_footprint(p).ok())
        .flatten()
        .collect();
    if let Ok(b) = shared.read_file(&shared.job_dir(id).join(TOTAL_FILE))
        && let Ok(r) = footprint::read_csv(&b[..])
    {
        rows.extend(r);
    }
    window(&rows)
}

/// Makes way for a part measured over `part`: when the job's shared
/// directory holds an earlier run of the same id, that run is queued on its
/// own if it was still waiting for parts (ledger only: accounting's job with
/// this id is the later one now), and its directory is dropped.
fn retire_earlier_run(
    config: &Config,
    shared: &Spool,
    id: u32,
    part: (SystemTime, SystemTime),
    log: Log,
) -> Result<(), String> {
    let dir = shared.job_dir(id);
    if !dir.exists() {
        return Ok(());
    }
    let Some(lock) = shared.lock_job(id, LOCK_WAIT).map_err(|e| e.to_string())? else {
        // Another node is counting: a node of this same run, in practice.
        return Ok(());
    };
    let claimed = dir.join(TOTAL_FILE).exists();
    let there = dir_window(shared, id);
    // An earlier job's parts arrived (at its end) before this part's
    // measurement began, and do not overlap it; the parts of one job arrive
    // after it ended, even those of nodes that sampled at different times
    // (srun steps without an extern step).
    let deposited_before = last_deposit(shared, id).is_some_and(|t| t + CLOCK_SKEW < part.0);
    let earlier = deposited_before && there.is_none_or(|w| !overlap(w, part));
    if !earlier {
        return Ok(());
    }
    let when = there
        .map(|(a, b)| {
            format!(
                " (measured {} to {})",
                humantime::format_rfc3339_seconds(a),
                humantime::format_rfc3339_seconds(b)
            )
        })
        .unwrap_or_default();
    let what = if claimed {
        "its total was queued before".to_string()
    } else {
        match complete_locked(
            config,
            shared,
            id,
            Duration::ZERO,
            SystemTime::now(),
            true,
            log,
        )? {
            Outcome::Queued { run, .. } => format!("queued its parts as run {run}, ledger only"),
            _ => "nothing of it to deliver".to_string(),
        }
    };
    // Under the lock: a node waiting for it must not find half of the
    // earlier run still there (and delete the part it just wrote with it).
    shared.remove_job_at_once(id).map_err(|e| e.to_string())?;
    drop(lock);
    log(format!(
        "carbontrack: job {id}: {} held an earlier job with this id{when}; {what}; this job starts afresh",
        dir.display()
    ));
    Ok(())
}

/// Copies this node's part (and what the total needs to know of the job)
/// into the shared directory, then drops the node's copy. `false` when the
/// job was not measured here.
fn deposit(
    config: &Config,
    local: &Spool,
    shared: &Spool,
    job: &EpilogJob,
    report: &mut RunReport,
    log: Log,
) -> Result<bool, String> {
    let id = job.job_id;
    let paths = local.node_footprints(id).map_err(|e| e.to_string())?;
    let handoff = local.read_handoff(id).ok().flatten();
    if paths.is_empty() {
        if local.job_dir(id).exists() {
            log(format!(
                "carbontrack: job {id}: no footprint of {} in {}; this node's part will be missing",
                job.node,
                local.job_dir(id).display()
            ));
            let _ = local.remove_job(id);
        }
        return Ok(false);
    }
    let mine: Vec<Row> = paths
        .iter()
        .filter_map(|p| read_node_footprint(p).ok())
        .flatten()
        .collect();
    if let Some(w) = window(&mine) {
        retire_earlier_run(config, shared, id, w, log)?;
    }
    let claimed = shared.job_dir(id).join(TOTAL_FILE).exists();
    let mut copied = 0;
    for p in &paths {
        let bytes = match read_node_footprint(p) {
            Ok(_) => local.read_file(p).map_err(|e| e.to_string())?,
            Err(why) => {
                let moved = local.set_aside(id, p);
                log(format!(
                    "carbontrack: job {id}: skipped unreadable footprint {}: {why}; {moved}",
                    p.display()
                ));
                report.corrupt.push(p.clone());
                continue;
            }
        };
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a part's name", p.display()))?;
        shared
            .write_job_file(id, name, &bytes)
            .map_err(|e| e.to_string())?;
        copied += 1;
    }
    if copied == 0 {
        let _ = local.remove_job(id);
        return Ok(false);
    }
    let dir = shared.job_dir(id);
    if let Some(h) = &handoff
        && !dir.join("handoff").exists()
    {
        shared.write_handoff(h).map_err(|e| e.to_string())?;
    }
    if !dir.join(JOB_FILE).exists() {
        let mut meta = job.meta.clone();
        if let Some(h) = &handoff {
            fill_meta(&mut meta, h);
        }
        let record = JobRecord {
            nodes: job.nodes.clone(),
            meta,
        };
        let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
        shared
            .write_job_file(id, JOB_FILE, &text)
            .map_err(|e| e.to_string())?;
    }
    if let Err(e) = local.remove_job(id) {
        log(format!("carbontrack: job {id}: part copied, but {e}"));
    }
    if claimed {
        log(format!(
            "carbontrack: job {id}: the part of {} arrived after the job's total was delivered without it; kept in {}, not added",
            job.node,
            dir.display()
        ));
        return Ok(false);
    }
    Ok(true)
}

/// Counts a job's parts under its lock and queues the total when every node
/// has delivered, or when the missing ones are overdue (`part_wait` after the
/// first part arrived).
pub fn complete(
    config: &Config,
    shared: &Spool,
    id: u32,
    part_wait: Duration,
    now: SystemTime,
    lock_wait: Duration,
    log: Log,
) -> Result<Outcome, String> {
    let dir = shared.job_dir(id);
    if dir.join(TOTAL_FILE).exists() {
        return Ok(Outcome::Claimed);
    }
    let Some(_lock) = shared.lock_job(id, lock_wait).map_err(|e| e.to_string())? else {
        return Ok(Outcome::Busy);
    };
    complete_locked(config, shared, id, part_wait, now, false, log)
}

/// [`complete`] under the job's lock. `earlier`: the run is over because a
/// later job with its id has come, so whatever is missing is not waited for,
/// its total is for the ledger only and its user files (named like the later
/// job's) are not written.
fn complete_locked(
    config: &Config,
    shared: &Spool,
    id: u32,
    part_wait: Duration,
    now: SystemTime,
    earlier: bool,
    log: Log,
) -> Result<Outcome, String> {
    let dir = shared.job_dir(id);
    if dir.join(TOTAL_FILE).exists() {
        return Ok(Outcome::Claimed);
    }
    let record: JobRecord = shared
        .read_file(&dir.join(JOB_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let paths = shared.node_footprints(id).map_err(|e| e.to_string())?;
    let first = first_arrival(&dir, &paths);
    let mut rows: Vec<Row> = Vec::new();
    for p in &paths {
        match read_node_footprint(p) {
            Ok(r) => rows.extend(r.into_iter().filter(|r| !r.is_total())),
            Err(why) => {
                let moved = shared.set_aside(id, p);
                log(format!(
                    "carbontrack: job {id}: skipped unreadable part {}: {why}; {moved}",
                    p.display()
                ));
            }
        }
    }
    let present: BTreeSet<String> = rows.iter().map(|r| r.node.clone()).collect();
    let missing = missing_nodes(&record.nodes, &present);
    let overdue = earlier || is_overdue(first, part_wait, now);
    // Without a node list (an older or damaged record), only time tells.
    if (!missing.is_empty() || record.nodes.is_empty()) && !overdue {
        return Ok(Outcome::Waiting { missing });
    }
    if rows.is_empty() {
        log(format!(
            "carbontrack: job {id}: no readable part of any node in {}; nothing to deliver",
            dir.display()
        ));
        let _ = shared.write_job_file(id, TOTAL_FILE, b"");
        return Ok(Outcome::Empty);
    }
    if let Some(r) = live_intensity(config, &rows, now) {
        apply_intensity(&mut rows, &r);
    }
    let Some(mut total) = JobTotal::from_rows(id, &rows, config.components, &record.meta) else {
        return Ok(Outcome::Empty);
    };
    total.status = with_missing(&total.status, &missing);
    let mut all = rows;
    sort_rows(&mut all);
    if let Some(mut t) = footprint::total_of(&all) {
        t.status = with_missing(&t.status, &missing);
        all.push(t);
    }
    let mut csv = Vec::new();
    footprint::write_csv(&mut csv, &all).map_err(|e| e.to_string())?;
    let handoff = shared.read_handoff(id).ok().flatten();
    let run = total.run_key();
    let mut pending = pending_of(config, total);
    pending.keep_job_dir = true;
    if earlier {
        pending.superseded = Some(
            "a later job with the same id ran on the job's nodes before all parts came".into(),
        );
        pending.accounting_done = true;
    } else if config.report == ReportTarget::Workdir
        && let Some(h) = &handoff
        && let Some(work) = &h.work_dir
    {
        pending.user_files = Some(UserFiles {
            uid: h.uid,
            gid: h.gid,
            groups: h.groups.clone(),
            dir: work.clone(),
            csv: String::from_utf8_lossy(&csv).into_owned(),
            txt: summary(id, config, &all, &missing),
            // Each node's extern step writes its own timeline.
            svg: None,
        });
        pending.user_files_done = false;
    }
    shared
        .write_outbox(run, &to_json(&pending))
        .map_err(|e| e.to_string())?;
    // The claim comes after the queued record: if this process dies between
    // the two, the next one queues the same job under the same name again,
    // which replaces the record rather than adding one.
    shared
        .write_job_file(id, TOTAL_FILE, &csv)
        .map_err(|e| e.to_string())?;
    // An earlier run's retirement says so in a line of its own.
    if !missing.is_empty() && !earlier {
        log(format!(
            "carbontrack: job {id}: no part from {} after {}; delivering the parts of {} as incomplete",
            missing.join(", "),
            humantime::format_duration(part_wait),
            present.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(Outcome::Queued { missing, run })
}

/// `flush` and every Epilog (after its own job, within its budget): jobs
/// whose missing parts are overdue, totals still queued, and claimed jobs old
/// enough to forget.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    config: &Config,
    tools: &Tools,
    shared: &Spool,
    skip: Option<u32>,
    deadline: Option<Instant>,
    outage: &mut bool,
    report: &mut RunReport,
    log: Log,
) {
    let now = SystemTime::now();
    let ids = match shared.job_ids() {
        Ok(ids) => ids,
        Err(e) => {
            log(format!("carbontrack: shared: {e}"));
            return;
        }
    };
    // Job ids with a run still queued: their directory is kept.
    let queued: BTreeSet<u32> = match shared.outbox_jobs() {
        Ok(runs) => runs.iter().map(|r| r.job_id).collect(),
        Err(_) => ids.iter().copied().collect(),
    };
    for id in ids.into_iter().filter(|j| Some(*j) != skip) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let dir = shared.job_dir(id);
        if let Ok(m) = fs::metadata(dir.join(TOTAL_FILE)) {
            let old = m
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > KEEP_CLAIMED);
            if old && !queued.contains(&id) {
                let _ = shared.remove_job(id);
            }
            continue;
        }
        // Only overdue jobs need counting here: a job still within its wait
        // is completed by its own nodes' Epilogs. A stat per part, no lock.
        let paths = shared.node_footprints(id).unwrap_or_default();
        if !is_overdue(first_arrival(&dir, &paths), tools.part_wait, now) {
            report.queued.push(id);
            continue;
        }
        match complete(
            config,
            shared,
            id,
            tools.part_wait,
            now,
            SWEEP_LOCK_WAIT,
            log,
        ) {
            Ok(Outcome::Queued { run, .. }) => {
                let d = deliver(shared, tools, run, outage, log);
                tally(report, id, d);
            }
            Ok(Outcome::Waiting { .. }) => report.queued.push(id),
            Ok(_) => {}
            Err(e) => log(format!("carbontrack: job {id}: {e}")),
        }
    }
    retry_outbox(shared, tools, skip, deadline, outage, report, log);
}

/// When the first of these parts arrived (their modification times); with
/// no part yet, when the job's directory `dir` last changed. A directory
/// another node's Epilog has just made, whose part is still on its way in,
/// is not yet overdue: counting it then would claim the job with nothing in
/// it, and every part arriving after would be kept out of its total (seen
/// with 64 Epilogs at once sharing one `shared=`).
fn first_arrival(dir: &std::path::Path, paths: &[std::path::PathBuf]) -> Option<SystemTime> {
    paths
        .iter()
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .min()
        .or_else(|| fs::metadata(dir).and_then(|m| m.modified()).ok())
}

/// Whether missing parts have been waited for long enough; a job with no
/// part and no time to go by is.
fn is_overdue(first: Option<SystemTime>, part_wait: Duration, now: SystemTime) -> bool {
    first.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= part_wait)
}

/// The job's nodes with no part, in the job's order.
fn missing_nodes(nodes: &[String], present: &BTreeSet<String>) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| !present.contains(*n))
        .cloned()
        .collect()
}

/// The total's status, saying which nodes' parts are missing: their energy
/// is not in it, so the figure is a lower bound. The clause comes first
/// (it matters most), the status stays within [`crate::measure::MAX_STATUS`] characters
/// however many nodes are missing, and the summary names them all.
pub fn with_missing(status: &str, missing: &[String]) -> String {
    if missing.is_empty() {
        return status.to_string();
    }
    let clause = missing_clause(missing);
    match Status::parse(status) {
        Some(Status::Ok) | None => Status::Incomplete(clause).to_csv(),
        // Estimated figures stay said beside the missing part.
        Some(Status::Incomplete(rest) | Status::Estimated(rest)) => {
            Status::Incomplete(fit_reasons(&[clause, rest])).to_csv()
        }
        // `unavailable: …`: nothing measured on the nodes that did report.
        Some(Status::Unavailable(rest)) => {
            Status::Unavailable(fit_reasons(&[rest, clause])).to_csv()
        }
    }
}

/// `node ct2 part missing`, `nodes ct2, ct3 parts missing`, or for a list
/// too long for a status `7 nodes' parts missing (ct2, ct3, …)`.
fn missing_clause(missing: &[String]) -> String {
    /// Room for the clause beside another reason of a status.
    const ROOM: usize = 60;
    if let [one] = missing {
        return format!("node {one} part missing");
    }
    let all = format!("nodes {} parts missing", missing.join(", "));
    if all.len() <= ROOM {
        return all;
    }
    let mut names = String::new();
    for n in missing {
        if names.len() + n.len() + 2 > ROOM - 30 {
            names.push('…');
            break;
        }
        names.push_str(n);
        names.push_str(", ");
    }
    format!("{} nodes' parts missing ({names})", missing.len())
}

/// Node by node, each node's devices as its part listed them.
fn sort_rows(rows: &mut [Row]) {
    rows.sort_by(|a, b| a.node.cmp(&b.node));
}

/// The user's summary of the joined job.
fn summary(id: u32, config: &Config, rows: &[Row], missing: &[String]) -> String {
    let mut s = render_final_from_rows(&id.to_string(), config.pue, rows);
    if !missing.is_empty() {
        s.push_str(&format!(
            "\nIncomplete: no footprint arrived from {} (the node failed, or its measurement did not finish); the figures above leave it out.\n",
            missing.join(", ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::MAX_STATUS;

    #[test]
    fn missing_parts_make_the_total_incomplete() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (status, missing, want) in [
            ("ok", m(&[]), "ok"),
            ("ok", m(&["ct2"]), "incomplete: node ct2 part missing"),
            (
                "ok",
                m(&["ct2", "ct3"]),
                "incomplete: nodes ct2, ct3 parts missing",
            ),
            (
                "incomplete: ct1 cpu package-0 did not answer for 12 s from 2026-12-01T10:00:00Z",
                m(&[
                    "node-0012",
                    "node-0013",
                    "node-0014",
                    "node-0015",
                    "node-0016",
                    "node-0017",
                ]),
                "incomplete: 6 nodes' parts missing (node-0012, node-0013, …) (+1 more)",
            ),
            (
                "incomplete: ct1 dram package-0 unavailable",
                m(&["ct2"]),
                "incomplete: node ct2 part missing; ct1 dram package-0 unavailable",
            ),
            (
                "unavailable: nothing measured (cpu package-0 unavailable)",
                m(&["ct2"]),
                "unavailable: nothing measured (cpu package-0 unavailable); node ct2 part missing",
            ),
        ] {
            let got = with_missing(status, &missing);
            assert_eq!(got, want);
            assert!(got.chars().count() <= MAX_STATUS, "{got}");
        }
    }

    #[test]
    fn missing_nodes_keep_the_jobs_order() {
        let nodes: Vec<String> = ["n3", "n1", "n2"].map(String::from).to_vec();
        let present: BTreeSet<String> = ["n1".to_string()].into_iter().collect();
        assert_eq!(missing_nodes(&nodes, &present), ["n3", "n2"]);
        assert!(missing_nodes(&[], &present).is_empty());
    }
}
