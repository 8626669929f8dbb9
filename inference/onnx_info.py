"""What an exported ONNX model says about itself: its input and output names and the
spikeformer-live ``metadata_props`` (the checkpoint metadata, input shape, weights hash and compute
precision), so that an ONNX file alone is enough to run the model. Written by ``inference.export``,
read by the backends and the TensorRT engine builder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

INPUT_NAME = "frames"
OUTPUT_NAME = "logits"

META_PREFIX = "spikeformer_live."
META_CHECKPOINT = META_PREFIX + "metadata"  # the checkpoint metadata, JSON
META_INPUT_SHAPE = META_PREFIX + "input_shape"  # [T, 2, H, W], JSON
META_WEIGHTS_SHA256 = META_PREFIX + "weights_sha256"
META_PRECISION = META_PREFIX + "precision"  # "fp32" or "fp16" (compute; I/O is always float32)
META_FORMAT = META_PREFIX + "format_version"
META_STEP_STATE = META_PREFIX + "step_state"  # a step model's state: [[name, shape], ...], JSON
FRAME_NAME = "frame"  # a step model's input: the newest bin [1, 2, H, W]
STATE_PREFIX, NEXT_PREFIX = "state.", "next."  # a step model's state inputs and outputs


@dataclass(frozen=True)
class OnnxModelInfo:
    """What an exported ONNX file says about itself (see the module docstring)."""

    metadata: dict
    input_shape: tuple[int, int, int, int]
    weights_sha256: str
    precision: str
    dynamic_batch: bool  # False: the graph input's batch is fixed at 1
    step_state: tuple[tuple[str, tuple[int, ...]], ...] = ()  # a step model's state (name, shape); () for a window model

    @property
    def step(self) -> bool:
        """Whether this is a step (streaming) model: one bin and the state in, logits and the state out."""
        return bool(self.step_state)


def read_onnx_info(onnx_path_or_model: str | os.PathLike | onnx.ModelProto) -> OnnxModelInfo:
    """Read the spikeformer-live ``metadata_props`` of an exported model; ValueError if absent."""
    proto = onnx_path_or_model
    if not isinstance(proto, onnx.ModelProto):
        path = Path(onnx_path_or_model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    missing = [key for key in (META_CHECKPOINT, META_INPUT_SHAPE, META_WEIGHTS_SHA256, META_PRECISION)
               if key not in props]
    if missing:
        raise ValueError(f"not a spikeformer-live ONNX export: metadata_props lack {', '.join(missing)}")
    try:
        metadata = json.loads(props[META_CHECKPOINT])
        shape = tuple(int(side) for side in json.loads(props[META_INPUT_SHAPE]))
    except (ValueError, TypeError) as error:
        raise ValueError(f"corrupt spikeformer-live metadata in the ONNX file: {error}") from None
    if len(shape) != 4 or not isinstance(metadata, dict):
        raise ValueError(f"corrupt spikeformer-live metadata: input shape {shape!r}")
    try:
        state = tuple((str(name), tuple(int(side) for side in dims))
                      for name, dims in json.loads(props.get(META_STEP_STATE, "[]")))  # fmt: skip
    except (ValueError, TypeError) as error:
        raise ValueError(f"corrupt spikeformer-live step state in the ONNX file: {error}") from None
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return OnnxModelInfo(metadata, shape, props[META_WEIGHTS_SHA256], props[META_PRECISION],  # type: ignore[arg-type]
                         dynamic_batch=not batch_dim.HasField("dim_value"), step_state=state)
