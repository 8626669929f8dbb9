"""Adapt a model's batch-norm statistics to a new camera, person or room (AdaBN, Li et al. 2017).

    spikeformer-live adapt --recording me.aedat4 --export adapted.json       # no labels needed

The tokenizer's batch norms normalise each channel of a convolution by the mean and variance that
channel had on the training data. Another camera or renderer shifts those statistics before any
spiking neuron sees them, so every threshold of the tokenizer fires at another level. Re-estimating
the means and variances on windows of the new setting puts them back on the scale the later layers
were trained on. It needs no labels, changes no weight and takes seconds. Measured (README, "Adapt
the statistics"): it helps on another simulator's people and does nothing on average in rooms of
this project's simulator, whose statistics the model was trained across.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stream.coverage import SPARSE_BELOW, window_coverage
from stream.events import GestureSegment
from stream.formats import file_info
from stream.stage import ArgumentParser
from training import BUILTIN_CHECKPOINT, data
from training.checkpoint import METADATA_KEYS, load_checkpoint, read_metadata, save_checkpoint
from training.evaluate import CheckpointInputs, checkpoint_inputs, checkpoint_windows, training_coverage


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers, in module order."""
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, dataset: Dataset, *, batch_size: int = 32, seed: int = 0,
                    device: str = "cpu") -> int:
    """Replace the running mean and variance of every batch norm of ``model`` by their average over
    the windows of ``dataset`` (items ``(frames, ...)``; labels are not used). Every other weight stays
    as it is and the model is left in eval mode. Returns the number of windows seen.

    Each batch is normalised by its own statistics on the way through (train-mode batch norm), so a
    later layer's statistics are those of inputs that the earlier, adapted layers produced. The
    batches are drawn in an order shuffled by ``seed``: a batch of one class or recording would
    see less of the spread between them.
    """
    norms = batch_norms(model)
    if not norms:
        raise ValueError("the model has no batch-norm layer to adapt")
    if len(dataset) == 0:
        raise ValueError("no windows to adapt the batch-norm statistics on")
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch, not an exponential one
        norm.train()
    seen = 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(seed)):
            frames = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(frames.to(device))
            seen += len(frames)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return seen


def active_windows(windows: data.WindowSet, training_median: float | None) -> data.WindowSet:
    """The windows of an unlabelled recording in which something moves: coverage at least
    ``stream.coverage.SPARSE_BELOW`` x the checkpoint's training median (without one, the more active
    half), so that a room standing still between gestures does not set the statistics."""
    coverage = window_coverage(windows.frames)
    floor = SPARSE_BELOW * training_median if training_median else float(np.median(coverage))
    keep = np.flatnonzero((coverage >= floor) & (coverage > 0))
    return data.WindowSet(frames=windows.frames[keep], labels=windows.labels[keep], groups=np.arange(len(keep)),
                          starts_us=windows.starts_us[keep], stretches=windows.stretches[keep])  # fmt: skip


def recording_windows(paths: Sequence[Path], inputs: CheckpointInputs, *, cache_dir: str | None = None) -> data.WindowSet:
    """Every window of the unlabelled event files ``paths`` (any format ``stream.formats.read_events``
    reads), half a window apart, made as ``inputs`` say (counts)."""
    window_us = inputs.window.window_us
    recordings = []
    for path in paths:
        info = file_info(path)  # the time span, in one streamed pass: the windows are binned from the file below
        if not info["events"] or info["t_end_us"] - info["t_start_us"] < window_us:
            raise ValueError(f"{path}: shorter than one window ({window_us / 1e3:g} ms) of the checkpoint")
        starts = range(info["t_start_us"], info["t_end_us"] - window_us + 1, window_us // 2)
        pieces = tuple(GestureSegment(0, start, start + window_us) for start in starts)  # a window each, label unused
        recordings.append(data.Recording("folder", Path(path), "train", pieces))
    return checkpoint_windows(inputs, recordings, 1, cache_dir=cache_dir)


def adapt_checkpoint(checkpoint: Path, windows: data.WindowSet, export: Path, adapted_on: str) -> int:
    """Save ``checkpoint`` with its batch-norm statistics re-estimated on ``windows`` (counts, made as
    the checkpoint makes them) as ``export``, recording ``adapted_on`` in its ``data.batch_norm``;
    returns the number of windows."""
    model, metadata = load_checkpoint(checkpoint)
    inputs = checkpoint_inputs(metadata)
    seen = adapt_batchnorm(model, data.WindowDataset(windows, normalisation=inputs.normalisation))
    derived = {key: metadata[key] for key in METADATA_KEYS if metadata.get(key) is not None}
    derived["data"] = {**metadata["data"], "batch_norm": {"adapted_on": adapted_on, "windows": seen}}
    save_checkpoint(export, model, derived)
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    """``spikeformer-live adapt --recording FILE [--recording FILE ...] --export OUT.json [--from CK]``."""
    parser = ArgumentParser(prog="spikeformer-live adapt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="init_from", type=Path, default=BUILTIN_CHECKPOINT,
                        help="the checkpoint to adapt (default: the built-in model)")  # fmt: skip
    parser.add_argument("--recording", type=Path, action="append", required=True,
                        help="an event file of your camera, person and room, no labels needed (AEDAT4, AEDAT 3.1, "
                        "...: people moving, for example performing the gestures); repeat for several")  # fmt: skip
    parser.add_argument("--export", type=Path, required=True, help="the adapted checkpoint (.json)")
    parser.add_argument("--cache", default=None, help=f"cache directory (default {data.DEFAULT_CACHE_DIR})")
    args = parser.parse_args(argv)
    metadata = read_metadata(args.init_from)
    inputs = checkpoint_inputs(metadata)
    found = recording_windows(args.recording, inputs, cache_dir=args.cache)
    windows = active_windows(found, training_coverage(metadata))
    if len(windows) == 0:
        raise ValueError(f"nothing moves in {', '.join(map(str, args.recording))}: every window is sparser than "
                         f"{SPARSE_BELOW:g}x the checkpoint's training data")  # fmt: skip
    names = ", ".join(path.name for path in args.recording[:3])
    names += f" and {len(args.recording) - 3} more" if len(args.recording) > 3 else ""
    seen = adapt_checkpoint(args.init_from, windows, args.export, f"{names} ({len(windows)} of {len(found)} windows)")
    print(f"adapted the batch-norm statistics of {args.init_from.name} on {seen} of the {len(found)} windows of {names} "
          f"(the others: too little moves): {args.export}")  # fmt: skip
    return 0
