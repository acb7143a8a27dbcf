//! The pure parts of `carbontrack check`: reading slurm.conf's keys, the
//! Slurm release, mount options, and what an Epilog script runs. Each is a
//! function of text, tested by tables.

use std::fs;
use std::path::{Path, PathBuf};

/// How deep `Include` lines are followed (as `measure::cores` does).
const MAX_INCLUDE_DEPTH: u32 = 4;

/// slurm.conf's global `Key=Value` lines (keys lower-cased), in file order,
/// with the files `Include` names read in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmConf {
    pub path: PathBuf,
    pub keys: Vec<(String, String)>,
    /// The `NodeName=` lines, whole.
    pub node_lines: Vec<String>,
}

impl SlurmConf {
    pub fn read(path: &Path) -> Result<SlurmConf, String> {
        let mut c = SlurmConf {
            path: path.to_path_buf(),
            ..SlurmConf::default()
        };
        c.read_into(path, 0)?;
        Ok(c)
    }

    /// From text, as if read from `path` (for tests; includes are read).
    pub fn parse(path: &Path, text: &str) -> SlurmConf {
        let mut c = SlurmConf {
            path: path.to_path_buf(),
            ..SlurmConf::default()
        };
        c.parse_into(path, text, 0);
        c
    }

    fn read_into(&mut self, path: &Path, depth: u32) -> Result<(), String> {
        let text =
            fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        self.parse_into(path, &text, depth);
        Ok(())
    }

    fn parse_into(&mut self, path: &Path, text: &str, depth: u32) {
        let dir = path.parent().unwrap_or(Path::new("/"));
        for line in text.lines() {
            let line = line.split_once('#').map_or(line, |(a, _)| a).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line
                .strip_prefix("Include ")
                .or_else(|| line.strip_prefix("include "))
            {
                if depth < MAX_INCLUDE_DEPTH {
                    // A missing include is slurmd's own error; not ours to report.
                    let _ = self.read_into(&dir.join(rest.trim()), depth + 1);
                }
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let k = k.trim().to_ascii_lowercase();
            if k == "nodename" {
                self.node_lines.push(line.to_string());
                continue;
            }
            self.keys.push((k, v.trim().trim_matches('"').to_string()));
        }
    }

    /// The last value of `key` (case-insensitive), as Slurm takes it.
    pub fn get(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.keys
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A comma list key's items, lower-cased (`PrologFlags=Alloc,Contain`).
    pub fn flags(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(|f| f.trim().to_ascii_lowercase())
                    .filter(|f| !f.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `major.minor.micro` of `scontrol --version` (`slurm 22.05.8`,
/// `slurm-wlm 24.11.5`).
pub fn parse_slurm_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find(|w| w.contains('.'))?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// `plugin_version` (`SLURM_VERSION_NUMBER`, 0xMMmmuu) as `22.05.8`.
pub fn version_text(v: u32) -> String {
    format!("{}.{:02}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
}

/// Whether Slurm `running` loads a plugin built with `plugin_version`:
/// Slurm compares major.minor (mask 0xffff00, slurm-facts.md).
pub fn version_loads(plugin_version: u32, running: (u32, u32, u32)) -> bool {
    plugin_version & 0x00ff_ff00 == ((running.0 << 16) | (running.1 << 8))
}

/// One line of /proc/self/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
    pub options: Vec<String>,
}

/// The mount `path` lies on: the longest mount point that is a prefix of
/// it (the last such line, as the kernel stacks mounts).
pub fn mount_of(mounts: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, point, fstype, options, ..] = f[..] else {
            continue;
        };
        // The kernel writes a space in a mount point as \040.
        let point = PathBuf::from(point.replace("\\040", " "));
        if !path.starts_with(&point) {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|b| b.point.components().count() > point.components().count())
        {
            continue;
        }
        best = Some(Mount {
            point,
            fstype: fstype.to_string(),
            options: options.split(',').map(str::to_string).collect(),
        });
    }
    best
}

/// Why `flock` on this mount would not lock across nodes, if it would not
/// (README: NFS not mounted `nolock`, Lustre with `-o flock`).
pub fn lock_problem(m: &Mount) -> Option<String> {
    let has = |o: &str| m.options.iter().any(|x| x == o);
    match m.fstype.as_str() {
        "nfs" | "nfs4" if has("nolock") || has("local_lock=all") || has("local_lock=flock") => {
            Some(format!(
                "{} is NFS mounted with {}: flock only locks on this node",
                m.point.display(),
                m.options
                    .iter()
                    .find(|o| *o == "nolock" || o.starts_with("local_lock="))
                    .map_or("local locks", String::as_str)
            ))
        }
        "lustre" if !has("flock") => Some(format!(
            "{} is Lustre mounted without -o flock: flock is refused or local",
            m.point.display()
        )),
        _ => None,
    }
}

/// Filesystems that only this node sees.
pub fn is_node_local(fstype: &str) -> bool {
    matches!(
        fstype,
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "tmpfs" | "zfs" | "overlay" | "f2fs"
    )
}

/// What an Epilog script runs of carbontrack's: the wrapper's path (a word
/// ending in `carbontrack-epilog`) and a `CARBONTRACK=` it sets for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpilogUse {
    pub wrapper: Option<String>,
    pub carbontrack: Option<String>,
    /// The script calls `carbontrack epilog` itself, without the wrapper.
    pub direct: bool,
}

pub fn epilog_use(script: &str) -> EpilogUse {
    let mut u = EpilogUse::default();
    for line in script.lines() {
        let line = line.split_once('#').map_or(line, |(a, _)| a);
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
            .collect();
        for (i, w) in words.iter().enumerate() {
            if let Some(v) = w.strip_prefix("CARBONTRACK=") {
                u.carbontrack = Some(v.trim_matches(|c| c == '"' || c == '\'').to_string());
            } else if w.ends_with("carbontrack-epilog") && u.wrapper.is_none() {
                u.wrapper = Some(w.to_string());
            } else if (w.ends_with("/carbontrack") || *w == "carbontrack")
                && words.get(i + 1) == Some(&"epilog")
            {
                u.direct = true;
            }
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_conf_keys_and_includes() {
        let d = std::env::temp_dir().join(format!("ct-check-conf-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("extra.conf"), "Epilog=/etc/slurm/epilog.sh\n").unwrap();
        let c = SlurmConf::parse(
            &d.join("slurm.conf"),
            "ClusterName=x\nprologflags=Alloc, Contain # site\n#Epilog=/no\nInclude extra.conf\n\
             NodeName=n1 CPUs=2\nPrologFlags=Contain,X11\n",
        );
        assert_eq!(c.get("ClusterName"), Some("x"));
        assert_eq!(c.flags("PrologFlags"), ["contain", "x11"]);
        assert_eq!(c.get("epilog"), Some("/etc/slurm/epilog.sh"));
        assert_eq!(c.node_lines, ["NodeName=n1 CPUs=2"]);
        assert_eq!(c.get("SlurmdParameters"), None);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn versions() {
        for (text, want) in [
            ("slurm 22.05.8\n", Some((22, 5, 8))),
            ("slurm-wlm 24.11.5", Some((24, 11, 5))),
            ("slurm 23.02.0-0rc1", Some((23, 2, 0))),
            ("scontrol: error", None),
        ] {
            assert_eq!(parse_slurm_version(text), want, "{text}");
        }
        assert_eq!(version_text(0x16_05_08), "22.05.8");
        assert!(version_loads(0x16_05_08, (22, 5, 2)));
        assert!(!version_loads(0x16_05_08, (24, 11, 5)));
        assert!(!version_loads(0x18_0b_05, (24, 5, 0)));
    }

    #[test]
    fn mounts_and_their_locks() {
        let mounts = "/dev/sda1 / ext4 rw,relatime 0 0\n\
                      srv:/export /shared nfs4 rw,vers=4.2,local_lock=none 0 0\n\
                      srv:/old /shared/old nfs rw,nolock 0 0\n\
                      mds@tcp:/fs /lustre lustre rw,localflock 0 0\n\
                      mds@tcp:/fs2 /lustre2 lustre rw,flock 0 0\n";
        for (path, point, problem) in [
            ("/var/spool/ct", "/", None),
            ("/shared/ct", "/shared", None),
            ("/shared/old/ct", "/shared/old", Some("nolock")),
            ("/shared-not/x", "/", None),
            ("/lustre/ct", "/lustre", Some("without -o flock")),
            ("/lustre2/ct", "/lustre2", None),
        ] {
            let m = mount_of(mounts, Path::new(path)).unwrap();
            assert_eq!(m.point, PathBuf::from(point), "{path}");
            let p = lock_problem(&m);
            match problem {
                None => assert_eq!(p, None, "{path}"),
                Some(n) => assert!(p.as_deref().is_some_and(|p| p.contains(n)), "{path}: {p:?}"),
            }
        }
        assert!(is_node_local("ext4") && !is_node_local("nfs4"));
    }

    #[test]
    fn what_an_epilog_runs() {
        for (script, want) in [
            (
                "#!/bin/bash\nexec /usr/local/sbin/carbontrack-epilog\n",
                EpilogUse {
                    wrapper: Some("/usr/local/sbin/carbontrack-epilog".into()),
                    ..Default::default()
                },
            ),
            (
                "#!/bin/bash\nCARBONTRACK=/opt/ct/bin/carbontrack \"/opt/ct/carbontrack-epilog\"\nexit 0\n",
                EpilogUse {
                    wrapper: Some("/opt/ct/carbontrack-epilog".into()),
                    carbontrack: Some("/opt/ct/bin/carbontrack".into()),
                    direct: false,
                },
            ),
            (
                "#!/bin/sh\n/opt/ct/bin/carbontrack epilog || true\n",
                EpilogUse {
                    direct: true,
                    ..Default::default()
                },
            ),
            (
                "#!/bin/sh\n# /usr/local/sbin/carbontrack-epilog\necho done\n",
                EpilogUse::default(),
            ),
        ] {
            assert_eq!(epilog_use(script), want, "{script}");
        }
    }
}
