use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;

/// A Slurm stand-in that records what the plugin asked of it.
struct FakeHost {
    context: Context,
    job_id: Option<u32>,
    /// Option name -> value as `spank_option_getopt` would return it.
    given: HashMap<&'static str, Option<String>>,
    registered: RefCell<Vec<&'static str>>,
    log: RefCell<Vec<(Level, String)>>,
    step: Step,
    env: HashMap<String, String>,
    job_env: RefCell<HashMap<String, String>>,
    slurm: Option<SlurmConf>,
    pid: std::cell::Cell<u32>,
    alloc_cores: Option<String>,
}

impl FakeHost {
    fn new(context: Context) -> FakeHost {
        FakeHost {
            context,
            job_id: Some(42),
            given: HashMap::new(),
            registered: RefCell::new(Vec::new()),
            log: RefCell::new(Vec::new()),
            step: Step::Extern,
            env: HashMap::new(),
            job_env: RefCell::new(HashMap::new()),
            slurm: None,
            pid: std::cell::Cell::new(1000),
            alloc_cores: None,
        }
    }

    fn lines(&self, level: Level) -> Vec<String> {
        self.log
            .borrow()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

impl Host for FakeHost {
    fn context(&self) -> Context {
        self.context
    }
    fn job_id(&self) -> Option<u32> {
        self.job_id
    }
    fn step(&self) -> Option<Step> {
        Some(self.step)
    }
    fn register_option(&self, spec: &OptionSpec) -> Result<(), String> {
        self.registered.borrow_mut().push(spec.name);
        Ok(())
    }
    fn option_value(&self, spec: &OptionSpec) -> Result<Option<Option<String>>, String> {
        Ok(self.given.get(spec.name).cloned())
    }
    fn log(&self, level: Level, msg: &str) {
        self.log.borrow_mut().push((level, msg.to_string()));
    }
    fn uid(&self) -> Option<u32> {
        Some(65534)
    }
    fn gid(&self) -> Option<u32> {
        Some(65534)
    }
    fn node_count(&self) -> Option<u32> {
        Some(1)
    }
    fn node_id(&self) -> Option<u32> {
        Some(0)
    }
    fn ncpus(&self) -> Option<u32> {
        Some(1)
    }
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn set_job_env(&self, name: &str, value: &str) -> Result<(), String> {
        self.job_env
            .borrow_mut()
            .insert(name.to_string(), value.to_string());
        Ok(())
    }
    fn slurm_conf(&self) -> Option<SlurmConf> {
        self.slurm.clone()
    }
    fn pid(&self) -> u32 {
        self.pid.get()
    }
    fn alloc_cores(&self) -> Option<String> {
        self.alloc_cores.clone()
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn init_registers_both_options_in_every_context() {
    for ctx in [
        Context::Allocator,
        Context::Local,
        Context::Remote,
        Context::JobScript,
    ] {
        let host = FakeHost::new(ctx);
        let mut p = Plugin::new();
        p.init(&host, &args(&["mode=always"]));
        assert_eq!(
            *host.registered.borrow(),
            ["carbon-track", "carbon-epochs", "carbon-budget"],
            "{ctx:?}"
        );
        assert_eq!(p.config().unwrap().mode, crate::config::Mode::Always);
        assert!(host.log.borrow().is_empty(), "{:?}", host.log.borrow());
    }
}

#[test]
fn bad_plugstack_argument_is_one_error_in_the_prolog_and_leaves_the_plugin_inert() {
    // The per-job `slurmstepd spank prolog` calls only job_prolog (no init).
    let mut host = FakeHost::new(Context::JobScript);
    host.given.insert("carbon-track", Some("yes".into()));
    let bad = args(&["mode=optin", "colour=blue"]);
    let mut p = Plugin::new();
    p.job_prolog(&host, &bad);
    assert!(p.config().is_none());
    let errors = host.lines(Level::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("colour=blue"), "{}", errors[0]);
    assert!(errors[0].contains("mode, interval"), "{}", errors[0]);
    // Inert: nothing else is said, and the option is not read.
    p.exit(&host, &bad);
    assert_eq!(host.log.borrow().len(), 1);
    assert_eq!(p.choice(), JobChoice::default());
}

#[test]
fn arguments_are_read_once_per_process() {
    let host = FakeHost::new(Context::JobScript);
    let bad = args(&["pue=0"]);
    let mut p = Plugin::new();
    p.init(&host, &bad);
    p.init_post_opt(&host, &bad);
    p.job_prolog(&host, &bad);
    assert_eq!(host.lines(Level::Error).len(), 1);
    // Options are still registered so the user's job is not refused.
    assert_eq!(host.registered.borrow().len(), 3);
}

#[test]
fn bad_plugstack_argument_is_not_an_error_in_steps_or_at_submit() {
    for ctx in [Context::Allocator, Context::Local, Context::Remote] {
        let host = FakeHost::new(ctx);
        let mut p = Plugin::new();
        p.init(&host, &args(&["pue=9"]));
        assert!(p.config().is_none());
        assert!(host.lines(Level::Error).is_empty(), "{ctx:?}");
        assert_eq!(host.log.borrow().len(), 1, "{ctx:?}");
    }
}

#[test]
fn prolog_reports_the_decision_from_mode_and_option() {
    for (mode, given, expect) in [
        (
            "optin",
            Some("yes"),
            "job 42: tracked (--carbon-track=yes, mode optin)",
        ),
        (
            "optin",
            None,
            "job 42: not tracked (no --carbon-track, mode optin)",
        ),
        (
            "always",
            None,
            "job 42: tracked (no --carbon-track, mode always)",
        ),
        (
            "always",
            Some("no"),
            "job 42: not tracked (--carbon-track=no, mode always)",
        ),
        (
            "off",
            Some("yes"),
            "job 42: not tracked (--carbon-track=yes, mode off)",
        ),
    ] {
        let mut host = FakeHost::new(Context::JobScript);
        if let Some(v) = given {
            host.given.insert("carbon-track", Some(v.to_string()));
        }
        let mut p = Plugin::new();
        p.job_prolog(&host, &args(&[&format!("mode={mode}")]));
        assert_eq!(host.lines(Level::Info), [expect]);
        assert_eq!(p.choice().track, given.map(|v| v == "yes"));
    }
}

#[test]
fn prolog_reads_epochs_and_a_bare_track_flag() {
    let mut host = FakeHost::new(Context::JobScript);
    host.given.insert("carbon-track", None);
    host.given.insert("carbon-epochs", Some("30".into()));
    host.given.insert("carbon-budget", Some("2KG".into()));
    let mut p = Plugin::new();
    p.job_prolog(&host, &[]);
    assert_eq!(
        p.choice(),
        JobChoice {
            track: Some(true),
            epochs: Some(30),
            budget: crate::carbon::budget::parse_budget("2kg").ok(),
        }
    );
    assert_eq!(
        host.lines(Level::Info),
        [
            "job 42: tracked (--carbon-track=yes --carbon-epochs=30 --carbon-budget=2000g, mode optin)"
        ]
    );
}

#[test]
fn option_callback_refuses_bad_values_with_a_message() {
    let mut p = Plugin::new();
    let track = UserOption::Track.spec().val;
    let epochs = UserOption::Epochs.spec().val;
    assert!(p.option_given(track, Some("yes")).is_ok());
    assert!(p.option_given(epochs, Some("5")).is_ok());
    let e = p.option_given(track, Some("maybe")).unwrap_err();
    assert!(e.contains("--carbon-track") && e.contains("maybe"), "{e}");
    let e = p.option_given(epochs, Some("-3")).unwrap_err();
    assert!(e.contains("--carbon-epochs") && e.contains("-3"), "{e}");
    assert!(p.option_given(99, None).is_err());
    let budget = UserOption::Budget.spec().val;
    let e = p.option_given(budget, Some("-1kg")).unwrap_err();
    assert!(e.contains("--carbon-budget=-1kg"), "{e}");
    assert_eq!(
        p.choice(),
        JobChoice {
            track: Some(true),
            epochs: Some(5),
            budget: None,
        }
    );
}

#[test]
fn the_panic_knob_fires_only_in_the_named_callback() {
    let host = FakeHost::new(Context::JobScript);
    let run = |name: &str, cb: Callback| {
        let mut p = Plugin::new();
        let knob = format!("_test_panic={name}");
        catch_unwind(AssertUnwindSafe(|| {
            p.init(&host, &args(&[&knob]));
            match cb {
                Callback::Init => {}
                Callback::InitPostOpt => p.init_post_opt(&host, &[]),
                Callback::JobProlog => p.job_prolog(&host, &[]),
                Callback::TaskPostFork => p.task_post_fork(&host, &[]),
                Callback::Exit => p.exit(&host, &[]),
                Callback::Option => {
                    let _ = p.option_given(1, Some("yes"));
                }
            }
        }))
        .is_err()
    };
    let all = [
        Callback::Init,
        Callback::InitPostOpt,
        Callback::JobProlog,
        Callback::TaskPostFork,
        Callback::Exit,
        Callback::Option,
    ];
    for named in all {
        for called in all {
            // init runs before every other callback, so its knob fires for all.
            let expect = named == called || named == Callback::Init;
            assert_eq!(
                run(named.name(), called),
                expect,
                "knob {} callback {}",
                named.name(),
                called.name()
            );
        }
    }
}

#[test]
fn exit_forgets_the_job() {
    let host = FakeHost::new(Context::Remote);
    let mut p = Plugin::new();
    p.init(&host, &[]);
    p.option_given(1, Some("yes")).unwrap();
    p.exit(&host, &[]);
    assert!(p.config().is_none());
    assert_eq!(p.choice(), JobChoice::default());
}

#[test]
fn step_ids_map_to_named_steps() {
    use crate::ffi::sys;
    assert_eq!(Step::from_raw(sys::SLURM_BATCH_SCRIPT), Step::Batch);
    assert_eq!(Step::from_raw(sys::SLURM_EXTERN_CONT), Step::Extern);
    assert_eq!(Step::from_raw(0), Step::Numbered(0));
    assert_eq!(Step::from_raw(sys::SLURM_EXTERN_CONT).to_string(), "extern");
}

#[test]
fn prolog_clears_what_an_earlier_job_of_the_same_id_left() {
    use crate::spool::Spool;
    let root = std::env::temp_dir().join(format!("ct-plugin-reused-id-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let spool_arg = format!("spool={}", root.display());
    let spool = Spool::open(&root).unwrap();
    let stale = |spool: &Spool| {
        let earlier = crate::job::JobInfo {
            job_id: 42,
            uid: 1,
            gid: 1,
            ..Default::default()
        };
        spool.write_handoff(&earlier).unwrap();
        spool
            .write_node_footprint(42, "node1", b"job_id\n42\n")
            .unwrap();
    };

    // Tracked: a fresh hand-off and no earlier footprint to merge; the
    // earlier run's undelivered footprint is kept aside for the Epilog,
    // with one line.
    stale(&spool);
    let mut host = FakeHost::new(Context::JobScript);
    host.given.insert("carbon-track", Some("yes".into()));
    Plugin::new().job_prolog(&host, &args(&[&spool_arg]));
    assert!(host.lines(Level::Error).is_empty(), "{:?}", host.log);
    assert_eq!(spool.read_handoff(42).unwrap().unwrap().uid, 65534);
    assert!(spool.node_footprints(42).unwrap().is_empty());
    let kept = spool.stale_jobs().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read(kept[0].1.join("node-node1.csv")).unwrap(),
        b"job_id\n42\n"
    );
    let said: Vec<String> = host
        .lines(Level::Info)
        .into_iter()
        .filter(|l| l.contains("earlier job with this id"))
        .collect();
    assert_eq!(said.len(), 1, "{:?}", host.log);

    // Not tracked: nothing left that would make its steps sample it.
    stale(&spool);
    let host = FakeHost::new(Context::JobScript);
    Plugin::new().job_prolog(&host, &args(&[&spool_arg]));
    assert!(host.lines(Level::Error).is_empty(), "{:?}", host.log);
    assert_eq!(spool.read_handoff(42).unwrap(), None);
    assert!(spool.node_footprints(42).unwrap().is_empty());
    assert_eq!(spool.stale_jobs().unwrap().len(), 2);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn accounting_field_comment_is_accepted_with_a_warning_in_the_prolog() {
    let (root, spool_arg) = scratch_spool("comment");
    let mut host = FakeHost::new(Context::JobScript);
    host.given.insert("carbon-track", Some("yes".into()));
    Plugin::new().job_prolog(&host, &args(&[&spool_arg, "accounting_field=Comment"]));
    assert!(host.lines(Level::Error).is_empty(), "{:?}", host.log);
    let warned: Vec<String> = host
        .lines(Level::Info)
        .into_iter()
        .filter(|l| l.contains("accounting_field=Comment") && l.contains("forged"))
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", host.log);
    let spool = crate::spool::Spool::open(&root).unwrap();
    assert!(spool.read_handoff(42).unwrap().is_some(), "still tracked");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A spool of its own per test, removed at the end.
fn scratch_spool(name: &str) -> (std::path::PathBuf, String) {
    let root = std::env::temp_dir().join(format!("ct-plugin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let arg = format!("spool={}", root.display());
    (root, arg)
}

#[test]
fn run_in_job_is_refused_with_one_line_in_the_steps_that_see_the_option() {
    let (root, spool) = scratch_spool("run-in-job");
    let run_in_job = SlurmConf {
        run_in_job: true,
        contain_spank: false,
    };
    let step = |step: Step, conf: Option<SlurmConf>, track: bool| {
        let mut host = FakeHost::new(Context::Remote);
        host.step = step;
        host.slurm = conf;
        let mut p = Plugin::new();
        p.init(&host, &args(&[&spool]));
        if track {
            p.option_given(UserOption::Track.spec().val, Some("yes"))
                .unwrap();
        }
        p.task_post_fork(&host, &args(&[&spool]));
        p.exit(&host, &args(&[&spool]));
        host.lines(Level::Error)
    };
    // No prolog ran, so there is no hand-off: the batch step says why.
    let errors = step(Step::Batch, Some(run_in_job.clone()), true);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("job 42: not measured: with PrologFlags=RunInJob"),
        "{}",
        errors[0]
    );
    // The extern step cannot see the option; a job that did not ask, and a
    // Slurm without RunInJob, are simply not tracked.
    assert!(step(Step::Extern, Some(run_in_job.clone()), true).is_empty());
    assert!(step(Step::Batch, Some(run_in_job), false).is_empty());
    assert!(step(Step::Batch, None, true).is_empty());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_task_post_fork_in_a_child_process_refuses_to_start_a_sampler() {
    let (root, spool) = scratch_spool("contain-spank");
    let mut prolog = FakeHost::new(Context::JobScript);
    prolog.given.insert("carbon-track", Some("yes".into()));
    Plugin::new().job_prolog(&prolog, &args(&[&spool]));

    let mut host = FakeHost::new(Context::Remote);
    host.slurm = Some(SlurmConf {
        run_in_job: false,
        contain_spank: true,
    });
    let mut p = Plugin::new();
    p.init(&host, &args(&[&spool]));
    // Slurm calls task_post_fork in a clone of the slurmstepd.
    host.pid.set(1001);
    p.task_post_fork(&host, &args(&[&spool]));
    let errors = host.lines(Level::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "job 42 step extern: not measured on this node: SlurmdParameters=contain_spank runs"
        ),
        "{}",
        errors[0]
    );
    assert!(p.tracking.is_none());
    assert!(
        host.lines(Level::Info)
            .iter()
            .all(|l| !l.contains("sampling"))
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A node of two packages of one CPU each (as the cgroup cluster's fixture),
/// with a RAPL zone per package, and a slurm.conf whose line for it says
/// `CPUs=2` (two sockets of one core, to Slurm).
fn two_package_node(root: &std::path::Path) -> Vec<String> {
    use std::fs;
    for cpu in 0..2u32 {
        let t = root.join(format!("cpu/cpu{cpu}/topology"));
        fs::create_dir_all(&t).unwrap();
        fs::write(t.join("physical_package_id"), format!("{cpu}\n")).unwrap();
        fs::write(t.join("core_id"), "0\n").unwrap();
        let z = root.join(format!("powercap/intel-rapl:{cpu}"));
        fs::create_dir_all(&z).unwrap();
        fs::write(z.join("name"), format!("package-{cpu}\n")).unwrap();
        fs::write(z.join("energy_uj"), "1000\n").unwrap();
        fs::write(z.join("max_energy_range_uj"), "262143328850\n").unwrap();
    }
    fs::write(
        root.join("slurm.conf"),
        "ClusterName=c\nNodeName=n1 CPUs=2 State=UNKNOWN\n",
    )
    .unwrap();
    vec![
        format!("spool={}", root.join("spool").display()),
        format!("cpu_topology={}", root.join("cpu").display()),
        format!("powercap={}", root.join("powercap").display()),
        format!("cgroup={}", root.join("no-cgroup").display()),
        "components=cpu".to_string(),
        "report=none".to_string(),
    ]
}

/// The prolog, then the extern step's sampling with `cores` as Slurm's core
/// allocation: the node footprint's rows and the log.
fn sample_with_cores(name: &str, cores: Option<&str>) -> (Vec<crate::footprint::Row>, FakeHost) {
    let root = std::env::temp_dir().join(format!("ct-plugin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let a = two_package_node(&root);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut prolog = FakeHost::new(Context::JobScript);
    prolog.given.insert("carbon-track", Some("yes".into()));
    for (k, v) in [
        ("SLURMD_NODENAME", "n1".to_string()),
        ("SLURM_CONF", root.join("slurm.conf").display().to_string()),
        ("SLURM_JOB_CPUS_PER_NODE", "1".to_string()),
    ] {
        prolog.env.insert(k.to_string(), v);
    }
    Plugin::new().job_prolog(&prolog, &args(&a));
    let spool = crate::spool::Spool::open(&root.join("spool")).unwrap();
    let job = spool.read_handoff(42).unwrap().unwrap();
    assert_eq!(job.layout, Ok("2x1x1".parse().unwrap()));
    assert_eq!(job.cpus_on_node, Some(1));

    let mut host = FakeHost::new(Context::Remote);
    host.alloc_cores = cores.map(str::to_string);
    let mut p = Plugin::new();
    p.init(&host, &args(&a));
    p.task_post_fork(&host, &args(&a));
    assert!(p.tracking.is_some(), "{:?}", host.log.borrow());
    p.exit(&host, &args(&a));
    let csv = spool
        .read_file(&spool.node_footprint_path(42, "n1"))
        .unwrap();
    let rows = crate::footprint::read_csv(&csv[..]).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    (rows, host)
}

#[test]
fn the_extern_step_charges_the_package_of_slurms_core_with_the_layout_the_prolog_read() {
    let (rows, host) = sample_with_cores("cores", Some("1"));
    let got: Vec<(&str, &str, Option<f64>, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.component.as_str(),
                r.device.as_str(),
                r.share,
                r.status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("cpu", "package-1", Some(1.0), "ok"),
            ("total", "", None, "ok")
        ]
    );
    let info = host.lines(Level::Info);
    let sampling: Vec<&String> = info.iter().filter(|l| l.contains("sampling on")).collect();
    assert_eq!(sampling.len(), 1, "{info:?}");
    assert!(
        sampling[0].ends_with(
            "CPU share from Slurm's core allocation (cores 1 of a 2x1x1 node, layout from slurm.conf)"
        ),
        "{}",
        sampling[0]
    );
    assert!(
        host.lines(Level::Error).is_empty(),
        "{:?}",
        host.lines(Level::Error)
    );
}

#[test]
fn without_slurms_cores_the_count_is_used_and_explained_once() {
    let (rows, host) = sample_with_cores("count", None);
    // One CPU of two on every package: half of each, approximate.
    for r in rows.iter().filter(|r| !r.is_total()) {
        assert_eq!(r.share, Some(0.5), "{r:?}");
        assert_eq!(
            r.status,
            format!("incomplete: {}", crate::measure::cpuset::NOTE_COUNT)
        );
    }
    let total = rows.last().unwrap();
    assert_eq!(total.status, "incomplete: 2 of 2 rows incomplete (cpu)");
    let info = host.lines(Level::Info);
    let explained: Vec<&String> = info
        .iter()
        .filter(|l| l.contains("ConstrainCores=yes"))
        .collect();
    assert_eq!(explained.len(), 1, "{info:?}");
    assert!(
        explained[0].contains("by CPU count (1 of 2 CPUs on every package)"),
        "{}",
        explained[0]
    );
}
