//! Row 4: wall time of `carbontrack epilog`'s own work for a job of 8 nodes
//! × 8 GPUs.
//!
//! Each run gets a fresh spool holding the job's 8 node footprints as the
//! extern step writes them (per node: 2 packages, 2 DRAM zones, 8 GPUs and
//! the total row, made by the real `footprint::node_rows` and `write_csv`),
//! all in one spool as on a shared one. Then `report::epilog::epilog` runs,
//! the function `carbontrack epilog` calls: it reads and checks the
//! footprints, totals them, writes the outbox record, delivers it (sacct to
//! read the job's field, sacctmgr to write it, the ledger append with its
//! fsync), and removes the job's spool state.
//!
//! sacct and sacctmgr are stand-ins, `/bin/sh` scripts that answer at once
//! as Slurm would for an ended job with an empty field (sacct is asked
//! twice: the field, then the write read back). Their process
//! start-up is in the figure; slurmdbd's time is not (the target excludes
//! it). So is the start-up of the `carbontrack` process itself, which the
//! `process` line measures separately.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use carbontrack::carbon::intensity::Resolved;
use carbontrack::config::Config;
use carbontrack::footprint::{self, NodeFootprint};
use carbontrack::measure::{Component, DeviceEnergy, Status};
use carbontrack::report::delivery::{EpilogJob, RunReport, Tools};
use carbontrack::report::epilog;
use carbontrack::report::total::JobMeta;
use carbontrack::spool::Spool;
use carbontrack::units::{GramsPerKwh, Joules};
use carbontrack_fixtures::tempdir::TempDir;

pub const NODES: usize = 8;
pub const GPUS: usize = 8;
const JOB: u32 = 424_242;

/// `End`, `Start` and the field, in the delimiter asked for (`-p
/// --delimiter=D`: each field followed by D), the field as the stand-in
/// sacctmgr last stored it (the Epilog reads its write back).
const SACCT: &str = r#"#!/bin/sh
d='|'
for a; do case $a in --delimiter=*) d=${a#--delimiter=};; esac; done
f=$(cat "$(dirname "$0")/field" 2>/dev/null)
printf '%s%s%s%s%s%s\n' 2024-05-01T01:00:00 "$d" 2024-05-01T00:00:00 "$d" "$f" "$d"
"#;
const SACCTMGR: &str = r#"#!/bin/sh
for a; do case $a in AdminComment=*) printf '%s' "${a#AdminComment=}" >"$(dirname "$0")/field";; esac; done
echo ' Modified job(s)...'
"#;

pub struct EpilogResult {
    /// `epilog()` in this process, per run.
    pub runs: Vec<Duration>,
    /// The two stand-ins alone, run as `epilog()` runs them, per run.
    pub stand_ins: Vec<Duration>,
    /// The whole `carbontrack epilog` process, per run.
    pub process: Vec<Duration>,
}

pub fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

fn node_csv(node: usize) -> Result<Vec<u8>> {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_714_521_600);
    let mut devices = Vec::new();
    for p in 0..2 {
        for (c, name, j) in [
            (Component::Cpu, format!("package-{p}"), 3.6e6),
            (Component::Dram, format!("package-{p}/dram"), 4.0e5),
        ] {
            devices.push(DeviceEnergy {
                component: c,
                device: name,
                share: 1.0,
                energy: Some(Joules(j + node as f64)),
                status: Status::Ok,
            });
        }
    }
    for g in 0..GPUS {
        devices.push(DeviceEnergy {
            component: Component::Gpu,
            device: format!("GPU-{node:02x}{g:06x}-be0c-4000-8000-0000000000b7"),
            share: 1.0,
            energy: Some(Joules(1.08e7 + g as f64)),
            status: Status::Ok,
        });
    }
    let fp = NodeFootprint {
        job_id: JOB.to_string(),
        node: format!("gpu{node:03}"),
        start: t0,
        end: t0 + Duration::from_secs(36_000),
        devices,
    };
    let intensity = Resolved {
        g_per_kwh: GramsPerKwh(400.0),
        source: "fixed by site".into(),
        note: None,
    };
    let rows = footprint::node_rows(&fp, 1.2, &intensity);
    let mut csv = Vec::new();
    footprint::write_csv(&mut csv, &rows)?;
    Ok(csv)
}

struct Setup {
    dir: TempDir,
    config: Config,
    tools: Tools,
    csvs: Vec<Vec<u8>>,
}

impl Setup {
    fn new() -> Result<Setup> {
        let dir = TempDir::new("bench-epilog")?;
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        for (name, text) in [("sacct", SACCT), ("sacctmgr", SACCTMGR)] {
            let p = bin.join(name);
            std::fs::write(&p, text)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        let config = Config {
            spool: dir.path().join("spool"),
            ledger: Some(dir.path().join("ledger.csv")),
            ..Config::default()
        };
        let tools = Tools {
            sacct: bin.join("sacct"),
            sacctmgr: bin.join("sacctmgr"),
            end_wait: Duration::ZERO,
            ..Tools::default()
        };
        let csvs = (0..NODES).map(node_csv).collect::<Result<_>>()?;
        Ok(Setup {
            dir,
            config,
            tools,
            csvs,
        })
    }

    /// A fresh spool with the job's footprints, and no ledger yet.
    fn stage(&self) -> Result<()> {
        // Each run writes into an empty field, as for a job just ended.
        let _ = std::fs::remove_file(self.dir.path().join("bin/field"));
        let _ = std::fs::remove_dir_all(&self.config.spool);
        let _ = std::fs::remove_file(self.dir.path().join("ledger.csv"));
        let spool = Spool::open(&self.config.spool)?;
        for (n, csv) in self.csvs.iter().enumerate() {
            spool.write_node_footprint(JOB, &format!("gpu{n:03}"), csv)?;
        }
        Ok(())
    }

    fn job() -> EpilogJob {
        EpilogJob {
            job_id: JOB,
            meta: JobMeta {
                user: "alice".into(),
                account: "ml".into(),
                partition: "gpu".into(),
                cluster: "bench".into(),
            },
            node: "gpu000".into(),
            ..EpilogJob::default()
        }
    }

    /// Fails unless the run delivered the job: all 8 nodes in the ledger.
    fn check(&self, report: &RunReport, log: &[String]) -> Result<()> {
        ensure!(
            report.delivered == [JOB] && report.queued.is_empty(),
            "the epilog did not deliver the job: {report:?}; log: {log:?}"
        );
        let ledger = std::fs::read_to_string(self.dir.path().join("ledger.csv"))?;
        let row = ledger.lines().nth(1).context("no ledger row")?;
        ensure!(
            row.starts_with(&format!("{JOB},alice,ml,gpu,{NODES},")),
            "unexpected ledger row `{row}`"
        );
        let job_dir = Spool::open(&self.config.spool)?.job_dir(JOB);
        ensure!(
            !job_dir.exists(),
            "the job's spool state {} is still there",
            job_dir.display()
        );
        Ok(())
    }

    fn plugstack(&self) -> Result<PathBuf> {
        let p = self.dir.path().join("plugstack.conf");
        std::fs::write(
            &p,
            format!(
                "optional /usr/lib/slurm/libcarbontrack.so spool={} ledger={}\n",
                self.config.spool.display(),
                self.dir.path().join("ledger.csv").display()
            ),
        )?;
        Ok(p)
    }
}

fn spawn(p: &Path) -> Result<()> {
    let out = Command::new(p).output()?;
    ensure!(out.status.success(), "{} failed", p.display());
    Ok(())
}

pub fn measure(repeats: usize) -> Result<EpilogResult> {
    let s = Setup::new()?;
    let mut runs = Vec::new();
    let mut stand_ins = Vec::new();
    let mut process = Vec::new();
    let plugstack = s.plugstack()?;
    for _ in 0..repeats {
        s.stage()?;
        let mut log = Vec::new();
        let t0 = Instant::now();
        let report = epilog::epilog(
            &s.config,
            &s.tools,
            &Setup::job(),
            Duration::ZERO,
            &mut |l| log.push(l),
        );
        runs.push(t0.elapsed());
        s.check(&report, &log)?;

        let t0 = Instant::now();
        spawn(&s.tools.sacct)?;
        spawn(&s.tools.sacctmgr)?;
        stand_ins.push(t0.elapsed());

        s.stage()?;
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_carbontrack"))
            .arg("epilog")
            .arg("--plugstack")
            .arg(&plugstack)
            .arg("--sacct")
            .arg(&s.tools.sacct)
            .arg("--sacctmgr")
            .arg(&s.tools.sacctmgr)
            .args(["--end-wait", "0s", "--retry-budget", "0s"])
            .env("SLURM_JOB_ID", JOB.to_string())
            .env("SLURM_JOB_USER", "alice")
            .env("SLURM_JOB_ACCOUNT", "ml")
            .env("SLURM_JOB_PARTITION", "gpu")
            .env("SLURM_CLUSTER_NAME", "bench")
            .output()
            .context("cannot run carbontrack epilog")?;
        process.push(t0.elapsed());
        let ledger = std::fs::read_to_string(s.dir.path().join("ledger.csv")).unwrap_or_default();
        ensure!(
            out.status.success() && ledger.lines().count() == 2,
            "carbontrack epilog did not deliver the job: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(EpilogResult {
        runs,
        stand_ins,
        process,
    })
}
