"""``python -m inference COMMAND ...``: model deployment tools (also ``spikeformer-live COMMAND``)."""

from __future__ import annotations

import sys

from stream.stage import Command, dispatch

COMMANDS = {
    "export": Command("inference.export:main", "export a checkpoint to ONNX (parity-checked) and a TensorRT engine"),
    "decisions": Command("inference.decisions:main", "accuracy against time since onset, time to decision, rule tuning"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(COMMANDS, argv, "python -m inference")


if __name__ == "__main__":
    sys.exit(main())
