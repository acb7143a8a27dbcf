//! What an admin wires up beside carbontrack, for real, in a throwaway
//! cluster with accounting, the real plugin and the real Epilog wrapper:
//!
//! - Debian's `prometheus-node-exporter`, run as its own user on loopback
//!   with the textfile collector on carbontrack's `prometheus=` directory:
//!   a running job's power and energy are served while it runs (the power
//!   matching the fake hardware's injected power), and are gone once its
//!   Epilog ran; a stale file of a job long gone is swept, a site's own
//!   `.prom` file is left alone.
//! - Other writers of the job's comment fields, from a jobstats-like
//!   `EpilogSlurmctld` that writes after carbontrack's Epilog delivered:
//!   jobstats replacing AdminComment (beside carbontrack in SystemComment,
//!   as the README advises; and in AdminComment itself, which carbontrack
//!   then leaves to jobstats), a script replacing the field with its own
//!   text (flush merges the segment back), and one appending to it.
//!
//! Needs root, the Slurm packages and prometheus-node-exporter; skipped with
//! a message otherwise (a failure under CI=true). One test, in order.
//! Its cluster: CT_TEST_ADMIN_DIR, CT_TEST_ADMIN_PORT_BASE (default 19120;
//! node_exporter listens on the base + 10).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carbontrack::footprint::{Row, read_csv};
use carbontrack::prometheus::{JobLabels, Series, file_name, format};
use carbontrack::report::accounting::TAG;
use carbontrack::units::{Joules, Watts};
use common::hardware::Hardware;
use common::{Cluster, JobId, USER, admin_port_base, in_ci, missing_prerequisite, out, wait_for};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const TOLERANCE: f64 = 0.03;
const WAIT: Duration = Duration::from_secs(90);

/// A jobstats record as its EpilogSlurmctld writes it (`JS1:` and the
/// base64 of a gzipped JSON document).
const JS1: &str =
    "JS1:H4sIAAAAAAACA6tWystPSS1WslKoVkouMYTQBaUgAcPaWh0FpZL8ksSc+JLM3FSQkFEtAD2iTJUxAAAA";
/// What another site script writes.
const SITE_TEXT: &str = "site-audit:checked";

/// node_exporter as Debian's package runs it (its own user), killed when
/// dropped.
struct Exporter {
    child: Child,
    port: u16,
}

impl Exporter {
    fn start(dir: &Path, port: u16) -> Exporter {
        let child = Command::new("setpriv")
            .args([
                "--reuid=prometheus",
                "--regid=prometheus",
                "--clear-groups",
                NODE_EXPORTER,
            ])
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node_exporter starts");
        let e = Exporter { child, port };
        wait_for("node_exporter to answer", Duration::from_secs(20), || {
            e.try_scrape()
        });
        e
    }

    fn try_scrape(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let (head, body) = body.split_once("\r\n\r\n")?;
        let status = head.lines().next()?;
        status.contains(" 200 ").then(|| body.to_string())
    }

    fn scrape(&self) -> String {
        self.try_scrape().expect("node_exporter answers /metrics")
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scraped sample of ours: its labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, k: &str) -> &str {
        self.labels
            .iter()
            .find(|(key, _)| key == k)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The `carbontrack_job_*` samples of a scrape for a job (label values
/// here hold no quote or comma).
fn samples(text: &str, job: u32) -> Vec<Sample> {
    text.lines()
        .filter(|l| l.starts_with("carbontrack_job_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            let labels: Vec<(String, String)> = labels
                .split("\",")
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value: value.trim().parse().ok()?,
            })
        })
        .filter(|s| s.label("job_id") == job.to_string())
        .collect()
}

fn find<'a>(s: &'a [Sample], name: &str, component: &str, device: &str) -> Option<&'a Sample> {
    s.iter().find(|x| {
        x.name == name && x.label("component") == component && x.label("device") == device
    })
}

struct T {
    c: Cluster,
    hw: Hardware,
    bin: PathBuf,
    prom: PathBuf,
    ledger: PathBuf,
}

impl T {
    /// The plugin's arguments: the hardware, the ledger, the Prometheus
    /// directory, and `extra`.
    fn plugin_args(&self, extra: &[&str]) {
        let ledger = format!("ledger={}", self.ledger.display());
        let prom = format!("prometheus={}", self.prom.display());
        let mut a = vec![ledger.as_str(), "pue=1.5", "intensity=400", prom.as_str()];
        a.extend_from_slice(extra);
        let args = self.hw.plugin_args(&a);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c.set_plugin_args(&refs);
    }

    fn sacct_field(&self, id: u32, field: &str) -> String {
        let o = self.c.as_root(
            "sacct",
            &["-n", "-X", "-P", "-j", &id.to_string(), "-o", field],
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn flush(&self) -> String {
        let o = self.c.as_root(&self.bin.to_string_lossy(), &["flush"]);
        out(&o)
    }

    fn other_writer_log(&self) -> String {
        fs::read_to_string(self.c.dir.join("log/other-writer.log")).unwrap_or_default()
    }

    /// Waits until the other writer has written job `id`'s field.
    fn wait_other_writer(&self, id: u32) {
        let needle = format!("other-writer: job {id} ");
        wait_for(&format!("the other writer of job {id}"), WAIT, || {
            self.other_writer_log().contains(&needle).then_some(())
        });
        let line = self
            .other_writer_log()
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_default()
            .to_string();
        assert!(line.ends_with(" done"), "{}", self.other_writer_log());
    }

    fn submit(&self, name: &str, args: &[&str], secs: u32) -> JobId {
        let mut a = vec!["--carbon-track=yes", "-J", name];
        a.extend_from_slice(args);
        self.c
            .submit_in(
                &self.c.work_dir(),
                &a,
                &format!("#!/bin/bash\nsleep {secs}\n"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Segments of carbontrack in a field's text.
fn segments(text: &str) -> usize {
    text.split_whitespace().filter(|t| *t == TAG).count()
}

/// An EpilogSlurmctld standing for jobstats and other site scripts: for a
/// job named `other-<mode>` it waits (in the background, bounded) until
/// carbontrack's Epilog has delivered, then writes AdminComment as jobstats
/// does (`jobstats`: replaces it with JS1 data), as a site script that
/// replaces it (`replace`), or one that appends to it (`append`).
fn install_other_writer(c: &Cluster) {
    let script = c.dir.join("etc/epilog-slurmctld.sh");
    let writer = c.dir.join("etc/other-writer.sh");
    let log = c.dir.join("log/other-writer.log");
    let conf = c.slurm_conf();
    // slurmctld ends what its EpilogSlurmctld leaves running: the writer
    // gets a session of its own.
    fs::write(
        &script,
        format!(
            r#"#!/bin/bash
echo "other-writer: EpilogSlurmctld of job $SLURM_JOB_ID ($SLURM_JOB_NAME)" >>{log}
case $SLURM_JOB_NAME in other-*) ;; *) exit 0 ;; esac
setsid -f {writer} "$SLURM_JOB_ID" "${{SLURM_JOB_NAME#other-}}" </dev/null >>{log} 2>&1
exit 0
"#,
            log = log.display(),
            writer = writer.display(),
        ),
    )
    .unwrap();
    fs::write(
        &writer,
        format!(
            r#"#!/bin/bash
export SLURM_CONF={conf}
job=$1 mode=$2
field() {{ sacct -n -X -P -j "$job" -o "$1"; }}
for _ in $(seq 1 120); do
	field AdminComment,SystemComment | grep -q 'carbontrack:v1' && break
	sleep 0.5
done
case $mode in
jobstats) v='{JS1}' ;;
replace) v='{SITE_TEXT}' ;;
append) v="$(field AdminComment) {SITE_TEXT}" ;;
esac
if sacctmgr -i modify job where jobid="$job" set AdminComment="$v" >/dev/null; then
	echo "other-writer: job $job $mode done"
else
	echo "other-writer: job $job $mode failed"
fi
"#,
            conf = conf.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&writer, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("EpilogSlurmctld={}\n", script.display()));
    fs::write(&conf, text).unwrap();
    // Slurm 22.05's slurmctld runs an EpilogSlurmctld that `scontrol
    // reconfigure` added only once restarted (seen here).
    c.reset_controller(1)
        .unwrap_or_else(|e| panic!("restarting slurmctld: {e}"));
}

#[test]
fn node_exporter_and_other_writers_of_the_accounting_field() {
    let exporter_missing = (!Path::new(NODE_EXPORTER).is_file())
        .then(|| format!("{NODE_EXPORTER} is missing (apt-get install prometheus-node-exporter)"));
    if let Some(why) = missing_prerequisite(true).or(exporter_missing) {
        assert!(!in_ci(), "admin cluster tests cannot run under CI: {why}");
        println!("SKIPPED admin cluster tests: {why}");
        return;
    }
    let c = Cluster::start_admin().unwrap_or_else(|e| panic!("cannot start the cluster: {e}"));
    let hw = Hardware::with_wrap(60_000_000_000);
    let bin = common::with_real_epilog(&c, &hw, env!("CARGO_BIN_EXE_carbontrack"), |l| {
        format!("{l}\n")
    });
    install_other_writer(&c);
    let prom = c.dir.join("prometheus");
    let _ = fs::remove_dir_all(&prom);
    fs::create_dir_all(&prom).unwrap();
    fs::set_permissions(&prom, fs::Permissions::from_mode(0o755)).unwrap();
    let ledger = c.dir.join("ct-ledger/ledger.csv");
    let t = T {
        c,
        hw,
        bin,
        prom,
        ledger,
    };

    let started = Instant::now();
    println!("  node_exporter serves a running job's power; jobstats beside it");
    node_exporter(&t);
    println!("    ({:.0} s)", started.elapsed().as_secs_f64());
    let started = Instant::now();
    println!("  writers replacing, appending to and taking over AdminComment");
    other_writers(&t);
    println!("    ({:.0} s)", started.elapsed().as_secs_f64());
}

/// A two-GPU job's series while it runs (power against the injected truth),
/// none after; the Epilog sweeps a stale file and leaves a site's file.
/// Accounting goes to SystemComment, jobstats (its EpilogSlurmctld) writes
/// AdminComment: both are in sacct, flush or not.
fn node_exporter(t: &T) {
    t.plugin_args(&["accounting_field=SystemComment"]);
    let port = admin_port_base() + 10;
    let exporter = Exporter::start(&t.prom, port);

    // A file of a job long gone (its step died), and the site's own.
    let stale = t.prom.join(file_name(999_999));
    let old = format(
        &JobLabels {
            job_id: "999999".into(),
            ..JobLabels::default()
        },
        &[Series {
            component: "gpu".into(),
            device: "GPU-gone".into(),
            power: Some(Watts(1.0)),
            energy: Some(Joules(1.0)),
        }],
    );
    fs::write(&stale, old).unwrap();
    let o = Command::new("touch")
        .args(["-d", "1 hour ago"])
        .arg(&stale)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let site = t.prom.join("site.prom");
    fs::write(&site, "# TYPE site_up gauge\nsite_up 1\n").unwrap();

    let id = t.submit("other-jobstats", &["--gres=gpu:2"], 16).0;
    let file = t.prom.join(file_name(id));
    let gpu = |minor: usize| t.hw.gpus[minor].uuid.clone();
    // Two scrapes a few refreshes (2 s) apart while it runs.
    let running = |at_least: f64| {
        wait_for(&format!("job {id}'s series"), WAIT, || {
            let s = samples(&exporter.scrape(), id);
            let e = find(&s, "carbontrack_job_energy_joules_total", "gpu", &gpu(1))?.value;
            (e >= at_least && find(&s, "carbontrack_job_power_watts", "gpu", &gpu(1)).is_some())
                .then_some(s)
        })
    };
    let first = running(180.0 * 4.5);
    let second = running(180.0 * 9.5);
    assert_eq!(t.c.job_state(id), "RUNNING", "scraped after the job ended");
    let m = fs::metadata(&file).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o777),
        (0, 0o644),
        "{}",
        file.display()
    );

    let ended = t.c.wait_ended(JobId(id));
    assert_eq!(ended.state, "COMPLETED", "{}", t.c.output_of(id));
    let csv = t.c.work_dir().join(format!("carbontrack-{id}.csv"));
    let rows: Vec<Row> = read_csv(fs::File::open(&csv).unwrap()).unwrap();
    let share = rows
        .iter()
        .find(|r| r.component == "cpu")
        .and_then(|r| r.share)
        .expect("the package's share");
    let node = rows[0].node.clone();

    for s in [&first, &second] {
        for x in s {
            assert_eq!(
                (x.label("user"), x.label("account"), x.label("node")),
                (USER, "ctacct", node.as_str()),
                "{x:?}"
            );
            assert!(!x.label("partition").is_empty(), "{x:?}");
        }
        let power = |component: &str, device: &str| {
            find(s, "carbontrack_job_power_watts", component, device)
                .unwrap_or_else(|| panic!("no {component} {device} power in {s:#?}"))
                .value
        };
        let within = |what: &str, got: f64, lo: f64, hi: f64| {
            println!("    {what}: {got:.2} W (truth {lo:.2}..{hi:.2} W)");
            assert!(
                got >= lo * (1.0 - TOLERANCE) && got <= hi * (1.0 + TOLERANCE),
                "{what}: {got} W, truth {lo}..{hi} W"
            );
        };
        // Constant powers: exact; stepping ones: within their steps.
        within("gpu 1 power", power("gpu", &gpu(1)), 180.0, 180.0);
        within("gpu 0 power", power("gpu", &gpu(0)), 100.0, 250.0);
        within(
            "dram power",
            power("dram", "package-0"),
            12.0 * share,
            12.0 * share,
        );
        within(
            "cpu power",
            power("cpu", "package-0"),
            60.0 * share,
            90.0 * share,
        );
        assert!(
            find(s, "carbontrack_job_power_watts", "gpu", &gpu(2)).is_none(),
            "another job's GPU: {s:#?}"
        );
    }
    // The counter grows, and stays below the job's final figure.
    let energy = |s: &[Sample], dev: &str| {
        find(s, "carbontrack_job_energy_joules_total", "gpu", dev)
            .unwrap()
            .value
    };
    let final_gpu1 = rows
        .iter()
        .find(|r| r.device == gpu(1))
        .and_then(|r| r.energy_j)
        .unwrap();
    assert!(
        energy(&first, &gpu(1)) < energy(&second, &gpu(1))
            && energy(&second, &gpu(1)) <= final_gpu1 * (1.0 + TOLERANCE),
        "{} then {} J, final {final_gpu1} J",
        energy(&first, &gpu(1)),
        energy(&second, &gpu(1))
    );

    // Delivered (its Epilog ran): the series are gone, and so is the stale
    // file; the site's stays.
    let system = wait_for("the segment in SystemComment", WAIT, || {
        let f = t.sacct_field(id, "SystemComment");
        f.contains(TAG).then_some(f)
    });
    let scraped = exporter.scrape();
    assert!(samples(&scraped, id).is_empty(), "{scraped}");
    assert!(!file.exists() && !stale.exists() && site.exists());
    assert!(scraped.contains("site_up 1"), "{scraped}");
    assert!(!scraped.contains("job_id=\"999999\""), "{scraped}");

    // jobstats' write leaves carbontrack's field alone.
    t.wait_other_writer(id);
    let flushed = t.flush();
    let admin = t.sacct_field(id, "AdminComment");
    assert!(admin.eq_ignore_ascii_case(JS1), "AdminComment `{admin}`");
    let system_after = t.sacct_field(id, "SystemComment");
    assert_eq!(system_after, system, "{flushed}");
    assert_eq!(segments(&system_after), 1, "{system_after}");
}

/// Writers of AdminComment after carbontrack's delivery: one replacing it
/// (flush merges the segment back, once), one appending (nothing to do),
/// jobstats (its data left alone, said once).
fn other_writers(t: &T) {
    t.plugin_args(&[]);
    let replace = t.submit("other-replace", &[], 3).0;
    let append = t.submit("other-append", &[], 3).0;
    let jobstats = t.submit("other-jobstats", &[], 3).0;
    for id in [replace, append, jobstats] {
        t.c.wait_ended(JobId(id));
        t.wait_other_writer(id);
    }
    let before = |id| t.sacct_field(id, "AdminComment");
    assert_eq!(before(replace), SITE_TEXT);
    let appended = before(append);
    assert!(
        appended.ends_with(SITE_TEXT) && segments(&appended) == 1,
        "{appended}"
    );
    assert!(before(jobstats).eq_ignore_ascii_case(JS1));

    let started = Instant::now();
    let said = t.flush();
    println!(
        "    flush re-checked the jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let restored = t.sacct_field(replace, "AdminComment");
    assert!(
        restored.starts_with(SITE_TEXT) && segments(&restored) == 1,
        "`{restored}`\n{said}"
    );
    assert!(
        said.contains(&format!(
            "job {replace}: another writer replaced AdminComment"
        )),
        "{said}"
    );
    assert_eq!(t.sacct_field(append, "AdminComment"), appended, "{said}");
    assert!(
        t.sacct_field(jobstats, "AdminComment")
            .eq_ignore_ascii_case(JS1),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "job {jobstats}: AdminComment holds Princeton jobstats' data"
        )),
        "{said}"
    );
    // A second flush writes nothing new: one segment, the site's text kept.
    let again = t.flush();
    assert_eq!(t.sacct_field(replace, "AdminComment"), restored, "{again}");
    assert!(!again.contains("another writer replaced"), "{again}");
    assert!(!again.contains("jobstats' data"), "said once: {again}");
    // Every job is in the ledger, whatever accounting holds.
    let ledger = fs::read_to_string(&t.ledger).unwrap();
    for id in [replace, append, jobstats] {
        assert!(
            ledger.lines().any(|l| l.starts_with(&format!("{id},"))),
            "{ledger}"
        );
    }
}
