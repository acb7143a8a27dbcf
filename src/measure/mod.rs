//! The measurement core: RAPL and NVML readers, the job's devices, CPU
//! attribution and the sampler thread. Nothing here knows about Slurm, so
//! `carbontrack run`, the plugin and the tests drive the same code.

pub mod cores;
pub mod cpuset;
pub mod gpus;
pub mod nvml;
pub mod rapl;
pub mod sampler;

use std::fmt;
use std::time::Instant;

use crate::units::Joules;

/// The kind of device, as the CSV's `component` column names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Cpu,
    Dram,
    Gpu,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Cpu => "cpu",
            Component::Dram => "dram",
            Component::Gpu => "gpu",
        }
    }

    pub fn parse(s: &str) -> Option<Component> {
        match s {
            "cpu" => Some(Component::Cpu),
            "dram" => Some(Component::Dram),
            "gpu" => Some(Component::Gpu),
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
}

impl Status {
    /// Parses the CSV form (`ok`, `incomplete: …`, `unavailable: …`).
    pub fn parse(s: &str) -> Option<Status> {
        if s == "ok" {
            Some(Status::Ok)
        } else if let Some(r) = s.strip_prefix("incomplete: ") {
            Some(Status::Incomplete(r.to_string()))
        } else {
            s.strip_prefix("unavailable: ")
                .map(|r| Status::Unavailable(r.to_string()))
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ok => f.write_str("ok"),
            Status::Incomplete(r) => write!(f, "incomplete: {r}"),
            Status::Unavailable(r) => write!(f, "unavailable: {r}"),
        }
    }
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
    /// Names the meter in a status: `RAPL`, `GPU 1`.
    fn label(&self) -> String {
        "meter".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for s in [
            Status::Ok,
            Status::Incomplete("GPU lost at 12:00".into()),
            Status::Unavailable("no RAPL".into()),
        ] {
            assert_eq!(Status::parse(&s.to_string()), Some(s));
        }
        assert_eq!(Status::parse("fine"), None);
    }
}
