//! What `squeue` says about a running job: its time limit, user and work
//! dir, for `carbontrack status` and for the sampler's live summary (which
//! asks once, off slurmstepd's main thread).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cmd;

/// What `squeue` says about a running job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueInfo {
    pub time_limit: Option<Duration>,
    pub work_dir: Option<PathBuf>,
    /// The job's user: name, uid and gid.
    pub user: Option<(String, u32, u32)>,
}

/// Slurm's time format: `[D-]HH:MM:SS`, `MM:SS`, `M`, or `UNLIMITED`.
pub fn parse_slurm_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let secs = match (parts.as_slice(), days > 0) {
        ([h, m, s], _) => h * 3600 + m * 60 + s,
        ([h, m], true) => h * 3600 + m * 60,
        ([m, s], false) => m * 60 + s,
        ([h], true) => h * 3600,
        ([m], false) => m * 60,
        _ => return None,
    };
    Some(Duration::from_secs(days * 86_400 + secs))
}

/// Time limit, user and work dir from `squeue -h -j N -o %l|%u|%U|%G|%Z`
/// (the work dir last: it may hold `|`).
pub fn queue_info(squeue: &Path, job: u32, timeout: Duration) -> Result<QueueInfo, cmd::CmdError> {
    let out = cmd::run(
        squeue,
        ["-h", "-j", &job.to_string(), "-o", "%l|%u|%U|%G|%Z"],
        &[],
        timeout,
    )?;
    Ok(parse_queue_line(
        out.stdout.lines().next().unwrap_or_default(),
    ))
}

/// One line of [`queue_info`]'s squeue output.
pub fn parse_queue_line(line: &str) -> QueueInfo {
    let mut f = line.splitn(5, '|');
    let limit = f.next().unwrap_or_default();
    let (name, uid, gid) = (f.next(), f.next(), f.next());
    let dir = f.next().unwrap_or_default().trim();
    let user = match (name, uid, gid) {
        (Some(n), Some(u), Some(g)) => u
            .trim()
            .parse()
            .ok()
            .zip(g.trim().parse().ok())
            .map(|(u, g)| (n.trim().to_string(), u, g)),
        _ => None,
    };
    QueueInfo {
        time_limit: parse_slurm_duration(limit),
        work_dir: (!dir.is_empty()).then(|| PathBuf::from(dir)),
        user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_durations() {
        for (s, want) in [
            ("1:00:00", Some(3600)),
            ("2-00:00:00", Some(172_800)),
            ("1-2", Some(93_600)),
            ("30:00", Some(1800)),
            ("5", Some(300)),
            ("UNLIMITED", None),
            ("INVALID", None),
        ] {
            assert_eq!(
                parse_slurm_duration(s),
                want.map(Duration::from_secs),
                "{s}"
            );
        }
    }

    #[test]
    fn queue_line_with_user_and_a_work_dir_holding_the_separator() {
        let q = parse_queue_line("1:00:00|bob|1001|1002|/home/bob/a|b");
        assert_eq!(q.time_limit, Some(Duration::from_secs(3600)));
        assert_eq!(q.user, Some(("bob".into(), 1001, 1002)));
        assert_eq!(q.work_dir, Some(PathBuf::from("/home/bob/a|b")));
        let q = parse_queue_line("UNLIMITED|bob|x|1002|");
        assert_eq!((q.time_limit, q.user, q.work_dir), (None, None, None));
    }
}
