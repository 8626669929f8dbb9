"""TensorRT: the pure parts (cache key, profile shapes, cache names), the "not available" errors,
and, where TensorRT and a CUDA GPU exist, a real build + run against ONNX Runtime."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import StandInSNN

from inference.export import export_onnx, poisson_windows
from inference.tensorrt_engine import (
    TensorRTUnavailable,
    TensorRTRunner,
    build_engine,
    engine_cache_key,
    import_tensorrt,
    profile_shapes,
    require_tensorrt,
    timing_cache_name,
)

KEY_ARGS = {"model_sha256": "a" * 64, "tensorrt_version": "10.13.0", "gpu_name": "NVIDIA H100",
            "max_batch": 8, "precision": "fp16"}
OTHER_VALUES = {"model_sha256": "b" * 64, "tensorrt_version": "11.0.0", "gpu_name": "NVIDIA RTX 4090",
                "max_batch": 16, "precision": "fp32"}


def tensorrt_ready() -> bool:
    try:
        require_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def test_engine_cache_key_is_a_deterministic_file_name():
    key = engine_cache_key(**KEY_ARGS)
    assert key == engine_cache_key(**KEY_ARGS)
    assert re.fullmatch(r"[0-9a-f]{32}", key)


@pytest.mark.parametrize("field", sorted(KEY_ARGS))
def test_engine_cache_key_changes_with_each_input(field):
    assert engine_cache_key(**{**KEY_ARGS, field: OTHER_VALUES[field]}) != engine_cache_key(**KEY_ARGS)


@pytest.mark.parametrize("field, value", [
    ("model_sha256", ""), ("gpu_name", "  "), ("tensorrt_version", None), ("max_batch", 0),
    ("max_batch", 2.0), ("max_batch", True), ("precision", "int8"),
])
def test_engine_cache_key_rejects_bad_inputs(field, value):
    with pytest.raises(ValueError, match=field if field != "max_batch" else "max_batch"):
        engine_cache_key(**{**KEY_ARGS, field: value})


def test_profile_shapes_batch_one_to_max_optimised_for_one():
    minimum, optimum, maximum = profile_shapes((16, 2, 64, 64), 8)
    assert minimum == optimum == (1, 16, 2, 64, 64)
    assert maximum == (8, 16, 2, 64, 64)
    with pytest.raises(ValueError, match="max_batch"):
        profile_shapes((16, 2, 64, 64), 0)
    with pytest.raises(ValueError, match="frame shape"):
        profile_shapes((2, 64, 64), 4)


def test_timing_cache_name_is_file_safe_and_specific():
    name = timing_cache_name("10.13.0", "NVIDIA GeForce RTX 4090 / PCIe")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert name != timing_cache_name("10.13.0", "NVIDIA H100")
    assert name != timing_cache_name("11.0.0", "NVIDIA GeForce RTX 4090 / PCIe")


@pytest.fixture(scope="module")
def stand_in_onnx(tmp_path_factory):
    model = StandInSNN().eval()
    directory = tmp_path_factory.mktemp("trt")
    return model, export_onnx(model, directory / "fp32.onnx"), export_onnx(model, directory / "fp16.onnx", fp16=True)


def test_build_engine_refuses_a_precision_the_onnx_does_not_have(stand_in_onnx, tmp_path):
    _, fp32, fp16 = stand_in_onnx
    with pytest.raises(ValueError, match="fp32 export but a fp16 engine"):
        build_engine(fp32, tmp_path / "e.engine", fp16=True)
    with pytest.raises(ValueError, match="fp16 export but a fp32 engine"):
        build_engine(fp16, tmp_path / "e.engine", fp16=False)
    with pytest.raises(ValueError, match="max_batch"):
        build_engine(fp16, tmp_path / "e.engine", max_batch=0)


@pytest.mark.skipif(tensorrt_ready(), reason="TensorRT and a CUDA GPU are present")
def test_without_tensorrt_every_entry_point_says_what_is_missing(stand_in_onnx, tmp_path):
    _, _, fp16 = stand_in_onnx
    message = "TensorRT is not installed|no CUDA GPU"
    with pytest.raises(TensorRTUnavailable, match=message):
        require_tensorrt()
    with pytest.raises(TensorRTUnavailable, match=message):
        build_engine(fp16, tmp_path / "e.engine", fp16=True)
    with pytest.raises(TensorRTUnavailable, match=message):
        TensorRTRunner(tmp_path / "e.engine")
    assert not (tmp_path / "e.engine").exists()


def test_import_tensorrt_error_names_the_install_command():
    try:
        import_tensorrt()
    except TensorRTUnavailable as error:
        assert "pip install" in str(error) or ">= 10" in str(error)
    else:
        pytest.skip("TensorRT is installed here")


@pytest.mark.skipif(not tensorrt_ready(), reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_build_and_run_match_onnxruntime(stand_in_onnx, tmp_path, fp16):
    import onnxruntime as ort

    _, fp32_path, fp16_path = stand_in_onnx
    onnx_path = fp16_path if fp16 else fp32_path
    timing = tmp_path / "timing.cache"
    engine = build_engine(onnx_path, tmp_path / "m.engine", max_batch=4, fp16=fp16, timing_cache_path=timing)
    assert engine.stat().st_size > 0 and timing.stat().st_size > 0
    runner = TensorRTRunner(engine)
    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        frames = poisson_windows(batch, runner.frame_shape, seed=batch)
        expected = session.run(None, {"frames": frames})[0]
        logits = runner.run(frames)
        assert logits.shape == expected.shape and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected, atol=0.05 if fp16 else 1e-3)
    with pytest.raises(ValueError, match="batch must be 1..4"):
        runner.run(poisson_windows(5, runner.frame_shape))
    runner.close()
