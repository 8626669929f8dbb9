"""Teach it your gestures from the window (#16): guided recording, review and fine-tuning of takes.

The user's path: **Takes ▸ Record takes…** (or the toolbar) opens ``TakeSetupDialog``: the classes
(the 11 gestures, or your own names, comma separated), takes per class, take length, pause,
countdown, the session folder and, with the simulator as the camera, which simulated gesture the
person performs for each class (or "stand still"). The session then runs from the window's live
event feed: a big prompt over the event view ("perform wave in 3", "recording wave", "pause") and
a progress ring (``gui.widgets.PromptOverlay``). The **Takes** panel (``ReviewPanel``, a dock under
the window) lists the session's takes on a timeline and replays, deletes, redoes and moves them,
opens an existing session folder, and fine-tunes the current model on the session
(``spikeformer-live finetune`` in a ``QProcess``); the new model is one click away (the window's
Model menu loads it without a restart).

How a session runs (``TakeSession``): ``stream.takes.record_takes`` itself, on a thread, reading a
``FeedSource``: the window pushes each frame's event packets and the stream time it reached (the
newest event, or the source's clock message while it is silent) into a bounded queue. So the
countdown, the pause between takes, the cue and the AEDAT4 writing are the command line's
(``spikeformer-live record``), the files are written off the GUI thread, and ``TakeFolder``
rewrites ``labels.csv`` after every take: closing the window or stopping mid-session loses only
the take being recorded. Prompts and cues come back to the GUI thread as Qt signals.

The camera: with the simulator (``sim``) and a launcher that can restart the source, the session
first restarts the source as ``sim:directed`` (a simulated person who stands still until told)
and answers each cue with a ``perform`` command on the source's control socket; it starts once the
new source answers with ``perform`` among its controls. With a camera or a DV network source
nothing is cued: the person in front of it performs. Changing the source mid-session stops it.

``TakeDesk`` ties this to a ``MainWindow``: the window calls ``feed`` from its fast timer,
``tick`` from its slow timer and ``close`` when it closes; the desk uses the window's
``restart_source``, ``send_control``, ``source_status``, ``show_state`` and ``load_model``.
"""

from __future__ import annotations

import datetime
import html
import logging
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from gui.widgets import PromptOverlay
from stream.classes import GESTURE_CLASSES
from stream.events import EVENT_DTYPE, SensorSize
from stream.takes import MARGIN_US, Take, TakeFolder, TakePlan, TakeRecorder, record_takes

log = logging.getLogger("gui.takes")

STAND_STILL = "stand still"  # what the simulated person does for a class mapped to no gesture
DIRECTED_SPEC = "sim:directed"
MAX_FEED_ITEMS = 300  # frames waiting for the session thread (~10 s at 30 fps); beyond, a frame is dropped (counted)
FEED_POLL_S = 0.05  # the session thread wakes at least this often to notice the end of the feed
STOP_WAIT_S = 5.0  # how long closing waits for the session thread to close its file
SOURCE_WAIT_S = 60.0  # a session waits this long for a restarted source before giving up
DONE_SHOWN_MS = 2500  # "done" stays over the event view this long
ACTIVITY_BIN_US = 50_000  # the review timeline's event-rate bins
REPO_ROOT = Path(__file__).resolve().parents[1]  # made importable for the fine-tune process
EPOCH_LINE = re.compile(r"\bepoch (\d+)/(\d+)\b")
SPLIT_BRUSHES = {"train": (90, 150, 230, 90), "test": (110, 210, 120, 90), "": (200, 200, 200, 70)}


# --- plans, class names, the simulated person ------------------------------------------------------


def class_names(text: str) -> tuple[str, ...]:
    """Comma-separated class names as typed (blanks around names and empty items dropped)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def default_gestures(classes: tuple[str, ...]) -> dict[str, int | None]:
    """Class name -> the DVS128 Gesture class the directed simulator performs for it (None: the
    person stands still). A gesture's own name keeps its gesture; your own names get the gestures
    not named yet, in order ("other gestures" last, then standing still)."""
    unused = [index for index, name in enumerate(GESTURE_CLASSES) if name not in classes]
    unused.sort(key=lambda index: GESTURE_CLASSES[index] == "other gestures")
    mapping: dict[str, int | None] = {}
    for name in classes:
        if name in GESTURE_CLASSES:
            mapping[name] = GESTURE_CLASSES.index(name)
        else:
            mapping[name] = unused.pop(0) if unused else None
    return mapping


def is_simulator(spec: str) -> bool:
    return spec.partition(":")[0] == "sim"


@dataclass(frozen=True)
class SessionSetup:
    """What ``TakeSetupDialog`` asks for: the plan, the session folder and, for the simulator, the
    gesture the person performs per class (None: stands still)."""

    plan: TakePlan
    folder: Path
    gestures: dict[str, int | None] = field(default_factory=dict)


def redo_plan(row: Any, countdown_s: int, directed: bool) -> TakePlan:
    """The plan of one take recorded again: its class, its labelled length (0.5..60 s), no pause."""
    take_s = min(max((row.end_us - row.start_us) / 1e6, 0.5), 60.0)
    return TakePlan((row.label,), 1, take_s, 0.0, max(countdown_s, 1 if directed else 0), 0)


def finetune_command(labels: Path, run_dir: Path, export: Path, checkpoint: Path | None, epochs: int) -> list[str]:
    """``spikeformer-live finetune`` on a session's ``labels.csv``, as a command line (this Python)."""
    command = [sys.executable, "-m", "training", "finetune", "--data", f"folder:{labels}", "--out", str(run_dir),
               "--export", str(export), "--epochs", str(int(epochs))]  # fmt: skip
    if checkpoint is not None:
        command += ["--from", str(checkpoint)]
    return command + ["--no-progress"]


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


# --- a session on a thread ------------------------------------------------------------------------


class FeedSource:
    """The window's event feed as a source for ``record_takes``: the GUI thread ``push``es each
    frame's events with the stream time they reached; the session thread iterates. ``clock_us``
    is the time pushed with the chunk being handed over. Bounded: beyond ``max_items`` frames
    waiting, a frame is dropped and its events counted in ``dropped_events`` (a take then has a
    gap; the window says so). ``end()`` ends the iteration within ``FEED_POLL_S``."""

    def __init__(self, sensor_size: SensorSize, max_items: int = MAX_FEED_ITEMS) -> None:
        self.sensor_size = SensorSize(*sensor_size)
        self.dropped_events = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_items)
        self._ended = threading.Event()
        self._clock_us: int | None = None

    def push(self, events: np.ndarray, time_us: int) -> bool:
        """Hand over a chunk and the stream time (µs) reached with it; False when it was dropped."""
        try:
            self._queue.put_nowait((events, int(time_us)))
            return True
        except queue.Full:
            self.dropped_events += len(events)
            return False

    def end(self) -> None:
        self._ended.set()

    def clock_us(self) -> int | None:
        return self._clock_us

    def __iter__(self) -> Iterator[np.ndarray]:
        while not self._ended.is_set():
            try:
                events, self._clock_us = self._queue.get(timeout=FEED_POLL_S)
            except queue.Empty:
                continue
            yield events


class TakeSession(QtCore.QObject):
    """One guided session (or a redo): ``record_takes`` on a thread, fed through a ``FeedSource``.

    Signals (delivered in the GUI thread): ``prompted(text)`` (``TakeRecorder``'s prompts),
    ``cued(class, start_us, end_us)`` (a take is scheduled: a directed source performs it),
    ``finished(reason)`` ("done", "stopped", or "recording stopped: ...").

    Args:
        plan: what to record.
        folder: where (shared with the review panel).
        sensor_size: the source's pixels.
        takes, numbers: record these ``(class, split)`` under these numbers (a redo); default the plan's.
    """

    prompted = QtCore.Signal(str)
    cued = QtCore.Signal(str, object, object)  # objects: stream µs outgrow a C int after 35 min
    finished = QtCore.Signal(str)

    def __init__(self, plan: TakePlan, folder: TakeFolder, sensor_size: SensorSize,
                 takes: list[tuple[str, str]] | None = None, numbers: list[int] | None = None,
                 parent: QtCore.QObject | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.plan = plan
        self.feed_source = FeedSource(sensor_size)
        self.recorder = TakeRecorder(plan, folder, SensorSize(*sensor_size), on_prompt=self.prompted.emit,
                                     on_cue=self.cued.emit, takes=takes, numbers=numbers)  # fmt: skip
        self.time_us: int | None = None  # the newest stream time pushed
        self.reason: str | None = None  # why it ended, once it has
        self._thread = threading.Thread(target=self._run, name="take-session", daemon=True)

    def start(self) -> "TakeSession":
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def progress(self) -> float:
        return self.recorder.progress

    @property
    def sensor_size(self) -> SensorSize:
        return self.feed_source.sensor_size

    def push(self, events: np.ndarray, time_us: int) -> None:
        self.time_us = int(time_us) if self.time_us is None else max(self.time_us, int(time_us))
        self.feed_source.push(events, self.time_us)

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """End the feed; the take being recorded is dropped, those recorded stay. Waits for the thread."""
        self.feed_source.end()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(wait_s)

    def _run(self) -> None:
        reason = "done"
        try:
            record_takes(self.feed_source, self.recorder)
            if not self.recorder.done:
                reason = "stopped"
        except Exception as error:  # a file that cannot be written, time that went back: say it, keep the rest
            log.error("take session stopped: %s", error)
            reason = f"recording stopped: {error}"
        finally:
            self.recorder.close()  # drops a take left half-written
        self.reason = reason
        self.finished.emit(reason)


# --- the desk: sessions, cues, review and fine-tuning for a window ----------------------------------


@dataclass
class _Pending:
    """A session waiting for its source (restarted, or the first events)."""

    plan: TakePlan
    takes: list[tuple[str, str]] | None
    numbers: list[int] | None
    directed: bool
    needs_status: bool  # the source was restarted: wait for the new stage's status reply
    since_s: float  # monotonic


class TakeDesk(QtCore.QObject):
    """Guided sessions, the review panel and fine-tuning for a ``MainWindow`` (module docstring).

    Args:
        window: the ``MainWindow`` (its event view, source control and model loading are used).
    """

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.window = window
        self.folder: TakeFolder | None = None
        self.plan: TakePlan | None = None  # the last session's (a redo takes its countdown)
        self.gestures: dict[str, int | None] = {}
        self.live_spec: str | None = None  # the source the takes were recorded from
        self.directed = False  # the current session cues a directed simulator
        self.session: TakeSession | None = None
        self.pending: _Pending | None = None
        self._warned_dropped = 0
        self._restarting = False
        self.overlay = PromptOverlay(window.event_view)
        self.panel = ReviewPanel(self)
        self.dock = QtWidgets.QDockWidget("Takes", window)
        self.dock.setObjectName("takes-dock")
        self.dock.setWidget(self.panel)
        self.dock.setAllowedAreas(QtCore.Qt.DockWidgetArea.BottomDockWidgetArea | QtCore.Qt.DockWidgetArea.RightDockWidgetArea)
        window.addDockWidget(QtCore.Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        self.dock.hide()

    # -- state --

    @property
    def busy(self) -> bool:
        """A session runs or waits for its source."""
        return self.pending is not None or (self.session is not None and self.session.reason is None)

    def default_folder(self) -> Path:
        return self.window.output_dir / f"takes-{_timestamp()}"

    def can_direct(self, spec: str) -> bool:
        """Whether a session on ``spec`` can cue a directed simulator: the simulator, and a way to
        restart the source as ``sim:directed`` (or it runs as one) and to send it commands."""
        if not is_simulator(spec) or self.window.control is None:
            return False
        return spec == DIRECTED_SPEC or self.window.source_control is not None

    # -- starting --

    def open_setup(self) -> SessionSetup | None:
        """Ask for a session (``TakeSetupDialog``) and start it; None when cancelled."""
        if self.busy:
            self.stop()
            return None
        dialog = TakeSetupDialog(self.window, folder=self.default_folder(), simulator=self.can_direct(self._live_candidate()),
                                 plan=self.plan, gestures=self.gestures)  # fmt: skip
        if dialog.exec() != QtWidgets.QDialog.DialogCode.Accepted:
            return None
        setup = dialog.setup()
        try:
            self.start(setup)
        except ValueError as error:  # a folder whose labels.csv is not the folder format
            self.window.show_state(f"cannot record into {setup.folder}: {str(error).splitlines()[0]}")
            return None
        return setup

    def start(self, setup: SessionSetup) -> None:
        """Start a guided session (the takes go to ``setup.folder``, continued if it has takes)."""
        if self.busy:
            raise ValueError("a session is already running; stop it first")
        self.open_folder(setup.folder)
        self.plan = setup.plan
        self.gestures.update(default_gestures(setup.plan.classes))
        self.gestures.update(setup.gestures)
        self._begin(setup.plan, None, None)

    def redo(self, number: int) -> None:
        """Record take ``number`` again: same class, number and split; its old file is replaced."""
        if self.busy or self.folder is None:
            return
        rows = [take.row for take in self.folder.takes() if take.number == number]
        if not rows:
            return
        row = rows[0]
        spec = self._live_candidate()
        if spec.startswith("file:"):
            self.window.show_state("a redo records live: choose the camera or the simulator as the source first")
            return
        countdown = self.plan.countdown_s if self.plan is not None else 3
        plan = redo_plan(row, countdown, self.can_direct(spec))
        self._begin(plan, [(row.label, row.split)], [number])

    def _live_candidate(self) -> str:
        """The source a session records from: the window's, unless it replays a file and the
        takes were recorded live (then that live source again)."""
        spec = self.window.source_spec
        if spec.startswith("file:") and self.live_spec is not None:
            return self.live_spec
        return spec

    def _begin(self, plan: TakePlan, takes: list[tuple[str, str]] | None, numbers: list[int] | None) -> None:
        spec = self._live_candidate()
        directed = self.can_direct(spec)
        target = DIRECTED_SPEC if directed else spec
        restarted = False
        if target != self.window.source_spec:
            self._restarting = True
            try:
                restarted = self.window.restart_source(target)
            finally:
                self._restarting = False
            if not restarted:
                self.overlay.hide()
                return
        self.live_spec = target
        self.directed = directed
        self.pending = _Pending(plan, takes, numbers, directed, restarted, time.monotonic())
        self.overlay.set_progress(0.0)
        self.overlay.show_prompt("waiting for the source…", self._source_detail(), "waiting")
        self.panel.set_busy(True)
        self.window.takes_started()

    def _source_detail(self) -> str:
        if self.directed:
            return "the simulated person performs on cue"
        return f"perform in front of {self.window.source_name or 'the camera'}"

    def _ready(self) -> bool:
        pending = self.pending
        if not pending.needs_status and not pending.directed:
            return True
        status = self.window.source_status
        if status is None:
            return False
        return not pending.directed or "perform" in status.get("controls", ())

    # -- the feed (the window's fast timer) --

    def feed(self, packets: list[tuple[np.ndarray, SensorSize]], clock: dict | None) -> None:
        """This frame's event packets and the source's newest clock message (or None)."""
        if self.pending is not None:
            if not packets or not self._ready():
                return
            self._start_session(SensorSize(*packets[-1][1]))
        session = self.session
        if session is None or session.reason is not None:
            return
        chunks = []
        for events, sensor in packets:
            if SensorSize(*sensor) != session.sensor_size:
                self._abort(f"the sensor changed ({session.sensor_size} -> {SensorSize(*sensor)})")
                return
            if session.time_us is not None and int(events["t"][0]) < session.time_us:
                self._abort("the stream went back in time (a new stream began)")
                return
            chunks.append(events)
        time_us = session.time_us
        if chunks:
            newest = int(chunks[-1]["t"][-1])
            time_us = newest if time_us is None else max(time_us, newest)
        if clock is not None and isinstance(clock.get("time_us"), int):
            time_us = clock["time_us"] if time_us is None else max(time_us, clock["time_us"])
        if time_us is None:
            return
        events = np.concatenate(chunks, dtype=EVENT_DTYPE) if chunks else np.zeros(0, EVENT_DTYPE)  # keeps the padding
        session.push(events, time_us)

    def _start_session(self, sensor: SensorSize) -> None:
        pending, self.pending = self.pending, None
        session = TakeSession(pending.plan, self.folder, sensor, pending.takes, pending.numbers, parent=self)
        session.prompted.connect(self._on_prompt)
        session.cued.connect(self._on_cue)
        session.finished.connect(self._on_finished)
        self.session = session
        self._warned_dropped = 0
        session.start()
        log.info("take session started: %d takes into %s", len(session.recorder.takes), self.folder.folder)

    # -- the slow timer --

    def tick(self) -> None:
        if self.pending is not None and time.monotonic() - self.pending.since_s > SOURCE_WAIT_S:
            self.pending = None
            self._finish_ui(f"the source sent nothing for {SOURCE_WAIT_S:g} s: session not started")
            return
        session = self.session
        if session is None or session.reason is not None:
            return
        self.overlay.set_progress(session.progress)
        dropped = session.feed_source.dropped_events
        if dropped > self._warned_dropped:
            self._warned_dropped = dropped
            self.window.show_state(f"takes: {dropped} events dropped (writing fell behind): takes may have gaps")

    # -- prompts and cues (signals from the session thread) --

    def _on_prompt(self, text: str) -> None:
        session = self.session
        if session is None or self.sender() is not session:
            return
        recorder = session.recorder
        total = len(recorder.takes)
        index = min(round(recorder.progress * total), total - 1)
        name, split = recorder.takes[index]
        detail = f"take {index + 1} of {total} · {split} · {self.folder.path_of(recorder.numbers[index], name).name}"
        if text.startswith("perform"):
            phase = "countdown"
        elif text.startswith("recording"):
            phase = "recording"
        elif text == "done":
            phase, detail = "done", f"{len(recorder.recorded)} takes in {self.folder.folder}"
        else:  # "pause", or a take without events
            phase = "pause"
            detail = f"next: {name} (take {index + 1} of {total})"
            self.panel.refresh()
        self.overlay.set_progress(session.progress)
        self.overlay.show_prompt(text, detail, phase)

    def _on_cue(self, name: str, start_us: int, end_us: int) -> None:
        """A take is scheduled: the directed simulator performs the class's gesture then."""
        if not self.directed or self.sender() is not self.session:
            return
        gesture = self.gestures.get(name)
        if gesture is None:
            return  # "stand still"
        command = {"cmd": "perform", "label": int(gesture), "start_us": int(start_us), "end_us": int(end_us)}
        if not self.window.send_control(command):
            self.window.show_state(f"cannot cue the simulator for {name}: its control socket is not connected")

    def _on_finished(self, reason: str) -> None:
        session = self.sender()
        if session is not self.session:
            return
        count = len(session.recorder.recorded)
        if reason == "done":
            message = f"takes: {count} recorded in {self.folder.folder}"
        elif reason == "stopped":
            message = f"takes: stopped; the {count} recorded are kept in {self.folder.folder}"
        else:
            message = f"takes: {reason}; the {count} recorded are kept"
        self._finish_ui(message, alarm=reason not in ("done", "stopped"))

    def _finish_ui(self, message: str, alarm: bool = True) -> None:
        self.panel.set_busy(False)
        self.panel.refresh()
        self.dock.show()  # review time
        self.window.show_state(message, alarm=alarm)
        self.window.takes_finished()
        if self.overlay.phase == "done":
            QtCore.QTimer.singleShot(DONE_SHOWN_MS, self._hide_done)
        else:
            self.overlay.hide()

    def _hide_done(self) -> None:
        if not self.busy:
            self.overlay.hide()

    # -- stopping --

    def _abort(self, why: str) -> None:
        session = self.session
        if session is not None and session.reason is None:
            session.feed_source.end()
            session.reason = f"recording stopped: {why}"
            session.stop()
            self.session = None
            self._finish_ui(f"takes: {why}; session stopped, the {len(session.recorder.recorded)} recorded are kept")

    def stop(self) -> None:
        """Stop the session (or stop waiting for its source); what is recorded stays."""
        if self.pending is not None:
            self.pending = None
            self._finish_ui("takes: session cancelled", alarm=False)
            return
        session = self.session
        if session is not None and session.reason is None:
            session.stop()  # its finished signal reports it

    def source_changed(self) -> None:
        """The window restarted the source (not for a session): a running session stops."""
        if self._restarting:
            return
        if self.pending is not None:
            self.pending = None
            self._finish_ui("takes: the source changed; session cancelled")
        elif self.session is not None and self.session.reason is None:
            self._abort("the source changed")

    def close(self) -> None:
        """The window closes: stop a session (its recorded takes are on disk) and a fine-tuning run."""
        self.pending = None
        if self.session is not None:
            self.session.stop()
        self.panel.finetune.kill()

    # -- review actions --

    def open_folder(self, folder: Path) -> TakeFolder:
        folder = Path(folder)
        if self.folder is None or self.folder.folder.resolve() != folder.resolve():
            self.folder = TakeFolder(folder)
            labels = tuple(dict.fromkeys(take.row.label for take in self.folder.takes()))
            for name, gesture in default_gestures(labels).items():  # a redo of a take the simulator performs
                self.gestures.setdefault(name, gesture)
        self.panel.refresh()
        self.dock.show()
        return self.folder

    def replay(self, number: int) -> None:
        """Replay take ``number``: the source stage restarts on its file."""
        take = self._take(number)
        if take is not None and not self.busy:
            self.window.restart_source(f"file:{self.folder.folder / take.row.file}")

    def delete(self, number: int) -> None:
        if self._take(number) is not None and not self.busy:
            self.folder.delete(number)
            self.panel.refresh()

    def move(self, number: int, start_us: int, end_us: int) -> bool:
        """Move take ``number``'s labelled segment (the file's clock, µs); False (and why in the
        state line) when the boundaries are not valid."""
        if self._take(number) is None or self.busy:
            return False
        try:
            self.folder.move(number, start_us, end_us)
        except ValueError as error:
            self.window.show_state(f"take {number}: {error}")
            return False
        return True

    def _take(self, number: int) -> Take | None:
        if self.folder is None:
            return None
        return next((take for take in self.folder.takes() if take.number == number), None)


# --- the setup dialog ------------------------------------------------------------------------------


class TakeSetupDialog(QtWidgets.QDialog):
    """Asks for a guided session: classes, takes per class, take length, pause, countdown, test
    takes, the folder and (``simulator``) the gesture the simulated person performs per class.

    Args:
        parent: the window.
        folder: the suggested session folder.
        simulator: the camera is the directed simulator (the per-class gesture table is shown).
        plan: the previous session's plan (its values are the defaults).
        gestures: the previous session's gestures.
    """

    def __init__(self, parent: QtWidgets.QWidget | None, *, folder: Path, simulator: bool,
                 plan: TakePlan | None = None, gestures: dict[str, int | None] | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.setWindowTitle("Record takes")
        self.simulator = simulator
        plan = plan or TakePlan()
        self._gestures = dict(gestures or {})
        self.gestures_box = QtWidgets.QRadioButton(f"The {len(GESTURE_CLASSES)} gestures of DVS128 Gesture")
        self.own_box = QtWidgets.QRadioButton("My own classes:")
        self.own_names = QtWidgets.QLineEdit()
        self.own_names.setPlaceholderText("thumbs up, stop, swipe left")
        own = plan.classes != GESTURE_CLASSES
        (self.own_box if own else self.gestures_box).setChecked(True)
        if own:
            self.own_names.setText(", ".join(plan.classes))
        self.takes_box = _spin(1, 50, plan.takes_per_class, " per class")
        self.take_box = _double_spin(0.5, 60.0, plan.take_s, " s")
        self.pause_box = _double_spin(0.0, 60.0, plan.pause_s, " s")
        self.countdown_box = _spin(1 if simulator else 0, 10, max(plan.countdown_s, 1 if simulator else 0), " s")
        self.test_box = _spin(0, 50, plan.test_every, "")
        self.test_box.setSpecialValueText("no test takes")
        self.test_box.setPrefix("every ")
        self.test_box.setSuffix(". take of a class")
        self.folder_edit = QtWidgets.QLineEdit(str(folder))
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse())
        folder_row = QtWidgets.QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)

        form = QtWidgets.QFormLayout()
        classes = QtWidgets.QVBoxLayout()
        classes.addWidget(self.gestures_box)
        own_row = QtWidgets.QHBoxLayout()
        own_row.addWidget(self.own_box)
        own_row.addWidget(self.own_names, 1)
        classes.addLayout(own_row)
        form.addRow("Classes", classes)
        form.addRow("Takes", self.takes_box)
        form.addRow("Take length", self.take_box)
        form.addRow("Pause between takes", self.pause_box)
        form.addRow("Countdown", self.countdown_box)
        form.addRow("Test split", self.test_box)
        form.addRow("Session folder", folder_row)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        self.gesture_table = QtWidgets.QTableWidget(0, 2)
        self.gesture_table.setHorizontalHeaderLabels(["class", "the simulated person performs"])
        self.gesture_table.horizontalHeader().setStretchLastSection(True)
        self.gesture_table.verticalHeader().hide()
        if simulator:
            group = QtWidgets.QGroupBox("Simulator: what the person does for each class")
            group_layout = QtWidgets.QVBoxLayout(group)
            group_layout.addWidget(self.gesture_table)
            layout.addWidget(group)
        self.error_label = QtWidgets.QLabel("")
        self.error_label.setStyleSheet("color: #ff6b6b;")
        self.error_label.setWordWrap(True)
        layout.addWidget(self.error_label)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                             | QtWidgets.QDialogButtonBox.StandardButton.Cancel)  # fmt: skip
        buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setText("Start")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        for signal in (self.gestures_box.toggled, self.own_names.textChanged):
            signal.connect(lambda *_: self._fill_gesture_table())
        self.own_names.textEdited.connect(lambda _: self.own_box.setChecked(True))
        self._fill_gesture_table()
        self.resize(560, 520 if simulator else 320)

    def classes(self) -> tuple[str, ...]:
        return GESTURE_CLASSES if self.gestures_box.isChecked() else class_names(self.own_names.text())

    def _fill_gesture_table(self) -> None:
        """One row per class: a combo of the 11 gestures and "stand still" (defaults: ``default_gestures``)."""
        for row in range(self.gesture_table.rowCount()):  # keep what was chosen so far
            name = self.gesture_table.item(row, 0).text()
            self._gestures[name] = self.gesture_table.cellWidget(row, 1).currentData()
        classes = self.classes()
        defaults = default_gestures(classes)
        self.gesture_table.setRowCount(len(classes))
        for row, name in enumerate(classes):
            item = QtWidgets.QTableWidgetItem(name)
            item.setFlags(item.flags() & ~QtCore.Qt.ItemFlag.ItemIsEditable)
            self.gesture_table.setItem(row, 0, item)
            combo = QtWidgets.QComboBox()
            for index, gesture in enumerate(GESTURE_CLASSES):
                combo.addItem(gesture, index)
            combo.addItem(STAND_STILL, None)
            chosen = self._gestures.get(name, defaults[name])
            combo.setCurrentIndex(len(GESTURE_CLASSES) if chosen is None else chosen)
            self.gesture_table.setCellWidget(row, 1, combo)

    def gestures(self) -> dict[str, int | None]:
        """Class -> gesture index (None: stand still), as chosen in the table."""
        return {self.gesture_table.item(row, 0).text(): self.gesture_table.cellWidget(row, 1).currentData()
                for row in range(self.gesture_table.rowCount())}  # fmt: skip

    def setup(self) -> SessionSetup:
        """The session asked for; ValueError naming what is wrong."""
        folder = self.folder_edit.text().strip()
        if not folder:
            raise ValueError("choose a session folder")
        plan = TakePlan(self.classes(), self.takes_box.value(), self.take_box.value(), self.pause_box.value(),
                        self.countdown_box.value(), self.test_box.value())  # fmt: skip
        return SessionSetup(plan, Path(folder).expanduser(), self.gestures() if self.simulator else {})

    def accept(self) -> None:
        try:
            self.setup()
        except ValueError as error:
            self.error_label.setText(str(error))
            return
        super().accept()

    def _browse(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Session folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)


def _spin(low: int, high: int, value: int, suffix: str) -> QtWidgets.QSpinBox:
    box = QtWidgets.QSpinBox()
    box.setRange(low, high)
    box.setValue(min(max(value, low), high))
    box.setSuffix(suffix)
    return box


def _double_spin(low: float, high: float, value: float, suffix: str) -> QtWidgets.QDoubleSpinBox:
    box = QtWidgets.QDoubleSpinBox()
    box.setRange(low, high)
    box.setDecimals(1)
    box.setSingleStep(0.5)
    box.setValue(min(max(value, low), high))
    box.setSuffix(suffix)
    return box


# --- the review panel ------------------------------------------------------------------------------


class TakeActivity:
    """A take file's first and last event (µs) and its event counts per ``ACTIVITY_BIN_US``, read
    once (bounded memory); cached per file version by ``take_activity``."""

    def __init__(self, path: Path) -> None:
        from stream.formats import open_events

        self.first_us: int | None = None
        self.last_us: int | None = None
        counts = np.zeros(0, dtype=np.int64)
        try:
            with open_events(path) as reader:
                for chunk in reader:
                    if not len(chunk):
                        continue
                    if self.first_us is None:
                        self.first_us = int(chunk["t"][0])
                    self.last_us = int(chunk["t"][-1])
                    bins = np.bincount((chunk["t"] - self.first_us) // ACTIVITY_BIN_US)
                    if len(bins) > len(counts):
                        counts = np.pad(counts, (0, len(bins) - len(counts)))
                    counts[: len(bins)] += bins
        except (OSError, ValueError) as error:  # a missing or damaged take: shown without activity
            log.warning("cannot read %s: %s", path, error)
        self.rate = counts / (ACTIVITY_BIN_US * 1e-6)  # events per second per bin


_ACTIVITY_CACHE: dict[tuple[str, int, int], TakeActivity] = {}


def take_activity(path: Path) -> TakeActivity:
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return TakeActivity(path)
    if key not in _ACTIVITY_CACHE:
        if len(_ACTIVITY_CACHE) > 512:
            _ACTIVITY_CACHE.clear()
        _ACTIVITY_CACHE[key] = TakeActivity(path)
    return _ACTIVITY_CACHE[key]


class TakeRow(QtWidgets.QFrame):
    """One take on the review timeline: number, class and split; its event rate over the file
    with the labelled segment (drag its edges to move them); start and end in ms from the file's
    first event; Replay, Redo and Delete.

    Args:
        desk: the ``TakeDesk`` that carries out the actions.
        take: the take (number and label row).
        activity: its file's ``TakeActivity``.
        span_s: the timeline's length (the longest take), for every row alike.
    """

    def __init__(self, desk: TakeDesk, take: Take, activity: TakeActivity, span_s: float) -> None:
        super().__init__()
        self.desk = desk
        self.number = take.number
        self.row = take.row
        self.origin_us = row_origin(activity, take)
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.setObjectName(f"take-{take.number}")
        info = QtWidgets.QLabel(f"<b>#{take.number}</b> {_html(take.row.label)}<br>"
                                f"<span style='color:#a0a0aa'>{take.row.split or 'no split'}</span>")  # fmt: skip
        info.setFixedWidth(170)
        info.setWordWrap(True)
        info.setToolTip(take.row.file)

        self.plot = pg.PlotWidget()
        self.plot.setFixedHeight(58)
        self.plot.setMouseEnabled(False, False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.plot.hideAxis("left")
        self.plot.getAxis("bottom").setHeight(18)
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        rate = activity.rate
        if len(rate):
            x = np.arange(len(rate) + 1) * ACTIVITY_BIN_US * 1e-6
            self.plot.plot(x, np.append(rate, 0.0), stepMode=None, fillLevel=0, pen=pg.mkPen(150, 150, 160),
                           brush=pg.mkBrush(120, 120, 135, 90))  # fmt: skip
            self.plot.setYRange(0, max(float(rate.max()), 1.0) * 1.1, padding=0)
        self.plot.setXRange(0, span_s, padding=0.01)
        start_s, end_s = self._seconds(take.row.start_us), self._seconds(take.row.end_us)
        self.region = pg.LinearRegionItem((start_s, end_s), brush=pg.mkBrush(SPLIT_BRUSHES.get(take.row.split, SPLIT_BRUSHES[""])),
                                          pen=pg.mkPen(255, 179, 71, width=2), bounds=(0, None))  # fmt: skip
        self.region.setZValue(10)
        self.plot.addItem(self.region)
        self.name_text = pg.TextItem(take.row.label, color=(240, 240, 240), anchor=(0, 0))
        self.name_text.setZValue(11)
        self.plot.addItem(self.name_text)
        self.region.sigRegionChangeFinished.connect(self._region_moved)

        self.start_box = self._ms_box("labelled segment start, ms from the take's first event")
        self.end_box = self._ms_box("labelled segment end, ms from the take's first event")
        self.replay_button = QtWidgets.QPushButton("▶ Replay")
        self.replay_button.setToolTip("replay this take (the source restarts on its file)")
        self.replay_button.clicked.connect(lambda: desk.replay(self.number))
        self.redo_button = QtWidgets.QPushButton("↻ Redo")
        self.redo_button.setToolTip("record this take again (same class, number and split)")
        self.redo_button.clicked.connect(lambda: desk.redo(self.number))
        self.delete_button = QtWidgets.QPushButton("✕ Delete")
        self.delete_button.setToolTip("delete this take (its file and its label)")
        self.delete_button.clicked.connect(lambda: self._delete())

        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(info)
        layout.addWidget(self.plot, 1)
        boxes = QtWidgets.QFormLayout()
        boxes.setContentsMargins(0, 0, 0, 0)
        boxes.addRow("start", self.start_box)
        boxes.addRow("end", self.end_box)
        layout.addLayout(boxes)
        for button in (self.replay_button, self.redo_button, self.delete_button):
            layout.addWidget(button)
        self._show_segment(take.row.start_us, take.row.end_us)
        self.start_box.valueChanged.connect(self._boxes_changed)
        self.end_box.valueChanged.connect(self._boxes_changed)

    def _ms_box(self, tip: str) -> QtWidgets.QSpinBox:
        box = QtWidgets.QSpinBox()
        box.setRange(0, 3_600_000)
        box.setSuffix(" ms")
        box.setKeyboardTracking(False)  # typed values count on Enter or leaving the box
        box.setToolTip(tip)
        box.setMinimumWidth(96)
        return box

    def _seconds(self, time_us: int) -> float:
        return (time_us - self.origin_us) * 1e-6

    def _show_segment(self, start_us: int, end_us: int) -> None:
        """Spin boxes, region and name at ``start_us..end_us``, without writing anything."""
        self.row = self.row._replace(start_us=int(start_us), end_us=int(end_us))
        for box, time_us in ((self.start_box, start_us), (self.end_box, end_us)):
            box.blockSignals(True)
            box.setValue(round((time_us - self.origin_us) / 1000))
            box.blockSignals(False)
        self.region.blockSignals(True)
        self.region.setRegion((self._seconds(start_us), self._seconds(end_us)))
        self.region.blockSignals(False)
        self.name_text.setPos(self._seconds(start_us), self.plot.getViewBox().viewRange()[1][1])

    def _boxes_changed(self) -> None:
        start_us, end_us = self.row.start_us, self.row.end_us  # an untouched boundary keeps its µs
        if self.sender() is self.start_box:
            start_us = self.origin_us + self.start_box.value() * 1000
        else:
            end_us = self.origin_us + self.end_box.value() * 1000
        self.move_to(start_us, end_us)

    def _region_moved(self) -> None:
        low, high = self.region.getRegion()
        self.move_to(self.origin_us + round(low * 1e6), self.origin_us + round(high * 1e6))

    def move_to(self, start_us: int, end_us: int) -> bool:
        """Move the labelled segment (µs, the file's clock) and write it; the old one stays if refused."""
        moved = self.desk.move(self.number, int(start_us), int(end_us))
        if moved:
            self._show_segment(start_us, end_us)
        else:
            self._show_segment(self.row.start_us, self.row.end_us)
        return moved

    def _delete(self) -> None:
        answer = QtWidgets.QMessageBox.question(self, "Delete take", f"Delete take {self.number} ({self.row.label}) "
                                                f"and its file {self.row.file}?")  # fmt: skip
        if answer == QtWidgets.QMessageBox.StandardButton.Yes:
            self.desk.delete(self.number)

    def set_busy(self, busy: bool) -> None:
        for widget in (self.start_box, self.end_box, self.replay_button, self.redo_button, self.delete_button):
            widget.setEnabled(not busy)
        self.region.setMovable(not busy)


def _html(text: str) -> str:
    return html.escape(text)


class FineTuneRunner(QtCore.QObject):
    """``spikeformer-live finetune`` in a ``QProcess``: ``progressed(epoch, epochs)`` from its
    "epoch k/N" lines, ``finished(exit_code, output)`` at its end (output: stdout and stderr)."""

    progressed = QtCore.Signal(int, int)
    line = QtCore.Signal(str)
    finished = QtCore.Signal(int, str)

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.process: QtCore.QProcess | None = None
        self.output: list[str] = []
        self.command: list[str] = []
        self._partial = ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.state() != QtCore.QProcess.ProcessState.NotRunning

    def start(self, command: list[str]) -> None:
        if self.running:
            raise ValueError("a fine-tuning run is already going")
        self.command = list(command)
        self.output, self._partial = [], ""
        process = QtCore.QProcess(self)
        process.setProcessChannelMode(QtCore.QProcess.ProcessChannelMode.MergedChannels)
        environment = QtCore.QProcessEnvironment.systemEnvironment()
        paths = [str(REPO_ROOT)] + [p for p in environment.value("PYTHONPATH", "").split(os.pathsep) if p]
        environment.insert("PYTHONPATH", os.pathsep.join(paths))
        environment.insert("PYTHONUNBUFFERED", "1")
        process.setProcessEnvironment(environment)
        process.readyReadStandardOutput.connect(self._read)
        process.finished.connect(self._finished)
        process.errorOccurred.connect(self._failed)
        self.process = process
        process.start(command[0], command[1:])

    def _read(self) -> None:
        text = self._partial + bytes(self.process.readAllStandardOutput()).decode("utf-8", errors="replace")
        *lines, self._partial = text.replace("\r", "\n").split("\n")
        for line in lines:
            self._take_line(line)

    def _take_line(self, line: str) -> None:
        if not line.strip():
            self.output.append(line)
            return
        self.output.append(line)
        self.line.emit(line)
        match = EPOCH_LINE.search(line)
        if match and line.lstrip().startswith("epoch") and ":" in line:
            self.progressed.emit(int(match.group(1)), int(match.group(2)))

    def _finished(self, code: int, status: QtCore.QProcess.ExitStatus) -> None:
        self._read()
        if self._partial:
            self._take_line(self._partial)
            self._partial = ""
        crashed = status == QtCore.QProcess.ExitStatus.CrashExit
        self.finished.emit(-1 if crashed else int(code), "\n".join(self.output))

    def _failed(self, error: QtCore.QProcess.ProcessError) -> None:
        if error == QtCore.QProcess.ProcessError.FailedToStart:
            self.output.append(f"error: cannot start {self.command[0]}: {self.process.errorString()}")
            self.finished.emit(-1, "\n".join(self.output))

    def kill(self) -> None:
        if self.running:
            self.process.kill()
            self.process.waitForFinished(3000)


class ReviewPanel(QtWidgets.QWidget):
    """The session's takes on a timeline (``TakeRow`` each) with a header (folder, counts, Open
    folder…, Record takes…) and the fine-tuning controls under them (epochs, Fine-tune, progress,
    the before/after table, Use the new model)."""

    def __init__(self, desk: TakeDesk) -> None:
        super().__init__()
        self.desk = desk
        self.rows: list[TakeRow] = []
        self.busy = False
        self.finetuned: Path | None = None  # the newest fine-tuned checkpoint
        self._finetune_export: Path | None = None

        self.title = QtWidgets.QLabel("No session yet: record takes, or open a session folder.")
        self.title.setWordWrap(True)
        open_button = QtWidgets.QPushButton("Open folder…")
        open_button.setToolTip("review an existing session folder (its labels.csv)")
        open_button.clicked.connect(lambda: self._choose_folder())
        self.record_button = QtWidgets.QPushButton("● Record takes…")
        self.record_button.clicked.connect(lambda: desk.open_setup())
        header = QtWidgets.QHBoxLayout()
        header.addWidget(self.title, 1)
        header.addWidget(open_button)
        header.addWidget(self.record_button)
        self.legend = QtWidgets.QLabel("Each take: its events per second over the file (x: seconds from its first "
                                       "event); the labelled segment is coloured (blue: train, green: test): drag its "
                                       "edges or type start and end.")  # fmt: skip
        self.legend.setStyleSheet("color: #a0a0aa;")
        self.legend.setWordWrap(True)

        self.rows_widget = QtWidgets.QWidget()
        self.rows_layout = QtWidgets.QVBoxLayout(self.rows_widget)
        self.rows_layout.setContentsMargins(0, 0, 0, 0)
        self.rows_layout.setSpacing(3)
        self.rows_layout.addStretch(1)
        self.scroll = QtWidgets.QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.rows_widget)
        self.scroll.setMinimumHeight(140)
        self.scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # rows shrink instead

        self.finetune = FineTuneRunner(self)
        self.finetune.progressed.connect(self._epoch)
        self.finetune.line.connect(lambda line: self.finetune_status.setText(line[:160]))
        self.finetune.finished.connect(self._finetune_finished)
        self.epochs_box = _spin(0, 200, 4, "")  # training.finetune.DEFAULT_EPOCHS (not imported: it loads torch)
        self.epochs_box.setPrefix("epochs ")
        self.epochs_box.setSpecialValueText("no training: fit the noise filter only")  # finetune --epochs 0
        self.finetune_button = QtWidgets.QPushButton("Fine-tune the model on these takes")
        self.finetune_button.setToolTip("spikeformer-live finetune --data folder:<session>/labels.csv (the current "
                                        "model is the starting point)")  # fmt: skip
        self.finetune_button.clicked.connect(lambda: self.start_finetune())
        self.finetune_progress = QtWidgets.QProgressBar()
        self.finetune_progress.setRange(0, 1)
        self.finetune_progress.setValue(0)
        self.finetune_progress.setFormat("epoch %v / %m")
        self.finetune_progress.setMaximumWidth(260)
        self.finetune_progress.hide()  # shown once a run starts
        self.finetune_status = QtWidgets.QLabel("")
        self.use_button = QtWidgets.QPushButton("Use the new model")
        self.use_button.setStyleSheet("font-weight: bold;")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(lambda: self.use_finetuned())
        self.result = QtWidgets.QPlainTextEdit()
        self.result.setReadOnly(True)
        self.result.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.result.setMaximumHeight(110)
        self.result.hide()
        finetune_row = QtWidgets.QHBoxLayout()
        finetune_row.addWidget(self.epochs_box)
        finetune_row.addWidget(self.finetune_button)
        finetune_row.addWidget(self.finetune_progress)
        finetune_row.addWidget(self.finetune_status, 1)
        finetune_row.addWidget(self.use_button)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addLayout(header)
        layout.addWidget(self.legend)
        layout.addWidget(self.scroll, 1)
        layout.addLayout(finetune_row)
        layout.addWidget(self.result)
        self._enable()

    # -- the takes --

    def refresh(self) -> None:
        """Rebuild the rows from the session folder."""
        for row in self.rows:
            self.rows_layout.removeWidget(row)
            row.hide()
            row.deleteLater()
        self.rows = []
        folder = self.desk.folder
        if folder is None:
            self._enable()
            return
        takes = folder.takes()
        activities = [take_activity(folder.folder / take.row.file) for take in takes]
        span_s = 0.1 + max(((max(take.row.end_us, activity.last_us or 0) - row_origin(activity, take)) * 1e-6
                            for take, activity in zip(takes, activities)), default=1.0)  # fmt: skip
        for take, activity in zip(takes, activities):
            row = TakeRow(self.desk, take, activity, span_s)
            row.set_busy(self.busy)
            self.rows_layout.insertWidget(self.rows_layout.count() - 1, row)
            self.rows.append(row)
        splits = [take.row.split for take in takes]
        classes = sorted({take.row.label for take in takes})
        counts = (f"{len(takes)} takes ({splits.count('train')} train, {splits.count('test')} test) · {len(classes)} "
                  f"classes: {_html(', '.join(classes))}") if takes else "no takes yet"  # fmt: skip
        self.title.setText(f"<b>{_html(str(folder.folder))}</b> — {counts}")
        self._enable()

    def row(self, number: int) -> TakeRow | None:
        return next((row for row in self.rows if row.number == number), None)

    def set_busy(self, busy: bool) -> None:
        """A session runs: the takes cannot be changed meanwhile."""
        self.busy = busy
        for row in self.rows:
            row.set_busy(busy)
        self.record_button.setText("■ Stop session" if busy else "● Record takes…")
        self._enable()

    def _enable(self) -> None:
        has_takes = bool(self.rows)
        self.finetune_button.setEnabled(has_takes and not self.busy and not self.finetune.running)

    def _choose_folder(self) -> None:
        start = str(self.desk.folder.folder if self.desk.folder else self.desk.window.output_dir)
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Open a session folder", start)
        if folder:
            try:
                self.desk.open_folder(Path(folder))
            except ValueError as error:  # a labels.csv that is not the folder format
                self.desk.window.show_state(f"cannot open {folder}: {error}")

    # -- fine-tuning --

    def finetune_paths(self) -> tuple[Path, Path]:
        """Where a fine-tuning run of this session goes: its run directory and the exported checkpoint."""
        folder = self.desk.folder.folder
        stamp = _timestamp()
        run_dir = folder.parent / f"{folder.name}-finetune-{stamp}"
        return run_dir, run_dir / f"{folder.name}-{stamp}.json"

    def finetune_command(self) -> list[str]:
        """The command the Fine-tune button runs (the current model is the starting point)."""
        run_dir, export = self.finetune_paths()
        self._finetune_export = export
        return finetune_command(self.desk.folder.labels_path, run_dir, export, self.desk.window.checkpoint,
                                self.epochs_box.value())  # fmt: skip

    def start_finetune(self, command: list[str] | None = None) -> bool:
        """Run the fine-tuning (``command``: the default ``finetune_command()``); False when it cannot start."""
        folder = self.desk.folder
        if folder is None or self.finetune.running or self.busy:
            return False
        splits = {take.row.split for take in folder.takes()}
        if not {"train", "test"} <= splits:
            self.finetune_status.setText("fine-tuning needs train and test takes (record 2 takes per class or more)")
            return False
        command = command or self.finetune_command()
        self.finetune_progress.setRange(0, 0)  # busy until the first epoch
        self.finetune_progress.show()
        self.finetune_status.setText("preparing the takes…")
        self.result.hide()
        self.use_button.setEnabled(False)
        self.finetune.start(command)
        self._enable()
        return True

    def _epoch(self, epoch: int, epochs: int) -> None:
        self.finetune_progress.setRange(0, epochs)
        self.finetune_progress.setValue(epoch)

    def _finetune_finished(self, code: int, output: str) -> None:
        self._enable()
        lines = output.splitlines()
        if code == 0:
            summary = ("fine-tuned ", "fitted the noise filter of ")  # finetune's summary line (--epochs 0: the second)
            start = next((i for i, line in enumerate(lines) if line.startswith(summary)), max(0, len(lines) - 12))
            self.result.setPlainText("\n".join(lines[start:]).strip())
            self.finetune_progress.setValue(self.finetune_progress.maximum())
            export = self._finetune_export
            if export is not None and export.with_suffix(".json").is_file():
                self.finetuned = export
                self.desk.window.add_recent_model(export)
                self.use_button.setEnabled(True)
                self.finetune_status.setText(f"done: {export.name} — use it now?")
            else:
                self.finetune_status.setText("done")
        else:
            errors = [line for line in lines if line.startswith("error:")]
            self.result.setPlainText("\n".join(lines[-12:]))
            self.finetune_progress.setRange(0, 1)
            self.finetune_progress.setValue(0)
            self.finetune_status.setText(errors[-1] if errors else f"fine-tuning failed (exit code {code})")
        self.result.show()

    def use_finetuned(self) -> None:
        if self.finetuned is not None and self.desk.window.load_model(self.finetuned):
            self.use_button.setEnabled(False)


def row_origin(activity: TakeActivity, take: Take) -> int:
    """The x origin of a take's row: its file's first event (or, without events, the nominal start)."""
    return activity.first_us if activity.first_us is not None else max(0, take.row.start_us - MARGIN_US)
