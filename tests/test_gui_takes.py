"""GUI tests of #16: guided recording of labelled takes, their review, fine-tuning and loading a model.

Qt runs offscreen (conftest sets QT_QPA_PLATFORM). The session tests run the window on a feed: real
ZeroMQ publishers in this process (a camera: nothing cued) or the real pipeline (``launch.Supervisor``
with the source and worker stages, the directed simulator as the camera); the takes written are
checked against what was asked for and against the simulator's own ground truth. Waits are on real
conditions (``qtbot.waitUntil``), never sleeps.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from gui.widgets import ProgressRing  # first: installs the PySide6 guard
from gui.app import MainWindow  # noqa: E402
from gui.takes import SessionSetup, TakeSetupDialog, class_names, default_gestures, finetune_command  # noqa: E402
from helpers import TEST_BACKEND, TINY_CONFIG, make_checkpoint, random_events
from stream.classes import GESTURE_CLASSES
from stream.events import GestureSegment, SensorSize
from stream.formats import read_events
from stream.formats.aedat4 import Aedat4Writer
from stream.formats.labels import LabelRow, read_folder_labels
from stream.takes import MARGIN_US, TakeFolder, TakePlan
from stream.transport.sockets import Publisher

SENSOR = SensorSize(64, 48)
WAVE, DRUMS = "right hand wave", "air drums"


# --- pure parts ----------------------------------------------------------------------------------


def test_class_names_and_the_simulated_gestures_for_them() -> None:
    assert class_names(" thumbs up, stop ,, swipe left ") == ("thumbs up", "stop", "swipe left")
    mapping = default_gestures(("thumbs up", WAVE, "stop"))
    assert mapping[WAVE] == GESTURE_CLASSES.index(WAVE)  # a gesture's own name keeps its gesture
    assert mapping["thumbs up"] == 0 and mapping["stop"] == 2  # the first gestures not named
    many = default_gestures(tuple(f"mine {k}" for k in range(12)))
    assert list(many.values())[:11] == [*range(10), 10] and many["mine 11"] is None  # then: stand still


def test_finetune_command_is_spikeformer_live_finetune_on_the_session(tmp_path: Path) -> None:
    command = finetune_command(tmp_path / "s" / "labels.csv", tmp_path / "run", tmp_path / "run" / "m.json",
                               tmp_path / "model.json", 3)  # fmt: skip
    assert command[:4] == [sys.executable, "-m", "training", "finetune"]
    options = dict(zip(command[4::2], command[5::2]))
    assert options["--data"] == f"folder:{tmp_path / 's' / 'labels.csv'}" and options["--epochs"] == "3"
    assert options["--out"] == str(tmp_path / "run") and options["--export"] == str(tmp_path / "run" / "m.json")
    assert options["--from"] == str(tmp_path / "model.json") and "--no-progress" in command
    assert "--from" not in finetune_command(tmp_path / "l.csv", tmp_path, tmp_path / "m.json", None, 1)


def test_setup_dialog_asks_for_own_classes_and_the_simulated_person(qtbot, tmp_path: Path) -> None:
    dialog = TakeSetupDialog(None, folder=tmp_path / "session", simulator=True)
    qtbot.addWidget(dialog)
    assert dialog.setup().plan.classes == GESTURE_CLASSES and dialog.gesture_table.rowCount() == 11
    qtbot.keyClicks(dialog.own_names, "thumbs up, stop")
    assert dialog.own_box.isChecked() and dialog.gesture_table.rowCount() == 2
    dialog.gesture_table.cellWidget(1, 1).setCurrentText("stand still")
    dialog.takes_box.setValue(3)
    dialog.take_box.setValue(1.5)
    setup = dialog.setup()
    assert setup.plan == TakePlan(("thumbs up", "stop"), 3, 1.5, 2.0, 3, 2)
    assert setup.folder == tmp_path / "session" and setup.gestures == {"thumbs up": 0, "stop": None}
    dialog.own_names.setText("a, a")
    dialog.accept()  # refused: the dialog stays open and says why
    assert "distinct" in dialog.error_label.text() and dialog.result() == 0


def test_progress_ring_paints_its_arc(qtbot) -> None:
    ring = ProgressRing()
    qtbot.addWidget(ring)
    ring.set_fraction(0.25)
    image = ring.grab().toImage()
    assert ring.fraction == 0.25 and image.pixelColor(ring.width() // 2, 5).red() > 200  # the arc starts at 12 o'clock
    ring.set_fraction(7)
    assert ring.fraction == 1.0


# --- a session on a camera-like feed (publishers in this process) --------------------------------


@pytest.fixture
def publishers(tmp_path: Path):
    with Publisher(f"ipc://{tmp_path}/predictions") as worker, Publisher(f"ipc://{tmp_path}/events") as source:
        yield worker, source


@pytest.fixture
def window(qtbot, publishers, tmp_path: Path):
    worker, source = publishers
    main = MainWindow(worker.endpoint, source.endpoint, source_spec="camera", model_name="unit", stall_after_s=60.0,
                      reconnect_after_s=60.0, output_dir=tmp_path)  # fmt: skip
    qtbot.addWidget(main)
    main.show()
    assert source.wait_for_subscribers(1, b"events", timeout_s=5)
    yield main
    main.close()


class Camera:
    """Publishes 40 ms of random events every 10 ms of wall time (4x real time), like a camera."""

    def __init__(self, source: Publisher, parent) -> None:
        from PySide6 import QtCore

        self.source, self.time_us, self.seed = source, 0, 0
        self.timer = QtCore.QTimer(parent)
        self.timer.timeout.connect(self.publish)
        self.timer.start(10)

    def publish(self) -> None:
        self.seed += 1
        self.source.publish_events(random_events(SENSOR, self.time_us, self.time_us + 40_000, count=200, seed=self.seed),
                                   SENSOR)  # fmt: skip
        self.time_us += 40_000


def test_a_session_on_a_camera_records_labelled_takes_and_stopping_keeps_them(qtbot, window: MainWindow, publishers,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    _, source = publishers
    camera = Camera(source, window)
    qtbot.waitUntil(lambda: window.sensor == SENSOR, timeout=5000)
    plan = TakePlan((WAVE, "mine"), takes_per_class=2, take_s=0.5, pause_s=0.2, countdown_s=1, test_every=2)
    prompts = []
    show_prompt = window.takes.overlay.show_prompt
    window.takes.overlay.show_prompt = lambda text, *args: (prompts.append(text), show_prompt(text, *args))
    window.takes.start(SessionSetup(plan, tmp_path / "session"))
    assert not window.takes.directed  # a camera: nothing cued, the person performs

    def recorded() -> int:  # the session starts with the first events
        return len(window.takes.session.recorder.recorded) if window.takes.session is not None else 0

    qtbot.waitUntil(lambda: recorded() == 3, timeout=20_000)
    assert window.takes.overlay.isVisible() and window.record_takes_action.text() == "■ Stop takes"
    window.takes.stop()  # mid-session (the 4th take is under way): the three recorded stay
    qtbot.waitUntil(lambda: not window.takes.busy and not window.takes.panel.busy, timeout=5000)
    camera.timer.stop()
    rows = read_folder_labels(tmp_path / "session" / "labels.csv")
    assert [(row.label, row.split) for row in rows] == [(WAVE, "train"), ("mine", "train"), (WAVE, "test")]
    assert sorted(path.name for path in (tmp_path / "session").glob("*.aedat4")) == [row.file for row in rows]
    for row in rows:
        events, sensor = read_events(tmp_path / "session" / row.file)
        assert sensor == SENSOR and row.end_us - row.start_us == 500_000
        assert row.start_us - MARGIN_US <= events["t"][0] < row.start_us and events["t"][-1] >= row.end_us + MARGIN_US
    assert "perform right hand wave in 1" in prompts and "recording mine" in prompts and "pause" in prompts
    assert "stopped" in window.state_label.text() and len(window.takes.panel.rows) == 3


def test_a_session_stops_when_the_stream_goes_back_in_time(qtbot, window: MainWindow, publishers, tmp_path) -> None:
    _, source = publishers
    camera = Camera(source, window)
    qtbot.waitUntil(lambda: window.sensor == SENSOR, timeout=5000)
    window.takes.start(SessionSetup(TakePlan((WAVE,), 1, take_s=5.0, countdown_s=0), tmp_path / "session"))
    qtbot.waitUntil(lambda: window.takes.overlay.phase == "recording", timeout=5000)
    camera.time_us = 0  # a restarted source
    qtbot.waitUntil(lambda: not window.takes.busy, timeout=5000)
    camera.timer.stop()
    assert "went back in time" in window.state_label.text()
    assert not list((tmp_path / "session").glob("*.aedat4"))  # the unfinished take is dropped


# --- the review panel ----------------------------------------------------------------------------


def write_session(folder: Path) -> TakeFolder:
    """Three takes of random events, 2 s each, labelled 0.5..1.5 s (0.5 s of margin on both sides)."""
    takes = TakeFolder(folder)
    for number, (name, split) in enumerate([(WAVE, "train"), (DRUMS, "train"), (WAVE, "test")], start=1):
        start = number * 10_000_000
        path = takes.path_of(number, name)
        with Aedat4Writer(path, SENSOR) as writer:
            writer.write(random_events(SENSOR, start, start + 2_000_000, count=4_000 * number, seed=number))
        takes.add(LabelRow(path.name, name, start + 500_000, start + 1_500_000, split))
    return takes


def test_review_panel_lists_deletes_and_moves_takes(qtbot, window: MainWindow, tmp_path: Path, monkeypatch) -> None:
    from PySide6 import QtWidgets

    write_session(tmp_path / "session")
    window.takes.open_folder(tmp_path / "session")
    panel = window.takes.panel
    assert window.takes.dock.isVisible() and [row.number for row in panel.rows] == [1, 2, 3]
    assert "3 takes (2 train, 1 test)" in panel.title.text()
    row = panel.row(2)
    assert (row.start_box.value(), row.end_box.value()) == (500, 1500)  # ms from the take's first event
    assert row.region.getRegion() == pytest.approx((0.5, 1.5), abs=1e-3)

    row.end_box.setValue(1800)  # a spin box moves one boundary; the other keeps its µs
    labels = tmp_path / "session" / "labels.csv"
    moved = next(r for r in read_folder_labels(labels) if r.file == row.row.file)
    assert (moved.start_us, moved.end_us) == (20_500_000, row.origin_us + 1_800_000)
    assert row.region.getRegion()[1] == pytest.approx(1.8, abs=1e-3)
    row.region.setRegion((0.25, 1.0))  # dragging the segment's edges
    row.region.sigRegionChangeFinished.emit(row.region)
    moved = next(r for r in read_folder_labels(labels) if r.file == row.row.file)
    assert (moved.start_us, moved.end_us) == (row.origin_us + 250_000, row.origin_us + 1_000_000)
    assert (row.start_box.value(), row.end_box.value()) == (250, 1000)
    before = labels.read_bytes()
    row.start_box.setValue(1500)  # after the end: refused, nothing written
    assert labels.read_bytes() == before and row.start_box.value() == 250
    assert "need 0 <= start_us < end_us" in window.state_label.text()

    monkeypatch.setattr(QtWidgets.QMessageBox, "question", lambda *args: QtWidgets.QMessageBox.StandardButton.Yes)
    file = panel.row(1).row.file
    panel.row(1).delete_button.click()
    assert [r.file for r in read_folder_labels(labels)] == [panel.row(2).row.file, panel.row(3).row.file]
    assert not (tmp_path / "session" / file).exists() and [row.number for row in panel.rows] == [2, 3]

    shot = save_panel(qtbot, panel, tmp_path / "review-panel.png")
    assert shot.stat().st_size > 5_000


def save_panel(qtbot, panel, path: Path) -> Path:
    """The review panel as the user sees it (the window's dark palette) saved as PNG, once its rows are shown."""
    from PySide6 import QtWidgets

    from gui.widgets import dark_palette

    app = QtWidgets.QApplication.instance()
    palette = app.palette()
    app.setPalette(dark_palette())
    try:
        panel.desk.dock.setFloating(True)
        panel.desk.dock.resize(1150, 330)
        qtbot.waitUntil(lambda: all(row.isVisible() for row in panel.rows), timeout=5000)
        assert panel.grab().save(str(path))
    finally:
        panel.desk.dock.setFloating(False)
        app.setPalette(palette)
    return path


# --- fine-tuning from the panel ------------------------------------------------------------------


class FakeModels:
    """A ``ModelControl`` that remembers what it was asked to load."""

    def __init__(self) -> None:
        self.loaded: list[Path] = []

    def load(self, checkpoint: Path) -> None:
        self.loaded.append(Path(checkpoint))


def test_finetune_button_runs_finetune_shows_epochs_and_the_table_and_offers_the_model(
    qtbot, publishers, tmp_path: Path, tiny_checkpoint: Path, monkeypatch
) -> None:
    """The real ``spikeformer-live finetune`` (1 epoch, the tiny model) on a small session."""
    from training.checkpoint import read_metadata

    monkeypatch.setenv("HOME", str(tmp_path))  # the fine-tuning's window cache goes to ~/.cache
    worker, source = publishers
    models = FakeModels()
    main = MainWindow(worker.endpoint, source.endpoint, source_spec="camera", model_control=models,
                      checkpoint=tiny_checkpoint, stall_after_s=60.0, output_dir=tmp_path)  # fmt: skip
    qtbot.addWidget(main)
    write_session(tmp_path / "session")
    main.takes.open_folder(tmp_path / "session")
    panel = main.takes.panel
    panel.epochs_box.setValue(1)
    epochs = []
    panel.finetune.progressed.connect(lambda epoch, total: epochs.append((epoch, total)))
    panel.finetune_button.click()
    command = panel.finetune.command
    assert command[command.index("--from") + 1] == str(tiny_checkpoint)  # the current model is the starting point
    assert command[command.index("--data") + 1] == f"folder:{tmp_path / 'session' / 'labels.csv'}"
    assert command[command.index("--epochs") + 1] == "1" and not panel.finetune_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.finetune.running, timeout=120_000)
    assert panel.use_button.isEnabled(), panel.result.toPlainText()
    assert epochs == [(1, 1)] and panel.finetune_progress.value() == 1
    table = panel.result.toPlainText()
    assert table.startswith("fine-tuned tiny.json")
    assert "| accuracy on the test takes | before | before, with the new noise filters | after |" in table
    finetuned = panel.finetuned
    assert finetuned.parent.parent == tmp_path and main.recent_models[0] == finetuned
    panel.use_button.click()
    classes = tuple(read_metadata(finetuned)["classes"])
    assert models.loaded == [finetuned] and main.bars.classes == classes and main.strip.classes == classes
    assert main.model_name == finetuned.stem and f"model: {finetuned.stem}" in main.status_label.text()
    save_panel(qtbot, panel, tmp_path / "review-finetuned.png")
    panel.epochs_box.setValue(0)  # no training: the current model with the noise filter fitted to the takes
    assert panel.epochs_box.text() == "no training: fit the noise filter only"
    panel.finetune_button.click()
    assert panel.finetune.command[panel.finetune.command.index("--epochs") + 1] == "0"
    qtbot.waitUntil(lambda: not panel.finetune.running, timeout=120_000)
    assert panel.use_button.isEnabled(), panel.result.toPlainText()
    assert panel.result.toPlainText().startswith(f"fitted the noise filter of {finetuned.name}")
    assert read_metadata(panel.finetuned)["weights"]["sha256"] == read_metadata(finetuned)["weights"]["sha256"]
    save_panel(qtbot, panel, tmp_path / "review-filter-only.png")
    main.close()


# --- the real pipeline: the directed simulator as the camera, the Model menu ----------------------


class Pipeline:
    """The source (``sim`` at 2x) and worker stages under ``launch.Supervisor`` as launch.py starts
    them, its ``SourceSwitcher`` and ``ModelSwitcher``, and the window; ``truth`` collects the
    simulator's segments the window took from its receiver."""

    def __init__(self, qtbot, tmp_path: Path, checkpoint: Path) -> None:
        import launch

        self.args = launch.build_parser().parse_args(["--source", "sim", "--speed", "2", "--checkpoint", str(checkpoint),
                                                      "--backend", TEST_BACKEND])  # fmt: skip
        self.endpoints = launch.Endpoints(f"ipc://{tmp_path}/events", f"ipc://{tmp_path}/predictions",
                                          f"ipc://{tmp_path}/control")  # fmt: skip
        stages = [launch.worker_stage(self.args, self.endpoints, 1), launch.source_stage(self.args, self.endpoints, 2)]
        self.supervisor = launch.Supervisor(stages, log=lambda line: None)
        self.supervisor.start()
        self.main = MainWindow(self.endpoints.predictions, self.endpoints.events, control_endpoint=self.endpoints.control,
                               source_spec="sim", speed="2",
                               source_control=launch.SourceSwitcher(self.supervisor, self.args, self.endpoints),
                               model_control=launch.ModelSwitcher(self.supervisor, self.args, self.endpoints),
                               checkpoint=checkpoint, supervisor=self.supervisor, model_name=checkpoint.stem,
                               stall_after_s=5.0, reconnect_after_s=30.0, output_dir=tmp_path)  # fmt: skip
        qtbot.addWidget(self.main)
        self.truth: list[GestureSegment] = []
        take = self.main.receiver.take

        def take_and_keep():
            received = take()
            self.truth.extend(received.truth)
            return received

        self.main.receiver.take = take_and_keep
        self.main.show()

    def stage_args(self, name: str) -> list[str]:
        return self.supervisor.stages[name].args

    def close(self) -> None:
        self.main.close()
        self.supervisor.stop()


@pytest.fixture
def pipeline(qtbot, tmp_path, tiny_checkpoint, stage_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", stage_env["XDG_CACHE_HOME"])
    started = Pipeline(qtbot, tmp_path, tiny_checkpoint)
    yield started
    started.close()


def test_a_guided_session_on_the_simulator_cues_the_person_and_labels_what_it_performed(qtbot, pipeline,
                                                                                        tmp_path: Path) -> None:  # fmt: skip
    main = pipeline.main
    qtbot.waitUntil(lambda: main.sensor is not None, timeout=60_000)
    plan = TakePlan((WAVE, DRUMS), takes_per_class=2, take_s=1.0, pause_s=0.0, countdown_s=1, test_every=2)
    main.takes.start(SessionSetup(plan, tmp_path / "session", default_gestures(plan.classes)))
    assert main.source_spec == "sim:directed" and pipeline.stage_args("source")[1] == "sim:directed"
    qtbot.waitUntil(lambda: main.takes.session is not None, timeout=30_000)  # the directed simulator answers
    assert main.takes.directed
    qtbot.waitUntil(lambda: main.takes.overlay.phase == "recording", timeout=10_000)
    main.save_screenshot(tmp_path / "recording.png")
    qtbot.waitUntil(lambda: not main.takes.busy, timeout=30_000)
    assert main.takes.session.reason == "done", main.state_label.text()

    rows = read_folder_labels(tmp_path / "session" / "labels.csv")
    assert [(row.label, row.split) for row in rows] == [(WAVE, "train"), (DRUMS, "train"), (WAVE, "test"),
                                                        (DRUMS, "test")]  # fmt: skip
    def cued_segments() -> dict[tuple[int, int], int]:
        return {(segment.start_us, segment.end_us): segment.label for segment in pipeline.truth}

    qtbot.waitUntil(lambda: all((row.start_us, row.end_us) in cued_segments() for row in rows), timeout=10_000)
    cued = cued_segments()
    for row in rows:  # the simulated person performed each take's gesture exactly over its labelled segment
        assert cued.get((row.start_us, row.end_us)) == GESTURE_CLASSES.index(row.label), (row, pipeline.truth)
        events, sensor = read_events(tmp_path / "session" / row.file)
        assert sensor == SensorSize(128, 128) and len(events) > 0
        inside = events[(events["t"] >= row.start_us) & (events["t"] < row.end_us)]
        assert len(inside) > len(events) / 4  # the gesture is where the events are
    panel = main.takes.panel
    qtbot.waitUntil(lambda: [row.number for row in panel.rows] == [1, 2, 3, 4] and not panel.busy, timeout=10_000)
    save_panel(qtbot, panel, tmp_path / "review-session.png")

    panel.row(3).replay_button.click()  # the source stage replays the take's file
    assert pipeline.stage_args("source")[1] == f"file:{tmp_path / 'session' / rows[2].file}"
    redone = rows[1]
    panel.row(2).redo_button.click()  # back to the directed simulator, the same class, number and split
    assert pipeline.stage_args("source")[1] == "sim:directed"
    qtbot.waitUntil(lambda: main.takes.session is not None and main.takes.session.plan.classes == (DRUMS,),
                    timeout=30_000)  # fmt: skip
    qtbot.waitUntil(lambda: not main.takes.busy, timeout=20_000)
    again = read_folder_labels(tmp_path / "session" / "labels.csv")
    assert len(again) == 4 and again[1].file == redone.file and again[1].split == "train"
    assert again[1].start_us != redone.start_us  # recorded anew (a new stream: other times)
    assert GestureSegment(GESTURE_CLASSES.index(DRUMS), again[1].start_us, again[1].end_us) in pipeline.truth


def test_the_model_menu_loads_a_checkpoint_and_the_window_shows_its_classes(qtbot, pipeline, tmp_path: Path,
                                                                            monkeypatch) -> None:  # fmt: skip
    from PySide6 import QtWidgets

    main = pipeline.main
    qtbot.waitUntil(lambda: main.predictions_seen >= 1, timeout=60_000)
    assert main.bars.classes == GESTURE_CLASSES
    other = make_checkpoint(tmp_path / "other", dataclasses.replace(TINY_CONFIG, name="mine", num_classes=3))
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *args, **kwargs: (str(other), ""))
    old_worker = pipeline.supervisor.stages["worker"].process.pid
    load = next(action for action in main.model_menu.actions() if action.text() == "Load model…")
    load.trigger()
    args = pipeline.stage_args("worker")
    assert args[args.index("--checkpoint") + 1] == str(other)
    assert pipeline.supervisor.stages["worker"].process.pid != old_worker
    classes = ("class_0", "class_1", "class_2")
    assert main.bars.classes == classes and main.strip.classes == classes
    axis = [name for _, name in main.bars.getAxis("left")._tickLevels[0]]
    assert axis == list(classes) and f"model: {other.stem}" in main.status_label.text()
    seen = main.predictions_seen
    qtbot.waitUntil(lambda: main.predictions_seen > seen + 2, timeout=60_000)  # the new worker's predictions
    assert len(main.bars.bars.opts["width"]) == 3 and main.latest_prediction["class_name"] in classes
    assert len(main.strip._probabilities) > 0 and main.state_label.text() != "worker restarted"
    recent = [action.text() for action in main.model_menu.actions()]
    assert recent[-2:] == [other.stem, pipeline.args.checkpoint.stem]
    main.update_panels()
    assert main.save_screenshot(tmp_path / "model-loaded.png") is not None
