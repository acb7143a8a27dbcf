//! The optional live source: ElectricityMaps' hourly carbon-intensity history
//! (`intensity=electricitymaps:ZONE`), queried by the epilog only, never by the
//! sampler: a compute node's job must not wait on the internet, and the
//! epilog runs once per job, after it, when the run's hours are known.
//!
//! What it does: GET `<intensity_url>/v3/carbon-intensity/history?zone=ZONE`
//! with the key from `intensity_key` in the `auth-token` header, under one
//! overall timeout; the hourly figures are merged into a cache file in the
//! spool (`electricitymaps-ZONE.csv`, the same `timestamp,g_per_kwh` format as
//! a site file), reused for `intensity_ttl`, and kept for 30 days, so jobs
//! longer than the API's 24-hour history are covered by the epilogs of jobs
//! that ran meanwhile. A failed query uses the stale cache if there is one,
//! else the fallback; the CSV's `intensity_source` says which.
//!
//! Plain HTTP only: carbontrack carries no TLS library, so `intensity_url`
//! must be an `http://` endpoint, normally a TLS-terminating forward proxy on
//! the node or a site host (e.g. stunnel in client mode, or nginx with
//! `proxy_pass https://api.electricitymaps.com;`), which also keeps the
//! cluster's single egress point in the site's hands. The key is sent to that
//! proxy in clear, so it must be on loopback or a trusted management network.
//! The key file must be owned by the epilog's user (root) and unreadable by
//! anyone else.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::intensity::{
    EnergySpan, HourTable, IntensitySpec, Resolved, constant_or_world, hour_weights,
    parse_hourly_csv, parse_timestamp, unix_secs, weigh,
};
use crate::config::Config;

/// The whole query (connect, send, receive) must finish within this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Cached hours older than this are dropped.
pub const CACHE_KEEP: Duration = Duration::from_secs(30 * 86_400);

/// A response larger than this is not an intensity history.
const MAX_RESPONSE: usize = 1 << 20;

/// Everything the live source needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub base_url: String,
    pub key_file: PathBuf,
    /// Where the cache file lives (the spool).
    pub cache_dir: PathBuf,
    pub ttl: Duration,
    pub timeout: Duration,
}

impl LiveSettings {
    /// The settings for an `electricitymaps:` configuration, `None` otherwise.
    pub fn from_config(c: &Config) -> Option<LiveSettings> {
        match &c.intensity {
            IntensitySpec::ElectricityMaps(_) => Some(LiveSettings {
                base_url: c.intensity_url.clone()?,
                key_file: c.intensity_key.clone()?,
                cache_dir: c.spool.clone(),
                ttl: c.intensity_ttl,
                timeout: DEFAULT_TIMEOUT,
            }),
            _ => None,
        }
    }
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

/// `http://host[:port][/prefix]`, checked at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (empty for the root).
    pub prefix: String,
}

impl BaseUrl {
    pub fn parse(v: &str) -> Result<BaseUrl, String> {
        let Some(rest) = v.strip_prefix("http://") else {
            return Err(if v.starts_with("https://") {
                format!(
                    "`{v}`: only plain http:// is spoken (no TLS library); point it at a local TLS-terminating proxy to the API"
                )
            } else {
                format!("`{v}` is not a plain http:// URL")
            });
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{v}`: bad port `{p}`"))?;
                (h, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        {
            return Err(format!("`{v}`: bad host `{host}`"));
        }
        if path.contains(['?', '#', ' ']) {
            return Err(format!("`{v}`: a base URL takes no query"));
        }
        Ok(BaseUrl {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
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
    let path = format!("{}/v3/carbon-intensity/history?zone={zone}", base.prefix);
    let url = format!("http://{}:{}{}", base.host, base.port, path);
    let body = http_get(&base, &path, &[("auth-token", &key)], settings.timeout)
        .map_err(|problem| LiveError::Transport {
            url: url.clone(),
            problem,
        })
        .and_then(|(status, body)| {
            if status == 200 {
                Ok(body)
            } else {
                let body: String = body.chars().take(200).collect();
                Err(LiveError::Status {
                    url: url.clone(),
                    status,
                    body,
                })
            }
        })?;
    parse_history(&body).map_err(|problem| LiveError::Response { url, problem })
}

/// The key, refused unless only its owner (the process's own user) can read it.
pub fn read_key(path: &Path) -> Result<String, LiveError> {
    let err = |problem: String| LiveError::Key {
        path: path.display().to_string(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
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
    let key = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let key = key.trim();
    if key.is_empty() || key.contains(['\r', '\n']) {
        return Err(err("must hold the key on a single line".into()));
    }
    Ok(key.to_string())
}

/// A minimal HTTP/1.1 GET: one connection, `Connection: close`, the whole
/// exchange under `timeout`. Returns the status and the (de-chunked) body.
/// Name resolution is the system's and is not covered by the timeout; give an
/// address or a name in /etc/hosts.
pub fn http_get(
    base: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let addr = (base.host.as_str(), base.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", base.host))?
        .next()
        .ok_or_else(|| format!("no address for {}", base.host))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no complete answer within {timeout:?}"))
    };
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/json\r\nUser-Agent: carbontrack/{}\r\nConnection: close\r\n",
        base.host,
        base.port,
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_RESPONSE {
                    return Err(format!("response over {MAX_RESPONSE} bytes"));
                }
                if response_complete(&raw) {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no complete answer within {timeout:?}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    parse_response(&raw)
}

/// Whether a response with a Content-Length or chunked body has all arrived
/// (a server that keeps the connection open despite `Connection: close`).
fn response_complete(raw: &[u8]) -> bool {
    let Some(split) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if let Some(len) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= len;
    }
    if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return dechunk(body).is_ok();
    }
    false
}

fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split = find(raw, b"\r\n\r\n").ok_or("response ended inside its headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP response: `{status_line}`"))?;
    let lower = head.to_ascii_lowercase();
    let body = &raw[split + 4..];
    let body = if header(&lower, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)?
    } else if let Some(len) = header(&lower, "content-length").and_then(|v| v.parse::<usize>().ok())
    {
        body.get(..len)
            .ok_or("response shorter than its Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn header<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(body, b"\r\n").ok_or("chunked body cut short")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Extracts the hourly `datetime`/`carbonIntensity` pairs of a history (or
/// latest) answer. A scan for those two keys, not a general JSON parser: each
/// history entry holds both, in either order; an entry whose intensity is
/// `null` is skipped (that hour then uses the fallback).
pub fn parse_history(json: &str) -> Result<HourTable, String> {
    let mut table = HourTable::default();
    let (mut dt, mut ci): (Option<String>, Option<Option<f64>>) = (None, None);
    let b = json.as_bytes();
    let mut i = 0;
    let mut seen = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let (s, next) = json_string(json, i)?;
        i = next;
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b':' {
            continue; // a value, not a key
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        match s.as_str() {
            "datetime" if b.get(j) == Some(&b'"') => {
                let (v, next) = json_string(json, j)?;
                dt = Some(v);
                i = next;
            }
            "carbonIntensity" => {
                let end = b[j..]
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                    .map_or(b.len(), |p| j + p);
                let text = &json[j..end];
                ci = Some(if text == "null" {
                    None
                } else {
                    Some(
                        text.parse::<f64>()
                            .map_err(|_| format!("carbonIntensity `{text}` is not a number"))?,
                    )
                });
                i = end;
            }
            _ => {}
        }
        if let (Some(d), Some(c)) = (&dt, &ci) {
            seen += 1;
            if let Some(g) = c {
                let t =
                    parse_timestamp(d).ok_or_else(|| format!("datetime `{d}` is not a time"))?;
                if !(0.0..=super::intensity::MAX_G_PER_KWH).contains(g) {
                    return Err(format!("carbonIntensity {g} is out of range"));
                }
                table.0.insert(t.div_euclid(3600), *g);
            }
            dt = None;
            ci = None;
        }
    }
    if seen == 0 {
        return Err("no datetime/carbonIntensity entries".into());
    }
    Ok(table)
}

/// The string starting at the quote at `at`, and the index after its closing quote.
fn json_string(json: &str, at: usize) -> Result<(String, usize), String> {
    let b = json.as_bytes();
    let mut out = String::new();
    let mut i = at + 1;
    while i < b.len() {
        match b[i] {
            b'"' => return Ok((out, i + 1)),
            b'\\' => {
                if let Some(&c) = b.get(i + 1) {
                    out.push(c as char);
                }
                i += 2;
            }
            _ => {
                let ch = json[i..].chars().next().unwrap_or('?');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Err("unterminated string".into())
}

/// The cache file of a zone.
pub fn cache_path(dir: &Path, zone: &str) -> PathBuf {
    dir.join(format!("electricitymaps-{zone}.csv"))
}

fn read_cache(path: &Path) -> Option<(HourTable, SystemTime)> {
    let text = std::fs::read_to_string(path).ok()?;
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let table = parse_hourly_csv(&text).ok()?;
    Some((table, modified))
}

/// Writes the cache beside its final name and renames it into place, so a
/// concurrent epilog reads the old file or the new one, never half of one.
fn write_cache(path: &Path, table: &HourTable) -> std::io::Result<()> {
    let mut text = String::from("timestamp,g_per_kwh\n");
    for (h, g) in &table.0 {
        text.push_str(&format!("{},{g}\n", h * 3600));
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::units::{GramsPerKwh, Joules};

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
                while find(&req, b"\r\n\r\n").is_none() {
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

    fn chunked(body: &str) -> String {
        let (a, b) = body.split_at(body.len() / 2);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
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
        };
        (Dir(dir), s)
    }

    fn dk() -> IntensitySpec {
        IntensitySpec::Zone("DK".into())
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            BaseUrl::parse("http://127.0.0.1:8080/em/"),
            Ok(BaseUrl {
                host: "127.0.0.1".into(),
                port: 8080,
                prefix: "/em".into()
            })
        );
        assert_eq!(
            BaseUrl::parse("http://proxy.cluster"),
            Ok(BaseUrl {
                host: "proxy.cluster".into(),
                port: 80,
                prefix: String::new()
            })
        );
        assert_eq!(
            BaseUrl::parse("http://[::1]:81").map(|u| (u.host, u.port)),
            Ok(("::1".into(), 81))
        );
        for bad in [
            "https://api.electricitymaps.com",
            "ftp://x",
            "http://",
            "http://h:99999",
            "http://h/p?q=1",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_parsing() {
        let t = parse_history(&history_json()).unwrap();
        let h0 = (DAY / 3600) as i64;
        assert_eq!(t.0.len(), 2);
        assert_eq!(t.0[&h0], 100.0);
        assert_eq!(t.0[&(h0 + 1)], 300.5);
        // The `latest` endpoint's single object parses too.
        let t = parse_history(
            r#"{"zone":"DE","carbonIntensity":302,"datetime":"2024-05-01T05:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(t.0[&(h0 + 5)], 302.0);
        for bad in [
            r#"{"error":"unauthorized"}"#,
            r#"{"carbonIntensity":"x","datetime":"2024-05-01T00:00:00Z"}"#,
            r#"{"carbonIntensity":1,"datetime":"soon"}"#,
        ] {
            assert!(parse_history(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetches_weighs_caches_and_falls_back() {
        let body = history_json();
        let (url, requests, server) = serve(vec![
            Some(chunked(&body)),
            Some("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".into()),
        ]);
        let (_dir, s) = setup("fetch", &url);
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
        assert_eq!(LiveSettings::from_config(&Config::default()), None);
    }
}
