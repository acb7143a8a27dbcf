//! CPU energy estimated from the CPU's TDP and the job's own CPU time, for
//! nodes and commands where no RAPL counter can be read (VMs, clouds, CPUs
//! without RAPL). Opt-in (`cpu_tdp=W|auto`) and always labelled: its rows say
//! `estimated: …`, never `ok`.
//!
//! The model (peer-notes.md, "Devices and sources beyond…": CodeCarbon's
//! per-process estimate is TDP × (process CPU time / wall time) / n_cpus):
//!
//! ```text
//! energy = packages × TDP × cpu_seconds / cpus
//! ```
//!
//! that is, each logical CPU of the node is charged TDP/(CPUs per package)
//! while it runs the job, and nothing while it idles or runs someone else.
//! Its assumptions: power grows linearly with the busy CPUs and reaches TDP
//! with all of them busy; idle power is no one's; turbo above TDP, memory-
//! bound stalls and SIMD-heavy code are not told apart. It is a model: docs/
//! estimates.md gives its error against a measured figure.
//!
//! The job's CPU time comes from its cgroup's CPU accounting (cgroup v1
//! `cpuacct.usage`, v2 `cpu.stat` `usage_usec`) in a Slurm job, or from the
//! process tree below `carbontrack run`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Component, DeviceEnergy, Meter, Status, cut};
use crate::units::{Joules, Watts};

/// `cpu_tdp=`: the CPU's thermal design power per package, or `auto` to look
/// the model up in [`TDP_TABLE`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CpuTdp {
    Watts(Watts),
    Auto,
}

impl CpuTdp {
    /// Parses the key's value: a number of watts from 1 to 1000, or `auto`.
    pub fn parse(v: &str) -> Result<CpuTdp, String> {
        if v == "auto" {
            return Ok(CpuTdp::Auto);
        }
        let w: f64 = v
            .strip_suffix('W')
            .unwrap_or(v)
            .trim()
            .parse()
            .map_err(|_| format!("`{v}` is neither a number of watts nor auto"))?;
        if !(1.0..=1000.0).contains(&w) {
            return Err(format!("{w} W is out of range"));
        }
        Ok(CpuTdp::Watts(Watts(w)))
    }
}

/// TDP per package of CPU models, matched by a substring of `/proc/cpuinfo`'s
/// `model name`. Source: CodeCarbon's table of CPU TDPs
/// (github.com/mlco2/codecarbon, `codecarbon/data/hardware/cpu_power.csv`,
/// the makers' figures), of which only common HPC server parts are kept. A
/// model not here is not guessed (CodeCarbon assumes 85 W): set `cpu_tdp=W`.
pub const TDP_TABLE: &[(&str, f64)] = &[
    ("Xeon(R) Gold 6144 ", 150.0),
    ("Xeon(R) Gold 6154 ", 200.0),
    ("Xeon(R) Platinum 8180 ", 205.0),
    ("Xeon(R) Platinum 8260 ", 165.0),
    ("Xeon(R) Platinum 8268 ", 205.0),
    ("Xeon(R) Platinum 8280 ", 205.0),
    ("EPYC 7702 ", 200.0),
    ("EPYC 7742 ", 225.0),
    ("EPYC 7763 ", 280.0),
    ("EPYC 7H12 ", 280.0),
];

/// The TDP of a CPU model name, from [`TDP_TABLE`]. The name is matched with
/// a space after it, so `EPYC 7742` does not match `EPYC 77420`.
pub fn tdp_of_model(model: &str) -> Option<Watts> {
    let padded = format!("{} ", model.trim());
    TDP_TABLE
        .iter()
        .find(|(name, _)| padded.contains(name))
        .map(|&(_, w)| Watts(w))
}

/// The first `model name` of a `/proc/cpuinfo` text.
pub fn cpuinfo_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// The model's figure: energy for `cpu_time` of CPU on a node of `packages`
/// packages and `cpus` logical CPUs, at `tdp` per package. `None` for a node
/// of no CPUs.
pub fn estimate(tdp: Watts, cpu_time: Duration, packages: usize, cpus: usize) -> Option<Joules> {
    if cpus == 0 || packages == 0 {
        return None;
    }
    Some(Joules(
        packages as f64 * tdp.0 * cpu_time.as_secs_f64() / cpus as f64,
    ))
}

/// The mean fraction of the node's CPUs the job kept busy, the row's `share`.
pub fn busy_share(cpu_time: Duration, wall: Duration, cpus: usize) -> f64 {
    if cpus == 0 || wall.is_zero() {
        return 0.0;
    }
    cpu_time.as_secs_f64() / (wall.as_secs_f64() * cpus as f64)
}

/// The row's status: `estimated: TDP 150 W (<model>), CPU time`, within the
/// status limit whatever the model's name.
pub fn status_text(tdp: Watts, model: &str) -> String {
    let head = format!("TDP {} W (", tdp.0);
    let tail = "), CPU time";
    let room = super::MAX_STATUS - "estimated: ".len() - head.len() - tail.len();
    format!("{head}{}{tail}", cut(model, room))
}

/// Where the job's CPU time is read.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuTimeSource {
    /// A cgroup v1 `cpuacct.usage` file (nanoseconds).
    CpuacctUsage(PathBuf),
    /// A cgroup v2 `cpu.stat` file (`usage_usec`).
    CpuStat(PathBuf),
    /// A job cgroup without CPU accounting (cgroup v1, where Slurm makes the
    /// job's `cpuacct` cgroup only with `JobAcctGatherType=jobacct_gather/cgroup`):
    /// the processes in it and below it (`cgroup.procs`), their own time and
    /// their reaped children's. Time of a process reaped from outside the
    /// cgroup (a daemon reparented to init) is not seen.
    CgroupProcs(PathBuf),
    /// The processes below this one (`carbontrack run`): the live
    /// descendants' time and their reaped children's, plus this process's
    /// reaped children's (`cutime`, `cstime` of `/proc/<pid>/stat`), but not
    /// this process's own time (the sampler's).
    ChildrenOf(u32),
}

impl CpuTimeSource {
    /// Cumulative CPU time of the job now.
    pub fn read(&self, proc_root: &Path, ticks: u64) -> io::Result<Duration> {
        match self {
            CpuTimeSource::CpuacctUsage(p) | CpuTimeSource::CpuStat(p) => {
                self.parse_counter(&fs::read(p)?)
            }
            CpuTimeSource::CgroupProcs(dir) => cgroup_procs_cpu(proc_root, dir, ticks),
            CpuTimeSource::ChildrenOf(pid) => children_cpu(proc_root, *pid, ticks),
        }
    }

    /// The CPU time in the text of a cgroup counter file (`cpuacct.usage`
    /// in ns, `cpu.stat`'s `usage_usec`), without allocating.
    fn parse_counter(&self, bytes: &[u8]) -> io::Result<Duration> {
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not text"))?;
        match self {
            CpuTimeSource::CpuStat(_) => text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .ok_or_else(|| bad("no usage_usec line"))
                .and_then(parse_num)
                .map(Duration::from_micros),
            _ => parse_num(text).map(Duration::from_nanos),
        }
    }

    /// Names the source in the log.
    pub fn describe(&self) -> String {
        match self {
            CpuTimeSource::CpuacctUsage(p) | CpuTimeSource::CpuStat(p) => p.display().to_string(),
            CpuTimeSource::CgroupProcs(d) => format!("the processes of {}", d.display()),
            CpuTimeSource::ChildrenOf(pid) => format!("the processes below PID {pid}"),
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn parse_num(s: &str) -> io::Result<u64> {
    s.trim().parse().map_err(|_| bad("not a number"))
}

/// The job's CPU accounting file from a process's `/proc/<pid>/cgroup` text:
/// cgroup v1's `<root>/cpuacct/<job>/cpuacct.usage`, else v2's
/// `<root>/<job>/cpu.stat`, else the processes of its v1 `cpuset` or
/// `freezer` cgroup; the job's directory as for its cpuset
/// ([`super::cpuset::job_dir_in`]). Only existing files are returned.
pub fn job_cpu_time_source(
    cgroup_root: &Path,
    proc_cgroup: &str,
    job_id: u32,
) -> Option<CpuTimeSource> {
    let mut v2 = None;
    let mut procs = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(dir) = super::cpuset::job_dir_in(path.trim(), job_id) else {
            continue;
        };
        if ctrl.is_empty() {
            v2 = Some(CpuTimeSource::CpuStat(
                cgroup_root.join(dir).join("cpu.stat"),
            ));
        } else if ctrl.split(',').any(|c| c == "cpuacct") {
            // Mounted as `cpu,cpuacct` with a `cpuacct` link (systemd), or alone.
            for mount in ["cpuacct", ctrl] {
                let f = cgroup_root.join(mount).join(&dir).join("cpuacct.usage");
                if f.is_file() {
                    return Some(CpuTimeSource::CpuacctUsage(f));
                }
            }
        } else if procs.is_none()
            && let Some(c) = ctrl.split(',').find(|c| matches!(*c, "cpuset" | "freezer"))
        {
            let d = cgroup_root.join(c).join(&dir);
            if d.join("cgroup.procs").is_file() {
                procs = Some(CpuTimeSource::CgroupProcs(d));
            }
        }
    }
    v2.filter(|s| matches!(s, CpuTimeSource::CpuStat(p) if p.is_file()))
        .or(procs)
}

/// CPU time of the processes in cgroup `dir` and its descendants: see
/// [`CpuTimeSource::CgroupProcs`].
fn cgroup_procs_cpu(proc_root: &Path, dir: &Path, ticks: u64) -> io::Result<Duration> {
    let mut total = 0u64;
    let mut dirs = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(d) = dirs.pop() {
        let procs = match fs::read_to_string(d.join("cgroup.procs")) {
            Ok(p) => p,
            // A step's cgroup removed between the listing and the read.
            Err(e) if !first && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        first = false;
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat"));
            if let Some((_, own, children)) = stat.ok().as_deref().and_then(parse_stat) {
                total += own + children;
            }
        }
        if let Ok(rd) = fs::read_dir(&d) {
            dirs.extend(
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    Ok(Duration::from_secs_f64(total as f64 / ticks.max(1) as f64))
}

/// One `/proc/<pid>/stat` line's parent and CPU ticks: (ppid, utime + stime,
/// cutime + cstime).
pub fn parse_stat(line: &str) -> Option<(u32, u64, u64)> {
    crate::procstat::parse(line).map(|s| (s.ppid, s.own_ticks, s.reaped_ticks))
}

/// CPU time of everything below `pid`: see [`CpuTimeSource::ChildrenOf`].
/// The tree is followed through the kernel's `task/<tid>/children` lists,
/// so a sample reads the tree's own files, not every process of the
/// machine (a login node has thousands); where the kernel has no such lists
/// (built without `CONFIG_PROC_CHILDREN`) every process is looked at.
fn children_cpu(proc_root: &Path, pid: u32, ticks: u64) -> io::Result<Duration> {
    match children_cpu_by_tree(proc_root, pid) {
        Some(total) => total.map(|t| Duration::from_secs_f64(t as f64 / ticks.max(1) as f64)),
        None => children_cpu_by_scan(proc_root, pid, ticks),
    }
}

/// Most processes followed below one: a bound, not a limit any job meets.
const MAX_TREE: usize = 100_000;

/// The tree's CPU ticks through `children` lists; `None` when the kernel
/// keeps none.
fn children_cpu_by_tree(proc_root: &Path, pid: u32) -> Option<io::Result<u64>> {
    let stat = |p: u32| {
        fs::read_to_string(proc_root.join(p.to_string()).join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
    };
    let children = children_of(proc_root, pid)?;
    let Some((_, _, reaped)) = stat(pid) else {
        return Some(Err(bad("the root process is gone")));
    };
    let mut total = reaped;
    let mut frontier = children;
    let mut seen = 0usize;
    while let Some(p) = frontier.pop() {
        seen += 1;
        if seen > MAX_TREE {
            break;
        }
        // A process may end between its parent's list and its own read.
        if let Some((_, own, reaped)) = stat(p) {
            total += own + reaped;
            frontier.extend(children_of(proc_root, p).unwrap_or_default());
        }
    }
    Some(Ok(total))
}

/// The children of every thread of `pid` (`/proc/<pid>/task/*/children`);
/// `None` when the kernel has no such list.
fn children_of(proc_root: &Path, pid: u32) -> Option<Vec<u32>> {
    let tasks = fs::read_dir(proc_root.join(pid.to_string()).join("task")).ok()?;
    let mut out = Vec::new();
    let mut any = false;
    for t in tasks.filter_map(Result::ok) {
        if let Ok(list) = fs::read_to_string(t.path().join("children")) {
            any = true;
            out.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    any.then_some(out)
}

/// CPU time of everything below `pid`, from every process's parent.
fn children_cpu_by_scan(proc_root: &Path, pid: u32, ticks: u64) -> io::Result<Duration> {
    let mut procs: Vec<(u32, u32, u64, u64)> = Vec::new();
    let mut own_children = None;
    for entry in fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and the read.
        let Ok(line) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((ppid, own, children)) = parse_stat(&line) else {
            continue;
        };
        if p == pid {
            own_children = Some(children);
        }
        procs.push((p, ppid, own, children));
    }
    let mut total = own_children.ok_or_else(|| bad("the root process is gone"))?;
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, ppid, own, children) in &procs {
            if ppid == parent && p != pid {
                total += own + children;
                frontier.push(p);
            }
        }
    }
    Ok(Duration::from_secs_f64(total as f64 / ticks.max(1) as f64))
}

/// The model a meter applies: TDP, what it came from, and the node's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub tdp: Watts,
    /// The CPU model's name (`auto`), or `cpu_tdp=W` when given.
    pub source: String,
    pub packages: usize,
    pub cpus: usize,
}

impl Model {
    /// The model for `cpu_tdp` on a node of `packages` × `cpus`, with
    /// `cpuinfo` the text of `/proc/cpuinfo`; or why there is none.
    pub fn new(tdp: CpuTdp, cpuinfo: &str, packages: usize, cpus: usize) -> Result<Model, String> {
        let (tdp, source) = match tdp {
            CpuTdp::Watts(w) => (w, format!("cpu_tdp={}", w.0)),
            CpuTdp::Auto => {
                let model =
                    cpuinfo_model(cpuinfo).ok_or("cpu_tdp=auto: no model name in /proc/cpuinfo")?;
                let w = tdp_of_model(&model)
                    .ok_or_else(|| format!("cpu_tdp=auto: no TDP known for {model}"))?;
                (w, model)
            }
        };
        if cpus == 0 || packages == 0 {
            return Err("no CPUs found for the estimate".into());
        }
        Ok(Model {
            tdp,
            source,
            packages,
            cpus,
        })
    }
}

/// The estimate as a [`Meter`]: reads the job's cumulative CPU time at every
/// sample and charges it by the [`Model`]. One row, component `cpu`, device
/// `tdp-estimate`.
pub struct EstimateMeter {
    model: Model,
    source: CpuTimeSource,
    proc_root: PathBuf,
    ticks: u64,
    first: Option<(Duration, Instant)>,
    last: Option<(Duration, Instant)>,
    /// The counter file, kept open and read in place (`pread` into `buf`):
    /// no allocation per sample on the cgroup-file sources.
    file: Option<fs::File>,
    buf: [u8; 2048],
    failed_reads: u32,
    last_failure: Option<io::ErrorKind>,
}

/// The `device` of the estimate's row.
pub const DEVICE: &str = "tdp-estimate";

impl EstimateMeter {
    pub fn new(model: Model, source: CpuTimeSource, ticks: u64) -> EstimateMeter {
        EstimateMeter {
            model,
            source,
            proc_root: PathBuf::from("/proc"),
            ticks,
            first: None,
            last: None,
            file: None,
            buf: [0; 2048],
            failed_reads: 0,
            last_failure: None,
        }
    }

    /// Reads `/proc` elsewhere (tests).
    pub fn with_proc_root(mut self, root: PathBuf) -> EstimateMeter {
        self.proc_root = root;
        self
    }

    /// The job's cumulative CPU time now.
    fn read_now(&mut self) -> io::Result<Duration> {
        use std::os::unix::fs::FileExt;
        match &self.source {
            CpuTimeSource::CpuacctUsage(p) | CpuTimeSource::CpuStat(p) => {
                if self.file.is_none() {
                    self.file = Some(fs::File::open(p)?);
                }
                let n = match self.file.as_ref().map(|f| f.read_at(&mut self.buf, 0)) {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => {
                        // Opened again at the next sample.
                        self.file = None;
                        return Err(e);
                    }
                    None => 0,
                };
                self.source.parse_counter(&self.buf[..n])
            }
            other => other.read(&self.proc_root, self.ticks),
        }
    }

    /// The job's CPU time over the sampled span so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let ((c0, _), (c1, _)) = (self.first?, self.last?);
        Some(c1.saturating_sub(c0))
    }
}

impl Meter for EstimateMeter {
    /// Allocates nothing on the cgroup-file sources; the process-list ones
    /// (`carbontrack run`, cgroup v1 without cpuacct) list directories.
    fn sample(&mut self, now: Instant) {
        match self.read_now() {
            Ok(cpu) => {
                // Never backwards (a process reparented out of the tree).
                let cpu = self.last.map_or(cpu, |(prev, _)| cpu.max(prev));
                if self.first.is_none() {
                    self.first = Some((cpu, now));
                }
                self.last = Some((cpu, now));
            }
            Err(e) => {
                self.failed_reads += 1;
                self.last_failure = Some(e.kind());
            }
        }
    }

    fn totals(&self, out: &mut Vec<DeviceEnergy>) {
        let m = &self.model;
        let energy = self
            .cpu_time()
            .and_then(|c| estimate(m.tdp, c, m.packages, m.cpus));
        let (Some(energy), Some((_, t0)), Some((_, t1))) = (energy, self.first, self.last) else {
            let why = match self.last_failure {
                Some(k) => format!("CPU time unreadable ({})", io::Error::from(k)),
                None => "CPU time not read yet".to_string(),
            };
            out.push(DeviceEnergy::unavailable(Component::Cpu, DEVICE, why));
            return;
        };
        let cpu = self.cpu_time().unwrap_or_default();
        out.push(DeviceEnergy {
            component: Component::Cpu,
            device: DEVICE.to_string(),
            share: busy_share(cpu, t1.duration_since(t0), m.cpus),
            energy: Some(energy),
            status: Status::Estimated(status_text(m.tdp, &m.source)),
        });
    }

    fn energies(&self, out: &mut Vec<Option<Joules>>) {
        let m = &self.model;
        out.clear();
        out.push(
            self.cpu_time()
                .and_then(|c| estimate(m.tdp, c, m.packages, m.cpus)),
        );
    }

    fn bridges_gaps(&self) -> bool {
        true
    }

    fn label(&self) -> String {
        "CPU estimate".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_charges_cpu_time_at_tdp_per_cpu_of_a_package() {
        let s = Duration::from_secs;
        for (tdp, cpu_s, packages, cpus, joules) in [
            // One of 4 CPUs busy for 10 s at 100 W: a quarter of TDP.
            (100.0, 10, 1, 4, Some(250.0)),
            // All 4 busy for 10 s: TDP for 10 s.
            (100.0, 40, 1, 4, Some(1000.0)),
            // Two packages of 8 CPUs: each CPU is 1/8 of one package's TDP.
            (150.0, 8, 2, 16, Some(150.0)),
            (100.0, 0, 1, 4, Some(0.0)),
            (100.0, 10, 1, 0, None),
        ] {
            let e = estimate(Watts(tdp), s(cpu_s), packages, cpus).map(|j| j.0);
            assert_eq!(e, joules, "{tdp} W, {cpu_s} CPU-s, {packages} × {cpus}");
        }
        assert_eq!(busy_share(s(10), s(10), 4), 0.25);
        assert_eq!(busy_share(s(10), Duration::ZERO, 4), 0.0);
    }

    #[test]
    fn cpu_tdp_values() {
        assert_eq!(CpuTdp::parse("150"), Ok(CpuTdp::Watts(Watts(150.0))));
        assert_eq!(CpuTdp::parse("85.5W"), Ok(CpuTdp::Watts(Watts(85.5))));
        assert_eq!(CpuTdp::parse("auto"), Ok(CpuTdp::Auto));
        for bad in ["0", "5000", "lots", "", "-3"] {
            assert!(CpuTdp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_looks_the_model_up_and_never_guesses() {
        let info =
            |m: &str| format!("processor\t: 0\nvendor_id\t: x\nmodel name\t: {m}\nflags\t: a\n");
        let xeon = "Intel(R) Xeon(R) Gold 6154 CPU @ 3.00GHz";
        assert_eq!(cpuinfo_model(&info(xeon)).as_deref(), Some(xeon));
        let m = Model::new(CpuTdp::Auto, &info(xeon), 2, 80).unwrap();
        assert_eq!((m.tdp, m.source.as_str()), (Watts(200.0), xeon));
        assert_eq!(
            tdp_of_model("AMD EPYC 7742 64-Core Processor"),
            Some(Watts(225.0))
        );
        assert_eq!(tdp_of_model("AMD EPYC 77420 64-Core Processor"), None);
        let e = Model::new(CpuTdp::Auto, &info("QEMU Virtual CPU version 2.5+"), 1, 2);
        assert_eq!(
            e.unwrap_err(),
            "cpu_tdp=auto: no TDP known for QEMU Virtual CPU version 2.5+"
        );
        assert!(Model::new(CpuTdp::Auto, "", 1, 2).is_err());
        let given = Model::new(CpuTdp::Watts(Watts(95.0)), "", 1, 2).unwrap();
        assert_eq!(given.source, "cpu_tdp=95");
    }

    #[test]
    fn the_status_names_the_model_within_the_limit() {
        assert_eq!(
            Status::Estimated(status_text(Watts(150.0), "cpu_tdp=150")).to_csv(),
            "estimated: TDP 150 W (cpu_tdp=150), CPU time"
        );
        let long = status_text(Watts(85.5), &"Very Long CPU Model Name ".repeat(10));
        let csv = Status::Estimated(long).to_csv();
        assert!(csv.len() <= super::super::MAX_STATUS, "{csv}");
        assert!(
            csv.starts_with("estimated: TDP 85.5 W (Very Long") && csv.ends_with("), CPU time")
        );
    }

    #[test]
    fn cgroup_files_of_the_job() {
        let dir = std::env::temp_dir().join(format!("ct-est-cg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let v1 = dir.join("cpu,cpuacct/slurm/uid_1000/job_7");
        fs::create_dir_all(&v1).unwrap();
        fs::write(v1.join("cpuacct.usage"), "2500000000\n").unwrap();
        let proc_v1 = "12:cpu,cpuacct:/slurm/uid_1000/job_7/step_extern\n4:cpuset:/slurm/uid_1000/job_7/step_extern\n";
        let src = job_cpu_time_source(&dir, proc_v1, 7).unwrap();
        assert_eq!(src, CpuTimeSource::CpuacctUsage(v1.join("cpuacct.usage")));
        assert_eq!(
            src.read(Path::new("/proc"), 100).unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(job_cpu_time_source(&dir, proc_v1, 8), None);
        // The meter keeps the file open and reads it in place: a counter
        // rewritten between samples (as the kernel's is) is read anew.
        let model = Model::new(CpuTdp::Watts(Watts(80.0)), "", 1, 8).unwrap();
        let mut m = EstimateMeter::new(model, src.clone(), 100);
        let t0 = Instant::now();
        m.sample(t0);
        fs::write(v1.join("cpuacct.usage"), "6500000000\n").unwrap();
        m.sample(t0 + Duration::from_secs(2));
        let (mut rows, mut energies) = (Vec::new(), Vec::new());
        m.totals(&mut rows);
        m.energies(&mut energies);
        // 4 CPU-s at 80 W / 8 CPUs.
        assert_eq!(rows[0].energy, Some(Joules(40.0)));
        assert_eq!(energies, [Some(Joules(40.0))]);
        assert_eq!(rows[0].share, 0.25);

        let v2 = dir.join("system.slice/slurmstepd.scope/job_9");
        fs::create_dir_all(&v2).unwrap();
        fs::write(
            v2.join("cpu.stat"),
            "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        )
        .unwrap();
        let proc_v2 = "0::/system.slice/slurmstepd.scope/job_9/step_0/user/task_0\n";
        let src = job_cpu_time_source(&dir, proc_v2, 9).unwrap();
        assert_eq!(
            src.read(Path::new("/proc"), 100).unwrap(),
            Duration::from_millis(1500)
        );
        fs::write(v2.join("cpu.stat"), "user_usec 1\n").unwrap();
        assert!(src.read(Path::new("/proc"), 100).is_err());

        // v1 without cpuacct (no jobacct_gather/cgroup): the processes of
        // the job's cpuset cgroup and its steps', from a fake /proc.
        let job = dir.join("cpuset/slurm/uid_1000/job_11");
        for (step, pids) in [
            ("", "100\n"),
            ("step_batch", "101\n102\n"),
            ("step_extern", ""),
        ] {
            fs::create_dir_all(job.join(step)).unwrap();
            fs::write(job.join(step).join("cgroup.procs"), pids).unwrap();
        }
        let proc = dir.join("proc");
        for (pid, own, children) in [(100, 5, 0), (101, 10, 150), (102, 40, 0)] {
            fs::create_dir_all(proc.join(pid.to_string())).unwrap();
            fs::write(
                proc.join(pid.to_string()).join("stat"),
                format!("{pid} (x) S 1 0 0 0 -1 0 0 0 0 0 {own} 0 {children} 0 20 0 1 0 1 1 1\n"),
            )
            .unwrap();
        }
        let proc_v1 = "4:cpuset:/slurm/uid_1000/job_11/step_batch\n3:freezer:/slurm/uid_1000/job_11/step_batch\n";
        let src = job_cpu_time_source(&dir, proc_v1, 11).unwrap();
        assert_eq!(src, CpuTimeSource::CgroupProcs(job.clone()));
        assert_eq!(src.read(&proc, 100).unwrap(), Duration::from_millis(2050));
        fs::remove_dir_all(&job).unwrap();
        assert!(src.read(&proc, 100).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A fake `/proc`: the wrapper (10) has reaped children worth 5 ticks,
    /// runs 11 (30 own + 20 reaped), which runs 12 (40); 13 is someone
    /// else's. The wrapper's own 1000 ticks (the sampler) are not the job's.
    #[test]
    fn the_process_tree_below_the_wrapper() {
        let dir = std::env::temp_dir().join(format!("ct-est-proc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let stat = |pid: u32, ppid: u32, own: u64, children: u64| {
            let d = dir.join(pid.to_string());
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join("stat"),
                format!(
                    "{pid} (x) S {ppid} 0 0 0 -1 0 0 0 0 0 {own} 0 {children} 0 20 0 1 0 1 1 1\n"
                ),
            )
            .unwrap();
        };
        stat(10, 1, 1000, 5);
        stat(11, 10, 30, 20);
        stat(12, 11, 40, 0);
        stat(13, 1, 500, 0);
        fs::create_dir_all(dir.join("self")).unwrap();
        let src = CpuTimeSource::ChildrenOf(10);
        assert_eq!(src.read(&dir, 100).unwrap(), Duration::from_millis(950));
        assert!(CpuTimeSource::ChildrenOf(99).read(&dir, 100).is_err());

        let model = Model::new(CpuTdp::Watts(Watts(100.0)), "", 1, 4).unwrap();
        let mut m = EstimateMeter::new(model, src, 100).with_proc_root(dir.clone());
        let mut rows = Vec::new();
        m.totals(&mut rows);
        assert_eq!(
            rows[0].status,
            Status::Unavailable("CPU time not read yet".into())
        );
        let t0 = Instant::now();
        m.sample(t0);
        // 12 ends and is reaped by 11: its ticks move to 11's children.
        fs::remove_dir_all(dir.join("12")).unwrap();
        stat(11, 10, 130, 60);
        m.sample(t0 + Duration::from_secs(1));
        // Forty more ticks: 100 W × 1.0 s / 4 CPUs.
        rows.clear();
        m.totals(&mut rows);
        assert_eq!(m.cpu_time(), Some(Duration::from_millis(1000)));
        assert_eq!(rows[0].energy, Some(Joules(25.0)));
        assert_eq!(rows[0].share, 0.25);
        assert_eq!(
            rows[0].status.to_csv(),
            "estimated: TDP 100 W (cpu_tdp=100), CPU time"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
