//! Opening the files root keeps for itself (spool, outbox, `shared=`,
//! ledger, intensity cache) so that no other user can steer, block or
//! replace them.
//!
//! Three rules, applied everywhere root opens one of its own files:
//! - **The directories are checked, all the way up.** Every directory on the
//!   way to the one root writes into must be owned by root (or this
//!   process's user) and not writable by group or others, except a sticky
//!   one such as `/tmp` above it (there nobody can rename or remove what
//!   root made). The directory root writes into must be owned by this
//!   process's user and not group/other writable, sticky or not. Links on
//!   the way are followed as the kernel would, each checked where it lies.
//! - **Opens never follow a link and never block.** `O_NOFOLLOW |
//!   O_NONBLOCK | O_CLOEXEC`, then `fstat` of what was opened: a regular
//!   file, owned by this process's user, not group/other writable, one
//!   link. A FIFO, a socket, a device or a link at the name is refused at
//!   once, with the path in the message.
//! - **Locks are root-only and bounded.** A lock is a root-owned 0600 file in
//!   a root-only directory (a user cannot open it, so cannot hold it), taken
//!   with a non-blocking `flock` retried until a deadline: a lock held too
//!   long (another root process stuck) is reported, never waited out.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ffi::identity::euid;

/// Flags of every open of a file whose name someone else might have
/// planted: no link followed, no wait on a FIFO, not inherited by children.
pub const OPEN_FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// How many links one path may go through (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// How often a held lock is tried again.
const LOCK_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not safe to use: {problem}, so another user could plant or replace files in it; fix with `{fix}`"
    )]
    UnsafeDir {
        path: PathBuf,
        problem: String,
        /// The commands that make it safe.
        fix: String,
    },
    #[error(
        "{path} {problem}: refused, not read or written through; move it aside (`mv {path} {path}.suspect`) and find out who put it there"
    )]
    UnsafeFile { path: PathBuf, problem: String },
    #[error("{path} is larger than {max} bytes: refused (not a file carbontrack wrote)")]
    TooLarge { path: PathBuf, max: u64 },
}

impl SafeFsError {
    /// Whether the file (or a directory on its way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SafeFsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> SafeFsError + '_ {
        move |source| SafeFsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Who may own a directory on the way to root's files.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// The error for a directory on the way to root's files.
fn unsafe_above(p: &Path, problem: String) -> SafeFsError {
    SafeFsError::UnsafeDir {
        path: p.to_path_buf(),
        problem,
        fix: format!("chown root: {0} && chmod go-w {0}", p.display()),
    }
}

/// The error for the directory root writes into; the fix sets `mode`.
fn unsafe_leaf(p: &Path, problem: String, mode: u32) -> SafeFsError {
    SafeFsError::UnsafeDir {
        path: p.to_path_buf(),
        problem,
        fix: format!("chown root: {0} && chmod {mode:o} {0}", p.display()),
    }
}

fn check_on_the_way(p: &Path, m: &fs::Metadata) -> Result<(), SafeFsError> {
    let unsafe_dir = |problem: String| unsafe_above(p, problem);
    if !trusted(m.uid()) {
        return Err(unsafe_dir(format!("it is owned by uid {}", m.uid())));
    }
    // Sticky (`/tmp`): others may add names, never rename or remove ours.
    if m.mode() & 0o022 != 0 && m.mode() & libc::S_ISVTX == 0 {
        return Err(unsafe_dir(format!(
            "mode {:o} lets group or others write into it",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Checks the directory root writes into: a directory (reached through
/// checked directories only), owned by this process's user, not writable by
/// group or others. `mode` is what the fix in the message sets (700 for
/// private state, 755 for a directory users may read).
fn check_leaf(p: &Path, m: &fs::Metadata, mode: u32) -> Result<(), SafeFsError> {
    let unsafe_dir = |problem: String| unsafe_leaf(p, problem, mode);
    if !m.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    if m.uid() != euid() {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by uid {} (this process)",
            m.uid(),
            euid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "mode {:o} lets group or others write into it",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Checks `dir` and every directory it is reached through (see the module
/// text); `mode` is the mode the fix in an error message sets. Returns the
/// directory's path with every link resolved. A missing directory is an
/// [`SafeFsError::Io`] whose [`SafeFsError::is_not_found`] holds; what was
/// walked before it was safe.
pub fn check_dir(dir: &Path, mode: u32) -> Result<PathBuf, SafeFsError> {
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(SafeFsError::io(dir))?
            .join(dir)
    };
    // Components still to walk, the next one last.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, &abs);
    let mut at = PathBuf::from("/");
    let root = fs::symlink_metadata(&at).map_err(SafeFsError::io(&at))?;
    if dir != Path::new("/") {
        check_on_the_way(&at, &root)?;
    }
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == "/" {
            at = PathBuf::from("/");
            continue;
        }
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let m = fs::symlink_metadata(&next).map_err(SafeFsError::io(&next))?;
        if m.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS || !trusted(m.uid()) {
                return Err(unsafe_above(
                    &next,
                    format!(
                        "it is a link owned by uid {} (or one of over {MAX_LINKS} links)",
                        m.uid()
                    ),
                ));
            }
            let target = fs::read_link(&next).map_err(SafeFsError::io(&next))?;
            push_components(&mut todo, &target);
            continue;
        }
        if !m.is_dir() {
            return Err(unsafe_leaf(&next, "it is not a directory".into(), mode));
        }
        if todo.is_empty() {
            check_leaf(&next, &m, mode)?;
        } else {
            check_on_the_way(&next, &m)?;
        }
        at = next;
    }
    if at == Path::new("/") {
        check_leaf(&at, &root, mode)?;
    }
    Ok(at)
}

/// Pushes `p`'s components so that the first one is popped first; an
/// absolute path starts again from `/`.
fn push_components(todo: &mut Vec<OsString>, p: &Path) {
    let parts: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::RootDir => Some(OsString::from("/")),
            Component::ParentDir => Some(OsString::from("..")),
            Component::Normal(n) => Some(n.to_os_string()),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// [`check_dir`], creating the directory (and missing ones above it, each
/// `mode`, as this process's user) when it does not exist yet. Only missing
/// directories below checked ones are created.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<PathBuf, SafeFsError> {
    match check_dir(dir, mode) {
        Err(e) if e.is_not_found() => {
            match fs::DirBuilder::new().recursive(true).mode(mode).create(dir) {
                Ok(()) => {}
                // Made by a concurrent process meanwhile: checked below.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(SafeFsError::io(dir)(e)),
            }
            check_dir(dir, mode)
        }
        r => r,
    }
}

/// Checks that `f` (opened at `path`) is a file this process's user wrote:
/// a regular file, owned by it, not group/other writable, with one link.
pub fn check_own_file(path: &Path, f: &File) -> Result<(), SafeFsError> {
    let m = f.metadata().map_err(SafeFsError::io(path))?;
    let problem = if !m.file_type().is_file() {
        Some(format!("is {}, not a regular file", kind(&m.file_type())))
    } else if m.uid() != euid() {
        Some(format!(
            "is owned by uid {}, not by uid {} (this process)",
            m.uid(),
            euid()
        ))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "has mode {:o}: group or others can write it",
            m.mode() & 0o7777
        ))
    } else if m.nlink() > 1 {
        Some(format!("has {} hard links", m.nlink()))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(SafeFsError::UnsafeFile {
            path: path.to_path_buf(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Checks that `f` is a regular file (whoever owns it).
pub fn check_regular(path: &Path, f: &File) -> Result<(), SafeFsError> {
    let m = f.metadata().map_err(SafeFsError::io(path))?;
    if m.file_type().is_file() {
        Ok(())
    } else {
        Err(SafeFsError::UnsafeFile {
            path: path.to_path_buf(),
            problem: format!("is {}, not a regular file", kind(&m.file_type())),
        })
    }
}

fn kind(t: &fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// The error of an open with [`OPEN_FLAGS`], saying what was found when the
/// flags refused it.
pub fn open_error(path: &Path, e: io::Error) -> SafeFsError {
    let problem = match e.raw_os_error() {
        // O_NOFOLLOW on a link.
        Some(libc::ELOOP) => "is a symbolic link",
        // A FIFO with no reader opened for writing without blocking, a socket.
        Some(libc::ENXIO) => "is a FIFO or socket",
        _ => return SafeFsError::io(path)(e),
    };
    SafeFsError::UnsafeFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Opens one of this process's own files with `opts` plus [`OPEN_FLAGS`],
/// then checks what was opened ([`check_own_file`]).
pub fn open_own(path: &Path, opts: &mut OpenOptions) -> Result<File, SafeFsError> {
    let f = opts
        .custom_flags(OPEN_FLAGS)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    check_own_file(path, &f)?;
    Ok(f)
}

/// Reads the whole of one of this process's own files, at most `max` bytes.
pub fn read_own(path: &Path, max: u64) -> Result<Vec<u8>, SafeFsError> {
    let f = open_own(path, OpenOptions::new().read(true))?;
    read_bounded(path, f, max)
}

/// Opens a file for reading with `O_NONBLOCK | O_CLOEXEC` (links followed:
/// for files an admin names, such as a ledger to report on) and checks it is
/// a regular file, so a FIFO never blocks the reader.
pub fn open_regular(path: &Path) -> Result<File, SafeFsError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    check_regular(path, &f)?;
    Ok(f)
}

/// All of `f`, refused when over `max` bytes.
pub fn read_bounded(path: &Path, f: File, max: u64) -> Result<Vec<u8>, SafeFsError> {
    let mut buf = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(SafeFsError::io(path))?;
    if buf.len() as u64 > max {
        return Err(SafeFsError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(buf)
}

/// Takes an exclusive `flock` on the lock file `path` (created 0600 when
/// missing, never through a link, checked as this process's own), trying
/// again until `wait` has passed; `None` when another holder kept it all
/// that time. The lock lives as long as the returned file. The directory
/// must be one [`check_dir`] accepted, so no other user can open the file.
pub fn lock(path: &Path, wait: Duration) -> Result<Option<File>, SafeFsError> {
    let f = open_own(
        path,
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600),
    )?;
    let deadline = Instant::now() + wait;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(LOCK_POLL.min(deadline - now));
            }
            Err(fs::TryLockError::Error(e)) => return Err(SafeFsError::io(path)(e)),
        }
    }
}

/// Writes a whole file (mode `mode`) so readers see the old or the new
/// content, never half: a temporary file beside it (`tmp_name`), created
/// new and never through a link, then renamed over the name (which replaces
/// whatever is there, a link included, without following it).
pub fn write_atomic(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), SafeFsError> {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(OPEN_FLAGS)
            .open(tmp)
    };
    let mut f = match create() {
        // Left by a process of the same pid that died mid-write.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(tmp).map_err(SafeFsError::io(tmp))?;
            create().map_err(|e| open_error(tmp, e))?
        }
        r => r.map_err(|e| open_error(tmp, e))?,
    };
    // Exactly `mode`, whatever the umask took away (a file others read, such
    // as node_exporter's, needs its read bits).
    let written = f
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(SafeFsError::io(tmp)(e));
    }
    fs::rename(tmp, path).map_err(SafeFsError::io(path))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    pub(crate) fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ct-safefs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::DirBuilder::new().mode(0o755).create(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    pub(crate) fn mkfifo(p: &Path) {
        let ok = Command::new("mkfifo")
            .arg(p)
            .stdin(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo {}", p.display());
    }

    /// Runs `f` and checks it came back quickly (no wait on a FIFO or lock).
    pub(crate) fn quick<T>(what: &str, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let r = f();
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{what} took {:?}",
            t0.elapsed()
        );
        r
    }

    #[test]
    fn a_fifo_a_link_a_foreign_file_and_a_hard_link_are_refused_at_once() {
        let d = temp("files");
        let fifo = d.join("fifo");
        mkfifo(&fifo);
        let target = d.join("target");
        fs::write(&target, "keep").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let hard = d.join("hard");
        fs::hard_link(&target, &hard).unwrap();
        let open_rw = |p: &Path| {
            open_own(
                p,
                OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .mode(0o644),
            )
        };
        for (p, want) in [
            (&fifo, "is a FIFO"),
            (&link, "is a symbolic link"),
            (&hard, "has 2 hard links"),
        ] {
            let e = quick("open", || open_rw(p)).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("refused"), "{e}");
            let e = quick("read", || read_own(p, 100)).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            let e = quick("lock", || lock(p, Duration::ZERO))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) || e.contains("FIFO"), "{e}");
        }
        // Opening a FIFO for writing alone: refused by the kernel at once.
        let e = quick("write-only", || {
            open_own(&fifo, OpenOptions::new().write(true))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("FIFO"), "{e}");
        let e = quick("read", || open_regular(&fifo))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");

        // A file another user made (pre-created before root got there).
        let theirs = d.join("theirs");
        fs::write(&theirs, "x").unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        if euid() == 0 {
            let e = open_rw(&theirs).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
        // Group-writable: refused too.
        let loose = d.join("loose");
        fs::write(&loose, "x").unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o664)).unwrap();
        let e = read_own(&loose, 10).unwrap_err().to_string();
        assert!(e.contains("mode 664"), "{e}");
        // Bounded reads.
        let big = d.join("big");
        fs::write(&big, vec![b'x'; 101]).unwrap();
        let e = read_own(&big, 100).unwrap_err().to_string();
        assert!(e.contains("larger than 100 bytes"), "{e}");
        assert_eq!(read_own(&big, 101).unwrap().len(), 101);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn directories_are_checked_all_the_way_up() {
        let d = temp("dirs");
        let a = d.join("a");
        let leaf = a.join("b/c");
        assert_eq!(ensure_dir(&leaf, 0o755).unwrap(), leaf);
        assert_eq!(fs::metadata(&leaf).unwrap().mode() & 0o777, 0o755);
        // A group-writable directory above: refused, naming it and the fix.
        fs::set_permissions(&a, fs::Permissions::from_mode(0o775)).unwrap();
        let e = check_dir(&leaf, 0o755).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{} is not safe", a.display()))
                && e.contains("mode 775")
                && e.contains(&format!("chown root: {0} && chmod go-w {0}", a.display())),
            "{e}"
        );
        // Sticky above (like /tmp) is fine; sticky as the leaf is not.
        fs::set_permissions(&a, fs::Permissions::from_mode(0o1777)).unwrap();
        check_dir(&leaf, 0o755).unwrap();
        let e = check_dir(&a, 0o700).unwrap_err().to_string();
        assert!(e.contains("mode 1777") && e.contains("chmod 700"), "{e}");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
        // Another user's directory on the way, or as the leaf.
        if euid() == 0 {
            std::os::unix::fs::chown(a.join("b"), Some(65534), None).unwrap();
            let e = check_dir(&leaf, 0o755).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            let e = ensure_dir(&a.join("b/new"), 0o700).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            assert!(!a.join("b/new").exists(), "nothing made under it");
            std::os::unix::fs::chown(a.join("b"), Some(0), None).unwrap();
        }
        // A link is followed and its target checked; the link itself must
        // lie in a checked directory.
        let via = d.join("via");
        std::os::unix::fs::symlink("a/b", &via).unwrap();
        assert_eq!(check_dir(&via.join("c"), 0o755).unwrap(), leaf);
        fs::set_permissions(&leaf, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(&via.join("c"), 0o755).unwrap_err().to_string();
        assert!(e.contains(&leaf.display().to_string()), "{e}");
        // A file where a directory should be.
        fs::write(d.join("file"), "").unwrap();
        let e = ensure_dir(&d.join("file"), 0o755).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        // Missing: reported as such.
        assert!(
            check_dir(&d.join("none"), 0o755)
                .unwrap_err()
                .is_not_found()
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn locks_are_bounded_and_atomic_writes_replace_links() {
        let d = temp("lock");
        let p = d.join("x.lock");
        let held = lock(&p, Duration::ZERO).unwrap().unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let t0 = Instant::now();
        assert!(lock(&p, Duration::from_millis(300)).unwrap().is_none());
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(1),
            "{waited:?}"
        );
        drop(held);
        assert!(lock(&p, Duration::ZERO).unwrap().is_some());

        let target = d.join("target");
        fs::write(&target, "keep").unwrap();
        let name = d.join("file");
        std::os::unix::fs::symlink(&target, &name).unwrap();
        let tmp = d.join("file.tmp");
        // A stale temporary file (or a link planted there) is removed first.
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        write_atomic(&name, &tmp, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(fs::symlink_metadata(&name).unwrap().is_file());
        assert_eq!(read_own(&name, 10).unwrap(), b"new");
        fs::remove_dir_all(&d).unwrap();
    }
}
