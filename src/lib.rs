//! carbontrack: energy and carbon footprint of Slurm jobs.
//!
//! The crate builds twice: as the SPANK plugin Slurm loads (`libcarbontrack.so`,
//! whose callbacks are in [`plugin`]) and as the library behind the
//! `carbontrack` command. Everything that measures or computes runs without
//! Slurm. All `unsafe` code is confined to [`ffi`]. Without the `slurm`
//! feature (on by default) the plugin and its Slurm bindings are left out and
//! the crate builds with no Slurm headers: the CLI alone.
#![deny(unsafe_code)]

pub mod carbon;
pub mod check;
pub mod config;
pub mod deliver;
pub mod epochs;
#[allow(unsafe_code)]
pub mod ffi;
pub mod follow;
pub mod footprint;
pub mod host;
pub mod hostlist;
pub mod job;
pub mod measure;
#[cfg(feature = "slurm")]
pub mod plugin;
pub mod procstat;
pub mod prometheus;
pub mod report;
pub mod run;
pub mod safe_fs;
pub mod spool;
pub mod suggest;
pub mod tracker;
pub mod units;
pub mod userio;
