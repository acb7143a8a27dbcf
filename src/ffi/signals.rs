//! Signals for `carbontrack run`: it must pass the signals a user or Slurm
//! sends (Ctrl-C, `scancel`'s SIGTERM) on to the command it wraps, and exit as
//! that command did. The signals are blocked in every thread and collected by
//! one thread with `sigtimedwait`, so no handler runs at an arbitrary point.

use std::io;
use std::time::Duration;

/// The signals forwarded to a wrapped command.
pub const FORWARDED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCONT,
];

/// A set of signals, blocked in the thread that built it and in the threads it
/// starts afterwards.
pub struct Blocked {
    set: libc::sigset_t,
}

/// Blocks `signals` in the calling thread. Threads started later inherit the
/// mask, and so would child processes: start them with [`unblocked_child`].
pub fn block(signals: &[i32]) -> io::Result<Blocked> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, owned sigset_t; the calls only write into it.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            if libc::sigaddset(&mut set, s) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(Blocked { set })
}

/// Blocks every signal that can be blocked in the calling thread, so that a
/// helper thread inside a host process (slurmstepd) never runs the host's
/// signal handlers. Call it first thing in the new thread.
pub fn block_all() -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is owned and valid for writing.
    unsafe { libc::sigfillset(&mut set) };
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

impl Blocked {
    /// Waits up to `timeout` for one of the blocked signals to arrive.
    pub fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `self.set` is an initialised set; info may be null; `ts` lives
        // for the duration of the call.
        let s = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        (s > 0).then_some(s)
    }
}

/// Makes `cmd` start its process with no signal blocked, whatever the
/// spawning thread blocks: std passes the caller's mask on to the child, and a
/// command started with SIGTERM blocked would ignore `scancel`.
pub fn unblocked_child(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec and calls only
    // sigemptyset and pthread_sigmask, which are async-signal-safe; it touches
    // no memory shared with the parent and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            match libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        })
    }
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes plain integers and has no memory effects on us.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ends the calling process the way `sig` would, so a wrapper dies of the same
/// signal as the command it wrapped (shells and Slurm see the same status).
pub fn die_of(sig: i32) -> ! {
    // SAFETY: resetting a disposition to the default and unblocking the signal
    // before raising it; none of these touch our memory.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    // A signal whose default action is not to terminate (e.g. SIGCONT).
    std::process::exit(128 + sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_collected_not_delivered() {
        // Run in a fresh thread so the mask change stays there.
        std::thread::spawn(|| {
            let b = block(&[libc::SIGUSR2]).unwrap();
            assert_eq!(b.wait(Duration::from_millis(10)), None);
            raise_in_this_thread(libc::SIGUSR2);
            assert_eq!(b.wait(Duration::from_secs(5)), Some(libc::SIGUSR2));
        })
        .join()
        .unwrap();
    }

    fn raise_in_this_thread(sig: i32) {
        // SAFETY: pthread_self is always valid for the calling thread.
        let r = unsafe { libc::pthread_kill(libc::pthread_self(), sig) };
        assert_eq!(r, 0);
    }

    #[test]
    fn kill_reports_a_missing_process() {
        assert!(kill(u32::MAX, 0).is_err());
        assert!(kill(std::process::id(), 0).is_ok());
    }
}
