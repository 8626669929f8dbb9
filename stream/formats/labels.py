"""DVS128 Gesture's side files: ``userNN_<lighting>_labels.csv`` and ``trials_to_{train,test}.txt``.

The labels CSV has the header ``class,startTime_usec,endTime_usec`` and one gesture per line, with
classes 1..11 (``stream.classes.GESTURE_CLASSES`` order) and times in microseconds of the
recording's clock. In Python, labels are 0-based ``GestureSegment`` values.
"""

from __future__ import annotations

import os
from pathlib import Path

from stream.classes import GESTURE_CLASSES
from stream.events import EventFormatError, GestureSegment

LABELS_HEADER = "class,startTime_usec,endTime_usec"
NUM_CLASSES = len(GESTURE_CLASSES)


def read_gesture_labels(path: str | os.PathLike) -> list[GestureSegment]:
    """Read a ``userXX_<lighting>_labels.csv``: classes 1..11 in the file -> 0-based labels, times in µs."""
    text = Path(path).read_text(encoding="ascii", errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    if not lines or lines[0].replace(" ", "") != LABELS_HEADER:
        raise EventFormatError(f"{path}: first line must be {LABELS_HEADER!r}")
    segments = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split(",")
        try:
            label, start_us, end_us = (int(field) for field in fields)
        except ValueError:
            raise EventFormatError(f"{path}, line {number}: expected three integers, got {line!r}") from None
        if not 1 <= label <= NUM_CLASSES:
            raise EventFormatError(f"{path}, line {number}: class must be 1..{NUM_CLASSES}, got {label}")
        if not 0 <= start_us <= end_us:
            raise EventFormatError(f"{path}, line {number}: need 0 <= start <= end, got {start_us}, {end_us}")
        segments.append(GestureSegment(label - 1, start_us, end_us))
    return segments


def write_gesture_labels(path: str | os.PathLike, segments: list[GestureSegment]) -> None:
    """Write segments (0-based labels, µs) as a DVS128 Gesture labels CSV (1-based classes)."""
    rows = [LABELS_HEADER]
    for segment in segments:
        label, start_us, end_us = (int(value) for value in segment)
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"segment label must be 0..{NUM_CLASSES - 1}, got {label}")
        if not 0 <= start_us <= end_us:
            raise ValueError(f"segment needs 0 <= start_us <= end_us, got {start_us}, {end_us}")
        rows.append(f"{label + 1},{start_us},{end_us}")
    Path(path).write_text("\n".join(rows) + "\n", encoding="ascii")


def read_trials(path: str | os.PathLike) -> list[str]:
    """Read ``trials_to_train.txt`` / ``trials_to_test.txt``: one .aedat file name per line."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_trials(path: str | os.PathLike, names: list[str]) -> None:
    """Write one file name per line (names must be non-empty, single-line)."""
    for name in names:
        if not name.strip() or "\n" in name or "\r" in name:
            raise ValueError(f"trial name must be a non-empty single line, got {name!r}")
    Path(path).write_text("".join(f"{name.strip()}\n" for name in names), encoding="utf-8")
