//! Every published figure carbontrack uses, in one place, each with its source.

/// Power usage effectiveness applied to measured energy: the Uptime Institute's
/// 2023 global average data-centre PUE, the figure carbontracker uses.
pub const DEFAULT_PUE: f64 = 1.58;

/// World-average carbon intensity of electricity, gCO2e/kWh (IEA, 2024), used
/// when a site configures nothing better; carbontracker uses the same figure.
pub const WORLD_AVERAGE_G_PER_KWH: f64 = 445.0;
