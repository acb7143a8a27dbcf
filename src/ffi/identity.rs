//! Acting as the job's user for file access, on this thread only.
//!
//! slurmstepd runs our callbacks as root, but root must never write into a
//! user's directory: a link the user planted would make root write anywhere.
//! Linux keeps a per-thread *filesystem* identity (fsuid, fsgid, supplementary
//! groups) that the kernel uses for every permission check on open, create and
//! rename. Switching it on the calling thread only leaves slurmstepd's other
//! threads (and its real and effective ids) untouched, needs no fork, and makes
//! the kernel check each access exactly as if the user made it.
//!
//! glibc's `setgroups` is broadcast to every thread of the process (setxid), so
//! the raw system calls are used to keep the change on this thread.

use std::io;

/// A user's filesystem identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsIdentity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Restores the thread's previous identity when dropped, also on panic.
struct Restore {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // Restoring root's identity cannot fail for a thread that could drop it;
        // there is nothing better to do with an error in a destructor.
        let _ = set_fsuid(self.uid);
        let _ = set_fsgid(self.gid);
        let _ = set_groups(&self.groups);
    }
}

/// Runs `f` with this thread's filesystem identity switched to `id`.
///
/// Fails, without running `f`, when the switch does not take (the caller lacks
/// CAP_SETUID/CAP_SETGID, i.e. is not root and not already `id`).
pub fn with_fs_identity<T>(id: &FsIdentity, f: impl FnOnce() -> T) -> io::Result<T> {
    let _restore = Restore {
        uid: current_fsuid(),
        gid: current_fsgid(),
        groups: get_groups()?,
    };
    set_groups(&id.groups)?;
    set_fsgid(id.gid)?;
    set_fsuid(id.uid)?;
    Ok(f())
    // `_restore` drops here (or during unwinding) and puts the old identity back.
}

/// The process's effective uid (root inside slurmstepd's privileged callbacks).
pub fn euid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// The user's groups as the system defines them (`getgrouplist`): the primary
/// group `gid` and every supplementary one, so a file is written with the
/// same rights the user's own processes have.
pub fn user_groups(user: &str, gid: u32) -> io::Result<Vec<u32>> {
    let name =
        std::ffi::CString::new(user).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut n: libc::c_int = 32;
    loop {
        let mut groups: Vec<libc::gid_t> = vec![0; n as usize];
        let asked = n;
        // SAFETY: `name` is NUL-terminated; `groups` holds `n` gid_t and the
        // call writes at most `n` of them, updating `n` to the real count.
        let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n.max(0) as usize);
            return Ok(groups);
        }
        if n <= asked {
            // -1 without a larger count: the lookup itself failed.
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no group list for user {user}"),
            ));
        }
    }
}

fn current_fsuid() -> u32 {
    // SAFETY: setfsuid(-1) is an invalid id, so it changes nothing and returns
    // the current fsuid; the call has no memory arguments.
    unsafe { libc::syscall(libc::SYS_setfsuid, -1i32 as libc::uid_t) as u32 }
}

fn current_fsgid() -> u32 {
    // SAFETY: as for current_fsuid: an invalid id changes nothing.
    unsafe { libc::syscall(libc::SYS_setfsgid, -1i32 as libc::gid_t) as u32 }
}

/// setfsuid reports no error; success shows as the new value read back.
fn set_fsuid(uid: u32) -> io::Result<()> {
    // SAFETY: plain integer system call on the calling thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid as libc::uid_t) };
    if current_fsuid() == uid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("cannot switch file access to uid {uid}: not root?"),
        ))
    }
}

fn set_fsgid(gid: u32) -> io::Result<()> {
    // SAFETY: plain integer system call on the calling thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid as libc::gid_t) };
    if current_fsgid() == gid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("cannot switch file access to gid {gid}: not root?"),
        ))
    }
}

fn get_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: with size 0 the kernel only returns the count and writes nothing.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut v: Vec<libc::gid_t> = vec![0; n as usize];
    // SAFETY: the buffer holds exactly `n` gid_t, the size passed to the kernel.
    let m = unsafe { libc::syscall(libc::SYS_getgroups, n, v.as_mut_ptr()) };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    v.truncate(m as usize);
    Ok(v)
}

fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe the slice; the kernel only reads it.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    const NOBODY: FsIdentity = FsIdentity {
        uid: 65534,
        gid: 65534,
        groups: Vec::new(),
    };

    fn is_root() -> bool {
        fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    #[test]
    fn files_are_created_as_the_user_and_root_paths_are_refused() {
        if !is_root() {
            eprintln!("skipped: switching file identity needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("ct-identity-{}", std::process::id()));
        let user_dir = base.join("user");
        let root_dir = base.join("root");
        fs::create_dir_all(&user_dir).unwrap();
        fs::create_dir_all(&root_dir).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&user_dir, Some(65534), Some(65534)).unwrap();
        fs::set_permissions(&root_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let target = root_dir.join("precious");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, user_dir.join("planted")).unwrap();

        with_fs_identity(&NOBODY, || {
            fs::write(user_dir.join("mine.txt"), "hello").unwrap();
            // A root-owned directory is not writable for the user.
            let e = fs::write(root_dir.join("x"), "no").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            // The planted link is refused, and its target could not be written anyway.
            let e = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(user_dir.join("planted"))
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
            assert!(fs::write(user_dir.join("planted"), "pwned").is_err());
        })
        .unwrap();

        let m = fs::metadata(user_dir.join("mine.txt")).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        // Back to root on this thread.
        fs::write(root_dir.join("after"), "root again").unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn group_list_of_a_known_user() {
        let groups = user_groups("root", 0).unwrap();
        assert!(groups.contains(&0), "{groups:?}");
        // An unknown user still has the primary group it was given.
        assert_eq!(
            user_groups("no-such-user-carbontrack", 12345).unwrap(),
            [12345]
        );
    }

    #[test]
    fn identity_is_restored_after_a_panic() {
        if !is_root() {
            eprintln!("skipped: switching file identity needs root");
            return;
        }
        let before = (current_fsuid(), current_fsgid(), get_groups().unwrap());
        let r = std::panic::catch_unwind(|| with_fs_identity(&NOBODY, || panic!("boom")));
        assert!(r.is_err());
        assert_eq!(
            (current_fsuid(), current_fsgid(), get_groups().unwrap()),
            before
        );
    }
}
