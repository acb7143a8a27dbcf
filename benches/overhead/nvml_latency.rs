//! NVML's own per-call cost on a machine with real GPUs (`--real-nvml`): the
//! figure row 1's fake delay stands in for. Wall time and the calling
//! thread's CPU time per call, for the calls carbontrack makes each sample.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use nvml_wrapper::Nvml;

/// Per-call figures of one NVML function.
#[derive(Debug, Clone)]
pub struct CallCost {
    pub call: &'static str,
    pub wall: Duration,
    pub cpu: Duration,
    pub calls: u32,
}

fn own_cpu() -> Result<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("cannot read /proc/thread-self/schedstat")?;
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .context("schedstat does not start with a number")?;
    Ok(Duration::from_nanos(ns))
}

fn time(call: &'static str, calls: u32, mut f: impl FnMut() -> bool) -> Result<CallCost> {
    // One untimed call: the first may set things up in the driver.
    ensure!(f(), "{call} failed");
    let (cpu0, t0) = (own_cpu()?, Instant::now());
    for _ in 0..calls {
        ensure!(f(), "{call} failed");
    }
    let wall = t0.elapsed() / calls;
    let cpu = own_cpu()?.saturating_sub(cpu0) / calls;
    Ok(CallCost {
        call,
        wall,
        cpu,
        calls,
    })
}

/// Times the calls carbontrack makes per GPU and sample, on GPU 0.
pub fn measure(lib: &Path, calls: u32) -> Result<(String, Vec<CallCost>)> {
    let nvml = Nvml::builder()
        .lib_path(lib.as_os_str())
        .init()
        .with_context(|| format!("cannot load and initialise NVML from {}", lib.display()))?;
    ensure!(nvml.device_count()? > 0, "NVML lists no GPU");
    let dev = nvml.device_by_index(0)?;
    let name = dev.name().unwrap_or_else(|_| "GPU 0".into());
    let driver = nvml.sys_driver_version().unwrap_or_default();
    let mut out = vec![time("nvmlDeviceGetHandleByIndex_v2", calls, || {
        nvml.device_by_index(0).is_ok()
    })?];
    if dev.total_energy_consumption().is_ok() {
        out.push(time("nvmlDeviceGetTotalEnergyConsumption", calls, || {
            dev.total_energy_consumption().is_ok()
        })?);
    }
    if dev.power_usage().is_ok() {
        out.push(time("nvmlDeviceGetPowerUsage", calls, || {
            dev.power_usage().is_ok()
        })?);
    }
    Ok((format!("{name}, driver {driver}"), out))
}
