//! The Epilog against real Slurm accounting: a throwaway cluster with MariaDB
//! and slurmdbd (`scripts/test-cluster start --accounting`) whose slurmd runs
//! `scripts/carbontrack-epilog` as its Epilog. Until the plugin writes node
//! footprints, a small test Epilog puts a prepared one into the spool first,
//! as the extern step would, then calls the real wrapper.
//!
//! Needs root and the Slurm packages; skipped with a message otherwise
//! (a failure under CI=true). Everything runs in one test, in order, because
//! the machine holds one cluster at a time.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carbontrack::carbon::intensity::Resolved;
use carbontrack::footprint::{self, NodeFootprint};
use carbontrack::measure::{Component, DeviceEnergy, Status};
use carbontrack::report::accounting::Segment;
use carbontrack::units::{GramsPerKwh, Joules};
use common::{Cluster, in_ci, missing_prerequisite};

const WAIT: Duration = Duration::from_secs(90);

struct T {
    c: Cluster,
    spool: PathBuf,
    ledger: PathBuf,
    stage: PathBuf,
    bin: PathBuf,
    node: String,
}

impl T {
    fn out(o: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn root(&self, program: &str, args: &[&str]) -> String {
        let o = self.c.as_root(program, args);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn carbontrack(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("SLURM_CONF", self.c.slurm_conf())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The footprint the next job's Epilog finds (as the extern step would
    /// leave it): cpu and gpu joules on this node, measured from about when
    /// the job submitted next starts (the Epilog checks that accounting's
    /// job is the run measured) for 30 s.
    fn stage(&self, cpu: f64, gpu: f64) {
        self.stage_for(cpu, gpu, Duration::from_secs(30));
    }

    /// [`T::stage`] measured for `span`; returns when the measurement ends.
    fn stage_for(&self, cpu: f64, gpu: f64, span: Duration) -> SystemTime {
        let t0 = SystemTime::now() + Duration::from_secs(1);
        let dev = |component, device: &str, j: f64| DeviceEnergy {
            component,
            device: device.into(),
            share: 1.0,
            energy: Some(Joules(j)),
            status: Status::Ok,
        };
        let fp = NodeFootprint {
            job_id: "0".into(),
            node: self.node.clone(),
            start: t0,
            end: t0 + span,
            devices: vec![
                dev(Component::Cpu, "package-0", cpu),
                dev(Component::Gpu, "GPU-a", gpu),
            ],
        };
        let intensity = Resolved {
            g_per_kwh: GramsPerKwh(400.0),
            source: "fixed by site".into(),
            note: None,
        };
        let mut csv = Vec::new();
        footprint::write_csv(&mut csv, &footprint::node_rows(&fp, 1.5, &intensity)).unwrap();
        fs::write(self.stage.join("footprint.csv"), csv).unwrap();
        t0 + span
    }

    fn stage_bytes(&self, b: &[u8]) {
        fs::write(self.stage.join("footprint.csv"), b).unwrap();
    }

    /// Submits a job as the user; returns its id without waiting.
    fn submit(&self, wrap: &str) -> u32 {
        let work = self.c.work_dir().display().to_string();
        let o = self
            .c
            .as_user(
                "sbatch",
                &[
                    "--parsable",
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
            .unwrap_or_else(|| panic!("sbatch: {}", T::out(&o)))
    }

    /// Whether a run of job `id` waits in the outbox.
    fn queued(&self, id: u32) -> bool {
        fs::read_dir(self.spool.join("outbox")).is_ok_and(|rd| {
            rd.filter_map(Result::ok).any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(".json") && n.split(['-', '.']).next() == Some(&id.to_string())
            })
        })
    }

    /// Submits `wrap` as the user with this `--comment`; waits for its end.
    fn submit_commented(&self, comment: &str, wrap: &str) -> u32 {
        let work = self.c.work_dir().display().to_string();
        let comment = format!("--comment={comment}");
        let o = self
            .c
            .as_user(
                "sbatch",
                &[
                    "--parsable",
                    "--wait",
                    "--chdir",
                    &work,
                    "--output=/dev/null",
                    &comment,
                    "--wrap",
                    wrap,
                ],
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        common::parsable_job_id(&String::from_utf8_lossy(&o.stdout))
            .unwrap_or_else(|| panic!("sbatch: {}", T::out(&o)))
    }

    fn field(&self, id: u32) -> String {
        // The issue's own check: sacct -j N -o AdminComment%300.
        self.root(
            "sacct",
            &["-n", "-X", "-j", &id.to_string(), "-o", "AdminComment%300"],
        )
        .trim()
        .to_string()
    }

    fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(200));
        }
    }

    fn wait_state(&self, id: u32, state: &str) {
        self.wait_for(&format!("job {id} {state}"), || {
            self.root(
                "sacct",
                &["-n", "-X", "-P", "-j", &id.to_string(), "-o", "State"],
            )
            .trim()
                == state
        });
    }

    fn wait_gone(&self, id: u32) {
        self.wait_for(&format!("job {id} to leave the queue"), || {
            self.root("squeue", &["-h", "-j", &id.to_string(), "-o", "%T"])
                .trim()
                .is_empty()
        });
    }

    fn drained(&self) -> String {
        self.root("sinfo", &["-R", "-h"]).trim().to_string()
    }

    fn epilog_log(&self) -> String {
        fs::read_to_string(self.c.dir.join("log/ct-epilog.log")).unwrap_or_default()
    }

    fn dbd_pid(&self) -> Option<u32> {
        fs::read_to_string(self.c.dir.join("run/slurmdbd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

fn kwh(j: f64) -> f64 {
    j * 1.5 / 3.6e6
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs()
}

#[test]
fn epilog_against_real_slurmdbd() {
    if let Some(why) = missing_prerequisite(true) {
        assert!(!in_ci(), "cluster tests cannot run under CI: {why}");
        println!("SKIPPED epilog cluster test: {why}");
        return;
    }
    let c = Cluster::start(true).expect("test cluster starts");
    let dir = c.dir.clone();
    let node =
        String::from_utf8_lossy(&Command::new("hostname").arg("-s").output().unwrap().stdout)
            .trim()
            .to_string();
    let t = T {
        spool: dir.join("ct-spool"),
        ledger: dir.join("ct-ledger/ledger.csv"),
        stage: dir.join("ct-stage"),
        bin: dir.join("bin/carbontrack"),
        node,
        c,
    };
    // The binary where the Epilog (root) and the submit user can run it.
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_carbontrack"), &t.bin).unwrap();
    fs::set_permissions(&t.bin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(&t.stage).unwrap();
    carbontrack::spool::Spool::open(&t.spool).unwrap();
    // One place to configure: the epilog finds these through SLURM_CONF.
    let spool_arg = format!("spool={}", t.spool.display());
    let ledger_arg = format!("ledger={}", t.ledger.display());
    t.c.set_plugin_args(&[&spool_arg, &ledger_arg, "pue=1.5", "intensity=400"]);

    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/carbontrack-epilog");
    let epilog = dir.join("etc/epilog.sh");
    fs::write(
        &epilog,
        format!(
            "#!/bin/bash\n\
             # Test Epilog: the extern step's footprint, then the real wrapper.\n\
             exec 2>>{log}\n\
             if [[ -f {stage}/footprint.csv ]]; then\n\
               install -d -m 700 {spool}/jobs/$SLURM_JOB_ID\n\
               cp {stage}/footprint.csv {spool}/jobs/$SLURM_JOB_ID/node-$(hostname -s).csv\n\
             fi\n\
             t0=$(date +%s%N)\n\
             CARBONTRACK={bin} {wrapper}\n\
             rc=$?\n\
             echo \"test-epilog: job $SLURM_JOB_ID took $(( ($(date +%s%N) - t0) / 1000000 )) ms, SLURM_CONF=$SLURM_CONF\" >&2\n\
             exit $rc\n",
            log = dir.join("log/ct-epilog.log").display(),
            stage = t.stage.display(),
            spool = t.spool.display(),
            bin = t.bin.display(),
            wrapper = wrapper.display(),
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
        + &format!("Epilog={}\n", epilog.display())
        // Users' --comment kept in accounting, for the forged-comment check.
        + "AccountingStoreFlags=job_comment\n";
    fs::write(t.c.slurm_conf(), conf).unwrap();
    let o = t.c.as_root("scontrol", &["reconfigure"]);
    assert!(o.status.success(), "{}", T::out(&o));
    sleep(Duration::from_secs(2));

    let mut delivered_j = Vec::new();

    // 1. The segment lands next to text an admin put there first.
    t.stage(360_000.0, 720_000.0);
    let id = t.submit("sleep 5");
    t.wait_state(id, "RUNNING");
    let o = t.c.as_root(
        "sacctmgr",
        &[
            "-i",
            "modify",
            "job",
            "where",
            &format!("jobid={id}"),
            "set",
            "AdminComment=ticket 42 'checked'",
        ],
    );
    assert!(o.status.success(), "{}", T::out(&o));
    t.wait_for(&format!("segment of job {id}"), || {
        t.field(id).contains("carbontrack:v1")
    });
    let field = t.field(id);
    assert!(
        field.starts_with("ticket 42 `checked` carbontrack:v1 "),
        "{field}"
    );
    let seg = Segment::parse(&field).unwrap();
    assert!(close(seg.energy_kwh.unwrap(), kwh(1_080_000.0)), "{field}");
    assert!(
        close(seg.co2e_g.unwrap(), kwh(1_080_000.0) * 400.0),
        "{field}"
    );
    assert_eq!(
        (seg.cpu_j, seg.gpu_j, seg.nodes),
        (Some(360_000.0), Some(720_000.0), 1)
    );
    delivered_j.push(1_080_000.0);
    assert_eq!(t.drained(), "");

    // 2. A comment set through slurmctld while the job runs (it travels with
    // the job's completion record) survives too.
    t.stage(36_000.0, 0.0);
    let id = t.submit("sleep 5");
    t.wait_state(id, "RUNNING");
    let o = t.c.as_root(
        "scontrol",
        &["update", &format!("jobid={id}"), "AdminComment=ops-note"],
    );
    assert!(o.status.success(), "{}", T::out(&o));
    t.wait_gone(id);
    t.wait_for(&format!("segment of job {id}"), || {
        t.field(id).contains("carbontrack:v1")
    });
    sleep(Duration::from_secs(2));
    let field = t.field(id);
    assert!(field.starts_with("ops-note carbontrack:v1 "), "{field}");
    delivered_j.push(36_000.0);

    // 3. slurmdbd down: the job completes, the node stays up, the total
    // waits in the outbox; once slurmdbd is back, flush delivers it once.
    let pid = t.dbd_pid().expect("slurmdbd pid");
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    t.wait_for("slurmdbd to stop", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    t.stage(7200.0, 3600.0);
    let id = t.submit("true");
    t.wait_for("the queued total", || t.queued(id));
    t.wait_gone(id);
    assert_eq!(t.drained(), "", "the Epilog drained the node");
    assert!(
        t.epilog_log()
            .contains(&format!("job {id}: queued for retry")),
        "{}",
        t.epilog_log()
    );
    let o = Command::new("slurmdbd")
        .env("SLURM_CONF", t.c.slurm_conf())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(o.success());
    t.wait_for("slurmdbd back", || {
        t.c.as_root("sacctmgr", &["-n", "list", "cluster"])
            .status
            .success()
    });
    let mut flushes = 0;
    t.wait_for("flush to deliver", || {
        flushes += 1;
        t.carbontrack(&["flush"]).status.success()
    });
    assert!(!t.queued(id));
    let field = t.field(id);
    assert_eq!(field.matches("carbontrack:v1").count(), 1, "{field}");
    assert!(close(
        Segment::parse(&field).unwrap().energy_kwh.unwrap(),
        kwh(10_800.0)
    ));
    delivered_j.push(10_800.0);
    let again = t.carbontrack(&["flush"]);
    assert!(
        T::out(&again).contains("delivered 0 job(s), 0 still queued"),
        "{}",
        T::out(&again)
    );
    println!("slurmdbd outage: delivered after {flushes} flush attempt(s)");

    // 4. A truncated footprint: skipped with one log line, Epilog exits 0.
    let good = fs::read(t.stage.join("footprint.csv")).unwrap();
    t.stage_bytes(&good[..good.len() * 2 / 3]);
    let id = t.submit("true");
    t.wait_gone(id);
    t.wait_state(id, "COMPLETED");
    t.wait_for("the epilog's log line", || {
        t.epilog_log().contains(&format!("job {id} took"))
    });
    let lines: Vec<String> = t
        .epilog_log()
        .lines()
        .filter(|l| l.contains(&format!("job {id}: skipped unreadable")))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 1, "{}", t.epilog_log());
    assert_eq!(t.drained(), "");
    assert!(!t.field(id).contains("carbontrack:v1"));
    assert!(
        t.spool
            .join(format!("corrupt/{id}-node-{}.csv", t.node))
            .exists()
    );
    fs::remove_file(t.stage.join("footprint.csv")).unwrap();

    // 5. `carbontrack status` run by root for a running job whose live
    // footprint is not in the spool reads the job's summary in its work dir
    // as the job's user (uid, gid from the real squeue): a link ctuser
    // planted there to a root-only file is not followed, a FIFO does not
    // hang it, the user's own file is shown.
    let id = t.submit("sleep 60");
    t.wait_state(id, "RUNNING");
    let no_live = dir.join("ct-spool-empty");
    carbontrack::spool::Spool::open(&no_live).unwrap();
    let secret = dir.join("root-secret");
    fs::write(&secret, "root's secret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let txt = t.c.work_dir().join(format!("carbontrack-{id}.txt"));
    let as_ctuser = |args: &[&str]| {
        let o = Command::new("runuser")
            .args(["-u", common::USER, "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", T::out(&o));
    };
    let status = || {
        let t0 = Instant::now();
        let o = t.carbontrack(&[
            "status",
            "--spool",
            no_live.to_str().unwrap(),
            &id.to_string(),
        ]);
        (o, t0.elapsed())
    };
    as_ctuser(&["ln", "-s", secret.to_str().unwrap(), txt.to_str().unwrap()]);
    let (o, _) = status();
    assert!(
        !o.status.success()
            && !T::out(&o).contains("secret\n")
            && T::out(&o).contains("is a symbolic link"),
        "{}",
        T::out(&o)
    );
    fs::remove_file(&txt).unwrap();
    as_ctuser(&["mkfifo", txt.to_str().unwrap()]);
    let (o, took) = status();
    assert!(
        !o.status.success() && T::out(&o).contains("is a FIFO"),
        "{}",
        T::out(&o)
    );
    assert!(
        took < Duration::from_secs(5),
        "status on a FIFO took {took:?}"
    );
    println!("status as root on ctuser's FIFO: refused in {took:?}");
    fs::remove_file(&txt).unwrap();
    let summary = format!("carbontrack: job {id} (running) so far\n");
    as_ctuser(&[
        "sh",
        "-c",
        &format!(
            "printf '%s\\n' '{}' > {}",
            summary.trim_end(),
            txt.display()
        ),
    ]);
    let (o, _) = status();
    assert!(o.status.success(), "{}", T::out(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), summary);
    let o = t.c.as_root("scancel", &[&id.to_string()]);
    assert!(o.status.success(), "{}", T::out(&o));
    t.wait_gone(id);

    // 6. A user (ctuser) holds a lock on every carbontrack file and
    // directory he can open (the ledger and its directory, the spool's
    // directory entry, the configuration, the binary) while other tracked
    // jobs end: each leaves the queue within 15 s of its end, its total is
    // in accounting, and the ledger has exactly one row per job.
    let holder = common::LockHolder::start(
        common::USER,
        &[
            t.ledger.parent().unwrap(),
            &t.spool,
            &dir.join("etc"),
            &t.bin,
        ],
    );
    assert!(
        holder.holds(&t.ledger) && holder.holds(t.ledger.parent().unwrap()),
        "{:?}",
        holder.locked
    );
    println!(
        "{} holds flock on {} paths: {:?}",
        common::USER,
        holder.locked.len(),
        holder.locked
    );
    t.stage(18_000.0, 36_000.0);
    let ids: Vec<u32> = (0..3).map(|_| t.submit("sleep 2")).collect();
    let mut gone_at = std::collections::HashMap::new();
    t.wait_for("the jobs to leave the queue", || {
        for id in &ids {
            if !gone_at.contains_key(id)
                && t.root("squeue", &["-h", "-j", &id.to_string(), "-o", "%T"])
                    .trim()
                    .is_empty()
            {
                gone_at.insert(*id, std::time::SystemTime::now());
            }
        }
        gone_at.len() == ids.len()
    });
    for id in &ids {
        let end = t
            .root(
                "sacct",
                &["-n", "-X", "-P", "-j", &id.to_string(), "-o", "End"],
            )
            .trim()
            .to_string();
        let secs = Command::new("date")
            .args(["-d", &end, "+%s"])
            .output()
            .unwrap();
        let end_s: u64 = String::from_utf8_lossy(&secs.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("job {id}: End `{end}`"));
        let gone_s = gone_at[id]
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let after = gone_s - end_s as f64;
        println!(
            "job {id}: left the queue {after:.1} s after its end ({end}) with ctuser's locks held"
        );
        assert!(
            after <= 15.0,
            "job {id} left the queue {after:.1} s after its end"
        );
        t.wait_for(&format!("segment of job {id}"), || {
            t.field(*id).contains("carbontrack:v1")
        });
        let seg = Segment::parse(&t.field(*id)).unwrap();
        assert!(close(seg.energy_kwh.unwrap(), kwh(54_000.0)), "{seg:?}");
        delivered_j.push(54_000.0);
    }
    assert_eq!(t.drained(), "");
    for l in t.epilog_log().lines().filter(|l| {
        l.starts_with("test-epilog:") && ids.iter().any(|id| l.contains(&format!("job {id} took")))
    }) {
        println!("{l}");
        let ms: u64 = l
            .split(" took ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(ms < 10_000, "{l}");
    }
    drop(holder);
    fs::remove_file(t.stage.join("footprint.csv")).unwrap();
    let ledger = fs::read_to_string(&t.ledger).unwrap();
    for id in &ids {
        let rows = ledger
            .lines()
            .filter(|l| l.starts_with(&format!("{id},")))
            .count();
        assert_eq!(rows, 1, "job {id} in the ledger:\n{ledger}");
    }

    // 7. Reports: totals equal the sum of the jobs, from accounting (as root
    // and as the user, who sees their own jobs) and from the ledger.
    let want = kwh(delivered_j.iter().sum());
    for (who, out) in [
        (
            "root/sacct",
            t.carbontrack(&["report", "--by", "user", "--format", "json"]),
        ),
        (
            "root/ledger",
            t.carbontrack(&[
                "report", "--source", "ledger", "--by", "account", "--format", "json",
            ]),
        ),
        (
            "user/sacct",
            t.c.as_user(
                t.bin.to_str().unwrap(),
                &["report", "--by", "day", "--format", "json"],
            )
            .stdin(Stdio::null())
            .output()
            .unwrap(),
        ),
    ] {
        assert!(out.status.success(), "{who}: {}", T::out(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["total"]["jobs"], delivered_j.len(), "{who}: {v}");
        assert!(
            close(v["total"]["energy_kwh"].as_f64().unwrap(), want),
            "{who}: {v}"
        );
        let groups: f64 = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["energy_kwh"].as_f64().unwrap())
            .sum();
        assert!(close(groups, want), "{who}: {v}");
        println!("report {who}: {}", v["total"]);
    }

    // 6. A user's --comment with a newline and a made-up record after it
    // (another job, another user, a carbontrack:v1 segment): with the
    // segment in Comment, as a site may configure, the report still sees
    // only the jobs sacct has, and says that Comment can be forged.
    let forged = "x\n99|root|root|debug|2026-01-01T00:00:00|3600|cpu=1,gres/gpu=8|2026-01-01T00:00:00|carbontrack:v1 energy_kwh=99 co2e_g=99 cpu_j=1 dram_j=1 gpu_j=1 pue=1 intensity=1 nodes=1";
    let forger = t.submit_commented(forged, "true");
    t.wait_state(forger, "COMPLETED");
    let stored = t.root(
        "sacct",
        &["-n", "-X", "-P", "-j", &forger.to_string(), "-o", "Comment"],
    );
    assert!(
        stored.contains("energy_kwh=99"),
        "sacct lost the comment: {stored}"
    );
    for (who, out) in [
        (
            "root",
            t.carbontrack(&[
                "report",
                "--accounting-field",
                "Comment",
                "--by",
                "user",
                "--format",
                "json",
            ]),
        ),
        (
            "user",
            t.c.as_user(
                t.bin.to_str().unwrap(),
                &[
                    "report",
                    "--accounting-field",
                    "Comment",
                    "--format",
                    "json",
                ],
            )
            .stdin(Stdio::null())
            .output()
            .unwrap(),
        ),
    ] {
        assert!(out.status.success(), "{who}: {}", T::out(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["total"]["jobs"], 0,
            "{who}: the forged record counted: {v}"
        );
        assert_eq!(v["total"]["energy_kwh"], 0.0, "{who}: {v}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("accounting_field=Comment"), "{who}: {err}");
        println!(
            "report over Comment ({who}), forged comment present: {}",
            v["total"]
        );
    }
    let out = t.carbontrack(&["report", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"]["jobs"], delivered_j.len(), "{v}");

    // 7. Job ids reused: job X's total is queued while slurmdbd is down;
    // slurmctld's state is then reset and a later job gets id X again.
    // The later job's figures land on it; the earlier run is not written
    // into the later job's field (sacctmgr would write the newest job X),
    // goes to the ledger, and accounting's earlier job X keeps its field.
    let pid = t.dbd_pid().expect("slurmdbd pid");
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    t.wait_for("slurmdbd to stop", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let a_end = t.stage_for(1000.0, 0.0, Duration::from_secs(2));
    let x = t.submit("true");
    t.wait_for("the queued total", || t.queued(x));
    t.wait_gone(x);
    let o = Command::new("slurmdbd")
        .env("SLURM_CONF", t.c.slurm_conf())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(o.success());
    t.wait_state(x, "COMPLETED");
    t.c.reset_controller(x).expect("slurmctld restarts afresh");
    // However quick the reset, the later job starts after the earlier run's
    // measurement ended, by more than the clock skew allowed for.
    while SystemTime::now() < a_end + carbontrack::report::delivery::CLOCK_SKEW {
        sleep(Duration::from_millis(200));
    }
    t.stage(2000.0, 0.0);
    let again = t.submit("true");
    assert_eq!(again, x, "the reset controller gives id {x} again");
    t.wait_gone(x);
    t.wait_for(&format!("segment of the later job {x}"), || {
        t.field(x).contains("carbontrack:v1")
    });
    let later = Segment::parse(&t.field(x)).unwrap();
    assert!(close(later.energy_kwh.unwrap(), kwh(2000.0)), "{later:?}");
    assert!(t.queued(x), "the earlier run waits for the next flush");
    let o = t.carbontrack(&["flush"]);
    let said = T::out(&o);
    assert!(
        said.contains(&format!("job {x} (measured from")) && said.contains("ledger only"),
        "{said}"
    );
    assert!(!t.queued(x));
    let runs = t.root(
        "sacct",
        &[
            "-n",
            "-X",
            "-D",
            "-P",
            "-j",
            &x.to_string(),
            "-o",
            "Start,AdminComment",
        ],
    );
    // Start|AdminComment of the earlier job X, then of the later one.
    let runs: Vec<&str> = runs.lines().collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(!runs[0].contains("carbontrack:v1"), "{runs:?}");
    let later_field = runs[1].split_once('|').map_or("", |(_, f)| f);
    assert!(
        close(
            Segment::parse(later_field).unwrap().energy_kwh.unwrap(),
            kwh(2000.0)
        ),
        "{runs:?}"
    );
    let ledger = fs::read_to_string(&t.ledger).unwrap();
    let rows: Vec<&str> = ledger
        .lines()
        .filter(|l| l.starts_with(&format!("{x},")))
        .collect();
    assert_eq!(rows.len(), 2, "{ledger}");
    println!("job id {x} reused: accounting {runs:?}; ledger {rows:?}");

    let table = t.carbontrack(&["report", "--by", "account"]);
    println!("{}", String::from_utf8_lossy(&table.stdout));
    for l in t
        .epilog_log()
        .lines()
        .filter(|l| l.starts_with("test-epilog:"))
    {
        println!("{l}");
    }
    assert_eq!(t.drained(), "");
}
