//! From joules to CO2e: grid intensity, PUE, familiar equivalents and
//! carbontracker-style prediction. Pure functions; the only I/O is reading a
//! site's intensity file and, from the epilog only, the live source.

pub mod base_url;
pub mod budget;
pub mod constants;
pub mod equivalents;
pub mod greener;
pub mod intensity;
pub mod live;
pub mod predict;
pub mod summary;
pub mod zones;

use crate::units::{GramsCo2e, GramsPerKwh, Joules, KilowattHours};

/// Energy drawn from the grid for `energy` used at the devices: the facility's
/// overhead (cooling, power distribution) is applied as the PUE factor.
pub fn facility_kwh(energy: Joules, pue: f64) -> KilowattHours {
    (energy * pue).kwh()
}

/// CO2e of `energy` measured at the devices, as the CSV contract computes it:
/// `energy_j × pue / 3.6e6 × intensity`.
pub fn co2e(energy: Joules, pue: f64, intensity: GramsPerKwh) -> GramsCo2e {
    facility_kwh(energy, pue) * intensity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn co2e_applies_pue_then_intensity() {
        // 3.6 MJ at the devices = 1 kWh; ×1.58 PUE = 1.58 kWh; ×445 g/kWh.
        assert_eq!(facility_kwh(Joules(3.6e6), 1.58), KilowattHours(1.58));
        let g = co2e(Joules(3.6e6), 1.58, GramsPerKwh(445.0));
        assert!((g.0 - 703.1).abs() < 1e-9, "{g:?}");
        assert_eq!(co2e(Joules::ZERO, 1.58, GramsPerKwh(445.0)), GramsCo2e(0.0));
    }
}
