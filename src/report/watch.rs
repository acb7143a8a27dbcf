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
//! This module keeps the records (written at delivery, [`super::delivery`]);
//! [`super::recheck`] reads them back and re-merges.
//!
//! Records live in `<spool>/watch/<jobid>-<start>.json` (root-only, as the
//! outbox); one that expired, whose job id now belongs to a later job, or
//! that cannot be read is dropped.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::safe_fs;
use crate::spool::{RunKey, Spool, SpoolError};

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

impl Watched {
    /// A segment just delivered into `field` of the run `job_id` started
    /// and ended as given (RFC 3339), first looked at by the next flush.
    pub fn delivered(
        job_id: u32,
        cluster: &str,
        (start, end): (&str, &str),
        field: &str,
        segment: &str,
        now: SystemTime,
    ) -> Watched {
        let delivered = secs(now);
        Watched {
            job_id,
            cluster: cluster.to_string(),
            start: start.to_string(),
            end: end.to_string(),
            field: field.to_string(),
            segment: segment.to_string(),
            delivered,
            next_check: next_check(delivered, 0),
            checks: 0,
            restored: 0,
        }
    }
}

pub(super) fn secs(t: SystemTime) -> u64 {
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

pub(super) fn dir(spool: &Spool) -> PathBuf {
    spool.root().join(DIR)
}

/// Puts a just-delivered segment under watch.
pub fn record(spool: &Spool, run: RunKey, w: &Watched) -> Result<(), SpoolError> {
    let d = safe_fs::ensure_dir(&dir(spool), 0o700)?;
    let bytes = serde_json::to_vec(w).unwrap_or_default();
    crate::spool::write_atomic(&d.join(format!("{}.json", run.stem())), &bytes)
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
}
