//! One function per item of `carbontrack check`, each using the code the
//! plugin or the Epilog uses for the same thing (the key parser, the RAPL
//! and NVML openers, the directory checks, the intensity file reader).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::conf::{self, SlurmConf};
use super::{Finding, Level};
use crate::carbon::intensity::{self, IntensitySpec};
use crate::config::{Components, Config};
use crate::ffi::amdsmi::AmdSmiOpenError;
use crate::measure::cpuset::{self, CpuSet};
use crate::measure::nvml::{NvmlLib, NvmlUnavailable};
use crate::measure::{Component, cores, rapl};
use crate::report::cmd;
use crate::report::plugstack::{self, PluginLine};
use crate::safe_fs;

/// What the checks run with: the files, the node, Slurm's commands.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub slurm_conf: PathBuf,
    /// plugstack.conf; `None`: slurm.conf's `PlugStackConfig`.
    pub plugstack: Option<PathBuf>,
    /// This node's `NodeName`.
    pub node: String,
    pub scontrol: PathBuf,
    pub sacctmgr: PathBuf,
    pub timeout: Duration,
    /// The user the checks run as (the plugin and the Epilog run as root).
    pub euid: u32,
    /// Where the Epilog wrapper writes what it could not hand to the binary.
    pub epilog_log: PathBuf,
}

const PLUGSTACK_LINE: &str = "optional /usr/lib/slurm/libcarbontrack.so";

fn ok(item: &'static str, message: impl Into<String>) -> Finding {
    Finding::new(item, Level::Ok, message, None::<String>)
}

fn warn(item: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding::new(item, Level::Warn, message, Some(fix))
}

fn fail(item: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding::new(item, Level::Fail, message, Some(fix))
}

/// Every item, in the order an admin sets them up.
pub fn run_all(inp: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    let slurm = match SlurmConf::read(&inp.slurm_conf) {
        Ok(s) => s,
        Err(e) => {
            out.push(fail(
                "slurm_conf",
                e,
                "point --slurm-conf (or SLURM_CONF) at this cluster's slurm.conf",
            ));
            SlurmConf::default()
        }
    };
    let plugstack_path = inp.plugstack.clone().unwrap_or_else(|| {
        let text = std::fs::read_to_string(&inp.slurm_conf).unwrap_or_default();
        plugstack::plugstack_path(&inp.slurm_conf, &text)
    });
    let (finding, line, config) = plugstack_item(&plugstack_path);
    out.push(finding);
    let env = [("SLURM_CONF", inp.slurm_conf.to_string_lossy().into_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let running = slurm_release(inp, &env);
    out.push(plugin_item(line.as_ref(), &slurm, &running));
    out.push(prolog_flags_item(&slurm));
    out.push(cpu_item(&slurm, &config, &inp.node));
    let (c, euid) = (config.clone(), inp.euid);
    out.push(bounded("rapl", move || rapl_item(&c, euid)));
    let c = config.clone();
    out.push(bounded("gpus", move || gpu_item(&c, Path::new("/dev"))));
    let c = config.clone();
    out.push(bounded("amd_gpus", move || {
        amd_gpu_item(&c, Path::new("/dev/dri"))
    }));
    out.push(spool_item(&config, inp.euid));
    out.push(shared_item(&config, inp.euid));
    out.push(ledger_item(&config, inp.euid));
    out.push(epilog_item(&slurm, inp));
    out.push(accounting_item(&slurm, inp, &env));
    out.push(intensity_item(&config, SystemTime::now()));
    out
}

/// How long a device item may take: a GPU off the bus can hang NVML, a
/// sick node's sysfs a read.
pub const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// `check` on a thread of its own, a `fail` if it has not answered within
/// [`DEVICE_WAIT`] (the thread is left in its call; the command ends soon).
fn bounded(item: &'static str, check: impl FnOnce() -> Finding + Send + 'static) -> Finding {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new()
        .name(format!("check-{item}"))
        .spawn(move || {
            let _ = tx.send(check());
        });
    if let Err(e) = started {
        return fail(item, format!("cannot start a thread: {e}"), "try again");
    }
    rx.recv_timeout(DEVICE_WAIT).unwrap_or_else(|_| {
        fail(
            item,
            format!(
                "no answer within {} s: the device (or its driver) hangs, and so would a job's meter at its start",
                DEVICE_WAIT.as_secs()
            ),
            "check the device and its driver (`nvidia-smi`, dmesg); a job on this node has it marked unavailable",
        )
    })
}

/// The running Slurm's release (`scontrol --version`), or why not.
fn slurm_release(inp: &Inputs, env: &[(&str, &str)]) -> Result<(u32, u32, u32), String> {
    let out = cmd::run(
        &cmd::find_program(&inp.scontrol),
        ["--version"],
        env,
        inp.timeout,
    )
    .map_err(|e| e.to_string())?;
    conf::parse_slurm_version(&out.stdout)
        .ok_or_else(|| format!("scontrol --version said `{}`", out.stdout.trim()))
}

/// The carbontrack line and its keys, validated by the plugin's own parser.
pub fn plugstack_item(path: &Path) -> (Finding, Option<PluginLine>, Config) {
    const ITEM: &str = "plugstack";
    let line = match plugstack::find_plugin_line(path) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return (
                fail(
                    ITEM,
                    format!(
                        "no {} line in {} (nor in the files it includes): the plugin is not loaded",
                        plugstack::PLUGIN_FILE,
                        path.display()
                    ),
                    format!("add `{PLUGSTACK_LINE}` to {}", path.display()),
                ),
                None,
                Config::default(),
            );
        }
        Err(e) => {
            return (
                fail(
                    ITEM,
                    e.to_string(),
                    format!(
                        "create {} with `{PLUGSTACK_LINE}`, or set PlugStackConfig= in slurm.conf",
                        path.display()
                    ),
                ),
                None,
                Config::default(),
            );
        }
    };
    match Config::from_args(&line.args) {
        Err(e) => {
            // The other items are checked with the keys that are accepted.
            let mut lenient = Config::default();
            for a in &line.args {
                let _ = lenient.set_arg(a);
            }
            (
                fail(
                    ITEM,
                    format!(
                        "{}: {e}: the plugin stays out of every job",
                        line.file.display()
                    ),
                    "correct that key on the carbontrack line (README, \"plugstack.conf keys\")",
                ),
                Some(line),
                lenient,
            )
        }
        Ok(c) => {
            let f = if c.accounting_field == "Comment" {
                warn(
                    ITEM,
                    crate::config::COMMENT_WARNING,
                    "accounting_field=AdminComment",
                )
            } else if line.required {
                warn(
                    ITEM,
                    format!(
                        "{}: the carbontrack line says `required`: a node where the plugin cannot load runs no job",
                        line.file.display()
                    ),
                    "start the line with `optional`",
                )
            } else {
                ok(
                    ITEM,
                    format!(
                        "{}: carbontrack line with {} key(s), all accepted (mode {})",
                        line.file.display(),
                        line.args.len(),
                        match c.mode {
                            crate::config::Mode::OptIn => "optin",
                            crate::config::Mode::Always => "always",
                            crate::config::Mode::Off => "off",
                        }
                    ),
                )
            };
            (f, Some(line), c)
        }
    }
}

/// The installed plugin's `plugin_version` against the running Slurm.
pub fn plugin_item(
    line: Option<&PluginLine>,
    slurm: &SlurmConf,
    running: &Result<(u32, u32, u32), String>,
) -> Finding {
    const ITEM: &str = "plugin";
    let Some(line) = line else {
        return fail(
            ITEM,
            "no carbontrack line names the plugin",
            "see plugstack",
        );
    };
    let lib = if line.library.is_absolute() {
        line.library.clone()
    } else {
        let dirs = slurm.get("PluginDir").unwrap_or("/usr/lib/slurm");
        dirs.split(':')
            .map(|d| Path::new(d).join(&line.library))
            .find(|p| p.exists())
            .unwrap_or_else(|| Path::new(dirs).join(&line.library))
    };
    let install = format!(
        "build against this Slurm's headers (cargo build --release) and `install -D -m 0755 target/release/libcarbontrack.so {}`",
        lib.display()
    );
    let built = match super::elf::plugin_version(&lib) {
        Ok(v) => v,
        Err(e) => return fail(ITEM, e, install),
    };
    match running {
        Err(e) => warn(
            ITEM,
            format!(
                "{}: built for Slurm {}; the running release is unknown ({e})",
                lib.display(),
                conf::version_text(built)
            ),
            "put scontrol in PATH (or give --scontrol) and check again",
        ),
        Ok(r) if conf::version_loads(built, *r) => ok(
            ITEM,
            format!(
                "{}: built for Slurm {}, this Slurm is {}.{:02}.{}",
                lib.display(),
                conf::version_text(built),
                r.0,
                r.1,
                r.2
            ),
        ),
        Ok(r) => fail(
            ITEM,
            format!(
                "{}: built for Slurm {}, this Slurm is {}.{:02}.{}: Slurm refuses it (major.minor differ) and no job is measured",
                lib.display(),
                conf::version_text(built),
                r.0,
                r.1,
                r.2
            ),
            install,
        ),
    }
}

/// `PrologFlags=Contain`, and neither setting carbontrack cannot measure under.
pub fn prolog_flags_item(slurm: &SlurmConf) -> Finding {
    const ITEM: &str = "prolog_flags";
    let flags = slurm.flags("PrologFlags");
    let params = slurm.flags("SlurmdParameters");
    if flags.iter().any(|f| f == "runinjob") {
        return fail(
            ITEM,
            "PrologFlags=RunInJob: Slurm then never runs a plugin's job prolog, where carbontrack learns that a job is tracked: no job is measured",
            "remove RunInJob from PrologFlags",
        );
    }
    if params.iter().any(|f| f == "contain_spank") {
        return fail(
            ITEM,
            "SlurmdParameters=contain_spank: the sampler would start in a process that exits at once: no job is measured",
            "remove contain_spank from SlurmdParameters",
        );
    }
    if !flags.iter().any(|f| f == "contain") {
        return warn(
            ITEM,
            "PrologFlags lacks Contain: no extern step, so the batch step and srun steps sample instead and a job's time outside them is not measured",
            "PrologFlags=Contain in slurm.conf (then `scontrol reconfigure`)",
        );
    }
    ok(
        ITEM,
        format!("PrologFlags={}", slurm.get("PrologFlags").unwrap_or("")),
    )
}

/// How a job's share of the CPU packages will be known on this node.
pub fn cpu_item(slurm: &SlurmConf, config: &Config, node: &str) -> Finding {
    const ITEM: &str = "cpu_attribution";
    if !config.components.cpu && !config.components.dram {
        return ok(ITEM, "CPU and DRAM are not measured (components=)");
    }
    let task = slurm.flags("TaskPlugin");
    let cgroup_conf = slurm
        .path
        .parent()
        .unwrap_or(Path::new("/"))
        .join("cgroup.conf");
    let constrained = task.iter().any(|t| t == "task/cgroup")
        && SlurmConf::read(&cgroup_conf)
            .ok()
            .and_then(|c| {
                c.get("ConstrainCores")
                    .map(|v| v.eq_ignore_ascii_case("yes"))
            })
            .unwrap_or(false);
    let layout_fix = format!(
        "give NodeName={node} the Sockets=, CoresPerSocket= and ThreadsPerCore= that `slurmd -C` prints"
    );
    let layout = match cores::node_layout(&slurm.path, node) {
        Ok(l) => l,
        Err(e @ cores::LayoutError::NoNode { .. }) if constrained => {
            return ok(
                ITEM,
                format!("job cpusets (task/cgroup, ConstrainCores=yes); {e}"),
            );
        }
        Err(e) => {
            return warn(
                ITEM,
                format!("{e}: jobs without a cpuset are charged by CPU count"),
                format!("run check on a compute node (or give --node NAME); {layout_fix}"),
            );
        }
    };
    let topo = match cpuset::package_of_cpus(&config.cpu_topology) {
        Ok(t) => t,
        Err(e) => {
            return warn(
                ITEM,
                format!("CPU topology under {}: {e}", config.cpu_topology.display()),
                "point cpu_topology= at the node's /sys/devices/system/cpu",
            );
        }
    };
    let all = CpuSet::new(0..layout.cores());
    match cores::package_shares_from_cores(&all, &layout, &topo) {
        Ok(_) if constrained => ok(
            ITEM,
            format!(
                "job cpusets (task/cgroup, ConstrainCores=yes), checked against Slurm's core allocation (layout {layout}, {})",
                topo.describe()
            ),
        ),
        Ok(_) => ok(
            ITEM,
            format!(
                "Slurm's core allocation (no cpuset: TaskPlugin={}): layout {layout} of NodeName={node} matches the CPU topology ({})",
                slurm.get("TaskPlugin").unwrap_or("task/none"),
                topo.describe()
            ),
        ),
        Err(e) => warn(
            ITEM,
            format!("{e}: jobs get `incomplete: {}`", cpuset::NOTE_LAYOUT),
            layout_fix,
        ),
    }
}

/// The RAPL zones, opened and read as a job's meter opens them.
pub fn rapl_item(config: &Config, euid: u32) -> Finding {
    const ITEM: &str = "rapl";
    let Components { cpu, dram, .. } = config.components;
    if !cpu && !dram {
        return ok(ITEM, "CPU and DRAM are not measured (components=)");
    }
    let root = &config.powercap;
    let (zones, _) = rapl::probe(root);
    if zones.is_empty() {
        return warn(
            ITEM,
            format!(
                "no RAPL zones under {}: CPU and DRAM rows will be `unavailable`",
                root.display()
            ),
            "load the intel_rapl_msr module (`modprobe intel_rapl_msr`; AMD Zen needs Linux 5.8+); a VM without RAPL cannot measure CPUs",
        );
    }
    let names: Vec<String> = zones
        .iter()
        .map(|z| match z.component {
            Component::Dram => format!("{} dram", z.device),
            _ => z.device.clone(),
        })
        .collect();
    if let Some((z, (_, long))) = zones
        .iter()
        .find_map(|z| z.readable.as_ref().err().map(|e| (z, e)))
    {
        if euid != 0 {
            return warn(
                ITEM,
                format!("not root: {long}"),
                "run carbontrack check as root to see what the plugin sees",
            );
        }
        return fail(
            ITEM,
            format!("{}: {long}", z.device),
            format!("make {} readable by root", z.path.display()),
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let root_only = zones
        .iter()
        .filter(|z| std::fs::metadata(&z.path).is_ok_and(|m| m.permissions().mode() & 0o004 == 0))
        .count();
    let users = if root_only == 0 {
        "and by users (carbontrack run)".to_string()
    } else {
        format!(
            "not by users: {root_only} zone(s) root-only, so `carbontrack run` by a user gets no CPU figure (`chmod o+r` on energy_uj, or a udev rule, opens them, and with them RAPL's power side channel: the site's choice)"
        )
    };
    ok(
        ITEM,
        format!(
            "{} zone(s) under {} ({}), readable by root {users}",
            zones.len(),
            root.display(),
            names.join(", ")
        ),
    )
}

/// NVML opened as the plugin opens it, its GPUs and their energy counters.
pub fn gpu_item(config: &Config, dev: &Path) -> Finding {
    const ITEM: &str = "gpus";
    if !config.components.gpu {
        return ok(ITEM, "GPUs are not measured (components=)");
    }
    let nvml = &config.nvml;
    let device_nodes = std::fs::read_dir(dev)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("nvidia"))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0);
    let lib = match NvmlLib::open(nvml) {
        Ok(l) => l,
        Err(e @ NvmlUnavailable::LibraryMissing { .. })
            if !nvml.is_absolute() && device_nodes == 0 =>
        {
            return ok(
                ITEM,
                format!(
                    "no NVIDIA GPU on this node (no {} and no /dev/nvidiaN): nothing to measure; {e}",
                    nvml.display()
                ),
            );
        }
        Err(e) => {
            return fail(
                ITEM,
                format!("{e}: GPU rows will be `unavailable: {}`", e.short()),
                "install the NVIDIA driver's libnvidia-ml.so.1, or point nvml= at it",
            );
        }
    };
    let (gpus, notes) = match lib.inventory() {
        Ok(x) => x,
        Err(e) => {
            return fail(
                ITEM,
                format!("{e}"),
                "check the NVIDIA driver (`nvidia-smi`)",
            );
        }
    };
    if gpus.is_empty() {
        return warn(
            ITEM,
            format!("NVML ({}) loads but lists no GPU", nvml.display()),
            "check the NVIDIA driver (`nvidia-smi`)",
        );
    }
    let mut counter = 0;
    let mut unknown = Vec::new();
    for g in &gpus {
        match lib.has_energy_counter(g.index) {
            Ok(true) => counter += 1,
            Ok(false) => {}
            Err(e) => unknown.push(format!("GPU {}: {e}", g.index)),
        }
    }
    let summary = format!(
        "NVML {}: {} GPU(s), {counter} with an energy counter, {} by power samples",
        nvml.display(),
        gpus.len(),
        gpus.len() - counter - unknown.len()
    );
    if !unknown.is_empty() || !notes.is_empty() {
        let why: Vec<String> = unknown.into_iter().chain(notes).collect();
        return warn(
            ITEM,
            format!("{summary}; {}", why.join("; ")),
            "check the NVIDIA driver (`nvidia-smi -q`)",
        );
    }
    ok(ITEM, summary)
}

/// AMD SMI opened as the plugin opens it (`amdsmi=`), its GPUs and their
/// energy counters. No library and no render node: nothing to measure.
pub fn amd_gpu_item(config: &Config, dri: &Path) -> Finding {
    const ITEM: &str = "amd_gpus";
    if !config.components.gpu {
        return ok(ITEM, "GPUs are not measured (components=)");
    }
    let lib = &config.amdsmi;
    let render_nodes = std::fs::read_dir(dri)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("renderD"))
                .count()
        })
        .unwrap_or(0);
    match crate::measure::amdsmi::inventory(lib) {
        Err(e @ AmdSmiOpenError::Missing { .. }) if !lib.is_absolute() => {
            if render_nodes == 0 {
                ok(
                    ITEM,
                    format!(
                        "no AMD GPU on this node (no {} and no {}/renderD*)",
                        lib.display(),
                        dri.display()
                    ),
                )
            } else {
                warn(
                    ITEM,
                    format!(
                        "{e}, but {render_nodes} render node(s) in {}: AMD GPUs, if these are, go unmeasured",
                        dri.display()
                    ),
                    "install ROCm's AMD SMI (libamd_smi.so) or point amdsmi= at it; for other GPUs this is harmless",
                )
            }
        }
        Err(e) => fail(
            ITEM,
            format!("{e}: AMD GPU rows will be `unavailable`"),
            "point amdsmi= at ROCm's libamd_smi.so (e.g. /opt/rocm/lib/libamd_smi.so), or check the amdgpu driver (`amd-smi list`)",
        ),
        Ok(inv) if inv.gpus == 0 => warn(
            ITEM,
            format!("AMD SMI ({}) loads but lists no GPU", lib.display()),
            "check the amdgpu driver (`amd-smi list`)",
        ),
        Ok(inv) => ok(
            ITEM,
            format!(
                "AMD SMI {}: {} GPU(s) on {} board(s), {} with an energy counter, {} by power",
                lib.display(),
                inv.gpus,
                inv.packages,
                inv.with_counter,
                inv.gpus - inv.with_counter
            ),
        ),
    }
}

/// A directory root keeps its files in, checked as the plugin or the Epilog
/// checks it before use.
fn dir_item(item: &'static str, what: &str, dir: &Path, mode: u32, euid: u32) -> Finding {
    match safe_fs::check_dir(dir, mode) {
        Ok(_) => ok(
            item,
            format!(
                "{what} {}: root-owned, not writable by others",
                dir.display()
            ),
        ),
        Err(e) if euid != 0 => warn(
            item,
            format!("not root: {e}"),
            "run carbontrack check as root to see what the plugin sees",
        ),
        Err(e) if e.is_not_found() => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            match safe_fs::check_dir(parent, 0o755) {
                Ok(_) => ok(
                    item,
                    format!(
                        "{what} {} does not exist yet: it is made (mode {mode:o}) on first use",
                        dir.display()
                    ),
                ),
                Err(e) => fail(
                    item,
                    format!("{what} {}: {e}", dir.display()),
                    format!("mkdir -p -m {mode:o} {} as root", dir.display()),
                ),
            }
        }
        Err(e) => {
            let fix = match &e {
                safe_fs::SafeFsError::UnsafeDir { fix, .. } => fix.clone(),
                _ => format!("chown root: {0} && chmod {mode:o} {0}", dir.display()),
            };
            fail(item, format!("{what}: {e}"), fix)
        }
    }
}

pub fn spool_item(config: &Config, euid: u32) -> Finding {
    dir_item("spool", "spool", &config.spool, 0o700, euid)
}

pub fn ledger_item(config: &Config, euid: u32) -> Finding {
    match config.ledger.as_deref().and_then(Path::parent) {
        None => ok("ledger", "ledger=none: totals go to accounting only"),
        Some(dir) => dir_item("ledger", "ledger directory", dir, 0o755, euid),
    }
}

/// `shared=`: there, root's, on a filesystem other nodes see, with locks
/// that lock across nodes, and one lock taken for real.
pub fn shared_item(config: &Config, euid: u32) -> Finding {
    const ITEM: &str = "shared";
    let Some(dir) = &config.shared else {
        return ok(
            ITEM,
            "shared= not set: each node of a multi-node job delivers only its own figures",
        );
    };
    let resolved = match safe_fs::check_dir(dir, 0o755) {
        Ok(p) => p,
        Err(e) if e.is_not_found() => {
            return fail(
                ITEM,
                format!(
                    "{}: not there (the shared filesystem not mounted?): {e}",
                    dir.display()
                ),
                format!(
                    "mount the shared filesystem, then `mkdir -m 755 {}` as root",
                    dir.display()
                ),
            );
        }
        Err(e) => {
            let fix = match &e {
                safe_fs::SafeFsError::UnsafeDir { fix, .. } => fix.clone(),
                _ => format!("chown root: {0} && chmod 755 {0}", dir.display()),
            };
            return if euid == 0 {
                fail(ITEM, e.to_string(), fix)
            } else {
                warn(
                    ITEM,
                    format!("not root: {e}"),
                    "run carbontrack check as root",
                )
            };
        }
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mount = conf::mount_of(&mounts, &resolved);
    if let Some(problem) = mount.as_ref().and_then(conf::lock_problem) {
        return fail(
            ITEM,
            problem,
            "mount NFS without nolock/local_lock, Lustre with -o flock",
        );
    }
    if euid == 0 {
        let lock = resolved.join(".carbontrack-check.lock");
        let taken = safe_fs::lock(&lock, Duration::from_secs(2));
        let _ = std::fs::remove_file(&lock);
        if let Err(e) = taken {
            return fail(
                ITEM,
                format!("flock in {}: {e}", resolved.display()),
                "mount NFS without nolock/local_lock, Lustre with -o flock",
            );
        }
    }
    match mount {
        Some(m) if conf::is_node_local(&m.fstype) => warn(
            ITEM,
            format!(
                "{} is on {} ({}), a filesystem only this node sees: a multi-node job's parts never meet",
                dir.display(),
                m.fstype,
                m.point.display()
            ),
            "put shared= on a filesystem all nodes mount (NFS, Lustre, GPFS)",
        ),
        m => ok(
            ITEM,
            format!(
                "{}: root-owned, on {}, flock works",
                dir.display(),
                m.map_or("an unknown filesystem".into(), |m| format!(
                    "{} ({})",
                    m.fstype,
                    m.point.display()
                ))
            ),
        ),
    }
}

/// The Epilog runs the wrapper, and the wrapper finds the binary with the
/// environment slurmd gives an Epilog (no PATH of its own).
pub fn epilog_item(slurm: &SlurmConf, inp: &Inputs) -> Finding {
    const ITEM: &str = "epilog";
    let wrapper_fix = "Epilog=/usr/local/sbin/carbontrack-epilog in slurm.conf (or call it from your Epilog), then `scontrol reconfigure`";
    let Some(value) = slurm.get("Epilog") else {
        return fail(
            ITEM,
            "slurm.conf sets no Epilog: no job total reaches accounting or the ledger",
            wrapper_fix,
        );
    };
    let mut found = None;
    for path in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = Path::new(path);
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(p) {
            Err(e) => {
                return fail(
                    ITEM,
                    format!(
                        "Epilog {path}: {e}: slurmd cannot run it, and a failed Epilog drains the node"
                    ),
                    format!(
                        "install it there (`install -m 0755 scripts/carbontrack-epilog {path}`) or correct Epilog="
                    ),
                );
            }
            Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
                return fail(
                    ITEM,
                    format!(
                        "Epilog {path} is not an executable file: a failed Epilog drains the node"
                    ),
                    format!("chmod 0755 {path}"),
                );
            }
            Ok(_) => {}
        }
        if p.file_name().is_some_and(|n| n == "carbontrack-epilog") {
            found = Some((path.to_string(), PathBuf::from(path), None));
            break;
        }
        let text = std::fs::read(p)
            .ok()
            .filter(|b| b.len() < 1 << 20)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let u = conf::epilog_use(&text);
        if let Some(w) = u.wrapper {
            found = Some((path.to_string(), PathBuf::from(w), u.carbontrack));
            break;
        }
        if u.direct {
            return warn(
                ITEM,
                format!(
                    "Epilog {path} runs `carbontrack epilog` without the wrapper: if the binary is missing the Epilog fails and the node drains"
                ),
                "call /usr/local/sbin/carbontrack-epilog instead (it always exits 0)",
            );
        }
    }
    let Some((epilog, wrapper, carbontrack)) = found else {
        return fail(
            ITEM,
            format!(
                "Epilog={value} does not run carbontrack-epilog: no job total reaches accounting or the ledger"
            ),
            wrapper_fix,
        );
    };
    if !wrapper.is_absolute() {
        return warn(
            ITEM,
            format!(
                "Epilog {epilog} runs `{}` by a relative name: slurmd gives it no PATH",
                wrapper.display()
            ),
            "call the wrapper by its absolute path",
        );
    }
    // Only a wrapper that knows `--which` is run: an older copy (or any
    // other Epilog) would do a real Epilog's work as root.
    let knows_which = std::fs::read(&wrapper)
        .map(|b| b.len() < 1 << 20 && b.windows(7).any(|w| w == b"--which"))
        .unwrap_or(false);
    if !knows_which {
        return warn(
            ITEM,
            format!(
                "{} does not answer --which (an older copy, or not carbontrack's wrapper): not run, so whether it finds the binary is unknown",
                wrapper.display()
            ),
            format!(
                "install -m 0755 scripts/carbontrack-epilog {}",
                wrapper.display()
            ),
        );
    }
    // As slurmd runs an Epilog: an environment of Slurm's own variables, no PATH.
    let conf = inp.slurm_conf.to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "-i".into(),
        format!("SLURM_CONF={conf}"),
        "SLURM_SCRIPT_CONTEXT=epilog_slurmd".into(),
        format!("SLURMD_NODENAME={}", inp.node),
    ];
    if let Some(c) = &carbontrack {
        args.push(format!("CARBONTRACK={c}"));
    }
    args.push(wrapper.to_string_lossy().into_owned());
    args.push("--which".into());
    let probe = cmd::run(Path::new("/usr/bin/env"), &args, &[], inp.timeout);
    let out = match probe {
        Ok(o) => o.stdout,
        Err(e) => {
            return fail(
                ITEM,
                format!("running {} --which: {e}", wrapper.display()),
                format!(
                    "install scripts/carbontrack-epilog as {}",
                    wrapper.display()
                ),
            );
        }
    };
    let line = out.lines().next().unwrap_or("").trim();
    let reported = wrapper_log_note(&inp.epilog_log);
    if let Some(bin) = line.strip_prefix("carbontrack: ") {
        let version = cmd::run(Path::new(bin), ["--version"], &[], inp.timeout)
            .map(|o| o.stdout.trim().to_string());
        return match (version, reported) {
            (Err(e), _) => fail(
                ITEM,
                format!("the wrapper finds {bin}, which does not run: {e}"),
                "install the carbontrack binary again (`install -D -m 0755 target/release/carbontrack /usr/local/bin/carbontrack`)",
            ),
            (Ok(v), Some(note)) => warn(
                ITEM,
                format!(
                    "Epilog {epilog} runs {} and it finds {bin} ({v}) in slurmd's environment; but {note}",
                    wrapper.display()
                ),
                format!("once read, remove {}", inp.epilog_log.display()),
            ),
            (Ok(v), None) => ok(
                ITEM,
                format!(
                    "Epilog {epilog} runs {}, which finds {bin} ({v}) in slurmd's environment (no PATH)",
                    wrapper.display()
                ),
            ),
        };
    }
    if let Some(why) = line.strip_prefix("missing: ") {
        return fail(
            ITEM,
            format!(
                "Epilog {epilog}: in slurmd's environment (no PATH) {} finds no carbontrack binary ({why}): no job total reaches accounting",
                wrapper.display()
            ),
            "install it as /usr/local/bin/carbontrack, or set CARBONTRACK=/path/to/carbontrack before the wrapper in the Epilog",
        );
    }
    warn(
        ITEM,
        format!(
            "{} does not answer --which (an older copy?): cannot tell whether it finds the binary",
            wrapper.display()
        ),
        format!(
            "install -m 0755 scripts/carbontrack-epilog {}",
            wrapper.display()
        ),
    )
}

/// The last line the wrapper wrote to its own log, if any.
fn wrapper_log_note(path: &Path) -> Option<String> {
    let f = safe_fs::open_regular(path).ok()?;
    let bytes = safe_fs::read_bounded(path, f, 1 << 20).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(format!("its log {} says: {}", path.display(), last.trim()))
}

/// slurmdbd reachable through sacctmgr, this cluster known to it, and the
/// Epilog's user (root) one that may modify jobs.
pub fn accounting_item(slurm: &SlurmConf, inp: &Inputs, env: &[(&str, &str)]) -> Finding {
    const ITEM: &str = "accounting";
    let storage = slurm.get("AccountingStorageType").unwrap_or("");
    if storage != "accounting_storage/slurmdbd" {
        return fail(
            ITEM,
            format!(
                "AccountingStorageType={}: no slurmdbd, so no job total reaches sacct (the ledger still gets them)",
                if storage.is_empty() {
                    "(unset)"
                } else {
                    storage
                }
            ),
            "run slurmdbd and set AccountingStorageType=accounting_storage/slurmdbd",
        );
    }
    let sacctmgr = cmd::find_program(&inp.sacctmgr);
    let clusters = match cmd::run(
        &sacctmgr,
        ["-n", "-P", "show", "cluster", "format=cluster"],
        env,
        inp.timeout,
    ) {
        Ok(o) => o.stdout,
        Err(e) => {
            return fail(
                ITEM,
                format!("sacctmgr: {e}"),
                "start slurmdbd, and check AccountingStorageHost/Port in slurm.conf",
            );
        }
    };
    let name = slurm.get("ClusterName").unwrap_or("").to_ascii_lowercase();
    if !clusters
        .lines()
        .any(|l| l.trim().eq_ignore_ascii_case(&name))
    {
        return fail(
            ITEM,
            format!("slurmdbd knows no cluster `{name}`: sacctmgr cannot modify its jobs"),
            format!("sacctmgr -i add cluster {name}"),
        );
    }
    if inp.euid != 0 {
        return warn(
            ITEM,
            format!(
                "slurmdbd answers and knows cluster `{name}`; not root, so whether the Epilog's user may modify jobs is not checked"
            ),
            "run carbontrack check as root (the Epilog runs as root, which slurmdbd lets modify jobs)",
        );
    }
    ok(
        ITEM,
        format!("slurmdbd answers sacctmgr and knows cluster `{name}`; root may modify its jobs"),
    )
}

/// The intensity source resolves: a file reads, a live source has its key.
pub fn intensity_item(config: &Config, now: SystemTime) -> Finding {
    const ITEM: &str = "intensity";
    let fallback = intensity::constant_or_world(&config.intensity_fallback());
    match &config.intensity {
        IntensitySpec::File(p) => match intensity::read_hourly_file(p) {
            Err(e) => fail(
                ITEM,
                format!("{e}: jobs get {} instead", fallback.source),
                format!(
                    "write {} (`timestamp,g_per_kwh` rows, hourly) or point intensity= elsewhere",
                    p.display()
                ),
            ),
            Ok(t) => {
                let last = t.0.keys().next_back().copied();
                let now_h = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| (d.as_secs() / 3600) as i64);
                match last {
                    None => warn(
                        ITEM,
                        format!(
                            "intensity file {} has no rows: jobs get {}",
                            p.display(),
                            fallback.source
                        ),
                        "fill it with `timestamp,g_per_kwh` rows",
                    ),
                    Some(h) if h + 48 < now_h => warn(
                        ITEM,
                        format!(
                            "intensity file {}: {} hours, the last {} h old: newer hours get {}",
                            p.display(),
                            t.0.len(),
                            now_h - h,
                            fallback.source
                        ),
                        "refresh the file (e.g. hourly from the grid operator's feed)",
                    ),
                    Some(_) => ok(
                        ITEM,
                        format!(
                            "intensity file {}: {} hourly rows, up to date",
                            p.display(),
                            t.0.len()
                        ),
                    ),
                }
            }
        },
        IntensitySpec::ElectricityMaps(zone) => {
            let Some(key) = &config.intensity_key else {
                return fail(
                    ITEM,
                    "electricitymaps: without intensity_key=",
                    "set intensity_key=",
                );
            };
            match crate::carbon::live::read_key(key) {
                Ok(_) => ok(
                    ITEM,
                    format!(
                        "ElectricityMaps {zone}, key {} readable by root only (not queried here: the Epilog queries it)",
                        key.display()
                    ),
                ),
                Err(e) => fail(
                    ITEM,
                    format!("{e}: jobs get {}", fallback.source),
                    format!("chown root: {0} && chmod 600 {0}", key.display()),
                ),
            }
        }
        spec => ok(
            ITEM,
            spec.constant()
                .map_or_else(|| fallback.describe(), |r| r.describe()),
        ),
    }
}
