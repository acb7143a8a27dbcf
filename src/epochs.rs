//! Epoch marks from a running job, for carbontracker-style prediction.
//!
//! A job says "an epoch just ended" by appending one line to the file named in
//! its environment as `CARBONTRACK_EPOCH_FILE` (`carbontrack epoch` does it;
//! so does `echo >> "$CARBONTRACK_EPOCH_FILE"` or, in Python,
//! `open(os.environ["CARBONTRACK_EPOCH_FILE"], "a").write("\n")`). The sampler
//! notices new lines at its next sample. A line holding the time it was
//! written (`carbontrack epoch` writes Unix milliseconds) places the mark at
//! that time, with the energy interpolated between the samples around it; a
//! bare line counts at the newest sample, late by at most one interval. With
//! epochs of a few seconds (a tutorial's MNIST) one interval late is tens of
//! per cent of an epoch, and a prediction from the first epochs inherits it.
//!
//! The file lives in the user's work dir and is the user's to write, so the
//! watcher opens it with the user's identity, refuses anything but a regular
//! file reached without a link (a FIFO would block the sampler, a link could
//! point at a root-only file), and reads a bounded amount per sample.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::ffi::identity::{FsIdentity, with_fs_identity};
use crate::units::Joules;

/// The environment variable naming the epoch file.
pub const EPOCH_FILE_ENV: &str = "CARBONTRACK_EPOCH_FILE";

/// The epoch file of a job in its work dir.
pub fn epoch_file(work_dir: &Path, job_id: &str) -> PathBuf {
    work_dir.join(format!(".carbontrack-{job_id}.epochs"))
}

/// At most this many marks are kept: enough for any training run, and a
/// bound on memory however often a job writes.
pub const MAX_MARKS: usize = 100_000;
/// At most this many new bytes are read per sample.
const MAX_READ_PER_SAMPLE: u64 = 64 * 1024;
/// How often to look for the file before it exists.
const OPEN_RETRY: Duration = Duration::from_secs(1);
/// Samples kept to place a timed mark between two (one per poll, and a
/// poll comes every interval).
const HISTORY: usize = 16;
/// A mark's own time is believed within this much before the poll that
/// reads it (an io thread held up by a slow work dir) and this much after
/// (the same node's clock: none, but rounding).
const MARK_PAST: Duration = Duration::from_secs(3600);
const MARK_FUTURE: Duration = Duration::from_secs(5);
/// Polls a timed mark may wait for a sample after it before it is placed
/// at the newest one (a sampler held up by a stuck meter).
const MAX_WAIT_POLLS: u32 = 3;

/// The job's energy as of one sample: when the sample was taken and the
/// energy attributed to the job by then.
pub type Sampled = (SystemTime, Joules);

/// One completed epoch: when it was noticed and the job's energy by then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mark {
    pub at: SystemTime,
    pub energy: Joules,
}

/// Watches one epoch file; driven by the sampler thread.
#[derive(Debug)]
pub struct EpochWatcher {
    path: PathBuf,
    identity: Option<FsIdentity>,
    file: Option<File>,
    offset: u64,
    last_try: Option<Instant>,
    marks: Vec<Mark>,
    /// Why the file was given up on, if it was.
    refused: Option<String>,
    /// The newest samples, oldest first.
    history: VecDeque<Sampled>,
    /// Marks read but not placed yet: their own time (`None`: a bare line),
    /// and polls waited.
    pending: VecDeque<(Option<SystemTime>, u32)>,
    /// The line being read: its leading digits, and whether anything but
    /// digits came first.
    line: (u64, u8, bool),
}

impl EpochWatcher {
    /// `identity`: open the file as this user (`None`: as the caller).
    pub fn new(path: PathBuf, identity: Option<FsIdentity>) -> EpochWatcher {
        EpochWatcher {
            path,
            identity,
            file: None,
            offset: 0,
            last_try: None,
            marks: Vec::new(),
            refused: None,
            history: VecDeque::with_capacity(HISTORY),
            pending: VecDeque::new(),
            line: (0, 0, false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// Why marks are no longer read, if the file was refused.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Looks for new lines, each an epoch that ended; `now` is the poll's
    /// time, `sampled` the newest sample (none before the first), `last`
    /// whether this is the run's final poll (every mark is placed then).
    pub fn poll(&mut self, now: SystemTime, sampled: Option<Sampled>, last: bool) {
        if let Some(s) = sampled
            && self.history.back().is_none_or(|b| s.0 > b.0)
        {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(s);
        }
        if self.refused.is_none() && (self.file.is_some() || self.try_open()) {
            self.read_lines(now);
        }
        self.place(last);
    }

    /// Reads what was appended since the last poll, a bounded amount.
    fn read_lines(&mut self, now: SystemTime) {
        let Some(f) = &self.file else { return };
        let mut buf = [0u8; 4096];
        let limit = self.offset + MAX_READ_PER_SAMPLE;
        while self.offset < limit {
            let n = match f.read_at(&mut buf, self.offset) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.offset += n as u64;
            for &b in &buf[..n] {
                let (digits, len, junk) = &mut self.line;
                match b {
                    b'\n' => {
                        let at = (!*junk && *len > 0)
                            .then(|| mark_time(*digits, now))
                            .flatten();
                        self.line = (0, 0, false);
                        if self.marks.len() + self.pending.len() < MAX_MARKS {
                            self.pending.push_back((at, 0));
                        }
                    }
                    b'0'..=b'9' if !*junk && *len < 19 => {
                        *digits = *digits * 10 + u64::from(b - b'0');
                        *len += 1;
                    }
                    _ => *junk = true,
                }
            }
        }
    }

    /// Places the pending marks the samples allow, in order: a timed mark
    /// between the two samples around it, a bare one at the newest sample.
    fn place(&mut self, last: bool) {
        let Some(&newest) = self.history.back() else {
            return;
        };
        while let Some(&(at, waited)) = self.pending.front() {
            let mark = match at {
                Some(t) if t <= newest.0 => energy_at(&self.history, t),
                // After the newest sample: wait for the next, unless this is
                // the end or the sampler has stopped moving.
                Some(_) if !last && waited < MAX_WAIT_POLLS => {
                    for p in &mut self.pending {
                        p.1 += 1;
                    }
                    break;
                }
                _ => Mark {
                    at: newest.0,
                    energy: newest.1,
                },
            };
            self.pending.pop_front();
            // Marks never go back in time, nor in energy.
            let mark = match self.marks.last() {
                Some(prev) if mark.at < prev.at || mark.energy < prev.energy => Mark {
                    at: mark.at.max(prev.at),
                    energy: Joules(mark.energy.0.max(prev.energy.0)),
                },
                _ => mark,
            };
            self.marks.push(mark);
        }
    }

    fn try_open(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_try
            .is_some_and(|t| now.duration_since(t) < OPEN_RETRY)
        {
            return false;
        }
        self.last_try = Some(now);
        let open = || {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&self.path)
        };
        let opened = match &self.identity {
            Some(id) => match with_fs_identity(id, open) {
                Ok(r) => r,
                Err(e) => {
                    self.refused = Some(format!(
                        "cannot act as uid {} to read {}: {e}",
                        id.uid,
                        self.path.display()
                    ));
                    return false;
                }
            },
            None => open(),
        };
        match opened {
            Ok(f) => match f.metadata() {
                Ok(m) if m.is_file() => {
                    self.file = Some(f);
                    true
                }
                _ => {
                    self.refused = Some(format!("{} is not a regular file", self.path.display()));
                    false
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                self.refused = Some(format!("cannot open {}: {e}", self.path.display()));
                false
            }
        }
    }
}

/// A line's leading digits as the Unix milliseconds `carbontrack epoch`
/// writes, if they are a time near `now` (a user's own numbers are not).
fn mark_time(ms: u64, now: SystemTime) -> Option<SystemTime> {
    let t = SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
    let earliest = now.checked_sub(MARK_PAST).unwrap_or(SystemTime::UNIX_EPOCH);
    let latest = now.checked_add(MARK_FUTURE)?;
    (t >= earliest && t <= latest).then_some(t)
}

/// The job's energy at `t`, from the samples around it (linear between two
/// samples; the oldest one's before it).
fn energy_at(history: &VecDeque<Sampled>, t: SystemTime) -> Mark {
    let mut before: Option<Sampled> = None;
    for &(st, e) in history {
        if st >= t {
            let energy = match before {
                Some((bt, be)) => {
                    let span = st.duration_since(bt).unwrap_or_default().as_secs_f64();
                    let into = t.duration_since(bt).unwrap_or_default().as_secs_f64();
                    let f = if span > 0.0 { into / span } else { 1.0 };
                    Joules(be.0 + (e.0 - be.0) * f)
                }
                None => e,
            };
            return Mark { at: t, energy };
        }
        before = Some((st, e));
    }
    let (st, e) = before.unwrap_or((t, Joules::ZERO));
    Mark { at: st, energy: e }
}

/// Appends one epoch mark to the file named by [`EPOCH_FILE_ENV`].
pub fn mark_epoch_from_env() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let path = std::env::var_os(EPOCH_FILE_ENV).with_context(|| {
        format!(
            "{EPOCH_FILE_ENV} is not set: this is not a tracked job (submit with --carbon-track=yes) \
             nor a command under `carbontrack run`; no epoch recorded"
        )
    })?;
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    // When the previous epoch was marked: a budget exceeded since is said now.
    let previous = std::fs::symlink_metadata(&path)
        .ok()
        .filter(|m| m.len() > 0)
        .and_then(|m| m.modified().ok());
    let marked = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{ms}"))
        .with_context(|| {
            format!(
                "cannot append an epoch mark to {}",
                Path::new(&path).display()
            )
        });
    if let Some(state) = std::env::var_os(crate::carbon::budget::STATE_FILE_ENV)
        && let Ok(bytes) = crate::deliver::read_user_file(None, Path::new(&state), 1 << 20)
        && let Ok(state) = serde_json::from_slice(&bytes)
        && let Some(line) = crate::carbon::budget::epoch_notice(&state, previous)
    {
        eprintln!("{line}");
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ct-epochs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn each_new_line_is_one_mark_with_the_energy_at_that_time() {
        let d = temp("lines");
        let p = epoch_file(&d, "42");
        assert!(p.ends_with(".carbontrack-42.epochs"));
        let mut w = EpochWatcher::new(p.clone(), None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        w.poll(t0, Some((t0, Joules(0.0))), false); // no file yet: nothing, no error
        assert!(w.marks().is_empty() && w.refused().is_none());

        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        // Bare lines, and numbers that are no time near now: at the newest
        // sample, with its energy.
        writeln!(f, "1").unwrap();
        w.last_try = None; // skip the retry pause
        w.poll(at(10), Some((at(9), Joules(90.0))), false);
        w.poll(at(11), Some((at(10), Joules(100.0))), false); // nothing new
        writeln!(f, "2\n").unwrap();
        w.poll(at(20), Some((at(19), Joules(190.0))), false);
        f.write_all(b"partial").unwrap(); // not yet a whole line
        w.poll(at(25), Some((at(24), Joules(240.0))), false);
        let mark = |s: u64, e: f64| Mark {
            at: at(s),
            energy: Joules(e),
        };
        assert_eq!(w.marks(), [mark(9, 90.0), mark(19, 190.0), mark(19, 190.0)]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// `carbontrack epoch` writes the time: the mark is placed there, its
    /// energy between the samples around it; one written after the newest
    /// sample waits for the next, and the final poll places what is left.
    #[test]
    fn a_timed_mark_is_placed_at_its_time() {
        let d = temp("timed");
        let p = epoch_file(&d, "7");
        std::fs::write(&p, "").unwrap();
        let mut w = EpochWatcher::new(p.clone(), None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ms = |ms: u64| (at(ms).duration_since(SystemTime::UNIX_EPOCH).unwrap()).as_millis();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        // Samples every second at 100 W.
        w.poll(at(0), Some((at(0), Joules(0.0))), false);
        w.poll(at(1000), Some((at(1000), Joules(100.0))), false);
        // Written at 1.25 s, read at the poll of 2 s, sampled at 2 s.
        writeln!(f, "{}", ms(1250)).unwrap();
        w.poll(at(2000), Some((at(2000), Joules(200.0))), false);
        assert_eq!(
            w.marks(),
            [Mark {
                at: at(1250),
                energy: Joules(125.0)
            }]
        );
        // Written at 2.6 s, after the newest sample (2 s): it waits.
        writeln!(f, "{}", ms(2600)).unwrap();
        w.poll(at(2700), Some((at(2000), Joules(200.0))), false);
        assert_eq!(w.marks().len(), 1);
        w.poll(at(3000), Some((at(3000), Joules(300.0))), false);
        assert_eq!(w.marks()[1].at, at(2600));
        assert!((w.marks()[1].energy.0 - 260.0).abs() < 1e-9);
        // Written after the last sample of the run: the final poll places it
        // at that sample.
        writeln!(f, "{}", ms(3500)).unwrap();
        w.poll(at(3600), Some((at(3000), Joules(300.0))), true);
        assert_eq!(
            w.marks()[2],
            Mark {
                at: at(3000),
                energy: Joules(300.0)
            }
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_links_and_fifos() {
        let d = temp("refuse");
        let target = d.join("secret");
        std::fs::write(&target, "a\nb\n").unwrap();
        let link = epoch_file(&d, "1");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut w = EpochWatcher::new(link, None);
        w.poll(SystemTime::now(), None, false);
        assert!(w.marks().is_empty());
        assert!(
            w.refused().is_some_and(|r| r.contains("cannot open")),
            "{:?}",
            w.refused()
        );

        let fifo = epoch_file(&d, "2");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut w = EpochWatcher::new(fifo, None);
        w.poll(SystemTime::now(), None, false);
        assert!(
            w.refused()
                .is_some_and(|r| r.contains("not a regular file")),
            "{:?}",
            w.refused()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
