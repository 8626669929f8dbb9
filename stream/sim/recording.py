"""Simulated recordings: one gesture (``simulate_gesture``) or a person doing several gestures in a
row with idle time between them (``simulate_recording``). Same seed -> same events, bit for bit;
events are canonical (top-left origin, t from 0 µs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.events import GestureSegment, SensorSize
from stream.sim.body import Pose, blend_with_rest, capsules, gesture_pose, rest_pose
from stream.sim.camera import DEFAULT_SENSOR, Camera, Scene, draw_scene

NUM_CLASSES = len(GESTURE_CLASSES)
DEFAULT_GESTURE_US = 2_000_000
DEFAULT_IDLE_US = 600_000
RAMP_S = 0.2  # a gesture fades in from / out to standing still over this long, inside its segment


def timeline_shapes(
    scene: Scene, step_t: np.ndarray, gestures: Sequence[GestureSegment], rng: np.random.Generator, ramp_s: float
) -> np.ndarray:
    """Capsules ``[n, shapes, 5]`` at ``step_t``: standing still, except during the gesture segments."""
    pose = rest_pose(step_t * 1e-6, scene.body)
    angles, offset = pose.angles.copy(), pose.offset.copy()
    for segment in gestures:
        inside = (step_t >= segment.start_us) & (step_t <= segment.end_us)
        local_s = (step_t[inside] - segment.start_us) * 1e-6
        gesture = gesture_pose(segment.label, local_s, scene.body, rng)
        gesture = blend_with_rest(gesture, local_s, (segment.end_us - segment.start_us) * 1e-6, ramp_s)
        angles[inside] = gesture.angles
        offset[inside] += gesture.offset
    return capsules(scene.body, Pose(angles, offset))


def check_label(label: int) -> int:
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"gesture label must be 0..{NUM_CLASSES - 1}, got {label}")
    return int(label)


def simulate_gesture(
    label: int,
    *,
    seed: int,
    sensor_size: SensorSize = DEFAULT_SENSOR,
    duration_us: int = DEFAULT_GESTURE_US,
    mirror: bool = False,
    lighting: str | None = None,
) -> tuple[np.ndarray, int]:
    """One gesture sample: canonical events (time-ordered, t from 0 µs) and its label.

    The gesture runs for the whole ``duration_us``. ``mirror=True`` returns the same sample flipped
    left-right (x -> width-1-x) with its label mapped by ``MIRRORED_CLASS``.
    """
    label = check_label(label)
    if duration_us <= 0:
        raise ValueError(f"duration_us must be > 0, got {duration_us}")
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng, sensor_size, lighting)
    step_t = np.arange(0, duration_us + 1, scene.step_us, dtype=np.int64)
    if step_t[-1] != duration_us:
        step_t = np.append(step_t, duration_us)
    shapes = timeline_shapes(scene, step_t, [GestureSegment(label, 0, duration_us)], rng, ramp_s=0.0)
    events = Camera(scene, rng).record(step_t, shapes)
    if mirror:
        events["x"] = scene.sensor_size.width - 1 - events["x"]
        label = MIRRORED_CLASS[label]
    return events, label


def recording_plan(
    labels: Sequence[int], rng: np.random.Generator, gesture_us: int, idle_us: int, start_us: int = 0
) -> tuple[list[GestureSegment], int]:
    """Gesture segments separated by idle gaps (lengths jittered +-20 %) and the end time, µs."""
    segments, t = [], start_us
    for label in labels:
        t += int(idle_us * rng.uniform(0.8, 1.2))
        length = int(gesture_us * rng.uniform(0.8, 1.2))
        segments.append(GestureSegment(check_label(label), t, t + length))
        t += length
    return segments, t + int(idle_us * rng.uniform(0.8, 1.2))


def simulate_recording(
    labels: Sequence[int],
    *,
    seed: int | Sequence[int],
    sensor_size: SensorSize = DEFAULT_SENSOR,
    idle_us: int = DEFAULT_IDLE_US,
    gesture_us: int = DEFAULT_GESTURE_US,
    lighting: str | None = None,
) -> tuple[np.ndarray, list[GestureSegment]]:
    """One person doing ``labels`` in a row: idle, gesture, idle, gesture, ..., idle.

    Gesture and idle lengths vary +-20 % around ``gesture_us`` / ``idle_us``. Idle is standing
    still (almost only noise). Returns time-ordered canonical events (t from 0 µs) and the segments.
    ``seed`` is anything ``np.random.default_rng`` takes (the data set uses ``[seed, index, 1]``).
    """
    if gesture_us <= 0 or idle_us < 0:
        raise ValueError(f"need gesture_us > 0 and idle_us >= 0, got {gesture_us}, {idle_us}")
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng, sensor_size, lighting)
    segments, end_us = recording_plan(labels, rng, gesture_us, idle_us)
    step_t = np.arange(0, end_us + scene.step_us, scene.step_us, dtype=np.int64)
    shapes = timeline_shapes(scene, step_t, segments, rng, RAMP_S)
    return Camera(scene, rng).record(step_t, shapes), segments
