"""Teach it your gestures (#16): one person's 11 gestures in a new domain, fine-tune, test on a second person.

    python benchmarks/bench_finetune.py [--checkpoint CK] [--domains far-insensitive,dim-noisy,close,very-noisy]
                                        [--seed DRAW] [--finetune-seeds 0,1,2] [--out DIR] [--json OUT.json]

The protocol of the issue, with the simulator as the camera. For each new domain (a renderer, a
lighting family and fixed scene parameters: ``DOMAINS``), ``write_dataset`` films two people in
the same kind of room, one take of each of the 11 gestures each (about 40 s of recording per
person), in DVS128 Gesture's layout: person 1 in ``trials_to_train.txt``, person 2 in
``trials_to_test.txt``. Then ``python -m training finetune --data dvsgesture:DIR`` runs as a user
runs it (a fresh process, data preparation included, defaults otherwise), and ``training evaluate``
takes 4 fixed windows per gesture of person 2.

``--seed`` draws the people and rooms; ``--finetune-seeds`` runs the fine-tune once per seed (its
``--seed``: window draws, augmentation, batches). One seed moves a room by up to 9 points and the
mean of twelve rooms by 2 (README), so compare recipes over several.

Printed per domain, as a markdown table: the checkpoint's accuracy on person 2 before (the peer,
measured in the same run), before with the noise filters the fine-tune chose on person 1's takes
(``finetune --background-activity auto``: the filter's share of the change), and after fine-tuning
(the mean over the fine-tune seeds, and each seed's), and the wall time of one fine-tune command;
then the mean over the domains.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.sim.dataset import write_dataset  # noqa: E402
from training import BUILTIN_CHECKPOINT  # noqa: E402
from training.checkpoint import read_metadata  # noqa: E402
from training.evaluate import checkpoint_inputs, evaluate_checkpoint  # noqa: E402

# name -> (renderer, lighting family, fixed scene parameters): rooms the built-in model was not
# trained on (its training draws zoom 1, thresholds 0.1-0.5 and 0.02-1 Hz background activity).
DOMAINS: dict[str, tuple[str, str, dict]] = {
    "far-insensitive": ("shaded", "fluorescent", {"zoom": 0.7, "threshold": 0.45}),
    "dim-noisy": ("capsules", "dim", {"noise_hz": 3.0}),
    "close": ("shaded", "natural", {"zoom": 1.3}),
    "very-noisy": ("shaded", "fluorescent", {"noise_hz": 10.0}),  # tests/test_teach.py's room: the model fails there
}


def finetune_once(checkpoint: Path, spec: str, run_dir: Path, export: Path, cache: str,
                  finetune_args: Sequence[str] = ()) -> float:  # fmt: skip
    """``python -m training finetune`` as a user runs it (a fresh process, data preparation included);
    returns its wall time in seconds."""
    command = [sys.executable, "-m", "training", "finetune", "--from", str(checkpoint), "--data", spec,
               "--out", str(run_dir), "--export", str(export), "--cache", cache, "--no-progress", *finetune_args]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_domain(name: str, checkpoint: Path, folder: Path, seed: int, finetune_args: Sequence[str] = (),
               finetune_seeds: Sequence[int] = (0,)) -> dict:
    look, lighting, options = DOMAINS[name]
    data_dir = folder / name / "data"
    if not (data_dir / "trials_to_test.txt").is_file():  # an --out of an earlier run keeps its recordings
        write_dataset(data_dir, samples=22, seed=seed, test_fraction=0.5, looks=(look,), lightings=(lighting,),
                      scene_options=options)  # fmt: skip
    spec = f"dvsgesture:{data_dir}"
    cache = str(folder / "cache")
    before, _ = evaluate_checkpoint(checkpoint, spec, split="test", cache_dir=cache)
    after_by_seed, per_class_by_seed, seconds, filtered_by_seed = {}, {}, [], {}
    for finetune_seed in finetune_seeds:
        export = folder / name / f"finetuned-seed{finetune_seed}.json"
        shutil.rmtree(folder / name / "run", ignore_errors=True)
        seconds.append(finetune_once(checkpoint, spec, folder / name / "run", export, cache,
                                     ["--seed", str(finetune_seed), *finetune_args]))  # fmt: skip
        after, _ = evaluate_checkpoint(export, spec, split="test", cache_dir=cache)
        after_by_seed[finetune_seed], per_class_by_seed[finetune_seed] = after.accuracy, after.per_class()
        filters = checkpoint_inputs(read_metadata(export)).filters  # the parent with them: the filter's share
        inputs = checkpoint_inputs(read_metadata(checkpoint))._replace(filters=filters)
        filtered = evaluate_checkpoint(checkpoint, spec, split="test", cache_dir=cache, inputs=inputs)[0]
        filtered_by_seed[finetune_seed] = {"filters": filters, "accuracy": filtered.accuracy}
    return {"domain": name, "look": look, "lighting": lighting, "scene": options, "windows": after.samples,
            "before": before.accuracy, "after": sum(after_by_seed.values()) / len(after_by_seed),
            "filtered": sum(value["accuracy"] for value in filtered_by_seed.values()) / len(filtered_by_seed),
            "filtered_by_seed": filtered_by_seed, "after_by_seed": after_by_seed,
            "after_per_class_by_seed": per_class_by_seed,
            "finetune_s": [round(value, 1) for value in seconds]}  # fmt: skip


def window_text(filters: dict | None) -> str:
    """The background-activity window of a filter spec: µs, "none", or "US adaptive"."""
    filters = filters or {}
    window = filters.get("background_activity_us")
    adaptive = " adaptive" if filters.get("background_activity_adapt") else ""
    return ("none" if window is None else str(window)) + adaptive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=BUILTIN_CHECKPOINT)
    parser.add_argument("--domains", default=",".join(DOMAINS), help=f"some of {', '.join(DOMAINS)}")
    parser.add_argument("--seed", type=int, default=0, help="the draw of people and rooms")
    parser.add_argument("--finetune-seeds", default="0", help="fine-tune once per seed, e.g. 0,1,2 (finetune --seed)")
    parser.add_argument("--out", type=Path, default=None, help="keep the data and runs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--finetune-args", default="", help="more finetune options, one string (e.g. '--epochs 8')")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or Path(scratch)
        extra = shlex.split(args.finetune_args)
        seeds = [int(seed) for seed in args.finetune_seeds.split(",")]
        rows = [run_domain(name, args.checkpoint, folder, args.seed, extra, seeds) for name in args.domains.split(",")]
    print(f"checkpoint {args.checkpoint.name}, finetune {args.finetune_args or 'defaults'}; person 1: one take of "
          "each gesture, person 2 tested, 4 windows per gesture\n")  # fmt: skip
    print("| new domain | renderer, lighting, scene | person 2 before | before, with the fine-tune's filters "
          f"(background activity µs) | after fine-tuning (seeds {args.finetune_seeds}) | fine-tune wall s |\n"
          "|---|---|---|---|---|---|")  # fmt: skip
    for row in rows:
        scene = ", ".join(f"{key} {value}" for key, value in row["scene"].items())
        each = " / ".join(f"{value:.1%}" for value in row["after_by_seed"].values())
        windows_us = sorted({window_text(value["filters"]) for value in row["filtered_by_seed"].values()})
        print(f"| {row['domain']} | {row['look']}, {row['lighting']}, {scene} | {row['before']:.1%} | "
              f"{row['filtered']:.1%} ({', '.join(windows_us)}) | "
              f"{row['after']:.1%} ({each}; {row['windows']} windows) | "
              f"{min(row['finetune_s']):.0f}-{max(row['finetune_s']):.0f} |")  # fmt: skip
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in ("before", "filtered", "after")}
    print(f"| mean of {len(rows)} | | {mean['before']:.1%} | {mean['filtered']:.1%} | {mean['after']:.1%} | |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
