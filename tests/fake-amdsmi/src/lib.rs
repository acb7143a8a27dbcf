//! A stand-in `libamd_smi.so`: exports the part of AMD SMI's C ABI carbontrack
//! calls (src/ffi/amdsmi.rs, where the layouts and their sources are), with
//! GPUs whose power is a known profile, so tests on machines without AMD GPUs
//! compare measured energy with the truth.
//!
//! Behaviour comes from a file (format in [`config`]): the path in
//! `CARBONTRACK_FAKE_AMDSMI`, else `fake-amdsmi.conf` beside this library
//! (slurmstepd does not pass a test's environment on). It is read at the
//! first `amdsmi_init`.
//!
//! Every exported function follows AMD SMI's contract: pointers are NULL or
//! valid for the documented struct, handles come from this library. Nothing
//! here panics on bad input; it answers with AMD SMI's status codes.
#![allow(clippy::missing_safety_doc)] // the contract is AMD SMI's, documented above

pub mod config;

use std::ffi::{CStr, OsStr, c_char, c_float, c_uint, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use config::{Config, Gpu, Reports};

type Status = u32;
type Handle = *mut c_void;

const SUCCESS: Status = 0;
const INVAL: Status = 1;
const NOT_SUPPORTED: Status = 2;
const INIT_ERROR: Status = 18;
const NOT_FOUND: Status = 31;
const NOT_INIT: Status = 32;
const INSUFFICIENT_SIZE: Status = 41;

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARBONTRACK_FAKE_AMDSMI") {
        return Some(PathBuf::from(p));
    }
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let me = amdsmi_init as unsafe extern "C" fn(u64) -> Status as *const c_void;
    // SAFETY: `me` is an address inside this library and `info` a writable
    // Dl_info; dladdr only writes into it.
    let found = unsafe { libc::dladdr(me, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr succeeded: dli_fname is a NUL-terminated path owned by
    // the loader, valid while this library is loaded.
    let file = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(Path::new(OsStr::from_bytes(file.to_bytes())).with_file_name("fake-amdsmi.conf"))
}

fn now(cfg: &Config) -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
        - cfg.epoch
}

fn serial(g: &Gpu) -> &CStr {
    g.serial.as_deref().unwrap_or(&g.uuid)
}

/// Runs `f` on GPU `h` (handle = index + 1); hangs first when due.
fn on_gpu(h: Handle, f: impl FnOnce(&Config, &Gpu) -> Status) -> Status {
    let i = h.addr().wrapping_sub(1);
    let hang = {
        let st = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cfg) = st.as_ref() else {
            return NOT_INIT;
        };
        let Some(g) = cfg.gpus.get(i) else {
            return INVAL;
        };
        let t = now(cfg);
        g.hang_at
            .filter(|&a| t >= a && t < a + g.hang_for)
            .map(|a| a + g.hang_for - t)
    };
    if let Some(left) = hang {
        std::thread::sleep(std::time::Duration::from_secs_f64(left));
    }
    let st = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cfg) = st.as_ref() else {
        return NOT_INIT;
    };
    let Some(g) = cfg.gpus.get(i) else {
        return INVAL;
    };
    if g.fail_after.is_some_and(|t| now(cfg) >= t) {
        return NOT_FOUND;
    }
    f(cfg, g)
}

/// What `g` reports of `per` (a GPU's power or energy at the time).
fn reported(cfg: &Config, g: &Gpu, per: impl Fn(&Gpu) -> f64) -> f64 {
    match g.reports {
        Reports::Own => per(g),
        Reports::Zero => 0.0,
        Reports::Package => cfg
            .gpus
            .iter()
            .filter(|o| serial(o) == serial(g))
            .map(per)
            .sum(),
    }
}

unsafe fn put<T>(p: *mut T, v: T) -> Status {
    if p.is_null() {
        return INVAL;
    }
    // SAFETY: non-null and, by AMD SMI's contract, valid for one T.
    unsafe { p.write(v) };
    SUCCESS
}

/// Writes `bytes` at `offset` into a caller's struct.
unsafe fn put_at(p: *mut c_void, offset: usize, bytes: &[u8]) {
    // SAFETY: the caller's struct is at least `offset + bytes.len()` long
    // (every offset used here lies inside the documented struct).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>().add(offset), bytes.len())
    };
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_init(_flags: u64) -> Status {
    let mut st = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
    if st.is_none() {
        let loaded = config_path()
            .ok_or("cannot find where this library is loaded from".to_string())
            .and_then(|p| {
                std::fs::read_to_string(&p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))
                    .and_then(|t| config::parse(&t).map_err(|e| format!("{}: {e}", p.display())))
            });
        match loaded {
            Ok(c) => *st = Some(c),
            Err(e) => {
                eprintln!("fake-amdsmi: {e}");
                return INIT_ERROR;
            }
        }
    }
    if !st.as_ref().is_some_and(|c| c.init_ok) {
        return INIT_ERROR;
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_shut_down() -> Status {
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_lib_version(v: *mut c_void) -> Status {
    let st = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cfg) = st.as_ref() else {
        return NOT_INIT;
    };
    if v.is_null() {
        return INVAL;
    }
    // 24.x: {year, major, minor, release, build}; 25+: {major, minor, release, build}.
    let fields: [u32; 3] = if cfg.version <= 24 {
        [cfg.version, 7, 0]
    } else {
        [cfg.version, 1, 0]
    };
    for (k, f) in fields.iter().enumerate() {
        // SAFETY: amdsmi_version_t holds at least three u32 first.
        unsafe { put_at(v, 4 * k, &f.to_ne_bytes()) };
    }
    SUCCESS
}

/// One socket per GPU, as AMD SMI makes one per PCI device: handle = index + 1.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_socket_handles(n: *mut u32, out: *mut Handle) -> Status {
    let st = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cfg) = st.as_ref() else {
        return NOT_INIT;
    };
    if n.is_null() {
        return INVAL;
    }
    let count = cfg.gpus.len() as u32;
    // SAFETY: `n` is valid (checked non-null; AMD SMI's contract).
    let room = unsafe { *n };
    // SAFETY: as above.
    unsafe { *n = count };
    if out.is_null() {
        return SUCCESS;
    }
    if room < count {
        return INSUFFICIENT_SIZE;
    }
    for k in 0..cfg.gpus.len() {
        // SAFETY: `out` holds `room` >= count handles.
        unsafe { *out.add(k) = std::ptr::without_provenance_mut(k + 1) };
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_processor_handles(
    s: Handle,
    n: *mut u32,
    out: *mut Handle,
) -> Status {
    if n.is_null() {
        return INVAL;
    }
    // SAFETY: `n` is valid (checked non-null).
    let room = unsafe { *n };
    // SAFETY: as above.
    unsafe { *n = 1 };
    if out.is_null() {
        return SUCCESS;
    }
    if room < 1 {
        return INSUFFICIENT_SIZE;
    }
    // SAFETY: `out` holds at least one handle.
    unsafe { *out = s };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_gpu_device_uuid(
    h: Handle,
    len: *mut c_uint,
    buf: *mut c_char,
) -> Status {
    on_gpu(h, |_, g| {
        let bytes = g.uuid.to_bytes_with_nul();
        if len.is_null() || buf.is_null() {
            return INVAL;
        }
        // SAFETY: `len` is valid; `buf` holds `*len` bytes.
        unsafe {
            if (*len as usize) < bytes.len() {
                return INSUFFICIENT_SIZE;
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr().cast(), buf, bytes.len());
            *len = bytes.len() as c_uint - 1;
        }
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_gpu_bdf_id(h: Handle, out: *mut u64) -> Status {
    // SAFETY: `out` is valid for one u64 (AMD SMI's contract).
    on_gpu(h, |_, g| unsafe { put(out, g.bus << 8) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_gpu_enumeration_info(h: Handle, out: *mut c_void) -> Status {
    // Answered in every version the fake plays: carbontrack's fallback for
    // libraries without it (sysfs) has a unit test of its own.
    on_gpu(h, |_, g| {
        if out.is_null() {
            return INVAL;
        }
        // SAFETY: amdsmi_enumeration_info_t starts with uint32_t drm_render.
        unsafe { put_at(out, 0, &g.render.to_ne_bytes()) };
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_gpu_board_info(h: Handle, out: *mut c_void) -> Status {
    on_gpu(h, |_, g| {
        if out.is_null() {
            return INVAL;
        }
        let s = serial(g).to_bytes_with_nul();
        let s = &s[s.len().saturating_sub(32)..];
        // SAFETY: product_serial is at byte 256 and 32 bytes long at least.
        unsafe { put_at(out, 256, s) };
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_energy_count(
    h: Handle,
    acc: *mut u64,
    res: *mut c_float,
    ts: *mut u64,
) -> Status {
    on_gpu(h, |cfg, g| {
        if !g.counter {
            return NOT_SUPPORTED;
        }
        let t = now(cfg);
        let uj = reported(cfg, g, |o| o.power.energy_to(t)) * 1e6;
        let mut ticks = g.counter_start.wrapping_add((uj / g.resolution) as u64);
        if g.wrap32 {
            ticks &= u64::from(u32::MAX);
        }
        // SAFETY: each pointer is valid for one value (AMD SMI's contract).
        unsafe {
            let r = put(acc, ticks) | put(res, g.resolution as f32);
            r | put(ts, (t.max(0.0) * 1e9) as u64)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_power_info(h: Handle, out: *mut c_void) -> Status {
    on_gpu(h, |cfg, g| {
        if out.is_null() {
            return INVAL;
        }
        let t = now(cfg);
        let w = reported(cfg, g, |o| o.power.power_at(t)).round() as u32;
        // 24.x: {u32 current_socket_power, average_socket_power, …};
        // 26.x: {u64 socket_power; u32 current_socket_power, average_socket_power, …}.
        let at = if cfg.version <= 24 { 4 } else { 12 };
        // SAFETY: both layouts hold average_socket_power at that offset.
        unsafe { put_at(out, at, &w.to_ne_bytes()) };
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn amdsmi_get_gpu_activity(h: Handle, out: *mut c_void) -> Status {
    on_gpu(h, |_, g| {
        if out.is_null() {
            return INVAL;
        }
        // SAFETY: amdsmi_engine_usage_t starts with uint32_t gfx_activity.
        unsafe { put_at(out, 0, &g.busy.to_ne_bytes()) };
        SUCCESS
    })
}
