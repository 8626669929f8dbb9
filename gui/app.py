"""The live GUI: ``python launch.py`` opens it; ``run_gui(args, endpoints, supervisor)`` is the entry.

The GUI is a ZeroMQ subscriber of the pipeline (so it can watch stages running on another machine):

* the worker's endpoint (``endpoints.predictions``): ``prediction`` JSON (predictions, ``stats``
  about once a second, ``end``) and ``truth`` segments;
* the source's endpoint (``endpoints.events``): the raw ``events``, for the event view and for
  recording to AEDAT4, the source's ``clock`` messages (stream time while it is silent,
  paused or not), which keep the event view moving when no events come, and its ``stats``
  (``connected``: a camera or network source that lost its device or server shows "source lost,
  reconnecting"; without the events endpoint the copy in the worker's stats is used);
* the source stage's control socket (``endpoints.control``, optional): file replay controls
  (play/pause, seek slider with position and duration, speed, loop) and the source's status.

With CurveZMQ keys (``launch.py --curve-keys DIR``) every tcp endpoint above is encrypted and
authenticated; connections a publisher refuses in the handshake are named in the state line.

``PipelineReceiver`` owns both sockets in one thread (ZeroMQ sockets stay in the thread that made
them). It hands over what arrived through bounded buffers: event packets beyond
``max_queued_events`` are dropped oldest first (counted, shown as "GUI dropped"), predictions
keep the newest ``MAX_QUEUED_PREDICTIONS``. So the window always shows the newest data, never a
backlog, and a stalled pipeline never blocks the GUI. When nothing has come from the worker for
``RECONNECT_AFTER_S`` the receiver opens its sockets again.

``MainWindow`` has two timers: the fast one (``fps``) drains the receiver and redraws the event
image (``setImage(..., autoLevels=False, levels=...)``) and the predicted label; the slow one
(5 Hz) redraws plots, the prediction strip, the status line and watches for stalls and for stages
that exited (when it has the launcher's supervisor).

Source switching asks the launcher to restart its source stage with a new spec, speed or loop flag
(``source_control``, the launcher's ``SourceSwitcher``); without one (stages on another machine)
it is disabled.
A file's speed and loop change through the control socket without a restart.

Guided recording of labelled takes, their review and fine-tuning (**Takes** menu, the Takes panel):
``gui.takes.TakeDesk``, fed from the fast timer with the packets and the source's clock.

The **Model** menu loads another checkpoint without restarting the window (``model_control``, the
launcher's ``ModelSwitcher``, restarts the worker stage on it): the window then shows the new
model's classes (``training.checkpoint.read_metadata``) in the bars, the strip and the labels, and
its name in the status line. Predictions of the replaced worker still in flight are not shown. A
worker whose predictions do not fit the classes known here (one on another machine) gets numbered
classes, named from its predictions as they come.

Gaps: a new ``worker_id`` in the worker's messages ("worker restarted") or no prediction for more
than ``PREDICTION_GAP_S`` is shown in the state line and shaded in the strip and latency plot.

Stage failures: the launcher's supervisor alone restarts stages (its ``RestartPolicy``) and reports
only a failure it gave up on, which the window shows until a source is chosen again; with
``--on-failure stop`` (no policy) the first failure stops every stage.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import shiboken6
import zmq
from PySide6 import QtCore, QtGui, QtWidgets

from gui.takes import TakeDesk
from gui.widgets import (
    DEFAULT_ACCUMULATION_US,
    MAX_ACCUMULATION_US,
    MIN_ACCUMULATION_US,
    EventAccumulator,
    EventView,
    Overlay,
    PredictionPanel,
    PredictionStrip,
    ProbabilityBars,
    RateMeter,
    RollingPlot,
    dark_palette,
)
from inference.messages import background_activity_text, read_input_coverage, read_worker_message
from stream.classes import GESTURE_CLASSES, NO_GESTURE
from stream.coverage import coverage_text
from stream.events import GestureSegment, SensorSize
from stream.formats.aedat4 import DEFAULT_CAMERA, Aedat4Writer
from stream.transport.control import ControlClient
from stream.transport.keys import CurveConfig
from stream.transport.sockets import Subscriber
from stream.transport.wire import Kind, Status, now_us

log = logging.getLogger("gui")

DEFAULT_FPS = 30.0
SLOW_INTERVAL_MS = 200  # plots, strip, status line
STALL_AFTER_S = 2.0  # no message for this long: say the pipeline is stalled
RECONNECT_AFTER_S = 5.0  # no message from the worker for this long: open the sockets again
POLL_MS = 50  # the receiver thread wakes at least this often to honour close()
DEFAULT_MAX_QUEUED_EVENTS = 2_000_000  # events waiting for the GUI thread at most (32 MiB)
MAX_QUEUED_PREDICTIONS = 512
MAX_DRAIN_MESSAGES = 1000  # per socket per pass, so one busy socket cannot starve the other
ACCUMULATION_STEPS_MS = (2, 5, 10, 20, 33, 50, 100, 200, 500, 1000, 2000)
SPEEDS = ("0.25", "0.5", "1", "2", "4", "max")
SEEK_STEP_S = 5.0  # ← / → keys
CONTROL_TIMEOUT_S = 1.5  # a control request unanswered this long: the source does not answer
CLOCK_FALLBACK_S = 0.5  # no clock message for this long: the event view moves by the wall clock
PREDICTION_GAP_S = 1.0  # no prediction for this long: a gap, shown and marked
SHOW_RESTART_S = 5.0  # "worker restarted" stays in the state line this long
TRANSIENT_STATES = ("stalled", "nothing received", "paused", "restarted", "no data", "no events", "no predictions",
                    "control", "source lost")  # fmt: skip


# --- receiving -------------------------------------------------------------------------------


@dataclass
class Received:
    """What arrived since the previous ``PipelineReceiver.take()``."""

    predictions: list[dict] = field(default_factory=list)  # "prediction" messages, oldest first
    stats: dict | None = None  # the newest worker "stats" message
    end: dict | None = None  # the worker's "end" message, if it came
    truth: list[GestureSegment] = field(default_factory=list)
    packets: list[tuple[np.ndarray, SensorSize]] = field(default_factory=list)  # event packets, oldest first
    clock: dict | None = None  # the source's newest "clock" message (stream time, paused)
    source_stats: dict | None = None  # the source's newest "stats" message (from its own endpoint)


class PipelineReceiver:
    """A thread subscribed to the worker's and the source's endpoints; see the module docstring.

    Args:
        predictions_endpoint: the worker's publisher.
        events_endpoint: the source's publisher (None: no event view, no recording).
        max_queued_events: events buffered for the GUI thread at most (older packets dropped).
        reconnect_after_s: silence from the worker after which the sockets are opened again.
        allow_remote: allow non-loopback TCP endpoints.
        curve: CurveZMQ keys for a tcp predictions endpoint (``server_key``: the worker's public key).
        events_curve: the same for a tcp events endpoint (``server_key``: the source's; default ``curve``).

    A context manager; ``close()`` stops the thread within ``POLL_MS`` and closes a recording.
    """

    def __init__(
        self,
        predictions_endpoint: str,
        events_endpoint: str | None,
        *,
        max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS,
        reconnect_after_s: float = RECONNECT_AFTER_S,
        allow_remote: bool = False,
        curve: CurveConfig | None = None,
        events_curve: CurveConfig | None = None,
    ) -> None:
        if max_queued_events < 1:
            raise ValueError(f"max_queued_events must be >= 1, got {max_queued_events}")
        self.predictions_endpoint = predictions_endpoint
        self.events_endpoint = events_endpoint
        self.max_queued_events = max_queued_events
        self.reconnect_after_s = reconnect_after_s
        self.allow_remote = allow_remote
        self.curve = curve
        self.events_curve = events_curve if events_curve is not None else curve
        self.started_s = time.monotonic()
        self.last_worker_s: float | None = None  # monotonic time of the newest worker message
        self.last_events_s: float | None = None  # ... and of the newest non-empty event packet
        self.last_source_s: float | None = None  # ... and of the newest events or clock from the source
        self.last_clock_s: float | None = None  # ... and of the newest clock message from the source
        self.events_received = 0
        self.events_dropped = 0  # dropped here because the GUI thread fell behind
        self.malformed = 0  # messages on the worker's endpoint that were not the worker's
        self.reconnects = 0
        self.recording_error: str | None = None
        self._lock = threading.Lock()
        self._pending = Received()
        self._queued_events = 0
        self._recorder: Aedat4Writer | None = None
        self._record_lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._subscribers: list[Subscriber] = []  # the receiver thread's, read for their stats only
        self._refused_before = 0  # handshake failures of subscribers closed by a reconnect
        self._thread = threading.Thread(target=self._run, name="gui-receiver", daemon=True)

    # -- life cycle --

    def start(self) -> "PipelineReceiver":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.stop_recording()

    def __enter__(self) -> "PipelineReceiver":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def error(self) -> BaseException | None:
        """Why the receiver thread ended (a socket that could not be opened), else None."""
        return self._error

    # -- hand-over to the GUI thread --

    def take(self) -> Received:
        """Everything received since the previous call."""
        with self._lock:
            received, self._pending = self._pending, Received()
            self._queued_events = 0
        return received

    # -- recording --

    def start_recording(self, path: Path, sensor_size: SensorSize, camera_name: str = DEFAULT_CAMERA) -> None:
        """Write every event packet received from now on to the AEDAT4 file ``path``."""
        writer = Aedat4Writer(path, sensor_size, camera_name).open()
        with self._record_lock:
            previous, self._recorder = self._recorder, writer
            self.recording_error = None
        if previous is not None:
            previous.close()

    def stop_recording(self) -> int:
        """Close the recording (the file is complete when this returns); events written, 0 if none."""
        with self._record_lock:
            writer, self._recorder = self._recorder, None
        if writer is None:
            return 0
        writer.close()
        return writer.events_written

    @property
    def recording(self) -> Path | None:
        writer = self._recorder
        return writer.path if writer is not None else None

    def _record(self, events: np.ndarray, sensor: SensorSize) -> None:
        with self._record_lock:
            writer = self._recorder
            if writer is None or not len(events):
                return
            problem = None
            if sensor != writer.sensor_size:
                problem = f"the sensor changed ({writer.sensor_size} -> {sensor})"
            else:
                try:
                    writer.write(events)
                except ValueError as error:  # time went back: a restarted source
                    problem = f"the stream restarted ({error})"
            if problem is None:
                return
            self._recorder = None
            self.recording_error = f"recording stopped: {problem}; {writer.events_written} events in {writer.path}"
        writer.close()

    # -- the thread --

    def _open(self, context: zmq.Context) -> tuple[list[Subscriber], zmq.Poller]:
        """The subscribers (worker first, then the source) and one poller over all their sockets."""
        subscribers = [
            Subscriber(self.predictions_endpoint, ("prediction", "status", "truth"), allow_remote=self.allow_remote,
                       context=context, curve=self.curve)  # fmt: skip
        ]
        if self.events_endpoint is not None:  # events, and the source's clock and stats messages
            subscribers.append(Subscriber(self.events_endpoint, ("events", "status"), allow_remote=self.allow_remote,
                                          context=context, curve=self.events_curve))  # fmt: skip
        poller = zmq.Poller()  # a subscriber's poll_sockets stay the same for its life
        for subscriber in subscribers:
            for socket in subscriber.poll_sockets:
                poller.register(socket, zmq.POLLIN)
        return subscribers, poller

    @property
    def handshake_failures(self) -> int:
        """Connections the publishers refused in the CurveZMQ handshake (keys or mechanism differ)."""
        return self._refused_before + sum(subscriber.stats.handshake_failures for subscriber in self._subscribers)

    def _run(self) -> None:
        context = zmq.Context()
        subscribers: list[Subscriber] = []
        try:
            subscribers, poller = self._open(context)
            self._subscribers = list(subscribers)
            opened_s = time.monotonic()
            while not self._stop.is_set():
                # Each pass calls recv(0) on every subscriber, which also maintains it (reconnects
                # after a connection ZeroMQ closed for good); poll_timeout_ms keeps that on time.
                poller.poll(min(subscriber.poll_timeout_ms(POLL_MS) for subscriber in subscribers))
                for index, subscriber in enumerate(subscribers):
                    for _ in range(MAX_DRAIN_MESSAGES):
                        message = subscriber.recv(0)
                        if message is None:
                            break
                        self._handle(message, from_source=index == 1)
                now = time.monotonic()
                last = max(self.last_worker_s or 0.0, opened_s)
                if now - last > self.reconnect_after_s:
                    log.info("no data for %.1f s: opening the sockets again", now - last)
                    for subscriber in subscribers:
                        subscriber.close()
                    self._refused_before += sum(subscriber.stats.handshake_failures for subscriber in subscribers)
                    subscribers, poller = self._open(context)
                    self._subscribers = list(subscribers)
                    opened_s = now
                    self.reconnects += 1
        except BaseException as error:  # reported by the window; the thread must not die silently
            self._error = error
            log.error("receiver stopped: %s", error)
        finally:
            for subscriber in subscribers:
                subscriber.close()
            context.destroy(linger=0)

    def _handle(self, message: Any, from_source: bool = False) -> None:
        now = time.monotonic()
        if from_source and message.kind == Kind.STATUS:  # the source's own status: clocks and stats
            status: Status = message.data
            if status.type == "clock":
                self.last_source_s = self.last_clock_s = now
                with self._lock:
                    self._pending.clock = status.fields
            elif status.type == "stats":
                with self._lock:
                    self._pending.source_stats = status.fields
            return
        if message.kind == Kind.EVENTS:
            events = message.events
            self._record(events, message.sensor_size)
            if not len(events):
                return
            self.last_events_s = self.last_source_s = now
            self.events_received += len(events)
            with self._lock:
                packets = self._pending.packets
                packets.append((events, message.sensor_size))
                self._queued_events += len(events)
                while self._queued_events > self.max_queued_events and len(packets) > 1:
                    dropped, _ = packets.pop(0)
                    self._queued_events -= len(dropped)
                    self.events_dropped += len(dropped)
            return
        received = read_worker_message(message)
        if received is None:  # not one of the worker's messages: skipped
            self.malformed += 1
            return
        self.last_worker_s = now
        kind, data = received
        with self._lock:
            pending = self._pending
            if kind == "truth":
                pending.truth.extend(data)
            elif kind == "prediction":
                data["gui_recv_us"] = now_us()
                pending.predictions.append(data)
                del pending.predictions[:-MAX_QUEUED_PREDICTIONS]
            elif kind == "stats":
                pending.stats = data
            elif kind == "end":
                pending.end = data


# --- controlling the source -------------------------------------------------------------------


class SourceControl(Protocol):
    """Restarts the pipeline's source stage."""

    def restart(self, spec: str, speed: str, loop: bool) -> None: ...


class ModelControl(Protocol):
    """Restarts the pipeline's worker stage on another checkpoint (ValueError: not a checkpoint)."""

    def load(self, checkpoint: Path) -> None: ...


MAX_RECENT_MODELS = 8


# --- the window --------------------------------------------------------------------------------


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


class MainWindow(QtWidgets.QMainWindow):
    """The live view. See the module docstring.

    Args:
        predictions_endpoint: the worker's publisher.
        events_endpoint: the source's publisher (None: no event view and no recording).
        control_endpoint: the source stage's control socket (None: no file controls).
        source_spec: what the source stage was started with (shown, and the default for restarts).
        speed: replay speed of files and the simulator ("max" or a factor).
        loop: replay files forever.
        source_control: restarts the source stage; None disables source switching.
        supervisor: launch.py's ``Supervisor``, watched for stages that exit (optional).
        on_failure: launch.py's ``--on-failure``: with ``"stop"`` a stage failure stops every stage
            (the window stays open and says why; ``run_gui`` then returns 1).
        model_name: shown in the status line.
        model_control: restarts the worker stage on another checkpoint (the Model menu); None disables it.
        checkpoint: the checkpoint the worker runs (fine-tuning starts from it; None: unknown).
        classes: the model's class names (default: the 11 gestures).
        fps: event view updates per second.
        stall_after_s: silence after which the window says the pipeline stalled.
        output_dir: where recordings and screenshots go.
        allow_remote: allow non-loopback TCP endpoints.
        curve: CurveZMQ keys for a tcp predictions endpoint (``server_key``: the worker's public key).
        events_curve: the same for the source's tcp events and control endpoints (default ``curve``).
    """

    fpsChanged = QtCore.Signal(float)

    def __init__(
        self,
        predictions_endpoint: str,
        events_endpoint: str | None,
        *,
        control_endpoint: str | None = None,
        source_spec: str = "",
        speed: str = "1",
        loop: bool = False,
        source_control: SourceControl | None = None,
        supervisor: Any = None,
        on_failure: str = "restart",
        model_name: str = "",
        model_control: ModelControl | None = None,
        checkpoint: Path | None = None,
        classes: tuple[str, ...] = GESTURE_CLASSES,
        fps: float = DEFAULT_FPS,
        stall_after_s: float = STALL_AFTER_S,
        reconnect_after_s: float = RECONNECT_AFTER_S,
        output_dir: Path | None = None,
        allow_remote: bool = False,
        curve: CurveConfig | None = None,
        events_curve: CurveConfig | None = None,
    ) -> None:
        super().__init__()
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.setWindowTitle("spikeformer-live — gesture recognition")
        self.source_spec, self.speed, self.loop = source_spec, speed, loop
        self.source_control = source_control
        self.supervisor = supervisor
        self.on_failure = on_failure
        self.stopped_on_failure = False  # on_failure "stop": a stage failed and every stage was stopped
        self.model_name = model_name
        self.model_control = model_control
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.classes = tuple(classes)
        self._generic_classes = False  # classes numbered here, named from the predictions as they come
        self.recent_models: list[Path] = [self.checkpoint] if self.checkpoint is not None else []
        self._replaced_workers: set[str] = set()  # ids of workers replaced by a model load: their predictions are late
        self.stall_after_s = stall_after_s
        self.output_dir = Path(output_dir) if output_dir is not None else Path.cwd()
        self.frozen = False  # the display is frozen (F, or Space on a live source)
        self.accumulator: EventAccumulator | None = None
        self.accumulation_us = DEFAULT_ACCUMULATION_US
        self.full_scale = 3  # events per pixel for full colour (auto, slow timer)
        self.sensor: SensorSize | None = None
        self.backend = ""
        self.source_name = source_spec
        self.counters: dict[str, Any] = {}
        self.noise_filter_text: str | None = None  # the worker's background-activity window and noise floor
        self.input_coverage: dict | None = None  # the worker's recent input coverage against the training data
        self.stable_name = NO_GESTURE
        self.latest_prediction: dict | None = None
        self.predictions_seen = 0
        self.ended = False
        self.state_text = ""  # the stall / end / error line, also in the status bar
        self.last_screenshot: Path | None = None
        self.last_recording: Path | None = None
        self.stage_failure: str | None = None  # a stage that failed for good: shown until a source is chosen
        self.source_connected = True  # from the source's stats: False while it has lost its camera or server
        self.source_disconnects = 0
        self.source_reconnects = 0
        self.worker_id: str | None = None  # the worker's id from its messages; a new one = restarted
        self.worker_restarted_s: float | None = None
        self.last_prediction_s: float | None = None
        self._gap_label: str | None = None  # why the next prediction ends a gap ("worker restarted")
        self.source_paused = False  # from the source's clock messages or a control reply
        self.source_status: dict | None = None  # the newest control status reply
        self.control_problem = ""  # why the control socket does not answer ("" when it does)
        self._control_sent: dict[int, float] = {}  # request id -> monotonic s sent
        self.last_clock: dict | None = None
        self._events_newest: tuple[float, int] | None = None  # (monotonic s, stream µs) of the newest events
        self._truth: deque[GestureSegment] = deque(maxlen=256)
        self._events_shown = 0
        self._rate_since = time.monotonic()

        events_curve = events_curve if events_curve is not None else curve
        self.receiver = PipelineReceiver(predictions_endpoint, events_endpoint, reconnect_after_s=reconnect_after_s,
                                         allow_remote=allow_remote, curve=curve, events_curve=events_curve)  # fmt: skip
        self.control = None
        if control_endpoint:
            self.control = ControlClient(control_endpoint, allow_remote=allow_remote, curve=events_curve)
        self._build()
        self.rate_meter = RateMeter(self)
        self.rate_meter.rate.connect(self.fpsChanged)
        self.fpsChanged.connect(self._show_fps)
        self.fast_timer = QtCore.QTimer(self)
        self.fast_timer.setInterval(max(1, round(1000.0 / fps)))
        self.fast_timer.timeout.connect(self.update_view)
        self.slow_timer = QtCore.QTimer(self)
        self.slow_timer.setInterval(SLOW_INTERVAL_MS)
        self.slow_timer.timeout.connect(self.update_panels)
        self.receiver.start()
        self.fast_timer.start()
        self.slow_timer.start()

    # -- layout --

    def _build(self) -> None:
        self.event_view = EventView()
        self.strip = PredictionStrip(self.classes)
        self.prediction_panel = PredictionPanel()
        self.bars = ProbabilityBars(self.classes)
        self.latency_plot = RollingPlot("latency", "ms", {"compute": "#ffb347", "end to end": "#5ab0ff"})
        self.rate_plot = RollingPlot("event rate", "M events/s", {"source": "#7ddc7d", "shown": "#c8c8c8"})

        left = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        left.addWidget(self.event_view)
        left.addWidget(self.strip)
        left.setSizes([520, 220])
        right = QtWidgets.QWidget()
        right_layout = QtWidgets.QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.prediction_panel, 3)
        right_layout.addWidget(self.bars, 4)
        right_layout.addWidget(self.latency_plot, 2)
        right_layout.addWidget(self.rate_plot, 2)
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setSizes([700, 560])
        self.setCentralWidget(splitter)
        # Children of the window, not of the splitter (a splitter makes every child widget a pane).
        self.help_overlay = Overlay(self)
        self.failure_overlay = Overlay(self, text="", border="#ff6b6b")  # why a stage failed

        self.state_label = QtWidgets.QLabel("")
        self.state_label.setStyleSheet("color: #ff6b6b; font-weight: bold;")
        self.status_label = QtWidgets.QLabel("")
        self.fps_label = QtWidgets.QLabel("")
        self.record_label = QtWidgets.QLabel("")
        self.record_label.setStyleSheet("color: #ff4040; font-weight: bold;")
        status = self.statusBar()
        status.addWidget(self.state_label)
        status.addWidget(self.status_label, 1)
        status.addPermanentWidget(self.record_label)
        status.addPermanentWidget(self.fps_label)
        self._build_toolbar()
        self._build_file_bar()
        self._build_shortcuts()
        self.takes = TakeDesk(self)  # the prompt over the event view, the Takes panel (a dock)
        self._build_menus()
        self.resize(1280, 820)

    def _build_menus(self) -> None:
        """Takes (record, review, open a session) and Model (load a checkpoint, the recent ones)."""
        takes = self.menuBar().addMenu("&Takes")
        self.record_takes_menu_action = takes.addAction("Record takes…", self.takes.open_setup)
        takes.addAction("Review takes", self.takes.dock.show)
        takes.addAction("Open session folder…", self.takes.panel._choose_folder)
        self.model_menu = self.menuBar().addMenu("&Model")
        self._fill_model_menu()

    def _build_toolbar(self) -> None:
        bar = self.addToolBar("controls")
        bar.setMovable(False)
        bar.addWidget(QtWidgets.QLabel(" Source "))
        self.source_box = QtWidgets.QComboBox()
        self.source_box.setMinimumContentsLength(22)
        self.source_box.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.source_box.setToolTip("the event source; choosing one restarts the source stage")
        self._fill_sources()
        self.source_box.activated.connect(self._source_chosen)
        bar.addWidget(self.source_box)
        self.rewind_action = bar.addAction("⟲ Restart", lambda: self.restart_source(self.source_spec))
        self.rewind_action.setToolTip("restart the source stage from the beginning")
        self.source_box.setEnabled(self.source_control is not None)
        self.rewind_action.setEnabled(self.source_control is not None)
        bar.addSeparator()
        self.freeze_action = bar.addAction("Freeze", self.toggle_freeze)
        self.freeze_action.setCheckable(True)
        self.freeze_action.setToolTip("freeze the display; the pipeline keeps running (F)")
        self.record_action = bar.addAction("● Record", self.toggle_recording)
        self.record_action.setCheckable(True)
        self.record_action.setToolTip("record the live events to AEDAT4 (R)")
        self.record_takes_action = bar.addAction("● Record takes…", lambda: self.takes.open_setup())
        self.record_takes_action.setToolTip("guided recording of labelled takes for fine-tuning (T); stops a session")
        self.screenshot_action = bar.addAction("Screenshot", lambda: self.save_screenshot())
        self.screenshot_action.setToolTip("save the whole window as PNG (S)")
        bar.addSeparator()
        bar.addWidget(QtWidgets.QLabel(" Accumulation "))
        self.accumulation_box = QtWidgets.QSpinBox()
        self.accumulation_box.setRange(MIN_ACCUMULATION_US // 1000, MAX_ACCUMULATION_US // 1000)
        self.accumulation_box.setSuffix(" ms")
        self.accumulation_box.setValue(self.accumulation_us // 1000)
        self.accumulation_box.setToolTip("event time shown in the view (+ / - keys)")
        self.accumulation_box.valueChanged.connect(lambda ms: self.set_accumulation_us(ms * 1000))
        bar.addWidget(self.accumulation_box)
        bar.addSeparator()
        self.help_action = bar.addAction("Help", self.toggle_help)

    def _build_file_bar(self) -> None:
        """Play/pause, seek slider with position, speed and loop: file replay through the source
        stage's control socket (speed restarts the simulator, which has no control)."""
        self.addToolBarBreak()
        bar = self.addToolBar("replay")
        bar.setMovable(False)
        self.play_action = bar.addAction("Pause", self.play_pause)
        self.play_action.setToolTip("pause / play the file replay (Space)")
        self.seek_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.seek_slider.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.seek_slider.setMinimumWidth(420)
        self.seek_slider.setRange(0, 0)
        self.seek_slider.setToolTip("position in the file; drag to seek (← / → keys: 5 s)")
        self.seek_slider.sliderReleased.connect(lambda: self.seek_to(self.seek_slider.value() / 1000.0))
        self.seek_slider.actionTriggered.connect(self._slider_action)
        bar.addWidget(self.seek_slider)
        self.position_label = QtWidgets.QLabel(" –:– / –:– ")
        self.position_label.setMinimumWidth(130)
        bar.addWidget(self.position_label)
        bar.addSeparator()
        bar.addWidget(QtWidgets.QLabel(" Speed "))
        self.speed_box = QtWidgets.QComboBox()
        self.speed_box.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.speed_box.addItems(SPEEDS if self.speed in SPEEDS else (*SPEEDS, self.speed))
        self.speed_box.setCurrentText(self.speed)
        self.speed_box.setToolTip("replay speed: files change at once ([ / ] keys), the simulator restarts")
        self.speed_box.activated.connect(lambda _: self.set_speed(self.speed_box.currentText()))
        bar.addWidget(self.speed_box)
        self.loop_box = QtWidgets.QCheckBox("Loop")
        self.loop_box.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.loop_box.setChecked(self.loop)
        self.loop_box.setToolTip("replay the file forever (L)")
        self.loop_box.clicked.connect(self.set_loop)
        bar.addWidget(self.loop_box)
        self._enable_file_controls()

    def _build_shortcuts(self) -> None:
        keys = {
            "Space": self.play_pause, "F": self.toggle_freeze, "R": self.toggle_recording,
            "S": lambda: self.save_screenshot(), "F1": self.toggle_help, "H": self.toggle_help, "Q": self.close,
            "T": lambda: self.takes.open_setup(),
            "Left": lambda: self.seek_by(-SEEK_STEP_S), "Right": lambda: self.seek_by(SEEK_STEP_S),
            "Home": lambda: self.seek_to(0.0), "[": lambda: self.step_speed(-1), "]": lambda: self.step_speed(+1),
            "L": lambda: self.set_loop(not self.loop_box.isChecked()),
            "+": lambda: self.step_accumulation(+1), "=": lambda: self.step_accumulation(+1),
            "-": lambda: self.step_accumulation(-1),
        }  # fmt: skip
        self.shortcuts = {key: QtGui.QShortcut(QtGui.QKeySequence(key), self, action) for key, action in keys.items()}

    def _fill_sources(self) -> None:
        """Simulator, connected cameras (with serials, or a line saying there are none), file,
        network and the current spec."""
        box = self.source_box
        box.clear()
        box.addItem("Simulator", "sim")
        try:
            from stream.sources.live import list_cameras

            cameras = list_cameras()
            problem = "no camera connected"
        except (ImportError, ValueError, RuntimeError) as error:
            log.warning("cannot list cameras: %s", error)
            cameras, problem = [], f"cameras unavailable: {error}"
        for model, serial in cameras:
            box.addItem(f"Camera {model} {serial}".strip(), f"camera:{serial}" if serial else "camera")
        if self.source_spec == "sim:directed":
            box.addItem("Simulated person (on cue)", "sim:directed")
        if not cameras:
            box.addItem(f"({problem})", None)
            box.model().item(box.count() - 1).setEnabled(False)
        box.addItem("Open file…", "?file")
        box.addItem("Network stream…", "?dv")
        specs = [box.itemData(i) for i in range(box.count())]
        if self.source_spec and self.source_spec not in specs:
            label = self.source_spec if not self.source_spec.startswith("file:") else f"File {Path(self.source_spec[5:]).name}"
            box.insertItem(0, label, self.source_spec)
        index = box.findData(self.source_spec)
        box.setCurrentIndex(max(index, 0))

    # -- choosing and restarting the source --

    def _source_chosen(self, index: int) -> None:
        spec = self.source_box.itemData(index)
        if spec == "?file":
            path, _ = QtWidgets.QFileDialog.getOpenFileName(
                self, "Open an event recording (AEDAT4, AEDAT 3.1 / DVS128 Gesture, tonic .npy)", str(self.output_dir),
                "Event files (*.aedat4 *.aedat *.npy);;All files (*)",
            )  # fmt: skip
            spec = f"file:{path}" if path else None
        elif spec == "?dv":
            text, ok = QtWidgets.QInputDialog.getText(self, "Network stream", "DV server HOST:PORT", text="127.0.0.1:7777")
            spec = f"dv:{text.strip()}" if ok and text.strip() else None
        if spec is None:  # dialog cancelled: show the current source again
            self.source_box.setCurrentIndex(max(self.source_box.findData(self.source_spec), 0))
            return
        self.restart_source(spec)

    def restart_source(self, spec: str) -> bool:
        """Restart the source stage on ``spec`` with the speed and loop chosen in the toolbar; True
        when it was restarted. A guided session that runs stops (its takes stay)."""
        if self.source_control is None:
            return False
        speed, loop = self.speed_box.currentText(), self.loop_box.isChecked()
        try:
            self.source_control.restart(spec, speed, loop)
        except (ValueError, OSError) as error:
            self.show_state(f"cannot start source {spec}: {error}")
            return False
        self.takes.source_changed()
        if self.receiver.recording is not None:
            self.stop_recording()
        self.source_spec, self.speed, self.loop = spec, speed, loop
        self.source_name = spec
        self.ended = False
        self.source_status = None
        self.source_paused = False
        self.source_connected = True
        self.stage_failure = None
        self.failure_overlay.hide()
        self._control_sent.clear()
        self.show_state(f"source restarted: {spec}", alarm=False)
        self._fill_sources()
        self._enable_file_controls()
        return True

    # -- the model (the worker stage's checkpoint) --

    def load_model(self, path: Path) -> bool:
        """Restart the worker stage on checkpoint ``path`` (``model_control``) and show its classes;
        False (and why in the state line) when it cannot be loaded."""
        path = Path(path)
        if self.model_control is None:
            self.show_state("cannot load a model: the worker runs elsewhere (start it with --checkpoint)")
            return False
        try:
            from training.checkpoint import read_metadata

            classes = tuple(read_metadata(path)["classes"])
            self.model_control.load(path)
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            self.show_state(f"cannot load the model {path.name}: {str(error).splitlines()[0]}")
            return False
        if self.worker_id is not None:
            self._replaced_workers.add(self.worker_id)
        self.checkpoint, self.model_name = path, path.stem
        self._gap_label = f"model {path.stem}"
        self.set_classes(classes)
        self.add_recent_model(path)
        self.show_state(f"model loaded: {path.stem} ({len(classes)} classes)", alarm=False)
        self._show_status()
        return True

    def set_classes(self, classes: tuple[str, ...], generic: bool = False) -> None:
        """The model's class names, shown by the bars, the strip and the labels."""
        self.classes = tuple(classes)
        self._generic_classes = generic
        self.bars.set_classes(self.classes)
        self.strip.set_classes(self.classes)
        self.prediction_panel.show_stable(-1, NO_GESTURE, 0.0, None)
        self.stable_name = NO_GESTURE

    def add_recent_model(self, path: Path) -> None:
        """Put ``path`` first in the Model menu's recent checkpoints."""
        path = Path(path)
        self.recent_models = [path] + [p for p in self.recent_models if p != path][: MAX_RECENT_MODELS - 1]
        self._fill_model_menu()

    def _fill_model_menu(self) -> None:
        menu = self.model_menu
        menu.clear()
        load = menu.addAction("Load model…", self.choose_model)
        load.setEnabled(self.model_control is not None)
        if self.recent_models:
            menu.addSeparator()
        for path in self.recent_models:
            action = menu.addAction(path.stem, lambda checked=False, path=path: self.load_model(path))
            action.setCheckable(True)
            action.setChecked(path == self.checkpoint)
            action.setToolTip(str(path))
            action.setEnabled(self.model_control is not None)

    def choose_model(self) -> bool:
        """Ask for a checkpoint (.json) and load it."""
        start = str(self.checkpoint.parent if self.checkpoint is not None else self.output_dir)
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Load a model checkpoint", start,
                                                        "Checkpoints (*.json);;All files (*)")  # fmt: skip
        return self.load_model(Path(path)) if path else False

    def _fit_classes(self, prediction: dict) -> None:
        """A prediction whose probabilities do not fit the classes shown (a worker started
        elsewhere): numbered classes, each named by the first prediction that names it."""
        count = len(prediction.get("probabilities", ()))
        if count and count != len(self.classes):
            self.set_classes(tuple(f"class {k}" for k in range(count)), generic=True)
        index, name = prediction.get("class_index"), prediction.get("class_name")
        named = isinstance(index, int) and 0 <= index < len(self.classes) and isinstance(name, str)
        if self._generic_classes and named and self.classes[index] != name:
            self.set_classes(self.classes[:index] + (name,) + self.classes[index + 1 :], generic=True)

    # -- guided sessions (gui.takes.TakeDesk calls these) --

    def takes_started(self) -> None:
        self.record_takes_action.setText("■ Stop takes")
        self.record_takes_menu_action.setText("Stop the session")

    def takes_finished(self) -> None:
        self.record_takes_action.setText("● Record takes…")
        self.record_takes_menu_action.setText("Record takes…")

    # -- file replay control (the source stage's control socket) --

    def file_controls(self) -> bool:
        """Whether the source answers file commands (pause, seek, speed, loop)."""
        return self.control is not None and self.source_status is not None and "seek" in self.source_status["controls"]

    def _enable_file_controls(self) -> None:
        file = self.file_controls()
        for widget in (self.seek_slider, self.position_label):
            widget.setEnabled(file)
        self.play_action.setEnabled(file)
        self.loop_box.setEnabled(file)
        self.speed_box.setEnabled(file or (self.source_control is not None and not self.source_spec.startswith("file:")))

    def send_control(self, command: dict) -> bool:
        """Send a command to the source stage (the reply comes on the slow timer); False if it cannot go."""
        if self.control is None:
            return False
        request_id = self.control.send(command)
        if request_id is None:
            self.control_problem = "source control not connected"
            return False
        self._control_sent[request_id] = time.monotonic()
        return True

    def _poll_control(self, now_s: float) -> None:
        """Take control replies; ask for the status when nothing is outstanding; notice silence."""
        if self.control is None:
            return
        for reply in self.control.replies():
            if self._control_sent.pop(reply.get("id"), None) is None:
                continue  # a late reply to a request given up on
            self.control_problem = ""
            if reply.get("ok") and isinstance(reply.get("status"), dict):
                self._apply_source_status(reply["status"])
            else:
                self.show_state(f"source: {reply.get('error', 'command refused')}")
        overdue = [rid for rid, sent in self._control_sent.items() if now_s - sent > CONTROL_TIMEOUT_S]
        if overdue:
            self._control_sent.clear()
            self.control.reconnect()
            self.control_problem = "the source does not answer control commands"
        if not self._control_sent:
            self.send_control({"cmd": "status"})

    def _apply_source_status(self, status: dict) -> None:
        self.source_status = status
        self.source_paused = bool(status.get("paused"))
        self._enable_file_controls()
        self.play_action.setText("▶ Play" if self.source_paused else "Pause")
        position, duration = status.get("position_s"), status.get("duration_s")
        if isinstance(duration, (int, float)) and duration > 0:
            self.seek_slider.setRange(0, round(duration * 1000))
        if isinstance(position, (int, float)) and not self.seek_slider.isSliderDown():
            self.seek_slider.setValue(round(position * 1000))
        if isinstance(position, (int, float)):
            total = f"{duration:.1f} s" if isinstance(duration, (int, float)) else "?"
            self.position_label.setText(f" {position:.1f} / {total} ")
        speed = status.get("speed")
        if self.file_controls() and speed is not None:
            text = "max" if speed == "max" else f"{float(speed):g}"
            if self.speed_box.findText(text) < 0:
                self.speed_box.addItem(text)
            self.speed_box.setCurrentText(text)
            self.speed = text
        if isinstance(status.get("loop"), bool):
            self.loop_box.setChecked(status["loop"])

    def play_pause(self) -> None:
        """Space: pause / resume a file replay; on a live source, freeze / unfreeze the display."""
        if self.file_controls():
            self.send_control({"cmd": "resume" if self.source_paused else "pause"})
        else:
            self.toggle_freeze()

    def seek_to(self, position_s: float) -> None:
        """Continue the file replay at ``position_s`` seconds from its start (clamped to the file)."""
        if not self.file_controls():
            return
        duration = self.source_status.get("duration_s")
        position_s = max(0.0, float(position_s))
        if isinstance(duration, (int, float)):
            position_s = min(position_s, float(duration))
        self.send_control({"cmd": "seek", "position_s": position_s})
        self.seek_slider.setValue(round(position_s * 1000))

    def seek_by(self, delta_s: float) -> None:
        if self.file_controls() and isinstance(self.source_status.get("position_s"), (int, float)):
            self.seek_to(self.source_status["position_s"] + delta_s)

    def _slider_action(self, action: int) -> None:
        """Clicks on the slider's groove (page steps) seek at once; drags seek on release."""
        if action in (QtWidgets.QAbstractSlider.SliderAction.SliderPageStepAdd.value,
                      QtWidgets.QAbstractSlider.SliderAction.SliderPageStepSub.value):  # fmt: skip
            QtCore.QTimer.singleShot(0, lambda: self.seek_to(self.seek_slider.value() / 1000.0))

    def set_speed(self, text: str) -> None:
        """Replay speed ("max" or a factor): a file changes at once, the simulator restarts."""
        if self.file_controls():
            self.send_control({"cmd": "speed", "speed": "max" if text == "max" else float(text)})
            self.speed = text
        elif self.source_control is not None:
            self.speed_box.setCurrentText(text)
            self.restart_source(self.source_spec)

    def step_speed(self, direction: int) -> None:
        """Next faster (+1) or slower (-1) entry of ``SPEEDS``."""
        current = self.speed_box.currentText()
        index = SPEEDS.index(current) if current in SPEEDS else SPEEDS.index("1")
        target = SPEEDS[min(max(index + direction, 0), len(SPEEDS) - 1)]
        if target != current:
            self.speed_box.setCurrentText(target)
            self.set_speed(target)

    def set_loop(self, loop: bool) -> None:
        """Replay the file forever (True) or stop at its end."""
        self.loop_box.setChecked(bool(loop))
        if self.file_controls():
            self.send_control({"cmd": "loop", "loop": bool(loop)})

    # -- other user actions --

    def toggle_freeze(self) -> None:
        """Freeze / unfreeze the display (the pipeline keeps running; data keeps being drained)."""
        self.frozen = not self.frozen
        self.freeze_action.setChecked(self.frozen)
        self.event_view.set_caption("FROZEN" if self.frozen else "")

    def set_accumulation_us(self, accumulation_us: int) -> None:
        """Event time shown in the view, µs (clamped to 1 ms .. 2 s)."""
        accumulation_us = int(min(max(accumulation_us, MIN_ACCUMULATION_US), MAX_ACCUMULATION_US))
        self.accumulation_us = accumulation_us
        if self.accumulator is not None:
            self.accumulator.set_accumulation(accumulation_us)
        if self.accumulation_box.value() != accumulation_us // 1000:
            self.accumulation_box.blockSignals(True)
            self.accumulation_box.setValue(accumulation_us // 1000)
            self.accumulation_box.blockSignals(False)

    def step_accumulation(self, direction: int) -> None:
        """Next longer (+1) or shorter (-1) step of ``ACCUMULATION_STEPS_MS``."""
        current_ms = self.accumulation_us / 1000
        if direction > 0:
            longer = [ms for ms in ACCUMULATION_STEPS_MS if ms > current_ms]
            target = longer[0] if longer else ACCUMULATION_STEPS_MS[-1]
        else:
            shorter = [ms for ms in ACCUMULATION_STEPS_MS if ms < current_ms]
            target = shorter[-1] if shorter else ACCUMULATION_STEPS_MS[0]
        self.set_accumulation_us(target * 1000)

    def toggle_recording(self) -> None:
        if self.receiver.recording is not None:
            self.stop_recording()
        else:
            self.start_recording()

    def start_recording(self, path: Path | None = None) -> Path | None:
        """Record the live events to ``path`` (default: ``output_dir/recording-TIME.aedat4``)."""
        if self.sensor is None:
            self.show_state("cannot record yet: no events received")
            self.record_action.setChecked(False)
            return None
        path = Path(path) if path is not None else self.output_dir / f"recording-{_timestamp()}.aedat4"
        camera = self.source_name if self.source_name.startswith(("DAVIS", "DVX", "DVS")) else DEFAULT_CAMERA
        try:
            self.receiver.start_recording(path, self.sensor, camera)
        except (ValueError, OSError) as error:
            self.show_state(f"cannot record to {path}: {error}")
            self.record_action.setChecked(False)
            return None
        self.record_action.setChecked(True)
        self.record_label.setText(f"● REC {path.name}")
        self.last_recording = path
        return path

    def stop_recording(self) -> int:
        """Stop recording; the file is complete on return. Returns the events written."""
        path = self.receiver.recording
        written = self.receiver.stop_recording()
        self.record_action.setChecked(False)
        self.record_label.setText("")
        if path is not None:
            self.show_state(f"recorded {written} events to {path}", alarm=False)
        return written

    def save_screenshot(self, path: Path | None = None) -> Path | None:
        """Save the whole window as PNG (default: ``output_dir/screenshot-TIME.png``)."""
        path = Path(path) if path is not None else self.output_dir / f"screenshot-{_timestamp()}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.grab().save(str(path)):
            self.show_state(f"cannot save the screenshot to {path}")
            return None
        self.last_screenshot = path
        self.statusBar().showMessage(f"screenshot saved: {path}", 3000)
        return path

    def toggle_help(self) -> None:
        self.help_overlay.toggle()

    def show_state(self, text: str, alarm: bool = True) -> None:
        """Show a one-line state (stall, end of stream, error) in the status bar."""
        self.state_text = text
        self.state_label.setText(text)
        self.state_label.setStyleSheet(f"color: {'#ff6b6b' if alarm else '#7ddc7d'}; font-weight: bold;")

    # -- the fast timer: drain, accumulate, draw the event image and the label --

    def update_view(self) -> None:
        received = self.receiver.take()
        now_s = time.monotonic()
        for events, sensor in received.packets:
            if self.accumulator is None or self.accumulator.sensor_size != sensor:
                self.accumulator = EventAccumulator(sensor, self.accumulation_us)
                self.sensor = SensorSize(*sensor)
                self.last_clock = None  # a clock of the previous source says nothing of this one
            self.accumulator.add(events)
            self._events_newest = (now_s, int(events["t"][-1]))
            self._events_shown += len(events)
        self._truth.extend(received.truth)
        if received.clock is not None:
            self.last_clock = received.clock
            self.source_paused = bool(received.clock.get("paused"))
        self.takes.feed(received.packets, received.clock)
        if self._replaced_workers:  # late messages of a worker replaced by a model load: not shown
            received.predictions = [p for p in received.predictions if not self._replaced(p)]
            received.stats = None if received.stats is None or self._replaced(received.stats) else received.stats
            received.end = None if received.end is None or self._replaced(received.end) else received.end
        self._advance_view(now_s)
        for prediction in received.predictions:
            self._record_prediction(prediction, now_s)
        if received.source_stats is not None:
            self._take_source_stats(received.source_stats)
        if received.stats is not None:
            self._take_stats(received.stats, now_s)
        if received.end is not None:
            self._take_stats(received.end, now_s)
            self.ended = True
            self.show_state("end of stream: the source has no more events", alarm=False)
        if self.frozen:
            return
        if self.accumulator is not None:
            self.event_view.show_counts(self.accumulator.counts, self.full_scale)
        if received.predictions:
            self._show_prediction(received.predictions[-1])
        self.rate_meter.tick()

    def _advance_view(self, now_s: float) -> None:
        """Keep the event view moving while the source is silent: to the source's clock, or
        (a source without clock messages) by the wall time since its newest events arrived.
        Arrival times are the receiver thread's, so a busy GUI thread does not fake a silence."""
        receiver = self.receiver
        if self.accumulator is None:
            return
        clock = self.last_clock  # the receiver may know of a clock this thread has not taken yet
        if clock is not None and receiver.last_clock_s is not None and now_s - receiver.last_clock_s < CLOCK_FALLBACK_S:
            self.accumulator.advance(int(clock["time_us"]))
        elif self._events_newest is not None and receiver.last_events_s is not None and not self.source_paused:
            silent_s = now_s - receiver.last_events_s
            if silent_s > CLOCK_FALLBACK_S:
                self.accumulator.advance(self._events_newest[1] + int(silent_s * 1e6))

    def _truth_at(self, time_us: Any) -> int:
        """The row of the true class at stream time ``time_us`` in the model's classes (the truth is a
        gesture; -1: none, unknown, or a gesture the model does not know)."""
        if not isinstance(time_us, int):
            return -1
        for segment in reversed(self._truth):
            if segment.start_us <= time_us < segment.end_us:
                if self.classes == GESTURE_CLASSES:
                    return int(segment.label)
                name = GESTURE_CLASSES[segment.label] if 0 <= segment.label < len(GESTURE_CLASSES) else None
                return self.classes.index(name) if name in self.classes else -1
        return -1

    def _record_prediction(self, prediction: dict, now_s: float) -> None:
        self.predictions_seen += 1
        self._fit_classes(prediction)
        self._check_worker(prediction.get("worker_id"), now_s)
        last = self.last_prediction_s
        if last is not None and (self._gap_label is not None or now_s - last > PREDICTION_GAP_S):
            label = self._gap_label or ("source paused" if self.source_paused else f"no predictions {now_s - last:.1f} s")
            for plot in (self.strip, self.latency_plot):
                plot.mark_gap(last, now_s, label)
        self._gap_label = None
        self.last_prediction_s = now_s
        stable = prediction.get("stable", {})
        probabilities = np.asarray(prediction.get("probabilities", ()), dtype=np.float64)
        truth = self._truth_at(prediction.get("window", {}).get("end_us"))
        self.strip.add(now_s, probabilities, int(stable.get("index", -1)), truth)
        timing = prediction.get("timing", {})
        if "compute_ms" in timing:
            self.latency_plot.add("compute", now_s, float(timing["compute_ms"]))
        if "source_send_us" in timing and "gui_recv_us" in prediction:
            self.latency_plot.add("end to end", now_s, (prediction["gui_recv_us"] - timing["source_send_us"]) / 1000.0)
        self.counters = prediction.get("counters", self.counters)
        self.backend = prediction.get("backend", self.backend)

    def _check_worker(self, worker_id: Any, now_s: float) -> None:
        """A new ``worker_id`` in the worker's messages: the worker was restarted."""
        if worker_id is None:
            return
        worker_id = str(worker_id)
        if self.worker_id is not None and worker_id != self.worker_id:
            if self.worker_id in self._replaced_workers:  # a model load replaced it: expected
                log.info("worker on the new model (id %s -> %s)", self.worker_id, worker_id)
            else:
                self.worker_restarted_s = now_s
                self._gap_label = "worker restarted"
                log.warning("worker restarted (id %s -> %s)", self.worker_id, worker_id)
        self.worker_id = worker_id

    def _replaced(self, message: dict) -> bool:
        """Whether a worker message comes from a worker that a model load replaced."""
        return str(message.get("worker_id")) in self._replaced_workers

    def _show_prediction(self, prediction: dict) -> None:
        self.latest_prediction = prediction
        stable = prediction.get("stable", {})
        index = int(stable.get("index", -1))
        self.stable_name = str(stable.get("name", NO_GESTURE)) if index >= 0 else NO_GESTURE
        probabilities = np.asarray(prediction.get("probabilities", ()), dtype=np.float64)
        top = (str(prediction.get("class_name", "")), float(probabilities.max())) if probabilities.size else None
        self.prediction_panel.show_stable(index, self.stable_name, float(stable.get("confidence", 0.0)), top)
        self.bars.show_probabilities(probabilities, highlight=index if index >= 0 else None)

    def _take_stats(self, stats: dict, now_s: float) -> None:
        self._check_worker(stats.get("worker_id"), now_s)
        self.counters = stats.get("counters", self.counters) or self.counters
        self.backend = stats.get("backend", self.backend) or self.backend
        self.noise_filter_text = background_activity_text(stats.get("background_activity"))
        self._show_input_coverage(read_input_coverage(stats.get("input_coverage")))
        source = stats.get("source") or {}
        if isinstance(source, dict):
            if source.get("source"):
                self.source_name = str(source["source"])
            if isinstance(source.get("event_rate"), (int, float)):
                self.rate_plot.add("source", now_s, source["event_rate"] / 1e6)
            if self.receiver.events_endpoint is None:  # no direct line to the source: the worker's copy
                self._take_source_stats(source)

    def _show_input_coverage(self, coverage: dict | None) -> None:
        """The worker's recent input coverage: in the status bar, and under the gesture when the input
        is sparser or denser than the checkpoint's training data (``stream.coverage``)."""
        self.input_coverage = coverage
        unlike = coverage is not None and coverage["verdict"] in ("sparse", "dense")
        self.prediction_panel.set_warning(coverage_text(coverage) if unlike else None)

    def _take_source_stats(self, stats: dict) -> None:
        """The source's connection state from its stats (``connected``, ``disconnects``, ``reconnects``)."""
        connected = stats.get("connected")
        if not isinstance(connected, bool):
            return
        if connected != self.source_connected:
            log.warning("source %s", "reconnected" if connected else "lost; reconnecting")
        self.source_connected = connected
        for name in ("disconnects", "reconnects"):
            value = stats.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f"source_{name}", value)

    # -- the slow timer: plots, strip, status, stall watch --

    def update_panels(self) -> None:
        now_s = time.monotonic()
        elapsed = now_s - self._rate_since
        if elapsed >= 1.0:
            self.rate_plot.add("shown", now_s, self._events_shown / elapsed / 1e6)
            self._events_shown, self._rate_since = 0, now_s
        self._poll_control(now_s)
        self._watch(now_s)
        self.takes.tick()
        if self.frozen:
            return
        if self.accumulator is not None:
            self._auto_contrast()
        stale = self.last_prediction_s is not None and now_s - self.last_prediction_s > PREDICTION_GAP_S
        if stale != self.prediction_panel.stale:
            self.prediction_panel.set_stale(stale)
        self.strip.refresh(now_s)
        self.latency_plot.refresh(now_s)
        self.rate_plot.refresh(now_s)
        self._show_status()

    def _auto_contrast(self) -> None:
        """Full colour at the 95th percentile of the counts of active pixels (at least 2)."""
        counts = self.accumulator.counts
        active = counts[counts > 0]
        self.full_scale = max(2, int(np.percentile(active, 95))) if active.size else 2

    def _watch(self, now_s: float) -> None:
        """The state line: errors, stage exits, then the most important of stalled pipeline,
        source paused, worker restarted, no data from the source, no predictions."""
        receiver = self.receiver
        if receiver.error is not None:
            self.show_state(f"receiver stopped: {receiver.error}")
            return
        if receiver.recording_error:
            self.show_state(receiver.recording_error)
            receiver.recording_error = None
            self.record_action.setChecked(False)
            self.record_label.setText("")
        if self.supervisor is not None:
            for stage_exit in self.supervisor.poll():
                self._stage_exited(stage_exit.name, stage_exit.returncode)
        if self.stage_failure is not None:
            self.show_state(self.stage_failure)
            return
        if self.ended:
            return
        text, alarm = self._watch_text(now_s)
        if text:
            self.show_state(text, alarm)
        elif self.state_text and any(word in self.state_text for word in TRANSIENT_STATES):
            self.show_state("")

    def _watch_text(self, now_s: float) -> tuple[str, bool]:
        receiver = self.receiver
        last_worker = receiver.last_worker_s
        silent_s = now_s - (last_worker if last_worker is not None else receiver.started_s)
        if silent_s > self.stall_after_s:
            if last_worker is None:
                text = f"waiting for the pipeline: nothing received for {silent_s:.1f} s"
            else:
                text = f"no data for {silent_s:.1f} s — pipeline stalled"
            if receiver.reconnects:
                text += f", reconnecting ({receiver.reconnects})"
            refused = receiver.handshake_failures
            if refused:
                text += f"; {refused} connection(s) refused in the CurveZMQ handshake (keys differ)"
            return text, True
        if not self.source_connected:
            return f"source lost, reconnecting (lost {self.source_disconnects}x)", True
        if self.source_paused:
            return "source paused (Space plays)", False
        if self.worker_restarted_s is not None and now_s - self.worker_restarted_s < SHOW_RESTART_S:
            return "worker restarted", True
        if receiver.events_endpoint is not None and receiver.last_source_s is not None:
            quiet_s = now_s - receiver.last_source_s
            if quiet_s > self.stall_after_s:
                return f"no data since {quiet_s:.1f} s — source stalled", True
            last_events = receiver.last_events_s
            if last_events is not None and now_s - last_events > self.stall_after_s:
                return f"no events for {now_s - last_events:.1f} s — source idle", False
        if self.last_prediction_s is not None and now_s - self.last_prediction_s > PREDICTION_GAP_S:
            return f"no predictions for {now_s - self.last_prediction_s:.1f} s", True
        if self.control_problem:
            return self.control_problem, True
        return "", False

    def _stage_exited(self, name: str, code: int) -> None:
        """A stage the supervisor reports as exited. With a restart policy the supervisor has
        already restarted failed stages and reports only the failure it gave up on; without one
        (``--on-failure stop``) the first failure stops every stage."""
        if code == 0:
            self.show_state(f"stage {name} ended", alarm=False)
            return
        stage = self.supervisor.stages.get(name)
        error = getattr(stage, "last_error", "")  # the stage's own error line, if it wrote one
        if not error and code < 0:  # killed: name the signal
            try:
                error = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                error = f"killed by signal {-code}"
        advice = f"{error} — choose a source" if error else "see the terminal, then choose a source"
        if getattr(self.supervisor, "policy", None) is not None:
            restarts = getattr(stage, "restarts", 0)
            given_up = f"after {restarts} automatic restarts; gave up" if restarts else "not restarted"
            self._show_failure(f"stage {name} failed (exit code {code}) {given_up}: {advice}",
                               f"stage {name} failed (exit code {code}), {given_up}", error,
                               "Choose a source to go on.")  # fmt: skip
            return
        if self.on_failure == "stop":  # what the user asked for: the first failure stops the pipeline
            self.supervisor.stop()
            self.stopped_on_failure = True
            self._show_failure(f"stage {name} failed (exit code {code}); --on-failure stop: every stage stopped",
                               f"stage {name} failed (exit code {code})", error,
                               "--on-failure stop: every stage was stopped; close the window.")  # fmt: skip
            return
        self._show_failure(f"stage {name} died (exit code {code}); {advice}", f"stage {name} died (exit code {code})",
                           error, "Choose a source to go on.")  # fmt: skip

    def _show_failure(self, state: str, title: str, error: str, next_step: str) -> None:
        """A stage failure, shown until a source is chosen: ``state`` in the status bar; ``title``,
        the stage's ``error`` line and ``next_step`` in the panel over the window."""
        self.stage_failure = state
        self.show_state(state)
        self.failure_overlay.show_message(title, f"{error or 'see the terminal'}\n\n{next_step}")

    def _show_status(self) -> None:
        counters = self.counters or {}
        source = self.source_name or "?"
        if not self.source_connected:
            source += " (lost, reconnecting)"
        elif self.source_reconnects:
            source += f" (reconnected {self.source_reconnects}x)"
        parts = [
            f"source: {source}",
            f"backend: {self.backend or '?'}",
            f"model: {self.model_name or '?'}",
        ]
        # early in the line: a narrow window cuts its end
        if self.input_coverage is not None and self.input_coverage["ratio"] is not None:
            parts.append(f"input coverage {self.input_coverage['ratio']:.2f}x training")
        parts += [
            f"windows skipped: {counters.get('windows_skipped', 0)}",
            f"events dropped: {counters.get('events_dropped', 0)} (GUI {self.receiver.events_dropped})",
        ]
        if self.sensor is not None:
            parts.append(f"sensor {self.sensor}")
        if self.noise_filter_text:
            parts.append(self.noise_filter_text)
        self.status_label.setText("  ·  ".join(parts))
        caption = f"{self.accumulation_us / 1000:g} ms · full colour at {self.full_scale} events"
        self.event_view.set_caption("FROZEN" if self.frozen else ("PAUSED · " if self.source_paused else "") + caption)

    def _show_fps(self, fps: float) -> None:
        self.fps_label.setText(f"{fps:.0f} fps")

    # -- Qt --

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 - Qt name
        super().resizeEvent(event)
        for overlay in (self.help_overlay, self.failure_overlay):
            if overlay.isVisible():
                overlay.place()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt name
        self.fast_timer.stop()
        self.slow_timer.stop()
        self.takes.close()  # a session's recorded takes are on disk already
        self.receiver.close()
        if self.control is not None:
            self.control.close()
        super().closeEvent(event)


# --- entry point ----------------------------------------------------------------------------


def _checkpoint_classes(checkpoint: Any) -> tuple[str, ...]:
    """The class names of ``checkpoint`` (the 11 gestures when there is none or it cannot be read
    here: a worker elsewhere names its classes in its predictions)."""
    if not checkpoint:
        return GESTURE_CLASSES
    try:
        from training.checkpoint import read_metadata

        return tuple(read_metadata(checkpoint)["classes"])
    except (ValueError, OSError, ImportError) as error:
        log.warning("cannot read the classes of %s: %s", checkpoint, error)
        return GESTURE_CLASSES


def run_gui(args: argparse.Namespace, endpoints: Any, supervisor: Any = None, source_control: SourceControl | None = None,
            curve: CurveConfig | None = None, events_curve: CurveConfig | None = None,
            model_control: ModelControl | None = None) -> int:  # fmt: skip
    """Open the window on the pipeline at ``endpoints`` (``.events``, ``.predictions``) and run
    until it is closed, ``args.duration`` seconds pass, or SIGINT/SIGTERM. With
    ``args.screenshot`` (a path), the window is saved there just before it closes.

    ``supervisor`` (launch.py's ``Supervisor``) enables stage watching, ``source_control`` (the
    launcher's ``SourceSwitcher``) source switching, ``model_control`` (its ``ModelSwitcher``) the
    Model menu.
    ``curve`` / ``events_curve``: CurveZMQ keys for tcp endpoints of the worker / the source
    (``args.allow_remote`` allows non-loopback ones). Returns the exit code: 0, 130 after a signal, 1
    when ``args.on_failure == "stop"`` and a stage failure stopped the pipeline.
    """
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["spikeformer-live"])
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    checkpoint = getattr(args, "checkpoint", None)
    window = MainWindow(
        endpoints.predictions,
        endpoints.events,
        control_endpoint=getattr(endpoints, "control", None),
        source_spec=getattr(args, "source", ""),
        speed=str(getattr(args, "speed", "1")),
        loop=bool(getattr(args, "loop", False)),
        source_control=source_control,
        supervisor=supervisor,
        on_failure=str(getattr(args, "on_failure", "restart")),
        model_name=Path(checkpoint).stem if checkpoint else "",
        model_control=model_control,
        checkpoint=Path(checkpoint) if checkpoint else None,
        classes=_checkpoint_classes(checkpoint),
        allow_remote=bool(getattr(args, "allow_remote", False)),
        curve=curve,
        events_curve=events_curve,
    )
    window.show()
    signalled: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        signalled.append(signum)
        QtCore.QTimer.singleShot(0, window.close)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    wake = QtCore.QTimer()  # Python runs signal handlers only when the interpreter gets control
    wake.timeout.connect(lambda: None)
    wake.start(200)
    screenshot = getattr(args, "screenshot", None)

    def finish() -> None:
        if screenshot:
            window.save_screenshot(Path(screenshot))
        window.close()

    duration = getattr(args, "duration", None)
    if duration:
        QtCore.QTimer.singleShot(round(duration * 1000), finish)
    try:
        app.exec()
    finally:
        wake.stop()
        stopped_on_failure = window.stopped_on_failure
        window.receiver.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # Delete the window's C++ side now, while the QApplication lives: left to the garbage
        # collector at interpreter exit, PySide6 may free them in the wrong order and crash.
        shiboken6.delete(window)
    return 130 if signalled else 1 if stopped_on_failure else 0
