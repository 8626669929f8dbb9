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
import sys
import time
from collections import deque

import numpy as np
import PySide6
from numba import njit
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

from stream.classes import GESTURE_CLASSES, NO_GESTURE
from stream.events import SensorSize, check_events

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


@njit(cache=True, nogil=True)
def _add_counts(counts, x, y, p, sign):  # pragma: no cover - compiled
    """counts[p, y, x] += sign for every event (coordinates checked by the transport)."""
    for i in range(x.shape[0]):
        counts[p[i], y[i], x[i]] += sign


class EventAccumulator:
    """ON/OFF event counts per pixel over the last ``accumulation_us`` of stream time.

    Args:
        sensor_size: width, height in pixels.
        accumulation_us: time window shown, microseconds (1 ms .. 2 s).
        max_events: most events kept for the window (older ones leave early; bounds memory).

    ``add(events)`` takes time-ordered event packets; ``counts`` is int32 ``[2, H, W]`` (channel =
    polarity). A packet earlier than the newest time seen (a restarted source) clears the image.
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
        self.newest_us: int | None = None
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

    def add(self, events: np.ndarray) -> None:
        """Add a time-ordered packet of ``EVENT_DTYPE`` events on this sensor."""
        check_events(events)
        if not len(events):
            return
        if self.newest_us is not None and int(events["t"][0]) < self.newest_us:
            self.clear()  # time went back: a new stream
        _add_counts(self.counts, events["x"], events["y"], events["p"], 1)
        self._chunks.append(events)
        self._held += len(events)
        self.newest_us = int(events["t"][-1])
        self._expire()

    def _expire(self) -> None:
        """Subtract the events older than the window or beyond ``max_events``."""
        if self.newest_us is None:
            return
        cutoff = self.newest_us - self.accumulation_us
        while self._chunks:
            oldest = self._chunks[0]
            excess = self._held - self.max_events
            keep_from = max(int(np.searchsorted(oldest["t"], cutoff, side="right")), excess)
            if keep_from <= 0:
                return
            gone = oldest[:keep_from]
            _add_counts(self.counts, gone["x"], gone["y"], gone["p"], -1)
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
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.label)
        layout.addWidget(self.detail)
        self.show_stable(-1, NO_GESTURE, 0.0, None)

    def show_stable(self, index: int, name: str, confidence: float, top: tuple[str, float] | None) -> None:
        """Show the stable label (``index`` -1: no gesture) and, below, the raw top class."""
        if index < 0:
            self.label.setText(NO_GESTURE)
            self.label.setStyleSheet("color: #8a8a93;")
        else:
            self.label.setText(name)
            self.label.setStyleSheet("color: #ffb347;")
        parts = [f"confidence {confidence * 100:.0f} %"] if index >= 0 else []
        if top is not None:
            parts.append(f"this window: {top[0]} {top[1] * 100:.0f} %")
        self.detail.setText("   ·   ".join(parts) if parts else "")


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

    def show_probabilities(self, probabilities: np.ndarray, highlight: int | None = None) -> None:
        """Bar lengths = ``probabilities`` (one per class); ``highlight`` drawn in the accent colour."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (len(self.classes),):
            return  # a model with other classes: nothing sensible to draw
        brushes = [self._top_brush if i == highlight else self._base_brush for i in range(len(self.classes))]
        self.bars.setOpts(width=probabilities, brushes=brushes)


class PredictionStrip(pg.PlotWidget):
    """Recent predictions over time: class probabilities as a heat map (one row per class, newest
    on the right) and the stable label as white dots."""

    def __init__(self, classes: tuple[str, ...] = GESTURE_CLASSES, history: int = 150,
                 parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.classes = tuple(classes)
        self.history = history
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
        self.dots = pg.ScatterPlotItem(size=5, pen=None, brush=pg.mkBrush(255, 255, 255))
        self.addItem(self.dots)
        self._probabilities = np.zeros((len(self.classes), history), dtype=np.float32)
        self._stable = np.full(history, -1, dtype=np.int64)
        self._times = np.full(history, np.nan)
        self.setYRange(-0.5, len(self.classes) - 0.5, padding=0)
        self.setXRange(-10.0, 0.0, padding=0.01)
        _plain_axes(self)

    def add(self, time_s: float, probabilities: np.ndarray, stable_index: int) -> None:
        """Append one prediction at ``time_s`` (monotonic seconds)."""
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if probabilities.shape != (len(self.classes),):
            return
        self._probabilities = np.roll(self._probabilities, -1, axis=1)
        self._probabilities[:, -1] = probabilities
        self._stable = np.roll(self._stable, -1)
        self._stable[-1] = stable_index
        self._times = np.roll(self._times, -1)
        self._times[-1] = time_s

    def refresh(self, now_s: float) -> None:
        """Redraw with x = seconds before ``now_s``."""
        known = np.isfinite(self._times)
        if not known.any():
            return
        first = int(np.argmax(known))
        ago = self._times[known] - now_s
        span = max(float(ago[-1] - ago[0]), 1e-3)
        step = span / max(len(ago) - 1, 1)
        self.heat.setImage(self._probabilities[:, first:], autoLevels=False, levels=(0.0, 1.0))
        self.heat.setRect(QtCore.QRectF(ago[0] - step / 2, -0.5, span + step, len(self.classes)))
        stable = self._stable[first:]
        shown = stable >= 0
        self.dots.setData(ago[shown], stable[shown])
        self.setXRange(min(ago[0], ago[-1] - 5.0), max(ago[-1], 0.0), padding=0.01)


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
        self.showGrid(x=True, y=True, alpha=0.2)
        self.addLegend(offset=(5, 5), labelTextSize="8pt")
        self._data = {name: deque(maxlen=capacity) for name in curves}
        self._curves = {name: self.plot(name=name, pen=pg.mkPen(colour, width=2)) for name, colour in curves.items()}
        self.setXRange(-span_s, 0, padding=0)
        _plain_axes(self)

    def add(self, name: str, time_s: float, value: float) -> None:
        """Append a point (``time_s`` monotonic seconds) to curve ``name``."""
        self._data[name].append((time_s, value))

    def refresh(self, now_s: float) -> None:
        for name, points in self._data.items():
            while points and points[0][0] < now_s - self.span_s:
                points.popleft()
            if points:
                data = np.asarray(points, dtype=np.float64)
                self._curves[name].setData(data[:, 0] - now_s, data[:, 1])
            else:
                self._curves[name].setData([], [])

    def latest(self, name: str) -> float | None:
        points = self._data[name]
        return points[-1][1] if points else None


HELP_TEXT = """<h2>spikeformer-live — keys</h2>
<table cellspacing=6>
<tr><td><b>Space</b></td><td>pause / resume the display</td></tr>
<tr><td><b>R</b></td><td>start / stop recording events to AEDAT4</td></tr>
<tr><td><b>S</b></td><td>save a screenshot (PNG)</td></tr>
<tr><td><b>+ / −</b></td><td>longer / shorter accumulation time</td></tr>
<tr><td><b>F1 / H</b></td><td>show / hide this help</td></tr>
<tr><td><b>Q</b></td><td>quit</td></tr>
</table>
<p>Orange: ON events (brighter) · Blue: OFF events (darker).<br>
The big label is the smoothed (stable) gesture; “no gesture” when nothing is confident.</p>"""


class HelpOverlay(QtWidgets.QLabel):
    """A translucent panel over its parent listing the keyboard shortcuts."""

    def __init__(self, parent: QtWidgets.QWidget) -> None:
        super().__init__(HELP_TEXT, parent)
        self.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.setStyleSheet(
            "background-color: rgba(10, 10, 14, 225); color: #f0f0f0; font-size: 15pt;"
            "border: 2px solid #ffb347; border-radius: 12px; padding: 20px;"
        )
        self.hide()

    def toggle(self) -> None:
        if self.isVisible():
            self.hide()
            return
        self.adjustSize()
        parent = self.parentWidget()
        self.move((parent.width() - self.width()) // 2, (parent.height() - self.height()) // 2)
        self.raise_()
        self.show()


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
