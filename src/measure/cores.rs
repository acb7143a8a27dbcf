//! The job's CPU share from Slurm's own core allocation, for nodes without a
//! cpuset (no `ConstrainCores`, `task/none` or `task/affinity` only).
//!
//! # Where the cores come from
//! `spank_get_item(S_JOB_ALLOC_CORES)` in a step (the extern step included,
//! with no cgroup plugin at all) lists the job's cores on this node, e.g.
//! `0-3,8`. The numbers are Slurm's abstract core ids, socket-major: core `c`
//! is core `c % CoresPerSocket` of socket `c / CoresPerSocket` of the node's
//! slurm.conf layout (`Sockets` × `CoresPerSocket`, each core with
//! `ThreadsPerCore` CPUs), not OS CPU numbers.
//!
//! # How they become shares
//! Slurm's socket `s` is the `s`-th package of the node, packages ordered by
//! their lowest CPU number (hwloc's logical order, which slurmd's own
//! abstract-to-machine map follows). The share of that package is the job's
//! cores on socket `s` over `CoresPerSocket`: the same fraction as its CPUs
//! over the package's CPUs, threads included, since every core has the same
//! number of threads. This is used only when the layout agrees with the CPU
//! topology the plugin reads (`cpu_topology=`): as many packages as sockets,
//! each with `CoresPerSocket` cores. A node of one package needs only the
//! total to agree (every core is on that package, however slurm.conf splits
//! them into sockets: `CPUs=2` alone means two sockets of one core to Slurm).
//! A layout that disagrees leaves the count share (cores over the node's
//! cores, on every package), which the status calls approximate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::measure::topology::{CpuSet, Topology};

/// A node's CPUs as Slurm numbers them (slurm.conf's `NodeName` line, after
/// Slurm's own inference of what the line leaves out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLayout {
    /// All sockets of the node (`Boards` × `SocketsPerBoard`, or `Sockets`).
    pub sockets: u32,
    pub cores_per_socket: u32,
    pub threads_per_core: u32,
}

impl NodeLayout {
    /// Cores on the node: the range of Slurm's core ids.
    pub fn cores(&self) -> u32 {
        self.sockets * self.cores_per_socket
    }
}

impl fmt::Display for NodeLayout {
    /// `2x16x2`: sockets, cores per socket, threads per core, as `sinfo -o %z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}x{}",
            self.sockets, self.cores_per_socket, self.threads_per_core
        )
    }
}

/// A layout that is not `SxCxT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a node layout like `2x16x2` (sockets x cores per socket x threads per core)")]
pub struct LayoutParseError(String);

impl FromStr for NodeLayout {
    type Err = LayoutParseError;

    fn from_str(s: &str) -> Result<NodeLayout, LayoutParseError> {
        let n: Vec<u32> = s
            .split('x')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| LayoutParseError(s.to_string()))?;
        match n[..] {
            [s, c, t] if s > 0 && c > 0 && t > 0 => Ok(NodeLayout {
                sockets: s,
                cores_per_socket: c,
                threads_per_core: t,
            }),
            _ => Err(LayoutParseError(s.to_string())),
        }
    }
}

/// Why the node's layout could not be read from slurm.conf.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no NodeName line for node `{node}` in {path} (nor in the files it includes)")]
    NoNode { node: String, path: PathBuf },
    #[error("{path}: NodeName line for `{node}`: `{key}={value}` is not a number")]
    BadValue {
        path: PathBuf,
        node: String,
        key: String,
        value: String,
    },
}

/// How deep `Include` lines are followed (Slurm itself allows a few levels).
const MAX_INCLUDE_DEPTH: u32 = 4;

/// The layout of `node` from the slurm.conf at `path`, following `Include`
/// lines (relative ones from the file's directory).
pub fn node_layout(path: &Path, node: &str) -> Result<NodeLayout, LayoutError> {
    let mut defaults = BTreeMap::new();
    match find_node(path, node, &mut defaults, 0)? {
        Some(keys) => layout_of(&keys).map_err(|(key, value)| LayoutError::BadValue {
            path: path.to_path_buf(),
            node: node.to_string(),
            key,
            value,
        }),
        None => Err(LayoutError::NoNode {
            node: node.to_string(),
            path: path.to_path_buf(),
        }),
    }
}

/// The keys of `node`'s line (with the `NodeName=DEFAULT` keys before it), in
/// lower case, or `None` when no line names the node.
fn find_node(
    path: &Path,
    node: &str,
    defaults: &mut BTreeMap<String, String>,
    depth: u32,
) -> Result<Option<BTreeMap<String, String>>, LayoutError> {
    let text = std::fs::read_to_string(path).map_err(|source| LayoutError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(inc) = strip_prefix_ignore_case(line, "include ") {
            if depth >= MAX_INCLUDE_DEPTH {
                continue;
            }
            let inc = Path::new(inc.trim());
            let inc = if inc.is_absolute() {
                inc.to_path_buf()
            } else {
                path.parent().unwrap_or(Path::new("/")).join(inc)
            };
            // An include that cannot be read is Slurm's problem to report;
            // the node may still be in this file.
            if let Ok(Some(found)) = find_node(&inc, node, defaults, depth + 1) {
                return Ok(Some(found));
            }
            continue;
        }
        if let Some(keys) = node_line_keys(line) {
            let names = keys.get("nodename").cloned().unwrap_or_default();
            if names.eq_ignore_ascii_case("default") {
                defaults.extend(keys.into_iter().filter(|(k, _)| k != "nodename"));
                continue;
            }
            if names_include(&names, node) {
                let mut all = defaults.clone();
                all.extend(keys);
                return Ok(Some(all));
            }
        }
    }
    Ok(None)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `key=value` pairs of a `NodeName=` line, keys in lower case.
fn node_line_keys(line: &str) -> Option<BTreeMap<String, String>> {
    let first = line.split_whitespace().next()?;
    let (k, _) = first.split_once('=')?;
    if !k.eq_ignore_ascii_case("nodename") {
        return None;
    }
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect(),
    )
}

/// Whether a `NodeName=` host list names `node`.
fn names_include(names: &str, node: &str) -> bool {
    crate::hostlist::expand(names).is_ok_and(|v| v.iter().any(|n| n == node))
}

/// Slurm's inference for a `NodeName` line (src/common/read_config.c,
/// 22.05 to 24.11 alike): `CoresPerSocket` and `ThreadsPerCore` default to
/// 1; a missing socket count is `SocketsPerBoard` × `Boards`, else `CPUs` /
/// (cores × threads), else `Boards` (1); with only `CPUs=` and `Sockets=`
/// given, the sockets are the CPUs.
fn layout_of(keys: &BTreeMap<String, String>) -> Result<NodeLayout, (String, String)> {
    let num = |k: &str| -> Result<Option<u32>, (String, String)> {
        match keys.get(k) {
            None => Ok(None),
            Some(v) => v
                .parse::<u32>()
                .map(Some)
                .map_err(|_| (k.to_string(), v.clone())),
        }
    };
    let cpus = match num("cpus")? {
        Some(c) => Some(c),
        None => num("procs")?,
    };
    let boards = num("boards")?.filter(|&b| b > 0).unwrap_or(1);
    let per_board = num("socketsperboard")?.filter(|&s| s > 0);
    let sockets_given = num("sockets")?.filter(|&s| s > 0);
    let cores_given = num("corespersocket")?.filter(|&c| c > 0);
    let threads_given = num("threadspercore")?.filter(|&t| t > 0);
    let cores = cores_given.unwrap_or(1);
    let threads = threads_given.unwrap_or(1);
    let mut sockets = match (per_board, sockets_given, cpus) {
        (Some(pb), _, _) => boards * pb,
        (None, Some(s), _) => s,
        (None, None, Some(c)) if c / (cores * threads) > 0 => c / (cores * threads),
        _ => boards,
    };
    if let (Some(c), Some(_), None, None) = (cpus, sockets_given, cores_given, threads_given)
        && c != sockets
    {
        sockets = c;
    }
    Ok(NodeLayout {
        sockets: sockets.max(1),
        cores_per_socket: cores,
        threads_per_core: threads,
    })
}

/// Why Slurm's cores could not be placed on packages exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreMapError {
    #[error("core {core} is beyond the {cores} cores of the layout {layout}")]
    OutOfRange {
        core: u32,
        cores: u32,
        layout: NodeLayout,
    },
    #[error("slurm.conf says {layout} but the CPU topology has {topology}")]
    Mismatch {
        layout: NodeLayout,
        topology: String,
    },
    #[error("the core allocation is empty")]
    Empty,
}

/// The share of each package from Slurm's core ids (see the module docs).
/// Every package of the topology gets an entry, 0 where the job has no core.
pub fn package_shares_from_cores(
    cores: &CpuSet,
    layout: &NodeLayout,
    topo: &Topology,
) -> Result<BTreeMap<u32, f64>, CoreMapError> {
    if cores.is_empty() {
        return Err(CoreMapError::Empty);
    }
    let total = layout.cores();
    if let Some(core) = cores.iter().find(|&c| c >= total) {
        return Err(CoreMapError::OutOfRange {
            core,
            cores: total,
            layout: *layout,
        });
    }
    let packages = topo.packages_in_order();
    let cores_on = |p: u32| topo.cores_on_package(p, layout.threads_per_core);
    if packages.len() == layout.sockets as usize
        && packages
            .iter()
            .all(|&p| cores_on(p) == layout.cores_per_socket as usize)
    {
        let per = layout.cores_per_socket;
        return Ok(packages
            .iter()
            .enumerate()
            .map(|(s, &p)| {
                let mine = cores.iter().filter(|&c| c / per == s as u32).count();
                (p, mine as f64 / f64::from(per))
            })
            .collect());
    }
    if let [only] = packages[..]
        && cores_on(only) == total as usize
    {
        return Ok(BTreeMap::from([(
            only,
            cores.len() as f64 / f64::from(total),
        )]));
    }
    Err(CoreMapError::Mismatch {
        layout: *layout,
        topology: topo.describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(line: &str) -> BTreeMap<String, String> {
        node_line_keys(line).unwrap()
    }

    #[test]
    fn slurm_infers_the_layout_as_read_config_does() {
        let table: &[(&str, &str)] = &[
            // The test clusters' line: two sockets of one core to Slurm.
            ("NodeName=vm CPUs=2 RealMemory=100", "2x1x1"),
            (
                "NodeName=n Sockets=2 CoresPerSocket=16 ThreadsPerCore=2",
                "2x16x2",
            ),
            (
                "NodeName=n CPUs=64 CoresPerSocket=16 ThreadsPerCore=2",
                "2x16x2",
            ),
            (
                "NodeName=n CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=8",
                "1x8x1",
            ),
            (
                "NodeName=n Boards=2 SocketsPerBoard=2 CoresPerSocket=4",
                "4x4x1",
            ),
            // Only CPUs and Sockets: Slurm sets Sockets to CPUs.
            ("NodeName=n CPUs=4 Sockets=2", "4x1x1"),
            ("NodeName=n", "1x1x1"),
            ("NodeName=n Procs=6", "6x1x1"),
            // Keys are case-insensitive.
            (
                "nodename=n cpus=32 corespersocket=8 threadspercore=2",
                "2x8x2",
            ),
        ];
        for &(line, want) in table {
            let got = layout_of(&keys(line)).unwrap();
            assert_eq!(got.to_string(), want, "{line}");
            assert_eq!(got, want.parse().unwrap());
        }
        assert_eq!(
            layout_of(&keys("NodeName=n CPUs=lots")),
            Err(("cpus".into(), "lots".into()))
        );
        for bad in ["2x2", "0x1x1", "axbxc", ""] {
            assert!(bad.parse::<NodeLayout>().is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_nodes_line_through_defaults_host_lists_and_includes() {
        let dir = std::env::temp_dir().join(format!("ct-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("nodes.conf"),
            "NodeName=DEFAULT CoresPerSocket=8 ThreadsPerCore=2\n\
             NodeName=gpu[01-04] Sockets=2 Gres=gpu:4 # the GPU nodes\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("slurm.conf"),
            "ClusterName=c\n# NodeName=cpu1 CPUs=999\n\
             NodeName=cpu[1-2],big CPUs=4\n\
             Include nodes.conf\n",
        )
        .unwrap();
        let conf = dir.join("slurm.conf");
        let got = |n: &str| node_layout(&conf, n).map(|l| l.to_string());
        assert_eq!(got("cpu2").unwrap(), "4x1x1");
        assert_eq!(got("big").unwrap(), "4x1x1");
        assert_eq!(got("gpu03").unwrap(), "2x8x2");
        assert!(matches!(
            node_layout(&conf, "gpu05"),
            Err(LayoutError::NoNode { .. })
        ));
        assert!(matches!(
            node_layout(&dir.join("absent.conf"), "cpu1"),
            Err(LayoutError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `(cpu, package, core)` triples as a topology.
    fn topo(cpus: &[(u32, u32, u32)]) -> Topology {
        Topology::from_cpus(cpus.iter().map(|&(c, p, k)| (c, p, Some(k))))
    }

    #[test]
    fn slurm_cores_map_to_packages_socket_by_socket() {
        // Two packages of 4 cores, 2 threads each; Linux numbers the second
        // threads after all first ones (cpu 8 is cpu 0's sibling).
        let smt: Vec<(u32, u32, u32)> = (0..16).map(|c| (c, (c % 8) / 4, c % 8)).collect();
        let smt = topo(&smt);
        let two_by_four = NodeLayout {
            sockets: 2,
            cores_per_socket: 4,
            threads_per_core: 2,
        };
        // A package whose ids are not 0 and 1, listed second-first by id:
        // Slurm's socket 0 is the package holding the lowest CPU.
        let odd = topo(&[(0, 3, 0), (1, 3, 1), (2, 1, 0), (3, 1, 1)]);
        let two_by_two = NodeLayout {
            sockets: 2,
            cores_per_socket: 2,
            threads_per_core: 1,
        };
        let one = topo(&[(0, 0, 0), (1, 0, 1)]);
        let slurm_2x1 = NodeLayout {
            sockets: 2,
            cores_per_socket: 1,
            threads_per_core: 1,
        };
        let apart = topo(&[(0, 0, 0), (1, 1, 0)]);
        type Case<'a> = (&'a str, &'a NodeLayout, &'a Topology, &'a [(u32, f64)]);
        let table: &[Case] = &[
            ("0", &two_by_four, &smt, &[(0, 0.25), (1, 0.0)]),
            ("0-3", &two_by_four, &smt, &[(0, 1.0), (1, 0.0)]),
            ("3-4", &two_by_four, &smt, &[(0, 0.25), (1, 0.25)]),
            ("4-7", &two_by_four, &smt, &[(0, 0.0), (1, 1.0)]),
            ("0-7", &two_by_four, &smt, &[(0, 1.0), (1, 1.0)]),
            ("0", &two_by_two, &odd, &[(3, 0.5), (1, 0.0)]),
            ("2-3", &two_by_two, &odd, &[(3, 0.0), (1, 1.0)]),
            // One package: Slurm's two sockets of one core are both on it.
            ("0", &slurm_2x1, &one, &[(0, 0.5)]),
            ("1", &slurm_2x1, &one, &[(0, 0.5)]),
            ("0-1", &slurm_2x1, &one, &[(0, 1.0)]),
            // The cgroup cluster's fixture: CPU N on package N.
            ("1", &slurm_2x1, &apart, &[(0, 0.0), (1, 1.0)]),
        ];
        for &(list, layout, t, want) in table {
            let got = package_shares_from_cores(&list.parse().unwrap(), layout, t).unwrap();
            let want: BTreeMap<u32, f64> = want.iter().copied().collect();
            assert_eq!(got, want, "{list} on {layout}");
        }
    }

    #[test]
    fn a_layout_the_topology_does_not_match_is_refused() {
        let two_pkgs = topo(&[(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]);
        let one_socket = NodeLayout {
            sockets: 1,
            cores_per_socket: 4,
            threads_per_core: 1,
        };
        assert!(matches!(
            package_shares_from_cores(&"0".parse().unwrap(), &one_socket, &two_pkgs),
            Err(CoreMapError::Mismatch { .. })
        ));
        let small = NodeLayout {
            sockets: 1,
            cores_per_socket: 2,
            threads_per_core: 1,
        };
        let one = topo(&[(0, 0, 0), (1, 0, 1)]);
        assert_eq!(
            package_shares_from_cores(&"0,2".parse().unwrap(), &small, &one),
            Err(CoreMapError::OutOfRange {
                core: 2,
                cores: 2,
                layout: small
            })
        );
        assert_eq!(
            package_shares_from_cores(&CpuSet::default(), &small, &one),
            Err(CoreMapError::Empty)
        );
        // Without core ids, a package's cores are its CPUs over the threads.
        let no_ids = Topology::from_map((0..4).map(|c| (c, 0)).collect());
        let smt = NodeLayout {
            sockets: 1,
            cores_per_socket: 2,
            threads_per_core: 2,
        };
        assert_eq!(
            package_shares_from_cores(&"1".parse().unwrap(), &smt, &no_ids).unwrap(),
            BTreeMap::from([(0, 0.5)])
        );
    }
}
