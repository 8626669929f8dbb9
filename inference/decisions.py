"""When does the model decide? ``spikeformer-live decisions``: accuracy against the time since a
gesture began, time to decision, how often a decision is right, and the tuning of the decision rule.

    spikeformer-live decisions --checkpoint causal.json --checkpoint windowed.json --data sim:DIR \\
        --png docs/decisions.png [--tune --save tuned.json]

Each checkpoint streams every test recording through ``inference.Predictor`` (the live worker's
code: a prediction every stride, or every bin for a causal model). For every gesture and every
offset after its onset (0, 50, ... ms) the prediction current at that moment counts: its class
(``accuracy``) and its stable label (``decided right``: the decision rule's label is the gesture).
Time to decision is the first correct stable label after the onset (``inference.headless``);
``precision`` is the share of stable labels inside gestures that are right; ``window accuracy``
the class of the windows lying inside a gesture (``training evaluate``'s measure, on every window).
A causal model reads out a class at every bin; over a whole window it also has the mean of its T
bins' probabilities, ``window accuracy (mean of its bins)`` (``window_evidence_classes``).

``--tune`` searches the decision rule (EMA weight, confidence and margin thresholds) for the
shortest median time to decision whose precision is at least ``--precision`` (0.95) on the data,
and ``--save`` writes the checkpoint with that rule (its ``decision``) to a new file.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from inference.headless import latency_summary, times_to_decision_ms
from inference.predictor import Predictions, Predictor
from inference.smoothing import SmoothingConfig, softmax
from stream.events import GestureSegment
from stream.stage import ArgumentParser

OFFSETS_MS = tuple(range(0, 2001, 50))
CURVE_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))  # one per checkpoint, RGB
ALPHAS = (0.2, 0.35, 0.5, 0.7, 1.0)
THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4)


def stream_recordings(predictor: Predictor, recordings: Sequence) -> list[tuple[Predictions, list[GestureSegment]]]:
    """Every window of every recording (``training.data.Recording``: its path and segments)."""
    return [(predictor.predict_file(recording.path, list(recording.segments)), list(recording.segments))
            for recording in recordings]  # fmt: skip


def stable_labels(probabilities: np.ndarray, events: np.ndarray, rule: SmoothingConfig) -> np.ndarray:
    """The decision rule's stable label per window (-1: undecided), as the worker computes it
    (an empty window resets the evidence), for an EMA rule."""
    labels = np.full(len(probabilities), -1, dtype=np.int64)
    state = None
    for index, (row, count) in enumerate(zip(probabilities, events)):
        if count == 0:
            state = None
            continue
        state = row.copy() if state is None else (1 - rule.alpha) * state + rule.alpha * row
        second, first = np.partition(state, -2)[-2:]
        if first >= rule.threshold and first - second >= rule.margin:
            labels[index] = int(state.argmax())
    return labels


def window_evidence_classes(probabilities: np.ndarray, end_us: np.ndarray, bins: int, bin_us: int) -> np.ndarray:
    """A causal model's class over each window of ``bins`` bins: the arg max of the mean of the
    probabilities ``[N, classes]`` of the window's predictions, one per bin, ending at ``end_us``
    (µs). A bin missing from the stream (a long silence: the state was reset) starts the mean again."""
    count = len(probabilities)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    index = np.arange(count)
    run_start = np.maximum.accumulate(np.where(np.diff(end_us, prepend=end_us[0] - bin_us) != bin_us, index, 0))
    first = np.maximum(index + 1 - bins, run_start)
    sums = np.cumsum(np.vstack([np.zeros((1, probabilities.shape[1])), probabilities]), axis=0)
    return ((sums[index + 1] - sums[first]) / (index + 1 - first)[:, None]).argmax(axis=1)


def mean_of_bins_accuracy(streams: list[tuple[Predictions, list[GestureSegment]]], bins: tuple[int, int]) -> float | None:
    """The window accuracy of a causal model read as the mean of each window's bins
    (``window_evidence_classes``; ``bins`` = (T, bin µs)); it does not depend on the decision rule."""
    right = labelled_all = 0
    for predictions, _ in streams:
        if not len(predictions):
            continue
        truth = predictions.column("truth")
        labelled = truth >= 0
        classes = window_evidence_classes(np.stack(predictions.column("probabilities")), predictions.column("end_us"), *bins)
        right += int((classes[labelled] == truth[labelled]).sum())
        labelled_all += int(labelled.sum())
    return right / labelled_all if labelled_all else None


def measure(streams: list[tuple[Predictions, list[GestureSegment]]], rule: SmoothingConfig | None = None,
            bins: tuple[int, int] | None = None) -> dict:  # fmt: skip
    """The figures of the module docstring; ``rule`` replaces the predictions' own decision rule;
    ``bins`` = (T, bin µs) of a causal model, for the window accuracy of the mean of its bins."""
    curve = np.zeros((len(OFFSETS_MS), 2))
    counted = np.zeros(len(OFFSETS_MS))
    decided, undecided, inside_right, inside_all, window_right, window_all, compute = [], 0, 0, 0, 0, 0, []
    for predictions, segments in streams:
        if not len(predictions):
            continue
        end = predictions.column("end_us")
        classes = predictions.column("class_index")
        if rule is None:
            stable = predictions.column("stable_index")
        else:
            probabilities = softmax(np.log(np.clip(np.stack(predictions.column("probabilities")), 1e-12, 1)))
            stable = stable_labels(probabilities, predictions.column("events"), rule)
        compute += list(predictions.column("compute_ms"))
        times, missing = times_to_decision_ms(end, stable, segments)
        decided += times
        undecided += missing
        truth = predictions.column("truth")
        window_right += int((classes[truth >= 0] == truth[truth >= 0]).sum())
        window_all += int((truth >= 0).sum())
        for segment in segments:
            inside = (end > segment.start_us) & (end <= segment.end_us)
            inside_all += int((stable[inside] >= 0).sum())
            inside_right += int((stable[inside] == segment.label).sum())
            for row, offset in enumerate(OFFSETS_MS):
                at = segment.start_us + offset * 1000
                if at > segment.end_us:
                    break
                index = int(np.searchsorted(end, at, side="left"))  # the prediction current at that moment
                if index < len(end) and end[index] <= segment.end_us:
                    curve[row] += (classes[index] == segment.label, stable[index] == segment.label)
                    counted[row] += 1
    summary = latency_summary(decided)
    return {
        "window_accuracy": window_right / window_all if window_all else None,
        "window_accuracy_mean_of_bins": None if bins is None else mean_of_bins_accuracy(streams, bins),
        "windows": window_all,
        "precision": inside_right / inside_all if inside_all else None,
        "time_to_decision_ms": {"median": summary["p50"], "p90": summary["p90"], "decided": len(decided),
                                "undecided": undecided},  # fmt: skip
        "compute_ms": latency_summary(compute),
        "curve": {"offset_ms": list(OFFSETS_MS), "accuracy": (curve[:, 0] / np.maximum(counted, 1)).tolist(),
                  "decided_right": (curve[:, 1] / np.maximum(counted, 1)).tolist(), "gestures": counted.tolist()},
    }  # fmt: skip


def tune(streams: list[tuple[Predictions, list[GestureSegment]]], precision: float = 0.95,
         bins: tuple[int, int] | None = None) -> tuple[SmoothingConfig, dict]:  # fmt: skip
    """The EMA rule with the shortest median time to decision among those whose precision is at
    least ``precision`` (and which decide at least 90 % of the gestures); the most precise rule when
    none reaches it. ``bins`` as in ``measure``."""
    best: tuple[tuple, SmoothingConfig, dict] | None = None
    for alpha, threshold, margin in itertools.product(ALPHAS, THRESHOLDS, MARGINS):
        rule = SmoothingConfig("ema", alpha, 5, threshold, margin)
        figures = measure(streams, rule)
        ttd = figures["time_to_decision_ms"]
        decided_share = ttd["decided"] / max(1, ttd["decided"] + ttd["undecided"])
        ok = (figures["precision"] or 0) >= precision and decided_share >= 0.9
        key = (not ok, ttd["median"] if ok and ttd["median"] is not None else -(figures["precision"] or 0))
        if best is None or key < best[0]:
            best = (key, rule, figures)
    _, rule, figures = best
    if bins is not None:  # the same for every rule: computed once
        figures["window_accuracy_mean_of_bins"] = mean_of_bins_accuracy(streams, bins)
    return rule, figures


def curve_image(results: dict[str, dict], path: str | Path, *, width: int = 640, height: int = 360) -> Path:
    """A PNG of accuracy (solid) and decided-right (dashed) against ms since the gesture's onset,
    one colour per checkpoint."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    left, right, top, bottom = 50, width - 10, 30, height - 40
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - fraction * (bottom - top)
        draw.line((left, y, right, y), fill=(220, 220, 220))
        draw.text((8, y - 7), f"{fraction:.0%}", fill=(0, 0, 0), font=font)
    last_ms = OFFSETS_MS[-1]
    for ms in range(0, last_ms + 1, 250):
        x = left + ms / last_ms * (right - left)
        draw.text((x - 10, bottom + 6), str(ms), fill=(0, 0, 0), font=font)
    draw.text((width // 2 - 80, height - 18), "ms since the gesture began", fill=(0, 0, 0), font=font)
    for number, (name, result) in enumerate(results.items()):
        colour = CURVE_COLOURS[number % len(CURVE_COLOURS)]
        for key, dashed in (("accuracy", False), ("decided_right", True)):
            points = [(left + ms / last_ms * (right - left), bottom - value * (bottom - top))
                      for ms, value in zip(result["curve"]["offset_ms"], result["curve"][key])]  # fmt: skip
            for index, (a, b) in enumerate(zip(points, points[1:])):
                if not dashed or index % 2 == 0:
                    draw.line((*a, *b), fill=colour, width=2)
        # The legend, one line per checkpoint, right-aligned in the lower right, where the curves have risen.
        label = f"{name}: accuracy (solid), decided right (dashed)"
        x = max(left + 8, right - 8 - draw.textlength(label, font=font))
        draw.text((x, bottom - 20 - 16 * (len(results) - 1 - number)), label, fill=colour, font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="spikeformer-live decisions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="a checkpoint (repeat to compare)")
    parser.add_argument("--data", required=True, help="data spec (its recordings are streamed)")
    parser.add_argument("--split", choices=("train", "test", "all"), default="test")
    parser.add_argument("--backend", default="onnxruntime", help="auto | onnxruntime | torch | tensorrt")
    parser.add_argument("--cache", default=None, help="cache of a generated sim:N data set")
    parser.add_argument("--png", type=Path, default=None, help="write the curves to this PNG")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--tune", action="store_true", help="search the decision rule (see the module docstring)")
    parser.add_argument("--precision", type=float, default=0.95, help="--tune: the precision to keep")
    parser.add_argument("--save", type=Path, default=None, help="--tune with one checkpoint: write it with the rule")
    args = parser.parse_args(argv)
    from training import data

    source = data.open_source(args.data, cache_dir=args.cache)
    recordings = source.recordings if args.split == "all" else source.split(args.split)
    results = {}
    for checkpoint in args.checkpoint:
        predictor = Predictor.from_checkpoint(checkpoint, backend=args.backend)
        streams = stream_recordings(predictor, recordings)
        name = Path(checkpoint).stem
        window = predictor.metadata["input"]["window"]
        bins = (window["bins"], window["bin_us"]) if hasattr(predictor.backend, "step") else None
        results[name] = measure(streams, bins=bins)
        if args.tune:
            rule, figures = tune(streams, args.precision, bins)
            results[name + " (tuned rule)"] = {**figures, "rule": rule.to_dict()}
            if args.save is not None:
                from training.checkpoint import load_checkpoint, save_checkpoint

                model, metadata = load_checkpoint(checkpoint)
                keep = {key: metadata[key] for key in ("classes", "input", "data", "metrics")}
                save_checkpoint(args.save, model, {**keep, "decision": rule.to_dict()})
                print(f"wrote {args.save} with the decision rule {rule.to_dict()}")
    rows = ["| checkpoint | window accuracy | window accuracy (mean of its bins) | decided right (precision) | "
            "time to decision median / p90 ms | undecided gestures | compute p50 / p99 ms |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    for name, result in results.items():
        ttd, compute = result["time_to_decision_ms"], result["compute_ms"]
        rows.append(f"| {name} | {percent(result['window_accuracy'])} | "
                    f"{percent(result.get('window_accuracy_mean_of_bins'))} | {percent(result['precision'])} | "
                    f"{number(ttd['median'])} / {number(ttd['p90'])} | {ttd['undecided']} of "
                    f"{ttd['decided'] + ttd['undecided']} | {compute['p50']:.2f} / {compute['p99']:.2f} |")  # fmt: skip
    print("\n".join(rows))
    offsets = [0, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000]
    print("\n| ms since onset | " + " | ".join(map(str, offsets)) + " |\n|---|" + "---|" * len(offsets))
    for name, result in results.items():
        curve = dict(zip(result["curve"]["offset_ms"], result["curve"]["accuracy"]))
        print(f"| {name} accuracy | " + " | ".join(f"{curve[ms]:.0%}" for ms in offsets) + " |")
    if args.png is not None:
        curve_image(results, args.png)
        print(f"curves: {args.png}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0
