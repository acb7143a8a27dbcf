//! `carbontrack epilog` and `carbontrack flush`: a finished job's node
//! footprints become one total, which goes into Slurm accounting (a segment
//! in a job text field, via sacctmgr) and the cluster ledger.
//!
//! The Epilog must never fail (a non-zero exit drains the node) and never
//! lose or double a job: the total is first written to the spool's outbox
//! (then the job's spool directory goes: the record holds the whole total),
//! each delivery is recorded there as it succeeds, and the record goes only
//! when all are done. What could not be delivered (slurmdbd down, sacctmgr
//! missing, the job not yet in the database) waits for the next epilog on
//! the node or for `flush`. Delivering again is harmless: the segment
//! replaces itself, the ledger skips a job it has.
//!
//! The delivery itself (the outbox record, accounting, ledger, user files)
//! is [`super::delivery`]'s, shared with the joining of multi-node jobs.
//!
//! A job on several nodes is joined in the `shared=` directory first
//! ([`super::shared`]): each node's Epilog leaves its part there, and the one
//! that finds every part (or `flush`/a later Epilog, once a missing part is
//! overdue) queues the job's one total.

use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::footprint::{self, Row};
use crate::spool::Spool;

use super::delivery::{
    EpilogJob, Log, Pending, RunReport, Tools, USER_FILES_RECORD, UserFiles, deliver,
    read_node_footprint,
};
use super::delivery::{
    apply_intensity, fill_meta, live_intensity, pending_of, retry_outbox, tally, to_json,
};
use super::total::{JobMeta, JobTotal};

/// The Epilog's work for `job`: total its node footprints into the outbox,
/// deliver it, then retry older queued jobs within `retry_budget`. Never
/// fails: every problem is one log line.
pub fn epilog(
    config: &Config,
    tools: &Tools,
    job: &EpilogJob,
    retry_budget: Duration,
    log: Log,
) -> RunReport {
    let mut report = RunReport::default();
    let tools = &Tools {
        own_job: Some(job.job_id),
        ..tools.clone()
    };
    let spool = match Spool::open(&config.spool) {
        Ok(s) => s,
        Err(e) => {
            log(format!("carbontrack: job {}: {e}", job.job_id));
            return report;
        }
    };
    let mut outage = false;
    if let Some(e) = &job.nodes_error {
        log(format!(
            "carbontrack: job {}: {e}; treated as a job on this node only",
            job.job_id
        ));
    }
    let multi = job.nodes.len() > 1;
    sweep_prometheus(config, job.job_id, log);
    promote_live_copies(config, &spool, job, multi, log);
    let shared = match (&config.shared, multi) {
        (Some(dir), _) => match Spool::open(dir) {
            Ok(s) => Some(s),
            Err(e) => {
                log(format!(
                    "carbontrack: job {}: shared= directory: {e}; a multi-node job's part stays in {}",
                    job.job_id,
                    spool.root().display()
                ));
                None
            }
        },
        (None, true) => {
            log(format!(
                "carbontrack: job {}: runs on {} nodes, and no shared= directory is configured: this node delivers its own part only (another node's may replace it in accounting); per-job totals over nodes need shared= in plugstack.conf",
                job.job_id,
                job.nodes.len()
            ));
            None
        }
        (None, false) => None,
    };
    if multi && config.shared.is_some() {
        // Whatever happens to the shared directory, the part stays in this
        // node's spool until it is safely there.
        match &shared {
            Some(shared) => super::shared::epilog(
                config,
                tools,
                &spool,
                shared,
                job,
                &mut outage,
                &mut report,
                log,
            ),
            None => super::shared::keep_for_retry(&spool, job, log),
        }
    } else {
        local_epilog(config, tools, &spool, job, &mut outage, &mut report, log);
    }
    if config.accounting_field == "Comment" {
        log(format!("carbontrack: {}", crate::config::COMMENT_WARNING));
    }
    let deadline = Instant::now() + retry_budget;
    adopt_stale(config, &spool, &job.meta.cluster, &mut report, log);
    if let Some(shared) = &shared {
        super::shared::retry_deposits(
            config,
            tools,
            &spool,
            shared,
            Some(job.job_id),
            Some(deadline),
            &mut outage,
            &mut report,
            log,
        );
    }
    retry_outbox(
        &spool,
        tools,
        Some(job.job_id),
        Some(deadline),
        &mut outage,
        &mut report,
        log,
    );
    if let Some(shared) = &shared {
        super::shared::sweep(
            config,
            tools,
            shared,
            Some(job.job_id),
            Some(deadline),
            &mut outage,
            &mut report,
            log,
        );
    }
    report
}

/// Removes the job's node_exporter file if its step left one (it died), and
/// other jobs' files nobody has refreshed for a long while (`prometheus=`).
fn sweep_prometheus(config: &Config, job_id: u32, log: Log) {
    let Some(dir) = &config.prometheus else {
        return;
    };
    let swept = crate::prometheus::check_dir(dir)
        .map_err(|e| e.to_string())
        .and_then(|dir| {
            crate::prometheus::sweep(
                &dir,
                Some(job_id),
                crate::prometheus::stale_after(config.refresh),
                SystemTime::now(),
            )
            .map_err(|e| format!("{}: {e}", dir.display()))
        });
    match swept {
        Ok(jobs) => {
            let others: Vec<String> = jobs
                .iter()
                .filter(|&&j| j != job_id)
                .map(u32::to_string)
                .collect();
            if !others.is_empty() {
                log(format!(
                    "carbontrack: job {job_id}: removed stale Prometheus files of jobs {} from {}",
                    others.join(","),
                    dir.display()
                ));
            }
        }
        Err(e) => log(format!(
            "carbontrack: job {job_id}: prometheus= directory: {e}"
        )),
    }
}

/// A job on this node only: its footprint becomes the total.
fn local_epilog(
    config: &Config,
    tools: &Tools,
    spool: &Spool,
    job: &EpilogJob,
    outage: &mut bool,
    report: &mut RunReport,
    log: Log,
) {
    match collect(config, spool, job, report, log) {
        Ok(Some(pending)) => {
            match spool.write_outbox(pending.total.run_key(), &to_json(&pending)) {
                Ok(_) => {
                    // The record holds the whole total: the job's directory can
                    // go now, before a later job with the same id needs it.
                    if let Err(e) = spool.remove_job(job.job_id) {
                        log(format!("carbontrack: job {}: queued, but {e}", job.job_id));
                    }
                    let d = deliver(spool, tools, pending.total.run_key(), outage, log);
                    tally(report, job.job_id, d);
                }
                Err(e) => log(format!(
                    "carbontrack: job {}: cannot queue the total, kept the footprints: {e}",
                    job.job_id
                )),
            }
        }
        Ok(None) => {}
        Err(e) => log(format!("carbontrack: job {}: {e}", job.job_id)),
    }
}

/// `carbontrack flush`: delivers everything in the outbox.
pub fn flush(
    config: &Config,
    tools: &Tools,
    log: Log,
) -> Result<RunReport, crate::spool::SpoolError> {
    let spool = Spool::open(&config.spool)?;
    let mut report = RunReport::default();
    let mut outage = false;
    if config.accounting_field == "Comment" {
        log(format!("carbontrack: {}", crate::config::COMMENT_WARNING));
    }
    adopt_stale(config, &spool, "", &mut report, log);
    let shared = match &config.shared {
        Some(dir) => Some(Spool::open(dir)?),
        None => None,
    };
    if let Some(shared) = &shared {
        super::shared::retry_deposits(
            config,
            tools,
            &spool,
            shared,
            None,
            None,
            &mut outage,
            &mut report,
            log,
        );
    }
    retry_outbox(&spool, tools, None, None, &mut outage, &mut report, log);
    if !outage {
        for s in std::iter::once(&spool).chain(shared.as_ref()) {
            super::recheck::recheck(s, tools, config.accounting_watch, SystemTime::now(), log);
        }
    }
    if let Some(shared) = &shared {
        super::shared::sweep(
            config,
            tools,
            shared,
            None,
            None,
            &mut outage,
            &mut report,
            log,
        );
    }
    Ok(report)
}

/// Queues the runs a later job's prolog moved to `stale/` (their Epilog
/// never ran on this node), each as its own run; `cluster` is this Epilog's
/// cluster name (empty from `flush`).
fn adopt_stale(config: &Config, spool: &Spool, cluster: &str, report: &mut RunReport, log: Log) {
    let stale = match spool.stale_jobs() {
        Ok(s) => s,
        Err(e) => {
            log(format!("carbontrack: {e}"));
            return;
        }
    };
    for (id, dir) in stale {
        // Claimed by a rename (an Epilog and a flush may both be here): the
        // one whose rename succeeds queues it; a claim left by a process
        // that died is claimed again the same way next time.
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir_claimed = dir.with_file_name(format!("{name}-{}", std::process::id()));
        if std::fs::rename(&dir, &dir_claimed).is_err() {
            continue;
        }
        let dir = dir_claimed;
        let mut rows: Vec<Row> = Vec::new();
        for p in crate::spool::node_footprints_in(&dir).unwrap_or_default() {
            match read_node_footprint(&p) {
                Ok(r) => rows.extend(r.into_iter().filter(|r| !r.is_total())),
                Err(why) => {
                    let moved = spool.set_aside(id, &p);
                    log(format!(
                        "carbontrack: job {id}: skipped unreadable footprint {}: {why}; {moved}",
                        p.display()
                    ));
                    report.corrupt.push(p);
                }
            }
        }
        let mut meta = JobMeta {
            cluster: cluster.to_string(),
            ..JobMeta::default()
        };
        if let Some(h) = spool
            .read_file(&dir.join("handoff"))
            .ok()
            .and_then(|t| crate::job::JobInfo::from_text(&String::from_utf8_lossy(&t)).ok())
        {
            fill_meta(&mut meta, &h);
        }
        let queued = match JobTotal::from_rows(id, &rows, config.components, &meta) {
            Some(total) => {
                let run = total.run_key();
                let pending = pending_of(config, total);
                match spool.write_outbox(run, &to_json(&pending)) {
                    Ok(_) => {
                        log(format!(
                            "carbontrack: job {run}: an earlier run of this id, whose Epilog never ran on this node, queued on its own"
                        ));
                        true
                    }
                    Err(e) => {
                        log(format!(
                            "carbontrack: job {id}: cannot queue an earlier run: {e}"
                        ));
                        false
                    }
                }
            }
            None => true,
        };
        if queued && let Err(e) = std::fs::remove_dir_all(&dir) {
            log(format!("carbontrack: job {id}: {}: {e}", dir.display()));
        }
    }
}

/// The job's node footprints as an outbox record; `None` when this node has
/// none (the job was not tracked here). A file that does not read as a whole
/// footprint is moved aside with one log line and the rest are used.
fn collect(
    config: &Config,
    spool: &Spool,
    job: &EpilogJob,
    report: &mut RunReport,
    log: Log,
) -> Result<Option<Pending>, String> {
    let paths = spool
        .node_footprints(job.job_id)
        .map_err(|e| e.to_string())?;
    let mut rows: Vec<Row> = Vec::new();
    for p in &paths {
        match read_node_footprint(p) {
            Ok(r) => rows.extend(r.into_iter().filter(|r| !r.is_total())),
            Err(why) => {
                let moved = spool.set_aside(job.job_id, p);
                log(format!(
                    "carbontrack: job {}: skipped unreadable footprint {}: {why}; {moved}",
                    job.job_id,
                    p.display()
                ));
                report.corrupt.push(p.clone());
            }
        }
    }
    if rows.is_empty() {
        if spool.job_dir(job.job_id).exists() && paths.is_empty() {
            // Tracked here (a hand-off exists) but nothing was written: the
            // extern step did not finish its footprint.
            log(format!(
                "carbontrack: job {}: no footprint in {}; nothing to deliver",
                job.job_id,
                spool.job_dir(job.job_id).display()
            ));
        }
        if spool.job_dir(job.job_id).exists() {
            let _ = spool.remove_job(job.job_id);
        }
        return Ok(None);
    }
    let mut meta = job.meta.clone();
    if let Ok(Some(h)) = spool.read_handoff(job.job_id) {
        fill_meta(&mut meta, &h);
    }
    if let Some(r) = live_intensity(config, &rows, SystemTime::now()) {
        apply_intensity(&mut rows, &r);
    }
    let mut pending = JobTotal::from_rows(job.job_id, &rows, config.components, &meta)
        .map(|total| pending_of(config, total));
    // The user's files the extern step could not write in time (the work
    // dir did not answer): delivered from here on, with the total.
    let record = spool.job_dir(job.job_id).join(USER_FILES_RECORD);
    if let Some(p) = &mut pending
        && let Ok(bytes) = spool.read_file(&record)
    {
        match serde_json::from_slice::<UserFiles>(&bytes) {
            Ok(u) => {
                p.user_files = Some(u);
                p.user_files_done = false;
            }
            Err(e) => log(format!(
                "carbontrack: job {}: skipped unreadable {}: {e}",
                job.job_id,
                record.display()
            )),
        }
    }
    Ok(pending)
}

/// A sampler that never wrote the node's footprint (its slurmstepd was
/// killed, by the OOM killer say) left the live copy of its last refresh:
/// that becomes the node's footprint, every measured row marked
/// `incomplete: sampler ended at <its last sample>`, never `ok` and never
/// nothing. On a one-node job the user's files are queued with it, as the
/// extern step would have written them.
fn promote_live_copies(config: &Config, spool: &Spool, job: &EpilogJob, multi: bool, log: Log) {
    let id = job.job_id;
    if !spool.node_footprints(id).is_ok_and(|p| p.is_empty()) {
        return;
    }
    for live in spool.live_footprints(id).unwrap_or_default() {
        let rows = match read_node_footprint(&live) {
            Ok(r) => r,
            Err(why) => {
                log(format!(
                    "carbontrack: job {id}: skipped unreadable live copy {}: {why}",
                    live.display()
                ));
                continue;
            }
        };
        let Some(node) = rows.first().map(|r| r.node.clone()) else {
            continue;
        };
        let mut rows = ended_early(rows);
        if let Some(total) = footprint::total_of(&rows) {
            rows.retain(|r| !r.is_total());
            rows.push(total);
        }
        let mut csv = Vec::new();
        if footprint::write_csv(&mut csv, &rows).is_err() {
            continue;
        }
        let end = rows.last().map(|r| r.end.clone()).unwrap_or_default();
        if let Err(e) = spool.write_node_footprint(id, &node, &csv) {
            log(format!(
                "carbontrack: job {id}: cannot keep the live copy as the footprint: {e}"
            ));
            continue;
        }
        let _ = std::fs::remove_file(&live);
        log(format!(
            "carbontrack: job {id}: the sampler on {node} ended at {end} without writing its footprint (slurmstepd killed?); its last live copy is delivered, marked incomplete"
        ));
        let handoff = spool.read_handoff(id).ok().flatten();
        if let (false, crate::config::ReportTarget::Workdir, Some(h)) =
            (multi, config.report, handoff)
            && let Some(dir) = h.work_dir.clone()
        {
            let files = UserFiles {
                uid: h.uid,
                gid: h.gid,
                groups: h.groups.clone(),
                dir,
                csv: String::from_utf8_lossy(&csv).into_owned(),
                txt: crate::carbon::summary::render_final_from_rows(
                    &id.to_string(),
                    config.pue,
                    &rows,
                ),
                // The live copy keeps no timeline.
                svg: None,
            };
            if let Ok(b) = serde_json::to_vec(&files) {
                let _ = spool.write_job_file(id, USER_FILES_RECORD, &b);
            }
        }
    }
}

/// Rows of a sampler that stopped before the job did: measured ones say so.
fn ended_early(mut rows: Vec<Row>) -> Vec<Row> {
    for r in &mut rows {
        if r.energy_j.is_some() && !r.is_total() {
            r.status = format!("incomplete: sampler ended at {}", short_time(&r.end));
        }
    }
    rows
}

/// `2026-12-01T08:44:37.173Z` as `2026-12-01T08:44:37Z`: a status stays short.
fn short_time(rfc3339: &str) -> String {
    humantime::parse_rfc3339(rfc3339)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}
