"""The headless recorder as a measuring tool (#14): the start-up timeout, a labelled file replayed
as an evaluation (``--all-windows``, labels, ``--predictions-out``), the live worker against the
Python API, and the train/serve check. Real stages, real ZeroMQ, real ONNX Runtime."""

from __future__ import annotations

import csv
import json
import threading
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    TEST_BACKEND,
    WORKER_TOPICS,
    checkpoint_metadata,
    predictions_of,
    receive_until,
    run_launch,
    run_module,
    start_source,
    start_worker,
    stop_process,
)

from inference.headless import record
from stream.classes import GESTURE_CLASSES
from stream.events import GestureSegment
from stream.formats import read_events
from stream.formats.labels import LabelRow, read_gesture_labels, write_folder_labels
from stream.transport.sockets import Subscriber

STRIDE_US = 50_000  # the tiny checkpoint's stride (helpers.TINY_WINDOW)


# --- the start-up timeout ---------------------------------------------------------------------------


def test_the_start_up_timeout_never_fires_while_predictions_flow(tiny_checkpoint, stage_env, tmp_path):
    """No ``--duration``: the recording runs past a 1 s start-up timeout (four times over) while the
    worker's messages flow, and ends only when asked to (as Ctrl-C does), without a failure."""
    events, predictions = f"ipc://{tmp_path}/ev", f"ipc://{tmp_path}/pr"
    stages = []
    stop = threading.Event()
    try:
        with Subscriber(predictions, WORKER_TOPICS) as probe:  # the worker waits for one consumer
            stages = [start_worker(events, predictions, tiny_checkpoint, stage_env),
                      start_source("sim", events, stage_env)]  # fmt: skip
            receive_until(probe, lambda m: bool(predictions_of([m])), 120, "a prediction")  # every stage is up
            recorder, wall_s, failures = record(
                predictions, quiet=True, startup_timeout_s=1.0, stop=stop,
                on_first_message=lambda: threading.Timer(4.0, stop.set).start(),
            )  # fmt: skip
    finally:
        for stage in stages:
            stop_process(stage)
    assert failures == [] and recorder.ending == "interrupted"
    assert recorder.classes == list(GESTURE_CLASSES)  # the worker's status names its classes
    span_s = (recorder.prediction_us[-1] - recorder.prediction_us[0]) / 1e6
    assert span_s > 3.0 and wall_s > 4.0 and len(recorder.class_index) >= 40  # 20 windows/s for 4 s


# --- a labelled recording replayed as an evaluation ---------------------------------------------------


@pytest.fixture(scope="module")
def labelled_recording(tmp_path_factory) -> Path:
    """A DVS128-Gesture-layout AEDAT 3.1 recording written by the simulator's data-set writer, its
    ``_labels.csv`` beside it: 4 gestures of 1.5 s with 0.4 s of idle before each."""
    from stream.sim.dataset import write_dataset

    (path,) = write_dataset(tmp_path_factory.mktemp("labelled"), samples=4, seed=5, gesture_us=1_500_000,
                            idle_us=400_000)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def replay(labelled_recording, tiny_checkpoint, stage_env, tmp_path_factory) -> tuple[dict, list[dict], str]:
    """launch.py replaying the recording at --speed max with --all-windows (labels found beside it):
    the report, the --predictions-out CSV rows and stderr."""
    out = tmp_path_factory.mktemp("replay")
    result = run_launch(stage_env, "--source", f"file:{labelled_recording}", "--speed", "max", "--all-windows",
                        "--checkpoint", tiny_checkpoint, "--report", out / "report.json",
                        "--predictions-out", out / "rows.csv")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "rows.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return json.loads((out / "report.json").read_text()), rows, result.stderr


def test_all_windows_replay_infers_every_window_of_the_file(replay, labelled_recording):
    report, rows, stderr = replay
    events, _ = read_events(labelled_recording)
    first, last = int(events["t"][0]), int(events["t"][-1])
    # Windows end on the stride's grid: the first after the first event, the last holding the last event.
    expected_ends = np.arange(first // STRIDE_US + 1, last // STRIDE_US + 2) * STRIDE_US
    assert report["windows"] == len(expected_ends) == len(rows) and report["windows_skipped"] == 0
    assert [int(row["end_us"]) for row in rows] == expected_ends.tolist()
    assert report["ended"] == "end of stream" and report["events_in"] == len(events) and report["events_lost"] == 0
    assert report["window_rate"] > 20  # windows/s: faster than the recording's 20 per second of events
    assert f"ground truth from {labelled_recording.with_name(labelled_recording.stem + '_labels.csv')}" in stderr


def _truth_of(start_us: int, end_us: int, segments: list[GestureSegment]) -> int:
    """The class of the gesture that holds the whole window, else -1 (written out, one loop)."""
    for segment in segments:
        if segment.start_us <= start_us and end_us <= segment.end_us:
            return segment.label
    return -1


def test_replay_accuracy_is_computed_against_the_labels(replay, labelled_recording):
    """Accuracy, stable accuracy, per-class accuracy, the confusion matrix and the rows' truth,
    recomputed here from the written rows and the labels file."""
    report, rows, _ = replay
    segments = read_gesture_labels(labelled_recording.with_name(labelled_recording.stem + "_labels.csv"))
    truth = np.array([_truth_of(int(row["start_us"]), int(row["end_us"]), segments) for row in rows])
    predicted = np.array([int(row["class_index"]) for row in rows])
    stable = np.array([int(row["stable_index"]) for row in rows])
    inside = truth >= 0
    assert [int(row["truth"]) for row in rows] == truth.tolist()
    assert report["truth"].endswith("_labels.csv") and report["gestures"] == len(segments) == 4
    assert report["windows_labelled"] == inside.sum() >= 4 * 25  # 1.5 s gestures, 100 ms windows, 50 ms stride
    assert report["accuracy"] == pytest.approx((predicted[inside] == truth[inside]).mean())
    assert report["stable_accuracy"] == pytest.approx((stable[inside] == truth[inside]).mean())
    confusion = np.zeros((11, 11), dtype=int)
    for true_class, predicted_class in zip(truth[inside], predicted[inside]):
        confusion[true_class, predicted_class] += 1
    assert report["confusion"] == confusion.tolist() and report["classes"] == list(GESTURE_CLASSES)
    for index, name in enumerate(GESTURE_CLASSES):
        here = truth == index
        expected = (predicted[here] == index).mean() if here.any() else None
        assert report["per_class_accuracy"][name] == (None if expected is None else pytest.approx(expected, abs=1e-4))
    decided = report["time_to_decision_ms"]
    assert decided["decided"] + decided["undecided"] == len(segments)


def test_the_python_api_gives_the_live_workers_results(replay, labelled_recording, tiny_checkpoint, stage_env,
                                                       monkeypatch):  # fmt: skip
    """``Predictor.predict_file`` on the same file: the same windows, classes, probabilities and
    stable labels as the worker stage published in the replay above."""
    from inference import Predictor

    monkeypatch.setenv("XDG_CACHE_HOME", stage_env["XDG_CACHE_HOME"])  # the stages' ONNX export
    _, rows, _ = replay
    predictions = Predictor.from_checkpoint(tiny_checkpoint, backend=TEST_BACKEND).predict_file(
        labelled_recording, labelled_recording.with_name(labelled_recording.stem + "_labels.csv"))
    assert len(predictions) == len(rows)
    for result, row in zip(predictions, rows):
        assert (result.start_us, result.end_us, result.events) == (int(row["start_us"]), int(row["end_us"]),
                                                                   int(row["events"]))  # fmt: skip
        assert (result.class_index, result.stable_index, result.truth) == (int(row["class_index"]),
                                                                           int(row["stable_index"]), int(row["truth"]))  # fmt: skip
        live = [float(row[f"p_{name}"]) for name in GESTURE_CLASSES]
        assert np.allclose(result.probabilities, live, atol=1e-5)  # the message rounds to 5 decimals


# --- labels: where they come from, and what is refused ------------------------------------------------


def _labels_args(source: str, labels: Path | None = None) -> Namespace:
    from launch import build_parser

    args = ["--headless", "--source", source] + (["--labels", str(labels)] if labels is not None else [])
    return build_parser().parse_args(args)


def test_folder_labels_give_this_files_gestures_by_class_name(labelled_recording, tmp_path):
    from launch import ground_truth

    folder = labelled_recording.parent / "folder_labels.csv"
    write_folder_labels(folder, [LabelRow(labelled_recording.name, "air guitar", 100_000, 900_000),
                                 LabelRow("other.aedat4", "arm roll", 0, 500_000),
                                 LabelRow(labelled_recording.name, "2", 1_000_000, 1_800_000)])  # fmt: skip
    segments, source = ground_truth(_labels_args(f"file:{labelled_recording}", folder), GESTURE_CLASSES)
    assert segments == [GestureSegment(9, 100_000, 900_000), GestureSegment(2, 1_000_000, 1_800_000)]
    assert source == str(folder)


def test_dvs128_labels_are_mapped_by_name_onto_a_models_own_classes(labelled_recording):
    """A fine-tuned model with other classes: DVS128 Gesture's class numbers are its own classes."""
    from launch import ground_truth

    announced = []
    segments = read_gesture_labels(labelled_recording.with_name(labelled_recording.stem + "_labels.csv"))
    classes = ["wave", *(GESTURE_CLASSES[s.label] for s in reversed(segments))]
    found, _ = ground_truth(_labels_args(f"file:{labelled_recording}"), classes, say=announced.append)
    assert [classes[s.label] for s in found] == [GESTURE_CLASSES[s.label] for s in segments]
    assert len(announced) == 1 and "found beside the file" in announced[0]
    with pytest.raises(ValueError, match="not among the model's classes"):
        ground_truth(_labels_args(f"file:{labelled_recording}"), ["wave", "clap"], say=announced.append)


@pytest.mark.parametrize("case", ["sim source", "missing", "no rows for the file", "no headless", "bad suffix"])
def test_bad_labels_or_outputs_are_one_error_line_before_anything_starts(case, labelled_recording, tiny_checkpoint,
                                                                         tmp_path, capfd):  # fmt: skip
    import launch

    folder = tmp_path / "labels.csv"
    write_folder_labels(folder, [LabelRow("another.aedat", "arm roll", 0, 500_000)])
    argv = {
        "sim source": ["--headless", "--source", "sim", "--labels", str(folder)],
        "missing": ["--headless", "--source", f"file:{labelled_recording}", "--labels", str(tmp_path / "none.csv")],
        "no rows for the file": ["--headless", "--source", f"file:{labelled_recording}", "--labels", str(folder)],
        "no headless": ["--source", f"file:{labelled_recording}", "--labels", str(folder)],
        "bad suffix": ["--headless", "--source", f"file:{labelled_recording}", "--predictions-out", "rows.txt"],
    }[case]
    expected = {"sim source": "--labels needs a file source", "missing": "no such file",
                "no rows for the file": "no labelled gesture for", "no headless": "--labels needs --headless",
                "bad suffix": "must end in .csv or .jsonl"}[case]  # fmt: skip
    assert launch.main([*argv, "--checkpoint", str(tiny_checkpoint)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err


# --- train/serve: replay and training read a recording the same way --------------------------------------


def _train_tiny_model(directory: Path, data_dir: Path, cache: Path) -> Path:
    """A small Spikeformer (32x32, 8 bins of 50 ms) trained for 20 epochs (~20 s) on windows of the
    recording in ``data_dir``, read by ``training.data`` as training reads any data set; the checkpoint."""
    import torch

    from stream.binning import WindowSpec
    from training import data
    from training.checkpoint import save_checkpoint
    from training.spikeformer import SpikeformerConfig, build_model

    config = SpikeformerConfig(
        name="trainserve", input_size=(32, 32), time_steps=8, tokenizer_channels=(8, 16), tokenizer_strides=(2, 2),
        kernel_size=3, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2, num_classes=len(GESTURE_CLASSES),
        drop_path_rate=0.0,
    )  # fmt: skip
    window, normalisation = WindowSpec(8, 50_000, 100_000), {"kind": "log1p"}
    recordings = list(data.open_source(f"sim:{data_dir}").recordings)
    windows = data.load_windows(recordings, data.WindowPlan("train", 64), window, (32, 32), cache_dir=cache)
    loader = torch.utils.data.DataLoader(data.WindowDataset(windows, normalisation=normalisation), batch_size=32,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    try:
        for _ in range(20):
            for frames, labels in loader:
                loss = torch.nn.functional.cross_entropy(model(frames), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    metadata = checkpoint_metadata(config)
    metadata["input"].update(window=window.to_dict(), normalisation=normalisation)
    return save_checkpoint(directory / "trainserve", model.eval(), metadata)


@pytest.mark.slow
def test_replay_sees_a_dvs128_layout_file_as_training_does(stage_env, tmp_path, monkeypatch):
    """Train/serve check: a model trained on a simulator-written DVS128-Gesture-layout AEDAT 3.1
    recording (read by ``training.data``) scores on its replay through the live pipeline what
    ``training evaluate`` gives on the same recording; a flipped or mirrored copy scores less, so
    a replay that turned the events would show. Labels given explicitly in the folder format, the
    rows written as JSON lines."""
    from inference import Predictor
    from stream.formats.aedat31 import write_aedat31
    from stream.sim.dataset import write_dataset

    data_dir = tmp_path / "data"
    (recording,) = write_dataset(data_dir, samples=6, seed=3, gesture_us=2_000_000, idle_us=400_000)
    segments = read_gesture_labels(recording.with_name(recording.stem + "_labels.csv"))
    checkpoint = _train_tiny_model(tmp_path, data_dir, tmp_path / "cache")

    evaluated = run_module("training", "evaluate", "--checkpoint", checkpoint, "--data", f"sim:{data_dir}",
                           "--split", "all", "--cache", tmp_path / "cache", "--workers", "1", "--json", timeout_s=120)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    evaluate_accuracy = json.loads(evaluated.stdout)["accuracy"]

    folder = tmp_path / "labels.csv"
    write_folder_labels(folder, [LabelRow(f"data/{recording.name}", GESTURE_CLASSES[s.label], s.start_us, s.end_us)
                                 for s in segments])  # fmt: skip
    result = run_launch(stage_env, "--source", f"file:{recording}", "--speed", "max", "--all-windows", "--checkpoint",
                        checkpoint, "--labels", folder, "--report", tmp_path / "report.json",
                        "--predictions-out", tmp_path / "rows.jsonl")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert report["truth"] == str(folder) and "found beside" not in result.stderr
    assert len(rows) == report["windows"] and len(rows[0]["probabilities"]) == len(GESTURE_CLASSES)
    assert evaluate_accuracy >= 0.6  # chance: 1 in 6 (the recording's classes)
    assert abs(report["accuracy"] - evaluate_accuracy) <= 0.15, (report["accuracy"], evaluate_accuracy)

    monkeypatch.setenv("XDG_CACHE_HOME", stage_env["XDG_CACHE_HOME"])
    predictor = Predictor.from_checkpoint(checkpoint, backend=TEST_BACKEND)
    events, sensor = read_events(recording)
    for axis, size in (("y", sensor.height), ("x", sensor.width)):
        turned = events.copy()
        turned[axis] = size - 1 - turned[axis]
        write_aedat31(tmp_path / f"flip_{axis}.aedat", turned, sensor)
        flipped = predictor.predict_file(tmp_path / f"flip_{axis}.aedat", segments).accuracy
        assert flipped <= report["accuracy"] - 0.2, (axis, flipped, report["accuracy"])


def test_a_status_noise_filter_from_the_network_is_checked_never_raised_on() -> None:
    """``background_activity`` of a worker's status comes from the network: a malformed one (huge,
    negative, NaN, not a number, not a dict) is None for the report and the GUI, never an exception
    and never a NaN in the report's JSON."""
    from inference.messages import background_activity_text, read_background_activity

    good = {"window_us": 271, "noise_floor_hz": 7.5}
    assert read_background_activity(good) == good
    assert background_activity_text(good) == "BA filter 0.271 ms (noise 7.5 Hz/px)"
    assert background_activity_text({"window_us": 5000, "noise_floor_hz": None}) == "BA filter 5 ms"
    for bad in ({"window_us": 10**400}, {"window_us": 0}, {"window_us": 5000.0}, {"window_us": True},
                {"window_us": 5000, "noise_floor_hz": float("nan")}, {"window_us": 5000, "noise_floor_hz": 10**400},
                {"window_us": 5000, "noise_floor_hz": -1}, {"window_us": 5000, "noise_floor_hz": "7"},
                "5 ms", None):  # fmt: skip
        assert read_background_activity(bad) is None and background_activity_text(bad) is None, bad
