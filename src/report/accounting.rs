//! The accounting segment (design.md, "Accounting"): the job total as one
//! quote-free line in a job text field, beside whatever else is there.
//!
//! ```text
//! carbontrack:v1 energy_kwh=0.158000 co2e_g=70.310 cpu_j=360000.000 dram_j=unknown gpu_j=0.000 pue=1.58 intensity=445.000 nodes=1
//! ```
//! Keys always appear in this order and `nodes=` ends the segment, so a reader
//! can find it inside free text. What was not measured is `unknown`, never 0.
//! A total that includes estimated figures (`cpu_tdp=`) has
//! `estimated=<components>` (`estimated=cpu`) before `nodes=`; a measured one
//! has no such key.
//! sacctmgr turns `"` and `'` into backticks (slurm-facts.md): the segment
//! has none, and the text around it is stored the way sacctmgr would store it,
//! so that delivering twice writes the same text.

use crate::footprint::fmt_kwh;

use super::total::JobTotal;

/// Marks the segment; the version changes only with an incompatible format.
pub const TAG: &str = "carbontrack:v1";

/// The keys after the tag, in order; the last one ends the segment.
pub const KEYS: [&str; 8] = [
    "energy_kwh",
    "co2e_g",
    "cpu_j",
    "dram_j",
    "gpu_j",
    "pue",
    "intensity",
    "nodes",
];

/// Written for a figure that was not measured.
pub const UNKNOWN: &str = "unknown";

/// The segment's figures, as written or read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub energy_kwh: Option<f64>,
    pub co2e_g: Option<f64>,
    pub cpu_j: Option<f64>,
    pub dram_j: Option<f64>,
    pub gpu_j: Option<f64>,
    pub pue: Option<f64>,
    pub intensity: Option<f64>,
    /// The components whose figures are estimates, comma-separated (`cpu`);
    /// `None` when all were measured.
    pub estimated: Option<String>,
    pub nodes: u32,
}

impl Segment {
    pub fn of(t: &JobTotal) -> Segment {
        Segment {
            energy_kwh: t.energy_kwh,
            co2e_g: t.co2e_g,
            cpu_j: t.cpu_j,
            dram_j: t.dram_j,
            gpu_j: t.gpu_j,
            pue: Some(t.pue),
            intensity: t.intensity_g_per_kwh,
            estimated: crate::footprint::estimated_components(&t.status)
                .map(|c| c.replace(", ", ",")),
            nodes: t.nodes,
        }
    }

    /// The segment text: no quotes, no newlines, no field separator `|`.
    pub fn format(&self) -> String {
        let f3 = |x: Option<f64>| x.map_or(UNKNOWN.to_string(), |x| format!("{x:.3}"));
        let estimated = self
            .estimated
            .as_ref()
            .map(|c| format!(" estimated={c}"))
            .unwrap_or_default();
        format!(
            "{TAG} energy_kwh={} co2e_g={} cpu_j={} dram_j={} gpu_j={} pue={} intensity={}{estimated} nodes={}",
            self.energy_kwh.map_or(UNKNOWN.to_string(), fmt_kwh),
            f3(self.co2e_g),
            f3(self.cpu_j),
            f3(self.dram_j),
            f3(self.gpu_j),
            self.pue.map_or(UNKNOWN.to_string(), short),
            f3(self.intensity),
            self.nodes
        )
    }

    /// The first segment found in a field's text, if any. Keys it does not
    /// know are ignored and missing ones are unknown, so a later minor
    /// addition still reads.
    pub fn parse(text: &str) -> Option<Segment> {
        let (start, end) = find(text)?;
        let mut s = Segment {
            energy_kwh: None,
            co2e_g: None,
            cpu_j: None,
            dram_j: None,
            gpu_j: None,
            pue: None,
            intensity: None,
            estimated: None,
            nodes: 0,
        };
        for tok in text[start + TAG.len()..end].split_whitespace() {
            let Some((k, v)) = tok.split_once('=') else {
                continue;
            };
            let num = v.parse::<f64>().ok().filter(|x| x.is_finite());
            match k {
                "energy_kwh" => s.energy_kwh = num,
                "co2e_g" => s.co2e_g = num,
                "cpu_j" => s.cpu_j = num,
                "dram_j" => s.dram_j = num,
                "gpu_j" => s.gpu_j = num,
                "pue" => s.pue = num,
                "intensity" => s.intensity = num,
                "estimated" => s.estimated = Some(v.to_string()).filter(|v| !v.is_empty()),
                "nodes" => s.nodes = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        Some(s)
    }
}

fn short(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Byte range of the first segment in `text`: from the tag (at the start or
/// after whitespace) over the `key=value` tokens that follow, up to and
/// including `nodes=…`.
fn find(text: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    let start = loop {
        let i = from + text[from..].find(TAG)?;
        let boundary_before = text[..i]
            .chars()
            .next_back()
            .is_none_or(char::is_whitespace);
        let boundary_after = text[i + TAG.len()..]
            .chars()
            .next()
            .is_none_or(char::is_whitespace);
        if boundary_before && boundary_after {
            break i;
        }
        from = i + TAG.len();
    };
    let mut end = start + TAG.len();
    let mut rest = &text[end..];
    loop {
        let trimmed = rest.trim_start();
        let ws = rest.len() - trimmed.len();
        if ws == 0 && !trimmed.is_empty() {
            break;
        }
        let tok_len = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let tok = &trimmed[..tok_len];
        let Some((k, v)) = tok.split_once('=') else {
            break;
        };
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            break;
        }
        // The last value is a count: punctuation right after it is the
        // surrounding text's.
        let tok_len = if k == "nodes" {
            k.len() + 1 + v.bytes().take_while(u8::is_ascii_alphanumeric).count()
        } else {
            tok_len
        };
        end += ws + tok_len;
        rest = &text[end..];
        if k == "nodes" {
            break;
        }
    }
    Some((start, end))
}

/// The field's new text: `existing` with its carbontrack segment replaced by
/// `segment` (or `segment` appended after a space), everything else kept, and
/// quotes turned into backticks as sacctmgr would store them.
pub fn merge(existing: &str, segment: &str) -> String {
    let merged = match find(existing) {
        Some((a, b)) => {
            let mut s = String::with_capacity(existing.len() + segment.len());
            s.push_str(&existing[..a]);
            s.push_str(segment);
            // A second, stale segment (e.g. written by hand) must not be
            // read back as the job's figures.
            let mut rest = existing[b..].to_string();
            while let Some((c, d)) = find(&rest) {
                rest = format!("{}{}", rest[..c].trim_end(), &rest[d..]);
            }
            s.push_str(&rest);
            s
        }
        None if existing.trim().is_empty() => segment.to_string(),
        None => format!("{} {segment}", existing.trim_end()),
    };
    as_sacctmgr_stores(&merged)
}

/// sacctmgr's storage of a value: `"` and `'` become backticks.
pub fn as_sacctmgr_stores(s: &str) -> String {
    s.replace(['"', '\''], "`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> Segment {
        Segment {
            energy_kwh: Some(0.158),
            co2e_g: Some(70.31),
            cpu_j: Some(360_000.0),
            dram_j: None,
            gpu_j: Some(0.0),
            pue: Some(1.58),
            intensity: Some(445.0),
            estimated: None,
            nodes: 1,
        }
    }

    /// A total with an estimate says so, before `nodes=`, and reads back;
    /// a reader that does not know the key still reads the rest.
    #[test]
    fn estimates_are_marked() {
        let est = Segment {
            estimated: Some("cpu".into()),
            ..seg()
        };
        let text = est.format();
        assert_eq!(
            text,
            "carbontrack:v1 energy_kwh=0.158000 co2e_g=70.310 cpu_j=360000.000 dram_j=unknown gpu_j=0.000 pue=1.58 intensity=445.000 estimated=cpu nodes=1"
        );
        assert_eq!(Segment::parse(&format!("x {text} y")), Some(est));
        assert_eq!(Segment::parse(TEXT).unwrap().estimated, None);
        for (status, marked) in [
            ("ok", None),
            ("estimated: 1 of 3 rows estimated (cpu)", Some("cpu")),
            (
                "incomplete: 1 of 3 rows unavailable (dram), 1 estimated (cpu)",
                Some("cpu"),
            ),
            ("incomplete: 1 of 3 rows unavailable (dram)", None),
        ] {
            assert_eq!(
                crate::footprint::estimated_components(status),
                marked,
                "{status}"
            );
        }
    }

    const TEXT: &str = "carbontrack:v1 energy_kwh=0.158000 co2e_g=70.310 cpu_j=360000.000 dram_j=unknown gpu_j=0.000 pue=1.58 intensity=445.000 nodes=1";

    #[test]
    fn format_is_the_contract() {
        assert_eq!(seg().format(), TEXT);
        let none = Segment {
            energy_kwh: None,
            co2e_g: None,
            cpu_j: None,
            gpu_j: None,
            intensity: None,
            nodes: 2,
            ..seg()
        };
        assert_eq!(
            none.format(),
            "carbontrack:v1 energy_kwh=unknown co2e_g=unknown cpu_j=unknown dram_j=unknown gpu_j=unknown pue=1.58 intensity=unknown nodes=2"
        );
        // Small jobs keep significant figures in kWh.
        let small = Segment {
            energy_kwh: Some(0.000438889),
            ..seg()
        };
        assert!(small.format().contains("energy_kwh=0.000438889 "));
        for c in ['"', '\'', '|', '\n'] {
            assert!(!none.format().contains(c));
        }
    }

    #[test]
    fn parses_back_inside_other_text() {
        for text in [
            TEXT.to_string(),
            format!("checked by admin {TEXT}"),
            format!("{TEXT} note=kept; ticket 42"),
            format!("a\n{TEXT}\nb"),
        ] {
            assert_eq!(Segment::parse(&text), Some(seg()), "{text}");
        }
        assert_eq!(Segment::parse("no segment here"), None);
        assert_eq!(Segment::parse("xcarbontrack:v1 nodes=1"), None);
        assert_eq!(
            Segment::parse("carbontrack:v1 nodes=3 energy_kwh=9").map(|s| (s.nodes, s.energy_kwh)),
            Some((3, None)),
            "keys after nodes= are not the segment's"
        );
    }

    #[test]
    fn merge_keeps_other_text() {
        let new = seg().format();
        let old = "carbontrack:v1 energy_kwh=1.000000 co2e_g=1.000 cpu_j=1.000 dram_j=1.000 gpu_j=1.000 pue=1.2 intensity=1.000 nodes=3";
        for (existing, want) in [
            ("".to_string(), new.clone()),
            ("  ".to_string(), new.clone()),
            ("ticket 42".to_string(), format!("ticket 42 {new}")),
            ("ticket 42\n".to_string(), format!("ticket 42 {new}")),
            (old.to_string(), new.clone()),
            (
                format!("before {old} after=1 x"),
                format!("before {new} after=1 x"),
            ),
            (
                format!("{old}; more"),
                format!("{old}; more").replace(old, &new),
            ),
            (format!("a {old} b {old} c"), format!("a {new} b c")),
            // sacctmgr stores quotes as backticks; so do we.
            (
                "said \"hi\" it's".to_string(),
                format!("said `hi` it`s {new}"),
            ),
            (new.clone(), new.clone()),
        ] {
            assert_eq!(merge(&existing, &new), want, "from `{existing}`");
        }
        // Idempotent: merging twice is merging once.
        let once = merge("note", &new);
        assert_eq!(merge(&once, &new), once);
    }
}
