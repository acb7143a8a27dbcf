//! carbontrack: energy and carbon footprint of Slurm jobs.
//!
//! The crate builds twice: as the SPANK plugin Slurm loads (`libcarbontrack.so`,
//! a thin adapter in [`spank`]) and as the library behind the `carbontrack`
//! command. Everything that measures or computes lives outside [`spank`] and
//! runs without Slurm.

pub mod carbon;
pub mod config;
pub mod footprint;
pub mod measure;
pub mod report;
pub mod spank;
pub mod units;
