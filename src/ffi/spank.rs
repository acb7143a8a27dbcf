//! A safe handle over `spank_t` and Slurm's logging.

use std::ffi::{CStr, CString, c_char, c_int};
use std::marker::PhantomData;

use super::sys::{self, API, SlurmApi};
use crate::plugin::{Context, HasArg, Level, OptionSpec};

/// A SPANK call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpankError {
    /// The function does not exist in this process (or there is no Slurm).
    #[error("{0} is not available in this process")]
    Unavailable(&'static str),
    #[error("{func} failed: {text} ({code})")]
    Failed {
        func: &'static str,
        code: u32,
        text: String,
    },
    #[error("`{0}` contains a NUL byte")]
    Nul(String),
}

/// The handle Slurm passes to a callback; valid only during that callback,
/// hence the lifetime.
pub struct Spank<'a> {
    raw: sys::spank_t,
    _callback: PhantomData<&'a ()>,
}

fn api() -> Option<&'static SlurmApi> {
    API.as_ref()
}

fn error(func: &'static str, code: sys::spank_err_t) -> SpankError {
    let text = api()
        .and_then(|a| a.spank_strerror.as_ref().ok())
        .map(|f| {
            // SAFETY: spank_strerror takes any code and returns a pointer to a
            // static NUL-terminated string (or NULL, checked).
            let p = unsafe { f(code) };
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: non-NULL and NUL-terminated, see above.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        })
        .unwrap_or_default();
    SpankError::Failed { func, code, text }
}

fn cstring(s: &str) -> Result<CString, SpankError> {
    CString::new(s).map_err(|_| SpankError::Nul(s.to_string()))
}

impl<'a> Spank<'a> {
    /// Wraps the handle Slurm passed to a callback.
    ///
    /// # Safety
    /// `raw` must be the handle of the callback now running, and the value
    /// must not outlive it.
    pub(super) unsafe fn from_raw(raw: sys::spank_t) -> Spank<'a> {
        Spank {
            raw,
            _callback: PhantomData,
        }
    }

    /// Where the plugin is loaded; needs no handle.
    pub fn context() -> Context {
        let Some(f) = api().and_then(|a| a.spank_context.as_ref().ok()) else {
            return Context::Unknown;
        };
        // SAFETY: spank_context takes no arguments and only reads global state.
        match unsafe { f() } {
            sys::S_CTX_LOCAL => Context::Local,
            sys::S_CTX_REMOTE => Context::Remote,
            sys::S_CTX_ALLOCATOR => Context::Allocator,
            sys::S_CTX_SLURMD => Context::Slurmd,
            sys::S_CTX_JOB_SCRIPT => Context::JobScript,
            _ => Context::Unknown,
        }
    }

    /// A `uint32_t` item: S_JOB_ID, S_JOB_STEPID, S_JOB_NNODES, ...
    fn item_u32(&self, item: sys::spank_item_t) -> Result<u32, SpankError> {
        let f = api()
            .and_then(|a| a.spank_get_item.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_get_item"))?;
        let mut v: u32 = 0;
        // SAFETY: the callers pass only items whose single out-argument is a
        // uint32_t* (spank.h); `v` outlives the call.
        let rc = unsafe { f(self.raw, item, &mut v as *mut u32) };
        if rc == sys::ESPANK_SUCCESS {
            Ok(v)
        } else {
            Err(error("spank_get_item", rc))
        }
    }

    pub fn job_id(&self) -> Result<u32, SpankError> {
        self.item_u32(sys::S_JOB_ID)
    }

    pub fn step_id(&self) -> Result<u32, SpankError> {
        self.item_u32(sys::S_JOB_STEPID)
    }

    pub fn uid(&self) -> Result<u32, SpankError> {
        // uid_t is a u32 on Linux.
        self.item_u32(sys::S_JOB_UID)
    }

    pub fn gid(&self) -> Result<u32, SpankError> {
        self.item_u32(sys::S_JOB_GID)
    }

    pub fn node_count(&self) -> Result<u32, SpankError> {
        self.item_u32(sys::S_JOB_NNODES)
    }

    pub fn node_id(&self) -> Result<u32, SpankError> {
        self.item_u32(sys::S_JOB_NODEID)
    }

    /// CPUs of the job on this node (`S_JOB_NCPUS`, a `uint16_t`).
    pub fn ncpus(&self) -> Result<u32, SpankError> {
        let f = api()
            .and_then(|a| a.spank_get_item.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_get_item"))?;
        let mut v: u16 = 0;
        // SAFETY: S_JOB_NCPUS takes a single uint16_t* (spank.h); `v` outlives
        // the call.
        let rc = unsafe { f(self.raw, sys::S_JOB_NCPUS, &mut v as *mut u16) };
        if rc == sys::ESPANK_SUCCESS {
            Ok(u32::from(v))
        } else {
            Err(error("spank_get_item", rc))
        }
    }

    /// The job's cores on this node in Slurm's numbering, as a list like
    /// `0-3,8` (`S_JOB_ALLOC_CORES`, remote context); `Ok(None)` where
    /// Slurm has none (NULL or empty).
    pub fn alloc_cores(&self) -> Result<Option<String>, SpankError> {
        let f = api()
            .and_then(|a| a.spank_get_item.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_get_item"))?;
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: S_JOB_ALLOC_CORES takes a single `char **` (spank.h); Slurm
        // stores into `p` a pointer to a string the step owns (or NULL), and
        // `p` outlives the call.
        let rc = unsafe {
            f(
                self.raw,
                sys::S_JOB_ALLOC_CORES,
                &mut p as *mut *const c_char,
            )
        };
        if rc != sys::ESPANK_SUCCESS {
            return Err(error("spank_get_item", rc));
        }
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: non-NULL and NUL-terminated, owned by the step for at least
        // the duration of this callback; copied at once.
        let s = unsafe { CStr::from_ptr(p) }
            .to_string_lossy()
            .trim()
            .to_string();
        Ok((!s.is_empty()).then_some(s))
    }

    /// The pid of the task this callback is about (`S_TASK_PID`, task
    /// callbacks such as `slurm_spank_task_post_fork`).
    pub fn task_pid(&self) -> Result<u32, SpankError> {
        let f = api()
            .and_then(|a| a.spank_get_item.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_get_item"))?;
        let mut v: libc::pid_t = 0;
        // SAFETY: S_TASK_PID takes a single `pid_t *` (spank.h); `v` outlives
        // the call.
        let rc = unsafe { f(self.raw, sys::S_TASK_PID, &mut v as *mut libc::pid_t) };
        if rc == sys::ESPANK_SUCCESS {
            u32::try_from(v).map_err(|_| SpankError::Failed {
                func: "spank_get_item",
                code: 0,
                text: format!("S_TASK_PID gave {v}"),
            })
        } else {
            Err(error("spank_get_item", rc))
        }
    }

    /// A variable of the job's environment (remote context only); `None`
    /// when it is not set.
    pub fn getenv(&self, name: &str) -> Result<Option<String>, SpankError> {
        let f = api()
            .and_then(|a| a.spank_getenv.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_getenv"))?;
        let var = cstring(name)?;
        let mut len = 256usize;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: `buf` holds `len` writable bytes and Slurm writes at most
            // that many, NUL-terminated; `var` is NUL-terminated.
            let rc = unsafe {
                f(
                    self.raw,
                    var.as_ptr(),
                    buf.as_mut_ptr().cast::<c_char>(),
                    len as c_int,
                )
            };
            match rc {
                sys::ESPANK_SUCCESS => {
                    let s = CStr::from_bytes_until_nul(&buf)
                        .map(|c| c.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    return Ok(Some(s));
                }
                sys::ESPANK_ENV_NOEXIST => return Ok(None),
                sys::ESPANK_NOSPACE if len < (1 << 20) => len *= 4,
                rc => return Err(error("spank_getenv", rc)),
            }
        }
    }

    /// Sets a variable in the job's environment (remote context only).
    pub fn setenv(&self, name: &str, value: &str, overwrite: bool) -> Result<(), SpankError> {
        let f = api()
            .and_then(|a| a.spank_setenv.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_setenv"))?;
        let (var, val) = (cstring(name)?, cstring(value)?);
        // SAFETY: both strings are NUL-terminated and live across the call;
        // Slurm copies them.
        let rc = unsafe { f(self.raw, var.as_ptr(), val.as_ptr(), c_int::from(overwrite)) };
        if rc == sys::ESPANK_SUCCESS {
            Ok(())
        } else {
            Err(error("spank_setenv", rc))
        }
    }

    /// Sets `SPANK_<name>` for the Prolog and Epilog (allocator/local context).
    pub fn job_control_setenv(
        &self,
        name: &str,
        value: &str,
        overwrite: bool,
    ) -> Result<(), SpankError> {
        let f = api()
            .and_then(|a| a.spank_job_control_setenv.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_job_control_setenv"))?;
        let (var, val) = (cstring(name)?, cstring(value)?);
        // SAFETY: as in setenv: NUL-terminated, live, copied by Slurm.
        let rc = unsafe { f(self.raw, var.as_ptr(), val.as_ptr(), c_int::from(overwrite)) };
        if rc == sys::ESPANK_SUCCESS {
            Ok(())
        } else {
            Err(error("spank_job_control_setenv", rc))
        }
    }

    /// Registers an option (only valid inside `slurm_spank_init`); Slurm
    /// calls `cb` with its value.
    pub fn register_option(
        &self,
        spec: &OptionSpec,
        cb: sys::spank_opt_cb_f,
    ) -> Result<(), SpankError> {
        let f = api()
            .and_then(|a| a.spank_option_register.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_option_register"))?;
        // Slurm keeps the pointer to the struct and its strings for the life
        // of the process, so they are leaked on purpose: a few bytes, once
        // per option and process.
        let opt = Box::leak(Box::new(sys::spank_option {
            name: cstring(spec.name)?.into_raw(),
            arginfo: cstring(spec.arginfo)?.into_raw(),
            usage: cstring(spec.usage)?.into_raw(),
            has_arg: spec.has_arg as c_int,
            val: spec.val,
            cb,
        }));
        // SAFETY: `opt` points to a valid, never-freed spank_option whose
        // strings are NUL-terminated and never freed.
        let rc = unsafe { f(self.raw, opt) };
        if rc == sys::ESPANK_SUCCESS {
            Ok(())
        } else {
            Err(error("spank_option_register", rc))
        }
    }

    /// The user's value for an option: `Ok(None)` when not given,
    /// `Ok(Some(None))` when given without a value.
    pub fn getopt(&self, spec: &OptionSpec) -> Result<Option<Option<String>>, SpankError> {
        let f = api()
            .and_then(|a| a.spank_option_getopt.as_ref().ok())
            .ok_or(SpankError::Unavailable("spank_option_getopt"))?;
        let name = cstring(spec.name)?;
        let mut opt = sys::spank_option {
            name: name.as_ptr().cast_mut(),
            arginfo: std::ptr::null_mut(),
            usage: std::ptr::null_mut(),
            has_arg: spec.has_arg as c_int,
            val: spec.val,
            cb: None,
        };
        let mut optarg: *mut c_char = std::ptr::null_mut();
        // SAFETY: Slurm only reads `opt` (looked up by name) during the call;
        // `name` outlives it. It stores into `optarg` a pointer to a string it
        // owns, or leaves it NULL.
        let rc = unsafe { f(self.raw, &mut opt, &mut optarg) };
        match rc {
            sys::ESPANK_SUCCESS if optarg.is_null() || spec.has_arg == HasArg::No => Ok(Some(None)),
            sys::ESPANK_SUCCESS => {
                // SAFETY: non-NULL, NUL-terminated and owned by Slurm for the
                // duration of the callback; copied at once.
                let v = unsafe { CStr::from_ptr(optarg) }
                    .to_string_lossy()
                    .into_owned();
                Ok(Some(Some(v)))
            }
            sys::ESPANK_ERROR => Ok(None),
            rc => Err(error("spank_option_getopt", rc)),
        }
    }
}

/// Logs one line through Slurm (slurmd's log in slurmstepd, stderr in sbatch
/// and srun), prefixed `carbontrack: `; to stderr where there is no Slurm.
pub fn log(level: Level, msg: &str) {
    let line = format!("carbontrack: {msg}");
    let f = api().and_then(|a| {
        match level {
            Level::Error => &a.slurm_error,
            Level::Info => &a.slurm_info,
            Level::Verbose => &a.slurm_verbose,
            Level::Debug => &a.slurm_debug,
        }
        .as_ref()
        .ok()
    });
    match f {
        Some(f) => {
            let c = CString::new(line.replace('\0', " ")).unwrap_or_default();
            // SAFETY: a constant "%s" format with exactly one NUL-terminated
            // string argument that lives across the call.
            unsafe { f(c"%s".as_ptr(), c.as_ptr()) };
        }
        None => eprintln!("{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary has no libslurm: every Slurm function is absent, and
    /// the wrapper says so instead of failing to link or crashing.
    #[test]
    fn without_slurm_everything_degrades() {
        let api = API.as_ref().expect("dlopen(NULL) always works");
        assert!(api.spank_get_item.is_err());
        assert!(api.slurm_error.is_err());
        assert_eq!(Spank::context(), Context::Unknown);
        // SAFETY: never dereferenced: every call finds its function absent first.
        let spank = unsafe { Spank::from_raw(std::ptr::null_mut()) };
        assert_eq!(
            spank.job_id(),
            Err(SpankError::Unavailable("spank_get_item"))
        );
        assert_eq!(
            spank.getenv("HOME"),
            Err(SpankError::Unavailable("spank_getenv"))
        );
        // Falls back to stderr.
        log(Level::Error, "a line for stderr");
    }
}
