"""iniVation AEDAT4 files: streaming reader and streaming writer.

Reading: an intact file (one with its trailing FileDataTable) is read through dv-processing's
``MonoCameraRecording``, whose event batches already have the canonical memory layout (a view, no
copy: the fastest reader here). dv-processing refuses a file without that table (a recording cut
short by a crash or a full disk); such a file, and any file dv-processing will not open, is read
through faery's ``aedat.Decoder``, packet by packet, which also finds where the damage starts.
Writing from Python through dv-processing means one ``push_back`` per event, so the writer uses
faery's ``aedat.Encoder``, which takes NumPy packets at > 10 M events/s. Files written here open in
dv-processing and DV.

Reader guarantees:
  * events of the FIRST event stream of the file (lowest stream id), in file order, in the
    canonical ``EVENT_DTYPE`` (t in microseconds);
  * ``sensor_size`` from that stream's ``sizeX``/``sizeY``; ``camera`` from its ``source``;
  * no timestamp-order check here (``stream.files`` checks it); DV and this writer write
    non-decreasing timestamps;
  * a damaged or cut file raises ``EventFormatError``; with ``allow_truncated=True`` every
    complete packet before the damage is yielded and ``reader.damage`` says what stopped it.
"""

from __future__ import annotations

import os
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator

import dv_processing as dv
import faery
import numpy as np

from stream.events import (
    EventFormatError,
    SensorSize,
    check_events,
    concatenate_events,
    from_aedat,
    from_dv,
    to_aedat,
)

_aedat = faery.aedat  # faery's compiled AEDAT4 codec (Decoder, Encoder, DescriptionNode, ...)

MAGIC = b"#!AER-DAT4.0\r\n"
MAX_HEADER_BYTES = 1 << 24  # the IOHeader holds a few kB of XML
COMPRESSIONS = {"lz4": ("lz4", 1), "zstd": ("zstd", 3), None: None}
DEFAULT_CAMERA = "spikeformer-live"


def _check_io_header(path: Path) -> None:
    """Check the file's magic and IOHeader (a FlatBuffer holding the XML description) in Python.

    faery's XML parser panics (a BaseException, not an error) on some malformed descriptions,
    so the header is checked here first: sizes against the file, the XML for well-formedness.
    """
    with open(path, "rb") as file:  # clear OSErrors for missing files and directories
        magic = file.read(len(MAGIC))
        if not magic:
            raise EventFormatError(f"{path}: empty file (expected an AEDAT4 header)")
        if magic != MAGIC:
            raise EventFormatError(f"{path}: not an AEDAT4 file (first bytes {magic[:16]!r})")
        size_bytes = file.read(4)
        if len(size_bytes) < 4:
            raise EventFormatError(f"{path}: truncated AEDAT4 header at byte {len(MAGIC)}")
        (size,) = struct.unpack("<I", size_bytes)
        if size > MAX_HEADER_BYTES:
            raise EventFormatError(f"{path}: AEDAT4 header claims {size} bytes (limit {MAX_HEADER_BYTES})")
        header = file.read(size)
    if len(header) < size:
        raise EventFormatError(f"{path}: truncated AEDAT4 header (needs {size} bytes, {len(header)} left)")

    def read(fmt: str, offset: int) -> int:
        if not 0 <= offset <= len(header) - struct.calcsize(fmt):
            raise EventFormatError(f"{path}: corrupt AEDAT4 header (offset {offset} outside {size} bytes)")
        return struct.unpack_from(fmt, header, offset)[0]

    table = read("<I", 0)
    vtable = table - read("<i", table)
    info_field = read("<H", vtable + 8) if read("<H", vtable) > 8 else 0  # field 2: infoNode string
    if not info_field:
        raise EventFormatError(f"{path}: AEDAT4 header has no description")
    text_at = table + info_field + read("<I", table + info_field)
    length = read("<I", text_at)
    if text_at + 4 + length > size:
        raise EventFormatError(f"{path}: corrupt AEDAT4 header (description runs past the header)")
    try:
        ElementTree.fromstring(header[text_at + 4 : text_at + 4 + length].decode("utf-8"))
    except (UnicodeDecodeError, ElementTree.ParseError) as error:
        raise EventFormatError(f"{path}: corrupt AEDAT4 description ({error})") from None


def _info_attributes(description: list, stream_id: int) -> dict[str, object]:
    """The ``/mainloop/.../outInfo/<stream_id>/info/`` attributes of a description tree."""
    pending = list(description)
    while pending:
        node = pending.pop()
        if node.name == "info" and (node.path or "").rstrip("/").endswith(f"outInfo/{stream_id}/info"):
            return {key: attribute.value for key, attribute in node.attributes.items()}
        pending.extend(node.nodes)
    return {}


class Aedat4Reader:
    """Reads the events of an AEDAT4 file packet by packet. A context manager.

    Args:
        path: the .aedat4 file.
        allow_truncated: stop quietly at the first damaged packet instead of raising.

    Attributes: ``sensor_size`` (pixels), ``camera`` (str, "" if the file names none),
    ``stream_id`` (the event stream read), ``damage`` ("" or what stopped an allow_truncated read).
    """

    format = "aedat4"

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False) -> None:
        self.path = Path(path)
        self.allow_truncated = allow_truncated
        self.damage = ""
        _check_io_header(self.path)
        self._recording = self._open_with_dv()
        if self._recording is not None:
            width, height = self._recording.getEventResolution()
            self.sensor_size = SensorSize(int(width), int(height)).validated()
            self.camera = str(self._recording.getCameraName())
            self.stream_id = -1  # dv-processing picks the recording's event stream itself
            self._decoder = None
            return
        try:
            self._decoder = _aedat.Decoder(self.path).__enter__()
        except RuntimeError as error:
            raise EventFormatError(f"{self.path}: unreadable AEDAT4 header ({error})") from None
        event_tracks = sorted((track for track in self._decoder.tracks() if track.data_type == "events"),
                              key=lambda track: track.id)
        if not event_tracks:
            raise EventFormatError(f"{self.path}: AEDAT4 file has no event stream")
        track = event_tracks[0]
        self.stream_id = track.id
        try:
            self.sensor_size = SensorSize(*track.dimensions).validated()
        except (TypeError, ValueError) as error:
            raise EventFormatError(f"{self.path}: bad event stream dimensions {track.dimensions}: {error}") from None
        self.camera = str(_info_attributes(self._decoder.description(), track.id).get("source", ""))

    def _open_with_dv(self) -> "dv.io.MonoCameraRecording | None":
        """dv-processing's reader if it accepts the file (intact, with an event stream), else None."""
        try:
            recording = dv.io.MonoCameraRecording(str(self.path))
        except RuntimeError:
            return None
        return recording if recording.isEventStreamAvailable() else None

    def packets(self) -> Iterator[np.ndarray]:
        """Yield each event packet of the stream as canonical events, in file order."""
        delivered = 0
        try:
            if self._recording is not None:
                while (batch := self._recording.getNextEventBatch()) is not None:
                    events = from_dv(batch.numpy())
                    delivered += len(events)
                    yield events
                return
            for track, packet in self._decoder:
                if track.id == self.stream_id:
                    delivered += len(packet)
                    yield from_aedat(packet)
        except RuntimeError as error:
            message = f"damaged or truncated after {delivered} events ({error})"
            if not self.allow_truncated:
                raise EventFormatError(f"{self.path}: {message}") from None
            self.damage = message

    def chunks(self, chunk_events: int = 1 << 18) -> Iterator[np.ndarray]:
        """Yield the file's packets in order, each cut into arrays of at most ``chunk_events``.

        Packets are not merged: copying them together would cost as much as decoding them.
        """
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        for packet in self.packets():
            for start in range(0, len(packet), chunk_events):
                yield packet[start : start + chunk_events]

    def read_all(self) -> np.ndarray:
        """All events of the stream in one array."""
        return concatenate_events(list(self.packets()))

    def close(self) -> None:
        self._recording = None
        if self._decoder is not None:
            self._decoder.__exit__(None, None, None)

    def __enter__(self) -> "Aedat4Reader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_aedat4(path: str | os.PathLike, *, allow_truncated: bool = False) -> tuple[np.ndarray, SensorSize]:
    """Read every event of the first event stream of an AEDAT4 file, and its sensor size."""
    with Aedat4Reader(path, allow_truncated=allow_truncated) as reader:
        return reader.read_all(), reader.sensor_size


def iter_aedat4(
    path: str | os.PathLike, chunk_events: int = 1 << 18, *, allow_truncated: bool = False
) -> Iterator[np.ndarray]:
    """Yield an AEDAT4 file's events in chunks of ``chunk_events`` (bounded memory)."""
    with Aedat4Reader(path, allow_truncated=allow_truncated) as reader:
        yield from reader.chunks(chunk_events)


class Aedat4Writer:
    """Streams events into an AEDAT4 file (one event stream, DV-compatible). A context manager.

    ``with Aedat4Writer(path, SensorSize(346, 260), camera_name="DAVIS346_1") as writer:
    writer.write(events)`` (repeatedly), or ``open()`` / ``write()`` / ``close()`` by hand.
    Each ``write`` appends packets of at most ``packet_events`` events. Timestamps must be >= 0 and
    never decrease across writes; coordinates must lie on the sensor (ValueError otherwise, nothing
    written). If the process dies before ``close()``, the file lacks its index: ``open_events`` with
    ``allow_truncated=True`` still reads every packet written.

    Args:
        path: the .aedat4 file to create (overwritten).
        sensor_size: width, height in pixels.
        camera_name: stored as the stream's ``source`` (DV shows it as the camera).
        compression: "lz4" (DV's default), "zstd" or None.
        packet_events: most events per packet.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sensor_size: SensorSize,
        camera_name: str = DEFAULT_CAMERA,
        *,
        compression: str | None = "lz4",
        packet_events: int = 1 << 15,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
        if packet_events < 1:
            raise ValueError(f"packet_events must be >= 1, got {packet_events}")
        self.path = Path(path)
        self.sensor_size = SensorSize(*sensor_size).validated()
        self.camera_name = camera_name
        self.compression = compression
        self.packet_events = packet_events
        self.events_written = 0
        self._last_t = 0
        self._encoder = None

    def _description(self) -> list:
        node, attribute = _aedat.DescriptionNode, _aedat.DescriptionAttribute
        root = "/mainloop/Recorder/outInfo/"
        stream = {
            "compression": attribute("string", (self.compression or "none").upper()),
            "originalModuleName": attribute("string", "spikeformer-live"),
            "originalOutputName": attribute("string", "events"),
            "typeIdentifier": attribute("string", "EVTS"),
            "typeDescription": attribute("string", "Array of events (polarity ON/OFF)."),
        }
        info = {
            "sizeX": attribute("int", self.sensor_size.width),
            "sizeY": attribute("int", self.sensor_size.height),
            "source": attribute("string", self.camera_name),
        }
        return [node("outInfo", root, {}, [node("0", root + "0/", stream, [node("info", root + "0/info/", info, [])])])]

    def open(self) -> "Aedat4Writer":
        """Create the file and write its header. Returns self."""
        if self._encoder is None:
            encoder = _aedat.Encoder(self.path, self._description(), COMPRESSIONS[self.compression])
            self._encoder = encoder.__enter__()
        return self

    def write(self, events: np.ndarray) -> None:
        """Append events (t in microseconds, non-decreasing, continuing the previous write)."""
        if self._encoder is None:
            raise ValueError(f"{self.path}: writer is not open")
        check_events(events)
        if not len(events):
            return
        self._check(events)
        for start in range(0, len(events), self.packet_events):
            self._encoder.write(0, to_aedat(events[start : start + self.packet_events]))
        self._last_t = int(events["t"][-1])
        self.events_written += len(events)

    def _check(self, events: np.ndarray) -> None:
        t = events["t"]
        if int(t[0]) < self._last_t or int(t[0]) < 0:
            raise ValueError(f"timestamps must be >= 0 and continue from {self._last_t} µs, got {int(t[0])}")
        backwards = np.flatnonzero(t[1:] < t[:-1])
        if len(backwards):
            index = int(backwards[0]) + 1
            raise ValueError(f"timestamps decrease at event {index} ({int(t[index - 1])} -> {int(t[index])} µs)")
        for axis, side in (("x", self.sensor_size.width), ("y", self.sensor_size.height)):
            low, high = int(events[axis].min()), int(events[axis].max())
            if low < 0 or high >= side:
                raise ValueError(f"event {axis} must be in 0..{side - 1} for a {self.sensor_size} sensor, got {low}..{high}")

    def close(self) -> None:
        """Write the file's index and close it (safe to call twice)."""
        if self._encoder is not None:
            encoder, self._encoder = self._encoder, None
            encoder.__exit__(None, None, None)

    def __enter__(self) -> "Aedat4Writer":
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_aedat4(
    path: str | os.PathLike,
    events: np.ndarray,
    sensor_size: SensorSize,
    camera_name: str = DEFAULT_CAMERA,
    *,
    compression: str | None = "lz4",
) -> None:
    """Write events (t in microseconds, non-decreasing) as an AEDAT4 file in one call."""
    with Aedat4Writer(path, sensor_size, camera_name, compression=compression) as writer:
        writer.write(events)
