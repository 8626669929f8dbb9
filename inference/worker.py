"""The inference worker stage: ``python -m inference.worker --sub EVENTS --pub PREDICTIONS --checkpoint CK``.

Receives event packets (``stream.source``), bins them incrementally (``StreamingBinner`` built from
the checkpoint's window, sensor mapping and normalisation and the ACTUAL sensor size of the packets;
a new sensor size rebuilds it), runs the model on the newest window every stride and publishes on
``PREDICTIONS``:

* ``prediction`` JSON messages (``STATUS_KIND``, all JSON messages carry a ``"type"`` and the
  worker process's random ``worker_id``, new at every start, so a consumer sees a restart):

  - ``{"type": "prediction", ...}`` per inferred window, see ``InferenceWorker.infer``: ``seq``,
    ``class_index``, ``class_name``, ``probabilities``, ``stable`` {``index`` (-1 = no gesture),
    ``name``, ``confidence``}, ``window`` {``start_us``, ``end_us`` (stream time, µs),
    ``stride_us``, ``events``}, ``timing`` (transport clock ``time.monotonic_ns() // 1000``, µs:
    ``source_send_us`` of the message that completed the window, ``recv_us`` when the worker got
    it, ``binned_us``, ``published_us``; and ``recv_to_binned_ms``, ``inference_ms``,
    ``compute_ms`` = published - recv), ``counters`` (see ``WorkerCounters``), ``backend``,
    ``sensor``. A window without any event is "no gesture" whatever the model says (the model
    still runs and its class and probabilities are reported).
  - ``{"type": "stats", ...}`` about once a second: counters, the source's own stats, ``busy_s``
    (seconds this worker spent receiving, binning, inferring and publishing since it started) and
    ``uptime_s``.
  - ``{"type": "end", ...}`` after the source's end message, with the final counters; sent again
    (back-off) until every consumer has read it and left, at most ``END_WAIT_S``
    (``WorkerLoop.publish_end``), so a consumer whose queue overflowed gets it too.
* ``frame`` messages: the ON/OFF event counts accumulated since the previous frame at the sensor's
  resolution, uint8 ``[2, H, W]`` (channel = polarity, saturated at 255), header width/height =
  the sensor, ``count`` = 2; ``--frame-fps`` (30) per second, no more, also while the source is
  silent (empty frames, so a viewer keeps moving); none while the source is paused. Only while a
  consumer subscribes to ``frame`` (checked every ``SUBSCRIBER_CHECK_S``): otherwise the events
  are not accumulated at all (accumulating took 5.4 of 18 ns/event of the worker's binning CPU,
  346x260, 2k-event packets). The first frame after a subscription holds the events since it was
  noticed.
* ``truth`` messages forwarded unchanged from the source (gesture segments, stream time).

CurveZMQ (``--curve-keys DIR [--curve-name NAME] [--curve-server NAME]``, see ``stream.keys``):
a tcp ``--pub`` is then a CurveZMQ server that accepts only the public keys in DIR, and a tcp
``--sub`` authenticates to the source whose public key is ``DIR/SERVER.key`` (default: this
stage's own key). A bad key directory is one ``error:`` line and exit code 2, before the model loads.

A new source run (the events' sequence number goes back: a source process started again on the
same endpoint) restarts the windows at its first packet, whatever its time; so do events more than
``TIME_RESET_US`` behind the stream time (``time_resets`` counts both).

The source's clock messages ``{"type": "clock", "time_us": T, "paused": bool}`` (no event with
``t < T`` will follow) advance the windows while the source is silent, so predictions go on ("no
gesture") when a camera sees nothing; while ``paused`` nothing advances.

Latency never grows with a backlog. Each step drains the socket (whatever is queued, for at most
``DRAIN_BUDGET_S``) and bins consecutive packets in batches (one binner call per batch of up to
``MAX_BATCH_EVENTS``, not one per packet); of the last batch, the packets up to the one that
completed the newest window are binned first, then the model runs on that window and the
prediction goes out, then the rest (it only adds to windows not due yet) is binned. Windows passed over are counted (``windows_skipped``). Events are accounted
for: received, binned, unused (only in skipped windows), unmapped (outside the mapping's crop),
dropped (outside the sensor, bad polarity, time going back) and lost (the source's
``events_sent`` minus those received: ZeroMQ high-water mark overflow; a worker that joins a stream
already running counts from the source's first stats message it gets, and a source restart starts
a new count); malformed messages are counted by reason and skipped.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zmq
from numba import njit, types

from inference.smoothing import SMOOTHING_METHODS, LabelSmoother, SmoothingConfig, softmax
from inference.tensorrt_engine import BackendUnavailable
from stream.binning import SensorMapping, StreamingBinner, Window, WindowSpec, warmup
from stream.events import EVENT_DTYPE, SensorSize, empty_events
from stream.keys import add_curve_arguments, curve_from_args
from stream.source import (
    END_LINGER_MS,
    END_WAIT_S,
    STATUS_KIND,
    StageArgumentParser,
    StagePublisher,
    Stopped,
    StopRequest,
    exit_stage,
)
from stream.transport import DEFAULT_HWM, EventSubscriber, Kind, Message, now_us

log = logging.getLogger("inference.worker")

DRAIN_BUDGET_S = 0.05  # at most this long receiving queued messages before inferring the newest window
# Queued packets are binned in batches of at most this many events (512 kB, still in the CPU cache
# when binned): small packets are merged, 20k-event packets are not. Draining 10 M queued events on
# this 2-core machine took 36 ns/event of worker CPU with 2k-event packets (50 one by one) and
# 18.5 with 20k-event packets (unchanged); batches of 4 M events were slower (cache misses).
MAX_BATCH_EVENTS = 1 << 15
STATS_INTERVAL_S = 1.0
DEFAULT_FRAME_FPS = 30.0
RECV_TIMEOUT_MS = 50
TIME_RESET_US = 1_000_000  # a packet this far behind the stream time restarts the windows
SUBSCRIBER_CHECK_S = 0.1  # how often the worker looks for consumers of display frames


_ACCUMULATE_SIGNATURE = types.void(  # read-only inputs: takes writable and read-only event arrays
    types.Array(types.int16, 1, "A", readonly=True),  # x (a strided view of an EVENT_DTYPE array)
    types.Array(types.int16, 1, "A", readonly=True),  # y
    types.Array(types.int8, 1, "A", readonly=True),  # p
    types.Array(types.int32, 3, "C"),  # counts [2, H, W]
)


@njit(_ACCUMULATE_SIGNATURE, cache=True, nogil=True)  # eager: compiled (or loaded) at import, not on the first packet
def _accumulate(x, y, p, counts):  # pragma: no cover - compiled
    """counts[p, y, x] += 1 per event; events outside ``counts`` (not possible after the
    transport's checks) are skipped, never written out of bounds."""
    height, width = counts.shape[1], counts.shape[2]
    for i in range(x.shape[0]):
        xi, yi, pi = x[i], y[i], p[i]
        if 0 <= xi < width and 0 <= yi < height and 0 <= pi <= 1:
            counts[pi, yi, xi] += 1


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """One EVENT_DTYPE array, copied as bytes (``np.concatenate`` on the structured arrays would
    promote the padded dtype to a packed one, and a field-wise copy is 7x slower)."""
    return np.concatenate([np.ascontiguousarray(array).view(np.uint8) for array in arrays]).view(EVENT_DTYPE)


class Packet(NamedTuple):
    """Received events (time-ordered, checked by the transport) and when they travelled: the
    sender's ``send_us`` and this worker's ``recv_us`` (transport clock, µs). ``restart``: the
    first packet of a new source run (its sequence number went back), so the windows start again
    at it whatever its time."""

    events: np.ndarray
    send_us: int
    recv_us: int
    restart: bool = False


@dataclass
class WorkerCounters:
    """Event and window accounting of one worker (since start)."""

    events_in: int = 0  # in valid packets received
    events_binned: int = 0
    events_unused: int = 0  # only in windows that were skipped
    events_unmapped: int = 0  # outside the sensor mapping's crop
    events_dropped: int = 0  # outside the sensor + bad polarity + backwards + lost
    dropped_out_of_sensor: int = 0
    dropped_bad_polarity: int = 0
    dropped_backwards: int = 0
    events_lost: int = 0  # sent by the source, never received (high-water mark overflow)
    packets_in: int = 0
    packets_lost: int = 0  # sequence gaps
    messages_rejected: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    windows: int = 0  # inferred
    windows_skipped: int = 0  # due but passed over to stay current
    windows_in_gaps: int = 0  # silent windows inside time gaps (nothing to infer)
    sensor_changes: int = 0
    time_resets: int = 0  # windows restarted: stream time went back > TIME_RESET_US, or a new source run
    clocks_in: int = 0  # clock messages from the source
    source_restarts: int = 0  # the source's counters started again


@dataclass(frozen=True)
class WorkerConfig:
    """Worker options.

    Args:
        stride_us: time between predictions, µs (None: the checkpoint's stride).
        all_windows: infer every window (offline evaluation) instead of only the newest.
        smoothing: how the stable label is formed.
        frame_fps: display frames per second at most (0: none).
    """

    stride_us: int | None = None
    all_windows: bool = False
    smoothing: SmoothingConfig = SmoothingConfig()
    frame_fps: float = DEFAULT_FRAME_FPS


class InferenceWorker:
    """Events in, predictions out: the worker's logic without sockets.

    Args:
        backend: has ``predict(frames [B, T, 2, H, W] float32) -> logits [B, C]`` and ``name``.
        metadata: the checkpoint metadata (``classes``, ``input.window``, ``input.sensor_mapping``,
            ``input.normalisation``).
        config: worker options.
        worker_id: names this worker in every message (default: random, new at every start).
    """

    def __init__(self, backend: Any, metadata: dict[str, Any], config: WorkerConfig = WorkerConfig(),
                 worker_id: str | None = None) -> None:  # fmt: skip
        self.backend = backend
        self.config = config
        self.worker_id = worker_id or secrets.token_hex(4)
        self.classes = list(metadata["classes"])
        model_input = metadata["input"]
        window = WindowSpec.from_dict(model_input["window"])
        if config.stride_us is not None:
            window = WindowSpec(window.bins, window.bin_us, config.stride_us)
        self.window = window
        self.mapping_spec = dict(model_input["sensor_mapping"])
        self.normalisation = model_input.get("normalisation")
        self.smoother = LabelSmoother(self.classes, config.smoothing)
        self.counters = WorkerCounters()
        self.sensor: SensorSize | None = None
        self.binner: StreamingBinner | None = None
        self.pending: Window | None = None  # newest window not inferred yet
        self._pending_packet: tuple[int, int] = (0, 0)  # (send_us, recv_us) of the message completing it
        self._pending_binned_us = 0
        self._queue: list[tuple[Window, tuple[int, int], int]] = []  # all_windows mode
        self._frame_counts: np.ndarray | None = None
        # Display frames are accumulated only while someone wants them (``WorkerLoop`` turns this
        # off while no consumer subscribes to frames: the accumulation is ~30% of the binning CPU).
        self.frames_wanted = config.frame_fps > 0
        self._binner_base: dict[str, int] = {}  # counters of binners replaced or reset
        self._seq = 0
        self.backend_name = str(getattr(backend, "name", type(backend).__name__))

    # --- events -----------------------------------------------------------------------------

    def _rebuild(self, sensor: SensorSize) -> None:
        if self.sensor is not None:
            log.info("sensor size changed %s -> %s: rebuilding the binner", self.sensor, sensor)
            self.counters.sensor_changes += 1
            self._fold_binner_stats()
        self.sensor = sensor
        mapping = SensorMapping.from_dict(self.mapping_spec, sensor)
        self.binner = StreamingBinner(mapping, self.window, normalisation=self.normalisation)
        self._frame_counts = np.zeros((2, sensor.height, sensor.width), dtype=np.int32)
        self.smoother.reset()
        self.pending = None
        self._queue.clear()

    def _restart_windows(self, reason: str) -> None:
        log.info("%s: restarting the windows", reason)
        self.counters.time_resets += 1
        self._fold_binner_stats()
        self.binner.reset()
        self.smoother.reset()
        self.pending = None
        self._queue.clear()

    def push(self, events: np.ndarray, sensor: SensorSize, send_us: int, recv_us: int) -> None:
        """Bin one packet (time-ordered, checked events) that the source sent at ``send_us`` and the
        worker received at ``recv_us`` (transport clock, µs)."""
        self.push_packets([Packet(events, send_us, recv_us)], sensor)

    def push_packets(self, packets: list[Packet], sensor: SensorSize) -> None:
        """Bin consecutive packets of one sensor as one batch (one binner call per run of packets;
        the first packet of a new source run (``Packet.restart``), or a packet far behind the stream
        time, starts a new run after restarting the windows)."""
        if self.sensor != sensor:
            self._rebuild(SensorSize(*sensor))
        counters = self.counters
        run: list[Packet] = []
        time_us = self.binner.time_us
        for packet in packets:
            counters.events_in += len(packet.events)
            counters.packets_in += 1
            if packet.restart and time_us is not None:
                self._bin_run(run)
                run = []
                self._restart_windows("the source started again")
                time_us = None
            if not len(packet.events):
                continue
            first_t = int(packet.events["t"][0])
            if time_us is not None and first_t < time_us - TIME_RESET_US:
                self._bin_run(run)
                run = []
                self._restart_windows(f"stream time went back {(time_us - first_t) / 1e6:.3f} s")
                time_us = None
            run.append(packet)
            time_us = max(time_us, int(packet.events["t"][-1])) if time_us is not None else int(packet.events["t"][-1])
        self._bin_run(run)

    def _bin_run(self, run: list[Packet]) -> None:
        if not run:
            return
        events = run[0].events if len(run) == 1 else _concatenate([packet.events for packet in run])
        if self.frames_wanted:
            _accumulate(events["x"], events["y"], events["p"], self._frame_counts)
        windows = self.binner.push(events, emit="all" if self.config.all_windows else "latest")
        if not windows:
            return
        # The packet that completed a window is the first one holding an event at or after its end.
        last_t = np.array([int(packet.events["t"][-1]) for packet in run], dtype=np.int64)
        last_t = np.maximum.accumulate(last_t)
        index = np.minimum(np.searchsorted(last_t, [w.end_us for w in windows], side="left"), len(run) - 1)
        self._take(windows, [(run[i].send_us, run[i].recv_us) for i in index.tolist()])

    def split_at_newest_window(self, packets: list[Packet]) -> tuple[list[Packet], list[Packet]]:
        """Split a batch (one sensor) into the packets up to the one that makes the newest window
        due and the rest, which only add events to windows not due yet: bin the first part, infer,
        then bin the rest, so the prediction does not wait for events it does not use."""
        binner = self.binner
        if self.config.all_windows or binner is None or binner.time_us is None or len(packets) < 2:
            return packets, []
        time_us = binner.time_us
        last_t = np.array([int(p.events["t"][-1]) if len(p.events) else time_us for p in packets], dtype=np.int64)
        first_t = np.array([int(p.events["t"][0]) if len(p.events) else time_us for p in packets], dtype=np.int64)
        if first_t.min() < time_us - TIME_RESET_US or any(p.restart for p in packets):
            return packets, []  # the windows restart inside this batch: bin it all
        stride = self.window.stride_us
        newest_end = int(last_t.max()) // stride * stride
        if newest_end <= time_us:
            return [], packets  # no window becomes due in this batch
        index = int(np.argmax(last_t >= newest_end))
        return packets[: index + 1], packets[index + 1 :]

    def advance(self, time_us: int, send_us: int, recv_us: int) -> None:
        """The source's clock: no event earlier than ``time_us`` (stream µs) will follow, so the
        windows ending by then close (also while the source is silent). Ignored before the first
        packet (no sensor, no binner yet)."""
        self.counters.clocks_in += 1
        if self.binner is None:
            return
        emit = "all" if self.config.all_windows else "latest"
        windows = self.binner.push(empty_events(), now_us=int(time_us), emit=emit)
        self._take(windows, [(send_us, recv_us)] * len(windows))

    def _take(self, windows: list[Window], packets: list[tuple[int, int]]) -> None:
        """Queue the windows now due; ``packets[i]`` = (send_us, recv_us) of the message that
        completed ``windows[i]``."""
        if not windows:
            return
        binned_us = now_us()
        if self.config.all_windows:
            self._queue.extend((window, packet, binned_us) for window, packet in zip(windows, packets))
            return
        if self.pending is not None:
            self.counters.windows_skipped += 1  # replaced by a newer one before it was inferred
        self.counters.windows_skipped += len(windows) - 1
        self.pending, self._pending_packet, self._pending_binned_us = windows[-1], packets[-1], binned_us

    def flush(self) -> None:
        """End of stream: close the window holding the last events so it is inferred too."""
        binner = self.binner
        if binner is None or binner.time_us is None:
            return
        stride = self.window.stride_us
        end_us = (binner.time_us // stride + 1) * stride
        emit = "all" if self.config.all_windows else "latest"
        windows = binner.push(empty_events(), now_us=end_us, emit=emit)
        self._take(windows, [(now_us(), now_us())] * len(windows))

    def _fold_binner_stats(self) -> None:
        """Add the current binner's counters to the totals (before it is replaced or reset)."""
        if self.binner is not None:
            for name, value in asdict(self.binner.stats).items():
                self._binner_base[name] = self._binner_base.get(name, 0) + value

    def binner_totals(self) -> dict[str, int]:
        """Binner counters summed over every binner this worker has used."""
        current = asdict(self.binner.stats) if self.binner is not None else {}
        return {name: self._binner_base.get(name, 0) + current.get(name, 0) for name in set(self._binner_base) | set(current)}

    # --- inference --------------------------------------------------------------------------

    def has_window(self) -> bool:
        return self.pending is not None or bool(self._queue)

    def infer(self) -> dict[str, Any] | None:
        """Run the model on the next window (the newest one unless ``all_windows``); return the
        prediction message (``"type": "prediction"``) or None when no window is due."""
        if self.config.all_windows:
            if not self._queue:
                return None
            window, packet, binned_us = self._queue.pop(0)
        else:
            if self.pending is None:
                return None
            window, packet, binned_us = self.pending, self._pending_packet, self._pending_binned_us
            self.pending = None
        start = time.perf_counter()
        logits = np.asarray(self.backend.predict(window.frames[None]))
        inference_ms = (time.perf_counter() - start) * 1000.0
        probabilities = softmax(logits.reshape(-1))
        # A window without events holds no gesture, whatever the model makes of an empty input.
        stable = self.smoother.update(probabilities) if window.events > 0 else self.smoother.silence()
        index = int(probabilities.argmax())
        self.counters.windows += 1
        send_us, recv_us = packet
        message = {
            "type": "prediction",
            "worker_id": self.worker_id,
            "seq": self._seq,
            "class_index": index,
            "class_name": self.classes[index],
            "probabilities": [round(float(v), 5) for v in probabilities],
            "stable": {"index": stable.index, "name": stable.name, "confidence": round(stable.confidence, 5)},
            "window": {"start_us": window.end_us - self.window.window_us, "end_us": window.end_us,
                       "stride_us": self.window.stride_us, "events": window.events},  # fmt: skip
            "timing": {
                "source_send_us": send_us,
                "recv_us": recv_us,
                "binned_us": binned_us,
                "recv_to_binned_ms": (binned_us - recv_us) / 1000.0,
                "inference_ms": round(inference_ms, 3),
            },
            "counters": self.counter_dict(),
            "backend": self.backend_name,
            "sensor": list(self.sensor),
        }
        self._seq += 1
        return message

    def counter_dict(self) -> dict[str, Any]:
        """The counters, with the binner's folded in."""
        counters = self.counters
        binned = self.binner_totals()
        counters.events_binned = binned.get("events_binned", 0)
        counters.events_unused = binned.get("events_unused", 0)
        counters.events_unmapped = binned.get("events_unmapped", 0)
        counters.dropped_out_of_sensor = binned.get("dropped_out_of_sensor", 0)
        counters.dropped_bad_polarity = binned.get("dropped_bad_polarity", 0)
        counters.dropped_backwards = binned.get("dropped_backwards", 0)
        counters.windows_in_gaps = binned.get("windows_in_gaps", 0)
        skipped_by_binner = binned.get("windows_skipped", 0)
        counters.events_dropped = (
            counters.dropped_out_of_sensor + counters.dropped_bad_polarity + counters.dropped_backwards + counters.events_lost
        )
        result = asdict(counters)
        result["windows_skipped"] = counters.windows_skipped + skipped_by_binner
        return result

    def want_frames(self, wanted: bool) -> None:
        """Accumulate display frames from now on (True) or not (False: ``take_frame`` gives None).
        Counts from before a pause are not carried into the next frame."""
        if wanted and not self.frames_wanted and self._frame_counts is not None:
            self._frame_counts.fill(0)
        self.frames_wanted = wanted

    def take_frame(self) -> np.ndarray | None:
        """The ON/OFF counts since the previous call as uint8 ``[2, H, W]`` (None before any packet,
        or while frames are not wanted)."""
        if self._frame_counts is None or not self.frames_wanted:
            return None
        frame = np.minimum(self._frame_counts, 255).astype(np.uint8)
        self._frame_counts.fill(0)
        return frame


class LossCount:
    """Events the source sent that never reached this worker, from the source's cumulative
    ``events_sent`` (in its stats and end messages) and the events received before that message.

    A worker that joins a running stream (its first packet has a sequence number above 0, or the
    source had sent events before any reached it) counts from the first source message with
    ``events_sent`` it gets: what was sent before it joined is not "lost". A source that starts
    again (its packet sequence or its ``events_sent`` goes back) starts a new count, added to the
    old one.
    """

    def __init__(self) -> None:
        self.lost_before = 0  # in earlier source runs
        self.restarts = 0
        self._new_run()

    def _new_run(self) -> None:
        self.received = 0
        self.base: int | None = None  # events_sent before this worker joined
        self.joined_mid: bool | None = None
        self.last_sent: int | None = None
        self.last_seq: int | None = None
        self.lost_now = 0

    @property
    def lost(self) -> int:
        return self.lost_before + self.lost_now

    def _restart(self) -> None:
        self.lost_before += self.lost_now
        self.restarts += 1
        self._new_run()

    def on_events(self, seq: int, count: int) -> None:
        """A packet (sequence number ``seq``, ``count`` events) arrived."""
        if self.last_seq is not None and seq < self.last_seq:
            self._restart()
        if self.joined_mid is None:
            self.joined_mid = seq != 0
        self.last_seq = seq
        self.received += count

    def on_sent(self, events_sent: int) -> None:
        """The source says it has sent ``events_sent`` events so far."""
        if self.last_sent is not None and events_sent < self.last_sent:
            self._restart()
        if self.base is None:
            joined_mid = self.joined_mid if self.joined_mid is not None else events_sent > 0
            self.base = events_sent - self.received if joined_mid else 0
        self.last_sent = events_sent
        self.lost_now = max(0, events_sent - self.base - self.received)


# --- the stage ------------------------------------------------------------------------------


def load_backend(checkpoint: Path, backend_name: str, device: str | None) -> tuple[Any, dict[str, Any]]:
    """The backend for ``checkpoint`` and the checkpoint's metadata."""
    from inference.backends import create_backend
    from training.checkpoint import read_metadata

    metadata = read_metadata(checkpoint)
    backend = create_backend(backend_name, checkpoint, device=device)
    return backend, metadata


class WorkerLoop:
    """Sockets around an ``InferenceWorker``: drain, bin, infer the newest window, publish.

    Args:
        worker: the logic.
        subscriber: receives ``events``, ``truth`` and the source's status messages.
        publisher: where predictions, frames, truth and status go.
    """

    def __init__(self, worker: InferenceWorker, subscriber: EventSubscriber, publisher: StagePublisher) -> None:
        self.worker = worker
        self.subscriber = subscriber
        self.publisher = publisher
        self.source_stats: dict[str, Any] = {}
        self.ended = False
        self.paused = False  # the source's last clock message said paused
        self.loss = LossCount()
        self.busy_s: Counter[str] = Counter()  # seconds spent per part of the work
        self.rejected: Counter[str] = Counter()  # malformed source messages the transport let through
        self._started = time.monotonic()
        self._frame_interval_s = 1.0 / worker.config.frame_fps if worker.config.frame_fps > 0 else None
        self._next_frame = time.monotonic()
        self._next_subscriber_check = time.monotonic()
        self._events_seq: int | None = None  # sequence number of the latest event packet
        self._next_stats = time.monotonic() + STATS_INTERVAL_S
        self._batch: list[Packet] = []
        self._batch_sensor: SensorSize | None = None
        self._batch_events = 0
        self._poller = zmq.Poller()  # waits here, so receiving time excludes waiting time
        for socket in subscriber.poll_sockets:
            self._poller.register(socket, zmq.POLLIN)

    def handle(self, message: Message) -> None:
        """Act on one received message (event packets are batched: see ``step``)."""
        if message.kind == Kind.EVENTS:
            count = len(message.events)
            if self._batch and (message.sensor_size != self._batch_sensor or self._batch_events + count > MAX_BATCH_EVENTS):
                self._bin_batch()
            self.loss.on_events(message.seq, count)
            # A sequence number going back is a new source run (the subscriber counts it in
            # stats.restarts): its stream time may start anywhere, even just behind the old one.
            restart = self._events_seq is not None and message.seq < self._events_seq
            self._events_seq = message.seq
            self._batch.append(Packet(message.events, message.send_us, now_us(), restart))
            self._batch_sensor = message.sensor_size
            self._batch_events += count
            return
        self._bin_batch()  # keep the order of events and everything else
        if message.kind == Kind.TRUTH:
            self.publisher.publish_truth(message.data)
        elif message.kind == STATUS_KIND and isinstance(message.data, dict):
            data = message.data
            kind = data.get("type")
            if kind == "clock":
                self._on_clock(data, message.send_us)
            elif kind in ("stats", "end"):
                self.source_stats = data
                sent = data.get("events_sent")
                if isinstance(sent, int) and not isinstance(sent, bool):
                    self.loss.on_sent(sent)
                    self.worker.counters.events_lost = self.loss.lost
                    self.worker.counters.source_restarts = self.loss.restarts
                if kind == "end":
                    self.ended = True

    def _on_clock(self, data: dict[str, Any], send_us: int) -> None:
        time_us, paused = data.get("time_us"), data.get("paused", False)
        if not isinstance(time_us, int) or isinstance(time_us, bool) or not isinstance(paused, bool):
            self.rejected["bad_clock"] += 1  # counted and skipped like any malformed message
            return
        self.paused = paused
        if not paused:
            self.worker.advance(time_us, send_us, now_us())

    def _bin_batch(self, packets: list[Packet] | None = None) -> None:
        """Bin ``packets`` (default: the whole batch received so far)."""
        if packets is None:
            packets, self._batch, self._batch_events = self._batch, [], 0
        if packets:
            start = time.perf_counter()
            self.worker.push_packets(packets, self._batch_sensor)
            self.busy_s["bin"] += time.perf_counter() - start

    def frame_subscribed(self) -> bool:
        """Whether a consumer subscribes to display frames (a subscription that is a prefix of the
        ``frame`` topic, the empty one included), read from this worker's XPUB socket (never waits)."""
        return self.publisher.subscribed(Kind.FRAME.topic) > 0

    def _frames_on(self) -> bool:
        return self._frame_interval_s is not None and self.worker.frames_wanted and not self.paused

    def _sync_subscriber_counters(self) -> None:
        stats = self.subscriber.stats
        rejected = Counter(stats.rejected) + self.rejected
        counters = self.worker.counters
        counters.packets_lost = stats.lost
        counters.messages_rejected = sum(rejected.values())
        counters.rejected = dict(rejected)

    def _receive(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for a message, then take whatever is queued (at most
        ``DRAIN_BUDGET_S``). While idle the subscriber is maintained: after a connection ZeroMQ
        closed for good (an oversized message, a refused handshake) nothing arrives any more, so
        only ``maintain()`` connects it again."""
        if not self._poller.poll(self.subscriber.poll_timeout_ms(timeout_ms)):
            self.subscriber.maintain()
            return
        start = time.perf_counter()
        binning = self.busy_s["bin"]  # batches binned in between count as binning, not receiving
        deadline = time.monotonic() + DRAIN_BUDGET_S
        while (message := self.subscriber.recv(0)) is not None:
            self.handle(message)
            if self.ended or time.monotonic() >= deadline:
                break
        self.busy_s["receive"] += time.perf_counter() - start - (self.busy_s["bin"] - binning)

    def step(self, timeout_ms: int = RECV_TIMEOUT_MS) -> None:
        """Receive (waiting up to ``timeout_ms``, less when a frame is due), bin, infer the newest
        window, publish; then bin the rest of the batch, publish a frame and stats when due."""
        if self._frame_interval_s is not None and time.monotonic() >= self._next_subscriber_check:
            self.worker.want_frames(self.frame_subscribed())
            self._next_subscriber_check = time.monotonic() + SUBSCRIBER_CHECK_S
        if self._frames_on() and self.worker.sensor is not None:
            timeout_ms = max(0, min(timeout_ms, round((self._next_frame - time.monotonic()) * 1000)))
        self._receive(timeout_ms)
        head, rest = self.worker.split_at_newest_window(self._batch) if self._batch else ([], [])
        self._bin_batch(head)
        self._batch, self._batch_events = rest, sum(len(p.events) for p in rest)
        if self.ended:
            self._bin_batch()
            self.worker.flush()
        self._sync_subscriber_counters()
        while self.worker.has_window():
            start = time.perf_counter()
            prediction = self.worker.infer()
            middle = time.perf_counter()
            published_us = now_us()
            timing = prediction["timing"]
            timing["published_us"] = published_us
            timing["compute_ms"] = (published_us - timing["recv_us"]) / 1000.0
            self.publisher.publish_json(STATUS_KIND, prediction)
            self.busy_s["infer"] += middle - start
            self.busy_s["publish"] += time.perf_counter() - middle
            if not self.worker.config.all_windows:
                break
        self._bin_batch()
        now = time.monotonic()
        if self._frames_on() and now >= self._next_frame:
            frame = self.worker.take_frame()
            if frame is not None:
                self.publisher.publish_raw(Kind.FRAME, frame, count=2, sensor_size=self.worker.sensor)
            self._next_frame += self._frame_interval_s
            if self._next_frame < now:  # late (a long inference): start the beat again, no burst
                self._next_frame = now + self._frame_interval_s
        if now >= self._next_stats:
            self.publisher.publish_json(STATUS_KIND, self.status("stats"))
            self._next_stats = now + STATS_INTERVAL_S

    def status(self, kind: str) -> dict[str, Any]:
        """A ``stats`` or ``end`` message."""
        return {
            "type": kind,
            "worker_id": self.worker.worker_id,
            "counters": self.worker.counter_dict(),
            "backend": self.worker.backend_name,
            "sensor": list(self.worker.sensor) if self.worker.sensor else None,
            "window": self.worker.window.to_dict(),
            "source": self.source_stats,
            "source_paused": self.paused,
            "frames_wanted": self.worker.frames_wanted,
            "busy_s": {name: round(value, 4) for name, value in self.busy_s.items()},
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> None:
        """Step until the source's end message (``ended``; then ``publish_end``), ``duration_s`` or ``stop``."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self.ended:
            if stop is not None and stop.is_set():
                return
            self.step()
            if deadline is not None and time.monotonic() >= deadline:
                return

    def publish_end(self, wait_s: float = END_WAIT_S) -> bool:
        """Publish the ``end`` message (after the source's) until every consumer of predictions has
        read it and left, at most ``wait_s`` (``StagePublisher.publish_end``: ZeroMQ silently skips
        a consumer whose queue overflowed, so one send may reach no one). True when all left."""
        self._sync_subscriber_counters()
        return self.publisher.publish_end(STATUS_KIND, self.status("end"), STATUS_KIND.topic, wait_s)


def build_parser() -> argparse.ArgumentParser:
    parser = StageArgumentParser(prog="python -m inference.worker", description="Bin events and run the gesture model.")
    parser.add_argument("--sub", required=True, help="events endpoint to connect to (the source's --pub)")
    parser.add_argument("--pub", required=True, help="endpoint to bind for predictions, frames, truth, stats")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint (.json)")
    parser.add_argument("--backend", default="auto", help="auto | tensorrt | onnxruntime | torch")
    parser.add_argument("--device", default=None, help="backend device (e.g. cuda:0)")
    parser.add_argument("--stride-us", type=int, default=None, help="time between predictions (default: checkpoint's)")
    parser.add_argument("--all-windows", action="store_true", help="infer every window (evaluation), never skip")
    parser.add_argument("--smoothing", choices=SMOOTHING_METHODS, default=SmoothingConfig.method)
    parser.add_argument("--alpha", type=float, default=SmoothingConfig.alpha, help="EMA weight of the newest window")
    parser.add_argument("--history", type=int, default=SmoothingConfig.history, help="windows voting (majority)")
    parser.add_argument("--threshold", type=float, default=SmoothingConfig.threshold, help="confidence for a stable label")
    parser.add_argument("--frame-fps", type=float, default=DEFAULT_FRAME_FPS, help="display frames per second (0: none)")
    parser.add_argument("--wait-subscribers", type=int, default=0, help="start only once N consumers subscribed")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="packets queued before the socket drops")
    parser.add_argument("--allow-remote", action="store_true", help="allow non-loopback TCP endpoints")
    add_curve_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args = build_parser().parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.checkpoint.is_file():
        raise ValueError(f"checkpoint {args.checkpoint} not found")
    if args.frame_fps < 0 or args.frame_fps != args.frame_fps:
        raise ValueError(f"--frame-fps must be >= 0, got {args.frame_fps}")
    curve = curve_from_args(args)  # before the model loads: a bad key directory is one error line at once
    config = WorkerConfig(
        stride_us=args.stride_us,
        all_windows=args.all_windows,
        smoothing=SmoothingConfig(args.smoothing, args.alpha, args.history, args.threshold),
        frame_fps=args.frame_fps,
    )
    context = zmq.Context()
    try:
        backend, metadata = load_backend(args.checkpoint, args.backend, args.device)
        warmup()
        worker = InferenceWorker(backend, metadata, config)
        stop = StopRequest().install()  # until here, the default handlers end a stage still loading
        # Bind, wait for the consumers, only then connect to the source (which waits for this
        # subscriber): nothing is published before someone listens.
        publisher = StagePublisher(args.pub, allow_remote=args.allow_remote, context=context, stop=stop.event,
                                   curve=curve)  # fmt: skip
        with publisher:
            publisher.wait_for_subscribers(args.wait_subscribers, STATUS_KIND.topic)
            topics = ("events", "truth", STATUS_KIND.topic.decode())
            subscriber = EventSubscriber(args.sub, topics, rcvhwm=args.hwm, allow_remote=args.allow_remote,
                                         context=context, curve=curve)  # fmt: skip
            with subscriber:  # closed first at the end: the source waits for it to leave
                log.info("%s on %s (worker %s): %s -> %s", worker.backend_name, args.checkpoint.name, worker.worker_id,
                         args.sub, publisher.endpoint)  # fmt: skip
                loop = WorkerLoop(worker, subscriber, publisher)
                loop.run(args.duration, stop.event)
            if loop.ended:  # the consumers have read everything (publish_end): let the rest leave
                loop.publish_end()
                publisher.close(linger_ms=END_LINGER_MS)
    except (Stopped, KeyboardInterrupt):
        pass
    finally:
        context.destroy(linger=0)
    return 0


if __name__ == "__main__":
    exit_stage(main, expected=(BackendUnavailable,))  # e.g. --backend tensorrt where TensorRT is not installed
