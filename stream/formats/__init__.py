"""Event file formats: detection by magic bytes, one reader interface, conversion.

Formats, recognised by their first bytes (never by extension alone):

    aedat4      ``#!AER-DAT4.0``   iniVation DV recordings (stream.formats.aedat4)
    aedat3.1    ``#!AER-DAT3.``    DVS128 Gesture's original files (stream.formats.aedat31)
    tonic-npy   ``\\x93NUMPY``      tonic's preprocessed DVSGesture samples (stream.formats.tonic_npy)

``open_events`` yields canonical event chunks (``stream.events.EVENT_DTYPE``, t in microseconds)
of at most ``chunk_events`` events, in file order, and guarantees that timestamps never decrease
(within and across chunks), that every event lies on the sensor and that polarities are 0 or 1:
a file that breaks this raises ``EventFormatError`` naming the event. Memory is bounded by one
chunk plus one packet of the file.

Bad input of any kind (random bytes, cut or corrupted files, sizes that claim gigabytes) ends in
``EventFormatError`` (a ``ValueError``) or valid events; ``tests/test_fuzz.py`` checks it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numba
import numpy as np

from stream.events import EVENT_DTYPE, EventFormatError, SensorSize, empty_events
from stream.formats.aedat4 import Aedat4Reader, Aedat4Writer
from stream.formats.aedat31 import Aedat31Reader, Aedat31Writer
from stream.formats.tonic_npy import TonicNpyReader, write_tonic_npy

READERS = {
    "aedat4": (b"#!AER-DAT4.0", Aedat4Reader),
    "aedat3.1": (b"#!AER-DAT3.", Aedat31Reader),
    "tonic-npy": (b"\x93NUMPY", TonicNpyReader),
}
OUTPUT_FORMATS = {".aedat4": "aedat4", ".aedat": "aedat3.1", ".npy": "tonic-npy"}


def detect_format(path: str | os.PathLike) -> str:
    """The format of an event file from its magic bytes; EventFormatError if none matches."""
    path = Path(path)
    if path.is_dir():
        raise EventFormatError(f"{path} is a directory, not an event file")
    if not path.exists():
        raise EventFormatError(f"{path}: no such file")
    with open(path, "rb") as file:
        head = file.read(16)
    if not head:
        raise EventFormatError(f"{path}: empty file")
    for name, (magic, _reader) in READERS.items():
        if head.startswith(magic):
            return name
    raise EventFormatError(f"{path}: unknown event file format (first bytes {head!r}); expected AEDAT4, AEDAT 3.1 or .npy")


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

    Attributes: ``format`` ("aedat4", "aedat3.1", "tonic-npy"), ``sensor_size`` (pixels),
    ``camera`` (str or ""), ``damage`` ("" or, after an ``allow_truncated`` read stopped early,
    what was wrong).
    """

    def __init__(self, path: str | os.PathLike, *, chunk_events: int = 1 << 18, allow_truncated: bool = False) -> None:
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        self.path = Path(path)
        self.format = detect_format(self.path)
        self.chunk_events = chunk_events
        self._reader = READERS[self.format][1](self.path, allow_truncated=allow_truncated)
        self.sensor_size: SensorSize = self._reader.sensor_size
        self.camera: str = self._reader.camera

    @property
    def damage(self) -> str:
        return self._reader.damage

    def __iter__(self) -> Iterator[np.ndarray]:
        last_t = np.iinfo(np.int64).min
        width, height = self.sensor_size
        index = 0
        for chunk in self._reader.chunks(self.chunk_events):
            if not len(chunk):
                continue
            at, problem = first_invalid(chunk, last_t, width, height)
            if problem:
                event = chunk[at]
                if problem == 1:
                    before = last_t if at == 0 else int(chunk["t"][at - 1])
                    what = f"timestamps go back in time at event {index + at} ({before} -> {int(event['t'])} µs)"
                elif problem == 2:
                    what = f"event {index + at} at x={event['x']}, y={event['y']} lies outside the {self.sensor_size} sensor"
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


def open_events(path: str | os.PathLike, *, chunk_events: int = 1 << 18, allow_truncated: bool = False) -> EventFileReader:
    """Open an AEDAT4, AEDAT 3.1 or tonic .npy file (format from its magic bytes)."""
    return EventFileReader(path, chunk_events=chunk_events, allow_truncated=allow_truncated)


def read_events(path: str | os.PathLike, *, allow_truncated: bool = False) -> tuple[np.ndarray, SensorSize]:
    """A whole event file in memory: canonical events (t in µs) and the sensor size."""
    with open_events(path, allow_truncated=allow_truncated) as reader:
        chunks = list(reader)
        return (np.concatenate(chunks, dtype=EVENT_DTYPE) if chunks else empty_events()), reader.sensor_size


def file_info(path: str | os.PathLike, *, allow_truncated: bool = False) -> dict:
    """What a file holds (reads it once, bounded memory).

    Keys: format, camera, width, height (pixels), events, t_start_us, t_end_us (None when empty),
    duration_s, event_rate (events per second, 0 when the duration is 0), damage ("" if none).
    """
    events = 0
    t_start = t_end = None
    with open_events(path, allow_truncated=allow_truncated) as reader:
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
            "events": events,
            "t_start_us": t_start,
            "t_end_us": t_end,
            "duration_s": duration_s,
            "event_rate": events / duration_s if duration_s > 0 else 0.0,
            "damage": reader.damage,
        }


def convert(
    source: str | os.PathLike, target: str | os.PathLike, *, allow_truncated: bool = False, camera_name: str | None = None
) -> dict:
    """Convert an event file; the output format comes from the target's extension.

    ``.aedat4`` and ``.aedat`` (AEDAT 3.1) stream chunk by chunk; ``.npy`` (tonic) holds the whole
    sample in memory and needs a 128x128 input. A failed conversion removes the partial output.
    Returns ``file_info``-like counts: format, events.
    """
    source, target = Path(source), Path(target)
    out_format = OUTPUT_FORMATS.get(target.suffix.lower())
    if out_format is None:
        raise ValueError(f"{target}: output extension must be one of {sorted(OUTPUT_FORMATS)}")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ValueError(f"{target}: output would overwrite the input")
    with open_events(source, allow_truncated=allow_truncated) as reader:
        camera = camera_name or reader.camera or "spikeformer-live"
        events = 0
        try:
            if out_format == "tonic-npy":
                chunks = list(reader)
                if reader.sensor_size != SensorSize(128, 128):
                    raise ValueError(f"tonic .npy holds 128x128 samples; {source} is {reader.sensor_size}")
                all_events = np.concatenate(chunks, dtype=EVENT_DTYPE) if chunks else empty_events()
                write_tonic_npy(target, all_events)
                events = len(all_events)
            else:
                writer = (
                    Aedat4Writer(target, reader.sensor_size, camera)
                    if out_format == "aedat4"
                    else Aedat31Writer(target, reader.sensor_size)
                )
                with writer:
                    for chunk in reader:
                        writer.write(chunk)
                        events += len(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return {"format": out_format, "events": events, "damage": reader.damage}
