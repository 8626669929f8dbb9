"""A synthetic data set in DVS128 Gesture's own layout (``write_dataset``) and a PNG montage of the
classes (``render_montage``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from stream.binning import add_counts
from stream.classes import GESTURE_CLASSES
from stream.events import SensorSize
from stream.sim.camera import DEFAULT_SENSOR, LIGHTINGS
from stream.sim.recording import DEFAULT_GESTURE_US, DEFAULT_IDLE_US, NUM_CLASSES, simulate_gesture, simulate_recording


def _dataset_plan(samples: int, seed: int) -> list[tuple[str, list[int], list[int]]]:
    """(file stem, gesture labels, recording seed) per recording; one (user, lighting) per file."""
    recordings = math.ceil(samples / NUM_CLASSES)
    users = max(min(recordings, 2), math.ceil(recordings / len(LIGHTINGS)))
    lighting_names = sorted(LIGHTINGS)
    plan = []
    for index in range(recordings):
        rng = np.random.default_rng([seed, index, 0])
        count = min(NUM_CLASSES, samples - index * NUM_CLASSES)
        labels = [int(label) for label in rng.permutation(NUM_CLASSES)[:count]]
        stem = f"user{index % users + 1:02d}_{lighting_names[index // users]}"
        plan.append((stem, labels, [seed, index, 1]))
    return plan


def _write_recording(out_dir: Path, stem: str, labels: list[int], seed: list[int], sensor_size: SensorSize,
                     gesture_us: int, idle_us: int) -> int:
    lighting = stem.split("_", 1)[1]
    events, segments = simulate_recording(labels, seed=seed, sensor_size=sensor_size, idle_us=idle_us,
                                          gesture_us=gesture_us, lighting=lighting)
    from stream.formats.aedat31 import write_aedat31
    from stream.formats.labels import write_gesture_labels

    write_aedat31(out_dir / f"{stem}.aedat", events, sensor_size)
    write_gesture_labels(out_dir / f"{stem}_labels.csv", segments)
    return len(events)


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    samples: int,
    seed: int,
    sensor_size: SensorSize = DEFAULT_SENSOR,
    gesture_us: int = DEFAULT_GESTURE_US,
    idle_us: int = DEFAULT_IDLE_US,
    test_fraction: float = 0.2,
    workers: int = 1,
) -> list[Path]:
    """Write a synthetic data set in DVS128 Gesture's own layout; returns the .aedat paths.

    ``samples`` gestures go into recordings of up to 11 (each class at most once, random order),
    one person and lighting per recording: ``userNN_<lighting>.aedat`` (AEDAT 3.1, top-left
    as DVS128 Gesture's files are: cAER's DVS128 driver inverted y), ``userNN_<lighting>_labels.csv``, and ``trials_to_train.txt`` /
    ``trials_to_test.txt`` split by user (the last ``test_fraction`` of users test, at least one
    when there are two or more). Same arguments -> same bytes, whatever ``workers``.
    """
    from stream.formats.labels import write_trials

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    sensor_size = SensorSize(*sensor_size).validated()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _dataset_plan(samples, seed)
    jobs = [(out_dir, stem, labels, rec_seed, sensor_size, gesture_us, idle_us) for stem, labels, rec_seed in plan]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_recording, *zip(*jobs)))
    else:
        for job in jobs:
            _write_recording(*job)
    users = sorted({stem.split("_")[0] for stem, _, _ in plan})
    test_count = max(1, round(len(users) * test_fraction)) if len(users) >= 2 and test_fraction > 0 else 0
    test_users = set(users[len(users) - test_count:])
    names = [f"{stem}.aedat" for stem, _, _ in plan]
    write_trials(out_dir / "trials_to_train.txt", [n for n in names if n.split("_")[0] not in test_users])
    write_trials(out_dir / "trials_to_test.txt", [n for n in names if n.split("_")[0] in test_users])
    return [out_dir / name for name in names]


# --- picture of the classes ------------------------------------------------------------------


def accumulate_image(events: np.ndarray, sensor_size: SensorSize) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` picture of accumulated events: ON orange, OFF blue, on dark grey."""
    width, height = sensor_size
    counts = add_counts(np.zeros((2, height, width), np.int32), events)
    scale = max(1.0, float(np.percentile(counts.sum(axis=0), 99)))
    off, on = np.clip(counts / scale, 0, 1)[..., None]
    image = 30 + on * np.array([225, 130, 0]) + off * np.array([0, 120, 225])
    return np.clip(image, 0, 255).astype(np.uint8)


def render_montage(path: str | os.PathLike, *, seed: int = 0, sensor_size: SensorSize = DEFAULT_SENSOR,
                   window_us: int = 300_000, zoom: int = 2) -> None:
    """Write a PNG: per class, the events of ``window_us`` (from 0.5 s into a 1 s sample), plus idle.

    Tile titles give the class and its event rate over the whole 1 s sample.
    """
    from PIL import Image, ImageDraw, ImageFont  # Pillow: only needed for this picture

    width, height = sensor_size
    tiles = []
    for label in range(NUM_CLASSES):
        events, _ = simulate_gesture(label, seed=seed + label, sensor_size=sensor_size, duration_us=1_000_000)
        tiles.append((GESTURE_CLASSES[label], events))
    idle, _ = simulate_recording([], seed=seed, sensor_size=sensor_size, idle_us=1_300_000)
    tiles.append(("idle (noise only)", idle[idle["t"] < 1_000_000]))
    title_px, columns = 18, 4
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * width * zoom, rows * (height * zoom + title_px)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for index, (title, events) in enumerate(tiles):
        left, top = (index % columns) * width * zoom, (index // columns) * (height * zoom + title_px)
        shown = events[(events["t"] >= 500_000) & (events["t"] < 500_000 + window_us)]
        tile = Image.fromarray(accumulate_image(shown, sensor_size)).resize((width * zoom, height * zoom), Image.NEAREST)
        sheet.paste(tile, (left, top + title_px))
        rate = len(events) / 1.0
        draw.text((left + 3, top + 2), f"{index}: {title}  {rate / 1e3:.0f}k ev/s", fill=(230, 230, 230), font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
