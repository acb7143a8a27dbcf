//! The only module with `unsafe`: Slurm's SPANK C API and the few OS calls std
//! does not wrap. Everything here is a thin, safe face over a C call; the
//! logic it serves lives in safe modules ([`crate::plugin`], [`crate::measure`]).

pub mod os;
