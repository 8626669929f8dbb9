"""Input coverage (``stream.coverage``): how much of the model input fires, the same offline and
live, stored in the checkpoint, and told to the person when the input is unlike the training data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers import random_events

from inference.messages import read_input_coverage
from inference.worker import InferenceWorker, WorkerConfig
from stream.binning import SensorMapping, WindowSpec, apply_normalisation, bin_window
from stream.coverage import (
    CoverageMonitor,
    check_coverage,
    coverage_spec,
    coverage_summary,
    coverage_text,
    coverage_verdict,
    window_coverage,
)
from stream.events import SensorSize


def test_coverage_is_the_fraction_of_cells_that_fired_and_normalisation_keeps_it() -> None:
    frames = np.zeros((3, 4, 2, 8, 8), np.float32)  # three windows of T=4
    frames[1, 0, 0, 0, :4] = 5.0  # 4 of 512 cells
    frames[2] = 1.0
    np.testing.assert_allclose(window_coverage(frames), [0.0, 4 / 512, 1.0])
    counts = np.random.default_rng(0).poisson(0.2, (4, 2, 8, 8)).astype(np.float32)
    before = float(window_coverage(counts))
    for spec in ({"kind": "density", "max": 4.0}, {"kind": "log1p"}, {"kind": "clip", "max": 2}, {"kind": "binary"}):
        assert float(window_coverage(apply_normalisation(counts.copy(), spec))) == before
    with pytest.raises(ValueError, match=r"\[\.\.\., T, 2, H, W\]"):
        window_coverage(np.zeros((2, 8, 8)))


def test_the_verdict_bounds_and_the_text() -> None:
    assert [coverage_verdict(r) for r in (0.49, 0.5, 1.0, 3.0, 3.01)] == ["sparse", "ok", "ok", "ok", "dense"]
    training = check_coverage({"median": 0.02, "windows": 100})["median"]
    sparse = coverage_summary([0.004, 0.006, 0.005], training)
    assert sparse == {"median": 0.005, "windows": 3, "training_median": 0.02, "ratio": 0.25, "verdict": "sparse"}
    assert coverage_text(sparse).startswith("input coverage 0.25x training: sparse (gestures may read as 'other")
    assert coverage_text(coverage_summary([0.02], training)) == "input coverage 1.00x training"
    assert "dense (move back" in coverage_text(coverage_summary([0.1], training))
    alone = coverage_summary([0.01], None)  # a checkpoint without a training coverage: only the median
    assert alone["verdict"] is None and coverage_text(alone).startswith("input coverage 0.0100 (no training")
    assert coverage_summary([], training) is None and coverage_text(None) is None


def test_what_a_checkpoint_stores_of_its_training_windows() -> None:
    assert coverage_spec(np.array([0.01, 0.03, 0.02, 0.5])) == {"median": 0.025, "windows": 4}
    assert check_coverage(coverage_spec(np.array([0.01, 0.03, 0.02]))) == {"median": 0.02, "windows": 3}
    assert coverage_spec(np.array([0.0, 0.0, 0.1])) is None  # mostly empty windows: nothing to compare with
    with pytest.raises(ValueError, match="no windows"):
        coverage_spec(np.array([]))


@pytest.mark.parametrize("bad", [{"median": 0, "windows": 1}, {"median": 1.5, "windows": 1}, {"median": True, "windows": 1},
                                 {"median": 0.1, "windows": 0}, {"median": 0.1}, {"median": 0.1, "windows": 1, "x": 1},
                                 [0.1, 1], "0.1"])  # fmt: skip
def test_a_malformed_training_coverage_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="coverage"):
        check_coverage(bad)


def test_a_checkpoint_with_a_malformed_coverage_is_refused_with_its_name(tiny_checkpoint, tmp_path) -> None:
    from training.checkpoint import CheckpointError, read_metadata

    document = json.loads(tiny_checkpoint.read_text())
    document["input"]["coverage"] = {"median": -1, "windows": 3}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(document))
    (tmp_path / document["weights"]["file"]).write_bytes(tiny_checkpoint.with_suffix(".safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"input\.coverage: coverage median must be in \(0, 1\]"):
        read_metadata(broken)


def test_the_built_in_checkpoints_carry_their_training_coverage() -> None:
    from training import BUILTIN_CHECKPOINT
    from training.checkpoint import read_metadata

    coverage = read_metadata(BUILTIN_CHECKPOINT)["input"]["coverage"]
    assert 0.005 < coverage["median"] < 0.1 and coverage["windows"] >= 1000


def test_a_coverage_from_the_network_is_checked_and_its_verdict_worked_out_again() -> None:
    lying = {"median": 0.005, "windows": 40, "training_median": 0.02, "ratio": 1.0, "verdict": "ok"}
    assert read_input_coverage(lying) == {"median": 0.005, "windows": 40, "training_median": 0.02, "ratio": 0.25,
                                          "verdict": "sparse"}  # fmt: skip
    assert read_input_coverage({"median": 0.01, "windows": 3, "training_median": None})["verdict"] is None
    for bad in ({"median": float("nan"), "windows": 1}, {"median": 2, "windows": 1}, {"median": 0.1, "windows": 0},
                {"median": 0.1, "windows": 1, "training_median": 0}, {"median": 0.1, "windows": 1, "training_median": "x"},
                {"median": 10**400, "windows": 1}, "sparse", None):  # fmt: skip
        assert read_input_coverage(bad) is None, bad


def _run(worker: InferenceWorker, events: np.ndarray, sensor: SensorSize) -> list[dict]:
    worker.push(events, sensor, 1, 2)
    worker.flush()
    predictions = []
    while (prediction := worker.infer()) is not None:
        predictions.append(prediction)
    return predictions


def test_the_worker_measures_each_window_as_training_bins_it_and_compares_the_recent_median(tiny_backend) -> None:
    """Each prediction's coverage is that of the window binned offline (``bin_window``, as training
    bins it); the status's summary is the median of the last windows against the checkpoint's."""
    model, metadata = tiny_backend
    sensor = SensorSize(64, 64)
    events = random_events(sensor, 0, 1_500_000, rate_hz=2_000)
    predictions = _run(InferenceWorker(model, metadata, WorkerConfig(all_windows=True)), events, sensor)
    spec = WindowSpec.from_dict(metadata["input"]["window"])
    mapping = SensorMapping.from_dict(metadata["input"]["sensor_mapping"], sensor)
    for prediction in predictions[::5]:
        offline = bin_window(events, mapping, spec, prediction["window"]["start_us"])
        assert prediction["window"]["coverage"] == pytest.approx(float(window_coverage(offline)), abs=1e-6)
    measured = float(np.median([p["window"]["coverage"] for p in predictions if p["window"]["events"]][-40:]))

    for training_median, verdict in ((measured, "ok"), (measured * 2.5, "sparse"), (measured / 4, "dense")):
        told = {**metadata, "input": {**metadata["input"], "coverage": {"median": training_median, "windows": 10}}}
        worker = InferenceWorker(model, told, WorkerConfig(all_windows=True))
        _run(worker, events, sensor)
        summary = worker.coverage.summary()
        assert summary["median"] == pytest.approx(measured, abs=1e-6) and summary["verdict"] == verdict
        worker.push(random_events(SensorSize(32, 32), 2_000_000, 2_100_000, count=50), SensorSize(32, 32), 3, 4)
        assert worker.coverage.summary() is None  # another sensor: the recent windows are forgotten


def test_a_step_model_measures_its_last_window_of_bins(tiny_backend, tmp_path) -> None:
    """A causal checkpoint fed bin by bin reports the coverage of its last ``bins`` bins: the same as
    the window model's worker reports for the window ending there."""
    from helpers import TINY_CONFIG, make_checkpoint

    from inference.backends import create_step_backend
    from training.checkpoint import read_metadata

    window_model, window_metadata = tiny_backend
    causal = make_checkpoint(tmp_path, dataclasses.replace(TINY_CONFIG, causal=True))
    metadata = read_metadata(causal)
    assert metadata["input"] == window_metadata["input"]
    sensor = SensorSize(64, 64)
    events = random_events(sensor, 0, 1_000_000, rate_hz=2_000)
    stepped = _run(InferenceWorker(create_step_backend("torch", causal, cache_dir=tmp_path), metadata), events, sensor)
    windowed = _run(InferenceWorker(window_model, window_metadata, WorkerConfig(all_windows=True)), events, sensor)
    by_end = {p["window"]["end_us"]: p["window"]["coverage"] for p in stepped}
    assert len(windowed) > 5
    for prediction in windowed:
        assert by_end[prediction["window"]["end_us"]] == pytest.approx(prediction["window"]["coverage"], abs=1e-6)


def test_a_monitor_keeps_only_the_recent_windows() -> None:
    monitor = CoverageMonitor({"median": 0.02, "windows": 5}, size=3)
    for value in (0.5, 0.5, 0.5, 0.001, 0.002, 0.003):
        monitor.add(value)
    assert monitor.summary()["median"] == 0.002 and monitor.summary()["verdict"] == "sparse"
    monitor.reset()
    assert monitor.summary() is None
