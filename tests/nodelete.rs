//! The plugin stays mapped after Slurm unloads it (`dlclose` after
//! `slurm_spank_exit`): a thread of ours still in a device or filesystem call
//! then returns into code that is still there, instead of crashing
//! slurmstepd. Checked on the built library with the system's own loader
//! (through Python's ctypes, so no `unsafe` here).

use std::path::PathBuf;
use std::process::Command;

fn plugin() -> PathBuf {
    // target/debug/deps/nodelete-<hash> -> target/debug/libcarbontrack.so
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("libcarbontrack.so")
}

#[test]
fn the_plugin_is_linked_nodelete() {
    let so = plugin();
    assert!(so.exists(), "{} not built", so.display());
    let out = Command::new("readelf").arg("-d").arg(&so).output();
    let Ok(out) = out else {
        assert!(
            std::env::var_os("CI").is_none(),
            "readelf (binutils) is missing"
        );
        eprintln!("skipped: no readelf");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("FLAGS_1") && l.contains("NODELETE")),
        "no NODELETE in the dynamic section:\n{text}"
    );
}

#[test]
fn dlclose_leaves_the_plugin_mapped() {
    let so = plugin();
    // Load, unload as Slurm does, then ask the loader whether it is still
    // there without loading it again (RTLD_NOLOAD fails for a library that
    // is not loaded).
    let script = r#"
import ctypes, os, sys
path = sys.argv[1]
lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
handle = lib._handle
del lib
libdl = ctypes.CDLL(None)
libdl.dlclose.argtypes = [ctypes.c_void_p]
assert libdl.dlclose(handle) == 0
libdl.dlopen.restype = ctypes.c_void_p
libdl.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
again = libdl.dlopen(path.encode(), os.RTLD_NOW | os.RTLD_NOLOAD)
print("mapped" if again else "unmapped")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&so)
        .output();
    let Ok(out) = out else {
        assert!(std::env::var_os("CI").is_none(), "python3 is missing");
        eprintln!("skipped: no python3");
        return;
    };
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.trim(), "mapped");
}
