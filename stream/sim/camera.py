"""The simulated DVS camera: a scene (person, background, light, pixel parameters) rendered every
``step_us`` and turned into events by an ESIM/v2e-style pixel model.

How events are made: a person made of capsules (torso, neck, head, upper arms, forearms, hands;
anti-aliased edges, ``stream.sim.body``) in front of a smooth textured background is rendered every
``step_us`` (1 ms for a 128x128 sensor, finer for bigger sensors, so hands move < 0.5 pixel per
step). Each pixel keeps the log intensity at its last event; whenever the new log intensity differs
from it by more than the pixel's ON or OFF contrast threshold (per-pixel mismatch, sigma 0.02-0.05)
it emits one event per threshold crossed, timestamped by linear interpolation inside the step,
unless it is still in its refractory period. Background-activity noise (Poisson, per pixel) and a
few hot pixels are added. Renderer and pixel model run in one Numba kernel (loop over steps inside).

Randomised per recording (seeded, ``draw_scene``): body size and position, lighting (log offset and
noise rate), clothing and skin intensities, background, contrast thresholds, refractory period,
noise, camera shake. Events use the canonical top-left origin (y down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from stream.events import EVENT_DTYPE, SensorSize, empty_events
from stream.sim.body import SHAPE_NAMES, SKIN_SHAPES, Body, draw_body

DEFAULT_SENSOR = SensorSize(128, 128)
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


class Camera:
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
