//! The fake hardware the cluster's jobs are measured on: a powercap tree kept
//! advancing by this process, a fake NVML with four GPUs, and a private spool.
//! Every figure a job reports is compared with these profiles' exact energy.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use carbontrack_fixtures::fake_nvml::fake_library;
use carbontrack_fixtures::powercap::{
    PackageSpec, PowercapSpec, PowercapTree, PowercapWriter, ZoneSpec,
};
use carbontrack_fixtures::profile::Profile;
use carbontrack_fixtures::tempdir::TempDir;

/// One fake GPU; Slurm's `/dev/nvidia<minor>` is this one.
#[derive(Debug, Clone)]
pub struct Gpu {
    pub uuid: String,
    pub minor: u32,
    pub power: Profile,
}

pub struct Hardware {
    /// Before the directory, so the writer stops before its files go.
    rapl: PowercapWriter,
    nvml: PathBuf,
    pub gpus: Vec<Gpu>,
    epoch: SystemTime,
    dir: TempDir,
}

/// A package whose power steps, its DRAM at a constant power.
const PACKAGE_POWER: &str = "60@3,90@2";
const DRAM_POWER: &str = "12";
const GPU_POWER: [&str; 4] = ["100@2,250@3", "180", "300", "40@1,60@1"];

impl Hardware {
    pub fn new() -> Hardware {
        Hardware::with_wrap(200_000_000)
    }

    /// RAPL counters that wrap at `max_range_uj` (real packages: hundreds of
    /// kJ, minutes at full power; `new`'s 200 J wraps every few seconds to
    /// test wraparound).
    pub fn with_wrap(max_range_uj: u64) -> Hardware {
        let dir = TempDir::new("cluster-hw").expect("temporary directory");
        let epoch = SystemTime::now();
        // One package, as on this machine's CPU topology, whose counter wraps
        // every few seconds.
        let zone = |p: &str| {
            ZoneSpec::new(p.parse().expect("profile"))
                .max_range_uj(max_range_uj)
                .max_power_w(150.0)
        };
        let spec = PowercapSpec {
            packages: vec![PackageSpec::new(zone(PACKAGE_POWER)).dram(zone(DRAM_POWER))],
            ..Default::default()
        };
        let rapl = PowercapTree::create(&dir.path().join("powercap"), &spec, epoch)
            .expect("powercap fixture")
            .spawn_writer(Duration::from_millis(5));

        let gpus: Vec<Gpu> = GPU_POWER
            .iter()
            .enumerate()
            .map(|(i, p)| Gpu {
                uuid: format!("GPU-c0ffee0{i}-1111-2222-3333-444455556666"),
                minor: i as u32,
                power: p.parse().expect("profile"),
            })
            .collect();
        let nvml_dir = dir.path().join("nvml");
        std::fs::create_dir_all(&nvml_dir).unwrap();
        let nvml = nvml_dir.join("libnvidia-ml.so.1");
        std::fs::copy(fake_library(), &nvml).expect("copy the fake NVML");
        let hw = Hardware {
            rapl,
            nvml,
            gpus,
            epoch,
            dir,
        };
        hw.set_gpu_extra(None);
        hw
    }

    /// Rewrites the fake NVML's configuration, with `extra` lines for one
    /// GPU (by minor), e.g. `hang_at = 12.5`; each new extern step reads it.
    pub fn set_gpu_extra(&self, extra: Option<(u32, &str)>) {
        let mut conf = format!("epoch = {}\n", secs(self.epoch));
        for g in &self.gpus {
            conf += &format!(
                "[gpu]\nuuid = {}\nminor = {}\npower = {}\n",
                g.uuid, g.minor, g.power
            );
            if let Some((minor, lines)) = extra
                && minor == g.minor
            {
                conf += lines;
                conf += "\n";
            }
        }
        let path = self.nvml.with_file_name("fake-nvml.conf");
        std::fs::write(path, conf).unwrap();
    }

    /// Seconds since the fake hardware's time zero (the fake NVML's epoch).
    pub fn now_secs(&self) -> f64 {
        secs_since(self.epoch, SystemTime::now())
    }

    /// The root-owned spool the plugin keeps its state in.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn spool_arg(&self) -> String {
        format!("spool={}", self.spool().display())
    }

    /// plugstack.conf arguments for measuring on this hardware, and `extra`.
    pub fn plugin_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = vec![
            self.spool_arg(),
            format!("powercap={}", self.rapl.root().display()),
            format!("nvml={}", self.nvml.display()),
            "interval=500ms".to_string(),
            "refresh=2s".to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    pub fn gpu(&self, uuid: &str) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.uuid == uuid)
    }

    /// The energy a device really used between two instants: `package-0`,
    /// `package-0/dram`, or a GPU's UUID.
    pub fn truth(&self, device: &str, t0: SystemTime, t1: SystemTime) -> f64 {
        match self.gpu(device) {
            Some(g) => g
                .power
                .energy_between(secs_since(self.epoch, t0), secs_since(self.epoch, t1)),
            None => self.rapl.truth(device, t0, t1),
        }
    }
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn secs_since(epoch: SystemTime, t: SystemTime) -> f64 {
    secs(t) - secs(epoch)
}
