"""PLIF neuron: golden membrane traces, surrogate gradients, detached reset, ONNX export."""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.neuron import (
    PLIF,
    SURROGATE_ALPHA,
    SigmoidSurrogateSpike,
    heaviside_spike,
    plif_multistep,
    plif_step,
    tau_to_w,
)


def run_steps(inputs: list[float], tau: float) -> tuple[list[float], list[float]]:
    """Spikes and post-reset membrane potentials of one neuron driven by ``inputs``."""
    w = torch.tensor(tau_to_w(tau))
    v = torch.zeros(())
    spikes, potentials = [], []
    for x in inputs:
        spike, v = plif_step(torch.tensor(x), v, w)
        spikes.append(float(spike))
        potentials.append(float(v))
    return spikes, potentials


def test_constant_input_trace_tau_2():
    # k = sigmoid(0) = 0.5: v = 0.75, 1.125 -> spike, reset 0, 0.75, 1.125 -> spike
    spikes, potentials = run_steps([1.5, 1.5, 1.5, 1.5], tau=2.0)
    assert spikes == [0.0, 1.0, 0.0, 1.0]
    assert potentials == pytest.approx([0.75, 0.0, 0.75, 0.0])


def test_varying_input_trace_tau_2():
    # v = 1.0 (spike at exactly threshold), 0, 0.5, 0.5 + (3 - 0.5) / 2 = 1.75 (spike)
    spikes, potentials = run_steps([2.0, 0.0, 1.0, 3.0], tau=2.0)
    assert spikes == [1.0, 0.0, 0.0, 1.0]
    assert potentials == pytest.approx([0.0, 0.0, 0.5, 0.0])


def test_constant_input_trace_tau_4():
    # k = 1/4: v = 0.5, 0.875, 1.15625 -> spike, then 0.5 again
    spikes, potentials = run_steps([2.0, 2.0, 2.0, 2.0], tau=4.0)
    assert spikes == [0.0, 0.0, 1.0, 0.0]
    assert potentials == pytest.approx([0.5, 0.875, 0.0, 0.5])


def test_negative_input_leaks_below_zero_without_spiking():
    spikes, potentials = run_steps([-1.0, 0.0], tau=2.0)
    assert spikes == [0.0, 0.0]
    assert potentials == pytest.approx([-0.5, -0.25])


def test_tau_to_w():
    assert tau_to_w(2.0) == 0.0
    assert 1.0 / (1.0 + math.exp(-tau_to_w(4.0))) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="tau"):
        tau_to_w(1.0)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("time_dim", [0, 1])
def test_multistep_equals_iterated_step(requires_grad: bool, time_dim: int):
    torch.manual_seed(0)
    x_seq = (torch.randn(6, 3, 5, 7) * 1.5).requires_grad_(requires_grad)
    w = torch.tensor(0.3, requires_grad=requires_grad)
    v = torch.zeros(3, 5, 7)
    expected = []
    for x in x_seq:
        spike, v = plif_step(x, v, w)
        expected.append(spike)
    expected = torch.stack(expected)
    spikes = plif_multistep(x_seq.movedim(0, time_dim), w, time_dim).movedim(time_dim, 0)
    assert spikes.dtype == torch.float32
    assert 0 < spikes.sum() < spikes.numel()
    assert torch.equal(spikes.detach(), expected.detach())


def test_surrogate_gradient_matches_formula():
    x = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64, requires_grad=True)
    spikes = heaviside_spike(x)
    assert torch.equal(spikes.detach(), (x >= 0).double())
    spikes.sum().backward()
    sig = torch.sigmoid(SURROGATE_ALPHA * x.detach())
    assert torch.allclose(x.grad, SURROGATE_ALPHA * sig * (1 - sig))
    assert x.grad.max() == pytest.approx(SURROGATE_ALPHA / 4)  # peak at x = 0


def test_step_gradients_match_analytic_formula():
    # spike = H(v - 1), v = v0 + (x - v0) k, k = sigmoid(w):
    # d spike/dx = g(v - 1) k ; d spike/dw = g(v - 1) (x - v0) k (1 - k) ; g = alpha s (1 - s)
    x = torch.tensor([0.3, 1.2, 2.5], dtype=torch.float64, requires_grad=True)
    v0 = torch.tensor([0.2, 0.4, -0.1], dtype=torch.float64)
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    spike, _ = plif_step(x, v0, w)
    spike.sum().backward()
    k = torch.sigmoid(w.detach())
    v = v0 + (x.detach() - v0) * k
    sig = torch.sigmoid(SURROGATE_ALPHA * (v - 1))
    g = SURROGATE_ALPHA * sig * (1 - sig)
    assert torch.allclose(x.grad, g * k)
    assert torch.allclose(w.grad, (g * (x.detach() - v0) * k * (1 - k)).sum())


def test_reset_is_detached():
    # Step 1 spikes and resets v to 0, so step 2 does not depend on x1 at all (no path through the
    # spike of the reset); without the reset, d spike2 / d x1 would be g(v2 - 1) * k * (1 - k).
    x1 = torch.tensor(2.0, requires_grad=True)
    x2 = torch.tensor(1.5, requires_grad=True)
    w = torch.tensor(0.0)
    spike1, v = plif_step(x1, torch.zeros(()), w)
    spike2, _ = plif_step(x2, v, w)
    assert float(spike1) == 1.0 and float(v) == 0.0
    spike2.backward()
    assert float(x1.grad) == 0.0
    assert float(x2.grad) > 0.0


def test_plif_module_binds_one_scalar():
    layer = PLIF()
    assert [name for name, _ in layer.named_parameters()] == ["w"]
    assert layer.w.shape == () and float(layer.w) == 0.0
    assert layer.tau == pytest.approx(2.0)
    assert PLIF(init_tau=3.0).tau == pytest.approx(3.0)
    x = torch.full((4, 2), 1.5)
    assert layer(x)[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    batch_first = PLIF(time_dim=1)
    assert torch.equal(batch_first(x.T.contiguous()), layer(x).T)


def test_plif_module_learns_w():
    layer = PLIF()
    x = torch.rand(8, 16) * 2
    layer(x).sum().backward()
    assert layer.w.grad is not None and float(layer.w.grad) != 0.0


def export_to_onnx(module: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(module, (example,), buffer, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    return model


def run_onnx(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


def test_plif_exports_to_standard_onnx_ops():
    layer = PLIF(init_tau=3.0)  # w requires grad, as in a training model
    x = torch.randn(5, 3, 4) * 2
    model = export_to_onnx(layer, x)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert "GreaterOrEqual" in {node.op_type for node in model.graph.node}
    assert np.array_equal(run_onnx(model, x), layer(x).detach().numpy())


def test_surrogate_function_symbolic_exports():
    class SpikeOnly(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return SigmoidSurrogateSpike.apply(x, SURROGATE_ALPHA)

    x = torch.randn(3, 7)
    model = export_to_onnx(SpikeOnly(), x)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert np.array_equal(run_onnx(model, x), (x >= 0).float().numpy())
