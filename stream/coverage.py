"""Input coverage: how much of the model's input fires, against the data the checkpoint was trained on.

A window's coverage is the fraction of its cells (time bin x polarity x input pixel of the
``[T, 2, H, W]`` frames) that hold at least one event. Normalisation keeps zero cells zero, so it is
the same on counts and on normalised frames, and the same offline and live. The density
normalisation removes how MANY events a moving edge makes, not how many pixels fire: a subject small
in the frame, a high contrast threshold or a plain wall leaves only fragments of the hands, and the
model then says "other gestures"; a flickering light or a large noisy sensor fills the frame.

A checkpoint stores the median coverage of its training windows (``input.coverage``, written by
``training train``). The live worker keeps the median over its recent windows with events and
compares: below ``SPARSE_BELOW`` times the training median the input is "sparse", above
``DENSE_ABOVE`` times it "dense". Both bounds come from the project's 34 evaluation sets with the
built-in model (README, "Is the input like the training data?"): the three sets below half the
training median read 77-81 %, the three above three times it 63-80 %, and 23 of the 28 in between
read 90-99 % (the other five 68-90 %). The check names 6 of the 11 sets below 90 % and no set above 82 %.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

SPARSE_BELOW = 0.5  # x the training median
DENSE_ABOVE = 3.0
RECENT_WINDOWS = 40  # windows with events in the live median (2 s at a 50 ms stride)


def window_coverage(frames: np.ndarray) -> np.ndarray:
    """The coverage of each window of ``frames`` ``[..., T, 2, H, W]`` (counts or normalised):
    the fraction of its cells that are non-zero, shape ``[...]``, float64 in [0, 1]."""
    frames = np.asarray(frames)
    if frames.ndim < 4:
        raise ValueError(f"frames must be [..., T, 2, H, W], got shape {frames.shape}")
    cells = math.prod(frames.shape[-4:])
    flat = frames.reshape(-1, cells)
    # one window at a time: count_nonzero along an axis would first copy every frame as booleans
    # (5.8 GB for the built-in's training pool)
    fired = np.fromiter((np.count_nonzero(window) for window in flat), dtype=np.int64, count=len(flat))
    return (fired / max(cells, 1)).reshape(frames.shape[:-4])


def coverage_spec(coverages: np.ndarray) -> dict[str, Any] | None:
    """What a checkpoint stores of its training windows' coverages: ``{"median": float, "windows": int}``
    (None when most windows are empty: nothing to compare with)."""
    coverages = np.asarray(coverages, dtype=np.float64)
    if not len(coverages):
        raise ValueError("no windows to measure the coverage of")
    median = round(float(np.median(coverages)), 6)
    return {"median": median, "windows": len(coverages)} if median > 0 else None


def check_coverage(spec: Any) -> dict[str, Any] | None:
    """Validate a checkpoint's ``input.coverage``: None, or ``{"median": 0 < m <= 1, "windows": n >= 1}``."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != {"median", "windows"}:
        raise ValueError(f"coverage must be None or {{'median': ..., 'windows': ...}}, got {spec!r}")
    median, windows = spec["median"], spec["windows"]
    if isinstance(median, bool) or not isinstance(median, (int, float)) or not 0 < median <= 1:
        raise ValueError(f"coverage median must be in (0, 1], got {median!r}")
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise ValueError(f"coverage windows must be a positive integer, got {windows!r}")
    return {"median": float(median), "windows": windows}


def coverage_verdict(ratio: float) -> str:
    """``"sparse"``, ``"ok"`` or ``"dense"`` for a coverage ``ratio`` (input median / training median)."""
    if ratio < SPARSE_BELOW:
        return "sparse"
    return "dense" if ratio > DENSE_ABOVE else "ok"


ADVICE = {
    "sparse": "gestures may read as 'other gestures': move closer, light the scene or lower the contrast threshold",
    "dense": "move back, remove flickering light, raise the contrast threshold or filter noise",
    "ok": "",
}


def coverage_summary(coverages: Sequence[float], training_median: float | None) -> dict[str, Any] | None:
    """The median of window ``coverages`` against the median of the training windows (a checkpoint's
    ``input.coverage["median"]``): ``{"median", "windows", "training_median", "ratio", "verdict"}``,
    the last three None without a training median; None without windows."""
    if not len(coverages):
        return None
    return compare_coverage(float(np.median(np.asarray(coverages, dtype=np.float64))), len(coverages), training_median)


def compare_coverage(median: float, windows: int, training_median: float | None) -> dict[str, Any]:
    """A median coverage over ``windows`` windows against the training median: the dict of
    ``coverage_summary``."""
    summary = {"median": round(median, 6), "windows": windows, "training_median": None, "ratio": None,
               "verdict": None}  # fmt: skip
    if training_median is not None:
        ratio = median / training_median
        summary.update(training_median=training_median, ratio=round(ratio, 4), verdict=coverage_verdict(ratio))
    return summary


def coverage_text(summary: dict[str, Any] | None) -> str | None:
    """A ``coverage_summary`` as one line, e.g. "input coverage 0.31x training: sparse (gestures may read
    as ...)"; without a training median only the median; None without a summary."""
    if summary is None:
        return None
    if summary.get("ratio") is None:
        return f"input coverage {summary['median']:.4f} (no training coverage in the checkpoint to compare with)"
    text = f"input coverage {summary['ratio']:.2f}x training"
    verdict = summary["verdict"]
    return text if verdict == "ok" else f"{text}: {verdict} ({ADVICE[verdict]})"


class CoverageMonitor:
    """The median coverage of the last ``size`` windows that held events, against the training median.

    Args:
        training: the checkpoint's ``input.coverage`` (None: no comparison, ``summary`` gives only the median).
        size: windows in the running median.
    """

    def __init__(self, training: dict[str, Any] | None, size: int = RECENT_WINDOWS) -> None:
        training = check_coverage(training)
        self.training_median = None if training is None else training["median"]
        self.recent: deque[float] = deque(maxlen=size)

    def add(self, coverage: float) -> None:
        """A window with events and its coverage (windows without events are not added)."""
        self.recent.append(float(coverage))

    def reset(self) -> None:
        self.recent.clear()

    def summary(self) -> dict[str, Any] | None:
        """``coverage_summary`` of the recent windows (None before any window with events)."""
        return coverage_summary(self.recent, self.training_median)
