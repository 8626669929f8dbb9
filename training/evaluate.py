"""``python -m training evaluate``: accuracy of a checkpoint on a data set's test split.

    python -m training evaluate --checkpoint inference/checkpoints/spikeformer-medium-sim.json \\
        --data sim:1200 [--json] [--confusion confusion.png] [--windows 4] [--cache DIR]

The windows are cut and binned exactly as the checkpoint says (``input.window``,
``input.sensor_mapping``, ``input.normalisation``) at fixed, evenly spaced positions in every test
segment (see ``training.data``). Prints accuracy, per-class accuracy and the confusion matrix;
``--json`` prints one JSON object instead: ``accuracy``, ``samples``, ``per_class`` (class name ->
accuracy, null for a class without samples), ``confusion`` (rows = true class, columns = predicted),
``classes``, ``coverage``. ``--confusion OUT.png`` writes the confusion matrix as a picture (PIL).

It also says how much of the model's input fires on this data against the checkpoint's training data
(``stream.coverage``): the median window coverage, its ratio to the training median, and "sparse" or
"dense" when it lies outside 0.5-3x, where the built-in model read 63-81 % on the project's
evaluation sets (README, "Is the input like the training data?").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from stream.binning import WindowSpec, check_filters, check_normalisation
from stream.coverage import check_coverage, coverage_summary, coverage_text, window_coverage
from stream.events import SensorSize
from stream.stage import ArgumentParser
from training import data


@dataclass
class EvalResult:
    """Counts of one evaluation: ``confusion[true, predicted]``, the summed loss and each item's
    predicted class (``predicted``, in the dataset's order; None where results were summed)."""

    confusion: np.ndarray
    loss_sum: float
    classes: tuple[str, ...]
    predicted: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.samples, 1))

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    def per_class(self) -> dict[str, float | None]:
        """Accuracy (recall) of each class; None for a class with no samples."""
        totals = self.confusion.sum(axis=1)
        return {
            name: (float(self.confusion[i, i] / totals[i]) if totals[i] else None)
            for i, name in enumerate(self.classes)
        }

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "samples": self.samples,
            "loss": self.loss,
            "per_class": self.per_class(),
            "classes": list(self.classes),
            "confusion": self.confusion.tolist(),
        }


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    classes: Sequence[str],
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    indices: Sequence[int] | None = None,
) -> EvalResult:
    """Run ``model`` (eval mode) over ``dataset`` items (all, or ``indices``): confusion and loss."""
    was_training = model.training
    model.eval()
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    loss_sum = 0.0
    predictions = []
    for frames, labels in loader:
        frames, labels = frames.to(device), labels.to(device)
        logits = model(frames).float()
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        predicted = logits.argmax(dim=1).cpu().numpy()
        np.add.at(confusion, (labels.cpu().numpy(), predicted), 1)
        predictions.append(predicted)
    model.train(was_training)
    predicted = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    return EvalResult(confusion, loss_sum, tuple(classes), predicted)


def confusion_image(confusion: np.ndarray, classes: Sequence[str], path: str | Path, *, cell: int = 36) -> Path:
    """Write the confusion matrix (rows = true class, columns = predicted) as a PNG; returns the path.

    Cells are shaded by the fraction of their row and show the count; the axes are labelled "true"
    (rows, left) and "predicted" (columns, top); the class list is the legend.
    """
    from PIL import Image, ImageDraw

    count = len(classes)
    label_width = 44  # axis title, then the class numbers
    legend_height = 14 * count + 8
    width = label_width + cell * count + 8
    height = label_width + cell * count + 8 + legend_height
    image = Image.new("RGB", (max(width, 360), height), "white")
    draw = ImageDraw.Draw(image)
    grid = cell * count
    draw.text((label_width + grid // 2 - 27, 4), "predicted", fill="black")
    title = Image.new("RGB", (40, 12), "white")
    ImageDraw.Draw(title).text((0, 0), "true", fill="black")
    image.paste(title.rotate(90, expand=True), (4, label_width + grid // 2 - 20))
    totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fraction = confusion / totals
    for row in range(count):
        draw.text((22, label_width + row * cell + cell // 2 - 5), str(row), fill="black")
        draw.text((label_width + row * cell + cell // 2 - 5, 24), str(row), fill="black")
        for column in range(count):
            shade = int(255 * (1.0 - fraction[row, column]))
            colour = (shade, shade, 255) if row == column else (255, shade, shade)
            box = (label_width + column * cell, label_width + row * cell,
                   label_width + (column + 1) * cell - 1, label_width + (row + 1) * cell - 1)  # fmt: skip
            draw.rectangle(box, fill=colour, outline=(200, 200, 200))
            if confusion[row, column]:
                text_colour = "white" if fraction[row, column] > 0.6 else "black"
                draw.text((box[0] + 4, box[1] + cell // 2 - 5), str(int(confusion[row, column])), fill=text_colour)
    legend_top = label_width + cell * count + 8
    for index, name in enumerate(classes):
        draw.text((4, legend_top + 14 * index), f"{index}: {name}", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


class CheckpointInputs(NamedTuple):
    """How a checkpoint's windows are made: window, sensor-mapping dict, normalisation, noise
    filters and the classes of its logits."""

    window: WindowSpec
    mapping: dict
    normalisation: dict | None
    filters: dict | None
    classes: tuple[str, ...]


def checkpoint_inputs(metadata: dict) -> CheckpointInputs:
    """The ``CheckpointInputs`` stored in a checkpoint's metadata."""
    try:
        inputs = metadata["input"]
        return CheckpointInputs(WindowSpec.from_dict(inputs["window"]), dict(inputs["sensor_mapping"]),
                                check_normalisation(inputs.get("normalisation")), check_filters(inputs.get("filters")),
                                tuple(metadata["classes"]))  # fmt: skip
    except (KeyError, TypeError) as error:
        raise ValueError(f"checkpoint metadata lacks input/classes information ({error})") from None


def training_coverage(metadata: dict) -> float | None:
    """The median coverage of a checkpoint's training windows (its metadata's ``input.coverage``), or
    None when it has none."""
    coverage = check_coverage(metadata["input"].get("coverage"))
    return None if coverage is None else coverage["median"]


def evaluate_checkpoint(
    checkpoint: str | Path, data_spec: str, *, split: str = "test", windows: int = 4, cache_dir: str | None = None,
    sim_seed: int = 0, batch_size: int = 32, workers: int = 1, device: str = "cpu",
    inputs: CheckpointInputs | None = None,
) -> tuple[EvalResult, data.WindowSet]:  # fmt: skip
    """A checkpoint on a data spec's ``split`` (``"all"``: every recording): ``windows`` fixed
    windows per segment, cut, filtered, binned and normalised as the checkpoint says, or as
    ``inputs`` says (for example the checkpoint's with other noise filters)."""
    from training.checkpoint import load_checkpoint

    model, metadata = load_checkpoint(checkpoint, device=device)
    inputs = inputs or checkpoint_inputs(metadata)
    source = data.open_source(data_spec, cache_dir=cache_dir, sim_seed=sim_seed)
    if len(source.classes) > len(inputs.classes) or any(a != b for a, b in zip(source.classes, inputs.classes)):
        raise ValueError(f"data classes {list(source.classes)} do not match the checkpoint's {list(inputs.classes)}")
    recordings = source.recordings if split == "all" else source.split(split)
    window_set = checkpoint_windows(inputs, recordings, windows, cache_dir=cache_dir, workers=workers)
    dataset = data.WindowDataset(window_set, normalisation=inputs.normalisation)
    return evaluate_model(model, dataset, inputs.classes, batch_size=batch_size, device=device), window_set


def checkpoint_windows(inputs: CheckpointInputs, recordings: Sequence[data.Recording], windows: int = 4, *,
                       cache_dir: str | None = None, workers: int = 1) -> data.WindowSet:  # fmt: skip
    """``windows`` fixed windows per segment of ``recordings``, cut, filtered and binned as ``inputs``
    say (counts; ``data.WindowDataset`` normalises them)."""
    mapping = inputs.mapping
    return data.load_windows(
        recordings, data.WindowPlan("eval", windows), inputs.window,
        SensorSize(mapping["input_width"], mapping["input_height"]), method=mapping["method"],
        flip_x=mapping["flip_x"], flip_y=mapping["flip_y"], filters=inputs.filters, cache_dir=cache_dir,
        workers=workers,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m training evaluate --checkpoint PATH --data SPEC [--json] [--confusion OUT.png]``."""
    parser = ArgumentParser(prog="spikeformer-live evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint .json (its .safetensors next to it)")
    parser.add_argument("--data", required=True, help="data spec: sim:DIR|sim:N, dvsgesture:DIR, tonic:DIR, folder:CSV")
    parser.add_argument("--split", choices=(*data.SPLITS, "all"), default="test",
                        help="which split to evaluate (default test; all: every recording, e.g. another domain)")  # fmt: skip
    parser.add_argument("--windows", type=int, default=4, help="fixed windows per test segment (default 4)")
    parser.add_argument("--cache", default=None, help=f"cache directory (default {data.DEFAULT_CACHE_DIR})")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that read and bin recordings")
    parser.add_argument("--sim-seed", type=int, default=0, help="seed of a generated sim:N data set")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--confusion", default=None, help="write the confusion matrix to this PNG")
    args = parser.parse_args(argv)
    from training.checkpoint import read_metadata

    if args.windows < 1 or args.batch_size < 1:
        raise ValueError("--windows and --batch-size must be >= 1")

    result, windows = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, windows=args.windows,
                                          cache_dir=args.cache, sim_seed=args.sim_seed, batch_size=args.batch_size,
                                          workers=args.workers)  # fmt: skip
    classes = result.classes
    coverage = coverage_summary(window_coverage(windows.frames), training_coverage(read_metadata(args.checkpoint)))
    if args.confusion:
        confusion_image(result.confusion, classes, args.confusion)
    if args.json:
        print(json.dumps({**result.to_dict(), "coverage": coverage}))
        return 0
    print(f"{args.checkpoint} on {args.data} ({args.split}): accuracy {result.accuracy:.2%} "
          f"on {result.samples} windows of {windows.segments} segments")  # fmt: skip
    if coverage is not None and coverage["ratio"] is not None:
        print(f"{coverage_text(coverage)}; median {coverage['median']:.4f} of the input cells fire, "
              f"training {coverage['training_median']:.4f}")
    elif coverage is not None:
        print(coverage_text(coverage))
    for name, accuracy in result.per_class().items():
        shown = "   n/a" if accuracy is None else f"{accuracy:6.1%}"
        print(f"  {shown}  {name}")
    if args.confusion:
        print(f"confusion matrix: {args.confusion}")
    return 0
