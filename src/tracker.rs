//! One tracked run on one node, from the first sample to the files it leaves.
//!
//! The plugin (for a Slurm job) and `carbontrack run` (for a command) differ
//! only in how they learn what to measure and where the results go; both
//! describe that as a [`Plan`] and hand it to a [`Tracker`]. The tracker opens
//! the meters, runs the sampler with a live observer (epoch marks, the
//! refreshed summary file) and, when finished, turns the final snapshot into
//! footprint rows, the CSV and the human summary.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::carbon::budget::{Amount, CarbonBudget, LiveState, PredictedFrom, Standing, assess};
use crate::carbon::greener;
use crate::carbon::intensity::{EnergySpan, IntensitySpec, Resolved, resolve, resolve_read};
use crate::carbon::predict::{EpochMark, project_to_limit};
use crate::carbon::summary::{
    EpochProgress, SummaryInput, render_actual_block, render_final, render_live,
    render_predicted_block,
};
use crate::config::{Components, Config};
use crate::epochs::Mark;
use crate::ffi::identity::FsIdentity;
use crate::footprint::{NodeFootprint, Row, node_rows, write_csv};
use crate::measure::amd_gpus::AmdGpuHints;
use crate::measure::amdsmi::AmdSmiMeter;
use crate::measure::cpuset::PackageShares;
use crate::measure::estimate::{self, CpuTimeSource, EstimateMeter};
use crate::measure::gpus::GpuHints;
use crate::measure::nvml::NvmlMeter;
use crate::measure::powermetrics::{PowermetricsMeter, Unmeasured};
use crate::measure::rapl;
use crate::measure::sampler::{Observer, Sampler, SamplerOptions, Snapshot, StopError};
use crate::measure::{Component, Meter};
use crate::prometheus::Exporter;
use crate::units::Joules;
use crate::userio::{Delivery, HourlyRead, Setup, UserIo};

/// Where a run's results go.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Nothing for the user (`report=none`); the caller keeps the rows.
    None,
    /// `carbontrack-<job>.csv` and `carbontrack-<job>.txt` in this directory,
    /// written with the user's identity; the `.txt` is refreshed while running.
    WorkDir(PathBuf),
    /// The CSV at this path (`carbontrack run -o FILE`); no summary file.
    Csv(PathBuf),
}

/// The name of a job's power timeline beside its CSV.
pub fn svg_name(job_id: &str) -> String {
    format!("carbontrack-{job_id}.svg")
}

/// Everything a tracker needs to know, decided by its caller.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Slurm's job id, or `local` for `carbontrack run`.
    pub job_id: String,
    pub node: String,
    pub config: Config,
    /// The job's share of each CPU package.
    pub shares: PackageShares,
    pub gpus: GpuHints,
    /// The job's AMD GPUs, as the environment names them.
    pub amd_gpus: AmdGpuHints,
    /// Whose identity files in the user's directories are written and read
    /// with; `None`: the caller's own.
    pub user: Option<FsIdentity>,
    pub output: Output,
    /// Whether [`Tracker::finish`] writes the final files of `output` (the
    /// plugin writes them itself after joining segments).
    pub final_files: bool,
    /// Total epochs declared (`--carbon-epochs`), for prediction.
    pub epochs: Option<u32>,
    /// The file the job appends epoch marks to.
    pub epoch_file: Option<PathBuf>,
    /// The job's time limit, for the projection in the live summary.
    pub time_limit: Option<Duration>,
    /// Look the time limit up once with `squeue` (Slurm 22.05 hands it to no
    /// plugin callback), at the first refresh: one query per job, from the
    /// node that writes the summary.
    pub time_limit_from_squeue: bool,
    /// A root-only copy of the footprint so far, rewritten at each refresh,
    /// for `carbontrack status`.
    pub live_csv: Option<PathBuf>,
    /// How often the live summary is rewritten.
    pub refresh: Duration,
    /// The job's node_exporter textfile, rewritten at each refresh too
    /// (`prometheus=`); `None`: none.
    pub prometheus: Option<Exporter>,
    /// How long stopping may wait for the sampler thread.
    pub join_timeout: Duration,
    /// How long [`Tracker::finish`] waits for the final files to be written
    /// into the user's filesystem before leaving them (`Finished::late`).
    pub deliver_wait: Duration,
    /// `--carbon-budget`: the summaries show the run against it.
    pub budget: Option<CarbonBudget>,
    /// Where the live state (`carbontrack status --json`) is kept, written
    /// as the user at each refresh; only for a run with a budget.
    pub state_file: Option<PathBuf>,
    /// Say on stderr, once, when the budget is first exceeded
    /// (`carbontrack run`, whose stderr is the user's).
    pub alert_to_stderr: bool,
    /// Where the power timeline goes with `Output::Csv` (`carbontrack run
    /// --plot FILE`); with `Output::WorkDir` it is always written, as
    /// `carbontrack-<job>.svg`.
    pub plot: Option<PathBuf>,
    /// Where the job's CPU time is read, for the CPU estimate (`cpu_tdp=`)
    /// where RAPL reads no CPU; `None`: no estimate.
    pub cpu_time: Option<CpuTimeSource>,
    /// Read CPU, GPU and Neural Engine from this `powermetrics` (Apple
    /// Silicon) instead of RAPL and NVML.
    pub powermetrics: Option<PathBuf>,
}

impl Plan {
    /// A plan with the defaults for everything but identity and output.
    pub fn new(job_id: impl Into<String>, node: impl Into<String>, config: Config) -> Plan {
        let config_refresh = config.refresh;
        Plan {
            job_id: job_id.into(),
            node: node.into(),
            config,
            shares: PackageShares::whole_node(),
            gpus: GpuHints::default(),
            amd_gpus: AmdGpuHints::default(),
            user: None,
            output: Output::None,
            final_files: true,
            epochs: None,
            epoch_file: None,
            time_limit: None,
            time_limit_from_squeue: false,
            live_csv: None,
            refresh: config_refresh,
            prometheus: None,
            join_timeout: Duration::from_secs(5),
            deliver_wait: Duration::from_secs(30),
            budget: None,
            state_file: None,
            alert_to_stderr: false,
            plot: None,
            cpu_time: None,
            powermetrics: None,
        }
    }

    fn csv_name(&self) -> String {
        format!("carbontrack-{}.csv", self.job_id)
    }

    fn txt_name(&self) -> String {
        format!("carbontrack-{}.txt", self.job_id)
    }
}

/// The observer running on the sampler thread: it renders the live summary
/// and keeps the spool's live copy, and hands the user's file to the
/// user-filesystem thread, never writing there itself.
struct Live {
    plan: Arc<Plan>,
    /// Filled in once the sampler (whose energy the I/O thread needs for
    /// epoch marks) has started. Weak: the I/O thread holds the sampler's
    /// state, which holds this observer, and the tracker owns the thread.
    io: Arc<OnceLock<Weak<UserIo>>>,
    /// When the budget was first exceeded (set once, read by `finish`).
    first_over: Arc<OnceLock<SystemTime>>,
    /// The job's Prometheus file, and the first reason it could not be
    /// written (said once, at the end).
    prometheus: Option<Exporter>,
    prometheus_problem: Arc<OnceLock<String>>,
}

impl Observer for Live {
    fn on_refresh(&mut self, snap: &Snapshot) {
        if let Some(x) = &mut self.prometheus
            && let Err(e) = x.refresh(snap)
        {
            let _ = self
                .prometheus_problem
                .set(format!("Prometheus file not written: {e}"));
        }
        let plan = &self.plan;
        if plan.live_csv.is_none()
            && !matches!(plan.output, Output::WorkDir(_))
            && plan.budget.is_none()
        {
            return;
        }
        let io = self.io.get().and_then(Weak::upgrade);
        let hourly = io.as_ref().and_then(|io| io.hourly());
        let (rows, intensity) = rows_of(plan, snap, hourly.as_ref());
        if let Some(path) = &plan.live_csv {
            let mut csv = Vec::new();
            if write_csv(&mut csv, &rows).is_ok() {
                // Best effort: `carbontrack status` says when it has no copy.
                let _ = crate::spool::write_atomic(path, &csv);
            }
        }
        let Some(io) = self.io.get().and_then(Weak::upgrade) else {
            return;
        };
        let now = SystemTime::now();
        let time_limit = io.time_limit().unwrap_or(plan.time_limit);
        let marks = io.marks();
        let budget = plan.budget.map(|b| {
            let (used, predicted) =
                used_and_predicted(plan, snap, &rows, &intensity, &marks, time_limit);
            // Nothing measured: neither within nor over.
            let standing = used.map(|u| assess(b, u, predicted));
            if let Some(st) = standing.filter(|s| s.over)
                && self.first_over.set(now).is_ok()
                && plan.alert_to_stderr
                && let Some(a) = st.alert()
            {
                // The one line where the user sees it, the first time.
                eprintln!("carbontrack: {a}");
            }
            let state_file = plan.state_file.as_deref();
            if let (Some(dir), Some(name)) = (
                state_file.and_then(std::path::Path::parent),
                state_file.and_then(std::path::Path::file_name),
            ) {
                let state = LiveState::new(
                    &plan.job_id,
                    now,
                    snap.duration.as_secs_f64(),
                    used,
                    Some(b),
                    standing.as_ref(),
                    self.first_over.get().copied(),
                );
                if let Ok(json) = serde_json::to_vec_pretty(&state) {
                    io.offer_state(dir, name.to_string_lossy().into_owned(), json);
                }
            }
            BudgetView {
                budget: b,
                standing,
                first_over: self.first_over.get().copied(),
            }
        });
        let Output::WorkDir(dir) = &plan.output else {
            return;
        };
        let text = summary(
            plan,
            snap,
            &rows,
            &intensity,
            &marks,
            time_limit,
            Some(now),
            &Extras {
                budget,
                greener: None,
            },
        );
        io.offer_summary(dir, plan.txt_name(), text.into_bytes());
    }
}

/// What the summary says besides the footprint: the budget, a greener start.
#[derive(Default)]
struct Extras {
    budget: Option<BudgetView>,
    greener: Option<String>,
}

struct BudgetView {
    budget: CarbonBudget,
    /// `None` when nothing could be measured.
    standing: Option<Standing>,
    first_over: Option<SystemTime>,
}

/// The run so far (energy with PUE, CO2e) and its prediction: from the
/// epochs when declared and marked, else to the time limit.
fn used_and_predicted(
    plan: &Plan,
    snap: &Snapshot,
    rows: &[Row],
    intensity: &Resolved,
    marks: &[Mark],
    time_limit: Option<Duration>,
) -> (Option<Amount>, Option<(Amount, PredictedFrom)>) {
    let total = crate::footprint::total_of(rows);
    let used = total.as_ref().and_then(|t| {
        Some(Amount {
            energy_kwh: t.energy_kwh?,
            co2e_g: t.co2e_g?,
        })
    });
    let pue = plan.config.pue;
    let amount = |e: Joules| Amount {
        energy_kwh: crate::carbon::facility_kwh(e, pue).0,
        co2e_g: crate::carbon::co2e(e, pue, intensity.g_per_kwh).0,
    };
    let marks = epoch_marks(snap, marks);
    let by_epochs = epoch_progress(plan, &marks).and_then(|p| p.latest());
    let predicted = match by_epochs {
        Some(p) => Some((amount(p.predicted_energy), PredictedFrom::Epochs)),
        None => time_limit
            .zip(total.and_then(|t| t.energy_j))
            .and_then(|(limit, j)| project_to_limit(snap.duration, Joules(j), limit))
            .map(|p| (amount(p.projected_energy), PredictedFrom::TimeLimit)),
    };
    (used, predicted)
}

/// A running measurement.
pub struct Tracker {
    sampler: Sampler,
    plan: Arc<Plan>,
    io: Option<Arc<UserIo>>,
    first_over: Arc<OnceLock<SystemTime>>,
    prometheus_problem: Arc<OnceLock<String>>,
}

/// What a finished run produced.
pub struct Finished {
    pub snapshot: Snapshot,
    /// Device rows then the total row.
    pub rows: Vec<Row>,
    pub intensity: Resolved,
    pub csv: Vec<u8>,
    pub summary: String,
    /// carbontracker's "Actual consumption" block (`carbontrack run --pid`).
    pub actual_block: String,
    /// carbontracker's "Predicted consumption" block, when epochs enough were
    /// marked.
    pub predicted_block: Option<String>,
    /// Files written for the user.
    pub delivered: Vec<PathBuf>,
    /// One line each: what went wrong on the way (nothing fatal).
    pub problems: Vec<String>,
    /// Why the live summary could not be rewritten, if it could not; among
    /// `problems` only when the final files were written (by the tracker), so
    /// a caller writing them itself decides whether it says anything new.
    pub live_summary_problem: Option<String>,
    /// The final files could not be written in time: the user's filesystem
    /// did not answer within `Plan::deliver_wait`.
    pub late: bool,
    /// The final state file of a run with a budget (`Plan::state_file`'s
    /// name, its bytes), for a caller writing the final files itself.
    pub state: Option<(String, Vec<u8>)>,
    /// The power timeline of `rows` ([`Finished::svg`]).
    pub svg: String,
    /// What the timeline is drawn with besides the snapshot.
    marks: Vec<Mark>,
    time_limit: Option<Duration>,
    plan: Arc<Plan>,
    /// The user-filesystem thread, for a caller writing the final files
    /// itself ([`Finished::deliver`]).
    io: Option<Arc<UserIo>>,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("rows", &self.rows)
            .field("delivered", &self.delivered)
            .field("problems", &self.problems)
            .field("late", &self.late)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// Opens the meters and starts sampling. Returns the tracker and the lines
    /// worth logging once (what could not be measured and why, warnings).
    pub fn start(plan: Plan) -> std::io::Result<(Tracker, Vec<String>)> {
        let cfg = &plan.config;
        let mut log = Vec::new();
        let mut meters: Vec<Box<dyn Meter>> = Vec::new();
        // Opening asks the devices (sysfs, the NVML driver, every GPU): on
        // threads of their own, side by side, so that a device that does not
        // answer costs the caller (slurmstepd's main thread) a bounded wait
        // and the other meters nothing.
        let deadline = Instant::now() + OPEN_WAIT;
        let cpu_dram = Components {
            gpu: false,
            ..cfg.components
        };
        let pm = plan.powermetrics.as_ref().map(|path| {
            let (path, interval, components) = (path.clone(), cfg.interval, cfg.components);
            opening("powermetrics", move || {
                PowermetricsMeter::start(&path, interval, components).map(|m| {
                    // A refusal (not root) comes at once; a sample after an
                    // interval: the command is held back for half a second at most.
                    let refused = m.first_word(Duration::from_millis(500));
                    (m, refused)
                })
            })
        });
        if let Some(rx) = pm {
            let components = cfg.components;
            match opened(rx, deadline, "powermetrics") {
                Ok(Ok((meter, refused))) => {
                    log.extend(refused.map(|why| format!("powermetrics: {why}")));
                    meters.push(Box::new(meter));
                }
                Ok(Err(why)) | Err(why) => {
                    log.push(why.clone());
                    meters.push(Box::new(Unmeasured::new(components, &why)));
                }
            }
        }
        let native = plan.powermetrics.is_none();
        let rapl = (native && (cfg.components.cpu || cfg.components.dram)).then(|| {
            let (root, shares, interval) =
                (cfg.powercap.clone(), plan.shares.clone(), cfg.interval);
            opening("RAPL", move || {
                rapl::open(&root, cpu_dram, &shares, interval)
            })
        });
        let nvml = (native && cfg.components.gpu).then(|| {
            let (lib, hints) = (cfg.nvml.clone(), plan.gpus.clone());
            opening("NVML", move || {
                NvmlMeter::for_job(&lib, &hints, Instant::now())
            })
        });
        let amd = cfg.components.gpu.then(|| {
            let (lib, hints) = (cfg.amdsmi.clone(), plan.amd_gpus.clone());
            opening("AMD SMI", move || {
                AmdSmiMeter::for_job(&lib, &hints, Instant::now())
            })
        });
        // The CPU meters are kept aside until NVML has said whether a GH200
        // module's counter already holds the CPU (then neither counts).
        let mut cpu_meters: Vec<Box<dyn Meter>> = Vec::new();
        let have_rapl = rapl.is_some();
        if let Some(rx) = rapl {
            let mut meter = match opened(rx, deadline, "RAPL") {
                Ok(o) => {
                    log.extend(o.warnings);
                    o.meter
                }
                Err(why) => {
                    log.push(why);
                    let short = "RAPL did not answer at the start";
                    rapl::unavailable(cpu_dram, short)
                }
            };
            if cfg.components.cpu
                && !meter.reads(Component::Cpu)
                && let Some(est) = cpu_estimate(&plan, &mut log)
            {
                let instead = meter.take_unavailable(Component::Cpu);
                log.push(format!(
                    "CPU energy estimated from TDP and CPU time instead ({})",
                    instead.join("; ")
                ));
                cpu_meters.push(Box::new(est));
            }
            cpu_meters.push(Box::new(meter));
        }
        // AMD SMI's meter, when the node has AMD GPUs (or a library that
        // failed); its absence is no news on an NVIDIA node.
        let mut amd_gpus = false;
        let mut amd_meter = None;
        if let Some(rx) = amd {
            let meter = match opened(rx, deadline, "AMD SMI") {
                Ok((meter, notes)) => {
                    if meter.is_some() {
                        log.extend(notes);
                    }
                    meter
                }
                Err(why) => {
                    log.push(why);
                    Some(AmdSmiMeter::unavailable(
                        "AMD SMI did not answer at the start",
                    ))
                }
            };
            amd_gpus = meter.as_ref().is_some_and(AmdSmiMeter::has_gpus);
            amd_meter = meter;
        }
        if let Some(rx) = nvml {
            let (meter, notes) = match opened(rx, deadline, "NVML") {
                Ok(opened) => opened,
                Err(why) => (
                    NvmlMeter::unavailable("NVML did not answer at the start"),
                    vec![why],
                ),
            };
            // A GH200 module's counter holds the Grace CPU's energy: the CPU
            // and DRAM rows say so instead of counting it again.
            // The CPU estimate (`cpu_tdp=`) goes too: it would be the same
            // energy a third time.
            if let (Some(uuid), true) = (meter.module_gpus().first(), have_rapl) {
                let reason = format!("{} ({uuid})", crate::measure::INSIDE_GPU_MODULE);
                log.push(format!(
                    "CPU energy is inside the GPU module figure: {uuid} is a Grace Hopper \
                     module whose NVML energy counter covers the Grace CPU and its memory, \
                     so CPU and DRAM are not counted on their own (nothing counted twice)"
                ));
                cpu_meters = vec![Box::new(rapl::unavailable(cpu_dram, &reason))];
            }
            meters.append(&mut cpu_meters);
            // On a node whose GPUs are AMD's, NVML failing is no news, in
            // the footprint or the log.
            let meter = if amd_gpus && meter.unavailable_only() {
                None
            } else {
                log.extend(notes);
                Some(meter)
            };
            // One meter a GPU: a GPU that stops answering is given up on alone.
            // And on a node whose GPUs are NVIDIA's, AMD SMI failing is none.
            if meter.as_ref().is_some_and(|m| !m.unavailable_only()) && !amd_gpus {
                amd_meter = None;
            }
            meters.extend(
                meter
                    .into_iter()
                    .flat_map(NvmlMeter::split)
                    .map(|m| Box::new(m) as Box<dyn Meter>),
            );
        }
        // Without NVML (components, powermetrics) the CPU meters go in as they are.
        meters.append(&mut cpu_meters);
        if let Some(m) = amd_meter {
            meters.extend(m.split().into_iter().map(|m| Box::new(m) as Box<dyn Meter>));
        }
        let plan = Arc::new(plan);
        let opts = SamplerOptions {
            interval: plan.config.interval,
            // Timeline points start one sample long, so that a short job's
            // picture shows its power change; a long one's double as the
            // timeline fills (7 days of 1 s samples: 64 s points), in the
            // same bounded memory.
            bucket: plan.config.interval,
            refresh: plan.refresh,
            join_timeout: plan.join_timeout,
            ..SamplerOptions::default()
        };
        // The observer needs the I/O thread, which needs the sampler's
        // energy: the observer's slot is filled once both exist.
        let io_slot: Arc<OnceLock<Weak<UserIo>>> = Arc::default();
        let first_over: Arc<OnceLock<SystemTime>> = Arc::default();
        let prometheus_problem: Arc<OnceLock<String>> = Arc::default();
        let live = Live {
            plan: Arc::clone(&plan),
            io: Arc::clone(&io_slot),
            first_over: Arc::clone(&first_over),
            prometheus: plan.prometheus.clone(),
            prometheus_problem: Arc::clone(&prometheus_problem),
        };
        let sampler = Sampler::start(meters, opts, Some(Box::new(live)))?;
        let hourly_file = match &plan.config.intensity {
            IntensitySpec::File(p) => Some(p.clone()),
            _ => None,
        };
        let needs_io = plan.epoch_file.is_some()
            || plan.time_limit_from_squeue
            || hourly_file.is_some()
            || plan.budget.is_some()
            || !matches!(plan.output, Output::None);
        let io = if needs_io {
            let io = UserIo::start(Setup {
                user: plan.user.clone(),
                epoch_file: plan.epoch_file.clone(),
                poll: plan.config.interval,
                squeue_job: (plan.time_limit.is_none() && plan.time_limit_from_squeue)
                    .then(|| plan.job_id.clone()),
                energy: sampler.probe(),
                hourly_file,
                reload_every: plan.refresh,
            })
            .map(Arc::new)?;
            let _ = io_slot.set(Arc::downgrade(&io));
            Some(io)
        } else {
            None
        };
        Ok((
            Tracker {
                sampler,
                plan,
                io,
                first_over,
                prometheus_problem,
            },
            log,
        ))
    }

    /// The figures so far, without stopping.
    pub fn snapshot(&self) -> Snapshot {
        self.sampler.snapshot()
    }

    /// carbontracker's "Predicted consumption" block, once the plan's
    /// `epochs_before_pred` epochs are marked (`carbontrack run --pid`).
    pub fn predicted_block(&self) -> Option<String> {
        let marks = self.io.as_ref()?.marks();
        if marks.len() < self.plan.config.epochs_before_pred.max(1) as usize {
            return None;
        }
        let hourly = self.io.as_ref().and_then(|io| io.hourly());
        let snap = self.sampler.snapshot();
        let (rows, intensity) = rows_of(&self.plan, &snap, hourly.as_ref());
        with_input(&self.plan, &snap, &rows, &intensity, &marks, None, |i| {
            render_predicted_block(i)
        })
    }

    /// Rows of the footprint so far (for a live copy in the spool).
    pub fn rows_so_far(&self) -> Vec<Row> {
        let hourly = self.io.as_ref().and_then(|io| io.hourly());
        rows_of(&self.plan, &self.sampler.snapshot(), hourly.as_ref()).0
    }

    /// Stops sampling and writes the results where the plan says. Every wait
    /// is bounded: the sampler's by `Plan::join_timeout`, the user's
    /// filesystem's by `Plan::deliver_wait`.
    pub fn finish(self) -> Finished {
        let mut problems = Vec::new();
        let asked = SystemTime::now();
        let snapshot = match self.sampler.stop() {
            Ok(s) => s,
            Err(e) => {
                problems.push(e.to_string());
                let StopError::Hung { last, .. } = e;
                match last {
                    Some(s) => *s,
                    None => {
                        problems.push("no figures could be had from the stuck sampler".into());
                        return Finished::empty(&self.plan, problems, self.io);
                    }
                }
            }
        };
        if let Some(p) = &snapshot.problem {
            problems.push(format!("sampling stopped early: {p}"));
        }
        problems.extend(snapshot.given_up.iter().cloned());
        problems.extend(self.prometheus_problem.get().cloned());
        let plan = &self.plan;
        let (marks, epoch_problem, write_problem) = match &self.io {
            Some(io) => io.last_poll(EPOCH_WAIT),
            None => (Vec::new(), None, None),
        };
        problems.extend(epoch_problem.map(|e| format!("epoch marks ignored: {e}")));
        let live_summary_problem = write_problem.map(|e| format!("live summary not written: {e}"));

        let hourly = self.io.as_ref().and_then(|io| io.hourly());
        let (mut rows, intensity) = rows_of(plan, &snapshot, hourly.as_ref());
        mark_cut_short(&mut rows, &snapshot, asked, plan.config.interval);
        let mut csv = Vec::new();
        if let Err(e) = write_csv(&mut csv, &rows) {
            problems.push(format!("cannot format the footprint CSV: {e}"));
        }
        let time_limit = self
            .io
            .as_ref()
            .and_then(|io| io.time_limit())
            .flatten()
            .or(plan.time_limit);
        let first_over = self.first_over.get().copied();
        let budget = plan.budget.map(|b| {
            let (used, _) =
                used_and_predicted(plan, &snapshot, &rows, &intensity, &marks, time_limit);
            BudgetView {
                budget: b,
                standing: used.map(|u| assess(b, u, None)),
                first_over,
            }
        });
        let state = budget.as_ref().and_then(|v| {
            let name = plan.state_file.as_ref()?.file_name()?;
            let mut st = LiveState::new(
                &plan.job_id,
                SystemTime::now(),
                snapshot.duration.as_secs_f64(),
                v.standing.map(|s| s.used),
                Some(v.budget),
                v.standing.as_ref(),
                first_over,
            );
            st.running = false;
            let json = serde_json::to_vec_pretty(&st).ok()?;
            Some((name.to_string_lossy().into_owned(), json))
        });
        let extras = Extras {
            budget,
            greener: greener_line(plan, &snapshot, &rows, hourly.as_ref()),
        };
        let summary = summary(
            plan, &snapshot, &rows, &intensity, &marks, time_limit, None, &extras,
        );
        let (actual_block, predicted_block) = with_input(
            plan,
            &snapshot,
            &rows,
            &intensity,
            &marks,
            time_limit,
            |i| (render_actual_block(i), render_predicted_block(i)),
        );
        let mut done = Finished {
            snapshot,
            rows,
            intensity,
            csv,
            summary,
            actual_block,
            predicted_block,
            delivered: Vec::new(),
            problems,
            live_summary_problem,
            late: false,
            state,
            svg: String::new(),
            marks,
            time_limit,
            plan: Arc::clone(&self.plan),
            io: self.io,
        };
        done.svg = done.render_svg(&done.rows, None);
        let groups = match &plan.output {
            _ if !plan.final_files => Vec::new(),
            Output::None => Vec::new(),
            Output::WorkDir(dir) => vec![(
                dir.clone(),
                vec![
                    (plan.csv_name(), done.csv.clone()),
                    (plan.txt_name(), done.summary.clone().into_bytes()),
                    (svg_name(&plan.job_id), done.svg.clone().into_bytes()),
                ],
            )],
            Output::Csv(path) => {
                let (dir, name) = split_path(path, plan.csv_name());
                let mut groups = vec![(dir, vec![(name, done.csv.clone())])];
                if let Some(plot) = &plan.plot {
                    let (dir, name) = split_path(plot, svg_name(&plan.job_id));
                    let svg = (name, done.svg.clone().into_bytes());
                    match groups.iter_mut().find(|(d, _)| *d == dir) {
                        Some((_, files)) => files.push(svg),
                        None => groups.push((dir, vec![svg])),
                    }
                }
                groups
            }
        };
        for (dir, files) in groups {
            match done.deliver(&dir, files, plan.deliver_wait, None) {
                Delivery::Written(paths) => {
                    done.delivered = paths;
                    // The live summary's failure, if it healed by the end,
                    // is still worth a line.
                    done.problems.extend(done.live_summary_problem.clone());
                }
                Delivery::Failed(errors) | Delivery::Retry(errors) => done.problems.extend(errors),
                Delivery::Late(waited) => {
                    done.late = true;
                    done.problems.push(format!(
                        "{} is not answering (no reply within {:.0} s); files not written",
                        dir.display(),
                        waited.as_secs_f64()
                    ));
                }
            }
        }
        done
    }
}

/// The CPU estimate of `cpu_tdp=` for this plan, or `None` (and why, in
/// `log`) when it is off or cannot be made.
fn cpu_estimate(plan: &Plan, log: &mut Vec<String>) -> Option<EstimateMeter> {
    let tdp = plan.config.cpu_tdp?;
    let Some(source) = plan.cpu_time.clone() else {
        log.push("cpu_tdp: the job's CPU time cannot be read (no CPU accounting found for its cgroup); CPU not estimated".into());
        return None;
    };
    let topo = match crate::measure::cpuset::package_of_cpus(&plan.config.cpu_topology) {
        Ok(t) => t,
        Err(e) => {
            log.push(format!("cpu_tdp: {e}; CPU not estimated"));
            return None;
        }
    };
    let cpuinfo = match tdp {
        estimate::CpuTdp::Auto => std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
        estimate::CpuTdp::Watts(_) => String::new(),
    };
    let packages = topo.cpus_per_package().len();
    match estimate::Model::new(tdp, &cpuinfo, packages, topo.cpus()) {
        Ok(model) => {
            log.push(format!(
                "CPU energy is an estimate: TDP {} W per package ({}) × the CPU time of {} / {} CPUs per package",
                model.tdp.0,
                model.source,
                source.describe(),
                topo.cpus() as f64 / packages as f64
            ));
            let ticks = crate::ffi::clock::ticks_per_second();
            Some(EstimateMeter::new(model, source, ticks))
        }
        Err(why) => {
            log.push(format!("{why}; CPU not estimated"));
            None
        }
    }
}

/// How long opening the meters may take at the start, all together.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// Runs `open` on a thread of its own; its answer comes on the channel.
fn opening<T: Send + 'static>(
    what: &'static str,
    open: impl FnOnce() -> T + Send + 'static,
) -> Result<std::sync::mpsc::Receiver<T>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("carbontrack-open".into())
        // The default 8 MiB: loading NVML (nvml-wrapper builds its table of
        // several hundred entry points on the stack) overflows a small one.
        // Short-lived, and only the pages touched count.
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = crate::ffi::signals::block_all();
            let _ = tx.send(open());
        })
        .map(|_| rx)
        .map_err(|e| format!("{what}: cannot start a thread to open it: {e}; not measured"))
}

/// The opened meter, or why not: waits until `deadline` at most. A thread
/// that does not answer is left to its call (the library stays mapped: see
/// `build.rs`).
fn opened<T>(
    rx: Result<std::sync::mpsc::Receiver<T>, String>,
    deadline: Instant,
    what: &str,
) -> Result<T, String> {
    let rx = rx?;
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| {
            format!(
                "{what} did not answer within {} s at the start (a device that stopped \
                 answering?); not measured",
                OPEN_WAIT.as_secs()
            )
        })
}

/// How long the last look at the epoch file may take at the end.
const EPOCH_WAIT: Duration = Duration::from_secs(1);

/// Rows that stop before the run did (the sampler could not be stopped in
/// time, or ended early) are never `ok`: each says how far it goes.
fn mark_cut_short(rows: &mut [Row], snap: &Snapshot, asked: SystemTime, interval: Duration) {
    let slack = interval.saturating_mul(2) + Duration::from_secs(1);
    let short = asked
        .duration_since(snap.end)
        .is_ok_and(|behind| behind > slack);
    if !short && snap.problem.is_none() {
        return;
    }
    let until = humantime::format_rfc3339_seconds(snap.end);
    for r in rows.iter_mut() {
        if r.status == "ok" {
            r.status = format!("incomplete: measured until {until}");
        }
    }
}

/// A file's directory (`.` for a bare name) and name (`default` for none).
fn split_path(path: &std::path::Path, default: String) -> (PathBuf, String) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(default);
    (dir.to_path_buf(), name)
}

impl Finished {
    /// The power timeline of this run's snapshot, its legend's figures from
    /// `rows` (the plugin's rows joined with earlier segments' differ from
    /// the snapshot's); `note` goes under the title.
    pub fn render_svg(&self, rows: &[Row], note: Option<&str>) -> String {
        let (snap, plan) = (&self.snapshot, &self.plan);
        let points: Vec<_> = snap.timeline.iter().collect();
        let marks = epoch_marks(snap, &self.marks);
        let at: Vec<Duration> = marks.iter().map(|m| m.at).collect();
        let prediction = epoch_progress(plan, &marks).and_then(|p| {
            let p = p.first()?;
            Some((p.total_epochs, p.epochs_done, p.predicted_time))
        });
        crate::report::plot::render(&crate::report::plot::PlotInput {
            job_id: &plan.job_id,
            node: &plan.node,
            start: snap.start,
            elapsed: snap.duration,
            points: &points,
            epochs: &at,
            time_limit: self.time_limit,
            prediction,
            rows,
            pue: plan.config.pue,
            note,
        })
    }

    fn empty(plan: &Plan, problems: Vec<String>, io: Option<Arc<UserIo>>) -> Finished {
        let now = SystemTime::now();
        let mut done = Finished {
            snapshot: Snapshot {
                start: now,
                end: now,
                duration: Duration::ZERO,
                samples: 0,
                devices: Vec::new(),
                timeline: Default::default(),
                timeline_bucket: Duration::ZERO,
                problem: None,
                given_up: Vec::new(),
                sampler_cpu: None,
            },
            rows: Vec::new(),
            intensity: resolve(
                &plan.config.intensity,
                &plan.config.intensity_fallback(),
                (now, now),
                &[],
            ),
            csv: Vec::new(),
            summary: String::new(),
            actual_block: String::new(),
            predicted_block: None,
            delivered: Vec::new(),
            problems,
            live_summary_problem: None,
            late: false,
            state: None,
            svg: String::new(),
            marks: Vec::new(),
            time_limit: None,
            plan: Arc::new(plan.clone()),
            io,
        };
        // A picture that says nothing was measured, never an empty file.
        done.svg = done.render_svg(&[], None);
        done
    }

    /// Writes `files` into `dir` as the plan's user on the user-filesystem
    /// thread, waiting at most `wait` (see [`UserIo::deliver`]).
    pub fn deliver(
        &self,
        dir: &std::path::Path,
        files: Vec<(String, Vec<u8>)>,
        wait: Duration,
        late_record: Option<PathBuf>,
    ) -> Delivery {
        match &self.io {
            Some(io) => io.deliver(dir, files, wait, late_record),
            None => Delivery::Failed(vec!["no user-filesystem thread to write with".into()]),
        }
    }
}

/// The timeline as spans of energy, for weighting an hourly intensity.
fn energy_spans(snap: &Snapshot) -> Vec<EnergySpan> {
    snap.timeline
        .iter()
        .map(|p| {
            let watts = [p.cpu, p.dram, p.gpu]
                .iter()
                .flatten()
                .map(|w| w.0)
                .sum::<f64>();
            (
                p.start,
                p.start + p.duration,
                Joules(watts * p.duration.as_secs_f64()),
            )
        })
        .collect()
}

/// The rows of a snapshot. An hourly intensity file is never read here: it
/// is the table the user-filesystem thread last read (`hourly`), or, with
/// none yet, the fallback.
fn rows_of(plan: &Plan, snap: &Snapshot, hourly: Option<&HourlyRead>) -> (Vec<Row>, Resolved) {
    let cfg = &plan.config;
    let window = (snap.start, snap.end);
    // The live source is the epilog's; here its fallback stands in.
    let intensity = match &cfg.intensity {
        // Only an hourly file weighs the timeline; building its spans for
        // any other source would cost a 7-day job 0.4 MB at every refresh.
        IntensitySpec::File(path) => {
            let not_yet = Err("not read yet".to_string());
            let table = hourly.map_or(not_yet.as_ref(), |t| t.as_ref().as_ref());
            resolve_read(
                path,
                table,
                &cfg.intensity_fallback(),
                window,
                &energy_spans(snap),
            )
        }
        spec => resolve(spec, &cfg.intensity_fallback(), window, &[]),
    };
    let fp = NodeFootprint {
        job_id: plan.job_id.clone(),
        node: plan.node.clone(),
        start: snap.start,
        end: snap.end,
        devices: snap.devices.clone(),
    };
    (node_rows(&fp, cfg.pue, &intensity), intensity)
}

fn epoch_marks(snap: &Snapshot, marks: &[Mark]) -> Vec<EpochMark> {
    marks
        .iter()
        .map(|m| EpochMark {
            at: m.at.duration_since(snap.start).unwrap_or_default(),
            cumulative_energy: m.energy,
        })
        .collect()
}

/// The look-back of the final summary's greener start.
const GREENER_LOOKBACK: Duration = Duration::from_secs(24 * 3600);

/// The final summary's greener-start line, with an hourly file only: the
/// run's own profile moved over the 24 h before its start.
fn greener_line(
    plan: &Plan,
    snap: &Snapshot,
    rows: &[Row],
    hourly: Option<&HourlyRead>,
) -> Option<String> {
    if !matches!(plan.config.intensity, IntensitySpec::File(_)) {
        return None;
    }
    let table = match hourly.map(|h| h.as_ref().as_ref()) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            return Some(format!(
                "Greener start: not computed: the intensity file could not be read ({e})."
            ));
        }
        None => return None,
    };
    let profile = greener::Profile::measured(snap.start, snap.end, &energy_spans(snap));
    let candidates = greener::hours_before(snap.start, GREENER_LOOKBACK);
    let choice = greener::best_start(table, &profile, snap.start, &candidates);
    let Some(co2e) = crate::footprint::total_of(rows).and_then(|t| t.co2e_g) else {
        return Some("Greener start: not computed: no energy was measured.".to_string());
    };
    Some(greener::summary_line(
        choice.as_ref(),
        Some(co2e),
        GREENER_LOOKBACK,
    ))
}

/// The summary text: the live one as of `now`, or the final one (`None`),
/// with the budget (a line at the top once over it) and a greener start.
#[allow(clippy::too_many_arguments)]
fn summary(
    plan: &Plan,
    snap: &Snapshot,
    rows: &[Row],
    intensity: &Resolved,
    marks: &[Mark],
    time_limit: Option<Duration>,
    now: Option<SystemTime>,
    extras: &Extras,
) -> String {
    let body = summary_body(plan, snap, rows, intensity, marks, time_limit, now);
    let mut top = String::new();
    let mut tail = String::new();
    if let Some(b) = &extras.budget {
        if let Some(a) = b.standing.as_ref().and_then(Standing::alert) {
            top = format!("{a}\n");
        }
        tail.push('\n');
        let lines = match &b.standing {
            Some(st) => st.lines(now.is_none()),
            None => crate::carbon::budget::unknown_lines(b.budget),
        };
        for l in lines {
            tail.push_str(&l);
            tail.push('\n');
        }
        if let Some(t) = b.first_over {
            tail.push_str(&format!(
                "  The prediction first exceeded the budget at {}.\n",
                humantime::format_rfc3339_seconds(t)
            ));
        }
    }
    if let Some(g) = &extras.greener {
        tail.push('\n');
        tail.push_str(g);
        tail.push('\n');
    }
    format!("{top}{body}{tail}")
}

fn summary_body(
    plan: &Plan,
    snap: &Snapshot,
    rows: &[Row],
    intensity: &Resolved,
    marks: &[Mark],
    time_limit: Option<Duration>,
    now: Option<SystemTime>,
) -> String {
    with_input(
        plan,
        snap,
        rows,
        intensity,
        marks,
        time_limit,
        |input| match now {
            Some(now) => render_live(input, now),
            None => render_final(input),
        },
    )
}

/// The run's epochs as the prediction reads them: from the start of
/// measuring, `marks` after it; `None` without `--carbon-epochs`.
fn epoch_progress<'a>(plan: &Plan, marks: &'a [EpochMark]) -> Option<EpochProgress<'a>> {
    plan.epochs.map(|total| EpochProgress {
        total_epochs: total,
        before_pred: plan.config.epochs_before_pred,
        start: EpochMark {
            at: Duration::ZERO,
            cumulative_energy: Joules::ZERO,
        },
        marks,
    })
}

/// What the summaries are rendered from.
fn with_input<R>(
    plan: &Plan,
    snap: &Snapshot,
    rows: &[Row],
    intensity: &Resolved,
    marks: &[Mark],
    time_limit: Option<Duration>,
    render: impl FnOnce(&SummaryInput) -> R,
) -> R {
    let marks = epoch_marks(snap, marks);
    let input = SummaryInput {
        job_id: &plan.job_id,
        rows,
        elapsed: snap.duration,
        time_limit,
        pue: plan.config.pue,
        intensity,
        epochs: epoch_progress(plan, &marks),
        attribution: plan.shares.method(),
    };
    render(&input)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows whose sampler stopped well before it was asked to are never
    /// `ok`; within the last interval or two they are left as they are.
    #[test]
    fn rows_cut_short_say_how_far_they_go() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let snap = |end_s: u64, problem: Option<&str>| Snapshot {
            start: t0,
            end: t0 + Duration::from_secs(end_s),
            duration: Duration::from_secs(end_s),
            samples: end_s,
            devices: Vec::new(),
            timeline: Default::default(),
            timeline_bucket: Duration::from_secs(60),
            problem: problem.map(str::to_string),
            given_up: Vec::new(),
            sampler_cpu: None,
        };
        let row = |status: &str| Row {
            job_id: "1".into(),
            node: "n".into(),
            component: "cpu".into(),
            device: "package-0".into(),
            start: String::new(),
            end: String::new(),
            duration_s: 0.0,
            share: Some(1.0),
            energy_j: Some(1.0),
            pue: 1.0,
            energy_kwh: None,
            intensity_g_per_kwh: None,
            co2e_g: None,
            status: status.into(),
            intensity_source: String::new(),
        };
        let asked = t0 + Duration::from_secs(100);
        let interval = Duration::from_secs(1);
        let cut = "incomplete: measured until 2027-01-15T08:01:04Z";
        for (end_s, problem, before, after) in [
            (100, None, "ok", "ok"),
            // Two intervals and a second of slack.
            (97, None, "ok", "ok"),
            (64, None, "ok", cut),
            (
                64,
                None,
                "incomplete: GPU 1 stopped answering at x",
                "incomplete: GPU 1 stopped answering at x",
            ),
            (64, None, "unavailable: no RAPL", "unavailable: no RAPL"),
            (
                100,
                Some("panicked"),
                "ok",
                "incomplete: measured until 2027-01-15T08:01:40Z",
            ),
        ] {
            let mut rows = vec![row(before)];
            mark_cut_short(&mut rows, &snap(end_s, problem), asked, interval);
            assert_eq!(rows[0].status, after, "end {end_s} s, problem {problem:?}");
        }
    }
    use crate::ffi::identity::euid;

    /// A directory the user cannot write: the live summary fails with every
    /// refresh, and the final files for the same reason. That is said once
    /// per file by whoever writes the final files, not again for the live one.
    #[test]
    fn a_live_summary_failing_like_the_final_files_is_not_said_twice() {
        if euid() != 0 {
            eprintln!("skipped: writing as another user needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("ct-tracker-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for final_files in [true, false] {
            let cfg = Config {
                interval: Duration::from_millis(10),
                powercap: dir.join("no-powercap"),
                nvml: dir.join("no-libnvidia-ml.so"),
                ..Config::default()
            };
            let mut plan = Plan::new("7", "node1", cfg);
            plan.user = Some(FsIdentity {
                uid: 65534,
                gid: 65534,
                groups: vec![],
            });
            plan.output = Output::WorkDir(dir.clone());
            plan.refresh = Duration::from_millis(20);
            plan.final_files = final_files;
            let (tracker, _) = Tracker::start(plan).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let done = tracker.finish();
            let live = done.live_summary_problem.unwrap_or_default();
            assert!(
                live.starts_with("live summary not written: ")
                    && live.contains("carbontrack-7.txt"),
                "{live}"
            );
            let said: Vec<&str> = done.problems.iter().map(String::as_str).collect();
            if final_files {
                assert_eq!(said.len(), 3, "{said:#?}");
                assert!(said[0].contains("carbontrack-7.csv"), "{said:#?}");
                assert!(said[1].contains("carbontrack-7.txt"), "{said:#?}");
                assert!(said[2].contains("carbontrack-7.svg"), "{said:#?}");
            } else {
                assert!(said.is_empty(), "{said:#?}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
