//! The one validated configuration, parsed from the plugin's `key=value`
//! arguments in plugstack.conf and from the CLI's flags alike, so a value that is
//! accepted in one place is accepted in the other.

use std::path::PathBuf;
use std::time::Duration;

use crate::carbon::intensity::IntensitySpec;

/// Which jobs are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only jobs that ask with `--carbon-track[=yes]`.
    OptIn,
    /// Every job unless it says `--carbon-track=no`.
    Always,
    /// Nothing is tracked; options are still registered so scripts keep working.
    Off,
}

impl Mode {
    /// Whether a job is tracked, given what it said with `--carbon-track`
    /// (`None` when the option was not given).
    pub fn tracks(self, choice: Option<bool>) -> bool {
        match self {
            Mode::Off => false,
            Mode::OptIn => choice == Some(true),
            Mode::Always => choice != Some(false),
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    pub cpu: bool,
    pub dram: bool,
    pub gpu: bool,
}

impl Components {
    pub const ALL: Components = Components {
        cpu: true,
        dram: true,
        gpu: true,
    };

    fn parse(s: &str) -> Result<Components, String> {
        let mut c = Components {
            cpu: false,
            dram: false,
            gpu: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "cpu" => c.cpu = true,
                "dram" => c.dram = true,
                "gpu" => c.gpu = true,
                _ => return Err(format!("unknown component `{part}`")),
            }
        }
        Ok(c)
    }

    pub fn names(self) -> String {
        let mut v = Vec::new();
        if self.cpu {
            v.push("cpu");
        }
        if self.dram {
            v.push("dram");
        }
        if self.gpu {
            v.push("gpu");
        }
        v.join(",")
    }
}

/// Where the user's files go.
/// Said once per job by the prolog and once per run of `carbontrack epilog`
/// and `flush` when `accounting_field=Comment`: the field stays accepted (the
/// contract lists it), but its figures are only as good as its users.
pub const COMMENT_WARNING: &str = "warning: accounting_field=Comment: a job's user can write that field (sbatch --comment, sacctmgr modify job ... set Comment=), so the figures in it can be forged or overwritten by the user; use AdminComment or SystemComment, which only Slurm administrators can set";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportTarget {
    Workdir,
    None,
}

/// The whole configuration; defaults are design.md's contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub mode: Mode,
    pub interval: Duration,
    pub components: Components,
    pub spool: PathBuf,
    pub powercap: PathBuf,
    pub cgroup: PathBuf,
    /// Root of the CPU topology (`cpuN/topology/physical_package_id`).
    pub cpu_topology: PathBuf,
    pub nvml: PathBuf,
    /// AMD SMI library name or path (`amdsmi=`).
    pub amdsmi: PathBuf,
    pub pue: f64,
    pub intensity: IntensitySpec,
    /// Used for the hours (or the whole job) `intensity` has no figure for;
    /// `None`: [`IntensitySpec::default_fallback`].
    pub intensity_fallback: Option<IntensitySpec>,
    /// Root-only file holding the ElectricityMaps API key (`electricitymaps:`).
    pub intensity_key: Option<PathBuf>,
    /// Base URL of the ElectricityMaps API or of a site proxy to it; `None`:
    /// [`crate::carbon::base_url::DEFAULT_URL`].
    pub intensity_url: Option<String>,
    /// How long a fetched live history is reused before asking again.
    pub intensity_ttl: Duration,
    pub report: ReportTarget,
    /// The job field of Slurm accounting that receives the `carbontrack:v1`
    /// segment. `Comment` is accepted but warned about ([`COMMENT_WARNING`]).
    pub accounting_field: String,
    /// The cluster ledger CSV the epilog appends to; `None` when disabled.
    pub ledger: Option<PathBuf>,
    /// Completed epochs needed before a prediction is shown (carbontracker's
    /// `epochs_before_pred`).
    pub epochs_before_pred: u32,
    /// How often a running job's summary file (`carbontrack-<jobid>.txt`) is
    /// rewritten: each rewrite is a few file operations as the user.
    pub refresh: Duration,
    /// Where the nodes of a multi-node job leave their parts so that one
    /// total over all of them is delivered once: a root-owned directory on a
    /// filesystem every node mounts (`shared=`). `None`: each node's Epilog
    /// only sees its own part, so a multi-node job gets no job total.
    pub shared: Option<PathBuf>,
    /// node_exporter's textfile-collector directory (`prometheus=`): a
    /// running job's power and energy are written there at each refresh
    /// (src/prometheus.rs). `None`: off.
    pub prometheus: Option<PathBuf>,
    /// How long `carbontrack flush` keeps re-checking a delivered segment
    /// and merges it back if another writer replaced the field
    /// (src/report/watch.rs); zero: not at all.
    pub accounting_watch: Duration,
    /// `cpu_tdp=`: estimate the CPUs' energy from their TDP and the job's
    /// CPU time where no RAPL counter can be read; `None` (the default):
    /// such CPUs stay `unavailable`.
    pub cpu_tdp: Option<crate::measure::estimate::CpuTdp>,
    /// Test-only: the name of a plugin callback that panics on purpose, to prove
    /// that a panic never fails a job. Not documented for sites.
    pub test_panic: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::OptIn,
            interval: Duration::from_secs(1),
            components: Components::ALL,
            spool: PathBuf::from("/var/spool/carbontrack"),
            powercap: PathBuf::from("/sys/class/powercap"),
            cgroup: PathBuf::from("/sys/fs/cgroup"),
            cpu_topology: PathBuf::from("/sys/devices/system/cpu"),
            nvml: PathBuf::from("libnvidia-ml.so.1"),
            amdsmi: PathBuf::from("libamd_smi.so"),
            pue: crate::carbon::constants::DEFAULT_PUE,
            intensity: IntensitySpec::WorldAverage,
            intensity_fallback: None,
            intensity_key: None,
            intensity_url: None,
            intensity_ttl: Duration::from_secs(3600),
            report: ReportTarget::Workdir,
            accounting_field: "AdminComment".to_string(),
            ledger: Some(PathBuf::from("/var/lib/carbontrack/ledger.csv")),
            epochs_before_pred: 1,
            refresh: Duration::from_secs(60),
            shared: None,
            prometheus: None,
            accounting_watch: Duration::from_secs(86_400),
            cpu_tdp: None,
            test_panic: None,
        }
    }
}

/// A configuration argument that was refused; its message names the key, the
/// value and what would have been accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad argument `{arg}`: {problem}; accepted: {accepted}")]
pub struct ConfigError {
    pub arg: String,
    pub problem: String,
    pub accepted: String,
}

/// The accepted keys and what each takes, for error messages and `--help`.
pub const KEYS: &[(&str, &str)] = &[
    ("mode", "optin|always|off"),
    (
        "interval",
        "a duration from 100ms to 10min, e.g. 500ms, 1s, 2s",
    ),
    ("components", "a comma list of cpu,dram,gpu"),
    ("spool", "an absolute directory"),
    ("powercap", "an absolute directory (RAPL sysfs root)"),
    ("cgroup", "an absolute directory (cgroup root)"),
    ("cpu_topology", "an absolute directory (CPU topology root)"),
    ("nvml", "an NVML library name or absolute path"),
    ("amdsmi", "an AMD SMI library name or absolute path"),
    ("pue", "a number from 1.0 to 3.0"),
    (
        "intensity",
        "gCO2e/kWh as a number, a zone code such as DK, file:/path.csv, or electricitymaps:ZONE",
    ),
    (
        "intensity_fallback",
        "gCO2e/kWh as a number, a zone code such as DK, or world",
    ),
    (
        "intensity_key",
        "an absolute path to a root-only file holding the ElectricityMaps API key",
    ),
    (
        "intensity_url",
        "an https://host[:port][/prefix] URL of the ElectricityMaps API (default https://api.electricitymaps.com) or an http(s) URL of a proxy to it",
    ),
    (
        "intensity_ttl",
        "a duration from 1min to 1day, e.g. 15min, 1h",
    ),
    ("report", "workdir|none"),
    ("accounting_field", "AdminComment|Comment|SystemComment"),
    ("ledger", "an absolute file path, or none"),
    ("epochs_before_pred", "a whole number from 1 to 1000"),
    ("refresh", "a duration from 1s to 1h, e.g. 60s"),
    (
        "shared",
        "an absolute directory on a filesystem all nodes share, root-owned (for multi-node job totals), or none",
    ),
    (
        "prometheus",
        "an absolute, root-owned directory node_exporter's textfile collector reads, or none",
    ),
    (
        "accounting_watch",
        "a duration up to 30days, e.g. 1d, 12h, or none",
    ),
    (
        "cpu_tdp",
        "the CPU's TDP per package in watts (1 to 1000), auto (from the CPU model), or none",
    ),
];

const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(600);

impl Config {
    /// Parses `key=value` arguments over the defaults. The first bad one is
    /// reported; a site's config must be right as a whole.
    pub fn from_args<I, S>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut c = Config::default();
        for arg in args {
            c.set_arg(arg.as_ref())?;
        }
        c.check_intensity()?;
        Ok(c)
    }

    /// Applies one `key=value` argument.
    pub fn set_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(ConfigError {
                arg: arg.to_string(),
                problem: "not of the form key=value".into(),
                accepted: accepted_keys(),
            });
        };
        self.set(key.trim(), value.trim()).map_err(|problem| {
            let accepted = KEYS
                .iter()
                .find(|(k, _)| *k == key.trim())
                .map(|(k, what)| format!("{k}={what}"))
                .unwrap_or_else(accepted_keys);
            ConfigError {
                arg: arg.to_string(),
                problem,
                accepted,
            }
        })
    }

    fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "mode" => {
                self.mode = match v {
                    "optin" => Mode::OptIn,
                    "always" => Mode::Always,
                    "off" => Mode::Off,
                    _ => return Err(format!("unknown mode `{v}`")),
                }
            }
            "interval" => {
                let d = humantime::parse_duration(v).map_err(|e| format!("`{v}`: {e}"))?;
                if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
                    return Err(format!("`{v}` is out of range"));
                }
                self.interval = d;
            }
            "components" => self.components = Components::parse(v)?,
            "spool" => self.spool = abs_dir(v)?,
            "powercap" => self.powercap = abs_dir(v)?,
            "cgroup" => self.cgroup = abs_dir(v)?,
            "cpu_topology" => self.cpu_topology = abs_dir(v)?,
            "nvml" => {
                if v.is_empty() || (v.contains('/') && !v.starts_with('/')) {
                    return Err(format!(
                        "`{v}` is neither a library name nor an absolute path"
                    ));
                }
                self.nvml = PathBuf::from(v);
            }
            "amdsmi" => {
                if v.is_empty() || (v.contains('/') && !v.starts_with('/')) {
                    return Err(format!(
                        "`{v}` is neither a library name nor an absolute path"
                    ));
                }
                self.amdsmi = PathBuf::from(v);
            }
            "pue" => {
                let p: f64 = v.parse().map_err(|_| format!("`{v}` is not a number"))?;
                if !(1.0..=3.0).contains(&p) {
                    return Err(format!("{p} is out of range"));
                }
                self.pue = p;
            }
            "intensity" => self.intensity = IntensitySpec::parse(v)?,
            "intensity_fallback" => {
                self.intensity_fallback = Some(IntensitySpec::parse_fallback(v)?)
            }
            "intensity_key" => {
                if !v.starts_with('/') {
                    return Err(format!("`{v}` is not an absolute path"));
                }
                self.intensity_key = Some(PathBuf::from(v));
            }
            "intensity_url" => {
                crate::carbon::base_url::BaseUrl::parse(v)?;
                self.intensity_url = Some(v.to_string());
            }
            "intensity_ttl" => {
                let d = humantime::parse_duration(v).map_err(|e| format!("`{v}`: {e}"))?;
                if !(Duration::from_secs(60)..=Duration::from_secs(86_400)).contains(&d) {
                    return Err(format!("`{v}` is out of range"));
                }
                self.intensity_ttl = d;
            }
            "report" => {
                self.report = match v {
                    "workdir" => ReportTarget::Workdir,
                    "none" => ReportTarget::None,
                    _ => return Err(format!("unknown report target `{v}`")),
                }
            }
            "accounting_field" => {
                if !matches!(v, "AdminComment" | "Comment" | "SystemComment") {
                    return Err(format!("`{v}` is not a job text field sacctmgr can set"));
                }
                self.accounting_field = v.to_string();
            }
            "ledger" => {
                self.ledger = match v {
                    "none" => None,
                    p if p.starts_with('/') => Some(PathBuf::from(p)),
                    _ => return Err(format!("`{v}` is not an absolute path")),
                }
            }
            "shared" => {
                self.shared = match v {
                    "none" => None,
                    _ => Some(abs_dir(v)?),
                }
            }
            "prometheus" => {
                self.prometheus = match v {
                    "none" => None,
                    _ => Some(abs_dir(v)?),
                }
            }
            "accounting_watch" => {
                self.accounting_watch = match v {
                    "none" | "0" => Duration::ZERO,
                    _ => {
                        let d = humantime::parse_duration(v).map_err(|e| format!("`{v}`: {e}"))?;
                        if d > Duration::from_secs(30 * 86_400) {
                            return Err(format!("`{v}` is out of range"));
                        }
                        d
                    }
                }
            }
            "refresh" => {
                let d = humantime::parse_duration(v).map_err(|e| format!("`{v}`: {e}"))?;
                if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
                    return Err(format!("`{v}` is out of range"));
                }
                self.refresh = d;
            }
            "epochs_before_pred" => {
                let n: u32 = v
                    .parse()
                    .map_err(|_| format!("`{v}` is not a whole number"))?;
                if !(1..=1000).contains(&n) {
                    return Err(format!("{n} is out of range"));
                }
                self.epochs_before_pred = n;
            }
            "cpu_tdp" => {
                self.cpu_tdp = match v {
                    "none" => None,
                    _ => Some(crate::measure::estimate::CpuTdp::parse(v)?),
                }
            }
            "_test_panic" => self.test_panic = Some(v.to_string()),
            _ => return Err(format!("unknown key `{key}`")),
        }
        Ok(())
    }
}

impl Config {
    /// A live source needs its key; found missing here, at configuration
    /// time, rather than silently at every epilog.
    fn check_intensity(&self) -> Result<(), ConfigError> {
        if let IntensitySpec::ElectricityMaps(zone) = &self.intensity
            && self.intensity_key.is_none()
        {
            let key = "intensity_key";
            let what = KEYS.iter().find(|(k, _)| *k == key).map_or("", |(_, w)| w);
            return Err(ConfigError {
                arg: format!("intensity=electricitymaps:{zone}"),
                problem: format!("the live source needs {key}="),
                accepted: format!("{key}={what}"),
            });
        }
        Ok(())
    }

    /// The fallback in force: the configured one, or the spec's default.
    pub fn intensity_fallback(&self) -> IntensitySpec {
        self.intensity_fallback
            .clone()
            .unwrap_or_else(|| self.intensity.default_fallback())
    }
}

fn abs_dir(v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err(format!("`{v}` is not an absolute path"))
    }
}

fn accepted_keys() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// Parses the user's `--carbon-track` value (`None` = given without a value).
pub fn parse_track_choice(v: Option<&str>) -> Result<bool, String> {
    match v.map(str::trim) {
        None | Some("") | Some("yes") => Ok(true),
        Some("no") => Ok(false),
        Some(other) => Err(format!("--carbon-track takes yes or no, not `{other}`")),
    }
}

/// Parses the user's `--carbon-epochs` value: the total number of epochs.
pub fn parse_epochs(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=10_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "--carbon-epochs takes a whole number of epochs of at least 1, not `{v}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(c.mode, Mode::OptIn);
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.components, Components::ALL);
        assert_eq!(c.spool, PathBuf::from("/var/spool/carbontrack"));
        assert_eq!(c.powercap, PathBuf::from("/sys/class/powercap"));
        assert_eq!(c.cgroup, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(c.nvml, PathBuf::from("libnvidia-ml.so.1"));
        assert_eq!(c.pue, 1.58);
        assert_eq!(c.report, ReportTarget::Workdir);
        assert_eq!(c.intensity, IntensitySpec::WorldAverage);
        assert_eq!(c.intensity_fallback(), IntensitySpec::WorldAverage);
        assert_eq!(c.intensity_key, None);
        assert_eq!(c.intensity_url, None);
        assert_eq!(c.intensity_ttl, Duration::from_secs(3600));
        assert_eq!(c.cpu_tdp, None);
    }

    #[test]
    fn cpu_tdp_key() {
        use crate::measure::estimate::CpuTdp;
        use crate::units::Watts;
        let c = Config::from_args(["cpu_tdp=150"]).unwrap();
        assert_eq!(c.cpu_tdp, Some(CpuTdp::Watts(Watts(150.0))));
        let c = Config::from_args(["cpu_tdp=auto"]).unwrap();
        assert_eq!(c.cpu_tdp, Some(CpuTdp::Auto));
        let c = Config::from_args(["cpu_tdp=auto", "cpu_tdp=none"]).unwrap();
        assert_eq!(c.cpu_tdp, None);
        let e = Config::from_args(["cpu_tdp=9000"]).unwrap_err();
        assert!(e.accepted.starts_with("cpu_tdp="), "{e}");
    }

    #[test]
    fn intensity_keys() {
        let c = Config::from_args(["intensity=dk"]).unwrap();
        assert_eq!(c.intensity, IntensitySpec::Zone("DK".into()));
        let c = Config::from_args(["intensity=file:/etc/ci.csv", "intensity_fallback=NO"]).unwrap();
        assert_eq!(c.intensity_fallback(), IntensitySpec::Zone("NO".into()));
        let c = Config::from_args([
            "intensity=electricitymaps:DK-DK1",
            "intensity_key=/etc/carbontrack/em.key",
            "intensity_url=http://127.0.0.1:8080",
            "intensity_ttl=15min",
        ])
        .unwrap();
        assert_eq!(c.intensity, IntensitySpec::ElectricityMaps("DK-DK1".into()));
        assert_eq!(c.intensity_fallback(), IntensitySpec::Zone("DK".into()));
        assert_eq!(c.intensity_ttl, Duration::from_secs(900));
        for (args, needle) in [
            (vec!["intensity=electricitymaps:DK"], "needs intensity_key="),
            (
                vec!["intensity_url=api.electricitymaps.com"],
                "not an https:// (or http://) URL",
            ),
            (vec!["intensity_key=key.txt"], "absolute"),
            (
                vec!["intensity_fallback=file:/x.csv"],
                "a number, a zone or world",
            ),
            (vec!["intensity_ttl=1s"], "out of range"),
            (vec!["intensity=ZZ"], "not in the shipped table"),
        ] {
            let msg = Config::from_args(args.clone()).unwrap_err().to_string();
            assert!(msg.contains(needle), "{args:?}: {msg}");
        }
    }

    #[test]
    fn prometheus_takes_an_absolute_directory_or_none() {
        let c = Config::from_args(["prometheus=/var/lib/prometheus/node-exporter"]).unwrap();
        assert_eq!(
            c.prometheus,
            Some(PathBuf::from("/var/lib/prometheus/node-exporter"))
        );
        assert_eq!(Config::default().prometheus, None);
        assert_eq!(
            Config::from_args(["prometheus=none"]).unwrap().prometheus,
            None
        );
        let e = Config::from_args(["prometheus=textfiles"]).unwrap_err();
        assert!(
            e.to_string().contains("not an absolute path") && e.accepted.starts_with("prometheus="),
            "{e}"
        );
    }

    #[test]
    fn accounting_watch_takes_a_duration_or_none() {
        assert_eq!(
            Config::default().accounting_watch,
            Duration::from_secs(86_400)
        );
        let c = Config::from_args(["accounting_watch=12h"]).unwrap();
        assert_eq!(c.accounting_watch, Duration::from_secs(43_200));
        let c = Config::from_args(["accounting_watch=none"]).unwrap();
        assert_eq!(c.accounting_watch, Duration::ZERO);
        for bad in ["accounting_watch=60days", "accounting_watch=soon"] {
            assert!(Config::from_args([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_every_key() {
        let c = Config::from_args([
            "mode=always",
            "interval=500ms",
            "components=gpu,cpu",
            "spool=/tmp/s",
            "powercap=/tmp/p",
            "cgroup=/tmp/c",
            "cpu_topology=/tmp/t",
            "nvml=/tmp/libnvidia-ml.so",
            "pue=1.2",
            "intensity=120",
            "report=none",
            "accounting_field=Comment",
            "ledger=none",
            "epochs_before_pred=2",
            "refresh=5s",
            "shared=/shared/carbontrack",
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Always);
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(
            c.components,
            Components {
                cpu: true,
                dram: false,
                gpu: true
            }
        );
        assert_eq!(c.spool, PathBuf::from("/tmp/s"));
        assert_eq!(c.nvml, PathBuf::from("/tmp/libnvidia-ml.so"));
        assert_eq!(c.pue, 1.2);
        assert_eq!(c.report, ReportTarget::None);
        assert_eq!(c.accounting_field, "Comment");
        assert_eq!(c.ledger, None);
        assert_eq!(c.epochs_before_pred, 2);
        assert_eq!(c.refresh, Duration::from_secs(5));
        assert_eq!(c.shared, Some(PathBuf::from("/shared/carbontrack")));
        assert_eq!(Config::default().shared, None);
        assert_eq!(Config::from_args(["shared=none"]).unwrap().shared, None);
    }

    #[test]
    fn refuses_bad_arguments_naming_key_and_accepted_values() {
        for (arg, needle) in [
            ("mode=sometimes", "optin|always|off"),
            ("interval=1ms", "100ms to 10min"),
            ("interval=fast", "interval="),
            ("components=cpu,tpu", "cpu,dram,gpu"),
            ("spool=relative", "absolute"),
            ("shared=scratch/ct", "filesystem all nodes share"),
            ("pue=0.9", "1.0 to 3.0"),
            ("pue=abc", "pue="),
            ("report=email", "workdir|none"),
            ("nvml=lib/x.so", "nvml="),
            ("colour=blue", "mode, interval"),
            ("justaword", "mode, interval"),
        ] {
            let e = Config::from_args([arg]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(arg), "{msg}");
            assert!(msg.contains(needle), "{arg}: {msg}");
        }
    }

    #[test]
    fn mode_decides_tracking() {
        for (mode, choice, tracked) in [
            (Mode::OptIn, None, false),
            (Mode::OptIn, Some(true), true),
            (Mode::OptIn, Some(false), false),
            (Mode::Always, None, true),
            (Mode::Always, Some(true), true),
            (Mode::Always, Some(false), false),
            (Mode::Off, Some(true), false),
            (Mode::Off, None, false),
        ] {
            assert_eq!(mode.tracks(choice), tracked, "{mode:?} {choice:?}");
        }
    }

    #[test]
    fn user_option_values() {
        assert_eq!(parse_track_choice(None), Ok(true));
        assert_eq!(parse_track_choice(Some("yes")), Ok(true));
        assert_eq!(parse_track_choice(Some("no")), Ok(false));
        assert!(
            parse_track_choice(Some("maybe"))
                .unwrap_err()
                .contains("maybe")
        );
        assert_eq!(parse_epochs("10"), Ok(10));
        assert!(parse_epochs("-3").is_err());
        assert!(parse_epochs("0").is_err());
        assert!(parse_epochs("ten").is_err());
    }
}
