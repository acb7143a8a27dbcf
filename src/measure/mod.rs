//! The measurement core: RAPL and NVML readers, the job's devices, CPU
//! attribution and the sampler thread. Nothing here knows about Slurm, so
//! `carbontrack run`, the plugin and the tests drive the same code.

pub mod amd_gpus;
pub mod amdsmi;
pub mod cores;
pub mod cpuset;
pub mod estimate;
pub mod gpus;
pub mod nvml;
pub mod powermetrics;
pub mod rapl;
pub mod sampler;
pub mod topology;

use std::fmt;
use std::time::Instant;

use crate::units::Joules;

/// The kind of device, as the CSV's `component` column names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Cpu,
    Dram,
    Gpu,
    /// Apple's Neural Engine (powermetrics): counted in the total, in none
    /// of the accounting segment's `cpu_j`, `dram_j`, `gpu_j`.
    Ane,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Cpu => "cpu",
            Component::Dram => "dram",
            Component::Gpu => "gpu",
            Component::Ane => "ane",
        }
    }

    pub fn parse(s: &str) -> Option<Component> {
        match s {
            "cpu" => Some(Component::Cpu),
            "dram" => Some(Component::Dram),
            "gpu" => Some(Component::Gpu),
            "ane" => Some(Component::Ane),
            _ => None,
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a device's figure can be trusted. What could not be measured is
/// never reported as 0: it is `Unavailable` and carries no energy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Measured for part of the run only (a GPU that started failing, a node
    /// that went away); the energy is what was measured.
    Incomplete(String),
    /// Not measured at all; the energy fields stay empty.
    Unavailable(String),
    /// Not measured but modelled (`cpu_tdp=`, [`estimate`]); the energy is
    /// the model's, and the text names the model.
    Estimated(String),
}

impl Status {
    /// Parses the CSV form (`ok`, `incomplete: …`, `unavailable: …`,
    /// `estimated: …`).
    pub fn parse(s: &str) -> Option<Status> {
        if s == "ok" {
            Some(Status::Ok)
        } else if let Some(r) = s.strip_prefix("incomplete: ") {
            Some(Status::Incomplete(r.to_string()))
        } else if let Some(r) = s.strip_prefix("estimated: ") {
            Some(Status::Estimated(r.to_string()))
        } else {
            s.strip_prefix("unavailable: ")
                .map(|r| Status::Unavailable(r.to_string()))
        }
    }
}

impl Status {
    /// The CSV form within [`MAX_STATUS`] characters: a reason too long
    /// (none of this crate's should be) is cut at a word with `…`.
    pub fn to_csv(&self) -> String {
        match self {
            Status::Ok => "ok".to_string(),
            Status::Incomplete(r) => format!("incomplete: {}", cut(r, MAX_REASON)),
            Status::Unavailable(r) => format!("unavailable: {}", cut(r, MAX_REASON)),
            Status::Estimated(r) => format!("estimated: {}", cut(r, MAX_REASON)),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ok => f.write_str("ok"),
            Status::Incomplete(r) => write!(f, "incomplete: {r}"),
            Status::Unavailable(r) => write!(f, "unavailable: {r}"),
            Status::Estimated(r) => write!(f, "estimated: {r}"),
        }
    }
}

/// The longest a CSV `status` may be (design.md: statuses stay short; the
/// long explanation goes once into the log and the summary).
pub const MAX_STATUS: usize = 100;

/// The room a reason has behind `incomplete: ` (the longest prefix).
pub const MAX_REASON: usize = MAX_STATUS - "unavailable: ".len();

/// Wall-clock time of `at`, for status texts (`2026-12-01T12:00:00Z`).
pub fn wall_time(at: std::time::Instant) -> String {
    let ago = std::time::Instant::now().saturating_duration_since(at);
    let now = std::time::SystemTime::now();
    humantime::format_rfc3339_seconds(now.checked_sub(ago).unwrap_or(now)).to_string()
}

/// Intervals a device's energy was not counted for, and why: the first
/// few said, the rest counted, so a device that keeps misbehaving does not
/// grow the list without bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gaps {
    said: Vec<String>,
    more: u32,
}

impl Gaps {
    /// Notes said in full; later ones are only counted.
    const SAID: usize = 3;

    pub fn note(&mut self, why: String) {
        if self.said.len() < Self::SAID {
            self.said.push(why);
        } else {
            self.more += 1;
        }
    }

    /// The notes as status reasons (`N more such gaps` last).
    pub fn reasons(&self) -> Vec<String> {
        let mut out = self.said.clone();
        if self.more > 0 {
            out.push(format!("{} more such gaps", self.more));
        }
        out
    }
}

/// Why a device is no longer read, with when, within a status's room: the
/// time is what matters most, so the reason gives way first.
pub fn stopped_at(why: &str, at: std::time::Instant) -> String {
    let at = format!(" at {}", wall_time(at));
    format!("{}{at}", cut(why, MAX_REASON - at.len()))
}

/// Joins reasons into one, `; ` apart, within [`MAX_REASON`]: as many whole
/// reasons as fit, then `(+N more)`; a first reason too long on its own is
/// cut at a word with `…`.
pub fn fit_reasons(reasons: &[String]) -> String {
    let mut out = String::new();
    for (i, r) in reasons.iter().enumerate() {
        let more = reasons.len() - i;
        let tail = if more > 1 {
            format!(" (+{} more)", more - 1)
        } else {
            String::new()
        };
        let sep = if out.is_empty() { "" } else { "; " };
        if out.len() + sep.len() + r.len() + tail.len() <= MAX_REASON {
            out.push_str(sep);
            out.push_str(r);
            continue;
        }
        if out.is_empty() {
            return cut(r, MAX_REASON);
        }
        out.push_str(&format!(" (+{more} more)"));
        return out;
    }
    out
}

/// `text` within `max` bytes, cut at a word boundary with `…` when longer.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let room = max.saturating_sub('…'.len_utf8());
    let mut end = room;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    let head = match head.rfind(' ') {
        Some(i) if i > room / 2 => &head[..i],
        _ => head,
    };
    format!("{}…", head.trim_end_matches([' ', ',', ';', ':']))
}

/// The reason of CPU and DRAM rows whose energy a GPU module's figure
/// already holds (GH200): not measured apart, not missing either.
pub const INSIDE_GPU_MODULE: &str = "inside the GPU module figure";

/// What a status reason means and how it is fixed, for the summary's notes
/// and the log: one explanation per kind of reason, however many rows carry
/// it. `None` for reasons that say all there is to say.
pub fn explain(reason: &str) -> Option<&'static str> {
    use cpuset::{NOTE_COUNT, NOTE_LAYOUT, NOTE_WHOLE_NODE};
    const TABLE: &[(&str, &str)] = &[
        (
            NOTE_WHOLE_NODE,
            "neither a cpuset nor Slurm's core allocation said which CPUs are the job's, so \
             every CPU package and its DRAM were charged to it in full: on a shared node an \
             upper bound. Admins: set ConstrainCores=yes in cgroup.conf, or use a Slurm whose \
             steps give S_JOB_ALLOC_CORES (22.05 and later).",
        ),
        (
            NOTE_COUNT,
            "the job's share of each package is its CPU count over the node's CPUs, not where \
             its cores are: right on a node of one package, approximate on several. Admins: \
             set ConstrainCores=yes in cgroup.conf, or use a Slurm whose steps give \
             S_JOB_ALLOC_CORES (22.05 and later).",
        ),
        (
            NOTE_LAYOUT,
            "Slurm's core ids could not be placed on packages: the node's NodeName line in \
             slurm.conf (Sockets, CoresPerSocket, ThreadsPerCore) does not match its CPU \
             topology, so the share is the job's cores over the node's on every package. \
             Admins: make the line match `slurmd -C`.",
        ),
        (
            INSIDE_GPU_MODULE,
            "on a Grace Hopper (GH200) module NVML's energy counter covers the whole module, \
             Grace CPU and its memory included (zeus PR 172): the CPU's energy is inside the \
             GPU row's figure, and is not counted again on its own.",
        ),
        (
            "readable by root only",
            "RAPL's energy_uj files are readable only by root (Linux 5.10 and later). Admins: \
             start carbontrack as root, or `chmod o+r` them, or make that permanent with a \
             udev rule: ACTION==\"add\", SUBSYSTEM==\"powercap\", \
             RUN+=\"/bin/chmod o+r /sys%p/energy_uj\".",
        ),
        (
            "no RAPL zones",
            "the CPU or VM exposes no RAPL energy counters, or the intel_rapl_msr module is not \
             loaded (`modprobe intel_rapl_msr`; AMD Zen needs a recent kernel).",
        ),
        (
            "no DRAM RAPL zone",
            "this CPU has no DRAM energy counter (AMD CPUs and most desktop CPUs have none): \
             DRAM energy is not measured, not zero.",
        ),
        (
            "apart",
            "the RAPL counter was read less often than it can wrap at full power, so a wrap may \
             have been missed and the energy undercounted. Use a shorter interval=.",
        ),
        (
            "reads failed",
            "some reads of a RAPL counter failed; energy is counted between good reads only.",
        ),
        (
            "counter went back",
            "an energy counter went backwards (a driver reload or counter reset); the energy \
             around each reset is not counted.",
        ),
        (
            "TDP ",
            "no energy counter could be read for the CPUs, so their energy is a model \
             (cpu_tdp=): TDP per package × the job's CPU time / the CPUs of a package. It \
             assumes power grows linearly with busy CPUs up to TDP and charges no idle power; \
             see docs/estimates.md for its error. It is never added silently to measured \
             figures: the total says it includes estimates.",
        ),
        (
            "superuser",
            "Apple's powermetrics, which reads the CPU, GPU and Neural Engine energy on Apple \
             Silicon, runs only as root. Run carbontrack as root, or let it use `sudo -n` with \
             the sudoers line `<user> ALL=(root) NOPASSWD: /usr/bin/powermetrics` (add it \
             with `sudo visudo -f /etc/sudoers.d/powermetrics`).",
        ),
        (
            "powermetrics ended",
            "Apple's powermetrics stopped before the run did (killed, or it failed; the log \
             says how it ended): the energy it reported until then is kept, the rest is not \
             counted, so the figure is a lower bound.",
        ),
        (
            "stopped answering",
            "a device stopped answering (a call to it did not return within 5 s, as when a GPU \
             falls off the bus); its energy until then is kept, and the others were measured to \
             the end.",
        ),
        (
            "measured until",
            "sampling ended before the job did (the sampler stopped early); the figure covers \
             the run up to that time.",
        ),
        (
            "part of the run only",
            "the device was measured in some of the job's steps and not in others.",
        ),
        (
            "fell off the bus",
            "the GPU stopped responding mid-job (NVML: GPU lost, as after an Xid event); \
             the energy it used until then is kept, the rest of the job is not counted for it: \
             a lower bound. Admins: the node's kernel log says why (Xid messages).",
        ),
        (
            "NVML",
            "GPU energy comes from NVIDIA's NVML library; where it cannot be used (no driver, no \
             library at `nvml=`, no permission on /dev/nvidia*) GPUs are not measured. The \
             node's log line says which.",
        ),
        (
            "not counted",
            "the GPU's readings had gaps (a counter that went back or jumped, samples the driver \
             no longer held); those stretches are not counted, so the figure is a lower bound.",
        ),
    ];
    TABLE
        .iter()
        .find(|(key, _)| reason.contains(key))
        .map(|&(_, text)| text)
}

/// The energy one device has used for the job so far.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEnergy {
    pub component: Component,
    /// `package-N` for RAPL, the NVML UUID (`GPU-…`) for GPUs.
    pub device: String,
    /// Fraction of the device attributed to the job (1 for an allocated GPU).
    pub share: f64,
    /// Energy attributed to the job (device energy × share), before PUE;
    /// `None` exactly when `status` is `Unavailable`.
    pub energy: Option<Joules>,
    pub status: Status,
}

impl DeviceEnergy {
    pub fn unavailable(
        component: Component,
        device: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DeviceEnergy {
            component,
            device: device.into(),
            share: 0.0,
            energy: None,
            status: Status::Unavailable(reason.into()),
        }
    }
}

/// A set of devices read together, driven by the sampler thread.
///
/// `sample` runs once per interval on the sampler thread and must not allocate
/// in steady state; `totals` runs only when someone asks for a snapshot.
pub trait Meter: Send {
    /// Reads counters (or power) now and folds them into the running totals.
    fn sample(&mut self, now: Instant);
    /// Appends the running totals, one entry per device.
    fn totals(&self, out: &mut Vec<DeviceEnergy>);
    /// The energies of [`Meter::totals`], in its order, into `out` (cleared
    /// first). Runs after every sample, so the sampler keeps figures it can
    /// give without asking a meter that stopped answering; the meters of
    /// this crate allocate nothing here in steady state.
    fn energies(&self, out: &mut Vec<Option<Joules>>) {
        let mut rows = Vec::new();
        self.totals(&mut rows);
        out.clear();
        out.extend(rows.iter().map(|r| r.energy));
    }
    /// Whether a pause in its reads loses nothing: true for energy counters
    /// read at both ends of the pause, false for power readings integrated
    /// over time.
    fn bridges_gaps(&self) -> bool {
        false
    }
    /// Names the meter in a status: `RAPL`, `GPU 1`.
    fn label(&self) -> String {
        "meter".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_say_the_first_three_and_count_the_rest() {
        let mut g = Gaps::default();
        assert!(g.reasons().is_empty());
        for i in 0..5 {
            g.note(format!("gap {i}"));
        }
        assert_eq!(g.reasons(), ["gap 0", "gap 1", "gap 2", "2 more such gaps"]);
        let long = "x ".repeat(100);
        let s = stopped_at(&long, std::time::Instant::now());
        assert!(s.len() <= MAX_REASON && s.contains(" at 2"), "{s}");
    }

    #[test]
    fn status_round_trips() {
        for s in [
            Status::Ok,
            Status::Incomplete("GPU lost at 12:00".into()),
            Status::Unavailable("no RAPL".into()),
            Status::Estimated("TDP 150 W (cpu_tdp=150), CPU time".into()),
        ] {
            assert_eq!(Status::parse(&s.to_string()), Some(s));
        }
        assert_eq!(Status::parse("fine"), None);
    }

    #[test]
    fn reasons_are_fitted_within_the_status_limit() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(fit_reasons(&r(&["a", "b"])), "a; b");
        assert_eq!(fit_reasons(&r(&[])), "");
        let long = "x".repeat(60);
        assert_eq!(
            fit_reasons(&r(&[&long, &long, "short"])),
            format!("{long} (+2 more)")
        );
        let words = "word ".repeat(40);
        let one = fit_reasons(&r(&[&words]));
        assert!(one.len() <= MAX_REASON && one.ends_with("word…"), "{one}");
        for v in [
            r(&[&long, "b", "c", "d"]),
            r(&["a", &long, &long]),
            r(&[&words, &words]),
        ] {
            let f = fit_reasons(&v);
            assert!(f.len() <= MAX_REASON, "{} chars: {f}", f.len());
            assert!(Status::Unavailable(f).to_string().len() <= MAX_STATUS);
        }
        // Multi-byte text is cut at a character boundary.
        let wide = "é".repeat(80);
        assert!(cut(&wide, 50).len() <= 50);
        // The CSV form never passes the limit, whatever a reason says.
        for s in [
            Status::Incomplete(words.clone()),
            Status::Unavailable(words.clone()),
            Status::Ok,
        ] {
            assert!(s.to_csv().len() <= MAX_STATUS, "{}", s.to_csv());
        }
        assert_eq!(Status::Incomplete("x".into()).to_csv(), "incomplete: x");
    }

    #[test]
    fn every_approximation_and_failure_kind_is_explained() {
        for reason in [
            cpuset::NOTE_WHOLE_NODE,
            cpuset::NOTE_COUNT,
            cpuset::NOTE_LAYOUT,
            "energy_uj readable by root only",
            "no RAPL zones",
            "reads up to 12.000 s apart (a wrap may be missed)",
            "GPU 1 stopped answering at 2026-01-01T00:00:00Z",
            "measured until 2026-01-01T00:00:00Z",
            "TDP 150 W (cpu_tdp=150), CPU time",
            "powermetrics: powermetrics must be invoked as the superuser",
            "powermetrics ended at 2026-01-01T00:00:00Z",
        ] {
            assert!(explain(reason).is_some(), "{reason}");
        }
        assert_eq!(explain("fine"), None);
    }
}
