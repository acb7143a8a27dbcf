//! The NVIDIA driver's buffer of recent power samples
//! (`nvmlDeviceGetSamples(NVML_TOTAL_POWER_SAMPLES)`), read into room kept
//! per GPU.
//!
//! This is the one NVML call carbontrack makes around nvml-wrapper: its
//! `Device::samples` asks for the count and then allocates two vectors on
//! every call, and the sampler allocates nothing per sample in steady state.
//! The handle and the function pointer still come from nvml-wrapper, so the
//! library is loaded and initialised in one place.

use nvml_wrapper::Device;

use crate::units::Watts;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try, nvml_try_count};
use nvml_wrapper_sys::bindings::{
    nvmlSample_t, nvmlSamplingType_enum_NVML_TOTAL_POWER_SAMPLES as TOTAL_POWER,
    nvmlValueType_enum_NVML_VALUE_TYPE_DOUBLE as DOUBLE,
    nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_INT as SIGNED_INT,
    nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_LONG_LONG as SIGNED_LONG_LONG,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT as UNSIGNED_INT,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG as UNSIGNED_LONG,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG as UNSIGNED_LONG_LONG,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_SHORT as UNSIGNED_SHORT, nvmlValueType_t,
};

/// Room kept per GPU at most, whatever count the driver reports: 1024
/// samples are 20 s at one per 20 ms, and 1024 × 16 bytes stays small next
/// to the 2 MB the whole sampler may add.
pub const MAX_SAMPLES: usize = 1024;

/// Room kept per GPU at least: five seconds of samples at 20 ms, in 4 KiB.
pub const MIN_SAMPLES: usize = 256;

/// One sample of a GPU's power as the driver recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerSample {
    /// The driver's CPU timestamp, in µs.
    pub at_us: u64,
    pub milliwatts: u64,
}

impl PowerSample {
    pub fn watts(&self) -> Watts {
        Watts(self.milliwatts as f64 / 1e3)
    }
}

/// Room for one GPU's buffered power samples, sized once.
pub struct PowerSamples {
    raw: Vec<nvmlSample_t>,
}

impl std::fmt::Debug for PowerSamples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PowerSamples(room for {})", self.raw.len())
    }
}

/// The samples of one read, oldest first as the driver gives them.
pub struct Samples<'a> {
    raw: std::slice::Iter<'a, nvmlSample_t>,
    kind: nvmlValueType_t,
    full: bool,
}

impl Samples<'_> {
    /// The read filled all the room: the driver may have more.
    pub fn filled_the_room(&self) -> bool {
        self.full
    }
}

impl Iterator for Samples<'_> {
    type Item = PowerSample;

    /// Skips values that cannot be power (negative, not a number): the
    /// caller bridges the gap, as it does for a failed read.
    fn next(&mut self) -> Option<PowerSample> {
        for s in self.raw.by_ref() {
            let v = s.sampleValue;
            // SAFETY: `kind` is the value type the driver declared for every
            // sample of this read, so the field read is the one it wrote;
            // every field is plain data, valid for any bit pattern.
            let milliwatts = unsafe {
                match self.kind {
                    UNSIGNED_INT => Some(u64::from(v.uiVal)),
                    UNSIGNED_LONG => Some(v.ulVal),
                    UNSIGNED_LONG_LONG => Some(v.ullVal),
                    UNSIGNED_SHORT => Some(u64::from(v.usVal)),
                    SIGNED_INT => u64::try_from(v.siVal).ok(),
                    SIGNED_LONG_LONG => u64::try_from(v.sllVal).ok(),
                    DOUBLE if v.dVal.is_finite() && v.dVal >= 0.0 => Some(v.dVal.round() as u64),
                    _ => None,
                }
            };
            if let Some(milliwatts) = milliwatts {
                return Some(PowerSample {
                    at_us: s.timeStamp,
                    milliwatts,
                });
            }
        }
        None
    }
}

impl PowerSamples {
    /// Asks the driver how many power samples it keeps for `dev` and makes
    /// room for that many, at least [`MIN_SAMPLES`] (the count may be what
    /// the buffer holds so far) and at most [`MAX_SAMPLES`].
    /// `NotSupported` means the GPU has no such buffer; `NotFound` only that
    /// it holds no sample yet, so it counts as a buffer.
    pub fn for_device(dev: &Device<'_>) -> Result<PowerSamples, NvmlError> {
        let get = nvml_sym(dev.nvml().lib().nvmlDeviceGetSamples.as_ref())?;
        let mut kind: nvmlValueType_t = 0;
        let mut count: u32 = 0;
        // SAFETY: the handle belongs to the NVML instance the function comes
        // from, which outlives `dev`; a NULL sample array asks only for the
        // count, written to `count`, a valid out-pointer, as is `kind`.
        let code = unsafe {
            get(
                dev.handle(),
                TOTAL_POWER,
                0,
                &mut kind,
                &mut count,
                std::ptr::null_mut(),
            )
        };
        match nvml_try_count(code) {
            Ok(()) => {}
            Err(NvmlError::NotFound) => count = 0,
            Err(e) => return Err(e),
        }
        let room = usize::try_from(count).unwrap_or(MAX_SAMPLES);
        Ok(PowerSamples {
            raw: vec![empty(); room.clamp(MIN_SAMPLES, MAX_SAMPLES)],
        })
    }

    /// Reads the samples recorded after `after_us` (0: all the driver
    /// keeps), oldest first. `NotFound` means there is none yet.
    pub fn read(&mut self, dev: &Device<'_>, after_us: u64) -> Result<Samples<'_>, NvmlError> {
        let get = nvml_sym(dev.nvml().lib().nvmlDeviceGetSamples.as_ref())?;
        let mut kind: nvmlValueType_t = 0;
        // The room is at most MAX_SAMPLES, so this never saturates.
        let mut count = u32::try_from(self.raw.len()).unwrap_or(u32::MAX);
        // SAFETY: as in `for_device`; `raw` has room for `count` samples,
        // and the driver writes at most `count` and says how many in it.
        let code = unsafe {
            get(
                dev.handle(),
                TOTAL_POWER,
                after_us,
                &mut kind,
                &mut count,
                self.raw.as_mut_ptr(),
            )
        };
        nvml_try(code)?;
        let n = usize::try_from(count).map_or(0, |c| c.min(self.raw.len()));
        // NVML does not document the order; sorting in place allocates
        // nothing and is nearly free on samples that already are in order.
        self.raw[..n].sort_unstable_by_key(|s| s.timeStamp);
        Ok(Samples {
            full: n == self.raw.len(),
            raw: self.raw[..n].iter(),
            kind,
        })
    }
}

fn empty() -> nvmlSample_t {
    nvmlSample_t {
        timeStamp: 0,
        sampleValue: nvml_wrapper_sys::bindings::nvmlValue_t { ullVal: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvml_wrapper_sys::bindings::nvmlValue_t;

    fn raw(at: u64, v: nvmlValue_t) -> nvmlSample_t {
        nvmlSample_t {
            timeStamp: at,
            sampleValue: v,
        }
    }

    #[test]
    fn values_are_read_as_the_driver_declares_them() {
        let read = |kind, samples: &[nvmlSample_t]| -> Vec<PowerSample> {
            Samples {
                raw: samples.iter(),
                kind,
                full: false,
            }
            .collect()
        };
        let ps = |at, milliwatts| PowerSample {
            at_us: at,
            milliwatts,
        };
        let ui = [raw(1, nvmlValue_t { uiVal: 250_000 })];
        assert_eq!(read(UNSIGNED_INT, &ui), [ps(1, 250_000)]);
        let ull = [raw(
            2,
            nvmlValue_t {
                ullVal: 5_000_000_000,
            },
        )];
        assert_eq!(read(UNSIGNED_LONG_LONG, &ull), [ps(2, 5_000_000_000)]);
        // Negative and non-finite values cannot be power: skipped.
        let signed = [
            raw(3, nvmlValue_t { siVal: -5 }),
            raw(4, nvmlValue_t { siVal: 70_000 }),
        ];
        assert_eq!(read(SIGNED_INT, &signed), [ps(4, 70_000)]);
        let doubles = [
            raw(5, nvmlValue_t { dVal: f64::NAN }),
            raw(6, nvmlValue_t { dVal: 1234.6 }),
        ];
        assert_eq!(read(DOUBLE, &doubles), [ps(6, 1235)]);
        // A value type NVML may add later is not guessed at.
        assert_eq!(read(99, &ui), []);
        assert_eq!(ps(1, 250_500).watts(), Watts(250.5));
    }
}
