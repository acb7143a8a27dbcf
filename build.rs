//! Generates Rust declarations for the SPANK API from the installed Slurm
//! headers. The plugin must be built against the headers of the Slurm it runs
//! under (Slurm refuses a plugin whose major.minor version differs), so the
//! headers are never vendored.
//!
//! Functions are generated in bindgen's dynamic-loading form: the plugin looks
//! every Slurm function up at run time instead of leaving undefined symbols.
//! rustc links cdylibs with `-z now`, and some SPANK functions exist only in
//! some of the processes that load the plugin (sbatch, srun, slurmstepd, ...).

#[cfg(feature = "slurm")]
use std::env;
#[cfg(feature = "slurm")]
use std::path::{Path, PathBuf};

#[cfg(feature = "slurm")]
const HEADER_PACKAGES: &str = "install the Slurm headers (Debian/Ubuntu: \
     `apt-get install libslurm-dev`; RHEL/Rocky: `dnf install slurm-devel`) or set \
     SLURM_INCLUDE_DIR to the directory that holds slurm/spank.h";

#[cfg(feature = "slurm")]
const CLANG_PACKAGES: &str = "install libclang (Debian/Ubuntu: `apt-get install \
     libclang-dev`; RHEL/Rocky: `dnf install clang-devel`) or set LIBCLANG_PATH";

#[cfg(feature = "slurm")]
const HEADERS: [&str; 3] = ["slurm/spank.h", "slurm/slurm_version.h", "slurm/slurm.h"];

fn main() {
    // Without the `slurm` feature there is no plugin to bind: the CLI builds
    // with no Slurm headers and no libclang (macOS, a laptop).
    #[cfg(feature = "slurm")]
    slurm_bindings();
}

#[cfg(feature = "slurm")]
fn slurm_bindings() {
    println!("cargo:rerun-if-changed=spank/wrapper.h");
    // Slurm unloads the plugin after `slurm_spank_exit`; a thread of ours
    // left in a call that never returns (NVML on a GPU that fell off the bus,
    // a read on a dead NFS server) would then come back into unmapped code
    // and crash slurmstepd. NODELETE keeps the library mapped for the life
    // of the process (tests/nodelete.rs checks it).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");

    let candidates: Vec<PathBuf> = match env::var_os("SLURM_INCLUDE_DIR") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec!["/usr/include".into(), "/usr/local/include".into()],
    };
    let Some(include) = candidates.iter().find(|d| has_headers(d)) else {
        let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
        fail(&format!(
            "carbontrack: Slurm headers ({}) not found in {}: {HEADER_PACKAGES}",
            HEADERS.join(", "),
            looked.join(", ")
        ));
    };
    for h in HEADERS {
        println!("cargo:rerun-if-changed={}", include.join(h).display());
    }

    let builder = bindgen::Builder::default()
        .header("spank/wrapper.h")
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function("spank_.*")
        .allowlist_function("slurm_(info|error|verbose|debug|spank_log)")
        .allowlist_type("spank_.*")
        // The running Slurm's configuration (a global of libslurmfull), read
        // for the PrologFlags and SlurmdParameters the plugin must adapt to.
        .allowlist_type("slurm_conf_t")
        .allowlist_var("SLURM_VERSION_NUMBER")
        .allowlist_var("SLURM_(BATCH_SCRIPT|EXTERN_CONT|INTERACTIVE_STEP|PENDING_STEP)")
        .allowlist_var("ESPANK_.*")
        .prepend_enum_name(false)
        .dynamic_library_name("SlurmApi")
        .dynamic_link_require_all(false)
        .wrap_unsafe_ops(true)
        .layout_tests(false)
        .generate_comments(false);

    // bindgen panics when libclang cannot be loaded; turn that into one line.
    std::panic::set_hook(Box::new(|_| {}));
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()));
    let _ = std::panic::take_hook();
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!(
            "carbontrack: bindgen failed on the Slurm headers in {}: {e}; {HEADER_PACKAGES}",
            include.display()
        )),
        Err(_) => fail(&format!(
            "carbontrack: libclang could not be loaded: {CLANG_PACKAGES}"
        )),
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(e) = bindings.write_to_file(out.join("spank_bindings.rs")) {
        fail(&format!(
            "carbontrack: cannot write bindings to {}: {e}",
            out.display()
        ));
    }
}

#[cfg(feature = "slurm")]
fn has_headers(dir: &Path) -> bool {
    HEADERS.iter().all(|h| dir.join(h).is_file())
}

#[cfg(feature = "slurm")]
/// Stops the build with one line: on stderr (always shown when a build script
/// fails) and as a cargo warning (shown on top unless --quiet).
fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    println!("cargo:warning={msg}");
    std::process::exit(1);
}
