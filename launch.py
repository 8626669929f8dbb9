"""``python launch.py`` (``spikeformer-live run``): run the live pipeline (source -> inference worker
-> GUI or headless report), and ``spikeformer-live``, the one command-line tool (``cli``).

    python launch.py                                  # GUI, first camera found (else the simulator)
    python launch.py --headless --source sim --duration 10 --report run.json
    python launch.py --headless --source file:rec.aedat4 --speed max   # replays every event, exits
    python launch.py --headless --source file:rec.aedat --speed max --all-windows \
        --labels rec_labels.csv --predictions-out rec.csv --report rec.json   # evaluate a recording

Stages are child processes (``python -m stream.source_stage``, ``python -m inference.worker_stage``) joined by
ZeroMQ; the consumer (GUI or headless recorder) runs in this process. By default the endpoints are
``ipc://`` sockets in a private temporary directory; ``--events-endpoint`` and
``--predictions-endpoint`` (e.g. ``tcp://127.0.0.1:5555``) and ``--stages`` let stages run on
different machines (start ``--stages source`` on the camera host and ``--stages worker,consumer``
elsewhere, with the same endpoints; the source binds the events endpoint, the worker binds the
predictions endpoint; a non-loopback address needs ``--allow-remote``).

CurveZMQ (``--curve-keys DIR [--curve-name NAME] [--curve-server NAME]``, see
``stream.transport.keys`` and the README): every stage and the consumer get the key directory, so every tcp endpoint is
encrypted and authenticated. A subscriber trusts its own key for a publisher that runs here and
``DIR/SERVER.key`` (``--curve-server``) for one that runs elsewhere (the stages not in
``--stages``). A bad key directory is one ``error:`` line and exit code 2, before anything starts.

Shutdown: Ctrl-C (SIGINT) or SIGTERM stops every stage within ``STOP_TIMEOUT_S`` (SIGTERM, then
SIGKILL for a stage that has not exited); headless, the summary is still printed and the report
(``"ended": "interrupted"``) and the predictions still written with everything measured up to then,
exit code 130 (a second Ctrl-C cuts that short). Children run in
their own process group (a terminal's Ctrl-C reaches this process only, which stops them in order)
and on Linux get SIGTERM if this process dies without cleaning up (``PR_SET_PDEATHSIG``).
The source stage runs ``SOURCE_NICE`` levels below the worker (it works ahead of the pace; the
inference is what a user waits for). Failures (``--on-failure``): with ``restart`` (the default) a
stage that exits with a nonzero code
(crashed, killed, or a source that lost its camera or server and gave up reconnecting) is started
again after a backoff of 0.5 s doubling to 5 s; after 5 restarts within a minute the next failure is
final: one line on stderr and the pipeline stops (exit code 1). A stage that stops with its own
one-line error (exit code 2: a missing or damaged file, a bad checkpoint, no camera or server at
start) is not restarted: the same input would fail the same way. With ``stop`` the first failure
stops every stage (one line naming the stage and its exit code; exit code 1). A stage that ends by
itself (exit code 0, e.g. at the end of a file) is never restarted. See ``RestartPolicy``: the
GUI asks this supervisor to restart stages (``SourceSwitcher``), it has no restart policy of its own.

Bad input fails early: the source spec, the file's existence and format, the checkpoint and the
labels are checked before any stage starts (``check_inputs``): one ``error:`` line, exit code 2.

File replay as an evaluation (headless): ``--all-windows`` has the worker infer every window instead
of jumping to the newest (with ``--speed max`` the source waits for the worker, so nothing is
skipped; the report gives the rate in windows/s). Ground truth of a file comes from ``--labels CSV``
(DVS128 Gesture's ``class,startTime_usec,endTime_usec`` or the folder format
``file,class,start_us,end_us``), else from ``<name>_labels.csv`` beside it (one line says so), and
counts exactly as the simulator's truth: accuracy, stable accuracy, per-class accuracy, the
confusion matrix and time to decision (``inference.headless``). ``--predictions-out PATH`` (``.csv``
or ``.jsonl``) writes one row per window.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from stream.stage import (
    EXIT_ERROR,
    ArgumentParser,
    Command,
    StopRequest,
    comma_names,
    dispatch,
    positive_number,
    run_main,
    speed_argument,
)
from training import BUILTIN_CHECKPOINT
from stream.transport.keys import CurveConfig, add_curve_arguments, curve_from_args

DEFAULT_CHECKPOINT = BUILTIN_CHECKPOINT
STOP_TIMEOUT_S = 1.5  # SIGTERM -> SIGKILL grace for all stages together
STAGES = ("source", "worker", "consumer")
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
ON_FAILURE = ("restart", "stop")
SUPERVISE_POLL_S = 0.1  # how often a launcher without a consumer checks its stages
STDERR_DRAIN_S = 1.0  # after a stage exits, how long its last stderr lines may take to come through
MAX_ERROR_CHARS = 500  # Stage.last_error keeps this much of the line
# The source stage runs this many nice levels below the worker: when the two want the same core,
# the inference a user waits for goes first, and the source catches up from its lead (the
# simulator renders up to 400 ms ahead; a file reader and a camera driver buffer too). Measured
# on this shared 2-core machine, four pairs of 40 s simulator runs: compute p99 15.8 / 19.5 /
# 14.1 / 19.0 ms against 18.7 / 26.8 / 21.3 / 24.5 ms with the source at the worker's priority,
# end-to-end p99 lower too (the source did not fall behind); with the simulator's renderer thread
# above the worker's priority instead, the worker's p99 was 50-70 ms.
SOURCE_NICE = 3


class Endpoints(NamedTuple):
    """ZeroMQ endpoints of the pipeline: ``events`` (source -> worker and GUI: events, truth,
    the source's stats and clock messages), ``predictions`` (worker -> consumers: predictions,
    truth, the worker's stats and end of stream) and ``control`` (the source stage's control
    socket: pause, resume, seek, speed, loop, status; None: no control)."""

    events: str
    predictions: str
    control: str | None = None


# --- process supervision ------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[int], Callable[[], None]]:
    """``preexec_fn``s (one per niceness): put the child in its own process group, lower its
    priority by ``nice`` levels, and on Linux ask the kernel to SIGTERM it when this process dies.
    libc is loaded here, before any fork."""
    prctl = None
    if sys.platform.startswith("linux"):
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def for_nice(nice: int) -> Callable[[], None]:
        def preexec() -> None:
            os.setpgrp()
            if nice:
                os.nice(nice)
            if prctl is not None:
                prctl(pr_set_pdeathsig, signal.SIGTERM)

        return preexec

    return for_nice


@dataclass
class Stage:
    """One child process: ``python -m MODULE ARGS...``, ``nice`` levels below this process's priority."""

    name: str
    module: str
    args: list[str]
    nice: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)
    starts: int = 0
    restarts: int = 0  # automatic restarts after a failure (``RestartPolicy``)
    started_at: float = 0.0  # time.monotonic() of the latest start
    last_error: str = ""  # the latest ``error:`` line the stage wrote to stderr in this run
    _stderr_reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


class StageExit(NamedTuple):
    """A stage that has exited: its name and exit code (negative: killed by that signal)."""

    name: str
    returncode: int


@dataclass(frozen=True)
class RestartPolicy:
    """When a ``Supervisor`` starts a failed stage (nonzero exit code) again.

    Failures are consecutive until a run lasts ``stable_after_s``. The n-th consecutive failure
    waits ``first_backoff_s * 2**(n-1)`` seconds (at most ``max_backoff_s``) before the restart.
    The failure is final (reported by ``Supervisor.poll``) when ``max_restarts`` restarts already
    happened within the last ``window_s`` seconds, or in a row without a stable run: a stage that
    cannot start for a reason that may pass is given up after a few tries even when loading it
    takes longer than ``window_s / max_restarts``. An exit code in ``final_codes`` is final at once:
    the stage stopped with its own error line (``stream.stage.EXIT_ERROR``: a missing or damaged
    file, a bad checkpoint, no camera at start), which a restart would only repeat.

    Args:
        first_backoff_s: wait before the first restart, seconds.
        max_backoff_s: longest wait, seconds.
        max_restarts: restarts allowed per ``window_s``, and in a row, per stage.
        window_s: the sliding window of ``max_restarts``, seconds.
        stable_after_s: a run this long ends a series of consecutive failures, seconds.
        final_codes: exit codes never restarted.
    """

    first_backoff_s: float = 0.5
    max_backoff_s: float = 5.0
    max_restarts: int = 5
    window_s: float = 60.0
    stable_after_s: float = 30.0
    final_codes: tuple[int, ...] = (EXIT_ERROR,)

    def __post_init__(self) -> None:
        if not 0 < self.first_backoff_s <= self.max_backoff_s:
            raise ValueError(f"need 0 < first_backoff_s <= max_backoff_s, got {self.first_backoff_s}, {self.max_backoff_s}")
        if self.max_restarts < 0 or not self.window_s > 0 or self.stable_after_s < 0:
            raise ValueError(f"need max_restarts >= 0, window_s > 0, stable_after_s >= 0, got {self}")


class Supervisor:
    """Starts stages as child processes, notices when they exit, restarts failed ones, stops them all.

    ``poll()`` is cheap (no blocking) and meant to be called from the consumer's loop (every
    ~100 ms): it reports exits and, with a ``policy``, performs the restarts that are due.
    ``restart`` starts an exited stage again by hand. A context manager: leaving it stops every
    stage still running. A stage's stderr passes through this process line by line (to this
    process's stderr), and its latest ``error:`` line is kept in ``Stage.last_error`` for the
    consumer to show (the GUI's status line, the headless report's failures).

    Args:
        stages: what to run, started in this order.
        log: where one-line status messages go.
        policy: restart failed stages by this policy; None: never (every exit is reported).
    """

    def __init__(
        self, stages: list[Stage], log: Callable[[str], None] | None = None, policy: RestartPolicy | None = None
    ) -> None:
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.stages = {stage.name: stage for stage in stages}
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.policy = policy
        self._preexec = _parent_death_signal()
        self._reported: set[str] = set()
        self._due: dict[str, float] = {}  # stage -> time.monotonic() of its pending restart
        self._streak: dict[str, int] = {}  # stage -> consecutive failures (runs shorter than stable_after_s)
        self._restart_times: dict[str, deque[float]] = {name: deque() for name in names}

    def start(self) -> None:
        """Start every stage that is not running (a pending restart happens now)."""
        for stage in self.stages.values():
            if stage.process is None or stage.process.poll() is not None:
                self._spawn(stage)

    def _spawn(self, stage: Stage) -> None:
        self._due.pop(stage.name, None)
        stage.process = subprocess.Popen(stage.command, preexec_fn=self._preexec(stage.nice), close_fds=True,
                                         stderr=subprocess.PIPE)  # fmt: skip
        stage.starts += 1
        stage.started_at = time.monotonic()
        stage.last_error = ""
        stage._stderr_reader = threading.Thread(target=_pass_stderr, args=(stage, stage.process.stderr),
                                                name=f"{stage.name}-stderr", daemon=True)  # fmt: skip
        stage._stderr_reader.start()
        self._reported.discard(stage.name)

    def restart(self, name: str) -> None:
        """Start stage ``name`` again (it must have exited); cancels a pending automatic restart."""
        stage = self.stages[name]
        if stage.process is not None and stage.process.poll() is None:
            raise ValueError(f"stage {name!r} is still running (pid {stage.process.pid})")
        self._spawn(stage)

    def replace(self, name: str, args: list[str], stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop stage ``name`` (SIGTERM, SIGKILL after ``stop_timeout_s``) and start it again with
        ``args``; its exit is not reported as news."""
        stage = self.stages[name]
        process = stage.process
        if process is not None and process.poll() is None:
            _signal(process, signal.SIGTERM)
            try:
                process.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()
        stage.args = list(args)
        self.restart(name)

    def poll(self) -> list[StageExit]:
        """Stages that have exited since the previous call (each reported once per start).

        With a ``policy``, a failed stage that will be restarted is not reported (the restart is
        logged instead); a failure past the policy's limit is. Restarts that are due happen here.
        """
        now = time.monotonic()
        for name, due in list(self._due.items()):
            if now >= due:
                stage = self.stages[name]
                self._spawn(stage)
                stage.restarts += 1
                self.log(f"launch: stage {name} restarted (pid {stage.process.pid}, restart {stage.restarts})")
        exits = []
        for stage in self.stages.values():
            if stage.process is None or stage.name in self._reported:
                continue
            code = stage.process.poll()
            if code is not None:
                self._reported.add(stage.name)
                if code != 0 and stage._stderr_reader is not None:  # read its last lines: the error
                    stage._stderr_reader.join(STDERR_DRAIN_S)
                if code != 0 and self.policy is not None and self._schedule_restart(stage, code, now):
                    continue
                exits.append(StageExit(stage.name, code))
        return exits

    def _schedule_restart(self, stage: Stage, code: int, now: float) -> bool:
        """Plan the restart of a failed stage; False (and one line logged) when the policy gives up."""
        policy = self.policy
        if code in policy.final_codes:
            self.log(f"launch: stage {stage.name} stopped with an error (exit code {code}, its line above); "
                     "not restarting it: it would fail the same way")  # fmt: skip
            return False
        times = self._restart_times[stage.name]
        while times and now - times[0] > policy.window_s:
            times.popleft()
        streak = 1 if now - stage.started_at >= policy.stable_after_s else self._streak.get(stage.name, 0) + 1
        if len(times) >= policy.max_restarts or streak > policy.max_restarts:
            within = f"within {policy.window_s:g} s" if len(times) >= policy.max_restarts else "in a row"
            self.log(f"launch: stage {stage.name} exited with code {code} after {stage.restarts} restarts "
                     f"(limit: {policy.max_restarts} {within}); giving up")  # fmt: skip
            return False
        self._streak[stage.name] = streak
        backoff = min(policy.first_backoff_s * 2 ** (streak - 1), policy.max_backoff_s)
        times.append(now)
        self._due[stage.name] = now + backoff
        self.log(f"launch: stage {stage.name} exited with code {code}; restarting it in {backoff:g} s")
        return True

    def restart_counts(self) -> dict[str, int]:
        """Automatic restarts per stage so far (for reports)."""
        return {name: stage.restarts for name, stage in self.stages.items()}

    def running(self) -> list[str]:
        """Names of the stages still running or about to be restarted."""
        return [
            s.name for s in self.stages.values()
            if s.name in self._due or (s.process is not None and s.process.poll() is None)
        ]  # fmt: skip

    def pids(self) -> dict[str, int]:
        """Process ids of the started stages."""
        return {s.name: s.process.pid for s in self.stages.values() if s.process is not None}

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every stage to exit by itself; True if they all did."""
        deadline = time.monotonic() + timeout_s
        for stage in self.stages.values():
            if stage.process is None:
                continue
            try:
                stage.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every running stage, wait up to ``timeout_s`` in all, SIGKILL the rest, reap all."""
        self._due.clear()
        alive = [s for s in self.stages.values() if s.process is not None and s.process.poll() is None]
        for stage in alive:
            _signal(stage.process, signal.SIGTERM)
        if not self.wait(timeout_s):
            for stage in alive:
                if stage.process.poll() is None:
                    self.log(f"launch: stage {stage.name} did not stop within {timeout_s:g} s; killing it")
                    _signal(stage.process, signal.SIGKILL)
            for stage in alive:
                stage.process.wait()

    def __enter__(self) -> "Supervisor":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _pass_stderr(stage: Stage, pipe) -> None:
    """Thread: copy a stage's stderr to ours line by line; remember its latest ``error:`` line."""
    with pipe:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            if line.startswith("error:"):
                stage.last_error = line[len("error:") :].strip()[:MAX_ERROR_CHARS]
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is closed: keep draining the pipe
                pass


def _signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:  # already gone
        pass


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="spikeformer-live run", description="Live gesture recognition: source -> spiking transformer -> GUI or report."
    )
    parser.add_argument("--headless", action="store_true", help="no GUI: print a summary (and --report JSON)")
    parser.add_argument(
        "--source", default="auto",
        help="auto (first camera, else the simulator) | camera[:SERIAL] | file:PATH | dv:HOST:PORT | sim",
    )  # fmt: skip
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="inference backend")
    parser.add_argument("--device", default=None, help="backend device (e.g. cuda:0); default: the backend's choice")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="model checkpoint (.json)")
    parser.add_argument("--speed", type=speed_argument, default="1",
                        help="replay speed factor for files and the simulator (0.1..100), or 'max'")  # fmt: skip
    parser.add_argument("--loop", action="store_true", help="replay a file forever")
    from stream.formats import add_format_options

    add_format_options(parser)  # --format, --sensor: how a file source is read
    parser.add_argument("--allow-truncated", action="store_true",
                        help="replay a damaged or cut file up to the damage instead of refusing it")  # fmt: skip
    parser.add_argument("--duration", type=positive_number, default=None, help="stop after this many seconds")
    parser.add_argument("--report", type=Path, default=None, help="headless: write the JSON report here")
    parser.add_argument("--all-windows", action="store_true",
                        help="infer every window, skip none (evaluate a file with --speed max; a live source may "
                             "fall behind)")  # fmt: skip
    parser.add_argument("--labels", type=Path, default=None,
                        help="headless, file source: ground-truth CSV (DVS128 Gesture class,startTime_usec,endTime_usec "
                             "or folder file,class,start_us,end_us); default: <name>_labels.csv beside the file")  # fmt: skip
    parser.add_argument("--predictions-out", type=Path, default=None,
                        help="headless: write one row per window to this .csv or .jsonl file")  # fmt: skip
    parser.add_argument("--screenshot", type=Path, default=None, help="GUI: save the whole window here before it closes (with --duration)")
    parser.add_argument("--stride-us", type=int, default=None, help="time between predictions (default: checkpoint's)")
    parser.add_argument("--events-endpoint", default=None, help="source -> worker ZeroMQ endpoint (default: ipc in a temp dir)")
    parser.add_argument("--predictions-endpoint", default=None, help="worker -> consumers endpoint (default: ipc in a temp dir)")
    parser.add_argument(
        "--stages", type=comma_names(STAGES), default=STAGES,
        help="which stages run here, comma separated (default: source,worker,consumer)",
    )  # fmt: skip
    parser.add_argument("--allow-remote", action="store_true", help="allow non-loopback tcp endpoints (other machines)")
    parser.add_argument("--quiet", action="store_true", help="headless: no per-second progress lines")
    parser.add_argument(
        "--on-failure", choices=ON_FAILURE, default="restart",
        help="a stage that fails: restart it with backoff (default), or stop the pipeline (exit code 1)",
    )  # fmt: skip
    add_curve_arguments(parser)
    return parser


def _curve_server(args: argparse.Namespace, publisher: str) -> str | None:
    """The key name a subscriber trusts for the ``publisher`` stage: None (its own key) when that
    stage runs here, else ``--curve-server``."""
    return None if publisher in getattr(args, "stages", STAGES) else getattr(args, "curve_server", None)


def _common_stage_args(args: argparse.Namespace, publisher: str | None = None) -> list[str]:
    """``--allow-remote`` and the ``--curve-*`` options a stage gets; ``publisher``: the stage whose
    endpoint it subscribes to (None: it subscribes to none)."""
    stage_args = ["--allow-remote"] if getattr(args, "allow_remote", False) else []
    if getattr(args, "curve_keys", None) is None:
        return stage_args
    stage_args += ["--curve-keys", str(args.curve_keys)]
    if args.curve_name:
        stage_args += ["--curve-name", args.curve_name]
    server = _curve_server(args, publisher) if publisher is not None else None
    if server:
        stage_args += ["--curve-server", server]
    return stage_args


def consumer_curves(args: argparse.Namespace) -> tuple[CurveConfig | None, CurveConfig | None]:
    """CurveZMQ keys of the consumer for the (predictions, events) endpoints; (None, None) without
    ``--curve-keys``. Raises ``CurveKeyError`` (one line) for a bad key directory."""
    if curve_from_args(args) is None:  # also refuses --curve-name / --curve-server without --curve-keys
        return None, None
    return tuple(CurveConfig.from_directory(args.curve_keys, args.curve_name, _curve_server(args, publisher))
                 for publisher in ("worker", "source"))  # type: ignore[return-value]  # fmt: skip


def source_stage(args: argparse.Namespace, endpoints: Endpoints, wait_subscribers: int) -> Stage:
    """The source child process for these arguments."""
    stage_args = ["--source", args.source, "--pub", endpoints.events, "--speed", args.speed]
    stage_args += ["--wait-subscribers", str(wait_subscribers), "--quiet"]
    if args.loop:
        stage_args.append("--loop")
    if args.allow_truncated:
        stage_args.append("--allow-truncated")
    if args.file_format:
        stage_args += ["--format", args.file_format]
    if args.file_sensor:
        stage_args += ["--sensor", f"{args.file_sensor.width}x{args.file_sensor.height}"]
    if endpoints.control:
        stage_args += ["--control", endpoints.control]
    stage_args += _common_stage_args(args)
    return Stage("source", "stream.source_stage", stage_args, nice=SOURCE_NICE)


class SourceSwitcher:
    """Switches the pipeline's source for the GUI: the supervisor restarts the source stage with a
    new spec, speed or loop flag (and a worker that has exited: it ends with its stream).

    Args:
        supervisor: the ``Supervisor`` (stages ``source`` and, optionally, ``worker``).
        args: the launcher's arguments (copied; ``source``, ``speed``, ``loop`` replaced).
        endpoints: the pipeline's endpoints.
    """

    def __init__(self, supervisor: Supervisor, args: argparse.Namespace, endpoints: Endpoints) -> None:
        if "source" not in supervisor.stages:
            raise ValueError("the supervisor runs no source stage here")
        self.supervisor = supervisor
        self.args = copy.copy(args)
        self.endpoints = endpoints

    def restart(self, spec: str, speed: str, loop: bool) -> None:
        """Start the source stage again on ``spec`` at ``speed`` ("max" or a factor)."""
        args = copy.copy(self.args)
        args.source, args.speed, args.loop = spec, speed, loop
        wait = 1 + ("worker" in self.supervisor.stages)  # the GUI subscribes to the events too
        self.supervisor.replace("source", source_stage(args, self.endpoints, wait_subscribers=wait).args)
        self.supervisor.poll()  # the old source's exit is not news
        self.args = args
        worker = self.supervisor.stages.get("worker")
        if worker is not None and worker.process is not None and worker.process.poll() is not None:
            self.supervisor.restart("worker")


class ModelSwitcher:
    """Loads another model for the GUI without restarting it: the supervisor restarts the worker
    stage with ``--checkpoint NEW`` (the source keeps running; the new worker subscribes to it).

    Args:
        supervisor: the ``Supervisor`` (stage ``worker``).
        args: the launcher's arguments (copied; ``checkpoint`` replaced).
        endpoints: the pipeline's endpoints.
    """

    def __init__(self, supervisor: Supervisor, args: argparse.Namespace, endpoints: Endpoints) -> None:
        if "worker" not in supervisor.stages:
            raise ValueError("the supervisor runs no worker stage here")
        self.supervisor = supervisor
        self.args = copy.copy(args)
        self.endpoints = endpoints

    def load(self, checkpoint: Path) -> None:
        """Restart the worker stage on ``checkpoint``; a file that is not a checkpoint raises
        ``CheckpointError`` (a ValueError) and the running worker stays."""
        from training.checkpoint import read_metadata

        read_metadata(checkpoint)
        args = copy.copy(self.args)
        args.checkpoint = Path(checkpoint)
        self.supervisor.replace("worker", worker_stage(args, self.endpoints, wait_subscribers=1).args)  # the GUI
        self.args = args


def worker_stage(args: argparse.Namespace, endpoints: Endpoints, wait_subscribers: int) -> Stage:
    """The inference worker child process for these arguments."""
    stage_args = ["--sub", endpoints.events, "--pub", endpoints.predictions]
    stage_args += ["--checkpoint", str(args.checkpoint), "--backend", args.backend]
    stage_args += ["--wait-subscribers", str(wait_subscribers)]
    if args.device:
        stage_args += ["--device", args.device]
    if args.stride_us:
        stage_args += ["--stride-us", str(args.stride_us)]
    if getattr(args, "all_windows", False):
        stage_args.append("--all-windows")
    stage_args += _common_stage_args(args, publisher="source")
    return Stage("worker", "inference.worker_stage", stage_args)


def _display_problem() -> str | None:
    """Why a GUI cannot open here (None if it probably can). Checked before Qt is touched, because
    Qt aborts the process when it finds no display."""
    if os.environ.get("QT_QPA_PLATFORM"):
        return None
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display found (DISPLAY and WAYLAND_DISPLAY are unset)"
    return None


class _Stop(Exception):
    """SIGTERM received: leave the main loop like Ctrl-C does."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def check_inputs(args: argparse.Namespace) -> None:
    """Fail before any stage starts: the source spec, a file source's existence and format, and
    the checkpoint, each with one line naming the problem (``ValueError``)."""
    if "source" in args.stages:
        from stream.sources import parse_spec

        if args.file_format is None:
            parse_spec(args.source, check_file=True)
        else:  # a forced format (a headerless EVT 2.0 dump has no first bytes to know it by)
            from stream.formats import open_events

            kind, path = parse_spec(args.source)
            if kind != "file":
                raise ValueError(f"--format and --sensor read files: give --source file:PATH, not {args.source!r}")
            open_events(path, format=args.file_format, sensor_size=args.file_sensor).close()
    elif args.file_format or args.file_sensor:
        raise ValueError("--format and --sensor read files, and this launch runs no source")
    if "worker" in args.stages:
        from training.checkpoint import read_metadata

        read_metadata(args.checkpoint)  # CheckpointError: missing, damaged, not a checkpoint


def model_classes(args: argparse.Namespace) -> list[str] | None:
    """The checkpoint's class names when the worker runs here (None: another machine's model)."""
    if "worker" not in args.stages:
        return None
    from training.checkpoint import read_metadata

    return list(read_metadata(args.checkpoint)["classes"])


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ground_truth(args: argparse.Namespace, classes: Sequence[str] | None,
                 say: Callable[[str], None] = _say) -> tuple[list, str] | None:  # fmt: skip
    """The labelled gestures of a replayed file (``--labels``, else ``<name>_labels.csv`` beside
    it, announced by ``say``) as the model's class indices, and the labels file, or None.
    ``ValueError`` (one line): labels without a file source, a missing or malformed CSV, no gesture
    of this file in it, a class the model does not have."""
    from inference.headless import model_segments
    from stream.formats.labels import find_labels
    from stream.sources import parse_spec

    kind, path = parse_spec(args.source)
    if kind != "file":
        if args.labels is not None:
            raise ValueError(f"--labels needs a file source (--source file:PATH), got {args.source!r}")
        return None
    labels = args.labels
    if labels is None:
        labels = find_labels(path) if Path(path).is_file() else None
        if labels is None:
            return None
        say(f"launch: ground truth from {labels} (found beside the file; --labels CSV to give another)")
    segments = model_segments(path, labels, classes)
    if not segments:
        raise ValueError(f"{labels}: no labelled gesture for {path}")
    return segments, str(labels)


def main(argv: Sequence[str] | None = None) -> int:
    """``python launch.py ARGS`` = ``spikeformer-live run ARGS``: bad arguments or inputs are one
    ``error:`` line and exit code 2, before anything starts."""
    return run_main(_run, argv)


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    for given, name in ((args.report, "--report"), (args.labels, "--labels"), (args.predictions_out, "--predictions-out")):
        if given is not None and not args.headless:
            raise ValueError(f"{name} needs --headless")
    if args.predictions_out is not None and args.predictions_out.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"--predictions-out {args.predictions_out}: the name must end in .csv or .jsonl")
    consumer_here = "consumer" in args.stages
    run_gui = None
    if consumer_here and not args.headless:
        problem = _display_problem()
        if problem is None:
            try:
                from gui.app import run_gui  # lazy: Qt only when a window is wanted
            except ImportError as error:
                problem = f"the GUI cannot be loaded ({error})"
        if problem is not None:
            raise ValueError(f"{problem}; run with --headless for the report-only mode")
    check_inputs(args)
    predictions_curve, events_curve = consumer_curves(args)  # CurveKeyError (a ValueError): a bad key directory
    classes = labels = None
    if consumer_here and args.headless:
        classes = model_classes(args)
        labels = ground_truth(args, classes)

    temp_dir = None
    if args.events_endpoint is None or args.predictions_endpoint is None or "source" in args.stages:
        temp_dir = tempfile.mkdtemp(prefix="spikeformer-")
    endpoints = Endpoints(
        args.events_endpoint or f"ipc://{temp_dir}/events",
        args.predictions_endpoint or f"ipc://{temp_dir}/predictions",
        f"ipc://{temp_dir}/control" if "source" in args.stages else None,  # this machine only
    )
    previous_term = signal.signal(signal.SIGTERM, _raise_stop)
    children = []
    # Each publisher waits for its subscriber before sending, so no message is lost at start-up.
    if "worker" in args.stages:
        children.append(worker_stage(args, endpoints, wait_subscribers=1 if consumer_here else 0))
    if "source" in args.stages:  # the GUI subscribes to the events too: wait for it as well as for the worker
        gui_here = consumer_here and not args.headless
        children.append(source_stage(args, endpoints, wait_subscribers=("worker" in args.stages) + gui_here))
    supervisor = Supervisor(children, policy=RestartPolicy() if args.on_failure == "restart" else None)
    try:
        if not consumer_here:
            return _supervise_only(supervisor, args.duration)
        if args.headless:
            from inference.headless import run_headless

            # Ctrl-C and SIGTERM end the recording, not the process: the summary and the report
            # still come out (a second signal raises KeyboardInterrupt: a forced stop).
            stop = StopRequest().install()
            return run_headless(args, endpoints, supervisor, curve=predictions_curve, stop=stop.event,
                                labels=labels, classes=classes)  # fmt: skip
        supervisor.start()
        switcher = SourceSwitcher(supervisor, args, endpoints) if "source" in args.stages else None
        models = ModelSwitcher(supervisor, args, endpoints) if "worker" in args.stages else None
        return int(run_gui(args, endpoints, supervisor, switcher, curve=predictions_curve,
                           events_curve=events_curve, model_control=models) or 0)  # fmt: skip
    except (KeyboardInterrupt, _Stop):
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        supervisor.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous_term)
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _supervise_only(supervisor: Supervisor, duration_s: float | None) -> int:
    """Run the local stages (no consumer here) until they end, one dies, or the duration is over."""
    supervisor.start()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while True:
        for stage_exit in supervisor.poll():  # before running(): a failure is never mistaken for an end
            if stage_exit.returncode != 0:
                supervisor.log(f"launch: stage {stage_exit.name} exited with code {stage_exit.returncode}")
                return 1
        if not supervisor.running() or (deadline is not None and time.monotonic() >= deadline):
            return 0
        time.sleep(SUPERVISE_POLL_S)  # poll interval (restarts are due at given times), not synchronisation


# --- the command-line tool --------------------------------------------------------------------------


def commands() -> dict[str, Command]:
    """Every subcommand of ``spikeformer-live``: ``run`` and those of ``python -m stream``,
    ``python -m training`` and ``python -m inference`` (one parser each, shared)."""
    import inference.__main__
    import stream.__main__
    import training.__main__

    return {
        "run": Command("launch:main", "the live pipeline: source -> model -> GUI or headless report"),
        **stream.__main__.COMMANDS,
        **training.__main__.COMMANDS,
        **inference.__main__.COMMANDS,
    }


def version() -> str:
    """The installed package's version (or ``unknown`` in a checkout that was never installed)."""
    from importlib import metadata

    try:
        return metadata.version("spikeformer-live")
    except metadata.PackageNotFoundError:
        return "unknown"


def cli(argv: Sequence[str] | None = None) -> int:
    """``spikeformer-live COMMAND ...`` (the console script): ``--version``, ``--help``, or a command."""
    return dispatch(commands(), argv, "spikeformer-live", version=version())


if __name__ == "__main__":
    sys.exit(main())
