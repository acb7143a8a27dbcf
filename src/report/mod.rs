//! The admin side: the Epilog that puts each job's total into Slurm
//! accounting and the cluster ledger, the retry queue for what could not be
//! delivered, and the reports over both.
//!
//! Pure parts (the accounting segment, totals, report aggregation) are kept
//! apart from the parts that run Slurm's commands or touch files.

pub mod accounting;
pub mod aggregate;
pub mod cli;
pub mod cmd;
pub mod delivery;
pub mod epilog;
pub mod ledger;
pub mod numbers;
pub mod plot;
pub mod plugstack;
pub mod recheck;
pub mod sacct;
pub mod shared;
pub mod squeue;
pub mod status;
pub mod total;
pub mod watch;
