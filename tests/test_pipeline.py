"""The streaming pipeline: smoothing, report statistics, the worker (in process and as a stage),
and launch.py end to end on the simulator and on a replayed file. Real sockets, real backends."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from inference.headless import (
    HeadlessRecorder,
    build_report,
    find_gaps,
    format_summary,
    gap_threshold_s,
    latency_summary,
    sum_counters,
    times_to_decision_ms,
    window_accuracy,
    window_truth,
)
from inference.smoothing import NO_GESTURE_INDEX, LabelSmoother, SmoothingConfig, majority_vote
from inference.worker import InferenceWorker, Packet, WorkerConfig
from inference.worker_stage import LossCount, WorkerLoop
from stream.classes import GESTURE_CLASSES, NO_GESTURE
from stream.events import GestureSegment, SensorSize, make_events
from stream.transport.sockets import Publisher
from stream.transport.wire import Kind
from stream.transport.sockets import Subscriber
from stream.transport.wire import Kind, Message, encode_events, now_us

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


def test_gaps_worker_restarts_and_counter_sums():
    assert gap_threshold_s(50_000) == 1.0 and gap_threshold_s(400_000) == 2.0 and gap_threshold_s(None) == 1.0
    times = [0.0, 0.05, 0.1, 1.6, 1.65, 4.0, 4.05]
    ids = ["a", "a", "a", "a", "a", "b", "b"]
    gaps = find_gaps(times, ids, 1.0, end_s=6.0)
    assert gaps == [
        {"start_s": 0.1, "duration_s": 1.5, "reason": "no predictions"},
        {"start_s": 1.65, "duration_s": 2.35, "reason": "worker restarted"},
        {"start_s": 4.05, "duration_s": 1.95, "reason": "no predictions"},  # silent until the recording stopped
    ]
    assert find_gaps(times, ids, 3.0, end_s=4.1) == [] and find_gaps([], [], 1.0, end_s=9.0) == []
    total = sum_counters([{"events_in": 10, "windows": 2, "rejected": {"bad_json": 1}, "ok": True},
                          {"events_in": 5, "windows": 1, "rejected": {"bad_json": 2, "short_header": 1}}])  # fmt: skip
    assert total == {"events_in": 15, "windows": 3, "rejected": {"bad_json": 3, "short_header": 1}}


def test_loss_count_joins_running_streams_and_follows_source_restarts():
    loss = LossCount()  # from the start of the stream: every event not received is lost
    loss.on_events(0, 100)
    loss.on_events(2, 100)  # packet 1 (100 events) never arrived
    loss.on_sent(300)
    assert loss.lost == 100
    late = LossCount()  # joined a running stream: what was sent before it joined is not lost
    late.on_events(57, 100)
    late.on_sent(5_700 + 100)
    late.on_events(58, 100)
    late.on_events(60, 100)  # packet 59 lost
    late.on_sent(5_700 + 400)
    assert late.lost == 100
    late.on_events(0, 50)  # the source started again: a new count, added to the old one
    late.on_sent(80)
    assert late.lost == 130 and late.restarts == 1


def test_report_carries_the_supervisor_restart_counts(tmp_path):
    """A real ``launch.Supervisor``: one stage fails (restarted once, then given up), one succeeds."""
    from launch import RestartPolicy, Stage, Supervisor

    good = tmp_path / "ok.json"
    good.write_text("{}")
    stages = [Stage("source", "json.tool", [str(good), str(tmp_path / "out.json")]),
              Stage("worker", "timeit", ["-n", "1", "raise SystemExit(3)"])]  # timeit: exit code 1  # fmt: skip
    logged: list[str] = []
    policy = RestartPolicy(first_backoff_s=0.05, max_backoff_s=0.05, max_restarts=1)
    with Supervisor(stages, log=logged.append, policy=policy) as supervisor:
        deadline = time.monotonic() + 30
        exits = []
        while not any(e.name == "worker" for e in exits):  # the failure after the restart is final
            assert time.monotonic() < deadline, logged
            exits += supervisor.poll()
            time.sleep(0.02)  # poll interval of a consumer loop, not synchronisation
    recorder = HeadlessRecorder()
    report = build_report(recorder, "ck.json", 1.0, ["stage worker exited with code 1"], supervisor)
    assert report["stage_restarts"] == {"source": 0, "worker": 1} and report["failures"] == ["stage worker exited with code 1"]
    assert json.loads(json.dumps(report, allow_nan=False))["stage_restarts"] == {"source": 0, "worker": 1}
    assert "| stage restarts (launcher) | source 0, worker 1 |" in format_summary(report)
    environment = json.loads(json.dumps(report, allow_nan=False))["environment"]  # where it was measured
    assert environment["packages"]["numpy"] == np.__version__ and environment["cpus"] == os.cpu_count()
    assert environment["python"] == platform.python_version() and "| machine |" in format_summary(report)
    quiet = build_report(recorder, "ck.json", 1.0, [], supervisor=None)  # a consumer without a launcher
    assert quiet["stage_restarts"] == {} and "| stage restarts (launcher) | none |" in format_summary(quiet)


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


def test_a_batch_of_packets_bins_like_packets_one_by_one(backend):
    model, metadata = backend
    sensor = SensorSize(64, 64)
    events = synthetic_events(0, 600_000, 100_000, sensor)
    packets = [Packet(chunk, i, 1000 + i) for i, chunk in enumerate(np.array_split(events, 40))]
    one_by_one = InferenceWorker(model, metadata, WorkerConfig(all_windows=True))
    for packet in packets:
        one_by_one.push(packet.events, sensor, packet.send_us, packet.recv_us)
    batched = InferenceWorker(model, metadata, WorkerConfig(all_windows=True))
    batched.push_packets(packets, sensor)
    assert len(batched._queue) == len(one_by_one._queue) == 11  # windows end at 50, 100, ... 550 ms
    for (window_a, packet_a, _), (window_b, packet_b, _) in zip(one_by_one._queue, batched._queue):
        assert window_a.end_us == window_b.end_us and window_a.events == window_b.events
        np.testing.assert_array_equal(window_a.frames, window_b.frames)
        assert packet_a == packet_b  # the same packet completed the window (first with an event >= its end)
    assert one_by_one.counter_dict() == batched.counter_dict()
    np.testing.assert_array_equal(one_by_one.take_frame(), batched.take_frame())

    # Newest-window split: bin up to the packet that makes the newest window due, infer, then the rest.
    worker = InferenceWorker(model, metadata, WorkerConfig())
    worker.push_packets(packets[:5], sensor)
    worker.pending = None
    head, rest = worker.split_at_newest_window(packets[5:])
    newest_end = int(events["t"][-1]) // 50_000 * 50_000
    assert head[-1].events["t"][-1] >= newest_end > head[-2].events["t"][-1]
    worker.push_packets(head, sensor)
    assert worker.pending.end_us == newest_end and worker._pending_packet == (head[-1].send_us, head[-1].recv_us)
    worker.pending = None
    worker.push_packets(rest, sensor)
    assert worker.pending is None  # the rest only fills windows that are not due yet
    assert worker.counter_dict()["events_in"] == len(events)


def test_events_outside_the_sensor_are_dropped_and_counted_not_drawn(backend):
    model, metadata = backend
    worker = InferenceWorker(model, metadata, WorkerConfig())
    sensor = SensorSize(64, 64)
    bad = make_events([10, 20, 30, 40], [5, 64, -1, 7], [5, 3, 3, 70_00], [1, 0, 1, 2])  # only the first is valid
    worker.push(bad, sensor, 0, 0)
    counters = worker.counter_dict()
    assert counters["events_in"] == 4 and counters["dropped_out_of_sensor"] + counters["dropped_bad_polarity"] == 3
    frame = worker.take_frame()
    assert frame.sum() == 1 and frame[1, 5, 5] == 1


class SlowBackend:
    """Test-only: the real backend plus a sleep, to overload the worker on purpose."""

    def __init__(self, backend, delay_s: float) -> None:
        self.backend, self.delay_s, self.name = backend, delay_s, "slow-" + backend.name

    def predict(self, frames):
        time.sleep(self.delay_s)
        return self.backend.predict(frames)


def _publish_paced(publisher: Publisher, sensor: SensorSize, duration_us: int, packet_us: int) -> int:
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
    publisher.publish_json(Kind.STATUS, {"type": "end", "events_sent": sent}, reliable=True)
    return sent


def test_overloaded_worker_skips_windows_and_keeps_latency_bounded(backend, tmp_path):
    model, metadata = backend
    delay_s = 0.15
    worker = InferenceWorker(SlowBackend(model, delay_s), metadata, WorkerConfig(stride_us=25_000, frame_fps=0))
    sensor = SensorSize(64, 64)
    endpoint = f"ipc://{tmp_path}/events"
    # Queue room for the whole 1.5 s (750 packets): the test is about skipping windows, and a CI box
    # that starves this thread for > 0.4 s (the default 100 + 100 packets) must not turn into loss.
    with Publisher(endpoint) as publisher, \
            Subscriber(endpoint, ("events", "prediction"), rcvhwm=1_000) as subscriber:  # fmt: skip
        loop_publisher = Publisher(f"ipc://{tmp_path}/predictions")
        with loop_publisher, Subscriber(loop_publisher.endpoint, ("prediction",)) as consumer:
            assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
            sender = threading.Thread(target=_publish_paced, args=(publisher, sensor, 1_500_000, 2_000))
            sender.start()
            loop = WorkerLoop(worker, subscriber, loop_publisher)
            loop.run(duration_s=30)
            sender.join()
            predictions = [m.data for m in drain(consumer) if m.data.get("type") == "prediction"]
    counters = worker.counter_dict()
    assert loop.ended
    assert counters["windows_skipped"] > counters["windows"] > 3  # 60 windows due, ~10 inferred
    assert counters["events_lost"] == 0 and counters["packets_lost"] == 0
    # The backlog never builds up: compute latency stays near one inference (never seconds).
    compute = [p["timing"]["compute_ms"] for p in predictions]
    assert max(compute) < 1000 * delay_s + 600


def _publish_then_fall_silent(publisher: Publisher, sensor: SensorSize, phases: dict) -> None:
    """0.3 s of events at once, then clock messages every 20 ms (the source's watermark: last
    event time + wall time since): 0.6 s silent, 0.4 s paused, then the end message."""
    events = synthetic_events(0, 300_000, 50_000, sensor)
    publisher.publish_events(events, sensor)
    last_t = int(events["t"][-1])
    phases["last_t"] = last_t
    start = time.monotonic()
    phases["silent_us"] = now_us()
    clock = last_t
    while (elapsed := time.monotonic() - start) < 1.0:
        paused = elapsed >= 0.6
        if paused and "paused_us" not in phases:
            phases["paused_us"], phases["paused_at_t"] = now_us(), clock
        if not paused:
            clock = last_t + int(elapsed * 1e6)
        publisher.publish_json(Kind.STATUS, {"type": "clock", "time_us": clock, "paused": paused})
        time.sleep(0.02)  # the clock's own pace (every 20 ms of wall time), not synchronisation
    phases["end_us"] = now_us()
    publisher.publish_json(Kind.STATUS, {"type": "clock", "time_us": "soon", "paused": False})  # malformed
    publisher.publish_json(Kind.STATUS, {"type": "end", "events_sent": len(events)}, reliable=True)


def test_clock_messages_close_windows_while_the_source_is_silent(backend, tmp_path):
    model, metadata = backend
    fps = 20.0
    # Threshold 0: every window with events gets a label, so "no gesture" can only come from emptiness.
    worker = InferenceWorker(model, metadata, WorkerConfig(frame_fps=fps, smoothing=SmoothingConfig(threshold=0.0)))
    sensor = SensorSize(64, 64)
    phases: dict = {}
    with Publisher(f"ipc://{tmp_path}/ev") as publisher, Subscriber(publisher.endpoint, ("events", "prediction")) as subscriber:
        with Publisher(f"ipc://{tmp_path}/pr") as loop_publisher, \
                Subscriber(loop_publisher.endpoint, ("prediction", "frame"), rcvhwm=10_000) as consumer:  # fmt: skip
            assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
            assert loop_publisher.wait_for_subscribers(1, b"frame", timeout_s=10)
            sender = threading.Thread(target=_publish_then_fall_silent, args=(publisher, sensor, phases))
            sender.start()
            loop = WorkerLoop(worker, subscriber, loop_publisher)
            loop.run(duration_s=30)
            sender.join()
            predictions, frames = [], []
            for message in drain(consumer):
                if message.kind == Kind.FRAME:
                    frames.append(message.send_us)
                elif message.data.get("type") == "prediction":
                    predictions.append(message.data)
    assert loop.ended and worker.counters.clocks_in >= 20
    assert worker.counter_dict()["rejected"] == {"bad_clock": 1}
    ends = [p["window"]["end_us"] for p in predictions]
    # Windows kept closing while no event came, up to the clock of the pause (not beyond) ...
    assert max(ends) >= phases["last_t"] + 300_000, (phases, ends)
    assert max(ends) <= phases["paused_at_t"] + 50_000
    # ... and a window without events is "no gesture", whatever the model says.
    empty = [p for p in predictions if p["window"]["events"] == 0]
    assert len(empty) >= 2 and all(p["stable"]["index"] == NO_GESTURE_INDEX for p in empty)
    assert all(p["stable"]["index"] != NO_GESTURE_INDEX for p in predictions if p["window"]["events"] > 0)
    assert all(p["worker_id"] == worker.worker_id for p in predictions)
    # Frames go on at the frame rate while silent (no more), and stop while paused.
    silent = [t for t in frames if phases["silent_us"] <= t < phases["paused_us"]]
    silent_s = (phases["paused_us"] - phases["silent_us"]) / 1e6
    assert 0.5 * fps * silent_s <= len(silent) <= fps * silent_s + 1, (len(silent), silent_s)
    paused = [t for t in frames if phases["paused_us"] + 60_000 <= t < phases["end_us"]]
    assert paused == []


def _step_until(loop: WorkerLoop, condition, timeout_s: float = 20) -> None:
    """Run the worker loop until ``condition()`` holds (a real signal: messages arriving)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the worker loop never got there"
        loop.step(timeout_ms=20)


def drain(consumer: Subscriber, quiet_ms: int = 300) -> list[Message]:
    """Every message ``consumer`` gets until none comes for ``quiet_ms``: a message published just
    before may still be in ZeroMQ's pipes, so one non-blocking pass could miss it (flaky tests)."""
    messages = []
    while (message := consumer.recv(quiet_ms)) is not None:
        messages.append(message)
    return messages


def test_a_source_started_again_restarts_the_windows_even_within_a_second(backend, tmp_path):
    """Two real source publishers, one after the other, on one endpoint: the second starts its
    stream time again at 0, only 0.6 s behind the first (under TIME_RESET_US). Its events must be
    binned into its own windows, not dropped as going backwards."""
    model, metadata = backend
    worker = InferenceWorker(model, metadata, WorkerConfig(all_windows=True, frame_fps=0))
    sensor = SensorSize(64, 64)
    first = synthetic_events(0, 600_000, 50_000, sensor)
    second = synthetic_events(0, 400_000, 50_000, sensor, seed=1)
    endpoint = f"ipc://{tmp_path}/events"
    with Subscriber(endpoint, ("events", "prediction")) as subscriber, \
            Publisher(f"ipc://{tmp_path}/predictions") as loop_publisher, \
            Subscriber(loop_publisher.endpoint, ("prediction",), rcvhwm=10_000) as consumer:  # fmt: skip
        assert loop_publisher.wait_for_subscribers(1, b"prediction", timeout_s=10)
        loop = WorkerLoop(worker, subscriber, loop_publisher)
        with Publisher(endpoint) as publisher:
            assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
            for chunk in np.array_split(first, 6):
                publisher.publish_events(chunk, sensor)
            _step_until(loop, lambda: worker.counters.events_in == len(first))
        with Publisher(endpoint) as publisher:  # a new source process: sequence numbers from 0 again
            # libzmq attaches the reconnected pipe (and sends the subscription) only when the SUB
            # socket is used, as the running worker loop does.
            _step_until(loop, lambda: publisher.wait_for_subscribers(1, b"events", timeout_s=0.01))
            for chunk in np.array_split(second, 4):
                publisher.publish_events(chunk, sensor)
            publisher.publish_json(Kind.STATUS, {"type": "end", "events_sent": len(second)}, reliable=True)
            loop.run(duration_s=30)
        predictions = [m.data for m in drain(consumer) if m.data.get("type") == "prediction"]
    assert loop.ended and subscriber.stats.restarts >= 1
    counters = worker.counter_dict()
    assert counters["dropped_backwards"] == 0 and counters["time_resets"] == 1 and counters["source_restarts"] == 1
    assert counters["events_binned"] + counters["events_unused"] == len(first) + len(second)
    ends = [p["window"]["end_us"] for p in predictions]
    restart = ends.index(50_000, 1)  # the second run's windows start again on the grid
    assert ends[:restart] == list(range(50_000, 600_000, 50_000)) and ends[restart:] == list(range(50_000, 450_000, 50_000))
    # Each window of the second run holds exactly its own events (none of the first run's).
    t = second["t"]
    expected = [int(((t >= end - 100_000) & (t < end)).sum()) for end in ends[restart:]]
    assert [p["window"]["events"] for p in predictions[restart:]] == expected

    # The batch holding a new run's first packet is binned whole, never split at a window.
    sensor_events = synthetic_events(0, 300_000, 50_000, sensor)
    packets = [Packet(chunk, 0, 0, restart=i == 2) for i, chunk in enumerate(np.array_split(sensor_events, 4))]
    assert worker.split_at_newest_window(packets) == (packets, [])


def test_an_idle_worker_connects_again_after_an_oversized_message(backend, tmp_path):
    """ZeroMQ closes a connection for good when a message is over the subscriber's size limit;
    nothing arrives on it any more, so the idle worker loop itself must connect again."""
    model, metadata = backend
    worker = InferenceWorker(model, metadata, WorkerConfig(frame_fps=0))
    sensor = SensorSize(64, 64)
    small, oversized = synthetic_events(0, 10_000, 100_000, sensor), synthetic_events(10_000, 50_000, 100_000, sensor)
    limit = 2 * small.nbytes  # the oversized packet is 4x the small one
    with Publisher(f"ipc://{tmp_path}/ev") as publisher, \
            Subscriber(publisher.endpoint, ("events",), max_message_bytes=limit) as subscriber, \
            Publisher(f"ipc://{tmp_path}/pr") as loop_publisher:  # fmt: skip
        assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
        loop = WorkerLoop(worker, subscriber, loop_publisher)
        publisher.publish_events(small, sensor)
        _step_until(loop, lambda: worker.counters.events_in == len(small))
        publisher.publish_events(oversized, sensor)
        _step_until(loop, lambda: subscriber.stats.reconnected == 1, timeout_s=10)  # only idle steps from here

        def resent() -> bool:  # the new connection subscribes when it is up; until then packets are dropped
            publisher.publish_events(small, sensor)
            return worker.counters.events_in > len(small)

        _step_until(loop, resent, timeout_s=10)
    assert subscriber.stats.disconnects >= 1 and worker.counters.events_in % len(small) == 0


def test_the_end_reaches_a_consumer_whose_queue_overflowed(backend, tmp_path):
    """ZeroMQ silently skips a subscriber whose queue overflowed on a dropping socket: the worker's
    end message is sent again until the consumer, stalled while predictions piled up, has it and left."""
    model, metadata = backend
    worker = InferenceWorker(model, metadata, WorkerConfig(frame_fps=0))
    sensor = SensorSize(64, 64)
    events = synthetic_events(0, 300_000, 50_000, sensor)
    got: list[dict] = []
    with Publisher(f"ipc://{tmp_path}/ev") as publisher, Subscriber(publisher.endpoint, ("events", "prediction")) as subscriber, \
            Publisher(f"ipc://{tmp_path}/pr", sndhwm=4) as loop_publisher:  # fmt: skip
        consumer = Subscriber(loop_publisher.endpoint, ("prediction",), rcvhwm=4)
        assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
        assert loop_publisher.wait_for_subscribers(1, Kind.STATUS.topic, timeout_s=10)
        loop = WorkerLoop(worker, subscriber, loop_publisher)
        publisher.publish_events(events, sensor)
        publisher.publish_json(Kind.STATUS, {"type": "end", "events_sent": len(events)}, reliable=True)
        loop.run(duration_s=30)
        for seq in range(5_000):  # a burst the stalled consumer cannot hold (2 kB each, 10 MB)
            loop_publisher.publish_json(Kind.STATUS, {"type": "stats", "seq": seq, "pad": "x" * 2_000})
        release = threading.Event()

        def consume() -> None:  # stalled until the end was first sent, then reads until the end and leaves
            release.wait(30)
            with consumer:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any(m.get("type") == "end" for m in got):
                    if (message := consumer.recv(100)) is not None:
                        got.append(message.data)

        reader = threading.Thread(target=consume)
        reader.start()
        threading.Timer(0.5, release.set).start()
        started = time.monotonic()
        all_left = loop.publish_end(wait_s=20)
        reader.join()
    assert loop.ended and all_left and time.monotonic() - started < 20
    assert consumer.stats.lost > 0  # the burst overflowed its queue ...
    assert [m["type"] for m in got][-1] == "end" and got[-1]["counters"]["events_in"] == len(events)  # ... the end did not


def test_display_frames_are_made_only_while_a_consumer_subscribes(backend, tmp_path):
    model, metadata = backend
    worker = InferenceWorker(model, metadata, WorkerConfig(frame_fps=50))
    sensor = SensorSize(64, 64)
    batches = [synthetic_events(k * 100_000, (k + 1) * 100_000, 30_000, sensor, seed=k) for k in range(4)]
    received = [0]

    def publish_and_step(publisher, events, condition=lambda: True) -> None:
        target = worker.counters.events_in + len(events)
        publisher.publish_events(events, sensor)
        _step_until(loop, lambda: worker.counters.events_in == target and condition())

    with Publisher(f"ipc://{tmp_path}/ev") as publisher, Subscriber(publisher.endpoint, ("events",)) as subscriber, \
            Publisher(f"ipc://{tmp_path}/pr") as loop_publisher:  # fmt: skip
        assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
        loop = WorkerLoop(worker, subscriber, loop_publisher)
        publish_and_step(publisher, batches[0])
        assert not worker.frames_wanted and worker._frame_counts.sum() == 0  # nobody watches: nothing accumulated
        assert worker.take_frame() is None
        with Subscriber(loop_publisher.endpoint, ("frame",)) as viewer:
            _step_until(loop, lambda: worker.frames_wanted)  # the subscription reached the worker's XPUB socket

            def frames_arrived() -> bool:
                while (message := viewer.recv(0)) is not None:
                    received[0] += int(np.frombuffer(message.payload, dtype=np.uint8).sum())  # [2, H, W] counts
                return received[0] == len(batches[1])

            publish_and_step(publisher, batches[1], frames_arrived)  # every event since then, in frames
        _step_until(loop, lambda: not worker.frames_wanted)  # the viewer left
        before = worker._frame_counts.copy()
        publish_and_step(publisher, batches[2])
        np.testing.assert_array_equal(worker._frame_counts, before)
        # Any subscription that prefixes the topic (here the empty one: everything) wants frames too.
        raw = zmq.Context.instance().socket(zmq.SUB)
        try:
            raw.setsockopt(zmq.SUBSCRIBE, b"")
            raw.connect(loop_publisher.endpoint)
            _step_until(loop, lambda: worker.frames_wanted)
        finally:
            raw.close(linger=0)
    assert worker.counter_dict()["events_in"] == sum(len(b) for b in batches[:3])


def test_worker_stage_keeps_running_through_garbage(tiny_checkpoint, stage_env, tmp_path):
    events_endpoint, predictions_endpoint = f"ipc://{tmp_path}/ev", f"ipc://{tmp_path}/pr"
    sensor = SensorSize(128, 128)
    with Publisher(events_endpoint) as publisher, Subscriber(predictions_endpoint, ("prediction",)) as consumer:
        worker = subprocess.Popen(
            [sys.executable, "-m", "inference.worker_stage", "--sub", events_endpoint, "--pub", predictions_endpoint,
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
            publisher.publish_json(Kind.STATUS, {"type": "end", "events_sent": len(good) + 5000}, reliable=True)
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


def _publish_live(publisher: Publisher, sensor: SensorSize, stop: threading.Event, sent: list[int]) -> None:
    """A live source: 2 ms packets in real time and a stats message (cumulative ``events_sent``)
    every 0.2 s, until ``stop``."""
    start = time.monotonic()
    first = 0
    next_stats = 0.2
    while not stop.is_set():
        packet = synthetic_events(first, first + 2_000, 50_000, sensor, seed=first)
        delay = start + first * 1e-6 - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a real-time source, not synchronisation
        publisher.publish_events(packet, sensor)
        sent[0] += len(packet)
        first += 2_000
        if first * 1e-6 >= next_stats:
            publisher.publish_json(Kind.STATUS, {"type": "stats", "events_sent": sent[0]})
            next_stats += 0.2


def test_headless_reports_a_killed_and_restarted_worker_as_a_gap(tiny_checkpoint, stage_env, tmp_path):
    events_endpoint, predictions_endpoint = f"ipc://{tmp_path}/ev", f"ipc://{tmp_path}/pr"
    command = [sys.executable, "-m", "inference.worker_stage", "--sub", events_endpoint, "--pub", predictions_endpoint,
               "--checkpoint", str(tiny_checkpoint), "--backend", TEST_BACKEND, "--wait-subscribers", "1",
               "--frame-fps", "0"]  # fmt: skip
    sensor = SensorSize(64, 64)
    recorder = HeadlessRecorder()
    stop, sent = threading.Event(), [0]
    workers: list[subprocess.Popen] = []

    def record_until(count: int, worker_index: int, timeout_s: float = 90) -> None:
        """Record until ``count`` predictions came from the worker_index-th worker id seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.recv(100)
            if message is not None:
                recorder.add(message, now_us())
            if len(recorder.worker_ids) > worker_index:
                if sum(w == worker_index for w in recorder.prediction_worker) >= count:
                    return
        raise AssertionError(f"no {count} predictions from worker {worker_index + 1}: {recorder.worker_ids}")

    with Publisher(events_endpoint) as publisher, \
            Subscriber(predictions_endpoint, ("prediction",), rcvhwm=10_000) as consumer:  # fmt: skip
        sender = threading.Thread(target=_publish_live, args=(publisher, sensor, stop, sent))
        try:
            workers.append(subprocess.Popen(command, cwd=REPO, env=stage_env, stderr=subprocess.DEVNULL))
            assert publisher.wait_for_subscribers(1, b"events", timeout_s=120), "the worker never subscribed"
            sender.start()
            record_until(10, 0)
            workers[0].kill()  # SIGKILL: no goodbye, the socket files stay behind
            workers[0].wait()
            killed_us = now_us()
            workers.append(subprocess.Popen(command, cwd=REPO, env=stage_env, stderr=subprocess.DEVNULL))
            record_until(10, 1)
        finally:
            stop.set()
            if sender.is_alive():
                sender.join()
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                worker.wait()
    recorder.stopped_us = now_us()
    report = recorder.report(str(tiny_checkpoint), 0.0)
    assert report["worker_restarts"] == 1 and len(report["worker_ids"]) == 2
    restart_gaps = [gap for gap in report["gaps"] if gap["reason"] == "worker restarted"]
    assert len(restart_gaps) == 1, report["gaps"]
    gap = restart_gaps[0]
    assert gap["duration_s"] > report["gap_threshold_s"] == 1.0
    assert gap["start_s"] <= (killed_us - recorder.first_us) / 1e6 <= gap["start_s"] + gap["duration_s"]
    # The second worker joined a running stream: what was sent before it is not counted as lost.
    assert report["events_lost"] == 0 and report["events_dropped"] == 0
    assert 0 < report["events_in"] < sent[0] and report["windows"] >= 20
    summary = format_summary(report)
    assert "| worker restarts | 1 |" in summary and "worker restarted" in summary


def test_a_silent_stretch_keeps_predictions_going_and_a_pause_is_a_gap(tiny_checkpoint, stage_env, tmp_path):
    """Real source stage replaying a file with 0.9 s without events (its clock messages close the
    windows), paused for 1.5 s through its control socket; real worker stage; the headless recorder."""
    from stream.formats.aedat4 import write_aedat4
    from stream.transport.control import ControlClient

    sensor = SensorSize(128, 128)
    first, second = synthetic_events(0, 1_000_000, 50_000, sensor), synthetic_events(1_900_000, 3_000_000, 50_000, sensor, 1)
    path = tmp_path / "silent.aedat4"
    write_aedat4(path, np.concatenate([first.view(np.uint8), second.view(np.uint8)]).view(first.dtype), sensor)
    events_endpoint, predictions_endpoint, control = (f"ipc://{tmp_path}/{name}" for name in ("ev", "pr", "ctl"))
    commands = [
        [sys.executable, "-m", "inference.worker_stage", "--sub", events_endpoint, "--pub", predictions_endpoint,
         "--checkpoint", str(tiny_checkpoint), "--backend", TEST_BACKEND, "--wait-subscribers", "1", "--frame-fps", "0"],
        [sys.executable, "-m", "stream.source_stage", "--source", f"file:{path}", "--pub", events_endpoint, "--speed", "1",
         "--wait-subscribers", "1", "--control", control, "--quiet"],
    ]  # fmt: skip
    recorder = HeadlessRecorder()
    stages = []
    with Subscriber(predictions_endpoint, ("prediction",), rcvhwm=10_000) as consumer, ControlClient(control) as client:

        def record_while(condition, timeout_s: float = 90) -> None:
            deadline = time.monotonic() + timeout_s
            while condition() and not recorder.ended:
                assert time.monotonic() < deadline, "the pipeline stalled"
                if (message := consumer.recv(50)) is not None:
                    recorder.add(message, now_us())

        try:
            stages = [subprocess.Popen(command, cwd=REPO, env=stage_env, stderr=subprocess.DEVNULL) for command in commands]
            record_while(lambda: not recorder.window_end_us or max(recorder.window_end_us) < 1_500_000)
            assert client.request({"cmd": "pause"}, timeout_s=10)["ok"]
            paused_at = time.monotonic()
            record_while(lambda: time.monotonic() < paused_at + 0.3)  # what was on its way arrives
            newest_at_pause = max(recorder.window_end_us)
            record_while(lambda: time.monotonic() < paused_at + 1.5)
            newest_after_pause = max(recorder.window_end_us)
            assert client.request({"cmd": "resume"}, timeout_s=10)["ok"]
            record_while(lambda: True)  # until the end message
        finally:
            for stage in stages:
                if stage.poll() is None:
                    stage.terminate()
                stage.wait(timeout=30)
    recorder.stopped_us = now_us()
    report = recorder.report(str(tiny_checkpoint), 0.0)
    assert report["ended"] and report["events_in"] == len(first) + len(second) and report["events_dropped"] == 0
    ends = np.array(recorder.window_end_us)
    silent = (ends >= 1_100_000) & (ends <= 1_900_000)  # windows (100 ms) holding no event
    assert silent.sum() >= 8, ends.tolist()  # the source's clock closed them: 17 were due
    assert (np.array(recorder.stable_index)[silent] == NO_GESTURE_INDEX).all()
    assert newest_after_pause == newest_at_pause  # nothing advanced while paused
    assert [gap["reason"] for gap in report["gaps"]] == ["no predictions"], report["gaps"]
    assert 1.2 <= report["gaps"][0]["duration_s"] < 5 and report["worker_restarts"] == 0


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
    assert report["stage_restarts"] == {"worker": 0, "source": 0} and report["failures"] == []
    assert "| compute latency" in result.stdout


def test_replayed_file_is_processed_completely_and_ends_by_itself(tiny_checkpoint, stage_env, tmp_path):
    from stream.formats.aedat4 import write_aedat4

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
