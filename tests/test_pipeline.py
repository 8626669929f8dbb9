"""The streaming pipeline: smoothing, report statistics, the worker (in process and as a stage),
and launch.py end to end on the simulator and on a replayed file. Real sockets, real backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from inference.headless import latency_summary, times_to_decision_ms, window_accuracy, window_truth
from inference.smoothing import NO_GESTURE_INDEX, LabelSmoother, SmoothingConfig, majority_vote
from inference.worker import InferenceWorker, WorkerConfig, WorkerLoop
from stream.classes import GESTURE_CLASSES, NO_GESTURE
from stream.events import GestureSegment, SensorSize, make_events
from stream.source import STATUS_KIND, StagePublisher
from stream.transport import EventSubscriber, Kind, encode_events

REPO = Path(__file__).resolve().parents[1]
TEST_BACKEND = "onnxruntime"  # the default CPU backend of `auto`
WINDOW = {"bins": 4, "bin_us": 25_000, "stride_us": 50_000}


def make_tiny_checkpoint(directory: Path, window: dict = WINDOW) -> Path:
    """A randomly initialised, very small Spikeformer checkpoint (fast on any CPU)."""
    import torch

    from training.checkpoint import save_checkpoint
    from training.spikeformer import SpikeformerConfig, build_model

    torch.manual_seed(0)
    config = SpikeformerConfig(
        name="custom", input_size=(32, 32), time_steps=window["bins"], tokenizer_channels=(8, 16),
        tokenizer_strides=(2, 2), kernel_size=3, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2, num_classes=11,
    )  # fmt: skip
    metadata = {
        "classes": list(GESTURE_CLASSES),
        "input": {
            "window": dict(window),
            "sensor_mapping": {"input_width": 32, "input_height": 32, "method": "area", "flip_x": False, "flip_y": False},
            "normalisation": {"kind": "clip", "max": 8},
        },
    }
    return save_checkpoint(directory / "tiny", build_model(config), metadata)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def stage_env(tmp_path_factory) -> dict:
    """Environment for stage processes: ONNX/engine caches in a temp dir, repo importable."""
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def backend(tiny_checkpoint, stage_env):
    from inference.backends import create_backend
    from training.checkpoint import read_metadata

    os.environ.setdefault("XDG_CACHE_HOME", stage_env["XDG_CACHE_HOME"])
    return create_backend(TEST_BACKEND, tiny_checkpoint, device="cpu"), read_metadata(tiny_checkpoint)


def synthetic_events(start_us: int, end_us: int, rate_hz: float, sensor: SensorSize, seed: int = 0) -> np.ndarray:
    """Uniform random events, time-ordered, in [start_us, end_us)."""
    rng = np.random.default_rng(seed)
    count = int((end_us - start_us) * 1e-6 * rate_hz)
    t = np.sort(rng.integers(start_us, end_us, count))
    return make_events(t, rng.integers(0, sensor.width, count), rng.integers(0, sensor.height, count), rng.integers(0, 2, count))


# --- smoothing and statistics --------------------------------------------------------------------


def test_ema_smoothing_needs_confidence_and_follows_the_gesture():
    smoother = LabelSmoother(GESTURE_CLASSES, SmoothingConfig("ema", alpha=0.5, threshold=0.6))
    uniform = np.full(11, 1 / 11)
    assert smoother.update(uniform) == (NO_GESTURE_INDEX, NO_GESTURE, pytest.approx(1 / 11))
    confident = np.full(11, 0.01)
    confident[3] = 0.9
    labels = [smoother.update(confident).index for _ in range(4)]
    assert labels[0] == NO_GESTURE_INDEX  # one window is not enough after uncertainty
    assert labels[-1] == 3
    other = np.full(11, 0.01)
    other[5] = 0.9
    assert [smoother.update(other).index for _ in range(4)][-1] == 5


def test_majority_vote_and_threshold():
    assert majority_vote(np.array([1, 2, 2, 1]), 11) == (1, 0.5)  # tie: the most recent wins
    smoother = LabelSmoother(GESTURE_CLASSES, SmoothingConfig("majority", history=3, threshold=0.6))
    votes = [np.eye(11)[k] for k in (4, 7, 4, 4)]
    assert [smoother.update(p).index for p in votes] == [4, NO_GESTURE_INDEX, 4, 4]
    with pytest.raises(ValueError, match="11 class probabilities"):
        smoother.update(np.ones(3))
    with pytest.raises(ValueError, match="alpha"):
        SmoothingConfig(alpha=0.0)


def test_report_statistics():
    segments = [GestureSegment(2, 1_000_000, 2_000_000), GestureSegment(5, 3_000_000, 4_000_000)]
    start = np.array([900_000, 1_000_000, 1_500_000, 1_900_000, 3_100_000, 4_500_000])
    end = start + 200_000
    truth = window_truth(start, end, segments)
    assert truth.tolist() == [-1, 2, 2, -1, 5, -1]  # fully inside only
    predicted = np.array([0, 2, 1, 2, 5, 5])
    assert window_accuracy(predicted, truth) == (pytest.approx(2 / 3), 3)
    stable = np.array([-1, -1, 2, 2, 5, 5])
    decided, undecided = times_to_decision_ms(end, stable, segments)
    assert decided == [700.0, 300.0] and undecided == 0
    assert times_to_decision_ms(end, np.full(6, -1), segments) == ([], 2)
    summary = latency_summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert summary["p50"] == 3.0 and summary["max"] == 100.0 and summary["count"] == 5
    assert latency_summary([])["p99"] is None


# --- the worker in process -----------------------------------------------------------------------


def test_worker_infers_the_newest_window_and_counts_the_rest(backend):
    model, metadata = backend
    worker = InferenceWorker(model, metadata, WorkerConfig())
    sensor = SensorSize(128, 128)
    events = synthetic_events(0, 1_000_000, 200_000, sensor)
    worker.push(events, sensor, send_us=1, recv_us=2)
    prediction = worker.infer()
    assert prediction["window"]["end_us"] == events["t"][-1] // 50_000 * 50_000  # the newest due window
    assert worker.infer() is None  # nothing newer
    counters = prediction["counters"]
    assert counters["windows"] == 1 and counters["windows_skipped"] == 18  # windows end at 50, 100, ... 950 ms
    assert counters["events_in"] == len(events) and counters["events_dropped"] == 0
    assert counters["events_binned"] + counters["events_unused"] + counters["events_unmapped"] == len(events)
    assert len(prediction["probabilities"]) == 11 and abs(sum(prediction["probabilities"]) - 1) < 1e-3
    # A new sensor size rebuilds the binner; counters keep adding up.
    worker.push(synthetic_events(1_000_000, 1_200_000, 100_000, SensorSize(346, 260)), SensorSize(346, 260), 3, 4)
    assert worker.counters.sensor_changes == 1 and worker.sensor == SensorSize(346, 260)
    assert worker.counter_dict()["events_in"] == len(events) + 20_000
    frame = worker.take_frame()
    assert frame.shape == (2, 260, 346) and frame.dtype == np.uint8 and frame.sum() > 0


class SlowBackend:
    """Test-only: the real backend plus a sleep, to overload the worker on purpose."""

    def __init__(self, backend, delay_s: float) -> None:
        self.backend, self.delay_s, self.name = backend, delay_s, "slow-" + backend.name

    def predict(self, frames):
        time.sleep(self.delay_s)
        return self.backend.predict(frames)


def _publish_paced(publisher: StagePublisher, sensor: SensorSize, duration_us: int, packet_us: int) -> int:
    """Publish synthetic packets in real time (one every packet_us) then the end message."""
    sent = 0
    start = time.monotonic()
    for first in range(0, duration_us, packet_us):
        packet = synthetic_events(first, first + packet_us, 100_000, sensor, seed=first)
        delay = start + first * 1e-6 - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a real-time source, not synchronisation
        publisher.publish_events(packet, sensor)
        sent += len(packet)
    publisher.publish_json(STATUS_KIND, {"type": "end", "events_sent": sent}, reliable=True)
    return sent


def test_overloaded_worker_skips_windows_and_keeps_latency_bounded(backend, tmp_path):
    model, metadata = backend
    delay_s = 0.15
    worker = InferenceWorker(SlowBackend(model, delay_s), metadata, WorkerConfig(stride_us=25_000, frame_fps=0))
    sensor = SensorSize(64, 64)
    endpoint = f"ipc://{tmp_path}/events"
    with StagePublisher(endpoint) as publisher, EventSubscriber(endpoint, ("events", "prediction")) as subscriber:
        loop_publisher = StagePublisher(f"ipc://{tmp_path}/predictions")
        with loop_publisher, EventSubscriber(loop_publisher.endpoint, ("prediction",)) as consumer:
            assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
            sender = threading.Thread(target=_publish_paced, args=(publisher, sensor, 1_500_000, 2_000))
            sender.start()
            loop = WorkerLoop(worker, subscriber, loop_publisher)
            loop.run(duration_s=30)
            sender.join()
            predictions = []
            while (message := consumer.recv(0)) is not None:
                if message.data.get("type") == "prediction":
                    predictions.append(message.data)
    counters = worker.counter_dict()
    assert loop.ended
    assert counters["windows_skipped"] > counters["windows"] > 3  # 60 windows due, ~10 inferred
    assert counters["events_lost"] == 0 and counters["packets_lost"] == 0
    # The backlog never builds up: compute latency stays near one inference (never seconds).
    compute = [p["timing"]["compute_ms"] for p in predictions]
    assert max(compute) < 1000 * delay_s + 600


def test_worker_stage_keeps_running_through_garbage(tiny_checkpoint, stage_env, tmp_path):
    events_endpoint, predictions_endpoint = f"ipc://{tmp_path}/ev", f"ipc://{tmp_path}/pr"
    sensor = SensorSize(128, 128)
    with StagePublisher(events_endpoint) as publisher, EventSubscriber(predictions_endpoint, ("prediction",)) as consumer:
        worker = subprocess.Popen(
            [sys.executable, "-m", "inference.worker", "--sub", events_endpoint, "--pub", predictions_endpoint,
             "--checkpoint", str(tiny_checkpoint), "--backend", TEST_BACKEND, "--wait-subscribers", "1"],
            cwd=REPO, env=stage_env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert publisher.wait_for_subscribers(1, b"events", timeout_s=120), worker.stderr.read()
            good = synthetic_events(0, 400_000, 50_000, sensor)
            garbage = [
                [b"events", b"short", b""],
                [b"events", b"\x00" * 40, b"x" * 16],
                [b"nonsense", b"1", b"2", b"3"],
                encode_events(good[:10], sensor, 0)[:2] + [b"\xff" * 160],  # payload of the wrong size
                [b"prediction"] + encode_events(good[:1], sensor, 0)[1:],  # topic does not match kind
            ]
            for frames in garbage:
                publisher.send_frames(frames)
            publisher.publish_events(good, sensor)
            publisher.publish_events(synthetic_events(400_000, 500_000, 50_000, sensor, seed=1), sensor)
            publisher.publish_json(STATUS_KIND, {"type": "end", "events_sent": len(good) + 5000}, reliable=True)
            end = None
            deadline = time.monotonic() + 60
            while end is None and time.monotonic() < deadline:
                message = consumer.recv(1000)
                if message is not None and message.data.get("type") == "end":
                    end = message.data
            assert end is not None, "the worker never sent its end message"
            consumer.close()  # a subscriber leaves once it has read the end; then the worker exits
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    counters = end["counters"]
    assert counters["messages_rejected"] >= 4
    assert counters["events_in"] == len(good) + 5000 and counters["events_lost"] == 0
    assert counters["windows"] >= 1


# --- launch.py end to end ------------------------------------------------------------------------


def run_launch(args: list[str], env: dict, timeout_s: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch.py", "--headless", "--quiet", "--backend", TEST_BACKEND, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


def test_pipeline_on_the_simulator_reports(tiny_checkpoint, stage_env, tmp_path):
    report_path = tmp_path / "report.json"
    result = run_launch(["--source", "sim", "--checkpoint", str(tiny_checkpoint), "--duration", "4",
                         "--report", str(report_path)], stage_env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    for key in ("latency_ms", "e2e_latency_ms", "windows", "windows_skipped", "events_in", "events_dropped",
                "event_rate", "backend", "checkpoint", "accuracy", "time_to_decision_ms"):  # fmt: skip
        assert key in report, key
    assert report["windows"] >= 10 and report["events_in"] > 10_000 and report["event_rate"] > 1000
    latency, e2e = report["latency_ms"], report["e2e_latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] < 5000
    assert e2e["p50"] >= latency["p50"] * 0.5 and e2e["max"] < 10_000
    assert report["backend"].startswith(TEST_BACKEND) and report["checkpoint"] == str(tiny_checkpoint)
    assert report["gestures"] >= 1  # the simulator sends its truth through the worker
    assert "| compute latency" in result.stdout


def test_replayed_file_is_processed_completely_and_ends_by_itself(tiny_checkpoint, stage_env, tmp_path):
    from stream.aedat4 import write_aedat4

    sensor = SensorSize(346, 260)
    events = synthetic_events(5_000_000, 7_000_000, 150_000, sensor)
    path = tmp_path / "recording.aedat4"
    write_aedat4(path, events, sensor)
    report_path = tmp_path / "report.json"
    result = run_launch(["--source", f"file:{path}", "--speed", "max", "--checkpoint", str(tiny_checkpoint),
                         "--report", str(report_path)], stage_env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["ended"] is True
    assert report["events_in"] == len(events) and report["events_dropped"] == 0
    assert report["counters"]["events_binned"] + report["counters"]["events_unused"] + report["counters"][
        "events_unmapped"] == len(events)  # fmt: skip
    assert report["sensor"] == [346, 260] and report["windows"] >= 1
    assert report["counters"]["windows"] + report["windows_skipped"] >= 39  # 2 s / 50 ms windows
