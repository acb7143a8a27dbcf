//! The user's options, `--carbon-track[=yes|no]`, `--carbon-epochs=N` and
//! `--carbon-budget=AMOUNT`, and what a job asked for with them.

use crate::carbon::budget::{CarbonBudget, parse_budget};
use crate::config::{parse_epochs, parse_track_choice};

/// Whether an option takes a value; the numbers are getopt's, which Slurm
/// hands straight to `getopt_long`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HasArg {
    No = 0,
    Required = 1,
    Optional = 2,
}

/// One option as registered with Slurm. `val` comes back to the option
/// callback, which is how it tells the options apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    pub name: &'static str,
    pub arginfo: &'static str,
    pub usage: &'static str,
    pub has_arg: HasArg,
    pub val: i32,
}

/// The options carbontrack adds to sbatch, srun and salloc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOption {
    Track,
    Epochs,
    Budget,
}

impl UserOption {
    pub const ALL: [UserOption; 3] = [UserOption::Track, UserOption::Epochs, UserOption::Budget];

    pub fn spec(self) -> OptionSpec {
        match self {
            UserOption::Track => OptionSpec {
                name: "carbon-track",
                arginfo: "yes|no",
                usage: "Measure the job's energy and carbon footprint (carbontrack); \
                        results go to carbontrack-<jobid>.csv/.txt in the work dir.",
                has_arg: HasArg::Optional,
                val: 1,
            },
            UserOption::Epochs => OptionSpec {
                name: "carbon-epochs",
                arginfo: "N",
                usage: "Total number of training epochs, for carbontrack's prediction.",
                has_arg: HasArg::Required,
                val: 2,
            },
            UserOption::Budget => OptionSpec {
                name: "carbon-budget",
                arginfo: "AMOUNT",
                usage: "Carbon budget of the job (500g, 2kg CO2e or 1.5kWh): carbontrack's \
                        summary and `carbontrack status` say when the prediction exceeds it; \
                        the job is never stopped.",
                has_arg: HasArg::Required,
                val: 3,
            },
        }
    }

    pub fn from_val(val: i32) -> Option<UserOption> {
        UserOption::ALL.into_iter().find(|o| o.spec().val == val)
    }
}

/// What a job said with the options; `None` where an option was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobChoice {
    pub track: Option<bool>,
    pub epochs: Option<u32>,
    pub budget: Option<CarbonBudget>,
}

impl JobChoice {
    /// Records one option value, refusing a bad one with a message for the user.
    /// `value` is `None` when the option was given without `=value`.
    pub fn set(&mut self, opt: UserOption, value: Option<&str>) -> Result<(), String> {
        match opt {
            UserOption::Track => self.track = Some(parse_track_choice(value)?),
            UserOption::Epochs => {
                let v = value.ok_or("--carbon-epochs needs a value, e.g. --carbon-epochs=10")?;
                self.epochs = Some(parse_epochs(v)?);
            }
            UserOption::Budget => {
                let v = value.ok_or("--carbon-budget needs a value, e.g. --carbon-budget=500g")?;
                self.budget = Some(parse_budget(v)?);
            }
        }
        Ok(())
    }

    /// A short description for log lines, e.g. `--carbon-track=yes --carbon-epochs=10`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.track {
            Some(true) => parts.push("--carbon-track=yes".to_string()),
            Some(false) => parts.push("--carbon-track=no".to_string()),
            None => parts.push("no --carbon-track".to_string()),
        }
        if let Some(n) = self.epochs {
            parts.push(format!("--carbon-epochs={n}"));
        }
        if let Some(b) = self.budget {
            parts.push(format!("--carbon-budget={b}"));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_are_told_apart_by_val() {
        for opt in UserOption::ALL {
            assert_eq!(UserOption::from_val(opt.spec().val), Some(opt));
        }
        assert_eq!(UserOption::from_val(0), None);
    }

    #[test]
    fn job_choice_accepts_good_values_and_names_bad_ones() {
        let mut c = JobChoice::default();
        c.set(UserOption::Track, None).unwrap();
        assert_eq!(c.track, Some(true));
        c.set(UserOption::Track, Some("no")).unwrap();
        assert_eq!(c.track, Some(false));
        c.set(UserOption::Epochs, Some("12")).unwrap();
        assert_eq!(c.epochs, Some(12));
        assert_eq!(c.describe(), "--carbon-track=no --carbon-epochs=12");

        let e = c.set(UserOption::Track, Some("maybe")).unwrap_err();
        assert!(e.contains("maybe") && e.contains("yes or no"), "{e}");
        let e = c.set(UserOption::Epochs, Some("-3")).unwrap_err();
        assert!(e.contains("-3"), "{e}");
        let e = c.set(UserOption::Epochs, None).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        // A refused value leaves the earlier one in place.
        assert_eq!(c.track, Some(false));
        assert_eq!(c.epochs, Some(12));

        c.set(UserOption::Budget, Some("2kg")).unwrap();
        assert_eq!(
            c.describe(),
            "--carbon-track=no --carbon-epochs=12 --carbon-budget=2000g"
        );
        let e = c.set(UserOption::Budget, Some("lots")).unwrap_err();
        assert!(
            e.contains("--carbon-budget=lots") && e.contains("500g"),
            "{e}"
        );
        let e = c.set(UserOption::Budget, None).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        assert!(c.budget.is_some());
    }
}
