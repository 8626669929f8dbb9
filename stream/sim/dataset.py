"""A synthetic data set in DVS128 Gesture's own layout (``write_dataset``) and a PNG montage of the
classes (``render_montage``).
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from stream.binning import add_counts
from stream.classes import GESTURE_CLASSES
from stream.events import SensorSize
from stream.atomic import write_atomically
from stream.sim.scene import BUILT_IN_LOOKS, DEFAULT_SENSOR, LIGHTINGS, LOOKS, Scene
from stream.sim.recording import DEFAULT_GESTURE_US, DEFAULT_IDLE_US, NUM_CLASSES, film


def _dataset_plan(samples: int, seed: int, looks: Sequence[str], lightings: Sequence[str],
                  ) -> list[tuple[str, list[int], list[int], str, str]]:  # fmt: skip
    """(file stem, gesture labels, recording seed, look, lighting) per recording: one person, look
    and lighting per file; looks alternate, lightings cycle over the users."""
    recordings = math.ceil(samples / NUM_CLASSES)
    users = max(min(recordings, 2), math.ceil(recordings / len(lightings)))
    plan = []
    for index in range(recordings):
        rng = np.random.default_rng([seed, index, 0])
        count = min(NUM_CLASSES, samples - index * NUM_CLASSES)
        labels = [int(label) for label in rng.permutation(NUM_CLASSES)[:count]]
        lighting = lightings[index // users]  # users * len(lightings) >= recordings: one file per (user, lighting)
        stem = f"user{index % users + 1:02d}_{lighting}"
        plan.append((stem, labels, [seed, index, 1], looks[index % len(looks)], lighting))
    return plan


def describe(scene: Scene) -> dict:
    """The parameters of a scene that the robustness tables group by (JSON-ready)."""
    pixels = scene.pixels
    return {
        "look": scene.look,
        "lighting": scene.lighting,
        "background": scene.background_kind,
        "sensor": list(scene.sensor_size),
        "threshold": round(float(np.sqrt(pixels.threshold_on.mean() * pixels.threshold_off.mean())), 4),
        "noise_hz": round(pixels.noise_hz, 4),
        "scale": round(scene.body.scale * scene.framing.scale / min(scene.sensor_size), 3),
        "flicker_hz": scene.flicker_hz,
        "flicker_depth": round(scene.flicker_depth, 4),
        "cutoff_hz": pixels.cutoff_hz,
        "distractors": [d.kind for d in scene.distractors],
    }


def _write_recording(out_dir: Path, stem: str, labels: list[int], seed: list[int], look: str, lighting: str,
                     sensor_size: SensorSize, gesture_us: int, idle_us: int, scene_options: dict) -> dict:  # fmt: skip
    from stream.formats.aedat31 import write_aedat31
    from stream.formats.labels import write_gesture_labels

    filmed = film(labels, seed=seed, sensor_size=sensor_size, idle_us=idle_us, gesture_us=gesture_us, look=look,
                  lighting=lighting, **scene_options)  # fmt: skip
    write_aedat31(out_dir / f"{stem}.aedat", filmed.events, sensor_size)
    write_gesture_labels(out_dir / f"{stem}_labels.csv", filmed.segments)
    return {**describe(filmed.scene), "events": len(filmed.events), "styles": filmed.styles}


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
    looks: Sequence[str] = BUILT_IN_LOOKS,
    lightings: Sequence[str] = tuple(LIGHTINGS),
    scene_options: dict | None = None,
) -> list[Path]:
    """Write a synthetic data set in DVS128 Gesture's own layout; returns the .aedat paths.

    ``samples`` gestures go into recordings of up to 11 (each class at most once, random order),
    one person, renderer (``looks``, in turn) and lighting family (``lightings``) per recording:
    ``userNN_<lighting>.aedat`` (AEDAT 3.1, top-left as DVS128 Gesture's files are: cAER's DVS128
    driver inverted y), ``userNN_<lighting>_labels.csv``, ``trials_to_train.txt`` /
    ``trials_to_test.txt`` split by user (the last ``test_fraction`` of users test, at least one
    when there are two or more), and ``scenes.json``: each file's scene (``describe``), event count and
    the style of each of its gestures, in the order of its labels file (``Motion.style``).
    ``scene_options`` fix scene parameters (``draw_scene``: zoom, threshold, noise_hz,
    flicker_depth). Same arguments -> same bytes, whatever ``workers``.
    """
    from stream.formats.labels import write_trials

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    unknown = [name for name in looks if name not in LOOKS] + [name for name in lightings if name not in LIGHTINGS]
    if not looks or not lightings or unknown:
        raise ValueError(f"looks must be some of {LOOKS} and lightings some of {sorted(LIGHTINGS)}, got {unknown}")
    sensor_size = SensorSize(*sensor_size).validated()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _dataset_plan(samples, seed, list(looks), list(lightings))
    jobs = [(out_dir, stem, labels, rec_seed, look, lighting, sensor_size, gesture_us, idle_us, scene_options or {})
            for stem, labels, rec_seed, look, lighting in plan]  # fmt: skip
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            scenes = list(pool.map(_write_recording, *zip(*jobs)))
    else:
        scenes = [_write_recording(*job) for job in jobs]
    users = sorted({stem.split("_")[0] for stem, *_ in plan})
    test_count = max(1, round(len(users) * test_fraction)) if len(users) >= 2 and test_fraction > 0 else 0
    test_users = set(users[len(users) - test_count:])
    names = [f"{stem}.aedat" for stem, *_ in plan]
    write_trials(out_dir / "trials_to_train.txt", [n for n in names if n.split("_")[0] not in test_users])
    write_trials(out_dir / "trials_to_test.txt", [n for n in names if n.split("_")[0] in test_users])
    manifest = {name: scene for name, scene in zip(names, scenes)}
    write_atomically(out_dir / "scenes.json", (json.dumps(manifest, indent=1) + "\n").encode())
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
                   window_us: int = 300_000, looks_per_class: int = 6) -> None:
    """Write a PNG: one row per class, ``looks_per_class`` random scenes each (the renderers in
    turn), the events of ``window_us`` from 0.6 s into a 1.2 s sample. A tile's caption gives the
    renderer, the lighting and the event rate of the whole sample."""
    from PIL import Image, ImageDraw, ImageFont  # Pillow: only needed for this picture

    width, height = sensor_size
    title_px, label_px, caption_px = 18, 190, 12
    font = ImageFont.load_default(size=12)
    sheet = Image.new("RGB", (label_px + looks_per_class * width, NUM_CLASSES * (height + caption_px) + title_px),
                      (0, 0, 0))  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), f"{window_us // 1000} ms of events per tile (ON orange, OFF blue); renderer, lighting, event rate",
              fill=(230, 230, 230), font=font)  # fmt: skip
    for label in range(NUM_CLASSES):
        top = title_px + label * (height + caption_px)
        draw.text((4, top + height // 2 - 6), f"{label}: {GESTURE_CLASSES[label]}", fill=(230, 230, 230), font=font)
        for column in range(looks_per_class):
            look = LOOKS[column % len(LOOKS)]
            events, _, scene, _ = film([label], seed=[seed, label, column], sensor_size=sensor_size, idle_us=0,
                                       gesture_us=1_200_000, look=look)  # fmt: skip
            start = int(events["t"][0]) + 600_000 if len(events) else 0
            shown = events[(events["t"] >= start) & (events["t"] < start + window_us)]
            left = label_px + column * width
            sheet.paste(Image.fromarray(accumulate_image(shown, sensor_size)), (left, top))
            rate = len(events) / max(1e-6, (int(events["t"][-1]) - int(events["t"][0])) * 1e-6) if len(events) > 1 else 0
            draw.text((left + 2, top + height), f"{look[:4]} {scene.lighting[:5]} {rate / 1e3:.0f}k/s",
                      fill=(200, 200, 200), font=ImageFont.load_default(size=10))  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
