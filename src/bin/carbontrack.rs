//! The `carbontrack` command: wrap a command and measure it (`run`), mark
//! epochs from a job (`epoch`), and the admin side (epilog, reports).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
    }
}
