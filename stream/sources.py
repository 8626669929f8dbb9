"""Live event sources: camera, file replay, DV network stream, simulator.

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
  for both, ``_LiveInput``) and tells it by ``connected`` / ``disconnects`` / ``reconnects``;
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
  ``set_speed(speed)``, ``set_loop(loop)``, ``status()``, ``paused``; see ``stream.source``.
* Optional ground truth: a source that knows what happens in its stream (the simulator) also has
  ``drain_truth() -> list[GestureSegment]``: the segments whose start has been emitted since the
  last call (times in the same microsecond clock as the events). Check with
  ``isinstance(source, TruthSource)``.

Sources are small independent classes that satisfy ``Source`` structurally (``typing.Protocol``);
there is no base class to inherit from. ``open_source(spec)`` builds one from a string such as
``"camera"``, ``"camera:SERIAL"``, ``"file:PATH"``, ``"dv:HOST:PORT"``, ``"sim"`` or ``"auto"``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import dv_processing as dv
import numpy as np

from stream.events import GestureSegment, SensorSize, check_events, empty_events, from_dv

log = logging.getLogger(__name__)

IDLE_YIELD_S = 0.005  # a live source yields (possibly an empty chunk) at least this often, seconds


class SourceError(ValueError):
    """A source cannot be opened or used (no camera, no server, bad spec). The message says why."""


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


# --- file replay ------------------------------------------------------------------------------

DEFAULT_SLICE_US = 2_000  # paced replay releases events in slices of this much event time
DEFAULT_MAX_JUMP_US = 1_000_000
MIN_SPEED, MAX_SPEED = 0.1, 100.0


@dataclass
class ReplayStats:
    """What a FileSource did so far (counts)."""

    passes: int = 0
    events: int = 0
    dropped_backward: int = 0
    jumps_compressed: int = 0
    restarts: int = 0
    seeks: int = 0
    reads: int = 0  # times the file was opened to read: the first pass, each loop, each seek back
    damage: str = ""  # allow_truncated: what ended the pass early ("" for an intact file)


def check_speed(speed: float | None) -> float | None:
    """A replay speed factor (0.1..100) or None (as fast as possible); ValueError otherwise."""
    if speed is None:
        return None
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be {MIN_SPEED:g}..{MAX_SPEED:g} or None (as fast as possible), got {speed!r}")
    return float(speed)


class FileSource:
    """Replays an event file (AEDAT4, AEDAT 3.1, tonic .npy) as a live source, paced in real time.

    Args:
        path: the event file (format detected by ``stream.files.open_events``).
        speed: replay speed (1.0 = real time, 0.1..100), or None for as fast as possible.
        loop: start again at the end, forever (time keeps increasing: the next pass starts 1 µs
            after the last event of the previous one).
        start_offset_us: skip the first ``start_offset_us`` microseconds of the recording
            (measured from its first event); a loop starts there again.
        slice_us: paced replay releases events in slices of this much event time (µs), each when
            the replay clock reaches the time of its last event, so latency stays ~1 slice.
        max_jump_us: a gap in the recording longer than this (µs) is shortened to it.
        chunk_events: events read from the file at a time (bounds memory).
        allow_truncated: replay a damaged or cut file up to the damage (logged once) instead of
            refusing it.

    Timestamps keep the recording's clock (plus the loop shift). Forward jumps > ``max_jump_us``
    are compressed, backward steps are dropped and counted (``stats``), see ``Timeline``; note
    that ``stream.files`` already refuses a file whose timestamps go back.
    ``FileSource.from_events(events, sensor_size, ...)`` replays an in-memory array the same way.

    Control (thread-safe, any time, also from the iterating thread between chunks): ``pause()``,
    ``resume()``, ``seek(position_s)`` (file time from the first event), ``set_speed(speed)``,
    ``set_loop(loop)``; ``status()`` tells position, duration, paused, speed and loop.
    The replay clock (``clock_us()``, output time) is the time before which no further event will
    come; it advances with the wall clock at ``speed`` and stops while paused. A seek forward
    (to the chunk being replayed or later) reads on from there, skipping the chunks before the
    target; a seek further back reads the file again from its start up to the target (decoding,
    ~25 M events/s: the readers cannot start mid-file). Output time never goes back (after a
    backward seek it continues 1 µs after the last event, as a loop does). The duration
    is measured by reading the file once in a background thread (``duration_s`` is None until then).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        speed: float | None = 1.0,
        loop: bool = False,
        start_offset_us: int = 0,
        slice_us: int = DEFAULT_SLICE_US,
        max_jump_us: int = DEFAULT_MAX_JUMP_US,
        chunk_events: int = 1 << 16,
        allow_truncated: bool = False,
    ) -> None:
        from stream.files import open_events  # stream.files imports the format readers

        path = Path(path)
        with open_events(path, chunk_events=chunk_events, allow_truncated=allow_truncated) as reader:  # fails early
            sensor_size, camera = reader.sensor_size, reader.camera
        name = f"file:{path.name}" + (f" ({camera})" if camera else "")

        def open_reader(chunk_events: int):
            return open_events(path, chunk_events=chunk_events, allow_truncated=allow_truncated)

        self._setup(lambda: open_reader(chunk_events), sensor_size, name,
                    speed, loop, start_offset_us, slice_us, max_jump_us)  # fmt: skip
        self._scanner = threading.Thread(target=self._measure, args=(lambda: open_reader(1 << 18),),
                                         name="file-duration", daemon=True)  # fmt: skip
        self._scanner.start()

    @classmethod
    def from_events(
        cls,
        events: np.ndarray,
        sensor_size: SensorSize,
        *,
        speed: float | None = 1.0,
        loop: bool = False,
        start_offset_us: int = 0,
        slice_us: int = DEFAULT_SLICE_US,
        max_jump_us: int = DEFAULT_MAX_JUMP_US,
        chunk_events: int = 1 << 16,
        name: str = "memory",
    ) -> "FileSource":
        """Replay an in-memory event array (same pacing, loop, offset and control as a file)."""
        check_events(events)
        self = cls.__new__(cls)
        chunks = [events[i : i + chunk_events] for i in range(0, len(events), max(1, chunk_events))]
        self._setup(lambda: contextlib.nullcontext(chunks), SensorSize(*sensor_size).validated(), name,
                    speed, loop, start_offset_us, slice_us, max_jump_us)  # fmt: skip
        if len(events):
            self._first_raw_us = int(events["t"][0])
            self._duration_us = int(events["t"][-1]) - self._first_raw_us
        else:
            self._duration_us = 0
        return self

    def _setup(self, open_chunks, sensor_size, name, speed, loop, start_offset_us, slice_us, max_jump_us) -> None:
        if start_offset_us < 0:
            raise ValueError(f"start_offset_us must be >= 0 µs, got {start_offset_us}")
        if slice_us < 1:
            raise ValueError(f"slice_us must be >= 1 µs, got {slice_us}")
        self._open_chunks = open_chunks
        self.sensor_size: SensorSize = sensor_size
        self.name: str = name
        self.speed = check_speed(speed)
        self.loop = bool(loop)
        self.paused = False
        self.start_offset_us = int(start_offset_us)
        self.slice_us = int(slice_us)
        self._timeline = Timeline(max_jump_us)
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by every command: a pacing wait re-reads the state
        self._lock = threading.Lock()  # guards the replay clock and the pending seek
        self._anchor: tuple[float, int] | None = None  # (monotonic s, output µs) the replay clock runs from
        self._horizon_us: int | None = None  # no further event before this output time
        self._offset_us = 0  # output time - file time of the newest released or pending event
        self._seek_us: int | None = None  # pending seek, µs from the first event
        self._hint_us = self.start_offset_us  # position before the replay clock runs (start, seek)
        self._first_raw_us: int | None = None  # raw time of the file's first event
        self._duration_us: int | None = None
        self._ended = False
        self.stats = ReplayStats()

    def _measure(self, open_reader) -> None:
        """Background thread: first and last timestamp of the file (the duration)."""
        first = last = None
        try:
            with open_reader() as reader:
                for chunk in reader:
                    if self._stop.is_set():
                        return
                    if first is None:
                        first = int(chunk["t"][0])
                    last = int(chunk["t"][-1])
        except (ValueError, OSError) as error:  # a damaged tail: the replay reports it when it gets there
            log.warning("%s: cannot measure the duration: %s", self.name, error)
            return
        with self._lock:
            self._first_raw_us = first if first is not None else self._first_raw_us
            self._duration_us = 0 if first is None else last - first

    # -- control (thread-safe) --

    def pause(self) -> None:
        """Stop the replay clock; no events are released until ``resume()``."""
        with self._lock:
            if not self.paused:
                clock = self._clock(time.monotonic())
                if clock is not None:
                    self._anchor = (time.monotonic(), clock)
                self.paused = True
        self._wake.set()

    def resume(self) -> None:
        """Run the replay clock again from where it stopped."""
        with self._lock:
            if self.paused:
                if self._anchor is not None:
                    self._anchor = (time.monotonic(), self._anchor[1])
                self.paused = False
        self._wake.set()

    def set_speed(self, speed: float | None) -> None:
        """Replay speed factor (0.1..100), or None for as fast as possible; applies at once."""
        speed = check_speed(speed)
        with self._lock:
            clock = self._clock(time.monotonic())
            if clock is not None:
                self._anchor = (time.monotonic(), clock)
            self.speed = speed
        self._wake.set()

    def set_loop(self, loop: bool) -> None:
        """Start again at the end of the file (True) or end there (False)."""
        self.loop = bool(loop)

    def seek(self, position_s: float) -> None:
        """Continue the replay at ``position_s`` seconds after the file's first event (plus the
        start offset's zero: file time). Raises ValueError for a negative, non-finite or
        past-the-end position (when the duration is known)."""
        if isinstance(position_s, bool) or not isinstance(position_s, (int, float)) or not math.isfinite(position_s):
            raise ValueError(f"seek position must be a number of seconds, got {position_s!r}")
        if position_s < 0:
            raise ValueError(f"seek position must be >= 0 s, got {position_s:g}")
        duration = self.duration_s
        if duration is not None and position_s > duration:
            raise ValueError(f"seek position {position_s:g} s is past the end of {self.name} ({duration:.3f} s)")
        with self._lock:
            self._seek_us = round(position_s * 1e6)
            self._hint_us = self._seek_us
        self._wake.set()

    @property
    def duration_s(self) -> float | None:
        """Time from the first to the last event of the file, seconds (None until measured)."""
        duration = self._duration_us
        return None if duration is None else duration / 1e6

    @property
    def position_s(self) -> float:
        """File time of the replay clock (seconds from the first event)."""
        with self._lock:
            return self._position_us(time.monotonic()) / 1e6

    def status(self) -> dict:
        """``position_s``, ``duration_s`` (None until measured), ``paused``, ``speed`` (a factor
        or "max"), ``loop``: JSON-ready."""
        duration = self.duration_s
        return {
            "position_s": round(self.position_s, 6),
            "duration_s": None if duration is None else round(duration, 6),
            "paused": self.paused,
            "speed": "max" if self.speed is None else self.speed,
            "loop": self.loop,
        }

    def clock_us(self) -> int | None:
        """Output time before which no further event will come (None before the first event)."""
        with self._lock:
            clock = self._clock(time.monotonic())
            horizon = self._horizon_us
        if clock is None or horizon is None:
            return horizon
        return min(clock, horizon)

    def _clock(self, now: float) -> int | None:
        """The replay clock in output µs (call with the lock held)."""
        if self._anchor is None:
            return None
        wall, clock_us = self._anchor
        if self.paused or self.speed is None:
            return clock_us
        return clock_us + int((now - wall) * self.speed * 1e6)

    def _position_us(self, now: float) -> int:
        if self._seek_us is not None:  # a seek not carried out yet
            return self._seek_us
        if self._ended and self._duration_us is not None:
            return self._duration_us
        clock = self._clock(now)
        if clock is None or self._first_raw_us is None:
            return self._hint_us
        position = clock - self._offset_us - self._first_raw_us
        if self._duration_us is not None:
            position = min(position, self._duration_us)
        return max(position, 0)

    # -- iteration --

    def __iter__(self) -> Iterator[np.ndarray]:
        start_us = self.start_offset_us
        first_pass = True
        while not self._stop.is_set():
            self._ended = False
            outcome = yield from self._play(start_us)
            if self._stop.is_set():
                return
            if isinstance(outcome, _Seek):  # a seek back interrupted the pass: read the file again
                self._note_seek()
                start_us, first_pass = outcome.target_us, False
                continue
            self.stats.passes += 1
            if outcome == 0:  # nothing at or after start_us
                if first_pass and self.start_offset_us:
                    raise SourceError(f"{self.name}: start_offset_us={self.start_offset_us} is past the last event")
                if first_pass or not self.loop:
                    self._ended = True
                    return
            elif not self.loop:
                self._ended = True
                return
            start_us, first_pass = self.start_offset_us, False

    def _play(self, start_us: int):
        """One pass from ``start_us`` (file time): yields chunks; returns the number of events
        released, or a ``_Seek`` when a seek to before the chunk being replayed interrupted it. A
        seek forward continues this pass at its target (the chunks before it are skipped)."""
        self._new_stretch()
        released = 0
        self.stats.reads += 1
        with self._open_chunks() as chunks:
            for chunk in chunks:
                while True:  # again from a forward seek's target within or after this chunk
                    outcome = yield from self._play_chunk(chunk, start_us)
                    if not isinstance(outcome, _Seek):
                        break
                    if self._first_raw_us + outcome.target_us < int(chunk["t"][0]):
                        return outcome
                    self._note_seek()
                    self._new_stretch()
                    start_us = outcome.target_us
                if outcome is None:  # stopped
                    return released
                released += outcome
            damage = getattr(chunks, "damage", "")  # allow_truncated: the pass ended at the damage
            if damage and not self.stats.damage:
                log.warning("%s is damaged or cut (%s); replayed the events before it", self.name, damage)
            self.stats.damage = damage
        return released

    def _new_stretch(self) -> None:
        """Output time goes on from here as after a loop; the replay clock starts again at the
        first event released."""
        self._timeline.rebase()
        with self._lock:
            self._anchor = None

    def _note_seek(self) -> None:
        # Events read but not released are forgotten: the next ones continue after the newest
        # released event or the clock, whichever is later (never before a clock value already
        # given out), not after the unreleased rest of the chunk.
        self._timeline.last_us = self.clock_us()
        self.stats.seeks += 1

    def _play_chunk(self, chunk: np.ndarray, start_us: int):
        """Release the events of ``chunk`` at or after ``start_us`` (file time), paced. Returns how
        many were released, None when stopped, or a ``_Seek`` when a seek came first."""
        if self._stop.is_set():
            return None
        if not len(chunk):
            return 0
        if self._first_raw_us is None:
            with self._lock:
                self._first_raw_us = int(chunk["t"][0])
        target = self._take_seek()
        if target is not None:
            return target
        begin = self._first_raw_us + start_us
        if start_us and int(chunk["t"][-1]) < begin:
            return 0
        if start_us:
            chunk = chunk[int(np.searchsorted(chunk["t"], begin, side="left")) :]
        raw_t = chunk["t"]
        out = self._timeline.apply(chunk)
        self._update_stats(len(out))
        if not len(out):
            return 0
        # output minus file time per event (exact unless the timeline dropped events)
        offset = out["t"] - raw_t if len(out) == len(chunk) else np.full(len(out), int(out["t"][-1] - raw_t[-1]))
        released = 0
        for piece, piece_offset in self._pieces(out, offset):
            outcome = yield from self._release(piece, piece_offset)
            if outcome is not None:
                return outcome
            if self._stop.is_set():
                return None
            released += len(piece)
        return released

    def _pieces(self, chunk: np.ndarray, offset: np.ndarray):
        """The chunk in slices of ``slice_us`` event time (paced), or whole (as fast as possible)."""
        if self.speed is None:
            yield chunk, int(offset[-1])
            return
        slice_index = chunk["t"] // self.slice_us
        cuts = np.flatnonzero(slice_index[1:] != slice_index[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(chunk)]
        for begin, end in zip(bounds[:-1], bounds[1:]):
            yield chunk[begin:end], int(offset[end - 1])

    def _take_seek(self) -> "_Seek | None":
        with self._lock:
            target, self._seek_us = self._seek_us, None
        return None if target is None else _Seek(target)

    def _release(self, piece: np.ndarray, offset_us: int):
        """Wait until the replay clock reaches the piece's last event (yielding empty chunks at
        least every IDLE_YIELD_S), then yield it. Returns a ``_Seek`` if a seek came first."""
        first, last = int(piece["t"][0]), int(piece["t"][-1])
        with self._lock:
            self._horizon_us = first if self._horizon_us is None else max(self._horizon_us, first)
            self._offset_us = offset_us
            if self._anchor is None:
                self._anchor = (time.monotonic(), first)
        while True:
            self._wake.clear()
            target = self._take_seek()
            if target is not None:
                return target
            if self._stop.is_set():
                return None
            with self._lock:
                if self.paused:
                    remaining = math.inf
                elif self.speed is None:
                    break
                else:
                    wall, clock_us = self._anchor
                    remaining = wall + (last - clock_us) / (self.speed * 1e6) - time.monotonic()
            if remaining <= 0:
                break
            woken = self._wake.wait(min(remaining, IDLE_YIELD_S))
            if not woken and remaining <= IDLE_YIELD_S:
                continue  # due now: release without an empty chunk first
            yield empty_events()
        with self._lock:
            if self.speed is None:
                self._anchor = (time.monotonic(), last)
            self._horizon_us = last
        yield piece
        return None

    def _update_stats(self, count: int) -> None:
        self.stats.events += count
        self.stats.dropped_backward = self._timeline.dropped_backward
        self.stats.jumps_compressed = self._timeline.jumps_compressed
        self.stats.restarts = self._timeline.restarts

    def stop(self) -> None:
        """End iteration (thread-safe)."""
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Seek:
    """A seek that interrupted a pass: where to continue (µs from the file's first event)."""

    target_us: int


# --- dv-processing inputs: camera and network -------------------------------------------------

POLL_S = 0.001  # how often a dv-processing input is polled when it has nothing, seconds
DEFAULT_DV_PORT = 7777  # DV's default network output port
LIVE_CLOCK_MARGIN_S = 0.02  # a live clock stays this far behind "last event + wall time since it"
FIRST_BACKOFF_S = 0.05  # first wait between reconnection attempts, seconds (doubles each time)


def _first_line(error: BaseException) -> str:
    """The first line of a native library's error, without Boost's source location
    (``connect: Connection refused [system:111 at /vcpkg/.../reactive_socket_service.hpp:588 ...]``)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line.split(" [system:", 1)[0].strip() or type(error).__name__


def _check_reconnect(max_backoff_s: float, give_up_after_s: float | None) -> None:
    if not max_backoff_s > 0:
        raise ValueError(f"max_backoff_s must be > 0 s, got {max_backoff_s}")
    if give_up_after_s is not None and not give_up_after_s >= 0:
        raise ValueError(f"give_up_after_s must be >= 0 s or None, got {give_up_after_s}")


class _LiveInput:
    """A dv-processing input (camera or network reader) that reconnects when it is lost: the one
    loop behind ``CameraSource`` and ``NetworkSource``.

    ``chunks()`` yields time-ordered chunks (an empty one at least every ``IDLE_YIELD_S``). When
    the device stops (unplugged, server gone, a dv-processing error) it counts a disconnect, logs
    "<label> lost; reconnecting" and calls ``open_device()`` with exponential backoff
    (``FIRST_BACKOFF_S`` doubling to ``max_backoff_s``) until it returns a device with the same
    sensor size (logged "<label> reconnected"). Events after a reconnection continue after the
    clock given out meanwhile (``Timeline.rebase``). Iteration ends on ``stop``, without
    ``reconnect``, after ``give_up_after_s`` without a device, or when the device comes back
    with another sensor size (``SourceError``). A lock keeps ``release()`` from destroying the
    device while another thread is inside a dv-processing call.

    Args:
        device: the opened dv-processing input.
        open_device: opens it again; raises ``SourceError`` while it is not there.
        label: names the input in log lines ("camera DVXplorer_DXA00093", "DV stream host:port").
        reconnect, max_backoff_s, give_up_after_s: see ``CameraSource`` / ``NetworkSource``.
    """

    def __init__(self, device, open_device: Callable[[], object], label: str, *, reconnect: bool,
                 max_backoff_s: float, give_up_after_s: float | None) -> None:  # fmt: skip
        self.device = device  # the arguments were checked by the source, before it opened the device
        self.sensor_size = SensorSize(*device.getEventResolution())
        self.open_device = open_device
        self.label = label
        self.reconnect = reconnect
        self.max_backoff_s = max_backoff_s
        self.give_up_after_s = give_up_after_s
        self.connected = True
        self.disconnects = 0
        self.reconnects = 0
        self.timeline = Timeline()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._last_event_wall = time.monotonic()  # when the newest event arrived

    def clock_us(self) -> int | None:
        """The newest event's time plus the wall time since it arrived, less
        ``LIVE_CLOCK_MARGIN_S`` (µs; None before any event). It keeps running while disconnected.
        The value given out is a promise: a later event earlier than it is raised to it
        (``Timeline.promise``; ``timeline.raised`` counts them)."""
        last = self.timeline.last_us
        if last is None:
            return None
        elapsed_s = max(0.0, time.monotonic() - self._last_event_wall - LIVE_CLOCK_MARGIN_S)
        clock = last + int(elapsed_s * 1e6)
        if self.timeline.floor_us is not None:
            clock = max(clock, self.timeline.floor_us)  # never back
        self.timeline.promise(clock)
        return clock

    def chunks(self) -> Iterator[np.ndarray]:
        while True:
            yield from self._poll()
            if self.stop.is_set() or self.device is None:
                return
            self.connected = False
            self.disconnects += 1
            self.release()
            if not self.reconnect:
                log.warning("%s closed", self.label)
                return
            log.warning("%s lost; reconnecting", self.label)
            device = yield from self._reopen()
            if device is None:
                return
            self.timeline.rebase(floor_us=self.clock_us())  # after the clock given out meanwhile
            with self._lock:
                if self.stop.is_set():
                    return  # closed while connecting: drop the new device
                self.device = device
            self.connected = True

    def _poll(self) -> Iterator[np.ndarray]:
        """Chunks while the device runs."""
        last_yield = time.monotonic()
        while not self.stop.is_set():
            with self._lock:
                if self.device is None or not self.device.isRunning():
                    return
                try:
                    batch = self.device.getNextEventBatch()
                except RuntimeError as error:  # a broken connection or device
                    log.warning("%s: %s", self.label, _first_line(error))
                    return
            if batch is not None and batch.size() > 0:
                chunk = self.timeline.apply(from_dv(batch.numpy()))
                last_yield = time.monotonic()
                if len(chunk):
                    self._last_event_wall = last_yield
                yield chunk
            elif time.monotonic() - last_yield >= IDLE_YIELD_S:
                yield empty_events()
                last_yield = time.monotonic()
            else:
                self.stop.wait(POLL_S)

    def _reopen(self):
        """Open the device again with backoff, yielding empty chunks; the device, or None."""
        delay, start = FIRST_BACKOFF_S, time.monotonic()
        while not self.stop.is_set():
            try:
                device = self.open_device()
            except SourceError as error:
                if self.give_up_after_s is not None and time.monotonic() - start >= self.give_up_after_s:
                    log.error("%s: giving up after %.1f s: %s", self.label, self.give_up_after_s, error)
                    return None
                wake = time.monotonic() + delay
                while (remaining := wake - time.monotonic()) > 0:
                    if self.stop.wait(min(remaining, IDLE_YIELD_S)):
                        return None
                    yield empty_events()
                delay = min(delay * 2, self.max_backoff_s)
                continue
            size = SensorSize(*device.getEventResolution())
            if size != self.sensor_size:
                raise SourceError(f"{self.label} came back with sensor {size}, was {self.sensor_size}")
            self.reconnects += 1
            log.warning("%s reconnected", self.label)
            return device
        return None

    def release(self) -> None:
        with self._lock:
            self.device = None  # dv-processing closes the device or socket when the object goes


class _LiveSource:
    """What ``CameraSource`` and ``NetworkSource`` share: iteration, clock, state, stop and close
    all go to their ``_LiveInput`` (``self._input``)."""

    name: str
    sensor_size: SensorSize
    _input: _LiveInput

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._input.chunks()

    @property
    def connected(self) -> bool:
        """False from the loss of the device or server until it is back."""
        return self._input.connected

    @property
    def disconnects(self) -> int:
        """How often the device or server was lost."""
        return self._input.disconnects

    @property
    def reconnects(self) -> int:
        """How often it came back."""
        return self._input.reconnects

    @property
    def raised_to_clock(self) -> int:
        """Events that came earlier than a clock already given out and were raised to it."""
        return self._input.timeline.raised

    def clock_us(self) -> int | None:
        """Stream time (µs) before which no further event will come (None before the first
        event); see ``_LiveInput.clock_us``."""
        return self._input.clock_us()

    def stop(self) -> None:
        """End iteration (thread-safe), also while reconnecting."""
        self._input.stop.set()

    def close(self) -> None:
        self.stop()
        self._input.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _camera_api() -> tuple[str, object]:
    """Which camera API this dv-processing has: ("2.x", dv.io.camera) or ("1.x", dv.io)."""
    camera = getattr(dv.io, "camera", None)
    if camera is not None and hasattr(camera, "discover") and hasattr(camera, "open"):
        return "2.x", camera
    if hasattr(dv.io, "CameraCapture"):
        return "1.x", dv.io
    raise SourceError(f"dv-processing {getattr(dv, '__version__', '?')} has no camera API (dv.io.camera or CameraCapture)")


def list_cameras() -> list[tuple[str, str]]:
    """The event cameras connected to this machine, as ``(model name, serial number)`` pairs."""
    version, api = _camera_api()
    if version == "2.x":
        return [(getattr(d.cameraModel, "name", str(d.cameraModel)), str(d.serialNumber)) for d in api.discover()]
    names = api.discoverDevices() if hasattr(api, "discoverDevices") else []  # 1.x: "DVXplorer_DXA00093"
    return [tuple(name.rsplit("_", 1)) if "_" in name else (name, "") for name in names]


def open_camera(serial: str | None = None) -> tuple[object, str]:
    """Open the camera with ``serial`` (None: the first one found) through dv-processing;
    returns the dv-processing camera and its serial number.

    Raises ``SourceError`` naming the cameras found when none is connected or none has
    ``serial``, or when it cannot be opened or has no event stream.
    """
    cameras = list_cameras()
    if not cameras:
        raise SourceError("no event camera connected (dv-processing found none; check the USB cable and udev rules)")
    found = ", ".join(f"{model} {number}" for model, number in cameras)
    if serial is not None and serial not in [number for _, number in cameras]:
        raise SourceError(f"no camera with serial {serial!r} connected; found: {found}")
    serial = serial if serial is not None else cameras[0][1]
    version, api = _camera_api()
    try:
        if version == "2.x":
            device = api.open(serial)
        else:
            model = next(model for model, number in cameras if number == serial)
            device = api.CameraCapture(f"{model}_{serial}" if serial else model)
    except RuntimeError as error:
        raise SourceError(f"cannot open camera {serial!r}: {_first_line(error)}") from None
    if not device.isEventStreamAvailable():
        raise SourceError(f"camera {device.getCameraName()} has no event stream")
    return device, serial


class CameraSource(_LiveSource):
    """A live event camera (DVS128, DAVIS, DVXplorer, ...) through dv-processing.

    Args:
        serial: serial number of the camera to open; None opens the first one found.
        reconnect: when the camera is lost (unplugged), open it again by its serial number with
            exponential backoff (logged) and keep going; if False, iteration ends.
        max_backoff_s: longest wait between reconnection attempts, seconds.
        give_up_after_s: end iteration after this long without the camera (None: never).

    Construction opens the camera (``SourceError`` naming the cameras found when none is
    connected or none has ``serial``). Timestamps are the camera's (microseconds, usually since
    the Unix epoch). While the camera is lost the source yields empty chunks every
    ``IDLE_YIELD_S``; ``connected``, ``disconnects`` and ``reconnects`` tell the state.
    """

    def __init__(self, serial: str | None = None, *, reconnect: bool = True, max_backoff_s: float = 2.0,
                 give_up_after_s: float | None = None) -> None:  # fmt: skip
        _check_reconnect(max_backoff_s, give_up_after_s)
        device, self.serial = open_camera(serial)
        self.name: str = device.getCameraName()
        self.sensor_size: SensorSize = SensorSize(*device.getEventResolution())
        self._input = _LiveInput(device, lambda: open_camera(self.serial)[0], f"camera {self.name}",
                                 reconnect=reconnect, max_backoff_s=max_backoff_s, give_up_after_s=give_up_after_s)  # fmt: skip


class NetworkSource(_LiveSource):
    """A DV network event stream (DV software's network output or dv-processing's NetworkWriter).

    Args:
        host: server address (TCP).
        port: server port.
        reconnect: when the server goes away, reconnect with exponential backoff (logged) and keep
            going; if False, iteration ends.
        max_backoff_s: longest wait between reconnection attempts, seconds.
        give_up_after_s: end iteration after this long without a server (None: never).

    Construction connects (``SourceError`` if no server answers or it sends no events). While
    disconnected the source yields empty chunks every ``IDLE_YIELD_S``; ``connected``,
    ``disconnects`` and ``reconnects`` tell the state. If a reconnected server's clock went
    back, timestamps are shifted to continue after the last event emitted (``Timeline.rebase``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_DV_PORT,
        *,
        reconnect: bool = True,
        max_backoff_s: float = 2.0,
        give_up_after_s: float | None = None,
    ) -> None:
        if not 1 <= int(port) <= 65535:
            raise SourceError(f"port must be 1..65535, got {port}")
        _check_reconnect(max_backoff_s, give_up_after_s)
        self.host, self.port = host, int(port)
        reader = self._connect()
        self.sensor_size: SensorSize = SensorSize(*reader.getEventResolution())
        self.name: str = f"dv:{host}:{self.port} ({reader.getCameraName()})"
        self._input = _LiveInput(reader, self._connect, f"DV stream {host}:{self.port}", reconnect=reconnect,
                                 max_backoff_s=max_backoff_s, give_up_after_s=give_up_after_s)  # fmt: skip

    def _connect(self):
        where = f"{self.host}:{self.port}"
        try:
            reader = dv.io.NetworkReader(self.host, self.port)
        except RuntimeError as error:
            raise SourceError(f"cannot connect to DV stream at {where} (is a DV server running?): {_first_line(error)}") from None
        if not reader.isEventStreamAvailable() or reader.getEventResolution() is None:
            raise SourceError(f"the DV stream at {where} carries no events")
        return reader


# --- specs --------------------------------------------------------------------------------------

SPECS = "camera, camera:SERIAL, file:PATH, dv:HOST:PORT, sim, auto"


def open_source(spec: str, **options) -> Source:
    """Open a source from a spec string; ``options`` go to the source's constructor.

    Specs: ``camera`` (first camera), ``camera:SERIAL``, ``file:PATH`` (FileSource: speed, loop,
    start_offset_us, ...), ``dv:HOST:PORT`` (NetworkSource), ``sim`` (stream.simulator's
    SimulatorSource), ``auto`` (the first connected camera, else the simulator; options go to
    whichever is opened).
    """
    kind, colon, rest = spec.partition(":")
    if kind == "camera":
        if colon and not rest:
            raise SourceError(f"source {spec!r}: camera:SERIAL needs a serial number")
        return CameraSource(rest or None, **options)
    if kind == "file":
        if not rest:
            raise SourceError(f"source {spec!r}: file:PATH needs a path")
        return FileSource(rest, **options)
    if kind == "dv":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise SourceError(f"source {spec!r}: expected dv:HOST:PORT, e.g. dv:127.0.0.1:{DEFAULT_DV_PORT}")
        return NetworkSource(host.strip("[]"), int(port), **options)
    if kind in ("sim", "auto") and not colon:
        if kind == "auto" and list_cameras():
            return CameraSource(None, **options)
        return _simulator_source(**options)
    raise SourceError(f"unknown source {spec!r}; expected one of: {SPECS}")


def _simulator_source(**options) -> Source:
    try:
        from stream.simulator import SimulatorSource
    except ImportError as error:
        raise SourceError(f"the simulator source is not available: {error}") from None
    return SimulatorSource(**options)
