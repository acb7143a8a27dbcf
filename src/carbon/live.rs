//! The optional live source: ElectricityMaps' hourly carbon-intensity history
//! (`intensity=electricitymaps:ZONE`), queried by the epilog only, never by the
//! sampler: a compute node's job must not wait on the internet, and the
//! epilog runs once per job, after it, when the run's hours are known.
//!
//! What it does: GET `<intensity_url>/v3/carbon-intensity/history?zone=ZONE`
//! (by default `https://api.electricitymaps.com`) with the key from
//! `intensity_key` in the `auth-token` header, under one overall timeout; the
//! hourly figures are merged into a cache file in the spool
//! (`electricitymaps-ZONE.csv`, the same `timestamp,g_per_kwh` format as a
//! site file), reused for `intensity_ttl`, and kept for 30 days, so jobs
//! longer than the API's 24-hour history are covered by the epilogs of jobs
//! that ran meanwhile. A failed query uses the stale cache if there is one,
//! else the fallback; the CSV's `intensity_source` says which.
//!
//! The transport is the system's `curl` binary, run as a child process: the
//! API is HTTPS-only, and curl brings the distribution's TLS stack, CA store,
//! proxy settings (`https_proxy`, `no_proxy`) and security updates, where a
//! TLS library linked into the plugin would bring none of those and ride in
//! every slurmstepd. The key reaches curl on its stdin (`-H @-`), never in its
//! argv, which /proc makes world-readable. `~/.curlrc` is ignored (`-q`), only
//! http(s) is spoken, redirects are not followed, and a curl that overruns the
//! timeout is killed. A plain `http://` `intensity_url` is accepted for a
//! site's own forward proxy (and the tests); the key then travels in clear, so
//! such a proxy belongs on loopback or a trusted management network.
//! The key file must be owned by the epilog's user (root) and unreadable by
//! anyone else.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::safe_fs;

use super::base_url::{BaseUrl, DEFAULT_URL};
use super::intensity::{
    EnergySpan, HourTable, IntensitySpec, MAX_G_PER_KWH, Resolved, constant_or_world, hour_weights,
    parse_hourly_csv, parse_timestamp, unix_secs, weigh,
};
use crate::config::Config;
use crate::report::cmd::wait_until;

/// The whole query (connect, TLS, send, receive) must finish within this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long past its own `--max-time` curl gets before it is killed: curl's
/// own timeout names what stalled, so it should normally be the one to fire.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Cached hours older than this are dropped.
pub const CACHE_KEEP: Duration = Duration::from_secs(30 * 86_400);

/// A response larger than this is not an intensity history.
const MAX_RESPONSE: usize = 1 << 20;

/// Where curl is looked for before `PATH`: the epilog runs as root with
/// Slurm's minimal environment, where `PATH` may be unset or not the admin's.
const CURL_PATHS: [&str; 3] = ["/usr/bin/curl", "/bin/curl", "/usr/local/bin/curl"];

/// Everything the live source needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub base_url: String,
    pub key_file: PathBuf,
    /// Where the cache file lives (the spool).
    pub cache_dir: PathBuf,
    pub ttl: Duration,
    pub timeout: Duration,
    /// The curl binary that makes the query ([`find_curl`]).
    pub curl: PathBuf,
}

impl LiveSettings {
    /// The settings for an `electricitymaps:` configuration, `None` otherwise.
    pub fn from_config(c: &Config) -> Option<LiveSettings> {
        match &c.intensity {
            IntensitySpec::ElectricityMaps(_) => Some(LiveSettings {
                base_url: c
                    .intensity_url
                    .clone()
                    .unwrap_or_else(|| DEFAULT_URL.to_string()),
                key_file: c.intensity_key.clone()?,
                cache_dir: c.spool.clone(),
                ttl: c.intensity_ttl,
                timeout: DEFAULT_TIMEOUT,
                curl: find_curl(),
            }),
            _ => None,
        }
    }
}

/// The first of the system's usual curl locations that exists, else plain
/// `curl` for a `PATH` search (whose failure then says to install it).
pub fn find_curl() -> PathBuf {
    CURL_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("curl"))
}

/// Why the live source gave nothing; each names what to check.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("key file {path}: {problem}")]
    Key { path: String, problem: String },
    #[error("intensity_url: {0}")]
    Url(String),
    #[error("{url}: {problem}")]
    Transport { url: String, problem: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: unexpected response: {problem}")]
    Response { url: String, problem: String },
}

/// The intensity for a finished job from the live source, for the epilog.
pub fn resolve_live(
    zone: &str,
    settings: &LiveSettings,
    fallback: &IntensitySpec,
    window: (SystemTime, SystemTime),
    energy_by_time: &[EnergySpan],
    now: SystemTime,
) -> Resolved {
    let fb = constant_or_world(fallback);
    match history(zone, settings, now) {
        Ok((table, how)) => {
            let mut r = weigh(
                &table,
                &hour_weights(window, energy_by_time),
                &fb,
                format!("ElectricityMaps {zone} hourly ({how})"),
            );
            if let Some(e) = &how.error {
                let stale = format!("query failed ({e}), used the cache");
                r.note = Some(match r.note {
                    Some(n) => format!("{stale}; {n}"),
                    None => stale,
                });
            }
            r
        }
        Err(e) => Resolved {
            note: Some(format!("ElectricityMaps {zone}: {e}; used {}", fb.source)),
            ..fb
        },
    }
}

/// How a history was obtained.
#[derive(Debug)]
pub struct Provenance {
    pub kind: &'static str,
    /// The query's error when a stale cache stood in.
    pub error: Option<LiveError>,
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)
    }
}

/// The zone's hourly history: from a fresh cache, else from the API (merged
/// into the cache), else from a stale cache.
pub fn history(
    zone: &str,
    settings: &LiveSettings,
    now: SystemTime,
) -> Result<(HourTable, Provenance), LiveError> {
    let cache = cache_path(&settings.cache_dir, zone);
    let cached = read_cache(&cache);
    if let Some((table, modified)) = &cached {
        let age = now.duration_since(*modified).unwrap_or_default();
        if age < settings.ttl {
            return Ok((
                table.clone(),
                Provenance {
                    kind: "cached",
                    error: None,
                },
            ));
        }
    }
    match fetch(zone, settings) {
        Ok(fresh) => {
            let mut merged = cached.map(|(t, _)| t).unwrap_or_default();
            merged.0.extend(fresh.0);
            let oldest = ((unix_secs(now) - CACHE_KEEP.as_secs_f64()) / 3600.0).floor() as i64;
            merged.0.retain(|&h, _| h >= oldest);
            // A cache that cannot be written costs the next epilog a query, nothing more.
            let _ = write_cache(&cache, &merged);
            Ok((
                merged,
                Provenance {
                    kind: "fetched",
                    error: None,
                },
            ))
        }
        Err(e) => match cached {
            Some((table, _)) => Ok((
                table,
                Provenance {
                    kind: "stale cache",
                    error: Some(e),
                },
            )),
            None => Err(e),
        },
    }
}

/// One query to the API.
pub fn fetch(zone: &str, settings: &LiveSettings) -> Result<HourTable, LiveError> {
    let base = BaseUrl::parse(&settings.base_url).map_err(LiveError::Url)?;
    let key = read_key(&settings.key_file)?;
    let path = format!("/v3/carbon-intensity/history?zone={zone}");
    let url = format!("{}{path}", base.url);
    let (status, body) = http_get(
        &settings.curl,
        &base,
        &path,
        &[("auth-token", &key)],
        settings.timeout,
    )
    .map_err(|problem| LiveError::Transport {
        url: url.clone(),
        problem,
    })?;
    if !(200..300).contains(&status) {
        let body: String = body.trim().chars().take(200).collect();
        return Err(LiveError::Status { url, status, body });
    }
    parse_history(&body).map_err(|problem| LiveError::Response { url, problem })
}

/// The key, refused unless only its owner (the process's own user) can read it.
pub fn read_key(path: &Path) -> Result<String, LiveError> {
    let err = |problem: String| LiveError::Key {
        path: path.display().to_string(),
        problem,
    };
    // Followed if a link (an admin's choice), but never a FIFO: opened
    // without blocking, then checked as opened.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    safe_fs::check_regular(path, &f).map_err(|e| err(e.to_string()))?;
    let meta = f.metadata().map_err(|e| err(e.to_string()))?;
    // /proc/self belongs to the process's effective user.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if me.is_some_and(|uid| uid != meta.uid()) {
        return Err(err(format!(
            "owned by uid {}, not by this process's user; `chown root` it",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets others read the key; `chmod 600` it",
            meta.mode() & 0o777
        )));
    }
    let key = safe_fs::read_bounded(path, f, 4096).map_err(|e| err(e.to_string()))?;
    let key = String::from_utf8_lossy(&key);
    let key = key.trim();
    if key.is_empty() || key.contains(['\r', '\n']) {
        return Err(err("must hold the key on a single line".into()));
    }
    Ok(key.to_string())
}

/// GET `base` + `path` with `curl`, the whole exchange under `timeout`.
/// `headers` go to curl on its stdin, so secrets stay out of its argv; their
/// values must be single lines. Returns the HTTP status and the body,
/// whatever the status.
pub fn http_get(
    curl: &Path,
    base: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), String> {
    if headers
        .iter()
        .any(|(k, v)| k.contains([':', '\r', '\n']) || v.contains(['\r', '\n']))
    {
        return Err("a header name or value spans lines".into());
    }
    let secs = format!("{:.3}", timeout.as_secs_f64());
    let mut cmd = Command::new(curl);
    // `-q` must come first: it stops curl reading the invoking user's ~/.curlrc.
    cmd.args(["-q", "--silent", "--show-error", "--proto", "=https,http"])
        .args(["--max-time", &secs, "--connect-timeout", &secs])
        .args(["--max-filesize", &MAX_RESPONSE.to_string()])
        .args(["-H", "Accept: application/json"])
        .args([
            "--user-agent",
            concat!("carbontrack/", env!("CARGO_PKG_VERSION")),
        ])
        .args(["-H", "@-"])
        // curl expands `\n` itself; the status follows the body on its own line.
        .args(["--write-out", "\\n%{http_code}"]);
    if base.is_loopback() {
        cmd.args(["--noproxy", "*"]);
    }
    cmd.arg(format!("{}{path}", base.url))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot run {}: {e}; install curl (Debian/Ubuntu: `apt-get install curl`), the live source's HTTPS client",
            curl.display()
        )
    })?;
    let mut header_lines = String::new();
    for (k, v) in headers {
        header_lines.push_str(&format!("{k}: {v}\n"));
    }
    // A few bytes into an empty pipe; curl reads them before it connects.
    let sent = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(header_lines.as_bytes()));
    let out = child.stdout.take().map(|s| thread::spawn(move || drain(s)));
    let err = child.stderr.take().map(|s| thread::spawn(move || drain(s)));
    let status = wait_until(&mut child, Instant::now() + timeout + KILL_GRACE);
    let join = |h: Option<thread::JoinHandle<(Vec<u8>, bool)>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let ((out, too_big), (err, _)) = (join(out), join(err));
    let err = String::from_utf8_lossy(&err).trim().to_string();
    let status = match status {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(format!(
                "no complete answer within {timeout:?} (curl killed)"
            ));
        }
        Err(e) => return Err(format!("waiting for curl: {e}")),
    };
    if let Some(Err(e)) = sent {
        return Err(format!("cannot hand the headers to curl: {e}; {err}"));
    }
    match status.code() {
        Some(0) => {}
        // CURLE_OPERATION_TIMEDOUT
        Some(28) => return Err(format!("no complete answer within {timeout:?} ({err})")),
        // CURLE_FILESIZE_EXCEEDED
        Some(63) => return Err(format!("response over {MAX_RESPONSE} bytes")),
        _ if !err.is_empty() => return Err(err),
        _ => return Err(format!("curl failed: {status}")),
    }
    if too_big {
        return Err(format!("response over {MAX_RESPONSE} bytes"));
    }
    let text = String::from_utf8_lossy(&out);
    let (body, code) = text
        .rsplit_once('\n')
        .ok_or("curl wrote no HTTP status (is it curl?)")?;
    let code = code
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("no HTTP status from the server (curl reported `{code}`)"))?;
    Ok((code, body.to_string()))
}

/// All of a pipe, keeping at most a response's worth: reading on past that
/// lets curl finish rather than block on a full pipe. `true`: some was dropped.
fn drain(mut r: impl Read) -> (Vec<u8>, bool) {
    let (mut kept, mut dropped) = (Vec::new(), false);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = (MAX_RESPONSE + 8).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, dropped)
}

/// The part of a history answer that is used; other fields are ignored.
#[derive(Deserialize)]
struct HistoryAnswer {
    history: Vec<HistoryEntry>,
}

#[derive(Deserialize)]
struct HistoryEntry {
    datetime: String,
    /// `null` for an hour the API has no figure for.
    #[serde(rename = "carbonIntensity")]
    carbon_intensity: Option<f64>,
}

/// The hourly figures of a history answer
/// (`{"history":[{"datetime":…,"carbonIntensity":…},…]}`). An entry whose
/// intensity is `null` is left out: that hour then uses the fallback.
pub fn parse_history(json: &str) -> Result<HourTable, String> {
    let answer: HistoryAnswer = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if answer.history.is_empty() {
        return Err("an empty history".into());
    }
    let mut table = HourTable::default();
    for entry in answer.history {
        let Some(g) = entry.carbon_intensity else {
            continue;
        };
        let d = &entry.datetime;
        let t = parse_timestamp(d).ok_or_else(|| format!("datetime `{d}` is not a time"))?;
        if !(0.0..=MAX_G_PER_KWH).contains(&g) {
            return Err(format!("carbonIntensity {g} is out of range"));
        }
        table.0.insert(t.div_euclid(3600), g);
    }
    Ok(table)
}

/// The cache file of a zone.
pub fn cache_path(dir: &Path, zone: &str) -> PathBuf {
    dir.join(format!("electricitymaps-{zone}.csv"))
}

/// The most a cache file is read: 30 days of hours are about 20 kB.
const MAX_CACHE: u64 = 4 << 20;

/// The cache, if it is root's own regular file in a directory only root can
/// write (the spool): never read through a link or from a FIFO.
fn read_cache(path: &Path) -> Option<(HourTable, SystemTime)> {
    safe_fs::check_dir(path.parent()?, 0o700).ok()?;
    let f = safe_fs::open_own(path, std::fs::OpenOptions::new().read(true)).ok()?;
    let modified = f.metadata().ok()?.modified().ok()?;
    let bytes = safe_fs::read_bounded(path, f, MAX_CACHE).ok()?;
    let table = parse_hourly_csv(&String::from_utf8_lossy(&bytes)).ok()?;
    Some((table, modified))
}

/// Writes the cache beside its final name and renames it into place, so a
/// concurrent epilog reads the old file or the new one, never half of one;
/// only into a directory only root can write, never through a link.
fn write_cache(path: &Path, table: &HourTable) -> Result<(), safe_fs::SafeFsError> {
    let mut text = String::from("timestamp,g_per_kwh\n");
    for (h, g) in &table.0 {
        text.push_str(&format!("{},{g}\n", h * 3600));
    }
    if let Some(dir) = path.parent() {
        safe_fs::check_dir(dir, 0o700)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    safe_fs::write_atomic(path, &tmp, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::units::{GramsPerKwh, Joules};
    use std::os::unix::fs::PermissionsExt;

    /// 2024-05-01T00:00:00Z.
    const DAY: u64 = 1_714_521_600;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(DAY + s)
    }

    /// A loopback server that answers each connection with the next canned
    /// response (`None`: accept and say nothing) and reports each request.
    fn serve(
        responses: Vec<Option<String>>,
    ) -> (String, mpsc::Receiver<String>, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        let h = thread::spawn(move || {
            for resp in responses {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                tx.send(String::from_utf8_lossy(&req).into_owned()).unwrap();
                match resp {
                    Some(r) => s.write_all(r.as_bytes()).unwrap(),
                    // Hold the connection open without answering until the client gives up.
                    None => {
                        let _ = s.read(&mut buf);
                    }
                }
            }
        });
        (url, rx, h)
    }

    fn ok_json(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn history_json() -> String {
        // Hours 0 and 1 of the day; hour 2 reported as null.
        r#"{"zone":"DK-DK1","history":[{"zone":"DK-DK1","carbonIntensity":100,"datetime":"2024-05-01T00:00:00.000Z","updatedAt":"x","emissionFactorType":"lifecycle","isEstimated":false,"estimationMethod":null},{"datetime":"2024-05-01T01:00:00.000Z","carbonIntensity":300.5,"zone":"DK-DK1"},{"carbonIntensity":null,"datetime":"2024-05-01T02:00:00.000Z"}]}"#
        .to_string()
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(name: &str, url: &str) -> (Dir, LiveSettings) {
        let dir = std::env::temp_dir().join(format!("ct-live-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("em.key");
        std::fs::write(&key, "secret-key\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = LiveSettings {
            base_url: url.to_string(),
            key_file: key,
            cache_dir: dir.clone(),
            ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            curl: find_curl(),
        };
        (Dir(dir), s)
    }

    fn dk() -> IntensitySpec {
        IntensitySpec::Zone("DK".into())
    }

    #[test]
    fn history_parsing() {
        let t = parse_history(&history_json()).unwrap();
        let h0 = (DAY / 3600) as i64;
        assert_eq!(t.0.len(), 2);
        assert_eq!(t.0[&h0], 100.0);
        assert_eq!(t.0[&(h0 + 1)], 300.5);
        for (bad, why) in [
            (r#"{"error":"unauthorized"}"#, "missing field `history`"),
            (r#"{"history":[]}"#, "an empty history"),
            (
                r#"{"history":[{"carbonIntensity":"x","datetime":"2024-05-01T00:00:00Z"}]}"#,
                "invalid type: string",
            ),
            (
                r#"{"history":[{"carbonIntensity":1,"datetime":"soon"}]}"#,
                "datetime `soon` is not a time",
            ),
            (
                r#"{"history":[{"carbonIntensity":-1,"datetime":"2024-05-01T00:00:00Z"}]}"#,
                "out of range",
            ),
            ("<html>busy</html>", "expected value"),
        ] {
            let e = parse_history(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// A stand-in for curl that records its argv, then runs the real one.
    fn recording_curl(dir: &Path) -> (PathBuf, PathBuf) {
        let (script, argv) = (dir.join("curl"), dir.join("argv"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nexec '{}' \"$@\"\n",
                argv.display(),
                find_curl().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
        (script, argv)
    }

    #[test]
    fn missing_curl_says_to_install_it() {
        let (_dir, mut s) = setup("nocurl", "https://api.electricitymaps.com");
        s.curl = PathBuf::from("/nonexistent/curl");
        let e = fetch("DK", &s).unwrap_err().to_string();
        assert!(
            e.starts_with("https://api.electricitymaps.com/v3/carbon-intensity/history?zone=DK: cannot run /nonexistent/curl: "),
            "{e}"
        );
        assert!(e.contains("install curl"), "{e}");
    }

    #[test]
    fn fetches_weighs_caches_and_falls_back() {
        let body = history_json();
        let (url, requests, server) = serve(vec![
            Some(ok_json(&body)),
            Some("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".into()),
        ]);
        let (_dir, mut s) = setup("fetch", &url);
        let argv;
        (s.curl, argv) = recording_curl(&s.cache_dir);
        // A job from 00:30 to 02:30 at even power: a quarter in hour 0, half in 1,
        // a quarter in hour 2, which the API reported as null → DK fallback.
        let window = (t(1800), t(9000));
        let spans = [(t(1800), t(9000), Joules(7200.0))];
        let r = resolve_live("DK-DK1", &s, &dk(), window, &spans, t(9000));
        let want = 0.25 * 100.0 + 0.5 * 300.5 + 0.25 * 149.7;
        assert!((r.g_per_kwh.0 - want).abs() < 1e-9, "{r:?}");
        assert_eq!(
            r.describe(),
            "ElectricityMaps DK-DK1 hourly (fetched); 1 of 3 hours missing (25% of the energy): used zone DK annual average (OWID 2021) for them"
        );
        let req = requests.recv().unwrap();
        assert!(
            req.starts_with("GET /api/v3/carbon-intensity/history?zone=DK-DK1 HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nauth-token: secret-key\r\n"), "{req}");
        // The key went to curl on stdin: /proc/PID/cmdline is world-readable.
        let args = std::fs::read_to_string(&argv).unwrap();
        assert!(args.starts_with("-q\n"), "{args}");
        assert!(
            args.contains(&format!(
                "\n{url}/v3/carbon-intensity/history?zone=DK-DK1\n"
            )),
            "{args}"
        );
        assert!(!args.contains("secret-key"), "{args}");

        // The cache is root-only, in the site-file format, and serves the next epilog.
        let cache = cache_path(&s.cache_dir, "DK-DK1");
        assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&cache).unwrap(),
            format!("timestamp,g_per_kwh\n{DAY},100\n{},300.5\n", DAY + 3600)
        );
        let r = resolve_live("DK-DK1", &s, &dk(), window, &spans, SystemTime::now());
        assert!(r.source.ends_with("(cached)"), "{r:?}");
        assert!(requests.try_recv().is_err(), "a fresh cache must not query");

        // Past its TTL the cache is refreshed; a failed query uses it, saying so.
        let later = SystemTime::now() + Duration::from_secs(7200);
        let r = resolve_live("DK-DK1", &s, &dk(), window, &spans, later);
        assert!((r.g_per_kwh.0 - want).abs() < 1e-9, "{r:?}");
        let d = r.describe();
        assert!(
            d.starts_with("ElectricityMaps DK-DK1 hourly (stale cache); query failed ("),
            "{d}"
        );
        assert!(d.contains("HTTP 503: busy"), "{d}");
        server.join().unwrap();
    }

    #[test]
    fn unreachable_or_silent_server_falls_back() {
        // A port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (_dir, s) = setup("down", &format!("http://127.0.0.1:{port}"));
        let r = resolve_live("DK-DK1", &s, &dk(), (t(0), t(60)), &[], t(60));
        assert_eq!(r.g_per_kwh, GramsPerKwh(149.7));
        let d = r.describe();
        assert!(
            d.starts_with(
                "zone DK annual average (OWID 2021); ElectricityMaps DK-DK1: http://127.0.0.1:"
            ),
            "{d}"
        );
        assert!(d.contains("connect"), "{d}");

        let (url, _requests, server) = serve(vec![None]);
        let (_dir2, mut s) = setup("silent", &url);
        s.timeout = Duration::from_millis(300);
        let e = fetch("DK", &s).unwrap_err().to_string();
        assert!(e.contains("no complete answer within 300ms"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn a_child_past_its_deadline_is_killed() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(matches!(wait_until(&mut child, Instant::now()), Ok(None)));
        // Reaped: nothing is left to wait for.
        assert!(child.try_wait().unwrap().is_some());
        let mut child = Command::new("true").spawn().unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        assert!(wait_until(&mut child, far).unwrap().unwrap().success());
    }

    #[test]
    fn key_must_be_private() {
        let (_dir, s) = setup("key", "http://127.0.0.1:1");
        assert_eq!(read_key(&s.key_file).unwrap(), "secret-key");
        std::fs::set_permissions(&s.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key(&s.key_file).unwrap_err().to_string();
        assert!(
            e.contains("mode 644 lets others read the key; `chmod 600` it"),
            "{e}"
        );
        // Refused before any connection is tried.
        let e = fetch("DK", &s).unwrap_err().to_string();
        assert!(e.starts_with("key file "), "{e}");
        let e = read_key(Path::new("/nonexistent/em.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/em.key"), "{e}");
    }

    #[test]
    fn settings_from_config() {
        let c = Config::from_args([
            "intensity=electricitymaps:DK-DK1",
            "intensity_key=/etc/carbontrack/em.key",
            "intensity_url=http://127.0.0.1:8080",
            "spool=/var/spool/ct",
        ])
        .unwrap();
        let s = LiveSettings::from_config(&c).unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/var/spool/ct"));
        assert_eq!(s.ttl, Duration::from_secs(3600));
        assert_eq!(s.base_url, "http://127.0.0.1:8080");
        let c = Config::from_args([
            "intensity=electricitymaps:DK-DK1",
            "intensity_key=/etc/carbontrack/em.key",
        ])
        .unwrap();
        let s = LiveSettings::from_config(&c).unwrap();
        assert_eq!(s.base_url, "https://api.electricitymaps.com");
        assert_eq!(LiveSettings::from_config(&Config::default()), None);
    }
}
