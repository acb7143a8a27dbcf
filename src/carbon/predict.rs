//! Predictions shown while a job runs: to its time limit, and carbontracker's
//! headline feature, the footprint of the whole training run after its first
//! epoch(s).

use std::time::Duration;

use crate::units::{GramsCo2e, GramsPerKwh, Joules, Watts};

/// Before this much of the run a linear projection mostly extrapolates start-up
/// (loading data, compiling kernels), so none is given.
pub const MIN_ELAPSED_FOR_PROJECTION: Duration = Duration::from_secs(120);

/// For short limits the 2-minute wait would hide the projection for most of the
/// job; a tenth of the limit is enough there.
pub const MIN_FRACTION_OF_LIMIT: f64 = 0.10;

/// Energy and time if the job runs until its time limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    pub elapsed: Duration,
    pub time_limit: Duration,
    pub energy_so_far: Joules,
    pub average_power: Watts,
    /// Energy at the devices (before PUE) at the time limit.
    pub projected_energy: Joules,
}

impl Projection {
    pub fn co2e(&self, pue: f64, intensity: GramsPerKwh) -> GramsCo2e {
        super::co2e(self.projected_energy, pue, intensity)
    }
}

/// Projects the energy so far linearly in time to the job's time limit: the
/// average power so far, held for the rest of the limit.
///
/// `None` until `elapsed` reaches the lesser of [`MIN_ELAPSED_FOR_PROJECTION`]
/// and [`MIN_FRACTION_OF_LIMIT`] of the limit, and for a zero limit (Slurm's
/// "no limit" is passed as `None` by the caller, not as zero). A job past its
/// limit (overtime, grace) is projected at what it has used.
pub fn project_to_limit(
    elapsed: Duration,
    energy_so_far: Joules,
    time_limit: Duration,
) -> Option<Projection> {
    if time_limit.is_zero() {
        return None;
    }
    let min = MIN_ELAPSED_FOR_PROJECTION.min(time_limit.mul_f64(MIN_FRACTION_OF_LIMIT));
    if elapsed < min || elapsed.is_zero() {
        return None;
    }
    let average_power = energy_so_far.over(elapsed)?;
    let remaining = time_limit.saturating_sub(elapsed);
    Some(Projection {
        elapsed,
        time_limit,
        energy_so_far,
        average_power,
        projected_energy: energy_so_far + average_power * remaining,
    })
}

/// The end of one completed epoch, as `carbontrack epoch` records it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochMark {
    /// Time since the job's tracking started.
    pub at: Duration,
    /// The job's energy at the devices (before PUE) at that moment.
    pub cumulative_energy: Joules,
}

/// The whole training run's footprint predicted from the epochs done so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPrediction {
    pub epochs_done: u32,
    pub total_epochs: u32,
    pub mean_epoch_time: Duration,
    pub mean_epoch_energy: Joules,
    /// `mean_epoch_time × total_epochs`.
    pub predicted_time: Duration,
    /// `mean_epoch_energy × total_epochs`, at the devices (before PUE).
    pub predicted_energy: Joules,
}

impl EpochPrediction {
    /// The same mean epoch for `epochs` epochs instead of `total_epochs`:
    /// what this prediction says `epochs` epochs cost, set beside their
    /// actual figures when a run stops early.
    pub fn for_epochs(&self, epochs: u32) -> EpochPrediction {
        EpochPrediction {
            total_epochs: epochs,
            predicted_time: self.mean_epoch_time * epochs,
            predicted_energy: Joules(self.mean_epoch_energy.0 * f64::from(epochs)),
            ..*self
        }
    }

    pub fn co2e(&self, pue: f64, intensity: GramsPerKwh) -> GramsCo2e {
        super::co2e(self.predicted_energy, pue, intensity)
    }
}

/// carbontracker's model, kept so its users read the same numbers: the mean
/// epoch time and energy so far, times the total number of epochs.
///
/// `start` is where the first epoch began. When it is the start of tracking
/// (zero energy), start-up such as loading data falls into epoch 1, which makes
/// the mean, and so the prediction, a little high; each further epoch dilutes
/// it, which is why the prediction is refined after every epoch. Returns `None`
/// until `epochs_before_pred` epochs (at least one) are done, for zero total
/// epochs, and when no time has passed since `start`.
pub fn predict_epochs(
    start: EpochMark,
    marks: &[EpochMark],
    total_epochs: u32,
    epochs_before_pred: u32,
) -> Option<EpochPrediction> {
    let done = u32::try_from(marks.len()).ok()?;
    if total_epochs == 0 || done == 0 || done < epochs_before_pred {
        return None;
    }
    let last = marks.last()?;
    let span = last.at.checked_sub(start.at).filter(|d| !d.is_zero())?;
    let energy = last.cumulative_energy - start.cumulative_energy;
    let mean_epoch_time = span / done;
    let mean_epoch_energy = Joules(energy.0 / f64::from(done));
    Some(EpochPrediction {
        epochs_done: done,
        total_epochs,
        mean_epoch_time,
        mean_epoch_energy,
        predicted_time: span.mul_f64(f64::from(total_epochs) / f64::from(done)),
        predicted_energy: Joules(mean_epoch_energy.0 * f64::from(total_epochs)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn projection_to_the_time_limit() {
        // (elapsed s, energy J, limit s) -> projected J or None
        for (elapsed, energy, limit, want) in [
            (60, 6_000.0, 3600, None),                // before 2 min
            (119, 11_900.0, 3600, None),              // just before
            (120, 12_000.0, 3600, Some(360_000.0)),   // 100 W for an hour
            (1800, 180_000.0, 3600, Some(360_000.0)), // half way
            (3600, 360_000.0, 3600, Some(360_000.0)), // at the limit
            (4000, 400_000.0, 3600, Some(400_000.0)), // overtime: what it used
            (30, 3_000.0, 300, Some(30_000.0)),       // short limit: 10% suffices
            (29, 2_900.0, 300, None),                 // ... but not less
            (600, 0.0, 3600, Some(0.0)),              // idle job
            (600, 1.0, 0, None),                      // no limit
            (0, 0.0, 1, None),                        // nothing yet
        ] {
            let p = project_to_limit(s(elapsed), Joules(energy), s(limit));
            let got = p.map(|p| p.projected_energy.0);
            match (got, want) {
                (Some(g), Some(w)) => {
                    assert!((g - w).abs() < 1e-6, "{elapsed}/{limit}: {g} != {w}")
                }
                (g, w) => assert_eq!(g, w, "{elapsed}/{limit}"),
            }
        }
        let p = project_to_limit(s(1800), Joules(180_000.0), s(3600)).unwrap();
        assert_eq!(p.average_power, Watts(100.0));
        // 0.1 kWh × 1.58 × 445 g/kWh = 70.31 g.
        assert!((p.co2e(1.58, GramsPerKwh(445.0)).0 - 70.31).abs() < 1e-9);
    }

    fn mark(at: u64, e: f64) -> EpochMark {
        EpochMark {
            at: s(at),
            cumulative_energy: Joules(e),
        }
    }

    #[test]
    fn prediction_after_one_epoch_is_that_epoch_times_n() {
        let p = predict_epochs(mark(0, 0.0), &[mark(600, 90_000.0)], 10, 1).unwrap();
        assert_eq!(p.epochs_done, 1);
        assert_eq!(p.mean_epoch_time, s(600));
        assert_eq!(p.mean_epoch_energy, Joules(90_000.0));
        assert_eq!(p.predicted_time, s(6000));
        assert_eq!(p.predicted_energy, Joules(900_000.0));
        // 0.25 kWh at the devices × 1.58 × 445 = 175.775 g.
        assert!((p.co2e(1.58, GramsPerKwh(445.0)).0 - 175.775).abs() < 1e-9);
    }

    #[test]
    fn prediction_after_k_epochs_uses_the_mean() {
        // Epochs of 100, 200, 300 s and 1, 2, 3 kJ after a 50 s / 500 J start-up
        // that `start` excludes: mean 200 s, 2 kJ.
        let start = mark(50, 500.0);
        let marks = [mark(150, 1_500.0), mark(350, 3_500.0), mark(650, 6_500.0)];
        let p = predict_epochs(start, &marks, 5, 1).unwrap();
        assert_eq!(p.epochs_done, 3);
        assert_eq!(p.mean_epoch_time, s(200));
        assert_eq!(p.mean_epoch_energy, Joules(2_000.0));
        assert_eq!(p.predicted_time, s(1000));
        assert_eq!(p.predicted_energy, Joules(10_000.0));
        // Refined after each epoch: after the first only, 100 s × 5.
        let p1 = predict_epochs(start, &marks[..1], 5, 1).unwrap();
        assert_eq!(p1.predicted_time, s(500));
        assert_eq!(p1.predicted_energy, Joules(5_000.0));
    }

    #[test]
    fn no_prediction_too_early_or_without_a_target() {
        let marks = [mark(100, 1.0), mark(200, 2.0)];
        assert_eq!(predict_epochs(mark(0, 0.0), &[], 10, 1), None);
        assert_eq!(predict_epochs(mark(0, 0.0), &marks[..1], 10, 2), None);
        assert!(predict_epochs(mark(0, 0.0), &marks, 10, 2).is_some());
        assert_eq!(predict_epochs(mark(0, 0.0), &marks, 0, 1), None);
        assert_eq!(predict_epochs(mark(200, 2.0), &marks, 10, 1), None);
        // epochs_before_pred = 0 behaves as 1: a prediction needs an epoch.
        assert_eq!(predict_epochs(mark(0, 0.0), &[], 10, 0), None);
    }
}
