//! The one thread of a tracked run that touches the user's filesystem.
//!
//! A job's work dir is often on NFS or Lustre, and a server that stops
//! answering blocks every call under the mount until it comes back, beyond
//! any signal but SIGKILL. Inside slurmstepd such a call on the main thread
//! makes the extern step unkillable (slurmd then drains the node), and on the
//! sampler thread it stops the measurement. So everything that reads or
//! writes there (the live summary, the epoch file, the final CSV and
//! summary) runs on this thread, and everyone else only hands it work and
//! waits a bounded time for the answer. A call that never returns stalls
//! this thread alone; the footprint is then kept in the root-owned spool and
//! delivered later (by the Epilog or `carbontrack flush`).
//!
//! The thread also asks `squeue` for the time limit once, since slurmctld can
//! be as slow to answer as a filesystem.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::carbon::intensity::{HourTable, read_hourly_file};
use crate::deliver::write_user_file;
use crate::epochs::{EpochWatcher, Mark};
use crate::ffi::identity::FsIdentity;
use crate::measure::sampler::EnergyProbe;

/// An hourly intensity file as last read, or why it could not be.
pub type HourlyRead = Arc<Result<HourTable, String>>;

/// What the thread is asked to do, besides polling the epoch file.
#[derive(Default)]
struct State {
    stop: bool,
    /// Whether to go on polling the epoch file (until the run is over).
    polling: bool,
    /// Polls done so far; a caller wanting a fresh poll waits for it to grow.
    polls: u64,
    /// Poll at the next turn, not at the next interval.
    poll_now: bool,
    /// The next poll is the run's last: every mark read is placed.
    final_poll: bool,
    /// The newest live summary not yet written: `(dir, name, bytes)`.
    summary: Option<(PathBuf, String, Vec<u8>)>,
    /// The newest live state file (a job with a budget) not yet written.
    state: Option<(PathBuf, String, Vec<u8>)>,
    /// Final files to write, in order, and where their answer goes.
    finals: Option<Finals>,
    /// Answer to the last `finals`.
    answer: Option<Answer>,
    /// Epoch marks so far, and why the file was given up on.
    marks: Vec<Mark>,
    epoch_problem: Option<String>,
    /// The first live-summary failure.
    write_problem: Option<String>,
    /// The time limit from squeue once looked up (`Some(None)`: unlimited or
    /// unknown).
    time_limit: Option<Option<Duration>>,
    /// The hourly intensity file as last read.
    hourly: Option<HourlyRead>,
    /// Read the hourly file again at the next turn (the end of the run).
    reload_now: bool,
}

/// What writing the final files came to: the paths written, and for each
/// file not written why, and whether that is for good.
type Answer = (Vec<PathBuf>, Vec<(String, bool)>);

struct Finals {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>)>,
    /// Removed once the files are written, should that happen after the
    /// caller stopped waiting (a record of files to deliver later).
    late_record: Option<PathBuf>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on the thread's state until woken or `until`; `None` once `until`
/// has passed (the lock is then released).
fn wait_until<'a>(
    shared: &'a Shared,
    s: MutexGuard<'a, State>,
    until: Instant,
) -> Option<MutexGuard<'a, State>> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    Some(
        shared
            .wake
            .wait_timeout(s, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0,
    )
}

/// How the thread works.
pub struct Setup {
    pub user: Option<FsIdentity>,
    /// The job's epoch file, polled every `poll`.
    pub epoch_file: Option<PathBuf>,
    pub poll: Duration,
    /// Look the time limit up with squeue for this job id, once.
    pub squeue_job: Option<String>,
    /// The job's energy so far, for epoch marks.
    pub energy: EnergyProbe,
    /// An hourly intensity file (`intensity=file:`), read at the start and
    /// every `reload_every` (a site refreshes it), never by anyone else in
    /// a tracked run: it may sit on a shared mount that stops answering.
    pub hourly_file: Option<PathBuf>,
    pub reload_every: Duration,
}

/// The outcome of handing over final files.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Written: these paths.
    Written(Vec<PathBuf>),
    /// Refused for good (no such dir, not writable by its owner): why, one
    /// line per file not written.
    Failed(Vec<String>),
    /// Refused for now (a full disk, an exceeded quota, an I/O error): why;
    /// worth another try later.
    Retry(Vec<String>),
    /// No answer within the wait: the filesystem is not answering.
    Late(Duration),
}

/// The user-filesystem thread; dropping it lets it end on its own, without
/// waiting for it.
pub struct UserIo {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl UserIo {
    pub fn start(setup: Setup) -> std::io::Result<UserIo> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                polling: true,
                ..State::default()
            }),
            wake: Condvar::new(),
        });
        let for_thread = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("carbontrack-io".into())
            .stack_size(256 * 1024)
            .spawn(move || run(&for_thread, setup))?;
        Ok(UserIo {
            shared,
            handle: Some(handle),
        })
    }

    /// Hands over a live summary to write; never waits. A summary the thread
    /// has not got to yet is replaced.
    pub fn offer_summary(&self, dir: &Path, name: String, bytes: Vec<u8>) {
        let mut s = lock(&self.shared);
        // After the last poll the final files are on their way: a live
        // summary (from a sampler thread that came back late) must not
        // replace them.
        if s.polling {
            s.summary = Some((dir.to_path_buf(), name, bytes));
            drop(s);
            self.shared.wake.notify_all();
        }
    }

    /// Hands over the live state file (`carbontrack-<jobid>.json`) to
    /// write, as [`UserIo::offer_summary`] does the summary.
    pub fn offer_state(&self, dir: &Path, name: String, bytes: Vec<u8>) {
        let mut s = lock(&self.shared);
        if s.polling {
            s.state = Some((dir.to_path_buf(), name, bytes));
            drop(s);
            self.shared.wake.notify_all();
        }
    }

    /// The marks so far and the time limit, if looked up.
    pub fn marks(&self) -> Vec<Mark> {
        lock(&self.shared).marks.clone()
    }

    pub fn time_limit(&self) -> Option<Option<Duration>> {
        lock(&self.shared).time_limit
    }

    /// The hourly intensity file as last read, if it was.
    pub fn hourly(&self) -> Option<HourlyRead> {
        lock(&self.shared).hourly.clone()
    }

    /// Polls the epoch file once more and stops polling; waits at most
    /// `wait`. Returns the marks, why the epoch file was refused, and why the
    /// live summary could not be written, if so.
    pub fn last_poll(&self, wait: Duration) -> (Vec<Mark>, Option<String>, Option<String>) {
        let until = Instant::now() + wait;
        let mut s = lock(&self.shared);
        let want = s.polls + 1;
        s.reload_now = true;
        s.poll_now = true;
        s.final_poll = true;
        self.shared.wake.notify_all();
        while s.polls < want && s.polling {
            let Some(next) = wait_until(&self.shared, s, until) else {
                s = lock(&self.shared);
                break;
            };
            s = next;
        }
        s.polling = false;
        (
            s.marks.clone(),
            s.epoch_problem.clone(),
            s.write_problem.clone(),
        )
    }

    /// Writes `files` into `dir` as the user, in order, waiting at most
    /// `wait`. When the answer is [`Delivery::Late`] the thread goes on
    /// trying, and removes `late_record` (the caller's record of files still
    /// to deliver, written before asking) once the files are written.
    pub fn deliver(
        &self,
        dir: &Path,
        files: Vec<(String, Vec<u8>)>,
        wait: Duration,
        late_record: Option<PathBuf>,
    ) -> Delivery {
        let asked = Instant::now();
        let mut s = lock(&self.shared);
        s.answer = None;
        s.finals = Some(Finals {
            dir: dir.to_path_buf(),
            files,
            late_record,
        });
        self.shared.wake.notify_all();
        loop {
            if let Some((written, errors)) = s.answer.take() {
                let lines = errors.iter().map(|(e, _)| e.clone()).collect();
                return if errors.is_empty() {
                    Delivery::Written(written)
                } else if errors.iter().all(|(_, permanent)| *permanent) {
                    Delivery::Failed(lines)
                } else {
                    Delivery::Retry(lines)
                };
            }
            match wait_until(&self.shared, s, asked + wait) {
                Some(next) => s = next,
                None => return Delivery::Late(asked.elapsed()),
            }
        }
    }
}

impl UserIo {
    /// Lets the thread end once it has nothing left to do; never waits.
    pub fn close(&self) {
        lock(&self.shared).stop = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for UserIo {
    fn drop(&mut self) {
        self.close();
        // Joined only when it has ended already; a thread stuck in a
        // filesystem call is left to it (the library stays mapped: see
        // `build.rs`, `-z nodelete`).
        if let Some(h) = self.handle.take()
            && h.is_finished()
        {
            let _ = h.join();
        }
    }
}

fn run(shared: &Shared, mut setup: Setup) {
    let _ = crate::ffi::signals::block_all();
    let mut watcher = setup
        .epoch_file
        .take()
        .map(|p| EpochWatcher::new(p, setup.user.clone()));
    let mut next_poll = Instant::now();
    let mut next_reload = Instant::now();
    loop {
        // What to do now, taken under the lock, done outside it.
        let (summary, finals, (poll, final_poll), reload, query, state) = {
            let mut s = lock(shared);
            loop {
                if s.summary.is_some() || s.finals.is_some() || s.state.is_some() {
                    break;
                }
                let now = Instant::now();
                if s.polling && (now >= next_poll || s.poll_now) {
                    break;
                }
                if s.stop {
                    return;
                }
                let wait = if s.polling {
                    next_poll - now
                } else {
                    Duration::from_secs(3600)
                };
                s = shared
                    .wake
                    .wait_timeout(s, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let poll = s.polling && (Instant::now() >= next_poll || s.poll_now);
            s.poll_now = false;
            let final_poll = poll && std::mem::take(&mut s.final_poll);
            let reload = setup.hourly_file.is_some()
                && (s.reload_now || (poll && Instant::now() >= next_reload));
            s.reload_now = false;
            let query = s.time_limit.is_none() && setup.squeue_job.is_some();
            (
                s.summary.take(),
                s.finals.take(),
                (poll, final_poll),
                reload,
                query,
                s.state.take(),
            )
        };
        if reload && let Some(path) = &setup.hourly_file {
            next_reload = Instant::now() + setup.reload_every;
            let read = read_hourly_file(path).map_err(|e| e.to_string());
            lock(shared).hourly = Some(Arc::new(read));
        }
        if poll {
            // Without an epoch file to watch, the timer only serves the
            // hourly file: no wake-up every interval for nothing.
            next_poll = Instant::now()
                + if watcher.is_some() {
                    setup.poll
                } else {
                    setup.reload_every
                };
            if let Some(w) = &mut watcher {
                w.poll(SystemTime::now(), setup.energy.sampled(), final_poll);
            }
            let mut s = lock(shared);
            if let Some(w) = &watcher {
                if w.marks().len() != s.marks.len() {
                    s.marks.clear();
                    s.marks.extend_from_slice(w.marks());
                }
                if s.epoch_problem.is_none() {
                    s.epoch_problem = w.refused().map(str::to_string);
                }
            }
            s.polls += 1;
            drop(s);
            shared.wake.notify_all();
        }
        if query && let Some(job) = setup.squeue_job.take() {
            let limit = squeue_time_limit(&job);
            lock(shared).time_limit = Some(limit);
        }
        // The state before the summary: a job reading it acts on it. Its
        // failures are the summary's (same directory, same user).
        if let Some((dir, name, bytes)) = state {
            let _ = as_user(setup.user.as_ref(), &dir, &name, &bytes);
        }
        if let Some((dir, name, bytes)) = summary {
            let written = as_user(setup.user.as_ref(), &dir, &name, &bytes);
            let mut s = lock(shared);
            match written {
                // One report per run, not one per refresh; one that healed
                // (the summary written since) is not worth a line.
                Err(e) if s.write_problem.is_none() => s.write_problem = Some(e.to_string()),
                Err(_) => {}
                Ok(_) => s.write_problem = None,
            }
        }
        if let Some(f) = finals {
            let mut written = Vec::new();
            let mut errors = Vec::new();
            for (name, bytes) in &f.files {
                match as_user(setup.user.as_ref(), &f.dir, name, bytes) {
                    Ok(p) => written.push(p),
                    Err(e) => errors.push((e.to_string(), e.is_permanent())),
                }
            }
            // Delivered, or refused for a reason that will not mend: the
            // record of what is still to deliver has done its work.
            if errors.iter().all(|(_, permanent)| *permanent)
                && let Some(record) = &f.late_record
            {
                let _ = std::fs::remove_file(record);
            }
            lock(shared).answer = Some((written, errors));
            shared.wake.notify_all();
        }
    }
}

/// [`write_user_file`], tried again shortly when taking the user's identity
/// is refused: slurmstepd drops its own privileges for moments (glibc then
/// changes every thread's ids), and a per-thread identity change in such a
/// moment fails with EPERM.
fn as_user(
    id: Option<&FsIdentity>,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<PathBuf, crate::deliver::DeliverError> {
    let mut tries = 0;
    loop {
        match write_user_file(id, dir, name, bytes) {
            Err(crate::deliver::DeliverError::Identity { .. }) if tries < 3 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// The job's time limit from `squeue`, bounded to 2 s; `None` when unlimited
/// or unknown (the summary then shows no projection to the limit).
fn squeue_time_limit(job_id: &str) -> Option<Duration> {
    let job = job_id.parse().ok()?;
    let squeue = crate::report::cmd::find_program(Path::new("squeue"));
    crate::report::squeue::queue_info(&squeue, job, Duration::from_secs(2))
        .ok()?
        .time_limit
}
