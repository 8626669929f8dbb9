"""What the simulated camera films: one randomised scene per recording.

A ``Scene`` fixes everything that does not move with the gesture: which renderer draws the person
(``look``) and how they look, the person's body (``stream.sim.body``), how the camera frames them
(distance, position, roll, height and tilt, slow drift, shake), the background, the light (level,
mains flicker, low light), passing distractors, and the DVS pixels (``stream.sim.camera.Pixels``:
contrast thresholds with mismatch, refractory period, bandwidth, leak, noise, hot pixels).
``draw_scene`` draws all of it from a seeded generator; ``PARAMETERS`` lists every random parameter
with its range (the README's table is made from it).

Coordinates are sensor pixels, origin top-left, x right, y down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream.events import SensorSize
from stream.sim.body import Body, draw_body
from stream.sim.camera import Pixels
from stream.sim.figures import draw_appearance

DEFAULT_SENSOR = SensorSize(128, 128)
LOOKS = ("capsules", "shaded", "polygons")  # the renderers of the person (``stream.sim.figures``)
# The looks drawn when none is asked for (the live simulator, ``simulate``): the built-in model's
# training looks. ``polygons`` is drawn only on request, and stays unseen by the built-in model.
BUILT_IN_LOOKS = ("capsules", "shaded")
MIN_STEP_US, MAX_STEP_US = 500, 1000


@dataclass(frozen=True)
class Lighting:
    """A lighting family: ranges the scene's light is drawn from."""

    illumination: tuple[float, float]  # linear scale of every intensity
    noise_hz: tuple[float, float]  # background activity per pixel
    flicker_probability: float  # mains flicker at 100 or 120 Hz (twice the mains frequency)
    flicker_depth: tuple[float, float]  # relative modulation of the light
    cutoff_hz: tuple[float, float] | None  # pixel bandwidth at the scene's light (low light), None: unlimited
    leak_hz: tuple[float, float]  # leak events per pixel


# DVS128 Gesture's five lighting conditions, plus dim light (bandwidth-limited, leaky, noisy pixels).
# Flicker depths keep mains flicker mostly under the contrast threshold: only low-threshold pixels
# follow it, as in DVS128 Gesture's fluorescent recordings (a flicker above threshold would make every
# pixel fire twice per cycle, millions of events per second).
LIGHTINGS: dict[str, Lighting] = {
    "natural": Lighting((1.0, 3.0), (0.02, 0.15), 0.0, (0.0, 0.0), None, (0.0, 0.0)),
    "lab": Lighting((0.8, 1.6), (0.03, 0.2), 0.3, (0.003, 0.02), None, (0.0, 0.0)),
    "led": Lighting((0.5, 1.3), (0.05, 0.3), 0.5, (0.005, 0.04), None, (0.0, 0.0)),
    "fluorescent": Lighting((0.5, 1.2), (0.05, 0.3), 1.0, (0.01, 0.06), None, (0.0, 0.0)),
    "fluorescent_led": Lighting((0.4, 1.0), (0.08, 0.4), 0.8, (0.01, 0.05), None, (0.0, 0.0)),
    "dim": Lighting((0.05, 0.25), (0.2, 1.0), 0.3, (0.01, 0.06), (15.0, 150.0), (0.1, 1.0)),
}
BACKGROUNDS = ("smooth", "textured", "cluttered")


@dataclass(frozen=True)
class Framing:
    """How the camera sees the person: a transform of the person's pixels (roll about the body's
    centre, vertical foreshortening and keystone from the camera's height and tilt), a slow drift
    and a shake of the whole view (pixels)."""

    center: tuple[float, float]  # the point the transform turns about (the body's chest)
    zoom: float  # the person's size as seen (distance); 1 = as the body was drawn
    roll: float  # radians, clockwise as seen
    y_scale: float  # vertical foreshortening: a camera above or below the person
    keystone: float  # relative width change per pixel down the image (tilt)
    drift_px: tuple[float, float]  # how far the view drifts at most (x, y pixels): a creeping tripod
    drift_period_s: float  # it drifts out and back over this long (bounded: a recording can last minutes)
    shake_amplitude_px: np.ndarray  # [2, 2] (x, y) x two sinusoids
    shake_frequency_hz: np.ndarray  # [2, 2]
    shake_phase: np.ndarray  # [2, 2]

    def view_shift(self, t_us: np.ndarray) -> np.ndarray:
        """Drift plus shake ``[n, 2]`` (x, y, pixels) of the whole view at times ``t_us``."""
        t_s = np.asarray(t_us, dtype=np.float64) * 1e-6
        waves = self.shake_amplitude_px * np.sin(2 * np.pi * self.shake_frequency_hz * t_s[:, None, None] + self.shake_phase)
        drift = 0.5 * (1.0 - np.cos(2 * np.pi * t_s / self.drift_period_s))  # 0 at the start, 1 at its farthest
        return waves.sum(axis=2) + drift[:, None] * np.asarray(self.drift_px)

    def apply(self, x: np.ndarray, y: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person coordinates (``[n, ...]`` pixels) as the camera sees them at the steps of ``shift [n, 2]``."""
        cx, cy = self.center
        dx, dy = (x - cx) * self.zoom, (y - cy) * self.y_scale * self.zoom
        dx = dx * (1.0 + self.keystone * dy)
        cos, sin = math.cos(self.roll), math.sin(self.roll)
        extra = (slice(None),) + (None,) * (x.ndim - 1)
        return cx + cos * dx - sin * dy + shift[extra + (0,)], cy + sin * dx + cos * dy + shift[extra + (1,)]

    @property
    def scale(self) -> float:
        """How much the transform scales lengths, on average (radii scale by it)."""
        return self.zoom * math.sqrt(abs(self.y_scale))


@dataclass(frozen=True)
class Distractor:
    """Something else that moves through the view: an occluding shape or a person passing by.

    It travels from ``start`` to ``end`` (pixels, its centre) between ``start_us`` and ``end_us``
    of the recording; ``in_front`` draws it over the subject. A person is a head and a torso
    that bob as they walk; a shape is one capsule of ``length`` x ``2 * radius`` turned by ``angle``."""

    kind: str  # "shape" or "person"
    start: tuple[float, float]
    end: tuple[float, float]
    start_us: int
    end_us: int
    radius: float
    length: float
    angle: float
    value: float  # linear intensity
    in_front: bool

    def capsules(self, t_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[n, k, 5]`` capsules (ax, ay, bx, by, radius) and ``[n, k]`` visibility (0/1) at ``t_us``."""
        t = np.asarray(t_us, dtype=np.float64)
        fraction = np.clip((t - self.start_us) / max(1, self.end_us - self.start_us), 0.0, 1.0)
        visible = ((t >= self.start_us) & (t <= self.end_us)).astype(np.float64)
        cx = self.start[0] + fraction * (self.end[0] - self.start[0])
        cy = self.start[1] + fraction * (self.end[1] - self.start[1])
        if self.kind == "shape":
            ux, uy = 0.5 * self.length * math.cos(self.angle), 0.5 * self.length * math.sin(self.angle)
            shape = np.stack([cx - ux, cy - uy, cx + ux, cy + uy, np.full_like(cx, self.radius)], axis=1)
            return shape[:, None, :], visible[:, None]
        bob = 0.04 * self.radius * np.sin(2 * np.pi * t * 1e-6 * 1.8)  # two steps a second
        torso = np.stack([cx, cy + bob, cx, cy + bob + 1.6 * self.radius, np.full_like(cx, self.radius)], axis=1)
        head_y = cy + bob - 1.6 * self.radius
        head = np.stack([cx, head_y, cx, head_y, np.full_like(cx, 0.55 * self.radius)], axis=1)
        return np.stack([torso, head], axis=1), np.repeat(visible[:, None], 2, axis=1)


@dataclass(frozen=True)
class Scene:
    """Everything fixed for one recording: who stands where, in what light, seen by which pixels."""

    sensor_size: SensorSize
    look: str  # which renderer draws the person (``LOOKS``)
    lighting: str
    body: Body
    appearance: dict  # the look's colours, textures and clothes (``stream.sim.figures``)
    background_kind: str
    background: np.ndarray  # [H + 2*pad, W + 2*pad] linear intensity
    pad: int  # background pixels beyond each sensor edge (drift and shake stay inside)
    framing: Framing
    illumination: float
    flicker_hz: float  # 0: steady light
    flicker_depth: float
    flicker_phase: float
    distractors: tuple[Distractor, ...]
    pixels: Pixels
    step_us: int

    def light(self, t_us: np.ndarray) -> np.ndarray:
        """The light's scale of every intensity at ``t_us`` (illumination times mains flicker)."""
        t_s = np.asarray(t_us, dtype=np.float64) * 1e-6
        if self.flicker_hz <= 0:
            return np.full(t_s.shape, self.illumination)
        return self.illumination * (1.0 + self.flicker_depth * np.sin(2 * np.pi * self.flicker_hz * t_s + self.flicker_phase))


def default_step_us(sensor_size: SensorSize) -> int:
    """Internal render step: 1 ms at 128 px, finer for bigger sensors (at least 500 µs)."""
    return int(np.clip(round(1000 * 128 / min(sensor_size)), MIN_STEP_US, MAX_STEP_US))


# --- backgrounds -------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float, low: float, high: float) -> np.ndarray:
    """Bilinearly interpolated random values on a grid of ``cell`` pixels."""
    cell = max(2.0, cell)
    coarse = rng.uniform(low, high, (int(height / cell) + 3, int(width / cell) + 3))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - wx) + coarse[y0][:, x0 + 1] * wx
    bottom = coarse[y0 + 1][:, x0] * (1 - wx) + coarse[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _rectangles(rng: np.random.Generator, image: np.ndarray, count: int, size: tuple[float, float]) -> np.ndarray:
    """Soft-edged rectangles (doors, posters, shelves) of random intensity pasted onto ``image``."""
    height, width = image.shape
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    for _ in range(count):
        left, top = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        right, bottom = left + rng.uniform(*size) * width, top + rng.uniform(*size) * height
        inside = np.minimum.reduce([grid_x - left, right - grid_x, grid_y - top, bottom - grid_y])
        cover = np.clip(inside / 1.5 + 0.5, 0, 1)
        image = image * (1 - cover) + rng.uniform(0.2, 1.3) * cover
    return image


def draw_background(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """A background of linear intensities ~0.2..1.3: ``smooth`` (a wall with a few large objects),
    ``textured`` (fine random texture or stripes: events wherever the view moves) or ``cluttered``
    (many objects of all sizes)."""
    scale = min(height, width)
    image = _smooth_noise(rng, height, width, scale / 10, 0.35, 1.0)
    if kind == "smooth":
        return _rectangles(rng, image, int(rng.integers(1, 4)), (0.1, 0.5))
    if kind == "textured":
        fine = _smooth_noise(rng, height, width, rng.uniform(1.5, 4.0), -0.25, 0.25)
        if rng.random() < 0.5:  # stripes or planks
            angle, period = rng.uniform(0, np.pi), rng.uniform(3.0, 12.0)
            grid_y, grid_x = np.mgrid[0:height, 0:width]
            fine = fine + 0.2 * np.sign(np.sin(2 * np.pi * (grid_x * np.cos(angle) + grid_y * np.sin(angle)) / period))
        return np.clip(image * (1.0 + fine), 0.05, 2.0)
    if kind == "cluttered":
        return _rectangles(rng, image, int(rng.integers(6, 15)), (0.03, 0.3))
    raise ValueError(f"background must be one of {BACKGROUNDS}, got {kind!r}")


# --- the scene ---------------------------------------------------------------------------------


def _distractors(rng: np.random.Generator, sensor_size: SensorSize, scale: float, duration_us: int) -> tuple:
    """None (most recordings), an occluding shape, or a person passing, at a random time."""
    width, height = sensor_size
    roll = rng.random()
    if roll < 0.6 or duration_us <= 0:
        return ()
    kind = "shape" if roll < 0.85 else "person"
    crossing_us = int(rng.uniform(0.5, 3.0) * 1e6)
    start_us = int(rng.uniform(-0.5, 1.0) * duration_us)
    side = rng.choice([-1.0, 1.0])
    radius = scale * (rng.uniform(0.05, 0.2) if kind == "shape" else rng.uniform(0.08, 0.25))
    y0, y1 = rng.uniform(0.0, 1.0, 2) * height
    start = (width / 2 - side * (width / 2 + 3 * radius), y0 if kind == "shape" else height * rng.uniform(0.3, 0.6))
    end = (width / 2 + side * (width / 2 + 3 * radius), y1 if kind == "shape" else start[1])
    return (Distractor(kind, start, end, start_us, start_us + crossing_us, radius, rng.uniform(0.0, 4.0) * radius,
                       rng.uniform(0, np.pi), rng.uniform(0.1, 2.5), bool(rng.random() < 0.5)),)  # fmt: skip


def _drawn(rng: np.random.Generator, value: float | tuple[float, float] | None, *, log: bool) -> float | None:
    """``value`` as it is, or drawn from its ``(low, high)`` range (log-uniform when ``log``)."""
    if not isinstance(value, tuple):
        return value
    low, high = value
    if log and low <= 0:
        raise ValueError(f"a range drawn log-uniform needs low > 0, got {value}")
    return float(np.exp(rng.uniform(np.log(low), np.log(high)))) if log else float(rng.uniform(low, high))


def draw_scene(
    rng: np.random.Generator,
    sensor_size: SensorSize = DEFAULT_SENSOR,
    *,
    look: str | None = None,
    lighting: str | None = None,
    duration_us: int = 0,
    zoom: float | tuple[float, float] | None = None,
    threshold: float | tuple[float, float] | None = None,
    noise_hz: float | tuple[float, float] | None = None,
    flicker_depth: float | tuple[float, float] | None = None,
) -> Scene:
    """Draw a random scene for one recording of ``duration_us`` (distractors pass within it).

    ``look`` and ``lighting`` fix the renderer and the lighting family (default: drawn at random, the
    look from ``BUILT_IN_LOOKS``);
    ``zoom`` (the person's size as seen), ``threshold`` (the pixels' base contrast threshold),
    ``noise_hz`` (background activity per pixel) and ``flicker_depth`` (0: steady light; else 100
    or 120 Hz flicker of that depth) fix one parameter each, for robustness measurements. A
    ``(low, high)`` pair instead widens the parameter's range: zoom, threshold and noise are drawn
    log-uniform in it, and the depth uniform for the scenes whose light flickers (steady light stays
    steady), for training sets that reach beyond the lighting families' ranges.
    """
    sensor_size = SensorSize(*sensor_size).validated()
    width, height = sensor_size
    look = str(rng.choice(BUILT_IN_LOOKS)) if look is None else look
    if look not in LOOKS:
        raise ValueError(f"look must be one of {LOOKS}, got {look!r}")
    lighting = str(rng.choice(list(LIGHTINGS))) if lighting is None else lighting
    if lighting not in LIGHTINGS:
        raise ValueError(f"lighting must be one of {sorted(LIGHTINGS)}, got {lighting!r}")
    light = LIGHTINGS[lighting]
    zoom, threshold, noise_hz = (_drawn(rng, value, log=True) for value in (zoom, threshold, noise_hz))
    body = draw_body(rng, sensor_size)
    short_side = min(width, height)
    drift = rng.uniform(0.0, 0.08 * short_side) * (rng.random() < 0.4)  # px: a tripod that creeps, or none
    drift_angle = rng.uniform(0, 2 * np.pi)
    drift_period_s = rng.uniform(20.0, 60.0)
    pad = int(math.ceil(0.1 * short_side)) + 4
    framing = Framing(
        center=(body.center_x, body.shoulder_y + 0.3 * body.torso_length),
        zoom=1.0 if zoom is None else float(zoom),
        roll=math.radians(rng.uniform(-10.0, 10.0)),
        y_scale=rng.uniform(0.8, 1.1),
        keystone=rng.uniform(-0.002, 0.002) * 128 / short_side,
        drift_px=(drift * math.cos(drift_angle), drift * math.sin(drift_angle)),
        drift_period_s=drift_period_s,
        shake_amplitude_px=rng.uniform(0.0, 0.15, size=(2, 2)) * short_side / 128,
        shake_frequency_hz=rng.uniform(0.3, 3.0, size=(2, 2)),
        shake_phase=rng.uniform(0, 2 * np.pi, size=(2, 2)),
    )
    background_kind = str(rng.choice(BACKGROUNDS, p=(0.5, 0.25, 0.25)))
    background = draw_background(rng, background_kind, height + 2 * pad, width + 2 * pad)
    flicker = rng.random() < light.flicker_probability
    depth = float(rng.uniform(*light.flicker_depth)) if flicker else 0.0
    if isinstance(flicker_depth, tuple):
        depth = float(rng.uniform(*flicker_depth)) if flicker else 0.0
    elif flicker_depth is not None:
        flicker, depth = flicker_depth > 0, float(flicker_depth)
    illumination = float(rng.uniform(*light.illumination))
    noise_range = light.noise_hz if noise_hz is None else (noise_hz, noise_hz)
    pixels = Pixels.draw(rng, sensor_size, noise_hz=noise_range, leak_hz=light.leak_hz, cutoff_hz=light.cutoff_hz,
                         illumination=illumination, threshold=threshold)  # fmt: skip
    return Scene(
        sensor_size=sensor_size,
        look=look,
        lighting=lighting,
        body=body,
        appearance=draw_appearance(rng, look, float(background.mean())),
        background_kind=background_kind,
        background=background,
        pad=pad,
        framing=framing,
        illumination=illumination,
        flicker_hz=float(rng.choice([100.0, 120.0])) if flicker else 0.0,
        flicker_depth=depth,
        flicker_phase=float(rng.uniform(0, 2 * np.pi)),
        distractors=_distractors(rng, sensor_size, body.scale, duration_us),
        pixels=pixels,
        step_us=default_step_us(sensor_size),
    )


# --- the ranges, for the README's simulator table ----------------------------------------------

PARAMETERS: tuple[tuple[str, str, str], ...] = (  # (parameter, range, unit)
    ("renderer", ("capsules (9 flat capsules), shaded (tapered, lit, patterned parts, sleeves, hair, face, fingers) "
                  "or polygons (straight-edged blocks, mittens, one light gradient, defocus; drawn only on request)"),
     "-"),
    ("zoom, roll", "1 (robustness sets: 0.6-1.3; `--zoom LOW:HIGH`: log-uniform); roll -10..10", "x, deg"),
    ("camera height and tilt", "vertical foreshortening 0.8-1.1; keystone +-0.002 per pixel at 128 px", "x"),
    ("camera drift", "40 % of scenes: out to 0-8 % of the short side and back over 20-60 s, any direction", "px"),
    ("camera shake", "two sinusoids per axis, 0-0.15 px (at 128 px), 0.3-3 Hz", "px"),
    ("background", "smooth wall with 1-3 objects 50 %, fine texture or stripes 25 %, cluttered (6-14 objects) 25 %",
     "-"),
    ("lighting family", "natural, lab, led, fluorescent, fluorescent_led (DVS128 Gesture's), dim", "-"),
    ("light level", "natural 1-3, lab 0.8-1.6, led 0.5-1.3, fluorescent 0.5-1.2, fluorescent_led 0.4-1, dim 0.05-0.25",
     "x"),
    ("mains flicker", ("100 or 120 Hz; fluorescent always (depth 0.01-0.06), fluorescent_led 80 % (0.01-0.05), "
                      "led 50 % (0.005-0.04), lab 30 % (0.003-0.02), dim 30 % (0.01-0.06), natural never; "
                      "`--flicker-depth LOW:HIGH` replaces the depth range of the lights that flicker"), "-"),
    ("clothes and skin", "shirt 0.1-0.35 or 1.8-3.2 x the background's mean, skin contrasting with it", "x"),
    ("shaded look", ("shading 0.15-0.6, printed pattern 60 % (amplitude 0-0.45, 0.08-0.35 cycles/px), sleeve folds "
                    "0.05-0.3, long sleeves 60 %, long hair 35 %, build 0.85-1.25 x"), "-"),
    ("polygons look", ("hips 0.65-1.05 x the shoulders, coat 30 % (0.2-0.45 torso lengths, flared), jacket 40 %, "
                      "long sleeves 60 %, hair 85 %, head 0.75-0.95 x as wide as high, light gradient 0-0.6 per body "
                      "scale in any direction, defocus: 1-2 passes of a 3-tap blur of weight 0-0.25 (at 128 px)"), "-"),
    ("distractors", "40 % of recordings: an occluding shape (25 %) or a person passing (15 %), in front or behind",
     "-"),
    ("contrast threshold", ("0.1-0.5 log-uniform (`--threshold LOW:HIGH`: another range); ON/OFF ratio 0.75-1.33; "
                           "per-pixel mismatch sigma 2-10 %"), "log I"),
    ("refractory period", "50 us - 3 ms, log-uniform", "us"),
    ("bandwidth limit", "dim light: 15-150 Hz at the scene's light, growing with each pixel's light", "Hz"),
    ("leak", "dim light: 0.1-1 Hz per pixel (x 0.5-1.5 per pixel)", "Hz"),
    ("background activity", ("natural 0.02-0.15 ... dim 0.2-1 per pixel (robustness sets: 0.05-5; "
                            "`--noise-hz LOW:HIGH`: log-uniform)"), "Hz"),
    ("hot pixels", "0-8 pixels at 5-300 Hz", "-"),
    ("sensor", "128x128 (robustness sets: 240x180, 346x260, 640x480 through the sensor mapping)", "px"),
)


def parameter_table() -> str:
    """Every random parameter of the simulator (scene and motion) as one markdown table."""
    from stream.sim.body import PARAMETERS as MOTION

    rows = ["| parameter | range | unit |", "|---|---|---|"]
    rows += [f"| {name} | {text} | {unit} |" for name, text, unit in PARAMETERS + MOTION]
    return "\n".join(rows)
