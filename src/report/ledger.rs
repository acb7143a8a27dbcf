//! The cluster ledger: one CSV row per job, appended by every node's epilog,
//! so that reports work without accounting and survive its purges.
//!
//! Columns are [`JobTotal`]'s fields in order (`job_id,user,account,
//! partition,nodes,start,end,duration_s,gpu_hours,cpu_j,dram_j,gpu_j,energy_j,
//! energy_kwh,co2e_g,pue,intensity_g_per_kwh,status,cluster,node_list`);
//! unmeasured figures are empty. Appends happen under an exclusive lock on the
//! file (several nodes' epilogs may finish at once, on shared storage too), and
//! a job already among the last rows is not appended again, so a retry after a
//! crash between the append and the outbox update counts nothing twice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::total::JobTotal;

/// How much of the ledger's end is searched for a job already appended. The
/// outbox records delivery right after the append, so a duplicate can only
/// come from a crash in between: the job's row is then among the last ones.
pub const TAIL_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("ledger {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
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
    let _ = w.serialize(sample());
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
pub fn append(path: &Path, t: &JobTotal) -> Result<Appended, LedgerError> {
    let io = |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io)?;
    }
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    f.lock().map_err(io)?;
    // The lock is released when `f` is closed, on every path out.
    let len = f.metadata().map_err(io)?.len();
    if len > 0 && tail_has_job(&mut f, len, t.job_id).map_err(io)? {
        return Ok(Appended::AlreadyThere);
    }
    let mut w = csv::WriterBuilder::new()
        .has_headers(len == 0)
        .from_writer(Vec::new());
    w.serialize(t).map_err(|source| LedgerError::Csv {
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

fn tail_has_job(f: &mut File, len: u64, job_id: u32) -> io::Result<bool> {
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let prefix = format!("{job_id},");
    let mut lines = text.split('\n');
    if from > 0 {
        lines.next(); // starts mid-line
    }
    Ok(lines.any(|l| l.starts_with(&prefix)))
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
    let f = File::open(path).map_err(|source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Components;
    use crate::report::total::JobMeta;
    use crate::report::total::tests::row;

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
        // Unmeasured GPU and what follows from it: empty, not 0.
        assert!(lines[2].contains(",1000.0,0.0,,1000.0,"), "{}", lines[2]);
        let (rows, bad) = read(&p).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(
            rows,
            vec![total(1, Some(5.0)), total(2, None), total(12, Some(5.0))]
        );

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
