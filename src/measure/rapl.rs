//! CPU package and DRAM energy from RAPL counters in powercap sysfs.
//!
//! # What is read
//! Under the powercap root (`/sys/class/powercap`), every zone
//! `intel-rapl:N` named `package-P` (or `package-P-die-D` on multi-die
//! packages) and, inside it, the subzone `intel-rapl:N:M` named `dram`.
//! Recent kernels expose AMD Zen packages through the same `intel-rapl` tree
//! (package zones, no DRAM domain), so both vendors take this one path; the
//! older `amd_energy` hwmon driver is not read. Subzones `core` and `uncore`
//! are parts of the package and are skipped, as is `intel-rapl-mmio:*`, a
//! second interface to the same package counter. A `psys` zone (platform
//! energy) is mentioned in the open warnings but never added: it already
//! contains the packages.
//!
//! # Counters
//! `energy_uj` counts micro-joules and wraps to 0 after `max_energy_range_uj`
//! (the kernel derives that from the 32-bit hardware counter, so the real
//! modulus is one energy unit, 15–61 µJ, above it; we use `max + 1`, an error
//! of < 61 µJ per wrap). A wrap is recognised when a read is below the previous
//! one, which only works when less than one full range passes between reads:
//! [`open`] warns when the interval is too long for a zone at its maximum power,
//! and a zone's status turns `incomplete` when an actual gap between reads was.
//!
//! Since Linux 5.10 `energy_uj` is readable by root only, and slurmstepd may
//! run our thread under the user's euid later, so the files are opened once at
//! [`open`] and read with `pread` on the kept descriptor.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Components;
use crate::measure::cpuset::PackageShares;
use crate::measure::{Component, DeviceEnergy, Meter, Status, fit_reasons};
use crate::units::{Joules, Watts};

/// The power assumed for a zone that does not publish
/// `constraint_0_max_power_uw`: above the TDP of any current server package
/// (≈500 W), so warnings err on the cautious side.
pub const DEFAULT_MAX_POWER: Watts = Watts(1000.0);

/// How much above its maximum power a zone's apparent wrap may imply before it
/// is taken for a glitch (a counter reset, a torn read) instead of a wrap. A
/// real wrap implies the zone's real power; a counter stepping back a little
/// implies almost a whole range in one interval, thousands of watts.
/// A read that took longer than this is stamped with when it returned.
const LATE_READ: Duration = Duration::from_secs(1);

const WRAP_PLAUSIBILITY: f64 = 4.0;

/// Consecutive backward reads after which the counter is taken to have been
/// reset (a driver reload, a CPU brought back) and counting restarts there.
const BACKWARD_READS_FOR_RESET: u32 = 3;

/// A meter over the job's RAPL zones, plus the rows for what could not be read.
pub struct RaplMeter {
    zones: Vec<Zone>,
    unavailable: Vec<DeviceEnergy>,
    note: Option<String>,
}

/// What [`open`] found.
pub struct RaplOpen {
    pub meter: RaplMeter,
    /// Things the caller should log once: a too-long interval for a zone's
    /// wrap time, a `psys` zone that is not added, unknown zones skipped.
    pub warnings: Vec<String>,
}

struct Zone {
    component: Component,
    device: String,
    path: PathBuf,
    file: File,
    share: f64,
    /// Counter modulus minus one (`max_energy_range_uj`).
    max_range: u64,
    max_power: Watts,
    /// Time for the counter to go once round at `max_power`.
    wrap_time: Duration,
    prev: Option<(u64, Instant)>,
    /// Device energy since the first sample, before the share.
    energy_uj: u64,
    wraps: u64,
    longest_gap: Duration,
    backward_reads: u32,
    resets: u32,
    failing_reads: u32,
    /// Reads that failed before the first good one: the start is missing.
    failed_before_baseline: u32,
    last_failure: Option<ReadFailure>,
}

/// Why a read failed, kept without allocating on the sampler thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFailure {
    Io(io::ErrorKind),
    Garbage,
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFailure::Io(k) => write!(f, "{}", io::Error::from(*k)),
            ReadFailure::Garbage => f.write_str("not a number"),
        }
    }
}

/// Opens the RAPL zones of the packages where the job has a share.
///
/// Packages with share 0 are not the job's and are not opened. Whatever is
/// requested but cannot be read becomes an `unavailable` row with the reason
/// and the fix, never a zero.
/// A meter that reports, forever, that CPU and DRAM could not be measured.
pub fn unavailable(components: Components, reason: &str) -> RaplMeter {
    let mut unavailable = Vec::new();
    if components.cpu {
        unavailable.push(DeviceEnergy::unavailable(Component::Cpu, "package", reason));
    }
    if components.dram {
        unavailable.push(DeviceEnergy::unavailable(
            Component::Dram,
            "package",
            reason,
        ));
    }
    RaplMeter {
        zones: Vec::new(),
        unavailable,
        note: None,
    }
}

pub fn open(
    powercap_root: &Path,
    components: Components,
    shares: &PackageShares,
    interval: Duration,
) -> RaplOpen {
    let mut warnings = Vec::new();
    let mut meter = RaplMeter {
        zones: Vec::new(),
        unavailable: Vec::new(),
        note: shares.note().map(str::to_string),
    };
    if !components.cpu && !components.dram {
        return RaplOpen { meter, warnings };
    }
    let packages = discover(powercap_root, &mut warnings);
    if packages.is_empty() {
        warnings.push(format!(
            "no RAPL zones under {}: the CPU or VM exposes no RAPL, or the intel_rapl_msr \
             module is not loaded (`modprobe intel_rapl_msr`; AMD Zen needs a recent kernel)",
            powercap_root.display()
        ));
        meter.mark_unavailable(components, "rapl", "no RAPL zones", 0.0);
        return RaplOpen { meter, warnings };
    }
    // A package with job CPUs but no zone would silently count as nothing.
    for (p, share) in shares.job_packages() {
        if !packages.iter().any(|z| z.package == p) {
            warnings.push(format!(
                "no RAPL zone named package-{p} under {} although the job has CPUs there",
                powercap_root.display()
            ));
            meter.mark_unavailable(
                components,
                &format!("package-{p}"),
                "no RAPL zone for this package",
                share,
            );
        }
    }
    if packages.iter().all(|pkg| shares.share(pkg.package) <= 0.0) {
        // Every package at share 0 would silently report nothing at all.
        warnings.push(format!(
            "the job's CPU share is 0 on every package{}: nothing of the CPUs is charged to it",
            shares
                .detail()
                .or(shares.note())
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ));
        meter.mark_unavailable(
            components,
            "rapl",
            "the job's CPU share is 0 on every package",
            0.0,
        );
        return RaplOpen { meter, warnings };
    }
    for pkg in packages {
        let share = shares.share(pkg.package);
        if share <= 0.0 {
            continue;
        }
        if components.cpu {
            meter.add(
                Component::Cpu,
                &pkg.device,
                &pkg.dir,
                share,
                interval,
                &mut warnings,
            );
        }
        if components.dram {
            match &pkg.dram {
                Some(dir) => meter.add(
                    Component::Dram,
                    &pkg.device,
                    dir,
                    share,
                    interval,
                    &mut warnings,
                ),
                None => meter.unavailable.push(DeviceEnergy::unavailable(
                    Component::Dram,
                    &pkg.device,
                    "no DRAM RAPL zone (AMD and most desktop CPUs have none)",
                )),
            }
        }
    }
    RaplOpen { meter, warnings }
}

/// One RAPL counter as `carbontrack check` sees it: opened and read the way
/// a tracked job's meter opens it ([`Zone::open`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneProbe {
    pub component: Component,
    /// `package-N` (or `package-N-die-D`).
    pub device: String,
    /// Its `energy_uj`.
    pub path: PathBuf,
    /// `Err((short, long))` as a job's row and log would say it.
    pub readable: Result<(), (String, String)>,
}

/// Every package zone and its dram subzone under `powercap_root`, each
/// opened and read once by this process; plus the warnings a job would log.
pub fn probe(powercap_root: &Path) -> (Vec<ZoneProbe>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    for pkg in discover(powercap_root, &mut warnings) {
        let mut one = |component: Component, dir: &Path| {
            out.push(ZoneProbe {
                component,
                device: pkg.device.clone(),
                path: dir.join("energy_uj"),
                readable: Zone::open(component, &pkg.device, dir, 1.0).map(|_| ()),
            });
        };
        one(Component::Cpu, &pkg.dir);
        if let Some(d) = &pkg.dram {
            one(Component::Dram, d);
        }
    }
    (out, warnings)
}

/// A package zone found in the tree.
struct PackageDir {
    package: u32,
    die: u32,
    device: String,
    dir: PathBuf,
    dram: Option<PathBuf>,
}

/// Lists package zones (sorted by package, die) and their dram subzones.
fn discover(root: &Path, warnings: &mut Vec<String>) -> Vec<PackageDir> {
    let mut out = Vec::new();
    for dir in zone_dirs(root, 1) {
        let Some(name) = read_name(&dir) else {
            continue;
        };
        if name == "psys" {
            warnings.push(format!(
                "{}: psys (platform) zone present; not added, it already includes the packages",
                dir.display()
            ));
            continue;
        }
        let Some((package, die)) = parse_package_name(&name) else {
            warnings.push(format!(
                "{}: unknown RAPL zone `{name}` skipped",
                dir.display()
            ));
            continue;
        };
        let dram = zone_dirs(&dir, 2)
            .into_iter()
            .find(|sub| read_name(sub).as_deref() == Some("dram"));
        out.push(PackageDir {
            package,
            die,
            device: name,
            dir,
            dram,
        });
    }
    out.sort_by_key(|p| (p.package, p.die));
    out
}

/// Subdirectories named `intel-rapl:N` (depth 1) or `intel-rapl:N:M` (depth 2).
fn zone_dirs(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix("intel-rapl:").is_some_and(|rest| {
                    let parts: Vec<&str> = rest.split(':').collect();
                    parts.len() == depth
                        && parts
                            .iter()
                            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                })
            })
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn read_name(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("name"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// `package-P` → (P, 0); `package-P-die-D` → (P, D).
fn parse_package_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("package-")?;
    match rest.split_once("-die-") {
        Some((p, d)) => Some((p.parse().ok()?, d.parse().ok()?)),
        None => Some((rest.parse().ok()?, 0)),
    }
}

/// The short status reason for a counter file that cannot be opened or
/// read (the long one, [`unreadable_reason`], goes to the log).
pub fn unreadable_short(path: &Path, err: &io::Error) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match err.kind() {
        io::ErrorKind::PermissionDenied => format!("{name} readable by root only"),
        io::ErrorKind::NotFound => format!("{name} missing"),
        k => format!("{name} unreadable ({})", io::Error::from(k)),
    }
}

/// The status reason for a counter file that cannot be opened or read, with
/// the path and the fix: for the log.
pub fn unreadable_reason(path: &Path, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "{} is readable only by root (Linux >= 5.10): start carbontrack as root, or \
             `chmod o+r` it, or make it permanent with a udev rule such as \
             ACTION==\"add\", SUBSYSTEM==\"powercap\", RUN+=\"/bin/chmod o+r /sys%p/energy_uj\"",
            path.display()
        ),
        io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        _ => format!("cannot read {}: {err}", path.display()),
    }
}

impl RaplMeter {
    /// One `unavailable` row for each requested component of `device`.
    fn mark_unavailable(&mut self, components: Components, device: &str, why: &str, share: f64) {
        for (on, c) in [
            (components.cpu, Component::Cpu),
            (components.dram, Component::Dram),
        ] {
            if on {
                let mut row = DeviceEnergy::unavailable(c, device, why);
                row.share = share;
                self.unavailable.push(row);
            }
        }
    }

    fn add(
        &mut self,
        component: Component,
        device: &str,
        dir: &Path,
        share: f64,
        interval: Duration,
        warnings: &mut Vec<String>,
    ) {
        match Zone::open(component, device, dir, share) {
            Ok(zone) => {
                if interval >= zone.wrap_time {
                    warnings.push(format!(
                        "{}: the interval {} is not shorter than the {:.0} s its counter takes \
                         to wrap at {} W: wraps may be missed; use a shorter interval",
                        zone.path.display(),
                        humantime::format_duration(interval),
                        zone.wrap_time.as_secs_f64(),
                        zone.max_power.0
                    ));
                }
                self.zones.push(zone);
            }
            Err((short, long)) => {
                warnings.push(format!("{device} {component}: {long}"));
                self.unavailable
                    .push(DeviceEnergy::unavailable(component, device, short));
            }
        }
    }

    /// Energy per zone before the share (for diagnostics and reports).
    pub fn device_energy(&self) -> impl Iterator<Item = (Component, &str, Joules)> + '_ {
        self.zones.iter().map(|z| {
            (
                z.component,
                z.device.as_str(),
                Joules::from_micro(z.energy_uj),
            )
        })
    }

    /// Counter wraps seen so far across all zones.
    pub fn wraps(&self) -> u64 {
        self.zones.iter().map(|z| z.wraps).sum()
    }

    /// Whether any zone of `component` could be opened.
    pub fn reads(&self, component: Component) -> bool {
        self.zones.iter().any(|z| z.component == component)
    }

    /// Takes the `unavailable` rows of `component` out, for a meter that
    /// stands in for it (the CPU estimate); returns their reasons.
    pub fn take_unavailable(&mut self, component: Component) -> Vec<String> {
        let (taken, kept) = std::mem::take(&mut self.unavailable)
            .into_iter()
            .partition(|d| d.component == component);
        self.unavailable = kept;
        taken
            .into_iter()
            .map(|d: DeviceEnergy| d.status.to_string())
            .collect()
    }
}

impl Zone {
    /// The zone, or why not: a short status reason and the long one for the log.
    fn open(
        component: Component,
        device: &str,
        dir: &Path,
        share: f64,
    ) -> Result<Zone, (String, String)> {
        let unreadable =
            |p: &Path, e: &io::Error| (unreadable_short(p, e), unreadable_reason(p, e));
        let path = dir.join("energy_uj");
        let file = File::open(&path).map_err(|e| unreadable(&path, &e))?;
        // sysfs checks permissions at open, but a plain file (or a directory)
        // may only fail at read: try one read now. A read that gives no number
        // is not final: something refilling the file (a fixture, an exporter
        // mimicking sysfs) can be caught between emptying and refilling it
        // when the node is loaded, and dropping the zone for that would leave
        // the job's whole CPU unknown (seen once in 600 soak jobs). The zone
        // is kept; its status counts the failed reads, or says every read
        // failed if none ever gives a number.
        match read_value(&file) {
            Ok(_) | Err(ReadFailure::Garbage) => {}
            Err(ReadFailure::Io(k)) => return Err(unreadable(&path, &io::Error::from(k))),
        }
        let range_path = dir.join("max_energy_range_uj");
        let max_range = std::fs::read_to_string(&range_path)
            .map_err(|e| unreadable(&range_path, &e))?
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&r| r > 0)
            .ok_or_else(|| {
                (
                    "max_energy_range_uj holds no positive number".to_string(),
                    format!("{} does not hold a positive number", range_path.display()),
                )
            })?;
        let max_power = std::fs::read_to_string(dir.join("constraint_0_max_power_uw"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&uw| uw > 0)
            .map_or(DEFAULT_MAX_POWER, |uw| Watts(uw as f64 * 1e-6));
        let wrap_time = Duration::from_secs_f64(max_range as f64 * 1e-6 / max_power.0);
        Ok(Zone {
            component,
            device: device.to_string(),
            path,
            file,
            share,
            max_range,
            max_power,
            wrap_time,
            prev: None,
            energy_uj: 0,
            wraps: 0,
            longest_gap: Duration::ZERO,
            backward_reads: 0,
            resets: 0,
            failing_reads: 0,
            failed_before_baseline: 0,
            last_failure: None,
        })
    }

    fn sample(&mut self, now: Instant) {
        let read = read_value(&self.file);
        // A read that came back late (a sick node's sysfs) is stamped with
        // when it returned, so the counter's wrap check sees the real gap.
        let returned = Instant::now();
        let now = if returned.saturating_duration_since(now) > LATE_READ {
            returned
        } else {
            now
        };
        let value = match read {
            Ok(v) => v,
            Err(e) => {
                self.failing_reads = self.failing_reads.saturating_add(1);
                if self.prev.is_none() {
                    self.failed_before_baseline = self.failed_before_baseline.saturating_add(1);
                }
                self.last_failure = Some(e);
                return;
            }
        };
        self.failing_reads = 0;
        let Some((prev, at)) = self.prev else {
            self.prev = Some((value, now));
            return;
        };
        let elapsed = now.saturating_duration_since(at);
        let delta = match counter_delta(prev, value, self.max_range, self.max_power, elapsed) {
            Delta::Forward(d) => d,
            Delta::Wrapped(d) => {
                self.wraps += 1;
                d
            }
            Delta::Backward => {
                // Keep the old reading: a glitch is forgotten once the counter
                // passes it again, and nothing is counted twice.
                self.backward_reads += 1;
                if self.backward_reads >= BACKWARD_READS_FOR_RESET {
                    self.resets += 1;
                    self.backward_reads = 0;
                    self.prev = Some((value, now));
                }
                return;
            }
        };
        self.energy_uj = self.energy_uj.saturating_add(delta);
        self.longest_gap = self.longest_gap.max(elapsed);
        self.backward_reads = 0;
        self.prev = Some((value, now));
    }

    fn status(&self, note: Option<&str>) -> Status {
        let mut why: Vec<String> = Vec::new();
        if self.prev.is_none() && self.failing_reads > 0 {
            let f = self.last_failure.map(|f| f.to_string()).unwrap_or_default();
            return Status::Unavailable(fit_reasons(&[format!("every read failed ({f})")]));
        }
        if self.failing_reads > 0 {
            let f = self.last_failure.map(|f| f.to_string()).unwrap_or_default();
            why.push(format!("last {} reads failed ({f})", self.failing_reads));
        }
        if self.failed_before_baseline > 0 {
            why.push(format!(
                "first {} reads failed",
                self.failed_before_baseline
            ));
        }
        if self.resets > 0 {
            why.push(format!("counter went back {} time(s)", self.resets));
        }
        if self.longest_gap >= self.wrap_time {
            why.push(format!(
                "reads up to {:.1} s apart, wrap time {:.1} s",
                self.longest_gap.as_secs_f64(),
                self.wrap_time.as_secs_f64()
            ));
        }
        if let Some(n) = note {
            why.push(n.to_string());
        }
        if why.is_empty() {
            Status::Ok
        } else {
            Status::Incomplete(fit_reasons(&why))
        }
    }
}

impl Meter for RaplMeter {
    fn sample(&mut self, now: Instant) {
        for z in &mut self.zones {
            z.sample(now);
        }
    }

    fn totals(&self, out: &mut Vec<DeviceEnergy>) {
        for z in &self.zones {
            let status = z.status(self.note.as_deref());
            let energy = match status {
                Status::Unavailable(_) => None,
                _ => Some(Joules::from_micro(z.energy_uj) * z.share),
            };
            out.push(DeviceEnergy {
                component: z.component,
                device: z.device.clone(),
                share: z.share,
                energy,
                status,
            });
        }
        out.extend(self.unavailable.iter().cloned());
    }

    fn energies(&self, out: &mut Vec<Option<Joules>>) {
        out.clear();
        // Which of these is unavailable is the rows' to say; the sampler
        // keeps both.
        out.extend(
            self.zones
                .iter()
                .map(|z| Some(Joules::from_micro(z.energy_uj) * z.share)),
        );
        out.extend(self.unavailable.iter().map(|u| u.energy));
    }

    fn label(&self) -> String {
        "RAPL".to_string()
    }

    fn bridges_gaps(&self) -> bool {
        // Counters; a pause longer than a zone's wrap time is said in that
        // zone's own status.
        true
    }
}

/// How a counter moved between two reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// Advanced by this many µJ.
    Forward(u64),
    /// Went round once and advanced by this many µJ in total.
    Wrapped(u64),
    /// Went back by more than a wrap at the zone's power can explain.
    Backward,
}

/// Energy between two counter reads `elapsed` apart.
///
/// The counter runs over `0..=max_range`. A read below the previous one is a
/// wrap if the energy that implies fits the zone's maximum power (with a wide
/// margin); otherwise the counter stepped back (a reset or a bad read).
pub fn counter_delta(
    prev: u64,
    now: u64,
    max_range: u64,
    max_power: Watts,
    elapsed: Duration,
) -> Delta {
    if now >= prev {
        return Delta::Forward(now - prev);
    }
    if prev > max_range {
        return Delta::Backward;
    }
    let wrapped = (max_range - prev) + now + 1;
    let plausible = max_power.0 * elapsed.as_secs_f64() * WRAP_PLAUSIBILITY * 1e6;
    if (wrapped as f64) <= plausible {
        Delta::Wrapped(wrapped)
    } else {
        Delta::Backward
    }
}

/// Pauses before reading again a counter that gave no number: 50 µs
/// doubling, about 25 ms in all. A writer preempted between emptying and
/// refilling the file (a loaded node) is away for a scheduler slice, a few
/// milliseconds; sysfs itself never needs a retry, so this costs nothing
/// where the counter is real.
const GARBAGE_RETRIES: u32 = 9;
const GARBAGE_FIRST_PAUSE: Duration = Duration::from_micros(50);

/// One read of the counter; only a read that gives no number is tried again.
///
/// sysfs builds each read of `energy_uj` from the hardware at once, so a
/// single read is a consistent value, and a real counter costs one `pread` a
/// sample. Something else writing the file (the test fixture, an exporter
/// that mimics sysfs) can be caught between emptying and refilling it; the
/// empty read is retried after a short pause, which sysfs never needs. A
/// wrong but well-formed number is left to [`counter_delta`]'s glitch logic.
fn read_value(file: &File) -> Result<u64, ReadFailure> {
    let mut pause = GARBAGE_FIRST_PAUSE;
    for _ in 0..GARBAGE_RETRIES {
        match read_counter(file) {
            Err(ReadFailure::Garbage) => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            other => return other,
        }
    }
    read_counter(file)
}

/// One `pread` at offset 0 into a stack buffer, parsed without allocating.
fn read_counter(file: &File) -> Result<u64, ReadFailure> {
    let mut buf = [0u8; 32];
    let n = file
        .read_at(&mut buf, 0)
        .map_err(|e| ReadFailure::Io(e.kind()))?;
    parse_counter(&buf[..n]).ok_or(ReadFailure::Garbage)
}

/// The leading decimal number of a sysfs value (`"123456\n"`).
fn parse_counter(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    if bytes.get(digits).is_some_and(|b| !b.is_ascii_whitespace()) {
        return None;
    }
    bytes[..digits].iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysfs_numbers() {
        let table: &[(&[u8], Option<u64>)] = &[
            (b"123456\n", Some(123456)),
            (b"0\n", Some(0)),
            (b"42", Some(42)),
            // A shorter value written over a longer one before the file is
            // truncated: the first line is the value.
            (b"12\n3456\n", Some(12)),
            (b"", None),
            (b"\n", None),
            (b"-1\n", None),
            (b"12x\n", None),
            (b"99999999999999999999999\n", None),
        ];
        for &(bytes, want) in table {
            assert_eq!(
                parse_counter(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn deltas_across_wraps() {
        let p = Watts(100.0);
        let s = Duration::from_secs(1);
        let table = [
            // prev, now, max_range, elapsed, expected
            (10, 30, 1000, s, Delta::Forward(20)),
            (10, 10, 1000, s, Delta::Forward(0)),
            // 990 → 1000 is 10, 1000 → 0 is 1 step, 0 → 5 is 5.
            (990, 5, 1000, s, Delta::Wrapped(16)),
            (1000, 0, 1000, s, Delta::Wrapped(1)),
            // A real range of 262 kJ: stepping back 1 J is not a wrap at 100 W.
            (
                262_000_000_000,
                261_999_000_000,
                262_143_999_999,
                s,
                Delta::Backward,
            ),
            // The same wrap is plausible after an hour.
            (
                262_000_000_000,
                1_000_000,
                262_143_999_999,
                Duration::from_secs(3600),
                Delta::Wrapped(145_000_000),
            ),
            // A value beyond the range is no wrap either.
            (2000, 5, 1000, s, Delta::Backward),
        ];
        for (prev, now, max, el, want) in table {
            assert_eq!(
                counter_delta(prev, now, max, p, el),
                want,
                "{prev} → {now} of {max}"
            );
        }
    }

    #[test]
    fn permission_denied_names_the_fix() {
        let path = Path::new("/sys/class/powercap/intel-rapl:0/energy_uj");
        let msg = unreadable_reason(path, &io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(msg.contains("intel-rapl:0/energy_uj"), "{msg}");
        assert!(
            msg.contains("root") && msg.contains("chmod o+r") && msg.contains("udev"),
            "{msg}"
        );
        let msg = unreadable_reason(path, &io::Error::from(io::ErrorKind::NotFound));
        assert!(msg.ends_with("does not exist"), "{msg}");
    }

    /// A counter that gives no number when the zone is opened (its writer
    /// caught between emptying and refilling it) keeps its zone: the job's
    /// CPU is measured from the first good read. One that never gives a
    /// number is unavailable, said so, never 0.
    #[test]
    fn a_counter_empty_at_open_keeps_its_zone() {
        let dir = std::env::temp_dir().join(format!("ct-rapl-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("max_energy_range_uj"), "262143328850\n").unwrap();
        std::fs::write(dir.join("energy_uj"), "").unwrap();
        let mut zone = Zone::open(Component::Cpu, "package-0", &dir, 1.0)
            .expect("an empty counter at open is not final");
        let t0 = Instant::now();
        std::fs::write(dir.join("energy_uj"), "1000000\n").unwrap();
        zone.sample(t0);
        std::fs::write(dir.join("energy_uj"), "3500000\n").unwrap();
        zone.sample(t0 + Duration::from_secs(1));
        assert_eq!(zone.energy_uj, 2_500_000);
        assert_eq!(zone.status(None), Status::Ok);

        std::fs::write(dir.join("energy_uj"), "abc\n").unwrap();
        let mut zone = Zone::open(Component::Cpu, "package-0", &dir, 1.0).unwrap();
        zone.sample(t0);
        zone.sample(t0 + Duration::from_secs(1));
        match zone.status(None) {
            Status::Unavailable(why) => assert!(why.contains("not a number"), "{why}"),
            other => panic!("a counter that never gives a number: {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn package_names() {
        assert_eq!(parse_package_name("package-0"), Some((0, 0)));
        assert_eq!(parse_package_name("package-3-die-1"), Some((3, 1)));
        for bad in ["psys", "dram", "package-", "package-x", "package-1-die-"] {
            assert_eq!(parse_package_name(bad), None, "{bad}");
        }
    }
}
