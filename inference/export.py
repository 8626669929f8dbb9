"""ONNX export of a Spikeformer checkpoint, FP16 conversion, and parity checks.

The exported graph is the model's ``forward``: one input ``frames`` ``[B, T, 2, H, W]`` float32
(dynamic batch ``B``; channel = polarity, 0 OFF / 1 ON) and ONE output ``logits`` ``[B, num_classes]``
float32. No softmax output: callers that want probabilities take ``softmax`` of a handful of logits,
and a single output keeps every runtime (ONNX Runtime, TensorRT) identical. The PLIF time loop is
unrolled by the TorchScript exporter into plain ONNX ops (no custom op).

The ONNX file is self-describing: ``metadata_props`` holds the checkpoint metadata as JSON (classes,
window, sensor mapping, weights sha256, ...), the per-sample input shape, the weights sha256 and the
precision, so an ONNX file alone is enough to run the model (:func:`read_onnx_info`).

FP16 (:func:`convert_to_fp16`, for TensorRT's strongly typed networks): initialisers and compute in
float16, graph input and output kept float32 with ``Cast`` nodes at the boundaries (so callers never
change), ``LayerNormalization`` and ``Softmax`` computed in float32 between casts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.onnx_info import (
    FRAME_NAME,
    INPUT_NAME,
    META_CHECKPOINT,
    META_FORMAT,
    META_INPUT_SHAPE,
    META_PRECISION,
    META_STEP_STATE,
    META_WEIGHTS_SHA256,
    NEXT_PREFIX,
    OUTPUT_NAME,
    STATE_PREFIX,
    read_onnx_info,
)
from stream.atomic import write_atomically
from stream.stage import ArgumentParser

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
# Bump when the exported graph changes in a way that must invalidate cached ONNX files.
EXPORT_FORMAT_VERSION = 1

FP16_MAX = 65504.0
# Ops kept in float32 inside an FP16 model (reductions over many elements, exp).
KEEP_FP32_OPS = frozenset({"LayerNormalization", "Softmax"})
# Ops whose output dtype comes from an attribute this converter does not rewrite.
UNSUPPORTED_FP16_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                  "EyeLike", "Multinomial", "Bernoulli", "Resize", "Upsample"})

MAX_PARITY_WINDOWS = 10_000


# --- loading -----------------------------------------------------------------------------------


def weights_sha256(model: Any) -> str:
    """sha256 (hex) of a torch module's state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def load_model_and_metadata(source: Any, metadata: dict | None = None) -> tuple[Any, dict]:
    """``source`` is a checkpoint path (``training.checkpoint.load_checkpoint``) or a torch module.

    For a module, ``metadata`` is used as given (default: the model config, if any); its
    ``weights.sha256`` is filled in from the module's weights when missing.
    """
    import torch

    if isinstance(source, torch.nn.Module):
        model = source
        if metadata is None:
            config = getattr(model, "config", None)
            metadata = {"model": config.to_dict()} if hasattr(config, "to_dict") else {}
        metadata = copy.deepcopy(metadata)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        from training.checkpoint import load_checkpoint

        model, checkpoint_metadata = load_checkpoint(path)
        metadata = copy.deepcopy(checkpoint_metadata if metadata is None else metadata)
    weights = metadata.setdefault("weights", {})
    if not isinstance(weights, dict):
        raise ValueError(f"metadata 'weights' must be an object, got {type(weights).__name__}")
    weights.setdefault("sha256", weights_sha256(model))
    return model, metadata


def model_input_shape(model: Any) -> tuple[int, int, int, int]:
    """Per-sample input shape ``(T, 2, H, W)`` from the model's ``input_shape`` property."""
    shape = getattr(model, "input_shape", None)
    if shape is None or len(shape) != 4 or int(shape[1]) != 2:
        raise ValueError(f"model must expose input_shape (T, 2, H, W), got {shape!r}")
    return tuple(int(side) for side in shape)  # type: ignore[return-value]


# --- export ------------------------------------------------------------------------------------


def export_onnx(
    checkpoint_path_or_model: Any,
    out_path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    fp16: bool = False,
    metadata: dict | None = None,
) -> Path:
    """Export ``forward`` (frames ``[B, T, 2, H, W]`` -> logits ``[B, C]``) to ``out_path``; return it.

    With ``dynamic_batch`` the export is run by ONNX Runtime at batch 1 and 3 (the trace used 2).
    A model whose code freezes the batch size in the trace (e.g. ``reshape(batch * n, ...)`` with
    sizes read from ``x.shape``, or ``zeros_like`` of a traced tensor) fails that check; it is then
    exported with the batch fixed at 1 (enough for the live pipeline) and a warning names the error.
    :attr:`OnnxModelInfo.dynamic_batch` tells which one was written.

    Args:
        checkpoint_path_or_model: a checkpoint file or a torch module exposing ``input_shape``.
        out_path: the ``.onnx`` file to write (written atomically; parent folders are created).
        opset: ONNX opset (>= 17 for ``LayerNormalization``).
        dynamic_batch: make the batch axis dynamic (else fixed at 1).
        fp16: write the FP16 model of :func:`convert_to_fp16` (float32 I/O) instead of FP32.
        metadata: metadata for a bare module (a checkpoint brings its own).
    """
    if not 17 <= opset <= 21:
        raise ValueError(f"opset must be 17..21 (LayerNormalization needs 17), got {opset}")
    model, metadata = load_model_and_metadata(checkpoint_path_or_model, metadata)
    input_shape = model_input_shape(model)
    proto = _trace(model, input_shape, opset, dynamic_batch)
    if dynamic_batch:
        error = _batch_error(proto, input_shape, batches=(1, 3))
        if error:
            log.warning("the model does not export with a dynamic batch (%s); exporting with the batch "
                        "fixed at 1", error)
            proto = _trace(model, input_shape, opset, dynamic_batch=False)

    _set_metadata(proto, metadata, input_shape, "fp32")
    if fp16:
        proto = convert_to_fp16(proto)
    onnx.checker.check_model(proto, full_check=True)
    return write_atomically(out_path, proto.SerializeToString())


def export_step_onnx(checkpoint_path_or_model: Any, out_path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                     metadata: dict | None = None) -> Path:  # fmt: skip
    """Export a causal model's step (``training.streaming.SpikeformerStep``: the newest bin
    ``frame [1, 2, H, W]`` and the state ``state.NAME`` in, ``logits [1, C]`` and ``next.NAME`` out,
    batch 1) to ``out_path``; the state's names and shapes are in its metadata (``OnnxModelInfo.step_state``)."""
    import torch

    from training.streaming import SpikeformerStep, initial_state, state_names

    if not 17 <= opset <= 21:
        raise ValueError(f"opset must be 17..21 (LayerNormalization needs 17), got {opset}")
    model, metadata = load_model_and_metadata(checkpoint_path_or_model, metadata)
    if not getattr(getattr(model, "config", None), "causal", False):
        raise ValueError("a step export needs a causal model (SpikeformerConfig.causal)")
    step = SpikeformerStep(model).eval()
    names = state_names(model)
    state = initial_state(model, 1)
    frame_shape = (1, *model_input_shape(model)[1:])
    example = (torch.zeros(frame_shape, device=state[0].device), *state)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        raw_path = Path(tmp) / "step.onnx"
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                step, example, str(raw_path), dynamo=False, opset_version=opset,
                input_names=[FRAME_NAME, *(STATE_PREFIX + name for name in names)],
                output_names=[OUTPUT_NAME, *(NEXT_PREFIX + name for name in names)], do_constant_folding=True,
            )  # fmt: skip
        proto = onnx.load(str(raw_path))
    _set_metadata(proto, metadata, frame_shape, "fp32")
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, META_STEP_STATE: json.dumps(
        [[name, list(tensor.shape)] for name, tensor in zip(names, state)])})  # fmt: skip
    onnx.checker.check_model(proto, full_check=True)
    return write_atomically(out_path, proto.SerializeToString())


def _trace(model: Any, input_shape: tuple[int, ...], opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    """TorchScript-exporter trace of ``model`` in eval mode (its mode is restored afterwards)."""
    import torch

    device = next(model.parameters()).device
    example = torch.zeros((2 if dynamic_batch else 1, *input_shape), dtype=torch.float32, device=device)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks in forward
            raw_path = Path(tmp) / "model.onnx"
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    model, (example,), str(raw_path), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                    do_constant_folding=True,
                )
            return onnx.load(str(raw_path))
    finally:
        model.train(was_training)


def _batch_error(proto: onnx.ModelProto, input_shape: tuple[int, ...], batches: tuple[int, ...]) -> str | None:
    """None if ONNX Runtime runs ``proto`` at every batch size in ``batches`` with the right output
    batch, else the first failure as text."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for batch in batches:
        try:
            (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.zeros((batch, *input_shape), np.float32)})
        except Exception as error:  # onnxruntime raises its own RuntimeError subclasses
            return f"batch {batch}: {str(error).splitlines()[0][:300]}"
        if logits.shape[0] != batch:
            return f"batch {batch}: logits have shape {list(logits.shape)}"
    return None


def _set_metadata(proto: onnx.ModelProto, metadata: dict, input_shape: tuple[int, ...], precision: str) -> None:
    props = {
        META_CHECKPOINT: json.dumps(metadata, sort_keys=True),
        META_INPUT_SHAPE: json.dumps(list(input_shape)),
        META_WEIGHTS_SHA256: str(metadata["weights"]["sha256"]),
        META_PRECISION: precision,
        META_FORMAT: str(EXPORT_FORMAT_VERSION),
    }
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **props})
    proto.producer_name = "spikeformer-live"


# --- FP16 conversion ---------------------------------------------------------------------------


def _to_fp16_tensor(tensor: TensorProto, where: str) -> TensorProto:
    array = numpy_helper.to_array(tensor)
    finite = array[np.isfinite(array)]
    if finite.size and float(np.abs(finite).max()) > FP16_MAX:
        raise ValueError(f"{where} holds values beyond float16 range (|x| max {np.abs(finite).max():.3g})")
    return numpy_helper.from_array(array.astype(np.float16), tensor.name)


def _float_tensor_names(proto: onnx.ModelProto) -> set[str]:
    """Names of all float32 tensors of the graph, from ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    names = {init.name for init in graph.initializer if init.data_type == TensorProto.FLOAT}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            names.add(value.name)
    return names


def convert_to_fp16(proto: onnx.ModelProto, keep_fp32_ops: frozenset[str] = KEEP_FP32_OPS) -> onnx.ModelProto:
    """An FP16 copy of an FP32 ONNX model; float32 graph I/O, casts at the boundaries.

    float32 initialisers and constants become float16 (ValueError if a value exceeds the float16
    range), ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``, ops in ``keep_fp32_ops`` run in float32
    between casts. Graphs with subgraphs (If/Loop) or ops in :data:`UNSUPPORTED_FP16_OPS` are refused.
    The result is type-checked by ONNX strict shape inference.
    """
    float_names = _float_tensor_names(proto)
    out = copy.deepcopy(proto)
    graph = out.graph
    for node in graph.node:
        if node.op_type in UNSUPPORTED_FP16_OPS:
            raise ValueError(f"FP16 conversion does not support op {node.op_type} (node {node.name!r})")
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            raise ValueError(f"FP16 conversion does not support subgraphs (node {node.name!r}, {node.op_type})")

    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(_to_fp16_tensor(init, f"initializer {init.name!r}"))

    float_inputs = [v.name for v in graph.input if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    float_outputs = [v.name for v in graph.output if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    rename = {name: f"{name}__fp16" for name in float_inputs + float_outputs}

    new_nodes = [helper.make_node("Cast", [name], [rename[name]], to=TensorProto.FLOAT16, name=f"{name}__to_fp16")
                 for name in float_inputs]
    for node in graph.node:
        node = copy.deepcopy(node)
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = rename.get(name, name)
        _rewrite_float_attributes(node)
        if node.op_type in keep_fp32_ops:
            new_nodes.extend(_wrap_in_fp32(node, float_names, rename))
        else:
            new_nodes.append(node)
    new_nodes += [helper.make_node("Cast", [rename[name]], [name], to=TensorProto.FLOAT, name=f"{name}__to_fp32")
                  for name in float_outputs]

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    _set_props(out, {META_PRECISION: "fp16"})
    onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True)
    return out


def _rewrite_float_attributes(node: onnx.NodeProto) -> None:
    """Make float32-producing attributes (Constant, ConstantOfShape, Cast) produce float16, in place."""
    if node.op_type == "Cast":
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    elif node.op_type == "Constant":
        for attr in list(node.attribute):
            if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(_to_fp16_tensor(attr.t, f"constant {node.name!r}"))
            elif attr.name in ("value_float", "value_floats"):
                values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
                node.attribute.remove(attr)
                node.attribute.append(helper.make_attribute(
                    "value", _to_fp16_tensor(numpy_helper.from_array(values), f"constant {node.name!r}")))
    elif node.op_type == "ConstantOfShape":
        values = [attr for attr in node.attribute if attr.name == "value"]
        if not values:  # default is float32 zero
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
        elif values[0].t.data_type == TensorProto.FLOAT:
            values[0].t.CopyFrom(_to_fp16_tensor(values[0].t, f"ConstantOfShape {node.name!r}"))


def _wrap_in_fp32(node: onnx.NodeProto, float_names: set[str], rename: dict[str, str]) -> list[onnx.NodeProto]:
    """``node`` (already renamed) run in float32: Cast its float inputs up and its float outputs down."""
    original = {new: old for old, new in rename.items()}
    tag = node.name or node.output[0]
    before, after = [], []
    for i, name in enumerate(node.input):
        if name and original.get(name, name) in float_names:
            up = f"{name}__fp32__{tag}"
            before.append(helper.make_node("Cast", [name], [up], to=TensorProto.FLOAT, name=f"{up}__cast"))
            node.input[i] = up
    for i, name in enumerate(node.output):
        if name and original.get(name, name) in float_names:
            wide = f"{name}__fp32"
            after.append(helper.make_node("Cast", [wide], [name], to=TensorProto.FLOAT16, name=f"{wide}__cast"))
            node.output[i] = wide
    return [*before, node, *after]


def _set_props(proto: onnx.ModelProto, updates: dict[str, str]) -> None:
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **updates})


# --- parity ------------------------------------------------------------------------------------


def poisson_windows(count: int, input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``count`` spike-like count frames ``[count, T, 2, H, W]`` float32: Poisson counts whose rate
    varies per window (0.02..1.5 events per pixel per bin) so windows are not all alike."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.02, 1.5, size=(count,) + (1,) * len(input_shape))
    return rng.poisson(rates, size=(count, *input_shape)).astype(np.float32)


EXACT_ATOL = 1e-3  # logits of one window agree to this when no spike flips
# A spike flipped at the threshold moves a logit by a few hundredths to about a tenth (the built-in
# model: 2 windows of 100 off, by at most 0.11); a wrong model is off by far more, in most windows.
FLIPPED_SPIKE_ATOL = 0.25


@dataclass(frozen=True)
class ParityReport:
    """Torch vs ONNX Runtime on the same windows: worst logit difference and argmax agreement."""

    windows: int
    max_abs_diff: float
    argmax_agreement: float  # fraction of windows with the same predicted class, 0..1
    exact_fraction: float = 1.0  # fraction of windows whose logits all agree within EXACT_ATOL

    def passes(self, atol: float = 1e-3, min_agreement: float = 1.0, min_exact: float = 0.95) -> bool:
        """FP32: the same class everywhere, nearly every window exact, and no window off by more
        than a flipped spike or two (``atol`` on the worst window, ``min_exact`` of them within
        ``EXACT_ATOL``). A membrane potential within float rounding of the threshold can fire in one
        runtime and not the other: the built-in model has 2 such windows in 100, at most 0.11 in the logits."""
        return (self.argmax_agreement >= min_agreement and self.exact_fraction >= min_exact
                and self.max_abs_diff < max(atol, FLIPPED_SPIKE_ATOL))  # fmt: skip

    def __str__(self) -> str:
        return (f"{self.windows} windows: max |logit diff| {self.max_abs_diff:.3g}, "
                f"{100 * self.exact_fraction:.0f}% within {EXACT_ATOL:g}, same class on {100 * self.argmax_agreement:.1f}%")


def verify_parity(
    checkpoint_or_model: Any,
    onnx_path: str | os.PathLike,
    windows: int = 100,
    *,
    batch_size: int = 10,
    seed: int = 0,
) -> ParityReport:
    """Run ``windows`` Poisson windows through the torch model (CPU, eval) and the ONNX file
    (ONNX Runtime CPU) and compare logits. The caller judges the report (``report.passes()``)."""
    import onnxruntime as ort
    import torch

    if not 1 <= windows <= MAX_PARITY_WINDOWS:
        raise ValueError(f"windows must be 1..{MAX_PARITY_WINDOWS}, got {windows}")
    if not 1 <= batch_size <= MAX_PARITY_WINDOWS:
        raise ValueError(f"batch_size must be 1..{MAX_PARITY_WINDOWS}, got {batch_size}")
    model, _ = load_model_and_metadata(checkpoint_or_model)
    frames = poisson_windows(windows, model_input_shape(model), seed)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures surface as exceptions below, not as log spam
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    fixed_batch = session.get_inputs()[0].shape[0]
    # The first window alone (batch 1), then batches of batch_size: a dynamic batch is exercised.
    if isinstance(fixed_batch, int):
        starts = list(range(0, windows, fixed_batch))
    else:
        starts = [0, *range(1, windows, batch_size)]
    exported = []
    for start, stop in zip(starts, [*starts[1:], windows]):
        chunk = frames[start:stop]
        if not len(chunk):
            continue
        try:
            exported.append(session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])
        except Exception as error:  # onnxruntime raises its own RuntimeError subclasses
            raise ValueError(
                f"{onnx_path} fails on a batch of {len(chunk)} (a reshape or constant in the "
                f"model fixed the batch size at export?): {error}") from None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            reference = [model(torch.from_numpy(frames[i:i + batch_size]).to(device)).float().cpu().numpy()
                         for i in range(0, windows, batch_size)]
    finally:
        model.train(was_training)
    reference_logits, exported_logits = np.concatenate(reference), np.concatenate(exported)
    window_diff = np.abs(reference_logits - exported_logits).max(axis=1)
    return ParityReport(
        windows=windows,
        max_abs_diff=float(window_diff.max()),
        argmax_agreement=float(np.mean(reference_logits.argmax(1) == exported_logits.argmax(1))),
        exact_fraction=float(np.mean(window_diff < EXACT_ATOL)),
    )


# --- CLI ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inference export --checkpoint PATH --onnx OUT [--fp16] [--tensorrt ENGINE] ...``."""
    parser = ArgumentParser(
        prog="spikeformer-live export",
        description="Export a checkpoint to ONNX (verified against PyTorch), optionally build a TensorRT engine.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (training.checkpoint format)")
    parser.add_argument("--onnx", required=True, help="ONNX file to write")
    parser.add_argument("--fp16", action="store_true",
                        help="write the FP16 model (float32 I/O); needed for an FP16 TensorRT engine")
    parser.add_argument("--tensorrt", metavar="ENGINE", help="also build a TensorRT engine (needs a CUDA GPU)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--max-batch", type=int, default=8, help="TensorRT profile's largest batch (default 8)")
    parser.add_argument("--windows", type=int, default=100, help="parity windows (0 skips the check)")
    args = parser.parse_args(argv)
    if not 1 <= args.max_batch <= 1024:
        raise ValueError(f"--max-batch must be 1..1024, got {args.max_batch}")
    if not 0 <= args.windows <= MAX_PARITY_WINDOWS:
        raise ValueError(f"--windows must be 0..{MAX_PARITY_WINDOWS}, got {args.windows}")
    if args.tensorrt:
        from inference.tensorrt_engine import require_tensorrt

        require_tensorrt()  # fail before the slow export
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")

    onnx_path = export_onnx(checkpoint, args.onnx, opset=args.opset, fp16=args.fp16)
    info = read_onnx_info(onnx_path)
    batch = "dynamic batch" if info.dynamic_batch else "batch fixed at 1"
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB, {info.precision}, {batch})")
    if args.windows:
        report = verify_parity(checkpoint, onnx_path, args.windows)
        print(f"parity vs PyTorch: {report}")
        # FP16 spiking nets flip some threshold crossings: judge the class, not the last digit.
        ok = report.passes(atol=float("inf"), min_agreement=0.9) if args.fp16 else report.passes()
        if not ok:
            print(f"error: ONNX parity check failed ({report})", file=sys.stderr)
            return 1
    if args.tensorrt:
        from inference.tensorrt_engine import build_engine

        engine = build_engine(onnx_path, args.tensorrt, max_batch=args.max_batch, fp16=args.fp16)
        print(f"wrote {engine}")
    return 0
