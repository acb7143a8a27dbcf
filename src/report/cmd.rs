//! Running Slurm's client commands (`sacct`, `sacctmgr`, `squeue`) with a
//! deadline.
//!
//! The epilog runs as root with slurmd's minimal environment, where `PATH` may
//! be unset, and it must never hang: slurmdbd that is down or unreachable can
//! keep a client waiting. So each command is found in `PATH` and then in the
//! system's usual directories, and is killed once its time is up.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Searched after `PATH`, in this order.
const SYSTEM_DIRS: [&str; 4] = ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin"];

/// How often a running command is checked for exit.
const POLL: Duration = Duration::from_millis(5);

/// Why a command gave no usable output.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(
        "cannot start {program}: {source} (install the Slurm client commands or give their path)"
    )]
    Start { program: String, source: io::Error },
    #[error("{program} did not finish within {timeout:?} and was killed (is slurmdbd reachable?)")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("waiting for {program}: {source}")]
    Wait { program: String, source: io::Error },
}

/// A command's captured output.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The named program as an absolute path when it can be found: a name with a
/// `/` is taken as given, otherwise `PATH` then [`SYSTEM_DIRS`]; a name found
/// nowhere is returned bare, so that starting it fails with a clear error.
pub fn find_program(name: &Path) -> PathBuf {
    if name.as_os_str().to_string_lossy().contains('/') {
        return name.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_path_buf())
}

/// Runs `program args…` with `env` added, stdin closed, and kills it (and
/// reaps it) if it runs past `timeout`. A non-zero exit is an error carrying
/// stderr.
pub fn run<I, S>(
    program: &Path,
    args: I,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_status(program, args, env, timeout)?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            program: program.display().to_string(),
            status: out.status,
            stderr: one_line(&out.stderr),
        });
    }
    Ok(out)
}

/// Like [`run`], but a non-zero exit is returned, not an error.
pub fn run_status<I, S>(
    program: &Path,
    args: I,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let name = program.display().to_string();
    let exe = find_program(program);
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| CmdError::Start {
        program: name.clone(),
        source,
    })?;
    // Readers on their own threads: a command writing more than a pipe holds
    // would otherwise block before it exits.
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let status =
        wait_until(&mut child, Instant::now() + timeout).map_err(|source| CmdError::Wait {
            program: name.clone(),
            source,
        })?;
    let Some(status) = status else {
        return Err(CmdError::Timeout {
            program: name,
            timeout,
        });
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The child's exit status, or `None` once it has been killed (and reaped)
/// at `deadline`.
pub(crate) fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            // It may have exited just now; either way it is reaped here.
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// A message on one line, for one log line per event.
pub fn one_line(s: &str) -> String {
    let t: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    t.join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_status_and_timeout() {
        let sh = Path::new("/bin/sh");
        let t = Duration::from_secs(10);
        let o = run(sh, ["-c", "echo out; echo err >&2"], &[], t).unwrap();
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("out\n", "err\n"));
        let o = run(sh, ["-c", "echo $CT_X"], &[("CT_X", "v")], t).unwrap();
        assert_eq!(o.stdout, "v\n");
        let e = run(sh, ["-c", "echo no >&2; exit 3"], &[], t).unwrap_err();
        assert!(e.to_string().contains("no"), "{e}");
        let e = run(sh, ["-c", "sleep 30"], &[], Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, CmdError::Timeout { .. }), "{e}");
        let e = run(Path::new("/nonexistent/sacct"), ["x"], &[], t).unwrap_err();
        assert!(
            e.to_string().contains("cannot start /nonexistent/sacct"),
            "{e}"
        );
    }

    #[test]
    fn finds_programs_outside_path() {
        assert_eq!(find_program(Path::new("./x")), PathBuf::from("./x"));
        let sh = find_program(Path::new("sh"));
        assert!(sh.is_absolute() && sh.is_file(), "{}", sh.display());
        assert_eq!(
            find_program(Path::new("no-such-tool-ct")),
            PathBuf::from("no-such-tool-ct")
        );
    }
}
