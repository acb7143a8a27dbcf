//! Issue 18, item 1: a soak. Many tracked jobs through the throwaway
//! cluster with accounting, the real plugin and the real Epilog wrapper, on
//! one node oversubscribed so that dozens run at once (`OverSubscribe=
//! FORCE:16` on its two CPUs): short and longer jobs, jobs with srun steps,
//! jobs cancelled while they run, a job killed at its time limit, arrays of
//! ten; and meanwhile slurmdbd stopped and started, slurmctld restarted, and
//! slurmd restarted while a tracked job runs (its extern slurmstepd outlives
//! slurmd and must still be measured and delivered).
//!
//! Afterwards every tracked job has exactly one carbontrack segment in
//! sacct, exactly one ledger row, its CSV and summary in the work dir; no
//! node is drained; after `carbontrack flush` the spool holds no job
//! directory and no outbox record. Printed: the Epilog's wall time (p50,
//! p99, max) and the extern step's RSS, tracked against untracked, for the
//! first and the last hundred tracked jobs (docs/reliability.md, "Under
//! load").
//!
//! `CT_SOAK_JOBS` tracked jobs (default 200, the CI run; the full run is
//! `CT_SOAK_JOBS=1000`). Needs root and the Slurm packages; skipped with a
//! message otherwise (a failure under CI=true).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use carbontrack::report::accounting::Segment;
use common::hardware::Hardware;
use common::{Cluster, JobId, USER, in_ci, missing_prerequisite, out, wait_for};

/// Jobs in the queue (pending or running) the submitter keeps at most.
const IN_FLIGHT: usize = 40;
/// Jobs sharing each CPU.
const OVERSUBSCRIBE: u32 = 16;
/// How long slurmdbd stays down at least.
const DBD_DOWN: Duration = Duration::from_secs(15);
/// How long the cluster may take to drain its queue once all is submitted.
const DRAIN_WITHIN: Duration = Duration::from_secs(300);

/// The `q` quantile (0 to 1) of `sorted`, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// What kind of job a submission is, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Short,
    Long,
    Steps,
    Cancelled,
    TimeLimit,
    Array,
    Untracked,
}

struct Soak {
    c: Cluster,
    hw: Hardware,
    bin: PathBuf,
    ledger: PathBuf,
}

impl Soak {
    fn root(&self, program: &str, args: &[&str]) -> Output {
        self.c.as_root(program, args)
    }

    fn pid(&self, daemon: &str) -> Option<u32> {
        fs::read_to_string(self.c.dir.join(format!("run/{daemon}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops `daemon` (by its pid file) with SIGTERM and waits until it is gone.
    fn stop(&self, daemon: &str) {
        let pid = self
            .pid(daemon)
            .unwrap_or_else(|| panic!("no pid file of {daemon}"));
        Command::new("kill").arg(pid.to_string()).status().unwrap();
        wait_for(
            &format!("{daemon} (pid {pid}) to stop"),
            Duration::from_secs(30),
            || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()),
        );
    }

    /// Starts `daemon` as scripts/test-cluster does (it finds its
    /// configuration through SLURM_CONF and daemonizes).
    fn start(&self, daemon: &str) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.c.dir.join(format!("log/{daemon}.out")))
            .unwrap();
        let ok = Command::new(daemon)
            .env("SLURM_CONF", self.c.slurm_conf())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("{daemon}: {e}"))
            .success();
        assert!(ok, "{daemon} did not start");
    }

    fn controller_up(&self) -> bool {
        self.root("scontrol", &["ping"]).status.success()
            && String::from_utf8_lossy(&self.root("scontrol", &["ping"]).stdout).contains("UP")
    }

    /// Jobs of the submit user still in the queue, array tasks one by one.
    fn in_queue(&self) -> Option<usize> {
        let o = self.root("squeue", &["-h", "-r", "-u", USER, "-o", "%i"]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).lines().count())
    }

    fn drained(&self) -> String {
        String::from_utf8_lossy(&self.root("sinfo", &["-R", "-h"]).stdout)
            .trim()
            .to_string()
    }

    fn epilog_log(&self) -> String {
        fs::read_to_string(self.c.dir.join("log/ct-epilog.log")).unwrap_or_default()
    }

    fn submit(&self, args: &[&str], script: &str) -> JobId {
        // slurmctld may be restarting: sbatch is retried for a while.
        let mut last = String::new();
        for _ in 0..60 {
            match self.c.submit_in(&self.c.work_dir(), args, script) {
                Ok(id) => return id,
                Err(e) => last = e,
            }
            sleep(Duration::from_millis(500));
        }
        panic!("sbatch {args:?} kept failing: {last}");
    }
}

/// The extern slurmstepds of this cluster (not of another cluster on the
/// machine: their SLURM_CONF is this one's), with their VmRSS in kB.
fn extern_rss(conf: &str) -> Vec<(u32, u64)> {
    let want = format!("SLURM_CONF={conf}");
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.filter_map(Result::ok) {
        let path = p.path();
        let Ok(cmd) = fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        let Some(job) = cmd
            .strip_prefix("slurmstepd: [")
            .and_then(|r| r.split_once(".extern]"))
            .and_then(|(j, _)| j.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = fs::read(path.join("environ"))
            .map(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
            .unwrap_or(false);
        if !ours {
            continue;
        }
        let rss = fs::read_to_string(path.join("status")).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        });
        if let Some(rss) = rss {
            found.push((job, rss));
        }
    }
    found
}

/// Samples the extern steps' RSS every second until stopped: job id to its
/// samples.
struct RssSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<HashMap<u32, Vec<u64>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(conf: String) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(HashMap::<u32, Vec<u64>>::new()));
        let (s, m) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (job, rss) in extern_rss(&conf) {
                    m.lock().unwrap().entry(job).or_default().push(rss);
                }
                sleep(Duration::from_secs(1));
            }
        });
        RssSampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> HashMap<u32, Vec<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// The soak's size: `CT_SOAK_JOBS` tracked jobs, 200 unless told.
fn soak_jobs() -> usize {
    std::env::var("CT_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Sets the cluster up: the fake hardware's plugin arguments, a ledger,
/// the real Epilog wrapper timed, the node oversubscribed.
fn setup() -> Soak {
    let c = Cluster::start(true).unwrap_or_else(|e| panic!("cannot start the cluster: {e}"));
    let hw = Hardware::with_wrap(60_000_000_000);
    let bin = common::with_real_epilog(&c, &hw, env!("CARGO_BIN_EXE_carbontrack"), |l| {
        if l.starts_with("PartitionName=") {
            format!("{l} OverSubscribe=FORCE:{OVERSUBSCRIBE}\n")
        } else {
            format!("{l}\n")
        }
    });
    let ledger = c.dir.join("ct-ledger/ledger.csv");
    let s = Soak { c, hw, bin, ledger };
    // Both restarted, so that the partition's sharing and the Epilog hold.
    s.stop("slurmd");
    s.stop("slurmctld");
    s.start("slurmctld");
    s.start("slurmd");
    wait_for("slurmctld", Duration::from_secs(30), || {
        s.controller_up().then_some(())
    });
    let o = s.root("scontrol", &["show", "partition", "debug"]);
    assert!(
        out(&o).contains(&format!("OverSubscribe=FORCE:{OVERSUBSCRIBE}")),
        "{}",
        out(&o)
    );
    wait_for("the node idle", Duration::from_secs(60), || {
        let o = s.root("sinfo", &["-h", "-o", "%T"]);
        (String::from_utf8_lossy(&o.stdout).trim() == "idle").then_some(())
    });
    s
}

#[test]
fn a_soak_of_tracked_jobs_through_daemon_restarts_delivers_each_once() {
    if let Some(why) = missing_prerequisite(true) {
        assert!(!in_ci(), "the soak cannot run under CI: {why}");
        println!("SKIPPED soak cluster test: {why}");
        return;
    }
    let n = soak_jobs();
    let s = setup();
    let began = Instant::now();
    let rss = RssSampler::start(s.c.slurm_conf().display().to_string());

    // Submission ids (an array's is its ArrayJobId) and their kinds.
    let mut submitted: Vec<(JobId, Kind)> = Vec::new();
    let mut to_cancel: Vec<JobId> = Vec::new();
    let mut tracked = 0;
    let mut events: Vec<String> = Vec::new();
    let (dbd_down_at, dbd_up_at, ctld_at, slurmd_at) = (n / 5, 3 * n / 10, n / 2, 7 * n / 10);
    let mut outlived: Option<(JobId, u32)> = None;
    let mut dbd_stopped: Option<Instant> = None;

    // A job killed at its time limit (one minute, Slurm's smallest).
    submitted.push((
        s.submit(
            &["--carbon-track=yes", "--time=1"],
            "#!/bin/bash\nsleep 200\n",
        ),
        Kind::TimeLimit,
    ));
    tracked += 1;
    let mut unit = 0usize;
    while tracked < n {
        // Keep the queue full, not overflowing.
        while s.in_queue().is_none_or(|q| q >= IN_FLIGHT) {
            cancel_running(&s, &mut to_cancel);
            sleep(Duration::from_millis(300));
        }
        cancel_running(&s, &mut to_cancel);
        let yes = "--carbon-track=yes";
        let (kind, args, script): (Kind, Vec<&str>, String) = match unit % 10 {
            0 if n - tracked >= 10 => (
                Kind::Array,
                vec![yes, "--array=0-9"],
                "#!/bin/bash\nsleep 2\n".into(),
            ),
            3 => (
                Kind::Steps,
                vec![yes],
                "#!/bin/bash\nsrun -n1 sleep 1\nsrun -n1 true\n".into(),
            ),
            5 => (Kind::Long, vec![yes], "#!/bin/bash\nsleep 12\n".into()),
            7 => (
                Kind::Cancelled,
                vec![yes],
                "#!/bin/bash\nsleep 300\n".into(),
            ),
            9 => (Kind::Untracked, vec![], "#!/bin/bash\nsleep 8\n".into()),
            k => (
                Kind::Short,
                vec![yes],
                format!("#!/bin/bash\nsleep {}\n", k % 3),
            ),
        };
        let id = s.submit(&args, &script);
        submitted.push((id, kind));
        match kind {
            Kind::Array => tracked += 10,
            Kind::Untracked => {}
            Kind::Cancelled => {
                to_cancel.push(id);
                tracked += 1;
            }
            _ => tracked += 1,
        }
        unit += 1;

        // The events, each once, at their point of the run.
        if tracked >= dbd_down_at && !events.iter().any(|e| e.starts_with("slurmdbd stopped")) {
            s.stop("slurmdbd");
            dbd_stopped = Some(Instant::now());
            events.push(format!(
                "slurmdbd stopped after {tracked} jobs ({:.0} s)",
                began.elapsed().as_secs_f64()
            ));
        }
        if tracked >= dbd_up_at
            && dbd_stopped.is_some_and(|t| t.elapsed() >= DBD_DOWN)
            && !events.iter().any(|e| e.starts_with("slurmdbd started"))
        {
            start_dbd(&s, &mut events, tracked, began);
        }
        if tracked >= ctld_at && !events.iter().any(|e| e.starts_with("slurmctld")) {
            let running = s.in_queue().unwrap_or(0);
            s.stop("slurmctld");
            s.start("slurmctld");
            wait_for("slurmctld back", Duration::from_secs(60), || {
                s.controller_up().then_some(())
            });
            events.push(format!(
                "slurmctld restarted after {tracked} jobs, {running} in the queue ({:.0} s)",
                began.elapsed().as_secs_f64()
            ));
        }
        if tracked >= slurmd_at && outlived.is_none() {
            outlived = Some(restart_slurmd(&s, &mut submitted, &mut events, began));
            tracked += 1;
        }
    }
    // A short run may submit everything before slurmdbd's outage is over.
    if !events.iter().any(|e| e.starts_with("slurmdbd started")) {
        if let Some(t) = dbd_stopped {
            sleep(DBD_DOWN.saturating_sub(t.elapsed()));
        }
        start_dbd(&s, &mut events, tracked, began);
    }
    let submit_secs = began.elapsed().as_secs_f64();
    println!(
        "  submitted {tracked} tracked jobs in {} submissions in {submit_secs:.0} s",
        submitted.len()
    );
    for e in &events {
        println!("  {e}");
    }
    wait_for(
        "the queue to drain",
        DRAIN_WITHIN + Duration::from_secs(60),
        || {
            cancel_running(&s, &mut to_cancel);
            (s.in_queue() == Some(0)).then_some(())
        },
    );
    let samples = rss.finish();
    println!(
        "  queue empty {:.0} s after the start",
        began.elapsed().as_secs_f64()
    );
    check(&s, &submitted, outlived, &samples);
}

fn start_dbd(s: &Soak, events: &mut Vec<String>, tracked: usize, began: Instant) {
    s.start("slurmdbd");
    wait_for("slurmdbd", Duration::from_secs(30), || {
        s.root("sacctmgr", &["-n", "list", "cluster"])
            .status
            .success()
            .then_some(())
    });
    events.push(format!(
        "slurmdbd started after {tracked} jobs ({:.0} s)",
        began.elapsed().as_secs_f64()
    ));
}

/// Cancels the jobs of `ids` that are being measured (their live copy is
/// in the spool); keeps the others. A job cancelled before its extern step
/// began sampling has nothing to deliver ("no footprint", seen here with a
/// job cancelled in its first second): not what this soak is about.
fn cancel_running(s: &Soak, ids: &mut Vec<JobId>) {
    ids.retain(|id| {
        let measured = fs::read_dir(s.hw.spool().join(format!("jobs/{}", id.0)))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with("live-"))
            })
            .unwrap_or(false);
        if !measured || s.c.job_state(id.0) != "RUNNING" {
            return true;
        }
        let o =
            s.c.as_user("scancel", &[&id.0.to_string()])
                .output()
                .unwrap();
        !o.status.success()
    });
}

/// Restarts slurmd while a tracked job runs; returns that job and its
/// extern stepd's pid, which outlives slurmd.
fn restart_slurmd(
    s: &Soak,
    submitted: &mut Vec<(JobId, Kind)>,
    events: &mut Vec<String>,
    began: Instant,
) -> (JobId, u32) {
    let id = s.submit(&["--carbon-track=yes"], "#!/bin/bash\nsleep 20\n");
    submitted.push((id, Kind::Long));
    let conf = s.c.slurm_conf().display().to_string();
    let stepd = wait_for(
        &format!("job {}'s extern step", id.0),
        Duration::from_secs(120),
        || {
            extern_rss(&conf).into_iter().find(|(j, _)| *j == id.0)?;
            find_stepd(&conf, id.0)
        },
    );
    // Past its first live copy: the job has been measured for a while.
    sleep(Duration::from_secs(3));
    let running = s.in_queue().unwrap_or(0);
    s.stop("slurmd");
    sleep(Duration::from_secs(2));
    assert!(
        Path::new(&format!("/proc/{stepd}")).exists(),
        "job {}'s extern stepd did not outlive slurmd",
        id.0
    );
    s.start("slurmd");
    events.push(format!(
        "slurmd restarted while job {} ({running} in the queue) ran; its extern stepd (pid {stepd}) outlived it ({:.0} s)",
        id.0,
        began.elapsed().as_secs_f64()
    ));
    (id, stepd)
}

fn find_stepd(conf: &str, job: u32) -> Option<u32> {
    let want = format!("slurmstepd: [{job}.extern]");
    let env = format!("SLURM_CONF={conf}");
    fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|p| p.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let envs = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).trim_end_matches('\0') == want
                && envs.split(|b| *b == 0).any(|v| v == env.as_bytes())
        })
}

/// One job as accounting has it.
#[derive(Debug)]
struct Acct {
    raw: u32,
    state: String,
    start: String,
    field: String,
}

/// Every job of these submissions (array tasks one by one), by raw id.
fn accounting(s: &Soak, ids: &[JobId]) -> BTreeMap<u32, (u32, Acct)> {
    let list: Vec<String> = ids.iter().map(|i| i.0.to_string()).collect();
    let o = s.root(
        "sacct",
        &[
            "-n",
            "-X",
            "-P",
            "-j",
            &list.join(","),
            "-o",
            "JobIDRaw,JobID,State,Start,AdminComment",
        ],
    );
    let mut jobs = BTreeMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = line.splitn(5, '|').collect();
        if f.len() < 5 {
            continue;
        }
        let (Ok(raw), Ok(base)) = (
            f[0].parse::<u32>(),
            f[1].split('_').next().unwrap_or("").parse::<u32>(),
        ) else {
            continue;
        };
        jobs.insert(
            raw,
            (
                base,
                Acct {
                    raw,
                    state: f[2].to_string(),
                    start: f[3].to_string(),
                    field: f[4].to_string(),
                },
            ),
        );
    }
    jobs
}

fn ledger_counts(path: &Path) -> HashMap<u32, usize> {
    let mut counts = HashMap::new();
    let Ok(mut r) = csv::Reader::from_path(path) else {
        return counts;
    };
    let col = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "job_id")
        .expect("a job_id column");
    for rec in r.records() {
        let rec = rec.unwrap();
        if let Ok(id) = rec[col].parse() {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

fn check(
    s: &Soak,
    submitted: &[(JobId, Kind)],
    outlived: Option<(JobId, u32)>,
    samples: &HashMap<u32, Vec<u64>>,
) {
    let kind_of: HashMap<u32, Kind> = submitted.iter().map(|(i, k)| (i.0, *k)).collect();
    let ids: Vec<JobId> = submitted.iter().map(|(i, _)| *i).collect();
    let expected: usize = submitted
        .iter()
        .map(|(_, k)| match k {
            Kind::Array => 10,
            _ => 1,
        })
        .sum();
    // Accounting hears of the last jobs (and the queued totals) a little
    // later; flush delivers what the outage left queued.
    let mut flushes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let jobs = loop {
        let o = s.root(&s.bin.to_string_lossy(), &["flush"]);
        flushes += 1;
        let jobs = accounting(s, &ids);
        let complete = jobs.len() == expected
            && jobs.values().all(|(base, a)| {
                kind_of[base] == Kind::Untracked || a.field.contains("carbontrack:v1")
            });
        if complete && o.status.success() {
            break jobs;
        }
        if Instant::now() > deadline {
            // The checks below say what is missing.
            println!(
                "  after 120 s: {} of {expected} jobs in accounting; last flush: {}",
                jobs.len(),
                out(&o)
            );
            break jobs;
        }
        sleep(Duration::from_secs(2));
    };
    println!(
        "  {} jobs in accounting ({} flush run(s) at the end)",
        jobs.len(),
        flushes
    );
    let mut by_state: BTreeMap<(Kind, String), usize> = BTreeMap::new();
    for (base, a) in jobs.values() {
        *by_state
            .entry((
                kind_of[base],
                a.state.split(' ').next().unwrap().to_string(),
            ))
            .or_insert(0) += 1;
    }
    println!("  kinds and states: {by_state:?}");

    let ledger = ledger_counts(&s.ledger);
    let work = s.c.work_dir();
    let tracked: Vec<&Acct> = jobs
        .values()
        .filter(|(b, _)| kind_of[b] != Kind::Untracked)
        .map(|(_, a)| a)
        .collect();
    for a in &tracked {
        assert_ne!(a.start, "Unknown", "job {} never ran: {a:?}", a.raw);
        assert_eq!(
            a.field.matches("carbontrack:v1").count(),
            1,
            "job {}: {a:?}",
            a.raw
        );
        let seg = Segment::parse(&a.field).unwrap_or_else(|| panic!("job {}: {a:?}", a.raw));
        assert!(
            seg.energy_kwh.is_some() && seg.cpu_j.is_some() && seg.nodes == 1,
            "job {}: {seg:?}",
            a.raw
        );
        assert_eq!(
            ledger.get(&a.raw).copied(),
            Some(1),
            "job {}: ledger rows",
            a.raw
        );
        for ext in ["csv", "txt", "svg"] {
            let f = work.join(format!("carbontrack-{}.{ext}", a.raw));
            assert!(
                f.is_file(),
                "job {} ({:?}): {} missing",
                a.raw,
                a,
                f.display()
            );
        }
    }
    for (base, a) in jobs.values() {
        if kind_of[base] == Kind::Untracked {
            assert!(!a.field.contains("carbontrack"), "untracked {a:?}");
            assert!(!ledger.contains_key(&a.raw), "untracked job {}", a.raw);
        }
    }
    assert_eq!(jobs.len(), expected, "jobs in accounting");
    assert_eq!(
        ledger.values().sum::<usize>(),
        tracked.len(),
        "one ledger row per tracked job, nothing else"
    );
    let user_files = fs::read_dir(&work)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("carbontrack-"))
        .count();
    assert_eq!(
        user_files,
        3 * tracked.len(),
        "a CSV, a .txt and an .svg per job"
    );
    println!(
        "  {} tracked jobs: one segment, one ledger row, one CSV, .txt and .svg each",
        tracked.len()
    );
    if let Some((id, pid)) = outlived {
        let (_, a) = &jobs[&id.0];
        println!(
            "  job {} (extern stepd {pid} outlived slurmd's restart): {}, {}",
            id.0, a.state, a.field
        );
    }
    assert_eq!(s.drained(), "", "a drained node");

    // After the last flush, nothing waits in the spool.
    let spool = s.hw.spool();
    for sub in ["jobs", "outbox", "stale", "corrupt"] {
        let left: Vec<String> = fs::read_dir(spool.join(sub))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        println!("  spool {sub}/: {} entries {left:?}", left.len());
        assert!(
            left.is_empty(),
            "left in {}/{sub}: {left:?}",
            spool.display()
        );
    }

    // The Epilog's time, first hundred tracked jobs against the last.
    let log = s.epilog_log();
    assert!(!log.contains("stopped after"), "an Epilog hit its timeout");
    let mut took: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for l in log.lines() {
        let mut w = l.split_whitespace();
        if let (Some("test-epilog:"), Some("job"), Some(id), Some("took"), Some(ms)) =
            (w.next(), w.next(), w.next(), w.next(), w.next())
            && let (Ok(id), Ok(ms)) = (id.parse::<u32>(), ms.parse::<f64>())
        {
            took.entry(id).or_default().push(ms);
        }
    }
    let ran: BTreeSet<u32> = tracked.iter().map(|a| a.raw).collect();
    for id in &ran {
        assert!(took.contains_key(id), "no Epilog ran for job {id}");
    }
    let ordered: Vec<u32> = ran.iter().copied().collect();
    let hundred = 100.min(ordered.len());
    let groups = [
        ("first", &ordered[..hundred]),
        ("last", &ordered[ordered.len() - hundred..]),
    ];
    for (name, ids) in groups {
        let t = sorted(ids.iter().flat_map(|id| took[id].clone()).collect());
        println!(
            "  Epilog wall time, {name} {hundred} tracked jobs: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            quantile(&t, 0.5),
            quantile(&t, 0.99),
            t.last().unwrap()
        );
    }

    // The extern step's RSS: each job's median sample, then the median of
    // the jobs; untracked jobs (the plugin loaded, inert) as the baseline.
    let median_of = |v: &[u64]| sorted(v.iter().map(|&x| x as f64).collect())[v.len() / 2];
    let untracked: Vec<f64> = samples
        .iter()
        .filter(|(j, _)| {
            jobs.get(j)
                .is_some_and(|(b, _)| kind_of[b] == Kind::Untracked)
        })
        .map(|(_, v)| median_of(v))
        .collect();
    let base = (!untracked.is_empty()).then(|| quantile(&sorted(untracked.clone()), 0.5));
    for (name, ids) in groups {
        let t: Vec<f64> = ids
            .iter()
            .filter_map(|id| samples.get(id).map(|v| median_of(v)))
            .collect();
        if t.is_empty() {
            continue;
        }
        let t = sorted(t);
        let med = quantile(&t, 0.5);
        println!(
            "  extern step RSS, {name} {hundred} tracked jobs ({} sampled): median {med:.0} kB, max {:.0} kB; untracked median {}; added by the plugin {}",
            t.len(),
            t.last().unwrap(),
            base.map_or("none sampled".into(), |b| format!(
                "{b:.0} kB ({} jobs)",
                untracked.len()
            )),
            base.map_or("?".into(), |b| format!("{:.0} kB", med - b)),
        );
    }
}
