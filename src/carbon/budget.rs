//! A job's carbon budget (`--carbon-budget=AMOUNT`): what it may emit, or
//! the energy it may draw, and how the run stands against it.
//!
//! carbontrack only tells: it never cancels a job. A job reads its own state
//! (`carbontrack status --json` inside the job, the live state file this
//! module describes) and may stop itself, as carbontracker's
//! `stop_and_confirm` lets a training script do.
//!
//! Amounts are facility figures, as the summary's "CO2eq" and "Energy" lines:
//! energy with PUE, CO2e with PUE and the carbon intensity.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::units::{GramsCo2e, KilowattHours};

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CarbonBudget {
    /// Grams of CO2e.
    Co2e(GramsCo2e),
    /// Kilowatt-hours drawn from the grid (with PUE).
    Energy(KilowattHours),
}

/// [`parse_budget`] never makes a NaN, so equality is total.
impl Eq for CarbonBudget {}

/// The largest budget accepted: a thousand tonnes, or a GWh; beyond that a
/// unit was surely mistyped.
const MAX_GRAMS: f64 = 1e9;
const MAX_KWH: f64 = 1e6;

/// Parses `500g`, `2kg`, `0.5t` (CO2e) or `1.5kWh`, `800Wh` (energy); units
/// case-insensitive, a space allowed before them. Zero, negative and unitless
/// amounts are refused with a message for the user.
pub fn parse_budget(v: &str) -> Result<CarbonBudget, String> {
    let refuse = |why: &str| {
        format!(
            "--carbon-budget={v}: {why}; give grams or kilograms of CO2e or kilowatt-hours, \
             e.g. 500g, 2kg or 1.5kWh"
        )
    };
    let t = v.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let amount: f64 = num
        .parse()
        .map_err(|_| refuse("not a positive number with a unit"))?;
    if !amount.is_finite() || amount <= 0.0 {
        return Err(refuse("the amount must be more than zero"));
    }
    let budget = match unit.as_str() {
        "g" => CarbonBudget::Co2e(GramsCo2e(amount)),
        "kg" => CarbonBudget::Co2e(GramsCo2e(amount * 1e3)),
        "t" => CarbonBudget::Co2e(GramsCo2e(amount * 1e6)),
        "wh" => CarbonBudget::Energy(KilowattHours(amount / 1e3)),
        "kwh" => CarbonBudget::Energy(KilowattHours(amount)),
        "mwh" => CarbonBudget::Energy(KilowattHours(amount * 1e3)),
        "" => return Err(refuse("the unit is missing")),
        u => return Err(refuse(&format!("`{u}` is not a unit carbontrack knows"))),
    };
    match budget {
        CarbonBudget::Co2e(g) if g.0 > MAX_GRAMS => Err(refuse("more than 1000 t")),
        CarbonBudget::Energy(k) if k.0 > MAX_KWH => Err(refuse("more than 1 GWh")),
        b => Ok(b),
    }
}

/// Writes the budget back in a form [`parse_budget`] reads (the hand-off
/// record), and as users read it: `500 g CO2e` is `500g`, `1.5 kWh` `1.5kWh`.
impl fmt::Display for CarbonBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CarbonBudget::Co2e(g) => write!(f, "{}g", g.0),
            CarbonBudget::Energy(k) => write!(f, "{}kWh", k.0),
        }
    }
}

impl CarbonBudget {
    /// The budget's amount and the figure of `a` it is compared with.
    fn against(&self, a: Amount) -> (f64, f64) {
        match self {
            CarbonBudget::Co2e(g) => (g.0, a.co2e_g),
            CarbonBudget::Energy(k) => (k.0, a.energy_kwh),
        }
    }

    /// `500 g CO2e`, `1.5 kWh`.
    pub fn describe(&self) -> String {
        match self {
            CarbonBudget::Co2e(g) => fmt_grams(g.0),
            CarbonBudget::Energy(k) => format!("{} kWh", sig(k.0)),
        }
    }

    fn figure(&self, a: Amount) -> String {
        match self {
            CarbonBudget::Co2e(_) => fmt_grams(a.co2e_g),
            CarbonBudget::Energy(_) => format!("{} kWh", sig(a.energy_kwh)),
        }
    }
}

/// A facility figure: energy with PUE, and its CO2e.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Amount {
    pub energy_kwh: f64,
    pub co2e_g: f64,
}

/// Where a prediction of the whole run comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictedFrom {
    /// carbontracker's model: the mean epoch times `--carbon-epochs`.
    Epochs,
    /// The average power so far held until the time limit.
    TimeLimit,
}

impl PredictedFrom {
    fn describe(self) -> &'static str {
        match self {
            PredictedFrom::Epochs => "for all epochs",
            PredictedFrom::TimeLimit => "to the time limit",
        }
    }
}

/// How a run stands against its budget (pure: [`assess`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub budget: CarbonBudget,
    pub used: Amount,
    pub predicted: Option<(Amount, PredictedFrom)>,
    /// Used so far, as a fraction of the budget.
    pub used_fraction: f64,
    /// The prediction, as a fraction of the budget.
    pub predicted_fraction: Option<f64>,
    /// What is used, or predicted, is over the budget.
    pub over: bool,
}

/// Compares the run so far, and its prediction, with the budget.
pub fn assess(
    budget: CarbonBudget,
    used: Amount,
    predicted: Option<(Amount, PredictedFrom)>,
) -> Standing {
    let (limit, u) = budget.against(used);
    let p = predicted.map(|(a, _)| budget.against(a).1);
    let over = u > limit || p.is_some_and(|p| p > limit);
    Standing {
        budget,
        used,
        predicted,
        used_fraction: u / limit,
        predicted_fraction: p.map(|p| p / limit),
        over,
    }
}

impl Standing {
    /// The line at the top of the summary once over budget, and the one line
    /// that goes where the user sees it.
    pub fn alert(&self) -> Option<String> {
        if !self.over {
            return None;
        }
        let (limit, u) = self.budget.against(self.used);
        Some(if u > limit {
            format!(
                "OVER BUDGET: {} used, over the carbon budget of {} (carbontrack does not stop the job)",
                self.budget.figure(self.used),
                self.budget.describe()
            )
        } else {
            let (p, from) = self.predicted.expect("over by the prediction");
            format!(
                "OVER BUDGET: predicted {} {}, over the carbon budget of {} (carbontrack does not stop the job)",
                self.budget.figure(p),
                from.describe(),
                self.budget.describe()
            )
        })
    }

    /// The summary's block: used and predicted against the budget.
    pub fn lines(&self, finished: bool) -> Vec<String> {
        let mut v = vec![format!("Carbon budget: {}", self.budget.describe())];
        v.push(format!(
            "  {}: {} ({:.0}% of the budget)",
            if finished { "Used" } else { "Used so far" },
            self.budget.figure(self.used),
            100.0 * self.used_fraction
        ));
        if let (Some((p, from)), Some(f), false) =
            (self.predicted, self.predicted_fraction, finished)
        {
            v.push(format!(
                "  Predicted {}: {} ({:.0}% of the budget)",
                from.describe(),
                self.budget.figure(p),
                100.0 * f
            ));
        }
        if finished {
            v.push(if self.over {
                "  The run went over its budget.".to_string()
            } else {
                "  The run stayed within its budget.".to_string()
            });
        }
        v
    }
}

/// The summary's block when nothing could be measured: no verdict, since an
/// unknown use is neither within nor over the budget.
pub fn unknown_lines(budget: CarbonBudget) -> Vec<String> {
    vec![
        format!("Carbon budget: {}", budget.describe()),
        "  Used: unknown (nothing could be measured)".to_string(),
    ]
}

/// The budget as `status --json` gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetJson {
    /// As given, normalised (`500g`, `1.5kWh`).
    pub text: String,
    /// `g_co2e` or `kwh`.
    pub unit: String,
    pub amount: f64,
}

impl From<CarbonBudget> for BudgetJson {
    fn from(b: CarbonBudget) -> BudgetJson {
        let (unit, amount) = match b {
            CarbonBudget::Co2e(g) => ("g_co2e", g.0),
            CarbonBudget::Energy(k) => ("kwh", k.0),
        };
        BudgetJson {
            text: b.to_string(),
            unit: unit.to_string(),
            amount,
        }
    }
}

/// The prediction as `status --json` gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictedJson {
    pub energy_kwh: f64,
    pub co2e_g: f64,
    pub from: PredictedFrom,
}

/// A running job's state, as its live state file holds it
/// (`carbontrack-<jobid>.json`, beside the live summary, written as the
/// user) and `carbontrack status --json` prints it. Fields are only added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveState {
    pub job_id: String,
    /// RFC 3339 UTC: when this state was written.
    pub updated: String,
    pub running: bool,
    pub elapsed_s: f64,
    /// Energy with PUE and CO2e so far; `None` when nothing could be measured.
    pub used: Option<Amount>,
    pub predicted: Option<PredictedJson>,
    pub budget: Option<BudgetJson>,
    pub over_budget: bool,
    /// RFC 3339 UTC: when the prediction (or the use) first went over.
    pub over_budget_since: Option<String>,
    /// The line said once when the budget was first exceeded.
    pub alert: Option<String>,
}

impl LiveState {
    /// The state of a run; the prediction is the standing's (none where
    /// nothing was measured); `first_over` is when it first went over budget.
    pub fn new(
        job_id: &str,
        now: SystemTime,
        elapsed_s: f64,
        used: Option<Amount>,
        budget: Option<CarbonBudget>,
        standing: Option<&Standing>,
        first_over: Option<SystemTime>,
    ) -> LiveState {
        LiveState {
            job_id: job_id.to_string(),
            updated: humantime::format_rfc3339_seconds(now).to_string(),
            running: true,
            elapsed_s,
            used,
            predicted: standing
                .and_then(|s| s.predicted)
                .map(|(a, from)| PredictedJson {
                    energy_kwh: a.energy_kwh,
                    co2e_g: a.co2e_g,
                    from,
                }),
            budget: budget.map(BudgetJson::from),
            over_budget: standing.is_some_and(|s| s.over),
            over_budget_since: first_over.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            alert: standing.and_then(Standing::alert),
        }
    }
}

/// The line `carbontrack epoch` prints (to the job's stderr, where its user
/// looks) when the budget was first exceeded since the previous epoch mark:
/// once, at the first mark after the crossing. `carbontrack run` says it
/// itself, so a state of `local` is left alone.
pub fn epoch_notice(state: &LiveState, previous_mark: Option<SystemTime>) -> Option<String> {
    if !state.over_budget || state.job_id == "local" {
        return None;
    }
    let since = state
        .over_budget_since
        .as_deref()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())?;
    // The state's times are whole seconds: a crossing in the same second as
    // the previous mark counts as after it.
    let new = previous_mark.is_none_or(|p| since + std::time::Duration::from_secs(1) > p);
    new.then(|| {
        format!(
            "carbontrack: {}",
            state.alert.as_deref().unwrap_or("over budget")
        )
    })
}

/// The live state file's name.
pub fn state_file_name(job_id: &str) -> String {
    format!("carbontrack-{job_id}.json")
}

/// The environment variable naming the live state file, set in the job's
/// steps (and by `carbontrack run` for its command) when it has a budget.
pub const STATE_FILE_ENV: &str = "CARBONTRACK_STATE_FILE";

fn sig(x: f64) -> String {
    super::equivalents::fmt_significant(x, 3)
}

fn fmt_grams(g: f64) -> String {
    if g >= 1000.0 {
        format!("{} kg CO2e", sig(g / 1000.0))
    } else {
        format!("{} g CO2e", sig(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_with_their_units() {
        for (text, want) in [
            ("500g", CarbonBudget::Co2e(GramsCo2e(500.0))),
            ("2kg", CarbonBudget::Co2e(GramsCo2e(2000.0))),
            ("2 KG", CarbonBudget::Co2e(GramsCo2e(2000.0))),
            ("0.5t", CarbonBudget::Co2e(GramsCo2e(500_000.0))),
            ("1.5kWh", CarbonBudget::Energy(KilowattHours(1.5))),
            ("1.5KWH", CarbonBudget::Energy(KilowattHours(1.5))),
            ("800wh", CarbonBudget::Energy(KilowattHours(0.8))),
            (" 1g ", CarbonBudget::Co2e(GramsCo2e(1.0))),
        ] {
            assert_eq!(parse_budget(text), Ok(want), "{text}");
            // What the hand-off record keeps reads back the same.
            assert_eq!(parse_budget(&want.to_string()), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_budgets_are_refused_with_the_reason() {
        for (text, why) in [
            ("0g", "more than zero"),
            ("-5g", "not a positive number"),
            ("500", "unit is missing"),
            ("500 lb", "`lb` is not a unit"),
            ("g", "not a positive number"),
            ("", "not a positive number"),
            ("1.2.3kg", "not a positive number"),
            ("2000t", "more than 1000 t"),
            ("2000000kWh", "more than 1 GWh"),
        ] {
            let e = parse_budget(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
            assert!(
                e.contains("--carbon-budget=") && e.contains("e.g. 500g"),
                "{e}"
            );
        }
    }

    const A: fn(f64, f64) -> Amount = |energy_kwh, co2e_g| Amount { energy_kwh, co2e_g };

    #[test]
    fn standing_against_the_budget() {
        let g500 = CarbonBudget::Co2e(GramsCo2e(500.0));
        let kwh2 = CarbonBudget::Energy(KilowattHours(2.0));
        let ep = PredictedFrom::Epochs;
        // (budget, used, predicted) -> (over, used %, predicted %)
        for (budget, used, predicted, over, used_pc, pred_pc) in [
            (g500, A(0.1, 100.0), None, false, 20.0, None),
            (
                g500,
                A(0.1, 100.0),
                Some((A(1.0, 400.0), ep)),
                false,
                20.0,
                Some(80.0),
            ),
            (
                g500,
                A(0.1, 100.0),
                Some((A(1.0, 600.0), ep)),
                true,
                20.0,
                Some(120.0),
            ),
            (g500, A(9.0, 501.0), None, true, 100.2, None),
            // An energy budget looks at the energy, not the CO2e.
            (
                kwh2,
                A(1.0, 9000.0),
                Some((A(1.5, 9999.0), ep)),
                false,
                50.0,
                Some(75.0),
            ),
            (
                kwh2,
                A(1.0, 1.0),
                Some((A(2.5, 1.0), ep)),
                true,
                50.0,
                Some(125.0),
            ),
        ] {
            let s = assess(budget, used, predicted);
            assert_eq!(s.over, over, "{budget} {used:?} {predicted:?}");
            assert!((100.0 * s.used_fraction - used_pc).abs() < 1e-9, "{s:?}");
            assert_eq!(
                s.predicted_fraction
                    .map(|f| (100.0 * f * 1e6).round() / 1e6),
                pred_pc,
                "{s:?}"
            );
            assert_eq!(s.alert().is_some(), over);
        }
    }

    #[test]
    fn the_alert_and_the_block_say_what_went_over() {
        let g500 = CarbonBudget::Co2e(GramsCo2e(500.0));
        let s = assess(
            g500,
            A(0.1, 100.0),
            Some((A(2.0, 812.0), PredictedFrom::Epochs)),
        );
        assert_eq!(
            s.alert().unwrap(),
            "OVER BUDGET: predicted 812 g CO2e for all epochs, over the carbon budget of \
             500 g CO2e (carbontrack does not stop the job)"
        );
        assert_eq!(
            s.lines(false),
            [
                "Carbon budget: 500 g CO2e",
                "  Used so far: 100 g CO2e (20% of the budget)",
                "  Predicted for all epochs: 812 g CO2e (162% of the budget)",
            ]
        );
        let s = assess(
            CarbonBudget::Energy(KilowattHours(1.5)),
            A(1.6, 700.0),
            None,
        );
        assert_eq!(
            s.alert().unwrap(),
            "OVER BUDGET: 1.60 kWh used, over the carbon budget of 1.50 kWh (carbontrack does \
             not stop the job)"
        );
        assert_eq!(
            s.lines(true),
            [
                "Carbon budget: 1.50 kWh",
                "  Used: 1.60 kWh (107% of the budget)",
                "  The run went over its budget.",
            ]
        );
    }

    #[test]
    fn the_live_state_reads_back() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_714_521_600);
        let s = assess(
            CarbonBudget::Co2e(GramsCo2e(1.0)),
            A(0.001, 0.5),
            Some((A(0.01, 5.0), PredictedFrom::Epochs)),
        );
        let st = LiveState::new(
            "42",
            t,
            12.0,
            Some(A(0.001, 0.5)),
            Some(s.budget),
            Some(&s),
            Some(t),
        );
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains(r#""over_budget":true"#), "{json}");
        assert!(
            json.contains(r#""budget":{"text":"1g","unit":"g_co2e","amount":1.0}"#),
            "{json}"
        );
        assert!(json.contains(r#""from":"epochs""#), "{json}");
        assert!(
            json.contains(r#""over_budget_since":"2024-05-01T00:00:00Z""#),
            "{json}"
        );
        let back: LiveState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);

        // `carbontrack epoch` says it at the first mark after the crossing.
        let secs = |n: u64| t + std::time::Duration::from_secs(n);
        let under = LiveState {
            over_budget: false,
            over_budget_since: None,
            alert: None,
            ..st.clone()
        };
        let local = LiveState {
            job_id: "local".into(),
            ..st.clone()
        };
        for (state, previous, said) in [
            (&st, None, true),
            (
                &st,
                Some(secs(0) - std::time::Duration::from_secs(60)),
                true,
            ),
            (&st, Some(t), true),
            (&st, Some(secs(5)), false),
            (&under, None, false),
            (&local, None, false),
        ] {
            let n = epoch_notice(state, previous);
            assert_eq!(n.is_some(), said, "{previous:?} {state:?}");
            if let Some(n) = n {
                assert!(n.starts_with("carbontrack: OVER BUDGET: predicted"), "{n}");
            }
        }
    }
}
