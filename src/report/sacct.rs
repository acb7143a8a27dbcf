//! Reading `sacct` output so that no field's text can pass for another
//! record.
//!
//! sacct's parsable output (`-p`/`-P`) separates fields with `|` and records
//! with a newline, and prints a field's text as it is: a job's `Comment`
//! (which its user sets with `sbatch --comment`, or later with `sacctmgr
//! modify job`) holding a newline and `|` can fake a whole record, with a
//! job id and a `carbontrack:v1` segment of its user's choosing. So
//! carbontrack asks for `-p --delimiter=<D>` with a delimiter `D` drawn at
//! random for each call (a user cannot put into a field what is not known
//! when the field is written) and reads records as `f1 D f2 D … fN D \n`:
//! the end of a record is `D` then a newline, and a record that does not
//! have exactly the fields asked for is refused and counted, never guessed
//! at. A field's own newlines and `|` stay inside that field.

use std::io::Read;

/// A fresh delimiter: unit separators around 16 random hex digits.
pub fn delimiter() -> String {
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        // No /dev/urandom (a bare chroot): still not guessable in advance by
        // a job's user, who does not know when this runs.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("\u{1f}ct{hex}\u{1f}")
}

/// The sacct arguments that make it print with `delim`.
pub fn args(delim: &str) -> [String; 2] {
    ["-p".to_string(), format!("--delimiter={delim}")]
}

/// `sacct -n -X` for `jobs` (one id, or several comma-separated) with the
/// given columns: the allocations' records only, times in UTC, delimited by
/// a fresh [`delimiter`]. Returns the output and that delimiter, for
/// [`records`].
pub fn query(
    sacct: &std::path::Path,
    timeout: std::time::Duration,
    cluster: &str,
    jobs: &str,
    columns: &str,
) -> Result<(String, String), super::cmd::CmdError> {
    let delim = delimiter();
    let mut a: Vec<String> = vec!["-n".into(), "-X".into()];
    a.extend(args(&delim));
    if !cluster.is_empty() {
        a.extend(["-M".into(), cluster.to_string()]);
    }
    a.extend([
        "-j".into(),
        jobs.to_string(),
        "-o".into(),
        columns.to_string(),
    ]);
    let out = super::cmd::run(
        sacct,
        &a,
        &[("TZ", "UTC"), ("SLURM_TIME_FORMAT", "standard")],
        timeout,
    )?;
    Ok((out.stdout, delim))
}

/// The records of `sacct -p --delimiter=<delim>` output with `fields`
/// fields each, and how many records were refused for another count.
pub fn records<'a>(text: &'a str, delim: &str, fields: usize) -> (Vec<Vec<&'a str>>, usize) {
    let end = format!("{delim}\n");
    let mut out = Vec::new();
    let mut bad = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (rec, next) = match rest.find(&end) {
            Some(i) => (&rest[..i], &rest[i + end.len()..]),
            // No record end: a cut-short output; what is left is no record.
            None => {
                if !rest.trim().is_empty() {
                    bad += 1;
                }
                break;
            }
        };
        rest = next;
        let f: Vec<&str> = rec.split(delim).collect();
        if f.len() == fields {
            out.push(f);
        } else {
            bad += 1;
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiters_differ_and_hold_no_pipe_or_newline() {
        let (a, b) = (delimiter(), delimiter());
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(!a.contains('|') && !a.contains('\n'));
    }

    #[test]
    fn a_field_cannot_make_a_record() {
        let d = "\u{1f}ctX\u{1f}";
        let forged =
            "x\n99|bob|ml|gpu|2024-05-01T10:00:00|60|cpu=1|carbontrack:v1 energy_kwh=99 nodes=1";
        let text = format!("10{d}alice{d}{forged}{d}\n11{d}bob{d}{d}\n");
        let (r, bad) = records(&text, d, 3);
        assert_eq!(bad, 0);
        assert_eq!(r, [vec!["10", "alice", forged], vec!["11", "bob", ""]]);
        // A field guessing at the delimiter only spoils its own record.
        let text = format!("10{d}alice{d}a\u{1f}ctY\u{1f}\n12{d}{d}\n13{d}carol{d}{d}\n");
        let (r, bad) = records(&text, d, 3);
        assert_eq!(bad, 1);
        assert_eq!(r, [vec!["13", "carol", ""]]);
        // Wrong field counts and a cut-short tail are refused and counted.
        let text = format!("1{d}2{d}\n1{d}2{d}3{d}\n1{d}2");
        let (r, bad) = records(&text, d, 3);
        assert_eq!((r.len(), bad), (1, 2));
        let (r, bad) = records("", d, 3);
        assert!(r.is_empty() && bad == 0);
    }
}
