//! What the SPANK plugin does in each callback. Safe code only: the C entry
//! points in [`crate::ffi`] catch panics and hand over a [`Host`], through
//! which this module talks to Slurm. Tests drive the same code with a fake host.
//!
//! One [`Plugin`] lives per loaded copy of the plugin (one per sbatch, srun,
//! salloc or slurmstepd process); it keeps what a later callback of the same
//! process needs.

pub mod options;
mod tracking;

use std::fmt;

use crate::config::{Config, ConfigError};
pub use crate::ffi::slurm_conf::SlurmConf;
pub use options::{HasArg, JobChoice, OptionSpec, UserOption};

/// Where the plugin has been loaded (`spank_context()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// sbatch or salloc.
    Allocator,
    /// srun.
    Local,
    /// slurmstepd: the extern, batch, interactive and srun steps.
    Remote,
    /// slurmd itself.
    Slurmd,
    /// The `slurmstepd spank prolog|epilog` run by slurmd for each job.
    JobScript,
    /// Slurm could not say.
    Unknown,
}

impl Context {
    pub fn name(self) -> &'static str {
        match self {
            Context::Allocator => "allocator",
            Context::Local => "local",
            Context::Remote => "remote",
            Context::Slurmd => "slurmd",
            Context::JobScript => "job_script",
            Context::Unknown => "unknown",
        }
    }
}

/// A job step, as `S_JOB_STEPID` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The batch script.
    Batch,
    /// The extern step that holds the allocation (`PrologFlags=Contain`).
    Extern,
    Interactive,
    Pending,
    /// An srun step: 0, 1, ...
    Numbered(u32),
}

impl Step {
    pub fn from_raw(id: u32) -> Step {
        use crate::ffi::sys;
        match id {
            sys::SLURM_BATCH_SCRIPT => Step::Batch,
            sys::SLURM_EXTERN_CONT => Step::Extern,
            sys::SLURM_INTERACTIVE_STEP => Step::Interactive,
            sys::SLURM_PENDING_STEP => Step::Pending,
            n => Step::Numbered(n),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Batch => f.write_str("batch"),
            Step::Extern => f.write_str("extern"),
            Step::Interactive => f.write_str("interactive"),
            Step::Pending => f.write_str("pending"),
            Step::Numbered(n) => write!(f, "{n}"),
        }
    }
}

/// The exported SPANK callbacks; `name` is what `_test_panic=` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    Init,
    InitPostOpt,
    JobProlog,
    TaskPostFork,
    Exit,
    /// The callback Slurm calls with each option value.
    Option,
}

impl Callback {
    pub fn name(self) -> &'static str {
        match self {
            Callback::Init => "init",
            Callback::InitPostOpt => "init_post_opt",
            Callback::JobProlog => "job_prolog",
            Callback::TaskPostFork => "task_post_fork",
            Callback::Exit => "exit",
            Callback::Option => "option",
        }
    }

    /// The C symbol, for log lines an admin can grep the source for.
    pub fn symbol(self) -> &'static str {
        match self {
            Callback::Init => "slurm_spank_init",
            Callback::InitPostOpt => "slurm_spank_init_post_opt",
            Callback::JobProlog => "slurm_spank_job_prolog",
            Callback::TaskPostFork => "slurm_spank_task_post_fork",
            Callback::Exit => "slurm_spank_exit",
            Callback::Option => "the option callback",
        }
    }
}

/// Log levels; Slurm's own, each line prefixed `carbontrack: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Info,
    Verbose,
    Debug,
}

/// What the plugin needs from Slurm during one callback.
pub trait Host {
    fn context(&self) -> Context;
    /// `None` where Slurm has no job (sbatch before submission) or refuses.
    fn job_id(&self) -> Option<u32>;
    fn step(&self) -> Option<Step>;
    fn register_option(&self, spec: &OptionSpec) -> Result<(), String>;
    /// `Ok(None)`: not given; `Ok(Some(None))`: given without a value.
    fn option_value(&self, spec: &OptionSpec) -> Result<Option<Option<String>>, String>;
    fn log(&self, level: Level, msg: &str);
    /// The job's user and primary group (`S_JOB_UID`, `S_JOB_GID`).
    fn uid(&self) -> Option<u32>;
    fn gid(&self) -> Option<u32>;
    /// Nodes of the job and this node's rank among them.
    fn node_count(&self) -> Option<u32>;
    fn node_id(&self) -> Option<u32>;
    /// The job's CPUs on this node.
    fn ncpus(&self) -> Option<u32>;
    /// The job's cores on this node in Slurm's numbering (`0-3,8`), where
    /// Slurm says (`S_JOB_ALLOC_CORES`, in a step).
    fn alloc_cores(&self) -> Option<String> {
        None
    }
    /// The task a task callback is about (`S_TASK_PID`).
    fn task_pid(&self) -> Option<u32> {
        None
    }
    /// An environment variable: the job's in a step, the process's in the
    /// prolog (where Slurm puts the job's details).
    fn env(&self, name: &str) -> Option<String>;
    /// Sets a variable in the environment of the step's tasks.
    fn set_job_env(&self, name: &str, value: &str) -> Result<(), String>;
    /// The running Slurm's configuration, where the plugin can read it.
    fn slurm_conf(&self) -> Option<SlurmConf> {
        None
    }
    /// The process this callback runs in.
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// The state of one loaded copy of the plugin.
#[derive(Debug, Default)]
pub struct Plugin {
    /// Whether this process has read the plugstack arguments yet.
    configured: bool,
    /// `None` before that, or when the arguments were refused: the plugin is
    /// then inert for this job.
    config: Option<Config>,
    /// What the option callback saw in this process (sbatch, srun, slurmstepd).
    choice: JobChoice,
    /// Whether this step has decided whether it samples.
    sampling_decided: bool,
    /// The job this step samples on this node, if it does.
    tracking: Option<tracking::Tracking>,
    /// The process that read the plugstack arguments: the step's slurmstepd.
    /// A callback elsewhere runs in a child Slurm made for it.
    loaded_pid: Option<u32>,
}

impl Plugin {
    pub const fn new() -> Plugin {
        Plugin {
            configured: false,
            config: None,
            choice: JobChoice {
                track: None,
                epochs: None,
                budget: None,
            },
            sampling_decided: false,
            tracking: None,
            loaded_pid: None,
        }
    }

    /// The configuration, when `init` accepted it.
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// What the job asked for, as far as this process has seen.
    pub fn choice(&self) -> JobChoice {
        self.choice
    }

    /// `slurm_spank_init`: registers the options in every context (a static
    /// options table is ignored by sbatch) and reads the plugstack arguments.
    pub fn init(&mut self, host: &dyn Host, args: &[String]) {
        let ctx = host.context();
        // Options first: even with a bad config, `#SBATCH --carbon-track`
        // must not turn into "unrecognized option" and a refused job.
        for opt in UserOption::ALL {
            if let Err(e) = host.register_option(&opt.spec()) {
                host.log(
                    Level::Error,
                    &format!(
                        "cannot register --{} in {} context: {e}",
                        opt.spec().name,
                        ctx.name()
                    ),
                );
            }
        }
        self.configure(host, args);
        self.injected_panic(Callback::Init);
    }

    /// Reads the plugstack arguments once per process. Every callback starts
    /// here because not every process calls `slurm_spank_init`: the per-job
    /// `slurmstepd spank prolog` calls only `slurm_spank_job_prolog`.
    fn configure(&mut self, host: &dyn Host, args: &[String]) {
        if self.configured {
            return;
        }
        self.configured = true;
        self.loaded_pid = Some(host.pid());
        self.config = match Config::from_args(args) {
            Ok(c) => Some(c),
            Err(e) => {
                report_config_error(host, &e);
                None
            }
        };
    }

    /// `slurm_spank_init_post_opt`: the option callbacks have run.
    pub fn init_post_opt(&mut self, host: &dyn Host, args: &[String]) {
        self.configure(host, args);
        let Some(config) = &self.config else { return };
        if host.context() == Context::Remote {
            if !matches!(host.step(), Some(Step::Extern) | None) {
                tracking::export_epoch_file(host, config);
            }
            host.log(
                Level::Verbose,
                &format!(
                    "job {} step {}: loaded, mode {}, {}",
                    fmt_opt(host.job_id()),
                    host.step().map_or("?".to_string(), |s| s.to_string()),
                    mode_name(config),
                    self.choice.describe()
                ),
            );
        }
        self.injected_panic(Callback::InitPostOpt);
    }

    /// `slurm_spank_job_prolog` (root, every node of the job, before the
    /// extern step): the one place where the job's options are readable and
    /// the extern step can still be told about them.
    pub fn job_prolog(&mut self, host: &dyn Host, args: &[String]) {
        self.configure(host, args);
        let Some(config) = &self.config else { return };
        let choice = read_choice(host);
        let tracked = config.mode.tracks(choice.track);
        host.log(
            Level::Info,
            &format!(
                "job {}: {} ({}, mode {})",
                fmt_opt(host.job_id()),
                if tracked { "tracked" } else { "not tracked" },
                choice.describe(),
                mode_name(config)
            ),
        );
        if tracked && config.accounting_field == "Comment" {
            host.log(Level::Info, crate::config::COMMENT_WARNING);
        }
        if tracked && let Err(e) = tracking::write_handoff(host, config, choice) {
            host.log(
                Level::Error,
                &format!(
                    "job {}: cannot hand the job over to its steps: {e}; not measured on this node",
                    fmt_opt(host.job_id())
                ),
            );
        }
        if !tracked && let Err(e) = tracking::forget_earlier_job(host, config) {
            host.log(
                Level::Error,
                &format!(
                    "job {}: cannot clear an earlier job's state of the same id: {e}; its steps may measure it",
                    fmt_opt(host.job_id())
                ),
            );
        }
        self.choice = choice;
        self.injected_panic(Callback::JobProlog);
    }

    /// `slurm_spank_task_post_fork` (slurmstepd, root, once per task): the
    /// job's cgroup exists now, so the first task of a step decides whether
    /// this step samples the job on this node.
    pub fn task_post_fork(&mut self, host: &dyn Host, args: &[String]) {
        self.configure(host, args);
        self.injected_panic(Callback::TaskPostFork);
        if self.sampling_decided || host.context() != Context::Remote {
            return;
        }
        self.sampling_decided = true;
        let Some(config) = &self.config else { return };
        let here = tracking::Where {
            slurm: host.slurm_conf().unwrap_or_default(),
            in_child: self.loaded_pid.is_some_and(|p| p != host.pid()),
            choice: self.choice,
        };
        self.tracking = tracking::start(host, config, &here);
    }

    /// `slurm_spank_exit`: the last callback before Slurm unloads the plugin.
    pub fn exit(&mut self, host: &dyn Host, args: &[String]) {
        self.configure(host, args);
        // Stop and join the sampler here: Slurm unloads the plugin right after.
        if let Some(t) = self.tracking.take() {
            t.finish(host);
        }
        let panic_here = self.wants_panic(Callback::Exit);
        *self = Plugin::new();
        if panic_here {
            panic!("carbontrack test knob: injected panic in exit");
        }
    }

    /// The option callback: validates a value the user gave. An error refuses
    /// the option at submit time (sbatch, srun, salloc); in slurmstepd the
    /// caller logs it and lets the job run.
    pub fn option_given(&mut self, val: i32, value: Option<&str>) -> Result<(), String> {
        let opt = UserOption::from_val(val).ok_or_else(|| format!("unknown option value {val}"))?;
        self.choice.set(opt, value)?;
        self.injected_panic(Callback::Option);
        Ok(())
    }

    fn wants_panic(&self, cb: Callback) -> bool {
        self.config
            .as_ref()
            .and_then(|c| c.test_panic.as_deref())
            .is_some_and(|name| name == cb.name())
    }

    /// The test-only knob `_test_panic=<callback>`: proves that a panic never
    /// fails a job.
    fn injected_panic(&self, cb: Callback) {
        if self.wants_panic(cb) {
            panic!("carbontrack test knob: injected panic in {}", cb.name());
        }
    }
}

/// A refused plugstack argument is reported once per job and node: by the
/// prolog, which slurmd runs once per job on each node, into slurmd's log.
/// Elsewhere (every step, every sbatch) it is logged quietly.
fn report_config_error(host: &dyn Host, e: &ConfigError) {
    let level = match host.context() {
        Context::JobScript => Level::Error,
        Context::Allocator | Context::Local => Level::Verbose,
        _ => Level::Debug,
    };
    host.log(
        level,
        &format!("plugstack.conf: {e}; carbontrack is off for this job"),
    );
}

fn read_choice(host: &dyn Host) -> JobChoice {
    let mut choice = JobChoice::default();
    for opt in UserOption::ALL {
        match host.option_value(&opt.spec()) {
            Ok(None) => {}
            Ok(Some(value)) => {
                if let Err(e) = choice.set(opt, value.as_deref()) {
                    host.log(
                        Level::Error,
                        &format!("ignoring --{}: {e}", opt.spec().name),
                    );
                }
            }
            Err(e) => host.log(
                Level::Error,
                &format!("cannot read --{}: {e}", opt.spec().name),
            ),
        }
    }
    choice
}

fn mode_name(c: &Config) -> &'static str {
    match c.mode {
        crate::config::Mode::OptIn => "optin",
        crate::config::Mode::Always => "always",
        crate::config::Mode::Off => "off",
    }
}

fn fmt_opt(v: Option<u32>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests;
