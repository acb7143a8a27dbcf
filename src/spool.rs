//! The node-local, root-owned state directory (`spool=`, default
//! `/var/spool/carbontrack`).
//!
//! Layout, one directory per job so that cleaning up a job is one removal:
//! ```text
//! <spool>/jobs/<jobid>/handoff        the prolog's JobInfo for the sampling step
//! <spool>/jobs/<jobid>/node-<host>.csv this node's footprint, for the epilog
//! <spool>/jobs/<jobid>/sampler.lock   who samples, when there is no extern step
//! <spool>/jobs/<jobid>/live-<host>.csv this node's footprint so far, refreshed
//!                                      while the job runs (`carbontrack status`)
//! <spool>/jobs/<jobid>/deposit.json   the Epilog ran, but this node's part
//!                                      of a multi-node job could not reach
//!                                      `shared=`: retried by the next Epilog
//!                                      or `carbontrack flush`
//! <spool>/stale/<jobid>-<nanos>/      an earlier run's job directory, moved
//!                                      aside by the prolog of a later job with
//!                                      the same id (its Epilog never ran);
//!                                      `-<pid>` is added by the process that
//!                                      claims it to queue it
//! <spool>/outbox/<jobid>-<start>.json a finished run's total not yet delivered
//!                                      to accounting and/or the ledger
//! <spool>/outbox/<jobid>-<start>.lock held by whoever is delivering that run
//! <spool>/corrupt/<jobid>-<name>      spool files that could not be read,
//!                                      moved aside once, with one log line
//! ```
//! Slurm reuses job ids (slurmctld's state reset, a cluster rebuilt over the
//! same spool, `MaxJobId` wrapping), so what outlives a job is named by its
//! run, [`RunKey`]: the job id and the Unix second its measurement started
//! (`<start>`; no Slurm release before 23.02 gives the job's start time to
//! the prolog or Epilog, and a run's measurement starts after its Slurm start
//! and before any later run's). An outbox record of an earlier run is never
//! replaced by a later one's, and a later job's prolog moves an earlier run's
//! leftovers to `stale/` rather than deleting them; the next Epilog or flush
//! queues them as their own run. A record named `<jobid>.json` (written
//! before runs were keyed) reads as a run of unknown start.
//!
//! The epilog turns a job's node footprints into one outbox record, then
//! drops the job's directory (the record holds the whole total); the record
//! goes once both deliveries are done; until then any later epilog or
//! `carbontrack flush` retries it.
//! Everything is written by root, mode 0600, atomically (temporary file and
//! rename), and the spool itself is refused unless root owns it and nobody
//! else can write to it or to a directory above it ([`crate::safe_fs`]): a
//! spool others could write would let them forge footprints or plant links
//! that root then follows. Every file is opened without following a link or
//! waiting on a FIFO and checked to be root's own regular file; locks are
//! root-only files taken with a bounded wait.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::job::JobInfo;
use crate::safe_fs::{self, SafeFsError};

/// The most any spool file is read: footprints, hand-offs and outbox records
/// are a few kilobytes; a bigger file is not one carbontrack wrote.
pub const MAX_FILE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "spool {0} is not safe to use: it must be a directory (not a link) owned by this user with no group/other write permission; fix with `chown root: {0} && chmod 700 {0}`"
    )]
    Unsafe(PathBuf),
    #[error("hand-off record {path} is unreadable: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error("spool: {0}")]
    File(#[from] SafeFsError),
}

impl SpoolError {
    /// Whether the file asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            SpoolError::File(e) => e.is_not_found(),
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One run of a job: what names its records once the job is over, since
/// Slurm gives a job id to more than one job over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunKey {
    pub job_id: u32,
    /// Unix seconds of the run's first measurement; `None` for a record
    /// written before runs were keyed.
    pub start: Option<u64>,
}

impl RunKey {
    /// The run of `job_id` whose measurement started at `start` (RFC 3339,
    /// as footprints and totals hold it); unknown start if it does not read.
    pub fn new(job_id: u32, start: &str) -> RunKey {
        let start = humantime::parse_rfc3339_weak(start.trim())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        RunKey { job_id, start }
    }

    /// The file name stem: `<jobid>-<start>`, or `<jobid>`.
    pub fn stem(&self) -> String {
        match self.start {
            Some(s) => format!("{}-{s}", self.job_id),
            None => self.job_id.to_string(),
        }
    }

    fn parse(stem: &str) -> Option<RunKey> {
        let (id, start) = match stem.split_once('-') {
            Some((id, s)) => (id, Some(s.parse().ok()?)),
            None => (stem, None),
        };
        Some(RunKey {
            job_id: id.parse().ok()?,
            start,
        })
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self
            .start
            .and_then(|s| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
        {
            Some(t) => write!(
                f,
                "{} (measured from {})",
                self.job_id,
                humantime::format_rfc3339_seconds(t)
            ),
            None => write!(f, "{}", self.job_id),
        }
    }
}

/// A checked spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

impl Spool {
    /// Opens the spool, creating it (0700) when missing, and checks it and
    /// every directory above it are safe ([`safe_fs::check_dir`]).
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        safe_fs::ensure_dir(root, 0o700)?;
        let spool = Spool {
            root: root.to_path_buf(),
        };
        let jobs = spool.root.join("jobs");
        ensure_private_dir(&jobs)?;
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn job_dir(&self, job_id: u32) -> PathBuf {
        self.root.join("jobs").join(job_id.to_string())
    }

    fn ensure_job_dir(&self, job_id: u32) -> Result<PathBuf, SpoolError> {
        let d = self.job_dir(job_id);
        ensure_private_dir(&d)?;
        Ok(d)
    }

    pub fn write_handoff(&self, info: &JobInfo) -> Result<PathBuf, SpoolError> {
        let p = self.ensure_job_dir(info.job_id)?.join("handoff");
        write_atomic(&p, info.to_text().as_bytes())?;
        Ok(p)
    }

    /// The prolog's record for `job_id`, or `None` when the job is not tracked
    /// on this node (or the prolog has not run yet).
    pub fn read_handoff(&self, job_id: u32) -> Result<Option<JobInfo>, SpoolError> {
        let p = self.job_dir(job_id).join("handoff");
        match safe_fs::read_own(&p, MAX_FILE) {
            Ok(t) => JobInfo::from_text(&String::from_utf8_lossy(&t))
                .map(Some)
                .map_err(|e| SpoolError::BadRecord {
                    path: p,
                    reason: e.to_string(),
                }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one of the spool's files (a footprint, an outbox record),
    /// never through a link or from a FIFO, at most [`MAX_FILE`] bytes.
    pub fn read_file(&self, path: &Path) -> Result<Vec<u8>, SpoolError> {
        Ok(safe_fs::read_own(path, MAX_FILE)?)
    }

    /// Path of this node's footprint for a job.
    pub fn node_footprint_path(&self, job_id: u32, node: &str) -> PathBuf {
        self.job_dir(job_id)
            .join(format!("node-{}.csv", sanitize(node)))
    }

    pub fn write_node_footprint(
        &self,
        job_id: u32,
        node: &str,
        csv: &[u8],
    ) -> Result<PathBuf, SpoolError> {
        self.ensure_job_dir(job_id)?;
        let p = self.node_footprint_path(job_id, node);
        write_atomic(&p, csv)?;
        Ok(p)
    }

    /// Every node footprint present for a job, sorted by path.
    pub fn node_footprints(&self, job_id: u32) -> Result<Vec<PathBuf>, SpoolError> {
        self.job_files(job_id, "node-", ".csv")
    }

    fn job_files(&self, job_id: u32, pre: &str, post: &str) -> Result<Vec<PathBuf>, SpoolError> {
        files_in(&self.job_dir(job_id), pre, post)
    }

    /// Where the sampler keeps this node's footprint so far while the job
    /// runs (same CSV as the final footprint), for `carbontrack status`.
    pub fn live_path(&self, job_id: u32, node: &str) -> PathBuf {
        self.job_dir(job_id)
            .join(format!("live-{}.csv", sanitize(node)))
    }

    /// Every live footprint of a job on this node, sorted by path.
    pub fn live_footprints(&self, job_id: u32) -> Result<Vec<PathBuf>, SpoolError> {
        self.job_files(job_id, "live-", ".csv")
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.root.join("outbox")
    }

    /// The undelivered total of a run.
    pub fn outbox_path(&self, run: RunKey) -> PathBuf {
        self.outbox_dir().join(format!("{}.json", run.stem()))
    }

    /// The lock file that guards delivery of one outbox record. It is a file
    /// apart from the record because the record is replaced (renamed over)
    /// as parts get delivered, which would drop a lock held on it.
    pub fn outbox_lock_path(&self, run: RunKey) -> PathBuf {
        self.outbox_dir().join(format!("{}.lock", run.stem()))
    }

    /// Writes a run's outbox record atomically.
    pub fn write_outbox(&self, run: RunKey, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        ensure_private_dir(&self.outbox_dir())?;
        let p = self.outbox_path(run);
        write_atomic(&p, bytes)?;
        Ok(p)
    }

    /// Takes the delivery lock of a job's record; `None` while another
    /// process delivers it. Released when the file is dropped.
    pub fn try_lock_outbox(&self, run: RunKey) -> Result<Option<File>, SpoolError> {
        ensure_private_dir(&self.outbox_dir())?;
        let p = self.outbox_lock_path(run);
        lock_file(&p, Duration::ZERO)
    }

    /// Removes a delivered job's record and then its lock file (call while
    /// holding the lock: a process that opens the lock after this finds no
    /// record and leaves).
    pub fn remove_outbox(&self, run: RunKey) -> Result<(), SpoolError> {
        for p in [self.outbox_path(run), self.outbox_lock_path(run)] {
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs with a record in the outbox, in ascending order (oldest first
    /// for Slurm's increasing ids, and a job id's runs by start).
    pub fn outbox_jobs(&self) -> Result<Vec<RunKey>, SpoolError> {
        let d = self.outbox_dir();
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&d)(e)),
        };
        let mut v: Vec<RunKey> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n = e.file_name();
                RunKey::parse(n.to_str()?.strip_suffix(".json")?)
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Where a later job's prolog moves an earlier run's directory.
    pub fn stale_dir(&self) -> PathBuf {
        self.root.join("stale")
    }

    /// Clears the way for a new job `job_id` on this node: an earlier run's
    /// directory is removed when it holds no footprint, and moved to
    /// `stale/` when it does (that run's Epilog never ran here), so that the
    /// next Epilog or flush delivers it as its own run. `Some(path)` when
    /// it was moved.
    pub fn retire_job(&self, job_id: u32) -> Result<Option<PathBuf>, SpoolError> {
        if self.node_footprints(job_id)?.is_empty() {
            self.remove_job(job_id)?;
            return Ok(None);
        }
        let d = self.stale_dir();
        ensure_private_dir(&d)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos());
        let to = d.join(format!("{job_id}-{nanos}"));
        let from = self.job_dir(job_id);
        fs::rename(&from, &to).map_err(io_err(&from))?;
        Ok(Some(to))
    }

    /// The earlier runs' directories in `stale/`, each with its job id.
    pub fn stale_jobs(&self) -> Result<Vec<(u32, PathBuf)>, SpoolError> {
        let d = self.stale_dir();
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&d)(e)),
        };
        let mut v: Vec<(u32, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n = e.file_name();
                let id = n.to_str()?.split_once('-')?.0.parse().ok()?;
                Some((id, e.path()))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// [`Spool::quarantine`] for a log line: `moved to <where>`, or why
    /// the file could not be moved.
    pub fn set_aside(&self, job_id: u32, path: &Path) -> String {
        self.quarantine(job_id, path)
            .map(|to| format!("moved to {}", to.display()))
            .unwrap_or_else(|e| format!("could not move it aside: {e}"))
    }

    /// Moves a spool file that could not be read to `<spool>/corrupt/`, so
    /// it is reported once and kept for a look, not retried forever.
    pub fn quarantine(&self, job_id: u32, path: &Path) -> Result<PathBuf, SpoolError> {
        let d = self.root.join("corrupt");
        ensure_private_dir(&d)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = d.join(format!("{job_id}-{name}"));
        fs::rename(path, &to).map_err(io_err(path))?;
        Ok(to)
    }

    /// Tries to become the one sampler of a job on this node. The lock lives as
    /// long as the returned file (the kernel drops it when the holder exits,
    /// however it exits), so the next step can take over.
    pub fn try_lock_sampler(&self, job_id: u32) -> Result<Option<File>, SpoolError> {
        let p = self.ensure_job_dir(job_id)?.join("sampler.lock");
        lock_file(&p, Duration::ZERO)
    }

    /// Writes one file of a job's directory atomically (creating the
    /// directory); `name` is ours, never the user's.
    pub fn write_job_file(
        &self,
        job_id: u32,
        name: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, SpoolError> {
        let p = self.ensure_job_dir(job_id)?.join(name);
        write_atomic(&p, bytes)?;
        Ok(p)
    }

    /// Takes the lock of a job's directory, waiting up to `wait` for another
    /// holder; `None` when it could not be had in that time. Released when
    /// the file is dropped. A kernel `flock`, so on a network filesystem it
    /// needs working locks across clients (NFS: not mounted `nolock`; Lustre:
    /// `-o flock`).
    pub fn lock_job(&self, job_id: u32, wait: Duration) -> Result<Option<File>, SpoolError> {
        let p = self.ensure_job_dir(job_id)?.join(".lock");
        lock_file(&p, wait)
    }

    /// Job ids with a directory here, in ascending order.
    pub fn job_ids(&self) -> Result<Vec<u32>, SpoolError> {
        let d = self.root.join("jobs");
        let rd = fs::read_dir(&d).map_err(io_err(&d))?;
        let mut v: Vec<u32> = rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Removes all state of a job whose lock the caller holds, in one step
    /// as others see it: the directory is renamed aside (a name no job id
    /// parses as) before it is emptied. Another node's Epilog waiting for
    /// the lock, or writing its part meanwhile, then finds the job's path
    /// empty or fresh, never half an earlier run's files to take for its own
    /// or to delete with it.
    pub fn remove_job_at_once(&self, job_id: u32) -> Result<(), SpoolError> {
        let d = self.job_dir(job_id);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| t.as_nanos())
            .unwrap_or_default();
        let aside = self
            .root
            .join("jobs")
            .join(format!(".retired-{job_id}-{}-{nanos}", std::process::id()));
        match fs::rename(&d, &aside) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            r => r.map_err(io_err(&d))?,
        }
        fs::remove_dir_all(&aside).map_err(io_err(&aside))
    }

    /// Removes all state of a job.
    pub fn remove_job(&self, job_id: u32) -> Result<(), SpoolError> {
        let d = self.job_dir(job_id);
        match fs::remove_dir_all(&d) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&d)(e)),
            _ => Ok(()),
        }
    }
}

/// Every node footprint in a job directory (a stale one, say), sorted.
pub fn node_footprints_in(d: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    files_in(d, "node-", ".csv")
}

fn files_in(d: &Path, pre: &str, post: &str) -> Result<Vec<PathBuf>, SpoolError> {
    let rd = match fs::read_dir(d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(d)(e)),
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(pre) && n.ends_with(post))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Takes an exclusive `flock` on the lock file `p` (created 0600 in the
/// root-only spool, never through a link), waiting up to `wait`; `None`
/// when another holder keeps it. The lock lives as long as the returned file.
fn lock_file(p: &Path, wait: Duration) -> Result<Option<File>, SpoolError> {
    Ok(safe_fs::lock(p, wait)?)
}

/// Node names go into file names: keep them to a safe alphabet.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn check_private_dir(d: &Path) -> Result<(), SpoolError> {
    let m = fs::symlink_metadata(d).map_err(io_err(d))?;
    if !m.is_dir() || m.uid() != crate::ffi::identity::euid() || m.mode() & 0o022 != 0 {
        return Err(SpoolError::Unsafe(d.to_path_buf()));
    }
    Ok(())
}

fn ensure_private_dir(d: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_private_dir(d),
        Err(e) => Err(io_err(d)(e)),
    }
}

/// Writes a whole file (0600) so readers see the old or the new content,
/// never half, and a link at the name is replaced, never followed. The
/// temporary name is unique per host, process and call (`.<name>.tmp-<host>-
/// <pid>-<n>`): in `shared=` several nodes write the same job's files, and
/// their pids may well coincide.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}-{n}",
        sanitize(&crate::host::hostname()),
        std::process::id()
    ));
    Ok(safe_fs::write_atomic(path, &tmp, bytes, 0o600)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ct-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn handoff_and_footprints_live_in_a_private_job_dir() {
        let root = temp("ok");
        let s = Spool::open(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        assert_eq!(s.read_handoff(5).unwrap(), None);
        let info = JobInfo {
            job_id: 5,
            uid: 1000,
            gid: 1000,
            ..Default::default()
        };
        let p = s.write_handoff(&info).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(s.read_handoff(5).unwrap(), Some(info));
        s.write_node_footprint(5, "node/1", b"a,b\n").unwrap();
        s.write_node_footprint(5, "node2", b"a,b\n").unwrap();
        let names: Vec<_> = s
            .node_footprints(5)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["node-node2.csv", "node-node_1.csv"]);
        s.remove_job(5).unwrap();
        assert!(s.node_footprints(5).unwrap().is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_job_removed_at_once_leaves_its_path_fresh_under_a_held_lock() {
        let root = temp("at-once");
        let s = Spool::open(&root).unwrap();
        let held = s.lock_job(7, Duration::ZERO).unwrap().expect("the lock");
        s.write_node_footprint(7, "n1", b"a,b\n").unwrap();
        s.remove_job_at_once(7).unwrap();
        assert!(!s.job_dir(7).exists());
        // Nothing aside is left, and nothing there reads as a job.
        assert_eq!(fs::read_dir(root.join("jobs")).unwrap().count(), 0);
        // The path's lock is a fresh one: the retired run's, still held,
        // does not stand in the way of the next run's part.
        let next = s.lock_job(7, Duration::ZERO).unwrap();
        assert!(next.is_some());
        s.write_node_footprint(7, "n2", b"a,b\n").unwrap();
        assert_eq!(s.node_footprints(7).unwrap().len(), 1);
        assert_eq!(s.job_ids().unwrap(), [7]);
        drop((held, next));
        s.remove_job_at_once(8).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn outbox_records_locks_and_quarantine() {
        let root = temp("outbox");
        let s = Spool::open(&root).unwrap();
        assert!(s.outbox_jobs().unwrap().is_empty());
        let run = |job_id, start| RunKey { job_id, start };
        s.write_outbox(run(12, Some(100)), b"{}").unwrap();
        s.write_outbox(run(9, Some(100)), b"{}").unwrap();
        // A later job with id 9: its own record, beside the earlier one's.
        s.write_outbox(run(9, Some(5000)), b"{}").unwrap();
        // Written before runs were keyed.
        fs::write(s.outbox_dir().join("7.json"), b"{}").unwrap();
        assert_eq!(
            s.outbox_jobs().unwrap(),
            [
                run(7, None),
                run(9, Some(100)),
                run(9, Some(5000)),
                run(12, Some(100))
            ]
        );
        let held = s.try_lock_outbox(run(9, Some(100))).unwrap();
        assert!(held.is_some());
        assert!(s.try_lock_outbox(run(9, Some(100))).unwrap().is_none());
        assert!(s.try_lock_outbox(run(9, Some(5000))).unwrap().is_some());
        s.remove_outbox(run(9, Some(100))).unwrap();
        drop(held);
        assert_eq!(
            s.outbox_jobs().unwrap(),
            [run(7, None), run(9, Some(5000)), run(12, Some(100))]
        );
        assert!(!s.outbox_lock_path(run(9, Some(100))).exists());

        s.write_node_footprint(4, "n1", b"garbage").unwrap();
        let p = s.node_footprint_path(4, "n1");
        let to = s.quarantine(4, &p).unwrap();
        assert_eq!(to, root.join("corrupt/4-node-n1.csv"));
        assert!(!p.exists() && to.exists());
        assert!(s.node_footprints(4).unwrap().is_empty());
        assert_eq!(s.live_path(4, "n/1"), s.job_dir(4).join("live-n_1.csv"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn run_keys_name_a_run_by_its_start() {
        let k = RunKey::new(42, "2024-05-01T00:00:00.000Z");
        assert_eq!(k.start, Some(1_714_521_600));
        assert_eq!(k.stem(), "42-1714521600");
        assert_eq!(RunKey::parse(&k.stem()), Some(k));
        assert_eq!(k.to_string(), "42 (measured from 2024-05-01T00:00:00Z)");
        let unknown = RunKey::new(42, "");
        assert_eq!(
            (unknown.stem(), unknown.to_string()),
            ("42".into(), "42".into())
        );
        assert_eq!(RunKey::parse("42-x"), None);
    }

    #[test]
    fn a_later_job_moves_an_undelivered_run_aside() {
        let root = temp("retire");
        let s = Spool::open(&root).unwrap();
        // Nothing to keep: the earlier run's hand-off just goes.
        s.write_handoff(&JobInfo {
            job_id: 8,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.retire_job(8).unwrap(), None);
        assert!(!s.job_dir(8).exists());
        assert_eq!(s.retire_job(8).unwrap(), None);
        // An undelivered footprint: kept, whole, in stale/.
        s.write_node_footprint(8, "n1", b"a,b\n").unwrap();
        let to = s.retire_job(8).unwrap().unwrap();
        assert!(!s.job_dir(8).exists());
        assert_eq!(fs::read(to.join("node-n1.csv")).unwrap(), b"a,b\n");
        assert_eq!(s.stale_jobs().unwrap(), [(8, to.clone())]);
        assert_eq!(node_footprints_in(&to).unwrap(), [to.join("node-n1.csv")]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn temporary_names_are_per_host_process_and_call() {
        let root = temp("tmpnames");
        fs::create_dir_all(&root).unwrap();
        let p = root.join("job.json");
        // Another writer's temporary file (same pid, another host, or a
        // crashed writer) is neither reused nor in the way.
        let other = root.join(format!(".job.json.tmp-otherhost-{}-0", std::process::id()));
        fs::write(&other, b"theirs").unwrap();
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read(&other).unwrap(), b"theirs");
        let names: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_a_spool_others_can_write() {
        let root = temp("unsafe");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let e = Spool::open(&root).unwrap_err().to_string();
        assert!(e.contains("not safe") && e.contains("chmod 700"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn one_sampler_per_job() {
        let root = temp("lock");
        let s = Spool::open(&root).unwrap();
        let held = s.try_lock_sampler(9).unwrap();
        assert!(held.is_some());
        assert!(s.try_lock_sampler(9).unwrap().is_none());
        drop(held);
        assert!(s.try_lock_sampler(9).unwrap().is_some());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_corrupt_handoff_is_an_error_not_a_guess() {
        let root = temp("corrupt");
        let s = Spool::open(&root).unwrap();
        fs::create_dir_all(s.job_dir(3)).unwrap();
        fs::write(s.job_dir(3).join("handoff"), "uid=1\n").unwrap();
        let e = s.read_handoff(3).unwrap_err().to_string();
        assert!(e.contains("job_id") && e.contains("unreadable"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }
}
