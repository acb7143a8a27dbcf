//! AMD Instinct GPUs through AMD SMI (`libamd_smi.so`): a [`Meter`] beside
//! NVML's, for the job's AMD GPUs.
//!
//! Per GPU the energy accumulator comes first (`amdsmi_get_energy_count`:
//! accumulator × resolution = µJ): differences of a counter lose nothing
//! between samples. A counter that goes back while its last value fits 32
//! bits is taken as a 32-bit counter that wrapped (the SMU's counters are
//! 32-bit on some parts, carried in the API's 64); any other step back is a
//! reset, not counted. Without a counter, `average_socket_power` (W) is
//! integrated with the trapezoid rule, as for power-only NVIDIA GPUs.
//!
//! **Packages.** An MI250X is one package of two GCDs, each its own device
//! to Slurm and AMD SMI. AMD SMI reports the package's socket power, and its
//! energy, on one GCD; the other reads 0 W (CodeCarbon issues 445 and 1097).
//! So the GCDs of a package (those with the same board serial) are read
//! together, and in an interval where one reads energy and another reads
//! none, the package's energy is split evenly among its GCDs: a job holding
//! both gets the package once, a job holding one gets half, whichever GCD it
//! is. Where every GCD reads energy of its own (parts that report per GCD,
//! MI300X partitions), each keeps its own. A GCD that reads nothing while no
//! GCD of its package does, and is busy (`gfx_activity` > 0), is
//! `incomplete: reads 0 W while busy`, never 0.
//!
//! A failing library makes the GPUs `unavailable` with one reason; a GPU
//! that starts failing keeps what was measured and becomes `incomplete`, as
//! for NVML. A library that is simply not there yields no meter at all: most
//! nodes have no AMD GPU.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::amd_gpus::{AmdGpuHints, AmdGpuInfo, select};
use super::{Component, DeviceEnergy, Gaps, Meter, Status, fit_reasons, stopped_at, wall_time};
use crate::ffi::amdsmi::{AmdSmi, AmdSmiError, AmdSmiOpenError, Processor};
use crate::measure::nvml::{MAX_FAILURES, trapezoid};
use crate::units::{Joules, Watts};

/// The `device` of the one row when AMD SMI itself failed.
pub const AMDSMI_DEVICE: &str = "amdsmi";

/// More than any package draws: a step beyond it is a glitch, not energy.
const MAX_PLAUSIBLE_WATTS: f64 = 10_000.0;
/// Where the kernel lists render nodes, for libraries without
/// `amdsmi_get_gpu_enumeration_info`.
const DRM_CLASS: &str = "/sys/class/drm";

/// The library, opened once per path and process and never shut down.
static LOADED: Mutex<Vec<(std::path::PathBuf, &'static AmdSmi)>> = Mutex::new(Vec::new());

fn open_lib(path: &Path) -> Result<&'static AmdSmi, AmdSmiOpenError> {
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&(_, l)) = loaded.iter().find(|(p, _)| p == path) {
        return Ok(l);
    }
    let lib: &'static AmdSmi = Box::leak(Box::new(AmdSmi::open(path)?));
    loaded.push((path.to_path_buf(), lib));
    Ok(lib)
}

/// What a node's AMD SMI offers, as `carbontrack check` reports it: the
/// library opened the way a job's meter opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmdInventory {
    /// GPUs (GCDs, partitions) the library lists.
    pub gpus: usize,
    /// Boards they sit on (an MI250X holds two GCDs).
    pub packages: usize,
    /// GPUs whose energy accumulator answers.
    pub with_counter: usize,
}

/// Opens AMD SMI at `lib` and lists its GPUs and which have an energy
/// counter.
pub fn inventory(lib: &Path) -> Result<AmdInventory, AmdSmiOpenError> {
    let smi = open_lib(lib)?;
    let procs = smi.processors().map_err(|error| AmdSmiOpenError::List {
        path: lib.display().to_string(),
        error,
    })?;
    let infos: Vec<AmdGpuInfo> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| describe(i as u32, p))
        .collect();
    let mut packages: Vec<&str> = infos.iter().map(|g| g.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    Ok(AmdInventory {
        gpus: procs.len(),
        packages: packages.len(),
        with_counter: procs.iter().filter(|p| p.energy_count().is_ok()).count(),
    })
}

/// How a GCD is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Unprobed,
    Counter { last: u64, resolution_uj: f64 },
    Power { watts: f64 },
}

struct Gcd {
    info: AmdGpuInfo,
    processor: Processor,
    in_job: bool,
    mode: Mode,
    at: Option<Instant>,
    opened: Instant,
    /// Energy this GCD itself read since the first reading (what its job is
    /// charged: [`Package::attributed`]).
    energy_j: f64,
    measured: bool,
    failures: u32,
    stopped: Option<String>,
    gaps: Gaps,
    /// Read nothing while busy, with no GCD of the package reading energy.
    zero_busy: Option<String>,
}

/// Energy between two accumulator readings, or why none is counted.
pub fn counter_delta(
    last: u64,
    now: u64,
    resolution_uj: f64,
    dt: Duration,
) -> Result<Joules, String> {
    let ticks = match now.checked_sub(last) {
        Some(d) => d,
        None if last <= u64::from(u32::MAX) => (u64::from(u32::MAX) - last) + now + 1,
        None => return Err("counter went back".into()),
    };
    let j = ticks as f64 * resolution_uj / 1e6;
    if j > MAX_PLAUSIBLE_WATTS * (dt.as_secs_f64() + 1.0) {
        return Err(format!("counter jumped by {j:.0} J"));
    }
    Ok(Joules(j))
}

impl Gcd {
    /// One reading: the energy since the last one (None for the first).
    fn read(&mut self, now: Instant) -> Result<Option<f64>, AmdSmiError> {
        let dt = self.at.map(|a| now.saturating_duration_since(a));
        match self.mode {
            Mode::Unprobed => match self.processor.energy_count() {
                Ok(c) => {
                    self.mode = Mode::Counter {
                        last: c.accumulator,
                        resolution_uj: f64::from(c.resolution_uj),
                    };
                    Ok(None)
                }
                Err(AmdSmiError::NotSupported | AmdSmiError::NoSymbol) => {
                    let w = self.processor.average_power()?;
                    self.mode = Mode::Power {
                        watts: f64::from(w),
                    };
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            Mode::Counter {
                last,
                resolution_uj,
            } => {
                let c = self.processor.energy_count()?;
                self.mode = Mode::Counter {
                    last: c.accumulator,
                    resolution_uj: f64::from(c.resolution_uj),
                };
                match counter_delta(last, c.accumulator, resolution_uj, dt.unwrap_or_default()) {
                    Ok(j) => Ok(Some(j.0)),
                    Err(why) => {
                        self.gap(format!(
                            "{why} at {}, an interval not counted",
                            wall_time(now)
                        ));
                        Ok(Some(0.0))
                    }
                }
            }
            Mode::Power { watts } => {
                let w = f64::from(self.processor.average_power()?);
                if w > MAX_PLAUSIBLE_WATTS {
                    return Err(AmdSmiError::Implausible);
                }
                self.mode = Mode::Power { watts: w };
                Ok(Some(
                    trapezoid(Watts(watts), Watts(w), dt.unwrap_or_default()).0,
                ))
            }
        }
    }

    fn gap(&mut self, why: String) {
        self.gaps.note(why);
    }

    fn stop(&mut self, why: String, now: Instant) {
        self.stopped = Some(stopped_at(&why, now));
    }

    fn fail(&mut self, e: AmdSmiError, now: Instant) {
        self.failures += 1;
        let fatal = matches!(e, AmdSmiError::NotFound | AmdSmiError::NotInitialised);
        if fatal || self.failures >= MAX_FAILURES {
            self.stop(format!("AMD SMI: {e}"), now);
        }
    }

    /// The row of this GCD, `energy` attributed to it ([`Package::attributed`]).
    fn entry(&self, energy: f64) -> DeviceEnergy {
        let mut problems = self.gaps.reasons();
        problems.extend(self.zero_busy.clone());
        problems.extend(self.stopped.clone());
        if !self.measured {
            let why = self.stopped.as_deref().unwrap_or("no reading yet");
            return DeviceEnergy::unavailable(
                Component::Gpu,
                &self.info.id,
                fit_reasons(&[why.into()]),
            );
        }
        DeviceEnergy {
            component: Component::Gpu,
            device: self.info.id.clone(),
            share: 1.0,
            energy: Some(Joules(energy)),
            status: if problems.is_empty() {
                Status::Ok
            } else {
                Status::Incomplete(fit_reasons(&problems))
            },
        }
    }
}

/// The GCDs of one package, read together.
struct Package {
    serial: String,
    gcds: Vec<Gcd>,
    /// This sample's readings, one per GCD: kept to sample without
    /// allocating.
    deltas: Vec<Option<f64>>,
}

impl Package {
    fn sample(&mut self, now: Instant) {
        let deltas = &mut self.deltas;
        deltas.clear();
        for g in &mut self.gcds {
            if g.stopped.is_some() {
                deltas.push(None);
                continue;
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.read(now)));
            let returned = Instant::now();
            let at = if returned.saturating_duration_since(now) > Duration::from_secs(1) {
                returned
            } else {
                now
            };
            match r {
                Ok(Ok(d)) => {
                    if g.at.is_none() && at > g.opened + Duration::from_secs(1) {
                        g.gap(format!("measured only from {} on", wall_time(at)));
                    }
                    g.at = Some(at);
                    g.failures = 0;
                    g.measured = true;
                    deltas.push(d);
                }
                Ok(Err(e)) => {
                    g.fail(e, at);
                    deltas.push(None);
                }
                Err(_) => {
                    g.stop("AMD SMI panicked".into(), at);
                    deltas.push(None);
                }
            }
        }
        let sum: f64 = deltas.iter().flatten().sum();
        for (g, d) in self.gcds.iter_mut().zip(deltas.iter()) {
            let Some(d) = *d else { continue };
            g.energy_j += d;
            if d == 0.0 && sum == 0.0 && g.in_job && g.zero_busy.is_none() {
                let busy = g.processor.gfx_activity().is_ok_and(|a| a > 0);
                if busy {
                    g.zero_busy = Some(format!("reads 0 W while busy (from {})", wall_time(now)));
                }
            }
        }
    }
}

impl Package {
    /// Whether the package's figure comes through one GCD: an MI250X's two
    /// GCDs, one of which has read exactly nothing all along while the other
    /// read energy (CodeCarbon issues 445 and 1097, peer-notes.md). Decided
    /// from the whole run, not a sample: a GCD that ever reads energy
    /// reports its own, and an idle one's own figure is never handed to its
    /// neighbour's job.
    fn reports_on_one(&self) -> bool {
        let [a, b] = &self.gcds[..] else {
            return false;
        };
        a.measured && b.measured && ((a.energy_j > 0.0) != (b.energy_j > 0.0))
    }

    /// A GCD's energy as attributed: its own, or half the package's when the
    /// package reports on one GCD (a job with both gets it once, with one
    /// gets half).
    fn attributed(&self, g: &Gcd) -> f64 {
        if self.reports_on_one() {
            self.gcds.iter().map(|g| g.energy_j).sum::<f64>() / 2.0
        } else {
            g.energy_j
        }
    }
}

/// The job's AMD GPUs, package by package.
pub struct AmdSmiMeter {
    packages: Vec<Package>,
    unavailable: Option<String>,
}

impl std::fmt::Debug for AmdSmiMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = Vec::new();
        self.totals(&mut v);
        f.debug_struct("AmdSmiMeter")
            .field("unavailable", &self.unavailable)
            .field("gpus", &v)
            .finish()
    }
}

/// The render minor of the DRM node whose device is at PCI address `bdf`,
/// from `root` (`/sys/class/drm`): `renderD*/device` links to the PCI
/// device's directory, named `dddd:bb:dd.f`.
pub fn render_minor_from_sysfs(root: &Path, bdf: u64) -> Option<u32> {
    let want = format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        bdf >> 32,
        (bdf >> 8) & 0xff,
        (bdf >> 3) & 0x1f,
        bdf & 0x7
    );
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let name = e.file_name();
        let Some(minor) = name.to_str().and_then(|n| n.strip_prefix("renderD")) else {
            continue;
        };
        let Ok(minor) = minor.parse::<u32>() else {
            continue;
        };
        let target = std::fs::read_link(e.path().join("device")).ok();
        if target
            .as_deref()
            .and_then(Path::file_name)
            .is_some_and(|f| f.to_string_lossy().eq_ignore_ascii_case(&want))
        {
            return Some(minor);
        }
    }
    None
}

fn describe(index: u32, p: &Processor) -> AmdGpuInfo {
    let serial = p.board_serial().ok();
    let bdf = p.bdf().ok();
    let id = match (p.uuid(), &serial) {
        (Ok(u), _) => u,
        (Err(_), Some(s)) => format!("{s}-{index}"),
        (Err(_), None) => format!("amd-gpu-{index}"),
    };
    let render_minor = p
        .render_minor()
        .ok()
        .or_else(|| bdf.and_then(|b| render_minor_from_sysfs(Path::new(DRM_CLASS), b)));
    AmdGpuInfo {
        index,
        package: serial.unwrap_or_else(|| id.clone()),
        id,
        render_minor,
        bdf,
    }
}

impl AmdSmiMeter {
    /// A meter that reports, forever, that AMD GPUs could not be measured.
    pub fn unavailable(reason: impl Into<String>) -> AmdSmiMeter {
        AmdSmiMeter {
            packages: Vec::new(),
            unavailable: Some(reason.into()),
        }
    }

    /// Opens AMD SMI at `lib`, lists the GPUs, selects the job's and starts
    /// metering their packages. `None` when the library is not there (no
    /// AMD GPU on this node); lines for the log either way.
    pub fn for_job(
        lib: &Path,
        hints: &AmdGpuHints,
        now: Instant,
    ) -> (Option<AmdSmiMeter>, Vec<String>) {
        let smi = match open_lib(lib) {
            Ok(s) => s,
            Err(e @ AmdSmiOpenError::Missing { .. }) => return (None, vec![e.to_string()]),
            Err(e) => {
                let short = match &e {
                    AmdSmiOpenError::NotAmdSmi { .. } => "not a usable AMD SMI library".to_string(),
                    AmdSmiOpenError::Init { error, .. } => format!("AMD SMI init failed: {error}"),
                    AmdSmiOpenError::List { error, .. } => format!("AMD SMI failed: {error}"),
                    AmdSmiOpenError::Missing { .. } => unreachable!("handled above"),
                };
                return (Some(AmdSmiMeter::unavailable(short)), vec![e.to_string()]);
            }
        };
        let procs = match smi.processors() {
            Ok(p) => p,
            Err(e) => {
                let why = format!("AMD SMI cannot list GPUs: {e}");
                return (Some(AmdSmiMeter::unavailable(why.clone())), vec![why]);
            }
        };
        if procs.is_empty() {
            return (
                None,
                vec![format!("AMD SMI ({}) lists no GPU", lib.display())],
            );
        }
        let inventory: Vec<AmdGpuInfo> = procs
            .iter()
            .enumerate()
            .map(|(i, p)| describe(i as u32, p))
            .collect();
        let (selection, unidentified) = select(hints, &inventory);
        let mut log = selection.notes.clone();
        let mut packages: Vec<Package> = Vec::new();
        for s in &selection.gpus {
            let g = &inventory[s.index as usize];
            if packages.iter().any(|p| p.serial == g.package) {
                continue;
            }
            let gcds: Vec<Gcd> = inventory
                .iter()
                .filter(|o| o.package == g.package)
                .map(|o| Gcd {
                    info: o.clone(),
                    processor: procs[o.index as usize],
                    in_job: selection.gpus.iter().any(|s| s.index == o.index),
                    mode: Mode::Unprobed,
                    at: None,
                    opened: now,
                    energy_j: 0.0,
                    measured: false,
                    failures: 0,
                    stopped: None,
                    gaps: Gaps::default(),
                    zero_busy: None,
                })
                .collect();
            let mut p = Package {
                serial: g.package.clone(),
                deltas: Vec::with_capacity(gcds.len()),
                gcds,
            };
            p.sample(now);
            let held = p.gcds.iter().filter(|g| g.in_job).count();
            if p.gcds.len() > 1 {
                log.push(format!(
                    "AMD package {}: {} GCDs, the job holds {held}; where one of two GCDs \
                     reports the package's figure (the other reading nothing all along) it \
                     is split evenly between them",
                    p.serial,
                    p.gcds.len()
                ));
            }
            for g in p.gcds.iter().filter(|g| g.in_job) {
                let how = match g.mode {
                    Mode::Counter { .. } => "energy counter".to_string(),
                    Mode::Power { .. } => "average socket power".to_string(),
                    Mode::Unprobed => g.stopped.clone().unwrap_or_else(|| "no reading yet".into()),
                };
                log.push(format!(
                    "{} (AMD SMI {}, renderD{}), chosen by {}: {how}",
                    g.info.id,
                    g.info.index,
                    g.info.render_minor.map_or("?".into(), |m| m.to_string()),
                    selection.how.as_str()
                ));
            }
            packages.push(p);
        }
        // GPUs Slurm gave the job that no AMD GPU here answers to: their
        // energy is unknown, and the total says so.
        let unavailable = (!unidentified.is_empty()).then(|| {
            let list: Vec<String> = unidentified.iter().map(u32::to_string).collect();
            fit_reasons(&[format!(
                "Slurm GPU {} not identified among AMD SMI's GPUs",
                list.join(",")
            )])
        });
        (
            Some(AmdSmiMeter {
                packages,
                unavailable,
            }),
            log,
        )
    }

    /// One meter per package, so the sampler can give up on one whose calls
    /// stopped returning and go on with the others.
    pub fn split(self) -> Vec<AmdSmiMeter> {
        if self.unavailable.is_some() || self.packages.len() <= 1 {
            return vec![self];
        }
        self.packages
            .into_iter()
            .map(|p| AmdSmiMeter {
                packages: vec![p],
                unavailable: None,
            })
            .collect()
    }

    /// Whether any of the job's GPUs is metered.
    pub fn has_gpus(&self) -> bool {
        self.packages
            .iter()
            .any(|p| p.gcds.iter().any(|g| g.in_job))
    }
}

impl Meter for AmdSmiMeter {
    fn sample(&mut self, now: Instant) {
        for p in &mut self.packages {
            p.sample(now);
        }
    }

    fn totals(&self, out: &mut Vec<DeviceEnergy>) {
        if let Some(r) = &self.unavailable {
            out.push(DeviceEnergy::unavailable(
                Component::Gpu,
                AMDSMI_DEVICE,
                r.clone(),
            ));
        }
        for p in &self.packages {
            out.extend(
                p.gcds
                    .iter()
                    .filter(|g| g.in_job)
                    .map(|g| g.entry(p.attributed(g))),
            );
        }
    }

    fn energies(&self, out: &mut Vec<Option<Joules>>) {
        out.clear();
        if self.unavailable.is_some() {
            out.push(None);
        }
        for p in &self.packages {
            out.extend(
                p.gcds
                    .iter()
                    .filter(|g| g.in_job)
                    .map(|g| g.measured.then_some(Joules(p.attributed(g)))),
            );
        }
    }

    fn bridges_gaps(&self) -> bool {
        self.packages.iter().all(|p| {
            p.gcds
                .iter()
                .all(|g| matches!(g.mode, Mode::Counter { .. }))
        })
    }

    fn label(&self) -> String {
        match &self.packages[..] {
            [p] => match &p.gcds[..] {
                [g] => format!("AMD GPU {}", g.info.index),
                _ => format!("AMD package {}", p.serial),
            },
            _ => "AMD SMI".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_deltas_wrap_at_32_bits_and_refuse_resets() {
        let s = Duration::from_secs(1);
        // (last, now, resolution µJ) → joules or an error
        let cases: Vec<(u64, u64, f64, Option<f64>)> = vec![
            (1_000, 11_000, 15.3, Some(0.153)),
            // a 32-bit counter wrapped: 10 ticks to the top, 10 after it
            (u64::from(u32::MAX) - 9, 10, 1e5, Some(2.0)),
            // a 64-bit counter going back: a reset, not counted
            (1 << 40, 5, 1.0, None),
            // more than any package draws in the interval
            (0, 1 << 40, 1.0, None),
        ];
        for (last, now, res, want) in cases {
            let got = counter_delta(last, now, res, s).ok().map(|j| j.0);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{last} → {now}: {g} vs {w}"),
                (g, w) => assert_eq!(g, w, "{last} → {now}"),
            }
        }
    }

    #[test]
    fn render_minor_found_through_sysfs_links() {
        let dir = std::env::temp_dir().join(format!("ct-drm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (minor, pci) in [(128, "0000:c1:00.0"), (129, "0000:c9:00.0")] {
            let node = dir.join(format!("renderD{minor}"));
            std::fs::create_dir_all(&node).unwrap();
            std::os::unix::fs::symlink(
                format!("../../../devices/pci0000:c0/{pci}"),
                node.join("device"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(dir.join("card0")).unwrap();
        assert_eq!(render_minor_from_sysfs(&dir, 0xc9 << 8), Some(129));
        assert_eq!(render_minor_from_sysfs(&dir, 0xc1 << 8), Some(128));
        assert_eq!(render_minor_from_sysfs(&dir, 0xd1 << 8), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unavailable_meter_reports_one_reason() {
        let m = AmdSmiMeter::unavailable("AMD SMI init failed: status 18");
        let mut out = Vec::new();
        m.totals(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].device, AMDSMI_DEVICE);
        assert_eq!(out[0].energy, None);
    }
}
