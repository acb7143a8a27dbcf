//! One job's total over its nodes' footprint rows: what the epilog delivers to
//! accounting and the ledger, and what waits in the outbox when it cannot.

use serde::{Deserialize, Serialize};

use crate::config::Components;
use crate::footprint::{self, Row};
use crate::measure::Component;

/// Who ran the job and where: from the Epilog's environment, else the
/// prolog's hand-off record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMeta {
    pub user: String,
    pub account: String,
    pub partition: String,
    pub cluster: String,
}

/// A job's footprint summed over its nodes. `None` is "not measured": never
/// written as 0 anywhere.
///
/// The field order is the ledger's column order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTotal {
    pub job_id: u32,
    pub user: String,
    pub account: String,
    pub partition: String,
    /// How many nodes' footprints went into the total.
    pub nodes: u32,
    /// RFC 3339 UTC: the earliest start and latest end over the nodes.
    pub start: String,
    pub end: String,
    pub duration_s: f64,
    /// Allocated GPUs × the time they were measured for.
    pub gpu_hours: f64,
    /// Energy at the devices (before PUE) per component.
    pub cpu_j: Option<f64>,
    pub dram_j: Option<f64>,
    pub gpu_j: Option<f64>,
    pub energy_j: Option<f64>,
    /// Facility energy (× PUE) and its CO2e.
    pub energy_kwh: Option<f64>,
    pub co2e_g: Option<f64>,
    /// The effective PUE and intensity of the total (they equal the configured
    /// ones when every node used the same).
    pub pue: f64,
    pub intensity_g_per_kwh: Option<f64>,
    /// `ok`, `incomplete: …` or `unavailable: …`, as the footprint's total row.
    pub status: String,
    pub cluster: String,
    /// The node names, space-separated.
    pub node_list: String,
}

impl JobTotal {
    /// The run this total measured: its job id and the start of its
    /// measurement, which names its records (job ids are reused).
    pub fn run_key(&self) -> crate::spool::RunKey {
        crate::spool::RunKey::new(self.job_id, &self.start)
    }

    /// The total over the device rows of every node of a job (total rows are
    /// recomputed, not trusted). `None` without any device row.
    ///
    /// A component with an unmeasured device is unknown as a whole (a partial
    /// sum would pass for the whole); one that was measured on no node is
    /// 0 when it was being measured (the job had no such device) and unknown
    /// when the site switched it off.
    pub fn from_rows(
        job_id: u32,
        rows: &[Row],
        components: Components,
        meta: &JobMeta,
    ) -> Option<JobTotal> {
        let t = footprint::total_of(rows)?;
        let devices: Vec<&Row> = rows.iter().filter(|r| !r.is_total()).collect();
        let mut nodes: Vec<&str> = devices.iter().map(|r| r.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let component = |c: Component, enabled: bool| -> Option<f64> {
            let of: Vec<&&Row> = devices
                .iter()
                .filter(|r| r.component == c.as_str())
                .collect();
            if of.is_empty() {
                return enabled.then_some(0.0);
            }
            of.iter().map(|r| r.energy_j).sum()
        };
        let gpu_hours = devices
            .iter()
            .filter(|r| r.component == Component::Gpu.as_str())
            .map(|r| r.duration_s * r.share.unwrap_or(1.0) / 3600.0)
            .sum();
        Some(JobTotal {
            job_id,
            user: meta.user.clone(),
            account: meta.account.clone(),
            partition: meta.partition.clone(),
            nodes: nodes.len() as u32,
            start: t.start,
            end: t.end,
            duration_s: t.duration_s,
            gpu_hours,
            cpu_j: component(Component::Cpu, components.cpu),
            dram_j: component(Component::Dram, components.dram),
            gpu_j: component(Component::Gpu, components.gpu),
            energy_j: t.energy_j,
            energy_kwh: t.energy_kwh,
            co2e_g: t.co2e_g,
            pue: t.pue,
            intensity_g_per_kwh: t.intensity_g_per_kwh,
            status: t.status,
            cluster: meta.cluster.clone(),
            node_list: nodes.join(" "),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A device row as a node's footprint holds it.
    pub(crate) fn row(node: &str, component: &str, device: &str, j: Option<f64>) -> Row {
        let (pue, g) = (1.5, 400.0);
        let kwh = j.map(|j| j * pue / 3.6e6);
        Row {
            job_id: "7".into(),
            node: node.into(),
            component: component.into(),
            device: device.into(),
            start: "2024-05-01T00:00:00.000Z".into(),
            end: "2024-05-01T01:00:00.000Z".into(),
            duration_s: 3600.0,
            share: Some(1.0),
            energy_j: j,
            pue,
            energy_kwh: kwh,
            intensity_g_per_kwh: Some(g),
            co2e_g: kwh.map(|k| k * g),
            status: if j.is_some() {
                "ok".into()
            } else {
                "unavailable: test".into()
            },
            intensity_source: "fixed by site".into(),
        }
    }

    fn meta() -> JobMeta {
        JobMeta {
            user: "alice".into(),
            account: "ml".into(),
            partition: "gpu".into(),
            cluster: "c".into(),
        }
    }

    #[test]
    fn sums_nodes_and_components() {
        let rows = vec![
            row("n1", "cpu", "package-0", Some(1000.0)),
            row("n1", "dram", "package-0", Some(100.0)),
            row("n1", "gpu", "GPU-a", Some(7200.0)),
            row("n2", "cpu", "package-0", Some(2000.0)),
            row("n2", "gpu", "GPU-b", Some(3600.0)),
            row("n2", "gpu", "GPU-c", Some(3600.0)),
        ];
        let t = JobTotal::from_rows(7, &rows, Components::ALL, &meta()).unwrap();
        assert_eq!((t.nodes, t.node_list.as_str()), (2, "n1 n2"));
        assert_eq!(
            (t.cpu_j, t.dram_j, t.gpu_j),
            (Some(3000.0), Some(100.0), Some(14400.0))
        );
        assert_eq!(t.energy_j, Some(17500.0));
        assert!((t.energy_kwh.unwrap() - 17500.0 * 1.5 / 3.6e6).abs() < 1e-12);
        assert!((t.co2e_g.unwrap() - 17500.0 * 1.5 / 3.6e6 * 400.0).abs() < 1e-9);
        assert_eq!(t.gpu_hours, 3.0);
        assert_eq!(t.status, "ok");
        assert_eq!(t.user, "alice");
    }

    #[test]
    fn unmeasured_is_unknown_never_zero() {
        let rows = vec![
            row("n1", "cpu", "package-0", Some(1000.0)),
            row("n1", "gpu", "GPU-a", Some(7200.0)),
            row("n1", "gpu", "GPU-b", None),
        ];
        let off = Components {
            dram: false,
            ..Components::ALL
        };
        let t = JobTotal::from_rows(7, &rows, off, &meta()).unwrap();
        assert_eq!(t.cpu_j, Some(1000.0));
        // One of two GPUs unmeasured: the GPU figure is unknown, not 7200.
        assert_eq!(t.gpu_j, None);
        // DRAM switched off by the site: unknown, not 0.
        assert_eq!(t.dram_j, None);
        assert!(t.status.starts_with("incomplete"), "{}", t.status);
        // A job with no GPU at all, GPUs being measured: a true 0.
        let t = JobTotal::from_rows(7, &rows[..1], Components::ALL, &meta()).unwrap();
        assert_eq!((t.gpu_j, t.gpu_hours), (Some(0.0), 0.0));
        let t = JobTotal::from_rows(7, &rows[2..], Components::ALL, &meta()).unwrap();
        assert_eq!((t.energy_kwh, t.co2e_g), (None, None));
        assert_eq!(JobTotal::from_rows(7, &[], Components::ALL, &meta()), None);
    }

    /// Nodes measured and estimated (`cpu_tdp=`): the figures add up, and
    /// the total, the accounting segment and the report all say it includes
    /// an estimate.
    #[test]
    fn an_estimate_is_marked_all_the_way_to_the_report() {
        let mut est = row("n2", "cpu", "tdp-estimate", Some(500.0));
        est.status = "estimated: TDP 100 W (cpu_tdp=100), CPU time".into();
        let rows = vec![
            row("n1", "cpu", "package-0", Some(1000.0)),
            row("n1", "dram", "package-0", Some(100.0)),
            est,
        ];
        let off = Components {
            gpu: false,
            dram: false,
            ..Components::ALL
        };
        let t = JobTotal::from_rows(7, &rows, off, &meta()).unwrap();
        assert_eq!((t.cpu_j, t.energy_j), (Some(1500.0), Some(1600.0)));
        assert_eq!(t.status, "estimated: 1 of 3 rows estimated (cpu)");
        let seg = crate::report::accounting::Segment::of(&t).format();
        assert!(seg.ends_with(" estimated=cpu nodes=2"), "{seg}");
        let recs = crate::report::aggregate::ledger_records(std::slice::from_ref(&t));
        assert!(recs[0].estimated);
        // Measured only: no mark anywhere.
        let t = JobTotal::from_rows(7, &rows[..2], off, &meta()).unwrap();
        assert!(
            !crate::report::accounting::Segment::of(&t)
                .format()
                .contains("estimated")
        );
        assert!(!crate::report::aggregate::ledger_records(&[t])[0].estimated);
    }
}
