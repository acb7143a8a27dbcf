//! Which part of each CPU package belongs to the job.
//!
//! # The model
//! RAPL measures whole packages (sockets) and the DRAM attached to them; a job
//! that shares a node gets part of each. The job's CPUs come from its cgroup
//! cpuset (what Slurm confines it to with `ConstrainCores=yes`), each CPU is
//! mapped to its package with `cpuN/topology/physical_package_id`, and
//!
//! > share of package N = the job's CPUs on N / all online CPUs on N
//!
//! The same share is applied to that package's DRAM. CPUs are logical CPUs
//! (hyper-threads count as CPUs, as they do in Slurm's allocation).
//!
//! # Limits
//! - Attribution is by allocation, not by use: an idle job on 4 of 32 cores is
//!   charged 4/32 of the package even if its neighbours are busy, and the
//!   uncore and idle power of a shared socket is split by core count.
//! - DRAM follows the CPU share, not the memory the job actually uses or
//!   touches; RAPL cannot see per-process memory traffic.
//! - Without a cpuset (no `ConstrainCores`, no cgroup found), the share falls
//!   back to allocated CPUs / node CPUs for every package, which ignores where
//!   the job's threads actually run; the status says so.
//! - A cpuset that spans every CPU of the node while the job was allocated
//!   fewer is taken to mean "not constrained" (cgroup v2 inherits the parent's
//!   CPUs), so the count fallback is used then too.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::measure::cores::{NodeLayout, package_shares_from_cores};
pub use crate::measure::topology::{
    CpuListError, CpuSet, Topology, TopologyError, package_of_cpus,
};

/// Why the job's cpuset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CpusetError {
    #[error(
        "no cpuset for job {job_id} under {root} (looked for Slurm's cgroup v2 \
         `system.slice/*slurmstepd.scope/job_{job_id}` and v1 \
         `cpuset/slurm*/uid_*/job_{job_id}`; is ConstrainCores=yes set in cgroup.conf?)"
    )]
    NotFound { root: PathBuf, job_id: u32 },
    #[error(
        "no cgroup of job {job_id} with a cpuset in the job's own processes' /proc/<pid>/cgroup"
    )]
    NotInProc { job_id: u32 },
    #[error("this process's cgroup has no cpuset under {root}")]
    NoOwnCpuset { root: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: CpuListError },
}

/// The job's cpuset and the file it came from (for diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCpuset {
    pub cpus: CpuSet,
    pub path: PathBuf,
}

/// Finds the job's cpuset in the layouts Slurm's cgroup plugins create.
///
/// - cgroup v2 (Slurm 22.05+): `<root>/system.slice/slurmstepd.scope/job_<id>`,
///   or `<node>_slurmstepd.scope` when several slurmd run on one host; the
///   file is `cpuset.cpus.effective` (what the kernel enforces, also when the
///   job's own `cpuset.cpus` is empty and inherited).
/// - cgroup v1: `<root>/cpuset/slurm/uid_<uid>/job_<id>`, or `slurm_<node>`
///   with several slurmd; the file is `cpuset.cpus` (v1 has no inheritance).
///
/// `uid` narrows the v1 search; without it every `uid_*` is looked at.
///
/// After 22.05, Slurm's cgroup/v2 plugin puts `system.slice` beside the cgroup
/// of PID 1 rather than at the root (`_get_init_cg_path` in
/// src/plugins/cgroup/v2/cgroup_v2.c, 24.11): the same place on a host, where
/// PID 1 is in `/init.scope`, but `<root>/docker.slice/system.slice/...` in a
/// container whose PID 1 is in `/docker.slice/docker-<id>.scope`. Both are
/// looked at.
pub fn job_cpuset(
    cgroup_root: &Path,
    job_id: u32,
    uid: Option<u32>,
) -> Result<JobCpuset, CpusetError> {
    let init = fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
    job_cpuset_beside(cgroup_root, job_id, uid, init_parent(&init).as_deref())
}

/// The cgroup (relative to the root) that holds PID 1's, from the text of
/// `/proc/1/cgroup`; `None` when it is the root itself or not cgroup v2.
pub fn init_parent(proc_1_cgroup: &str) -> Option<PathBuf> {
    let path = proc_1_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim();
    let parent = Path::new(path).parent()?.strip_prefix("/").ok()?;
    (!parent.as_os_str().is_empty()).then(|| parent.to_path_buf())
}

/// [`job_cpuset`] with PID 1's parent cgroup given (see [`init_parent`]).
pub fn job_cpuset_beside(
    cgroup_root: &Path,
    job_id: u32,
    uid: Option<u32>,
    init_parent: Option<&Path>,
) -> Result<JobCpuset, CpusetError> {
    let job = format!("job_{job_id}");
    let mut candidates = Vec::new();

    // cgroup v2: the plain scope first, then any `*_slurmstepd.scope`; at
    // the root (22.05), then beside PID 1's cgroup (24.11; 22.05 has not).
    let mut slices = vec![cgroup_root.join("system.slice")];
    if let Some(p) = init_parent {
        slices.push(cgroup_root.join(p).join("system.slice"));
    }
    for slice in &slices {
        candidates.push(
            slice
                .join("slurmstepd.scope")
                .join(&job)
                .join("cpuset.cpus.effective"),
        );
        for scope in subdirs(slice, |n| n.ends_with("_slurmstepd.scope")) {
            candidates.push(scope.join(&job).join("cpuset.cpus.effective"));
        }
    }

    // cgroup v1: `slurm` and `slurm_<node>`, then the uid level.
    let v1 = cgroup_root.join("cpuset");
    let mut bases = vec![v1.join("slurm")];
    bases.extend(subdirs(&v1, |n| n.starts_with("slurm_")));
    for base in bases {
        match uid {
            Some(u) => {
                candidates.push(base.join(format!("uid_{u}")).join(&job).join("cpuset.cpus"))
            }
            None => {
                for u in subdirs(&base, |n| n.starts_with("uid_")) {
                    candidates.push(u.join(&job).join("cpuset.cpus"));
                }
            }
        }
    }

    for path in candidates {
        match fs::read_to_string(&path) {
            Ok(text) => {
                let cpus = text.parse().map_err(|source| CpusetError::Parse {
                    path: path.clone(),
                    source,
                })?;
                return Ok(JobCpuset { cpus, path });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CpusetError::Read { path, source }),
        }
    }
    Err(CpusetError::NotFound {
        root: cgroup_root.to_path_buf(),
        job_id,
    })
}

/// The job's cgroup directory inside one cgroup path of a process
/// (`/proc/<pid>/cgroup`), relative to the hierarchy's root.
///
/// Slurm names it `job_<id>` (cgroup v1, and v2 before 26.05 or with
/// `CgroupJobIdPaths=yes`), or by the job's SLUID (v2 from 26.05,
/// `…/slurmstepd.scope/sEKNKTV3WPV500/step_0/…`): the directory below the
/// `[<node>_]slurmstepd.scope` that holds a `step_*` directory. A path naming
/// another job's `job_<id>` is not this job's.
pub fn job_dir_in(path: &str, job_id: u32) -> Option<PathBuf> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mine = format!("job_{job_id}");
    if let Some(i) = parts.iter().position(|p| *p == mine) {
        return Some(parts[..=i].iter().collect());
    }
    if parts.iter().any(|p| {
        p.strip_prefix("job_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }) {
        return None;
    }
    let scope = parts.iter().position(|p| p.ends_with("slurmstepd.scope"))?;
    let step = parts.get(scope + 2)?;
    step.starts_with("step_")
        .then(|| parts[..=scope + 1].iter().collect())
}

/// The files the job's cpuset may be read from, from a process's
/// `/proc/<pid>/cgroup` text: cgroup v1's `<root>/cpuset/<job>/cpuset.cpus`
/// first (a hybrid host's v2 tree usually has no cpuset controller), then
/// v2's `<root>/<job>/cpuset.cpus.effective`.
pub fn job_cpuset_files(cgroup_root: &Path, proc_cgroup: &str, job_id: u32) -> Vec<PathBuf> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(dir) = job_dir_in(path.trim(), job_id) else {
            continue;
        };
        if ctrl.is_empty() {
            v2.push(cgroup_root.join(dir).join("cpuset.cpus.effective"));
        } else if ctrl.split(',').any(|c| c == "cpuset") {
            v1.push(cgroup_root.join("cpuset").join(dir).join("cpuset.cpus"));
        }
    }
    v1.extend(v2);
    v1
}

/// The job's cpuset found through the cgroup of one of its own processes
/// (the step's slurmstepd, a task): no guessing of where Slurm put it.
pub fn job_cpuset_from_proc(
    cgroup_root: &Path,
    proc_cgroup: &str,
    job_id: u32,
) -> Result<JobCpuset, CpusetError> {
    for path in job_cpuset_files(cgroup_root, proc_cgroup, job_id) {
        match fs::read_to_string(&path) {
            Ok(text) => {
                let cpus: CpuSet = text.parse().map_err(|source| CpusetError::Parse {
                    path: path.clone(),
                    source,
                })?;
                if !cpus.is_empty() {
                    return Ok(JobCpuset { cpus, path });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CpusetError::Read { path, source }),
        }
    }
    Err(CpusetError::NotInProc { job_id })
}

/// The job's cpuset: through the cgroups of the processes `pids` (this
/// step's slurmstepd first, then a task of the job), else by searching the
/// layouts Slurm uses ([`job_cpuset`]). Also says how it was found
/// (`/proc/<pid>/cgroup`, or `the search`), for the log.
pub fn find_job_cpuset(
    cgroup_root: &Path,
    job_id: u32,
    uid: Option<u32>,
    pids: &[u32],
) -> Result<(JobCpuset, String), CpusetError> {
    for pid in pids {
        let proc = format!("/proc/{pid}/cgroup");
        if let Ok(text) = fs::read_to_string(&proc)
            && let Ok(found) = job_cpuset_from_proc(cgroup_root, &text, job_id)
        {
            return Ok((found, proc));
        }
    }
    job_cpuset(cgroup_root, job_id, uid).map(|c| (c, "the search of Slurm's layouts".to_string()))
}

/// Subdirectories of `dir` whose names pass `keep`, sorted so searches are
/// deterministic; a missing or unreadable `dir` has none.
fn subdirs(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// The fraction of each package (and its DRAM) attributed to the job.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageShares {
    /// Explicit shares per package; packages not listed get `uniform`.
    per_package: BTreeMap<u32, f64>,
    /// The share of any package not in `per_package`.
    uniform: f64,
    /// The short, stable reason (≤ 60 characters) a row's status gives when
    /// the shares are an approximation; `None` when they are exact.
    note: Option<String>,
    /// What the approximation means and how an admin makes it exact: said
    /// once in the log (the summary explains the `note` in its own words).
    detail: Option<String>,
    /// How the shares were found, named once in the log and the summary.
    method: Option<String>,
}

/// Row status reasons of the approximate attributions (kept short and
/// stable: the CSV's `status` is `incomplete: <one of these>`).
pub const NOTE_COUNT: &str = "share by CPU count (no core allocation known)";
pub const NOTE_WHOLE_NODE: &str = "share of the whole node (no core allocation known)";
pub const NOTE_LAYOUT: &str = "share by core count (node layout unclear)";

impl PackageShares {
    /// The whole node belongs to the job (`carbontrack run` on a workstation,
    /// an exclusive node).
    pub fn whole_node() -> PackageShares {
        PackageShares {
            per_package: BTreeMap::new(),
            uniform: 1.0,
            note: None,
            detail: None,
            method: None,
        }
    }

    /// Share of package `pkg`: 0 means the job has no CPU there.
    pub fn share(&self, pkg: u32) -> f64 {
        self.per_package.get(&pkg).copied().unwrap_or(self.uniform)
    }

    /// Why the shares are approximate, when they are: the short reason a
    /// row's status carries.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The long explanation of [`PackageShares::note`], with the fix.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// How the shares were found (`the job's cpuset …`, `Slurm's core
    /// allocation …`), when known.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    fn with_method(mut self, method: String) -> PackageShares {
        self.method = Some(method);
        self
    }

    /// Packages known to hold some of the job's CPUs (empty for the uniform
    /// shares of the fallbacks, which apply to whatever packages exist).
    pub fn job_packages(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.per_package
            .iter()
            .filter(|&(_, &s)| s > 0.0)
            .map(|(&p, &s)| (p, s))
    }

    /// The explicit shares, for comparing two ways of finding them.
    fn explicit(&self) -> &BTreeMap<u32, f64> {
        &self.per_package
    }
}

/// Share per package from the job's CPUs: its CPUs on the package over all of
/// the package's CPUs. Job CPUs the topology does not know (offline) are
/// ignored; packages where the job has nothing get 0.
pub fn package_shares(job: &CpuSet, topo: &Topology) -> PackageShares {
    let mut per_package: BTreeMap<u32, f64> = BTreeMap::new();
    let totals = topo.cpus_per_package();
    let mut mine: BTreeMap<u32, usize> = BTreeMap::new();
    for cpu in job.iter() {
        if let Some(p) = topo.package_of(cpu) {
            *mine.entry(p).or_insert(0) += 1;
        }
    }
    for (&p, &all) in &totals {
        let n = mine.get(&p).copied().unwrap_or(0);
        per_package.insert(p, n as f64 / all as f64);
    }
    PackageShares {
        per_package,
        uniform: 0.0,
        note: None,
        detail: None,
        method: None,
    }
}

/// The fallback without a cpuset or core allocation: allocated CPUs / node
/// CPUs on every package. `why` says why there was nothing better; it goes
/// into the detail, the status carries [`NOTE_COUNT`].
pub fn shares_from_count(allocated: u32, node_cpus: u32, why: &str) -> PackageShares {
    let share = if node_cpus == 0 {
        1.0
    } else {
        (f64::from(allocated) / f64::from(node_cpus)).clamp(0.0, 1.0)
    };
    PackageShares {
        per_package: BTreeMap::new(),
        uniform: share,
        note: Some(NOTE_COUNT.to_string()),
        detail: Some(format!(
            "CPU and DRAM attributed by CPU count ({allocated} of {node_cpus} CPUs on every \
             package), not by the job's own cores: {why}; {FIX}"
        )),
        method: Some(format!("CPU count ({allocated} of {node_cpus} CPUs)")),
    }
}

/// What makes the attribution exact, for the log.
const FIX: &str = "for exact shares set ConstrainCores=yes in cgroup.conf (task/cgroup), \
     or use a Slurm whose steps give S_JOB_ALLOC_CORES (22.05 and later do)";

/// Everything that can tell which CPUs are the job's on this node.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The job's cpuset, or why there is none.
    pub cpuset: Result<&'a JobCpuset, &'a str>,
    /// How the cpuset was found (`/proc/1234/cgroup`), for the log.
    pub cpuset_via: Option<&'a str>,
    /// Slurm's core ids of the job on this node (`S_JOB_ALLOC_CORES`).
    pub cores: Option<&'a CpuSet>,
    /// The node's layout in Slurm's terms, or why it is unknown.
    pub layout: Result<&'a NodeLayout, &'a str>,
    /// The CPU topology the plugin reads (`cpu_topology=`).
    pub topo: Option<&'a Topology>,
    /// CPUs allocated to the job on this node, where Slurm says.
    pub allocated: Option<u32>,
}

/// The chosen attribution, and what the admin should hear about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub shares: PackageShares,
    /// The cpuset and the core allocation both exist and give different
    /// shares (the cpuset is used): worth one error line.
    pub disagreement: Option<String>,
}

/// Chooses the attribution for a job on a node, best first:
/// 1. its cpuset, when it is meaningful (see [`attribute`]);
/// 2. Slurm's core allocation mapped with the node's layout
///    ([`crate::measure::cores`]): exact too, and checked against the
///    cpuset where both exist;
/// 3. the job's cores over the node's cores (a layout that does not match
///    the topology), or its CPU count over the node's CPUs;
/// 4. the whole node.
pub fn attribute_job(e: &Evidence) -> Attribution {
    let from_cores = e.cores.and_then(|c| shares_from_cores(c, e.layout, e.topo));
    // A cpuset of the whole node is not the job's when Slurm gave it less:
    // its CPU count, or its cores' CPUs where only those are known.
    let threads = e.layout.map_or(1, |l| l.threads_per_core);
    let allocated = e
        .allocated
        .or_else(|| e.cores.map(|c| c.len() as u32 * threads));
    let cpuset_why = match (e.cpuset, e.topo) {
        (Ok(c), Some(t)) => match meaningful_cpuset(&c.cpus, t, allocated) {
            Ok(()) => {
                let shares = package_shares(&c.cpus, t);
                let via = e
                    .cpuset_via
                    .map(|v| format!(", found through {v}"))
                    .unwrap_or_default();
                let mut method =
                    format!("the job's cpuset ({}: {}{via})", c.path.display(), c.cpus);
                let mut disagreement = None;
                if let Some(Ok(cores)) = &from_cores {
                    if same_shares(shares.explicit(), cores.explicit(), t) {
                        method += &format!(
                            ", which Slurm's core allocation ({}) confirms",
                            e.cores.map(|c| c.to_string()).unwrap_or_default()
                        );
                    } else {
                        disagreement = Some(format!(
                            "the job's cpuset ({}) and Slurm's core allocation ({}) give \
                             different package shares ({} against {}); the cpuset is used, \
                             check the NodeName line's Sockets/CoresPerSocket/ThreadsPerCore \
                             against `slurmd -C`",
                            c.cpus,
                            e.cores.map(|c| c.to_string()).unwrap_or_default(),
                            fmt_shares(shares.explicit()),
                            fmt_shares(cores.explicit())
                        ));
                    }
                }
                return Attribution {
                    shares: shares.with_method(method),
                    disagreement,
                };
            }
            Err(why) => why,
        },
        (Ok(_), None) => "CPU topology unknown".to_string(),
        (Err(why), _) => why.to_string(),
    };
    let shares = match from_cores {
        Some(Ok(s)) => s,
        Some(Err(s)) => s,
        None => match (e.allocated, e.topo) {
            (Some(a), Some(t)) => shares_from_count(a, t.cpus() as u32, &cpuset_why),
            _ => whole_node_because(&cpuset_why),
        },
    };
    Attribution {
        shares,
        disagreement: None,
    }
}

/// Shares from Slurm's core ids: `Some(Ok)` when exact, `Some(Err)` with
/// the core-count fallback when the layout does not fit the topology.
fn shares_from_cores(
    cores: &CpuSet,
    layout: Result<&NodeLayout, &str>,
    topo: Option<&Topology>,
) -> Option<Result<PackageShares, PackageShares>> {
    if cores.is_empty() {
        return None;
    }
    let topo = topo?;
    // Without slurm.conf's line, the layout is the hardware's, as `slurmd -C`
    // reports it (and as Slurm requires the node to have).
    let (layout, from) = match layout {
        Ok(l) => (*l, "slurm.conf".to_string()),
        Err(why) => (
            hardware_layout(topo)?,
            format!("the CPU topology, slurm.conf's being unknown: {why}"),
        ),
    };
    match package_shares_from_cores(cores, &layout, topo) {
        Ok(per_package) => Some(Ok(PackageShares {
            per_package,
            uniform: 0.0,
            note: None,
            detail: None,
            method: Some(format!(
                "Slurm's core allocation (cores {cores} of a {layout} node, layout from {from})"
            )),
        })),
        Err(e) => {
            let n = cores.len() as u32;
            let total = layout.cores().max(n);
            Some(Err(PackageShares {
                per_package: BTreeMap::new(),
                uniform: f64::from(n) / f64::from(total),
                note: Some(NOTE_LAYOUT.to_string()),
                detail: Some(format!(
                    "CPU and DRAM attributed by core count ({n} of {total} cores on every \
                     package): Slurm's cores {cores} cannot be placed on packages: {e}; make \
                     the node's NodeName line in slurm.conf give its real Sockets, \
                     CoresPerSocket and ThreadsPerCore (`slurmd -C` prints them)"
                )),
                method: Some(format!("core count ({n} of {total} cores)")),
            }))
        }
    }
}

/// The layout a topology has, when every package has the same cores.
fn hardware_layout(topo: &Topology) -> Option<NodeLayout> {
    let pkgs = topo.packages_in_order();
    let cores = topo.cores_on_package(*pkgs.first()?, 1);
    if cores == 0 || pkgs.iter().any(|&p| topo.cores_on_package(p, 1) != cores) {
        return None;
    }
    let cpus = topo.cpus() / pkgs.len();
    Some(NodeLayout {
        sockets: pkgs.len() as u32,
        cores_per_socket: cores as u32,
        threads_per_core: (cpus / cores).max(1) as u32,
    })
}

fn same_shares(a: &BTreeMap<u32, f64>, b: &BTreeMap<u32, f64>, topo: &Topology) -> bool {
    topo.packages_in_order().iter().all(|p| {
        let (x, y) = (
            a.get(p).copied().unwrap_or(0.0),
            b.get(p).copied().unwrap_or(0.0),
        );
        (x - y).abs() < 1e-9
    })
}

fn fmt_shares(m: &BTreeMap<u32, f64>) -> String {
    m.iter()
        .map(|(p, s)| format!("package-{p} {s:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a cpuset says which CPUs are the job's: it must hold an online
/// CPU, and not be the whole node while fewer CPUs were allocated (what an
/// unconstrained cgroup v2 job inherits).
fn meaningful_cpuset(set: &CpuSet, t: &Topology, allocated: Option<u32>) -> Result<(), String> {
    let known = set.iter().filter(|&c| t.package_of(c).is_some()).count() as u32;
    if known == 0 {
        return Err(format!("the job's cpuset ({set}) has no online CPU"));
    }
    if known == t.cpus() as u32 && allocated.is_some_and(|a| a < known) {
        return Err("the job's cpuset spans the whole node (cores not constrained)".to_string());
    }
    Ok(())
}

/// Chooses the attribution from a cpuset alone (`carbontrack run`): the
/// cpuset when there is a meaningful one, else allocated/node CPUs, else the
/// whole node.
///
/// A cpuset covering every CPU of the node while fewer CPUs were allocated is
/// what an unconstrained cgroup v2 job inherits, not the job's real CPUs, so
/// it falls back to the count.
pub fn attribute(
    cpuset: Result<&CpuSet, String>,
    topo: Option<&Topology>,
    allocated: Option<u32>,
) -> PackageShares {
    let node_cpus = topo.map(|t| t.cpus() as u32);
    match (cpuset, topo) {
        (Ok(set), Some(t)) => match meaningful_cpuset(set, t, allocated) {
            Ok(()) => package_shares(set, t),
            Err(why) => match allocated {
                Some(a) => shares_from_count(a, t.cpus() as u32, &why),
                None => whole_node_because(&why),
            },
        },
        (cpuset, _) => {
            let why = match cpuset {
                Err(e) => e,
                Ok(_) => "CPU topology unknown".to_string(),
            };
            match (allocated, node_cpus) {
                (Some(a), Some(n)) => shares_from_count(a, n, &why),
                _ => whole_node_because(&why),
            }
        }
    }
}

fn whole_node_because(why: &str) -> PackageShares {
    PackageShares {
        note: Some(NOTE_WHOLE_NODE.to_string()),
        detail: Some(format!(
            "every CPU package and its DRAM charged to the job in full: neither a cpuset nor \
             Slurm's core allocation for the job was found ({why}); {FIX}"
        )),
        method: Some("the whole node".to_string()),
        ..PackageShares::whole_node()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_1s_parent_cgroup_from_proc() {
        for (text, want) in [
            ("0::/init.scope\n", None),
            ("0::/\n", None),
            ("0::/docker.slice/docker-ab12.scope\n", Some("docker.slice")),
            ("0::/a/b/c.scope\n", Some("a/b")),
            // cgroup v1 or hybrid: Slurm's cgroup/v2 plugin refuses those.
            ("12:cpuset:/\n1:name=systemd:/init.scope\n", None),
            ("", None),
        ] {
            assert_eq!(init_parent(text), want.map(PathBuf::from), "{text:?}");
        }
    }

    #[test]
    fn finds_the_job_beside_pid_1s_cgroup_as_slurm_24_lays_it_out() {
        let root = std::env::temp_dir().join(format!("ct-cpuset-beside-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("docker.slice/system.slice/slurmstepd.scope/job_7");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cpuset.cpus.effective"), "2-3\n").unwrap();
        let parent = init_parent("0::/docker.slice/docker-ab12.scope\n");
        let found = job_cpuset_beside(&root, 7, None, parent.as_deref()).unwrap();
        assert_eq!(found.cpus, CpuSet::new([2, 3]));
        assert_eq!(found.path, dir.join("cpuset.cpus.effective"));
        // Not beside a PID 1 elsewhere: not found.
        assert!(job_cpuset_beside(&root, 7, None, None).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn parses_and_prints_cpu_lists() {
        let table: &[(&str, &[u32], &str)] = &[
            ("0-3,8,10-11\n", &[0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"),
            ("", &[], ""),
            ("\n", &[], ""),
            ("5", &[5], "5"),
            ("3,1,2,2", &[1, 2, 3], "1-3"),
            ("0-0,7-8", &[0, 7, 8], "0,7-8"),
        ];
        for &(text, cpus, shown) in table {
            let set: CpuSet = text.parse().unwrap();
            assert_eq!(set.iter().collect::<Vec<_>>(), cpus, "{text:?}");
            assert_eq!(set.to_string(), shown);
        }
        for bad in ["x", "3-1", "1,,2", "-1", "1-", "99999999"] {
            assert!(bad.parse::<CpuSet>().is_err(), "{bad}");
        }
    }

    fn topo(packages: &[(u32, std::ops::Range<u32>)]) -> Topology {
        let mut m = BTreeMap::new();
        for (p, cpus) in packages {
            for c in cpus.clone() {
                m.insert(c, *p);
            }
        }
        Topology::from_map(m)
    }

    #[test]
    fn shares_per_package() {
        // Two packages of 8 CPUs; interleaved numbering on a third layout.
        let two = topo(&[(0, 0..8), (1, 8..16)]);
        let table: &[(&str, f64, f64)] = &[
            ("0-3", 0.5, 0.0),
            ("0-7", 1.0, 0.0),
            ("6-9", 0.25, 0.25),
            ("0-15", 1.0, 1.0),
            ("15", 0.0, 0.125),
            ("16-20", 0.0, 0.0), // offline or unknown CPUs count for nothing
        ];
        for &(list, s0, s1) in table {
            let s = package_shares(&list.parse().unwrap(), &two);
            assert_eq!((s.share(0), s.share(1)), (s0, s1), "{list}");
            assert_eq!(s.share(7), 0.0, "a package the topology lacks");
            assert_eq!(s.note(), None);
        }
        let interleaved = Topology::from_map((0..8).map(|c| (c, c % 2)).collect());
        let s = package_shares(&"0-2".parse().unwrap(), &interleaved);
        assert_eq!((s.share(0), s.share(1)), (0.5, 0.25));
    }

    #[test]
    fn falls_back_to_count_and_says_so() {
        let s = shares_from_count(8, 64, "no cpuset");
        assert_eq!((s.share(0), s.share(3)), (0.125, 0.125));
        assert_eq!(s.note(), Some(NOTE_COUNT));
        assert!(s.detail().unwrap().contains("8 of 64"));
        assert_eq!(shares_from_count(99, 64, "x").share(0), 1.0);

        let t = topo(&[(0, 0..4), (1, 4..8)]);
        let all: CpuSet = "0-7".parse().unwrap();
        // Unconstrained v2 job: the whole node in its cpuset, 2 CPUs allocated.
        let s = attribute(Ok(&all), Some(&t), Some(2));
        assert_eq!((s.share(0), s.share(1)), (0.25, 0.25));
        assert_eq!(s.note(), Some(NOTE_COUNT));
        assert!(s.detail().unwrap().contains("spans the whole node"));
        // An exclusive job really has the whole node.
        let s = attribute(Ok(&all), Some(&t), Some(8));
        assert_eq!((s.share(0), s.share(1), s.note()), (1.0, 1.0, None));
        let s = attribute(Ok(&"1".parse().unwrap()), Some(&t), Some(1));
        assert_eq!((s.share(0), s.share(1), s.note()), (0.25, 0.0, None));
        let s = attribute(Err("no cgroup".into()), Some(&t), Some(4));
        assert_eq!(s.share(1), 0.5);
        assert!(s.detail().unwrap().contains("no cgroup"));
        let s = attribute(Err("no cgroup".into()), None, None);
        assert_eq!(s.share(0), 1.0);
        assert_eq!(s.note(), Some(NOTE_WHOLE_NODE));
        assert_eq!(PackageShares::whole_node().note(), None);
    }
}

/// The cpuset of the cgroup a process runs in, read from `/proc/<pid>/cgroup`
/// (`self_cgroup`) under `cgroup_root`: how `carbontrack run` inside a Slurm
/// allocation finds the CPUs it may use, with no Slurm involved.
///
/// cgroup v2 lists `0::/path` and the file is `cpuset.cpus.effective`; v1
/// lists `N:cpuset:/path` (or `cpuset,cpu…`) and the file is
/// `<root>/cpuset/<path>/cpuset.cpus`.
pub fn own_cpuset(cgroup_root: &Path, self_cgroup: &str) -> Result<JobCpuset, CpusetError> {
    let mut candidates = Vec::new();
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if ctrl.is_empty() {
            candidates.push(cgroup_root.join(rel).join("cpuset.cpus.effective"));
        } else if ctrl.split(',').any(|c| c == "cpuset") {
            candidates.push(cgroup_root.join("cpuset").join(rel).join("cpuset.cpus"));
        }
    }
    // v1 first: a hybrid host's v2 tree usually has no cpuset controller.
    candidates.sort_by_key(|p| p.ends_with("cpuset.cpus.effective"));
    for path in candidates {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let cpus = text
                .trim()
                .parse::<CpuSet>()
                .map_err(|source| CpusetError::Parse {
                    path: path.clone(),
                    source,
                })?;
            if !cpus.is_empty() {
                return Ok(JobCpuset { cpus, path });
            }
        }
    }
    Err(CpusetError::NoOwnCpuset {
        root: cgroup_root.to_path_buf(),
    })
}

#[cfg(test)]
mod own_cpuset_tests {
    use super::*;

    #[test]
    fn finds_the_cpuset_of_the_process_cgroup_in_v1_and_v2() {
        let root = std::env::temp_dir().join(format!("ct-own-cpuset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let v2 = root.join("v2/system.slice/slurmstepd.scope/job_7/step_0");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpuset.cpus.effective"), "2-3\n").unwrap();
        let got = own_cpuset(
            &root.join("v2"),
            "0::/system.slice/slurmstepd.scope/job_7/step_0\n",
        )
        .unwrap();
        assert_eq!(got.cpus, CpuSet::new([2, 3]));

        let v1 = root.join("v1/cpuset/slurm/uid_1/job_7/step_0");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cpuset.cpus"), "0,4\n").unwrap();
        let lines =
            "12:memory:/slurm/uid_1/job_7/step_0\n4:cpuset:/slurm/uid_1/job_7/step_0\n0::/\n";
        assert_eq!(
            own_cpuset(&root.join("v1"), lines).unwrap().cpus,
            CpuSet::new([0, 4])
        );

        assert!(matches!(
            own_cpuset(&root.join("v1"), "0::/elsewhere\n"),
            Err(CpusetError::NoOwnCpuset { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
mod proc_cgroup_tests {
    use super::*;

    /// Writes `files` (path relative to `root`, content) under a fresh root.
    fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("ct-proc-cg-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (path, text) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        root
    }

    /// A cgroup v2 node as Slurm 23.02 and later lay it out (captured from
    /// the layout of `cgroup_v2.html` and src/plugins/cgroup/v2): the
    /// scope's `system` holds slurmstepd's infinity process, each job has
    /// `step_extern/{slurm,user/task_special}` and numbered steps
    /// `step_N/{slurm,user/task_N}`; a job's `cpuset.cpus` is written, its
    /// steps' are empty and inherit, and only `cpuset.cpus.effective` is the
    /// truth everywhere. A second job sits beside it.
    fn v2_node(scope: &str, job: &str) -> Vec<(String, String)> {
        let s = format!("system.slice/{scope}");
        let mut v = vec![
            (
                "cgroup.controllers".into(),
                "cpuset cpu io memory pids\n".into(),
            ),
            (
                "cgroup.subtree_control".into(),
                "cpuset cpu io memory pids\n".into(),
            ),
            ("cpuset.cpus.effective".into(), "0-7\n".into()),
            (
                "system.slice/slurmd.service/cgroup.procs".into(),
                "812\n".into(),
            ),
            (
                format!("{s}/cgroup.subtree_control"),
                "cpuset cpu memory\n".into(),
            ),
            (format!("{s}/system/cgroup.procs"), "977\n".into()),
            (format!("{s}/cpuset.cpus.effective"), "0-7\n".into()),
            (format!("{s}/job_43/cpuset.cpus"), "0-1\n".into()),
            (format!("{s}/job_43/cpuset.cpus.effective"), "0-1\n".into()),
            (format!("{s}/{job}/cpuset.cpus"), "2-3,6\n".into()),
            (format!("{s}/{job}/cpuset.cpus.effective"), "2-3,6\n".into()),
        ];
        for step in ["step_extern", "step_batch", "step_0"] {
            let task = match step {
                "step_extern" => "task_special",
                "step_batch" => "task_0",
                _ => "task_0",
            };
            v.push((format!("{s}/{job}/{step}/cpuset.cpus"), "\n".into()));
            v.push((
                format!("{s}/{job}/{step}/cpuset.cpus.effective"),
                "2-3,6\n".into(),
            ));
            v.push((
                format!("{s}/{job}/{step}/slurm/cgroup.procs"),
                "1201\n".into(),
            ));
            v.push((
                format!("{s}/{job}/{step}/user/{task}/cgroup.procs"),
                "1210\n".into(),
            ));
        }
        // A numbered step may have fewer CPUs than the job: the job's count.
        v.push((
            format!("{s}/{job}/step_0/cpuset.cpus.effective"),
            "2\n".into(),
        ));
        v
    }

    fn v1_node(base: &str) -> Vec<(String, String)> {
        let j = format!("cpuset/{base}/uid_1001/job_42");
        vec![
            ("cpuset/cpuset.cpus".into(), "0-7\n".into()),
            (format!("cpuset/{base}/cpuset.cpus"), "0-7\n".into()),
            (
                format!("cpuset/{base}/uid_1001/cpuset.cpus"),
                "0-7\n".into(),
            ),
            (
                format!("cpuset/{base}/uid_1001/job_43/cpuset.cpus"),
                "0-1\n".into(),
            ),
            (format!("{j}/cpuset.cpus"), "2-3,6\n".into()),
            (format!("{j}/step_extern/cpuset.cpus"), "2-3,6\n".into()),
            (format!("{j}/step_batch/cpuset.cpus"), "2-3,6\n".into()),
        ]
    }

    #[test]
    fn the_jobs_own_cgroup_leads_to_its_cpuset_in_every_layout() {
        let sluid = "sEKNKTV3WPV500";
        type Files = Vec<(String, String)>;
        let table: Vec<(&str, Files, String, &str)> = vec![
            (
                "v1",
                v1_node("slurm"),
                "12:memory:/slurm/uid_1001/job_42/step_extern\n\
                 5:cpuset:/slurm/uid_1001/job_42/step_extern\n\
                 1:name=systemd:/system.slice/slurmd.service\n0::/system.slice/slurmd.service\n"
                    .into(),
                "cpuset/slurm/uid_1001/job_42/cpuset.cpus",
            ),
            (
                "v1-multiple-slurmd",
                v1_node("slurm_n7"),
                "5:cpuset,cpu:/slurm_n7/uid_1001/job_42/step_batch\n".into(),
                "cpuset/slurm_n7/uid_1001/job_42/cpuset.cpus",
            ),
            (
                "v2",
                v2_node("slurmstepd.scope", "job_42"),
                "0::/system.slice/slurmstepd.scope/job_42/step_extern/slurm\n".into(),
                "system.slice/slurmstepd.scope/job_42/cpuset.cpus.effective",
            ),
            (
                "v2-task",
                v2_node("slurmstepd.scope", "job_42"),
                "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n".into(),
                "system.slice/slurmstepd.scope/job_42/cpuset.cpus.effective",
            ),
            (
                "v2-multiple-slurmd",
                v2_node("n7_slurmstepd.scope", "job_42"),
                "0::/system.slice/n7_slurmstepd.scope/job_42/step_extern/slurm\n".into(),
                "system.slice/n7_slurmstepd.scope/job_42/cpuset.cpus.effective",
            ),
            (
                "v2-26.05-sluid",
                v2_node("slurmstepd.scope", sluid),
                format!(
                    "0::/system.slice/slurmstepd.scope/{sluid}/step_extern/user/task_special\n"
                ),
                "system.slice/slurmstepd.scope/sEKNKTV3WPV500/cpuset.cpus.effective",
            ),
        ];
        for (name, files, proc_text, want) in table {
            let files: Vec<(&str, &str)> = files
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let root = tree(name, &files);
            let got = job_cpuset_from_proc(&root, &proc_text, 42)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.cpus, CpuSet::new([2, 3, 6]), "{name}");
            assert_eq!(got.path, root.join(want), "{name}");
            // Another job's id in the path is never taken for this job (a
            // SLUID names no job id: the process's own cgroup is its job's).
            if !name.contains("sluid") {
                assert!(
                    job_cpuset_from_proc(&root, &proc_text, 43).is_err(),
                    "{name}"
                );
            }
            fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn the_job_directory_is_found_in_a_path_and_only_there() {
        for (path, want) in [
            ("/slurm/uid_1/job_42/step_0", Some("slurm/uid_1/job_42")),
            (
                "/system.slice/slurmstepd.scope/job_42/step_extern/slurm",
                Some("system.slice/slurmstepd.scope/job_42"),
            ),
            (
                "/system.slice/slurmstepd.scope/sABC/step_0/user/task_0",
                Some("system.slice/slurmstepd.scope/sABC"),
            ),
            (
                "/docker.slice/system.slice/slurmstepd.scope/job_42/step_1",
                Some("docker.slice/system.slice/slurmstepd.scope/job_42"),
            ),
            // slurmstepd's own infinity process, slurmd, another job: not the job.
            ("/system.slice/slurmstepd.scope/system", None),
            ("/system.slice/slurmd.service", None),
            ("/system.slice/slurmstepd.scope/job_7/step_0", None),
            ("/", None),
        ] {
            assert_eq!(job_dir_in(path, 42), want.map(PathBuf::from), "{path}");
        }
    }

    #[test]
    fn the_search_finds_the_captured_v2_tree_too_and_agrees() {
        let files = v2_node("slurmstepd.scope", "job_42");
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let root = tree("v2-search", &files);
        let searched = job_cpuset_beside(&root, 42, None, None).unwrap();
        let own = job_cpuset_from_proc(
            &root,
            "0::/system.slice/slurmstepd.scope/job_42/step_extern/slurm\n",
            42,
        )
        .unwrap();
        assert_eq!(searched, own);
        // A pid whose cgroup is not the job's falls back to the search.
        let (found, via) = find_job_cpuset(&root, 42, None, &[std::process::id()]).unwrap();
        assert_eq!(
            (found, via.as_str()),
            (own, "the search of Slurm's layouts")
        );
        fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
mod attribute_job_tests {
    use super::*;

    fn topo(cpus: &[(u32, u32)]) -> Topology {
        Topology::from_cpus(cpus.iter().map(|&(c, p)| (c, p, Some(c))))
    }

    #[test]
    fn the_best_evidence_wins_and_the_cpuset_is_checked_against_the_cores() {
        // The cgroup cluster's fixture (CPU N on package N), Slurm's 2x1x1.
        let apart = topo(&[(0, 0), (1, 1)]);
        // This machine: one package of two CPUs.
        let one = topo(&[(0, 0), (1, 0)]);
        let slurm = NodeLayout {
            sockets: 2,
            cores_per_socket: 1,
            threads_per_core: 1,
        };
        let four = NodeLayout {
            sockets: 4,
            cores_per_socket: 1,
            threads_per_core: 1,
        };
        let cpuset_1 = JobCpuset {
            cpus: "1".parse().unwrap(),
            path: "/cg/job_1/cpuset.cpus".into(),
        };
        let whole = JobCpuset {
            cpus: "0-1".parse().unwrap(),
            path: "/cg/system.slice/slurmstepd.scope/job_1/cpuset.cpus.effective".into(),
        };
        let core = |s: &str| s.parse::<CpuSet>().unwrap();
        let (c0, c1, c01) = (core("0"), core("1"), core("0-1"));
        let none: Result<&JobCpuset, &str> = Err("no cpuset");
        struct Case<'a> {
            name: &'a str,
            e: Evidence<'a>,
            shares: (f64, f64),
            note: Option<&'a str>,
            method: &'a str,
            disagree: bool,
        }
        let ev = |cpuset, cores, layout, topo, allocated| Evidence {
            cpuset,
            cpuset_via: None,
            cores,
            layout,
            topo,
            allocated,
        };
        let cases = [
            Case {
                name: "cpuset and cores agree",
                e: ev(Ok(&cpuset_1), Some(&c1), Ok(&slurm), Some(&apart), Some(1)),
                shares: (0.0, 1.0),
                note: None,
                method: "which Slurm's core allocation (1) confirms",
                disagree: false,
            },
            Case {
                name: "cpuset and cores disagree: the cpuset is used",
                e: ev(Ok(&cpuset_1), Some(&c0), Ok(&slurm), Some(&apart), Some(1)),
                shares: (0.0, 1.0),
                note: None,
                method: "the job's cpuset (/cg/job_1/cpuset.cpus: 1)",
                disagree: true,
            },
            Case {
                name: "an unconstrained cpuset (the whole node) gives way to the cores",
                e: ev(Ok(&whole), Some(&c1), Ok(&slurm), Some(&apart), None),
                shares: (0.0, 1.0),
                note: None,
                method: "Slurm's core allocation (cores 1 of a 2x1x1 node",
                disagree: false,
            },
            Case {
                name: "no cpuset: Slurm's cores on their own package",
                e: ev(none, Some(&c1), Ok(&slurm), Some(&apart), None),
                shares: (0.0, 1.0),
                note: None,
                method: "Slurm's core allocation (cores 1 of a 2x1x1 node, layout from slurm.conf)",
                disagree: false,
            },
            Case {
                name: "no cpuset, one package: half of it",
                e: ev(none, Some(&c0), Ok(&slurm), Some(&one), None),
                shares: (0.5, 0.5),
                note: None,
                method: "Slurm's core allocation (cores 0",
                disagree: false,
            },
            Case {
                name: "exclusive: the whole package",
                e: ev(none, Some(&c01), Ok(&slurm), Some(&one), None),
                shares: (1.0, 1.0),
                note: None,
                method: "cores 0-1",
                disagree: false,
            },
            Case {
                name: "layout unknown: the topology's own",
                e: ev(none, Some(&c1), Err("no NodeName line"), Some(&apart), None),
                shares: (0.0, 1.0),
                note: None,
                method: "layout from the CPU topology",
                disagree: false,
            },
            Case {
                name: "layout that does not fit: core count",
                e: ev(none, Some(&c1), Ok(&four), Some(&apart), None),
                shares: (0.25, 0.25),
                note: Some(NOTE_LAYOUT),
                method: "core count (1 of 4 cores)",
                disagree: false,
            },
            Case {
                name: "nothing but a CPU count",
                e: ev(none, None, Ok(&slurm), Some(&one), Some(1)),
                shares: (0.5, 0.5),
                note: Some(NOTE_COUNT),
                method: "CPU count (1 of 2 CPUs)",
                disagree: false,
            },
            Case {
                name: "nothing at all",
                e: ev(none, None, Err("?"), Some(&one), None),
                shares: (1.0, 1.0),
                note: Some(NOTE_WHOLE_NODE),
                method: "the whole node",
                disagree: false,
            },
        ];
        for c in cases {
            let a = attribute_job(&c.e);
            let s = &a.shares;
            let pkg1 = if c.e.topo.is_some_and(|t| t.packages_in_order().len() == 2) {
                1
            } else {
                0
            };
            assert_eq!((s.share(0), s.share(pkg1)), c.shares, "{}", c.name);
            assert_eq!(s.note(), c.note, "{}", c.name);
            assert_eq!(s.detail().is_some(), c.note.is_some(), "{}", c.name);
            assert!(
                s.method().unwrap().contains(c.method),
                "{}: {:?}",
                c.name,
                s.method()
            );
            assert_eq!(a.disagreement.is_some(), c.disagree, "{}", c.name);
        }
    }
}
