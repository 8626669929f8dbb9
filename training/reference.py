"""The reference classifier: a small CNN that SynSense trained on the REAL DVS128 Gesture data set.

    python -m training reference --data sim:DIR [--weights PATH] [--window-ms 300] [--windows 4]
        [--split test|train|all] [--json OUT.json]

It is the only model here that has seen real recordings, so it checks two things without any
real data on disk: conventions (events laid out as in the real data set score far higher than
flipped or mirrored ones) and realism (it scores simulated gestures only as well as they resemble
real ones).

The weights: sinabs 3.1.3 ``examples/visualizer/dvs_gesture_params.pt`` (SynSense, Apache-2.0),
converted to safetensors under ``tests/data/reference/`` with the state-dict names kept. The network
(``build_reference``) is bias-free with ReLU, average pooling and linear layers, so its arg-max does
not depend on the scale of the input. Input ``[B, 2, 128, 128]``: per-pixel event counts of one
window, channel = polarity (0 = OFF, 1 = ON), rows = y with the origin at the TOP-LEFT, as the
project's canonical events; output ``[B, 11]`` logits in the order of
``stream.classes.GESTURE_CLASSES``. Measured on simulated gestures: top-left scores far above y
flipped or x mirrored (right/left-hand waves about 100 % against 0-3 %), and the waves come out in
the class order above. The polarity order is NOT decided by simulated data (swapping the channels
moves the accuracy by 1-2 points either way); the project's order is kept.

Windows: ``windows`` evenly spaced windows of ``window_us`` per labelled segment
(``training.data.eval_window_starts``), each binned by ``stream.binning.bin_window`` (one bin, the
sensor mapped to 128x128, with the variant's flips). Variants (``VARIANTS``): the events as read
(``"top-left"``), y flipped (``"bottom-left"``), x mirrored (``"mirrored-x"``), and as read with
the polarity channels swapped (``"swapped-polarity"``). Accuracy is against the segment's own label
for every variant (a mirrored right-hand wave counts as wrong when it is called a left-hand wave).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import safetensors.torch
import torch
from torch import nn

from stream.binning import SensorMapping, WindowSpec
from stream.classes import GESTURE_CLASSES
from stream.events import GestureSegment, SensorSize
from stream.stage import ArgumentParser, run_main
from training import data
from training.evaluate import EvalResult

REFERENCE_INPUT = SensorSize(128, 128)
# A source checkout carries the weights with its tests (an installed package does not).
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "tests/data/reference/sinabs_dvs_gesture.safetensors"
DEFAULT_WINDOW_US = 300_000
DEFAULT_WINDOWS = 4


class Variant(NamedTuple):
    """How the events are laid out before counting: flips of the sensor axes, swapped polarity."""

    flip_x: bool
    flip_y: bool
    swap_polarity: bool
    title: str


VARIANTS: dict[str, Variant] = {
    "top-left": Variant(False, False, False, "as read (top-left)"),
    "bottom-left": Variant(False, True, False, "y flipped (bottom-left)"),
    "mirrored-x": Variant(True, False, False, "x mirrored"),
    "swapped-polarity": Variant(False, False, True, "as read, ON/OFF swapped"),
}


def build_reference() -> nn.Sequential:
    """The network of sinabs' ``examples/visualizer/gesture_viz.py`` (indices match the state dict)."""

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2)]

    return nn.Sequential(
        nn.Conv2d(2, 16, 2, stride=2, bias=False), nn.ReLU(),  # [B, 16, 64, 64]
        *conv(16, 16), *conv(16, 32), *conv(32, 32), *conv(32, 64), *conv(64, 64),  # [B, 64, 2, 2]
        nn.Dropout2d(0.5), nn.Conv2d(64, 256, 2, bias=False), nn.ReLU(),  # [B, 256, 1, 1]
        nn.Dropout2d(0.5), nn.Flatten(),
        nn.Linear(256, 128, bias=False), nn.ReLU(),
        nn.Linear(128, len(GESTURE_CLASSES), bias=False),  # [B, 11]
    )  # fmt: skip


def load_reference(path: str | Path) -> nn.Sequential:
    """The reference network (eval mode) with weights from a ``.safetensors`` file or a ``.pt`` state
    dict (read with ``torch.load(..., weights_only=True)``: no pickled objects). A missing, unreadable
    or foreign file raises ValueError in one line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference weights: {path} is not a file (pass a .safetensors or .pt state dict)")
    if path.suffix not in (".safetensors", ".pt"):
        raise ValueError(f"reference weights: {path} is neither a .safetensors nor a .pt file")
    try:
        if path.suffix == ".safetensors":
            state = safetensors.torch.load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # SafetensorError, UnpicklingError (an object refused), KeyError of junk, ...
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"reference weights {path}: cannot be read ({type(error).__name__}: {first_line})") from None
    model = build_reference()
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)} \
        if isinstance(state, dict) else {}  # fmt: skip
    wrong = sorted(key for key in expected.keys() | found.keys() if expected.get(key) != found.get(key))
    if wrong:
        shown = f"{wrong[:4]}{' ...' if len(wrong) > 4 else ''}"
        raise ValueError(f"reference weights {path}: not the reference network's state dict "
                         f"(tensors {shown} missing, unexpected or of another shape)")  # fmt: skip
    model.load_state_dict(state, strict=True)
    return model.eval()


def reference_inputs(
    events: np.ndarray,
    sensor_size: SensorSize | tuple[int, int],
    starts_us: Sequence[int] | np.ndarray,
    window_us: int = DEFAULT_WINDOW_US,
    variant: str = "top-left",
) -> np.ndarray:
    """Count images ``[N, 2, 128, 128]`` float32 of the windows ``[start, start + window_us)`` µs of
    time-ordered canonical events (top-left origin), laid out as ``VARIANTS[variant]`` says.

    Counting is ``stream.binning.bin_window``'s (one bin); a sensor other than 128x128 is centre-cropped
    to a square and downsampled by area like any model input.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    flip_x, flip_y, swap_polarity, _ = VARIANTS[variant]
    mapping = SensorMapping.create(sensor_size, REFERENCE_INPUT, flip_x=flip_x, flip_y=flip_y)
    counts = data.bin_windows(events, mapping, WindowSpec(1, window_us, window_us), np.asarray(starts_us))[:, 0]
    return np.ascontiguousarray(counts[:, ::-1]) if swap_polarity else counts


def segment_windows(
    segments: Iterable[GestureSegment], events: np.ndarray, window_us: int, windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Window starts (µs) and labels: ``windows`` fixed, evenly spaced windows in every segment (clipped
    to the events' time span; segments shorter than a window give none)."""
    first = int(events["t"][0]) if len(events) else 0
    last = int(events["t"][-1]) + 1 if len(events) else 0
    starts, labels = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for segment in segments:
        clipped = GestureSegment(segment.label, max(segment.start_us, first), min(segment.end_us, last))
        seg_starts = data.eval_window_starts(clipped, window_us, windows)
        starts.append(seg_starts)
        labels.append(np.full(len(seg_starts), segment.label, dtype=np.int64))
    return np.concatenate(starts), np.concatenate(labels)


@torch.no_grad()
def classify(model: nn.Module, counts: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Logits ``[N, 11]`` of count images ``[N, 2, 128, 128]``."""
    batches = [model(torch.from_numpy(counts[i : i + batch_size])) for i in range(0, len(counts), batch_size)]
    return torch.cat(batches) if batches else torch.zeros(0, len(GESTURE_CLASSES))


def score_recordings(
    model: nn.Module,
    recordings: Iterable[tuple[np.ndarray, SensorSize, Sequence[GestureSegment]]],
    *,
    window_us: int = DEFAULT_WINDOW_US,
    windows: int = DEFAULT_WINDOWS,
    variants: Sequence[str] = tuple(VARIANTS),
) -> dict[str, EvalResult]:
    """The reference classifier's confusion per variant over ``(canonical events, sensor size,
    segments)`` recordings, ``windows`` windows of ``window_us`` µs per segment."""
    count = len(GESTURE_CLASSES)
    confusion = {name: np.zeros((count, count), dtype=np.int64) for name in variants}
    loss = dict.fromkeys(variants, 0.0)
    for events, sensor_size, segments in recordings:
        starts, labels = segment_windows(segments, events, window_us, windows)
        if not len(starts):
            continue
        target = torch.from_numpy(labels)
        for name in variants:
            logits = classify(model, reference_inputs(events, sensor_size, starts, window_us, name))
            loss[name] += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            np.add.at(confusion[name], (labels, logits.argmax(dim=1).numpy()), 1)
    return {name: EvalResult(confusion[name], loss[name], GESTURE_CLASSES) for name in variants}


def score_source(
    model: nn.Module,
    spec: data.DataSpec | str,
    *,
    split: str = "test",
    window_us: int = DEFAULT_WINDOW_US,
    windows: int = DEFAULT_WINDOWS,
    cache_dir: Path | str | None = None,
    sim_seed: int = 0,
) -> dict[str, EvalResult]:
    """``score_recordings`` over the labelled segments of a data spec's ``split`` (or ``"all"``); the
    events are read by ``training.data.read_recording`` (so turned to top-left by ``data.ORIENTATION``)."""
    source = data.open_source(spec, cache_dir=cache_dir, sim_seed=sim_seed)
    if source.classes != GESTURE_CLASSES:
        raise ValueError(f"data spec {spec}: the reference classifier knows the 11 DVS128 Gesture classes only")
    recordings = list(source.recordings) if split == "all" else source.split(split)

    def read() -> Iterable[tuple[np.ndarray, SensorSize, Sequence[GestureSegment]]]:
        for recording in recordings:
            events, sensor_size = data.read_recording(recording)
            yield events, sensor_size, recording.segments

    return score_recordings(model, read(), window_us=window_us, windows=windows)


def report(results: dict[str, EvalResult]) -> str:
    """The table: accuracy per variant, then per-class accuracy as read."""
    lines = [f"{'layout':<26} {'accuracy':>8}  windows"]
    for name, result in results.items():
        lines.append(f"{VARIANTS[name].title:<26} {result.accuracy:>8.1%}  {result.samples}")
    if "top-left" in results:
        lines.append("per class, as read:")
        totals = results["top-left"].confusion.sum(axis=1)
        for (name, accuracy), total in zip(results["top-left"].per_class().items(), totals):
            shown = "     n/a" if accuracy is None else f"{accuracy:>8.1%}"
            lines.append(f"  {name:<28} {shown}  of {total}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``reference --data SPEC [...]``: print the table (see the module docstring)."""
    parser = ArgumentParser(
        prog="spikeformer-live reference",
        description="Accuracy of the reference classifier (trained on real DVS128 Gesture) per event layout.",
    )
    parser.add_argument("--data", required=True, help="sim:DIR|sim:N, dvsgesture:DIR, tonic:DIR, folder:CSV")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="reference weights .safetensors or .pt "
                        "(default: the copy under tests/data/reference in a checkout)")  # fmt: skip
    parser.add_argument("--window-ms", type=int, default=DEFAULT_WINDOW_US // 1000, help="window length (default 300)")
    parser.add_argument("--windows", type=int, default=DEFAULT_WINDOWS, help="fixed windows per segment (default 4)")
    parser.add_argument("--split", choices=(*data.SPLITS, "all"), default="test", help="recordings (default test)")
    parser.add_argument("--cache", default=None, help=f"cache directory of sim:N (default {data.DEFAULT_CACHE_DIR})")
    parser.add_argument("--sim-seed", type=int, default=0, help="seed of a generated sim:N data set")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.window_ms < 1 or args.windows < 1:
        raise ValueError("--window-ms and --windows must be >= 1")
    if args.weights == DEFAULT_WEIGHTS and not DEFAULT_WEIGHTS.is_file():
        raise ValueError(f"no reference weights at {DEFAULT_WEIGHTS} (only a source checkout has them); "
                         "pass --weights PATH (.safetensors or .pt)")

    model = load_reference(args.weights)
    results = score_source(model, args.data, split=args.split, window_us=args.window_ms * 1000,
                           windows=args.windows, cache_dir=args.cache, sim_seed=args.sim_seed)  # fmt: skip
    windows = results["top-left"].samples
    if windows == 0:
        raise ValueError(f"{args.data} ({args.split}): no segment is as long as a window ({args.window_ms} ms)")
    print(f"reference classifier ({args.weights.name}) on {args.data} ({args.split}), "
          f"{args.window_ms} ms windows, {args.windows} per segment:")  # fmt: skip
    print(report(results))
    if args.json is not None:
        document = {"data": str(args.data), "split": args.split, "weights": str(args.weights),
                    "window_ms": args.window_ms, "windows_per_segment": args.windows,
                    "variants": {name: result.to_dict() for name, result in results.items()}}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
