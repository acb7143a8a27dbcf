//! AMD GPUs in a real Slurm: a one-node cluster of its own whose four GPUs
//! are AMD's (`scripts/test-cluster start --amd-gpus`: gres
//! `gpu:mi250x:4` on fake render nodes `renderD128..131`, mknod'ed under the
//! cluster directory), measured through the fake AMD SMI
//! (tests/fake-amdsmi) and no NVML at all, as on an AMD node.
//!
//! The node holds two MI250X-like packages. Package A reports its socket
//! power on its first GCD and 0 W on its second (as real MI250X do);
//! package B reports per GCD. AMD SMI lists the GCDs out of render order, so
//! a job's GPUs are only right when Slurm's list is read against the render
//! minors. Two tracked jobs run side by side: one holding one GCD, one
//! holding two (`--gres=gpu:2`). Each footprint must hold exactly its job's
//! GCDs (by AMD SMI UUID, from the `IDX` Slurm gave the job), each within 3%
//! of the energy the fake injected over the row's span, `ok`; a GCD of
//! package A is charged half the package.
//!
//! A Prolog records `SLURM_JOB_GPUS` as the plugin's `job_prolog` sees it:
//! Slurm 22.05 writes the GPUs' positions among the node's gres files
//! (`0`, `1,2`), not the render minors.
//!
//! Needs root and the Slurm packages; skipped with a message otherwise (a
//! failure under CI=true).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carbontrack::footprint::{Row, read_csv};
use carbontrack_fixtures::fake_amdsmi::{Fake, fake_amdsmi};
use carbontrack_fixtures::profile::Profile;
use carbontrack_fixtures::tempdir::TempDir;
use common::{Cluster, JobId, in_ci, missing_prerequisite};

/// How far a measured energy may be from the injected truth.
const TOLERANCE: f64 = 0.03;
const WAIT: Duration = Duration::from_secs(90);

/// The render minors of the node's gres files, in gres.conf's order
/// (`scripts/test-cluster`'s `AMD_RENDER_MINORS`): Slurm's position `k` is
/// `RENDER_MINORS[k]`.
const RENDER_MINORS: [u32; 4] = [128, 129, 130, 131];

/// One fake GCD.
struct Gcd {
    render: u32,
    package: &'static str,
    /// What AMD SMI reports for it (the fake's `reports`).
    reports: &'static str,
    /// What it draws (W profile).
    power: &'static str,
    /// `counter` or `none` (power only).
    energy: &'static str,
}

/// In AMD SMI's order (not the render order). Package A: GCD 128 reports the
/// package's 400 W, GCD 129 reads 0 W. Package B reports per GCD.
const GCDS: [Gcd; 4] = [
    Gcd {
        render: 129,
        package: "MI250X-A",
        reports: "zero",
        power: "200",
        energy: "counter",
    },
    Gcd {
        render: 128,
        package: "MI250X-A",
        reports: "package",
        power: "200",
        energy: "counter",
    },
    Gcd {
        render: 131,
        package: "MI250X-B",
        reports: "self",
        power: "90",
        energy: "none",
    },
    Gcd {
        render: 130,
        package: "MI250X-B",
        reports: "self",
        power: "250@2,350@2",
        energy: "counter",
    },
];

fn uuid(render: u32) -> String {
    format!("1fff74a1-0000-1000-80f0-00000000d{render}")
}

fn gcd(render: u32) -> &'static Gcd {
    GCDS.iter()
        .find(|g| g.render == render)
        .expect("a GCD of the node")
}

fn profile(g: &Gcd) -> Profile {
    g.power.parse().expect("profile")
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("bad time `{s}`: {e}"))
}

/// The fake AMD SMI, a spool, and a Prolog that records the GPU variables.
struct Hardware {
    amdsmi: Fake,
    epoch: f64,
    dir: TempDir,
}

impl Hardware {
    fn new() -> Hardware {
        let dir = TempDir::new("amd-cluster-hw").expect("temporary directory");
        let epoch = unix(SystemTime::now());
        let mut conf = format!("epoch = {epoch}\n");
        for g in &GCDS {
            conf += &format!(
                "[gpu]\nuuid = {}\nserial = {}\nrender = {}\nbus = {:#x}\npower = {}\n\
                 energy = {}\nreports = {}\n",
                uuid(g.render),
                g.package,
                g.render,
                // PCI order follows render order, as on real nodes.
                0xc1 + 8 * (g.render - 128),
                g.power,
                g.energy,
                g.reports
            );
        }
        let amdsmi = fake_amdsmi("amd-cluster", &conf);
        let hw = Hardware { amdsmi, epoch, dir };
        let prolog = format!(
            "#!/bin/bash\necho \"job $SLURM_JOB_ID SLURM_JOB_GPUS=${{SLURM_JOB_GPUS-unset}} \
             ROCR_VISIBLE_DEVICES=${{ROCR_VISIBLE_DEVICES-unset}}\" >>{}\nexit 0\n",
            hw.prolog_log().display()
        );
        fs::write(hw.prolog(), prolog).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(hw.prolog(), fs::Permissions::from_mode(0o755)).unwrap();
        hw
    }

    fn prolog(&self) -> PathBuf {
        self.dir.path().join("prolog.sh")
    }

    fn prolog_log(&self) -> PathBuf {
        self.dir.path().join("prolog.log")
    }

    /// plugstack.conf arguments: GPUs only, AMD SMI the fake, NVML absent.
    fn plugin_args(&self) -> Vec<String> {
        vec![
            format!("spool={}", self.dir.path().join("spool").display()),
            format!("amdsmi={}", self.amdsmi.display()),
            format!(
                "nvml={}",
                self.dir.path().join("absent/libnvidia-ml.so.1").display()
            ),
            "components=gpu".to_string(),
            "interval=500ms".to_string(),
        ]
    }

    /// The energy the job is owed for GCD `render` between `t0` and `t1`:
    /// its own, or, where AMD SMI reports the package on one GCD, an even
    /// share of the package's.
    fn truth(&self, render: u32, t0: SystemTime, t1: SystemTime) -> f64 {
        let (a, b) = (unix(t0) - self.epoch, unix(t1) - self.epoch);
        let g = gcd(render);
        let siblings: Vec<&Gcd> = GCDS.iter().filter(|o| o.package == g.package).collect();
        if siblings.iter().any(|o| o.reports == "package") {
            let sum: f64 = siblings
                .iter()
                .map(|o| profile(o).energy_between(a, b))
                .sum();
            sum / siblings.len() as f64
        } else {
            profile(g).energy_between(a, b)
        }
    }
}

/// The GPU positions Slurm gave a job: `GRES=gpu:mi250x:2(IDX:1-2)` in
/// `scontrol -d show job`, which the job printed while it ran.
fn gres_positions(output: &str) -> Vec<u32> {
    let idx = output
        .split_whitespace()
        .find_map(|w| w.split_once("(IDX:").map(|(_, r)| r.trim_end_matches(')')))
        .unwrap_or_else(|| panic!("no GRES=…(IDX:…) in the job's output:\n{output}"));
    let mut out = Vec::new();
    for part in idx.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().unwrap()..=b.parse().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

fn job_var<'a>(output: &'a str, var: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("no {var} in the job's output:\n{output}"))
}

fn wait_running(c: &Cluster, id: JobId) {
    let deadline = Instant::now() + WAIT;
    while c.job_state(id.0) != "RUNNING" {
        assert!(Instant::now() < deadline, "job {} never ran", id.0);
        sleep(Duration::from_millis(200));
    }
}

fn footprint(c: &Cluster, id: JobId) -> Vec<Row> {
    let csv = c.work_dir().join(format!("carbontrack-{}.csv", id.0));
    let deadline = Instant::now() + WAIT;
    while !csv.exists() {
        assert!(Instant::now() < deadline, "no {}", csv.display());
        sleep(Duration::from_millis(100));
    }
    let text = fs::read_to_string(&csv).unwrap_or_else(|e| panic!("{}: {e}", csv.display()));
    let rows =
        read_csv(text.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}\n{text}", csv.display()));
    common::assert_short_statuses(&rows);
    rows
}

/// A job that prints its GPU variables and what Slurm gave it, then sleeps.
fn script(secs: u32) -> String {
    format!(
        "#!/bin/bash\necho SLURM_JOB_GPUS=$SLURM_JOB_GPUS\n\
         echo ROCR_VISIBLE_DEVICES=$ROCR_VISIBLE_DEVICES\n\
         scontrol -d show job $SLURM_JOB_ID | grep -o 'GRES=[^ ]*IDX[^ ]*'\n\
         sleep {secs}\n"
    )
}

/// Two tracked jobs side by side, one GCD and two: each charged exactly its
/// own GCDs, within 3% of the injected truth.
fn each_job_gets_its_own_amd_gpus(c: &Cluster, hw: &Hardware) {
    let args = hw.plugin_args();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.set_plugin_args(&refs);
    let mark = c.log_mark();
    let dir = c.work_dir();
    // The one-GCD job is placed first, so the two-GCD job gets the other GCD
    // of its package and one of the next: no job holds a whole package.
    let one = c
        .submit_in(
            &dir,
            &["--carbon-track=yes", "--gres=gpu:1", "-n1"],
            &script(12),
        )
        .expect("sbatch");
    wait_running(c, one);
    let two = c
        .submit_in(
            &dir,
            &["--carbon-track=yes", "--gres=gpu:2", "-n1"],
            &script(8),
        )
        .expect("sbatch");
    let jobs = [(one, 1usize), (two, 2usize)];
    let mut held_by_all = BTreeSet::new();
    for &(id, n) in &jobs {
        let ended = c.wait_ended(id);
        assert_eq!(
            (ended.state.as_str(), ended.exit_code.as_str()),
            ("COMPLETED", "0:0"),
            "job {}: {}",
            id.0,
            c.output_of(id.0)
        );
        let output = c.output_of(id.0);
        let positions = gres_positions(&output);
        assert_eq!(positions.len(), n, "job {}: {output}", id.0);
        let renders: Vec<u32> = positions
            .iter()
            .map(|&k| RENDER_MINORS[k as usize])
            .collect();
        held_by_all.extend(renders.iter().copied());

        // The form of Slurm's list: positions, in the batch step and in the
        // prolog (what the plugin's job_prolog reads).
        let list: Vec<String> = positions.iter().map(u32::to_string).collect();
        let list = list.join(",");
        assert_eq!(job_var(&output, "SLURM_JOB_GPUS"), list, "{output}");
        let prolog = fs::read_to_string(hw.prolog_log()).unwrap_or_default();
        let line = format!("job {} SLURM_JOB_GPUS={list} ", id.0);
        assert!(
            prolog.lines().any(|l| l.starts_with(&line)),
            "no `{line}` in the Prolog's record:\n{prolog}"
        );
        println!(
            "    job {}: Slurm IDX {list}, SLURM_JOB_GPUS={list} (prolog and batch), ROCR_VISIBLE_DEVICES={}",
            id.0,
            job_var(&output, "ROCR_VISIBLE_DEVICES")
        );

        let rows = footprint(c, id);
        let devices: Vec<&Row> = rows.iter().filter(|r| !r.is_total()).collect();
        let got: BTreeSet<&str> = devices.iter().map(|r| r.device.as_str()).collect();
        let want: Vec<String> = renders.iter().map(|&m| uuid(m)).collect();
        let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        assert_eq!(got, want, "job {}: not its own GCDs: {rows:#?}", id.0);
        assert_eq!(devices.len(), n, "{rows:#?}");
        for r in &devices {
            assert_eq!(r.component, "gpu", "{r:?}");
            assert_eq!(r.status, "ok", "{r:?}");
            let render = *renders
                .iter()
                .find(|&&m| uuid(m) == r.device)
                .expect("one of the job's GCDs");
            let energy = r.energy_j.expect("measured");
            let truth = hw.truth(render, time(&r.start), time(&r.end));
            let err = (energy - truth) / truth;
            println!(
                "    job {} renderD{render} ({}, {}): {energy:.1} J measured, {truth:.1} J true \
                 ({:+.3}%) over {:.1} s",
                id.0,
                gcd(render).package,
                gcd(render).reports,
                err * 100.0,
                unix(time(&r.end)) - unix(time(&r.start))
            );
            assert!(
                err.abs() <= TOLERANCE,
                "job {} renderD{render}: {energy:.3} J measured, {truth:.3} J true ({:.2}% off)",
                id.0,
                err * 100.0
            );
        }
        let total = rows.iter().find(|r| r.is_total()).expect("a total row");
        let sum: f64 = devices.iter().filter_map(|r| r.energy_j).sum();
        assert!(
            (total.energy_j.unwrap() - sum).abs() <= 0.01,
            "total {:?} vs {sum}",
            total.energy_j
        );
    }
    // The jobs ran side by side on different GCDs, one of package A each.
    assert_eq!(
        held_by_all.len(),
        3,
        "the jobs did not hold three GCDs between them (did they run one after \
         the other?): {held_by_all:?}"
    );
    let log = c.log_since(mark);
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("carbontrack")).collect();
    for &(id, _) in &jobs {
        assert!(
            ours.iter()
                .any(|l| l.contains(&format!("job {}", id.0))
                    && l.contains("chosen by Slurm GPU list")),
            "job {}: no GCD chosen by Slurm's list in:\n{}",
            id.0,
            ours.join("\n")
        );
    }
    let bad: Vec<&&str> = ours
        .iter()
        .filter(|l| l.to_lowercase().contains("error") || l.contains("NVML"))
        .collect();
    assert!(
        bad.is_empty(),
        "plugin errors or NVML news on an AMD node: {bad:#?}"
    );
}

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    const NAME: &str = "each_job_gets_its_own_amd_gpus";
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    if let Some(why) = missing_prerequisite(false) {
        if in_ci() {
            eprintln!("AMD cluster test cannot run under CI: {why}");
            return ExitCode::FAILURE;
        }
        println!("SKIPPED the AMD cluster test: {why}");
        return ExitCode::SUCCESS;
    }
    let hw = Hardware::new();
    let conf = format!("Prolog={}", hw.prolog().display());
    let cluster = match Cluster::start_amd(&conf) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the AMD test cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let ok = catch_unwind(AssertUnwindSafe(|| {
        each_job_gets_its_own_amd_gpus(&cluster, &hw)
    }))
    .is_ok();
    println!(
        "test {NAME} ... {} ({:.0} s)",
        if ok { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    drop(cluster);
    drop(hw);
    if ok {
        println!("\nAMD cluster test result: ok");
        ExitCode::SUCCESS
    } else {
        println!("\nAMD cluster test result: FAILED");
        ExitCode::FAILURE
    }
}
