"""The one event representation used across spikeformer-live.

Contract (every reader, source, transport, binner and the simulator follow it):

* Events are a 1-D NumPy structured array of ``EVENT_DTYPE``:
  ``t`` int64 timestamp in microseconds, ``x`` and ``y`` int16 pixel coordinates with the
  origin at the top-left of the sensor (x to the right, y down), ``p`` int8 polarity
  (1 = ON, brightness up; 0 = OFF, brightness down).
* The memory layout (offsets 0, 8, 10, 12; 16 bytes per event) is byte-identical to
  dv-processing's ``EventStore.numpy()`` so that conversion to and from it is a view, not a copy.
* A packet of events always travels with its ``SensorSize`` (width, height in pixels).
* Packets are time-ordered within a stream. An empty packet is valid (``len == 0``); never ``None``.
* Frames built from events are ``[T, 2, H, W]`` float32 everywhere, channel index = polarity
  (0 = OFF, 1 = ON), as tonic's ``ToFrame`` does.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

EVENT_DTYPE = np.dtype(
    {
        "names": ["t", "x", "y", "p"],
        "formats": ["<i8", "<i2", "<i2", "i1"],
        "offsets": [0, 8, 10, 12],
        "itemsize": 16,
    }
)

# dv-processing's EventStore.numpy() layout: same bytes, other field names.
DV_EVENT_DTYPE = np.dtype(
    {
        "names": ["timestamp", "x", "y", "polarity"],
        "formats": ["<i8", "<i2", "<i2", "i1"],
        "offsets": [0, 8, 10, 12],
        "itemsize": 16,
    }
)

MAX_SENSOR_SIDE = 32767  # int16 coordinates


class EventFormatError(ValueError):
    """A file, buffer or message does not hold valid events. The message says what and where."""


# Said with the error of a damaged or cut file (the readers, ``python -m stream info|convert``, the
# source stage and launch.py all take the option).
TRUNCATED_HINT = "--allow-truncated reads the events before it (allow_truncated=True in Python)"


class SensorSize(NamedTuple):
    """Sensor size in pixels."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, text: str) -> "SensorSize":
        """Parse ``"WxH"`` (e.g. ``"128x128"``)."""
        try:
            width_text, height_text = text.lower().split("x")
            size = cls(int(width_text), int(height_text))
        except ValueError:
            raise ValueError(f"sensor size must look like WIDTHxHEIGHT (e.g. 128x128), got {text!r}") from None
        return size.validated()

    def validated(self) -> "SensorSize":
        """Return self, or raise ValueError if a side is not in 1..32767 pixels."""
        for name, side in zip(self._fields, self):
            if not 1 <= int(side) <= MAX_SENSOR_SIDE:
                raise ValueError(f"sensor {name} must be 1..{MAX_SENSOR_SIDE} pixels, got {side}")
        return self


def empty_events(count: int = 0) -> np.ndarray:
    """A zero-filled event array of ``count`` events."""
    return np.zeros(count, dtype=EVENT_DTYPE)


def concatenate_events(chunks: "list[np.ndarray]") -> np.ndarray:
    """Join event arrays into one EVENT_DTYPE array (an empty list gives an empty array).

    Use this, not a bare ``np.concatenate``: NumPy 2 drops the padding of an aligned structured
    dtype when concatenating and returns a packed 13-byte dtype. EVENT_DTYPE arrays are joined as
    bytes (a field-wise structured copy is 7x slower); other dtypes are converted field by field.
    """
    if not chunks:
        return empty_events()
    if all(chunk.dtype == EVENT_DTYPE for chunk in chunks):
        return np.concatenate([np.ascontiguousarray(chunk).view(np.uint8) for chunk in chunks]).view(EVENT_DTYPE)
    return np.concatenate(chunks, dtype=EVENT_DTYPE)


def make_events(t, x, y, p) -> np.ndarray:
    """Build an event array from four equal-length array-likes (t in microseconds)."""
    t = np.asarray(t)
    events = np.empty(t.shape[0], dtype=EVENT_DTYPE)
    events["t"] = t
    events["x"] = x
    events["y"] = y
    events["p"] = p
    return events


def check_events(events: np.ndarray) -> np.ndarray:
    """Raise EventFormatError unless ``events`` is a 1-D array of EVENT_DTYPE; return it."""
    if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE or events.ndim != 1:
        got = getattr(events, "dtype", type(events).__name__)
        raise EventFormatError(f"expected a 1-D array of EVENT_DTYPE, got {got}")
    return events


# --- converters (all vectorised, no per-event Python) ---------------------------------------


def from_dv(dv_array: np.ndarray) -> np.ndarray:
    """dv-processing ``EventStore.numpy()`` array -> canonical events (a view when contiguous)."""
    if dv_array.dtype == DV_EVENT_DTYPE:
        return dv_array.view(EVENT_DTYPE)
    return make_events(dv_array["timestamp"], dv_array["x"], dv_array["y"], dv_array["polarity"])


def to_dv(events: np.ndarray) -> np.ndarray:
    """Canonical events -> dv-processing's ``EventStore.numpy()`` layout (a view, no copy)."""
    return np.ascontiguousarray(check_events(events)).view(DV_EVENT_DTYPE)


def from_tonic(tonic_events: np.ndarray, time_scale_us: float = 1.0) -> np.ndarray:
    """tonic structured events (fields t, x, y, p; any integer or bool types) -> canonical events.

    ``time_scale_us`` multiplies tonic's ``t`` to give microseconds (tonic's data sets use µs).
    """
    t = tonic_events["t"]
    if time_scale_us != 1.0:
        t = np.rint(t.astype(np.float64) * time_scale_us)
    return make_events(t, tonic_events["x"], tonic_events["y"], tonic_events["p"].astype(np.int8))


def to_tonic(events: np.ndarray) -> np.ndarray:
    """Canonical events -> tonic's usual dtype (t int64 µs, x int16, y int16, p bool)."""
    check_events(events)
    out = np.empty(events.shape[0], dtype=np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "?")]))
    out["t"], out["x"], out["y"], out["p"] = events["t"], events["x"], events["y"], events["p"] != 0
    return out


def from_aedat(aedat_events: np.ndarray) -> np.ndarray:
    """The ``aedat`` package's event array (t u64 µs, x u16, y u16, on bool) -> canonical events."""
    return make_events(aedat_events["t"], aedat_events["x"], aedat_events["y"], aedat_events["on"])


def to_aedat(events: np.ndarray) -> np.ndarray:
    """Canonical events -> the ``aedat``/faery layout (t u64, x u16, y u16, on bool)."""
    check_events(events)
    out = np.empty(events.shape[0], dtype=np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")]))
    out["t"], out["x"], out["y"], out["on"] = events["t"], events["x"], events["y"], events["p"] != 0
    return out


class GestureSegment(NamedTuple):
    """A labelled stretch of a recording: class index (0-based) and its time span in microseconds."""

    label: int
    start_us: int
    end_us: int
