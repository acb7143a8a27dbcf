//! Apple Silicon for `carbontrack run`: CPU, GPU and Neural Engine energy
//! from Apple's `powermetrics`, read as a child process.
//!
//! `powermetrics --samplers cpu_power,gpu_power,ane_power -f plist -i <ms>`
//! writes one plist document per sample, NUL-separated; each has `elapsed_ns`
//! and, under `processor`, `cpu_energy`, `gpu_energy`, `ane_energy` (mJ over
//! the sample) and `cpu_power`, `gpu_power`, `ane_power` (mW)
//! (peer-notes.md, "Devices and sources beyond…"). Energies are used as
//! given; a sample without one falls back to its power × `elapsed_ns`.
//!
//! It needs root. Run as another user, the meter goes through `sudo -n`,
//! which works once a sudoers line allows it without a password (as
//! carbontracker's documentation also has its users do): [`SUDOERS_HINT`].
//!
//! Nothing here is macOS-only: a thread reads the child's output and parses
//! it with the `plist` crate, so the meter is tested on Linux against a fake
//! `powermetrics` replaying recorded samples (tests/run.rs). macOS itself is
//! untested.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use super::{Component, DeviceEnergy, Meter, Status};
use crate::config::Components;
use crate::units::Joules;

/// Where macOS keeps it.
pub const DEFAULT_PATH: &str = "/usr/bin/powermetrics";

/// Names another `powermetrics` for `carbontrack run` (tests, a wrapper).
pub const PATH_ENV: &str = "CARBONTRACK_POWERMETRICS";

/// What to add so that `sudo -n powermetrics` runs without a password.
pub const SUDOERS_HINT: &str = "powermetrics must run as root: run carbontrack as root, or let \
     it use sudo with the sudoers line `<user> ALL=(root) NOPASSWD: /usr/bin/powermetrics` \
     (add it with `sudo visudo -f /etc/sudoers.d/powermetrics`)";

/// The samplers asked for.
pub const SAMPLERS: &str = "cpu_power,gpu_power,ane_power";

/// One sample as `-f plist` writes it; only the fields read here.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Sample {
    pub elapsed_ns: Option<u64>,
    pub processor: Option<Processor>,
}

/// The `processor` dictionary: energies in mJ, powers in mW, over the sample.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Processor {
    pub cpu_energy: Option<f64>,
    pub gpu_energy: Option<f64>,
    pub ane_energy: Option<f64>,
    pub cpu_power: Option<f64>,
    pub gpu_power: Option<f64>,
    pub ane_power: Option<f64>,
}

/// The energies of one sample, joules for CPU, GPU and ANE; `None` where it
/// has neither the energy nor the power and duration.
pub fn sample_energy(s: &Sample) -> [Option<Joules>; 3] {
    let p = s.processor.clone().unwrap_or_default();
    let secs = s.elapsed_ns.map(|ns| ns as f64 / 1e9);
    let one = |mj: Option<f64>, mw: Option<f64>| match (mj, mw, secs) {
        (Some(mj), _, _) => Some(Joules(mj / 1e3)),
        (None, Some(mw), Some(s)) => Some(Joules(mw / 1e3 * s)),
        _ => None,
    };
    [
        one(p.cpu_energy, p.cpu_power),
        one(p.gpu_energy, p.gpu_power),
        one(p.ane_energy, p.ane_power),
    ]
}

/// Parses one NUL-free document of the stream.
pub fn parse_sample(doc: &[u8]) -> Result<Sample, plist::Error> {
    plist::from_bytes(doc)
}

/// What the reader thread shares with the meter: energies (µJ) added as
/// samples arrive, and how the stream ended. Lock-free: the sampler never
/// waits for the reader.
#[derive(Default)]
struct Shared {
    uj: [AtomicU64; 3],
    /// Which of the three any sample had.
    seen: [AtomicBool; 3],
    samples: AtomicU64,
    ended: OnceLock<(SystemTime, String)>,
}

impl Shared {
    /// Reads documents until the stream ends; returns why it ended.
    fn read_stream(&self, out: impl Read) -> String {
        let mut rd = BufReader::new(out);
        let mut doc = Vec::new();
        loop {
            doc.clear();
            match rd.read_until(0, &mut doc) {
                Ok(0) => return "its output ended".into(),
                Ok(_) => {}
                Err(e) => return format!("reading its output failed: {e}"),
            }
            if doc.last() == Some(&0) {
                doc.pop();
            }
            if doc.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let sample = match parse_sample(&doc) {
                Ok(s) => s,
                Err(e) => return format!("a sample did not parse: {e}"),
            };
            for (i, e) in sample_energy(&sample).into_iter().enumerate() {
                if let Some(e) = e {
                    let uj = (e.0 * 1e6).round().max(0.0) as u64;
                    self.uj[i].fetch_add(uj, Ordering::Relaxed);
                    self.seen[i].store(true, Ordering::Relaxed);
                }
            }
            self.samples.fetch_add(1, Ordering::Release);
        }
    }
}

/// Whether powermetrics (or sudo) said it will not run for this user.
fn refused(said: &str) -> bool {
    said.contains("superuser")
        || said.contains("password is required")
        || said.contains("a terminal is required")
}

/// The meter: one row each for `cpu`, `gpu` and `ane` (device `apple-soc`),
/// as `components` asks (`gpu` brings the Neural Engine with it).
pub struct PowermetricsMeter {
    shared: Arc<Shared>,
    pid: u32,
    components: Components,
}

/// The `device` of the rows.
pub const DEVICE: &str = "apple-soc";

/// The `powermetrics` to run: `--powermetrics`, else [`PATH_ENV`], else
/// macOS's own on macOS; `None` elsewhere.
pub fn choose(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os(PATH_ENV).map(PathBuf::from))
        .or_else(|| cfg!(target_os = "macos").then(|| PathBuf::from(DEFAULT_PATH)))
}

impl PowermetricsMeter {
    /// Starts `path` sampling every `interval` and a thread reading it.
    pub fn start(
        path: &Path,
        interval: Duration,
        components: Components,
    ) -> Result<PowermetricsMeter, String> {
        let ms = interval.as_millis().max(1).to_string();
        let args = ["--samplers", SAMPLERS, "-f", "plist", "-i", &ms];
        let root = crate::ffi::identity::euid() == 0;
        let mut cmd = if root {
            Command::new(path)
        } else {
            let mut c = Command::new("sudo");
            c.arg("-n").arg(path);
            c
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = crate::ffi::signals::unblocked_child(&mut cmd)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}{}: {e}",
                    if root { "" } else { "sudo -n " },
                    path.display()
                )
            })?;
        let shared = Arc::new(Shared::default());
        let pid = child.id();
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("powermetrics: no pipe to read".into());
        };
        let reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("carbontrack-powermetrics".into())
            .spawn(move || {
                let why = reader.read_stream(stdout);
                let _ = child.kill();
                let status = child.wait();
                let mut err = String::new();
                let _ = stderr.read_to_string(&mut err);
                let said = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                let why = match (refused(said), status) {
                    (true, _) => said.to_string(),
                    (false, Ok(s)) if !said.is_empty() => format!("{why} ({s}: {said})"),
                    (false, Ok(s)) => format!("{why} ({s})"),
                    (false, Err(e)) => format!("{why} (cannot wait for it: {e})"),
                };
                let _ = reader.ended.set((SystemTime::now(), why));
            })
            .map_err(|e| format!("cannot start a thread to read powermetrics: {e}"))?;
        Ok(PowermetricsMeter {
            shared,
            pid,
            components,
        })
    }

    /// Samples read so far.
    pub fn samples(&self) -> u64 {
        self.shared.samples.load(Ordering::Acquire)
    }

    /// Why the stream ended, if it has.
    pub fn ended(&self) -> Option<&str> {
        self.shared.ended.get().map(|(_, w)| w.as_str())
    }

    /// Waits up to `wait` for the first sample or the end of the stream, so
    /// that a refusal (not root) is said at the start, with the sudoers line
    /// that avoids it; returns that line for the log.
    pub fn first_word(&self, wait: Duration) -> Option<String> {
        let until = Instant::now() + wait;
        while Instant::now() < until && self.samples() == 0 && self.ended().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.samples() > 0 {
            return None;
        }
        let why = self.ended()?;
        Some(if refused(why) {
            format!("{why}: {SUDOERS_HINT}")
        } else {
            why.to_string()
        })
    }
}

impl PowermetricsMeter {
    /// The rows' components, in order, and whether each is asked for
    /// (`gpu` brings the Neural Engine).
    fn wanted(&self) -> [(Component, bool); 3] {
        [
            (Component::Cpu, self.components.cpu),
            (Component::Gpu, self.components.gpu),
            (Component::Ane, self.components.gpu),
        ]
    }
}

impl Drop for PowermetricsMeter {
    fn drop(&mut self) {
        // Its reader reaps it; once the stream has ended the pid may be reused.
        if self.shared.ended.get().is_none() {
            let _ = crate::ffi::signals::kill(self.pid, libc::SIGTERM);
        }
    }
}

impl Meter for PowermetricsMeter {
    /// The reader adds samples as they come; there is nothing to read here.
    fn sample(&mut self, _now: Instant) {}

    fn totals(&self, out: &mut Vec<DeviceEnergy>) {
        let wanted = self.wanted();
        let samples = self.samples();
        let ended = self.shared.ended.get();
        for (i, (component, on)) in wanted.into_iter().enumerate() {
            if !on {
                continue;
            }
            if samples == 0 || !self.shared.seen[i].load(Ordering::Relaxed) {
                let why = match ended {
                    Some((_, why)) => format!("powermetrics: {why}"),
                    None if samples == 0 => "powermetrics: no sample yet".to_string(),
                    None => format!("powermetrics reports no {component} energy"),
                };
                out.push(DeviceEnergy::unavailable(component, DEVICE, why));
                continue;
            }
            let status = match ended {
                Some((at, _)) => Status::Incomplete(format!(
                    "powermetrics ended at {}",
                    humantime::format_rfc3339_seconds(*at)
                )),
                None => Status::Ok,
            };
            out.push(DeviceEnergy {
                component,
                device: DEVICE.to_string(),
                share: 1.0,
                energy: Some(Joules::from_micro(
                    self.shared.uj[i].load(Ordering::Relaxed),
                )),
                status,
            });
        }
    }

    /// [`Meter::totals`]'s energies, in its order, without allocating.
    fn energies(&self, out: &mut Vec<Option<Joules>>) {
        out.clear();
        let samples = self.samples();
        for (i, (_, on)) in self.wanted().into_iter().enumerate() {
            if on {
                let seen = samples > 0 && self.shared.seen[i].load(Ordering::Relaxed);
                out.push(
                    seen.then(|| Joules::from_micro(self.shared.uj[i].load(Ordering::Relaxed))),
                );
            }
        }
    }

    fn bridges_gaps(&self) -> bool {
        // powermetrics integrates over its own samples: a late read loses nothing.
        true
    }

    fn label(&self) -> String {
        "powermetrics".to_string()
    }
}

/// The rows of a `powermetrics` that could not be started: every component
/// it would have read, `unavailable` with the reason.
pub struct Unmeasured(Vec<DeviceEnergy>);

impl Unmeasured {
    pub fn new(components: Components, why: &str) -> Unmeasured {
        let why = super::cut(why, super::MAX_REASON);
        let rows = [
            (Component::Cpu, components.cpu),
            (Component::Gpu, components.gpu),
            (Component::Ane, components.gpu),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(c, _)| DeviceEnergy::unavailable(c, DEVICE, why.clone()))
        .collect();
        Unmeasured(rows)
    }
}

impl Meter for Unmeasured {
    fn sample(&mut self, _now: Instant) {}

    fn totals(&self, out: &mut Vec<DeviceEnergy>) {
        out.extend(self.0.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample in the shape `powermetrics -f plist` writes (fields trimmed).
    pub const SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
<key>is_delta</key><true/>
<key>elapsed_ns</key><integer>200000000</integer>
<key>hw_model</key><string>Mac14,2</string>
<key>timestamp</key><date>2026-01-01T00:00:00Z</date>
<key>processor</key>
<dict>
<key>clusters</key><array><dict><key>name</key><string>E-Cluster</string></dict></array>
<key>ane_energy</key><integer>10</integer>
<key>ane_power</key><real>50</real>
<key>cpu_energy</key><integer>300</integer>
<key>cpu_power</key><real>1500</real>
<key>gpu_energy</key><integer>60</integer>
<key>gpu_power</key><real>300</real>
<key>combined_power</key><real>1850</real>
</dict>
</dict>
</plist>
"#;

    #[test]
    fn a_sample_gives_its_energies_or_its_power_over_its_time() {
        let s = parse_sample(SAMPLE.as_bytes()).unwrap();
        assert_eq!(s.elapsed_ns, Some(200_000_000));
        assert_eq!(
            sample_energy(&s),
            [Some(Joules(0.3)), Some(Joules(0.06)), Some(Joules(0.01))]
        );
        // No energies: power (mW) × elapsed.
        let power_only = Sample {
            elapsed_ns: Some(500_000_000),
            processor: Some(Processor {
                cpu_power: Some(2000.0),
                ..Processor::default()
            }),
        };
        assert_eq!(sample_energy(&power_only), [Some(Joules(1.0)), None, None]);
        assert_eq!(
            sample_energy(&Sample {
                elapsed_ns: None,
                processor: None
            }),
            [None, None, None]
        );
        assert!(parse_sample(b"<plist><dict><key>x</key></dict>").is_err());
    }

    /// The stream: documents apart by NUL, blank space between them skipped;
    /// energies add up; a document that does not parse ends it, said.
    #[test]
    fn the_stream_adds_samples_up() {
        let shared = Shared::default();
        let stream = format!("{SAMPLE}\0\n{SAMPLE}\0{SAMPLE}\0");
        assert_eq!(shared.read_stream(stream.as_bytes()), "its output ended");
        assert_eq!(shared.samples.load(Ordering::Relaxed), 3);
        assert_eq!(shared.uj[0].load(Ordering::Relaxed), 900_000);
        assert_eq!(shared.uj[1].load(Ordering::Relaxed), 180_000);
        assert_eq!(shared.uj[2].load(Ordering::Relaxed), 30_000);
        let shared = Shared::default();
        let why = shared.read_stream(format!("{SAMPLE}\0garbage\0{SAMPLE}").as_bytes());
        assert!(why.starts_with("a sample did not parse"), "{why}");
        assert_eq!(shared.samples.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_hint_names_the_sudoers_line() {
        assert!(SUDOERS_HINT.contains("NOPASSWD: /usr/bin/powermetrics"));
        assert_eq!(choose(Some("/x/pm".into())), Some(PathBuf::from("/x/pm")));
    }
}
