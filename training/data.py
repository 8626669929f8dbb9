"""Training and evaluation data: labelled event recordings -> fixed-length binned windows.

Data specs (``--data SPEC``):

* ``sim:DIR`` - a data set written by ``python -m stream simulate`` (DVS128 Gesture layout);
  ``sim:N`` - N simulated samples, generated once into the cache directory
  (``sim/n<N>-seed<S>-128x128-<simulator source hash>/``, regenerated when the simulator changes).
* ``dvsgesture:DIR`` - the original DVS128 Gesture files: ``userNN_<lighting>.aedat`` (AEDAT 3.1),
  ``userNN_<lighting>_labels.csv``, ``trials_to_train.txt`` / ``trials_to_test.txt``.
* ``tonic:DIR`` - tonic's preprocessed layout ``ibmGesture{Train,Test}/userNN_<lighting>/<label>.npy``
  (one gesture per file, label 0-based in the file name).
* ``folder:CSV`` - your own recordings: a CSV with columns ``file,class,start_us,end_us`` and an
  optional ``split`` (``train``/``test``); ``file`` is relative to the CSV's folder (any format
  ``stream.formats.read_events`` reads, usually AEDAT4), ``class`` a name or a 0-based index into
  ``stream.classes.GESTURE_CLASSES``. Without a ``split`` column a row goes to the test split when
  ``sha256(file, start_us)`` falls in the last ``FOLDER_TEST_PERCENT`` percent (deterministic).

Splits: the trials files (sim, dvsgesture), the folder name (tonic), the ``split`` column or the
hash (folder).

Orientation. The canonical events of this project have their origin at the TOP-LEFT (y down), like
every iniVation camera through dv-processing and AEDAT4, and so are DVS128 Gesture's AEDAT 3.1
files: the AEDAT 3.1 format documentation puts (0, 0) in the lower-left corner, but the data set was
recorded with cAER/libcaer, whose DVS128 driver inverts y "to convert to CG format" (``dvs128.c``), so
its files hold top-left addresses, and tonic's ``.npy`` samples were cut from them. A classifier
trained on the real data set (``training.reference``, SynSense's weights) confirms it: it recognises
simulated hand waves laid out top-left and fails on the y-flipped or mirrored layout. The simulator's
data-set writer stores top-left as the real files do. ``ORIENTATION`` records the layout of each
kind; every source is turned to top-left (``y -> height-1-y`` where a kind says bottom-left) BEFORE
binning, so the model learns upright people, and the checkpoint stores ``flip_x = flip_y = False``:
a top-left camera (DVXplorer, DAVIS via dv-processing, the live simulator) needs no flip to see what
the model was trained on.

Windows. A sample is one window of ``WindowSpec.bins x bin_us`` cut from a labelled segment and
binned by ``stream.binning.bin_window`` with the ``SensorMapping`` and normalisation stored in the
checkpoint - the same kernel the live pipeline uses. Windows lie entirely inside their segment
(segments shorter than a window are skipped and counted). Evaluation takes ``eval_windows``
evenly spaced, fixed positions per segment. Training draws ``train_windows`` random positions per
segment once (seeded; a pool cached on disk) and each epoch picks one of them per segment.

Onset windows (training pool only, causal models: ``WindowPlan.onsets``). A stream meets a gesture
at its onset, after standing still, and a causal model must decide from its first steps. An onset
window begins 1 to T-1 steps before its segment (in the idle time, or the end of the gesture
before), so that its last steps show the gesture's first moments; its ``lead_steps``, the steps that
end before the onset, carry no label (``WindowDataset(step_labels=True)`` gives them -100).

Time stretch (training pool only): a pool window may cover ``s * window_us`` of the recording,
``s`` log-uniform in ``[1 / stretch, stretch]`` (``stretch`` 2: gestures 0.5 to 2 times as fast), its
timestamps rescaled by ``1/s`` before binning. Time is never reversed (it would swap the clockwise
and counter-clockwise classes).

Noise filters (``stream.binning.EventFilter``, the checkpoint's ``input.filters``) run over each
recording's events in time order before its windows are binned, exactly as the live binner runs
them over the stream.

Disk use. ``sim:N`` writes its recordings once under ``<cache>/sim/`` (about 1.2 MB per gesture:
``sim:1200`` about 1.5 GB) and says so with the size and the path; ``spikeformer-live cache``
lists what the cache holds and ``spikeformer-live cache --clear`` removes the simulated data sets
and the binned windows (both are made again when needed).

Cache. Binned windows are stored as raw counts (uint8/uint16) in ``.npz`` files under
``<cache>/windows/``, one per recording and role, named by a SHA-256 of everything that changes them:
the cache format version, the source file's path, size and mtime, its orientation, the segments,
the window positions (role, count, seed, stretch), the ``WindowSpec`` and the mapping. Normalisation
is applied when a window is read (it does not change the cache). Files are read with
``allow_pickle=False`` and written atomically.

Augmentation (training only, seeded per epoch and sample): ``training.augment`` (left-right flip with
the class swapped through ``MIRRORED_CLASS`` for the DVS128 Gesture classes, zoom, rotation, shift,
moving occluders, event drop-out, noise and hot pixels), and the pool's time stretch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from stream.atomic import write_atomically
from stream.binning import (
    NOISE_ESTIMATE,
    EventFilter,
    SensorMapping,
    WindowSpec,
    apply_normalisation,
    bin_window,
    check_filters,
    check_normalisation,
)
from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.events import GestureSegment, SensorSize, check_events
from stream.formats.labels import read_folder_labels
from training.augment import AugmentConfig, augment_window

SOURCE_KINDS = ("sim", "dvsgesture", "tonic", "folder")
ORIENTATION = {"dvsgesture": "top-left", "tonic": "top-left", "sim": "top-left", "folder": "top-left"}
SPLITS = ("train", "test")
CACHE_FORMAT_VERSION = 2  # 2: segments clipped to the recording's span before the noise filters
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "spikeformer-live"
WINDOW_ARRAYS = ("frames", "labels", "segments", "starts_us", "stretches", "skipped", "lead_steps")
IGNORED_STEP = -100  # the step label of a step before its gesture's onset (torch's cross-entropy ignore_index)
DEFAULT_NORMALISATION: dict[str, Any] = {"kind": "log1p"}
FOLDER_TEST_PERCENT = 20
SIM_SENSOR = SensorSize(128, 128)
MAX_SIM_SAMPLES = 100_000
SIM_BYTES_PER_GESTURE = 1_250_000  # AEDAT 3.1 bytes of one simulated gesture with its idle time (sim:1200: ~1.5 GB)
WHOLE_FILE_END_US = 1 << 62  # a segment end meaning "to the end of the recording"


# --- data specs and recordings ------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: ``kind`` (one of ``SOURCE_KINDS``) and its location text."""

    kind: str
    location: str

    @classmethod
    def parse(cls, text: str) -> "DataSpec":
        """Parse ``KIND:LOCATION`` (``sim:DIR``, ``sim:N``, ``dvsgesture:DIR``, ``tonic:DIR``, ``folder:CSV``)."""
        kind, sep, location = str(text).partition(":")
        if not sep or kind not in SOURCE_KINDS or not location:
            raise ValueError(
                f"data spec must be KIND:LOCATION with KIND one of {', '.join(SOURCE_KINDS)} "
                f"(e.g. sim:1200, dvsgesture:DIR, tonic:DIR, folder:labels.csv), got {text!r}"
            )
        return cls(kind, location)

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}"


@dataclass(frozen=True)
class Recording:
    """One labelled event file: its source kind (sets the orientation), path, split and segments
    (0-based labels, times in microseconds; ``end_us == WHOLE_FILE_END_US`` means "to the end")."""

    kind: str
    path: Path
    split: str
    segments: tuple[GestureSegment, ...]

    @property
    def orientation(self) -> str:
        return ORIENTATION[self.kind]


@dataclass(frozen=True)
class DataSource:
    """Recordings of a data spec (or several joined by ``+``) and the class names their labels index."""

    spec: str
    recordings: tuple[Recording, ...]
    classes: tuple[str, ...]

    def split(self, name: str) -> list[Recording]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return [recording for recording in self.recordings if recording.split == name]


def open_source(spec: DataSpec | str, *, cache_dir: Path | str | None = None, sim_seed: int = 0) -> DataSource:
    """List the recordings of a data spec (``sim:N`` generates its data set into the cache first).
    ``SPEC+SPEC+...`` joins several sources of the same classes (e.g. two simulated domains)."""
    if isinstance(spec, str) and "+" in spec:
        parts = [open_source(part, cache_dir=cache_dir, sim_seed=sim_seed) for part in spec.split("+")]
        if any(part.classes != parts[0].classes for part in parts):
            raise ValueError(f"data spec {spec}: the joined sources have different classes")
        return DataSource(spec, tuple(r for part in parts for r in part.recordings), parts[0].classes)
    spec = DataSpec.parse(spec) if isinstance(spec, str) else spec
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    if spec.kind == "sim":
        directory = (
            simulated_dataset(int(spec.location), cache_dir, seed=sim_seed)
            if spec.location.isdigit()
            else Path(spec.location)
        )
        recordings = _gesture_dir_recordings(directory, "sim")
        classes = GESTURE_CLASSES
    elif spec.kind == "dvsgesture":
        recordings = _gesture_dir_recordings(Path(spec.location), "dvsgesture")
        classes = GESTURE_CLASSES
    elif spec.kind == "tonic":
        recordings = _tonic_recordings(Path(spec.location))
        classes = GESTURE_CLASSES
    else:
        recordings, classes = _folder_recordings(Path(spec.location))
    if not recordings:
        raise ValueError(f"data spec {spec}: found no labelled recordings")
    return DataSource(str(spec), tuple(recordings), tuple(classes))


def simulated_dataset(samples: int, cache_dir: Path, *, seed: int = 0, sensor_size: SensorSize = SIM_SENSOR) -> Path:
    """The directory of a simulated data set of ``samples`` gestures; written once (atomically)."""
    if not 1 <= samples <= MAX_SIM_SAMPLES:
        raise ValueError(f"sim:N needs 1 <= N <= {MAX_SIM_SAMPLES}, got {samples}")
    from stream.sim.dataset import write_dataset  # the simulator is only needed here

    directory = Path(cache_dir) / "sim" / f"n{samples}-seed{seed}-{sensor_size}-{_simulator_fingerprint()}"
    if (directory / "trials_to_train.txt").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    print(f"sim:{samples}: simulating {samples} gestures into {directory} (once, then cached; "
          f"about {samples * SIM_BYTES_PER_GESTURE / 1e9:.2g} GB)", file=sys.stderr, flush=True)  # fmt: skip
    staging = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp-", dir=directory.parent))
    write_dataset(staging, samples=samples, seed=seed, sensor_size=sensor_size, workers=os.cpu_count() or 1)
    try:
        os.replace(staging, directory)
    except OSError:  # another process finished first
        if not (directory / "trials_to_train.txt").is_file():
            raise
    print(f"sim:{samples}: {_size_text(directory_size(directory))} written to {directory}; "
          f"the cache {Path(cache_dir)} holds {_size_text(directory_size(Path(cache_dir)))} "
          "('spikeformer-live cache --clear' removes it)", file=sys.stderr, flush=True)  # fmt: skip
    return directory


def directory_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(entry.stat().st_size for entry in Path(path).rglob("*") if entry.is_file()) if Path(path).exists() else 0


def _size_text(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


CACHE_PARTS = ("sim", "windows")  # what ``clear_cache`` removes (the ONNX exports beside them stay)


def clear_cache(cache_dir: Path | str | None = None) -> int:
    """Remove the simulated data sets and the binned windows from the cache; the bytes freed."""
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    freed = 0
    for part in CACHE_PARTS:
        freed += directory_size(cache_dir / part)
        shutil.rmtree(cache_dir / part, ignore_errors=True)
    return freed


def cache_main(argv: Sequence[str] | None = None) -> int:
    """``spikeformer-live cache [--cache DIR] [--clear]``: what the data cache holds, or clear it."""
    from stream.stage import ArgumentParser

    parser = ArgumentParser(prog="spikeformer-live cache", description="The data cache: simulated data sets and binned windows.")
    parser.add_argument("--cache", default=None, help=f"cache directory (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--clear", action="store_true", help="remove the simulated data sets and the binned windows")
    args = parser.parse_args(argv)
    cache_dir = Path(args.cache) if args.cache is not None else DEFAULT_CACHE_DIR
    if args.clear:
        print(f"removed {_size_text(clear_cache(cache_dir))} from {cache_dir}")
        return 0
    for part in CACHE_PARTS:
        entries = sorted((cache_dir / part).iterdir()) if (cache_dir / part).is_dir() else []
        print(f"{cache_dir / part}: {_size_text(directory_size(cache_dir / part))} in {len(entries)} entries")
    print("--clear removes them (they are made again when needed)")
    return 0


def _simulator_fingerprint() -> str:
    """First 12 hex digits of the SHA-256 of the simulator's source: a changed simulator gets a new data set."""
    import stream.sim

    digest = hashlib.sha256()
    for path in sorted(Path(stream.sim.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _gesture_dir_recordings(directory: Path, kind: str) -> list[Recording]:
    """Recordings of a DVS128-Gesture-layout directory (trials lists + labels CSVs)."""
    from stream.formats.labels import read_gesture_labels, read_trials

    if not directory.is_dir():
        raise ValueError(f"{kind} data: {directory} is not a directory")
    recordings = []
    for split in SPLITS:
        trials = directory / f"trials_to_{split}.txt"
        if not trials.is_file():
            raise ValueError(f"{kind} data: {trials} is missing (DVS128 Gesture layout expected)")
        for name in read_trials(trials):
            path = directory / name
            labels = path.with_name(path.stem + "_labels.csv")
            if not path.is_file() or not labels.is_file():
                raise ValueError(f"{kind} data: {trials.name} lists {name} but {path} or {labels.name} is missing")
            recordings.append(Recording(kind, path, split, tuple(read_gesture_labels(labels))))
    return recordings


def _tonic_recordings(directory: Path) -> list[Recording]:
    """Recordings of tonic's preprocessed DVSGesture layout: one gesture (whole file) per .npy."""
    recordings = []
    for split, folder in (("train", "ibmGestureTrain"), ("test", "ibmGestureTest")):
        root = directory / folder
        if not root.is_dir():
            raise ValueError(f"tonic data: {root} is missing (expected ibmGestureTrain/ and ibmGestureTest/)")
        for path in sorted(root.glob("*/*.npy")):
            if not path.stem.isdigit() or not 0 <= int(path.stem) < len(GESTURE_CLASSES):
                raise ValueError(f"tonic data: {path} is not named <label>.npy with label 0..{len(GESTURE_CLASSES) - 1}")
            segment = GestureSegment(int(path.stem), 0, WHOLE_FILE_END_US)
            recordings.append(Recording("tonic", path, split, (segment,)))
    return recordings


def _folder_recordings(csv_path: Path) -> tuple[list[Recording], tuple[str, ...]]:
    """Recordings and classes of a ``folder:CSV`` spec (see the module docstring)."""
    rows = read_folder_labels(csv_path)
    classes, to_index = _folder_classes(csv_path, [row.label for row in rows])
    grouped: dict[tuple[Path, str], list[GestureSegment]] = {}
    for number, row in enumerate(rows, start=2):
        path = (csv_path.parent / row.file).resolve()
        if not row.file or not path.is_file():
            raise ValueError(f"{csv_path}, line {number}: file {row.file!r} not found next to the CSV")
        split = row.split
        if not split:
            digest = hashlib.sha256(f"{row.file}:{row.start_us}".encode()).digest()
            split = "test" if int.from_bytes(digest[:4], "little") % 100 >= 100 - FOLDER_TEST_PERCENT else "train"
        grouped.setdefault((path, split), []).append(GestureSegment(to_index[row.label], row.start_us, row.end_us))
    recordings = [Recording("folder", path, split, tuple(segments)) for (path, split), segments in grouped.items()]
    return recordings, classes


def _folder_classes(csv_path: Path, texts: list[str]) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class list and text -> index: indices and DVS128 Gesture names use ``GESTURE_CLASSES``;
    other names form their own list in order of first appearance."""
    if not texts:
        raise ValueError(f"{csv_path}: no rows")
    lower = {name.lower(): index for index, name in enumerate(GESTURE_CLASSES)}
    if all(text.isdigit() or text.lower() in lower for text in texts):
        mapping = {}
        for text in texts:
            index = int(text) if text.isdigit() else lower[text.lower()]
            if not 0 <= index < len(GESTURE_CLASSES):
                raise ValueError(f"{csv_path}: class index {index} is not in 0..{len(GESTURE_CLASSES) - 1}")
            mapping[text] = index
        return GESTURE_CLASSES, mapping
    if any(text.isdigit() for text in texts) or any(not text for text in texts):
        raise ValueError(f"{csv_path}: classes mix indices and own names (or are empty); use one or the other")
    own = tuple(dict.fromkeys(texts))
    return own, {name: index for index, name in enumerate(own)}


# --- events of a recording -----------------------------------------------------------------------


def read_recording(recording: Recording) -> tuple[np.ndarray, SensorSize]:
    """The recording's events, time-ordered and in the canonical top-left orientation."""
    if recording.kind in ("sim", "dvsgesture"):
        from stream.formats.aedat31 import read_aedat31

        events, sensor_size = read_aedat31(recording.path)
    elif recording.kind == "tonic":
        from stream.formats.tonic_npy import read_tonic_npy

        events, sensor_size = read_tonic_npy(recording.path)
    else:
        from stream.formats import read_events

        events, sensor_size = read_events(recording.path)
    check_events(events)
    if len(events) > 1 and np.any(np.diff(events["t"]) < 0):
        events = events[np.argsort(events["t"], kind="stable")]
    return to_top_left(events, sensor_size, recording.orientation), sensor_size


def to_top_left(events: np.ndarray, sensor_size: SensorSize, orientation: str) -> np.ndarray:
    """Events with the origin moved to the top-left: ``y -> height-1-y`` for ``"bottom-left"``
    (a copy), unchanged for ``"top-left"``."""
    if orientation == "top-left":
        return events
    if orientation != "bottom-left":
        raise ValueError(f"orientation must be 'top-left' or 'bottom-left', got {orientation!r}")
    flipped = events.copy()
    flipped["y"] = sensor_size.height - 1 - events["y"]
    return flipped


# --- window positions ----------------------------------------------------------------------------


def eval_window_starts(segment: GestureSegment, window_us: int, count: int) -> np.ndarray:
    """``count`` fixed, evenly spaced window starts (µs) inside the segment (empty if it is shorter
    than a window; one centred window when ``count == 1``)."""
    span = segment.end_us - segment.start_us - window_us
    if span < 0 or count < 1:
        return np.zeros(0, dtype=np.int64)
    if count == 1:
        return np.array([segment.start_us + span // 2], dtype=np.int64)
    return segment.start_us + np.round(np.linspace(0, span, count)).astype(np.int64)


def train_window_plan(
    segment: GestureSegment, window_us: int, count: int, rng: np.random.Generator, stretch: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random windows inside the segment: starts (µs) and time stretches ``s`` (the window
    covers ``s * window_us``). Stretches are capped so that the window fits; empty if it cannot."""
    length = segment.end_us - segment.start_us
    if length < window_us or count < 1:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    stretches = np.exp(rng.uniform(-np.log(stretch), np.log(stretch), count)) if stretch > 1 else np.ones(count)
    stretches = np.minimum(stretches, length / window_us)
    covered = np.ceil(stretches * window_us).astype(np.int64)
    covered = np.minimum(covered, length)
    starts = segment.start_us + np.floor(rng.random(count) * (length - covered + 1)).astype(np.int64)
    return starts, stretches


def onset_window_plan(
    segment: GestureSegment, window: WindowSpec, count: int, rng: np.random.Generator, stretch: float = 1.0,
    earliest_us: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` random windows straddling the segment's onset: starts (µs), time stretches ``s`` and
    lead steps. Each begins 1 to ``bins - 1`` of its steps (``s * bin_us`` µs each) before the onset,
    not before ``earliest_us``, and ends inside the segment; ``lead_steps`` is the number of its
    steps that end at or before the onset. Windows that cannot fit are left out."""
    length = segment.end_us - segment.start_us
    if window.bins < 2 or count < 1 or length < 1:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0, dtype=np.float64), empty
    stretches = np.exp(rng.uniform(-np.log(stretch), np.log(stretch), count)) if stretch > 1 else np.ones(count)
    wanted = rng.integers(1, window.bins, count) + rng.random(count)  # steps before the onset, a fraction into one
    step_us = stretches * window.bin_us
    room = segment.start_us - earliest_us  # idle time before the onset that the recording has
    lead_us = np.floor(np.minimum(wanted * step_us, room)).astype(np.int64)
    starts = segment.start_us - lead_us
    # A stretched window's times are scaled by 1/s about its start before binning (``bin_windows``).
    lead_steps = (np.floor(lead_us / stretches).astype(np.int64) // window.bin_us).astype(np.int64)
    fits = (lead_steps >= 1) & (starts + np.ceil(stretches * window.window_us) <= segment.end_us)
    return starts[fits], stretches[fits], lead_steps[fits]


def bin_windows(
    events: np.ndarray,
    mapping: SensorMapping,
    window: WindowSpec,
    starts_us: np.ndarray,
    stretches: np.ndarray | None = None,
) -> np.ndarray:
    """Count frames ``[N, T, 2, H, W]`` float32 of windows starting at ``starts_us`` (time-ordered
    events). With stretch ``s`` a window covers ``[start, start + s * window_us)`` and its event times
    are scaled by ``1/s`` about ``start`` before binning. One ``bin_window`` call per window."""
    times = events["t"]
    shape = (len(starts_us), window.bins, 2, mapping.input_size.height, mapping.input_size.width)
    frames = np.zeros(shape, dtype=np.float32)
    for index, start in enumerate(np.asarray(starts_us, dtype=np.int64).tolist()):
        stretch = 1.0 if stretches is None else float(stretches[index])
        end = start + int(np.ceil(stretch * window.window_us))
        low, high = np.searchsorted(times, [start, end], side="left")
        chunk = events[low:high]
        if stretch != 1.0:
            chunk = chunk.copy()
            chunk["t"] = start + np.floor((chunk["t"] - start) / stretch).astype(np.int64)
        bin_window(chunk, mapping, window, start, out=frames[index])
    return frames


# --- binned window sets and their cache ----------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """How windows are cut: ``role`` "train" (``count`` random positions per segment, seeded, with
    time stretch, and ``onsets`` more that straddle the segment's onset) or "eval" (``count`` fixed,
    evenly spaced positions)."""

    role: str
    count: int
    seed: int = 0
    stretch: float = 1.0
    onsets: int = 0

    def __post_init__(self) -> None:
        if self.role not in ("train", "eval"):
            raise ValueError(f"window plan role must be 'train' or 'eval', got {self.role!r}")
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"windows per segment must be a positive integer, got {self.count!r}")
        if not 1.0 <= self.stretch <= 4.0:
            raise ValueError(f"stretch must be in [1, 4] (windows 1/stretch to stretch times as fast), got {self.stretch}")
        if not isinstance(self.onsets, int) or self.onsets < 0 or (self.onsets and self.role != "train"):
            raise ValueError(f"onset windows per segment must be an integer >= 0, for training only, got {self.onsets!r}")

    def to_dict(self) -> dict[str, Any]:
        if self.role == "eval":
            return {"role": "eval", "count": self.count}
        plan = {"role": "train", "count": self.count, "seed": self.seed, "stretch": self.stretch}
        return {**plan, "onsets": self.onsets} if self.onsets else plan  # the key of older caches without onsets


@dataclass
class WindowSet:
    """Binned windows of a split (counts, not normalised).

    ``frames`` ``[N, T, 2, H, W]`` (uint8, uint16 or float32 counts), ``labels`` ``[N]``, ``groups``
    ``[N]`` (the segment each window comes from, numbered across the set), ``starts_us`` ``[N]``,
    ``stretches`` ``[N]`` (a window covers ``[start, start + stretch * window_us)`` µs) and
    ``lead_steps`` ``[N]`` (an onset window's steps before its gesture; 0 for the others).
    """

    frames: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    starts_us: np.ndarray
    stretches: np.ndarray
    lead_steps: np.ndarray | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    skipped_segments: int = 0

    def __post_init__(self) -> None:
        if self.lead_steps is None:
            self.lead_steps = np.zeros(len(self.labels), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def segments(self) -> int:
        return int(self.groups.max()) + 1 if len(self.groups) else 0

    def relabelled(self, classes: Sequence[str], into: Sequence[str]) -> WindowSet:
        """These windows (labels index ``classes``) labelled by the class names of ``into``; windows of
        classes ``into`` does not have are dropped and the segments renumbered."""
        lookup = np.array([list(into).index(name) if name in into else -1 for name in classes], dtype=np.int64)
        labels = lookup[self.labels]
        keep = labels >= 0
        _, groups = np.unique(self.groups[keep], return_inverse=True)
        return WindowSet(frames=self.frames[keep], labels=labels[keep], groups=groups.astype(np.int64),
                         starts_us=self.starts_us[keep], stretches=self.stretches[keep],
                         lead_steps=self.lead_steps[keep], cache_hits=self.cache_hits,
                         cache_misses=self.cache_misses, skipped_segments=self.skipped_segments)  # fmt: skip


def cache_key(
    recording: Recording, plan: WindowPlan, window: WindowSpec, mapping_dict: dict[str, Any],
    filters: dict[str, Any] | None = None,
) -> str:
    """SHA-256 (hex) of everything that changes a recording's cached windows."""
    stat = recording.path.stat()
    description = {
        "version": CACHE_FORMAT_VERSION,
        "kind": recording.kind,
        "path": str(recording.path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "orientation": recording.orientation,
        "segments": [list(map(int, segment)) for segment in recording.segments],
        "plan": plan.to_dict(),
        "window": window.to_dict(),
        "mapping": mapping_dict,
        "filters": filters,
    }
    if filters is not None and filters.get("background_activity_adapt") is not None:
        description["noise_estimate"] = list(NOISE_ESTIMATE)  # how the adaptive window reads the noise
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _plan_recording(
    recording: Recording, span_us: tuple[int, int], plan: WindowPlan, window: WindowSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Window starts, stretches, labels, segment numbers (within the recording) and lead steps of a
    recording whose events span ``span_us`` (first, last + 1), segments clipped to it. Onset windows
    count only with a segment's ordinary ones (not for a segment shorter than a window), after them."""
    first, last = span_us
    starts, stretches, labels, segment_ids, leads = [], [], [], [], []
    skipped = 0
    for number, segment in enumerate(recording.segments):
        clipped = GestureSegment(segment.label, max(segment.start_us, first), min(segment.end_us, last))
        if plan.role == "eval":
            seg_starts = eval_window_starts(clipped, window.window_us, plan.count)
            seg_stretches, seg_leads = np.ones(len(seg_starts)), np.zeros(len(seg_starts), dtype=np.int64)
        else:
            digest = hashlib.sha256(f"{recording.path.name}:{number}".encode()).digest()
            rng = np.random.default_rng([plan.seed, int.from_bytes(digest[:8], "little")])
            seg_starts, seg_stretches = train_window_plan(clipped, window.window_us, plan.count, rng, plan.stretch)
            seg_leads = np.zeros(len(seg_starts), dtype=np.int64)
            if plan.onsets and len(seg_starts):
                onset = onset_window_plan(clipped, window, plan.onsets, rng, plan.stretch, earliest_us=first)
                seg_starts, seg_stretches, seg_leads = (np.concatenate(pair) for pair in
                                                        zip((seg_starts, seg_stretches, seg_leads), onset))  # fmt: skip
        if not len(seg_starts):
            skipped += 1
            continue
        starts.append(seg_starts)
        stretches.append(seg_stretches)
        leads.append(seg_leads)
        labels.append(np.full(len(seg_starts), segment.label, dtype=np.int64))
        segment_ids.append(np.full(len(seg_starts), number, dtype=np.int64))
    if not starts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0), empty, empty, empty, skipped
    return (np.concatenate(starts), np.concatenate(stretches), np.concatenate(labels),
            np.concatenate(segment_ids), np.concatenate(leads), skipped)  # fmt: skip


def _compact_counts(frames: np.ndarray) -> np.ndarray:
    """Counts in the smallest exact dtype (uint8 / uint16), else float32 unchanged."""
    if frames.size == 0:
        return frames.astype(np.uint8)
    peak = float(frames.max())
    if peak <= np.iinfo(np.uint8).max:
        return frames.astype(np.uint8)
    if peak <= np.iinfo(np.uint16).max:
        return frames.astype(np.uint16)
    return frames


def load_recording_windows(
    recording: Recording,
    plan: WindowPlan,
    window: WindowSpec,
    input_size: SensorSize,
    *,
    method: str = "area",
    flip_x: bool = False,
    flip_y: bool = False,
    filters: dict[str, Any] | None = None,
    cache_dir: Path | str | None = None,
) -> tuple[dict[str, np.ndarray], bool]:
    """The binned windows of one recording (arrays ``frames, labels, segments, starts_us``) and
    whether they came from the cache. Flips apply after canonicalisation to top-left; ``filters``
    (``stream.binning.check_filters``) run over the recording's events before binning."""
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    input_size = SensorSize(*input_size)
    mapping_dict = {"input_width": input_size.width, "input_height": input_size.height, "method": method,
                    "flip_x": bool(flip_x), "flip_y": bool(flip_y)}  # fmt: skip
    filters = check_filters(filters)
    path = cache_dir / "windows" / f"{cache_key(recording, plan, window, mapping_dict, filters)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in WINDOW_ARRAYS if name in stored.files}
            # Files written before onset windows existed have no lead steps: all their windows have none.
            arrays.setdefault("lead_steps", np.zeros(len(arrays["labels"]), dtype=np.int64))
            return {name: arrays[name] for name in WINDOW_ARRAYS}, True
        except (OSError, ValueError, KeyError):
            pass  # damaged cache file: rebuild it below
    events, sensor_size = read_recording(recording)
    # The span before filtering: the same windows whatever the filters (a filter that keeps nothing gives empty ones).
    span_us = (int(events["t"][0]), int(events["t"][-1]) + 1) if len(events) else (0, 0)
    events = EventFilter(filters, sensor_size)(events)
    mapping = SensorMapping.from_dict(mapping_dict, sensor_size)
    starts, stretches, labels, segments, leads, skipped = _plan_recording(recording, span_us, plan, window)
    frames = _compact_counts(bin_windows(events, mapping, window, starts, stretches))
    arrays = {"frames": frames, "labels": labels, "segments": segments, "starts_us": starts,
              "stretches": stretches.astype(np.float64), "skipped": np.array(skipped, dtype=np.int64),
              "lead_steps": leads.astype(np.int64)}  # fmt: skip
    write_atomically(path, lambda file: np.savez_compressed(file, **arrays))
    return arrays, False


def load_windows(
    recordings: Sequence[Recording],
    plan: WindowPlan,
    window: WindowSpec,
    input_size: SensorSize | tuple[int, int],
    *,
    method: str = "area",
    flip_x: bool = False,
    flip_y: bool = False,
    filters: dict[str, Any] | None = None,
    cache_dir: Path | str | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    workers: int = 1,
) -> WindowSet:
    """Binned windows of all ``recordings`` (read from / written to the cache), one ``WindowSet``.

    ``input_size`` is (width, height) in pixels. ``progress`` wraps the recording loop (e.g. tqdm).
    ``workers`` > 1 reads and bins recordings in that many processes (same result).
    """
    if not recordings:
        raise ValueError("no recordings to cut windows from")
    load = functools.partial(load_recording_windows, plan=plan, window=window, input_size=SensorSize(*input_size),
                             method=method, flip_x=flip_x, flip_y=flip_y, filters=filters, cache_dir=cache_dir)  # fmt: skip
    pieces: list[dict[str, np.ndarray]] = []
    hits = misses = 0
    with contextlib.ExitStack() as stack:
        mapped: Iterable = map(load, recordings)
        if workers > 1 and len(recordings) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            mapped = pool.map(load, recordings, chunksize=max(1, len(recordings) // (8 * workers)))
        for arrays, hit in (mapped if progress is None else progress(mapped)):
            hits, misses = hits + hit, misses + (not hit)
            pieces.append(arrays)
    group_offset = 0
    groups = []
    for recording, arrays in zip(recordings, pieces):  # number segments across the set
        groups.append(arrays["segments"] + group_offset)
        group_offset += len(recording.segments)
    # One array of the widest dtype, filled piece by piece and each piece freed once copied: memory
    # peaks near the pieces' size, not the pieces plus the result (16 domains' pools are ~6 GB).
    dtype = np.result_type(*(arrays["frames"].dtype for arrays in pieces))
    frames = np.empty((sum(len(arrays["frames"]) for arrays in pieces), *pieces[0]["frames"].shape[1:]), dtype)
    offset = 0
    for arrays in pieces:
        piece = arrays.pop("frames")
        frames[offset : offset + len(piece)] = piece
        offset += len(piece)
        del piece
    if len(frames) == 0:
        raise ValueError(f"no segment of the {len(recordings)} recording(s) is as long as a window ({window.window_us} µs)")
    _, dense_groups = np.unique(np.concatenate(groups), return_inverse=True)
    return WindowSet(
        frames=frames,
        labels=np.concatenate([arrays["labels"] for arrays in pieces]),
        groups=dense_groups.astype(np.int64),
        starts_us=np.concatenate([arrays["starts_us"] for arrays in pieces]),
        stretches=np.concatenate([arrays["stretches"] for arrays in pieces]),
        lead_steps=np.concatenate([arrays["lead_steps"] for arrays in pieces]),
        cache_hits=hits,
        cache_misses=misses,
        skipped_segments=int(sum(int(arrays["skipped"]) for arrays in pieces)),
    )


# --- augmentation and the torch Dataset ----------------------------------------------------------


class WindowDataset(torch.utils.data.Dataset):
    """``(frames [T, 2, H, W] float32 tensor, label int)`` from a ``WindowSet``; with ``step_labels``
    the label of every step instead, ``[T]`` int64 (``IGNORED_STEP`` before an onset window's gesture).

    Without augmentation every window is one item (evaluation). With augmentation every segment is
    one item per epoch: one window of its pool, augmented, drawn from a generator seeded by
    ``(seed, epoch, index)`` (the same whatever the DataLoader workers); call ``set_epoch``.

    Args:
        windows: the binned windows.
        normalisation: applied after augmentation (``stream.binning.apply_normalisation``).
        augmentation: training augmentation (``training.augment``), or None.
        mirrored_class: class permutation of a left-right flip (None disables flipping).
        seed: base seed of the augmentation.
        repeats: items per segment and epoch with augmentation (each draws its own window).
        items: with augmentation, this many items per epoch instead, from segments in an order
            shuffled anew each epoch (fine-tuning's rehearsal: as many as the takes give).
        step_labels: a label per step (a causal model's loss at every step).
    """

    def __init__(
        self,
        windows: WindowSet,
        *,
        normalisation: dict[str, Any] | None = DEFAULT_NORMALISATION,
        augmentation: AugmentConfig | None = None,
        mirrored_class: Sequence[int] | None = MIRRORED_CLASS,
        seed: int = 0,
        repeats: int = 1,
        items: int | None = None,
        step_labels: bool = False,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if items is not None and (items < 1 or augmentation is None):
            raise ValueError(f"items must be >= 1 and needs augmentation, got {items}")
        self.items = items
        self.step_labels = step_labels
        self.windows = windows
        self.repeats = repeats
        self.normalisation = check_normalisation(normalisation)
        self.augmentation = augmentation
        self.mirrored_class = tuple(mirrored_class) if mirrored_class is not None else None
        self.seed = seed
        self.epoch = 0
        if augmentation is not None:
            order = np.argsort(windows.groups, kind="stable")
            bounds = np.searchsorted(windows.groups[order], np.arange(windows.segments + 1))
            self._members = [order[bounds[i] : bounds[i + 1]] for i in range(windows.segments)]
        else:
            self._members = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.augmentation is None:
            return len(self.windows)
        return self.items if self.items is not None else len(self._members) * self.repeats

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        chosen = index
        if self.augmentation is None:
            counts = self.windows.frames[index]
            label = int(self.windows.labels[index])
        else:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            segment = index % len(self._members)
            if self.items is not None:  # one shuffle of the segments per epoch
                segment = int(np.random.default_rng([self.seed, self.epoch]).permutation(len(self._members))[segment])
            members = self._members[segment]
            chosen = int(members[rng.integers(len(members))])
            counts, label = augment_window(self.windows.frames[chosen], int(self.windows.labels[chosen]), rng,
                                           self.augmentation, mirrored_class=self.mirrored_class)  # fmt: skip
        frames = np.array(counts, dtype=np.float32, order="C")
        apply_normalisation(frames, self.normalisation)
        if self.step_labels:
            steps = torch.full((len(frames),), label, dtype=torch.int64)
            steps[: int(self.windows.lead_steps[chosen])] = IGNORED_STEP
            return torch.from_numpy(frames), steps
        return torch.from_numpy(frames), label


class WindowDatasets(torch.utils.data.ConcatDataset):
    """Several ``WindowDataset`` one after the other (fine-tuning's takes and rehearsal); ``set_epoch``
    reaches each."""

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)


if __name__ == "__main__":
    from stream.stage import run_main

    sys.exit(run_main(cache_main))
