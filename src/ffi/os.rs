//! Safe faces over the few per-thread OS calls std does not wrap.

use std::io;

/// Blocks every signal that can be blocked in the calling thread only.
///
/// A helper thread inside slurmstepd must never be the one the kernel picks to
/// run a process-directed signal's handler (SIGTERM, SIGCHLD, …): slurmstepd's
/// handlers expect their own threads. SIGKILL and SIGSTOP cannot be blocked, and
/// glibc silently keeps its two internal signals unblocked.
pub fn block_all_signals() -> io::Result<()> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the whole set it is given; we pass a valid
    // pointer to storage of the right type and only read it after it returned 0.
    let rc = unsafe { libc::sigfillset(set.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `set` was initialised by sigfillset above; a null `oldset` is
    // allowed. pthread_sigmask returns an error number instead of setting errno.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// The effective user id of the process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sets the calling thread's filesystem uid and returns the previous one.
///
/// Linux keeps the fsuid per thread (the raw system call; glibc does not
/// broadcast it to other threads), so one thread can act on files as a user
/// while the rest of the process stays root. Switching from 0 to another uid
/// also drops the file capabilities (CAP_DAC_OVERRIDE, …) of that thread, which
/// is what makes permission checks apply. The call cannot report failure: check
/// with a second call when it matters.
pub fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes a plain integer and only changes this thread's
    // credentials; it has no memory-safety preconditions.
    let prev = unsafe { libc::setfsuid(uid) };
    prev as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a mask field (`SigBlk`, …) of this thread from procfs.
    fn mask_of_this_thread(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap_or_else(|| panic!("no {field} in /proc/thread-self/status"));
        u64::from_str_radix(line.trim_start_matches(':').trim(), 16).unwrap()
    }

    #[test]
    fn blocks_signals_in_this_thread_only() {
        let before_main = mask_of_this_thread("SigBlk");
        let blocked = std::thread::spawn(|| {
            block_all_signals().unwrap();
            mask_of_this_thread("SigBlk")
        })
        .join()
        .unwrap();
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGCHLD,
            libc::SIGUSR1,
            libc::SIGHUP,
        ] {
            assert_ne!(blocked & (1 << (sig - 1)), 0, "signal {sig} not blocked");
        }
        // SIGKILL cannot be blocked; the kernel keeps it out of the mask.
        assert_eq!(blocked & (1 << (libc::SIGKILL - 1)), 0);
        assert_eq!(mask_of_this_thread("SigBlk"), before_main);
    }

    #[test]
    fn fsuid_is_per_thread() {
        let me = effective_uid();
        let (inside, restored) = std::thread::spawn(move || {
            let prev = set_fsuid(me.wrapping_add(1).max(1));
            // A second call returns the value the first one set.
            let inside = set_fsuid(prev);
            (inside, set_fsuid(prev))
        })
        .join()
        .unwrap();
        if me == 0 {
            assert_eq!(inside, 1);
        }
        assert_eq!(restored, me);
        // This thread was never changed.
        assert_eq!(set_fsuid(me), me);
    }
}
