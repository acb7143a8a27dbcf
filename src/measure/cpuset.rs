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
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A set of logical CPU numbers, kept sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSet(Vec<u32>);

/// A malformed kernel CPU list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{list}` is not a CPU list like `0-3,8,10-11`: {why}")]
pub struct CpuListError {
    list: String,
    why: &'static str,
}

/// Upper bound on a single CPU number, far above any real machine, so that a
/// corrupted file cannot make us allocate gigabytes.
const MAX_CPU: u32 = 1 << 20;

impl CpuSet {
    pub fn new(cpus: impl IntoIterator<Item = u32>) -> CpuSet {
        let mut v: Vec<u32> = cpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        CpuSet(v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.binary_search(&cpu).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    /// The kernel's list format (`cpuset.cpus`, `cpus.effective`): ranges and
    /// single CPUs separated by commas; an empty list is an empty set.
    fn from_str(s: &str) -> Result<CpuSet, CpuListError> {
        let err = |why| CpuListError {
            list: s.to_string(),
            why,
        };
        let t = s.trim();
        let mut cpus = Vec::new();
        if t.is_empty() {
            return Ok(CpuSet(cpus));
        }
        for part in t.split(',') {
            let num = |x: &str| -> Result<u32, CpuListError> {
                let n: u32 = x.trim().parse().map_err(|_| err("not a number"))?;
                if n > MAX_CPU {
                    return Err(err("CPU number out of range"));
                }
                Ok(n)
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(err("range runs backwards"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(num(part)?),
            }
        }
        Ok(CpuSet::new(cpus))
    }
}

impl fmt::Display for CpuSet {
    /// The kernel's compact list form, so notes and logs read like the files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.0.len() {
            let a = self.0[i];
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j == i {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{}", self.0[j])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// Why the job's cpuset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CpusetError {
    #[error(
        "no cpuset for job {job_id} under {root} (looked for Slurm's cgroup v2 \
         `system.slice/*slurmstepd.scope/job_{job_id}` and v1 \
         `cpuset/slurm*/uid_*/job_{job_id}`; is ConstrainCores=yes set in cgroup.conf?)"
    )]
    NotFound { root: PathBuf, job_id: u32 },
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

/// Which package each online CPU belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    package_of: BTreeMap<u32, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot list CPUs in {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("no CPU with topology/physical_package_id under {0}")]
    Empty(PathBuf),
    #[error("{path}: `{text}` is not a package id")]
    Parse { path: PathBuf, text: String },
}

impl Topology {
    pub fn from_map(package_of: BTreeMap<u32, u32>) -> Topology {
        Topology { package_of }
    }

    pub fn package_of(&self, cpu: u32) -> Option<u32> {
        self.package_of.get(&cpu).copied()
    }

    /// Number of online CPUs on the node.
    pub fn cpus(&self) -> usize {
        self.package_of.len()
    }

    /// Number of online CPUs per package.
    pub fn cpus_per_package(&self) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for &p in self.package_of.values() {
            *m.entry(p).or_insert(0) += 1;
        }
        m
    }
}

/// Reads `<topology_root>/cpuN/topology/physical_package_id` for every CPU.
///
/// Offline CPUs have no `topology` directory and are left out, so they count
/// neither for the job nor for the package.
pub fn package_of_cpus(topology_root: &Path) -> Result<Topology, TopologyError> {
    let rd = fs::read_dir(topology_root).map_err(|source| TopologyError::List {
        path: topology_root.to_path_buf(),
        source,
    })?;
    let mut package_of = BTreeMap::new();
    for entry in rd.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(cpu) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path().join("topology/physical_package_id");
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        // The kernel prints -1 when firmware gives no package: treat as 0, the
        // only package such a machine can have.
        let pkg: i64 = text.trim().parse().map_err(|_| TopologyError::Parse {
            path: path.clone(),
            text: text.trim().to_string(),
        })?;
        package_of.insert(cpu, u32::try_from(pkg).unwrap_or(0));
    }
    if package_of.is_empty() {
        return Err(TopologyError::Empty(topology_root.to_path_buf()));
    }
    Ok(Topology { package_of })
}

/// The fraction of each package (and its DRAM) attributed to the job.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageShares {
    /// Explicit shares from a cpuset; packages not listed get `uniform`.
    per_package: BTreeMap<u32, f64>,
    /// The share of any package not in `per_package`.
    uniform: f64,
    /// Set when the shares are an approximation the report must mention.
    note: Option<String>,
}

impl PackageShares {
    /// The whole node belongs to the job (`carbontrack run` on a workstation,
    /// an exclusive node).
    pub fn whole_node() -> PackageShares {
        PackageShares {
            per_package: BTreeMap::new(),
            uniform: 1.0,
            note: None,
        }
    }

    /// Share of package `pkg`: 0 means the job has no CPU there.
    pub fn share(&self, pkg: u32) -> f64 {
        self.per_package.get(&pkg).copied().unwrap_or(self.uniform)
    }

    /// Why the shares are approximate, when they are.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Packages known to hold some of the job's CPUs (empty for the uniform
    /// shares of the fallbacks, which apply to whatever packages exist).
    pub fn job_packages(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.per_package
            .iter()
            .filter(|&(_, &s)| s > 0.0)
            .map(|(&p, &s)| (p, s))
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
    }
}

/// The fallback without a cpuset: allocated CPUs / node CPUs on every package.
/// `why` says why there was no cpuset; it ends up in the status.
pub fn shares_from_count(allocated: u32, node_cpus: u32, why: &str) -> PackageShares {
    let share = if node_cpus == 0 {
        1.0
    } else {
        (f64::from(allocated) / f64::from(node_cpus)).clamp(0.0, 1.0)
    };
    PackageShares {
        per_package: BTreeMap::new(),
        uniform: share,
        note: Some(format!(
            "attributed by CPU count ({allocated} of {node_cpus} CPUs on every package): {why}"
        )),
    }
}

/// Chooses the attribution for a job: its cpuset when there is a meaningful
/// one, else allocated/node CPUs, else the whole node.
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
        (Ok(set), Some(t)) => {
            let known = set.iter().filter(|&c| t.package_of(c).is_some()).count() as u32;
            let unconstrained = known == t.cpus() as u32 && allocated.is_some_and(|a| a < known);
            if !unconstrained && known > 0 {
                return package_shares(set, t);
            }
            let why = if known == 0 {
                format!("the job's cpuset ({set}) has no online CPU")
            } else {
                "the job's cpuset spans the whole node (cores not constrained)".to_string()
            };
            match allocated {
                Some(a) => shares_from_count(a, t.cpus() as u32, &why),
                None => whole_node_because(&why),
            }
        }
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
        note: Some(format!(
            "whole node attributed to the job (allocated CPU count unknown): {why}"
        )),
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
        assert!(s.note().unwrap().contains("8 of 64"));
        assert_eq!(shares_from_count(99, 64, "x").share(0), 1.0);

        let t = topo(&[(0, 0..4), (1, 4..8)]);
        let all: CpuSet = "0-7".parse().unwrap();
        // Unconstrained v2 job: the whole node in its cpuset, 2 CPUs allocated.
        let s = attribute(Ok(&all), Some(&t), Some(2));
        assert_eq!((s.share(0), s.share(1)), (0.25, 0.25));
        assert!(s.note().unwrap().contains("spans the whole node"));
        // An exclusive job really has the whole node.
        let s = attribute(Ok(&all), Some(&t), Some(8));
        assert_eq!((s.share(0), s.share(1), s.note()), (1.0, 1.0, None));
        let s = attribute(Ok(&"1".parse().unwrap()), Some(&t), Some(1));
        assert_eq!((s.share(0), s.share(1), s.note()), (0.25, 0.0, None));
        let s = attribute(Err("no cgroup".into()), Some(&t), Some(4));
        assert_eq!(s.share(1), 0.5);
        assert!(s.note().unwrap().contains("no cgroup"));
        let s = attribute(Err("no cgroup".into()), None, None);
        assert_eq!(s.share(0), 1.0);
        assert!(s.note().unwrap().starts_with("whole node"));
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
