"""CurveZMQ through the real stages: source and worker processes on loopback tcp with keys made by
``python -m stream keys generate``, set up as the README's two machines (A: the camera, B: the
worker and the consumer); a recorder with B's keys gets predictions, one with an unknown key and
one in plaintext get nothing; a bad key directory is one error line and exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, free_port, run_launch, start_source, start_worker, stop_process

from inference.headless import record
from stream.transport.keys import CurveConfig
from stream.transport.sockets import Subscriber


@pytest.fixture(scope="module")
def keys(tmp_path_factory, stage_env) -> dict[str, Path]:
    """Key directories as the README sets them up: ``a`` (key ``a``, trusts ``b``), ``b`` (key
    ``b``, trusts ``a``), and ``stranger`` (key ``stranger``: knows both public keys, trusted by none)."""
    base = tmp_path_factory.mktemp("keys")
    for name in ("a", "b", "stranger"):
        result = subprocess.run([sys.executable, "-m", "stream", "keys", "generate", str(base / name), "--name", name],
                                cwd=REPO, env=stage_env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
    for name, peers in (("a", ("b",)), ("b", ("a",)), ("stranger", ("a", "b"))):
        for peer in peers:
            shutil.copy(base / peer / f"{peer}.key", base / name / f"{peer}.key")
    return {name: base / name for name in ("a", "b", "stranger")}


def test_only_a_recorder_with_the_keys_gets_predictions(tiny_checkpoint, stage_env, keys):
    events, predictions = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))  # loopback: no --allow-remote
    stages: list[subprocess.Popen] = []

    def start_stages() -> None:  # B's worker trusts A's source; A's source accepts B (b.key is in A's directory)
        stages.append(start_worker(events, predictions, tiny_checkpoint, stage_env, "--curve-keys", keys["b"],
                                   "--curve-server", "a", stderr=subprocess.PIPE, text=True))  # fmt: skip
        stages.append(start_source("sim", events, stage_env, "--speed", "2", "--sim-duration", "3", "--curve-keys",
                                   keys["a"], stderr=subprocess.PIPE, text=True))  # fmt: skip

    outsiders = {  # connected before the stages start: they have every chance to get in
        (endpoint, who): Subscriber(endpoint, topics, curve=config)
        for endpoint, topics, server in ((events, ("events", "truth", "status"), "a"),
                                         (predictions, ("prediction", "status", "truth"), "b"))
        for who, config in (("stranger", CurveConfig.from_directory(keys["stranger"], server=server)), ("plaintext", None))
    }  # fmt: skip
    try:
        recorder, _, failures = record(predictions, curve=CurveConfig.from_directory(keys["b"]), quiet=True,
                                       startup_timeout_s=60, on_ready=start_stages)  # fmt: skip
        leaked = {key: [] for key in outsiders}
        for key, subscriber in outsiders.items():  # whatever reached them is queued in their sockets
            while (message := subscriber.recv(100)) is not None:
                leaked[key].append(message)
        for stage in stages:
            assert stage.wait(timeout=30) == 0, stage.stderr.read()[-2000:]
    finally:
        for stage in stages:
            stop_process(stage)
        for subscriber in outsiders.values():
            subscriber.close()
    assert failures == [] and recorder.ended
    report = recorder.report(str(tiny_checkpoint), 0.0)
    assert report["windows"] >= 10 and report["events_in"] > 10_000 and report["events_lost"] == 0
    assert report["gestures"] >= 1  # truth travelled through both encrypted hops
    for (endpoint, who), subscriber in outsiders.items():
        assert leaked[endpoint, who] == [] and subscriber.stats.received == 0, (endpoint, who)
        assert subscriber.stats.rejected_total == 0  # refused before anything reached them, not garbled
        if who == "stranger":
            assert subscriber.stats.handshake_failures >= 1, endpoint  # the stage's ZAP handler said no


@pytest.mark.parametrize("stage", ["source", "worker", "launch"])
def test_a_bad_key_directory_is_one_error_line_and_exit_code_2(stage, tiny_checkpoint, stage_env, tmp_path):
    missing = tmp_path / "no-keys"
    commands = {
        "source": ["-m", "stream.source_stage", "--source", "sim", "--pub", "tcp://127.0.0.1:5999"],
        "worker": ["-m", "inference.worker_stage", "--sub", "tcp://127.0.0.1:5998", "--pub", "tcp://127.0.0.1:5999",
                   "--checkpoint", str(tiny_checkpoint)],
        "launch": ["launch.py", "--headless", "--source", "sim", "--checkpoint", str(tiny_checkpoint)],
    }  # fmt: skip
    started = time.monotonic()
    result = subprocess.run([sys.executable, *commands[stage], "--curve-keys", str(missing)], cwd=REPO, env=stage_env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {missing}: no such key directory "
                                                  "(create one with python -m stream keys generate)"]  # fmt: skip
    assert time.monotonic() - started < 30  # refused before a model loads or a source opens


def test_launch_runs_the_whole_pipeline_encrypted(tiny_checkpoint, stage_env, keys, tmp_path):
    report_path = tmp_path / "report.json"
    endpoints = ["--events-endpoint", f"tcp://127.0.0.1:{free_port()}",
                 "--predictions-endpoint", f"tcp://127.0.0.1:{free_port()}"]  # fmt: skip
    result = run_launch(stage_env, "--source", "sim", "--checkpoint", tiny_checkpoint, "--duration", "4", "--report",
                        report_path, *endpoints, "--curve-keys", keys["b"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["windows"] >= 10 and report["events_in"] > 10_000 and report["failures"] == []
    assert report["stage_restarts"] == {"worker": 0, "source": 0}
