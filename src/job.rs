//! What carbontrack knows about one tracked job, as the prolog hands it to the
//! step that samples: the extern step receives no options and no job
//! environment (slurm-facts.md), so everything it needs travels in this record.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::carbon::budget::{CarbonBudget, parse_budget};
use crate::measure::cores::NodeLayout;

/// The hand-off record, written by `slurm_spank_job_prolog` into the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub job_id: u32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, so files are written with the user's full identity.
    pub groups: Vec<u32>,
    pub user: String,
    pub account: String,
    pub partition: String,
    /// Slurm's name for this node (`SLURMD_NODENAME`), as sacct shows it.
    pub node: String,
    pub work_dir: Option<PathBuf>,
    /// `SLURM_JOB_GPUS` as the prolog saw it (Slurm's global indices).
    pub slurm_gpus: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` as the prolog saw it.
    pub cuda_visible: Option<String>,
    /// `ROCR_VISIBLE_DEVICES` (else `HIP_VISIBLE_DEVICES`) as the prolog saw it.
    pub rocr_visible: Option<String>,
    /// `--carbon-epochs=N`: total epochs, for prediction.
    pub epochs: Option<u32>,
    /// `--carbon-budget=AMOUNT`.
    pub budget: Option<CarbonBudget>,
    /// The node's CPU layout in Slurm's terms (slurm.conf's NodeName line),
    /// as the prolog read it, or why it could not: what Slurm's core ids of
    /// the job (`S_JOB_ALLOC_CORES`, read by the sampling step) are mapped
    /// to packages with.
    pub layout: Result<NodeLayout, String>,
    /// The job's CPUs on this node (`SLURM_JOB_CPUS_PER_NODE` in the
    /// prolog; the extern step's `S_JOB_NCPUS` is 0): the count fallback.
    pub cpus_on_node: Option<u32>,
}

impl Default for JobInfo {
    fn default() -> JobInfo {
        JobInfo {
            job_id: 0,
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            user: String::new(),
            account: String::new(),
            partition: String::new(),
            node: String::new(),
            work_dir: None,
            slurm_gpus: None,
            cuda_visible: None,
            rocr_visible: None,
            epochs: None,
            budget: None,
            layout: Err(NO_LAYOUT.to_string()),
            cpus_on_node: None,
        }
    }
}

/// The layout of a record that has none (written by an older carbontrack).
const NO_LAYOUT: &str = "the hand-off has no node layout";

/// A hand-off record that could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobInfoError {
    #[error("line {0} is not key=value")]
    NotKeyValue(usize),
    #[error("`{key}` has a bad value `{value}`")]
    BadValue { key: &'static str, value: String },
    #[error("`{0}` is missing")]
    Missing(&'static str),
}

impl JobInfo {
    /// One `key=value` line each; values never hold a newline (they are
    /// replaced), so a hostile work dir name cannot inject keys.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut put = |k: &str, v: &str| {
            let clean: String = v
                .chars()
                .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                .collect();
            let _ = writeln!(s, "{k}={clean}");
        };
        put("job_id", &self.job_id.to_string());
        put("uid", &self.uid.to_string());
        put("gid", &self.gid.to_string());
        put(
            "groups",
            &self
                .groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        put("user", &self.user);
        put("account", &self.account);
        put("partition", &self.partition);
        put("node", &self.node);
        if let Some(d) = &self.work_dir {
            put("work_dir", &d.to_string_lossy());
        }
        if let Some(g) = &self.slurm_gpus {
            put("slurm_gpus", g);
        }
        if let Some(c) = &self.cuda_visible {
            put("cuda_visible", c);
        }
        if let Some(r) = &self.rocr_visible {
            put("rocr_visible", r);
        }
        if let Some(n) = self.epochs {
            put("epochs", &n.to_string());
        }
        if let Some(b) = self.budget {
            put("budget", &b.to_string());
        }
        match &self.layout {
            Ok(l) => put("node_layout", &l.to_string()),
            Err(why) => put("node_layout_unknown", why),
        }
        if let Some(n) = self.cpus_on_node {
            put("cpus_on_node", &n.to_string());
        }
        s
    }

    pub fn from_text(text: &str) -> Result<JobInfo, JobInfoError> {
        let mut kv = BTreeMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or(JobInfoError::NotKeyValue(i + 1))?;
            kv.insert(k, v);
        }
        fn num(kv: &BTreeMap<&str, &str>, key: &'static str) -> Result<u32, JobInfoError> {
            let v = kv.get(key).ok_or(JobInfoError::Missing(key))?;
            v.parse().map_err(|_| JobInfoError::BadValue {
                key,
                value: v.to_string(),
            })
        }
        let groups = match kv.get("groups") {
            None | Some(&"") => Vec::new(),
            Some(g) => g
                .split(',')
                .map(|x| {
                    x.parse().map_err(|_| JobInfoError::BadValue {
                        key: "groups",
                        value: g.to_string(),
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let text = |k: &str| kv.get(k).map(|v| v.to_string());
        Ok(JobInfo {
            job_id: num(&kv, "job_id")?,
            uid: num(&kv, "uid")?,
            gid: num(&kv, "gid")?,
            groups,
            user: text("user").unwrap_or_default(),
            account: text("account").unwrap_or_default(),
            partition: text("partition").unwrap_or_default(),
            node: text("node").unwrap_or_default(),
            work_dir: text("work_dir").map(PathBuf::from),
            slurm_gpus: text("slurm_gpus"),
            cuda_visible: text("cuda_visible"),
            rocr_visible: text("rocr_visible"),
            epochs: match kv.get("epochs") {
                Some(_) => Some(num(&kv, "epochs")?),
                None => None,
            },
            budget: match kv.get("budget") {
                Some(b) => Some(parse_budget(b).map_err(|_| JobInfoError::BadValue {
                    key: "budget",
                    value: b.to_string(),
                })?),
                None => None,
            },
            layout: match (kv.get("node_layout"), text("node_layout_unknown")) {
                (Some(l), _) => Ok(l.parse().map_err(|_| JobInfoError::BadValue {
                    key: "node_layout",
                    value: l.to_string(),
                })?),
                (None, Some(why)) => Err(why),
                (None, None) => Err(NO_LAYOUT.to_string()),
            },
            cpus_on_node: match kv.get("cpus_on_node") {
                Some(_) => Some(num(&kv, "cpus_on_node")?),
                None => None,
            },
        })
    }
}

/// `SLURM_JOB_CPUS_PER_NODE` (`4`, `2(x3)`, `2(x3),1`) as one count when
/// every node of the job has the same; `None` when they differ.
pub fn cpus_per_node(text: &str) -> Option<u32> {
    let t = text.trim();
    let n = match t.split_once('(') {
        Some((n, rest)) if rest.starts_with('x') && rest.ends_with(')') => n,
        Some(_) => return None,
        None => t,
    };
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_resists_injection() {
        let j = JobInfo {
            job_id: 42,
            uid: 1000,
            gid: 100,
            groups: vec![100, 27],
            user: "alice".into(),
            account: "ml".into(),
            partition: "gpu".into(),
            node: "n1".into(),
            work_dir: Some(PathBuf::from("/home/alice/run\nuid=0")),
            slurm_gpus: Some("0,1".into()),
            cuda_visible: Some("0,1".into()),
            rocr_visible: Some("1".into()),
            epochs: Some(10),
            budget: Some(crate::carbon::budget::parse_budget("1.5kWh").unwrap()),
            layout: Ok("2x16x2".parse().unwrap()),
            cpus_on_node: Some(4),
        };
        let back = JobInfo::from_text(&j.to_text()).unwrap();
        assert_eq!(back.uid, 1000);
        assert_eq!(back.work_dir, Some(PathBuf::from("/home/alice/run uid=0")));
        assert_eq!(
            JobInfo {
                work_dir: j.work_dir.clone(),
                ..back.clone()
            },
            j
        );

        let minimal = JobInfo {
            job_id: 7,
            uid: 1,
            gid: 2,
            ..Default::default()
        };
        assert_eq!(JobInfo::from_text(&minimal.to_text()).unwrap(), minimal);
        let unknown = JobInfo {
            layout: Err("no NodeName line for `n1` in /etc/slurm/slurm.conf".into()),
            ..minimal.clone()
        };
        assert_eq!(JobInfo::from_text(&unknown.to_text()).unwrap(), unknown);
        // A record of an older carbontrack has no layout: unknown, not refused.
        let old = "job_id=7\nuid=1\ngid=2\n";
        assert_eq!(
            JobInfo::from_text(old).unwrap().layout,
            Err(NO_LAYOUT.into())
        );
        assert!(matches!(
            JobInfo::from_text("job_id=7\nuid=1\ngid=2\nnode_layout=2x2\n"),
            Err(JobInfoError::BadValue {
                key: "node_layout",
                ..
            })
        ));
    }

    #[test]
    fn cpus_per_node_as_slurm_writes_it() {
        for (text, want) in [
            ("4", Some(4)),
            ("2(x3)", Some(2)),
            (" 16 ", Some(16)),
            ("2(x3),1", None),
            ("", None),
            ("x", None),
        ] {
            assert_eq!(cpus_per_node(text), want, "{text:?}");
        }
    }

    #[test]
    fn refuses_broken_records() {
        assert_eq!(
            JobInfo::from_text("job_id=1\nuid=2\n"),
            Err(JobInfoError::Missing("gid"))
        );
        assert_eq!(
            JobInfo::from_text("garbage"),
            Err(JobInfoError::NotKeyValue(1))
        );
        assert!(matches!(
            JobInfo::from_text("job_id=x\nuid=1\ngid=1"),
            Err(JobInfoError::BadValue { key: "job_id", .. })
        ));
    }
}
