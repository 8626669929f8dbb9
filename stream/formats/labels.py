"""Label files: DVS128 Gesture's side files (``userNN_<lighting>_labels.csv``,
``trials_to_{train,test}.txt``) and the folder format of your own recordings
(``file,class,start_us,end_us,split``).

The labels CSV has the header ``class,startTime_usec,endTime_usec`` and one gesture per line, with
classes 1..11 (``stream.classes.GESTURE_CLASSES`` order) and times in microseconds of the
recording's clock. In Python, labels are 0-based ``GestureSegment`` values.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple

from stream.atomic import write_atomically
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


# --- the folder format: your own labelled recordings ------------------------------------------

FOLDER_COLUMNS = ("file", "class", "start_us", "end_us", "split")


class LabelRow(NamedTuple):
    """One labelled segment of the folder format: ``file`` relative to the CSV's folder, ``class``
    (a name or a 0-based index of ``GESTURE_CLASSES``, as text), times in the file's clock (µs),
    ``split`` ("train", "test" or "" for the hash rule of ``training.data``)."""

    file: str
    label: str
    start_us: int
    end_us: int
    split: str = ""


def read_folder_labels(path: str | os.PathLike) -> list[LabelRow]:
    """Read a folder-format CSV (``file,class,start_us,end_us[,split]``); ValueError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"folder data: {path} is not a file")
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = set(FOLDER_COLUMNS[:4]) - set(columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)} (need file,class,start_us,end_us[,split])")
        rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    labels = []
    for number, row in enumerate(rows, start=2):
        where = f"{path}, line {number}"
        try:
            start_us, end_us = int(row["start_us"]), int(row["end_us"])
        except ValueError:
            raise ValueError(f"{where}: start_us and end_us must be integers (µs), got {row['start_us']!r}, "
                             f"{row['end_us']!r}") from None  # fmt: skip
        if not 0 <= start_us < end_us:
            raise ValueError(f"{where}: need 0 <= start_us < end_us, got {start_us}, {end_us}")
        split = row.get("split", "")
        if split not in ("", "train", "test"):
            raise ValueError(f"{where}: split must be train or test, got {split!r}")
        labels.append(LabelRow(row["file"], row["class"], start_us, end_us, split))
    return labels


def write_folder_labels(path: str | os.PathLike, rows: list[LabelRow]) -> None:
    """Write a folder-format CSV atomically (readers see the old file or the whole new one)."""
    lines = [",".join(FOLDER_COLUMNS)]
    for row in rows:
        if "," in row.file or "," in row.label or "\n" in row.file or "\n" in row.label:
            raise ValueError(f"file and class must not contain commas or line breaks: {row}")
        lines.append(f"{row.file},{row.label},{int(row.start_us)},{int(row.end_us)},{row.split}")
    write_atomically(path, ("\n".join(lines) + "\n").encode("utf-8"))


def find_labels(path: str | os.PathLike) -> Path | None:
    """The labels CSV that belongs to an event file by name: ``<name>_labels.csv`` beside it (DVS128
    Gesture's convention), else None."""
    path = Path(path)
    candidate = path.with_name(path.name.rsplit(".", 1)[0] + "_labels.csv")
    return candidate if candidate.is_file() else None


def labels_for(path: str | os.PathLike, labels_csv: str | os.PathLike, classes: tuple[str, ...] = GESTURE_CLASSES,
               ) -> list[GestureSegment]:  # fmt: skip
    """The labelled segments of the event file ``path`` in a labels CSV: DVS128 Gesture's layout
    (``class,startTime_usec,endTime_usec``, classes 1..11), or the folder format (its rows for this
    file; a class is a name of ``classes`` or a 0-based index)."""
    labels_csv = Path(labels_csv)
    header = labels_csv.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].replace(" ", "").strip()
    if header == LABELS_HEADER:
        return read_gesture_labels(labels_csv)
    name = Path(path).resolve()
    segments = []
    for row in read_folder_labels(labels_csv):
        if (labels_csv.parent / row.file).resolve() != name:
            continue
        if row.label.isdigit() and int(row.label) < len(classes):
            label = int(row.label)
        elif row.label in classes:
            label = classes.index(row.label)
        else:
            raise ValueError(f"{labels_csv}: class {row.label!r} is not one of the model's classes {list(classes)}")
        segments.append(GestureSegment(label, row.start_us, row.end_us))
    return sorted(segments, key=lambda segment: segment.start_us)
