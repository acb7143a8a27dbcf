//! The throwaway Slurm cluster of `scripts/test-cluster`, driven from tests:
//! start it, submit jobs as the unprivileged user, read slurmd's log.
#![allow(dead_code)]

pub mod hardware;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The longest a footprint CSV `status` may be (design.md: short and stable;
/// the long explanation goes to the log and the summary).
pub const MAX_STATUS: usize = 100;

/// Every status of a footprint is within [`MAX_STATUS`] characters: the
/// check every cluster test runs on the rows it reads.
pub fn assert_short_statuses(rows: &[carbontrack::footprint::Row]) {
    for r in rows {
        assert!(
            r.status.chars().count() <= MAX_STATUS,
            "{} {} {}: status of {} characters: {}",
            r.node,
            r.component,
            r.device,
            r.status.chars().count(),
            r.status
        );
    }
}

/// The NodeName layout of the cgroup cluster, matching its CPU topology
/// fixture (CPU 0 on package 0, CPU 1 on package 1).
pub const CGROUP_NODE_LAYOUT: &str = "Sockets=2 CoresPerSocket=1 ThreadsPerCore=1";

/// The submit user `scripts/test-cluster` creates.
pub const USER: &str = "ctuser";
/// How long a job of these tests may take before it counts as hung.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The job id `sbatch --parsable` prints (`ID` or `ID;CLUSTER`).
pub fn parsable_job_id(stdout: &str) -> Option<u32> {
    stdout
        .lines()
        .next()?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether missing prerequisites must fail instead of skip (CI runs them all).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Why the cluster cannot run here, if it cannot.
pub fn missing_prerequisite(accounting: bool) -> Option<String> {
    let uid = run_capture(Command::new("id").arg("-u"));
    if uid.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()) != Some("0".into()) {
        return Some("not running as root (the cluster needs root)".into());
    }
    let mut tools = vec![
        "munged",
        "slurmctld",
        "slurmd",
        "sbatch",
        "srun",
        "salloc",
        "runuser",
        "nm",
    ];
    if accounting {
        tools.extend(["slurmdbd", "sacctmgr", "mariadbd", "mariadb-install-db"]);
    }
    let missing: Vec<&str> = tools.into_iter().filter(|t| which(t).is_none()).collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "missing {} (install the Slurm packages, see .ci/run)",
            missing.join(", ")
        ))
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run_capture(cmd: &mut Command) -> Option<Output> {
    cmd.stdin(Stdio::null()).output().ok()
}

/// The outcome of one batch job.
#[derive(Debug)]
pub struct Job {
    pub id: u32,
    /// sbatch --wait's exit status: the job's own exit code.
    pub exit_code: Option<i32>,
    /// The job's output file.
    pub output: String,
    pub sbatch_stderr: String,
}

/// A job submitted without waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobId(pub u32);

/// How a job ended, as `scontrol show job` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// `COMPLETED`, `CANCELLED`, `TIMEOUT`, `FAILED`, ...
    pub state: String,
    /// `exit:signal`, e.g. `0:0`.
    pub exit_code: String,
}

/// A running cluster; stopped when dropped (unless CT_KEEP_CLUSTER=1).
pub struct Cluster {
    pub dir: PathBuf,
    pub plugin: PathBuf,
    port_base: u16,
    accounting: bool,
    nodes: u32,
    /// Whether Slurm confines jobs with cgroup v1 cpusets (`start --cgroup`).
    cgroup: bool,
    /// Whether the node's GPUs are AMD's (`start --amd-gpus`), and the
    /// slurm.conf lines added to it.
    amd: Option<String>,
    /// Whether slurm.conf has `PrologFlags=Contain` (an extern step per job).
    contain: Cell<bool>,
}

impl Cluster {
    /// Builds the plugin and starts a fresh cluster in its own directory and
    /// ports, apart from the demo's.
    pub fn start(accounting: bool) -> Result<Cluster, String> {
        let dir = std::env::var_os("CT_TEST_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp/carbontrack-test-cluster".into());
        let port_base = std::env::var("CT_TEST_PORT_BASE")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(16917);
        Cluster::start_in(accounting, 1, dir, port_base, false, None)
    }

    /// A one-node cluster whose four GPUs are AMD's (`start --amd-gpus`:
    /// gres `gpu:mi250x:4` on fake render nodes renderD128..131), with
    /// `conf_extra` appended to slurm.conf, in its own directory and ports
    /// (CT_TEST_AMD_DIR, CT_TEST_AMD_PORT_BASE).
    pub fn start_amd(conf_extra: &str) -> Result<Cluster, String> {
        let dir = std::env::var_os("CT_TEST_AMD_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp/carbontrack-amd-cluster".into());
        let port_base = std::env::var("CT_TEST_AMD_PORT_BASE")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(18217);
        Cluster::start_in(false, 1, dir, port_base, false, Some(conf_extra.into()))
    }

    /// A one-node cluster whose jobs Slurm confines to their cores with
    /// cgroup v1 cpusets (task/cgroup), in its own directory and ports
    /// (CT_TEST_CGROUP_DIR, CT_TEST_CGROUP_PORT_BASE).
    pub fn start_cgroup() -> Result<Cluster, String> {
        let dir = std::env::var_os("CT_TEST_CGROUP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp/carbontrack-cgroup-cluster".into());
        let port_base = std::env::var("CT_TEST_CGROUP_PORT_BASE")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(17117);
        Cluster::start_in(false, 1, dir, port_base, true, None)
    }

    /// A one-node cluster with accounting for the admin-facing checks
    /// (tests/admin_cluster.rs: node_exporter, other writers of the
    /// accounting field), in its own directory and ports
    /// (CT_TEST_ADMIN_DIR, CT_TEST_ADMIN_PORT_BASE; the port base + 10 is
    /// node_exporter's).
    pub fn start_admin() -> Result<Cluster, String> {
        let dir = std::env::var_os("CT_TEST_ADMIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp/carbontrack-admin-cluster".into());
        Cluster::start_in(true, 1, dir, admin_port_base(), false, None)
    }

    /// A cluster of `nodes` nodes (`ct1`..), each a slurmd in its own network
    /// namespace, in its own directory and ports (CT_TEST_MULTINODE_DIR,
    /// CT_TEST_MULTINODE_PORT_BASE), so it can run beside the one-node one.
    pub fn start_multinode(accounting: bool, nodes: u32) -> Result<Cluster, String> {
        let dir = std::env::var_os("CT_TEST_MULTINODE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp/carbontrack-multinode-cluster".into());
        let port_base = std::env::var("CT_TEST_MULTINODE_PORT_BASE")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(17017);
        Cluster::start_in(accounting, nodes, dir, port_base, false, None)
    }

    fn start_in(
        accounting: bool,
        nodes: u32,
        dir: PathBuf,
        port_base: u16,
        cgroup: bool,
        amd: Option<String>,
    ) -> Result<Cluster, String> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // `cargo test` does not refresh the cdylib; the cluster must load the
        // code under test.
        let built = Command::new(&cargo)
            .args(["build", "--lib", "--quiet"])
            .current_dir(repo())
            .status()
            .map_err(|e| format!("cannot run {cargo}: {e}"))?;
        if !built.success() {
            return Err("cargo build --lib failed".into());
        }
        let plugin = target_dir().join("libcarbontrack.so");
        let cluster = Cluster {
            dir,
            plugin,
            port_base,
            accounting,
            nodes,
            cgroup,
            amd,
            contain: Cell::new(true),
        };
        cluster.restart(accounting, true)?;
        Ok(cluster)
    }

    /// Starts the cluster afresh (state, jobs and work dir gone; job ids
    /// start again at 1), with or without accounting and `PrologFlags=Contain`.
    pub fn restart(&self, accounting: bool, contain: bool) -> Result<(), String> {
        let nodes = self.nodes.to_string();
        let mut args = vec!["start", "--nodes", &nodes];
        if accounting {
            args.push("--accounting");
        }
        if !contain {
            args.push("--no-contain");
        }
        if self.cgroup {
            args.push("--cgroup");
        }
        if self.amd.is_some() {
            args.push("--amd-gpus");
        }
        let out = self.script(&args);
        if !out.status.success() {
            return Err(format!(
                "scripts/test-cluster {args:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.contain.set(contain);
        Ok(())
    }

    /// Resets slurmctld's state as an admin starting it afresh would (job
    /// ids start again at `first_job_id`), keeping slurmd, slurmdbd and the
    /// accounting database: the later jobs get the ids of earlier ones that
    /// accounting still holds.
    pub fn reset_controller(&self, first_job_id: u32) -> Result<(), String> {
        let pid_file = self.dir.join("run/slurmctld.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("{}: {e}", pid_file.display()))?;
        let pid = pid.trim();
        let alive = || Path::new(&format!("/proc/{pid}")).exists();
        Command::new("kill")
            .arg(pid)
            .status()
            .map_err(|e| format!("kill {pid}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive() {
            if Instant::now() > deadline {
                return Err(format!("slurmctld (pid {pid}) did not stop"));
            }
            sleep(Duration::from_millis(100));
        }
        let state = self.dir.join("state/ctld");
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let conf = std::fs::read_to_string(self.slurm_conf()).map_err(|e| e.to_string())?;
        let conf: String = conf
            .lines()
            .filter(|l| !l.starts_with("FirstJobId="))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + &format!("FirstJobId={first_job_id}\n");
        std::fs::write(self.slurm_conf(), conf).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log/slurmctld.out"))
            .map_err(|e| e.to_string())?;
        let started = Command::new("slurmctld")
            .env("SLURM_CONF", self.slurm_conf())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .status()
            .map_err(|e| format!("slurmctld: {e}"))?;
        if !started.success() {
            return Err(format!("slurmctld exited {started}"));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = self.as_root("sinfo", &["-h", "-o", "%T"]);
            let states = String::from_utf8_lossy(&up.stdout).to_string();
            if up.status.success() && states.lines().any(|s| s.trim() == "idle") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no idle node after the reset: {states}"));
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs one node's slurmd and starts it again
    /// (`scripts/test-cluster restart-slurmd NODE`); its slurmstepds and
    /// jobs keep running.
    pub fn restart_slurmd(&self, node: &str) -> Result<(), String> {
        let out = self.script(&["restart-slurmd", node]);
        if !out.status.success() {
            return Err(format!(
                "scripts/test-cluster restart-slurmd {node} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Restarts the cluster as [`Cluster::start`] left it.
    pub fn restore(&self) -> Result<(), String> {
        self.restart(self.accounting, true)
    }

    pub fn contain(&self) -> bool {
        self.contain.get()
    }

    fn script(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(repo().join("scripts/test-cluster"));
        if self.cgroup {
            // tests/cgroup_cluster.rs puts CPU N on package N (a topology
            // fixture): Slurm's layout says the same, two sockets of a core.
            cmd.env("CT_NODE_LAYOUT", CGROUP_NODE_LAYOUT);
        }
        if let Some(extra) = &self.amd {
            cmd.env("CT_SLURM_CONF_EXTRA", extra);
        }
        cmd.args(args)
            .env("CT_CLUSTER_DIR", &self.dir)
            .env("CT_PLUGIN", &self.plugin)
            .env("CT_PORT_BASE", self.port_base.to_string())
            .env_remove("CT_PLUGIN_ARGS")
            .stdin(Stdio::null())
            .output()
            .expect("scripts/test-cluster runs")
    }

    pub fn slurm_conf(&self) -> PathBuf {
        self.dir.join("etc/slurm.conf")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn slurmd_log(&self) -> PathBuf {
        self.dir.join("log/slurmd.log")
    }

    /// Rewrites plugstack.conf with these plugin arguments; the next job reads it.
    pub fn set_plugin_args(&self, args: &[&str]) {
        let mut a = vec!["plugstack"];
        a.extend_from_slice(args);
        let out = self.script(&a);
        assert!(
            out.status.success(),
            "plugstack {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A Slurm client command run as the submit user.
    pub fn as_user(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", USER, "--", "env"])
            .arg(format!("SLURM_CONF={}", self.slurm_conf().display()))
            .arg(program)
            .args(args)
            .current_dir(self.work_dir());
        c
    }

    /// A Slurm command run as root (scontrol, sacct, ...).
    pub fn as_root(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .env("SLURM_CONF", self.slurm_conf())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    }

    /// Submits `script` (read by sbatch from stdin) as the submit user and
    /// waits for the job to end.
    pub fn submit(&self, sbatch_args: &[&str], script: &str) -> Result<Job, String> {
        self.sbatch(&self.work_dir(), true, sbatch_args, script)
    }

    /// Submits `script` running in `dir` and returns at once.
    pub fn submit_in(
        &self,
        dir: &Path,
        sbatch_args: &[&str],
        script: &str,
    ) -> Result<JobId, String> {
        self.sbatch(dir, false, sbatch_args, script)
            .map(|j| JobId(j.id))
    }

    /// The job's output: its file in the work dir, whatever its own dir.
    pub fn output_of(&self, id: u32) -> String {
        std::fs::read_to_string(self.work_dir().join(format!("job-{id}.out"))).unwrap_or_default()
    }

    fn sbatch(
        &self,
        dir: &Path,
        wait: bool,
        sbatch_args: &[&str],
        script: &str,
    ) -> Result<Job, String> {
        let timeout = JOB_TIMEOUT.as_secs().to_string();
        // The output goes to the work dir even when the job runs elsewhere
        // (a directory it cannot write, say).
        let output = format!("--output={}/job-%j.out", self.work_dir().display());
        let chdir = dir.display().to_string();
        let mut args = vec!["--parsable", &output, "--chdir", &chdir];
        if wait {
            args.push("--wait");
        }
        args.extend_from_slice(sbatch_args);
        let mut cmd = self.as_user("timeout", &[]);
        cmd.arg(&timeout).arg("sbatch").args(&args);
        let out = pipe_in(cmd, script);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let id = parsable_job_id(&stdout)
            .ok_or_else(|| format!("sbatch {sbatch_args:?} gave no job id: {stderr}"))?;
        if out.status.code() == Some(124) {
            return Err(format!("job {id} did not end within {timeout}s"));
        }
        Ok(Job {
            id,
            exit_code: out.status.code(),
            output: if wait {
                self.output_of(id)
            } else {
                String::new()
            },
            sbatch_stderr: stderr,
        })
    }

    /// `scontrol show job` as `key=value` pairs.
    pub fn job_fields(&self, id: u32) -> Vec<(String, String)> {
        let out = self.as_root("scontrol", &["-o", "show", "job", &id.to_string()]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn job_state(&self, id: u32) -> String {
        self.job_fields(id)
            .into_iter()
            .find(|(k, _)| k == "JobState")
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    /// Waits for a job submitted with [`Cluster::submit_in`] to end.
    pub fn wait_ended(&self, id: JobId) -> Ended {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let f = self.job_fields(id.0);
            let get = |key: &str| {
                f.iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let state = get("JobState");
            let running = matches!(
                state.as_str(),
                "" | "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED"
            );
            if !running {
                return Ended {
                    state,
                    exit_code: get("ExitCode"),
                };
            }
            assert!(
                Instant::now() < deadline,
                "job {} still {state} after {JOB_TIMEOUT:?}",
                id.0
            );
            sleep(Duration::from_millis(200));
        }
    }

    /// Runs sbatch expecting it to refuse the submission; returns its stderr.
    pub fn refused(&self, sbatch_args: &[&str]) -> String {
        let mut args = sbatch_args.to_vec();
        args.extend(["--wrap", "true"]);
        let out = self
            .as_user("sbatch", &args)
            .stdin(Stdio::null())
            .output()
            .expect("sbatch runs");
        assert!(
            !out.status.success(),
            "sbatch {sbatch_args:?} was accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("Submitted"),
            "a job was submitted"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The current end of slurmd's log, to read what a job adds after it.
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(self.slurmd_log()).map_or(0, |m| m.len())
    }

    pub fn log_since(&self, mark: u64) -> String {
        let all = std::fs::read(self.slurmd_log()).unwrap_or_default();
        let start = usize::try_from(mark).unwrap_or(0).min(all.len());
        String::from_utf8_lossy(&all[start..]).into_owned()
    }

    /// slurmd's log since `mark`, once job `id` has completely finished on the
    /// node (its extern step, the last to go, has said so; without one, its
    /// batch step).
    pub fn log_of_job(&self, mark: u64, id: u32) -> String {
        let last = if self.contain() { "extern" } else { "batch" };
        let done = format!("[{id}.{last}] done with job");
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let log = self.log_since(mark);
            if log.contains(&done) || Instant::now() > deadline {
                return log;
            }
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var("CT_KEEP_CLUSTER").is_ok_and(|v| v == "1") {
            eprintln!("cluster kept running in {}", self.dir.display());
            return;
        }
        let out = self.script(&["stop"]);
        if !out.status.success() {
            eprintln!(
                "scripts/test-cluster stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Sets `c` up for jobs measured on `hw` and delivered by the real Epilog
/// wrapper: the plugin's arguments (the hardware, a ledger, PUE 1.5, 400 g
/// per kWh), the `carbontrack` binary `bin` copied where root can run it,
/// and an Epilog that runs the wrapper with it and keeps its lines and its
/// wall time (`test-epilog: job N took X ms`) in `log/ct-epilog.log`.
/// `edit` rewrites each slurm.conf line (with its newline) before the
/// Epilog line is added. Returns the copied binary.
pub fn with_real_epilog(
    c: &Cluster,
    hw: &hardware::Hardware,
    bin: &str,
    edit: impl Fn(&str) -> String,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = &c.dir;
    let copy = dir.join("bin/carbontrack");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ledger = dir.join("ct-ledger/ledger.csv");
    let args = hw.plugin_args(&[
        &format!("ledger={}", ledger.display()),
        "pue=1.5",
        "intensity=400",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.set_plugin_args(&refs);
    let wrapper = repo().join("scripts/carbontrack-epilog");
    let epilog = dir.join("etc/epilog.sh");
    std::fs::write(
        &epilog,
        format!(
            "#!/bin/bash\nexec 2>>{log}\nt0=$(date +%s%N)\nCARBONTRACK={bin} {wrapper}\nrc=$?\n\
             echo \"test-epilog: job $SLURM_JOB_ID took $(( ($(date +%s%N) - t0) / 1000000 )) ms\" >&2\n\
             exit $rc\n",
            log = dir.join("log/ct-epilog.log").display(),
            bin = copy.display(),
            wrapper = wrapper.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&epilog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf: String = std::fs::read_to_string(c.slurm_conf())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("#Epilog=") && !l.starts_with("Epilog="))
        .map(&edit)
        .collect::<String>()
        + &format!("Epilog={}\n", epilog.display());
    std::fs::write(c.slurm_conf(), conf).unwrap();
    let o = c.as_root("scontrol", &["reconfigure"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    sleep(Duration::from_secs(2));
    copy
}

fn pipe_in(mut cmd: Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("script written to sbatch");
    child.wait_with_output().expect("command ends")
}

/// The admin cluster's port base (CT_TEST_ADMIN_PORT_BASE, default 19120).
pub fn admin_port_base() -> u16 {
    std::env::var("CT_TEST_ADMIN_PORT_BASE")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(19120)
}

/// target/debug (or release) of this build: the test binary lives in its deps/.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target/<profile>/deps/<test>")
}

/// A process of an unprivileged user that holds an exclusive `flock` on
/// every file and directory under some paths that this user can open: the
/// attack of a user stalling root's Epilog through a lock (`flock -s LEDGER
/// sleep 1e6`), made stronger (an exclusive lock stops shared lockers too).
/// Killed, with everything it started, when dropped.
pub struct LockHolder {
    child: std::process::Child,
    /// What it locked.
    pub locked: Vec<PathBuf>,
}

impl LockHolder {
    /// As `user`, locks everything under `roots` it can open; returns once
    /// all the locks are held.
    pub fn start(user: &str, roots: &[&Path]) -> LockHolder {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        // Each path is opened on a shell fd and locked through it; the fds
        // stay open (and locked) in the `sleep` the shell becomes.
        const SCRIPT: &str = r#"
while IFS= read -r -d '' f; do
  [[ -L $f ]] && continue
  [[ -f $f || -d $f ]] || continue
  if exec {fd}<"$f"; then flock -x -n "$fd" && printf 'locked %s\n' "$f"; fi 2>/dev/null
done < <(find "$@" -print0 2>/dev/null)
echo ready
exec sleep 300
"#;
        let mut child = Command::new("runuser")
            .args(["-u", user, "--", "bash", "-c", SCRIPT, "lock-holder"])
            .args(roots)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("runuser starts");
        let out = child.stdout.take().expect("stdout is piped");
        let mut locked = Vec::new();
        for line in std::io::BufReader::new(out).lines() {
            let line = line.expect("lock holder's output");
            if line == "ready" {
                break;
            }
            if let Some(p) = line.strip_prefix("locked ") {
                locked.push(PathBuf::from(p));
            }
        }
        LockHolder { child, locked }
    }

    /// Whether `p` is among the locked paths.
    pub fn holds(&self, p: &Path) -> bool {
        self.locked.iter().any(|l| l == p)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        // The whole process group this holder started: runuser, the shell's sleep.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// A command's stdout and stderr together, for assertion messages.
pub fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What `f` gives once it gives something, asked every 200 ms; fails the
/// test naming `what` after `limit`.
pub fn wait_for<V>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<V>) -> V {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(200));
    }
}
