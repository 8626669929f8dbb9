"""Checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (everything needed to use them).

No pickle anywhere: weights are safetensors, metadata is JSON, and the model is rebuilt from the
config stored in the JSON (``model``). The JSON::

    {
      "format": "spikeformer-live-checkpoint", "version": 1,
      "model": {...SpikeformerConfig.to_dict(), "name" is the preset...},
      "classes": ["...", ...],                       # one name per logit
      "input": {
        "window": {"bins": T, "bin_us": int, "stride_us": int},           # WindowSpec.to_dict()
        "sensor_mapping": {"input_width": W, "input_height": H, "method": str,
                           "flip_x": bool, "flip_y": bool},                 # SensorMapping.to_dict()
        "normalisation": {"kind": ...} or null,
        "filters": {...},                                                   # optional: noise filters
        "coverage": {"median": float, "windows": int}                       # optional: stream.coverage
      },
      "data": {...}, "metrics": {...},               # free-form: what it was trained on, how it scored
      "weights": {"file": "NAME.safetensors", "sha256": hex, "parameters": int}
    }

:func:`load_checkpoint` refuses, with a :class:`CheckpointError` naming the problem, anything that
does not match: format or version, missing keys, a weights file whose sha256 differs from the JSON,
missing or extra tensors, wrong shapes or dtypes, NaN/Inf weights, a class list, window or input
size inconsistent with the model config. Files are size-bounded before they are read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from stream.atomic import write_atomically
from stream.binning import check_filters, check_normalisation
from stream.coverage import check_coverage
from training.spikeformer import Spikeformer, SpikeformerConfig, build_model, count_parameters

FORMAT = "spikeformer-live-checkpoint"
VERSION = 1
MAX_JSON_BYTES = 1 << 20  # 1 MiB
WEIGHTS_HEADER_ALLOWANCE = 8 << 20  # bytes a safetensors header may add to the raw tensor bytes
METADATA_KEYS = {"classes", "input", "data", "metrics", "decision"}
DECISION_KEYS = {"method", "alpha", "history", "threshold", "margin"}  # inference.smoothing.SmoothingConfig
REQUIRED_KEYS = {"format", "version", "model", "classes", "input", "data", "metrics", "weights"}


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, tampered with, or does not match its own config."""


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(json_path, weights_path)`` for a path to the ``.json``, the ``.safetensors`` or the stem."""
    path = Path(path)
    name = path.name
    for suffix in (".json", ".safetensors"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if not name:
        raise CheckpointError(f"checkpoint path {str(path)!r} has no file name")
    return path.with_name(name + ".json"), path.with_name(name + ".safetensors")


def save_checkpoint(path_stem_or_dir: str | os.PathLike[str], model: Spikeformer, metadata: dict) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json``; returns the JSON path.

    Args:
        path_stem_or_dir: ``dir/NAME`` (a ``.json``/``.safetensors`` suffix is ignored), or an existing
            directory, in which case NAME is the model's preset name.
        model: the model to save (its ``config`` goes into the JSON).
        metadata: ``classes`` (list of names) and ``input`` (``window``, ``sensor_mapping``,
            ``normalisation``) required; ``data`` and ``metrics`` (dicts) optional; ``decision``
            (``inference.smoothing.SmoothingConfig.to_dict``: the live decision rule) optional.
    """
    if not isinstance(model, Spikeformer):
        raise CheckpointError(f"save_checkpoint needs a Spikeformer, got {type(model).__name__}")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
    unknown = sorted(set(metadata) - METADATA_KEYS)
    if unknown:
        raise CheckpointError(f"unknown checkpoint metadata keys {unknown}; allowed: {sorted(METADATA_KEYS)}")
    target = Path(path_stem_or_dir)
    if target.is_dir():
        target = target / model.config.name
    json_path, weights_path = checkpoint_paths(target)

    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing to save: weight {key!r} holds NaN or Inf")
    weights_bytes = safetensors.torch.save(tensors)

    document = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.config.to_dict(),
        "classes": metadata.get("classes"),
        "input": metadata.get("input"),
        "data": metadata.get("data", {}),
        "metrics": metadata.get("metrics", {}),
        "weights": {
            "file": weights_path.name,
            "sha256": hashlib.sha256(weights_bytes).hexdigest(),
            "parameters": count_parameters(model),
        },
    }
    if metadata.get("decision") is not None:
        document["decision"] = metadata["decision"]
    _validate_document(document, where=str(json_path))
    try:
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint metadata is not plain JSON (no NaN, no objects): {error}") from None

    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(weights_path, weights_bytes)
    write_atomically(json_path, text.encode("utf-8"))
    return json_path


def read_metadata(path: str | os.PathLike[str]) -> dict:
    """The validated JSON of a checkpoint (no weights read). Raises :class:`CheckpointError`."""
    json_path, _ = _load_paths(path)
    document = _read_json(json_path)
    _validate_document(document, where=str(json_path))
    return document


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[Spikeformer, dict]:
    """Rebuild the model from a checkpoint and load its weights; returns ``(model in eval mode, metadata)``.

    ``path`` is the ``.json``, the ``.safetensors`` or the common stem. Every check in the module
    docstring raises :class:`CheckpointError` naming what is wrong, in one line. Memory is bounded
    by the weights the config describes and the size of the weights file: the model is laid out on
    PyTorch's meta device (no memory) to bound the file read, and built only once every tensor
    matched.
    """
    json_path, _ = _load_paths(path)
    document = _read_json(json_path)
    config = _validate_document(document, where=str(json_path))
    weights_path = json_path.with_name(document["weights"]["file"])

    with torch.device("meta"):  # shapes and dtypes only: a config asking for 10^12 weights costs nothing
        skeleton = build_model(config)
    expected = {key: (tuple(tensor.shape), tensor.dtype) for key, tensor in skeleton.state_dict().items()}
    tensor_bytes = sum(tensor.numel() * tensor.element_size() for tensor in skeleton.state_dict().values())
    raw = _read_bounded(weights_path, tensor_bytes + WEIGHTS_HEADER_ALLOWANCE, "weights file")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != document["weights"]["sha256"]:
        raise CheckpointError(
            f"{weights_path}: sha256 {digest} does not match {document['weights']['sha256']} recorded in "
            f"{json_path.name} (the weights were modified or belong to another checkpoint)"
        )
    try:
        tensors = safetensors.torch.load(raw)
    except BaseException as error:  # SafetensorError, or a Rust panic (BaseException) on a malformed header
        if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{weights_path}: not a valid safetensors file ({message})") from None

    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{weights_path}: tensors do not match model {config.name!r}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    for key, (shape, dtype) in expected.items():
        tensor = tensors[key]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{weights_path}: tensor {key!r} has shape {list(tensor.shape)}, the config needs {list(shape)}"
            )
        if tensor.dtype != dtype:
            raise CheckpointError(f"{weights_path}: tensor {key!r} is {tensor.dtype}, expected {dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{weights_path}: tensor {key!r} holds NaN or Inf")
    if count_parameters(skeleton) != document["weights"]["parameters"]:
        raise CheckpointError(
            f"{json_path}: weights.parameters is {document['weights']['parameters']}, the model has "
            f"{count_parameters(skeleton)}"
        )
    model = build_model(config)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), document


def _load_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``checkpoint_paths`` for reading: a directory is refused with a clear message."""
    if Path(path).is_dir():
        raise CheckpointError(
            f"{path} is a directory; pass a checkpoint's NAME.json, NAME.safetensors or NAME (the common stem)"
        )
    return checkpoint_paths(path)


# --- helpers ----------------------------------------------------------------------------------


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise CheckpointError(f"{path}: {what} is {size} bytes, more than the {limit} this checkpoint allows")
        with path.open("rb") as file:
            data = file.read(size + 1)  # read(n) allocates n bytes at once: never more than the file
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: {what} is a directory") from None
    if len(data) != size:
        raise CheckpointError(f"{path}: {what} changed size while being read")
    return data


def _read_json(path: Path) -> dict:
    raw = _read_bounded(path, MAX_JSON_BYTES, "checkpoint JSON")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: the checkpoint JSON must be an object, got {type(document).__name__}")
    return document


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(where: str, value: Any, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} must be an object, got {type(value).__name__}")
    missing = sorted(required - set(value))
    extra = sorted(set(value) - required - optional)
    if missing or extra:
        raise CheckpointError(f"{where}: missing keys {missing}, unexpected keys {extra}")
    return value


def _positive_int(where: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise CheckpointError(f"{where} must be a positive integer, got {value!r}")
    return value


def _validate_document(document: dict, where: str) -> SpikeformerConfig:
    """Check structure, types, ranges and consistency with the model config; return the config."""
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format is {document.get('format')!r}, expected {FORMAT!r}")
    if document.get("version") != VERSION:
        raise CheckpointError(f"{where}: version {document.get('version')!r} is not supported (expected {VERSION})")
    _check_keys(where, document, REQUIRED_KEYS, optional={"decision"})
    if "decision" in document:  # its values are checked where the rule is built (inference.smoothing)
        _check_keys(f"{where}: decision", document["decision"], set(), optional=DECISION_KEYS)
    try:
        config = SpikeformerConfig.from_dict(document["model"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: invalid model config: {error}") from None

    classes = document["classes"]
    if (not isinstance(classes, list) or not all(isinstance(name, str) and name for name in classes)
            or len(set(classes)) != len(classes)):
        raise CheckpointError(f"{where}: classes must be a list of distinct non-empty names, got {classes!r}")
    if len(classes) != config.num_classes:
        raise CheckpointError(
            f"{where}: {len(classes)} class names but the model has num_classes={config.num_classes}"
        )

    inputs = _check_keys(f"{where}: input", document["input"], {"window", "sensor_mapping", "normalisation"},
                         optional={"filters", "coverage"})  # fmt: skip
    window = _check_keys(f"{where}: input.window", inputs["window"], {"bins", "bin_us", "stride_us"})
    for key in ("bins", "bin_us", "stride_us"):
        _positive_int(f"{where}: input.window.{key}", window[key])
    if window["stride_us"] % window["bin_us"]:
        raise CheckpointError(f"{where}: input.window.stride_us must be a multiple of bin_us, got {window}")
    if window["bins"] != config.time_steps:
        raise CheckpointError(
            f"{where}: input.window.bins={window['bins']} but the model has time_steps={config.time_steps}"
        )
    mapping = _check_keys(f"{where}: input.sensor_mapping", inputs["sensor_mapping"],
                          {"input_width", "input_height", "method", "flip_x", "flip_y"})
    for key in ("input_width", "input_height"):
        _positive_int(f"{where}: input.sensor_mapping.{key}", mapping[key])
    if not isinstance(mapping["method"], str) or not mapping["method"]:
        raise CheckpointError(f"{where}: input.sensor_mapping.method must be a non-empty string")
    for key in ("flip_x", "flip_y"):
        if not isinstance(mapping[key], bool):
            raise CheckpointError(f"{where}: input.sensor_mapping.{key} must be true or false, got {mapping[key]!r}")
    height, width = config.input_size
    if (mapping["input_width"], mapping["input_height"]) != (width, height):
        raise CheckpointError(
            f"{where}: sensor_mapping maps to {mapping['input_width']}x{mapping['input_height']} pixels but the "
            f"model input is {width}x{height} (width x height)"
        )
    for key, check in (("normalisation", check_normalisation), ("filters", check_filters), ("coverage", check_coverage)):
        try:
            check(inputs.get(key))
        except ValueError as error:
            raise CheckpointError(f"{where}: input.{key}: {error}") from None
    for key in ("data", "metrics"):
        if not isinstance(document[key], dict):
            raise CheckpointError(f"{where}: {key} must be an object, got {type(document[key]).__name__}")
        _check_finite(f"{where}: {key}", document[key])

    weights = _check_keys(f"{where}: weights", document["weights"], {"file", "sha256", "parameters"})
    file_name = weights["file"]
    if (not isinstance(file_name, str) or not file_name.endswith(".safetensors")
            or file_name != Path(file_name).name or file_name.startswith(".")):
        raise CheckpointError(
            f"{where}: weights.file must be a plain '*.safetensors' file name beside the JSON, got {file_name!r}"
        )
    sha = weights["sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise CheckpointError(f"{where}: weights.sha256 must be 64 lowercase hex digits, got {sha!r}")
    _positive_int(f"{where}: weights.parameters", weights["parameters"])
    return config


def _check_finite(where: str, value: Any) -> None:
    """JSON from Python may carry NaN/Infinity; refuse them so every checkpoint is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CheckpointError(f"{where} holds a non-finite number {value!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(f"{where}.{key}", item)
    elif isinstance(value, list):
        for item in value:
            _check_finite(where, item)
