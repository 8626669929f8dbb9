"""Checkpoints: safetensors + JSON round trip, and every tampered or inconsistent file refused."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.checkpoint import (
    FORMAT,
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from training.spikeformer import Spikeformer, build_model, count_parameters

CLASSES = [f"gesture_{i}" for i in range(11)]


def metadata(**overrides: object) -> dict:
    document = {
        "classes": CLASSES,
        "input": {
            "window": {"bins": 16, "bin_us": 25_000, "stride_us": 50_000},
            "sensor_mapping": {"input_width": 64, "input_height": 64, "method": "area",
                               "flip_x": False, "flip_y": False},
            "normalisation": {"kind": "clip", "max": 8},
        },
        "data": {"spec": "sim:64", "seed": 0},
        "metrics": {"val_accuracy": 0.97},
    }
    document.update(overrides)
    return document


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def trained_model() -> Spikeformer:
    """The small preset with non-default BN running statistics and PLIF time constants."""
    torch.manual_seed(0)
    model = build_model("small").train()
    with torch.no_grad():
        model(torch.rand(2, *model.input_shape))
        for name, parameter in model.named_parameters():
            if name.endswith(".w"):
                parameter.fill_(0.25)
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path, trained_model: Spikeformer) -> Path:
    return save_checkpoint(tmp_path / "model", trained_model, metadata())


def rewrite_weights(json_path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and record their sha256, as a careless (not malicious-proof) edit would."""
    weights_path = json_path.with_suffix(".safetensors")
    safetensors.torch.save_file(tensors, str(weights_path))
    document = json.loads(json_path.read_text())
    document["weights"]["sha256"] = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    json_path.write_text(json.dumps(document))


def edit_json(json_path: Path, edit) -> None:  # noqa: ANN001
    document = json.loads(json_path.read_text())
    edit(document)
    json_path.write_text(json.dumps(document))


def test_round_trip_gives_identical_outputs(saved: Path, trained_model: Spikeformer):
    assert saved.name == "model.json" and saved.with_suffix(".safetensors").is_file()
    frames = (torch.rand(2, *trained_model.input_shape) < 0.1).float()
    model, document = load_checkpoint(saved)
    assert not model.training
    assert model.config == trained_model.config
    with torch.no_grad():
        assert torch.equal(model(frames), trained_model(frames))
    for a, b in zip(model.state_dict().values(), trained_model.state_dict().values()):
        assert torch.equal(a, b)
    assert document["format"] == FORMAT and document["version"] == 1
    assert document["model"]["name"] == "small"
    assert document["classes"] == CLASSES
    assert document["weights"]["parameters"] == count_parameters(trained_model)
    assert document["weights"]["file"] == "model.safetensors"
    assert document["input"]["window"]["bins"] == 16
    assert read_metadata(saved) == document


@pytest.mark.parametrize("form", ["model.json", "model.safetensors", "model"])
def test_load_accepts_json_weights_or_stem(saved: Path, form: str):
    model, _ = load_checkpoint(saved.parent / form)
    assert model.config.name == "small"


def test_save_into_directory_uses_preset_name(tmp_path: Path, trained_model: Spikeformer):
    path = save_checkpoint(tmp_path, trained_model, metadata(data={}, metrics={}))
    assert path == tmp_path / "small.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.json", "small.safetensors"]
    assert checkpoint_paths(tmp_path / "v1.2.json") == (tmp_path / "v1.2.json", tmp_path / "v1.2.safetensors")


def test_no_pickle_in_checkpoint_code():
    source = Path(__file__).resolve().parents[1].joinpath("training", "checkpoint.py").read_text()
    assert not re.search(r"(?<!safetensors\.)torch\.load\(|import pickle|pickle\.load", source)


def test_modified_weight_bytes_refused(saved: Path):
    weights = saved.with_suffix(".safetensors")
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        load_checkpoint(saved)


def test_wrong_shape_refused(saved: Path, trained_model: Spikeformer):
    tensors = {k: v.clone() for k, v in trained_model.state_dict().items()}
    tensors["head.fc.weight"] = torch.zeros(11, 16)
    rewrite_weights(saved, tensors)
    with pytest.raises(CheckpointError, match=r"'head.fc.weight' has shape \[11, 16\], the config needs \[11, 32\]"):
        load_checkpoint(saved)


def test_missing_tensor_refused(saved: Path, trained_model: Spikeformer):
    tensors = {k: v.clone() for k, v in trained_model.state_dict().items() if k != "pos_embed"}
    rewrite_weights(saved, tensors)
    with pytest.raises(CheckpointError, match=r"missing \['pos_embed'\]"):
        load_checkpoint(saved)


def test_extra_tensor_refused(saved: Path, trained_model: Spikeformer):
    tensors = {k: v.clone() for k, v in trained_model.state_dict().items()}
    tensors["backdoor.weight"] = torch.zeros(3)
    rewrite_weights(saved, tensors)
    with pytest.raises(CheckpointError, match=r"unexpected \['backdoor.weight'\]"):
        load_checkpoint(saved)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_weights_refused(saved: Path, trained_model: Spikeformer, value: float):
    tensors = {k: v.clone() for k, v in trained_model.state_dict().items()}
    tensors["blocks.0.mlp.fc1.weight"][3, 5] = value
    rewrite_weights(saved, tensors)
    with pytest.raises(CheckpointError, match="'blocks.0.mlp.fc1.weight' holds NaN or Inf"):
        load_checkpoint(saved)


def test_wrong_dtype_refused(saved: Path, trained_model: Spikeformer):
    tensors = {k: v.clone() for k, v in trained_model.state_dict().items()}
    tensors["pos_embed"] = tensors["pos_embed"].double()
    rewrite_weights(saved, tensors)
    with pytest.raises(CheckpointError, match="'pos_embed' is torch.float64"):
        load_checkpoint(saved)


def test_not_safetensors_refused(saved: Path):
    weights = saved.with_suffix(".safetensors")
    weights.write_bytes(b"\x80\x04definitely not safetensors")  # a pickle protocol header, for good measure
    edit_json(saved, lambda d: d["weights"].update(sha256=hashlib.sha256(weights.read_bytes()).hexdigest()))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(saved)


def test_oversized_weights_refused(saved: Path):
    weights = saved.with_suffix(".safetensors")
    with weights.open("ab") as file:
        file.truncate(weights.stat().st_size + (9 << 20))
    with pytest.raises(CheckpointError, match="more than the .* this checkpoint allows"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="something-else"), "format is 'something-else'"),
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d.pop("metrics"), r"missing keys \['metrics'\]"),
        (lambda d: d.update(extra=1), r"unexpected keys \['extra'\]"),
        (lambda d: d["model"].update(depth=3), r"missing \['blocks.2"),  # config says 3 blocks, file has 2
        (lambda d: d["model"].update(embed_dim=48, tokenizer_channels=[8, 16, 48]), "has shape"),
        (lambda d: d["model"].update(num_heads=5), "not divisible by num_heads"),
        (lambda d: d["model"].pop("depth"), r"missing keys \['depth'\]"),
        (lambda d: d["classes"].pop(), "10 class names but the model has num_classes=11"),
        (lambda d: d.update(classes=["a"] * 11), "distinct non-empty names"),
        (lambda d: d["input"]["window"].update(bins=8), "bins=8 but the model has time_steps=16"),
        (lambda d: d["input"]["window"].update(bin_us=-1), "bin_us must be a positive integer"),
        (lambda d: d["input"]["window"].update(stride_us=30_000), "multiple of bin_us"),
        (lambda d: d["input"]["sensor_mapping"].update(input_width=128), "maps to 128x64 pixels"),
        (lambda d: d["input"]["sensor_mapping"].update(flip_x="no"), "flip_x must be true or false"),
        (lambda d: d["input"].pop("normalisation"), r"missing keys \['normalisation'\]"),
        (lambda d: d["input"].update(normalisation="clip"), "normalisation must be None or a dict"),
        (lambda d: d["weights"].update(file="../elsewhere.safetensors"), "plain '\\*.safetensors' file name"),
        (lambda d: d["weights"].update(sha256="abc"), "64 lowercase hex digits"),
        (lambda d: d["weights"].update(parameters=5), "weights.parameters is 5"),
        (lambda d: d["metrics"].update(loss=float("nan")), "non-finite number"),
    ],
)
def test_inconsistent_json_refused(saved: Path, edit, message: str):  # noqa: ANN001
    edit_json(saved, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(saved)
    assert "\n" not in str(info.value)  # one line


def test_missing_and_malformed_files_refused(saved: Path):
    with pytest.raises(CheckpointError, match="checkpoint JSON not found"):
        load_checkpoint(saved.parent / "other.json")
    saved.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_checkpoint(saved)
    saved.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(saved)
    saved.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must be an object"):
        load_checkpoint(saved)


def test_save_refuses_bad_metadata_and_nan_weights(tmp_path: Path, trained_model: Spikeformer):
    with pytest.raises(CheckpointError, match="10 class names"):
        save_checkpoint(tmp_path / "a", trained_model, metadata(classes=CLASSES[:10]))
    with pytest.raises(CheckpointError, match=r"unknown checkpoint metadata keys \['clases'\]"):
        save_checkpoint(tmp_path / "a", trained_model, {**metadata(), "clases": CLASSES})
    with pytest.raises(CheckpointError, match="not plain JSON"):
        save_checkpoint(tmp_path / "a", trained_model, metadata(data={"when": object()}))
    broken = build_model("small")
    with torch.no_grad():
        broken.head.fc.bias[0] = float("inf")
    with pytest.raises(CheckpointError, match="'head.fc.bias' holds NaN or Inf"):
        save_checkpoint(tmp_path / "a", broken, metadata())
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_tampered_hash_refused(saved: Path):
    edit_json(saved, lambda d: d["weights"].update(sha256="0" * 64))
    with pytest.raises(CheckpointError, match="sha256 .* does not match 0{64}"):
        load_checkpoint(saved)


def test_truncated_weights_refused(saved: Path):
    weights = saved.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):  # the recorded hash catches it first
        load_checkpoint(saved)
    edit_json(saved, lambda d: d["weights"].update(sha256=hashlib.sha256(weights.read_bytes()).hexdigest()))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):  # and so does the format
        load_checkpoint(saved)


def test_directory_paths_refused(saved: Path, tmp_path: Path):
    for function in (load_checkpoint, read_metadata):
        with pytest.raises(CheckpointError, match="is a directory; pass a checkpoint's NAME.json"):
            function(tmp_path)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(CheckpointError, match="folder.json is a directory"):
        load_checkpoint(tmp_path / "folder.json")
    saved.with_suffix(".safetensors").unlink()
    saved.with_suffix(".safetensors").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors: weights file is a directory"):
        load_checkpoint(saved)


def test_huge_config_refused_without_allocating(saved: Path):
    """A config that asks for ~10^11 weights fails on the shapes, built on the meta device only."""
    import resource

    def huge(document: dict) -> None:
        document["model"].update(tokenizer_channels=[8, 16, 65536], embed_dim=65536, depth=24)

    edit_json(saved, huge)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="tensors do not match model"):
        load_checkpoint(saved)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024  # kB: < 200 MB more


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(["model", "input", "window", "sensor_mapping", "weights", "classes", "data",
                                      "bins", "embed_dim", "depth", "file", "parameters", "format", "version"]),
                     min_size=1, max_size=3),
       value=st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3), max_leaves=6))
def test_fuzz_json_values_refused_cleanly(saved: Path, path: list[str], value: object):
    """Any value anywhere in the JSON: a loaded model or a one-line CheckpointError, nothing else."""
    original = saved.read_text()
    document = json.loads(original)
    node = document
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            break
        node = node[key]
    if isinstance(node, dict):
        node[path[-1]] = value
    try:
        saved.write_text(json.dumps(document))
        load_checkpoint(saved)
    except CheckpointError as error:
        assert "\n" not in str(error)
    finally:
        saved.write_text(original)
