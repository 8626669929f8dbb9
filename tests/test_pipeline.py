"""The streaming pipeline: smoothing, report statistics, the worker (in process and as a stage),
and launch.py end to end on the simulator and on a replayed file. Real sockets, real backends."""

from __future__ import annotations

import json
import os
import platform
import threading
import time

import numpy as np
import pytest
from helpers import (
    TEST_BACKEND,
    WORKER_TOPICS,
    drain,
    is_status,
    predictions_of,
    random_events,
    receive_until,
    run_launch,
    start_source,
    start_worker,
    stop_process,
)

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
from stream.transport.sockets import Publisher, Subscriber
from stream.transport.wire import Kind, encode_events, now_us
from training import BUILTIN_CHECKPOINT

# --- smoothing and statistics --------------------------------------------------------------------

SEGMENTS = [GestureSegment(2, 1_000_000, 2_000_000), GestureSegment(5, 3_000_000, 4_000_000)]


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


def test_window_truth_counts_only_windows_fully_inside_a_gesture_and_accuracy_only_those():
    start = np.array([900_000, 1_000_000, 1_500_000, 1_900_000, 3_100_000, 4_500_000])
    truth = window_truth(start, start + 200_000, SEGMENTS)
    assert truth.tolist() == [-1, 2, 2, -1, 5, -1]  # fully inside only
    assert window_accuracy(np.array([0, 2, 1, 2, 5, 5]), truth) == (pytest.approx(2 / 3), 3)
    assert window_accuracy(np.array([0, 1]), np.array([-1, -1])) == (None, 0)


def test_time_to_decision_is_measured_from_the_gesture_start_to_the_first_correct_stable_label():
    end = np.array([900_000, 1_000_000, 1_500_000, 1_900_000, 3_100_000, 4_500_000]) + 200_000
    stable = np.array([-1, -1, 2, 2, 5, 5])
    decided, undecided = times_to_decision_ms(end, stable, SEGMENTS)
    assert decided == [700.0, 300.0] and undecided == 0
    assert times_to_decision_ms(end, np.full(6, -1), SEGMENTS) == ([], 2)


def test_latency_summary_percentiles():
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


def test_worker_infers_the_newest_window_and_counts_the_rest(tiny_backend):
    model, metadata = tiny_backend
    worker = InferenceWorker(model, metadata, WorkerConfig())
    sensor = SensorSize(128, 128)
    events = random_events(sensor, 0, 1_000_000, rate_hz=200_000)
    worker.push(events, sensor, send_us=1, recv_us=2)
    prediction = worker.infer()
    assert prediction["window"]["end_us"] == events["t"][-1] // 50_000 * 50_000  # the newest due window
    assert worker.infer() is None  # nothing newer
    counters = prediction["counters"]
    assert counters["windows"] == 1 and counters["windows_skipped"] == 18  # windows end at 50, 100, ... 950 ms
    assert counters["events_in"] == len(events) and counters["events_dropped"] == 0
    assert counters["events_binned"] + counters["events_unused"] + counters["events_unmapped"] == len(events)
    assert len(prediction["probabilities"]) == 11 and abs(sum(prediction["probabilities"]) - 1) < 1e-3


def test_a_new_sensor_size_rebuilds_the_binner_and_the_counters_keep_adding_up(tiny_backend):
    model, metadata = tiny_backend
    worker = InferenceWorker(model, metadata, WorkerConfig())
    first = random_events(SensorSize(128, 128), 0, 1_000_000, rate_hz=200_000)
    worker.push(first, SensorSize(128, 128), 1, 2)
    davis = SensorSize(346, 260)
    worker.push(random_events(davis, 1_000_000, 1_200_000, rate_hz=100_000), davis, 3, 4)
    assert worker.counters.sensor_changes == 1 and worker.sensor == davis
    counters = worker.counter_dict()
    assert counters["events_in"] == len(first) + 20_000
    assert counters["events_binned"] + counters["events_unused"] + counters["events_unmapped"] == len(first) + 20_000
    assert worker.infer()["sensor"] == list(davis)


def test_a_batch_of_packets_bins_like_packets_one_by_one(tiny_backend):
    model, metadata = tiny_backend
    sensor = SensorSize(64, 64)
    events = random_events(sensor, 0, 600_000, rate_hz=100_000)
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


def test_a_batch_is_split_at_the_packet_that_makes_the_newest_window_due(tiny_backend):
    """Bin up to the packet that makes the newest window due, infer, then the rest."""
    model, metadata = tiny_backend
    sensor = SensorSize(64, 64)
    events = random_events(sensor, 0, 600_000, rate_hz=100_000)
    packets = [Packet(chunk, i, 1000 + i) for i, chunk in enumerate(np.array_split(events, 40))]
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


def test_events_outside_the_sensor_are_dropped_and_counted_not_binned(tiny_backend):
    model, metadata = tiny_backend
    worker = InferenceWorker(model, metadata, WorkerConfig(all_windows=True))
    sensor = SensorSize(64, 64)
    bad = make_events([10, 20, 30, 40], [5, 64, -1, 7], [5, 3, 3, 70_00], [1, 0, 1, 2])  # only the first is valid
    worker.push(bad, sensor, 0, 0)
    worker.flush()
    counters = worker.counter_dict()
    assert counters["events_in"] == 4 and counters["dropped_out_of_sensor"] + counters["dropped_bad_polarity"] == 3
    assert counters["events_binned"] + counters["events_unused"] + counters["events_unmapped"] == 1
    window, _, _ = worker._queue[0]
    assert window.events == 1 and window.frames.sum() > 0  # the valid event, and only it, is in the window


class SlowBackend:
    """Test-only: the real backend plus a sleep, to overload the worker on purpose."""

    def __init__(self, backend, delay_s: float) -> None:
        self.backend, self.delay_s, self.name = backend, delay_s, "slow-" + backend.name

    def predict(self, frames):
        time.sleep(self.delay_s)  # the fault being simulated: inference takes this long
        return self.backend.predict(frames)


def _publish_paced(publisher: Publisher, sensor: SensorSize, duration_us: int, packet_us: int) -> int:
    """Publish random packets in real time (one every packet_us) then the end message."""
    sent = 0
    start = time.monotonic()
    for first in range(0, duration_us, packet_us):
        packet = random_events(sensor, first, first + packet_us, rate_hz=100_000, seed=first)
        delay = start + first * 1e-6 - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a real-time source, not synchronisation
        publisher.publish_events(packet, sensor)
        sent += len(packet)
    publisher.publish_status({"type": "end", "events_sent": sent}, reliable=True)
    return sent


def test_overloaded_worker_skips_windows_and_keeps_latency_bounded(tiny_backend, tmp_path):
    model, metadata = tiny_backend
    delay_s = 0.15
    worker = InferenceWorker(SlowBackend(model, delay_s), metadata, WorkerConfig(stride_us=25_000))
    sensor = SensorSize(64, 64)
    endpoint = f"ipc://{tmp_path}/events"
    # Queue room for the whole 1.5 s (750 packets): the test is about skipping windows, and a CI box
    # that starves this thread for > 0.4 s (the default 100 + 100 packets) must not turn into loss.
    with Publisher(endpoint) as publisher, Subscriber(endpoint, ("events", "status"), rcvhwm=1_000) as subscriber, \
            Publisher(f"ipc://{tmp_path}/predictions") as loop_publisher, \
            Subscriber(loop_publisher.endpoint, ("prediction",)) as consumer:  # fmt: skip
        assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
        assert loop_publisher.wait_for_subscribers(1, b"prediction", timeout_s=10)
        sender = threading.Thread(target=_publish_paced, args=(publisher, sensor, 1_500_000, 2_000))
        sender.start()
        loop = WorkerLoop(worker, subscriber, loop_publisher)
        loop.run(duration_s=30)
        sender.join()
        predictions = predictions_of(drain(consumer))
    counters = worker.counter_dict()
    assert loop.ended
    assert counters["windows_skipped"] > counters["windows"] > 3  # 60 windows due, ~10 inferred
    assert counters["events_lost"] == 0 and counters["packets_lost"] == 0
    assert len(predictions) == counters["windows"]
    # The backlog never builds up: compute latency stays near one inference (never seconds).
    compute = [p["timing"]["compute_ms"] for p in predictions]
    assert max(compute) < 1000 * delay_s + 600


def _publish_then_fall_silent(publisher: Publisher, sensor: SensorSize, phases: dict) -> None:
    """0.3 s of events at once, then clock messages every 20 ms (the source's watermark: last
    event time + wall time since): 0.6 s silent, 0.4 s paused, then a malformed clock and the end."""
    events = random_events(sensor, 0, 300_000, rate_hz=50_000)
    publisher.publish_events(events, sensor)
    last_t = int(events["t"][-1])
    phases["last_t"] = last_t
    start = time.monotonic()
    clock = last_t
    while (elapsed := time.monotonic() - start) < 1.0:
        paused = elapsed >= 0.6
        if paused and "paused_at_t" not in phases:
            phases["paused_at_t"] = clock
        if not paused:
            clock = last_t + int(elapsed * 1e6)
        publisher.publish_status({"type": "clock", "time_us": clock, "paused": paused})
        time.sleep(0.02)  # the clock's own pace (every 20 ms of wall time), not synchronisation
    publisher.publish_status({"type": "clock", "time_us": "soon", "paused": False})  # malformed
    publisher.publish_status({"type": "end", "events_sent": len(events)}, reliable=True)


def test_clock_messages_close_windows_while_the_source_is_silent(tiny_backend, tmp_path):
    model, metadata = tiny_backend
    # Threshold 0: every window with events gets a label, so "no gesture" can only come from emptiness.
    worker = InferenceWorker(model, metadata, WorkerConfig(smoothing=SmoothingConfig(threshold=0.0)))
    sensor = SensorSize(64, 64)
    phases: dict = {}
    with Publisher(f"ipc://{tmp_path}/ev") as publisher, Subscriber(publisher.endpoint, ("events", "status")) as subscriber, \
            Publisher(f"ipc://{tmp_path}/pr") as loop_publisher, \
            Subscriber(loop_publisher.endpoint, ("prediction",), rcvhwm=10_000) as consumer:  # fmt: skip
        assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
        assert loop_publisher.wait_for_subscribers(1, b"prediction", timeout_s=10)
        sender = threading.Thread(target=_publish_then_fall_silent, args=(publisher, sensor, phases))
        sender.start()
        loop = WorkerLoop(worker, subscriber, loop_publisher)
        loop.run(duration_s=30)
        sender.join()
        predictions = predictions_of(drain(consumer))
    assert loop.ended and worker.counters.clocks_in >= 20
    assert worker.counter_dict()["rejected"] == {"bad_status": 1}  # the malformed clock, refused by the transport
    ends = [p["window"]["end_us"] for p in predictions]
    # Windows kept closing while no event came, up to the clock of the pause (not beyond) ...
    assert max(ends) >= phases["last_t"] + 300_000, (phases, ends)
    assert max(ends) <= phases["paused_at_t"] + 50_000
    # ... and a window without events is "no gesture", whatever the model says.
    empty = [p for p in predictions if p["window"]["events"] == 0]
    assert len(empty) >= 2 and all(p["stable"]["index"] == NO_GESTURE_INDEX for p in empty)
    assert all(p["stable"]["index"] != NO_GESTURE_INDEX for p in predictions if p["window"]["events"] > 0)
    assert all(p["worker_id"] == worker.worker_id for p in predictions)


def _step_until(loop: WorkerLoop, condition, timeout_s: float = 20) -> None:
    """Run the worker loop until ``condition()`` holds (a real signal: messages arriving)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the worker loop never got there"
        loop.step(timeout_ms=20)


def test_a_source_started_again_restarts_the_windows_even_within_a_second(tiny_backend, tmp_path):
    """Two real source publishers, one after the other, on one endpoint: the second starts its
    stream time again at 0, only 0.6 s behind the first (under TIME_RESET_US). Its events must be
    binned into its own windows, not dropped as going backwards."""
    model, metadata = tiny_backend
    worker = InferenceWorker(model, metadata, WorkerConfig(all_windows=True))
    sensor = SensorSize(64, 64)
    first = random_events(sensor, 0, 600_000, rate_hz=50_000)
    second = random_events(sensor, 0, 400_000, rate_hz=50_000, seed=1)
    endpoint = f"ipc://{tmp_path}/events"
    with Subscriber(endpoint, ("events", "status")) as subscriber, \
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
            publisher.publish_status({"type": "end", "events_sent": len(second)}, reliable=True)
            loop.run(duration_s=30)
        predictions = predictions_of(drain(consumer))
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


def test_the_batch_holding_a_new_runs_first_packet_is_binned_whole(tiny_backend):
    """Never split at a window: the windows start again at that packet, whatever its time."""
    model, metadata = tiny_backend
    worker = InferenceWorker(model, metadata, WorkerConfig())
    sensor = SensorSize(64, 64)
    worker.push(random_events(sensor, 0, 600_000, rate_hz=50_000, seed=2), sensor, 0, 0)
    events = random_events(sensor, 0, 300_000, rate_hz=50_000)
    packets = [Packet(chunk, 0, 0, restart=i == 2) for i, chunk in enumerate(np.array_split(events, 4))]
    assert worker.split_at_newest_window(packets) == (packets, [])
    plain = [packet._replace(restart=False) for packet in packets]
    head, rest = worker.split_at_newest_window(plain)
    assert rest and len(head) + len(rest) == len(plain)  # without the restart flag it is split


def test_an_idle_worker_connects_again_after_an_oversized_message(tiny_backend, tmp_path):
    """ZeroMQ closes a connection for good when a message is over the subscriber's size limit;
    nothing arrives on it any more, so the idle worker loop itself must connect again."""
    model, metadata = tiny_backend
    worker = InferenceWorker(model, metadata, WorkerConfig())
    sensor = SensorSize(64, 64)
    small = random_events(sensor, 0, 10_000, rate_hz=100_000)
    oversized = random_events(sensor, 10_000, 50_000, rate_hz=100_000)
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


def test_the_end_reaches_a_consumer_whose_queue_overflowed(tiny_backend, tmp_path):
    """ZeroMQ silently skips a subscriber whose queue overflowed on a dropping socket: the worker's
    end message is sent again until the consumer, stalled while messages piled up, has it and left."""
    model, metadata = tiny_backend
    worker = InferenceWorker(model, metadata, WorkerConfig())
    sensor = SensorSize(64, 64)
    events = random_events(sensor, 0, 300_000, rate_hz=50_000)
    got: list = []
    with Publisher(f"ipc://{tmp_path}/ev") as publisher, Subscriber(publisher.endpoint, ("events", "status")) as subscriber, \
            Publisher(f"ipc://{tmp_path}/pr", sndhwm=4) as loop_publisher:  # fmt: skip
        consumer = Subscriber(loop_publisher.endpoint, WORKER_TOPICS, rcvhwm=4)
        assert publisher.wait_for_subscribers(1, b"events", timeout_s=10)
        assert loop_publisher.wait_for_subscribers(1, Kind.PREDICTION.topic, timeout_s=10)
        loop = WorkerLoop(worker, subscriber, loop_publisher)
        publisher.publish_events(events, sensor)
        publisher.publish_status({"type": "end", "events_sent": len(events)}, reliable=True)
        loop.run(duration_s=30)
        for seq in range(5_000):  # a burst the stalled consumer cannot hold (2 kB each, 10 MB)
            loop_publisher.publish_status({"type": "stats", "seq": seq, "pad": "x" * 2_000})
        release = threading.Event()

        def consume() -> None:  # stalled until the end was first sent, then reads until the end and leaves
            release.wait(30)
            with consumer:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any(is_status(m, "end") for m in got):
                    if (message := consumer.recv(100)) is not None:
                        got.append(message)

        reader = threading.Thread(target=consume)
        reader.start()
        threading.Timer(0.5, release.set).start()  # the consumer stalls for 0.5 s: the fault being simulated
        started = time.monotonic()
        all_left = loop.publish_end(wait_s=20)
        reader.join()
    assert loop.ended and all_left and time.monotonic() - started < 20
    assert consumer.stats.lost > 0  # the burst overflowed its queue ...
    assert is_status(got[-1], "end") and got[-1].data.fields["counters"]["events_in"] == len(events)  # ... the end did not


# --- the worker stage (a process) ----------------------------------------------------------------


def test_worker_stage_keeps_running_through_garbage(tiny_checkpoint, stage_env, tmp_path):
    events_endpoint, predictions_endpoint = f"ipc://{tmp_path}/ev", f"ipc://{tmp_path}/pr"
    sensor = SensorSize(128, 128)
    with Publisher(events_endpoint) as publisher, Subscriber(predictions_endpoint, WORKER_TOPICS) as consumer:
        worker = start_worker(events_endpoint, predictions_endpoint, tiny_checkpoint, stage_env)
        try:
            assert publisher.wait_for_subscribers(1, b"events", timeout_s=120), "the worker never subscribed"
            assert publisher.wait_for_subscribers(1, b"status", timeout_s=10)
            good = random_events(sensor, 0, 400_000, rate_hz=50_000)
            garbage = [
                [b"events", b"short", b""],  # short_header
                [b"events", b"\x00" * 40, b"x" * 16],  # bad_magic
                [b"nonsense", b"1", b"2", b"3"],  # a topic nobody subscribed to: filtered by ZeroMQ
                encode_events(good[:10], sensor, 0)[:2] + [b"\xff" * 160],  # coordinates outside the sensor
                [b"status"] + encode_events(good[:1], sensor, 0)[1:],  # topic does not match kind
            ]
            for frames in garbage:
                publisher.send_frames(frames)
            publisher.publish_status({"type": "clock", "time_us": -1.5, "paused": False})  # bad_status
            publisher.publish_events(good, sensor)
            publisher.publish_events(random_events(sensor, 400_000, 500_000, rate_hz=50_000, seed=1), sensor)
            publisher.publish_status({"type": "end", "events_sent": len(good) + 5000}, reliable=True)
            end = receive_until(consumer, lambda m: is_status(m, "end"), 60, "end message")[-1].data.fields
            consumer.close()  # a subscriber leaves once it has read the end; then the worker exits
            assert worker.wait(timeout=30) == 0
        finally:
            stop_process(worker)
    counters = end["counters"]
    assert counters["rejected"] == {"short_header": 1, "bad_magic": 1, "bad_events": 1, "bad_topic": 1, "bad_status": 1}
    assert counters["messages_rejected"] == 5
    assert counters["events_in"] == len(good) + 5000 and counters["events_lost"] == 0
    assert counters["windows"] >= 1


def _publish_live(publisher: Publisher, sensor: SensorSize, stop: threading.Event, sent: list[int]) -> None:
    """A live source: 2 ms packets in real time and a stats message (cumulative ``events_sent``)
    every 0.2 s, until ``stop``."""
    start = time.monotonic()
    first = 0
    next_stats = 0.2
    while not stop.is_set():
        packet = random_events(sensor, first, first + 2_000, rate_hz=50_000, seed=first)
        delay = start + first * 1e-6 - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a real-time source, not synchronisation
        publisher.publish_events(packet, sensor)
        sent[0] += len(packet)
        first += 2_000
        if first * 1e-6 >= next_stats:
            publisher.publish_status({"type": "stats", "events_sent": sent[0]})
            next_stats += 0.2


def test_headless_reports_a_killed_and_restarted_worker_as_a_gap(tiny_checkpoint, stage_env, tmp_path):
    events_endpoint, predictions_endpoint = f"ipc://{tmp_path}/ev", f"ipc://{tmp_path}/pr"
    sensor = SensorSize(64, 64)
    recorder = HeadlessRecorder()
    stop, sent = threading.Event(), [0]
    workers = []

    def record_until(count: int, worker_index: int, timeout_s: float = 90) -> None:
        """Record until ``count`` predictions came from the worker_index-th worker id seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.recv(100)
            if message is not None:
                recorder.add(message, now_us())
            if len(recorder.worker_ids) > worker_index and sum(
                    w == worker_index for w in recorder.prediction_worker) >= count:  # fmt: skip
                return
        raise AssertionError(f"no {count} predictions from worker {worker_index + 1}: {recorder.worker_ids}")

    with Publisher(events_endpoint) as publisher, Subscriber(predictions_endpoint, WORKER_TOPICS, rcvhwm=10_000) as consumer:
        sender = threading.Thread(target=_publish_live, args=(publisher, sensor, stop, sent))
        try:
            workers.append(start_worker(events_endpoint, predictions_endpoint, tiny_checkpoint, stage_env))
            assert publisher.wait_for_subscribers(1, b"events", timeout_s=120), "the worker never subscribed"
            sender.start()
            record_until(10, 0)
            workers[0].kill()  # SIGKILL: no goodbye, the socket files stay behind
            workers[0].wait()
            killed_us = now_us()
            workers.append(start_worker(events_endpoint, predictions_endpoint, tiny_checkpoint, stage_env))
            record_until(10, 1)
        finally:
            stop.set()
            if sender.is_alive():
                sender.join()
            for worker in workers:
                stop_process(worker)
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
    first = random_events(sensor, 0, 1_000_000, rate_hz=50_000)
    second = random_events(sensor, 1_900_000, 3_000_000, rate_hz=50_000, seed=1)
    path = tmp_path / "silent.aedat4"
    write_aedat4(path, np.concatenate([first.view(np.uint8), second.view(np.uint8)]).view(first.dtype), sensor)
    events_endpoint, predictions_endpoint, control = (f"ipc://{tmp_path}/{name}" for name in ("ev", "pr", "ctl"))
    recorder = HeadlessRecorder()
    stages = []
    with Subscriber(predictions_endpoint, WORKER_TOPICS, rcvhwm=10_000) as consumer, ControlClient(control) as client:

        def record_while(condition, timeout_s: float = 90) -> None:
            deadline = time.monotonic() + timeout_s
            while condition() and not recorder.ended:
                assert time.monotonic() < deadline, "the pipeline stalled"
                if (message := consumer.recv(50)) is not None:
                    recorder.add(message, now_us())

        try:
            stages = [start_worker(events_endpoint, predictions_endpoint, tiny_checkpoint, stage_env),
                      start_source(f"file:{path}", events_endpoint, stage_env, "--speed", "1", "--control", control)]
            record_while(lambda: not recorder.window_end_us or max(recorder.window_end_us) < 1_500_000)
            assert client.request({"cmd": "pause"}, timeout_s=10)["ok"]
            paused_at = time.monotonic()
            record_while(lambda: time.monotonic() < paused_at + 0.3)  # what was on its way arrives
            newest_at_pause = max(recorder.window_end_us)
            record_while(lambda: time.monotonic() < paused_at + 1.5)  # the pause being measured
            newest_after_pause = max(recorder.window_end_us)
            assert client.request({"cmd": "resume"}, timeout_s=10)["ok"]
            record_while(lambda: True)  # until the end message
        finally:
            for stage in stages:
                stop_process(stage, timeout_s=30)
    recorder.stopped_us = now_us()
    report = recorder.report(str(tiny_checkpoint), 0.0)
    assert report["ended"] == "end of stream" and report["events_in"] == len(first) + len(second) and report["events_dropped"] == 0
    ends = np.array(recorder.window_end_us)
    silent = (ends >= 1_100_000) & (ends <= 1_900_000)  # windows (100 ms) holding no event
    assert silent.sum() >= 8, ends.tolist()  # the source's clock closed them: 17 were due
    assert (np.array(recorder.stable_index)[silent] == NO_GESTURE_INDEX).all()
    assert newest_after_pause == newest_at_pause  # nothing advanced while paused
    assert [gap["reason"] for gap in report["gaps"]] == ["no predictions"], report["gaps"]
    assert 1.2 <= report["gaps"][0]["duration_s"] < 5 and report["worker_restarts"] == 0


# --- launch.py end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator_run(stage_env, tmp_path_factory) -> tuple[dict, str]:
    """launch.py headless on the live simulator with the built-in checkpoint for 8 s: its report and stdout."""
    report_path = tmp_path_factory.mktemp("simulator_run") / "report.json"
    result = run_launch(stage_env, "--source", "sim", "--checkpoint", BUILTIN_CHECKPOINT, "--duration", "8",
                        "--report", report_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(report_path.read_text()), result.stdout


def test_pipeline_on_the_simulator_reports_latencies_counts_and_the_truth(simulator_run):
    report, stdout = simulator_run
    for key in ("latency_ms", "e2e_latency_ms", "windows", "windows_skipped", "events_in", "events_dropped",
                "event_rate", "backend", "checkpoint", "accuracy", "time_to_decision_ms"):  # fmt: skip
        assert key in report, key
    assert report["windows"] >= 40 and report["events_in"] > 10_000 and report["event_rate"] > 1000
    latency, e2e = report["latency_ms"], report["e2e_latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] < 5000
    assert e2e["p50"] >= latency["p50"] * 0.5 and e2e["max"] < 10_000
    assert report["backend"].startswith(TEST_BACKEND) and report["checkpoint"] == str(BUILTIN_CHECKPOINT)
    assert report["gestures"] >= 1 and report["windows_labelled"] >= 30  # the simulator's truth came through the worker
    assert report["stage_restarts"] == {"worker": 0, "source": 0} and report["failures"] == []
    assert "| compute latency" in stdout and "| accuracy (windows inside gestures) |" in stdout
    # the built-in's window follows the noise: the simulator's room (0.02-1 Hz per pixel) keeps the longest, 5 ms
    noise = report["background_activity"]
    assert noise["window_us"] == 5_000 and 0 <= noise["noise_floor_hz"] <= 1.0, noise
    assert "| noise filter at the end | BA filter 5 ms (noise " in stdout
    # the simulator's stream fires on about as many pixels as the built-in's training data did
    coverage = report["input_coverage"]
    assert coverage["training_median"] == 0.025532 and coverage["windows"] >= 40, coverage
    assert coverage["verdict"] == "ok" and 0.5 <= coverage["ratio"] <= 2, coverage
    assert f"| input coverage (run median) | input coverage {coverage['ratio']:.2f}x training |" in stdout


def test_the_built_in_checkpoint_recognises_the_simulated_gestures(simulator_run):
    """The windows inside the simulator's gestures have the gesture's class (a model that outputs
    noise scores about 1 in 11, and 0 % here)."""
    report, _ = simulator_run
    assert report["accuracy"] >= 0.8, (report["accuracy"], report["windows_labelled"])


def test_replayed_file_is_processed_completely_and_ends_by_itself(tiny_checkpoint, stage_env, tmp_path):
    from stream.formats.aedat4 import write_aedat4

    sensor = SensorSize(346, 260)
    events = random_events(sensor, 5_000_000, 7_000_000, rate_hz=150_000)
    path = tmp_path / "recording.aedat4"
    write_aedat4(path, events, sensor)
    report_path = tmp_path / "report.json"
    result = run_launch(stage_env, "--source", f"file:{path}", "--speed", "max", "--checkpoint", tiny_checkpoint,
                        "--report", report_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["ended"] == "end of stream"
    assert report["events_in"] == len(events) and report["events_dropped"] == 0
    counters = report["counters"]
    assert counters["events_binned"] + counters["events_unused"] + counters["events_unmapped"] == len(events)
    assert report["sensor"] == [346, 260] and report["windows"] >= 1
    assert counters["windows"] + report["windows_skipped"] >= 39  # 2 s / 50 ms windows
