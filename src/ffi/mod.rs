//! The only module with `unsafe`: Slurm's SPANK C API, the few OS calls std
//! does not wrap, and the one NVML call nvml-wrapper cannot make without
//! allocating. Everything here is a thin, safe face over a C call; the
//! logic it serves lives in safe modules ([`crate::plugin`], [`crate::measure`]).
//!
//! Slurm functions are looked up at run time in the process that loaded the
//! plugin (see [`sys`]), so the library has no undefined Slurm symbols and
//! links into the `carbontrack` command and the tests without libslurm.

pub mod amdsmi;
pub mod clock;
#[cfg(feature = "slurm")]
mod exports;
pub mod identity;
pub mod nvml_samples;
pub mod signals;
#[cfg(feature = "slurm")]
pub mod slurm_conf;
#[cfg(feature = "slurm")]
mod spank;
#[cfg(feature = "slurm")]
pub mod sys;

#[cfg(feature = "slurm")]
pub use spank::{Spank, SpankError, log};
