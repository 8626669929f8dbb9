"""Training throughput and peak memory of a preset on this machine (CPU unless CUDA is present).

    python benchmarks/bench_training.py [--config small] [--batch-size 16] [--steps 12]

Measures, in one run, on count windows shaped like the simulator's (``[T, 2, H, W]``, about 5 % of
the pixels non-zero, Poisson counts):

* the data pipeline alone: ``training.data.WindowDataset`` with the default augmentation (flip,
  shift, binomial drop-out, log1p) through a DataLoader (0 workers), windows/s;
* one training step (forward, backward, AdamW, gradient clipping) at ``--batch-size``, samples/s;
* evaluation (forward only, ``torch.no_grad``) at twice the batch size, samples/s;

and the peak resident memory of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after
each phase. Ratios are against the training step measured in the same run. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import data  # noqa: E402
from training.spikeformer import PRESETS, build_model, count_parameters  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", choices=sorted(PRESETS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps (median reported)")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = PRESETS[args.config]
    steps, (height, width) = config.time_steps, config.input_size
    rng = np.random.default_rng(0)
    pool = 4 * args.batch_size
    counts = (rng.random((pool, steps, 2, height, width)) < 0.05) * rng.poisson(2.0, (pool, steps, 2, height, width))
    windows = data.WindowSet(
        frames=counts.astype(np.uint8), labels=rng.integers(0, config.num_classes, pool),
        groups=np.arange(pool), starts_us=np.zeros(pool, dtype=np.int64), stretches=np.ones(pool),
    )  # fmt: skip
    dataset = data.WindowDataset(windows, augmentation=data.Augmentation(), seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)
    rss_start = peak_rss_mib()

    def load_batches() -> None:
        for _ in loader:
            pass

    data_seconds = timed(load_batches, 3) / pool

    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, labels = next(iter(loader))

    def train_step() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(batch), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    train_seconds = timed(train_step, args.steps) / args.batch_size
    rss_train = peak_rss_mib()
    eval_batch = torch.cat([batch, batch])

    @torch.no_grad()
    def eval_step() -> None:
        model.eval()
        model(eval_batch)

    eval_seconds = timed(eval_step, max(3, args.steps // 2)) / len(eval_batch)
    rss_eval = peak_rss_mib()

    load = os.getloadavg()[0]
    print(f"Training throughput, preset {args.config!r} ({count_parameters(model):,} parameters), input "
          f"[B, {steps}, 2, {height}, {width}], batch {args.batch_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load:.1f} at the end\n")
    print("| phase | per sample | samples/s | speed vs training step | peak RSS after (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = [
        ("data pipeline (augment + log1p, 0 workers)", data_seconds, rss_start),
        (f"training step (fwd + bwd + AdamW, batch {args.batch_size})", train_seconds, rss_train),
        (f"evaluation (forward only, batch {len(eval_batch)})", eval_seconds, rss_eval),
    ]
    for name, seconds, rss in rows:
        print(f"| {name} | {seconds * 1e3:.1f} ms | {1.0 / seconds:.1f} | {train_seconds / seconds:.2f}x | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
