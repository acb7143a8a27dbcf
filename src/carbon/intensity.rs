//! Where the carbon intensity of a job's electricity comes from.

use std::path::PathBuf;

use crate::units::GramsPerKwh;

/// The configured source of carbon intensity (`intensity=` in plugstack.conf).
#[derive(Debug, Clone, PartialEq)]
pub enum IntensitySpec {
    /// Nothing configured: the world average.
    WorldAverage,
    /// A fixed figure the site chose.
    Fixed(GramsPerKwh),
    /// A zone's annual average from the shipped table.
    Zone(String),
    /// A site-maintained CSV of hourly `timestamp,g_per_kwh` rows.
    File(PathBuf),
}

impl IntensitySpec {
    pub fn parse(v: &str) -> Result<IntensitySpec, String> {
        if let Some(p) = v.strip_prefix("file:") {
            return if p.starts_with('/') {
                Ok(IntensitySpec::File(PathBuf::from(p)))
            } else {
                Err(format!("`{p}` is not an absolute path"))
            };
        }
        if let Ok(g) = v.parse::<f64>() {
            return if (0.0..=5000.0).contains(&g) {
                Ok(IntensitySpec::Fixed(GramsPerKwh(g)))
            } else {
                Err(format!("{g} gCO2e/kWh is out of range (0 to 5000)"))
            };
        }
        Err(format!(
            "`{v}` is not a number, a known zone code or file:/path"
        ))
    }
}
