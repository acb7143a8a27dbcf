//! `carbontrack report`: job count, GPU-hours, energy and CO2e per user,
//! account, partition or day, from Slurm accounting (the segments) or from
//! the ledger. The aggregation is pure; reading sacct is in [`sacct_records`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::accounting::Segment;
use super::total::JobTotal;
use super::{cmd, numbers};

/// One tracked job, whichever source it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// What tells this job from every other: its cluster, id and start (ids
    /// are reused); `<cluster>:<id>@<start>` or `<id>@<start>`.
    pub job_id: String,
    pub user: String,
    pub account: String,
    pub partition: String,
    /// When the job ended (UTC); `None` if unknown.
    pub end: Option<SystemTime>,
    pub gpu_hours: f64,
    pub energy_kwh: Option<f64>,
    pub co2e_g: Option<f64>,
    /// Whether its figures include estimates (`cpu_tdp=`).
    pub estimated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    User,
    Account,
    Partition,
    Day,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Which jobs count: all given conditions hold. `since`/`until` bound the
/// job's end time, `since` inclusive, `until` exclusive, so consecutive
/// periods never count a job twice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub user: Option<String>,
    pub account: Option<String>,
    pub partition: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

impl Filter {
    pub fn admits(&self, r: &JobRecord) -> bool {
        self.admits_job(&r.as_job())
    }

    fn admits_job(&self, r: &Job<'_>) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_ref().is_none_or(|w| w == have);
        eq(&self.user, r.user)
            && eq(&self.account, r.account)
            && eq(&self.partition, r.partition)
            && self.since.is_none_or(|s| r.end.is_some_and(|e| e >= s))
            && self.until.is_none_or(|u| r.end.is_some_and(|e| e < u))
    }
}

/// What the aggregation reads of a job, borrowed from wherever it is held.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub user: &'a str,
    pub account: &'a str,
    pub partition: &'a str,
    pub end: Option<SystemTime>,
    pub gpu_hours: f64,
    pub energy_kwh: Option<f64>,
    pub co2e_g: Option<f64>,
    pub estimated: bool,
}

impl JobRecord {
    fn as_job(&self) -> Job<'_> {
        Job {
            user: &self.user,
            account: &self.account,
            partition: &self.partition,
            end: self.end,
            gpu_hours: self.gpu_hours,
            energy_kwh: self.energy_kwh,
            co2e_g: self.co2e_g,
            estimated: self.estimated,
        }
    }
}

/// Totals of one group (or of everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub group: String,
    pub jobs: u64,
    pub gpu_hours: f64,
    /// Sums over the jobs whose figure is known.
    pub energy_kwh: f64,
    pub co2e_g: f64,
    /// Jobs whose energy or CO2e is unknown: the sums above leave them out.
    pub unmeasured_jobs: u64,
    /// The sums in whole units of the record precision ([`numbers`]:
    /// GPU-hours, kWh, gCO2e), so that they are exact and the groups add up
    /// to the total; the f64s above follow them.
    #[serde(skip)]
    units: [i128; 3],
    /// Jobs whose figures, in the sums above, include estimates (`cpu_tdp=`).
    pub estimated_jobs: u64,
}

/// The record precision of [`Totals`]' sums, and the shown one.
const UNIT_DECIMALS: [u32; 3] = [
    numbers::GPU_HOURS_DECIMALS,
    numbers::KWH_DECIMALS,
    numbers::CO2E_DECIMALS,
];
const SHOWN_DECIMALS: [u32; 3] = [
    numbers::GPU_HOURS_SHOWN,
    numbers::KWH_SHOWN,
    numbers::CO2E_SHOWN,
];

impl Totals {
    fn add(&mut self, r: &Job<'_>) {
        self.jobs += 1;
        let values = [
            r.gpu_hours,
            r.energy_kwh.unwrap_or(0.0),
            r.co2e_g.unwrap_or(0.0),
        ];
        for ((u, v), d) in self.units.iter_mut().zip(values).zip(UNIT_DECIMALS) {
            *u += numbers::to_units(v, d);
        }
        if r.energy_kwh.is_none() || r.co2e_g.is_none() {
            self.unmeasured_jobs += 1;
        }
        if r.estimated {
            self.estimated_jobs += 1;
        }
    }

    /// The f64 figures from the exact sums, once all jobs are in.
    fn settle(mut self) -> Totals {
        self.gpu_hours = numbers::units_value(self.units[0], UNIT_DECIMALS[0]);
        self.energy_kwh = numbers::units_value(self.units[1], UNIT_DECIMALS[1]);
        self.co2e_g = numbers::units_value(self.units[2], UNIT_DECIMALS[2]);
        self
    }
}

/// The shown figures of each group and of the total (GPU-hours, kWh,
/// gCO2e, in that order): the total rounded, the groups rounded so that
/// they add up to it ([`numbers::apportion`]).
fn shown(groups: &[Totals], total: &Totals) -> (Vec<[String; 3]>, [String; 3]) {
    let mut rows: Vec<[String; 3]> = vec![Default::default(); groups.len()];
    let mut all: [String; 3] = Default::default();
    for k in 0..3 {
        let parts: Vec<i128> = if groups.is_empty() {
            vec![total.units[k]]
        } else {
            groups.iter().map(|g| g.units[k]).collect()
        };
        let (parts, sum) = numbers::apportion(&parts, UNIT_DECIMALS[k], SHOWN_DECIMALS[k]);
        for (row, p) in rows.iter_mut().zip(parts) {
            row[k] = numbers::format_units(p, SHOWN_DECIMALS[k]);
        }
        all[k] = numbers::format_units(sum, SHOWN_DECIMALS[k]);
    }
    (rows, all)
}

/// The groups in key order, then the total over all admitted jobs. A job is
/// counted once even if it appears twice (a ledger shared by retries).
pub fn aggregate(
    records: &[JobRecord],
    filter: &Filter,
    by: Option<GroupBy>,
) -> (Vec<Totals>, Totals) {
    let mut agg = Aggregator::new(filter, by);
    let mut seen = HashSet::new();
    for r in records {
        agg.offer(&r.as_job(), || seen.insert(&r.job_id));
    }
    agg.finish()
}

/// Totals built one job at a time, so a source as large as a ledger of
/// millions of jobs can be streamed through without holding its rows.
pub struct Aggregator<'f> {
    filter: &'f Filter,
    by: Option<GroupBy>,
    groups: HashMap<String, Totals>,
    /// Grouping by day: the UTC day number, named only at the end.
    days: HashMap<Option<i64>, Totals>,
    all: Totals,
}

impl<'f> Aggregator<'f> {
    pub fn new(filter: &'f Filter, by: Option<GroupBy>) -> Aggregator<'f> {
        Aggregator {
            filter,
            by,
            groups: HashMap::new(),
            days: HashMap::new(),
            all: Totals {
                group: "total".into(),
                ..Totals::default()
            },
        }
    }

    /// Whether [`Job::end`] is used: a source may skip parsing it if not.
    pub fn needs_end(&self) -> bool {
        self.by == Some(GroupBy::Day) || self.filter.since.is_some() || self.filter.until.is_some()
    }

    /// Counts `job` if the filter admits it and `first_sight` says it was
    /// not counted before (asked only for admitted jobs).
    pub fn offer(&mut self, job: &Job<'_>, first_sight: impl FnOnce() -> bool) {
        if !self.filter.admits_job(job) || !first_sight() {
            return;
        }
        self.all.add(job);
        let key = match self.by {
            None => return,
            Some(GroupBy::Day) => {
                let day = job.end.map(day_number);
                return self.days.entry(day).or_default().add(job);
            }
            Some(GroupBy::User) => job.user,
            Some(GroupBy::Account) => job.account,
            Some(GroupBy::Partition) => job.partition,
        };
        match self.groups.get_mut(key) {
            Some(t) => t.add(job),
            None => {
                let mut t = Totals {
                    group: key.to_string(),
                    ..Totals::default()
                };
                t.add(job);
                self.groups.insert(key.to_string(), t);
            }
        }
    }

    /// The groups in key order, then the total.
    pub fn finish(self) -> (Vec<Totals>, Totals) {
        let days = self.days.into_iter().map(|(d, mut t)| {
            t.group = d.map_or_else(|| "unknown".into(), |d| day(day_start(d)));
            t
        });
        let mut groups: Vec<Totals> = self
            .groups
            .into_values()
            .chain(days)
            .map(Totals::settle)
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        (groups, self.all.settle())
    }
}

const DAY_SECS: i64 = 86_400;

/// Days since 1970-01-01 (UTC) of `t`; negative before.
fn day_number(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX) / DAY_SECS,
        Err(e) => {
            // Floor, not truncation, below zero.
            let before = e.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            let exact = whole % DAY_SECS == 0 && before.subsec_nanos() == 0;
            -(whole / DAY_SECS) - i64::from(!exact)
        }
    }
}

fn day_start(d: i64) -> SystemTime {
    let secs = Duration::from_secs(d.unsigned_abs() * DAY_SECS as u64);
    if d >= 0 {
        UNIX_EPOCH + secs
    } else {
        UNIX_EPOCH - secs
    }
}

/// The UTC date of a time, `YYYY-MM-DD`.
pub fn day(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// The report text.
pub fn render(groups: &[Totals], total: &Totals, by: Option<GroupBy>, format: Format) -> String {
    let key = match by {
        Some(GroupBy::User) => "user",
        Some(GroupBy::Account) => "account",
        Some(GroupBy::Partition) => "partition",
        Some(GroupBy::Day) => "day",
        None => "group",
    };
    let rows: Vec<&Totals> = groups.iter().chain(std::iter::once(total)).collect();
    let (mut figures, all) = shown(groups, total);
    figures.push(all);
    let cells = |(t, f): (&Totals, &[String; 3])| {
        vec![
            t.group.clone(),
            t.jobs.to_string(),
            f[0].clone(),
            f[1].clone(),
            f[2].clone(),
            t.unmeasured_jobs.to_string(),
            t.estimated_jobs.to_string(),
        ]
    };
    let header = [
        key,
        "jobs",
        "gpu_hours",
        "energy_kwh",
        "co2e_g",
        "unmeasured_jobs",
        "estimated_jobs",
    ];
    match format {
        Format::Json => {
            #[derive(Serialize)]
            struct Out<'a> {
                group_by: &'a str,
                groups: &'a [Totals],
                total: &'a Totals,
            }
            let mut s = serde_json::to_string_pretty(&Out {
                group_by: key,
                groups,
                total,
            })
            .unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(header);
            for r in rows.into_iter().zip(&figures) {
                let _ = w.write_record(cells(r));
            }
            String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
        }
        Format::Table => {
            let table: Vec<Vec<String>> = std::iter::once(header.map(String::from).to_vec())
                .chain(rows.iter().copied().zip(&figures).map(cells))
                .collect();
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    table
                        .iter()
                        .map(|r| r[i].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let mut s = String::new();
            for (n, r) in table.iter().enumerate() {
                if n == table.len() - 1 && table.len() > 2 {
                    let line: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                    s.push_str(&"-".repeat(line));
                    s.push('\n');
                }
                let line: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (c, w))| {
                        if i == 0 {
                            format!("{c:<w$}")
                        } else {
                            format!("{c:>w$}")
                        }
                    })
                    .collect();
                s.push_str(line.join("  ").trim_end());
                s.push('\n');
            }
            s
        }
    }
}

/// Ledger rows as records.
pub fn ledger_records(rows: &[JobTotal]) -> Vec<JobRecord> {
    rows.iter()
        .map(|t| JobRecord {
            job_id: if t.cluster.is_empty() {
                format!("{}@{}", t.job_id, t.start)
            } else {
                format!("{}:{}@{}", t.cluster, t.job_id, t.start)
            },
            user: t.user.clone(),
            account: t.account.clone(),
            partition: t.partition.clone(),
            end: parse_time(&t.end),
            gpu_hours: t.gpu_hours,
            energy_kwh: t.energy_kwh,
            co2e_g: t.co2e_g,
            estimated: crate::footprint::estimated_components(&t.status).is_some(),
        })
        .collect()
}

/// A time as reports take it: RFC 3339, or `YYYY-MM-DD[THH:MM[:SS]]` read
/// as UTC (also sacct's output under `TZ=UTC`).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    // Borrowed in the common case: a report may parse millions.
    let full: Cow<str> = match s.len() {
        10 => format!("{s}T00:00:00Z").into(),
        16 => format!("{s}:00Z").into(),
        19 => format!("{s}Z").into(),
        _ => s.into(),
    };
    humantime::parse_rfc3339_weak(&full).ok()
}

/// The sacct columns read, in order, before the job field.
pub const SACCT_COLUMNS: &str = "JobID,User,Account,Partition,End,ElapsedRaw,AllocTRES,Start";

/// Records from `sacct -n -p --delimiter=<delim> -o SACCT_COLUMNS,<field>`
/// output ([`super::sacct`]): jobs whose field holds a segment, and how many
/// records did not read. No field's text, a user's `--comment` say, can
/// make a record of its own.
pub fn parse_sacct(text: &str, delim: &str) -> (Vec<JobRecord>, usize) {
    let n = SACCT_COLUMNS.split(',').count();
    let (records, bad) = super::sacct::records(text, delim, n + 1);
    let jobs = records
        .iter()
        .filter_map(|f| {
            let seg = Segment::parse(f[n])?;
            let elapsed: f64 = f[5].parse().unwrap_or(0.0);
            Some(JobRecord {
                job_id: format!("{}@{}", f[0], f[7]),
                user: f[1].to_string(),
                account: f[2].to_string(),
                partition: f[3].to_string(),
                end: parse_time(f[4]),
                gpu_hours: gpus(f[6]) * elapsed / 3600.0,
                energy_kwh: seg.energy_kwh,
                co2e_g: seg.co2e_g,
                estimated: seg.estimated.is_some(),
            })
        })
        .collect();
    (jobs, bad)
}

/// The GPU count in an AllocTRES string (`…,gres/gpu=2,…`).
pub fn gpus(tres: &str) -> f64 {
    tres.split(',')
        .find_map(|kv| kv.strip_prefix("gres/gpu="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// Asks sacct for the jobs the filter may admit (the user's own or, for
/// those Slurm lets see them, everyone's), with times in UTC: every job with
/// a reused id too (`-D`). Returns them and how many records did not read.
pub fn sacct_records(
    sacct: &Path,
    field: &str,
    filter: &Filter,
    timeout: Duration,
) -> Result<(Vec<JobRecord>, usize), cmd::CmdError> {
    let fmt = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string()[..19].to_string();
    let delim = super::sacct::delimiter();
    let [p, d] = super::sacct::args(&delim);
    let mut args: Vec<String> = vec![
        "-a".into(),
        "-X".into(),
        "-D".into(),
        "-n".into(),
        p,
        d,
        "-o".into(),
        format!("{SACCT_COLUMNS},{field}"),
        "-S".into(),
        filter
            .since
            .map(fmt)
            .unwrap_or_else(|| "1970-01-01T00:00:00".into()),
    ];
    if let Some(u) = filter.until {
        args.extend(["-E".into(), fmt(u)]);
    }
    for (flag, v) in [
        ("-u", &filter.user),
        ("-A", &filter.account),
        ("-r", &filter.partition),
    ] {
        if let Some(v) = v {
            args.extend([flag.into(), v.clone()]);
        }
    }
    let out = cmd::run(
        sacct,
        &args,
        &[("TZ", "UTC"), ("SLURM_TIME_FORMAT", "standard")],
        timeout,
    )?;
    Ok(parse_sacct(&out.stdout, &delim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u32, user: &str, account: &str, end: &str, kwh: Option<f64>) -> JobRecord {
        JobRecord {
            job_id: id.to_string(),
            user: user.into(),
            account: account.into(),
            partition: "gpu".into(),
            end: parse_time(end),
            gpu_hours: 0.5,
            energy_kwh: kwh,
            co2e_g: kwh.map(|k| k * 100.0),
            estimated: false,
        }
    }

    /// Jobs whose figures include estimates are counted, in every format,
    /// and still add to the sums.
    #[test]
    fn jobs_with_estimates_are_counted() {
        let mut recs = vec![
            rec(1, "alice", "ml", "2024-05-01T10:00:00Z", Some(1.0)),
            rec(2, "bob", "ml", "2024-05-01T11:00:00Z", Some(2.0)),
        ];
        recs[1].estimated = true;
        let (g, t) = aggregate(&recs, &Filter::default(), Some(GroupBy::User));
        assert_eq!((g[0].estimated_jobs, g[1].estimated_jobs), (0, 1));
        assert_eq!((t.jobs, t.estimated_jobs, t.energy_kwh), (2, 1, 3.0));
        let csv = render(&g, &t, Some(GroupBy::User), Format::Csv);
        assert!(
            csv.starts_with(
                "user,jobs,gpu_hours,energy_kwh,co2e_g,unmeasured_jobs,estimated_jobs\n"
            ),
            "{csv}"
        );
        assert!(
            csv.ends_with("total,2,1.000,3.000000,300.000,0,1\n"),
            "{csv}"
        );
        assert!(render(&g, &t, None, Format::Json).contains("\"estimated_jobs\": 1"));
        // From accounting: the segment's `estimated=` key.
        let line = "5|carol|ml|gpu|2024-05-01T10:00:00|60|cpu=1|2024-05-01T09:59:00|carbontrack:v1 energy_kwh=0.001 co2e_g=0.1 cpu_j=3600 dram_j=unknown gpu_j=0 pue=1 intensity=100 estimated=cpu nodes=1|\n";
        let (jobs, bad) = parse_sacct(line, "|");
        assert_eq!((jobs.len(), bad), (1, 0));
        assert!(jobs[0].estimated);
    }

    #[test]
    fn groups_add_up_to_their_jobs() {
        let recs = vec![
            rec(1, "alice", "ml", "2024-05-01T10:00:00Z", Some(1.0)),
            rec(2, "bob", "ml", "2024-05-01T23:59:59Z", Some(2.0)),
            rec(3, "alice", "phys", "2024-05-02T00:00:00Z", Some(4.0)),
            rec(4, "alice", "ml", "2024-05-03T00:00:00Z", None),
            rec(1, "alice", "ml", "2024-05-01T10:00:00Z", Some(1.0)),
        ];
        let (g, t) = aggregate(&recs, &Filter::default(), Some(GroupBy::User));
        assert_eq!(g.len(), 2);
        assert_eq!(
            (
                g[0].group.as_str(),
                g[0].jobs,
                g[0].energy_kwh,
                g[0].unmeasured_jobs
            ),
            ("alice", 3, 5.0, 1)
        );
        assert_eq!((g[1].jobs, g[1].energy_kwh, g[1].co2e_g), (1, 2.0, 200.0));
        assert_eq!((t.jobs, t.energy_kwh, t.gpu_hours), (4, 7.0, 2.0));
        let (g, _) = aggregate(&recs, &Filter::default(), Some(GroupBy::Day));
        let days: Vec<(&str, u64)> = g.iter().map(|t| (t.group.as_str(), t.jobs)).collect();
        assert_eq!(
            days,
            [("2024-05-01", 2), ("2024-05-02", 1), ("2024-05-03", 1)]
        );

        let f = Filter {
            account: Some("ml".into()),
            since: parse_time("2024-05-01T12:00"),
            until: parse_time("2024-05-03"),
            ..Filter::default()
        };
        let (_, t) = aggregate(&recs, &f, None);
        assert_eq!((t.jobs, t.energy_kwh), (1, 2.0));
    }

    #[test]
    fn day_numbers_floor_on_both_sides_of_1970() {
        let at = |s: f64| {
            let d = Duration::from_secs_f64(s.abs());
            if s >= 0.0 {
                UNIX_EPOCH + d
            } else {
                UNIX_EPOCH - d
            }
        };
        for (secs, want) in [
            (0.0, 0),
            (86_399.5, 0),
            (86_400.0, 1),
            (-0.5, -1),
            (-86_400.0, -1),
            (-86_400.5, -2),
        ] {
            assert_eq!(day_number(at(secs)), want, "{secs} s");
            let start = day_start(want);
            assert!(start <= at(secs) && at(secs) < start + Duration::from_secs(86_400));
        }
        assert_eq!(day(day_start(19_844)), "2024-05-01");
    }

    #[test]
    fn parses_sacct_output() {
        let seg = "carbontrack:v1 energy_kwh=0.500000 co2e_g=50.000 cpu_j=1.000 dram_j=unknown gpu_j=2.000 pue=1.5 intensity=100.000 nodes=1";
        let d = "\u{1f}ct0123\u{1f}";
        let rec = |f: &[&str]| format!("{}{d}\n", f.join(d));
        let text = [
            rec(&[
                "10",
                "alice",
                "ml",
                "gpu",
                "2024-05-01T10:00:00",
                "3600",
                "billing=2,cpu=2,gres/gpu=2,mem=1G,node=1",
                "2024-05-01T09:00:00",
                &format!("note | a {seg}"),
            ]),
            rec(&[
                "11",
                "bob",
                "ml",
                "gpu",
                "2024-05-01T11:00:00",
                "60",
                "cpu=1,mem=1G,node=1",
                "2024-05-01T10:59:00",
                "",
            ]),
            rec(&[
                "12",
                "bob",
                "ml",
                "cpu",
                "Unknown",
                "60",
                "cpu=1",
                "Unknown",
                &format!("line one\nline two {seg}"),
            ]),
        ]
        .concat();
        let (r, bad) = parse_sacct(&text, d);
        assert_eq!((r.len(), bad), (2, 0), "{r:?}");
        assert_eq!(r[0].job_id, "10@2024-05-01T09:00:00");
        assert_eq!(r[0].gpu_hours, 2.0);
        assert_eq!((r[0].energy_kwh, r[0].co2e_g), (Some(0.5), Some(50.0)));
        assert_eq!(r[0].end, parse_time("2024-05-01T10:00:00Z"));
        assert_eq!((r[1].job_id.as_str(), r[1].end), ("12@Unknown", None));
        assert_eq!(gpus("cpu=1,gres/gpu:a100=1,gres/gpu=3"), 3.0);
    }

    /// What a table or CSV prints adds up: the total row is the sum of the
    /// group rows to the last digit, nothing prints as `-0` or with more
    /// digits than its column's, and JSON's total is its groups' sum.
    #[test]
    fn printed_rows_add_up_to_the_printed_total() {
        // Three users of a third of a kWh each (rounded alone: 0.333333 ×3
        // = 0.999999 under a total of 1.000000), and a user at 0.
        let recs: Vec<JobRecord> = (0..3)
            .map(|i| {
                let mut r = rec(
                    i,
                    &format!("u{i}"),
                    "ml",
                    "2024-05-01T10:00:00Z",
                    Some(1.0 / 3.0),
                );
                r.gpu_hours = 1.0 / 3.0;
                r.co2e_g = Some(1.0 / 3.0);
                r
            })
            .chain([rec(9, "zero", "ml", "2024-05-01T10:00:00Z", Some(-0.0))])
            .collect();
        let (g, t) = aggregate(&recs, &Filter::default(), Some(GroupBy::User));
        let csv = render(&g, &t, Some(GroupBy::User), Format::Csv);
        assert!(!csv.contains("-0"), "{csv}");
        let rows: Vec<Vec<String>> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect();
        let (groups, total) = rows.split_at(rows.len() - 1);
        for (col, decimals) in [(2, 3), (3, 6), (4, 3)] {
            let units = |s: &str| {
                let (i, f) = s.split_once('.').unwrap();
                assert_eq!(f.len(), decimals, "{s} in\n{csv}");
                format!("{i}{f}").parse::<i64>().unwrap()
            };
            let sum: i64 = groups.iter().map(|r| units(&r[col])).sum();
            assert_eq!(sum, units(&total[0][col]), "column {col}:\n{csv}");
        }
        assert_eq!(total[0][3], "1.000000", "{csv}");
        // The last column: estimated_jobs.
        assert_eq!(
            groups[3],
            ["zero", "1", "0.500", "0.000000", "0.000", "0", "0"]
        );
        let table = render(&g, &t, Some(GroupBy::User), Format::Table);
        assert!(
            table.lines().last().unwrap().contains("1.000000"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&g, &t, Some(GroupBy::User), Format::Json)).unwrap();
        let kwh: Vec<f64> = json["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["energy_kwh"].as_f64().unwrap())
            .collect();
        assert_eq!(kwh, [0.3333333333, 0.3333333333, 0.3333333333, 0.0]);
        assert_eq!(json["total"]["energy_kwh"], 0.9999999999);
        assert!(!render(&g, &t, Some(GroupBy::User), Format::Json).contains("-0"));
    }

    #[test]
    fn renders_all_formats() {
        let recs = vec![
            rec(1, "alice", "ml", "2024-05-01T10:00:00Z", Some(1.0)),
            rec(2, "bob", "ml", "2024-05-01T11:00:00Z", Some(2.5)),
        ];
        let (g, t) = aggregate(&recs, &Filter::default(), Some(GroupBy::User));
        let csv = render(&g, &t, Some(GroupBy::User), Format::Csv);
        assert_eq!(
            csv,
            "user,jobs,gpu_hours,energy_kwh,co2e_g,unmeasured_jobs,estimated_jobs\n\
             alice,1,0.500,1.000000,100.000,0,0\n\
             bob,1,0.500,2.500000,250.000,0,0\n\
             total,2,1.000,3.500000,350.000,0,0\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&g, &t, Some(GroupBy::User), Format::Json)).unwrap();
        assert_eq!(json["total"]["energy_kwh"], 3.5);
        assert_eq!(json["groups"][1]["group"], "bob");
        let table = render(&g, &t, Some(GroupBy::User), Format::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("user   jobs"), "{table}");
        assert!(lines[3].starts_with("-----"), "{table}");
        assert!(
            lines[4].starts_with("total") && lines[4].ends_with("0"),
            "{table}"
        );
    }
}
