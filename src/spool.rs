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
//! <spool>/outbox/<jobid>.json         a finished job's total not yet delivered
//!                                      to accounting and/or the ledger
//! <spool>/outbox/<jobid>.lock         held by whoever is delivering that job
//! <spool>/corrupt/<jobid>-<name>      spool files that could not be read,
//!                                      moved aside once, with one log line
//! ```
//! The epilog turns a job's node footprints into one outbox record and
//! removes the job's directory and the record only once both deliveries are
//! done; until then any later epilog or `carbontrack flush` retries it.
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
use std::time::Duration;

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
        let d = self.job_dir(job_id);
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&d)(e)),
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

    /// The undelivered total of a job.
    pub fn outbox_path(&self, job_id: u32) -> PathBuf {
        self.outbox_dir().join(format!("{job_id}.json"))
    }

    /// The lock file that guards delivery of one outbox record. It is a file
    /// apart from the record because the record is replaced (renamed over)
    /// as parts get delivered, which would drop a lock held on it.
    pub fn outbox_lock_path(&self, job_id: u32) -> PathBuf {
        self.outbox_dir().join(format!("{job_id}.lock"))
    }

    /// Writes a job's outbox record atomically.
    pub fn write_outbox(&self, job_id: u32, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        ensure_private_dir(&self.outbox_dir())?;
        let p = self.outbox_path(job_id);
        write_atomic(&p, bytes)?;
        Ok(p)
    }

    /// Takes the delivery lock of a job's record; `None` while another
    /// process delivers it. Released when the file is dropped.
    pub fn try_lock_outbox(&self, job_id: u32) -> Result<Option<File>, SpoolError> {
        ensure_private_dir(&self.outbox_dir())?;
        let p = self.outbox_lock_path(job_id);
        lock_file(&p, Duration::ZERO)
    }

    /// Removes a delivered job's record and then its lock file (call while
    /// holding the lock: a process that opens the lock after this finds no
    /// record and leaves).
    pub fn remove_outbox(&self, job_id: u32) -> Result<(), SpoolError> {
        for p in [self.outbox_path(job_id), self.outbox_lock_path(job_id)] {
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Job ids with a record in the outbox, in ascending order (oldest first
    /// for Slurm's increasing ids).
    pub fn outbox_jobs(&self) -> Result<Vec<u32>, SpoolError> {
        let d = self.outbox_dir();
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&d)(e)),
        };
        let mut v: Vec<u32> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n = e.file_name();
                n.to_str()?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        Ok(v)
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

    /// Removes all state of a job.
    pub fn remove_job(&self, job_id: u32) -> Result<(), SpoolError> {
        let d = self.job_dir(job_id);
        match fs::remove_dir_all(&d) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&d)(e)),
            _ => Ok(()),
        }
    }
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
/// never half, and a link at the name is replaced, never followed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
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
    fn outbox_records_locks_and_quarantine() {
        let root = temp("outbox");
        let s = Spool::open(&root).unwrap();
        assert!(s.outbox_jobs().unwrap().is_empty());
        s.write_outbox(12, b"{}").unwrap();
        s.write_outbox(9, b"{}").unwrap();
        assert_eq!(s.outbox_jobs().unwrap(), [9, 12]);
        let held = s.try_lock_outbox(9).unwrap();
        assert!(held.is_some());
        assert!(s.try_lock_outbox(9).unwrap().is_none());
        s.remove_outbox(9).unwrap();
        drop(held);
        assert_eq!(s.outbox_jobs().unwrap(), [12]);
        assert!(!s.outbox_lock_path(9).exists());

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
