//! What the running Slurm was configured with, read from its own parsed
//! `slurm.conf`: the global `slurm_conf` of libslurmfull, which every Slurm
//! process that loads the plugin links. Looked up by name at run time, like
//! every Slurm symbol here, so the plugin still loads where it is absent.

use super::sys::{SLURM_VERSION_NUMBER, slurm_conf_t};

/// `PROLOG_FLAG_RUN_IN_JOB` of `slurm/slurm.h` (Slurm 24.05 and later; the bit
/// is unused before), defined here because older headers lack it.
const PROLOG_FLAG_RUN_IN_JOB: u16 = 0x0080;
/// `CONF_FLAG_CONTAIN_SPANK` of `slurm/slurm.h`, 24.05 to 25.11 alike. Older
/// releases use the bit for something else, hence the version check. The flag,
/// not `SlurmdParameters` itself, is what slurmd passes on to slurmstepd.
const CONF_FLAG_CONTAIN_SPANK: u32 = 1 << 15;
/// Slurm 24.05 as `SLURM_VERSION_NUMBER` writes it.
const SLURM_24_05: u32 = 0x18_05_00;

/// The configuration as far as the plugin cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmConf {
    /// `PrologFlags=RunInJob`: the Prolog and Epilog run inside the extern
    /// step instead of slurmd.
    pub run_in_job: bool,
    /// `SlurmdParameters=contain_spank`: SPANK task callbacks run in a child
    /// process cloned for each call.
    pub contain_spank: bool,
}

/// The configuration of the Slurm process this runs in; `None` outside Slurm
/// (the `carbontrack` command, tests) or before Slurm has read its config.
pub fn current() -> Option<SlurmConf> {
    let this = libloading::os::unix::Library::this();
    // SAFETY: `slurm_conf` is a data symbol; asking for a pointer-typed symbol
    // yields its address. Its layout is the one of the headers this plugin was
    // built against, and Slurm refuses a plugin whose version differs from its
    // own in major.minor, the granularity at which slurm_conf_t changes.
    let conf: *const slurm_conf_t = unsafe {
        match this.get::<*const slurm_conf_t>(b"slurm_conf\0") {
            Ok(sym) => *sym,
            Err(_) => return None,
        }
    };
    if conf.is_null() {
        return None;
    }
    // SAFETY: `conf` points at Slurm's global, alive for the whole process.
    // The fields are read, never written; Slurm writes them only while it
    // (re)reads its configuration, before it loads SPANK plugins for a step.
    let (prolog_flags, conf_flags, cluster) = unsafe {
        (
            (*conf).prolog_flags,
            (*conf).conf_flags,
            (*conf).cluster_name,
        )
    };
    // A configuration that was never read has no cluster name (a required key).
    if cluster.is_null() {
        return None;
    }
    Some(from_flags(prolog_flags, conf_flags, SLURM_VERSION_NUMBER))
}

fn from_flags(prolog_flags: u16, conf_flags: u32, version: u32) -> SlurmConf {
    let newer = version >= SLURM_24_05;
    SlurmConf {
        run_in_job: newer && prolog_flags & PROLOG_FLAG_RUN_IN_JOB != 0,
        contain_spank: newer && conf_flags & CONF_FLAG_CONTAIN_SPANK != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_count_only_from_the_release_that_defines_them() {
        let v22_05 = 0x16_05_08;
        let v24_11 = 0x18_0b_05;
        for (prolog, conf, version, want) in [
            (0x0004, 0, v24_11, (false, false)),
            (0x0084, 0, v24_11, (true, false)),
            (0x0004, 1 << 15, v24_11, (false, true)),
            (0x0084, 1 << 15, v22_05, (false, false)),
        ] {
            let c = from_flags(prolog, conf, version);
            assert_eq!(
                (c.run_in_job, c.contain_spank),
                want,
                "{prolog:#x} {conf:#x}"
            );
        }
    }

    #[test]
    fn outside_slurm_there_is_no_configuration() {
        assert_eq!(current(), None);
    }
}
