"""Inference: backends, export, the worker, and the Python API (``Predictor``)."""

from __future__ import annotations


def __getattr__(name: str):  # ``from inference import Predictor`` without loading torch & co. for other imports
    if name in ("Predictor", "Predictions", "WindowResult"):
        import inference.predictor as predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
