"""Small model tools of the command line: ``summary`` (train, evaluate and reference have modules
of their own)."""

from __future__ import annotations

from typing import Sequence

from stream.stage import ArgumentParser


def summary_main(argv: Sequence[str] | None = None) -> int:
    """``summary --config NAME``: print the stage table of a preset (B=1 dummy)."""
    import torch

    from training.spikeformer import PRESETS, build_model, count_parameters, model_summary

    parser = ArgumentParser(prog="spikeformer-live summary", description="Parameters, output shape of every stage and approx GFLOPs of a preset.")
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
