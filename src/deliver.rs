//! Putting files into the user's directory with the user's identity.
//!
//! Root never writes there itself: the write runs under the job user's
//! filesystem identity ([`crate::ffi::identity`]), so the kernel checks it as
//! the user's own, and a link planted at the file's name is replaced, never
//! followed (temporary file, then rename over the name).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::ffi::identity::{FsIdentity, euid, with_fs_identity};

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
}
