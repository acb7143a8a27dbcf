"""carbontracker's API against the real carbontrack binary and fake hardware
(tests/conftest.py): the figures printed are compared with the injected
power, inside a tracked job only epochs are marked."""

import csv
import os
import re
import stat
import textwrap
import warnings

import pytest

from conftest import GPU_UUID, run_script

PUE = 1.58
J_PER_KWH = 3.6e6

# carbontracker's README example, with one second of "training" per epoch.
README_LOOP = """\
import sys, time
from carbontrack import CarbonTracker

max_epochs = 3
tracker = CarbonTracker(epochs=max_epochs)

# Training loop.
for epoch in range(max_epochs):
    tracker.epoch_start()
    if epoch == 0:
        t0 = time.time()

    # Your model training.
    time.sleep(SECONDS)
    t1 = time.time()

    tracker.epoch_end()
    print(f"training: epoch {epoch + 1} done", file=sys.stderr, flush=True)

# Optional: Add a stop in case of early termination before all monitor_epochs has
# been monitored to ensure that actual consumption is reported.
tracker.stop()
print(t0, t1)
"""


def block(text: str, title: str) -> dict:
    """The figures of the block that starts with ``title``."""
    m = re.search(
        re.escape(title) + r"\n  Time: (?P<time>.+)\n  Energy: (?P<kwh>[0-9.]+) kWh.*\n"
        r"  CO2eq: (?P<g>[0-9.]+) g\n  This is equivalent to:\n    (?P<km>[0-9.]+) km travelled by car",
        text,
    )
    assert m, f"no block {title!r} in:\n{text}"
    return {"kwh": float(m["kwh"]), "g": float(m["g"]), "km": float(m["km"]), "at": m.start()}


def within(measured: float, truth: float, tolerance: float, what: str) -> None:
    err = abs(measured - truth) / truth
    print(f"{what}: measured {measured:.6g}, truth {truth:.6g}, error {err:.2%}")
    assert err <= tolerance, f"{what}: measured {measured}, truth {truth}, error {err:.1%}"


def test_readme_loop_prints_prediction_and_actual_against_the_truth(
    tmp_path, hardware, monkeypatch
):
    watts = hardware
    # An epoch is marked at the sampler's next look (1 s by default, late by
    # as much as these 1-s epochs): sample every 100 ms here.
    monkeypatch.setenv(
        "CARBONTRACK_RUN_FLAGS", os.environ["CARBONTRACK_RUN_FLAGS"] + " --interval 100ms"
    )
    out = run_script(tmp_path, README_LOOP.replace("SECONDS", "1"))
    assert out.returncode == 0, out.stderr
    t0, t1 = map(float, out.stdout.split())
    err = out.stderr

    # After the first epoch (epochs_before_pred=1), before the actual figures.
    pred = block(err, "Predicted consumption for 3 epoch(s):")
    actual = block(err, "Actual consumption for 3 epoch(s):")
    assert err.index("training: epoch 1 done") < pred["at"] < actual["at"], err
    # Printed at the last epoch_end (monitor_epochs = epochs), stop() is then a no-op.
    assert actual["at"] < err.index("training: epoch 3 done"), err
    assert err.count("Actual consumption") == 1, err

    truth_kwh = watts * (t1 - t0) * PUE / J_PER_KWH
    within(actual["kwh"], truth_kwh, 0.03, "actual energy")
    within(actual["g"], actual["kwh"] * 100, 0.01, "actual CO2eq at 100 g/kWh")
    # The prediction of 3 epochs from the first one, whose mark (its time
    # and energy) is late by up to 100 ms: 10% of the epoch.
    within(pred["kwh"], truth_kwh, 0.25, "predicted energy")
    assert not list(tmp_path.glob("*.csv")), "no log_dir: no CSV"


def test_epochs_before_pred_monitor_epochs_log_dir_and_ignored_arguments(tmp_path, hardware):
    watts = hardware
    logs = tmp_path / "logs"
    code = textwrap.dedent(f"""\
        import sys, time, warnings
        warnings.simplefilter("always")
        from carbontrack import CarbonTracker

        tracker = CarbonTracker(epochs=5, epochs_before_pred=2, monitor_epochs=3,
                                update_interval=0.1, log_dir={str(logs)!r},
                                log_file_prefix="run1-", decimal_precision=3,
                                api_keys={{"electricitymaps": "x"}}, interpretable=False,
                                not_an_argument=1)
        for epoch in range(5):
            tracker.epoch_start()
            if epoch == 0:
                t0 = time.time()
            time.sleep(1)
            if epoch == 1:
                t1 = time.time()
            tracker.epoch_end()
            print(f"training: epoch {{epoch + 1}} done", file=sys.stderr, flush=True)
        tracker.stop()
        print(t0, t1)
        """)
    out = run_script(tmp_path, code)
    assert out.returncode == 0, out.stderr
    err = out.stderr
    t0, t1 = map(float, out.stdout.split())

    assert err.count("CarbonTracker ignores") == 1, err
    line = next(x for x in err.splitlines() if "CarbonTracker ignores" in x)
    for name in ["interpretable", "decimal_precision", "api_keys", "not_an_argument"]:
        assert name in line, line
    for name in ["epochs", "log_dir", "update_interval", "monitor_epochs"]:
        assert f" {name}," not in line and not line.endswith(name), line

    pred = block(err, "Predicted consumption for 5 epoch(s):")
    actual = block(err, "Actual consumption for 3 epoch(s):")
    # After epoch 2, not before; shown within a few sampler intervals.
    assert err.index("training: epoch 2 done") < pred["at"] < err.index("training: epoch 4 done"), err
    # Printed by epoch_end of epoch 3, synchronously; epochs 4 and 5 are not monitored.
    assert err.index("training: epoch 3 done") > actual["at"], err
    assert err.count("Actual consumption") == 1, err
    within(pred["kwh"], watts * (t1 - t0) * 5 / 2 * PUE / J_PER_KWH, 0.15, "predicted energy")

    # The footprint CSV in log_dir, with its prefix, against the truth.
    (path,) = logs.glob("run1-carbontrack-*.csv")
    rows = list(csv.DictReader(path.open()))
    total = next(r for r in rows if r["component"] == "total")
    assert total["status"] == "ok", rows
    within(float(total["energy_j"]), watts * float(total["duration_s"]), 0.02, "CSV total")
    gpu = next(r for r in rows if r["device"] == GPU_UUID)
    within(float(gpu["energy_j"]), 100.0 * float(gpu["duration_s"]), 0.02, "CSV GPU")
    assert float(total["duration_s"]) == pytest.approx(3, abs=0.5), total


def test_a_process_that_exits_without_stop_still_gets_its_actual_figures(tmp_path, hardware):
    code = textwrap.dedent("""\
        import os, time
        from carbontrack import CarbonTracker
        tracker = CarbonTracker(epochs=10, epochs_before_pred=5, update_interval=0.1)
        for epoch in range(2):
            tracker.epoch_start()
            if epoch == 0:
                t0 = time.time()
            time.sleep(1)
            t1 = time.time()
            tracker.epoch_end()
        time.sleep(0.3)  # the second mark seen
        print(t0, t1, flush=True)
        os._exit(0)  # no stop(), no atexit: the tracker sees the process go
        """)
    out = run_script(tmp_path, code)
    assert out.returncode == 0, out.stderr
    t0, t1 = map(float, out.stdout.split())
    actual = block(out.stderr, "Actual consumption for 2 epoch(s):")
    # The second mark is late by up to 100 ms of the 2 s.
    within(actual["kwh"], hardware * (t1 - t0) * PUE / J_PER_KWH, 0.1, "actual energy")
    assert "Predicted consumption" not in out.stderr, "2 of 5 epochs: no prediction"


def test_inside_a_tracked_job_it_only_marks_epochs(tmp_path, carbontrack_bin, monkeypatch):
    # The environment the plugin gives a tracked job, and a carbontrack that
    # logs how it is called.
    epoch_file = tmp_path / ".carbontrack-42.epochs"
    calls = tmp_path / "calls"
    wrapper = tmp_path / "carbontrack"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {carbontrack_bin} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CARBONTRACK_EPOCH_FILE", str(epoch_file))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CARBONTRACK_BIN", str(wrapper))
    monkeypatch.setenv("CARBONTRACK_RUN_FLAGS", "--powercap /nonexistent")

    out = run_script(tmp_path, README_LOOP.replace("SECONDS", "0"))
    assert out.returncode == 0, out.stderr
    assert calls.read_text().splitlines() == ["epoch"] * 3, "only `carbontrack epoch`, no sampler"
    marks = epoch_file.read_text().splitlines()
    assert len(marks) == 3 and all(m.isdigit() for m in marks), marks
    assert str(tmp_path / "carbontrack-42.txt") in out.stderr, out.stderr
    assert "Actual consumption" not in out.stderr


def test_a_missing_binary_is_said_clearly(tmp_path, monkeypatch):
    from carbontrack import CarbonTracker

    monkeypatch.delenv("CARBONTRACK_EPOCH_FILE", raising=False)
    monkeypatch.setenv("CARBONTRACK_BIN", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="CARBONTRACK_BIN=.*nope is not an executable"):
        CarbonTracker(epochs=2)
    monkeypatch.delenv("CARBONTRACK_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found on PATH"):
        CarbonTracker(epochs=2)
    # ignore_errors: one warning, and training goes on unmeasured.
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tracker = CarbonTracker(epochs=2, ignore_errors=True)
        for _ in range(2):
            tracker.epoch_start()
            tracker.epoch_end()
        tracker.stop()
    assert len(w) == 1 and "unmeasured" in str(w[0].message), [str(x.message) for x in w]


def test_carbontrackers_argument_checks(monkeypatch, carbontrack_bin):
    from carbontrack import CarbonTracker

    monkeypatch.setenv("CARBONTRACK_BIN", carbontrack_bin)
    with pytest.raises(ValueError, match="monitor_epochs cannot be less"):
        CarbonTracker(epochs=5, epochs_before_pred=3, monitor_epochs=2)
    with pytest.raises(ValueError, match="components"):
        CarbonTracker(epochs=5, components="tpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the arguments it uses warn about nothing
        t = CarbonTracker(5, 1, -1, 2, components="cpu", log_dir=None, verbose=0,
                          ignore_errors=True)
    assert (t.monitor_epochs, t.components, t.update_interval) == (5, "cpu,dram", 2)
    t.deleted = True  # never started: nothing to stop


def test_verbose_0_prints_nothing(tmp_path, hardware):
    out = run_script(tmp_path, README_LOOP.replace("SECONDS", "0.3").replace(
        "CarbonTracker(epochs=max_epochs)", "CarbonTracker(epochs=max_epochs, verbose=0)"))
    assert out.returncode == 0, out.stderr
    assert [x for x in out.stderr.splitlines() if not x.startswith("training:")] == [], out.stderr
