"""A causal Spikeformer one time bin at a time, with explicit state (for streaming and ONNX).

``SpikeformerStep(model)`` wraps a causal ``Spikeformer`` (``SpikeformerConfig.causal``) and shares
its weights. One call takes the newest bin's frame ``[B, 2, H, W]`` and the state, and returns that
bin's class logits ``[B, num_classes]`` and the new state. The state is a flat tuple of tensors,
named by ``state_names`` (ONNX inputs ``state.NAME``, outputs ``next.NAME``):

* ``previous_frame`` (only with ``SpikeformerConfig.previous_frame``): the last bin's frame ``[B, 2, H, W]``;
* ``tokenizer.I.sn1`` / ``.sn2`` / ``.sn_down``: the membrane potentials of block I's PLIF layers
  ``[B, C, H_i, W_i]``;
* ``blocks.J.key`` / ``.value``: block J's temporal attention cache ``[B * N, heads, T, head_dim]``,
  the last T steps' keys and values, oldest first (a rolling buffer: memory stays bounded);
* ``blocks.J.mlp``: block J's MLP PLIF potentials ``[B, N, hidden]``;
* ``valid``: ``[T]``, 1 where the cache holds a step, 0 where it is still empty.

``initial_state(batch)`` is the reset state (everything 0): after a reset, T steps give exactly the
logits of ``model.forward_steps`` on those T frames (the tests check 1e-4). Streaming on beyond T
steps, the cache keeps the last T steps and the PLIF potentials carry on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.neuron import plif_step
from training.spikeformer import Block, SEWBlock, Spikeformer, pair_with_previous


def state_names(model: Spikeformer) -> list[str]:
    """The names of the state tensors, in the order ``SpikeformerStep`` takes and returns them."""
    names = ["previous_frame"] if model.config.previous_frame else []
    for index, block in enumerate(model.tokenizer.blocks):
        names += [f"tokenizer.{index}.sn1", f"tokenizer.{index}.sn2"]
        if block.downsample is not None:
            names.append(f"tokenizer.{index}.sn_down")
    for index in range(len(model.blocks)):
        names += [f"blocks.{index}.key", f"blocks.{index}.value", f"blocks.{index}.mlp"]
    return names + ["valid"]


def initial_state(model: Spikeformer, batch: int = 1) -> tuple[Tensor, ...]:
    """The reset state for ``batch`` streams (zeros; an empty attention cache)."""
    config = model.config
    device = model.pos_embed.device
    height, width = config.input_size
    state = [torch.zeros((batch, config.in_channels, height, width), device=device)] if config.previous_frame else []
    for block in model.tokenizer.blocks:
        stride = block.conv1[0].stride[0]
        height, width = height // stride, width // stride
        channels = block.conv1[0].out_channels
        shape = (batch, channels, height, width)
        state += [torch.zeros(shape, device=device), torch.zeros(shape, device=device)]
        if block.downsample is not None:
            state.append(torch.zeros(shape, device=device))
    tokens, heads = config.num_tokens, config.num_heads
    head_dim = config.embed_dim // heads
    for block in model.blocks:
        cache = (batch * tokens, heads, config.time_steps, head_dim)
        state += [torch.zeros(cache, device=device), torch.zeros(cache, device=device),
                  torch.zeros((batch, tokens, block.mlp.fc1.out_features), device=device)]  # fmt: skip
    return (*state, torch.zeros(config.time_steps, device=device))


class SpikeformerStep(nn.Module):
    """One time bin of a causal ``Spikeformer`` (see the module docstring); shares its weights."""

    def __init__(self, model: Spikeformer) -> None:
        super().__init__()
        if not model.config.causal:
            raise ValueError("SpikeformerStep needs a causal model (SpikeformerConfig.causal)")
        self.model = model

    def forward(self, frame: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        # frame: [B, 2, H, W] -> (logits [B, num_classes], *next_state)
        model = self.model
        state = list(state)
        valid = state.pop()
        next_state: list[Tensor] = []
        x = frame
        if model.config.previous_frame:
            x = pair_with_previous(frame, state.pop(0))  # [B, 2 * C_in, H, W]: this bin, then the last
            next_state.append(frame)
        for block in model.tokenizer.blocks:
            x = self._sew_step(block, x, state, next_state)
        tokens = x.flatten(2).transpose(1, 2) + model.pos_embed[0]  # [B, N, C]
        valid = torch.cat([valid[1:], torch.ones_like(valid[:1])])
        for block in model.blocks:
            tokens = self._block_step(block, tokens, valid, state, next_state)
        logits = model.head(tokens.unsqueeze(1))[:, 0]  # [B, num_classes]
        return (logits, *next_state, valid)

    @staticmethod
    def _plif(layer: nn.Module, x: Tensor, state: list[Tensor], next_state: list[Tensor]) -> Tensor:
        spike, v = plif_step(x, state.pop(0), layer.w)
        next_state.append(v)
        return spike

    def _sew_step(self, block: SEWBlock, x: Tensor, state: list[Tensor], next_state: list[Tensor]) -> Tensor:
        out = self._plif(block.sn1, block.conv1(x), state, next_state)
        out = self._plif(block.sn2, block.conv2(out), state, next_state)
        if block.downsample is None:
            return out + x
        return out + self._plif(block.sn_down, block.downsample(x), state, next_state)

    def _block_step(self, block: Block, x: Tensor, valid: Tensor, state: list[Tensor],
                    next_state: list[Tensor]) -> Tensor:  # fmt: skip
        # x: [B, N, C], the tokens of the newest step
        tokens, dim = x.shape[1:]
        attention = block.temporal_attn
        heads, head_dim = attention.num_heads, attention.head_dim
        qkv = attention.qkv(block.norm_t(x)).reshape(-1, 3, heads, head_dim)  # [B*N, 3, heads, hd]
        q, k, v = qkv[:, 0, :, None], qkv[:, 1, :, None], qkv[:, 2, :, None]  # [B*N, heads, 1, hd]
        keys = torch.cat([state.pop(0)[:, :, 1:], k], dim=2)  # [B*N, heads, T, hd], oldest first
        values = torch.cat([state.pop(0)[:, :, 1:], v], dim=2)
        next_state += [keys, values]
        steps = keys.shape[2]
        distance = torch.arange(steps - 1, -1, -1, device=x.device, dtype=x.dtype)  # newest: 0
        bias = -block.slopes[:, None] * distance  # [heads, T]
        bias = bias.masked_fill(valid[None, :] == 0, float("-inf"))
        scores = (q * attention.scale) @ keys.transpose(-2, -1) + bias[:, None, :]  # [B*N, heads, 1, T]
        out = (scores.softmax(dim=-1) @ values).reshape(-1, tokens, dim)  # [B, N, C]
        x = x + block.temporal_fc(attention.proj(out))
        x = x + block.spatial_attn(block.norm_s(x))
        hidden = block.mlp.fc1(block.norm_mlp(x))
        return x + block.mlp.fc2(self._plif(block.mlp.sn, hidden, state, next_state))
