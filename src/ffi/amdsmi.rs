//! AMD SMI (`libamd_smi.so`, ROCm), loaded at run time with libloading: the
//! few calls the AMD GPU meter makes, behind safe types.
//!
//! Shapes follow AMD's `include/amd_smi/amdsmi.h`:
//! - functions, status codes, `amdsmi_kfd`-free enumeration by socket and
//!   processor handles, `amdsmi_get_energy_count(handle, uint64_t
//!   *energy_accumulator, float *counter_resolution /* µJ */, uint64_t
//!   *timestamp /* ns */)`: the header of AMD SMI 24.7.0 (ROCm/amdsmi at
//!   commit 0ceca28, ROCm 6.3 development; the same in rocm-6.0.0 to 6.2.2);
//! - `amdsmi_power_info_t` exists in (at least) three layouts, told apart by
//!   `amdsmi_get_lib_version`. Library 23.x (`year` 23) has `{uint32_t
//!   average_socket_power; uint32_t gfx_voltage; …}` and a board info that
//!   starts with a `uint64_t serial_number`: neither matches the reads below,
//!   so on 23.x (and any version not listed) average power and the board
//!   serial are not read at all (a power-only GPU is `unavailable`, each GCD
//!   its own package) rather than read from the wrong bytes. Library 24.x
//!   (whose `amdsmi_version_t` starts with `year` 24) has `{uint32_t
//!   current_socket_power, average_socket_power, gfx_voltage, soc_voltage,
//!   mem_voltage, power_limit, reserved[11]}`; from library 25 on (whose
//!   version struct starts with `major`, 25, 26, …; header of AMD SMI 26.1 in
//!   ROCm/rocm-systems) it is `{uint64_t socket_power; uint32_t
//!   current_socket_power, average_socket_power; uint64_t gfx_voltage, …}`.
//!   Unsupported members are `UINT32_MAX`.
//! - `amdsmi_get_gpu_enumeration_info` (library 25 and later; `{uint32_t
//!   drm_render, drm_card, hsa_id, hip_id; char hip_uuid[256]}`) gives the
//!   render node's minor; older libraries lack the symbol and the meter maps
//!   `/sys/class/drm/renderD*/device` to the PCI address instead.
//! - `amdsmi_board_info_t`'s `product_serial` sits at byte 256 in both the
//!   24.x layout (`char model_number[256]`, `product_serial[32]`, …) and the
//!   26.x one (`char model_number[256]`, `product_serial[256]`, …).
//!
//! Every struct is read from a zeroed buffer larger than any known layout,
//! so a library with a bigger struct writes into room of ours.

use std::ffi::{c_char, c_float, c_uint, c_void};
use std::path::Path;

type Status = u32;
type Handle = *mut c_void;

/// `AMDSMI_STATUS_SUCCESS` and the codes the meter tells apart.
const SUCCESS: Status = 0;
const NOT_SUPPORTED: Status = 2;
const NO_PERM: Status = 10;
const NOT_FOUND: Status = 31;
const NOT_INIT: Status = 32;
/// `AMDSMI_INIT_AMD_GPUS`.
const INIT_AMD_GPUS: u64 = 1 << 1;
/// Room for any known struct the meter reads (the largest, board info in
/// 26.x, is 1792 bytes).
const ROOM: usize = 4096;
/// `AMDSMI_GPU_UUID_SIZE` is 38; room for more.
const UUID_ROOM: usize = 128;
/// Handles asked for at most, per list.
const MAX_HANDLES: usize = 256;

/// What an AMD SMI call answered, when not success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmdSmiError {
    #[error("not supported")]
    NotSupported,
    #[error("permission denied")]
    NoPermission,
    #[error("device not found")]
    NotFound,
    #[error("not initialised")]
    NotInitialised,
    #[error("status {0}")]
    Other(u32),
    #[error("symbol missing from the library")]
    NoSymbol,
    #[error("implausible answer")]
    Implausible,
}

impl AmdSmiError {
    fn of(status: Status) -> Result<(), AmdSmiError> {
        match status {
            SUCCESS => Ok(()),
            NOT_SUPPORTED => Err(AmdSmiError::NotSupported),
            NO_PERM => Err(AmdSmiError::NoPermission),
            NOT_FOUND => Err(AmdSmiError::NotFound),
            NOT_INIT => Err(AmdSmiError::NotInitialised),
            s => Err(AmdSmiError::Other(s)),
        }
    }
}

/// Why the library cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmdSmiOpenError {
    #[error("cannot load {path}: {detail}")]
    Missing { path: String, detail: String },
    #[error("{path} lacks {symbol}: not an AMD SMI library")]
    NotAmdSmi { path: String, symbol: &'static str },
    #[error("amdsmi_init failed ({path}): {error}")]
    Init { path: String, error: AmdSmiError },
    #[error("listing GPUs failed ({path}): {error}")]
    List { path: String, error: AmdSmiError },
}

type FnInit = unsafe extern "C" fn(u64) -> Status;
type FnSockets = unsafe extern "C" fn(*mut u32, *mut Handle) -> Status;
type FnProcessors = unsafe extern "C" fn(Handle, *mut u32, *mut Handle) -> Status;
type FnUuid = unsafe extern "C" fn(Handle, *mut c_uint, *mut c_char) -> Status;
type FnU64 = unsafe extern "C" fn(Handle, *mut u64) -> Status;
type FnStruct = unsafe extern "C" fn(Handle, *mut c_void) -> Status;
type FnEnergy = unsafe extern "C" fn(Handle, *mut u64, *mut c_float, *mut u64) -> Status;
type FnVersion = unsafe extern "C" fn(*mut c_void) -> Status;

/// The loaded and initialised library. Never shut down or unloaded, as for
/// NVML: a meter's thread stuck in a call must return into mapped code.
pub struct AmdSmi {
    sockets: FnSockets,
    processors: FnProcessors,
    uuid: Option<FnUuid>,
    bdf: Option<FnU64>,
    enumeration: Option<FnStruct>,
    board: Option<FnStruct>,
    energy: Option<FnEnergy>,
    power: Option<FnStruct>,
    activity: Option<FnStruct>,
    /// `amdsmi_power_info_t` has `socket_power` (u64) first: library 25+.
    wide_power_info: Option<bool>,
}

/// One GPU (a GCD, or a partition) as AMD SMI lists it.
#[derive(Clone, Copy)]
pub struct Processor {
    handle: Handle,
    lib: &'static AmdSmi,
}

// SAFETY: a processor handle is an opaque pointer AMD SMI hands out for the
// life of the process; AMD SMI's calls are thread-safe (the library takes
// its own lock), and the handle is never dereferenced here.
unsafe impl Send for Processor {}
// SAFETY: as above; a shared `Processor` only passes its handle to the library.
unsafe impl Sync for Processor {}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Processor({:p})", self.handle)
    }
}

/// One reading of the energy accumulator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyCount {
    pub accumulator: u64,
    /// µJ per count.
    pub resolution_uj: f32,
}

impl AmdSmi {
    /// Loads the library at `path` (a bare name is searched as `dlopen`
    /// does) and initialises it for AMD GPUs.
    pub fn open(path: &Path) -> Result<AmdSmi, AmdSmiOpenError> {
        let shown = path.display().to_string();
        // SAFETY: loading runs the library's constructors; AMD SMI's are
        // those of a system library meant to be loaded into any process.
        let lib = unsafe { libloading::Library::new(path.as_os_str()) }.map_err(|e| {
            AmdSmiOpenError::Missing {
                path: shown.clone(),
                detail: e.to_string(),
            }
        })?;
        // The library stays loaded for the life of the process.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        fn sym<T: Copy>(lib: &'static libloading::Library, name: &[u8]) -> Option<T> {
            // SAFETY: each `T` is the function type amdsmi.h declares for
            // `name` (see the module documentation); the library is never
            // unloaded, so the pointer stays valid.
            unsafe { lib.get::<T>(name).ok().map(|s| *s) }
        }
        let need = |name: &'static str| AmdSmiOpenError::NotAmdSmi {
            path: shown.clone(),
            symbol: name,
        };
        let init: FnInit = sym(lib, b"amdsmi_init\0").ok_or_else(|| need("amdsmi_init"))?;
        let sockets: FnSockets = sym(lib, b"amdsmi_get_socket_handles\0")
            .ok_or_else(|| need("amdsmi_get_socket_handles"))?;
        let processors: FnProcessors = sym(lib, b"amdsmi_get_processor_handles\0")
            .ok_or_else(|| need("amdsmi_get_processor_handles"))?;
        // SAFETY: `init` is amdsmi_init(uint64_t init_flags).
        let status = unsafe { init(INIT_AMD_GPUS) };
        AmdSmiError::of(status).map_err(|error| AmdSmiOpenError::Init {
            path: shown.clone(),
            error,
        })?;
        let version: Option<FnVersion> = sym(lib, b"amdsmi_get_lib_version\0");
        let wide_power_info = version.and_then(|f| {
            let mut room = [0u8; ROOM];
            // SAFETY: amdsmi_get_lib_version(amdsmi_version_t *) writes at
            // most 24 bytes; the buffer is 4 KiB.
            let status = unsafe { f(room.as_mut_ptr().cast()) };
            AmdSmiError::of(status).ok()?;
            let first = u32::from_ne_bytes([room[0], room[1], room[2], room[3]]);
            power_info_is_wide(first)
        });
        Ok(AmdSmi {
            sockets,
            processors,
            uuid: sym(lib, b"amdsmi_get_gpu_device_uuid\0"),
            bdf: sym(lib, b"amdsmi_get_gpu_bdf_id\0"),
            enumeration: sym(lib, b"amdsmi_get_gpu_enumeration_info\0"),
            board: sym(lib, b"amdsmi_get_gpu_board_info\0"),
            energy: sym(lib, b"amdsmi_get_energy_count\0"),
            power: sym(lib, b"amdsmi_get_power_info\0"),
            activity: sym(lib, b"amdsmi_get_gpu_activity\0"),
            wide_power_info,
        })
    }

    /// Every GPU processor, socket by socket, in the library's order.
    pub fn processors(&'static self) -> Result<Vec<Processor>, AmdSmiError> {
        let sockets = list(|n, out| {
            // SAFETY: amdsmi_get_socket_handles(uint32_t *count, handle *out)
            // writes at most `*n` handles into `out`, which holds that many.
            unsafe { (self.sockets)(n, out) }
        })?;
        let mut all = Vec::new();
        for s in sockets {
            let procs = list(|n, out| {
                // SAFETY: as above, for one socket's processors.
                unsafe { (self.processors)(s, n, out) }
            })?;
            all.extend(
                procs
                    .into_iter()
                    .map(|handle| Processor { handle, lib: self }),
            );
        }
        Ok(all)
    }
}

/// Which `amdsmi_power_info_t` a library has, from the first `u32` of its
/// `amdsmi_version_t`: the year 24 for 24.x, the major version (25 and
/// later) since; `None` for anything else, 23.x included (another layout,
/// see the module documentation).
pub fn power_info_is_wide(first_version_field: u32) -> Option<bool> {
    match first_version_field {
        24 => Some(false),
        25..=99 => Some(true),
        _ => None,
    }
}

/// A handle list: the library writes up to `n` handles and says how many.
fn list(call: impl Fn(*mut u32, *mut Handle) -> Status) -> Result<Vec<Handle>, AmdSmiError> {
    let mut room = vec![std::ptr::null_mut::<c_void>(); MAX_HANDLES];
    let mut n = MAX_HANDLES as u32;
    AmdSmiError::of(call(&mut n, room.as_mut_ptr()))?;
    room.truncate((n as usize).min(MAX_HANDLES));
    Ok(room)
}

/// A NUL-terminated string at `bytes[at..at + max]`.
fn c_text(bytes: &[u8], at: usize, max: usize) -> String {
    let field = &bytes[at.min(bytes.len())..(at + max).min(bytes.len())];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).trim().to_string()
}

impl Processor {
    /// One struct into a zeroed buffer on the stack (no allocation: power
    /// is read every sample).
    fn read_struct(&self, f: Option<FnStruct>) -> Result<[u8; ROOM], AmdSmiError> {
        let f = f.ok_or(AmdSmiError::NoSymbol)?;
        let mut room = [0u8; ROOM];
        // SAFETY: `f` is one of amdsmi_get_{power_info,gpu_activity,
        // gpu_board_info,gpu_enumeration_info}(handle, T *), each writing one
        // struct of at most 1792 bytes into the 4 KiB room.
        let status = unsafe { f(self.handle, room.as_mut_ptr().cast()) };
        AmdSmiError::of(status)?;
        Ok(room)
    }

    /// The device's UUID as AMD SMI prints it.
    pub fn uuid(&self) -> Result<String, AmdSmiError> {
        let f = self.lib.uuid.ok_or(AmdSmiError::NoSymbol)?;
        let mut room = [0u8; UUID_ROOM];
        let mut len = UUID_ROOM as c_uint;
        // SAFETY: amdsmi_get_gpu_device_uuid(handle, unsigned *len, char *)
        // writes at most `len` bytes into the buffer of that size.
        let status = unsafe { f(self.handle, &mut len, room.as_mut_ptr().cast()) };
        AmdSmiError::of(status)?;
        let text = c_text(&room, 0, UUID_ROOM);
        if text.is_empty() {
            return Err(AmdSmiError::Implausible);
        }
        Ok(text)
    }

    /// The PCI address as `amdsmi_get_gpu_bdf_id` packs it: domain in bits
    /// 63..32, bus 15..8, device 7..3, function 2..0.
    pub fn bdf(&self) -> Result<u64, AmdSmiError> {
        let f = self.lib.bdf.ok_or(AmdSmiError::NoSymbol)?;
        let mut v = 0u64;
        // SAFETY: amdsmi_get_gpu_bdf_id(handle, uint64_t *) writes one u64.
        AmdSmiError::of(unsafe { f(self.handle, &mut v) })?;
        Ok(v)
    }

    /// The minor number of the GPU's `/dev/dri/renderD*` node, from
    /// `amdsmi_get_gpu_enumeration_info` (library 25+).
    pub fn render_minor(&self) -> Result<u32, AmdSmiError> {
        let room = self.read_struct(self.lib.enumeration)?;
        let minor = u32::from_ne_bytes([room[0], room[1], room[2], room[3]]);
        // 0 and UINT32_MAX: the library does not know it.
        if minor == 0 || minor == u32::MAX {
            return Err(AmdSmiError::NotSupported);
        }
        Ok(minor)
    }

    /// The board's serial number (`product_serial`): the GCDs of one package
    /// share it.
    pub fn board_serial(&self) -> Result<String, AmdSmiError> {
        // Only where the layout is known (24.x, 25+): 23.x's differs.
        self.lib.wide_power_info.ok_or(AmdSmiError::NotSupported)?;
        let room = self.read_struct(self.lib.board)?;
        let max = if self.lib.wide_power_info == Some(true) {
            256
        } else {
            32
        };
        let serial = c_text(&room[..], 256, max);
        if serial.is_empty() {
            return Err(AmdSmiError::NotSupported);
        }
        Ok(serial)
    }

    /// The energy accumulator.
    pub fn energy_count(&self) -> Result<EnergyCount, AmdSmiError> {
        let f = self.lib.energy.ok_or(AmdSmiError::NoSymbol)?;
        let (mut acc, mut res, mut ts) = (0u64, 0f32, 0u64);
        // SAFETY: amdsmi_get_energy_count(handle, uint64_t *, float *,
        // uint64_t *) writes one value through each pointer.
        let status = unsafe { f(self.handle, &mut acc, &mut res, &mut ts) };
        AmdSmiError::of(status)?;
        if !(res.is_finite() && res > 0.0) {
            return Err(AmdSmiError::Implausible);
        }
        Ok(EnergyCount {
            accumulator: acc,
            resolution_uj: res,
        })
    }

    /// `average_socket_power` in W.
    pub fn average_power(&self) -> Result<u32, AmdSmiError> {
        let wide = self.lib.wide_power_info.ok_or(AmdSmiError::NotSupported)?;
        let room = self.read_struct(self.lib.power)?;
        let at = if wide { 12 } else { 4 };
        let w = u32::from_ne_bytes([room[at], room[at + 1], room[at + 2], room[at + 3]]);
        if w == u32::MAX || (!wide && w == u32::from(u16::MAX)) {
            return Err(AmdSmiError::NotSupported);
        }
        Ok(w)
    }

    /// `gfx_activity` in %, the first member of `amdsmi_engine_usage_t` in
    /// every version.
    pub fn gfx_activity(&self) -> Result<u32, AmdSmiError> {
        let room = self.read_struct(self.lib.activity)?;
        let v = u32::from_ne_bytes([room[0], room[1], room[2], room[3]]);
        if v > 100 {
            return Err(AmdSmiError::NotSupported);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tells_the_power_layout() {
        for (first, want) in [
            (23, None),
            (24, Some(false)),
            (25, Some(true)),
            (26, Some(true)),
            (0, None),
            (6, None),
        ] {
            assert_eq!(power_info_is_wide(first), want, "{first}");
        }
    }

    #[test]
    fn c_text_stops_at_nul_and_field_end() {
        let mut b = [0u8; 300];
        b[256..259].copy_from_slice(b"abc");
        assert_eq!(c_text(&b, 256, 32), "abc");
        b[256..300].fill(b'x');
        assert_eq!(c_text(&b, 256, 32).len(), 32);
    }

    #[test]
    fn missing_library_is_an_open_error() {
        let e = AmdSmi::open(Path::new("/nonexistent/libamd_smi.so"))
            .err()
            .unwrap();
        assert!(matches!(e, AmdSmiOpenError::Missing { .. }), "{e:?}");
    }
}
