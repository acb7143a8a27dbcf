use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::conf::SlurmConf;
use super::items::*;
use super::*;
use crate::config::Config;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ct-check-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn lines_levels_and_exit_status() {
    let f = |level| Finding::new("spool", level, "a\n b", Some("do  x"));
    assert_eq!(f(Level::Fail).line(), "fail spool: a b; fix: do x");
    assert_eq!(
        Finding::new("rapl", Level::Ok, "2 zones", None::<String>).line(),
        "ok   rapl: 2 zones"
    );
    for (levels, want) in [
        (vec![], 0),
        (vec![Level::Ok, Level::Ok], 0),
        (vec![Level::Ok, Level::Warn], 1),
        (vec![Level::Warn, Level::Fail, Level::Ok], 2),
    ] {
        let fs: Vec<Finding> = levels.into_iter().map(f).collect();
        assert_eq!(exit_status(&fs), want, "{fs:?}");
    }
    let json: serde_json::Value = serde_json::from_str(&render_json(&[
        f(Level::Warn),
        Finding::new("rapl", Level::Ok, "2 zones", None::<String>),
    ]))
    .unwrap();
    assert_eq!(json["status"], "warn");
    assert_eq!(json["items"][0]["item"], "spool");
    assert_eq!(json["items"][0]["level"], "warn");
    assert_eq!(json["items"][0]["fix"], "do  x");
    assert_eq!(json["items"][1]["fix"], serde_json::Value::Null);
}

#[test]
fn prolog_flags_table() {
    for (text, level, needle) in [
        ("PrologFlags=Contain\n", Level::Ok, "PrologFlags=Contain"),
        (
            "PrologFlags=Alloc,Contain,X11\n",
            Level::Ok,
            "Alloc,Contain,X11",
        ),
        ("ClusterName=x\n", Level::Warn, "lacks Contain"),
        ("PrologFlags=Contain,RunInJob\n", Level::Fail, "RunInJob"),
        (
            "PrologFlags=Contain\nSlurmdParameters=config_overrides,contain_spank\n",
            Level::Fail,
            "contain_spank",
        ),
    ] {
        let f = prolog_flags_item(&SlurmConf::parse(Path::new("/etc/slurm/slurm.conf"), text));
        assert_eq!(f.level, level, "{text}: {f:?}");
        assert!(f.message.contains(needle), "{text}: {f:?}");
        assert_eq!(f.fix.is_some(), level != Level::Ok);
    }
}

#[test]
fn plugstack_keys_are_validated_by_the_plugins_parser() {
    let d = dir("plugstack");
    let p = d.join("plugstack.conf");
    for (text, level, needle) in [
        (
            "optional /usr/lib/slurm/libcarbontrack.so mode=always pue=1.2\n",
            Level::Ok,
            "2 key(s), all accepted (mode always)",
        ),
        (
            "optional /usr/lib/slurm/libcarbontrack.so colour=blue\n",
            Level::Fail,
            "unknown key `colour`",
        ),
        (
            "optional /usr/lib/slurm/libcarbontrack.so intensity=electricitymaps:DK\n",
            Level::Fail,
            "needs intensity_key=",
        ),
        (
            "required /usr/lib/slurm/libcarbontrack.so\n",
            Level::Warn,
            "`required`",
        ),
        (
            "optional /usr/lib/slurm/libcarbontrack.so accounting_field=Comment\n",
            Level::Warn,
            "forged",
        ),
        (
            "optional /usr/lib/slurm/other.so\n",
            Level::Fail,
            "no libcarbontrack.so line",
        ),
    ] {
        fs::write(&p, text).unwrap();
        let (f, _, _) = plugstack_item(&p);
        assert_eq!(f.level, level, "{text}: {f:?}");
        assert!(f.message.contains(needle), "{text}: {f:?}");
    }
    let (f, line, _) = plugstack_item(&d.join("missing.conf"));
    assert_eq!((f.level, line), (Level::Fail, None));
    assert!(f.fix.unwrap().contains("PlugStackConfig="));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn plugin_file_that_is_not_a_plugin() {
    let d = dir("plugin");
    let p = d.join("plugstack.conf");
    let slurm = SlurmConf::default();
    fs::write(&p, format!("optional {}/libcarbontrack.so\n", d.display())).unwrap();
    let (_, line, _) = plugstack_item(&p);
    let f = plugin_item(line.as_ref(), &slurm, &Ok((22, 5, 8)));
    assert_eq!(f.level, Level::Fail, "{f:?}");
    assert!(f.message.contains("No such file"), "{f:?}");
    assert!(f.fix.unwrap().contains("install -D -m 0755"));
    fs::write(d.join("libcarbontrack.so"), b"\x7fELF garbage").unwrap();
    let f = plugin_item(line.as_ref(), &slurm, &Ok((22, 5, 8)));
    assert!(f.message.contains("not an ELF library"), "{f:?}");
    assert!(super::elf::version_in(b"hello").is_err());
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn directories_root_keeps() {
    let d = dir("dirs");
    let spool = d.join("spool");
    let cfg = |spool: &Path| Config {
        spool: spool.to_path_buf(),
        ..Config::default()
    };
    let euid = crate::ffi::identity::euid();
    let f = spool_item(&cfg(&spool), euid);
    if euid == 0 {
        assert_eq!(f.level, Level::Ok, "{f:?}");
        assert!(f.message.contains("does not exist yet"), "{f:?}");
    } else {
        assert!(
            f.level == Level::Warn && f.message.contains("not root"),
            "{f:?}"
        );
    }
    fs::create_dir(&spool).unwrap();
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(spool_item(&cfg(&spool), euid).level, Level::Ok);
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o777)).unwrap();
    let f = spool_item(&cfg(&spool), euid);
    assert_eq!(f.level, if euid == 0 { Level::Fail } else { Level::Warn });
    assert!(f.message.contains("mode 777"), "{f:?}");
    if euid == 0 {
        assert!(f.fix.unwrap().contains("chmod 700"));
    }
    let shared = Config {
        shared: Some(d.join("no-such-mount")),
        ..Config::default()
    };
    let f = shared_item(&shared, euid);
    assert_eq!(f.level, Level::Fail, "{f:?}");
    assert!(f.message.contains("not mounted"), "{f:?}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn intensity_sources() {
    let d = dir("intensity");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_590_400); // 2025-12-01T12:00Z
    let file = d.join("ci.csv");
    let cfg = |spec: &str| Config::from_args([format!("intensity={spec}")]).unwrap();
    let f = intensity_item(&cfg(&format!("file:{}", file.display())), now);
    assert_eq!(f.level, Level::Fail, "{f:?}");
    assert!(
        f.message.contains("ci.csv") && f.message.contains("world"),
        "{f:?}"
    );
    fs::write(&file, "timestamp,g_per_kwh\n2025-12-01T11:00:00Z,120\n").unwrap();
    let f = intensity_item(&cfg(&format!("file:{}", file.display())), now);
    assert_eq!(f.level, Level::Ok, "{f:?}");
    fs::write(&file, "timestamp,g_per_kwh\n2025-11-01T11:00:00Z,120\n").unwrap();
    let f = intensity_item(&cfg(&format!("file:{}", file.display())), now);
    assert_eq!(f.level, Level::Warn, "{f:?}");
    fs::write(&file, "timestamp,g_per_kwh\nyesterday,120\n").unwrap();
    let f = intensity_item(&cfg(&format!("file:{}", file.display())), now);
    assert!(
        f.level == Level::Fail && f.message.contains("line 2"),
        "{f:?}"
    );
    for spec in ["DK", "120"] {
        assert_eq!(intensity_item(&cfg(spec), now).level, Level::Ok);
    }
    let f = intensity_item(
        &Config::from_args([
            "intensity=electricitymaps:DK".to_string(),
            format!("intensity_key={}", d.join("em.key").display()),
        ])
        .unwrap(),
        now,
    );
    assert_eq!(f.level, Level::Fail, "{f:?}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn no_rapl_and_no_nvml() {
    let d = dir("hw");
    let cfg = Config {
        powercap: d.clone(),
        nvml: d.join("libnvidia-ml.so.1"),
        ..Config::default()
    };
    let f = rapl_item(&cfg, 0);
    assert!(
        f.level == Level::Warn && f.message.contains("no RAPL zones"),
        "{f:?}"
    );
    // An nvml= path that is not there is a mistake; no driver on a node
    // without NVIDIA devices is not.
    let f = gpu_item(&cfg, &d);
    assert!(
        f.level == Level::Fail && f.message.contains("not found"),
        "{f:?}"
    );
    let cpu_node = Config {
        nvml: PathBuf::from("libnvidia-ml-not-here.so.1"),
        ..cfg.clone()
    };
    assert_eq!(gpu_item(&cpu_node, &d).level, Level::Ok);
    fs::write(d.join("nvidia0"), b"").unwrap();
    assert_eq!(gpu_item(&cpu_node, &d).level, Level::Fail);
    fs::remove_dir_all(&d).unwrap();
}

/// An `amdsmi=` path that does not load is a mistake; no AMD SMI on a node
/// without render nodes is not; render nodes without it are worth a word.
#[test]
fn amd_smi_missing() {
    let d = dir("amd");
    let cfg = Config {
        amdsmi: d.join("libamd_smi.so"),
        ..Config::default()
    };
    let f = amd_gpu_item(&cfg, &d);
    assert!(
        f.level == Level::Fail && f.message.contains("cannot load") && f.fix.is_some(),
        "{f:?}"
    );
    let cpu_node = Config {
        amdsmi: PathBuf::from("libamd_smi-not-here.so"),
        ..cfg.clone()
    };
    let f = amd_gpu_item(&cpu_node, &d);
    assert!(
        f.level == Level::Ok && f.message.contains("no AMD GPU"),
        "{f:?}"
    );
    fs::write(d.join("renderD128"), b"").unwrap();
    let f = amd_gpu_item(&cpu_node, &d);
    assert!(
        f.level == Level::Warn && f.message.contains("1 render node"),
        "{f:?}"
    );
    fs::remove_dir_all(&d).unwrap();
}
