//! Jobs sharing a node under Slurm's real cgroup v1 cpusets (task/cgroup with
//! ConstrainCores, `scripts/test-cluster start --cgroup`): each job is charged
//! the CPU packages its cores are on, read from the cpuset Slurm made for it,
//! and two jobs side by side on one node add up to the node, never more.
//!
//! Only the topology is a fixture (`cpu_topology=`): this machine's CPUs 0 and
//! 1 are put on packages 0 and 1, each with a fake RAPL package of its own
//! power. A job confined to one CPU must then be charged that CPU's whole
//! package and nothing of the other, which the count fallback (one CPU of
//! two: half of each) cannot fake.
//!
//! Needs root, the Slurm packages, Slurm 22.05's cgroup v1 plugin, a cgroup
//! v1 cpuset controller at /sys/fs/cgroup/cpuset and a machine of two CPUs
//! (0-1, as this project's machines have); skipped with a message otherwise
//! (a failure under CI=true).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use carbontrack::footprint::{Row, read_csv};
use carbontrack_fixtures::cputree;
use carbontrack_fixtures::powercap::{
    PackageSpec, PowercapSpec, PowercapTree, PowercapWriter, ZoneSpec,
};
use carbontrack_fixtures::profile::Profile;
use common::{Cluster, JobId, in_ci, missing_prerequisite};

const WAIT: Duration = Duration::from_secs(90);
/// How far a measured energy may be from the injected truth.
const TOLERANCE: f64 = 0.03;
/// Package power (W) by package; DRAM draws a tenth of it.
const POWER: [f64; 2] = [100.0, 60.0];

/// Two fake RAPL packages kept advancing, and the topology that puts CPU N
/// on package N.
struct Hardware {
    rapl: PowercapWriter,
    topology: PathBuf,
    spool: PathBuf,
    epoch: SystemTime,
}

impl Hardware {
    fn new(dir: &Path) -> Hardware {
        let epoch = SystemTime::now();
        let zone = |w: f64| ZoneSpec::new(Profile::constant(w)).max_power_w(200.0);
        let spec = PowercapSpec {
            packages: POWER
                .iter()
                .map(|&w| PackageSpec::new(zone(w)).dram(zone(w / 10.0)))
                .collect(),
            ..Default::default()
        };
        let rapl = PowercapTree::create(&dir.join("powercap"), &spec, epoch)
            .expect("powercap fixture")
            .spawn_writer(Duration::from_millis(5));
        let topology = dir.join("cpu");
        cputree::write_topology(&topology, &[(0, 0), (1, 1)]).expect("topology fixture");
        let spool = dir.join("spool");
        Hardware {
            rapl,
            topology,
            spool,
            epoch,
        }
    }

    fn plugin_args(&self) -> Vec<String> {
        vec![
            format!("spool={}", self.spool.display()),
            format!("powercap={}", self.rapl.root().display()),
            format!("cpu_topology={}", self.topology.display()),
            "components=cpu,dram".to_string(),
            "interval=500ms".to_string(),
        ]
    }

    /// Energy package `pkg`'s zone (DRAM when `dram`) used between the row's
    /// first and last sample.
    fn truth(&self, pkg: usize, dram: bool, r: &Row) -> f64 {
        let since = |s: &str| time(s).duration_since(self.epoch).unwrap().as_secs_f64();
        let watts = if dram { POWER[pkg] / 10.0 } else { POWER[pkg] };
        watts * (since(&r.end) - since(&r.start))
    }
}

fn time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("bad time `{s}`: {e}"))
}

/// The CPUs a job's output says it was allowed (`Cpus_allowed_list`).
fn allowed_cpus(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in the job's output:\n{output}"))
}

/// Two one-CPU jobs at once: each is charged exactly the package of the CPU
/// Slurm confined it to, the whole of it, and together they are charged each
/// package once.
fn jobs_sharing_a_node_are_charged_their_own_package(c: &Cluster, hw: &Hardware) {
    let args = hw.plugin_args();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.set_plugin_args(&refs);
    let script = "#!/bin/bash\ngrep Cpus_allowed_list /proc/self/status\nsleep 6\n";
    let sbatch = ["-n1", "-c1", "--carbon-track=yes"];
    let mark = c.log_mark();
    let jobs: Vec<JobId> = (0..2)
        .map(|_| c.submit_in(&c.work_dir(), &sbatch, script).expect("sbatch"))
        .collect();
    for &j in &jobs {
        // Out of COMPLETING too: the extern step writes the footprint last.
        c.wait_ended(j);
        let csv = c.work_dir().join(format!("carbontrack-{}.csv", j.0));
        let deadline = Instant::now() + WAIT;
        while !csv.exists() {
            assert!(Instant::now() < deadline, "no {}", csv.display());
            sleep(Duration::from_millis(100));
        }
    }
    let mut charged = Vec::new();
    let mut spans = Vec::new();
    for &j in &jobs {
        let output = c.output_of(j.0);
        let cpu: usize = allowed_cpus(&output)
            .parse()
            .unwrap_or_else(|_| panic!("job {} was not confined to one CPU:\n{output}", j.0));
        let csv = c.work_dir().join(format!("carbontrack-{}.csv", j.0));
        let text = fs::read_to_string(&csv)
            .unwrap_or_else(|e| panic!("no footprint {}: {e}", csv.display()));
        let rows = read_csv(text.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", csv.display()));
        common::assert_short_statuses(&rows);
        let devices: Vec<(&str, &str, Option<f64>, &str)> = rows
            .iter()
            .filter(|r| !r.is_total())
            .map(|r| {
                (
                    r.component.as_str(),
                    r.device.as_str(),
                    r.share,
                    r.status.as_str(),
                )
            })
            .collect();
        let package = format!("package-{cpu}");
        assert_eq!(
            devices,
            [
                ("cpu", package.as_str(), Some(1.0), "ok"),
                ("dram", package.as_str(), Some(1.0), "ok"),
            ],
            "job {} ran on CPU {cpu}:\n{text}",
            j.0
        );
        for r in rows.iter().filter(|r| !r.is_total()) {
            let truth = hw.truth(cpu, r.component == "dram", r);
            let measured = r.energy_j.expect("measured");
            assert!(
                (measured - truth).abs() <= TOLERANCE * truth,
                "job {} {} {}: {measured} J, truth {truth} J",
                j.0,
                r.component,
                r.device
            );
        }
        let total = rows.last().filter(|r| r.is_total()).expect("a total row");
        assert_eq!(total.status, "ok", "{text}");
        spans.push((time(&total.start), time(&total.end)));
        charged.push(cpu);
        // The cpuset is used, and Slurm's core allocation mapped with the
        // node's layout gives the same package: said once, no disagreement.
        let log = c.log_of_job(mark, j.0);
        let sampling: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("carbontrack: job {}: sampling on ", j.0)))
            .collect();
        assert_eq!(sampling.len(), 1, "{log}");
        assert!(
            sampling[0].contains("CPU share from the job's cpuset (/sys/fs/cgroup/cpuset/slurm")
                && sampling[0].contains(&format!("cpuset.cpus: {cpu}, found through /proc/"))
                && sampling[0].contains(&format!(
                    "/cgroup), which Slurm's core allocation ({cpu}) confirms"
                )),
            "{}",
            sampling[0]
        );
        assert!(!log.contains("give different package shares"), "{log}");
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("carbontrack") && l.to_lowercase().contains("error"))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }
    let ((a0, a1), (b0, b1)) = (spans[0], spans[1]);
    assert!(
        a0 < b1 && b0 < a1,
        "the two jobs did not run at the same time: {spans:?}"
    );
    charged.sort_unstable();
    assert_eq!(
        charged,
        [0, 1],
        "jobs running at once on a 2-CPU node each got a CPU of their own"
    );
}

/// bash's `times` at the end of a job's output: the script's own user and
/// system time and its children's, summed (seconds).
fn bash_times(output: &str) -> f64 {
    let secs = |t: &str| -> f64 {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap();
        m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
    };
    let lines: Vec<&str> = output.lines().rev().take(2).collect();
    assert_eq!(lines.len(), 2, "{output}");
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(secs)
        .sum()
}

/// A node whose RAPL cannot be read and `cpu_tdp=100`: the job's CPU energy
/// is estimated from the CPU time of the processes of its cgroup (Slurm makes
/// no cpuacct cgroup here: jobacct_gather/none), labelled, against the CPU
/// time the job's own shell reports. The fixture's two packages of one CPU
/// each give TDP × CPU time.
fn a_job_without_rapl_gets_a_labelled_estimate(c: &Cluster, hw: &Hardware) {
    let no_rapl = c.dir.join("hardware/no-powercap");
    fs::create_dir_all(&no_rapl).unwrap();
    let mut args = hw.plugin_args();
    args.retain(|a| !a.starts_with("powercap="));
    args.push(format!("powercap={}", no_rapl.display()));
    args.push("cpu_tdp=100".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.set_plugin_args(&refs);
    let script = "#!/bin/bash
burn() { e=$((SECONDS+3)); while [ $SECONDS -lt $e ]; do :; done; }
burn
times
sleep 1
";
    let mark = c.log_mark();
    let j = c
        .submit_in(&c.work_dir(), &["-n1", "-c1", "--carbon-track=yes"], script)
        .expect("sbatch");
    c.wait_ended(j);
    let csv = c.work_dir().join(format!("carbontrack-{}.csv", j.0));
    let deadline = Instant::now() + WAIT;
    while !csv.exists() {
        assert!(Instant::now() < deadline, "no {}", csv.display());
        sleep(Duration::from_millis(100));
    }
    let text = fs::read_to_string(&csv).unwrap();
    let rows = read_csv(text.as_bytes()).unwrap();
    common::assert_short_statuses(&rows);
    let est = rows
        .iter()
        .find(|r| r.component == "cpu" && r.device == "tdp-estimate")
        .unwrap_or_else(|| panic!("no estimate row:\n{text}"));
    assert_eq!(
        est.status, "estimated: TDP 100 W (cpu_tdp=100), CPU time",
        "{text}"
    );
    let cpu_s = bash_times(&c.output_of(j.0));
    let truth = 100.0 * cpu_s;
    let energy = est.energy_j.expect("an estimate has energy");
    println!(
        "    estimate {energy:.1} J, the script's CPU time {cpu_s:.3} s by bash: {truth:.1} J ({:+.2}%)",
        (energy - truth) / truth * 100.0
    );
    // The job's slurmstepd processes are in its cgroup too: a little more.
    // (The script sleeps after `times` so that its last CPU time is seen
    // before it ends: a process's time is read while it lives, and the
    // batch step's slurmstepd, which reaps it, ends soon after.)
    assert!(
        energy >= truth * 0.97 && energy <= truth * 1.10 + 5.0,
        "job {}: estimate {energy} J, truth {truth} J\n{text}",
        j.0
    );
    let total = rows.last().filter(|r| r.is_total()).expect("a total row");
    assert!(total.status.contains("1 estimated (cpu)"), "{text}");
    let log = c.log_of_job(mark, j.0);
    assert!(
        log.contains("CPU energy is an estimate: TDP 100 W per package (cpu_tdp=100) × the CPU time of the processes of /sys/fs/cgroup/"),
        "{log}"
    );
}

type Check = fn(&Cluster, &Hardware);

fn cgroup_v1_missing() -> Option<String> {
    if !Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus").is_file() {
        return Some("no cgroup v1 cpuset controller at /sys/fs/cgroup/cpuset".into());
    }
    let cpus = fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.cpus").unwrap_or_default();
    // The topology fixture places CPUs 0 and 1; two one-CPU jobs fill them.
    if cpus.trim() != "0-1" {
        return Some(format!(
            "the test is written for a machine of CPUs 0-1, this one has {:?}",
            cpus.trim()
        ));
    }
    let version = Command::new("slurmd").arg("-V").output().ok()?;
    let v = String::from_utf8_lossy(&version.stdout);
    let release: Vec<u32> = v
        .split_whitespace()
        .nth(1)?
        .split('.')
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    (release.as_slice() >= [24, 5].as_slice())
        .then(|| format!("Slurm {v} has no cgroup v1 plugin to test with here"))
}

fn main() -> ExitCode {
    if let Some(why) = missing_prerequisite(false).or_else(cgroup_v1_missing) {
        if in_ci() {
            eprintln!("cgroup cluster tests cannot run under CI: {why}");
            return ExitCode::FAILURE;
        }
        println!("SKIPPED cgroup cluster tests: {why}");
        return ExitCode::SUCCESS;
    }
    let c = match Cluster::start_cgroup() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the cgroup test cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hwdir = c.dir.join("hardware");
    fs::create_dir_all(&hwdir).unwrap();
    let hw = Hardware::new(&hwdir);
    let checks: [(&str, Check); 2] = [
        (
            "jobs_sharing_a_node_are_charged_their_own_package",
            jobs_sharing_a_node_are_charged_their_own_package,
        ),
        (
            "a_job_without_rapl_gets_a_labelled_estimate",
            a_job_without_rapl_gets_a_labelled_estimate,
        ),
    ];
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut ok = true;
    for (name, check) in checks {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        let passed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&c, &hw))).is_ok();
        println!(
            "test {name} ... {} ({:.1} s)",
            if passed { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        ok &= passed;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("slurmd log: {}", c.slurmd_log().display());
        ExitCode::FAILURE
    }
}
