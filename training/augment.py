"""Training augmentations of one binned window (issue #15: other simulators, real cameras).

Contract. A window is ``[T, 2, H, W]`` per-pixel event COUNTS, before normalisation (channel =
polarity, 0 OFF / 1 ON; rows = y, origin top-left; bin 0 is the oldest). ``augment_window`` takes
whole counts in any real dtype and returns float32 whole counts of the same shape; it never writes
to its input and draws every random number from the ``numpy.random.Generator`` it is given (the
caller seeds it per epoch and sample). A disabled augmentation draws nothing, so ``AugmentConfig()``
(= ``AugmentConfig.none()``) returns the input unchanged and leaves the generator untouched. The
result may be the input itself (as float32): copy it before normalising in place.

Steps, in this order (each optional, see ``AugmentConfig``):

1. **Geometry**: left-right flip (the class mapped through ``mirrored_class``, e.g.
   ``stream.classes.MIRRORED_CLASS``; pass None for classes whose mirror image is unknown), zoom by
   ``s`` about a random centre (the subject smaller or bigger; parts may leave the frame), rotation
   (camera roll), optionally a body-shape change (``max_aspect``: the subject and its motion
   stretched along one image axis and squeezed along the other, area kept; ``max_shear``: leant
   sideways) and an integer shift, composed into ONE affine map of the image plane
   (``affine_matrix``) applied identically to every bin and both polarities, resampled once:

   * ``s <= 1`` (zoom-out, pure rotation, flip, shift): forward nearest mapping (``warp_scatter``),
     each source pixel's count added to the destination pixel containing the image of its centre.
     No event is invented, and every event whose pixel lands inside the frame is kept:
     ``out.sum() == in.sum()`` over the source pixels mapped inside. A subject ``s`` times
     smaller in a real recording makes about the same number of events per pixel it covers (an
     edge crossing a pixel fires about contrast / threshold events, whatever its size), on ``s**2``
     as many pixels; so after the mapping every event is kept with probability ``s**2`` (binomial
     thinning): the density per pixel of the subject stays, its total scales with ``s**2``, and
     no thin edge vanishes as it would under inverse nearest sampling (aliasing).
   * ``s > 1`` (zoom-in), or any axis stretched by the shape change: inverse nearest mapping
     (``warp_gather``), each destination pixel copies the count of the source pixel containing the
     preimage of its centre. A forward map would leave ``1 - 1/s**2`` of the subject's pixels empty
     in a regular grid; copying keeps the density per pixel and scales the total by ``s**2``, as a
     real nearer subject does (its edges sweep ``s**2`` as many pixels per bin), so no rescaling is
     needed.

   A flip or an integer shift alone is an exact permutation either way (zero fill). ``s`` here is
   the map's linear scale, ``sqrt(|det|)``: the shape change keeps the area.
1b. **Outline jitter**: every event moves to a pixel drawn uniformly from the ``(2 r + 1)**2``
   square around its own (``r = jitter_px``; those landing outside the frame are lost): an edge
   drawn a pixel thicker or blurred, as by another renderer, lens or focus.
2. **Moving occluders** (ShapeAug, Bendig et al. 2024): 1..``max_occluders`` rectangles or
   ellipses, each moving linearly across the window (centre at window fraction ``tau``:
   ``start + tau * (end - start)``), erase every event under them (footprint of bin ``k`` = the
   shape at ``tau = (k + 0.5) / T``; ``occluder_masks``). With ``occluder_edge_rate > 0`` an
   occluder also fires along its own moving edges: Poisson(rate) events on the pixels it newly
   covers in a bin (leading edge; OFF for an occluder darker than the scene, ON for a brighter
   one) and on those it uncovers (trailing edge, the other polarity).
3. **Event drop-out**: binomial thinning of the counts with keep probability ``1 - d``, ``d``
   uniform in ``[0, max_drop]`` (= dropping each event independently), merged with the zoom-out
   thinning above into one pass (``thin``, ``binomial``). It thins the scene's events, not the
   occluders' edges nor the noise.
4. **Sensor noise**: Poisson background events at a random rate in ``[0, max_noise_rate]`` events
   per pixel per bin (either polarity), and 0..``max_hot_pixels`` hot pixels, each firing
   ``1 + Poisson(r - 1)`` events in every bin of one polarity (``r`` uniform in
   ``[1, max_hot_pixel_rate]``). Noise comes last: an occluder does not hide the sensor's own noise.

Not offered, on purpose: polarity swaps (ON/OFF carry the direction of motion) and time reversal
(it swaps the clockwise and counter-clockwise classes). The time stretch is not here: it needs the
events, so the window pool does it when binning (``training.data.WindowPlan``, ``--stretch``).

Cost. Vectorised NumPy, no loop over pixels or time steps. Windows are sparse, so after the one
dense step (the zoom-in gather) a window is handled as its list of non-zero pixels (``_Events``)
and written back once; the binomial thinning uses its own table sampler (``binomial``), several
times faster than ``Generator.binomial``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import numpy as np

# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentations; the defaults disable everything.

    Args:
        flip_prob: probability of a left-right flip (needs ``mirrored_class``).
        max_shift_px: integer shift along x and y, uniform in ``[-max_shift_px, max_shift_px]``.
        zoom_prob: probability of a zoom + rotation.
        scale_range: zoom factor ``s`` uniform in ``[low, high]`` (> 1: the subject looks bigger).
        max_rotation_deg: rotation uniform in ``[-max, max]`` degrees (counter-clockwise > 0).
        max_aspect: with the zoom, the image stretched by ``sqrt(a)`` along x and squeezed by
            ``sqrt(a)`` along y, ``a`` log-uniform in ``[1 / max_aspect, max_aspect]`` (1: off):
            longer or shorter limbs, a flatter or taller circle, a wider or narrower wave.
        max_shear: with the zoom, ``x += k * (y - centre)``, ``k`` uniform in ``[-max, max]``
            (0: off): a leaning body, a tilted plane of rotation.
        jitter_prob: probability of the outline jitter in a window.
        jitter_px: its radius ``r`` in pixels (events move up to ``r`` along x and y).
        centre_range: the zoom/rotation centre is uniform in the central ``centre_range`` fraction
            of the frame's width and height (0: the frame centre).
        occluder_prob: probability of moving occluders in a window.
        max_occluders: their number, uniform in ``[1, max_occluders]``.
        occluder_size: width and height of an occluder, each uniform in ``[low, high]`` times the
            frame's shorter side.
        occluder_edge_rate: mean events per pixel an occluder's edge crosses (0: erase only).
        max_drop: event drop-out fraction uniform in ``[0, max_drop]``.
        noise_prob: probability of sensor noise in a window.
        max_noise_rate: background events per pixel per bin, uniform in ``[0, max_noise_rate]``.
        max_hot_pixels: number of hot pixels, uniform in ``[0, max_hot_pixels]``.
        max_hot_pixel_rate: mean events per bin of a hot pixel, uniform in ``[1, max]``.
    """

    flip_prob: float = 0.0
    max_shift_px: int = 0
    zoom_prob: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    max_rotation_deg: float = 0.0
    max_aspect: float = 1.0
    max_shear: float = 0.0
    centre_range: float = 0.5
    jitter_prob: float = 0.0
    jitter_px: int = 1
    occluder_prob: float = 0.0
    max_occluders: int = 3
    occluder_size: tuple[float, float] = (0.1, 0.35)
    occluder_edge_rate: float = 0.0
    max_drop: float = 0.0
    noise_prob: float = 0.0
    max_noise_rate: float = 0.0
    max_hot_pixels: int = 0
    max_hot_pixel_rate: float = 4.0

    def __post_init__(self) -> None:
        for name in ("scale_range", "occluder_size"):  # JSON gives lists
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(_is_number, value)):
                raise ValueError(f"AugmentConfig.{name} must be a pair of numbers (low, high), got {value!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        for name in ("max_shift_px", "max_occluders", "max_hot_pixels", "jitter_px"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"AugmentConfig.{name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name, low, high in (("flip_prob", 0, 1), ("zoom_prob", 0, 1), ("occluder_prob", 0, 1), ("noise_prob", 0, 1),
                                ("max_drop", 0, 1), ("centre_range", 0, 1), ("max_rotation_deg", 0, 45),
                                ("max_aspect", 1, 2), ("max_shear", 0, 0.5), ("jitter_prob", 0, 1),
                                ("occluder_edge_rate", 0, math.inf), ("max_noise_rate", 0, math.inf),
                                ("max_hot_pixel_rate", 1, math.inf)):  # fmt: skip
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and low <= value <= high):
                raise ValueError(f"AugmentConfig.{name} must be a finite number in [{low}, {high}], got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.max_occluders < 1:
            raise ValueError(f"AugmentConfig.max_occluders must be >= 1, got {self.max_occluders}")
        if self.jitter_prob > 0 and self.jitter_px < 1:
            raise ValueError(f"AugmentConfig.jitter_px must be >= 1 when jitter_prob > 0, got {self.jitter_px}")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"AugmentConfig.scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        low, high = self.occluder_size
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"AugmentConfig.occluder_size must satisfy 0 < low <= high <= 1, got {self.occluder_size}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation: ``augment_window`` is the identity."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (pairs as lists), as stored in checkpoints."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Rebuild from ``to_dict()``; unknown keys are refused, missing ones take the (disabled) defaults."""
        unknown = set(data) - {field.name for field in fields(cls)}
        if unknown:
            raise ValueError(f"AugmentConfig: unknown key(s) {sorted(unknown)}")
        return cls(**data)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    # training.data.Augmentation's defaults before issue #15: flip, shift, drop-out.
    "basic": AugmentConfig(flip_prob=0.5, max_shift_px=4, max_drop=0.2),
    # The default for simulated training data, which already varies framing, light and noise:
    # the geometric and occlusion augmentations of "full" at half strength.
    "moderate": AugmentConfig(
        flip_prob=0.5,
        max_shift_px=4,
        zoom_prob=0.5,
        scale_range=(0.8, 1.25),
        max_rotation_deg=10.0,
        centre_range=0.5,
        occluder_prob=0.25,
        max_occluders=2,
        occluder_size=(0.1, 0.3),
        occluder_edge_rate=1.0,
        max_drop=0.3,
        noise_prob=0.3,
        max_noise_rate=0.02,
        max_hot_pixels=2,
        max_hot_pixel_rate=4.0,
    ),
    "full": AugmentConfig(
        flip_prob=0.5,
        max_shift_px=4,
        zoom_prob=0.8,
        scale_range=(0.6, 1.4),
        max_rotation_deg=10.0,
        centre_range=0.5,
        occluder_prob=0.5,
        max_occluders=3,
        occluder_size=(0.1, 0.35),
        occluder_edge_rate=1.0,
        max_drop=0.5,
        noise_prob=0.5,
        max_noise_rate=0.05,
        max_hot_pixels=3,
        max_hot_pixel_rate=4.0,
    ),
}
# "moderate" and a body-shape change (aspect up to 1.25, shear up to 0.15) with outline jitter (one
# pixel, half the windows): people, motions and renderers that differ in shape, not only in size.
AUGMENT_PRESETS["shape"] = dataclasses.replace(AUGMENT_PRESETS["moderate"], max_aspect=1.25, max_shear=0.15,
                                               jitter_prob=0.5, jitter_px=1)  # fmt: skip


def augment_preset(name: str) -> AugmentConfig:
    """The preset ``name`` of ``AUGMENT_PRESETS``."""
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[name]


# --- the entry point -----------------------------------------------------------------------------


def augment_window(
    frames: np.ndarray,
    label: int,
    rng: np.random.Generator,
    config: AugmentConfig,
    *,
    mirrored_class: Sequence[int] | None,
) -> tuple[np.ndarray, int]:
    """Augment one ``[T, 2, H, W]`` count window; returns ``(frames float32 [T, 2, H, W], label)``.

    Args:
        frames: event counts (whole numbers, any real dtype), not normalised; never modified.
        label: class index of the window.
        rng: the only source of randomness (seed it per epoch and sample).
        config: what to apply (``AugmentConfig()`` = nothing).
        mirrored_class: class of the left-right mirror image of each class (``MIRRORED_CLASS`` for
            the DVS128 Gesture classes); None disables the flip.
    """
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[1] != 2:
        raise ValueError(f"frames must be [T, 2, H, W] counts, got shape {frames.shape}")
    label = int(label)
    _, _, height, width = frames.shape
    events: _Events | None = None  # the window as a list of non-zero pixels, once a step needs it

    # 1. Geometry: one affine map, one resampling.
    flip = mirrored_class is not None and config.flip_prob > 0 and rng.random() < config.flip_prob
    if flip:
        if not 0 <= label < len(mirrored_class):
            raise ValueError(f"label {label} has no entry in mirrored_class (length {len(mirrored_class)})")
        label = int(mirrored_class[label])
    shift = (0, 0)
    if config.max_shift_px > 0:
        dx, dy = rng.integers(-config.max_shift_px, config.max_shift_px + 1, size=2)
        shift = (int(dx), int(dy))
    scale, rotation, aspect, shear, centre = 1.0, 0.0, 1.0, 0.0, (width / 2, height / 2)
    if config.zoom_prob > 0 and rng.random() < config.zoom_prob:
        scale = float(rng.uniform(*config.scale_range))
        rotation = float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
        offset = rng.uniform(-0.5, 0.5, size=2) * config.centre_range
        centre = (width * (0.5 + offset[0]), height * (0.5 + offset[1]))
        if config.max_aspect > 1.0:
            aspect = math.exp(float(rng.uniform(-1.0, 1.0)) * math.log(config.max_aspect))
        if config.max_shear > 0:
            shear = float(rng.uniform(-config.max_shear, config.max_shear))
    keep = 1.0
    distinct = True  # no two events on one pixel of one plane: false after a many-to-one mapping
    if flip or shift != (0, 0) or scale != 1.0 or rotation != 0.0 or aspect != 1.0 or shear != 0.0:
        matrix = affine_matrix(height, width, flip=flip, scale=scale, rotation_deg=rotation, centre=centre, shift=shift,
                               aspect=aspect, shear=shear)  # fmt: skip
        if np.linalg.norm(matrix[:2, :2], ord=2) > 1.0 + 1e-9:  # a direction stretched: copy, keep the density
            frames = warp_gather(frames, matrix)
        else:
            events = _remap(_events_of(frames), _pixel_map(matrix, height, width))
            distinct = scale == 1.0 and rotation == 0.0 and aspect == 1.0 and shear == 0.0  # flip/shift: one-to-one
            keep = scale * scale  # a smaller subject: the same density per pixel, s**2 the events

    # 1b. Outline jitter.
    if config.jitter_prob > 0 and rng.random() < config.jitter_prob:
        events = jitter(_events_of(frames) if events is None else events, rng, config.jitter_px, height, width)
        distinct = False

    # 2. Moving occluders: the scene's events under them are erased when the window is written back
    # (after the thinning below, which is the same in distribution), their edges' events added then.
    added: list[_Events] = []
    hidden = None
    if config.occluder_prob > 0 and rng.random() < config.occluder_prob:
        events = _events_of(frames) if events is None else events
        occluders = random_occluders(rng, config, height, width)
        hidden, edges = _occluder_footprint_and_edges(occluders, rng, config.occluder_edge_rate, frames.shape)
        added.extend(edges)

    # 3. Drop-out, merged with the zoom-out thinning: one binomial pass.
    if config.max_drop > 0:
        keep *= 1.0 - float(rng.uniform(0.0, config.max_drop))
    if keep < 1.0:
        events = _events_of(frames) if events is None else events
        events = events._replace(count=binomial(events.count, keep, rng))

    # 4. Sensor noise.
    if config.noise_prob > 0 and rng.random() < config.noise_prob:
        rate = float(rng.uniform(0.0, config.max_noise_rate))
        hot_pixels = int(rng.integers(0, config.max_hot_pixels + 1))
        added.extend(_noise_events(rng, frames.shape, rate, hot_pixels, config.max_hot_pixel_rate))
        events = _events_of(frames) if events is None else events
    if events is None:
        return frames, label
    return _frames_of(frames.shape, events, *added, first_distinct=distinct, hidden=hidden), label


# --- a window as a list of non-zero pixels -------------------------------------------------------


class _Events(NamedTuple):
    """``count`` events in plane ``plane`` (``t * 2 + polarity`` of a window) at pixel ``pixel``
    (``row * W + col``); a (plane, pixel) may repeat, its counts add up."""

    plane: np.ndarray
    pixel: np.ndarray
    count: np.ndarray


def _index_dtype(size: int) -> type:
    """int32 where it holds every index (half the memory traffic of int64), else int64."""
    return np.int32 if size < 2**31 else np.int64


def _events_of(frames: np.ndarray) -> _Events:
    """The non-zero pixels of ``[..., H, W]`` frames (windows are sparse: every step after this one
    costs per non-zero pixel, and no step allocates a whole window but the last)."""
    flat = np.ascontiguousarray(frames, dtype=np.float32).reshape(-1)
    index = np.flatnonzero(flat != 0)
    count = flat[index]
    index = index.astype(_index_dtype(flat.size))
    plane = index // (frames.shape[-2] * frames.shape[-1])
    return _Events(plane, index - plane * (frames.shape[-2] * frames.shape[-1]), count)


def _frames_of(
    shape: tuple[int, ...], *parts: _Events, first_distinct: bool = False, hidden: np.ndarray | None = None
) -> np.ndarray:
    """Float32 frames of ``shape`` (``[T, 2, H, W]`` with ``hidden``) holding the sum of ``parts``.

    ``first_distinct``: no (plane, pixel) repeats within the first part (it is then written, not
    accumulated: faster). ``hidden`` (``[T, H, W]`` bool): the first part's events there are erased.
    """
    out = np.zeros(math.prod(shape), dtype=np.float32)
    plane_size = shape[-2] * shape[-1]
    for number, part in enumerate(parts):
        index = part.plane * plane_size
        index += part.pixel
        if number == 0 and first_distinct:
            out[index] = part.count
        else:
            np.add.at(out, index, np.asarray(part.count, dtype=np.float32))
        if number == 0 and hidden is not None:
            planes = out.reshape(shape[0], shape[1], plane_size)
            np.multiply(planes, ~hidden.reshape(shape[0], 1, plane_size), out=planes)
    return out.reshape(shape)


def _remap(events: _Events, target: np.ndarray) -> _Events:
    """Move every pixel ``p`` to ``target[p]``; drop those whose target is -1 (outside the frame)."""
    where = target[events.pixel]
    if not where.size or where.min() >= 0:
        return _Events(events.plane, where, events.count)
    inside = np.flatnonzero(where >= 0)
    return _Events(events.plane[inside], where[inside], events.count[inside])


# --- geometry ------------------------------------------------------------------------------------


def affine_matrix(
    height: int,
    width: int,
    *,
    flip: bool = False,
    scale: float = 1.0,
    rotation_deg: float = 0.0,
    centre: tuple[float, float] | None = None,
    shift: tuple[float, float] = (0, 0),
    aspect: float = 1.0,
    shear: float = 0.0,
) -> np.ndarray:
    """3x3 map from source to destination image coordinates ``(x, y, 1)``; pixel ``(col, row)``
    spans ``[col, col + 1) x [row, row + 1)``, its centre is ``(col + 0.5, row + 0.5)``.

    In order: left-right flip (``x -> width - x``); about ``centre`` (``(x, y)``, default the frame
    centre) a shear ``dx += shear * dy``, a stretch by ``sqrt(aspect)`` along x and squeeze by
    ``sqrt(aspect)`` along y (area kept), a zoom by ``scale`` and a rotation by ``rotation_deg``
    (counter-clockwise as seen on screen, y pointing down); then a shift by ``shift = (dx, dy)``
    (right, down).
    """
    cx, cy = (width / 2, height / 2) if centre is None else (float(centre[0]), float(centre[1]))
    angle = math.radians(rotation_deg)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    # (dx, dy) -> (c dx + s dy, -s dx + c dy) turns a point right of the centre upwards on screen.
    root = math.sqrt(aspect)
    shape = np.array([[root, root * shear], [0.0, 1.0 / root]])
    linear = np.array([[c, s], [-s, c]]) @ shape
    offset = np.array([cx, cy]) - linear @ np.array([cx, cy]) + np.asarray(shift, dtype=np.float64)
    zoom = np.array([[*linear[0], offset[0]], [*linear[1], offset[1]], [0.0, 0.0, 1.0]])
    mirror = np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if flip else np.eye(3)
    return zoom @ mirror


def _pixel_map(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flat index (``row * width + col``) of the pixel containing the image of each pixel centre
    under ``matrix`` (``[H * W]``, -1 where it falls outside the frame)."""
    xs = np.arange(width) + 0.5
    ys = (np.arange(height) + 0.5)[:, None]
    col = np.floor(matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]).astype(np.int64)
    row = np.floor(matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    return np.where(inside, row * width + col, -1).astype(_index_dtype(height * width)).reshape(-1)


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of an affine 3x3 matrix (closed form: exact for flips and shifts)."""
    (a, b, tx), (c, d, ty) = matrix[0], matrix[1]
    det = a * d - b * c
    if det == 0:
        raise ValueError("the affine map is singular")
    inv = np.array([[d, -b], [-c, a]]) / det
    offset = -inv @ np.array([tx, ty])
    return np.array([[inv[0, 0], inv[0, 1], offset[0]], [inv[1, 0], inv[1, 1], offset[1]], [0.0, 0.0, 1.0]])


def warp_scatter(frames: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Forward nearest mapping of ``[..., H, W]`` counts (a new float32 array): each source pixel's
    count is added to the destination pixel containing the image of its centre under ``matrix``.

    Invariant: no event is invented; ``out.sum()`` equals the sum of the source pixels whose centre
    maps inside the frame (every such event is kept, exactly).
    """
    height, width = frames.shape[-2:]
    return _frames_of(frames.shape, _remap(_events_of(frames), _pixel_map(matrix, height, width)))


def warp_gather(frames: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Inverse nearest mapping of ``[..., H, W]`` counts (a new float32 array): each destination
    pixel copies the count of the source pixel containing the preimage of its centre under
    ``matrix`` (0 where that falls outside the frame)."""
    height, width = frames.shape[-2:]
    source = _pixel_map(_inverse(matrix), height, width)
    planes = np.ascontiguousarray(frames, dtype=np.float32).reshape(-1, height * width)
    out = np.take(planes, np.maximum(source, 0), axis=1)
    out[:, source < 0] = 0.0
    return out.reshape(frames.shape)


def jitter(events: _Events, rng: np.random.Generator, radius: int, height: int, width: int) -> _Events:
    """Move every event of ``events`` to a pixel drawn uniformly from the ``(2 * radius + 1)**2``
    square around its own (independently per event); events landing outside the ``height`` x
    ``width`` frame are dropped. The result has one entry per event (count 1)."""
    side = 2 * radius + 1
    entry = np.repeat(np.arange(events.count.size), events.count.astype(np.int64))
    offset = rng.integers(0, side * side, size=entry.size)
    row, col = np.divmod(events.pixel[entry].astype(np.int64), width)
    row += offset // side - radius
    col += offset % side - radius
    inside = np.flatnonzero((row >= 0) & (row < height) & (col >= 0) & (col < width))
    pixel = (row[inside] * width + col[inside]).astype(events.pixel.dtype)
    return _Events(events.plane[entry[inside]], pixel, np.ones(inside.size, dtype=np.float32))


# --- drop-out: binomial thinning -----------------------------------------------------------------

_TABLE_MAX = 64  # counts up to this use the table sampler; larger ones (rare) numpy's binomial
_TABLE_SIDE = _TABLE_MAX + 1
_GUIDE = 64  # guide-table buckets per count
_N = np.arange(_TABLE_SIDE)[:, None]
_K = np.arange(_TABLE_SIDE)[None, :]
_LOG_FACTORIAL = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, _TABLE_SIDE)))])
_LOG_CHOOSE = np.where(
    _K <= _N, _LOG_FACTORIAL[_N] - _LOG_FACTORIAL[np.minimum(_K, _N)] - _LOG_FACTORIAL[np.maximum(_N - _K, 0)], -np.inf
)
_FAILURES = np.maximum(_N - _K, 0)
_GUIDE_QUERIES = (2.0 * _N + np.arange(_GUIDE)[None, :] / _GUIDE).reshape(-1)
_WALK_STEPS = 3  # guide steps before the few samples still walking are finished by a full scan


def _binomial_tables(p: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """CDF table ``F[n, k] = P(Binomial(n, p) <= k)`` (float32, flat ``[side, side]``, 1 for
    ``k >= n``) and guide table ``G[n, j] = #{k: F[n, k] < j / _GUIDE}`` (int32, flat ``[side, _GUIDE]``)."""
    n, k = _N[:side], _K[:, :side]
    pmf = np.exp(_LOG_CHOOSE[:side, :side] + k * math.log(p) + _FAILURES[:side, :side] * math.log1p(-p))
    cdf = np.cumsum(pmf, axis=1)
    cdf[k >= n] = 1.0
    cdf = cdf.astype(np.float32)
    # Rows offset by 2n are sorted as one array: one searchsorted finds every row's quantiles.
    guide = np.searchsorted((2.0 * n + cdf).reshape(-1), _GUIDE_QUERIES[: side * _GUIDE])
    guide -= np.repeat(np.arange(side) * side, _GUIDE)
    return cdf.reshape(-1), guide.astype(np.int32)


def binomial(counts: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """``Binomial(counts, p)`` samples (int32, one per count) by inversion of one uniform each.

    Exact up to the float32 uniforms and CDF (probabilities to ~1e-7). ``rng.binomial`` costs ~40 ns
    per pixel of a window; this a few: a CDF table of the counts ``<= _TABLE_MAX`` built once per
    call, a guide table giving each uniform a starting point a step or two below its answer, a
    vectorised walk up the CDF (the rare long walks of the tail finished by one comparison with the
    whole row). Larger counts (rare) go to ``rng.binomial``.
    """
    counts = np.asarray(counts)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"binomial probability must be in [0, 1], got {p}")
    n = counts.astype(np.int32)
    if p == 0.0 or p == 1.0 or n.size == 0:
        return n * np.int32(p)
    u = rng.random(n.size, dtype=np.float32)
    largest = int(n.max())
    large = np.flatnonzero(n > _TABLE_MAX) if largest > _TABLE_MAX else None
    if large is not None:
        n = np.minimum(n, _TABLE_MAX)
    side = min(largest, _TABLE_MAX) + 1
    cdf, guide = _binomial_tables(p, side)
    at = n * _GUIDE
    at += (u * _GUIDE).astype(np.int32)
    x = guide[at]
    base = n * side
    np.add(base, x, out=at)
    walking = np.flatnonzero(cdf[at] < u)
    for _ in range(_WALK_STEPS):
        if not walking.size:
            break
        x[walking] += 1
        walking = walking[cdf[base[walking] + x[walking]] < u[walking]]
    if walking.size:  # X = #{k: F[n, k] < u}
        rows = cdf.reshape(side, side)[n[walking]]
        x[walking] = np.count_nonzero(rows < u[walking, None], axis=1)
    if large is not None:
        x[large] = rng.binomial(counts[large].astype(np.int64), p)
    return x


def thin(frames: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning of ``[..., H, W]`` counts: every event kept independently with probability
    ``keep`` (a new float32 array)."""
    events = _events_of(frames)
    return _frames_of(frames.shape, events._replace(count=binomial(events.count, keep, rng)), first_distinct=True)


# --- moving occluders ----------------------------------------------------------------------------


class Occluder(NamedTuple):
    """A shape in front of the camera moving linearly over the window (pixels, image coordinates).

    ``start`` and ``end``: centre ``(x, y)`` at the window's start and end; ``size``: full
    ``(width, height)`` along its own axes, turned by ``angle`` radians; ``ellipse``: ellipse or
    rectangle; ``leading_polarity``: channel of the events its leading edge fires (0: it is darker
    than the scene behind it, 1: brighter); its trailing edge fires the other one.
    """

    start: tuple[float, float]
    end: tuple[float, float]
    size: tuple[float, float]
    angle: float
    ellipse: bool
    leading_polarity: int


def random_occluders(rng: np.random.Generator, config: AugmentConfig, height: int, width: int) -> list[Occluder]:
    """1..``config.max_occluders`` occluders: start and end centres uniform in the frame, sizes in
    ``config.occluder_size`` times the shorter side, any angle, ellipse or rectangle."""
    count = int(rng.integers(1, config.max_occluders + 1))
    frame = np.array([width, height], dtype=np.float64)
    starts = rng.uniform(0.0, 1.0, size=(count, 2)) * frame
    ends = rng.uniform(0.0, 1.0, size=(count, 2)) * frame
    sizes = rng.uniform(*config.occluder_size, size=(count, 2)) * min(height, width)
    angles = rng.uniform(0.0, math.pi, size=count)
    ellipses = rng.random(count) < 0.5
    polarities = rng.integers(0, 2, size=count)
    return [
        Occluder(tuple(starts[i].tolist()), tuple(ends[i].tolist()), tuple(sizes[i].tolist()), float(angles[i]),
                 bool(ellipses[i]), int(polarities[i]))
        for i in range(count)
    ]  # fmt: skip


def _slab(alpha: float, beta: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``dx`` where ``|alpha * dx + beta| <= half`` (elementwise over ``beta``)."""
    if abs(alpha) < 1e-12:
        inside = np.abs(beta) <= half
        return np.where(inside, -np.inf, np.inf), np.where(inside, np.inf, -np.inf)
    a, b = (-half - beta) / alpha, (half - beta) / alpha
    return np.minimum(a, b), np.maximum(a, b)


def occluder_masks(occluder: Occluder, bins: int, height: int, width: int) -> np.ndarray:
    """Footprints ``[bins + 1, H, W]`` (bool) of an occluder: entry ``k`` is the shape at window
    fraction ``tau = (k - 0.5) / bins``, so entry ``k + 1`` is the footprint of bin ``k`` (its
    middle) and entry 0 the position half a bin before the window. A pixel is covered when its
    centre is inside. Computed as one interval of columns per row (the shapes are convex)."""
    tau = (np.arange(bins + 1) - 0.5) / bins
    cx = occluder.start[0] + tau * (occluder.end[0] - occluder.start[0])
    cy = occluder.start[1] + tau * (occluder.end[1] - occluder.start[1])
    dy = (np.arange(height) + 0.5)[None, :] - cy[:, None]  # [bins + 1, H]
    a, b = occluder.size[0] / 2, occluder.size[1] / 2
    cos, sin = math.cos(occluder.angle), math.sin(occluder.angle)
    # The shape's own axes: u = cos dx + sin dy, v = -sin dx + cos dy.
    if occluder.ellipse:  # u^2/a^2 + v^2/b^2 <= 1: a quadratic in dx for each row
        qa = cos * cos / (a * a) + sin * sin / (b * b)
        qb = 2.0 * dy * cos * sin * (1.0 / (a * a) - 1.0 / (b * b))
        qc = dy * dy * (sin * sin / (a * a) + cos * cos / (b * b)) - 1.0
        disc = qb * qb - 4.0 * qa * qc
        root = np.sqrt(np.maximum(disc, 0.0))
        low = np.where(disc >= 0, (-qb - root) / (2 * qa), np.inf)
        high = np.where(disc >= 0, (-qb + root) / (2 * qa), -np.inf)
    else:  # |u| <= a and |v| <= b: the intersection of two slabs
        low_u, high_u = _slab(cos, sin * dy, a)
        low_v, high_v = _slab(-sin, cos * dy, b)
        low, high = np.maximum(low_u, low_v), np.minimum(high_u, high_v)
    xs = (np.arange(width) + 0.5).astype(np.float32)
    left = (cx[:, None] + low).astype(np.float32)[..., None]
    right = (cx[:, None] + high).astype(np.float32)[..., None]
    return (xs >= left) & (xs <= right)


def _occluder_footprint_and_edges(
    occluders: Sequence[Occluder], rng: np.random.Generator, edge_rate: float, shape: tuple
) -> tuple[np.ndarray, list[_Events]]:
    """Where the occluders hide the scene (``[T, H, W]`` bool) and the events of their edges (see
    ``occlude``) in a ``[T, 2, H, W]`` window."""
    bins, polarities, height, width = shape
    plane_size = height * width
    masks = [occluder_masks(occluder, bins, height, width) for occluder in occluders]
    covered = masks[0][1:].copy()
    for mask in masks[1:]:
        covered |= mask[1:]
    edges = []
    if edge_rate > 0:
        for occluder, mask in zip(occluders, masks):
            leading, trailing = occluder.leading_polarity, 1 - occluder.leading_polarity
            for polarity, edge in ((leading, mask[1:] & ~mask[:-1]), (trailing, mask[:-1] & ~mask[1:])):
                t, pixel = np.divmod(np.flatnonzero(edge).astype(_index_dtype(edge.size)), plane_size)
                edges.append(_Events(t * polarities + polarity, pixel, rng.poisson(edge_rate, size=t.size)))
    return covered, edges


def occlude(
    frames: np.ndarray, occluders: Sequence[Occluder], rng: np.random.Generator, *, edge_rate: float = 0.0
) -> np.ndarray:
    """Erase the events of ``[T, 2, H, W]`` counts under the occluders' footprints (a new float32
    array); with ``edge_rate > 0`` add Poisson(``edge_rate``) events on the pixels each occluder
    newly covers in a bin (its ``leading_polarity``) and on those it uncovers (the other one)."""
    hidden, edges = _occluder_footprint_and_edges(occluders, rng, edge_rate, frames.shape)
    return _frames_of(frames.shape, _events_of(frames), *edges, first_distinct=True, hidden=hidden)


# --- sensor noise --------------------------------------------------------------------------------


def _noise_events(
    rng: np.random.Generator, shape: tuple, rate: float, hot_pixels: int, max_hot_pixel_rate: float
) -> list[_Events]:
    """Background and hot-pixel events of a ``[T, 2, H, W]`` window (see ``add_noise``)."""
    bins, polarities, height, width = shape
    plane_size = height * width
    count = int(rng.poisson(rate * bins * plane_size))  # Poisson per pixel = Poisson total, uniform places
    plane, pixel = np.divmod(rng.integers(0, bins * polarities * plane_size, size=count), plane_size)
    parts = [_Events(plane, pixel, np.ones(count, dtype=np.float32))]
    if hot_pixels > 0:
        pixel = rng.integers(0, plane_size, size=hot_pixels)
        polarity = rng.integers(0, polarities, size=hot_pixels)
        mean = rng.uniform(1.0, max_hot_pixel_rate, size=hot_pixels)
        fires = 1 + rng.poisson(mean - 1.0, size=(bins, hot_pixels))
        plane = np.arange(bins)[:, None] * polarities + polarity
        parts.append(_Events(plane.reshape(-1), np.tile(pixel, bins), fires.reshape(-1)))
    return parts


def add_noise(
    frames: np.ndarray, rng: np.random.Generator, *, rate: float, hot_pixels: int = 0, max_hot_pixel_rate: float = 4.0
) -> np.ndarray:
    """Add sensor noise to ``[T, 2, H, W]`` counts (a new float32 array): Poisson background events,
    ``rate`` per pixel per bin (polarity 50/50), and ``hot_pixels`` pixels firing
    ``1 + Poisson(r - 1)`` events in every bin, each in one random polarity, ``r`` uniform in
    ``[1, max_hot_pixel_rate]``."""
    noise = _noise_events(rng, frames.shape, rate, hot_pixels, max_hot_pixel_rate)
    return _frames_of(frames.shape, _events_of(frames), *noise, first_distinct=True)
