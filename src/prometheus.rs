//! A running job's power and energy for Prometheus (`prometheus=DIR`): one
//! file per tracked job per node, `<DIR>/carbontrack-job-<jobid>.prom`, in
//! the text exposition format that node_exporter's textfile collector serves
//! (`--collector.textfile.directory=DIR`).
//!
//! The file is rewritten at each refresh of the live summary (`refresh=`,
//! 60 s by default) on the sampler thread, as the spool's live copy is: the
//! directory is root-owned and node-local, never the user's filesystem, and
//! never touched from slurmstepd's main thread while the job runs. It is
//! written to a temporary name that does not end in `.prom` (the collector
//! reads only `*.prom`) and renamed over, so a scrape sees the old or the
//! new file, never half of one. The extern step removes it when it ends; the
//! Epilog removes what a step that died left, and files of other jobs that
//! have not been refreshed for a long while, only ever names of this
//! module's pattern.
//!
//! Series (names and units as Prometheus' naming conventions ask: base
//! units, `_total` on counters, <https://prometheus.io/docs/practices/naming/>):
//! ```text
//! carbontrack_job_power_watts{job_id,user,account,partition,node,component,device}   gauge
//! carbontrack_job_energy_joules_total{job_id,user,account,partition,node,component,device}   counter
//! ```
//! Both are the job's attributed share of the device (a CPU package's power
//! times the job's share of its cores; an allocated GPU whole), before PUE.
//! Power is the average over the last refresh period (from the start of
//! measurement at the first refresh); energy is since measurement started on
//! this node. A device that is not measured has no series: never a 0.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::measure::sampler::Snapshot;
use crate::safe_fs;
use crate::units::{Joules, Watts};

/// The name of a job's file: `carbontrack-job-<id>.prom`.
pub fn file_name(job_id: u32) -> String {
    format!("{PREFIX}{job_id}{SUFFIX}")
}

const PREFIX: &str = "carbontrack-job-";
const SUFFIX: &str = ".prom";

/// The job id of a file named by [`file_name`], `None` for any other name
/// (the directory is shared with other collectors' files).
pub fn job_of_file(name: &str) -> Option<u32> {
    let id = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// The labels every series of a job carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobLabels {
    pub job_id: String,
    pub user: String,
    pub account: String,
    pub partition: String,
    pub node: String,
}

/// One device's figures for the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `cpu`, `dram` or `gpu`.
    pub component: String,
    /// `package-N` or a GPU UUID.
    pub device: String,
    /// `None`: not known yet or not measured (no sample written).
    pub power: Option<Watts>,
    pub energy: Option<Joules>,
}

const POWER: &str = "carbontrack_job_power_watts";
const ENERGY: &str = "carbontrack_job_energy_joules_total";

/// A label value escaped as the text format asks: backslash, double quote
/// and line feed as `\\`, `\"` and `\n`.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The file's text: `# HELP` and `# TYPE` for each metric, then one sample
/// per measured device. No timestamps (node_exporter's textfile collector
/// refuses them). Non-finite figures are left out.
pub fn format(labels: &JobLabels, series: &[Series]) -> String {
    let mut out = String::new();
    let base = format!(
        "job_id=\"{}\",user=\"{}\",account=\"{}\",partition=\"{}\",node=\"{}\"",
        escape_label(&labels.job_id),
        escape_label(&labels.user),
        escape_label(&labels.account),
        escape_label(&labels.partition),
        escape_label(&labels.node),
    );
    let mut metric =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&Series) -> Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for s in series {
                let Some(v) = value(s).filter(|v| v.is_finite()) else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "{name}{{{base},component=\"{}\",device=\"{}\"}} {v}",
                    escape_label(&s.component),
                    escape_label(&s.device),
                );
            }
        };
    metric(
        POWER,
        "gauge",
        "Power of a Slurm job on a device (its share of the device, before PUE), averaged over carbontrack's last refresh period.",
        &|s| s.power.map(|w| w.0),
    );
    metric(
        ENERGY,
        "counter",
        "Energy a Slurm job used on a device (its share of the device, before PUE) since carbontrack began measuring it on this node.",
        &|s| s.energy.map(|j| j.0),
    );
    out
}

/// Power over the stretch between two snapshots' figures of one device.
fn power_between(before: Option<(Duration, Joules)>, now: (Duration, Joules)) -> Option<Watts> {
    let (t0, e0) = before.unwrap_or((Duration::ZERO, Joules::ZERO));
    let dt = now.0.checked_sub(t0)?;
    if dt.is_zero() || now.1.0 < e0.0 {
        return None;
    }
    Some(Watts((now.1.0 - e0.0) / dt.as_secs_f64()))
}

/// Where a job's file goes and what it says; kept by the sampler thread's
/// observer between refreshes (for the power over the last period).
#[derive(Debug, Clone)]
pub struct Exporter {
    pub dir: PathBuf,
    pub job_id: u32,
    pub labels: JobLabels,
    /// The previous refresh: measured time and each device's energy.
    last: Vec<((String, String), Duration, Joules)>,
}

impl Exporter {
    pub fn new(dir: PathBuf, job_id: u32, labels: JobLabels) -> Exporter {
        Exporter {
            dir,
            job_id,
            labels,
            last: Vec::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(file_name(self.job_id))
    }

    /// The series of a snapshot, power over the time since the previous one.
    pub fn series(&mut self, snap: &Snapshot) -> Vec<Series> {
        let mut next = Vec::with_capacity(snap.devices.len());
        let series = snap
            .devices
            .iter()
            .map(|d| {
                let key = (d.component.as_str().to_string(), d.device.clone());
                let power = d.energy.and_then(|e| {
                    let before = self
                        .last
                        .iter()
                        .find(|(k, _, _)| *k == key)
                        .map(|(_, t, e)| (*t, *e));
                    next.push((key.clone(), snap.duration, e));
                    power_between(before, (snap.duration, e))
                });
                Series {
                    component: key.0,
                    device: key.1,
                    power,
                    energy: d.energy,
                }
            })
            .collect();
        self.last = next;
        series
    }

    /// Rewrites the job's file from a snapshot.
    pub fn refresh(&mut self, snap: &Snapshot) -> Result<(), safe_fs::SafeFsError> {
        let series = self.series(snap);
        let text = format(&self.labels, &series);
        write(&self.dir, self.job_id, text.as_bytes())
    }
}

/// Checks the directory as root's own (safe_fs: owned by root, not writable
/// by group or others, all the way up); the fix is in the error.
pub fn check_dir(dir: &Path) -> Result<PathBuf, safe_fs::SafeFsError> {
    safe_fs::check_dir(dir, 0o755)
}

/// Writes a job's file atomically, mode 0644 (node_exporter runs as its own
/// user). The temporary name ends in `.tmp-<pid>`, which the collector skips.
pub fn write(dir: &Path, job_id: u32, bytes: &[u8]) -> Result<(), safe_fs::SafeFsError> {
    let name = file_name(job_id);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    safe_fs::write_atomic(&dir.join(name), &tmp, bytes, 0o644)
}

/// Removes a job's file; a missing one is fine.
pub fn remove(dir: &Path, job_id: u32) -> io::Result<bool> {
    match fs::remove_file(dir.join(file_name(job_id))) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the files of this module's pattern left in `dir`: the job `own`'s
/// (its Epilog runs: it is over on this node), and any other job's that was
/// not rewritten for `stale_after` (its step died without removing it, or
/// its sampler stopped: what it says is no longer live). Returns the job ids
/// whose files went. Links and other file types are left alone (unlinking
/// one never follows it, but they are not ours).
pub fn sweep(
    dir: &Path,
    own: Option<u32>,
    stale_after: Duration,
    now: SystemTime,
) -> io::Result<Vec<u32>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Some(job) = entry.file_name().to_str().and_then(job_of_file) else {
            continue;
        };
        let Ok(m) = entry.metadata() else { continue };
        if !m.file_type().is_file() {
            continue;
        }
        let old = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > stale_after);
        if (Some(job) == own || old) && fs::remove_file(entry.path()).is_ok() {
            removed.push(job);
        }
    }
    removed.sort_unstable();
    Ok(removed)
}

/// How long a file may go unrefreshed before another job's Epilog takes it
/// for a leftover: three refresh periods and a minute.
pub fn stale_after(refresh: Duration) -> Duration {
    refresh * 3 + Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{Component, DeviceEnergy, Status};

    fn labels() -> JobLabels {
        JobLabels {
            job_id: "42".into(),
            user: "alice".into(),
            account: "physics".into(),
            partition: "gpu".into(),
            node: "n1".into(),
        }
    }

    #[test]
    fn label_values_are_escaped() {
        for (raw, want) in [
            ("plain", "plain"),
            ("a\\b", "a\\\\b"),
            ("say \"hi\"", "say \\\"hi\\\""),
            ("two\nlines", "two\\nlines"),
            ("tab\tand ünicode", "tab\tand ünicode"),
            ("\\\"\n", "\\\\\\\"\\n"),
        ] {
            assert_eq!(escape_label(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn file_names_round_trip_and_others_are_not_ours() {
        assert_eq!(file_name(7), "carbontrack-job-7.prom");
        assert_eq!(job_of_file("carbontrack-job-7.prom"), Some(7));
        for other in [
            "carbontrack-job-.prom",
            "carbontrack-job-7.prom.tmp-12",
            ".carbontrack-job-7.prom.tmp-12",
            "carbontrack-job-7a.prom",
            "carbontrack-job--7.prom",
            "carbontrack-job-99999999999.prom",
            "apt.prom",
            "carbontrack-job-7.txt",
        ] {
            assert_eq!(job_of_file(other), None, "{other}");
        }
    }

    #[test]
    fn the_text_format_has_help_type_and_one_sample_per_measured_device() {
        let series = [
            Series {
                component: "cpu".into(),
                device: "package-0".into(),
                power: Some(Watts(45.5)),
                energy: Some(Joules(910.0)),
            },
            Series {
                component: "gpu".into(),
                device: "GPU-c0ffee".into(),
                power: None,
                energy: Some(Joules(12.25)),
            },
            Series {
                component: "dram".into(),
                device: "package-0".into(),
                power: None,
                energy: None,
            },
        ];
        let l = "job_id=\"42\",user=\"alice\",account=\"physics\",partition=\"gpu\",node=\"n1\"";
        let want = format!(
            "# HELP carbontrack_job_power_watts Power of a Slurm job on a device (its share of the device, before PUE), averaged over carbontrack's last refresh period.\n\
             # TYPE carbontrack_job_power_watts gauge\n\
             carbontrack_job_power_watts{{{l},component=\"cpu\",device=\"package-0\"}} 45.5\n\
             # HELP carbontrack_job_energy_joules_total Energy a Slurm job used on a device (its share of the device, before PUE) since carbontrack began measuring it on this node.\n\
             # TYPE carbontrack_job_energy_joules_total counter\n\
             carbontrack_job_energy_joules_total{{{l},component=\"cpu\",device=\"package-0\"}} 910\n\
             carbontrack_job_energy_joules_total{{{l},component=\"gpu\",device=\"GPU-c0ffee\"}} 12.25\n"
        );
        assert_eq!(format(&labels(), &series), want);
    }

    #[test]
    fn a_hostile_label_cannot_add_a_line() {
        let mut l = labels();
        l.user = "x\"} 1\ncarbontrack_job_power_watts{job_id=\"1".into();
        let text = format(
            &l,
            &[Series {
                component: "gpu".into(),
                device: "GPU-a".into(),
                power: Some(Watts(1.0)),
                energy: Some(Joules(f64::NAN)),
            }],
        );
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            1,
            "{text}"
        );
        assert!(text.contains("user=\"x\\\"} 1\\ncarbontrack_job_power_watts{job_id=\\\"1\""));
    }

    #[test]
    fn power_is_over_the_last_period() {
        for (before, now, want) in [
            (None, (10.0, 1000.0), Some(100.0)),
            (Some((10.0, 1000.0)), (12.0, 1600.0), Some(300.0)),
            (Some((12.0, 1600.0)), (12.0, 1600.0), None),
            (Some((12.0, 1600.0)), (14.0, 1500.0), None),
            (Some((14.0, 0.0)), (13.0, 5.0), None),
        ] {
            let d = |(t, e): (f64, f64)| (Duration::from_secs_f64(t), Joules(e));
            assert_eq!(
                power_between(before.map(d), d(now)).map(|w| w.0),
                want,
                "{before:?} -> {now:?}"
            );
        }
    }

    fn snap(secs: f64, devices: &[(Component, &str, Option<f64>)]) -> Snapshot {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Snapshot {
            start: t0,
            end: t0 + Duration::from_secs_f64(secs),
            duration: Duration::from_secs_f64(secs),
            samples: 1,
            devices: devices
                .iter()
                .map(|&(component, device, e)| match e {
                    Some(j) => DeviceEnergy {
                        component,
                        device: device.into(),
                        share: 1.0,
                        energy: Some(Joules(j)),
                        status: Status::Ok,
                    },
                    None => DeviceEnergy::unavailable(component, device, "no driver"),
                })
                .collect(),
            timeline: Default::default(),
            timeline_bucket: Duration::from_secs(1),
            problem: None,
            given_up: Vec::new(),
            sampler_cpu: None,
        }
    }

    #[test]
    fn the_exporter_writes_a_0644_file_and_the_sweep_takes_only_ours() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::safe_fs::tests::temp("prom");
        let mut x = Exporter::new(dir.clone(), 42, labels());
        let devs = |cpu, gpu| {
            [
                (Component::Cpu, "package-0", cpu),
                (Component::Gpu, "GPU-a", gpu),
            ]
        };
        x.refresh(&snap(2.0, &devs(Some(200.0), None))).unwrap();
        x.refresh(&snap(4.0, &devs(Some(500.0), None))).unwrap();
        let text = fs::read_to_string(x.path()).unwrap();
        assert!(
            text.contains("component=\"cpu\",device=\"package-0\"} 150\n"),
            "{text}"
        );
        assert!(
            text.contains("component=\"cpu\",device=\"package-0\"} 500\n"),
            "{text}"
        );
        assert!(
            !text.contains("GPU-a"),
            "an unmeasured GPU has no series: {text}"
        );
        let mode = fs::metadata(x.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );

        // Another job's fresh file, an old one, and files not ours.
        write(&dir, 43, b"").unwrap();
        write(&dir, 44, b"").unwrap();
        fs::write(dir.join("apt.prom"), "").unwrap();
        fs::write(dir.join("carbontrack-job-x.prom"), "").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("carbontrack-job-45.prom")).unwrap();
        let later = SystemTime::now() + Duration::from_secs(30);
        assert_eq!(
            sweep(&dir, Some(42), Duration::from_secs(300), later).unwrap(),
            [42]
        );
        let much_later = SystemTime::now() + Duration::from_secs(600);
        assert_eq!(
            sweep(&dir, None, Duration::from_secs(300), much_later).unwrap(),
            [43, 44]
        );
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "apt.prom",
                "carbontrack-job-45.prom",
                "carbontrack-job-x.prom"
            ]
        );
        assert!(!remove(&dir, 42).unwrap());
        let _ = fs::remove_dir_all(&dir);
    }
}
