"""Prophesee RAW files in EVT 2.0 (Gen3, Gen4, headerless GenX320 dumps): reader.

EVT 2.0 is a stream of 32-bit little-endian words, the type in the top 4 bits::

    0x0 CD_OFF, 0x1 CD_ON   one event: time bits 5..0 = bits 27..22, x = bits 21..11, y = bits 10..0
    0x8 EVT_TIME_HIGH       time bits 33..6 = bits 27..0
    0xA EXT_TRIGGER         an external trigger: skipped and counted
    0xE OTHERS, 0xF CONTINUED, the rest: vendor data or reserved, ignored

Time is 34 bits of µs and wraps every 4.8 h: a TIME_HIGH more than 2^27 steps (2.4 h) below the
one before starts the next lap. Polarity: CD_ON = 1. Origin top-left. A file without a ``%``
header (a GenX320 board's dump) reads with ``format="evt2"`` and ``sensor_size`` (``--format evt2
--sensor 320x320``); see ``stream.formats.words`` for chunks, clamping and memory.
"""

from __future__ import annotations


import numba
import numpy as np

from stream.formats.prophesee import PropheseeWordReader
from stream.formats.words import (
    P_SENSOR_H, P_SENSOR_W, STATE_BAD, STATE_BAD_X, STATE_BAD_Y, STATE_CLAMPED, STATE_FIRST, STATE_LAST_T, emit,
    note_address, on_sensor, ordered,
)

S_HIGH, S_LAPS, S_TRIGGERS = range(STATE_FIRST, STATE_FIRST + 3)
HALF_LAP_HIGH = 1 << 27


@numba.njit(cache=True, nogil=True)
def decode_evt2(data, start, end, state, params, out, scan):  # noqa: ANN001, ANN201 - see stream.formats.words
    """The EVT 2.0 kernel (signature and contract: ``stream.formats.words``)."""
    t0 = params[0]
    capacity = out.shape[0]
    width, height = params[P_SENSOR_W], params[P_SENSOR_H]
    high, laps = state[S_HIGH], state[S_LAPS]
    last_t, clamped, triggers = state[STATE_LAST_T], state[STATE_CLAMPED], state[S_TRIGGERS]
    count = bad = bad_x = bad_y = 0
    words = data[: 4 * end].view(np.uint32)  # little-endian words, as the file and x86/ARM hosts have them
    index = start
    while index < end:
        if not scan and count >= capacity:
            break
        word = np.int64(words[index])
        index += 1
        kind = word >> 28
        if kind <= 1:
            x, y = (word >> 11) & 0x7FF, word & 0x7FF
            if scan:
                note_address(state, x, y)
            elif not on_sensor(x, y, width, height):
                bad, bad_x, bad_y = 1, x, y
                break
            else:
                t = ((((laps << 28) | high) << 6) | ((word >> 22) & 0x3F)) + t0
                t, last_t, clamped = ordered(t, last_t, clamped)
                emit(out, count, t, x, y, kind)
                count += 1
        elif kind == 0x8:
            new_high = word & 0xFFFFFFF
            if high - new_high > HALF_LAP_HIGH:
                laps += 1
            high = new_high
        elif kind == 0xA:
            triggers += 1
    state[STATE_LAST_T], state[STATE_CLAMPED], state[S_TRIGGERS] = last_t, clamped, triggers
    state[S_HIGH], state[S_LAPS] = high, laps
    state[STATE_BAD], state[STATE_BAD_X], state[STATE_BAD_Y] = bad, bad_x, bad_y
    return index, count


class Evt2Reader(PropheseeWordReader):
    """Reads a Prophesee EVT 2.0 RAW file (with or without its ``%`` header). A context manager.

    Args:
        path: the .raw file.
        allow_truncated: read the whole words of a file cut inside a word.
        sensor_size: force the sensor size; else header geometry, the camera, the largest address.

    Attributes: ``sensor_size``, ``sensor_from``, ``camera``, ``header``, ``damage``, ``clamped``,
    ``skipped`` ({"triggers": n} after a full read).
    """

    format = "evt2"
    word_bytes = 4
    kernel = decode_evt2
    skipped_slots = {"triggers": S_TRIGGERS}

