"""The model, its data, training, evaluation and checkpoints."""

from pathlib import Path

# The built-in checkpoint (shipped with the package): what ``launch.py``, ``finetune`` and the
# Python API use when no checkpoint is given.
BUILTIN_CHECKPOINT = Path(__file__).resolve().parents[1] / "inference" / "checkpoints" / "spikeformer-medium-sim.json"
# Its causal (streaming) sibling, made from it with ``train --from ... --causal`` (README, "Decide
# early"): a prediction every 50 ms bin, with its tuned decision rule; ``launch.py --checkpoint`` it.
CAUSAL_CHECKPOINT = BUILTIN_CHECKPOINT.with_name("spikeformer-medium-causal-sim.json")
