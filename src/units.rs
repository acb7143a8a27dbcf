//! Physical quantities as distinct types, so that a power is never added to an
//! energy and micro-joules never leak out of the RAPL reader unconverted.

use std::ops::{Add, AddAssign, Mul, Sub};
use std::time::Duration;

/// Joules per kilowatt-hour.
pub const JOULES_PER_KWH: f64 = 3.6e6;

/// Energy in joules.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Joules(pub f64);

/// Power in watts.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Watts(pub f64);

/// Energy in kilowatt-hours (the unit of the CSV's `energy_kwh` and of grid intensity).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct KilowattHours(pub f64);

/// Carbon intensity of electricity in grams CO2-equivalent per kilowatt-hour.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct GramsPerKwh(pub f64);

/// Mass of CO2-equivalent in grams.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct GramsCo2e(pub f64);

impl Joules {
    pub const ZERO: Joules = Joules(0.0);

    pub fn from_micro(uj: u64) -> Joules {
        Joules(uj as f64 * 1e-6)
    }

    pub fn from_milli(mj: u64) -> Joules {
        Joules(mj as f64 * 1e-3)
    }

    pub fn kwh(self) -> KilowattHours {
        KilowattHours(self.0 / JOULES_PER_KWH)
    }

    /// Average power over `d`; `None` for a zero-length span.
    pub fn over(self, d: Duration) -> Option<Watts> {
        let s = d.as_secs_f64();
        (s > 0.0).then(|| Watts(self.0 / s))
    }
}

impl Watts {
    pub fn from_milli(mw: u32) -> Watts {
        Watts(f64::from(mw) * 1e-3)
    }
}

impl Mul<Duration> for Watts {
    type Output = Joules;
    fn mul(self, d: Duration) -> Joules {
        Joules(self.0 * d.as_secs_f64())
    }
}

impl Mul<f64> for Joules {
    type Output = Joules;
    fn mul(self, k: f64) -> Joules {
        Joules(self.0 * k)
    }
}

impl Add for Joules {
    type Output = Joules;
    fn add(self, o: Joules) -> Joules {
        Joules(self.0 + o.0)
    }
}

impl AddAssign for Joules {
    fn add_assign(&mut self, o: Joules) {
        self.0 += o.0;
    }
}

impl Sub for Joules {
    type Output = Joules;
    fn sub(self, o: Joules) -> Joules {
        Joules(self.0 - o.0)
    }
}

impl std::iter::Sum for Joules {
    fn sum<I: Iterator<Item = Joules>>(it: I) -> Joules {
        it.fold(Joules::ZERO, |a, b| a + b)
    }
}

impl KilowattHours {
    pub fn joules(self) -> Joules {
        Joules(self.0 * JOULES_PER_KWH)
    }
}

impl Mul<GramsPerKwh> for KilowattHours {
    type Output = GramsCo2e;
    fn mul(self, i: GramsPerKwh) -> GramsCo2e {
        GramsCo2e(self.0 * i.0)
    }
}

impl Add for GramsCo2e {
    type Output = GramsCo2e;
    fn add(self, o: GramsCo2e) -> GramsCo2e {
        GramsCo2e(self.0 + o.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(Joules::from_micro(2_500_000), Joules(2.5));
        assert_eq!(Joules::from_milli(1500), Joules(1.5));
        assert_eq!(Watts::from_milli(250_000), Watts(250.0));
        assert_eq!(Joules(3.6e6).kwh(), KilowattHours(1.0));
        assert_eq!(Watts(100.0) * Duration::from_secs(36), Joules(3600.0));
        assert_eq!(Joules(10.0).over(Duration::from_secs(4)), Some(Watts(2.5)));
        assert_eq!(Joules(10.0).over(Duration::ZERO), None);
        assert_eq!(KilowattHours(2.0) * GramsPerKwh(445.0), GramsCo2e(890.0));
    }
}
