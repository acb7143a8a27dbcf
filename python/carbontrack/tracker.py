"""``CarbonTracker``: carbontracker's Python API, measured by carbontrack.

Training code written for carbontracker (``epoch_start()`` and
``epoch_end()`` around each epoch, ``stop()`` at the end) runs unchanged
with ``from carbontrack import CarbonTracker``. The measuring is done by the
``carbontrack`` binary, never in this process:

* Inside a tracked job (``sbatch --carbon-track=yes``) or under
  ``carbontrack run``, whose environment names an epoch file in
  ``CARBONTRACK_EPOCH_FILE``, the job is already measured: ``epoch_end()``
  only marks the epoch with ``carbontrack epoch`` and no second sampler is
  started. The figures are in the job's summary.
* Anywhere else, the first ``epoch_start()`` starts ``carbontrack run --pid
  <this process>``, which measures while this process runs, prints
  carbontracker's "Predicted consumption" block once ``epochs_before_pred``
  epochs are done and the "Actual consumption" block when
  ``monitor_epochs`` epochs are done, at ``stop()``, or when the process
  exits.

Nothing here ever stops the training: what goes wrong while training is a
warning, and training goes on unmeasured.
"""

from __future__ import annotations

import atexit
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from typing import IO, List, Optional

#: The environment variable a tracked job (or ``carbontrack run``) sets.
EPOCH_FILE_ENV = "CARBONTRACK_EPOCH_FILE"
#: The binary to use; else ``carbontrack`` on ``PATH``.
BIN_ENV = "CARBONTRACK_BIN"
#: Extra flags for ``carbontrack run`` (shell words), e.g. ``--intensity DK``.
RUN_FLAGS_ENV = "CARBONTRACK_RUN_FLAGS"

#: How long the binary may take to start sampling.
START_WAIT_S = 30.0
#: How long ``stop()`` waits for the final figures (the binary itself bounds
#: writing the CSV at 30 s).
STOP_WAIT_S = 60.0

# carbontracker's components and what carbontrack measures for each (its
# "cpu" reads RAPL package and DRAM zones).
_COMPONENTS = {
    "all": "cpu,dram,gpu",
    "cpu": "cpu,dram",
    "gpu": "gpu",
}

# carbontracker 2.4.7's constructor arguments that have no meaning here, with
# their defaults: passing another value gives one warning naming them.
_IGNORED_DEFAULTS = {
    "interpretable": True,
    "stop_and_confirm": False,
    "devices_by_pid": False,
    "decimal_precision": 12,
    "api_keys": None,
    "sim_cpu": None,
    "sim_cpu_tdp": None,
    "sim_cpu_util": None,
    "sim_gpu": None,
    "sim_gpu_watts": None,
    "sim_gpu_util": None,
}


def find_binary() -> str:
    """The ``carbontrack`` binary: ``$CARBONTRACK_BIN``, else on ``PATH``."""
    given = os.environ.get(BIN_ENV)
    if given:
        if os.path.isfile(given) and os.access(given, os.X_OK):
            return given
        raise FileNotFoundError(
            f"carbontrack: {BIN_ENV}={given} is not an executable file; "
            "point it at the carbontrack binary or unset it to use PATH"
        )
    found = shutil.which("carbontrack")
    if found:
        return found
    raise FileNotFoundError(
        "carbontrack: the `carbontrack` binary was not found on PATH; install it "
        f"(see carbontrack's README) or set {BIN_ENV} to its path"
    )


def _components(components: str) -> str:
    parts = {p.strip() for p in str(components).lower().split(",") if p.strip()}
    if not parts or not parts <= set(_COMPONENTS):
        raise ValueError(
            f"components={components!r}: use 'all', 'cpu', 'gpu' or 'cpu,gpu'"
        )
    if "all" in parts or parts == {"cpu", "gpu"}:
        return _COMPONENTS["all"]
    return _COMPONENTS[parts.pop()]


class CarbonTracker:
    """carbontracker's ``CarbonTracker``, with the same arguments in the same
    order. Used here: ``epochs``, ``epochs_before_pred`` (0: no prediction,
    -1: all epochs), ``monitor_epochs`` (-1: all epochs), ``update_interval``
    (seconds between samples), ``ignore_errors`` (training is never stopped
    either way), ``components``, ``log_dir`` (the footprint CSV goes there),
    ``log_file_prefix`` and ``verbose`` (0: print nothing). The others are
    accepted and ignored, with one warning naming them.
    """

    def __init__(
        self,
        epochs: int,
        epochs_before_pred: int = 1,
        monitor_epochs: int = -1,
        update_interval: Optional[float] = None,
        interpretable: bool = True,
        stop_and_confirm: bool = False,
        ignore_errors: bool = False,
        components: str = "all",
        devices_by_pid: bool = False,
        log_dir: Optional[str] = None,
        log_file_prefix: str = "",
        verbose: int = 1,
        decimal_precision: int = 12,
        api_keys: Optional[dict] = None,
        sim_cpu: Optional[str] = None,
        sim_cpu_tdp: Optional[float] = None,
        sim_cpu_util: Optional[float] = None,
        sim_gpu: Optional[str] = None,
        sim_gpu_watts: Optional[float] = None,
        sim_gpu_util: Optional[float] = None,
        **others,
    ):
        given = dict(
            interpretable=interpretable,
            stop_and_confirm=stop_and_confirm,
            devices_by_pid=devices_by_pid,
            decimal_precision=decimal_precision,
            api_keys=api_keys,
            sim_cpu=sim_cpu,
            sim_cpu_tdp=sim_cpu_tdp,
            sim_cpu_util=sim_cpu_util,
            sim_gpu=sim_gpu,
            sim_gpu_watts=sim_gpu_watts,
            sim_gpu_util=sim_gpu_util,
        )
        ignored = [k for k, v in given.items() if v != _IGNORED_DEFAULTS[k]]
        ignored += sorted(others)
        if ignored:
            warnings.warn(
                "carbontrack: CarbonTracker ignores "
                + ", ".join(ignored)
                + " (carbontrack measures the devices themselves; set the carbon "
                f"intensity and PUE with {RUN_FLAGS_ENV}, e.g. '--intensity DK')",
                UserWarning,
                stacklevel=2,
            )

        # carbontracker's own checks, with its meaning of -1.
        if int(epochs) < 1:
            raise ValueError("epochs must be at least 1")
        if monitor_epochs != -1:
            if monitor_epochs < epochs_before_pred:
                raise ValueError("monitor_epochs cannot be less than epochs_before_pred")
            if monitor_epochs == 0:
                raise ValueError("monitor_epochs cannot be zero")
        else:
            monitor_epochs = epochs
        if epochs_before_pred == -1:
            epochs_before_pred = epochs
        if epochs_before_pred < 0:
            raise ValueError("epochs_before_pred must be -1, 0 or more")
        if update_interval is not None and not 0.1 <= float(update_interval) <= 600:
            raise ValueError("update_interval must be between 0.1 and 600 seconds")

        self.epochs = int(epochs)
        self.epochs_before_pred = int(epochs_before_pred)
        self.monitor_epochs = int(monitor_epochs)
        self.update_interval = update_interval
        self.ignore_errors = ignore_errors
        self.components = _components(components)
        self.log_dir = log_dir
        self.log_file_prefix = log_file_prefix
        self.verbose = verbose
        self.epoch_counter = 0
        self.deleted = False

        self._epoch_file: Optional[str] = os.environ.get(EPOCH_FILE_ENV) or None
        #: Inside a tracked job or ``carbontrack run``: only mark epochs.
        self.inside_job = self._epoch_file is not None
        self._proc: Optional[subprocess.Popen] = None
        self._stderr: Optional[IO[bytes]] = None
        self._warned = False
        try:
            self._bin = find_binary()
        except FileNotFoundError as e:
            if not ignore_errors:
                raise
            self._bin = None
            self._warn(str(e) + "; training goes on unmeasured")
            self.deleted = True
        atexit.register(self._at_exit)

    # carbontracker's public methods.

    def epoch_start(self) -> None:
        """Call at the start of each epoch. The first call outside a tracked
        job starts the measurement."""
        if self.deleted:
            return
        if not self.inside_job and self._proc is None:
            self._start()
            if self.deleted:
                return
        self.epoch_counter += 1

    def epoch_end(self) -> None:
        """Call at the end of each epoch: marks it, and after
        ``monitor_epochs`` epochs prints the actual consumption."""
        if self.deleted:
            return
        self._mark()
        if self.epoch_counter >= self.monitor_epochs:
            self._finish()

    def stop(self) -> None:
        """Ends the measurement early (e.g. early stopping): the actual
        consumption of the epochs completed so far. Nothing after
        ``monitor_epochs`` epochs, when it has been printed already."""
        if self.deleted:
            return
        self._finish()

    # The work.

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _out(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    def _run_args(self) -> List[str]:
        args = [self._bin, "run", "--pid", str(os.getpid())]
        args += ["--components", self.components]
        if self.epochs_before_pred > 0:
            args += ["--epochs", str(self.epochs)]
            args += ["--epochs-before-pred", str(self.epochs_before_pred)]
        if self.update_interval is not None:
            args += ["--interval", f"{round(float(self.update_interval) * 1000)}ms"]
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
            name = f"{self.log_file_prefix}carbontrack-{os.getpid()}-{stamp}.csv"
            args += ["-o", os.path.join(self.log_dir, name)]
        else:
            args += ["--report", "none"]
        args += shlex.split(os.environ.get(RUN_FLAGS_ENV, ""))
        return args

    def _start(self) -> None:
        """Starts ``carbontrack run --pid`` and waits until it samples."""
        if self.verbose:
            stderr = None  # the blocks go straight to this process's stderr
        else:
            self._stderr = tempfile.TemporaryFile()
            stderr = self._stderr
        try:
            self._proc = subprocess.Popen(
                self._run_args(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                # Ctrl-C is for the training; the tracker ends with it anyway.
                start_new_session=True,
            )
        except OSError as e:
            self._give_up(f"cannot start {self._bin}: {e}")
            return
        line = self._first_line(self._proc.stdout, START_WAIT_S)
        self._proc.stdout.close()
        key, _, path = line.strip().partition("=")
        if key != EPOCH_FILE_ENV or not path:
            self._give_up(
                "`carbontrack run --pid` did not start"
                + (f" (exit status {self._proc.poll()})" if self._proc.poll() is not None else "")
                + self._captured()
            )
            return
        self._epoch_file = path

    @staticmethod
    def _first_line(stream: IO[bytes], wait_s: float) -> str:
        """The first line of ``stream``, waiting at most ``wait_s``."""
        deadline = time.monotonic() + wait_s
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(stream, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(stream.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.split(b"\n", 1)[0].decode(errors="replace")

    def _captured(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return f": {text}" if text else ""

    def _give_up(self, why: str) -> None:
        self._warn(f"carbontrack: {why}; training goes on unmeasured")
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self.deleted = True

    def _mark(self) -> None:
        """One epoch mark, written by ``carbontrack epoch`` so that its
        format lives in one place."""
        if self._epoch_file is None:
            return
        env = dict(os.environ, **{EPOCH_FILE_ENV: self._epoch_file})
        try:
            subprocess.run(
                [self._bin, "epoch"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as e:
            self._warn(f"carbontrack: epoch {self.epoch_counter} not marked: {e}")

    def _finish(self) -> None:
        self.deleted = True
        if self.inside_job:
            self._out(self._pointer())
            return
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self._warn(
                f"carbontrack: no final figures within {STOP_WAIT_S:.0f} s; "
                "the tracker is left to finish on its own"
            )
            return
        if status != 0:
            self._warn(f"carbontrack: the tracker ended with status {status}{self._captured()}")

    def _pointer(self) -> str:
        """Where a tracked job's figures are: beside its epoch file."""
        path = self._epoch_file or ""
        name = os.path.basename(path)
        if name.startswith(".carbontrack-") and name.endswith(".epochs"):
            job = name[len(".carbontrack-") : -len(".epochs")]
            summary = os.path.join(os.path.dirname(path), f"carbontrack-{job}.txt")
            return (
                f"carbontrack: {self.epoch_counter} epoch(s) marked; job {job}'s "
                f"prediction and actual consumption are in {summary} "
                "(refreshed while it runs; the prediction counts the epochs of "
                "--carbon-epochs)"
            )
        return (
            f"carbontrack: {self.epoch_counter} epoch(s) marked; `carbontrack run` "
            "prints the actual consumption when the command ends"
        )

    def _at_exit(self) -> None:
        if not self.deleted:
            self._finish()
