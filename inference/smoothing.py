"""Turn per-window class probabilities into a stable label (or "no gesture").

A single window's arg-max flickers; a user wants one label that changes only when the gesture does.
Two smoothing rules, both over the last few windows of one stream:

* ``ema``: exponential moving average of the probability vectors,
  ``s_k = (1 - alpha) * s_{k-1} + alpha * p_k``; the stable label is ``argmax(s_k)`` when
  ``max(s_k) >= threshold``.
* ``majority``: the arg-max classes of the last ``history`` windows vote; the stable label is the
  most voted class when its vote share is ``>= threshold``.

Below the threshold, or when the best class leads the second by less than ``margin`` (the
"undecided" state of a decision rule: confidence and margin thresholds on the accumulated
evidence), the stable label is ``NO_GESTURE`` (index -1). A checkpoint may carry its own tuned
rule (``decision`` in its metadata, ``SmoothingConfig.to_dict``). The maths lives in the pure
functions ``softmax``, ``ema_step`` and ``majority_vote``; ``LabelSmoother`` only binds parameters
and holds the state of one stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from stream.classes import NO_GESTURE

NO_GESTURE_INDEX = -1
SMOOTHING_METHODS = ("ema", "majority")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, numerically stable, float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ema_step(state: np.ndarray | None, probabilities: np.ndarray, alpha: float) -> np.ndarray:
    """One exponential-moving-average step; ``state=None`` starts from ``probabilities``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if state is None:
        return probabilities.copy()
    return (1.0 - alpha) * state + alpha * probabilities


def majority_vote(recent_classes: np.ndarray, num_classes: int) -> tuple[int, float]:
    """Most voted class among ``recent_classes`` and its vote share (ties: the most recent wins).

    Returns ``(-1, 0.0)`` for an empty history.
    """
    recent_classes = np.asarray(recent_classes, dtype=np.int64)
    if recent_classes.size == 0:
        return NO_GESTURE_INDEX, 0.0
    votes = np.bincount(recent_classes, minlength=num_classes)
    best = votes.max()
    tied = np.flatnonzero(votes == best)
    # Tie break: the tied class seen most recently.
    winner = next(int(c) for c in recent_classes[::-1] if c in tied) if tied.size > 1 else int(tied[0])
    return winner, float(best) / float(recent_classes.size)


@dataclass(frozen=True)
class SmoothingConfig:
    """How to smooth.

    Args:
        method: ``"ema"`` or ``"majority"``.
        alpha: EMA weight of the newest window, in (0, 1]; 1 means no smoothing.
        history: number of recent windows that vote (``majority``).
        threshold: minimum smoothed probability (``ema``) or vote share (``majority``) for a label;
            below it the stable label is "no gesture".
        margin: minimum lead of the best class over the second (``ema``): undecided below it.
    """

    method: str = "ema"
    alpha: float = 0.4
    history: int = 5
    threshold: float = 0.5
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in SMOOTHING_METHODS:
            raise ValueError(f"smoothing method must be one of {SMOOTHING_METHODS}, got {self.method!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1], got {self.alpha}")
        if self.history < 1:
            raise ValueError(f"smoothing history must be >= 1 window, got {self.history}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"smoothing threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"decision margin must be in [0, 1], got {self.margin}")

    def to_dict(self) -> dict[str, float | int | str]:
        """JSON-ready (a checkpoint's ``decision``)."""
        return {"method": self.method, "alpha": self.alpha, "history": self.history, "threshold": self.threshold,
                "margin": self.margin}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> "SmoothingConfig":
        """Inverse of ``to_dict``; unknown keys are a ``ValueError``."""
        if not isinstance(data, dict) or not set(data) <= {"method", "alpha", "history", "threshold", "margin"}:
            raise ValueError(f"a decision rule must be a dict of method, alpha, history, threshold, margin, got {data!r}")
        return cls(**data)


class StableLabel(NamedTuple):
    """The smoothed decision: class index (-1 = no gesture), its name and its confidence (0..1)."""

    index: int
    name: str
    confidence: float


class LabelSmoother:
    """Holds one stream's smoothing state.

    Args:
        class_names: the model's class names, in logit order.
        config: the smoothing rule and its parameters.
    """

    def __init__(self, class_names: list[str] | tuple[str, ...], config: SmoothingConfig = SmoothingConfig()) -> None:
        if not class_names:
            raise ValueError("class_names must not be empty")
        self.class_names = tuple(class_names)
        self.config = config
        self._ema: np.ndarray | None = None
        self._recent: deque[int] = deque(maxlen=config.history)

    def reset(self) -> None:
        """Forget the history (e.g. after a gap in the stream or a sensor change)."""
        self._ema = None
        self._recent.clear()

    def silence(self) -> StableLabel:
        """A window without any event: "no gesture" (confidence 0), and the history starts again."""
        self.reset()
        return StableLabel(NO_GESTURE_INDEX, NO_GESTURE, 0.0)

    def update(self, probabilities: np.ndarray) -> StableLabel:
        """Add one window's class probabilities (shape ``[C]``) and return the stable label."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (len(self.class_names),):
            raise ValueError(
                f"expected {len(self.class_names)} class probabilities, got shape {probabilities.shape}"
            )
        lead = 1.0
        if self.config.method == "ema":
            self._ema = ema_step(self._ema, probabilities, self.config.alpha)
            second, first = np.partition(self._ema, -2)[-2:] if len(self._ema) > 1 else (0.0, self._ema[0])
            index, confidence, lead = int(self._ema.argmax()), float(first), float(first - second)
        else:
            self._recent.append(int(probabilities.argmax()))
            index, confidence = majority_vote(np.fromiter(self._recent, np.int64), len(self.class_names))
        if confidence < self.config.threshold or lead < self.config.margin:
            return StableLabel(NO_GESTURE_INDEX, NO_GESTURE, confidence)
        return StableLabel(index, self.class_names[index], confidence)
