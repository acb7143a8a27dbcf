//! From joules to CO2e: grid intensity, PUE, familiar equivalents and
//! carbontracker-style prediction. Pure functions, no I/O beyond reading a
//! site's intensity file.

pub mod constants;
pub mod intensity;
