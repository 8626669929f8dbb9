"""Spikeformer (Li et al., arXiv 2211.10686): convolutional tokenizer + space-time transformer.

Input is a batch of event frames ``[B, T, 2, H, W]`` float32 (the project's per-sample frame layout
``[T, 2, H, W]``, channel = polarity, 0 OFF / 1 ON). Output is class logits ``[B, num_classes]``.

    ConvTokenizer     SEW-ADD residual blocks of conv-BN-PLIF, convs over T*B merged  -> [B, T, N, C]
    + embeddings      learnable position (one per spatial token) and time (one per step)
    Block x depth     divided space-time attention (temporal, then spatial) and a PLIF MLP
    AttentionPoolHead LayerNorm, softmax attention pooling over all T*N tokens, Linear

Parameter counts (including the one learnable scalar of every PLIF layer) match the reference
exactly: ``dvsgesture`` 9,279,900 and ``cifar10dvs`` 8,792,993. They follow from: convs without
bias, BN after every conv, a shortcut conv only where stride or channels change, the tokenizer's
last channel count equal to ``embed_dim`` (no projection), three LayerNorms per block, ``qkv``
without bias, ``proj``/``temporal_fc``/MLP/head Linears with bias.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from training.neuron import PLIF

LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class SpikeformerConfig:
    """Architecture of one Spikeformer. Sizes in pixels, time in bins (time steps).

    Args:
        name: preset name (``"custom"`` when not from :data:`PRESETS`).
        input_size: (height, width) of the input frames in pixels.
        time_steps: T, the number of time bins per window.
        in_channels: polarity channels (2: OFF, ON).
        tokenizer_channels: output channels of each tokenizer block; the last equals ``embed_dim``.
        tokenizer_strides: stride of each tokenizer block (1 or 2 ...).
        kernel_size: odd conv kernel size of the tokenizer.
        embed_dim: token width C.
        depth: number of transformer blocks.
        num_heads: attention heads (must divide ``embed_dim``).
        mlp_ratio: MLP hidden width = ``mlp_ratio * embed_dim``.
        num_classes: output logits.
        drop_path_rate: stochastic depth of the last block (rises linearly from 0).
        init_tau: initial PLIF time constant in time steps.
        causal: a streaming model: temporal attention sees only past and present steps (a causal
            mask and an ALiBi distance bias instead of the learned time embedding), and the class
            evidence is read out at every step (``forward_steps``); ``SpikeformerStep`` runs it one
            bin at a time with explicit state. The reference presets are not causal.
        previous_frame: the tokenizer sees each step's frame next to the previous step's (zeros
            before the first step): ``2 * in_channels`` input channels, so that the first
            convolutions see local motion (where an edge was and where it is now) and the sense
            of a rotation becomes a local feature. The reference presets do not have it.
    """

    name: str = "custom"
    input_size: tuple[int, int] = (128, 128)
    time_steps: int = 16
    in_channels: int = 2
    tokenizer_channels: tuple[int, ...] = (64, 128, 256)
    tokenizer_strides: tuple[int, ...] = (2, 2, 2)
    kernel_size: int = 5
    embed_dim: int = 256
    depth: int = 7
    num_heads: int = 4
    mlp_ratio: int = 2
    num_classes: int = 11
    drop_path_rate: float = 0.1
    init_tau: float = 2.0
    causal: bool = False
    previous_frame: bool = False

    def __post_init__(self) -> None:
        # Normalise sequences (e.g. lists from JSON) to tuples so the config stays hashable.
        object.__setattr__(self, "input_size", tuple(self.input_size))
        object.__setattr__(self, "tokenizer_channels", tuple(self.tokenizer_channels))
        object.__setattr__(self, "tokenizer_strides", tuple(self.tokenizer_strides))
        self._validate()

    def _validate(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SpikeformerConfig.{name} must be a positive integer, got {value!r}")

        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"SpikeformerConfig.name must be a non-empty string, got {self.name!r}")
        if len(self.input_size) != 2:
            raise ValueError(f"SpikeformerConfig.input_size must be (height, width), got {self.input_size!r}")
        for value in self.input_size:
            positive_int("input_size", value)
        for name in ("time_steps", "in_channels", "kernel_size", "embed_dim", "depth", "num_heads",
                     "mlp_ratio", "num_classes"):
            positive_int(name, getattr(self, name))
        if not self.tokenizer_channels or len(self.tokenizer_channels) != len(self.tokenizer_strides):
            raise ValueError(
                "SpikeformerConfig.tokenizer_channels and tokenizer_strides must be non-empty and the same "
                f"length, got {self.tokenizer_channels!r} and {self.tokenizer_strides!r}"
            )
        for value in self.tokenizer_channels:
            positive_int("tokenizer_channels", value)
        for value in self.tokenizer_strides:
            positive_int("tokenizer_strides", value)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"SpikeformerConfig.kernel_size must be odd, got {self.kernel_size}")
        if self.tokenizer_channels[-1] != self.embed_dim:
            raise ValueError(
                f"the last tokenizer channel count ({self.tokenizer_channels[-1]}) must equal "
                f"embed_dim ({self.embed_dim})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        downsample = self.downsample
        if self.input_size[0] % downsample or self.input_size[1] % downsample:
            raise ValueError(
                f"input_size {self.input_size} must be divisible by the tokenizer's total stride {downsample}"
            )
        if not isinstance(self.drop_path_rate, (int, float)) or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"SpikeformerConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        if not isinstance(self.init_tau, (int, float)) or not self.init_tau > 1.0:
            raise ValueError(f"SpikeformerConfig.init_tau must be > 1, got {self.init_tau!r}")
        for name in ("causal", "previous_frame"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SpikeformerConfig.{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def downsample(self) -> int:
        """Total stride of the tokenizer (input pixels per token side)."""
        return math.prod(self.tokenizer_strides)

    @property
    def token_grid(self) -> tuple[int, int]:
        """(height, width) of the token grid."""
        return self.input_size[0] // self.downsample, self.input_size[1] // self.downsample

    @property
    def num_tokens(self) -> int:
        """N, the spatial tokens per time step."""
        height, width = self.token_grid
        return height * width

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "SpikeformerConfig":
        """Inverse of :meth:`to_dict`; unknown or missing keys are a ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        data = {"causal": False, "previous_frame": False, **data}  # written before these options existed
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"model config: unknown keys {unknown}, missing keys {missing}")
        return cls(**data)


PRESETS: dict[str, SpikeformerConfig] = {}


def register_preset(config: SpikeformerConfig) -> SpikeformerConfig:
    """Add ``config`` to :data:`PRESETS` under ``config.name``; a duplicate name is a ``ValueError``."""
    if config.name in PRESETS:
        raise ValueError(f"a Spikeformer preset named {config.name!r} is already registered")
    PRESETS[config.name] = config
    return config


# DVS128 Gesture, as in the paper: 9,279,900 parameters, ~111.5 GFLOPs per window.
register_preset(SpikeformerConfig(
    name="dvsgesture", input_size=(128, 128), time_steps=16,
    tokenizer_channels=(64, 128, 256), tokenizer_strides=(2, 2, 2), kernel_size=5,
    embed_dim=256, depth=7, num_heads=4, mlp_ratio=2, num_classes=11,
))
# CIFAR10-DVS, as in the paper: 8,792,993 parameters.
register_preset(SpikeformerConfig(
    name="cifar10dvs", input_size=(128, 128), time_steps=4,
    tokenizer_channels=(64, 64, 128, 128, 256, 256), tokenizer_strides=(2, 1, 2, 1, 2, 1), kernel_size=3,
    embed_dim=256, depth=7, num_heads=4, mlp_ratio=2, num_classes=10,
))
# CPU real-time model of the built-in checkpoint (which adds previous_frame: 49,575 parameters):
# 64x64 input, 8x8 = 64 tokens per step, 49,415 parameters, ~0.2 GFLOPs; ~6 ms per window in ONNX
# Runtime (1 intra-op thread) on the 2-core CPU.
# Narrower than the first sketch (tokenizer 16-32-64, embed 64: 189,047 parameters), which took
# ~11-12 ms there (see benchmarks/bench_spikeformer.py).
register_preset(SpikeformerConfig(
    name="small", input_size=(64, 64), time_steps=16,
    tokenizer_channels=(8, 16, 32), tokenizer_strides=(2, 2, 2), kernel_size=3,
    embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=11,
))
# Mid-size CPU model: twice the small preset's width, same depth and tokens.
register_preset(SpikeformerConfig(
    name="medium", input_size=(64, 64), time_steps=16,
    tokenizer_channels=(16, 32, 64), tokenizer_strides=(2, 2, 2), kernel_size=3,
    embed_dim=64, depth=2, num_heads=4, mlp_ratio=2, num_classes=11,
))


class DropPath(nn.Module):
    """Stochastic depth: zero the residual branch of whole samples (dim 0) with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """Conv2d (no bias, 'same' padding before striding) followed by BatchNorm2d."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class SEWBlock(nn.Module):
    """Spike-element-wise residual block, ADD connection.

    Main path: conv(k, stride) -> BN -> PLIF -> conv(k, 1) -> BN -> PLIF.
    Shortcut (only when stride or channels change): AvgPool(stride) -> conv 1x1 -> BN -> PLIF.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 init_tau: float = 2.0) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, kernel_size, stride)
        self.sn1 = PLIF(init_tau)
        self.conv2 = conv_bn(out_channels, out_channels, kernel_size, 1)
        self.sn2 = PLIF(init_tau)
        self.downsample: nn.Module | None = None
        self.sn_down: PLIF | None = None
        if stride != 1 or in_channels != out_channels:
            pool: nn.Module = nn.AvgPool2d(stride) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, conv_bn(in_channels, out_channels, 1, 1))
            self.sn_down = PLIF(init_tau)

    def forward(self, x: Tensor) -> Tensor:
        # x: [T, B, C_in, H, W] -> [T, B, C_out, H / stride, W / stride]
        # Reshapes leave the batch as -1 so that a traced ONNX export keeps a dynamic batch axis.
        steps = x.shape[0]
        merged = x.flatten(0, 1)  # [T*B, C_in, H, W]
        out = self.sn1(self._split_time(self.conv1(merged), steps))
        out = self.sn2(self._split_time(self.conv2(out.flatten(0, 1)), steps))
        if self.downsample is None:
            identity = x
        else:
            identity = self.sn_down(self._split_time(self.downsample(merged), steps))
        return out + identity

    @staticmethod
    def _split_time(x: Tensor, steps: int) -> Tensor:
        # [T*B, C, H, W] -> [T, B, C, H, W]
        return x.reshape(steps, -1, *x.shape[1:])


class ConvTokenizer(nn.Module):
    """Stack of :class:`SEWBlock`; frames ``[B, T, C_in, H, W]`` -> tokens ``[B, T, N, C]``."""

    def __init__(self, config: SpikeformerConfig) -> None:
        super().__init__()
        blocks = []
        in_channels = config.in_channels * (2 if config.previous_frame else 1)
        for out_channels, stride in zip(config.tokenizer_channels, config.tokenizer_strides):
            blocks.append(SEWBlock(in_channels, out_channels, config.kernel_size, stride, config.init_tau))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(0, 1)  # [T, B, C_in, H, W], time first for the PLIF layers
        for block in self.blocks:
            x = block(x)  # [T, B, C_i, H_i, W_i]
        x = x.flatten(3).transpose(2, 3)  # [T, B, N, C]
        return x.transpose(0, 1)  # [B, T, N, C]


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's per-head slopes ``2^(-8 (h + 1) / heads)``: how fast attention fades with distance."""
    return torch.tensor([2.0 ** (-8.0 * (head + 1) / num_heads) for head in range(num_heads)])


def causal_bias(steps: int, slopes: Tensor) -> Tensor:
    """``[heads, T, T]`` additive attention bias: ``-slope * (i - j)`` for a past or present key
    ``j <= i``, ``-inf`` for a future one."""
    distance = torch.arange(steps)[:, None] - torch.arange(steps)[None, :]  # i - j
    bias = -slopes[:, None, None] * distance.clamp(min=0)
    return bias.masked_fill(distance < 0, float("-inf"))


def pair_with_previous(frame: Tensor, previous: Tensor) -> Tensor:
    """The tokenizer's input with ``previous_frame``: ``frame``'s channels, then ``previous``'s, along
    the channel axis (-3 of ``[..., C, H, W]``); shared by the window model and the step model."""
    return torch.cat([frame, previous], dim=-3)


def with_previous_frame(x: Tensor) -> Tensor:
    """Frames ``[B, T, C, H, W]`` -> ``[B, T, 2C, H, W]``: step t's channels, then step t-1's (zeros at t = 0)."""
    return pair_with_previous(x, torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1))


class Attention(nn.Module):
    """Multi-head softmax self-attention over dim -2 of ``[S, L, C]`` (S sequences of L tokens),
    with an optional additive bias ``[heads, L, L]`` on the scores."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        length, dim = x.shape[1:]
        qkv = self.qkv(x).reshape(-1, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [S, heads, L, head_dim]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [S, heads, L, L]
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(-1, length, dim)  # [S, L, C]
        return self.proj(x)


class Mlp(nn.Module):
    """Linear(C, ratio*C) -> PLIF (over T, dim 1 of ``[B, T, N, hidden]``) -> Linear(ratio*C, C)."""

    def __init__(self, dim: int, hidden_dim: int, init_tau: float = 2.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.sn = PLIF(init_tau, time_dim=1)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.sn(self.fc1(x)))  # [B, T, N, C]


class Block(nn.Module):
    """Divided space-time transformer block (TimeSformer-style), pre-LayerNorm, on ``[B, T, N, C]``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, drop_path: float = 0.0,
                 init_tau: float = 2.0, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        if causal:
            self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)
        self.norm_t = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.temporal_attn = Attention(dim, num_heads)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm_s = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.spatial_attn = Attention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_ratio * dim, init_tau)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        _, steps, tokens, dim = x.shape  # the batch stays -1 in reshapes (dynamic in ONNX export)
        # Temporal attention: the T tokens at each spatial location attend to each other.
        xt = self.norm_t(x).transpose(1, 2).reshape(-1, steps, dim)  # [B*N, T, C]
        bias = causal_bias(steps, self.slopes).to(xt.dtype) if self.causal else None
        xt = self.temporal_attn(xt, bias).reshape(-1, tokens, steps, dim).transpose(1, 2)  # [B, T, N, C]
        x = x + self.drop_path(self.temporal_fc(xt))
        # Spatial attention: the N tokens of each time step attend to each other.
        xs = self.norm_s(x).reshape(-1, tokens, dim)  # [B*T, N, C]
        xs = self.spatial_attn(xs).reshape(-1, steps, tokens, dim)  # [B, T, N, C]
        x = x + self.drop_path(xs)
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))  # [B, T, N, C]


class AttentionPoolHead(nn.Module):
    """LayerNorm, softmax attention pooling over all T*N tokens, then Linear to the logits; with
    ``per_step`` the pooling is over the N tokens of each step (``[B, T, num_classes]``)."""

    def __init__(self, dim: int, num_classes: int, per_step: bool = False) -> None:
        super().__init__()
        self.per_step = per_step
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attention_pool = nn.Linear(dim, 1)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x if self.per_step else x.flatten(1, 2))  # [B, T, N, C] or [B, T*N, C]
        weights = self.attention_pool(x).softmax(dim=-2)  # pooling weights over the tokens
        pooled = (weights * x).sum(dim=-2)  # [B, T, C] or [B, C]
        return self.fc(pooled)  # [B, T, num_classes] or [B, num_classes]


class Spikeformer(nn.Module):
    """Spikeformer for event-frame classification: ``[B, T, 2, H, W]`` -> logits ``[B, num_classes]``.

    Args:
        config: the architecture (see :class:`SpikeformerConfig` and :data:`PRESETS`).
    """

    def __init__(self, config: SpikeformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.tokenizer = ConvTokenizer(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, config.num_tokens, dim))
        # A causal model knows time by its PLIF states and the ALiBi bias, not a position in a window.
        self.time_embed = None if config.causal else nn.Parameter(torch.zeros(1, config.time_steps, 1, dim))
        # Stochastic depth rising linearly from 0 (first block) to drop_path_rate (last block).
        drop_rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, rate, config.init_tau, config.causal) for rate in drop_rates
        )
        self.head = AttentionPoolHead(dim, config.num_classes, per_step=config.causal)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.time_embed is not None:
            nn.init.trunc_normal_(self.time_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:  # temporal attention starts as an identity residual
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Per-sample input shape ``(T, C, H, W)``."""
        return (self.config.time_steps, self.config.in_channels, *self.config.input_size)

    def forward_features(self, x: Tensor) -> Tensor:
        """Frames ``[B, T, 2, H, W]`` -> tokens ``[B, T, N, C]`` after the transformer blocks."""
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()  # shapes are fixed by the example
        expected = self.input_shape
        shape_ok = x.ndim == 5 and tuple(x.shape[2:]) == expected[1:] and (self.config.causal or x.shape[1] == expected[0])
        if not tracing and not shape_ok:
            steps = "T" if self.config.causal else str(expected[0])
            raise ValueError(f"Spikeformer {self.config.name!r} expects input [B, {steps}, {', '.join(map(str, expected[1:]))}], "
                             f"got {list(x.shape)}")  # fmt: skip
        if self.config.previous_frame:
            x = with_previous_frame(x)  # [B, T, 2 * C_in, H, W]
        x = self.tokenizer(x)  # [B, T, N, C]
        x = x + self.pos_embed if self.time_embed is None else x + self.pos_embed + self.time_embed
        for block in self.blocks:
            x = block(x)  # [B, T, N, C]
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """Tokens ``[B, T, N, C]`` -> logits ``[B, num_classes]`` (a causal model: its last step's)."""
        logits = self.head(x)
        return logits[:, -1] if self.config.causal else logits

    def forward_steps(self, x: Tensor) -> Tensor:
        """A causal model's evidence at every step: frames ``[B, T, 2, H, W]`` -> logits ``[B, T, num_classes]``
        (step t has seen steps 0..t only)."""
        if not self.config.causal:
            raise ValueError("forward_steps needs a causal model (SpikeformerConfig.causal)")
        return self.head(self.forward_features(x))

    def forward(self, x: Tensor, steps: bool = False) -> Tensor:
        """Logits ``[B, num_classes]``; with ``steps`` (a causal model) every step's ``[B, T, num_classes]``."""
        return self.forward_steps(x) if steps else self.forward_head(self.forward_features(x))


def build_model(config: SpikeformerConfig | str) -> Spikeformer:
    """A freshly initialised :class:`Spikeformer` from a config or a preset name in :data:`PRESETS`."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown Spikeformer preset {config!r}; known: {', '.join(sorted(PRESETS))}")
        config = PRESETS[config]
    if not isinstance(config, SpikeformerConfig):
        raise ValueError(f"build_model needs a SpikeformerConfig or a preset name, got {type(config).__name__}")
    return Spikeformer(config)


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameter elements (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


class StageSummary(NamedTuple):
    """One row of :func:`model_summary`."""

    name: str
    shape: list[int]
    parameters: int
    layout: str


def model_summary(model: Spikeformer) -> tuple[list[StageSummary], int]:
    """Output shape and parameters of every stage for one B=1 zero window, and multiply-adds.

    Works on a model built on the ``meta`` device too (shapes and counts without computing).

    Shapes come from forward hooks (tokenizer blocks ``[T, B, C, H, W]``, tokens and blocks
    ``[B, T, N, C]``, head ``[B, classes]``). Multiply-adds count convolutions, linear layers and
    the two attention matmuls; element-wise ops (BN, PLIF, softmax) are not counted.
    """
    stages: list[tuple[str, nn.Module, str]] = [
        (f"tokenizer.blocks.{i}", block, "[T, B, C, H, W]") for i, block in enumerate(model.tokenizer.blocks)
    ]
    stages.append(("tokens (tokenizer)", model.tokenizer, "[B, T, N, C]"))
    stages += [(f"blocks.{i}", block, "[B, T, N, C]") for i, block in enumerate(model.blocks)]
    stages.append(("head", model.head, "[B, classes]"))
    shapes: dict[str, list[int]] = {}
    macs = [0]

    def record(name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            shapes[name] = list(output.shape)
        return hook

    def count_macs(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            macs[0] += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            macs[0] += output.numel() * module.in_features
        elif isinstance(module, Attention):
            seqs, length, dim = inputs[0].shape
            macs[0] += 2 * seqs * length * length * dim  # q @ k^T and attn @ v

    handles = [module.register_forward_hook(record(name)) for name, module, _ in stages]
    handles += [m.register_forward_hook(count_macs) for m in model.modules()
                if isinstance(m, (nn.Conv2d, nn.Linear, Attention))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *model.input_shape, device=model.pos_embed.device))
    finally:
        for handle in handles:
            handle.remove()
    rows = [StageSummary(name, shapes[name], count_parameters(module), layout) for name, module, layout in stages]
    return rows, macs[0]
