"""A virtual DVS camera filming a person doing the 11 DVS128 Gesture classes.

How events are made (ESIM/v2e style): a person made of capsules (torso, neck, head, upper arms,
forearms, hands; anti-aliased edges) in front of a smooth textured background is rendered every
``step_us`` (1 ms for a 128x128 sensor, finer for bigger sensors, so hands move < 0.5 pixel per
step). Each pixel keeps the log intensity at its last event; whenever the new log intensity differs
from it by more than the pixel's ON or OFF contrast threshold (per-pixel mismatch, sigma 0.02-0.05)
it emits one event per threshold crossed, timestamped by linear interpolation inside the step,
unless it is still in its refractory period. Background-activity noise (Poisson, per pixel) and a
few hot pixels are added. Renderer and pixel model run in one Numba kernel (loop over steps inside).

Randomised per recording (seeded): body size and position, lighting (log offset and noise rate),
clothing and skin intensities, background, contrast thresholds, refractory period, noise, camera
shake; per gesture: speed (period), amplitude, phase. Same seed -> same events, bit for bit.

Orientation: events from this module use the canonical top-left origin (y down), like every
dv-processing camera, and the live ``SimulatorSource`` emits them so. The data-set files written by
``write_dataset`` follow DVS128 Gesture, recorded with jAER whose y origin is at the BOTTOM: they
store ``y_file = height - 1 - y`` exactly as a real DVS128 recording would, so a reader of the real
data set must flip y (as it must for the real files) to get the canonical orientation back.

Public API: ``simulate_gesture``, ``simulate_recording``, ``SimulatorSource``, ``write_dataset``,
``render_montage`` and ``main`` (``python -m stream simulate``).
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from numba import njit

from stream.body import SHAPE_NAMES, SKIN_SHAPES, Body, Pose, blend_with_rest, capsules, draw_body, gesture_pose, rest_pose
from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.events import EVENT_DTYPE, GestureSegment, SensorSize, empty_events

NUM_CLASSES = len(GESTURE_CLASSES)
DEFAULT_SENSOR = SensorSize(128, 128)
DEFAULT_GESTURE_US = 2_000_000
DEFAULT_IDLE_US = 600_000
RAMP_S = 0.2  # a gesture fades in from / out to standing still over this long, inside its segment
MAX_EVENTS_PER_PIXEL_STEP = 8
BACKGROUND_PAD = 3  # pixels of background beyond the sensor edge (camera shake stays well under it)
LOG_EPS = 0.02  # log(I + eps): dark pixels are less sensitive, as in a real photoreceptor

# DVS128 Gesture's lighting conditions -> (illumination range, background-activity rate range per pixel, Hz)
LIGHTINGS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "fluorescent": ((0.5, 1.2), (0.05, 0.3)),
    "fluorescent_led": ((0.4, 1.0), (0.08, 0.4)),
    "lab": ((0.8, 1.6), (0.03, 0.2)),
    "led": ((0.5, 1.3), (0.05, 0.3)),
    "natural": ((1.0, 3.0), (0.02, 0.15)),
}


@dataclass(frozen=True)
class Scene:
    """Everything fixed for one recording: who stands where, in what light, seen by which pixels."""

    sensor_size: SensorSize
    lighting: str
    body: Body
    background: np.ndarray  # [H + 2*pad, W + 2*pad] linear intensity
    shape_values: np.ndarray  # [len(SHAPE_NAMES)] linear intensity of each shape
    illumination: float
    threshold_on: np.ndarray  # [H, W] log-intensity contrast threshold per pixel
    threshold_off: np.ndarray  # [H, W]
    refractory_us: int
    noise_rate_hz: float  # background activity per pixel
    hot_pixels: np.ndarray  # [k] flat pixel indices
    hot_rates_hz: np.ndarray  # [k]
    shake_amplitude_px: np.ndarray  # [2, 2] (x, y) x two sinusoids
    shake_frequency_hz: np.ndarray  # [2, 2]
    shake_phase: np.ndarray  # [2, 2]
    step_us: int

    def shake(self, t_us: np.ndarray) -> np.ndarray:
        """Camera shake ``[n, 2]`` (x, y) in pixels at times ``t_us``."""
        t_s = np.asarray(t_us, dtype=np.float64)[:, None, None] * 1e-6
        waves = self.shake_amplitude_px * np.sin(2 * np.pi * self.shake_frequency_hz * t_s + self.shake_phase)
        return waves.sum(axis=2)


def default_step_us(sensor_size: SensorSize) -> int:
    """Internal render step: 1 ms at 128 px, proportionally finer for bigger sensors (>= 100 µs)."""
    return int(np.clip(round(1000 * 128 / min(sensor_size)), 100, 1000))


def _smooth_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random texture plus a few soft-edged rectangles (doors, posters), values ~0.3..1.2."""
    cell = max(6, min(height, width) // 10)
    coarse = rng.uniform(0.35, 1.0, (height // cell + 3, width // cell + 3))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - wx) + coarse[y0][:, x0 + 1] * wx
    bottom = coarse[y0 + 1][:, x0] * (1 - wx) + coarse[y0 + 1][:, x0 + 1] * wx
    image = top * (1 - wy) + bottom * wy
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    for _ in range(rng.integers(1, 4)):
        left, top_y = rng.uniform(0, width), rng.uniform(0, height)
        right, bottom_y = left + rng.uniform(0.1, 0.4) * width, top_y + rng.uniform(0.1, 0.5) * height
        inside = np.minimum.reduce([grid_x - left, right - grid_x, grid_y - top_y, bottom_y - grid_y])
        cover = np.clip(inside / 1.5 + 0.5, 0, 1)
        image = image * (1 - cover) + rng.uniform(0.3, 1.2) * cover
    return image


def draw_scene(rng: np.random.Generator, sensor_size: SensorSize = DEFAULT_SENSOR, lighting: str | None = None) -> Scene:
    """Draw a random scene (person, light, background, pixel parameters) for one recording."""
    sensor_size = SensorSize(*sensor_size).validated()
    width, height = sensor_size
    if lighting is None:
        lighting = str(rng.choice(list(LIGHTINGS)))
    if lighting not in LIGHTINGS:
        raise ValueError(f"lighting must be one of {sorted(LIGHTINGS)}, got {lighting!r}")
    illumination_range, noise_range = LIGHTINGS[lighting]
    body = draw_body(rng, sensor_size)
    background = _smooth_background(rng, height + 2 * BACKGROUND_PAD, width + 2 * BACKGROUND_PAD)
    mean = float(background.mean())
    dark_shirt = rng.random() < 0.5
    shirt = mean * (rng.uniform(0.1, 0.3) if dark_shirt else rng.uniform(2.0, 3.2))
    sleeve = shirt * (rng.uniform(1.2, 1.5) if dark_shirt else rng.uniform(0.65, 0.8))  # shading: arms vs torso
    dark_skin = rng.random() < (0.2 if dark_shirt else 0.8)  # mostly contrasting with the shirt
    skin = mean * (rng.uniform(0.25, 0.55) if dark_skin else rng.uniform(1.6, 2.6))
    shape_values = np.array([
        skin if name in SKIN_SHAPES else sleeve if "arm" in name else shirt for name in SHAPE_NAMES
    ])
    contrast, mismatch = rng.uniform(0.09, 0.2), rng.uniform(0.02, 0.05)
    on_off_ratio = rng.uniform(0.9, 1.1)

    def thresholds(base: float) -> np.ndarray:
        return np.maximum(0.05, base * (1 + mismatch * rng.standard_normal((height, width))))

    hot_count = int(rng.integers(0, 5))
    return Scene(
        sensor_size=sensor_size,
        lighting=lighting,
        body=body,
        background=background,
        shape_values=shape_values,
        illumination=float(rng.uniform(*illumination_range)),
        threshold_on=thresholds(contrast * on_off_ratio),
        threshold_off=thresholds(contrast / on_off_ratio),
        refractory_us=int(rng.integers(50, 500)),
        noise_rate_hz=float(rng.uniform(*noise_range)),
        hot_pixels=rng.choice(width * height, size=hot_count, replace=False),
        hot_rates_hz=rng.uniform(10, 200, size=hot_count),
        shake_amplitude_px=rng.uniform(0.0, 0.15, size=(2, 2)),
        shake_frequency_hz=rng.uniform(0.3, 3.0, size=(2, 2)),
        shake_phase=rng.uniform(0, 2 * np.pi, size=(2, 2)),
        step_us=default_step_us(sensor_size),
    )


# --- the Numba kernels --------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _render_frame(frame, background, pad, shake_x, shake_y, shapes, values):
    """Draw background (shifted by camera shake, bilinear) and the capsules into ``frame`` [H, W]."""
    height, width = frame.shape
    # The shake moves the whole background by the same sub-pixel amount: fixed offsets and weights.
    offset_x, offset_y = int(math.floor(pad - shake_x)), int(math.floor(pad - shake_y))
    wx, wy = (pad - shake_x) - offset_x, (pad - shake_y) - offset_y
    w00, w01, w10, w11 = (1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx
    for y in range(height):
        top = background[y + offset_y]
        bottom = background[y + offset_y + 1]
        row = frame[y]
        for x in range(width):
            i = x + offset_x
            row[x] = w00 * top[i] + w01 * top[i + 1] + w10 * bottom[i] + w11 * bottom[i + 1]
    for k in range(shapes.shape[0]):
        ax, ay, bx, by, radius = shapes[k, 0], shapes[k, 1], shapes[k, 2], shapes[k, 3], shapes[k, 4]
        value = values[k]
        x0 = max(0, int(math.floor(min(ax, bx) - radius - 1)))
        x1 = min(width, int(math.ceil(max(ax, bx) + radius + 2)))
        y0 = max(0, int(math.floor(min(ay, by) - radius - 1)))
        y1 = min(height, int(math.ceil(max(ay, by) + radius + 2)))
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        inverse_length2 = 1.0 / length2 if length2 > 0 else 0.0
        outside2 = (radius + 0.5) ** 2  # beyond: not covered
        inside2 = max(0.0, radius - 0.5) ** 2  # within: fully covered; between: the anti-aliased edge
        for y in range(y0, y1):
            py = y - ay
            for x in range(x0, x1):
                px = x - ax
                h = min(1.0, max(0.0, (px * dx + py * dy) * inverse_length2))
                ex, ey = px - h * dx, py - h * dy
                distance2 = ex * ex + ey * ey
                if distance2 >= outside2:
                    continue
                if distance2 <= inside2:
                    frame[y, x] = value
                else:
                    frame[y, x] += (value - frame[y, x]) * (radius + 0.5 - math.sqrt(distance2))


@njit(cache=True, nogil=True)
def _replicate(t, x, y, p, copies, width, height, out_t, out_x, out_y, out_p):
    """Event i becomes events i*copies + j, j < copies, in time order: copy j shifted by
    (37 j, 59 j) pixels, wrapping round the ``width`` x ``height`` sensor. One pass over the output."""
    shift_x, shift_y = np.empty(copies, np.int64), np.empty(copies, np.int64)
    for j in range(copies):
        shift_x[j], shift_y[j] = (j * 37) % width, (j * 59) % height
    for i in range(t.shape[0]):
        ti, xi, yi, pi = t[i], x[i], y[i], p[i]
        base = i * copies
        for j in range(copies):
            out_t[base + j] = ti
            out_x[base + j] = (xi + shift_x[j]) % width
            out_y[base + j] = (yi + shift_y[j]) % height
            out_p[base + j] = pi


@njit(cache=True, nogil=True)
def _dvs_steps(
    step_t, shake, shapes, values, background, pad, illumination, threshold_on, threshold_off,
    refractory_us, log_ref, upper, lower, linear_prev, last_event_t, frame, previous_t, first, last,
    out_t, out_x, out_y, out_p, count,
):
    """Render steps ``first..last-1`` and emit DVS events into the out arrays from index ``count``.

    Pixel state: ``log_ref`` (log intensity at the last event), ``upper``/``lower`` (the linear
    intensities that would cross the ON/OFF threshold: checking them needs no log per pixel and
    step), ``linear_prev`` (intensity at the previous step, for timestamp interpolation).
    Returns (count, next step). Stops early, before a step, when the buffers might overflow.
    """
    height, width = frame.shape
    capacity = out_t.shape[0]
    t0 = previous_t
    for s in range(first, last):
        if count + height * width * MAX_EVENTS_PER_PIXEL_STEP > capacity:
            return count, s
        _render_frame(frame, background, pad, shake[s, 0], shake[s, 1], shapes[s], values)
        t1 = step_t[s]
        span = t1 - t0
        for y in range(height):
            for x in range(width):
                value = frame[y, x] * illumination + LOG_EPS
                if lower[y, x] < value < upper[y, x]:  # common case: no threshold crossed, no log
                    linear_prev[y, x] = value
                    continue
                level = math.log(value)
                before = math.log(linear_prev[y, x])
                ref = log_ref[y, x]
                change = level - before
                for _ in range(MAX_EVENTS_PER_PIXEL_STEP):
                    if level - ref >= threshold_on[y, x]:
                        ref += threshold_on[y, x]
                        polarity = 1
                    elif ref - level >= threshold_off[y, x]:
                        ref -= threshold_off[y, x]
                        polarity = 0
                    else:
                        break
                    fraction = 1.0
                    if change != 0:
                        fraction = min(1.0, max(0.0, (ref - before) / change))
                    t = t0 + int(fraction * span + 0.5)
                    if t - last_event_t[y, x] >= refractory_us:
                        out_t[count] = t
                        out_x[count] = x
                        out_y[count] = y
                        out_p[count] = polarity
                        count += 1
                        last_event_t[y, x] = t
                log_ref[y, x] = ref
                upper[y, x] = math.exp(ref + threshold_on[y, x])
                lower[y, x] = math.exp(ref - threshold_off[y, x])
                linear_prev[y, x] = value
        t0 = t1
    return count, last


class _Camera:
    """The DVS pixel array of one scene; keeps pixel state so a recording can be made in pieces."""

    def __init__(self, scene: Scene, noise_rng: np.random.Generator) -> None:
        width, height = scene.sensor_size
        self.scene = scene
        self.noise_rng = noise_rng
        self.frame = np.zeros((height, width))
        self.log_ref = np.zeros((height, width))
        self.upper = np.zeros((height, width))
        self.lower = np.zeros((height, width))
        self.linear_prev = np.zeros((height, width))
        self.last_event_t = np.full((height, width), -(1 << 40), dtype=np.int64)
        self.previous_t: int | None = None  # time of the last rendered step, µs

    def record(self, step_t: np.ndarray, shapes: np.ndarray) -> np.ndarray:
        """Render steps at times ``step_t`` (µs, increasing, after the previous call's) -> sorted events."""
        scene = self.scene
        shake = scene.shake(step_t)
        shapes = shapes.copy()
        shapes[:, :, 0:4] += np.tile(shake, 2)[:, None, :]
        first = 0
        if self.previous_t is None:  # first frame: the pixels adapt to it, no events
            _render_frame(self.frame, scene.background, BACKGROUND_PAD, shake[0, 0], shake[0, 1], shapes[0], scene.shape_values)
            self.linear_prev[:] = self.frame * scene.illumination + LOG_EPS
            self.log_ref[:] = np.log(self.linear_prev)
            self.upper[:] = np.exp(self.log_ref + scene.threshold_on)
            self.lower[:] = np.exp(self.log_ref - scene.threshold_off)
            self.previous_t = int(step_t[0])
            first = 1
        start_t = self.previous_t
        pixels = self.frame.size
        capacity = max(1 << 16, pixels * MAX_EVENTS_PER_PIXEL_STEP * 2, pixels * len(step_t) // 16)
        out_t = np.empty(capacity, np.int64)
        out_x, out_y = np.empty(capacity, np.int16), np.empty(capacity, np.int16)
        out_p = np.empty(capacity, np.int8)
        count, step = 0, first
        while step < len(step_t):
            count, next_step = _dvs_steps(
                step_t, shake, shapes, scene.shape_values, scene.background, BACKGROUND_PAD, scene.illumination,
                scene.threshold_on, scene.threshold_off, scene.refractory_us, self.log_ref, self.upper, self.lower, self.linear_prev,
                self.last_event_t, self.frame, self.previous_t, step, len(step_t), out_t, out_x, out_y, out_p, count,
            )
            if next_step > step:
                self.previous_t = int(step_t[next_step - 1])
            step = next_step
            if step < len(step_t):  # buffers full: grow and go on
                capacity *= 2
                out_t, out_x, out_y, out_p = (np.resize(a, capacity) for a in (out_t, out_x, out_y, out_p))
        noise = self._noise(start_t, self.previous_t)
        events = np.zeros(count + len(noise), EVENT_DTYPE)  # zeroed padding; np.concatenate would drop it
        events[count:] = noise
        events["t"][:count], events["x"][:count], events["y"][:count] = out_t[:count], out_x[:count], out_y[:count]
        events["p"][:count] = out_p[:count]
        return events[np.argsort(events["t"], kind="stable")]

    def _noise(self, start_t: int, end_t: int) -> np.ndarray:
        """Background activity and hot pixels in (start_t, end_t] µs."""
        scene, rng = self.scene, self.noise_rng
        width, height = scene.sensor_size
        duration_s = (end_t - start_t) * 1e-6
        if duration_s <= 0:
            return empty_events()
        ba_count = rng.poisson(scene.noise_rate_hz * width * height * duration_s)
        hot_counts = rng.poisson(scene.hot_rates_hz * duration_s)
        pixel = np.concatenate([rng.integers(0, width * height, ba_count), np.repeat(scene.hot_pixels, hot_counts)])
        noise = np.zeros(len(pixel), EVENT_DTYPE)
        noise["t"] = rng.integers(start_t + 1, end_t + 1, len(pixel))
        noise["x"], noise["y"] = pixel % width, pixel // width
        noise["p"] = rng.integers(0, 2, len(pixel))
        return noise


# --- timelines ----------------------------------------------------------------------------------


def _timeline_shapes(
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


def _check_label(label: int) -> int:
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
    label = _check_label(label)
    if duration_us <= 0:
        raise ValueError(f"duration_us must be > 0, got {duration_us}")
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng, sensor_size, lighting)
    step_t = np.arange(0, duration_us + 1, scene.step_us, dtype=np.int64)
    if step_t[-1] != duration_us:
        step_t = np.append(step_t, duration_us)
    shapes = _timeline_shapes(scene, step_t, [GestureSegment(label, 0, duration_us)], rng, ramp_s=0.0)
    events = _Camera(scene, rng).record(step_t, shapes)
    if mirror:
        events["x"] = scene.sensor_size.width - 1 - events["x"]
        label = MIRRORED_CLASS[label]
    return events, label


def _recording_plan(
    labels: Sequence[int], rng: np.random.Generator, gesture_us: int, idle_us: int, start_us: int = 0
) -> tuple[list[GestureSegment], int]:
    """Gesture segments separated by idle gaps (lengths jittered +-20 %) and the end time, µs."""
    segments, t = [], start_us
    for label in labels:
        t += int(idle_us * rng.uniform(0.8, 1.2))
        length = int(gesture_us * rng.uniform(0.8, 1.2))
        segments.append(GestureSegment(_check_label(label), t, t + length))
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
    segments, end_us = _recording_plan(labels, rng, gesture_us, idle_us)
    step_t = np.arange(0, end_us + scene.step_us, scene.step_us, dtype=np.int64)
    shapes = _timeline_shapes(scene, step_t, segments, rng, RAMP_S)
    return _Camera(scene, rng).record(step_t, shapes), segments



# --- the live source ----------------------------------------------------------------------------

PIECE_STEPS = 100  # the worker renders this many steps (100 ms at 128x128) at a time


class SimulatorSource:
    """A virtual camera for live use: the simulated person cycles through the gestures forever.

    Follows the source protocol of ``stream.sources``. Each cycle is a new person and scene doing
    every class once in random order (or ``labels``), each gesture preceded by an idle period; it is
    rendered incrementally (100 ms at a time, a few pieces ahead) by a worker thread, so memory is
    bounded and nothing is pre-generated. Chunks of ``chunk_us`` event time are paced on a monotonic
    clock at ``speed`` x real time (``None``: as fast as the simulator runs, about 10x real time at
    128x128 on one core). Events have the canonical top-left origin, t from 0 µs. ``clock_us()``
    is exact: the end of the newest chunk handed over (a chunk holds the events in its
    ``(start, end]``), so it never runs ahead of events still being rendered.

    Load testing: ``rate_scale=k`` replicates every event k times (copy j shifted by a fixed pixel
    offset, wrapping round the sensor; time order kept; one Numba pass, ``_replicate``: about 230 M
    output events/s on one core of the 2-core test machine, 6x the NumPy repeat/tile it replaced):
    ~50-100k ev/s x k, so k=100..500 gives 5-50 M ev/s. ``extra_noise_hz`` adds uniform random events at that total rate (sorted merge,
    fine up to a few M ev/s).

    Args:
        sensor_size: pixels.
        seed: same seed, same stream.
        speed: pace factor (1.0 = real time), or None for no pacing.
        gesture_us, idle_us: typical gesture and idle lengths (each varies +-20 %).
        duration_s: end the stream after this much event time; None = forever.
        chunk_us: event time per yielded chunk.
        labels: the classes to cycle through (default all 11).
        rate_scale, extra_noise_hz: see above.
    """

    def __init__(
        self,
        *,
        sensor_size: SensorSize = DEFAULT_SENSOR,
        seed: int = 0,
        speed: float | None = 1.0,
        gesture_us: int = DEFAULT_GESTURE_US,
        idle_us: int = DEFAULT_IDLE_US,
        duration_s: float | None = None,
        chunk_us: int = 2000,
        labels: Sequence[int] | None = None,
        rate_scale: int = 1,
        extra_noise_hz: float = 0.0,
    ) -> None:
        self.sensor_size = SensorSize(*sensor_size).validated()
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None, got {speed}")
        if gesture_us <= 0 or idle_us < 0 or chunk_us <= 0:
            raise ValueError(f"need gesture_us > 0, idle_us >= 0, chunk_us > 0; got {gesture_us}, {idle_us}, {chunk_us}")
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration_s must be > 0 or None, got {duration_s}")
        if int(rate_scale) < 1 or extra_noise_hz < 0:
            raise ValueError(f"need rate_scale >= 1 and extra_noise_hz >= 0, got {rate_scale}, {extra_noise_hz}")
        self.labels = [_check_label(label) for label in (range(NUM_CLASSES) if labels is None else labels)]
        if not self.labels:
            raise ValueError("labels must name at least one class")
        self.name = f"simulator (seed {seed})"
        self.seed = seed
        self.speed = speed
        self.gesture_us, self.idle_us, self.chunk_us = int(gesture_us), int(idle_us), int(chunk_us)
        self.duration_us = None if duration_s is None else int(duration_s * 1e6)
        self.rate_scale, self.extra_noise_hz = int(rate_scale), float(extra_noise_hz)
        self._stop = threading.Event()
        self._truth_lock = threading.Lock()
        self._truth: list[GestureSegment] = []
        self._worker: threading.Thread | None = None
        self._iterated = False
        self._clock_us: int | None = None  # end of the newest chunk handed over: no later event before it

    # -- protocol --

    def stop(self) -> None:
        """End iteration (from any thread) within about IDLE_YIELD_S."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=5)

    def __enter__(self) -> "SimulatorSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def clock_us(self) -> int | None:
        """Stream time (µs) before which no further event will come: the end of the newest chunk
        taken by the consumer (events of later chunks have ``t`` > it); None before the first.
        Exact, not estimated: while rendering lags behind the pace, the clock waits for it."""
        return self._clock_us

    def drain_truth(self) -> list[GestureSegment]:
        """Gesture segments whose start has been emitted since the last call (stream µs)."""
        with self._truth_lock:
            segments, self._truth = self._truth, []
        return segments

    def __iter__(self) -> Iterator[np.ndarray]:
        from stream.sources import IDLE_YIELD_S

        if self._iterated:
            raise RuntimeError("a SimulatorSource is iterated once; open a new one to start again")
        self._iterated = True
        pieces: queue.Queue = queue.Queue(maxsize=4)
        self._worker = threading.Thread(target=self._produce, args=(pieces,), name="simulator", daemon=True)
        self._worker.start()
        amplify_rng = np.random.default_rng([self.seed, 1])
        upcoming: list[GestureSegment] = []
        clock_start: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    item = pieces.get(timeout=IDLE_YIELD_S)
                except queue.Empty:
                    yield empty_events()
                    continue
                if isinstance(item, BaseException):
                    raise item
                events, piece_start, piece_end, segments = item
                upcoming.extend(segments)
                if clock_start is None:
                    clock_start = time.monotonic() - piece_start * 1e-6 / (self.speed or 1.0)
                chunk_ends = np.arange(piece_start + self.chunk_us, piece_end + self.chunk_us, self.chunk_us)
                chunk_ends[-1] = piece_end
                if self.duration_us is not None:
                    chunk_ends = np.unique(np.minimum(chunk_ends, self.duration_us))
                cuts = np.searchsorted(events["t"], chunk_ends, side="right")
                previous_cut, chunk_start = 0, piece_start
                for chunk_end, cut in zip(chunk_ends.tolist(), cuts.tolist()):
                    if self.speed is not None:  # paced: wait, still yielding every IDLE_YIELD_S
                        due = clock_start + chunk_end * 1e-6 / self.speed
                        while (wait := due - time.monotonic()) > 0:
                            if self._stop.wait(min(wait, IDLE_YIELD_S)):
                                return
                            if wait > IDLE_YIELD_S:
                                yield empty_events()
                    if self._stop.is_set():
                        return
                    if upcoming and upcoming[0].start_us <= chunk_end:
                        started = [segment for segment in upcoming if segment.start_us <= chunk_end]
                        upcoming = upcoming[len(started):]
                        with self._truth_lock:
                            self._truth.extend(started)
                    yield self._amplify(events[previous_cut:cut], chunk_start, chunk_end, amplify_rng)
                    # Set once the consumer is back for more (it has sent the chunk): a clock read
                    # while the chunk is still in its hands could announce a time after its events.
                    self._clock_us = chunk_end
                    previous_cut, chunk_start = cut, chunk_end
                    if self.duration_us is not None and chunk_end >= self.duration_us:
                        return
        finally:
            self._stop.set()

    # -- internals --

    def _produce(self, pieces: queue.Queue) -> None:
        """Worker thread: render cycle after cycle, piece by piece, into the bounded queue."""

        def put(item: object) -> bool:
            while not self._stop.is_set():
                try:
                    pieces.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            rng = np.random.default_rng(self.seed)
            cycle_start = piece_start = 0
            while not self._stop.is_set():
                scene = draw_scene(rng, self.sensor_size)
                camera = _Camera(scene, np.random.default_rng(rng.integers(1 << 62)))
                order = rng.permutation(self.labels)
                segments, end_us = _recording_plan(order, rng, self.gesture_us, self.idle_us, start_us=cycle_start)
                step_t = np.arange(cycle_start, end_us + scene.step_us, scene.step_us, dtype=np.int64)
                shapes = _timeline_shapes(scene, step_t, segments, rng, RAMP_S)
                for first in range(0, len(step_t), PIECE_STEPS):
                    last = min(first + PIECE_STEPS, len(step_t))
                    events = camera.record(step_t[first:last], shapes[first:last])
                    piece_end = int(step_t[last - 1])
                    starting = [seg for seg in segments if piece_start < seg.start_us <= piece_end]
                    if piece_end > piece_start or len(events):
                        if not put((events, piece_start, piece_end, starting)):
                            return
                    piece_start = piece_end
                    if self.duration_us is not None and piece_end >= self.duration_us:
                        return
                cycle_start = int(step_t[-1])
                # Free this cycle's ~11 MB of body shapes before rendering the next: two alive at once
                # made the source's resident memory climb in 10 MB steps over a long run.
                del shapes, step_t, events, camera
        except BaseException as error:  # hand the failure to the iterating thread
            put(error)

    def _amplify(self, chunk: np.ndarray, start_us: int, end_us: int, rng: np.random.Generator) -> np.ndarray:
        """Apply ``rate_scale`` (replicated, shifted copies) and ``extra_noise_hz`` to one chunk."""
        width, height = self.sensor_size
        if self.rate_scale > 1 and len(chunk):
            copies = np.zeros(len(chunk) * self.rate_scale, EVENT_DTYPE)  # zeros: no stale bytes in the padding
            _replicate(chunk["t"], chunk["x"], chunk["y"], chunk["p"], self.rate_scale, width, height,
                       copies["t"], copies["x"], copies["y"], copies["p"])  # fmt: skip
            chunk = copies
        if self.extra_noise_hz > 0 and end_us > start_us:
            count = rng.poisson(self.extra_noise_hz * (end_us - start_us) * 1e-6)
            noise = np.zeros(count, EVENT_DTYPE)
            noise["t"] = np.sort(rng.integers(start_us + 1, end_us + 1, count))
            noise["x"], noise["y"] = rng.integers(0, width, count), rng.integers(0, height, count)
            noise["p"] = rng.integers(0, 2, count)
            # Sorted merge into zeros (np.insert leaves stale heap bytes in the padding, sent on the wire).
            merged = np.zeros(len(chunk) + count, EVENT_DTYPE)
            at = np.searchsorted(chunk["t"], noise["t"], side="right") + np.arange(count)
            from_chunk = np.ones(len(merged), dtype=bool)
            from_chunk[at] = False
            merged[at], merged[from_chunk] = noise, chunk
            chunk = merged
        return chunk


# --- the DVS128-Gesture-style data set ----------------------------------------------------------


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
    events["y"] = sensor_size.height - 1 - events["y"]  # jAER / DVS128 Gesture: y origin at the bottom
    from stream.aedat31 import write_aedat31, write_gesture_labels

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
    one person and lighting per recording: ``userNN_<lighting>.aedat`` (AEDAT 3.1, y stored
    bottom-up as jAER does), ``userNN_<lighting>_labels.csv``, and ``trials_to_train.txt`` /
    ``trials_to_test.txt`` split by user (the last ``test_fraction`` of users test, at least one
    when there are two or more). Same arguments -> same bytes, whatever ``workers``.
    """
    from stream.aedat31 import write_trials

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


def main(argv: list[str]) -> int:
    """``python -m stream simulate --out DIR --samples N --seed S [--sensor WxH]`` (or ``--montage PNG``)."""
    parser = argparse.ArgumentParser(
        prog="python -m stream simulate",
        description="Write a synthetic DVS128-Gesture-style data set, or a PNG montage of the classes.",
    )
    parser.add_argument("--out", type=Path, help="output folder for the data set")
    parser.add_argument("--samples", type=int, default=NUM_CLASSES * 10, help="number of gesture samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sensor", type=SensorSize.parse, default=DEFAULT_SENSOR, help="WIDTHxHEIGHT pixels")
    parser.add_argument("--gesture-ms", type=int, default=DEFAULT_GESTURE_US // 1000)
    parser.add_argument("--idle-ms", type=int, default=DEFAULT_IDLE_US // 1000)
    parser.add_argument("--workers", type=int, default=1, help="processes (the data set is the same for any)")
    parser.add_argument("--montage", type=Path, help="write a PNG with one picture per class instead")
    args = parser.parse_args(argv[1:])
    if args.montage is not None:
        render_montage(args.montage, seed=args.seed, sensor_size=args.sensor)
        print(f"wrote {args.montage}")
        return 0
    if args.out is None:
        raise ValueError("give --out DIR (the data set folder) or --montage PNG")
    started = time.perf_counter()
    paths = write_dataset(args.out, samples=args.samples, seed=args.seed, sensor_size=args.sensor,
                          gesture_us=args.gesture_ms * 1000, idle_us=args.idle_ms * 1000, workers=args.workers)
    test_count = len((args.out / "trials_to_test.txt").read_text().split())
    print(f"wrote {len(paths)} recordings ({args.samples} gestures, {test_count} test recordings) "
          f"to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


# --- picture of the classes ------------------------------------------------------------------


def accumulate_image(events: np.ndarray, sensor_size: SensorSize) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` picture of accumulated events: ON orange, OFF blue, on dark grey."""
    width, height = sensor_size
    counts = np.zeros((2, height * width))
    np.add.at(counts, (events["p"].astype(np.intp), events["y"].astype(np.intp) * width + events["x"]), 1)
    scale = max(1.0, float(np.percentile(counts.sum(axis=0), 99)))
    off, on = np.clip(counts / scale, 0, 1).reshape(2, height, width, 1)
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
