//! Row 1: the sampler thread's own CPU time per sample, read from the OS.
//!
//! `/proc/self/task/<tid>/schedstat` gives the thread's CPU time in
//! nanoseconds (utime + stime in `stat` come in 10 ms ticks, far too coarse
//! for microseconds a sample). Only the sampler thread is counted: the fixture
//! writer thread and everything else in this process are not.
//!
//! Readings are taken half an interval after a sample is due, so the sample
//! count and the CPU time read together belong to the same completed samples.
//!
//! One run wraps the meters in [`Timed`], which reads the thread's CPU clock
//! around their `sample()`: that splits a sample into the meters' reads and
//! the rest (wake-up, sleep, bookkeeping) without guessing from other runs.
//! Each sampler also reports its own CPU time (`Snapshot::sampler_cpu`, the
//! figure the plugin logs at the end of a job), set beside schedstat's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use carbontrack::ffi::clock::thread_cpu_time;
use carbontrack::measure::sampler::{Sampler, SamplerCpu, SamplerOptions};
use carbontrack::measure::{DeviceEnergy, Meter};
use carbontrack_fixtures::powercap::PowercapWriter;
use carbontrack_fixtures::profile::Profile;
use carbontrack_fixtures::tempdir::TempDir;

use crate::hardware::{self, FakeNvml, JobMeters};

/// The device set of row 1: 2 packages with DRAM, 8 GPUs with energy counters.
pub const PACKAGES: usize = 2;
pub const GPUS: usize = 8;

/// The fixture all row-1 samplers read: 2 packages + DRAM, kept current.
pub struct Row1Hardware {
    _dir: TempDir,
    writer: PowercapWriter,
    epoch: SystemTime,
}

impl Row1Hardware {
    pub fn new() -> Result<Row1Hardware> {
        let dir = TempDir::new("bench-cpu-powercap")?;
        let epoch = SystemTime::now() - Duration::from_secs(100);
        let zones = vec![(Profile::constant(150.0), Profile::constant(15.0)); PACKAGES];
        // Counters advance every 100 ms: often enough that every 1 s sample sees
        // new values, rarely enough that the fixture's writer thread (which real
        // RAPL does not have) stays out of the figures.
        let writer = hardware::powercap(dir.path(), &zones, epoch, Duration::from_millis(100))?;
        Ok(Row1Hardware {
            _dir: dir,
            writer,
            epoch,
        })
    }
}

/// Which meters a run has: the whole device set, or a part of it to show
/// where the time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Set {
    Full,
    /// The full set inside [`Timed`]: the meters' share of each sample,
    /// measured on the sampler thread.
    FullTimed,
    /// The thread alone: wake-up, clocks, locks, bookkeeping.
    NoMeters,
    RaplOnly,
    NvmlOnly,
    /// Not a sampler: a bare thread sleeping to the same deadlines, the price
    /// the OS charges for a wake-up, which no sampler can go below.
    Sleeper,
}

impl Set {
    fn code(self) -> char {
        match self {
            Set::Full => 'f',
            Set::FullTimed => 't',
            Set::NoMeters => 'n',
            Set::RaplOnly => 'r',
            Set::NvmlOnly => 'g',
            Set::Sleeper => 's',
        }
    }
}

/// Sampler CPU time over a run.
#[derive(Debug, Clone, Copy)]
pub struct CpuResult {
    pub set: Set,
    pub interval: Duration,
    pub delay_us: u64,
    pub samples: u64,
    pub cpu: Duration,
    pub wall: Duration,
    /// [`Set::FullTimed`]: CPU time inside the meters' `sample()` over the
    /// same samples.
    pub meters: Option<Duration>,
    /// The sampler's own figure after its stop, covering the whole thread.
    pub self_reported: Option<SamplerCpu>,
    /// schedstat's figure for the whole thread at the last reading, and the
    /// thread's samples then (the baseline is not the thread's).
    pub whole_thread: Option<(Duration, u64)>,
}

impl CpuResult {
    pub fn per_sample(&self) -> Duration {
        self.cpu / u32::try_from(self.samples.max(1)).unwrap_or(u32::MAX)
    }

    /// The meters' CPU time a sample, for [`Set::FullTimed`].
    pub fn meters_per_sample(&self) -> Option<Duration> {
        self.meters
            .map(|m| m / u32::try_from(self.samples.max(1)).unwrap_or(u32::MAX))
    }

    /// Share of one core, in percent.
    pub fn core_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// One sampler over the row-1 device set, measured from `begin` to `end`.
pub struct CpuRun {
    set: Set,
    interval: Duration,
    delay_us: u64,
    probe: Option<Probe>,
    task: PathBuf,
    begin_at: Instant,
    end_at: Instant,
    begin: Option<(Duration, u64, Instant, Duration)>,
    result: Option<CpuResult>,
    /// Shared with the [`Timed`] meter of a [`Set::FullTimed`] run.
    timed: Option<Arc<AtomicU64>>,
    _nvml: FakeNvml,
}

impl CpuRun {
    /// Starts the sampler now; measurement begins after its first two samples
    /// (the baseline and the thread's first) and spans `seconds`.
    pub fn start(
        hw: &Row1Hardware,
        library: &Path,
        interval: Duration,
        delay_us: u64,
        set: Set,
        seconds: u64,
    ) -> Result<CpuRun> {
        let label = format!("{}ms-{delay_us}us-{}", interval.as_millis(), set.code());
        let mut config = hardware::nvml_header(hardware::unix_secs(hw.epoch), delay_us);
        for n in 0..GPUS {
            config.push_str(&hardware::gpu_section(n, &Profile::constant(300.0), true));
        }
        let nvml = FakeNvml::install(library, &label, &config)?;
        let meters = JobMeters::open(hw.writer.root(), nvml.lib(), interval);
        let (rapl_rows, gpus) = match set {
            Set::Full | Set::FullTimed => (2 * PACKAGES, GPUS),
            Set::NoMeters | Set::Sleeper => (0, 0),
            Set::RaplOnly => (2 * PACKAGES, 0),
            Set::NvmlOnly => (0, GPUS),
        };
        let timed = (set == Set::FullTimed).then(|| Arc::new(AtomicU64::new(0)));
        let meters: Vec<Box<dyn Meter>> = match set {
            Set::Full => meters.into_boxes(),
            Set::FullTimed => vec![Box::new(Timed {
                meters: meters.into_boxes(),
                spent_ns: Arc::clone(timed.as_ref().context("timed run without its counter")?),
            })],
            Set::NoMeters | Set::Sleeper => Vec::new(),
            Set::RaplOnly => vec![Box::new(meters.rapl)],
            Set::NvmlOnly => meters
                .nvml
                .split()
                .into_iter()
                .map(|m| Box::new(m) as Box<dyn Meter>)
                .collect(),
        };
        // Unique per run, within the 15 bytes Linux keeps.
        let name = format!("ct-{}-{delay_us}-{}", interval.as_millis(), set.code());
        ensure!(name.len() <= 15, "thread name `{name}` too long for Linux");
        let opts = SamplerOptions {
            interval,
            // As the tracker runs it: a timeline point closes every sample.
            bucket: interval,
            thread_name: name.clone(),
            ..SamplerOptions::default()
        };
        let t0 = Instant::now();
        let probe = if set == Set::Sleeper {
            Probe::sleeper(name.clone(), interval)?
        } else {
            let sampler =
                Sampler::start(meters, opts, None).context("cannot start the sampler thread")?;
            hardware::check_devices(&sampler.snapshot().devices, rapl_rows, gpus)?;
            Probe::Sampler(sampler)
        };
        let task = task_named(&name)?;
        let measured = (seconds as f64 / interval.as_secs_f64()).ceil().max(1.0) as u32;
        let begin_at = t0 + interval * 3 / 2;
        Ok(CpuRun {
            set,
            interval,
            delay_us,
            probe: Some(probe),
            task,
            begin_at,
            end_at: begin_at + interval * measured,
            begin: None,
            result: None,
            timed,
            _nvml: nvml,
        })
    }

    pub fn due(&self) -> Option<Instant> {
        match (&self.begin, &self.result) {
            (None, _) => Some(self.begin_at),
            (Some(_), None) => Some(self.end_at),
            _ => None,
        }
    }

    pub fn fire(&mut self) -> Result<()> {
        let Some(probe) = &self.probe else {
            return Ok(());
        };
        let samples = probe.samples();
        let cpu = thread_cpu(&self.task)?;
        let now = Instant::now();
        let in_meters = self
            .timed
            .as_ref()
            .map(|t| Duration::from_nanos(t.load(Ordering::Relaxed)));
        match self.begin {
            None => {
                self.begin = Some((cpu, samples, now, in_meters.unwrap_or_default()));
            }
            Some((cpu0, samples0, t0, meters0)) => {
                let self_reported = self.probe.take().and_then(Probe::stop);
                self.result = Some(CpuResult {
                    set: self.set,
                    interval: self.interval,
                    delay_us: self.delay_us,
                    samples: samples - samples0,
                    cpu: cpu.saturating_sub(cpu0),
                    wall: now - t0,
                    meters: in_meters.map(|m| m.saturating_sub(meters0)),
                    self_reported,
                    whole_thread: self_reported.map(|_| (cpu, samples.saturating_sub(1))),
                });
            }
        }
        Ok(())
    }

    pub fn result(&self) -> Option<CpuResult> {
        self.result
    }
}

/// What a run measures: the sampler, or the bare sleeping thread.
enum Probe {
    Sampler(Sampler),
    Sleeper {
        stop: Arc<AtomicBool>,
        wakes: Arc<AtomicU64>,
    },
}

impl Probe {
    fn sleeper(name: String, interval: Duration) -> Result<Probe> {
        let stop = Arc::new(AtomicBool::new(false));
        let wakes = Arc::new(AtomicU64::new(1));
        let (s, w) = (Arc::clone(&stop), Arc::clone(&wakes));
        // The thread is named as it starts: wait for that, so `task_named`
        // finds it.
        let (started, named) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let _ = started.send(());
                let t0 = Instant::now();
                let mut k = 0;
                while !s.load(Ordering::Relaxed) {
                    k += 1;
                    std::thread::sleep(
                        (t0 + interval * k).saturating_duration_since(Instant::now()),
                    );
                    w.fetch_add(1, Ordering::Relaxed);
                }
            })
            .context("cannot start the sleeping thread")?;
        named.recv().context("the sleeping thread ended at once")?;
        Ok(Probe::Sleeper { stop, wakes })
    }

    fn samples(&self) -> u64 {
        match self {
            Probe::Sampler(s) => s.snapshot().samples,
            Probe::Sleeper { wakes, .. } => wakes.load(Ordering::Relaxed),
        }
    }

    /// The sampler's own CPU figure, once stopped. The sleeper is not
    /// joined: it ends by itself within an interval.
    fn stop(self) -> Option<SamplerCpu> {
        match self {
            Probe::Sampler(s) => s.stop().ok().and_then(|snap| snap.sampler_cpu),
            Probe::Sleeper { stop, .. } => {
                stop.store(true, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The job's meters behind one, which reads the sampler thread's CPU clock
/// before and after them and adds up the difference. Bench-only: the two
/// clock reads a sample are the price of the split, and the plugin never
/// pays it.
struct Timed {
    meters: Vec<Box<dyn Meter>>,
    spent_ns: Arc<AtomicU64>,
}

impl Meter for Timed {
    fn sample(&mut self, now: Instant) {
        let before = thread_cpu_time();
        for m in &mut self.meters {
            m.sample(now);
        }
        if let (Some(a), Some(b)) = (before, thread_cpu_time()) {
            let ns = u64::try_from(b.saturating_sub(a).as_nanos()).unwrap_or(u64::MAX);
            self.spent_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    fn totals(&self, out: &mut Vec<DeviceEnergy>) {
        for m in &self.meters {
            m.totals(out);
        }
    }
}

/// The `/proc/self/task` entry of the thread named `name`.
fn task_named(name: &str) -> Result<PathBuf> {
    for e in std::fs::read_dir("/proc/self/task")? {
        let p = e?.path();
        if std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim_end() == name) {
            return Ok(p);
        }
    }
    bail!("no thread named `{name}` in /proc/self/task")
}

/// The thread's CPU time (user + system) from `schedstat`, in nanoseconds.
fn thread_cpu(task: &Path) -> Result<Duration> {
    let path = task.join("schedstat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("{} does not start with a number: `{text}`", path.display()))?;
    Ok(Duration::from_nanos(ns))
}

/// Per-call CPU time of the work a sample does, in a hot loop: what the code
/// itself costs once caches are warm, without the wake-up and the cold
/// caches a sample once a second pays (those are in the per-sample lines).
#[derive(Debug, Clone, Copy)]
pub struct HotCosts {
    pub calls: u32,
    /// `RaplMeter::sample`, 2 packages + DRAM (4 zones).
    pub rapl_sample: Duration,
    /// One `pread` + parse of an `energy_uj` file: what each zone's second
    /// read cost before a zone was read once a sample.
    pub pread: Duration,
    /// `NvmlMeter::sample`, 8 counter GPUs, fake calls at 0 µs.
    pub nvml_sample: Duration,
    /// `nvmlDeviceGetHandleByIndex_v2` on the fake: the call per GPU and
    /// sample that keeping the handles saves.
    pub handle_by_index: Duration,
}

fn own_cpu() -> Result<Duration> {
    thread_cpu(Path::new("/proc/thread-self"))
}

fn per_call(calls: u32, mut f: impl FnMut()) -> Result<Duration> {
    for _ in 0..100 {
        f();
    }
    let cpu0 = own_cpu()?;
    for _ in 0..calls {
        f();
    }
    Ok(own_cpu()?.saturating_sub(cpu0) / calls)
}

pub fn hot_costs(hw: &Row1Hardware, library: &Path, calls: u32) -> Result<HotCosts> {
    let mut config = hardware::nvml_header(hardware::unix_secs(hw.epoch), 0);
    for n in 0..GPUS {
        config.push_str(&hardware::gpu_section(n, &Profile::constant(300.0), true));
    }
    let nvml = FakeNvml::install(library, "hot", &config)?;
    let mut meters = JobMeters::open(hw.writer.root(), nvml.lib(), Duration::from_secs(1));
    let rapl_sample = per_call(calls, || meters.rapl.sample(Instant::now()))?;
    let nvml_sample = per_call(calls, || meters.nvml.sample(Instant::now()))?;
    let mut check = Vec::new();
    meters.rapl.totals(&mut check);
    meters.nvml.totals(&mut check);
    hardware::check_devices(&check, 2 * PACKAGES, GPUS)?;
    let file = std::fs::File::open(hw.writer.energy_uj("package-0"))?;
    let mut failed = false;
    let pread = per_call(calls, || {
        let mut buf = [0u8; 32];
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf, 0).unwrap_or(0);
        failed |= std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.trim_end().parse::<u64>().ok())
            .is_none()
            && n > 0;
    })?;
    ensure!(!failed, "an energy_uj read did not hold a number");
    let other = FakeNvml::install(library, "hot-handle", &config)?;
    let (_, costs) = crate::nvml_latency::measure(other.lib(), calls)?;
    let handle_by_index = costs
        .iter()
        .find(|c| c.call == "nvmlDeviceGetHandleByIndex_v2")
        .map(|c| c.cpu)
        .context("no handle-by-index figure")?;
    Ok(HotCosts {
        calls,
        rapl_sample,
        pread,
        nvml_sample,
        handle_by_index,
    })
}
