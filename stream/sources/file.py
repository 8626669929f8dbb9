"""File replay as a live source: ``FileSource`` paces an event file (or an in-memory array) in
real time, with pause, seek, speed and loop."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.events import SensorSize, check_events, empty_events
from stream.sources.base import IDLE_YIELD_S, SourceError, Timeline, check_speed

log = logging.getLogger(__name__)

DEFAULT_SLICE_US = 2_000  # paced replay releases events in slices of this much event time
DEFAULT_MAX_JUMP_US = 1_000_000


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


class FileSource:
    """Replays an event file (any ``stream.formats`` format) as a live source, paced in real time.

    Args:
        path: the event file (format detected by ``stream.formats.open_events``).
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
        format: read the file as this ``stream.formats.FORMATS`` format (default: from its first bytes).
        sensor_size: the file's sensor size (default: from the file; see ``stream.formats``).

    Timestamps keep the recording's clock (plus the loop shift). Forward jumps > ``max_jump_us``
    are compressed, backward steps are dropped and counted (``stats``), see ``Timeline``; note
    that ``stream.formats`` already refuses a file whose timestamps go back.
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
        format: str | None = None,
        sensor_size: SensorSize | None = None,
    ) -> None:
        from stream.formats import open_events  # the format readers load only here

        path = Path(path)
        with open_events(path, chunk_events=chunk_events, allow_truncated=allow_truncated, format=format,
                         sensor_size=sensor_size) as reader:  # fails early; fmt: skip
            sensor_size, camera, format = reader.sensor_size, reader.camera, reader.format
        name = f"file:{path.name}" + (f" ({camera})" if camera else "")

        def open_reader(chunk_events: int):
            return open_events(path, chunk_events=chunk_events, allow_truncated=allow_truncated, format=format,
                               sensor_size=sensor_size)  # fmt: skip

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
