//! The `carbontrack` command: wrap a command and measure it (`run`), mark
//! epochs from a job (`epoch`), and the admin side (epilog, reports).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use carbontrack::config::{self, Config};
use carbontrack::run::{Ended, RunRequest};

#[derive(Parser)]
#[command(
    name = "carbontrack",
    version,
    about = "Energy and carbon footprint of jobs and commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command and measure this machine's energy while it runs.
    ///
    /// Writes the footprint CSV (job_id `local`) and prints a summary on
    /// stderr. Arguments after `--` belong to the command; carbontrack exits
    /// with the command's status (or dies of the same signal).
    Run(Box<RunArgs>),
    /// Mark the end of one training epoch of the current tracked job or run.
    ///
    /// Appends a line to the file named by CARBONTRACK_EPOCH_FILE. Never fails
    /// the calling script: without a tracked job it warns and exits 0.
    Epoch,
    /// Node Epilog: put the job's energy and CO2e into Slurm accounting and
    /// the ledger. Always exits 0; what it cannot deliver stays queued.
    Epilog(carbontrack::report::cli::EpilogArgs),
    /// Deliver the jobs queued in this node's spool (e.g. after slurmdbd was down).
    Flush(carbontrack::report::cli::FlushArgs),
    /// Job count, GPU-hours, energy and CO2e per user, account, partition or day.
    Report(carbontrack::report::cli::ReportArgs),
    /// A running job's energy so far and its projection to the time limit.
    Status(carbontrack::report::cli::StatusArgs),
    /// The greenest start in the coming window for a job of a given length,
    /// from an hourly intensity file, and the `sbatch --begin=` for it.
    Suggest(carbontrack::suggest::SuggestArgs),
    /// Is this node set up right? One line per item (ok, warn or fail, with
    /// the fix); exit status 0 all ok, 1 warnings, 2 a failure.
    Check(carbontrack::check::CheckArgs),
}

/// The flags of `carbontrack run`: the plugstack keys that mean something for
/// one command on one machine, parsed by the same code as plugstack.conf.
#[derive(Args)]
struct RunArgs {
    /// Sampling period, e.g. 500ms, 1s.
    #[arg(long)]
    interval: Option<String>,
    /// How often the live figures (budget, state file) are refreshed, e.g. 60s.
    #[arg(long)]
    refresh: Option<String>,
    /// What to measure: a comma list of cpu,dram,gpu.
    #[arg(long)]
    components: Option<String>,
    /// RAPL powercap sysfs root.
    #[arg(long)]
    powercap: Option<String>,
    /// cgroup root, to find this process's cpuset.
    #[arg(long)]
    cgroup: Option<String>,
    /// CPU topology root.
    #[arg(long)]
    cpu_topology: Option<String>,
    /// NVML library name or path.
    #[arg(long)]
    nvml: Option<String>,
    /// Power usage effectiveness applied to measured energy.
    #[arg(long)]
    pue: Option<String>,
    /// gCO2e/kWh as a number, a zone code such as DK, or file:/path.csv.
    #[arg(long)]
    intensity: Option<String>,
    /// Intensity used for hours a file: source lacks (number, zone or world).
    #[arg(long)]
    intensity_fallback: Option<String>,
    /// `workdir` writes the CSV, `none` only prints the summary.
    #[arg(long)]
    report: Option<String>,
    /// Completed epochs needed before a prediction is shown.
    #[arg(long)]
    epochs_before_pred: Option<String>,
    /// Estimate CPU energy where RAPL cannot be read: the CPU's TDP per
    /// package in watts, or auto (from the CPU model); labelled `estimated`.
    #[arg(long)]
    cpu_tdp: Option<String>,
    /// Read CPU, GPU and Neural Engine energy from this powermetrics (Apple
    /// Silicon; the default on macOS is /usr/bin/powermetrics).
    #[arg(long)]
    powermetrics: Option<PathBuf>,
    /// Total epochs of the training run, for prediction from epoch marks.
    #[arg(long)]
    epochs: Option<String>,
    /// Carbon budget (500g, 2kg CO2e or 1.5kWh): shown against the run and
    /// said once when first exceeded; the command is never stopped.
    #[arg(long)]
    carbon_budget: Option<String>,
    /// Where the footprint CSV goes.
    #[arg(short, long, default_value = "carbontrack-local.csv")]
    output: PathBuf,
    /// Follow this running process instead of running a command: ends when
    /// it exits or on SIGTERM/SIGINT; prints CARBONTRACK_EPOCH_FILE=<path> on
    /// stdout once sampling has begun, and carbontracker's predicted and
    /// actual blocks on stderr (the Python API's mode).
    #[arg(long, value_name = "PID", conflicts_with = "command")]
    pid: Option<u32>,
    /// Also draw the power timeline (SVG) into this file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required_unless_present = "pid", num_args = 1..)]
    command: Vec<OsString>,
}

impl RunArgs {
    fn request(self) -> Result<RunRequest, String> {
        let keys = [
            ("interval", self.interval),
            ("refresh", self.refresh),
            ("components", self.components),
            ("powercap", self.powercap),
            ("cgroup", self.cgroup),
            ("cpu_topology", self.cpu_topology),
            ("nvml", self.nvml),
            ("pue", self.pue),
            ("intensity", self.intensity),
            ("intensity_fallback", self.intensity_fallback),
            ("report", self.report),
            ("epochs_before_pred", self.epochs_before_pred),
            ("cpu_tdp", self.cpu_tdp),
        ];
        let mut cfg = Config::default();
        for (k, v) in keys {
            if let Some(v) = v {
                cfg.set_arg(&format!("{k}={v}"))
                    .map_err(|e| format!("--{}: {e}", k.replace('_', "-")))?;
            }
        }
        let epochs = self
            .epochs
            .as_deref()
            .map(config::parse_epochs)
            .transpose()?;
        let budget = self
            .carbon_budget
            .as_deref()
            .map(carbontrack::carbon::budget::parse_budget)
            .transpose()?;
        Ok(RunRequest {
            config: cfg,
            epochs,
            budget,
            output: Some(self.output),
            plot: self.plot,
            powermetrics: self.powermetrics,
            command: self.command,
            pid: self.pid,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let req = match (*args).request() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("carbontrack run: {e}");
                    return ExitCode::from(2);
                }
            };
            // `--pid`: follow a running process instead of starting one.
            let ended = match req.pid {
                Some(pid) => carbontrack::follow::follow(&req, pid),
                None => carbontrack::run::run(req),
            };
            match ended {
                Ok(Ended::Code(c)) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
                Ok(Ended::Signal(sig)) => carbontrack::ffi::signals::die_of(sig),
                Err(e) => {
                    eprintln!("carbontrack run: {e:#}");
                    ExitCode::from(125)
                }
            }
        }
        Command::Epoch => {
            if let Err(e) = carbontrack::epochs::mark_epoch_from_env() {
                eprintln!("carbontrack epoch: {e:#}");
            }
            ExitCode::SUCCESS
        }
        Command::Epilog(a) => carbontrack::report::cli::epilog_main(&a),
        Command::Flush(a) => carbontrack::report::cli::flush_main(&a),
        Command::Report(a) => carbontrack::report::cli::report_main(&a),
        Command::Status(a) => carbontrack::report::cli::status_main(&a),
        Command::Suggest(a) => carbontrack::suggest::suggest_main(&a),
        Command::Check(a) => carbontrack::check::check_main(&a),
    }
}
