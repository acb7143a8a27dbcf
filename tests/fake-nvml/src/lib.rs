//! A stand-in `libnvidia-ml.so`: exports the part of NVML's C ABI carbontrack
//! calls (through nvml-wrapper), with GPUs whose power is a known profile, so
//! tests on machines without GPUs compare measured energy with the truth.
//!
//! Behaviour comes from a file (format in [`config`]): the path in
//! `CARBONTRACK_FAKE_NVML`, else `fake-nvml.conf` beside this library. The
//! second form exists because slurmstepd does not pass a test's environment
//! on; it also lets tests in one process run different fakes side by side, by
//! copying the library into separate directories (the dynamic loader loads
//! each copy, with its own state, once).
//!
//! The configuration is read at the first `nvmlInit`; it is read again after
//! the last `nvmlShutdown`.
//!
//! Every exported function follows NVML's contract: pointers are NULL or valid
//! for the documented size, handles come from this library. Nothing here
//! panics on bad input; it answers with NVML's error codes instead.
#![allow(clippy::missing_safety_doc)] // the contract is NVML's, documented above

pub mod config;

use std::ffi::OsStr;
use std::ffi::{CStr, c_char, c_uint, c_ulonglong, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use carbontrack_fixtures::fake_nvml::driver_sample_time as sample_time;
use config::{Config, Gpu};

type Ret = c_uint;
/// An opaque device handle: `(gpu + 1) | (mig + 1) << 16`, never dereferenced.
type Handle = *mut c_void;

const SUCCESS: Ret = 0;
const UNINITIALIZED: Ret = 1;
const INVALID_ARGUMENT: Ret = 2;
const NOT_SUPPORTED: Ret = 3;
const NOT_FOUND: Ret = 6;
const INSUFFICIENT_SIZE: Ret = 7;
const DRIVER_NOT_LOADED: Ret = 9;
const GPU_IS_LOST: Ret = 15;
const UNKNOWN: Ret = 999;

struct State {
    inits: u32,
    config: Option<Config>,
}

static STATE: Mutex<State> = Mutex::new(State {
    inits: 0,
    config: None,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the configuration is: see the crate documentation.
fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARBONTRACK_FAKE_NVML") {
        return Some(PathBuf::from(p));
    }
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let me = nvmlInit_v2 as unsafe extern "C" fn() -> Ret as *const c_void;
    // SAFETY: `me` is an address inside this library and `info` is a valid,
    // writable Dl_info; dladdr only writes into it.
    let found = unsafe { libc::dladdr(me, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr succeeded, so dli_fname is a NUL-terminated path string
    // owned by the loader and valid while this library stays loaded.
    let file = unsafe { CStr::from_ptr(info.dli_fname) };
    let file = Path::new(OsStr::from_bytes(file.to_bytes()));
    Some(file.with_file_name("fake-nvml.conf"))
}

fn load_config() -> Result<Config, String> {
    let path = config_path().ok_or("cannot find where this library is loaded from")?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn init() -> Ret {
    let mut st = state();
    if st.inits == 0 {
        match load_config() {
            Ok(c) => st.config = Some(c),
            Err(e) => {
                eprintln!("fake-nvml: {e}");
                return UNKNOWN;
            }
        }
    }
    let Some(cfg) = &st.config else {
        return UNKNOWN;
    };
    if !cfg.driver_loaded {
        st.config = None;
        return DRIVER_NOT_LOADED;
    }
    st.inits += 1;
    SUCCESS
}

/// Runs `f` on the loaded configuration, after the configured delay.
fn with_config(f: impl FnOnce(&Config) -> Ret) -> Ret {
    let st = state();
    match &st.config {
        Some(cfg) if st.inits > 0 => {
            if !cfg.delay.is_zero() {
                let until = Instant::now() + cfg.delay;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            f(cfg)
        }
        _ => UNINITIALIZED,
    }
}

/// Seconds since the configured epoch.
fn now(cfg: &Config) -> f64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    t - cfg.epoch
}

fn handle_of(gpu: usize, mig: Option<usize>) -> Handle {
    let mig = mig.map_or(0, |m| m + 1);
    std::ptr::without_provenance_mut((gpu + 1) | (mig << 16))
}

/// The device a handle names, and the MIG instance when it is one.
enum Dev<'a> {
    Gpu(usize, &'a Gpu),
    Mig(usize, &'a Gpu, usize),
}

fn lost(cfg: &Config, g: &Gpu) -> bool {
    g.fail_after.is_some_and(|t| now(cfg) >= t)
}

/// Resolves a handle; a lost GPU (and its MIG instances) answers GPU_IS_LOST.
fn device(cfg: &Config, h: Handle) -> Result<Dev<'_>, Ret> {
    let v = h.addr();
    let (gi, mi) = ((v & 0xffff).wrapping_sub(1), v >> 16);
    let g = cfg.gpus.get(gi).ok_or(INVALID_ARGUMENT)?;
    if lost(cfg, g) {
        return Err(GPU_IS_LOST);
    }
    match mi {
        0 => Ok(Dev::Gpu(gi, g)),
        m if m <= g.migs.len() => Ok(Dev::Mig(gi, g, m - 1)),
        _ => Err(INVALID_ARGUMENT),
    }
}

/// A call on a GPU whose `hang_at` has come blocks until `hang_at +
/// hang_for`, as a driver does for a GPU that fell off the bus; the wait is
/// outside the library's lock, so the other GPUs still answer.
fn hang_if_due(h: Handle) {
    let left = {
        let st = state();
        let Some(cfg) = &st.config else { return };
        let gi = (h.addr() & 0xffff).wrapping_sub(1);
        let Some((at, for_s)) = cfg
            .gpus
            .get(gi)
            .and_then(|g| g.hang_at.map(|a| (a, g.hang_for)))
        else {
            return;
        };
        let t = now(cfg);
        if t < at || t >= at + for_s {
            return;
        }
        std::time::Duration::from_secs_f64(at + for_s - t)
    };
    std::thread::sleep(left);
}

fn on_gpu(h: Handle, f: impl FnOnce(&Config, usize, &Gpu) -> Ret) -> Ret {
    hang_if_due(h);
    with_config(|cfg| match device(cfg, h) {
        Ok(Dev::Gpu(i, g)) => f(cfg, i, g),
        Ok(Dev::Mig(..)) => NOT_SUPPORTED,
        Err(e) => e,
    })
}

/// Stores `v` through an out-pointer.
unsafe fn put<T>(p: *mut T, v: T) -> Ret {
    if p.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null, and by NVML's contract valid for writing one T.
    unsafe { p.write(v) };
    SUCCESS
}

/// Copies a C string into a caller's buffer of `len` bytes.
unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &CStr) -> Ret {
    let bytes = s.to_bytes_with_nul();
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    if bytes.len() > len as usize {
        return INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller's buffer holds `len` >= bytes.len() bytes and cannot
    // overlap our own string.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().cast(), buf, bytes.len()) };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> Ret {
    init()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    init()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> Ret {
    let mut st = state();
    if st.inits == 0 {
        return UNINITIALIZED;
    }
    st.inits -= 1;
    if st.inits == 0 {
        st.config = None;
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(r: Ret) -> *const c_char {
    let s: &'static CStr = match r {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        NOT_FOUND => c"Not Found",
        INSUFFICIENT_SIZE => c"Insufficient Size",
        DRIVER_NOT_LOADED => c"Driver Not Loaded",
        GPU_IS_LOST => c"GPU is lost",
        _ => c"Unknown Error",
    };
    s.as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> Ret {
    // SAFETY: buffer contract forwarded from our caller.
    with_config(|_| unsafe { put_str(buf, len, c"550.54.15") })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    // SAFETY: out-pointer contract forwarded from our caller.
    with_config(|cfg| unsafe { put(count, cfg.gpus.len() as c_uint) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, out: *mut Handle) -> Ret {
    with_config(|cfg| match cfg.gpus.get(index as usize) {
        None => INVALID_ARGUMENT,
        Some(g) if lost(cfg, g) => GPU_IS_LOST,
        // SAFETY: out-pointer contract forwarded from our caller.
        Some(_) => unsafe { put(out, handle_of(index as usize, None)) },
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, out: *mut Handle) -> Ret {
    if uuid.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: NVML's contract: a NUL-terminated string.
    let uuid = unsafe { CStr::from_ptr(uuid) };
    with_config(|cfg| {
        for (i, g) in cfg.gpus.iter().enumerate() {
            let h = if g.uuid.as_c_str() == uuid {
                handle_of(i, None)
            } else if let Some(m) = g.migs.iter().position(|m| m.as_c_str() == uuid) {
                handle_of(i, Some(m))
            } else {
                continue;
            };
            if lost(cfg, g) {
                return GPU_IS_LOST;
            }
            // SAFETY: out-pointer contract forwarded from our caller.
            return unsafe { put(out, h) };
        }
        NOT_FOUND
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(h: Handle, buf: *mut c_char, len: c_uint) -> Ret {
    with_config(|cfg| match device(cfg, h) {
        // SAFETY: buffer contract forwarded from our caller.
        Ok(Dev::Gpu(_, g)) => unsafe { put_str(buf, len, &g.uuid) },
        // SAFETY: as above.
        Ok(Dev::Mig(_, g, m)) => unsafe { put_str(buf, len, &g.migs[m]) },
        Err(e) => e,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(h: Handle, buf: *mut c_char, len: c_uint) -> Ret {
    with_config(|cfg| match device(cfg, h) {
        // SAFETY: buffer contract forwarded from our caller.
        Ok(Dev::Gpu(_, g) | Dev::Mig(_, g, _)) => unsafe { put_str(buf, len, &g.name) },
        Err(e) => e,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(h: Handle, out: *mut c_uint) -> Ret {
    // SAFETY: out-pointer contract forwarded from our caller.
    on_gpu(h, |_, _, g| unsafe { put(out, g.minor) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(h: Handle, out: *mut c_uint) -> Ret {
    // SAFETY: out-pointer contract forwarded from our caller.
    on_gpu(h, |_, i, _| unsafe { put(out, i as c_uint) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(h: Handle, mw: *mut c_uint) -> Ret {
    on_gpu(h, |cfg, _, g| {
        let w = g.power.power_at(now(cfg));
        // SAFETY: out-pointer contract forwarded from our caller.
        unsafe { put(mw, (w * 1e3).round() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    h: Handle,
    mj: *mut c_ulonglong,
) -> Ret {
    on_gpu(h, |cfg, _, g| {
        if !g.counter {
            return NOT_SUPPORTED;
        }
        let t = now(cfg);
        let since = match g.reload_at {
            Some(r) if t >= r => r,
            _ => 0.0,
        };
        let joules = g.power.energy_between(since, t);
        // SAFETY: out-pointer contract forwarded from our caller.
        unsafe { put(mj, (joules * 1e3) as c_ulonglong) }
    })
}

/// `nvmlValue_t`: the fake fills `ui` (NVML_VALUE_TYPE_UNSIGNED_INT), as
/// drivers do for power.
#[repr(C)]
pub union SampleValue {
    ui: c_uint,
    /// Makes the union 8 bytes, as NVML's is.
    _wide: c_ulonglong,
}

/// `nvmlSample_t`.
#[repr(C)]
pub struct Sample {
    time_stamp: c_ulonglong,
    value: SampleValue,
}

const TOTAL_POWER_SAMPLES: c_uint = 0;
const VALUE_TYPE_UNSIGNED_INT: c_uint = 1;

/// Sample `k`'s timestamp: unix time in µs.
fn sample_stamp(cfg: &Config, period: f64, k: i64) -> c_ulonglong {
    ((cfg.epoch + sample_time(period, k)) * 1e6).round() as c_ulonglong
}

/// The buffered power samples newer than `last_seen` (µs), as `(k, stamp)`
/// of the first and the count; None when there is none.
fn samples_after(cfg: &Config, g: &Gpu, period: f64, last_seen: u64) -> Option<(i64, u32)> {
    let stamp = |k| sample_stamp(cfg, period, k);
    let until = g.samples_stop.map_or(now(cfg), |stop| stop.min(now(cfg)));
    let newest = (until / period - 0.5).floor() as i64;
    let first_ever = (g.samples_start / period - 0.5).ceil() as i64;
    let oldest = (newest - i64::from(g.sample_buffer) + 1).max(first_ever.max(0));
    let mut first = if last_seen == 0 {
        oldest
    } else {
        (((last_seen as f64 / 1e6 - cfg.epoch) / period - 0.5).floor() as i64).max(oldest)
    };
    while first <= newest && stamp(first) <= last_seen {
        first += 1;
    }
    (first <= newest).then(|| (first, (newest - first + 1) as u32))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSamples(
    h: Handle,
    kind: c_uint,
    last_seen: c_ulonglong,
    value_type: *mut c_uint,
    count: *mut c_uint,
    samples: *mut Sample,
) -> Ret {
    on_gpu(h, |cfg, _, g| {
        let Some(period) = g.sample_period.filter(|_| kind == TOTAL_POWER_SAMPLES) else {
            return NOT_SUPPORTED;
        };
        if count.is_null() || value_type.is_null() {
            return INVALID_ARGUMENT;
        }
        let Some((first, available)) = samples_after(cfg, g, period, last_seen) else {
            return NOT_FOUND;
        };
        // SAFETY: checked non-null above; NVML's contract makes them valid.
        unsafe { value_type.write(VALUE_TYPE_UNSIGNED_INT) };
        if samples.is_null() {
            // SAFETY: as above.
            unsafe { count.write(available) };
            return SUCCESS;
        }
        // SAFETY: as above.
        let room = unsafe { count.read() };
        let n = available.min(room);
        for i in 0..n {
            let k = first + i64::from(i);
            let watts = g.power.power_at(sample_time(period, k));
            let s = Sample {
                time_stamp: sample_stamp(cfg, period, k),
                value: SampleValue {
                    ui: (watts * 1e3).round() as c_uint,
                },
            };
            // SAFETY: the caller's array holds `room` >= n samples.
            unsafe { samples.add(i as usize).write(s) };
        }
        // SAFETY: as above.
        unsafe { count.write(n) };
        SUCCESS
    })
}

/// `nvmlProcessInfo_v2_t`, the element `_v3` fills (24 bytes).
#[repr(C)]
pub struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    h: Handle,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    if count.is_null() {
        return INVALID_ARGUMENT;
    }
    on_gpu(h, |_, _, g| {
        // SAFETY: count is non-null and, by contract, valid for read and write.
        let room = unsafe { count.read() } as usize;
        // SAFETY: as above.
        unsafe { count.write(g.pids.len() as c_uint) };
        if g.pids.len() > room {
            return INSUFFICIENT_SIZE;
        }
        if g.pids.is_empty() {
            return SUCCESS;
        }
        if infos.is_null() {
            return INVALID_ARGUMENT;
        }
        for (k, &pid) in g.pids.iter().enumerate() {
            let info = ProcessInfo {
                pid,
                used_gpu_memory: 1 << 30,
                gpu_instance_id: u32::MAX,
                compute_instance_id: u32::MAX,
            };
            // SAFETY: k < pids.len() <= room, the caller's array length.
            unsafe { infos.add(k).write(info) };
        }
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    h: Handle,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    on_gpu(h, |_, _, g| {
        let on = c_uint::from(!g.migs.is_empty());
        // SAFETY: out-pointer contract forwarded from our caller.
        match unsafe { put(current, on) } {
            // SAFETY: as above.
            SUCCESS => unsafe { put(pending, on) },
            e => e,
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(h: Handle, out: *mut c_uint) -> Ret {
    on_gpu(h, |_, _, g| {
        if g.migs.is_empty() {
            return NOT_SUPPORTED;
        }
        // SAFETY: out-pointer contract forwarded from our caller.
        unsafe { put(out, g.migs.len() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    h: Handle,
    index: c_uint,
    out: *mut Handle,
) -> Ret {
    on_gpu(h, |_, i, g| {
        if index as usize >= g.migs.len() {
            return NOT_FOUND;
        }
        // SAFETY: out-pointer contract forwarded from our caller.
        unsafe { put(out, handle_of(i, Some(index as usize))) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    h: Handle,
    out: *mut Handle,
) -> Ret {
    with_config(|cfg| match device(cfg, h) {
        // SAFETY: out-pointer contract forwarded from our caller.
        Ok(Dev::Mig(i, _, _)) => unsafe { put(out, handle_of(i, None)) },
        Ok(Dev::Gpu(..)) => INVALID_ARGUMENT,
        Err(e) => e,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(h: Handle, out: *mut c_uint) -> Ret {
    with_config(|cfg| match device(cfg, h) {
        // SAFETY: out-pointer contract forwarded from our caller.
        Ok(d) => unsafe { put(out, c_uint::from(matches!(d, Dev::Mig(..)))) },
        Err(e) => e,
    })
}
