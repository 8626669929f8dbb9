"""What the test modules share, in one place: synthetic events, the one tiny model, and stage
processes (started, read and stopped the same way everywhere).

Test modules import from here (``from helpers import ...``: pytest's default "prepend" import mode
puts ``tests/``, which has no ``__init__.py``, on ``sys.path``) and never from one another. Waits are on real signals (a line
on a pipe, a message, a condition polled against a deadline), never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from stream.classes import GESTURE_CLASSES
from stream.events import SensorSize, make_events
from training.checkpoint import save_checkpoint
from training.spikeformer import SpikeformerConfig, build_model

REPO = Path(__file__).resolve().parents[1]
TEST_BACKEND = "onnxruntime"  # the CPU backend ``auto`` picks without a GPU


# --- synthetic events -------------------------------------------------------------------------------


def random_events(
    sensor: SensorSize | tuple[int, int], start_us: int = 0, end_us: int = 1_000_000, *, count: int | None = None,
    rate_hz: float | None = None, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """Uniformly random events in ``[start_us, end_us)`` on ``sensor`` (width, height), time-ordered
    (ties allowed), both polarities: ``count`` of them, or as many as ``rate_hz`` events per second
    give. The same arguments give the same events."""
    if (count is None) == (rate_hz is None):
        raise ValueError("give count or rate_hz")
    if count is None:
        count = int((end_us - start_us) * 1e-6 * rate_hz)
    width, height = sensor
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(start_us, end_us, count))
    return make_events(t, rng.integers(0, width, count), rng.integers(0, height, count), rng.integers(0, 2, count))


def regular_events(sensor: SensorSize | tuple[int, int], count: int, start_us: int = 1_000_000,
                   duration_us: int = 500_000) -> np.ndarray:  # fmt: skip
    """``count`` events evenly spread from ``start_us`` to ``start_us + duration_us`` (both ends
    included), event ``i`` at pixel ``(i % width, i % height)`` with polarity ``i % 2``."""
    width, height = sensor
    t = start_us + np.linspace(0, duration_us, count).astype(np.int64)
    index = np.arange(count)
    return make_events(t, index % width, index % height, index % 2)


# --- the one tiny model -------------------------------------------------------------------------------


TINY_WINDOW = {"bins": 4, "bin_us": 25_000, "stride_us": 50_000}  # 100 ms windows, a prediction every 50 ms
# The tiny Spikeformer of the tests: 11 classes, 16x16 input, 4 time steps, one block (fast on one core).
TINY_CONFIG = SpikeformerConfig(
    name="tiny", input_size=(16, 16), time_steps=TINY_WINDOW["bins"], tokenizer_channels=(8, 16), tokenizer_strides=(2, 2),
    kernel_size=3, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2, num_classes=len(GESTURE_CLASSES), drop_path_rate=0.0,
)  # fmt: skip


def checkpoint_metadata(config: SpikeformerConfig) -> dict:
    """Valid checkpoint metadata for ``config`` (a ``SpikeformerConfig``): the gesture classes when it
    has 11, else ``class_0``...; ``TINY_WINDOW`` with the config's time steps; an area mapping to its
    input size; clip normalisation."""
    height, width = config.input_size
    classes = list(GESTURE_CLASSES) if config.num_classes == len(GESTURE_CLASSES) else [
        f"class_{i}" for i in range(config.num_classes)]  # fmt: skip
    return {
        "classes": classes,
        "input": {
            "window": {**TINY_WINDOW, "bins": config.time_steps},
            "sensor_mapping": {"input_width": width, "input_height": height, "method": "area",
                               "flip_x": False, "flip_y": False},  # fmt: skip
            "normalisation": {"kind": "clip", "max": 8},
        },
    }


def make_checkpoint(directory: Path, config: SpikeformerConfig | str = TINY_CONFIG, seed: int = 0) -> Path:
    """A randomly initialised Spikeformer (default: ``TINY_CONFIG``; a preset name works too) saved
    as a checkpoint under ``directory``; the JSON path. BN running statistics are randomised too,
    so an export's BN folding is exercised. Its predictions are noise."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 2.0)
    return save_checkpoint(directory / model.config.name, model, checkpoint_metadata(model.config))


def edited_checkpoint_copy(checkpoint: Path, path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of ``checkpoint`` at ``path`` (a ``.json`` path) with the same weights file and its JSON
    document changed in place by ``edit``; the JSON path."""
    document = json.loads(checkpoint.read_text())
    edit(document)
    shutil.copy(checkpoint.with_name(document["weights"]["file"]), path.with_name(document["weights"]["file"]))
    path.write_text(json.dumps(document))
    return path


class StandInSNN(nn.Module):
    """A small spiking classifier written for dynamic-batch export (reshapes use -1, the first PLIF
    step is written out). It has the ops whose FP16 handling matters: Conv, LayerNorm, Softmax.

    ``[B, T, 2, H, W]`` -> logits ``[B, classes]``.
    """

    def __init__(self, time_steps: int = 4, size: int = 16, channels: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.input_shape = (time_steps, 2, size, size)
        self.conv = nn.Conv2d(2, channels, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.w = nn.Parameter(torch.tensor(0.3))
        self.norm = nn.LayerNorm(channels)
        self.pool = nn.Linear(channels, 1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        current = self.bn(self.conv(x.flatten(0, 1))).unflatten(0, (-1, steps))  # [B, T, C, h, w]
        k = torch.sigmoid(self.w)
        spikes, v = [], None
        for t in range(steps):
            v = current[:, t] * k if v is None else v + (current[:, t] - v) * k
            spike = (v >= 1.0).to(v.dtype)
            v = v * (1.0 - spike)
            spikes.append(spike + 0.1 * v)  # keep some analogue signal so logits vary smoothly
        tokens = torch.stack(spikes, 1).flatten(3).transpose(2, 3).flatten(1, 2)  # [B, T*h*w, C]
        tokens = self.norm(tokens)
        weights = self.pool(tokens).softmax(dim=1)
        return self.fc((weights * tokens).sum(dim=1))


class FixedBatchSNN(StandInSNN):
    """Like :class:`StandInSNN` but with the batch size read into a Python int, which the
    TorchScript exporter freezes at the example's batch: exports fine, fails at other batch sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = int(x.shape[0])
        return super().forward(x).reshape(batch, -1)


# --- waiting on real signals -------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 10.0, poll_s: float = 0.001) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout_s``. For objects
    that offer no signal to wait on (a C++ client count, a child's /proc entry)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        threading.Event().wait(poll_s)


def drain(subscriber, quiet_ms: int = 300) -> list:
    """Every message ``subscriber`` gets until none comes for ``quiet_ms``: a message published just
    before may still be in ZeroMQ's pipes, so one non-blocking pass could miss it."""
    messages = []
    while (message := subscriber.recv(quiet_ms)) is not None:
        messages.append(message)
    return messages


def receive_until(subscriber, condition: Callable[[object], bool], timeout_s: float, what: str = "a message") -> list:
    """Messages ``subscriber`` gets, up to and including the first for which ``condition(message)``
    holds; fails after ``timeout_s``."""
    messages = []
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        message = subscriber.recv(max(1, round(remaining * 1000)))
        if message is None:
            continue
        messages.append(message)
        if condition(message):
            return messages
    raise AssertionError(f"no {what} within {timeout_s:g} s ({len(messages)} other messages)")


WORKER_TOPICS = ("prediction", "status", "truth")  # what a consumer of the worker's endpoint subscribes to


def predictions_of(messages: list) -> list[dict]:
    """The prediction messages' data, in order."""
    from stream.transport.wire import Kind

    return [message.data for message in messages if message.kind == Kind.PREDICTION]


def is_status(message, status_type: str) -> bool:
    """Whether ``message`` is a ``Kind.STATUS`` message of ``status_type`` ("clock", "stats", "end")."""
    from stream.transport.wire import Kind

    return message.kind == Kind.STATUS and message.data.type == status_type


# --- processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stage_environment(cache_dir: Path) -> dict:
    """Environment for stage processes: ONNX/engine caches in ``cache_dir``, the repository importable."""
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(cache_dir)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_stage(module: str, args: list, env: dict | None = None, **popen) -> subprocess.Popen:
    """``python -m module args...`` in the repository (stderr to /dev/null unless ``popen`` says)."""
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, **popen)


def start_worker(sub: str, pub: str, checkpoint: Path, env: dict, *extra, wait_subscribers: int = 1,
                 backend: str = TEST_BACKEND, **popen) -> subprocess.Popen:  # fmt: skip
    """The inference worker stage on ``checkpoint``: subscribes to ``sub``, publishes on ``pub``."""
    args = ["--sub", sub, "--pub", pub, "--checkpoint", checkpoint, "--backend", backend,
            "--wait-subscribers", wait_subscribers, *extra]  # fmt: skip
    return start_stage("inference.worker_stage", args, env, **popen)


def start_source(spec: str, pub: str, env: dict | None = None, *extra, wait_subscribers: int = 1,
                 **popen) -> subprocess.Popen:  # fmt: skip
    """The source stage on ``spec`` publishing on ``pub`` (quiet: no progress lines)."""
    args = ["--source", spec, "--pub", pub, "--wait-subscribers", wait_subscribers, "--quiet", *extra]
    return start_stage("stream.source_stage", args, env, **popen)


def stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGTERM ``process`` if it still runs, SIGKILL after ``timeout_s``; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    code = process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return code


def run_module(module: str, *args, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """``python -m module args...`` (a command-line tool: ``stream``, ``training``, ...) run to its end
    in the repository, output captured as text."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout_s)  # fmt: skip


def launch_command(*args, backend: str = TEST_BACKEND) -> list[str]:
    """``python launch.py --headless --backend BACKEND args...``."""
    return [sys.executable, "launch.py", "--headless", "--backend", backend, *map(str, args)]


def run_launch(env: dict, *args, timeout_s: float = 150) -> subprocess.CompletedProcess:
    """launch.py headless and quiet, run to its end."""
    return subprocess.run(launch_command("--quiet", *args), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout_s)  # fmt: skip


def start_launch(env: dict, *args) -> subprocess.Popen:
    """launch.py headless (with its progress lines), stdout and stderr merged into one text pipe."""
    return subprocess.Popen(launch_command(*args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def line_reader(stream) -> queue.Queue:
    """Lines of a pipe, read in a thread, so a test can wait on them with a timeout; None at its end."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue, text: str, timeout_s: float, seen: list[str] | None = None) -> str:
    """The first line containing ``text``; every line read (that one included) is added to ``seen``."""
    deadline = time.monotonic() + timeout_s
    seen = [] if seen is None else seen
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} not seen within {timeout_s} s; got:\n{''.join(seen)[-3000:]}")


def rest_of(lines: queue.Queue, timeout_s: float = 10.0) -> list[str]:
    """The remaining lines, up to the end of the pipe."""
    rest = []
    while (line := lines.get(timeout=timeout_s)) is not None:
        rest.append(line)
    return rest


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def stage_pid(launcher_pid: int, module: str) -> int:
    """The child of launch.py running ``python -m module``."""
    return next(pid for pid in children_of(launcher_pid) if module in Path(f"/proc/{pid}/cmdline").read_text())


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    state = stat.read_text().rsplit(")", 1)[1].split()[0] if stat.exists() else "X"
    return state not in ("Z", "X")


# --- a DV network server in its own process ----------------------------------------------------------

DV_SERVER = """
import sys, time
import dv_processing as dv
port, start, width, height, x_step, y_step, step_us, alternate = map(int, sys.argv[1:9])
writer = dv.io.NetworkWriter("127.0.0.1", port, dv.io.Stream.EventStream(0, "events", sys.argv[9], (width, height)))
print("ready", flush=True)
t = start
while True:
    if writer.getClientCount():
        store = dv.EventStore()
        for i in range(10):
            store.push_back(t, x_step * i, y_step * i, i % 2 == 0 if alternate else True)
            t += step_us
        writer.writeEvents(store)
    time.sleep(0.005)
"""


def start_dv_server(port: int, start_us: int, *, sensor: tuple[int, int] = (64, 48), x_step: int = 1, y_step: int = 1,
                    step_us: int = 100, alternate: bool = False, camera: str = "Server_1") -> subprocess.Popen:  # fmt: skip
    """A dv-processing NetworkWriter in its own process, so that it can really disappear (killed; this
    also avoids dv-processing 2.0.4's destructor deadlock with a connected client): 10 events every
    5 ms at ``(x_step * i, y_step * i)``, ``step_us`` apart, polarity ON or alternating."""
    args = [port, start_us, *sensor, x_step, y_step, step_us, int(alternate)]
    process = subprocess.Popen([sys.executable, "-c", DV_SERVER, *map(str, args), camera], stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    return process


def kill(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGKILL (no goodbye) and reap ``process``."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout_s)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


# --- a simulator whose renderer lags ---------------------------------------------------------------


class SlowQueue:
    """The simulator renderer's queue with every hand-over delayed: it renders slower than real
    time, as on a loaded machine."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        threading.Event().wait(self.delay_s)  # the fault being simulated: rendering takes this long
        self.inner.put(item, block, timeout)


def lagging_simulator(**options):
    """A real ``SimulatorSource`` whose renderer hands over each 100 ms piece 160 ms late (0.6x real time)."""
    from stream.sources.simulated import SimulatorSource

    class LaggingSimulator(SimulatorSource):
        def _produce(self, pieces) -> None:
            super()._produce(SlowQueue(pieces, 0.16))

    return LaggingSimulator(**options)
