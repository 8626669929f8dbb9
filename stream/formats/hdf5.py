"""Prophesee HDF5 event files (Metavision's ``.hdf5``): reader through h5py.

Layout: dataset ``/CD/events`` of records (x uint16, y uint16, p int16, t int64 µs), the camera's
header keys as attributes of the root (``geometry``, ``format``, ``system_ID``, ``plugin_name``,
...; see ``stream.formats.prophesee``). Polarity 1 = ON, origin top-left.

Metavision compresses the events with its ECF codec, an HDF5 filter (0x8ECF) that no package on
PyPI provides. A file that needs it is refused with one line naming the codec and the two ways
out (``ECF_HELP``) unless the filter is installed as an HDF5 plugin (``HDF5_PLUGIN_PATH``); an
HDF5 file written without ECF (h5py, gzip, LZ4 through hdf5plugin, ...) reads as is. h5py is the
optional ``hdf5`` extra. Memory: one chunk of records (at most ``MAX_RAW_CHUNK_BYTES``) at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numba
import numpy as np

from stream.events import EVENT_DTYPE, TRUNCATED_HINT, EventFormatError, SensorSize, check_events, concatenate_events
from stream.formats.prophesee import KNOWN_SENSORS, PropheseeHeader
from stream.formats.words import (
    STATE_BAD, STATE_BAD_X, STATE_BAD_Y, STATE_CLAMPED, STATE_LAST_T, emit, new_state, on_sensor, ordered,
    sensor_from_addresses, widened,
)

MAGIC = b"\x89HDF\r\n\x1a\n"
ECF_FILTER = 0x8ECF
EVENTS = "CD/events"
ECF_HELP = ("it is compressed with Prophesee's ECF codec (HDF5 filter 0x8ECF), which is not installed: "
            "install the hdf5_ecf plugin (github.com/prophesee-ai/hdf5_ecf) and set HDF5_PLUGIN_PATH to its "
            "folder, or convert the file to RAW or DAT with Metavision (metavision_file_to_dat -i FILE.hdf5)")  # fmt: skip
MAX_RAW_CHUNK_BYTES = 64 << 20  # a larger stored chunk is read in row blocks (memory stays bounded)
RECORD_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("p", "<i2"), ("t", "<i8")])
# What h5py raises on a damaged file (HDF5's C errors become OSError, RuntimeError, KeyError, ...;
# found by tests/test_fuzz.py): all of them mean "unreadable file" here.
H5PY_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Hdf5Reader:
    """Reads the CD events of a Prophesee HDF5 file. A context manager.

    Args:
        path: the .hdf5 file.
        allow_truncated: stop quietly at an unreadable block instead of raising.
        sensor_size: force the sensor size; else the ``geometry`` attribute, the camera, the largest address.

    Attributes: ``sensor_size``, ``sensor_from``, ``camera``, ``damage``, ``clamped``, ``skipped`` ({}).
    """

    format = "hdf5"
    checks_events = True  # chunks() checks time order and the sensor itself (stream.formats.words)

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False,
                 sensor_size: SensorSize | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        self.allow_truncated = allow_truncated
        self.damage = ""
        self.clamped = 0
        self.skipped: dict[str, int] = {}
        try:
            import h5py
        except ImportError:
            raise EventFormatError(f"{self.path}: reading HDF5 needs h5py (pip install h5py, or the [hdf5] extra)") from None
        self._file = None
        try:
            self._file = h5py.File(self.path, "r")
            self._events = self._open_events(h5py)
            header = PropheseeHeader({key.lower(): _text(value) for key, value in self._file.attrs.items()})
            self.camera = header.camera()
            if sensor_size is not None:
                self.sensor_size, self.sensor_from = SensorSize(*sensor_size).validated(), "--sensor"
            else:
                self.sensor_size, self.sensor_from = self._sensor(header)
        except BaseException as error:
            self.close()
            if isinstance(error, EventFormatError) or not isinstance(error, H5PY_ERRORS):
                raise
            raise EventFormatError(f"{self.path}: unreadable HDF5 file ({_first_line(error)})") from None

    def _open_events(self, h5py) -> object:  # noqa: ANN001 - the h5py module
        dataset = self._file.get(EVENTS)
        if not isinstance(dataset, h5py.Dataset):
            raise EventFormatError(f"{self.path}: no {EVENTS} dataset: not a Prophesee HDF5 event file")
        names = set(dataset.dtype.names or ())
        if not {"x", "y", "p", "t"} <= names or dataset.ndim != 1:
            raise EventFormatError(f"{self.path}: {EVENTS} is {dataset.dtype} {dataset.shape}, expected records x, y, p, t")
        plist = dataset.id.get_create_plist()
        filters = [plist.get_filter(index)[0] for index in range(plist.get_nfilters())]
        self._filtered = bool(filters)
        if ECF_FILTER in filters and not h5py.h5z.filter_avail(ECF_FILTER):
            raise EventFormatError(f"{self.path}: {ECF_HELP}")
        return dataset

    def _sensor(self, header: PropheseeHeader) -> tuple[SensorSize, str]:
        stated = header.geometry(self.path)
        if stated is not None:
            return stated, "the file's attributes"
        max_x = max_y = -1
        for rows in self._blocks(1 << 20):
            if len(rows):
                max_x, max_y = max(max_x, int(rows["x"].max())), max(max_y, int(rows["y"].max()))
        guess = header.camera_guess()
        if guess is not None:
            grown = widened(guess[1], max_x, max_y)
            return grown, guess[0] if grown == guess[1] else f"{guess[0]}, widened to the largest address"
        if max_x < 0:
            raise EventFormatError(f"{self.path}: no sensor size in the file and no events to take it from; give --sensor WxH")
        return sensor_from_addresses(max_x, max_y, KNOWN_SENSORS), "the largest address"

    def _blocks(self, rows: int) -> Iterator[np.ndarray]:
        """The records in file order: the stored chunks themselves when the dataset is chunked and
        unfiltered (``read_direct_chunk``: no selection per block, the bytes stay in cache for the
        conversion), else ``rows`` at a time read into one reused buffer. A block is valid until the
        next one is read."""
        total = self._events.shape[0]
        stored = self._events.chunks
        raw = stored is not None and not self._filtered and stored[0] * self._events.dtype.itemsize <= MAX_RAW_CHUNK_BYTES
        step = stored[0] if raw else rows
        buffer = np.empty(min(step, total), dtype=self._events.dtype)
        for start in range(0, total, step):
            count = min(step, total - start)
            try:
                if raw:  # h5py refuses a stored chunk larger than the buffer
                    size = len(self._events.id.read_direct_chunk((start,), out=buffer.view(np.uint8))[1])
                    if size < count * buffer.itemsize:
                        raise OSError(f"stored chunk of {size} bytes, expected {count} records")
                else:
                    self._events.read_direct(buffer, np.s_[start : start + count], np.s_[0:count])
                block = buffer[:count]
            except H5PY_ERRORS as error:
                message = f"unreadable events {start}..{start + count} ({_first_line(error)})"
                if "filter" in str(error).lower() and "ecf" in str(error).lower():
                    raise EventFormatError(f"{self.path}: {ECF_HELP}") from None
                if not self.allow_truncated:
                    raise EventFormatError(f"{self.path}: {message}; {TRUNCATED_HINT}") from None
                self.damage = message
                return
            yield block

    def chunks(self, chunk_events: int = 1 << 18) -> Iterator[np.ndarray]:
        """Yield the events in file order, ``chunk_events`` at a time (t never decreasing: see ``clamped``)."""
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        state = new_state()
        width, height = self.sensor_size
        delivered = filled = 0
        out = np.empty(chunk_events, dtype=EVENT_DTYPE)
        for rows in self._blocks(chunk_events):
            start = 0
            while start < len(rows):  # a block may span the end of this chunk and the start of the next
                part = rows[start : start + chunk_events - filled]
                start += len(part)
                target = out[filled : filled + len(part)].view(np.int64).reshape(len(part), 2)
                count = _convert(part["x"], part["y"], part["p"], part["t"], state, target, width, height)
                self.clamped = int(state[STATE_CLAMPED])
                filled += count
                if state[STATE_BAD]:
                    if filled:
                        yield out[:filled]
                    raise EventFormatError(f"{self.path}: event {delivered + filled} at x={state[STATE_BAD_X]}, "
                                           f"y={state[STATE_BAD_Y]} lies outside the {self.sensor_size} sensor "
                                           f"(size from {self.sensor_from})")  # fmt: skip
                if filled == chunk_events:
                    yield out
                    delivered, filled, out = delivered + filled, 0, np.empty(chunk_events, dtype=EVENT_DTYPE)
        if filled:
            yield out[:filled]

    def read_all(self) -> np.ndarray:
        """All events in one array."""
        return concatenate_events(list(self.chunks()))

    def close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            self._file = None
            file.close()

    def __enter__(self) -> "Hdf5Reader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@numba.njit(cache=True, nogil=True)
def _convert(x, y, p, t, state, out, width, height):  # noqa: ANN001 - record fields (any integer types)
    """Records -> canonical events in one pass, checked as the word kernels check theirs
    (``stream.formats.words``); returns how many were converted before one off the sensor."""
    last_t, clamped = state[STATE_LAST_T], state[STATE_CLAMPED]
    count = t.shape[0]
    for index in range(t.shape[0]):
        column, row = np.int64(x[index]), np.int64(y[index])
        if not on_sensor(column, row, width, height):
            state[STATE_BAD], state[STATE_BAD_X], state[STATE_BAD_Y] = 1, column, row
            count = index
            break
        time, last_t, clamped = ordered(np.int64(t[index]), last_t, clamped)
        emit(out, index, time, column, row, 1 if p[index] != 0 else 0)
    state[STATE_LAST_T], state[STATE_CLAMPED] = last_t, clamped
    return count


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.item())
    return str(value)


def write_hdf5(path: str | os.PathLike, events: np.ndarray, sensor_size: SensorSize, *, compression: str | None = "gzip",
               camera: str = "spikeformer-live") -> None:  # fmt: skip
    """Write events in Prophesee's HDF5 layout (``/CD/events``, ``geometry`` attribute) with a
    standard HDF5 codec (``compression``: "gzip", "lzf" or None; Metavision's own files use ECF)."""
    import h5py

    check_events(events)
    width, height = SensorSize(*sensor_size).validated()
    records = np.empty(len(events), dtype=RECORD_DTYPE)
    records["x"], records["y"], records["p"], records["t"] = events["x"], events["y"], events["p"], events["t"]
    with h5py.File(path, "w") as file:
        file.attrs["geometry"] = f"{width}x{height}"
        file.attrs["plugin_name"] = camera
        group = file.create_group("CD")
        group.create_dataset("events", data=records, chunks=(min(max(len(records), 1), 1 << 14),),
                             maxshape=(None,), compression=compression)  # fmt: skip

