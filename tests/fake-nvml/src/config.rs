//! The fake's configuration file: which GPUs exist and how they behave.
//!
//! A tiny line format, so a test (or a Slurm prolog in an end-to-end test) can
//! write it with `printf`:
//!
//! ```text
//! # comments and blank lines are ignored
//! epoch = 1700000000.25     # unix seconds: time zero of every power profile
//! driver = ok               # ok | missing (nvmlInit fails: driver not loaded)
//! delay_us = 0              # busy delay in every call, to mimic a slow driver
//!
//! [gpu]                     # starts the next GPU; NVML index = order in the file
//! uuid = GPU-00000000-0000-0000-0000-000000000000
//! name = Fake A100          # optional
//! minor = 0                 # optional, default = index
//! power = 100@5,300@5       # watts profile (carbontrack_fixtures::profile)
//! energy = counter          # counter | none (total energy: NOT_SUPPORTED)
//! samples = 20              # optional: the driver's power sample buffer,
//!                           # a sample every 20 ms (nvmlDeviceGetSamples);
//!                           # without it the call answers NOT_SUPPORTED
//! sample_buffer = 120       # optional: samples the buffer keeps (default 120)
//! samples_start = 1.0       # optional: seconds after epoch; the buffer is
//!                           # empty until then (default 0)
//! samples_stop = 2.0        # optional: seconds after epoch; no new samples then
//! fail_after = 3.5          # optional: seconds after epoch; then GPU_IS_LOST
//! hang_at = 4.0             # optional: seconds after epoch; from then on every
//!                           # call on this GPU blocks until hang_at + hang_for
//! hang_for = 3600           # optional: seconds (default 3600), then it answers
//! reload_at = 2.0           # optional: the energy counter restarts from 0 then
//! pids = 100,200            # optional: compute processes running on it
//! mig = MIG-a,MIG-b         # optional: MIG mode on, with these instances
//! ```
//!
//! The truth a test compares with is `Profile::energy_between` over the same
//! profile: the fake reports `power_at(now)` in mW and `energy_to(now)` in mJ.
//! Buffered sample `k` is `power_at((k + ½) × samples)`, stamped with the
//! unix time `epoch + (k + ½) × samples` in µs; the buffer starts at the epoch
//! (no samples before the "driver" loaded) and keeps the newest
//! `sample_buffer`.

use std::ffi::CString;
use std::time::Duration;

use carbontrack_fixtures::profile::Profile;

#[derive(Debug)]
pub struct Config {
    pub epoch: f64,
    pub driver_loaded: bool,
    pub delay: Duration,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug)]
pub struct Gpu {
    pub uuid: CString,
    pub name: CString,
    pub minor: u32,
    pub power: Profile,
    pub counter: bool,
    /// Seconds between the driver's buffered power samples; None: no buffer.
    pub sample_period: Option<f64>,
    pub sample_buffer: u32,
    /// Seconds after the epoch before which the buffer holds nothing.
    pub samples_start: f64,
    /// Seconds after the epoch from which the buffer gets no new samples.
    pub samples_stop: Option<f64>,
    pub fail_after: Option<f64>,
    /// Seconds after the epoch from which every call blocks, for `hang_for`.
    pub hang_at: Option<f64>,
    pub hang_for: f64,
    pub reload_at: Option<f64>,
    pub pids: Vec<u32>,
    pub migs: Vec<CString>,
}

impl Gpu {
    fn new(index: usize) -> Gpu {
        Gpu {
            uuid: CString::default(),
            name: c"Fake GPU".into(),
            minor: index as u32,
            power: Profile::constant(0.0),
            counter: true,
            sample_period: None,
            sample_buffer: 120,
            samples_start: 0.0,
            samples_stop: None,
            fail_after: None,
            hang_at: None,
            hang_for: 3600.0,
            reload_at: None,
            pids: Vec::new(),
            migs: Vec::new(),
        }
    }
}

fn cstring(key: &str, v: &str) -> Result<CString, String> {
    CString::new(v).map_err(|_| format!("`{key}` holds a NUL byte"))
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("`{key} = {v}` is not a valid number"))
}

pub fn parse(text: &str) -> Result<Config, String> {
    let mut cfg = Config {
        epoch: 0.0,
        driver_loaded: true,
        delay: Duration::ZERO,
        gpus: Vec::new(),
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", n + 1);
        if line == "[gpu]" {
            cfg.gpus.push(Gpu::new(cfg.gpus.len()));
            continue;
        }
        let (key, v) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| at(format!("`{line}` is not key = value")))?;
        match (key, cfg.gpus.last_mut()) {
            ("epoch", _) => cfg.epoch = number(key, v).map_err(at)?,
            ("driver", _) => {
                cfg.driver_loaded = match v {
                    "ok" => true,
                    "missing" => false,
                    _ => return Err(at(format!("driver must be ok or missing, not `{v}`"))),
                }
            }
            ("delay_us", _) => cfg.delay = Duration::from_micros(number(key, v).map_err(at)?),
            (_, None) => return Err(at(format!("`{key}` outside a [gpu] section"))),
            ("uuid", Some(g)) => g.uuid = cstring(key, v).map_err(at)?,
            ("name", Some(g)) => g.name = cstring(key, v).map_err(at)?,
            ("minor", Some(g)) => g.minor = number(key, v).map_err(at)?,
            ("power", Some(g)) => g.power = v.parse().map_err(at)?,
            ("energy", Some(g)) => {
                g.counter = match v {
                    "counter" => true,
                    "none" => false,
                    _ => return Err(at(format!("energy must be counter or none, not `{v}`"))),
                }
            }
            ("samples", Some(g)) => {
                let ms: f64 = number(key, v).map_err(at)?;
                if !(ms > 0.0 && ms.is_finite()) {
                    return Err(at(format!("samples must be a period in ms > 0, not `{v}`")));
                }
                g.sample_period = Some(ms / 1e3);
            }
            ("sample_buffer", Some(g)) => {
                g.sample_buffer = number(key, v).map_err(at)?;
                if g.sample_buffer == 0 {
                    return Err(at("sample_buffer must be at least 1".into()));
                }
            }
            ("samples_start", Some(g)) => g.samples_start = number(key, v).map_err(at)?,
            ("samples_stop", Some(g)) => g.samples_stop = Some(number(key, v).map_err(at)?),
            ("fail_after", Some(g)) => g.fail_after = Some(number(key, v).map_err(at)?),
            ("hang_at", Some(g)) => g.hang_at = Some(number(key, v).map_err(at)?),
            ("hang_for", Some(g)) => g.hang_for = number(key, v).map_err(at)?,
            ("reload_at", Some(g)) => g.reload_at = Some(number(key, v).map_err(at)?),
            ("pids", Some(g)) => {
                g.pids = v
                    .split(',')
                    .map(|p| number(key, p.trim()))
                    .collect::<Result<_, _>>()
                    .map_err(at)?
            }
            ("mig", Some(g)) => {
                g.migs = v
                    .split(',')
                    .map(|m| cstring(key, m.trim()))
                    .collect::<Result<_, _>>()
                    .map_err(at)?
            }
            _ => return Err(at(format!("unknown key `{key}`"))),
        }
    }
    for (i, g) in cfg.gpus.iter().enumerate() {
        if g.uuid.is_empty() {
            return Err(format!("GPU {i} has no uuid"));
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c = parse(
            "epoch = 10.5\ndelay_us = 3\n[gpu]\nuuid = GPU-a # first\npower = 100@5,300@5\n\
             energy = none\nsamples = 20\nsample_buffer = 50\nsamples_start = 1\nsamples_stop = 9\nfail_after = 3.5\npids = 1, 2\n\
             mig = MIG-x,MIG-y\n[gpu]\nuuid = GPU-b\nminor = 7\n",
        )
        .unwrap();
        assert_eq!(c.epoch, 10.5);
        assert_eq!(c.delay, Duration::from_micros(3));
        assert!(c.driver_loaded);
        assert_eq!(c.gpus.len(), 2);
        let a = &c.gpus[0];
        assert_eq!(a.uuid.to_str(), Ok("GPU-a"));
        assert!(!a.counter);
        assert_eq!(a.power.mean_power(), 200.0);
        assert_eq!(a.fail_after, Some(3.5));
        assert_eq!((a.sample_period, a.sample_buffer), (Some(0.02), 50));
        assert_eq!((a.samples_start, a.samples_stop), (1.0, Some(9.0)));
        assert_eq!(c.gpus[1].sample_period, None);
        assert_eq!(a.pids, [1, 2]);
        assert_eq!(a.migs.len(), 2);
        assert_eq!(a.minor, 0);
        assert_eq!(c.gpus[1].minor, 7);
        assert!(c.gpus[1].counter);
    }

    #[test]
    fn refuses_mistakes() {
        for bad in [
            "uuid = GPU-a",
            "[gpu]\npower = 1",
            "[gpu]\nuuid = GPU-a\nenergy = maybe",
            "driver = gone",
            "[gpu]\nuuid = GPU-a\ncolour = red",
            "epoch",
            "[gpu]\nuuid = GPU-a\nsamples = 0",
            "[gpu]\nuuid = GPU-a\nsample_buffer = 0",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
