"""TensorRT engine builder and runner (TensorRT 10 / 11 Python API, CUDA memory through torch).

Build: ONNX parser -> strongly typed network (precision comes from the ONNX file: export it with
``fp16=True`` for an FP16 engine) -> one optimisation profile for batch 1..max_batch (opt 1: the
live pipeline runs one window at a time) -> serialized engine, with a timing cache loaded and saved.
Engines are specific to the TensorRT version and the GPU; :func:`engine_cache_key` names them.

Run: :class:`TensorRTRunner` deserialises an engine, preallocates the input and output CUDA buffers
for the largest batch plus pinned host staging buffers, and runs each batch on its own CUDA stream
(``set_input_shape`` + ``execute_async_v3``).

``tensorrt`` is imported lazily; where it or a CUDA GPU is missing every entry point raises
:class:`TensorRTUnavailable` with a message saying which (``inference.backends`` turns it into
its ``BackendUnavailable``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from inference.onnx_info import read_onnx_info
from stream.atomic import write_atomically
from stream.stage import Unavailable

log = logging.getLogger(__name__)


class TensorRTUnavailable(Unavailable):
    """TensorRT cannot run here (not installed, too old, or no CUDA GPU); says which."""


DEFAULT_WORKSPACE_BYTES = 1 << 30  # 1 GiB of builder scratch memory
MAX_BATCH_LIMIT = 1024
PRECISIONS = ("fp16", "fp32")
INSTALL_HINT = "pip install 'spikeformer-live[tensorrt]' on a machine with an NVIDIA GPU"


# --- availability ------------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (>= 10), or TensorRTUnavailable."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as error:  # OSError: the package is there, its libraries are not
        raise TensorRTUnavailable(f"TensorRT is not installed ({INSTALL_HINT}): {error}") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailable(f"TensorRT >= 10 is needed, found {trt.__version__}")
    return trt


def cuda_gpu_name() -> str:
    """Name of the current CUDA GPU as torch sees it, or TensorRTUnavailable."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU: torch.cuda.is_available() is False (CPU-only torch, "
                                 "no NVIDIA driver, or no GPU)")
    return torch.cuda.get_device_name()


def require_tensorrt() -> tuple[Any, str]:
    """``(tensorrt module, GPU name)`` or TensorRTUnavailable saying which of the two is missing."""
    return import_tensorrt(), cuda_gpu_name()


# --- pure helpers ------------------------------------------------------------------------------


def engine_cache_key(model_sha256: str, tensorrt_version: str, gpu_name: str, max_batch: int,
                     precision: str) -> str:
    """A file-name-safe key (32 hex chars) for one engine: it changes with every argument.

    Args:
        model_sha256: sha256 of the model weights (the checkpoint's ``weights.sha256``).
        tensorrt_version: ``tensorrt.__version__``.
        gpu_name: e.g. ``torch.cuda.get_device_name()``.
        max_batch: the optimisation profile's largest batch.
        precision: ``"fp16"`` or ``"fp32"``.
    """
    for name, value in (("model_sha256", model_sha256), ("tensorrt_version", tensorrt_version),
                        ("gpu_name", gpu_name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"engine_cache_key: {name} must be a non-empty string, got {value!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"engine_cache_key: precision must be one of {PRECISIONS}, got {precision!r}")
    _check_max_batch(max_batch)
    text = "\n".join(["spikeformer-live-engine-v1", model_sha256, tensorrt_version, gpu_name,
                      str(max_batch), precision])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def profile_shapes(frame_shape: tuple[int, ...], max_batch: int) -> tuple[tuple[int, ...], ...]:
    """``(min, opt, max)`` input shapes of the optimisation profile for frames ``(T, 2, H, W)``:
    batch 1, 1 (latency of the live pipeline) and ``max_batch``."""
    _check_max_batch(max_batch)
    frame_shape = tuple(int(side) for side in frame_shape)
    if len(frame_shape) != 4 or min(frame_shape) < 1:
        raise ValueError(f"frame shape must be (T, 2, H, W) with positive sides, got {frame_shape}")
    return (1, *frame_shape), (1, *frame_shape), (max_batch, *frame_shape)


def _check_max_batch(max_batch: int) -> None:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise ValueError(f"max_batch must be an integer 1..{MAX_BATCH_LIMIT}, got {max_batch!r}")


def timing_cache_name(tensorrt_version: str, gpu_name: str) -> str:
    """File name of the timing cache for one TensorRT version and GPU (caches do not transfer)."""
    safe_gpu = re.sub(r"[^A-Za-z0-9.-]+", "_", gpu_name).strip("_")
    return f"timing-trt{tensorrt_version}-{safe_gpu}.cache"


# --- build -------------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    max_batch: int = 8,
    fp16: bool = True,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache_path: str | os.PathLike | None = None,
) -> Path:
    """Build a TensorRT engine from an exported ONNX file and write it to ``engine_path``.

    Args:
        onnx_path: an :func:`inference.export.export_onnx` file. Networks are strongly typed, so
            ``fp16=True`` needs the FP16 export (``export_onnx(..., fp16=True)``) and ``fp16=False``
            the FP32 one; a mismatch is a ValueError.
        engine_path: the engine file to write (atomically).
        max_batch: the optimisation profile covers batch 1..max_batch (optimised for 1).
        workspace_bytes: builder workspace memory pool limit in bytes.
        timing_cache_path: timing cache file, read if present and written back after the build.
    """

    _check_max_batch(max_batch)
    if workspace_bytes < 1 << 20:
        raise ValueError(f"workspace_bytes must be at least 1 MiB, got {workspace_bytes}")
    onnx_path = Path(onnx_path)
    info = read_onnx_info(onnx_path)
    precision = "fp16" if fp16 else "fp32"
    if info.precision != precision:
        raise ValueError(f"{onnx_path} is an {info.precision} export but a {precision} engine was asked for "
                         f"(TensorRT networks are strongly typed: export with fp16={fp16})")
    if not info.dynamic_batch and max_batch > 1:
        log.warning("%s has its batch fixed at 1: building the engine for batch 1 only", onnx_path)
        max_batch = 1
    trt, gpu_name = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) == 10:  # TensorRT 11: always strongly typed, flag deprecated
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors or ["no details"]))
    expected = (1 + len(info.step_state), 1 + len(info.step_state))  # a window model: 1 and 1
    if (network.num_inputs, network.num_outputs) != expected:
        raise ValueError(f"{onnx_path}: expected {expected[0]} input(s) and {expected[1]} output(s), got "
                         f"{network.num_inputs} and {network.num_outputs}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    cache_file = Path(timing_cache_path) if timing_cache_path is not None else None
    cache_bytes = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, False)  # False: do not ignore a mismatch

    if not info.step:  # a step model has static shapes (batch 1): no profile
        input_name = network.get_input(0).name
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, *profile_shapes(info.input_shape, max_batch))
        config.add_optimization_profile(profile)

    log.info("building TensorRT %s engine for %s on %s (batch 1..%d)", precision, onnx_path.name,
             gpu_name, max_batch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path = Path(engine_path)
    write_atomically(engine_path, bytes(serialized))
    if cache_file is not None:
        write_atomically(cache_file, bytes(config.get_timing_cache().serialize()))
    return engine_path


def _describe_parser_error(error: Any) -> str:
    """One line per ONNX parser error: description, and the node where the API says it."""
    where = ""
    for attribute in ("node_name", "node_operator"):
        getter = getattr(error, attribute, None)
        value = getter() if callable(getter) else None
        if value:
            where += f" {attribute.split('_')[1]}={value}"
    return f"{error.desc()}{where} (node #{error.node()})"


# --- run ---------------------------------------------------------------------------------------


class TensorRTRunner:
    """Runs one engine on the current CUDA GPU: frames ``[B, T, 2, H, W]`` float32 -> logits ``[B, C]``.

    Args:
        engine_path: a :func:`build_engine` file (built for this TensorRT version and GPU).
    """

    def __init__(self, engine_path: str | os.PathLike) -> None:
        import torch

        trt, _ = require_tensorrt()
        engine_path = Path(engine_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise ValueError(f"{engine_path} is not an engine for this TensorRT ({trt.__version__}) and GPU")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{engine_path}: expected 1 input and 1 output tensor, got {inputs} and {outputs}")
        self._input_name, self._output_name = inputs[0], outputs[0]

        _, _, max_shape = (tuple(shape) for shape in self._engine.get_tensor_profile_shape(self._input_name, 0))
        self.max_batch = int(max_shape[0])
        self.frame_shape: tuple[int, ...] = tuple(int(side) for side in max_shape[1:])
        output_dims = tuple(self._engine.get_tensor_shape(self._output_name))  # (-1, C)
        num_classes = int(output_dims[-1]) if len(output_dims) == 2 else -1
        if num_classes < 1:
            raise ValueError(f"{engine_path}: the output must be [batch, classes] with static classes, "
                             f"got {output_dims}")
        self.num_classes = num_classes

        device = torch.device("cuda", torch.cuda.current_device())
        to_torch = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        in_dtype = to_torch[self._engine.get_tensor_dtype(self._input_name)]
        out_dtype = to_torch[self._engine.get_tensor_dtype(self._output_name)]
        # Device buffers for the largest batch; a batch of B uses their first B rows (contiguous).
        self._device_input = torch.empty(max_shape, dtype=in_dtype, device=device)
        self._device_output = torch.empty((self.max_batch, num_classes), dtype=out_dtype, device=device)
        self._host_input = torch.empty(max_shape, dtype=torch.float32, pin_memory=True)
        self._host_output = torch.empty((self.max_batch, num_classes), dtype=torch.float32, pin_memory=True)
        self._stream = torch.cuda.Stream(device=device)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context.set_tensor_address(self._input_name, self._device_input.data_ptr())
        self._context.set_tensor_address(self._output_name, self._device_output.data_ptr())
        torch.cuda.synchronize(device)  # the buffers exist before the first run on our stream

    def run(self, frames: np.ndarray) -> np.ndarray:
        """Logits ``[B, C]`` float32 for frames ``[B, T, 2, H, W]`` (1 <= B <= max_batch)."""
        import torch

        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 5 or frames.shape[1:] != self.frame_shape:
            raise ValueError(f"frames must be [B, {', '.join(map(str, self.frame_shape))}], got {list(frames.shape)}")
        batch = frames.shape[0]
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch must be 1..{self.max_batch} for this engine, got {batch}")
        self._host_input[:batch].numpy()[...] = frames
        with torch.cuda.stream(self._stream):
            self._device_input[:batch].copy_(self._host_input[:batch], non_blocking=True)
            if not self._context.set_input_shape(self._input_name, (batch, *self.frame_shape)):
                raise ValueError(f"TensorRT rejected input shape {(batch, *self.frame_shape)}")
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")
            self._host_output[:batch].copy_(self._device_output[:batch], non_blocking=True)
        self._stream.synchronize()
        return self._host_output[:batch].numpy().copy()

    def close(self) -> None:
        """Release the context, engine and buffers (the runner is unusable afterwards)."""
        for name in ("_context", "_engine", "_runtime", "_device_input", "_device_output",
                     "_host_input", "_host_output"):
            if hasattr(self, name):
                delattr(self, name)


class TensorRTStepRunner:
    """Runs a step engine (built by ``build_engine`` from ``inference.export.export_step_onnx``) on
    the current CUDA GPU: ``step(frame [1, 2, H, W])`` -> logits ``[1, C]``. The state lives on the
    GPU in two buffer sets used in turn (inputs of one call, outputs of the other): no copies."""

    def __init__(self, engine_path: str | os.PathLike) -> None:
        import torch

        from inference.onnx_info import FRAME_NAME, NEXT_PREFIX, OUTPUT_NAME, STATE_PREFIX

        trt, _ = require_tensorrt()
        engine_path = Path(engine_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise ValueError(f"{engine_path} is not an engine for this TensorRT ({trt.__version__}) and GPU")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        states = [name[len(STATE_PREFIX):] for name in names if name.startswith(STATE_PREFIX)]
        if FRAME_NAME not in names or OUTPUT_NAME not in names or not states:
            raise ValueError(f"{engine_path}: not a step engine (tensors {names})")
        device = torch.device("cuda", torch.cuda.current_device())
        to_torch = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}

        def buffer(name: str) -> Any:
            shape = tuple(int(side) for side in self._engine.get_tensor_shape(name))
            return torch.zeros(shape, dtype=to_torch[self._engine.get_tensor_dtype(name)], device=device)

        self.frame_shape = tuple(int(side) for side in self._engine.get_tensor_shape(FRAME_NAME))[1:]
        self._frame, self._logits = buffer(FRAME_NAME), buffer(OUTPUT_NAME)
        self._host_frame = torch.empty(tuple(self._frame.shape), dtype=torch.float32, pin_memory=True)
        self._host_logits = torch.empty(tuple(self._logits.shape), dtype=torch.float32, pin_memory=True)
        self._sets = [{name: buffer(STATE_PREFIX + name) for name in states} for _ in range(2)]
        self._names = (STATE_PREFIX, NEXT_PREFIX)
        self._turn = 0
        self._stream = torch.cuda.Stream(device=device)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context.set_tensor_address(FRAME_NAME, self._frame.data_ptr())
        self._context.set_tensor_address(OUTPUT_NAME, self._logits.data_ptr())
        torch.cuda.synchronize(device)

    def reset(self) -> None:
        """Back to the initial state (zeros: an empty attention cache)."""
        for buffers in self._sets:
            for tensor in buffers.values():
                tensor.zero_()

    def step(self, frame: np.ndarray) -> np.ndarray:
        """The logits ``[1, C]`` of one bin ``[1, 2, H, W]``; the state moves on."""
        import torch

        state_prefix, next_prefix = self._names
        inputs, outputs = self._sets[self._turn], self._sets[1 - self._turn]
        for name in inputs:
            self._context.set_tensor_address(state_prefix + name, inputs[name].data_ptr())
            self._context.set_tensor_address(next_prefix + name, outputs[name].data_ptr())
        self._host_frame.numpy()[...] = frame
        with torch.cuda.stream(self._stream):
            self._frame.copy_(self._host_frame, non_blocking=True)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")
            self._host_logits.copy_(self._logits, non_blocking=True)
        self._stream.synchronize()
        self._turn = 1 - self._turn
        return self._host_logits.numpy().copy()

    def close(self) -> None:
        for name in ("_context", "_engine", "_runtime", "_frame", "_logits", "_sets"):
            if hasattr(self, name):
                delattr(self, name)
