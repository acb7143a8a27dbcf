//! `carbontrack run -- CMD ARGS…`: measure this machine while a command runs.
//!
//! carbontracker's CLI mode, done so that wrapping a command changes nothing
//! about it: its arguments are passed untouched, the signals a user or Slurm
//! sends reach it, and the wrapper exits with the command's own status (or
//! dies of the same signal).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::carbon::budget::{CarbonBudget, STATE_FILE_ENV};
use crate::config::{Config, ReportTarget};
use crate::epochs::EPOCH_FILE_ENV;
use crate::ffi::signals;
use crate::host::hostname;
use crate::measure::amd_gpus::AmdGpuHints;
use crate::measure::cpuset::{self, PackageShares};
use crate::measure::estimate::CpuTimeSource;
use crate::measure::gpus::GpuHints;
use crate::tracker::{Output, Plan, Tracker};

/// How the wrapped command ended, for the wrapper's own exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl From<ExitStatus> for Ended {
    fn from(s: ExitStatus) -> Ended {
        match (s.code(), s.signal()) {
            (Some(c), _) => Ended::Code(c),
            (None, Some(sig)) => Ended::Signal(sig),
            (None, None) => Ended::Code(1),
        }
    }
}

/// What `carbontrack run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub config: Config,
    pub epochs: Option<u32>,
    /// `--carbon-budget`: shown against the run; said once on stderr when
    /// first exceeded; the command is never stopped.
    pub budget: Option<CarbonBudget>,
    /// The CSV's path; default `carbontrack-local.csv` in the current directory.
    pub output: Option<PathBuf>,
    /// Where the power timeline (SVG) goes; none without `--plot`.
    pub plot: Option<PathBuf>,
    /// `--powermetrics PATH` (Apple Silicon); see
    /// [`crate::measure::powermetrics::choose`].
    pub powermetrics: Option<PathBuf>,
    pub command: Vec<OsString>,
    /// Follow this running process instead of running `command`
    /// (`carbontrack run --pid`: the caller hands the request to
    /// `follow::follow` instead of [`run`]).
    pub pid: Option<u32>,
}

/// The CPU attribution for a command: the cpuset of the cgroup it runs in when
/// that is narrower than the machine (inside a Slurm allocation, say), else
/// the whole machine.
pub(crate) fn shares_for_process(cfg: &Config, proc_cgroup: &Path) -> PackageShares {
    let topo = cpuset::package_of_cpus(&cfg.cpu_topology).ok();
    let own = std::fs::read_to_string(proc_cgroup)
        .map_err(|e| e.to_string())
        .and_then(|c| cpuset::own_cpuset(&cfg.cgroup, &c).map_err(|e| e.to_string()));
    match (&own, &topo) {
        (Ok(set), Some(t)) if set.cpus.len() < t.cpus() => {
            cpuset::attribute(Ok(&set.cpus), topo.as_ref(), None)
        }
        _ => PackageShares::whole_node(),
    }
}

/// The plan of a local run: CPU attribution from the cgroup named in
/// `proc_cgroup` (`/proc/<pid>/cgroup`), GPUs from the environment, the CSV
/// where the request says.
pub(crate) fn local_plan(req: &RunRequest, proc_cgroup: &Path, epoch_file: PathBuf) -> Plan {
    let mut plan = Plan::new("local", hostname(), req.config.clone());
    plan.shares = shares_for_process(&req.config, proc_cgroup);
    plan.gpus = GpuHints {
        slurm_gpus: std::env::var("SLURM_STEP_GPUS")
            .or_else(|_| std::env::var("SLURM_JOB_GPUS"))
            .ok(),
        cuda_visible: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        job_pids: None,
    };
    plan.amd_gpus = AmdGpuHints {
        slurm_gpus: plan.gpus.slurm_gpus.clone(),
        rocr_visible: std::env::var("ROCR_VISIBLE_DEVICES")
            .or_else(|_| std::env::var("HIP_VISIBLE_DEVICES"))
            .ok(),
    };
    plan.output = match req.config.report {
        ReportTarget::None => Output::None,
        ReportTarget::Workdir => Output::Csv(
            req.output
                .clone()
                .unwrap_or_else(|| PathBuf::from("carbontrack-local.csv")),
        ),
    };
    plan.plot = req.plot.clone();
    plan.powermetrics = crate::measure::powermetrics::choose(req.powermetrics.clone());
    plan.epochs = req.epochs;
    plan.epoch_file = Some(epoch_file);
    plan.budget = req.budget;
    plan.alert_to_stderr = true;
    plan
}

/// Runs the command under measurement and returns how it ended. Measurement
/// problems are reported on stderr and never change the command's outcome.
pub fn run(req: RunRequest) -> Result<Ended> {
    let (program, args) = req
        .command
        .split_first()
        .context("no command given after `--`")?;
    // Block the forwarded signals (and SIGCHLD, to wake up when the command
    // ends) before any thread starts, so that every thread inherits the mask
    // and they all arrive here, in order.
    let mut wanted = signals::FORWARDED.to_vec();
    wanted.push(libc::SIGCHLD);
    let blocked = signals::block(&wanted).context("cannot block signals for forwarding")?;

    let (epoch_file, _cleanup) = new_epoch_file()?;

    let mut plan = local_plan(&req, Path::new("/proc/self/cgroup"), epoch_file.clone());
    // For `cpu_tdp=`: the command is this process's only child.
    plan.cpu_time = Some(CpuTimeSource::ChildrenOf(std::process::id()));
    // With a budget, the command can read its state (`carbontrack status
    // --json`) from a file of the caller's, removed at the end.
    let state_file = req
        .budget
        .map(|_| std::env::temp_dir().join(format!("carbontrack-run-{}.json", std::process::id())));
    let _state_cleanup = state_file.clone().map(RemoveOnDrop);
    plan.state_file = state_file.clone();
    let (tracker, log) = Tracker::start(plan).context("cannot start the sampler thread")?;
    for line in log {
        eprintln!("carbontrack: {line}");
    }

    let mut command = Command::new(program);
    command.args(args).env(EPOCH_FILE_ENV, &epoch_file);
    if let Some(p) = &state_file {
        command.env(STATE_FILE_ENV, p);
    }
    let mut child = match signals::unblocked_child(&mut command).spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tracker.finish();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!(
                "carbontrack: cannot run {}: {e}",
                Path::new(program).display()
            );
            return Ok(Ended::Code(code));
        }
    };
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for the command")? {
            break status;
        }
        match blocked.wait(Duration::from_millis(500)) {
            Some(libc::SIGCHLD) | None => {}
            Some(sig) => {
                // The command may have just ended; then there is no one to tell.
                let _ = signals::kill(child.id(), sig);
            }
        }
    };

    let done = tracker.finish();
    eprint!("\n{}", done.summary);
    for p in &done.delivered {
        let what = if p.extension().is_some_and(|e| e == "svg") {
            "power timeline"
        } else {
            "footprint"
        };
        eprintln!("carbontrack: {what} written to {}", p.display());
    }
    for p in &done.problems {
        eprintln!("carbontrack: {p}");
    }
    Ok(status.into())
}

/// A fresh epoch file of this process's own in the temporary directory,
/// removed when the guard is dropped.
pub(crate) fn new_epoch_file() -> Result<(PathBuf, RemoveOnDrop)> {
    let epoch_file =
        std::env::temp_dir().join(format!("carbontrack-run-{}.epochs", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&epoch_file)
        .with_context(|| format!("cannot create the epoch file {}", epoch_file.display()))?;
    Ok((epoch_file.clone(), RemoveOnDrop(epoch_file)))
}

pub(crate) struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
