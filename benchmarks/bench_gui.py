"""Render time of the GUI's event view per update at 1 M events/s (30 updates/s, DAVIS346 sensor).

    python benchmarks/bench_gui.py [--rate 1e6] [--fps 30] [--updates 150]

Each update takes the events of one frame interval (rate / fps events), updates the image of the
last ``accumulation`` ms and hands it to pyqtgraph, which converts it to a QImage (``render()``):
the work the GUI's fast timer does. Peers measured in the same run on the same events:

* naive: keeps the window's events, rebuilds the counts from all of them every frame
  (``np.add.at``), composes a float RGB image and lets pyqtgraph auto-level it;
* per-event loop: the same with a Python loop over events (measured on a few updates only).

Qt runs offscreen. Prints a markdown table: ms per update (median, p90) and ratio vs ours.
A second table: the slow timer's panels (prediction strip on its time grid with 400 predictions,
latency and rate plots), redrawn 5 times a second.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyqtgraph as pg  # noqa: E402
from PySide6 import QtWidgets  # noqa: E402

from gui.widgets import EventAccumulator, EventView, PredictionStrip, RollingPlot  # noqa: E402  (PySide6 guard first)
from stream.events import SensorSize, make_events  # noqa: E402

SENSOR = SensorSize(346, 260)


def stream(rate: float, fps: float, updates: int, seed: int = 0) -> list[np.ndarray]:
    """Packets of 1/fps s of uniformly random events at ``rate`` events/s."""
    rng = np.random.default_rng(seed)
    per_update = int(rate / fps)
    interval_us = int(1e6 / fps)
    packets = []
    for k in range(updates):
        t = np.sort(rng.integers(k * interval_us, (k + 1) * interval_us, per_update))
        packets.append(make_events(t, rng.integers(0, SENSOR.width, per_update),
                                   rng.integers(0, SENSOR.height, per_update), rng.integers(0, 2, per_update)))  # fmt: skip
    return packets


class Ours:
    def __init__(self, accumulation_us: int) -> None:
        self.accumulator = EventAccumulator(SENSOR, accumulation_us)
        self.view = EventView()

    def update(self, packet: np.ndarray) -> None:
        self.accumulator.add(packet)
        self.view.show_counts(self.accumulator.counts, 4)
        self.view.image.render()


class Naive:
    def __init__(self, accumulation_us: int, per_event_loop: bool = False) -> None:
        self.accumulation_us = accumulation_us
        self.per_event_loop = per_event_loop
        self.kept: list[np.ndarray] = []
        self.image = pg.ImageItem(axisOrder="row-major")

    def update(self, packet: np.ndarray) -> None:
        self.kept.append(packet)
        events = np.concatenate(self.kept)
        events = events[events["t"] > int(packet["t"][-1]) - self.accumulation_us]
        self.kept = [events]
        counts = np.zeros((2, SENSOR.height, SENSOR.width))
        if self.per_event_loop:
            for x, y, p in zip(events["x"].tolist(), events["y"].tolist(), events["p"].tolist()):
                counts[p, y, x] += 1
        else:
            np.add.at(counts, (events["p"].astype(np.intp), events["y"].astype(np.intp), events["x"].astype(np.intp)), 1)
        off, on = np.clip(counts / 4.0, 0, 1)
        rgb = 18 + on[..., None] * np.array([255, 150, 20]) + off[..., None] * np.array([40, 150, 255])
        self.image.setImage(np.clip(rgb, 0, 255))  # auto levels
        self.image.render()


def measure(renderer, packets: list[np.ndarray], warmup: int = 5) -> np.ndarray:
    for packet in packets[:warmup]:
        renderer.update(packet)
    times = []
    for packet in packets[warmup:]:
        start = time.perf_counter()
        renderer.update(packet)
        times.append((time.perf_counter() - start) * 1000.0)
    return np.asarray(times)


def measure_panels(updates: int) -> np.ndarray:
    """ms per slow-timer redraw: strip (400 predictions at 20/s) + latency and rate plots, rendered."""
    rng = np.random.default_rng(1)
    strip = PredictionStrip()
    latency = RollingPlot("latency", "ms", {"compute": "#ffb347", "end to end": "#5ab0ff"})
    rate = RollingPlot("event rate", "M events/s", {"source": "#7ddc7d", "shown": "#c8c8c8"})
    for widget in (strip, latency, rate):
        widget.resize(640, 220)
    now = 1000.0
    for k in range(400):
        t = now - 20.0 + k * 0.05
        strip.add(t, rng.dirichlet(np.ones(11)), int(rng.integers(-1, 11)), int(rng.integers(-1, 11)))
        latency.add("compute", t, 10.0)
        latency.add("end to end", t, 12.0)
        rate.add("source", t, 1.0)
    strip.mark_gap(now - 8.0, now - 6.0, "worker restarted")
    times = []
    for k in range(updates):
        start = time.perf_counter()
        for widget in (strip, latency, rate):
            widget.refresh(now + k * 0.2)
            widget.grab()  # render
        times.append((time.perf_counter() - start) * 1000.0)
    return np.asarray(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1e6, help="events per second")
    parser.add_argument("--fps", type=float, default=30.0, help="updates per second")
    parser.add_argument("--updates", type=int, default=150, help="updates measured per renderer")
    args = parser.parse_args()
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])  # noqa: F841 - Qt needs it
    packets = stream(args.rate, args.fps, args.updates + 5)
    budget_ms = 1000.0 / args.fps
    print(f"event view update at {args.rate / 1e6:g} M events/s, {args.fps:g} updates/s "
          f"({len(packets[0])} events per update), sensor {SENSOR}, budget {budget_ms:.1f} ms per update\n")  # fmt: skip
    print("| renderer | accumulation | ms/update median | p90 | vs ours |")
    print("|---|---|---|---|---|")
    for accumulation_ms in (33, 200):
        accumulation_us = accumulation_ms * 1000
        rows = [("ours (incremental Numba + LUT)", measure(Ours(accumulation_us), packets)),
                ("naive (np.add.at rebuild + RGB + auto levels)", measure(Naive(accumulation_us), packets))]  # fmt: skip
        if accumulation_ms == 33:
            rows.append(("per-event Python loop", measure(Naive(accumulation_us, per_event_loop=True), packets[:12])))
        ours = float(np.median(rows[0][1]))
        for name, times in rows:
            median = float(np.median(times))
            print(f"| {name} | {accumulation_ms} ms | {median:.2f} | {np.percentile(times, 90):.2f} | {median / ours:.1f}x |")
    panels = measure_panels(40)
    print("\n| slow timer (5 Hz): strip + 2 plots, rendered | ms/update median | p90 |")
    print("|---|---|---|")
    print(f"| 400 predictions, 1 gap | {np.median(panels):.2f} | {np.percentile(panels, 90):.2f} |")


if __name__ == "__main__":
    main()
