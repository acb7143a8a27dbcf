//! Putting files into the user's directory with the user's identity, and
//! reading them back the same way.
//!
//! Root never writes there itself: the write runs under the job user's
//! filesystem identity ([`crate::ffi::identity`]), so the kernel checks it as
//! the user's own, and a link planted at the file's name is replaced, never
//! followed (temporary file, then rename over the name). Reads
//! (`carbontrack status` run by root) likewise run as the user, never
//! follow a link at the name, never wait on a FIFO, and are bounded.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::ffi::identity::{FsIdentity, euid, with_fs_identity};
use crate::safe_fs::{self, SafeFsError};

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("cannot act as uid {uid} to write into {dir}: {source}")]
    Identity {
        uid: u32,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("cannot write {path} as uid {uid}: {source}")]
    Write {
        uid: u32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot read {path} as uid {uid}: {source}")]
    Read {
        uid: u32,
        path: PathBuf,
        source: SafeFsError,
    },
}

/// Reads `path`, a file in a user's directory, as the user `id` (`None`: as
/// the caller): the kernel checks the access as the user's own, a link at
/// the name is refused (`O_NOFOLLOW`), a FIFO neither blocks nor is read
/// (`O_NONBLOCK`, then only a regular file), and at most `max` bytes are
/// read.
pub fn read_user_file(
    id: Option<&FsIdentity>,
    path: &Path,
    max: u64,
) -> Result<Vec<u8>, DeliverError> {
    let uid = id.map_or_else(euid, |id| id.uid);
    let read = || -> Result<Vec<u8>, SafeFsError> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(safe_fs::OPEN_FLAGS)
            .open(path)
            .map_err(|e| safe_fs::open_error(path, e))?;
        safe_fs::check_regular(path, &f)?;
        safe_fs::read_bounded(path, f, max)
    };
    let read_err = |source| DeliverError::Read {
        uid,
        path: path.to_path_buf(),
        source,
    };
    match id.filter(|id| id.uid != euid()) {
        None => read().map_err(read_err),
        Some(id) => with_fs_identity(id, read)
            .map_err(|source| DeliverError::Identity {
                uid,
                dir: path.parent().unwrap_or(path).to_path_buf(),
                source,
            })?
            .map_err(read_err),
    }
}

impl DeliverError {
    /// Whether trying again cannot help: the directory is gone or not the
    /// user's to write, or a link is in the way. A full disk, an exceeded
    /// quota, an I/O error or a stale NFS handle may mend: those are worth
    /// another try later.
    pub fn is_permanent(&self) -> bool {
        let source = match self {
            DeliverError::Identity { .. } => return true,
            DeliverError::Write { source, .. } => source,
            DeliverError::Read { .. } => return true,
        };
        use io::ErrorKind as K;
        matches!(
            source.kind(),
            K::NotFound
                | K::NotADirectory
                | K::PermissionDenied
                | K::ReadOnlyFilesystem
                | K::InvalidFilename
        ) || source.raw_os_error() == Some(libc::ELOOP)
    }
}

/// Writes `dir/name` as the user `id` (`None`: as the caller), atomically.
/// Returns the path written.
pub fn write_user_file(
    id: Option<&FsIdentity>,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<PathBuf, DeliverError> {
    let path = dir.join(name);
    let uid = id.map_or_else(euid, |id| id.uid);
    let write = || {
        write_replacing(&path, bytes).map_err(|source| DeliverError::Write {
            uid,
            path: path.clone(),
            source,
        })
    };
    match id.filter(|id| id.uid != euid()) {
        // The caller is already that user (e.g. `carbontrack run`).
        None => write()?,
        Some(id) => with_fs_identity(id, write).map_err(|source| DeliverError::Identity {
            uid,
            dir: dir.to_path_buf(),
            source,
        })??,
    }
    Ok(path)
}

fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("carbontrack");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // rename replaces whatever is at `path`, a planted link included, and
        // never writes through it.
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn writes_as_the_user_and_never_through_a_planted_link() {
        if euid() != 0 {
            eprintln!("skipped: writing as another user needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("ct-deliver-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let work = base.join("work");
        fs::create_dir_all(&work).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
        let target = base.join("etc-shadow");
        fs::write(&target, "secret").unwrap();
        std::os::unix::fs::symlink(&target, work.join("carbontrack-1.csv")).unwrap();

        let nobody = FsIdentity {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let p = write_user_file(Some(&nobody), &work, "carbontrack-1.csv", b"job_id\n1\n").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "secret");
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.is_file());
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        assert_eq!(fs::read_to_string(&p).unwrap(), "job_id\n1\n");

        // A directory the user cannot write: an error naming the path, nothing written.
        fs::set_permissions(&work, fs::Permissions::from_mode(0o555)).unwrap();
        let e = write_user_file(Some(&nobody), &work, "carbontrack-1.txt", b"x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("carbontrack-1.txt") && e.contains("65534"),
            "{e}"
        );
        assert!(!work.join("carbontrack-1.txt").exists());
        fs::remove_dir_all(&base).unwrap();
    }

    /// What root reads for `carbontrack status` out of a user's directory:
    /// as the user, never through a link, never from a FIFO, bounded.
    #[test]
    fn reads_as_the_user_never_through_a_link_or_from_a_fifo() {
        use crate::safe_fs::tests::{mkfifo, quick};
        if euid() != 0 {
            eprintln!("skipped: reading as another user needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("ct-deliver-read-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let work = base.join("work");
        fs::create_dir_all(&work).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
        let nobody = FsIdentity {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        // Root's secret, 0600, and a link to it where the summary should be.
        let secret = base.join("secret");
        fs::write(&secret, "root only").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let txt = work.join("carbontrack-1.txt");
        std::os::unix::fs::symlink(&secret, &txt).unwrap();
        let e = read_user_file(Some(&nobody), &txt, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is a symbolic link") && e.contains("65534"),
            "{e}"
        );
        fs::remove_file(&txt).unwrap();
        // A hard link to it (or any root-only file): the user cannot read it.
        if fs::hard_link(&secret, &txt).is_ok() {
            let e = read_user_file(Some(&nobody), &txt, 1 << 20)
                .unwrap_err()
                .to_string();
            assert!(e.contains("Permission denied"), "{e}");
            fs::remove_file(&txt).unwrap();
        }
        // A FIFO: refused at once, nothing waits for a writer.
        mkfifo(&txt);
        std::os::unix::fs::chown(&txt, Some(65534), Some(65534)).unwrap();
        let e = quick("read a FIFO", || {
            read_user_file(Some(&nobody), &txt, 1 << 20)
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        fs::remove_file(&txt).unwrap();
        // The user's own summary reads; one too big does not.
        write_user_file(Some(&nobody), &work, "carbontrack-1.txt", b"job 1\n").unwrap();
        assert_eq!(
            read_user_file(Some(&nobody), &txt, 1 << 20).unwrap(),
            b"job 1\n"
        );
        let e = read_user_file(Some(&nobody), &txt, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 3 bytes"), "{e}");
        fs::remove_dir_all(&base).unwrap();
    }
}
