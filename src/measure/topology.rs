//! The node's CPUs as the kernel lists them: sets of logical CPU numbers
//! (`0-3,8`) and which package (and core) each online CPU sits on
//! (`cpuN/topology/`). What both ways of attributing a package to a job
//! start from: the job's cpuset ([`super::cpuset`]) and Slurm's core
//! allocation ([`super::cores`]).

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

/// Which package each online CPU belongs to, and which core of it where the
/// topology says (`topology/core_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    package_of: BTreeMap<u32, u32>,
    /// `(package, core_id)` per CPU; empty when any CPU lacks a core id.
    core_of: BTreeMap<u32, (u32, u32)>,
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
    /// CPU -> package, without core ids.
    pub fn from_map(package_of: BTreeMap<u32, u32>) -> Topology {
        Topology {
            package_of,
            core_of: BTreeMap::new(),
        }
    }

    /// `(cpu, package, core_id)`; core ids are kept only when every CPU has one.
    pub fn from_cpus(cpus: impl IntoIterator<Item = (u32, u32, Option<u32>)>) -> Topology {
        let mut package_of = BTreeMap::new();
        let mut core_of = BTreeMap::new();
        let mut all_ids = true;
        for (cpu, pkg, core) in cpus {
            package_of.insert(cpu, pkg);
            match core {
                Some(k) => {
                    core_of.insert(cpu, (pkg, k));
                }
                None => all_ids = false,
            }
        }
        if !all_ids {
            core_of.clear();
        }
        Topology {
            package_of,
            core_of,
        }
    }

    /// Packages ordered by their lowest CPU number: the order in which hwloc,
    /// and so slurmd, numbers sockets.
    pub fn packages_in_order(&self) -> Vec<u32> {
        let mut first: BTreeMap<u32, u32> = BTreeMap::new();
        for (&cpu, &p) in &self.package_of {
            first.entry(p).or_insert(cpu);
        }
        let mut v: Vec<(u32, u32)> = first.into_iter().map(|(p, cpu)| (cpu, p)).collect();
        v.sort_unstable();
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Cores on package `p`: distinct core ids where known, else its CPUs
    /// over `threads_per_core` (Slurm's figure, for a topology without ids).
    pub fn cores_on_package(&self, p: u32, threads_per_core: u32) -> usize {
        if self.core_of.is_empty() {
            let cpus = self.package_of.values().filter(|&&q| q == p).count();
            return cpus / threads_per_core.max(1) as usize;
        }
        let mut ids: Vec<u32> = self
            .core_of
            .values()
            .filter(|(q, _)| *q == p)
            .map(|&(_, k)| k)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// `2 packages (4+4 CPUs, 2+2 cores)`, for messages.
    pub fn describe(&self) -> String {
        let order = self.packages_in_order();
        let cpus: Vec<String> = order
            .iter()
            .map(|&p| {
                self.package_of
                    .values()
                    .filter(|&&q| q == p)
                    .count()
                    .to_string()
            })
            .collect();
        let mut s = format!(
            "{} package{} ({} CPUs",
            order.len(),
            if order.len() == 1 { "" } else { "s" },
            cpus.join("+")
        );
        if !self.core_of.is_empty() {
            let cores: Vec<String> = order
                .iter()
                .map(|&p| self.cores_on_package(p, 1).to_string())
                .collect();
            s += &format!(", {} cores", cores.join("+"));
        }
        s.push(')');
        s
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
    let mut cpus = Vec::new();
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
        let core = fs::read_to_string(entry.path().join("topology/core_id"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        cpus.push((cpu, u32::try_from(pkg).unwrap_or(0), core));
    }
    if cpus.is_empty() {
        return Err(TopologyError::Empty(topology_root.to_path_buf()));
    }
    Ok(Topology::from_cpus(cpus))
}
