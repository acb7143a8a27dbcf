//! The calling thread's CPU time, and the local time zone's offset, which
//! std does not expose.

use std::time::Duration;

/// CPU time (user + system) the calling thread has used since it started.
///
/// It is the scheduler's own account, to the nanosecond, the same figure as
/// the first field of `/proc/thread-self/schedstat`, without opening a file:
/// one vDSO or system call, no allocation. `None` where the clock cannot be
/// read (it always can on Linux).
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux kernel supports; the call
    // writes only into `ts`.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// Seconds east of UTC of the local time zone (the process's `TZ`, else
/// `/etc/localtime`) at `unix_secs`: what `sbatch --begin=YYYY-MM-DDTHH:MM:SS`
/// is read in. `None` where the C library cannot say.
pub fn local_utc_offset(unix_secs: i64) -> Option<i64> {
    let t: libc::time_t = unix_secs;
    // SAFETY: an all-zero `tm` is a valid value of a plain C struct (its
    // `tm_zone` pointer null); it is only written by the call below.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `t` and `tm` are valid for the call and outlive it;
    // localtime_r is the reentrant form, writing only into `tm`.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    (!r.is_null()).then_some(tm.tm_gmtoff)
}

/// The unit of the CPU times in `/proc/<pid>/stat` (`sysconf(_SC_CLK_TCK)`),
/// 100 on every Linux build in use; 100 if it cannot be asked.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a constant and reads no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock counts this thread's work only: it grows while the thread
    /// spins, and a fresh thread starts near zero however long this one ran.
    #[test]
    fn counts_the_calling_threads_work() {
        let before = thread_cpu_time().unwrap();
        let mut x = 0u64;
        while thread_cpu_time().unwrap() < before + Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let own = thread_cpu_time().unwrap();
        assert!(own >= before + Duration::from_millis(5));
        let fresh = std::thread::spawn(|| thread_cpu_time().unwrap())
            .join()
            .unwrap();
        assert!(
            fresh < own,
            "a new thread's {fresh:?} vs this one's {own:?}"
        );
    }
}
