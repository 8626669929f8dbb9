"""The inference worker's logic, without sockets: events in, predictions out.

``InferenceWorker`` bins event packets incrementally (``StreamingBinner`` built from the
checkpoint's window, sensor mapping and normalisation and the ACTUAL sensor size of the packets; a
new sensor size rebuilds it), runs the model on the newest window every stride (or on every window
with ``all_windows``) and builds the prediction messages of ``inference.messages``. A window
without any event is "no gesture" whatever the model says (the model still runs and its class and
probabilities are reported). The process around it (sockets, batching, status) is
``inference.worker_stage``.

A causal checkpoint runs on a step backend (``inference.backends.create_step_backend``): every bin
(``bin_us``, e.g. 50 ms) is binned once, fed once to the model with its state, and gives a
prediction; the decision rule (``SmoothingConfig``: the checkpoint's ``decision`` unless the worker
is given one) accumulates the evidence. Bins without events are fed as empty frames as their time
passes, each a prediction, up to the first window without any event ("no gesture"); after a longer
gap, a time jump, a new source run or another sensor the model's state is reset.

A new source run (the events' sequence number goes back: a source process started again on the
same endpoint) restarts the windows at its first packet, whatever its time; so do events more than
``TIME_RESET_US`` behind the stream time (``time_resets`` counts both). The source's clock
(``advance``) closes the windows while the source is silent.

Events are accounted for: received, binned, unused (only in skipped windows), unmapped (outside
the mapping's crop), dropped (outside the sensor, bad polarity, time going back) and lost (counted
by the stage from the source's ``events_sent``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from inference.messages import prediction as prediction_message
from inference.smoothing import LabelSmoother, SmoothingConfig, softmax
from stream.binning import SensorMapping, StreamingBinner, Window, WindowSpec
from stream.coverage import CoverageMonitor, window_coverage
from stream.events import SensorSize, concatenate_events, empty_events
from stream.transport.wire import now_us

log = logging.getLogger("inference.worker")

TIME_RESET_US = 1_000_000  # a packet this far behind the stream time restarts the windows


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
    events_filtered: int = 0  # removed by the checkpoint's noise filters
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
        smoothing: how the stable label is formed (None: the checkpoint's ``decision``, else the default).
    """

    stride_us: int | None = None
    all_windows: bool = False
    smoothing: SmoothingConfig | None = None


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
        self.filters = model_input.get("filters")
        self.step_mode = hasattr(backend, "step")  # a causal model, one bin at a time
        # The binner's windows: the model's, or single bins for a step model.
        self.bin_window = WindowSpec(1, window.bin_us, window.bin_us) if self.step_mode else window
        smoothing = config.smoothing
        if smoothing is None:
            decision = metadata.get("decision")
            smoothing = SmoothingConfig.from_dict(decision) if decision else SmoothingConfig()
        self.smoother = LabelSmoother(self.classes, smoothing)
        self.coverage = CoverageMonitor(model_input.get("coverage"))  # the input against the training data
        self._bin_coverages: deque[float] = deque(maxlen=window.bins)  # a step model's last window, bin by bin
        self._bin_events: deque[int] = deque(maxlen=window.bins)  # events per bin, likewise
        self._last_bin_end: int | None = None  # a step model's newest bin fed
        self.counters = WorkerCounters()
        self.sensor: SensorSize | None = None
        self.binner: StreamingBinner | None = None
        self.pending: Window | None = None  # newest window not inferred yet
        self._pending_packet: tuple[int, int] = (0, 0)  # (send_us, recv_us) of the message completing it
        self._pending_binned_us = 0
        self._queue: list[tuple[Window, tuple[int, int], int]] = []  # all_windows mode
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
        # A step model is fed every bin, the empty ones too, as their time passes (each one a
        # prediction), up to a silence as long as its window; a longer one resets its state.
        gap_us = self.window.window_us if self.step_mode else None
        self.binner = StreamingBinner(mapping, self.bin_window, normalisation=self.normalisation, filters=self.filters,
                                      gap_us=gap_us)  # fmt: skip
        self._reset_model()
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
        self._reset_model()

    def _reset_model(self) -> None:
        """A new stream: a step model's state starts again, and so does the coverage monitor."""
        self._last_bin_end = None
        self.coverage.reset()
        self._reset_steps()

    def _reset_steps(self) -> None:
        """A step model's state (potentials, attention cache) and its window's bins start again."""
        self._bin_coverages.clear()
        self._bin_events.clear()
        if self.step_mode:
            self.backend.reset()

    @property
    def infers_all(self) -> bool:
        """Whether every window is inferred (offline evaluation, or a step model: never skip a bin)."""
        return self.config.all_windows or self.step_mode

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
        events = run[0].events if len(run) == 1 else concatenate_events([packet.events for packet in run])
        windows = self.binner.push(events, emit="all" if self.infers_all else "latest")
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
        if self.infers_all or binner is None or binner.time_us is None or len(packets) < 2:
            return packets, []
        time_us = binner.time_us
        last_t = np.array([int(p.events["t"][-1]) if len(p.events) else time_us for p in packets], dtype=np.int64)
        first_t = np.array([int(p.events["t"][0]) if len(p.events) else time_us for p in packets], dtype=np.int64)
        if first_t.min() < time_us - TIME_RESET_US or any(p.restart for p in packets):
            return packets, []  # the windows restart inside this batch: bin it all
        stride = self.bin_window.stride_us
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
        emit = "all" if self.infers_all else "latest"
        windows = self.binner.push(empty_events(), now_us=int(time_us), emit=emit)
        self._take(windows, [(send_us, recv_us)] * len(windows))

    def _take(self, windows: list[Window], packets: list[tuple[int, int]]) -> None:
        """Queue the windows now due; ``packets[i]`` = (send_us, recv_us) of the message that
        completed ``windows[i]``."""
        if not windows:
            return
        binned_us = now_us()
        if self.infers_all:
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
        stride = self.bin_window.stride_us
        end_us = (binner.time_us // stride + 1) * stride
        emit = "all" if self.infers_all else "latest"
        windows = binner.push(empty_events(), now_us=end_us, emit=emit)
        self._take(windows, [(now_us(), now_us())] * len(windows))

    def _fold_binner_stats(self) -> None:
        """Add the current binner's counters to the totals (before it is replaced or reset)."""
        if self.binner is not None:
            for name, value in asdict(self.binner.stats).items():
                self._binner_base[name] = self._binner_base.get(name, 0) + value

    def background_activity(self) -> dict[str, Any] | None:
        """The noise filter's background-activity window and noise floor now (``EventFilter.background_activity``),
        or None (no such filter, or no binner yet)."""
        return None if self.binner is None else self.binner.event_filter.background_activity()

    def binner_totals(self) -> dict[str, int]:
        """Binner counters summed over every binner this worker has used."""
        current = asdict(self.binner.stats) if self.binner is not None else {}
        return {name: self._binner_base.get(name, 0) + current.get(name, 0) for name in set(self._binner_base) | set(current)}

    # --- inference --------------------------------------------------------------------------

    def has_window(self) -> bool:
        return self.pending is not None or bool(self._queue)

    def windows_due(self) -> int:
        """Windows binned and waiting for the model."""
        return len(self._queue) + (self.pending is not None)

    def infer(self) -> dict[str, Any] | None:
        """Run the model on the next window (the newest one unless ``all_windows``); return the
        prediction message (``inference.messages.prediction``) or None when no window is due."""
        if self.infers_all:
            if not self._queue:
                return None
            window, packet, binned_us = self._queue.pop(0)
        else:
            if self.pending is None:
                return None
            window, packet, binned_us = self.pending, self._pending_packet, self._pending_binned_us
            self.pending = None
        start, cpu_start = time.perf_counter(), time.thread_time()
        logits = self._step(window) if self.step_mode else np.asarray(self.backend.predict(window.frames[None]))
        inference_ms = (time.perf_counter() - start) * 1000.0
        inference_cpu_ms = (time.thread_time() - cpu_start) * 1000.0  # less than inference_ms: it waited for a CPU
        probabilities = softmax(logits.reshape(-1))
        events = self._window_events(window)
        # A window without events holds no gesture, whatever the model makes of an empty input.
        stable = self.smoother.update(probabilities) if events > 0 else self.smoother.silence()
        index = int(probabilities.argmax())
        coverage = self._window_coverage(window)
        if events > 0:
            self.coverage.add(coverage)
        self.counters.windows += 1
        send_us, recv_us = packet
        message = prediction_message(
            worker_id=self.worker_id, seq=self._seq, classes=self.classes, probabilities=probabilities,
            class_index=index, stable=stable,
            window={"start_us": window.end_us - self.window.window_us, "end_us": window.end_us,
                    "stride_us": self.bin_window.stride_us, "events": events,
                    "coverage": round(coverage, 6)},
            timing={"source_send_us": send_us, "recv_us": recv_us, "binned_us": binned_us,
                    "recv_to_binned_ms": (binned_us - recv_us) / 1000.0, "inference_ms": round(inference_ms, 3),
                    "inference_cpu_ms": round(inference_cpu_ms, 3)},
            counters=self.counter_dict(), backend=self.backend_name, sensor=list(self.sensor),
        )  # fmt: skip
        self._seq += 1
        return message

    def _window_events(self, window: Window) -> int:
        """The events of the window just inferred; a step model's are those of its last ``bins`` bins."""
        if not self.step_mode:
            return window.events
        self._bin_events.append(window.events)
        return sum(self._bin_events)

    def _window_coverage(self, window: Window) -> float:
        """The coverage of the window just inferred (``stream.coverage``); a step model's is that of its
        last ``bins`` bins, the ones never filled counting as empty."""
        coverage = float(window_coverage(window.frames))
        if not self.step_mode:
            return coverage
        self._bin_coverages.append(coverage)
        return sum(self._bin_coverages) / self.window.bins

    def _step(self, window: Window) -> np.ndarray:
        """Feed one bin to a step model; returns its logits. The binner emits every bin, the empty
        ones too, up to a silence as long as the model's window: a bin missing before this one
        means a longer silence, and the state starts again."""
        if self._last_bin_end is not None and window.end_us - self._last_bin_end > self.bin_window.bin_us:
            self._reset_steps()
        self._last_bin_end = window.end_us
        return np.asarray(self.backend.step(window.frames[0]))

    def counter_dict(self) -> dict[str, Any]:
        """The counters, with the binner's folded in."""
        counters = self.counters
        binned = self.binner_totals()
        counters.events_binned = binned.get("events_binned", 0)
        counters.events_filtered = binned.get("events_filtered", 0)
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
