//! Row 2: resident memory the sampler adds to its host process, and the
//! bound of its timeline for a 7-day job.
//!
//! Measured in a fresh process (this binary again, with a hidden `--child`
//! flag), so nothing the other rows allocated is in the figures: the fake
//! hardware is set up first, `VmRSS` is read, then the meters are opened
//! (NVML loaded and initialised, GPUs listed, RAPL files opened), the sampler
//! started and run, and `VmRSS` read again while it runs.
//!
//! The 7-day timeline is filled in fast-forward with the real code: a 1 ms
//! interval and refresh and a point per sample instead of the plugin's 1 s
//! interval and 60 s bucket and refresh, so 7 days of minute points (and a
//! snapshot refresh per point, as in the plugin) take about 10 s.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use carbontrack::measure::sampler::{Observer, STORED_POINT_BYTES, Sampler, SamplerOptions, Tick};
use carbontrack_fixtures::profile::Profile;
use carbontrack_fixtures::tempdir::TempDir;

use crate::cpu::{GPUS, PACKAGES};
use crate::hardware::{self, FakeNvml, JobMeters};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Child {
    /// The plugin's options at a 100 ms interval, for a few seconds.
    Rss,
    /// The timeline filled to its 7-day cap in fast-forward.
    Rss7d,
}

/// What a child reports, in KiB and counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct RssResult {
    pub baseline_kib: u64,
    pub opened_kib: u64,
    pub running_kib: u64,
    /// `RssAnon` (heap, stacks: private to the process) at the baseline and
    /// while running; the rest of RSS is pages mapped from files (code,
    /// libraries), which the kernel maps 64 KiB around each fault.
    pub baseline_anon_kib: u64,
    pub running_anon_kib: u64,
    pub hwm_kib: u64,
    pub samples: u64,
    pub points: u64,
    pub bucket_us: u64,
}

impl RssResult {
    pub fn meters_added_kib(&self) -> i64 {
        self.opened_kib as i64 - self.baseline_kib as i64
    }

    pub fn added_kib(&self) -> i64 {
        self.running_kib as i64 - self.baseline_kib as i64
    }

    pub fn anon_added_kib(&self) -> i64 {
        self.running_anon_kib as i64 - self.baseline_anon_kib as i64
    }

    pub fn peak_added_kib(&self) -> i64 {
        self.hwm_kib as i64 - self.baseline_kib as i64
    }

    fn line(&self) -> String {
        format!(
            "baseline_kib={} opened_kib={} running_kib={} baseline_anon_kib={} running_anon_kib={} hwm_kib={} samples={} points={} bucket_us={}",
            self.baseline_kib,
            self.opened_kib,
            self.running_kib,
            self.baseline_anon_kib,
            self.running_anon_kib,
            self.hwm_kib,
            self.samples,
            self.points,
            self.bucket_us
        )
    }

    fn parse(text: &str) -> Result<RssResult> {
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with("baseline_kib="))
            .with_context(|| format!("the child printed no result: `{text}`"))?;
        let mut r = RssResult::default();
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=').context("not key=value")?;
            let v: u64 = v.parse().with_context(|| format!("`{kv}`"))?;
            match k {
                "baseline_kib" => r.baseline_kib = v,
                "opened_kib" => r.opened_kib = v,
                "running_kib" => r.running_kib = v,
                "baseline_anon_kib" => r.baseline_anon_kib = v,
                "running_anon_kib" => r.running_anon_kib = v,
                "hwm_kib" => r.hwm_kib = v,
                "samples" => r.samples = v,
                "points" => r.points = v,
                "bucket_us" => r.bucket_us = v,
                _ => bail!("unknown key in `{kv}`"),
            }
        }
        Ok(r)
    }
}

/// Runs a child measurement in a fresh process of this binary.
pub fn measure(kind: Child, library: &Path, seconds: u64) -> Result<RssResult> {
    let exe = std::env::current_exe()?;
    let arg = match kind {
        Child::Rss => "rss",
        Child::Rss7d => "rss7d",
    };
    let out = Command::new(exe)
        .args([
            "--child",
            arg,
            "--seconds",
            &seconds.to_string(),
            "--fake-nvml",
        ])
        .arg(library)
        .output()
        .context("cannot start the child process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "the {arg} child failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    RssResult::parse(&stdout)
}

/// `key:   N kB` from /proc/self/status.
fn status_kib(key: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/self/status"))
}

/// Counts samples without allocating or taking snapshots, so watching the
/// progress adds nothing to what is measured.
struct Counter(Arc<AtomicU64>);

impl Observer for Counter {
    fn on_sample(&mut self, tick: &mut Tick<'_>) {
        self.0.store(tick.samples, Ordering::Relaxed);
    }
}

/// The child's body: prints one `RssResult` line.
pub fn child_main(kind: Child, library: &Path, seconds: u64) -> Result<()> {
    let dir = TempDir::new("bench-rss-powercap")?;
    let epoch = SystemTime::now() - Duration::from_secs(100);
    let zones = vec![(Profile::constant(150.0), Profile::constant(15.0)); PACKAGES];
    let writer = hardware::powercap(dir.path(), &zones, epoch, Duration::from_millis(10))?;
    let mut config = hardware::nvml_header(hardware::unix_secs(epoch), 0);
    for n in 0..GPUS {
        config.push_str(&hardware::gpu_section(n, &Profile::constant(300.0), true));
    }
    let nvml = FakeNvml::install(library, "rss", &config)?;
    let (interval, bucket, refresh, wanted) = match kind {
        Child::Rss => (
            Duration::from_millis(100),
            SamplerOptions::default().bucket,
            Duration::from_secs(1),
            seconds.min(10) * 10,
        ),
        Child::Rss7d => {
            // A point per sample (the bucket is shorter than any gap between
            // samples) until an hour's worth of points short of the cap, so
            // the timeline is a 7-day job's, not yet merged; the counter is
            // watched every 5 ms, about 5 samples.
            let ms = Duration::from_millis(1);
            let cap = SamplerOptions::default().timeline_cap as u64;
            (ms, Duration::from_micros(100), ms, cap - 60)
        }
    };
    std::thread::sleep(Duration::from_millis(200));
    let baseline_kib = status_kib("VmRSS")?;
    let baseline_anon_kib = status_kib("RssAnon")?;

    let meters = JobMeters::open(writer.root(), nvml.lib(), interval);
    let opened_kib = status_kib("VmRSS")?;
    let seen = Arc::new(AtomicU64::new(0));
    let opts = SamplerOptions {
        interval,
        bucket,
        refresh,
        ..SamplerOptions::default()
    };
    let sampler = Sampler::start(
        meters.into_boxes(),
        opts,
        Some(Box::new(Counter(Arc::clone(&seen)))),
    )?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.load(Ordering::Relaxed) < wanted {
        ensure!(
            Instant::now() < deadline,
            "the sampler took only {} of {wanted} samples in 300 s",
            seen.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let running_kib = status_kib("VmRSS")?;
    let running_anon_kib = status_kib("RssAnon")?;
    let hwm_kib = status_kib("VmHWM")?;
    let snap = sampler.stop().map_err(|e| anyhow::anyhow!("{e}"))?;
    hardware::check_devices(&snap.devices, 2 * PACKAGES, GPUS)?;
    let r = RssResult {
        baseline_kib,
        opened_kib,
        running_kib,
        baseline_anon_kib,
        running_anon_kib,
        hwm_kib,
        samples: snap.samples,
        points: snap.timeline.len() as u64,
        bucket_us: snap.timeline_bucket.as_micros() as u64,
    };
    println!("{}", r.line());
    Ok(())
}

/// The timeline's size for a 7-day job, from its types and its cap.
#[derive(Debug, Clone, Copy)]
pub struct TimelineBound {
    pub cap: usize,
    pub point_bytes: usize,
    /// Resident once full: the sampler's points, which snapshots share.
    pub resident_bytes: usize,
}

pub fn timeline_bound() -> TimelineBound {
    let cap = SamplerOptions::default().timeline_cap;
    let point_bytes = STORED_POINT_BYTES;
    TimelineBound {
        cap,
        point_bytes,
        resident_bytes: cap * point_bytes,
    }
}
