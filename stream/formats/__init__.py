"""Event file formats: detection by magic bytes, one reader interface, conversion.

Formats, recognised by their first bytes (never by extension alone):

    aedat4      ``#!AER-DAT4.0``   iniVation DV recordings (stream.formats.aedat4)
    aedat3.1    ``#!AER-DAT3.``    DVS128 Gesture's original files (stream.formats.aedat31)
    aedat2      ``#!AER-DAT2.0``   jAER recordings, DVS128 and DAVIS (stream.formats.aedat2)
    tonic-npy   ``\\x93NUMPY``      tonic's preprocessed DVSGesture samples (stream.formats.tonic_npy)
    evt3, evt2  ``%`` header        Prophesee RAW files, the header names the encoding (stream.formats.evt3, evt2)
    dat         ``%`` header        Prophesee DAT files of CD events (stream.formats.dat)
    hdf5        ``\\x89HDF``        Prophesee HDF5 event files (stream.formats.hdf5; needs h5py)

``format=`` (``--format``) forces a reader, for files whose first bytes say nothing (a headerless
EVT 2.0 dump: ``--format evt2 --sensor 320x320``); ``sensor_size=`` (``--sensor``) forces the
sensor size of any format (events outside it are then an error). Orientation and polarity per
format: the README's table; every reader hands out canonical top-left events.

``open_events`` yields canonical event chunks (``stream.events.EVENT_DTYPE``, t in microseconds)
of at most ``chunk_events`` events, in file order, and guarantees that timestamps never decrease
(within and across chunks), that every event lies on the sensor and that polarities are 0 or 1:
a file that breaks this raises ``EventFormatError`` naming the event (the word-stream formats
raise a time that steps back to the one before instead, and count it: ``clamped``). Memory is
bounded by one chunk plus one packet of the file.

Bad input of any kind (random bytes, cut or corrupted files, sizes that claim gigabytes) ends in
``EventFormatError`` (a ``ValueError``) or valid events; ``tests/test_fuzz.py`` checks it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numba
import numpy as np

from stream.events import EventFormatError, SensorSize, concatenate_events
from stream.formats.aedat2 import Aedat2Reader
from stream.formats.aedat4 import Aedat4Reader, Aedat4Writer
from stream.formats.aedat31 import Aedat31Reader, Aedat31Writer
from stream.formats.dat import DatReader
from stream.formats.evt2 import Evt2Reader
from stream.formats.evt3 import Evt3Reader, Evt3Writer
from stream.formats.hdf5 import MAGIC as HDF5_MAGIC
from stream.formats.hdf5 import Hdf5Reader
from stream.formats.prophesee import read_header
from stream.formats.tonic_npy import TonicNpyReader, write_tonic_npy

# name -> (magic bytes, reader); the Prophesee formats share the '%' header and are told apart by it.
READERS = {
    "aedat4": (b"#!AER-DAT4.0", Aedat4Reader),
    "aedat3.1": (b"#!AER-DAT3.", Aedat31Reader),
    "aedat2": (b"#!AER-DAT2.0", Aedat2Reader),
    "tonic-npy": (b"\x93NUMPY", TonicNpyReader),
    "hdf5": (HDF5_MAGIC, Hdf5Reader),
    "evt3": (b"%", Evt3Reader),
    "evt2": (b"%", Evt2Reader),
    "dat": (b"%", DatReader),
}
FORMATS = tuple(READERS)
SIZED_READERS = ("aedat2", "hdf5", "evt3", "evt2", "dat")  # readers that take sensor_size themselves
OUTPUT_FORMATS = {".aedat4": "aedat4", ".aedat": "aedat3.1", ".npy": "tonic-npy", ".raw": "evt3"}


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise EventFormatError(f"{path} is a directory, not an event file")
    if not path.exists():
        raise EventFormatError(f"{path}: no such file")


def detect_format(path: str | os.PathLike) -> str:
    """The format of an event file from its magic bytes (and a Prophesee file's header);
    EventFormatError if none matches."""
    path = Path(path)
    _check_path(path)
    with open(path, "rb") as file:
        head = file.read(16)
    if not head:
        raise EventFormatError(f"{path}: empty file")
    if head.startswith(b"%"):
        encoding = read_header(path).encoding()
        if encoding in READERS:
            return encoding
        if encoding is None:
            raise EventFormatError(f"{path}: its Prophesee header names no event encoding; give --format evt2, evt3 or dat")
        raise EventFormatError(f"{path}: Prophesee {encoding!r} files are not supported (EVT 2.0, EVT 3.0 and DAT are)")
    for name, (magic, _reader) in READERS.items():
        if head.startswith(magic):
            return name
    raise EventFormatError(
        f"{path}: unknown event file format (first bytes {head!r}); expected AEDAT4, AEDAT 3.1 or 2.0, .npy, Prophesee "
        "RAW, DAT or HDF5 (a file without a header: --format evt2 --sensor WxH)"
    )


@numba.njit(cache=True, nogil=True)
def first_invalid(events: np.ndarray, previous_t: int, width: int, height: int) -> tuple[int, int]:
    """``(index, problem)`` of the first event that breaks the contract, or ``(-1, 0)``.

    problem 1: timestamp smaller than the one before it (``previous_t`` before events[0]);
    2: x or y outside the ``width`` x ``height`` sensor; 3: polarity not 0 or 1. One pass.
    """
    t, x, y, p = events["t"], events["x"], events["y"], events["p"]
    for index in range(t.shape[0]):
        if t[index] < previous_t:
            return index, 1
        if x[index] < 0 or x[index] >= width or y[index] < 0 or y[index] >= height:
            return index, 2
        if p[index] != 0 and p[index] != 1:
            return index, 3
        previous_t = t[index]
    return -1, 0


class EventFileReader:
    """An open event file of any supported format. A context manager; iterate for event chunks.

    Attributes: ``format`` (a ``FORMATS`` name), ``sensor_size`` (pixels), ``sensor_from`` (where
    the size came from), ``camera`` (str or ""), ``damage`` ("" or, after an ``allow_truncated``
    read stopped early, what was wrong), ``clamped`` (events whose time was raised to the one
    before) and ``skipped`` (what was not a DVS event: name -> count), both complete after a full read.
    """

    def __init__(self, path: str | os.PathLike, *, chunk_events: int = 1 << 18, allow_truncated: bool = False,
                 format: str | None = None, sensor_size: SensorSize | None = None) -> None:  # fmt: skip
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        if format is not None and format not in READERS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.path = Path(path)
        _check_path(self.path)
        self.format = format or detect_format(self.path)
        self.chunk_events = chunk_events
        reader_class = READERS[self.format][1]
        forced = None if sensor_size is None else SensorSize(*sensor_size).validated()
        if self.format in SIZED_READERS:
            self._reader = reader_class(self.path, allow_truncated=allow_truncated, sensor_size=forced)
        else:
            self._reader = reader_class(self.path, allow_truncated=allow_truncated)
            if forced is not None:
                self._reader.sensor_size = forced  # (AEDAT 3.1 checks its packets against it)
        self.sensor_size: SensorSize = self._reader.sensor_size
        self.sensor_from: str = "--sensor" if forced else getattr(self._reader, "sensor_from", "the file's header")
        self.camera: str = self._reader.camera

    @property
    def damage(self) -> str:
        return self._reader.damage

    @property
    def clamped(self) -> int:
        return getattr(self._reader, "clamped", 0)

    @property
    def skipped(self) -> dict[str, int]:
        return dict(getattr(self._reader, "skipped", {}))

    @property
    def position_bytes(self) -> int | None:
        """How far into the file reading has got (bytes), None where the reader cannot tell."""
        return getattr(self._reader, "position_bytes", None)

    def __iter__(self) -> Iterator[np.ndarray]:
        last_t = np.iinfo(np.int64).min
        width, height = self.sensor_size
        index = 0
        checked = getattr(self._reader, "checks_events", False)  # the word-stream kernels check as they decode
        for chunk in self._reader.chunks(self.chunk_events):
            if not len(chunk):
                continue
            at, problem = (-1, 0) if checked else first_invalid(chunk, last_t, width, height)
            if problem:
                event = chunk[at]
                if problem == 1:
                    before = last_t if at == 0 else int(chunk["t"][at - 1])
                    what = f"timestamps go back in time at event {index + at} ({before} -> {int(event['t'])} µs)"
                elif problem == 2:
                    what = (f"event {index + at} at x={event['x']}, y={event['y']} lies outside the {self.sensor_size} "
                            f"sensor (size from {self.sensor_from})")
                else:
                    what = f"event {index + at} has polarity {event['p']} (expected 0 or 1)"
                raise EventFormatError(f"{self.path}: {what}")
            last_t = int(chunk["t"][-1])
            index += len(chunk)
            yield chunk

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "EventFileReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_events(path: str | os.PathLike, *, chunk_events: int = 1 << 18, allow_truncated: bool = False,
                format: str | None = None, sensor_size: SensorSize | None = None) -> EventFileReader:  # fmt: skip
    """Open an event file of any ``FORMATS`` format (from its first bytes, or ``format``)."""
    return EventFileReader(path, chunk_events=chunk_events, allow_truncated=allow_truncated, format=format,
                           sensor_size=sensor_size)  # fmt: skip


def read_events(path: str | os.PathLike, *, allow_truncated: bool = False, format: str | None = None,
                sensor_size: SensorSize | None = None) -> tuple[np.ndarray, SensorSize]:  # fmt: skip
    """A whole event file in memory: canonical events (t in µs) and the sensor size."""
    with open_events(path, allow_truncated=allow_truncated, format=format, sensor_size=sensor_size) as reader:
        return concatenate_events(list(reader)), reader.sensor_size


def file_info(path: str | os.PathLike, *, allow_truncated: bool = False, format: str | None = None,
              sensor_size: SensorSize | None = None) -> dict:  # fmt: skip
    """What a file holds (reads it once, bounded memory).

    Keys: format, camera, width, height (pixels), sensor_from (where the size came from), events,
    t_start_us, t_end_us (None when empty), duration_s, event_rate (events per second, 0 when the
    duration is 0), damage ("" if none), clamped (events whose time was raised to the one before),
    skipped (what was not a DVS event: name -> count).
    """
    events = 0
    t_start = t_end = None
    with open_events(path, allow_truncated=allow_truncated, format=format, sensor_size=sensor_size) as reader:
        for chunk in reader:
            if t_start is None:
                t_start = int(chunk["t"][0])
            t_end = int(chunk["t"][-1])
            events += len(chunk)
        duration_s = (t_end - t_start) / 1e6 if events else 0.0
        return {
            "path": str(path),
            "format": reader.format,
            "camera": reader.camera,
            "width": reader.sensor_size.width,
            "height": reader.sensor_size.height,
            "sensor_from": reader.sensor_from,
            "events": events,
            "t_start_us": t_start,
            "t_end_us": t_end,
            "duration_s": duration_s,
            "event_rate": events / duration_s if duration_s > 0 else 0.0,
            "damage": reader.damage,
            "clamped": reader.clamped,
            "skipped": reader.skipped,
        }


def convert(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    allow_truncated: bool = False,
    camera_name: str | None = None,
    format: str | None = None,
    sensor_size: SensorSize | None = None,
    on_chunk: Callable[[EventFileReader, np.ndarray], None] | None = None,
) -> dict:
    """Convert an event file; the output format comes from the target's extension.

    ``.aedat4``, ``.aedat`` (AEDAT 3.1) and ``.raw`` (EVT 3.0, through faery) stream chunk by
    chunk; ``.npy`` (tonic) holds the whole sample in memory and needs a 128x128 input. A failed
    conversion removes the partial output. ``format``/``sensor_size`` force the input's reading
    (``open_events``); ``on_chunk(reader, chunk)`` is called after each chunk is written (progress).
    Returns ``file_info``-like counts: format, events, damage.
    """
    source, target = Path(source), Path(target)
    out_format = OUTPUT_FORMATS.get(target.suffix.lower())
    if out_format is None:
        raise ValueError(f"{target}: output extension must be one of {sorted(OUTPUT_FORMATS)}")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ValueError(f"{target}: output would overwrite the input")
    with open_events(source, allow_truncated=allow_truncated, format=format, sensor_size=sensor_size) as reader:
        camera = camera_name or reader.camera or "spikeformer-live"
        events = 0
        try:
            if out_format == "tonic-npy":
                chunks = list(reader)
                if reader.sensor_size != SensorSize(128, 128):
                    raise ValueError(f"tonic .npy holds 128x128 samples; {source} is {reader.sensor_size}")
                all_events = concatenate_events(chunks)
                write_tonic_npy(target, all_events)
                events = len(all_events)
            else:
                writer = (
                    Aedat4Writer(target, reader.sensor_size, camera) if out_format == "aedat4"
                    else Evt3Writer(target, reader.sensor_size) if out_format == "evt3"
                    else Aedat31Writer(target, reader.sensor_size)
                )  # fmt: skip
                with writer:
                    for chunk in reader:
                        writer.write(chunk)
                        events += len(chunk)
                        if on_chunk is not None:
                            on_chunk(reader, chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return {"format": out_format, "events": events, "damage": reader.damage}


def add_format_options(parser) -> None:  # noqa: ANN001 - an argparse parser or group
    """``--format NAME`` and ``--sensor WxH``: force how an event file is read (the one definition
    that ``info``, ``convert``, ``frames``, the source stage and the launcher share)."""
    parser.add_argument("--format", choices=FORMATS, default=None, dest="file_format",
                        help="read the file as this format (default: from its first bytes; needed for a "
                             "headerless EVT 2.0 dump)")  # fmt: skip
    parser.add_argument("--sensor", type=SensorSize.parse, default=None, dest="file_sensor",
                        help="the file's sensor size WxH (default: from the file; needed when it names none)")
