//! Annual-average carbon intensity of electricity per country, for
//! `intensity=<zone>`.
//!
//! Source: Our World in Data, "Carbon intensity of electricity" (grapher
//! export, column "Carbon intensity of electricity (gCO2/kWh)", built by OWID
//! from Ember's Yearly Electricity Data and the BP/Energy Institute Statistical
//! Review). Each zone carries the latest year that export has for it: 2021 for
//! most, 2020 for a few (marked). This is the same OWID table carbontracker ships,
//! so a zone gives the figure its users are used to. Values are rounded to 0.1.
//!
//! Direct or lifecycle: that export counts emissions at the point of generation
//! (Sweden 11.8 g/kWh, Luxembourg 0 g/kWh), not the lifecycle emissions of the
//! plants, so its figures are lower than lifecycle factors such as Ember's
//! 2023+ releases or ElectricityMaps' default. A site that wants lifecycle
//! figures, a newer year or its own supplier's mix gives a number or a
//! `file:` instead.
//!
//! Left out on purpose: Luxembourg (the export's 0 g/kWh ignores its imports and
//! would claim a free lunch) and countries the export lacks (e.g. South Korea,
//! Taiwan). A code not in the table is refused at configuration time, never
//! silently replaced by the world average.

use crate::units::GramsPerKwh;

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Zone {
    /// ISO 3166-1 alpha-2, upper case.
    pub code: &'static str,
    pub name: &'static str,
    pub g_per_kwh: f64,
    /// The year the figure describes.
    pub year: u16,
}

/// The dataset named in `intensity_source`.
pub const ZONE_SOURCE: &str = "OWID";

const fn z(code: &'static str, name: &'static str, g_per_kwh: f64, year: u16) -> Zone {
    Zone {
        code,
        name,
        g_per_kwh,
        year,
    }
}

/// Sorted by code, so lookups can binary-search and the test can check order.
pub const ZONES: &[Zone] = &[
    z("AR", "Argentina", 347.3, 2021),
    z("AT", "Austria", 81.3, 2021),
    z("AU", "Australia", 486.3, 2021),
    z("BA", "Bosnia and Herzegovina", 478.5, 2021),
    z("BE", "Belgium", 139.7, 2021),
    z("BG", "Bulgaria", 419.4, 2021),
    z("BR", "Brazil", 141.8, 2021),
    z("CA", "Canada", 119.0, 2021),
    z("CH", "Switzerland", 57.8, 2021),
    z("CL", "Chile", 374.5, 2021),
    z("CN", "China", 541.3, 2021),
    z("CY", "Cyprus", 587.5, 2021),
    z("CZ", "Czechia", 412.2, 2021),
    z("DE", "Germany", 352.4, 2021),
    z("DK", "Denmark", 149.7, 2021),
    z("EE", "Estonia", 739.9, 2021),
    z("EG", "Egypt", 389.0, 2021),
    z("ES", "Spain", 169.0, 2021),
    z("FI", "Finland", 68.8, 2021),
    z("FR", "France", 58.5, 2021),
    z("GB", "United Kingdom", 264.5, 2021),
    z("GR", "Greece", 430.3, 2021),
    z("HK", "Hong Kong", 644.9, 2020),
    z("HR", "Croatia", 131.3, 2021),
    z("HU", "Hungary", 195.5, 2021),
    z("ID", "Indonesia", 624.7, 2020),
    z("IE", "Ireland", 381.1, 2021),
    z("IL", "Israel", 527.8, 2020),
    z("IN", "India", 626.0, 2021),
    z("IS", "Iceland", 28.8, 2020),
    z("IT", "Italy", 222.8, 2021),
    z("JP", "Japan", 416.5, 2021),
    z("KE", "Kenya", 112.4, 2021),
    z("LT", "Lithuania", 209.0, 2021),
    z("LV", "Latvia", 171.6, 2021),
    z("MT", "Malta", 406.5, 2021),
    z("MX", "Mexico", 373.8, 2021),
    z("MY", "Malaysia", 541.0, 2021),
    z("NL", "Netherlands", 328.9, 2021),
    z("NO", "Norway", 25.1, 2021),
    z("NZ", "New Zealand", 136.0, 2021),
    z("PH", "Philippines", 544.3, 2021),
    z("PK", "Pakistan", 295.8, 2021),
    z("PL", "Poland", 727.8, 2021),
    z("PT", "Portugal", 181.1, 2021),
    z("RO", "Romania", 252.8, 2021),
    z("RS", "Serbia", 545.6, 2021),
    z("SA", "Saudi Arabia", 568.5, 2021),
    z("SE", "Sweden", 11.8, 2021),
    z("SG", "Singapore", 463.9, 2021),
    z("SI", "Slovenia", 250.9, 2021),
    z("SK", "Slovakia", 100.9, 2021),
    z("TH", "Thailand", 503.2, 2021),
    z("TR", "Turkey", 429.6, 2021),
    z("UA", "Ukraine", 240.5, 2021),
    z("US", "United States", 357.2, 2021),
    z("ZA", "South Africa", 664.7, 2021),
];

/// The table row for a zone code, any case.
pub fn zone(code: &str) -> Option<&'static Zone> {
    let code = code.trim().to_ascii_uppercase();
    ZONES
        .binary_search_by(|z| z.code.cmp(code.as_str()))
        .ok()
        .map(|i| &ZONES[i])
}

/// The annual-average intensity of a zone, any case.
pub fn zone_intensity(code: &str) -> Option<GramsPerKwh> {
    zone(code).map(|z| GramsPerKwh(z.g_per_kwh))
}

impl Zone {
    /// How the figure is named in `intensity_source`, e.g. `zone DK annual average (OWID 2021)`.
    pub fn source(&self) -> String {
        format!(
            "zone {} annual average ({ZONE_SOURCE} {})",
            self.code, self.year
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_plausible() {
        for w in ZONES.windows(2) {
            assert!(w[0].code < w[1].code, "{} before {}", w[0].code, w[1].code);
        }
        for z in ZONES {
            assert_eq!(z.code.len(), 2);
            assert!(z.code.chars().all(|c| c.is_ascii_uppercase()), "{}", z.code);
            assert!(z.g_per_kwh > 0.0 && z.g_per_kwh < 1000.0, "{}", z.code);
            assert!((2020..=2021).contains(&z.year), "{}", z.code);
        }
    }

    #[test]
    fn lookups_ignore_case_and_refuse_unknown_codes() {
        assert_eq!(zone_intensity("DK"), Some(GramsPerKwh(149.7)));
        assert_eq!(zone_intensity("dk"), Some(GramsPerKwh(149.7)));
        assert_eq!(zone_intensity("Se"), Some(GramsPerKwh(11.8)));
        assert_eq!(zone_intensity("LU"), None);
        assert_eq!(zone_intensity("XX"), None);
        assert_eq!(zone_intensity(""), None);
        assert_eq!(
            zone("fr").unwrap().source(),
            "zone FR annual average (OWID 2021)"
        );
    }

    #[test]
    fn covers_the_countries_sites_ask_for() {
        for c in [
            "US", "CA", "GB", "NO", "SE", "DK", "DE", "FR", "CH", "AU", "JP", "CN", "IN", "BR",
            "AT", "BE", "BG", "HR", "CY", "CZ", "EE", "FI", "GR", "HU", "IE", "IT", "LV", "LT",
            "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES",
        ] {
            assert!(zone(c).is_some(), "{c}");
        }
    }
}
