"""The causal Spikeformer and its step model (#17): causality, step == window, ONNX step export,
step backends, the worker's bin-by-bin mode, the decision rule's margin."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import checkpoint_metadata, regular_events

from inference.backends import OnnxRuntimeStepBackend, TorchStepBackend, create_step_backend
from inference.export import export_step_onnx
from inference.onnx_info import read_onnx_info
from inference.smoothing import LabelSmoother, SmoothingConfig
from inference.worker import InferenceWorker, WorkerConfig
from stream.events import SensorSize
from training.checkpoint import save_checkpoint
from training.spikeformer import SpikeformerConfig, build_model, count_parameters
from training.streaming import SpikeformerStep, initial_state, state_names

CAUSAL = SpikeformerConfig(name="custom", input_size=(32, 32), time_steps=6, tokenizer_channels=(4, 8),
                           tokenizer_strides=(2, 2), kernel_size=3, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2,
                           num_classes=4, causal=True)  # fmt: skip


def lively(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` made to depend on its input: a fresh tiny model is nearly inert (its BatchNorm
    statistics leave the tokenizer silent, its temporal attention starts as an identity)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # statistics: a plain average over the calibration batches
        elif isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.5)
    model.train()
    with torch.no_grad():
        for seed in range(10, 14):
            model(frames(seed=seed))
    model.eval()
    with torch.no_grad():  # guard: the tests below would pass trivially on an inert model
        assert not torch.allclose(model(frames()), model(frames(seed=1)), atol=1e-3)
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["frame", "with-previous-frame"])
def causal_model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    return lively(build_model(dataclasses.replace(CAUSAL, previous_frame=request.param)))


def frames(steps: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand((1, steps, 2, 32, 32), generator=generator) < 0.15).float() * 2


def test_reference_presets_keep_their_architecture() -> None:
    assert count_parameters(build_model("dvsgesture")) == 9_279_900
    assert count_parameters(build_model("cifar10dvs")) == 8_792_993
    assert not build_model("dvsgesture").config.causal


def test_a_causal_model_does_not_look_ahead(causal_model) -> None:
    x = frames()
    with torch.no_grad():
        whole = causal_model.forward_steps(x)
        changed = x.clone()
        changed[:, 4:] = 1 - changed[:, 4:]  # the future of step 3 changes
        again = causal_model.forward_steps(changed)
    assert torch.allclose(whole[:, :4], again[:, :4], atol=1e-6)
    assert not torch.allclose(whole[:, 4:], again[:, 4:])
    assert torch.equal(causal_model(x), whole[:, -1])  # the window's output: its last step's


def test_a_window_model_does_look_at_the_whole_window() -> None:
    torch.manual_seed(0)
    model = lively(build_model(dataclasses.replace(CAUSAL, causal=False)))
    x = frames()
    changed = x.clone()
    changed[:, 5:] = 1 - changed[:, 5:]
    with torch.no_grad():
        assert not torch.allclose(model(x), model(changed))
    with pytest.raises(ValueError, match="causal"):
        model.forward_steps(x)


def assert_steps_equal_the_window(model: torch.nn.Module, x: torch.Tensor) -> None:
    """The step model fed the bins of ``x`` one by one gives the causal window model's every step."""
    step = SpikeformerStep(model).eval()
    state = initial_state(model)
    assert len(state) == len(state_names(model))
    with torch.no_grad():
        reference = model.forward_steps(x)[0]
        outputs = []
        for t in range(x.shape[1]):
            logits, *state = step(x[:, t], *state)
            outputs.append(logits[0])
    assert torch.allclose(torch.stack(outputs), reference, atol=1e-4)


def test_the_step_model_over_t_bins_equals_the_causal_window_model(causal_model) -> None:
    assert_steps_equal_the_window(causal_model, frames(seed=3))


def test_the_attention_cache_keeps_t_steps_whatever_the_stream_length(causal_model) -> None:
    step = SpikeformerStep(causal_model).eval()
    state = initial_state(causal_model)
    shapes = [tuple(tensor.shape) for tensor in state]
    x = frames(steps=30, seed=5)
    with torch.no_grad():
        for t in range(30):
            _, *state = step(x[:, t], *state)
    assert [tuple(tensor.shape) for tensor in state] == shapes  # bounded memory
    assert state[-1].sum() == CAUSAL.time_steps  # the cache is full


def test_the_step_export_runs_in_onnx_runtime_like_pytorch(causal_model, tmp_path) -> None:
    path = export_step_onnx(causal_model, tmp_path / "step.onnx", metadata=checkpoint_metadata(causal_model.config))
    info = read_onnx_info(path)
    assert info.step and [name for name, _ in info.step_state] == state_names(causal_model)
    x = frames(seed=7)
    ort_backend = OnnxRuntimeStepBackend(path)
    torch_backend = TorchStepBackend(causal_model)
    with torch.no_grad():
        reference = causal_model.forward_steps(x)[0].numpy()
    for backend in (ort_backend, torch_backend):
        steps = np.stack([backend.step(frame) for frame in x[0].numpy()])
        np.testing.assert_allclose(steps, reference, atol=1e-4)
        backend.reset()  # a new stream starts from the initial state
        np.testing.assert_allclose(backend.step(x[0, 0].numpy()), reference[0], atol=1e-4)
    with pytest.raises(ValueError, match="one bin"):
        ort_backend.step(np.zeros((2, 16, 16), np.float32))


def test_a_window_model_has_no_step_export(tmp_path) -> None:
    model = build_model(dataclasses.replace(CAUSAL, causal=False))
    with pytest.raises(ValueError, match="causal"):
        export_step_onnx(model, tmp_path / "x.onnx", metadata=checkpoint_metadata(CAUSAL))


@pytest.fixture(scope="module")
def causal_checkpoint(causal_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("causal") / "causal.json"
    metadata = checkpoint_metadata(CAUSAL)
    metadata["input"]["window"] = {"bins": 6, "bin_us": 25_000, "stride_us": 25_000}
    return save_checkpoint(path, causal_model, metadata)


def test_the_worker_feeds_every_bin_once_and_predicts_every_bin(causal_checkpoint, tmp_path) -> None:
    from training.checkpoint import read_metadata

    backend = create_step_backend("onnxruntime", causal_checkpoint, cache_dir=tmp_path)
    worker = InferenceWorker(backend, read_metadata(causal_checkpoint), WorkerConfig())
    events = regular_events((32, 32), 2_000, start_us=0, duration_us=500_000)  # 0.5 s: 20 bins of 25 ms
    predictions = []
    for chunk in np.array_split(events, 7):
        worker.push(chunk, SensorSize(32, 32), 0, 0)
        while worker.has_window():
            predictions.append(worker.infer())
    ends = [prediction["window"]["end_us"] for prediction in predictions]
    assert ends == sorted(set(ends)) and np.all(np.diff(ends) == 25_000)  # every bin, once, in order
    assert len(ends) >= 18 and worker.counters.windows_skipped == 0
    assert predictions[-1]["window"]["stride_us"] == 25_000


def test_the_worker_predicts_the_empty_bins_of_a_short_silence_one_step_each(causal_checkpoint, tmp_path) -> None:
    """A silence shorter than the window: each of its bins is fed once, as its own prediction (one
    step each, never several steps in one prediction), and the evidence is not reset by it."""
    from training.checkpoint import read_metadata

    class CountingBackend:  # the real ONNX Runtime step backend, its steps counted
        def __init__(self, backend) -> None:
            self.backend, self.name, self.steps = backend, backend.name, 0

        def step(self, frame: np.ndarray) -> np.ndarray:
            self.steps += 1
            return self.backend.step(frame)

        def reset(self) -> None:
            self.backend.reset()

    backend = CountingBackend(create_step_backend("onnxruntime", causal_checkpoint, cache_dir=tmp_path))
    worker = InferenceWorker(backend, read_metadata(causal_checkpoint), WorkerConfig())
    before = regular_events((32, 32), 800, start_us=0, duration_us=199_000)
    after = regular_events((32, 32), 800, start_us=300_000, duration_us=199_000)  # 100 ms of silence: 4 bins < 6
    predictions = []
    for part in (before, after):
        worker.push(part, SensorSize(32, 32), 0, 0)
        while worker.has_window():
            steps = backend.steps
            predictions.append(worker.infer())
            assert backend.steps == steps + 1
    ends = [p["window"]["end_us"] for p in predictions]
    assert ends == list(range(25_000, 475_001, 25_000))  # every bin once, the four silent ones too
    t = np.concatenate([before["t"], after["t"]])
    for prediction in predictions:  # a prediction's events: those of the model's window, its last 6 bins
        window = prediction["window"]
        assert window["events"] == np.count_nonzero((t >= window["end_us"] - 150_000) & (t < window["end_us"]))
    silent = [p for p in predictions if 200_000 < p["window"]["end_us"] <= 300_000]
    assert len(silent) == 4 and all(p["window"]["events"] > 0 for p in silent)


def test_the_worker_starts_afresh_after_a_long_gap(causal_checkpoint, tmp_path) -> None:
    from training.checkpoint import read_metadata

    def run(*parts: np.ndarray) -> list[dict]:
        backend = create_step_backend("torch", causal_checkpoint, cache_dir=tmp_path)
        worker = InferenceWorker(backend, read_metadata(causal_checkpoint), WorkerConfig())
        predictions = []
        for part in parts:
            worker.push(part, SensorSize(32, 32), 0, 0)
            while worker.has_window():
                predictions.append(worker.infer())
        return predictions

    first = regular_events((32, 32), 500, start_us=0, duration_us=200_000)
    later = regular_events((32, 32), 3_000, start_us=2_000_000, duration_us=200_000)  # 1.8 s of silence: > a window
    with_gap = run(first, later)
    after_gap = [p for p in with_gap if p["window"]["end_us"] > 2_000_000]
    alone = run(later)
    # the first window of the silence (its 6 bins empty) is predicted, as "no gesture"; no later one
    (silent,) = [p for p in with_gap if p["window"]["events"] == 0]
    assert silent["window"]["end_us"] == 375_000 and silent["stable"]["index"] == -1
    assert len(after_gap) >= 5
    for with_past, fresh in zip(after_gap, alone):  # the past before the gap is forgotten
        assert with_past["window"]["end_us"] == fresh["window"]["end_us"]
        np.testing.assert_allclose(with_past["probabilities"], fresh["probabilities"], atol=1e-5)


def test_the_decision_rule_is_undecided_below_its_margin() -> None:
    rule = SmoothingConfig("ema", alpha=1.0, threshold=0.3, margin=0.2)
    smoother = LabelSmoother(["a", "b", "c"], rule)
    assert smoother.update(np.array([0.45, 0.4, 0.15])).index == -1  # confident enough, but too close
    assert smoother.update(np.array([0.6, 0.3, 0.1])).index == 0
    assert SmoothingConfig.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError):
        SmoothingConfig.from_dict({"alpha": 0.5, "bogus": 1})


def test_a_causal_window_class_is_the_mean_of_its_bins_and_a_missing_bin_starts_it_again() -> None:
    from inference.decisions import window_evidence_classes

    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    end_us = np.array([1, 2, 3, 5, 6, 7, 8]) * 50_000  # the bin ending at 200 ms is missing: the state was reset
    classes = window_evidence_classes(probabilities, end_us, bins=3, bin_us=50_000)
    # without the reset the bins 2-4 would average to class 0; the last window holds only class-0 bins
    assert classes.tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert window_evidence_classes(probabilities[:0], end_us[:0], bins=3, bin_us=50_000).size == 0


def test_decisions_measures_both_window_readouts_of_a_causal_stream() -> None:
    """Per bin the class flickers (right on half of the windows); the mean of the window's bins is
    always right. ``tune`` keeps the figure."""
    from inference.decisions import measure, tune
    from inference.predictor import Predictions, WindowResult
    from stream.events import GestureSegment

    bin_us, bins = 50_000, 4
    rows = []
    for k in range(1, 17):  # bins ending at 50 ... 800 ms, one gesture of class 0 from 0 to 800 ms
        p = (0.9, 0.1) if k % 2 else (0.4, 0.6)
        end = k * bin_us
        truth = 0 if end - bins * bin_us >= 0 else -1
        rows.append(WindowResult(end - bins * bin_us, end, int(np.argmax(p)), "", p, -1, "", 0.0, 10, truth, 1.0))
    streams = [(Predictions(rows, ["a", "b"]), [GestureSegment(0, 0, 800_000)])]
    figures = measure(streams, bins=(bins, bin_us))
    assert figures["windows"] == 13 and figures["window_accuracy"] == pytest.approx(6 / 13)
    assert figures["window_accuracy_mean_of_bins"] == 1.0
    assert measure(streams)["window_accuracy_mean_of_bins"] is None  # a windowed model: one readout
    assert tune(streams, bins=(bins, bin_us))[1]["window_accuracy_mean_of_bins"] == 1.0


def test_a_checkpoint_carries_its_tuned_decision_rule_to_the_worker(causal_model, tmp_path) -> None:
    """``decisions --tune --save`` writes ``decision``; the checkpoint keeps it and the worker uses it."""
    import json

    from training.checkpoint import CheckpointError, read_metadata

    rule = SmoothingConfig("ema", alpha=0.7, threshold=0.6, margin=0.1)
    metadata = checkpoint_metadata(CAUSAL)
    metadata["input"]["window"] = {"bins": 6, "bin_us": 25_000, "stride_us": 25_000}
    path = save_checkpoint(tmp_path / "tuned.json", causal_model, {**metadata, "decision": rule.to_dict()})
    assert read_metadata(path)["decision"] == rule.to_dict()
    worker = InferenceWorker(TorchStepBackend(causal_model), read_metadata(path), WorkerConfig())
    assert worker.smoother.config == rule
    document = json.loads(path.read_text())
    document["decision"]["bogus"] = 1
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="decision"):
        read_metadata(path)


def test_the_shipped_causal_checkpoint_steps_like_its_window_model() -> None:
    """The shipped causal checkpoint: causal, the built-in's input, a decision rule, step == window."""
    from training import BUILTIN_CHECKPOINT, CAUSAL_CHECKPOINT
    from training.checkpoint import load_checkpoint, read_metadata

    model, metadata = load_checkpoint(CAUSAL_CHECKPOINT)
    assert model.config.causal and model.config.previous_frame
    assert metadata["input"] == read_metadata(BUILTIN_CHECKPOINT)["input"]
    assert SmoothingConfig.from_dict(metadata["decision"]).threshold > 0.5
    x = (torch.rand((1, model.config.time_steps, 2, 64, 64), generator=torch.Generator().manual_seed(0)) < 0.05).float()
    assert_steps_equal_the_window(model, x)


def test_decision_curve_legend_stays_inside_the_image(tmp_path):
    """Long checkpoint names are right-aligned inside the plot's frame, not cut at the image's edge."""
    from PIL import Image

    from inference.decisions import CURVE_COLOURS, OFFSETS_MS, curve_image

    curve = {"offset_ms": list(OFFSETS_MS), "accuracy": [1.0] * len(OFFSETS_MS), "decided_right": [1.0] * len(OFFSETS_MS)}
    names = ["spikeformer-medium-causal-sim-with-a-long-name", "spikeformer-medium-sim"]
    path = curve_image({name: {"curve": curve} for name in names}, tmp_path / "curve.png", width=640, height=360)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    legend = pixels[360 - 40 - 60 : 360 - 40]  # the rows above the x axis; the curves run along the top
    for colour in CURVE_COLOURS[: len(names)]:
        columns = np.flatnonzero((np.abs(legend - colour).sum(axis=-1) < 60).any(axis=0))
        assert columns.size and columns.max() < 640 - 10, colour  # drawn, and inside the frame
