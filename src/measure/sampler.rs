//! The sampler: one small thread that reads every meter at a fixed interval,
//! keeps the running energy per device and a bounded timeline, and can be
//! asked for a snapshot at any time.
//!
//! Lifecycle: [`Sampler::start`] takes the first sample (the baseline) on the
//! caller's thread, so a snapshot is valid as soon as it returns, then starts
//! the thread; [`Sampler::stop`] wakes it at once (no sleeping out the
//! interval), lets it take a last sample, and waits a bounded time for it.
//!
//! Steady state allocates nothing per sample: meters read into stack buffers,
//! the timeline is only touched when a bucket closes (once a minute by
//! default) and totals with device names are only built for snapshots,
//! refreshes and observers that ask. `tests/fixtures/tests/sampler_alloc.rs`
//! checks this with a counting allocator.
//!
//! The thread also reports what it costs ([`Snapshot::sampler_cpu`]), read
//! from the OS at its start, its refreshes and its stop, never per sample.
//!
//! Memory stays flat over a long job: the timeline's storage is reserved at
//! its cap once (pages are only touched as points arrive), a point is 32
//! bytes, merging happens in place, and snapshots share the stored points
//! through an `Arc` instead of copying them. The sampler copies them only when
//! a point closes while a caller still holds an older snapshot.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::measure::{Component, DeviceEnergy, Meter, Status};
use crate::units::{Joules, Watts};

/// The largest timeline cap accepted: 2^20 points are 32 MiB, reserved at
/// start.
pub const MAX_TIMELINE_CAP: usize = 1 << 20;

/// How the sampler runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerOptions {
    /// Time between samples.
    pub interval: Duration,
    /// Length of a timeline point (doubled each time the timeline is full).
    pub bucket: Duration,
    /// How often [`Observer::on_refresh`] gets a snapshot.
    pub refresh: Duration,
    /// Most timeline points kept; when full, neighbours are merged in pairs
    /// (and `bucket` doubles). The default holds 7 days of minutes, or
    /// 2.8 hours of seconds before the first merge.
    pub timeline_cap: usize,
    /// How long [`Sampler::stop`] waits for the last sample, all told.
    pub join_timeout: Duration,
    /// A meter call older than this is taken as one that will not return:
    /// the meter is given up on and a fresh thread samples the others. Also
    /// how often the watchdog looks.
    pub stall_after: Duration,
    /// The thread's stack: meters and observers do little, and the thread
    /// lives inside slurmstepd, so it stays far below the 8 MiB default.
    pub stack_size: usize,
    /// The thread's name (at most 15 bytes show in `/proc`).
    pub thread_name: String,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            interval: Duration::from_secs(1),
            bucket: Duration::from_secs(60),
            refresh: Duration::from_secs(60),
            timeline_cap: 7 * 24 * 60,
            join_timeout: Duration::from_secs(2),
            stall_after: Duration::from_secs(5),
            stack_size: 256 * 1024,
            thread_name: "carbontrack".to_string(),
        }
    }
}

/// Average power per component over one stretch of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelinePoint {
    /// Wall time of the sample that opened the point.
    pub start: SystemTime,
    pub duration: Duration,
    /// `None` when no device of that component was measured.
    pub cpu: Option<Watts>,
    pub dram: Option<Watts>,
    pub gpu: Option<Watts>,
}

/// A snapshot's timeline: the completed points, shared with the sampler
/// rather than copied, then the open point up to the snapshot's last sample.
/// Read it with [`Timeline::iter`].
#[derive(Clone)]
pub struct Timeline {
    base: SystemTime,
    points: Arc<Vec<Packed>>,
    open: Option<Packed>,
}

impl Timeline {
    /// Number of points, the open one included.
    pub fn len(&self) -> usize {
        self.points.len() + usize::from(self.open.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The points in time order.
    pub fn iter(&self) -> impl Iterator<Item = TimelinePoint> + '_ {
        self.points
            .iter()
            .chain(self.open.as_ref())
            .map(|p| p.unpack(self.base))
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            base: SystemTime::UNIX_EPOCH,
            points: Arc::default(),
            open: None,
        }
    }
}

impl PartialEq for Timeline {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Bytes a stored timeline point takes (for memory bounds).
pub const STORED_POINT_BYTES: usize = size_of::<Packed>();

/// A timeline point as stored: 32 bytes instead of [`TimelinePoint`]'s 80,
/// so a 7-day timeline of minutes is 0.32 MB. Nanoseconds keep durations
/// exact; `f32` keeps watts to 7 significant digits, far finer than any
/// meter reads.
#[derive(Debug, Clone, Copy)]
struct Packed {
    /// Start in ns after the timeline's base; negative after the wall clock
    /// stepped back.
    start_ns: i64,
    duration_ns: u64,
    /// Average watts of cpu, dram, gpu; NaN for not measured.
    watts: [f32; 3],
}

impl Packed {
    fn unpack(&self, base: SystemTime) -> TimelinePoint {
        let magnitude = Duration::from_nanos(self.start_ns.unsigned_abs());
        let start = if self.start_ns >= 0 {
            base.checked_add(magnitude)
        } else {
            base.checked_sub(magnitude)
        };
        let w = |i: usize| {
            let v = self.watts[i];
            (!v.is_nan()).then_some(Watts(f64::from(v)))
        };
        TimelinePoint {
            start: start.unwrap_or(base),
            duration: Duration::from_nanos(self.duration_ns),
            cpu: w(0),
            dram: w(1),
            gpu: w(2),
        }
    }
}

/// Nanoseconds from `base` to `t`, negative when `t` is earlier.
fn offset_ns(base: SystemTime, t: SystemTime) -> i64 {
    let clamp = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    match t.duration_since(base) {
        Ok(d) => clamp(d),
        Err(e) => -clamp(e.duration()),
    }
}

fn pack_watts(w: Option<Watts>) -> f32 {
    // Rounding to the nearest f32 is the point of packing.
    #[allow(clippy::cast_possible_truncation)]
    w.map_or(f32::NAN, |w| w.0 as f32)
}

/// The energy so far, as of the last sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Wall time of the first sample (the baseline).
    pub start: SystemTime,
    /// Wall time of the last sample.
    pub end: SystemTime,
    /// Monotonic time from the first to the last sample; prefer it to
    /// `end - start`, which a clock step would distort.
    pub duration: Duration,
    pub samples: u64,
    pub devices: Vec<DeviceEnergy>,
    /// Completed points, then the open one up to the last sample.
    pub timeline: Timeline,
    /// The current length of a completed point (grows when the timeline is
    /// merged to stay within its cap).
    pub timeline_bucket: Duration,
    /// Set when sampling as a whole failed (a sampler thread panicked
    /// outside the meters, or no thread could be had): the figures stop at
    /// the last sample completed.
    pub problem: Option<String>,
    /// Meters given up on during the run, one line each (`GPU 1 stopped
    /// answering at …`, `RAPL failed (panicked: …)`); their rows say so too,
    /// the others are measured in full.
    pub given_up: Vec<String>,
    /// The sampler thread's own CPU time, as of its last refresh (once a
    /// minute by default) or its stop, not as of the last sample: reading the
    /// clock is a system call, which the thread keeps out of its per-sample
    /// work. After [`Sampler::stop`] it covers the whole thread. `None` where
    /// the clock could not be read.
    pub sampler_cpu: Option<SamplerCpu>,
}

/// What the sampler thread has cost: the figure an admin compares with the
/// issue's budget (20 µs a sample) on their own nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerCpu {
    /// CPU time (user + system) of the thread since it started: its samples,
    /// wake-ups, refreshes and start-up, as the scheduler counts them.
    pub used: Duration,
    /// Samples the thread had taken when `used` was read. The baseline sample
    /// is taken on the caller's thread, so it is not among them.
    pub samples: u64,
}

impl SamplerCpu {
    /// Mean CPU time a sample; `None` before the thread's first sample.
    pub fn per_sample(&self) -> Option<Duration> {
        let n = u32::try_from(self.samples).unwrap_or(u32::MAX);
        (n > 0).then(|| self.used / n)
    }
}

/// `sampler CPU 61 ms over 3600 samples (17 µs a sample)`: short enough to
/// ride on the job's final log line.
impl fmt::Display for SamplerCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sampler CPU {}", short_duration(self.used))?;
        match self.per_sample() {
            Some(each) => write!(
                f,
                " over {} sample{} ({} a sample)",
                self.samples,
                if self.samples == 1 { "" } else { "s" },
                short_duration(each)
            ),
            None => f.write_str(" (no samples on its thread)"),
        }
    }
}

/// Two or three significant digits in the unit that fits: µs, ms or s.
fn short_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    let (v, unit) = if us < 1e3 {
        (us, "µs")
    } else if us < 1e6 {
        (us / 1e3, "ms")
    } else {
        (us / 1e6, "s")
    };
    if v < 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

impl Snapshot {
    /// Energy attributed to the job over all measured devices.
    pub fn total(&self) -> Joules {
        self.devices.iter().filter_map(|d| d.energy).sum()
    }

    /// Energy of one component, `None` when no device of it was measured.
    pub fn component(&self, c: Component) -> Option<Joules> {
        sum_component(&self.devices, c)
    }
}

fn sum_component(devices: &[DeviceEnergy], c: Component) -> Option<Joules> {
    devices
        .iter()
        .filter(|d| d.component == c)
        .filter_map(|d| d.energy)
        .reduce(|a, b| a + b)
}

/// Called on the sampler thread; keep both cheap, never block for long, and
/// never touch a user's filesystem here (a hung NFS server would stop the
/// sampling; `crate::tracker` does that on a thread of its own).
pub trait Observer: Send {
    /// After every sample. [`Tick::total`] sums the energies kept from the
    /// sample; it allocates nothing.
    fn on_sample(&mut self, _tick: &mut Tick<'_>) {}
    /// Every `refresh` period and once more after the last sample.
    fn on_refresh(&mut self, _snap: &Snapshot) {}
}

/// The sample just taken, handed to [`Observer::on_sample`].
pub struct Tick<'a> {
    /// Wall time of the sample.
    pub at: SystemTime,
    /// Samples so far, this one included.
    pub samples: u64,
    slots: &'a [Slot],
}

impl Tick<'_> {
    /// Energy attributed to the job so far, over all measured devices.
    pub fn total(&mut self) -> Joules {
        total_of(self.slots)
    }
}

/// Why [`Sampler::stop`] could not have a last sample taken.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(
        "the sampler did not finish within {} s of being asked to stop, even on a fresh \
         thread; the figures stop at its last sample",
        waited.as_secs_f64()
    )]
    Hung {
        waited: Duration,
        /// The newest figures that could be had without waiting for it.
        last: Option<Box<Snapshot>>,
    },
}

/// A running sampler; dropping it stops it as [`Sampler::stop`] would.
///
/// A meter call that never returns (NVML when a GPU falls off the bus, a
/// sysfs read on a sick node) must not stop the others: each meter sits in a
/// [`Slot`] of its own, a watchdog thread (awake once per `stall_after`)
/// notices a call older than that, marks its meter stuck as of the call's
/// start, and hands the schedule to a fresh sampler thread, which skips the
/// stuck meter. The stuck thread is left to its call: when it returns it
/// sees it was retired and ends without touching anything but its own meter.
/// Energy counters of the other meters bridge the pause; nothing is lost.
pub struct Sampler {
    shared: Arc<Shared>,
    /// The first sampler thread: joined at stop when it is the one that ended.
    handle: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
    join_timeout: Duration,
}

/// The job's energy so far, as of the last sample; see [`Sampler::probe`].
#[derive(Clone)]
pub struct EnergyProbe(Arc<Shared>);

impl EnergyProbe {
    pub fn total(&self) -> Joules {
        total_of(&self.0.slots)
    }

    /// When the newest sample was taken and the job's energy as of it
    /// (`None` before the first): where an epoch mark written at a known
    /// time is placed from.
    pub fn sampled(&self) -> Option<(SystemTime, Joules)> {
        let inner = lock(&self.0.inner);
        let (_, wall) = inner.last?;
        Some((wall, total_of(&self.0.slots)))
    }
}

/// One meter, and what is known of it without asking it.
struct Slot {
    meter: Mutex<Box<dyn Meter>>,
    /// Its devices' energies after its last sample ([`Meter::energies`]);
    /// never held across a device call.
    energies: Mutex<Vec<Option<Joules>>>,
    /// Its rows as last read in full (at the start, refreshes, snapshots),
    /// for when it cannot be asked.
    rows: Mutex<Vec<DeviceEnergy>>,
    /// The call in progress: the generation of the thread making it in the
    /// top 16 bits, when it began (ms after the baseline, plus one) below;
    /// 0 while none is. Cleared only by the thread that set it.
    busy: AtomicU64,
    /// Whether it is given up on, or was and came back.
    state: Mutex<SlotState>,
    /// Names the meter in a status (`GPU 1`, `RAPL`).
    label: String,
    /// Whether a pause in its reads loses nothing (energy counters).
    bridges_gaps: bool,
}

#[derive(Default)]
struct SlotState {
    /// Given up on: when its last call began, and what happened
    /// (`stopped answering`, `failed`).
    out: Option<(SystemTime, &'static str)>,
    /// It panicked: never asked again.
    failed: bool,
    /// The longest stretch it did not answer and then came back from.
    came_back: Option<(SystemTime, Duration)>,
}

const BUSY_MS_BITS: u32 = 48;

struct Shared {
    slots: Vec<Slot>,
    inner: Mutex<Inner>,
    control: Mutex<Control>,
    wake: Condvar,
    /// The observer, shared by the successive sampler threads; a thread stuck
    /// inside it keeps it, and its successor goes on without.
    observer: Mutex<Option<Box<dyn Observer>>>,
    /// Which sampler thread is the current one; a retired one sees it change.
    generation: AtomicU32,
    /// When the current thread last went round its loop, ns after `t0`.
    heartbeat: AtomicU64,
    /// The final figures are taken: a call that returns after this changes
    /// nothing.
    stopped: AtomicBool,
    t0: Instant,
    wall0: SystemTime,
    opts: SamplerOptions,
}

#[derive(Default)]
struct Control {
    /// The current thread has blocked signals and is about to wait.
    running: bool,
    stop: bool,
    /// The current thread has ended.
    done: bool,
}

struct Inner {
    samples: u64,
    first: Option<(Instant, SystemTime)>,
    last: Option<(Instant, SystemTime)>,
    timeline: Buckets,
    problem: Option<String>,
    given_up: Vec<String>,
    /// Set by the sampler threads only (see [`Snapshot::sampler_cpu`]).
    sampler_cpu: Option<SamplerCpu>,
    /// CPU time of sampler threads retired before the current one.
    cpu_base: Duration,
}

/// Poisoning only means a meter panicked mid-sample; the totals are still the
/// best there is, so use them.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tries `m` for up to `wait`, never blocking longer: a meter's lock may be
/// held by a thread stuck in a device call.
fn lock_within<T: ?Sized>(m: &Mutex<T>, wait: Duration) -> Option<MutexGuard<'_, T>> {
    let until = Instant::now() + wait;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

/// At most this long [`Sampler::start`] waits for the baseline.
const START_WAIT: Duration = Duration::from_secs(2);

/// How long a snapshot waits for a meter in the middle of a sample.
const SLOT_WAIT: Duration = Duration::from_millis(100);

fn total_of(slots: &[Slot]) -> Joules {
    slots
        .iter()
        .map(|s| lock(&s.energies).iter().flatten().copied().sum::<Joules>())
        .sum()
}

/// Energy per component from the kept energies, without asking any meter.
fn energy_of_slots(slots: &[Slot]) -> [Option<Joules>; 3] {
    let mut out = [None; 3];
    for s in slots {
        let rows = lock(&s.rows);
        let energies = lock(&s.energies);
        for (row, e) in rows.iter().zip(energies.iter()) {
            if let (Some(e), Some(i)) = (e, COMPONENTS.iter().position(|&c| c == row.component)) {
                out[i] = Some(out[i].unwrap_or(Joules::ZERO) + *e);
            }
        }
    }
    out
}

impl Slot {
    fn new(meter: Box<dyn Meter>) -> Slot {
        let label = meter.label();
        let bridges_gaps = meter.bridges_gaps();
        // The rows of a meter not yet sampled name its devices (no device
        // is asked: `totals` reads what the meter holds), so even a meter
        // that never answers has its rows.
        let mut rows = Vec::new();
        meter.totals(&mut rows);
        Slot {
            meter: Mutex::new(meter),
            energies: Mutex::new(Vec::new()),
            rows: Mutex::new(rows),
            busy: AtomicU64::new(0),
            state: Mutex::new(SlotState::default()),
            label,
            bridges_gaps,
        }
    }

    fn given_up(&self) -> bool {
        lock(&self.state).out.is_some()
    }

    /// Samples the meter unless it is given up on or another thread is in a
    /// call on it (a retired thread whose call has not returned: never
    /// waited for). An error when it panicked: it is then given up on for
    /// good, and the others go on.
    fn sample(&self, shared: &Shared, now: Instant, generation: u32) -> Result<(), String> {
        if self.given_up() {
            return Ok(());
        }
        let Some(mut m) = lock_within(&self.meter, Duration::ZERO) else {
            return Ok(());
        };
        // The sample's time stands for the call's: the calls of one sample
        // run back to back, and one clock read a sample is cheaper.
        let ms = u64::try_from(now.saturating_duration_since(shared.t0).as_millis())
            .unwrap_or(u64::MAX)
            .min((1 << BUSY_MS_BITS) - 2);
        let stamp = (u64::from(generation & 0xffff) << BUSY_MS_BITS) | (ms + 1);
        self.busy.store(stamp, Ordering::SeqCst);
        let result = catch_unwind(AssertUnwindSafe(|| m.sample(now)));
        let _ = self
            .busy
            .compare_exchange(stamp, 0, Ordering::SeqCst, Ordering::SeqCst);
        if shared.stopped.load(Ordering::SeqCst) {
            // The run's figures are final; a late answer is not one of them.
            return Ok(());
        }
        match result {
            Ok(()) => {
                let mut st = lock(&self.state);
                if let Some((at, _)) = st.out.take() {
                    // A call given up on returned at last: the meter is
                    // read again from the next sample on.
                    let away = SystemTime::now().duration_since(at).unwrap_or_default();
                    if st.came_back.is_none_or(|(_, d)| away > d) {
                        st.came_back = Some((at, away));
                    }
                }
                drop(st);
                m.energies(&mut lock(&self.energies));
                Ok(())
            }
            Err(panic) => {
                let what = panic_text(&*panic);
                let mut st = lock(&self.state);
                st.failed = true;
                st.out = Some((SystemTime::now(), "failed"));
                Err(format!("{} failed (panicked: {what})", self.label))
            }
        }
    }

    /// Appends the meter's rows: asked directly when it is free within
    /// `wait`, else from what was kept (marked, when it is given up on).
    fn rows_into(&self, out: &mut Vec<DeviceEnergy>, wait: Duration) {
        let state = {
            let st = lock(&self.state);
            (st.out, st.came_back)
        };
        let from = out.len();
        match (state.0, lock_within(&self.meter, wait)) {
            (None, Some(m)) => {
                m.totals(out);
                drop(m);
                *lock(&self.rows) = out[from..].to_vec();
            }
            (out_since, _) => {
                let rows = lock(&self.rows);
                let energies = lock(&self.energies);
                for (i, r) in rows.iter().enumerate() {
                    let mut r = r.clone();
                    let kept = energies.get(i).copied().flatten();
                    match out_since {
                        Some((at, what)) => {
                            let why = format!(
                                "{} {what} at {}",
                                self.label,
                                humantime::format_rfc3339_seconds(at)
                            );
                            r.energy = kept.or(r.energy);
                            r.status = match r.energy {
                                Some(_) => Status::Incomplete(why),
                                None => Status::Unavailable(why),
                            };
                        }
                        None if r.energy.is_some() => r.energy = kept.or(r.energy),
                        None => {}
                    }
                    out.push(r);
                }
            }
        }
        // A meter that came back from a pause it cannot bridge says so.
        if let (None, Some((at, away))) = state
            && !self.bridges_gaps
        {
            for r in &mut out[from..] {
                if r.status == Status::Ok {
                    r.status = Status::Incomplete(format!(
                        "{} did not answer for {:.0} s from {}",
                        self.label,
                        away.as_secs_f64(),
                        humantime::format_rfc3339_seconds(at)
                    ));
                }
            }
        }
    }

    /// The wall time of the call in progress, if it began `stall` ago or
    /// more.
    fn stalled(&self, shared: &Shared, stall: Duration) -> Option<SystemTime> {
        let busy = self.busy.load(Ordering::SeqCst);
        if busy == 0 || self.given_up() {
            return None;
        }
        let began = Duration::from_millis((busy & ((1 << BUSY_MS_BITS) - 1)) - 1);
        (Instant::now().saturating_duration_since(shared.t0 + began) >= stall)
            .then(|| shared.wall0 + began)
    }

    /// Gives the meter up as of `at`, unless it has been already.
    fn give_up(&self, at: SystemTime) {
        let mut st = lock(&self.state);
        if st.out.is_none() {
            st.out = Some((at, "stopped answering"));
        }
    }
}

fn since_ns(t0: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(t0).as_nanos()).unwrap_or(u64::MAX)
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

impl Sampler {
    /// Takes the baseline sample now and starts the thread.
    pub fn start(
        meters: Vec<Box<dyn Meter>>,
        opts: SamplerOptions,
        observer: Option<Box<dyn Observer>>,
    ) -> std::io::Result<Sampler> {
        let invalid = |what| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        if opts.interval.is_zero() {
            return Err(invalid("sampler interval must be positive"));
        }
        if opts.bucket.is_zero() || opts.refresh.is_zero() || opts.stall_after.is_zero() {
            return Err(invalid(
                "timeline bucket, refresh period and stall time must be positive",
            ));
        }
        if !(2..=MAX_TIMELINE_CAP).contains(&opts.timeline_cap) {
            return Err(invalid("timeline cap must be from 2 to 2^20 points"));
        }
        let inner = Inner {
            samples: 0,
            first: None,
            last: None,
            timeline: Buckets::new(opts.bucket, opts.timeline_cap),
            problem: None,
            given_up: Vec::new(),
            sampler_cpu: None,
            cpu_base: Duration::ZERO,
        };
        let t0 = Instant::now();
        let join_timeout = opts.join_timeout;
        let shared = Arc::new(Shared {
            slots: meters.into_iter().map(Slot::new).collect(),
            inner: Mutex::new(inner),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            observer: Mutex::new(observer),
            generation: AtomicU32::new(0),
            heartbeat: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            t0,
            wall0: SystemTime::now(),
            opts,
        });
        // The thread takes the baseline: no device is asked on the caller's
        // thread (slurmstepd's main thread), where a call that never returns
        // would hang the step.
        let handle = spawn_worker(&shared, 0)?;
        let watchdog = {
            let for_dog = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(watchdog_name(&shared.opts.thread_name))
                .stack_size(64 * 1024)
                .spawn(move || watch(&for_dog))
                .map_err(|e| {
                    // Said once with the figures: sampling goes on, but a
                    // device that stops answering would not be given up on.
                    lock(&shared.inner).given_up.push(format!(
                        "no watchdog thread ({e}): a device that stopped answering would hold \
                         up the others"
                    ));
                })
                .ok()
        };
        // Return once the thread has taken the baseline, so callers and tests
        // see a fully started sampler; bounded, since a device may not answer
        // (the watchdog then goes on without it).
        shared.wait_for(join_timeout.min(START_WAIT), |c| c.running || c.done);
        Ok(Sampler {
            shared,
            handle: Some(handle),
            watchdog,
            join_timeout,
        })
    }

    /// The totals as of the last sample, without stopping the thread. Waits at
    /// most briefly for a sample in progress, never for a stuck meter.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot(SLOT_WAIT)
    }

    /// A handle that gives the job's energy so far from any thread, without
    /// waiting for a meter (for epoch marks taken off the sampler thread).
    pub fn probe(&self) -> EnergyProbe {
        EnergyProbe(Arc::clone(&self.shared))
    }

    /// Stops the thread after one last sample and returns the final figures.
    pub fn stop(mut self) -> Result<Snapshot, StopError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<Snapshot, StopError> {
        let Some(handle) = self.handle.take() else {
            // Already stopped (only `Drop` gets here).
            return Err(StopError::Hung {
                waited: Duration::ZERO,
                last: None,
            });
        };
        let asked = Instant::now();
        lock(&self.shared.control).stop = true;
        self.shared.wake.notify_all();
        // Half the time for the current thread's last sample; if a meter
        // holds it, a fresh thread takes the last sample of the others.
        let half = self.join_timeout / 2;
        let mut done = self.shared.wait_for(half, |c| c.done);
        if !done {
            let stuck = self
                .shared
                .slots
                .iter()
                .filter_map(|s| s.stalled(&self.shared, half).map(|at| (s, at)))
                .min_by_key(|(_, at)| *at);
            takeover(&self.shared, stuck);
            done = self
                .shared
                .wait_for(self.join_timeout.saturating_sub(half), |c| c.done);
        }
        if let Some(dog) = self.watchdog.take() {
            // It waits on the same condition: it has seen `stop` by now.
            let _ = dog.join();
        }
        if done && self.shared.generation.load(Ordering::SeqCst) == 0 {
            // `done` is the thread's last act: joining now takes no time.
            let _ = handle.join();
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
        let snap = self.shared.snapshot(SLOT_WAIT);
        // The observer goes now, with what it holds, unless a stuck thread is
        // inside it: nothing calls it after the stop.
        if let Ok(mut obs) = self.shared.observer.try_lock() {
            obs.take();
        }
        if done {
            Ok(snap)
        } else {
            Err(StopError::Hung {
                waited: asked.elapsed(),
                last: Some(Box::new(snap)),
            })
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.stop_inner();
        }
    }
}

/// The watchdog's thread name: the sampler's, with `-w` (15 bytes at most).
fn watchdog_name(name: &str) -> String {
    let mut base: String = name.chars().take(13).collect();
    while base.len() > 13 {
        base.pop();
    }
    format!("{base}-w")
}

fn spawn_worker(shared: &Arc<Shared>, generation: u32) -> std::io::Result<JoinHandle<()>> {
    let for_thread = Arc::clone(shared);
    std::thread::Builder::new()
        .name(shared.opts.thread_name.clone())
        .stack_size(shared.opts.stack_size)
        .spawn(move || run(&for_thread, generation))
}

/// Retires the current sampler thread (stuck in `stuck`'s meter, if named;
/// else somewhere outside the meters) and starts a fresh one on the same
/// schedule.
fn takeover(shared: &Arc<Shared>, stuck: Option<(&Slot, SystemTime)>) {
    if let Some((slot, at)) = stuck {
        slot.give_up(at);
        lock(&shared.inner).given_up.push(format!(
            "{} stopped answering at {} (a call did not return within {} s); the other meters \
             went on without it",
            slot.label,
            humantime::format_rfc3339_seconds(at),
            shared.opts.stall_after.as_secs_f64()
        ));
    }
    let next = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
    {
        let mut c = lock(&shared.control);
        c.done = false;
        c.running = false;
    }
    shared
        .heartbeat
        .store(since_ns(shared.t0, Instant::now()), Ordering::Relaxed);
    if spawn_worker(shared, next).is_err() {
        // No thread to be had: the figures stop here, and stop must not wait.
        lock(&shared.inner).problem =
            Some("the sampler thread got stuck and no new thread could be started".into());
        lock(&shared.control).done = true;
        shared.wake.notify_all();
    }
}

/// The watchdog: once per `stall_after`, looks for a meter call older than
/// that, or a sampler thread that stopped going round, and takes over.
fn watch(shared: &Arc<Shared>) {
    let _ = crate::ffi::signals::block_all();
    let stall = shared.opts.stall_after;
    loop {
        if shared.wait_for(stall, |c| c.stop) {
            return;
        }
        let stuck = shared
            .slots
            .iter()
            .filter_map(|s| s.stalled(shared, stall).map(|at| (s, at)))
            .min_by_key(|(_, at)| *at);
        if stuck.is_some() {
            takeover(shared, stuck);
            continue;
        }
        let beat = Duration::from_nanos(shared.heartbeat.load(Ordering::Relaxed));
        let quiet = Instant::now().saturating_duration_since(shared.t0 + beat);
        if quiet > shared.opts.interval + stall && !lock(&shared.control).done {
            takeover(shared, None);
        }
    }
}

impl Shared {
    /// Waits up to `wait` for `cond` on the control state; true once it holds.
    fn wait_for(&self, wait: Duration, cond: impl Fn(&Control) -> bool) -> bool {
        let until = Instant::now() + wait;
        let mut c = lock(&self.control);
        loop {
            if cond(&c) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            c = self
                .wake
                .wait_timeout(c, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn is_current(&self, generation: u32) -> bool {
        self.generation.load(Ordering::SeqCst) == generation
    }

    /// Samples every meter that still answers, then books the sample. False
    /// when this thread was retired meanwhile.
    fn sample(&self, generation: u32) -> bool {
        let now = Instant::now();
        let wall = SystemTime::now();
        for slot in &self.slots {
            if !self.is_current(generation) {
                return false;
            }
            if let Err(problem) = slot.sample(self, now, generation) {
                lock(&self.inner).given_up.push(problem);
            }
        }
        if !self.is_current(generation) {
            return false;
        }
        self.after_sample(now, wall, generation);
        true
    }

    fn after_sample(&self, now: Instant, wall: SystemTime, generation: u32) {
        let samples = {
            let mut inner = lock(&self.inner);
            inner.samples += 1;
            inner.first.get_or_insert((now, wall));
            inner.last = Some((now, wall));
            inner
                .timeline
                .on_sample(now, wall, || energy_of_slots(&self.slots));
            inner.samples
        };
        self.heartbeat
            .store(since_ns(self.t0, now), Ordering::Relaxed);
        if let Some(mut obs) = self.observer.try_lock().ok()
            && self.is_current(generation)
            && let Some(obs) = obs.as_deref_mut()
        {
            obs.on_sample(&mut Tick {
                at: wall,
                samples,
                slots: &self.slots,
            });
        }
    }

    fn snapshot(&self, wait: Duration) -> Snapshot {
        let mut devices = Vec::new();
        for slot in &self.slots {
            slot.rows_into(&mut devices, wait);
        }
        let inner = lock(&self.inner);
        let (first, last) = match (inner.first, inner.last) {
            (Some(f), Some(l)) => (f, l),
            _ => {
                let now = (Instant::now(), SystemTime::now());
                (now, now)
            }
        };
        Snapshot {
            start: first.1,
            end: last.1,
            duration: last.0.saturating_duration_since(first.0),
            samples: inner.samples,
            timeline: inner.timeline.view(last.0, &devices),
            timeline_bucket: inner.timeline.bucket,
            devices,
            problem: inner.problem.clone(),
            given_up: inner.given_up.clone(),
            sampler_cpu: inner.sampler_cpu,
        }
    }

    /// Records the calling (sampler) thread's CPU time, on top of what
    /// retired threads used; called at its start, refreshes and stop only.
    fn read_own_cpu(&self, base: Duration) {
        let mut inner = lock(&self.inner);
        inner.sampler_cpu = crate::ffi::clock::thread_cpu_time().map(|used| SamplerCpu {
            used: base + used,
            // All but the baseline, which the caller's thread took.
            samples: inner.samples.saturating_sub(1),
        });
    }

    /// Builds a snapshot and hands it to the observer.
    fn refresh(&self, generation: u32, base: Duration) {
        // A retired thread's figures are not the current one's.
        if !self.is_current(generation) {
            return;
        }
        self.read_own_cpu(base);
        let snap = self.snapshot(SLOT_WAIT);
        if let Some(mut obs) = self.observer.try_lock().ok()
            && self.is_current(generation)
            && let Some(obs) = obs.as_deref_mut()
        {
            obs.on_refresh(&snap);
        }
    }
}

/// Sets `done` however the current thread ends, panics included, so `stop`
/// never waits for a thread that is gone. A retired thread leaves it be.
struct DoneOnDrop<'a>(&'a Shared, u32);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.0.control);
        if self.0.is_current(self.1) {
            c.done = true;
        }
        drop(c);
        self.0.wake.notify_all();
    }
}

fn run(shared: &Shared, generation: u32) {
    let _done = DoneOnDrop(shared, generation);
    // Process-directed signals must go to slurmstepd's own threads. Failure
    // here is not worth losing the measurement over.
    let _ = crate::ffi::signals::block_all();
    // What the threads before this one used (their last reading).
    let base = {
        let mut inner = lock(&shared.inner);
        let base = inner.sampler_cpu.map_or(inner.cpu_base, |c| c.used);
        inner.cpu_base = base;
        base
    };
    shared.read_own_cpu(base);
    // The baseline, unless a thread before this one took it.
    if lock(&shared.inner).samples == 0 {
        if !shared.sample(generation) {
            return;
        }
        // Each meter's rows as of its first reading, kept for when it can
        // no longer be asked.
        let mut scratch = Vec::new();
        for slot in &shared.slots {
            slot.rows_into(&mut scratch, Duration::ZERO);
        }
    }
    {
        let mut c = lock(&shared.control);
        if shared.is_current(generation) {
            c.running = true;
        }
    }
    shared.wake.notify_all();
    let opts = &shared.opts;
    let t0 = shared.t0;
    let body = AssertUnwindSafe(|| {
        let mut next_refresh = {
            let since = Instant::now().saturating_duration_since(t0);
            let periods = since.as_nanos() / opts.refresh.as_nanos().max(1) + 1;
            t0 + opts
                .refresh
                .saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX))
        };
        loop {
            // Deadlines are multiples of the interval from the baseline, so
            // the schedule does not drift; after an overrun (or when taking
            // over), skip to the next.
            let now = Instant::now();
            let behind = now.duration_since(t0).as_nanos() / opts.interval.as_nanos().max(1);
            let k = u32::try_from(behind + 1).unwrap_or(u32::MAX);
            let deadline = t0 + opts.interval.saturating_mul(k);
            let stopping = wait_until(shared, deadline);
            if !shared.sample(generation) {
                return;
            }
            if stopping {
                break;
            }
            let now = Instant::now();
            if now >= next_refresh {
                while next_refresh <= now {
                    next_refresh += opts.refresh;
                }
                shared.refresh(generation, base);
            }
        }
        shared.refresh(generation, base);
    });
    if let Err(panic) = catch_unwind(body) {
        lock(&shared.inner).problem =
            Some(format!("sampler thread panicked: {}", panic_text(&*panic)));
    }
}

/// Sleeps until `deadline` or a stop request; true when asked to stop.
fn wait_until(shared: &Shared, deadline: Instant) -> bool {
    let mut c = lock(&shared.control);
    loop {
        if c.stop {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        c = shared
            .wake
            .wait_timeout(c, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Per-component average power in buckets, bounded in size.
struct Buckets {
    /// Wall time of the first sample; points store their start from here.
    base: SystemTime,
    /// Completed points, capacity `cap` from the start. Shared with the
    /// snapshots that are still alive.
    points: Arc<Vec<Packed>>,
    cap: usize,
    bucket: Duration,
    /// Where the open point started: its sample and the energy then.
    open: Option<Mark>,
}

#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    wall: SystemTime,
    energy: [Option<Joules>; 3],
}

const COMPONENTS: [Component; 3] = [Component::Cpu, Component::Dram, Component::Gpu];

fn energy_by_component(devices: &[DeviceEnergy]) -> [Option<Joules>; 3] {
    COMPONENTS.map(|c| sum_component(devices, c))
}

impl Buckets {
    fn new(bucket: Duration, cap: usize) -> Buckets {
        Buckets {
            base: SystemTime::UNIX_EPOCH,
            points: Arc::new(Vec::with_capacity(cap)),
            cap,
            bucket,
            open: None,
        }
    }

    /// `energy`: the energy per component now, asked for only when a point
    /// closes.
    fn on_sample(
        &mut self,
        now: Instant,
        wall: SystemTime,
        energy: impl FnOnce() -> [Option<Joules>; 3],
    ) {
        if let Some(m) = self.open
            && now.saturating_duration_since(m.at) < self.bucket
        {
            return;
        }
        let energy = energy();
        match self.open {
            None => self.base = wall,
            Some(m) => {
                if let Some(p) = point(self.base, m, now, energy) {
                    self.push(p);
                }
            }
        }
        self.open = Some(Mark {
            at: now,
            wall,
            energy,
        });
    }

    /// The timeline as of `last`: the stored points, shared, and the open
    /// point from the current totals.
    fn view(&self, last: Instant, devices: &[DeviceEnergy]) -> Timeline {
        Timeline {
            base: self.base,
            points: Arc::clone(&self.points),
            open: self
                .open
                .and_then(|m| point(self.base, m, last, energy_by_component(devices))),
        }
    }

    /// The stored points for appending: copied first (at full capacity) only
    /// when a snapshot still shares them.
    fn points_mut(&mut self) -> &mut Vec<Packed> {
        if Arc::get_mut(&mut self.points).is_none() {
            let mut own = Vec::with_capacity(self.cap);
            own.extend_from_slice(&self.points);
            self.points = Arc::new(own);
        }
        Arc::get_mut(&mut self.points).unwrap_or_else(|| unreachable!("just made unique"))
    }

    fn push(&mut self, p: Packed) {
        let cap = self.cap;
        let full = self.points.len() >= cap;
        if full {
            self.bucket = self.bucket.saturating_mul(2);
        }
        let points = self.points_mut();
        if full {
            merge_pairs(points);
        }
        points.push(p);
    }
}

/// The point from mark `m` to `now` with energies `e`; none for no time.
fn point(base: SystemTime, m: Mark, now: Instant, e: [Option<Joules>; 3]) -> Option<Packed> {
    let duration = now.saturating_duration_since(m.at);
    if duration.is_zero() {
        return None;
    }
    let w = |i: usize| match (m.energy[i], e[i]) {
        (Some(a), Some(b)) => pack_watts((b - a).over(duration)),
        _ => f32::NAN,
    };
    Some(Packed {
        start_ns: offset_ns(base, m.wall),
        duration_ns: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
        watts: [w(0), w(1), w(2)],
    })
}

/// Halves the timeline in place: each pair of neighbours becomes one point
/// holding the same energy over the same time.
fn merge_pairs(points: &mut Vec<Packed>) {
    let halved = points.len().div_ceil(2);
    for i in 0..halved {
        // Reads 2i and 2i + 1, writes i <= 2i: nothing is overwritten unread.
        let a = points[2 * i];
        points[i] = match points.get(2 * i + 1) {
            Some(&b) => merge(a, b),
            None => a,
        };
    }
    points.truncate(halved);
}

fn merge(a: Packed, b: Packed) -> Packed {
    let duration_ns = a.duration_ns.saturating_add(b.duration_ns);
    let avg = |i: usize| {
        let joules =
            |p: &Packed| f64::from(p.watts[i]) * Duration::from_nanos(p.duration_ns).as_secs_f64();
        pack_watts(Joules(joules(&a) + joules(&b)).over(Duration::from_nanos(duration_ns)))
    };
    Packed {
        start_ns: a.start_ns,
        duration_ns,
        watts: [avg(0), avg(1), avg(2)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Status;

    /// A meter whose device draws a fixed power, integrated over the
    /// monotonic time between samples: the truth is power × sampled time.
    struct Steady {
        component: Component,
        watts: f64,
        last: Option<Instant>,
        energy: Joules,
    }

    impl Steady {
        fn boxed(component: Component, watts: f64) -> Box<dyn Meter> {
            Box::new(Steady {
                component,
                watts,
                last: None,
                energy: Joules::ZERO,
            })
        }
    }

    impl Meter for Steady {
        fn sample(&mut self, now: Instant) {
            if let Some(l) = self.last {
                self.energy += Watts(self.watts) * now.duration_since(l);
            }
            self.last = Some(now);
        }
        fn totals(&self, out: &mut Vec<DeviceEnergy>) {
            out.push(DeviceEnergy {
                component: self.component,
                device: format!("{}-steady", self.component),
                share: 1.0,
                energy: Some(self.energy),
                status: Status::Ok,
            });
        }
    }

    fn packed(start_s: i64, secs: u64, cpu: f32, dram: f32, gpu: f32) -> Packed {
        Packed {
            start_ns: start_s * 1_000_000_000,
            duration_ns: secs * 1_000_000_000,
            watts: [cpu, dram, gpu],
        }
    }

    #[test]
    fn merging_keeps_energy_and_time() {
        let nan = f32::NAN;
        let mut pts = vec![
            packed(0, 60, 10.0, nan, 20.0),
            packed(60, 180, 30.0, nan, 60.0),
            packed(240, 60, 50.0, nan, 100.0),
        ];
        let third = pts[2];
        merge_pairs(&mut pts);
        assert_eq!(pts.len(), 2);
        let base = SystemTime::UNIX_EPOCH;
        let m = pts[0].unpack(base);
        assert_eq!(m.start, base);
        assert_eq!(m.duration, Duration::from_secs(240));
        // (10 × 60 + 30 × 180) / 240 = 25
        assert_eq!(m.cpu, Some(Watts(25.0)));
        assert_eq!(m.gpu, Some(Watts(50.0)));
        assert_eq!(m.dram, None);
        assert_eq!(pts[1].unpack(base), third.unpack(base));
    }

    #[test]
    fn points_pack_and_unpack() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cases = [
            // (start, duration, cpu) → the same back, watts to f32 precision
            (
                base + Duration::from_nanos(1),
                Duration::from_nanos(3),
                Some(Watts(123.5)),
            ),
            (
                base + Duration::from_secs(7 * 86_400),
                Duration::from_secs(60),
                None,
            ),
            // The wall clock stepped back: a start before the base.
            (
                base - Duration::from_millis(1500),
                Duration::from_millis(999),
                Some(Watts(0.0)),
            ),
        ];
        for (start, duration, cpu) in cases {
            let t0 = Instant::now();
            let e = |j: Option<f64>| j.map(Joules);
            let m = Mark {
                at: t0,
                wall: start,
                energy: [e(cpu.map(|_| 5.0)), None, e(Some(1.0))],
            };
            let joules = cpu.map(|w| 5.0 + w.0 * duration.as_secs_f64());
            let p = point(base, m, t0 + duration, [e(joules), None, e(Some(1.0))]).unwrap();
            let got = p.unpack(base);
            assert_eq!((got.start, got.duration), (start, duration));
            assert_eq!(got.dram, None);
            assert_eq!(got.gpu, Some(Watts(0.0)));
            match (got.cpu, cpu) {
                (Some(g), Some(w)) => assert!((g.0 - w.0).abs() <= 1e-6 * w.0.max(1.0), "{g:?}"),
                (g, w) => assert_eq!(g, w),
            }
        }
        assert_eq!(size_of::<Packed>(), 32);
    }

    fn energy_of(meters: &[Box<dyn Meter>]) -> [Option<Joules>; 3] {
        let mut rows = Vec::new();
        for m in meters {
            m.totals(&mut rows);
        }
        energy_by_component(&rows)
    }

    /// Samples every minute for `minutes` minutes; `each` sees the buckets
    /// after every one.
    fn run_buckets(t: &mut Buckets, minutes: u64, t0: Instant, mut each: impl FnMut(&Buckets)) {
        let mut meters = [Steady::boxed(Component::Cpu, 100.0)];
        for i in 0..=minutes {
            let at = t0 + Duration::from_secs(60 * i);
            meters[0].sample(at);
            t.on_sample(
                at,
                SystemTime::UNIX_EPOCH + Duration::from_secs(60 * i),
                || energy_of(&meters),
            );
            each(t);
        }
    }

    #[test]
    fn timeline_stays_within_its_cap() {
        let mut t = Buckets::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        let storage = t.points.as_ptr();
        // Full at 8 min (→ 2-min buckets), at 16 (→ 4), at 32 and again when
        // the 36-min point arrives (→ 8-min buckets).
        run_buckets(&mut t, 40, t0, |t| {
            assert!(t.points.len() <= 8);
            // Reserved once, merged in place: never reallocated.
            assert_eq!((t.points.capacity(), t.points.as_ptr()), (8, storage));
        });
        assert_eq!(t.bucket, Duration::from_secs(480));
        let view = t.view(t.open.unwrap().at, &[]);
        let pts: Vec<TimelinePoint> = view.iter().collect();
        assert_eq!(pts.len(), t.points.len(), "no open point at its own start");
        let covered: Duration = pts.iter().map(|p| p.duration).sum();
        let open = t.open.unwrap().at.duration_since(t0);
        assert_eq!(
            covered, open,
            "points cover the run up to the open one without gaps"
        );
        for w in pts.windows(2) {
            assert_eq!(w[0].start + w[0].duration, w[1].start);
        }
        assert!(pts.iter().all(|p| p.cpu == Some(Watts(100.0))));
    }

    #[test]
    fn a_held_snapshot_keeps_its_points_while_the_sampler_goes_on() {
        let mut t = Buckets::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        run_buckets(&mut t, 5, t0, |_| {});
        let held = t.view(t.open.unwrap().at, &[]);
        let before: Vec<TimelinePoint> = held.iter().collect();
        assert_eq!(before.len(), 5);
        // Shared, not copied, until the next point closes.
        assert!(Arc::ptr_eq(&held.points, &t.points));
        let meters = [Steady::boxed(Component::Cpu, 100.0)];
        for i in 6..=20u64 {
            t.on_sample(
                t0 + Duration::from_secs(60 * i),
                SystemTime::UNIX_EPOCH + Duration::from_secs(60 * i),
                || energy_of(&meters),
            );
        }
        assert!(!Arc::ptr_eq(&held.points, &t.points));
        assert_eq!(held.iter().collect::<Vec<_>>(), before);
        assert_eq!(t.points.capacity(), 8, "the copy is made at full capacity");
        // Full at 8 and again at 17 minutes: 4-minute buckets.
        assert_eq!(t.bucket, Duration::from_secs(240));
    }

    #[test]
    fn sampler_cpu_reads_in_one_phrase() {
        let us = Duration::from_micros;
        for (used, samples, text) in [
            (
                Duration::from_millis(61),
                3600,
                "sampler CPU 61 ms over 3600 samples (17 µs a sample)",
            ),
            (
                us(172),
                4,
                "sampler CPU 172 µs over 4 samples (43 µs a sample)",
            ),
            (
                us(9),
                1,
                "sampler CPU 9.0 µs over 1 sample (9.0 µs a sample)",
            ),
            // A week at 1 s and 20 µs a sample.
            (
                us(604_800 * 20),
                604_800,
                "sampler CPU 12 s over 604800 samples (20 µs a sample)",
            ),
            (
                Duration::from_millis(2500),
                1000,
                "sampler CPU 2.5 s over 1000 samples (2.5 ms a sample)",
            ),
            (us(80), 0, "sampler CPU 80 µs (no samples on its thread)"),
        ] {
            assert_eq!(SamplerCpu { used, samples }.to_string(), text);
        }
    }

    #[test]
    fn rejects_nonsense_options() {
        for opts in [
            SamplerOptions {
                interval: Duration::ZERO,
                ..SamplerOptions::default()
            },
            SamplerOptions {
                timeline_cap: 1,
                ..SamplerOptions::default()
            },
        ] {
            assert!(Sampler::start(Vec::new(), opts, None).is_err());
        }
    }

    #[test]
    fn snapshot_while_running_and_after_stop() {
        let opts = SamplerOptions {
            interval: Duration::from_millis(5),
            bucket: Duration::from_millis(40),
            // No refresh before the stop: the thread's CPU is read at its
            // start and its stop only.
            refresh: Duration::from_secs(3600),
            thread_name: "ct-unit-snap".into(),
            ..SamplerOptions::default()
        };
        let s = Sampler::start(
            vec![
                Steady::boxed(Component::Cpu, 100.0),
                Steady::boxed(Component::Gpu, 50.0),
            ],
            opts,
            None,
        )
        .unwrap();
        let first = s.snapshot();
        assert!(first.samples >= 1);
        while s.snapshot().samples < 30 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mid = s.snapshot();
        let fin = s.stop().unwrap();
        assert!(fin.samples > mid.samples && mid.samples >= 30);
        // The thread's CPU is not read per sample: mid-run it is still the
        // reading at its start; after the stop it covers every sample the
        // thread took, all but the baseline.
        let started = first.sampler_cpu.unwrap();
        assert_eq!(started.samples, 0);
        assert_eq!(mid.sampler_cpu, Some(started));
        let cpu_used = fin.sampler_cpu.unwrap();
        assert_eq!(cpu_used.samples, fin.samples - 1);
        assert!(cpu_used.used > started.used && cpu_used.used > Duration::ZERO);
        // Energy is power × the monotonic time between first and last sample.
        let secs = fin.duration.as_secs_f64();
        let cpu = fin.component(Component::Cpu).unwrap().0;
        assert!((cpu - 100.0 * secs).abs() < 1e-6, "{cpu} vs {secs} s");
        assert!((fin.total().0 - 150.0 * secs).abs() < 1e-6);
        assert_eq!(fin.component(Component::Dram), None);
        // The timeline covers the run and its average matches the totals.
        let covered: Duration = fin.timeline.iter().map(|p| p.duration).sum();
        assert_eq!(covered, fin.duration);
        let tl_cpu: f64 = fin
            .timeline
            .iter()
            .map(|p| p.cpu.unwrap().0 * p.duration.as_secs_f64())
            .sum();
        // Watts are stored as f32: 7 significant digits.
        assert!((tl_cpu - cpu).abs() < 1e-6 * cpu, "{tl_cpu} vs {cpu}");
        assert!(fin.timeline.iter().all(|p| p.dram.is_none()));
        assert!(fin.problem.is_none());
    }
}
