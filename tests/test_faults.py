"""Faults of the live pipeline, with real processes and sockets: a DV network server that disappears
and comes back (the source reconnects, the rest keeps running), and a consumer that stops reading
(it alone loses messages; no latency growth for the others)."""

from __future__ import annotations

import re
import signal
import threading
import time

import numpy as np
import pytest
from helpers import (
    WORKER_TOPICS,
    alive,
    children_of,
    free_port,
    kill,
    line_reader,
    random_events,
    rest_of,
    start_dv_server,
    start_launch,
    start_worker,
    stop_process,
    wait_for_line,
)

from stream.events import SensorSize
from stream.transport.sockets import Publisher, Subscriber
from stream.transport.wire import Kind, now_us

WAIT_S = 60.0  # bound on every wait for a real signal (model loading on a busy 2-core machine)


def start_fault_server(port: int, start_us: int):
    """A DV server process on a 128x128 sensor: 2k events/s, alternating polarity."""
    return start_dv_server(port, start_us, sensor=(128, 128), x_step=10, y_step=5, step_us=500, alternate=True,
                           camera="FaultCam")  # fmt: skip


PROGRESS = re.compile(r"^(\d+) windows \(\d+ skipped\), (\d+) events")


def wait_for_progress(lines, more_than: tuple[int, int], timeout_s: float) -> tuple[int, int]:
    """Wait for a headless progress line with more windows AND events than ``more_than``."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no progress beyond {more_than} windows/events within {timeout_s} s"
        match = PROGRESS.match(wait_for_line(lines, " windows (", timeout_s=remaining))
        seen = (int(match.group(1)), int(match.group(2)))
        if seen[0] > more_than[0] and seen[1] > more_than[1]:
            return seen


@pytest.mark.slow
def test_network_server_lost_and_back_the_source_reconnects_and_the_rest_keeps_running(tiny_checkpoint, stage_env):
    port = free_port()
    server = start_fault_server(port, 1_000_000)
    launcher = start_launch(stage_env, "--source", f"dv:127.0.0.1:{port}", "--checkpoint", tiny_checkpoint)
    try:
        lines = line_reader(launcher.stdout)
        before = wait_for_progress(lines, (0, 0), timeout_s=120)
        stages = sorted(children_of(launcher.pid))
        kill(server)
        wait_for_line(lines, f"DV stream 127.0.0.1:{port} lost; reconnecting", timeout_s=WAIT_S)
        lost_at = wait_for_progress(lines, (-1, -1), timeout_s=WAIT_S)
        server = start_fault_server(port, 1_000)  # a new server whose clock starts earlier: the source rebases
        wait_for_line(lines, f"DV stream 127.0.0.1:{port} reconnected", timeout_s=WAIT_S)
        wait_for_progress(lines, (max(before[0], lost_at[0]), max(before[1], lost_at[1])), timeout_s=WAIT_S)
        assert sorted(children_of(launcher.pid)) == stages, "a stage was restarted: the source should reconnect by itself"
        assert all(alive(pid) for pid in stages)
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=10) == 130
        rest = rest_of(lines)
    finally:
        stop_process(launcher)
        kill(server)
    assert not any("Traceback" in line or "exited with code" in line for line in rest), "".join(rest)[-3000:]


# --- a slow consumer --------------------------------------------------------------------------------

SENSOR = SensorSize(128, 128)
STRIDE_US = 25_000  # 40 predictions/s (the tiny model's bin): a stalled reader's queues overflow after ~5 s
STALL_S = 9.0


def publish_in_real_time(publisher: Publisher, stop: threading.Event) -> None:
    """Events at 100k/s in 5 ms packets, paced on the wall clock, until ``stop``."""
    packet_us, start, first = 5_000, time.monotonic(), 0
    while not stop.is_set():
        delay = start + first * 1e-6 - time.monotonic()
        if delay > 0 and stop.wait(delay):  # pacing a real-time source, not synchronisation
            return
        publisher.publish_events(random_events(SENSOR, first, first + packet_us, rate_hz=100_000, seed=first), SENSOR)
        first += packet_us


class FastConsumer(threading.Thread):
    """Reads predictions as they come; keeps (receive time s, end-to-end latency ms) of each."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.subscriber = Subscriber(endpoint, WORKER_TOPICS)
        self.latencies: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            message = self.subscriber.recv(100)
            if message is not None and message.kind == Kind.PREDICTION:
                received = now_us()
                self.latencies.append((time.monotonic(), (received - message.data["timing"]["source_send_us"]) / 1000))

    def between(self, start_s: float, end_s: float) -> np.ndarray:
        return np.array([ms for at, ms in list(self.latencies) if start_s <= at < end_s])


def read_all(subscriber: Subscriber) -> int:
    """Read what is queued (bounded: messages keep coming); how many were read."""
    for count in range(100_000):
        if subscriber.recv(0) is None:
            return count
    return count


@pytest.mark.slow
def test_a_stalled_consumer_loses_messages_alone_and_does_not_slow_the_others(tiny_checkpoint, stage_env, tmp_path):
    """Two consumers of the worker; one stops reading for a while. ZeroMQ's high-water marks drop
    messages for it alone: the other loses none and its latency does not grow."""
    events_endpoint, predictions_endpoint = f"ipc://{tmp_path}/events", f"ipc://{tmp_path}/predictions"
    stop = threading.Event()
    with Publisher(events_endpoint, stop=stop) as publisher:
        worker = start_worker(events_endpoint, predictions_endpoint, tiny_checkpoint, stage_env, "--stride-us", STRIDE_US,
                              wait_subscribers=2)  # fmt: skip
        fast = FastConsumer(predictions_endpoint)
        slow = Subscriber(predictions_endpoint, WORKER_TOPICS, rcvhwm=10)
        sender = threading.Thread(target=publish_in_real_time, args=(publisher, stop), daemon=True)
        try:
            fast.start()
            assert publisher.wait_for_subscribers(1, Kind.EVENTS.topic, timeout_s=120), "the worker never subscribed"
            sender.start()
            deadline = time.monotonic() + WAIT_S
            while len(fast.latencies) < 80:  # 2 s of predictions: the worker is warm
                assert time.monotonic() < deadline, "no predictions"
                read_all(slow)  # the slow consumer still keeps up here
                stop.wait(0.05)  # the slow consumer's reading interval
            read_all(slow)
            received_before, lost_before = slow.stats.received, slow.stats.lost
            stall_start = time.monotonic()
            stop.wait(STALL_S)  # the stall being tested: the slow consumer reads nothing
            stall_end = time.monotonic()
            resume_end = time.monotonic() + 1.0
            while time.monotonic() < resume_end:  # reading again: what was queued, then live messages
                slow.recv(100)
        finally:
            stop.set()
            fast.stop.set()
            fast.join(timeout=10)
            sender.join(timeout=10)
            fast.subscriber.close()
            slow.close()
            stop_process(worker)

    # The stalled reader lost messages (the high-water mark dropped them for it alone) ...
    assert slow.stats.received > received_before and slow.stats.lost > lost_before
    # ... the other consumer lost none and its latency did not grow.
    assert fast.subscriber.stats.lost == 0
    before = fast.between(stall_start - 2.0, stall_start)
    during = fast.between(stall_start, stall_end)
    assert len(during) >= 0.5 * STALL_S * 1e6 / STRIDE_US, f"only {len(during)} predictions during the stall"
    assert np.median(during) < 2 * np.median(before) + 20, (np.median(before), np.median(during))
    assert np.percentile(during, 99) < np.percentile(before, 99) + 250, (np.percentile(before, 99), np.percentile(during, 99))
