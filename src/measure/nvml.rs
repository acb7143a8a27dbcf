//! NVIDIA GPUs through NVML (nvml-wrapper): the node's inventory and a
//! [`Meter`] for the job's GPUs.
//!
//! Per GPU the total-energy counter (mJ since the driver loaded, Volta and
//! later) is preferred: differences of a counter lose nothing between samples.
//! Where the driver answers NotSupported (Kepler to Pascal), power is
//! integrated with the trapezoid rule, from the best source the GPU has:
//!
//! 1. The driver's own buffer of power samples (`nvmlDeviceGetSamples`,
//!    Kepler and later), taken every 20 ms or so (Lang and Rünger, Euro-Par
//!    2013, measured 20 ms). Each read returns every sample since the newest
//!    one seen, so a burst shorter than carbontrack's interval is still seen;
//!    NVML documents the buffer as "higher frequency data at lower polling
//!    cost". The error is that of 20 ms sampling as long as the interval is
//!    shorter than what the buffer keeps (the driver says how many samples;
//!    the default 1 s interval is 50 of them at 20 ms). With a longer interval
//!    the oldest samples are gone by the next read, and the trapezoid bridges
//!    that stretch as it does between direct readings.
//! 2. Otherwise one power reading per sample (`nvmlDeviceGetPowerUsage`). On a
//!    step in power this errs by at most `ΔP × interval / 2` per step, and
//!    steps up and down cancel in the long run; a burst shorter than the
//!    interval is hit or missed whole.
//!
//! Nothing here panics or gives up on the job: a missing library or driver
//! makes the GPUs `unavailable` with one reason; a GPU that starts failing
//! keeps what was measured and becomes `incomplete`.
//!
//! NVML is initialised once per library path and process (its documentation
//! asks for `nvmlInit` once, before any other call) and never shut down,
//! which lets a meter keep each GPU's `Device<'static>` handle, so a sample costs
//! one NVML call per GPU (not two, as with a lookup by index every time) with
//! no `unsafe`. The leaked `Nvml` never drops, so none of our code runs at
//! process exit or after Slurm unloads the plugin; the NVML library stays
//! loaded until slurmstepd exits.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::gpus::{GpuHints, GpuInfo, Selection, select};
use super::{Component, DeviceEnergy, Gaps, Meter, Status, fit_reasons, stopped_at, wall_time};
use crate::ffi::nvml_samples::{PowerSample, PowerSamples};
use crate::units::{Joules, Watts};

/// Consecutive failed reads after which a GPU is no longer asked; errors that
/// cannot heal (GPU lost, driver gone) stop it at once.
pub const MAX_FAILURES: u32 = 3;

/// More than any single GPU board draws (B200: 1 kW); a counter step or a
/// reading beyond it is a driver glitch, not energy.
const MAX_PLAUSIBLE_WATTS: f64 = 10_000.0;

/// When the driver's power samples count as stopped: no new one for this
/// long and for [`SILENT_READS`] reads in a row. Then the GPU is read
/// directly: a stalled buffer, or a wall clock stepped back (the timestamps
/// are the CPU's wall time in µs), would otherwise count nothing. Drivers
/// sample every 20 ms or so, so either alone would be plenty.
const MAX_SAMPLE_SILENCE: Duration = Duration::from_secs(2);
const SILENT_READS: u32 = 3;

/// Slack on the time between two driver samples beyond the time between our
/// reads; a longer gap is a wall-clock step, not power drawn.
const SAMPLE_GAP_SLACK: Duration = Duration::from_secs(1);

/// Reads of the driver's buffer in one sample when each comes back full: it
/// may hand out the oldest samples first, and a read that falls behind
/// catches up in a few.
const MAX_BUFFER_READS: u32 = 4;

/// The `device` of the single entry reported when NVML itself is unavailable
/// and no GPU UUID is known.
pub const NVML_DEVICE: &str = "nvml";

/// Why NVML cannot be used on this node; the text is the `unavailable:` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmlUnavailable {
    #[error(
        "NVML library {path} not found (no NVIDIA driver on this node? set `nvml=` to its path): {detail}"
    )]
    LibraryMissing { path: String, detail: String },
    #[error("{path} is not a usable NVML library: {detail}")]
    NotNvml { path: String, detail: String },
    #[error("NVIDIA driver not loaded (NVML {path}): is the nvidia kernel module loaded?")]
    DriverNotLoaded { path: String },
    #[error("no permission to talk to the NVIDIA driver (NVML {path}): check /dev/nvidia*")]
    NoPermission { path: String },
    #[error(
        "NVML library {path} does not match the loaded NVIDIA kernel driver: reload the driver or reboot"
    )]
    VersionMismatch { path: String },
    #[error("NVML ({path}) failed: {detail}")]
    Failed { path: String, detail: String },
}

impl NvmlUnavailable {
    /// The short, stable status reason (the `Display` text, with the path and
    /// the fix, goes to the log).
    pub fn short(&self) -> String {
        match self {
            NvmlUnavailable::LibraryMissing { .. } => {
                "NVML library not found (no NVIDIA driver?)".to_string()
            }
            NvmlUnavailable::NotNvml { .. } => "not a usable NVML library".to_string(),
            NvmlUnavailable::DriverNotLoaded { .. } => {
                "NVIDIA driver not loaded (NVML)".to_string()
            }
            NvmlUnavailable::NoPermission { .. } => {
                "no permission on the NVIDIA driver (NVML)".to_string()
            }
            NvmlUnavailable::VersionMismatch { .. } => {
                "NVML does not match the NVIDIA driver".to_string()
            }
            NvmlUnavailable::Failed { detail, .. } => {
                fit_reasons(&[format!("NVML failed: {detail}")])
            }
        }
    }

    fn from_error(path: &str, e: NvmlError) -> NvmlUnavailable {
        let path = path.to_string();
        match e {
            NvmlError::LibloadingError(l) => NvmlUnavailable::LibraryMissing {
                path,
                detail: l.to_string(),
            },
            NvmlError::FailedToLoadSymbol(s) => NvmlUnavailable::NotNvml { path, detail: s },
            NvmlError::DriverNotLoaded => NvmlUnavailable::DriverNotLoaded { path },
            NvmlError::NoPermission => NvmlUnavailable::NoPermission { path },
            NvmlError::LibRmVersionMismatch => NvmlUnavailable::VersionMismatch { path },
            other => NvmlUnavailable::Failed {
                path,
                detail: other.to_string(),
            },
        }
    }
}

/// An initialised NVML library, shared by every user in the process.
#[derive(Clone)]
pub struct NvmlLib {
    nvml: &'static Nvml,
    path: String,
}

/// The libraries initialised so far, by the path they were opened with.
/// Failures are not kept: the next open tries again (a driver loaded since).
static LOADED: Mutex<Vec<(PathBuf, &'static Nvml)>> = Mutex::new(Vec::new());

impl fmt::Debug for NvmlLib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvmlLib").field("path", &self.path).finish()
    }
}

impl NvmlLib {
    /// Loads and initialises the NVML library at `path` (a bare name is looked
    /// up the way `dlopen` does).
    ///
    /// The first successful open of a path in the process initialises NVML
    /// for good; later ones reuse it.
    pub fn open(path: &Path) -> Result<NvmlLib, NvmlUnavailable> {
        let shown = path.display().to_string();
        // Held through the init, so two threads never initialise one path twice.
        let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&(_, nvml)) = loaded.iter().find(|(p, _)| p == path) {
            return Ok(NvmlLib { nvml, path: shown });
        }
        let init = catch_unwind(AssertUnwindSafe(|| {
            Nvml::builder().lib_path(path.as_os_str()).init()
        }));
        match init {
            Ok(Ok(nvml)) => {
                let nvml: &'static Nvml = Box::leak(Box::new(nvml));
                loaded.push((path.to_path_buf(), nvml));
                Ok(NvmlLib { nvml, path: shown })
            }
            Ok(Err(e)) => Err(NvmlUnavailable::from_error(&shown, e)),
            Err(_) => Err(NvmlUnavailable::Failed {
                path: shown,
                detail: "the NVML wrapper panicked while loading it".into(),
            }),
        }
    }

    /// The node's GPUs; a GPU NVML cannot name is left out with a note.
    pub fn inventory(&self) -> Result<(Vec<GpuInfo>, Vec<String>), NvmlUnavailable> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| NvmlUnavailable::from_error(&self.path, e))?;
        let mut gpus = Vec::new();
        let mut notes = Vec::new();
        for index in 0..count {
            match catch_unwind(AssertUnwindSafe(|| self.gpu_info(index))) {
                Ok(Ok(g)) => gpus.push(g),
                Ok(Err(e)) => notes.push(format!("GPU {index}: NVML cannot describe it: {e}")),
                Err(_) => notes.push(format!("GPU {index}: the NVML wrapper panicked")),
            }
        }
        Ok((gpus, notes))
    }

    /// Whether GPU `index` has NVML's total energy counter (Volta and
    /// later), asked as a job's meter first asks it; `Err` when NVML cannot
    /// say (the text names why).
    pub fn has_energy_counter(&self, index: u32) -> Result<bool, String> {
        let dev = self
            .nvml
            .device_by_index(index)
            .map_err(|e| e.to_string())?;
        match dev.total_energy_consumption() {
            Ok(_) => Ok(true),
            Err(NvmlError::NotSupported) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    fn gpu_info(&self, index: u32) -> Result<GpuInfo, NvmlError> {
        let dev = self.nvml.device_by_index(index)?;
        let uuid = dev.uuid()?;
        let mut mig_uuids = Vec::new();
        if dev.mig_mode().is_ok_and(|m| m.current == 1) {
            for j in 0..dev.mig_device_count().unwrap_or(0) {
                // Slots without an instance answer NotFound.
                if let Ok(m) = dev.mig_device_by_index(j).and_then(|m| m.uuid()) {
                    mig_uuids.push(m);
                }
            }
        }
        let pids = dev
            .running_compute_processes()
            .map(|ps| ps.into_iter().map(|p| p.pid).collect())
            .unwrap_or_default();
        Ok(GpuInfo {
            index,
            name: dev.name().unwrap_or_default(),
            uuid,
            minor: dev.minor_number().ok(),
            mig_uuids,
            pids,
        })
    }

    /// Starts metering `selection` now: probes each GPU for an energy counter
    /// and takes the first reading.
    pub fn meter(&self, selection: &Selection, now: Instant) -> NvmlMeter {
        let gpus = selection
            .gpus
            .iter()
            .map(|s| {
                let mut g = GpuMeter::new(s.uuid.clone(), s.index, s.share, now);
                g.sample(self.nvml, now);
                g
            })
            .collect();
        NvmlMeter {
            nvml: Some(self.nvml),
            gpus,
            module: Vec::new(),
            unavailable: None,
        }
    }
}

/// How a GPU is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Not yet known: the first reading failed.
    Unprobed,
    /// Total-energy counter, last value in mJ.
    Counter { last_mj: u64, at: Instant },
    /// One power reading per sample, last one.
    Power { at: Instant, watts: f64 },
    /// The driver's power samples: the newest one used (its timestamp in
    /// µs, its power), the newest one seen, and when new samples last came.
    Samples {
        last_us: u64,
        watts: f64,
        after_us: u64,
        seen: Instant,
        /// Reads in a row that found nothing new.
        silent: u32,
    },
}

impl Mode {
    /// Sample mode after a read that brought new samples at `now`.
    fn after_samples(run: &SampleRun, now: Instant) -> Mode {
        Mode::Samples {
            last_us: run.last.0,
            watts: run.last.1.0,
            after_us: run.after_us,
            seen: now,
            silent: 0,
        }
    }
}

/// What one read of a GPU gave.
enum Reading {
    Counter(u64),
    Power(f64),
    /// The driver's samples since the last one used, integrated.
    Samples(SampleRun),
    /// The driver has no sample newer than the last one used.
    NoNewSamples,
}

/// Driver power samples folded into energy: see [`integrate_samples`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRun {
    pub energy: Joules,
    /// The newest sample used: timestamp in µs, power.
    pub last: (u64, Watts),
    /// The newest timestamp seen, used or not: the next read asks for what
    /// came after it, so no sample is looked at twice.
    pub after_us: u64,
    /// Samples above any GPU's power, left out.
    pub implausible: u32,
    /// Gaps between samples longer than the time that passed, not counted.
    pub jumps: u32,
}

impl SampleRun {
    /// Nothing yet after `last`.
    pub fn at(last: (u64, Watts)) -> SampleRun {
        SampleRun {
            energy: Joules(0.0),
            last,
            after_us: last.0,
            implausible: 0,
            jumps: 0,
        }
    }
}

/// Integrates driver power samples newer than `run.after_us` into `run`
/// with the trapezoid rule, from `run.last` on. Older samples are skipped (a
/// read may overlap the previous one); implausible ones are left out, so the
/// next good sample bridges them; a gap over `max_gap_us` is a wall-clock
/// step, so the energy across it is not counted and the next sample starts
/// afresh.
pub fn integrate_samples(
    mut run: SampleRun,
    samples: impl IntoIterator<Item = PowerSample>,
    max_gap_us: u64,
) -> SampleRun {
    for s in samples {
        if s.at_us <= run.after_us {
            continue;
        }
        run.after_us = s.at_us;
        let watts = s.watts();
        if watts.0 > MAX_PLAUSIBLE_WATTS {
            run.implausible += 1;
            continue;
        }
        let (at, p0) = run.last;
        let gap = s.at_us - at;
        if gap > max_gap_us {
            run.jumps += 1;
        } else {
            run.energy += trapezoid(p0, watts, Duration::from_micros(gap));
        }
        run.last = (s.at_us, watts);
    }
    run
}

struct GpuMeter {
    uuid: String,
    index: u32,
    /// The handle, looked up at the first read that succeeds in getting it;
    /// valid for the life of the process, since NVML is never shut down.
    device: Option<Device<'static>>,
    /// Room for the driver's power samples, for a GPU read through them.
    buffer: Option<PowerSamples>,
    share: f64,
    mode: Mode,
    /// When metering began; a first reading later than this leaves a gap.
    opened: Instant,
    /// Energy of the whole GPU since the first reading.
    energy_j: f64,
    /// A first reading was taken, so `energy_j` means something.
    measured: bool,
    failures: u32,
    /// Why the GPU is no longer read, with when.
    stopped: Option<String>,
    /// Intervals whose energy was not counted, and why (the first few).
    gaps: Gaps,
}

/// A call that took longer than this is stamped with when it returned.
const LATE_CALL: Duration = Duration::from_secs(1);

/// Errors after which asking again is pointless.
/// A failed call as a status reason: short for the errors that end a GPU's
/// measurement (nvml-wrapper's own texts run past a status's length).
fn nvml_reason(e: &NvmlError) -> String {
    match e {
        NvmlError::GpuLost => "NVML: device fell off the bus (GPU lost)".to_string(),
        NvmlError::ResetRequired => "NVML: the GPU needs a reset".to_string(),
        e => format!("NVML: {e}"),
    }
}

fn is_fatal(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::GpuLost
            | NvmlError::ResetRequired
            | NvmlError::Uninitialized
            | NvmlError::DriverNotLoaded
            | NvmlError::LibRmVersionMismatch
            | NvmlError::LibloadingError(_)
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::FunctionNotFound
            | NvmlError::LibraryNotFound
    )
}

impl GpuMeter {
    /// A GPU not yet read: its mode is probed at the first sample.
    fn new(uuid: String, index: u32, share: f64, now: Instant) -> GpuMeter {
        GpuMeter {
            uuid,
            index,
            device: None,
            buffer: None,
            share,
            mode: Mode::Unprobed,
            opened: now,
            energy_j: 0.0,
            measured: false,
            failures: 0,
            stopped: None,
            gaps: Gaps::default(),
        }
    }

    fn read(&mut self, nvml: &'static Nvml, now: Instant) -> Result<Reading, NvmlError> {
        if self.device.is_none() {
            self.device = Some(nvml.device_by_index(self.index)?);
        }
        let Some(dev) = &self.device else {
            unreachable!("set just above")
        };
        match self.mode {
            Mode::Counter { .. } => dev.total_energy_consumption().map(Reading::Counter),
            Mode::Power { .. } => dev.power_usage().map(|mw| Reading::Power(mw_to_w(mw))),
            Mode::Samples {
                last_us,
                watts,
                after_us,
                seen,
                ..
            } => {
                let Some(buffer) = &mut self.buffer else {
                    unreachable!("a GPU in sample mode has its buffer")
                };
                let max_gap = now.saturating_duration_since(seen) + SAMPLE_GAP_SLACK;
                let max_gap_us = u64::try_from(max_gap.as_micros()).unwrap_or(u64::MAX);
                let mut run = SampleRun::at((last_us, Watts(watts)));
                run.after_us = after_us;
                for _ in 0..MAX_BUFFER_READS {
                    let new = match buffer.read(dev, run.after_us) {
                        Ok(new) => new,
                        Err(NvmlError::NotFound) => break,
                        Err(e) => return Err(e),
                    };
                    let full = new.filled_the_room();
                    run = integrate_samples(run, new, max_gap_us);
                    if !full {
                        break;
                    }
                }
                Ok(if run.after_us == after_us {
                    Reading::NoNewSamples
                } else {
                    Reading::Samples(run)
                })
            }
            Mode::Unprobed => match dev.total_energy_consumption() {
                Ok(mj) => Ok(Reading::Counter(mj)),
                Err(NvmlError::NotSupported) => match PowerSamples::for_device(dev) {
                    Ok(mut buffer) => {
                        let baseline = sample_baseline(dev, &mut buffer)?;
                        self.buffer = Some(buffer);
                        Ok(Reading::Samples(SampleRun::at(baseline)))
                    }
                    Err(_) => dev.power_usage().map(|mw| Reading::Power(mw_to_w(mw))),
                },
                Err(e) => Err(e),
            },
        }
    }

    fn sample(&mut self, nvml: &'static Nvml, now: Instant) {
        if self.stopped.is_some() {
            return;
        }
        let read = catch_unwind(AssertUnwindSafe(|| self.read(nvml, now)));
        // A call that came back late (a driver that stalled) read the GPU
        // when it returned, not when it was made.
        let returned = Instant::now();
        let now = if returned.saturating_duration_since(now) > LATE_CALL {
            returned
        } else {
            now
        };
        match read {
            Ok(Ok(r)) => self.fold(r, now),
            // The buffer failing is no reason to stop reading the GPU.
            Ok(Err(e)) if matches!(self.mode, Mode::Samples { .. }) && !is_fatal(&e) => {
                self.leave_samples(&format!("failed (NVML: {e})"), now)
            }
            Ok(Err(NvmlError::NotSupported)) if self.mode == Mode::Unprobed => self.stop(
                "this GPU reports neither an energy counter nor its power (NVML: not supported)"
                    .into(),
                now,
            ),
            Ok(Err(e)) => self.fail(nvml_reason(&e), is_fatal(&e), now),
            Err(_) => self.stop("the NVML wrapper panicked".into(), now),
        }
    }

    /// A failed read: the next good one bridges the gap, unless failures
    /// persist or cannot heal.
    fn fail(&mut self, why: String, fatal: bool, now: Instant) {
        self.failures += 1;
        if fatal || self.failures >= MAX_FAILURES {
            self.stop(why, now);
        }
    }

    fn fold(&mut self, r: Reading, now: Instant) {
        match (self.mode, r) {
            (Mode::Samples { seen, silent, .. }, Reading::NoNewSamples) => {
                let silent = silent + 1;
                if silent >= SILENT_READS
                    && now.saturating_duration_since(seen) > MAX_SAMPLE_SILENCE
                {
                    return self.leave_samples(&format!("stopped at {}", wall_time(seen)), now);
                }
                if let Mode::Samples { silent: s, .. } = &mut self.mode {
                    *s = silent;
                }
            }
            (Mode::Samples { .. }, Reading::Samples(run)) => {
                self.energy_j += run.energy.0;
                self.mode = Mode::after_samples(&run, now);
                if run.implausible > 0 {
                    self.gap(format!(
                        "{} implausible power samples left out before {}",
                        run.implausible,
                        wall_time(now)
                    ));
                }
                if run.jumps > 0 {
                    self.gap(format!(
                        "sample times jumped before {}, not counted",
                        wall_time(now)
                    ));
                }
            }
            (Mode::Counter { last_mj, at }, Reading::Counter(mj)) => {
                self.mode = Mode::Counter {
                    last_mj: mj,
                    at: now,
                };
                self.add_counter_delta(last_mj, mj, now.saturating_duration_since(at), now);
            }
            (Mode::Power { at, watts }, Reading::Power(w)) => {
                if w > MAX_PLAUSIBLE_WATTS {
                    // Keep the last good sample: the next one bridges the gap.
                    return self.fail(format!("NVML: implausible power {w} W"), false, now);
                }
                self.mode = Mode::Power { at: now, watts: w };
                let dt = now.saturating_duration_since(at);
                self.energy_j += trapezoid(Watts(watts), Watts(w), dt).0;
            }
            // The first reading: a baseline.
            (_, r) => {
                self.mode = match r {
                    Reading::Counter(mj) => Mode::Counter {
                        last_mj: mj,
                        at: now,
                    },
                    Reading::Power(w) => Mode::Power { at: now, watts: w },
                    Reading::Samples(run) => Mode::after_samples(&run, now),
                    // Only a GPU in sample mode reads the buffer again.
                    Reading::NoNewSamples => return,
                };
                if now > self.opened {
                    self.gap(format!("measured only from {} on", wall_time(now)));
                }
            }
        }
        self.failures = 0;
        self.measured = true;
    }

    /// The driver's power samples stopped or failed (`what` says which):
    /// read the GPU's power directly from now on. What it drew since the last
    /// sample used is unknown.
    fn leave_samples(&mut self, what: &str, now: Instant) {
        self.buffer = None;
        let reading = match &self.device {
            Some(dev) => catch_unwind(AssertUnwindSafe(|| dev.power_usage())),
            None => Ok(Err(NvmlError::Uninitialized)),
        };
        match reading {
            Ok(Ok(mw)) => {
                self.mode = Mode::Power {
                    at: now,
                    watts: mw_to_w(mw),
                };
                self.gap(format!(
                    "driver's samples {what}, not counted until {}",
                    wall_time(now)
                ));
            }
            Ok(Err(e)) => self.stop(
                format!("the driver's power samples {what}, and NVML: {e}"),
                now,
            ),
            Err(_) => self.stop("the NVML wrapper panicked".into(), now),
        }
    }

    fn add_counter_delta(&mut self, last_mj: u64, mj: u64, dt: Duration, now: Instant) {
        let Some(delta) = mj.checked_sub(last_mj) else {
            // The counter restarts when the driver reloads; what the GPU used
            // in this interval is unknown, so none of it is counted.
            return self.gap(format!(
                "counter went back at {}, an interval not counted",
                wall_time(now)
            ));
        };
        let joules = Joules::from_milli(delta);
        // A second of slack for clocks and scheduling.
        if joules.0 > MAX_PLAUSIBLE_WATTS * (dt.as_secs_f64() + 1.0) {
            return self.gap(format!(
                "counter jumped by {:.0} J at {}, not counted",
                joules.0,
                wall_time(now)
            ));
        }
        self.energy_j += joules.0;
    }

    fn gap(&mut self, why: String) {
        self.gaps.note(why);
    }

    fn stop(&mut self, why: String, now: Instant) {
        self.stopped = Some(stopped_at(&why, now));
    }

    fn entry(&self) -> DeviceEnergy {
        let mut problems = self.gaps.reasons();
        problems.extend(self.stopped.clone());
        if !self.measured {
            let why = self.stopped.as_deref().unwrap_or("no reading yet");
            return DeviceEnergy::unavailable(
                Component::Gpu,
                &self.uuid,
                fit_reasons(&[why.to_string()]),
            );
        }
        DeviceEnergy {
            component: Component::Gpu,
            device: self.uuid.clone(),
            share: self.share,
            energy: Some(Joules(self.energy_j) * self.share),
            status: if problems.is_empty() {
                Status::Ok
            } else {
                Status::Incomplete(fit_reasons(&problems))
            },
        }
    }
}

/// Where integrating a GPU's power samples starts: the newest plausible
/// sample the driver holds, or, while its buffer is still empty (a driver
/// just brought up for the job), a direct reading stamped with the wall
/// clock in µs, as the driver stamps its samples.
fn sample_baseline(
    dev: &Device<'static>,
    buffer: &mut PowerSamples,
) -> Result<(u64, Watts), NvmlError> {
    let newest = match buffer.read(dev, 0) {
        Ok(samples) => samples
            .filter(|s| s.watts().0 <= MAX_PLAUSIBLE_WATTS)
            .max_by_key(|s| s.at_us),
        Err(NvmlError::NotFound) => None,
        Err(e) => return Err(e),
    };
    if let Some(s) = newest {
        return Ok((s.at_us, s.watts()));
    }
    let watts = Watts(mw_to_w(dev.power_usage()?));
    let now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    Ok((now_us, watts))
}

fn mw_to_w(mw: u32) -> f64 {
    Watts::from_milli(mw).0
}

/// Energy between two power samples `dt` apart, the trapezoid rule.
pub fn trapezoid(p0: Watts, p1: Watts, dt: Duration) -> Joules {
    Watts((p0.0 + p1.0) / 2.0) * dt
}

/// Whether a GPU of this name is a module whose NVML energy counter covers
/// the whole module, Grace CPU and memory included: Grace Hopper, GH200
/// (zeus PR 172). NVML's power scope (`NVML_POWER_SCOPE_MODULE`) is asked of
/// power limits only and nvml-wrapper 0.13 reads no scope for the counter,
/// so the module is known by its name, e.g. "NVIDIA GH200 480GB".
pub fn is_gpu_module(name: &str) -> bool {
    name.to_ascii_uppercase().contains("GH200")
}

/// The job's GPUs, read at each sample.
pub struct NvmlMeter {
    nvml: Option<&'static Nvml>,
    gpus: Vec<GpuMeter>,
    /// The job's GPUs whose energy counter covers a whole module, Grace CPU
    /// included (GH200), by UUID.
    module: Vec<String>,
    /// Set when NVML could not be used at all.
    unavailable: Option<String>,
}

impl fmt::Debug for NvmlMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::new();
        self.totals(&mut v);
        f.debug_struct("NvmlMeter")
            .field("unavailable", &self.unavailable)
            .field("gpus", &v)
            .finish()
    }
}

impl NvmlMeter {
    /// A meter that reports, forever, that GPUs could not be measured.
    pub fn unavailable(reason: impl Into<String>) -> NvmlMeter {
        NvmlMeter {
            nvml: None,
            gpus: Vec::new(),
            module: Vec::new(),
            unavailable: Some(reason.into()),
        }
    }

    /// Everything for a job in one call, which cannot fail: opens NVML at
    /// `lib`, lists the GPUs, selects the job's and starts metering them.
    /// Returns lines for the log: how the GPUs were chosen, and why not.
    pub fn for_job(lib: &Path, hints: &GpuHints, now: Instant) -> (NvmlMeter, Vec<String>) {
        let opened = NvmlLib::open(lib).and_then(|l| l.inventory().map(|inv| (l, inv)));
        let (lib, (inventory, mut log)) = match opened {
            Ok(x) => x,
            Err(e) => return (NvmlMeter::unavailable(e.short()), vec![e.to_string()]),
        };
        let selection = select(hints, &inventory);
        log.extend(selection.notes.iter().cloned());
        let mut meter = lib.meter(&selection, now);
        for g in &meter.gpus {
            let name = inventory
                .iter()
                .find(|i| i.uuid == g.uuid)
                .map(|i| i.name.as_str());
            if name.is_some_and(is_gpu_module) && matches!(g.mode, Mode::Counter { .. }) {
                meter.module.push(g.uuid.clone());
            }
        }
        for g in &meter.gpus {
            let how = match g.mode {
                Mode::Counter { .. } => "energy counter",
                Mode::Power { .. } => "power readings",
                Mode::Samples { .. } => "the driver's power samples",
                Mode::Unprobed => g.stopped.as_deref().unwrap_or("no reading yet"),
            };
            log.push(format!(
                "{} (NVML {}), chosen by {}: {how}",
                g.uuid,
                g.index,
                selection.how.as_str()
            ));
        }
        (meter, log)
    }

    /// One meter per GPU, so that the sampler can give up on a GPU whose
    /// calls stopped returning and go on with the others.
    pub fn split(self) -> Vec<NvmlMeter> {
        if self.unavailable.is_some() || self.gpus.len() <= 1 {
            return vec![self];
        }
        let nvml = self.nvml;
        self.gpus
            .into_iter()
            .map(|g| NvmlMeter {
                nvml,
                gpus: vec![g],
                module: Vec::new(),
                unavailable: None,
            })
            .collect()
    }

    /// The job's GPUs whose energy counter covers the whole module, Grace
    /// CPU included: the CPU's energy is inside their figure.
    pub fn module_gpus(&self) -> &[String] {
        &self.module
    }

    /// Whether NVML could not be used at all (no GPU metered).
    pub fn unavailable_only(&self) -> bool {
        self.unavailable.is_some() && self.gpus.is_empty()
    }

    /// The GPUs being metered, by UUID.
    pub fn uuids(&self) -> impl Iterator<Item = &str> {
        self.gpus.iter().map(|g| g.uuid.as_str())
    }
}

impl Meter for NvmlMeter {
    fn sample(&mut self, now: Instant) {
        let Some(nvml) = self.nvml else { return };
        for g in &mut self.gpus {
            g.sample(nvml, now);
        }
    }

    fn totals(&self, out: &mut Vec<DeviceEnergy>) {
        if let Some(reason) = &self.unavailable {
            out.push(DeviceEnergy::unavailable(
                Component::Gpu,
                NVML_DEVICE,
                reason.clone(),
            ));
        }
        out.extend(self.gpus.iter().map(GpuMeter::entry));
    }

    fn energies(&self, out: &mut Vec<Option<Joules>>) {
        out.clear();
        if self.unavailable.is_some() {
            out.push(None);
        }
        out.extend(
            self.gpus
                .iter()
                .map(|g| g.measured.then(|| Joules(g.energy_j) * g.share)),
        );
    }

    fn bridges_gaps(&self) -> bool {
        self.gpus
            .iter()
            .all(|g| matches!(g.mode, Mode::Counter { .. }))
    }

    fn label(&self) -> String {
        match &self.gpus[..] {
            [g] => format!("GPU {}", g.index),
            _ => "NVML".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64, mw: u64) -> PowerSample {
        PowerSample {
            at_us: us,
            milliwatts: mw,
        }
    }

    #[test]
    fn driver_samples_integrate_with_the_trapezoid_rule() {
        let start = SampleRun::at((1_000_000, Watts(100.0)));
        // (samples, max gap µs) → (joules, last, implausible, jumps)
        type Case = (Vec<PowerSample>, u64, (f64, (u64, f64), u32, u32));
        let cases: Vec<Case> = vec![
            // nothing new: nothing counted, the last sample stays
            (vec![], 10_000_000, (0.0, (1_000_000, 100.0), 0, 0)),
            // 20 ms steps at constant 100 W: 100 W × 0.04 s
            (
                vec![at(1_020_000, 100_000), at(1_040_000, 100_000)],
                10_000_000,
                (4.0, (1_040_000, 100.0), 0, 0),
            ),
            // a ramp to 300 W over 1 s: the mean, 200 J
            (
                vec![at(2_000_000, 300_000)],
                10_000_000,
                (200.0, (2_000_000, 300.0), 0, 0),
            ),
            // samples the last read already used are skipped
            (
                vec![
                    at(900_000, 5_000),
                    at(1_000_000, 100_000),
                    at(1_500_000, 100_000),
                ],
                10_000_000,
                (50.0, (1_500_000, 100.0), 0, 0),
            ),
            // an implausible sample is left out and bridged
            (
                vec![at(1_500_000, 50_000_000_000), at(2_000_000, 100_000)],
                10_000_000,
                (100.0, (2_000_000, 100.0), 1, 0),
            ),
            // a gap longer than the time that passed is a clock step: not
            // counted, the next sample starts afresh
            (
                vec![at(3_601_000_000, 100_000), at(3_602_000_000, 300_000)],
                5_000_000,
                (200.0, (3_602_000_000, 300.0), 0, 1),
            ),
        ];
        for (samples, max_gap, (joules, (last_us, last_w), implausible, jumps)) in cases {
            let run = integrate_samples(start, samples.clone(), max_gap);
            assert!(
                (run.energy.0 - joules).abs() < 1e-9
                    && run.last == (last_us, Watts(last_w))
                    && (run.implausible, run.jumps) == (implausible, jumps),
                "{samples:?}: {run:?}, want {joules} J, last ({last_us}, {last_w}), \
                 {implausible} implausible, {jumps} jumps"
            );
        }
        // An implausible newest sample is left out once: the next read asks
        // for what came after it, and bridges from the last good one.
        let first = integrate_samples(start, [at(1_500_000, 99_000_000_000)], 10_000_000);
        assert_eq!(
            (first.implausible, first.after_us, first.last),
            (1, 1_500_000, start.last)
        );
        let next = integrate_samples(
            SampleRun {
                implausible: 0,
                ..first
            },
            [at(1_500_000, 99_000_000_000), at(2_000_000, 100_000)],
            10_000_000,
        );
        assert_eq!((next.implausible, next.energy), (0, Joules(100.0)));
        // Two reads in a row add up as one.
        let all = [at(1_500_000, 200_000), at(2_000_000, 100_000)];
        let once = integrate_samples(start, all, 10_000_000);
        let twice = integrate_samples(
            integrate_samples(start, all[..1].iter().copied(), 10_000_000),
            all[1..].iter().copied(),
            10_000_000,
        );
        assert_eq!(once, twice);
    }

    #[test]
    fn trapezoid_is_exact_for_linear_power() {
        // 100 W rising to 300 W over 2 s: a ramp's integral is its mean × time.
        let e = trapezoid(Watts(100.0), Watts(300.0), Duration::from_secs(2));
        assert_eq!(e, Joules(400.0));
    }

    /// A step load sampled every second: up and down steps at the same phase
    /// cancel, and each single step errs by at most ΔP × dt / 2.
    #[test]
    fn trapezoid_on_a_step_load_stays_within_half_a_step_per_step() {
        let power = |t: f64| if (t % 10.0) < 5.0 { 100.0 } else { 300.0 };
        // The exact integral, segment by segment.
        let truth = |t0: f64, t1: f64| {
            let mut e = 0.0;
            let mut t = t0;
            while t < t1 {
                let next = ((t / 5.0).floor() + 1.0) * 5.0;
                let end = next.min(t1);
                e += power(t) * (end - t);
                t = end;
            }
            e
        };
        for phase in [0.05, 0.3, 0.5, 0.77] {
            let dt = Duration::from_secs(1);
            let mut e = Joules::ZERO;
            let mut t = phase;
            let mut steps = 0;
            while t + 1.0 <= phase + 40.0 {
                e += trapezoid(Watts(power(t)), Watts(power(t + 1.0)), dt);
                if power(t) != power(t + 1.0) {
                    steps += 1;
                }
                t += 1.0;
            }
            let want = truth(phase, t);
            // 40 s over 8 steps, equal numbers up and down: they cancel.
            assert_eq!(steps, 8);
            assert!(
                (e.0 - want).abs() < 1e-6,
                "phase {phase}: {} vs {want}",
                e.0
            );
            // One step alone errs by no more than ΔP × dt / 2.
            let one = trapezoid(Watts(power(4.0 + phase)), Watts(power(5.0 + phase)), dt);
            assert!((one.0 - truth(4.0 + phase, 5.0 + phase)).abs() <= 100.0 + 1e-9);
        }
    }

    #[test]
    fn unavailable_meter_reports_one_reason() {
        let mut m = NvmlMeter::unavailable("no driver");
        m.sample(Instant::now());
        let mut out = Vec::new();
        m.totals(&mut out);
        assert_eq!(
            out,
            [DeviceEnergy::unavailable(
                Component::Gpu,
                NVML_DEVICE,
                "no driver"
            )]
        );
    }

    #[test]
    fn missing_library_is_unavailable_with_a_clear_reason() {
        let e = NvmlLib::open(Path::new("/nonexistent/libnvidia-ml.so.1")).unwrap_err();
        assert!(matches!(e, NvmlUnavailable::LibraryMissing { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("NVML library /nonexistent/libnvidia-ml.so.1 not found"),
            "{text}"
        );
    }

    fn counter_gpu() -> GpuMeter {
        GpuMeter::new("GPU-x".into(), 0, 0.5, Instant::now())
    }

    #[test]
    fn counter_deltas_skip_restarts_and_glitches() {
        let t = Instant::now();
        let mut g = counter_gpu();
        g.opened = t;
        g.fold(Reading::Counter(5_000_000), t);
        assert_eq!(g.entry().energy, Some(Joules(0.0)));
        g.fold(Reading::Counter(5_001_500), t);
        g.fold(Reading::Counter(200), t); // driver reload
        g.fold(Reading::Counter(700), t);
        let e = g.entry();
        // (1.5 J + 0.5 J) × share 0.5
        assert_eq!(e.energy, Some(Joules(1.0)));
        assert!(matches!(&e.status, Status::Incomplete(r) if r.contains("counter went back at")));
        g.fold(Reading::Counter(700 + 10_000_000_000_000), t);
        assert_eq!(g.entry().energy, Some(Joules(1.0)));
    }

    #[test]
    fn transient_failures_heal_persistent_ones_stop() {
        let t = Instant::now();
        let mut g = counter_gpu();
        g.opened = t;
        g.fold(Reading::Counter(0), t);
        g.fail("NVML: timeout".into(), false, t);
        g.fail("NVML: timeout".into(), false, t);
        // The next good reading covers the intervals that failed.
        g.fold(Reading::Counter(4_000), t + Duration::from_secs(3));
        assert_eq!(
            (g.entry().energy, g.entry().status),
            (Some(Joules(2.0)), Status::Ok)
        );
        for _ in 0..MAX_FAILURES {
            g.fail("NVML: an internal driver error occurred".into(), false, t);
        }
        let e = g.entry();
        assert_eq!(e.energy, Some(Joules(2.0)));
        assert!(
            matches!(&e.status, Status::Incomplete(r) if r.starts_with("NVML: an internal driver error occurred at ")),
            "{:?}",
            e.status
        );

        let mut lost = counter_gpu();
        lost.opened = t;
        lost.fold(Reading::Counter(0), t);
        lost.fail("NVML: device fell off the bus".into(), true, t);
        assert!(lost.stopped.is_some());
    }

    #[test]
    fn a_misbehaving_counter_does_not_grow_the_status_without_bound() {
        let t = Instant::now();
        let mut g = counter_gpu();
        g.opened = t;
        for k in 0..50u64 {
            g.fold(Reading::Counter(1_000_000 - k), t);
        }
        let Status::Incomplete(why) = g.entry().status else {
            panic!("{:?}", g.entry().status)
        };
        // As many gaps as fit the status's 100 characters, then how many more.
        assert!(why.starts_with("counter went back at "), "{why}");
        assert!(why.ends_with(" more)"), "{why}");
        assert!(
            Status::Incomplete(why.clone()).to_string().len() <= crate::measure::MAX_STATUS,
            "{why}"
        );
    }

    #[test]
    fn a_gpu_never_read_is_unavailable_not_zero() {
        let mut g = counter_gpu();
        g.stop("NVML: device fell off the bus".into(), Instant::now());
        let e = g.entry();
        assert_eq!(e.energy, None);
        assert!(matches!(&e.status, Status::Unavailable(r) if r.starts_with("NVML: device fell")));
    }
}
