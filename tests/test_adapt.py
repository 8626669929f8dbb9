"""Batch-norm adaptation (``training.adapt``): the statistics it estimates, what it leaves alone, and a
shift of the input statistics that it undoes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import edited_checkpoint_copy, make_checkpoint, random_events
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from stream.events import SensorSize
from stream.formats.aedat4 import write_aedat4
from training.__main__ import main as training_main
from training.adapt import adapt_batchnorm, batch_norms
from training.checkpoint import read_metadata
from training.spikeformer import build_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def sparse_frames(count: int, rate: float, seed: int) -> torch.Tensor:
    """``count`` windows of the small preset's shape, each cell 0 or ``1 / rate``-scaled counts."""
    generator = torch.Generator().manual_seed(seed)
    model_shape = (count, 16, 2, 64, 64)
    return (torch.rand(model_shape, generator=generator) < rate).float() * torch.rand(model_shape, generator=generator) * 3


def first_norm_input(model: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """What the model's first batch norm sees on ``frames`` (its conv's output, ``[N, C, H, W]``)."""
    seen = []
    handle = batch_norms(model)[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        model.eval()(frames)
    handle.remove()
    return torch.cat(seen)


def test_adapting_sets_the_first_batch_norm_to_the_mean_and_variance_of_its_input_and_changes_no_weight() -> None:
    torch.manual_seed(0)
    model = build_model("small")
    weights = {name: value.clone() for name, value in model.named_parameters()}
    momenta = [norm.momentum for norm in batch_norms(model)]
    frames = sparse_frames(8, 0.05, seed=1)
    assert adapt_batchnorm(model, TensorDataset(frames, torch.zeros(8)), batch_size=8) == 8
    features = first_norm_input(model, frames).transpose(0, 1).flatten(1)  # [C, everything else]
    norm = batch_norms(model)[0]
    torch.testing.assert_close(norm.running_mean, features.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, features.var(1), rtol=1e-3, atol=1e-5)
    assert all(torch.equal(value, weights[name]) for name, value in model.named_parameters())
    assert [norm.momentum for norm in batch_norms(model)] == momenta
    assert not model.training and not any(norm.training for norm in batch_norms(model))


def test_adapting_to_denser_events_brings_the_logits_back_to_those_of_the_sparse_events_it_was_set_on() -> None:
    """A camera whose events come 4x as dense as those the statistics were set on: every channel's
    mean moves, the tokenizer fires differently and the logits drift. Re-estimating the statistics on
    the dense windows, without labels, takes most of the drift back."""
    torch.manual_seed(0)
    model = build_model("small")
    sparse, dense = sparse_frames(32, 0.02, seed=2), sparse_frames(32, 0.08, seed=2)
    adapt_batchnorm(model, TensorDataset(sparse), batch_size=16)
    with torch.no_grad():
        home = model(sparse)
        shifted = model(dense)
    adapt_batchnorm(model, TensorDataset(dense), batch_size=16)
    with torch.no_grad():
        adapted = model(dense)
    drift, after = (shifted - home).abs().mean(), (adapted - home).abs().mean()
    assert after < 0.5 * drift, (float(drift), float(after))


def test_adapting_needs_windows_and_batch_norms() -> None:
    model = build_model("small")
    with pytest.raises(ValueError, match="no windows"):
        adapt_batchnorm(model, TensorDataset(torch.zeros(0, 16, 2, 64, 64)))
    with pytest.raises(ValueError, match="no batch-norm"):
        adapt_batchnorm(torch.nn.Linear(2, 2), TensorDataset(torch.zeros(1, 2)))


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.with_name(read_metadata(checkpoint)["weights"]["file"]))


def moving_parent(folder: Path) -> Path:
    """The tiny model, its training windows' median coverage 0.2 (a checkpoint ``train`` writes has one)."""
    (folder / "made").mkdir()
    return edited_checkpoint_copy(make_checkpoint(folder / "made"), folder / "parent.json",
                                  lambda document: document["input"].update(coverage={"median": 0.2, "windows": 100}))


def test_the_adapt_command_sets_the_statistics_on_the_moving_part_of_an_unlabelled_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``spikeformer-live adapt --recording FILE``: no labels. The windows in which little moves
    (sparser than half the parent's training median) are left out, the batch-norm statistics change,
    no weight does, and the checkpoint says what it was adapted on."""
    sensor = SensorSize(32, 32)
    moving = random_events(sensor, 0, 2_000_000, rate_hz=200_000, seed=1)  # a person moving
    still = random_events(sensor, 2_000_000, 4_000_000, rate_hz=500, seed=2)  # the room standing still
    recording = tmp_path / "me.aedat4"
    write_aedat4(recording, np.concatenate([moving, still], dtype=moving.dtype), sensor)
    parent = moving_parent(tmp_path)
    export = tmp_path / "adapted.json"
    argv = ["adapt", "--from", str(parent), "--recording", str(recording), "--export", str(export),
            "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert training_main(argv) == 0
    # 100 ms windows every 50 ms over 4 s: 78 whole ones; those that reach into the first 2 s move (40)
    assert "on 40 of the 78 windows of me.aedat4" in capsys.readouterr().out
    assert read_metadata(export)["data"]["batch_norm"] == {"adapted_on": "me.aedat4 (40 of 78 windows)", "windows": 40}
    before, after = weights(parent), weights(export)
    statistics = [name for name in before if name.endswith(("running_mean", "running_var"))]
    assert statistics and all(not torch.equal(before[name], after[name]) for name in statistics)
    assert all(torch.equal(before[name], after[name]) for name in before if name not in statistics
               and not name.endswith("num_batches_tracked"))  # fmt: skip


def test_the_adapt_command_refuses_a_still_short_or_broken_recording_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sensor = SensorSize(32, 32)
    parent = moving_parent(tmp_path)
    still, short, broken = tmp_path / "still.aedat4", tmp_path / "short.aedat4", tmp_path / "broken.aedat4"
    write_aedat4(still, random_events(sensor, 0, 2_000_000, rate_hz=500, seed=2), sensor)
    write_aedat4(short, random_events(sensor, 0, 60_000, rate_hz=200_000, seed=3), sensor)
    write_aedat4(broken, random_events(sensor, 0, 2_000_000, rate_hz=200_000, seed=4), sensor)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    for path, message in ((still, "nothing moves in"), (short, "shorter than one window"), (broken, str(broken))):
        export = tmp_path / f"{path.stem}-adapted.json"
        assert training_main(["adapt", "--from", str(parent), "--recording", str(path), "--export", str(export),
                              "--cache", str(tmp_path / "cache")]) != 0  # fmt: skip
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and "Traceback" not in error, error
        assert not export.exists()
