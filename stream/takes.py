"""Guided recording of labelled takes: "perform <class> in 3, 2, 1", then a few seconds recorded.

``TakePlan`` says what to record: the classes (the 11 gestures or your own names), takes per class,
the take length, the pause between takes and the countdown; takes go round the classes (every
class once, then again), and a take-wise split sends every ``test_every``-th take of a class to the
test split (with two takes per class: the first trains, the second tests).

``TakeFolder`` is the session on disk: one AEDAT4 file per take (``take_NNN_<class>.aedat4``) and
``labels.csv`` in the folder format (``file,class,start_us,end_us,split``, read by
``training.data``'s ``folder:`` spec). The CSV is rewritten atomically after every take, deletion
or boundary change, so closing the app mid-session loses nothing recorded. Takes can be deleted,
redone (recorded again under the same number) and have their boundaries moved.

``TakeRecorder`` is the session's clock, fed with event chunks and the stream time (µs) by whoever
reads the camera (``record_takes`` for the command line, the GUI for its window): it announces the
countdown, tells a directable source when the gesture is due (``on_cue``: the simulator performs it),
writes each take's events from ``MARGIN_US`` before the cue to ``MARGIN_US`` after the take, and
labels ``[cue, cue + take length]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from stream.classes import GESTURE_CLASSES
from stream.events import SensorSize
from stream.formats.labels import LabelRow, read_folder_labels, write_folder_labels

LABELS_FILE = "labels.csv"
MARGIN_US = 500_000  # events kept before the cue and after the take, for windows near the edges


@dataclass(frozen=True)
class TakePlan:
    """What a guided session records (seconds for the durations)."""

    classes: tuple[str, ...] = GESTURE_CLASSES
    takes_per_class: int = 2
    take_s: float = 3.0
    pause_s: float = 2.0
    countdown_s: int = 3
    test_every: int = 2  # every n-th take of a class goes to the test split (0: none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct names, got {list(self.classes)}")
        for name in self.classes:
            if not name.strip() or "," in name or "\n" in name or name.isdigit():
                raise ValueError(f"a class name must be non-empty text without commas (not a number), got {name!r}")
        if self.takes_per_class < 1 or self.countdown_s < 0 or self.test_every < 0:
            raise ValueError("need takes_per_class >= 1, countdown_s >= 0 and test_every >= 0")
        if not 0.5 <= self.take_s <= 60 or not 0 <= self.pause_s <= 60:
            raise ValueError(f"take_s must be 0.5..60 s and pause_s 0..60 s, got {self.take_s}, {self.pause_s}")

    def takes(self) -> list[tuple[str, str]]:
        """``(class, split)`` of every take, in recording order."""
        order = []
        for number in range(1, self.takes_per_class + 1):
            split = "test" if self.test_every and number % self.test_every == 0 else "train"
            order += [(name, split) for name in self.classes]
        return order


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "class"


class Take(NamedTuple):
    """A take on disk: its number, file name and label row."""

    number: int
    row: LabelRow


class TakeFolder:
    """A session's folder: takes (AEDAT4 files) and ``labels.csv``. Opening an existing folder
    continues it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.labels_path = self.folder / LABELS_FILE
        self.rows: list[LabelRow] = read_folder_labels(self.labels_path) if self.labels_path.is_file() else []

    def takes(self) -> list[Take]:
        return [Take(_number(row.file), row) for row in self.rows]

    def next_number(self) -> int:
        return max((number for number, _ in self.takes()), default=0) + 1

    def path_of(self, number: int, name: str) -> Path:
        return self.folder / f"take_{number:03d}_{_slug(name)}.aedat4"

    def add(self, row: LabelRow) -> None:
        """Record a finished take (replacing a redone one of the same file)."""
        self.rows = [old for old in self.rows if old.file != row.file] + [row]
        self.rows.sort(key=lambda r: _number(r.file))
        self._save()

    def delete(self, number: int) -> None:
        """Delete take ``number``: its row and its file."""
        for row in [row for row in self.rows if _number(row.file) == number]:
            (self.folder / row.file).unlink(missing_ok=True)
        self.rows = [row for row in self.rows if _number(row.file) != number]
        self._save()

    def move(self, number: int, start_us: int, end_us: int) -> None:
        """Move take ``number``'s labelled segment to ``[start_us, end_us)`` (the file's clock, µs)."""
        if not 0 <= start_us < end_us:
            raise ValueError(f"need 0 <= start_us < end_us, got {start_us}, {end_us}")
        found = [row for row in self.rows if _number(row.file) == number]
        if not found:
            raise ValueError(f"no take {number} in {self.folder}")
        self.add(found[0]._replace(start_us=int(start_us), end_us=int(end_us)))

    def _save(self) -> None:
        write_folder_labels(self.labels_path, self.rows)


def _number(file: str) -> int:
    match = re.match(r"take_(\d+)_", file)
    return int(match.group(1)) if match else 0


@dataclass
class TakeRecorder:
    """The state machine of a guided session (see the module docstring); feed it with ``feed``.

    Args:
        plan: what to record.
        folder: where the takes go.
        sensor_size: the camera's pixels.
        on_prompt: called with the text to show ("perform wave in 3", "recording wave", "pause", "done").
        on_cue: called with (class, start_us, end_us) when a take is scheduled (a directable source
            performs it).
        takes: the ``(class, split)`` to record (default: the plan's); ``redo`` records one again.
    """

    plan: TakePlan
    folder: TakeFolder
    sensor_size: SensorSize
    on_prompt: Callable[[str], None] = print
    on_cue: Callable[[str, int, int], None] | None = None
    takes: list[tuple[str, str]] | None = None
    numbers: list[int] | None = None
    recorded: list[Take] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.takes = list(self.plan.takes() if self.takes is None else self.takes)
        first = self.folder.next_number()
        self.numbers = list(range(first, first + len(self.takes)) if self.numbers is None else self.numbers)
        self._index = 0
        self._cue_us: int | None = None
        self._writer = None
        self._announced: int | None = None
        self.done = not self.takes

    @property
    def progress(self) -> float:
        """Fraction of the session done (0..1), for a progress ring."""
        return self._index / max(1, len(self.takes))

    @property
    def current(self) -> tuple[str, str] | None:
        return self.takes[self._index] if not self.done else None

    def feed(self, events: np.ndarray, time_us: int) -> None:
        """The camera's next chunk and the stream time it reached (µs): prompts, cues, writing."""
        if self.done:
            return
        name, split = self.takes[self._index]
        if self._cue_us is None:  # schedule this take: the countdown starts now
            self._cue_us = int(time_us + self.plan.countdown_s * 1e6)
            if self.on_cue is not None:
                self.on_cue(name, self._cue_us, self._cue_us + int(self.plan.take_s * 1e6))
        cue, end = self._cue_us, self._cue_us + int(self.plan.take_s * 1e6)
        if time_us < cue:
            left = int(np.ceil((cue - time_us) / 1e6))
            if left != self._announced:
                self._announced = left
                self.on_prompt(f"perform {name} in {left}")
        elif self._announced != 0:
            self._announced = 0
            self.on_prompt(f"recording {name}")
        if self._writer is None and time_us >= cue - MARGIN_US:
            from stream.formats.aedat4 import Aedat4Writer

            path = self.folder.path_of(self.numbers[self._index], name)
            self._writer = Aedat4Writer(path, self.sensor_size).open()
        if self._writer is not None and len(events):
            self._writer.write(events[events["t"] >= cue - MARGIN_US])
        if time_us >= end + MARGIN_US:
            self._finish(name, split, cue, end)

    def _finish(self, name: str, split: str, cue: int, end: int) -> None:
        writer, self._writer = self._writer, None
        path = self.folder.path_of(self.numbers[self._index], name)
        if writer is not None:
            writer.close()
        if writer is None or writer.events_written == 0:
            self.on_prompt(f"no events in the take of {name}: nothing saved")
            path.unlink(missing_ok=True)
        else:
            row = LabelRow(path.name, name, cue, end, split)
            self.folder.add(row)
            self.recorded.append(Take(self.numbers[self._index], row))
        self._index += 1
        self._cue_us = None
        self._announced = None
        if self._index >= len(self.takes):
            self.done = True
            self.on_prompt("done")
        elif self.plan.pause_s > 0:
            self.on_prompt("pause")

    def close(self) -> None:
        """Stop: a take being written is closed and dropped (not labelled)."""
        if self._writer is not None:
            path = self._writer.path
            self._writer.close()
            self._writer = None
            Path(path).unlink(missing_ok=True)
        self.done = True


def record_takes(source: object, recorder: TakeRecorder) -> list[Take]:
    """Run a guided session on a source (``stream.sources``) until it is done or the source ends;
    returns the takes recorded. The stream time is the source's ``clock_us()`` when it has one, else
    the newest event's time; the pause between takes lets the source run without recording."""
    clock = getattr(source, "clock_us", None)
    pause_us = int(recorder.plan.pause_s * 1e6)
    time_us, resume_us, taken = 0, 0, 0
    for chunk in source:
        if len(chunk):
            time_us = max(time_us, int(chunk["t"][-1]))
        if clock is not None and clock() is not None:
            time_us = max(time_us, int(clock()))
        if time_us < resume_us:
            continue
        recorder.feed(chunk, time_us)
        if recorder.done:
            break
        if recorder.progress > taken:  # a take ended: pause
            taken = recorder.progress
            resume_us = time_us + pause_us
    return recorder.recorded
