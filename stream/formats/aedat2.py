"""jAER's AEDAT 2.0 files (DVS128, DAVIS240/346/640): reader, and a writer for tests and conversion.

Layout: ``#!AER-DAT2.0\\r\\n``, more ``#`` header lines (``# AEChip: eu.seebetter.ini.chips.davis.Davis346B``
names the camera class), then 8-byte big-endian records: int32 address, int32 timestamp (µs).
The timestamp wraps at 2^32 µs (71.6 min): a drop of more than 2^31 starts the next lap. What an
address means depends on the camera class, read as jAER's event extractors read it:

* DVS128 (15-bit addresses; ``AEChip`` DVS128 or Tmpdiff128, or every address below 2^16 when
  the header names no camera): bit 0 polarity with 1 = OFF (jAER flips it), bits 7..1 x, bits
  14..8 y; bit 15 (external input) or higher bits set: a special event, skipped and counted.
* DAVIS (32-bit addresses): bit 31 set = an APS sample (pixel readout) or, with bits 11..10 also
  set, an IMU sample word: skipped and counted. Bit 31 clear and bit 10 set: an external input
  event, skipped and counted. Else a DVS event: bits 21..12 x, bits 30..22 y, bit 11 polarity (1 = ON).

jAER mirrors the raw x (``x = width-1-raw x``) and puts the origin at the bottom left, so the
canonical, top-left event is ``x = width-1-raw x``, ``y = height-1-raw y``. The sensor size comes
from ``sensor_size`` (``--sensor``), the camera class (``CAMERAS``) widened to the largest address,
else the smallest DAVIS that holds the largest address.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numba
import numpy as np

from stream.events import EventFormatError, SensorSize, check_events
from stream.formats.words import (
    P_SENSOR_H, P_SENSOR_W, STATE_BAD, STATE_BAD_X, STATE_BAD_Y, STATE_CLAMPED, STATE_FIRST, STATE_LAST_T,
    WordFileReader, emit, new_state, note_address, on_sensor, ordered,
)

MAGIC = b"#!AER-DAT2.0"
MAX_HEADER_BYTES = 1 << 22  # jAER may write the chip's preferences into the header: ~100 kB
LAYOUT_DVS128, LAYOUT_DAVIS = 0, 1
P_LAYOUT = 0
S_PREVIOUS, S_LAPS, S_APS, S_IMU, S_SPECIAL, S_WIDE = range(STATE_FIRST, STATE_FIRST + 6)
DVS128 = SensorSize(128, 128)
# AEChip class name fragment (lower case) -> (layout, sensor); the first match wins.
CAMERAS: tuple[tuple[str, int, SensorSize], ...] = (
    ("dvs128", LAYOUT_DVS128, DVS128),
    ("tmpdiff128", LAYOUT_DVS128, DVS128),
    ("davis240", LAYOUT_DAVIS, SensorSize(240, 180)),
    ("davis346", LAYOUT_DAVIS, SensorSize(346, 260)),
    ("davis640", LAYOUT_DAVIS, SensorSize(640, 480)),
)
DAVIS_SENSORS = tuple(size for _, layout, size in CAMERAS if layout == LAYOUT_DAVIS)
_HEADER_LINE = re.compile(rb"#[\x20-\x7e\x80-\xff\t]*\r?\n")


@numba.njit(cache=True, nogil=True)
def decode_aedat2(data, start, end, state, params, out, scan):  # noqa: ANN001, ANN201 - see stream.formats.words
    """The AEDAT 2.0 kernel (signature and contract: ``stream.formats.words``). In scan mode it
    also records in ``S_WIDE`` whether any address has bits above 15 (not a DVS128 file)."""
    layout, right, bottom = params[P_LAYOUT], params[P_SENSOR_W] - 1, params[P_SENSOR_H] - 1
    capacity = out.shape[0]
    width, height = params[P_SENSOR_W], params[P_SENSOR_H]
    previous, laps = state[S_PREVIOUS], state[S_LAPS]
    last_t, clamped, wide = state[STATE_LAST_T], state[STATE_CLAMPED], state[S_WIDE]
    aps, imu, special = state[S_APS], state[S_IMU], state[S_SPECIAL]
    count = bad = bad_x = bad_y = 0
    index = start
    while index < end:
        if not scan and count >= capacity:
            break
        at = 8 * index
        address = ((np.int64(data[at]) << 24) | (np.int64(data[at + 1]) << 16) | (np.int64(data[at + 2]) << 8)
                   | np.int64(data[at + 3]))  # fmt: skip
        stamp = ((np.int64(data[at + 4]) << 24) | (np.int64(data[at + 5]) << 16) | (np.int64(data[at + 6]) << 8)
                 | np.int64(data[at + 7]))  # fmt: skip
        index += 1
        if previous - stamp > 1 << 31:
            laps += 1
        previous = stamp
        if address >> 16:
            wide = 1
        if layout == 0:
            if address >> 15:
                special += 1
                continue
            raw_x, raw_y, polarity = (address >> 1) & 0x7F, (address >> 8) & 0x7F, 1 - (address & 1)
        else:
            if address >> 31:
                if (address & 0xC00) == 0xC00:
                    imu += 1
                else:
                    aps += 1
                continue
            if address & 0x400:
                special += 1
                continue
            raw_x, raw_y, polarity = (address >> 12) & 0x3FF, (address >> 22) & 0x1FF, (address >> 11) & 1
        if scan:
            note_address(state, raw_x, raw_y)
        elif not on_sensor(right - raw_x, bottom - raw_y, width, height):
            bad, bad_x, bad_y = 1, right - raw_x, bottom - raw_y
            break
        else:
            t, last_t, clamped = ordered((laps << 32) + stamp, last_t, clamped)
            emit(out, count, t, right - raw_x, bottom - raw_y, polarity)
            count += 1
    state[STATE_LAST_T], state[STATE_CLAMPED], state[S_WIDE] = last_t, clamped, wide
    state[S_APS], state[S_IMU], state[S_SPECIAL] = aps, imu, special
    state[S_PREVIOUS], state[S_LAPS] = previous, laps
    state[STATE_BAD], state[STATE_BAD_X], state[STATE_BAD_Y] = bad, bad_x, bad_y
    return index, count


def read_header(path: Path) -> tuple[list[str], int]:
    """``(header lines without '#', data start in bytes)``; EventFormatError if it is not AEDAT 2.0."""
    with open(path, "rb") as file:
        head = file.read(MAX_HEADER_BYTES)
    if not head.startswith(MAGIC):
        raise EventFormatError(f"{path}: not an AEDAT 2.0 file (first bytes {head[:16]!r})")
    lines, at = [], 0
    while head[at : at + 1] == b"#":
        match = _HEADER_LINE.match(head, at)
        if match is None:  # binary data that starts with '#'
            break
        lines.append(match.group()[1:].decode("utf-8", "replace").strip())
        at = match.end()
    return lines, at


class Aedat2Reader(WordFileReader):
    """Reads the DVS events of a jAER AEDAT 2.0 file. A context manager.

    Args:
        path: the .aedat file.
        allow_truncated: read the whole records of a file cut inside a record.
        sensor_size: force the sensor size (the layout still comes from the header or the addresses).

    Attributes: ``sensor_size``, ``sensor_from``, ``camera`` (the AEChip class), ``layout``
    ("DVS128" or "DAVIS"), ``header_lines``, ``damage``, ``clamped``, ``skipped`` (APS samples,
    IMU words, special events: complete after a full read).
    """

    format = "aedat2"
    word_bytes = 8
    kernel = decode_aedat2
    skipped_slots = {"APS samples": S_APS, "IMU words": S_IMU, "special events": S_SPECIAL}

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False,
                 sensor_size: SensorSize | None = None) -> None:  # fmt: skip
        super().__init__(path, allow_truncated=allow_truncated)
        self.header_lines, data_start = read_header(self.path)
        self._open_words(data_start)
        try:
            chip = next((line.split(":", 1)[1].strip() for line in self.header_lines if line.startswith("AEChip:")), "")
            self.camera = chip.rsplit(".", 1)[-1]
            known = next(((layout, size) for fragment, layout, size in CAMERAS if fragment in chip.lower()), None)
            layout = known[0] if known else (LAYOUT_DAVIS if self._wide() else LAYOUT_DVS128)
            self.layout = "DVS128" if layout == LAYOUT_DVS128 else "DAVIS"
            self.params[P_LAYOUT] = layout
            stated = SensorSize(*sensor_size).validated() if sensor_size is not None else None
            if stated is None and layout == LAYOUT_DVS128:
                stated = DVS128
            guess = (f"AEChip {self.camera}", known[1]) if known else None
            self._set_sensor(*self._sensor(
                stated, "--sensor" if sensor_size is not None else "the DVS128 layout", guess, DAVIS_SENSORS
            ))
        except BaseException:
            self.close()
            raise

    def _wide(self) -> bool:
        """Whether any address uses bits above 15 (then it is not a DVS128 file)."""
        state = new_state()
        self.params[P_LAYOUT] = LAYOUT_DAVIS
        position = 0
        while position < self.words and not state[S_WIDE]:
            position, _ = self._run(state, np.empty((1, 2), dtype=np.int64), True, position)
        return bool(state[S_WIDE])



def write_aedat2(path: str | os.PathLike, events: np.ndarray, sensor_size: SensorSize, *,
                 layout: str = "DAVIS", chip: str | None = None) -> None:  # fmt: skip
    """Write canonical events as jAER would record them (big-endian records, x mirrored, y up).

    ``layout`` "DAVIS" (32-bit addresses) or "DVS128" (128x128 only); ``chip`` the ``# AEChip:``
    class (default: a DAVIS346 or DVS128 class name; "" writes no AEChip line). Timestamps must
    fit 32 bits (0 .. 2^32-1 µs).
    """
    check_events(events)
    width, height = SensorSize(*sensor_size).validated()
    if layout not in ("DAVIS", "DVS128") or (layout == "DVS128" and (width, height) != DVS128):
        raise ValueError(f"layout must be 'DAVIS' or 'DVS128' (128x128), got {layout!r} for {width}x{height}")
    if len(events) and not (0 <= int(events["t"].min()) and int(events["t"].max()) < 1 << 32):
        raise ValueError("AEDAT 2.0 timestamps must be in 0 .. 2^32-1 µs")
    raw_x = (width - 1 - events["x"].astype(np.int64))
    raw_y = (height - 1 - events["y"].astype(np.int64))
    if layout == "DVS128":
        address = (raw_y << 8) | (raw_x << 1) | (1 - (events["p"] != 0))
        default_chip = "ch.unizh.ini.jaer.chip.retina.DVS128"
    else:
        address = (raw_y << 22) | (raw_x << 12) | ((events["p"] != 0).astype(np.int64) << 11)
        default_chip = "eu.seebetter.ini.chips.davis.Davis346B"
    records = np.empty((len(events), 2), dtype=">u4")
    records[:, 0], records[:, 1] = address, events["t"]
    chip = default_chip if chip is None else chip
    lines = ["#!AER-DAT2.0", "# This is a raw AE data file - do not edit",
             "# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event",
             "# Timestamps tick is 1 us"] + ([f"# AEChip: {chip}"] if chip else [])  # fmt: skip
    with open(path, "wb") as file:
        file.write(("\r\n".join(lines) + "\r\n").encode("ascii"))
        file.write(records.tobytes())

