"""The inference worker stage: ``python -m inference.worker --sub EVENTS --pub PREDICTIONS --checkpoint CK``.

Receives event packets (``stream.source``), bins them incrementally (``StreamingBinner`` built from
the checkpoint's window, sensor mapping and normalisation and the ACTUAL sensor size of the packets;
a new sensor size rebuilds it), runs the model on the newest window every stride and publishes on
``PREDICTIONS``:

* ``prediction`` JSON messages (``STATUS_KIND``, all JSON messages carry a ``"type"``):

  - ``{"type": "prediction", ...}`` per inferred window, see ``InferenceWorker.infer``: ``seq``,
    ``class_index``, ``class_name``, ``probabilities``, ``stable`` {``index`` (-1 = no gesture),
    ``name``, ``confidence``}, ``window`` {``start_us``, ``end_us`` (stream time, µs), ``events``},
    ``timing`` (transport clock ``time.monotonic_ns() // 1000``, µs: ``source_send_us`` of the
    packet that completed the window, ``recv_us`` when the worker got it, ``binned_us``,
    ``published_us``; and ``recv_to_binned_ms``, ``inference_ms``, ``compute_ms`` =
    published - recv), ``counters`` (see ``WorkerCounters``), ``backend``, ``sensor``.
  - ``{"type": "stats", ...}`` about once a second: counters, rates, the source's own stats.
  - ``{"type": "end", ...}`` once, after the source's end message, with the final counters.
* ``frame`` messages: the ON/OFF event counts accumulated since the previous frame at the sensor's
  resolution, uint8 ``[2, H, W]`` (channel = polarity, saturated at 255), header width/height =
  the sensor, ``count`` = 2; at most ``--frame-fps`` (30) per second.
* ``truth`` messages forwarded unchanged from the source (gesture segments, stream time).

Latency never grows with a backlog: before each inference the worker drains its socket (for at
most ``DRAIN_BUDGET_S``), binning every packet, and infers only the newest window; windows passed
over are counted (``windows_skipped``). Events are accounted for: received, binned, unused (only in
skipped windows), unmapped (outside the mapping's crop), dropped (outside the sensor, bad polarity,
time going back) and lost (the source's ``events_sent`` minus those received: ZeroMQ high-water
mark overflow); malformed messages are counted by reason and skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from numba import njit

from inference.smoothing import SMOOTHING_METHODS, LabelSmoother, SmoothingConfig, softmax
from stream.binning import SensorMapping, StreamingBinner, Window, WindowSpec, warmup
from stream.events import SensorSize, empty_events
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

DRAIN_BUDGET_S = 0.05  # at most this long binning queued packets before inferring the newest window
STATS_INTERVAL_S = 1.0
DEFAULT_FRAME_FPS = 30.0
RECV_TIMEOUT_MS = 50
TIME_RESET_US = 1_000_000  # a packet this far behind the stream time restarts the windows
PACKET_HISTORY = 256  # packets remembered to find the one that completed a window


@njit(cache=True, nogil=True)
def _accumulate(x, y, p, counts):  # pragma: no cover - compiled
    """counts[p, y, x] += 1 per event (coordinates already checked by the transport)."""
    for i in range(x.shape[0]):
        counts[p[i], y[i], x[i]] += 1


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
    time_resets: int = 0


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
    """

    def __init__(self, backend: Any, metadata: dict[str, Any], config: WorkerConfig = WorkerConfig()) -> None:
        self.backend = backend
        self.config = config
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
        self._pending_packet: tuple[int, int] = (0, 0)  # (source send_us, recv_us) of its packet
        self._pending_binned_us = 0
        self._queue: list[tuple[Window, tuple[int, int], int]] = []  # all_windows mode
        self._frame_counts: np.ndarray | None = None
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

    def push(self, events: np.ndarray, sensor: SensorSize, send_us: int, recv_us: int) -> None:
        """Bin one packet (time-ordered, checked events) that the source sent at ``send_us`` and the
        worker received at ``recv_us`` (transport clock, µs)."""
        if self.sensor != sensor:
            self._rebuild(SensorSize(*sensor))
        counters = self.counters
        counters.events_in += len(events)
        counters.packets_in += 1
        if len(events) == 0:
            return
        binner = self.binner
        first_t = int(events["t"][0])
        if binner.time_us is not None and first_t < binner.time_us - TIME_RESET_US:
            log.info("stream time went back %.3f s: restarting the windows", (binner.time_us - first_t) / 1e6)
            counters.time_resets += 1
            self._fold_binner_stats()
            binner.reset()
            self.smoother.reset()
            self.pending = None
            self._queue.clear()
        _accumulate(events["x"], events["y"], events["p"], self._frame_counts)
        windows = binner.push(events, emit="all" if self.config.all_windows else "latest")
        self._take(windows, (send_us, recv_us))

    def _take(self, windows: list[Window], packet: tuple[int, int]) -> None:
        if not windows:
            return
        binned_us = now_us()
        if self.config.all_windows:
            self._queue.extend((window, packet, binned_us) for window in windows)
            return
        if self.pending is not None:
            self.counters.windows_skipped += 1  # replaced by a newer one before it was inferred
        self.counters.windows_skipped += len(windows) - 1
        self.pending, self._pending_packet, self._pending_binned_us = windows[-1], packet, binned_us

    def flush(self) -> None:
        """End of stream: close the window holding the last events so it is inferred too."""
        binner = self.binner
        if binner is None or binner.time_us is None:
            return
        stride = self.window.stride_us
        end_us = (binner.time_us // stride + 1) * stride
        emit = "all" if self.config.all_windows else "latest"
        self._take(binner.push(empty_events(), now_us=end_us, emit=emit), (now_us(), now_us()))

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
        stable = self.smoother.update(probabilities)
        index = int(probabilities.argmax())
        self.counters.windows += 1
        send_us, recv_us = packet
        message = {
            "type": "prediction",
            "seq": self._seq,
            "class_index": index,
            "class_name": self.classes[index],
            "probabilities": [round(float(v), 5) for v in probabilities],
            "stable": {"index": stable.index, "name": stable.name, "confidence": round(stable.confidence, 5)},
            "window": {"start_us": window.end_us - self.window.window_us, "end_us": window.end_us, "events": window.events},
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

    def take_frame(self) -> np.ndarray | None:
        """The ON/OFF counts since the previous call as uint8 ``[2, H, W]`` (None before any packet)."""
        if self._frame_counts is None:
            return None
        frame = np.minimum(self._frame_counts, 255).astype(np.uint8)
        self._frame_counts.fill(0)
        return frame


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
        self._frame_interval_s = 1.0 / worker.config.frame_fps if worker.config.frame_fps > 0 else None
        self._next_frame = time.monotonic()
        self._next_stats = time.monotonic() + STATS_INTERVAL_S
        self._stats_events = 0

    def handle(self, message: Message) -> None:
        """Act on one received message."""
        if message.kind == Kind.EVENTS:
            self.worker.push(message.events, message.sensor_size, message.send_us, now_us())
        elif message.kind == Kind.TRUTH:
            self.publisher.publish_truth(message.data)
        elif message.kind == STATUS_KIND and isinstance(message.data, dict):
            kind = message.data.get("type")
            if kind in ("stats", "end"):
                self.source_stats = message.data
                self._update_lost()
                if kind == "end":
                    self.ended = True

    def _update_lost(self) -> None:
        """Events the source sent (up to its last status message) that never arrived."""
        sent = self.source_stats.get("events_sent")
        if isinstance(sent, int):
            self.worker.counters.events_lost = max(0, sent - self.worker.counters.events_in)

    def _sync_subscriber_counters(self) -> None:
        stats = self.subscriber.stats
        self.worker.counters.packets_lost = stats.lost
        self.worker.counters.messages_rejected = stats.rejected_total
        self.worker.counters.rejected = dict(stats.rejected)

    def step(self, timeout_ms: int = RECV_TIMEOUT_MS) -> None:
        """Wait up to ``timeout_ms`` for a message, drain the queue (bounded), infer, publish."""
        message = self.subscriber.recv(timeout_ms)
        if message is not None:
            self.handle(message)
            deadline = time.monotonic() + DRAIN_BUDGET_S
            while not self.ended and time.monotonic() < deadline:
                message = self.subscriber.recv(0)
                if message is None:
                    break
                self.handle(message)
        if self.ended:
            self.worker.flush()
        self._sync_subscriber_counters()
        while self.worker.has_window():
            prediction = self.worker.infer()
            published_us = now_us()
            timing = prediction["timing"]
            timing["published_us"] = published_us
            timing["compute_ms"] = (published_us - timing["recv_us"]) / 1000.0
            self.publisher.publish_json(STATUS_KIND, prediction)
            if not self.worker.config.all_windows:
                break
        now = time.monotonic()
        if self._frame_interval_s is not None and now >= self._next_frame:
            frame = self.worker.take_frame()
            if frame is not None:
                self.publisher.publish_raw(Kind.FRAME, frame, count=2, sensor_size=self.worker.sensor)
            self._next_frame = now + self._frame_interval_s
        if now >= self._next_stats:
            self.publisher.publish_json(STATUS_KIND, self.status("stats"))
            self._next_stats = now + STATS_INTERVAL_S

    def status(self, kind: str) -> dict[str, Any]:
        """A ``stats`` or ``end`` message."""
        return {
            "type": kind,
            "counters": self.worker.counter_dict(),
            "backend": self.worker.backend_name,
            "sensor": list(self.worker.sensor) if self.worker.sensor else None,
            "window": self.worker.window.to_dict(),
            "source": self.source_stats,
        }

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> None:
        """Step until the source's end message (then publish ``end``), ``duration_s`` or ``stop``."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self.ended:
            if stop is not None and stop.is_set():
                return
            self.step()
            if deadline is not None and time.monotonic() >= deadline:
                return
        self._sync_subscriber_counters()
        self.publisher.publish_json(STATUS_KIND, self.status("end"), reliable=True)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args = build_parser().parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.checkpoint.is_file():
        raise ValueError(f"checkpoint {args.checkpoint} not found")
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
        publisher = StagePublisher(args.pub, allow_remote=args.allow_remote, context=context, stop=stop.event)
        with publisher:
            publisher.wait_for_subscribers(args.wait_subscribers, STATUS_KIND.topic)
            topics = ("events", "truth", STATUS_KIND.topic.decode())
            subscriber = EventSubscriber(args.sub, topics, rcvhwm=args.hwm, allow_remote=args.allow_remote, context=context)
            with subscriber:  # closed first at the end: the source waits for it to leave
                log.info("%s on %s: %s -> %s", worker.backend_name, args.checkpoint.name, args.sub, publisher.endpoint)
                loop = WorkerLoop(worker, subscriber, publisher)
                loop.run(args.duration, stop.event)
            if loop.ended:
                publisher.wait_for_unsubscribed(STATUS_KIND.topic, END_WAIT_S)
                publisher.close(linger_ms=END_LINGER_MS)
    except (Stopped, KeyboardInterrupt):
        pass
    finally:
        context.destroy(linger=0)
    return 0


if __name__ == "__main__":
    exit_stage(main)
