//! The re-checks of delivered segments that [`super::watch`] keeps records
//! of: `carbontrack flush` reads each due job's field back and merges the
//! segment in again where another writer replaced the field.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::spool::Spool;

use super::delivery::{AccountingError, Expect, JobField, Log, Tools, set_segment};
use super::watch::{Watched, dir, is_jobstats, next_check, secs};
use super::{accounting, aggregate, sacct};

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

/// The lock one re-check pass holds, in the watch directory (a dot name:
/// never read as a record).
const PASS_LOCK: &str = ".recheck.lock";

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
    // One pass at a time per spool: the flush timers of every node sharing
    // `shared=` fire together, and each would otherwise ask sacct for the
    // same due jobs and merge them at once. The others skip this pass; the
    // one holding the lock moves every due record's next check on.
    let _pass = match crate::safe_fs::lock(&dir(spool).join(PASS_LOCK), Duration::ZERO) {
        Ok(Some(l)) => l,
        Ok(None) => return done,
        Err(e) => {
            log(format!(
                "carbontrack: watched segments not re-checked: {e}; the next flush tries again"
            ));
            return done;
        }
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
    let ids: Vec<String> = jobs.iter().map(u32::to_string).collect();
    let (stdout, delim) = sacct::query(
        &tools.sacct,
        tools.timeout,
        cluster,
        &ids.join(","),
        &format!("JobIDRaw,End,Start,{field}"),
    )?;
    let (records, _) = sacct::records(&stdout, &delim, 4);
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
    use crate::spool::RunKey;

    /// Nodes sharing a spool run their flush at once: while one pass holds
    /// the watch directory, another does nothing (no sacct call, no line);
    /// once it is free, the next pass does the work.
    #[test]
    fn one_pass_at_a_time_per_spool() {
        let root = std::env::temp_dir().join(format!("ct-recheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let spool = Spool::open(&root).unwrap();
        let now = SystemTime::now();
        let w = Watched::delivered(
            5,
            "c1",
            ("2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"),
            "AdminComment",
            "carbontrack:v1 energy_kwh=1",
            now - Duration::from_secs(600),
        );
        let run = RunKey {
            job_id: 5,
            start: Some(1),
        };
        super::super::watch::record(&spool, run, &w).unwrap();
        let tools = Tools {
            sacct: root.join("no-sacct-here"),
            ..Tools::default()
        };
        let held = crate::safe_fs::lock(&dir(&spool).join(PASS_LOCK), Duration::ZERO)
            .unwrap()
            .expect("free");
        let mut lines = Vec::new();
        recheck(&spool, &tools, Duration::from_secs(86_400), now, &mut |l| {
            lines.push(l)
        });
        assert!(lines.is_empty(), "{lines:?}");
        drop(held);
        recheck(&spool, &tools, Duration::from_secs(86_400), now, &mut |l| {
            lines.push(l)
        });
        assert!(
            lines
                .iter()
                .any(|l| l.contains("re-reading AdminComment of 1 delivered job")),
            "{lines:?}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn long_fields_are_shortened_for_the_log() {
        assert_eq!(shorten(" short "), "short");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long), format!("{}...", "é".repeat(60)));
    }
}
