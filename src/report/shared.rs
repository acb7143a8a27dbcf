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
//! <shared>/outbox/<jobid>.json|.lock     the total until delivered
//! ```
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
use crate::spool::Spool;

use super::epilog::{
    EpilogJob, Log, RunReport, Tools, UserFiles, apply_intensity, deliver, fill_meta,
    live_intensity, pending_of, read_node_footprint, retry_outbox, tally, to_json,
};
use super::total::{JobMeta, JobTotal};

/// The name of the joined footprint, the mark of a claimed job.
pub const TOTAL_FILE: &str = "total.csv";
const JOB_FILE: &str = "job.json";

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
    /// The total is queued; `missing` names the nodes without a part.
    Queued { missing: Vec<String> },
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
    let deposited = match deposit(local, shared, job, report, log) {
        Ok(d) => d,
        Err(e) => {
            log(format!(
                "carbontrack: job {id}: cannot leave this node's part in {}: {e}; it stays in {}",
                shared.root().display(),
                local.job_dir(id).display()
            ));
            return;
        }
    };
    if !deposited {
        return;
    }
    let now = SystemTime::now();
    match complete(config, shared, id, tools.part_wait, now, LOCK_WAIT, log) {
        Ok(Outcome::Queued { .. }) => {
            let d = deliver(shared, tools, id, outage, log);
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

/// Copies this node's part (and what the total needs to know of the job)
/// into the shared directory, then drops the node's copy. `false` when the
/// job was not measured here.
fn deposit(
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
    let claimed = shared.job_dir(id).join(TOTAL_FILE).exists();
    let mut copied = 0;
    for p in &paths {
        let bytes = match read_node_footprint(p) {
            Ok(_) => local.read_file(p).map_err(|e| e.to_string())?,
            Err(why) => {
                let moved = local
                    .quarantine(id, p)
                    .map(|to| format!("moved to {}", to.display()))
                    .unwrap_or_else(|e| format!("could not move it aside: {e}"));
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
    if dir.join(TOTAL_FILE).exists() {
        return Ok(Outcome::Claimed);
    }
    let record: JobRecord = shared
        .read_file(&dir.join(JOB_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let paths = shared.node_footprints(id).map_err(|e| e.to_string())?;
    let first = first_arrival(&paths);
    let mut rows: Vec<Row> = Vec::new();
    for p in &paths {
        match read_node_footprint(p) {
            Ok(r) => rows.extend(r.into_iter().filter(|r| !r.is_total())),
            Err(why) => {
                let moved = shared
                    .quarantine(id, p)
                    .map(|to| format!("moved to {}", to.display()))
                    .unwrap_or_else(|e| format!("could not move it aside: {e}"));
                log(format!(
                    "carbontrack: job {id}: skipped unreadable part {}: {why}; {moved}",
                    p.display()
                ));
            }
        }
    }
    let present: BTreeSet<String> = rows.iter().map(|r| r.node.clone()).collect();
    let missing = missing_nodes(&record.nodes, &present);
    let overdue = is_overdue(first, part_wait, now);
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
    let mut pending = pending_of(config, total);
    pending.keep_job_dir = true;
    if config.report == ReportTarget::Workdir
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
        });
        pending.user_files_done = false;
    }
    shared
        .write_outbox(id, &to_json(&pending))
        .map_err(|e| e.to_string())?;
    // The claim comes after the queued record: if this process dies between
    // the two, the next one queues the same job under the same name again,
    // which replaces the record rather than adding one.
    shared
        .write_job_file(id, TOTAL_FILE, &csv)
        .map_err(|e| e.to_string())?;
    if !missing.is_empty() {
        log(format!(
            "carbontrack: job {id}: no part from {} after {}; delivering the parts of {} as incomplete",
            missing.join(", "),
            humantime::format_duration(part_wait),
            present.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(Outcome::Queued { missing })
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
            if old && !shared.outbox_path(id).exists() {
                let _ = shared.remove_job(id);
            }
            continue;
        }
        // Only overdue jobs need counting here: a job still within its wait
        // is completed by its own nodes' Epilogs. A stat per part, no lock.
        let paths = shared.node_footprints(id).unwrap_or_default();
        if !is_overdue(first_arrival(&paths), tools.part_wait, now) {
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
            Ok(Outcome::Queued { .. }) => {
                let d = deliver(shared, tools, id, outage, log);
                tally(report, id, d);
            }
            Ok(Outcome::Waiting { .. }) => report.queued.push(id),
            Ok(_) => {}
            Err(e) => log(format!("carbontrack: job {id}: {e}")),
        }
    }
    retry_outbox(shared, tools, skip, deadline, outage, report, log);
}

/// When the first of these parts arrived (their modification times).
fn first_arrival(paths: &[std::path::PathBuf]) -> Option<SystemTime> {
    paths
        .iter()
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .min()
}

/// Whether missing parts have been waited for long enough; a job with no
/// part left (all quarantined) is.
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
/// is not in it, so the figure is a lower bound.
pub fn with_missing(status: &str, missing: &[String]) -> String {
    if missing.is_empty() {
        return status.to_string();
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|n| format!("node {n} part missing"))
        .collect();
    let parts = parts.join(", ");
    if status == "ok" {
        format!("incomplete: {parts}")
    } else if let Some(rest) = status.strip_prefix("incomplete: ") {
        format!("incomplete: {parts}, {rest}")
    } else {
        // `unavailable: …`: nothing measured on the nodes that did report.
        format!("{status}; {parts}")
    }
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

    #[test]
    fn missing_parts_make_the_total_incomplete() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (status, missing, want) in [
            ("ok", m(&[]), "ok"),
            ("ok", m(&["ct2"]), "incomplete: node ct2 part missing"),
            (
                "ok",
                m(&["ct2", "ct3"]),
                "incomplete: node ct2 part missing, node ct3 part missing",
            ),
            (
                "incomplete: ct1 dram package-0 unavailable",
                m(&["ct2"]),
                "incomplete: node ct2 part missing, ct1 dram package-0 unavailable",
            ),
            (
                "unavailable: nothing measured (cpu package-0 unavailable)",
                m(&["ct2"]),
                "unavailable: nothing measured (cpu package-0 unavailable); node ct2 part missing",
            ),
        ] {
            assert_eq!(with_missing(status, &missing), want);
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
