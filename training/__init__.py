"""The model, its data, training, evaluation and checkpoints."""

from pathlib import Path

# The built-in checkpoint (shipped with the package): what ``launch.py``, ``finetune`` and the
# Python API use when no checkpoint is given.
BUILTIN_CHECKPOINT = Path(__file__).resolve().parents[1] / "inference" / "checkpoints" / "spikeformer-medium-sim.json"
