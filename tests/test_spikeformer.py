"""Spikeformer: presets (shapes, parameter counts, GFLOPs), config validation, overfitting, ONNX export."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.__main__ import main as training_main
from training.spikeformer import (
    PRESETS,
    Spikeformer,
    SpikeformerConfig,
    build_model,
    count_parameters,
    model_summary,
    register_preset,
    with_previous_frame,
)

REFERENCE_PARAMETERS = {"dvsgesture": 9_279_900, "cifar10dvs": 8_792_993}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def meta_model(name: str) -> Spikeformer:
    """A preset built on the meta device: shapes and counts without allocating or computing."""
    with torch.device("meta"):
        return build_model(name)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
def test_reference_parameter_counts(name: str):
    count = count_parameters(meta_model(name))
    reference = REFERENCE_PARAMETERS[name]
    assert abs(count - reference) <= 0.005 * reference
    assert count == reference  # exact, one scalar per PLIF layer included


def test_plif_layers_each_add_one_scalar():
    model = meta_model("dvsgesture")
    scalars = [name for name, p in model.named_parameters() if p.ndim == 0]
    # 3 tokenizer blocks x 3 PLIF (main path twice + shortcut) + 7 MLP PLIF
    assert len(scalars) == 3 * 3 + 7
    assert all(name.endswith(".w") for name in scalars)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_shapes_on_meta(name: str):
    model = meta_model(name)
    config = model.config
    frames = torch.zeros(2, config.time_steps, 2, *config.input_size, device="meta")
    tokens = model.forward_features(frames)
    assert tuple(tokens.shape) == (2, config.time_steps, config.num_tokens, config.embed_dim)
    assert tuple(model.forward_head(tokens).shape) == (2, config.num_classes)


def test_dvsgesture_summary_and_gflops():
    rows, macs = model_summary(meta_model("dvsgesture"))
    shapes = {row.name: row.shape for row in rows}
    assert shapes["tokenizer.blocks.0"] == [16, 1, 64, 64, 64]
    assert shapes["tokenizer.blocks.2"] == [16, 1, 256, 16, 16]
    assert shapes["tokens (tokenizer)"] == [1, 16, 256, 256]
    assert shapes["blocks.6"] == [1, 16, 256, 256]
    assert shapes["head"] == [1, 11]
    assert 2 * macs / 1e9 == pytest.approx(111.5, rel=0.01)  # the paper's figure


def test_small_forward_is_finite_and_deterministic():
    torch.manual_seed(0)
    model = build_model("small").eval()
    frames = (torch.rand(2, *model.input_shape) < 0.1).float()
    with torch.no_grad():
        logits = model(frames)
        again = model(frames)
    assert logits.shape == (2, 11)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, again)


@pytest.mark.slow
def test_dvsgesture_real_forward():
    torch.manual_seed(0)
    model = build_model("dvsgesture").eval()
    frames = (torch.rand(1, *model.input_shape) < 0.02).float()
    with torch.no_grad():
        logits = model(frames)
    assert logits.shape == (1, 11) and torch.isfinite(logits).all()


def test_wrong_input_shape_is_a_clear_error():
    model = build_model("small")
    with pytest.raises(ValueError, match=r"expects input \[B, 16, 2, 64, 64\]"):
        model(torch.zeros(1, 16, 2, 32, 32))
    with pytest.raises(ValueError, match="expects input"):
        model(torch.zeros(16, 2, 64, 64))


def test_block_initialisation_and_drop_path_schedule():
    model = build_model(dataclasses.replace(PRESETS["small"], depth=4))
    for block in model.blocks:
        assert not block.temporal_fc.weight.any() and not block.temporal_fc.bias.any()
    assert [block.drop_path.p for block in model.blocks] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])


def test_duplicate_preset_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register_preset(PRESETS["small"])
    assert PRESETS["small"].name == "small"


def test_unknown_preset_rejected():
    with pytest.raises(ValueError, match="unknown Spikeformer preset 'nope'"):
        build_model("nope")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input_size": (60, 64)}, "divisible by the tokenizer's total stride 8"),
        ({"tokenizer_channels": (16, 32, 48)}, "must equal embed_dim"),
        ({"num_heads": 3}, "not divisible by num_heads"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"time_steps": 0}, "time_steps must be a positive integer"),
        ({"tokenizer_strides": (2, 2)}, "same length"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ],
)
def test_invalid_config_rejected(change: dict, message: str):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PRESETS["small"], **change)


def test_config_dict_round_trip():
    for config in PRESETS.values():
        data = config.to_dict()
        assert isinstance(data["tokenizer_channels"], list)
        assert SpikeformerConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown keys"):
        SpikeformerConfig.from_dict({**PRESETS["small"].to_dict(), "bogus": 1})


def test_previous_frame_input_pairs_each_step_with_the_one_before():
    x = torch.arange(1.0, 4.0).reshape(1, 3, 1, 1, 1).expand(1, 3, 2, 2, 2)  # step t holds t + 1
    paired = with_previous_frame(x)
    assert paired.shape == (1, 3, 4, 2, 2)
    assert torch.equal(paired[0, :, :2, 0, 0], x[0, :, :, 0, 0])  # this step first
    assert paired[0, :, 2:, 0, 0].tolist() == [[0, 0], [1, 1], [2, 2]]  # then the previous one (none at t = 0)
    plain, paired_model = build_model("small"), build_model(dataclasses.replace(PRESETS["small"], previous_frame=True))
    first = paired_model.tokenizer.blocks[0]
    assert first.conv1[0].in_channels == first.downsample[1][0].in_channels == 4
    conv_weights = sum(m.weight.numel() for m in (first.conv1[0], first.downsample[1][0]))
    assert count_parameters(paired_model) - count_parameters(plain) == conv_weights // 2  # twice the input channels
    with torch.no_grad():  # the model still takes [B, T, 2, H, W]: the pairing happens inside it
        assert paired_model.eval()(torch.rand(2, *plain.input_shape)).shape == (2, 11)


def test_small_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["small"], name="tiny", time_steps=4, input_size=(32, 32),
                                 drop_path_rate=0.0)
    model = build_model(config).train()
    frames = (torch.rand(8, *model.input_shape) < 0.1).float()
    labels = torch.arange(8)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first_loss = None
    for _ in range(150):
        logits = model(frames)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        first_loss = float(loss) if first_loss is None else first_loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if (logits.argmax(1) == labels).all() and float(loss) < 0.1:
            break
    assert (logits.argmax(1) == labels).all()
    assert float(loss) < 0.1 < first_loss
    assert all(p.grad is not None for p in model.parameters())  # every parameter, PLIF w too, learns


def test_small_model_onnx_export_matches_pytorch_with_dynamic_batch():
    torch.manual_seed(0)
    model = build_model("small").eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.rand(2, *model.input_shape),), buffer, opset_version=17, dynamo=False,
                      input_names=["frames"], output_names=["logits"],
                      dynamic_axes={"frames": {0: "batch"}, "logits": {0: "batch"}})
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # no custom operator
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # not the traced batch of 2
        frames = torch.rand(batch, *model.input_shape)
        with torch.no_grad():
            expected = model(frames).numpy()
        np.testing.assert_allclose(session.run(None, {"frames": frames.numpy()})[0], expected, atol=1e-4)


def test_summary_cli(capsys: pytest.CaptureFixture[str]):
    assert training_main(["summary", "--config", "small"]) == 0
    out = capsys.readouterr().out
    assert f"{count_parameters(build_model('small')):,} parameters" in out
    assert "tokenizer.blocks.2" in out and "[16, 1, 32, 8, 8]" in out
    assert "blocks.1" in out and "head" in out and "GFLOPs" in out


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]):
    assert training_main(["summary", "--config", "nope"]) == 2
    assert capsys.readouterr().err.strip() == f"error: unknown preset 'nope'; known: {', '.join(PRESETS)}"
    assert training_main(["summary"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert training_main(["frobnicate"]) == 2
    assert training_main(["--help"]) == 0
