//! The result table: one line per figure, measured against the target.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Measured, with no target of its own (context for another line).
    Info,
    /// The measurement itself could not be made.
    Error,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Info => "info",
            Verdict::Error => "ERROR",
        })
    }
}

pub struct Line {
    pub row: u8,
    pub what: String,
    pub measured: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Line {
    /// A line compared with an upper bound.
    pub fn at_most(
        row: u8,
        what: String,
        value: f64,
        limit: f64,
        fmt: impl Fn(f64) -> String,
    ) -> Line {
        Line {
            row,
            what,
            measured: fmt(value),
            target: format!("≤ {}", fmt(limit)),
            verdict: if value <= limit {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
        }
    }

    pub fn info(row: u8, what: String, measured: String) -> Line {
        Line {
            row,
            what,
            measured,
            target: "—".into(),
            verdict: Verdict::Info,
        }
    }

    pub fn error(row: u8, err: &anyhow::Error) -> Line {
        Line {
            row,
            what: format!("could not measure: {err:#}"),
            measured: "—".into(),
            target: "—".into(),
            verdict: Verdict::Error,
        }
    }
}

/// A Markdown table, so the output can go into docs/benchmarks.md as is.
pub fn print(lines: &[Line]) {
    let header = ["row", "measure", "measured", "target", "result"];
    let cells: Vec<[String; 5]> = lines
        .iter()
        .map(|l| {
            [
                l.row.to_string(),
                l.what.clone(),
                l.measured.clone(),
                l.target.clone(),
                l.verdict.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let row = |c: &[String]| {
        let parts: Vec<String> = c
            .iter()
            .zip(width)
            .map(|(s, w)| format!("{s}{}", " ".repeat(w - s.chars().count())))
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    row(&header.map(String::from));
    let rule: Vec<String> = width.iter().map(|&w| "-".repeat(w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for c in &cells {
        row(c);
    }
}
