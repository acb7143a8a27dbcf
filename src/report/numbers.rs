//! Numbers an admin reads: the ledger's and the reports' figures in fixed
//! precision (never `-0.0`, never a 17-digit shortest-round-trip float), and
//! sums that stay exact.
//!
//! Each quantity has two precisions:
//! - its *record* precision, at which the ledger stores it and the reports
//!   sum it, in whole units (integers, so sums are exact and a report's
//!   groups add up to its total to the last unit): joules to the millijoule,
//!   kWh to 1e-10 (0.36 mJ), gCO2e to the microgram, GPU-hours and seconds to
//!   1e-6 and 1e-3;
//! - its *display* precision in a report's table and CSV: kWh 6 decimals,
//!   gCO2e 3, GPU-hours 3. The total is the total rounded; the groups are
//!   rounded so that they add up to it exactly (largest remainder), each
//!   within one display unit of its own value.
//!
//! JSON reports carry the record precision: tools sum them again.

/// Record precision of kWh (1e-10 kWh = 0.36 mJ, finer than the joules' mJ).
pub const KWH_DECIMALS: u32 = 10;
/// Record precision of gCO2e (µg).
pub const CO2E_DECIMALS: u32 = 6;
/// Record precision of joules (mJ, as the footprint CSV).
pub const JOULES_DECIMALS: u32 = 3;
/// Record precision of GPU-hours.
pub const GPU_HOURS_DECIMALS: u32 = 6;
/// Record precision of durations in seconds (ms).
pub const SECONDS_DECIMALS: u32 = 3;
/// Record precision of PUE and intensity (factors, written trimmed).
pub const FACTOR_DECIMALS: u32 = 6;

/// Display precision in report tables and CSV.
pub const KWH_SHOWN: u32 = 6;
pub const CO2E_SHOWN: u32 = 3;
pub const GPU_HOURS_SHOWN: u32 = 3;

fn pow10(d: u32) -> i128 {
    10i128.pow(d)
}

/// Below this, an f64 holds every integer exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// `x` in whole units of 10^-`decimals`, rounded half away from zero; a
/// non-finite value is 0 (no figure is ever made up of a NaN).
pub fn to_units(x: f64, decimals: u32) -> i128 {
    if !x.is_finite() {
        return 0;
    }
    let scaled = x * 10f64.powi(decimals as i32);
    if scaled.abs() < EXACT {
        return scaled.round() as i128;
    }
    // Beyond 2^53 units (9e5 kWh at 1e-10): through the decimal text.
    let text = format!("{:.*}", decimals as usize + 1, x.abs());
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut u: i128 = format!("{int}{}", &frac[..decimals as usize])
        .parse()
        .unwrap_or(i128::MAX / 4);
    if frac
        .as_bytes()
        .get(decimals as usize)
        .is_some_and(|&b| b >= b'5')
    {
        u += 1;
    }
    if x < 0.0 { -u } else { u }
}

/// Whole units of 10^-`decimals` as plain decimal text (`-1.250`, `0.000`).
pub fn format_units(u: i128, decimals: u32) -> String {
    let sign = if u < 0 { "-" } else { "" };
    let a = u.unsigned_abs();
    let p = pow10(decimals).unsigned_abs();
    if decimals == 0 {
        return format!("{sign}{a}");
    }
    format!("{sign}{}.{:0w$}", a / p, a % p, w = decimals as usize)
}

/// `x` rounded to `decimals`, as text; never `-0`.
pub fn fixed(x: f64, decimals: u32) -> String {
    format_units(to_units(x, decimals), decimals)
}

/// [`fixed`] without trailing zeros (`1.5`, `400`): for factors such as
/// PUE and intensity, which are not summed.
pub fn trimmed(x: f64, decimals: u32) -> String {
    let s = fixed(x, decimals);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Units of 10^-`decimals` as an f64 (for JSON): the nearest double to the
/// decimal (one correctly rounded division), so it prints with at most
/// `decimals` digits after the point; never `-0`.
pub fn units_value(u: i128, decimals: u32) -> f64 {
    if u == 0 {
        return 0.0;
    }
    if (u.unsigned_abs() as f64) < EXACT && decimals <= 22 {
        return u as f64 / 10f64.powi(decimals as i32);
    }
    format_units(u, decimals).parse().unwrap_or(0.0)
}

/// Rounds `parts` (units of 10^-`from`) to units of 10^-`to` (`to <= from`)
/// so that they add up exactly to their sum rounded: the total's units and
/// each part's. Largest remainder: every part is its value rounded down or
/// up, the ones nearest to the next unit going up first.
pub fn apportion(parts: &[i128], from: u32, to: u32) -> (Vec<i128>, i128) {
    let f = pow10(from.saturating_sub(to));
    let total: i128 = parts.iter().sum();
    let total_to = round_div(total, f);
    let mut out: Vec<i128> = parts.iter().map(|p| p.div_euclid(f)).collect();
    let short = total_to - out.iter().sum::<i128>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    // Largest remainder first; ties by position, so the result is stable.
    order.sort_by_key(|&i| std::cmp::Reverse(parts[i].rem_euclid(f)));
    if (0..=parts.len() as i128).contains(&short) {
        for &i in order.iter().take(short as usize) {
            out[i] += 1;
        }
    } else {
        out = parts.iter().map(|&p| round_div(p, f)).collect();
    }
    (out, total_to)
}

/// `a / b` rounded half away from zero (`b > 0`).
fn round_div(a: i128, b: i128) -> i128 {
    let q = a.abs() / b;
    let r = a.abs() % b;
    let q = if 2 * r >= b { q + 1 } else { q };
    if a < 0 { -q } else { q }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_precision_text() {
        for (x, d, want) in [
            (0.0, 3, "0.000"),
            (-0.0, 3, "0.000"),
            (-0.0001, 3, "0.000"),
            (-0.0004, 6, "-0.000400"),
            (1.0 / 3.0, 6, "0.333333"),
            (2.0 / 3.0, 6, "0.666667"),
            (0.0005, 3, "0.001"),
            (0.0015, 3, "0.002"),
            (2.5, 0, "3"),
            (0.1 + 0.2, 9, "0.300000000"),
            (1234567.891_234_5, 3, "1234567.891"),
            (0.001_098_623_333_333_333_4, 9, "0.001098623"),
            (4.388_888_888_888_889e-7, 9, "0.000000439"),
            (f64::NAN, 3, "0.000"),
            (f64::INFINITY, 3, "0.000"),
            (1e-300, 6, "0.000000"),
            (123_456_789_012.345_67, 10, "123456789012.3456726074"),
        ] {
            assert_eq!(fixed(x, d), want, "{x} at {d}");
        }
        assert_eq!(trimmed(1.5, 6), "1.5");
        assert_eq!(trimmed(400.0, 6), "400");
        assert_eq!(trimmed(1.58, 6), "1.58");
        assert_eq!(trimmed(-0.0, 6), "0");
        assert_eq!(trimmed(1.0 / 3.0, 6), "0.333333");
        assert_eq!(units_value(to_units(0.1 + 0.2, 9), 9).to_string(), "0.3");
        assert_eq!(units_value(0, 9).to_string(), "0");
        assert_eq!(units_value(-1, 3).to_string(), "-0.001");
    }

    #[test]
    fn apportioned_parts_add_up_to_the_total() {
        for (parts, from, to, want, want_total) in [
            // Three thirds of 1.000: rounded alone 0.333 each, 0.999 in all.
            (
                vec![333_333, 333_333, 333_334],
                6,
                3,
                vec![333, 333, 334],
                1000,
            ),
            (vec![1_500, 1_500], 3, 0, vec![2, 1], 3),
            (vec![400, 400, 400, 400], 3, 0, vec![1, 1, 0, 0], 2),
            (vec![], 6, 3, vec![], 0),
            (vec![7], 6, 6, vec![7], 7),
            (vec![999_999_999], 9, 6, vec![1_000_000], 1_000_000),
        ] {
            let (got, total) = apportion(&parts, from, to);
            assert_eq!((got.clone(), total), (want, want_total), "{parts:?}");
            assert_eq!(got.iter().sum::<i128>(), total);
        }
        // Many small parts: each within one unit of its value, sum exact.
        let parts: Vec<i128> = (0..1000).map(|i| 123_456 + i * 7).collect();
        let (got, total) = apportion(&parts, 9, 6);
        assert_eq!(got.iter().sum::<i128>(), total);
        assert_eq!(total, (parts.iter().sum::<i128>() + 500) / 1000);
        for (g, p) in got.iter().zip(&parts) {
            assert!((g * 1000 - p).abs() < 1000, "{g} for {p}");
        }
    }
}
