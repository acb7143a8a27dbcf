//! One `/proc/<pid>/stat` line, the fields carbontrack reads from it. The
//! command name (field 2) may hold spaces and parentheses, so fields are
//! counted after its last `)` (proc(5)).

/// The fields of a process's `stat` line that carbontrack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `Z` (ended, not reaped), `X` (dead) …
    pub state: char,
    /// Field 4.
    pub ppid: u32,
    /// Fields 14 + 15, utime + stime, in clock ticks.
    pub own_ticks: u64,
    /// Fields 16 + 17, cutime + cstime: the reaped children's, in ticks.
    pub reaped_ticks: u64,
    /// Field 22, starttime: clock ticks after boot; with the id it names
    /// the process (the kernel gives an id again, not a start time).
    pub start: u64,
}

/// Parses a `stat` line; `None` when it is not one.
pub fn parse(line: &str) -> Option<ProcStat> {
    let (_, rest) = line.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After `)`, field n of proc(5) is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        own_ticks: num(14)? + num(15)?,
        reaped_ticks: num(16)? + num(17)?,
        start: num(22)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (a) b (c)) S 4241 4242 4242 0 -1 4194560 100 0 0 0 200 100 30 20 20 0 1 0 98765 1000 10 18446744073709551615";
        assert_eq!(
            parse(line),
            Some(ProcStat {
                state: 'S',
                ppid: 4241,
                own_ticks: 300,
                reaped_ticks: 50,
                start: 98765,
            })
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("1 (x) Z"), None);
    }
}
