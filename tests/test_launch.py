"""launch.py: process supervision, Ctrl-C, stage death (restart or stop), missing display. Real child processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO,
    TEST_BACKEND,
    alive,
    children_of,
    launch_command,
    line_reader,
    rest_of,
    run_launch,
    stage_pid,
    start_launch,
    stop_process,
    wait_for_line,
    wait_until,
)

from launch import STOP_TIMEOUT_S, RestartPolicy, Stage, Supervisor


def ignores_sigterm(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGTERM (its SigIgn mask in /proc says so)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def test_sigint_stops_every_stage_quickly(tiny_checkpoint, stage_env):
    launcher = start_launch(stage_env, "--source", "sim", "--checkpoint", tiny_checkpoint)
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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint-to-the-group", "sigterm"])
def test_a_signal_ends_the_headless_run_with_the_summary_and_the_report(tiny_checkpoint, stage_env, tmp_path, signum):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) or SIGTERM: exit code 130, the
    summary printed, the report (``"ended": "interrupted"``) and the predictions written with what
    was measured up to then."""
    report_path, rows_path = tmp_path / "report.json", tmp_path / "rows.jsonl"
    launcher = subprocess.Popen(launch_command("--source", "sim", "--checkpoint", tiny_checkpoint, "--report", report_path,
                                               "--predictions-out", rows_path),
                                cwd=REPO, env=stage_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own process group, as a shell gives a job  # fmt: skip
    try:
        lines = line_reader(launcher.stdout)
        seen = [wait_for_line(lines, "windows (", timeout_s=120)]  # predictions flow
        wait_for_line(lines, "windows (", timeout_s=30, seen=seen)  # a second progress line: more than a few windows
        if signum == signal.SIGINT:
            os.killpg(launcher.pid, signal.SIGINT)
        else:
            launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=10) == 130
        output = "".join(seen + rest_of(lines))
    finally:
        stop_process(launcher)
    report = json.loads(report_path.read_text())
    assert report["ended"] == "interrupted" and report["failures"] == []
    assert report["windows"] > 0 and report["latency_ms"]["count"] > 0
    assert report["environment"]["version"] and (report["environment"]["commit"] or not (REPO / ".git").exists())
    assert "| compute latency p50/p90/p99/max (ms) |" in output and "| ended | interrupted |" in output
    assert f"report written to {report_path}" in output and "Traceback" not in output
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert len(rows) == report["latency_ms"]["count"]  # one row per prediction received
    assert [row["end_us"] for row in rows] == sorted(row["end_us"] for row in rows)


WINDOWS_LINE = re.compile(r"^(\d+) windows \(")


def windows_seen(line: str) -> int:
    """Predictions received so far, from a progress line of the headless recorder."""
    match = WINDOWS_LINE.match(line)
    return int(match.group(1)) if match else -1


@pytest.mark.slow
@pytest.mark.parametrize("stage, module", [("worker", "inference.worker_stage"), ("source", "stream.source_stage")])
def test_a_killed_stage_is_restarted_and_predictions_resume(tiny_checkpoint, stage_env, tmp_path, stage, module):
    report_path = tmp_path / "report.json"
    launcher = start_launch(stage_env, "--source", "sim", "--checkpoint", tiny_checkpoint, "--duration", "12",
                            "--report", report_path)  # fmt: skip
    try:
        lines = line_reader(launcher.stdout)
        seen = [wait_for_line(lines, "windows (", timeout_s=120)]
        killed = stage_pid(launcher.pid, module)
        os.kill(killed, signal.SIGKILL)
        wait_for_line(lines, f"stage {stage} exited with code {-signal.SIGKILL}; restarting it in 0.5 s", 10, seen)
        wait_for_line(lines, f"stage {stage} restarted", 10, seen)
        before = max(windows_seen(line) for line in seen)  # predictions received up to the restart
        restarted = stage_pid(launcher.pid, module)
        deadline = time.monotonic() + 60
        while windows_seen(wait_for_line(lines, "windows (", timeout_s=60)) < before + 20:  # 1 s of new windows
            assert time.monotonic() < deadline, "predictions did not resume after the restart"
        assert launcher.wait(timeout=60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert restarted != killed and not alive(restarted)
    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    assert report["counters"]["windows"] >= 20  # counted by the worker running at the end


def test_on_failure_stop_ends_the_pipeline_within_2_s(tiny_checkpoint, stage_env):
    launcher = start_launch(stage_env, "--source", "sim", "--checkpoint", tiny_checkpoint, "--on-failure", "stop")
    try:
        lines = line_reader(launcher.stdout)
        wait_for_line(lines, "windows (", timeout_s=120)
        stages = children_of(launcher.pid)
        os.kill(stage_pid(launcher.pid, "inference.worker_stage"), signal.SIGKILL)
        killed = time.monotonic()
        assert launcher.wait(timeout=10) == 1
        elapsed = time.monotonic() - killed
        rest = rest_of(lines)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert elapsed < 2.0
    assert f"launch: stage worker exited with code {-signal.SIGKILL}\n" in rest
    assert not any("restarting it" in line or "Traceback" in line for line in rest), "".join(rest)
    assert not [pid for pid in stages if alive(pid)]


def test_gui_without_a_display_says_so_in_one_line(stage_env):
    environment = {k: v for k, v in stage_env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "launch.py", "--source", "sim"], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--headless" in result.stderr and "Traceback" not in result.stderr


def test_bad_arguments_fail_with_one_line(stage_env, tmp_path):
    result = subprocess.run([sys.executable, "launch.py", "--headless", "--checkpoint", str(tmp_path / "none.json")],
                            cwd=REPO, env=stage_env, capture_output=True, text=True, timeout=60)  # fmt: skip
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
        wait_until(lambda: ignores_sigterm(stubborn.process.pid), "the stage to ignore SIGTERM", timeout_s=30, poll_s=0.01)
        started = time.monotonic()
    assert time.monotonic() - started < STOP_TIMEOUT_S + 1.0
    assert supervisor.running() == []
    assert any("stubborn did not stop" in message for message in messages)
    assert stubborn.process.returncode == -signal.SIGKILL and polite.process.returncode == -signal.SIGTERM


def test_the_source_stage_runs_below_the_workers_priority(tmp_path):
    """``SOURCE_NICE``: the launcher starts the source stage that many nice levels below itself and
    the worker (here with stand-in commands: what is measured is the priority, not the stage)."""
    from launch import SOURCE_NICE, Endpoints, build_parser, source_stage, worker_stage

    args = build_parser().parse_args(["--headless"])
    endpoints = Endpoints(f"ipc://{tmp_path}/ev", f"ipc://{tmp_path}/pr")
    assert source_stage(args, endpoints, 1).nice == SOURCE_NICE > 0 and worker_stage(args, endpoints, 1).nice == 0
    sleeping = ["-n", "1", "import time; time.sleep(60)"]
    source, worker = Stage("source", "timeit", sleeping, nice=SOURCE_NICE), Stage("worker", "timeit", sleeping)
    with Supervisor([source, worker], log=lambda m: None):
        nice_of = {stage.name: os.getpriority(os.PRIO_PROCESS, stage.process.pid) for stage in (source, worker)}
    assert nice_of == {"source": min(19, os.nice(0) + SOURCE_NICE), "worker": os.nice(0)}


def test_supervisor_reports_an_exit_once_and_can_restart():
    stage = Stage("short", "timeit", ["-n", "1", "pass"])
    supervisor = Supervisor([stage])
    with supervisor:
        assert stage.process.wait(timeout=30) == 0
        assert [tuple(e) for e in supervisor.poll()] == [("short", 0)]
        assert supervisor.poll() == []
        supervisor.restart("short")
        assert stage.starts == 2 and stage.process.wait(timeout=30) == 0


def test_supervisor_refuses_two_stages_of_one_name():
    with pytest.raises(ValueError, match="unique"):
        Supervisor([Stage("a", "x", []), Stage("a", "y", [])])


def wait_for_exit(supervisor: Supervisor, timeout_s: float) -> list:
    """Poll the supervisor (as a consumer loop does) until it reports an exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exits = supervisor.poll()
        if exits:
            return exits
        time.sleep(0.01)  # the consumer loop's poll interval; restarts are due at given times
    raise AssertionError(f"no exit reported within {timeout_s} s")


def test_restart_policy_backs_off_then_gives_up():
    failing = Stage("failing", "timeit", ["-n", "1", "raise SystemExit(3)"])  # timeit: exit code 1
    messages = []
    policy = RestartPolicy(first_backoff_s=0.05, max_backoff_s=0.2, max_restarts=4, window_s=60)
    with Supervisor([failing], log=messages.append, policy=policy) as supervisor:
        started = time.monotonic()
        assert [tuple(e) for e in wait_for_exit(supervisor, timeout_s=60)] == [("failing", 1)]
        elapsed = time.monotonic() - started
        assert supervisor.running() == []
    assert failing.starts == 5 and supervisor.restart_counts() == {"failing": 4}
    waits = [float(m.rsplit(" in ", 1)[1].split()[0]) for m in messages if "restarting it in" in m]
    assert waits == [0.05, 0.1, 0.2, 0.2]
    assert elapsed >= sum(waits)
    assert messages[-1] == "launch: stage failing exited with code 1 after 4 restarts (limit: 4 within 60 s); giving up"


def test_restart_policy_gives_up_after_failures_in_a_row_even_when_they_are_slow():
    failing = Stage("failing", "timeit", ["-n", "1", "raise SystemExit(3)"])
    messages = []
    policy = RestartPolicy(first_backoff_s=0.05, max_backoff_s=0.05, max_restarts=2, window_s=0.01)  # never 2 per window
    with Supervisor([failing], log=messages.append, policy=policy) as supervisor:
        wait_for_exit(supervisor, timeout_s=60)
    assert failing.restarts == 2
    assert messages[-1] == "launch: stage failing exited with code 1 after 2 restarts (limit: 2 in a row); giving up"


def test_restart_policy_never_restarts_a_stage_that_stopped_with_its_own_error(tmp_path):
    """Exit code 2 (``stream.stage.EXIT_ERROR``: a missing file, a bad checkpoint, no camera at
    start) is final at once: a restart would fail the same way."""
    broken = Stage("source", "json.tool", [str(tmp_path / "missing.json")])  # one error line, exit code 2
    messages = []
    with Supervisor([broken], log=messages.append, policy=RestartPolicy(first_backoff_s=0.05)) as supervisor:
        assert [tuple(e) for e in wait_for_exit(supervisor, timeout_s=60)] == [("source", 2)]
        assert supervisor.running() == []
    assert broken.starts == 1 and broken.restarts == 0
    assert messages == ["launch: stage source stopped with an error (exit code 2, its line above); "
                        "not restarting it: it would fail the same way"]  # fmt: skip


def test_a_missing_file_fails_before_any_stage_starts(stage_env, tmp_path, tiny_checkpoint):
    """``check_inputs``: the source spec and its file are checked first: one error line, exit code 2,
    no stage started (no model loaded), no report."""
    gone = tmp_path / "gone.aedat4"
    started = time.monotonic()
    result = run_launch(stage_env, "--source", f"file:{gone}", "--checkpoint", tiny_checkpoint, "--duration", "30",
                        "--report", tmp_path / "r.json", timeout_s=60)  # fmt: skip
    assert result.returncode == 2 and time.monotonic() - started < 30
    assert result.stderr.strip().splitlines() == [f"error: {gone}: no such file"]
    assert not (tmp_path / "r.json").exists()


def test_a_stage_that_stops_with_its_own_error_is_not_restarted_and_its_reason_is_reported(stage_env, tmp_path,
                                                                                           tiny_checkpoint):  # fmt: skip
    """A checkpoint whose JSON is valid (``check_inputs`` passes) but whose weights are damaged: the
    worker stops with its own error line (exit code 2) when it loads them; the launcher does not
    restart it, stops the pipeline at once (not after the 30 s of --duration) and keeps the reason."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    json_path = damaged / tiny_checkpoint.name
    json_path.write_bytes(tiny_checkpoint.read_bytes())
    weights = tiny_checkpoint.with_suffix(".safetensors").read_bytes()
    (damaged / tiny_checkpoint.with_suffix(".safetensors").name).write_bytes(weights[: len(weights) // 2])
    started = time.monotonic()
    command = launch_command("--source", "sim", "--checkpoint", json_path, "--duration", "30", "--report",
                             tmp_path / "r.json", backend="torch")  # torch loads the weights: no cached export  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=stage_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and time.monotonic() - started < 60, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(json_path.with_suffix(".safetensors")) in errors[0], result.stderr  # started once
    assert "not restarting it" in result.stderr and "restarting it in" not in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["failures"] == [f"stage worker exited with code 2: {errors[0][len('error: '):]}"]  # the reason, kept


def test_supervisor_passes_stage_stderr_through_and_keeps_the_error_line(tmp_path, capfd):
    stage = Stage("source", "stream.source_stage", ["--source", f"file:{tmp_path / 'none.aedat4'}",
                                                "--pub", f"ipc://{tmp_path}/events"])  # fmt: skip
    with Supervisor([stage], log=lambda m: None) as supervisor:
        assert [tuple(e) for e in wait_for_exit(supervisor, timeout_s=60)] == [("source", 2)]
    assert stage.last_error == f"{tmp_path / 'none.aedat4'}: no such file"
    assert f"error: {tmp_path / 'none.aedat4'}: no such file\n" in capfd.readouterr().err  # still on our stderr


def test_headless_replays_a_cut_recording_with_allow_truncated(stage_env, tmp_path, tiny_checkpoint):
    """A recorder that died mid-packet: refused with the hint, then replayed up to the cut."""
    from stream.events import SensorSize, make_events
    from stream.formats import open_events
    from stream.formats.aedat4 import Aedat4Writer

    count = 200_000
    index = np.arange(count)
    events = make_events(index * 10, index % 128, (index // 128) % 128, index % 2)  # 2 s
    path = tmp_path / "cut.aedat4"
    with Aedat4Writer(path, SensorSize(128, 128)) as writer:
        for begin in range(0, count, 20_000):
            writer.write(events[begin : begin + 20_000])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    command = [sys.executable, "launch.py", "--headless", "--source", f"file:{path}", "--speed", "max",
               "--checkpoint", str(tiny_checkpoint), "--backend", TEST_BACKEND, "--report", str(tmp_path / "r.json")]
    refused = subprocess.run(command, cwd=REPO, env=stage_env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "--allow-truncated reads the events before it" in refused.stderr
    replayed = subprocess.run([*command, "--allow-truncated"], cwd=REPO, env=stage_env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    with open_events(path, allow_truncated=True) as reader:
        complete = sum(len(chunk) for chunk in reader)  # the events of the packets before the cut
    assert report["ended"] == "end of stream" and 0 < report["events_in"] == complete < count
    assert report["events_lost"] == 0 and "is damaged or cut" in replayed.stderr


def test_a_backend_that_cannot_run_here_is_one_error_line_not_a_restart_loop(stage_env, tiny_checkpoint):
    """``--backend tensorrt`` without TensorRT (or ``--device cuda`` without a GPU): the worker says
    so in one line and exits 2; the launcher does not restart it (it once printed a traceback per restart)."""
    from inference.backends import detect_capabilities

    if detect_capabilities().tensorrt:
        pytest.skip("TensorRT runs here")
    result = subprocess.run([sys.executable, "launch.py", "--headless", "--source", "sim", "--backend", "tensorrt",
                             "--checkpoint", str(tiny_checkpoint), "--duration", "20"],
                            cwd=REPO, env=stage_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("error: ") == 1 and ("TensorRT" in result.stderr or "GPU" in result.stderr)
    assert "not restarting it" in result.stderr and "restarting it in" not in result.stderr


def test_stage_exit_codes_tell_a_lost_source_from_an_error():
    """``exit_stage``: SourceLost exits with EXIT_SOURCE_LOST (restarted by the launcher), other
    expected failures with EXIT_ERROR (not restarted), each as one error line."""
    from stream.stage import EXIT_ERROR, EXIT_SOURCE_LOST

    assert EXIT_SOURCE_LOST not in RestartPolicy().final_codes and EXIT_ERROR in RestartPolicy().final_codes
    for error, code in (("SourceLost('camera X was lost and did not come back')", EXIT_SOURCE_LOST),
                        ("ValueError('bad file')", EXIT_ERROR), ("FileNotFoundError('no such file')", EXIT_ERROR)):
        script = f"from stream.sources.base import SourceLost\nfrom stream.stage import exit_stage\ndef main(argv):\n    raise {error}\nexit_stage(main)"
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_a_stop_signal_never_deadlocks_a_stage_holding_the_lock_its_callback_needs():
    """The stop callback (``source.stop``) sets an event that the stage's main thread clears in its
    pacing loop. A handler that set it itself could run while the main thread held the event's
    lock and hang forever (about 1 stop in 4 with this loop). 20 stages, each stopped once."""
    script = ("import threading\nfrom stream.stage import StopRequest\nwake = threading.Event()\n"
              "stop = StopRequest().install()\nstop.callbacks.append(wake.set)\nprint('ready', flush=True)\n"
              "while not stop.event.is_set():\n    wake.clear()\n")  # fmt: skip
    stages = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
              for _ in range(20)]  # fmt: skip
    try:
        for stage in stages:
            assert stage.stdout.readline() == "ready\n"
        time.sleep(0.2)
        for stage in stages:
            stage.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        codes = [stage.wait(max(0.1, deadline - time.monotonic())) for stage in stages]
        assert codes == [0] * len(stages)
    finally:
        for stage in stages:
            stage.kill()
            stage.wait()


def test_restart_policy_never_restarts_a_stage_that_ended():
    ending = Stage("ending", "timeit", ["-n", "1", "pass"])
    with Supervisor([ending], log=lambda m: None, policy=RestartPolicy(first_backoff_s=0.05)) as supervisor:
        assert [tuple(e) for e in wait_for_exit(supervisor, timeout_s=60)] == [("ending", 0)]
        assert supervisor.running() == [] and ending.starts == 1


def test_restart_policy_backoff_starts_again_after_a_stable_run():
    failing = Stage("failing", "timeit", ["-n", "1", "raise SystemExit(3)"])
    messages = []
    policy = RestartPolicy(first_backoff_s=0.05, max_backoff_s=1.0, max_restarts=3, stable_after_s=0.0)
    with Supervisor([failing], log=messages.append, policy=policy) as supervisor:
        wait_for_exit(supervisor, timeout_s=60)
    waits = [m for m in messages if "restarting it in 0.05 s" in m]
    assert len(waits) == 3  # every run counted as stable: the backoff never grew


def test_restart_policy_refuses_a_zero_backoff():
    with pytest.raises(ValueError, match="first_backoff_s"):
        RestartPolicy(first_backoff_s=0)


def test_a_manual_restart_cancels_a_pending_one_and_stop_clears_them():
    failing = Stage("failing", "timeit", ["-n", "1", "raise SystemExit(3)"])
    messages = []
    with Supervisor([failing], log=messages.append, policy=RestartPolicy(first_backoff_s=5.0)) as supervisor:
        failing.process.wait(timeout=30)
        assert supervisor.poll() == [] and supervisor.running() == ["failing"]  # restart pending
        supervisor.restart("failing")
        assert failing.starts == 2 and failing.restarts == 0
        failing.process.wait(timeout=30)
        assert supervisor.poll() == []  # pending again (second failure)
    assert supervisor.running() == []  # stop() dropped the pending restart
    assert supervisor.poll() == [] and failing.starts == 2


def test_curve_options_reach_every_stage_and_trust_the_right_publisher(tmp_path):
    """Machine B of the README (``--stages worker,consumer --curve-server A``): its worker and the
    consumer's events subscription trust A's key, the consumer's predictions subscription its own;
    with every stage here, everything trusts the launcher's own key. The stages' own parsers take
    the options the launcher gives them."""
    import shutil

    from inference.worker_stage import build_parser as worker_parser
    from launch import Endpoints, build_parser, consumer_curves, source_stage, worker_stage
    from stream.source_stage import build_parser as source_parser
    from stream.transport.keys import CurveConfig, curve_from_args, generate_keys

    generate_keys(tmp_path / "a", "a")
    generate_keys(tmp_path / "b", "b")
    shutil.copy(tmp_path / "a" / "a.key", tmp_path / "b" / "a.key")
    key_a = CurveConfig.from_directory(tmp_path / "a").public_key
    key_b = CurveConfig.from_directory(tmp_path / "b").public_key
    endpoints = Endpoints("tcp://10.0.0.1:5555", "tcp://0.0.0.0:5556")
    args = build_parser().parse_args(["--headless", "--stages", "worker,consumer", "--allow-remote", "--curve-keys",
                                      str(tmp_path / "b"), "--curve-server", "a"])  # fmt: skip
    worker = worker_stage(args, endpoints, wait_subscribers=1)
    assert worker.args[-5:] == ["--allow-remote", "--curve-keys", str(tmp_path / "b"), "--curve-server", "a"]
    worker_args = worker_parser().parse_args(worker.args)
    assert worker_args.allow_remote and curve_from_args(worker_args).server_key == key_a
    predictions, events = consumer_curves(args)
    assert (predictions.server_key, events.server_key) == (key_b, key_a)
    assert predictions.public_key == events.public_key == key_b

    args = build_parser().parse_args(["--headless", "--curve-keys", str(tmp_path / "b")])
    source = source_stage(args, endpoints, wait_subscribers=1)
    assert source.args[-2:] == ["--curve-keys", str(tmp_path / "b")] and "--allow-remote" not in source.args
    assert curve_from_args(source_parser().parse_args(source.args)).public_key == key_b
    assert "--curve-server" not in worker_stage(args, endpoints, wait_subscribers=1).args  # the source runs here
    assert [config.server_key for config in consumer_curves(args)] == [key_b, key_b]
    assert consumer_curves(build_parser().parse_args(["--headless"])) == (None, None)
    assert "--curve-keys" not in worker_stage(build_parser().parse_args([]), endpoints, 1).args


def test_curve_name_without_keys_fails_with_one_line(stage_env):
    result = subprocess.run([sys.executable, "launch.py", "--headless", "--curve-server", "a"], cwd=REPO, env=stage_env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --curve-name and --curve-server need --curve-keys DIR"]
