"""Events -> model input: ``[T, 2, H, W]`` float32 time-step frames, offline and streaming.

Training (``bin_window``) and live inference (``StreamingBinner``) call the SAME Numba kernel with
the SAME window definition, so the model sees the same thing in both.

Window definition (``WindowSpec(bins, bin_us, stride_us)``, all times in microseconds):

* a window ending at ``end_us`` covers ``[end_us - window_us, end_us)`` with
  ``window_us = bins * bin_us``;
* bin ``k`` (0 = oldest) covers ``[start + k * bin_us, start + (k + 1) * bin_us)``,
  ``start = end_us - window_us``;
* streaming windows end on the absolute grid ``end_us % stride_us == 0`` (so their bins lie on the
  grid ``t % bin_us == 0``); ``bin_window`` accepts any ``start_us``.

Frame values are per-pixel event counts; channel = polarity value (0 OFF, 1 ON). An optional
normalisation (``{"kind": "clip", "max": 8}``, ``{"kind": "log1p"}`` or ``None``) is stored in the
checkpoint and applied identically by both modes via ``apply_normalisation``.

Sensor mapping (``SensorMapping``): any sensor (128x128, 346x260, 640x480, ...) -> the model's
input size ``(W, H)``. Sensor coordinates are first flipped (``flip_x``: ``x -> width-1-x``,
``flip_y``: ``y -> height-1-y``), then centre-cropped to the model's aspect ratio
(``crop_w x crop_h`` at ``(x0, y0)``), then downsampled:

* ``"area"``: every sensor pixel in the crop lands in exactly one input pixel,
  ``x_in = (x - x0) * W // crop_w`` (same for y); counts are summed, so no event in the crop is
  lost. When ``crop_w`` is not a multiple of ``W`` input columns gather ``floor`` or ``ceil`` of
  ``crop_w / W`` sensor columns.
* ``"nearest"``: input pixel ``i`` takes only the sensor pixel containing its centre,
  ``x = x0 + (2 * i + 1) * crop_w // (2 * W)``; events on other sensor pixels are ignored.

Upsampling (a crop smaller than the input) is refused. Events outside the crop are "unmapped"
(ignored and counted); events outside the sensor or with a polarity other than 0/1 are dropped and
counted.

Optional noise filters (``EventFilter``, from a spec stored in the checkpoint's ``input.filters``),
applied to time-ordered chunks before binning, by training and by the live binner alike (state
carries across chunks): ``FlickerFilter`` (drop the bursts of pixels that repeat at a flickering
light's rate, 80-150 Hz by default), ``BackgroundActivityFilter`` (drop events with no event on the 8
neighbouring pixels within ``dt_us``) and ``HotPixelFilter`` (mute pixels that fired more than
``max_events`` in the previous ``period_us``).

Speed: one Numba kernel, one pass over the events, no Python per event. Chunks of at least
``2 * MIN_EVENTS_PER_THREAD`` events are cut at bin edges into pieces binned on up to ``threads``
Python threads at once (the kernel releases the GIL; each thread writes only its own bins, so no
locks; plain threads, not a Numba threading layer, so safe in forked processes and from several
threads). Pass ``out=`` to ``bin_window`` in a loop: a fresh array costs its page faults each call.

Call ``warmup()`` at worker start-up: it compiles (or loads from the Numba cache) every kernel.
Read-only event arrays (``np.frombuffer`` of received bytes) are taken as they are, not copied.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numba import njit, types

from stream.events import SensorSize, check_events, make_events

__all__ = [
    "WindowSpec",
    "SensorMapping",
    "Window",
    "BinningStats",
    "StreamingBinner",
    "bin_window",
    "apply_normalisation",
    "check_normalisation",
    "BackgroundActivityFilter",
    "HotPixelFilter",
    "EventFilter",
    "check_filters",
    "default_threads",
    "add_counts",
    "warmup",
]

MAPPING_METHODS = ("area", "nearest")
EMIT_MODES = ("all", "latest")

# --- Numba kernels (eager signatures: compiled once, cached on disk, reused by every caller) ----

# Event inputs are typed read-only: such a signature takes writable arrays too, and also read-only
# ones (``np.frombuffer`` of received bytes), which a writable signature rejects with a TypeError.
_I64_1D = types.Array(types.int64, 1, "A", readonly=True)
_I16_1D = types.Array(types.int16, 1, "A", readonly=True)
_I8_1D = types.Array(types.int8, 1, "A", readonly=True)
_I32_TABLE = types.Array(types.int32, 1, "C", readonly=True)
_BIN_SIGNATURE = types.UniTuple(types.int64, 6)(
    _I64_1D,  # t (µs), usually a strided view of an EVENT_DTYPE array
    _I16_1D,  # x
    _I16_1D,  # y
    _I8_1D,  # p
    _I32_TABLE,  # x table: sensor x -> input x, -1 = unmapped
    _I32_TABLE,  # y table
    types.int64,  # origin_us
    types.int64,  # bin_us
    types.int64,  # first_bin (inclusive)
    types.int64,  # end_bin (exclusive)
    types.Array(types.float32, 4, "C"),  # frames [slots, 2, H, W]
    types.Array(types.int64, 1, "C"),  # events per slot
)
# Events whose frame offsets are computed before they are added. Measured: 256-1024 best; longer
# blocks more often add twice to one pixel back to back (the second add waits for the first).
_BLOCK = 512


@njit(_BIN_SIGNATURE, cache=True, nogil=True)
def _bin_kernel(t, x, y, p, x_table, y_table, origin_us, bin_us, first_bin, end_bin, frames, slot_events):
    """Add each event with bin ``k = (t - origin_us) // bin_us`` in ``[first_bin, end_bin)`` to
    ``frames[k % slots, p, y_in, x_in]``. Returns (binned, outside_sensor, bad_polarity, unmapped,
    before, after): ``before``/``after`` count the events with ``k < first_bin`` / ``k >= end_bin``.

    Two phases per block of events: first the checks and the flat frame offsets (a sequential pass),
    then the additions alone. The scattered additions of a block then run back to back, so the CPU
    overlaps their cache misses (frames of 640x480 do not fit in L2)."""
    slots = frames.shape[0]
    plane = frames.shape[2] * frames.shape[3]
    flat = frames.reshape(-1)
    # Unsigned compares: a negative int16 coordinate or int8 polarity becomes large and fails too.
    width = np.uint16(x_table.shape[0])
    height = np.uint16(y_table.shape[0])
    row_offset = np.empty(y_table.shape[0], dtype=np.int64)  # sensor y -> offset of its input row
    for ys in range(y_table.shape[0]):
        row_offset[ys] = y_table[ys] * frames.shape[3] if y_table[ys] >= 0 else -1
    offsets = np.empty(_BLOCK, dtype=np.int64)
    outside_sensor = 0
    bad_polarity = 0
    unmapped = 0
    before = 0
    after = 0
    # Events arrive (mostly) sorted: keep the current bin's time range and divide only on leaving it
    # (an event outside [first_bin, end_bin) leaves the range empty, so the next event divides again).
    bin_start = np.int64(1)
    bin_end = np.int64(0)
    slot = 0
    base = 0
    added = 0  # events added so far (all blocks)
    slot_mark = 0  # `added` when the current slot began
    for block_start in range(0, t.shape[0], _BLOCK):
        filled = 0
        for i in range(block_start, min(block_start + _BLOCK, t.shape[0])):
            ti = t[i]
            if ti < bin_start or ti >= bin_end:
                if added + filled != slot_mark:  # touch only slots written (threads own disjoint slots)
                    slot_events[slot] += added + filled - slot_mark
                    slot_mark = added + filled
                k = (ti - origin_us) // bin_us
                if k < first_bin or k >= end_bin:
                    before += k < first_bin
                    after += k >= end_bin
                    bin_start = np.int64(1)
                    bin_end = np.int64(0)
                    continue
                bin_start = origin_us + k * bin_us
                bin_end = bin_start + bin_us
                slot = k % slots
                base = slot * 2 * plane
            xs = np.uint16(x[i])
            ys = np.uint16(y[i])
            if xs >= width or ys >= height:
                outside_sensor += 1
                continue
            polarity = np.uint8(p[i])
            if polarity > 1:
                bad_polarity += 1
                continue
            column = np.int64(x_table[xs])
            row = row_offset[ys]
            if (column | row) < 0:
                unmapped += 1
                continue
            offsets[filled] = base + polarity * plane + row + column
            filled += 1
        for j in range(filled):
            flat[offsets[j]] += 1.0
        added += filled
    if added != slot_mark:
        slot_events[slot] += added - slot_mark
    binned = t.shape[0] - outside_sensor - bad_polarity - unmapped - before - after
    return binned, outside_sensor, bad_polarity, unmapped, before, after


_SCAN_SIGNATURE = types.UniTuple(types.int64, 3)(
    _I64_1D,  # t
    types.boolean,  # has_time: is time_us meaningful (False before the first event)
    types.int64,  # time_us: latest time seen so far
    types.int64,  # gap_us
    types.Array(types.boolean, 1, "C"),  # keep (out)
    types.Array(types.int64, 1, "C"),  # gap_at (out): kept index of the event after each gap
)


@njit(_SCAN_SIGNATURE, cache=True, nogil=True)
def _scan_times(t, has_time, time_us, gap_us, keep, gap_at):
    """Mark events whose timestamp goes backwards (``t < latest time seen``) as not kept and record
    where time jumps forward by more than ``gap_us``. Returns (dropped, gaps, latest time)."""
    dropped = 0
    gaps = 0
    kept = 0
    for i in range(t.shape[0]):
        ti = t[i]
        if has_time and ti < time_us:
            keep[i] = False
            dropped += 1
            continue
        keep[i] = True
        if has_time and ti - time_us > gap_us:
            gap_at[gaps] = kept
            gaps += 1
        time_us = ti
        has_time = True
        kept += 1
    return dropped, gaps, time_us


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpec:
    """Time-step layout of one model input window (all times in microseconds).

    A window ending at ``end_us`` covers ``[end_us - window_us, end_us)``, ``window_us = bins *
    bin_us``; bin ``k`` covers ``[start + k * bin_us, start + (k + 1) * bin_us)``. Streaming windows
    end every ``stride_us`` on the absolute grid ``end_us % stride_us == 0``.

    Args:
        bins: number of time steps T (>= 1).
        bin_us: duration of one bin in microseconds (>= 1).
        stride_us: time between consecutive streaming windows, a positive multiple of ``bin_us``.
    """

    bins: int
    bin_us: int
    stride_us: int

    def __post_init__(self) -> None:
        for name in ("bins", "bin_us", "stride_us"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"WindowSpec.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.stride_us % self.bin_us:
            raise ValueError(
                f"WindowSpec.stride_us ({self.stride_us} µs) must be a multiple of bin_us ({self.bin_us} µs)"
            )

    @property
    def window_us(self) -> int:
        """Window duration in microseconds."""
        return self.bins * self.bin_us

    def to_dict(self) -> dict[str, int]:
        return {"bins": self.bins, "bin_us": self.bin_us, "stride_us": self.stride_us}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WindowSpec":
        _check_keys("window", data, {"bins", "bin_us", "stride_us"})
        return cls(data["bins"], data["bin_us"], data["stride_us"])


@dataclass(frozen=True)
class SensorMapping:
    """Sensor pixels -> model input pixels (flip, centre crop, downsample; see the module docstring).

    Build with ``SensorMapping.create``. ``crop`` is ``(x0, y0, crop_w, crop_h)`` in flipped sensor
    pixels; ``x_table``/``y_table`` map a sensor coordinate to an input coordinate (-1: unmapped).
    """

    sensor_size: SensorSize
    input_size: SensorSize
    method: str = "area"
    flip_x: bool = False
    flip_y: bool = False
    crop: tuple[int, int, int, int] = field(init=False)
    x_table: np.ndarray = field(init=False, repr=False, compare=False)
    y_table: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sensor = SensorSize(*map(int, self.sensor_size)).validated()
        model = SensorSize(*map(int, self.input_size)).validated()
        if self.method not in MAPPING_METHODS:
            raise ValueError(f"mapping method must be one of {MAPPING_METHODS}, got {self.method!r}")
        for name in ("flip_x", "flip_y"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        # Centre crop to the model's aspect ratio (the largest such crop that fits the sensor).
        if sensor.width * model.height >= sensor.height * model.width:
            crop_w, crop_h = sensor.height * model.width // model.height, sensor.height
        else:
            crop_w, crop_h = sensor.width, sensor.width * model.height // model.width
        if crop_w < model.width or crop_h < model.height:
            raise ValueError(
                f"sensor {sensor} cropped to {crop_w}x{crop_h} is smaller than the model input {model}; "
                "upsampling is not supported"
            )
        x0, y0 = (sensor.width - crop_w) // 2, (sensor.height - crop_h) // 2
        object.__setattr__(self, "sensor_size", sensor)
        object.__setattr__(self, "input_size", model)
        object.__setattr__(self, "crop", (x0, y0, crop_w, crop_h))
        x_table = _axis_table(sensor.width, x0, crop_w, model.width, self.method, self.flip_x)
        y_table = _axis_table(sensor.height, y0, crop_h, model.height, self.method, self.flip_y)
        object.__setattr__(self, "x_table", x_table)
        object.__setattr__(self, "y_table", y_table)

    @classmethod
    def create(
        cls,
        sensor_size: tuple[int, int],
        input_size: tuple[int, int],
        *,
        flip_x: bool = False,
        flip_y: bool = False,
        method: str = "area",
    ) -> "SensorMapping":
        """Mapping from a sensor of ``sensor_size`` (width, height pixels) to the model's ``input_size``."""
        return cls(SensorSize(*sensor_size), SensorSize(*input_size), method, flip_x, flip_y)

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint stores: input size, method, flips (the sensor comes from the camera)."""
        return {
            "input_width": self.input_size.width,
            "input_height": self.input_size.height,
            "method": self.method,
            "flip_x": self.flip_x,
            "flip_y": self.flip_y,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], sensor_size: tuple[int, int]) -> "SensorMapping":
        """Rebuild a stored mapping for the actual camera's ``sensor_size`` (width, height pixels)."""
        _check_keys("sensor_mapping", data, {"input_width", "input_height", "method", "flip_x", "flip_y"})
        return cls.create(
            sensor_size,
            (data["input_width"], data["input_height"]),
            flip_x=data["flip_x"],
            flip_y=data["flip_y"],
            method=data["method"],
        )

    def map_xy(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input-pixel coordinates of sensor pixels (vectorised; -1 where unmapped or outside)."""
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        inside = (x >= 0) & (x < self.sensor_size.width) & (y >= 0) & (y < self.sensor_size.height)
        xi = np.where(inside, self.x_table[np.clip(x, 0, self.sensor_size.width - 1)], -1)
        yi = np.where(inside, self.y_table[np.clip(y, 0, self.sensor_size.height - 1)], -1)
        return xi, yi


def _axis_table(sensor_side: int, offset: int, crop_side: int, input_side: int, method: str, flip: bool) -> np.ndarray:
    """int32 table: sensor coordinate -> input coordinate along one axis (-1 = not used)."""
    position = np.arange(sensor_side, dtype=np.int64)
    if flip:
        position = sensor_side - 1 - position
    relative = position - offset
    inside = (relative >= 0) & (relative < crop_side)
    mapped = np.where(inside, relative * input_side // crop_side, -1)
    if method == "nearest":
        lattice = (2 * np.maximum(mapped, 0) + 1) * crop_side // (2 * input_side)
        mapped = np.where(inside & (relative == lattice), mapped, -1)
    return mapped.astype(np.int32)


def _check_keys(what: str, data: Any, required: set[str]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a dict, got {type(data).__name__}")
    missing = required - data.keys()
    if missing:
        raise ValueError(f"{what} is missing key(s) {sorted(missing)}")


# --- normalisation ----------------------------------------------------------------------------


NORMALISATIONS = ("clip", "log1p", "binary", "density")


def check_normalisation(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate a normalisation spec: ``None``, ``{"kind": "clip", "max": M}``, ``{"kind": "log1p"}``,
    ``{"kind": "binary"}`` or ``{"kind": "density", "max": M}``."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"normalisation must be None or a dict with a 'kind', got {spec!r}")
    kind = spec["kind"]
    if kind in ("clip", "density"):
        maximum = spec.get("max")
        if isinstance(maximum, bool) or not isinstance(maximum, (int, float)) or not maximum > 0:
            raise ValueError(f"{kind} normalisation needs a positive 'max', got {maximum!r}")
        return {"kind": kind, "max": maximum}
    if kind in ("log1p", "binary"):
        return {"kind": kind}
    raise ValueError(f"unknown normalisation kind {kind!r} (expected one of {', '.join(NORMALISATIONS)})")


def apply_normalisation(frames: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """Normalise the count frames of one window ``[T, 2, H, W]`` in place (and return them).

    * ``clip``: counts above ``max`` become ``max``;
    * ``log1p``: ``log(1 + count)``;
    * ``binary``: 1 where a pixel fired in a bin, else 0 (blind to how many events a crossing makes);
    * ``density``: each time bin's counts divided by their mean over the pixels that fired in it,
      then clipped at ``max``: the input does not depend on how many events per edge the camera
      makes (contrast threshold, sensor resolution, event rate), only on where and when it fired and
      how much more than usual; per bin, so a causal model that sees one bin at a time gets the same.
    None: unchanged.
    """
    spec = check_normalisation(spec)
    if spec is None:
        return frames
    kind = spec["kind"]
    if kind == "clip":
        np.minimum(frames, np.float32(spec["max"]), out=frames)
    elif kind == "log1p":
        np.log1p(frames, out=frames)
    elif kind == "binary":
        np.greater(frames, 0, out=frames, casting="unsafe")
    else:
        flat = frames.reshape(frames.shape[0], -1)  # one row per time bin
        totals = flat.sum(axis=1, dtype=np.float64)
        fired = np.count_nonzero(flat, axis=1)
        scale = np.divide(fired, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
        flat *= scale[:, None]
        np.minimum(frames, np.float32(spec["max"]), out=frames)
    return frames


# --- the binning driver (threads) -------------------------------------------------------------

MIN_EVENTS_PER_THREAD = 1 << 18  # smaller pieces cost more in thread start-up than they save


def default_threads() -> int:
    """The CPUs this process may run on: the default thread count of ``bin_window`` and ``StreamingBinner``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


def _pieces(t: np.ndarray, origin_us: int, bin_us: int, first_bin: int, end_bin: int, threads: int
            ) -> tuple[list[int], list[int]]:  # fmt: skip
    """Cut events into at most ``threads`` pieces of at least ``MIN_EVENTS_PER_THREAD`` events, at bin
    edges: piece ``c`` holds the events ``[cuts[c], cuts[c + 1])`` and bins ``[edges[c], edges[c + 1])``
    (exactly so when ``t`` is sorted; the first piece also holds the events before ``first_bin``,
    the last those from ``end_bin`` on)."""
    pieces = max(1, min(threads, len(t) // MIN_EVENTS_PER_THREAD, end_bin - first_bin))
    edges, cuts = [first_bin], [0]
    for c in range(1, pieces):
        k = (int(t[c * len(t) // pieces]) - origin_us) // bin_us  # the bin of the piece's first event
        if edges[-1] < k < end_bin:
            edges.append(k)
            cuts.append(max(cuts[-1], int(np.searchsorted(t, origin_us + k * bin_us, side="left"))))
    return edges + [end_bin], cuts + [len(t)]


def _bin_events(events, mapping, origin_us: int, bin_us: int, first_bin: int, end_bin: int, frames, slot_events,
                threads: int) -> tuple[int, int, int, int]:  # fmt: skip
    """Bin the events with bins in ``[first_bin, end_bin)`` (at most ``frames.shape[0]`` bins, so each
    bin has its own slot) with ``_bin_kernel`` on up to ``threads`` threads (the kernel releases the GIL).
    Returns (binned, outside_sensor, bad_polarity, unmapped).

    Each thread takes a contiguous piece of the events cut at a bin edge (pieces of about equal event
    counts) and writes only the bins of its own range: on time-ordered events a piece holds exactly
    those bins, and no two threads ever write the same slot. Events out of time order are still binned
    exactly once: a piece skips, and counts, events whose bins belong to another range, and a serial
    pass over that piece bins them once the threads are done."""
    t, x, y, p = events["t"], events["x"], events["y"], events["p"]
    edges, cuts = _pieces(t, origin_us, bin_us, first_bin, end_bin, threads)

    def run(c: int, lo_bin: int, hi_bin: int) -> tuple[int, ...]:
        a, b = cuts[c], cuts[c + 1]
        return _bin_kernel(
            t[a:b], x[a:b], y[a:b], p[a:b], mapping.x_table, mapping.y_table,
            origin_us, bin_us, lo_bin, hi_bin, frames, slot_events,
        )  # fmt: skip

    results: list[tuple[int, ...]] = [()] * (len(edges) - 1)

    def run_piece(c: int) -> None:
        results[c] = run(c, edges[c], edges[c + 1])

    workers = [threading.Thread(target=run_piece, args=(c,), daemon=True) for c in range(1, len(results))]
    for worker in workers:
        worker.start()
    run_piece(0)
    for worker in workers:
        worker.join()
    totals = np.zeros(4, dtype=np.int64)
    for c, (*counts, before, after) in enumerate(results):
        totals += counts
        # Out-of-order events only: this piece's events with bins of the other ranges, serially.
        for lo_bin, hi_bin, skipped in ((first_bin, edges[c], before), (edges[c + 1], end_bin, after)):
            if skipped and lo_bin < hi_bin:
                totals += run(c, lo_bin, hi_bin)[:4]
    binned, outside, bad, unmapped = (int(v) for v in totals)
    return binned, outside, bad, unmapped


# --- offline ----------------------------------------------------------------------------------


def bin_window(
    events: np.ndarray,
    mapping: SensorMapping,
    window: WindowSpec,
    start_us: int,
    out: np.ndarray | None = None,
    *,
    normalisation: dict[str, Any] | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Frames ``[T, 2, H, W]`` float32 of the window ``[start_us, start_us + window_us)``.

    Events need not be sorted (time-ordered events are fastest); events outside the window, outside
    the sensor, with a polarity other than 0/1, or outside the mapping's crop are ignored. ``out``
    (float32 ``[T, 2, H, W]``, C-contiguous) is overwritten and returned when given: reusing it saves
    allocating and faulting in fresh memory every call (39 MB at T=16, 640x480). ``threads``: at most
    this many threads (default ``default_threads()``), each binning at least
    ``MIN_EVENTS_PER_THREAD`` events.
    """
    check_events(events)
    threads = _check_threads(threads)
    shape = (window.bins, 2, mapping.input_size.height, mapping.input_size.width)
    if out is None:
        out = np.zeros(shape, dtype=np.float32)
    else:
        if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")
        out.fill(0.0)
    slot_events = np.zeros(window.bins, dtype=np.int64)
    _bin_events(events, mapping, int(start_us), window.bin_us, 0, window.bins, out, slot_events, threads)
    return apply_normalisation(out, normalisation)


# --- noise filters (optional; state carried across chunks; apply the same ones in training) ---

_FILTER_EVENTS = (_I64_1D, _I16_1D, _I16_1D)


@njit(
    types.int64(
        *_FILTER_EVENTS, types.int64, types.Array(types.int64, 2, "C"), types.Array(types.boolean, 1, "C"),
        types.Array(types.int32, 2, "C"),
    ),
    cache=True,
    nogil=True,
)  # fmt: skip
def _background_activity_kernel(t, x, y, dt_us, last_t, keep, counts):
    """Keep an event when one of its 8 neighbours had an event within ``dt_us`` before it.
    ``last_t`` is padded by one pixel on each side. ``counts`` [H, W] (or [0, 0]: not counted) adds
    each in-sensor event at its pixel. Returns the number kept."""
    height = last_t.shape[0] - 2
    width = last_t.shape[1] - 2
    counting = counts.shape[0] > 0
    kept = 0
    for i in range(t.shape[0]):
        xs = np.int64(x[i])
        ys = np.int64(y[i])
        keep[i] = False
        if xs < 0 or xs >= width or ys < 0 or ys >= height:
            continue
        ti = t[i]
        supported = False
        for dy in range(3):
            for dx in range(3):
                if (dx != 1 or dy != 1) and ti - last_t[ys + dy, xs + dx] <= dt_us:
                    supported = True
        last_t[ys + 1, xs + 1] = ti
        if counting:
            counts[ys, xs] += 1
        if supported:
            keep[i] = True
            kept += 1
    return kept


@njit(
    types.int64(
        *_FILTER_EVENTS, types.int64, types.int64, types.Array(types.int64, 1, "C"),
        types.Array(types.int64, 2, "C"), types.Array(types.boolean, 2, "C"), types.Array(types.boolean, 1, "C"),
    ),
    cache=True,
    nogil=True,
)  # fmt: skip
def _hot_pixel_kernel(t, x, y, period_us, max_events, period, counts, hot, keep):
    """Drop events of pixels flagged hot; a pixel is hot during a period when it fired more than
    ``max_events`` times in the previous period (periods: ``t // period_us``). Returns kept count."""
    height, width = counts.shape
    kept = 0
    for i in range(t.shape[0]):
        xs = x[i]
        ys = y[i]
        keep[i] = False
        if xs < 0 or xs >= width or ys < 0 or ys >= height:
            continue
        current = t[i] // period_us
        if current != period[0]:
            for row in range(height):
                for column in range(width):
                    hot[row, column] = current == period[0] + 1 and counts[row, column] > max_events
                    counts[row, column] = 0
            period[0] = current
        counts[ys, xs] += 1
        if not hot[ys, xs]:
            keep[i] = True
            kept += 1
    return kept


@njit(
    types.int64(
        *_FILTER_EVENTS, _I8_1D, types.int64, types.int64, types.int64, types.Array(types.int64, 3, "C"),
        types.Array(types.int64, 3, "C"), types.Array(types.int8, 3, "C"), types.Array(types.boolean, 1, "C"),
    ),
    cache=True,
    nogil=True,
)  # fmt: skip
def _flicker_kernel(t, x, y, p, min_period_us, max_period_us, burst_gap_us, last_t, burst_start, periodic, keep):
    """Per pixel and polarity, events less than ``burst_gap_us`` apart form a burst. A burst that starts
    ``min_period_us``-``max_period_us`` after the previous one is periodic; from the second periodic
    burst in a row on, its events are dropped. State arrays are [2, H, W]. Returns the number kept."""
    height, width = last_t.shape[1], last_t.shape[2]
    kept = 0
    for i in range(t.shape[0]):
        xs = np.int64(x[i])
        ys = np.int64(y[i])
        keep[i] = False
        if xs < 0 or xs >= width or ys < 0 or ys >= height or (p[i] != 0 and p[i] != 1):
            continue
        polarity = np.int64(p[i])
        ti = t[i]
        if ti - last_t[polarity, ys, xs] > burst_gap_us:  # a new burst
            period = ti - burst_start[polarity, ys, xs]
            if min_period_us <= period <= max_period_us:
                periodic[polarity, ys, xs] = min(periodic[polarity, ys, xs] + 1, 2)
            else:
                periodic[polarity, ys, xs] = 0
            burst_start[polarity, ys, xs] = ti
        last_t[polarity, ys, xs] = ti
        if periodic[polarity, ys, xs] < 2:
            keep[i] = True
            kept += 1
    return kept


class FlickerFilter:
    """Drops the events of pixels that follow a flickering light (mains flicker at 100 or 120 Hz, LED
    PWM). At each pixel and polarity, events less than a third of the shortest period apart form a
    burst; once two bursts in a row have started one period after the last (a frequency within
    ``[min_hz, max_hz]``), that polarity's bursts are dropped until the rhythm breaks. An edge that
    moves across a pixel fires one burst, not a train of them at a fixed rate, and passes. Events
    outside the sensor or with a polarity other than 0 / 1 are dropped too. State carries across
    chunks.

    Args:
        sensor_size: (width, height) in pixels.
        min_hz, max_hz: the band of flicker frequencies to remove, Hz (bursts per second per polarity).
    """

    def __init__(self, sensor_size: tuple[int, int], min_hz: float = 80.0, max_hz: float = 150.0):
        sensor = SensorSize(*sensor_size).validated()
        if not 0 < min_hz <= max_hz:
            raise ValueError(f"the flicker band must satisfy 0 < min_hz <= max_hz, got {min_hz}, {max_hz}")
        self.sensor_size, self.min_hz, self.max_hz = sensor, float(min_hz), float(max_hz)
        self.min_period_us, self.max_period_us = int(1e6 / max_hz), math.ceil(1e6 / min_hz)
        self.burst_gap_us = self.min_period_us // 3
        shape = (2, sensor.height, sensor.width)
        self._last_t = np.full(shape, np.iinfo(np.int64).min // 2, dtype=np.int64)
        self._burst_start = np.full(shape, np.iinfo(np.int64).min // 2, dtype=np.int64)
        self._periodic = np.zeros(shape, dtype=np.int8)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        """The events of a time-ordered chunk that do not follow the flicker (a new array)."""
        check_events(events)
        keep = np.empty(len(events), dtype=np.bool_)
        _flicker_kernel(events["t"], events["x"], events["y"], events["p"], self.min_period_us, self.max_period_us,
                        self.burst_gap_us, self._last_t, self._burst_start, self._periodic, keep)  # fmt: skip
        return events[keep]


# The noise estimate of an adaptive background-activity filter: the 10th percentile of the pixels'
# event rates over the last NOISE_BLOCKS blocks of NOISE_BLOCK_US that held events (a gesture or a
# textured background lights up far fewer than 90 % of the pixels, so this percentile sees the noise
# floor), on at most NOISE_SAMPLE_PIXELS pixels (every k-th of a large sensor). Part of what an
# adaptive checkpoint's windows are: training.data's cache key holds NOISE_ESTIMATE (bump its version
# when the estimate's code changes).
NOISE_BLOCK_US = 500_000
NOISE_BLOCKS = 4
NOISE_PERCENTILE = 10
NOISE_SAMPLE_PIXELS = 1 << 16
NOISE_ESTIMATE = ("v2", NOISE_BLOCK_US, NOISE_BLOCKS, NOISE_PERCENTILE, NOISE_SAMPLE_PIXELS)
_NOT_COUNTED = np.zeros((0, 0), dtype=np.int32)


class BackgroundActivityFilter:
    """Drops events with no event on one of the 8 neighbouring pixels within ``dt_us`` before them
    (isolated noise). Events outside the sensor are dropped too. State carries across chunks.

    With ``adapt`` (``{"knee_hz": K, "power": P}``) the window follows the noise: at the end of every
    ``NOISE_BLOCK_US`` of event time the noise floor ``r`` (Hz per pixel) is estimated as the 10th
    percentile of the pixels' event rates over the last ``NOISE_BLOCKS`` blocks that held events (the
    time from each block's first event to its end; a silence or a pause is not taken for a quiet
    sensor); while ``r > K`` the window is ``dt_us * (K / r) ** P``, else ``dt_us``. A noisier sensor
    or darker room thus gets a shorter window and keeps about as much noise as the model was trained
    with. The estimate reads low on pure noise (Poisson counts over 2 s: 10 Hz reads about 7.5 Hz);
    K and P are fitted to it. Until the first block has ended the window is ``dt_us``. Causal and
    chunking-independent: the same events with the same timestamps give the same result whether
    filtered at once (a file, training) or in chunks (a live stream).

    Args:
        sensor_size: (width, height) in pixels.
        dt_us: support time window in microseconds (the longest, with ``adapt``).
        adapt: None (a fixed window), or the knee (Hz per pixel) and power of the adaptive window.
    """

    def __init__(self, sensor_size: tuple[int, int], dt_us: int, adapt: dict[str, float] | None = None):
        sensor = SensorSize(*sensor_size).validated()
        if dt_us < 1:
            raise ValueError(f"dt_us must be >= 1 µs, got {dt_us}")
        self.sensor_size, self.max_dt_us, self.dt_us = sensor, int(dt_us), int(dt_us)
        self.adapt = None if adapt is None else {"knee_hz": float(adapt["knee_hz"]), "power": float(adapt["power"])}
        self.noise_hz: float | None = None  # the latest noise floor (None before a block has ended, or without adapt)
        self._last_t = np.full((sensor.height + 2, sensor.width + 2), np.iinfo(np.int64).min // 2, dtype=np.int64)
        # per-pixel counts and the time covered (µs) of the block being counted and of the NOISE_BLOCKS before it
        # (a ring), and their sums
        ring = (NOISE_BLOCKS + 1, sensor.height, sensor.width) if adapt else (1, 0, 0)
        self._counts = np.zeros(ring, dtype=np.int32)
        self._covered_us = [0] * (NOISE_BLOCKS + 1)
        self._recent = np.zeros(sensor.height * sensor.width if adapt else 0, dtype=np.int32)
        self._block: int | None = None  # the block being counted (t // NOISE_BLOCK_US)
        self._block_start_us = 0  # its first event's time
        self._blocks_done = 0
        self.events_in = 0
        self.events_kept = 0

    def __call__(self, events: np.ndarray) -> np.ndarray:
        """The supported events of a time-ordered chunk (a new array)."""
        check_events(events)
        keep = np.empty(len(events), dtype=np.bool_)
        if self.adapt is None:
            kept = _background_activity_kernel(events["t"], events["x"], events["y"], self.dt_us, self._last_t, keep,
                                               _NOT_COUNTED)  # fmt: skip
        else:
            kept = 0
            blocks = events["t"] // NOISE_BLOCK_US
            edges = [0, *(np.flatnonzero(np.diff(blocks) > 0) + 1).tolist(), len(events)]
            for start, end in itertools.pairwise(edges):
                if start == end:
                    continue
                self._enter_block(int(blocks[start]), int(events["t"][start]))
                piece = events[start:end]
                counts = self._counts[self._blocks_done % (NOISE_BLOCKS + 1)]
                kept += _background_activity_kernel(piece["t"], piece["x"], piece["y"], self.dt_us, self._last_t,
                                                    keep[start:end], counts)  # fmt: skip
        self.events_in += len(events)
        self.events_kept += kept
        return events[keep]

    def _enter_block(self, block: int, first_t: int) -> None:
        """Start counting ``block`` (its first event at ``first_t`` µs): end the block counted so far,
        re-estimate the noise floor and set the window. Blocks without events in between are skipped."""
        if self._block is None:
            self._block, self._block_start_us = block, first_t
        if block <= self._block:  # the same block (or an event out of order: counted in the current one)
            return
        ring = NOISE_BLOCKS + 1
        ended = self._blocks_done % ring
        self._recent += self._counts[ended].reshape(-1)
        self._covered_us[ended] = (self._block + 1) * NOISE_BLOCK_US - self._block_start_us
        self._blocks_done += 1
        leaving = self._blocks_done % ring  # the block NOISE_BLOCKS + 1 ago (nothing before the ring is full)
        if self._blocks_done >= ring:
            self._recent -= self._counts[leaving].reshape(-1)
        self._counts[leaving].fill(0)
        self._covered_us[leaving] = 0
        self._block, self._block_start_us = block, first_t
        sample = self._recent[:: -(-self._recent.size // NOISE_SAMPLE_PIXELS)]  # a ceiling step: at most that many
        kth = int(NOISE_PERCENTILE / 100 * (sample.size - 1))
        floor = int(np.partition(sample, kth)[kth])
        self.noise_hz = floor / (sum(self._covered_us) * 1e-6)
        knee, power = self.adapt["knee_hz"], self.adapt["power"]
        scale = 1.0 if self.noise_hz <= knee else (knee / self.noise_hz) ** power
        self.dt_us = max(1, round(self.max_dt_us * scale))


class HotPixelFilter:
    """Drops the events of hot pixels: a pixel firing more than ``max_events`` times in one period of
    ``period_us`` (absolute grid ``t // period_us``) is muted for the next period (re-judged every
    period). Events outside the sensor are dropped too. State carries across chunks.

    Args:
        sensor_size: (width, height) in pixels.
        period_us: judging period in microseconds.
        max_events: most events a normal pixel fires in one period.
    """

    def __init__(self, sensor_size: tuple[int, int], *, period_us: int = 1_000_000, max_events: int = 1_000):
        sensor = SensorSize(*sensor_size).validated()
        if period_us < 1 or max_events < 1:
            raise ValueError(f"period_us and max_events must be >= 1, got {period_us}, {max_events}")
        self.sensor_size, self.period_us, self.max_events = sensor, int(period_us), int(max_events)
        self._period = np.array([np.iinfo(np.int64).min], dtype=np.int64)
        self._counts = np.zeros((sensor.height, sensor.width), dtype=np.int64)
        self.hot = np.zeros((sensor.height, sensor.width), dtype=np.bool_)  # [H, W], True: muted now

    def __call__(self, events: np.ndarray) -> np.ndarray:
        """The events of a time-ordered chunk that do not come from hot pixels (a new array)."""
        check_events(events)
        keep = np.empty(len(events), dtype=np.bool_)
        _hot_pixel_kernel(
            events["t"], events["x"], events["y"], self.period_us, self.max_events,
            self._period, self._counts, self.hot, keep,
        )  # fmt: skip
        return events[keep]


def check_filters(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate a noise-filter spec (stored in checkpoints): None, or a dict with
    ``background_activity_us`` (int µs or None), ``hot_pixels`` (None or
    ``{"period_us": int, "max_events": int}``) and ``flicker`` (None or ``{"min_hz": number,
    "max_hz": number}``), and optionally ``background_activity_adapt`` (``{"knee_hz": number,
    "power": number}``: the window follows the noise, ``BackgroundActivityFilter``; the key is left
    out when None)."""
    if spec is None:
        return None
    keys = {"background_activity_us", "hot_pixels", "flicker", "background_activity_adapt"}
    if not isinstance(spec, dict) or not set(spec) <= keys:
        raise ValueError(f"filters must be None or a dict of {', '.join(sorted(keys))}, got {spec!r}")
    dt_us = spec.get("background_activity_us")
    if dt_us is not None and (isinstance(dt_us, bool) or not isinstance(dt_us, int) or dt_us < 1):
        raise ValueError(f"background_activity_us must be a positive integer (µs) or None, got {dt_us!r}")
    hot = spec.get("hot_pixels")
    if hot is not None:
        _check_keys("hot_pixels", hot, {"period_us", "max_events"})
        if not all(isinstance(hot[key], int) and not isinstance(hot[key], bool) and hot[key] >= 1 for key in hot):
            raise ValueError(f"hot_pixels needs positive integers period_us and max_events, got {hot!r}")
    flicker = spec.get("flicker")
    if flicker is not None:
        _check_keys("flicker", flicker, {"min_hz", "max_hz"})
        low, high = flicker["min_hz"], flicker["max_hz"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not 0 < low <= high:
            raise ValueError(f"flicker needs numbers 0 < min_hz <= max_hz, got {flicker!r}")
        flicker = {"min_hz": float(low), "max_hz": float(high)}
    adapt = spec.get("background_activity_adapt")
    if adapt is not None:
        _check_keys("background_activity_adapt", adapt, {"knee_hz", "power"})
        if dt_us is None:
            raise ValueError("background_activity_adapt needs background_activity_us (the longest window)")
        if not all(isinstance(adapt[key], (int, float)) and not isinstance(adapt[key], bool)
                   and math.isfinite(adapt[key]) and adapt[key] > 0 for key in ("knee_hz", "power")):  # fmt: skip
            raise ValueError(f"background_activity_adapt needs positive finite knee_hz and power, got {adapt!r}")
        adapt = {"knee_hz": float(adapt["knee_hz"]), "power": float(adapt["power"])}
    if dt_us is None and hot is None and flicker is None:
        return None
    checked = {"background_activity_us": dt_us, "hot_pixels": None if hot is None else dict(hot), "flicker": flicker}
    if adapt is not None:
        checked["background_activity_adapt"] = adapt
    return checked


class EventFilter:
    """The noise filters of a spec (``check_filters``) for one sensor, one after the other: the
    flicker filter, the background-activity filter, then the hot-pixel filter. State carries across
    chunks: feed a recording or a stream in time order, once. Training and serving apply the same
    (the spec is stored in the checkpoint's ``input.filters``).

    Args:
        spec: the filters (None: none; every event passes).
        sensor_size: the camera's (width, height) pixels.
    """

    def __init__(self, spec: dict[str, Any] | None, sensor_size: tuple[int, int]) -> None:
        self.spec = check_filters(spec)
        self.filters: list[Any] = []
        if self.spec is not None and self.spec["flicker"] is not None:
            self.filters.append(FlickerFilter(sensor_size, **self.spec["flicker"]))
        if self.spec is not None and self.spec["background_activity_us"] is not None:
            self.filters.append(BackgroundActivityFilter(sensor_size, self.spec["background_activity_us"],
                                                         self.spec.get("background_activity_adapt")))
        if self.spec is not None and self.spec["hot_pixels"] is not None:
            self.filters.append(HotPixelFilter(sensor_size, **self.spec["hot_pixels"]))
        self.events_in = 0
        self.events_removed = 0

    def background_activity(self) -> dict[str, Any] | None:
        """The background-activity filter's window now (``window_us``, µs) and noise floor
        (``noise_floor_hz``, Hz per pixel; None without ``adapt`` or before its first estimate), or
        None without that filter."""
        for event_filter in self.filters:
            if isinstance(event_filter, BackgroundActivityFilter):
                return {"window_us": event_filter.dt_us, "noise_floor_hz": event_filter.noise_hz}
        return None

    def __call__(self, events: np.ndarray) -> np.ndarray:
        """The events of a time-ordered chunk that pass every filter (the input itself without filters)."""
        count = len(events)
        for event_filter in self.filters:
            events = event_filter(events)
        self.events_in += count
        self.events_removed += count - len(events)
        return events


# --- streaming --------------------------------------------------------------------------------


class Window(NamedTuple):
    """One streaming window: it ends at ``end_us`` (µs, stream time) and holds ``events`` events."""

    end_us: int
    frames: np.ndarray  # [T, 2, H, W] float32, normalised
    events: int


@dataclass
class BinningStats:
    """Counters of a ``StreamingBinner`` (events and windows since creation)."""

    events_binned: int = 0  # written into a bin
    events_filtered: int = 0  # removed by the noise filters
    events_unmapped: int = 0  # inside the sensor, outside the crop / off the "nearest" lattice
    events_unused: int = 0  # valid, but only in windows that were skipped (or between windows)
    dropped_out_of_sensor: int = 0
    dropped_bad_polarity: int = 0
    dropped_backwards: int = 0  # timestamp earlier than the latest time already seen
    windows_emitted: int = 0
    windows_skipped: int = 0  # not emitted because the caller asked for the latest only
    windows_in_gaps: int = 0  # silent windows inside a time gap, never emitted
    gaps: int = 0  # forward jumps in time longer than ``gap_us`` (default: the window)


class StreamingBinner:
    """Incremental binning of a time-ordered event stream into windows every ``stride_us``.

    Each event is binned once into a ring of T bins (slot = absolute bin index % T, bin index =
    ``t // bin_us``); a window is emitted by copying the ring in time order, never re-binning it.
    Window ``end_us`` is emitted once the stream's time reaches it (an event with ``t >= end_us``,
    or ``now_us >= end_us``); its frames equal ``bin_window(events, mapping, window,
    end_us - window_us)`` on the same events.

    Stream rules:
      * time only moves forward: an event with ``t`` below the latest time seen (event or
        ``now_us``) would belong to a bin that may already be emitted; it is dropped and counted
        (``dropped_backwards``), never written into another bin. Equal timestamps are fine.
      * the first window emitted is the first one ending after the first time seen.
      * a gap (time jumping forward by more than ``gap_us`` between consecutive events, or to
        ``now_us``) clears the ring. Of the windows ending more than ``gap_us`` after the last
        event, the first is emitted (empty: the consumer sees the silence begin) and the others
        are not (counted in ``windows_in_gaps``); the work is O(1) whatever the gap length. The
        windows of a shorter silence are emitted, empty.
      * ``emit="all"`` returns every due window (a chunk spanning N strides returns N windows);
        ``emit="latest"`` returns only the newest due window, does not bin events that only
        older windows needed, and counts the others in ``windows_skipped``.

    Args:
        mapping: sensor -> input mapping (built for the actual camera's sensor size).
        window: window layout.
        normalisation: applied to each emitted window (see ``apply_normalisation``).
        filters: noise filters applied to every chunk before it is binned (``EventFilter``);
            removed events are counted in ``stats.events_filtered``.
        threads: at most this many threads for a large chunk (default ``default_threads()``); a
            chunk is split only into pieces of at least ``MIN_EVENTS_PER_THREAD`` events.
        gap_us: the longest silence (µs) whose windows are still emitted, empty (default and
            minimum ``window.window_us``: a window without events is not emitted). A step model,
            fed one bin at a time, takes its model's window, so that every bin of it is fed.
    """

    def __init__(
        self,
        mapping: SensorMapping,
        window: WindowSpec,
        *,
        normalisation: dict[str, Any] | None = None,
        filters: dict[str, Any] | None = None,
        threads: int | None = None,
        gap_us: int | None = None,
    ):
        self.mapping = mapping
        self.window = window
        self.gap_us = window.window_us if gap_us is None else int(gap_us)
        if self.gap_us < window.window_us:
            raise ValueError(f"gap_us must be at least the window ({window.window_us} us), got {gap_us}")
        self.normalisation = check_normalisation(normalisation)
        self.filters = check_filters(filters)
        self.event_filter = EventFilter(self.filters, mapping.sensor_size)
        self.threads = _check_threads(threads)
        self.stats = BinningStats()
        shape = (window.bins, 2, mapping.input_size.height, mapping.input_size.width)
        self._ring = np.zeros(shape, dtype=np.float32)
        self._slot_events = np.zeros(window.bins, dtype=np.int64)
        self._ring_bin: int | None = None  # newest absolute bin index the ring holds
        self._time_us: int | None = None  # latest stream time seen (event or now_us)
        self._done_until: int | None = None  # grid end of the last window emitted or passed over

    @property
    def time_us(self) -> int | None:
        """Latest stream time seen in microseconds (None before any event or ``now_us``)."""
        return self._time_us

    def push(self, events: np.ndarray, now_us: int | None = None, *, emit: str = "all") -> list[Window]:
        """Bin a chunk of events (time-ordered, possibly empty) and return the windows now due.

        ``now_us`` (µs, stream time) tells that no event earlier than it is still to come, so an
        empty chunk can advance time. ``emit``: ``"all"`` or ``"latest"`` (see the class docstring).
        """
        check_events(events)
        if emit not in EMIT_MODES:
            raise ValueError(f"emit must be one of {EMIT_MODES}, got {emit!r}")
        if now_us is not None:
            now_us = int(now_us)
        if self.event_filter.filters and len(events):
            # The chunk's last time still moves the stream on when the filter removes its events:
            # otherwise the windows of a quiet stretch (noise only) all fall due at its next kept
            # event, and ``emit="latest"`` passes over all but one of them.
            chunk_end = int(events["t"][-1])
            now_us = chunk_end if now_us is None else max(now_us, chunk_end)
            removed = self.event_filter.events_removed
            events = self.event_filter(events)
            self.stats.events_filtered += self.event_filter.events_removed - removed
        spec = self.window
        stats = self.stats
        previous_time = self._time_us

        # 1. Drop backwards events, find gaps between consecutive events (one Numba pass).
        gap_at = np.empty(len(events), dtype=np.int64)
        gap_pairs: list[tuple[int, int]] = []
        if len(events):
            keep = np.empty(len(events), dtype=np.bool_)
            dropped, gap_count, latest = _scan_times(
                events["t"], previous_time is not None, previous_time or 0, self.gap_us, keep, gap_at
            )
            if dropped:
                stats.dropped_backwards += dropped
                events = events[keep]
            times = events["t"]
            for position in gap_at[:gap_count].tolist():
                before = int(times[position - 1]) if position else int(previous_time)
                gap_pairs.append((before, int(times[position])))
        else:
            times = events["t"]
            latest = previous_time
        if len(times) == 0 and previous_time is None and now_us is None:
            return []
        new_time = max(v for v in (latest, now_us, previous_time) if v is not None)
        new_time = int(new_time)
        last_before_now = int(times[-1]) if len(times) else previous_time
        if now_us is not None and last_before_now is not None and new_time - last_before_now > self.gap_us:
            gap_pairs.append((last_before_now, new_time))
        stats.gaps += len(gap_pairs)
        if self._done_until is None:  # windows ending at or before the first time seen hold nothing
            first_time = int(times[0]) if len(times) else new_time
            self._done_until = (first_time // spec.stride_us) * spec.stride_us
        self._time_us = new_time

        # 2. Which grid ends are due: (done_until, new_time], minus the silent ones inside gaps.
        stride = spec.stride_us
        first_k, last_k = self._done_until // stride + 1, new_time // stride
        silent: list[tuple[int, int]] = []  # inclusive k ranges, ordered, disjoint
        for before, after in gap_pairs:
            # + 2: the first window ending more than gap_us after ``before`` is emitted, empty
            lo_k, hi_k = max((before + self.gap_us) // stride + 2, first_k), min(after // stride, last_k)
            if lo_k <= hi_k:
                silent.append((lo_k, hi_k))
        due = _k_ranges_minus(first_k, last_k, silent)
        stats.windows_in_gaps += sum(hi - lo + 1 for lo, hi in silent)
        if emit == "latest" and due:
            total = sum(hi - lo + 1 for lo, hi in due)
            stats.windows_skipped += total - 1
            due = [(due[-1][1], due[-1][1])]
        if last_k >= first_k:
            self._done_until = last_k * stride

        # 3. Bin segment by segment, emitting each due window before its ring slots are reused.
        windows: list[Window] = []
        position = 0
        for lo_k, hi_k in due:
            for k in range(lo_k, hi_k + 1):
                end_us = k * stride
                end = int(np.searchsorted(times, end_us, side="left"))
                position = self._bin_segment(events, times, position, end, end_us)
                windows.append(self._emit(end_us))
        if position < len(times):  # the tail: events after the last due window
            next_end = (new_time // stride + 1) * stride
            self._bin_segment(events, times, position, len(times), next_end, last_bin=int(times[-1]) // spec.bin_us)
        stats.windows_emitted += len(windows)
        return windows

    def reset(self) -> None:
        """Forget all state and counters (e.g. after the source restarts its clock)."""
        self.__init__(self.mapping, self.window, normalisation=self.normalisation, filters=self.filters,
                      threads=self.threads, gap_us=self.gap_us)  # fmt: skip

    def _bin_segment(self, events, times, start: int, end: int, end_us: int, last_bin: int | None = None) -> int:
        """Bin ``events[start:end]`` for the window ending at ``end_us``; events before that window
        are unused. The ring is advanced to ``last_bin`` (default: the window's last bin)."""
        spec = self.window
        end_bin = end_us // spec.bin_us
        first_bin = end_bin - spec.bins
        begin = max(start, int(np.searchsorted(times, first_bin * spec.bin_us, side="left")))
        begin = min(begin, end)
        self.stats.events_unused += begin - start
        self._advance(end_bin - 1 if last_bin is None else last_bin)
        if end > begin:
            binned, outside, bad, unmapped = _bin_events(
                events[begin:end], self.mapping, 0, spec.bin_us, first_bin, end_bin, self._ring, self._slot_events,
                self.threads,
            )  # fmt: skip
            self.stats.events_binned += binned
            self.stats.dropped_out_of_sensor += outside
            self.stats.dropped_bad_polarity += bad
            self.stats.events_unmapped += unmapped
        return end

    def _advance(self, newest_bin: int) -> None:
        """Make the ring hold bins ``(newest_bin - T, newest_bin]``, zeroing slots of bins it gains."""
        slots = self.window.bins
        if self._ring_bin is not None and newest_bin <= self._ring_bin:
            return
        if self._ring_bin is None or newest_bin - self._ring_bin >= slots:
            if self._ring_bin is not None:
                self._ring.fill(0.0)
                self._slot_events.fill(0)
        else:
            first = (self._ring_bin + 1) % slots
            count = newest_bin - self._ring_bin
            for lo, hi in ((first, min(first + count, slots)), (0, max(first + count - slots, 0))):
                self._ring[lo:hi] = 0.0
                self._slot_events[lo:hi] = 0
        self._ring_bin = newest_bin

    def _emit(self, end_us: int) -> Window:
        spec = self.window
        oldest_slot = (end_us // spec.bin_us) % spec.bins
        frames = np.empty_like(self._ring)
        tail = spec.bins - oldest_slot
        frames[:tail] = self._ring[oldest_slot:]
        frames[tail:] = self._ring[:oldest_slot]
        apply_normalisation(frames, self.normalisation)
        return Window(end_us, frames, int(self._slot_events.sum()))


def _k_ranges_minus(first: int, last: int, holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive integer range [first, last] minus ordered disjoint inclusive ranges."""
    ranges = []
    for lo, hi in holes:
        if lo > first:
            ranges.append((first, min(lo - 1, last)))
        first = max(first, hi + 1)
    if first <= last:
        ranges.append((first, last))
    return [(lo, hi) for lo, hi in ranges if lo <= hi]


# --- plain per-pixel counts (event views, pictures) ------------------------------------------

_COUNT_SIGNATURE = types.void(_I16_1D, _I16_1D, _I8_1D, types.Array(types.int32, 3, "C"), types.int32)


@njit(_COUNT_SIGNATURE, cache=True, nogil=True)
def _add_counts(x, y, p, counts, weight):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        counts[p[i], y[i], x[i]] += weight


def add_counts(counts: np.ndarray, events: np.ndarray, weight: int = 1) -> np.ndarray:
    """``counts[p, y, x] += weight`` for every event: int32 ``[2, H, W]`` counts (channel =
    polarity) at the sensor's own resolution, no mapping and no time bins (the GUI's event view,
    pictures). Events must lie on the ``W x H`` sensor (``check_events`` and the readers and the
    transport guarantee it). Returns ``counts``."""
    if counts.dtype != np.int32 or counts.ndim != 3 or counts.shape[0] != 2 or not counts.flags.c_contiguous:
        raise ValueError(f"counts must be a C-contiguous int32 [2, H, W] array, got {counts.dtype} {counts.shape}")
    if len(events):
        _add_counts(events["x"], events["y"], events["p"], counts, weight)
    return counts


def warmup() -> None:
    """Compile (or load from the Numba cache) every kernel on tiny inputs, so the first real
    window never waits for a compiler. Call it once at worker start-up."""
    mapping = SensorMapping.create((4, 4), (2, 2))
    spec = WindowSpec(2, 10, 10)
    events = make_events([0, 5, 25], [0, 1, 3], [0, 2, 3], [0, 1, 1])
    bin_window(events, mapping, spec, 0)
    StreamingBinner(mapping, spec).push(events)
    BackgroundActivityFilter((4, 4), 10)(events)
    HotPixelFilter((4, 4))(events)
    add_counts(np.zeros((2, 4, 4), np.int32), events)
