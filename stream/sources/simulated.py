"""The simulator as a live source: a virtual camera whose person cycles through the gestures."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator, Sequence

import numpy as np
from numba import njit

from stream.events import EVENT_DTYPE, GestureSegment, SensorSize, empty_events
from stream.sim.recording import (
    DEFAULT_GESTURE_US,
    DEFAULT_IDLE_US,
    NUM_CLASSES,
    Filming,
    Puppet,
    check_label,
    recording_plan,
)
from stream.sim.scene import DEFAULT_SENSOR, draw_scene
from stream.sources.base import IDLE_YIELD_S, check_speed

PIECE_STEPS = 100  # the worker renders this many steps (100 ms at 128x128) at a time


class SimulatorSource:
    """A virtual camera for live use: the simulated person cycles through the gestures forever.

    Follows the source protocol of ``stream.sources``. Each cycle is a new person and scene doing
    every class once in random order (or ``labels``), each gesture preceded by an idle period; it is
    rendered incrementally (100 ms at a time, a few pieces ahead) by a worker thread, so memory is
    bounded and nothing is pre-generated. Chunks of ``chunk_us`` event time are paced on a monotonic
    clock at ``speed`` x real time (``None``: as fast as the simulator runs, about 10x real time at
    128x128 on one core). Events have the canonical top-left origin, t from 0 µs. ``clock_us()``
    is exact: the end of the newest chunk handed over (a chunk holds the events in its
    ``(start, end]``), so it never runs ahead of events still being rendered.

    Load testing: ``rate_scale=k`` replicates every event k times (copy j shifted by a fixed pixel
    offset, wrapping round the sensor; time order kept; one Numba pass, ``_replicate``: about 230 M
    output events/s on one core of the 2-core test machine, 6x the NumPy repeat/tile it replaced):
    ~50-100k ev/s x k, so k=100..500 gives 5-50 M ev/s. ``extra_noise_hz`` adds uniform random events at that total rate (sorted merge,
    fine up to a few M ev/s).

    Args:
        sensor_size: pixels.
        seed: same seed, same stream.
        speed: pace factor (1.0 = real time), or None for no pacing.
        gesture_us, idle_us: typical gesture and idle lengths (each varies +-20 %).
        duration_s: end the stream after this much event time; None = forever.
        chunk_us: event time per yielded chunk.
        labels: the classes to cycle through (default all 11).
        rate_scale, extra_noise_hz: see above.
        directed: one person in one scene who stands still until ``perform`` tells them what to
            do (the simulator as the camera of a guided recording session).
        look, lighting: fix the renderer and the lighting family (``stream.sim.scene``).
    """

    def __init__(
        self,
        *,
        sensor_size: SensorSize = DEFAULT_SENSOR,
        seed: int = 0,
        speed: float | None = 1.0,
        gesture_us: int = DEFAULT_GESTURE_US,
        idle_us: int = DEFAULT_IDLE_US,
        duration_s: float | None = None,
        chunk_us: int = 2000,
        labels: Sequence[int] | None = None,
        rate_scale: int = 1,
        extra_noise_hz: float = 0.0,
        directed: bool = False,
        look: str | None = None,
        lighting: str | None = None,
    ) -> None:
        self.sensor_size = SensorSize(*sensor_size).validated()
        if gesture_us <= 0 or idle_us < 0 or chunk_us <= 0:
            raise ValueError(f"need gesture_us > 0, idle_us >= 0, chunk_us > 0; got {gesture_us}, {idle_us}, {chunk_us}")
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration_s must be > 0 or None, got {duration_s}")
        if int(rate_scale) < 1 or extra_noise_hz < 0:
            raise ValueError(f"need rate_scale >= 1 and extra_noise_hz >= 0, got {rate_scale}, {extra_noise_hz}")
        self.labels = [check_label(label) for label in (range(NUM_CLASSES) if labels is None else labels)]
        if not self.labels:
            raise ValueError("labels must name at least one class")
        self.name = f"simulator (seed {seed})"
        self.seed = seed
        self.speed = check_speed(speed)
        self.gesture_us, self.idle_us, self.chunk_us = int(gesture_us), int(idle_us), int(chunk_us)
        self.duration_us = None if duration_s is None else int(duration_s * 1e6)
        self.rate_scale, self.extra_noise_hz = int(rate_scale), float(extra_noise_hz)
        self._stop = threading.Event()
        self._truth_lock = threading.Lock()
        self._truth: list[GestureSegment] = []
        self._worker: threading.Thread | None = None
        self._iterated = False
        self._clock_us: int | None = None  # end of the newest chunk handed over: no later event before it
        self.directed = bool(directed)
        self.scene_options = {"look": look, "lighting": lighting}
        self._puppet: Puppet | None = None
        self._puppet_ready = threading.Event()

    # -- protocol --

    def stop(self) -> None:
        """End iteration (from any thread) within about IDLE_YIELD_S."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=5)

    def __enter__(self) -> "SimulatorSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def clock_us(self) -> int | None:
        """Stream time (µs) before which no further event will come: the end of the newest chunk
        taken by the consumer (events of later chunks have ``t`` > it); None before the first.
        Exact, not estimated: while rendering lags behind the pace, the clock waits for it."""
        return self._clock_us

    def perform(self, label: int, start_us: int, end_us: int) -> GestureSegment:
        """A directed simulator performs gesture ``label`` from ``start_us`` to ``end_us`` (stream
        µs; at least a few hundred ms ahead: pieces are rendered ahead of the pace). Its segment
        comes out as truth when its start is streamed."""
        if not self.directed:
            raise ValueError("only a directed simulator (directed=True) performs on cue")
        if not self._puppet_ready.wait(timeout=10):
            raise ValueError("the simulator has not started yet")
        return self._puppet.cue(label, start_us, end_us)

    def drain_truth(self) -> list[GestureSegment]:
        """Gesture segments whose start has been emitted since the last call (stream µs)."""
        with self._truth_lock:
            segments, self._truth = self._truth, []
        return segments

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._iterated:
            raise RuntimeError("a SimulatorSource is iterated once; open a new one to start again")
        self._iterated = True
        pieces: queue.Queue = queue.Queue(maxsize=4)
        self._worker = threading.Thread(target=self._produce, args=(pieces,), name="simulator", daemon=True)
        self._worker.start()
        amplify_rng = np.random.default_rng([self.seed, 1])
        upcoming: list[GestureSegment] = []
        clock_start: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    item = pieces.get(timeout=IDLE_YIELD_S)
                except queue.Empty:
                    yield empty_events()
                    continue
                if isinstance(item, BaseException):
                    raise item
                events, piece_start, piece_end, segments = item
                upcoming.extend(segments)
                if clock_start is None:
                    clock_start = time.monotonic() - piece_start * 1e-6 / (self.speed or 1.0)
                chunk_ends = np.arange(piece_start + self.chunk_us, piece_end + self.chunk_us, self.chunk_us)
                chunk_ends[-1] = piece_end
                if self.duration_us is not None:
                    chunk_ends = np.unique(np.minimum(chunk_ends, self.duration_us))
                cuts = np.searchsorted(events["t"], chunk_ends, side="right")
                previous_cut, chunk_start = 0, piece_start
                for chunk_end, cut in zip(chunk_ends.tolist(), cuts.tolist()):
                    if self.speed is not None:  # paced: wait, still yielding every IDLE_YIELD_S
                        due = clock_start + chunk_end * 1e-6 / self.speed
                        while (wait := due - time.monotonic()) > 0:
                            if self._stop.wait(min(wait, IDLE_YIELD_S)):
                                return
                            if wait > IDLE_YIELD_S:
                                yield empty_events()
                    if self._stop.is_set():
                        return
                    if upcoming and upcoming[0].start_us <= chunk_end:
                        started = [segment for segment in upcoming if segment.start_us <= chunk_end]
                        upcoming = upcoming[len(started):]
                        with self._truth_lock:
                            self._truth.extend(started)
                    yield self._amplify(events[previous_cut:cut], chunk_start, chunk_end, amplify_rng)
                    # Set once the consumer is back for more (it has sent the chunk): a clock read
                    # while the chunk is still in its hands could announce a time after its events.
                    self._clock_us = chunk_end
                    previous_cut, chunk_start = cut, chunk_end
                    if self.duration_us is not None and chunk_end >= self.duration_us:
                        return
        finally:
            self._stop.set()

    # -- internals --

    def _produce(self, pieces: queue.Queue) -> None:
        """Worker thread: render cycle after cycle, piece by piece, into the bounded queue."""

        def put(item: object) -> bool:
            while not self._stop.is_set():
                try:
                    pieces.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            rng = np.random.default_rng(self.seed)
            if self.directed:
                self._direct(rng, put)
                return
            cycle_start = piece_start = 0
            while not self._stop.is_set():
                order = rng.permutation(self.labels)
                segments, end_us = recording_plan(order, rng, self.gesture_us, self.idle_us, start_us=cycle_start)
                scene = draw_scene(rng, self.sensor_size, duration_us=end_us - cycle_start)
                step_t = np.arange(cycle_start, end_us + scene.step_us, scene.step_us, dtype=np.int64)
                filming = Filming(scene, step_t, segments, rng, origin_us=cycle_start)
                for first in range(0, len(step_t), PIECE_STEPS):
                    last = min(first + PIECE_STEPS, len(step_t))
                    events = filming.events(first, last)
                    piece_end = int(step_t[last - 1])
                    starting = [seg for seg in segments if piece_start < seg.start_us <= piece_end]
                    if piece_end > piece_start or len(events):
                        if not put((events, piece_start, piece_end, starting)):
                            return
                    piece_start = piece_end
                    if self.duration_us is not None and piece_end >= self.duration_us:
                        return
                cycle_start = int(step_t[-1])
                # Free this cycle's poses and pixel state before rendering the next: two alive at once
                # made the source's resident memory climb in steps over a long run.
                del filming, step_t, events, scene
        except BaseException as error:  # hand the failure to the iterating thread
            put(error)

    def _direct(self, rng: np.random.Generator, put) -> None:
        """Worker thread of a directed simulator: the puppet, piece after piece, forever."""
        scene = draw_scene(rng, self.sensor_size, **self.scene_options)
        self._puppet = Puppet(scene, rng)
        self._puppet_ready.set()
        piece_start, announced = 0, 0
        while not self._stop.is_set():
            step_t = piece_start + scene.step_us * np.arange(1, PIECE_STEPS + 1, dtype=np.int64)
            events = self._puppet.events(step_t)
            piece_end = int(step_t[-1])
            starting = self._puppet.started(announced, piece_end)
            announced = piece_end
            if not put((events, piece_start, piece_end, starting)):
                return
            piece_start = piece_end
            if self.duration_us is not None and piece_end >= self.duration_us:
                return

    def _amplify(self, chunk: np.ndarray, start_us: int, end_us: int, rng: np.random.Generator) -> np.ndarray:
        """Apply ``rate_scale`` (replicated, shifted copies) and ``extra_noise_hz`` to one chunk."""
        width, height = self.sensor_size
        if self.rate_scale > 1 and len(chunk):
            copies = np.zeros(len(chunk) * self.rate_scale, EVENT_DTYPE)  # zeros: no stale bytes in the padding
            _replicate(chunk["t"], chunk["x"], chunk["y"], chunk["p"], self.rate_scale, width, height,
                       copies["t"], copies["x"], copies["y"], copies["p"])  # fmt: skip
            chunk = copies
        if self.extra_noise_hz > 0 and end_us > start_us:
            count = rng.poisson(self.extra_noise_hz * (end_us - start_us) * 1e-6)
            noise = np.zeros(count, EVENT_DTYPE)
            noise["t"] = np.sort(rng.integers(start_us + 1, end_us + 1, count))
            noise["x"], noise["y"] = rng.integers(0, width, count), rng.integers(0, height, count)
            noise["p"] = rng.integers(0, 2, count)
            # Sorted merge into zeros (np.insert leaves stale heap bytes in the padding, sent on the wire).
            merged = np.zeros(len(chunk) + count, EVENT_DTYPE)
            at = np.searchsorted(chunk["t"], noise["t"], side="right") + np.arange(count)
            from_chunk = np.ones(len(merged), dtype=bool)
            from_chunk[at] = False
            merged[at], merged[from_chunk] = noise, chunk
            chunk = merged
        return chunk


@njit(cache=True, nogil=True)
def _replicate(t, x, y, p, copies, width, height, out_t, out_x, out_y, out_p):
    """Event i becomes events i*copies + j, j < copies, in time order: copy j shifted by
    (37 j, 59 j) pixels, wrapping round the ``width`` x ``height`` sensor. One pass over the output."""
    shift_x, shift_y = np.empty(copies, np.int64), np.empty(copies, np.int64)
    for j in range(copies):
        shift_x[j], shift_y[j] = (j * 37) % width, (j * 59) % height
    for i in range(t.shape[0]):
        ti, xi, yi, pi = t[i], x[i], y[i], p[i]
        base = i * copies
        for j in range(copies):
            out_t[base + j] = ti
            out_x[base + j] = (xi + shift_x[j]) % width
            out_y[base + j] = (yi + shift_y[j]) % height
            out_p[base + j] = pi
