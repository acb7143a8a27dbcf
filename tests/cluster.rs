//! The plugin in a real Slurm: a throwaway single-node cluster (munge,
//! slurmctld, slurmd, slurmdbd, MariaDB; `scripts/test-cluster`) started once
//! for all checks here, which run one after another against it. Jobs are
//! submitted by an unprivileged user, as on a real cluster.
//!
//! Needs root and the Slurm packages: without them the checks are skipped with
//! a message, except under CI=true, where that is a failure.
//!
//! `cargo test --test cluster -- NAME` runs the checks whose names contain NAME.

mod common;

#[path = "cluster/tracked.rs"]
mod tracked;

#[path = "cluster/check.rs"]
mod check;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, ExitCode};
use std::time::Instant;

use common::hardware::Hardware;
use common::{Cluster, Job, in_ci, missing_prerequisite};

type Check = fn(&Cluster, &Hardware);

const CHECKS: &[(&str, Check)] = &[
    (
        "plugin_exports_its_symbols_and_needs_no_slurm_symbol",
        exports,
    ),
    (
        "options_are_listed_by_sbatch_srun_salloc_help",
        options_in_help,
    ),
    (
        "bad_option_values_are_refused_at_submit",
        bad_values_refused,
    ),
    ("jobs_with_and_without_tracking_complete", jobs_complete),
    (
        "sbatch_directive_and_srun_steps_carry_the_option",
        directive_and_steps,
    ),
    (
        "bad_plugstack_argument_is_one_error_and_the_job_runs",
        bad_plugstack,
    ),
    (
        "a_panic_in_any_callback_never_fails_the_job",
        injected_panics,
    ),
    ("accounting_records_the_jobs", accounting),
    (
        "carbontrack_check_passes_on_a_good_node_and_names_each_broken_item",
        check::check_names_each_broken_item,
    ),
    (
        "tracked_job_footprint_matches_the_injected_truth",
        tracked::footprint_matches_truth,
    ),
    (
        "untracked_jobs_leave_nothing_and_mode_always_respects_no",
        tracked::untracked_leave_nothing,
    ),
    (
        "a_reused_job_id_inherits_nothing_from_the_earlier_job",
        tracked::reused_job_id,
    ),
    (
        "srun_steps_are_not_counted_twice_beside_the_extern_step",
        tracked::steps_with_extern,
    ),
    (
        "cancelled_and_timed_out_jobs_still_get_a_footprint",
        tracked::cancelled_and_timed_out,
    ),
    (
        "user_files_never_follow_a_planted_link",
        tracked::planted_link,
    ),
    (
        "read_only_work_dir_keeps_the_footprint_in_the_spool",
        tracked::read_only_work_dir,
    ),
    (
        "one_sampler_thread_in_the_extern_step_and_none_left_after",
        tracked::sampler_thread,
    ),
    (
        "epochs_marked_by_the_job_give_a_prediction_and_zone_intensity_applies",
        tracked::epochs_predict_and_zone_intensity,
    ),
    (
        "without_a_cpuset_the_core_allocation_gives_each_job_its_share",
        tracked::core_allocation_without_cpuset,
    ),
    (
        "a_carbon_budget_exceeded_is_said_once_and_the_job_reads_it_and_a_greener_start_is_shown",
        tracked::budget_and_greener_start,
    ),
    // Last: it restarts the cluster twice.
    (
        "without_contain_the_batch_step_samples_and_srun_steps_do_not",
        tracked::steps_without_extern,
    ),
];

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<&(&str, Check)> = CHECKS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        return ExitCode::SUCCESS;
    }
    if let Some(why) = missing_prerequisite(true) {
        if in_ci() {
            eprintln!("cluster tests cannot run under CI: {why}");
            return ExitCode::FAILURE;
        }
        println!("SKIPPED {} cluster tests: {why}", selected.len());
        return ExitCode::SUCCESS;
    }
    let cluster = match Cluster::start(true) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the test cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hw = Hardware::new();
    println!("\nrunning {} cluster tests", selected.len());
    let mut failed = Vec::new();
    for (name, check) in selected {
        // Each check starts from the default plugstack.conf, but for the
        // spool: the tests leave nothing in the machine's own.
        cluster.set_plugin_args(&[&hw.spool_arg()]);
        let started = Instant::now();
        let ok = catch_unwind(AssertUnwindSafe(|| check(&cluster, &hw))).is_ok();
        println!(
            "test {name} ... {} ({:.0} s)",
            if ok { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(*name);
        }
    }
    drop(cluster);
    drop(hw);
    if failed.is_empty() {
        println!("\ncluster test result: ok");
        ExitCode::SUCCESS
    } else {
        println!("\ncluster test result: FAILED: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

const TRACKED: &str = "#!/bin/bash\necho carbontrack-test-job\n";

pub(crate) fn submit_ok(c: &Cluster, args: &[&str], script: &str) -> (Job, String) {
    let mark = c.log_mark();
    let job = c.submit(args, script).unwrap_or_else(|e| panic!("{e}"));
    let log = c.log_of_job(mark, job.id);
    assert_eq!(
        job.exit_code,
        Some(0),
        "job {} {args:?} failed: {}\n--- sbatch stderr\n{}\n--- slurmd log\n{log}",
        job.id,
        job.output,
        job.sbatch_stderr
    );
    (job, log)
}

/// No line of the job's slurmd log shows a problem with the plugin.
pub(crate) fn assert_no_plugin_error(log: &str) {
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") && (l.contains("carbontrack") || l.contains("spank"))
        })
        .collect();
    assert!(bad.is_empty(), "plugin errors in slurmd's log: {bad:#?}");
}

fn exports(c: &Cluster, _: &Hardware) {
    let nm = |flag: &str| {
        let out = Command::new("nm")
            .args(["-D", flag])
            .arg(&c.plugin)
            .output()
            .expect("nm runs");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let defined = nm("--defined-only");
    for sym in [
        "plugin_name",
        "plugin_type",
        "plugin_version",
        "slurm_spank_init",
        "slurm_spank_init_post_opt",
        "slurm_spank_job_prolog",
        "slurm_spank_exit",
    ] {
        assert!(
            defined.lines().any(|l| l.ends_with(&format!(" {sym}"))),
            "{sym} not exported:\n{defined}"
        );
    }
    // Slurm's loader calls these if present; they must not be ours.
    for sym in ["init", "fini"] {
        assert!(!defined.lines().any(|l| l.ends_with(&format!(" {sym}"))));
    }
    // Every Slurm function is looked up at run time: none may be left for
    // the loader, which (-z now) would refuse the plugin where one is missing.
    let undefined = nm("--undefined-only");
    let slurm: Vec<&str> = undefined
        .lines()
        .filter(|l| l.contains("spank") || l.contains("slurm"))
        .collect();
    assert!(slurm.is_empty(), "undefined Slurm symbols: {slurm:?}");
}

fn options_in_help(c: &Cluster, _: &Hardware) {
    for tool in ["sbatch", "srun", "salloc"] {
        let out = c.as_user(tool, &["--help"]).output().expect("help runs");
        let help = String::from_utf8_lossy(&out.stdout);
        for opt in [
            "--carbon-track=yes|no",
            "--carbon-epochs=N",
            "--carbon-budget=AMOUNT",
        ] {
            assert!(help.contains(opt), "{tool} --help lacks {opt}:\n{help}");
        }
    }
}

fn bad_values_refused(c: &Cluster, _: &Hardware) {
    let e = c.refused(&["--carbon-track=maybe"]);
    assert!(
        e.contains("carbontrack: --carbon-track takes yes or no, not `maybe`"),
        "{e}"
    );
    let e = c.refused(&["--carbon-epochs=-3"]);
    assert!(
        e.contains(
            "carbontrack: --carbon-epochs takes a whole number of epochs of at least 1, not `-3`"
        ),
        "{e}"
    );
    let e = c.refused(&["--carbon-budget=-2kg"]);
    assert!(
        e.contains("carbontrack: --carbon-budget=-2kg: not a positive number with a unit"),
        "{e}"
    );
}

fn jobs_complete(c: &Cluster, hw: &Hardware) {
    let (job, log) = submit_ok(
        c,
        &["--carbon-track=yes", "--carbon-epochs=12", "--gres=gpu:2"],
        "#!/bin/bash\necho gpus=$CUDA_VISIBLE_DEVICES\n",
    );
    // The fake GPUs are real to Slurm.
    assert!(job.output.contains("gpus=0,1"), "{}", job.output);
    let line = format!(
        "carbontrack: job {}: tracked (--carbon-track=yes --carbon-epochs=12, mode optin)",
        job.id
    );
    assert!(log.contains(&line), "no `{line}` in:\n{log}");
    assert_no_plugin_error(&log);

    let (job, log) = submit_ok(c, &[], TRACKED);
    let line = format!(
        "carbontrack: job {}: not tracked (no --carbon-track, mode optin)",
        job.id
    );
    assert!(log.contains(&line), "no `{line}` in:\n{log}");
    assert_no_plugin_error(&log);

    c.set_plugin_args(&["mode=always", &hw.spool_arg()]);
    let (job, log) = submit_ok(c, &[], TRACKED);
    let line = format!(
        "carbontrack: job {}: tracked (no --carbon-track, mode always)",
        job.id
    );
    assert!(
        log.contains(&line),
        "plugstack.conf change not picked up: no `{line}` in:\n{log}"
    );
}

fn directive_and_steps(c: &Cluster, _: &Hardware) {
    let script = "#!/bin/bash\n#SBATCH --carbon-track=yes\nsrun --carbon-epochs=3 echo step-ran\n";
    let (job, log) = submit_ok(c, &[], script);
    assert!(job.output.contains("step-ran"), "{}", job.output);
    let line = format!(
        "carbontrack: job {}: tracked (--carbon-track=yes, mode optin)",
        job.id
    );
    assert!(log.contains(&line), "no `{line}` in:\n{log}");
    // srun loaded the plugin too, as the step's launch shows.
    assert!(
        log.contains(&format!("[{}.0]", job.id)),
        "no srun step in:\n{log}"
    );
    assert_no_plugin_error(&log);
}

fn bad_plugstack(c: &Cluster, hw: &Hardware) {
    c.set_plugin_args(&["mode=optin", "colour=blue", &hw.spool_arg()]);
    let (job, log) = submit_ok(c, &["--carbon-track=yes"], TRACKED);
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("error: carbontrack:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one error line for job {}: {errors:#?}",
        job.id
    );
    assert!(
        errors[0].contains("plugstack.conf: bad argument `colour=blue`: unknown key `colour`; accepted: mode, interval"),
        "{}",
        errors[0]
    );
    // Inert: no decision is logged for the job.
    assert!(!log.contains("tracked ("), "{log}");
}

fn injected_panics(c: &Cluster, hw: &Hardware) {
    for (knob, symbol) in [
        ("init", "slurm_spank_init"),
        ("init_post_opt", "slurm_spank_init_post_opt"),
        ("job_prolog", "slurm_spank_job_prolog"),
        ("exit", "slurm_spank_exit"),
        ("option", "the option callback"),
    ] {
        c.set_plugin_args(&[&format!("_test_panic={knob}"), &hw.spool_arg()]);
        let (job, log) = submit_ok(c, &["--carbon-track=yes"], TRACKED);
        let line = format!(
            "carbontrack: {symbol} panicked (carbontrack test knob: injected panic in {knob}"
        );
        assert!(
            log.contains(&line),
            "job {}: no `{line}` in:\n{log}",
            job.id
        );
        assert!(
            job.output.contains("carbontrack-test-job"),
            "{}",
            job.output
        );
    }
}

fn accounting(c: &Cluster, _: &Hardware) {
    let (job, _) = submit_ok(c, &["--carbon-track=yes"], TRACKED);
    let id = job.id.to_string();
    // slurmctld hands the job's end to slurmdbd asynchronously.
    let deadline = std::time::Instant::now() + common::JOB_TIMEOUT;
    loop {
        let out = c.as_root(
            "sacct",
            &[
                "-n",
                "-X",
                "-P",
                "-j",
                &id,
                "-o",
                "State,ExitCode,User,Account",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if text == "COMPLETED|0:0|ctuser|ctacct" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sacct for job {id}: `{text}`"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
