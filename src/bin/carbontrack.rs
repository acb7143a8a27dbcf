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
    }
}
