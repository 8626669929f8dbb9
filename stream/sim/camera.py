"""The DVS pixel array: rendered intensity frames in, events out (ESIM / v2e style).

Each pixel keeps the log intensity at its last event (its reference). At every render step the
frame's linear intensity (times the light, plus ``LOG_EPS``: dark pixels are less sensitive, as a
real photoreceptor is) is compared with it; for every ON or OFF contrast threshold crossed the pixel
emits one event, timestamped by linear interpolation inside the step, unless it is still in its
refractory period. ``Pixels`` holds the per-pixel parameters:

* contrast thresholds (ON and OFF, log intensity) with a per-pixel mismatch;
* a refractory period;
* a bandwidth limit (dim light): the photoreceptor follows the log intensity through a first-order
  low-pass filter whose cutoff grows with the pixel's light, so fast changes (mains flicker, quick
  hands) are smoothed and delayed;
* leak: the reference creeps down, so a pixel that sees nothing new still fires an ON event now and
  then;
* background activity (Poisson, per pixel) and hot pixels (a few pixels firing at a high rate).

Without a bandwidth limit or leak (most scenes) the kernel takes a fast path: it compares linear
intensities with the two linear values that would cross a threshold and takes a log only where one
is crossed. Same inputs, same events, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from stream.events import EVENT_DTYPE, SensorSize, empty_events

MAX_EVENTS_PER_PIXEL_STEP = 8
LOG_EPS = 0.02  # log(I + eps)


@dataclass(frozen=True)
class Pixels:
    """The DVS pixels of one scene (``[H, W]`` arrays are per pixel).

    Attributes:
        threshold_on, threshold_off: contrast thresholds, log intensity.
        refractory_us: dead time after an event, µs.
        cutoff_hz: photoreceptor bandwidth at the scene's mean light (None: unlimited).
        cutoff_reference: the linear intensity at which the cutoff is ``cutoff_hz``.
        leak_hz: leak events per second per pixel (0: none).
        noise_hz: background activity per pixel, events per second.
        hot_pixels, hot_rates_hz: flat indices and rates of pixels that fire on their own.
    """

    threshold_on: np.ndarray
    threshold_off: np.ndarray
    refractory_us: int
    cutoff_hz: float | None
    cutoff_reference: float
    leak_hz: np.ndarray
    noise_hz: float
    hot_pixels: np.ndarray
    hot_rates_hz: np.ndarray

    @property
    def fast(self) -> bool:
        """Whether the kernel's fast path applies (no bandwidth limit, no leak)."""
        return self.cutoff_hz is None and not self.leak_hz.any()

    @classmethod
    def draw(
        cls, rng: np.random.Generator, sensor_size: SensorSize, *, noise_hz: tuple[float, float] = (0.02, 0.3),
        leak_hz: tuple[float, float] = (0.0, 0.0), cutoff_hz: tuple[float, float] | None = None,
        illumination: float = 1.0, threshold: float | None = None,
    ) -> "Pixels":  # fmt: skip
        """Random pixels: base threshold 0.1-0.5 (log-uniform; ``threshold`` fixes it), ON/OFF ratio
        0.75-1.33, mismatch sigma 2-10 %, refractory 50 µs - 3 ms (log-uniform), 0-8 hot pixels at
        5-300 Hz; noise, leak and cutoff from the given ranges (a lighting family's)."""
        width, height = sensor_size
        base = math.exp(rng.uniform(math.log(0.1), math.log(0.5)))
        base = base if threshold is None else float(threshold)
        ratio = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
        mismatch = rng.uniform(0.02, 0.1)

        def thresholds(value: float) -> np.ndarray:
            return np.maximum(0.05, value * (1 + mismatch * rng.standard_normal((height, width))))

        leak = rng.uniform(*leak_hz)
        hot_count = int(rng.integers(0, 9))
        return cls(
            threshold_on=thresholds(base * math.sqrt(ratio)),
            threshold_off=thresholds(base / math.sqrt(ratio)),
            refractory_us=int(math.exp(rng.uniform(math.log(50), math.log(3000)))),
            cutoff_hz=None if cutoff_hz is None else float(rng.uniform(*cutoff_hz)),
            cutoff_reference=0.5 * illumination,
            leak_hz=leak * rng.uniform(0.5, 1.5, (height, width)) if leak > 0 else np.zeros((height, width)),
            noise_hz=float(rng.uniform(*noise_hz)),
            hot_pixels=rng.choice(width * height, size=hot_count, replace=False),
            hot_rates_hz=rng.uniform(5.0, 300.0, size=hot_count),
        )


@njit(cache=True, nogil=True)
def _dvs_steps(
    frames, light, step_t, threshold_on, threshold_off, refractory_us, fast, cutoff_hz, cutoff_reference, leak_hz,
    log_ref, upper, lower, level_prev, last_event_t, previous_t, first, out_t, out_x, out_y, out_p, count,
):  # pragma: no cover - compiled
    """Turn frames ``[n, H, W]`` (linear intensity, times ``light[s]``) at ``step_t[s]``, from step
    ``first`` on, into events appended to the out arrays from ``count``. Returns (count, next step):
    it stops early, before a step, when the arrays might overflow. ``level_prev`` is the linear
    intensity of the previous step on the fast path, its (filtered) log intensity otherwise."""
    n, height, width = frames.shape
    capacity = out_t.shape[0]
    t0 = previous_t
    for s in range(first, n):
        if count + height * width * MAX_EVENTS_PER_PIXEL_STEP > capacity:
            return count, s
        t1 = step_t[s]
        span = t1 - t0
        dt_s = span * 1e-6
        for y in range(height):
            for x in range(width):
                value = frames[s, y, x] * light[s] + LOG_EPS
                if fast:
                    if lower[y, x] < value < upper[y, x]:  # common case: no threshold crossed, no log
                        level_prev[y, x] = value
                        continue
                    level = math.log(value)
                    before = math.log(level_prev[y, x])
                    level_prev[y, x] = value
                    ref = log_ref[y, x]
                else:
                    level = math.log(value)
                    before = level_prev[y, x]
                    if cutoff_hz > 0:  # first-order low-pass, cutoff growing with the light
                        cutoff = cutoff_hz * min(4.0, max(0.05, value / cutoff_reference))
                        level = before + min(1.0, 2 * math.pi * cutoff * dt_s) * (level - before)
                    level_prev[y, x] = level
                    ref = log_ref[y, x] - leak_hz[y, x] * threshold_on[y, x] * dt_s
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
                if fast:
                    upper[y, x] = math.exp(ref + threshold_on[y, x])
                    lower[y, x] = math.exp(ref - threshold_off[y, x])
        t0 = t1
    return count, n


class Camera:
    """The pixel array of one scene; keeps its state so a recording can be made in pieces.

    Args:
        pixels: the pixels' parameters.
        noise_rng: draws background activity and hot-pixel events.
    """

    def __init__(self, pixels: Pixels, noise_rng: np.random.Generator) -> None:
        self.pixels = pixels
        self.noise_rng = noise_rng
        height, width = pixels.threshold_on.shape
        self.sensor_size = SensorSize(width, height)
        self.log_ref = np.zeros((height, width))
        self.upper = np.zeros((height, width))
        self.lower = np.zeros((height, width))
        self.level_prev = np.zeros((height, width))
        self.last_event_t = np.full((height, width), -(1 << 40), dtype=np.int64)
        self.previous_t: int | None = None  # time of the last step seen, µs

    def record(self, step_t: np.ndarray, frames: np.ndarray, light: np.ndarray) -> np.ndarray:
        """Events (time-ordered) of the steps at ``step_t`` (µs, increasing, after the previous
        call's), whose rendered frames ``[n, H, W]`` are scaled by ``light [n]``."""
        pixels = self.pixels
        step_t = np.asarray(step_t, dtype=np.int64)
        light = np.asarray(light, dtype=np.float64)
        if len(step_t) == 0:
            return empty_events()
        first = 0
        if self.previous_t is None:  # the first frame: the pixels adapt to it, no events
            value = frames[0] * light[0] + LOG_EPS
            self.log_ref[:] = np.log(value)
            self.level_prev[:] = value if pixels.fast else self.log_ref
            self.upper[:] = np.exp(self.log_ref + pixels.threshold_on)
            self.lower[:] = np.exp(self.log_ref - pixels.threshold_off)
            self.previous_t = int(step_t[0])
            first = 1
        start_t = self.previous_t
        pixel_count = frames[0].size
        capacity = max(1 << 16, pixel_count * MAX_EVENTS_PER_PIXEL_STEP * 2, pixel_count * len(step_t) // 16)
        out_t = np.empty(capacity, np.int64)
        out_x, out_y = np.empty(capacity, np.int16), np.empty(capacity, np.int16)
        out_p = np.empty(capacity, np.int8)
        frames = np.ascontiguousarray(frames, dtype=np.float64)
        count, step = 0, first
        while step < len(step_t):
            count, next_step = _dvs_steps(
                frames, light, step_t, pixels.threshold_on, pixels.threshold_off, pixels.refractory_us, pixels.fast,
                pixels.cutoff_hz or 0.0, pixels.cutoff_reference, pixels.leak_hz, self.log_ref, self.upper,
                self.lower, self.level_prev, self.last_event_t, self.previous_t, step, out_t, out_x, out_y, out_p,
                count,
            )  # fmt: skip
            if next_step > step:
                self.previous_t = int(step_t[next_step - 1])
            step = next_step
            if step < len(step_t):  # the arrays might overflow: grow them and go on
                capacity *= 2
                out_t, out_x, out_y, out_p = (np.resize(a, capacity) for a in (out_t, out_x, out_y, out_p))
        self.previous_t = int(step_t[-1])
        noise = self._noise(start_t, self.previous_t)
        events = np.zeros(count + len(noise), EVENT_DTYPE)  # zeroed padding; np.concatenate would drop it
        events[count:] = noise
        events["t"][:count], events["x"][:count], events["y"][:count] = out_t[:count], out_x[:count], out_y[:count]
        events["p"][:count] = out_p[:count]
        return events[np.argsort(events["t"], kind="stable")]

    def _noise(self, start_t: int, end_t: int) -> np.ndarray:
        """Background activity and hot pixels in (start_t, end_t] µs."""
        pixels, rng = self.pixels, self.noise_rng
        width, height = self.sensor_size
        duration_s = (end_t - start_t) * 1e-6
        if duration_s <= 0:
            return empty_events()
        ba_count = rng.poisson(pixels.noise_hz * width * height * duration_s)
        hot_counts = rng.poisson(pixels.hot_rates_hz * duration_s)
        pixel = np.concatenate([rng.integers(0, width * height, ba_count), np.repeat(pixels.hot_pixels, hot_counts)])
        noise = np.zeros(len(pixel), EVENT_DTYPE)
        noise["t"] = rng.integers(start_t + 1, end_t + 1, len(pixel))
        noise["x"], noise["y"] = pixel % width, pixel // width
        noise["p"] = rng.integers(0, 2, len(pixel))
        return noise
