"""Building blocks of the live GUI: the event-image accumulator (pure NumPy/Numba, no Qt) and the
pyqtgraph/Qt widgets that show the event view, the predicted gesture, the class probabilities,
the recent predictions and rolling latency / event-rate plots.

The event view: ``EventAccumulator`` keeps per-pixel ON/OFF counts of the events of the last
``accumulation_us`` microseconds of stream time, incrementally (each event is added once and
subtracted once when it leaves the window: cost per frame ~ events that arrived, whatever the
accumulation time). ``colour_index`` turns the counts into one uint8 index per pixel
(16 ON levels x 16 OFF levels) that ``ImageItem`` colours through ``EVENT_LUT`` with fixed levels,
so a frame costs a few vectorised passes over the sensor and no auto-levelling.
"""

from __future__ import annotations

import ctypes
import html
import sys
import time
from collections import deque

import numpy as np
import PySide6
from PySide6 import QtCore, QtGui, QtWidgets


def _guard_pyside_refcount_bug() -> bool:
    """Work around PySide6 6.12.0 on CPython < 3.12, which drops a reference to ``True``/``None``
    on every Python-side ``Signal.emit`` (pyqtgraph emits on each range or data change): the
    interpreter aborts with "bool_dealloc / none_dealloc: deallocating ..." after a few hundred
    updates. From CPython 3.12 these singletons are immortal; here they are made effectively
    immortal the same way (a huge reference count; they are never freed anyway). PySide6 6.11.3
    does not have the bug: prefer pinning ``PySide6 != 6.12.0``. Returns True if applied."""
    if sys.version_info >= (3, 12) or not PySide6.__version__.startswith("6.12.0"):
        return False
    for singleton in (True, False, None):
        ctypes.c_ssize_t.from_address(id(singleton)).value += 1 << 40
    return True


PYSIDE_REFCOUNT_GUARD = _guard_pyside_refcount_bug()

import pyqtgraph as pg  # noqa: E402 - after the guard: pyqtgraph emits signals from the start

from stream.binning import add_counts  # noqa: E402
from stream.classes import GESTURE_CLASSES, NO_GESTURE  # noqa: E402
from stream.events import SensorSize, check_events  # noqa: E402

LEVELS = 16  # colour steps per polarity
ON_RGB = np.array([255, 150, 20])  # orange: brightness up
OFF_RGB = np.array([40, 150, 255])  # blue: brightness down
BACKGROUND_RGB = np.array([18, 18, 22])
MIN_ACCUMULATION_US = 1_000
MAX_ACCUMULATION_US = 2_000_000
DEFAULT_ACCUMULATION_US = 33_000
DEFAULT_MAX_EVENTS = 4_000_000  # events kept for the accumulation window at most (64 MiB)


def _event_lut() -> np.ndarray:
    """RGB uint8 ``[LEVELS * LEVELS, 3]``: index ``on * LEVELS + off`` -> colour (additive mix,
    square-root brightness so that pixels with a single event stay visible)."""
    on, off = np.divmod(np.arange(LEVELS * LEVELS), LEVELS)
    on, off = np.sqrt(on / (LEVELS - 1))[:, None], np.sqrt(off / (LEVELS - 1))[:, None]  # single events visible
    mix = BACKGROUND_RGB + on * ON_RGB + off * OFF_RGB
    return np.clip(mix, 0, 255).astype(np.uint8)


EVENT_LUT = _event_lut()


class EventAccumulator:
    """ON/OFF event counts per pixel over the last ``accumulation_us`` of stream time.

    Args:
        sensor_size: width, height in pixels.
        accumulation_us: time window shown, microseconds (1 ms .. 2 s).
        max_events: most events kept for the window (older ones leave early; bounds memory).

    ``add(events)`` takes time-ordered event packets; ``counts`` is int32 ``[2, H, W]`` (channel =
    polarity). A packet earlier than the newest event seen (a restarted source) clears the image.
    The window ends at ``time_us``: the newest event, or later when ``advance`` moved it on
    (a silent source's clock); a packet that comes before an advanced ``time_us`` (it was only an
    estimate) pulls it back to its own newest event.
    """

    def __init__(
        self,
        sensor_size: SensorSize,
        accumulation_us: int = DEFAULT_ACCUMULATION_US,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self.sensor_size = SensorSize(*sensor_size).validated()
        self.accumulation_us = _check_accumulation(accumulation_us)
        self.max_events = int(max_events)
        self.counts = np.zeros((2, self.sensor_size.height, self.sensor_size.width), dtype=np.int32)
        self.newest_us: int | None = None  # newest event
        self.time_us: int | None = None  # end of the window shown (>= newest_us)
        self._chunks: deque[np.ndarray] = deque()  # events inside the window, oldest first
        self._held = 0  # events in _chunks

    def set_accumulation(self, accumulation_us: int) -> None:
        """Change the time window (µs); a shorter one takes effect at once."""
        self.accumulation_us = _check_accumulation(accumulation_us)
        self._expire()

    def clear(self) -> None:
        """Forget every event."""
        self.counts.fill(0)
        self._chunks.clear()
        self._held = 0
        self.newest_us = None
        self.time_us = None

    def add(self, events: np.ndarray) -> None:
        """Add a time-ordered packet of ``EVENT_DTYPE`` events on this sensor."""
        check_events(events)
        if not len(events):
            return
        if self.newest_us is not None and int(events["t"][0]) < self.newest_us:
            self.clear()  # time went back: a new stream
        add_counts(self.counts, events)
        self._chunks.append(events)
        self._held += len(events)
        self.newest_us = int(events["t"][-1])
        if self.time_us is None or int(events["t"][0]) < self.time_us:
            self.time_us = self.newest_us  # first packet, or an advance that overshot
        else:
            self.time_us = max(self.time_us, self.newest_us)
        self._expire()

    def advance(self, time_us: int) -> None:
        """Stream time has reached ``time_us`` without events (a source clock message): events
        older than the window leave, so a silent source's image fades instead of freezing.
        Events later added must not be earlier than ``time_us`` (a clock promises that)."""
        if self.time_us is not None and int(time_us) > self.time_us:
            self.time_us = int(time_us)
            self._expire()

    def _expire(self) -> None:
        """Subtract the events older than the window or beyond ``max_events``."""
        if self.time_us is None:
            return
        cutoff = self.time_us - self.accumulation_us
        while self._chunks:
            oldest = self._chunks[0]
            excess = self._held - self.max_events
            keep_from = max(int(np.searchsorted(oldest["t"], cutoff, side="right")), excess)
            if keep_from <= 0:
                return
            gone = oldest[:keep_from]
            add_counts(self.counts, gone, -1)
            self._held -= len(gone)
            if keep_from >= len(oldest):
                self._chunks.popleft()
            else:
                self._chunks[0] = oldest[keep_from:]
                return

    @property
    def events_held(self) -> int:
        """Events currently counted in the image."""
        return self._held


def _check_accumulation(accumulation_us: int) -> int:
    if not MIN_ACCUMULATION_US <= int(accumulation_us) <= MAX_ACCUMULATION_US:
        raise ValueError(
            f"accumulation must be {MIN_ACCUMULATION_US}..{MAX_ACCUMULATION_US} µs, got {accumulation_us}"
        )
    return int(accumulation_us)


def colour_index(counts: np.ndarray, full_scale: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``[H, W]`` index into ``EVENT_LUT`` for int ``[2, H, W]`` counts: each polarity's
    count is mapped linearly to 0..15, reaching 15 at ``full_scale`` events per pixel."""
    if full_scale < 1:
        raise ValueError(f"full_scale must be >= 1 event, got {full_scale}")
    levels = np.minimum(counts, full_scale) * (LEVELS - 1) // full_scale  # [2, H, W], 0..15
    if out is None:
        out = np.empty(counts.shape[1:], dtype=np.uint8)
    np.add(levels[1] * LEVELS, levels[0], out=out, casting="unsafe")
    return out


def _plain_axes(plot: pg.PlotWidget) -> None:
    """No SI-prefix rescaling of the axes (units are in the labels)."""
    for name in ("left", "bottom"):
        plot.getAxis(name).enableAutoSIPrefix(False)


# --- widgets --------------------------------------------------------------------------------


class EventView(pg.GraphicsLayoutWidget):
    """The sensor image at its own resolution, top-left origin, pixels square.

    ``show_counts(counts, full_scale)`` is the whole per-frame work: ``colour_index`` then
    ``setImage(..., autoLevels=False, levels=(0, 255))`` with the fixed LUT.
    """

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setBackground(tuple(BACKGROUND_RGB))
        self.view = self.addViewBox(lockAspect=True, invertY=True, enableMouse=False)
        self.view.setMenuEnabled(False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image)
        self.caption = pg.TextItem("", color=(200, 200, 200), anchor=(0, 0))
        self.caption.setParentItem(self.view)  # fixed in the corner, not in sensor coordinates
        self._index: np.ndarray | None = None

    def show_counts(self, counts: np.ndarray, full_scale: int) -> None:
        """Show int ``[2, H, W]`` event counts (see ``colour_index``)."""
        shape = counts.shape[1:]
        if self._index is None or self._index.shape != shape:
            self._index = np.empty(shape, dtype=np.uint8)
            self.image.setImage(self._index, lut=EVENT_LUT, levels=(0, 255), autoLevels=False)
            self.view.setRange(xRange=(0, shape[1]), yRange=(0, shape[0]), padding=0.0)
        colour_index(counts, full_scale, out=self._index)
        self.image.setImage(self._index, autoLevels=False, levels=(0, 255))

    def set_caption(self, text: str) -> None:
        self.caption.setText(text)


class PredictionPanel(QtWidgets.QWidget):
    """The stable gesture, large enough to read across a room, and its confidence."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QtWidgets.QLabel(NO_GESTURE)
        self.label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        font = self.label.font()
        font.setPointSize(34)
        font.setBold(True)
        self.label.setFont(font)
        self.label.setMinimumHeight(110)
        self.detail = QtWidgets.QLabel("waiting for predictions")
        self.detail.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        detail_font = self.detail.font()
        detail_font.setPointSize(15)
        self.detail.setFont(detail_font)
        self.warning = QtWidgets.QLabel("")  # the input is unlike the training data (``set_warning``)
        self.warning.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ff7a5c;")
        self.warning.hide()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.label)
        layout.addWidget(self.detail)
        layout.addWidget(self.warning)
        self._index = -1
        self.stale = False
        self.show_stable(-1, NO_GESTURE, 0.0, None)

    def show_stable(self, index: int, name: str, confidence: float, top: tuple[str, float] | None) -> None:
        """Show the stable label (``index`` -1: no gesture) and, below, the raw top class."""
        self._index = index
        if index < 0:
            self.label.setText(NO_GESTURE)
        else:
            self.label.setText(name)
        self.set_stale(False)
        parts = [f"confidence {confidence * 100:.0f} %"] if index >= 0 else []
        if top is not None:
            parts.append(f"this window: {top[0]} {top[1] * 100:.0f} %")
        self.detail.setText("   ·   ".join(parts) if parts else "")

    def set_warning(self, text: str | None) -> None:
        """A line under the label about the input (None: none shown)."""
        self.warning.setText(text or "")
        self.warning.setVisible(bool(text))

    def set_stale(self, stale: bool) -> None:
        """Grey the label out while no fresh prediction comes (it is the last one, not the current)."""
        self.stale = stale
        colour = "#8a8a93" if self._index < 0 else ("#6f6a62" if stale else "#ffb347")
        self.label.setStyleSheet(f"color: {colour};")


class ProbabilityBars(pg.PlotWidget):
    """Horizontal bars: probability of every class for the newest window."""

    def __init__(self, classes: tuple[str, ...] = GESTURE_CLASSES, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.classes = tuple(classes)
        count = len(self.classes)
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self.setMenuEnabled(False)
        self.setXRange(0, 1, padding=0.02)
        self.setYRange(-0.6, count - 0.4, padding=0)
        self.invertY(True)
        left = self.getAxis("left")
        left.setTicks([[(i, name) for i, name in enumerate(self.classes)]])
        left.setStyle(tickLength=0)
        self.getAxis("bottom").setTicks([[(v, f"{v:.0%}") for v in (0, 0.25, 0.5, 0.75, 1.0)]])
        self._base_brush = pg.mkBrush(70, 110, 160)
        self._top_brush = pg.mkBrush(255, 179, 71)
        self.bars = pg.BarGraphItem(x0=0, y=np.arange(count), height=0.7, width=np.zeros(count), brush=self._base_brush)
        self.addItem(self.bars)

    def set_classes(self, classes: tuple[str, ...]) -> None:
        """Show another model's classes (one bar each, all empty until its next probabilities)."""
        self.classes = tuple(classes)
        count = len(self.classes)
        self.setYRange(-0.6, count - 0.4, padding=0)
        self.getAxis("left").setTicks([[(i, name) for i, name in enumerate(self.classes)]])
        self.removeItem(self.bars)
        self.bars = pg.BarGraphItem(x0=0, y=np.arange(count), height=0.7, width=np.zeros(count), brush=self._base_brush)
        self.addItem(self.bars)

    def show_probabilities(self, probabilities: np.ndarray, highlight: int | None = None) -> None:
        """Bar lengths = ``probabilities`` (one per class); ``highlight`` drawn in the accent colour."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (len(self.classes),):
            return  # a model with other classes: nothing sensible to draw
        brushes = [self._top_brush if i == highlight else self._base_brush for i in range(len(self.classes))]
        self.bars.setOpts(width=probabilities, brushes=brushes)


GAP_BRUSH = (120, 120, 140, 70)  # marked gaps (worker restarted, no predictions) in the strip and plots
MAX_GAPS = 16  # gaps remembered per plot


class GapMarks:
    """Shaded, labelled time spans (x = seconds ago) on a plot: where predictions were missing."""

    def __init__(self, plot: pg.PlotWidget, labelled: bool) -> None:
        self.plot = plot
        self.labelled = labelled
        self.gaps: deque[tuple[float, float, str]] = deque(maxlen=MAX_GAPS)  # monotonic s, s, label
        self._regions: list[pg.LinearRegionItem] = []
        self._labels: list[pg.TextItem] = []

    def add(self, start_s: float, end_s: float, label: str) -> None:
        self.gaps.append((start_s, end_s, label))

    def refresh(self, now_s: float, top: float) -> None:
        """Draw the gaps relative to ``now_s``; labels at view y = ``top``."""
        while len(self._regions) < len(self.gaps):
            region = pg.LinearRegionItem(movable=False, brush=pg.mkBrush(GAP_BRUSH), pen=pg.mkPen(None))
            region.setZValue(5)
            self.plot.addItem(region)
            self._regions.append(region)
            label = pg.TextItem("", color=(220, 220, 235), anchor=(0, 0))
            label.setZValue(6)
            self.plot.addItem(label)
            self._labels.append(label)
        for k, (region, label) in enumerate(zip(self._regions, self._labels)):
            visible = k < len(self.gaps)
            region.setVisible(visible)
            label.setVisible(visible and self.labelled)
            if visible:
                start_s, end_s, text = self.gaps[k]
                region.setRegion((start_s - now_s, end_s - now_s))
                label.setText(text)
                label.setPos(start_s - now_s, top)


class PredictionStrip(pg.PlotWidget):
    """Recent predictions over time (x = seconds ago): class probabilities as a heat map (one row
    per class, in ``classes`` order, the same rows as the axis labels), the stable label as white
    dots, the true class (when the source knows it) as cyan rings, and gaps (no predictions,
    worker restarted) shaded and labelled.

    The heat map is drawn on a fixed time grid of ``bin_s`` columns: each column shows the newest
    prediction at or before it, for at most ``hold_s``; columns without one are left empty, so a
    pause in the predictions shows as a gap at its true place in time.
    """

    def __init__(self, classes: tuple[str, ...] = GESTURE_CLASSES, history: int = 400, span_s: float = 10.0,
                 bin_s: float = 0.025, hold_s: float = 0.3, parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.classes = tuple(classes)
        self.span_s, self.bin_s, self.hold_s = span_s, bin_s, hold_s
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self.setMenuEnabled(False)
        self.invertY(True)
        self.getAxis("left").setTicks([[(i, name) for i, name in enumerate(self.classes)]])
        self.getAxis("left").setStyle(tickLength=0)
        self.setLabel("bottom", "seconds ago")
        self.heat = pg.ImageItem(axisOrder="row-major")
        self.heat.setLookupTable(pg.colormap.get("inferno").getLookupTable(nPts=256))
        self.addItem(self.heat)
        self.truth_rings = pg.ScatterPlotItem(size=10, pen=pg.mkPen(80, 220, 255, width=1.5), brush=None)
        self.addItem(self.truth_rings)
        self.dots = pg.ScatterPlotItem(size=5, pen=None, brush=pg.mkBrush(255, 255, 255))
        self.addItem(self.dots)
        self.gap_marks = GapMarks(self, labelled=True)
        self._probabilities: deque[np.ndarray] = deque(maxlen=history)
        self._stable: deque[int] = deque(maxlen=history)
        self._truth: deque[int] = deque(maxlen=history)
        self._times: deque[float] = deque(maxlen=history)
        self.setYRange(-0.5, len(self.classes) - 0.5, padding=0)
        self.setXRange(-span_s, 0.0, padding=0.01)
        _plain_axes(self)

    def set_classes(self, classes: tuple[str, ...]) -> None:
        """Show another model's classes: one row each; the predictions shown so far are forgotten
        (their rows meant the previous classes)."""
        self.classes = tuple(classes)
        self.getAxis("left").setTicks([[(i, name) for i, name in enumerate(self.classes)]])
        self.setYRange(-0.5, len(self.classes) - 0.5, padding=0)
        for history in (self._probabilities, self._stable, self._truth, self._times):
            history.clear()
        self.dots.setData([], [])
        self.truth_rings.setData([], [])

    def add(self, time_s: float, probabilities: np.ndarray, stable_index: int, truth_index: int = -1) -> None:
        """Append one prediction at ``time_s`` (monotonic seconds); ``truth_index`` -1: unknown."""
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if probabilities.shape != (len(self.classes),):
            return
        self._probabilities.append(probabilities)
        self._stable.append(int(stable_index))
        self._truth.append(int(truth_index))
        self._times.append(float(time_s))

    def mark_gap(self, start_s: float, end_s: float, label: str) -> None:
        """Shade ``start_s``..``end_s`` (monotonic s) and label it (e.g. "worker restarted")."""
        self.gap_marks.add(start_s, end_s, label)

    def heat_image(self, now_s: float) -> np.ndarray:
        """float32 ``[classes, span_s / bin_s]``: the time grid ending at ``now_s`` (NaN: no prediction)."""
        columns = round(self.span_s / self.bin_s)
        image = np.full((len(self.classes), columns), np.nan, dtype=np.float32)
        if not self._times:
            return image
        times = np.fromiter(self._times, dtype=np.float64, count=len(self._times))
        column_times = now_s - self.span_s + (np.arange(columns) + 1) * self.bin_s  # right edge of each column
        newest = np.searchsorted(times, column_times, side="right") - 1
        valid = newest >= 0
        valid[valid] = column_times[valid] - times[newest[valid]] <= self.hold_s
        if valid.any():
            probabilities = np.stack(self._probabilities, axis=1)  # [classes, predictions]
            image[:, valid] = probabilities[:, newest[valid]]
        return image

    def refresh(self, now_s: float) -> None:
        """Redraw with x = seconds before ``now_s``."""
        self.heat.setImage(self.heat_image(now_s), autoLevels=False, levels=(0.0, 1.0))
        self.heat.setRect(QtCore.QRectF(-self.span_s, -0.5, self.span_s, len(self.classes)))
        if self._times:
            ago = np.fromiter(self._times, dtype=np.float64, count=len(self._times)) - now_s
            stable = np.fromiter(self._stable, dtype=np.int64, count=len(self._stable))
            truth = np.fromiter(self._truth, dtype=np.int64, count=len(self._truth))
            self.dots.setData(ago[stable >= 0], stable[stable >= 0])
            self.truth_rings.setData(ago[truth >= 0], truth[truth >= 0])
        self.gap_marks.refresh(now_s, top=-0.5)
        self.setXRange(-self.span_s, 0.0, padding=0.01)


class RollingPlot(pg.PlotWidget):
    """Named curves over the last ``span_s`` seconds (x = seconds ago)."""

    def __init__(self, title: str, units: str, curves: dict[str, str], span_s: float = 30.0,
                 capacity: int = 2048, parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.span_s = span_s
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self.setMenuEnabled(False)
        self.setTitle(title, size="10pt")
        self.setLabel("left", units)
        # A grid item, not showGrid(): the axes' own grid lines made every repaint of the plot cost
        # ~10 ms more (python benchmarks/bench_gui.py), the grid item ~0.1 ms (a cached picture).
        grid = pg.GridItem(textPen=None)
        grid.setZValue(-10)
        self.addItem(grid)
        self.addLegend(offset=(5, 5), labelTextSize="8pt")
        self._data = {name: deque(maxlen=capacity) for name in curves}
        self._curves = {name: self.plot(name=name, pen=pg.mkPen(colour, width=2), connect="finite")
                        for name, colour in curves.items()}  # fmt: skip
        self.gap_marks = GapMarks(self, labelled=False)
        self.setXRange(-span_s, 0, padding=0)
        _plain_axes(self)

    def add(self, name: str, time_s: float, value: float) -> None:
        """Append a point (``time_s`` monotonic seconds) to curve ``name``."""
        self._data[name].append((time_s, value))

    def mark_gap(self, start_s: float, end_s: float, label: str = "") -> None:
        """Shade ``start_s``..``end_s`` (monotonic s) and break the curves there."""
        self.gap_marks.add(start_s, end_s, label)
        for points in self._data.values():
            if points and points[-1][0] <= end_s:
                points.append((max(points[-1][0], start_s), np.nan))  # connect="finite": no line across

    def refresh(self, now_s: float) -> None:
        self.gap_marks.refresh(now_s, top=0.0)
        for name, points in self._data.items():
            while points and points[0][0] < now_s - self.span_s:
                points.popleft()
            if points:
                data = np.asarray(points, dtype=np.float64)
                self._curves[name].setData(data[:, 0] - now_s, data[:, 1])
            else:
                self._curves[name].setData([], [])

    def latest(self, name: str) -> float | None:
        """The newest value of curve ``name`` (gap breaks skipped)."""
        for _, value in reversed(self._data[name]):
            if np.isfinite(value):
                return value
        return None


HELP_TEXT = """<h2>spikeformer-live — keys</h2>
<table cellspacing=6>
<tr><td><b>Space</b></td><td>pause / play (a file: its replay; a live source: the display)</td></tr>
<tr><td><b>F</b></td><td>freeze / unfreeze the display (the pipeline keeps running)</td></tr>
<tr><td><b>← / →</b></td><td>file: seek 5 s back / forward &nbsp; <b>Home</b>: to the start</td></tr>
<tr><td><b>[ / ]</b></td><td>file: slower / faster replay</td></tr>
<tr><td><b>L</b></td><td>file: loop on / off</td></tr>
<tr><td><b>R</b></td><td>start / stop recording events to AEDAT4</td></tr>
<tr><td><b>T</b></td><td>record labelled takes (guided session) / stop the session</td></tr>
<tr><td><b>S</b></td><td>save a screenshot (PNG)</td></tr>
<tr><td><b>+ / −</b></td><td>longer / shorter accumulation time</td></tr>
<tr><td><b>F1 / H</b></td><td>show / hide this help</td></tr>
<tr><td><b>Q</b></td><td>quit</td></tr>
</table>
<p>Orange: ON events (brighter) · Blue: OFF events (darker).<br>
The big label is the smoothed (stable) gesture; “no gesture” when nothing is confident; grey when<br>
no fresh prediction comes. Strip: heat = class probabilities, white dots = stable label,<br>
cyan rings = true gesture (simulator), shaded = gaps (no predictions, worker restarted).</p>"""


QT_MAX_SIZE = 16_777_215  # QWIDGETSIZE_MAX: no maximum


class Overlay(QtWidgets.QLabel):
    """A translucent panel centred over its parent: the keyboard shortcuts (``HELP_TEXT``) or a
    message such as why a stage failed (``show_message``)."""

    def __init__(self, parent: QtWidgets.QWidget, text: str = HELP_TEXT, border: str = "#ffb347") -> None:
        super().__init__(text, parent)
        self.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.setStyleSheet(
            "background-color: rgba(10, 10, 14, 225); color: #f0f0f0; font-size: 15pt;"
            f"border: 2px solid {border}; border-radius: 12px; padding: 20px;"
        )
        self.hide()

    def toggle(self) -> None:
        if self.isVisible():
            self.hide()
            return
        self.place()
        self.show()

    def place(self) -> None:
        """Size to the text (a wrapped message: at most 80 % of the parent's width) and centre on the parent."""
        parent = self.parentWidget()
        self.setMaximumWidth(max(200, int(parent.width() * 0.8)) if self.wordWrap() else QT_MAX_SIZE)
        self.adjustSize()
        self.move((parent.width() - self.width()) // 2, (parent.height() - self.height()) // 2)
        self.raise_()

    def show_message(self, title: str, text: str) -> None:
        """Show ``title`` (bold) over ``text`` (plain text, wrapped)."""
        self.setWordWrap(True)
        self.setText(f"<b>{html.escape(title)}</b><br>" + html.escape(text).replace("\n", "<br>"))
        self.place()
        self.show()


class ProgressRing(QtWidgets.QWidget):
    """A painted arc for the fraction of a guided session done (0..1), the percentage in its middle."""

    def __init__(self, parent: QtWidgets.QWidget | None = None, diameter: int = 76) -> None:
        super().__init__(parent)
        self.fraction = 0.0
        self.setFixedSize(diameter, diameter)

    def set_fraction(self, fraction: float) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if fraction != self.fraction:
            self.fraction = fraction
            self.update()

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 - Qt name
        width = max(4, self.width() // 10)
        box = QtCore.QRectF(self.rect()).adjusted(width, width, -width, -width)
        painter = QtGui.QPainter(self)
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        painter.setBrush(QtGui.QColor(10, 10, 14, 170))
        painter.setPen(QtGui.QPen(QtGui.QColor(70, 70, 80), width))
        painter.drawEllipse(box)
        pen = QtGui.QPen(QtGui.QColor("#ffb347"), width)
        pen.setCapStyle(QtCore.Qt.PenCapStyle.RoundCap)
        painter.setPen(pen)
        painter.drawArc(box, 90 * 16, -round(self.fraction * 360 * 16))  # from 12 o'clock, clockwise
        painter.setPen(QtGui.QColor("#f0f0f0"))
        font = painter.font()
        font.setPointSize(max(7, self.height() // 7))
        font.setBold(True)
        painter.setFont(font)
        painter.drawText(self.rect(), QtCore.Qt.AlignmentFlag.AlignCenter, f"{self.fraction:.0%}")
        painter.end()


PROMPT_COLOURS = {"countdown": "#ffb347", "recording": "#ff4d4d", "waiting": "#c8c8d0", "pause": "#c8c8d0",
                  "done": "#7ddc7d"}  # fmt: skip


class PromptOverlay(QtWidgets.QWidget):
    """A guided session's prompt over the event view: big text ("perform wave in 3"), a line under
    it (which take, which split) and a ``ProgressRing`` in the corner. It covers its parent, follows
    its size and lets the mouse through; the events stay visible around the text."""

    def __init__(self, parent: QtWidgets.QWidget) -> None:
        super().__init__(parent)
        self.setAttribute(QtCore.Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.title = QtWidgets.QLabel("")
        self.title.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.title.setWordWrap(True)
        self.detail = QtWidgets.QLabel("")
        self.detail.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.detail.setStyleSheet("background-color: rgba(10, 10, 14, 170); color: #e8e8e8; font-size: 14pt;"
                                  "border-radius: 8px; padding: 4px 14px;")  # fmt: skip
        self.ring = ProgressRing()
        corner = QtWidgets.QHBoxLayout()
        corner.addStretch(1)
        corner.addWidget(self.ring)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 16)
        layout.addLayout(corner)
        layout.addStretch(1)
        layout.addWidget(self.title, 0, QtCore.Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(self.detail, 0, QtCore.Qt.AlignmentFlag.AlignHCenter)
        layout.addStretch(2)
        self.phase = ""
        parent.installEventFilter(self)
        self.setGeometry(parent.rect())
        self.hide()

    def show_prompt(self, text: str, detail: str = "", phase: str = "countdown") -> None:
        """Show ``text`` big, in the colour of ``phase`` (a key of ``PROMPT_COLOURS``), and ``detail`` under it."""
        self.phase = phase
        colour = PROMPT_COLOURS.get(phase, "#e8e8e8")
        self.title.setStyleSheet(f"background-color: rgba(10, 10, 14, 185); color: {colour}; font-size: 38pt;"
                                 "font-weight: bold; border-radius: 14px; padding: 10px 28px;")  # fmt: skip
        self.title.setText(text)
        self.detail.setText(detail)
        self.detail.setVisible(bool(detail))
        self.setGeometry(self.parentWidget().rect())
        self.show()
        self.raise_()

    def set_progress(self, fraction: float) -> None:
        self.ring.set_fraction(fraction)

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802 - Qt name
        if watched is self.parentWidget() and event.type() == QtCore.QEvent.Type.Resize:
            self.setGeometry(self.parentWidget().rect())
        return False


class RateMeter(QtCore.QObject):
    """Counts ticks and emits ``rate`` (per second) about once a second."""

    rate = QtCore.Signal(float)

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._count = 0
        self._since = time.monotonic()

    def tick(self) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._since >= 1.0:
            self.rate.emit(self._count / (now - self._since))
            self._count, self._since = 0, now


def dark_palette() -> QtGui.QPalette:
    """A dark palette matching the plots' black background."""
    palette = QtGui.QPalette()
    role = QtGui.QPalette.ColorRole
    for name, colour in (
        (role.Window, "#202026"), (role.WindowText, "#e8e8e8"), (role.Base, "#16161a"),
        (role.AlternateBase, "#26262c"), (role.Text, "#e8e8e8"), (role.Button, "#2c2c33"),
        (role.ButtonText, "#e8e8e8"), (role.Highlight, "#ffb347"), (role.HighlightedText, "#000000"),
        (role.ToolTipBase, "#2c2c33"), (role.ToolTipText, "#e8e8e8"),
    ):  # fmt: skip
        palette.setColor(name, QtGui.QColor(colour))
    return palette
