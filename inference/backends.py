"""Inference backends behind one interface: TensorRT, ONNX Runtime (CUDA or CPU), PyTorch.

Every backend maps frames ``[B, T, 2, H, W]`` (or one window ``[T, 2, H, W]``) float32 to logits
``[B, num_classes]`` float32, and has warmed up before :func:`create_backend` returns it.

``create_backend("auto", checkpoint)`` detects what this machine has once
(:func:`detect_capabilities`), picks with the pure function :func:`choose_backend` (TensorRT, then
ONNX Runtime on CUDA, then PyTorch on CUDA, then ONNX Runtime on CPU) and logs why. The choice is
made once; the hot path is a single ``predict`` call on the chosen object.

PyTorch is imported only where it is used (the ``torch`` backend, exports, and the GPU probe
when the CUDA driver reports a device): an ONNX Runtime worker on a CPU machine starts without
paying the 1-2 s torch import (given a checkpoint reader that does not import it either).

The ONNX file (and TensorRT engine) a backend needs is built on demand and cached under
:func:`default_cache_dir` by the checkpoint's weights sha256, so no manual export step is needed:
``onnx/<sha256>-code<fingerprint>-opset17-fp32-v1.onnx``, ``tensorrt/<engine_cache_key>.engine``.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from inference.export import DEFAULT_OPSET, EXPORT_FORMAT_VERSION, export_onnx, export_step_onnx, poisson_windows
from inference.onnx_info import FRAME_NAME, INPUT_NAME, NEXT_PREFIX, OUTPUT_NAME, STATE_PREFIX, read_onnx_info
from inference.tensorrt_engine import TensorRTUnavailable
from stream.stage import Unavailable

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "tensorrt", "onnxruntime", "torch")
DEFAULT_WARMUP_ITERATIONS = 5
# Measured on the 2-core development machine (benchmarks/bench_backends.py): one intra-op thread
# gives the lowest and steadiest latency for the small preset; a second thread fights the rest of
# the pipeline for the cores.
DEFAULT_CPU_THREADS = 1

__all__ = [
    "Backend", "BackendUnavailable", "Capabilities", "BackendChoice", "TorchBackend", "OnnxRuntimeBackend",
    "TensorRTBackend", "as_batch", "choose_backend", "cuda_visible", "detect_capabilities", "create_backend",
    "cached_onnx", "default_cache_dir", "model_code_fingerprint", "StepBackend", "TorchStepBackend",
    "OnnxRuntimeStepBackend", "TensorRTStepBackend", "cached_step_onnx", "create_step_backend",
]



class BackendUnavailable(Unavailable):
    """An inference backend cannot run here (library not installed, no CUDA GPU); says which."""


# The modules whose source defines the exported graph (see model_code_fingerprint).
MODEL_CODE_MODULES = ("training.spikeformer", "training.neuron")
# The CUDA driver library, by platform; absent = no CUDA device.
_CUDA_DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


class Backend(Protocol):
    """What every backend offers. ``input_shape`` is the per-window ``(T, 2, H, W)``."""

    name: str
    input_shape: tuple[int, int, int, int]

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """Frames ``[B, T, 2, H, W]`` or ``[T, 2, H, W]`` -> logits ``[B, C]`` float32."""
        ...

    def warmup(self, iterations: int = DEFAULT_WARMUP_ITERATIONS) -> None:
        """Run ``iterations`` spike-like windows so the first real window is not slow."""
        ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""
        ...


def as_batch(frames: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """``frames`` as a C-contiguous float32 ``[B, T, 2, H, W]`` array (a ``[T, 2, H, W]`` window
    becomes ``B = 1``); ValueError naming the shapes when it does not fit ``input_shape``."""
    array = np.asarray(frames)
    if array.ndim == len(input_shape):
        array = array[None]
    if array.ndim != len(input_shape) + 1 or array.shape[1:] != tuple(input_shape) or array.shape[0] < 1:
        raise ValueError(f"frames must be [B, {', '.join(map(str, input_shape))}] or "
                         f"[{', '.join(map(str, input_shape))}], got {list(array.shape)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"frames must be float32 (or another real number type), got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _warmup_windows(input_shape: tuple[int, ...], iterations: int) -> np.ndarray:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"warmup iterations must be an integer >= 0, got {iterations!r}")
    return poisson_windows(max(iterations, 1), input_shape, seed=1234)[:iterations]


# --- PyTorch -----------------------------------------------------------------------------------


class TorchBackend:
    """PyTorch eager (``torch.inference_mode``) on CPU or CUDA.

    Args:
        model: a Spikeformer-like module exposing ``input_shape``; moved to ``device``, put in eval.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        cuda_graph: on CUDA, capture a CUDA graph of batch 1 during :meth:`warmup` and replay it for
            every single-window call (other batch sizes run eager).
    """

    def __init__(self, model: Any, device: str = "cpu", *, cuda_graph: bool = False) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch backend on CUDA asked for, but torch sees no CUDA GPU")
        self.name = f"torch-{self.device.type}"
        self._model = model.to(self.device).eval()
        self.input_shape = tuple(int(side) for side in model.input_shape)
        self._use_cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self._graph: Any = None
        self._static_input: Any = None
        self._static_output: Any = None

    def predict(self, frames: np.ndarray) -> np.ndarray:
        batch = as_batch(frames, self.input_shape)
        torch = self._torch
        with torch.inference_mode():
            if self._graph is not None and batch.shape[0] == 1:
                self._static_input.copy_(torch.from_numpy(batch))
                self._graph.replay()
                return self._static_output.float().cpu().numpy()  # .cpu() waits for the replay
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            return self._model(x).float().cpu().numpy()

    def warmup(self, iterations: int = DEFAULT_WARMUP_ITERATIONS) -> None:
        for window in _warmup_windows(self.input_shape, iterations):
            self.predict(window)
        if self._use_cuda_graph and self._graph is None:
            self._capture_cuda_graph()

    def _capture_cuda_graph(self) -> None:
        """Capture batch-1 ``forward`` into a CUDA graph (warm-up on a side stream first, as
        ``torch.cuda.graphs`` requires)."""
        torch = self._torch
        with torch.inference_mode():
            self._static_input = torch.zeros((1, *self.input_shape), dtype=torch.float32, device=self.device)
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._model(self._static_input)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_output = self._model(self._static_input)
        self._graph = graph

    def close(self) -> None:
        self._graph = self._static_input = self._static_output = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


# --- ONNX Runtime ------------------------------------------------------------------------------


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU (CPUExecutionProvider) or CUDA (CUDAExecutionProvider).

    Args:
        onnx_path: an :func:`inference.export.export_onnx` file.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        threads: CPU intra-op threads (latency on a small CPU: 1 or 2; see the module constant).
    """

    def __init__(self, onnx_path: str | os.PathLike, device: str = "cpu", *,
                 threads: int = DEFAULT_CPU_THREADS) -> None:
        import onnxruntime as ort

        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256:
            raise ValueError(f"threads must be an integer 1..256, got {threads!r}")
        info = read_onnx_info(onnx_path)
        self.input_shape = info.input_shape
        self._dynamic_batch = info.dynamic_batch
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        kind, _, index = device.partition(":")
        if kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("ONNX Runtime here has no CUDAExecutionProvider "
                                         "(install onnxruntime-gpu)")
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": int(index or 0)}),
                                    "CPUExecutionProvider"]
        elif kind == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        if kind == "cuda" and "CUDAExecutionProvider" not in self._session.get_providers():
            raise BackendUnavailable("ONNX Runtime could not start its CUDA provider (CUDA/cuDNN libraries?)")
        self.name = f"onnxruntime-{kind}"
        self.threads = threads

    def predict(self, frames: np.ndarray) -> np.ndarray:
        batch = as_batch(frames, self.input_shape)
        if self._dynamic_batch or batch.shape[0] == 1:
            return self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        # An export with the batch fixed at 1 (see inference.export.export_onnx): one window a call.
        return np.concatenate([self._session.run([OUTPUT_NAME], {INPUT_NAME: batch[i:i + 1]})[0]
                               for i in range(batch.shape[0])])

    def warmup(self, iterations: int = DEFAULT_WARMUP_ITERATIONS) -> None:
        for window in _warmup_windows(self.input_shape, iterations):
            self.predict(window)

    def close(self) -> None:
        self._session = None


# --- TensorRT ----------------------------------------------------------------------------------


class TensorRTBackend:
    """A :class:`inference.tensorrt_engine.TensorRTRunner`; batches above its max are split."""

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike) -> None:
        from inference.tensorrt_engine import TensorRTRunner

        self._runner = TensorRTRunner(engine_path)
        self.input_shape = tuple(self._runner.frame_shape)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        batch = as_batch(frames, self.input_shape)
        step = self._runner.max_batch
        if batch.shape[0] <= step:
            return self._runner.run(batch)
        return np.concatenate([self._runner.run(batch[i:i + step]) for i in range(0, batch.shape[0], step)])

    def warmup(self, iterations: int = DEFAULT_WARMUP_ITERATIONS) -> None:
        for window in _warmup_windows(self.input_shape, iterations):
            self.predict(window)

    def close(self) -> None:
        self._runner.close()


# --- step (streaming) backends of causal models ---------------------------------------------------


class StepBackend(Protocol):
    """A causal model one bin at a time (``training.streaming``): ``step(frame [2, H, W])`` ->
    the bin's logits ``[C]``; the state (PLIF potentials, attention cache) stays inside, ``reset()``
    clears it (a new stream: time jump, source restart, another sensor). ``frame_shape`` is ``(2, H, W)``."""

    name: str
    frame_shape: tuple[int, int, int]

    def step(self, frame: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


def _as_frame(frame: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(frame, dtype=np.float32)
    if array.shape == (1, *frame_shape):
        array = array[0]
    if array.shape != tuple(frame_shape):
        raise ValueError(f"a step takes one bin [{', '.join(map(str, frame_shape))}], got {list(array.shape)}")
    return np.ascontiguousarray(array)[None]


class TorchStepBackend:
    """``training.streaming.SpikeformerStep`` in PyTorch eager on CPU or CUDA."""

    def __init__(self, model: Any, device: str = "cpu") -> None:
        import torch

        from training.streaming import SpikeformerStep, initial_state

        self._torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch backend on CUDA asked for, but torch sees no CUDA GPU")
        model = model.to(self.device).eval()
        self._step = SpikeformerStep(model).eval()
        self._initial = lambda: initial_state(model, 1)
        self.frame_shape = tuple(int(side) for side in model.input_shape[1:])
        self.name = f"torch-{self.device.type}-step"
        self.reset()

    def step(self, frame: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(_as_frame(frame, self.frame_shape)).to(self.device)
            logits, *self._state = self._step(x, *self._state)
            return logits[0].float().cpu().numpy()

    def reset(self) -> None:
        self._state = list(self._initial())

    def close(self) -> None:
        self._state = []


class OnnxRuntimeStepBackend:
    """A step export (``inference.export.export_step_onnx``) in ONNX Runtime. The state lives in two
    sets of buffers bound to the session (``IOBinding``): each step reads one set and writes the
    other, so no state is allocated or copied between steps."""

    def __init__(self, onnx_path: str | os.PathLike, device: str = "cpu", *, threads: int = DEFAULT_CPU_THREADS) -> None:
        self._window = OnnxRuntimeBackend(onnx_path, device, threads=threads)  # the session and its checks
        info = read_onnx_info(onnx_path)
        if not info.step:
            raise ValueError(f"{onnx_path} is not a step export (export_step_onnx)")
        session = self._window._session
        self.frame_shape = tuple(info.input_shape[1:])
        self.name = self._window.name + "-step"
        self._frame = np.zeros((1, *self.frame_shape), np.float32)
        logits_output = session.get_outputs()[0]
        self._logits = np.zeros((1, int(logits_output.shape[1])), np.float32)
        self._buffers = [[np.zeros(shape, np.float32) for _, shape in info.step_state] for _ in range(2)]
        self._bindings = []
        for read, write in ((0, 1), (1, 0)):  # step k reads set k % 2 and writes the other
            binding = session.io_binding()
            binding.bind_cpu_input(FRAME_NAME, self._frame)
            binding.bind_output(logits_output.name, "cpu", 0, np.float32, list(self._logits.shape), self._logits.ctypes.data)
            for (name, shape), state, next_state in zip(info.step_state, self._buffers[read], self._buffers[write]):
                binding.bind_cpu_input(STATE_PREFIX + name, state)
                binding.bind_output(NEXT_PREFIX + name, "cpu", 0, np.float32, list(shape), next_state.ctypes.data)
            self._bindings.append(binding)
        self.reset()

    def step(self, frame: np.ndarray) -> np.ndarray:
        self._frame[...] = _as_frame(frame, self.frame_shape)
        self._window._session.run_with_iobinding(self._bindings[self._steps % 2])
        self._steps += 1
        return self._logits[0].copy()

    def reset(self) -> None:
        self._steps = 0
        for state in self._buffers[0]:
            state.fill(0.0)

    def close(self) -> None:
        self._bindings = []
        self._window.close()


class TensorRTStepBackend:
    """A step engine (``inference.tensorrt_engine.TensorRTStepRunner``) on a CUDA GPU."""

    def __init__(self, engine_path: str | os.PathLike) -> None:
        from inference.tensorrt_engine import TensorRTStepRunner

        self._runner = TensorRTStepRunner(engine_path)
        self.frame_shape = tuple(self._runner.frame_shape)
        self.name = "tensorrt-step"

    def step(self, frame: np.ndarray) -> np.ndarray:
        return self._runner.step(_as_frame(frame, self.frame_shape))[0]

    def reset(self) -> None:
        self._runner.reset()

    def close(self) -> None:
        self._runner.close()


# --- choice ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What this machine can run. ``cuda``: torch sees a CUDA GPU (:func:`cuda_visible`, so a
    CPU-only torch build means "no GPU"); ``tensorrt``: ``import tensorrt`` works;
    ``onnxruntime_cuda``: ONNX Runtime lists its CUDAExecutionProvider."""

    cuda: bool
    tensorrt: bool
    onnxruntime_cuda: bool


class BackendChoice(NamedTuple):
    """The backend ``auto`` picks: ``name`` for :func:`create_backend`, ``device``, and why."""

    name: str
    device: str
    reason: str


def choose_backend(capabilities: Capabilities) -> BackendChoice:
    """Pure: TensorRT, then ONNX Runtime on CUDA, then PyTorch on CUDA, then ONNX Runtime on CPU."""
    if capabilities.cuda and capabilities.tensorrt:
        return BackendChoice("tensorrt", "cuda", "TensorRT and a CUDA GPU are available")
    if capabilities.cuda and capabilities.onnxruntime_cuda:
        return BackendChoice("onnxruntime", "cuda", "CUDA GPU and ONNX Runtime's CUDA provider; no TensorRT")
    if capabilities.cuda:
        return BackendChoice("torch", "cuda", "CUDA GPU, but neither TensorRT nor ONNX Runtime's CUDA provider")
    missing = "TensorRT is installed but " if capabilities.tensorrt else ""
    return BackendChoice("onnxruntime", "cpu", f"{missing}no CUDA GPU visible to torch: ONNX Runtime on CPU")


def cuda_driver_devices() -> int:
    """CUDA devices the driver (``libcuda``, loaded with ctypes) reports: 0 without a driver, when
    it fails to initialise (``CUDA_VISIBLE_DEVICES=""`` included) or sees no device. A few ms."""
    for name in _CUDA_DRIVER_LIBRARIES:
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except AttributeError:  # a library of that name without the driver API
            return 0
        return count.value
    return 0


def cuda_visible() -> bool:
    """Whether torch sees a CUDA GPU (``torch.cuda.is_available()``), importing torch only when the
    CUDA driver reports a device: torch cannot see one the driver does not, and on a machine
    without one this skips the 1-2 s torch import."""
    if cuda_driver_devices() == 0:
        return False
    import torch

    return bool(torch.cuda.is_available())


def detect_capabilities() -> Capabilities:
    """Probe this machine once (imports tensorrt if installed; a broken install counts as absent)."""
    import onnxruntime as ort

    try:
        from inference.tensorrt_engine import import_tensorrt

        import_tensorrt()
        tensorrt = True
    except TensorRTUnavailable:
        tensorrt = False
    return Capabilities(
        cuda=cuda_visible(),
        tensorrt=tensorrt,
        onnxruntime_cuda="CUDAExecutionProvider" in ort.get_available_providers(),
    )


# --- caches and the factory --------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spikeformer-live`` (default ``~/.cache/spikeformer-live``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spikeformer-live"


def _weights_sha256(metadata: dict) -> str:
    sha = (metadata.get("weights") or {}).get("sha256")
    if not isinstance(sha, str) or not sha:
        raise ValueError("checkpoint metadata has no weights.sha256")
    return sha


def model_code_fingerprint() -> str:
    """12 hex chars of sha256 over the source files of ``MODEL_CODE_MODULES`` (found, not imported:
    no torch import): a cached export goes stale when the code that defines the graph changes, not
    only the weights."""
    digest = hashlib.sha256()
    for module_name in MODEL_CODE_MODULES:
        spec = importlib.util.find_spec(module_name)
        if spec is None or spec.origin is None:
            raise ValueError(f"cannot find the source of {module_name} for the model code fingerprint")
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:12]


def cached_onnx(checkpoint_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                fp16: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """The checkpoint's ONNX export, made on first use and cached by its weights sha256.

    The file name carries the opset, precision, export format version and
    :func:`model_code_fingerprint`, so a change to any of them makes a new file; exports are written
    atomically (concurrent processes are safe).
    """
    from training.checkpoint import read_metadata

    sha = _weights_sha256(read_metadata(checkpoint_path))
    precision = "fp16" if fp16 else "fp32"
    path = Path(cache_dir or default_cache_dir()) / "onnx" / (
        f"{sha}-code{model_code_fingerprint()}-opset{opset}-{precision}-v{EXPORT_FORMAT_VERSION}.onnx")
    if not path.is_file():
        log.info("exporting %s to %s", checkpoint_path, path)
        export_onnx(checkpoint_path, path, opset=opset, fp16=fp16)
    return path


def _cached_engine(checkpoint_path: Path, cache_dir: Path, *, max_batch: int, fp16: bool) -> Path:
    from inference.tensorrt_engine import build_engine, engine_cache_key, require_tensorrt, timing_cache_name
    from training.checkpoint import read_metadata

    trt, gpu_name = require_tensorrt()
    sha = _weights_sha256(read_metadata(checkpoint_path))
    model_id = f"{sha}-code{model_code_fingerprint()}"  # same staleness rule as cached_onnx
    key = engine_cache_key(model_id, trt.__version__, gpu_name, max_batch, "fp16" if fp16 else "fp32")
    engine_path = cache_dir / "tensorrt" / f"{key}.engine"
    if not engine_path.is_file():
        onnx_path = cached_onnx(checkpoint_path, cache_dir, fp16=fp16)
        build_engine(onnx_path, engine_path, max_batch=max_batch, fp16=fp16,
                     timing_cache_path=cache_dir / "tensorrt" / timing_cache_name(trt.__version__, gpu_name))
    return engine_path


def cached_step_onnx(checkpoint_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                     opset: int = DEFAULT_OPSET) -> Path:  # fmt: skip
    """The checkpoint's step export (a causal model), made on first use and cached like ``cached_onnx``."""
    from training.checkpoint import read_metadata

    sha = _weights_sha256(read_metadata(checkpoint_path))
    path = Path(cache_dir or default_cache_dir()) / "onnx" / (
        f"{sha}-code{model_code_fingerprint()}-opset{opset}-step-v{EXPORT_FORMAT_VERSION}.onnx")
    if not path.is_file():
        log.info("exporting the step model of %s to %s", checkpoint_path, path)
        export_step_onnx(checkpoint_path, path, opset=opset)
    return path


def create_step_backend(name: str, checkpoint_path: str | os.PathLike, *, device: str | None = None,
                        cache_dir: str | os.PathLike | None = None, threads: int = DEFAULT_CPU_THREADS) -> StepBackend:
    """A step backend for a causal checkpoint (``auto``: the same choice as ``create_backend``)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_path}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name == "auto":
        choice = choose_backend(detect_capabilities())
        name, device = choice.name, choice.device
    elif device is None and name != "tensorrt":
        device = "cuda" if cuda_visible() else "cpu"
    if name == "tensorrt":
        from inference.tensorrt_engine import build_engine, require_tensorrt, timing_cache_name

        try:
            trt, gpu_name = require_tensorrt()
        except TensorRTUnavailable as error:
            raise BackendUnavailable(str(error)) from None
        onnx_path = cached_step_onnx(checkpoint_path, cache)
        engine = cache / "tensorrt" / (onnx_path.stem + f"-trt{trt.__version__}.engine")
        if not engine.is_file():
            build_engine(onnx_path, engine, max_batch=1, fp16=False,
                         timing_cache_path=cache / "tensorrt" / timing_cache_name(trt.__version__, gpu_name))  # fmt: skip
        return TensorRTStepBackend(engine)
    if name == "onnxruntime":
        return OnnxRuntimeStepBackend(cached_step_onnx(checkpoint_path, cache), device, threads=threads)
    from training.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint_path)
    return TorchStepBackend(model, device)


def create_backend(
    name: str,
    checkpoint_path: str | os.PathLike,
    *,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    warmup_iterations: int = DEFAULT_WARMUP_ITERATIONS,
    threads: int = DEFAULT_CPU_THREADS,
    max_batch: int = 8,
    fp16: bool = True,
    cuda_graph: bool = True,
) -> Backend:
    """A warmed-up backend for a checkpoint.

    Args:
        name: ``"auto"``, ``"tensorrt"``, ``"onnxruntime"`` or ``"torch"``.
        checkpoint_path: a :mod:`training.checkpoint` file.
        device: ``"cpu"`` or ``"cuda[:N]"``; None: CUDA when torch sees a GPU (:func:`cuda_visible`),
            else CPU (``auto`` decides itself; ``tensorrt`` is always CUDA).
        cache_dir: where ONNX files and engines are cached (default :func:`default_cache_dir`).
        warmup_iterations: windows run before returning.
        threads: ONNX Runtime CPU intra-op threads.
        max_batch: TensorRT profile's largest batch.
        fp16: TensorRT engine precision (the FP16 ONNX export); other backends run FP32.
        cuda_graph: PyTorch on CUDA replays a CUDA graph for single windows.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_path}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name == "auto":
        capabilities = detect_capabilities()
        choice = choose_backend(capabilities)
        log.info("backend auto -> %s on %s: %s (%s)", choice.name, choice.device, choice.reason, capabilities)
        name, device = choice.name, choice.device
    elif device is None and name != "tensorrt":
        device = "cuda" if cuda_visible() else "cpu"

    backend: Backend
    if name == "tensorrt":
        if device is not None and not device.startswith("cuda"):
            raise ValueError(f"the tensorrt backend runs on CUDA only, got device {device!r}")
        try:
            backend = TensorRTBackend(_cached_engine(checkpoint_path, cache, max_batch=max_batch, fp16=fp16))
        except TensorRTUnavailable as error:
            raise BackendUnavailable(str(error)) from None
    elif name == "onnxruntime":
        backend = OnnxRuntimeBackend(cached_onnx(checkpoint_path, cache), device, threads=threads)
    else:
        from training.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint_path)
        backend = TorchBackend(model, device, cuda_graph=cuda_graph)
    backend.warmup(warmup_iterations)
    log.info("backend %s ready (input %s)", backend.name, backend.input_shape)
    return backend
