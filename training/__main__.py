"""``python -m training COMMAND ...``: model tools (also ``spikeformer-live COMMAND``)."""

from __future__ import annotations

import sys

from stream.stage import Command, dispatch

COMMANDS = {
    "train": Command("training.train:main", "train a model on event windows"),
    "evaluate": Command("training.evaluate:main", "evaluate a checkpoint on a data set's test split"),
    "finetune": Command("training.finetune:main", "teach a checkpoint your gestures from a few labelled recordings"),
    "adapt": Command("training.adapt:main", "adapt a checkpoint's batch-norm statistics to your camera from unlabelled recordings"),
    "summary": Command("training.commands:summary_main", "parameters, stage shapes and GFLOPs of a preset"),
    "reference": Command("training.reference:main", "the reference classifier (trained on real DVS128 Gesture) on a data set"),
    "generalisation": Command("training.generalisation:main", "leave-one-domain-out, robustness and realism tables"),
    "cache": Command("training.data:cache_main", "list the simulated data sets and binned windows in the cache (--clear)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(COMMANDS, argv, "python -m training")


if __name__ == "__main__":
    sys.exit(main())
