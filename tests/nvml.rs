//! The NVML reader against the fake libnvidia-ml (tests/fake-nvml): measured
//! energy compared with the energy the fake's power profiles inject.
//!
//! Each test copies the fake library into its own directory with its own
//! `fake-nvml.conf`, so tests running side by side load separate copies with
//! separate state. The library is built here (`cargo build -p fake-nvml`) when
//! it is missing, because `cargo test` does not build a workspace cdylib.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carbontrack::measure::gpus::{GpuHints, SelectedBy};
use carbontrack::measure::nvml::{NVML_DEVICE, NvmlLib, NvmlMeter};
use carbontrack::measure::{Component, DeviceEnergy, Meter, Status};
use carbontrack_fixtures::profile::Profile;

use carbontrack_fixtures::fake_nvml::{fake_nvml, newest_driver_sample};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn uuid(n: u32) -> String {
    format!("GPU-{n:08x}-1111-2222-3333-444455556666")
}

/// A GPU section of the fake's configuration.
fn gpu(n: u32, extra: &str) -> String {
    format!("[gpu]\nuuid = {}\nminor = {n}\n{extra}\n", uuid(n))
}

/// Wall-clock bounds (seconds since the fake's epoch) around one call.
#[derive(Clone, Copy, Debug)]
struct Span {
    before: f64,
    after: f64,
}

impl Span {
    fn mid(self) -> f64 {
        (self.before + self.after) / 2.0
    }
}

/// Drives a meter by hand, the way the sampler thread will: a sample at each
/// interval, recording when each one ran.
struct Run {
    epoch: f64,
    opened: Span,
    samples: Vec<Span>,
}

fn run(
    lib: &Path,
    hints: &GpuHints,
    epoch: f64,
    interval: Duration,
    n: u32,
) -> (NvmlMeter, Vec<String>, Run) {
    let start = Instant::now();
    let before = unix_now() - epoch;
    let (mut meter, log) = NvmlMeter::for_job(lib, hints, start);
    let opened = Span {
        before,
        after: unix_now() - epoch,
    };
    let mut samples = Vec::new();
    for k in 1..=n {
        let due = start + interval * k;
        sleep(due.saturating_duration_since(Instant::now()));
        let before = unix_now() - epoch;
        meter.sample(Instant::now());
        samples.push(Span {
            before,
            after: unix_now() - epoch,
        });
    }
    let r = Run {
        epoch,
        opened,
        samples,
    };
    (meter, log, r)
}

fn totals(m: &NvmlMeter) -> Vec<DeviceEnergy> {
    let mut v = Vec::new();
    m.totals(&mut v);
    v
}

fn entry<'a>(all: &'a [DeviceEnergy], uuid: &str) -> &'a DeviceEnergy {
    all.iter()
        .find(|e| e.device == uuid)
        .unwrap_or_else(|| panic!("no entry for {uuid} in {all:?}"))
}

/// How the meter's log says GPU `n` is read (the end of its line).
fn read_as(log: &[String], n: u32) -> &str {
    log.iter()
        .find(|l| l.starts_with(&uuid(n)))
        .unwrap_or_else(|| panic!("no log line for GPU {n}: {log:?}"))
}

fn relative_error(measured: f64, truth: f64) -> f64 {
    (measured - truth).abs() / truth
}

/// Asserts GPU `n` was measured in full and within `bound` (relative) of
/// `truth`; prints both for the test log.
fn assert_within(all: &[DeviceEnergy], n: u32, truth: f64, bound: f64, what: &str) {
    let e = entry(all, &uuid(n));
    assert_eq!(e.status, Status::Ok, "{what}, GPU {n}");
    let measured = e.energy.unwrap().0;
    let err = relative_error(measured, truth);
    eprintln!("{what}, GPU {n}: {measured:.3} J measured, {truth:.3} J injected ({err:.5})");
    assert!(
        err < bound,
        "{what}, GPU {n}: {measured} J vs {truth} J ({err:.4})"
    );
}

#[test]
fn energy_counters_match_injected_energy_within_one_percent() {
    let epoch = unix_now() - 100.0;
    let constant: Profile = "250".parse().unwrap();
    let spiky: Profile = "40@0.9,300@0.1".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}{}{}",
        gpu(0, "power = 250\nenergy = counter"),
        gpu(1, "power = 40@0.9,300@0.1\nenergy = counter"),
        gpu(2, "power = 999\nenergy = counter"),
    );
    let lib = fake_nvml("counters", &config);
    let hints = GpuHints {
        cuda_visible: Some(format!("{},{}", uuid(0), uuid(1))),
        ..GpuHints::default()
    };
    let (meter, log, r) = run(&lib, &hints, epoch, Duration::from_millis(150), 16);
    let all = totals(&meter);
    assert_eq!(all.len(), 2, "GPU 2 is not the job's: {all:?}");
    let last = *r.samples.last().unwrap();
    for (n, profile) in [(0, &constant), (1, &spiky)] {
        let e = entry(&all, &uuid(n));
        assert_eq!(
            (e.component, &e.status, e.share),
            (Component::Gpu, &Status::Ok, 1.0)
        );
        let truth = profile.energy_between(r.opened.mid(), last.mid());
        assert_within(&all, n, truth, 0.01, "counter");
    }
    assert!(
        log.iter()
            .filter(|l| l.starts_with("GPU-"))
            .all(|l| l.ends_with("energy counter")),
        "{log:?}"
    );
    assert_eq!(r.epoch, epoch);
}

#[test]
fn power_only_gpu_on_a_step_load_within_three_percent_at_one_second() {
    // The window opens 0.3 s into the profile and holds ten 1 s samples, so
    // both the step up (5 s) and the step down (10 s) fall inside it.
    let epoch = unix_now() - 0.3;
    let step: Profile = "100@5,300@5".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}{}",
        gpu(0, "power = 100@5,300@5\nenergy = none"),
        gpu(1, "power = 100@5,300@5\nenergy = counter"),
    );
    let lib = fake_nvml("power", &config);
    let (meter, log, r) = run(
        &lib,
        &GpuHints::default(),
        epoch,
        Duration::from_secs(1),
        10,
    );
    let all = totals(&meter);
    let last = *r.samples.last().unwrap();
    let truth = step.energy_between(r.opened.mid(), last.mid());
    assert!(truth > 1500.0, "the window covers both steps: {truth} J");
    for (n, bound) in [(0, 0.03), (1, 0.01)] {
        assert_within(&all, n, truth, bound, "step load");
    }
    assert!(read_as(&log, 0).ends_with("power readings"), "{log:?}");
    assert!(log.iter().any(|l| l.contains("all 2 GPUs")), "{log:?}");
}

#[test]
fn the_driver_buffer_sees_bursts_shorter_than_the_interval() {
    // A 0.1 s burst at 300 W every second, locked to the 1 s interval: one
    // power reading per sample sees the same phase every time, so it counts
    // the burst always or never. The driver's samples every 20 ms see it.
    let epoch = unix_now() - 0.5;
    let spiky: Profile = "40@0.9,300@0.1".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}{}",
        gpu(0, "power = 40@0.9,300@0.1\nenergy = none\nsamples = 20"),
        gpu(1, "power = 40@0.9,300@0.1\nenergy = none"),
    );
    let lib = fake_nvml("buffer", &config);
    let (meter, log, r) = run(&lib, &GpuHints::default(), epoch, Duration::from_secs(1), 8);
    let all = totals(&meter);
    assert!(
        read_as(&log, 0).ends_with("the driver's power samples"),
        "{log:?}"
    );
    assert!(read_as(&log, 1).ends_with("power readings"), "{log:?}");

    // The buffered samples span from the newest one at opening to the newest
    // at the last read.
    let step = |t: f64| newest_driver_sample(0.02, t);
    let last = r.samples.last().unwrap();
    let truth = spiky.energy_between(step(r.opened.mid()), step(last.mid()));
    assert_within(&all, 0, truth, 0.02, "buffered power");

    let readings = entry(&all, &uuid(1)).energy.unwrap().0;
    let truth = spiky.energy_between(r.opened.mid(), last.mid());
    eprintln!(
        "one reading per sample: {readings:.2} J measured, {truth:.2} J injected ({:+.3})",
        readings / truth - 1.0
    );
}

#[test]
fn a_driver_buffer_that_stops_is_left_for_direct_readings() {
    // The buffer stops at 1.2 s; after 3 silent reads and 2 s the GPU is read
    // directly, and the stretch between is a gap, not zero power.
    let epoch = unix_now();
    let p: Profile = "200".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}",
        gpu(
            0,
            "power = 200\nenergy = none\nsamples = 20\nsamples_stop = 1.2"
        ),
    );
    let lib = fake_nvml("stalled", &config);
    let (meter, log, r) = run(
        &lib,
        &GpuHints::default(),
        epoch,
        Duration::from_millis(500),
        12,
    );
    assert!(
        read_as(&log, 0).ends_with("the driver's power samples"),
        "{log:?}"
    );
    let all = totals(&meter);
    let e = entry(&all, &uuid(0));
    let Status::Incomplete(why) = &e.status else {
        panic!("{:?}", e.status)
    };
    assert!(why.contains("samples stopped at 20"), "{why}");
    assert!(why.contains("not counted until"), "{why}");
    let measured = e.energy.unwrap().0;
    let last = r.samples.last().unwrap().mid();
    let before_stop = p.energy_between(r.opened.mid(), 1.2);
    let whole = p.energy_between(r.opened.mid(), last);
    // Counted: up to the stop, and from the switch to the end. The last new
    // samples come at the read at 1.5 s; the switch comes 2 s later or one
    // read after that (3.5 or 4 s), or a read later still on a slow machine.
    assert!(
        measured > (before_stop + 200.0 * (last - 4.6)) * 0.99,
        "{measured} J, {before_stop} J before the stop"
    );
    assert!(measured < whole - 200.0 * 2.0, "{measured} J of {whole} J");
}

#[test]
fn a_buffer_still_empty_at_the_start_is_used_once_it_fills() {
    // The driver's buffer holds nothing for the first 0.6 s (a driver brought
    // up with the job): the GPU is read directly once for a baseline, then
    // through its samples.
    let epoch = unix_now() - 100.0;
    let p: Profile = "40@0.9,300@0.1".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}",
        gpu(
            0,
            &format!(
                "power = 40@0.9,300@0.1\nenergy = none\nsamples = 20\nsamples_start = {}",
                unix_now() - epoch + 0.6
            )
        ),
    );
    let lib = fake_nvml("empty-buffer", &config);
    let (meter, log, r) = run(&lib, &GpuHints::default(), epoch, Duration::from_secs(1), 5);
    assert!(
        read_as(&log, 0).ends_with("the driver's power samples"),
        "{log:?}"
    );
    let last = r.samples.last().unwrap();
    let truth = p.energy_between(r.opened.mid(), newest_driver_sample(0.02, last.mid()));
    // The direct reading at opening bridges to the first sample by one
    // trapezoid: up to 0.6 s of a 300 W burst misjudged, of about 330 J.
    assert_within(&totals(&meter), 0, truth, 0.1, "buffer empty at first");
}

#[test]
fn a_read_that_fills_the_room_reads_again() {
    // A sample every 5 ms and an interval of 2 s: 400 new samples a read.
    // The buffer started filling just before, so the meter makes room for
    // its minimum, 256, and must read on to get them all.
    let epoch = unix_now() - 100.0;
    let p: Profile = "40@0.9,300@0.1".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}",
        gpu(
            0,
            &format!(
                "power = 40@0.9,300@0.1\nenergy = none\nsamples = 5\nsample_buffer = 1000\n\
                 samples_start = {}",
                unix_now() - epoch - 0.1
            )
        ),
    );
    let lib = fake_nvml("full-room", &config);
    let (meter, _, r) = run(&lib, &GpuHints::default(), epoch, Duration::from_secs(2), 3);
    let step = |t: f64| newest_driver_sample(0.005, t);
    let truth = p.energy_between(step(r.opened.mid()), step(r.samples.last().unwrap().mid()));
    assert_within(&totals(&meter), 0, truth, 0.01, "full reads");
}

#[test]
fn no_driver_makes_gpus_unavailable_with_one_reason() {
    let lib = fake_nvml(
        "nodriver",
        &format!("driver = missing\n{}", gpu(0, "power = 100")),
    );
    let (mut meter, log) = NvmlMeter::for_job(&lib, &GpuHints::default(), Instant::now());
    meter.sample(Instant::now());
    let all = totals(&meter);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!((all[0].device.as_str(), all[0].energy), (NVML_DEVICE, None));
    let Status::Unavailable(reason) = &all[0].status else {
        panic!("{:?}", all[0].status)
    };
    assert_eq!(reason, "NVIDIA driver not loaded (NVML)");
    // The library's path and the fix go to the log, once.
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].starts_with("NVIDIA driver not loaded (NVML /") && log[0].ends_with("loaded?"),
        "{log:?}"
    );
}

#[test]
fn missing_or_foreign_library_makes_gpus_unavailable() {
    let (meter, log) = NvmlMeter::for_job(
        Path::new("/nonexistent/libnvidia-ml.so.1"),
        &GpuHints::default(),
        Instant::now(),
    );
    let all = totals(&meter);
    assert!(
        matches!(&all[..], [DeviceEnergy { status: Status::Unavailable(r), energy: None, .. }]
            if r == "NVML library not found (no NVIDIA driver?)"),
        "{all:?}"
    );
    assert!(
        log[0].starts_with(
            "NVML library /nonexistent/libnvidia-ml.so.1 not found (no NVIDIA driver on this node?"
        ),
        "{log:?}"
    );
    // A library that is not NVML at all.
    let e = NvmlLib::open(Path::new("libm.so.6")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("libm.so.6 is not a usable NVML library"),
        "{e}"
    );
}

/// What a GPU that stops answering at `fail` (seconds after the epoch) had
/// truly used by its last good reading: bounds, because a sample running
/// exactly across `fail` may have read either way.
fn truth_until(profile: &Profile, r: &Run, fail: f64) -> (f64, f64) {
    let ok_until = r
        .samples
        .iter()
        .filter(|s| s.after < fail)
        .map(|s| s.mid())
        .fold(r.opened.mid(), f64::max);
    let maybe_until = r
        .samples
        .iter()
        .filter(|s| s.before < fail)
        .map(|s| s.mid())
        .fold(ok_until, f64::max);
    (
        profile.energy_between(r.opened.mid(), ok_until),
        profile.energy_between(r.opened.mid(), maybe_until),
    )
}

#[test]
fn a_gpu_failing_mid_run_keeps_its_energy_and_says_incomplete() {
    // The events come 2 s after time zero, so that copying and loading the
    // library, slow on a loaded machine, is long over by then.
    let epoch = unix_now();
    let p: Profile = "200".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}{}{}{}",
        gpu(0, "power = 200\nenergy = counter\nfail_after = 2.3"),
        gpu(1, "power = 200\nenergy = none\nfail_after = 2.3"),
        gpu(2, "power = 200\nenergy = counter\nreload_at = 2.15"),
        gpu(3, "power = 200\nenergy = counter"),
    );
    let lib = fake_nvml("failing", &config);
    let (meter, _, r) = run(
        &lib,
        &GpuHints::default(),
        epoch,
        Duration::from_millis(100),
        40,
    );
    let all = totals(&meter);
    let whole = p.energy_between(r.opened.mid(), r.samples.last().unwrap().mid());

    let (lo, hi) = truth_until(&p, &r, 2.3);
    for n in [0, 1] {
        let e = entry(&all, &uuid(n));
        let Status::Incomplete(why) = &e.status else {
            panic!("GPU {n}: {:?}", e.status)
        };
        assert!(why.starts_with("NVML: device fell off the bus"), "{why}");
        assert!(why.contains(" at 20"), "the time of failure: {why}");
        let measured = e.energy.unwrap().0;
        assert!(
            measured > lo * 0.99 && measured < hi * 1.01,
            "GPU {n}: {measured} J, truth {lo}..{hi} J"
        );
        assert!(
            measured < whole * 0.7,
            "GPU {n} stopped counting: {measured} of {whole}"
        );
    }

    // The driver reload at 2.15 s costs the one interval it falls in.
    let e = entry(&all, &uuid(2));
    assert!(
        matches!(&e.status, Status::Incomplete(w) if w.starts_with("counter went back at 20")),
        "{:?}",
        e.status
    );
    let gap = r
        .samples
        .windows(2)
        .find(|w| w[0].mid() < 2.15 && w[1].mid() >= 2.15)
        .map(|w| p.energy_between(w[0].mid(), w[1].mid()))
        .unwrap();
    let measured = e.energy.unwrap().0;
    let err = relative_error(measured, whole - gap);
    assert!(err < 0.01, "{measured} J vs {} J", whole - gap);

    let healthy = entry(&all, &uuid(3));
    assert_eq!(healthy.status, Status::Ok);
    assert!(relative_error(healthy.energy.unwrap().0, whole) < 0.01);
}

#[test]
fn selection_through_the_library() {
    let mig_a = "MIG-aaaaaaaa-0000-0000-0000-000000000000";
    let mig_b = "MIG-bbbbbbbb-0000-0000-0000-000000000000";
    // NVML order differs from device-file order: index 0 is /dev/nvidia1.
    let config = format!(
        "[gpu]\nuuid = GPU-first\nname = Fake H100\nminor = 1\npower = 100\npids = 41\n\
         [gpu]\nuuid = GPU-second\nminor = 0\npower = 100\npids = 42,43\n\
         [gpu]\nuuid = GPU-third\nminor = 2\npower = 100\nmig = {mig_a},{mig_b}\n"
    );
    let path = fake_nvml("selection", &config);
    let lib = NvmlLib::open(&path).unwrap();
    let (inventory, notes) = lib.inventory().unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let described: Vec<_> = inventory
        .iter()
        .map(|g| {
            (
                g.index,
                g.uuid.as_str(),
                g.minor,
                g.mig_uuids.len(),
                g.pids.clone(),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            (0, "GPU-first", Some(1), 0, vec![41]),
            (1, "GPU-second", Some(0), 0, vec![42, 43]),
            (2, "GPU-third", Some(2), 2, vec![]),
        ]
    );
    assert_eq!(inventory[0].name, "Fake H100");

    let cases: &[(GpuHints, &[&str], SelectedBy)] = &[
        (
            GpuHints {
                slurm_gpus: Some("0".into()),
                cuda_visible: Some("0".into()),
                ..GpuHints::default()
            },
            &["GPU-second"],
            SelectedBy::SlurmList,
        ),
        (
            GpuHints {
                cuda_visible: Some(mig_b.into()),
                ..GpuHints::default()
            },
            &["GPU-third"],
            SelectedBy::CudaVisible,
        ),
        (
            GpuHints {
                job_pids: Some(vec![43, 7]),
                ..GpuHints::default()
            },
            &["GPU-second"],
            SelectedBy::Pids,
        ),
        (
            GpuHints {
                cuda_visible: Some("-1".into()),
                ..GpuHints::default()
            },
            &[],
            SelectedBy::CudaVisible,
        ),
    ];
    for (hints, want, how) in cases {
        let (meter, log) = NvmlMeter::for_job(&path, hints, Instant::now());
        let got: Vec<&str> = meter.uuids().collect();
        assert_eq!(&got, want, "{hints:?}");
        assert!(
            want.is_empty() || log.iter().any(|l| l.contains(how.as_str())),
            "{log:?}"
        );
    }
    // A MIG instance counts its parent at the job's fraction of instances.
    let hints = GpuHints {
        cuda_visible: Some(mig_b.into()),
        ..GpuHints::default()
    };
    let (meter, _) = NvmlMeter::for_job(&path, &hints, Instant::now());
    assert_eq!(totals(&meter)[0].share, 0.5);
}

/// The fake's first two GPUs under a real sampler, one meter per GPU
/// as the tracker hands them over, every 100 ms, a call older than 300 ms
/// given up on. Returns the sampler and when (seconds after `epoch`) the
/// meters were opened.
fn sampled_pair(
    lib: &Path,
    epoch: f64,
    thread: &str,
) -> (carbontrack::measure::sampler::Sampler, f64) {
    use carbontrack::measure::sampler::{Sampler, SamplerOptions};
    let before = unix_now() - epoch;
    let (meter, _) = NvmlMeter::for_job(lib, &GpuHints::default(), Instant::now());
    let opened = (before + unix_now() - epoch) / 2.0;
    let meters: Vec<Box<dyn Meter>> = meter
        .split()
        .into_iter()
        .map(|m| Box::new(m) as Box<dyn Meter>)
        .collect();
    assert_eq!(meters.len(), 2, "one meter per GPU");
    let opts = SamplerOptions {
        interval: Duration::from_millis(100),
        stall_after: Duration::from_millis(300),
        join_timeout: Duration::from_secs(2),
        thread_name: thread.into(),
        ..SamplerOptions::default()
    };
    (Sampler::start(meters, opts, None).unwrap(), opened)
}

/// A GPU whose calls stop returning (the driver waiting on a GPU that fell
/// off the bus) is given up on alone: the other GPU is measured in full by
/// a fresh sampler thread, the stuck one keeps what it had and says when it
/// stopped answering, and nothing changes when its call finally returns.
#[test]
fn a_gpu_whose_calls_hang_is_given_up_on_alone() {
    let epoch = unix_now();
    let p: Profile = "200".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}{}",
        gpu(
            0,
            "power = 200\nenergy = counter\nhang_at = 2.0\nhang_for = 3.0"
        ),
        gpu(1, "power = 200\nenergy = counter"),
    );
    let lib = fake_nvml("hanging", &config);
    let (s, opened) = sampled_pair(&lib, epoch, "ct-nvml-hang");
    sleep(Duration::from_secs_f64(
        (3.5 - (unix_now() - epoch)).max(0.0),
    ));
    let stop_at = unix_now() - epoch;
    let fin = s
        .stop()
        .expect("the other GPU's thread takes the last sample");
    let stopped = unix_now() - epoch;
    assert!(stopped - stop_at < 2.5, "stop took {} s", stopped - stop_at);

    let healthy = entry(&fin.devices, &uuid(1));
    assert_eq!(healthy.status, Status::Ok, "{:?}", fin.devices);
    let whole = p.energy_between(opened, stop_at);
    let err = relative_error(healthy.energy.unwrap().0, whole);
    eprintln!(
        "healthy GPU: {} J vs {whole} J ({err:.4})",
        healthy.energy.unwrap().0
    );
    assert!(err < 0.03, "the healthy GPU is measured in full: {err}");

    let stuck = entry(&fin.devices, &uuid(0));
    let Status::Incomplete(why) = &stuck.status else {
        panic!("stuck GPU: {:?}", stuck.status)
    };
    assert!(why.starts_with("GPU 0 stopped answering at 20"), "{why}");
    assert!(
        why.len() <= 100 - "incomplete: ".len(),
        "short status: {why}"
    );
    let until_hang = p.energy_between(opened, 2.0);
    let got = stuck.energy.unwrap().0;
    assert!(
        got <= until_hang * 1.01 && got >= p.energy_between(opened, 1.85) * 0.99,
        "energy until it stopped answering: {got} J, truth {until_hang} J"
    );

    // The hung call returns at 5 s; its thread must end quietly.
    sleep(Duration::from_secs_f64(
        (5.5 - (unix_now() - epoch)).max(0.0),
    ));
    let t = Instant::now();
    while std::fs::read_dir("/proc/self/task").unwrap().any(|e| {
        std::fs::read_to_string(e.unwrap().path().join("comm"))
            .is_ok_and(|c| c.trim() == "ct-nvml-hang")
    }) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the released thread never ended"
        );
        sleep(Duration::from_millis(20));
    }
}

/// A GPU whose calls hang from the very start (already off the bus when the
/// job begins): starting the run costs a bounded wait, the GPUs are
/// `unavailable` with a short reason, and the run ends promptly.
#[test]
fn a_gpu_that_hangs_from_the_start_costs_a_bounded_wait() {
    use carbontrack::config::Config;
    use carbontrack::tracker::{Plan, Tracker};
    let epoch = unix_now();
    let config = format!(
        "epoch = {epoch}\n{}",
        gpu(
            0,
            "power = 200\nenergy = counter\nhang_at = 0\nhang_for = 20"
        ),
    );
    let lib = fake_nvml("hang-at-start", &config);
    let cfg = Config {
        interval: Duration::from_millis(100),
        nvml: lib.to_path_buf(),
        powercap: std::env::temp_dir().join("ct-no-powercap-here"),
        ..Config::default()
    };
    let asked = Instant::now();
    let (tracker, log) = Tracker::start(Plan::new("9", "node1", cfg)).unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(8), "start took {took:?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("NVML did not answer within 5 s at the start")),
        "{log:?}"
    );
    sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let done = tracker.finish();
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "finish took {:?}",
        asked.elapsed()
    );
    let gpu = entry(&done.snapshot.devices, NVML_DEVICE);
    assert_eq!(
        gpu.status,
        Status::Unavailable("NVML did not answer at the start".into())
    );
    assert!(done.snapshot.samples >= 2, "the rest was sampled");
}

/// A counter GPU that does not answer for a while and then does is read
/// again, and its counter bridges the pause: measured in full, `ok`.
#[test]
fn a_counter_gpu_that_answers_again_is_measured_in_full() {
    let epoch = unix_now();
    let p: Profile = "150".parse().unwrap();
    let config = format!(
        "epoch = {epoch}\n{}{}",
        gpu(
            0,
            "power = 150\nenergy = counter\nhang_at = 1.5\nhang_for = 1.5"
        ),
        gpu(1, "power = 150\nenergy = counter"),
    );
    let lib = fake_nvml("hang-and-back", &config);
    let (s, opened) = sampled_pair(&lib, epoch, "ct-nvml-back");
    sleep(Duration::from_secs_f64(
        (4.5 - (unix_now() - epoch)).max(0.0),
    ));
    let stop_at = unix_now() - epoch;
    let fin = s.stop().unwrap();
    let whole = p.energy_between(opened, stop_at);
    for n in [0, 1] {
        assert_within(&fin.devices, n, whole, 0.03, "hang and back");
    }
    assert!(
        fin.given_up
            .iter()
            .any(|g| g.starts_with("GPU 0 stopped answering at ")),
        "{:?}",
        fin.given_up
    );
}

/// A Grace Hopper module (GH200): NVML's counter covers the module, Grace
/// CPU included, so the CPU and DRAM rows say their energy is inside the GPU
/// figure (never 0, never added on top), the log says so, and the total is
/// the module's figure, not marked incomplete for it.
#[test]
fn a_gh200_module_holds_the_cpu_energy() {
    // Without and with `cpu_tdp=`: a Grace has no RAPL, and its estimate
    // would be the module's CPU energy counted again.
    for tdp in [false, true] {
        gh200_case(tdp);
    }
}

fn gh200_case(tdp: bool) {
    use carbontrack::config::Config;
    use carbontrack::measure::INSIDE_GPU_MODULE;
    use carbontrack::measure::estimate::{CpuTdp, CpuTimeSource};
    use carbontrack::tracker::{Plan, Tracker};
    use carbontrack::units::Watts;
    let epoch = unix_now();
    let config = format!(
        "epoch = {epoch}\n{}",
        gpu(
            0,
            "name = NVIDIA GH200 480GB\npower = 450\nenergy = counter"
        ),
    );
    let lib = fake_nvml("gh200", &config);
    let cfg = Config {
        interval: Duration::from_millis(100),
        nvml: lib.to_path_buf(),
        powercap: std::env::temp_dir().join("ct-no-powercap-here"),
        cpu_tdp: tdp.then_some(CpuTdp::Watts(Watts(100.0))),
        ..Config::default()
    };
    let mut plan = Plan::new("9", "gh200", cfg);
    if tdp {
        plan.cpu_time = Some(CpuTimeSource::ChildrenOf(std::process::id()));
    }
    let before = unix_now() - epoch;
    let (tracker, log) = Tracker::start(plan).unwrap();
    let opened = (before + unix_now() - epoch) / 2.0;
    assert!(
        log.iter()
            .any(|l| l.starts_with("CPU energy is inside the GPU module figure: ")),
        "{log:?}"
    );
    sleep(Duration::from_millis(1500));
    let before = unix_now() - epoch;
    let done = tracker.finish();
    let stopped = (before + unix_now() - epoch) / 2.0;
    let truth = 450.0 * (stopped - opened);
    let gpu_row = entry(&done.snapshot.devices, &uuid(0));
    let measured = gpu_row.energy.unwrap().0;
    eprintln!("GH200 module: {measured:.2} J measured, {truth:.2} J injected");
    assert!(
        (measured - truth).abs() / truth < 0.05,
        "{measured} vs {truth}"
    );
    let inside = Status::Unavailable(format!("{INSIDE_GPU_MODULE} ({})", uuid(0)));
    let cpu_rows: Vec<_> = done
        .rows
        .iter()
        .filter(|r| r.component == "cpu" || r.component == "dram")
        .collect();
    assert_eq!(cpu_rows.len(), 2, "{:?}", done.rows);
    for r in cpu_rows {
        assert_eq!(r.status, inside.to_string(), "{r:?}");
        assert_eq!(r.energy_j, None);
    }
    let total = done.rows.iter().find(|r| r.component == "total").unwrap();
    assert_eq!(total.status, "ok", "{total:?}");
    assert!((total.energy_j.unwrap() - measured).abs() < 1e-6 * measured.max(1.0));
    assert!(
        done.summary.contains("Grace CPU and its memory included"),
        "{}",
        done.summary
    );
}
