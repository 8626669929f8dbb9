"""Teach it your gestures (#16), with the simulator as the camera: the issue's protocol (one person's
11 gestures in a new room, fine-tuned, other people tested), and an own class set recorded with
``spikeformer-live record`` from the directed simulator, fine-tuned with ``spikeformer-live
finetune`` and recognised live. Real commands, real files, real training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from helpers import edited_checkpoint_copy

from inference import Predictor
from stream.commands import record_main
from stream.formats.labels import read_folder_labels
from stream.sim.dataset import write_dataset
from stream.sources import open_source
from training import BUILTIN_CHECKPOINT
from training.checkpoint import read_metadata
from training.evaluate import evaluate_checkpoint
from training.finetune import main as finetune_main

RECORD_FAST = ["--source", "sim", "--speed", "max", "--take-s", "2", "--pause-s", "0.5", "--countdown", "1"]


def record(folder: Path, *options: str) -> list:
    assert record_main(["--out", str(folder), *RECORD_FAST, *options]) == 0
    return read_folder_labels(folder / "labels.csv")


def finetune(labels: Path, out: Path, *options: str) -> Path:
    """``spikeformer-live finetune`` of the built-in model on a session's takes."""
    export = out / "mine.json"
    argv = ["--data", f"folder:{labels}", "--out", str(out / "run"), "--export", str(export), "--no-progress",
            "--cache", str(out / "cache"), *options]  # fmt: skip
    assert finetune_main(argv) == 0
    return export


def fixed_window_copy(folder: Path) -> Path:
    """The built-in model with a fixed 5 ms background-activity window (as shipped until its window
    followed the noise): a parent whose noise filter does not fit a noisy room."""
    return edited_checkpoint_copy(BUILTIN_CHECKPOINT, folder / "fixed-window.json",
                                  lambda document: document["input"]["filters"].pop("background_activity_adapt"))


@pytest.mark.timeout(900)  # real training: about 2 min alone on 2 cores
def test_finetuning_a_model_that_fails_in_a_room_on_one_persons_gestures_lifts_two_other_people(tmp_path: Path) -> None:
    """The issue's protocol in a room the built-in model was not trained on (a camera with 10 Hz of
    background activity per pixel, ten times the simulator's training range): person 1 performs each
    of the 11 gestures once (``trials_to_train.txt``), persons 2 and 3 are tested. The built-in's
    window follows the noise and reads most of it without training; the same weights with a fixed
    5 ms window score about 1 in 10, and ``finetune --from`` that model on person 1's takes (``--data
    dvsgesture:DIR``, which picks a shorter window) must lift them. The exported model is the last
    epoch's, so the test people choose nothing."""
    write_dataset(tmp_path / "data", samples=33, seed=0, test_fraction=0.5, looks=("shaded",),
                  lightings=("fluorescent",), scene_options={"noise_hz": 10.0})  # fmt: skip
    spec, cache = f"dvsgesture:{tmp_path / 'data'}", str(tmp_path / "cache")
    adaptive, _ = evaluate_checkpoint(BUILTIN_CHECKPOINT, spec, split="test", cache_dir=cache)
    assert adaptive.accuracy >= 0.7, adaptive.accuracy  # measured: 85.2 %
    parent = fixed_window_copy(tmp_path)
    before, _ = evaluate_checkpoint(parent, spec, split="test", cache_dir=cache)
    assert before.accuracy <= 0.3, before.accuracy  # measured: 13.6 %
    export = tmp_path / "mine.json"
    assert finetune_main(["--from", str(parent), "--data", spec, "--out", str(tmp_path / "run"), "--export",
                          str(export), "--no-progress", "--cache", cache]) == 0  # fmt: skip
    after, _ = evaluate_checkpoint(export, spec, split="test", cache_dir=cache)
    assert after.samples == before.samples == 88  # 2 people x 11 gestures x 4 windows
    # measured: 13.6 -> 79.5 % (71.6 % with the fine-tuned weights alone; the #16 target, >= 95 % on other people,
    # is not met)
    assert after.accuracy >= before.accuracy + 0.2, (before.accuracy, after.accuracy)
    recorded = read_metadata(export)["data"]["parent"]
    assert Path(recorded["checkpoint"]).name == parent.name and len(recorded["sha256"]) == 64
    assert read_metadata(export)["data"]["interpolate"] == 0.5  # the parent knows the classes: half its weights
    # --background-activity auto: ten times the noise wants a window of 1 ms or less, not the parent's 5 ms
    filters = read_metadata(export)["input"]["filters"]
    parent_filters = read_metadata(parent)["input"]["filters"]
    assert filters["background_activity_us"] <= 1000 < parent_filters["background_activity_us"], filters
    assert filters["flicker"] == parent_filters["flicker"]


@pytest.mark.timeout(900)
def test_an_own_class_set_is_learnt_from_takes_and_recognised_live(tmp_path: Path) -> None:
    classes = ("wave", "circle", "nothing")
    rows = record(tmp_path / "takes", "--classes", ",".join(classes), "--sim-gestures",
                  "wave=1,circle=3,nothing=none", "--takes", "4", "--seed", "2")  # fmt: skip
    assert len(rows) == 12
    export = finetune(tmp_path / "takes" / "labels.csv", tmp_path, "--epochs", "10")
    assert tuple(read_metadata(export)["classes"]) == classes
    assert read_metadata(export)["data"]["interpolate"] == 1.0  # new classes: the fine-tuned weights alone

    predictor = Predictor.from_checkpoint(export, backend="onnxruntime")
    assert predictor.classes == classes
    source = open_source("sim:directed", seed=2, speed=None)  # the same person and room, new performances
    cues: dict[str, tuple[int, int]] = {}
    seen: dict[str, list[str]] = {name: [] for name in classes}
    with source:
        for result in predictor.stream(source):
            if not cues:  # the simulator is running: cue a circle, then a wave, then nothing
                start = result.end_us + 1_000_000
                cues = {"circle": (start, start + 3_000_000), "wave": (start + 4_000_000, start + 7_000_000),
                        "nothing": (start + 8_000_000, start + 11_000_000)}  # fmt: skip
                source.perform(3, *cues["circle"])
                source.perform(1, *cues["wave"])
            for name, (begin, end) in cues.items():
                if begin + 800_000 <= result.start_us and result.end_us <= end:  # whole window inside
                    seen[name].append(result.class_name)
            if result.end_us > cues["nothing"][1]:
                break
    for name in classes:  # what a person watching sees: the class shown most during each performance
        assert len(seen[name]) >= 5 and Counter(seen[name]).most_common(1)[0][0] == name, (name, seen)
    right = sum(predictions.count(name) for name, predictions in seen.items())
    assert right >= 0.7 * sum(map(len, seen.values())), seen
