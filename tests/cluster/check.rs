//! `carbontrack check` against the running test cluster: a good
//! configuration passes with every item `ok`, then each item is broken once,
//! in copies of slurm.conf and plugstack.conf pointed at with flags (no
//! daemon is restarted), and check must name exactly that item, with a fix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Cluster;
use crate::common::hardware::Hardware;

const BIN: &str = env!("CARGO_BIN_EXE_carbontrack");

/// The items check reports, in its order.
const ITEMS: [&str; 13] = [
    "plugstack",
    "plugin",
    "prolog_flags",
    "cpu_attribution",
    "rapl",
    "gpus",
    "amd_gpus",
    "spool",
    "shared",
    "ledger",
    "epilog",
    "accounting",
    "intensity",
];

#[derive(Clone)]
struct Setup {
    dir: PathBuf,
    slurm_conf: String,
    plugin_args: Vec<String>,
    plugin: PathBuf,
    epilog_log: PathBuf,
}

/// One run of check: its exit status and `(item, level, message, fix)`.
struct Outcome {
    code: i32,
    items: Vec<(String, String, String, Option<String>)>,
    text: String,
}

impl Outcome {
    fn level(&self, item: &str) -> &str {
        self.items
            .iter()
            .find(|i| i.0 == item)
            .map(|i| i.1.as_str())
            .unwrap_or_else(|| panic!("no item {item} in:\n{}", self.text))
    }

    /// `item` is at `level`, its message has `needle`, and it has a fix.
    fn named(&self, item: &str, level: &str, needle: &str) {
        let (_, l, message, fix) = self
            .items
            .iter()
            .find(|i| i.0 == item)
            .unwrap_or_else(|| panic!("no item {item} in:\n{}", self.text));
        assert_eq!(l, level, "{item}:\n{}", self.text);
        assert!(
            message.contains(needle),
            "{item}: no `{needle}` in:\n{}",
            self.text
        );
        assert!(
            fix.as_ref().is_some_and(|f| !f.is_empty()),
            "{item}: no fix"
        );
    }

    /// `item` is at `level` with a fix, every other item ok.
    fn only(&self, item: &str, level: &str, needle: &str) {
        self.named(item, level, needle);
        for (name, l, _, _) in &self.items {
            if name != item {
                assert_eq!(l, "ok", "{name} while breaking {item}:\n{}", self.text);
            }
        }
        let want = if level == "fail" { 2 } else { 1 };
        assert_eq!(self.code, want, "{}", self.text);
    }
}

impl Setup {
    fn new(c: &Cluster, hw: &Hardware) -> Setup {
        let dir = c.dir.join("check");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("bin/carbontrack");
        std::fs::copy(BIN, &bin).unwrap();
        // An hourly intensity file with this hour in it.
        let hour = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 3600
            * 3600;
        let ci = dir.join("ci.csv");
        std::fs::write(&ci, format!("timestamp,g_per_kwh\n{hour},210\n")).unwrap();
        let plugin_args = hw.plugin_args(&[
            &format!("ledger={}", dir.join("ledger/ledger.csv").display()),
            &format!("intensity=file:{}", ci.display()),
        ]);
        let epilog = dir.join("epilog.sh");
        write_exec(
            &epilog,
            &format!(
                "#!/bin/bash\nCARBONTRACK={} {}\nexit 0\n",
                bin.display(),
                crate::common::repo()
                    .join("scripts/carbontrack-epilog")
                    .display()
            ),
        );
        let slurm_conf: String = std::fs::read_to_string(c.slurm_conf())
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("Epilog="))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + &format!("Epilog={}\n", epilog.display());
        Setup {
            epilog_log: dir.join("ct-epilog.log"),
            dir,
            slurm_conf,
            plugin_args,
            plugin: c.plugin.clone(),
        }
    }

    /// Check over a copy of the configuration: plugstack.conf with `extra`
    /// plugin arguments after the good ones, slurm.conf edited by `edit`.
    fn run(&self, name: &str, extra: &[String], edit: impl Fn(&str) -> String) -> Outcome {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let plugstack = d.join("plugstack.conf");
        std::fs::write(
            &plugstack,
            format!(
                "optional {} {} {}\n",
                self.plugin.display(),
                self.plugin_args.join(" "),
                extra.join(" ")
            ),
        )
        .unwrap();
        let conf = d.join("slurm.conf");
        std::fs::write(&conf, edit(&self.slurm_conf)).unwrap();
        self.check(&conf, &plugstack)
    }

    fn check(&self, conf: &Path, plugstack: &Path) -> Outcome {
        let out = Command::new(BIN)
            .args(["check", "--json", "--slurm-conf"])
            .arg(conf)
            .arg("--plugstack")
            .arg(plugstack)
            .arg("--epilog-log")
            .arg(&self.epilog_log)
            .env_remove("SLURM_CONF")
            .output()
            .expect("carbontrack check runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
        let items = json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["item"].as_str().unwrap().to_string(),
                    i["level"].as_str().unwrap().to_string(),
                    i["message"].as_str().unwrap().to_string(),
                    i["fix"].as_str().map(str::to_string),
                )
            })
            .collect();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            items,
            text,
        }
    }
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn same(s: &str) -> String {
    s.to_string()
}

fn arg(s: impl std::fmt::Display) -> Vec<String> {
    vec![s.to_string()]
}

pub fn check_names_each_broken_item(c: &Cluster, hw: &Hardware) {
    let s = Setup::new(c, hw);
    let d = &s.dir;

    // Good: every item ok, exit 0; the text form says the same, one line each.
    let good = s.run("good", &[], same);
    let names: Vec<&str> = good.items.iter().map(|i| i.0.as_str()).collect();
    assert_eq!(names, ITEMS, "{}", good.text);
    for (name, level, message, _) in &good.items {
        assert_eq!(level, "ok", "{name}: {message}\n{}", good.text);
    }
    assert_eq!(good.code, 0);
    assert!(
        good.items[1].2.contains("built for Slurm 22.05"),
        "{}",
        good.text
    );
    assert!(good.items[5].2.contains("4 GPU(s)"), "{}", good.text);
    let text = Command::new(BIN)
        .args(["check", "--slurm-conf"])
        .arg(d.join("good/slurm.conf"))
        .arg("--plugstack")
        .arg(d.join("good/plugstack.conf"))
        .arg("--epilog-log")
        .arg(&s.epilog_log)
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&text.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), ITEMS.len(), "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with("ok   ")), "{lines:#?}");

    // plugstack: a key the plugin refuses.
    s.run("plugstack", &arg("colour=blue"), same)
        .only("plugstack", "fail", "unknown key `colour`");

    // plugin: a copy of the plugin built "for 24.11" (its plugin_version patched).
    let mut so = std::fs::read(&s.plugin).unwrap();
    let at = carbontrack::check::elf::version_offset(&so).expect("plugin_version in the ELF");
    so[at..at + 4].copy_from_slice(&0x18_0b_05u32.to_le_bytes());
    let other = d.join("libcarbontrack.so");
    std::fs::write(&other, &so).unwrap();
    let copy = Setup {
        plugin: other,
        ..s.clone()
    };
    copy.run("plugin", &[], same).only(
        "plugin",
        "fail",
        "built for Slurm 24.11.5, this Slurm is 22.05",
    );

    // prolog_flags: no Contain; RunInJob.
    s.run("contain", &[], |t| {
        t.replace("PrologFlags=Contain", "#PrologFlags=Contain")
    })
    .only("prolog_flags", "warn", "lacks Contain");
    // 22.05's own commands refuse RunInJob (a 24.05 flag): only the item is asserted.
    s.run("runinjob", &[], |t| {
        t.replace("PrologFlags=Contain", "PrologFlags=Contain,RunInJob")
    })
    .named("prolog_flags", "fail", "RunInJob");

    // cpu_attribution: a NodeName layout the CPU topology does not have.
    s.run("layout", &[], |t| {
        t.lines()
            .map(|l| {
                if l.starts_with("NodeName=") {
                    l.split_whitespace()
                        .filter(|w| {
                            ![
                                "CPUs=",
                                "Sockets=",
                                "CoresPerSocket=",
                                "ThreadsPerCore=",
                                "Boards=",
                                "SocketsPerBoard=",
                            ]
                            .iter()
                            .any(|k| w.starts_with(k))
                        })
                        .chain(["Sockets=3", "CoresPerSocket=5", "ThreadsPerCore=1"])
                        .collect::<Vec<_>>()
                        .join(" ")
                        + "\n"
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    })
    .only("cpu_attribution", "warn", "3x5x1");

    // rapl: no zones.
    std::fs::create_dir_all(d.join("no-powercap")).unwrap();
    s.run(
        "rapl",
        &arg(format_args!("powercap={}", d.join("no-powercap").display())),
        same,
    )
    .only("rapl", "warn", "no RAPL zones");

    // gpus: nvml= at a library that is not there.
    s.run(
        "gpus",
        &arg(format_args!(
            "nvml={}",
            d.join("nope/libnvidia-ml.so.1").display()
        )),
        same,
    )
    .only("gpus", "fail", "not found");

    // amd_gpus: amdsmi= at a library that is not there.
    s.run(
        "amd_gpus",
        &arg(format_args!(
            "amdsmi={}",
            d.join("nope/libamd_smi.so").display()
        )),
        same,
    )
    .only("amd_gpus", "fail", "cannot load");

    // gpus: a GPU whose every NVML call hangs (off the bus): check answers
    // after its bound, naming it, and exits.
    hw.set_gpu_extra(Some((1, "hang_at = 0\nhang_for = 3600")));
    let started = std::time::Instant::now();
    let hung = s.run("gpu-hangs", &[], same);
    hw.set_gpu_extra(None);
    hung.only("gpus", "fail", "no answer within 10 s");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    // spool: writable by everyone.
    let spool = d.join("spool777");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    s.run(
        "spool",
        &arg(format_args!("spool={}", spool.display())),
        same,
    )
    .only("spool", "fail", "mode 777");

    // shared: not mounted.
    s.run(
        "shared",
        &arg(format_args!("shared={}", d.join("not-mounted").display())),
        same,
    )
    .only("shared", "fail", "not mounted");

    // ledger: its directory writable by everyone.
    let ledger = d.join("ledger777");
    std::fs::create_dir_all(&ledger).unwrap();
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o777)).unwrap();
    s.run(
        "ledger",
        &arg(format_args!("ledger={}/ledger.csv", ledger.display())),
        same,
    )
    .only("ledger", "fail", "mode 777");

    // epilog: no Epilog; one that does not exist; the wrapper finding no binary.
    s.run("no-epilog", &[], |t| t.replace("\nEpilog=", "\n#Epilog="))
        .only("epilog", "fail", "sets no Epilog");
    let missing = d.join("missing-epilog.sh");
    s.run("epilog-path", &[], |t| {
        t.lines()
            .map(|l| {
                if l.starts_with("Epilog=") {
                    format!("Epilog={}\n", missing.display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    })
    .only("epilog", "fail", "No such file");
    let lost = d.join("lost-epilog.sh");
    let wrapper = crate::common::repo().join("scripts/carbontrack-epilog");
    write_exec(
        &lost,
        &format!(
            "#!/bin/bash\nCARBONTRACK={}/not-here/carbontrack {}\n",
            d.display(),
            wrapper.display()
        ),
    );
    let to_lost = |t: &str| -> String {
        t.lines()
            .map(|l| {
                if l.starts_with("Epilog=") {
                    format!("Epilog={}\n", lost.display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    };
    s.run("epilog-bin", &[], to_lost)
        .only("epilog", "fail", "finds no carbontrack binary");
    // The wrapper itself, run as slurmd runs it, says so where check reads it.
    let ran = Command::new("env")
        .arg("-i")
        .arg(format!("CARBONTRACK_EPILOG_LOG={}", s.epilog_log.display()))
        .arg("SLURM_JOB_ID=4242")
        .arg(&lost)
        .status()
        .unwrap();
    assert!(ran.success(), "the wrapper exits 0");
    let logged = std::fs::read_to_string(&s.epilog_log).unwrap();
    assert!(
        logged.contains("job 4242: carbontrack binary not found"),
        "{logged}"
    );
    s.run("epilog-log", &[], same)
        .only("epilog", "warn", "job 4242: carbontrack binary not found");
    std::fs::remove_file(&s.epilog_log).unwrap();

    // accounting: no slurmdbd configured; a cluster slurmdbd does not know.
    s.run("no-dbd", &[], |t| {
        t.replace("AccountingStorageType=", "#AccountingStorageType=")
    })
    .only("accounting", "fail", "no slurmdbd");
    s.run("cluster-name", &[], |t| {
        t.lines()
            .map(|l| {
                if l.starts_with("ClusterName=") {
                    "ClusterName=nosuchcluster\n".to_string()
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    })
    .only("accounting", "fail", "knows no cluster `nosuchcluster`");

    // intensity: the hourly file is not there.
    s.run(
        "intensity",
        &arg(format_args!(
            "intensity=file:{}",
            d.join("gone.csv").display()
        )),
        same,
    )
    .only("intensity", "fail", "gone.csv");
    assert_eq!(s.run("good-again", &[], same).level("epilog"), "ok");

    // Not root: every item still answers; what only root can see is a
    // warning that says so, not a failure.
    let out = c
        .as_user(
            d.join("bin/carbontrack").to_str().unwrap(),
            &[
                "check",
                "--json",
                "--slurm-conf",
                d.join("good/slurm.conf").to_str().unwrap(),
                "--plugstack",
                d.join("good/plugstack.conf").to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), ITEMS.len(), "{v}");
    let accounting = items.iter().find(|i| i["item"] == "accounting").unwrap();
    assert_eq!(accounting["level"], "warn", "{v}");
    assert!(
        accounting["message"].as_str().unwrap().contains("not root"),
        "{v}"
    );
    assert_eq!(out.status.code(), Some(1), "{v}");
}
