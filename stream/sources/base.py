"""The source protocol, the speed check and the time-ordering that every source shares.

The source protocol (every source follows it; the pipeline, GUI and transport rely on it):

* ``source.sensor_size`` (``SensorSize``, pixels) and ``source.name`` (``str``, for logs and the GUI)
  are known right after construction. Construction opens the device, file or connection, so a
  missing camera, file or server fails early with ``SourceError`` (a ``ValueError``).
* ``for events in source:`` yields chunks of canonical events (1-D ``EVENT_DTYPE`` arrays, ``t`` in
  microseconds). Chunks are time-ordered within and across chunks (``t`` never decreases).
  A chunk may be empty: live and paced sources yield an empty chunk at least every
  ``IDLE_YIELD_S`` (5 ms) of wall time while nothing arrives, so a consumer loop never blocks
  for long and can check its own stop flags and control socket, and send clock messages. Never
  ``None``.
* Iteration ends when the data ends (end of file without ``loop``) or after ``source.stop()``.
  A camera or network source that loses its device or server reconnects with backoff (one loop
  for both, ``stream.sources.live``) and tells it by ``connected`` / ``disconnects`` / ``reconnects``;
  its iteration ends only when reconnection is off or given up, with ``connected`` False.
* ``source.stop()`` may be called from any thread, any number of times; iteration returns within
  about ``IDLE_YIELD_S``. It does not release resources.
* A source is a context manager; ``close()`` (called by ``__exit__``) stops it and releases the
  camera, file or socket. Iterate a source once; open a new one to start again.
* Optional clock: ``source.clock_us() -> int | None``, the stream time (µs, the events' clock)
  before which no further event will come, None before the first event. A promise: no event
  yielded after a call has ``t`` below the value returned. Files: the replay clock (it stops
  while paused), at most the next event's time; the simulator: the end of the newest chunk;
  camera and network (whose next event time is unknown): the last event's time plus the wall
  time since it arrived, less ``LIVE_CLOCK_MARGIN_S``, and an event that still comes earlier is
  raised to it (``Timeline.promise``). The source stage publishes it while the source is silent.
* Optional control (``FileSource``): ``pause()``, ``resume()``, ``seek(position_s)``,
  ``set_speed(speed)``, ``set_loop(loop)``, ``status()``, ``paused``; see ``stream.transport.control``.
* Optional ground truth: a source that knows what happens in its stream (the simulator) also has
  ``drain_truth() -> list[GestureSegment]``: the segments whose start has been emitted since the
  last call (times in the same microsecond clock as the events). Check with
  ``isinstance(source, TruthSource)``.

Sources are small independent classes that satisfy ``Source`` structurally (``typing.Protocol``);
there is no base class to inherit from. ``open_source(spec)`` builds one from a string such as
``"camera"``, ``"camera:SERIAL"``, ``"file:PATH"``, ``"dv:HOST:PORT"``, ``"sim"`` or ``"auto"``.
"""


from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from stream.events import GestureSegment, SensorSize

IDLE_YIELD_S = 0.005  # a live source yields (possibly an empty chunk) at least this often, seconds
MIN_SPEED, MAX_SPEED = 0.1, 100.0
DEFAULT_DV_PORT = 7777  # DV's default network output port


class SourceError(ValueError):
    """A source cannot be opened or used (no camera, no server, bad spec). The message says why."""


class SourceLost(OSError):
    """A camera or network source lost its device or server and stopped reconnecting: not an end
    of the data, so no end message; the source stage exits with an error (the launcher may restart it)."""


@runtime_checkable
class Source(Protocol):
    """What every event source provides. See the module docstring for the full contract."""

    sensor_size: SensorSize
    name: str

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Source": ...

    def __exit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class TruthSource(Source, Protocol):
    """A source that also reports ground-truth gesture segments (e.g. the simulator)."""

    def drain_truth(self) -> list[GestureSegment]: ...


# --- replay speed ---------------------------------------------------------------------------


def check_speed(speed: float | None) -> float | None:
    """A replay speed factor (0.1..100) or None (as fast as possible); ValueError otherwise."""
    if speed is None:
        return None
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be {MIN_SPEED:g}..{MAX_SPEED:g} or None (as fast as possible), got {speed!r}")
    return float(speed)


def parse_speed(text: str) -> float | None:
    """A replay speed from the command line: ``"max"`` -> None (as fast as possible), else a factor
    ``MIN_SPEED..MAX_SPEED`` (0.1..100); ValueError naming the range otherwise."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not MIN_SPEED <= value <= MAX_SPEED:
        raise ValueError(f"speed must be {MIN_SPEED:g}..{MAX_SPEED:g} or 'max', got {text!r}")
    return value


# --- time-ordering (vectorised, shared by all sources) -------------------------------------


class Timeline:
    """Turns raw event timestamps into a time-ordered stream, chunk by chunk (vectorised).

    Rules, applied to each event against the previous raw event:
      * a step forward of more than ``max_jump_us`` (when set) is compressed to ``max_jump_us``
        (``jumps_compressed`` counts them), so a replay never sleeps for hours;
      * a step back of more than ``max_jump_us`` (when set) is a clock restart: the stream
        continues at the latest time emitted so far (``restarts`` counts them);
      * any event earlier than one already emitted is dropped (``dropped_backward`` counts them);
      * any event earlier than a promised time (``promise(floor_us)``: a clock already given out)
        is raised to it (``raised`` counts them), so the promise holds and nothing is lost.
    ``rebase()`` makes the next event continue 1 µs after the last one emitted if it would
    otherwise be earlier (used when a file loops or a network stream reconnects).
    Output timestamps are raw timestamps plus a shift that only changes at those points.
    """

    def __init__(self, max_jump_us: int | None = None) -> None:
        if max_jump_us is not None and max_jump_us < 1:
            raise ValueError(f"max_jump_us must be >= 1 µs or None, got {max_jump_us}")
        self.max_jump_us = max_jump_us
        self.shift_us = 0
        self.last_us: int | None = None  # latest timestamp emitted
        self.dropped_backward = 0
        self.jumps_compressed = 0
        self.restarts = 0
        self.floor_us: int | None = None  # latest time promised: no event is emitted before it
        self.raised = 0
        self._prev_raw: int | None = None

    def promise(self, floor_us: int) -> None:
        """No event will be emitted before ``floor_us`` (a clock given out; never goes back)."""
        if self.floor_us is None or floor_us > self.floor_us:
            self.floor_us = int(floor_us)

    def rebase(self, floor_us: int | None = None) -> None:
        """The next event starts a new stretch of time (see class docstring); with ``floor_us``
        it also comes after ``floor_us`` (a clock already announced while the source was silent)."""
        self._prev_raw = None
        if floor_us is not None and self.last_us is not None and floor_us > self.last_us:
            self.last_us = int(floor_us)

    def _latest_before(self, t: np.ndarray) -> np.ndarray:
        """For each event, the latest time emitted before it (``last_us`` or an earlier event's)."""
        floor = np.iinfo(np.int64).min if self.last_us is None else self.last_us
        return np.maximum.accumulate(np.concatenate(([floor], t[:-1])))

    def apply(self, events: np.ndarray) -> np.ndarray:
        """Time-ordered events of this chunk (the input itself when nothing needed changing)."""
        if not len(events):
            return events
        raw = events["t"]
        if self._prev_raw is None:
            if self.last_us is not None and raw[0] + self.shift_us <= self.last_us:
                self.shift_us = self.last_us + 1 - int(raw[0])
            previous = int(raw[0])
        else:
            previous = self._prev_raw
        steps = np.diff(raw, prepend=np.int64(previous))
        shift = np.full(len(raw), self.shift_us, dtype=np.int64)
        if self.max_jump_us is not None:
            forward = steps > self.max_jump_us
            backward = steps < -self.max_jump_us
            if forward.any() or backward.any():
                increments = np.zeros(len(raw), dtype=np.int64)
                increments[forward] = self.max_jump_us - steps[forward]
                increments[backward] = -steps[backward]
                if backward.any():  # continue at the latest time emitted so far, not at a dropped event's
                    t = raw + self.shift_us + np.cumsum(increments)
                    before = self._latest_before(t)
                    restart = np.flatnonzero(backward)
                    increments[restart] += np.maximum(before[restart] - t[restart], 0)
                shift += np.cumsum(increments)
                self.jumps_compressed += int(forward.sum())
                self.restarts += int(backward.sum())
        t = raw + shift
        keep = t >= self._latest_before(t)
        self.shift_us = int(shift[-1])
        self._prev_raw = int(raw[-1])
        kept_t = t[keep]  # a copy (boolean index); kept times never decrease
        self.dropped_backward += len(raw) - len(kept_t)
        raised = 0
        if self.floor_us is not None and len(kept_t) and kept_t[0] < self.floor_us:
            raised = int(np.searchsorted(kept_t, self.floor_us, side="left"))
            kept_t[:raised] = self.floor_us
            self.raised += raised
        if len(kept_t):
            self.last_us = int(kept_t[-1])
        if len(kept_t) == len(raw) and not shift.any() and not raised:
            return events
        out = events[keep]
        out["t"] = kept_t
        return out
