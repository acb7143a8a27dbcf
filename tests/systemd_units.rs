//! The shipped systemd units for `carbontrack flush` (slurm-conf/systemd/)
//! are valid to systemd, start the command the README installs, and treat
//! "jobs still queued" (exit 1) as success but "could not run" (2) as failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn units() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm-conf/systemd")
}

/// The value of `key=` in a unit file, the last one set.
fn setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

#[test]
fn the_flush_service_runs_the_installed_binary_and_tolerates_a_queue() {
    let service = std::fs::read_to_string(units().join("carbontrack-flush.service")).unwrap();
    assert_eq!(
        setting(&service, "ExecStart").as_deref(),
        Some("/usr/local/bin/carbontrack flush")
    );
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains("install -D -m 0755 target/release/carbontrack /usr/local/bin/carbontrack"),
        "the README installs the binary where the unit runs it"
    );
    assert_eq!(setting(&service, "SuccessExitStatus").as_deref(), Some("1"));
    assert_eq!(setting(&service, "Type").as_deref(), Some("oneshot"));
    let timer = std::fs::read_to_string(units().join("carbontrack-flush.timer")).unwrap();
    assert_eq!(setting(&timer, "OnUnitActiveSec").as_deref(), Some("5min"));
}

#[test]
fn systemd_accepts_the_units() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var("CI").is_err(),
            "systemd-analyze is needed under CI (package systemd)"
        );
        println!("SKIPPED: no systemd-analyze here");
        return;
    };
    assert!(out.status.success());
    // verify wants the ExecStart binary to exist: point it at this build's.
    let dir = std::env::temp_dir().join(format!("carbontrack-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = env!("CARGO_BIN_EXE_carbontrack");
    let service = std::fs::read_to_string(units().join("carbontrack-flush.service"))
        .unwrap()
        .replace("/usr/local/bin/carbontrack", bin);
    std::fs::write(dir.join("carbontrack-flush.service"), service).unwrap();
    std::fs::copy(
        units().join("carbontrack-flush.timer"),
        dir.join("carbontrack-flush.timer"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("carbontrack-flush.service"))
        .arg(dir.join("carbontrack-flush.timer"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
