//! CO2e in familiar terms for the human summary. The factors and their
//! sources live in [`super::constants`].

use super::constants::{CAR_G_PER_KM, CAR_SOURCE, PETROL_G_PER_LITRE, PETROL_SOURCE};
use crate::units::GramsCo2e;

/// One familiar measure of a mass of CO2e.
#[derive(Debug, Clone, PartialEq)]
pub struct Equivalent {
    pub amount: f64,
    /// What `amount` counts, phrased to follow the number.
    pub unit: &'static str,
    pub source: &'static str,
}

impl Equivalent {
    /// `12.3 km travelled by car (EEA 2024, new EU passenger cars)`.
    pub fn line(&self) -> String {
        format!(
            "{} {} ({})",
            fmt_amount(self.amount),
            self.unit,
            self.source
        )
    }
}

/// The equivalents shown in the summary, car first because carbontracker
/// users know it.
pub fn equivalents(co2e: GramsCo2e) -> Vec<Equivalent> {
    vec![
        Equivalent {
            amount: co2e.0 / CAR_G_PER_KM,
            unit: "km travelled by car",
            source: CAR_SOURCE,
        },
        Equivalent {
            amount: co2e.0 / PETROL_G_PER_LITRE,
            unit: "litres of petrol burnt",
            source: PETROL_SOURCE,
        },
    ]
}

/// Three significant figures, no exponent, so that 0.00421 km and 1230 km both
/// read naturally.
pub fn fmt_amount(x: f64) -> String {
    fmt_significant(x, 3)
}

/// `x` with `sig` significant figures in plain decimal notation (at least the
/// integer digits); `0` for zero.
pub fn fmt_significant(x: f64, sig: u32) -> String {
    if x == 0.0 || !x.is_finite() {
        return if x.is_finite() {
            "0".into()
        } else {
            x.to_string()
        };
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (sig as i32 - 1 - magnitude).clamp(0, 15) as usize;
    let s = format!("{x:.decimals$}");
    // Rounding can carry into a new digit (9.995 -> 10.00); one more pass trims it.
    let rounded: f64 = s.parse().unwrap_or(x);
    let magnitude2 = rounded.abs().log10().floor() as i32;
    if magnitude2 > magnitude {
        let decimals = (sig as i32 - 1 - magnitude2).clamp(0, 15) as usize;
        return format!("{rounded:.decimals$}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn car_and_petrol_equivalents() {
        let e = equivalents(GramsCo2e(1068.0));
        assert_eq!(e[0].amount, 10.0);
        assert_eq!(
            e[0].line(),
            "10.0 km travelled by car (EEA 2024, new EU passenger cars)"
        );
        // 2347.69 g per litre.
        assert!((e[1].amount - 1068.0 / 2347.69).abs() < 1e-5);
        assert!(
            e[1].line()
                .starts_with("0.455 litres of petrol burnt (US EPA")
        );
        assert!(equivalents(GramsCo2e(0.0)).iter().all(|e| e.amount == 0.0));
    }

    #[test]
    fn significant_figures() {
        for (x, sig, want) in [
            (0.0, 3, "0"),
            (1.0, 3, "1.00"),
            (0.004214, 3, "0.00421"),
            (12.345, 3, "12.3"),
            (1234.6, 3, "1235"),
            (9.996, 3, "10.0"),
            (0.09996, 3, "0.100"),
            (-2.5, 2, "-2.5"),
            (0.000438889, 6, "0.000438889"),
        ] {
            assert_eq!(fmt_significant(x, sig), want, "{x} {sig}");
        }
    }
}
