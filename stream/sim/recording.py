"""Simulated recordings: one gesture (``simulate_gesture``) or a person doing several gestures in a
row with idle time between them (``simulate_recording``), filmed piece by piece (``Filming``, which
the live simulator source uses too). Same seed -> same events, bit for bit; events are canonical
(top-left origin, t from 0 µs).
"""

from __future__ import annotations

import threading
from typing import NamedTuple, Sequence

import numpy as np

from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.events import GestureSegment, SensorSize, concatenate_events
from stream.sim.body import Motion, Pose, blend_with_rest, gesture_motion, rest_pose
from stream.sim.camera import Camera
from stream.sim.figures import render
from stream.sim.scene import DEFAULT_SENSOR, Scene, draw_scene

NUM_CLASSES = len(GESTURE_CLASSES)
DEFAULT_GESTURE_US = 3_000_000
DEFAULT_IDLE_US = 600_000
GESTURE_LENGTH_RANGE = (0.6, 1.5)  # a gesture lasts this many times gesture_us
RAMP_S = 0.2  # a gesture fades in from / out to standing still over this long, inside its segment
TYPICAL_RATE_EVENTS_S = 14_000  # a 128x128 recording's mean event rate (3-25k by gesture and scene)
CHUNK_PIXELS = 1 << 20  # pixels rendered at once (steps x sensor pixels): bounds the frames' memory


def timeline_pose(
    scene: Scene, step_t: np.ndarray, gestures: Sequence[GestureSegment], rng: np.random.Generator, ramp_s: float
) -> tuple[Pose, list[str]]:
    """The person's pose at ``step_t`` (µs), standing still except during the gesture segments, and
    the style each gesture was drawn in (``Motion.style``, one per segment, in their order)."""
    pose = rest_pose(step_t * 1e-6, scene.body).filled()
    fields = {name: np.array(value) for name, value in pose._asdict().items()}
    styles = []
    for segment in gestures:
        inside = (step_t >= segment.start_us) & (step_t <= segment.end_us)
        motion = _gesture(scene, segment, step_t[inside], rng, ramp_s)
        _splice(fields, inside, motion.pose)
        styles.append(motion.style)
    return Pose(**fields), styles


def _gesture(scene: Scene, segment: GestureSegment, step_t: np.ndarray, rng: np.random.Generator,
             ramp_s: float) -> Motion:  # fmt: skip
    """A gesture's pose at its steps ``step_t`` (µs), faded in and out over ``ramp_s``, and its style."""
    local_s = (step_t - segment.start_us) * 1e-6
    duration_s = (segment.end_us - segment.start_us) * 1e-6
    motion = gesture_motion(segment.label, local_s, scene.body, rng, duration_s=duration_s)
    return Motion(blend_with_rest(motion.pose, local_s, duration_s, ramp_s).filled(), motion.style)


def _splice(fields: dict[str, np.ndarray], inside: np.ndarray, gesture: Pose) -> None:
    """Put a gesture's pose into a timeline's fields at ``inside`` (its offset on top of the sway)."""
    for name, value in gesture._asdict().items():
        if name == "offset":
            fields[name][inside] += value
        else:
            fields[name][inside] = value


def _slice(pose: Pose, first: int, last: int) -> Pose:
    return Pose(*(value[first:last] for value in pose))


class Filming:
    """One scene filmed over a timeline of render steps, in pieces (bounded memory): the person's
    pose for every step is made at once (cheap), frames and events piece by piece.

    Args:
        scene: what is filmed.
        step_t: render times, µs, increasing.
        segments: the gestures performed (stream µs).
        rng: draws each gesture's style, then the pixel noise.
        ramp_s: fade in/out of each gesture.
        origin_us: the scene's own time zero (flicker, drift and distractors run from it).
    """

    def __init__(self, scene: Scene, step_t: np.ndarray, segments: Sequence[GestureSegment],
                 rng: np.random.Generator, ramp_s: float = RAMP_S, origin_us: int = 0) -> None:  # fmt: skip
        self.scene = scene
        self.step_t = np.asarray(step_t, dtype=np.int64)
        self.origin_us = int(origin_us)
        self.pose, self.styles = timeline_pose(scene, self.step_t, segments, rng, ramp_s)
        self.camera = Camera(scene.pixels, np.random.default_rng(rng.integers(1 << 62)))
        width, height = scene.sensor_size
        self.chunk_steps = max(1, CHUNK_PIXELS // (width * height))

    def events(self, first: int, last: int) -> np.ndarray:
        """The events of steps ``first..last-1`` (call with consecutive ranges), time-ordered."""
        pieces = []
        for start in range(first, last, self.chunk_steps):
            end = min(last, start + self.chunk_steps)
            local_t = self.step_t[start:end] - self.origin_us
            frames = render(self.scene, _slice(self.pose, start, end), local_t)
            pieces.append(self.camera.record(self.step_t[start:end], frames, self.scene.light(local_t)))
        return concatenate_events(pieces)


class Puppet:
    """A person in one scene who stands still until told to perform a gesture (``cue``): the
    simulator as a camera for guided recording. Render consecutive steps with ``events``; a cue
    must lie after the steps already rendered. Thread-safe cues.

    Args:
        scene: what is filmed.
        rng: draws each gesture's style and the pixel noise.
        origin_us: the scene's own time zero.
    """

    def __init__(self, scene: Scene, rng: np.random.Generator, origin_us: int = 0) -> None:
        self.scene = scene
        self.rng = rng
        self.origin_us = int(origin_us)
        self.camera = Camera(scene.pixels, np.random.default_rng(rng.integers(1 << 62)))
        self._cues: list[tuple[GestureSegment, np.ndarray, Pose]] = []  # not rendered to their end yet
        self.segments: list[GestureSegment] = []  # every cue, in the order given
        self._lock = threading.Lock()
        self.rendered_us = int(origin_us)  # steps up to here are rendered: a cue must come after

    def cue(self, label: int, start_us: int, end_us: int) -> GestureSegment:
        """Perform gesture ``label`` from ``start_us`` to ``end_us`` (stream µs, after what is rendered)."""
        segment = GestureSegment(check_label(label), int(start_us), int(end_us))
        if not self.rendered_us < segment.start_us < segment.end_us:
            raise ValueError(f"a cue must start after {self.rendered_us} µs (already rendered) and end after it "
                             f"starts, got {segment.start_us}..{segment.end_us}")  # fmt: skip
        step = self.scene.step_us
        first = self.origin_us + -(-(segment.start_us - self.origin_us) // step) * step
        step_t = np.arange(first, segment.end_us + 1, step, dtype=np.int64)
        pose = _gesture(self.scene, segment, step_t, np.random.default_rng(self.rng.integers(1 << 62)), RAMP_S).pose
        with self._lock:
            self._cues.append((segment, step_t, pose))
            self.segments.append(segment)
        return segment

    def started(self, after_us: int, until_us: int) -> list[GestureSegment]:
        """The cued segments whose start lies in ``(after_us, until_us]``, in time order."""
        with self._lock:
            return sorted(segment for segment in self.segments if after_us < segment.start_us <= until_us)

    def events(self, step_t: np.ndarray) -> np.ndarray:
        """The events of the steps ``step_t`` (µs, on the scene's step grid, after the previous call's)."""
        step_t = np.asarray(step_t, dtype=np.int64)
        rest = rest_pose(step_t * 1e-6, self.scene.body).filled()
        fields = {name: np.array(value) for name, value in rest._asdict().items()}
        with self._lock:
            self.rendered_us = int(step_t[-1])
            cues = [cue for cue in self._cues if cue[0].end_us >= step_t[0]]
            self._cues = [cue for cue in cues if cue[0].end_us > step_t[-1]]
        for segment, cue_t, pose in cues:
            inside = np.isin(step_t, cue_t)
            at = np.searchsorted(cue_t, step_t[inside])
            _splice(fields, inside, Pose(*(value[at] for value in pose)))
        local_t = step_t - self.origin_us
        frames = render(self.scene, Pose(**fields), local_t)
        return self.camera.record(step_t, frames, self.scene.light(local_t))


def check_label(label: int) -> int:
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"gesture label must be 0..{NUM_CLASSES - 1}, got {label}")
    return int(label)


def simulate_gesture(
    label: int,
    *,
    seed: int,
    sensor_size: SensorSize = DEFAULT_SENSOR,
    duration_us: int = 2_000_000,
    mirror: bool = False,
    lighting: str | None = None,
    look: str | None = None,
) -> tuple[np.ndarray, int]:
    """One gesture sample: canonical events (time-ordered, t from 0 µs) and its label.

    The gesture runs for the whole ``duration_us``. ``mirror=True`` returns the same sample flipped
    left-right (x -> width-1-x) with its label mapped by ``MIRRORED_CLASS``. ``lighting`` and
    ``look`` fix the lighting family and the renderer (default: drawn).
    """
    label = check_label(label)
    if duration_us <= 0:
        raise ValueError(f"duration_us must be > 0, got {duration_us}")
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng, sensor_size, look=look, lighting=lighting, duration_us=duration_us)
    step_t = np.arange(0, duration_us + 1, scene.step_us, dtype=np.int64)
    if step_t[-1] != duration_us:
        step_t = np.append(step_t, duration_us)
    filming = Filming(scene, step_t, [GestureSegment(label, 0, duration_us)], rng, ramp_s=0.0)
    events = filming.events(0, len(step_t))
    if mirror:
        events["x"] = scene.sensor_size.width - 1 - events["x"]
        label = MIRRORED_CLASS[label]
    return events, label


def recording_plan(
    labels: Sequence[int], rng: np.random.Generator, gesture_us: int, idle_us: int, start_us: int = 0
) -> tuple[list[GestureSegment], int]:
    """Gesture segments separated by idle gaps and the end time, µs: a gesture lasts
    ``GESTURE_LENGTH_RANGE`` times ``gesture_us``, an idle gap 0.8-1.2 times ``idle_us``."""
    segments, t = [], start_us
    for label in labels:
        t += int(idle_us * rng.uniform(0.8, 1.2))
        length = int(gesture_us * rng.uniform(*GESTURE_LENGTH_RANGE))
        segments.append(GestureSegment(check_label(label), t, t + length))
        t += length
    return segments, t + int(idle_us * rng.uniform(0.8, 1.2))


class Film(NamedTuple):
    """A filmed recording: time-ordered canonical events (t from 0 µs), the gesture segments, the
    scene, and the style each gesture was drawn in (``Motion.style``, one per segment)."""

    events: np.ndarray
    segments: list[GestureSegment]
    scene: Scene
    styles: list[str]


def film(
    labels: Sequence[int],
    *,
    seed: int | Sequence[int],
    sensor_size: SensorSize = DEFAULT_SENSOR,
    idle_us: int = DEFAULT_IDLE_US,
    gesture_us: int = DEFAULT_GESTURE_US,
    **scene_options: object,
) -> Film:
    """One person doing ``labels`` in a row: idle, gesture, idle, gesture, ..., idle.

    Idle is standing still (noise, flicker, a passing distractor). Returns a ``Film``: the events,
    the segments, the scene and each gesture's style (``scene_options`` go to ``draw_scene``:
    ``look``, ``lighting``, ``zoom``, ``threshold``, ``noise_hz``, ``flicker_depth``). ``seed`` is
    anything ``np.random.default_rng`` takes (the data set uses ``[seed, index, 1]``).
    """
    if gesture_us <= 0 or idle_us < 0:
        raise ValueError(f"need gesture_us > 0 and idle_us >= 0, got {gesture_us}, {idle_us}")
    rng = np.random.default_rng(seed)
    segments, end_us = recording_plan(labels, rng, gesture_us, idle_us)
    scene = draw_scene(rng, sensor_size, duration_us=end_us, **scene_options)
    step_t = np.arange(0, end_us + scene.step_us, scene.step_us, dtype=np.int64)
    filming = Filming(scene, step_t, segments, rng)
    return Film(filming.events(0, len(step_t)), segments, scene, filming.styles)


def simulate_recording(labels: Sequence[int], *, seed: int | Sequence[int], **options: object,
                       ) -> tuple[np.ndarray, list[GestureSegment]]:  # fmt: skip
    """``film`` without the scene: the events and the segments."""
    filmed = film(labels, seed=seed, **options)
    return filmed.events, filmed.segments
