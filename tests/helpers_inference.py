"""Shared builders for the inference tests (test_export, test_backends, test_tensorrt_engine)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.checkpoint import save_checkpoint
from training.spikeformer import SpikeformerConfig, build_model

TINY_CONFIG = SpikeformerConfig(
    name="custom", input_size=(16, 16), time_steps=4, tokenizer_channels=(8, 16), tokenizer_strides=(2, 2),
    kernel_size=3, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2, num_classes=3,
)


def checkpoint_metadata(config: SpikeformerConfig) -> dict:
    """Minimal valid checkpoint metadata for ``config``."""
    height, width = config.input_size
    return {
        "classes": [f"class_{i}" for i in range(config.num_classes)],
        "input": {
            "window": {"bins": config.time_steps, "bin_us": 10_000, "stride_us": 50_000},
            "sensor_mapping": {"input_width": width, "input_height": height, "method": "area",
                               "flip_x": False, "flip_y": False},
            "normalisation": None,
        },
    }


def make_checkpoint(directory: Path, config: SpikeformerConfig | str, seed: int = 0) -> Path:
    """A randomly initialised Spikeformer saved as a checkpoint under ``directory``; the JSON path.

    BN running statistics are randomised too, so the export's BN folding is exercised."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 2.0)
    return save_checkpoint(directory / "model", model, checkpoint_metadata(model.config))


class StandInSNN(nn.Module):
    """A small spiking classifier written for dynamic-batch export (reshapes use -1, the first PLIF
    step is written out). It has the ops whose FP16 handling matters: Conv, LayerNorm, Softmax.

    ``[B, T, 2, H, W]`` -> logits ``[B, classes]``.
    """

    def __init__(self, time_steps: int = 4, size: int = 16, channels: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.input_shape = (time_steps, 2, size, size)
        self.conv = nn.Conv2d(2, channels, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.w = nn.Parameter(torch.tensor(0.3))
        self.norm = nn.LayerNorm(channels)
        self.pool = nn.Linear(channels, 1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        current = self.bn(self.conv(x.flatten(0, 1))).unflatten(0, (-1, steps))  # [B, T, C, h, w]
        k = torch.sigmoid(self.w)
        spikes, v = [], None
        for t in range(steps):
            v = current[:, t] * k if v is None else v + (current[:, t] - v) * k
            spike = (v >= 1.0).to(v.dtype)
            v = v * (1.0 - spike)
            spikes.append(spike + 0.1 * v)  # keep some analogue signal so logits vary smoothly
        tokens = torch.stack(spikes, 1).flatten(3).transpose(2, 3).flatten(1, 2)  # [B, T*h*w, C]
        tokens = self.norm(tokens)
        weights = self.pool(tokens).softmax(dim=1)
        return self.fc((weights * tokens).sum(dim=1))


class FixedBatchSNN(StandInSNN):
    """Like :class:`StandInSNN` but with the batch size read into a Python int, which the
    TorchScript exporter freezes at the example's batch: exports fine, fails at other batch sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = int(x.shape[0])
        return super().forward(x).reshape(batch, -1)
