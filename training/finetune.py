"""``spikeformer-live finetune``: teach a model your gestures from a few labelled recordings.

    spikeformer-live finetune --data folder:takes/labels.csv --out runs/mine --export mine.json
    spikeformer-live finetune --from other.json --data dvsgesture:DIR --out runs/x --epochs 10

Starts from a checkpoint (``--from``, default the built-in model), keeps its model, window, sensor
mapping, normalisation and noise filters (all but the background-activity window, below), and
trains on the data's train split for a few epochs at a low learning rate (many augmented windows
per take: ``--repeats``; ``--augment shape`` by default, which also varies the body's shape, so that
one person's takes teach the room more than the person).
Before training, ``--background-activity auto`` (the default) scores the parent on the train takes
with its own filter when its window follows the noise (the built-in's), then with each fixed
background-activity window of ``BACKGROUND_ACTIVITY_CANDIDATES_US``, and keeps the best in the new
checkpoint: a noisy camera or room needs a shorter window than the simulator did, and one take per
class is enough to tell (README, "Teach it your gestures").
``--epochs 0`` trains nothing: it exports the parent as it is with the filter ``auto`` fitted (in
about 15 s), which on one take per gesture reads as well as fine-tuning (README).
A class the checkpoint does not know gets a freshly initialised output; known ones keep theirs, so
new, fewer or renamed classes all work. ``--freeze-tokenizer`` trains only the transformer and the
head. The export mixes the weights (WiSE-FT, ``--interpolate A``: ``(1-A) * parent + A * fine-tuned``):
by default half and half when the parent knows every class of your data, and the fine-tuned weights
alone when a class is new (README, "Mixing weights"). The new checkpoint records where it
came from (``data.parent``: the parent's path, weights sha256, classes and data, and the command).
At the end a table gives the accuracy on the data's test split before (the parent, when it knows
the classes), before with the new noise filters (the filter's share) and after. The exported model
is the last epoch's: the test takes are what the table reports, so no epoch is chosen by them.

``--seed`` fixes the window draws, the augmentation, the batches and a new head: the same command on
the same recordings gives the same weights bit for bit on one machine. Another CPU rounds
differently, and a fine-tune on a few takes can turn that into a few points on the test takes
(README, "Teach it your gestures").
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from stream.binning import check_filters
from stream.coverage import coverage_summary, coverage_text, window_coverage
from stream.stage import ArgumentParser
from training import BUILTIN_CHECKPOINT, data
from training.augment import AUGMENT_PRESETS

if TYPE_CHECKING:
    from training.evaluate import EvalResult

DEFAULT_EPOCHS = 4  # one take per class: a few gentle epochs keep what the parent knows (bench_finetune.py)
DEFAULT_LR = 2e-4
DEFAULT_REPEATS = 16
DEFAULT_TRAIN_WINDOWS = 16
DEFAULT_AUGMENT = "shape"  # body shape and outline jitter: the takes teach the room more, their person less
# --interpolate when the parent knows every class of the data: half the parent's weights. With one take per gesture
# it reads 89.9 % against 89.3 % for the fine-tuned weights alone over sixteen rooms of bench_finetune, and 86.1 %
# against 82.1 % over eight pairs of people of another simulator (bench_other_simulator --teach; README)
DEFAULT_INTERPOLATE_KNOWN_CLASSES = 0.5
# ... and when a class is new: the fine-tuned weights (the new classes are learnt on the fine-tuned features)
DEFAULT_INTERPOLATE_NEW_CLASSES = 1.0
# background-activity windows (µs; None: no such filter) that --background-activity auto scores the parent with on
# the train takes. Twelve rooms of bench_finetune: the noisiest (10 Hz per pixel) want 250 µs, the others 1-10 ms.
BACKGROUND_ACTIVITY_CANDIDATES_US: tuple[int | None, ...] = (None, 10_000, 5_000, 3_000, 2_000, 1_000, 500, 250, 125)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="spikeformer-live finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="init_from", type=Path, default=BUILTIN_CHECKPOINT,
                        help="the checkpoint to start from (default: the built-in model)")  # fmt: skip
    parser.add_argument("--data", required=True, help="your recordings: folder:CSV, dvsgesture:DIR, sim:DIR, ...")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--export", type=Path, default=None, help="the fine-tuned checkpoint (default OUT/finetuned.json)")
    parser.add_argument("--epochs", type=_epochs, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default {DEFAULT_EPOCHS}); 0: no training, export the parent with the "
                        "noise filter --background-activity picks (the parent must know your classes)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak learning rate")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="augmented windows per take and epoch")
    parser.add_argument("--train-windows", type=int, default=DEFAULT_TRAIN_WINDOWS, help="window positions per take")
    parser.add_argument("--augment", choices=tuple(AUGMENT_PRESETS), default=DEFAULT_AUGMENT,
                        help=f"augmentation preset (training.augment; default {DEFAULT_AUGMENT})")  # fmt: skip
    candidates = ", ".join("none" if dt_us is None else str(dt_us) for dt_us in BACKGROUND_ACTIVITY_CANDIDATES_US)
    parser.add_argument("--background-activity", type=_background_activity, default="auto", metavar="auto|keep|none|US",
                        help="the background-activity filter's window: auto (default) scores the parent on your "
                        f"train takes with its own window (adaptive, if it is) and each of {candidates} µs and keeps "
                        "the best, so that a noisier room gets a shorter window; keep: the parent's; none: no such "
                        "filter; or a window in µs. The new checkpoint carries it")  # fmt: skip
    parser.add_argument("--freeze-tokenizer", action="store_true", help="train only the transformer and the head")
    parser.add_argument("--rehearse", default=None, metavar="SPEC",
                        help="also train on as many windows of what the parent learnt (e.g. sim:110: 10 simulated "
                        "gestures per class, generated once into the cache), so that it forgets less")  # fmt: skip
    parser.add_argument("--interpolate", type=float, default=None, metavar="A",
                        help="export (1-A) * parent + A * fine-tuned weights, a weight-space ensemble that "
                        "keeps what the parent knew (0 < A <= 1, 1 = the fine-tuned weights; default "
                        f"{DEFAULT_INTERPOLATE_KNOWN_CLASSES} when the parent knows every class of --data, "
                        f"{DEFAULT_INTERPOLATE_NEW_CLASSES} when a class is new)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the window draws, augmentation and new head")
    parser.add_argument("--cache", default=None, help=f"cache directory (default {data.DEFAULT_CACHE_DIR})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _fixed_window(filters: dict | None) -> dict:
    """Noise filters without the adaptation of the background-activity window (a dict, maybe empty)."""
    return {key: value for key, value in (filters or {}).items() if key != "background_activity_adapt"}


def background_activity_candidates(parent_filters: dict | None,
                                   candidates_us: Sequence[int | None] = BACKGROUND_ACTIVITY_CANDIDATES_US,
                                   ) -> list[tuple[str, dict | None]]:  # fmt: skip
    """The noise filters ``--background-activity auto`` scores, named: the parent's own first when its
    window adapts to the noise (``background_activity_adapt``), then the parent's with each fixed
    window of ``candidates_us`` (µs; None: no such filter)."""
    base = {"background_activity_us": None, "hot_pixels": None, "flicker": None, **_fixed_window(parent_filters)}
    named = []
    adapt = (parent_filters or {}).get("background_activity_adapt")
    if adapt is not None:
        name = (f"{parent_filters['background_activity_us']}, adaptive ({adapt['knee_hz']:g} Hz, power "
                f"{adapt['power']:g}; the parent's)")  # fmt: skip
        named.append((name, check_filters(parent_filters)))
    named += [("none" if dt_us is None else str(dt_us), check_filters({**base, "background_activity_us": dt_us}))
              for dt_us in candidates_us]  # fmt: skip
    return named


def calibrate_background_activity(checkpoint: Path, spec: str, cache: str | None,
                                  candidates_us: Sequence[int | None] = BACKGROUND_ACTIVITY_CANDIDATES_US,
                                  ) -> tuple[dict | None, list[tuple[str, EvalResult, bool]]]:  # fmt: skip
    """The checkpoint's noise filters with the background-activity window under which the checkpoint
    scores best on the data's train takes (accuracy, then loss; 4 fixed windows per take), and each
    candidate's name, score and whether it was kept (``background_activity_candidates``). A noisier
    room wants a shorter window: more of its noise events find no neighbour in time."""
    from training.checkpoint import read_metadata
    from training.evaluate import checkpoint_inputs, evaluate_checkpoint

    inputs = checkpoint_inputs(read_metadata(checkpoint))
    scored = []
    for name, filters in background_activity_candidates(inputs.filters, candidates_us):
        result, _ = evaluate_checkpoint(checkpoint, spec, split="train", cache_dir=cache,
                                        inputs=inputs._replace(filters=filters))  # fmt: skip
        scored.append((name, filters, result))
    best = max(range(len(scored)), key=lambda index: (scored[index][2].accuracy, -scored[index][2].loss))
    return scored[best][1], [(name, result, index == best) for index, (name, _, result) in enumerate(scored)]


def _filters_argument(args: argparse.Namespace, parent_filters: dict | None, knows_classes: bool) -> list[str]:
    """train's ``--filters`` for ``--background-activity`` (``[]``: the parent's filters); prints
    what auto scored."""
    from training.train import format_filters

    if args.background_activity == "keep":
        return []
    if args.background_activity != "auto":
        given = {**_fixed_window(parent_filters), "background_activity_us": args.background_activity}
        return ["--filters", format_filters(given)]
    if not knows_classes:
        print("background-activity filter: the parent's (it does not know these classes, so it cannot be scored on "
              "your takes; --background-activity US sets one)")  # fmt: skip
        return []
    filters, scored = calibrate_background_activity(args.init_from, args.data, args.cache)
    print("| background-activity window (µs) | the parent on the train takes | loss |\n|---|---|---|")
    for name, result, kept in scored:
        print(f"| {name}{' (kept)' if kept else ''} | {result.accuracy:.1%} | {result.loss:.3f} |")
    return ["--filters", format_filters(filters)]


def _epochs(text: str) -> int:
    try:
        epochs = int(text)
    except ValueError:
        epochs = -1
    if epochs < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return epochs


def export_parent(parent: Path, filters: dict | None, export: Path, *, data_spec: str, command: str) -> Path:
    """The parent's weights, classes and inputs with other noise filters, as a new checkpoint that
    records where it came from (``finetune --epochs 0``)."""
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.train import parent_record

    model, metadata = load_checkpoint(parent)
    derived = {"classes": metadata["classes"], "input": {**metadata["input"], "filters": filters},
               "data": {"spec": data_spec, "command": command, "parent": parent_record(parent, metadata)}}  # fmt: skip
    if metadata.get("decision") is not None:
        derived["decision"] = metadata["decision"]
    return save_checkpoint(export, model, derived)


def default_interpolate(knows_classes: bool) -> float:
    """``--interpolate`` when it is not given: the parent's and the fine-tuned weights half and half when
    the parent knows every class of the data, the fine-tuned weights alone when a class is new."""
    return DEFAULT_INTERPOLATE_KNOWN_CLASSES if knows_classes else DEFAULT_INTERPOLATE_NEW_CLASSES


def _train_argv(args: argparse.Namespace, export: Path, filters_argv: list[str], interpolate: float) -> list[str]:
    """``train``'s arguments for the fine-tune ``args`` ask for (``interpolate``: ``--interpolate``,
    resolved)."""
    train_argv = [
        "--from", str(args.init_from), "--data", args.data, "--out", str(args.out / "run"), "--epochs", str(args.epochs),
        "--lr", str(args.lr), "--warmup-epochs", "0.5", "--repeats", str(args.repeats),
        "--train-windows", str(args.train_windows), "--eval-windows", "4", "--augment", args.augment,
        "--export", str(export),
        "--export-epoch", "last",  # the held-out takes are what the summary reports: no selection on them
        "--interpolate", str(interpolate),
        "--batch-size", "16", "--bin-workers", "1", "--seed", str(args.seed),
    ]  # fmt: skip
    train_argv += filters_argv
    if args.cache:
        train_argv += ["--cache", args.cache]
    if args.freeze_tokenizer:
        train_argv.append("--freeze-tokenizer")
    if args.rehearse:
        train_argv += ["--rehearse", args.rehearse]
    if args.no_progress:
        train_argv.append("--no-progress")
    return train_argv


def _background_activity(text: str) -> str | int | None:
    """``--background-activity``: auto, keep, none or a window in µs."""
    if text in ("auto", "keep"):
        return text
    if text == "none":
        return None
    try:
        dt_us = int(text)
    except ValueError:
        dt_us = 0
    if dt_us < 1:
        raise argparse.ArgumentTypeError(f"must be auto, keep, none or a positive window in µs, got {text!r}")
    return dt_us


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training import train
    from training.checkpoint import read_metadata
    from training.evaluate import checkpoint_inputs, evaluate_checkpoint, training_coverage

    started = time.perf_counter()
    source = data.open_source(args.data, cache_dir=args.cache)
    for split in data.SPLITS:
        if not source.split(split):
            raise ValueError(f"{args.data}: no {split} recordings (label some takes as {split}: the split column of "
                             "a folder CSV, or the trials files of a DVS128 Gesture folder)")  # fmt: skip
    export = args.export or args.out / "finetuned.json"
    parent_metadata = read_metadata(args.init_from)
    parent_inputs = checkpoint_inputs(parent_metadata)
    knows_classes = source.classes == parent_inputs.classes[: len(source.classes)]  # so that it can be scored on them
    if args.epochs == 0 and not knows_classes:
        raise ValueError(f"--epochs 0 exports {args.init_from} as it is with a noise filter fitted to your takes: it "
                         f"needs a parent that knows your classes ({', '.join(source.classes)})")  # fmt: skip
    training_only = [name for name, given in (("--rehearse", args.rehearse), ("--freeze-tokenizer",
                     args.freeze_tokenizer), ("--interpolate", args.interpolate is not None)) if given]
    if args.epochs == 0 and training_only:
        raise ValueError(f"--epochs 0 trains nothing: {', '.join(training_only)} would not apply")
    before = None  # the parent on the test takes, when it knows their classes
    if knows_classes:
        before = evaluate_checkpoint(args.init_from, args.data, split="test", cache_dir=args.cache)[0]
    filters_argv = _filters_argument(args, parent_inputs.filters, knows_classes)
    if args.epochs == 0:
        filters = train.parse_filters(filters_argv[1]) if filters_argv else parent_inputs.filters
        command = "spikeformer-live finetune " + shlex.join(argv if argv is not None else sys.argv[1:])
        export_parent(args.init_from, filters, export, data_spec=args.data, command=command)
    else:
        interpolate = default_interpolate(knows_classes) if args.interpolate is None else args.interpolate
        train.main(_train_argv(args, export, filters_argv, interpolate))
    after, windows = evaluate_checkpoint(export, args.data, split="test", cache_dir=args.cache)
    filtered = None  # the parent with the new checkpoint's filters: how much of the change the filter alone makes
    if args.epochs == 0:
        filtered = after  # the export is just that
    elif before is not None and filters_argv:
        new_filters = checkpoint_inputs(read_metadata(export)).filters
        filtered = evaluate_checkpoint(args.init_from, args.data, split="test", cache_dir=args.cache,
                                       inputs=parent_inputs._replace(filters=new_filters))[0]  # fmt: skip
    seconds = time.perf_counter() - started
    done = "fitted the noise filter of" if args.epochs == 0 else "fine-tuned"
    print(f"\n{done} {args.init_from.name} on {args.data} in {seconds:.0f} s "
          f"({len(source.split('train'))} train / {len(source.split('test'))} test recordings): {export}")  # fmt: skip
    if args.epochs > 0:
        print(f"its weights: {1 - interpolate:g} x the parent's + {interpolate:g} x the fine-tuned (--interpolate)")
    print("| accuracy on the test takes | before | before, with the new noise filters | after |\n|---|---|---|---|")
    shown = ["n/a (new classes)" if before is None else f"{result.accuracy:.1%}" if result else "- (the parent's)"
             for result in (before, filtered)]
    print(f"| {windows.segments} segments, {after.samples} windows | {shown[0]} | {shown[1]} | {after.accuracy:.1%} |")
    for name, accuracy in after.per_class().items():
        print(f"  {name}: {'n/a' if accuracy is None else f'{accuracy:.1%}'}")
    coverage = coverage_summary(window_coverage(windows.frames), training_coverage(parent_metadata))
    if coverage is not None:  # a setup far from the parent's training data is where fine-tuning has most to do
        print(f"your test takes against the parent's training data: {coverage_text(coverage)}")
    if before is not None and before.accuracy > after.accuracy:
        print(f"note: the parent reads more of your test takes ({before.accuracy:.1%}) than the new checkpoint "
              f"({after.accuracy:.1%}): keep using it (--checkpoint {args.init_from}), "
              "or record more takes")  # fmt: skip
    return 0
