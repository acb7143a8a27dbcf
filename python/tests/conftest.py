"""Fixtures: the real carbontrack binary and fake hardware with known power.

The binaries come from the Cargo build (``cargo build --workspace``, which
scripts/test runs first): ``$CARBONTRACK_BIN`` or ``target/debug/carbontrack``,
and beside it ``carbontrack-fixture`` (a powercap tree whose counters advance
at a known power) and ``libnvidia_ml.so`` (the fake NVML, tests/fake-nvml).
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"

#: The injected truth: one package at 50 W, its DRAM at 10 W, one GPU at 100 W.
PACKAGE_W, DRAM_W, GPU_W = 50.0, 10.0, 100.0
GPU_UUID = "GPU-00000000-1111-2222-3333-444455556666"


def _built(name: str) -> Path:
    path = TARGET / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace` first")
    return path


@pytest.fixture(scope="session")
def carbontrack_bin() -> str:
    return os.environ.get("CARBONTRACK_BIN") or str(_built("carbontrack"))


@pytest.fixture
def hardware(tmp_path, monkeypatch, carbontrack_bin):
    """A powercap tree kept advancing by ``carbontrack-fixture`` and a copy of
    the fake NVML, handed to ``carbontrack run`` through
    ``CARBONTRACK_RUN_FLAGS``; yields the total power in watts."""
    powercap = tmp_path / "powercap"
    fixture = subprocess.Popen(
        [str(_built("carbontrack-fixture")), "powercap", "--dir", str(powercap),
         "--packages", "1", "--power", str(PACKAGE_W), "--dram-power", str(DRAM_W),
         "--period-ms", "5"],
        stdout=subprocess.PIPE,
    )
    try:
        assert fixture.stdout.readline().strip() == b"ready"
        nvml_dir = tmp_path / "nvml"
        nvml_dir.mkdir()
        lib = nvml_dir / "libnvidia-ml.so.1"
        shutil.copy(_built("libnvidia_ml.so"), lib)
        (nvml_dir / "fake-nvml.conf").write_text(
            f"epoch = {time.time()}\n[gpu]\nuuid = {GPU_UUID}\nminor = 0\npower = {GPU_W}\n"
        )
        monkeypatch.delenv("CARBONTRACK_FAKE_NVML", raising=False)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.delenv("CARBONTRACK_EPOCH_FILE", raising=False)
        monkeypatch.setenv("CARBONTRACK_BIN", carbontrack_bin)
        monkeypatch.setenv(
            "CARBONTRACK_RUN_FLAGS",
            shlex.join(["--powercap", str(powercap), "--nvml", str(lib), "--intensity", "100"]),
        )
        yield PACKAGE_W + DRAM_W + GPU_W
    finally:
        fixture.kill()
        fixture.wait()


def run_script(tmp_path: Path, code: str, *args: str, timeout: float = 120):
    """Runs ``code`` as a script with this Python and the package under test."""
    script = tmp_path / "train.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
