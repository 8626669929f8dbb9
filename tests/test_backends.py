"""Backends: the auto choice for every capability combination, the CPU backends' parity, caching,
input checks and the "not available here" errors."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_CONFIG

from inference.backends import (
    MODEL_CODE_MODULES,
    BackendChoice,
    BackendUnavailable,
    Capabilities,
    OnnxRuntimeBackend,
    TorchBackend,
    as_batch,
    cached_onnx,
    choose_backend,
    create_backend,
    detect_capabilities,
)
from inference.export import poisson_windows, read_onnx_info
from training.checkpoint import load_checkpoint, read_metadata

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# --- choice ------------------------------------------------------------------------------------


def expected_choice(cuda: bool, tensorrt: bool, onnxruntime_cuda: bool) -> tuple[str, str]:
    if cuda and tensorrt:
        return "tensorrt", "cuda"
    if cuda and onnxruntime_cuda:
        return "onnxruntime", "cuda"
    if cuda:
        return "torch", "cuda"
    return "onnxruntime", "cpu"


@pytest.mark.parametrize("cuda, tensorrt, onnxruntime_cuda", list(itertools.product([False, True], repeat=3)))
def test_choose_backend_covers_every_capability_combination(cuda, tensorrt, onnxruntime_cuda):
    choice = choose_backend(Capabilities(cuda=cuda, tensorrt=tensorrt, onnxruntime_cuda=onnxruntime_cuda))
    assert isinstance(choice, BackendChoice)
    assert (choice.name, choice.device) == expected_choice(cuda, tensorrt, onnxruntime_cuda)
    assert choice.reason


def test_detect_capabilities_matches_this_machine():
    capabilities = detect_capabilities()
    assert capabilities.cuda == HAS_CUDA
    assert all(isinstance(value, bool) for value in vars(capabilities).values())


def test_backends_import_torch_only_where_used():
    """In a fresh interpreter: importing the backends, the model code fingerprint and the GPU probe
    on a machine whose CUDA driver sees no device cost no torch import (1-2 s at every worker
    start); where the driver sees one, the probe asks torch and agrees with it."""
    import hashlib
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import inference.backends as backends\n"
        "assert 'torch' not in sys.modules, 'imported by inference.backends'\n"
        "fingerprint = backends.model_code_fingerprint()\n"
        "assert 'torch' not in sys.modules and 'training.spikeformer' not in sys.modules, 'imported by the fingerprint'\n"
        "visible = backends.cuda_visible()\n"
        "assert ('torch' in sys.modules) == (backends.cuda_driver_devices() > 0), 'torch imported without a GPU'\n"
        "import torch\n"
        "assert visible == torch.cuda.is_available(), (visible, torch.cuda.is_available())\n"
        "print(fingerprint)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    repo = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(b"".join((repo / (name.replace(".", "/") + ".py")).read_bytes() for name in MODEL_CODE_MODULES))
    assert result.stdout.strip() == digest.hexdigest()[:12]  # the same name as before: cached exports stay valid


# --- the CPU backends --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnxruntime_backend(tiny_checkpoint, cache_dir):
    backend = create_backend("onnxruntime", tiny_checkpoint, device="cpu", cache_dir=cache_dir)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def torch_backend(tiny_checkpoint, cache_dir):
    backend = create_backend("torch", tiny_checkpoint, device="cpu", cache_dir=cache_dir)
    yield backend
    backend.close()


def test_torch_cpu_and_onnxruntime_cpu_agree(torch_backend, onnxruntime_backend):
    assert (torch_backend.name, onnxruntime_backend.name) == ("torch-cpu", "onnxruntime-cpu")
    assert torch_backend.input_shape == onnxruntime_backend.input_shape == (4, 2, 16, 16)
    windows = poisson_windows(12, torch_backend.input_shape, seed=5)
    reference = np.concatenate([torch_backend.predict(w) for w in windows])
    exported = np.concatenate([onnxruntime_backend.predict(w) for w in windows])
    assert reference.shape == exported.shape == (12, TINY_CONFIG.num_classes)
    assert exported.dtype == np.float32
    np.testing.assert_allclose(exported, reference, atol=1e-3, rtol=0)
    assert np.array_equal(exported.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("batch", [1, 3])
def test_backends_accept_a_batch(torch_backend, onnxruntime_backend, batch):
    frames = poisson_windows(batch, torch_backend.input_shape, seed=batch)
    for backend in (torch_backend, onnxruntime_backend):
        logits = backend.predict(frames)
        assert logits.shape == (batch, TINY_CONFIG.num_classes) and logits.dtype == np.float32


def test_onnx_is_exported_once_and_cached_by_weights_sha256(tiny_checkpoint, cache_dir, onnxruntime_backend):
    path = cached_onnx(tiny_checkpoint, cache_dir)
    sha = read_metadata(tiny_checkpoint)["weights"]["sha256"]
    assert path.parent == cache_dir / "onnx" and path.name.startswith(sha)
    assert read_onnx_info(path).weights_sha256 == sha
    stamp = path.stat().st_mtime_ns
    assert cached_onnx(tiny_checkpoint, cache_dir) == path and path.stat().st_mtime_ns == stamp


def test_onnxruntime_two_threads_gives_the_same_logits(tiny_checkpoint, cache_dir, onnxruntime_backend):
    two = OnnxRuntimeBackend(cached_onnx(tiny_checkpoint, cache_dir), "cpu", threads=2)
    frames = poisson_windows(1, two.input_shape, seed=9)
    np.testing.assert_allclose(two.predict(frames), onnxruntime_backend.predict(frames), atol=1e-5)
    two.close()


def test_auto_picks_a_backend_and_says_why(tiny_checkpoint, cache_dir, caplog):
    with caplog.at_level(logging.INFO, logger="inference.backends"):
        backend = create_backend("auto", tiny_checkpoint, cache_dir=cache_dir, warmup_iterations=1)
    expected = choose_backend(detect_capabilities())
    assert backend.name.startswith(expected.name)
    assert any("backend auto ->" in record.getMessage() and expected.reason in record.getMessage()
               for record in caplog.records)
    backend.close()


def test_torch_backend_from_a_module():
    from training.spikeformer import build_model

    backend = TorchBackend(build_model(TINY_CONFIG), "cpu")
    backend.warmup(2)
    assert backend.predict(np.zeros(backend.input_shape, np.float32)).shape == (1, TINY_CONFIG.num_classes)


# --- input checks and errors -------------------------------------------------------------------


def test_as_batch_shapes_and_types():
    shape = (4, 2, 16, 16)
    assert as_batch(np.zeros(shape, np.float64), shape).shape == (1, *shape)
    batch = as_batch(np.zeros((3, *shape), np.uint8), shape)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous and batch.shape == (3, *shape)
    with pytest.raises(ValueError, match=r"frames must be \[B, 4, 2, 16, 16\]"):
        as_batch(np.zeros((4, 2, 16, 15), np.float32), shape)
    with pytest.raises(ValueError, match="frames must be"):
        as_batch(np.zeros((0, *shape), np.float32), shape)
    with pytest.raises(ValueError, match="real number"):
        as_batch(np.zeros(shape, np.complex64), shape)


def test_predict_rejects_a_wrong_window(onnxruntime_backend):
    with pytest.raises(ValueError, match="frames must be"):
        onnxruntime_backend.predict(np.zeros((16, 2, 64, 64), np.float32))


def test_warmup_rejects_negative_iterations(onnxruntime_backend):
    with pytest.raises(ValueError, match="warmup iterations"):
        onnxruntime_backend.warmup(-1)


def test_create_backend_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        create_backend("tensorflow", tiny_checkpoint)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        create_backend("onnxruntime", tmp_path / "missing.json")
    with pytest.raises(ValueError, match="device must be"):
        create_backend("onnxruntime", tiny_checkpoint, device="tpu", cache_dir=tmp_path)


def test_tensorrt_backend_is_a_clear_error_without_tensorrt(tiny_checkpoint, tmp_path):
    capabilities = detect_capabilities()
    if capabilities.tensorrt and capabilities.cuda:
        pytest.skip("TensorRT and a GPU are present here")
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed|no CUDA GPU"):
        create_backend("tensorrt", tiny_checkpoint, cache_dir=tmp_path)


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present")
def test_cuda_backends_are_clear_errors_without_a_gpu(tiny_checkpoint, cache_dir):
    with pytest.raises(BackendUnavailable, match="torch sees no CUDA GPU"):
        create_backend("torch", tiny_checkpoint, device="cuda", cache_dir=cache_dir)
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        create_backend("onnxruntime", tiny_checkpoint, device="cuda", cache_dir=cache_dir)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_torch_cuda_graph_matches_eager(tiny_checkpoint, cache_dir):
    model, _ = load_checkpoint(tiny_checkpoint)
    graphed = TorchBackend(model, "cuda", cuda_graph=True)
    graphed.warmup(2)
    eager = TorchBackend(load_checkpoint(tiny_checkpoint)[0], "cuda", cuda_graph=False)
    frames = poisson_windows(3, graphed.input_shape, seed=4)
    for window in frames:
        np.testing.assert_allclose(graphed.predict(window), eager.predict(window), atol=1e-4)
