//! Multi-node jobs in a real Slurm: two slurmd, each in its own network and
//! mount namespace (`scripts/test-cluster start --nodes 2 --accounting`),
//! with node-local spools, one shared= directory, the real Epilog wrapper,
//! and fake hardware whose exact energy is known. Both nodes read the same
//! fake counters and the same fake GPU: each node measures them once, so the
//! job's truth is each node's share of them, added up.
//!
//! Needs root, the Slurm packages and `ip`/`unshare`/`nsenter`; skipped with
//! a message otherwise (a failure under CI=true).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use carbontrack::footprint::{Row, read_csv};
use carbontrack::report::accounting::Segment;
use carbontrack_fixtures::fake_nvml::fake_library;
use carbontrack_fixtures::powercap::{
    PackageSpec, PowercapSpec, PowercapTree, PowercapWriter, ZoneSpec,
};
use carbontrack_fixtures::profile::Profile;
use common::{Cluster, USER, in_ci, missing_prerequisite};

const WAIT: Duration = Duration::from_secs(90);
/// How far a measured energy may be from the injected truth.
const TOLERANCE: f64 = 0.03;
const GPU_UUID: &str = "GPU-c0ffee00-1111-2222-3333-444455556666";
const GPU_POWER: &str = "100@2,250@3";

/// The fake hardware: a powercap tree kept advancing and a fake NVML whose
/// GPU 0 (the one Slurm gives each node's `--gres=gpu:1`) draws GPU_POWER.
struct Hardware {
    rapl: PowercapWriter,
    nvml: PathBuf,
    gpu: Profile,
    epoch: SystemTime,
}

impl Hardware {
    fn new(dir: &Path) -> Hardware {
        let epoch = SystemTime::now();
        let zone = |p: &str| ZoneSpec::new(p.parse().expect("profile")).max_power_w(150.0);
        let spec = PowercapSpec {
            packages: vec![PackageSpec::new(zone("60@3,90@2")).dram(zone("12"))],
            ..Default::default()
        };
        let rapl = PowercapTree::create(&dir.join("powercap"), &spec, epoch)
            .expect("powercap fixture")
            .spawn_writer(Duration::from_millis(5));
        let nvml_dir = dir.join("nvml");
        fs::create_dir_all(&nvml_dir).unwrap();
        let nvml = nvml_dir.join("libnvidia-ml.so.1");
        fs::copy(fake_library(), &nvml).expect("copy the fake NVML");
        let secs = epoch
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        fs::write(
            nvml_dir.join("fake-nvml.conf"),
            format!("epoch = {secs}\n[gpu]\nuuid = {GPU_UUID}\nminor = 0\npower = {GPU_POWER}\n"),
        )
        .unwrap();
        Hardware {
            rapl,
            nvml,
            gpu: GPU_POWER.parse().unwrap(),
            epoch,
        }
    }

    fn truth(&self, r: &Row) -> f64 {
        let (t0, t1) = (time(&r.start), time(&r.end));
        let since = |t: SystemTime| match t.duration_since(self.epoch) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        match r.component.as_str() {
            "gpu" => {
                assert_eq!(r.device, GPU_UUID, "{r:?}");
                self.gpu.energy_between(since(t0), since(t1))
            }
            "cpu" => self.rapl.truth(&r.device, t0, t1),
            "dram" => self.rapl.truth(&format!("{}/dram", r.device), t0, t1),
            other => panic!("unexpected component {other} in {r:?}"),
        }
    }
}

fn time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("bad time `{s}`: {e}"))
}

struct T {
    c: Cluster,
    hw: Hardware,
    shared: PathBuf,
    ledger: PathBuf,
    bin: PathBuf,
    /// ct1..ctN.
    nodes: Vec<String>,
}

impl T {
    fn root(&self, program: &str, args: &[&str]) -> String {
        let o = self.c.as_root(program, args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn submit(&self, wrap: &str) -> u32 {
        self.submit_n(2, wrap)
    }

    /// `sbatch -N<nodes> --gres=gpu:1` of `wrap`, tracked.
    fn submit_n(&self, nodes: usize, wrap: &str) -> u32 {
        let work = self.c.work_dir().display().to_string();
        let n = format!("-N{nodes}");
        let o = self
            .c
            .as_user(
                "sbatch",
                &[
                    "--parsable",
                    &n,
                    "--gres=gpu:1",
                    "--carbon-track=yes",
                    "--no-requeue",
                    "--chdir",
                    &work,
                    "--output=/dev/null",
                    "--wrap",
                    wrap,
                ],
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        common::parsable_job_id(&String::from_utf8_lossy(&o.stdout))
            .unwrap_or_else(|| panic!("sbatch: {}", String::from_utf8_lossy(&o.stderr)))
    }

    fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- epilog logs\n{}",
                self.epilog_logs()
            );
            sleep(Duration::from_millis(200));
        }
    }

    fn wait_gone(&self, id: u32) {
        self.wait_for(&format!("job {id} to leave the queue"), || {
            self.root("squeue", &["-h", "-j", &id.to_string(), "-o", "%T"])
                .trim()
                .is_empty()
        });
    }

    fn field(&self, id: u32) -> String {
        self.root(
            "sacct",
            &[
                "-n",
                "-X",
                "-P",
                "-j",
                &id.to_string(),
                "-o",
                "AdminComment",
            ],
        )
        .trim()
        .to_string()
    }

    fn ledger_rows(&self, id: u32) -> Vec<String> {
        fs::read_to_string(&self.ledger)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{id},")))
            .map(String::from)
            .collect()
    }

    fn user_csv(&self, id: u32) -> Vec<Row> {
        let p = self.c.work_dir().join(format!("carbontrack-{id}.csv"));
        let uid = Command::new("id").args(["-u", USER]).output().unwrap();
        let uid: u32 = String::from_utf8_lossy(&uid.stdout).trim().parse().unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().uid(),
            uid,
            "{} is the user's",
            p.display()
        );
        let rows = read_csv(fs::File::open(&p).unwrap()).unwrap();
        common::assert_short_statuses(&rows);
        rows
    }

    /// A node's spool, as that node sees `node-local/ct-spool`.
    fn node_spool(&self, node: &str) -> PathBuf {
        self.c.dir.join(format!("nodes/{node}/local/ct-spool"))
    }

    fn epilog_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let p = self.c.dir.join(format!("log/ct-epilog-{n}.log"));
                format!("[{n}]\n{}", fs::read_to_string(p).unwrap_or_default())
            })
            .collect()
    }

    fn carbontrack(&self, args: &[&str]) -> String {
        let o = Command::new(&self.bin)
            .args(args)
            .env("SLURM_CONF", self.c.slurm_conf())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// `sinfo -R`: no node is drained or down for a reason of carbontrack's
    /// (an Epilog failure); `allowed` are the reasons the test gave itself.
    fn assert_no_carbontrack_drain(&self, allowed: &[&str]) {
        let out = self.root("sinfo", &["-R", "-h", "-o", "%E|%N"]);
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                allowed.iter().any(|a| line.starts_with(a)),
                "a node is drained or down for a reason not the test's: {line}\n{out}"
            );
        }
    }
}

/// Each device row is its share of the truth over its own span; each node
/// has cpu, dram and gpu rows; the total row adds them up.
fn assert_rows_match_truth(hw: &Hardware, rows: &[Row], nodes: &[&str]) {
    let devices: Vec<&Row> = rows.iter().filter(|r| !r.is_total()).collect();
    let seen: BTreeSet<(&str, &str)> = devices
        .iter()
        .map(|r| (r.node.as_str(), r.component.as_str()))
        .collect();
    let want: BTreeSet<(&str, &str)> = nodes
        .iter()
        .flat_map(|n| ["cpu", "dram", "gpu"].map(|c| (*n, c)))
        .collect();
    assert_eq!(seen, want, "{rows:#?}");
    for r in &devices {
        let energy = r.energy_j.unwrap_or_else(|| panic!("not measured: {r:?}"));
        let truth = r.share.unwrap() * hw.truth(r);
        let err = (energy - truth).abs() / truth;
        assert!(
            err <= TOLERANCE,
            "{} {} {}: {energy:.3} J measured, {truth:.3} J true ({:.2}% off)",
            r.node,
            r.component,
            r.device,
            err * 100.0
        );
    }
    let total = rows.last().unwrap();
    assert!(total.is_total(), "the total comes last: {rows:#?}");
    assert_eq!(rows.iter().filter(|r| r.is_total()).count(), 1);
    let sum: f64 = devices.iter().filter_map(|r| r.energy_j).sum();
    assert!(
        (total.energy_j.unwrap() - sum).abs() <= 0.001 * devices.len() as f64,
        "total {:?} J is not the sum {sum} J",
        total.energy_j
    );
}

/// The total's status counts the device rows that are not `ok`, by kind,
/// and names their components, in one short clause.
fn assert_total_status_is_the_rows(rows: &[Row]) {
    let total = rows.last().unwrap();
    let devices: Vec<&Row> = rows.iter().filter(|r| !r.is_total()).collect();
    let lacking: Vec<&&Row> = devices.iter().filter(|r| r.status != "ok").collect();
    if lacking.is_empty() {
        assert_eq!(total.status, "ok");
    }
    for kind in ["unavailable", "incomplete"] {
        let of: Vec<&&&Row> = lacking
            .iter()
            .filter(|r| r.status.starts_with(&format!("{kind}:")))
            .collect();
        if of.is_empty() {
            continue;
        }
        assert!(
            total.status.contains(&format!("{} {kind} (", of.len()))
                || total.status.contains(&format!(
                    "{} of {} rows {kind} (",
                    of.len(),
                    devices.len()
                )),
            "{} {kind} rows not counted in {}",
            of.len(),
            total.status
        );
        for r in of {
            assert!(
                total.status.contains(&r.component),
                "{} not in {}",
                r.component,
                total.status
            );
        }
    }
}

fn sum_of(rows: &[Row], component: &str) -> f64 {
    rows.iter()
        .filter(|r| r.component == component)
        .filter_map(|r| r.energy_j)
        .sum()
}

fn close(a: f64, b: f64, abs: f64) -> bool {
    (a - b).abs() <= abs
}

fn main() -> ExitCode {
    let mut missing = missing_prerequisite(true);
    for tool in ["ip", "unshare", "nsenter"] {
        if missing.is_none() && Command::new(tool).arg("-V").output().is_err() {
            missing = Some(format!("missing {tool} (iproute2, util-linux)"));
        }
    }
    if let Some(why) = missing {
        if in_ci() {
            eprintln!("multi-node cluster tests cannot run under CI: {why}");
            return ExitCode::FAILURE;
        }
        println!("SKIPPED multi-node cluster tests: {why}");
        return ExitCode::SUCCESS;
    }
    let mut failed = Vec::new();
    let two: [(&str, Check); 4] = [
        ("two_nodes_one_total", two_nodes_one_total),
        ("a_reused_job_id_starts_afresh_in_shared", reused_job_id),
        (
            "a_restarted_slurmd_leaves_the_job_measured",
            restarted_slurmd,
        ),
        // Last: ct2 stays down.
        ("a_killed_node_leaves_its_part_missing", killed_node),
    ];
    let many = many_nodes();
    let phases: [(usize, &[(&'static str, Check)]); 2] = [
        (2, &two),
        (many, &[("many_nodes_one_total", many_nodes_one_total)]),
    ];
    for (nodes, checks) in phases {
        if let Err(e) = run_phase(nodes, checks, &mut failed) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    if failed.is_empty() {
        println!("\nmulti-node cluster test result: ok");
        ExitCode::SUCCESS
    } else {
        println!(
            "\nmulti-node cluster test result: FAILED: {}",
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}

type Check = fn(&T);

/// How many nodes the many-node check runs: CT_TEST_MANY_NODES, else 8.
fn many_nodes() -> usize {
    std::env::var("CT_TEST_MANY_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| (2..=50).contains(n))
        .unwrap_or(8)
}

/// A fresh cluster of `nodes` nodes with accounting, the fake hardware and
/// the Epilog; each check runs on it in turn; the cluster stops after them.
fn run_phase(
    nodes: usize,
    checks: &[(&'static str, Check)],
    failed: &mut Vec<&'static str>,
) -> Result<(), String> {
    let started = Instant::now();
    let c = Cluster::start_multinode(true, nodes as u32)
        .map_err(|e| format!("cannot start the {nodes}-node test cluster: {e}"))?;
    println!(
        "{nodes}-node cluster up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let hwdir = c.dir.join("hardware");
    fs::create_dir_all(&hwdir).unwrap();
    let t = T {
        hw: Hardware::new(&hwdir),
        shared: c.dir.join("ct-shared"),
        ledger: c.dir.join("ct-ledger/ledger.csv"),
        bin: c.dir.join("bin/carbontrack"),
        nodes: (1..=nodes).map(|i| format!("ct{i}")).collect(),
        c,
    };
    setup(&t);
    for &(name, check) in checks {
        let started = Instant::now();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&t))).is_ok();
        println!(
            "test {name} ... {} ({:.1} s)",
            if ok { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(name);
        }
    }
    Ok(())
}

/// The binary where every node's Epilog can run it, the plugin's arguments
/// (node-local spool, shared directory, fake hardware), and an Epilog that
/// runs the real wrapper with its messages in a log per node.
fn setup(t: &T) {
    let dir = &t.c.dir;
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_carbontrack"), &t.bin).unwrap();
    fs::set_permissions(&t.bin, fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        format!("spool={}/node-local/ct-spool", dir.display()),
        format!("shared={}", t.shared.display()),
        format!("ledger={}", t.ledger.display()),
        format!("powercap={}", t.hw.rapl.root().display()),
        format!("nvml={}", t.hw.nvml.display()),
        "interval=500ms".into(),
        "pue=1.5".into(),
        "intensity=400".into(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    t.c.set_plugin_args(&refs);

    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/carbontrack-epilog");
    let epilog = dir.join("etc/epilog.sh");
    fs::write(
        &epilog,
        format!(
            "#!/bin/bash\nexec 2>>{dir}/log/ct-epilog-$SLURMD_NODENAME.log\nCARBONTRACK={bin} exec {wrapper}\n",
            dir = dir.display(),
            bin = t.bin.display(),
            wrapper = wrapper.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&epilog, fs::Permissions::from_mode(0o755)).unwrap();
    let conf = fs::read_to_string(t.c.slurm_conf()).unwrap();
    let conf: String = conf
        .lines()
        .filter(|l| !l.starts_with("#Epilog=") && !l.starts_with("Epilog="))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &format!("Epilog={}\n", epilog.display());
    fs::write(t.c.slurm_conf(), conf).unwrap();
    let o = t.c.as_root("scontrol", &["reconfigure"]);
    assert!(o.status.success(), "scontrol reconfigure failed");
    sleep(Duration::from_secs(2));
}

/// `sbatch -N2 --gres=gpu:1` with `srun -N2`: both nodes' rows, a total that
/// is their sum, and one accounting segment and ledger row saying so.
fn two_nodes_one_total(t: &T) {
    let id = t.submit("srun -N2 sleep 10");
    t.wait_gone(id);
    t.wait_for(&format!("the ledger row of job {id}"), || {
        !t.ledger_rows(id).is_empty()
    });
    let rows = t.user_csv(id);
    assert_rows_match_truth(&t.hw, &rows, &["ct1", "ct2"]);
    let total = rows.last().unwrap();
    assert_eq!(total.node, "all");
    // One power timeline per node, each the user's like the CSV, each
    // drawn by a real renderer; no combined one.
    let work = t.c.work_dir();
    let owner = |p: &Path| {
        fs::symlink_metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .uid()
    };
    let csv_owner = owner(&work.join(format!("carbontrack-{id}.csv")));
    for node in ["ct1", "ct2"] {
        let svg = work.join(format!("carbontrack-{id}-{node}.svg"));
        assert_eq!(owner(&svg), csv_owner, "{}", svg.display());
        let text = fs::read_to_string(&svg).unwrap();
        assert!(text.contains(&format!("Job {id} on {node}")), "{text}");
        let png = std::env::temp_dir().join(format!("ct-multinode-{id}-{node}.png"));
        let img = carbontrack_fixtures::svg_render::rasterise(&svg, &png);
        assert!(img.inked() > 0.1, "{} is nearly blank", png.display());
        let _ = fs::remove_file(&png);
    }
    assert!(!work.join(format!("carbontrack-{id}.svg")).exists());
    // Complete as far as nodes go; without a cpuset in this cluster the CPU
    // rows come from Slurm's core allocation on each node, and the total
    // sums up whatever the rows say.
    assert!(!total.status.contains("missing"), "{}", total.status);
    assert_total_status_is_the_rows(&rows);
    // Both nodes measured the one fake GPU for about the job's length: the
    // job's GPU energy is about twice what it drew over that time.
    let gpu = sum_of(&rows, "gpu");
    let span = rows
        .iter()
        .filter(|r| r.component == "gpu")
        .map(|r| t.hw.truth(r))
        .sum::<f64>();
    assert!(close(gpu, span, span * TOLERANCE), "{gpu} J vs {span} J");

    let field = t.field(id);
    assert_eq!(field.matches("carbontrack:v1").count(), 1, "{field}");
    let seg = Segment::parse(&field).unwrap();
    assert_eq!(seg.nodes, 2, "{field}");
    // The segment holds the CSV's total (to its printed precision).
    assert!(
        close(seg.cpu_j.unwrap(), sum_of(&rows, "cpu"), 0.01),
        "{field}"
    );
    assert!(
        close(seg.dram_j.unwrap(), sum_of(&rows, "dram"), 0.01),
        "{field}"
    );
    assert!(close(seg.gpu_j.unwrap(), gpu, 0.01), "{field}");
    let kwh = total.energy_kwh.unwrap();
    assert!(close(seg.energy_kwh.unwrap(), kwh, kwh * 1e-5), "{field}");
    assert!(close(seg.co2e_g.unwrap(), kwh * 400.0, 0.001), "{field}");

    let ledger = t.ledger_rows(id);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert!(
        ledger[0].ends_with(",ctcluster,ct1 ct2") && !ledger[0].contains("missing"),
        "{}",
        ledger[0]
    );
    // Nothing left behind on the nodes; the claimed total stays shared.
    for node in ["ct1", "ct2"] {
        assert!(!t.node_spool(node).join(format!("jobs/{id}")).exists());
    }
    assert!(t.shared.join(format!("jobs/{id}/total.csv")).exists());
    // Asking again changes nothing.
    let out = t.carbontrack(&["flush", "--part-wait", "0s"]);
    assert!(out.contains("delivered 0 job(s), 0 still queued"), "{out}");
    assert_eq!(t.ledger_rows(id).len(), 1);
    assert_eq!(t.field(id), field);
    t.assert_no_carbontrack_drain(&[]);
    println!(
        "  job {id}: {} rows, {:.1} J on ct1 + {:.1} J on ct2 = {:.1} J; {field}",
        rows.len(),
        rows.iter()
            .filter(|r| r.node == "ct1" && !r.is_total())
            .filter_map(|r| r.energy_j)
            .sum::<f64>(),
        rows.iter()
            .filter(|r| r.node == "ct2" && !r.is_total())
            .filter_map(|r| r.energy_j)
            .sum::<f64>(),
        total.energy_j.unwrap()
    );
}

/// slurmctld's state is reset and a later two-node job gets the id of one
/// whose total is claimed in shared=: the later job's parts are not taken
/// for late parts of the earlier one; it gets its own total, in its own
/// accounting record, ledger row and user files.
fn reused_job_id(t: &T) {
    let first = t.submit("srun -N2 sleep 3");
    t.wait_gone(first);
    t.wait_for(&format!("the ledger row of job {first}"), || {
        !t.ledger_rows(first).is_empty()
    });
    let claimed = t.shared.join(format!("jobs/{first}/total.csv"));
    assert!(claimed.exists());
    let earlier_field = t.field(first);
    let earlier = Segment::parse(&earlier_field).unwrap();
    t.c.reset_controller(first)
        .expect("slurmctld restarts afresh");
    // The later job is measured from after the earlier one's parts arrived
    // by more than the clock skew allowed for, however quick the reset.
    let arrived = fs::metadata(&claimed).unwrap().modified().unwrap();
    while SystemTime::now() < arrived + carbontrack::report::delivery::CLOCK_SKEW {
        sleep(Duration::from_millis(200));
    }
    let started = SystemTime::now();
    let again = t.submit("srun -N2 sleep 6");
    assert_eq!(again, first, "the reset controller gives id {first} again");
    t.wait_gone(again);
    t.wait_for(&format!("the later job {again}'s ledger row"), || {
        t.ledger_rows(again).len() == 2
    });
    let rows = t.user_csv(again);
    assert_rows_match_truth(&t.hw, &rows, &["ct1", "ct2"]);
    assert!(
        rows.iter().all(|r| time(&r.start) >= started),
        "the user's CSV is the later job's: {rows:#?}"
    );
    let field = t.field(again);
    assert_eq!(field.matches("carbontrack:v1").count(), 1, "{field}");
    let seg = Segment::parse(&field).unwrap();
    assert_eq!(seg.nodes, 2, "{field}");
    let total = rows.last().unwrap();
    let kwh = total.energy_kwh.unwrap();
    assert!(close(seg.energy_kwh.unwrap(), kwh, kwh * 1e-5), "{field}");
    assert_ne!(seg, earlier, "the earlier job's figures: {earlier_field}");
    let logs = t.epilog_logs();
    assert!(
        logs.contains(&format!(
            "carbontrack: job {again}: {} held an earlier job with this id",
            t.shared.join(format!("jobs/{again}")).display()
        )),
        "{logs}"
    );
    assert!(!logs.contains("arrived after the job's total"), "{logs}");
    t.assert_no_carbontrack_drain(&[]);
    println!("  job {again} again: {field} (earlier: {earlier_field})");
}

/// ct2 dies mid-job (its slurmd and every process of the node): the job
/// ends, ct1's part is delivered, the footprint says ct2's is missing, and
/// no node is drained because of carbontrack.
fn killed_node(t: &T) {
    let id = t.submit("srun -N2 sleep 60");
    t.wait_for(&format!("job {id} sampled on both nodes"), || {
        ["ct1", "ct2"].iter().all(|n| {
            fs::read_to_string(t.c.dir.join(format!("log/slurmd-{n}.log")))
                .unwrap_or_default()
                .contains(&format!("carbontrack: job {id}: sampling on {n} "))
        })
    });
    sleep(Duration::from_secs(2));
    // The node fails: everything in its namespace (slurmd, its slurmstepds,
    // the tasks) is killed, by the pids `ip netns pids` lists.
    let ns = format!("ct{}n2", port_base(t));
    let pids = Command::new("ip")
        .args(["netns", "pids", &ns])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(!pids.is_empty(), "no process in {ns}");
    let mut kill = Command::new("kill");
    kill.arg("-KILL").args(&pids);
    assert!(kill.status().unwrap().success());
    // What a site's health check (or SlurmdTimeout, later) does.
    let reason = "test killed ct2";
    let out = t.root(
        "scontrol",
        &[
            "update",
            "nodename=ct2",
            "state=down",
            &format!("reason={reason}"),
        ],
    );
    assert!(out.trim().is_empty(), "{out}");
    t.wait_gone(id);
    t.wait_for(
        &format!("ct1's part of job {id} in the shared directory"),
        || t.shared.join(format!("jobs/{id}/node-ct1.csv")).exists(),
    );
    t.wait_for("ct1's Epilog to finish", || {
        t.epilog_logs()
            .contains(&format!("job {id}: part of ct1 kept; waiting for ct2"))
    });
    assert!(
        t.ledger_rows(id).is_empty(),
        "nothing delivered while ct2's part may come"
    );

    // Later (cron, or the next Epilog once the wait is over), flush delivers
    // what there is, once.
    let out = t.carbontrack(&["flush", "--part-wait", "0s"]);
    assert!(
        out.contains(&format!("job {id}: no part from ct2")) && out.contains("delivered 1 job(s)"),
        "{out}"
    );
    let rows = t.user_csv(id);
    assert_rows_match_truth(&t.hw, &rows, &["ct1"]);
    let total = rows.last().unwrap();
    assert!(
        total
            .status
            .starts_with("incomplete: node ct2 part missing"),
        "{}",
        total.status
    );
    let txt = fs::read_to_string(t.c.work_dir().join(format!("carbontrack-{id}.txt"))).unwrap();
    assert!(
        txt.contains("Incomplete: no footprint arrived from ct2"),
        "{txt}"
    );
    let field = t.field(id);
    let seg = Segment::parse(&field).unwrap();
    assert_eq!(seg.nodes, 1, "{field}");
    assert!(
        close(seg.gpu_j.unwrap(), sum_of(&rows, "gpu"), 0.01),
        "{field}"
    );
    let ledger = t.ledger_rows(id);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert!(
        ledger[0].contains("incomplete: node ct2 part missing"),
        "{}",
        ledger[0]
    );
    let again = t.carbontrack(&["flush", "--part-wait", "0s"]);
    assert!(
        again.contains("delivered 0 job(s), 0 still queued"),
        "{again}"
    );
    assert_eq!(t.ledger_rows(id).len(), 1);

    // ct2 is down for the test's reason; ct1 is up and nothing is drained
    // for an Epilog error.
    t.assert_no_carbontrack_drain(&[reason]);
    let ct1 = t.root("sinfo", &["-h", "-n", "ct1", "-o", "%T"]);
    assert_eq!(ct1.trim(), "idle", "ct1 is back in service");
    assert!(
        !t.epilog_logs().contains("exited with"),
        "{}",
        t.epilog_logs()
    );
    println!("  job {id}: {field}; total status `{}`", total.status);
}

fn port_base(_t: &T) -> u16 {
    std::env::var("CT_TEST_MULTINODE_PORT_BASE")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(17017)
}

/// Waits until every one of `nodes` logged that it samples job `id`.
fn wait_sampled(t: &T, id: u32, nodes: &[String]) {
    t.wait_for(&format!("job {id} sampled on {nodes:?}"), || {
        nodes.iter().all(|n| {
            fs::read_to_string(t.c.dir.join(format!("log/slurmd-{n}.log")))
                .unwrap_or_default()
                .contains(&format!("carbontrack: job {id}: sampling on {n} "))
        })
    });
}

/// The pid of job `id`'s extern slurmstepd on node `ctI`, among the
/// processes of that node's network namespace.
fn extern_stepd(t: &T, i: usize, id: u32) -> Option<u32> {
    let ns = format!("ct{}n{i}", port_base(t));
    let pids = Command::new("ip")
        .args(["netns", "pids", &ns])
        .output()
        .unwrap();
    let want = format!("[{id}.extern]");
    String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&want))
                .unwrap_or(false)
        })
}

/// Each node's largest error of a device row against its share of the truth.
fn node_errors(hw: &Hardware, rows: &[Row]) -> Vec<(String, f64)> {
    let mut by: std::collections::BTreeMap<&str, f64> = Default::default();
    for r in rows.iter().filter(|r| !r.is_total()) {
        let truth = r.share.unwrap() * hw.truth(r);
        let err = (r.energy_j.unwrap() - truth).abs() / truth;
        let e = by.entry(r.node.as_str()).or_default();
        *e = e.max(err);
    }
    by.into_iter().map(|(n, e)| (n.to_string(), e)).collect()
}

fn show_errors(errors: &[(String, f64)]) -> String {
    errors
        .iter()
        .map(|(n, e)| format!("{n} {:.2}%", e * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// sacct's State and ExitCode of the job's allocation.
fn slurm_state(t: &T, id: u32) -> String {
    t.root(
        "sacct",
        &[
            "-n",
            "-X",
            "-P",
            "-j",
            &id.to_string(),
            "-o",
            "State,ExitCode",
        ],
    )
    .trim()
    .to_string()
}

fn node_states(t: &T) -> String {
    t.root("sinfo", &["-h", "-N", "-o", "%N=%T"])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// ct2's slurmd is SIGKILLed mid-job and started again, as a crash or an
/// upgrade does (`scripts/test-cluster restart-slurmd ct2`): the job's extern
/// slurmstepd outlives it and keeps sampling, the new slurmd runs ct2's
/// Epilog when the job ends, and the two parts meet in shared= into one
/// total, delivered once, with both nodes' rows whole.
fn restarted_slurmd(t: &T) {
    let id = t.submit("srun -N2 sleep 20");
    wait_sampled(t, id, &t.nodes);
    sleep(Duration::from_secs(2));
    let stepd = extern_stepd(t, 2, id).expect("ct2 runs the job's extern slurmstepd");
    let slurmd_log = t.c.dir.join("log/slurmd-ct2.log");
    let mark = fs::metadata(&slurmd_log).map(|m| m.len()).unwrap_or(0);
    let restart_at = SystemTime::now();
    let restarting = Instant::now();
    t.c.restart_slurmd("ct2").expect("ct2's slurmd restarts");
    let restarted_in = restarting.elapsed();
    assert!(
        Path::new(&format!("/proc/{stepd}")).exists(),
        "the extern slurmstepd (pid {stepd}) outlives ct2's slurmd"
    );
    let during = node_states(t);
    t.wait_gone(id);
    t.wait_for(&format!("the ledger row of job {id}"), || {
        !t.ledger_rows(id).is_empty()
    });
    let rows = t.user_csv(id);
    assert_rows_match_truth(&t.hw, &rows, &["ct1", "ct2"]);
    // ct2 was measured past the restart, to the job's end.
    for r in rows.iter().filter(|r| r.node == "ct2") {
        assert!(time(&r.end) > restart_at + Duration::from_secs(5), "{r:?}");
    }
    let total = rows.last().unwrap();
    assert!(!total.status.contains("missing"), "{}", total.status);
    assert_total_status_is_the_rows(&rows);
    let field = t.field(id);
    assert_eq!(field.matches("carbontrack:v1").count(), 1, "{field}");
    let seg = Segment::parse(&field).unwrap();
    assert_eq!(seg.nodes, 2, "{field}");
    let kwh = total.energy_kwh.unwrap();
    assert!(close(seg.energy_kwh.unwrap(), kwh, kwh * 1e-5), "{field}");
    let ledger = t.ledger_rows(id);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert!(ledger[0].ends_with(",ctcluster,ct1 ct2"), "{}", ledger[0]);
    let out = t.carbontrack(&["flush", "--part-wait", "0s"]);
    assert!(out.contains("delivered 0 job(s), 0 still queued"), "{out}");
    assert_eq!(t.ledger_rows(id).len(), 1);
    let state = slurm_state(t, id);
    assert_eq!(state, "COMPLETED|0:0", "what Slurm made of the job");
    t.assert_no_carbontrack_drain(&[]);
    t.wait_for("both nodes idle", || node_states(t) == "ct1=idle ct2=idle");
    assert!(
        !t.epilog_logs().contains("exited with"),
        "{}",
        t.epilog_logs()
    );
    // What the new slurmd said of the job it found running.
    let log = fs::read(&slurmd_log).unwrap_or_default();
    let after = String::from_utf8_lossy(log.get(mark as usize..).unwrap_or_default()).to_string();
    for line in after
        .lines()
        .filter(|l| {
            l.contains(&format!("{id}.")) || l.contains("slurmd version") || l.contains("recover")
        })
        .take(12)
    {
        println!("  ct2 slurmd: {line}");
    }
    println!(
        "  job {id}: ct2's slurmd killed and back in {:.1} s (nodes then: {during}); \
         Slurm: {state}; per-node error {}; total `{}`; {field}",
        restarted_in.as_secs_f64(),
        show_errors(&node_errors(&t.hw, &rows)),
        total.status
    );
}

/// One tracked job on every node of the cluster (8 by default): each node's
/// rows against the truth, one total of them all, delivered once.
fn many_nodes_one_total(t: &T) {
    let n = t.nodes.len();
    let submitted = Instant::now();
    let id = t.submit_n(n, &format!("srun -N{n} sleep 8"));
    wait_sampled(t, id, &t.nodes);
    let sampling = submitted.elapsed();
    t.wait_gone(id);
    let ended = submitted.elapsed();
    t.wait_for(&format!("the ledger row of job {id}"), || {
        !t.ledger_rows(id).is_empty()
    });
    let delivered = submitted.elapsed();
    let rows = t.user_csv(id);
    let names: Vec<&str> = t.nodes.iter().map(String::as_str).collect();
    assert_rows_match_truth(&t.hw, &rows, &names);
    let total = rows.last().unwrap();
    assert_eq!(total.node, "all");
    assert!(!total.status.contains("missing"), "{}", total.status);
    assert_total_status_is_the_rows(&rows);
    let field = t.field(id);
    assert_eq!(field.matches("carbontrack:v1").count(), 1, "{field}");
    let seg = Segment::parse(&field).unwrap();
    assert_eq!(seg.nodes as usize, n, "{field}");
    for (got, component) in [(seg.cpu_j, "cpu"), (seg.dram_j, "dram"), (seg.gpu_j, "gpu")] {
        let sum = sum_of(&rows, component);
        assert!(
            close(got.unwrap(), sum, 0.01 * n as f64),
            "{component}: {field}"
        );
    }
    let kwh = total.energy_kwh.unwrap();
    assert!(close(seg.energy_kwh.unwrap(), kwh, kwh * 1e-5), "{field}");
    let ledger = t.ledger_rows(id);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert!(
        ledger[0].ends_with(&format!(",ctcluster,{}", names.join(" "))),
        "{}",
        ledger[0]
    );
    for node in &t.nodes {
        assert!(!t.node_spool(node).join(format!("jobs/{id}")).exists());
    }
    let out = t.carbontrack(&["flush", "--part-wait", "0s"]);
    assert!(out.contains("delivered 0 job(s), 0 still queued"), "{out}");
    assert_eq!(t.ledger_rows(id).len(), 1);
    t.assert_no_carbontrack_drain(&[]);
    let idle: String = names
        .iter()
        .map(|n| format!("{n}=idle"))
        .collect::<Vec<_>>()
        .join(" ");
    t.wait_for("every node idle", || node_states(t) == idle);
    for r in rows.iter().filter(|r| !r.is_total() && r.status != "ok") {
        println!(
            "  not ok: {} {} {}: `{}` ({} to {})",
            r.node, r.component, r.device, r.status, r.start, r.end
        );
    }
    println!(
        "  job {id} on {n} nodes: sampling everywhere {:.1} s after sbatch, ended at {:.1} s, \
         delivered at {:.1} s; per-node error {}; {} rows, {:.1} J, total `{}`; {field}",
        sampling.as_secs_f64(),
        ended.as_secs_f64(),
        delivered.as_secs_f64(),
        show_errors(&node_errors(&t.hw, &rows)),
        rows.len(),
        total.energy_j.unwrap(),
        total.status
    );
}
