//! The cluster ledger: one CSV row per job, appended by every node's epilog,
//! so that reports work without accounting and survive its purges.
//!
//! Columns are [`JobTotal`]'s fields in order (`job_id,user,account,
//! partition,nodes,start,end,duration_s,gpu_hours,cpu_j,dram_j,gpu_j,energy_j,
//! energy_kwh,co2e_g,pue,intensity_g_per_kwh,status,cluster,node_list`);
//! unmeasured figures are empty. Appends happen under an exclusive lock
//! (several nodes' epilogs may finish at once, on shared storage too), and a
//! job already among the last rows is not appended again, so a retry after a
//! crash between the append and the outbox update counts nothing twice. A job
//! is its cluster, id and start: Slurm reuses ids, so a later job with an
//! earlier one's id is another row, and reports count both.
//!
//! The ledger is readable by users (0644), so it is never what is locked: a
//! user's `flock` on it would stall every Epilog. The lock is a root-only
//! file, `<ledger dir>/.carbontrack-lock/<ledger name>.lock` (directory 0700,
//! file 0600), which no user can open, taken with a bounded wait
//! ([`LOCK_WAIT`]); a lock not had in that time leaves the job queued in the
//! outbox for the next Epilog or `carbontrack flush`. The ledger's directory
//! and every one above it must be root's and not writable by others
//! ([`crate::safe_fs::check_dir`]), else nothing is appended and the total
//! stays queued; the ledger itself is opened without following a link or
//! waiting on a FIFO and must be root's own regular file.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::safe_fs::{self, SafeFsError};

use super::aggregate::{Aggregator, Job, parse_time};
use super::total::JobTotal;

/// How much of the ledger's end is searched for a job already appended. The
/// outbox records delivery right after the append, so a duplicate can only
/// come from a crash in between: the job's row is then among the last ones.
pub const TAIL_BYTES: u64 = 1 << 20;

/// How long an append waits for another Epilog's lock on the ledger.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The root-only directory beside the ledger that holds its lock.
pub const LOCK_DIR: &str = ".carbontrack-lock";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("ledger {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error(
        "ledger {path}: nothing appended, the total stays queued: its directory {source} (and every directory above it root's, not writable by others)"
    )]
    UnsafeDir { path: PathBuf, source: SafeFsError },
    #[error("ledger {path}: nothing appended, the total stays queued: {source}")]
    Unsafe { path: PathBuf, source: SafeFsError },
    #[error(
        "ledger {path}: lock {lock} held by another carbontrack process for {waited} (an Epilog or flush stuck on the ledger's filesystem?); nothing appended, the total stays queued for the next Epilog or `carbontrack flush`"
    )]
    Busy {
        path: PathBuf,
        lock: PathBuf,
        waited: humantime::Duration,
    },
}

/// Where the lock of the ledger at `path` lives.
pub fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ledger".into());
    ledger_dir(path).join(LOCK_DIR).join(format!("{name}.lock"))
}

fn ledger_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A [`JobTotal`] as the ledger writes it: the same columns, every figure
/// in fixed precision ([`numbers`]: joules to the mJ, kWh to 1e-10, gCO2e
/// to the µg, GPU-hours to 1e-6, seconds to the ms; PUE and intensity
/// trimmed), never `-0` or a 17-digit float. Read back as a `JobTotal`.
#[derive(serde::Serialize)]
struct LedgerRow<'a> {
    job_id: u32,
    user: &'a str,
    account: &'a str,
    partition: &'a str,
    nodes: u32,
    start: &'a str,
    end: &'a str,
    duration_s: String,
    gpu_hours: String,
    cpu_j: String,
    dram_j: String,
    gpu_j: String,
    energy_j: String,
    energy_kwh: String,
    co2e_g: String,
    pue: String,
    intensity_g_per_kwh: String,
    status: &'a str,
    cluster: &'a str,
    node_list: &'a str,
}

impl<'a> LedgerRow<'a> {
    fn of(t: &'a JobTotal) -> LedgerRow<'a> {
        use super::numbers as n;
        let opt = |x: Option<f64>, d| x.map_or_else(String::new, |x| n::fixed(x, d));
        LedgerRow {
            job_id: t.job_id,
            user: &t.user,
            account: &t.account,
            partition: &t.partition,
            nodes: t.nodes,
            start: &t.start,
            end: &t.end,
            duration_s: n::fixed(t.duration_s, n::SECONDS_DECIMALS),
            gpu_hours: n::fixed(t.gpu_hours, n::GPU_HOURS_DECIMALS),
            cpu_j: opt(t.cpu_j, n::JOULES_DECIMALS),
            dram_j: opt(t.dram_j, n::JOULES_DECIMALS),
            gpu_j: opt(t.gpu_j, n::JOULES_DECIMALS),
            energy_j: opt(t.energy_j, n::JOULES_DECIMALS),
            energy_kwh: opt(t.energy_kwh, n::KWH_DECIMALS),
            co2e_g: opt(t.co2e_g, n::CO2E_DECIMALS),
            pue: n::trimmed(t.pue, n::FACTOR_DECIMALS),
            intensity_g_per_kwh: t
                .intensity_g_per_kwh
                .map_or_else(String::new, |x| n::trimmed(x, n::FACTOR_DECIMALS)),
            status: &t.status,
            cluster: &t.cluster,
            node_list: &t.node_list,
        }
    }
}

/// Whether the row was appended or was there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Yes,
    AlreadyThere,
}

/// The header line, as written.
pub fn header() -> String {
    let mut w = csv::WriterBuilder::new()
        .has_headers(true)
        .from_writer(Vec::new());
    // Serializing any row writes the header first; the header is all we keep.
    let _ = w.serialize(LedgerRow::of(&sample()));
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn sample() -> JobTotal {
    JobTotal {
        job_id: 0,
        user: String::new(),
        account: String::new(),
        partition: String::new(),
        nodes: 0,
        start: String::new(),
        end: String::new(),
        duration_s: 0.0,
        gpu_hours: 0.0,
        cpu_j: None,
        dram_j: None,
        gpu_j: None,
        energy_j: None,
        energy_kwh: None,
        co2e_g: None,
        pue: 0.0,
        intensity_g_per_kwh: None,
        status: String::new(),
        cluster: String::new(),
        node_list: String::new(),
    }
}

/// Appends `t` to the ledger at `path` (created 0644 with its header when
/// missing, its directory 0755), unless the job is among the last rows.
/// Waits up to [`LOCK_WAIT`] for another appender.
pub fn append(path: &Path, t: &JobTotal) -> Result<Appended, LedgerError> {
    append_waiting(path, t, LOCK_WAIT)
}

/// [`append`], waiting up to `wait` for the lock.
pub fn append_waiting(path: &Path, t: &JobTotal, wait: Duration) -> Result<Appended, LedgerError> {
    let io = |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let unsafe_dir = |source| match source {
        SafeFsError::UnsafeDir { .. } => LedgerError::UnsafeDir {
            path: path.to_path_buf(),
            source,
        },
        source => LedgerError::Unsafe {
            path: path.to_path_buf(),
            source,
        },
    };
    let refused = |source| LedgerError::Unsafe {
        path: path.to_path_buf(),
        source,
    };
    let dir = ledger_dir(path);
    safe_fs::ensure_dir(dir, 0o755).map_err(unsafe_dir)?;
    let lock_file = lock_path(path);
    safe_fs::ensure_dir(&dir.join(LOCK_DIR), 0o700).map_err(refused)?;
    let Some(_lock) = safe_fs::lock(&lock_file, wait).map_err(refused)? else {
        return Err(LedgerError::Busy {
            path: path.to_path_buf(),
            lock: lock_file,
            waited: wait.into(),
        });
    };
    // The lock is released when `_lock` is closed, on every path out.
    let mut f = safe_fs::open_own(
        path,
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o644),
    )
    .map_err(refused)?;
    let len = f.metadata().map_err(io)?.len();
    if len > 0 && tail_has_job(&mut f, len, t).map_err(io)? {
        return Ok(Appended::AlreadyThere);
    }
    let mut w = csv::WriterBuilder::new()
        .has_headers(len == 0)
        .from_writer(Vec::new());
    w.serialize(LedgerRow::of(t))
        .map_err(|source| LedgerError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
    let mut bytes = w.into_inner().map_err(|e| io(e.into_error()))?;
    if len > 0 && !ends_with_newline(&mut f, len).map_err(io)? {
        // A previous writer died mid-row: start on a fresh line.
        bytes.insert(0, b'\n');
    }
    // One write of the whole row: readers never see half of it.
    f.write_all(&bytes).map_err(io)?;
    f.sync_data().map_err(io)?;
    Ok(Appended::Yes)
}

/// Opens the ledger to read: never blocking on a FIFO, a regular file only.
fn open_to_read(path: &Path) -> Result<File, LedgerError> {
    safe_fs::open_regular(path).map_err(|e| match e {
        SafeFsError::Io { source, .. } => LedgerError::Io {
            path: path.to_path_buf(),
            source,
        },
        source => LedgerError::Unsafe {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Where a row's start and cluster are ([`JobTotal`]'s field order).
const START_COLUMN: usize = 5;
const CLUSTER_COLUMN: usize = 18;

fn tail_has_job(f: &mut File, len: u64, t: &JobTotal) -> io::Result<bool> {
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let prefix = format!("{},", t.job_id);
    let mut lines = text.split('\n');
    if from > 0 {
        lines.next(); // starts mid-line
    }
    Ok(lines.any(|l| l.starts_with(&prefix) && same_run(l, t)))
}

/// Whether a ledger line (of `t`'s job id) is `t`'s run: the same start and
/// cluster.
fn same_run(line: &str, t: &JobTotal) -> bool {
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line.as_bytes());
    let Some(Ok(rec)) = rd.records().next() else {
        return false;
    };
    rec.get(START_COLUMN) == Some(t.start.as_str())
        && rec.get(CLUSTER_COLUMN) == Some(t.cluster.as_str())
}

fn ends_with_newline(f: &mut File, len: u64) -> io::Result<bool> {
    f.seek(SeekFrom::Start(len - 1))?;
    let mut b = [0u8];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// Every row of the ledger. Rows that do not parse (a torn line) are
/// skipped and counted, so one bad line does not hide the rest.
pub fn read(path: &Path) -> Result<(Vec<JobTotal>, usize), LedgerError> {
    let f = open_to_read(path)?;
    let mut rd = csv::ReaderBuilder::new().flexible(true).from_reader(f);
    let mut rows = Vec::new();
    let mut bad = 0;
    for r in rd.deserialize::<JobTotal>() {
        match r {
            Ok(t) => rows.push(t),
            Err(_) => bad += 1,
        }
    }
    Ok((rows, bad))
}

/// The ledger's columns a report reads, by position in the header.
struct Columns {
    count: usize,
    job_id: usize,
    start: usize,
    user: usize,
    account: usize,
    partition: usize,
    end: usize,
    gpu_hours: usize,
    energy_kwh: usize,
    co2e_g: usize,
    cluster: usize,
    /// Absent from no ledger this crate wrote; a row without it is measured.
    status: Option<usize>,
}

impl Columns {
    fn find(header: &csv::ByteRecord) -> Option<Columns> {
        let at = |name: &str| header.iter().position(|h| h == name.as_bytes());
        Some(Columns {
            count: header.len(),
            job_id: at("job_id")?,
            start: at("start")?,
            user: at("user")?,
            account: at("account")?,
            partition: at("partition")?,
            end: at("end")?,
            gpu_hours: at("gpu_hours")?,
            energy_kwh: at("energy_kwh")?,
            co2e_g: at("co2e_g")?,
            cluster: at("cluster")?,
            status: at("status"),
        })
    }
}

/// Feeds every ledger row to `agg` as it is read, for `carbontrack report`:
/// the figures of [`read`] then `aggregate::ledger_records` then
/// `aggregate::aggregate`, without holding a million rows or allocating per
/// row. Returns how many rows were skipped: rows shorter than the header
/// (a torn line) or whose fields the report uses do not read.
pub fn report_into(path: &Path, agg: &mut Aggregator<'_>) -> Result<usize, LedgerError> {
    let f = open_to_read(path)?;
    let csv_err = |source| LedgerError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut rd = csv::ReaderBuilder::new()
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(f);
    let header = rd.byte_headers().map_err(csv_err)?.clone();
    let cols = Columns::find(&header);
    let needs_end = agg.needs_end();
    let mut rec = csv::ByteRecord::new();
    // A job is its cluster (by index in `clusters`), its id and its start:
    // the first run of each id is in `seen`, any later run of it (ids are
    // reused; rare) in `reruns`.
    let mut seen: HashMap<u64, u64, BuildHasherDefault<MixHasher>> = HashMap::default();
    let mut reruns: HashSet<(u64, u64)> = HashSet::new();
    let mut clusters: Vec<Vec<u8>> = Vec::new();
    let mut bad = 0;
    while rd.read_byte_record(&mut rec).map_err(csv_err)? {
        let read = cols.as_ref().and_then(|c| {
            read_job(&rec, c, needs_end).map(|(job, id)| (job, id, &rec[c.cluster], &rec[c.start]))
        });
        let Some((job, id, cluster, start)) = read else {
            bad += 1;
            continue;
        };
        agg.offer(&job, || {
            let k = match clusters.iter().rposition(|c| c == cluster) {
                Some(k) => k,
                None => {
                    clusters.push(cluster.to_vec());
                    clusters.len() - 1
                }
            };
            let key = (k as u64) << 32 | u64::from(id);
            let run = fnv(start);
            match seen.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(run);
                    true
                }
                Entry::Occupied(o) => *o.get() != run && reruns.insert((key, run)),
            }
        });
    }
    Ok(bad)
}

/// FNV-1a of a short field (a row's start).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The report's fields of one row and its job id; `None` if they do not read
/// as [`read`] would read them.
fn read_job<'r>(rec: &'r csv::ByteRecord, c: &Columns, needs_end: bool) -> Option<(Job<'r>, u32)> {
    // Like `read`: a torn row misses the last columns; extra ones are ignored.
    if rec.len() < c.count {
        return None;
    }
    let text = |i: usize| std::str::from_utf8(&rec[i]).ok();
    let float = |i: usize| text(i)?.parse::<f64>().ok();
    let maybe_float = |i: usize| match &rec[i] {
        b"" => Some(None),
        _ => float(i).map(Some),
    };
    let id = text(c.job_id)?;
    // As the csv crate reads integers: decimal, or hex after `0x`.
    let id = match id.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => id.parse().ok()?,
    };
    let end = text(c.end)?;
    text(c.cluster)?;
    let job = Job {
        user: text(c.user)?,
        account: text(c.account)?,
        partition: text(c.partition)?,
        end: if needs_end { parse_time(end) } else { None },
        gpu_hours: float(c.gpu_hours)?,
        energy_kwh: maybe_float(c.energy_kwh)?,
        co2e_g: maybe_float(c.co2e_g)?,
        estimated: c
            .status
            .and_then(text)
            .is_some_and(|s| crate::footprint::estimated_components(s).is_some()),
    };
    Some((job, id))
}

/// A hasher for the `u64` job keys. hashbrown picks the bucket from the low
/// bits and a tag from the top 7: keeping the key's low bits (the job id)
/// puts the mostly consecutive ids of a ledger in neighbouring buckets, so a
/// million inserts stay in cache, and a multiplication fills the tag bits.
/// SipHash's defence against chosen keys buys nothing for a file the site's
/// own epilogs wrote, and cost a quarter of a million-row report.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        const TAG: u64 = 0xfe00_0000_0000_0000;
        self.0 = (n & !TAG) | (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) & TAG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Components;
    use crate::report::total::JobMeta;
    use crate::report::total::tests::row;
    use std::fs;

    fn total(job: u32, gpu: Option<f64>) -> JobTotal {
        let rows = vec![
            row("n1", "cpu", "package-0", Some(1000.0)),
            row("n1", "gpu", "GPU-a", gpu),
        ];
        let meta = JobMeta {
            user: "bob".into(),
            account: "phys, \"x\"".into(),
            partition: "p".into(),
            cluster: "c".into(),
        };
        JobTotal::from_rows(job, &rows, Components::ALL, &meta).unwrap()
    }

    /// The streamed report gives exactly the figures of reading every row
    /// and aggregating them, whatever the filter and grouping.
    #[test]
    fn streamed_report_equals_read_then_aggregate() {
        use crate::report::aggregate::{self, Filter, GroupBy};
        let d = std::env::temp_dir().join(format!("ct-ledger-stream-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let p = d.join("ledger.csv");
        let mut text = String::new();
        let mut w = csv::Writer::from_writer(Vec::new());
        let ends = [
            "2024-05-01T10:00:00.000Z",
            "2024-05-01T23:59:59.999Z",
            "2024-05-02T00:00:00.000Z",
            "not a time",
            "2024-05-03",
        ];
        for n in 0..40u32 {
            let mut t = total(n % 17, (n % 5 != 0).then_some(f64::from(n)));
            t.user = ["alice", "bob", "carol"][n as usize % 3].into();
            t.partition = ["gpu", "cpu"][n as usize % 2].into();
            // Job 3 of cluster c and of cluster d are different jobs.
            t.cluster = ["c", "d", ""][n as usize % 3].into();
            t.end = ends[n as usize % ends.len()].into();
            t.gpu_hours = f64::from(n) * 0.25;
            // Some with estimates (`cpu_tdp=`), counted by both ways.
            if n % 7 == 3 {
                t.status = "estimated: 1 of 2 rows estimated (cpu)".into();
            }
            w.serialize(&t).unwrap();
        }
        text.push_str(std::str::from_utf8(&w.into_inner().unwrap()).unwrap());
        // A torn row, a repeated row, a row with an unreadable figure, and
        // one with an extra column (which `read` takes, ignoring it).
        text.push_str("13,bob,ph\n");
        let good = text.lines().nth(1).unwrap().to_string();
        text.push_str(&good);
        text.push('\n');
        let mut fields: Vec<String> = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(good.as_bytes())
            .records()
            .next()
            .unwrap()
            .unwrap()
            .iter()
            .map(String::from)
            .collect();
        assert_eq!(fields[8], "0.0", "gpu_hours");
        fields[8] = "x".into();
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&fields).unwrap();
        text.push_str(std::str::from_utf8(&w.into_inner().unwrap()).unwrap());
        text.push_str(&format!("{good},extra\n"));
        fs::write(&p, text).unwrap();

        let since = aggregate::parse_time("2024-05-01T12:00");
        let filters = [
            Filter::default(),
            Filter {
                user: Some("bob".into()),
                ..Filter::default()
            },
            Filter {
                since,
                until: aggregate::parse_time("2024-05-03"),
                ..Filter::default()
            },
            Filter {
                partition: Some("gpu".into()),
                since,
                ..Filter::default()
            },
        ];
        let by = [
            None,
            Some(GroupBy::User),
            Some(GroupBy::Account),
            Some(GroupBy::Partition),
            Some(GroupBy::Day),
        ];
        let (rows, bad) = read(&p).unwrap();
        assert_eq!(bad, 2, "the torn row and the unreadable figure");
        let records = aggregate::ledger_records(&rows);
        for f in &filters {
            for b in by {
                let want = aggregate::aggregate(&records, f, b);
                let mut agg = aggregate::Aggregator::new(f, b);
                let skipped = report_into(&p, &mut agg).unwrap();
                assert_eq!(skipped, bad);
                let got = agg.finish();
                assert_eq!(got, want, "{f:?} by {b:?}");
            }
        }
        // The duplicates were there to be skipped.
        let (_, all) = aggregate::aggregate(&records, &Filter::default(), None);
        assert!(all.jobs < rows.len() as u64 && all.jobs > 20, "{all:?}");
        assert!(
            all.estimated_jobs > 0 && all.estimated_jobs < all.jobs,
            "{all:?}"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    /// Nothing a user could leave at or around the ledger makes an append
    /// follow it, wait for it or write into it: each is refused at once,
    /// with what to fix.
    #[test]
    fn refuses_what_a_user_could_plant_at_once() {
        use crate::safe_fs::tests::{mkfifo, quick, temp};
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        use std::time::Instant;
        let d = temp("ledger");
        // A directory users can write: nothing appended, the fix named.
        let lax = d.join("lax");
        fs::create_dir(&lax).unwrap();
        fs::set_permissions(&lax, fs::Permissions::from_mode(0o1777)).unwrap();
        let e = append(&lax.join("ledger.csv"), &total(1, Some(1.0)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("chown root: {0} && chmod 755 {0}", lax.display()))
                && e.contains("mode 1777")
                && e.contains("stays queued"),
            "{e}"
        );
        assert!(!lax.join("ledger.csv").exists());

        let ok = d.join("ok");
        fs::create_dir(&ok).unwrap();
        let p = ok.join("ledger.csv");
        // A FIFO: refused without blocking.
        mkfifo(&p);
        let e = quick("append to a FIFO", || append(&p, &total(1, Some(1.0))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a FIFO") && e.contains("stays queued"), "{e}");
        let e = quick("report from a FIFO", || read(&p))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        fs::remove_file(&p).unwrap();
        // A link to a file root would otherwise append to.
        let target = d.join("shadow");
        fs::write(&target, "keep\n").unwrap();
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = append(&p, &total(1, Some(1.0))).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep\n");
        fs::remove_file(&p).unwrap();
        // Pre-created by a user.
        if crate::ffi::identity::euid() == 0 {
            fs::write(&p, "").unwrap();
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
            let e = append(&p, &total(1, Some(1.0))).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            assert_eq!(fs::metadata(&p).unwrap().len(), 0);
            fs::remove_file(&p).unwrap();
        }
        // The lock: root-only, beside the ledger, taken with a bounded wait.
        assert_eq!(append(&p, &total(1, Some(1.0))).unwrap(), Appended::Yes);
        let lock = lock_path(&p);
        assert_eq!(lock, ok.join(".carbontrack-lock/ledger.csv.lock"));
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(
            (mode(lock.parent().unwrap()), mode(&lock), mode(&p)),
            (0o700, 0o600, 0o644)
        );
        let held = safe_fs::lock(&lock, Duration::ZERO).unwrap().unwrap();
        let t0 = Instant::now();
        let e = append_waiting(&p, &total(2, Some(1.0)), Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(1),
            "{waited:?}"
        );
        assert!(e.contains("held by another") && e.contains("flush"), "{e}");
        drop(held);
        assert_eq!(append(&p, &total(2, Some(1.0))).unwrap(), Appended::Yes);
        assert_eq!(read(&p).unwrap().0.len(), 2);
        fs::remove_dir_all(&d).unwrap();
    }

    /// Job ids are reused: a later job with an earlier one's id (another
    /// start), or one of another cluster, is a row of its own; the same run
    /// again is not, and reports count each job once.
    #[test]
    fn a_job_is_its_cluster_id_and_start() {
        use crate::report::aggregate::{Aggregator, Filter};
        let d = std::env::temp_dir().join(format!("ct-ledger-runs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let p = d.join("ledger.csv");
        let earlier = total(7, Some(5.0));
        let later = JobTotal {
            start: "2024-06-01T00:00:00.000Z".into(),
            end: "2024-06-01T01:00:00.000Z".into(),
            ..earlier.clone()
        };
        let elsewhere = JobTotal {
            cluster: "other".into(),
            ..earlier.clone()
        };
        for t in [&earlier, &later, &elsewhere] {
            assert_eq!(append(&p, t).unwrap(), Appended::Yes, "{t:?}");
        }
        for t in [&earlier, &later, &elsewhere] {
            assert_eq!(append(&p, t).unwrap(), Appended::AlreadyThere, "{t:?}");
        }
        // A row written twice (two ledgers joined by hand) counts once.
        let text = fs::read_to_string(&p).unwrap();
        let again = text.lines().nth(2).unwrap().to_string();
        fs::write(&p, format!("{text}{again}\n")).unwrap();
        let f = Filter::default();
        let mut agg = Aggregator::new(&f, None);
        assert_eq!(report_into(&p, &mut agg).unwrap(), 0);
        let (_, all) = agg.finish();
        assert_eq!(all.jobs, 3, "{all:?}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn appends_once_with_header_and_reads_back() {
        let d = std::env::temp_dir().join(format!("ct-ledger-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let p = d.join("sub/ledger.csv");
        assert_eq!(append(&p, &total(1, Some(5.0))).unwrap(), Appended::Yes);
        assert_eq!(append(&p, &total(2, None)).unwrap(), Appended::Yes);
        assert_eq!(
            append(&p, &total(1, Some(5.0))).unwrap(),
            Appended::AlreadyThere
        );
        // Job 12 is not job 1 (prefix match on the whole id).
        assert_eq!(append(&p, &total(12, Some(5.0))).unwrap(), Appended::Yes);
        let text = fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], header());
        assert!(lines[0].starts_with(
            "job_id,user,account,partition,nodes,start,end,duration_s,gpu_hours,cpu_j,dram_j,gpu_j,energy_j,energy_kwh,co2e_g,pue,intensity_g_per_kwh,status,cluster,node_list"
        ));
        assert_eq!(lines.len(), 4);
        // Unmeasured GPU and what follows from it: empty, not 0; figures
        // in fixed precision (1000 J × 1.5 / 3.6e6 = 0.000416666… kWh).
        assert!(
            lines[2].contains(",1000.000,0.000,,1000.000,"),
            "{}",
            lines[2]
        );
        assert!(
            lines[1].contains(",1005.000,0.0004187500,0.167500,1.5,400,"),
            "{}",
            lines[1]
        );
        let (rows, bad) = read(&p).unwrap();
        assert_eq!(bad, 0);
        // Read back and written again, a row is the same text: the ledger
        // holds exactly what it says.
        let line_of = |t: &JobTotal| {
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(Vec::new());
            w.serialize(LedgerRow::of(t)).unwrap();
            String::from_utf8(w.into_inner().unwrap()).unwrap()
        };
        let want = [total(1, Some(5.0)), total(2, None), total(12, Some(5.0))];
        assert_eq!(rows.len(), want.len());
        for (r, w) in rows.iter().zip(&want) {
            assert_eq!(line_of(r), line_of(w));
            assert!((r.energy_kwh.unwrap_or(0.0) - w.energy_kwh.unwrap_or(0.0)).abs() <= 5e-11);
        }

        // A torn last line (writer killed mid-row) costs only that row.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"13,bob,ph").unwrap();
        drop(f);
        assert_eq!(append(&p, &total(14, Some(1.0))).unwrap(), Appended::Yes);
        let (rows, bad) = read(&p).unwrap();
        assert_eq!((rows.len(), bad), (4, 1));
        assert_eq!(rows[3].job_id, 14);
        fs::remove_dir_all(&d).unwrap();
    }
}
