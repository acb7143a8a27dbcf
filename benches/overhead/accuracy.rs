//! Row 3: energy measured by the real sampler at 1 s against the energy the
//! fake hardware was told to use (closed-form integrals of its power profile).
//!
//! Four kinds of device: GPUs with NVML's energy counter; GPUs that report
//! only power, read through the driver's buffer of power samples (one every
//! 20 ms, as drivers keep them) or, where a driver has no such buffer, with
//! one power reading per sample (carbontrack integrates either with the
//! trapezoid rule); and RAPL counters through the powercap fixture.
//! Each under four loads:
//! - constant;
//! - step: 10 s period, a multiple of the interval;
//! - spiky: a 10 % burst in a 0.937 s period, so samples drift across it;
//! - spiky, phase-locked: the same burst in a period equal to the interval,
//!   so every sample lands at the same phase. One power reading per sample
//!   cannot see such a load correctly: its readings are all in the burst or
//!   all out of it. The driver's 20 ms samples see it.
//!
//! The fake NVML returns instantaneous power; real drivers on recent GPUs
//! return an average over about a second, which smooths spikes (and delays
//! steps), so these are the methods' errors, not a given GPU's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use carbontrack::measure::Component;
use carbontrack::measure::sampler::{Sampler, SamplerOptions};
use carbontrack_fixtures::powercap::PowercapWriter;
use carbontrack_fixtures::profile::Profile;
use carbontrack_fixtures::tempdir::TempDir;

use crate::hardware::{self, FakeNvml, JobMeters};

pub const INTERVAL: Duration = Duration::from_secs(1);

/// The fake driver's power sample period (`samples = 20`), in seconds.
const DRIVER_SAMPLE_PERIOD: f64 = 0.02;

/// The newest driver sample at `t` (seconds since the epoch): a buffered
/// GPU's energy runs from the newest sample when it was opened to the newest
/// at the last read.
fn newest_driver_sample(t: f64) -> f64 {
    carbontrack_fixtures::fake_nvml::newest_driver_sample(DRIVER_SAMPLE_PERIOD, t)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    CounterGpu,
    BufferedPowerGpu,
    PowerOnlyGpu,
    Rapl,
}

/// The kinds in the order the table lists them.
const KINDS: [Kind; 4] = [
    Kind::CounterGpu,
    Kind::BufferedPowerGpu,
    Kind::PowerOnlyGpu,
    Kind::Rapl,
];

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::CounterGpu => "GPU with energy counter",
            Kind::BufferedPowerGpu => "GPU with power only, the driver's 20 ms samples",
            Kind::PowerOnlyGpu => "GPU with power only, no sample buffer: one reading a sample",
            Kind::Rapl => "RAPL counter (package + DRAM)",
        }
    }

    /// The target, in percent.
    pub fn target_percent(self) -> f64 {
        match self {
            Kind::BufferedPowerGpu | Kind::PowerOnlyGpu => 2.0,
            Kind::CounterGpu | Kind::Rapl => 0.5,
        }
    }
}

/// (name, GPU profile, RAPL package profile, RAPL DRAM profile).
fn loads() -> [(&'static str, &'static str, &'static str, &'static str); 4] {
    [
        ("constant", "250", "150", "20"),
        ("step 10 s", "100@5,300@5", "60@5,180@5", "10@5,30@5"),
        // 0.9371 s: within a 60 s run no edge falls on one of the fake
        // driver's 20 ms samples (0.93 s would put one on every 46.5th).
        (
            "spiky 0.937 s",
            "40@0.84339,300@0.09371",
            "40@0.84339,200@0.09371",
            "5@0.84339,40@0.09371",
        ),
        (
            "spiky 1 s (phase-locked)",
            "40@0.9,300@0.1",
            "40@0.9,200@0.1",
            "5@0.9,40@0.1",
        ),
    ]
}

/// The worst relative error, signed, for one kind of device under one load.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub load: &'static str,
    /// Measured minus truth over truth, in percent; the one furthest from 0.
    pub worst_percent: f64,
    pub devices: usize,
}

struct Device {
    kind: Kind,
    load: &'static str,
    profile: Profile,
}

pub struct AccuracyRun {
    _dir: TempDir,
    _writer: PowercapWriter,
    _nvml: FakeNvml,
    epoch_unix: f64,
    nvml_opened: (SystemTime, SystemTime),
    /// By (component, device) as the snapshot names them.
    devices: BTreeMap<(Component, String), Device>,
    sampler: Option<Sampler>,
    end_at: Instant,
    result: Option<Vec<Error>>,
}

fn profile(s: &str) -> Result<Profile> {
    s.parse::<Profile>()
        .map_err(|e| anyhow::anyhow!("profile `{s}`: {e}"))
}

impl AccuracyRun {
    pub fn start(library: &Path, seconds: u64) -> Result<AccuracyRun> {
        let dir = TempDir::new("bench-accuracy-powercap")?;
        let epoch = SystemTime::now() - Duration::from_secs(1000);
        let epoch_unix = hardware::unix_secs(epoch);
        let mut devices = BTreeMap::new();
        let mut zones = Vec::new();
        let mut config = hardware::nvml_header(epoch_unix, 0);
        for (i, (load, gpu, pkg, dram)) in loads().into_iter().enumerate() {
            let gpu = profile(gpu)?;
            for (k, kind) in [Kind::CounterGpu, Kind::BufferedPowerGpu, Kind::PowerOnlyGpu]
                .into_iter()
                .enumerate()
            {
                let n = 3 * i + k;
                config.push_str(&hardware::gpu_section(n, &gpu, kind == Kind::CounterGpu));
                if kind == Kind::BufferedPowerGpu {
                    config.push_str(&format!("samples = {}\n", DRIVER_SAMPLE_PERIOD * 1e3));
                }
                let d = Device {
                    kind,
                    load,
                    profile: gpu.clone(),
                };
                devices.insert((Component::Gpu, hardware::gpu_uuid(n)), d);
            }
            let (pkg, dram) = (profile(pkg)?, profile(dram)?);
            for (c, p) in [(Component::Cpu, &pkg), (Component::Dram, &dram)] {
                let d = Device {
                    kind: Kind::Rapl,
                    load,
                    profile: p.clone(),
                };
                devices.insert((c, format!("package-{i}")), d);
            }
            zones.push((pkg, dram));
        }
        // A fresh counter every 2 ms, close to real RAPL's ~1 ms updates.
        let writer = hardware::powercap(dir.path(), &zones, epoch, Duration::from_millis(2))?;
        let nvml = FakeNvml::install(library, "accuracy", &config)?;
        let meters = JobMeters::open(dir.path(), nvml.lib(), INTERVAL);
        let nvml_opened = meters.nvml_opened;
        let opts = SamplerOptions {
            interval: INTERVAL,
            thread_name: "ct-accuracy".into(),
            ..SamplerOptions::default()
        };
        let t0 = Instant::now();
        let sampler = Sampler::start(meters.into_boxes(), opts, None)
            .context("cannot start the sampler thread")?;
        hardware::check_devices(
            &sampler.snapshot().devices,
            2 * zones.len(),
            3 * zones.len(),
        )?;
        let samples = seconds.max(1);
        Ok(AccuracyRun {
            _dir: dir,
            _writer: writer,
            _nvml: nvml,
            epoch_unix,
            nvml_opened,
            devices,
            sampler: Some(sampler),
            // Stop half an interval after the last sample wanted.
            end_at: t0 + INTERVAL * u32::try_from(samples).unwrap_or(u32::MAX) + INTERVAL / 2,
            result: None,
        })
    }

    pub fn due(&self) -> Option<Instant> {
        self.result.is_none().then_some(self.end_at)
    }

    pub fn fire(&mut self) -> Result<()> {
        let Some(sampler) = self.sampler.take() else {
            return Ok(());
        };
        // The snapshot, not `stop`: stopping takes one more sample at once.
        let snap = sampler.snapshot();
        let _ = sampler.stop();
        let secs = |t: SystemTime| hardware::unix_secs(t) - self.epoch_unix;
        // GPUs take their first reading when NVML is opened; RAPL zones at the
        // sampler's baseline.
        let gpu_start = (secs(self.nvml_opened.0) + secs(self.nvml_opened.1)) / 2.0;
        let rapl_start = secs(snap.start);
        let end = secs(snap.end);
        let mut worst: BTreeMap<(Kind, &'static str), (f64, usize)> = BTreeMap::new();
        for d in &snap.devices {
            let key = (d.component, d.device.clone());
            let dev = self
                .devices
                .get(&key)
                .with_context(|| format!("the snapshot has an unexpected device {key:?}"))?;
            let measured = d
                .energy
                .with_context(|| format!("{key:?} was not measured: {}", d.status))?
                .0;
            let (start, end) = match dev.kind {
                Kind::Rapl => (rapl_start, end),
                Kind::BufferedPowerGpu => {
                    (newest_driver_sample(gpu_start), newest_driver_sample(end))
                }
                Kind::CounterGpu | Kind::PowerOnlyGpu => (gpu_start, end),
            };
            let truth = dev.profile.energy_between(start, end);
            let err = 100.0 * (measured - truth) / truth;
            let w = worst.entry((dev.kind, dev.load)).or_insert((0.0, 0));
            if err.abs() >= w.0.abs() {
                w.0 = err;
            }
            w.1 += 1;
        }
        // Keep the loads in their listed order.
        let mut out = Vec::new();
        for kind in KINDS {
            for (load, ..) in loads() {
                if let Some(&(e, n)) = worst.get(&(kind, load)) {
                    out.push(Error {
                        kind,
                        load,
                        worst_percent: e,
                        devices: n,
                    });
                }
            }
        }
        self.result = Some(out);
        Ok(())
    }

    pub fn result(&self) -> Option<&[Error]> {
        self.result.as_deref()
    }
}
