//! Which of the node's AMD GPUs belong to the job: a pure decision over what
//! the environment says and what AMD SMI lists, with table tests.
//!
//! Slurm hands AMD GPUs out as gres with `File=/dev/dri/renderD*`. Its list
//! (`SLURM_STEP_GPUS`, else `SLURM_JOB_GPUS`) holds, per GPU, its position
//! among the node's gres files: verified on Slurm 22.05 with
//! `File=…/renderD[128-131]` (tests/amd_cluster.rs), where a job given the
//! second and third file gets `SLURM_JOB_GPUS=1,2` in the prolog (what
//! `job_prolog` reads) and in the batch step, as `ROCR_VISIBLE_DEVICES=1,2`
//! and `scontrol -d show job`'s `IDX:1-2`. A position is read against the
//! node's AMD GPUs ordered by render minor, the order gres.conf's
//! `renderD[128-135]` lists them in. An entry of 128 and up is taken as the
//! render minor itself (DRM render minors start at 128), for releases or
//! setups that put the number parsed from the file name there. Anything not
//! a number makes the list unusable, as for NVIDIA.
//!
//! Else `ROCR_VISIBLE_DEVICES`, else `HIP_VISIBLE_DEVICES`: indices in the
//! runtime's order (by PCI address) or `GPU-` UUIDs; empty means no GPU.
//! Else every AMD GPU of the node, with a note.

use super::gpus::{SelectedBy, SelectedGpu, Selection};

/// What the environment says about the job's AMD GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmdGpuHints {
    /// `SLURM_STEP_GPUS`, else `SLURM_JOB_GPUS`.
    pub slurm_gpus: Option<String>,
    /// `ROCR_VISIBLE_DEVICES`, else `HIP_VISIBLE_DEVICES`.
    pub rocr_visible: Option<String>,
}

/// One AMD GPU (a GCD, or a partition) as AMD SMI lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmdGpuInfo {
    /// Position in AMD SMI's list (the meter's handle).
    pub index: u32,
    /// The stable id reported in the `device` column: AMD SMI's UUID, else
    /// the board serial with the position.
    pub id: String,
    /// Minor of `/dev/dri/renderD*`, when known.
    pub render_minor: Option<u32>,
    /// PCI address as AMD SMI packs it.
    pub bdf: Option<u64>,
    /// The physical package (board serial; each GPU its own when unknown):
    /// the GCDs of an MI250X share one.
    pub package: String,
}

/// The first render minor; smaller entries of Slurm's list are positions.
const FIRST_RENDER_MINOR: u32 = 128;

/// Decides the job's AMD GPUs; see the module documentation. Also returns
/// the entries of Slurm's list no AMD GPU of the node answers to: Slurm
/// gave the job GPUs that cannot be told apart, so the selection is never
/// widened to guess (that would charge the job its neighbours' GPUs); the
/// meter reports them `unavailable` instead.
pub fn select(hints: &AmdGpuHints, inv: &[AmdGpuInfo]) -> (Selection, Vec<u32>) {
    let mut notes = Vec::new();
    if let Some(raw) = hints.slurm_gpus.as_deref()
        && let Some((gpus, unidentified)) = from_slurm(raw, inv, &mut notes)
        && (!gpus.is_empty() || !unidentified.is_empty())
    {
        let selection = Selection {
            gpus,
            how: SelectedBy::SlurmList,
            notes,
        };
        return (selection, unidentified);
    }
    (select_without_slurm(hints, inv, notes), Vec::new())
}

/// The selection when Slurm's list says nothing usable.
fn select_without_slurm(
    hints: &AmdGpuHints,
    inv: &[AmdGpuInfo],
    mut notes: Vec<String>,
) -> Selection {
    if let Some(raw) = hints.rocr_visible.as_deref() {
        let value = raw.trim();
        if value.is_empty() {
            notes.push("ROCR_VISIBLE_DEVICES is empty: the job sees no AMD GPU".into());
            return Selection {
                gpus: Vec::new(),
                how: SelectedBy::CudaVisible,
                notes,
            };
        }
        let mut by_bus: Vec<&AmdGpuInfo> = inv.iter().collect();
        by_bus.sort_by_key(|g| (g.bdf.unwrap_or(u64::MAX), g.index));
        let mut out = Vec::new();
        for entry in value.split(',').map(str::trim) {
            let g = match entry.parse::<usize>() {
                Ok(k) => by_bus.get(k).copied(),
                Err(_) => inv.iter().find(|g| g.id.eq_ignore_ascii_case(entry)),
            };
            match g {
                Some(g) => push_once(&mut out, g),
                None => {
                    notes.push(format!(
                        "ROCR_VISIBLE_DEVICES entry `{entry}` names no AMD GPU of this node"
                    ));
                    break;
                }
            }
        }
        if !out.is_empty() {
            return Selection {
                gpus: out,
                how: SelectedBy::CudaVisible,
                notes,
            };
        }
    }
    if !inv.is_empty() {
        notes.push(format!(
            "nothing names the job's AMD GPUs: all {} of the node are counted",
            inv.len()
        ));
    }
    let mut gpus = Vec::new();
    for g in inv {
        push_once(&mut gpus, g);
    }
    Selection {
        gpus,
        how: SelectedBy::All,
        notes,
    }
}

fn push_once(out: &mut Vec<SelectedGpu>, g: &AmdGpuInfo) {
    if !out.iter().any(|s| s.uuid == g.id) {
        out.push(SelectedGpu {
            uuid: g.id.clone(),
            index: g.index,
            shared: false,
            share: 1.0,
        });
    }
}

/// Slurm's list: the GPUs it names and the entries that name none; `None`
/// (with a note) when it is not a list of numbers.
fn from_slurm(
    raw: &str,
    inv: &[AmdGpuInfo],
    notes: &mut Vec<String>,
) -> Option<(Vec<SelectedGpu>, Vec<u32>)> {
    let mut numbers = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<u32>().ok().zip(b.parse::<u32>().ok()),
            None => part.parse::<u32>().ok().map(|k| (k, k)),
        };
        match range {
            Some((a, b)) if a <= b && b - a < 1024 => numbers.extend(a..=b),
            _ => {
                notes.push(format!(
                    "Slurm GPU list `{raw}` is not a list of GPU indices: ignored"
                ));
                return None;
            }
        }
    }
    let mut by_minor: Vec<&AmdGpuInfo> = inv.iter().filter(|g| g.render_minor.is_some()).collect();
    by_minor.sort_by_key(|g| g.render_minor);
    let mut out = Vec::new();
    let mut unidentified = Vec::new();
    for k in numbers {
        let g = if k >= FIRST_RENDER_MINOR {
            inv.iter().find(|g| g.render_minor == Some(k))
        } else {
            by_minor.get(k as usize).copied()
        };
        match g {
            Some(g) => push_once(&mut out, g),
            None => {
                unidentified.push(k);
                notes.push(if k >= FIRST_RENDER_MINOR {
                    format!(
                        "Slurm GPU {k}: no AMD GPU with render node /dev/dri/renderD{k} on this node"
                    )
                } else {
                    format!(
                        "Slurm GPU {k}: this node has {} AMD GPUs with a known render node",
                        by_minor.len()
                    )
                });
            }
        }
    }
    Some((out, unidentified))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four GCDs on two packages, listed by AMD SMI out of bus order.
    fn node() -> Vec<AmdGpuInfo> {
        let g = |index: u32, minor: u32, bus: u64, pkg: &str| AmdGpuInfo {
            index,
            id: format!("uuid-{index}"),
            render_minor: Some(minor),
            bdf: Some(bus << 8),
            package: pkg.into(),
        };
        vec![
            g(0, 129, 0xc9, "A"),
            g(1, 128, 0xc1, "A"),
            g(2, 130, 0xd1, "B"),
            g(3, 131, 0xd9, "B"),
        ]
    }

    fn chosen(h: AmdGpuHints) -> (Vec<u32>, SelectedBy) {
        let (s, _) = select(&h, &node());
        (s.gpus.iter().map(|g| g.index).collect(), s.how)
    }

    #[test]
    fn sources_in_order() {
        let slurm = |s: &str| AmdGpuHints {
            slurm_gpus: Some(s.into()),
            rocr_visible: None,
        };
        let rocr = |s: &str| AmdGpuHints {
            slurm_gpus: None,
            rocr_visible: Some(s.into()),
        };
        let cases: Vec<(AmdGpuHints, Vec<u32>, SelectedBy)> = vec![
            // positions: by render minor, renderD128 first
            (slurm("0,1"), vec![1, 0], SelectedBy::SlurmList),
            (slurm("2-3"), vec![2, 3], SelectedBy::SlurmList),
            // render minors as Slurm parsed them from the file names
            (slurm("128,130"), vec![1, 2], SelectedBy::SlurmList),
            // garbage: the next source decides
            (
                AmdGpuHints {
                    slurm_gpus: Some("gpu:x".into()),
                    rocr_visible: Some("2".into()),
                },
                vec![2],
                SelectedBy::CudaVisible,
            ),
            // ROCR indices by PCI address; UUIDs
            (rocr("0"), vec![1], SelectedBy::CudaVisible),
            (rocr("uuid-3,uuid-3"), vec![3], SelectedBy::CudaVisible),
            (rocr(""), vec![], SelectedBy::CudaVisible),
            (AmdGpuHints::default(), vec![0, 1, 2, 3], SelectedBy::All),
        ];
        for (h, want, how) in cases {
            assert_eq!(chosen(h.clone()), (want, how), "{h:?}");
        }
    }

    /// Slurm names GPUs the node's AMD SMI cannot be matched to: never all
    /// the node's GPUs instead, the unmatched ones said.
    #[test]
    fn a_minor_of_no_gpu_is_noted() {
        let (s, unidentified) = select(
            &AmdGpuHints {
                slurm_gpus: Some("140".into()),
                rocr_visible: Some("0".into()),
            },
            &node(),
        );
        assert_eq!(s.how, SelectedBy::SlurmList);
        assert!(s.gpus.is_empty());
        assert_eq!(unidentified, [140]);
        assert!(
            s.notes.iter().any(|n| n.contains("renderD140")),
            "{:?}",
            s.notes
        );
        let (s, unidentified) = select(
            &AmdGpuHints {
                slurm_gpus: Some("1,7".into()),
                rocr_visible: None,
            },
            &node(),
        );
        assert_eq!(s.gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [0]);
        assert_eq!(unidentified, [7]);
    }
}
