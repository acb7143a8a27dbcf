//! `carbontrack run` end to end: the real binary over a powercap fixture and the
//! fake NVML, compared with the injected truth; exit status, signals and epoch
//! marks of the wrapped command.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use carbontrack::footprint::{Row, read_csv};
use carbontrack_fixtures::fake_nvml::fake_nvml;
use carbontrack_fixtures::powercap::{PackageSpec, PowercapSpec, PowercapTree, ZoneSpec};
use carbontrack_fixtures::profile::Profile;
use carbontrack_fixtures::svg_render;
use carbontrack_fixtures::tempdir::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_carbontrack");
const GPU: &str = "GPU-00000000-1111-2222-3333-444455556666";

fn parse_time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("bad time {s}: {e}"))
}

fn row<'a>(rows: &'a [Row], component: &str, device: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.component == component && r.device == device)
        .unwrap_or_else(|| panic!("no {component} {device} row in {rows:#?}"))
}

fn within(measured: f64, truth: f64, tolerance: f64, what: &str) {
    let err = (measured - truth).abs() / truth;
    assert!(
        err <= tolerance,
        "{what}: measured {measured:.3} J, truth {truth:.3} J, error {:.3}%",
        err * 100.0
    );
}

/// A powercap tree with one package (50 W, at most 100 W) and its DRAM
/// (10 W), wrapping every 4 s at 50 W, kept advancing by a writer thread.
fn powercap(dir: &Path) -> carbontrack_fixtures::powercap::PowercapWriter {
    let spec = PowercapSpec {
        packages: vec![
            PackageSpec::new(
                ZoneSpec::new(Profile::constant(50.0))
                    .max_range_uj(200_000_000)
                    .max_power_w(100.0),
            )
            .dram(ZoneSpec::new(Profile::constant(10.0))),
        ],
        ..Default::default()
    };
    PowercapTree::create(dir, &spec, SystemTime::now())
        .unwrap()
        .spawn_writer(Duration::from_millis(2))
}

fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap()
}

#[test]
fn measures_the_fixtures_and_exits_with_the_commands_status() {
    let tmp = TempDir::new("run-measure").unwrap();
    let rapl = powercap(&tmp.path().join("powercap"));
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let gpu_profile: Profile = "100@1,300@1".parse().unwrap();
    let nvml = fake_nvml(
        "run-measure",
        &format!("epoch = {epoch}\n[gpu]\nuuid = {GPU}\nminor = 0\npower = {gpu_profile}\n"),
    );

    let out = run(
        &[
            "run",
            "--interval",
            "200ms",
            "--powercap",
            rapl.root().to_str().unwrap(),
            "--nvml",
            nvml.to_str().unwrap(),
            "--intensity",
            "100",
            "-o",
            "fp.csv",
            "--",
            "sh",
            "-c",
            "sleep 4; exit 7",
        ],
        tmp.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");

    let text = std::fs::read_to_string(tmp.path().join("fp.csv")).unwrap();
    assert!(text.starts_with(
        "job_id,node,component,device,start,end,duration_s,share,energy_j,pue,energy_kwh,intensity_g_per_kwh,co2e_g,status"
    ));
    let rows = read_csv(text.as_bytes()).unwrap();
    let cpu = row(&rows, "cpu", "package-0");
    let (t0, t1) = (parse_time(&cpu.start), parse_time(&cpu.end));
    assert!(cpu.duration_s >= 3.9, "{cpu:?}");
    within(
        cpu.energy_j.unwrap(),
        rapl.truth("package-0", t0, t1),
        0.01,
        "package",
    );
    within(
        row(&rows, "dram", "package-0").energy_j.unwrap(),
        rapl.truth("package-0/dram", t0, t1),
        0.01,
        "dram",
    );
    let g = row(&rows, "gpu", GPU);
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - epoch;
    within(
        g.energy_j.unwrap(),
        gpu_profile.energy_between(secs(t0), secs(t1)),
        0.01,
        "gpu",
    );

    let total = rows.iter().find(|r| r.component == "total").unwrap();
    let sum: f64 = rows
        .iter()
        .filter(|r| r.component != "total")
        .filter_map(|r| r.energy_j)
        .sum();
    assert!((total.energy_j.unwrap() - sum).abs() < 0.01, "{total:?}");
    assert_eq!(total.status, "ok", "{text}");
    assert!((total.co2e_g.unwrap() - sum * 1.58 / 3.6e6 * 100.0).abs() < 0.01);
    assert!(rows.iter().all(|r| r.job_id == "local"));
    assert!(stderr.contains("Actual consumption"), "{stderr}");
}

#[test]
fn says_what_it_could_not_measure_and_never_reports_zero() {
    let tmp = TempDir::new("run-nothing").unwrap();
    let out = run(
        &[
            "run",
            "--powercap",
            tmp.path().to_str().unwrap(),
            "--nvml",
            "/nonexistent/libnvidia-ml.so.1",
            "--",
            "true",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0));
    let rows =
        read_csv(std::fs::File::open(tmp.path().join("carbontrack-local.csv")).unwrap()).unwrap();
    for r in &rows {
        assert_eq!(r.energy_j, None, "{r:?}");
        assert_eq!(r.co2e_g, None, "{r:?}");
        assert!(r.status.starts_with("unavailable: "), "{r:?}");
    }
    assert!(row(&rows, "cpu", "rapl").status.contains("no RAPL zones"));
    assert!(row(&rows, "gpu", "nvml").status.contains("not found"));
}

#[test]
fn passes_arguments_and_signals_through() {
    let tmp = TempDir::new("run-signals").unwrap();
    let common = [
        "run",
        "--powercap",
        "/nonexistent",
        "--nvml",
        "/nonexistent/x.so",
        "--report",
        "none",
        "--",
    ];

    // Flags after `--` are the command's, not ours.
    let mut args = common.to_vec();
    args.extend(["sh", "-c", "echo \"$@\"", "sh", "--interval", "-o", "x"]);
    let out = run(&args, tmp.path());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "--interval -o x"
    );
    assert!(
        !tmp.path().join("carbontrack-local.csv").exists(),
        "report=none writes no CSV"
    );

    // A command that dies of a signal: the wrapper dies of the same one.
    let mut args = common.to_vec();
    args.extend(["sh", "-c", "kill -USR1 $$"]);
    let out = run(&args, tmp.path());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGUSR1));

    // SIGTERM to the wrapper reaches the command, whose trap decides the status.
    let mut args = common.to_vec();
    args.extend([
        "sh",
        "-c",
        "trap 'exit 42' TERM; touch ready; while :; do sleep 0.1; done",
    ]);
    let mut child = Command::new(BIN)
        .args(&args)
        .current_dir(tmp.path())
        .spawn()
        .unwrap();
    let ready = tmp.path().join("ready");
    for _ in 0..100 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready.exists(), "the wrapped command never started");
    carbontrack::ffi::signals::kill(child.id(), libc::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));

    // A command that does not exist: the shell's 127.
    let mut args = common.to_vec();
    args.push("/nonexistent/command");
    assert_eq!(run(&args, tmp.path()).status.code(), Some(127));
}

#[test]
fn epoch_marks_give_a_prediction() {
    let tmp = TempDir::new("run-epochs").unwrap();
    let rapl = powercap(&tmp.path().join("powercap"));
    let script = format!("for i in 1 2 3; do sleep 1; {BIN} epoch; done");
    // The timeline goes to a directory of its own, apart from the CSV.
    std::fs::create_dir(tmp.path().join("plots")).unwrap();
    let out = run(
        &[
            "run",
            "--interval",
            "100ms",
            "--powercap",
            rapl.root().to_str().unwrap(),
            "--components",
            "cpu",
            "--epochs",
            "10",
            "--plot",
            "plots/timeline.svg",
            "--",
            "sh",
            "-c",
            &script,
        ],
        tmp.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Predicted after 1 epoch(s)"), "{stderr}");
    assert!(
        stderr.contains("Actual for 3 completed epoch(s)"),
        "{stderr}"
    );
    // `--plot FILE`: the power timeline, with the three epoch ends and the
    // prediction, that a real renderer draws with the CPU's area in it.
    assert!(
        stderr.contains("power timeline written to plots/timeline.svg"),
        "{stderr}"
    );
    let svg_path = tmp.path().join("plots/timeline.svg");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("epoch ends (3)"), "{svg}");
    assert!(
        svg.contains("predicted end of 10 epochs (after 1)"),
        "{svg}"
    );
    assert!(svg.contains("CPU: "), "{svg}");
    assert!(!svg.contains("GPU"), "no GPU was measured: {svg}");
    let img = svg_render::rasterise(&svg_path, &tmp.path().join("timeline.png"));
    let cpu = svg_render::hex(carbontrack::report::plot::SERIES[0].colour);
    let area = img.count(cpu, 0.09, 0.15, 0.96, 0.71);
    assert!(area > 5_000, "the CPU area has {area} pixels");
}

#[test]
fn without_plot_no_timeline_is_written() {
    let tmp = TempDir::new("run-noplot").unwrap();
    let rapl = powercap(&tmp.path().join("powercap"));
    let out = run(
        &[
            "run",
            "--interval",
            "100ms",
            "--powercap",
            rapl.root().to_str().unwrap(),
            "--components",
            "cpu",
            "--",
            "true",
        ],
        tmp.path(),
    );
    assert!(out.status.success());
    let svgs = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "svg")
        })
        .count();
    assert_eq!(svgs, 0);
}

/// An hourly file of `timestamp,g_per_kwh` rows: 400 g/kWh from `from` to
/// `to` (hour indices), except 100 in `clean`.
fn hourly_file(path: &Path, from: u64, to: u64, clean: &[u64]) {
    let mut csv = String::from("timestamp,g_per_kwh\n");
    for h in from..to {
        let g = if clean.contains(&h) { 100 } else { 400 };
        csv.push_str(&format!("{},{g}\n", h * 3600));
    }
    std::fs::write(path, csv).unwrap();
}

fn this_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
}

fn fmt_hour(h: u64) -> String {
    let s =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(h * 3600)).to_string();
    format!("{} {}", &s[..10], &s[11..16])
}

/// `run --carbon-budget` with epochs predicting far past it: one line on
/// stderr when it is first exceeded, the command reads its own state
/// (`carbontrack status --json`: over_budget true) and goes on to the end;
/// the final summary holds the budget. With an hourly file covering the 24 h
/// before, the summary names the clean hour as the greener start.
#[test]
fn a_budget_exceeded_is_said_once_and_the_command_reads_it() {
    let tmp = TempDir::new("run-budget").unwrap();
    let rapl = powercap(&tmp.path().join("powercap"));
    let now = this_hour();
    let file = tmp.path().join("hourly.csv");
    hourly_file(&file, now - 30, now + 3, &[now - 10]);
    // 50 W for 1 s an epoch: 1000 epochs predict 50 kJ, 8.8 g CO2e at 400
    // g/kWh with PUE 1.58; 0.1 g is used long before the end.
    let script =
        format!("for i in 1 2 3; do sleep 1; {BIN} epoch; done; sleep 1.5; {BIN} status --json");
    let out = run(
        &[
            "run",
            "--interval",
            "100ms",
            "--refresh",
            "1s",
            "--powercap",
            rapl.root().to_str().unwrap(),
            "--components",
            "cpu",
            "--intensity",
            &format!("file:{}", file.display()),
            "--epochs",
            "1000",
            "--carbon-budget",
            "0.1g",
            "--",
            "sh",
            "-c",
            &script,
        ],
        tmp.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("carbontrack: OVER BUDGET: predicted"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("for all epochs, over the carbon budget of 0.100 g CO2e"),
        "{stderr}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["job_id"], "local", "{stdout}");
    assert_eq!(v["over_budget"], true, "{stdout}");
    assert_eq!(v["budget"]["unit"], "g_co2e", "{stdout}");
    assert_eq!(v["predicted"]["from"], "epochs", "{stdout}");
    // The prediction: 1000 epochs of about 50 J, with PUE and 400 g/kWh.
    let predicted = v["predicted"]["co2e_g"].as_f64().unwrap();
    let truth = 1000.0 * 50.0 * 1.58 / 3.6e6 * 400.0;
    assert!(
        (predicted - truth).abs() / truth < 0.15,
        "predicted {predicted} g, about {truth} g: {stdout}"
    );
    assert!(v["used"]["co2e_g"].as_f64().unwrap() < 0.1, "{stdout}");
    assert!(stderr.contains("Carbon budget: 0.100 g CO2e"), "{stderr}");
    assert!(
        stderr.contains("The prediction first exceeded the budget at "),
        "{stderr}"
    );
    let greener = format!(
        "Greener start: started at {} UTC: -75% CO2e",
        fmt_hour(now - 10)
    );
    assert!(stderr.contains(&greener), "no `{greener}` in:\n{stderr}");
}

/// `carbontrack suggest` over a forecast: the clean hours 5 and 6 hours
/// ahead, 75% less than starting now, and the `sbatch --begin=` for them
/// (in UTC here: TZ=UTC). A window the file does not cover: exit 1, saying so.
#[test]
fn suggest_finds_the_clean_hours_of_a_forecast() {
    let tmp = TempDir::new("run-suggest").unwrap();
    let now = this_hour();
    let file = tmp.path().join("forecast.csv");
    hourly_file(&file, now - 2, now + 30, &[now + 5, now + 6]);
    let spec = format!("file:{}", file.display());
    let out = Command::new(BIN)
        .args(["suggest", "--duration", "2h", "--intensity", &spec])
        .args(["--power", "300"])
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("Best start: {} UTC, in ", fmt_hour(now + 5))),
        "{stdout}"
    );
    assert!(
        stdout.contains("Expected CO2e: 100 g per kWh over the 2h run, against 400 g per kWh starting now: -75%."),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("At 300 W (0.600 kWh, before PUE): 60.0 g CO2e, against 240 g starting now."),
        "{stdout}"
    );
    let begin = fmt_hour(now + 5).replace(' ', "T") + ":00";
    assert!(
        stdout.contains(&format!("sbatch --begin={begin}\n")),
        "{stdout}"
    );

    let out = Command::new(BIN)
        .args(["suggest", "--duration", "40h", "--intensity", &spec])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the file has no figure for") && stderr.contains("needs hourly figures"),
        "{stderr}"
    );
}

/// `carbontrack run --pid`: follows a process it did not start (the Python
/// API's mode), names its epoch file on stdout, prints carbontracker's
/// predicted block once enough epochs are marked, and ends with the process.
#[test]
fn follows_a_running_process_until_it_exits() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let tmp = TempDir::new("run-pid").unwrap();
    let rapl = powercap(&tmp.path().join("powercap"));
    let mut followed = Command::new("sleep").arg("60").spawn().unwrap();
    let mut tracker = Command::new(BIN)
        .args(["run", "--pid", &followed.id().to_string()])
        .args(["--interval", "100ms", "--components", "cpu,dram"])
        .args([
            "--epochs",
            "4",
            "--epochs-before-pred",
            "2",
            "--intensity",
            "100",
        ])
        .arg("--powercap")
        .arg(rapl.root())
        .args(["-o", "fp.csv"])
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(tracker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let epoch_file = line
        .trim()
        .strip_prefix("CARBONTRACK_EPOCH_FILE=")
        .unwrap_or_else(|| panic!("no epoch file announced: {line:?}"))
        .to_string();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        let mark = Command::new(BIN)
            .arg("epoch")
            .env("CARBONTRACK_EPOCH_FILE", &epoch_file)
            .status()
            .unwrap();
        assert!(mark.success());
    }
    std::thread::sleep(Duration::from_millis(700));
    followed.kill().unwrap();
    // Not reaped yet: a zombie counts as gone.
    let out = tracker.wait_with_output().unwrap();
    followed.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let pred = stderr
        .find("Predicted consumption for 4 epoch(s):")
        .unwrap_or_else(|| panic!("{stderr}"));
    let actual = stderr
        .find("Actual consumption for 2 epoch(s):")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(pred < actual, "{stderr}");

    let rows = read_csv(std::fs::File::open(tmp.path().join("fp.csv")).unwrap()).unwrap();
    let total = rows.iter().find(|r| r.component == "total").unwrap();
    assert_eq!(total.status, "ok", "{rows:#?}");
    let (t0, t1) = (parse_time(&total.start), parse_time(&total.end));
    let truth = rapl.truth("package-0", t0, t1) + rapl.truth("package-0/dram", t0, t1);
    within(total.energy_j.unwrap(), truth, 0.01, "total");
    assert!((2.0..3.5).contains(&total.duration_s), "{total:?}");
    assert!(
        !Path::new(&epoch_file).exists(),
        "the epoch file is removed at the end"
    );

    // A process that is not there: said, and nothing measured.
    let out = run(
        &["run", "--pid", "999999999", "--report", "none"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process 999999999 to follow"));
    // A PID and a command: one or the other.
    let out = run(&["run", "--pid", "1", "--", "true"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
}

/// `bash`'s `times`: its own user and system time, then its children's
/// (`0m1.234s 0m0.010s` lines), summed in seconds: the kernel's own account
/// of the command's CPU time, the truth the estimate is compared with.
fn bash_times(stdout: &str) -> f64 {
    let secs = |t: &str| -> f64 {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap();
        m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
    };
    let lines: Vec<&str> = stdout.lines().rev().take(2).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(secs)
        .sum()
}

/// Two processes spin for 2 s each; `times` says how much CPU they got.
const BURN: &str = "burn() { e=$((SECONDS+2)); while [ $SECONDS -lt $e ]; do :; done; }; \
                    burn & burn; wait; times";

/// With no RAPL and `--cpu-tdp`, the CPU row is an estimate: TDP × the
/// command's CPU time / CPUs per package, against the CPU time the kernel
/// gave it (bash's `times`); labelled, and the total says it includes one.
/// With the RAPL fixture, the same flag changes nothing: measured wins.
#[test]
fn estimates_cpu_energy_from_tdp_and_cpu_time_where_rapl_is_missing() {
    let tmp = TempDir::new("run-estimate").unwrap();
    let topo = tmp.path().join("cpu");
    carbontrack_fixtures::cputree::write_blocks(&topo, 1, 4).unwrap();
    let out = run(
        &[
            "run",
            "--interval",
            "200ms",
            "--powercap",
            tmp.path().to_str().unwrap(),
            "--cpu-topology",
            topo.to_str().unwrap(),
            "--components",
            "cpu,dram",
            "--cpu-tdp",
            "100",
            "-o",
            "est.csv",
            "--",
            "bash",
            "-c",
            BURN,
        ],
        tmp.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let cpu_s = bash_times(&String::from_utf8_lossy(&out.stdout));
    let rows = read_csv(std::fs::File::open(tmp.path().join("est.csv")).unwrap()).unwrap();
    let est = row(&rows, "cpu", "tdp-estimate");
    assert_eq!(
        est.status, "estimated: TDP 100 W (cpu_tdp=100), CPU time",
        "{rows:#?}"
    );
    let truth = 100.0 * cpu_s / 4.0;
    eprintln!(
        "estimate {:.3} J for {cpu_s:.3} CPU-s by bash's times: {truth:.3} J, error {:.2}%",
        est.energy_j.unwrap(),
        (est.energy_j.unwrap() - truth) / truth * 100.0
    );
    // The CPU time of a tick or two of the last interval may be missed.
    within(est.energy_j.unwrap(), truth, 0.03, "estimate");
    assert!(
        est.share.unwrap() > 0.0 && est.share.unwrap() <= 1.0,
        "{est:?}"
    );
    // DRAM has no model: still unavailable, and the total says both.
    assert!(
        row(&rows, "dram", "rapl")
            .status
            .starts_with("unavailable: ")
    );
    let total = rows.iter().find(|r| r.component == "total").unwrap();
    assert_eq!(
        total.status, "incomplete: 1 of 2 rows unavailable (dram), 1 estimated (cpu)",
        "{total:?}"
    );
    assert_eq!(total.energy_j, est.energy_j);
    assert!(stderr.contains("CPU energy is an estimate"), "{stderr}");

    // Only the CPU asked for: the total is an estimate, said by its prefix.
    let out = run(
        &[
            "run",
            "--powercap",
            tmp.path().to_str().unwrap(),
            "--cpu-topology",
            topo.to_str().unwrap(),
            "--components",
            "cpu",
            "--cpu-tdp",
            "100",
            "-o",
            "est2.csv",
            "--",
            "true",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0));
    let rows = read_csv(std::fs::File::open(tmp.path().join("est2.csv")).unwrap()).unwrap();
    let total = rows.iter().find(|r| r.component == "total").unwrap();
    assert_eq!(total.status, "estimated: 1 of 1 row estimated (cpu)");

    // The same job over the RAPL fixture (50 W): measured, no estimate.
    let rapl = powercap(&tmp.path().join("powercap"));
    let out = run(
        &[
            "run",
            "--interval",
            "200ms",
            "--powercap",
            rapl.root().to_str().unwrap(),
            "--cpu-topology",
            topo.to_str().unwrap(),
            "--components",
            "cpu",
            "--cpu-tdp",
            "100",
            "-o",
            "rapl.csv",
            "--",
            "bash",
            "-c",
            BURN,
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0));
    let cpu_s = bash_times(&String::from_utf8_lossy(&out.stdout));
    let rows = read_csv(std::fs::File::open(tmp.path().join("rapl.csv")).unwrap()).unwrap();
    assert!(rows.iter().all(|r| r.device != "tdp-estimate"), "{rows:#?}");
    let cpu = row(&rows, "cpu", "package-0");
    assert_eq!(cpu.status, "ok");
    let (t0, t1) = (parse_time(&cpu.start), parse_time(&cpu.end));
    // This process's cpuset may be narrower than the fixture's 4 CPUs.
    let measured = rapl.truth("package-0", t0, t1) * cpu.share.unwrap();
    within(cpu.energy_j.unwrap(), measured, 0.01, "package");
    let model = 100.0 * cpu_s / 4.0;
    eprintln!(
        "same job over the RAPL fixture: measured {:.3} J (truth {measured:.3} J), the model would say {model:.3} J ({:+.1}%)",
        cpu.energy_j.unwrap(),
        (model - measured) / measured * 100.0
    );
}

/// The fake `powermetrics` and its recorded samples (tests/fixtures/powermetrics).
fn fake_powermetrics() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/powermetrics/fake-powermetrics")
}

/// The recorded samples' energies (cpu, gpu, ane) in joules: the first two
/// give `*_energy` (mJ), the third only `*_power` (mW) over 250 ms.
fn recorded(name: &str) -> [f64; 3] {
    match name {
        "sample-1.plist" => [1.2, 0.3, 0.02],
        "sample-2.plist" => [0.8, 0.5, 0.0],
        "sample-3.plist" => [1.0, 0.25, 0.02],
        other => panic!("unknown sample {other}"),
    }
}

fn run_powermetrics(
    tmp: &Path,
    csv: &str,
    env: &[(&str, &str)],
    cmd: &[&str],
) -> (Output, Vec<Row>) {
    let fake = fake_powermetrics();
    let mut args = vec![
        "run",
        "--interval",
        "200ms",
        "--powermetrics",
        fake.to_str().unwrap(),
        "--intensity",
        "100",
        "-o",
        csv,
        "--",
    ];
    args.extend(cmd);
    let out = Command::new(BIN)
        .args(&args)
        .current_dir(tmp)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let rows = read_csv(std::fs::File::open(tmp.join(csv)).unwrap()).unwrap();
    (out, rows)
}

/// Apple Silicon through the fake `powermetrics`: CPU, GPU and ANE rows with
/// the energies of the samples it wrote, RAPL and NVML not asked.
#[test]
fn reads_cpu_gpu_and_ane_energy_from_powermetrics() {
    let tmp = TempDir::new("run-powermetrics").unwrap();
    let log = tmp.path().join("written");
    let (out, rows) = run_powermetrics(
        tmp.path(),
        "pm.csv",
        &[("CT_FAKE_PM_LOG", log.to_str().unwrap())],
        &["sleep", "2"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let written: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert!(written.len() >= 3, "{written:?}");
    let got = [
        row(&rows, "cpu", "apple-soc"),
        row(&rows, "gpu", "apple-soc"),
        row(&rows, "ane", "apple-soc"),
    ];
    assert!(got.iter().all(|r| r.status == "ok"), "{rows:#?}");
    assert_eq!(rows.len(), 4, "no RAPL or NVML rows: {rows:#?}");
    // The meter's last look may come before the fake's last samples were
    // read (a loaded machine): the figure is exactly the truth of the first
    // n samples written, most of them.
    let truth = |n: usize| -> [f64; 3] {
        written[..n]
            .iter()
            .map(|s| recorded(s))
            .fold([0.0; 3], |a, e| [a[0] + e[0], a[1] + e[1], a[2] + e[2]])
    };
    let n = (written.len().div_ceil(2)..=written.len())
        .find(|&n| (got[0].energy_j.unwrap() - truth(n)[0]).abs() < 1e-6)
        .unwrap_or_else(|| panic!("cpu {:?} is no prefix of {written:?}", got[0].energy_j));
    for (i, r) in got.iter().enumerate() {
        assert!(
            (r.energy_j.unwrap() - truth(n)[i]).abs() < 1e-6,
            "{}: {:?} vs {}",
            r.component,
            r.energy_j,
            truth(n)[i]
        );
    }
    eprintln!(
        "powermetrics: {n} of {} samples read: cpu {:.3} J gpu {:.3} J ane {:.3} J, truth {:?}",
        written.len(),
        got[0].energy_j.unwrap(),
        got[1].energy_j.unwrap(),
        got[2].energy_j.unwrap(),
        truth(n)
    );
    let total = rows.iter().find(|r| r.component == "total").unwrap();
    assert_eq!(total.status, "ok");
    assert!((total.energy_j.unwrap() - truth(n).iter().sum::<f64>()).abs() < 1e-6);
}

/// A powermetrics that stops (here after 3 samples, as `-n 3` would) leaves
/// exactly what it wrote, `incomplete`; one that refuses a user who is not
/// root leaves nothing and says which sudoers line lets it run.
#[test]
fn powermetrics_that_ends_or_refuses_is_said() {
    let tmp = TempDir::new("run-powermetrics-end").unwrap();
    let (out, rows) = run_powermetrics(
        tmp.path(),
        "end.csv",
        &[("CT_FAKE_PM_COUNT", "3")],
        &["sleep", "1.5"],
    );
    assert_eq!(out.status.code(), Some(0));
    let cpu = row(&rows, "cpu", "apple-soc");
    assert!((cpu.energy_j.unwrap() - 3.0).abs() < 1e-9, "{cpu:?}");
    assert!((row(&rows, "ane", "apple-soc").energy_j.unwrap() - 0.04).abs() < 1e-9);
    assert!(
        cpu.status.starts_with("incomplete: powermetrics ended at "),
        "{cpu:?}"
    );

    let (out, rows) = run_powermetrics(
        tmp.path(),
        "refused.csv",
        &[("CT_FAKE_PM_REFUSE", "1")],
        &["true"],
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("must be invoked as the superuser")
            && stderr.contains("NOPASSWD: /usr/bin/powermetrics"),
        "{stderr}"
    );
    for r in rows.iter() {
        assert_eq!(r.energy_j, None, "{r:?}");
        assert!(r.status.starts_with("unavailable: "), "{r:?}");
    }
}
