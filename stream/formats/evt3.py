"""Prophesee RAW files in EVT 3.0 (IMX636 / EVK4, Gen4.1, GenX320): reader, and a writer through faery.

EVT 3.0 is a stream of 16-bit little-endian words, the type in the top 4 bits::

    0x0 EVT_ADDR_Y   y = bits 10..0 (bit 11: master/slave camera)
    0x2 EVT_ADDR_X   one event at x = bits 10..0, polarity bit 11, row y, the current time
    0x3 VECT_BASE_X  base x = bits 10..0 and polarity bit 11 of the vectors that follow
    0x4 VECT_12      events at base x + i for every set bit i of bits 11..0; base x += 12
    0x5 VECT_8       the same with bits 7..0; base x += 8
    0x6 TIME_LOW     time bits 11..0
    0x8 TIME_HIGH    time bits 23..12 (and time bits 11..0 = 0 until the next TIME_LOW)
    0xA EXT_TRIGGER  an external trigger: skipped and counted
    0x7, 0xE, 0xF    CONTINUED_4, OTHERS, CONTINUED_12: vendor data, ignored

Time is 24 bits of µs and wraps every 16.78 s: a TIME_HIGH more than 2048 steps (8.4 s) below the
one before starts the next lap. Polarity 1 = ON. Origin top-left. Events in file order; see
``stream.formats.words`` for chunks, clamping and memory, ``stream.formats.prophesee`` for the header.
"""

from __future__ import annotations

import os
import numba
import numpy as np

from stream.events import SensorSize, check_events
from stream.formats.prophesee import PropheseeWordReader
from stream.formats.words import (
    P_SENSOR_H, P_SENSOR_W, STATE_BAD, STATE_BAD_X, STATE_BAD_Y, STATE_CLAMPED, STATE_FIRST, STATE_LAST_T, emit,
    note_address, on_sensor, ordered,
)

S_MSB, S_LAPS, S_TIME, S_Y, S_BASE_X, S_POLARITY, S_TRIGGERS = range(STATE_FIRST, STATE_FIRST + 7)
MAX_SIDE = 2048  # 11-bit addresses
HALF_LAP_MSB = 2048  # TIME_HIGH steps; a larger drop is a wrap of the 24-bit time


@numba.njit(inline="always", nogil=True)
def _leading_zeros(mask: int) -> int:
    """Leading zeros of a 32-bit mask (> 0): 31 - its highest set bit."""
    highest = 31
    while not (mask >> highest) & 1:
        highest -= 1
    return 31 - highest


@numba.njit(inline="always", nogil=True)
def _ones(mask: int) -> int:
    """Set bits of a 12-bit mask."""
    count = 0
    while mask:
        mask &= mask - 1
        count += 1
    return count


@numba.njit(cache=True, nogil=True)
def decode_evt3(data, start, end, state, params, out, scan):  # noqa: ANN001, ANN201 - see stream.formats.words
    """The EVT 3.0 kernel (signature and contract: ``stream.formats.words``)."""
    t0 = params[0]
    capacity = out.shape[0]
    width, height = params[P_SENSOR_W], params[P_SENSOR_H]
    msb, laps, time = state[S_MSB], state[S_LAPS], state[S_TIME]
    y, base_x, polarity = state[S_Y], state[S_BASE_X], state[S_POLARITY]
    last_t, clamped, triggers = state[STATE_LAST_T], state[STATE_CLAMPED], state[S_TRIGGERS]
    count = bad = bad_x = bad_y = 0
    words = data[: 2 * end].view(np.uint16)  # little-endian words, as the file and x86/ARM hosts have them
    index = start
    while index < end:
        if not scan and count + 12 > capacity:
            break
        word = np.int64(words[index])
        index += 1
        kind = word >> 12
        if kind == 0x0:
            y = word & 0x7FF
        elif kind == 0x2:
            if scan:
                note_address(state, word & 0x7FF, y)
            elif not on_sensor(word & 0x7FF, y, width, height):
                bad, bad_x, bad_y = 1, word & 0x7FF, y
                break
            else:
                t, last_t, clamped = ordered(time + t0, last_t, clamped)
                emit(out, count, t, word & 0x7FF, y, (word >> 11) & 1)
                count += 1
        elif kind == 0x3:
            base_x = word & 0x7FF
            polarity = (word >> 11) & 1
        elif kind == 0x4 or kind == 0x5:
            bits = 12 if kind == 0x4 else 8
            mask = word & ((1 << bits) - 1)
            if scan:
                if mask:
                    note_address(state, base_x + 31 - _leading_zeros(mask), y)
            else:
                if mask and not on_sensor(base_x + 31 - _leading_zeros(mask), y, width, height):
                    bad, bad_x, bad_y = 1, base_x + 31 - _leading_zeros(mask), y
                    break
                # One time for the whole vector, then a write per bit and a count that moves only on
                # the set ones: no branch per bit (``out`` has room for 12 more, checked above).
                if mask:
                    t = time + t0
                    if t < last_t:
                        t, clamped = last_t, clamped + _ones(mask)
                    last_t = t
                    for bit in range(bits):
                        emit(out, count, t, base_x + bit, y, polarity)
                        count += (mask >> bit) & 1
            base_x += bits
        elif kind == 0x6:
            time = (laps << 24) | (max(msb, 0) << 12) | (word & 0xFFF)
        elif kind == 0x8:
            high = word & 0xFFF
            if msb - high > HALF_LAP_MSB:
                laps += 1
            msb = high
            time = (laps << 24) | (msb << 12)
        elif kind == 0xA:
            triggers += 1
    state[STATE_LAST_T], state[STATE_CLAMPED], state[S_TRIGGERS] = last_t, clamped, triggers
    state[S_MSB], state[S_LAPS], state[S_TIME] = msb, laps, time
    state[S_Y], state[S_BASE_X], state[S_POLARITY] = y, base_x, polarity
    state[STATE_BAD], state[STATE_BAD_X], state[STATE_BAD_Y] = bad, bad_x, bad_y
    return index, count


class Evt3Reader(PropheseeWordReader):
    """Reads a Prophesee EVT 3.0 RAW file (with or without its ``%`` header). A context manager.

    Args:
        path: the .raw file.
        allow_truncated: read the whole words of a file cut inside a word.
        sensor_size: force the sensor size; else header geometry, the camera, the largest address.

    Attributes: ``sensor_size``, ``sensor_from``, ``camera``, ``header``, ``damage``, ``clamped``,
    ``skipped`` ({"triggers": n} after a full read).
    """

    format = "evt3"
    word_bytes = 2
    max_events_per_word = 12
    kernel = decode_evt3
    skipped_slots = {"triggers": S_TRIGGERS}



class Evt3Writer:
    """Streams events into an EVT 3.0 RAW file through faery's encoder. A context manager.

    The header has ``% evt 3.0``, ``% format EVT3;width=W;height=H``, ``% geometry WxH`` and
    faery's ``% t0 T`` (the first event's time, µs): times are written relative to it, so a
    recording stamped with the epoch (DV's cameras: 1.6e15 µs) does not begin with the 380 million
    TIME_HIGH words it would take to count up to it (758 MB for a 2 s recording), and
    ``Evt3Reader`` (and faery) add it back exactly. Metavision ignores the t0 line and reads times
    from 0. Timestamps must be >= 0 and never decrease; the sensor at most 2048x2048.
    """

    def __init__(self, path: str | os.PathLike, sensor_size: SensorSize) -> None:
        import faery

        self.sensor_size = SensorSize(*sensor_size).validated()
        if max(self.sensor_size) > MAX_SIDE:
            raise ValueError(f"EVT 3.0 addresses have 11 bits: sensor {self.sensor_size} is larger than 2048x2048")
        self._encoder = faery.evt.Encoder(os.fspath(path), "evt3", True, tuple(self.sensor_size), True).__enter__()
        self._packet = np.dtype(faery.EVENTS_DTYPE)

    def write(self, events: np.ndarray) -> None:
        """Append events (t in µs, non-decreasing, >= 0; on the sensor)."""
        check_events(events)
        if not len(events):
            return
        if int(events["t"][0]) < 0:
            raise ValueError("EVT 3.0 timestamps must be >= 0 µs")
        packet = np.empty(len(events), dtype=self._packet)
        packet["t"], packet["x"], packet["y"], packet["on"] = events["t"], events["x"], events["y"], events["p"] != 0
        try:
            self._encoder.write({"events": packet})
        except RuntimeError as error:  # faery: timestamps going back, addresses off the sensor
            raise ValueError(f"cannot write EVT 3.0: {error}") from None

    def close(self) -> None:
        if self._encoder is not None:
            encoder, self._encoder = self._encoder, None
            encoder.__exit__(None, None, None)

    def __enter__(self) -> "Evt3Writer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

