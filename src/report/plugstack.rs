//! One place to configure: the admin commands (`epilog`, `flush`, `report`,
//! `status`) read the plugin's own line in plugstack.conf, so the spool, the
//! accounting field, the ledger, PUE and intensity they use are the ones the
//! plugin measured with.
//!
//! Found as Slurm finds it: `SLURM_CONF` (default `/etc/slurm/slurm.conf`),
//! its `PlugStackConfig=` (default: `plugstack.conf` beside slurm.conf), then
//! the `optional|required …/libcarbontrack.so key=value…` line, following
//! `include` lines.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// The library name that identifies carbontrack's line.
pub const PLUGIN_FILE: &str = "libcarbontrack.so";

/// slurm.conf when `SLURM_CONF` is not set (Debian's and Slurm's default).
pub const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// Nested includes deeper than this are a loop or a mistake.
const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PlugstackError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source} (fix the carbontrack line in plugstack.conf)")]
    Config { path: PathBuf, source: ConfigError },
    #[error("{flag}: {source} (the flags take the same key=value settings as plugstack.conf)")]
    Override { flag: String, source: ConfigError },
}

/// Where the configuration came from, for messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The plugin's line in this file.
    Plugstack(PathBuf),
    /// No carbontrack line was found (the reason says where it looked): built-in defaults.
    Defaults(String),
}

/// The plugin's line: the file it is in and its `key=value` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginLine {
    pub file: PathBuf,
    pub args: Vec<String>,
    /// The library as the line names it (absolute, or relative to `PluginDir`).
    pub library: PathBuf,
    /// `required` (a plugin that fails to load aborts every job) rather than `optional`.
    pub required: bool,
}

/// slurm.conf as `SLURM_CONF` names it.
pub fn slurm_conf() -> PathBuf {
    std::env::var_os("SLURM_CONF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SLURM_CONF))
}

/// `PlugStackConfig=` of a slurm.conf text (keys are case-insensitive,
/// `#` starts a comment), else `plugstack.conf` in slurm.conf's directory.
pub fn plugstack_path(slurm_conf_path: &Path, slurm_conf_text: &str) -> PathBuf {
    let dir = slurm_conf_path.parent().unwrap_or(Path::new("/"));
    slurm_conf_text
        .lines()
        .filter_map(|l| {
            let l = strip_comment(l).trim();
            let (k, v) = l.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("PlugStackConfig")
                .then(|| v.trim().trim_matches('"').to_string())
        })
        .next_back()
        .filter(|v| !v.is_empty())
        .map(|v| dir.join(v))
        .unwrap_or_else(|| dir.join("plugstack.conf"))
}

fn strip_comment(l: &str) -> &str {
    l.split_once('#').map_or(l, |(a, _)| a)
}

/// Finds carbontrack's line in `path`, following `include` lines (a relative
/// include is relative to the including file's directory; `*` in the last
/// path component matches as a shell glob does).
pub fn find_plugin_line(path: &Path) -> Result<Option<PluginLine>, PlugstackError> {
    find_in(path, 0)
}

fn find_in(path: &Path, depth: usize) -> Result<Option<PluginLine>, PlugstackError> {
    let text = fs::read_to_string(path).map_err(|source| PlugstackError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let mut words = strip_comment(line).split_whitespace();
        match words.next() {
            Some(kind @ ("optional" | "required")) => {
                let Some(so) = words.next() else { continue };
                if Path::new(so).file_name().is_some_and(|n| n == PLUGIN_FILE) {
                    return Ok(Some(PluginLine {
                        file: path.to_path_buf(),
                        args: words.map(str::to_string).collect(),
                        library: PathBuf::from(so),
                        required: kind == "required",
                    }));
                }
            }
            Some("include") if depth < MAX_INCLUDE_DEPTH => {
                for pattern in words {
                    for inc in expand(&dir.join(pattern)) {
                        if let Some(found) = find_in(&inc, depth + 1)? {
                            return Ok(Some(found));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The files a pattern names, sorted; `*` only in the last component.
fn expand(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((pre, post)) = name.split_once('*') else {
        return vec![pattern.to_path_buf()];
    };
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.len() >= pre.len() + post.len()
                && n.starts_with(pre)
                && n.ends_with(post)
                && !n.starts_with('.')
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// The configuration for an admin command: the plugin's line (from
/// `plugstack`, or found through `SLURM_CONF`), then `overrides` (`key=value`
/// each, from the command's flags) on top. Without a carbontrack line the
/// defaults apply; a bad value on the line is an error, not a silent default.
pub fn load(
    plugstack: Option<&Path>,
    overrides: &[String],
) -> Result<(Config, Origin), PlugstackError> {
    let (line, origin) = match locate(plugstack) {
        Ok(Some(line)) => {
            let o = Origin::Plugstack(line.file.clone());
            (Some(line), o)
        }
        Ok(None) => (None, Origin::Defaults(where_looked(plugstack))),
        Err(e) => (None, Origin::Defaults(e.to_string())),
    };
    let mut config = match &line {
        Some(l) => Config::from_args(&l.args).map_err(|source| PlugstackError::Config {
            path: l.file.clone(),
            source,
        })?,
        None => Config::default(),
    };
    for o in overrides {
        config
            .set_arg(o)
            .map_err(|source| PlugstackError::Override {
                flag: o.clone(),
                source,
            })?;
    }
    let args: Vec<String> = line
        .map(|l| l.args)
        .unwrap_or_default()
        .into_iter()
        .chain(overrides.iter().cloned())
        .collect();
    // Checks that need all keys together (e.g. a live source and its key).
    Config::from_args(&args).map_err(|source| PlugstackError::Override {
        flag: overrides.join(" "),
        source,
    })?;
    Ok((config, origin))
}

fn locate(plugstack: Option<&Path>) -> Result<Option<PluginLine>, PlugstackError> {
    let path = match plugstack {
        Some(p) => p.to_path_buf(),
        None => {
            let conf = slurm_conf();
            let text = fs::read_to_string(&conf).map_err(|source| PlugstackError::Read {
                path: conf.clone(),
                source,
            })?;
            plugstack_path(&conf, &text)
        }
    };
    find_plugin_line(&path)
}

fn where_looked(plugstack: Option<&Path>) -> String {
    match plugstack {
        Some(p) => format!("no {PLUGIN_FILE} line in {}", p.display()),
        None => format!(
            "no {PLUGIN_FILE} line in the PlugStackConfig of {}",
            slurm_conf().display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ct-plugstack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn plugstack_config_key() {
        let conf = Path::new("/etc/slurm/slurm.conf");
        for (text, want) in [
            ("ClusterName=x\n", "/etc/slurm/plugstack.conf"),
            ("PlugStackConfig=/opt/p.conf\n", "/opt/p.conf"),
            ("plugstackconfig = /opt/q.conf # site\n", "/opt/q.conf"),
            (
                "#PlugStackConfig=/opt/no.conf\n",
                "/etc/slurm/plugstack.conf",
            ),
            ("PlugStackConfig=rel.conf\n", "/etc/slurm/rel.conf"),
        ] {
            assert_eq!(plugstack_path(conf, text), PathBuf::from(want), "{text}");
        }
    }

    #[test]
    fn finds_the_line_through_includes() {
        let d = dir("inc");
        fs::create_dir_all(d.join("plugstack.conf.d")).unwrap();
        fs::write(
            d.join("plugstack.conf"),
            "# site plugins\noptional /usr/lib/slurm/other.so a=b\ninclude plugstack.conf.d/*.conf\n",
        )
        .unwrap();
        fs::write(d.join("plugstack.conf.d/10-x.conf"), "required x.so\n").unwrap();
        fs::write(
            d.join("plugstack.conf.d/20-carbon.conf"),
            "required /usr/lib/slurm/libcarbontrack.so spool=/tmp/s ledger=none  # note\n",
        )
        .unwrap();
        fs::write(
            d.join("plugstack.conf.d/30.disabled"),
            "optional libcarbontrack.so pue=2\n",
        )
        .unwrap();
        let line = find_plugin_line(&d.join("plugstack.conf"))
            .unwrap()
            .unwrap();
        assert_eq!(line.file, d.join("plugstack.conf.d/20-carbon.conf"));
        assert_eq!(line.args, ["spool=/tmp/s", "ledger=none"]);

        fs::write(
            d.join("none.conf"),
            "optional /x/libcarbontrack.so.bak pue=2\n",
        )
        .unwrap();
        assert_eq!(find_plugin_line(&d.join("none.conf")).unwrap(), None);
        // An include of itself ends at the depth limit instead of looping.
        fs::write(d.join("loop.conf"), "include loop.conf\n").unwrap();
        assert_eq!(find_plugin_line(&d.join("loop.conf")).unwrap(), None);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn load_applies_overrides_over_the_line() {
        let d = dir("load");
        let p = d.join("plugstack.conf");
        fs::write(
            &p,
            "optional /usr/lib/slurm/libcarbontrack.so spool=/tmp/s pue=1.2 accounting_field=Comment\n",
        )
        .unwrap();
        let (c, origin) = load(Some(&p), &["pue=1.4".into()]).unwrap();
        assert_eq!(origin, Origin::Plugstack(p.clone()));
        assert_eq!((c.pue, c.spool.to_str()), (1.4, Some("/tmp/s")));
        assert_eq!(c.accounting_field, "Comment");

        let e = load(Some(&p), &["pue=9".into()]).unwrap_err().to_string();
        assert!(e.contains("pue=9") && e.contains("1.0 to 3.0"), "{e}");
        fs::write(&p, "optional libcarbontrack.so pue=banana\n").unwrap();
        let e = load(Some(&p), &[]).unwrap_err().to_string();
        assert!(
            e.contains("pue=banana") && e.contains("plugstack.conf"),
            "{e}"
        );
        // No line at all: defaults, and the origin says why.
        let (c, origin) = load(Some(&d.join("missing.conf")), &[]).unwrap();
        assert_eq!(c, Config::default());
        assert!(matches!(origin, Origin::Defaults(ref why) if why.contains("missing.conf")));
        fs::remove_dir_all(&d).unwrap();
    }
}
