//! The fake's configuration file: which GPUs exist and how they behave.
//!
//! ```text
//! epoch = 1700000000.25   # unix seconds: time zero of every power profile
//! init = ok               # ok | fail (amdsmi_init answers AMDSMI_STATUS_INIT_ERROR)
//! version = 24            # 24: amdsmi_version_t {year 24, major 7, …} and the
//!                         # 24.x amdsmi_power_info_t; 26: {major 26, …} and 26.x's
//!
//! [gpu]                   # the next GCD; AMD SMI's order = order in the file
//! uuid = 1fff74a1-0000-1000-80f0-5c6b2e6e5b3a
//! serial = PKG-A          # board serial (default: the uuid): GCDs of a package share it
//! render = 128            # render minor (default 128 + position)
//! bus = 0xc1              # PCI bus (default 0xc1 + 8 × position)
//! power = 250             # watts profile (carbontrack_fixtures::profile)
//! energy = counter        # counter | none (amdsmi_get_energy_count: NOT_SUPPORTED)
//! resolution = 15.259     # µJ per count
//! counter_start = 0       # the accumulator's value at the epoch
//! wrap = 32               # optional: the accumulator counts modulo 2^32
//! reports = self          # self | package (this GCD reports its package's
//!                         # power and energy, its own and its siblings') | zero
//! busy = 50               # gfx_activity in %
//! fail_after = 3.5        # optional: seconds after epoch; then NOT_FOUND
//! hang_at = 4.0           # optional: from then on every call blocks for hang_for
//! hang_for = 3600
//! ```

use std::ffi::CString;

use carbontrack_fixtures::profile::Profile;

#[derive(Debug)]
pub struct Config {
    pub epoch: f64,
    pub init_ok: bool,
    pub version: u32,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reports {
    Own,
    Package,
    Zero,
}

#[derive(Debug)]
pub struct Gpu {
    pub uuid: CString,
    pub serial: Option<CString>,
    pub render: u32,
    pub bus: u64,
    pub power: Profile,
    pub counter: bool,
    pub resolution: f64,
    pub counter_start: u64,
    pub wrap32: bool,
    pub reports: Reports,
    pub busy: u32,
    pub fail_after: Option<f64>,
    pub hang_at: Option<f64>,
    pub hang_for: f64,
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("`{key} = {v}` is not a valid number"))
}

pub fn parse(text: &str) -> Result<Config, String> {
    let mut cfg = Config {
        epoch: 0.0,
        init_ok: true,
        version: 24,
        gpus: Vec::new(),
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", n + 1);
        if line == "[gpu]" {
            let k = cfg.gpus.len();
            cfg.gpus.push(Gpu {
                uuid: CString::default(),
                serial: None,
                render: 128 + k as u32,
                bus: 0xc1 + 8 * k as u64,
                power: Profile::constant(0.0),
                counter: true,
                resolution: 15.259,
                counter_start: 0,
                wrap32: false,
                reports: Reports::Own,
                busy: 50,
                fail_after: None,
                hang_at: None,
                hang_for: 3600.0,
            });
            continue;
        }
        let (key, v) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| at(format!("`{line}` is not key = value")))?;
        let text = |v: &str| CString::new(v).map_err(|_| at(format!("`{key}` holds a NUL")));
        match (key, cfg.gpus.last_mut()) {
            ("epoch", _) => cfg.epoch = number(key, v).map_err(at)?,
            ("init", _) => cfg.init_ok = v == "ok",
            ("version", _) => cfg.version = number(key, v).map_err(at)?,
            (_, None) => return Err(at(format!("`{key}` outside a [gpu] section"))),
            ("uuid", Some(g)) => g.uuid = text(v)?,
            ("serial", Some(g)) => g.serial = Some(text(v)?),
            ("render", Some(g)) => g.render = number(key, v).map_err(at)?,
            ("bus", Some(g)) => {
                g.bus = u64::from_str_radix(v.trim_start_matches("0x"), 16)
                    .map_err(|_| at(format!("bus `{v}` is not hex")))?
            }
            ("power", Some(g)) => g.power = v.parse().map_err(at)?,
            ("energy", Some(g)) => g.counter = v == "counter",
            ("resolution", Some(g)) => g.resolution = number(key, v).map_err(at)?,
            ("counter_start", Some(g)) => g.counter_start = number(key, v).map_err(at)?,
            ("wrap", Some(g)) => g.wrap32 = v == "32",
            ("reports", Some(g)) => {
                g.reports = match v {
                    "self" => Reports::Own,
                    "package" => Reports::Package,
                    "zero" => Reports::Zero,
                    _ => {
                        return Err(at(format!(
                            "reports must be self, package or zero, not `{v}`"
                        )));
                    }
                }
            }
            ("busy", Some(g)) => g.busy = number(key, v).map_err(at)?,
            ("fail_after", Some(g)) => g.fail_after = Some(number(key, v).map_err(at)?),
            ("hang_at", Some(g)) => g.hang_at = Some(number(key, v).map_err(at)?),
            ("hang_for", Some(g)) => g.hang_for = number(key, v).map_err(at)?,
            _ => return Err(at(format!("unknown key `{key}`"))),
        }
    }
    for (i, g) in cfg.gpus.iter().enumerate() {
        if g.uuid.is_empty() {
            return Err(format!("GPU {i} has no uuid"));
        }
    }
    Ok(cfg)
}
