"""GUI tests: the event accumulator (pure), the window against real ZeroMQ publishers in this
process, and the window against the real pipeline (source + worker child processes, simulator).

Qt runs offscreen (conftest sets QT_QPA_PLATFORM). Waits are on real conditions with timeouts
(``qtbot.waitUntil``), never sleeps.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from gui.widgets import EVENT_LUT, LEVELS, EventAccumulator, colour_index  # first: installs the PySide6 guard
from gui.app import MainWindow  # noqa: E402
from helpers import TEST_BACKEND, random_events, start_source, stop_process
from inference import messages
from inference.headless import window_accuracy, window_truth
from inference.smoothing import StableLabel
from stream.classes import GESTURE_CLASSES, NO_GESTURE
from stream.events import EVENT_DTYPE, SensorSize
from stream.formats import read_events
from stream.transport.sockets import Publisher
from stream.transport.wire import Kind, now_us
from training import BUILTIN_CHECKPOINT

SENSOR = SensorSize(64, 48)


def brute_counts(events: np.ndarray, sensor: SensorSize, since_us: int) -> np.ndarray:
    """Reference: counts of the events with t > since_us (np.add.at, no incremental state)."""
    counts = np.zeros((2, sensor.height, sensor.width), dtype=np.int64)
    kept = events[events["t"] > since_us]
    np.add.at(counts, (kept["p"].astype(np.intp), kept["y"].astype(np.intp), kept["x"].astype(np.intp)), 1)
    return counts


# --- accumulator and colouring (no Qt) ------------------------------------------------------


@pytest.mark.parametrize("accumulation_us", [1_000, 33_000, 250_000])
def test_accumulator_matches_brute_force_over_many_packets(accumulation_us: int) -> None:
    events = random_events(SENSOR, 0, 1_000_000, count=60_000)
    accumulator = EventAccumulator(SENSOR, accumulation_us)
    end = 0
    for packet in np.array_split(events, 97):
        accumulator.add(packet)
        end += len(packet)
        newest = int(packet["t"][-1])
        np.testing.assert_array_equal(accumulator.counts, brute_counts(events[:end], SENSOR, newest - accumulation_us))
    assert accumulator.events_held == int((events["t"] > int(events["t"][-1]) - accumulation_us).sum())


def test_accumulator_shorter_window_applies_at_once_and_time_going_back_clears() -> None:
    events = random_events(SENSOR, 0, 500_000, count=10_000, seed=1)
    accumulator = EventAccumulator(SENSOR, 400_000)
    accumulator.add(events)
    accumulator.set_accumulation(10_000)
    np.testing.assert_array_equal(accumulator.counts, brute_counts(events, SENSOR, int(events["t"][-1]) - 10_000))
    restarted = random_events(SENSOR, 0, 1_000, count=100, seed=2)
    accumulator.add(restarted)
    np.testing.assert_array_equal(accumulator.counts, brute_counts(restarted, SENSOR, -1))


def test_accumulator_bounds_memory_and_rejects_bad_input() -> None:
    accumulator = EventAccumulator(SENSOR, 2_000_000, max_events=1_000)
    accumulator.add(random_events(SENSOR, 0, 1_000, count=5_000, seed=3))
    assert accumulator.events_held == 1_000 and int(accumulator.counts.sum()) == 1_000
    with pytest.raises(ValueError, match="accumulation"):
        accumulator.set_accumulation(10)
    with pytest.raises(ValueError, match="EVENT_DTYPE"):
        accumulator.add(np.zeros(3, dtype=np.int64))


def test_accumulator_advance_moves_the_window_and_a_late_packet_pulls_it_back() -> None:
    events = random_events(SENSOR, 0, 100_000, count=5_000, seed=4)
    accumulator = EventAccumulator(SENSOR, 50_000)
    accumulator.add(events)
    accumulator.advance(120_000)  # a clock: 20 ms of silence after the last event
    np.testing.assert_array_equal(accumulator.counts, brute_counts(events, SENSOR, 120_000 - 50_000))
    accumulator.advance(110_000)  # a clock never goes back: ignored
    assert accumulator.time_us == 120_000
    accumulator.advance(1_000_000)
    assert accumulator.events_held == 0 and int(accumulator.counts.sum()) == 0
    late = random_events(SENSOR, 130_000, 140_000, count=100, seed=5)  # before the estimated time, after the events
    accumulator.add(late)
    assert accumulator.time_us == int(late["t"][-1]) and accumulator.events_held == 100  # not cleared, not expired


def test_colour_index_levels_and_lut() -> None:
    counts = np.zeros((2, 1, 4), dtype=np.int32)
    counts[1, 0] = [0, 1, 4, 100]  # ON
    counts[0, 0] = [0, 4, 0, 2]  # OFF
    index = colour_index(counts, full_scale=4)
    on, off = np.divmod(index[0].astype(int), LEVELS)
    assert on.tolist() == [0, 3, 15, 15] and off.tolist() == [0, 15, 0, 7]
    assert EVENT_LUT.shape == (LEVELS * LEVELS, 3) and EVENT_LUT.dtype == np.uint8
    assert EVENT_LUT[15 * LEVELS, 0] > EVENT_LUT[15 * LEVELS, 2]  # ON is orange
    assert EVENT_LUT[15, 2] > EVENT_LUT[15, 0]  # OFF is blue
    with pytest.raises(ValueError, match="full_scale"):
        colour_index(counts, 0)


# --- the window against real ZeroMQ publishers in this process ------------------------------


WORKER_ID = "w0rk3r00"


def prediction(seq: int, index: int, confidence: float = 0.9, stable: bool = True, worker_id: str = WORKER_ID) -> dict:
    """A worker's prediction message (``inference.messages.prediction``): class ``index`` at
    ``confidence``, stable or not, sent 2 ms ago."""
    probabilities = np.full(len(GESTURE_CLASSES), (1.0 - confidence) / (len(GESTURE_CLASSES) - 1))
    probabilities[index] = confidence
    sent = now_us() - 2_000
    label = StableLabel(index, GESTURE_CLASSES[index], confidence) if stable else StableLabel(-1, NO_GESTURE, 0.0)
    return messages.prediction(
        worker_id=worker_id, seq=seq, classes=list(GESTURE_CLASSES), probabilities=probabilities, class_index=index,
        stable=label, window={"start_us": 0, "end_us": 1, "stride_us": 50_000, "events": 10},
        timing={"source_send_us": sent, "recv_us": sent + 500, "compute_ms": 1.5},
        counters={"windows_skipped": 7, "events_dropped": 3}, backend="test-backend", sensor=list(SENSOR),
    )  # fmt: skip


@pytest.fixture
def publishers(tmp_path: Path):
    """A real worker-side and source-side publisher (XPUB over ipc)."""
    with Publisher(f"ipc://{tmp_path}/predictions") as worker, Publisher(f"ipc://{tmp_path}/events") as source:
        yield worker, source


@pytest.fixture
def window(qtbot, publishers, tmp_path: Path):
    worker, source = publishers
    main = MainWindow(worker.endpoint, source.endpoint, source_spec="sim", model_name="unit",
                      stall_after_s=0.6, reconnect_after_s=60.0, output_dir=tmp_path)  # fmt: skip
    qtbot.addWidget(main)
    main.show()
    assert worker.wait_for_subscribers(1, Kind.PREDICTION.topic, timeout_s=5)
    assert source.wait_for_subscribers(1, b"events", timeout_s=5)
    yield main
    main.close()


def feed(source: Publisher, t0: int, count: int = 2_000, seed: int = 0) -> np.ndarray:
    events = random_events(SENSOR, t0, t0 + 20_000, count=count, seed=seed)
    source.publish_events(events, SENSOR)
    return events


def test_window_shows_events_predictions_and_status(qtbot, window: MainWindow, publishers) -> None:
    worker, source = publishers
    feed(source, 0)
    qtbot.waitUntil(lambda: window.accumulator is not None and window.accumulator.events_held == 2_000, timeout=5000)
    worker.publish_json(Kind.PREDICTION, prediction(0, 3))
    qtbot.waitUntil(lambda: window.prediction_panel.label.text() == GESTURE_CLASSES[3], timeout=5000)
    assert "90 %" in window.prediction_panel.detail.text()
    worker.publish_json(Kind.PREDICTION, prediction(1, 5, confidence=0.3, stable=False))
    qtbot.waitUntil(lambda: window.prediction_panel.label.text() == NO_GESTURE, timeout=5000)
    assert window.bars.bars.opts["width"][5] == pytest.approx(0.3)
    qtbot.waitUntil(lambda: "windows skipped: 7" in window.status_label.text(), timeout=5000)
    assert "backend: test-backend" in window.status_label.text() and "model: unit" in window.status_label.text()
    assert window.latency_plot.latest("compute") == pytest.approx(1.5)
    assert window.latency_plot.latest("end to end") >= 2.0  # ms since the (back-dated) source send
    image = window.event_view.image.image
    assert image.shape == (SENSOR.height, SENSOR.width) and int(image.max()) > 0
    noise = {"window_us": 271, "noise_floor_hz": 7.5}  # the worker's noise filter in a noisy room
    worker.publish_status({"type": "stats", "worker_id": WORKER_ID, "counters": {}, "background_activity": noise})
    qtbot.waitUntil(lambda: "BA filter 0.271 ms (noise 7.5 Hz/px)" in window.status_label.text(), timeout=5000)
    worker.publish_status({"type": "stats", "worker_id": WORKER_ID, "counters": {}, "background_activity": "bad"})
    qtbot.waitUntil(lambda: "BA filter" not in window.status_label.text(), timeout=5000)


def test_an_input_unlike_the_training_data_is_said_under_the_gesture(qtbot, window: MainWindow, publishers,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """The worker's status says the recent windows fire on a quarter of the pixels its training data
    fired on: the window says so under the gesture, with what to do; back in range, the line goes."""
    worker, _ = publishers
    worker.publish_json(Kind.PREDICTION, prediction(0, 10))
    qtbot.waitUntil(lambda: window.prediction_panel.label.text() == GESTURE_CLASSES[10], timeout=5000)
    sparse = {"median": 0.005, "windows": 40, "training_median": 0.02, "ratio": 1.0, "verdict": "ok"}  # lies: worked out again
    worker.publish_status({"type": "stats", "worker_id": WORKER_ID, "counters": {}, "input_coverage": sparse})
    warning = window.prediction_panel.warning
    qtbot.waitUntil(lambda: not warning.isHidden(), timeout=5000)
    assert warning.text().startswith("input coverage 0.25x training: sparse (gestures may read as 'other gestures'")
    qtbot.waitUntil(lambda: "input coverage 0.25x training" in window.status_label.text(), timeout=5000)
    assert window.save_screenshot(tmp_path / "sparse-input.png") is not None
    worker.publish_status({"type": "stats", "worker_id": WORKER_ID, "counters": {},
                           "input_coverage": {**sparse, "median": 0.03}})  # fmt: skip
    qtbot.waitUntil(lambda: warning.isHidden(), timeout=5000)
    worker.publish_status({"type": "stats", "worker_id": WORKER_ID, "counters": {}, "input_coverage": "sparse"})
    qtbot.waitUntil(lambda: "input coverage" not in window.status_label.text(), timeout=5000)


def test_space_freezes_the_display_of_a_live_source_and_thaws_it(qtbot, window: MainWindow, publishers) -> None:
    from PySide6 import QtCore

    worker, _ = publishers
    qtbot.keyClick(window, QtCore.Qt.Key.Key_Space)  # no file control: Space freezes the display
    assert window.frozen
    worker.publish_json(Kind.PREDICTION, prediction(0, 2))
    qtbot.waitUntil(lambda: window.predictions_seen == 1, timeout=5000)
    assert window.prediction_panel.label.text() == NO_GESTURE  # frozen while paused
    qtbot.keyClick(window, QtCore.Qt.Key.Key_Space)
    assert not window.frozen
    worker.publish_json(Kind.PREDICTION, prediction(1, 2))
    qtbot.waitUntil(lambda: window.prediction_panel.label.text() == GESTURE_CLASSES[2], timeout=5000)


def test_plus_and_minus_change_the_accumulation_time(qtbot, window: MainWindow) -> None:
    from PySide6 import QtCore

    before = window.accumulation_us
    qtbot.keyClick(window, QtCore.Qt.Key.Key_Plus)
    assert window.accumulation_us > before and window.accumulation_box.value() == window.accumulation_us // 1000
    qtbot.keyClick(window, QtCore.Qt.Key.Key_Minus)
    qtbot.keyClick(window, QtCore.Qt.Key.Key_Minus)
    assert window.accumulation_us < before


def test_help_floats_over_the_window_and_closes(qtbot, window: MainWindow) -> None:
    from PySide6 import QtCore

    splitter = window.centralWidget()
    panes = [splitter.widget(i).width() for i in range(splitter.count())]
    qtbot.keyClick(window, QtCore.Qt.Key.Key_F1)
    assert window.help_overlay.isVisible()
    # Floats over the window: the splitter keeps its two panes and their widths (it once became a third pane).
    assert splitter.count() == 2 and [splitter.widget(i).width() for i in range(2)] == panes
    assert window.rect().contains(window.help_overlay.geometry())
    qtbot.keyClick(window, QtCore.Qt.Key.Key_H)
    assert not window.help_overlay.isVisible()


def test_record_key_writes_a_readable_aedat4_file(qtbot, window: MainWindow, publishers, tmp_path: Path) -> None:
    from PySide6 import QtCore

    _, source = publishers
    feed(source, 0, seed=1)
    qtbot.waitUntil(lambda: window.sensor is not None, timeout=5000)
    qtbot.keyClick(window, QtCore.Qt.Key.Key_R)
    path = window.receiver.recording
    assert path is not None and path.parent == tmp_path
    sent = [feed(source, 100_000 + 30_000 * k, seed=10 + k) for k in range(5)]
    qtbot.waitUntil(lambda: window.receiver.events_received >= 12_000, timeout=5000)
    qtbot.keyClick(window, QtCore.Qt.Key.Key_R)
    assert window.receiver.recording is None
    recorded, sensor = read_events(path)
    assert sensor == SENSOR
    expected = np.concatenate(sent, dtype=EVENT_DTYPE)
    np.testing.assert_array_equal(recorded, expected)


def test_screenshot_is_saved_and_not_blank(qtbot, window: MainWindow, publishers, tmp_path: Path) -> None:
    from PySide6 import QtCore, QtGui

    worker, source = publishers
    feed(source, 0, count=5_000)
    worker.publish_json(Kind.PREDICTION, prediction(0, 8))
    qtbot.waitUntil(lambda: window.prediction_panel.label.text() == GESTURE_CLASSES[8], timeout=5000)
    qtbot.keyClick(window, QtCore.Qt.Key.Key_S)
    path = window.last_screenshot
    assert path is not None and path.is_file()
    image = QtGui.QImage(str(path)).convertToFormat(QtGui.QImage.Format.Format_RGB888)
    assert image.width() >= window.width() - 1 and image.height() >= window.height() - 1
    pixels = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
    assert pixels.std() > 10.0  # not a blank window


def test_stall_is_shown_and_clears_when_data_comes_back(qtbot, window: MainWindow, publishers) -> None:
    worker, _ = publishers
    worker.publish_json(Kind.PREDICTION, prediction(0, 1))
    qtbot.waitUntil(lambda: window.predictions_seen == 1, timeout=5000)
    qtbot.waitUntil(lambda: "pipeline stalled" in window.state_label.text(), timeout=5000)
    assert window.state_label.text().startswith("no data for ")
    worker.publish_json(Kind.PREDICTION, prediction(1, 1))
    qtbot.waitUntil(lambda: "stalled" not in window.state_label.text(), timeout=5000)


def test_gui_drops_oldest_events_instead_of_building_a_backlog(tmp_path: Path) -> None:
    from gui.app import PipelineReceiver

    with Publisher(f"ipc://{tmp_path}/p") as worker, Publisher(f"ipc://{tmp_path}/e") as source:
        with PipelineReceiver(worker.endpoint, source.endpoint, max_queued_events=5_000) as receiver:
            assert source.wait_for_subscribers(1, b"events", timeout_s=5)
            for k in range(10):
                source.publish_events(random_events(SENSOR, k * 10_000, k * 10_000 + 5_000, count=2_000, seed=k), SENSOR)
            deadline = now_us() + 5_000_000
            while receiver.events_received < 20_000 and now_us() < deadline:
                worker.socket.poll(10)  # just a bounded wait for the receiver thread
            received = receiver.take()
    assert receiver.events_received == 20_000
    queued = sum(len(events) for events, _ in received.packets)
    assert queued <= 5_000 and queued + receiver.events_dropped == 20_000
    assert int(received.packets[-1][0]["t"][0]) >= 90_000  # the newest packet is kept


def test_window_with_keys_receives_over_curve_and_a_wrong_key_is_named(qtbot, tmp_path: Path) -> None:
    """Worker- and source-side publishers as the stages open them with --curve-keys (tcp): the
    window with the pipeline's key gets predictions and events; one with a key the publishers do
    not know gets nothing and says that the handshake was refused."""
    import shutil

    from stream.transport.keys import CurveConfig, generate_keys

    generate_keys(tmp_path / "pipeline", "pipeline")
    generate_keys(tmp_path / "stranger", "stranger")
    shutil.copy(tmp_path / "pipeline" / "pipeline.key", tmp_path / "stranger" / "pipeline.key")
    keys = CurveConfig.from_directory(tmp_path / "pipeline")
    stranger = CurveConfig.from_directory(tmp_path / "stranger", "stranger", server="pipeline")
    with Publisher("tcp://127.0.0.1:*", curve=keys) as worker, Publisher("tcp://127.0.0.1:*", curve=keys) as source:
        windows = {}
        for name, curve in (("trusted", keys), ("stranger", stranger)):
            windows[name] = MainWindow(worker.endpoint, source.endpoint, stall_after_s=0.6, reconnect_after_s=60.0,
                                       output_dir=tmp_path, curve=curve)  # fmt: skip
            qtbot.addWidget(windows[name])
        assert worker.wait_for_subscribers(1, Kind.PREDICTION.topic, timeout_s=5)
        assert source.wait_for_subscribers(1, b"events", timeout_s=5)
        try:
            trusted, outsider = windows["trusted"], windows["stranger"]
            qtbot.waitUntil(lambda: "refused in the CurveZMQ handshake" in outsider.state_label.text(), timeout=5000)
            worker.publish_json(Kind.PREDICTION, prediction(0, 2))
            feed(source, 0)
            qtbot.waitUntil(lambda: trusted.predictions_seen == 1 and trusted.receiver.events_received == 2_000,
                            timeout=5000)  # fmt: skip
            assert outsider.predictions_seen == 0 and outsider.receiver.events_received == 0
            assert trusted.receiver.handshake_failures == 0 and "refused" not in trusted.state_label.text()
            assert worker.subscriptions.get(Kind.PREDICTION.topic) == 1  # the stranger never subscribed
        finally:
            for window in windows.values():
                window.close()


def test_strip_and_bars_rows_line_up_with_the_class_labels(qtbot) -> None:
    """Every class k: the strip's heat band, dot and ring and the bar sit on the row labelled
    GESTURE_CLASSES[k] (an off-by-one anywhere fails)."""
    from PySide6 import QtCore

    from gui.widgets import PredictionStrip, ProbabilityBars

    strip, bars = PredictionStrip(span_s=5.0), ProbabilityBars()
    for widget in (strip, bars):
        qtbot.addWidget(widget)
        widget.resize(700, 330)
        widget.show()
    classes = len(GESTURE_CLASSES)
    assert strip.getAxis("left")._tickLevels[0] == list(enumerate(GESTURE_CLASSES))
    assert bars.getAxis("left")._tickLevels[0] == list(enumerate(GESTURE_CLASSES))
    start = 100.0
    for k in range(classes):  # class k for 0.4 s, one prediction every 50 ms
        for step in range(8):
            probabilities = np.zeros(classes)
            probabilities[k] = 1.0
            strip.add(start + 0.4 * k + 0.05 * step, probabilities, k, truth_index=k)
    now = start + 0.4 * classes
    strip.refresh(now)
    qtbot.wait(50)
    image = strip.grab().toImage()
    view = strip.getViewBox()
    for k in range(classes):
        x = -0.4 * (classes - k) + 0.2  # the middle of class k's stretch, seconds ago
        point = strip.mapFromScene(view.mapViewToScene(QtCore.QPointF(x, k)))
        column = [image.pixelColor(point.x(), y).lightness() for y in range(image.height())]
        bright = [y for y, value in enumerate(column) if value > 200]
        row_px = view.mapViewToScene(QtCore.QPointF(x, 1)).y() - view.mapViewToScene(QtCore.QPointF(x, 0)).y()
        assert bright and abs(np.mean(bright) - point.y()) < row_px / 4, (k, GESTURE_CLASSES[k])
    assert strip.dots.data["y"].tolist() == [k for k in range(classes) for _ in range(8)]
    assert strip.truth_rings.data["y"].tolist() == strip.dots.data["y"].tolist()
    for k in range(classes):
        probabilities = np.zeros(classes)
        probabilities[k] = 1.0
        bars.show_probabilities(probabilities, highlight=k)
        widths = bars.bars.opts["width"]
        assert int(np.argmax(widths)) == k and bars.bars.opts["y"][k] == k


def test_strip_shows_a_gap_where_predictions_stopped_and_marks_it(qtbot) -> None:
    from gui.widgets import PredictionStrip

    strip = PredictionStrip(span_s=10.0, bin_s=0.05, hold_s=0.2)
    qtbot.addWidget(strip)
    times = [*np.arange(0.0, 3.0, 0.05), *np.arange(6.0, 9.0, 0.05)]  # nothing from 3 s to 6 s
    for t in times:
        strip.add(t, np.full(len(GESTURE_CLASSES), 0.5), 0)
    strip.mark_gap(2.95, 6.0, "worker restarted")
    image = strip.heat_image(now_s=10.0)  # columns of 50 ms from 0 to 10 s
    filled = np.isfinite(image[0])
    assert filled[5:55].all() and filled[125:175].all()  # predictions held between them
    assert not filled[64:118].any()  # the gap stays empty (hold 0.2 s)
    strip.refresh(10.0)
    region = strip.gap_marks._regions[0]
    assert region.isVisible() and region.getRegion() == pytest.approx((-7.05, -4.0))
    assert strip.gap_marks._labels[0].textItem.toPlainText() == "worker restarted"


def test_silent_source_clock_moves_the_event_view_and_paused_is_shown(qtbot, window: MainWindow, publishers) -> None:
    worker, source = publishers
    worker.publish_json(Kind.PREDICTION, prediction(0, 1))
    clock = {"type": "clock", "time_us": 1_000_000, "paused": False}
    source.publish_status(clock)
    feed(source, 1_000_000, count=3_000)  # events at 1.00 .. 1.02 s, then silence
    qtbot.waitUntil(lambda: window.receiver.events_received == 3_000 and window.accumulator is not None, timeout=5000)
    for _ in range(100):  # the source is silent: its clock goes on, 10 ms per message
        clock["time_us"] += 10_000
        source.publish_status(clock)
        qtbot.wait(10)
        if window.accumulator.time_us == clock["time_us"] and int(window.event_view.image.image.max()) == 0:
            break
    assert window.accumulator.time_us == clock["time_us"]  # the view follows the source's clock
    assert window.accumulator.events_held == 0 and int(window.event_view.image.image.max()) == 0  # not frozen

    def silent_but_alive(paused: bool) -> None:  # the worker and the source's clock keep talking
        worker.publish_status({"type": "stats", "worker_id": WORKER_ID, "counters": {}, "backend": "b"})
        source.publish_status({**clock, "paused": paused})

    for paused, text in ((False, "source idle"), (True, "source paused")):
        for _ in range(100):
            silent_but_alive(paused)
            qtbot.wait(50)
            if text in window.state_label.text():
                break
        assert text in window.state_label.text()
    assert "PAUSED" in window.event_view.caption.textItem.toPlainText()


def test_source_without_clock_messages_fades_and_says_no_data(qtbot, window: MainWindow, publishers) -> None:
    worker, source = publishers
    feed(source, 5_000_000, count=2_000)
    qtbot.waitUntil(lambda: window.accumulator is not None and window.accumulator.events_held == 2_000, timeout=5000)
    for seq in range(100):  # the worker keeps talking (every 100 ms), the source is gone (no events, no clock)
        worker.publish_json(Kind.PREDICTION, prediction(seq, 2))
        qtbot.wait(100)
        if window.accumulator.events_held == 0:
            break
    assert window.accumulator.events_held == 0  # faded by the wall clock after CLOCK_FALLBACK_S
    qtbot.waitUntil(lambda: "no data since" in window.state_label.text(), timeout=5000)


def test_a_new_worker_id_is_shown_as_a_restart_and_marked_in_the_plots(qtbot, window: MainWindow, publishers) -> None:
    worker, _ = publishers
    worker.publish_json(Kind.PREDICTION, prediction(0, 4, worker_id="aaaa"))
    qtbot.waitUntil(lambda: window.worker_id == "aaaa", timeout=5000)
    worker.publish_status({"type": "stats", "worker_id": "bbbb", "counters": {}, "backend": "b"})
    qtbot.waitUntil(lambda: window.state_label.text() == "worker restarted", timeout=5000)
    worker.publish_json(Kind.PREDICTION, prediction(0, 4, worker_id="bbbb"))
    qtbot.waitUntil(lambda: window.predictions_seen == 2, timeout=5000)
    assert [label for *_, label in window.strip.gap_marks.gaps] == ["worker restarted"]
    assert [label for *_, label in window.latency_plot.gap_marks.gaps] == ["worker restarted"]


def test_no_predictions_from_a_live_pipeline_are_shown_greyed_and_marked_as_a_gap(qtbot, window: MainWindow,
                                                                                   publishers) -> None:  # fmt: skip
    worker, source = publishers
    worker.publish_json(Kind.PREDICTION, prediction(0, 4))
    qtbot.waitUntil(lambda: window.predictions_seen == 1, timeout=5000)
    clock = {"type": "clock", "time_us": 0, "paused": False}
    for _ in range(100):  # the worker and the source are alive (every 50 ms), but no prediction comes
        worker.publish_status({"type": "stats", "worker_id": WORKER_ID, "counters": {}, "backend": "b"})
        clock["time_us"] += 50_000
        source.publish_status(clock)
        qtbot.wait(50)
        if "no predictions for" in window.state_label.text():
            break
    assert "no predictions for" in window.state_label.text()
    assert window.prediction_panel.stale  # the last label is greyed out
    worker.publish_json(Kind.PREDICTION, prediction(1, 4))
    qtbot.waitUntil(lambda: len(window.strip.gap_marks.gaps) == 1, timeout=5000)
    assert window.strip.gap_marks.gaps[-1][2].startswith("no predictions")
    qtbot.waitUntil(lambda: "no predictions" not in window.state_label.text(), timeout=5000)
    assert not window.prediction_panel.stale


def test_lost_source_from_its_stats_is_shown_until_it_reconnects(qtbot, window: MainWindow, publishers) -> None:
    worker, source = publishers
    stats = {"type": "stats", "source": "dv:127.0.0.1:7777 (Cam)", "events_sent": 10, "connected": False,
             "disconnects": 1, "reconnects": 0}  # fmt: skip
    clock = {"type": "clock", "time_us": 0, "paused": False}
    for _ in range(100):  # the worker and the source's clock keep talking; the source says it is lost
        worker.publish_json(Kind.PREDICTION, prediction(0, 1))
        clock["time_us"] += 50_000
        source.publish_status(clock)
        source.publish_status(stats)
        qtbot.wait(50)
        if "source lost, reconnecting" in window.state_label.text():
            break
    assert window.state_label.text() == "source lost, reconnecting (lost 1x)"
    qtbot.waitUntil(lambda: "(lost, reconnecting)" in window.status_label.text(), timeout=5000)
    for _ in range(100):
        worker.publish_json(Kind.PREDICTION, prediction(1, 1))
        source.publish_status({**stats, "connected": True, "reconnects": 1})
        qtbot.wait(50)
        if "source lost" not in window.state_label.text():
            break
    assert "source lost" not in window.state_label.text() and window.source_connected
    qtbot.waitUntil(lambda: "(reconnected 1x)" in window.status_label.text(), timeout=5000)


def failing_stage_supervisor(tmp_path: Path, policy, own_error: bool = False):
    """launch.py's Supervisor running a "worker" stage that fails at once: exit code 1 (a crash,
    restarted by a policy), or with ``own_error`` exit code 2 (its own error line, never restarted)."""
    import launch

    if own_error:  # the real worker stage with a checkpoint that is not there: one error line, exit code 2
        stage = launch.Stage("worker", "inference.worker_stage", ["--sub", f"ipc://{tmp_path}/events", "--pub",
                             f"ipc://{tmp_path}/predictions", "--checkpoint", str(tmp_path / "missing.json")])
    else:
        stage = launch.Stage("worker", "timeit", ["-n", "1", "raise SystemExit(3)"])  # timeit: exit code 1
    return launch.Supervisor([stage], log=lambda line: None, policy=policy)


def test_with_a_restart_policy_the_supervisor_restarts_and_a_give_up_stays_shown(qtbot, publishers, tmp_path) -> None:
    import launch

    worker, source = publishers
    supervisor = failing_stage_supervisor(tmp_path, launch.RestartPolicy(first_backoff_s=0.05, max_backoff_s=0.05,
                                                                          max_restarts=1))  # fmt: skip
    with supervisor:
        main = MainWindow(worker.endpoint, source.endpoint, source_spec="sim", supervisor=supervisor,
                          stall_after_s=0.3, output_dir=tmp_path)  # fmt: skip
        qtbot.addWidget(main)
        main.show()
        qtbot.waitUntil(lambda: "gave up" in main.state_label.text(), timeout=15_000)
        stage = supervisor.stages["worker"]
        assert stage.starts == 2 and stage.restarts == 1  # restarted once by the supervisor, not by the window
        assert main.state_label.text() == ("stage worker failed (exit code 1) after 1 automatic restarts; "
                                           "gave up: see the terminal, then choose a source")  # fmt: skip
        qtbot.wait(800)  # the pipeline is silent: a stall would be shown now, but the failure stays
        assert "gave up" in main.state_label.text() and stage.starts == 2
        main.close()


@pytest.mark.parametrize("policy", [True, False], ids=["restart-policy", "no-policy"])
def test_a_stage_that_stopped_with_its_own_error_is_not_restarted(qtbot, publishers, tmp_path, policy) -> None:
    import launch

    worker, source = publishers
    with failing_stage_supervisor(tmp_path, launch.RestartPolicy(first_backoff_s=0.05) if policy else None,
                                  own_error=True) as supervisor:  # fmt: skip
        main = MainWindow(worker.endpoint, source.endpoint, source_spec="sim", supervisor=supervisor, output_dir=tmp_path)
        qtbot.addWidget(main)
        main.show()
        qtbot.waitUntil(lambda: "exit code 2" in main.state_label.text(), timeout=15_000)
        qtbot.wait(500)  # a restart would have happened by now
        assert supervisor.stages["worker"].starts == 1
        assert "restart" not in main.state_label.text() or "not restarted" in main.state_label.text()
        assert "missing.json not found — choose a source" in main.state_label.text()  # its error line, shown
        assert main.failure_overlay.isVisible() and "missing.json not found" in main.failure_overlay.text()
        assert main.centralWidget().count() == 2
        main.close()


def test_on_failure_stop_stops_every_stage_and_does_not_restart(qtbot, publishers, tmp_path) -> None:
    """launch.py --on-failure stop (no restart policy): the first failure stops the pipeline; the
    window stays open and says so (it used to restart the worker itself three times)."""
    worker, source = publishers
    with failing_stage_supervisor(tmp_path, policy=None) as supervisor:
        main = MainWindow(worker.endpoint, source.endpoint, source_spec="sim", supervisor=supervisor,
                          on_failure="stop", output_dir=tmp_path)  # fmt: skip
        qtbot.addWidget(main)
        main.show()
        qtbot.waitUntil(lambda: main.stopped_on_failure, timeout=15_000)
        qtbot.wait(500)  # a restart would have happened by now
        assert supervisor.stages["worker"].starts == 1 and supervisor.running() == []
        assert "--on-failure stop: every stage stopped" in main.state_label.text()
        assert main.failure_overlay.isVisible() and "close the window" in main.failure_overlay.text()
        main.close()


def test_source_chooser_offers_simulator_cameras_file_and_network(qtbot, window: MainWindow) -> None:
    from stream.sources.live import list_cameras

    box = window.source_box
    items = [(box.itemText(i), box.itemData(i), box.model().item(i).isEnabled()) for i in range(box.count())]
    cameras = list_cameras()
    assert items[0] == ("Simulator", "sim", True)
    if cameras:
        assert [data for _, data, _ in items[1 : 1 + len(cameras)]] == [f"camera:{serial}" for _, serial in cameras]
    else:
        assert items[1] == ("(no camera connected)", None, False)  # says so, cannot be chosen
    assert ("Open file…", "?file", True) in items and ("Network stream…", "?dv", True) in items


def write_recording(path: Path, seconds: float = 8.0, rate: int = 20_000) -> np.ndarray:
    from stream.formats.aedat4 import Aedat4Writer

    count = int(seconds * rate)
    events = random_events(SENSOR, 0, int(seconds * 1e6), count=count, seed=5)
    with Aedat4Writer(path, SENSOR) as writer:
        writer.write(events)
    return events


@pytest.fixture
def file_window(qtbot, tmp_path: Path):
    """The window with its file controls on a real source stage process replaying a real 8 s
    AEDAT4 file, and a worker-side publisher sending stats (so the pipeline is not taken for
    stalled); yielded once the controls are up and events arrive."""
    from PySide6 import QtCore

    write_recording(tmp_path / "rec.aedat4")
    control = f"ipc://{tmp_path}/control"
    stage = start_source(f"file:{tmp_path / 'rec.aedat4'}", f"ipc://{tmp_path}/events", None, "--control", control)
    try:
        with Publisher(f"ipc://{tmp_path}/predictions") as worker:
            main = MainWindow(worker.endpoint, f"ipc://{tmp_path}/events", control_endpoint=control, source_spec="file",
                              output_dir=tmp_path)  # fmt: skip
            qtbot.addWidget(main)
            main.show()
            alive = QtCore.QTimer(main)  # the worker's stats
            alive.timeout.connect(lambda: worker.publish_status({"type": "stats", "worker_id": WORKER_ID, "counters": {}}))
            alive.start(200)
            qtbot.waitUntil(lambda: main.file_controls() and main.source_status["duration_s"] is not None, timeout=30_000)
            qtbot.waitUntil(lambda: main.receiver.events_received > 0, timeout=10_000)
            try:
                yield main
            finally:
                alive.stop()  # before the publisher closes: a tick after it raised in the Qt event loop
            main.close()
    finally:
        stop_process(stage)


def pause_with_space(qtbot, main: MainWindow) -> None:
    from PySide6 import QtCore

    qtbot.keyClick(main, QtCore.Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: main.source_paused and main.play_action.text() == "▶ Play", timeout=5000)


def test_file_controls_show_the_recording(file_window: MainWindow) -> None:
    assert file_window.seek_slider.isEnabled() and file_window.seek_slider.maximum() == 8_000
    assert "/ 8.0 s" in file_window.position_label.text()


def test_space_pauses_the_replay_and_plays_it_again(qtbot, file_window: MainWindow) -> None:
    from PySide6 import QtCore

    main = file_window
    pause_with_space(qtbot, main)
    qtbot.waitUntil(lambda: "source paused" in main.state_label.text(), timeout=5000)
    qtbot.wait(100)  # packets already on their way
    received = main.receiver.events_received
    qtbot.wait(300)  # no events may come while paused: nothing to wait for but time
    assert main.receiver.events_received == received
    qtbot.keyClick(main, QtCore.Qt.Key.Key_Space)  # play again: events flow
    qtbot.waitUntil(lambda: not main.source_paused and main.receiver.events_received > received, timeout=5000)


def test_right_arrow_seeks_five_seconds_on(qtbot, file_window: MainWindow) -> None:
    from PySide6 import QtCore

    main = file_window
    pause_with_space(qtbot, main)
    position = main.source_status["position_s"]
    qtbot.keyClick(main, QtCore.Qt.Key.Key_Right)  # +5 s
    qtbot.waitUntil(lambda: main.source_status["position_s"] == pytest.approx(position + 5.0, abs=0.01), timeout=5000)
    assert main.seek_slider.value() == pytest.approx((position + 5.0) * 1000, abs=10)
    qtbot.keyClick(main, QtCore.Qt.Key.Key_Space)  # playing goes on from there
    qtbot.waitUntil(lambda: not main.source_paused and main.source_status["position_s"] > position + 5.0, timeout=5000)


def test_bracket_and_l_keys_set_the_speed_and_the_loop(qtbot, file_window: MainWindow) -> None:
    from PySide6 import QtCore

    main = file_window
    qtbot.keyClick(main, QtCore.Qt.Key.Key_BracketRight)  # faster: 1 -> 2
    qtbot.waitUntil(lambda: main.source_status["speed"] == 2.0, timeout=5000)
    qtbot.keyClick(main, QtCore.Qt.Key.Key_L)
    qtbot.waitUntil(lambda: main.source_status["loop"] is True and main.loop_box.isChecked(), timeout=5000)


# --- the window against the real pipeline ---------------------------------------------------


class RealPipeline:
    """The source (simulator) and worker stages under ``launch.Supervisor`` (as launch.py starts
    them: the source waits for the worker and the window, the worker for the window), a
    ``launch.SourceSwitcher`` and the window on them; ``shown`` holds every prediction and truth
    segment the window took from its receiver."""

    def __init__(self, qtbot, tmp_path: Path, checkpoint: Path, policy=None) -> None:
        import launch

        self.launch = launch
        args = launch.build_parser().parse_args(["--source", "sim", "--checkpoint", str(checkpoint), "--backend",
                                                 TEST_BACKEND])  # fmt: skip
        self.endpoints = launch.Endpoints(f"ipc://{tmp_path}/events", f"ipc://{tmp_path}/predictions",
                                          f"ipc://{tmp_path}/control")  # fmt: skip
        stages = [launch.worker_stage(args, self.endpoints, 1), launch.source_stage(args, self.endpoints, 2)]
        self.supervisor = launch.Supervisor(stages, log=lambda line: None, policy=policy)
        self.supervisor.start()
        self.main = MainWindow(self.endpoints.predictions, self.endpoints.events, control_endpoint=self.endpoints.control,
                               source_spec="sim", source_control=launch.SourceSwitcher(self.supervisor, args, self.endpoints),
                               supervisor=self.supervisor, model_name=checkpoint.stem, stall_after_s=1.5,
                               reconnect_after_s=30.0, output_dir=tmp_path)  # fmt: skip
        qtbot.addWidget(self.main)
        self.predictions: list[dict] = []
        self.truth: list = []
        take = self.main.receiver.take

        def take_and_keep():  # what the window takes from its receiver, kept for the test
            received = take()
            self.predictions.extend(received.predictions)
            self.truth.extend(received.truth)
            return received

        self.main.receiver.take = take_and_keep
        self.main.show()

    def pid(self, stage: str) -> int:
        return self.supervisor.stages[stage].process.pid

    def close(self) -> None:
        self.main.close()
        self.supervisor.stop()


@pytest.fixture
def real_pipeline(qtbot, tmp_path, stage_env, monkeypatch):
    """Starts a ``RealPipeline`` on a checkpoint (stages with this session's export cache); stops it after the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", stage_env["XDG_CACHE_HOME"])
    started = []

    def start(checkpoint: Path, policy=None) -> RealPipeline:
        started.append(RealPipeline(qtbot, tmp_path, checkpoint, policy))
        return started[-1]

    yield start
    for pipeline in started:
        pipeline.close()


def labelled(pipeline: RealPipeline) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, true class) of the windows the window showed that lie fully inside a
    gesture of the simulator's ground truth (``inference.headless.window_truth``)."""
    predictions = list(pipeline.predictions)
    start = np.array([p["window"]["start_us"] for p in predictions], dtype=np.int64)
    end = np.array([p["window"]["end_us"] for p in predictions], dtype=np.int64)
    truth = window_truth(start, end, sorted(pipeline.truth, key=lambda segment: segment.start_us))
    predicted = np.array([p["class_index"] for p in predictions], dtype=np.int64)
    return predicted[truth >= 0], truth[truth >= 0]


@pytest.mark.skipif(not BUILTIN_CHECKPOINT.is_file(), reason="built-in checkpoint not trained yet")
def test_window_on_the_real_pipeline_recognises_the_simulated_gestures(qtbot, real_pipeline) -> None:
    """The built-in checkpoint through the real stages into the window: the windows it shows inside
    the simulator's gestures (its truth, forwarded by the worker) have the gesture's class (a model
    that outputs noise scores about 1 in 11, and 0 % here)."""
    pipeline = real_pipeline(BUILTIN_CHECKPOINT)

    def enough() -> bool:  # 3 s of windows inside gestures, of two gestures at least
        truth = labelled(pipeline)[1]
        return len(truth) >= 60 and len(set(truth.tolist())) >= 2

    qtbot.waitUntil(enough, timeout=120_000)
    predicted, truth = labelled(pipeline)
    accuracy, count = window_accuracy(predicted, truth)
    assert accuracy >= 0.8, (accuracy, count, np.bincount(truth, minlength=11).tolist())


def test_window_on_the_real_pipeline_shows_the_simulator_its_truth_and_the_backend(qtbot, real_pipeline,
                                                                                    tiny_checkpoint) -> None:  # fmt: skip
    pipeline = real_pipeline(tiny_checkpoint)
    main = pipeline.main
    qtbot.waitUntil(lambda: main.predictions_seen >= 3, timeout=60_000)
    assert main.sensor == SensorSize(128, 128) and main.accumulator.events_held > 0
    assert main.backend.startswith(TEST_BACKEND)
    qtbot.waitUntil(lambda: "source: simulator" in main.status_label.text(), timeout=10_000)
    # the true class is drawn (rings) next to the predictions once the first gesture starts
    qtbot.waitUntil(lambda: any(truth >= 0 for truth in main.strip._truth), timeout=30_000)


def test_switching_the_source_restarts_the_source_stage_and_predictions_resume(qtbot, real_pipeline,
                                                                               tiny_checkpoint) -> None:  # fmt: skip
    pipeline = real_pipeline(tiny_checkpoint)
    main, supervisor = pipeline.main, pipeline.supervisor
    qtbot.waitUntil(lambda: main.predictions_seen >= 3, timeout=60_000)
    old_pid = pipeline.pid("source")
    main.speed_box.setCurrentText("2")
    main.restart_source("sim")
    assert pipeline.pid("source") != old_pid
    args = supervisor.stages["source"].args
    assert args[args.index("--speed") + 1] == "2"
    seen = main.predictions_seen
    qtbot.waitUntil(lambda: main.predictions_seen >= seen + 3, timeout=30_000)
    assert supervisor.stages["source"].starts == 2 and supervisor.stages["worker"].starts == 1


def test_a_stopped_worker_is_shown_as_a_stall_until_it_runs_again(qtbot, real_pipeline, tiny_checkpoint) -> None:
    pipeline = real_pipeline(tiny_checkpoint)
    main = pipeline.main
    qtbot.waitUntil(lambda: main.predictions_seen >= 3, timeout=60_000)
    os.kill(pipeline.pid("worker"), signal.SIGSTOP)
    try:
        qtbot.waitUntil(lambda: "pipeline stalled" in main.state_label.text(), timeout=10_000)
    finally:
        os.kill(pipeline.pid("worker"), signal.SIGCONT)
    qtbot.waitUntil(lambda: "stalled" not in main.state_label.text(), timeout=15_000)
    assert main.source_status is not None and not main.file_controls()  # the simulator: status only


def test_a_killed_worker_is_restarted_by_the_supervisor_and_the_window_marks_the_gap(qtbot, real_pipeline,
                                                                                      tiny_checkpoint) -> None:  # fmt: skip
    import launch

    pipeline = real_pipeline(tiny_checkpoint, policy=launch.RestartPolicy(first_backoff_s=0.05))
    main = pipeline.main
    # a prediction shown before the kill: a gap is marked from the last prediction to the next one
    # (the worker's id alone can come first, in its stats, on a loaded machine)
    qtbot.waitUntil(lambda: main.worker_id is not None and main.predictions_seen > 0, timeout=60_000)
    old_id = main.worker_id
    os.kill(pipeline.pid("worker"), signal.SIGKILL)
    qtbot.waitUntil(lambda: main.worker_id not in (None, old_id), timeout=60_000)  # a new worker speaks
    qtbot.waitUntil(lambda: main.state_label.text() == "worker restarted", timeout=5_000)
    seen = main.predictions_seen
    qtbot.waitUntil(lambda: main.predictions_seen > seen, timeout=30_000)
    assert [label for *_, label in main.strip.gap_marks.gaps][-1] == "worker restarted"
    assert pipeline.supervisor.stages["worker"].restarts == 1  # by the supervisor's policy


def test_a_file_chosen_in_the_dialog_replaces_the_source(qtbot, real_pipeline, tiny_checkpoint, tmp_path) -> None:
    from PySide6 import QtCore, QtWidgets

    pipeline = real_pipeline(tiny_checkpoint)
    main = pipeline.main
    qtbot.waitUntil(lambda: main.predictions_seen >= 1, timeout=60_000)
    recording = tmp_path / "walk.aedat4"
    write_recording(recording, seconds=30.0, rate=5_000)  # long enough to be still playing when paused

    def choose_file(tries: int = 50) -> None:  # type the path into the real dialog and press Open
        dialog = QtWidgets.QApplication.activeModalWidget()
        if not isinstance(dialog, QtWidgets.QFileDialog):
            if tries:
                QtCore.QTimer.singleShot(100, lambda: choose_file(tries - 1))
            elif dialog is not None:
                dialog.close()  # never hang the test on an unexpected modal window
            return
        dialog.findChild(QtWidgets.QLineEdit, "fileNameEdit").setText(str(recording))
        dialog.accept()

    old_pid = pipeline.pid("source")
    QtCore.QTimer.singleShot(100, choose_file)
    main.source_box.activated.emit(main.source_box.findData("?file"))
    assert pipeline.pid("source") != old_pid
    assert main.source_spec == f"file:{recording}" and main.source_box.currentText() == "File walk.aedat4"
    qtbot.waitUntil(lambda: main.sensor == SENSOR, timeout=30_000)  # the file's events arrive
    qtbot.waitUntil(main.file_controls, timeout=10_000)  # and the new stage answers file commands
    main.activateWindow()  # back from the dialog: shortcuts go to the active window
    qtbot.waitUntil(main.isActiveWindow, timeout=5_000)
    qtbot.keyClick(main, QtCore.Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: "source paused" in main.state_label.text(), timeout=10_000)


def test_run_gui_with_duration_saves_a_screenshot_and_returns(qtbot, publishers, tmp_path: Path) -> None:
    from gui.app import run_gui

    worker, source = publishers
    endpoints = argparse.Namespace(events=source.endpoint, predictions=worker.endpoint)
    out = tmp_path / "shot.png"
    args = argparse.Namespace(source="sim", speed="1", loop=False, checkpoint=None, duration=1.0, screenshot=str(out))
    assert run_gui(args, endpoints) == 0
    assert out.is_file() and out.stat().st_size > 10_000
