"""``python -m inference COMMAND ...``: model deployment tools.

Commands:
    export --checkpoint PATH --onnx OUT [--fp16] [--tensorrt ENGINE] [--opset 17] [--max-batch N]
                                        export to ONNX, check parity with PyTorch, build a TensorRT engine

Each command lives in the module named below and exposes ``main(argv) -> int`` (argv[0] is the
command name). Expected failures (bad files, bad arguments, TensorRT or a GPU missing) print one
``error:`` line and exit 2.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "export": "inference.export",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command])
    from inference.tensorrt_engine import BackendUnavailable

    try:
        return int(module.main([command, *rest]) or 0)
    except (ValueError, OSError, BackendUnavailable) as error:  # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse's --help
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
