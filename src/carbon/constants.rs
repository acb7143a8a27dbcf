//! Every published figure carbontrack uses, in one place, each with its source.
//!
//! A figure changes when its source publishes a new edition; keeping them here
//! means one edit, and the summary cites the same source the code uses.

/// Power usage effectiveness applied to measured energy: the Uptime Institute's
/// 2023 global average data-centre PUE (Global Data Center Survey 2023), the
/// figure carbontracker uses.
pub const DEFAULT_PUE: f64 = 1.58;

/// World-average carbon intensity of electricity, gCO2e/kWh (IEA, 2024), used
/// when a site configures nothing better; carbontracker uses the same figure.
pub const WORLD_AVERAGE_G_PER_KWH: f64 = 445.0;

/// How the world average is named in the CSV's `intensity_source` and the summary.
pub const WORLD_AVERAGE_SOURCE: &str = "world average (IEA 2024)";

/// Average CO2 emitted per km by a new passenger car registered in the EU,
/// g/km: European Environment Agency, "CO2 performance of new passenger cars
/// in Europe" (2024 assessment). Tailpipe emissions, WLTP test cycle; the
/// figure carbontracker 2.4.7 uses for its "km travelled by car".
pub const CAR_G_PER_KM: f64 = 106.8;

/// Citation printed next to the car equivalent.
pub const CAR_SOURCE: &str = "EEA 2024, new EU passenger cars";

/// CO2 from burning one US gallon of motor gasoline, grams: US EPA, Greenhouse
/// Gas Equivalencies Calculator, "Gallons of gasoline consumed" (8.887 × 10⁻³
/// metric tons CO2 per gallon, unchanged since its 2009 revision).
pub const GASOLINE_G_PER_US_GALLON: f64 = 8887.0;

/// Litres in one US liquid gallon (exact, by definition: 231 cubic inches).
pub const LITRES_PER_US_GALLON: f64 = 3.785_411_784;

/// CO2 from burning one litre of petrol, grams (≈ 2347.7), derived from
/// [`GASOLINE_G_PER_US_GALLON`]: litres are the familiar unit outside the US.
pub const PETROL_G_PER_LITRE: f64 = GASOLINE_G_PER_US_GALLON / LITRES_PER_US_GALLON;

/// Citation printed next to the petrol equivalent.
pub const PETROL_SOURCE: &str = "US EPA GHG Equivalencies, 8,887 g CO2/US gallon";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn petrol_per_litre_follows_from_the_gallon_figure() {
        assert!(
            (PETROL_G_PER_LITRE - 2347.69).abs() < 0.01,
            "{PETROL_G_PER_LITRE}"
        );
    }
}
