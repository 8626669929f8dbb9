"""Parametric leaky integrate-and-fire neuron (PLIF, Fang et al. 2021).

Same dynamics as SpikingJelly's ``ParametricLIFNode(init_tau=2.0, decay_input=True, v_threshold=1.0,
v_reset=0.0, detach_reset=True, surrogate_function=Sigmoid(alpha=4.0))``, multi-step over time:

    charge:  v = v + (x - v) * sigmoid(w)          (tau = 1 / sigmoid(w); v_reset = 0)
    fire:    s = Heaviside(v - v_threshold)       (backward: sigmoid surrogate, alpha = 4)
    reset:   v = v * (1 - s.detach())             (hard reset to 0, reset kept out of the graph)

The math lives in pure functions (:func:`plif_step`, :func:`plif_multistep`); :class:`PLIF` only
binds the one learnable scalar ``w`` per layer. Everything is plain tensor operations, so
``torch.onnx.export`` unrolls the time loop with standard ONNX ops and no custom operator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

V_THRESHOLD = 1.0
SURROGATE_ALPHA = 4.0


def tau_to_w(tau: float) -> float:
    """The ``w`` giving membrane time constant ``tau`` (in time steps, > 1): ``w = -log(tau - 1)``."""
    if not tau > 1.0:
        raise ValueError(f"PLIF time constant tau must be > 1 time step, got {tau}")
    return -math.log(tau - 1.0)


class SigmoidSurrogateSpike(torch.autograd.Function):
    """Heaviside forward, ``alpha * sigmoid(alpha x) * (1 - sigmoid(alpha x))`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(ctx.alpha * x)
        return grad_output * ctx.alpha * sig * (1.0 - sig), None

    @staticmethod
    def symbolic(g, x, alpha):  # noqa: ANN001, ANN205 - ONNX (TorchScript exporter) graph: Cast(x >= 0)
        zero = g.op("Constant", value_t=torch.tensor(0.0, dtype=torch.float32))
        zero = g.op("CastLike", zero, x)
        return g.op("CastLike", g.op("GreaterOrEqual", x, zero), x)


def _needs_surrogate(x: Tensor) -> bool:
    """True when autograd will differentiate through the spike (training), False for inference/export."""
    return torch.is_grad_enabled() and x.requires_grad and not torch.onnx.is_in_onnx_export()


def heaviside_spike(x: Tensor, threshold: float = 0.0, alpha: float = SURROGATE_ALPHA) -> Tensor:
    """Spike where ``x >= threshold`` (1.0) else 0.0, same dtype as ``x``; sigmoid surrogate
    gradient of ``x - threshold``.

    Without autograd (inference, export) this is the plain op ``(x >= threshold).to(x.dtype)``:
    one comparison in the exported graph, no subtraction.
    """
    if _needs_surrogate(x):
        return SigmoidSurrogateSpike.apply(x - threshold if threshold else x, alpha)
    return (x >= threshold).to(x.dtype)


def plif_charge(x: Tensor, v: Tensor, w: Tensor) -> Tensor:
    """Leaky integration with decay_input: ``v + (x - v) * sigmoid(w)`` (``v_reset = 0``)."""
    return v + (x - v) * torch.sigmoid(w)


def fire_and_reset(v: Tensor) -> tuple[Tensor, Tensor]:
    """Spike where ``v >= V_THRESHOLD`` and hard-reset those neurons to 0 (reset detached).

    Returns ``(spike, v_after_reset)``. The reset is a multiply, in training and in the exported
    graph alike: ONNX Runtime's CPU ``Where`` with a scalar branch is slower than ``Sub`` and
    ``Mul`` on these tensors (``benchmarks/bench_spikeformer.py``; the README's "PLIF reset").
    """
    spike = heaviside_spike(v, V_THRESHOLD)
    return spike, v * (1.0 - spike.detach())


def plif_step(x: Tensor, v: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """One time step. ``x``: input current, ``v``: membrane potential (same shape), ``w``: scalar.

    Returns ``(spike, v_after_reset)``; spikes are 0.0/1.0 in the dtype of ``x``.
    """
    return fire_and_reset(plif_charge(x, v, w))


def plif_multistep(x_seq: Tensor, w: Tensor, time_dim: int = 0) -> Tensor:
    """Run the PLIF over ``time_dim`` of ``x_seq`` from ``v = 0``; spikes have the shape of ``x_seq``.

    Same values as iterating :func:`plif_step`, with the charge rearranged as
    ``v * (1 - k) + x * k`` (``k = sigmoid(w)``) so that ``x * k`` is computed for all steps at
    once, and the time slices keep their (size 1) time dimension: 6 ops per step once exported.
    """
    k = torch.sigmoid(w)
    leak = 1.0 - k
    drive = x_seq * k  # the input part of every step's charge
    v = torch.zeros_like(drive.narrow(time_dim, 0, 1))
    spikes = []
    for drive_t in drive.split(1, time_dim):
        spike, v = fire_and_reset(v * leak + drive_t)
        spikes.append(spike)
    return torch.cat(spikes, time_dim)


class PLIF(nn.Module):
    """Multi-step PLIF layer with one learnable scalar ``w`` (``tau = 1 / sigmoid(w)``).

    Args:
        init_tau: initial membrane time constant in time steps (2.0 gives ``w = 0``).
        time_dim: the input dimension that is time (0 for ``[T, ...]``, 1 for ``[B, T, ...]``).
    """

    def __init__(self, init_tau: float = 2.0, time_dim: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(tau_to_w(init_tau)))
        self.time_dim = time_dim

    @property
    def tau(self) -> float:
        """Current membrane time constant in time steps."""
        return float(1.0 / torch.sigmoid(self.w.detach()))

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., T at time_dim, ...] -> spikes of the same shape, 0.0/1.0
        return plif_multistep(x, self.w, self.time_dim)

    def extra_repr(self) -> str:
        return f"tau={self.tau:.3f}, time_dim={self.time_dim}"
