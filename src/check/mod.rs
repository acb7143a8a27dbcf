//! `carbontrack check`: is this node set up right? One line per item
//! (`ok`, `warn` or `fail`, with the fix), exit status 0 (all ok), 1
//! (warnings) or 2 (a failure); `--json` for tooling.
//!
//! Each item uses the very code the plugin or the Epilog uses for the same
//! thing ([`items`]); the parsing is pure and tested by tables ([`conf`]);
//! the plugin's release is read from its ELF file, never by loading it
//! ([`elf`]).

pub mod conf;
pub mod elf;
pub mod items;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

pub use items::Inputs;

/// How an item stands, worst last (the order is the exit status's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One item's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable name (`plugstack`, `plugin`, `prolog_flags`, …).
    pub item: &'static str,
    pub level: Level,
    pub message: String,
    /// What to do; `None` when all is well.
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(
        item: &'static str,
        level: Level,
        message: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) -> Finding {
        Finding {
            item,
            level,
            message: message.into(),
            fix: fix.map(Into::into),
        }
    }

    /// `fail spool: <message>; fix: <fix>` on one line.
    pub fn line(&self) -> String {
        let one = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut l = format!(
            "{:<4} {}: {}",
            self.level.word(),
            self.item,
            one(&self.message)
        );
        if let Some(f) = &self.fix {
            l.push_str("; fix: ");
            l.push_str(&one(f));
        }
        l
    }
}

/// The worst level among the findings (`Ok` for none).
pub fn worst(findings: &[Finding]) -> Level {
    findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
}

/// 0 all ok, 1 warnings, 2 a failure.
pub fn exit_status(findings: &[Finding]) -> u8 {
    match worst(findings) {
        Level::Ok => 0,
        Level::Warn => 1,
        Level::Fail => 2,
    }
}

/// The human form: one line per item.
pub fn render_text(findings: &[Finding]) -> String {
    findings.iter().map(|f| f.line() + "\n").collect()
}

/// The tooling form: `{"status": "ok|warn|fail", "items": [...]}`.
pub fn render_json(findings: &[Finding]) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        status: Level,
        items: &'a [Finding],
    }
    serde_json::to_string_pretty(&Doc {
        status: worst(findings),
        items: findings,
    })
    .unwrap_or_default()
        + "\n"
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// slurm.conf to check (default: $SLURM_CONF, else /etc/slurm/slurm.conf).
    #[arg(long, value_name = "FILE")]
    pub slurm_conf: Option<PathBuf>,
    /// plugstack.conf to check (default: PlugStackConfig of slurm.conf).
    #[arg(long, value_name = "FILE")]
    pub plugstack: Option<PathBuf>,
    /// This node's NodeName in slurm.conf (default: the short host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Print JSON instead of one line per item.
    #[arg(long)]
    pub json: bool,
    /// The scontrol command.
    #[arg(long, value_name = "PATH", default_value = "scontrol")]
    pub scontrol: PathBuf,
    /// The sacctmgr command.
    #[arg(long, value_name = "PATH", default_value = "sacctmgr")]
    pub sacctmgr: PathBuf,
    /// How long one Slurm command may run.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub command_timeout: Duration,
    /// The Epilog wrapper's own log (what it could not hand to the binary).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_EPILOG_LOG)]
    pub epilog_log: PathBuf,
}

/// Where scripts/carbontrack-epilog writes what it cannot hand to the
/// binary (`CARBONTRACK_EPILOG_LOG` there): slurmd keeps no Epilog output.
pub const DEFAULT_EPILOG_LOG: &str = "/var/log/carbontrack-epilog.log";

pub fn check_main(a: &CheckArgs) -> ExitCode {
    let node = a.node.clone().unwrap_or_else(|| {
        let h = crate::host::hostname();
        h.split('.').next().unwrap_or(&h).to_string()
    });
    let inputs = Inputs {
        slurm_conf: a
            .slurm_conf
            .clone()
            .unwrap_or_else(crate::report::plugstack::slurm_conf),
        plugstack: a.plugstack.clone(),
        node,
        scontrol: a.scontrol.clone(),
        sacctmgr: a.sacctmgr.clone(),
        timeout: a.command_timeout,
        euid: crate::ffi::identity::euid(),
        epilog_log: a.epilog_log.clone(),
    };
    let findings = items::run_all(&inputs);
    if a.json {
        print!("{}", render_json(&findings));
    } else {
        print!("{}", render_text(&findings));
    }
    ExitCode::from(exit_status(&findings))
}

#[cfg(test)]
mod tests;
