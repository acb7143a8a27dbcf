//! The fake hardware the rows measure against: a powercap tree whose RAPL
//! counters advance at known power, and private copies of the fake
//! libnvidia-ml (tests/fake-nvml) with GPUs of known power.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use carbontrack::config::Components;
use carbontrack::measure::cpuset::PackageShares;
use carbontrack::measure::gpus::GpuHints;
use carbontrack::measure::nvml::NvmlMeter;
use carbontrack::measure::rapl::{self, RaplMeter};
use carbontrack::measure::{DeviceEnergy, Meter, Status};
use carbontrack_fixtures::powercap::{
    PackageSpec, PowercapSpec, PowercapTree, PowercapWriter, ZoneSpec,
};
use carbontrack_fixtures::profile::Profile;
use carbontrack_fixtures::tempdir::TempDir;

/// The fake NVML library, built for this profile when it is not given.
///
/// `cargo bench` builds the benchmark but not the workspace's cdylib, so it is
/// built here (a no-op when up to date), next to this binary's profile.
pub fn fake_nvml_library(explicit: Option<&Path>) -> Result<PathBuf> {
    if std::env::var_os("CARBONTRACK_FAKE_NVML").is_some() {
        bail!(
            "CARBONTRACK_FAKE_NVML is set: unset it, the benchmark configures each fake \
             NVML beside its own copy of the library"
        );
    }
    if let Some(p) = explicit {
        ensure!(
            p.is_file(),
            "the fake NVML library {} does not exist",
            p.display()
        );
        return Ok(p.to_path_buf());
    }
    // target/<profile>/deps/overhead-… → target/<profile>/libnvidia_ml.so
    let exe = std::env::current_exe().context("cannot find this benchmark's own path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the benchmark binary is not in target/<profile>/deps")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "fake-nvml", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .context("cannot run cargo to build the fake NVML library")?;
    let lib = profile_dir.join("libnvidia_ml.so");
    ensure!(
        status.success() && lib.is_file(),
        "`cargo build -p fake-nvml` did not produce {}: build it with \
         `cargo build --release --workspace`, or pass --fake-nvml PATH",
        lib.display()
    );
    Ok(lib)
}

/// Unix seconds, the fake NVML's clock.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A private copy of the fake library with its configuration beside it, so
/// several fakes with different GPUs and delays live in one process (the
/// loader loads each copy, with its own state, once).
pub struct FakeNvml {
    _dir: TempDir,
    lib: PathBuf,
}

impl FakeNvml {
    pub fn install(library: &Path, label: &str, config: &str) -> Result<FakeNvml> {
        let dir = TempDir::new(&format!("bench-nvml-{label}"))?;
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(library, &lib)
            .with_context(|| format!("cannot copy {} to {}", library.display(), lib.display()))?;
        std::fs::write(dir.path().join("fake-nvml.conf"), config)?;
        Ok(FakeNvml { _dir: dir, lib })
    }

    pub fn lib(&self) -> &Path {
        &self.lib
    }
}

/// A GPU's UUID in the fakes.
pub fn gpu_uuid(n: usize) -> String {
    format!("GPU-{n:08x}-be0c-4000-8000-0000000000b7")
}

/// A `[gpu]` section: `counter` chooses between an energy counter and
/// power-only (NVML answers NOT_SUPPORTED for the total energy).
pub fn gpu_section(n: usize, power: &Profile, counter: bool) -> String {
    format!(
        "[gpu]\nuuid = {}\nname = Bench GPU {n}\npower = {power}\nenergy = {}\n",
        gpu_uuid(n),
        if counter { "counter" } else { "none" }
    )
}

/// A fake NVML configuration header.
pub fn nvml_header(epoch_unix: f64, delay_us: u64) -> String {
    format!("epoch = {epoch_unix}\ndriver = ok\ndelay_us = {delay_us}\n")
}

/// A powercap tree of packages (each with a DRAM zone) under `dir`, kept
/// advancing by a writer thread every `period`.
pub fn powercap(
    dir: &Path,
    zones: &[(Profile, Profile)],
    epoch: SystemTime,
    period: Duration,
) -> Result<PowercapWriter> {
    let spec = PowercapSpec {
        packages: zones
            .iter()
            .map(|(pkg, dram)| {
                PackageSpec::new(ZoneSpec::new(pkg.clone())).dram(ZoneSpec::new(dram.clone()))
            })
            .collect(),
        ..PowercapSpec::default()
    };
    let tree = PowercapTree::create(dir, &spec, epoch)
        .with_context(|| format!("cannot build the powercap fixture in {}", dir.display()))?;
    Ok(tree.spawn_writer(period))
}

/// The meters the plugin would run for a job that has the whole node: RAPL
/// (CPU + DRAM of every package) and NVML (every GPU).
pub struct JobMeters {
    pub rapl: RaplMeter,
    pub nvml: NvmlMeter,
    /// Wall times just before and after NVML was opened: its GPUs take their
    /// first reading in between.
    pub nvml_opened: (SystemTime, SystemTime),
}

impl JobMeters {
    pub fn open(powercap_root: &Path, nvml_lib: &Path, interval: Duration) -> JobMeters {
        let rapl = rapl::open(
            powercap_root,
            Components::ALL,
            &PackageShares::whole_node(),
            interval,
        )
        .meter;
        let before = SystemTime::now();
        let (nvml, _log) = NvmlMeter::for_job(nvml_lib, &GpuHints::default(), Instant::now());
        let nvml_opened = (before, SystemTime::now());
        JobMeters {
            rapl,
            nvml,
            nvml_opened,
        }
    }

    /// The meters as the tracker hands them to the sampler: RAPL, then one
    /// meter per GPU (so a GPU that stops answering is given up on alone).
    pub fn into_boxes(self) -> Vec<Box<dyn Meter>> {
        let mut v: Vec<Box<dyn Meter>> = vec![Box::new(self.rapl)];
        v.extend(
            self.nvml
                .split()
                .into_iter()
                .map(|m| Box::new(m) as Box<dyn Meter>),
        );
        v
    }
}

/// Fails unless every expected device reads fine: a benchmark of a meter that
/// silently measures nothing would flatter it.
pub fn check_devices(devices: &[DeviceEnergy], rapl_rows: usize, gpus: usize) -> Result<()> {
    let ok = devices.iter().filter(|r| r.status == Status::Ok).count();
    ensure!(
        devices.len() == rapl_rows + gpus && ok == devices.len(),
        "the fake hardware does not read as expected ({rapl_rows} RAPL rows and {gpus} \
         GPUs, all ok): {devices:#?}"
    );
    Ok(())
}
