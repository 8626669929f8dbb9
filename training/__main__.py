"""``python -m training COMMAND ...``: model tools.

Commands:
    summary --config NAME     parameters, output shape of every stage and approx GFLOPs of a preset
    train ...                 train a model (``python -m training train --help``)
    evaluate ...              evaluate a checkpoint (``python -m training evaluate --help``)

``train`` and ``evaluate`` live in ``training.train`` / ``training.evaluate`` and are imported only
when asked for; their ``main(argv)`` gets the arguments after the command name.
Expected failures (bad files, bad arguments) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

LAZY_COMMANDS = {"train": "training.train", "evaluate": "training.evaluate"}
COMMANDS = ("summary", *LAZY_COMMANDS)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ValueError (one ``error:`` line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"{self.prog}: {message}")


def summary_main(argv: list[str]) -> int:
    """``python -m training summary --config NAME``: print the stage table of a preset (B=1 dummy)."""
    import torch

    from training.spikeformer import PRESETS, build_model, count_parameters, model_summary

    parser = _ArgumentParser(prog="python -m training summary", description=summary_main.__doc__)
    parser.add_argument("--config", required=True, help=f"preset name: {', '.join(PRESETS)}")
    args = parser.parse_args(argv)
    if args.config not in PRESETS:
        raise ValueError(f"unknown preset {args.config!r}; known: {', '.join(PRESETS)}")

    torch.manual_seed(0)
    model = build_model(args.config).eval()
    rows, macs = model_summary(model)
    print(f"Spikeformer {args.config!r}: {count_parameters(model):,} parameters, "
          f"input [1, {', '.join(map(str, model.input_shape))}] (B, T, C, H, W)")
    width = max(len(row.name) for row in rows)
    print(f"{'stage':<{width}}  {'output shape':<24}  {'parameters':>10}")
    for row in rows:
        print(f"{row.name:<{width}}  {str(row.shape):<24}  {row.parameters:>10,}  {row.layout}")
    print(f"approx {2 * macs / 1e9:.1f} GFLOPs per window (2 x multiply-adds of convolutions, linear layers "
          "and attention; element-wise ops not counted)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "summary":
            return int(summary_main(rest) or 0)
        module_name = LAZY_COMMANDS[command]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            print(f"error: {command!r} is not available in this checkout ({module_name} is missing)", file=sys.stderr)
            return 2
        return int(module.main(rest) or 0)
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
