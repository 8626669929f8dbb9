"""What the readers of word streams share: EVT 2.0, EVT 3.0, DAT and AEDAT 2.0 files are a header and
then fixed-size words (2, 4 or 8 bytes) decoded one after the other by a Numba kernel with state.

``WordFileReader`` maps the words (``np.memmap``: memory is one output chunk, the page cache holds
the rest) and runs its format's kernel chunk by chunk. Every kernel has the same signature::

    kernel(data, start, end, state, params, out, scan) -> next_word, events

``data`` the words as bytes (uint8), ``start``/``end`` word indices, ``state`` an int64 array the
kernel keeps between calls (slots ``STATE_*`` below, then its own), ``params`` int64 constants of
the file (t0, ... from slot 0; the sensor in ``P_SENSOR_W``/``P_SENSOR_H``), ``out`` an ``(n, 2)``
int64 view of an ``EVENT_DTYPE`` array that it fills with ``emit``; ``scan`` True: write nothing,
only record the largest x and y (``STATE_MAX_X``, ``STATE_MAX_Y``, raw addresses) to size a sensor
that no header names. A kernel returns before a word that could overflow ``out``, and stops at an
event off the sensor (````on_sensor``: ``STATE_BAD`` set), which ``chunks`` then raises.

The kernels keep the events contract themselves (time never decreasing, on the sensor, polarity
0 or 1: ``checks_events``), so ``open_events`` skips its own pass over their chunks. Time: a
timestamp smaller than the one before it is raised to it and counted (``clamped``), as faery
does; the formats' wrap-arounds are unwrapped by the kernels before that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numba
import numpy as np

from stream.events import EVENT_DTYPE, MAX_SENSOR_SIDE, TRUNCATED_HINT, EventFormatError, SensorSize, concatenate_events

STATE_LAST_T, STATE_CLAMPED, STATE_MAX_X, STATE_MAX_Y, STATE_BAD, STATE_BAD_X, STATE_BAD_Y = range(7)
STATE_FIRST = 7  # a kernel's own slots start here
STATE_SIZE = 16
PARAMS_SIZE = 8
P_SENSOR_W, P_SENSOR_H = PARAMS_SIZE - 2, PARAMS_SIZE - 1
NO_TIME = -(1 << 62)


@numba.njit(inline="always", nogil=True)
def ordered(t: int, last_t: int, clamped: int) -> tuple[int, int, int]:
    """``(t, last_t, clamped)`` after an event at ``t`` µs: a time before ``last_t`` is raised to it
    and counted. Kernels keep ``last_t`` and ``clamped`` in locals (``STATE_LAST_T``,
    ``STATE_CLAMPED`` between calls): a store into ``state`` per event would make every later load
    wait for it, since ``state`` and ``out`` may alias (6x slower)."""
    if t < last_t:
        return last_t, last_t, clamped + 1
    return t, t, clamped


@numba.njit(inline="always", nogil=True)
def emit(out: np.ndarray, n: int, t: int, x: int, y: int, p: int) -> None:
    """Write event ``n`` (t µs) as EVENT_DTYPE's two int64 words."""
    out[n, 0] = t
    out[n, 1] = (x & 0xFFFF) | ((y & 0xFFFF) << 16) | (p << 32)


@numba.njit(inline="always", nogil=True)
def on_sensor(x: int, y: int, width: int, height: int) -> bool:
    """Whether (x, y) lies on the ``width`` x ``height`` sensor (``params[P_SENSOR_W]``,
    ``[P_SENSOR_H]``, read once per call of a kernel). A kernel that meets an event off the sensor
    stops and leaves it in ``STATE_BAD*`` (stored after its loop, like every state slot)."""
    return x >= 0 and y >= 0 and x < width and y < height


@numba.njit(inline="always", nogil=True)
def note_address(state: np.ndarray, x: int, y: int) -> None:
    """Scan mode: remember the largest x and y."""
    if x > state[STATE_MAX_X]:
        state[STATE_MAX_X] = x
    if y > state[STATE_MAX_Y]:
        state[STATE_MAX_Y] = y


def new_state() -> np.ndarray:
    state = np.zeros(STATE_SIZE, dtype=np.int64)
    state[STATE_LAST_T] = NO_TIME
    state[STATE_MAX_X] = state[STATE_MAX_Y] = -1
    return state


def sensor_from_addresses(max_x: int, max_y: int, known: tuple[SensorSize, ...]) -> SensorSize:
    """The smallest known sensor that holds the address (max_x, max_y), else exactly its size."""
    for size in sorted(known, key=lambda size: size.width * size.height):
        if max_x < size.width and max_y < size.height:
            return size
    return SensorSize(max_x + 1, max_y + 1)


def widened(size: SensorSize, max_x: int, max_y: int) -> SensorSize:
    """``size`` grown to hold the address (max_x, max_y)."""
    return SensorSize(max(size.width, max_x + 1), max(size.height, max_y + 1))


class WordFileReader:
    """Base of the word-stream readers. A context manager; ``chunks()`` yields canonical events.

    Subclasses set ``format``, ``word_bytes``, ``max_events_per_word`` and ``kernel``, call
    ``_open_words(data_start)`` and then set ``sensor_size``, ``camera``, ``sensor_from`` and
    ``params``. Attributes: ``damage`` ("" or the stray bytes after the last whole word, with
    ``allow_truncated``), ``clamped`` (events whose time was raised to the one before), ``skipped``
    (what was not an event: name -> count), both complete after a full read.
    """

    format = ""
    word_bytes = 4
    max_events_per_word = 1
    kernel: Callable = None  # type: ignore[assignment]
    checks_events = True  # see the module docstring
    skipped_slots: dict[str, int] = {}  # name -> state slot of a count of skipped words

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False) -> None:
        self.path = Path(path)
        self.allow_truncated = allow_truncated
        self.damage = ""
        self.clamped = 0
        self.skipped: dict[str, int] = {}
        self.camera = ""
        self.sensor_from = ""
        self.params = np.zeros(PARAMS_SIZE, dtype=np.int64)
        self.words = 0
        self.data_start = 0
        self.position_bytes = 0  # how far chunks() has read (progress)
        self._data = np.zeros(0, dtype=np.uint8)

    def _open_words(self, data_start: int) -> None:
        """Map the words after ``data_start``; stray bytes after the last whole word are damage."""
        file_size = self.path.stat().st_size
        self.data_start = self.position_bytes = data_start
        payload = max(file_size - data_start, 0)
        self.words, stray = divmod(payload, self.word_bytes)
        if stray:
            message = (f"truncated: the file ends {stray} bytes into a {self.word_bytes}-byte word "
                       f"at byte {file_size - stray}")  # fmt: skip
            if not self.allow_truncated:
                raise EventFormatError(f"{self.path}: {message}; {TRUNCATED_HINT}")
            self.damage = message
        if self.words:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=data_start,
                                   shape=(self.words * self.word_bytes,))  # fmt: skip

    def _run(self, state: np.ndarray, out: np.ndarray, scan: bool, start: int) -> tuple[int, int]:
        return type(self).kernel(self._data, start, self.words, state, self.params, out, scan)

    def scan_addresses(self) -> tuple[int, int]:
        """``(max x, max y)`` of the raw addresses of every event in the file (-1, -1 if none)."""
        state = new_state()
        scratch = np.empty((1, 2), dtype=np.int64)
        position = 0
        while position < self.words:
            position, _ = self._run(state, scratch, True, position)
        return int(state[STATE_MAX_X]), int(state[STATE_MAX_Y])

    def _set_sensor(self, size: SensorSize, source: str) -> None:
        """Fix the sensor size (pixels) that events are checked against, and where it came from."""
        self.sensor_size, self.sensor_from = size, source
        self.params[P_SENSOR_W], self.params[P_SENSOR_H] = size

    def _sensor(self, stated: SensorSize | None, stated_from: str, guess: tuple[str, SensorSize] | None,
                known: tuple[SensorSize, ...]) -> tuple[SensorSize, str]:  # fmt: skip
        """The sensor size and where it came from: stated (``--sensor`` or the header), else a
        camera guess widened to the largest address, else the largest address."""
        if stated is not None:
            return stated, stated_from
        max_x, max_y = self.scan_addresses()
        if guess is not None:
            what, size = guess
            grown = widened(size, max_x, max_y)
            return grown, what if grown == size else f"{what}, widened to the largest address"
        if max_x < 0:
            raise EventFormatError(f"{self.path}: no sensor size in the file and no events to take it from; give --sensor WxH")
        size = sensor_from_addresses(max_x, max_y, known)
        if max(size) > MAX_SENSOR_SIDE:
            raise EventFormatError(f"{self.path}: addresses up to x={max_x}, y={max_y} do not fit a sensor")
        return size, "the largest address"

    def chunks(self, chunk_events: int = 1 << 18) -> Iterator[np.ndarray]:
        """Yield the events in file order, at most ``chunk_events`` per array."""
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        capacity = max(chunk_events, self.max_events_per_word)
        state = new_state()
        position = delivered = 0
        while position < self.words:
            out = np.empty(capacity, dtype=EVENT_DTYPE)
            position, count = self._run(state, out.view(np.int64).reshape(capacity, 2), False, position)
            self._account(state)
            self.position_bytes = self.data_start + position * self.word_bytes
            for start in range(0, count, chunk_events):
                yield out[start : min(count, start + chunk_events)]
            delivered += count
            if state[STATE_BAD]:
                raise EventFormatError(
                    f"{self.path}: event {delivered} at x={state[STATE_BAD_X]}, y={state[STATE_BAD_Y]} lies outside the "
                    f"{self.sensor_size} sensor (size from {self.sensor_from}; word at byte "
                    f"{self.data_start + (position - 1) * self.word_bytes})"
                )  # fmt: skip

    def _account(self, state: np.ndarray) -> None:
        self.clamped = int(state[STATE_CLAMPED])
        self.skipped = {name: int(state[slot]) for name, slot in self.skipped_slots.items() if state[slot]}

    def read_all(self) -> np.ndarray:
        """All events of the file in one array."""
        return concatenate_events(list(self.chunks()))

    def close(self) -> None:
        self._data = np.zeros(0, dtype=np.uint8)  # drops the memory map

    def __enter__(self) -> "WordFileReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
