//! Tracked jobs end to end: what a job leaves, compared with the energy the
//! fake hardware really used, however the job ends and whatever the user
//! planted in its directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use carbontrack::footprint::{Row, read_csv, write_csv};
use carbontrack::job::JobInfo;
use carbontrack::spool::Spool;

use crate::common::hardware::Hardware;
use crate::common::{Cluster, JOB_TIMEOUT, JobId, USER, assert_short_statuses};
use crate::{assert_no_plugin_error, submit_ok};

/// The footprint CSV's columns, in the contract's order (design.md).
const CONTRACT_COLUMNS: [&str; 14] = [
    "job_id",
    "node",
    "component",
    "device",
    "start",
    "end",
    "duration_s",
    "share",
    "energy_j",
    "pue",
    "energy_kwh",
    "intensity_g_per_kwh",
    "co2e_g",
    "status",
];

/// How far a measured energy may be from the injected truth.
const TOLERANCE: f64 = 0.03;

/// At most this many carbontrack lines per job in slurmd's log: the decision,
/// the start of sampling, notes about what cannot be measured, the result.
/// A line per sample would be dozens.
const MAX_LOG_LINES_PER_JOB: usize = 8;

fn tracked_args(c: &Cluster, hw: &Hardware, extra: &[&str]) {
    let args = hw.plugin_args(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.set_plugin_args(&refs);
}

fn user_uid() -> u32 {
    let out = Command::new("id").args(["-u", USER]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn user_file(c: &Cluster, dir: Option<&Path>, id: u32, ext: &str) -> PathBuf {
    dir.map_or_else(|| c.work_dir(), Path::to_path_buf)
        .join(format!("carbontrack-{id}.{ext}"))
}

/// The job's footprint CSV: its text and rows.
fn footprint(path: &Path) -> (String, Vec<Row>) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no footprint {}: {e}", path.display()));
    let rows = read_csv(text.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_short_statuses(&rows);
    (text, rows)
}

fn time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("bad time `{s}`: {e}"))
}

fn row<'a>(rows: &'a [Row], component: &str, device: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.component == component && r.device == device)
        .unwrap_or_else(|| panic!("no {component} {device} row in {rows:#?}"))
}

/// Every device row's energy is its share of what the fake device really used
/// over the row's own span; the total row adds them up.
fn assert_matches_truth(hw: &Hardware, rows: &[Row]) {
    let devices: Vec<&Row> = rows.iter().filter(|r| !r.is_total()).collect();
    assert!(!devices.is_empty(), "no device rows: {rows:#?}");
    for r in &devices {
        let label = match r.component.as_str() {
            "cpu" => r.device.clone(),
            "dram" => format!("{}/dram", r.device),
            "gpu" => r.device.clone(),
            other => panic!("unexpected component `{other}` in {r:?}"),
        };
        let energy = r
            .energy_j
            .unwrap_or_else(|| panic!("{} {} not measured: {r:?}", r.component, r.device));
        let share = r.share.expect("a measured row has a share");
        let truth = share * hw.truth(&label, time(&r.start), time(&r.end));
        let err = (energy - truth).abs() / truth;
        println!(
            "    {} {}: {energy:.1} J measured, {truth:.1} J true ({:+.3}%)",
            r.component,
            r.device,
            (energy - truth) / truth * 100.0
        );
        assert!(
            err <= TOLERANCE,
            "{} {}: {energy:.3} J measured, {truth:.3} J true ({:.2}% off) over {} .. {}",
            r.component,
            r.device,
            err * 100.0,
            r.start,
            r.end
        );
        // energy_kwh = energy_j x pue / 3.6e6; co2e_g = energy_kwh x intensity.
        let kwh = r.energy_kwh.expect("kWh beside joules");
        assert!(
            (kwh - energy * r.pue / 3.6e6).abs() <= 1e-6 + kwh * 1e-4,
            "{r:?}"
        );
        let g = r.co2e_g.expect("CO2e beside kWh");
        let intensity = r.intensity_g_per_kwh.expect("intensity");
        assert!((g - kwh * intensity).abs() <= 1e-3 + g * 1e-4, "{r:?}");
    }
    let totals: Vec<&Row> = rows.iter().filter(|r| r.is_total()).collect();
    assert_eq!(totals.len(), 1, "one total row: {rows:#?}");
    let total = totals[0];
    assert!(
        std::ptr::eq(total, rows.last().unwrap()),
        "the total row comes last"
    );
    let sum: f64 = devices.iter().filter_map(|r| r.energy_j).sum();
    let energy = total.energy_j.expect("total energy");
    assert!(
        (energy - sum).abs() <= 0.001 * devices.len() as f64,
        "total {energy} J is not the sum {sum} J"
    );
    let sum_g: f64 = devices.iter().filter_map(|r| r.co2e_g).sum();
    assert!((total.co2e_g.unwrap() - sum_g).abs() <= 0.001 * devices.len() as f64);
}

/// The carbontrack lines slurmd logged for a job: no errors, not one per sample.
fn assert_quiet_log(log: &str, id: u32) {
    assert_no_plugin_error(log);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("carbontrack")).collect();
    assert!(
        lines.len() <= MAX_LOG_LINES_PER_JOB,
        "job {id}: {} carbontrack lines in slurmd's log:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

/// The lines saying which step samples the job.
fn sampling_lines(log: &str, id: u32) -> Vec<String> {
    let needle = format!("carbontrack: job {id}: sampling on ");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(100));
    }
}

/// Submits and waits until the job's sampler has started on the node.
fn start_sampled(c: &Cluster, args: &[&str], script: &str) -> JobId {
    let mark = c.log_mark();
    let id = c
        .submit_in(&c.work_dir(), args, script)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&format!("job {} to start sampling", id.0), || {
        (!sampling_lines(&c.log_since(mark), id.0).is_empty()).then_some(())
    });
    id
}

pub fn footprint_matches_truth(c: &Cluster, hw: &Hardware) {
    tracked_args(c, hw, &[]);
    let mark = c.log_mark();
    let id = c
        .submit_in(
            &c.work_dir(),
            &["--carbon-track=yes", "--gres=gpu:2"],
            "#!/bin/bash\necho gpus=$CUDA_VISIBLE_DEVICES\nsleep 15\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let (csv, txt) = (
        user_file(c, None, id.0, "csv"),
        user_file(c, None, id.0, "txt"),
    );
    let uid = user_uid();

    // While it runs, the summary says so and is the user's (refresh=2s).
    let live = wait_for("the live summary", || {
        let t = std::fs::read_to_string(&txt).ok()?;
        (c.job_state(id.0) == "RUNNING").then_some(t)
    });
    assert!(
        live.contains(&format!("carbontrack: job {} (running;", id.0))
            && live.contains("Energy so far"),
        "live summary:\n{live}"
    );
    assert_eq!(std::fs::metadata(&txt).unwrap().uid(), uid);

    let ended = c.wait_ended(id);
    let log = c.log_of_job(mark, id.0);
    assert_eq!(
        (ended.state.as_str(), ended.exit_code.as_str()),
        ("COMPLETED", "0:0"),
        "{}",
        c.output_of(id.0)
    );
    assert!(c.output_of(id.0).contains("gpus=0,1"));

    let (text, rows) = footprint(&csv);
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    assert!(
        header.len() >= CONTRACT_COLUMNS.len()
            && header[..CONTRACT_COLUMNS.len()] == CONTRACT_COLUMNS,
        "header {header:?}"
    );
    // The package and its DRAM, the job's two GPUs and no other, the total.
    let components: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.component.as_str(), r.device.as_str()))
        .collect();
    let gpu = |minor: u32| hw.gpus[minor as usize].uuid.as_str();
    assert_eq!(
        components,
        [
            ("cpu", "package-0"),
            ("dram", "package-0"),
            ("gpu", gpu(0)),
            ("gpu", gpu(1)),
            ("total", "")
        ],
        "{text}"
    );
    assert!(rows.iter().all(|r| r.job_id == id.0.to_string()));
    assert_matches_truth(hw, &rows);
    for dev in [gpu(0), gpu(1)] {
        let r = row(&rows, "gpu", dev);
        assert_eq!((r.share, r.status.as_str()), (Some(1.0), "ok"), "{r:?}");
    }
    let total = rows.last().unwrap();
    assert!(total.duration_s >= 15.0, "{total:?}");
    let svg = user_file(c, None, id.0, "svg");
    for f in [&csv, &txt, &svg] {
        let m = std::fs::symlink_metadata(f).unwrap();
        assert!(m.is_file(), "{}", f.display());
        assert_eq!(m.uid(), uid, "{} not the user's", f.display());
    }
    assert_timeline_renders(hw, &svg, &["cpu", "dram", "gpu"]);
    let summary = std::fs::read_to_string(&txt).unwrap();
    assert!(!summary.contains("(running;"), "final summary:\n{summary}");
    assert_eq!(sampling_lines(&log, id.0).len(), 1, "{log}");
    assert_quiet_log(&log, id.0);
    // The result line says what the sampler thread cost, over its samples.
    let result = log
        .lines()
        .find(|l| l.contains(&format!("carbontrack: job {}: ", id.0)) && l.contains(" kWh, "))
        .unwrap_or_else(|| panic!("no result line for job {}:\n{log}", id.0));
    let samples: u64 = result
        .split_once("sampler CPU ")
        .and_then(|(_, r)| r.split_once(" over "))
        .and_then(|(_, r)| r.split_once(" samples"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no sampler CPU figure: {result}"));
    // `interval=500ms` (the tests' plugin arguments): two samples a second.
    assert!(
        samples as f64 * 0.5 >= total.duration_s - 3.0,
        "{samples} samples at 500 ms over {} s: {result}",
        total.duration_s
    );
}

/// The job's power timeline, drawn by a real renderer (rsvg-convert): not
/// blank, and an area in each measured component's colour. With
/// `CT_TEST_PLOT_DIR` set, the SVG and PNG are kept there for a person to
/// look at.
fn assert_timeline_renders(hw: &Hardware, svg: &Path, components: &[&str]) {
    let keep = std::env::var_os("CT_TEST_PLOT_DIR").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| hw.dir().to_path_buf());
    let _ = std::fs::create_dir_all(&dir);
    let stem = svg.file_stem().unwrap().to_string_lossy().into_owned();
    let png = dir.join(format!("{stem}.png"));
    if keep.is_some() {
        std::fs::copy(svg, dir.join(format!("{stem}.svg"))).unwrap();
    }
    let img = carbontrack_fixtures::svg_render::rasterise(svg, &png);
    assert!(img.inked() > 0.1, "{} is nearly blank", png.display());
    for s in carbontrack::report::plot::SERIES {
        // The chart's area (x 80..930, y 78..400 of 960 × 560).
        let n = img.count(
            carbontrack_fixtures::svg_render::hex(s.colour),
            0.09,
            0.15,
            0.96,
            0.71,
        );
        if components.contains(&s.component) {
            // DRAM is a thin hatched band (a few watts under hundreds): a
            // few hundred pixels of its own colour.
            assert!(
                n > 150,
                "{}: the {} area has {n} pixels",
                png.display(),
                s.label
            );
        } else {
            assert_eq!(n, 0, "{}: {} drawn", png.display(), s.label);
        }
    }
}

pub fn untracked_leave_nothing(c: &Cluster, hw: &Hardware) {
    let nothing_left = |id: u32| {
        for ext in ["csv", "txt"] {
            let f = user_file(c, None, id, ext);
            assert!(!f.exists(), "{} for an untracked job", f.display());
        }
        let state = hw.spool().join("jobs").join(id.to_string());
        assert!(!state.exists(), "{} for an untracked job", state.display());
    };
    tracked_args(c, hw, &[]);
    let (job, log) = submit_ok(c, &[], "#!/bin/bash\ntrue\n");
    nothing_left(job.id);
    assert!(sampling_lines(&log, job.id).is_empty(), "{log}");

    tracked_args(c, hw, &["mode=always"]);
    let (job, log) = submit_ok(c, &[], "#!/bin/bash\ntrue\n");
    let (_, rows) = footprint(&user_file(c, None, job.id, "csv"));
    assert!(rows.last().is_some_and(Row::is_total), "{rows:#?}");
    assert_quiet_log(&log, job.id);

    let (job, log) = submit_ok(c, &["--carbon-track=no"], "#!/bin/bash\ntrue\n");
    nothing_left(job.id);
    assert!(sampling_lines(&log, job.id).is_empty(), "{log}");
}

/// Slurm's name for this node, as `scripts/test-cluster` declares it.
fn node_name() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Submits a held job, leaves in the spool what an earlier job with the same
/// id would have left (its hand-off and a footprint of a megajoule an hour
/// ago), then lets the job run to its end.
fn run_after_an_earlier_job_of_its_id(c: &Cluster, hw: &Hardware, args: &[&str]) -> (u32, String) {
    let mut held = vec!["--hold"];
    held.extend_from_slice(args);
    let mark = c.log_mark();
    let id = c
        .submit_in(
            &c.work_dir(),
            &held,
            "#!/bin/bash
sleep 1
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let spool = Spool::open(&hw.spool()).unwrap();
    let earlier = JobInfo {
        job_id: id.0,
        uid: user_uid(),
        gid: user_uid(),
        user: USER.into(),
        node: node_name(),
        work_dir: Some(c.work_dir()),
        ..JobInfo::default()
    };
    spool.write_handoff(&earlier).unwrap();
    let an_hour_ago =
        humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(3600));
    let stale = Row {
        job_id: id.0.to_string(),
        node: node_name(),
        component: "gpu".into(),
        device: hw.gpus[0].uuid.clone(),
        start: an_hour_ago.to_string(),
        end: an_hour_ago.to_string(),
        duration_s: 600.0,
        share: Some(1.0),
        energy_j: Some(1e6),
        pue: 1.0,
        energy_kwh: Some(1e6 / 3.6e6),
        intensity_g_per_kwh: Some(100.0),
        co2e_g: Some(1e6 / 3.6e6 * 100.0),
        status: "ok".into(),
        intensity_source: "an earlier job".into(),
    };
    let mut csv = Vec::new();
    write_csv(&mut csv, &[stale]).unwrap();
    spool
        .write_node_footprint(id.0, &node_name(), &csv)
        .unwrap();

    let out = c
        .as_user("scontrol", &["release", &id.0.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ended = c.wait_ended(id);
    let log = c.log_of_job(mark, id.0);
    assert_eq!(ended.state, "COMPLETED", "{log}");
    (id.0, log)
}

pub fn reused_job_id(c: &Cluster, hw: &Hardware) {
    tracked_args(c, hw, &[]);
    let submitted = SystemTime::now();
    // Not tracked: the earlier job's hand-off does not make it sampled.
    let (id, log) = run_after_an_earlier_job_of_its_id(c, hw, &[]);
    assert!(sampling_lines(&log, id).is_empty(), "{log}");
    assert!(!user_file(c, None, id, "csv").exists());
    assert!(!hw.spool().join("jobs").join(id.to_string()).exists());
    assert_no_plugin_error(&log);
    // The earlier job's undelivered footprint is not deleted by the later
    // job: it waits in stale/ for the next Epilog, as its own run.
    assert_earlier_run_kept(hw, id, &log);

    // Tracked: the earlier footprint is not merged into this job's.
    let (id, log) =
        run_after_an_earlier_job_of_its_id(c, hw, &["--carbon-track=yes", "--gres=gpu:1"]);
    let (_, rows) = footprint(&user_file(c, None, id, "csv"));
    let total = rows.last().unwrap();
    assert!(time(&total.start) >= submitted, "{rows:#?}");
    assert_matches_truth(hw, &rows);
    assert_quiet_log(&log, id);
    assert_earlier_run_kept(hw, id, &log);
}

/// The fixture's earlier run of job `id` sits whole in the spool's stale/,
/// and slurmd's log said so once.
fn assert_earlier_run_kept(hw: &Hardware, id: u32, log: &str) {
    let spool = Spool::open(&hw.spool()).unwrap();
    let kept: Vec<_> = spool
        .stale_jobs()
        .unwrap()
        .into_iter()
        .filter(|(j, _)| *j == id)
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let rows =
        std::fs::read_to_string(kept[0].1.join(format!("node-{}.csv", node_name()))).unwrap();
    assert!(rows.contains("an earlier job"), "{rows}");
    let said = log
        .lines()
        .filter(|l| l.contains(&format!("job {id}: an earlier job with this id left")))
        .count();
    assert_eq!(said, 1, "{log}");
}

/// Two srun steps one after the other and one beside them.
const STEPS: &str = "#!/bin/bash
srun --overlap bash -c 'sleep 5; echo step-beside' &
srun --overlap bash -c 'sleep 2; echo step-one'
srun --overlap bash -c 'sleep 2; echo step-two'
wait
";

/// A job with srun steps counts its energy once, sampled by `sampler`.
fn steps_counted_once(c: &Cluster, hw: &Hardware, sampler: &str) {
    tracked_args(c, hw, &[]);
    let (job, log) = submit_ok(c, &["--carbon-track=yes", "--gres=gpu:1"], STEPS);
    for step in ["step-beside", "step-one", "step-two"] {
        assert!(job.output.contains(step), "{}", job.output);
    }
    for step in 0..3 {
        assert!(log.contains(&format!("[{}.{step}]", job.id)), "{log}");
    }
    let sampling = sampling_lines(&log, job.id);
    assert_eq!(sampling.len(), 1, "one sampler per job: {sampling:#?}");
    assert!(
        sampling[0].contains(&format!("in step {sampler} ")),
        "{}",
        sampling[0]
    );
    let (_, rows) = footprint(&user_file(c, None, job.id, "csv"));
    let gpu = row(&rows, "gpu", &hw.gpus[0].uuid);
    assert!(gpu.duration_s >= 5.0, "{gpu:?}");
    // Within 3% of the truth over the job's span: twice would be 100% off.
    assert_matches_truth(hw, &rows);
    // The sampling step, extern or batch, has the job's one core of two
    // from Slurm's core allocation: half the package, exactly.
    for r in rows
        .iter()
        .filter(|r| r.component == "cpu" || r.component == "dram")
    {
        assert_eq!((r.share, r.status.as_str()), (Some(0.5), "ok"), "{r:?}");
    }
    assert!(
        sampling[0].contains("CPU share from Slurm's core allocation"),
        "{}",
        sampling[0]
    );
    assert_quiet_log(&log, job.id);
}

pub fn steps_with_extern(c: &Cluster, hw: &Hardware) {
    assert!(c.contain());
    steps_counted_once(c, hw, "extern");
}

/// Puts the cluster back as it was, also when the check fails.
struct Restore<'a>(&'a Cluster);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.restore() {
            eprintln!("could not restore the cluster: {e}");
        }
    }
}

pub fn steps_without_extern(c: &Cluster, hw: &Hardware) {
    let _restore = Restore(c);
    c.restart(false, false).unwrap_or_else(|e| panic!("{e}"));
    // Job ids start again at 1 while the spool keeps the earlier jobs' state:
    // a job must not inherit what an earlier one of its id left.
    steps_counted_once(c, hw, "batch");
}

pub fn cancelled_and_timed_out(c: &Cluster, hw: &Hardware) {
    tracked_args(c, hw, &[]);
    let script = "#!/bin/bash\nsleep 120\n";
    let submitted = SystemTime::now();
    let cancelled = start_sampled(c, &["--carbon-track=yes"], script);
    let timed_out = start_sampled(c, &["--carbon-track=yes", "--time=5"], script);
    sleep(Duration::from_secs(2));
    let stopped = SystemTime::now();
    let out = c
        .as_user("scancel", &[&cancelled.0.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The time limit, reached now: slurmctld ends the job as TIMEOUT at its
    // next limit check (Slurm's limits are whole minutes).
    let out = c.as_root(
        "scontrol",
        &["update", &format!("jobid={}", timed_out.0), "EndTime=now"],
    );
    assert!(out.status.success(), "{out:?}");

    for (id, state) in [(cancelled, "CANCELLED"), (timed_out, "TIMEOUT")] {
        let ended = c.wait_ended(id);
        assert!(ended.state.starts_with(state), "job {}: {ended:?}", id.0);
        let csv = user_file(c, None, id.0, "csv");
        let (_, rows) = wait_for(&format!("{}", csv.display()), || {
            csv.exists().then(|| footprint(&csv))
        });
        let total = rows.last().unwrap();
        assert!(total.is_total(), "{rows:#?}");
        // The span covers sampling up to the stop, within the job's life.
        let (start, end) = (time(&total.start), time(&total.end));
        assert!(start >= submitted && end >= stopped, "{total:?}");
        assert!(end <= SystemTime::now(), "{total:?}");
        assert_matches_truth(hw, &rows);
    }
}

pub fn planted_link(c: &Cluster, hw: &Hardware) {
    tracked_args(c, hw, &[]);
    let precious = hw.dir().join("precious");
    std::fs::write(&precious, "root's own\n").unwrap();
    std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mark = c.log_mark();
    let id = c
        .submit_in(
            &c.work_dir(),
            &["--hold", "--carbon-track=yes"],
            "#!/bin/bash\nsleep 3\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    for ext in ["csv", "txt"] {
        let link = user_file(c, None, id.0, ext);
        let out = c
            .as_user("ln", &["-s"])
            .arg(&precious)
            .arg(&link)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let out = c
        .as_user("scontrol", &["release", &id.0.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ended = c.wait_ended(id);
    let log = c.log_of_job(mark, id.0);
    assert_eq!(ended.state, "COMPLETED", "{log}");

    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "root's own\n");
    let m = std::fs::metadata(&precious).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o644));
    for ext in ["csv", "txt"] {
        let f = user_file(c, None, id.0, ext);
        let m = std::fs::symlink_metadata(&f).unwrap();
        assert!(m.is_file(), "{} is not a regular file", f.display());
        assert_eq!(m.uid(), user_uid());
    }
    footprint(&user_file(c, None, id.0, "csv"));
    assert_quiet_log(&log, id.0);
}

pub fn read_only_work_dir(c: &Cluster, hw: &Hardware) {
    tracked_args(c, hw, &[]);
    let dir = c.work_dir().join("read-only");
    for cmd in [vec!["mkdir", "-p"], vec!["chmod", "555"]] {
        let out = c.as_user(cmd[0], &cmd[1..]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let mark = c.log_mark();
    // Long enough for the live summary to be tried a few times (refresh=2s).
    let id = c
        .submit_in(&dir, &["--carbon-track=yes"], "#!/bin/bash\nsleep 5\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let ended = c.wait_ended(id);
    let log = c.log_of_job(mark, id.0);
    assert_eq!(
        (ended.state.as_str(), ended.exit_code.as_str()),
        ("COMPLETED", "0:0"),
        "{log}"
    );
    let jobs = hw.spool().join("jobs").join(id.0.to_string());
    let kept: Vec<PathBuf> = std::fs::read_dir(&jobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("node-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let (_, rows) = footprint(&kept[0]);
    assert_matches_truth(hw, &rows);
    let naming: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&kept[0].display().to_string()))
        .collect();
    assert_eq!(naming.len(), 1, "{log}");
    assert!(
        naming[0].contains(&dir.display().to_string()),
        "{}",
        naming[0]
    );
    let errors = log
        .lines()
        .filter(|l| l.contains("carbontrack") && l.contains("error"))
        .count();
    assert_eq!(errors, 1, "one line about the undelivered files:\n{log}");
}

/// The names of a process's threads.
fn threads(pid: u32) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// slurmstepd processes of a job of this cluster, with their step names.
/// Another cluster on the machine may run a job with the same id: a
/// slurmstepd is ours when it has our slurmd's SLURM_CONF.
fn stepds(c: &Cluster, id: u32) -> Vec<(u32, String)> {
    let out = Command::new("ps")
        .args(["-eo", "pid=,args="])
        .output()
        .unwrap();
    let prefix = format!("slurmstepd: [{id}.");
    let conf = format!("SLURM_CONF={}", c.slurm_conf().display());
    let ours = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == conf.as_bytes()))
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (pid, args) = l.trim().split_once(' ')?;
            let step = args.trim().strip_prefix(&prefix)?.strip_suffix(']')?;
            let pid: u32 = pid.parse().ok()?;
            ours(pid).then(|| (pid, step.to_string()))
        })
        .collect()
}

fn extern_stepd(c: &Cluster, id: u32) -> Option<u32> {
    stepds(c, id)
        .into_iter()
        .find(|(_, s)| s == "extern")
        .map(|(p, _)| p)
}

/// A process's thread names once two readings agree (slurmstepd starts a
/// short-lived thread per request it serves).
fn steady_threads(pid: u32) -> Vec<String> {
    let mut last = threads(pid);
    for _ in 0..50 {
        sleep(Duration::from_millis(200));
        let now = threads(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the threads of {pid} never settled: {last:?}");
}

pub fn sampler_thread(c: &Cluster, hw: &Hardware) {
    tracked_args(c, hw, &[]);
    let mark = c.log_mark();
    let script = "#!/bin/bash\nsleep 8\n";
    let tracked = start_sampled(c, &["--carbon-track=yes", "--gres=gpu:1"], script);
    let untracked = c
        .submit_in(&c.work_dir(), &["--gres=gpu:1"], script)
        .unwrap_or_else(|e| panic!("{e}"));
    let (t_pid, u_pid) = wait_for("both extern steps", || {
        let t = extern_stepd(c, tracked.0)?;
        let u = extern_stepd(c, untracked.0)?;
        (c.job_state(untracked.0) == "RUNNING").then_some((t, u))
    });
    let with = steady_threads(t_pid);
    let without = steady_threads(u_pid);
    // The sampler, its watchdog, and the one thread that touches the user's
    // filesystem: one each, and nothing else added.
    for name in ["carbontrack", "carbontrack-w", "carbontrack-io"] {
        assert_eq!(
            with.iter().filter(|n| *n == name).count(),
            1,
            "{name}: {with:?}"
        );
        assert!(!without.iter().any(|n| n == name), "{without:?}");
    }
    assert_eq!(
        with.len(),
        without.len() + 3,
        "tracked {with:?}, untracked {without:?}"
    );

    for id in [tracked, untracked] {
        assert_eq!(c.wait_ended(id).state, "COMPLETED");
    }
    let log = c.log_of_job(mark, tracked.0);
    c.log_of_job(mark, untracked.0);
    // The extern step has said it is done; its process goes right after.
    wait_for("the job's slurmstepds to go", || {
        (stepds(c, tracked.0).is_empty() && stepds(c, untracked.0).is_empty()).then_some(())
    });
    assert_no_plugin_error(&log);
}

/// Issue 5 in a real job: 3 of 10 declared epochs marked from the job, a
/// prediction in the live summary, actual against predicted at the end, and
/// the CSV's intensity and CO2e from the configured zone.
pub fn epochs_predict_and_zone_intensity(c: &Cluster, hw: &Hardware) {
    tracked_args(c, hw, &["intensity=DK"]);
    let dk = carbontrack::carbon::zones::zone_intensity("DK").unwrap().0;
    let mark = c.log_mark();
    let id = c
        .submit_in(
            &c.work_dir(),
            &["--carbon-track=yes", "--carbon-epochs=10", "--gres=gpu:1"],
            "#!/bin/bash\nfor e in 1 2 3; do sleep 3; echo >> \"$CARBONTRACK_EPOCH_FILE\"; done\nsleep 5\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let txt = user_file(c, None, id.0, "txt");

    let live = wait_for("a prediction in the live summary", || {
        let t = std::fs::read_to_string(&txt).ok()?;
        (c.job_state(id.0) == "RUNNING" && t.contains("Predicted consumption for 10 epoch(s)"))
            .then_some(t)
    });
    assert!(live.contains("(running;"), "live summary:\n{live}");

    let ended = c.wait_ended(id);
    assert_eq!(ended.state, "COMPLETED", "{}", c.output_of(id.0));
    let summary = std::fs::read_to_string(&txt).unwrap();
    assert!(
        summary.contains("Predicted after 1 epoch(s)"),
        "final summary:\n{summary}"
    );
    assert!(
        summary.contains("Actual for 3 completed epoch(s)"),
        "final summary:\n{summary}"
    );
    // The timeline marks the three epochs and the prediction for all 10.
    let svg = std::fs::read_to_string(user_file(c, None, id.0, "svg")).unwrap();
    for want in ["epoch ends (3)", "predicted end of 10 epochs (after 1)"] {
        assert!(svg.contains(want), "no `{want}` in the timeline:\n{svg}");
    }
    assert_timeline_renders(
        hw,
        &user_file(c, None, id.0, "svg"),
        &["cpu", "dram", "gpu"],
    );

    let (text, rows) = footprint(&user_file(c, None, id.0, "csv"));
    assert_matches_truth(hw, &rows);
    for r in rows.iter().filter(|r| r.energy_j.is_some()) {
        let g = r.intensity_g_per_kwh.unwrap();
        assert!((g - dk).abs() < 0.01, "{r:?}\n{text}");
        let kwh = r.energy_kwh.unwrap();
        assert!(
            (r.co2e_g.unwrap() - kwh * dk).abs() <= 0.002 + kwh * dk * 1e-3,
            "{r:?}"
        );
        assert!(r.intensity_source.contains("DK"), "{r:?}");
    }
    assert_quiet_log(&c.log_of_job(mark, id.0), id.0);
}

/// The line saying how a job's CPU share was found.
fn share_line(log: &str, id: u32) -> String {
    let needle = format!("carbontrack: job {id}: sampling on ");
    log.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no sampling line for job {id}:\n{log}"))
        .to_string()
}

/// Issue 14: on a node without cpusets (task/none, this cluster), two
/// one-CPU jobs side by side are each charged half of the one package, from
/// Slurm's core allocation (`S_JOB_ALLOC_CORES`), all rows `ok`, within 3%
/// of the truth; an exclusive job is charged all of it.
pub fn core_allocation_without_cpuset(c: &Cluster, hw: &Hardware) {
    tracked_args(c, hw, &["components=cpu,dram"]);
    let mark = c.log_mark();
    let script = "#!/bin/bash\nsleep 6\n";
    let jobs: Vec<JobId> = (0..2)
        .map(|_| {
            c.submit_in(&c.work_dir(), &["-n1", "-c1", "--carbon-track=yes"], script)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let mut cores = Vec::new();
    let mut spans = Vec::new();
    for &id in &jobs {
        assert_eq!(c.wait_ended(id).state, "COMPLETED");
        let log = c.log_of_job(mark, id.0);
        let (text, rows) = footprint(&user_file(c, None, id.0, "csv"));
        let got: Vec<(&str, &str, Option<f64>, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.component.as_str(),
                    r.device.as_str(),
                    r.share,
                    r.status.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("cpu", "package-0", Some(0.5), "ok"),
                ("dram", "package-0", Some(0.5), "ok"),
                ("total", "", None, "ok"),
            ],
            "job {}:\n{text}",
            id.0
        );
        assert_matches_truth(hw, &rows);
        let line = share_line(&log, id.0);
        let core = line
            .split_once("CPU share from Slurm's core allocation (cores ")
            .and_then(|(_, r)| r.split_once(' '))
            .map(|(c, _)| c.to_string())
            .unwrap_or_else(|| panic!("not from the core allocation: {line}"));
        cores.push(core);
        let total = rows.last().unwrap();
        spans.push((time(&total.start), time(&total.end)));
        // The method is named once in the summary too; nothing to explain.
        let summary = std::fs::read_to_string(user_file(c, None, id.0, "txt")).unwrap();
        assert!(
            summary.contains("CPU and DRAM share: Slurm's core allocation (cores "),
            "{summary}"
        );
        assert!(!summary.contains("Notes on the figures"), "{summary}");
        assert_quiet_log(&log, id.0);
    }
    let ((a0, a1), (b0, b1)) = (spans[0], spans[1]);
    assert!(a0 < b1 && b0 < a1, "the jobs did not overlap: {spans:?}");
    cores.sort();
    assert_eq!(cores, ["0", "1"], "each job had a core of its own");

    let mark = c.log_mark();
    let (job, _) = submit_ok(
        c,
        &["--exclusive", "--carbon-track=yes"],
        "#!/bin/bash\nsleep 3\n",
    );
    let log = c.log_of_job(mark, job.id);
    let (text, rows) = footprint(&user_file(c, None, job.id, "csv"));
    for r in rows.iter().filter(|r| !r.is_total()) {
        assert_eq!((r.share, r.status.as_str()), (Some(1.0), "ok"), "{text}");
    }
    assert_matches_truth(hw, &rows);
    assert!(share_line(&log, job.id).contains("(cores 0-1 "), "{log}");
}

/// Issue 17 (items 2 and 3): a job with `--carbon-budget=1g` whose epochs
/// predict far more (10000 epochs) and an hourly intensity file covering the
/// 24 h before it, with one clean hour 10 h back. While it runs the live
/// summary's first line says it is over budget, the job reads its own state
/// (`carbontrack status --json`: over_budget true), `carbontrack epoch` says
/// it once on the job's stderr, and the job ends normally (carbontrack never
/// cancels). The final summary says where the budget went and that starting
/// in the clean hour would have emitted 75% less.
pub fn budget_and_greener_start(c: &Cluster, hw: &Hardware) {
    let bin = env!("CARGO_BIN_EXE_carbontrack");
    let now_h = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600;
    let clean = now_h - 10;
    let mut csv = String::from("timestamp,g_per_kwh\n");
    for h in now_h - 30..now_h + 4 {
        let g = if h == clean { 100 } else { 400 };
        csv.push_str(&format!("{},{g}\n", h * 3600));
    }
    let file = c.dir.join("intensity-budget.csv");
    std::fs::write(&file, csv).unwrap();
    tracked_args(c, hw, &[&format!("intensity=file:{}", file.display())]);
    let mark = c.log_mark();
    let script = format!(
        "#!/bin/bash\nfor e in 1 2 3 4; do sleep 2.5; {bin} epoch; done\nsleep 2.5\n\
         {bin} status --json > state-$SLURM_JOB_ID.json\necho status=$?\n"
    );
    let id = c
        .submit_in(
            &c.work_dir(),
            &[
                "--carbon-track=yes",
                "--carbon-epochs=10000",
                "--carbon-budget=1g",
            ],
            &script,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let txt = user_file(c, None, id.0, "txt");
    let live = wait_for("the budget line at the top of the live summary", || {
        let t = std::fs::read_to_string(&txt).ok()?;
        (c.job_state(id.0) == "RUNNING" && t.starts_with("OVER BUDGET: predicted")).then_some(t)
    });
    assert!(
        live.lines()
            .next()
            .unwrap()
            .contains("over the carbon budget of 1.00 g CO2e"),
        "{live}"
    );
    assert!(live.contains("Predicted for all epochs: "), "{live}");

    let ended = c.wait_ended(id);
    let output = c.output_of(id.0);
    assert_eq!(ended.state, "COMPLETED", "{output}");
    assert!(output.contains("status=0"), "{output}");
    // One line where the user sees it: the job's own output.
    let said: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("carbontrack: OVER BUDGET: predicted"))
        .collect();
    assert_eq!(said.len(), 1, "{output}");

    let state = std::fs::read_to_string(c.work_dir().join(format!("state-{}.json", id.0))).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&state).unwrap_or_else(|e| panic!("{e}: {state}"));
    assert_eq!(v["over_budget"], true, "{state}");
    assert_eq!(v["running"], true, "{state}");
    assert_eq!(v["budget"]["text"], "1g", "{state}");
    assert_eq!(v["predicted"]["from"], "epochs", "{state}");
    assert!(v["predicted"]["co2e_g"].as_f64().unwrap() > 1.0, "{state}");
    let used = v["used"]["co2e_g"].as_f64().unwrap();
    assert!(used > 0.0 && used < 1.0, "{state}");

    let summary = std::fs::read_to_string(&txt).unwrap();
    assert!(summary.contains("Carbon budget: 1.00 g CO2e"), "{summary}");
    assert!(
        summary.contains("The run stayed within its budget."),
        "{summary}"
    );
    assert!(
        summary.contains("The prediction first exceeded the budget at "),
        "{summary}"
    );
    let hour = humantime::format_rfc3339_seconds(
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(clean * 3600),
    )
    .to_string();
    let greener = format!(
        "Greener start: started at {} {} UTC: -75% CO2e",
        &hour[..10],
        &hour[11..16]
    );
    assert!(summary.contains(&greener), "no `{greener}` in:\n{summary}");
    let (text, rows) = footprint(&user_file(c, None, id.0, "csv"));
    let total = rows.iter().find(|r| r.component == "total").unwrap();
    assert!(
        (total.intensity_g_per_kwh.unwrap() - 400.0).abs() < 1e-6,
        "{text}"
    );
    // The final state: ended, within the budget.
    let fin = std::fs::read_to_string(user_file(c, None, id.0, "json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&fin).unwrap();
    assert_eq!(
        (v["running"].clone(), v["over_budget"].clone()),
        (false.into(), false.into()),
        "{fin}"
    );
    assert_quiet_log(&c.log_of_job(mark, id.0), id.0);
}
