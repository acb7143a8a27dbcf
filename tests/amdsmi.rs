//! The AMD SMI reader against the fake libamd_smi (tests/fake-amdsmi):
//! measured energy compared with the energy the fake's power profiles inject.
//! Each test runs its own copy of the fake, configured beside it.

use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carbontrack::measure::amd_gpus::AmdGpuHints;
use carbontrack::measure::amdsmi::{AMDSMI_DEVICE, AmdSmiMeter};
use carbontrack::measure::{DeviceEnergy, Meter, Status};
use carbontrack_fixtures::fake_amdsmi::fake_amdsmi;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn uuid(n: u32) -> String {
    format!("1fff74a1-0000-1000-80f0-00000000000{n}")
}

fn gpu(n: u32, extra: &str) -> String {
    format!("[gpu]\nuuid = {}\n{extra}\n", uuid(n))
}

fn slurm(list: &str) -> AmdGpuHints {
    AmdGpuHints {
        slurm_gpus: Some(list.into()),
        rocr_visible: None,
    }
}

/// Opens the meter, samples it `n` times every `interval`, and returns its
/// rows with the seconds (since the fake's epoch) the run covered.
fn run(
    test: &str,
    config: &str,
    hints: &AmdGpuHints,
    n: u32,
) -> (Vec<DeviceEnergy>, Vec<String>, f64) {
    let epoch = unix_now();
    let fake = fake_amdsmi(test, &format!("epoch = {epoch}\n{config}"));
    let start = Instant::now();
    let t0 = unix_now() - epoch;
    let (meter, log) = AmdSmiMeter::for_job(&fake, hints, start);
    let t0 = (t0 + unix_now() - epoch) / 2.0;
    let mut meter = meter.expect("the fake is there");
    let interval = Duration::from_millis(250);
    let mut t1 = t0;
    for k in 1..=n {
        sleep((start + interval * k).saturating_duration_since(Instant::now()));
        let before = unix_now() - epoch;
        meter.sample(Instant::now());
        t1 = (before + unix_now() - epoch) / 2.0;
    }
    let mut rows = Vec::new();
    meter.totals(&mut rows);
    (rows, log, t1 - t0)
}

fn row<'a>(rows: &'a [DeviceEnergy], id: &str) -> &'a DeviceEnergy {
    rows.iter()
        .find(|r| r.device == id)
        .unwrap_or_else(|| panic!("no row for {id} in {rows:?}"))
}

fn assert_close(r: &DeviceEnergy, truth: f64, bound: f64, what: &str) {
    assert_eq!(r.status, Status::Ok, "{what}: {r:?}");
    let got = r.energy.unwrap().0;
    let err = (got - truth).abs() / truth;
    eprintln!("{what}: {got:.3} J measured, {truth:.3} J injected ({err:.5})");
    assert!(err < bound, "{what}: {got} J vs {truth} J");
}

#[test]
fn energy_counter_of_the_jobs_gpu_only() {
    // Slurm's position 1 is the GPU with the second render minor.
    let cfg = gpu(0, "power = 500\nrender = 128") + &gpu(1, "power = 300\nrender = 129");
    let (rows, log, secs) = run("counter", &cfg, &slurm("1"), 8);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_close(row(&rows, &uuid(1)), 300.0 * secs, 0.01, "AMD counter");
    assert!(log.iter().any(|l| l.ends_with("energy counter")), "{log:?}");
}

#[test]
fn render_minor_in_slurms_list_and_power_only_with_the_26_layout() {
    let cfg = "version = 26\n".to_string()
        + &gpu(0, "power = 500\nenergy = none")
        + &gpu(1, "power = 275\nenergy = none");
    let (rows, log, secs) = run("power", &cfg, &slurm("129"), 8);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_close(row(&rows, &uuid(1)), 275.0 * secs, 0.02, "AMD power-only");
    assert!(
        log.iter().any(|l| l.ends_with("average socket power")),
        "{log:?}"
    );
}

#[test]
fn a_wrapping_32_bit_counter_loses_nothing() {
    // 1 mJ a count, 400 W: 400 000 counts a second, from 1.2 M below the top.
    let start = u64::from(u32::MAX) - 1_200_000;
    let cfg = gpu(
        0,
        &format!("power = 400\nresolution = 1000\nwrap = 32\ncounter_start = {start}"),
    );
    let (rows, _, secs) = run("wrap", &cfg, &slurm("0"), 16);
    assert!(secs > 3.0);
    assert_close(
        row(&rows, &uuid(0)),
        400.0 * secs,
        0.01,
        "AMD wrapping counter",
    );
}

#[test]
fn an_mi250x_package_is_counted_once_and_split_between_its_gcds() {
    // Package A: GCD 0 reports the package (its 200 W and GCD 1's 200 W),
    // GCD 1 reads 0. Package B reports per GCD.
    let cfg = gpu(0, "serial = PKG-A\npower = 200\nreports = package")
        + &gpu(1, "serial = PKG-A\npower = 200\nreports = zero")
        + &gpu(2, "serial = PKG-B\npower = 150\nenergy = none")
        + &gpu(3, "serial = PKG-B\npower = 250\nenergy = none");
    // The GCD that reads 0 alone: half the package, not 0.
    let (rows, log, secs) = run("mi250x-half", &cfg, &slurm("1"), 8);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_close(
        row(&rows, &uuid(1)),
        200.0 * secs,
        0.01,
        "MI250X GCD 1 alone",
    );
    assert!(
        log.iter()
            .any(|l| l.contains("AMD package PKG-A: 2 GCDs, the job holds 1")),
        "{log:?}"
    );
    // Both GCDs of A and one of B: the package once, and B's GCD its own.
    let (rows, _, secs) = run("mi250x-whole", &cfg, &slurm("0-1,3"), 8);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let a: f64 = [0, 1]
        .iter()
        .map(|&n| row(&rows, &uuid(n)).energy.unwrap().0)
        .sum();
    assert_close(row(&rows, &uuid(0)), 200.0 * secs, 0.01, "MI250X GCD 0");
    assert_close(row(&rows, &uuid(1)), 200.0 * secs, 0.01, "MI250X GCD 1");
    assert!(
        (a - 400.0 * secs).abs() / (400.0 * secs) < 0.01,
        "package A {a}"
    );
    assert_close(
        row(&rows, &uuid(3)),
        250.0 * secs,
        0.02,
        "per-GCD package B",
    );
}

/// Two GCDs of one board that each report their own, one idle (0 W for
/// seconds at a time, then a few watts): each job is charged its own GCD,
/// never half of its neighbour's, even in the samples where one reads 0.
#[test]
fn gcds_of_one_board_that_report_their_own_are_not_split() {
    let cfg =
        gpu(0, "serial = PKG-C\npower = 300") + &gpu(1, "serial = PKG-C\npower = 0@1.5,10@1.5");
    // 24 samples 250 ms apart: two whole cycles of the idle GCD's 3 s profile.
    let (rows, _, secs) = run("own-gcds", &cfg, &slurm("1"), 24);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_close(row(&rows, &uuid(1)), 5.0 * secs, 0.15, "idle GCD, its own");
    let (rows, _, secs) = run("own-gcds-busy", &cfg, &slurm("0"), 6);
    assert_close(
        row(&rows, &uuid(0)),
        300.0 * secs,
        0.01,
        "busy GCD, its own",
    );
}

#[test]
fn a_gcd_reading_zero_while_busy_is_incomplete_not_zero() {
    let cfg = gpu(0, "power = 300\nreports = zero\nbusy = 90") + &gpu(1, "power = 0\nbusy = 0");
    let (rows, _, _) = run("zero-busy", &cfg, &slurm("0,1"), 4);
    let busy = row(&rows, &uuid(0));
    assert!(
        matches!(&busy.status, Status::Incomplete(r) if r.starts_with("reads 0 W while busy")),
        "{busy:?}"
    );
    // An idle GPU drawing nothing is a measured 0.
    assert_eq!(row(&rows, &uuid(1)).status, Status::Ok);
}

#[test]
fn failing_library_and_device() {
    let epoch = unix_now();
    let fake = fake_amdsmi(
        "init-fails",
        &format!("epoch = {epoch}\ninit = fail\n{}", gpu(0, "")),
    );
    let (m, log) = AmdSmiMeter::for_job(&fake, &slurm("0"), Instant::now());
    let mut rows = Vec::new();
    m.expect("a library that fails is reported")
        .totals(&mut rows);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].device, AMDSMI_DEVICE);
    assert!(
        matches!(&rows[0].status, Status::Unavailable(r) if r.contains("init failed")),
        "{rows:?}"
    );
    assert!(!log.is_empty());

    let (m, _) = AmdSmiMeter::for_job(
        std::path::Path::new("/nonexistent/libamd_smi.so"),
        &slurm("0"),
        Instant::now(),
    );
    assert!(m.is_none(), "no library: no AMD GPU, no row");

    // A GPU lost mid-run keeps what was measured, incomplete.
    let (rows, _, _) = run(
        "lost",
        &gpu(0, "power = 100\nfail_after = 0.6"),
        &slurm("0"),
        8,
    );
    let r = row(&rows, &uuid(0));
    assert!(r.energy.unwrap().0 > 30.0, "{r:?}");
    assert!(
        matches!(&r.status, Status::Incomplete(w) if w.contains("AMD SMI: device not found")),
        "{r:?}"
    );
}
