//! Which of the node's GPUs belong to the job: a pure decision over what the
//! environment says and what NVML lists, so every rule has a table test and no
//! GPU is needed to check them.
//!
//! Sources, first usable one wins:
//! 1. Slurm's list (`SLURM_STEP_GPUS`, else `SLURM_JOB_GPUS`): Slurm's global
//!    indices. With `File=/dev/nvidia[…]` in gres.conf Slurm's index follows
//!    the device files, so index `k` is the GPU whose minor number is `k`
//!    (`/dev/nvidiak`); NVML's index is used only for a GPU whose minor number
//!    NVML cannot tell. Entries must be numbers (`0,1`, ranges `0-3`); an
//!    empty entry is skipped, anything else makes the whole list unusable,
//!    because guessing from part of a list we do not understand could pick
//!    another job's GPU.
//! 2. `CUDA_VISIBLE_DEVICES`, read as CUDA reads it: entries in order up to
//!    the first invalid one (so `0,,1` and `0,-1,1` mean GPU 0 only). Entries
//!    are NVML indices, `GPU-` UUIDs (a unique prefix is enough, as for CUDA)
//!    or `MIG-` UUIDs, which count their parent GPU, flagged as shared.
//!    Indices are trusted only here, where no Slurm list exists: inside a job
//!    with `ConstrainDevices=yes` Slurm renumbers them from 0, and that is
//!    exactly the case in which Slurm's own list is there to use instead.
//!    `""` and a leading negative index (`-1`) are deliberate ways to hide every
//!    GPU: the job has none. `NoDevFiles` (Slurm: GPUs allocated, device files
//!    unknown) and garbage say nothing usable, so the next source decides.
//! 3. The job's processes: GPUs running a compute process of the job; shared
//!    when processes of others run there too.
//! 4. Every GPU of the node, with a note saying so.
//!
//! Each step that is skipped or partly used leaves a note for the log.

use std::collections::BTreeMap;

/// What the environment says about the job's GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuHints {
    /// `SLURM_STEP_GPUS`, else `SLURM_JOB_GPUS`.
    pub slurm_gpus: Option<String>,
    /// `CUDA_VISIBLE_DEVICES`.
    pub cuda_visible: Option<String>,
    /// The job's process ids, when they are known (cgroup, Slurm).
    pub job_pids: Option<Vec<u32>>,
}

/// One physical GPU as NVML lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuInfo {
    /// NVML's index (PCI bus order).
    pub index: u32,
    /// `GPU-…`.
    pub uuid: String,
    /// Model name, for the log.
    pub name: String,
    /// Minor number of `/dev/nvidiaN`, when NVML tells it.
    pub minor: Option<u32>,
    /// `MIG-…` UUIDs of its MIG instances (empty when MIG is off).
    pub mig_uuids: Vec<String>,
    /// Processes with a compute context on it.
    pub pids: Vec<u32>,
}

/// A GPU counted for the job.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedGpu {
    pub uuid: String,
    /// NVML's index, for the meter.
    pub index: u32,
    /// The job does not have the GPU to itself: it holds MIG instances of it,
    /// or others run compute processes on it.
    pub shared: bool,
    /// Fraction of the GPU's energy attributed to the job: 1, except for MIG,
    /// where it is the job's instances over all instances of the GPU (by
    /// count: instance sizes are not known here).
    pub share: f64,
}

/// Which source decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectedBy {
    SlurmList,
    CudaVisible,
    Pids,
    All,
}

impl SelectedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            SelectedBy::SlurmList => "Slurm GPU list",
            SelectedBy::CudaVisible => "CUDA_VISIBLE_DEVICES",
            SelectedBy::Pids => "the job's GPU processes",
            SelectedBy::All => "all GPUs of the node",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// In the order the source named them; each GPU once.
    pub gpus: Vec<SelectedGpu>,
    pub how: SelectedBy,
    /// Why sources were skipped or partly used; for the log.
    pub notes: Vec<String>,
}

/// What one source made of its hint.
enum Outcome {
    Chosen(Vec<SelectedGpu>),
    /// The source says, deliberately, that the job has no GPU.
    NoGpus,
    /// No usable answer; the next source decides.
    Skip,
}

/// Decides the job's GPUs; see the module documentation for the rules.
pub fn select(hints: &GpuHints, inventory: &[GpuInfo]) -> Selection {
    let mut notes = Vec::new();
    let sources = [
        (
            SelectedBy::SlurmList,
            from_slurm(hints, inventory, &mut notes),
        ),
        (
            SelectedBy::CudaVisible,
            from_cuda(hints, inventory, &mut notes),
        ),
        (SelectedBy::Pids, from_pids(hints, inventory, &mut notes)),
    ];
    for (how, outcome) in sources {
        match outcome {
            Outcome::Chosen(gpus) => return Selection { gpus, how, notes },
            Outcome::NoGpus => {
                return Selection {
                    gpus: Vec::new(),
                    how,
                    notes,
                };
            }
            Outcome::Skip => {}
        }
    }
    if !inventory.is_empty() {
        notes.push(format!(
            "nothing names the job's GPUs: all {} GPUs of the node are counted",
            inventory.len()
        ));
    }
    Selection {
        gpus: inventory.iter().map(|g| whole(g, false)).collect(),
        how: SelectedBy::All,
        notes,
    }
}

fn whole(g: &GpuInfo, shared: bool) -> SelectedGpu {
    SelectedGpu {
        uuid: g.uuid.clone(),
        index: g.index,
        shared,
        share: 1.0,
    }
}

/// Adds `g` unless it is already there.
fn push_once(out: &mut Vec<SelectedGpu>, g: &GpuInfo) {
    if !out.iter().any(|s| s.uuid == g.uuid) {
        out.push(whole(g, false));
    }
}

fn from_slurm(hints: &GpuHints, inv: &[GpuInfo], notes: &mut Vec<String>) -> Outcome {
    let Some(raw) = hints.slurm_gpus.as_deref() else {
        return Outcome::Skip;
    };
    let Some(indices) = parse_slurm_list(raw, notes) else {
        return Outcome::Skip;
    };
    let mut out = Vec::new();
    for k in indices {
        let by_minor = inv.iter().find(|g| g.minor == Some(k));
        let by_index = || inv.iter().find(|g| g.index == k && g.minor.is_none());
        match by_minor.or_else(by_index) {
            Some(g) => {
                if by_minor.is_none() {
                    notes.push(format!(
                        "Slurm GPU {k}: minor number unknown, taken as NVML index {k}"
                    ));
                }
                push_once(&mut out, g);
            }
            None => notes.push(format!(
                "Slurm GPU {k}: no GPU with minor number {k} (/dev/nvidia{k}) on this node"
            )),
        }
    }
    if out.is_empty() {
        notes.push(format!("Slurm GPU list `{raw}` names no GPU of this node"));
        return Outcome::Skip;
    }
    Outcome::Chosen(out)
}

/// `0,1`, `0-3`; `None` (with a note) when the list is empty or not numbers.
fn parse_slurm_list(raw: &str, notes: &mut Vec<String>) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    let mut empty_entries = false;
    for part in raw.split(',').map(str::trim) {
        if part.is_empty() {
            empty_entries = true;
            continue;
        }
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<u32>().ok().zip(b.parse::<u32>().ok()),
            None => part.parse::<u32>().ok().map(|k| (k, k)),
        };
        match range {
            Some((a, b)) if a <= b && b - a < 1024 => out.extend(a..=b),
            _ => {
                notes.push(format!(
                    "Slurm GPU list `{raw}` is not a list of GPU indices: ignored"
                ));
                return None;
            }
        }
    }
    if out.is_empty() {
        notes.push("Slurm GPU list is empty: ignored".to_string());
        return None;
    }
    if empty_entries {
        notes.push(format!("Slurm GPU list `{raw}` has empty entries: skipped"));
    }
    Some(out)
}

/// One `CUDA_VISIBLE_DEVICES` entry resolved against the inventory.
enum CudaEntry<'a> {
    Gpu(&'a GpuInfo),
    /// A MIG instance (its UUID as written) of a GPU.
    Mig(&'a GpuInfo, &'a str),
    /// A negative index: CUDA stops here on purpose.
    Stop,
    Invalid(&'static str),
}

fn resolve_cuda<'a>(entry: &'a str, inv: &'a [GpuInfo]) -> CudaEntry<'a> {
    if entry.is_empty() {
        return CudaEntry::Invalid("an empty entry");
    }
    if let Ok(i) = entry.parse::<i64>() {
        if i < 0 {
            return CudaEntry::Stop;
        }
        return match inv.iter().find(|g| i64::from(g.index) == i) {
            Some(g) => CudaEntry::Gpu(g),
            None => CudaEntry::Invalid("an index beyond the node's GPUs"),
        };
    }
    if entry.starts_with("GPU-") {
        let mut hits = inv.iter().filter(|g| g.uuid.starts_with(entry));
        return match (hits.next(), hits.next()) {
            (Some(g), None) => CudaEntry::Gpu(g),
            (Some(_), Some(_)) => CudaEntry::Invalid("a UUID prefix that fits several GPUs"),
            (None, _) => CudaEntry::Invalid("a UUID of no GPU on this node"),
        };
    }
    if let Some(rest) = entry.strip_prefix("MIG-") {
        // Before driver R470, `MIG-GPU-<parent uuid>/<gi>/<ci>`.
        if let Some(old) = rest.strip_prefix("GPU-") {
            let parent = format!("GPU-{}", old.split('/').next().unwrap_or(""));
            return match inv.iter().find(|g| g.uuid == parent) {
                Some(g) => CudaEntry::Mig(g, entry),
                None => CudaEntry::Invalid("a MIG instance of no GPU on this node"),
            };
        }
        return match inv.iter().find(|g| g.mig_uuids.iter().any(|m| m == entry)) {
            Some(g) => CudaEntry::Mig(g, entry),
            None => CudaEntry::Invalid("a MIG UUID of no GPU on this node"),
        };
    }
    CudaEntry::Invalid("neither an index nor a GPU-/MIG- UUID")
}

fn from_cuda(hints: &GpuHints, inv: &[GpuInfo], notes: &mut Vec<String>) -> Outcome {
    let Some(raw) = hints.cuda_visible.as_deref() else {
        return Outcome::Skip;
    };
    let value = raw.trim();
    if value.is_empty() {
        notes.push("CUDA_VISIBLE_DEVICES is empty: the job sees no GPU".to_string());
        return Outcome::NoGpus;
    }
    if value == "NoDevFiles" {
        notes.push(
            "CUDA_VISIBLE_DEVICES=NoDevFiles: Slurm allocated GPUs without device files, \
             which ones is unknown"
                .to_string(),
        );
        return Outcome::Skip;
    }
    let mut whole_gpus: Vec<&GpuInfo> = Vec::new();
    // Parent UUID → the job's MIG instances on it.
    let mut migs: BTreeMap<&str, (&GpuInfo, Vec<&str>)> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (n, entry) in value.split(',').map(str::trim).enumerate() {
        match resolve_cuda(entry, inv) {
            CudaEntry::Gpu(g) => {
                if !order.contains(&g.uuid.as_str()) {
                    order.push(&g.uuid);
                }
                whole_gpus.push(g);
            }
            CudaEntry::Mig(g, m) => {
                if !order.contains(&g.uuid.as_str()) {
                    order.push(&g.uuid);
                }
                let e = migs.entry(&g.uuid).or_insert((g, Vec::new()));
                if !e.1.contains(&m) {
                    e.1.push(m);
                }
            }
            CudaEntry::Stop if n == 0 => {
                notes.push(format!(
                    "CUDA_VISIBLE_DEVICES={value} hides every GPU: the job sees none"
                ));
                return Outcome::NoGpus;
            }
            CudaEntry::Stop => {
                notes.push(format!(
                    "CUDA_VISIBLE_DEVICES={value}: a negative index hides the entries after it"
                ));
                break;
            }
            CudaEntry::Invalid(why) => {
                notes.push(format!(
                    "CUDA_VISIBLE_DEVICES={value}: entry {} (`{entry}`) is {why}; {}",
                    n + 1,
                    if n == 0 {
                        "the variable is ignored"
                    } else {
                        "CUDA ignores it and the entries after it"
                    }
                ));
                break;
            }
        }
    }
    if order.is_empty() {
        return Outcome::Skip;
    }
    let gpus = order
        .into_iter()
        .map(|uuid| {
            if let Some(g) = whole_gpus.iter().find(|g| g.uuid == uuid) {
                return whole(g, false);
            }
            let (g, mine) = &migs[uuid];
            let share = if g.mig_uuids.len() >= mine.len() && !g.mig_uuids.is_empty() {
                mine.len() as f64 / g.mig_uuids.len() as f64
            } else {
                notes.push(format!(
                    "{uuid}: its MIG instances are not known, the whole GPU is counted"
                ));
                1.0
            };
            SelectedGpu {
                share,
                ..whole(g, true)
            }
        })
        .collect();
    Outcome::Chosen(gpus)
}

fn from_pids(hints: &GpuHints, inv: &[GpuInfo], notes: &mut Vec<String>) -> Outcome {
    let Some(job) = hints.job_pids.as_deref() else {
        return Outcome::Skip;
    };
    let gpus: Vec<SelectedGpu> = inv
        .iter()
        .filter(|g| g.pids.iter().any(|p| job.contains(p)))
        .map(|g| whole(g, g.pids.iter().any(|p| !job.contains(p))))
        .collect();
    if gpus.is_empty() {
        notes.push("no GPU runs a compute process of the job".to_string());
        return Outcome::Skip;
    }
    Outcome::Chosen(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000000";
    const B: &str = "GPU-bbbbbbbb-0000-0000-0000-000000000000";
    const C: &str = "GPU-cccccccc-0000-0000-0000-000000000000";
    const D: &str = "GPU-dddddddd-0000-0000-0000-000000000000";
    const D_MIG1: &str = "MIG-11111111-0000-0000-0000-000000000000";
    const D_MIG2: &str = "MIG-22222222-0000-0000-0000-000000000000";

    /// Four GPUs whose minor numbers do not follow NVML's index (as on a board
    /// where PCI order and device-file order differ); D is in MIG mode.
    fn node() -> Vec<GpuInfo> {
        let gpu = |index, uuid: &str, minor, pids: &[u32]| GpuInfo {
            index,
            uuid: uuid.to_string(),
            name: "Tesla T4".to_string(),
            minor: Some(minor),
            mig_uuids: Vec::new(),
            pids: pids.to_vec(),
        };
        let mut d = gpu(3, D, 3, &[]);
        d.mig_uuids = vec![D_MIG1.to_string(), D_MIG2.to_string()];
        vec![
            gpu(0, A, 1, &[10]),
            gpu(1, B, 0, &[20, 99]),
            gpu(2, C, 2, &[]),
            d,
        ]
    }

    fn pick(slurm: Option<&str>, cuda: Option<&str>, pids: Option<&[u32]>) -> Selection {
        let hints = GpuHints {
            slurm_gpus: slurm.map(str::to_string),
            cuda_visible: cuda.map(str::to_string),
            job_pids: pids.map(<[u32]>::to_vec),
        };
        select(&hints, &node())
    }

    fn uuids(s: &Selection) -> Vec<&str> {
        s.gpus.iter().map(|g| g.uuid.as_str()).collect()
    }

    #[test]
    fn cuda_visible_devices_table() {
        use SelectedBy::*;
        let mig_old = format!("MIG-{D}/1/0");
        // (value, decided by, GPUs, leaves a note)
        let cases: &[(&str, SelectedBy, &[&str], bool)] = &[
            ("", CudaVisible, &[], true),
            ("0", CudaVisible, &[A], false),
            ("0,1", CudaVisible, &[A, B], false),
            (" 1 , 0 ", CudaVisible, &[B, A], false),
            ("1,1", CudaVisible, &[B], false),
            (B, CudaVisible, &[B], false),
            ("GPU-cccc", CudaVisible, &[C], false),
            (&format!("{A},{C}"), CudaVisible, &[A, C], false),
            (D_MIG1, CudaVisible, &[D], false),
            (&mig_old, CudaVisible, &[D], false),
            ("-1", CudaVisible, &[], true),
            ("0,-1,1", CudaVisible, &[A], true),
            ("0,,1", CudaVisible, &[A], true),
            ("2,garbage,1", CudaVisible, &[C], true),
            ("NoDevFiles", All, &[A, B, C, D], true),
            ("garbage", All, &[A, B, C, D], true),
            ("7", All, &[A, B, C, D], true),
            ("GPU-", All, &[A, B, C, D], true),
            ("GPU-ffff", All, &[A, B, C, D], true),
            ("MIG-ffff", All, &[A, B, C, D], true),
        ];
        for (value, how, want, noted) in cases {
            let s = pick(None, Some(value), None);
            assert_eq!((s.how, uuids(&s).as_slice()), (*how, *want), "{value:?}");
            assert_eq!(!s.notes.is_empty(), *noted, "{value:?}: {:?}", s.notes);
        }
    }

    #[test]
    fn mig_instances_count_their_parent_as_shared_by_instance() {
        let s = pick(None, Some(D_MIG1), None);
        assert_eq!(s.gpus.len(), 1);
        assert!(s.gpus[0].shared);
        assert_eq!(s.gpus[0].share, 0.5);
        assert_eq!(s.gpus[0].index, 3);

        let both = pick(None, Some(&format!("{D_MIG1},{D_MIG2},{D_MIG1}")), None);
        assert_eq!(both.gpus[0].share, 1.0);
        assert!(both.gpus[0].shared);

        let whole_wins = pick(None, Some(&format!("{D_MIG1},3")), None);
        assert_eq!(whole_wins.gpus[0].share, 1.0);
        assert!(!whole_wins.gpus[0].shared);

        let plain = pick(None, Some("0"), None);
        assert_eq!((plain.gpus[0].share, plain.gpus[0].shared), (1.0, false));
    }

    #[test]
    fn slurm_list_table_maps_by_minor_number() {
        use SelectedBy::*;
        // Slurm index k is /dev/nvidiak: minor 0 is B, minor 1 is A.
        // (value, decided by, GPUs, leaves a note)
        let cases: &[(&str, SelectedBy, &[&str], bool)] = &[
            ("0", SlurmList, &[B], false),
            ("0,1", SlurmList, &[B, A], false),
            ("0-2", SlurmList, &[B, A, C], false),
            ("0,,1", SlurmList, &[B, A], true),
            ("3,9", SlurmList, &[D], true),
            ("", CudaVisible, &[C], true),
            ("-1", CudaVisible, &[C], true),
            ("NoDevFiles", CudaVisible, &[C], true),
            ("garbage", CudaVisible, &[C], true),
            ("0,x", CudaVisible, &[C], true),
            ("9", CudaVisible, &[C], true),
            (A, CudaVisible, &[C], true),
        ];
        for (value, how, want, noted) in cases {
            // CUDA_VISIBLE_DEVICES=2 shows which source decided when Slurm's did not.
            let s = pick(Some(value), Some("2"), None);
            assert_eq!((s.how, uuids(&s).as_slice()), (*how, *want), "{value:?}");
            assert_eq!(!s.notes.is_empty(), *noted, "{value:?}: {:?}", s.notes);
        }
    }

    #[test]
    fn slurm_list_falls_back_to_nvml_index_without_minor_numbers() {
        let mut inv = node();
        for g in &mut inv {
            g.minor = None;
        }
        let hints = GpuHints {
            slurm_gpus: Some("0,1".into()),
            ..GpuHints::default()
        };
        let s = select(&hints, &inv);
        assert_eq!(s.how, SelectedBy::SlurmList);
        assert_eq!(uuids(&s), [A, B]);
        assert_eq!(s.notes.len(), 2);
    }

    #[test]
    fn the_slurm_list_wins_over_cuda_visible_devices() {
        // Under ConstrainDevices the job sees CUDA_VISIBLE_DEVICES=0 for
        // Slurm's GPU 2: the global index decides.
        let s = pick(Some("2"), Some("0"), Some(&[10]));
        assert_eq!(
            (s.how, uuids(&s).as_slice()),
            (SelectedBy::SlurmList, &[C][..])
        );
    }

    #[test]
    fn by_process_then_all() {
        let s = pick(None, None, Some(&[20, 10, 5]));
        assert_eq!(
            (s.how, uuids(&s).as_slice()),
            (SelectedBy::Pids, &[A, B][..])
        );
        // B also runs pid 99, which is not the job's.
        let shared: Vec<bool> = s.gpus.iter().map(|g| g.shared).collect();
        assert_eq!(shared, [false, true]);
        assert!(s.notes.is_empty());

        let none = pick(None, None, Some(&[5]));
        assert_eq!(none.how, SelectedBy::All);
        assert_eq!(none.gpus.len(), 4);
        assert_eq!(none.notes.len(), 2);

        let bare = pick(None, None, None);
        assert_eq!(
            (bare.how, bare.gpus.len(), bare.notes.len()),
            (SelectedBy::All, 4, 1)
        );

        let empty_node = select(&GpuHints::default(), &[]);
        assert!(empty_node.gpus.is_empty() && empty_node.notes.is_empty());
    }

    #[test]
    fn garbage_cuda_falls_through_to_processes() {
        let s = pick(None, Some("garbage"), Some(&[10]));
        assert_eq!((s.how, uuids(&s).as_slice()), (SelectedBy::Pids, &[A][..]));
        assert_eq!(s.notes.len(), 1);
    }
}
