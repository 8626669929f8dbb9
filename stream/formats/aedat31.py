"""AEDAT 3.1 files (the DVS128 Gesture data set's original format).

File layout (little-endian)::

    #!AER-DAT3.1\\r\\n            text header, every line starts with '#'
    #Format: RAW\\r\\n
    #Source 1: DVS128\\r\\n
    #!END-HEADER\\r\\n            end of the header
    packets...                   28-byte packet header + eventCapacity * eventSize bytes

Packet header: int16 eventType, int16 eventSource, int32 eventSize, int32 eventTSOffset,
int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32 eventValid.
Polarity events (eventType 1) are 8 bytes: uint32 data, uint32 timestamp (microseconds) with
``x = data >> 17 & 0x1FFF``, ``y = data >> 2 & 0x1FFF``, ``p = data >> 1 & 1``, bit 0 = valid mark;
the full timestamp is ``eventTSOverflow << 31 | timestamp``. Other event types are skipped.
Events whose valid mark is 0 are dropped.

Sensor size: AEDAT 3.1 has no standard size field. The reader takes it from a
``#Sensor-Size: WxH`` line (written by ``write_aedat31`` for sensors other than 128x128), else from
the camera named in ``#Source N: NAME`` (DVS128 128x128, DAVIS240 240x180, DAVIS346 346x260,
DVXplorer 640x480), else 128x128 (DVS128 Gesture's camera).

Packet headers are never trusted: sizes are checked against the file before anything is read.
A damaged file raises ``EventFormatError`` naming the byte offset; with ``allow_truncated=True``
the reader stops quietly before the damage and returns every complete packet (``reader.damage``
then says what was wrong). Events come in file order (jAER/cAER write them time-ordered; this
module does not sort).

DVS128 Gesture's side files (labels CSV, trials lists) are read by ``stream.formats.labels``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from stream.events import (
    EVENT_DTYPE,
    TRUNCATED_HINT,
    EventFormatError,
    SensorSize,
    check_events,
    empty_events,
)

MAGIC_PREFIX = b"#!AER-DAT3."
END_OF_HEADER = b"#!END-HEADER"
PACKET_HEADER = struct.Struct("<hhiiiiii")  # 28 bytes
POLARITY_EVENT_TYPE = 1
POLARITY_EVENT_SIZE = 8
POLARITY_TS_OFFSET = 4
MAX_HEADER_BYTES = 1 << 20  # a header is a few hundred bytes; bound the scan on random input
MAX_PACKET_BYTES = 1 << 28  # 256 MiB: bounds memory per packet on corrupt input
MAX_COORDINATE = 0x1FFF  # 13 bits for x and y
TIMESTAMP_BITS = 31

# Camera name in "#Source N: NAME" -> sensor size (prefix match, case-insensitive).
KNOWN_CAMERAS: tuple[tuple[str, SensorSize], ...] = (
    ("DVS128", SensorSize(128, 128)),
    ("DAVIS240", SensorSize(240, 180)),
    ("DAVIS346", SensorSize(346, 260)),
    ("DVXPLORER", SensorSize(640, 480)),
)
DEFAULT_SENSOR = SensorSize(128, 128)

_RAW_POLARITY = np.dtype([("data", "<u4"), ("ts", "<u4")])


def _camera_for(sensor_size: SensorSize) -> str:
    for name, size in KNOWN_CAMERAS:
        if size == sensor_size:
            return name
    return "Unknown"


def _sensor_for(camera: str) -> SensorSize | None:
    for name, size in KNOWN_CAMERAS:
        if camera.upper().replace(" ", "").startswith(name):
            return size
    return None


def rechunk(pieces: Iterable[np.ndarray], chunk_events: int) -> Iterator[np.ndarray]:
    """Regroup event arrays into arrays of exactly ``chunk_events`` events (the last may be shorter).

    Empty input yields nothing. Memory held: one chunk plus one piece.
    """
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
    held: list[np.ndarray] = []
    held_count = 0
    for piece in pieces:
        held.append(piece)
        held_count += len(piece)
        if held_count < chunk_events:
            continue
        merged = np.concatenate(held, dtype=EVENT_DTYPE) if len(held) > 1 else held[0]
        cut = (len(merged) // chunk_events) * chunk_events
        for start in range(0, cut, chunk_events):
            yield merged[start : start + chunk_events]
        held = [merged[cut:]]
        held_count = len(merged) - cut
    if held_count:
        yield np.concatenate(held, dtype=EVENT_DTYPE)


class Aedat31Reader:
    """Reads an AEDAT 3.1 file packet by packet (bounded memory). A context manager.

    Args:
        path: the .aedat file.
        allow_truncated: stop quietly at the first damaged or incomplete packet instead of raising.

    Attributes: ``sensor_size`` (pixels), ``camera`` (from ``#Source``, or ""), ``header_lines``,
    ``damage`` ("" or what stopped the read when ``allow_truncated`` is set).
    """

    format = "aedat3.1"

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False) -> None:
        self.path = Path(path)
        self.allow_truncated = allow_truncated
        self.damage = ""
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self.file_size = os.fstat(self._file.fileno()).st_size
            self.header_lines = self._read_header()
            self._data_start = self._file.tell()
            self.camera, self.sensor_size = self._sensor_from_header(self.header_lines)
        except BaseException:
            self._file.close()
            raise

    def _read_header(self) -> list[str]:
        if self.file_size == 0:
            raise EventFormatError(f"{self.path}: empty file (expected an AEDAT 3.1 header)")
        first = self._file.readline(len(MAGIC_PREFIX) + 64)
        if not first.startswith(MAGIC_PREFIX):
            raise EventFormatError(f"{self.path}: not an AEDAT 3.x file (first bytes {first[:16]!r})")
        lines = [first.rstrip(b"\r\n").decode("ascii", "replace")]
        while True:
            offset = self._file.tell()
            if offset > MAX_HEADER_BYTES:
                raise EventFormatError(f"{self.path}: no '#!END-HEADER' within {MAX_HEADER_BYTES} bytes")
            line = self._file.readline(MAX_HEADER_BYTES)
            if not line.endswith(b"\n"):
                raise EventFormatError(f"{self.path}: header ends without '#!END-HEADER' at byte {offset}")
            if not line.startswith(b"#"):
                raise EventFormatError(f"{self.path}: header line at byte {offset} does not start with '#'")
            if line.startswith(END_OF_HEADER):
                return lines
            lines.append(line.rstrip(b"\r\n").decode("ascii", "replace"))

    def _sensor_from_header(self, lines: list[str]) -> tuple[str, SensorSize]:
        camera = ""
        explicit: SensorSize | None = None
        for line in lines:
            key, _, value = line.lstrip("#").partition(":")
            key, value = key.strip().lower(), value.strip()
            if key.startswith("source") and not camera:
                camera = value
            elif key == "sensor-size":
                try:
                    explicit = SensorSize.parse(value)
                except ValueError as error:
                    raise EventFormatError(f"{self.path}: bad '#Sensor-Size' header line: {error}") from None
        size = explicit or _sensor_for(camera) or DEFAULT_SENSOR
        if size.width > MAX_COORDINATE + 1 or size.height > MAX_COORDINATE + 1:
            raise EventFormatError(f"{self.path}: sensor {size} does not fit AEDAT 3.1's 13-bit coordinates")
        return camera, size

    def _fail(self, message: str) -> None:
        """Raise, or (allow_truncated) record the damage so the caller stops."""
        if not self.allow_truncated:
            raise EventFormatError(f"{self.path}: {message}; {TRUNCATED_HINT}")
        self.damage = message

    def packets(self) -> Iterator[np.ndarray]:
        """Yield the valid polarity events of each polarity packet, in file order."""
        self._file.seek(self._data_start)
        offset = self._data_start
        width, height = self.sensor_size
        while offset < self.file_size:
            raw_header = self._file.read(PACKET_HEADER.size)
            if len(raw_header) < PACKET_HEADER.size:
                return self._fail(f"truncated packet header at byte {offset} (file is {self.file_size} bytes)")
            event_type, _source, size, ts_offset, overflow, capacity, number, valid = PACKET_HEADER.unpack(
                raw_header
            )
            problem = ""
            if size <= 0 or capacity < 0 or not 0 <= valid <= number <= capacity or overflow < 0:
                problem = (
                    f"corrupt packet header at byte {offset} (eventSize {size}, eventCapacity {capacity}, "
                    f"eventNumber {number}, eventValid {valid}, eventTSOverflow {overflow})"
                )
            elif event_type == POLARITY_EVENT_TYPE and (
                size != POLARITY_EVENT_SIZE or ts_offset != POLARITY_TS_OFFSET
            ):
                problem = f"polarity packet at byte {offset} has eventSize {size}, eventTSOffset {ts_offset} (expected 8, 4)"
            elif size * capacity > MAX_PACKET_BYTES:
                problem = f"packet at byte {offset} claims {size * capacity} bytes (limit {MAX_PACKET_BYTES})"
            if problem:
                return self._fail(problem)
            body_bytes = size * capacity
            body_start = offset + PACKET_HEADER.size
            if body_start + body_bytes > self.file_size:
                return self._fail(
                    f"truncated packet at byte {offset}: needs {body_bytes} bytes, "
                    f"{self.file_size - body_start} left"
                )
            if event_type != POLARITY_EVENT_TYPE:
                self._file.seek(body_bytes, os.SEEK_CUR)
            else:
                body = self._file.read(number * POLARITY_EVENT_SIZE)
                self._file.seek(body_bytes - len(body), os.SEEK_CUR)
                events = _decode_polarity(np.frombuffer(body, dtype=_RAW_POLARITY), overflow)
                if len(events) and (int(events["x"].max()) >= width or int(events["y"].max()) >= height):
                    return self._fail(f"packet at byte {offset} has events outside the {self.sensor_size} sensor")
                yield events
            offset = body_start + body_bytes

    def chunks(self, chunk_events: int = 1 << 18) -> Iterator[np.ndarray]:
        """Yield the events in arrays of ``chunk_events`` (the last may be shorter), file order."""
        return rechunk(self.packets(), chunk_events)

    def read_all(self) -> np.ndarray:
        """All polarity events of the file in one array."""
        pieces = list(self.packets())
        return np.concatenate(pieces, dtype=EVENT_DTYPE) if pieces else empty_events()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Aedat31Reader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _decode_polarity(raw: np.ndarray, overflow: int) -> np.ndarray:
    data = raw["data"]
    keep = (data & 1).astype(bool)
    if not keep.all():
        data, stamps = data[keep], raw["ts"][keep]
    else:
        stamps = raw["ts"]
    events = np.empty(len(data), dtype=EVENT_DTYPE)
    events["t"] = stamps
    if overflow:
        events["t"] |= np.int64(overflow) << TIMESTAMP_BITS
    events["x"] = (data >> 17) & MAX_COORDINATE
    events["y"] = (data >> 2) & MAX_COORDINATE
    events["p"] = (data >> 1) & 1
    return events


def read_aedat31(path: str | os.PathLike, *, allow_truncated: bool = False) -> tuple[np.ndarray, SensorSize]:
    """Read every polarity event of an AEDAT 3.1 file (t in microseconds) and the sensor size.

    Sensor size: ``#Sensor-Size`` header line, else from the ``#Source`` camera name, else 128x128.
    """
    with Aedat31Reader(path, allow_truncated=allow_truncated) as reader:
        return reader.read_all(), reader.sensor_size


def iter_aedat31(
    path: str | os.PathLike, chunk_events: int = 1 << 18, *, allow_truncated: bool = False
) -> Iterator[np.ndarray]:
    """Yield an AEDAT 3.1 file's events in chunks of ``chunk_events`` (bounded memory)."""
    with Aedat31Reader(path, allow_truncated=allow_truncated) as reader:
        yield from reader.chunks(chunk_events)


def aedat31_header(sensor_size: SensorSize, start_time: str | None = None) -> bytes:
    """The text header ``write_aedat31`` writes (jAER/cAER DVS128 style, CRLF line ends)."""
    camera = _camera_for(sensor_size)
    lines = ["#!AER-DAT3.1", "#Format: RAW", f"#Source 1: {camera}"]
    if _sensor_for(camera) != sensor_size:
        lines.append(f"#Sensor-Size: {sensor_size.width}x{sensor_size.height}")
    if start_time is not None:
        if "\n" in start_time or "\r" in start_time:
            raise ValueError("start_time must be one line")
        lines.append(f"#Start-Time: {start_time}")
    lines.append(END_OF_HEADER.decode())
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


class Aedat31Writer:
    """Streams polarity events into an AEDAT 3.1 file. A context manager.

    ``with Aedat31Writer(path, SensorSize(128, 128)) as writer: writer.write(events)`` (repeatedly).
    Each ``write`` appends packets of at most ``packet_events`` events; a packet never spans a change
    of ``t >> 31`` (its eventTSOverflow). The header mimics jAER/cAER DVS128 files and the bytes
    depend only on the arguments (``start_time``, e.g. ``"2017-04-24 12:25:37 (TZ+0200)"``, is
    written only when given).

    Args:
        path: the .aedat file to create (overwritten).
        sensor_size: width, height in pixels (at most 8192 each).
        packet_events: most events per packet.
        start_time: optional ``#Start-Time`` header text.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sensor_size: SensorSize,
        *,
        packet_events: int = 8192,
        start_time: str | None = None,
    ) -> None:
        self.sensor_size = SensorSize(*sensor_size).validated()
        if self.sensor_size.width > MAX_COORDINATE + 1 or self.sensor_size.height > MAX_COORDINATE + 1:
            raise ValueError(f"sensor {self.sensor_size} does not fit AEDAT 3.1's 13-bit coordinates (max 8192)")
        if packet_events < 1:
            raise ValueError(f"packet_events must be >= 1, got {packet_events}")
        self.packet_events = packet_events
        header = aedat31_header(self.sensor_size, start_time)
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._file.write(header)

    def write(self, events: np.ndarray) -> None:
        """Append events (t in microseconds, >= 0; coordinates on the sensor)."""
        check_events(events)
        _check_ranges(events, self.sensor_size)
        raw = np.empty(len(events), dtype=_RAW_POLARITY)
        raw["data"] = (
            (events["x"].astype(np.uint32) << 17)
            | (events["y"].astype(np.uint32) << 2)
            | ((events["p"] != 0).astype(np.uint32) << 1)
            | np.uint32(1)
        )
        raw["ts"] = (events["t"] & ((1 << TIMESTAMP_BITS) - 1)).astype(np.uint32)
        overflow = events["t"] >> TIMESTAMP_BITS
        # Packet starts: every change of overflow, then every packet_events within a run.
        run_starts = np.flatnonzero(np.diff(overflow)) + 1
        run_bounds = [0, *run_starts.tolist(), len(events)] if len(events) else [0]
        raw_bytes = memoryview(raw).cast("B")
        for run_start, run_end in zip(run_bounds[:-1], run_bounds[1:]):
            run_overflow = int(overflow[run_start])
            for start in range(run_start, run_end, self.packet_events):
                count = min(self.packet_events, run_end - start)
                self._file.write(
                    PACKET_HEADER.pack(
                        POLARITY_EVENT_TYPE, 1, POLARITY_EVENT_SIZE, POLARITY_TS_OFFSET,
                        run_overflow, count, count, count,
                    )
                )
                self._file.write(raw_bytes[start * POLARITY_EVENT_SIZE : (start + count) * POLARITY_EVENT_SIZE])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Aedat31Writer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_aedat31(
    path: str | os.PathLike,
    events: np.ndarray,
    sensor_size: SensorSize,
    *,
    packet_events: int = 8192,
    start_time: str | None = None,
) -> None:
    """Write events (t in microseconds, >= 0) as an AEDAT 3.1 file of polarity packets.

    The header mimics jAER/cAER DVS128 files; the bytes depend only on the arguments
    (``start_time`` is written only when given). See ``Aedat31Writer``.
    """
    _check_ranges(check_events(events), SensorSize(*sensor_size))  # before the file is created
    with Aedat31Writer(path, sensor_size, packet_events=packet_events, start_time=start_time) as writer:
        writer.write(events)


def _check_ranges(events: np.ndarray, sensor_size: SensorSize) -> None:
    if not len(events):
        return
    if int(events["t"].min()) < 0:
        raise ValueError("AEDAT 3.1 timestamps must be >= 0 microseconds")
    for axis, side in (("x", sensor_size.width), ("y", sensor_size.height)):
        low, high = int(events[axis].min()), int(events[axis].max())
        if low < 0 or high >= side:
            raise ValueError(f"event {axis} must be in 0..{side - 1} for a {sensor_size} sensor, got {low}..{high}")
