"""Prophesee DAT files (CD events, Metavision's ``.dat``): reader.

After the ``%`` header (``% Version 2``, ``% Width 640``, ``% Height 480``, ...) come two bytes,
the event type (0x0C CD, 0x00 2D: both read; 0x0E triggers: refused) and the event size (8), then
8-byte little-endian events: a uint32 timestamp (µs) and a uint32 with

    version 2 (default):  x = bits 13..0, y = bits 27..14, polarity = bits 31..28 != 0
    version 1:            x = bits 8..0,  y = bits 16..9,  polarity = bits 20..17 != 0

The 32-bit time wraps every 71.6 min: a timestamp more than 2^31 µs below the one before starts
the next lap. Polarity 1 = ON. Origin top-left. See ``stream.formats.words`` for chunks, clamping
and memory, ``stream.formats.prophesee`` for the header and the sensor size.
"""

from __future__ import annotations


import numba
import numpy as np

from stream.events import EventFormatError
from stream.formats.prophesee import PropheseeWordReader
from stream.formats.words import (
    P_SENSOR_H, P_SENSOR_W, STATE_BAD, STATE_BAD_X, STATE_BAD_Y, STATE_CLAMPED, STATE_FIRST, STATE_LAST_T, emit,
    note_address, on_sensor, ordered,
)

S_PREVIOUS, S_LAPS = STATE_FIRST, STATE_FIRST + 1
P_VERSION = 1
EVENT_TYPES = {0x0C: "CD", 0x00: "2D"}
EVENT_SIZE = 8


@numba.njit(cache=True, nogil=True)
def decode_dat(data, start, end, state, params, out, scan):  # noqa: ANN001, ANN201 - see stream.formats.words
    """The DAT kernel (signature and contract: ``stream.formats.words``)."""
    t0, version = params[0], params[P_VERSION]
    capacity = out.shape[0]
    width, height = params[P_SENSOR_W], params[P_SENSOR_H]
    previous, laps = state[S_PREVIOUS], state[S_LAPS]
    last_t, clamped = state[STATE_LAST_T], state[STATE_CLAMPED]
    count = bad = bad_x = bad_y = 0
    halves = data[: 8 * end].view(np.uint32)  # little-endian words, as the file and x86/ARM hosts have them
    index = start
    while index < end:
        if not scan and count >= capacity:
            break
        stamp, word = np.int64(halves[2 * index]), np.int64(halves[2 * index + 1])
        index += 1
        if previous - stamp > 1 << 31:
            laps += 1
        previous = stamp
        if version == 1:
            x, y, polarity = word & 0x1FF, (word >> 9) & 0xFF, (word >> 17) & 0xF
        else:
            x, y, polarity = word & 0x3FFF, (word >> 14) & 0x3FFF, word >> 28
        if scan:
            note_address(state, x, y)
        elif not on_sensor(x, y, width, height):
            bad, bad_x, bad_y = 1, x, y
            break
        else:
            t, last_t, clamped = ordered((laps << 32) + stamp + t0, last_t, clamped)
            emit(out, count, t, x, y, 1 if polarity else 0)
            count += 1
    state[STATE_LAST_T], state[STATE_CLAMPED] = last_t, clamped
    state[S_PREVIOUS], state[S_LAPS] = previous, laps
    state[STATE_BAD], state[STATE_BAD_X], state[STATE_BAD_Y] = bad, bad_x, bad_y
    return index, count


class DatReader(PropheseeWordReader):
    """Reads a Prophesee DAT file of CD (or 2D) events. A context manager.

    Args:
        path: the .dat file.
        allow_truncated: read the whole events of a file cut inside an event.
        sensor_size: force the sensor size; else the header's Width/Height, the largest address.

    Attributes: ``sensor_size``, ``sensor_from``, ``camera``, ``header``, ``version`` (1 or 2),
    ``event_type`` ("CD" or "2D"), ``damage``, ``clamped``.
    """

    format = "dat"
    word_bytes = 8
    kernel = decode_dat

    def _data_start(self) -> int:
        with open(self.path, "rb") as file:
            file.seek(self.header.length)
            type_and_size = file.read(2)
        if len(type_and_size) < 2:
            raise EventFormatError(f"{self.path}: DAT file ends before its event type and size (byte {self.header.length})")
        event_type, size = type_and_size
        if event_type not in EVENT_TYPES:
            raise EventFormatError(f"{self.path}: DAT event type 0x{event_type:02X} is not CD events (0x0C)")
        if size != EVENT_SIZE:
            raise EventFormatError(f"{self.path}: DAT event size {size} (expected 8)")
        self.event_type = EVENT_TYPES[event_type]
        return self.header.length + 2

    def _configure(self) -> None:
        version = self.header.fields.get("version", "2").strip()
        if version not in ("1", "2"):
            raise EventFormatError(f"{self.path}: DAT version {version!r} (expected 1 or 2)")
        self.version = int(version)
        self.params[P_VERSION] = self.version

