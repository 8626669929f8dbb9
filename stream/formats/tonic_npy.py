"""tonic's preprocessed DVS128 Gesture samples: ``ibmGesture{Train,Test}/userNN_<lighting>/<label>.npy``.

Checked against tonic 1.7.0 (``tonic/datasets/dvsgesture.py``): each file is a plain ``np.save``
(N, 4) array with columns x, y, p, t and **t in milliseconds**; tonic loads it, multiplies column 3
by 1000 (-> microseconds) and casts to (x int16, y int16, p bool, t int64). ``<label>`` is the
0-based class; the sensor is 128x128. tonic's source accepts any numeric dtype; this writer stores
int64 (ms, rounded down from µs, so a round trip is exact only for whole milliseconds) and the reader
accepts any integer or float dtype.

The reader maps the file (``np.memmap``) and converts in chunks: bounded memory. It never unpickles.
"""

from __future__ import annotations

import os
import tokenize
from pathlib import Path
from typing import Iterator

import numpy as np

from stream.events import EVENT_DTYPE, EventFormatError, SensorSize, check_events, empty_events

MAGIC = b"\x93NUMPY"
SENSOR_SIZE = SensorSize(128, 128)
US_PER_MS = 1000
SPLIT_FOLDERS = {True: "ibmGestureTrain", False: "ibmGestureTest"}
HEADER_LENGTH_BYTES = {(1, 0): 2, (2, 0): 4, (3, 0): 4}  # .npy versions and the size of their header-length field
MAX_HEADER_BYTES = 10_000  # numpy's own limit for headers it parses


def sample_path(root: str | os.PathLike, *, train: bool, user: int, lighting: str, label: int) -> Path:
    """``root/ibmGesture{Train,Test}/userNN_<lighting>/<label>.npy`` (label 0-based)."""
    return Path(root) / SPLIT_FOLDERS[train] / f"user{user:02d}_{lighting}" / f"{label}.npy"


def list_samples(root: str | os.PathLike, *, train: bool) -> list[tuple[Path, int, str, int]]:
    """Every sample of a split as (path, user, lighting, label), sorted by path."""
    samples = []
    for path in sorted((Path(root) / SPLIT_FOLDERS[train]).glob("user*_*/*.npy")):
        user_text, lighting = path.parent.name.split("_", 1)
        if user_text[4:].isdigit() and path.stem.isdigit():
            samples.append((path, int(user_text[4:]), lighting, int(path.stem)))
    return samples


class TonicNpyReader:
    """Reads one tonic DVSGesture ``.npy`` sample through a memory map. A context manager.

    Args:
        path: the .npy file.
        allow_truncated: a cut file yields its complete rows instead of raising.

    Attributes: ``sensor_size`` (128x128), ``camera`` (""), ``damage`` ("" or what was cut).
    """

    format = "tonic-npy"
    sensor_size = SENSOR_SIZE
    camera = ""

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False) -> None:
        self.path = Path(path)
        self.damage = ""
        file_size = self.path.stat().st_size
        with open(self.path, "rb") as file:
            if file_size == 0:
                raise EventFormatError(f"{self.path}: empty file (expected a .npy array)")
            if file.read(len(MAGIC)) != MAGIC:
                raise EventFormatError(f"{self.path}: not a .npy file")
            file.seek(0)
            try:
                version = np.lib.format.read_magic(file)
                if version not in HEADER_LENGTH_BYTES:
                    raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
                # numpy reads the header length it is told before checking it: bound it by the file first
                length_bytes = HEADER_LENGTH_BYTES[version]
                header_length = int.from_bytes(file.read(length_bytes), "little")
                if header_length > MAX_HEADER_BYTES or file.tell() + header_length > file_size:
                    raise ValueError(f"header claims {header_length} bytes, the file has {file_size}")
                file.seek(-length_bytes, os.SEEK_CUR)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran_order, dtype = read_header(file)
            except (ValueError, SyntaxError, TypeError, tokenize.TokenError) as error:  # numpy's header parser
                raise EventFormatError(f"{self.path}: bad .npy header ({error})") from None
            data_start = file.tell()
        if dtype.hasobject or dtype.kind not in "iuf" or len(shape) != 2 or shape[1] != 4 or shape[0] < 0:
            raise EventFormatError(f"{self.path}: expected an (N, 4) numeric array, got {shape} {dtype}")
        rows = shape[0]
        available = file_size - data_start
        if available < rows * 4 * dtype.itemsize:
            message = f"truncated: {rows} rows need {rows * 4 * dtype.itemsize} bytes, {available} left"
            if not allow_truncated or fortran_order:
                raise EventFormatError(f"{self.path}: {message}")
            self.damage = message
            rows = available // (4 * dtype.itemsize)
        self._rows = (
            np.memmap(self.path, dtype=dtype, mode="r", offset=data_start, shape=(rows, 4),
                      order="F" if fortran_order else "C")
            if rows
            else np.zeros((0, 4), dtype=dtype)
        )

    def chunks(self, chunk_events: int = 1 << 18) -> Iterator[np.ndarray]:
        """Yield canonical events (t in microseconds) in file order, ``chunk_events`` at a time."""
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        for start in range(0, len(self._rows), chunk_events):
            yield self._convert(np.asarray(self._rows[start : start + chunk_events]), start)

    def _convert(self, rows: np.ndarray, first_row: int) -> np.ndarray:
        x, y, p, t_ms = rows.T
        if rows.dtype.kind == "f" and not np.isfinite(rows).all():
            raise EventFormatError(f"{self.path}: non-finite values near row {first_row}")
        for name, values, side in (("x", x, SENSOR_SIZE.width), ("y", y, SENSOR_SIZE.height), ("p", p, 2)):
            if len(values) and (values.min() < 0 or values.max() >= side):
                raise EventFormatError(f"{self.path}: {name} outside 0..{side - 1} near row {first_row}")
        if len(t_ms) and (t_ms.min() < 0 or t_ms.max() > np.iinfo(np.int64).max // US_PER_MS):
            raise EventFormatError(f"{self.path}: timestamps out of range near row {first_row}")
        events = np.empty(len(rows), dtype=EVENT_DTYPE)
        events["t"] = np.rint(t_ms * US_PER_MS) if rows.dtype.kind == "f" else t_ms.astype(np.int64) * US_PER_MS
        events["x"], events["y"], events["p"] = x, y, p
        return events

    def read_all(self) -> np.ndarray:
        """All events in one array."""
        return self._convert(np.asarray(self._rows), 0) if len(self._rows) else empty_events()

    def close(self) -> None:
        self._rows = np.zeros((0, 4))

    def __enter__(self) -> "TonicNpyReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_tonic_npy(path: str | os.PathLike, *, allow_truncated: bool = False) -> tuple[np.ndarray, SensorSize]:
    """Read one tonic DVSGesture sample: canonical events (t in µs) and the 128x128 sensor size."""
    with TonicNpyReader(path, allow_truncated=allow_truncated) as reader:
        return reader.read_all(), reader.sensor_size


def write_tonic_npy(path: str | os.PathLike, events: np.ndarray) -> None:
    """Write events as tonic stores them: (N, 4) int64 columns x, y, p, t with t in milliseconds.

    Timestamps are rounded down to whole milliseconds; coordinates must fit the 128x128 sensor.
    Parent folders are created.
    """
    check_events(events)
    for name, side in (("x", SENSOR_SIZE.width), ("y", SENSOR_SIZE.height)):
        if len(events) and (int(events[name].min()) < 0 or int(events[name].max()) >= side):
            raise ValueError(f"event {name} must be in 0..{side - 1} for tonic's 128x128 DVSGesture")
    if len(events) and int(events["t"].min()) < 0:
        raise ValueError("timestamps must be >= 0 microseconds")
    rows = np.empty((len(events), 4), dtype=np.int64)
    rows[:, 0], rows[:, 1], rows[:, 2] = events["x"], events["y"], events["p"] != 0
    rows[:, 3] = events["t"] // US_PER_MS
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        np.save(file, rows, allow_pickle=False)
