//! Slurm's compact host lists (`n[1-3,5],gpu[01-02]`), expanded to node names.
//!
//! The Epilog gets the job's nodes as one such expression
//! (`SLURM_JOB_NODELIST`, or `SLURM_NODELIST` in 22.05) and must know every
//! node a multi-node job ran on to tell a complete job from one whose node
//! failed. Expanding it here keeps the Epilog from running `scontrol show
//! hostnames` (a round trip to slurmctld) for every job on every node.

/// A host list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host list `{list}`: {problem}")]
pub struct HostlistError {
    pub list: String,
    pub problem: String,
}

/// More names than this is a mistake, not a job (Slurm's own limit is
/// far lower than anything that would make this matter).
const MAX_HOSTS: usize = 1 << 20;

/// Expands a host list into names, in order, without duplicates.
///
/// Accepts comma-separated entries, each with any number of bracket groups
/// (`rack[1-2]-n[01-03]`) holding numbers and ranges; zero padding of a
/// range's lower bound is kept (`[08-10]` gives `08`, `09`, `10`).
pub fn expand(list: &str) -> Result<Vec<String>, HostlistError> {
    let err = |problem: String| HostlistError {
        list: list.to_string(),
        problem,
    };
    let mut out: Vec<String> = Vec::new();
    for entry in split_top(list).map_err(err)? {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let mut names = vec![String::new()];
        let mut rest = entry;
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    if rest.contains(']') {
                        return Err(err(format!("unbalanced `]` in `{entry}`")));
                    }
                    names.iter_mut().for_each(|n| n.push_str(rest));
                    rest = "";
                }
                Some(open) => {
                    let (prefix, after) = rest.split_at(open);
                    let close = after
                        .find(']')
                        .ok_or_else(|| err(format!("unclosed `[` in `{entry}`")))?;
                    let items = expand_ranges(&after[1..close]).map_err(err)?;
                    if names.len().saturating_mul(items.len()) > MAX_HOSTS {
                        return Err(err(format!("more than {MAX_HOSTS} names")));
                    }
                    names = names
                        .iter()
                        .flat_map(|n| items.iter().map(move |i| format!("{n}{prefix}{i}")))
                        .collect();
                    rest = &after[close + 1..];
                }
            }
        }
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Splits at commas outside brackets.
fn split_top(list: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth > 0 => return Err("nested `[`".into()),
            '[' => depth += 1,
            ']' if depth == 0 => return Err("unbalanced `]`".into()),
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err("unclosed `[`".into());
    }
    parts.push(&list[start..]);
    Ok(parts)
}

/// `1-3,5,08-10` → the numbers as text, padded like each range's lower bound.
fn expand_ranges(inner: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in inner.split(',').map(str::trim) {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("`{item}` is not a number or a range"));
        }
        let (a, b): (u64, u64) = match (lo.parse(), hi.parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(format!("`{item}` is out of range")),
        };
        if b < a {
            return Err(format!("`{item}` runs backwards"));
        }
        if b - a >= MAX_HOSTS as u64 {
            return Err(format!("`{item}` has more than {MAX_HOSTS} names"));
        }
        let width = lo.len();
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_what_slurm_writes() {
        for (list, want) in [
            ("ct1", vec!["ct1"]),
            ("ct[1-2]", vec!["ct1", "ct2"]),
            ("n[1-3,5]", vec!["n1", "n2", "n3", "n5"]),
            ("gpu[08-10]", vec!["gpu08", "gpu09", "gpu10"]),
            ("a,b[1-2],c", vec!["a", "b1", "b2", "c"]),
            (
                "rack[1-2]-n[1-2]",
                vec!["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"],
            ),
            ("n[1-2],n2,n[2-3]", vec!["n1", "n2", "n3"]),
            ("x[7]", vec!["x7"]),
            ("node-a.b", vec!["node-a.b"]),
            ("", vec![]),
            (" ct1 , ct2 ", vec!["ct1", "ct2"]),
        ] {
            assert_eq!(expand(list).unwrap(), want, "{list}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_host_list() {
        for (list, why) in [
            ("n[1-3", "unclosed"),
            ("n1-3]", "unbalanced"),
            ("n[3-1]", "backwards"),
            ("n[a-b]", "not a number"),
            ("n[1-2[3]]", "nested"),
            ("n[]", "not a number"),
            ("n[0-99999999]", "more than"),
        ] {
            let e = expand(list).unwrap_err();
            assert!(e.to_string().contains(why), "{list}: {e}");
            assert!(e.to_string().contains(list), "{list}: {e}");
        }
    }
}
