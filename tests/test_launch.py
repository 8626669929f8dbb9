"""launch.py: process supervision, Ctrl-C, stage death, missing display. Real child processes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launch import STOP_TIMEOUT_S, Stage, Supervisor
from test_pipeline import REPO, TEST_BACKEND, make_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    environment = dict(os.environ)
    environment["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    return environment


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


def wait_ignoring_sigterm(pid: int, timeout_s: float) -> bool:
    """Wait until process ``pid`` ignores SIGTERM (its SigIgn mask in /proc says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
        if mask & (1 << (signal.SIGTERM - 1)):
            return True
        time.sleep(0.01)  # polling /proc: there is no notification for a signal disposition
    return False


def line_reader(stream) -> queue.Queue:
    """Lines of a pipe, read in a thread, so a test can wait on them with a timeout."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    seen = []
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


def start_launch(checkpoint: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "launch.py", "--headless", "--source", "sim", "--backend", TEST_BACKEND,
         "--checkpoint", str(checkpoint), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_sigint_stops_every_stage_quickly(checkpoint, env):
    launcher = start_launch(checkpoint, env)
    try:
        lines = line_reader(launcher.stdout)
        wait_for_line(lines, "windows (", timeout_s=120)  # predictions flow: every stage is up
        stages = children_of(launcher.pid)
        assert len(stages) == 2
        started = time.monotonic()
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=2.0 + 1.5)  # 2 s budget + margin for this shared machine
        elapsed = time.monotonic() - started
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 130
    assert elapsed < 2.0 + 1.5
    assert not [pid for pid in stages if alive(pid)], "a stage outlived launch.py"


def test_a_dying_stage_is_reported_and_stops_the_pipeline(checkpoint, env):
    launcher = start_launch(checkpoint, env)
    try:
        lines = line_reader(launcher.stdout)
        wait_for_line(lines, "windows (", timeout_s=120)
        stages = children_of(launcher.pid)
        worker = next(pid for pid in stages if "inference.worker" in Path(f"/proc/{pid}/cmdline").read_text())
        os.kill(worker, signal.SIGKILL)
        wait_for_line(lines, f"stage worker exited with code {-signal.SIGKILL}", timeout_s=10)
        assert launcher.wait(timeout=10) == 1
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert not [pid for pid in stages if alive(pid)]


def test_gui_without_a_display_says_so_in_one_line(env):
    environment = {k: v for k, v in env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "launch.py", "--source", "sim"], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--headless" in result.stderr and "Traceback" not in result.stderr


def test_bad_arguments_fail_with_one_line(env, tmp_path):
    result = subprocess.run([sys.executable, "launch.py", "--headless", "--checkpoint", str(tmp_path / "none.json")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_supervisor_kills_a_stage_that_ignores_sigterm():
    stubborn = Stage("stubborn", "timeit", ["-n", "1", "-s", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)",
                                            "import time; time.sleep(60)"])  # fmt: skip
    polite = Stage("polite", "timeit", ["-n", "1", "import time; time.sleep(60)"])
    messages = []
    supervisor = Supervisor([stubborn, polite], log=messages.append)
    with supervisor:
        assert sorted(supervisor.running()) == ["polite", "stubborn"]
        assert supervisor.poll() == []
        assert wait_ignoring_sigterm(stubborn.process.pid, timeout_s=30)
        started = time.monotonic()
    assert time.monotonic() - started < STOP_TIMEOUT_S + 1.0
    assert supervisor.running() == []
    assert any("stubborn did not stop" in message for message in messages)
    assert stubborn.process.returncode == -signal.SIGKILL and polite.process.returncode == -signal.SIGTERM


def test_supervisor_reports_an_exit_once_and_can_restart():
    stage = Stage("short", "timeit", ["-n", "1", "pass"])
    supervisor = Supervisor([stage])
    with supervisor:
        assert stage.process.wait(timeout=30) == 0
        assert [tuple(e) for e in supervisor.poll()] == [("short", 0)]
        assert supervisor.poll() == []
        supervisor.restart("short")
        assert stage.starts == 2 and stage.process.wait(timeout=30) == 0
    with pytest.raises(ValueError, match="unique"):
        Supervisor([Stage("a", "x", []), Stage("a", "y", [])])
