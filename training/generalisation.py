"""How well a model recognises gestures it has never seen rendered: the leave-one-domain-out
protocol, the robustness table and the realism score (``spikeformer-live generalisation ...``).

Domains. The simulator has three independently designed renderers of the person (``capsules``,
``shaded``, ``polygons``) and six lighting families, which fall into two groups: ``steady``
(natural, lab, led) and ``flicker`` (fluorescent, fluorescent_led: mains flicker; dim:
bandwidth-limited, leaky, noisy pixels). ``domains`` writes one data set per (renderer, light group) under ROOT, each with its own
people (seeds) and DVS128-Gesture layout.

Leave one domain out (``loro``): hold each renderer out in turn, train on the other renderers'
data sets and test on every recording of the held-out one; the same for the two light groups.
Model selection uses the training domains' own held-out users only, never the held-out domain.

Robustness (``robustness``): a checkpoint on test sets in which one scene parameter is fixed at
several values (contrast threshold, background activity, subject scale, flicker depth, sensor
size), everything else random.

Realism (``realism``): the accuracy of the classifier trained on the real DVS128 Gesture
(``training.reference``) on each domain: it scores simulated gestures only as well as they
resemble the real ones.

Styles (``styles``): a checkpoint's accuracy per gesture style (``Motion.style``: "forearm wave",
"drums double time", ...) on simulated data sets, whose ``scenes.json`` records the style of every
gesture: which ways of performing a class the model misses.

Each command prints a markdown table; ``loro`` and ``robustness`` write JSON next to it (``--out``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stream.sim.scene import BUILT_IN_LOOKS, LOOKS
from stream.stage import ArgumentParser, comma_names

LIGHT_GROUPS = {"steady": ("natural", "lab", "led"), "flicker": ("fluorescent", "fluorescent_led", "dim")}
ROBUSTNESS = {  # parameter -> values (simulate's option of the same name)
    "threshold": (0.1, 0.2, 0.35, 0.5),
    "noise_hz": (0.05, 0.5, 2.0, 5.0),
    "zoom": (0.6, 0.8, 1.0, 1.3),
    "flicker_depth": (0.0, 0.05, 0.15, 0.3),
    "sensor": ("128x128", "240x180", "346x260", "640x480"),
}


def domain_name(look: str, group: str) -> str:
    return f"{look}-{group}"


def domain_spec(root: Path, looks: Sequence[str] = LOOKS, groups: Sequence[str] = tuple(LIGHT_GROUPS)) -> str:
    """The ``sim:DIR+sim:DIR...`` data spec of some domains under ``root``."""
    return "+".join(f"sim:{root / domain_name(look, group)}" for look in looks for group in groups)


def _simulate(out: Path, samples: int, seed: int, workers: int, looks: Sequence[str], lightings: Sequence[str],
              extra: Sequence[str] = ()) -> None:  # fmt: skip
    if (out / "scenes.json").is_file():
        return
    command = [sys.executable, "-m", "stream", "simulate", "--out", str(out), "--samples", str(samples),
               "--seed", str(seed), "--workers", str(workers), "--looks", ",".join(looks),
               "--lightings", ",".join(lightings), *extra]  # fmt: skip
    subprocess.run(command, check=True)


def make_domains(root: Path, samples: int, seed: int = 0, workers: int = os.cpu_count() or 1,
                 looks: Sequence[str] = LOOKS) -> dict[str, Path]:  # fmt: skip
    """Write the domain data sets of ``looks`` (two light groups each) of ``samples`` gestures each
    (skipped when present). Each domain's seed depends only on its place in ``LOOKS``, so writing
    some looks now and the rest later gives the same data sets."""
    paths = {}
    for index, (look, (group, lightings)) in enumerate((look, item) for look in LOOKS for item in LIGHT_GROUPS.items()):
        if look not in looks:
            continue
        path = root / domain_name(look, group)
        _simulate(path, samples, seed * 100 + index, workers, [look], lightings)
        paths[domain_name(look, group)] = path
    return paths


LORO_FAMILIES = ("renderer", "light")


def loro_splits(root: Path, families: Sequence[str] = LORO_FAMILIES,
                looks: Sequence[str] = LOOKS) -> dict[str, tuple[str, str]]:  # fmt: skip
    """Held-out domain -> (training data spec, test data spec), for the renderers and/or light groups
    of ``looks``: each member of a family is held out in turn while the model trains on the others."""
    groups = tuple(LIGHT_GROUPS)
    if "renderer" in families and len(set(looks)) < 2:
        raise ValueError(f"leaving a renderer out needs two renderers or more, got {', '.join(looks)}")
    splits = {}
    if "renderer" in families:
        for held_out in looks:
            trained = [look for look in looks if look != held_out]
            splits[f"renderer {held_out}"] = (domain_spec(root, trained, groups), domain_spec(root, [held_out], groups))
    if "light" in families:
        for held_out in groups:
            trained = [group for group in groups if group != held_out]
            splits[f"light {held_out}"] = (domain_spec(root, looks, trained), domain_spec(root, looks, [held_out]))
    return splits


def _train(name: str, train_spec: str, out: Path, train_args: Sequence[str], cache: Path) -> Path:
    run = out / name.replace(" ", "-")
    checkpoint = run / "final.json"
    if not checkpoint.is_file():
        command = [sys.executable, "-m", "training", "train", "--data", train_spec, "--out", str(run / "run"),
                   "--cache", str(cache), "--no-progress", "--export", str(checkpoint), *train_args]  # fmt: skip
        log_path = run.parent / f"{run.name}.log"
        with open(log_path, "w") as log:
            code = subprocess.run(command, check=False, stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            raise ValueError(f"the training that leaves out {name} failed (exit {code}): "
                             f"{lines[-1] if lines else 'no output'} (log: {log_path})")  # fmt: skip
    return checkpoint


def loro(root: Path, out: Path, train_args: Sequence[str], *, parallel: int = 1, windows: int = 4,
         families: Sequence[str] = LORO_FAMILIES, looks: Sequence[str] = LOOKS) -> dict:  # fmt: skip
    """Train one model per held-out domain of ``families`` (``parallel`` at once), test it on that domain."""
    from training.evaluate import evaluate_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    splits = loro_splits(root, families, looks)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        checkpoints = dict(zip(splits, pool.map(lambda item: _train(item[0], item[1][0], out, train_args, cache),
                                                splits.items())))  # fmt: skip
    table = {}
    for name, (train_spec, test_spec) in splits.items():
        held_out, _ = evaluate_checkpoint(checkpoints[name], test_spec, split="all", windows=windows, cache_dir=cache,
                                          workers=os.cpu_count() or 1)  # fmt: skip
        own, _ = evaluate_checkpoint(checkpoints[name], train_spec, split="test", windows=windows, cache_dir=cache,
                                     workers=os.cpu_count() or 1)  # fmt: skip
        table[name] = {"train": train_spec, "test": test_spec, "own_test_accuracy": own.accuracy,
                       "held_out_accuracy": held_out.accuracy, "held_out_windows": held_out.samples,
                       "held_out_per_class": held_out.per_class(), "checkpoint": str(checkpoints[name])}  # fmt: skip
    result = {"train_args": list(train_args), "windows_per_segment": windows, "domains": table,
              "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    (out / "loro.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def robustness(checkpoint: Path, out: Path, *, samples: int, seed: int = 0, windows: int = 4,
               workers: int = os.cpu_count() or 1) -> dict:  # fmt: skip
    """A checkpoint on one test set per (parameter, value) of ``ROBUSTNESS``."""
    from training.evaluate import evaluate_checkpoint

    table: dict[str, dict[str, float]] = {}
    for index, (parameter, values) in enumerate(ROBUSTNESS.items()):
        table[parameter] = {}
        for number, value in enumerate(values):
            folder = out / "sets" / f"{parameter}-{value}"
            option = "--sensor" if parameter == "sensor" else f"--{parameter.replace('_', '-')}"
            count = samples if parameter != "sensor" or value == "128x128" else max(11, samples // 2)
            _simulate(folder, count, 1000 + 10 * index + number, workers, BUILT_IN_LOOKS, tuple(LIGHT_GROUPS["steady"])
                      + tuple(LIGHT_GROUPS["flicker"]), [option, str(value)])  # fmt: skip
            result, _ = evaluate_checkpoint(checkpoint, f"sim:{folder}", split="all", windows=windows,
                                            cache_dir=out / "cache", workers=workers)  # fmt: skip
            table[parameter][str(value)] = result.accuracy
    (out / "robustness.json").write_text(json.dumps({"checkpoint": str(checkpoint), "table": table}, indent=1) + "\n")
    return table


def realism(root: Path, weights: Path | None = None, cache: Path | None = None) -> dict:
    """The reference classifier's accuracy (as read, top-left) on every domain present under ``root``."""
    from training import reference

    model = reference.load_reference(weights or reference.DEFAULT_WEIGHTS)
    table = {}
    for look in LOOKS:
        for group in LIGHT_GROUPS:
            if not (root / domain_name(look, group)).is_dir():
                continue
            results = reference.score_source(model, f"sim:{root / domain_name(look, group)}", split="all",
                                             cache_dir=cache)  # fmt: skip
            table[domain_name(look, group)] = {"accuracy": results["top-left"].accuracy,
                                               "windows": results["top-left"].samples}  # fmt: skip
    return table


def style_accuracy(checkpoint: Path, spec: str, *, split: str = "all", windows: int = 4,
                   cache: Path | None = None) -> dict[tuple[str, str], tuple[int, int]]:  # fmt: skip
    """``(class, style) -> (windows right, windows)`` of ``checkpoint`` on simulated data sets
    (``sim:DIR[+sim:DIR...]``, ``windows`` fixed windows per gesture), from the styles that each
    ``DIR/scenes.json`` records per file, in the order of its labels file."""
    from training import data
    from training.evaluate import evaluate_checkpoint

    cache_dir = None if cache is None else str(cache)
    source = data.open_source(spec, cache_dir=cache_dir)
    styles: list[str] = []  # one per segment, numbered across the set as the window set's groups are
    manifests: dict[Path, dict] = {}  # each folder's scenes.json, read once
    for recording in source.recordings if split == "all" else source.split(split):
        manifest = recording.path.parent / "scenes.json"
        if manifest not in manifests:
            manifests[manifest] = json.loads(manifest.read_text()) if manifest.is_file() else {}
        scene = manifests[manifest].get(recording.path.name, {})
        if len(scene.get("styles", ())) != len(recording.segments):
            raise ValueError(f"{manifest} gives no style for each gesture of {recording.path.name}: write the data "
                             "set again with this version (spikeformer-live simulate or generalisation domains)")  # fmt: skip
        styles += scene["styles"]
    result, window_set = evaluate_checkpoint(checkpoint, spec, split=split, windows=windows, cache_dir=cache_dir)
    if window_set.skipped_segments:
        raise ValueError(f"{window_set.skipped_segments} gestures are shorter than a window: styles cannot be matched")
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for label, group, predicted in zip(window_set.labels, window_set.groups, result.predicted):
        key = (result.classes[label], styles[group])
        right, total = counts.get(key, (0, 0))
        counts[key] = (right + int(predicted == label), total + 1)
    return counts


def _markdown(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def main(argv: Sequence[str] | None = None) -> int:
    """``generalisation domains|loro|robustness|realism|styles ...`` (see the module docstring)."""
    parser = ArgumentParser(prog="spikeformer-live generalisation", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    looks = comma_names(LOOKS)
    domains = commands.add_parser("domains", help="write the domain data sets (two light groups per renderer)")
    domains.add_argument("--root", type=Path, required=True)
    domains.add_argument("--samples", type=int, default=1100, help="gestures per domain")
    domains.add_argument("--seed", type=int, default=0)
    domains.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    domains.add_argument("--looks", type=looks, default=LOOKS, help=f"renderers, comma separated: {','.join(LOOKS)}")
    held_out = commands.add_parser("loro", help="leave one domain out: train, test on the held-out domain")
    held_out.add_argument("--root", type=Path, required=True, help="the domains' folder")
    held_out.add_argument("--out", type=Path, required=True)
    held_out.add_argument("--parallel", type=int, default=1, help="trainings at once")
    held_out.add_argument("--only", choices=LORO_FAMILIES, default=None,
                          help="leave out only renderers or only light groups (default both)")
    held_out.add_argument("--looks", type=looks, default=LOOKS,
                          help=f"the renderers that take part, comma separated (default {','.join(LOOKS)})")
    held_out.add_argument("train_args", nargs="*", help="after --: options for train (--config, --epochs, ...)")
    robust = commands.add_parser("robustness", help="a checkpoint against fixed scene parameters")
    robust.add_argument("--checkpoint", type=Path, required=True)
    robust.add_argument("--out", type=Path, required=True)
    robust.add_argument("--samples", type=int, default=44, help="gestures per test set")
    real = commands.add_parser("realism", help="the reference classifier on each domain")
    real.add_argument("--root", type=Path, required=True)
    real.add_argument("--weights", type=Path, default=None)
    per_style = commands.add_parser("styles", help="a checkpoint's accuracy per gesture style")
    per_style.add_argument("--checkpoint", type=Path, required=True)
    per_style.add_argument("--data", required=True, help="simulated data sets: sim:DIR[+sim:DIR...]")
    per_style.add_argument("--split", choices=("all", "train", "test"), default="all")
    per_style.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "domains":
        for name, path in make_domains(args.root, args.samples, args.seed, args.workers, args.looks).items():
            print(f"{name}: {path}")
    elif args.command == "loro":
        families = LORO_FAMILIES if args.only is None else (args.only,)
        result = loro(args.root, args.out, args.train_args, parallel=args.parallel, families=families,
                      looks=args.looks)  # fmt: skip
        rows = [["held-out domain", "trained on", "own held-out users", "held-out domain accuracy", "windows"]]
        for name, row in result["domains"].items():
            trained = row["train"].replace(str(args.root) + "/", "").replace("sim:", "")
            rows.append([name, trained, f"{row['own_test_accuracy']:.1%}", f"{row['held_out_accuracy']:.1%}",
                         str(row["held_out_windows"])])  # fmt: skip
        print(_markdown(rows))
    elif args.command == "robustness":
        table = robustness(args.checkpoint, args.out, samples=args.samples)
        width = max(len(values) for values in ROBUSTNESS.values())
        rows = [["parameter", *[f"value {i + 1}" for i in range(width)]]]
        for parameter, accuracies in table.items():
            rows.append([parameter, *[f"{value}: {accuracy:.1%}" for value, accuracy in accuracies.items()]])
        print(_markdown(rows))
    elif args.command == "styles":
        counts = style_accuracy(args.checkpoint, args.data, split=args.split, cache=args.cache)
        rows = [["class", "style", "windows", "accuracy"]]
        for (name, style), (right, total) in sorted(counts.items(), key=lambda item: (item[0][0], item[1][0] / item[1][1])):
            rows.append([name, style, str(total), f"{right / total:.1%}"])
        print(_markdown(rows))
    else:
        table = realism(args.root, args.weights)
        rows = [["domain", "reference classifier accuracy", "windows"]]
        rows += [[name, f"{row['accuracy']:.1%}", str(row["windows"])] for name, row in table.items()]
        print(_markdown(rows))
    return 0
