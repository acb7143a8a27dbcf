//! The symbols Slurm looks for in a SPANK plugin, and the callback shims.
//!
//! Each shim turns the C arguments into safe values, runs the callback's logic
//! in [`crate::plugin::Plugin`] under `catch_unwind`, logs a panic as one error
//! line, and returns success whatever happened: the plugin never fails a job.

#![allow(non_upper_case_globals)]

use std::any::Any;
use std::ffi::{CStr, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use super::spank::{Spank, log};
use super::sys;
use crate::plugin::{Callback, Context, Host, Level, OptionSpec, Plugin, Step};

/// Slurm reads the bytes of this symbol, so it is an array, not a pointer.
#[unsafe(no_mangle)]
pub static plugin_name: [u8; 12] = *b"carbontrack\0";

#[unsafe(no_mangle)]
pub static plugin_type: [u8; 6] = *b"spank\0";

/// The version of the headers built against; Slurm refuses the plugin when
/// its major.minor differs from the running Slurm's.
#[unsafe(no_mangle)]
pub static plugin_version: u32 = sys::SLURM_VERSION_NUMBER;

/// The plugin's state in this process.
static PLUGIN: Mutex<Plugin> = Mutex::new(Plugin::new());

/// Where the panic hook leaves its description for the shim to log.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn plugin() -> MutexGuard<'static, Plugin> {
    PLUGIN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Replaces the default hook (which prints to the user's terminal in sbatch)
/// with one that keeps the message and place for the shim's single log line.
/// The hook is this library's own: the host processes have no other Rust.
fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let text = format!("{}{at}", payload_text(info.payload()));
            *LAST_PANIC.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
        }));
    });
}

fn payload_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_string()
    }
}

/// Runs `f`, turning a panic into one error line.
fn guarded<R>(cb: Callback, fallback: R, f: impl FnOnce() -> R) -> R {
    quiet_panics();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = LAST_PANIC
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .unwrap_or_else(|| payload_text(payload.as_ref()));
            log(
                Level::Error,
                &format!(
                    "{} panicked ({what}); ignored, the job goes on",
                    cb.symbol()
                ),
            );
            fallback
        }
    }
}

/// The plugstack.conf arguments.
///
/// # Safety
/// `argv` must hold `argc` NUL-terminated strings (or be NULL).
unsafe fn args(argc: c_int, argv: *mut *mut c_char) -> Vec<String> {
    if argv.is_null() {
        return Vec::new();
    }
    (0..usize::try_from(argc).unwrap_or(0))
        .filter_map(|i| {
            // SAFETY: i < argc, and Slurm passes argc valid entries.
            let p = unsafe { *argv.add(i) };
            // SAFETY: non-NULL entries are NUL-terminated C strings.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// Exported as `slurm_spank_init`.
///
/// # Safety
/// Called by Slurm with its handle and the plugstack arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_init(
    sp: sys::spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    guarded(Callback::Init, 0, || {
        // SAFETY: Slurm's argument vector and handle for this callback.
        let (args, spank) = unsafe { (args(argc, argv), Spank::from_raw(sp)) };
        plugin().init(&spank, &args);
        0
    })
}

/// Exported as `slurm_spank_init_post_opt`.
///
/// # Safety
/// Called by Slurm with its handle and the plugstack arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_init_post_opt(
    sp: sys::spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    guarded(Callback::InitPostOpt, 0, || {
        // SAFETY: Slurm's argument vector and handle for this callback.
        let (args, spank) = unsafe { (args(argc, argv), Spank::from_raw(sp)) };
        plugin().init_post_opt(&spank, &args);
        0
    })
}

/// Exported as `slurm_spank_job_prolog`.
///
/// # Safety
/// Called by Slurm with its handle and the plugstack arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_job_prolog(
    sp: sys::spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    guarded(Callback::JobProlog, 0, || {
        // SAFETY: Slurm's argument vector and handle for this callback.
        let (args, spank) = unsafe { (args(argc, argv), Spank::from_raw(sp)) };
        plugin().job_prolog(&spank, &args);
        0
    })
}

/// Exported as `slurm_spank_task_post_fork`: in slurmstepd's own process,
/// once per task, after the task (and so the job's cgroup) exists.
///
/// # Safety
/// Called by Slurm with its handle and the plugstack arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_task_post_fork(
    sp: sys::spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    guarded(Callback::TaskPostFork, 0, || {
        // SAFETY: Slurm's argument vector and handle for this callback.
        let (args, spank) = unsafe { (args(argc, argv), Spank::from_raw(sp)) };
        plugin().task_post_fork(&spank, &args);
        0
    })
}

/// Exported as `slurm_spank_exit`.
///
/// # Safety
/// Called by Slurm with its handle and the plugstack arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_exit(
    sp: sys::spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    guarded(Callback::Exit, 0, || {
        // SAFETY: Slurm's argument vector and handle for this callback.
        let (args, spank) = unsafe { (args(argc, argv), Spank::from_raw(sp)) };
        plugin().exit(&spank, &args);
        0
    })
}

/// The callback registered with every option. A bad value is refused (non-zero)
/// where the user typed it (sbatch, srun, salloc), so they learn at submit
/// time; in slurmstepd it is only logged, so a job is never failed.
///
/// # Safety
/// Called by Slurm with a NUL-terminated `optarg` or NULL.
pub(super) unsafe extern "C" fn option_callback(
    val: c_int,
    optarg: *const c_char,
    remote: c_int,
) -> c_int {
    guarded(Callback::Option, 0, || {
        let value = (!optarg.is_null()).then(|| {
            // SAFETY: non-NULL optarg is a NUL-terminated string owned by Slurm.
            unsafe { CStr::from_ptr(optarg) }
                .to_string_lossy()
                .into_owned()
        });
        // try_lock: should Slurm ever call this from inside one of our
        // callbacks, validate without the state rather than deadlock.
        let result = match PLUGIN.try_lock() {
            Ok(mut p) => p.option_given(val, value.as_deref()),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().option_given(val, value.as_deref())
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                Plugin::new().option_given(val, value.as_deref())
            }
        };
        match result {
            Ok(()) => 0,
            Err(e) => {
                log(Level::Error, &e);
                let at_submit =
                    remote == 0 && matches!(Spank::context(), Context::Allocator | Context::Local);
                if at_submit { -1 } else { 0 }
            }
        }
    })
}

/// The plugin's view of Slurm through a callback's handle. Here, beside the
/// callbacks, so that the handle's module needs nothing of this one.
impl Host for Spank<'_> {
    fn context(&self) -> Context {
        Spank::context()
    }
    fn slurm_conf(&self) -> Option<crate::ffi::slurm_conf::SlurmConf> {
        crate::ffi::slurm_conf::current()
    }
    fn job_id(&self) -> Option<u32> {
        Spank::job_id(self).ok()
    }
    fn step(&self) -> Option<Step> {
        self.step_id().ok().map(Step::from_raw)
    }
    fn register_option(&self, spec: &OptionSpec) -> Result<(), String> {
        Spank::register_option(self, spec, Some(option_callback)).map_err(|e| e.to_string())
    }
    fn option_value(&self, spec: &OptionSpec) -> Result<Option<Option<String>>, String> {
        self.getopt(spec).map_err(|e| e.to_string())
    }
    fn log(&self, level: Level, msg: &str) {
        log(level, msg);
    }
    fn uid(&self) -> Option<u32> {
        Spank::uid(self).ok()
    }
    fn gid(&self) -> Option<u32> {
        Spank::gid(self).ok()
    }
    fn node_count(&self) -> Option<u32> {
        Spank::node_count(self).ok()
    }
    fn node_id(&self) -> Option<u32> {
        Spank::node_id(self).ok()
    }
    fn ncpus(&self) -> Option<u32> {
        Spank::ncpus(self).ok()
    }
    fn alloc_cores(&self) -> Option<String> {
        Spank::alloc_cores(self).ok().flatten()
    }
    fn task_pid(&self) -> Option<u32> {
        Spank::task_pid(self).ok()
    }
    fn env(&self, name: &str) -> Option<String> {
        match Spank::context() {
            // In a step, the job's environment is Slurm's copy, not ours.
            Context::Remote => self.getenv(name).ok().flatten(),
            // The prolog's environment is the process's own (slurm-facts.md).
            _ => std::env::var(name).ok(),
        }
    }
    fn set_job_env(&self, name: &str, value: &str) -> Result<(), String> {
        self.setenv(name, value, true).map_err(|e| e.to_string())
    }
}
