//! The node-local, root-owned state directory (`spool=`, default
//! `/var/spool/carbontrack`).
//!
//! Layout, one directory per job so that cleaning up a job is one removal:
//! ```text
//! <spool>/jobs/<jobid>/handoff        the prolog's JobInfo for the sampling step
//! <spool>/jobs/<jobid>/node-<host>.csv this node's footprint, for the epilog
//! <spool>/jobs/<jobid>/sampler.lock   who samples, when there is no extern step
//! ```
//! Everything is written by root, mode 0600, atomically (temporary file and
//! rename), and the spool itself is refused unless root owns it and nobody
//! else can write to it: a spool others could write would let them forge
//! footprints or plant links that root then follows.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::job::JobInfo;

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
    /// Opens the spool, creating it (0700) when missing, and checks it is safe.
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        match fs::symlink_metadata(root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(root)
                    .map_err(io_err(root))?;
            }
            Err(e) => return Err(io_err(root)(e)),
            Ok(_) => {}
        }
        check_private_dir(root)?;
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
        match fs::read_to_string(&p) {
            Ok(t) => JobInfo::from_text(&t)
                .map(Some)
                .map_err(|e| SpoolError::BadRecord {
                    path: p,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p)(e)),
        }
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
                    .is_some_and(|n| n.starts_with("node-") && n.ends_with(".csv"))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Tries to become the one sampler of a job on this node. The lock lives as
    /// long as the returned file (the kernel drops it when the holder exits,
    /// however it exits), so the next step can take over.
    pub fn try_lock_sampler(&self, job_id: u32) -> Result<Option<File>, SpoolError> {
        let p = self.ensure_job_dir(job_id)?.join("sampler.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(io_err(&p))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err(&p)(e)),
        }
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
    match fs::DirBuilder::new().mode(0o700).create(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_private_dir(d),
        Err(e) => Err(io_err(d)(e)),
    }
}

/// Writes a whole file so readers see the old or the new content, never half.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
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
