//! Tracking a job on one node: the prolog's hand-off, one sampler per job per
//! node, and the footprint at the end.
//!
//! With `PrologFlags=Contain` the extern step samples, for the whole
//! allocation. Without it, the batch step and srun steps sample instead: the
//! first to take the job's lock in the spool samples, the others leave it be,
//! and each segment a step leaves is merged into the node's footprint, so
//! nothing is counted twice. The lock is the kernel's (`flock`), released
//! however its holder ends.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use crate::carbon::budget::{STATE_FILE_ENV, state_file_name};
use crate::carbon::summary::{notes, render_final_from_rows};
use crate::config::{Config, ReportTarget};
use crate::epochs::{EPOCH_FILE_ENV, epoch_file};
use crate::ffi::identity::{FsIdentity, user_groups};
use crate::footprint::{Row, merge_segments, read_csv, write_csv};
use crate::host::hostname;
use crate::job::{JobInfo, cpus_per_node};
use crate::measure::amd_gpus::AmdGpuHints;
use crate::measure::cores::node_layout;
use crate::measure::cpuset::{self, CpuSet, Evidence};
use crate::measure::estimate::CpuTimeSource;
use crate::measure::gpus::GpuHints;
use crate::measure::sampler::SamplerCpu;
use crate::plugin::options::JobChoice;
use crate::plugin::{Host, Level, SlurmConf, Step};
use crate::prometheus::{self, Exporter};
use crate::report::delivery::{USER_FILES_RECORD, UserFiles};
use crate::spool::Spool;
use crate::tracker::{Output, Plan, Tracker, svg_name};
use crate::userio::Delivery;

/// Where Slurm reads its configuration when `SLURM_CONF` is not set.
const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// `slurm_spank_job_prolog` for a tracked job: what the sampling step will
/// need, left root-owned in the spool. Returns the record's path.
pub(super) fn write_handoff(
    host: &dyn Host,
    cfg: &Config,
    choice: JobChoice,
) -> Result<PathBuf, String> {
    let env = |name: &str| host.env(name).filter(|v| !v.is_empty());
    let job_id = host.job_id().ok_or("no job id")?;
    let number = |name: &str| env(name).and_then(|v| v.parse::<u32>().ok());
    let uid = host
        .uid()
        .or_else(|| number("SLURM_JOB_UID"))
        .ok_or("no job uid")?;
    let gid = host
        .gid()
        .or_else(|| number("SLURM_JOB_GID"))
        .ok_or("no job gid")?;
    let user = env("SLURM_JOB_USER").unwrap_or_default();
    // Without the list, files are still written as the user, with fewer groups.
    let groups = user_groups(&user, gid).unwrap_or_else(|_| vec![gid]);
    let node = env("SLURMD_NODENAME").unwrap_or_else(hostname);
    // The prolog has the job's environment, slurm.conf's path among it; the
    // sampling step (the extern one) has neither.
    let conf = env("SLURM_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SLURM_CONF));
    let layout = node_layout(&conf, &node).map_err(|e| e.to_string());
    let info = JobInfo {
        job_id,
        uid,
        gid,
        groups,
        user,
        account: env("SLURM_JOB_ACCOUNT").unwrap_or_default(),
        partition: env("SLURM_JOB_PARTITION").unwrap_or_default(),
        node,
        work_dir: env("SLURM_JOB_WORK_DIR").map(PathBuf::from),
        slurm_gpus: env("SLURM_JOB_GPUS"),
        cuda_visible: env("CUDA_VISIBLE_DEVICES"),
        rocr_visible: env("ROCR_VISIBLE_DEVICES").or_else(|| env("HIP_VISIBLE_DEVICES")),
        epochs: choice.epochs,
        budget: choice.budget,
        layout,
        cpus_on_node: env("SLURM_JOB_CPUS_PER_NODE").and_then(|v| cpus_per_node(&v)),
    };
    let spool = Spool::open(&cfg.spool).map_err(|e| e.to_string())?;
    // An earlier job's footprint under this id would be merged in as a
    // segment: it is moved aside, to be delivered as its own run.
    retire_earlier_job(host, &spool, job_id)?;
    spool.write_handoff(&info).map_err(|e| e.to_string())
}

/// `slurm_spank_job_prolog` for a job that is not tracked: drops whatever an
/// earlier job with the same id left in the spool. Job ids come back (a
/// cluster whose slurmctld state was reset starts again at 1; ids wrap at
/// MaxJobId), and a stale hand-off would make this job's steps sample it.
pub(super) fn forget_earlier_job(host: &dyn Host, cfg: &Config) -> Result<(), String> {
    let Some(job_id) = host.job_id() else {
        return Ok(());
    };
    // No spool yet: nothing to forget, and no reason to create one.
    if std::fs::symlink_metadata(&cfg.spool).is_err() {
        return Ok(());
    }
    let spool = Spool::open(&cfg.spool).map_err(|e| e.to_string())?;
    retire_earlier_job(host, &spool, job_id)
}

/// Clears this node's spool for job `job_id`: what an earlier job with the
/// same id left is dropped, or, when it holds a footprint its Epilog never
/// delivered, moved to `stale/` for the next Epilog or flush (one log line).
fn retire_earlier_job(host: &dyn Host, spool: &Spool, job_id: u32) -> Result<(), String> {
    if let Some(to) = spool.retire_job(job_id).map_err(|e| e.to_string())? {
        host.log(
            Level::Info,
            &format!(
                "job {job_id}: an earlier job with this id left an undelivered footprint here; moved to {} for the next Epilog",
                to.display()
            ),
        );
    }
    Ok(())
}

/// In every step but the extern one, before its tasks start: tell the job
/// where to mark epochs, if the job is tracked.
pub(super) fn export_epoch_file(host: &dyn Host, cfg: &Config) {
    let Some(job_id) = host.job_id() else { return };
    let Ok(spool) = Spool::open(&cfg.spool) else {
        return;
    };
    if let Ok(Some(job)) = spool.read_handoff(job_id)
        && let Some(dir) = &job.work_dir
    {
        let path = epoch_file(dir, &job_id.to_string());
        if let Err(e) = host.set_job_env(EPOCH_FILE_ENV, &path.to_string_lossy()) {
            host.log(
                Level::Error,
                &format!("job {job_id}: cannot set {EPOCH_FILE_ENV}: {e}"),
            );
        }
        // The state file is written where the live summary is: a job on one
        // node. On several, `carbontrack status --json` says there is none
        // rather than read a file nobody writes.
        if job.budget.is_some() && host.node_count().unwrap_or(1) <= 1 {
            let state = dir.join(state_file_name(&job_id.to_string()));
            if let Err(e) = host.set_job_env(STATE_FILE_ENV, &state.to_string_lossy()) {
                host.log(
                    Level::Error,
                    &format!("job {job_id}: cannot set {STATE_FILE_ENV}: {e}"),
                );
            }
        }
    }
}

/// A job being sampled by this step on this node.
pub(super) struct Tracking {
    tracker: Tracker,
    job: JobInfo,
    spool: Spool,
    config: Config,
    /// Whether this node writes the user's files (a job on one node); on
    /// several nodes the epilog joins the nodes' parts first.
    writes_user_files: bool,
    /// Whether this node writes its own power timeline,
    /// `carbontrack-<jobid>-<node>.svg` (a job on several nodes: each
    /// node's sampler keeps its own timeline).
    writes_node_plot: bool,
    /// Held for as long as this step samples.
    _lock: File,
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking")
            .field("job", &self.job.job_id)
            .field("node", &self.job.node)
            .finish()
    }
}

/// What decides whether this step can sample, besides the hand-off.
#[derive(Debug, Default)]
pub(super) struct Where {
    pub slurm: SlurmConf,
    /// `slurm_spank_task_post_fork` runs in a child process that ends right
    /// after it (Slurm >= 24.05 with `SlurmdParameters=contain_spank`).
    pub in_child: bool,
    /// What this step saw of the job's options.
    pub choice: JobChoice,
}

/// Starts sampling if the job is tracked and no other step of it samples on
/// this node. Logs what it decided, once.
pub(super) fn start(host: &dyn Host, cfg: &Config, here: &Where) -> Option<Tracking> {
    let step = host.step()?;
    if step == Step::Pending {
        return None;
    }
    let job_id = host.job_id()?;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        host.log(
            Level::Error,
            &format!("job {job_id}: {what}: {e}; not measured on this node"),
        );
    };
    let spool = match Spool::open(&cfg.spool) {
        Ok(s) => s,
        Err(e) => {
            fail("spool", &e);
            return None;
        }
    };
    let job = match spool.read_handoff(job_id) {
        Ok(Some(j)) => j,
        Ok(None) => {
            // Not tracked, or, with RunInJob, never handed over: Slurm then
            // runs the Prolog inside the extern step and skips every SPANK
            // job_prolog (slurmstepd never learns that a plugin has one:
            // src/common/spank.c notes it only in slurmd's own plugin stack).
            // The extern step cannot see the job's options; the others can.
            if here.slurm.run_in_job && step != Step::Extern && cfg.mode.tracks(here.choice.track) {
                host.log(
                    Level::Error,
                    &format!(
                        "job {job_id}: not measured: with PrologFlags=RunInJob Slurm runs no \
                         SPANK job prolog, which carbontrack needs to hand the job to its \
                         steps; remove RunInJob from PrologFlags to measure jobs"
                    ),
                );
            }
            return None;
        }
        Err(e) => {
            fail("hand-off", &e);
            return None;
        }
    };
    if here.in_child {
        let why = if here.slurm.contain_spank {
            "SlurmdParameters=contain_spank"
        } else {
            "this Slurm's configuration"
        };
        host.log(
            Level::Error,
            &format!(
                "job {job_id} step {step}: not measured on this node: {why} runs \
                 slurm_spank_task_post_fork in a short-lived child process, where a sampler \
                 cannot outlive the callback; remove contain_spank from SlurmdParameters to \
                 measure jobs"
            ),
        );
        return None;
    }
    let lock = match spool.try_lock_sampler(job_id) {
        Ok(Some(f)) => f,
        Ok(None) => {
            host.log(
                Level::Debug,
                &format!("job {job_id} step {step}: another step samples this job here"),
            );
            return None;
        }
        Err(e) => {
            fail("sampler lock", &e);
            return None;
        }
    };

    let (shares, attribution) = attribution(host, cfg, &job);
    let single_node = host.node_count().is_none_or(|n| n <= 1);
    let id = FsIdentity {
        uid: job.uid,
        gid: job.gid,
        groups: job.groups.clone(),
    };
    let mut plan = Plan::new(job_id.to_string(), job.node.clone(), cfg.clone());
    plan.shares = shares;
    plan.gpus = gpu_hints(&job);
    plan.amd_gpus = amd_gpu_hints(&job);
    plan.user = Some(id);
    plan.epochs = job.epochs;
    plan.budget = job.budget;
    plan.epoch_file = job
        .work_dir
        .as_deref()
        .map(|d| epoch_file(d, &job_id.to_string()));
    let writes_user_files =
        single_node && cfg.report == ReportTarget::Workdir && job.work_dir.is_some();
    let writes_node_plot =
        !single_node && cfg.report == ReportTarget::Workdir && job.work_dir.is_some();
    plan.output = match (&job.work_dir, writes_user_files) {
        (Some(d), true) => Output::WorkDir(d.clone()),
        _ => Output::None,
    };
    if let (Some(d), true, Some(_)) = (&job.work_dir, writes_user_files, job.budget) {
        plan.state_file = Some(d.join(state_file_name(&job_id.to_string())));
    }
    // The node's footprint may have earlier segments: the plugin joins them
    // and writes the final files itself.
    plan.final_files = false;
    plan.time_limit_from_squeue = writes_user_files;
    plan.live_csv = Some(spool.live_path(job_id, &job.node));
    plan.join_timeout = Duration::from_secs(10);
    plan.prometheus = prometheus_exporter(host, cfg, &job);
    if cfg.cpu_tdp.is_some() {
        plan.cpu_time = job_cpu_time(host, cfg, &job);
    }

    let (tracker, notes) = match Tracker::start(plan) {
        Ok(t) => t,
        Err(e) => {
            fail("cannot start the sampler", &e);
            return None;
        }
    };
    host.log(
        Level::Info,
        &format!(
            "job {job_id}: sampling on {} in step {step} every {}; CPU share from {}",
            job.node,
            humantime::format_duration(cfg.interval),
            attribution.method
        ),
    );
    if let Some(d) = &attribution.detail {
        host.log(Level::Info, &format!("job {job_id}: {d}"));
    }
    if let Some(d) = &attribution.disagreement {
        host.log(Level::Error, &format!("job {job_id}: {d}"));
    }
    for n in notes {
        host.log(Level::Info, &format!("job {job_id}: {n}"));
    }
    Some(Tracking {
        tracker,
        job,
        spool,
        config: cfg.clone(),
        writes_user_files,
        writes_node_plot,
        _lock: lock,
    })
}

/// The job's node_exporter textfile (`prometheus=`), if configured and the
/// directory is root's own (checked once here: a few `lstat`s of a
/// node-local path); otherwise one error line and none, the job measured as
/// ever.
fn prometheus_exporter(host: &dyn Host, cfg: &Config, job: &JobInfo) -> Option<Exporter> {
    let dir = cfg.prometheus.as_ref()?;
    match prometheus::check_dir(dir) {
        Ok(dir) => Some(Exporter::new(
            dir,
            job.job_id,
            prometheus::JobLabels {
                job_id: job.job_id.to_string(),
                user: job.user.clone(),
                account: job.account.clone(),
                partition: job.partition.clone(),
                node: job.node.clone(),
            },
        )),
        Err(e) => {
            host.log(
                Level::Error,
                &format!(
                    "job {}: prometheus= directory: {e}; no Prometheus figures for this job",
                    job.job_id
                ),
            );
            None
        }
    }
}

/// What the start of sampling says about the CPU attribution, once.
struct AttributionLog {
    method: String,
    detail: Option<String>,
    disagreement: Option<String>,
}

/// The job's CPU shares on this node, from the best evidence there is: its
/// cpuset, found through this step's own cgroup or a task's (else searched
/// for), then Slurm's core allocation with the node layout the prolog read,
/// then counts.
fn attribution(
    host: &dyn Host,
    cfg: &Config,
    job: &JobInfo,
) -> (cpuset::PackageShares, AttributionLog) {
    let pids: Vec<u32> = [Some(host.pid()), host.task_pid()]
        .into_iter()
        .flatten()
        .collect();
    let found = cpuset::find_job_cpuset(&cfg.cgroup, job.job_id, Some(job.uid), &pids);
    let cpuset_why = found
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let topo = cpuset::package_of_cpus(&cfg.cpu_topology).ok();
    let cores: Option<CpuSet> = host.alloc_cores().and_then(|s| s.parse().ok());
    let evidence = Evidence {
        cpuset: found
            .as_ref()
            .map(|(c, _)| c)
            .map_err(|_| cpuset_why.as_str()),
        cpuset_via: found.as_ref().ok().map(|(_, via)| via.as_str()),
        cores: cores.as_ref(),
        layout: job.layout.as_ref().map_err(String::as_str),
        topo: topo.as_ref(),
        // 0 is what Slurm says where it does not know (the extern step).
        allocated: host.ncpus().filter(|&n| n > 0).or(job.cpus_on_node),
    };
    let chosen = cpuset::attribute_job(&evidence);
    let log = AttributionLog {
        method: chosen
            .shares
            .method()
            .unwrap_or("the whole node")
            .to_string(),
        detail: chosen.shares.detail().map(str::to_string),
        disagreement: chosen.disagreement,
    };
    (chosen.shares, log)
}

/// Where the job's CPU time is read (`cpu_tdp=`): the CPU accounting of the
/// job's cgroup, found through this step's own cgroup or a task's.
fn job_cpu_time(host: &dyn Host, cfg: &Config, job: &JobInfo) -> Option<CpuTimeSource> {
    [Some(host.pid()), host.task_pid()]
        .into_iter()
        .flatten()
        .find_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            crate::measure::estimate::job_cpu_time_source(&cfg.cgroup, &text, job.job_id)
        })
}

/// The job's GPUs as the prolog saw them. A job Slurm gave no GPU gets none,
/// rather than every GPU of the node.
fn gpu_hints(job: &JobInfo) -> GpuHints {
    let none = job.slurm_gpus.is_none() && job.cuda_visible.is_none();
    GpuHints {
        slurm_gpus: job.slurm_gpus.clone(),
        cuda_visible: if none {
            Some(String::new())
        } else {
            job.cuda_visible.clone()
        },
        job_pids: None,
    }
}

/// The job's AMD GPUs as the prolog saw them; none when Slurm gave none.
fn amd_gpu_hints(job: &JobInfo) -> AmdGpuHints {
    let none = job.slurm_gpus.is_none() && job.rocr_visible.is_none();
    AmdGpuHints {
        slurm_gpus: job.slurm_gpus.clone(),
        rocr_visible: if none {
            Some(String::new())
        } else {
            job.rocr_visible.clone()
        },
    }
}

impl Tracking {
    /// Stops sampling, joins this segment with earlier ones, and leaves the
    /// node's footprint in the spool and, for a one-node job, the user's files.
    pub(super) fn finish(self, host: &dyn Host) {
        let job_id = self.job.job_id;
        let done = self.tracker.finish();
        for p in &done.problems {
            host.log(Level::Error, &format!("job {job_id}: {p}"));
        }
        let path = self.spool.node_footprint_path(job_id, &self.job.node);
        let earlier = self
            .spool
            .read_file(&path)
            .ok()
            .and_then(|b| read_csv(&b[..]).ok());
        let (rows, summary, svg) = match earlier {
            Some(prev) if !prev.is_empty() => {
                let rows = merge_segments(&prev, &done.rows);
                let summary =
                    render_final_from_rows(&self.job.job_id.to_string(), self.config.pue, &rows);
                let svg = done.render_svg(&rows, Some(EARLIER_SEGMENTS));
                (rows, summary, svg)
            }
            _ => (done.rows.clone(), done.summary.clone(), done.svg.clone()),
        };
        let mut csv = Vec::new();
        if let Err(e) = write_csv(&mut csv, &rows) {
            host.log(
                Level::Error,
                &format!("job {job_id}: cannot format the footprint: {e}"),
            );
            return;
        }
        let kept = match self
            .spool
            .write_node_footprint(job_id, &self.job.node, &csv)
        {
            Ok(p) => p,
            Err(e) => {
                host.log(
                    Level::Error,
                    &format!("job {job_id}: cannot keep the footprint in the spool: {e}"),
                );
                return;
            }
        };
        let _ = std::fs::remove_file(self.spool.live_path(job_id, &self.job.node));
        // The job's series end with its sampling here (a later segment, if
        // any, writes the file anew).
        if let Some(dir) = &self.config.prometheus
            && let Err(e) = prometheus::remove(dir, job_id)
        {
            host.log(
                Level::Error,
                &format!(
                    "job {job_id}: cannot remove {}: {e}; the Epilog removes it",
                    dir.join(prometheus::file_name(job_id)).display()
                ),
            );
        }
        host.log(
            Level::Info,
            &format!(
                "job {job_id}: {}",
                one_line(&rows, done.snapshot.sampler_cpu.as_ref())
            ),
        );
        // What the statuses mean, once each (the attribution was explained
        // when sampling started).
        for n in notes(&rows).iter().filter(|n| !n.is_attribution()) {
            host.log(Level::Info, &format!("job {job_id}: {n}"));
        }
        if self.writes_node_plot
            && let Some(dir) = &self.job.work_dir
        {
            let name = node_svg_name(job_id, &self.job.node);
            let files = vec![(name.clone(), svg.into_bytes())];
            match done.deliver(dir, files, DELIVER_WAIT, None) {
                Delivery::Written(_) => {}
                Delivery::Failed(e) | Delivery::Retry(e) => host.log(
                    Level::Error,
                    &format!(
                        "job {job_id}: {}; this node's power timeline is not written",
                        e.first().map(String::as_str).unwrap_or(&name)
                    ),
                ),
                Delivery::Late(waited) => host.log(
                    Level::Error,
                    &format!(
                        "job {job_id}: work dir {} is not answering (no reply in {:.0} s); \
                         this node's power timeline {name} is not written",
                        dir.display(),
                        waited.as_secs_f64()
                    ),
                ),
            }
            return;
        }
        if !self.writes_user_files {
            return;
        }
        let Some(dir) = &self.job.work_dir else {
            return;
        };
        let names = [
            format!("carbontrack-{job_id}.csv"),
            format!("carbontrack-{job_id}.txt"),
            svg_name(&job_id.to_string()),
        ];
        // Written before asking, so that if the work dir does not answer the
        // Epilog (or `carbontrack flush`) delivers the files later; removed
        // once they are written.
        let files = UserFiles {
            uid: self.job.uid,
            gid: self.job.gid,
            groups: self.job.groups.clone(),
            dir: dir.clone(),
            csv: String::from_utf8_lossy(&csv).into_owned(),
            txt: summary.clone(),
            svg: Some(svg.clone()),
        };
        let record = serde_json::to_vec(&files).ok().and_then(|b| {
            self.spool
                .write_job_file(job_id, USER_FILES_RECORD, &b)
                .ok()
        });
        let mut files = vec![
            (names[0].clone(), csv.clone()),
            (names[1].clone(), summary.into_bytes()),
            (names[2].clone(), svg.into_bytes()),
        ];
        // A job with a budget: its state file says it has ended.
        files.extend(done.state.clone());
        let delivery = done.deliver(dir, files, DELIVER_WAIT, record.clone());
        if matches!(delivery, Delivery::Written(_) | Delivery::Failed(_))
            && let Some(r) = &record
        {
            let _ = std::fs::remove_file(r);
        }
        // One line for the admin, whatever failed: both files usually fail
        // for the same reason, and the live summary before them too.
        match delivery {
            Delivery::Written(_) => {
                if let Some(p) = &done.live_summary_problem {
                    host.log(Level::Error, &format!("job {job_id}: {p}"));
                }
            }
            Delivery::Failed(errors) => host.log(
                Level::Error,
                &format!(
                    "job {job_id}: {}{}; the footprint is kept in {}",
                    errors.first().map(String::as_str).unwrap_or_default(),
                    if errors.len() > 1 {
                        format!(" (nor {})", names[1..errors.len()].join(" nor "))
                    } else {
                        String::new()
                    },
                    kept.display()
                ),
            ),
            Delivery::Retry(errors) => host.log(
                Level::Error,
                &format!(
                    "job {job_id}: {}; {}",
                    errors.first().map(String::as_str).unwrap_or_default(),
                    match record {
                        Some(_) => "the user's files will be delivered by the Epilog or \
                                    `carbontrack flush`"
                            .to_string(),
                        None => format!("the footprint is kept in {}", kept.display()),
                    }
                ),
            ),
            Delivery::Late(waited) => host.log(
                Level::Error,
                &format!(
                    "job {job_id}: work dir {} is not answering (no reply in {:.0} s); {}",
                    dir.display(),
                    waited.as_secs_f64(),
                    match record {
                        Some(_) => "the user's files will be delivered by the Epilog or \
                                    `carbontrack flush` once it answers"
                            .to_string(),
                        None => format!("the footprint is kept in {}", kept.display()),
                    }
                ),
            ),
        }
    }
}

/// Under the title of a timeline that covers the last step only: without
/// `PrologFlags=Contain` each step samples in turn, and only the last one's
/// timeline is at hand when the footprint is joined.
const EARLIER_SEGMENTS: &str =
    "The power shown is the last step's; the totals cover every step of the job";

/// The power timeline of one node of a job on several nodes. Characters a
/// file name should not hold (a node name never has them) become `_`.
pub fn node_svg_name(job_id: u32, node: &str) -> String {
    let node: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("carbontrack-{job_id}-{node}.svg")
}

/// How long the extern step waits for the work dir at the end, on the
/// user-filesystem thread (the main thread only waits).
const DELIVER_WAIT: Duration = Duration::from_secs(5);

/// The node's result in one log line, with what this segment's sampler thread
/// cost: the figure admins check against the overhead budget on their own
/// nodes, said here rather than in a line of its own.
fn one_line(rows: &[Row], cpu: Option<&SamplerCpu>) -> String {
    let result = node_result(rows);
    match cpu {
        Some(c) => format!("{result}; {c}"),
        None => result,
    }
}

fn node_result(rows: &[Row]) -> String {
    match rows.iter().find(|r| r.is_total()) {
        Some(t) => match (t.energy_kwh, t.co2e_g) {
            (Some(kwh), Some(g)) => {
                format!(
                    "{} kWh, {g:.3} g CO2e over {:.0} s on {} ({})",
                    crate::footprint::fmt_kwh(kwh),
                    t.duration_s,
                    t.node,
                    t.status
                )
            }
            _ => format!("nothing measured on {} ({})", t.node, t.status),
        },
        None => "no footprint rows".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(energy_kwh: Option<f64>, co2e_g: Option<f64>, status: &str) -> Row {
        Row {
            job_id: "42".into(),
            node: "n1".into(),
            component: crate::footprint::TOTAL.into(),
            device: String::new(),
            start: String::new(),
            end: String::new(),
            duration_s: 3600.2,
            share: None,
            energy_j: energy_kwh.map(|k| k * 3.6e6),
            pue: 1.0,
            energy_kwh,
            intensity_g_per_kwh: None,
            co2e_g,
            status: status.into(),
            intensity_source: String::new(),
        }
    }

    #[test]
    fn the_final_line_carries_the_sampler_cost() {
        let cpu = SamplerCpu {
            used: Duration::from_millis(61),
            samples: 3600,
        };
        let measured = [total(Some(0.5), Some(123.4567), "ok")];
        let none = [total(None, None, "unavailable: no RAPL")];
        let kwh = crate::footprint::fmt_kwh(0.5);
        for (rows, cpu, line) in [
            (
                &measured[..],
                Some(&cpu),
                format!(
                    "{kwh} kWh, 123.457 g CO2e over 3600 s on n1 (ok); sampler CPU 61 ms over \
                     3600 samples (17 µs a sample)"
                ),
            ),
            (
                &measured[..],
                None,
                format!("{kwh} kWh, 123.457 g CO2e over 3600 s on n1 (ok)"),
            ),
            (
                &none[..],
                Some(&cpu),
                "nothing measured on n1 (unavailable: no RAPL); sampler CPU 61 ms over 3600 \
                 samples (17 µs a sample)"
                    .to_string(),
            ),
            (&[][..], None, "no footprint rows".to_string()),
        ] {
            assert_eq!(one_line(rows, cpu), line);
        }
    }
}
