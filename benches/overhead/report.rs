//! Row 5: `carbontrack report` over a ledger of one million rows.
//!
//! The ledger is written with the ledger's own row type and column order
//! (`JobTotal`, as `ledger::append` writes it): 1 000 000 jobs of 500 users
//! in 40 accounts and 4 partitions, ending over 365 days, every 50th without
//! a measured energy. The real `carbontrack` binary (built by `cargo bench`)
//! then reports it from the ledger by user, by account and by day, as an
//! admin would run it; each run is a fresh process, timed from spawn to exit.
//! The file is in the page cache (it was just written), so disk reads are
//! not in the figure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use carbontrack::report::ledger;
use carbontrack::report::total::JobTotal;
use carbontrack_fixtures::tempdir::TempDir;

pub const ROWS: u32 = 1_000_000;

/// Reports timed, each as `carbontrack report --by <by>`.
pub const GROUPINGS: [&str; 3] = ["user", "account", "day"];

pub struct ReportResult {
    pub rows: u32,
    pub bytes: u64,
    /// Per grouping, the wall time of each run.
    pub runs: Vec<(&'static str, Vec<Duration>)>,
}

fn job(n: u32) -> JobTotal {
    // 1 Jan 2024 plus about 365 days over the million jobs.
    let end = 1_704_067_200 + u64::from(n) * 31;
    let t =
        |s: u64| carbontrack::footprint::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s));
    let duration = 600 + u64::from(n % 7200);
    let measured = !n.is_multiple_of(50);
    let gpu_j = f64::from(n % 997) * 1000.0 + 0.25;
    let cpu_j = f64::from(n % 331) * 500.0 + 0.5;
    let energy = cpu_j + gpu_j;
    JobTotal {
        job_id: n + 1,
        user: format!("user{:03}", n % 500),
        account: format!("acct{:02}", n % 40),
        partition: ["gpu", "cpu", "debug", "long"][(n % 4) as usize].to_string(),
        nodes: 1 + n % 8,
        start: t(end - duration),
        end: t(end),
        duration_s: duration as f64,
        gpu_hours: (n % 9) as f64 * duration as f64 / 3600.0,
        cpu_j: Some(cpu_j),
        dram_j: Some(cpu_j / 10.0),
        gpu_j: measured.then_some(gpu_j),
        energy_j: measured.then_some(energy),
        energy_kwh: measured.then_some(energy * 1.2 / 3.6e6),
        co2e_g: measured.then_some(energy * 1.2 / 3.6e6 * 400.0),
        pue: 1.2,
        intensity_g_per_kwh: Some(400.0),
        status: "ok".into(),
        cluster: "bench".into(),
        node_list: format!("node{:03} node{:03}", n % 100, (n + 1) % 100),
    }
}

fn write_ledger(path: &Path) -> Result<u64> {
    let f = std::fs::File::create(path)?;
    let mut w = csv::WriterBuilder::new()
        .has_headers(true)
        .from_writer(std::io::BufWriter::new(f));
    for n in 0..ROWS {
        w.serialize(job(n))?;
    }
    w.flush()?;
    drop(w);
    let first = std::fs::read_to_string(path)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    ensure!(
        first == ledger::header(),
        "the generated ledger's header `{first}` is not the ledger's"
    );
    Ok(std::fs::metadata(path)?.len())
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_carbontrack"))
}

/// One `carbontrack report` process; its wall time.
fn run_report(ledger: &Path, by: &str, check_jobs: u32) -> Result<Duration> {
    let t0 = Instant::now();
    let out = Command::new(binary())
        .args([
            "report", "--source", "ledger", "--format", "csv", "--by", by,
        ])
        .arg("--ledger")
        .arg(ledger)
        // No plugstack.conf: defaults plus the flags above.
        .arg("--plugstack")
        .arg(ledger.with_extension("no-plugstack"))
        .stdin(Stdio::null())
        .output()
        .context("cannot run carbontrack report")?;
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "carbontrack report --by {by} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The total line counts every job: nothing was skipped.
    let total = stdout
        .lines()
        .find(|l| l.starts_with("total,"))
        .with_context(|| format!("no total line in the report: {stdout}"))?;
    ensure!(
        total.split(',').nth(1) == Some(&check_jobs.to_string()),
        "the report's total is `{total}`, not {check_jobs} jobs"
    );
    Ok(took)
}

pub fn measure(repeats: usize) -> Result<ReportResult> {
    let dir = TempDir::new("bench-report")?;
    let path = dir.path().join("ledger.csv");
    let bytes = write_ledger(&path)?;
    let mut runs = Vec::new();
    for by in GROUPINGS {
        let mut times = Vec::new();
        for _ in 0..repeats {
            times.push(run_report(&path, by, ROWS)?);
        }
        runs.push((by, times));
    }
    let _ = std::io::stdout().flush();
    Ok(ReportResult {
        rows: ROWS,
        bytes,
        runs,
    })
}
