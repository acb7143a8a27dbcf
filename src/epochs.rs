//! Epoch marks from a running job, for carbontracker-style prediction.
//!
//! A job says "an epoch just ended" by appending one line to the file named in
//! its environment as `CARBONTRACK_EPOCH_FILE` (`carbontrack epoch` does it;
//! so does `echo >> "$CARBONTRACK_EPOCH_FILE"` or, in Python,
//! `open(os.environ["CARBONTRACK_EPOCH_FILE"], "a").write("\n")`). The sampler
//! notices new lines at its next sample and records the time and the job's
//! energy so far. The mark is therefore late by at most one interval, which is
//! small against epochs of minutes.
//!
//! The file lives in the user's work dir and is the user's to write, so the
//! watcher opens it with the user's identity, refuses anything but a regular
//! file reached without a link (a FIFO would block the sampler, a link could
//! point at a root-only file), and reads a bounded amount per sample.

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

    /// Looks for new lines; each one is an epoch that ended by `at`. `energy`
    /// gives the job's energy so far and is called only when there are marks,
    /// so a quiet file costs the sampler one read.
    pub fn poll(&mut self, at: SystemTime, energy: impl FnOnce() -> Joules) {
        if self.refused.is_some() {
            return;
        }
        if self.file.is_none() && !self.try_open() {
            return;
        }
        let Some(f) = &self.file else { return };
        let mut new_lines = 0usize;
        let mut buf = [0u8; 4096];
        let limit = self.offset + MAX_READ_PER_SAMPLE;
        while self.offset < limit {
            match f.read_at(&mut buf, self.offset) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    new_lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
                    self.offset += n as u64;
                }
            }
        }
        if new_lines > 0 {
            let energy = energy();
            let room = MAX_MARKS - self.marks.len();
            self.marks.extend(std::iter::repeat_n(
                Mark { at, energy },
                new_lines.min(room),
            ));
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
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        w.poll(t0, || Joules(1.0)); // no file yet: nothing, no error
        assert!(w.marks().is_empty() && w.refused().is_none());

        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        writeln!(f, "1").unwrap();
        w.last_try = None; // skip the retry pause
        w.poll(t0 + Duration::from_secs(10), || Joules(100.0));
        w.poll(t0 + Duration::from_secs(11), || Joules(110.0)); // nothing new
        writeln!(f, "2\n3").unwrap();
        w.poll(t0 + Duration::from_secs(20), || Joules(200.0));
        f.write_all(b"partial").unwrap(); // not yet a whole line
        w.poll(t0 + Duration::from_secs(25), || Joules(250.0));
        assert_eq!(
            w.marks(),
            [
                Mark {
                    at: t0 + Duration::from_secs(10),
                    energy: Joules(100.0)
                },
                Mark {
                    at: t0 + Duration::from_secs(20),
                    energy: Joules(200.0)
                },
                Mark {
                    at: t0 + Duration::from_secs(20),
                    energy: Joules(200.0)
                },
            ]
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
        w.poll(SystemTime::now(), || Joules(1.0));
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
        w.poll(SystemTime::now(), || Joules(1.0));
        assert!(
            w.refused()
                .is_some_and(|r| r.contains("not a regular file")),
            "{:?}",
            w.refused()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
