//! Keeping the accounting segment in place after delivery, beside other
//! writers of the same job field.
//!
//! Other tools write the comment fields after a job ends, and some replace
//! the whole field: Princeton's jobstats sets `AdminComment=JS1:<base64>`
//! from an EpilogSlurmctld seconds after the job, and again when it
//! back-fills missed jobs (slurm-facts.md); a site script may do the same.
//! A write after carbontrack's erases its segment. So a delivered segment is
//! watched for `accounting_watch` (default a day): `carbontrack flush` (the
//! systemd timer, every 5 minutes) re-reads the field of each watched job at
//! its first run after delivery, then at growing intervals (1, 2, 4 …
//! minutes, at most 4 h apart: about a dozen reads a job over a day, one
//! `sacct` call for up to 200 jobs) and, where the segment is gone or
//! changed, merges it back in: the other writer's text is kept as
//! it is, and the field never holds two carbontrack segments
//! ([`super::accounting::merge`]).
//!
//! jobstats is the exception: it decodes the whole field after `JS1:` as
//! base64, so any text added after its own makes about a third of its
//! records unreadable (tried with its decoder: `base64.b64decode` drops
//! non-alphabet characters and decodes our letters into trailing garbage).
//! A field holding `JS1:` data is therefore never written into: its figure
//! stays in the ledger, one log line says so, and the fix is to give
//! carbontrack a field jobstats does not use (`accounting_field=SystemComment`).
//!
//! Records live in `<spool>/watch/<jobid>-<start>.json` (root-only, as the
//! outbox); one that expired, whose job id now belongs to a later job, or
//! that cannot be read is dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::safe_fs;
use crate::spool::{RunKey, Spool, SpoolError};

use super::epilog::{AccountingError, Expect, JobField, Log, Pending, Tools, set_segment};
use super::{accounting, aggregate, cmd, sacct};

/// The spool subdirectory of watch records.
pub const DIR: &str = "watch";

/// The first re-check after delivery, doubled after each.
const FIRST_CHECK: Duration = Duration::from_secs(60);
/// The longest gap between two checks.
const MAX_GAP: Duration = Duration::from_secs(4 * 3600);

/// A delivered segment under watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watched {
    pub job_id: u32,
    pub cluster: String,
    /// The run's start and end (RFC 3339), to check accounting's job is it.
    pub start: String,
    pub end: String,
    pub field: String,
    pub segment: String,
    /// Unix seconds: when the segment was delivered, and when next to look.
    pub delivered: u64,
    pub next_check: u64,
    pub checks: u32,
    /// Times the segment was merged back in.
    #[serde(default)]
    pub restored: u32,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When to look next after `checks` checks of a segment delivered at
/// `delivered` (unix seconds): the first flush after delivery looks at once
/// (jobstats writes seconds after the job), then 1, 2, 4 … minutes apart.
pub fn next_check(delivered: u64, checks: u32) -> u64 {
    let mut at = delivered;
    let mut gap = FIRST_CHECK;
    for _ in 0..checks {
        at += gap.as_secs();
        gap = (gap * 2).min(MAX_GAP);
    }
    at
}

/// Whether a field's text is jobstats' (`JS1:` then its data; sacctmgr of
/// Slurm 22.05 stores it lowercased).
pub fn is_jobstats(text: &str) -> bool {
    text.trim_start()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("js1:"))
}

fn dir(spool: &Spool) -> PathBuf {
    spool.root().join(DIR)
}

/// Puts a just-delivered segment under watch.
pub fn record(spool: &Spool, run: RunKey, p: &Pending, now: SystemTime) -> Result<(), SpoolError> {
    let d = safe_fs::ensure_dir(&dir(spool), 0o700)?;
    let delivered = secs(now);
    let w = Watched {
        job_id: run.job_id,
        cluster: p.total.cluster.clone(),
        start: p.total.start.clone(),
        end: p.total.end.clone(),
        field: p.field.clone(),
        segment: p.segment.clone(),
        delivered,
        next_check: next_check(delivered, 0),
        checks: 0,
        restored: 0,
    };
    let bytes = serde_json::to_vec(&w).unwrap_or_default();
    crate::spool::write_atomic(&d.join(format!("{}.json", run.stem())), &bytes)
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rechecked {
    /// Jobs whose segment was merged back in.
    pub restored: Vec<u32>,
    /// Jobs whose field holds jobstats' data (nothing written).
    pub jobstats: Vec<u32>,
}

/// How many jobs one `sacct` call asks for.
const BATCH: usize = 200;

/// Re-checks the watched segments that are due, one `sacct` call for up to
/// [`BATCH`] of them; drops records older than `watch`. Stops at an
/// accounting outage (the next flush goes on).
pub fn recheck(
    spool: &Spool,
    tools: &Tools,
    watch: Duration,
    now: SystemTime,
    log: Log,
) -> Rechecked {
    let mut done = Rechecked::default();
    let Ok(entries) = std::fs::read_dir(dir(spool)) else {
        return done;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    let now_s = secs(now);
    let mut due: Vec<(PathBuf, Watched)> = Vec::new();
    for path in paths {
        match spool
            .read_file(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Watched>(&b).ok())
        {
            Some(w) if now_s < w.delivered.saturating_add(watch.as_secs()) => {
                if now_s >= w.next_check {
                    due.push((path, w));
                }
            }
            // Expired, or unreadable: nothing more to do for it.
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    due.sort_by(|a, b| (&a.1.cluster, &a.1.field).cmp(&(&b.1.cluster, &b.1.field)));
    let mut groups: Vec<Vec<(PathBuf, Watched)>> = Vec::new();
    for item in due {
        match groups.last_mut() {
            Some(g)
                if g.len() < BATCH
                    && g[0].1.cluster == item.1.cluster
                    && g[0].1.field == item.1.field =>
            {
                g.push(item)
            }
            _ => groups.push(vec![item]),
        }
    }
    for group in groups {
        let (cluster, field) = (group[0].1.cluster.clone(), group[0].1.field.clone());
        let jobs: Vec<u32> = group.iter().map(|(_, w)| w.job_id).collect();
        let fields = match read_fields(tools, &cluster, &field, &jobs) {
            Ok(f) => f,
            Err(e) => {
                log(format!(
                    "carbontrack: re-reading {field} of {} delivered job(s) failed: {e}; tried again at the next flush",
                    jobs.len()
                ));
                if e.is_outage() {
                    break;
                }
                continue;
            }
        };
        for (path, w) in group {
            let f = fields.get(&w.job_id).cloned();
            if !check_one(tools, &path, w, f, &mut done, log) {
                return done;
            }
        }
    }
    done
}

/// The field of each of `jobs` (the newest job with each id), in one call.
fn read_fields(
    tools: &Tools,
    cluster: &str,
    field: &str,
    jobs: &[u32],
) -> Result<HashMap<u32, JobField>, AccountingError> {
    let delim = sacct::delimiter();
    let mut args: Vec<String> = vec!["-n".into(), "-X".into()];
    args.extend(sacct::args(&delim));
    if !cluster.is_empty() {
        args.extend(["-M".into(), cluster.to_string()]);
    }
    let ids: Vec<String> = jobs.iter().map(u32::to_string).collect();
    args.extend([
        "-j".into(),
        ids.join(","),
        "-o".into(),
        format!("JobIDRaw,End,Start,{field}"),
    ]);
    let out = cmd::run(
        &tools.sacct,
        &args,
        &[("TZ", "UTC"), ("SLURM_TIME_FORMAT", "standard")],
        tools.timeout,
    )?;
    let (records, _) = sacct::records(&out.stdout, &delim, 4);
    let known = |t: &str| !matches!(t.trim(), "" | "Unknown" | "None");
    let mut fields = HashMap::new();
    // Later records of an id are newer (as `read_field` takes them).
    for r in records {
        let Ok(id) = r[0].trim().parse::<u32>() else {
            continue;
        };
        fields.insert(
            id,
            JobField {
                ended: known(r[1]),
                end: aggregate::parse_time(r[1]),
                start: aggregate::parse_time(r[2]),
                text: r[3].to_string(),
            },
        );
    }
    Ok(fields)
}

/// One watched segment against its field as read (`None`: accounting has
/// no such job). Returns false at an accounting outage.
fn check_one(
    tools: &Tools,
    path: &std::path::Path,
    w: Watched,
    f: Option<JobField>,
    done: &mut Rechecked,
    log: Log,
) -> bool {
    let job = w.job_id;
    let expect = Expect {
        cluster: &w.cluster,
        start: humantime::parse_rfc3339_weak(&w.start).ok(),
        end: humantime::parse_rfc3339_weak(&w.end).ok(),
    };
    // Not in accounting, or the id belongs to a later job now: nothing to keep.
    let Some(current) = f.filter(|f| expect.check(job, f).is_ok()).map(|f| f.text) else {
        let _ = std::fs::remove_file(path);
        return true;
    };
    let mut next = w.clone();
    next.checks += 1;
    next.next_check = next_check(w.delivered, next.checks);
    if is_jobstats(&current) {
        log(jobstats_line(job, &w.field));
        done.jobstats.push(job);
        let _ = std::fs::remove_file(path);
        return true;
    }
    if accounting::merge(&current, &w.segment) != current {
        match set_segment(tools, job, &expect, &w.field, &w.segment) {
            Ok(()) => {
                next.restored += 1;
                done.restored.push(job);
                log(format!(
                    "carbontrack: job {job}: another writer replaced {} after carbontrack's delivery (now `{}`); carbontrack's segment is merged back in beside it",
                    w.field,
                    shorten(&current)
                ));
            }
            Err(AccountingError::Jobstats { .. }) => {
                log(jobstats_line(job, &w.field));
                done.jobstats.push(job);
                let _ = std::fs::remove_file(path);
                return true;
            }
            Err(e) => {
                log(format!(
                    "carbontrack: job {job}: merging the segment back into {} failed: {e}; tried again at the next flush",
                    w.field
                ));
                return !e.is_outage();
            }
        }
    }
    let bytes = serde_json::to_vec(&next).unwrap_or_default();
    let _ = crate::spool::write_atomic(path, &bytes);
    true
}

/// The one line said when a field holds jobstats' data.
pub fn jobstats_line(job: u32, field: &str) -> String {
    format!(
        "carbontrack: job {job}: {field} holds Princeton jobstats' data (JS1:...), which jobstats reads back only when it is alone in the field: carbontrack's segment is not written there (the total is in the ledger); beside jobstats set accounting_field=SystemComment in plugstack.conf"
    )
}

/// A field's text for a log line: at most 60 characters.
fn shorten(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_come_at_growing_intervals_up_to_four_hours() {
        let at: Vec<u64> = (0..12).map(|n| next_check(1000, n) - 1000).collect();
        assert_eq!(
            at,
            [
                0, 60, 180, 420, 900, 1860, 3780, 7620, 15300, 29700, 44100, 58500
            ]
        );
        // About a dozen checks over a day.
        assert_eq!((0..).take_while(|&n| next_check(0, n) < 86_400).count(), 13);
    }

    #[test]
    fn jobstats_data_is_recognised_in_either_case() {
        for (text, want) in [
            ("JS1:H4sIAAAA", true),
            ("js1:h4siaaaa", true),
            ("  JS1:abc", true),
            ("carbontrack:v1 energy_kwh=1 nodes=1", false),
            ("site:js1:", false),
            ("", false),
            ("JS1", false),
        ] {
            assert_eq!(is_jobstats(text), want, "{text:?}");
        }
    }

    #[test]
    fn long_fields_are_shortened_for_the_log() {
        assert_eq!(shorten(" short "), "short");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long), format!("{}...", "é".repeat(60)));
    }
}
